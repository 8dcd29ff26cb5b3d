//! The WebSocket protocol's frames (see the contract and docs/api.md): what
//! a client may send ([`ClientFrame`], parsed here, every failure a
//! [`FrameError`]), and the server's frames, each built once as a
//! [`Frame`] and shared by every socket it goes to.

use emosation_core::access::AccessError;
use emosation_core::emotion::Label;
use emosation_core::time::rfc3339_millis;
use emosation_core::view::{EmotionView, MessageChangeView, RoomEventView};
use emosation_ingest::CommandError;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::socket::Frame;

/// Which stream an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Chat,
    Emotion,
}

/// Streams a subscription receives: the log's two (`chat`: messages,
/// joins, leaves, typing; `emotion`), and `presence` — who opens and closes
/// the room, never logged — which a client asks for by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streams {
    pub chat: bool,
    pub emotion: bool,
    pub presence: bool,
}

impl Streams {
    /// What a `subscribe` without `streams` gets: both log streams (the
    /// contract's default; `presence` is an extension, asked for by name).
    pub const ALL: Streams = Streams {
        chat: true,
        emotion: true,
        presence: false,
    };

    pub fn wants(&self, s: Stream) -> bool {
        match s {
            Stream::Chat => self.chat,
            Stream::Emotion => self.emotion,
        }
    }
}

/// A frame from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Subscribe {
        room_id: String,
        since: Option<String>,
        streams: Streams,
    },
    Unsubscribe {
        room_id: String,
    },
    Send {
        room_id: String,
        client_msg_id: String,
        text: String,
        /// Ids of the sender's uploads to the room.
        attachments: Vec<String>,
    },
    Typing {
        room_id: String,
    },
    /// Swaps the connection's access token for a newer one of the same
    /// session, before the old one expires.
    Auth {
        access_token: String,
    },
    /// Replaces the text of one's own message.
    Edit {
        room_id: String,
        message_id: String,
        text: String,
    },
    /// Deletes one's own message, or any in a room one owns.
    Delete {
        room_id: String,
        message_id: String,
    },
}

/// Why a client frame was refused: `(code, message, client_msg_id)`, and
/// for an `edit` or `delete`, the message it named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: &'static str,
    pub message: String,
    pub client_msg_id: Option<String>,
    pub message_id: Option<String>,
}

impl FrameError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        FrameError {
            code,
            message: message.into(),
            client_msg_id: None,
            message_id: None,
        }
    }

    /// The error answering the `edit` or `delete` of this message.
    pub fn for_message(mut self, message_id: &str) -> Self {
        self.message_id = Some(message_id.to_owned());
        self
    }

    /// The error answering the `send` with this `client_msg_id`.
    pub fn for_send(mut self, client_msg_id: &str) -> Self {
        self.client_msg_id = Some(client_msg_id.to_owned());
        self
    }
}

/// A command's refusal as an error frame (the HTTP answer is the other
/// conversion, in ingest).
impl From<CommandError> for FrameError {
    fn from(e: CommandError) -> Self {
        FrameError::new(e.code(), e.to_string())
    }
}

impl From<AccessError> for FrameError {
    fn from(e: AccessError) -> Self {
        CommandError::from(e).into()
    }
}

