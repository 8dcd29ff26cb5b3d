//! [`EmbeddedLog`]: the durable partitioned log on fjall, with group commit.
//!
//! One fjall keyspace per topic holds every partition, keyed
//! `partition (u32 BE) ++ offset (u64 BE)`, so a partition is one contiguous,
//! ordered key range. A single writer thread owns offset assignment: it takes
//! every append waiting in its queue, writes them as one atomic batch, syncs
//! the journal once (`fsync`), and only then acknowledges them all and advances
//! the partitions' durable end offsets. Readers never see past the durable end,
//! so nothing downstream can act on a record a crash could still take back.
//!
//! Every consumer of a live system reads at the tail (the projector, fan-out
//! tailers, analytics consumers: several readers per partition, each woken by
//! every group commit). The writer keeps each partition's newest durable
//! records in memory ([`Tail`], the role the page cache plays for Kafka), and
//! a fetch from within it copies a few reference-counted handles instead of
//! seeking the LSM tree; older reads (replay, catch-up) go to fjall.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use emosation_core::ids::{LogPosition, Topic, Topology, partition_for};
use emosation_core::ports::{AppendTicket, Log, LogEntry, LogError, MemoryUse};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use tokio::sync::{oneshot, watch};
use tracing::{debug, error};

use crate::{OpenError, consumer_partition_key};

/// A topic's keyspace: read only by range scans (fetch), never by point
/// lookups of missing keys, so no bloom filters to build; large data blocks,
/// so a replay reading a partition from the start decodes few of them.
/// Each topic's memtable is flushed to a table file at 16 MiB, and the
/// journals at 64 MiB (fjall's defaults, 64 MiB per keyspace and 512 MiB,
/// held a server's newest records in memory for tens of minutes: its RSS
/// grew for as long in the soak bench). Readers at the tail are served from
/// the partitions' own in-memory tails, not the memtable.
fn topic_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default()
        .expect_point_read_hits(true)
        .data_block_size_policy(fjall::config::BlockSizePolicy::all(64 * 1024))
        .max_memtable_size(16 * 1024 * 1024)
}

/// The journals at most, after which the oldest memtables are flushed:
/// also about the most the memtables hold together.
const JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

/// The block cache (table files' blocks read by fetches that miss the
/// tails: catch-ups and replays).
const BLOCK_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// A group commit slower than this is logged (write and sync times).
const SLOW_COMMIT: Duration = Duration::from_millis(20);

/// The most appends one group commit takes from the queue.
const MAX_GROUP: usize = 16_384;

/// Newest records a partition keeps in memory for tail reads, at most
/// (fewer if they exceed [`TAIL_BYTES`]).
const TAIL_RECORDS: usize = 4096;
/// Bytes of keys and values a partition's tail holds, at most.
const TAIL_BYTES: usize = 4 << 20;

/// A partition's newest durable records, in offset order, without gaps.
#[derive(Default)]
struct Tail {
    entries: std::collections::VecDeque<LogEntry>,
    bytes: usize,
}

impl Tail {
    fn push(&mut self, entry: LogEntry) {
        if self.entries.back().is_some_and(|last| last.offset + 1 != entry.offset) {
            // Never a gap: a tail starts again from the record appended.
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += entry.key.len() + entry.value.len();
        self.entries.push_back(entry);
        while self.entries.len() > TAIL_RECORDS || (self.bytes > TAIL_BYTES && self.entries.len() > 1) {
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= old.key.len() + old.value.len();
            }
        }
    }

    /// The records in `[from, upto)` if the tail holds all of them.
    fn read(&self, from: u64, upto: u64) -> Option<Vec<LogEntry>> {
        let first = self.entries.front()?.offset;
        if from < first || upto > first + self.entries.len() as u64 {
            return None;
        }
        let skip = (from - first) as usize;
        Some(
            self.entries
                .range(skip..skip + (upto - from) as usize)
                .cloned()
                .collect(),
        )
    }
}

struct Append {
    topic: Topic,
    partition: u32,
    key: Bytes,
    value: Bytes,
    reply: oneshot::Sender<Result<LogPosition, LogError>>,
}

/// A consumer group's offset, stored durably by the writer with the next group
/// commit (never an fsync of its own on the caller's thread).
struct OffsetCommit {
    key: Vec<u8>,
    next_offset: u64,
    reply: oneshot::Sender<Result<(), LogError>>,
}

