//! [`Analyzer`]: the consumer that turns posted messages into emotion events.
//!
//! It reads every rooms partition under its own consumer group, classifies
//! the batch's messages together (one classifier call per batch), appends one
//! `EmotionRecorded` per message to the message's room (so it lands in the
//! same partition, after the message), and commits the group's offset only
//! once those appends are durable. A crash between append and commit makes it
//! classify some messages again; the fold keeps the first emotion of a
//! message and ignores repeats, so every message ends with exactly one.
//! It does not consult the views: a post the fold rejected gets an emotion
//! record that the fold rejects in turn.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use emosation_core::Record;
use emosation_core::ids::{LogPosition, Topic};
use emosation_core::ports::{Classifier, ClassifyError, Log, LogError};
use emosation_core::record::EmotionRecorded;
use futures_util::future::join_all;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Records read per batch (one classifier call, one burst of appends).
const BATCH: usize = 64;

/// The analyzer's consumer group.
pub const GROUP: &str = "analyzer";

#[derive(Debug, thiserror::Error)]
pub enum AnalyzerError {
    #[error(transparent)]
    Log(#[from] LogError),
}

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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Analyzer {
    pub fn new(log: Arc<dyn Log>, classifier: Arc<dyn Classifier>) -> Self {
        Analyzer { log, classifier }
    }

    /// Runs until `shutdown`, one task per rooms partition.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AnalyzerError> {
        let partitions = self.log.topology().rooms_partitions;
        let mut tasks = JoinSet::new();
        for p in 0..partitions {
            let (log, classifier, stop) = (Arc::clone(&self.log), Arc::clone(&self.classifier), shutdown.clone());
            tasks.spawn(async move { analyze_partition(&*log, &*classifier, p, stop).await });
        }
        info!(partitions, model = self.classifier.model(), "analyzer running");
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    shutdown.cancel();
                    return Err(e);
                }
                Err(e) => warn!(error = %e, "analyzer task died"),
            }
        }
        Ok(())
    }
}

async fn analyze_partition(
    log: &dyn Log,
    classifier: &dyn Classifier,
    p: u32,
    shutdown: CancellationToken,
) -> Result<(), AnalyzerError> {
    let mut next = log.committed(GROUP, Topic::Rooms, p).await?.unwrap_or(0);
    let mut backoff = Duration::from_millis(100);
    loop {
        let entries = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            // Modest batches: emotion records share partitions with chat, so
            // a large burst of them would queue ahead of new messages.
            r = log.fetch(Topic::Rooms, p, next, BATCH, Duration::from_millis(500)) => r?,
        };
        let Some(last) = entries.last().map(|e| e.offset) else {
            continue;
        };
        let mut messages = Vec::new();
        for e in &entries {
            if let Ok(Record::MessagePosted(m)) = emosation_schemas::decode(&e.value) {
                messages.push((LogPosition::new(p, e.offset), m));
            }
        }
        if !messages.is_empty() {
            let texts: Vec<&str> = messages.iter().map(|(_, m)| m.text.as_str()).collect();
            let texts_len = texts.len();
            let classified = match classifier.classify(&texts).await {
                Ok(c) if c.len() == texts.len() => c,
                Ok(c) => {
                    warn!(
                        partition = p,
                        expected = texts.len(),
                        got = c.len(),
                        "classifier answered the wrong count"
                    );
                    tokio::time::sleep(backoff).await;
                    continue;
                }
                Err(ClassifyError::Unavailable(e) | ClassifyError::Malformed(e)) => {
                    // Nothing is committed: the batch is classified again.
                    warn!(partition = p, error = %e, "classifier failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            let mut records = Vec::with_capacity(messages.len());
            for ((pos, m), c) in messages.into_iter().zip(classified) {
                let record = Record::EmotionRecorded(EmotionRecorded {
                    // Deterministic: the position of the message it describes.
                    request_id: ((pos.partition as i64) << 48) | pos.offset as i64,
                    at: now_ms(),
                    room_id: m.room_id,
                    message_id: pos.to_id(),
                    label: c.label.as_str().to_owned(),
                    score: c.score,
                    scores: c.scores.to_vec(),
                    model: c.model,
                });
                match emosation_schemas::encode(&record) {
                    Ok(value) => records.push((record.key(), Bytes::from(value))),
                    Err(e) => warn!(error = %e, "cannot encode an emotion record"),
                }
            }
            // Appended together so they share group commits; all must be
            // durable before the offset is committed.
            let results = join_all(
                records
                    .iter()
                    .map(|(key, value)| log.append(Topic::Rooms, key.as_bytes(), value.clone())),
            )
            .await;
            for r in results {
                r?;
            }
            metrics::counter!("emosation_analyzer_emotions_total").increment(texts_len as u64);
        }
        // Only now is the batch's work durable.
        log.commit(GROUP, Topic::Rooms, p, last + 1).await?;
        next = last + 1;
        let end = log.end_offset(Topic::Rooms, p).await.unwrap_or(next);
        metrics::gauge!("emosation_analyzer_lag_records", "partition" => p.to_string())
            .set(end.saturating_sub(next) as f64);
    }
}
