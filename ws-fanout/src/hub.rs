//! [`Hub`]: this node's registry of rooms → subscriptions, and delivery.
//!
//! A subscription carries `last`, the offset of the last event it has (or is
//! deemed to have) seen; it only ever receives events after `last`, which is
//! what makes resume exact. While it catches up from the log (see
//! [`feed`](crate::feed)), live events for it are held back and handed over
//! in order when it goes live. The registry also keeps, per partition, the
//! next offset its tailer will process: a subscription starts at that
//! boundary, under the same lock, so no event falls between catch-up and
//! live delivery.
//!
//! Delivery queues an event's one shared [`Frame`] on each subscriber under
//! the lock and writes the idle sockets after releasing it ([`Flushes`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use emosation_core::ids::LogPosition;
use indexmap::IndexMap;
use tracing::debug;

use crate::protocol::{self, Stream, Streams};
use crate::socket::{ConnHandle, Frame, Queued};

/// A decided event, ready to deliver.
#[derive(Debug, Clone)]
pub struct Event {
    pub offset: u64,
    pub room_id: String,
    pub stream: Stream,
    pub frame: Frame,
    /// A member left: their subscriptions to the room end after this event.
    pub left: Option<String>,
}

struct Sub {
    /// Distinguishes a re-subscription from the one it replaced, so a
    /// catch-up of the old one cannot deliver into the new one.
    id: u64,
    conn: Arc<ConnHandle>,
    streams: Streams,
    /// Offset of the last event this subscription has, or is deemed to have, seen.
    last: u64,
    /// While catching up from the log: live events held back, in order.
    held: Option<Vec<Event>>,
}

/// A room's subscriptions on this node.
struct Room {
    /// The room's partition of the rooms topic, as [`Hub::partition_of`]
    /// found it when the room got its first subscriber here.
    partition: u32,
    /// By connection id (one per connection): dense to iterate for
    /// delivery, O(1) to add or remove, so a room of 10,000 sockets is not
    /// scanned each time one leaves.
    subs: IndexMap<u64, Sub>,
    /// How many of `subs` want each stream, and how many are catching up:
    /// whether anyone here wants a record is then O(1), not a pass over a
    /// room of 10,000 sockets per emotion nobody subscribed to.
    wanting: Wanting,
}

#[derive(Default)]
struct Wanting {
    chat: usize,
    emotion: usize,
    catching_up: usize,
}

impl Room {
    fn new(partition: u32) -> Room {
        Room {
            partition,
            subs: IndexMap::new(),
            wanting: Wanting::default(),
        }
    }

    fn insert(&mut self, conn_id: u64, sub: Sub) {
        self.count(&sub, 1);
        if let Some(old) = self.subs.insert(conn_id, sub) {
            self.count(&old, -1);
        }
    }

    fn remove(&mut self, conn_id: u64) -> Option<Sub> {
        let sub = self.subs.swap_remove(&conn_id)?;
        self.count(&sub, -1);
        Some(sub)
    }

    fn count(&mut self, sub: &Sub, by: isize) {
        let w = &mut self.wanting;
        for (n, yes) in [
            (&mut w.chat, sub.streams.chat),
            (&mut w.emotion, sub.streams.emotion),
            (&mut w.catching_up, sub.held.is_some()),
        ] {
            if yes {
                *n = n.checked_add_signed(by).expect("subscription counts stay non-negative");
            }
        }
    }

    /// Ends the catch-up of `conn_id`'s subscription `sub_id`, if that is
    /// still its subscription here: the subscription, live from now on, and
    /// the events held back for it meanwhile.
    fn go_live(&mut self, conn_id: u64, sub_id: u64) -> Option<(&mut Sub, Vec<Event>)> {
        let sub = self.subs.get_mut(&conn_id).filter(|s| s.id == sub_id)?;
        let held = sub.held.take();
        if held.is_some() {
            self.wanting.catching_up -= 1;
        }
        Some((sub, held.unwrap_or_default()))
    }

    /// Whether a subscriber here wants `stream` (or is catching up, and so may).
    fn wants(&self, stream: Stream) -> bool {
        let w = &self.wanting;
        let answer = w.catching_up > 0
            || match stream {
                Stream::Chat => w.chat > 0,
                Stream::Emotion => w.emotion > 0,
            };
        debug_assert_eq!(
            answer,
            self.subs.values().any(|s| s.streams.wants(stream) || s.held.is_some()),
            "the counts agree with the subscriptions"
        );
        answer
    }
}

