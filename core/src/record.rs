//! The records on the log: one struct per Avro schema in `schemas/avro/`.
//!
//! Every record carries `request_id` (chosen by the ingest node that appended it,
//! so the node can recognise the fold's decision about its own command) and `at`
//! (milliseconds since the epoch, taken by ingest: the fold never reads a clock).
//! Field names are the Avro field names.

use serde::{Deserialize, Serialize};

use crate::ids::{Topic, normalize_username};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSignedUp {
    pub request_id: i64,
    pub at: i64,
    /// The user's id is not chosen by anyone: it is this record's log
    /// position, unique by construction and local to the username's partition.
    pub username: String,
    /// PHC string of an argon2id hash; the password itself never reaches the log.
    pub password_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountDeleted {
    pub request_id: i64,
    pub at: i64,
    pub user_id: String,
    pub username: String,
    /// Who deleted it: `None` for the account's owner, else an admin's user
    /// id, `token` or `cli` (v2; `None` in older records).
    #[serde(default)]
    pub by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRestored {
    pub request_id: i64,
    pub at: i64,
    pub user_id: String,
    pub username: String,
    /// Who restored it: an admin's user id, `token` or `cli` (v2; `None` in
    /// older records).
    #[serde(default)]
    pub by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRevoked {
    pub request_id: i64,
    pub at: i64,
    pub user_id: String,
    pub username: String,
    pub session_id: String,
    /// When the session's last token would have expired anyway.
    pub expires_at: i64,
}

/// A login: opens session `session_id` of the user, which lives until
/// `expires_at` at the latest, however often it is refreshed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOpened {
    pub request_id: i64,
    pub at: i64,
    pub user_id: String,
    pub username: String,
    pub session_id: String,
    /// The session's absolute end (milliseconds since the epoch).
    pub expires_at: i64,
}

/// A refresh of session `session_id` presenting a refresh token of
/// `generation`. The fold accepts it only if `generation` is the session's
/// current one; any other generation is a reused token, and revokes the
/// session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRefreshed {
    pub request_id: i64,
    pub at: i64,
    pub user_id: String,
    pub username: String,
    pub session_id: String,
    pub generation: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomCreated {
    pub request_id: i64,
    pub at: i64,
    pub room_id: String,
    pub name: String,
    pub capacity: i32,
    pub owner_id: String,
    pub owner_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberJoined {
    pub request_id: i64,
    pub at: i64,
    pub room_id: String,
    pub user_id: String,
    pub username: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberQuit {
    pub request_id: i64,
    pub at: i64,
    pub room_id: String,
    pub user_id: String,
    pub username: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagePosted {
    pub request_id: i64,
    pub at: i64,
    pub room_id: String,
    pub author_id: String,
    pub author: String,
    pub client_msg_id: String,
    pub text: String,
    /// Attachment ids ([`AttachmentUploaded`]) this message carries, in the
    /// order shown; empty for a text-only message. Added in v2.
    pub attachments: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMarkerSet {
    pub request_id: i64,
    pub at: i64,
    pub room_id: String,
    pub user_id: String,
    pub message_id: String,
}

/// The analyzer's classification of one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmotionRecorded {
    pub request_id: i64,
    pub at: i64,
    pub room_id: String,
    pub message_id: String,
    pub label: String,
    pub score: f32,
    /// One score per label, in `Label::ALL` order.
    pub scores: Vec<f32>,
    pub model: String,
    /// The `MessageEdited` record (its position) whose text was classified;
    /// `None` for the message as posted. An emotion of the message's latest
    /// edit supersedes the emotion it had before.
    pub edit_id: Option<String>,
}

/// The author of `message_id` replaces its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageEdited {
    pub request_id: i64,
    pub at: i64,
    pub room_id: String,
    pub message_id: String,
    pub user_id: String,
    pub username: String,
    pub text: String,
}

/// The author of `message_id`, or the room's owner, deletes it: history
/// keeps a tombstone without its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDeleted {
    pub request_id: i64,
    pub at: i64,
    pub room_id: String,
    pub message_id: String,
    pub user_id: String,
    pub username: String,
}

/// `user_id` acts on their relationship with `other_id`: `action` is one of
/// [`RELATIONSHIP_ACTIONS`]. Keyed by the pair's room id
/// ([`crate::ids::pair_room_id`]), which is also their direct-message room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationshipChanged {
    pub request_id: i64,
    pub at: i64,
    pub room_id: String,
    pub user_id: String,
    pub username: String,
    pub other_id: String,
    pub other_name: String,
    pub action: String,
}

/// What a [`RelationshipChanged`] may do: send, accept, decline or cancel a
/// friend request, remove a friend, block or unblock, and open the pair's
/// direct-message room.
pub const RELATIONSHIP_ACTIONS: [&str; 8] = [
    "request", "accept", "decline", "cancel", "remove", "block", "unblock", "open",
];

/// The admin role of `user_id` is granted (`granted`) or revoked: the
/// `emosation admin grant|revoke` command, or an admin. Keyed by username.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRoleChanged {
    pub request_id: i64,
    pub at: i64,
    pub user_id: String,
    pub username: String,
    pub granted: bool,
    /// Who did it: an admin's user id, or `cli` / `token` for the command
    /// line and the shared admin token.
    pub by: String,
}

/// A file uploaded to a room, appended once its bytes are durable in the
/// blob store. Its id is `room_id` followed by this record's log position
/// (16 hex digits): nobody chooses it, and the room can be read from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentUploaded {
    pub request_id: i64,
    pub at: i64,
    pub room_id: String,
    pub uploader_id: String,
    pub uploader: String,
    pub file_name: String,
    pub size: i64,
    pub content_type: String,
    /// An image's pixel size, when the upload is an image the server could read.
    pub width: Option<i32>,
    pub height: Option<i32>,
    /// Where the bytes are ([`crate::ports::BlobStore`]).
    pub blob_key: String,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
}

