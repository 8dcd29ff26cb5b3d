//! The contract's limits on what a record may hold, in one place: ingest
//! refuses input beyond them (`invalid_request`), and the fold refuses any
//! record beyond them as undecidable ([`crate::Rejection::Malformed`]), so a
//! producer writing to the topics directly cannot make the views store an
//! entity no engine can hold (an embedded key over 64 KiB) or stop the
//! projector.

use crate::record::Record;

/// A message's text, in characters.
pub const MAX_TEXT_CHARS: usize = 4000;
/// A room's name, in characters.
pub const MAX_ROOM_NAME_CHARS: usize = 100;
/// A `client_msg_id`, in characters.
pub const MAX_CLIENT_MSG_ID_CHARS: usize = 128;
/// A username (`[a-z0-9_]{3,32}`), in characters.
pub const MAX_USERNAME_CHARS: usize = 32;
/// An id (user, room, session, message; 16 hex digits when this code makes
/// one), in bytes.
pub const MAX_ID_BYTES: usize = 64;
/// A password hash (argon2 PHC string), in bytes.
pub const MAX_PASSWORD_HASH_BYTES: usize = 1024;
/// An emotion's label and model name, in bytes.
pub const MAX_LABEL_BYTES: usize = 64;
pub const MAX_MODEL_BYTES: usize = 256;

fn id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_BYTES
}

fn chars(s: &str, max: usize) -> bool {
    // Bytes bound characters from above: most strings need no count.
    s.len() <= max || s.chars().count() <= max
}

fn name(s: &str) -> bool {
    chars(s, MAX_USERNAME_CHARS)
}

impl Record {
    /// Whether every id and string of the record is within the contract's
    /// limits (see the module doc).
    pub fn within_limits(&self) -> bool {
        match self {
            Record::UserSignedUp(r) => name(&r.username) && r.password_hash.len() <= MAX_PASSWORD_HASH_BYTES,
            Record::AccountDeleted(r) => id(&r.user_id) && name(&r.username),
            Record::AccountRestored(r) => id(&r.user_id) && name(&r.username),
            Record::SessionRevoked(r) => id(&r.user_id) && name(&r.username) && id(&r.session_id),
            Record::SessionOpened(r) => id(&r.user_id) && name(&r.username) && id(&r.session_id),
            Record::SessionRefreshed(r) => id(&r.user_id) && name(&r.username) && id(&r.session_id),
            Record::RoomCreated(r) => {
                id(&r.room_id) && chars(&r.name, MAX_ROOM_NAME_CHARS) && id(&r.owner_id) && name(&r.owner_name)
            }
            Record::MemberJoined(r) => id(&r.room_id) && id(&r.user_id) && name(&r.username),
            Record::MemberQuit(r) => id(&r.room_id) && id(&r.user_id) && name(&r.username),
            Record::MessagePosted(r) => {
                id(&r.room_id)
                    && id(&r.author_id)
                    && name(&r.author)
                    && chars(&r.client_msg_id, MAX_CLIENT_MSG_ID_CHARS)
                    && chars(&r.text, MAX_TEXT_CHARS)
            }
            Record::ReadMarkerSet(r) => id(&r.room_id) && id(&r.user_id) && id(&r.message_id),
            Record::EmotionRecorded(r) => {
                id(&r.room_id)
                    && id(&r.message_id)
                    && r.label.len() <= MAX_LABEL_BYTES
                    && r.model.len() <= MAX_MODEL_BYTES
                    && r.scores.len() <= 16
                    && r.edit_id.as_deref().is_none_or(id)
            }
            Record::MessageEdited(r) => {
                id(&r.room_id)
                    && id(&r.message_id)
                    && id(&r.user_id)
                    && name(&r.username)
                    && chars(&r.text, MAX_TEXT_CHARS)
            }
            Record::MessageDeleted(r) => id(&r.room_id) && id(&r.message_id) && id(&r.user_id) && name(&r.username),
            Record::AdminRoleChanged(r) => id(&r.user_id) && name(&r.username) && chars(&r.by, MAX_ID_BYTES),
            Record::RelationshipChanged(r) => {
                id(&r.room_id)
                    && id(&r.user_id)
                    && name(&r.username)
                    && id(&r.other_id)
                    && name(&r.other_name)
                    && r.action.len() <= 16
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::MessagePosted;

    fn post(text: &str, room_id: &str) -> Record {
        Record::MessagePosted(MessagePosted {
            request_id: 1,
            at: 1,
            room_id: room_id.into(),
            author_id: "00000000000000aa".into(),
            author: "alice".into(),
            client_msg_id: "c1".into(),
            text: text.into(),
        })
    }

    #[test]
    fn records_at_the_limits_pass_and_beyond_them_do_not() {
        let room = "00000000000000ff";
        assert!(
            post(&"가".repeat(MAX_TEXT_CHARS), room).within_limits(),
            "characters, not bytes"
        );
        assert!(!post(&"a".repeat(MAX_TEXT_CHARS + 1), room).within_limits());
        assert!(
            !post("hi", &"r".repeat(70_000)).within_limits(),
            "an id no store could key"
        );
        assert!(!post("hi", "").within_limits());
    }
}
