//! [`AnalyticsConsumer`]: what an analytics consumer of the log implements,
//! and [`run_consumer`], the loop that drives one.
//!
//! A consumer names its group, the topics it reads and where its progress
//! lives ([`Checkpoint`]); it handles one partition's batch at a time and
//! makes its results durable before it returns. The runner does the rest,
//! the same way for every consumer: one task per partition, resume from the
//! checkpoint (offset 0 the first time: a new consumer backfills the whole
//! log before it follows the tail), fetch → handle → commit, back off and
//! resume from the checkpoint on failures, and export lag and progress:
//!
//! - `emosation_consumer_lag_records{group,topic,partition}`: records between
//!   the consumer's position and the end of the partition;
//! - `emosation_consumer_records_total{group}`: records handled;
//! - `emosation_consumer_restarts_total{group}`: failed batches, resumed
//!   from the checkpoint.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use emosation_core::ids::Topic;
use emosation_core::ports::{Log, LogEntry, LogError, StoreError, ViewStore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long a fetch waits for new records at the end of a partition.
const FETCH_WAIT: Duration = Duration::from_millis(500);
/// How often a busy partition commits its offset on the log (`Checkpoint::Log`).
/// A crash redoes at most this much work, which such consumers tolerate.
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// First and longest pause after a failed batch.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Where a consumer's progress (the next offset of each partition) lives.
#[derive(Clone)]
pub enum Checkpoint {
    /// Results go to the log (or anywhere idempotent by log position): the
    /// runner commits the group's offset on the log after handled batches, at
    /// most once a second while the partition is busy and as soon as it is
    /// idle, and a restart resumes from `Log::committed` (0 the first time). A
    /// crash between the results and the commit redoes up to a second of
    /// batches, so results
    /// must be idempotent (the analyzer's emotions are keyed by the message's
    /// position, and the fold keeps the first).
    Log,
    /// Results go to a view of the consumer's own: each batch is one
    /// `ViewStore::apply` with consumer = the group and the partition's next
    /// offset among its positions, so results and progress commit atomically;
    /// a restart resumes from `ViewStore::position` (0 the first time, or
    /// after `clear(group)`). Nothing is ever counted twice.
    Views(Arc<dyn ViewStore>),
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Checkpoint::Log => "Log",
            Checkpoint::Views(_) => "Views",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Nothing of the batch was made durable and trying again later may
    /// succeed (a model is out, the views are not there yet): the runner
    /// backs off and hands the same records again.
    #[error("{0}")]
    Retry(String),
}

/// An analytics consumer of the log. Implement this, then spawn
/// [`run_consumer`] with it beside the other services (one line in
/// `emosation/src/system.rs`).
///
/// Contract:
/// - `group` is unique among consumers: it is the consumer group on the log,
///   the consumer name of its view positions, and the `group` label of its
///   metrics. A new group starts at offset 0.
/// - `handle_batch` gets consecutive records of one partition, in offset
///   order, starting where the checkpoint is. When it returns `Ok`, its
///   results are durable; with [`Checkpoint::Views`] they were applied
///   together with the position `(topic, partition, last offset + 1)`.
///   With [`Checkpoint::Log`] a batch may be handed again after a crash.
/// - An `Err` means nothing the runner must keep: it resumes from the
///   checkpoint after a backoff. It must be deterministic by log position:
///   derive time from the records (`at`), never from a clock, when the
///   result depends on it.
#[async_trait]
pub trait AnalyticsConsumer: Send + Sync + 'static {
    /// The consumer's group name (unique; see the contract).
    fn group(&self) -> &'static str;

    /// The topics it reads, every partition of each.
    fn topics(&self) -> Vec<Topic> {
        vec![Topic::Rooms]
    }

    /// Where its progress lives.
    fn checkpoint(&self) -> Checkpoint;

    /// Records fetched per batch.
    fn batch_size(&self) -> usize {
        256
    }

    /// How long to let records accumulate after a batch smaller than
    /// [`batch_size`](Self::batch_size) before fetching again (Kafka's
    /// `fetch.max.wait.ms` with a `fetch.min.bytes`). Zero, the default,
    /// handles each record as soon as it is readable; a consumer whose results
    /// nobody waits for (a dashboard's counts) lingers to handle fewer, larger
    /// batches, which costs the chat path less CPU per record: per-batch work
    /// (reading positions, one view write per touched entity) is shared by
    /// more records.
    fn linger(&self) -> Duration {
        Duration::ZERO
    }

    /// Where a partition with no checkpoint starts, with [`Checkpoint::Log`]:
    /// a new consumer's, or one whose group offsets the log dropped (Kafka
    /// expires a group's offsets after `offsets.retention.minutes`, 7 days by
    /// default, without a commit, which an idle partition does not make).
    /// The default, 0, backfills the whole partition; a consumer whose
    /// results on the log show how far it got overrides it, so an expiry
    /// does not redo (and re-append) everything.
    async fn resume_without_checkpoint(
        &self,
        _log: &dyn Log,
        _topic: Topic,
        _partition: u32,
    ) -> Result<u64, ConsumerError> {
        Ok(0)
    }

    /// Handles consecutive records of one partition (never empty).
    async fn handle_batch(&self, topic: Topic, partition: u32, entries: &[LogEntry]) -> Result<(), ConsumerError>;
}

