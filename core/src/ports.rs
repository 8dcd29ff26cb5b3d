//! The ports: contracts between the services and the engines behind them.
//!
//! Handlers hold `Arc<dyn Log>` / `Arc<dyn ViewStore>`; the binary picks the
//! adapter from a URL (`embedded://`, `kafka://`, `scylla://`, `redis://`).
//! Every adapter must pass the generic test body written for its port.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::bulk::BulkRows;
use crate::ids::{LogPosition, Topic, Topology};
use crate::view::{ActivityView, MemberView, MessageView, RoomView, UserView, ViewKey, ViewValue};

/// One record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub offset: u64,
    pub key: Bytes,
    pub value: Bytes,
    /// When the log accepted the record (milliseconds since the epoch).
    pub timestamp_ms: i64,
}

/// Memory one part of an adapter holds now, and the most it will hold: what
/// `/metrics` reports as `emosation_memory_bytes{part}` and
/// `emosation_memory_limit_bytes{part}`, so that an operator (and the soak
/// bench) can tell bounded caches filling up from memory that grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    /// A name from a closed set (a metric label), e.g. `log_tails`.
    pub part: &'static str,
    pub bytes: u64,
    pub limit: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("unknown topic or partition {topic}/{partition}")]
    UnknownPartition { topic: String, partition: u32 },
    #[error("offset {offset} is out of range for {topic}/{partition} (end {end})")]
    OffsetOutOfRange {
        topic: String,
        partition: u32,
        offset: u64,
        end: u64,
    },
    #[error("log is shutting down")]
    Closed,
    /// Nothing was written and the caller may retry soon (a producer queue
    /// is full).
    #[error("log is busy: {0}")]
    Busy(String),
    #[error("log storage error: {0}")]
    Storage(String),
}

/// An append whose place in its partition is taken: awaiting it yields the
/// record's position once it is durable.
pub type AppendTicket = std::pin::Pin<Box<dyn std::future::Future<Output = Result<LogPosition, LogError>> + Send>>;

/// The durable, partitioned, append-only log: the single source of truth.
///
/// Contract (the generic log test body checks each point):
/// - **Partitioning**: `append` places a record in
///   [`crate::ids::partition_for`]`(key, partitions)`; one key's records are
///   totally ordered.
/// - **Order of appends**: a record takes its place in its partition when
///   `append` is called, not when its ticket is awaited: records one caller
///   appends one call after another are stored in that order, even when their
///   tickets are awaited together. This is what keeps one connection's
///   pipelined sends in the order sent.
/// - **Durability**: an append's ticket resolves only once the record is
///   durable (synced to disk, or acknowledged by all in-sync replicas). An
///   `Ok` is never lost, even to `kill -9`; an `Err` means the record may or
///   may not have been written (`Busy`: it was not).
/// - **Offsets**: within a partition offsets are dense, start at 0 and increase
///   by one per record; a record's offset never changes.
/// - **Reads**: `fetch` returns records at offsets `>= from`, in offset order,
///   at most `max` of them; if none are available it waits up to `wait` for one
///   and then returns what it has (possibly nothing). Reading at the end offset
///   is not an error; reading beyond it is `OffsetOutOfRange`.
/// - **Consumer groups**: `commit` stores the next offset a group will read;
///   `committed` returns the last stored value. Commits are durable but may be
///   lost in a crash only if the caller was not yet told `Ok`.
#[async_trait]
pub trait Log: Send + Sync + 'static {
    /// Partition counts of the topics.
    fn topology(&self) -> Topology;

    /// Appends `value` under `key` to `topic`: its place is taken now; the
    /// ticket resolves with where it landed, once durable.
    fn append(&self, topic: Topic, key: &[u8], value: Bytes) -> AppendTicket;

    /// Reads from `partition` of `topic` starting at offset `from`.
    async fn fetch(
        &self,
        topic: Topic,
        partition: u32,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<LogEntry>, LogError>;

    /// The offset the next record appended to the partition will get.
    async fn end_offset(&self, topic: Topic, partition: u32) -> Result<u64, LogError>;

    /// Stores `next_offset` as the group's position in the partition.
    async fn commit(&self, group: &str, topic: Topic, partition: u32, next_offset: u64) -> Result<(), LogError>;

    /// The group's stored position in the partition, if it ever committed one.
    async fn committed(&self, group: &str, topic: Topic, partition: u32) -> Result<Option<u64>, LogError>;

    /// Whether this handle can still take appends: `Err(reason)` once it
    /// never will again without being reopened (a restart), e.g. the
    /// embedded log's writer stopped after a failed commit (a full disk).
    /// A dependency that is only unreachable for now (a broker down) is not
    /// reported: appends fail and are retried meanwhile. Once `Err`, it
    /// stays `Err`. Cheap and non-blocking: callers ask it often. Provided
    /// as `Ok(())` for adapters that cannot fail so.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// The memory this handle holds in the process, by part, with each
    /// part's bound (its caches and buffers; not the OS page cache).
    /// Provided as none for adapters whose memory is elsewhere (a broker).
    fn memory(&self) -> Vec<MemoryUse> {
        Vec::new()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("view store error: {0}")]
    Storage(String),
    #[error("corrupt view entry in {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
}

