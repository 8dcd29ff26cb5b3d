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
/// Attachments on one message.
pub const MAX_ATTACHMENTS: usize = 10;
/// An attachment's file name, in characters.
pub const MAX_FILE_NAME_CHARS: usize = 255;
/// A content type (`type/subtype`, parameters included), in bytes.
pub const MAX_CONTENT_TYPE_BYTES: usize = 255;
/// A blob store key ([`crate::ports::StoredBlob::key`]), in bytes.
pub const MAX_BLOB_KEY_BYTES: usize = 200;
/// An attachment id: a room id and a log position's 16 hex digits.
pub const MAX_ATTACHMENT_ID_BYTES: usize = MAX_ID_BYTES + 16;

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
                    && r.attachments.len() <= MAX_ATTACHMENTS
                    && r.attachments
                        .iter()
                        .all(|a| !a.is_empty() && a.len() <= MAX_ATTACHMENT_ID_BYTES)
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
            Record::AttachmentUploaded(r) => {
                id(&r.room_id)
                    && id(&r.uploader_id)
                    && name(&r.uploader)
                    && !r.file_name.is_empty()
                    && chars(&r.file_name, MAX_FILE_NAME_CHARS)
                    && r.size >= 0
                    && r.content_type.len() <= MAX_CONTENT_TYPE_BYTES
                    && r.width.is_none_or(|w| w > 0)
                    && r.height.is_none_or(|h| h > 0)
                    && !r.blob_key.is_empty()
                    && r.blob_key.len() <= MAX_BLOB_KEY_BYTES
                    && r.sha256.len() <= 64
            }
            Record::AttachmentExpired(r) => {
                id(&r.room_id) && !r.attachment_id.is_empty() && r.attachment_id.len() <= MAX_ATTACHMENT_ID_BYTES
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
            attachments: vec![],
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
