//! [`LocalDecisions`]: the in-process [`Decisions`] feed, for when ingest and
//! the projector share a process (the all-in-one server), and the waiters'
//! side of [`RedisDecisions`](crate::RedisDecisions).
//!
//! Opened over a view store ([`LocalDecisions::with_views`]), its
//! `wait_applied` also reads the store's core position, which sees a
//! projector in any process: every second while reported watermarks keep a
//! wait waiting, and every 10 ms, starting at once, while no projector has
//! reported anything here (see the [`Decisions`] contract).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use emosation_core::ids::Topic;
use emosation_core::ports::{AppliedTicket, CORE_VIEWS, Decision, DecisionTicket, Decisions, ViewStore};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

/// How often a wait reads the stored position while reported watermarks
/// keep it waiting: a report lost on the way, or a projector reporting
/// elsewhere, delays a waiter by at most this much.
const RECHECK: Duration = Duration::from_secs(1);
/// How often a wait reads the stored position while no projector has
/// reported here: it is the only source.
const POLL: Duration = Duration::from_millis(10);

#[derive(Default)]
pub struct LocalDecisions {
    waiting: Arc<Mutex<HashMap<i64, oneshot::Sender<Decision>>>>,
    watermarks: Mutex<HashMap<(Topic, u32), watch::Sender<u64>>>,
    /// Whether a projector has reported a watermark here (`applied`).
    reported: Arc<AtomicBool>,
    /// The view store whose core positions answer waits too.
    views: Option<Arc<dyn ViewStore>>,
    /// Per partition, the latest stretch of the projector's reports of
    /// which records took effect (`folded`), for `took_effect`.
    effects: Mutex<HashMap<(Topic, u32), Effects>>,
}

/// Offsets of a partition whose fold reports are kept, at most: 32 KiB of
/// bits per partition. Readers that follow the projector closely (the
/// fan-out, the dashboards at their quarter-second linger) are well within
/// it at any rate this server sustains; one further behind (a backfill)
/// asks the views.
const EFFECTS_KEPT: u64 = 1 << 18;

/// One bit per offset, for a contiguous stretch of a partition's reports.
#[derive(Debug)]
struct Effects {
    /// The first offset covered: where the reports began after a gap, or
    /// the oldest kept.
    from: u64,
    /// One past the last offset covered.
    to: u64,
    /// The offset of bit 0 of `bits[0]` (a multiple of 64, `<= from`).
    base: u64,
    bits: std::collections::VecDeque<u64>,
}

impl Effects {
    fn starting_at(from: u64) -> Effects {
        Effects {
            from,
            to: from,
            base: from & !63,
            bits: std::collections::VecDeque::new(),
        }
    }

    /// Adds the report of `[from, next)`. A report that does not continue
    /// the last one (a projector restarted elsewhere in the partition)
    /// starts the stretch again: what lies between is not known here.
    fn report(&mut self, from: u64, next: u64, effective: &[u64]) {
        if from != self.to || next < from {
            *self = Effects::starting_at(from);
        }
        let words = (next - self.base).div_ceil(64) as usize;
        self.bits.resize(words.max(self.bits.len()), 0);
        for &o in effective.iter().filter(|o| (from..next).contains(*o)) {
            let i = o - self.base;
            self.bits[(i / 64) as usize] |= 1 << (i % 64);
        }
        self.to = next;
        while self.to - self.base > EFFECTS_KEPT + 64 {
            self.bits.pop_front();
            self.base += 64;
        }
        self.from = self.from.max(self.base);
    }

    fn get(&self, offsets: &[u64]) -> Option<Vec<bool>> {
        offsets
            .iter()
            .map(|&o| {
                (self.from..self.to).contains(&o).then(|| {
                    let i = o - self.base;
                    self.bits[(i / 64) as usize] >> (i % 64) & 1 == 1
                })
            })
            .collect()
    }
}

impl std::fmt::Debug for LocalDecisions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDecisions")
            .field("pending", &self.pending())
            .field("with_views", &self.views.is_some())
            .finish_non_exhaustive()
    }
}

impl LocalDecisions {
    /// Watermarks are what projectors report here, and nothing else.
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits also read `views`' core position: the view store the caller
    /// reads, which a projector in another process may be writing.
    pub fn with_views(views: Arc<dyn ViewStore>) -> Self {
        LocalDecisions {
            views: Some(views),
            ..Self::default()
        }
    }

    fn watermark(&self, topic: Topic, partition: u32) -> watch::Sender<u64> {
        self.watermarks
            .lock()
            .expect("watermarks lock")
            .entry((topic, partition))
            .or_insert_with(|| watch::channel(0).0)
            .clone()
    }

    /// Waits registered and not yet resolved or dropped.
    pub fn pending(&self) -> usize {
        self.waiting.lock().expect("decisions lock").len()
    }
}

