//! [`ScyllaViewStore`]: the view store on ScyllaDB (the `scylla` 1.x driver).
//!
//! Same entities, same postcard values and same checksum as
//! [`crate::EmbeddedViewStore`]; the tables are modelled on the queries (see
//! docs/architecture.md, "The Scylla data model").
//!
//! # Writes
//! Every entity write carries `USING TIMESTAMP` = the consumer generation's
//! base + the next offset of the log position its batch advances to
//! ([`rows::Generation`]). Each entity is written only by records of one log
//! partition, in offset order, so a later batch always wins over an earlier
//! one, whatever order the cluster sees the writes in, and re-applying a batch
//! writes the same cells with the same timestamps: it converges instead of
//! duplicating. Deletions are `DELETE … USING TIMESTAMP` by the same rule.
//! `clear` moves the consumer to a generation whose base is above every
//! earlier write and above the time of its TRUNCATE, so a rebuild never
//! depends on how TRUNCATE removes data.
//!
//! Scylla has no multi-partition transactions, so `apply` is a small redo log:
//! 1. the batch's redo record (its changes, as written) goes to `redo`, in
//!    chunks, under a fresh attempt id;
//! 2. the positions are committed in one single-partition compare-and-set
//!    (LWT) on `positions` (atomic and isolated in Scylla), the first one
//!    naming the redo record; each moves only from where this store last saw
//!    it, which fences a second writer of the consumer;
//! 3. the entities are written (up to [`IN_FLIGHT`] at once);
//! 4. the positions' `materialized` watermark is set: the batch's entities
//!    are all written;
//! 5. redo records of earlier batches are dropped.
//!
//! A crash before 2 leaves the views and positions as they were (nothing but
//! an unreferenced redo record was written): the projector folds the records
//! again from the old position against the old state. A crash after 2
//! leaves the position advanced and the entities possibly half-written; before
//! a consumer's positions are read ([`ViewStore::position`]) or advanced, the
//! store re-writes each committed redo record whose watermark lags ("settles"
//! the consumer), which is idempotent by the timestamp rule. It settles once
//! per process, and again after any `apply` that failed or was cancelled
//! past its first write (a write timeout after the redo record would
//! otherwise leave the position ahead of the entities for good). This is why the fold is *not* re-run
//! for a half-applied batch: folding again against half-written state would
//! not give the same changes (a join then quit in one batch would re-join).
//! A plain LOGGED batch would give eventual atomicity too, but caps batch size
//! (Scylla fails batches over 1 MB by default; a projector batch can be tens of
//! MB) and still lets a reader see the new position before the entities.
//!
//! Other readers (the query API) may see a batch half-written for the few
//! milliseconds step 3 takes: Scylla isolates writes only within a partition.
//! [`ViewStore::position`] answers the watermark, not the commit, so a
//! process that waits for a position (the activity consumer, a fan-out node)
//! finds every entity of the batches before it.
//!
//! # Consistency
//! Reads and writes use LOCAL_QUORUM: a write acknowledged by a quorum of the
//! local datacenter's replicas is seen by every later quorum read there
//! (read-your-writes for the projector's decisions), and a datacenter loss does
//! not block the other. Which datacenter is local is the `local_dc` option of
//! the URL; without it (one datacenter) the driver treats every node as local.
//!
//! # Layout
//! - [`config`]: the `scylla://` URL ([`ScyllaConfig`]).
//! - `schema`: keyspace, tables, numbered migrations.
//! - `rows`: pure helpers (buckets, timestamps, redo records, digest).
//! - `tls`: the rustls client configuration for `tls`/`tls_ca`.

pub mod config;
mod rows;
mod schema;
mod tls;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use emosation_core::bulk::BulkRows;
use emosation_core::ids::{Topic, is_id};
use emosation_core::ports::{CORE_VIEWS, StoreError, ViewBatch, ViewQueries, ViewStore};
use emosation_core::view::{
    ActivityView, EmotionView, MemberView, MessageView, RoomView, TABLES, ViewKey, ViewValue, table_owner,
};
use futures_util::stream::{FuturesOrdered, FuturesUnordered};
use futures_util::{StreamExt, TryStreamExt};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::serialize::row::SerializeRow;
use scylla::statement::Consistency;
use scylla::statement::SerialConsistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::unprepared::Statement;
use scylla::value::{CqlValue, Row};
use tracing::{debug, info};

pub use config::{BadScyllaUrl, Credentials, Replication, ScyllaConfig, TlsOptions};
use rows::{
    Change, Expect, Generation, bucket_of, digested_generation, expectation, position_timestamp, readable_position,
    room_shard,
};

use crate::consumer_partition_key;
use crate::embedded::views::rebuilding_key;

/// Writes in flight at once when materializing a batch or bulk-loading.
pub const IN_FLIGHT: usize = 256;
/// Memory the checksum sorts a table in before it spills sorted runs to
/// temporary files (see `rows::StreamingDigest`).
const CHECKSUM_MEMORY: usize = 256 << 20;
/// History buckets read at once after the first (see `newest`).
const BUCKETS_IN_FLIGHT: usize = 8;
/// Point reads in flight at once in `load` and member lookups.
const READS_IN_FLIGHT: usize = 64;
/// `room_buckets.kind` of message and emotion buckets.
const MESSAGES: &str = "m";
const EMOTIONS: &str = "e";
/// The `rooms_by_id` partition of the index written before it was sharded.
const LEGACY_ROOMS_SHARD: i32 = 0;
/// The one partition of `room_shards`.
const ROOM_SHARDS: i32 = 0;
/// How long a TRUNCATE may take.
const TRUNCATE_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on the process-local caches of index rows already written.
const CACHE_LIMIT: usize = 1 << 20;

/// `positions` as read: topic, partition, next offset, the redo record's
/// attempt, chunk count and write timestamp, and the materialized watermark.
type PositionRow = (String, i32, i64, Option<i64>, Option<i32>, Option<i64>, Option<i64>);

pub(crate) fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(e.to_string())
}