enum Request {
    Append(Append),
    Commit(OffsetCommit),
}

struct Shared {
    db: Database,
    topics: HashMap<Topic, Keyspace>,
    groups: Keyspace,
    topology: Topology,
    /// Durable end offset of each partition; readers wait on these.
    ends: HashMap<(Topic, u32), watch::Sender<u64>>,
    /// Each partition's newest durable records (only ever below its end).
    tails: HashMap<(Topic, u32), Mutex<Tail>>,
    /// Why the writer stopped, once a group commit failed.
    failed: OnceLock<String>,
    /// Appends left before an injected commit failure (`u64::MAX`: none).
    fault_after: AtomicU64,
}

impl Shared {
    /// The error for a request the writer will never take: the log is
    /// shutting down, or its writer stopped after a failed commit.
    fn closed(&self) -> LogError {
        match self.failed.get() {
            Some(why) => LogError::Storage(format!("the log writer stopped: {why}")),
            None => LogError::Closed,
        }
    }

    /// An injected failure for a group commit of `appends` records, if the
    /// countdown of [`EmbeddedLog::fail_after_appends`] runs out in it.
    fn injected_fault(&self, appends: u64) -> Option<fjall::Error> {
        let left = self.fault_after.load(Ordering::Acquire);
        if left == u64::MAX {
            return None;
        }
        if left >= appends {
            self.fault_after.store(left - appends, Ordering::Release);
            return None;
        }
        Some(fjall::Error::Io(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            "injected fault: no space left on device",
        )))
    }
}

/// The embedded log. Cheap to share behind an `Arc`; dropping the last handle
/// stops the writer after it has finished the appends already queued.
pub struct EmbeddedLog {
    shared: Arc<Shared>,
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for EmbeddedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLog")
            .field("topology", &self.shared.topology)
            .finish()
    }
}

fn storage(e: impl std::fmt::Display) -> LogError {
    LogError::Storage(e.to_string())
}

fn entry_key(partition: u32, offset: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4..].copy_from_slice(&offset.to_be_bytes());
    k
}

/// Stored value: timestamp (i64 BE) ++ key length (u32 BE) ++ key ++ value.
fn encode_entry(ts: i64, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + key.len() + value.len());
    v.extend_from_slice(&ts.to_be_bytes());
    v.extend_from_slice(&(key.len() as u32).to_be_bytes());
    v.extend_from_slice(key);
    v.extend_from_slice(value);
    v
}

fn decode_entry(offset: u64, raw: Bytes) -> Result<LogEntry, LogError> {
    if raw.len() < 12 {
        return Err(storage(format!("log entry at offset {offset} is truncated")));
    }
    let ts = i64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
    let klen = u32::from_be_bytes(raw[8..12].try_into().expect("4 bytes")) as usize;
    if raw.len() < 12 + klen {
        return Err(storage(format!("log entry at offset {offset} has a bad key length")));
    }
    Ok(LogEntry {
        offset,
        key: raw.slice(12..12 + klen),
        value: raw.slice(12 + klen..),
        timestamp_ms: ts,
    })
}

