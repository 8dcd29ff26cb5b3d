//! The projector: folds the log into the views.
//!
//! Each topic partition is folded by its own task, which is safe because the
//! fold only reads state written by records of the same partition key (see
//! `emosation_core::fold`). A task fetches a batch, decodes it, prefetches the
//! keys the fold will read, folds every record into an overlay, and commits the
//! changed entities **together with the partition's next offset** in one view
//! batch. Only then does it publish each record's decision, so an ingest node
//! that answers its client after the decision already sees the views updated.
//! Restarted, a task resumes from the offset stored in the views: no record is
//! applied twice or skipped.
//!
//! # Layout
//! - [`Projector`]: the live projector, one task per partition.
//! - [`replay`](mod@replay): drop the views and rebuild them from the start of the log.
//! - [`fold_batch`]: the shared step, decode → prefetch → fold → changes.

pub mod replay;

use std::sync::Arc;
use std::time::Duration;

use emosation_core::ids::{LogPosition, Topic};
use emosation_core::ports::{
    CORE_VIEWS, Decision, Decisions, Log, LogEntry, LogError, StoreError, ViewBatch, ViewStore,
};
use emosation_core::view::{Overlay, ViewKey};
use emosation_core::{Outcome, Record, fold, keys_read_by};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the views are incomplete: a replay was interrupted; run `emosation replay` again")]
    Rebuilding,
}

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

/// The live projector.
pub struct Projector {
    log: Arc<dyn Log>,
    store: Arc<dyn ViewStore>,
    decisions: Arc<dyn Decisions>,
}

impl Projector {
    pub fn new(log: Arc<dyn Log>, store: Arc<dyn ViewStore>, decisions: Arc<dyn Decisions>) -> Self {
        Projector { log, store, decisions }
    }

    /// Runs until `shutdown` is cancelled or a partition task fails.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ProjectorError> {
        if self.store.rebuilding(CORE_VIEWS).await? {
            return Err(ProjectorError::Rebuilding);
        }
        let topo = self.log.topology();
        let mut tasks = JoinSet::new();
        for topic in Topic::ALL {
            for partition in 0..topo.partitions(topic) {
                let log = Arc::clone(&self.log);
                let store = Arc::clone(&self.store);
                let decisions = Arc::clone(&self.decisions);
                let stop = shutdown.clone();
                tasks.spawn(async move { run_partition(&*log, &*store, &*decisions, topic, partition, stop).await });
            }
        }
        info!(partitions = tasks.len(), "projector running");
        while let Some(res) = tasks.join_next().await {
            match res {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    shutdown.cancel();
                    return Err(e);
                }
                Err(join) => {
                    shutdown.cancel();
                    return Err(ProjectorError::Store(StoreError::Storage(format!(
                        "projector task died: {join}"
                    ))));
                }
            }
        }
        Ok(())
    }
}

/// Follows one partition for as long as the projector runs. Failures of the
/// log or the store (a broker failing over, a Redis restarting) do not stop
/// it: it waits, re-reads its position from the store — which is where the
/// views really are, even if the store lost them — and carries on from there.
async fn run_partition(
    log: &dyn Log,
    store: &dyn ViewStore,
    decisions: &dyn Decisions,
    topic: Topic,
    partition: u32,
    shutdown: CancellationToken,
) -> Result<(), ProjectorError> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match follow_partition(log, store, decisions, topic, partition, &shutdown).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                warn!(topic = topic.name(), partition, error = %e, ?backoff, "projector partition failed; resuming from the stored position");
                metrics::counter!("emosation_projector_restarts_total", "topic" => topic.name()).increment(1);
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// How often an idle partition checks that the store still holds its position.
const POSITION_CHECK: Duration = Duration::from_secs(2);

async fn follow_partition(
    log: &dyn Log,
    store: &dyn ViewStore,
    decisions: &dyn Decisions,
    topic: Topic,
    partition: u32,
    shutdown: &CancellationToken,
) -> Result<(), ProjectorError> {
    let mut next = store.position(CORE_VIEWS, topic, partition).await?;
    let topic_label = topic.name();
    debug!(topic = topic_label, partition, next, "projector partition resumes");
    decisions.applied(topic, partition, next);
    let mut checked = tokio::time::Instant::now();
    loop {
        let entries = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = log.fetch(topic, partition, next, LIVE_BATCH, Duration::from_millis(500)) => r?,
        };
        let Some(last) = entries.last() else {
            // Idle: make sure the views are still where we think (a store
            // that lost its data reports an earlier position).
            if checked.elapsed() >= POSITION_CHECK {
                checked = tokio::time::Instant::now();
                let stored = store.position(CORE_VIEWS, topic, partition).await?;
                if stored != next {
                    return Err(ProjectorError::Store(StoreError::Storage(format!(
                        "the store is at offset {stored}, not {next}: it lost or moved views"
                    ))));
                }
            }
            continue;
        };
        let new_next = last.offset + 1;
        let folded = fold_and_apply(store, topic, partition, &entries).await?;
        decisions.applied(topic, partition, new_next);
        for f in folded {
            decisions.publish(
                f.request_id,
                Decision {
                    topic,
                    position: f.position,
                    outcome: f.outcome,
                },
            );
        }
        metrics::counter!("emosation_projector_records_total", "topic" => topic_label).increment(entries.len() as u64);
        next = new_next;
    }
}

/// How many records of the log the core views have not folded yet: the sum
/// over partitions of the log's end offset minus the views' position.
pub async fn lag(log: &dyn Log, store: &dyn ViewStore) -> Result<u64, ProjectorError> {
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
pub async fn catch_up(log: &dyn Log, store: &dyn ViewStore) -> Result<u64, ProjectorError> {
    if store.rebuilding(CORE_VIEWS).await? {
        return Err(ProjectorError::Rebuilding);
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
) -> Result<Vec<LogEntry>, ProjectorError> {
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
            return Err(ProjectorError::Log(LogError::Storage(format!(
                "{what} of {}/{partition} stalled at offset {next} of {end} for {STALL:?}",
                topic.name()
            ))));
        }
    }
}

pub use replay::{ReplayOptions, ReplayStats, replay, replay_with};
