//! Replay: drop the core views and rebuild them from offset 0 of every partition.
//!
//! Replay folds with the same [`fold`] as the live projector, record by record,
//! but writes differently, because it knows two things the live path does not:
//! the store started empty, and each partition is folded by exactly one task.
//! So a task keeps its partition's *mutable* entities (users, rooms,
//! memberships, sessions) in memory, authoritative — an entity it has not
//! written does not exist — and writes them once, at the end, in ordinary
//! batches carrying the partition's final position.
//!
//! The *write-once* entities (messages, idempotency keys) are encoded as the
//! fold writes them ([`BulkRows`]) and bulk-loaded ([`ViewStore::bulk_load`]).
//! A finished partition hands its rows to a buffer shared by all partitions,
//! which is bulk-loaded when it holds [`ReplayOptions::ingest_buffer`] bytes
//! and at the end: on an LSM store each bulk load is one sorted run, and runs
//! whose key ranges overlap (every partition's rooms span the key space) must
//! later be merged by compaction, so fewer, larger loads cost less. A partition
//! too large for its rows to wait loads them itself every
//! [`ReplayOptions::ingest_chunk`] rows. The fold reads a write-once entity only
//! through [`write_once_keys_read_by`], so a batch's reads are known before it
//! is folded: an entity of an earlier batch is decoded from the partition's
//! rows, or read back from the store when a set of the hashes of loaded keys
//! says it may be there; one written by the same batch is kept typed too.
//! The views are marked as being rebuilt for the duration, so an interrupted
//! replay is never mistaken for complete views.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use emosation_core::bulk::BulkRows;
use emosation_core::fold;
use emosation_core::fold::write_once_keys_read_by;
use emosation_core::ids::Topic;
use emosation_core::ports::{CORE_VIEWS, Log, StoreError, ViewBatch, ViewStore};
use emosation_core::view::{FoldState, ViewKey, ViewValue};
use rustc_hash::FxHasher;
use tokio::task::JoinSet;

use crate::ConsumerError;

type Fx = BuildHasherDefault<FxHasher>;

/// Figures from a replay.
#[derive(Debug, Clone, Copy)]
pub struct ReplayStats {
    pub records: u64,
    pub elapsed: Duration,
}

impl ReplayStats {
    pub fn per_second(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Records fetched per read during replay.
const FETCH: usize = 8192;
/// How replay runs.
#[derive(Debug, Clone, Copy)]
pub struct ReplayOptions {
    /// Write-once rows a partition holds before it bulk-loads them itself.
    pub ingest_chunk: usize,
    /// Encoded bytes of finished partitions' write-once rows held before they
    /// are bulk-loaded together (memory traded for fewer overlapping runs).
    pub ingest_buffer: usize,
    /// Partitions folded at once (default: four per core, 4 to 16). More
    /// partitions than cores: a partition waiting for its log reads or for a
    /// bulk load (which runs on blocking threads) leaves its core to another
    /// partition's fold. Each holds its partition's mutable entities and up
    /// to `ingest_chunk` write-once rows in memory.
    pub parallel: usize,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            ingest_chunk: 1 << 20,
            ingest_buffer: 512 << 20,
            parallel: std::thread::available_parallelism()
                .map(|n| n.get() * 4)
                .unwrap_or(8)
                .clamp(4, 16),
        }
    }
}
/// Mutable entities per view batch when a partition is done.
const FINAL_BATCH: usize = 32 * 1024;