impl EmbeddedLog {
    /// Opens (or creates) the log in `dir`. The topology is fixed at creation:
    /// a log reopened with another topology keeps the one it was created with.
    pub fn open(dir: &Path, topology: Topology) -> Result<Self, OpenError> {
        let err = |e: fjall::Error| OpenError::Open {
            what: "embedded log",
            path: dir.display().to_string(),
            reason: e.to_string(),
        };
        let db = Database::builder(dir)
            .max_journaling_size(JOURNAL_BYTES)
            .cache_size(BLOCK_CACHE_BYTES)
            .open()
            .map_err(err)?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default).map_err(err)?;
        let topology = match meta.get("topology").map_err(err)? {
            Some(v) if v.len() == 8 => Topology {
                accounts_partitions: u32::from_be_bytes(v[..4].try_into().expect("4 bytes")),
                rooms_partitions: u32::from_be_bytes(v[4..].try_into().expect("4 bytes")),
            },
            _ => {
                let mut v = topology.accounts_partitions.to_be_bytes().to_vec();
                v.extend_from_slice(&topology.rooms_partitions.to_be_bytes());
                meta.insert("topology", v).map_err(err)?;
                db.persist(PersistMode::SyncAll).map_err(err)?;
                topology
            }
        };
        let mut topics = HashMap::new();
        let mut ends = HashMap::new();
        let mut tails = HashMap::new();
        let mut next = HashMap::new();
        for topic in Topic::ALL {
            let ks = db.keyspace(topic.name(), topic_options).map_err(err)?;
            for p in 0..topology.partitions(topic) {
                let end = match ks.prefix(p.to_be_bytes()).next_back() {
                    Some(g) => {
                        let k = g.key().map_err(err)?;
                        u64::from_be_bytes(k[4..12].try_into().expect("12-byte key")) + 1
                    }
                    None => 0,
                };
                next.insert((topic, p), end);
                ends.insert((topic, p), watch::channel(end).0);
                tails.insert((topic, p), Mutex::new(Tail::default()));
            }
            topics.insert(topic, ks);
        }
        let groups = db.keyspace("groups", KeyspaceCreateOptions::default).map_err(err)?;
        let shared = Arc::new(Shared {
            db,
            topics,
            groups,
            topology,
            ends,
            tails,
            failed: OnceLock::new(),
            fault_after: AtomicU64::new(u64::MAX),
        });
        let (tx, rx) = mpsc::channel();
        let w = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer_loop(&w, rx, next))
            .map_err(|e| OpenError::Open {
                what: "embedded log",
                path: dir.display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(EmbeddedLog {
            shared,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    fn end_watch(&self, topic: Topic, partition: u32) -> Result<&watch::Sender<u64>, LogError> {
        self.shared
            .ends
            .get(&(topic, partition))
            .ok_or_else(|| LogError::UnknownPartition {
                topic: topic.name().to_owned(),
                partition,
            })
    }

    /// Testing only: the writer fails, as on a full disk, the first group
    /// commit that would take the log past `appends` more records (it
    /// stores none of that group), and stops as it does on any failed commit.
    #[doc(hidden)]
    pub fn fail_after_appends(&self, appends: u64) {
        self.shared.fault_after.store(appends, Ordering::Release);
    }

    /// Appends many records, each acknowledged individually; the writer folds
    /// them into as few group commits as it can. Used by benchmarks and bulk loads.
    pub fn append_many(
        &self,
        items: impl IntoIterator<Item = (Topic, Bytes, Bytes)>,
    ) -> Vec<oneshot::Receiver<Result<LogPosition, LogError>>> {
        let guard = self.tx.lock().expect("log sender lock");
        items
            .into_iter()
            .map(|(topic, key, value)| {
                let (reply, rx) = oneshot::channel();
                let partition = partition_for(&key, self.shared.topology.partitions(topic));
                if let Some(tx) = guard.as_ref() {
                    let _ = tx.send(Request::Append(Append {
                        topic,
                        partition,
                        key,
                        value,
                        reply,
                    }));
                }
                rx
            })
            .collect()
    }
}

impl Drop for EmbeddedLog {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and exit.
        self.tx.lock().expect("log sender lock").take();
        if let Some(w) = self.writer.lock().expect("writer lock").take() {
            let _ = w.join();
        }
    }
}

fn writer_loop(shared: &Shared, rx: mpsc::Receiver<Request>, mut next: HashMap<(Topic, u32), u64>) {
    let mut group: Vec<Request> = Vec::with_capacity(1024);
    while let Ok(first) = rx.recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(a) => group.push(a),
                Err(_) => break,
            }
        }
        let ts = emosation_core::time::now_ms();
        let mut batch = shared.db.batch();
        let mut positions = Vec::with_capacity(group.len());
        // Each partition's new records, in offset order: its new end is the
        // last one's offset + 1.
        let mut appended: HashMap<(Topic, u32), Vec<LogEntry>> = HashMap::new();
        for r in &group {
            match r {
                Request::Append(a) => {
                    let Some(n) = next.get_mut(&(a.topic, a.partition)) else {
                        positions.push(None);
                        continue;
                    };
                    let offset = *n;
                    *n += 1;
                    batch.insert(
                        &shared.topics[&a.topic],
                        entry_key(a.partition, offset),
                        encode_entry(ts, &a.key, &a.value),
                    );
                    positions.push(Some(LogPosition::new(a.partition, offset)));
                    appended.entry((a.topic, a.partition)).or_default().push(LogEntry {
                        offset,
                        key: a.key.clone(),
                        value: a.value.clone(),
                        timestamp_ms: ts,
                    });
                }
                Request::Commit(c) => {
                    batch.insert(&shared.groups, c.key.clone(), c.next_offset.to_be_bytes());
                    positions.push(None);
                }
            }
        }
        let started = std::time::Instant::now();
        let appends = group.iter().filter(|r| matches!(r, Request::Append(_))).count() as u64;
        let result = match shared.injected_fault(appends) {
            Some(fault) => Err(fault),
            None => batch.commit(),
        }
        .and_then(|_| {
            let written = started.elapsed();
            let synced = shared.db.persist(PersistMode::SyncAll);
            let total = started.elapsed();
            metrics::histogram!("emosation_log_group_commit_seconds", "phase" => "write").record(written.as_secs_f64());
            metrics::histogram!("emosation_log_group_commit_seconds", "phase" => "sync")
                .record((total - written).as_secs_f64());
            if total > SLOW_COMMIT {
                tracing::warn!(?written, ?total, records = group.len(), "slow group commit");
            }
            synced
        });
        match result {
            Ok(()) => {
                // Durable now: into the tails, then visible to readers. The
                // new ends are visible before any append is acknowledged (a
                // client may use its cursor at once), but readers waiting
                // for them are woken only after the acknowledgements: an
                // appender that goes on to wait for what a reader does with
                // its record (ingest waits for the fold's decision) is
                // waiting before the readers run, so its answer does not
                // queue behind their work (a fan-out writing to a thousand
                // sockets).
                let mut advanced = Vec::with_capacity(appended.len());
                for (tp, entries) in appended {
                    let end = entries.last().map_or(0, |e| e.offset + 1);
                    let mut tail = shared.tails[&tp].lock().expect("tail lock");
                    for entry in entries {
                        tail.push(entry);
                    }
                    drop(tail);
                    shared.ends[&tp].send_if_modified(|e| {
                        *e = end;
                        false
                    });
                    advanced.push(tp);
                }
                debug!(requests = group.len(), "group commit");
                for (r, pos) in group.drain(..).zip(positions) {
                    match r {
                        Request::Append(a) => {
                            let res = pos.ok_or_else(|| LogError::UnknownPartition {
                                topic: a.topic.name().to_owned(),
                                partition: a.partition,
                            });
                            let _ = a.reply.send(res);
                        }
                        Request::Commit(c) => {
                            let _ = c.reply.send(Ok(()));
                        }
                    }
                }
                for tp in advanced {
                    shared.ends[&tp].send_modify(|_| {});
                }
            }
            Err(e) => {
                // The batch may be partly on disk; offsets handed out in it must
                // not be reused, so this writer stops and the log reports errors
                // until it is reopened (which recovers offsets from disk).
                error!(error = %e, "group commit failed; log writer stopping");
                let _ = shared.failed.set(e.to_string());
                for r in group.drain(..) {
                    match r {
                        Request::Append(a) => {
                            let _ = a.reply.send(Err(storage(&e)));
                        }
                        Request::Commit(c) => {
                            let _ = c.reply.send(Err(storage(&e)));
                        }
                    }
                }
                return;
            }
        }
    }
}