/// Which consumer's views a position belongs to (each consumer's views are
/// rebuilt, and resume, independently).
pub const CORE_VIEWS: &str = "core";

/// A batch of view writes, committed atomically with the log positions it covers.
#[derive(Debug, Default, Clone)]
pub struct ViewBatch {
    /// The consumer whose positions are advanced (e.g. [`CORE_VIEWS`]).
    pub consumer: String,
    /// Entity writes (`Some`) and deletions (`None`).
    pub changes: Vec<(ViewKey, Option<ViewValue>)>,
    /// `(topic, partition, next_offset)`: everything before `next_offset` has
    /// been applied once this batch is committed.
    pub positions: Vec<(Topic, u32, u64)>,
}

/// The read models' queries: what ingest, the fan-out, the query API and the
/// projector's own lookups ask of the views.
///
/// Contract (the generic view-store test body checks each point):
/// - **Read your writes**: once [`ViewStore::apply`] returns, every query
///   sees the batch.
/// - **Queries** return entities exactly as the fold wrote them. `load`
///   answers one result per key, in the keys' order. `history` returns the
///   newest `limit` messages of a room with ids `< before` (all if `None`),
///   oldest first. `activity` returns a room's hours in `[from_hour, to_hour)`
///   that have an entity, in hour order.
///
/// An adapter implements `load` (point reads of any keys) and the range
/// queries, which each engine answers from its own indexes. The typed point
/// reads (`user`, `user_by_name`, `room`, `member`, `session`) are provided
/// over `load`: a point read is the same lookup in every engine.
#[async_trait]
pub trait ViewQueries: Send + Sync + 'static {
    /// Point reads, one result per key, in order.
    async fn load(&self, keys: &[ViewKey]) -> Result<Vec<Option<ViewValue>>, StoreError>;

    /// Rooms in id order, starting after `after`, at most `limit`.
    async fn rooms(&self, after: Option<&str>, limit: usize) -> Result<Vec<RoomView>, StoreError>;
    /// A room's members in user-id order, starting after the user id
    /// `after`, at most `limit`.
    async fn members(&self, room_id: &str, after: Option<&str>, limit: usize) -> Result<Vec<MemberView>, StoreError>;
    /// A user's memberships in room-id order, starting after the room id
    /// `after`, at most `limit`.
    async fn user_rooms(&self, user_id: &str, after: Option<&str>, limit: usize)
    -> Result<Vec<MemberView>, StoreError>;
    /// Where `user_id` stands with other users (friends, requests both ways,
    /// blocks both ways), in other-user-id order, starting after the user id
    /// `after`, at most `limit`.
    async fn friends(
        &self,
        user_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::view::FriendView>, StoreError>;
    /// The user ids of the usernames (normalized) that start with `prefix`,
    /// in username order, after the username `after`, at most `limit`:
    /// `(username, user_id)`. An admin's search.
    async fn usernames(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError>;
    async fn history(&self, room_id: &str, before: Option<&str>, limit: usize) -> Result<Vec<MessageView>, StoreError>;
    /// The emotions of a room's newest `limit` classified messages, oldest first.
    async fn emotions(&self, room_id: &str, limit: usize) -> Result<Vec<crate::view::EmotionView>, StoreError>;
    /// A room's activity entities with `from_hour <= hour < to_hour`
    /// (milliseconds since the epoch), oldest hour first.
    async fn activity(&self, room_id: &str, from_hour: i64, to_hour: i64) -> Result<Vec<ActivityView>, StoreError>;

    async fn user(&self, user_id: &str) -> Result<Option<UserView>, StoreError> {
        Ok(match load_one(self, ViewKey::User(user_id.to_owned())).await? {
            Some(ViewValue::User(u)) => Some(u),
            _ => None,
        })
    }

    /// The user holding `username` (normalized), through the username index.
    async fn user_by_name(&self, username: &str) -> Result<Option<UserView>, StoreError> {
        match load_one(self, ViewKey::Username(username.to_owned())).await? {
            Some(ViewValue::Username(id)) => self.user(&id).await,
            _ => Ok(None),
        }
    }

    async fn room(&self, room_id: &str) -> Result<Option<RoomView>, StoreError> {
        Ok(match load_one(self, ViewKey::Room(room_id.to_owned())).await? {
            Some(ViewValue::Room(r)) => Some(r),
            _ => None,
        })
    }

    async fn member(&self, room_id: &str, user_id: &str) -> Result<Option<MemberView>, StoreError> {
        let key = ViewKey::Member {
            room_id: room_id.to_owned(),
            user_id: user_id.to_owned(),
        };
        Ok(match load_one(self, key).await? {
            Some(ViewValue::Member(m)) => Some(m),
            _ => None,
        })
    }
}

/// One point read through [`ViewQueries::load`].
async fn load_one<Q: ViewQueries + ?Sized>(views: &Q, key: ViewKey) -> Result<Option<ViewValue>, StoreError> {
    Ok(views.load(std::slice::from_ref(&key)).await?.pop().flatten())
}

/// The read models, written only by projectors: the write side (batches,
/// positions, rebuilds, digests) over the queries of [`ViewQueries`].
///
/// Contract (the generic view-store test body checks each point):
/// - **Atomic batches**: `apply` makes all of a batch's changes and positions
///   visible together or not at all, so a restarted projector resuming from
///   `position` never applies a record twice nor skips one.
/// - **Consumers are independent**: each table belongs to one consumer
///   ([`crate::view::table_owner`]: the core fold's tables, or the `activity`
///   consumer's). `clear(consumer)` drops exactly that consumer's tables and
///   positions, and leaves every other consumer's alone.
/// - **Deterministic content**: `checksum_of(consumer)` digests that
///   consumer's entities and positions (and rebuilding mark) in a fixed order;
///   two stores with equal content give equal digests whatever the adapter's
///   physical layout. `checksum` is the core views' digest.
#[async_trait]
pub trait ViewStore: ViewQueries {
    async fn apply(&self, batch: ViewBatch) -> Result<(), StoreError>;
    /// The next offset to apply for `consumer` on a partition (0 when none applied).
    async fn position(&self, consumer: &str, topic: Topic, partition: u32) -> Result<u64, StoreError>;

    /// Drops the views of `consumer` (their entities and positions) for a rebuild.
    async fn clear(&self, consumer: &str) -> Result<(), StoreError>;

    /// Bulk-loads entities during a rebuild, bypassing the write path of
    /// `apply`. Only for keys that are written once and never deleted
    /// ([`ViewKey::is_write_once`]; [`BulkRows`] takes no others) and not
    /// already present; rows may come in any order. Not atomic with positions:
    /// callers bracket a rebuild with [`ViewStore::set_rebuilding`].
    async fn bulk_load(&self, rows: BulkRows) -> Result<(), StoreError>;

    /// Marks `consumer`'s views as mid-rebuild (or no longer). Views marked
    /// so are incomplete: a projector must refuse to resume them.
    async fn set_rebuilding(&self, consumer: &str, on: bool) -> Result<(), StoreError>;
    async fn rebuilding(&self, consumer: &str) -> Result<bool, StoreError>;
    /// A hex digest of `consumer`'s tables and positions (see the contract).
    async fn checksum_of(&self, consumer: &str) -> Result<String, StoreError>;
    /// The digest of the core views: what a core replay must reproduce.
    async fn checksum(&self) -> Result<String, StoreError> {
        self.checksum_of(CORE_VIEWS).await
    }

    /// Whether this handle can still apply batches: `Err(reason)` once it
    /// never will again without being reopened (a restart), e.g. the
    /// embedded store refuses every write after one failed (it poisons
    /// itself on a failed journal write such as a full disk). A store that
    /// is only unreachable for now is not reported. Once `Err`, it stays
    /// `Err`. Cheap and non-blocking: callers ask it often. Provided as
    /// `Ok(())` for adapters that cannot fail so.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// The memory this handle holds in the process, by part, with each
    /// part's bound (see [`Log::memory`]).
    fn memory(&self) -> Vec<MemoryUse> {
        Vec::new()
    }
}

/// What the fold decided about one appended command, as seen by the node that
/// appended it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    pub topic: Topic,
    pub position: LogPosition,
    pub outcome: crate::fold::Outcome,
}