/// One partition's state during replay.
struct PartitionState {
    ingest_chunk: usize,
    /// Mutable entities, authoritative: absent means it does not exist.
    mem: HashMap<ViewKey, Option<ViewValue>, Fx>,
    /// Write-once entities not yet bulk-loaded, encoded as the fold writes them.
    pending: BulkRows,
    /// Key hash → row of `pending`; `collided` holds the rare rows whose hash
    /// was already taken.
    pending_index: HashMap<u64, u32, Fx>,
    collided: Vec<u32>,
    /// Hashes of write-once keys already bulk-loaded into the store.
    ingested: HashSet<u64, Fx>,
    /// The write-once keys the batch being folded reads, by key hash: the
    /// index of the last record in the batch that reads one. (Two keys
    /// sharing a hash share the later index, which only keeps a value longer.)
    batch_reads: HashMap<u64, usize, Fx>,
    /// The index in its batch of the record being folded.
    folding: usize,
    /// Typed values of the write-once keys the batch reads: from earlier
    /// batches, or written by this one and read again later in it.
    loaded: HashMap<ViewKey, ViewValue, Fx>,
    /// The first error encoding a write-once entity (`put` cannot fail).
    failed: Option<StoreError>,
    /// Scratch for encoding a key to compare with a pending row.
    key_buf: Vec<u8>,
}

/// Presized hash sets of write-once keys stay below this many entries.
const PRESIZE_LIMIT: usize = 4 << 20;

impl PartitionState {
    /// `records`: how many records the partition holds (to presize its maps).
    fn new(ingest_chunk: usize, records: u64) -> Self {
        // A record writes at most two write-once entities.
        let expected = (records as usize).saturating_mul(2);
        PartitionState {
            ingest_chunk,
            mem: HashMap::default(),
            pending: BulkRows::new(),
            pending_index: HashMap::with_capacity_and_hasher(expected.min(ingest_chunk), Fx::default()),
            collided: Vec::new(),
            ingested: HashSet::with_capacity_and_hasher(
                if expected > ingest_chunk {
                    expected.min(PRESIZE_LIMIT)
                } else {
                    0
                },
                Fx::default(),
            ),
            batch_reads: HashMap::default(),
            folding: 0,
            loaded: HashMap::default(),
            failed: None,
            key_buf: Vec::new(),
        }
    }

    /// A pending write-once entity, compared by the full key.
    fn pending_get(&mut self, hash: u64, key: &ViewKey) -> Result<Option<ViewValue>, StoreError> {
        self.key_buf.clear();
        key.encode_into(&mut self.key_buf);
        let rows = &self.pending;
        let wanted = &self.key_buf;
        let found = self
            .pending_index
            .get(&hash)
            .copied()
            .filter(|&i| rows.key(i) == wanted.as_slice() && rows.table(i) == key.table())
            .or_else(|| {
                self.collided
                    .iter()
                    .copied()
                    .find(|&i| rows.key(i) == wanted.as_slice() && rows.table(i) == key.table())
            });
        found.map(|i| rows.decode_value(i)).transpose()
    }
}

impl FoldState for PartitionState {
    fn get(&self, key: &ViewKey) -> Option<&ViewValue> {
        if key.is_write_once() {
            self.loaded.get(key)
        } else {
            self.mem.get(key).and_then(Option::as_ref)
        }
    }
    fn put(&mut self, key: ViewKey, value: ViewValue) {
        if !key.is_write_once() {
            self.mem.insert(key, Some(value));
            return;
        }
        let hash = key_hash(&key);
        match self.pending.push(&key, &value) {
            Ok(i) => match self.pending_index.entry(hash) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(i);
                }
                std::collections::hash_map::Entry::Occupied(_) => self.collided.push(i),
            },
            Err(e) => {
                self.failed.get_or_insert(e);
            }
        }
        if self.batch_reads.get(&hash).is_some_and(|&last| last > self.folding) {
            self.loaded.insert(key, value);
        }
    }
    fn delete(&mut self, key: &ViewKey) {
        debug_assert!(!key.is_write_once(), "write-once entities are never deleted");
        self.mem.insert(key.clone(), None);
    }
    fn update(&mut self, key: &ViewKey, f: impl FnOnce(&mut ViewValue)) {
        debug_assert!(!key.is_write_once(), "write-once entities are never updated");
        if let Some(Some(v)) = self.mem.get_mut(key) {
            f(v);
        }
    }
}

fn key_hash(k: &ViewKey) -> u64 {
    Fx::default().hash_one(k)
}