/// An attachment no message referenced within the garbage-collection
/// delay: the fold forgets it (if it is still unreferenced at this point of
/// the log), and its blob is deleted once the decision is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentExpired {
    pub request_id: i64,
    pub at: i64,
    pub room_id: String,
    pub attachment_id: String,
}

/// A record on the log.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    UserSignedUp(UserSignedUp),
    AccountDeleted(AccountDeleted),
    AccountRestored(AccountRestored),
    SessionRevoked(SessionRevoked),
    RoomCreated(RoomCreated),
    MemberJoined(MemberJoined),
    MemberQuit(MemberQuit),
    MessagePosted(MessagePosted),
    ReadMarkerSet(ReadMarkerSet),
    EmotionRecorded(EmotionRecorded),
    SessionOpened(SessionOpened),
    SessionRefreshed(SessionRefreshed),
    MessageEdited(MessageEdited),
    MessageDeleted(MessageDeleted),
    RelationshipChanged(RelationshipChanged),
    AdminRoleChanged(AdminRoleChanged),
    AttachmentUploaded(AttachmentUploaded),
    AttachmentExpired(AttachmentExpired),
}

impl Record {
    /// The topic this record is appended to.
    pub fn topic(&self) -> Topic {
        match self {
            Record::UserSignedUp(_)
            | Record::AccountDeleted(_)
            | Record::AccountRestored(_)
            | Record::SessionRevoked(_)
            | Record::SessionOpened(_)
            | Record::SessionRefreshed(_)
            | Record::AdminRoleChanged(_) => Topic::Accounts,
            Record::RoomCreated(_)
            | Record::MemberJoined(_)
            | Record::MemberQuit(_)
            | Record::MessagePosted(_)
            | Record::ReadMarkerSet(_)
            | Record::EmotionRecorded(_)
            | Record::MessageEdited(_)
            | Record::MessageDeleted(_)
            | Record::RelationshipChanged(_)
            | Record::AttachmentUploaded(_)
            | Record::AttachmentExpired(_) => Topic::Rooms,
        }
    }

    /// The room a room record is about; `None` for account records.
    pub fn room_id(&self) -> Option<&str> {
        match self {
            Record::UserSignedUp(_)
            | Record::AccountDeleted(_)
            | Record::AccountRestored(_)
            | Record::SessionRevoked(_)
            | Record::SessionOpened(_)
            | Record::SessionRefreshed(_)
            | Record::AdminRoleChanged(_) => None,
            Record::RoomCreated(r) => Some(&r.room_id),
            Record::MemberJoined(r) => Some(&r.room_id),
            Record::MemberQuit(r) => Some(&r.room_id),
            Record::MessagePosted(r) => Some(&r.room_id),
            Record::ReadMarkerSet(r) => Some(&r.room_id),
            Record::EmotionRecorded(r) => Some(&r.room_id),
            Record::MessageEdited(r) => Some(&r.room_id),
            Record::MessageDeleted(r) => Some(&r.room_id),
            Record::RelationshipChanged(r) => Some(&r.room_id),
            Record::AttachmentUploaded(r) => Some(&r.room_id),
            Record::AttachmentExpired(r) => Some(&r.room_id),
        }
    }

