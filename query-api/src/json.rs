//! How view entities are rendered in responses (the contract's shapes).
//!
//! Hot responses (history pages) serialize typed, borrowing structs straight
//! into the response buffer: no intermediate `serde_json::Value`, no
//! per-field allocation, timestamps formatted on the fly.

use std::fmt;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use emosation_core::emotion::Label;
use emosation_core::time::rfc3339_millis;
use emosation_core::view::{AttachmentRef, EmotionView, MemberView, MessageEditView, MessageView, RoomView, UserView};
use serde::Serialize;
use serde_json::{Value, json};

/// Milliseconds since the epoch, serialized as an RFC 3339 string.
#[derive(Debug, Clone, Copy)]
pub struct Timestamp(pub i64);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&rfc3339_millis(self.0))
    }
}

pub fn user(u: &UserView) -> Value {
    json!({"user_id": u.user_id, "username": u.username, "created_at": rfc3339_millis(u.created_at)})
}

pub fn room(r: &RoomView) -> Value {
    json!({
        "room_id": r.room_id,
        "name": r.name,
        "capacity": r.capacity,
        "owner_id": r.owner_id,
        "member_count": r.member_count,
        "created_at": rfc3339_millis(r.created_at),
    })
}

pub fn my_room(r: &RoomView, m: &MemberView) -> Value {
    json!({
        "room_id": r.room_id,
        "name": r.name,
        "member_count": r.member_count,
        "unread_count": r.message_count.saturating_sub(m.read_seq),
        "last_read_message_id": m.last_read_message_id,
    })
}

/// A `Message`: its cursor is its log position, the same string as its id.
#[derive(Debug, Serialize)]
pub struct Message<'a> {
    pub message_id: &'a str,
    pub room_id: &'a str,
    pub author_id: &'a str,
    pub author: &'a str,
    pub text: &'a str,
    pub created_at: Timestamp,
    pub cursor: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emotion: Option<Emotion<'a>>,
    /// When the text was last edited (absent: never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<Timestamp>,
    /// A deleted message is a tombstone: `deleted: true`, `deleted_at`, an
    /// empty text and no emotion (both absent: not deleted).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Timestamp>,
    /// The files the message carries (absent: none; a tombstone shows none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment<'a>>,
}

/// One of a message's attachments.
#[derive(Debug, Serialize)]
pub struct Attachment<'a> {
    pub attachment_id: &'a str,
    pub file_name: &'a str,
    pub size: u64,
    pub content_type: &'a str,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Where members download it.
    pub url: String,
}

impl<'a> From<&'a AttachmentRef> for Attachment<'a> {
    fn from(a: &'a AttachmentRef) -> Self {
        Attachment {
            attachment_id: &a.attachment_id,
            file_name: &a.file_name,
            size: a.size,
            content_type: &a.content_type,
            width: a.width,
            height: a.height,
            url: format!("/v1/attachments/{}", a.attachment_id),
        }
    }
}

impl<'a> Message<'a> {
    /// The message as posted, with its emotion and what edits and deletes
    /// made of it since.
    pub fn new(m: &'a MessageView, emotion: Option<&'a EmotionView>, edit: Option<&'a MessageEditView>) -> Self {
        let mut out = Message {
            message_id: &m.message_id,
            room_id: &m.room_id,
            author_id: &m.author_id,
            author: &m.author,
            text: &m.text,
            created_at: Timestamp(m.created_at),
            cursor: &m.message_id,
            emotion: emotion.map(Emotion::from),
            edited_at: None,
            deleted: false,
            deleted_at: None,
            attachments: m.attachments.iter().map(Attachment::from).collect(),
        };
        if let Some(e) = edit {
            if let Some(deleted_at) = e.deleted_at {
                out.text = "";
                out.emotion = None;
                out.deleted = true;
                out.deleted_at = Some(Timestamp(deleted_at));
                out.attachments.clear();
            } else if let Some(edited_at) = e.edited_at {
                out.text = &e.text;
                out.edited_at = Some(Timestamp(edited_at));
            }
            if let (None, Some(em)) = (e.deleted_at, &e.emotion) {
                out.emotion = Some(Emotion::from(em));
            }
        }
        out
    }
}

/// Scores per label, serialized as `{label: score}`.
#[derive(Debug, Clone, Copy)]
pub struct Scores(pub [f32; 7]);

impl Serialize for Scores {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(7))?;
        for (l, v) in Label::ALL.iter().zip(self.0) {
            m.serialize_entry(l.as_str(), &v)?;
        }
        m.end()
    }
}

/// An `Emotion`: its cursor is the position of the emotion record.
#[derive(Debug, Serialize)]
pub struct Emotion<'a> {
    pub message_id: &'a str,
    pub room_id: &'a str,
    pub label: &'a str,
    pub score: f32,
    pub scores: Scores,
    pub model: &'a str,
    pub created_at: Timestamp,
    pub cursor: &'a str,
}

impl<'a> From<&'a EmotionView> for Emotion<'a> {
    fn from(e: &'a EmotionView) -> Self {
        Emotion {
            message_id: &e.message_id,
            room_id: &e.room_id,
            label: &e.label,
            score: e.score,
            scores: Scores(e.scores),
            model: &e.model,
            created_at: Timestamp(e.created_at),
            cursor: &e.position,
        }
    }
}

/// A page of history.
#[derive(Debug, Serialize)]
pub struct HistoryPage<'a> {
    pub messages: Vec<Message<'a>>,
    pub next_before: Option<&'a str>,
}

/// Serializes `body` into one pre-sized buffer and answers it as JSON.
pub fn respond<T: Serialize>(body: &T, size_hint: usize) -> Response {
    let mut buf = Vec::with_capacity(size_hint);
    match serde_json::to_writer(&mut buf, body) {
        Ok(()) => ([(header::CONTENT_TYPE, "application/json")], buf).into_response(),
        Err(e) => emosation_http::ApiError::internal("serialize response", e).into_response(),
    }
}