/// Told when a connection opens a room — subscribes to it with the
/// `presence` stream — and when it closes it (unsubscribed, subscribed again
/// without that stream, its socket closed, its member left the room), under
/// the registry's lock, so in the order they happened: the node's room
/// presence ([`crate::here`]). Must not block.
pub(crate) trait Watcher: Send + Sync {
    fn opened(&self, conn_id: u64, user_id: &str, room_id: &str);
    fn closed(&self, conn_id: u64, user_id: &str, room_id: &str);
}

#[derive(Default)]
struct State {
    /// Told when subscriptions start and end.
    watcher: Option<Arc<dyn Watcher>>,
    /// Room → its subscriptions.
    rooms: HashMap<String, Room>,
    /// Connection id → the rooms it is subscribed to (so closing a socket,
    /// or subscribing it, never scans every room or every subscriber).
    by_conn: HashMap<u64, Vec<String>>,
    /// Partition → next offset its tailer will process.
    tailers: HashMap<u32, u64>,
    /// Partition → how many of its rooms have subscribers here (a tailer
    /// asks after every batch whether it is still wanted).
    rooms_per_partition: HashMap<u32, usize>,
}

impl State {
    /// Removes `conn_id`'s subscription to `room_id`; whether it had one.
    fn remove_sub(&mut self, conn_id: u64, room_id: &str) -> bool {
        let Some(rooms) = self.by_conn.get_mut(&conn_id) else {
            return false;
        };
        let Some(i) = rooms.iter().position(|r| r == room_id) else {
            return false;
        };
        rooms.swap_remove(i);
        if rooms.is_empty() {
            self.by_conn.remove(&conn_id);
        }
        self.leave_room(conn_id, room_id);
        true
    }

    /// Removes `conn_id` from `room_id`'s subscribers (the room side of
    /// [`State::remove_sub`]; the caller updates `by_conn`).
    fn leave_room(&mut self, conn_id: u64, room_id: &str) {
        if let Some(room) = self.rooms.get_mut(room_id) {
            if let (Some(sub), Some(w)) = (room.remove(conn_id), &self.watcher)
                && sub.streams.presence
            {
                w.closed(conn_id, &sub.conn.user_id, room_id);
            }
            if room.subs.is_empty() {
                let p = room.partition;
                self.rooms.remove(room_id);
                if let Some(n) = self.rooms_per_partition.get_mut(&p) {
                    *n -= 1;
                    if *n == 0 {
                        self.rooms_per_partition.remove(&p);
                    }
                }
            }
        }
    }
}

/// The registry (see the module doc).
#[derive(Default)]
pub struct Hub {
    state: Mutex<State>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

static NEXT_SUB: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Live events held back for one catching-up subscription, at most.
const MAX_HELD: usize = 65_536;

/// A new subscription, as [`Hub::register`] made it.
pub(crate) struct Registered {
    /// Distinguishes it from a later subscription of the same connection.
    pub sub_id: u64,
    /// The partition's tailer position when it was made: it catches up from
    /// the log up to here, if it resumes before.
    pub boundary: u64,
    /// No tailer follows the partition yet: the caller starts one at `boundary`.
    pub start_tailer: bool,
    /// The cursor the subscription starts after.
    pub cursor: String,
    /// It must catch up from `since + 1` to `boundary` first.
    pub catch_up: bool,
}

/// What this node's subscribers want, read under the registry's lock.
pub(crate) struct Interest<'a>(&'a State);

impl Interest<'_> {
    /// Whether the room a rooms-topic entry is keyed by has subscribers here.
    pub(crate) fn has_subscribers(&self, key: &[u8]) -> bool {
        std::str::from_utf8(key).is_ok_and(|room| self.0.rooms.contains_key(room))
    }

    /// Whether a subscriber of `room_id` here wants `stream` (or is catching
    /// up, and so may).
    pub(crate) fn wants(&self, room_id: &str, stream: Stream) -> bool {
        self.0.rooms.get(room_id).is_some_and(|r| r.wants(stream))
    }
}