impl PartitionState {
    /// Moves the pending write-once entities into the store.
    async fn bulk_load(&mut self, store: &dyn ViewStore) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // A collided row's hash is an indexed row's: the index has them all.
        self.ingested.extend(self.pending_index.keys().copied());
        self.pending_index.clear();
        self.collided.clear();
        store.bulk_load(std::mem::take(&mut self.pending)).await
    }

    async fn fold_entries(
        &mut self,
        store: &dyn ViewStore,
        topic: Topic,
        partition: u32,
        entries: &[emosation_core::ports::LogEntry],
    ) -> Result<(), StoreError> {
        let records = crate::decode_entries(topic, partition, entries);
        // The write-once entities this batch reads: from the rows of earlier
        // batches, or from the store if they may have been bulk-loaded.
        self.loaded.clear();
        self.batch_reads.clear();
        let mut wanted = Vec::new();
        let mut wanted_set = HashSet::<ViewKey, Fx>::default();
        for (n, (_, r)) in records.iter().enumerate() {
            for k in write_once_keys_read_by(r) {
                let h = key_hash(&k);
                let seen = self.batch_reads.insert(h, n).is_some();
                if seen && (self.loaded.contains_key(&k) || wanted_set.contains(&k)) {
                    continue;
                }
                if let Some(v) = self.pending_get(h, &k)? {
                    self.loaded.insert(k, v);
                } else if self.ingested.contains(&h) {
                    wanted_set.insert(k.clone());
                    wanted.push(k);
                }
            }
        }
        if !wanted.is_empty() {
            let values = store.load(&wanted).await?;
            for (k, v) in wanted.into_iter().zip(values) {
                if let Some(v) = v {
                    self.loaded.insert(k, v);
                }
            }
        }
        for (n, (pos, r)) in records.into_iter().enumerate() {
            self.folding = n;
            let _ = fold(self, pos, r);
        }
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if self.pending.len() >= self.ingest_chunk {
            self.bulk_load(store).await?;
        }
        Ok(())
    }

    /// Writes the mutable entities, the last batch carrying the position.
    async fn finish(
        mut self,
        store: &dyn ViewStore,
        shared: &SharedRows,
        topic: Topic,
        partition: u32,
        next: u64,
    ) -> Result<(), StoreError> {
        // Nothing reads this partition's rows any more: they can wait for a
        // larger bulk load, sorted here, where other partitions' folds keep
        // the other cores busy, rather than in the load at the end.
        self.pending.sort_buckets();
        shared.add(store, std::mem::take(&mut self.pending), next).await?;
        let mut changes: Vec<_> = self.mem.into_iter().filter(|(_, v)| v.is_some()).collect();
        loop {
            let rest = changes.split_off(changes.len().min(FINAL_BATCH));
            let last = rest.is_empty();
            store
                .apply(ViewBatch {
                    consumer: CORE_VIEWS.to_owned(),
                    changes,
                    // An empty partition has no position, as with the live projector.
                    positions: if last && next > 0 {
                        vec![(topic, partition, next)]
                    } else {
                        vec![]
                    },
                })
                .await?;
            if last {
                return Ok(());
            }
            changes = rest;
        }
    }
}

/// Finished partitions' write-once rows, bulk-loaded together: once they hold
/// `limit` bytes; once, early, when the partitions they come from hold half of
/// the log's records (so that load overlaps folding the other half, and the
/// one left for the end is smaller); and at the end of the replay. Without a
/// byte limit reached, that is two runs per table: few enough that an LSM
/// store does not compact them (fjall merges level 0 from four runs).
struct SharedRows {
    held: std::sync::Mutex<Held>,
    limit: usize,
    half: u64,
}

#[derive(Default)]
struct Held {
    rows: BulkRows,
    records: u64,
    loaded_early: bool,
}

impl SharedRows {
    fn new(limit: usize, total_records: u64) -> Self {
        SharedRows {
            held: Default::default(),
            limit,
            half: total_records / 2,
        }
    }