/// Moves a watermark forward to `next_offset` (never back).
fn advance(watermark: &watch::Sender<u64>, next_offset: u64) {
    watermark.send_if_modified(|v| {
        let advanced = next_offset > *v;
        *v = (*v).max(next_offset);
        advanced
    });
}

/// Removes its registration when dropped, so abandoned waits do not pile up.
struct Ticket {
    request_id: i64,
    rx: oneshot::Receiver<Decision>,
    waiting: Arc<Mutex<HashMap<i64, oneshot::Sender<Decision>>>>,
}

impl Future for Ticket {
    type Output = Option<Decision>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(Result::ok)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Ok(mut w) = self.waiting.lock() {
            w.remove(&self.request_id);
        }
    }
}

impl Decisions for LocalDecisions {
    fn expect(&self, request_id: i64) -> DecisionTicket {
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().expect("decisions lock").insert(request_id, tx);
        Box::pin(Ticket {
            request_id,
            rx,
            waiting: Arc::clone(&self.waiting),
        })
    }

    fn publish(&self, request_id: i64, decision: Decision) {
        let tx = self.waiting.lock().expect("decisions lock").remove(&request_id);
        if let Some(tx) = tx {
            let _ = tx.send(decision);
        }
    }

    fn applied(&self, topic: Topic, partition: u32, next_offset: u64) {
        if !self.reported.load(Ordering::Relaxed) {
            self.reported.store(true, Ordering::Relaxed);
        }
        advance(&self.watermark(topic, partition), next_offset);
    }

    fn folded(&self, topic: Topic, partition: u32, from: u64, next: u64, effective: &[u64]) {
        self.effects
            .lock()
            .expect("effects lock")
            .entry((topic, partition))
            .or_insert_with(|| Effects::starting_at(from))
            .report(from, next, effective);
    }

    fn took_effect(&self, topic: Topic, partition: u32, offsets: &[u64]) -> Option<Vec<bool>> {
        self.effects
            .lock()
            .expect("effects lock")
            .get(&(topic, partition))?
            .get(offsets)
    }