#[async_trait]
impl Log for EmbeddedLog {
    fn topology(&self) -> Topology {
        self.shared.topology
    }

    fn append(&self, topic: Topic, key: &[u8], value: Bytes) -> AppendTicket {
        let partition = partition_for(key, self.shared.topology.partitions(topic));
        let (reply, rx) = oneshot::channel();
        // Queued to the writer thread now, under the sender's lock: the
        // writer takes requests in queue order, so call order is log order.
        let queued = {
            let guard = self.tx.lock().expect("log sender lock");
            guard.as_ref().ok_or(LogError::Closed).and_then(|tx| {
                tx.send(Request::Append(Append {
                    topic,
                    partition,
                    key: Bytes::copy_from_slice(key),
                    value,
                    reply,
                }))
                .map_err(|_| self.shared.closed())
            })
        };
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            queued?;
            rx.await.map_err(|_| shared.closed())?
        })
    }

    async fn fetch(
        &self,
        topic: Topic,
        partition: u32,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<LogEntry>, LogError> {
        let ends = self.end_watch(topic, partition)?;
        let mut end = *ends.borrow();
        if from > end {
            return Err(LogError::OffsetOutOfRange {
                topic: topic.name().to_owned(),
                partition,
                offset: from,
                end,
            });
        }
        if from == end && !wait.is_zero() {
            let mut rx = ends.subscribe();
            if let Ok(Ok(e)) = tokio::time::timeout(wait, rx.wait_for(|e| *e > from)).await {
                end = *e;
            }
        }
        if from >= end || max == 0 {
            return Ok(Vec::new());
        }
        let upto = end.min(from.saturating_add(max as u64));
        if let Some(entries) = self.shared.tails[&(topic, partition)]
            .lock()
            .expect("tail lock")
            .read(from, upto)
        {
            return Ok(entries);
        }
        let ks = &self.shared.topics[&topic];
        let mut out = Vec::with_capacity((upto - from) as usize);
        for g in ks.range(entry_key(partition, from)..entry_key(partition, upto)) {
            let (k, v) = g.into_inner().map_err(storage)?;
            let offset = u64::from_be_bytes(k[4..12].try_into().map_err(storage)?);
            out.push(decode_entry(offset, Bytes::from(v))?);
        }
        Ok(out)
    }

    async fn end_offset(&self, topic: Topic, partition: u32) -> Result<u64, LogError> {
        Ok(*self.end_watch(topic, partition)?.borrow())
    }

    async fn commit(&self, group: &str, topic: Topic, partition: u32, next_offset: u64) -> Result<(), LogError> {
        self.end_watch(topic, partition)?;
        let (reply, rx) = oneshot::channel();
        {
            let guard = self.tx.lock().expect("log sender lock");
            let tx = guard.as_ref().ok_or(LogError::Closed)?;
            tx.send(Request::Commit(OffsetCommit {
                key: consumer_partition_key(group, topic, partition),
                next_offset,
                reply,
            }))
            .map_err(|_| self.shared.closed())?;
        }
        rx.await.map_err(|_| self.shared.closed())?
    }

    async fn committed(&self, group: &str, topic: Topic, partition: u32) -> Result<Option<u64>, LogError> {
        self.end_watch(topic, partition)?;
        let v = self
            .shared
            .groups
            .get(consumer_partition_key(group, topic, partition))
            .map_err(storage)?;
        Ok(v.and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)))
    }

    fn memory(&self) -> Vec<MemoryUse> {
        let tails = self
            .shared
            .tails
            .values()
            .map(|t| t.lock().expect("tail lock").bytes as u64)
            .sum();
        let db = &self.shared.db;
        vec![
            MemoryUse {
                part: "log_tails",
                bytes: tails,
                limit: (self.shared.tails.len() * TAIL_BYTES) as u64,
            },
            MemoryUse {
                part: "log_block_cache",
                bytes: db.cache_size(),
                limit: db.cache_capacity(),
            },
            MemoryUse {
                part: "log_memtables",
                bytes: db.write_buffer_size(),
                limit: JOURNAL_BYTES,
            },
        ]
    }

    fn health(&self) -> Result<(), String> {
        match self.shared.failed.get() {
            Some(why) => Err(format!("the log writer stopped after a failed commit: {why}")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_commit_stops_the_writer_and_the_log_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path(), Topology::default()).unwrap();
        assert_eq!(log.health(), Ok(()));
        log.fail_after_appends(2);
        for i in 0..2u8 {
            log.append(Topic::Rooms, b"room", Bytes::from(vec![i])).await.unwrap();
        }
        let failed = log.append(Topic::Rooms, b"room", Bytes::from_static(b"x")).await;
        assert!(matches!(failed, Err(LogError::Storage(_))), "{failed:?}");
        let why = log.health().unwrap_err();
        assert!(why.contains("no space left"), "{why}");
        // Every later write is refused as a storage failure, not as a
        // shutdown: the log is up, its writer is not.
        let later = log.append(Topic::Rooms, b"room", Bytes::from_static(b"y")).await;
        assert!(matches!(later, Err(LogError::Storage(_))), "{later:?}");
        let commit = log.commit("g", Topic::Rooms, 0, 1).await;
        assert!(matches!(commit, Err(LogError::Storage(_))), "{commit:?}");
        // What was acknowledged stays readable.
        let p = partition_for(b"room", Topology::default().partitions(Topic::Rooms));
        assert_eq!(log.end_offset(Topic::Rooms, p).await.unwrap(), 2);
    }
}
