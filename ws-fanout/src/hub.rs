//! [`Hub`]: rooms → subscribers, partition tailers, resume from a cursor.
//!
//! One tailer task per rooms partition with at least one subscribed room on
//! this node reads the partition in order. For each record it waits until the
//! projector has applied it, asks the views what the fold decided (a message
//! is delivered iff its `Message` entity exists, a membership change iff its
//! `RoomEvent` exists), encodes the frame once, and hands the same bytes to
//! every subscriber of the room whose position is before the record.
//!
//! A subscription carries `last`, the offset of the last event it has (or is
//! deemed to have) seen; it only ever receives events after `last`, which is
//! what makes resume exact. Subscribing with `since` first reads the missed
//! events from the log up to the tailer's position at that moment while the
//! tailer buffers newer events for it, then flushes the buffer and goes live.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emosation_core::Record;
use emosation_core::ids::{LogPosition, Topic, partition_for};
use emosation_core::ports::{Decisions, Log, LogEntry, ViewStore};
use emosation_core::view::{ViewKey, ViewValue};
use indexmap::IndexMap;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::conn::{ConnHandle, Queued};
use crate::frames::{self, Frame, FrameError, Stream, Streams};

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

#[derive(Default)]
struct State {
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
            room.remove(conn_id);
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

pub struct Hub {
    log: Arc<dyn Log>,
    views: Arc<dyn ViewStore>,
    decisions: Arc<dyn Decisions>,
    state: Mutex<State>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

static NEXT_SUB: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Live events held back for one catching-up subscription, at most.
const MAX_HELD: usize = 65_536;

/// How long a tailer waits for the projector before looking again.
const APPLIED_WAIT: Duration = Duration::from_secs(1);

impl Hub {
    pub fn new(
        log: Arc<dyn Log>,
        views: Arc<dyn ViewStore>,
        decisions: Arc<dyn Decisions>,
        shutdown: CancellationToken,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            log,
            views,
            decisions,
            state: Mutex::default(),
            shutdown,
        })
    }

    pub fn views(&self) -> &Arc<dyn ViewStore> {
        &self.views
    }

    fn partition_of(&self, room_id: &str) -> u32 {
        partition_for(room_id.as_bytes(), self.log.topology().rooms_partitions)
    }

    /// Subscribes `conn` to `room_id` (membership already checked). Returns
    /// the cursor the subscription starts after.
    pub async fn subscribe(
        self: &Arc<Self>,
        conn: Arc<ConnHandle>,
        room_id: &str,
        since: Option<&str>,
        streams: Streams,
    ) -> Result<String, FrameError> {
        let p = self.partition_of(room_id);
        let end = self
            .log
            .end_offset(Topic::Rooms, p)
            .await
            .map_err(|e| FrameError::new("unavailable", e.to_string()))?;
        let since = match since {
            None => None,
            Some(c) => match LogPosition::parse_id(c) {
                Some(pos) if pos.partition == p && pos.offset < end => Some(pos.offset),
                _ => {
                    return Err(FrameError::new(
                        "invalid_cursor",
                        format!("{c:?} is not a cursor of this room"),
                    ));
                }
            },
        };
        let sub_id = NEXT_SUB.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (boundary, start_tailer, cursor, flush) = {
            let mut st = self.state.lock().expect("hub lock");
            let (boundary, start) = match st.tailers.get(&p) {
                Some(next) => (*next, false),
                None => {
                    st.tailers.insert(p, end);
                    (end, true)
                }
            };
            // A connection has at most one subscription per room.
            st.remove_sub(conn.id, room_id);
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
            room.insert(
                conn.id,
                Sub {
                    id: sub_id,
                    conn: Arc::clone(&conn),
                    streams,
                    last,
                    held,
                },
            );
            let cursor = LogPosition::new(p, last).to_id();
            // Queued under the lock: `subscribed` goes out before any event
            // of the subscription (the tailer queues those under it too).
            let flush = conn.queue(frames::subscribed(room_id, &cursor)) == Queued::Flush;
            (boundary, start, cursor, flush)
        };
        if flush {
            conn.flush();
        }
        if start_tailer {
            let hub = Arc::clone(self);
            tokio::spawn(async move { hub.tail(p, boundary).await });
        }
        if let Some(s) = since
            && s + 1 < boundary
        {
            let hub = Arc::clone(self);
            let room = room_id.to_owned();
            tokio::spawn(async move { hub.catch_up(conn, sub_id, room, p, s + 1, boundary).await });
        }
        Ok(cursor)
    }

    pub fn unsubscribe(&self, conn_id: u64, room_id: &str) -> bool {
        self.state.lock().expect("hub lock").remove_sub(conn_id, room_id)
    }

