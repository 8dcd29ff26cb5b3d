//! Every JSON request body of the HTTP API (ingest's routes; query-api's are
//! all `GET`s without a body), extracted by the same `ApiJson` extractor
//! into the same body type as its handler, then checked by the input rules
//! its command applies before anything touches the views or the log. Why
//! not the whole router: fuzz/README.md.
//!
//! Input: a route, a content type (the usual, some wrong ones, or any
//! header value), then the body.
//!
//! Asserts: no panic, and the future completes at once; with a JSON content
//! type the extractor accepts exactly the bodies serde_json reads as the
//! body type; every refusal — by the extractor or by the input rules — is a
//! 4xx `ApiError` with a code and a message, answered as
//! `{"error":{"code","message"}}` with that status and code, never a 5xx.

#![no_main]

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, Method};
use axum::response::IntoResponse;
use emosation_core::ids::LogPosition;
use emosation_fuzz::ready;
use emosation_http::{ApiError, ApiJson};
use emosation_ingest::CommandError;
use emosation_ingest::http::{CreateRoom, Credentials, MarkRead, PostMessage, RefreshBody};
use emosation_ingest::validate;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde_json::Value;

const ROUTES: [&str; 6] = [
    "/v1/auth/signup",
    "/v1/auth/login",
    "/v1/auth/refresh",
    "/v1/rooms",
    "/v1/rooms/00000000000000a1/messages",
    "/v1/rooms/00000000000000a1/read",
];

const CONTENT_TYPES: [Option<&str>; 6] = [
    Some("application/json"),
    Some("application/json; charset=utf-8"),
    Some("application/vnd.emosation+json"),
    Some("text/plain"),
    Some("application/x-www-form-urlencoded"),
    None,
];

/// Extracts a body as the handlers do; a refusal is checked, then `None`.
fn extract<T: DeserializeOwned>(req: Request, json: bool, body: &[u8]) -> Option<T> {
    let got = ready(ApiJson::<T>::from_request(req, &())).map(|ApiJson(v)| v);
    if json {
        // The oracle: what serde_json reads from the body.
        let direct = serde_json::from_slice::<T>(body);
        assert_eq!(got.is_ok(), direct.is_ok(), "the extractor and serde_json disagree");
    }
    match got {
        Ok(v) => Some(v),
        Err(e) => {
            refusal(e);
            None
        }
    }
}

/// A refusal is the client's fault, and answered as the contract says.
fn refusal(e: ApiError) {
    assert!(e.status.is_client_error(), "{} for a request body: {e:?}", e.status);
    assert!(!e.code.is_empty() && !e.message.is_empty(), "{e:?}");
    let (status, code) = (e.status, e.code);
    let response = e.into_response();
    assert_eq!(response.status(), status);
    let bytes = ready(axum::body::to_bytes(response.into_body(), usize::MAX)).expect("an error body in memory");
    let v: Value = serde_json::from_slice(&bytes).expect("an error body is JSON");
    assert_eq!(v["error"]["code"], code);
    assert!(v["error"]["message"].is_string());
}

/// An input rule's verdict: passing, or a refusal answered as 400.
fn rule<T>(r: Result<T, CommandError>) {
    if let Err(e) = r {
        assert!(matches!(e, CommandError::Invalid(_)), "an input rule answered {e:?}");
        let api = ApiError::from(e);
        assert_eq!((api.status.as_u16(), api.code), (400, "invalid_request"));
        refusal(api);
    }
}

fuzz_target!(|data: &[u8]| {
    let [route, content_type, body @ ..] = data else {
        return;
    };
    let path = ROUTES[usize::from(*route) % ROUTES.len()];
    let mut req = Request::builder().method(Method::POST).uri(path);
    let content_type = match usize::from(*content_type) {
        i if i < 2 * CONTENT_TYPES.len() => CONTENT_TYPES[i % CONTENT_TYPES.len()].map(HeaderValue::from_static),
        // Any header value: the first line of the body, if it is one.
        _ => {
            let line = body.split(|b| *b == b'\n').next().unwrap_or_default();
            HeaderValue::from_bytes(line).ok()
        }
    };
    let json = content_type
        .as_ref()
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if let Some(v) = content_type {
        req = req.header(CONTENT_TYPE, v);
    }
    let req = req.body(Body::from(body.to_vec())).expect("a request");

    // Each handler's body type, then the rules its command checks first
    // (ingest's `Ingest::signup`, `create_room`, `check_post`, `mark_read`).
    match usize::from(*route) % ROUTES.len() {
        0 => {
            if let Some(c) = extract::<Credentials>(req, json, body) {
                rule(validate::username(&c.username));
                rule(validate::password(&c.password));
            }
        }
        // Login answers 401 for any name and password that break the rules;
        // refresh checks its token's signature.
        1 => drop(extract::<Credentials>(req, json, body)),
        2 => drop(extract::<RefreshBody>(req, json, body)),
        3 => {
            if let Some(b) = extract::<CreateRoom>(req, json, body) {
                rule(validate::room_name(&b.name));
                rule(validate::capacity(b.capacity));
            }
        }
        4 => {
            if let Some(b) = extract::<PostMessage>(req, json, body) {
                rule(validate::client_msg_id(&b.client_msg_id));
                rule(validate::text(&b.text));
            }
        }
        _ => {
            if let Some(b) = extract::<MarkRead>(req, json, body) {
                let id = LogPosition::parse_id(&b.message_id);
                rule(id.ok_or_else(|| CommandError::Invalid("message_id is not a message id".into())));
                if let Some(p) = id {
                    assert_eq!(p.to_id(), b.message_id, "a message id is its position's id");
                }
            }
        }
    }
});