/// Microseconds since the epoch, strictly increasing within the process: the
/// timestamp of writes not tied to a log position (the consumer's generation
/// and rebuilding mark), so that this process's successive writes keep
/// their order whichever coordinator takes them.
pub(crate) fn now_micros() -> i64 {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = wall.max(prev + 1);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

/// Runs `$fut` for each `$x` of `$iter`, at most `$n` at once, and collects
/// the results in order; the first error returns from the calling function.
/// A loop rather than `stream::iter(…map(closure)).buffered(n)`: futures
/// holding such closures trip the `Send` check of `async_trait` methods.
macro_rules! in_order {
    ($iter:expr, $n:expr, |$x:pat_param| $fut:expr) => {{
        let mut out = Vec::new();
        let mut pending = FuturesOrdered::new();
        for $x in $iter {
            if pending.len() >= $n {
                if let Some(r) = pending.next().await {
                    out.push(r?);
                }
            }
            pending.push_back($fut);
        }
        while let Some(r) = pending.next().await {
            out.push(r?);
        }
        out
    }};
}

/// Like [`in_order!`] for futures whose results are `()`, in any order.
macro_rules! all_done {
    ($iter:expr, $n:expr, |$x:pat_param| $fut:expr) => {{
        let mut pending = FuturesUnordered::new();
        for $x in $iter {
            if pending.len() >= $n {
                if let Some(r) = pending.next().await {
                    r?;
                }
            }
            pending.push($fut);
        }
        while let Some(r) = pending.next().await {
            r?;
        }
    }};
}

macro_rules! statements {
    ($($name:ident = $cql:expr;)*) => {
        /// Every statement the store runs, prepared once at connect. `{ks}`
        /// stands for the keyspace.
        struct Statements {
            $($name: PreparedStatement,)*
        }

        impl Statements {
            async fn prepare(session: &Session, ks: &str) -> Result<Statements, StoreError> {
                Ok(Statements {
                    $($name: prepare(session, ks, $cql).await?,)*
                })
            }
        }
    };
}

statements! {
    // Point reads.
    get_user = "SELECT entity FROM {ks}.users WHERE user_id = ?";
    get_username = "SELECT entity FROM {ks}.usernames WHERE username = ?";
    get_room = "SELECT entity FROM {ks}.rooms WHERE room_id = ?";
    get_member = "SELECT entity FROM {ks}.members WHERE room_id = ? AND user_id = ?";
    get_message = "SELECT entity FROM {ks}.messages WHERE room_id = ? AND bucket = ? AND message_id = ?";
    get_client_msg = "SELECT entity FROM {ks}.client_msgs WHERE room_id = ? AND user_id = ? AND client_msg_id = ?";
    get_session = "SELECT entity FROM {ks}.sessions WHERE username = ? AND session_id = ?";
    get_room_event = "SELECT entity FROM {ks}.room_events WHERE room_id = ? AND position = ?";
    get_emotion = "SELECT entity FROM {ks}.emotions WHERE room_id = ? AND bucket = ? AND message_id = ?";
    get_activity = "SELECT entity FROM {ks}.activity WHERE room_id = ? AND hour = ?";
    get_message_edit = "SELECT entity FROM {ks}.message_edits WHERE room_id = ? AND message_id = ?";
    get_attachment = "SELECT entity FROM {ks}.attachments WHERE room_id = ? AND attachment_id = ?";
    get_friend = "SELECT entity FROM {ks}.friends WHERE user_id = ? AND other_id = ?";

    // Entity writes and deletions, timestamped by log position.
    put_user = "INSERT INTO {ks}.users (user_id, entity) VALUES (?, ?) USING TIMESTAMP ?";
    del_user = "DELETE FROM {ks}.users USING TIMESTAMP ? WHERE user_id = ?";
    put_username = "INSERT INTO {ks}.usernames (username, entity) VALUES (?, ?) USING TIMESTAMP ?";
    del_username = "DELETE FROM {ks}.usernames USING TIMESTAMP ? WHERE username = ?";
    put_room = "INSERT INTO {ks}.rooms (room_id, entity) VALUES (?, ?) USING TIMESTAMP ?";
    del_room = "DELETE FROM {ks}.rooms USING TIMESTAMP ? WHERE room_id = ?";
    put_member = "INSERT INTO {ks}.members (room_id, user_id, entity) VALUES (?, ?, ?) USING TIMESTAMP ?";
    del_member = "DELETE FROM {ks}.members USING TIMESTAMP ? WHERE room_id = ? AND user_id = ?";
    put_message = "INSERT INTO {ks}.messages (room_id, bucket, message_id, entity) VALUES (?, ?, ?, ?) USING TIMESTAMP ?";
    del_message = "DELETE FROM {ks}.messages USING TIMESTAMP ? WHERE room_id = ? AND bucket = ? AND message_id = ?";
    put_client_msg = "INSERT INTO {ks}.client_msgs (room_id, user_id, client_msg_id, entity) VALUES (?, ?, ?, ?) USING TIMESTAMP ?";
    del_client_msg = "DELETE FROM {ks}.client_msgs USING TIMESTAMP ? WHERE room_id = ? AND user_id = ? AND client_msg_id = ?";
    put_session = "INSERT INTO {ks}.sessions (username, session_id, entity) VALUES (?, ?, ?) USING TIMESTAMP ?";
    del_session = "DELETE FROM {ks}.sessions USING TIMESTAMP ? WHERE username = ? AND session_id = ?";
    put_room_event = "INSERT INTO {ks}.room_events (room_id, position, entity) VALUES (?, ?, ?) USING TIMESTAMP ?";
    del_room_event = "DELETE FROM {ks}.room_events USING TIMESTAMP ? WHERE room_id = ? AND position = ?";
    put_emotion = "INSERT INTO {ks}.emotions (room_id, bucket, message_id, entity) VALUES (?, ?, ?, ?) USING TIMESTAMP ?";
    del_emotion = "DELETE FROM {ks}.emotions USING TIMESTAMP ? WHERE room_id = ? AND bucket = ? AND message_id = ?";
    put_activity = "INSERT INTO {ks}.activity (room_id, hour, entity) VALUES (?, ?, ?) USING TIMESTAMP ?";
    del_activity = "DELETE FROM {ks}.activity USING TIMESTAMP ? WHERE room_id = ? AND hour = ?";
    get_admin = "SELECT entity FROM {ks}.admin WHERE scope = ? AND bucket = ?";
    put_admin = "INSERT INTO {ks}.admin (scope, bucket, entity) VALUES (?, ?, ?) USING TIMESTAMP ?";
    del_admin = "DELETE FROM {ks}.admin USING TIMESTAMP ? WHERE scope = ? AND bucket = ?";
    put_message_edit = "INSERT INTO {ks}.message_edits (room_id, message_id, entity) VALUES (?, ?, ?) USING TIMESTAMP ?";
    del_message_edit = "DELETE FROM {ks}.message_edits USING TIMESTAMP ? WHERE room_id = ? AND message_id = ?";
    put_attachment = "INSERT INTO {ks}.attachments (room_id, attachment_id, entity) VALUES (?, ?, ?) USING TIMESTAMP ?";
    del_attachment = "DELETE FROM {ks}.attachments USING TIMESTAMP ? WHERE room_id = ? AND attachment_id = ?";
    put_friend = "INSERT INTO {ks}.friends (user_id, other_id, entity) VALUES (?, ?, ?) USING TIMESTAMP ?";
    del_friend = "DELETE FROM {ks}.friends USING TIMESTAMP ? WHERE user_id = ? AND other_id = ?";

    // Index rows, timestamped like the entity they index.
    put_room_index = "INSERT INTO {ks}.rooms_by_id (shard, room_id) VALUES (?, ?) USING TIMESTAMP ?";
    del_room_index = "DELETE FROM {ks}.rooms_by_id USING TIMESTAMP ? WHERE shard = ? AND room_id = ?";
    put_user_room = "INSERT INTO {ks}.user_rooms (user_id, room_id) VALUES (?, ?) USING TIMESTAMP ?";
    del_user_room = "DELETE FROM {ks}.user_rooms USING TIMESTAMP ? WHERE user_id = ? AND room_id = ?";
    put_bucket = "INSERT INTO {ks}.room_buckets (room_id, kind, bucket) VALUES (?, ?, ?) USING TIMESTAMP ?";

    // Queries.
    put_room_shard = "INSERT INTO {ks}.room_shards (k, shard) VALUES (?, ?) USING TIMESTAMP ?";
    room_shards_from = "SELECT shard FROM {ks}.room_shards WHERE k = ? AND shard >= ?";
    rooms_first = "SELECT room_id FROM {ks}.rooms_by_id WHERE shard = ? LIMIT ?";
    rooms_after = "SELECT room_id FROM {ks}.rooms_by_id WHERE shard = ? AND room_id > ? LIMIT ?";
    members_first = "SELECT entity FROM {ks}.members WHERE room_id = ? LIMIT ?";
    members_after = "SELECT entity FROM {ks}.members WHERE room_id = ? AND user_id > ? LIMIT ?";
    friends_first = "SELECT entity FROM {ks}.friends WHERE user_id = ? LIMIT ?";
    friends_after = "SELECT entity FROM {ks}.friends WHERE user_id = ? AND other_id > ? LIMIT ?";
    rooms_of_first = "SELECT room_id FROM {ks}.user_rooms WHERE user_id = ? LIMIT ?";
    rooms_of_after = "SELECT room_id FROM {ks}.user_rooms WHERE user_id = ? AND room_id > ? LIMIT ?";
    buckets_down = "SELECT bucket FROM {ks}.room_buckets WHERE room_id = ? AND kind = ? AND bucket <= ?";
    messages_page = "SELECT entity FROM {ks}.messages WHERE room_id = ? AND bucket = ? LIMIT ?";
    messages_before = "SELECT entity FROM {ks}.messages WHERE room_id = ? AND bucket = ? AND message_id < ? LIMIT ?";
    emotions_page = "SELECT entity FROM {ks}.emotions WHERE room_id = ? AND bucket = ? LIMIT ?";
    activity_range = "SELECT entity FROM {ks}.activity WHERE room_id = ? AND hour >= ? AND hour < ?";

    // Consumers, positions, redo records.
    get_consumer = "SELECT generation, rebuilding, base_ts FROM {ks}.consumers WHERE consumer = ?";
    set_generation = "UPDATE {ks}.consumers USING TIMESTAMP ? SET generation = ?, base_ts = ? WHERE consumer = ?";
    set_rebuilding = "UPDATE {ks}.consumers USING TIMESTAMP ? SET rebuilding = ? WHERE consumer = ?";
    get_position = "SELECT next_offset, materialized FROM {ks}.positions WHERE consumer = ? AND generation = ? AND topic = ? AND part = ?";
    get_positions = "SELECT topic, part, next_offset, redo_attempt, redo_chunks, redo_ts, materialized FROM {ks}.positions \
                     WHERE consumer = ? AND generation = ?";
    set_materialized = "UPDATE {ks}.positions USING TIMESTAMP ? SET materialized = ? WHERE consumer = ? AND generation = ? \
                        AND topic = ? AND part = ?";
    // Compare-and-set (LWT) commits: no USING TIMESTAMP (Paxos picks it).
    cas_insert_position = "INSERT INTO {ks}.positions (consumer, generation, topic, part, next_offset, redo_attempt, \
                           redo_chunks, redo_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS";
    cas_update_position = "UPDATE {ks}.positions SET next_offset = ?, redo_attempt = ?, redo_chunks = ?, redo_ts = ? \
                           WHERE consumer = ? AND generation = ? AND topic = ? AND part = ? IF next_offset = ?";
    del_generation = "DELETE FROM {ks}.positions WHERE consumer = ? AND generation = ?";
    put_redo = "INSERT INTO {ks}.redo (consumer, generation, topic, part, next_offset, attempt, chunk, data) \
                VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?";
    get_redo = "SELECT chunk, data FROM {ks}.redo WHERE consumer = ? AND generation = ? AND topic = ? AND part = ? AND next_offset = ? \
               AND attempt = ?";
    del_redo_before = "DELETE FROM {ks}.redo USING TIMESTAMP ? WHERE consumer = ? AND generation = ? AND topic = ? AND part = ? \
                       AND next_offset < ?";
    del_redo = "DELETE FROM {ks}.redo WHERE consumer = ? AND generation = ? AND topic = ? AND part = ?";

    // Full scans, for the checksum only.
    scan_users = "SELECT user_id, entity FROM {ks}.users";
    scan_usernames = "SELECT username, entity FROM {ks}.usernames";
    scan_rooms = "SELECT room_id, entity FROM {ks}.rooms";
    scan_members = "SELECT room_id, user_id, entity FROM {ks}.members";
    scan_messages = "SELECT room_id, message_id, entity FROM {ks}.messages";
    scan_client_msgs = "SELECT room_id, user_id, client_msg_id, entity FROM {ks}.client_msgs";
    scan_sessions = "SELECT username, session_id, entity FROM {ks}.sessions";
    scan_room_events = "SELECT room_id, position, entity FROM {ks}.room_events";
    scan_emotions = "SELECT room_id, message_id, entity FROM {ks}.emotions";
    scan_activity = "SELECT room_id, hour, entity FROM {ks}.activity";
    scan_message_edits = "SELECT room_id, message_id, entity FROM {ks}.message_edits";
    scan_attachments = "SELECT room_id, attachment_id, entity FROM {ks}.attachments";
    scan_friends = "SELECT user_id, other_id, entity FROM {ks}.friends";
    scan_admin = "SELECT scope, bucket, entity FROM {ks}.admin";
    scan_consumers = "SELECT consumer, generation, rebuilding FROM {ks}.consumers";
}

async fn prepare(session: &Session, ks: &str, cql: &str) -> Result<PreparedStatement, StoreError> {
    let cql = cql.replace("{ks}", ks);
    let mut p = session
        .prepare(cql.as_str())
        .await
        .map_err(|e| StoreError::Storage(format!("cannot prepare {cql}: {e}")))?;
    // Every statement is idempotent (writes carry fixed timestamps), so the
    // driver may retry or speculate with any of them.
    p.set_is_idempotent(true);
    Ok(p)
}

/// One write of a materialized batch.
enum Op<'a> {
    Put(&'a ViewKey, &'a [u8]),
    Delete(&'a ViewKey),
    RoomIndex {
        room_id: &'a str,
        on: bool,
    },
    UserRoom {
        user_id: &'a str,
        room_id: &'a str,
        on: bool,
    },
    Bucket {
        room_id: &'a str,
        kind: &'static str,
        bucket: i64,
    },
}

/// The writes of a batch of changes: each entity, plus the index rows that
/// follow from it.
fn plan(changes: &[Change]) -> Vec<Op<'_>> {
    let mut ops = Vec::with_capacity(changes.len() + changes.len() / 2);
    let mut buckets = HashSet::new();
    for (key, value) in changes {
        ops.push(match value {
            Some(v) => Op::Put(key, v),
            None => Op::Delete(key),
        });
        let on = value.is_some();
        match key {
            ViewKey::Room(room_id) => ops.push(Op::RoomIndex { room_id, on }),
            ViewKey::Member { room_id, user_id } => ops.push(Op::UserRoom { user_id, room_id, on }),
            ViewKey::Message { room_id, message_id } | ViewKey::Emotion { room_id, message_id } if on => {
                let kind = if matches!(key, ViewKey::Message { .. }) {
                    MESSAGES
                } else {
                    EMOTIONS
                };
                let bucket = bucket_of(message_id);
                if buckets.insert((room_id, kind, bucket)) {
                    ops.push(Op::Bucket { room_id, kind, bucket });
                }
            }
            _ => {}
        }
    }
    ops
}

