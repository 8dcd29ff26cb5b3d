//! [`Analyzer`]: the consumer that turns posted messages into emotion events.
//!
//! An [`AnalyticsConsumer`] with [`Checkpoint::Log`]: it reads every rooms
//! partition under its own consumer group, classifies
//! the batch's messages together (one classifier call per batch), appends one
//! `EmotionRecorded` per message to the message's room (so it lands in the
//! same partition, after the message), and commits the group's offset only
//! once those appends are durable. A crash between append and commit makes it
//! classify some messages again; the fold keeps the first emotion of a
//! message and ignores repeats, so every message ends with exactly one.
//! It does not consult the views: a post the fold rejected gets an emotion
//! record that the fold rejects in turn.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use emosation_core::Record;
use emosation_core::ids::{LogPosition, Topic};
use emosation_core::ports::{Classifier, ClassifyError, Log, LogEntry};
use emosation_core::record::EmotionRecorded;
use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{AnalyticsConsumer, Checkpoint, ConsumerError, run_consumer};

/// Records read per batch (one classifier call, one burst of appends).
const BATCH: usize = 64;

/// After a batch smaller than [`BATCH`], how long messages accumulate before
/// the next one. Handled one by one as they arrive, each message's emotion
/// cost a classifier call, a group commit, a projector batch and an offset
/// commit of its own: ~30% of a one-core server's CPU at 2,000 msg/s, which
/// doubled the chat path's p99. An emotion label 20 ms later is not
/// something a reader notices.
const LINGER: Duration = Duration::from_millis(20);

/// Records read per step when looking back for the last emotion.
const LOOK_BACK: u64 = 4096;

/// Where the analyzer resumes in a partition without a committed offset,
/// read from the log. The newest `EmotionRecorded` in the partition names
/// the furthest message classified, M. Batches of a partition are handled
/// one after another, each appending all its emotions before the next
/// starts, so every message before M's batch is classified; that batch began
/// at most [`BATCH`] − 1 records before M, and some of its emotions may be
/// missing (a crash mid-append). So it resumes at the first message of
/// `[M + 1 − BATCH, M]` with no emotion after it, else at M + 1: nothing
/// classified is classified again, and nothing unclassified is skipped.
/// With no emotion in the partition, 0. It reads back from the end in
/// steps, so it costs about the unclassified tail, which the analyzer must
/// read anyway.
pub async fn resume_from_log(log: &dyn Log, topic: Topic, partition: u32) -> Result<u64, ConsumerError> {
    let end = log.end_offset(topic, partition).await?;
    let mut window_end = end;
    while window_end > 0 {
        let from = window_end.saturating_sub(LOOK_BACK);
        let furthest = scan(log, topic, partition, from, window_end)
            .await?
            .classified
            .into_iter()
            .max();
        if let Some(m) = furthest {
            let start = (m + 1).saturating_sub(BATCH as u64);
            let seen = scan(log, topic, partition, start, end).await?;
            let first_missing = seen
                .messages
                .into_iter()
                .filter(|o| *o <= m)
                .find(|o| !seen.classified.contains(o));
            return Ok(first_missing.unwrap_or(m + 1));
        }
        window_end = from;
    }
    Ok(0)
}

/// Messages, and messages with an emotion, among a partition's records.
#[derive(Default)]
struct Scanned {
    /// Offsets of routed `MessagePosted` and `MessageEdited` records (the
    /// texts the analyzer classifies), ascending.
    messages: Vec<u64>,
    /// Offsets (in this partition) of messages and edits an `EmotionRecorded` names.
    classified: std::collections::HashSet<u64>,
}