#[derive(Deserialize)]
struct SubscribeBody {
    room_id: String,
    since: Option<String>,
    streams: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RoomBody {
    room_id: String,
}

#[derive(Deserialize)]
struct AuthBody {
    access_token: String,
}

#[derive(Deserialize)]
struct EditBody {
    room_id: String,
    message_id: String,
    text: String,
}

#[derive(Deserialize)]
struct DeleteBody {
    room_id: String,
    message_id: String,
}

#[derive(Deserialize)]
struct SendBody {
    room_id: String,
    client_msg_id: String,
    /// Required, except beside attachments.
    text: Option<String>,
    #[serde(default)]
    attachments: Vec<String>,
}

/// Parses a client frame; every failure is a frame error, never a panic.
pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
    let v: Value = serde_json::from_str(text).map_err(|e| FrameError::new("invalid_json", e.to_string()))?;
    let Some(kind) = v.get("type").and_then(Value::as_str) else {
        return Err(FrameError::new("invalid_request", "a frame needs a string \"type\""));
    };
    let bad = |e: serde_json::Error| {
        let mut err = FrameError::new("invalid_request", format!("{kind}: {e}"));
        err.client_msg_id = v.get("client_msg_id").and_then(Value::as_str).map(str::to_owned);
        err.message_id = v.get("message_id").and_then(Value::as_str).map(str::to_owned);
        err
    };
    match kind {
        "subscribe" => {
            let b: SubscribeBody = serde_json::from_value(v.clone()).map_err(bad)?;
            let streams = match b.streams {
                None => Streams::ALL,
                Some(list) => {
                    let mut s = Streams {
                        chat: false,
                        emotion: false,
                        presence: false,
                    };
                    for name in &list {
                        match name.as_str() {
                            "chat" => s.chat = true,
                            "emotion" => s.emotion = true,
                            "presence" => s.presence = true,
                            other => {
                                return Err(FrameError::new(
                                    "invalid_request",
                                    format!("unknown stream {other:?}; streams are chat, emotion and presence"),
                                ));
                            }
                        }
                    }
                    if list.is_empty() {
                        return Err(FrameError::new("invalid_request", "streams must not be empty"));
                    }
                    s
                }
            };
            Ok(ClientFrame::Subscribe {
                room_id: b.room_id,
                since: b.since,
                streams,
            })
        }
        "unsubscribe" => {
            let b: RoomBody = serde_json::from_value(v.clone()).map_err(bad)?;
            Ok(ClientFrame::Unsubscribe { room_id: b.room_id })
        }
        "send" => {
            let b: SendBody = serde_json::from_value(v.clone()).map_err(bad)?;
            let text = match b.text {
                Some(t) => t,
                None if !b.attachments.is_empty() => String::new(),
                None => return Err(bad(serde::de::Error::missing_field("text"))),
            };
            Ok(ClientFrame::Send {
                room_id: b.room_id,
                client_msg_id: b.client_msg_id,
                text,
                attachments: b.attachments,
            })
        }
        "typing" => {
            let b: RoomBody = serde_json::from_value(v.clone()).map_err(bad)?;
            Ok(ClientFrame::Typing { room_id: b.room_id })
        }
        "auth" => {
            let b: AuthBody = serde_json::from_value(v.clone()).map_err(bad)?;
            Ok(ClientFrame::Auth {
                access_token: b.access_token,
            })
        }
        "edit" => {
            let b: EditBody = serde_json::from_value(v.clone()).map_err(bad)?;
            Ok(ClientFrame::Edit {
                room_id: b.room_id,
                message_id: b.message_id,
                text: b.text,
            })
        }
        "delete" => {
            let b: DeleteBody = serde_json::from_value(v.clone()).map_err(bad)?;
            Ok(ClientFrame::Delete {
                room_id: b.room_id,
                message_id: b.message_id,
            })
        }
        other => Err(FrameError::new("unknown_type", format!("unknown frame type {other:?}"))),
    }
}

fn text(v: Value) -> Frame {
    Frame::json(&v)
}

pub fn hello(user_id: &str, session_id: &str) -> Frame {
    text(json!({"type": "hello", "user_id": user_id, "session_id": session_id}))
}

pub fn subscribed(room_id: &str, cursor: &str) -> Frame {
    text(json!({"type": "subscribed", "room_id": room_id, "cursor": cursor}))
}

pub fn unsubscribed(room_id: &str) -> Frame {
    text(json!({"type": "unsubscribed", "room_id": room_id}))
}

pub fn ack(client_msg_id: &str, message_id: &str, cursor: &str) -> Frame {
    text(json!({"type": "ack", "client_msg_id": client_msg_id, "message_id": message_id, "cursor": cursor}))
}

