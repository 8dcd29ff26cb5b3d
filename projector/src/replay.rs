//! Replay: drop the core views and rebuild them from offset 0 of every partition.
//!
//! Replay folds with the same [`fold`] as the live projector, record by record,
//! but writes differently, because it knows two things the live path does not:
//! the store started empty, and each partition is folded by exactly one task.
//! So a task keeps its partition's *mutable* entities (users, rooms,
//! memberships, sessions) in memory, authoritative — an entity it has not
//! written does not exist — and writes them once, at the end, in ordinary
//! batches carrying the partition's final position. The *write-once* entities
//! (messages, idempotency keys) are bulk-loaded in sorted chunks
//! ([`ViewStore::ingest`]) as they accumulate; a set of their key hashes tells
//! whether a later lookup can hit (then the store is asked) or certainly
//! misses. The views are marked as being rebuilt for the duration, so an
//! interrupted replay is never mistaken for complete views.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use emosation_core::ids::Topic;
use emosation_core::ports::{CORE_VIEWS, Log, LogError, StoreError, ViewBatch, ViewStore};
use emosation_core::view::{FoldState, ViewKey, ViewValue};
use emosation_core::{fold, keys_read_by};
use rustc_hash::FxHasher;
use tokio::task::JoinSet;

use crate::ProjectorError;

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

/// How long a replay waits for records the log says exist before failing.
const REPLAY_STALL: Duration = Duration::from_secs(120);

/// Records fetched per read during replay.
const FETCH: usize = 8192;
/// How replay runs.
#[derive(Debug, Clone, Copy)]
pub struct ReplayOptions {
    /// Write-once entities accumulated per partition before a bulk load.
    pub ingest_chunk: usize,
    /// Partitions folded at once (default: the number of cores, at most 4).
    pub parallel: usize,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            ingest_chunk: 256 * 1024,
            parallel: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .min(4),
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
    /// Write-once entities written by the batch being folded (boxed: they
    /// move twice more before the bulk load, and messages are large).
    batch_once: HashMap<ViewKey, Box<ViewValue>, Fx>,
    /// Write-once entities of earlier batches, waiting for the next bulk load,
    /// in a flat vector (large maps of large values cost more in copying and
    /// cache misses than the fold itself).
    pending: Vec<(ViewKey, Box<ViewValue>)>,
    /// Key hash → index into `pending`; `collided` holds the rare indexes whose
    /// hash was already taken.
    pending_index: HashMap<u64, u32, Fx>,
    collided: Vec<u32>,
    /// Hashes of write-once keys already bulk-loaded into the store.
    ingested: HashSet<u64, Fx>,
    /// Write-once entities of earlier batches that this batch reads.
    loaded: HashMap<ViewKey, ViewValue, Fx>,
}

impl PartitionState {
    fn new(ingest_chunk: usize) -> Self {
        PartitionState {
            ingest_chunk,
            mem: HashMap::default(),
            batch_once: HashMap::with_capacity_and_hasher(FETCH * 2, Fx::default()),
            pending: Vec::new(),
            pending_index: HashMap::default(),
            collided: Vec::new(),
            ingested: HashSet::default(),
            loaded: HashMap::default(),
        }
    }

    /// A pending write-once entity, compared by the full key.
    fn pending_get(&self, hash: u64, key: &ViewKey) -> Option<&ViewValue> {
        let direct = self.pending_index.get(&hash).map(|&i| &self.pending[i as usize]);
        if let Some((k, v)) = direct
            && k == key
        {
            return Some(&**v);
        }
        self.collided
            .iter()
            .map(|&i| &self.pending[i as usize])
            .find(|(k, _)| k == key)
            .map(|(_, v)| &**v)
    }

    /// Moves the batch's write-once entities to `pending`.
    fn close_batch(&mut self) {
        for (k, v) in self.batch_once.drain() {
            let i = self.pending.len() as u32;
            match self.pending_index.entry(key_hash(&k)) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(i);
                }
                std::collections::hash_map::Entry::Occupied(_) => self.collided.push(i),
            }
            self.pending.push((k, v));
        }
    }
}