/// A pending wait for a [`Decision`]; `None` if the feed closed first.
pub type DecisionTicket = std::pin::Pin<Box<dyn std::future::Future<Output = Option<Decision>> + Send>>;

/// How ingest learns what the fold decided about its command.
///
/// Contract:
/// - `expect(request_id)` is called *before* the command is appended; the
///   returned ticket resolves once a projector has folded the record carrying
///   that `request_id` **and** committed the resulting views (so the caller's
///   next read sees them).
/// - `publish` is called by projectors for every folded record; decisions no one
///   expects are dropped. Dropping a ticket cancels the wait.
/// - Request ids are random 64-bit values; a collision can only confuse the two
///   colliding requests, never the views.
///
/// It also carries the projector's *applied watermark* per partition, which
/// readers of the log (fan-out nodes, the activity consumer) wait on before
/// looking up what the fold decided about a record they read.
pub trait Decisions: Send + Sync + 'static {
    fn expect(&self, request_id: i64) -> DecisionTicket;
    fn publish(&self, request_id: i64, decision: Decision);

    /// Reported by a projector: the core views include every record of the
    /// partition before `next_offset`. Watermarks only move forward.
    fn applied(&self, topic: Topic, partition: u32, next_offset: u64);

    /// Waits until the core views include the record at `offset` of the
    /// partition, whichever process's projector applied it: resolves with
    /// the partition's applied next offset once it exceeds `offset`, or,
    /// after about `timeout`, with the furthest one seen (then `<= offset`).
    /// Dropping the ticket cancels the wait.
    ///
    /// Two sources answer it. The watermarks projectors report to this
    /// adapter (`applied`: in this process, and through Redis from a
    /// projector elsewhere) answer as soon as they pass `offset`. An adapter
    /// opened over the view store the caller reads also reads the store's
    /// [`ViewStore::position`] of [`CORE_VIEWS`], which sees a projector in
    /// any process and is readable exactly when the batch's entities are (on
    /// Scylla, its `materialized` watermark): every second while reports
    /// keep it waiting (a report lost on the way, a projector reporting
    /// elsewhere), and every 10 ms, starting at once, while no projector has
    /// reported anything to it (none reports to it: the stored position is
    /// the only source). A failed read is logged and the wait goes on.
    /// Either way, once it resolves past `offset`, a read of the views sees
    /// every entity the fold wrote for records up to `offset`.
    fn wait_applied(&self, topic: Topic, partition: u32, offset: u64, timeout: Duration) -> AppliedTicket;

    /// Reported by a projector once a batch of a partition is applied,
    /// before its watermark (`applied`): the records of `[from, next)` that
    /// took effect ([`took_effect`](crate::fold::took_effect)), by offset,
    /// ascending. An adapter may keep the latest reports to answer
    /// [`Decisions::took_effect`]; the default keeps nothing.
    fn folded(&self, _topic: Topic, _partition: u32, _from: u64, _next: u64, _effective: &[u64]) {}

    /// For each of `offsets` (of one partition, ascending), whether the
    /// record there took effect in the fold — if this adapter holds a
    /// projector's report (`folded`) covering every one of them: one in this
    /// process, recently. Otherwise `None`, and the caller asks the views.
    ///
    /// Readers of the log that would look up an entity only to learn what
    /// the fold decided about a record (the fan-out, the dashboards) ask
    /// here first. The answer is the views' answer, whenever asked, for the
    /// records whose effect is a write-once entity at their own position: a
    /// `MessagePosted` took effect iff its `Message` (and idempotency key)
    /// is stored, an `EmotionRecorded` of the message as posted (no
    /// `edit_id`) iff its `Emotion` is. For other records it tells what the
    /// fold decided at the time, which later records may have undone.
    fn took_effect(&self, _topic: Topic, _partition: u32, _offsets: &[u64]) -> Option<Vec<bool>> {
        None
    }
}

