//! [`EmbeddedViewStore`]: the view store on fjall.
//!
//! One keyspace per view table (see [`emosation_core::view::TABLES`]) with the
//! canonical key bytes of [`ViewKey::encode`], plus `user_rooms` (a user's
//! memberships, the other direction of `members`) and `positions`. The
//! `activity` keyspace (the activity consumer's) is keyed `room\0hour` with
//! the hour as 16 hex digits, so a room's hours are one range scan. Values are
//! postcard-encoded [`ViewValue`]s. A batch and its positions are one atomic
//! fjall write batch, so the views and the positions they claim never diverge.
//! Batches are not synced: after a machine crash the store may fall back to an
//! earlier consistent batch, and the projector re-applies from its positions.
//! A failed write (a full disk) poisons the fjall database, which then
//! refuses every write until it is reopened: the store remembers the first
//! such failure and reports it through [`ViewStore::health`].

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use async_trait::async_trait;
use emosation_core::bulk::BulkRows;
use emosation_core::ids::Topic;
use emosation_core::ports::{CORE_VIEWS, MemoryUse, StoreError, ViewBatch, ViewQueries, ViewStore};
use emosation_core::view::{
    ActivityView, EmotionView, MemberView, MessageView, RoomView, TABLES, ViewKey, ViewValue, hour_field, table_owner,
};
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use sha2::{Digest, Sha256};

use super::entity_cache::EntityCache;
use crate::{OpenError, consumer_partition_key};

pub struct EmbeddedViewStore {
    db: Database,
    /// Swapped whole by `clear`, which drops and recreates the keyspaces.
    handles: RwLock<Arc<Handles>>,
    positions: Keyspace,
    /// Bulk loads run one at a time: concurrent fjall ingestions into one
    /// keyspace can lose tables (seen in replay tests).
    ingesting: Arc<Mutex<()>>,
    /// Hot entities, written through by `apply` (see [`EntityCache`]).
    cache: EntityCache,
    /// The first write failure that poisoned the database.
    poisoned: OnceLock<String>,
}

/// The keyspaces of the views (every consumer's tables).
struct Handles {
    /// In the order of [`TABLES`].
    tables: Vec<Keyspace>,
    user_rooms: Keyspace,
}

impl Handles {
    fn open(db: &Database) -> fjall::Result<Handles> {
        Ok(Handles {
            tables: TABLES
                .iter()
                .map(|t| db.keyspace(t, || table_options(t)))
                .collect::<Result<Vec<_>, _>>()?,
            user_rooms: db.keyspace("user_rooms", || {
                KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
            })?,
        })
    }

    fn table(&self, name: &str) -> &Keyspace {
        &self.tables[table_index(name)]
    }
}

impl std::fmt::Debug for EmbeddedViewStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedViewStore").finish_non_exhaustive()
    }
}

/// A table's memtable, flushed to a table file when it reaches this size
/// (of keys and values; a skiplist holds about 2.5 times that in memory,
/// as heaptrack showed under the soak bench). At 8 MiB the soak's RSS takes
/// 15–20 minutes to reach its steady state, the busy tables' memtables
/// filling towards the journals' bound; at 4 MiB (and the log's at 8) the
/// more frequent flushes doubled `rooms100`'s p99 (7.4–8.1 → 10.7–13.6 ms,
/// side by side), so the memtables stay at 8 MiB.
const MEMTABLE_BYTES: u64 = 8 * 1024 * 1024;
/// The views' journals at most, after which the oldest memtables are
/// flushed (fjall's minimum; its default is 512 MiB).
const JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

/// The block cache (table files' blocks read by lookups and scans that miss
/// the entity cache).
const BLOCK_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// Per-table tuning. History is read by range scans (bigger blocks) and
/// point-read only for keys that exist (read markers name real messages), so it
/// needs no bloom filters; building them is a large part of bulk-load cost.
///
/// Every table's memtable is flushed at [`MEMTABLE_BYTES`] (fjall's default
/// is 64 MiB per keyspace, with no bound on their sum): a chat server's rows
/// are rewritten on every message (the room, the author's membership), and
/// each write leaves a version in the memtable until it is flushed, so with
/// the default a server at 200 messages/s grew by 36 MB a minute for twenty
/// minutes before its first flush, and a scan of the rooms table stepped over
/// every version of every busy room (the soak bench).
fn table_options(table: &str) -> KeyspaceCreateOptions {
    let opts = KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES);
    match table {
        "messages" => opts
            .expect_point_read_hits(true)
            .data_block_size_policy(fjall::config::BlockSizePolicy::all(16 * 1024)),
        _ => opts,
    }
}

