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

use axum::extract::ws::Utf8Bytes;
use emosation_core::Record;
use emosation_core::ids::{LogPosition, Topic, partition_for};
use emosation_core::ports::{Decisions, Log, LogEntry, ViewStore};
use emosation_core::view::{ViewKey, ViewValue};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::conn::ConnHandle;
use crate::frames::{self, FrameError, Stream, Streams};

/// A decided event, ready to deliver.
#[derive(Debug, Clone)]
pub struct Event {
    pub offset: u64,
    pub room_id: String,
    pub stream: Stream,
    pub frame: Utf8Bytes,
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

#[derive(Default)]
struct State {
    rooms: HashMap<String, Vec<Sub>>,
    /// Partition → next offset its tailer will process.
    tailers: HashMap<u32, u64>,
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
            state: Mutex::new(State::default()),
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
        let (boundary, start_tailer) = {
            let mut st = self.state.lock().expect("hub lock");
            let (boundary, start) = match st.tailers.get(&p) {
                Some(next) => (*next, false),
                None => {
                    st.tailers.insert(p, end);
                    (end, true)
                }
            };
            let subs = st.rooms.entry(room_id.to_owned()).or_default();
            // A connection has at most one subscription per room.
            subs.retain(|s| s.conn.id != conn.id);
            let (last, held) = match since {
                Some(s) if s + 1 < boundary => (s, Some(Vec::new())),
                Some(s) => (s, None),
                None => (boundary.saturating_sub(1), None),
            };
            subs.push(Sub {
                id: sub_id,
                conn: Arc::clone(&conn),
                streams,
                last,
                held,
            });
            (boundary, start)
        };
        if start_tailer {
            let hub = Arc::clone(self);
            tokio::spawn(async move { hub.tail(p, boundary).await });
        }
        let cursor = match since {
            Some(s) => LogPosition::new(p, s).to_id(),
            None => LogPosition::new(p, boundary.saturating_sub(1)).to_id(),
        };
        conn.push(frames::subscribed(room_id, &cursor));
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
        let mut st = self.state.lock().expect("hub lock");
        let Some(subs) = st.rooms.get_mut(room_id) else {
            return false;
        };
        let before = subs.len();
        subs.retain(|s| s.conn.id != conn_id);
        let removed = subs.len() != before;
        if subs.is_empty() {
            st.rooms.remove(room_id);
        }
        removed
    }

    /// Whether `conn_id` is subscribed to `room_id` on this node.
    pub fn is_subscribed(&self, conn_id: u64, room_id: &str) -> bool {
        let st = self.state.lock().expect("hub lock");
        st.rooms
            .get(room_id)
            .is_some_and(|subs| subs.iter().any(|s| s.conn.id == conn_id))
    }

    /// Drops every subscription of a closed connection.
    pub fn drop_conn(&self, conn_id: u64) {
        let mut st = self.state.lock().expect("hub lock");
        st.rooms.retain(|_, subs| {
            subs.retain(|s| s.conn.id != conn_id);
            !subs.is_empty()
        });
    }

    /// Relays a typing notice to the room's other subscribers (never logged).
    pub fn typing(&self, from: u64, room_id: &str, user_id: &str) {
        let frame = frames::typing(room_id, user_id);
        let st = self.state.lock().expect("hub lock");
        if let Some(subs) = st.rooms.get(room_id) {
            for s in subs
                .iter()
                .filter(|s| s.conn.id != from && s.streams.chat && s.held.is_none())
            {
                s.conn.push(frame.clone());
            }
        }
    }