/// A pending wait for an applied watermark.
pub type AppliedTicket = std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    /// The model could not be reached or answered with an error; retrying
    /// later (or another classifier) may succeed.
    #[error("classifier unavailable: {0}")]
    Unavailable(String),
    /// The model answered, but not with something that can be read as
    /// classifications of the given texts.
    #[error("classifier answered unreadably: {0}")]
    Malformed(String),
}

/// Classifies the emotion of texts.
///
/// Contract:
/// - `classify(texts)` returns exactly one [`crate::emotion::Classification`]
///   per text, in the same order, or an error for the whole batch.
/// - Scores are in [0, 1] and sum to 1 per text; `label` is the top score.
/// - An adapter may batch texts into one model request; callers may pass any
///   number of texts and must not assume a request per text.
/// - An offline adapter is deterministic: the same text always gets the same
///   classification. Model adapters need not be, which is why the analyzer
///   appends classifications to the log instead of recomputing them.
#[async_trait]
pub trait Classifier: Send + Sync + 'static {
    /// The model name recorded with each classification.
    fn model(&self) -> &str;
    async fn classify(&self, texts: &[&str]) -> Result<Vec<crate::emotion::Classification>, ClassifyError>;
}

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("presence store error: {0}")]
    Storage(String),
}

/// One live WebSocket connection: the fan-out node holding it, its id there,
/// and the login session (`sid`) it was opened with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnRef {
    pub node: String,
    pub conn: u64,
    pub session: String,
}

