//! The projector: folds the log into the views.
//!
//! Each topic partition is folded by its own task of the runner
//! ([`emosation_runner`]), which is safe because the fold only reads state
//! written by records of the same partition key (see
//! `emosation_core::fold`). A task fetches a batch, decodes it, prefetches the
//! keys the fold will read, folds every record into an overlay, and commits the
//! changed entities **together with the partition's next offset** in one view
//! batch. Only then does it publish each record's decision, so an ingest node
//! that answers its client after the decision already sees the views updated.
//! Restarted, a task resumes from the offset stored in the views: no record is
//! applied twice or skipped.
//!
//! # Layout
//! - [`Projector`]: the live projector, a [`Consumer`] the runner drives,
//!   whose checkpoint is the core views; [`ConsumerError`] (the runner's)
//!   is its error, and replay's.
//! - [`replay`](mod@replay): drop the views and rebuild them from the start of the log.
//! - [`fold_batch`]: the shared step, decode → prefetch → fold → changes.

pub mod replay;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use emosation_core::ids::{LogPosition, Topic};
use emosation_core::ports::{
    CORE_VIEWS, Decision, Decisions, Log, LogEntry, LogError, StoreError, ViewBatch, ViewStore,
};
use emosation_core::view::{Overlay, ViewKey};
use emosation_core::{Outcome, Record, fold, keys_read_by};
pub use emosation_runner::ConsumerError;
use emosation_runner::{Checkpoint, Consumer, run_consumer};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// One folded record.
#[derive(Debug)]
pub struct Folded {
    pub request_id: i64,
    pub position: LogPosition,
    pub outcome: Outcome,
}

/// Decodes a partition's entries. Records that do not decode, or that are
/// not where their topic and key route them ([`Record::is_routed_by`]: a
/// producer that picked its own partitioner or key), are skipped and
/// counted: a poison record must not stop the views, and every fold — live
/// or replay — skips it alike. Folding a misrouted record would let two
/// partitions' folds share state, and replay would then depend on how they
/// interleave.
pub fn decode_entries(topic: Topic, partition: u32, entries: &[LogEntry]) -> Vec<(LogPosition, Record)> {
    let mut records = Vec::with_capacity(entries.len());
    for e in entries {
        match emosation_schemas::decode(&e.value) {
            Ok(r) if r.is_routed_by(topic, &e.key) => records.push((LogPosition::new(partition, e.offset), r)),
            Ok(r) => {
                metrics::counter!("emosation_projector_misrouted_records_total", "topic" => topic.name()).increment(1);
                warn!(
                    topic = topic.name(),
                    partition,
                    offset = e.offset,
                    kind = r.kind(),
                    "skipping a record not keyed by its routing key"
                );
            }
            Err(err) => {
                metrics::counter!("emosation_projector_undecodable_records_total", "topic" => topic.name())
                    .increment(1);
                warn!(topic = topic.name(), partition, offset = e.offset, error = %err, "skipping undecodable record");
            }
        }
    }
    records
}

/// Folds a batch of entries of one partition against the store. Returns the
/// view changes and each decoded record's outcome.
pub async fn fold_batch(
    store: &dyn ViewStore,
    topic: Topic,
    partition: u32,
    entries: &[LogEntry],
) -> Result<(Vec<(ViewKey, Option<emosation_core::ViewValue>)>, Vec<Folded>), StoreError> {
    let records = decode_entries(topic, partition, entries);
    let mut overlay = Overlay::with_capacity(records.len() * 3);
    let mut keys = Vec::with_capacity(records.len() * 3);
    for (_, r) in &records {
        for k in keys_read_by(r) {
            if !overlay.contains(&k) {
                overlay.preload(k.clone(), None);
                keys.push(k);
            }
        }
    }
    if !keys.is_empty() {
        let values = store.load(&keys).await?;
        for (k, v) in keys.into_iter().zip(values) {
            if v.is_some() {
                overlay.preload_replace(k, v);
            }
        }
    }
    let folded = records
        .into_iter()
        .map(|(pos, r): (LogPosition, Record)| Folded {
            request_id: r.request_id(),
            position: pos,
            outcome: fold(&mut overlay, pos, r),
        })
        .collect();
    Ok((overlay.take_changes(), folded))
}

/// Folds a fetched batch (never empty) and applies its changes together with
/// the partition's next offset, in one view batch; returns each record's
/// outcome. The live projector then publishes the decisions.
async fn fold_and_apply(
    store: &dyn ViewStore,
    topic: Topic,
    partition: u32,
    entries: &[LogEntry],
) -> Result<Vec<Folded>, StoreError> {
    let next = entries.last().map_or(0, |e| e.offset + 1);
    let (changes, folded) = fold_batch(store, topic, partition, entries).await?;
    store
        .apply(ViewBatch {
            consumer: CORE_VIEWS.to_owned(),
            changes,
            positions: vec![(topic, partition, next)],
        })
        .await?;
    Ok(folded)
}

/// Records per fetch in the live projector.
const LIVE_BATCH: usize = 2048;

/// The live projector: a [`Consumer`] of every partition whose checkpoint is
/// the core views ([`CORE_VIEWS`]) and which, after applying a batch,
/// reports the partition's applied watermark and publishes each record's
/// decision.
pub struct Projector {
    log: Arc<dyn Log>,
    store: Arc<dyn ViewStore>,
    decisions: Arc<dyn Decisions>,
}

impl Projector {
    pub fn new(log: Arc<dyn Log>, store: Arc<dyn ViewStore>, decisions: Arc<dyn Decisions>) -> Self {
        Projector { log, store, decisions }
    }