    /// The partitioning key: the normalized username for account records, the
    /// room id for room records. Everything the fold decides about a record is
    /// decided from state written by records with the same key, which is what
    /// makes the fold independent of how partitions interleave.
    pub fn key(&self) -> String {
        match self {
            Record::UserSignedUp(r) => normalize_username(&r.username),
            Record::AccountDeleted(r) => normalize_username(&r.username),
            Record::AccountRestored(r) => normalize_username(&r.username),
            Record::SessionRevoked(r) => normalize_username(&r.username),
            Record::SessionOpened(r) => normalize_username(&r.username),
            Record::SessionRefreshed(r) => normalize_username(&r.username),
            Record::AdminRoleChanged(r) => normalize_username(&r.username),
            _ => self.room_id().unwrap_or_default().to_owned(),
        }
    }

    /// Whether this record sits where its topic and key route it: on
    /// `topic`, appended under `key` (which chose its partition). Anything
    /// else — a record of the other topic, or keyed by something other than
    /// [`Record::key`] — would let one partition's fold touch another's
    /// state, so consumers skip it, as they skip undecodable records.
    pub fn is_routed_by(&self, topic: Topic, key: &[u8]) -> bool {
        self.topic() == topic
            && match self.room_id() {
                // Room records (the hot path): compared without allocating.
                Some(room) => room.as_bytes() == key,
                None => self.key().as_bytes() == key,
            }
    }

    pub fn request_id(&self) -> i64 {
        match self {
            Record::UserSignedUp(r) => r.request_id,
            Record::AccountDeleted(r) => r.request_id,
            Record::AccountRestored(r) => r.request_id,
            Record::SessionRevoked(r) => r.request_id,
            Record::RoomCreated(r) => r.request_id,
            Record::MemberJoined(r) => r.request_id,
            Record::MemberQuit(r) => r.request_id,
            Record::MessagePosted(r) => r.request_id,
            Record::ReadMarkerSet(r) => r.request_id,
            Record::EmotionRecorded(r) => r.request_id,
            Record::SessionOpened(r) => r.request_id,
            Record::SessionRefreshed(r) => r.request_id,
            Record::MessageEdited(r) => r.request_id,
            Record::MessageDeleted(r) => r.request_id,
            Record::RelationshipChanged(r) => r.request_id,
            Record::AdminRoleChanged(r) => r.request_id,
            Record::AttachmentUploaded(r) => r.request_id,
            Record::AttachmentExpired(r) => r.request_id,
        }
    }

    /// Short name used in logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Record::UserSignedUp(_) => "user_signed_up",
            Record::AccountDeleted(_) => "account_deleted",
            Record::AccountRestored(_) => "account_restored",
            Record::SessionRevoked(_) => "session_revoked",
            Record::RoomCreated(_) => "room_created",
            Record::MemberJoined(_) => "member_joined",
            Record::MemberQuit(_) => "member_quit",
            Record::MessagePosted(_) => "message_posted",
            Record::ReadMarkerSet(_) => "read_marker_set",
            Record::EmotionRecorded(_) => "emotion_recorded",
            Record::SessionOpened(_) => "session_opened",
            Record::SessionRefreshed(_) => "session_refreshed",
            Record::MessageEdited(_) => "message_edited",
            Record::MessageDeleted(_) => "message_deleted",
            Record::RelationshipChanged(_) => "relationship_changed",
            Record::AdminRoleChanged(_) => "admin_role_changed",
            Record::AttachmentUploaded(_) => "attachment_uploaded",
            Record::AttachmentExpired(_) => "attachment_expired",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_routed_only_by_its_own_topic_and_key() {
        let joined = Record::MemberJoined(MemberJoined {
            request_id: 1,
            at: 0,
            room_id: "room-a".into(),
            user_id: "u1".into(),
            username: "Alice".into(),
        });
        assert!(joined.is_routed_by(Topic::Rooms, b"room-a"));
        assert!(!joined.is_routed_by(Topic::Rooms, b"room-b"));
        assert!(!joined.is_routed_by(Topic::Rooms, b"u1"));
        assert!(!joined.is_routed_by(Topic::Accounts, b"room-a"));

        let revoked = Record::SessionRevoked(SessionRevoked {
            request_id: 2,
            at: 0,
            user_id: "u1".into(),
            username: "Alice".into(),
            session_id: "s".into(),
            expires_at: 0,
        });
        // Account records are keyed by the normalized username.
        assert!(revoked.is_routed_by(Topic::Accounts, b"alice"));
        assert!(!revoked.is_routed_by(Topic::Accounts, b"Alice"));
        assert!(!revoked.is_routed_by(Topic::Rooms, b"alice"));
        for r in [&joined, &revoked] {
            assert!(r.is_routed_by(r.topic(), r.key().as_bytes()));
        }
    }
}
