//! Query API: the read endpoints of the contract, answered from the views.
//!
//! Reads never touch the log. Everything here is a lookup or an ordered range
//! scan on the view store: history pages walk one room's messages by id
//! (= log order), a user's rooms come from the membership index, and unread
//! counts are `room.message_count - member.read_seq`, both maintained by the fold.
//!
//! Activity by hour (`GET /v1/rooms/{id}/activity`) is read from the
//! activity consumer's view, which follows the core views by a batch or so.
//!
//! # Layout
//! - [`routes`]: the router; [`json`]: how view entities are rendered.
//! - [`attachments`]: downloads of rooms' files.

pub mod admin;
pub mod attachments;
pub mod json;
pub mod tail;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, State};
use axum::response::IntoResponse;
use axum::routing::get;
use emosation_core::access;
use emosation_core::emotion::Label;
use emosation_core::ids::LogPosition;
use emosation_core::ports::{Presence, ViewQueries, ViewStore};
use emosation_core::time;
use emosation_core::view::{EmotionView, RoomView, ViewKey, ViewValue};
use emosation_http::{ApiError, ApiPath, ApiQuery, AuthUser, Authenticator};
use serde::Deserialize;
use serde_json::{Value, json};

pub const DEFAULT_HISTORY_LIMIT: usize = 50;
pub const MAX_HISTORY_LIMIT: usize = 200;
pub const DEFAULT_ROOMS_LIMIT: usize = 100;
pub const MAX_ROOMS_LIMIT: usize = 1000;
/// Hours of activity served when `from` is not given.
pub const DEFAULT_ACTIVITY_HOURS: i64 = 24;
/// The widest activity range one request may ask for (31 days).
pub const MAX_ACTIVITY_HOURS: i64 = 31 * 24;

#[derive(Clone)]
pub struct QueryState {
    pub views: Arc<dyn ViewStore>,
    pub auth: Arc<Authenticator>,
    pub tails: Arc<tail::TailCache>,
    /// Who is connected, and who has which room open (every node's).
    pub presence: Arc<dyn Presence>,
}

/// Rooms whose newest messages are kept rendered in memory.
pub const TAIL_CACHE_ROOMS: usize = 1024;
/// Bytes of rendered messages the tail cache holds at most (a tail of
/// 1,000 messages of 4,000 characters is ~16 MB).
pub const TAIL_CACHE_BYTES: usize = 64 * 1024 * 1024;

impl FromRef<QueryState> for Arc<Authenticator> {
    fn from_ref(s: &QueryState) -> Self {
        Arc::clone(&s.auth)
    }
}

/// The history pages' cache of rendered room tails, at its default bounds.
pub fn tail_cache() -> Arc<tail::TailCache> {
    Arc::new(tail::TailCache::new(TAIL_CACHE_ROOMS, TAIL_CACHE_BYTES))
}

/// The read routes, ready to merge with other services' routes; `tails`
/// (from [`tail_cache`]) is passed in so that its memory can be reported.
pub fn routes(
    views: Arc<dyn ViewStore>,
    auth: Arc<Authenticator>,
    tails: Arc<tail::TailCache>,
    presence: Arc<dyn Presence>,
) -> Router {
    Router::new()
        .route("/v1/me", get(me))
        .route("/v1/me/rooms", get(my_rooms))
        .route("/v1/friends", get(friends))
        .route("/v1/rooms", get(list_rooms))
        .route("/v1/rooms/{room_id}", get(get_room))
        .route("/v1/rooms/{room_id}/members", get(members))
        .route("/v1/rooms/{room_id}/messages", get(history))
        .route("/v1/rooms/{room_id}/emotions", get(emotions))
        .route("/v1/rooms/{room_id}/activity", get(activity))
        .route("/v1/rooms/{room_id}/presence", get(room_presence))
        .with_state(QueryState {
            views,
            auth,
            tails,
            presence,
        })
}

/// The room's changes to its messages so far (edits, deletes,
/// re-classifications of edits): 0 for a room none was made in.
async fn room_changes(views: &dyn ViewQueries, room_id: &str) -> Result<u64, ApiError> {
    Ok(
        match views.load(&[ViewKey::room_edits(room_id)]).await?.pop().flatten() {
            Some(ViewValue::RoomEdits(e)) => e.changes,
            _ => 0,
        },
    )
}