pub fn error(e: &FrameError) -> Frame {
    let mut v = json!({"type": "error", "code": e.code, "message": e.message});
    if let Some(c) = &e.client_msg_id {
        v["client_msg_id"] = json!(c);
    }
    if let Some(m) = &e.message_id {
        v["message_id"] = json!(m);
    }
    text(v)
}

/// The answer to an `edit` (`edited`) or `delete` (`deleted`): the change is
/// durable and decided; `cursor` is its position on the room's stream.
pub fn changed(edit: bool, room_id: &str, c: &emosation_ingest::Changed) -> Frame {
    let (kind, at) = if edit {
        ("edited", "edited_at")
    } else {
        ("deleted", "deleted_at")
    };
    text(json!({
        "type": kind,
        "room_id": room_id,
        "message_id": c.message_id,
        at: rfc3339_millis(c.at),
        "cursor": c.cursor,
    }))
}

/// A `message_edited` / `message_deleted` frame, at the change's position.
pub fn message_change(c: &MessageChangeView, cursor: &str) -> Frame {
    match &c.text {
        Some(t) => text(json!({
            "type": "message_edited",
            "room_id": c.room_id,
            "message_id": c.message_id,
            "text": t,
            "edited_at": rfc3339_millis(c.at),
            "user_id": c.user_id,
            "cursor": cursor,
        })),
        None => text(json!({
            "type": "message_deleted",
            "room_id": c.room_id,
            "message_id": c.message_id,
            "deleted_at": rfc3339_millis(c.at),
            "deleted_by": c.user_id,
            "cursor": cursor,
        })),
    }
}

pub fn typing(room_id: &str, user_id: &str) -> Frame {
    text(json!({"type": "typing", "room_id": room_id, "user_id": user_id}))
}

/// Someone opened (`arrived`) or closed (`left`, after the grace period)
/// the room; `online_count` users have it open now, on any node.
pub fn presence(room_id: &str, user_id: &str, state: &str, online_count: u32) -> Frame {
    text(
        json!({"type": "presence", "room_id": room_id, "user_id": user_id, "state": state, "online_count": online_count}),
    )
}

/// A notice for this user, on every connection they have, subscribed or
/// not: `kind` `friend_request` or `friend_accepted`, from `user_id`
/// (`username`); `room_id` is the pair's direct-message room.
pub fn notification(kind: &str, user_id: &str, username: &str, room_id: &str) -> Frame {
    text(json!({"type": "notification", "kind": kind, "user_id": user_id, "username": username, "room_id": room_id}))
}

pub fn kicked(reason: &str) -> Frame {
    text(json!({"type": "kicked", "reason": reason}))
}

/// The connection's session ended (`logout`, `account_deleted`,
/// `token_expired`, `revoked`); close 1008 follows.
pub fn session_ended(reason: &str) -> Frame {
    text(json!({"type": "session_ended", "reason": reason}))
}

/// An `auth` frame's token was accepted; the connection now lasts until `expires_at`.
pub fn authenticated(expires_at_ms: i64) -> Frame {
    text(json!({"type": "authenticated", "expires_at": rfc3339_millis(expires_at_ms)}))
}

/// A `message` frame, from the record, the id its position gives it, and
/// the attachments the fold found for it (`attachments` only when there are).
pub fn message(
    m: &emosation_core::record::MessagePosted,
    message_id: &str,
    attachments: &[emosation_core::view::AttachmentRef],
) -> Frame {
    let mut v = json!({
        "type": "message",
        "message_id": message_id,
        "room_id": m.room_id,
        "author_id": m.author_id,
        "author": m.author,
        "text": m.text,
        "created_at": rfc3339_millis(m.at),
        "cursor": message_id,
    });
    if !attachments.is_empty() {
        v["attachments"] = emosation_http::files::attachments_json(attachments);
    }
    text(v)
}