impl Hub {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("hub lock")
    }

    /// Registers `conn`'s subscription to `room_id` in partition `p` (whose
    /// log ends at `end`), replacing any it had, and queues its `subscribed`
    /// frame before any event of it. `since`, if any, is a checked offset
    /// below `end`.
    pub(crate) fn register(
        &self,
        conn: &Arc<ConnHandle>,
        room_id: &str,
        p: u32,
        end: u64,
        since: Option<u64>,
        streams: Streams,
    ) -> Registered {
        let sub_id = NEXT_SUB.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (registered, flush) = {
            let mut st = self.state();
            let (boundary, start_tailer) = match st.tailers.get(&p) {
                Some(next) => (*next, false),
                None => {
                    st.tailers.insert(p, end);
                    (end, true)
                }
            };
            // A connection has at most one subscription per room; a new one
            // replaces it. The watcher hears of the room being opened or
            // closed (subscribed with the `presence` stream, or no longer).
            let was_open = st
                .rooms
                .get(room_id)
                .and_then(|r| r.subs.get(&conn.id))
                .is_some_and(|s| s.streams.presence);
            let watcher = st.watcher.take();
            st.remove_sub(conn.id, room_id);
            st.watcher = watcher;
            if let Some(w) = &st.watcher {
                match (was_open, streams.presence) {
                    (false, true) => w.opened(conn.id, &conn.user_id, room_id),
                    (true, false) => w.closed(conn.id, &conn.user_id, room_id),
                    _ => {}
                }
            }
            st.by_conn.entry(conn.id).or_default().push(room_id.to_owned());
            if !st.rooms.contains_key(room_id) {
                *st.rooms_per_partition.entry(p).or_default() += 1;
            }
            let room = st.rooms.entry(room_id.to_owned()).or_insert_with(|| Room::new(p));
            let (last, held) = match since {
                Some(s) if s + 1 < boundary => (s, Some(Vec::new())),
                Some(s) => (s, None),
                None => (boundary.saturating_sub(1), None),
            };
            let catch_up = held.is_some();
            room.insert(
                conn.id,
                Sub {
                    id: sub_id,
                    conn: Arc::clone(conn),
                    streams,
                    last,
                    held,
                },
            );
            let cursor = LogPosition::new(p, last).to_id();
            // Queued under the lock: `subscribed` goes out before any event
            // of the subscription (the tailer queues those under it too).
            let flush = conn.queue(protocol::subscribed(room_id, &cursor)) == Queued::Flush;
            let registered = Registered {
                sub_id,
                boundary,
                start_tailer,
                cursor,
                catch_up,
            };
            (registered, flush)
        };
        if flush {
            conn.flush();
        }
        registered
    }

    /// The next offset partition `p`'s tailer will process, if one runs.
    pub(crate) fn tailer_next(&self, p: u32) -> Option<u64> {
        self.state().tailers.get(&p).copied()
    }

    pub fn unsubscribe(&self, conn_id: u64, room_id: &str) -> bool {
        self.state().remove_sub(conn_id, room_id)
    }

    /// Whether `conn_id` is subscribed to `room_id` on this node.
    pub fn is_subscribed(&self, conn_id: u64, room_id: &str) -> bool {
        let st = self.state();
        st.by_conn
            .get(&conn_id)
            .is_some_and(|rooms| rooms.iter().any(|r| r == room_id))
    }

    /// Drops every subscription of a closed connection.
    pub fn drop_conn(&self, conn_id: u64) {
        let mut st = self.state();
        for room in st.by_conn.remove(&conn_id).unwrap_or_default() {
            st.leave_room(conn_id, &room);
        }
    }

    /// Installs the watcher told of subscriptions starting and ending.
    pub(crate) fn watch(&self, watcher: Arc<dyn Watcher>) {
        self.state().watcher = Some(watcher);
    }

    /// Queues `frame` (a notice, never logged: typing, presence) for the
    /// room's live subscribers here whose streams it is for, except
    /// connection `except`.
    pub(crate) fn notify(&self, room_id: &str, frame: Frame, except: Option<u64>, for_streams: fn(&Streams) -> bool) {
        let mut flushes = Flushes::default();
        let st = self.state();
        if let Some(room) = st.rooms.get(room_id) {
            for (_, s) in room
                .subs
                .iter()
                .filter(|(conn_id, s)| Some(**conn_id) != except && for_streams(&s.streams) && s.held.is_none())
            {
                flushes.queue(&s.conn, frame.clone());
            }
        }
        drop(st);
        flushes.run();
    }

    /// The rooms `conn_id` has open here (subscribed with the `presence` stream).
    pub(crate) fn open_rooms_of(&self, conn_id: u64) -> Vec<String> {
        let st = self.state();
        let Some(rooms) = st.by_conn.get(&conn_id) else {
            return Vec::new();
        };
        rooms
            .iter()
            .filter(|r| {
                st.rooms
                    .get(r.as_str())
                    .and_then(|room| room.subs.get(&conn_id))
                    .is_some_and(|s| s.streams.presence)
            })
            .cloned()
            .collect()
    }

    /// The rooms some connection here has open (subscribed with the
    /// `presence` stream): the ones whose presence this node sweeps.
    pub(crate) fn open_rooms(&self) -> Vec<String> {
        self.state()
            .rooms
            .iter()
            .filter(|(_, r)| r.subs.values().any(|s| s.streams.presence))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// For each entry (by its key), whether its room has subscribers here.
    pub(crate) fn subscribed_keys<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) -> Vec<bool> {
        let st = self.state();
        let interest = Interest(&st);
        keys.map(|k| interest.has_subscribers(k)).collect()
    }

    /// Moves partition `p`'s tailer to `next` and, under the same lock, runs
    /// `f` on what subscribers want: a subscription made from now on starts
    /// after the batch, and one made before sees the batch delivered.
    pub(crate) fn advance<R>(&self, p: u32, next: u64, f: impl FnOnce(&Interest<'_>) -> R) -> R {
        let mut st = self.state();
        st.tailers.insert(p, next);
        f(&Interest(&st))
    }

    /// Queues `events` (in log order) for their rooms' subscribers; the
    /// caller writes `flushes` after. Each subscriber's frames of the batch
    /// are queued at once (one lock of its queue, one write after). Returns
    /// the most subscribers a room's events went to.
    pub(crate) fn deliver(&self, events: Vec<Event>, flushes: &mut Flushes) -> u64 {
        // Each room's events, in log order; rooms in order of first event.
        let mut rooms: Vec<Vec<&Event>> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for ev in &events {
            let i = *index.entry(ev.room_id.as_str()).or_insert_with(|| {
                rooms.push(Vec::new());
                rooms.len() - 1
            });
            rooms[i].push(ev);
        }
        let mut st = self.state();
        let mut widest = 0;
        let mut delivered = 0;
        for evs in rooms {
            let (reached, frames) = deliver(&mut st, &evs, flushes);
            widest = widest.max(reached);
            delivered += frames;
        }
        metrics::counter!("emosation_fanout_deliveries_total").increment(delivered);
        widest
    }

    /// Stops partition `p`'s tailer (returns true) when none of its rooms
    /// has a subscriber left; the next subscription starts a new tailer from
    /// the log's end.
    pub(crate) fn stop_if_unwanted(&self, p: u32) -> bool {
        let mut st = self.state();
        if st.rooms_per_partition.contains_key(&p) {
            return false;
        }
        st.tailers.remove(&p);
        debug!(partition = p, "fan-out tailer stops: no subscribers");
        true
    }

    /// Whether `conn_id`'s subscription to `room` is still `sub_id`.
    pub(crate) fn is_current(&self, conn_id: u64, sub_id: u64, room: &str) -> bool {
        let st = self.state();
        st.rooms
            .get(room)
            .and_then(|r| r.subs.get(&conn_id))
            .is_some_and(|s| s.id == sub_id)
    }

    /// Whether subscription `sub_id` (of `conn_id` to `room`) is still there
    /// and wants `stream`.
    pub(crate) fn wants(&self, conn_id: u64, sub_id: u64, room: &str, stream: Stream) -> bool {
        let st = self.state();
        st.rooms
            .get(room)
            .and_then(|r| r.subs.get(&conn_id))
            .filter(|s| s.id == sub_id)
            .is_some_and(|s| s.streams.wants(stream))
    }

    /// Ends the catch-up of subscription `sub_id`, which read the log up to
    /// `last`: the events held back meanwhile go out, and it is live.
    pub(crate) fn go_live(&self, conn_id: u64, sub_id: u64, room: &str, last: u64) {
        let mut flushes = Flushes::default();
        let mut st = self.state();
        let Some((sub, held)) = st.rooms.get_mut(room).and_then(|r| r.go_live(conn_id, sub_id)) else {
            return;
        };
        sub.last = sub.last.max(last);
        for ev in held {
            if ev.offset > sub.last && sub.streams.wants(ev.stream) {
                flushes.queue(&sub.conn, ev.frame);
                sub.last = ev.offset;
            }
        }
        drop(st);
        flushes.run();
    }
}