    /// Adds the rows of a finished partition of `records` records.
    async fn add(&self, store: &dyn ViewStore, rows: BulkRows, records: u64) -> Result<(), StoreError> {
        let full = {
            let mut held = self.held.lock().expect("replay rows lock");
            held.rows.append(rows);
            held.records += records;
            let early = !held.loaded_early && held.records >= self.half;
            if early || held.rows.bytes() >= self.limit {
                held.loaded_early |= early;
                held.records = 0;
                Some(std::mem::take(&mut held.rows))
            } else {
                None
            }
        };
        match full {
            Some(rows) if !rows.is_empty() => store.bulk_load(rows).await,
            _ => Ok(()),
        }
    }

    async fn flush(&self, store: &dyn ViewStore) -> Result<(), StoreError> {
        let rows = std::mem::take(&mut self.held.lock().expect("replay rows lock").rows);
        if rows.is_empty() {
            return Ok(());
        }
        store.bulk_load(rows).await
    }
}

/// Drops the core views and rebuilds them from offset 0 of every partition, up
/// to the end offsets seen at the start. `progress(done, total)` is called as
/// records are folded. Safe on a stopped deployment; a live projector must not
/// run at the same time.
pub async fn replay(
    log: Arc<dyn Log>,
    store: Arc<dyn ViewStore>,
    progress: Arc<dyn Fn(u64, u64) + Send + Sync>,
) -> Result<ReplayStats, ConsumerError> {
    replay_with(log, store, progress, ReplayOptions::default()).await
}

/// [`replay`] with explicit options.
pub async fn replay_with(
    log: Arc<dyn Log>,
    store: Arc<dyn ViewStore>,
    progress: Arc<dyn Fn(u64, u64) + Send + Sync>,
    options: ReplayOptions,
) -> Result<ReplayStats, ConsumerError> {
    let started = Instant::now();
    let topo = log.topology();
    let mut work = Vec::new();
    let mut total = 0;
    for topic in Topic::ALL {
        for partition in 0..topo.partitions(topic) {
            let end = log.end_offset(topic, partition).await?;
            total += end;
            work.push((topic, partition, end));
        }
    }
    // Largest partitions first, so the tail of the run stays parallel.
    work.sort_by_key(|w| std::cmp::Reverse(w.2));
    store.set_rebuilding(CORE_VIEWS, true).await?;
    store.clear(CORE_VIEWS).await?;
    let done = Arc::new(AtomicU64::new(0));
    progress(0, total);
    let parallel = options.parallel.max(1);
    let shared = Arc::new(SharedRows::new(options.ingest_buffer, total));
    let mut tasks = JoinSet::new();
    let mut queue = work.into_iter();
    loop {
        while tasks.len() < parallel {
            let Some((topic, partition, end)) = queue.next() else {
                break;
            };
            let (log, store, shared, done, progress) = (
                Arc::clone(&log),
                Arc::clone(&store),
                Arc::clone(&shared),
                Arc::clone(&done),
                Arc::clone(&progress),
            );
            tasks.spawn(async move {
                let mut state = PartitionState::new(options.ingest_chunk.max(1), end);
                let mut next = 0;
                while next < end {
                    let want = FETCH.min((end - next) as usize);
                    let entries = crate::fetch_existing(&*log, topic, partition, next, end, want, "replay").await?;
                    next = entries.last().map_or(next, |e| e.offset + 1);
                    state.fold_entries(&*store, topic, partition, &entries).await?;
                    let d = done.fetch_add(entries.len() as u64, Ordering::Relaxed) + entries.len() as u64;
                    progress(d, total);
                }
                state.finish(&*store, &shared, topic, partition, next).await?;
                Ok::<_, ConsumerError>(())
            });
        }
        match tasks.join_next().await {
            Some(res) => res.map_err(|e| StoreError::Storage(format!("replay task died: {e}")))??,
            None => break,
        }
    }
    shared.flush(&*store).await?;
    store.set_rebuilding(CORE_VIEWS, false).await?;
    Ok(ReplayStats {
        records: done.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}