/// Index rows this process has written and need not write again (rooms are
/// indexed once, buckets once per room): the room row itself changes with
/// every message, its one-partition index must not.
#[derive(Default)]
struct Written {
    rooms: HashSet<String>,
    room_shards: HashSet<i32>,
    buckets: HashSet<(String, &'static str, i64)>,
}

/// Marks a consumer as needing to be settled again unless disarmed: armed
/// before an `apply`'s first write, disarmed once its entities and watermark
/// are written. Dropped armed (an error returned with `?`, or the `apply`
/// future cancelled), it takes the consumer out of the settled set.
struct Unsettled<'a> {
    settled: &'a Mutex<HashSet<String>>,
    consumer: &'a str,
    armed: bool,
}

impl<'a> Unsettled<'a> {
    fn arm(settled: &'a Mutex<HashSet<String>>, consumer: &'a str) -> Self {
        Unsettled {
            settled,
            consumer,
            armed: true,
        }
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut settled = self.settled.lock().unwrap_or_else(|e| e.into_inner());
            settled.remove(self.consumer);
        }
    }
}

pub struct ScyllaViewStore {
    session: Session,
    keyspace: String,
    q: Statements,
    /// Each consumer's generation: `clear` moves a consumer to a new one, so
    /// its positions start empty and its writes get timestamps above all
    /// earlier ones ([`Generation`]).
    generations: Mutex<HashMap<String, Generation>>,
    /// Consumers whose committed redo records this process has re-applied,
    /// and whose batches since have all completed ([`Unsettled`]).
    settled: Mutex<HashSet<String>>,
    /// One settling at a time.
    settling: tokio::sync::Mutex<()>,
    /// Each (consumer, topic, partition)'s committed next offset as this
    /// store last read or wrote it (`None` after a commit that may or may
    /// not have landed): what the next commit compares against.
    seen: Mutex<HashMap<(String, Topic, u32), Option<u64>>>,
    written: Mutex<Written>,
}

impl std::fmt::Debug for ScyllaViewStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaViewStore")
            .field("keyspace", &self.keyspace)
            .finish_non_exhaustive()
    }
}

fn decode(table: &'static str, raw: &[u8]) -> Result<ViewValue, StoreError> {
    postcard::from_bytes(raw).map_err(|e| StoreError::Corrupt {
        table,
        reason: e.to_string(),
    })
}

fn corrupt(table: &'static str, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table,
        reason: reason.into(),
    }
}

/// Whether a conditional statement (or batch) applied: its first column,
/// `[applied]`. When it did not, Scylla adds the current values after it.
fn lwt_applied(result: scylla::response::query_result::QueryResult) -> Result<bool, StoreError> {
    let rows = result.into_rows_result().map_err(storage)?;
    let row: Option<Row> = rows.maybe_first_row::<Row>().map_err(storage)?;
    Ok(matches!(
        row.and_then(|r| r.columns.into_iter().next().flatten()),
        Some(CqlValue::Boolean(true))
    ))
}