/// Why a connection is ended from outside its own loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KickReason {
    /// A newer connection of the user replaced it (the session policy).
    DuplicateSession,
    /// Its session was logged out.
    Logout,
    /// Its account was deleted.
    AccountDeleted,
    /// Its access token expired and was not renewed in-band.
    TokenExpired,
    /// Its session was revoked (a refresh token was used twice).
    Revoked,
}

impl KickReason {
    pub const ALL: [KickReason; 5] = [
        KickReason::DuplicateSession,
        KickReason::Logout,
        KickReason::AccountDeleted,
        KickReason::TokenExpired,
        KickReason::Revoked,
    ];

    /// The reason as the contract names it (`kicked` / `session_ended` frames).
    pub fn as_str(self) -> &'static str {
        match self {
            KickReason::DuplicateSession => "duplicate_session",
            KickReason::Logout => "logout",
            KickReason::AccountDeleted => "account_deleted",
            KickReason::TokenExpired => "token_expired",
            KickReason::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<KickReason> {
        KickReason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Delivers kick orders (connection id, reason) to the connections of one node.
pub type KickSink = std::sync::Arc<dyn Fn(u64, KickReason) + Send + Sync>;

/// Who is connected where, shared by every fan-out node: the session policy
/// across nodes and presence. Ephemeral by nature — it
/// describes live connections, not the log — so losing it loses nothing:
/// live connections re-register on their next refresh.
///
/// Contract (the generic presence test body checks each point):
/// - `register` adds `conn` as the user's newest connection and returns the
///   user's older connections beyond the `max` newest, oldest first, on any
///   node; they are no longer registered. Concurrent registrations of one
///   user are serialised: every connection is evicted by exactly one call.
/// - A registration lives `ttl` unless `refresh`ed; `refresh` returns
///   `false` if the connection is no longer registered (evicted or expired),
///   which tells its node to close it.
/// - `kick` reaches the [`KickSink`] that `on_kicks` installed for the
///   connection's node, with its reason, at most once, promptly while both
///   are up.
/// - `online` tells, per user, whether any registration is live;
///   `connections` lists a user's live registrations (any node), which is
///   how a session is ended everywhere: kick each of its connections, then
///   wait until none is listed (a node unregisters a connection once it has
///   ended it).
///
/// Room presence (who has a room open now, distinct from who is a member):
/// - `enter_room` records a connection's entry in a room for `ttl` (kept by
///   `refresh_rooms`); it answers `true` only when the user had no live
///   entry there and no departure pending — a second tab, or a reconnect
///   within the grace period, is not an arrival.
/// - `exit_room` removes the entry and answers `true` when it was the
///   user's last: the departure is then pending until `settle_departure`,
///   which answers `true` once (to one caller, on any node) if no entry of
///   the user came back meanwhile; an `enter_room` meanwhile cancels it.
/// - Entries whose node stopped refreshing them expire; `sweep_room`
///   removes them and returns each user so left with nothing, once.
/// - `here` lists the distinct users with a live entry.
/// - `signal` reaches the [`SignalSink`] of every node, promptly and at
///   most once while both are up (typing notices and presence changes are
///   best effort by nature: a client resyncs with `GET …/presence`).
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    async fn register(
        &self,
        user_id: &str,
        conn: &ConnRef,
        max: usize,
        ttl: Duration,
    ) -> Result<Vec<ConnRef>, PresenceError>;
    async fn refresh(&self, user_id: &str, conn: &ConnRef, ttl: Duration) -> Result<bool, PresenceError>;
    async fn unregister(&self, user_id: &str, conn: &ConnRef) -> Result<(), PresenceError>;
    async fn online(&self, user_ids: &[String]) -> Result<Vec<bool>, PresenceError>;
    /// How many users have a live connection now, on any node (the admin
    /// console's "online now"); a connection whose node died stops counting
    /// when its liveness expires, as for [`Presence::online`].
    async fn online_count(&self) -> Result<u64, PresenceError>;
    async fn connections(&self, user_id: &str) -> Result<Vec<ConnRef>, PresenceError>;
    async fn kick(&self, conn: &ConnRef, reason: KickReason) -> Result<(), PresenceError>;
    /// Installs the sink for kick orders addressed to `node` (one per node).
    async fn on_kicks(&self, node: &str, sink: KickSink) -> Result<(), PresenceError>;

    // --- Room presence: who has a room open right now (see the contract above). ---

    /// `conn` (of `user_id`) has `room_id` open, for `ttl` unless refreshed.
    /// `true` when the user was not there: no other live entry and no
    /// departure pending (the caller announces the arrival).
    async fn enter_room(
        &self,
        room_id: &str,
        user_id: &str,
        conn: &ConnRef,
        ttl: Duration,
    ) -> Result<bool, PresenceError>;
    /// Keeps `conn`'s entries in `rooms` alive for `ttl` more.
    async fn refresh_rooms(
        &self,
        conn: &ConnRef,
        user_id: &str,
        rooms: &[String],
        ttl: Duration,
    ) -> Result<(), PresenceError>;
    /// `conn` no longer has `room_id` open. `true` when the user has no other
    /// live entry there: their departure is now pending, and the caller
    /// settles it after the grace period.
    async fn exit_room(&self, room_id: &str, user_id: &str, conn: &ConnRef) -> Result<bool, PresenceError>;
    /// At the end of a grace period: `true` to exactly one caller when the
    /// user's departure is still pending (they did not come back): the
    /// caller announces it.
    async fn settle_departure(&self, room_id: &str, user_id: &str) -> Result<bool, PresenceError>;
    /// Removes entries that expired (their node stopped refreshing them) and
    /// returns, once each, the users left with no live entry in the room.
    async fn sweep_room(&self, room_id: &str) -> Result<Vec<String>, PresenceError>;
    /// The distinct users with a live entry in the room, sorted.
    async fn here(&self, room_id: &str) -> Result<Vec<String>, PresenceError>;
    /// Relays `signal` to the sink of every node (the sender's included).
    async fn signal(&self, signal: &RoomSignal) -> Result<(), PresenceError>;
    /// Installs this node's sink for room signals (one per node).
    async fn on_signals(&self, node: &str, sink: SignalSink) -> Result<(), PresenceError>;
}

/// An ephemeral notice about a room, relayed to every fan-out node so that
/// each delivers it to its own subscribers of the room. Never logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSignal {
    pub room_id: String,
    pub user_id: String,
    pub kind: SignalKind,
    /// The connection it came from (a typing notice is not echoed to it).
    pub origin: Option<ConnRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalKind {
    /// The user is typing in the room.
    Typing,
    /// The user opened the room; `online` users have it open now.
    Arrived { online: u32 },
    /// The user closed the room (and did not come back within the grace
    /// period); `online` users have it open now.
    Left { online: u32 },
    /// A notice for the signal's user (on every connection they have,
    /// subscribed or not), from `from_id` (`from_name`), about the pair
    /// whose room is the signal's room.
    Notice {
        what: NoticeKind,
        from_id: String,
        from_name: String,
    },
}

/// What a user notice says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// `from` asked to be friends.
    FriendRequest,
    /// `from` accepted (or both asked): now friends.
    FriendAccepted,
}

impl NoticeKind {
    pub const ALL: [NoticeKind; 2] = [NoticeKind::FriendRequest, NoticeKind::FriendAccepted];