/// Sockets that frames were queued on while they were idle, to write once
/// the hub's lock is released.
#[derive(Default)]
pub(crate) struct Flushes(Vec<Arc<ConnHandle>>);

impl Flushes {
    fn queue(&mut self, conn: &Arc<ConnHandle>, frame: Frame) -> bool {
        match conn.queue(frame) {
            Queued::Flush => {
                self.0.push(Arc::clone(conn));
                true
            }
            Queued::Behind => true,
            Queued::Dropped => false,
        }
    }

    /// [`Flushes::queue`] for several frames of one socket, under one lock
    /// of its queue.
    fn queue_all(&mut self, conn: &Arc<ConnHandle>, frames: impl ExactSizeIterator<Item = Frame>) -> bool {
        match conn.queue_all(frames) {
            Queued::Flush => {
                self.0.push(Arc::clone(conn));
                true
            }
            Queued::Behind => true,
            Queued::Dropped => false,
        }
    }

    fn run(&mut self) {
        for conn in self.0.drain(..) {
            conn.flush();
        }
        self.shrink();
    }

    /// [`Flushes::run`], giving the worker thread to other tasks (acks,
    /// ingest, other rooms) whenever this one has used its budget: a room of
    /// 10,000 sockets is written in slices, not in one 50 ms stretch.
    pub(crate) async fn run_fairly(&mut self) {
        for conn in self.0.drain(..) {
            conn.flush();
            tokio::task::consume_budget().await;
        }
        self.shrink();
    }