/// The emotion of each message, where one has been recorded, and (in a
/// room with `changes`) its edits: one lookup.
async fn overlays_of(
    views: &dyn ViewStore,
    room_id: &str,
    messages: &[emosation_core::view::MessageView],
    changes: u64,
) -> Result<Vec<tail::Overlay>, ApiError> {
    let mut keys: Vec<ViewKey> = messages
        .iter()
        .map(|m| ViewKey::emotion(room_id, &m.message_id))
        .collect();
    if changes > 0 {
        keys.extend(messages.iter().map(|m| ViewKey::message_edit(room_id, &m.message_id)));
    }
    let mut values = views.load(&keys).await?.into_iter();
    let mut out: Vec<tail::Overlay> = values
        .by_ref()
        .take(messages.len())
        .map(|v| tail::Overlay {
            emotion: match v {
                Some(ViewValue::Emotion(e)) => Some(e),
                _ => None,
            },
            edit: None,
        })
        .collect();
    for (o, v) in out.iter_mut().zip(values) {
        if let Some(ViewValue::MessageEdit(e)) = v {
            o.edit = Some(e);
        }
    }
    Ok(out)
}

pub(crate) fn parse_limit(raw: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    match raw {
        None | Some("") => Ok(default),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid_request(format!(
                "limit must be an integer from 1 to {max}"
            ))),
        },
    }
}

/// `GET /v1/me`, with (extension) `admin`: whether the account holds the admin role.
async fn me(State(s): State<QueryState>, user: AuthUser) -> Result<axum::Json<Value>, ApiError> {
    let u = s
        .views
        .user(&user.user_id)
        .await?
        .ok_or_else(|| ApiError::invalid_token("account does not exist"))?;
    let role = s.views.load(&[ViewKey::admin_role(&u.username)]).await?.pop().flatten();
    let mut body = json::user(&u);
    body["admin"] = json!(matches!(role, Some(ViewValue::AdminRole(r)) if r.granted && r.user_id == u.user_id));
    Ok(axum::Json(body))
}

/// A page of an id-ordered list: `?after=<id>&limit=` (default 100, at
/// most 1000), answered with `next_after` (null on the last page).
#[derive(Deserialize)]
struct PageQuery {
    after: Option<String>,
    limit: Option<String>,
}

impl PageQuery {
    fn limit(&self) -> Result<usize, ApiError> {
        parse_limit(self.limit.as_deref(), DEFAULT_ROOMS_LIMIT, MAX_ROOMS_LIMIT)
    }
}

/// The id to continue after, if `items` filled the page.
fn next_after<T>(items: &[T], limit: usize, id: impl Fn(&T) -> &str) -> Option<String> {
    (items.len() == limit)
        .then(|| items.last().map(|i| id(i).to_owned()))
        .flatten()
}

async fn my_rooms(
    State(s): State<QueryState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let limit = q.limit()?;
    let memberships = s.views.user_rooms(&user.user_id, q.after.as_deref(), limit).await?;
    let mut rooms = Vec::with_capacity(memberships.len());
    for m in &memberships {
        if let Some(room) = s.views.room(&m.room_id).await? {
            let mut item = json::my_room(&room, m);
            // A direct-message room is named after the other person.
            if room.is_direct()
                && let Some((id, name)) = other_member(&*s.views, &room.room_id, &user.user_id).await?
            {
                item["name"] = json!(name);
                item["direct"] = json!(true);
                item["user_id"] = json!(id);
            }
            rooms.push(item);
        }
    }
    Ok(axum::Json(json!({
        "rooms": rooms,
        "next_after": next_after(&memberships, limit, |m| &m.room_id),
    })))
}

/// `GET /v1/rooms`: a page of [`PageQuery`], and (extension) `?q=` to keep
/// only the rooms whose name contains it, ignoring case.
#[derive(Deserialize)]
struct RoomsQuery {
    #[serde(flatten)]
    page: PageQuery,
    q: Option<String>,
}

