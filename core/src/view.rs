//! View entities, the keys that address them, and the state the fold works on.
//!
//! The views are a key-value model: every entity the fold reads or writes has a
//! [`ViewKey`]. A view store adapter maps keys to its own tables (fjall keyspaces,
//! Scylla tables) and keeps the secondary indexes the queries need (a user's
//! memberships, a room's history in id order).

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;

use rustc_hash::FxHasher;

use crate::ids::Topic;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    pub user_id: String,
    pub username: String,
    pub password_hash: String,
    pub created_at: i64,
    /// Set while the account is soft-deleted.
    pub deleted_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomView {
    pub room_id: String,
    pub name: String,
    pub capacity: u32,
    pub owner_id: String,
    pub created_at: i64,
    pub member_count: u32,
    /// Messages posted so far; a message's `seq` is its 1-based rank in the room.
    pub message_count: u64,
    pub last_message_id: Option<String>,
    /// Emotions recorded for the room's messages, per label in `Label::ALL` order.
    pub emotion_counts: [u32; 7],
}

impl RoomView {
    /// A direct-message room: two friends' room, with no owner (every room
    /// a user creates has one).
    pub fn is_direct(&self) -> bool {
        self.owner_id.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub room_id: String,
    pub user_id: String,
    pub username: String,
    pub joined_at: i64,
    /// `seq` of the last message this member has read; unread = room's
    /// `message_count - read_seq`. Joining marks history as read, and posting
    /// marks one's own message as read.
    pub read_seq: u64,
    pub last_read_message_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageView {
    pub message_id: String,
    pub room_id: String,
    pub seq: u64,
    pub author_id: String,
    pub author: String,
    pub text: String,
    pub created_at: i64,
    pub client_msg_id: String,
    /// The files the message carries, in the order the sender listed them.
    /// Stored last, and read as none when absent: a message stored before
    /// attachments existed ends where this field would begin, so views
    /// written by an older build still read.
    pub attachments: Vec<AttachmentRef>,
}

impl<'de> Deserialize<'de> for MessageView {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// The same fields, for self-describing formats (a map).
        #[derive(Deserialize)]
        struct Fields {
            message_id: String,
            room_id: String,
            seq: u64,
            author_id: String,
            author: String,
            text: String,
            created_at: i64,
            client_msg_id: String,
            #[serde(default)]
            attachments: Vec<AttachmentRef>,
        }
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = MessageView;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a message view")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<MessageView, A::Error> {
                fn next<'de, T: Deserialize<'de>, A: serde::de::SeqAccess<'de>>(
                    seq: &mut A,
                    i: usize,
                ) -> Result<T, A::Error> {
                    seq.next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &"a message view's fields"))
                }
                Ok(MessageView {
                    message_id: next(&mut seq, 0)?,
                    room_id: next(&mut seq, 1)?,
                    seq: next(&mut seq, 2)?,
                    author_id: next(&mut seq, 3)?,
                    author: next(&mut seq, 4)?,
                    text: next(&mut seq, 5)?,
                    created_at: next(&mut seq, 6)?,
                    client_msg_id: next(&mut seq, 7)?,
                    // Absent (the input ends here) in views stored before attachments.
                    attachments: seq.next_element().ok().flatten().unwrap_or_default(),
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<MessageView, A::Error> {
                let f = Fields::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(MessageView {
                    message_id: f.message_id,
                    room_id: f.room_id,
                    seq: f.seq,
                    author_id: f.author_id,
                    author: f.author,
                    text: f.text,
                    created_at: f.created_at,
                    client_msg_id: f.client_msg_id,
                    attachments: f.attachments,
                })
            }
        }
        const FIELDS: &[&str] = &[
            "message_id",
            "room_id",
            "seq",
            "author_id",
            "author",
            "text",
            "created_at",
            "client_msg_id",
            "attachments",
        ];
        d.deserialize_struct("MessageView", FIELDS, Visit)
    }
}

/// What a message shows of one of its attachments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRef {
    pub attachment_id: String,
    pub file_name: String,
    pub size: u64,
    pub content_type: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

/// An uploaded file ([`ViewKey::Attachment`]), as the fold decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentView {
    pub attachment_id: String,
    pub room_id: String,
    pub uploader_id: String,
    pub file_name: String,
    pub size: u64,
    pub content_type: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub blob_key: String,
    pub sha256: String,
    pub uploaded_at: i64,
    /// The message that carries it, once one does (at most one).
    pub message_id: Option<String>,
}