    fn wait_applied(&self, topic: Topic, partition: u32, offset: u64, timeout: Duration) -> AppliedTicket {
        let watermark = self.watermark(topic, partition);
        let mut rx = watermark.subscribe();
        let Some(views) = self.views.clone() else {
            return Box::pin(async move {
                let _ = tokio::time::timeout(timeout, rx.wait_for(|v| *v > offset)).await;
                *rx.borrow()
            });
        };
        let reported = Arc::clone(&self.reported);
        Box::pin(async move {
            let deadline = Instant::now() + timeout;
            // With no projector reporting here, the stored position is the
            // only source: read it at once.
            let mut read = !reported.load(Ordering::Relaxed);
            let mut warned = false;
            loop {
                if *rx.borrow() > offset {
                    break;
                }
                if read {
                    match views.position(CORE_VIEWS, topic, partition).await {
                        // What the store holds is applied: other waiters
                        // on the partition need not read it again.
                        Ok(stored) => advance(&watermark, stored),
                        Err(e) if !warned => {
                            warned = true;
                            warn!(topic = topic.name(), partition, error = %e, "reading the projector's stored position");
                        }
                        Err(e) => {
                            debug!(topic = topic.name(), partition, error = %e, "reading the projector's stored position")
                        }
                    }
                    if *rx.borrow() > offset {
                        break;
                    }
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let every = if reported.load(Ordering::Relaxed) {
                    RECHECK
                } else {
                    POLL
                };
                let until = (now + every).min(deadline);
                if tokio::time::timeout_at(until, rx.wait_for(|v| *v > offset))
                    .await
                    .is_ok()
                {
                    break;
                }
                read = true;
            }
            *rx.borrow()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emosation_core::ids::LogPosition;
    use emosation_core::{Accepted, Outcome};

    /// Reports are kept per partition as one stretch: known offsets are
    /// answered, anything outside the stretch (before it, after it, across
    /// a gap, or dropped as the oldest) is not.
    #[test]
    fn fold_reports_answer_only_for_the_stretch_they_cover() {
        let d = LocalDecisions::new();
        assert_eq!(d.took_effect(Topic::Rooms, 0, &[0]), None, "nothing reported");
        d.folded(Topic::Rooms, 0, 100, 103, &[100, 102]);
        d.folded(Topic::Rooms, 0, 103, 200, &[150, 199]);
        assert_eq!(
            d.took_effect(Topic::Rooms, 0, &[100, 101, 102, 150, 151, 199]),
            Some(vec![true, false, true, true, false, true])
        );
        assert_eq!(d.took_effect(Topic::Rooms, 0, &[99, 100]), None, "before the stretch");
        assert_eq!(d.took_effect(Topic::Rooms, 0, &[200]), None, "not reported yet");
        assert_eq!(d.took_effect(Topic::Rooms, 1, &[150]), None, "another partition");
        assert_eq!(d.took_effect(Topic::Accounts, 0, &[150]), None, "another topic");
        // A report that does not continue the stretch starts it again.
        d.folded(Topic::Rooms, 0, 300, 310, &[305]);
        assert_eq!(d.took_effect(Topic::Rooms, 0, &[150]), None, "before the gap");
        assert_eq!(d.took_effect(Topic::Rooms, 0, &[300, 305]), Some(vec![false, true]));
        // The oldest offsets are dropped beyond EFFECTS_KEPT.
        let mut at = 310;
        while at < 310 + EFFECTS_KEPT + 1000 {
            d.folded(Topic::Rooms, 0, at, at + 1000, &[at]);
            at += 1000;
        }
        assert_eq!(d.took_effect(Topic::Rooms, 0, &[305]), None, "dropped as the oldest");
        assert_eq!(
            d.took_effect(Topic::Rooms, 0, &[at - 1000, at - 999]),
            Some(vec![true, false])
        );
        let kept = d.effects.lock().unwrap()[&(Topic::Rooms, 0)].bits.len() as u64;
        assert!(kept * 64 <= EFFECTS_KEPT + 128, "{kept} words kept");
    }

    fn decision() -> Decision {
        let outcome: Outcome = Ok(Accepted::ReadMarkerSet);
        Decision {
            topic: Topic::Rooms,
            position: LogPosition::new(0, 1),
            outcome,
        }
    }

    #[tokio::test]
    async fn decisions_reach_their_waiter_and_abandoned_waits_are_forgotten() {
        let d = LocalDecisions::new();
        let ticket = d.expect(7);
        let dropped = d.expect(8);
        assert_eq!(d.pending(), 2);
        drop(dropped);
        assert_eq!(d.pending(), 1, "a dropped ticket unregisters");
        d.publish(9, decision()); // nobody waits: dropped
        d.publish(7, decision());
        assert_eq!(ticket.await, Some(decision()));
        assert_eq!(d.pending(), 0);
    }

    #[tokio::test]
    async fn applied_watermarks_only_move_forward() {
        let d = LocalDecisions::new();
        d.applied(Topic::Rooms, 2, 5);
        d.applied(Topic::Rooms, 2, 3);
        assert_eq!(d.wait_applied(Topic::Rooms, 2, 4, Duration::from_millis(10)).await, 5);
        // Not yet applied: the wait times out with the current watermark.
        assert_eq!(d.wait_applied(Topic::Rooms, 2, 5, Duration::from_millis(20)).await, 5);
        assert_eq!(d.wait_applied(Topic::Rooms, 3, 0, Duration::from_millis(20)).await, 0);
    }

    /// Stores `next` as the core views' position of `topic`/`partition`,
    /// as a projector in another process would.
    async fn store_position(views: &dyn ViewStore, partition: u32, next: u64) {
        views
            .apply(emosation_core::ports::ViewBatch {
                consumer: CORE_VIEWS.into(),
                changes: Vec::new(),
                positions: vec![(Topic::Rooms, partition, next)],
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn over_views_a_wait_sees_a_projector_elsewhere_through_the_stored_position() {
        let dir = tempfile::tempdir().unwrap();
        let views: Arc<dyn ViewStore> = Arc::new(crate::EmbeddedViewStore::open(dir.path()).unwrap());
        let d = LocalDecisions::with_views(Arc::clone(&views));

        // No projector reports here: the stored position answers at once…
        store_position(&*views, 1, 5).await;
        assert_eq!(d.wait_applied(Topic::Rooms, 1, 4, Duration::ZERO).await, 5);
        // … and, polled, one stored while the wait waits.
        let wait = d.wait_applied(Topic::Rooms, 1, 7, Duration::from_secs(10));
        let stored_later = async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            store_position(&*views, 1, 8).await;
        };
        let t = Instant::now();
        let (applied, ()) = tokio::join!(wait, stored_later);
        assert_eq!(applied, 8);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // Not there by the deadline: the furthest seen.
        assert_eq!(d.wait_applied(Topic::Rooms, 1, 8, Duration::from_millis(30)).await, 8);

        // Once a projector reports here, its reports answer; the store is
        // read after a second without one (a report lost on the way).
        d.applied(Topic::Rooms, 2, 3);
        store_position(&*views, 2, 10).await;
        let t = Instant::now();
        assert_eq!(d.wait_applied(Topic::Rooms, 2, 5, Duration::from_secs(10)).await, 10);
        assert!(t.elapsed() >= Duration::from_millis(900), "{:?}", t.elapsed());
        // What the store held is now the watermark: no second read.
        let t = Instant::now();
        assert_eq!(d.wait_applied(Topic::Rooms, 2, 9, Duration::from_secs(10)).await, 10);
        assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
        d.applied(Topic::Rooms, 2, 12);
        assert_eq!(d.wait_applied(Topic::Rooms, 2, 11, Duration::ZERO).await, 12);
    }
}