impl FoldState for PartitionState {
    fn get(&self, key: &ViewKey) -> Option<&ViewValue> {
        if key.is_write_once() {
            self.batch_once.get(key).map(|v| &**v).or_else(|| self.loaded.get(key))
        } else {
            self.mem.get(key).and_then(Option::as_ref)
        }
    }
    fn put(&mut self, key: ViewKey, value: ViewValue) {
        if key.is_write_once() {
            self.batch_once.insert(key, Box::new(value));
        } else {
            self.mem.insert(key, Some(value));
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
    async fn ingest(&mut self, store: &dyn ViewStore) -> Result<(), StoreError> {
        self.close_batch();
        if self.pending.is_empty() {
            return Ok(());
        }
        for h in self.pending_index.keys() {
            self.ingested.insert(*h);
        }
        for &i in &self.collided {
            self.ingested.insert(key_hash(&self.pending[i as usize].0));
        }
        self.pending_index.clear();
        self.collided.clear();
        store.ingest(std::mem::take(&mut self.pending)).await
    }

    async fn fold_entries(
        &mut self,
        store: &dyn ViewStore,
        topic: Topic,
        partition: u32,
        entries: &[emosation_core::ports::LogEntry],
    ) -> Result<(), StoreError> {
        let records = crate::decode_entries(topic, partition, entries);
        // Write-once keys of earlier batches are looked up in `pending`, or
        // read back from the store if they may have been bulk-loaded.
        self.loaded.clear();
        let mut wanted = Vec::new();
        for (_, r) in &records {
            for k in keys_read_by(r) {
                if !k.is_write_once() || self.loaded.contains_key(&k) {
                    continue;
                }
                let h = key_hash(&k);
                if let Some(v) = self.pending_get(h, &k) {
                    let v = v.clone();
                    self.loaded.insert(k, v);
                } else if self.ingested.contains(&h) {
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
        for (pos, r) in &records {
            let _ = fold(self, *pos, r);
        }
        self.close_batch();
        if self.pending.len() >= self.ingest_chunk {
            self.ingest(store).await?;
        }
        Ok(())
    }

    /// Writes the mutable entities, the last batch carrying the position.
    async fn finish(
        mut self,
        store: &dyn ViewStore,
        topic: Topic,
        partition: u32,
        next: u64,
    ) -> Result<(), StoreError> {
        self.ingest(store).await?;
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

/// Drops the core views and rebuilds them from offset 0 of every partition, up
/// to the end offsets seen at the start. `progress(done, total)` is called as
/// records are folded. Safe on a stopped deployment; a live projector must not
/// run at the same time.
pub async fn replay(
    log: Arc<dyn Log>,
    store: Arc<dyn ViewStore>,
    progress: Arc<dyn Fn(u64, u64) + Send + Sync>,
) -> Result<ReplayStats, ProjectorError> {
    replay_with(log, store, progress, ReplayOptions::default()).await
}

/// [`replay`] with explicit options.
pub async fn replay_with(
    log: Arc<dyn Log>,
    store: Arc<dyn ViewStore>,
    progress: Arc<dyn Fn(u64, u64) + Send + Sync>,
    options: ReplayOptions,
) -> Result<ReplayStats, ProjectorError> {
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
    let mut tasks = JoinSet::new();
    let mut queue = work.into_iter();
    loop {
        while tasks.len() < parallel {
            let Some((topic, partition, end)) = queue.next() else {
                break;
            };
            let (log, store, done, progress) = (
                Arc::clone(&log),
                Arc::clone(&store),
                Arc::clone(&done),
                Arc::clone(&progress),
            );
            tasks.spawn(async move {
                let mut state = PartitionState::new(options.ingest_chunk.max(1));
                let mut next = 0;
                let mut stalled_since: Option<Instant> = None;
                while next < end {
                    let want = FETCH.min((end - next) as usize);
                    // The records up to `end` exist: an empty answer means a
                    // slow broker (a remote log's first read of a large
                    // partition), never the end. Wait and ask again; only a
                    // long stall is an error — a replay never stops short.
                    let wait = if stalled_since.is_some() {
                        Duration::from_secs(1)
                    } else {
                        Duration::ZERO
                    };
                    let entries = log.fetch(topic, partition, next, want, wait).await?;
                    let Some(last) = entries.last() else {
                        let since = *stalled_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > REPLAY_STALL {
                            return Err(ProjectorError::Log(LogError::Storage(format!(
                                "replay of {}/{partition} stalled at offset {next} of {end} for {REPLAY_STALL:?}",
                                topic.name()
                            ))));
                        }
                        continue;
                    };
                    stalled_since = None;
                    next = last.offset + 1;
                    state.fold_entries(&*store, topic, partition, &entries).await?;
                    let d = done.fetch_add(entries.len() as u64, Ordering::Relaxed) + entries.len() as u64;
                    progress(d, total);
                }
                state.finish(&*store, topic, partition, next).await?;
                Ok::<_, ProjectorError>(())
            });
        }
        match tasks.join_next().await {
            Some(res) => res.map_err(|e| StoreError::Storage(format!("replay task died: {e}")))??,
            None => break,
        }
    }
    store.set_rebuilding(CORE_VIEWS, false).await?;
    Ok(ReplayStats {
        records: done.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}