async fn list_rooms(
    State(s): State<QueryState>,
    ApiQuery(q): ApiQuery<RoomsQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let limit = q.page.limit()?;
    let after = q.page.after.as_deref();
    let (rooms, next) = match name_filter(q.q.as_deref())? {
        None => {
            let rooms = s.views.rooms(after, limit).await?;
            let next = next_after(&rooms, limit, |r| &r.room_id);
            (rooms, next)
        }
        Some(needle) => rooms_named(&*s.views, &needle, after, limit).await?,
    };
    Ok(axum::Json(json!({
        // Direct-message rooms are not in the directory.
        "rooms": rooms.iter().filter(|r| !r.is_direct()).map(json::room).collect::<Vec<_>>(),
        "next_after": next,
    })))
}

/// The longest name filter: names are at most 100 characters.
pub const MAX_ROOM_FILTER_CHARS: usize = 100;
/// Rooms read per step of a filtered listing.
const FILTER_SCAN_PAGE: usize = 1000;
/// Rooms one filtered request reads at most: a rare name in a large
/// directory answers a short (even empty) page with `next_after` where the
/// scan stopped, instead of reading every room in one request.
pub const FILTER_SCAN_BUDGET: usize = 20_000;

/// `q` trimmed and lower-cased; `None` when there is nothing to filter by.
fn name_filter(q: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(q) = q.map(str::trim).filter(|q| !q.is_empty()) else {
        return Ok(None);
    };
    if q.chars().count() > MAX_ROOM_FILTER_CHARS || q.chars().any(char::is_control) {
        return Err(ApiError::invalid_request(format!(
            "q must be at most {MAX_ROOM_FILTER_CHARS} characters, without control characters"
        )));
    }
    Ok(Some(q.to_lowercase()))
}

/// The rooms after `after` whose lower-cased name contains `needle`, in id
/// order, at most `limit`, by scanning the id-ordered room list (every
/// engine has it; none keeps a name index): the page and where to go on
/// (`None` at the end of the list).
async fn rooms_named(
    views: &dyn ViewStore,
    needle: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<emosation_core::view::RoomView>, Option<String>), ApiError> {
    let mut found = Vec::new();
    let mut cursor = after.map(str::to_owned);
    let mut scanned = 0;
    loop {
        let page = views.rooms(cursor.as_deref(), FILTER_SCAN_PAGE).await?;
        let full = page.len() == FILTER_SCAN_PAGE;
        for room in page {
            scanned += 1;
            cursor = Some(room.room_id.clone());
            if room.name.to_lowercase().contains(needle) {
                found.push(room);
                if found.len() == limit {
                    return Ok((found, cursor));
                }
            }
        }
        if !full {
            return Ok((found, None));
        }
        if scanned >= FILTER_SCAN_BUDGET {
            return Ok((found, cursor));
        }
    }
}

/// The other member of a direct-message room: `(user_id, username)`.
async fn other_member(views: &dyn ViewStore, room_id: &str, me: &str) -> Result<Option<(String, String)>, ApiError> {
    Ok(views
        .members(room_id, None, 2)
        .await?
        .into_iter()
        .find(|m| m.user_id != me)
        .map(|m| (m.user_id, m.username)))
}

/// A room by id; a direct-message room only to its members (with a token),
/// named after the other person: to anyone else it does not exist.
async fn get_room(
    State(s): State<QueryState>,
    user: Result<AuthUser, ApiError>,
    ApiPath(room_id): ApiPath<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let room = access::room(&*s.views, &room_id).await?;
    if !room.is_direct() {
        return Ok(axum::Json(json::room(&room)));
    }
    let me = user.map_err(|_| ApiError::from(emosation_core::Rejection::RoomNotFound))?;
    if s.views.member(&room_id, &me.user_id).await?.is_none() {
        return Err(emosation_core::Rejection::RoomNotFound.into());
    }
    let mut body = json::room(&room);
    if let Some((id, name)) = other_member(&*s.views, &room_id, &me.user_id).await? {
        body["name"] = json!(name);
        body["user_id"] = json!(id);
    }
    body["direct"] = json!(true);
    Ok(axum::Json(body))
}

/// Rows of a user's relationships read per request at most.
const MAX_FRIENDS: usize = 5000;