/// A bulk load's work: `(table, range of its sorted rows)`, one ingestion
/// (one sorted run) each, loaded in parallel. A table holding more than its
/// share of the bytes (one core's worth) is cut into key ranges of about a
/// share each, so that the load keeps every core busy — the load at the end
/// of a replay has nothing else to overlap with, and message rows are most of
/// its bytes. The ranges are disjoint, so the runs do not overlap, and pieces
/// stay above [`MIN_PIECE`] bytes, so a small load is not cut into many runs.
fn ingest_pieces(
    rows: &BulkRows,
    sorted: &[Vec<u32>],
    cores: usize,
    min_piece: usize,
) -> Vec<(usize, std::ops::Range<usize>)> {
    // A table's cost: its bytes, and as much again per row as a small row's.
    let cost: Vec<usize> = (0..sorted.len())
        .map(|t| rows.table_bytes(t) + ROW_COST * sorted[t].len())
        .collect();
    let cores = cores.max(1);
    let share = (cost.iter().sum::<usize>() / cores).max(min_piece);
    let mut pieces = Vec::new();
    for (table, order) in sorted.iter().enumerate() {
        // A table's rows are of much the same size: equal counts of rows.
        let n = cost[table].div_ceil(share).clamp(1, cores);
        let per = order.len().div_ceil(n).max(1);
        pieces.extend(
            (0..order.len())
                .step_by(per)
                .map(|at| (table, at..(at + per).min(order.len()))),
        );
    }
    pieces
}

/// The smallest key range [`ingest_pieces`] cuts off a table.
const MIN_PIECE: usize = 8 << 20;
/// What writing a row costs beyond its bytes, in bytes: an ingestion writes
/// half a million 50-byte rows in about the time it takes for a quarter of a
/// million 150-byte rows.
const ROW_COST: usize = 100;

fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(e.to_string())
}

fn table_index(table: &str) -> usize {
    TABLES.iter().position(|t| *t == table).expect("known table")
}

/// Whether a `positions` key is `consumer`'s (a position or its rebuilding mark).
pub(crate) fn is_position_of(key: &[u8], consumer: &str) -> bool {
    key.starts_with(consumer.as_bytes()) && matches!(key.get(consumer.len()), Some(0 | 1))
}

/// Sorts after every position key of the consumer (`consumer\0topic…`).
pub(crate) fn rebuilding_key(consumer: &str) -> Vec<u8> {
    let mut k = consumer.as_bytes().to_vec();
    k.extend_from_slice(b"\x01rebuilding");
    k
}