impl AttachmentView {
    pub fn to_ref(&self) -> AttachmentRef {
        AttachmentRef {
            attachment_id: self.attachment_id.clone(),
            file_name: self.file_name.clone(),
            size: self.size,
            content_type: self.content_type.clone(),
            width: self.width,
            height: self.height,
        }
    }
}

/// A room's attachments that no message carries yet, oldest first, with
/// when each was uploaded (kept under the reserved id [`ROOM_ATTACHMENTS_ID`]):
/// what the garbage collector visits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomAttachmentsView {
    pub room_id: String,
    pub pending: Vec<(String, i64)>,
}

/// The emotion of one message (the analyzer's first classification of it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmotionView {
    pub room_id: String,
    pub message_id: String,
    pub label: String,
    pub score: f32,
    pub scores: [f32; 7],
    pub model: String,
    pub created_at: i64,
    /// Log position of the `EmotionRecorded` record: the `emotion` stream's cursor.
    pub position: String,
}

impl EmotionView {
    /// The view an `EmotionRecorded` at `pos` makes, as the fold stores it
    /// (the label in its canonical spelling); `None` for a record the fold
    /// refuses as malformed (an unknown label, not seven scores, a score
    /// that is not finite).
    pub fn from_record(r: &crate::record::EmotionRecorded, pos: crate::ids::LogPosition) -> Option<EmotionView> {
        let label: crate::emotion::Label = r.label.parse().ok()?;
        let scores: [f32; 7] = r.scores.as_slice().try_into().ok()?;
        if !r.score.is_finite() || scores.iter().any(|s| !s.is_finite()) {
            return None;
        }
        Some(EmotionView {
            room_id: r.room_id.clone(),
            message_id: r.message_id.clone(),
            label: label.as_str().to_owned(),
            score: r.score,
            scores,
            model: r.model.clone(),
            created_at: r.at,
            position: pos.to_id(),
        })
    }
}

/// What changed in a room's membership, and the member count after it: what
/// a fan-out node tells subscribers (`member_joined` / `member_left`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomEventView {
    pub room_id: String,
    pub joined: bool,
    pub user_id: String,
    pub username: String,
    pub member_count: u32,
    pub at: i64,
}

/// Whether an account has the admin role: kept beside its sessions under the
/// reserved id [`ADMIN_ROLE_ID`], so the authenticator reads it in the same
/// partition as the session. None means never granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRoleView {
    pub user_id: String,
    pub granted: bool,
    pub at: i64,
    pub by: String,
}

/// What edits and deletes did to one message ([`ViewKey::MessageEdit`]):
/// its latest text, whether it is deleted, and the emotion of its latest
/// classified edit. The message's own entity stays as posted (write-once);
/// readers lay this over it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageEditView {
    pub room_id: String,
    pub message_id: String,
    /// The latest text (empty once deleted).
    pub text: String,
    /// When the text was last edited.
    pub edited_at: Option<i64>,
    /// Position of the latest accepted `MessageEdited` record: the version an
    /// emotion must name to supersede the message's emotion.
    pub edit_id: Option<String>,
    /// Accepted edits so far.
    pub edits: u32,
    /// Set once deleted (a tombstone: no text, no emotion).
    pub deleted_at: Option<i64>,
    pub deleted_by: Option<String>,
    /// The emotion of an edit, which supersedes the message's first emotion,
    /// and the edit it classified.
    pub emotion: Option<EmotionView>,
    pub emotion_edit_id: Option<String>,
}

/// Edits, deletes and re-classifications of a room's messages so far (kept
/// under the reserved id [`ROOM_EDITS_ID`]): readers that cache a room's
/// rendered messages compare it to know when a change made them stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomEditsView {
    pub room_id: String,
    pub changes: u64,
}

/// An accepted edit or delete at its log position (kept in the room events
/// table, [`ViewKey::RoomEvent`]): what a fan-out node tells subscribers
/// (`message_edited` / `message_deleted`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageChangeView {
    pub room_id: String,
    pub message_id: String,
    /// The new text; `None` for a delete.
    pub text: Option<String>,
    pub user_id: String,
    pub username: String,
    pub at: i64,
}