/// A `message` frame of a message deleted since (a catch-up's): the
/// tombstone history shows — no text, `deleted`, `deleted_at`.
pub fn tombstone(m: &emosation_core::record::MessagePosted, message_id: &str, deleted_at: i64) -> Frame {
    text(json!({
        "type": "message",
        "message_id": message_id,
        "room_id": m.room_id,
        "author_id": m.author_id,
        "author": m.author,
        "text": "",
        "created_at": rfc3339_millis(m.at),
        "deleted": true,
        "deleted_at": rfc3339_millis(deleted_at),
        "cursor": message_id,
    }))
}

/// An `emotion` frame; its cursor is the emotion record's position.
pub fn emotion(e: &EmotionView) -> Frame {
    let scores: serde_json::Map<String, Value> = Label::ALL
        .iter()
        .zip(e.scores)
        .map(|(l, s)| (l.as_str().to_owned(), json!(s)))
        .collect();
    text(json!({
        "type": "emotion",
        "message_id": e.message_id,
        "room_id": e.room_id,
        "label": e.label,
        "score": e.score,
        "scores": scores,
        "model": e.model,
        "created_at": rfc3339_millis(e.created_at),
        "cursor": e.position,
    }))
}

/// A `member_joined` / `member_left` frame.
pub fn membership(e: &RoomEventView, cursor: &str) -> Frame {
    text(json!({
        "type": if e.joined { "member_joined" } else { "member_left" },
        "room_id": e.room_id,
        "user_id": e.user_id,
        "username": e.username,
        "member_count": e.member_count,
        "cursor": cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(
            parse(r#"{"type":"subscribe","room_id":"r","streams":["chat"]}"#).unwrap(),
            ClientFrame::Subscribe {
                room_id: "r".into(),
                since: None,
                streams: Streams {
                    chat: true,
                    emotion: false,
                    presence: false,
                }
            }
        );
        assert_eq!(parse("not json").unwrap_err().code, "invalid_json");
        assert_eq!(parse(r#"{"room_id":"r"}"#).unwrap_err().code, "invalid_request");
        assert_eq!(parse(r#"{"type":"dance"}"#).unwrap_err().code, "unknown_type");
        assert_eq!(parse(r#"{"type":"subscribe"}"#).unwrap_err().code, "invalid_request");
        assert_eq!(
            parse(r#"{"type":"subscribe","room_id":"r","streams":["x"]}"#)
                .unwrap_err()
                .code,
            "invalid_request"
        );
        let e = parse(r#"{"type":"send","room_id":"r","client_msg_id":"c9"}"#).unwrap_err();
        assert_eq!((e.code, e.client_msg_id.as_deref()), ("invalid_request", Some("c9")));
        // Beside attachments, text may be left out.
        assert_eq!(
            parse(r#"{"type":"send","room_id":"r","client_msg_id":"c9","attachments":["a"]}"#).unwrap(),
            ClientFrame::Send {
                room_id: "r".into(),
                client_msg_id: "c9".into(),
                text: String::new(),
                attachments: vec!["a".into()],
            }
        );
        assert_eq!(parse(r#"[1,2]"#).unwrap_err().code, "invalid_request");
        assert_eq!(
            parse(r#"{"type":"auth","access_token":"t"}"#).unwrap(),
            ClientFrame::Auth {
                access_token: "t".into()
            }
        );
        assert_eq!(parse(r#"{"type":"auth"}"#).unwrap_err().code, "invalid_request");
        assert_eq!(
            parse(r#"{"type":"edit","room_id":"r","message_id":"m","text":"t"}"#).unwrap(),
            ClientFrame::Edit {
                room_id: "r".into(),
                message_id: "m".into(),
                text: "t".into()
            }
        );
        let e = parse(r#"{"type":"edit","room_id":"r","message_id":"m"}"#).unwrap_err();
        assert_eq!((e.code, e.message_id.as_deref()), ("invalid_request", Some("m")));
        assert_eq!(
            parse(r#"{"type":"delete","room_id":"r","message_id":"m"}"#).unwrap(),
            ClientFrame::Delete {
                room_id: "r".into(),
                message_id: "m".into()
            }
        );
        assert_eq!(
            parse(r#"{"type":"delete","room_id":"r"}"#).unwrap_err().code,
            "invalid_request"
        );
    }
}