    fn shrink(&mut self) {
        if self.0.capacity() > 4096 {
            self.0 = Vec::new();
        }
    }
}

/// Queues one room's events (in log order) for its subscribers, each
/// subscriber's frames at once (the caller writes `flushes` after releasing
/// the lock). Returns how many subscribers got frames, and how many frames.
fn deliver(st: &mut State, evs: &[&Event], flushes: &mut Flushes) -> (u64, u64) {
    let Some(first) = evs.first() else {
        return (0, 0);
    };
    let room_id = first.room_id.as_str();
    let Some(room) = st.rooms.get_mut(room_id) else {
        return (0, 0);
    };
    let (mut reached, mut delivered) = (0u64, 0u64);
    let mut frames: Vec<Frame> = Vec::new();
    let mut leaving: Vec<u64> = Vec::new();
    for (conn_id, s) in room.subs.iter_mut() {
        frames.clear();
        let mut events = 0u64;
        for ev in evs {
            if ev.offset > s.last {
                if let Some(held) = &mut s.held {
                    // A catch-up that cannot keep up with the room ends like
                    // a slow client: closed, to resume later from its cursor.
                    if held.len() >= MAX_HELD {
                        s.conn.close(1013, "too slow: resume with since");
                        break;
                    }
                    held.push((*ev).clone());
                } else {
                    s.last = ev.offset;
                    if s.streams.wants(ev.stream) {
                        frames.push(ev.frame.clone());
                        events += 1;
                    }
                }
            }
            // A member who left no longer receives the room.
            if ev.left.as_deref() == Some(s.conn.user_id.as_str()) {
                frames.push(protocol::unsubscribed(room_id));
                leaving.push(*conn_id);
                break;
            }
        }
        if !frames.is_empty() && flushes.queue_all(&s.conn, frames.drain(..)) {
            reached += 1;
            delivered += events;
        }
    }
    for conn_id in leaving {
        st.remove_sub(conn_id, room_id);
    }
    (reached, delivered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(id: u64, streams: Streams, catching_up: bool) -> Sub {
        Sub {
            id,
            conn: Arc::new(ConnHandle::new(id, format!("u{id}"), 16, None)),
            streams,
            last: 0,
            held: catching_up.then(Vec::new),
        }
    }

    const CHAT: Streams = Streams {
        chat: true,
        emotion: false,
        presence: false,
    };

    /// A frame that says which event it is.
    fn frame(name: &str) -> Frame {
        Frame::json(&serde_json::json!({ "e": name }))
    }

    fn event(offset: u64, stream: Stream, name: &str, left: Option<&str>) -> Event {
        Event {
            offset,
            room_id: "r".into(),
            stream,
            frame: frame(name),
            left: left.map(str::to_owned),
        }
    }

    /// What a connection was sent, after its `subscribed`.
    fn sent(conn: &ConnHandle) -> Vec<String> {
        conn.queued_bytes()
            .iter()
            .map(|b| String::from_utf8_lossy(&b[2..]).into_owned())
            .filter(|t| !t.contains("\"subscribed\""))
            .collect()
    }

    #[test]
    fn a_batch_goes_to_each_subscriber_in_log_order_and_stops_where_a_member_left() {
        let hub = Hub::default();
        let conn = |id: u64, user: &str| Arc::new(ConnHandle::new(id, user.into(), 64, None));
        let (a, b, c, d) = (conn(1, "a"), conn(2, "b"), conn(3, "c"), conn(4, "d"));
        let emotions = Streams {
            chat: false,
            emotion: true,
            presence: false,
        };
        // The tailer is at offset 10: live subscriptions start after 9.
        hub.register(&a, "r", 0, 10, None, CHAT);
        hub.register(&b, "r", 0, 10, None, CHAT);
        hub.register(&c, "r", 0, 10, None, emotions);
        // d resumes from 5: it catches up, and live events are held for it.
        assert!(hub.register(&d, "r", 0, 10, Some(5), CHAT).catch_up);
        let mut flushes = Flushes::default();
        let widest = hub.deliver(
            vec![
                event(9, Stream::Chat, "seen already", None),
                event(10, Stream::Chat, "m1", None),
                event(11, Stream::Emotion, "e1", None),
                event(12, Stream::Chat, "b left", Some("b")),
                event(13, Stream::Chat, "m2", None),
            ],
            &mut flushes,
        );
        assert_eq!(widest, 3, "a, b and c got frames of the room");
        let f = |names: &[&str]| -> Vec<String> { names.iter().map(|n| format!("{{\"e\":\"{n}\"}}")).collect() };
        assert_eq!(sent(&a), f(&["m1", "b left", "m2"]));
        let mut to_b = f(&["m1", "b left"]);
        to_b.push(r#"{"room_id":"r","type":"unsubscribed"}"#.to_owned());
        assert_eq!(sent(&b), to_b, "the leaver gets the leave, then nothing more");
        assert!(!hub.is_subscribed(2, "r") && hub.is_subscribed(1, "r"));
        assert_eq!(sent(&c), f(&["e1"]));
        assert!(sent(&d).is_empty(), "held back while it catches up");
        // Going live hands d what was held, from where its catch-up ended.
        hub.go_live(4, hub_sub_id(&hub, 4), "r", 10);
        assert_eq!(sent(&d), f(&["b left", "m2"]));
    }

    fn hub_sub_id(hub: &Hub, conn_id: u64) -> u64 {
        hub.state().rooms["r"].subs[&conn_id].id
    }

    #[test]
    fn a_room_knows_which_streams_its_subscribers_want() {
        let mut room = Room::new(0);
        assert!(!room.wants(Stream::Chat) && !room.wants(Stream::Emotion));
        room.insert(1, sub(1, CHAT, false));
        room.insert(2, sub(2, CHAT, false));
        assert!(room.wants(Stream::Chat) && !room.wants(Stream::Emotion));
        // A subscription catching up may want anything until it goes live.
        room.insert(3, sub(3, CHAT, true));
        assert!(room.wants(Stream::Emotion));
        room.remove(3);
        assert!(!room.wants(Stream::Emotion));
        // Going live ends it, once, and only for the subscription it started.
        room.insert(3, sub(3, CHAT, true));
        assert!(room.go_live(3, 99).is_none());
        assert!(room.wants(Stream::Emotion));
        assert!(room.go_live(3, 3).is_some());
        assert!(!room.wants(Stream::Emotion));
        assert!(room.go_live(3, 3).is_some_and(|(_, held)| held.is_empty()));
        assert!(!room.wants(Stream::Emotion));
        room.remove(3);
        // Re-subscribing replaces the old subscription's counts.
        room.insert(2, sub(4, Streams::ALL, false));
        assert!(room.wants(Stream::Emotion));
        room.insert(2, sub(5, CHAT, false));
        assert!(!room.wants(Stream::Emotion));
        room.remove(1);
        room.remove(2);
        assert!(room.remove(2).is_none());
        assert!(!room.wants(Stream::Chat) && room.subs.is_empty());
    }
}