/// Where one user stands with another: one row per direction
/// ([`ViewKey::Friend`]), both written only by the pair's records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendView {
    pub user_id: String,
    pub other_id: String,
    pub other_name: String,
    pub status: FriendStatus,
    /// `user_id` blocks `other_id`.
    pub blocking: bool,
    /// `other_id` blocks `user_id`.
    pub blocked_by: bool,
    /// When the status last changed.
    pub since: i64,
    /// The pair's direct-message room ([`crate::ids::pair_room_id`]).
    pub room_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FriendStatus {
    None,
    /// `user_id` asked `other_id` to be friends.
    RequestOut,
    /// `other_id` asked `user_id`.
    RequestIn,
    Friends,
}

impl FriendStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FriendStatus::None => "none",
            FriendStatus::RequestOut => "request_out",
            FriendStatus::RequestIn => "request_in",
            FriendStatus::Friends => "friends",
        }
    }
}

/// One room's activity in one UTC hour: the `activity` consumer's view, not
/// the fold's (see [`ACTIVITY_VIEWS`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityView {
    pub room_id: String,
    /// Start of the hour, milliseconds since the epoch ([`crate::time::hour_start`]).
    pub hour: i64,
    /// Messages the fold stored in the room during the hour.
    pub messages: u64,
    /// Distinct authors of those messages, sorted by user id.
    pub authors: Vec<String>,
}

impl ActivityView {
    pub fn new(room_id: &str, hour: i64) -> Self {
        ActivityView {
            room_id: room_id.to_owned(),
            hour,
            messages: 0,
            authors: Vec::new(),
        }
    }

    /// Counts one message by `author_id`.
    pub fn count(&mut self, author_id: &str) {
        self.messages += 1;
        if let Err(i) = self.authors.binary_search_by(|a| a.as_str().cmp(author_id)) {
            self.authors.insert(i, author_id.to_owned());
        }
    }
}

/// One partition's counts for the admin console, in one UTC day (scope
/// `days/TOPIC/PARTITION`, bucket the day's start in ms) or in all
/// (scope `totals/TOPIC/PARTITION`, bucket 0): what the fold accepted, by
/// the records' own `at`. A partition's counters are written only by that
/// partition's batches, so partitions never race; a reader sums them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminCountsView {
    /// Start of the UTC day in ms (0 for totals).
    pub day: i64,
    /// Accounts signed up (a taken username is not counted).
    pub signups: u64,
    /// Rooms created (direct-message rooms included).
    pub rooms: u64,
    /// Messages the fold stored.
    pub messages: u64,
    /// First emotions of messages, per label in `Label::ALL` order.
    pub emotions: [u64; 7],
}

impl AdminCountsView {
    /// Adds `other`'s counts to these (the day stays).
    pub fn add(&mut self, other: &AdminCountsView) {
        self.signups += other.signups;
        self.rooms += other.rooms;
        self.messages += other.messages;
        for (a, b) in self.emotions.iter_mut().zip(other.emotions) {
            *a += b;
        }
    }
}

/// How many audit entries one accounts partition holds (scope
/// `audit/PARTITION`, bucket 0): entry `n` is on page `n / AUDIT_PAGE`,
/// stored at bucket `1 + n / AUDIT_PAGE`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHeadView {
    pub count: u64,
}

/// Audit entries per [`AuditPageView`].
pub const AUDIT_PAGE: u64 = 64;

/// Up to [`AUDIT_PAGE`] admin actions of one accounts partition, in log order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPageView {
    pub entries: Vec<AuditEntryView>,
}

/// One admin action, as its record on the log decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntryView {
    /// The record's `at`.
    pub at: i64,
    /// The record's log position (16-hex id).
    pub position: String,
    /// `admin_granted`, `admin_revoked`, `account_deleted`, `account_restored`.
    pub action: String,
    /// Who: an admin's user id, `token` (the shared admin token) or `cli`.
    pub by: String,
    /// The account acted on.
    pub user_id: String,
    pub username: String,
}

/// A logout of a session that no `SessionOpened` record opened (logs from
/// before sessions were records): all the fold knows of such a session is
/// that it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    pub session_id: String,
    pub user_id: String,
    pub revoked_at: i64,
    pub expires_at: i64,
}

