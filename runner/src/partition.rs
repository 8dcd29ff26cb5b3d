//! One partition's loop: resume from the checkpoint, fetch → handle →
//! commit, and on a failure back off and resume from the checkpoint again.

use std::time::Duration;

use emosation_core::ids::Topic;
use emosation_core::ports::{Log, LogError, StoreError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{Checkpoint, Consumer, ConsumerError};

/// How long a fetch waits for new records at the end of a partition.
const FETCH_WAIT: Duration = Duration::from_millis(500);
/// How often a busy partition commits its offset on the log (`Checkpoint::Log`).
/// A crash redoes at most this much work, which such consumers tolerate.
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// First and longest pause after a failed batch.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The longest pause of a consumer on the chat path: requests wait meanwhile.
const BACKOFF_MAX_CHAT_PATH: Duration = Duration::from_secs(5);
/// How often an idle partition checks that the store still holds its
/// position (`Checkpoint::Views`).
const POSITION_CHECK: Duration = Duration::from_secs(2);
/// How often at most a partition's lag gauge is updated (one read of the
/// log's end offset each time).
const LAG_EVERY: Duration = Duration::from_secs(1);

/// Follows one partition until `shutdown`. A failed batch (the log or the
/// store failing over, a model out) is retried from the checkpoint after a
/// backoff; only a closing log ends the task with an error.
pub(crate) async fn run<C: Consumer + ?Sized>(
    consumer: &C,
    log: &dyn Log,
    topic: Topic,
    partition: u32,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    let group = consumer.group();
    let backoff_max = if consumer.on_chat_path() {
        BACKOFF_MAX_CHAT_PATH
    } else {
        BACKOFF_MAX
    };
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
                    "consumer batch failed; resuming from the checkpoint");
                consumer.count_restart(topic);
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(backoff_max);
            }
        }
    }
}

/// The next offset to handle, from the checkpoint (0 for a new consumer).
async fn resume_point<C: Consumer + ?Sized>(
    consumer: &C,
    checkpoint: &Checkpoint,
    log: &dyn Log,
    topic: Topic,
    partition: u32,
) -> Result<u64, ConsumerError> {
    Ok(match checkpoint {
        Checkpoint::Log => match log.committed(consumer.group(), topic, partition).await? {
            Some(next) => next,
            None => consumer.resume_without_checkpoint(log, topic, partition).await?,
        },
        Checkpoint::Views(views) => views.position(consumer.group(), topic, partition).await?,
    })
}

/// Commits `next` if progress is pending, before the runner stops or fails
/// and resumes from the committed offset. Best effort: uncommitted progress
/// is only work redone, as after a crash.
async fn commit_pending(log: &dyn Log, group: &str, topic: Topic, partition: u32, next: u64, pending: bool) {
    if pending && let Err(e) = log.commit(group, topic, partition, next).await {
        debug!(group, partition, error = %e, "offset commit of pending progress failed");
    }
}

/// A partition's lag gauge, updated at most every [`LAG_EVERY`]: each update
/// reads the log's end offset, which on Kafka is a round trip. None on the
/// chat path.
struct Lag {
    group: &'static str,
    topic: Topic,
    partition: u32,
    on: bool,
    set_at: Option<Instant>,
}

impl Lag {
    fn due(&self) -> bool {
        self.on && self.set_at.is_none_or(|t| t.elapsed() >= LAG_EVERY)
    }

    fn set(&mut self, records: u64) {
        // The handle is looked up at each use, not kept: one taken before
        // the process installs its recorder would stay a no-op for good.
        metrics::gauge!("emosation_consumer_lag_records",
            "group" => self.group, "topic" => self.topic.name(), "partition" => self.partition.to_string())
        .set(records as f64);
        self.set_at = Some(Instant::now());
    }
}

/// From the checkpoint on: fetch → handle → commit, until `shutdown` or an
/// error. Each handled batch resets `backoff`.
async fn follow<C: Consumer + ?Sized>(
    consumer: &C,
    log: &dyn Log,
    topic: Topic,
    partition: u32,
    shutdown: &CancellationToken,
    backoff: &mut Duration,
) -> Result<(), ConsumerError> {
    let group = consumer.group();
    let checkpoint = consumer.checkpoint();
    let mut next = resume_point(consumer, &checkpoint, log, topic, partition).await?;
    debug!(group, topic = topic.name(), partition, next, "consumer resumes");
    consumer.resumed(topic, partition, next);
    let chat_path = consumer.on_chat_path();
    let batch_size = consumer.batch_size();
    let linger = consumer.linger();
    let mut lag = Lag {
        group,
        topic,
        partition,
        on: !chat_path,
        set_at: None,
    };
    // With `Checkpoint::Log`, progress is committed once it has been
    // waiting `COMMIT_EVERY`, when the runner stops, or when the partition
    // is idle by then: a busy partition costs the log one small group-commit
    // write per interval, not one per batch in the messages' path.
    let log_checkpoint = matches!(checkpoint, Checkpoint::Log);
    let mut dirty_since: Option<Instant> = None;
    // With `Checkpoint::Views`, when the stored position was last compared
    // with `next`.
    let mut checked = Instant::now();
    // How long to let records accumulate before the next fetch (after a
    // short batch of a lingering consumer).
    let mut pause = Duration::ZERO;
    loop {
        let wait = dirty_since.map_or(FETCH_WAIT, |t| COMMIT_EVERY.saturating_sub(t.elapsed()).min(FETCH_WAIT));
        let fetch = async {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            log.fetch(topic, partition, next, batch_size, wait).await
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
        pause = if last.is_some() && entries.len() < batch_size {
            linger
        } else {
            Duration::ZERO
        };
        if let Some(last) = last {
            if !chat_path {
                // The records just became readable, and the chat path (the
                // projector's decisions, the fan-out's deliveries) was woken
                // with this consumer: let it go first if they share a
                // runtime (`serve` runs analytics on a low-priority runtime
                // of their own).
                tokio::task::yield_now().await;
            }
            if let Err(e) = consumer.handle_batch(topic, partition, &entries).await {
                commit_pending(log, group, topic, partition, next, dirty_since.is_some()).await;
                return Err(e);
            }
            next = last + 1;
            if log_checkpoint {
                dirty_since.get_or_insert_with(Instant::now);
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
            // Idle: make sure the views are still where we think (a store
            // that lost its data reports an earlier position).
            if let Checkpoint::Views(views) = &checkpoint
                && checked.elapsed() >= POSITION_CHECK
            {
                checked = Instant::now();
                let stored = views.position(group, topic, partition).await?;
                if stored != next {
                    return Err(ConsumerError::Store(StoreError::Storage(format!(
                        "the store is at offset {stored}, not {next}: it lost or moved views"
                    ))));
                }
            }
            if lag.due() {
                lag.set(log.end_offset(topic, partition).await?.saturating_sub(next));
            }
            continue;
        }
        *backoff = BACKOFF_MIN;
        consumer.count_handled(topic, entries.len());
        if lag.due() {
            let end = log.end_offset(topic, partition).await.unwrap_or(next);
            lag.set(end.saturating_sub(next));
        }
    }
}