fn join2(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

fn prefix_of(id: &str) -> Vec<u8> {
    let mut k = id.as_bytes().to_vec();
    k.push(0);
    k
}

/// The keys `id \0 …` after `id \0 after` (all of them without `after`):
/// the bounds of a page of a table keyed by two ids.
fn page_of(id: &str, after: Option<&str>) -> (Vec<u8>, Vec<u8>) {
    let prefix = prefix_of(id);
    let mut end = prefix.clone();
    *end.last_mut().expect("non-empty") = 1;
    let mut start = prefix;
    if let Some(a) = after {
        // The smallest key past `id \0 after` (ids hold no NUL).
        start.extend_from_slice(a.as_bytes());
        start.push(0);
    }
    (start, end)
}

impl EmbeddedViewStore {
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        let err = |e: fjall::Error| OpenError::Open {
            what: "embedded view store",
            path: dir.display().to_string(),
            reason: e.to_string(),
        };
        let db = Database::builder(dir)
            .max_journaling_size(JOURNAL_BYTES)
            .cache_size(BLOCK_CACHE_BYTES)
            .open()
            .map_err(err)?;
        let handles = Handles::open(&db).map_err(err)?;
        let positions = db
            .keyspace("positions", || {
                KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
            })
            .map_err(err)?;
        Ok(EmbeddedViewStore {
            db,
            handles: RwLock::new(Arc::new(handles)),
            positions,
            ingesting: Arc::new(Mutex::new(())),
            cache: EntityCache::default(),
            poisoned: OnceLock::new(),
        })
    }

    /// A write batch's commit, remembering a failure that leaves the
    /// database refusing writes: an I/O error on the journal poisons it
    /// (fjall accepts no write after it, since it can no longer vouch for
    /// what is on disk), and a poisoned database answers `Poisoned`.
    fn committed(&self, result: fjall::Result<()>) -> Result<(), StoreError> {
        result.map_err(|e| {
            if matches!(e, fjall::Error::Io(_) | fjall::Error::Poisoned) {
                let _ = self.poisoned.set(e.to_string());
            }
            storage(e)
        })
    }

    fn handles(&self) -> Arc<Handles> {
        Arc::clone(&self.handles.read().expect("view handles lock"))
    }

    fn decode(table: &'static str, raw: &[u8]) -> Result<ViewValue, StoreError> {
        postcard::from_bytes(raw).map_err(|e| StoreError::Corrupt {
            table,
            reason: e.to_string(),
        })
    }

    fn get(&self, key: &ViewKey) -> Result<Option<ViewValue>, StoreError> {
        let epoch = match self.cache.get(key) {
            Ok(v) => return Ok(Some(v)),
            Err(epoch) => epoch,
        };
        let table = key.table();
        let encoded = key.encode();
        match self.handles().table(table).get(&encoded).map_err(storage)? {
            Some(raw) => {
                let v = Self::decode(table, &raw)?;
                self.cache.fill(key, &v, encoded.len() + raw.len(), epoch);
                Ok(Some(v))
            }
            None => Ok(None),
        }
    }

    fn scan<T>(
        &self,
        table: &'static str,
        iter: impl Iterator<Item = fjall::Guard>,
        pick: impl Fn(ViewValue) -> Option<T>,
        limit: usize,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        for g in iter {
            if out.len() >= limit {
                break;
            }
            let v = g.value().map_err(storage)?;
            if let Some(t) = pick(Self::decode(table, &v)?) {
                out.push(t);
            }
        }
        Ok(out)
    }
}

fn as_member(v: ViewValue) -> Option<MemberView> {
    match v {
        ViewValue::Member(m) => Some(m),
        _ => None,
    }
}

#[async_trait]
impl ViewQueries for EmbeddedViewStore {
    async fn load(&self, keys: &[ViewKey]) -> Result<Vec<Option<ViewValue>>, StoreError> {
        keys.iter().map(|k| self.get(k)).collect()
    }

    async fn rooms(&self, after: Option<&str>, limit: usize) -> Result<Vec<RoomView>, StoreError> {
        let h = self.handles();
        let ks = h.table("rooms");
        let iter: Box<dyn Iterator<Item = fjall::Guard>> = match after {
            Some(a) => {
                let mut from = a.as_bytes().to_vec();
                from.push(0);
                Box::new(ks.range(from..))
            }
            None => Box::new(ks.iter()),
        };
        self.scan(
            "rooms",
            iter,
            |v| match v {
                ViewValue::Room(r) => Some(r),
                _ => None,
            },
            limit,
        )
    }

    async fn members(&self, room_id: &str, after: Option<&str>, limit: usize) -> Result<Vec<MemberView>, StoreError> {
        let (start, end) = page_of(room_id, after);
        self.scan(
            "members",
            self.handles().table("members").range(start..end),
            as_member,
            limit,
        )
    }