    /// As the `notification` frame names it.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::FriendRequest => "friend_request",
            NoticeKind::FriendAccepted => "friend_accepted",
        }
    }
}

impl RoomSignal {
    /// One line: `KIND ONLINE ROOM USER [CONN SESSION NODE]`, or for a
    /// notice `notice:WHAT ROOM USER FROM_ID FROM_NAME` (ids and usernames
    /// hold no spaces; a node name may, and comes last).
    pub fn encode(&self) -> String {
        let (kind, online) = match &self.kind {
            SignalKind::Typing => ("typing", 0),
            SignalKind::Arrived { online } => ("arrived", *online),
            SignalKind::Left { online } => ("left", *online),
            SignalKind::Notice {
                what,
                from_id,
                from_name,
            } => {
                return format!(
                    "notice:{} {} {} {from_id} {from_name}",
                    what.as_str(),
                    self.room_id,
                    self.user_id
                );
            }
        };
        let mut s = format!("{kind} {online} {} {}", self.room_id, self.user_id);
        if let Some(o) = &self.origin {
            s.push_str(&format!(" {} {} {}", o.conn, o.session, o.node));
        }
        s
    }

    pub fn decode(line: &str) -> Option<RoomSignal> {
        if let Some(rest) = line.strip_prefix("notice:") {
            let mut f = rest.split(' ');
            let what = f.next()?;
            let what = NoticeKind::ALL.into_iter().find(|k| k.as_str() == what)?;
            let (room_id, user_id, from_id, from_name) = (f.next()?, f.next()?, f.next()?, f.next()?);
            if f.next().is_some() || [room_id, user_id, from_id, from_name].iter().any(|s| s.is_empty()) {
                return None;
            }
            return Some(RoomSignal {
                room_id: room_id.to_owned(),
                user_id: user_id.to_owned(),
                kind: SignalKind::Notice {
                    what,
                    from_id: from_id.to_owned(),
                    from_name: from_name.to_owned(),
                },
                origin: None,
            });
        }
        let mut f = line.splitn(7, ' ');
        let kind = f.next()?;
        let online: u32 = f.next()?.parse().ok()?;
        let kind = match kind {
            "typing" => SignalKind::Typing,
            "arrived" => SignalKind::Arrived { online },
            "left" => SignalKind::Left { online },
            _ => return None,
        };
        let (room_id, user_id) = (f.next()?.to_owned(), f.next()?.to_owned());
        let origin = match (f.next(), f.next(), f.next()) {
            (Some(conn), Some(session), Some(node)) => Some(ConnRef {
                node: node.to_owned(),
                conn: conn.parse().ok()?,
                session: session.to_owned(),
            }),
            (None, _, _) => None,
            _ => return None,
        };
        Some(RoomSignal {
            room_id,
            user_id,
            kind,
            origin,
        })
    }
}