    /// Whether `conn_id` is subscribed to `room_id` on this node.
    pub fn is_subscribed(&self, conn_id: u64, room_id: &str) -> bool {
        let st = self.state.lock().expect("hub lock");
        st.by_conn
            .get(&conn_id)
            .is_some_and(|rooms| rooms.iter().any(|r| r == room_id))
    }

    /// Drops every subscription of a closed connection.
    pub fn drop_conn(&self, conn_id: u64) {
        let mut st = self.state.lock().expect("hub lock");
        for room in st.by_conn.remove(&conn_id).unwrap_or_default() {
            st.leave_room(conn_id, &room);
        }
    }

    /// Relays a typing notice to the room's other subscribers (never logged).
    pub fn typing(&self, from: u64, room_id: &str, user_id: &str) {
        let frame = frames::typing(room_id, user_id);
        let mut flushes = Flushes::default();
        let st = self.state.lock().expect("hub lock");
        if let Some(room) = st.rooms.get(room_id) {
            for (_, s) in room
                .subs
                .iter()
                .filter(|(conn_id, s)| **conn_id != from && s.streams.chat && s.held.is_none())
            {
                flushes.queue(&s.conn, frame.clone());
            }
        }
        drop(st);
        flushes.run();
    }

    /// Waits until the projector has applied `offset` of partition `p`.
    async fn applied(&self, p: u32, offset: u64) -> bool {
        loop {
            if self.shutdown.is_cancelled() {
                return false;
            }
            if self.decisions.wait_applied(Topic::Rooms, p, offset, APPLIED_WAIT).await > offset {
                return true;
            }
            // The watermark is per process; a projector elsewhere is seen
            // through the views' stored position.
            match self
                .views
                .position(emosation_core::ports::CORE_VIEWS, Topic::Rooms, p)
                .await
            {
                Ok(pos) if pos > offset => return true,
                Ok(_) => {}
                Err(e) => warn!(error = %e, "reading the projector's position"),
            }
        }
    }

    /// The records that may become events `wanted` (room, stream), each with
    /// the view key that tells what the fold decided about it. The tailer
    /// calls it under the hub lock, so that what is wanted cannot change
    /// before its position moves past the batch.
    fn candidates(p: u32, records: Vec<(u64, Record)>, wanted: impl Fn(&str, Stream) -> bool) -> Candidates {
        let mut out = Candidates::default();
        for (offset, record) in records {
            let (room_id, stream) = match &record {
                Record::MessagePosted(r) => (&r.room_id, Stream::Chat),
                Record::MemberJoined(r) => (&r.room_id, Stream::Chat),
                Record::MemberQuit(r) => (&r.room_id, Stream::Chat),
                Record::EmotionRecorded(r) => (&r.room_id, Stream::Emotion),
                _ => continue,
            };
            // No view lookups for events nobody on this node wants.
            if !wanted(room_id, stream) {
                continue;
            }
            let position = LogPosition::new(p, offset).to_id();
            let key = match &record {
                // A message was accepted iff its entity exists.
                Record::MessagePosted(r) => ViewKey::message(&r.room_id, &position),
                // An emotion is delivered iff it is the one the fold kept.
                Record::EmotionRecorded(r) => ViewKey::emotion(&r.room_id, &r.message_id),
                // A membership change iff its room event exists.
                _ => ViewKey::RoomEvent {
                    room_id: room_id.clone(),
                    position: position.clone(),
                },
            };
            out.keys.push(key);
            out.records.push(Candidate {
                offset,
                record,
                position,
            });
        }
        out
    }

    /// What the fold decided about candidates, as events in log order: one
    /// view lookup for the whole batch. A failed lookup yields no events
    /// (logged), like records the fold refused.
    async fn decide(&self, candidates: Candidates) -> Vec<Event> {
        let Candidates { keys, records } = candidates;
        if keys.is_empty() {
            return Vec::new();
        }
        let values = match self.views.load(&keys).await {
            Ok(v) => v,
            Err(err) => {
                warn!(error = %err, "fan-out view lookup");
                return Vec::new();
            }
        };
        records
            .into_iter()
            .zip(values)
            .filter_map(|(c, v)| c.decided(v))
            .collect()
    }

