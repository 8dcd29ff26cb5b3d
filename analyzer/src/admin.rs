//! [`AdminConsumer`]: the admin console's figures and audit, folded from both
//! topics into the `admin` views ([`ADMIN_VIEWS`]).
//!
//! What it keeps, per partition (a partition's entities are written only by
//! that partition's batches, so two partitions never race on one entity; a
//! reader sums the partitions):
//! - `days/TOPIC/P` × UTC day: an [`AdminCountsView`] of sign-ups (accounts),
//!   rooms created, messages stored and first emotions by label (rooms), the
//!   day taken from each record's own `at`;
//! - `totals/TOPIC/P`: the same counts over all time;
//! - `audit/P` (accounts): every admin action — the admin role granted or
//!   revoked, an account deleted by someone other than its owner, an account
//!   restored — as an [`AuditEntryView`], in log order, on pages of
//!   [`AUDIT_PAGE`] entries with an [`AuditHeadView`] counting them.
//!
//! Only what the fold accepted counts, learned from the core views as the
//! activity consumer does ([`crate::activity`]): it waits until the core
//! projector has folded the batch, then checks each record's effect on
//! entities that, once written, never change the answer — a sign-up's user
//! (its id is the record's position), a post's idempotency key naming its
//! position, a first
//! emotion at its position, a room with the record's owner and `at`, an
//! account whose username maps to the record's user id. The answer is
//! therefore the same however far the projector has run ahead, and a
//! backfill from offset 0 (after `clear("admin")`) rebuilds the same views.
//! An edit's emotion is not in the mix: whether it stands depends on later
//! edits, so the mix is of messages as first classified.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use emosation_core::Record;
use emosation_core::emotion::Label;
use emosation_core::ids::{LogPosition, Topic, normalize_username};
use emosation_core::ports::{Decisions, LogEntry, ViewBatch, ViewStore};
use emosation_core::time::day_start;
use emosation_core::view::{
    ADMIN_VIEWS, AUDIT_PAGE, AdminCountsView, AuditEntryView, AuditHeadView, AuditPageView, ViewKey, ViewValue,
};

use crate::{AnalyticsConsumer, Checkpoint, ConsumerError};

/// The `admin` consumer: daily counts and the audit of admin actions.
pub struct AdminConsumer {
    views: Arc<dyn ViewStore>,
    decisions: Arc<dyn Decisions>,
}

impl std::fmt::Debug for AdminConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConsumer").finish_non_exhaustive()
    }
}

/// What one record would count, if the fold accepted it; `check` is the
/// core entity that tells (see the module's notes).
enum Effect {
    Signup,
    Room { owner_id: String, at: i64 },
    Message { position: String },
    Emotion { slot: usize, position: String },
    Audit(AuditEntryView),
}

struct Candidate {
    offset: u64,
    at: i64,
    check: ViewKey,
    effect: Effect,
}

impl AdminConsumer {
    /// `views` holds the core views it reads and the `admin` views it
    /// writes; `decisions` tells when the core projector has applied a record.
    pub fn new(views: Arc<dyn ViewStore>, decisions: Arc<dyn Decisions>) -> Self {
        AdminConsumer { views, decisions }
    }