/// A session opened by a login (`SessionOpened`), as the fold decided it.
/// Its tokens are good while it has not ended, `expires_at` is ahead, and
/// `account_epoch` is still the account's [`SessionEpochView::epoch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenedSessionView {
    pub session_id: String,
    pub user_id: String,
    pub opened_at: i64,
    /// The absolute end (milliseconds): no refresh extends a session past it.
    pub expires_at: i64,
    /// The generation of the one refresh token that may still be used.
    pub generation: i64,
    /// The account's deletion count when the session was opened: a deletion
    /// ends every session opened before it, and a restore revives none.
    pub account_epoch: u32,
    pub ended: Option<SessionEnd>,
}

impl OpenedSessionView {
    /// Whether the session's tokens may be used at `now` (milliseconds) by an
    /// account whose deletion count is `account_epoch`.
    pub fn is_live(&self, now: i64, account_epoch: u32) -> bool {
        self.ended.is_none() && now < self.expires_at && self.account_epoch == account_epoch
    }
}

/// How and when a session ended before its absolute end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEnd {
    pub at: i64,
    pub reason: SessionEndReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionEndReason {
    /// `SessionRevoked`: the user logged out.
    Logout,
    /// A refresh token of the session was presented a second time.
    RefreshReuse,
}

/// How many times an account was deleted, and when last: stored beside its
/// sessions ([`ViewKey::session_epoch`]), in its username's partition.
/// Written only once an account is deleted; none means epoch 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEpochView {
    pub user_id: String,
    pub epoch: u32,
    pub deleted_at: i64,
}

/// The address of one view entity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ViewKey {
    User(String),
    /// Normalized username → user id.
    Username(String),
    Room(String),
    Member {
        room_id: String,
        user_id: String,
    },
    Message {
        room_id: String,
        message_id: String,
    },
    /// `(room, sender, client_msg_id)` → the message id first stored for it.
    ClientMsg {
        room_id: String,
        user_id: String,
        client_msg_id: String,
    },
    /// The emotion of a message.
    Emotion {
        room_id: String,
        message_id: String,
    },
    /// A membership change of a room, at its log position (16-hex id).
    RoomEvent {
        room_id: String,
        position: String,
    },
    /// `(normalized username, session id)`: keyed under the username so a
    /// session's records stay local to the username's partition. The
    /// reserved id [`SESSION_EPOCH_ID`] holds the account's
    /// [`SessionEpochView`] ([`ViewKey::session_epoch`]).
    Session {
        username: String,
        session_id: String,
    },
    /// A room's activity in the UTC hour starting at `hour` (milliseconds
    /// since the epoch, never negative). Written by the `activity` consumer.
    Activity {
        room_id: String,
        hour: i64,
    },
    /// The edits of a message ([`MessageEditView`]); the reserved id
    /// [`ROOM_EDITS_ID`] holds the room's [`RoomEditsView`].
    MessageEdit {
        room_id: String,
        message_id: String,
    },
    /// Where `user_id` stands with `other_id` ([`FriendView`]); a user's rows
    /// are listed in `other_id` order.
    Friend {
        user_id: String,
        other_id: String,
    },
    /// The admin console's views, written by the `admin` consumer
    /// ([`ADMIN_VIEWS`]): under `scope` (one partition's counters or audit)
    /// the entity `bucket` (a UTC day, or an audit page). See
    /// [`AdminCountsView`] and [`AuditPageView`] for the scopes.
    Admin {
        scope: String,
        bucket: i64,
    },
    /// An attachment of a room ([`AttachmentView`]); the reserved id
    /// [`ROOM_ATTACHMENTS_ID`] holds the room's [`RoomAttachmentsView`].
    Attachment {
        room_id: String,
        attachment_id: String,
    },
}

/// Tables of the view model, in the order checksums visit them. New tables
/// go at the end: adapters store a table's index (Scylla's redo records).
pub const TABLES: [&str; 14] = [
    "users",
    "usernames",
    "rooms",
    "members",
    "messages",
    "client_msgs",
    "sessions",
    "room_events",
    "emotions",
    "activity",
    "message_edits",
    "friends",
    "admin",
    "attachments",
];

/// The consumer whose views the `activity` table holds: per-room activity by
/// hour, folded from the log by its own consumer (not by the core fold, and
/// not rebuilt by a core replay).
pub const ACTIVITY_VIEWS: &str = "activity";

