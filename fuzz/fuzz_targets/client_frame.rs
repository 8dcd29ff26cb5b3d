//! Client frame parsing (ws-fanout/src/protocol.rs `parse`).
//!
//! Input: a mode byte, then either the frame's text as it is, or the parts
//! of a JSON object with the protocol's field names (each present or not,
//! of the right JSON type or not), so that the fuzzer reaches every frame
//! type's body quickly.
//!
//! Asserts: no panic; every failure is a `FrameError` with one of the
//! contract's codes (`invalid_json`, `invalid_request`, `unknown_type`) and
//! a message, and renders as an `error` frame carrying that code, message,
//! `client_msg_id` and `message_id`; every frame parsed, written back as JSON, parses to
//! itself; a subscription wants at least one stream.

#![no_main]

use arbitrary::{Arbitrary, Result, Unstructured};
use emosation_ws_fanout::protocol::{self, ClientFrame, Streams};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

const CODES: [&str; 3] = ["invalid_json", "invalid_request", "unknown_type"];
const TYPES: [&str; 7] = ["subscribe", "unsubscribe", "send", "typing", "auth", "edit", "delete"];
const FIELDS: [&str; 8] = [
    "room_id",
    "since",
    "streams",
    "client_msg_id",
    "text",
    "access_token",
    "message_id",
    "attachments",
];

/// Any JSON value, mostly a string (the type every field wants).
fn value(u: &mut Unstructured<'_>, depth: u8) -> Result<Value> {
    Ok(match u.int_in_range(0..=9u8)? {
        0 => Value::Null,
        1 => Value::Bool(bool::arbitrary(u)?),
        2 => json!(i64::arbitrary(u)?),
        3 => json!(f64::arbitrary(u)?),
        4 if depth < 3 => {
            let n = u.int_in_range(0..=3)?;
            Value::Array((0..n).map(|_| value(u, depth + 1)).collect::<Result<_>>()?)
        }
        5 if depth < 3 => {
            let n = u.int_in_range(0..=2)?;
            Value::Array(
                (0..n)
                    .map(|_| Ok(json!(*u.choose(&["chat", "emotion", "x"])?)))
                    .collect::<Result<_>>()?,
            )
        }
        6 if depth < 3 => object(u, depth + 1)?,
        _ => Value::String(String::arbitrary(u)?),
    })
}

/// An object with some of the protocol's fields and now and then others.
fn object(u: &mut Unstructured<'_>, depth: u8) -> Result<Value> {
    let mut m = Map::new();
    if u.ratio(7, 8)? {
        let kind = if u.ratio(7, 8)? {
            json!(*u.choose(&TYPES)?)
        } else {
            value(u, depth)?
        };
        m.insert("type".into(), kind);
    }
    for field in &FIELDS {
        if bool::arbitrary(u)? {
            m.insert((*field).into(), value(u, depth)?);
        }
    }
    if u.ratio(1, 8)? {
        m.insert(String::arbitrary(u)?, value(u, depth)?);
    }
    Ok(Value::Object(m))
}

/// The frame as a client would write it.
fn to_json(f: &ClientFrame) -> Value {
    match f {
        ClientFrame::Subscribe {
            room_id,
            since,
            streams,
        } => {
            let mut v = json!({"type": "subscribe", "room_id": room_id});
            if let Some(s) = since {
                v["since"] = json!(s);
            }
            if *streams != Streams::ALL {
                let names: Vec<&str> = [("chat", streams.chat), ("emotion", streams.emotion)]
                    .into_iter()
                    .filter_map(|(n, on)| on.then_some(n))
                    .collect();
                v["streams"] = json!(names);
            }
            v
        }
        ClientFrame::Unsubscribe { room_id } => json!({"type": "unsubscribe", "room_id": room_id}),
        ClientFrame::Send {
            room_id,
            client_msg_id,
            text,
            attachments,
        } => {
            json!({"type": "send", "room_id": room_id, "client_msg_id": client_msg_id, "text": text, "attachments": attachments})
        }
        ClientFrame::Typing { room_id } => json!({"type": "typing", "room_id": room_id}),
        ClientFrame::Auth { access_token } => json!({"type": "auth", "access_token": access_token}),
        ClientFrame::Edit {
            room_id,
            message_id,
            text,
        } => json!({"type": "edit", "room_id": room_id, "message_id": message_id, "text": text}),
        ClientFrame::Delete { room_id, message_id } => {
            json!({"type": "delete", "room_id": room_id, "message_id": message_id})
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = if mode & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        match object(&mut Unstructured::new(rest), 0) {
            Ok(v) => v.to_string(),
            Err(_) => return,
        }
    };

    match protocol::parse(&text) {
        Ok(frame) => {
            if let ClientFrame::Subscribe { streams, .. } = &frame {
                assert!(streams.chat || streams.emotion, "a subscription with no stream");
            }
            let again = protocol::parse(&to_json(&frame).to_string());
            assert_eq!(again.as_ref(), Ok(&frame), "{frame:?} written back parses differently");
        }
        Err(e) => {
            assert!(CODES.contains(&e.code), "unexpected code {:?}", e.code);
            assert!(!e.message.is_empty(), "an error without a message");
            let answer: Value = serde_json::from_str(protocol::error(&e).text()).expect("an error frame is JSON");
            assert_eq!(answer["type"], "error");
            assert_eq!(answer["code"], e.code);
            assert_eq!(answer["message"], e.message.as_str());
            assert_eq!(
                answer.get("client_msg_id").and_then(Value::as_str),
                e.client_msg_id.as_deref()
            );
            assert_eq!(
                answer.get("message_id").and_then(Value::as_str),
                e.message_id.as_deref()
            );
        }
    }
});
