//! The runner: the one loop that follows the log's partitions for a
//! consumer — the core projector, and every analytics consumer.
//!
//! A consumer names its group, the topics it reads and where its progress
//! lives ([`Checkpoint`]); it handles one partition's batch at a time and
//! makes its results durable before it returns. The runner does the rest,
//! the same way for every consumer: one task per partition, resume from the
//! checkpoint (offset 0 the first time: a new consumer backfills the whole
//! log before it follows the tail), fetch → handle → commit, back off and
//! resume from the checkpoint on failures, and count progress. Unless the
//! consumer is on the chat path ([`Consumer::on_chat_path`]), it also exports
//! its lag:
//!
//! - `emosation_consumer_lag_records{group,topic,partition}`: records between
//!   the consumer's position and the end of the partition, updated at most
//!   once a second per partition;
//! - `emosation_consumer_records_total{group}`: records handled;
//! - `emosation_consumer_restarts_total{group}`: failed batches, resumed
//!   from the checkpoint.
//!
//! A consumer may count under names of its own instead
//! ([`Consumer::count_handled`], [`Consumer::count_restart`]: the projector
//! keeps `emosation_projector_records_total{topic}` and
//! `emosation_projector_restarts_total{topic}`).
//!
//! # Layout
//! - [`Consumer`], [`Checkpoint`], [`ConsumerError`]: what a consumer
//!   implements and says.
//! - [`run_consumer`]: a task per partition, until shutdown.
//! - `partition`: one partition's loop (resume, fetch, handle, commit,
//!   back off).

mod partition;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use emosation_core::ids::Topic;
use emosation_core::ports::{Log, LogEntry, LogError, StoreError, ViewStore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Where a consumer's progress (the next offset of each partition) lives.
#[derive(Clone)]
pub enum Checkpoint {
    /// Results go to the log (or anywhere idempotent by log position): the
    /// runner commits the group's offset on the log after handled batches, at
    /// most once a second while the partition is busy and as soon as it is
    /// idle, and a restart resumes from `Log::committed` (0 the first time). A
    /// crash between the results and the commit redoes up to a second of
    /// batches, so results must be idempotent (the analyzer's emotions are
    /// keyed by the message's position, and the fold keeps the first).
    Log,
    /// Results go to views of the consumer's own: each batch is one
    /// `ViewStore::apply` with consumer = the group and the partition's next
    /// offset among its positions, so results and progress commit atomically;
    /// a restart resumes from `ViewStore::position` (0 the first time, or
    /// after `clear(group)`). Nothing is ever counted twice. The runner
    /// refuses views marked rebuilding (`ViewStore::rebuilding`: a replay was
    /// interrupted), and an idle partition checks every 2 s that the store
    /// still holds its position (a store that lost its data reports an
    /// earlier one), resuming from what the store holds if not.
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

/// Why a consumer, or a batch of it, failed.
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
    /// The consumer's views are marked rebuilding: they are incomplete, and
    /// nothing may resume them.
    #[error("the views are incomplete: a replay was interrupted; run `emosation replay` again")]
    Rebuilding,
}

/// A consumer of the log, driven by [`run_consumer`]. Implement this, then
/// spawn [`run_consumer`] with it beside the other services (one line in
/// `emosation/src/system.rs`). Analytics consumers know it as
/// `emosation_analyzer::AnalyticsConsumer`.
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
pub trait Consumer: Send + Sync + 'static {
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

    /// Whether requests wait on this consumer's results: the core projector,
    /// whose decisions ingest answers with and whose watermark the fan-out
    /// delivers after. The runner then adds nothing to a batch beyond the
    /// fetch and [`handle_batch`](Self::handle_batch): it neither yields to
    /// other tasks first nor reads the log's end offset for a lag gauge
    /// (there is none). It backs off at most 5 s rather than 10 s, and a
    /// partition task that dies ends the run with an error, since nothing
    /// would answer that partition's requests again; a background
    /// consumer's dead task is logged and its other partitions go on.
    fn on_chat_path(&self) -> bool {
        false
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

    /// A partition (re)starts at `next`, read from the checkpoint: every
    /// record before it is handled. Called before the first fetch.
    fn resumed(&self, _topic: Topic, _partition: u32, _next: u64) {}

    /// Handles consecutive records of one partition (never empty).
    async fn handle_batch(&self, topic: Topic, partition: u32, entries: &[LogEntry]) -> Result<(), ConsumerError>;

    /// Counts `records` handled of a `topic` partition, after each batch.
    fn count_handled(&self, _topic: Topic, records: usize) {
        metrics::counter!("emosation_consumer_records_total", "group" => self.group()).increment(records as u64);
    }

    /// Counts a failed batch of a `topic` partition, resumed from the
    /// checkpoint.
    fn count_restart(&self, _topic: Topic) {
        metrics::counter!("emosation_consumer_restarts_total", "group" => self.group()).increment(1);
    }
}

/// Runs `consumer` until `shutdown`: one task per partition of each of its
/// topics. Refuses views marked rebuilding ([`ConsumerError::Rebuilding`]);
/// otherwise returns early only if the log closes under it (or, on the chat
/// path, a task dies), after cancelling `shutdown`.
pub async fn run_consumer<C: Consumer + ?Sized>(
    consumer: Arc<C>,
    log: Arc<dyn Log>,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    let group = consumer.group();
    if let Checkpoint::Views(views) = consumer.checkpoint()
        && views.rebuilding(group).await?
    {
        return Err(ConsumerError::Rebuilding);
    }
    let topology = log.topology();
    let mut tasks = JoinSet::new();
    for topic in consumer.topics() {
        for partition in 0..topology.partitions(topic) {
            let (consumer, log, stop) = (Arc::clone(&consumer), Arc::clone(&log), shutdown.clone());
            tasks.spawn(async move { partition::run(&*consumer, &*log, topic, partition, stop).await });
        }
    }
    info!(group, partitions = tasks.len(), "consumer running");
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shutdown.cancel();
                return Err(e);
            }
            Err(e) if consumer.on_chat_path() => {
                shutdown.cancel();
                return Err(ConsumerError::Store(StoreError::Storage(format!(
                    "{group} consumer task died: {e}"
                ))));
            }
            Err(e) => warn!(group, error = %e, "consumer task died"),
        }
    }
    Ok(())
}
