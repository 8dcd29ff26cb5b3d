//! [`ActivityConsumer`]: per-room activity by UTC hour, the second worked
//! example of an [`AnalyticsConsumer`] — one whose results are a view of its
//! own rather than records on the log.
//!
//! For each batch of a rooms partition it counts the messages the fold
//! stored (a post the fold refused — a repeated `client_msg_id`, a
//! non-member — has no `Message` entity and is not counted) into
//! `ActivityView { room_id, hour, messages, authors }`, the hour taken from
//! the record's own `at`, never from a clock, and applies the changed hours
//! **with the partition's next offset** as one `ViewBatch` under the
//! `activity` consumer. It is therefore a deterministic fold of the log:
//! resumed from `ViewStore::position("activity", …)` it never counts a
//! message twice nor skips one, and after `clear("activity")` it rebuilds
//! the same view by backfilling from offset 0.
//!
//! It reads the core views to learn what the fold decided, so it first waits
//! until the core projector has folded the batch
//! ([`Decisions::wait_applied`], which sees a projector in this process or
//! another through its watermarks and the stored core position); its
//! position is therefore never ahead of the core's. Once that wait passes a
//! record, the batch's entities are all readable (on Scylla, whose other
//! readers may see a batch half-written, the stored position is the batch's
//! `materialized` watermark), so a message missing then was refused by the
//! fold. With the projector in the same process it need not look: the
//! projector's report of what took effect ([`Decisions::took_effect`]) is
//! the same answer for a post.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use emosation_core::Record;
use emosation_core::ids::{LogPosition, Topic};
use emosation_core::ports::{Decisions, LogEntry, ViewBatch, ViewStore};
use emosation_core::record::MessagePosted;
use emosation_core::time::hour_start;
use emosation_core::view::{ACTIVITY_VIEWS, ActivityView, ViewKey, ViewValue};

use crate::{AnalyticsConsumer, Checkpoint, ConsumerError};

/// Per-room message counts (and distinct authors) by UTC hour, in the
/// `activity` view ([`ViewStore::activity`]).
pub struct ActivityConsumer {
    views: Arc<dyn ViewStore>,
    decisions: Arc<dyn Decisions>,
}

impl std::fmt::Debug for ActivityConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivityConsumer").finish_non_exhaustive()
    }
}

impl ActivityConsumer {
    /// `views` holds both the core views it reads and the `activity` view it
    /// writes; `decisions` tells when the core projector has applied a
    /// record (opened over `views`, so that a projector in another process
    /// is seen too).
    pub fn new(views: Arc<dyn ViewStore>, decisions: Arc<dyn Decisions>) -> Self {
        ActivityConsumer { views, decisions }
    }

    /// Which of `posts` the fold stored (a `Message` entity at its position):
    /// from the projector's report when it is in this process
    /// ([`Decisions::took_effect`], the same answer), else from the views.
    async fn stored(
        &self,
        topic: Topic,
        partition: u32,
        posts: &[(LogPosition, MessagePosted)],
    ) -> Result<Vec<bool>, ConsumerError> {
        let offsets: Vec<u64> = posts.iter().map(|(pos, _)| pos.offset).collect();
        if let Some(known) = self.decisions.took_effect(topic, partition, &offsets) {
            return Ok(known);
        }
        let keys: Vec<ViewKey> = posts
            .iter()
            .map(|(pos, m)| ViewKey::Message {
                room_id: m.room_id.clone(),
                message_id: pos.to_id(),
            })
            .collect();
        let found: Vec<bool> = self.views.load(&keys).await?.iter().map(Option::is_some).collect();
        Ok(found)
    }
}

#[async_trait]
impl AnalyticsConsumer for ActivityConsumer {
    fn group(&self) -> &'static str {
        ACTIVITY_VIEWS
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint::Views(Arc::clone(&self.views))
    }

    /// Hourly counts are read by dashboards, not by anyone waiting on a
    /// message: a quarter of a second of batching turns one activity write
    /// per message into one per room and batch.
    fn linger(&self) -> Duration {
        crate::DASHBOARD_LINGER
    }

    async fn handle_batch(&self, topic: Topic, partition: u32, entries: &[LogEntry]) -> Result<(), ConsumerError> {
        let Some(last) = entries.last().map(|e| e.offset) else {
            return Ok(());
        };
        let posts: Vec<(LogPosition, MessagePosted)> = entries
            .iter()
            .filter_map(|e| match emosation_schemas::decode(&e.value) {
                Ok(Record::MessagePosted(m)) => Some((LogPosition::new(partition, e.offset), m)),
                _ => None,
            })
            .collect();
        // Never ahead of the core views, even over batches without posts:
        // an activity position then tells that the core views have folded
        // at least that far too.
        crate::core_caught_up(&*self.decisions, topic, partition, last).await?;
        let mut hours: BTreeMap<ViewKey, ActivityView> = BTreeMap::new();
        if !posts.is_empty() {
            let stored = self.stored(topic, partition, &posts).await?;
            let counted: Vec<&MessagePosted> = posts
                .iter()
                .zip(stored)
                .filter_map(|((_, m), stored)| stored.then_some(m))
                .collect();
            let key = |m: &MessagePosted| ViewKey::Activity {
                room_id: m.room_id.clone(),
                hour: hour_start(m.at).max(0),
            };
            let mut keys: Vec<ViewKey> = counted.iter().map(|m| key(m)).collect();
            keys.sort();
            keys.dedup();
            for (k, v) in keys.iter().zip(self.views.load(&keys).await?) {
                let ViewKey::Activity { room_id, hour } = k else {
                    continue;
                };
                let view = match v {
                    Some(ViewValue::Activity(a)) => a,
                    _ => ActivityView::new(room_id, *hour),
                };
                hours.insert(k.clone(), view);
            }
            for m in &counted {
                if let Some(view) = hours.get_mut(&key(m)) {
                    view.count(&m.author_id);
                }
            }
            metrics::counter!("emosation_activity_messages_total").increment(counted.len() as u64);
        }
        self.views
            .apply(ViewBatch {
                consumer: ACTIVITY_VIEWS.to_owned(),
                changes: hours
                    .into_iter()
                    .map(|(k, v)| (k, Some(ViewValue::Activity(v))))
                    .collect(),
                positions: vec![(topic, partition, last + 1)],
            })
            .await?;
        Ok(())
    }
}