/// The consumer whose views the `admin` table holds: the admin console's
/// daily counters and audit of admin actions, folded from both topics by its
/// own consumer (`emosation_analyzer::admin`), rebuilt by backfilling it.
pub const ADMIN_VIEWS: &str = "admin";

/// The consumer whose views a table holds: `clear(consumer)` drops exactly
/// its tables, and `checksum_of(consumer)` digests exactly them.
pub fn table_owner(table: &str) -> &'static str {
    match table {
        "activity" => ACTIVITY_VIEWS,
        "admin" => ADMIN_VIEWS,
        _ => crate::ports::CORE_VIEWS,
    }
}

/// The tables of `consumer`, in [`TABLES`] order (none for a consumer that
/// keeps no views, e.g. the analyzer, whose results are on the log).
pub fn tables_of(consumer: &str) -> impl Iterator<Item = &'static str> + '_ {
    TABLES.into_iter().filter(move |t| table_owner(t) == consumer)
}

/// The session id under which the sessions table holds an account's
/// [`SessionEpochView`]. Session ids that ingest makes are 16 hex digits, and
/// the fold refuses session records naming this one.
pub const SESSION_EPOCH_ID: &str = "*";

/// The session id under which the sessions table holds an account's
/// [`AdminRoleView`]; the fold refuses session records naming it.
pub const ADMIN_ROLE_ID: &str = "@admin";

/// Whether a session id is one of the reserved ids of the sessions table.
pub fn is_reserved_session_id(id: &str) -> bool {
    id == SESSION_EPOCH_ID || id == ADMIN_ROLE_ID
}

/// The attachment id under which the attachments table holds a room's
/// [`RoomAttachmentsView`] (attachment ids are hex digits).
pub const ROOM_ATTACHMENTS_ID: &str = "*";

/// The message id under which the message edits table holds a room's
/// [`RoomEditsView`] (message ids are 16 hex digits).
pub const ROOM_EDITS_ID: &str = "*";

impl ViewKey {
    /// A session of `username` (normalized).
    pub fn session(username: &str, session_id: &str) -> ViewKey {
        ViewKey::Session {
            username: username.to_owned(),
            session_id: session_id.to_owned(),
        }
    }

    /// Where the account of `username` (normalized) keeps its
    /// [`SessionEpochView`]: beside its sessions, so the fold of a session
    /// record reads it from the same partition, and the authenticator in
    /// the same lookup as the session.
    pub fn session_epoch(username: &str) -> ViewKey {
        ViewKey::session(username, SESSION_EPOCH_ID)
    }

    /// A room's message.
    pub fn message(room_id: &str, message_id: &str) -> ViewKey {
        ViewKey::Message {
            room_id: room_id.to_owned(),
            message_id: message_id.to_owned(),
        }
    }

    /// The emotion the fold kept for a room's message.
    pub fn emotion(room_id: &str, message_id: &str) -> ViewKey {
        ViewKey::Emotion {
            room_id: room_id.to_owned(),
            message_id: message_id.to_owned(),
        }
    }

    /// The edits of a room's message.
    pub fn message_edit(room_id: &str, message_id: &str) -> ViewKey {
        ViewKey::MessageEdit {
            room_id: room_id.to_owned(),
            message_id: message_id.to_owned(),
        }
    }

    /// Where the account of `username` (normalized) keeps its [`AdminRoleView`].
    pub fn admin_role(username: &str) -> ViewKey {
        ViewKey::session(username, ADMIN_ROLE_ID)
    }

    /// Where `user_id` stands with `other_id`.
    pub fn friend(user_id: &str, other_id: &str) -> ViewKey {
        ViewKey::Friend {
            user_id: user_id.to_owned(),
            other_id: other_id.to_owned(),
        }
    }

    /// One partition's [`AdminCountsView`] of the UTC day starting at `day`.
    pub fn admin_day(topic: Topic, partition: u32, day: i64) -> ViewKey {
        ViewKey::Admin {
            scope: format!("days/{}/{partition}", topic.name()),
            bucket: day.max(0),
        }
    }

    /// One partition's all-time [`AdminCountsView`].
    pub fn admin_totals(topic: Topic, partition: u32) -> ViewKey {
        ViewKey::Admin {
            scope: format!("totals/{}/{partition}", topic.name()),
            bucket: 0,
        }
    }