/// Delivers room signals to one node.
pub type SignalSink = std::sync::Arc<dyn Fn(RoomSignal) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    /// The bucket store could not be asked (unreachable, or it failed); a
    /// token may or may not have been taken.
    #[error("rate-limit store error: {0}")]
    Storage(String),
}

/// Token buckets that bound how often one actor may act (a user's messages),
/// shared by every caller of the same store, so a limit holds across nodes.
///
/// Contract (the generic rate-limiter test body checks each point):
/// - `take(bucket, rate, burst)` takes one token from the bucket named
///   `bucket` and answers `true`, or answers `false` when it holds less than
///   one token. A bucket refills continuously at `rate` tokens per second
///   (fractions too: `1.0 / 60.0` is one a minute) up
///   to `burst` tokens (at least 1); a bucket not seen before starts full, so
///   a caller gets `burst` tokens at once and `rate` per second after that.
/// - `rate <= 0` means no limit: `take` answers `true`.
/// - Every `take` on a bucket name, through any handle on the same store,
///   draws from the same bucket; distinct names never affect one another.
/// - Buckets are ephemeral: a bucket that has refilled may be forgotten (it
///   is indistinguishable from a new one), and losing the store loses only
///   the limits' recent memory.
/// - An `Err` means the store could not be asked. The caller decides what
///   that means; ingest lets the action through, since a limit is
///   protection, not a reason to refuse chat.
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    async fn take(&self, bucket: &str, rate: f64, burst: u32) -> Result<bool, RateLimitError>;
}