    fn candidate(topic: Topic, pos: LogPosition, record: Record) -> Option<Candidate> {
        let offset = pos.offset;
        let audit = |at: i64, action: &str, by: String, user_id: String, username: String| Candidate {
            offset,
            at,
            check: ViewKey::Username(normalize_username(&username)),
            effect: Effect::Audit(AuditEntryView {
                at,
                position: pos.to_id(),
                action: action.to_owned(),
                by,
                user_id,
                username: normalize_username(&username),
            }),
        };
        match (topic, record) {
            (Topic::Accounts, Record::UserSignedUp(r)) => Some(Candidate {
                offset,
                at: r.at,
                check: ViewKey::User(pos.to_id()),
                effect: Effect::Signup,
            }),
            (Topic::Accounts, Record::AdminRoleChanged(r)) => {
                let action = if r.granted { "admin_granted" } else { "admin_revoked" };
                Some(audit(r.at, action, r.by, r.user_id, r.username))
            }
            // A deletion by the account's owner is not an admin action.
            (Topic::Accounts, Record::AccountDeleted(r)) => match r.by {
                Some(by) if by != r.user_id => Some(audit(r.at, "account_deleted", by, r.user_id, r.username)),
                _ => None,
            },
            // Only admins restore; records from before `by` name no one.
            (Topic::Accounts, Record::AccountRestored(r)) => {
                let by = r.by.unwrap_or_else(|| "unknown".to_owned());
                Some(audit(r.at, "account_restored", by, r.user_id, r.username))
            }
            (Topic::Rooms, Record::RoomCreated(r)) => Some(Candidate {
                offset,
                at: r.at,
                check: ViewKey::Room(r.room_id),
                effect: Effect::Room {
                    owner_id: r.owner_id,
                    at: r.at,
                },
            }),
            // Stored iff its idempotency key names this position (a refused
            // post has none, a repeat names the first): a 16-byte value to
            // read where the message itself would be a whole copy.
            (Topic::Rooms, Record::MessagePosted(r)) => Some(Candidate {
                offset,
                at: r.at,
                check: ViewKey::ClientMsg {
                    room_id: r.room_id,
                    user_id: r.author_id,
                    client_msg_id: r.client_msg_id,
                },
                effect: Effect::Message { position: pos.to_id() },
            }),
            (Topic::Rooms, Record::EmotionRecorded(r)) if r.edit_id.is_none() => {
                let label: Label = r.label.parse().ok()?;
                Some(Candidate {
                    offset,
                    at: r.at,
                    check: ViewKey::emotion(&r.room_id, &r.message_id),
                    effect: Effect::Emotion {
                        slot: Label::ALL.iter().position(|l| *l == label).unwrap_or(6),
                        position: pos.to_id(),
                    },
                })
            }
            _ => None,
        }
    }

    /// The candidates the fold accepted. A post's and a first emotion's
    /// answer comes from the projector's report when it is in this process
    /// ([`Decisions::took_effect`]: for these, the same answer as their
    /// write-once check entity); the rest, and all of them without a
    /// report, from the views, in one lookup.
    async fn accepted_of<'a>(
        &self,
        topic: Topic,
        partition: u32,
        candidates: &'a [Candidate],
    ) -> Result<Vec<&'a Candidate>, ConsumerError> {
        let reported = |c: &Candidate| matches!(c.effect, Effect::Message { .. } | Effect::Emotion { .. });
        let offsets: Vec<u64> = candidates.iter().filter(|c| reported(c)).map(|c| c.offset).collect();
        let mut known = match offsets.is_empty() {
            true => None,
            false => self.decisions.took_effect(topic, partition, &offsets),
        }
        .map(Vec::into_iter);
        let checks: Vec<ViewKey> = candidates
            .iter()
            .filter(|c| known.is_none() || !reported(c))
            .map(|c| c.check.clone())
            .collect();
        let mut found = match checks.is_empty() {
            true => Vec::new(),
            false => self.views.load(&checks).await?,
        }
        .into_iter();
        let mut accepted = Vec::new();
        for c in candidates {
            let yes = match known.as_mut() {
                Some(known) if reported(c) => known.next().unwrap_or(false),
                _ => Self::accepted(c, found.next().flatten().as_ref()),
            };
            if yes {
                accepted.push(c);
            }
        }
        Ok(accepted)
    }

    /// Whether the fold accepted the candidate, given its check entity.
    fn accepted(c: &Candidate, found: Option<&ViewValue>) -> bool {
        match (&c.effect, found) {
            (Effect::Signup, Some(_)) => true,
            (Effect::Message { position }, Some(ViewValue::ClientMsg(id))) => id == position,
            (Effect::Room { owner_id, at }, Some(ViewValue::Room(r))) => r.owner_id == *owner_id && r.created_at == *at,
            (Effect::Emotion { position, .. }, Some(ViewValue::Emotion(e))) => e.position == *position,
            (Effect::Audit(a), Some(ViewValue::Username(id))) => *id == a.user_id,
            _ => false,
        }
    }
}