    /// An accounts partition's [`AuditHeadView`] (`page: None`) or its
    /// [`AuditPageView`] number `page`.
    pub fn audit(partition: u32, page: Option<u64>) -> ViewKey {
        ViewKey::Admin {
            scope: format!("audit/{partition}"),
            bucket: page.map_or(0, |p| p as i64 + 1),
        }
    }

    /// An attachment of a room.
    pub fn attachment(room_id: &str, attachment_id: &str) -> ViewKey {
        ViewKey::Attachment {
            room_id: room_id.to_owned(),
            attachment_id: attachment_id.to_owned(),
        }
    }

    /// Where a room keeps its [`RoomAttachmentsView`].
    pub fn room_attachments(room_id: &str) -> ViewKey {
        ViewKey::attachment(room_id, ROOM_ATTACHMENTS_ID)
    }

    /// Where a room keeps its [`RoomEditsView`].
    pub fn room_edits(room_id: &str) -> ViewKey {
        ViewKey::message_edit(room_id, ROOM_EDITS_ID)
    }

    /// The table this key belongs to (one of [`TABLES`]).
    pub fn table(&self) -> &'static str {
        match self {
            ViewKey::User(_) => "users",
            ViewKey::Username(_) => "usernames",
            ViewKey::Room(_) => "rooms",
            ViewKey::Member { .. } => "members",
            ViewKey::Message { .. } => "messages",
            ViewKey::ClientMsg { .. } => "client_msgs",
            ViewKey::Session { .. } => "sessions",
            ViewKey::RoomEvent { .. } => "room_events",
            ViewKey::Emotion { .. } => "emotions",
            ViewKey::Activity { .. } => "activity",
            ViewKey::MessageEdit { .. } => "message_edits",
            ViewKey::Friend { .. } => "friends",
            ViewKey::Admin { .. } => "admin",
            ViewKey::Attachment { .. } => "attachments",
        }
    }

    /// Entities that the fold writes once and never changes or deletes
    /// afterwards (messages and idempotency keys). Replay bulk-loads them.
    pub fn is_write_once(&self) -> bool {
        matches!(
            self,
            ViewKey::Message { .. } | ViewKey::ClientMsg { .. } | ViewKey::RoomEvent { .. } | ViewKey::Emotion { .. }
        )
    }

    /// Canonical key bytes within the table: components joined by NUL. Ids
    /// are fixed-width hex and usernames never contain NUL, so only the last
    /// component can vary in length and
    /// prefixes (`room_id\0`) select one room's members or messages in id order.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48);
        self.encode_into(&mut out);
        out
    }

    /// [`ViewKey::encode`], appended to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        fn join(out: &mut Vec<u8>, parts: &[&str]) {
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    out.push(0);
                }
                out.extend_from_slice(p.as_bytes());
            }
        }
        match self {
            ViewKey::User(id) | ViewKey::Username(id) | ViewKey::Room(id) => out.extend_from_slice(id.as_bytes()),
            ViewKey::Session { username, session_id } => join(out, &[username, session_id]),
            ViewKey::Member { room_id, user_id } => join(out, &[room_id, user_id]),
            ViewKey::Friend { user_id, other_id } => join(out, &[user_id, other_id]),
            ViewKey::Attachment { room_id, attachment_id } => join(out, &[room_id, attachment_id]),
            ViewKey::RoomEvent { room_id, position } => join(out, &[room_id, position]),
            ViewKey::Emotion { room_id, message_id } => join(out, &[room_id, message_id]),
            ViewKey::Message { room_id, message_id } | ViewKey::MessageEdit { room_id, message_id } => {
                join(out, &[room_id, message_id])
            }
            ViewKey::Activity { room_id, hour } => join(out, &[room_id, &hour_field(*hour)]),
            ViewKey::Admin { scope, bucket } => join(out, &[scope, &hour_field(*bucket)]),
            ViewKey::ClientMsg {
                room_id,
                user_id,
                client_msg_id,
            } => join(out, &[room_id, user_id, client_msg_id]),
        }
    }

    /// The index of [`ViewKey::table`] in [`TABLES`].
    pub fn table_index(&self) -> usize {
        match self {
            ViewKey::User(_) => 0,
            ViewKey::Username(_) => 1,
            ViewKey::Room(_) => 2,
            ViewKey::Member { .. } => 3,
            ViewKey::Message { .. } => 4,
            ViewKey::ClientMsg { .. } => 5,
            ViewKey::Session { .. } => 6,
            ViewKey::RoomEvent { .. } => 7,
            ViewKey::Emotion { .. } => 8,
            ViewKey::Activity { .. } => 9,
            ViewKey::MessageEdit { .. } => 10,
            ViewKey::Friend { .. } => 11,
            ViewKey::Admin { .. } => 12,
            ViewKey::Attachment { .. } => 13,
        }
    }

    /// The key of a write-once entity from its table and canonical bytes (the
    /// inverse of [`ViewKey::encode`] for [`ViewKey::is_write_once`] keys);
    /// `None` for other tables or bytes that are not such a key.
    pub fn decode_write_once(table: &str, bytes: &[u8]) -> Option<ViewKey> {
        let text = std::str::from_utf8(bytes).ok()?;
        let two = || {
            let (a, b) = text.split_once('\0')?;
            Some((a.to_owned(), b.to_owned()))
        };
        match table {
            "messages" => two().map(|(room_id, message_id)| ViewKey::Message { room_id, message_id }),
            "emotions" => two().map(|(room_id, message_id)| ViewKey::Emotion { room_id, message_id }),
            "room_events" => two().map(|(room_id, position)| ViewKey::RoomEvent { room_id, position }),
            "client_msgs" => {
                let mut parts = text.splitn(3, '\0');
                let (room_id, user_id, client_msg_id) = (parts.next()?, parts.next()?, parts.next()?);
                Some(ViewKey::ClientMsg {
                    room_id: room_id.to_owned(),
                    user_id: user_id.to_owned(),
                    client_msg_id: client_msg_id.to_owned(),
                })
            }
            _ => None,
        }
    }
}