fn limit_of(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn offset_of(table: &'static str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt(table, format!("negative offset {v}")))
}

impl ScyllaViewStore {
    /// Connects to the cluster named by a `scylla://` URL (see [`config`]),
    /// creating or migrating the schema, and prepares every statement.
    pub async fn connect(url: &str) -> Result<ScyllaViewStore, StoreError> {
        let config = ScyllaConfig::parse(url).map_err(storage)?;
        ScyllaViewStore::connect_with(config).await
    }

    pub async fn connect_with(config: ScyllaConfig) -> Result<ScyllaViewStore, StoreError> {
        let mut profile = ExecutionProfile::builder()
            .consistency(Consistency::LocalQuorum)
            .serial_consistency(Some(SerialConsistency::LocalSerial));
        if let Some(dc) = &config.local_dc {
            // LOCAL_QUORUM's "local" is the preferred datacenter; no
            // failover, so a quorum never silently moves to another one.
            profile = profile.load_balancing_policy(
                DefaultPolicy::builder()
                    .prefer_datacenter(dc.clone())
                    .permit_dc_failover(false)
                    .build(),
            );
        }
        let mut builder = SessionBuilder::new()
            .known_nodes(&config.nodes)
            .connection_timeout(config.connect_timeout)
            .default_execution_profile_handle(profile.build().into_handle());
        if let Some(c) = &config.credentials {
            builder = builder.user(c.user.clone(), c.password.clone());
        }
        if let Some(tls) = &config.tls {
            builder = builder.tls_context(Some(std::sync::Arc::new(tls::client_config(tls)?)));
        }
        let session = tokio::time::timeout(config.connect_timeout, builder.build())
            .await
            .map_err(|_| {
                StoreError::Storage(format!(
                    "cannot connect to scylla at {}: no answer within {:?}",
                    config.nodes.join(","),
                    config.connect_timeout
                ))
            })?
            .map_err(|e| StoreError::Storage(format!("cannot connect to scylla at {}: {e}", config.nodes.join(","))))?;
        schema::migrate(&session, &config).await?;
        let mut q = Statements::prepare(&session, &config.keyspace).await?;
        // A compare-and-set retried after a timeout may find its own write
        // and report a conflict: leave retries to the store's caller.
        q.cas_insert_position.set_is_idempotent(false);
        q.cas_update_position.set_is_idempotent(false);
        info!(keyspace = %config.keyspace, nodes = %config.nodes.join(","), "scylla view store ready");
        Ok(ScyllaViewStore {
            session,
            keyspace: config.keyspace,
            q,
            generations: Mutex::new(HashMap::new()),
            settled: Mutex::new(HashSet::new()),
            settling: tokio::sync::Mutex::new(()),
            seen: Mutex::new(HashMap::new()),
            written: Mutex::new(Written::default()),
        })
    }

    /// The keyspace holding the views.
    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// Drops the whole keyspace: for tests and teardown only.
    pub async fn drop_keyspace(&self) -> Result<(), StoreError> {
        self.session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", self.keyspace), &[])
            .await
            .map_err(storage)?;
        Ok(())
    }

    async fn exec(&self, stmt: &PreparedStatement, values: impl SerializeRow) -> Result<(), StoreError> {
        self.session.execute_unpaged(stmt, values).await.map_err(storage)?;
        Ok(())
    }

    /// The first row of a single-page query, if any.
    async fn one<T>(&self, stmt: &PreparedStatement, values: impl SerializeRow) -> Result<Option<T>, StoreError>
    where
        T: for<'f> DeserializeRow<'f, 'f>,
    {
        let rows = self
            .session
            .execute_unpaged(stmt, values)
            .await
            .map_err(storage)?
            .into_rows_result()
            .map_err(storage)?;
        rows.maybe_first_row::<T>().map_err(storage)
    }

    /// All rows of a query, paged by the driver.
    async fn all<T>(&self, stmt: &PreparedStatement, values: impl SerializeRow) -> Result<Vec<T>, StoreError>
    where
        T: for<'f, 'm> DeserializeRow<'f, 'm> + 'static,
    {
        self.session
            .execute_iter(stmt.clone(), values)
            .await
            .map_err(storage)?
            .rows_stream::<T>()
            .map_err(storage)?
            .map_err(storage)
            .try_collect()
            .await
    }

    async fn get(&self, key: &ViewKey) -> Result<Option<ViewValue>, StoreError> {
        let q = &self.q;
        let raw: Option<(Vec<u8>,)> = match key {
            ViewKey::User(id) => self.one(&q.get_user, (id,)).await?,
            ViewKey::Username(name) => self.one(&q.get_username, (name,)).await?,
            ViewKey::Room(id) => self.one(&q.get_room, (id,)).await?,
            ViewKey::Member { room_id, user_id } => self.one(&q.get_member, (room_id, user_id)).await?,
            ViewKey::Message { room_id, message_id } => {
                self.one(&q.get_message, (room_id, bucket_of(message_id), message_id))
                    .await?
            }
            ViewKey::ClientMsg {
                room_id,
                user_id,
                client_msg_id,
            } => self.one(&q.get_client_msg, (room_id, user_id, client_msg_id)).await?,
            ViewKey::Session { username, session_id } => self.one(&q.get_session, (username, session_id)).await?,
            ViewKey::RoomEvent { room_id, position } => self.one(&q.get_room_event, (room_id, position)).await?,
            ViewKey::Emotion { room_id, message_id } => {
                self.one(&q.get_emotion, (room_id, bucket_of(message_id), message_id))
                    .await?
            }
            ViewKey::Activity { room_id, hour } => self.one(&q.get_activity, (room_id, hour)).await?,
            ViewKey::Admin { scope, bucket } => self.one(&q.get_admin, (scope, bucket)).await?,
            ViewKey::MessageEdit { room_id, message_id } => {
                self.one(&q.get_message_edit, (room_id, message_id)).await?
            }
            ViewKey::Friend { user_id, other_id } => self.one(&q.get_friend, (user_id, other_id)).await?,
            ViewKey::Attachment { room_id, attachment_id } => {
                self.one(&q.get_attachment, (room_id, attachment_id)).await?
            }
        };
        raw.map(|(v,)| decode(key.table(), &v)).transpose()
    }

    async fn write(&self, op: &Op<'_>, ts: i64) -> Result<(), StoreError> {
        let q = &self.q;
        match op {
            Op::Put(key, v) => match key {
                ViewKey::User(id) => self.exec(&q.put_user, (id, v, ts)).await,
                ViewKey::Username(name) => self.exec(&q.put_username, (name, v, ts)).await,
                ViewKey::Room(id) => self.exec(&q.put_room, (id, v, ts)).await,
                ViewKey::Member { room_id, user_id } => self.exec(&q.put_member, (room_id, user_id, v, ts)).await,
                ViewKey::Message { room_id, message_id } => {
                    self.exec(&q.put_message, (room_id, bucket_of(message_id), message_id, v, ts))
                        .await
                }
                ViewKey::ClientMsg {
                    room_id,
                    user_id,
                    client_msg_id,
                } => {
                    self.exec(&q.put_client_msg, (room_id, user_id, client_msg_id, v, ts))
                        .await
                }
                ViewKey::Session { username, session_id } => {
                    self.exec(&q.put_session, (username, session_id, v, ts)).await
                }
                ViewKey::RoomEvent { room_id, position } => {
                    self.exec(&q.put_room_event, (room_id, position, v, ts)).await
                }
                ViewKey::Emotion { room_id, message_id } => {
                    self.exec(&q.put_emotion, (room_id, bucket_of(message_id), message_id, v, ts))
                        .await
                }
                ViewKey::Activity { room_id, hour } => self.exec(&q.put_activity, (room_id, hour, v, ts)).await,
                ViewKey::Admin { scope, bucket } => self.exec(&q.put_admin, (scope, bucket, v, ts)).await,
                ViewKey::MessageEdit { room_id, message_id } => {
                    self.exec(&q.put_message_edit, (room_id, message_id, v, ts)).await
                }
                ViewKey::Friend { user_id, other_id } => self.exec(&q.put_friend, (user_id, other_id, v, ts)).await,
                ViewKey::Attachment { room_id, attachment_id } => {
                    self.exec(&q.put_attachment, (room_id, attachment_id, v, ts)).await
                }
            },
            Op::Delete(key) => match key {
                ViewKey::User(id) => self.exec(&q.del_user, (ts, id)).await,
                ViewKey::Username(name) => self.exec(&q.del_username, (ts, name)).await,
                ViewKey::Room(id) => self.exec(&q.del_room, (ts, id)).await,
                ViewKey::Member { room_id, user_id } => self.exec(&q.del_member, (ts, room_id, user_id)).await,
                ViewKey::Message { room_id, message_id } => {
                    self.exec(&q.del_message, (ts, room_id, bucket_of(message_id), message_id))
                        .await
                }
                ViewKey::ClientMsg {
                    room_id,
                    user_id,
                    client_msg_id,
                } => {
                    self.exec(&q.del_client_msg, (ts, room_id, user_id, client_msg_id))
                        .await
                }
                ViewKey::Session { username, session_id } => {
                    self.exec(&q.del_session, (ts, username, session_id)).await
                }
                ViewKey::RoomEvent { room_id, position } => self.exec(&q.del_room_event, (ts, room_id, position)).await,
                ViewKey::Emotion { room_id, message_id } => {
                    self.exec(&q.del_emotion, (ts, room_id, bucket_of(message_id), message_id))
                        .await
                }
                ViewKey::Activity { room_id, hour } => self.exec(&q.del_activity, (ts, room_id, hour)).await,
                ViewKey::Admin { scope, bucket } => self.exec(&q.del_admin, (ts, scope, bucket)).await,
                ViewKey::MessageEdit { room_id, message_id } => {
                    self.exec(&q.del_message_edit, (ts, room_id, message_id)).await
                }
                ViewKey::Friend { user_id, other_id } => self.exec(&q.del_friend, (ts, user_id, other_id)).await,
                ViewKey::Attachment { room_id, attachment_id } => {
                    self.exec(&q.del_attachment, (ts, room_id, attachment_id)).await
                }
            },
            Op::RoomIndex { room_id, on: true } => {
                let shard = room_shard(room_id);
                let known = self.written.lock().map_err(storage)?.room_shards.contains(&shard);
                if !known {
                    self.exec(&q.put_room_shard, (ROOM_SHARDS, shard, ts)).await?;
                    self.written.lock().map_err(storage)?.room_shards.insert(shard);
                }
                self.exec(&q.put_room_index, (shard, room_id, ts)).await
            }
            Op::RoomIndex { room_id, on: false } => {
                self.exec(&q.del_room_index, (ts, room_shard(room_id), room_id)).await?;
                self.exec(&q.del_room_index, (ts, LEGACY_ROOMS_SHARD, room_id)).await
            }
            Op::UserRoom {
                user_id,
                room_id,
                on: true,
            } => self.exec(&q.put_user_room, (user_id, room_id, ts)).await,
            Op::UserRoom {
                user_id,
                room_id,
                on: false,
            } => self.exec(&q.del_user_room, (ts, user_id, room_id)).await,
            Op::Bucket { room_id, kind, bucket } => self.exec(&q.put_bucket, (room_id, kind, bucket, ts)).await,
        }
    }

    /// Writes a batch's changes at timestamp `ts`, [`IN_FLIGHT`] at a time.
    /// Idempotent: running it again writes the same cells at the same timestamp.
    async fn materialize(&self, changes: &[Change], ts: i64) -> Result<(), StoreError> {
        let mut ops = plan(changes);
        {
            let written = self.written.lock().map_err(storage)?;
            ops.retain(|op| match op {
                Op::RoomIndex { room_id, on: true } => !written.rooms.contains(*room_id),
                Op::Bucket { room_id, kind, bucket } => {
                    !written.buckets.contains(&((*room_id).to_owned(), *kind, *bucket))
                }
                _ => true,
            });
        }
        all_done!(&ops, IN_FLIGHT, |op| self.write(op, ts));
        let mut written = self.written.lock().map_err(storage)?;
        if written.rooms.len() + written.buckets.len() > CACHE_LIMIT {
            *written = Written::default();
        }
        for op in &ops {
            match op {
                Op::RoomIndex { room_id, on } => {
                    if *on {
                        written.rooms.insert((*room_id).to_owned());
                    } else {
                        written.rooms.remove(*room_id);
                    }
                }
                Op::Bucket { room_id, kind, bucket } => {
                    written.buckets.insert(((*room_id).to_owned(), *kind, *bucket));
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn generation(&self, consumer: &str) -> Result<Generation, StoreError> {
        if let Some(g) = self.generations.lock().map_err(storage)?.get(consumer) {
            return Ok(*g);
        }
        let row: Option<(Option<i64>, Option<bool>, Option<i64>)> = self.one(&self.q.get_consumer, (consumer,)).await?;
        let g = match row {
            Some((number, _, base)) => Generation {
                number: number.unwrap_or(0),
                base: base.unwrap_or(0),
            },
            None => Generation::FIRST,
        };
        self.generations.lock().map_err(storage)?.insert(consumer.to_owned(), g);
        Ok(g)
    }

    fn is_settled(&self, consumer: &str) -> Result<bool, StoreError> {
        Ok(self.settled.lock().map_err(storage)?.contains(consumer))
    }

    /// Step 4 of `apply`: the batch's entities are all written.
    async fn mark_materialized(
        &self,
        consumer: &str,
        generation: Generation,
        positions: &[(Topic, u32, u64)],
        ts: i64,
    ) -> Result<(), StoreError> {
        all_done!(positions, 16, |(topic, part, next)| self.exec(
            &self.q.set_materialized,
            (
                ts,
                position_timestamp(*next),
                consumer,
                generation.number,
                topic.name(),
                *part as i32
            ),
        ));
        Ok(())
    }

    /// Re-applies the committed redo record of each of `consumer`'s positions
    /// whose `materialized` watermark lags its commit, then sets the
    /// watermark: a batch whose position committed but whose entities were
    /// cut short (a crash, a write timeout, a cancelled `apply`) is thereby
    /// completed. Runs before the consumer's positions are read or advanced,
    /// once per process and again after a failed `apply` ([`Unsettled`]).
    async fn settle(&self, consumer: &str) -> Result<(), StoreError> {
        if self.is_settled(consumer)? {
            return Ok(());
        }
        let _one_at_a_time = self.settling.lock().await;
        if self.is_settled(consumer)? {
            return Ok(());
        }
        let generation = self.generation(consumer).await?;
        let rows: Vec<PositionRow> = self.all(&self.q.get_positions, (consumer, generation.number)).await?;
        for (topic, part, next, attempt, chunks, ts, materialized) in rows {
            if materialized == Some(next) {
                continue;
            }
            let ts = ts.unwrap_or_else(|| generation.timestamp(offset_of("positions", next).unwrap_or(0)));
            if let (Some(attempt), Some(chunks)) = (attempt, chunks)
                && chunks > 0
            {
                let mut parts: Vec<(i32, Vec<u8>)> = self
                    .all(
                        &self.q.get_redo,
                        (consumer, generation.number, &topic, part, next, attempt),
                    )
                    .await?;
                parts.sort_by_key(|(i, _)| *i);
                if parts.len() != chunks as usize || parts.iter().enumerate().any(|(i, (c, _))| *c as usize != i) {
                    // A projector in another process may have moved on and
                    // dropped this record since we read the position: then it
                    // was fully written, and there is nothing to do.
                    let now: Option<(Option<i64>, Option<i64>)> = self
                        .one(&self.q.get_position, (consumer, generation.number, &topic, part))
                        .await?;
                    if now.and_then(|(n, _)| n) != Some(next) {
                        continue;
                    }
                    return Err(corrupt(
                        "redo",
                        format!(
                            "{consumer} {topic}/{part}@{next}: expected {chunks} chunks, found {}",
                            parts.len()
                        ),
                    ));
                }
                let raw: Vec<u8> = parts.into_iter().flat_map(|(_, d)| d).collect();
                let changes = rows::decode_redo(&raw).map_err(|e| corrupt("redo", e))?;
                debug!(consumer, topic = %topic, part, next, changes = changes.len(), "re-applying committed redo record");
                self.materialize(&changes, ts).await?;
            }
            self.exec(
                &self.q.set_materialized,
                (ts, next, consumer, generation.number, &topic, part),
            )
            .await?;
        }
        self.settled.lock().map_err(storage)?.insert(consumer.to_owned());
        Ok(())
    }

    /// Steps 1 and 2 of `apply`: the redo record, then the positions that
    /// commit it, in one single-partition batch.
    async fn commit(
        &self,
        batch: &ViewBatch,
        changes: &[Change],
        generation: Generation,
        ts: i64,
    ) -> Result<(), StoreError> {
        let consumer = batch.consumer.as_str();
        let generation_number = generation.number;
        let (topic0, part0, next0) = batch.positions[0];
        let (topic0, part0, next0) = (topic0.name(), part0 as i32, position_timestamp(next0));
        let redo = if changes.is_empty() {
            Vec::new()
        } else {
            rows::encode_redo(changes).map_err(storage)?
        };
        let chunks: Vec<&[u8]> = redo.chunks(rows::REDO_CHUNK).collect();
        let attempt = now_micros();
        all_done!(chunks.iter().enumerate(), 16, |(i, data)| self.exec(
            &self.q.put_redo,
            (
                consumer,
                generation_number,
                topic0,
                part0,
                next0,
                attempt,
                i as i32,
                *data,
                ts
            ),
        ));
        // Each position moves only from where this store last saw it (a
        // compare-and-set): a second writer of the consumer — an old
        // projector still running in a rolling deploy — finds it moved,
        // writes no entity, and re-reads.
        let expected: Vec<Expect> = {
            let seen = self.seen.lock().map_err(storage)?;
            batch
                .positions
                .iter()
                .map(|(topic, part, _)| expectation(seen.get(&(consumer.to_owned(), *topic, *part))).map_err(storage))
                .collect::<Result<_, _>>()?
        };
        let mut statements = Vec::with_capacity(batch.positions.len());
        let mut values: Vec<Vec<Option<CqlValue>>> = Vec::with_capacity(batch.positions.len());
        for (i, ((topic, part, next), expected)) in batch.positions.iter().zip(&expected).enumerate() {
            let (redo_attempt, redo_chunks, redo_ts) = if i == 0 {
                (Some(attempt), chunks.len() as i32, Some(ts))
            } else {
                (None, 0, None)
            };
            let key = [
                Some(CqlValue::Text(consumer.to_owned())),
                Some(CqlValue::BigInt(generation_number)),
                Some(CqlValue::Text(topic.name().to_owned())),
                Some(CqlValue::Int(*part as i32)),
            ];
            let set = [
                Some(CqlValue::BigInt(position_timestamp(*next))),
                redo_attempt.map(CqlValue::BigInt),
                Some(CqlValue::Int(redo_chunks)),
                redo_ts.map(CqlValue::BigInt),
            ];
            match expected {
                Expect::Absent => {
                    statements.push(&self.q.cas_insert_position);
                    values.push(key.into_iter().chain(set).collect());
                }
                Expect::At(v) => {
                    statements.push(&self.q.cas_update_position);
                    let was = Some(CqlValue::BigInt(position_timestamp(*v)));
                    values.push(set.into_iter().chain(key).chain([was]).collect());
                }
            }
        }
        let result = if values.len() == 1 {
            self.session.execute_unpaged(statements[0], &values[0]).await
        } else {
            // All rows of one partition (the consumer's): one Paxos round.
            let mut b = Batch::new(BatchType::Logged);
            for s in &statements {
                b.append_statement((*s).clone());
            }
            self.session.batch(&b, &values).await
        };
        let keys = batch.positions.iter().map(|(t, p, _)| (consumer.to_owned(), *t, *p));
        let applied = match result.map_err(storage).and_then(lwt_applied) {
            Ok(applied) => applied,
            Err(e) => {
                // It may or may not have landed: re-read before more.
                let mut seen = self.seen.lock().map_err(storage)?;
                for k in keys {
                    seen.insert(k, None);
                }
                return Err(e);
            }
        };
        let mut seen = self.seen.lock().map_err(storage)?;
        if !applied {
            for k in keys {
                seen.insert(k, None);
            }
            return Err(storage(format!(
                "{consumer}: positions moved since this store read them (another writer of the consumer?); \
                 re-reading them"
            )));
        }
        for ((_, _, next), k) in batch.positions.iter().zip(keys) {
            seen.insert(k, Some(*next));
        }
        Ok(())
    }

    async fn member_list(&self, rooms_and_users: Vec<(String, String)>) -> Result<Vec<MemberView>, StoreError> {
        let keys: Vec<ViewKey> = rooms_and_users
            .into_iter()
            .map(|(room_id, user_id)| ViewKey::Member { room_id, user_id })
            .collect();
        Ok(self
            .load(&keys)
            .await?
            .into_iter()
            .filter_map(|v| match v {
                Some(ViewValue::Member(m)) => Some(m),
                _ => None,
            })
            .collect())
    }

    /// The newest `n` entities of one bucket of a room's messages or
    /// emotions (messages below `before`), newest first.
    async fn bucket_page(
        &self,
        room_id: &str,
        kind: &'static str,
        before: Option<&str>,
        bucket: i64,
        n: usize,
    ) -> Result<Vec<ViewValue>, StoreError> {
        let table = if kind == MESSAGES { "messages" } else { "emotions" };
        let n = limit_of(n);
        let page = match (kind, before) {
            (MESSAGES, Some(b)) => {
                self.session
                    .execute_unpaged(&self.q.messages_before, (room_id, bucket, b, n))
                    .await
            }
            (MESSAGES, None) => {
                self.session
                    .execute_unpaged(&self.q.messages_page, (room_id, bucket, n))
                    .await
            }
            _ => {
                self.session
                    .execute_unpaged(&self.q.emotions_page, (room_id, bucket, n))
                    .await
            }
        }
        .map_err(storage)?
        .into_rows_result()
        .map_err(storage)?;
        let mut out = Vec::new();
        for row in page.rows::<(Vec<u8>,)>().map_err(storage)? {
            out.push(decode(table, &row.map_err(storage)?.0)?);
        }
        Ok(out)
    }

    /// The newest `limit` entities of a room's bucketed table (messages or
    /// emotions) below `before`, newest first: walks the room's non-empty
    /// buckets downwards, one bounded partition read each, until `limit` are found.
    async fn newest(
        &self,
        room_id: &str,
        kind: &'static str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ViewValue>, StoreError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        // Buckets grow with ids, so no message below an id cursor sits in a
        // higher bucket. Any other cursor is compared in every bucket.
        let top = match before {
            Some(b) if is_id(b) => bucket_of(b),
            _ => i64::MAX,
        };
        let mut buckets = self
            .session
            .execute_iter(self.q.buckets_down.clone(), (room_id, kind, top))
            .await
            .map_err(storage)?
            .rows_stream::<(i64,)>()
            .map_err(storage)?;
        // The first bucket alone (in a busy room it holds the whole page),
        // then the next ones BUCKETS_IN_FLIGHT at a time: a quiet room in a
        // busy partition may have one message per bucket.
        let mut window = 1;
        while out.len() < limit {
            let mut next = Vec::with_capacity(window);
            while next.len() < window {
                match buckets.try_next().await.map_err(storage)? {
                    Some((bucket,)) => next.push(bucket),
                    None => break,
                }
            }
            if next.is_empty() {
                break;
            }
            let want = limit - out.len();
            let pages = in_order!(&next, window, |bucket| self
                .bucket_page(room_id, kind, before, *bucket, want));
            for value in pages.into_iter().flatten() {
                if out.len() == limit {
                    break;
                }
                out.push(value);
            }
            window = BUCKETS_IN_FLIGHT;
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Streams every row of a full-table scan into `f`, page by page.
    async fn each_row<T>(
        &self,
        stmt: &PreparedStatement,
        mut f: impl FnMut(T) -> std::io::Result<()>,
    ) -> Result<(), StoreError>
    where
        T: for<'f, 'm> DeserializeRow<'f, 'm> + 'static,
    {
        let mut rows = self
            .session
            .execute_iter(stmt.clone(), ())
            .await
            .map_err(storage)?
            .rows_stream::<T>()
            .map_err(storage)?;
        while let Some(row) = rows.try_next().await.map_err(storage)? {
            f(row).map_err(storage)?;
        }
        Ok(())
    }

    /// Every entity of a table as (canonical key, value bytes), into the
    /// checksum's sorter.
    async fn scan(&self, table: &'static str, out: &mut rows::TableSorter) -> Result<(), StoreError> {
        let q = &self.q;
        type Two = (String, Vec<u8>);
        type Three = (String, String, Vec<u8>);
        match table {
            "users" => {
                self.each_row(&q.scan_users, |(a, v): Two| out.push(ViewKey::User(a).encode(), v))
                    .await
            }
            "usernames" => {
                self.each_row(&q.scan_usernames, |(a, v): Two| {
                    out.push(ViewKey::Username(a).encode(), v)
                })
                .await
            }
            "rooms" => {
                self.each_row(&q.scan_rooms, |(a, v): Two| out.push(ViewKey::Room(a).encode(), v))
                    .await
            }
            "members" => {
                self.each_row(&q.scan_members, |(room_id, user_id, v): Three| {
                    out.push(ViewKey::Member { room_id, user_id }.encode(), v)
                })
                .await
            }
            "messages" => {
                self.each_row(&q.scan_messages, |(room_id, message_id, v): Three| {
                    out.push(ViewKey::Message { room_id, message_id }.encode(), v)
                })
                .await
            }
            "client_msgs" => {
                self.each_row(
                    &q.scan_client_msgs,
                    |(room_id, user_id, client_msg_id, v): (String, String, String, Vec<u8>)| {
                        let key = ViewKey::ClientMsg {
                            room_id,
                            user_id,
                            client_msg_id,
                        };
                        out.push(key.encode(), v)
                    },
                )
                .await
            }
            "sessions" => {
                self.each_row(&q.scan_sessions, |(username, session_id, v): Three| {
                    out.push(ViewKey::Session { username, session_id }.encode(), v)
                })
                .await
            }
            "room_events" => {
                self.each_row(&q.scan_room_events, |(room_id, position, v): Three| {
                    out.push(ViewKey::RoomEvent { room_id, position }.encode(), v)
                })
                .await
            }
            "emotions" => {
                self.each_row(&q.scan_emotions, |(room_id, message_id, v): Three| {
                    out.push(ViewKey::Emotion { room_id, message_id }.encode(), v)
                })
                .await
            }
            "activity" => {
                self.each_row(&q.scan_activity, |(room_id, hour, v): (String, i64, Vec<u8>)| {
                    out.push(ViewKey::Activity { room_id, hour }.encode(), v)
                })
                .await
            }
            "admin" => {
                self.each_row(&q.scan_admin, |(scope, bucket, v): (String, i64, Vec<u8>)| {
                    out.push(ViewKey::Admin { scope, bucket }.encode(), v)
                })
                .await
            }
            "message_edits" => {
                self.each_row(&q.scan_message_edits, |(room_id, message_id, v): Three| {
                    out.push(ViewKey::MessageEdit { room_id, message_id }.encode(), v)
                })
                .await
            }
            "friends" => {
                self.each_row(&q.scan_friends, |(user_id, other_id, v): Three| {
                    out.push(ViewKey::Friend { user_id, other_id }.encode(), v)
                })
                .await
            }
            "attachments" => {
                self.each_row(&q.scan_attachments, |(room_id, attachment_id, v): Three| {
                    out.push(ViewKey::Attachment { room_id, attachment_id }.encode(), v)
                })
                .await
            }
            other => Err(StoreError::Storage(format!("no scan for table {other}"))),
        }
    }
}

#[async_trait]
impl ViewQueries for ScyllaViewStore {
    async fn load(&self, keys: &[ViewKey]) -> Result<Vec<Option<ViewValue>>, StoreError> {
        Ok(in_order!(keys, READS_IN_FLIGHT, |k| self.get(k)))
    }

    async fn rooms(&self, after: Option<&str>, limit: usize) -> Result<Vec<RoomView>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let n = limit_of(limit);
        let page = |shard: i32| async move {
            let ids: Vec<(String,)> = match after {
                Some(a) => self.all(&self.q.rooms_after, (shard, a, n)).await?,
                None => self.all(&self.q.rooms_first, (shard, n)).await?,
            };
            Ok::<_, StoreError>(ids.into_iter().map(|(id,)| id).collect::<Vec<_>>())
        };
        // The shards from the one `after` is in, in order, until the page is full.
        let first = after.map_or(1, room_shard).max(1);
        let shards: Vec<(i32,)> = self.all(&self.q.room_shards_from, (ROOM_SHARDS, first)).await?;
        let mut sharded = Vec::new();
        for (shard,) in shards {
            if sharded.len() >= limit {
                break;
            }
            sharded.extend(page(shard).await?);
        }
        let legacy = page(LEGACY_ROOMS_SHARD).await?;
        let ids = rows::merge_room_pages(legacy, sharded, limit);
        let found: Vec<Option<RoomView>> = in_order!(&ids, READS_IN_FLIGHT, |id| self.room(id));
        Ok(found.into_iter().flatten().collect())
    }

    async fn members(&self, room_id: &str, after: Option<&str>, limit: usize) -> Result<Vec<MemberView>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let n = limit_of(limit);
        let rows: Vec<(Vec<u8>,)> = match after {
            Some(a) => self.all(&self.q.members_after, (room_id, a, n)).await?,
            None => self.all(&self.q.members_first, (room_id, n)).await?,
        };
        let mut out = Vec::with_capacity(rows.len());
        for (raw,) in rows {
            if let ViewValue::Member(m) = decode("members", &raw)? {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Answered by scanning the `usernames` table (its partitions are
    /// usernames: no prefix slice exists), in pages, sorted here: an
    /// admin's occasional search, bounded by the number of accounts.
    async fn usernames(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut found: Vec<(String, String)> = Vec::new();
        let mut bad = None;
        self.each_row(&self.q.scan_usernames, |(name, v): (String, Vec<u8>)| {
            if name.starts_with(prefix) && after.is_none_or(|a| name.as_str() > a) {
                match decode("usernames", &v) {
                    Ok(ViewValue::Username(id)) => found.push((name, id)),
                    Ok(_) => {}
                    Err(e) => bad = Some(e),
                }
            }
            Ok(())
        })
        .await?;
        if let Some(e) = bad {
            return Err(e);
        }
        found.sort();
        found.truncate(limit);
        Ok(found)
    }

    async fn friends(
        &self,
        user_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<emosation_core::view::FriendView>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let n = limit_of(limit);
        let rows: Vec<(Vec<u8>,)> = match after {
            Some(a) => self.all(&self.q.friends_after, (user_id, a, n)).await?,
            None => self.all(&self.q.friends_first, (user_id, n)).await?,
        };
        let mut out = Vec::with_capacity(rows.len());
        for (raw,) in rows {
            if let ViewValue::Friend(f) = decode("friends", &raw)? {
                out.push(f);
            }
        }
        Ok(out)
    }

    async fn user_rooms(
        &self,
        user_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MemberView>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let n = limit_of(limit);
        let rooms: Vec<(String,)> = match after {
            Some(a) => self.all(&self.q.rooms_of_after, (user_id, a, n)).await?,
            None => self.all(&self.q.rooms_of_first, (user_id, n)).await?,
        };
        self.member_list(rooms.into_iter().map(|(r,)| (r, user_id.to_owned())).collect())
            .await
    }

    async fn history(&self, room_id: &str, before: Option<&str>, limit: usize) -> Result<Vec<MessageView>, StoreError> {
        let mut out: Vec<MessageView> = self
            .newest(room_id, MESSAGES, before, limit)
            .await?
            .into_iter()
            .filter_map(|v| match v {
                ViewValue::Message(m) => Some(m),
                _ => None,
            })
            .collect();
        out.reverse();
        Ok(out)
    }

    async fn emotions(&self, room_id: &str, limit: usize) -> Result<Vec<EmotionView>, StoreError> {
        let mut out: Vec<EmotionView> = self
            .newest(room_id, EMOTIONS, None, limit)
            .await?
            .into_iter()
            .filter_map(|v| match v {
                ViewValue::Emotion(e) => Some(e),
                _ => None,
            })
            .collect();
        out.reverse();
        Ok(out)
    }

    async fn activity(&self, room_id: &str, from_hour: i64, to_hour: i64) -> Result<Vec<ActivityView>, StoreError> {
        if from_hour >= to_hour {
            return Ok(Vec::new());
        }
        let rows: Vec<(Vec<u8>,)> = self.all(&self.q.activity_range, (room_id, from_hour, to_hour)).await?;
        let mut out = Vec::with_capacity(rows.len());
        for (raw,) in rows {
            if let ViewValue::Activity(a) = decode("activity", &raw)? {
                out.push(a);
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl ViewStore for ScyllaViewStore {
    async fn apply(&self, batch: ViewBatch) -> Result<(), StoreError> {
        let mut changes: Vec<Change> = Vec::with_capacity(batch.changes.len());
        for (k, v) in &batch.changes {
            let raw = v.as_ref().map(postcard::to_allocvec).transpose().map_err(storage)?;
            changes.push((k.clone(), raw));
        }
        let generation = self.generation(&batch.consumer).await?;
        let ts = generation.batch_timestamp(&batch.positions);
        if batch.positions.is_empty() {
            // Replay's position-less batches: nothing to commit; an interrupted
            // replay is known by its rebuilding mark, not by positions.
            return self.materialize(&changes, ts).await;
        }
        let consumer = batch.consumer.as_str();
        self.settle(consumer).await?;
        // From the first write on, a failure (or this future dropped) may
        // leave the position committed ahead of the entities: the consumer is
        // settled again before its positions are next read or advanced.
        let unsettled = Unsettled::arm(&self.settled, consumer);
        self.commit(&batch, &changes, generation, ts).await?;
        self.materialize(&changes, ts).await?;
        self.mark_materialized(consumer, generation, &batch.positions, ts)
            .await?;
        unsettled.disarm();
        // Earlier batches' redo records of this partition are spent.
        let (topic, part, next) = batch.positions[0];
        self.exec(
            &self.q.del_redo_before,
            (
                ts,
                consumer,
                generation.number,
                topic.name(),
                part as i32,
                position_timestamp(next),
            ),
        )
        .await
    }

    async fn position(&self, consumer: &str, topic: Topic, partition: u32) -> Result<u64, StoreError> {
        self.settle(consumer).await?;
        let generation = self.generation(consumer).await?;
        let row: Option<(Option<i64>, Option<i64>)> = self
            .one(
                &self.q.get_position,
                (consumer, generation.number, topic.name(), partition as i32),
            )
            .await?;
        let (next, materialized) = row.unwrap_or((None, None));
        let committed = offset_of("positions", next.unwrap_or(0))?;
        self.seen
            .lock()
            .map_err(storage)?
            .insert((consumer.to_owned(), topic, partition), Some(committed));
        offset_of("positions", readable_position(next, materialized))
    }

    /// Moves `consumer` to a new generation (its positions read 0 at once),
    /// truncates its tables (the core views', or the activity table), then
    /// sets the generation's timestamp base above the truncate's time and
    /// every earlier write ([`Generation::next`]). Not atomic: callers bracket
    /// it with [`ViewStore::set_rebuilding`], as replay does. TRUNCATE needs
    /// every node up, and snapshots the tables first when Scylla's
    /// `auto_snapshot` is on (the default).
    async fn clear(&self, consumer: &str) -> Result<(), StoreError> {
        let old = self.generation(consumer).await?;
        let rows: Vec<PositionRow> = self.all(&self.q.get_positions, (consumer, old.number)).await?;
        let highest = rows
            .iter()
            .map(|(_, _, next, ..)| offset_of("positions", *next))
            .collect::<Result<Vec<u64>, _>>()?
            .into_iter()
            .max()
            .unwrap_or(0);
        let set = |g: Generation| self.exec(&self.q.set_generation, (now_micros(), g.number, g.base, consumer));
        let provisional = old.next(highest, now_micros());
        set(provisional).await?;
        self.generations
            .lock()
            .map_err(storage)?
            .insert(consumer.to_owned(), provisional);
        self.settled.lock().map_err(storage)?.insert(consumer.to_owned());
        self.seen.lock().map_err(storage)?.retain(|(c, ..), _| c != consumer);
        let tables = schema::tables_of(consumer);
        if !tables.is_empty() {
            for table in tables {
                let mut truncate = Statement::new(format!("TRUNCATE {}.{table}", self.keyspace));
                // Scylla allows a truncate a minute (truncate_request_timeout_in_ms);
                // the driver's default of 30 s would give up first.
                truncate.set_request_timeout(Some(TRUNCATE_TIMEOUT));
                self.session.query_unpaged(truncate, &[]).await.map_err(storage)?;
            }
            *self.written.lock().map_err(storage)? = Written::default();
            let generation = Generation {
                number: provisional.number,
                base: provisional.base.max(now_micros() + 1),
            };
            set(generation).await?;
            self.generations
                .lock()
                .map_err(storage)?
                .insert(consumer.to_owned(), generation);
        }
        // The old generation's rows are unreachable now; drop them.
        for (topic, part, ..) in rows {
            self.exec(&self.q.del_redo, (consumer, old.number, topic, part)).await?;
        }
        self.exec(&self.q.del_generation, (consumer, old.number)).await
    }

    async fn bulk_load(&self, rows: BulkRows) -> Result<(), StoreError> {
        let mut changes: Vec<Change> = Vec::with_capacity(rows.len());
        for (i, (table, key, value)) in rows.iter().enumerate() {
            let key = ViewKey::decode_write_once(table, key)
                .ok_or_else(|| storage(format!("bulk row {i} of {table} is not a write-once key")))?;
            changes.push((key, Some(value.to_vec())));
        }
        // Bulk rows are a replay's, of the core views: at their generation's
        // base, below every live write.
        let ts = self.generation(CORE_VIEWS).await?.batch_timestamp(&[]);
        self.materialize(&changes, ts).await
    }

    async fn set_rebuilding(&self, consumer: &str, on: bool) -> Result<(), StoreError> {
        self.exec(&self.q.set_rebuilding, (now_micros(), on, consumer)).await
    }

    async fn rebuilding(&self, consumer: &str) -> Result<bool, StoreError> {
        let row: Option<(Option<i64>, Option<bool>)> = self.one(&self.q.get_consumer, (consumer,)).await?;
        Ok(row.and_then(|(_, r)| r).unwrap_or(false))
    }

    /// Reads every entity of the consumer back and digests it in the embedded
    /// store's order and encoding, sorting each table within
    /// [`CHECKSUM_MEMORY`] and on temporary files past it: an operator's
    /// tool, not a hot path.
    async fn checksum_of(&self, wanted: &str) -> Result<String, StoreError> {
        let mut digest = rows::StreamingDigest::new(CHECKSUM_MEMORY);
        for table in TABLES.into_iter().filter(|t| table_owner(t) == wanted) {
            let mut sorter = digest.table(table);
            self.scan(table, &mut sorter).await?;
            digest.add(sorter).map_err(storage)?;
        }
        let mut positions = digest.table("positions");
        let consumers: Vec<(String, Option<i64>, Option<bool>)> = self.all(&self.q.scan_consumers, ()).await?;
        let (generation, rebuilding) = digested_generation(wanted, &consumers);
        let rows: Vec<PositionRow> = self.all(&self.q.get_positions, (wanted, generation)).await?;
        for (topic, part, next, ..) in rows {
            let topic = Topic::from_name(&topic).ok_or_else(|| corrupt("positions", format!("topic {topic}")))?;
            let part = u32::try_from(part).map_err(|_| corrupt("positions", format!("partition {part}")))?;
            positions
                .push(
                    consumer_partition_key(wanted, topic, part),
                    offset_of("positions", next)?.to_be_bytes().to_vec(),
                )
                .map_err(storage)?;
        }
        if rebuilding {
            positions.push(rebuilding_key(wanted), vec![1u8]).map_err(storage)?;
        }
        digest.add(positions).map_err(storage)?;
        Ok(digest.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EmbeddedViewStore;
    use emosation_core::ports::CORE_VIEWS;
    use emosation_core::view::{RoomEventView, SessionView, UserView};

    fn sample_changes() -> Vec<(ViewKey, Option<ViewValue>)> {
        let room = RoomView {
            room_id: "r1".into(),
            name: "room".into(),
            capacity: 10,
            owner_id: "u1".into(),
            created_at: 1,
            member_count: 1,
            message_count: 1,
            last_message_id: Some("0003000000000001".into()),
            emotion_counts: [0, 1, 0, 0, 0, 0, 0],
        };
        let member = MemberView {
            room_id: "r1".into(),
            user_id: "u1".into(),
            username: "alice".into(),
            joined_at: 1,
            read_seq: 1,
            last_read_message_id: None,
        };
        let message = MessageView {
            message_id: "0003000000000001".into(),
            room_id: "r1".into(),
            seq: 1,
            author_id: "u1".into(),
            author: "alice".into(),
            text: "hi".into(),
            created_at: 2,
            client_msg_id: "c1".into(),
            attachments: vec![],
        };
        vec![
            (
                ViewKey::User("u1".into()),
                Some(ViewValue::User(UserView {
                    user_id: "u1".into(),
                    username: "alice".into(),
                    password_hash: "h".into(),
                    created_at: 1,
                    deleted_at: None,
                })),
            ),
            (
                ViewKey::Username("alice".into()),
                Some(ViewValue::Username("u1".into())),
            ),
            (ViewKey::Room("r1".into()), Some(ViewValue::Room(room))),
            (
                ViewKey::Member {
                    room_id: "r1".into(),
                    user_id: "u1".into(),
                },
                Some(ViewValue::Member(member)),
            ),
            (
                ViewKey::Message {
                    room_id: "r1".into(),
                    message_id: "0003000000000001".into(),
                },
                Some(ViewValue::Message(message)),
            ),
            (
                ViewKey::ClientMsg {
                    room_id: "r1".into(),
                    user_id: "u1".into(),
                    client_msg_id: "c1".into(),
                },
                Some(ViewValue::ClientMsg("0003000000000001".into())),
            ),
            (
                ViewKey::Session {
                    username: "alice".into(),
                    session_id: "s1".into(),
                },
                Some(ViewValue::Session(SessionView {
                    session_id: "s1".into(),
                    user_id: "u1".into(),
                    revoked_at: 3,
                    expires_at: 4,
                })),
            ),
            (
                ViewKey::RoomEvent {
                    room_id: "r1".into(),
                    position: "0003000000000000".into(),
                },
                Some(ViewValue::RoomEvent(RoomEventView {
                    room_id: "r1".into(),
                    joined: true,
                    user_id: "u1".into(),
                    username: "alice".into(),
                    member_count: 1,
                    at: 1,
                })),
            ),
            (
                ViewKey::Emotion {
                    room_id: "r1".into(),
                    message_id: "0003000000000001".into(),
                },
                Some(ViewValue::Emotion(EmotionView {
                    room_id: "r1".into(),
                    message_id: "0003000000000001".into(),
                    label: "joy".into(),
                    score: 0.9,
                    scores: [0.0, 0.9, 0.1, 0.0, 0.0, 0.0, 0.0],
                    model: "offline".into(),
                    created_at: 5,
                    position: "0003000000000002".into(),
                })),
            ),
        ]
    }

    /// What `ScyllaViewStore::checksum_of(consumer)` digests for the given
    /// content: the canonical keys and postcard values it reads back from the
    /// consumer's tables, and its positions.
    fn scylla_digest(
        consumer: &str,
        changes: &[(ViewKey, Option<ViewValue>)],
        positions: &[(&str, Topic, u32, u64)],
        rebuilding: &[&str],
    ) -> String {
        let mut named: Vec<(&str, rows::Entries)> = TABLES
            .iter()
            .filter(|t| table_owner(t) == consumer)
            .map(|t| (*t, Vec::new()))
            .collect();
        for (k, v) in changes.iter().rev() {
            let v = postcard::to_allocvec(v.as_ref().unwrap()).unwrap();
            if let Some(i) = named.iter().position(|(t, _)| *t == k.table()) {
                named[i].1.push((k.encode(), v));
            }
        }
        let mut pos: Vec<_> = positions
            .iter()
            .filter(|(c, ..)| *c == consumer)
            .map(|(c, t, p, n)| (consumer_partition_key(c, *t, *p), n.to_be_bytes().to_vec()))
            .collect();
        pos.extend(
            rebuilding
                .iter()
                .filter(|c| **c == consumer)
                .map(|c| (rebuilding_key(c), vec![1u8])),
        );
        named.push(("positions", pos));
        rows::digest(named)
    }

    #[tokio::test]
    async fn checksum_encoding_matches_the_embedded_store() {
        let dir = tempfile::tempdir().unwrap();
        let embedded = EmbeddedViewStore::open(dir.path()).unwrap();
        assert_eq!(
            embedded.checksum().await.unwrap(),
            scylla_digest(CORE_VIEWS, &[], &[], &[])
        );
        let activity = emosation_core::view::ACTIVITY_VIEWS;
        assert_eq!(
            embedded.checksum_of(activity).await.unwrap(),
            scylla_digest(activity, &[], &[], &[])
        );

        let mut changes = sample_changes();
        embedded
            .apply(ViewBatch {
                consumer: CORE_VIEWS.into(),
                changes: changes.clone(),
                positions: vec![(Topic::Rooms, 3, 61), (Topic::Accounts, 0, 1)],
            })
            .await
            .unwrap();
        let mut busy = emosation_core::view::ActivityView::new("r1", 1_795_305_600_000);
        busy.count("u2");
        busy.count("u1");
        let hour = vec![(
            ViewKey::Activity {
                room_id: "r1".into(),
                hour: busy.hour,
            },
            Some(ViewValue::Activity(busy)),
        )];
        embedded
            .apply(ViewBatch {
                consumer: activity.into(),
                changes: hour.clone(),
                positions: vec![(Topic::Rooms, 3, 64)],
            })
            .await
            .unwrap();
        embedded
            .apply(ViewBatch {
                consumer: "analyzer".into(),
                changes: vec![],
                positions: vec![(Topic::Rooms, 12, 7)],
            })
            .await
            .unwrap();
        embedded.set_rebuilding("analyzer", true).await.unwrap();
        changes.extend(hour);
        let positions = [
            ("analyzer", Topic::Rooms, 12, 7),
            (activity, Topic::Rooms, 3, 64),
            (CORE_VIEWS, Topic::Rooms, 3, 61),
            (CORE_VIEWS, Topic::Accounts, 0, 1),
        ];
        for consumer in [CORE_VIEWS, activity, "analyzer"] {
            assert_eq!(
                embedded.checksum_of(consumer).await.unwrap(),
                scylla_digest(consumer, &changes, &positions, &["analyzer"]),
                "{consumer}"
            );
        }
        assert_eq!(
            embedded.checksum().await.unwrap(),
            embedded.checksum_of(CORE_VIEWS).await.unwrap()
        );
    }

    #[test]
    fn a_batch_plans_its_index_rows() {
        let changes: Vec<Change> = sample_changes()
            .into_iter()
            .map(|(k, v)| (k, v.map(|v| postcard::to_allocvec(&v).unwrap())))
            .chain([(
                ViewKey::Member {
                    room_id: "r1".into(),
                    user_id: "u2".into(),
                },
                None,
            )])
            .chain((2..5).map(|i| {
                (
                    ViewKey::Message {
                        room_id: "r1".into(),
                        message_id: format!("00030000000000{i:02x}"),
                    },
                    Some(vec![i]),
                )
            }))
            .collect();
        let ops = plan(&changes);
        let puts = ops.iter().filter(|o| matches!(o, Op::Put(..))).count();
        let deletes = ops.iter().filter(|o| matches!(o, Op::Delete(..))).count();
        assert_eq!((puts, deletes), (12, 1));
        assert!(ops.iter().any(|o| matches!(
            o,
            Op::RoomIndex {
                room_id: "r1",
                on: true
            }
        )));
        assert!(ops.iter().any(|o| matches!(
            o,
            Op::UserRoom {
                user_id: "u1",
                room_id: "r1",
                on: true
            }
        )));
        assert!(ops.iter().any(|o| matches!(
            o,
            Op::UserRoom {
                user_id: "u2",
                room_id: "r1",
                on: false
            }
        )));
        let buckets: Vec<_> = ops
            .iter()
            .filter_map(|o| match o {
                Op::Bucket { kind, bucket, .. } => Some((*kind, *bucket)),
                _ => None,
            })
            .collect();
        // Four messages and one emotion, all in one bucket: one row per kind.
        assert_eq!(
            buckets,
            [
                (MESSAGES, bucket_of("0003000000000001")),
                (EMOTIONS, bucket_of("0003000000000001"))
            ]
        );
    }

    /// `settle` ran once per process: an `apply` that failed after its
    /// position committed (a write timeout on an entity, which the driver
    /// does not retry) left the position ahead of the entities, and every
    /// later batch of the process built on it. Now a failed or cancelled
    /// apply leaves the consumer to be settled again.
    #[test]
    fn an_apply_that_fails_after_its_first_write_is_settled_again() {
        let settled = Mutex::new(HashSet::from(["core".to_owned(), "activity".to_owned()]));
        {
            let _failed = Unsettled::arm(&settled, "core");
            // `?` returned here: the guard drops armed.
        }
        assert!(
            !settled.lock().unwrap().contains("core"),
            "settled again before the next batch"
        );
        assert!(
            settled.lock().unwrap().contains("activity"),
            "other consumers untouched"
        );

        settled.lock().unwrap().insert("core".to_owned());
        Unsettled::arm(&settled, "core").disarm();
        assert!(
            settled.lock().unwrap().contains("core"),
            "a completed apply keeps it settled"
        );

        // A cancelled apply (its future dropped mid-write) too.
        let fut = async {
            let guard = Unsettled::arm(&settled, "core");
            std::future::pending::<()>().await;
            guard.disarm();
        };
        let mut fut = Box::pin(fut);
        let waker = std::task::Waker::noop();
        assert!(
            fut.as_mut()
                .poll(&mut std::task::Context::from_waker(waker))
                .is_pending()
        );
        drop(fut);
        assert!(!settled.lock().unwrap().contains("core"));
    }

    #[test]
    fn local_timestamps_only_increase() {
        let a = now_micros();
        let b = now_micros();
        assert!(b > a);
        assert!(a > 1_600_000_000_000_000, "microseconds since the epoch");
    }
}