#[async_trait]
impl AnalyticsConsumer for AdminConsumer {
    fn group(&self) -> &'static str {
        ADMIN_VIEWS
    }

    fn topics(&self) -> Vec<Topic> {
        vec![Topic::Accounts, Topic::Rooms]
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint::Views(Arc::clone(&self.views))
    }

    fn linger(&self) -> Duration {
        crate::DASHBOARD_LINGER
    }

    async fn handle_batch(&self, topic: Topic, partition: u32, entries: &[LogEntry]) -> Result<(), ConsumerError> {
        let Some(last) = entries.last().map(|e| e.offset) else {
            return Ok(());
        };
        let candidates: Vec<Candidate> = entries
            .iter()
            .filter_map(|e| {
                let record = emosation_schemas::decode(&e.value).ok()?;
                Self::candidate(topic, LogPosition::new(partition, e.offset), record)
            })
            .collect();
        // Never ahead of the core views (see the activity consumer).
        crate::core_caught_up(&*self.decisions, topic, partition, last).await?;
        let mut changes: Vec<(ViewKey, Option<ViewValue>)> = Vec::new();
        if !candidates.is_empty() {
            let accepted = self.accepted_of(topic, partition, &candidates).await?;
            // This batch's counts by UTC day (the totals are their sum),
            // then added to what is stored.
            let mut days: BTreeMap<i64, AdminCountsView> = BTreeMap::new();
            let mut audits: Vec<AuditEntryView> = Vec::new();
            for c in &accepted {
                if let Effect::Audit(a) = &c.effect {
                    audits.push(a.clone());
                    continue;
                }
                let day = day_start(c.at).max(0);
                let v = days.entry(day).or_insert_with(|| AdminCountsView {
                    day,
                    ..AdminCountsView::default()
                });
                match &c.effect {
                    Effect::Signup => v.signups += 1,
                    Effect::Room { .. } => v.rooms += 1,
                    Effect::Message { .. } => v.messages += 1,
                    Effect::Emotion { slot, .. } => v.emotions[*slot] += 1,
                    Effect::Audit(_) => {}
                }
            }
            if !days.is_empty() {
                let mut totals = AdminCountsView::default();
                for v in days.values() {
                    totals.add(v);
                }
                let mut batch: Vec<(ViewKey, AdminCountsView)> = days
                    .into_iter()
                    .map(|(day, v)| (ViewKey::admin_day(topic, partition, day), v))
                    .collect();
                batch.push((ViewKey::admin_totals(topic, partition), totals));
                let keys: Vec<ViewKey> = batch.iter().map(|(k, _)| k.clone()).collect();
                for ((key, mut counts), stored) in batch.into_iter().zip(self.views.load(&keys).await?) {
                    if let Some(ViewValue::AdminCounts(stored)) = stored {
                        counts.add(&stored);
                    }
                    changes.push((key, Some(ViewValue::AdminCounts(counts))));
                }
            }
            if !audits.is_empty() {
                changes.extend(self.append_audit(partition, audits).await?);
            }
        }
        self.views
            .apply(ViewBatch {
                consumer: ADMIN_VIEWS.to_owned(),
                changes,
                positions: vec![(topic, partition, last + 1)],
            })
            .await?;
        Ok(())
    }
}

impl AdminConsumer {
    /// The head and pages that appending `entries` to partition's audit writes.
    async fn append_audit(
        &self,
        partition: u32,
        entries: Vec<AuditEntryView>,
    ) -> Result<Vec<(ViewKey, Option<ViewValue>)>, ConsumerError> {
        let head_key = ViewKey::audit(partition, None);
        let mut head = match self.views.load(std::slice::from_ref(&head_key)).await?.pop().flatten() {
            Some(ViewValue::AuditHead(h)) => h,
            _ => AuditHeadView::default(),
        };
        let mut pages: BTreeMap<u64, AuditPageView> = BTreeMap::new();
        let last_page = head.count / AUDIT_PAGE;
        if head.count % AUDIT_PAGE != 0 {
            let key = ViewKey::audit(partition, Some(last_page));
            if let Some(ViewValue::AuditPage(p)) = self.views.load(std::slice::from_ref(&key)).await?.pop().flatten() {
                pages.insert(last_page, p);
            }
        }
        for e in entries {
            pages.entry(head.count / AUDIT_PAGE).or_default().entries.push(e);
            head.count += 1;
        }
        let mut out: Vec<(ViewKey, Option<ViewValue>)> = pages
            .into_iter()
            .map(|(n, p)| (ViewKey::audit(partition, Some(n)), Some(ViewValue::AuditPage(p))))
            .collect();
        out.push((head_key, Some(ViewValue::AuditHead(head))));
        Ok(out)
    }
}