/// `GET /v1/friends`: friends (with whether each is online now), friend
/// requests in and out, and the users one blocks.
async fn friends(State(s): State<QueryState>, user: AuthUser) -> Result<axum::Json<Value>, ApiError> {
    let rows = s.views.friends(&user.user_id, None, MAX_FRIENDS).await?;
    let friend_ids: Vec<String> = rows
        .iter()
        .filter(|f| f.status == emosation_core::view::FriendStatus::Friends)
        .map(|f| f.other_id.clone())
        .collect();
    // Presence is an accelerator here: without it, nobody shows online.
    let online = s
        .presence
        .online(&friend_ids)
        .await
        .unwrap_or_else(|_| vec![false; friend_ids.len()]);
    let online: std::collections::HashMap<&str, bool> = friend_ids
        .iter()
        .map(String::as_str)
        .zip(online.iter().copied())
        .collect();
    let (mut friends, mut incoming, mut outgoing, mut blocked) = (vec![], vec![], vec![], vec![]);
    for f in &rows {
        let item = json!({
            "user_id": f.other_id,
            "username": f.other_name,
            "since": time::rfc3339_millis(f.since),
        });
        use emosation_core::view::FriendStatus as S;
        match f.status {
            S::Friends => {
                let mut item = item.clone();
                item["online"] = json!(online.get(f.other_id.as_str()).copied().unwrap_or(false));
                item["room_id"] = json!(f.room_id);
                friends.push(item);
            }
            S::RequestIn => incoming.push(item.clone()),
            S::RequestOut => outgoing.push(item.clone()),
            S::None => {}
        }
        if f.blocking {
            blocked.push(item);
        }
    }
    Ok(axum::Json(json!({
        "friends": friends,
        "incoming": incoming,
        "outgoing": outgoing,
        "blocked": blocked,
    })))
}

