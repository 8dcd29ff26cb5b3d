//! The browser's refresh cookie (API extension, docs/api.md), over HTTP
//! against a real server: login and refresh with `X-Refresh-Cookie: 1` put
//! the refresh token in an httpOnly, `SameSite=Strict` cookie limited to
//! `/v1/auth`; refresh and logout read it; rotation and reuse detection work
//! through it; without the header the cookie is never read.

mod common;

use common::TestServer;
use reqwest::header::{COOKIE, SET_COOKIE};
use reqwest::{RequestBuilder, Response};
use serde_json::{Value, json};

const OPT_IN: &str = "x-refresh-cookie";

/// The `emosation_refresh=…` Set-Cookie of a response: (token, whole header).
fn set_cookie(res: &Response) -> (String, String) {
    let all: Vec<&str> = res
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(all.len(), 1, "one Set-Cookie: {all:?}");
    let header = all[0].to_owned();
    let token = header
        .strip_prefix("emosation_refresh=")
        .and_then(|rest| rest.split(';').next())
        .unwrap()
        .to_owned();
    (token, header)
}

async fn json(res: Response) -> Value {
    let text = res.text().await.unwrap();
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_and_logout_through_the_cookie_with_rotation_and_reuse_detection() {
    let s = TestServer::start().await;
    let api = s.client();
    api.signup("cookie_cat").await.expect(201);
    let http = reqwest::Client::new();
    let post = |path: &str| -> RequestBuilder { http.post(format!("{}{path}", s.base)) };

    // Login with the opt-in: the refresh token is in the cookie, not the body.
    let res = post("/v1/auth/login")
        .header(OPT_IN, "1")
        .json(&json!({"username": "cookie_cat", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (rt0, header) = set_cookie(&res);
    for attr in ["Path=/v1/auth", "HttpOnly", "SameSite=Strict", "Max-Age="] {
        assert!(header.contains(attr), "{header}");
    }
    assert!(!header.contains("Secure"), "plain HTTP: {header}");
    let body = json(res).await;
    assert!(body.get("refresh_token").is_none(), "{body}");
    let access0 = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(body["token_type"], "Bearer");
    api.get("/v1/me", &access0).await.expect(200);

    // Without the header the cookie is never read (CSRF): the contract's refresh wants a body.
    let res = post("/v1/auth/refresh")
        .header(COOKIE, format!("emosation_refresh={rt0}"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        400,
        "no refresh_token in the body, and the cookie ignored"
    );
    let res = post("/v1/auth/logout")
        .header(COOKIE, format!("emosation_refresh={rt0}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    api.get("/v1/me", &access0).await.expect(200);

    // Refresh by the cookie, with no body at all: a new cookie, a new access token.
    let res = post("/v1/auth/refresh")
        .header(OPT_IN, "1")
        .header(COOKIE, format!("emosation_refresh={rt0}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (rt1, _) = set_cookie(&res);
    assert_ne!(rt1, rt0, "rotated");
    let body = json(res).await;
    assert!(body.get("refresh_token").is_none());
    let access1 = body["access_token"].as_str().unwrap().to_owned();
    api.get("/v1/me", &access1).await.expect(200);

    // And with an empty JSON object.
    let res = post("/v1/auth/refresh")
        .header(OPT_IN, "1")
        .header(COOKIE, format!("other=1; emosation_refresh={rt1}"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (rt2, _) = set_cookie(&res);
    assert_ne!(rt2, rt1);

    // The spent cookie presented again is reuse: the session is revoked,
    // the cookie cleared, and the newest tokens refused too.
    let res = post("/v1/auth/refresh")
        .header(OPT_IN, "1")
        .header(COOKIE, format!("emosation_refresh={rt1}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let (cleared, header) = set_cookie(&res);
    assert!(cleared.is_empty() && header.contains("Max-Age=0"), "{header}");
    assert_eq!(json(res).await["error"]["code"], "invalid_token");
    let res = post("/v1/auth/refresh")
        .header(OPT_IN, "1")
        .header(COOKIE, format!("emosation_refresh={rt2}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "the newest refresh token died with the session");
    api.get("/v1/me", &access1).await.expect_error(401, "invalid_token");

    // No cookie, no body: 401 invalid_token.
    let res = post("/v1/auth/refresh").header(OPT_IN, "1").send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(json(res).await["error"]["code"], "invalid_token");

    // A body token with the opt-in moves the session into the cookie (a
    // client that kept its refresh token before).
    let login = api.login("cookie_cat").await;
    let res = post("/v1/auth/refresh")
        .header(OPT_IN, "1")
        .json(&json!({"refresh_token": login["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (rt, _) = set_cookie(&res);
    let access = json(res).await["access_token"].as_str().unwrap().to_owned();

    // Logout by the cookie alone (no access token): 204, cookie cleared,
    // and the session's tokens stop working.
    let res = post("/v1/auth/logout")
        .header(OPT_IN, "1")
        .header(COOKIE, format!("emosation_refresh={rt}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert!(set_cookie(&res).1.contains("Max-Age=0"));
    api.get("/v1/me", &access).await.expect_error(401, "invalid_token");

    // Logout by the access token in cookie mode clears the cookie too; the
    // page's Origin on HTTPS makes the cookie Secure.
    let login = http
        .post(format!("{}/v1/auth/login", s.base))
        .header(OPT_IN, "1")
        .header("origin", "https://chat.example")
        .json(&json!({"username": "cookie_cat", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert!(set_cookie(&login).1.ends_with("; Secure"));
    let access = json(login).await["access_token"].as_str().unwrap().to_owned();
    let res = post("/v1/auth/logout")
        .header(OPT_IN, "1")
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert!(set_cookie(&res).1.contains("Max-Age=0"));
    api.get("/v1/me", &access).await.expect_error(401, "invalid_token");

    // Without the opt-in, login and refresh are the contract's, unchanged.
    let login = api.login("cookie_cat").await;
    let refreshed = api
        .post(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": login["refresh_token"]}),
        )
        .await
        .expect(200);
    assert!(refreshed["refresh_token"].is_string());
}
