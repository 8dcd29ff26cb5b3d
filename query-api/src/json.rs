//! How view entities are rendered in responses (the contract's shapes).

use emosation_core::time::rfc3339_millis;
use emosation_core::view::{MemberView, MessageView, RoomView, UserView};
use serde_json::{Value, json};

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
pub fn message(m: &MessageView) -> Value {
    json!({
        "message_id": m.message_id,
        "room_id": m.room_id,
        "author_id": m.author_id,
        "author": m.author,
        "text": m.text,
        "created_at": rfc3339_millis(m.created_at),
        "cursor": m.message_id,
    })
}