/// A stream of bytes (an upload's body, a blob being read).
pub type ByteStream = std::pin::Pin<Box<dyn futures_core::Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The body went past the caller's limit; nothing was kept.
    #[error("the file is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("no such blob")]
    NotFound,
    /// The range asked for is not within the blob.
    #[error("range not satisfiable (the blob has {size} bytes)")]
    BadRange { size: u64 },
    /// The body's own stream failed (the client went away); nothing was kept.
    #[error("the upload broke off: {0}")]
    Body(String),
    /// The store could not be asked, or failed.
    #[error("blob store error: {0}")]
    Storage(String),
}

/// A blob as [`BlobStore::put`] stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlob {
    /// Where it can be read: opaque, ASCII `[A-Za-z0-9/_.-]`, at most 200 bytes.
    pub key: String,
    pub size: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
}

/// Files (attachments) kept outside the log: the log carries their
/// metadata and keys, the blob store their bytes.
///
/// Contract (the generic blob-store test body checks each point):
/// - `put(body, max)` reads `body` to its end and stores it **durably**
///   before answering `Ok` (a crash after `Ok` keeps it); it never holds
///   the whole body in memory (it streams, in bounded chunks). A body of
///   more than `max` bytes is refused with `TooLarge` as soon as it passes
///   `max`, and a body whose stream fails with `Body`: in both cases nothing
///   is readable afterwards under any key, and no temporary data is left
///   behind for longer than the call.
/// - The returned key reads back exactly the bytes stored, through any
///   handle on the same store; `size` and `sha256` describe them. Two puts
///   of the same content may or may not share a key.
/// - `get(key, range)` streams the blob, or `range` (`start..end`, end
///   exclusive) of it, with the blob's total size; `start >= end` or
///   `end > size` is `BadRange`; an unknown key is `NotFound`.
/// - `size(key)` is `Some(size)` for a stored blob, `None` otherwise.
/// - `delete(key)` removes it; deleting what is not there is `Ok`.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    async fn put(&self, body: ByteStream, max: u64) -> Result<StoredBlob, BlobError>;
    async fn get(&self, key: &str, range: Option<std::ops::Range<u64>>) -> Result<(ByteStream, u64), BlobError>;
    async fn size(&self, key: &str) -> Result<Option<u64>, BlobError>;
    async fn delete(&self, key: &str) -> Result<(), BlobError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> impl Strategy<Value = String> {
        "[0-9a-f]{1,16}"
    }

    fn signal() -> impl Strategy<Value = RoomSignal> {
        let kind = prop_oneof![
            Just(SignalKind::Typing),
            any::<u32>().prop_map(|online| SignalKind::Arrived { online }),
            any::<u32>().prop_map(|online| SignalKind::Left { online }),
            (0..2usize, id(), "[a-z0-9_]{3,32}").prop_map(|(k, from_id, from_name)| SignalKind::Notice {
                what: NoticeKind::ALL[k],
                from_id,
                from_name,
            }),
        ];
        // Node names may hold anything but a newline; they go last.
        let origin = proptest::option::of(
            (any::<u64>(), id(), "[^\n]{1,40}").prop_map(|(conn, session, node)| ConnRef { node, conn, session }),
        );
        (id(), id(), kind, origin).prop_map(|(room_id, user_id, kind, origin)| RoomSignal {
            room_id,
            user_id,
            // A notice has no origin connection.
            origin: if matches!(kind, SignalKind::Notice { .. }) {
                None
            } else {
                origin
            },
            kind,
        })
    }

    proptest! {
        /// A room signal reads back as it was sent, whatever its node is called.
        #[test]
        fn room_signals_round_trip(s in signal()) {
            prop_assert_eq!(RoomSignal::decode(&s.encode()), Some(s));
        }

        /// Any line a node reads decodes or is refused; it never panics.
        #[test]
        fn any_line_decodes_or_is_refused(line in "\\PC{0,80}") {
            let _ = RoomSignal::decode(&line);
        }
    }
}
