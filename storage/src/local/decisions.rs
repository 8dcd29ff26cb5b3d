//! [`LocalDecisions`]: the in-process [`Decisions`] feed, for when ingest and
//! the projector share a process (the all-in-one server).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use std::time::Duration;

use emosation_core::ids::Topic;
use emosation_core::ports::{AppliedTicket, Decision, DecisionTicket, Decisions};
use tokio::sync::{oneshot, watch};

#[derive(Debug, Default)]
pub struct LocalDecisions {
    waiting: Arc<Mutex<HashMap<i64, oneshot::Sender<Decision>>>>,
    watermarks: Mutex<HashMap<(Topic, u32), watch::Sender<u64>>>,
}

impl LocalDecisions {
    pub fn new() -> Self {
        Self::default()
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
        self.watermark(topic, partition).send_if_modified(|v| {
            let advanced = next_offset > *v;
            *v = (*v).max(next_offset);
            advanced
        });
    }

    fn wait_applied(&self, topic: Topic, partition: u32, offset: u64, timeout: Duration) -> AppliedTicket {
        let mut rx = self.watermark(topic, partition).subscribe();
        Box::pin(async move {
            let _ = tokio::time::timeout(timeout, rx.wait_for(|v| *v > offset)).await;
            *rx.borrow()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emosation_core::ids::LogPosition;
    use emosation_core::{Accepted, Outcome};

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
}