/// Runs `consumer` until `shutdown`: one task per partition of each of its
/// topics. Returns early only if the log closes under it.
pub async fn run_consumer<C: AnalyticsConsumer + ?Sized>(
    consumer: Arc<C>,
    log: Arc<dyn Log>,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    let topology = log.topology();
    let mut tasks = JoinSet::new();
    for topic in consumer.topics() {
        for partition in 0..topology.partitions(topic) {
            let (consumer, log, stop) = (Arc::clone(&consumer), Arc::clone(&log), shutdown.clone());
            tasks.spawn(async move { run_partition(&*consumer, &*log, topic, partition, stop).await });
        }
    }
    info!(
        group = consumer.group(),
        partitions = tasks.len(),
        "analytics consumer running"
    );
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shutdown.cancel();
                return Err(e);
            }
            Err(e) => warn!(group = consumer.group(), error = %e, "analytics consumer task died"),
        }
    }
    Ok(())
}

/// The next offset to handle, from the checkpoint (0 for a new consumer).
async fn resume_point<C: AnalyticsConsumer + ?Sized>(
    consumer: &C,
    log: &dyn Log,
    topic: Topic,
    partition: u32,
) -> Result<u64, ConsumerError> {
    Ok(match consumer.checkpoint() {
        Checkpoint::Log => match log.committed(consumer.group(), topic, partition).await? {
            Some(next) => next,
            None => consumer.resume_without_checkpoint(log, topic, partition).await?,
        },
        Checkpoint::Views(views) => views.position(consumer.group(), topic, partition).await?,
    })
}

