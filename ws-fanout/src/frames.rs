//! The frames of the WebSocket protocol (see the contract and docs/api.md).
//!
//! A server frame is built once, as the complete bytes a socket is sent
//! ([`Frame`]: header and payload), and shared by every socket it goes to.

use bytes::Bytes;
use emosation_core::emotion::Label;
use emosation_core::time::rfc3339_millis;
use emosation_core::view::{EmotionView, RoomEventView};
use serde::Deserialize;
use serde_json::{Value, json};

/// Which stream an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Chat,
    Emotion,
}

/// Streams a subscription receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streams {
    pub chat: bool,
    pub emotion: bool,
}

impl Streams {
    pub const ALL: Streams = Streams {
        chat: true,
        emotion: true,
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
    },
    Typing {
        room_id: String,
    },
}

/// Why a client frame was refused: `(code, message, client_msg_id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: &'static str,
    pub message: String,
    pub client_msg_id: Option<String>,
}

impl FrameError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        FrameError {
            code,
            message: message.into(),
            client_msg_id: None,
        }
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
struct SendBody {
    room_id: String,
    client_msg_id: String,
    text: String,
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
                    };
                    for name in &list {
                        match name.as_str() {
                            "chat" => s.chat = true,
                            "emotion" => s.emotion = true,
                            other => {
                                return Err(FrameError::new(
                                    "invalid_request",
                                    format!("unknown stream {other:?}; streams are chat and emotion"),
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
            Ok(ClientFrame::Send {
                room_id: b.room_id,
                client_msg_id: b.client_msg_id,
                text: b.text,
            })
        }
        "typing" => {
            let b: RoomBody = serde_json::from_value(v.clone()).map_err(bad)?;
            Ok(ClientFrame::Typing { room_id: b.room_id })
        }
        other => Err(FrameError::new("unknown_type", format!("unknown frame type {other:?}"))),
    }
}

/// A complete server-to-client WebSocket frame (RFC 6455 §5.2: final, not
/// masked), ready to write: a room's event is encoded once, WebSocket header
/// included, and the same bytes go to each of its sockets.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

/// The longest header: 2 bytes, then a 64-bit length.
const MAX_HEADER: usize = 10;
const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;

impl Frame {
    /// A text frame holding `v` as JSON.
    fn json(v: &Value) -> Frame {
        let mut buf = Vec::with_capacity(160);
        buf.resize(MAX_HEADER, 0);
        serde_json::to_writer(&mut buf, v).expect("a JSON value serializes");
        Frame::finish(OP_TEXT, buf)
    }

    /// Writes the header for the payload after `buf`'s first [`MAX_HEADER`]
    /// bytes, ending where the payload starts (no copy of the payload).
    fn finish(opcode: u8, mut buf: Vec<u8>) -> Frame {
        let len = buf.len() - MAX_HEADER;
        let start = match len {
            0..=125 => {
                buf[MAX_HEADER - 1] = len as u8;
                MAX_HEADER - 2
            }
            126..=65_535 => {
                buf[MAX_HEADER - 3] = 126;
                buf[MAX_HEADER - 2..MAX_HEADER].copy_from_slice(&(len as u16).to_be_bytes());
                MAX_HEADER - 4
            }
            _ => {
                buf[1] = 127;
                buf[2..MAX_HEADER].copy_from_slice(&(len as u64).to_be_bytes());
                0
            }
        };
        buf[start] = 0x80 | opcode;
        Frame(Bytes::from(buf).slice(start..))
    }

    /// Bytes that are already whole frames (tungstenite's pongs).
    pub(crate) fn raw(bytes: Bytes) -> Frame {
        Frame(bytes)
    }

    /// A ping (empty payload).
    pub fn ping() -> Frame {
        Frame(Bytes::from_static(&[0x80 | OP_PING, 0]))
    }

    /// A close frame with its status code and reason (at most 123 bytes, as
    /// a control frame's payload is at most 125).
    pub fn close(code: u16, reason: &str) -> Frame {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut buf = vec![0; MAX_HEADER];
        buf.extend_from_slice(&code.to_be_bytes());
        buf.extend_from_slice(&reason.as_bytes()[..end]);
        Frame::finish(OP_CLOSE, buf)
    }

    /// The bytes to write.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The payload (after the header).
    pub fn payload(&self) -> &[u8] {
        let b = &self.0;
        let header = match b[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        &b[header..]
    }

    /// A text frame's payload as a string (empty for other frames).
    pub fn text(&self) -> &str {
        if self.0[0] & 0x0f != OP_TEXT {
            return "";
        }
        std::str::from_utf8(self.payload()).unwrap_or_default()
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("opcode", &(self.0[0] & 0x0f))
            .field("text", &self.text())
            .finish()
    }
}

/// Whether `frame` (complete server frames, as tungstenite writes them) is a
/// close frame, and where the next frame starts; `None` if the bytes do not
/// parse as an unmasked frame header.
pub(crate) fn split_frame(bytes: &[u8]) -> Option<(u8, usize)> {
    let (&b0, rest) = bytes.split_first()?;
    let (&b1, rest) = rest.split_first()?;
    if b1 & 0x80 != 0 {
        return None;
    }
    let (len, header): (usize, usize) = match b1 & 0x7f {
        126 => (u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize, 4),
        127 => (
            usize::try_from(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?)).ok()?,
            10,
        ),
        n => (n as usize, 2),
    };
    let end = header.checked_add(len)?;
    (end <= bytes.len()).then_some((b0 & 0x0f, end))
}

/// `bytes` without its close frames (whole frames in, whole frames out).
pub(crate) fn without_close(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while !rest.is_empty() {
        match split_frame(rest) {
            Some((op, end)) => {
                if op != OP_CLOSE {
                    out.extend_from_slice(&rest[..end]);
                }
                rest = &rest[end..];
            }
            None => {
                out.extend_from_slice(rest);
                break;
            }
        }
    }
    out
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
    text(v)
}

pub fn typing(room_id: &str, user_id: &str) -> Frame {
    text(json!({"type": "typing", "room_id": room_id, "user_id": user_id}))
}

pub fn kicked(reason: &str) -> Frame {
    text(json!({"type": "kicked", "reason": reason}))
}

/// A `message` frame, from the record and the id its position gives it.
pub fn message(m: &emosation_core::record::MessagePosted, message_id: &str) -> Frame {
    text(json!({
        "type": "message",
        "message_id": message_id,
        "room_id": m.room_id,
        "author_id": m.author_id,
        "author": m.author,
        "text": m.text,
        "created_at": rfc3339_millis(m.at),
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
                    emotion: false
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
        assert_eq!(parse(r#"[1,2]"#).unwrap_err().code, "invalid_request");
    }

    #[test]
    fn frames_are_whole_websocket_frames() {
        // Each length form: 7 bits, 16 bits, 64 bits.
        for n in [0usize, 100, 125, 126, 1000, 65_535, 65_536, 200_000] {
            let f = error(&FrameError::new("x", "y".repeat(n)));
            let b = f.bytes();
            assert_eq!(b[0], 0x81, "final text frame");
            assert_eq!(split_frame(b), Some((OP_TEXT, b.len())), "one whole frame");
            let v: Value = serde_json::from_str(f.text()).unwrap();
            assert_eq!(v["message"].as_str().unwrap().len(), n);
        }
        let close = Frame::close(1013, &"é".repeat(100));
        assert_eq!(close.bytes()[0], 0x88);
        assert!(close.payload().len() <= 125);
        assert_eq!(&close.payload()[..2], &1013u16.to_be_bytes());
        assert!(std::str::from_utf8(&close.payload()[2..]).is_ok());
        assert_eq!(Frame::ping().bytes().as_ref(), &[0x89, 0]);
        // Close frames are taken out of a run of frames, the rest kept whole.
        let pong = [0x8a, 1, b'p'];
        let mut run = pong.to_vec();
        run.extend_from_slice(close.bytes());
        run.extend_from_slice(&pong);
        assert_eq!(without_close(&run), [pong, pong].concat());
        assert_eq!(without_close(&[0x88]), vec![0x88], "unparsable bytes pass through");
    }
}
