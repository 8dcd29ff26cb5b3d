//! The deterministic fold: `(state, position, record) -> (state', outcome)`.
//!
//! The projector folds every record into the views, and replay folds the whole
//! log the same way, so every decision that needs serialising is taken here, in
//! log order: the first signup of a username wins, a room admits joins up to its
//! capacity, only members post or read, a repeated `client_msg_id` returns the
//! first message, a refresh token rotates once and a second use of it revokes
//! its session. The fold reads nothing but `state`, the record and its
//! position; it reads only state written by records with the same partition key,
//! so partitions can be folded in any interleaving with the same result.

use crate::emotion::Label;
use crate::ids::{LogPosition, attachment_id, normalize_username, pair_room_id};
use crate::record::{Record, RelationshipChanged};
use crate::view::{
    AdminRoleView, AttachmentView, EmotionView, FoldState, FriendStatus, FriendView, MemberView, MessageChangeView,
    MessageEditView, MessageView, OpenedSessionView, ROOM_ATTACHMENTS_ID, RoomAttachmentsView, RoomEditsView,
    RoomEventView, RoomView, SessionEnd, SessionEndReason, SessionEpochView, SessionView, UserView, ViewKey, ViewValue,
    is_reserved_session_id,
};

/// What the fold decided about one record.
pub type Outcome = Result<Accepted, Rejection>;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Accepted {
    SignedUp {
        user_id: String,
    },
    AccountDeleted,
    AccountRestored,
    SessionRevoked,
    RoomCreated(RoomView),
    /// `changed` is false when the user already was a member (a no-op join).
    Joined {
        member_count: u32,
        changed: bool,
    },
    Quit {
        member_count: u32,
    },
    /// `duplicate` when the `client_msg_id` was seen before: `message_id` is then
    /// the first message's id and nothing was stored.
    Posted {
        message_id: String,
        duplicate: bool,
    },
    ReadMarkerSet,
    /// `duplicate` when the message already had an emotion (the first wins).
    EmotionRecorded {
        duplicate: bool,
    },
    /// A login's session, which ends at `expires_at` at the latest.
    SessionOpened {
        expires_at: i64,
    },
    /// A refresh presenting the session's current generation: `generation`
    /// is the new current one, for the rotated refresh token.
    Refreshed {
        generation: i64,
        expires_at: i64,
    },
    /// A refresh presenting a generation already used (or never issued):
    /// the session is revoked. The refresh itself is refused.
    RefreshReused,
    /// The account's admin role is now `granted` (or not).
    AdminRole {
        granted: bool,
    },
    /// An edit of `message_id`'s text, at `edited_at`.
    MessageEdited {
        message_id: String,
        edited_at: i64,
    },
    /// A relationship action: where the actor stands with the other user
    /// afterwards, and (for `open`) their direct-message room.
    Relationship {
        status: FriendStatus,
        room_id: Option<String>,
    },
    /// `duplicate` when the message was deleted already (nothing changed;
    /// `deleted_at` is then the first delete's).
    MessageDeleted {
        message_id: String,
        deleted_at: i64,
        duplicate: bool,
    },
    /// A file stored as `attachment_id` in its room.
    AttachmentUploaded {
        attachment_id: String,
    },
    /// An attachment nobody referenced is forgotten: its blob (`blob_key`)
    /// may be deleted now.
    AttachmentExpired {
        blob_key: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Rejection {
    #[error("username is taken")]
    UsernameTaken,
    #[error("no such user")]
    UnknownUser,
    #[error("room id already exists")]
    RoomExists,
    #[error("room not found")]
    RoomNotFound,
    #[error("room is full")]
    RoomFull,
    #[error("not a member of this room")]
    NotMember,
    #[error("message not found in this room")]
    MessageNotFound,
    #[error("record is malformed")]
    Malformed,
    /// A refresh of a session that is unknown, ended, past its absolute end,
    /// or opened before its account was deleted.
    #[error("the session has ended")]
    SessionEnded,
    /// An edit by someone other than the message's author, or a delete by
    /// someone who is neither its author nor the room's owner.
    #[error("only the message's author (or, to delete it, the room's owner) may do that")]
    NotAuthor,
    /// An edit of a deleted message.
    #[error("the message was deleted")]
    MessageDeleted,
    /// A friend request or direct message between users one of whom blocks the other.
    #[error("one of you blocks the other")]
    Blocked,
    /// An accept, decline or cancel with no such pending request.
    #[error("there is no such friend request")]
    NoRequest,
    /// A direct message (or a friend removal) between users who are not friends.
    #[error("you are not friends")]
    NotFriends,
    /// A message naming an attachment that is not an upload of its sender
    /// in its room, is carried by another message already, or is named
    /// twice; or the expiry of an attachment that a message carries.
    #[error("an attachment is unknown, not yours, not in this room, or already sent")]
    InvalidAttachment,
}

impl Rejection {
    /// The contract's error code for this refusal (the same over HTTP and
    /// WebSocket).
    pub fn code(self) -> &'static str {
        match self {
            Rejection::UsernameTaken => "username_taken",
            Rejection::UnknownUser => "user_not_found",
            Rejection::RoomExists => "room_exists",
            Rejection::RoomNotFound => "room_not_found",
            Rejection::RoomFull => "room_full",
            Rejection::NotMember => "not_member",
            Rejection::MessageNotFound => "message_not_found",
            Rejection::Malformed => "invalid_request",
            Rejection::SessionEnded => "invalid_token",
            Rejection::NotAuthor => "not_author",
            Rejection::MessageDeleted => "message_deleted",
            Rejection::Blocked => "blocked",
            Rejection::NoRequest => "no_request",
            Rejection::NotFriends => "not_friends",
            Rejection::InvalidAttachment => "invalid_attachment",
        }
    }
}

/// The keys `fold` may read for `record`. The projector prefetches exactly these
/// before folding a batch; the fold never reads anything else.
pub fn keys_read_by(record: &Record) -> Vec<ViewKey> {
    // A record beyond the limits is refused without reading anything.
    if !record.within_limits() {
        return Vec::new();
    }
    let mut keys = match record {
        Record::UserSignedUp(r) => vec![ViewKey::Username(normalize_username(&r.username))],
        Record::AccountDeleted(r) => {
            let mut keys = account_keys(&r.username, &r.user_id);
            keys.push(ViewKey::session_epoch(&normalize_username(&r.username)));
            keys
        }
        Record::AccountRestored(r) => account_keys(&r.username, &r.user_id),
        Record::SessionRevoked(r) => vec![ViewKey::session(&normalize_username(&r.username), &r.session_id)],
        Record::SessionOpened(r) => {
            let username = normalize_username(&r.username);
            let mut keys = account_keys(&username, &r.user_id);
            keys.push(ViewKey::session(&username, &r.session_id));
            keys.push(ViewKey::session_epoch(&username));
            keys
        }
        Record::SessionRefreshed(r) => {
            let username = normalize_username(&r.username);
            vec![
                ViewKey::session(&username, &r.session_id),
                ViewKey::session_epoch(&username),
            ]
        }
        Record::AdminRoleChanged(r) => {
            let mut keys = account_keys(&r.username, &r.user_id);
            keys.push(ViewKey::admin_role(&normalize_username(&r.username)));
            keys
        }
        Record::RoomCreated(r) => vec![ViewKey::Room(r.room_id.clone())],
        Record::MemberJoined(r) => vec![ViewKey::Room(r.room_id.clone()), member(&r.room_id, &r.user_id)],
        Record::MemberQuit(r) => vec![ViewKey::Room(r.room_id.clone()), member(&r.room_id, &r.user_id)],
        Record::MessagePosted(r) => {
            let mut keys = vec![ViewKey::Room(r.room_id.clone()), member(&r.room_id, &r.author_id)];
            if !r.attachments.is_empty() {
                keys.push(ViewKey::room_attachments(&r.room_id));
                // Keyed under this room: another room's attachment is simply
                // not found here.
                keys.extend(r.attachments.iter().map(|a| ViewKey::attachment(&r.room_id, a)));
            }
            keys
        }
        Record::AttachmentUploaded(r) => vec![
            ViewKey::Room(r.room_id.clone()),
            member(&r.room_id, &r.uploader_id),
            ViewKey::room_attachments(&r.room_id),
        ],
        Record::AttachmentExpired(r) => vec![
            ViewKey::attachment(&r.room_id, &r.attachment_id),
            ViewKey::room_attachments(&r.room_id),
        ],
        Record::EmotionRecorded(r) => {
            let mut keys = vec![
                ViewKey::Room(r.room_id.clone()),
                ViewKey::message_edit(&r.room_id, &r.message_id),
            ];
            // Only an edit's emotion counts as a change of the room (a
            // message's first emotion, nearly every one, reads one key less).
            if r.edit_id.is_some() {
                keys.push(ViewKey::room_edits(&r.room_id));
            }
            keys
        }
        Record::MessageEdited(r) => vec![
            ViewKey::Room(r.room_id.clone()),
            member(&r.room_id, &r.user_id),
            ViewKey::message_edit(&r.room_id, &r.message_id),
            ViewKey::room_edits(&r.room_id),
        ],
        Record::MessageDeleted(r) => vec![
            ViewKey::Room(r.room_id.clone()),
            member(&r.room_id, &r.user_id),
            ViewKey::message_edit(&r.room_id, &r.message_id),
            ViewKey::room_edits(&r.room_id),
        ],
        Record::ReadMarkerSet(r) => vec![ViewKey::Room(r.room_id.clone()), member(&r.room_id, &r.user_id)],
        Record::RelationshipChanged(r) => vec![
            ViewKey::friend(&r.user_id, &r.other_id),
            ViewKey::friend(&r.other_id, &r.user_id),
            ViewKey::Room(r.room_id.clone()),
            member(&r.room_id, &r.user_id),
            member(&r.room_id, &r.other_id),
        ],
    };
    keys.extend(write_once_keys_read_by(record));
    keys
}

/// The write-once keys ([`ViewKey::is_write_once`]) among [`keys_read_by`],
/// built without the others: replay keeps mutable entities in memory and
/// looks up only these.
pub fn write_once_keys_read_by(record: &Record) -> Vec<ViewKey> {
    if !record.within_limits() {
        return Vec::new();
    }
    match record {
        Record::MessagePosted(r) => vec![client_msg_key(r)],
        Record::EmotionRecorded(r) => vec![
            ViewKey::message(&r.room_id, &r.message_id),
            ViewKey::emotion(&r.room_id, &r.message_id),
        ],
        Record::ReadMarkerSet(r) => vec![ViewKey::message(&r.room_id, &r.message_id)],
        Record::MessageEdited(r) => vec![ViewKey::message(&r.room_id, &r.message_id)],
        Record::MessageDeleted(r) => vec![
            ViewKey::message(&r.room_id, &r.message_id),
            ViewKey::emotion(&r.room_id, &r.message_id),
        ],
        _ => vec![],
    }
}

fn client_msg_key(r: &crate::record::MessagePosted) -> ViewKey {
    ViewKey::ClientMsg {
        room_id: r.room_id.clone(),
        user_id: r.author_id.clone(),
        client_msg_id: r.client_msg_id.clone(),
    }
}

fn account_keys(username: &str, user_id: &str) -> Vec<ViewKey> {
    vec![
        ViewKey::Username(normalize_username(username)),
        ViewKey::User(user_id.to_owned()),
    ]
}

/// The user an account record names, if its username's index in this
/// partition points at that user id. Checking the index first keeps the fold
/// local: a record naming another partition's user is refused without using
/// that user's state.
fn account_user(s: &impl FoldState, username: &str, user_id: &str) -> Option<UserView> {
    match s.get(&ViewKey::Username(normalize_username(username))) {
        Some(ViewValue::Username(id)) if id == user_id => get_user(s, user_id),
        _ => None,
    }
}

/// The account's deletion count (0 until it is first deleted).
fn session_epoch(s: &impl FoldState, username: &str) -> u32 {
    match s.get(&ViewKey::session_epoch(username)) {
        Some(ViewValue::SessionEpoch(e)) => e.epoch,
        _ => 0,
    }
}

fn member(room_id: &str, user_id: &str) -> ViewKey {
    ViewKey::Member {
        room_id: room_id.to_owned(),
        user_id: user_id.to_owned(),
    }
}

fn get_user(s: &impl FoldState, id: &str) -> Option<UserView> {
    match s.get(&ViewKey::User(id.to_owned())) {
        Some(ViewValue::User(u)) => Some(u.clone()),
        _ => None,
    }
}

fn get_room(s: &impl FoldState, id: &str) -> Option<RoomView> {
    match s.get(&ViewKey::Room(id.to_owned())) {
        Some(ViewValue::Room(r)) => Some(r.clone()),
        _ => None,
    }
}

fn get_member(s: &impl FoldState, room_id: &str, user_id: &str) -> Option<MemberView> {
    match s.get(&member(room_id, user_id)) {
        Some(ViewValue::Member(m)) => Some(m.clone()),
        _ => None,
    }
}

#[allow(clippy::too_many_arguments)]
fn put_room_event(
    s: &mut impl FoldState,
    pos: LogPosition,
    room_id: &str,
    joined: bool,
    user_id: &str,
    username: &str,
    member_count: u32,
    at: i64,
) {
    s.put(
        ViewKey::RoomEvent {
            room_id: room_id.to_owned(),
            position: pos.to_id(),
        },
        ViewValue::RoomEvent(RoomEventView {
            room_id: room_id.to_owned(),
            joined,
            user_id: user_id.to_owned(),
            username: username.to_owned(),
            member_count,
            at,
        }),
    );
}

fn put_room(s: &mut impl FoldState, room: RoomView) {
    s.put(ViewKey::Room(room.room_id.clone()), ViewValue::Room(room));
}

fn put_member(s: &mut impl FoldState, m: MemberView) {
    s.put(member(&m.room_id, &m.user_id), ViewValue::Member(m));
}

fn label_slot(label: Label) -> usize {
    Label::ALL.iter().position(|l| *l == label).unwrap_or(6)
}

/// The edits of a message so far (none yet: its text untouched).
fn get_edit(s: &impl FoldState, room_id: &str, message_id: &str) -> MessageEditView {
    match s.get(&ViewKey::message_edit(room_id, message_id)) {
        Some(ViewValue::MessageEdit(e)) => e.clone(),
        _ => MessageEditView {
            room_id: room_id.to_owned(),
            message_id: message_id.to_owned(),
            text: String::new(),
            edited_at: None,
            edit_id: None,
            edits: 0,
            deleted_at: None,
            deleted_by: None,
            emotion: None,
            emotion_edit_id: None,
        },
    }
}

/// The label slot of the emotion a message counts with in its room's mood:
/// its latest edit's, else its first.
fn effective_emotion_slot(s: &impl FoldState, edit: &MessageEditView, emotion_key: &ViewKey) -> Option<usize> {
    let label = match (&edit.emotion, s.get(emotion_key)) {
        (Some(e), _) => &e.label,
        (None, Some(ViewValue::Emotion(e))) => &e.label,
        _ => return None,
    };
    label.parse::<Label>().ok().map(label_slot)
}

/// One more change (edit, delete, re-classification) to the room's messages.
fn count_room_change(s: &mut impl FoldState, room_id: &str) {
    let key = ViewKey::room_edits(room_id);
    let changes = match s.get(&key) {
        Some(ViewValue::RoomEdits(e)) => e.changes + 1,
        _ => 1,
    };
    s.put(
        key,
        ViewValue::RoomEdits(RoomEditsView {
            room_id: room_id.to_owned(),
            changes,
        }),
    );
}

#[allow(clippy::too_many_arguments)]
fn put_message_change(
    s: &mut impl FoldState,
    position: String,
    room_id: &str,
    message_id: &str,
    text: Option<String>,
    user_id: &str,
    username: &str,
    at: i64,
) {
    s.put(
        ViewKey::RoomEvent {
            room_id: room_id.to_owned(),
            position,
        },
        ViewValue::MessageChange(MessageChangeView {
            room_id: room_id.to_owned(),
            message_id: message_id.to_owned(),
            text,
            user_id: user_id.to_owned(),
            username: username.to_owned(),
            at,
        }),
    );
}

/// A [`RelationshipChanged`]: decided from the pair's two rows (and, to
/// open or close their direct messages, the pair's room), all keyed under
/// the pair's room id.
fn relationship(state: &mut impl FoldState, r: RelationshipChanged) -> Outcome {
    if r.user_id == r.other_id || r.room_id != pair_room_id(&r.user_id, &r.other_id) {
        return Err(Rejection::Malformed);
    }
    let row = |s: &mut dyn FnMut(&ViewKey) -> Option<FriendView>, user: &str, other: &str, other_name: &str| {
        s(&ViewKey::friend(user, other)).unwrap_or(FriendView {
            user_id: user.to_owned(),
            other_id: other.to_owned(),
            other_name: other_name.to_owned(),
            status: FriendStatus::None,
            blocking: false,
            blocked_by: false,
            since: 0,
            room_id: r.room_id.clone(),
        })
    };
    let mut get = |k: &ViewKey| match state.get(k) {
        Some(ViewValue::Friend(f)) => Some(f.clone()),
        _ => None,
    };
    let mut me = row(&mut get, &r.user_id, &r.other_id, &r.other_name);
    let mut them = row(&mut get, &r.other_id, &r.user_id, &r.username);
    // Names follow the newest record that carries them.
    me.other_name = r.other_name.clone();
    them.other_name = r.username.clone();
    let blocked = me.blocking || me.blocked_by;
    let set = |me: &mut FriendView, them: &mut FriendView, mine: FriendStatus, theirs: FriendStatus| {
        me.status = mine;
        them.status = theirs;
        me.since = r.at;
        them.since = r.at;
    };
    let mut room_id = None;
    match r.action.as_str() {
        "request" => {
            if blocked {
                return Err(Rejection::Blocked);
            }
            match me.status {
                FriendStatus::Friends | FriendStatus::RequestOut => {}
                // Both asked: they are friends.
                FriendStatus::RequestIn => set(&mut me, &mut them, FriendStatus::Friends, FriendStatus::Friends),
                FriendStatus::None => set(&mut me, &mut them, FriendStatus::RequestOut, FriendStatus::RequestIn),
            }
        }
        "accept" => match me.status {
            FriendStatus::RequestIn => set(&mut me, &mut them, FriendStatus::Friends, FriendStatus::Friends),
            FriendStatus::Friends => {}
            _ => return Err(Rejection::NoRequest),
        },
        "decline" | "cancel" => {
            let pending = if r.action == "decline" {
                FriendStatus::RequestIn
            } else {
                FriendStatus::RequestOut
            };
            if me.status != pending {
                return Err(Rejection::NoRequest);
            }
            set(&mut me, &mut them, FriendStatus::None, FriendStatus::None);
        }
        "remove" => {
            if me.status != FriendStatus::Friends {
                return Err(Rejection::NotFriends);
            }
            set(&mut me, &mut them, FriendStatus::None, FriendStatus::None);
            close_direct(state, &r);
        }
        "block" => {
            me.blocking = true;
            them.blocked_by = true;
            set(&mut me, &mut them, FriendStatus::None, FriendStatus::None);
            close_direct(state, &r);
        }
        "unblock" => {
            me.blocking = false;
            them.blocked_by = false;
            me.since = r.at;
            them.since = r.at;
        }
        "open" => {
            if blocked {
                return Err(Rejection::Blocked);
            }
            if me.status != FriendStatus::Friends {
                return Err(Rejection::NotFriends);
            }
            open_direct(state, &r);
            room_id = Some(r.room_id.clone());
        }
        _ => return Err(Rejection::Malformed),
    }
    let status = me.status;
    for row in [me, them] {
        let key = ViewKey::friend(&row.user_id, &row.other_id);
        if row.status == FriendStatus::None && !row.blocking && !row.blocked_by {
            state.delete(&key);
        } else {
            state.put(key, ViewValue::Friend(row));
        }
    }
    Ok(Accepted::Relationship { status, room_id })
}

/// Creates the pair's direct-message room, or lets both back into it: a room
/// of two with no owner, which nobody else can join.
fn open_direct(state: &mut impl FoldState, r: &RelationshipChanged) {
    let mut room = get_room(state, &r.room_id).unwrap_or(RoomView {
        room_id: r.room_id.clone(),
        name: String::new(),
        capacity: 2,
        owner_id: String::new(),
        created_at: r.at,
        member_count: 0,
        message_count: 0,
        last_message_id: None,
        emotion_counts: [0; 7],
    });
    for (user_id, username) in [(&r.user_id, &r.username), (&r.other_id, &r.other_name)] {
        if get_member(state, &r.room_id, user_id).is_none() {
            room.member_count += 1;
            put_member(
                state,
                MemberView {
                    room_id: r.room_id.clone(),
                    user_id: user_id.clone(),
                    username: username.clone(),
                    joined_at: r.at,
                    read_seq: room.message_count,
                    last_read_message_id: room.last_message_id.clone(),
                },
            );
        }
    }
    put_room(state, room);
}

/// Takes both out of the pair's direct-message room (its history stays, for
/// when they are friends again).
fn close_direct(state: &mut impl FoldState, r: &RelationshipChanged) {
    let Some(mut room) = get_room(state, &r.room_id) else {
        return;
    };
    for user_id in [&r.user_id, &r.other_id] {
        if get_member(state, &r.room_id, user_id).is_some() {
            state.delete(&member(&r.room_id, user_id));
            room.member_count = room.member_count.saturating_sub(1);
        }
    }
    put_room(state, room);
}

/// Whether an outcome changed the views: the record was accepted and was
/// not a repeat of something already folded (a post whose `client_msg_id`
/// was seen, an emotion after the message's first, a join of a member
/// already in, a second delete). Reported by the projector per record
/// ([`Decisions::folded`](crate::ports::Decisions::folded)).
pub fn took_effect(outcome: &Outcome) -> bool {
    match outcome {
        Err(_) => false,
        Ok(
            Accepted::Posted { duplicate, .. }
            | Accepted::EmotionRecorded { duplicate }
            | Accepted::MessageDeleted { duplicate, .. },
        ) => !duplicate,
        Ok(Accepted::Joined { changed, .. }) => *changed,
        Ok(_) => true,
    }
}

/// Folds one record into `state` and says what was decided. The record is
/// consumed: its strings move into the views instead of being copied.
pub fn fold(state: &mut impl FoldState, pos: LogPosition, record: Record) -> Outcome {
    if !record.within_limits() {
        return Err(Rejection::Malformed);
    }
    match record {
        Record::UserSignedUp(r) => {
            let name_key = ViewKey::Username(normalize_username(&r.username));
            if state.get(&name_key).is_some() {
                return Err(Rejection::UsernameTaken);
            }
            let user_id = pos.to_id();
            state.put(name_key, ViewValue::Username(user_id.clone()));
            state.put(
                ViewKey::User(user_id.clone()),
                ViewValue::User(UserView {
                    user_id: user_id.clone(),
                    username: normalize_username(&r.username),
                    password_hash: r.password_hash.clone(),
                    created_at: r.at,
                    deleted_at: None,
                }),
            );
            Ok(Accepted::SignedUp { user_id })
        }
        Record::AccountDeleted(r) => {
            let mut user = account_user(state, &r.username, &r.user_id).ok_or(Rejection::UnknownUser)?;
            if user.deleted_at.is_none() {
                // Every session opened so far ends here, and stays ended if
                // the account is restored: sessions remember the epoch they
                // were opened in.
                let epoch_key = ViewKey::session_epoch(&user.username);
                let epoch = session_epoch(state, &user.username) + 1;
                state.put(
                    epoch_key,
                    ViewValue::SessionEpoch(SessionEpochView {
                        user_id: user.user_id.clone(),
                        epoch,
                        deleted_at: r.at,
                    }),
                );
                user.deleted_at = Some(r.at);
                state.put(ViewKey::User(user.user_id.clone()), ViewValue::User(user));
            }
            Ok(Accepted::AccountDeleted)
        }
        Record::AccountRestored(r) => {
            let mut user = account_user(state, &r.username, &r.user_id).ok_or(Rejection::UnknownUser)?;
            if user.deleted_at.is_some() {
                user.deleted_at = None;
                state.put(ViewKey::User(user.user_id.clone()), ViewValue::User(user));
            }
            Ok(Accepted::AccountRestored)
        }
        Record::SessionRevoked(r) => {
            if is_reserved_session_id(&r.session_id) {
                return Err(Rejection::Malformed);
            }
            let key = ViewKey::session(&normalize_username(&r.username), &r.session_id);
            if let Some(ViewValue::OpenedSession(_)) = state.get(&key) {
                // The first end stands: a logout after a reuse changes nothing.
                state.update(&key, |v| {
                    if let ViewValue::OpenedSession(s) = v {
                        s.ended.get_or_insert(SessionEnd {
                            at: r.at,
                            reason: SessionEndReason::Logout,
                        });
                    }
                });
                return Ok(Accepted::SessionRevoked);
            }
            // A session no record opened: remember only that it ended.
            state.put(
                key,
                ViewValue::Session(SessionView {
                    session_id: r.session_id.clone(),
                    user_id: r.user_id.clone(),
                    revoked_at: r.at,
                    expires_at: r.expires_at,
                }),
            );
            Ok(Accepted::SessionRevoked)
        }
        Record::SessionOpened(r) => {
            let user = account_user(state, &r.username, &r.user_id).ok_or(Rejection::UnknownUser)?;
            if user.deleted_at.is_some() {
                return Err(Rejection::UnknownUser);
            }
            let key = ViewKey::session(&user.username, &r.session_id);
            // A session id is opened once: opening it again would revive it.
            if is_reserved_session_id(&r.session_id) || state.get(&key).is_some() {
                return Err(Rejection::Malformed);
            }
            let account_epoch = session_epoch(state, &user.username);
            state.put(
                key,
                ViewValue::OpenedSession(OpenedSessionView {
                    session_id: r.session_id,
                    user_id: r.user_id,
                    opened_at: r.at,
                    expires_at: r.expires_at,
                    generation: 0,
                    account_epoch,
                    ended: None,
                }),
            );
            Ok(Accepted::SessionOpened {
                expires_at: r.expires_at,
            })
        }
        Record::SessionRefreshed(r) => {
            let username = normalize_username(&r.username);
            let key = ViewKey::session(&username, &r.session_id);
            let account_epoch = session_epoch(state, &username);
            let session = match state.get(&key) {
                Some(ViewValue::OpenedSession(s)) if s.user_id == r.user_id => s,
                _ => return Err(Rejection::SessionEnded),
            };
            if !session.is_live(r.at, account_epoch) {
                return Err(Rejection::SessionEnded);
            }
            let expires_at = session.expires_at;
            if session.generation == r.generation {
                let generation = r.generation + 1;
                state.update(&key, |v| {
                    if let ViewValue::OpenedSession(s) = v {
                        s.generation = generation;
                    }
                });
                return Ok(Accepted::Refreshed { generation, expires_at });
            }
            // A refresh token is good once. Seeing one again means two
            // parties hold it; which is the thief is unknowable, so the
            // session ends for both (OAuth 2.1, section 4.3.1).
            state.update(&key, |v| {
                if let ViewValue::OpenedSession(s) = v {
                    s.ended = Some(SessionEnd {
                        at: r.at,
                        reason: SessionEndReason::RefreshReuse,
                    });
                }
            });
            Ok(Accepted::RefreshReused)
        }
        Record::RoomCreated(r) => {
            if get_room(state, &r.room_id).is_some() {
                return Err(Rejection::RoomExists);
            }
            let room = RoomView {
                room_id: r.room_id.clone(),
                name: r.name.clone(),
                capacity: r.capacity.max(1) as u32,
                owner_id: r.owner_id.clone(),
                created_at: r.at,
                member_count: 1,
                message_count: 0,
                last_message_id: None,
                emotion_counts: [0; 7],
            };
            put_member(
                state,
                MemberView {
                    room_id: r.room_id.clone(),
                    user_id: r.owner_id.clone(),
                    username: r.owner_name.clone(),
                    joined_at: r.at,
                    read_seq: 0,
                    last_read_message_id: None,
                },
            );
            put_room(state, room.clone());
            Ok(Accepted::RoomCreated(room))
        }
        Record::MemberJoined(r) => {
            let mut room = get_room(state, &r.room_id).ok_or(Rejection::RoomNotFound)?;
            // A direct-message room is joined only by its pair's `open`.
            if room.is_direct() {
                return Err(Rejection::RoomNotFound);
            }
            if get_member(state, &r.room_id, &r.user_id).is_some() {
                return Ok(Accepted::Joined {
                    member_count: room.member_count,
                    changed: false,
                });
            }
            if room.member_count >= room.capacity {
                return Err(Rejection::RoomFull);
            }
            room.member_count += 1;
            let member_count = room.member_count;
            put_room_event(
                state,
                pos,
                &r.room_id,
                true,
                &r.user_id,
                &r.username,
                member_count,
                r.at,
            );
            put_member(
                state,
                MemberView {
                    room_id: r.room_id.clone(),
                    user_id: r.user_id.clone(),
                    username: r.username.clone(),
                    joined_at: r.at,
                    read_seq: room.message_count,
                    last_read_message_id: room.last_message_id.clone(),
                },
            );
            put_room(state, room);
            Ok(Accepted::Joined {
                member_count,
                changed: true,
            })
        }
        Record::MemberQuit(r) => {
            let mut room = get_room(state, &r.room_id).ok_or(Rejection::RoomNotFound)?;
            if get_member(state, &r.room_id, &r.user_id).is_none() {
                return Err(Rejection::NotMember);
            }
            state.delete(&member(&r.room_id, &r.user_id));
            room.member_count = room.member_count.saturating_sub(1);
            let member_count = room.member_count;
            put_room_event(
                state,
                pos,
                &r.room_id,
                false,
                &r.user_id,
                &r.username,
                member_count,
                r.at,
            );
            put_room(state, room);
            Ok(Accepted::Quit { member_count })
        }
        Record::MessagePosted(r) => {
            // The hot path: read in place, update in place, allocate only
            // what is stored.
            let room_key = ViewKey::Room(r.room_id.clone());
            let seq = match state.get(&room_key) {
                Some(ViewValue::Room(room)) => room.message_count + 1,
                _ => return Err(Rejection::RoomNotFound),
            };
            let author_key = member(&r.room_id, &r.author_id);
            if !matches!(state.get(&author_key), Some(ViewValue::Member(_))) {
                return Err(Rejection::NotMember);
            }
            let cm_key = client_msg_key(&r);
            if let Some(ViewValue::ClientMsg(first)) = state.get(&cm_key) {
                return Ok(Accepted::Posted {
                    message_id: first.clone(),
                    duplicate: true,
                });
            }
            let mut attachments = Vec::with_capacity(r.attachments.len());
            for (i, a) in r.attachments.iter().enumerate() {
                if a == ROOM_ATTACHMENTS_ID || r.attachments[..i].contains(a) {
                    return Err(Rejection::InvalidAttachment);
                }
                match state.get(&ViewKey::attachment(&r.room_id, a)) {
                    Some(ViewValue::Attachment(v)) if v.uploader_id == r.author_id && v.message_id.is_none() => {
                        attachments.push(v.to_ref())
                    }
                    _ => return Err(Rejection::InvalidAttachment),
                }
            }
            let message_id = pos.to_id();
            if !attachments.is_empty() {
                for a in &r.attachments {
                    state.update(&ViewKey::attachment(&r.room_id, a), |v| {
                        if let ViewValue::Attachment(v) = v {
                            v.message_id = Some(message_id.clone());
                        }
                    });
                }
                state.update(&ViewKey::room_attachments(&r.room_id), |v| {
                    if let ViewValue::RoomAttachments(p) = v {
                        p.pending.retain(|(id, _)| !r.attachments.contains(id));
                    }
                });
            }
            state.update(&room_key, |v| {
                if let ViewValue::Room(room) = v {
                    room.message_count = seq;
                    room.last_message_id = Some(message_id.clone());
                }
            });
            // Posting marks one's own message read.
            state.update(&author_key, |v| {
                if let ViewValue::Member(m) = v {
                    m.read_seq = seq;
                    m.last_read_message_id = Some(message_id.clone());
                }
            });
            state.put(cm_key, ViewValue::ClientMsg(message_id.clone()));
            let crate::record::MessagePosted {
                room_id,
                author_id,
                author,
                text,
                client_msg_id,
                at,
                ..
            } = r;
            state.put(
                ViewKey::Message {
                    room_id: room_id.clone(),
                    message_id: message_id.clone(),
                },
                ViewValue::Message(MessageView {
                    message_id: message_id.clone(),
                    room_id,
                    seq,
                    author_id,
                    author,
                    text,
                    created_at: at,
                    client_msg_id,
                    attachments,
                }),
            );
            Ok(Accepted::Posted {
                message_id,
                duplicate: false,
            })
        }
        Record::EmotionRecorded(r) => {
            let room_key = ViewKey::Room(r.room_id.clone());
            if !matches!(state.get(&room_key), Some(ViewValue::Room(_))) {
                return Err(Rejection::RoomNotFound);
            }
            let msg_key = ViewKey::message(&r.room_id, &r.message_id);
            if !matches!(state.get(&msg_key), Some(ViewValue::Message(_))) {
                return Err(Rejection::MessageNotFound);
            }
            let emotion_key = ViewKey::emotion(&r.room_id, &r.message_id);
            let edit_key = ViewKey::message_edit(&r.room_id, &r.message_id);
            let edit = match state.get(&edit_key) {
                Some(ViewValue::MessageEdit(e)) => Some(e.clone()),
                _ => None,
            };
            let emotion = |r: &crate::record::EmotionRecorded| -> Result<(usize, EmotionView), Rejection> {
                let view = EmotionView::from_record(r, pos).ok_or(Rejection::Malformed)?;
                let label: Label = view.label.parse().map_err(|_| Rejection::Malformed)?;
                Ok((label_slot(label), view))
            };
            let Some(edit_id) = r.edit_id.clone() else {
                // The message as posted: its first emotion wins.
                if state.get(&emotion_key).is_some() {
                    return Ok(Accepted::EmotionRecorded { duplicate: true });
                }
                // A deleted message takes no emotion.
                if edit.as_ref().is_some_and(|e| e.deleted_at.is_some()) {
                    return Ok(Accepted::EmotionRecorded { duplicate: true });
                }
                let (slot, view) = emotion(&r)?;
                // Counted unless an edit's emotion already superseded it.
                if edit.as_ref().is_none_or(|e| e.emotion.is_none()) {
                    state.update(&room_key, |v| {
                        if let ViewValue::Room(room) = v {
                            room.emotion_counts[slot] += 1;
                        }
                    });
                }
                state.put(emotion_key, ViewValue::Emotion(view));
                return Ok(Accepted::EmotionRecorded { duplicate: false });
            };
            // An edit's emotion: only for the message's latest edit, once.
            let Some(mut edit) = edit else {
                return Ok(Accepted::EmotionRecorded { duplicate: true });
            };
            if edit.deleted_at.is_some()
                || edit.edit_id.as_deref() != Some(edit_id.as_str())
                || edit.emotion_edit_id.as_deref() == Some(edit_id.as_str())
            {
                return Ok(Accepted::EmotionRecorded { duplicate: true });
            }
            let (slot, view) = emotion(&r)?;
            let before = effective_emotion_slot(state, &edit, &emotion_key);
            state.update(&room_key, |v| {
                if let ViewValue::Room(room) = v {
                    if let Some(b) = before {
                        room.emotion_counts[b] = room.emotion_counts[b].saturating_sub(1);
                    }
                    room.emotion_counts[slot] += 1;
                }
            });
            edit.emotion = Some(view);
            edit.emotion_edit_id = Some(edit_id);
            state.put(edit_key, ViewValue::MessageEdit(edit));
            count_room_change(state, &r.room_id);
            Ok(Accepted::EmotionRecorded { duplicate: false })
        }
        Record::MessageEdited(r) => {
            if get_room(state, &r.room_id).is_none() {
                return Err(Rejection::RoomNotFound);
            }
            if get_member(state, &r.room_id, &r.user_id).is_none() {
                return Err(Rejection::NotMember);
            }
            match state.get(&ViewKey::message(&r.room_id, &r.message_id)) {
                Some(ViewValue::Message(m)) if m.author_id == r.user_id => {}
                Some(ViewValue::Message(_)) => return Err(Rejection::NotAuthor),
                _ => return Err(Rejection::MessageNotFound),
            }
            let edit_key = ViewKey::message_edit(&r.room_id, &r.message_id);
            let mut edit = get_edit(state, &r.room_id, &r.message_id);
            if edit.deleted_at.is_some() {
                return Err(Rejection::MessageDeleted);
            }
            let edit_id = pos.to_id();
            edit.text = r.text.clone();
            edit.edited_at = Some(r.at);
            edit.edit_id = Some(edit_id.clone());
            edit.edits += 1;
            state.put(edit_key, ViewValue::MessageEdit(edit));
            put_message_change(
                state,
                edit_id,
                &r.room_id,
                &r.message_id,
                Some(r.text),
                &r.user_id,
                &r.username,
                r.at,
            );
            count_room_change(state, &r.room_id);
            Ok(Accepted::MessageEdited {
                message_id: r.message_id,
                edited_at: r.at,
            })
        }
        Record::MessageDeleted(r) => {
            let room = get_room(state, &r.room_id).ok_or(Rejection::RoomNotFound)?;
            if get_member(state, &r.room_id, &r.user_id).is_none() {
                return Err(Rejection::NotMember);
            }
            match state.get(&ViewKey::message(&r.room_id, &r.message_id)) {
                Some(ViewValue::Message(m)) if m.author_id == r.user_id || room.owner_id == r.user_id => {}
                Some(ViewValue::Message(_)) => return Err(Rejection::NotAuthor),
                _ => return Err(Rejection::MessageNotFound),
            }
            let edit_key = ViewKey::message_edit(&r.room_id, &r.message_id);
            let mut edit = get_edit(state, &r.room_id, &r.message_id);
            if let Some(deleted_at) = edit.deleted_at {
                return Ok(Accepted::MessageDeleted {
                    message_id: r.message_id,
                    deleted_at,
                    duplicate: true,
                });
            }
            // Its emotion stops counting in the room's mood.
            let emotion_key = ViewKey::emotion(&r.room_id, &r.message_id);
            if let Some(slot) = effective_emotion_slot(state, &edit, &emotion_key) {
                state.update(&ViewKey::Room(r.room_id.clone()), |v| {
                    if let ViewValue::Room(room) = v {
                        room.emotion_counts[slot] = room.emotion_counts[slot].saturating_sub(1);
                    }
                });
            }
            edit.text.clear();
            edit.deleted_at = Some(r.at);
            edit.deleted_by = Some(r.user_id.clone());
            edit.emotion = None;
            state.put(edit_key, ViewValue::MessageEdit(edit));
            put_message_change(
                state,
                pos.to_id(),
                &r.room_id,
                &r.message_id,
                None,
                &r.user_id,
                &r.username,
                r.at,
            );
            count_room_change(state, &r.room_id);
            Ok(Accepted::MessageDeleted {
                message_id: r.message_id,
                deleted_at: r.at,
                duplicate: false,
            })
        }
        Record::RelationshipChanged(r) => relationship(state, r),
        Record::AttachmentUploaded(r) => {
            if get_room(state, &r.room_id).is_none() {
                return Err(Rejection::RoomNotFound);
            }
            if get_member(state, &r.room_id, &r.uploader_id).is_none() {
                return Err(Rejection::NotMember);
            }
            let attachment_id = attachment_id(&r.room_id, pos);
            let pending_key = ViewKey::room_attachments(&r.room_id);
            let mut pending = match state.get(&pending_key) {
                Some(ViewValue::RoomAttachments(p)) => p.clone(),
                _ => RoomAttachmentsView {
                    room_id: r.room_id.clone(),
                    pending: Vec::new(),
                },
            };
            pending.pending.push((attachment_id.clone(), r.at));
            state.put(pending_key, ViewValue::RoomAttachments(pending));
            state.put(
                ViewKey::attachment(&r.room_id, &attachment_id),
                ViewValue::Attachment(AttachmentView {
                    attachment_id: attachment_id.clone(),
                    room_id: r.room_id,
                    uploader_id: r.uploader_id,
                    file_name: r.file_name,
                    size: r.size as u64,
                    content_type: r.content_type,
                    width: r.width.map(|w| w as u32),
                    height: r.height.map(|h| h as u32),
                    blob_key: r.blob_key,
                    sha256: r.sha256,
                    uploaded_at: r.at,
                    message_id: None,
                }),
            );
            Ok(Accepted::AttachmentUploaded { attachment_id })
        }
        Record::AttachmentExpired(r) => {
            if r.attachment_id == ROOM_ATTACHMENTS_ID {
                return Err(Rejection::Malformed);
            }
            let key = ViewKey::attachment(&r.room_id, &r.attachment_id);
            let blob_key = match state.get(&key) {
                Some(ViewValue::Attachment(a)) if a.message_id.is_none() => a.blob_key.clone(),
                _ => return Err(Rejection::InvalidAttachment),
            };
            state.delete(&key);
            state.update(&ViewKey::room_attachments(&r.room_id), |v| {
                if let ViewValue::RoomAttachments(p) = v {
                    p.pending.retain(|(id, _)| *id != r.attachment_id);
                }
            });
            Ok(Accepted::AttachmentExpired { blob_key })
        }
        Record::AdminRoleChanged(r) => {
            let user = account_user(state, &r.username, &r.user_id).ok_or(Rejection::UnknownUser)?;
            state.put(
                ViewKey::admin_role(&user.username),
                ViewValue::AdminRole(AdminRoleView {
                    user_id: user.user_id,
                    granted: r.granted,
                    at: r.at,
                    by: r.by,
                }),
            );
            Ok(Accepted::AdminRole { granted: r.granted })
        }
        Record::ReadMarkerSet(r) => {
            get_room(state, &r.room_id).ok_or(Rejection::RoomNotFound)?;
            let mut m = get_member(state, &r.room_id, &r.user_id).ok_or(Rejection::NotMember)?;
            let key = ViewKey::message(&r.room_id, &r.message_id);
            let seq = match state.get(&key) {
                Some(ViewValue::Message(msg)) => msg.seq,
                _ => return Err(Rejection::MessageNotFound),
            };
            // Read markers only move forward: a late marker for an older
            // message does not resurrect unread messages.
            if seq > m.read_seq {
                m.read_seq = seq;
                m.last_read_message_id = Some(r.message_id.clone());
                put_member(state, m);
            }
            Ok(Accepted::ReadMarkerSet)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Topic, Topology, partition_for};
    use crate::record::*;
    use crate::view::{ADMIN_ROLE_ID, MemState, Overlay, SESSION_EPOCH_ID};
    use proptest::prelude::*;
    use std::collections::HashMap;

    const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];
    const ROOMS: [&str; 3] = ["00000000000000a1", "00000000000000b2", "00000000000000c3"];

    fn uid(i: usize) -> String {
        format!("{:016x}", 0x100 + i)
    }

    /// A generated command: small id spaces so collisions (duplicate signups,
    /// full rooms, repeated client_msg_ids) happen often.
    fn arb_record() -> impl Strategy<Value = Record> {
        let u = 0..USERS.len();
        let r = 0..ROOMS.len();
        prop_oneof![
            (u.clone(), any::<bool>()).prop_map(|(u, upper)| Record::UserSignedUp(UserSignedUp {
                request_id: 1,
                at: 10,
                // The same name in two cases is one username: only the first may win.
                username: if upper {
                    USERS[u].to_uppercase()
                } else {
                    USERS[u].to_owned()
                },
                password_hash: "h".into(),
            })),
            u.clone().prop_map(|u| Record::AccountDeleted(AccountDeleted {
                request_id: 2,
                at: 11,
                user_id: uid(u),
                username: USERS[u].into(),
                by: None,
            })),
            u.clone().prop_map(|u| Record::AccountRestored(AccountRestored {
                request_id: 2,
                at: 11,
                user_id: uid(u),
                username: USERS[u].into(),
                by: None,
            })),
            (r.clone(), u.clone(), 1..4i32).prop_map(|(r, u, cap)| Record::RoomCreated(RoomCreated {
                request_id: 3,
                at: 12,
                room_id: ROOMS[r].into(),
                name: "room".into(),
                capacity: cap,
                owner_id: uid(u),
                owner_name: USERS[u].into(),
            })),
            (r.clone(), u.clone()).prop_map(|(r, u)| Record::MemberJoined(MemberJoined {
                request_id: 4,
                at: 13,
                room_id: ROOMS[r].into(),
                user_id: uid(u),
                username: USERS[u].into(),
            })),
            (r.clone(), u.clone()).prop_map(|(r, u)| Record::MemberQuit(MemberQuit {
                request_id: 5,
                at: 14,
                room_id: ROOMS[r].into(),
                user_id: uid(u),
                username: USERS[u].into(),
            })),
            (
                r.clone(),
                u.clone(),
                0..3u8,
                "[a-z]{0,8}",
                proptest::collection::vec(0..40u64, 0..3)
            )
                .prop_map(|(r, u, c, text, files)| Record::MessagePosted(MessagePosted {
                    request_id: 6,
                    at: 15,
                    room_id: ROOMS[r].into(),
                    author_id: uid(u),
                    author: USERS[u].into(),
                    client_msg_id: format!("c{c}"),
                    text,
                    attachments: files
                        .into_iter()
                        .map(|off| {
                            crate::ids::attachment_id(
                                ROOMS[r],
                                LogPosition::new(partition_for(ROOMS[r].as_bytes(), 8), off),
                            )
                        })
                        .collect(),
                })),
            (r.clone(), u.clone(), proptest::option::of(1..64i32)).prop_map(|(r, u, w)| {
                Record::AttachmentUploaded(AttachmentUploaded {
                    request_id: 12,
                    at: 21,
                    room_id: ROOMS[r].into(),
                    uploader_id: uid(u),
                    uploader: USERS[u].into(),
                    file_name: "a.png".into(),
                    size: 3,
                    content_type: "image/png".into(),
                    width: w,
                    height: w,
                    blob_key: "sha256/ab".into(),
                    sha256: "ab".into(),
                })
            }),
            (r.clone(), 0..40u64).prop_map(|(r, off)| Record::AttachmentExpired(AttachmentExpired {
                request_id: 13,
                at: 22,
                room_id: ROOMS[r].into(),
                attachment_id: crate::ids::attachment_id(
                    ROOMS[r],
                    LogPosition::new(partition_for(ROOMS[r].as_bytes(), 8), off),
                ),
            })),
            (r.clone(), u.clone(), 0..40u64).prop_map(|(r, u, off)| Record::ReadMarkerSet(ReadMarkerSet {
                request_id: 7,
                at: 16,
                room_id: ROOMS[r].into(),
                user_id: uid(u),
                message_id: LogPosition::new(partition_for(ROOMS[r].as_bytes(), 8), off).to_id(),
            })),
            (r.clone(), 0..40u64, 0..7usize, proptest::option::of(0..40u64)).prop_map(|(r, off, l, edit)| {
                let at = |off| LogPosition::new(partition_for(ROOMS[r].as_bytes(), 8), off).to_id();
                Record::EmotionRecorded(EmotionRecorded {
                    request_id: 9,
                    at: 18,
                    room_id: ROOMS[r].into(),
                    message_id: at(off),
                    label: crate::emotion::Label::ALL[l].as_str().into(),
                    score: 0.5,
                    scores: vec![0.5, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05],
                    model: "m".into(),
                    edit_id: edit.map(at),
                })
            }),
            (r.clone(), u.clone(), 0..40u64, "[a-z]{1,8}").prop_map(|(r, u, off, text)| Record::MessageEdited(
                MessageEdited {
                    request_id: 12,
                    at: 21,
                    room_id: ROOMS[r].into(),
                    message_id: LogPosition::new(partition_for(ROOMS[r].as_bytes(), 8), off).to_id(),
                    user_id: uid(u),
                    username: USERS[u].into(),
                    text,
                }
            )),
            (u.clone(), any::<bool>()).prop_map(|(u, granted)| Record::AdminRoleChanged(AdminRoleChanged {
                request_id: 15,
                at: 24,
                user_id: uid(u),
                username: USERS[u].into(),
                granted,
                by: "cli".into(),
            })),
            (u.clone(), u.clone(), 0..8usize).prop_map(|(a, b, action)| {
                let (a, b) = (uid(a), uid(b));
                Record::RelationshipChanged(RelationshipChanged {
                    request_id: 14,
                    at: 23,
                    room_id: pair_room_id(&a, &b),
                    user_id: a,
                    username: "x".into(),
                    other_id: b,
                    other_name: "y".into(),
                    action: crate::record::RELATIONSHIP_ACTIONS[action].into(),
                })
            }),
            (r.clone(), u.clone(), 0..40u64).prop_map(|(r, u, off)| Record::MessageDeleted(MessageDeleted {
                request_id: 13,
                at: 22,
                room_id: ROOMS[r].into(),
                message_id: LogPosition::new(partition_for(ROOMS[r].as_bytes(), 8), off).to_id(),
                user_id: uid(u),
                username: USERS[u].into(),
            })),
            (u.clone(), 0..3u8).prop_map(|(u, s)| Record::SessionRevoked(SessionRevoked {
                request_id: 8,
                at: 17,
                user_id: uid(u),
                username: USERS[u].into(),
                session_id: format!("s{s}"),
                expires_at: 99,
            })),
            (u.clone(), 0..3u8, 10..30i64).prop_map(|(u, s, expires_at)| Record::SessionOpened(SessionOpened {
                request_id: 10,
                at: 19,
                user_id: uid(u),
                username: USERS[u].into(),
                session_id: format!("s{s}"),
                expires_at,
            })),
            (u, 0..3u8, 0..3i64).prop_map(|(u, s, generation)| Record::SessionRefreshed(SessionRefreshed {
                request_id: 11,
                at: 20,
                user_id: uid(u),
                username: USERS[u].into(),
                session_id: format!("s{s}"),
                generation,
            })),
        ]
    }

    /// Assigns log positions as a log would: per topic partition, offsets
    /// count up. Account records name the user id their username got at its
    /// first signup (as ingest would), when there was one.
    fn place(records: &[Record]) -> Vec<(LogPosition, Record)> {
        let topo = Topology::default();
        let mut next: HashMap<(Topic, u32), u64> = HashMap::new();
        let mut ids: HashMap<String, String> = HashMap::new();
        records
            .iter()
            .map(|r| {
                let p = partition_for(r.key().as_bytes(), topo.partitions(r.topic()));
                let off = next.entry((r.topic(), p)).or_default();
                let pos = LogPosition::new(p, *off);
                *off += 1;
                let mut r = r.clone();
                match &mut r {
                    Record::UserSignedUp(s) => {
                        ids.entry(s.username.to_lowercase()).or_insert_with(|| pos.to_id());
                    }
                    Record::AccountDeleted(AccountDeleted { user_id, username, .. })
                    | Record::AccountRestored(AccountRestored { user_id, username, .. })
                    | Record::SessionOpened(SessionOpened { user_id, username, .. })
                    | Record::SessionRefreshed(SessionRefreshed { user_id, username, .. }) => {
                        if let Some(id) = ids.get(username.as_str()) {
                            *user_id = id.clone();
                        }
                    }
                    _ => {}
                }
                (pos, r)
            })
            .collect()
    }

    fn fold_all(log: &[(LogPosition, Record)]) -> (MemState, Vec<Outcome>) {
        let mut s = MemState::default();
        let outcomes = log.iter().map(|(p, r)| fold(&mut s, *p, r.clone())).collect();
        (s, outcomes)
    }

    proptest! {
        #[test]
        fn folding_twice_gives_equal_state(records in proptest::collection::vec(arb_record(), 0..120)) {
            let log = place(&records);
            let (a, oa) = fold_all(&log);
            let (b, ob) = fold_all(&log);
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(oa, ob);
        }

        /// Partitions are independent: folding one topic-partition after another
        /// (as replay may) gives the same state as the interleaved live order.
        #[test]
        fn partition_interleaving_does_not_matter(records in proptest::collection::vec(arb_record(), 0..120)) {
            let log = place(&records);
            let (live, _) = fold_all(&log);
            let mut grouped = log.clone();
            grouped.sort_by_key(|(p, r)| (r.topic(), p.partition, p.offset));
            let (replayed, _) = fold_all(&grouped);
            prop_assert_eq!(live, replayed);
        }

        /// The projector's path (prefetch keys into an overlay, fold, take the
        /// changes) produces exactly the state of a whole-state fold.
        #[test]
        fn overlay_batches_equal_whole_state(records in proptest::collection::vec(arb_record(), 0..120), batch in 1usize..17) {
            let log = place(&records);
            let (expected, expected_outcomes) = fold_all(&log);
            let mut store = MemState::default();
            let mut outcomes = Vec::new();
            for chunk in log.chunks(batch) {
                let mut overlay = Overlay::default();
                for (p, r) in chunk {
                    for k in keys_read_by(r) {
                        if !overlay.contains(&k) {
                            let v = store.get(&k).cloned();
                            overlay.preload(k, v);
                        }
                    }
                    outcomes.push(fold(&mut overlay, *p, r.clone()));
                }
                for (k, v) in overlay.take_changes() {
                    match v { Some(v) => store.put(k, v), None => store.delete(&k) }
                }
            }
            prop_assert_eq!(store, expected);
            prop_assert_eq!(outcomes, expected_outcomes);
        }

        /// `write_once_keys_read_by` is exactly the write-once part of `keys_read_by`.
        #[test]
        fn write_once_keys_are_the_write_once_part(records in proptest::collection::vec(arb_record(), 0..60)) {
            for r in &records {
                let want: Vec<ViewKey> = keys_read_by(r).into_iter().filter(ViewKey::is_write_once).collect();
                prop_assert_eq!(write_once_keys_read_by(r), want);
            }
        }

        /// A room's mood counts each message that is not deleted once, with
        /// its latest edit's emotion if that was classified, else its first.
        #[test]
        fn the_mood_counts_each_live_message_once(records in proptest::collection::vec(arb_record(), 0..300)) {
            let (s, _) = fold_all(&place(&records));
            let mut want: HashMap<String, [u32; 7]> = HashMap::new();
            for (k, v) in &s.entries {
                if let (ViewKey::Message { room_id, message_id }, ViewValue::Message(_)) = (k, v) {
                    let edit = match s.get(&ViewKey::message_edit(room_id, message_id)) {
                        Some(ViewValue::MessageEdit(e)) => Some(e.clone()),
                        _ => None,
                    };
                    if edit.as_ref().is_some_and(|e| e.deleted_at.is_some()) {
                        prop_assert!(edit.as_ref().is_some_and(|e| e.text.is_empty() && e.emotion.is_none()));
                        continue;
                    }
                    let label = match (edit.and_then(|e| e.emotion), s.get(&ViewKey::emotion(room_id, message_id))) {
                        (Some(e), _) => Some(e.label),
                        (None, Some(ViewValue::Emotion(e))) => Some(e.label.clone()),
                        _ => None,
                    };
                    if let Some(l) = label {
                        let slot = label_slot(l.parse().unwrap());
                        want.entry(room_id.clone()).or_default()[slot] += 1;
                    }
                }
            }
            for v in s.entries.values() {
                if let ViewValue::Room(room) = v {
                    prop_assert_eq!(room.emotion_counts, want.get(&room.room_id).copied().unwrap_or_default(), "{}", room.room_id);
                }
            }
        }

        /// Capacity holds whatever the order: a room never has more members than it admits.
        #[test]
        fn capacity_is_never_exceeded(records in proptest::collection::vec(arb_record(), 0..200)) {
            let (s, _) = fold_all(&place(&records));
            for v in s.entries.values() {
                if let ViewValue::Room(room) = v {
                    let members = s.entries.keys().filter(|k| matches!(k, ViewKey::Member { room_id, .. } if *room_id == room.room_id)).count();
                    prop_assert_eq!(members as u32, room.member_count);
                    prop_assert!(room.member_count <= room.capacity);
                }
            }
        }
    }

    #[test]
    fn first_signup_wins_and_duplicate_client_msg_returns_first_id() {
        let signup = |_: &str| {
            Record::UserSignedUp(UserSignedUp {
                request_id: 0,
                at: 1,
                username: "Alice".into(),
                password_hash: "x".into(),
            })
        };
        let mut s = MemState::default();
        assert!(fold(&mut s, LogPosition::new(0, 0), signup("0000000000000001")).is_ok());
        assert_eq!(
            fold(&mut s, LogPosition::new(0, 1), signup("0000000000000002")),
            Err(Rejection::UsernameTaken)
        );

        let room = "00000000000000aa".to_string();
        let created = Record::RoomCreated(RoomCreated {
            request_id: 0,
            at: 2,
            room_id: room.clone(),
            name: "r".into(),
            capacity: 2,
            owner_id: "0000000000000001".into(),
            owner_name: "alice".into(),
        });
        fold(&mut s, LogPosition::new(1, 0), created).unwrap();
        let post = Record::MessagePosted(MessagePosted {
            request_id: 0,
            at: 3,
            room_id: room.clone(),
            author_id: "0000000000000001".into(),
            author: "alice".into(),
            client_msg_id: "k".into(),
            text: "hi".into(),
            attachments: vec![],
        });
        let first = fold(&mut s, LogPosition::new(1, 1), post.clone()).unwrap();
        let again = fold(&mut s, LogPosition::new(1, 2), post).unwrap();
        assert_eq!(
            first,
            Accepted::Posted {
                message_id: LogPosition::new(1, 1).to_id(),
                duplicate: false
            }
        );
        assert_eq!(
            again,
            Accepted::Posted {
                message_id: LogPosition::new(1, 1).to_id(),
                duplicate: true
            }
        );
        let messages = s
            .entries
            .keys()
            .filter(|k| matches!(k, ViewKey::Message { .. }))
            .count();
        assert_eq!(messages, 1);
    }
    /// A message may carry only its sender's unsent uploads to its own
    /// room, each once; an expiry forgets only what no message carries.
    #[test]
    fn attachments_are_carried_once_by_their_uploaders_messages_in_their_room() {
        let mut s = MemState::default();
        let (room, other_room) = ("00000000000000aa".to_string(), "00000000000000bb".to_string());
        let (alice, bob) = ("0000000000000001".to_string(), "0000000000000002".to_string());
        for (i, r) in [&room, &other_room].into_iter().enumerate() {
            let created = Record::RoomCreated(RoomCreated {
                request_id: 0,
                at: 1,
                room_id: r.clone(),
                name: "r".into(),
                capacity: 5,
                owner_id: alice.clone(),
                owner_name: "alice".into(),
            });
            fold(&mut s, LogPosition::new(i as u32, 0), created).unwrap();
        }
        let join = Record::MemberJoined(MemberJoined {
            request_id: 0,
            at: 1,
            room_id: room.clone(),
            user_id: bob.clone(),
            username: "bob".into(),
        });
        fold(&mut s, LogPosition::new(0, 1), join).unwrap();
        let upload = |room: &str, who: &str| {
            Record::AttachmentUploaded(AttachmentUploaded {
                request_id: 0,
                at: 2,
                room_id: room.into(),
                uploader_id: who.into(),
                uploader: "x".into(),
                file_name: "cat.png".into(),
                size: 10,
                content_type: "image/png".into(),
                width: Some(4),
                height: Some(3),
                blob_key: "sha256/00".into(),
                sha256: "00".into(),
            })
        };
        let id = |r: Outcome| match r {
            Ok(Accepted::AttachmentUploaded { attachment_id }) => attachment_id,
            other => panic!("{other:?}"),
        };
        let a1 = id(fold(&mut s, LogPosition::new(0, 2), upload(&room, &alice)));
        let a2 = id(fold(&mut s, LogPosition::new(0, 3), upload(&room, &alice)));
        let b1 = id(fold(&mut s, LogPosition::new(0, 4), upload(&room, &bob)));
        let foreign = id(fold(&mut s, LogPosition::new(1, 1), upload(&other_room, &alice)));
        assert_eq!(crate::ids::attachment_room(&a1), Some(room.as_str()));
        assert_eq!(
            fold(&mut s, LogPosition::new(1, 2), upload(&other_room, &bob)),
            Err(Rejection::NotMember)
        );
        let post = |k: &str, files: &[&String]| {
            Record::MessagePosted(MessagePosted {
                request_id: 0,
                at: 3,
                room_id: room.clone(),
                author_id: alice.clone(),
                author: "alice".into(),
                client_msg_id: k.into(),
                text: String::new(),
                attachments: files.iter().map(|f| f.to_string()).collect(),
            })
        };
        let bad = Err(Rejection::InvalidAttachment);
        assert_eq!(fold(&mut s, LogPosition::new(0, 5), post("1", &[&b1])), bad, "bob's");
        assert_eq!(
            fold(&mut s, LogPosition::new(0, 6), post("2", &[&foreign])),
            bad,
            "another room's"
        );
        assert_eq!(
            fold(&mut s, LogPosition::new(0, 7), post("3", &[&a1, &a1])),
            bad,
            "twice"
        );
        let sent = fold(&mut s, LogPosition::new(0, 8), post("4", &[&a2, &a1])).unwrap();
        assert!(matches!(sent, Accepted::Posted { duplicate: false, .. }));
        let Some(ViewValue::Message(m)) = s.get(&ViewKey::message(&room, &LogPosition::new(0, 8).to_id())) else {
            panic!("stored");
        };
        let names: Vec<_> = m
            .attachments
            .iter()
            .map(|a| (a.attachment_id.clone(), a.width))
            .collect();
        assert_eq!(names, vec![(a2.clone(), Some(4)), (a1.clone(), Some(4))]);
        // A retry of the same post answers the first message; a new one may not reuse them.
        let again = fold(&mut s, LogPosition::new(0, 9), post("4", &[&a2, &a1])).unwrap();
        assert!(matches!(again, Accepted::Posted { duplicate: true, .. }));
        assert_eq!(
            fold(&mut s, LogPosition::new(0, 10), post("5", &[&a1])),
            bad,
            "already sent"
        );
        let expire = |a: &String| {
            Record::AttachmentExpired(AttachmentExpired {
                request_id: 0,
                at: 9,
                room_id: room.clone(),
                attachment_id: a.clone(),
            })
        };
        assert_eq!(
            fold(&mut s, LogPosition::new(0, 11), expire(&a1)),
            bad,
            "sent ones stay"
        );
        assert_eq!(
            fold(&mut s, LogPosition::new(0, 12), expire(&b1)),
            Ok(Accepted::AttachmentExpired {
                blob_key: "sha256/00".into()
            })
        );
        assert_eq!(fold(&mut s, LogPosition::new(0, 13), expire(&b1)), bad, "once");
        let Some(ViewValue::RoomAttachments(p)) = s.get(&ViewKey::room_attachments(&room)) else {
            panic!("pending list");
        };
        assert!(p.pending.is_empty(), "{p:?}");
    }

    #[test]
    fn edits_and_deletes_are_decided_by_author_and_owner() {
        let room = "00000000000000aa".to_string();
        let (alice, bob) = (uid(0), uid(1));
        let p = |o| LogPosition::new(1, o);
        let mut s = MemState::default();
        let rec = |r: Record| r;
        let join = |u: &str, name: &str| {
            Record::MemberJoined(MemberJoined {
                request_id: 0,
                at: 1,
                room_id: room.clone(),
                user_id: u.into(),
                username: name.into(),
            })
        };
        let edit = |u: &str, text: &str| {
            Record::MessageEdited(MessageEdited {
                request_id: 0,
                at: 50,
                room_id: room.clone(),
                message_id: p(2).to_id(),
                user_id: u.into(),
                username: "x".into(),
                text: text.into(),
            })
        };
        let delete = |u: &str| {
            Record::MessageDeleted(MessageDeleted {
                request_id: 0,
                at: 60,
                room_id: room.clone(),
                message_id: p(2).to_id(),
                user_id: u.into(),
                username: "x".into(),
            })
        };
        let emotion = |label: &str, edit_id: Option<String>| {
            Record::EmotionRecorded(EmotionRecorded {
                request_id: 0,
                at: 40,
                room_id: room.clone(),
                message_id: p(2).to_id(),
                label: label.into(),
                score: 0.9,
                scores: vec![0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1],
                model: "m".into(),
                edit_id,
            })
        };
        let log = vec![
            rec(Record::RoomCreated(RoomCreated {
                request_id: 0,
                at: 1,
                room_id: room.clone(),
                name: "r".into(),
                capacity: 5,
                owner_id: alice.clone(),
                owner_name: "alice".into(),
            })),
            join(&bob, "bob"),
            Record::MessagePosted(MessagePosted {
                request_id: 0,
                at: 30,
                room_id: room.clone(),
                author_id: bob.clone(),
                author: "bob".into(),
                client_msg_id: "c".into(),
                text: "I am happy".into(),
                attachments: vec![],
            }),
            emotion("joy", None),
            edit(&alice, "not hers"),
            edit(&bob, "I am sad"),
            // An emotion of an edit that is not the latest is ignored.
            emotion("anger", Some(p(1).to_id())),
            emotion("sadness", Some(p(5).to_id())),
            emotion("fear", Some(p(5).to_id())),
        ];
        let out: Vec<Outcome> = log
            .into_iter()
            .enumerate()
            .map(|(i, r)| fold(&mut s, p(i as u64), r))
            .collect();
        assert_eq!(out[4], Err(Rejection::NotAuthor));
        assert_eq!(
            out[5],
            Ok(Accepted::MessageEdited {
                message_id: p(2).to_id(),
                edited_at: 50
            })
        );
        assert_eq!(out[6], Ok(Accepted::EmotionRecorded { duplicate: true }));
        assert_eq!(out[7], Ok(Accepted::EmotionRecorded { duplicate: false }));
        assert_eq!(out[8], Ok(Accepted::EmotionRecorded { duplicate: true }));
        let mood = |s: &MemState| match s.get(&ViewKey::Room(room.clone())) {
            Some(ViewValue::Room(r)) => r.emotion_counts,
            other => panic!("{other:?}"),
        };
        // The edit's sadness superseded the first joy.
        assert_eq!(mood(&s), [0, 1, 0, 0, 0, 0, 0]);
        let edited = match s.get(&ViewKey::message_edit(&room, &p(2).to_id())) {
            Some(ViewValue::MessageEdit(e)) => e.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (edited.text.as_str(), edited.edited_at, edited.edits),
            ("I am sad", Some(50), 1)
        );
        assert!(matches!(
            s.get(&ViewKey::RoomEvent { room_id: room.clone(), position: p(5).to_id() }),
            Some(ViewValue::MessageChange(MessageChangeView { text: Some(t), .. })) if t == "I am sad"
        ));
        // The room's owner deletes bob's message; a second delete changes
        // nothing, and the deleted message is edited no more.
        let out: Vec<Outcome> = vec![delete(&alice), delete(&bob), edit(&bob, "again")]
            .into_iter()
            .enumerate()
            .map(|(i, r)| fold(&mut s, p(20 + i as u64), r))
            .collect();
        assert_eq!(
            out,
            vec![
                Ok(Accepted::MessageDeleted {
                    message_id: p(2).to_id(),
                    deleted_at: 60,
                    duplicate: false
                }),
                Ok(Accepted::MessageDeleted {
                    message_id: p(2).to_id(),
                    deleted_at: 60,
                    duplicate: true
                }),
                Err(Rejection::MessageDeleted),
            ]
        );
        assert_eq!(mood(&s), [0; 7], "a deleted message leaves the mood");
        let deleted = match s.get(&ViewKey::message_edit(&room, &p(2).to_id())) {
            Some(ViewValue::MessageEdit(e)) => e.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (deleted.text.as_str(), deleted.deleted_at, deleted.deleted_by),
            ("", Some(60), Some(alice.clone()))
        );
        assert!(matches!(
            s.get(&ViewKey::room_edits(&room)),
            Some(ViewValue::RoomEdits(RoomEditsView { changes: 3, .. }))
        ));
        // Someone who is neither author nor owner may not delete.
        let carol = uid(2);
        fold(&mut s, p(30), join(&carol, "carol")).unwrap();
        let other = Record::MessageDeleted(MessageDeleted {
            request_id: 0,
            at: 70,
            room_id: room.clone(),
            message_id: p(2).to_id(),
            user_id: carol,
            username: "carol".into(),
        });
        assert_eq!(fold(&mut s, p(31), other), Err(Rejection::NotAuthor));
    }

    #[test]
    fn friends_decide_requests_blocks_and_their_direct_room_in_one_partition() {
        let (a, b) = (uid(0), uid(1));
        let room = pair_room_id(&a, &b);
        assert_eq!(room, pair_room_id(&b, &a), "one room per pair, whoever asks");
        let act = |from: &str, to: &str, action: &str| {
            let name = |id: &str| if id == a { "alice" } else { "bob" };
            Record::RelationshipChanged(RelationshipChanged {
                request_id: 0,
                at: 5,
                room_id: room.clone(),
                user_id: from.into(),
                username: name(from).into(),
                other_id: to.into(),
                other_name: name(to).into(),
                action: action.into(),
            })
        };
        let mut s = MemState::default();
        let mut n = 0;
        let mut fold_one = |s: &mut MemState, r: Record| {
            n += 1;
            fold(s, LogPosition::new(2, n), r)
        };
        let status = |s: &MemState, u: &str, o: &str| match s.get(&ViewKey::friend(u, o)) {
            Some(ViewValue::Friend(f)) => f.status,
            _ => FriendStatus::None,
        };
        assert_eq!(fold_one(&mut s, act(&a, &b, "open")), Err(Rejection::NotFriends));
        assert_eq!(fold_one(&mut s, act(&b, &a, "accept")), Err(Rejection::NoRequest));
        fold_one(&mut s, act(&a, &b, "request")).unwrap();
        assert_eq!(
            (status(&s, &a, &b), status(&s, &b, &a)),
            (FriendStatus::RequestOut, FriendStatus::RequestIn)
        );
        assert_eq!(
            fold_one(&mut s, act(&a, &b, "accept")),
            Err(Rejection::NoRequest),
            "not one's own"
        );
        fold_one(&mut s, act(&b, &a, "accept")).unwrap();
        assert_eq!(
            (status(&s, &a, &b), status(&s, &b, &a)),
            (FriendStatus::Friends, FriendStatus::Friends)
        );
        assert_eq!(
            fold_one(&mut s, act(&b, &a, "open")),
            Ok(Accepted::Relationship {
                status: FriendStatus::Friends,
                room_id: Some(room.clone())
            })
        );
        let dm = get_room(&s, &room).unwrap();
        assert!(dm.is_direct());
        assert_eq!(dm.member_count, 2);
        // Nobody else joins it.
        let join = Record::MemberJoined(MemberJoined {
            request_id: 0,
            at: 6,
            room_id: room.clone(),
            user_id: uid(2),
            username: "carol".into(),
        });
        assert_eq!(fold_one(&mut s, join), Err(Rejection::RoomNotFound));
        // A block ends the friendship and the direct messages; the blocked
        // cannot ask again; unblocking leaves them strangers.
        fold_one(&mut s, act(&b, &a, "block")).unwrap();
        assert_eq!(get_room(&s, &room).unwrap().member_count, 0);
        assert!(get_member(&s, &room, &a).is_none());
        assert_eq!(fold_one(&mut s, act(&a, &b, "request")), Err(Rejection::Blocked));
        assert_eq!(fold_one(&mut s, act(&b, &a, "request")), Err(Rejection::Blocked));
        fold_one(&mut s, act(&b, &a, "unblock")).unwrap();
        assert!(s.get(&ViewKey::friend(&a, &b)).is_none(), "strangers keep no rows");
        // Both asking makes friends; opening again lets both back in.
        fold_one(&mut s, act(&a, &b, "request")).unwrap();
        fold_one(&mut s, act(&b, &a, "request")).unwrap();
        assert_eq!(status(&s, &a, &b), FriendStatus::Friends);
        fold_one(&mut s, act(&a, &b, "open")).unwrap();
        assert_eq!(get_room(&s, &room).unwrap().member_count, 2);
        // A record naming another pair's room is refused.
        let mut wrong = act(&a, &b, "request");
        if let Record::RelationshipChanged(r) = &mut wrong {
            r.room_id = "00000000000000aa".into();
        }
        assert_eq!(fold_one(&mut s, wrong), Err(Rejection::Malformed));
    }

    #[test]
    fn the_admin_role_is_granted_and_revoked_on_the_accounts_own_key() {
        let mut s = alice();
        let role = |granted: bool, user_id: String| {
            Record::AdminRoleChanged(AdminRoleChanged {
                request_id: 0,
                at: 9,
                user_id,
                username: "Alice".into(),
                granted,
                by: "cli".into(),
            })
        };
        let out = fold_from(
            &mut s,
            vec![
                role(true, alice_id()),
                role(true, "00000000000000ff".into()),
                open(ADMIN_ROLE_ID, 10, 1_000),
            ],
        );
        assert_eq!(out[0], Ok(Accepted::AdminRole { granted: true }));
        assert_eq!(
            out[1],
            Err(Rejection::UnknownUser),
            "a user id the username does not name"
        );
        assert_eq!(out[2], Err(Rejection::Malformed), "the reserved id is not a session");
        let granted = |s: &MemState| match s.get(&ViewKey::admin_role("alice")) {
            Some(ViewValue::AdminRole(r)) => r.granted,
            other => panic!("{other:?}"),
        };
        assert!(granted(&s));
        fold_from(&mut s, vec![role(false, alice_id())]);
        assert!(!granted(&s));
    }

    /// Alice signed up at accounts position (0, 0), as `place` would id her.
    fn alice() -> MemState {
        let mut s = MemState::default();
        let signup = Record::UserSignedUp(UserSignedUp {
            request_id: 0,
            at: 1,
            username: "alice".into(),
            password_hash: "x".into(),
        });
        let Ok(Accepted::SignedUp { user_id }) = fold(&mut s, LogPosition::new(0, 0), signup) else {
            panic!("signup refused")
        };
        assert_eq!(user_id, LogPosition::new(0, 0).to_id());
        s
    }

    fn alice_id() -> String {
        LogPosition::new(0, 0).to_id()
    }

    fn open(session_id: &str, at: i64, expires_at: i64) -> Record {
        Record::SessionOpened(SessionOpened {
            request_id: 0,
            at,
            user_id: alice_id(),
            username: "alice".into(),
            session_id: session_id.into(),
            expires_at,
        })
    }

    fn refresh(session_id: &str, at: i64, generation: i64) -> Record {
        Record::SessionRefreshed(SessionRefreshed {
            request_id: 0,
            at,
            user_id: alice_id(),
            username: "alice".into(),
            session_id: session_id.into(),
            generation,
        })
    }

    fn account(deleted: bool, at: i64) -> Record {
        let (user_id, username) = (alice_id(), "alice".to_owned());
        if deleted {
            Record::AccountDeleted(AccountDeleted {
                request_id: 0,
                at,
                user_id,
                username,
                by: None,
            })
        } else {
            Record::AccountRestored(AccountRestored {
                request_id: 0,
                at,
                user_id,
                username,
                by: None,
            })
        }
    }

    fn session(s: &MemState, id: &str) -> OpenedSessionView {
        match s.get(&ViewKey::session("alice", id)) {
            Some(ViewValue::OpenedSession(v)) => v.clone(),
            other => panic!("no opened session {id}: {other:?}"),
        }
    }

    /// Folds `records` one after another from accounts offset 1 on.
    fn fold_from(s: &mut MemState, records: Vec<Record>) -> Vec<Outcome> {
        let first = s.entries.len() as u64;
        records
            .into_iter()
            .enumerate()
            .map(|(i, r)| fold(s, LogPosition::new(0, first + i as u64 + 1), r))
            .collect()
    }

    #[test]
    fn a_refresh_rotates_the_generation_and_a_used_one_revokes_the_session() {
        let mut s = alice();
        let out = fold_from(
            &mut s,
            vec![open("s1", 10, 1_000), refresh("s1", 20, 0), refresh("s1", 30, 1)],
        );
        assert_eq!(
            out,
            vec![
                Ok(Accepted::SessionOpened { expires_at: 1_000 }),
                Ok(Accepted::Refreshed {
                    generation: 1,
                    expires_at: 1_000
                }),
                Ok(Accepted::Refreshed {
                    generation: 2,
                    expires_at: 1_000
                }),
            ]
        );
        assert!(session(&s, "s1").is_live(40, 0));
        // Generation 1 was used: presenting it again ends the session.
        assert_eq!(
            fold_from(&mut s, vec![refresh("s1", 40, 1)]),
            vec![Ok(Accepted::RefreshReused)]
        );
        let ended = session(&s, "s1");
        assert_eq!(
            ended.ended,
            Some(SessionEnd {
                at: 40,
                reason: SessionEndReason::RefreshReuse
            })
        );
        assert!(!ended.is_live(41, 0));
        // Even the current generation no longer refreshes it, and a logout
        // afterwards keeps the first end.
        assert_eq!(
            fold_from(&mut s, vec![refresh("s1", 50, 2)]),
            vec![Err(Rejection::SessionEnded)]
        );
        let logout = Record::SessionRevoked(SessionRevoked {
            request_id: 0,
            at: 60,
            user_id: alice_id(),
            username: "alice".into(),
            session_id: "s1".into(),
            expires_at: 1_000,
        });
        assert_eq!(fold_from(&mut s, vec![logout]), vec![Ok(Accepted::SessionRevoked)]);
        assert_eq!(session(&s, "s1").ended, ended.ended);
    }

    #[test]
    fn of_two_refreshes_with_one_token_the_first_in_log_order_wins() {
        let mut s = alice();
        let out = fold_from(
            &mut s,
            vec![open("s1", 10, 1_000), refresh("s1", 20, 0), refresh("s1", 20, 0)],
        );
        assert_eq!(
            out[1..],
            [
                Ok(Accepted::Refreshed {
                    generation: 1,
                    expires_at: 1_000
                }),
                Ok(Accepted::RefreshReused)
            ]
        );
        assert!(!session(&s, "s1").is_live(21, 0));
    }

    #[test]
    fn a_session_ends_at_its_absolute_end_whatever_its_refreshes() {
        let mut s = alice();
        let out = fold_from(
            &mut s,
            vec![open("s1", 10, 100), refresh("s1", 99, 0), refresh("s1", 100, 1)],
        );
        assert_eq!(
            out[1..],
            [
                Ok(Accepted::Refreshed {
                    generation: 1,
                    expires_at: 100
                }),
                Err(Rejection::SessionEnded)
            ]
        );
        // Refused, not revoked: nothing was reused.
        let s1 = session(&s, "s1");
        assert_eq!((s1.generation, s1.ended.clone()), (1, None));
        assert!(!s1.is_live(100, 0));
    }

    #[test]
    fn unknown_sessions_and_other_users_tokens_do_not_refresh() {
        let mut s = alice();
        let mut foreign = refresh("s1", 20, 0);
        if let Record::SessionRefreshed(r) = &mut foreign {
            r.user_id = "00000000000000ff".into();
        }
        let out = fold_from(&mut s, vec![refresh("nope", 5, 0), open("s1", 10, 1_000), foreign]);
        assert_eq!(out[0], Err(Rejection::SessionEnded));
        assert_eq!(out[2], Err(Rejection::SessionEnded));
        assert_eq!(session(&s, "s1").generation, 0);
        // A session logged out before sessions were records refreshes neither.
        let legacy = Record::SessionRevoked(SessionRevoked {
            request_id: 0,
            at: 30,
            user_id: alice_id(),
            username: "alice".into(),
            session_id: "old".into(),
            expires_at: 99,
        });
        let out = fold_from(&mut s, vec![legacy, refresh("old", 40, 0)]);
        assert_eq!(out, vec![Ok(Accepted::SessionRevoked), Err(Rejection::SessionEnded)]);
        assert!(matches!(
            s.get(&ViewKey::session("alice", "old")),
            Some(ViewValue::Session(SessionView { revoked_at: 30, .. }))
        ));
    }

    #[test]
    fn a_session_id_opens_once_and_never_the_reserved_one() {
        let mut s = alice();
        let out = fold_from(
            &mut s,
            vec![
                open("s1", 10, 1_000),
                refresh("s1", 20, 0),
                open("s1", 30, 5_000),
                open(SESSION_EPOCH_ID, 30, 5_000),
            ],
        );
        assert_eq!(out[2..], [Err(Rejection::Malformed), Err(Rejection::Malformed)]);
        let s1 = session(&s, "s1");
        assert_eq!((s1.generation, s1.expires_at), (1, 1_000));
    }

    #[test]
    fn a_restore_revives_no_session_opened_before_the_deletion() {
        let mut s = alice();
        let out = fold_from(
            &mut s,
            vec![
                open("before", 10, 1_000),
                account(true, 20),
                open("while_deleted", 25, 1_000),
                account(false, 30),
                open("after", 40, 1_000),
            ],
        );
        assert_eq!(out[2], Err(Rejection::UnknownUser), "no login while deleted");
        let epoch = match s.get(&ViewKey::session_epoch("alice")) {
            Some(ViewValue::SessionEpoch(e)) => e.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            epoch,
            SessionEpochView {
                user_id: alice_id(),
                epoch: 1,
                deleted_at: 20
            }
        );
        assert!(!session(&s, "before").is_live(50, epoch.epoch));
        assert!(session(&s, "after").is_live(50, epoch.epoch));
        let out = fold_from(&mut s, vec![refresh("before", 50, 0), refresh("after", 50, 0)]);
        assert_eq!(out[0], Err(Rejection::SessionEnded));
        assert!(matches!(out[1], Ok(Accepted::Refreshed { generation: 1, .. })));
        // A second deletion ends the new session too; a repeated one is a no-op.
        fold_from(&mut s, vec![account(true, 60), account(true, 61), account(false, 70)]);
        assert!(matches!(
            s.get(&ViewKey::session_epoch("alice")),
            Some(ViewValue::SessionEpoch(SessionEpochView {
                epoch: 2,
                deleted_at: 60,
                ..
            }))
        ));
        assert!(!session(&s, "after").is_live(80, 2));
    }
}
