//! [`LocalPresence`]: the presence port in process, for one node (the
//! embedded default). Registrations have no expiry to enforce: a connection
//! of this process unregisters when it closes, and a crash takes the
//! registry with it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use emosation_core::ports::{ConnRef, KickReason, KickSink, Presence, PresenceError, RoomSignal, SignalSink};

#[derive(Default)]
pub struct LocalPresence {
    users: Mutex<HashMap<String, Sessions>>,
    sinks: Mutex<HashMap<String, KickSink>>,
    rooms: Mutex<HashMap<String, RoomHere>>,
    signal_sinks: Mutex<Vec<SignalSink>>,
}

/// Who has one room open: each connection's entry (its user, and when it
/// expires unless refreshed), and the users whose departure is pending.
#[derive(Default)]
struct RoomHere {
    entries: HashMap<ConnRef, (String, Instant)>,
    /// Each user's connections among `entries` (so that a room of 10,000
    /// sockets is not scanned on every enter and exit).
    by_user: HashMap<String, HashSet<ConnRef>>,
    departing: HashSet<String>,
}

impl RoomHere {
    fn live(&self, user_id: &str, now: Instant) -> bool {
        self.by_user.get(user_id).is_some_and(|conns| {
            conns
                .iter()
                .any(|c| self.entries.get(c).is_some_and(|(_, exp)| *exp > now))
        })
    }

    fn insert(&mut self, conn: &ConnRef, user_id: &str, until: Instant) {
        self.entries.insert(conn.clone(), (user_id.to_owned(), until));
        self.by_user.entry(user_id.to_owned()).or_default().insert(conn.clone());
    }

    fn remove(&mut self, conn: &ConnRef) -> bool {
        let Some((user, _)) = self.entries.remove(conn) else {
            return false;
        };
        if let Some(conns) = self.by_user.get_mut(&user) {
            conns.remove(conn);
            if conns.is_empty() {
                self.by_user.remove(&user);
            }
        }
        true
    }
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

    async fn online_count(&self) -> Result<u64, PresenceError> {
        Ok(self.users.lock().unwrap_or_else(|e| e.into_inner()).len() as u64)
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

    async fn enter_room(
        &self,
        room_id: &str,
        user_id: &str,
        conn: &ConnRef,
        ttl: Duration,
    ) -> Result<bool, PresenceError> {
        let now = Instant::now();
        let mut rooms = self.rooms();
        let room = rooms.entry(room_id.to_owned()).or_default();
        let there = room.live(user_id, now) || room.departing.remove(user_id);
        room.insert(conn, user_id, now + ttl);
        Ok(!there)
    }

    async fn refresh_rooms(
        &self,
        conn: &ConnRef,
        _user_id: &str,
        rooms: &[String],
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        let until = Instant::now() + ttl;
        let mut all = self.rooms();
        for r in rooms {
            if let Some(e) = all.get_mut(r).and_then(|room| room.entries.get_mut(conn)) {
                e.1 = until;
            }
        }
        Ok(())
    }

    async fn exit_room(&self, room_id: &str, user_id: &str, conn: &ConnRef) -> Result<bool, PresenceError> {
        let mut rooms = self.rooms();
        let Some(room) = rooms.get_mut(room_id) else {
            return Ok(false);
        };
        if !room.remove(conn) {
            return Ok(false);
        }
        if room.live(user_id, Instant::now()) {
            return Ok(false);
        }
        room.departing.insert(user_id.to_owned());
        Ok(true)
    }

    async fn settle_departure(&self, room_id: &str, user_id: &str) -> Result<bool, PresenceError> {
        let mut rooms = self.rooms();
        let Some(room) = rooms.get_mut(room_id) else {
            return Ok(false);
        };
        let gone = !room.live(user_id, Instant::now()) && room.departing.remove(user_id);
        if room.entries.is_empty() && room.departing.is_empty() {
            rooms.remove(room_id);
        }
        Ok(gone)
    }

    async fn sweep_room(&self, room_id: &str) -> Result<Vec<String>, PresenceError> {
        let now = Instant::now();
        let mut rooms = self.rooms();
        let Some(room) = rooms.get_mut(room_id) else {
            return Ok(Vec::new());
        };
        let stale: Vec<(ConnRef, String)> = room
            .entries
            .iter()
            .filter(|(_, (_, exp))| *exp <= now)
            .map(|(c, (u, _))| (c.clone(), u.clone()))
            .collect();
        let mut expired = Vec::with_capacity(stale.len());
        for (c, u) in stale {
            room.remove(&c);
            expired.push(u);
        }
        expired.sort();
        expired.dedup();
        expired.retain(|u| !room.live(u, now) && !room.departing.contains(u));
        if room.entries.is_empty() && room.departing.is_empty() {
            rooms.remove(room_id);
        }
        Ok(expired)
    }

    async fn here(&self, room_id: &str) -> Result<Vec<String>, PresenceError> {
        let now = Instant::now();
        let rooms = self.rooms();
        let mut users: Vec<String> = rooms
            .get(room_id)
            .map(|r| r.by_user.keys().filter(|u| r.live(u, now)).cloned().collect())
            .unwrap_or_default();
        users.sort();
        Ok(users)
    }

    async fn signal(&self, signal: &RoomSignal) -> Result<(), PresenceError> {
        let sinks = self.signal_sinks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for sink in sinks {
            sink(signal.clone());
        }
        Ok(())
    }

    async fn on_signals(&self, _node: &str, sink: SignalSink) -> Result<(), PresenceError> {
        self.signal_sinks.lock().unwrap_or_else(|e| e.into_inner()).push(sink);
        Ok(())
    }
}

impl LocalPresence {
    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<String, RoomHere>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }
}