    /// Runs until `shutdown` is cancelled or a partition task fails. Refuses
    /// views left mid-rebuild ([`ConsumerError::Rebuilding`]). Failures of
    /// the log or the store (a broker failing over, a Redis restarting) do
    /// not stop it: a partition waits, re-reads its position from the store —
    /// which is where the views really are, even if the store lost them — and
    /// carries on from there.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConsumerError> {
        let log = Arc::clone(&self.log);
        run_consumer(Arc::new(self), log, shutdown).await
    }
}

#[async_trait]
impl Consumer for Projector {
    fn group(&self) -> &'static str {
        CORE_VIEWS
    }

    fn topics(&self) -> Vec<Topic> {
        Topic::ALL.to_vec()
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint::Views(Arc::clone(&self.store))
    }

    fn batch_size(&self) -> usize {
        LIVE_BATCH
    }

    /// Every command's answer waits for its decision.
    fn on_chat_path(&self) -> bool {
        true
    }

    /// The views include everything before the resume point: waiters for
    /// earlier records need not wait for the next batch.
    fn resumed(&self, topic: Topic, partition: u32, next: u64) {
        self.decisions.applied(topic, partition, next);
    }

    /// Folds and applies the batch, then reports which records took effect
    /// and the watermark, and publishes the decisions: an ingest node that
    /// answers its client after the decision already sees the views updated.
    async fn handle_batch(&self, topic: Topic, partition: u32, entries: &[LogEntry]) -> Result<(), ConsumerError> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let next = last.offset + 1;
        let folded = fold_and_apply(&*self.store, topic, partition, entries).await?;
        let effective: Vec<u64> = folded
            .iter()
            .filter(|f| emosation_core::fold::took_effect(&f.outcome))
            .map(|f| f.position.offset)
            .collect();
        self.decisions
            .folded(topic, partition, entries[0].offset, next, &effective);
        self.decisions.applied(topic, partition, next);
        for f in folded {
            self.decisions.publish(
                f.request_id,
                Decision {
                    topic,
                    position: f.position,
                    outcome: f.outcome,
                },
            );
        }
        Ok(())
    }

    fn count_handled(&self, topic: Topic, records: usize) {
        metrics::counter!("emosation_projector_records_total", "topic" => topic.name()).increment(records as u64);
    }

    fn count_restart(&self, topic: Topic) {
        metrics::counter!("emosation_projector_restarts_total", "topic" => topic.name()).increment(1);
    }
}

/// How many records of the log the core views have not folded yet: the sum
/// over partitions of the log's end offset minus the views' position.
pub async fn lag(log: &dyn Log, store: &dyn ViewStore) -> Result<u64, ConsumerError> {
    let topo = log.topology();
    let mut behind = 0;
    for topic in Topic::ALL {
        for partition in 0..topo.partitions(topic) {
            let end = log.end_offset(topic, partition).await?;
            let at = store.position(CORE_VIEWS, topic, partition).await?;
            behind += end.saturating_sub(at);
        }
    }
    Ok(behind)
}

/// Folds every record between the core views' positions and the log's end
/// offsets (read at the start) into the views, exactly as the live projector
/// would, and returns how many records it folded. After it, the views are the
/// fold of the whole log as it stood, so their digest is comparable with a
/// replay's. Like replay, it is for a stopped deployment: a live projector
/// folding the same partitions at the same time would interleave its writes
/// with these.
pub async fn catch_up(log: &dyn Log, store: &dyn ViewStore) -> Result<u64, ConsumerError> {
    if store.rebuilding(CORE_VIEWS).await? {
        return Err(ConsumerError::Rebuilding);
    }
    let topo = log.topology();
    let mut folded = 0;
    for topic in Topic::ALL {
        for partition in 0..topo.partitions(topic) {
            let end = log.end_offset(topic, partition).await?;
            let mut next = store.position(CORE_VIEWS, topic, partition).await?;
            while next < end {
                let want = LIVE_BATCH.min((end - next) as usize);
                let entries = fetch_existing(log, topic, partition, next, end, want, "catch-up").await?;
                let new_next = entries.last().map_or(next, |e| e.offset + 1);
                fold_and_apply(store, topic, partition, &entries).await?;
                folded += new_next - next;
                next = new_next;
            }
        }
    }
    Ok(folded)
}

/// How long a fetch of records the log says exist may come back empty before
/// it is an error (a remote log's first read of a large partition is slow;
/// a replay or catch-up never stops short).
const STALL: Duration = Duration::from_secs(120);

/// Fetches up to `want` records from `next`, below an `end` offset read
/// earlier: they exist, so an empty answer means a slow broker, never the
/// end. Asks again (waiting a second each time) until records come, and
/// fails only after [`STALL`]. Never returns an empty batch.
pub(crate) async fn fetch_existing(
    log: &dyn Log,
    topic: Topic,
    partition: u32,
    next: u64,
    end: u64,
    want: usize,
    what: &str,
) -> Result<Vec<LogEntry>, ConsumerError> {
    let mut stalled_since: Option<std::time::Instant> = None;
    loop {
        let wait = if stalled_since.is_some() {
            Duration::from_secs(1)
        } else {
            Duration::ZERO
        };
        let entries = log.fetch(topic, partition, next, want, wait).await?;
        if !entries.is_empty() {
            return Ok(entries);
        }
        let since = *stalled_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() > STALL {
            return Err(ConsumerError::Log(LogError::Storage(format!(
                "{what} of {}/{partition} stalled at offset {next} of {end} for {STALL:?}",
                topic.name()
            ))));
        }
    }
}

pub use replay::{ReplayOptions, ReplayStats, replay, replay_with};
