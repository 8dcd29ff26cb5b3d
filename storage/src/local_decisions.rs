//! [`LocalDecisions`]: the in-process [`Decisions`] feed, for when ingest and
//! the projector share a process (the all-in-one server).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use emosation_core::ports::{Decision, DecisionTicket, Decisions};
use tokio::sync::oneshot;

#[derive(Debug, Default)]
pub struct LocalDecisions {
    waiting: Arc<Mutex<HashMap<i64, oneshot::Sender<Decision>>>>,
}

impl LocalDecisions {
    pub fn new() -> Self {
        Self::default()
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
}