async fn members(
    State(s): State<QueryState>,
    user: AuthUser,
    ApiPath(room_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let limit = q.limit()?;
    access::member_room(&*s.views, &room_id, &user.user_id).await?;
    let members = s.views.members(&room_id, q.after.as_deref(), limit).await?;
    Ok(axum::Json(json!({
        "members": members.iter().map(|m| json!({"user_id": m.user_id, "username": m.username})).collect::<Vec<_>>(),
        "next_after": next_after(&members, limit, |m| &m.user_id),
    })))
}

/// Who has the room open right now, on any fan-out node (members only).
async fn room_presence(
    State(s): State<QueryState>,
    user: AuthUser,
    ApiPath(room_id): ApiPath<String>,
) -> Result<axum::Json<Value>, ApiError> {
    access::member_room(&*s.views, &room_id, &user.user_id).await?;
    let here = s
        .presence
        .here(&room_id)
        .await
        .map_err(|e| ApiError::unavailable(format!("presence is not available: {e}")))?;
    let keys: Vec<ViewKey> = here
        .iter()
        .map(|u| ViewKey::Member {
            room_id: room_id.clone(),
            user_id: u.clone(),
        })
        .collect();
    // Only members can open a room; one who left meanwhile is not listed.
    let users: Vec<Value> = s
        .views
        .load(&keys)
        .await?
        .into_iter()
        .filter_map(|v| match v {
            Some(ViewValue::Member(m)) => Some(json!({"user_id": m.user_id, "username": m.username})),
            _ => None,
        })
        .collect();
    Ok(axum::Json(
        json!({"room_id": room_id, "online_count": users.len(), "users": users}),
    ))
}

#[derive(Deserialize)]
struct HistoryQuery {
    before: Option<String>,
    limit: Option<String>,
}

async fn history(
    State(s): State<QueryState>,
    user: AuthUser,
    ApiPath(room_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<axum::response::Response, ApiError> {
    let room = access::member_room(&*s.views, &room_id, &user.user_id).await?;
    let limit = parse_limit(q.limit.as_deref(), DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT)?;
    let before = match q.before.as_deref() {
        None | Some("") => None,
        Some(b) if LogPosition::parse_id(b).is_some() => Some(b),
        Some(_) => return Err(ApiError::invalid_request("before must be a message id or cursor")),
    };
    let changes = room_changes(&*s.views, &room_id).await?;
    let tail = match s.tails.get(&room, changes) {
        Some(t) => t,
        None => {
            let newest = s.views.history(&room_id, None, tail::TAIL_LEN).await?;
            let overlays = overlays_of(&*s.views, &room_id, &newest, changes).await?;
            s.tails.put(&room, changes, &newest, &overlays)
        }
    };
    if let Some(page) = tail.page(before, limit) {
        return Ok((
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            tail::RoomTail::render_page(page),
        )
            .into_response());
    }
    let messages = s.views.history(&room_id, before, limit).await?;
    let overlays = overlays_of(&*s.views, &room_id, &messages, changes).await?;
    // Messages of a room have seq 1, 2, 3, …: the page reaches the start of
    // the room exactly when its oldest message is seq 1.
    let page = json::HistoryPage {
        next_before: messages.first().filter(|m| m.seq > 1).map(|m| m.message_id.as_str()),
        messages: messages
            .iter()
            .zip(&overlays)
            .map(|(m, o)| json::Message::new(m, o.emotion.as_ref(), o.edit.as_ref()))
            .collect(),
    };
    let size_hint = 64 + messages.iter().map(|m| 200 + m.text.len()).sum::<usize>();
    Ok(json::respond(&page, size_hint))
}

#[derive(Deserialize)]
struct EmotionsQuery {
    limit: Option<String>,
}

/// Reads of an emotions page before its answer goes with the summary as it
/// stands, when edits keep landing between the page and the summary.
const EMOTIONS_ATTEMPTS: u32 = 4;

/// A room's newest `limit` emotions ([`emotions_page`]) and the room whose
/// counts summarise them, read so that they agree.
///
/// The page and the summary are separate reads, and an edit's emotion (or
/// a delete) folded between them would move a count the page had not seen:
/// the page would show the message's first emotion next to a summary that
/// no longer counts it. Every such fold bumps the room's change counter in
/// the same view batch as the counts, so the page goes out with the summary
/// only if the counter did not move around both reads; otherwise both are
/// read again, [`EMOTIONS_ATTEMPTS`] times at most. New first emotions only
/// add: the summary, read after the page, counts at least what it shows.
async fn emotions_with_summary(
    views: &dyn ViewQueries,
    room_id: &str,
    limit: usize,
) -> Result<(Vec<EmotionView>, RoomView), ApiError> {
    let mut changes = room_changes(views, room_id).await?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let page = emotions_page(views, room_id, limit, changes).await?;
        let room = access::room(views, room_id).await?;
        let after = room_changes(views, room_id).await?;
        if after == changes || attempts == EMOTIONS_ATTEMPTS {
            return Ok((page, room));
        }
        changes = after;
    }
}

/// The newest `limit` emotions of a room, each message's latest: an edit's
/// emotion supersedes the message's first, and a deleted message has none
/// (looked up only in a room with `changes`).
async fn emotions_page(
    views: &dyn ViewQueries,
    room_id: &str,
    limit: usize,
    changes: u64,
) -> Result<Vec<EmotionView>, ApiError> {
    let emotions = views.emotions(room_id, limit).await?;
    if changes == 0 {
        return Ok(emotions);
    }
    let keys: Vec<ViewKey> = emotions
        .iter()
        .map(|e| ViewKey::message_edit(room_id, &e.message_id))
        .collect();
    let edits = views.load(&keys).await?;
    Ok(emotions
        .into_iter()
        .zip(edits)
        .filter_map(|(first, edit)| match edit {
            Some(ViewValue::MessageEdit(e)) if e.deleted_at.is_some() => None,
            Some(ViewValue::MessageEdit(e)) => Some(e.emotion.unwrap_or(first)),
            _ => Some(first),
        })
        .collect())
}

async fn emotions(
    State(s): State<QueryState>,
    user: AuthUser,
    ApiPath(room_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<EmotionsQuery>,
) -> Result<axum::response::Response, ApiError> {
    access::member_room(&*s.views, &room_id, &user.user_id).await?;
    let limit = parse_limit(q.limit.as_deref(), DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT)?;
    let (emotions, room) = emotions_with_summary(&*s.views, &room_id, limit).await?;
    let summary: serde_json::Map<String, Value> = Label::ALL
        .iter()
        .zip(room.emotion_counts)
        .map(|(l, n)| (l.as_str().to_owned(), json!(n)))
        .collect();
    let body = json!({
        "emotions": emotions.iter().map(json::Emotion::from).collect::<Vec<_>>(),
        "summary": summary,
    });
    Ok(json::respond(&body, 256 + emotions.len() * 300))
}

#[derive(Deserialize)]
struct ActivityQuery {
    from: Option<String>,
    to: Option<String>,
}

fn parse_instant(name: &str, raw: Option<&str>) -> Result<Option<i64>, ApiError> {
    match raw {
        None | Some("") => Ok(None),
        Some(s) => time::parse_rfc3339(s).map(Some).ok_or_else(|| {
            ApiError::invalid_request(format!(
                "{name} must be an RFC 3339 timestamp, e.g. 2026-11-22T10:00:00Z"
            ))
        }),
    }
}

/// A room's messages per UTC hour, from the activity consumer's view: the
/// hours that overlap `[from, to)` and have messages, oldest first. `to`
/// defaults to now, `from` to 24 hours before `to`; at most 31 days.
async fn activity(
    State(s): State<QueryState>,
    user: AuthUser,
    ApiPath(room_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ActivityQuery>,
) -> Result<axum::response::Response, ApiError> {
    access::member_room(&*s.views, &room_id, &user.user_id).await?;
    let to = parse_instant("to", q.to.as_deref())?;
    let from = parse_instant("from", q.from.as_deref())?;
    let to = to.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    });
    let from = time::hour_start(from.unwrap_or(to - DEFAULT_ACTIVITY_HOURS * time::HOUR_MS));
    if from >= to {
        return Err(ApiError::invalid_request("from must be before to"));
    }
    if to - from > MAX_ACTIVITY_HOURS * time::HOUR_MS {
        return Err(ApiError::invalid_request(format!(
            "at most {MAX_ACTIVITY_HOURS} hours (31 days) per request"
        )));
    }
    let hours = s.views.activity(&room_id, from, to).await?;
    let body = json!({
        "room_id": room_id,
        "from": time::rfc3339_seconds(from),
        "to": time::rfc3339_millis(to),
        "hours": hours.iter().map(|h| json!({
            "hour": time::rfc3339_seconds(h.hour),
            "messages": h.messages,
            "authors": h.authors.len(),
        })).collect::<Vec<_>>(),
    });
    Ok(json::respond(&body, 96 + hours.len() * 64))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use emosation_core::Record;
    use emosation_core::ids::{LogPosition, Topic, Topology, partition_for, random_id};
    use emosation_core::ports::{CORE_VIEWS, LogEntry, StoreError, ViewBatch};
    use emosation_core::record::{EmotionRecorded, MessageEdited, MessagePosted, RoomCreated};
    use emosation_core::view::{ActivityView, FriendView, MemberView, MessageView};
    use emosation_storage::EmbeddedViewStore;

    use super::*;

    /// A real store that folds the rest of a log right after the first read
    /// of a message's edits: a live projector's batch landing between an
    /// emotions page and its summary, which otherwise happens at random.
    struct FoldsAfterTheEdits {
        store: EmbeddedViewStore,
        partition: u32,
        rest: Mutex<Option<Vec<LogEntry>>>,
        pages: AtomicUsize,
    }

    async fn fold(store: &EmbeddedViewStore, partition: u32, entries: &[LogEntry]) {
        let (changes, _) = emosation_projector::fold_batch(store, Topic::Rooms, partition, entries)
            .await
            .unwrap();
        let batch = ViewBatch {
            consumer: CORE_VIEWS.to_owned(),
            changes,
            positions: vec![],
        };
        store.apply(batch).await.unwrap();
    }

    #[async_trait::async_trait]
    impl ViewQueries for FoldsAfterTheEdits {
        async fn load(&self, keys: &[ViewKey]) -> Result<Vec<Option<ViewValue>>, StoreError> {
            let found = self.store.load(keys).await?;
            // A message's edit (the room's change counter is a row of the
            // same table, read before and after the page).
            let edit =
                |k: &ViewKey| matches!(k, ViewKey::MessageEdit { room_id, .. } if *k != ViewKey::room_edits(room_id));
            if keys.iter().any(edit) {
                let rest = self.rest.lock().unwrap().take();
                if let Some(rest) = rest {
                    fold(&self.store, self.partition, &rest).await;
                }
            }
            Ok(found)
        }
        async fn rooms(&self, after: Option<&str>, limit: usize) -> Result<Vec<RoomView>, StoreError> {
            self.store.rooms(after, limit).await
        }
        async fn members(&self, room: &str, after: Option<&str>, limit: usize) -> Result<Vec<MemberView>, StoreError> {
            self.store.members(room, after, limit).await
        }
        async fn user_rooms(
            &self,
            user: &str,
            after: Option<&str>,
            limit: usize,
        ) -> Result<Vec<MemberView>, StoreError> {
            self.store.user_rooms(user, after, limit).await
        }
        async fn friends(&self, user: &str, after: Option<&str>, limit: usize) -> Result<Vec<FriendView>, StoreError> {
            self.store.friends(user, after, limit).await
        }
        async fn usernames(
            &self,
            prefix: &str,
            after: Option<&str>,
            limit: usize,
        ) -> Result<Vec<(String, String)>, StoreError> {
            self.store.usernames(prefix, after, limit).await
        }
        async fn history(
            &self,
            room: &str,
            before: Option<&str>,
            limit: usize,
        ) -> Result<Vec<MessageView>, StoreError> {
            self.store.history(room, before, limit).await
        }
        async fn emotions(&self, room: &str, limit: usize) -> Result<Vec<EmotionView>, StoreError> {
            self.pages.fetch_add(1, Ordering::SeqCst);
            self.store.emotions(room, limit).await
        }
        async fn activity(&self, room: &str, from: i64, to: i64) -> Result<Vec<ActivityView>, StoreError> {
            self.store.activity(room, from, to).await
        }
    }

    #[tokio::test]
    async fn an_emotions_page_and_its_summary_agree_when_an_edit_is_classified_between_them() {
        let (room, alice) = (random_id(0xa1), random_id(0xb1));
        let p = partition_for(room.as_bytes(), Topology::default().rooms_partitions);
        let message_id = LogPosition::new(p, 1).to_id();
        let emotion = |label: &str, edit_id: Option<String>| {
            Record::EmotionRecorded(EmotionRecorded {
                request_id: 0,
                at: 3,
                room_id: room.clone(),
                message_id: message_id.clone(),
                label: label.into(),
                score: 0.6,
                scores: vec![0.6, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05],
                model: "test".into(),
                edit_id,
            })
        };
        let log = [
            Record::RoomCreated(RoomCreated {
                request_id: 0,
                at: 1,
                room_id: room.clone(),
                name: "r".into(),
                capacity: 10,
                owner_id: alice.clone(),
                owner_name: "alice".into(),
            }),
            Record::MessagePosted(MessagePosted {
                request_id: 0,
                at: 2,
                room_id: room.clone(),
                author_id: alice.clone(),
                author: "alice".into(),
                client_msg_id: "c1".into(),
                text: "so happy".into(),
                attachments: vec![],
            }),
            emotion("joy", None),
            Record::MessageEdited(MessageEdited {
                request_id: 0,
                at: 4,
                room_id: room.clone(),
                message_id: message_id.clone(),
                user_id: alice.clone(),
                username: "alice".into(),
                text: "so sad".into(),
            }),
            // The edit's emotion (the edit is the record at offset 3).
            emotion("sadness", Some(LogPosition::new(p, 3).to_id())),
        ];
        let entries: Vec<LogEntry> = log
            .iter()
            .enumerate()
            .map(|(i, r)| LogEntry {
                offset: i as u64,
                key: Bytes::from(r.key()),
                value: Bytes::from(emosation_schemas::encode(r).unwrap()),
                timestamp_ms: 0,
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let views = FoldsAfterTheEdits {
            store: EmbeddedViewStore::open(dir.path()).unwrap(),
            partition: p,
            rest: Mutex::new(Some(entries[4..].to_vec())),
            pages: AtomicUsize::new(0),
        };
        fold(&views.store, p, &entries[..4]).await;

        let (page, summary) = emotions_with_summary(&views, &room, 50).await.unwrap();
        let count = |l: Label| summary.emotion_counts[Label::ALL.iter().position(|x| *x == l).unwrap()];
        assert_eq!(
            (count(Label::Joy), count(Label::Sadness)),
            (0, 1),
            "the edit's emotion folded"
        );
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].label, "sadness", "the page agrees with its summary");
        assert_eq!(
            views.pages.load(Ordering::SeqCst),
            2,
            "the page read before the edit's emotion was read again"
        );
    }
}