async fn scan(log: &dyn Log, topic: Topic, partition: u32, from: u64, end: u64) -> Result<Scanned, ConsumerError> {
    let mut out = Scanned::default();
    let mut next = from;
    while next < end {
        let entries = log
            .fetch(
                topic,
                partition,
                next,
                (end - next).min(LOOK_BACK) as usize,
                Duration::ZERO,
            )
            .await?;
        let Some(last) = entries.last() else { break };
        next = last.offset + 1;
        for e in entries.iter().filter(|e| e.offset < end) {
            match emosation_schemas::decode_routed(topic, &e.key, &e.value) {
                Some(Record::MessagePosted(_) | Record::MessageEdited(_)) => out.messages.push(e.offset),
                Some(Record::EmotionRecorded(r)) => {
                    // An edit's emotion names the edit it classified.
                    let described = r.edit_id.as_deref().unwrap_or(&r.message_id);
                    if let Some(pos) = LogPosition::parse_id(described)
                        && pos.partition == partition
                    {
                        out.classified.insert(pos.offset);
                    }
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// A text to classify: a message as posted, or an edit of one.
struct Text {
    /// Where the record that carries the text is.
    pos: LogPosition,
    room_id: String,
    message_id: String,
    edit_id: Option<String>,
    text: String,
}

/// The analyzer's consumer group.
pub const GROUP: &str = "analyzer";

pub struct Analyzer {
    log: Arc<dyn Log>,
    classifier: Arc<dyn Classifier>,
}

impl std::fmt::Debug for Analyzer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analyzer")
            .field("model", &self.classifier.model())
            .finish()
    }
}

impl Analyzer {
    pub fn new(log: Arc<dyn Log>, classifier: Arc<dyn Classifier>) -> Self {
        Analyzer { log, classifier }
    }

    /// Runs until `shutdown`, one task per rooms partition
    /// ([`run_consumer`] with this consumer).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConsumerError> {
        let log = Arc::clone(&self.log);
        run_consumer(Arc::new(self), log, shutdown).await
    }
}

#[async_trait]
impl AnalyticsConsumer for Analyzer {
    fn group(&self) -> &'static str {
        GROUP
    }

    /// Emotions go to the log: the group's offset is committed after they
    /// are durable, and the fold keeps the first emotion of a message.
    fn checkpoint(&self) -> Checkpoint {
        Checkpoint::Log
    }

    // Modest batches: emotion records share partitions with chat, so a
    // large burst of them would queue ahead of new messages.
    fn batch_size(&self) -> usize {
        BATCH
    }

    fn linger(&self) -> Duration {
        LINGER
    }

    /// The group's offsets are gone (a new deployment, or Kafka expired them):
    /// the log itself says how far the analyzer got. See [`resume_from_log`].
    async fn resume_without_checkpoint(
        &self,
        log: &dyn Log,
        topic: Topic,
        partition: u32,
    ) -> Result<u64, ConsumerError> {
        let next = resume_from_log(log, topic, partition).await?;
        if next > 0 {
            tracing::info!(
                group = GROUP,
                partition,
                next,
                "no committed offset; resuming after the last classified message on the log"
            );
        }
        Ok(next)
    }

    async fn handle_batch(&self, _topic: Topic, p: u32, entries: &[LogEntry]) -> Result<(), ConsumerError> {
        // Texts to classify: each message as posted, and each edit of one
        // (whose emotion supersedes the message's; the fold ignores it if
        // the edit was refused).
        let mut messages = Vec::new();
        for e in entries {
            // A misrouted message is never stored (the fold skips it): no
            // model call for it.
            let pos = LogPosition::new(p, e.offset);
            match emosation_schemas::decode_routed(Topic::Rooms, &e.key, &e.value) {
                Some(Record::MessagePosted(m)) => messages.push(Text {
                    message_id: pos.to_id(),
                    edit_id: None,
                    room_id: m.room_id,
                    text: m.text,
                    pos,
                }),
                Some(Record::MessageEdited(m)) => messages.push(Text {
                    message_id: m.message_id,
                    edit_id: Some(pos.to_id()),
                    room_id: m.room_id,
                    text: m.text,
                    pos,
                }),
                _ => {}
            }
        }
        if messages.is_empty() {
            return Ok(());
        }
        let texts: Vec<&str> = messages.iter().map(|m| m.text.as_str()).collect();
        // On failure nothing is appended nor committed: the runner backs off
        // and the batch is classified again.
        let classified = match self.classifier.classify(&texts).await {
            Ok(c) if c.len() == texts.len() => c,
            Ok(c) => {
                return Err(ConsumerError::Retry(format!(
                    "classifier answered {} classifications for {} texts",
                    c.len(),
                    texts.len()
                )));
            }
            Err(ClassifyError::Unavailable(e) | ClassifyError::Malformed(e)) => {
                return Err(ConsumerError::Retry(format!("classifier failed: {e}")));
            }
        };
        let mut records = Vec::with_capacity(messages.len());
        let mut labels = Vec::with_capacity(messages.len());
        for (m, c) in messages.into_iter().zip(classified) {
            labels.push(c.label.as_str());
            let pos = m.pos;
            let record = Record::EmotionRecorded(EmotionRecorded {
                // Deterministic: the position of the message (or edit) it describes.
                request_id: ((pos.partition as i64) << 48) | pos.offset as i64,
                at: emosation_core::time::now_ms(),
                room_id: m.room_id,
                message_id: m.message_id,
                label: c.label.as_str().to_owned(),
                score: c.score,
                scores: c.scores.to_vec(),
                model: c.model,
                edit_id: m.edit_id,
            });
            match emosation_schemas::encode(&record) {
                Ok(value) => records.push((record.key(), Bytes::from(value))),
                Err(e) => warn!(error = %e, "cannot encode an emotion record"),
            }
        }
        // Appended together so they share group commits; all must be
        // durable before the runner commits the offset.
        let results = join_all(
            records
                .iter()
                .map(|(key, value)| self.log.append(Topic::Rooms, key.as_bytes(), value.clone())),
        )
        .await;
        for r in results {
            r?;
        }
        // By label (a closed set of seven): what the room's mood is made of.
        for label in labels {
            metrics::counter!("emosation_analyzer_emotions_total", "label" => label).increment(1);
        }
        Ok(())
    }
}
