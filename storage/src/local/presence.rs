//! [`LocalPresence`]: the presence port in process, for one node (the
//! embedded default). Registrations have no expiry to enforce: a connection
//! of this process unregisters when it closes, and a crash takes the
//! registry with it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use emosation_core::ports::{ConnRef, KickSink, Presence, PresenceError};

#[derive(Default)]
pub struct LocalPresence {
    users: Mutex<HashMap<String, Sessions>>,
    sinks: Mutex<HashMap<String, KickSink>>,
    buckets: Mutex<Buckets>,
}

/// Rate-limit buckets by key, and the size above which refilled ones are
/// swept out: twice what the last sweep kept (at least [`SWEEP_ABOVE`]),
/// so a sweep that finds them all still active is not repeated on every
/// call (each costs a pass over the map).
#[derive(Default)]
struct Buckets {
    map: HashMap<String, (f64, Instant)>,
    sweep_above: usize,
}

/// Buckets held before refilled ones are first swept out.
const SWEEP_ABOVE: usize = 100_000;

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

    async fn kick(&self, conn: &ConnRef) -> Result<(), PresenceError> {
        let sink = self
            .sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&conn.node)
            .cloned();
        if let Some(sink) = sink {
            sink(conn.conn);
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

    async fn take(&self, bucket: &str, rate: u32, burst: u32) -> Result<bool, PresenceError> {
        if rate == 0 {
            return Ok(true);
        }
        let (rate, burst) = (rate as f64, burst.max(1) as f64);
        let now = Instant::now();
        let mut guard = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let Buckets {
            map: buckets,
            sweep_above,
        } = &mut *guard;
        if buckets.len() > (*sweep_above).max(SWEEP_ABOVE) {
            // Forget buckets that have refilled: they are indistinguishable from new ones.
            buckets.retain(|_, (_, t)| now.duration_since(*t).as_secs_f64() < burst / rate);
            *sweep_above = buckets.len() * 2;
        }
        // The hot path (every post) finds its bucket without allocating a key.
        if !buckets.contains_key(bucket) {
            buckets.insert(bucket.to_owned(), (burst, now));
        }
        let Some((tokens, last)) = buckets.get_mut(bucket) else {
            return Ok(true);
        };
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(true)
        } else {
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fill(p: &LocalPresence, n: usize, rate: u32, burst: u32) {
        for i in 0..n {
            assert!(p.take(&format!("user-{i}"), rate, burst).await.unwrap());
        }
    }

    #[tokio::test]
    async fn refilled_buckets_are_swept_out_past_the_threshold() {
        let p = LocalPresence::new();
        // A bucket of burst 1 at 1,000,000/s is full again after 1 µs.
        fill(&p, SWEEP_ABOVE + 1, 1_000_000, 1).await;
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(p.take("one-more", 1_000_000, 1).await.unwrap());
        let b = p.buckets.lock().unwrap();
        assert_eq!(b.map.len(), 1, "only the newest bucket is kept");
    }

    #[tokio::test]
    async fn a_sweep_that_keeps_everything_is_not_repeated_on_every_call() {
        let p = LocalPresence::new();
        // Refilling takes 1,000 s: every bucket stays active.
        fill(&p, SWEEP_ABOVE + 1, 1, 1000).await;
        assert!(p.take("one-more", 1, 1000).await.unwrap());
        let b = p.buckets.lock().unwrap();
        assert_eq!(b.map.len(), SWEEP_ABOVE + 2);
        assert_eq!(
            b.sweep_above,
            2 * (SWEEP_ABOVE + 1),
            "the next sweep waits for twice as many"
        );
    }
}