/// An hour as a key component: 16 hex digits, so a room's hours sort by
/// time as bytes (hours before the epoch, which the consumer never writes,
/// would clamp to 0).
pub fn hour_field(hour: i64) -> String {
    format!("{:016x}", hour.max(0))
}

/// One view entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ViewValue {
    User(UserView),
    Username(String),
    Room(RoomView),
    Member(MemberView),
    Message(MessageView),
    ClientMsg(String),
    Session(SessionView),
    RoomEvent(RoomEventView),
    Emotion(EmotionView),
    Activity(ActivityView),
    OpenedSession(OpenedSessionView),
    SessionEpoch(SessionEpochView),
    MessageEdit(MessageEditView),
    RoomEdits(RoomEditsView),
    MessageChange(MessageChangeView),
    Friend(FriendView),
    AdminRole(AdminRoleView),
    AdminCounts(AdminCountsView),
    AuditHead(AuditHeadView),
    AuditPage(AuditPageView),
    Attachment(AttachmentView),
    RoomAttachments(RoomAttachmentsView),
}

impl ViewValue {
    /// The value's stored bytes (postcard), the same in every adapter.
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_allocvec(self)
    }

    /// [`ViewValue::encode`], appended to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
        /// Appends to the caller's buffer: one byte or one slice at a time,
        /// straight into the vector (replay encodes millions of values).
        struct Append<'a>(&'a mut Vec<u8>);
        impl postcard::ser_flavors::Flavor for Append<'_> {
            type Output = ();
            #[inline]
            fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
                self.0.push(byte);
                Ok(())
            }
            #[inline]
            fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
                self.0.extend_from_slice(bytes);
                Ok(())
            }
            fn finalize(self) -> postcard::Result<()> {
                Ok(())
            }
        }
        postcard::serialize_with_flavor(self, Append(out))
    }

    pub fn decode(bytes: &[u8]) -> Result<ViewValue, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// The state the fold reads and writes. The projector's implementation is an
/// overlay over the view store holding the keys prefetched for a batch
/// ([`crate::keys_read_by`]); [`MemState`] holds a whole state in memory.
pub trait FoldState {
    fn get(&self, key: &ViewKey) -> Option<&ViewValue>;
    fn put(&mut self, key: ViewKey, value: ViewValue);
    fn delete(&mut self, key: &ViewKey);
    /// Changes an existing entity in place (the hot path's alternative to
    /// clone-modify-put); does nothing if the entity does not exist.
    fn update(&mut self, key: &ViewKey, f: impl FnOnce(&mut ViewValue));
}

/// A complete view state in memory, ordered, so two equal states compare equal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemState {
    pub entries: BTreeMap<ViewKey, ViewValue>,
}