    async fn usernames(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let h = self.handles();
        let mut from = prefix.as_bytes().to_vec();
        if let Some(a) = after.filter(|a| a.as_bytes() >= prefix.as_bytes()) {
            from = a.as_bytes().to_vec();
            from.push(0);
        }
        let mut out = Vec::new();
        for g in h.table("usernames").range(from..) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = g.into_inner().map_err(storage)?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            let name = String::from_utf8(k.to_vec()).map_err(storage)?;
            if let ViewValue::Username(id) = ViewValue::decode(&v).map_err(|e| StoreError::Corrupt {
                table: "usernames",
                reason: e.to_string(),
            })? {
                out.push((name, id));
            }
        }
        Ok(out)
    }

    async fn friends(
        &self,
        user_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<emosation_core::view::FriendView>, StoreError> {
        let (start, end) = page_of(user_id, after);
        self.scan(
            "friends",
            self.handles().table("friends").range(start..end),
            |v| match v {
                ViewValue::Friend(f) => Some(f),
                _ => None,
            },
            limit,
        )
    }

    async fn user_rooms(
        &self,
        user_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MemberView>, StoreError> {
        let mut out = Vec::new();
        let (start, end) = page_of(user_id, after);
        for g in self.handles().user_rooms.range(start..end) {
            if out.len() >= limit {
                break;
            }
            let k = g.key().map_err(storage)?;
            let room_id = std::str::from_utf8(&k[user_id.len() + 1..]).map_err(storage)?;
            if let Some(m) = self.member(room_id, user_id).await? {
                out.push(m);
            }
        }
        Ok(out)
    }

    async fn history(&self, room_id: &str, before: Option<&str>, limit: usize) -> Result<Vec<MessageView>, StoreError> {
        let h = self.handles();
        let ks = h.table("messages");
        let start = prefix_of(room_id);
        let mut end = start.clone();
        match before {
            Some(b) => end.extend_from_slice(b.as_bytes()),
            None => *end.last_mut().expect("non-empty") = 1,
        }
        let mut out = self.scan(
            "messages",
            ks.range(start..end).rev(),
            |v| match v {
                ViewValue::Message(m) => Some(m),
                _ => None,
            },
            limit,
        )?;
        out.reverse();
        Ok(out)
    }

    async fn emotions(&self, room_id: &str, limit: usize) -> Result<Vec<EmotionView>, StoreError> {
        let h = self.handles();
        let mut out = self.scan(
            "emotions",
            h.table("emotions").prefix(prefix_of(room_id)).rev(),
            |v| match v {
                ViewValue::Emotion(e) => Some(e),
                _ => None,
            },
            limit,
        )?;
        out.reverse();
        Ok(out)
    }

    async fn activity(&self, room_id: &str, from_hour: i64, to_hour: i64) -> Result<Vec<ActivityView>, StoreError> {
        if from_hour >= to_hour {
            return Ok(Vec::new());
        }
        let h = self.handles();
        let start = join2(room_id, &hour_field(from_hour));
        let end = join2(room_id, &hour_field(to_hour));
        self.scan(
            "activity",
            h.table("activity").range(start..end),
            |v| match v {
                ViewValue::Activity(a) => Some(a),
                _ => None,
            },
            usize::MAX,
        )
    }
}

#[async_trait]
impl ViewStore for EmbeddedViewStore {
    async fn apply(&self, batch: ViewBatch) -> Result<(), StoreError> {
        let h = self.handles();
        let mut b = self.db.batch();
        // Each change's size as stored, for the cache's byte bound.
        let mut sizes = Vec::with_capacity(batch.changes.len());
        for (key, value) in &batch.changes {
            let ks = h.table(key.table());
            let k = key.encode();
            match value {
                Some(v) => {
                    let v = postcard::to_allocvec(v).map_err(storage)?;
                    sizes.push(k.len() + v.len());
                    b.insert(ks, k, v)
                }
                None => {
                    sizes.push(0);
                    b.remove(ks, k)
                }
            }
            // The user's index row is written with the membership and
            // removed with it; a member already stored (cached: the fold
            // read it this batch) has it, and a post rewrites members often.
            if let ViewKey::Member { room_id, user_id } = key {
                let idx = join2(user_id, room_id);
                match value {
                    Some(_) if self.cache.contains(key) => {}
                    Some(_) => b.insert(&h.user_rooms, idx, []),
                    None => b.remove(&h.user_rooms, idx),
                }
            }
        }
        for (topic, partition, next) in &batch.positions {
            b.insert(
                &self.positions,
                consumer_partition_key(&batch.consumer, *topic, *partition),
                next.to_be_bytes(),
            );
        }
        // A commit takes fjall's journal lock, which its flush workers hold
        // while they sync the journal: tens of milliseconds at times on a
        // busy disk, which is why the projector beside sockets runs on a
        // thread of its own (docs/architecture.md).
        let started = std::time::Instant::now();
        self.committed(b.commit())?;
        metrics::histogram!("emosation_views_commit_seconds").record(started.elapsed().as_secs_f64());
        self.cache.write(
            batch
                .changes
                .into_iter()
                .zip(sizes)
                .map(|((k, v), bytes)| (k, v, bytes)),
        );
        Ok(())
    }

    async fn position(&self, consumer: &str, topic: Topic, partition: u32) -> Result<u64, StoreError> {
        let v = self
            .positions
            .get(consumer_partition_key(consumer, topic, partition))
            .map_err(storage)?;
        Ok(v.and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    async fn clear(&self, consumer: &str) -> Result<(), StoreError> {
        {
            // Drop and recreate the keyspaces rather than `Keyspace::clear`:
            // a journaled clear is replayed on recovery over tables bulk-loaded
            // after it, which would lose a replay's ingested entities.
            let mut guard = self.handles.write().expect("view handles lock");
            let doomed: Vec<&Keyspace> = TABLES
                .iter()
                .zip(&guard.tables)
                .filter(|(t, _)| table_owner(t) == consumer)
                .map(|(_, ks)| ks)
                .chain((consumer == CORE_VIEWS).then_some(&guard.user_rooms))
                .collect();
            if !doomed.is_empty() {
                for ks in doomed {
                    self.db.delete_keyspace(ks.clone()).map_err(storage)?;
                }
                // Reopens the other consumers' keyspaces as they are.
                *guard = Arc::new(Handles::open(&self.db).map_err(storage)?);
            }
        }
        // After the swap: a read of the dropped tables still in flight
        // cannot fill the cache any more.
        self.cache.clear();
        let mut b = self.db.batch();
        for g in self.positions.prefix(prefix_of(consumer)) {
            b.remove(&self.positions, g.key().map_err(storage)?);
        }
        self.committed(b.commit())
    }

    async fn bulk_load(&self, rows: BulkRows) -> Result<(), StoreError> {
        // Each table's rows become sorted runs (LSM ingestions), written
        // straight from the rows' encoded bytes; tables, and the key ranges
        // of a large table, load in parallel ([`ingest_pieces`]).
        // Sorting and writing runs off the async workers, so a replay keeps
        // folding other partitions meanwhile.
        let h = self.handles();
        let gate = Arc::clone(&self.ingesting);
        let load_all = move || {
            let _one_at_a_time = gate.lock().expect("ingest lock");
            // Each table sorted on a thread of its own.
            let sorted = std::thread::scope(|scope| {
                let rows = &rows;
                let sorts: Vec<_> = (0..TABLES.len())
                    .map(|t| rows.has_table(t).then(|| scope.spawn(move || rows.sorted_table(t))))
                    .collect();
                sorts
                    .into_iter()
                    .map(|s| match s {
                        None => Ok(Vec::new()),
                        Some(s) => s.join().map_err(|_| storage("a bulk load sort thread panicked")),
                    })
                    .collect::<Result<Vec<Vec<u32>>, StoreError>>()
            })?;
            let load = |order: &[u32], ks: &Keyspace| -> Result<(), StoreError> {
                let mut ingestion = ks.start_ingestion().map_err(storage)?;
                for &i in order {
                    ingestion.write(rows.key(i), rows.value(i)).map_err(storage)?;
                }
                ingestion.finish().map_err(storage)
            };
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let pieces = ingest_pieces(&rows, &sorted, cores, MIN_PIECE);
            std::thread::scope(|scope| {
                let loads: Vec<_> = pieces
                    .iter()
                    .map(|&(table, ref range)| {
                        let (order, ks) = (&sorted[table][range.clone()], &h.tables[table]);
                        scope.spawn(move || load(order, ks))
                    })
                    .collect();
                loads
                    .into_iter()
                    .try_for_each(|l| l.join().unwrap_or_else(|_| Err(storage("a bulk load thread panicked"))))
            })
        };
        tokio::task::spawn_blocking(load_all)
            .await
            .unwrap_or_else(|e| Err(storage(format!("bulk load task: {e}"))))
    }

    async fn set_rebuilding(&self, consumer: &str, on: bool) -> Result<(), StoreError> {
        let key = rebuilding_key(consumer);
        if on {
            self.positions.insert(key, [1u8]).map_err(storage)
        } else {
            self.positions.remove(key).map_err(storage)
        }
    }

    fn memory(&self) -> Vec<MemoryUse> {
        let (bytes, limit) = self.cache.bytes();
        vec![
            MemoryUse {
                part: "view_entity_cache",
                bytes: bytes as u64,
                limit: limit as u64,
            },
            MemoryUse {
                part: "view_block_cache",
                bytes: self.db.cache_size(),
                limit: self.db.cache_capacity(),
            },
            MemoryUse {
                part: "view_memtables",
                bytes: self.db.write_buffer_size(),
                limit: JOURNAL_BYTES,
            },
        ]
    }

    fn health(&self) -> Result<(), String> {
        match self.poisoned.get() {
            Some(why) => Err(format!("the view store refuses writes after a failed one: {why}")),
            None => Ok(()),
        }
    }

    async fn rebuilding(&self, consumer: &str) -> Result<bool, StoreError> {
        self.positions.contains_key(rebuilding_key(consumer)).map_err(storage)
    }

    async fn checksum_of(&self, consumer: &str) -> Result<String, StoreError> {
        let mut h = Sha256::new();
        let mut feed = |name: &str, rows: &mut dyn Iterator<Item = fjall::Guard>| -> Result<(), StoreError> {
            h.update((name.len() as u32).to_be_bytes());
            h.update(name.as_bytes());
            for g in rows {
                let (k, v) = g.into_inner().map_err(storage)?;
                if name == "positions" && !is_position_of(&k, consumer) {
                    continue;
                }
                h.update((k.len() as u32).to_be_bytes());
                h.update(&k);
                h.update((v.len() as u32).to_be_bytes());
                h.update(&v);
            }
            Ok(())
        };
        let handles = self.handles();
        for (name, ks) in TABLES.iter().zip(&handles.tables) {
            if table_owner(name) == consumer {
                feed(name, &mut ks.iter())?;
            }
        }
        feed("positions", &mut self.positions.prefix(consumer.as_bytes()))?;
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_that_poisons_the_database_is_reported_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedViewStore::open(dir.path()).unwrap();
        assert_eq!(store.health(), Ok(()));
        store.committed(Ok(())).unwrap();
        let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left on device");
        assert!(store.committed(Err(fjall::Error::Io(full))).is_err());
        let why = store.health().unwrap_err();
        assert!(why.contains("no space left"), "{why}");
        // The first failure is the one reported.
        let _ = store.committed(Err(fjall::Error::Poisoned));
        assert!(store.health().unwrap_err().contains("no space left"));
    }

    fn message_rows(rooms: usize, per_room: usize, text: usize) -> BulkRows {
        let mut rows = BulkRows::new();
        for n in 0..rooms * per_room {
            let room = format!("room-{}", n % rooms);
            let id = format!("{n:016x}");
            let key = ViewKey::Message {
                room_id: room.clone(),
                message_id: id.clone(),
            };
            let value = ViewValue::Username("x".repeat(text));
            rows.push(&key, &value).unwrap();
            let key = ViewKey::ClientMsg {
                room_id: room,
                user_id: "u".into(),
                client_msg_id: id.clone(),
            };
            rows.push(&key, &ViewValue::ClientMsg(id)).unwrap();
        }
        rows
    }

    #[test]
    fn pieces_cover_every_sorted_row_once_in_order() {
        let rows = message_rows(7, 300, 200);
        let sorted = rows.sorted();
        for (cores, min_piece) in [(1, 0), (2, 0), (4, 0), (2, usize::MAX), (3, 50_000)] {
            let pieces = ingest_pieces(&rows, &sorted, cores, min_piece);
            for (t, order) in sorted.iter().enumerate() {
                let ranges: Vec<_> = pieces
                    .iter()
                    .filter(|(pt, _)| *pt == t)
                    .map(|(_, r)| r.clone())
                    .collect();
                assert!(
                    ranges.len() <= cores,
                    "{cores} cores: at most one piece per core per table"
                );
                let covered: Vec<usize> = ranges.iter().flat_map(|r| r.clone()).collect();
                assert_eq!(
                    covered,
                    (0..order.len()).collect::<Vec<_>>(),
                    "{cores} cores, table {t}"
                );
                assert!(ranges.iter().all(|r| !r.is_empty()));
            }
        }
        // The large table is cut only when cores and size allow it.
        let messages = TABLES.iter().position(|t| *t == "messages").unwrap();
        let cut = |cores, min| {
            ingest_pieces(&rows, &sorted, cores, min)
                .iter()
                .filter(|(t, _)| *t == messages)
                .count()
        };
        assert_eq!(cut(1, 0), 1);
        assert_eq!(cut(2, 0), 2, "message rows are most of the bytes: one piece per core");
        assert_eq!(cut(2, usize::MAX), 1, "a small load is never cut");
    }
}