    fn room_wants(&self, room_id: &str, stream: Stream) -> bool {
        let st = self.state.lock().expect("hub lock");
        st.rooms
            .get(room_id)
            .is_some_and(|subs| subs.iter().any(|s| s.streams.wants(stream) || s.held.is_some()))
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

    /// What the fold decided about one record, as an event (or nothing).
    async fn event(&self, p: u32, e: &LogEntry, only_room: Option<&str>) -> Option<Event> {
        let record = emosation_schemas::decode(&e.value).ok()?;
        let room_id = match &record {
            Record::MessagePosted(r) => &r.room_id,
            Record::MemberJoined(r) => &r.room_id,
            Record::MemberQuit(r) => &r.room_id,
            Record::EmotionRecorded(r) => &r.room_id,
            _ => return None,
        };
        let stream = match &record {
            Record::EmotionRecorded(_) => Stream::Emotion,
            _ => Stream::Chat,
        };
        match only_room {
            Some(room) if room != room_id => return None,
            // No view lookups for events nobody on this node wants.
            None if !self.room_wants(room_id, stream) => return None,
            _ => {}
        }
        let position = LogPosition::new(p, e.offset).to_id();
        match &record {
            Record::MessagePosted(r) => {
                let key = ViewKey::Message {
                    room_id: r.room_id.clone(),
                    message_id: position.clone(),
                };
                match self.views.load(&[key]).await {
                    Ok(v) if v.first().is_some_and(Option::is_some) => Some(Event {
                        offset: e.offset,
                        room_id: r.room_id.clone(),
                        stream: Stream::Chat,
                        frame: frames::message(r, &position),
                        left: None,
                    }),
                    Ok(_) => None,
                    Err(err) => {
                        warn!(error = %err, "fan-out view lookup");
                        None
                    }
                }
            }
            Record::EmotionRecorded(r) => {
                // Delivered iff this record is the emotion the fold kept.
                let key = ViewKey::Emotion {
                    room_id: r.room_id.clone(),
                    message_id: r.message_id.clone(),
                };
                match self.views.load(&[key]).await {
                    Ok(mut v) => match v.pop().flatten() {
                        Some(ViewValue::Emotion(em)) if em.position == position => Some(Event {
                            offset: e.offset,
                            room_id: em.room_id.clone(),
                            stream: Stream::Emotion,
                            frame: frames::emotion(&em),
                            left: None,
                        }),
                        _ => None,
                    },
                    Err(err) => {
                        warn!(error = %err, "fan-out view lookup");
                        None
                    }
                }
            }
            Record::MemberJoined(_) | Record::MemberQuit(_) => {
                let key = ViewKey::RoomEvent {
                    room_id: room_id.clone(),
                    position: position.clone(),
                };
                match self.views.load(&[key]).await {
                    Ok(mut v) => match v.pop().flatten() {
                        Some(ViewValue::RoomEvent(ev)) => Some(Event {
                            offset: e.offset,
                            room_id: ev.room_id.clone(),
                            stream: Stream::Chat,
                            frame: frames::membership(&ev, &position),
                            left: (!ev.joined).then(|| ev.user_id.clone()),
                        }),
                        _ => None,
                    },
                    Err(err) => {
                        warn!(error = %err, "fan-out view lookup");
                        None
                    }
                }
            }
            _ => None,
        }
    }

    /// Reads a partition from `next` on, delivering to live subscribers,
    /// until no room of the partition has subscribers.
    async fn tail(self: Arc<Self>, p: u32, mut next: u64) {
        debug!(partition = p, next, "fan-out tailer starts");
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
            for e in &entries {
                if !self.applied(p, e.offset).await {
                    return;
                }
                let event = self.event(p, e, None).await;
                let mut st = self.state.lock().expect("hub lock");
                st.tailers.insert(p, e.offset + 1);
                if let Some(ev) = event {
                    deliver(&mut st, ev);
                }
                next = e.offset + 1;
            }
            // Stop when the partition has no subscribed room left; the next
            // subscription starts a new tailer from the log's end.
            let mut st = self.state.lock().expect("hub lock");
            if !st.rooms.keys().any(|r| self.partition_of(r) == p) {
                st.tailers.remove(&p);
                debug!(partition = p, "fan-out tailer stops: no subscribers");
                return;
            }
        }
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
            for e in entries.iter().take_while(|e| e.offset < to) {
                if !self.applied(p, e.offset).await {
                    return;
                }
                if let Some(ev) = self.event(p, e, Some(&room)).await
                    && self.wants(sub_id, &room, ev.stream)
                    && !conn.push_waiting(ev.frame).await
                {
                    return;
                }
                last = e.offset;
                next = e.offset + 1;
            }
            if entries.last().is_some_and(|e| e.offset + 1 >= to) {
                break;
            }
        }
        // Hand over to live delivery: flush what the tailer held back.
        let mut st = self.state.lock().expect("hub lock");
        let Some(sub) = st
            .rooms
            .get_mut(&room)
            .and_then(|subs| subs.iter_mut().find(|s| s.id == sub_id))
        else {
            return;
        };
        sub.last = sub.last.max(last);
        for ev in sub.held.take().unwrap_or_default() {
            if ev.offset > sub.last && sub.streams.wants(ev.stream) {
                sub.conn.push(ev.frame);
                sub.last = ev.offset;
            }
        }
    }

    fn wants(&self, sub_id: u64, room: &str, stream: Stream) -> bool {
        let st = self.state.lock().expect("hub lock");
        st.rooms
            .get(room)
            .and_then(|subs| subs.iter().find(|s| s.id == sub_id))
            .is_some_and(|s| s.streams.wants(stream))
    }
}

fn deliver(st: &mut State, ev: Event) {
    let Some(subs) = st.rooms.get_mut(&ev.room_id) else {
        return;
    };
    let mut delivered = 0u64;
    for s in subs.iter_mut() {
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
        if s.streams.wants(ev.stream) {
            s.conn.push(ev.frame.clone());
            delivered += 1;
        }
    }
    metrics::counter!("emosation_fanout_deliveries_total").increment(delivered);
    if let Some(user) = &ev.left {
        // A member who left no longer receives the room.
        subs.retain(|s| {
            let leaving = s.conn.user_id == *user;
            if leaving {
                s.conn.push(frames::unsubscribed(&ev.room_id));
            }
            !leaving
        });
        if subs.is_empty() {
            st.rooms.remove(&ev.room_id);
        }
    }
}