impl FoldState for MemState {
    fn get(&self, key: &ViewKey) -> Option<&ViewValue> {
        self.entries.get(key)
    }
    fn put(&mut self, key: ViewKey, value: ViewValue) {
        self.entries.insert(key, value);
    }
    fn delete(&mut self, key: &ViewKey) {
        self.entries.remove(key);
    }
    fn update(&mut self, key: &ViewKey, f: impl FnOnce(&mut ViewValue)) {
        if let Some(v) = self.entries.get_mut(key) {
            f(v);
        }
    }
}

/// The staged changes of one projector batch over prefetched store contents.
/// Reads see earlier writes of the same batch; `take_changes` returns what to
/// commit. One hash map holds each key once, with a dirty flag (this is the
/// projector's hottest structure).
#[derive(Debug, Default)]
pub struct Overlay {
    entries: HashMap<ViewKey, (Option<ViewValue>, bool), BuildHasherDefault<FxHasher>>,
}

impl Overlay {
    pub fn with_capacity(n: usize) -> Self {
        Overlay {
            entries: HashMap::with_capacity_and_hasher(n, Default::default()),
        }
    }

    /// Whether `key` has been loaded (or written) in this batch.
    pub fn contains(&self, key: &ViewKey) -> bool {
        self.entries.contains_key(key)
    }

    /// Records what the store holds for `key`, unless the batch already has it.
    pub fn preload(&mut self, key: ViewKey, value: Option<ViewValue>) {
        self.entries.entry(key).or_insert((value, false));
    }

    /// Sets what the store holds for a key that is not yet written in this batch.
    pub fn preload_replace(&mut self, key: ViewKey, value: Option<ViewValue>) {
        match self.entries.get_mut(&key) {
            Some((_, true)) => {}
            Some(e) => e.0 = value,
            None => {
                self.entries.insert(key, (value, false));
            }
        }
    }

    /// Drains the changed entries (in no particular order), leaving the overlay empty.
    pub fn take_changes(&mut self) -> Vec<(ViewKey, Option<ViewValue>)> {
        self.entries
            .drain()
            .filter_map(|(k, (v, dirty))| dirty.then_some((k, v)))
            .collect()
    }
}

impl FoldState for Overlay {
    fn get(&self, key: &ViewKey) -> Option<&ViewValue> {
        let entry = self.entries.get(key);
        debug_assert!(entry.is_some(), "fold read unprefetched key {key:?}");
        entry.and_then(|(v, _)| v.as_ref())
    }
    fn put(&mut self, key: ViewKey, value: ViewValue) {
        self.entries.insert(key, (Some(value), true));
    }
    fn delete(&mut self, key: &ViewKey) {
        match self.entries.get_mut(key) {
            Some(e) => *e = (None, true),
            None => {
                self.entries.insert(key.clone(), (None, true));
            }
        }
    }
    fn update(&mut self, key: &ViewKey, f: impl FnOnce(&mut ViewValue)) {
        if let Some((Some(v), dirty)) = self.entries.get_mut(key) {
            f(v);
            *dirty = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(attachments: Vec<AttachmentRef>) -> ViewValue {
        ViewValue::Message(MessageView {
            message_id: "0003000000000001".into(),
            room_id: "00000000000000aa".into(),
            seq: 1,
            author_id: "0001000000000000".into(),
            author: "alice".into(),
            text: "hello".into(),
            created_at: 7,
            client_msg_id: "c1".into(),
            attachments,
        })
    }

    /// A message stored by a build from before attachments (its bytes end
    /// where the field begins) reads as a message without attachments; one
    /// with attachments reads back whole.
    #[test]
    fn messages_stored_before_attachments_still_read() {
        let today = message(vec![]).encode().unwrap();
        assert_eq!(today.last(), Some(&0), "an empty list is its zero length");
        let before = &today[..today.len() - 1];
        assert_eq!(ViewValue::decode(before).unwrap(), message(vec![]));
        let with = message(vec![AttachmentRef {
            attachment_id: "00000000000000aa0003000000000002".into(),
            file_name: "cat.png".into(),
            size: 10,
            content_type: "image/png".into(),
            width: Some(4),
            height: Some(3),
        }]);
        assert_eq!(ViewValue::decode(&with.encode().unwrap()).unwrap(), with);
        // A message cut short anywhere else is still refused.
        assert!(ViewValue::decode(&today[..today.len() - 3]).is_err());
    }
}