    /// Reads a partition from `next` on, delivering to live subscribers,
    /// until no room of the partition has subscribers.
    async fn tail(self: Arc<Self>, p: u32, mut next: u64) {
        debug!(partition = p, next, "fan-out tailer starts");
        let mut flushes = Flushes::default();
        loop {
            let entries = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                r = self.log.fetch(Topic::Rooms, p, next, 256, Duration::from_millis(500)) => match r {
                    Ok(e) => e,
                    Err(err) => {
                        warn!(partition = p, error = %err, "fan-out fetch failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
            };
            let read_at = std::time::Instant::now();
            let Some(last) = entries.last().map(|e| e.offset) else {
                if self.stop_if_unwanted(p) {
                    return;
                }
                continue;
            };
            // Only the records of rooms subscribed here are decoded (a room
            // record's key is its room id): a node serving a few of a
            // partition's rooms does not decode the others' traffic. Decoded
            // while the projector folds the same records.
            let subscribed = {
                let st = self.state.lock().expect("hub lock");
                entries.iter().map(|e| has_subscribers(&st, &e.key)).collect::<Vec<_>>()
            };
            let mut records = decode_where(&entries, |i, _| subscribed[i]);
            // The projector applies in order: once the batch's last record
            // is applied, all of it is.
            if !self.applied(p, last).await {
                return;
            }
            let candidates = {
                // A subscription from now on starts after this batch (it
                // reads the batch from the log if it resumes before it).
                let mut st = self.state.lock().expect("hub lock");
                st.tailers.insert(p, last + 1);
                // Rooms subscribed to since the look above need this batch
                // too (rare: decoded here, under the lock).
                let late = decode_where(&entries, |i, e| !subscribed[i] && has_subscribers(&st, &e.key));
                if !late.is_empty() {
                    records.extend(late);
                    records.sort_unstable_by_key(|(offset, _)| *offset);
                }
                Self::candidates(p, records, |room, stream| room_wants(&st, room, stream))
            };
            let events = self.decide(candidates).await;
            if !events.is_empty() {
                {
                    let mut st = self.state.lock().expect("hub lock");
                    for ev in events {
                        deliver(&mut st, ev, &mut flushes);
                    }
                }
                // The writes, outside the hub's lock: each subscriber's
                // frames of the batch in one write.
                flushes.run_fairly().await;
                metrics::histogram!("emosation_fanout_read_to_queued_seconds").record(read_at.elapsed().as_secs_f64());
            }
            next = last + 1;
            if self.stop_if_unwanted(p) {
                return;
            }
        }
    }

    /// Stops partition `p`'s tailer (returns true) when none of its rooms
    /// has a subscriber left; the next subscription starts a new tailer from
    /// the log's end.
    fn stop_if_unwanted(&self, p: u32) -> bool {
        let mut st = self.state.lock().expect("hub lock");
        if st.rooms_per_partition.contains_key(&p) {
            return false;
        }
        st.tailers.remove(&p);
        debug!(partition = p, "fan-out tailer stops: no subscribers");
        true
    }

    /// Delivers the room's events in `[from, to)` from the log to one
    /// subscription, then the events held back meanwhile, then goes live.
    async fn catch_up(self: Arc<Self>, conn: Arc<ConnHandle>, sub_id: u64, room: String, p: u32, from: u64, to: u64) {
        let mut next = from;
        let mut last = from.saturating_sub(1);
        while next < to && !conn.is_closed() {
            let entries = match self.log.fetch(Topic::Rooms, p, next, 512, Duration::ZERO).await {
                Ok(e) if !e.is_empty() => e,
                Ok(_) => break,
                Err(err) => {
                    warn!(partition = p, error = %err, "catch-up fetch failed");
                    conn.close(1011, "catch-up failed");
                    return;
                }
            };
            let batch = &entries[..entries.iter().take_while(|e| e.offset < to).count()];
            let Some(batch_last) = batch.last().map(|e| e.offset) else {
                break;
            };
            if !self.applied(p, batch_last).await {
                return;
            }
            let records = decode_where(batch, |_, e| e.key == room.as_bytes());
            let candidates = Self::candidates(p, records, |r, _| r == room);
            for ev in self.decide(candidates).await {
                if self.wants(conn.id, sub_id, &room, ev.stream) && !conn.push_waiting(ev.frame).await {
                    return;
                }
            }
            last = batch_last;
            next = batch_last + 1;
            if entries.last().is_some_and(|e| e.offset + 1 >= to) {
                break;
            }
        }
        // Hand over to live delivery: flush what the tailer held back.
        let mut flushes = Flushes::default();
        let mut st = self.state.lock().expect("hub lock");
        let Some((sub, held)) = st.rooms.get_mut(&room).and_then(|r| r.go_live(conn.id, sub_id)) else {
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

    fn wants(&self, conn_id: u64, sub_id: u64, room: &str, stream: Stream) -> bool {
        let st = self.state.lock().expect("hub lock");
        st.rooms
            .get(room)
            .and_then(|r| r.subs.get(&conn_id))
            .filter(|s| s.id == sub_id)
            .is_some_and(|s| s.streams.wants(stream))
    }
}

/// The records, with their offsets, of the entries `pick` (index, entry)
/// selects. Undecodable ones are skipped, as the fold skips them; so are
/// records not keyed by their room ([`Record::is_routed_by`]), which the
/// fold skips too.
fn decode_where(entries: &[LogEntry], pick: impl Fn(usize, &LogEntry) -> bool) -> Vec<(u64, Record)> {
    entries
        .iter()
        .enumerate()
        .filter(|(i, e)| pick(*i, e))
        .filter_map(|(_, e)| emosation_schemas::decode_routed(Topic::Rooms, &e.key, &e.value).map(|r| (e.offset, r)))
        .collect()
}

/// Whether the room a rooms-topic entry is keyed by has subscribers here.
fn has_subscribers(st: &State, key: &[u8]) -> bool {
    std::str::from_utf8(key).is_ok_and(|room| st.rooms.contains_key(room))
}

/// Whether a subscriber of `room_id` on this node wants `stream` (or is
/// catching up, and so may).
fn room_wants(st: &State, room_id: &str, stream: Stream) -> bool {
    st.rooms.get(room_id).is_some_and(|r| r.wants(stream))
}

/// Records that may be events, before the views say what the fold decided:
/// `keys[i]` is the entity whose presence tells the decision on `records[i]`.
#[derive(Default)]
struct Candidates {
    keys: Vec<ViewKey>,
    records: Vec<Candidate>,
}

/// A record that may be an event.
struct Candidate {
    offset: u64,
    record: Record,
    /// The record's log position as an id (a message's id, an event's cursor).
    position: String,
}

impl Candidate {
    /// The event, given the value of `key` in the views.
    fn decided(self, value: Option<ViewValue>) -> Option<Event> {
        let Candidate {
            offset,
            record,
            position,
        } = self;
        match (record, value) {
            (Record::MessagePosted(r), Some(_)) => Some(Event {
                offset,
                frame: frames::message(&r, &position),
                room_id: r.room_id,
                stream: Stream::Chat,
                left: None,
            }),
            (Record::EmotionRecorded(_), Some(ViewValue::Emotion(em))) if em.position == position => Some(Event {
                offset,
                frame: frames::emotion(&em),
                room_id: em.room_id,
                stream: Stream::Emotion,
                left: None,
            }),
            (Record::MemberJoined(_) | Record::MemberQuit(_), Some(ViewValue::RoomEvent(ev))) => Some(Event {
                offset,
                frame: frames::membership(&ev, &position),
                left: (!ev.joined).then(|| ev.user_id.clone()),
                room_id: ev.room_id,
                stream: Stream::Chat,
            }),
            _ => None,
        }
    }
}

/// Sockets that frames were queued on while they were idle, to write once
/// the hub's lock is released.
#[derive(Default)]
struct Flushes(Vec<Arc<ConnHandle>>);

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

    fn run(&mut self) {
        for conn in self.0.drain(..) {
            conn.flush();
        }
        self.shrink();
    }

    /// [`Flushes::run`], giving the worker thread to other tasks (acks,
    /// ingest, other rooms) whenever this one has used its budget: a room of
    /// 10,000 sockets is written in slices, not in one 50 ms stretch.
    async fn run_fairly(&mut self) {
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

/// Queues `ev` for the room's subscribers (the caller writes `flushes`
/// after releasing the lock).
fn deliver(st: &mut State, ev: Event, flushes: &mut Flushes) {
    let Some(subs) = st.rooms.get_mut(&ev.room_id).map(|r| &mut r.subs) else {
        return;
    };
    let mut delivered = 0u64;
    for s in subs.values_mut() {
        if ev.offset <= s.last {
            continue;
        }
        if let Some(held) = &mut s.held {
            // A catch-up that cannot keep up with the room ends like a slow
            // client: closed, to resume later from its cursor.
            if held.len() >= MAX_HELD {
                s.conn.close(1013, "too slow: resume with since");
                continue;
            }
            held.push(ev.clone());
            continue;
        }
        s.last = ev.offset;
        if s.streams.wants(ev.stream) && flushes.queue(&s.conn, ev.frame.clone()) {
            delivered += 1;
        }
    }
    metrics::counter!("emosation_fanout_deliveries_total").increment(delivered);
    if let Some(user) = &ev.left {
        // A member who left no longer receives the room.
        let leaving: Vec<u64> = subs
            .iter()
            .filter(|(_, s)| s.conn.user_id == *user)
            .map(|(conn_id, s)| {
                flushes.queue(&s.conn, frames::unsubscribed(&ev.room_id));
                *conn_id
            })
            .collect();
        for conn_id in leaving {
            st.remove_sub(conn_id, &ev.room_id);
        }
    }
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
    };

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
