//! [`LocalPresence`]: the presence port in process, for one node (the
//! embedded default). Registrations have no expiry to enforce: a connection
//! of this process unregisters when it closes, and a crash takes the
//! registry with it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use emosation_core::ports::{ConnRef, KickReason, KickSink, Presence, PresenceError};

#[derive(Default)]
pub struct LocalPresence {
    users: Mutex<HashMap<String, Sessions>>,
    sinks: Mutex<HashMap<String, KickSink>>,
}

impl std::fmt::Debug for LocalPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPresence").finish_non_exhaustive()
    }
}

impl LocalPresence {
    pub fn new() -> Self {
        Self::default()
    }
}

/// One user's connections in registration order; every operation is
/// O(log n), so a user with thousands of sessions costs no more per connect.
#[derive(Default)]
struct Sessions {
    by_seq: BTreeMap<u64, ConnRef>,
    seq_of: HashMap<ConnRef, u64>,
    next: u64,
}

impl Sessions {
    fn remove(&mut self, conn: &ConnRef) -> bool {
        match self.seq_of.remove(conn) {
            Some(seq) => self.by_seq.remove(&seq).is_some(),
            None => false,
        }
    }

    /// Registers `conn` as the newest; returns the oldest beyond `max`.
    fn register(&mut self, conn: &ConnRef, max: usize) -> Vec<ConnRef> {
        self.remove(conn);
        self.next += 1;
        self.by_seq.insert(self.next, conn.clone());
        self.seq_of.insert(conn.clone(), self.next);
        let mut evicted = Vec::new();
        while self.by_seq.len() > max.max(1) {
            if let Some((_, old)) = self.by_seq.pop_first() {
                self.seq_of.remove(&old);
                evicted.push(old);
            }
        }
        evicted
    }
}

#[async_trait]
impl Presence for LocalPresence {
    async fn register(
        &self,
        user_id: &str,
        conn: &ConnRef,
        max: usize,
        _ttl: Duration,
    ) -> Result<Vec<ConnRef>, PresenceError> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        Ok(users.entry(user_id.to_owned()).or_default().register(conn, max))
    }

    async fn refresh(&self, user_id: &str, conn: &ConnRef, _ttl: Duration) -> Result<bool, PresenceError> {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        Ok(users.get(user_id).is_some_and(|l| l.seq_of.contains_key(conn)))
    }

    async fn unregister(&self, user_id: &str, conn: &ConnRef) -> Result<(), PresenceError> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = users.get_mut(user_id) {
            list.remove(conn);
            if list.by_seq.is_empty() {
                users.remove(user_id);
            }
        }
        Ok(())
    }

    async fn online(&self, user_ids: &[String]) -> Result<Vec<bool>, PresenceError> {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        Ok(user_ids.iter().map(|u| users.contains_key(u)).collect())
    }

    async fn connections(&self, user_id: &str) -> Result<Vec<ConnRef>, PresenceError> {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        Ok(users
            .get(user_id)
            .map(|l| l.by_seq.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn kick(&self, conn: &ConnRef, reason: KickReason) -> Result<(), PresenceError> {
        let sink = self
            .sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&conn.node)
            .cloned();
        if let Some(sink) = sink {
            sink(conn.conn, reason);
        }
        Ok(())
    }

    async fn on_kicks(&self, node: &str, sink: KickSink) -> Result<(), PresenceError> {
        self.sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.to_owned(), sink);
        Ok(())
    }
}