/// Follows one partition until `shutdown`. A failed batch (the log or the
/// store failing over, a model out) is retried from the checkpoint after a
/// backoff; only a closing log ends the task with an error.
async fn run_partition<C: AnalyticsConsumer + ?Sized>(
    consumer: &C,
    log: &dyn Log,
    topic: Topic,
    partition: u32,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    let group = consumer.group();
    let mut backoff = BACKOFF_MIN;
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        match follow(consumer, log, topic, partition, &shutdown, &mut backoff).await {
            Ok(()) => return Ok(()),
            Err(ConsumerError::Log(LogError::Closed)) if shutdown.is_cancelled() => return Ok(()),
            Err(e @ ConsumerError::Log(LogError::Closed)) => return Err(e),
            Err(e) => {
                warn!(group, topic = topic.name(), partition, attempt, error = %e, ?backoff,
                    "analytics batch failed; resuming from the checkpoint");
                metrics::counter!("emosation_consumer_restarts_total", "group" => group).increment(1);
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Commits `next` if progress is pending, before the runner stops or fails
/// and resumes from the committed offset. Best effort: uncommitted progress
/// is only work redone, as after a crash.
async fn commit_pending(log: &dyn Log, group: &str, topic: Topic, partition: u32, next: u64, pending: bool) {
    if pending && let Err(e) = log.commit(group, topic, partition, next).await {
        debug!(group, partition, error = %e, "offset commit of pending progress failed");
    }
}

/// From the checkpoint on: fetch → handle → commit, until `shutdown` or an
/// error. Each handled batch resets `backoff`.
async fn follow<C: AnalyticsConsumer + ?Sized>(
    consumer: &C,
    log: &dyn Log,
    topic: Topic,
    partition: u32,
    shutdown: &CancellationToken,
    backoff: &mut Duration,
) -> Result<(), ConsumerError> {
    let group = consumer.group();
    let checkpoint = consumer.checkpoint();
    let mut next = resume_point(consumer, log, topic, partition).await?;
    debug!(
        group,
        topic = topic.name(),
        partition,
        next,
        "analytics consumer resumes"
    );
    // Handles are looked up at each use, not kept: one taken before the
    // process installs its recorder would stay a no-op for good.
    let lag = |records: u64| {
        metrics::gauge!("emosation_consumer_lag_records",
            "group" => group, "topic" => topic.name(), "partition" => partition.to_string())
        .set(records as f64)
    };
    // With `Checkpoint::Log`, progress is committed once it has been
    // waiting `COMMIT_EVERY`, when the runner stops, or when the partition
    // is idle by then: a busy partition costs the log one small group-commit
    // write per interval, not one per batch in the messages' path.
    let log_checkpoint = matches!(checkpoint, Checkpoint::Log);
    let linger = consumer.linger();
    let mut dirty_since: Option<tokio::time::Instant> = None;
    // How long to let records accumulate before the next fetch (after a
    // short batch of a lingering consumer).
    let mut pause = Duration::ZERO;
    loop {
        let wait = dirty_since.map_or(FETCH_WAIT, |t| COMMIT_EVERY.saturating_sub(t.elapsed()).min(FETCH_WAIT));
        let fetch = async {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            log.fetch(topic, partition, next, consumer.batch_size(), wait).await
        };
        let entries = tokio::select! {
            _ = shutdown.cancelled() => {
                commit_pending(log, group, topic, partition, next, dirty_since.is_some()).await;
                return Ok(());
            }
            r = fetch => r,
        };
        // A failure resumes from the checkpoint: first make it the progress
        // made, so that no handled batch is handled again.
        let entries = match entries {
            Ok(entries) => entries,
            Err(e) => {
                commit_pending(log, group, topic, partition, next, dirty_since.is_some()).await;
                return Err(e.into());
            }
        };
        let last = entries.last().map(|e| e.offset);
        // After a short batch, a lingering consumer lets records accumulate;
        // an empty fetch has waited already.
        pause = if last.is_some() && entries.len() < consumer.batch_size() {
            linger
        } else {
            Duration::ZERO
        };
        if let Some(last) = last {
            // The records just became readable, and the chat path (the
            // projector's decisions, the fan-out's deliveries) was woken
            // with this consumer: let it go first if they share a runtime
            // (`serve` runs analytics on a low-priority runtime of their own).
            tokio::task::yield_now().await;
            if let Err(e) = consumer.handle_batch(topic, partition, &entries).await {
                commit_pending(log, group, topic, partition, next, dirty_since.is_some()).await;
                return Err(e);
            }
            next = last + 1;
            if log_checkpoint {
                dirty_since.get_or_insert_with(tokio::time::Instant::now);
            }
        }
        // Only after `handle_batch` is a batch's work durable (with `Views`,
        // the position was committed in the same batch).
        if let Some(since) = dirty_since
            && (last.is_none() || since.elapsed() >= COMMIT_EVERY)
        {
            log.commit(group, topic, partition, next).await?;
            dirty_since = None;
        }
        if last.is_none() {
            lag(log.end_offset(topic, partition).await?.saturating_sub(next));
            continue;
        }
        *backoff = BACKOFF_MIN;
        metrics::counter!("emosation_consumer_records_total", "group" => group).increment(entries.len() as u64);
        let end = log.end_offset(topic, partition).await.unwrap_or(next);
        lag(end.saturating_sub(next));
    }
}
