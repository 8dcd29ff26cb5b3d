//! [`Feed`]: this node's reading of the log — one tailer task per rooms
//! partition with at least one subscribed room here, and one catch-up per
//! subscription that resumes from a cursor.
//!
//! A tailer reads its partition in order. For each batch it waits until the
//! projector has applied it, asks the views what the fold decided (a message
//! is delivered iff its `Message` entity exists, a membership change, edit
//! or delete iff its `RoomEvent` exists, an emotion iff it is the one the
//! fold kept), encodes
//! each event's frame once, and hands it to the [`Hub`] for delivery.
//!
//! Subscribing with `since` first reads the missed events from the log up to
//! the tailer's position at that moment, while the hub holds back newer
//! events for the subscription; then the hub flushes them and it goes live.

use std::sync::Arc;
use std::time::Duration;

use emosation_core::Record;
use emosation_core::ids::{LogPosition, Topic, partition_for};
use emosation_core::ports::{Decisions, Log, LogEntry, ViewStore};
use emosation_core::view::{EmotionView, ViewKey, ViewValue};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::hub::{Event, Flushes, Hub};
use crate::protocol::{self, FrameError, Stream, Streams};
use crate::socket::ConnHandle;

/// The log side of the fan-out (see the module doc).
pub struct Feed {
    log: Arc<dyn Log>,
    views: Arc<dyn ViewStore>,
    decisions: Arc<dyn Decisions>,
    hub: Hub,
    batch_window: Duration,
    /// Per rooms partition: held by a subscribe that asks the log for the
    /// partition's end because no tailer follows it yet, until it has
    /// registered (and so started the tailer). The thousands of sockets
    /// that subscribe to a node's rooms at once (a node restarting, a
    /// gateway draining another node) then ask the broker once per
    /// partition, not once each.
    first_subscribe: Vec<tokio::sync::Mutex<()>>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed").finish_non_exhaustive()
    }
}

/// An event that went to at least this many subscribers here makes its
/// partition's next delivery wait for the batch window (see [`Feed::new`]).
const WIDE_EVENT: u64 = 64;

/// How long a tailer waits for the projector before looking again.
const APPLIED_WAIT: Duration = Duration::from_secs(1);

/// How long a subscription without `since`, the first of its partition on
/// this node, waits for the views to hold the records before the log's end,
/// where its live delivery starts. A client that subscribes and then reads
/// history (the web client does) would otherwise miss what was appended but
/// not yet folded when it subscribed: not in the history it read, and before
/// its live start. The projector is normally milliseconds behind; a longer
/// wait would only hold up subscribes while it is down or replaying.
const FRESH_START_WAIT: Duration = Duration::from_secs(2);

impl Feed {
    /// `batch_window`: after a delivery that reached a wide room (at least
    /// [`WIDE_EVENT`] subscribers here), the partition's next delivery
    /// starts no sooner than this after it began. A busy large room's
    /// sockets then get each window's messages in one write instead of one
    /// write per message or two: the kernel's cost per write (a loopback
    /// TCP send here, with its wake-up of the reader) is most of a
    /// delivery's. A quiet room is not delayed (its next message comes
    /// after the window anyway), nor are small rooms. Zero turns it off.
    pub fn new(
        log: Arc<dyn Log>,
        views: Arc<dyn ViewStore>,
        decisions: Arc<dyn Decisions>,
        batch_window: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Feed> {
        let partitions = log.topology().rooms_partitions as usize;
        Arc::new(Feed {
            log,
            views,
            decisions,
            hub: Hub::default(),
            batch_window,
            first_subscribe: (0..partitions).map(|_| tokio::sync::Mutex::new(())).collect(),
            shutdown,
        })
    }

    pub fn views(&self) -> &Arc<dyn ViewStore> {
        &self.views
    }

    /// The registry of this node's subscriptions.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    fn partition_of(&self, room_id: &str) -> u32 {
        partition_for(room_id.as_bytes(), self.log.topology().rooms_partitions)
    }

    /// Subscribes `conn` to `room_id` (membership already checked), from
    /// `since` if given. Returns the cursor the subscription starts after.
    /// A subscription that must catch up holds one of `catch_ups`' permits
    /// until it is live; with none left it is refused (`rate_limited`).
    pub async fn subscribe(
        self: &Arc<Self>,
        conn: Arc<ConnHandle>,
        room_id: &str,
        since: Option<&str>,
        streams: Streams,
        catch_ups: &Arc<tokio::sync::Semaphore>,
    ) -> Result<String, FrameError> {
        let p = self.partition_of(room_id);
        // A partition this node already follows has its tailer's position
        // as the boundary: no question to the log (a broker round trip per
        // subscribe on Kafka), unless a cursor must be checked beyond it.
        // (Should that tailer stop before this registers, the new one starts
        // from that position: the subscriber may get the few events just
        // before it subscribed, in order, never a gap.)
        let cursor = since.map(LogPosition::parse_id);
        let boundary = |next: Option<u64>| match (next, cursor) {
            (Some(next), None) => Some(next),
            (Some(next), Some(Some(pos))) if pos.partition == p && pos.offset < next => Some(next),
            _ => None,
        };
        // Held until registered (the end of this function).
        let _first = match self.first_subscribe.get(p as usize) {
            Some(lock) if self.hub.tailer_next(p).is_none() => Some(lock.lock().await),
            _ => None,
        };
        let end = match boundary(self.hub.tailer_next(p)) {
            // A tailer moves past a batch only once the views hold it.
            Some(end) => end,
            None => {
                let end = self
                    .log
                    .end_offset(Topic::Rooms, p)
                    .await
                    .map_err(|e| FrameError::new("unavailable", e.to_string()))?;
                // Live delivery of a subscription without `since` starts at
                // `end`: what is before it must be in the views by the time
                // `subscribed` goes out, so that history read after it has
                // everything up to the cursor (see `FRESH_START_WAIT`).
                if since.is_none() && end > 0 {
                    self.views_reach(p, end - 1).await;
                }
                end
            }
        };
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
        let permit = match since {
            Some(_) => Some(Arc::clone(catch_ups).try_acquire_owned().map_err(|_| {
                FrameError::new(
                    "rate_limited",
                    "too many subscriptions catching up at once on this connection; wait for one to go live",
                )
            })?),
            None => None,
        };
        let reg = self.hub.register(&conn, room_id, p, end, since, streams);
        if reg.start_tailer {
            let feed = Arc::clone(self);
            tokio::spawn(async move { feed.tail(p, reg.boundary).await });
        }
        if let Some(s) = since
            && reg.catch_up
        {
            let feed = Arc::clone(self);
            let room = room_id.to_owned();
            let (sub_id, boundary) = (reg.sub_id, reg.boundary);
            tokio::spawn(async move {
                let _permit = permit;
                feed.catch_up(conn, sub_id, room, p, s + 1, boundary).await
            });
        }
        Ok(reg.cursor)
    }

    /// Waits, at most [`FRESH_START_WAIT`], until the views hold `offset` of
    /// partition `p`. Beyond that (a projector far behind or down) it gives
    /// up: the subscription then starts at the log's end as it would have,
    /// and history read right after it may miss the records just before.
    async fn views_reach(&self, p: u32, offset: u64) {
        let at = tokio::select! {
            _ = self.shutdown.cancelled() => return,
            at = self.decisions.wait_applied(Topic::Rooms, p, offset, FRESH_START_WAIT) => at,
        };
        if at <= offset {
            warn!(
                partition = p,
                applied = at,
                end = offset + 1,
                "a subscription starts at the log's end while the views are behind it"
            );
        }
    }

    /// Waits until the projector, in any process, has applied `offset` of
    /// partition `p` (see `Decisions::wait_applied`); false on shutdown.
    async fn applied(&self, p: u32, offset: u64) -> bool {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                at = self.decisions.wait_applied(Topic::Rooms, p, offset, APPLIED_WAIT) => {
                    if at > offset {
                        return true;
                    }
                }
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
                Record::MessageEdited(r) => (&r.room_id, Stream::Chat),
                Record::MessageDeleted(r) => (&r.room_id, Stream::Chat),
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
                // An emotion is delivered iff it is the one the fold kept:
                // the message's first, or its latest edit's.
                Record::EmotionRecorded(r) if r.edit_id.is_some() => ViewKey::message_edit(&r.room_id, &r.message_id),
                Record::EmotionRecorded(r) => ViewKey::emotion(&r.room_id, &r.message_id),
                // A membership change, edit or delete iff its room event exists.
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
                deleted_at: None,
            });
        }
        out
    }

    /// What the fold decided about candidates of partition `p`, as events
    /// in log order. Posts without attachments and first emotions are
    /// decided by the projector's report when it runs in this process
    /// ([`Decisions::took_effect`]: for these, the views' answer, and their
    /// frames are made from the record alone); the rest, or all without a
    /// report, by one view lookup for the batch. A failed lookup yields no
    /// events (logged), like records the fold refused.
    async fn decide(&self, p: u32, candidates: Candidates) -> Vec<Event> {
        let Candidates { keys, records } = candidates;
        if keys.is_empty() {
            return Vec::new();
        }
        let offsets: Vec<u64> = records.iter().filter(|c| c.reported()).map(|c| c.offset).collect();
        let mut known = match offsets.is_empty() {
            true => None,
            false => self.decisions.took_effect(Topic::Rooms, p, &offsets),
        }
        .map(Vec::into_iter);
        let keys: Vec<ViewKey> = match known {
            None => keys,
            Some(_) => keys
                .into_iter()
                .zip(&records)
                .filter(|(_, c)| !c.reported())
                .map(|(k, _)| k)
                .collect(),
        };
        let mut values = match keys.is_empty() {
            true => Vec::new(),
            false => match self.views.load(&keys).await {
                Ok(v) => v,
                Err(err) => {
                    warn!(error = %err, "fan-out view lookup");
                    return Vec::new();
                }
            },
        }
        .into_iter();
        records
            .into_iter()
            .filter_map(|c| match known.as_mut() {
                Some(known) if c.reported() => c.decided_by_report(p, known.next().unwrap_or(false)),
                _ => c.decided(values.next().flatten()),
            })
            .collect()
    }

    /// What a catch-up must not replay: the text, edits and emotion of a
    /// message deleted since (live subscribers saw them before the delete;
    /// a client resuming from before it gets the message as the tombstone
    /// history shows, then the `message_deleted` event). One view lookup
    /// for the batch's messages.
    async fn redact_deleted(&self, c: &mut Candidates) -> Result<(), emosation_core::ports::StoreError> {
        let message_of = |cand: &Candidate| -> Option<(String, String)> {
            match &cand.record {
                Record::MessagePosted(r) => Some((r.room_id.clone(), cand.position.clone())),
                Record::MessageEdited(r) => Some((r.room_id.clone(), r.message_id.clone())),
                Record::EmotionRecorded(r) => Some((r.room_id.clone(), r.message_id.clone())),
                _ => None,
            }
        };
        let mut ids: Vec<(String, String)> = c.records.iter().filter_map(message_of).collect();
        if ids.is_empty() {
            return Ok(());
        }
        ids.sort();
        ids.dedup();
        let keys: Vec<ViewKey> = ids.iter().map(|(room, id)| ViewKey::message_edit(room, id)).collect();
        let deleted: std::collections::HashMap<(String, String), i64> = ids
            .into_iter()
            .zip(self.views.load(&keys).await?)
            .filter_map(|(id, v)| match v {
                Some(ViewValue::MessageEdit(e)) => e.deleted_at.map(|at| (id, at)),
                _ => None,
            })
            .collect();
        if deleted.is_empty() {
            return Ok(());
        }
        let (keys, records) = (std::mem::take(&mut c.keys), std::mem::take(&mut c.records));
        for (key, mut cand) in keys.into_iter().zip(records) {
            match message_of(&cand).and_then(|id| deleted.get(&id)) {
                Some(at) if matches!(cand.record, Record::MessagePosted(_)) => cand.deleted_at = Some(*at),
                Some(_) => continue,
                None => {}
            }
            c.keys.push(key);
            c.records.push(cand);
        }
        Ok(())
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
                if self.hub.stop_if_unwanted(p) {
                    return;
                }
                continue;
            };
            // Only the records of rooms subscribed here are decoded (a room
            // record's key is its room id): a node serving a few of a
            // partition's rooms does not decode the others' traffic. Decoded
            // while the projector folds the same records.
            let subscribed = self.hub.subscribed_keys(entries.iter().map(|e| e.key.as_ref()));
            let mut records = decode_where(&entries, |i, _| subscribed[i]);
            // The projector applies in order: once the batch's last record
            // is applied, all of it is.
            if !self.applied(p, last).await {
                return;
            }
            // A subscription from now on starts after this batch (it reads
            // the batch from the log if it resumes before it).
            let candidates = self.hub.advance(p, last + 1, |interest| {
                // Rooms subscribed to since the look above need this batch
                // too (rare: decoded here, under the lock).
                let late = decode_where(&entries, |i, e| !subscribed[i] && interest.has_subscribers(&e.key));
                if !late.is_empty() {
                    records.extend(late);
                    records.sort_unstable_by_key(|(offset, _)| *offset);
                }
                Self::candidates(p, records, |room, stream| interest.wants(room, stream))
            });
            let events = self.decide(p, candidates).await;
            let mut wide = false;
            if !events.is_empty() {
                wide = self.hub.deliver(events, &mut flushes) >= WIDE_EVENT;
                // The writes, outside the hub's lock: each subscriber's
                // frames of the batch in one write.
                flushes.run_fairly().await;
                metrics::histogram!("emosation_fanout_read_to_queued_seconds").record(read_at.elapsed().as_secs_f64());
            }
            if wide && !self.batch_window.is_zero() {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until((read_at + self.batch_window).into()) => {}
                }
            }
            next = last + 1;
            if self.hub.stop_if_unwanted(p) {
                return;
            }
        }
    }

    /// Delivers the room's events in `[from, to)` from the log to one
    /// subscription, then the events held back meanwhile, then goes live.
    async fn catch_up(self: Arc<Self>, conn: Arc<ConnHandle>, sub_id: u64, room: String, p: u32, from: u64, to: u64) {
        let mut next = from;
        let mut last = from.saturating_sub(1);
        // A subscription replaced (or ended) meanwhile stops its catch-up.
        while next < to && !conn.is_closed() && self.hub.is_current(conn.id, sub_id, &room) {
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
            let mut candidates = Self::candidates(p, records, |r, _| r == room);
            if let Err(err) = self.redact_deleted(&mut candidates).await {
                warn!(partition = p, error = %err, "catch-up lookup of deletes failed");
                conn.close(1011, "catch-up failed");
                return;
            }
            for ev in self.decide(p, candidates).await {
                if self.hub.wants(conn.id, sub_id, &room, ev.stream) && !conn.push_waiting(ev.frame).await {
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
        self.hub.go_live(conn.id, sub_id, &room, last);
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
    /// A catch-up's message deleted since (see [`Feed::redact_deleted`]):
    /// delivered as a tombstone.
    deleted_at: Option<i64>,
}

impl Candidate {
    /// Whether the projector's report decides it (see [`Feed::decide`]):
    /// its effect is a write-once entity at its own position, and its frame
    /// needs nothing but the record.
    fn reported(&self) -> bool {
        match &self.record {
            Record::MessagePosted(r) => r.attachments.is_empty(),
            Record::EmotionRecorded(r) => r.edit_id.is_none(),
            _ => false,
        }
    }

    /// The event of a [`Candidate::reported`] record, given whether it took
    /// effect: the frame [`Candidate::decided`] makes from the stored
    /// entity, made from the record (the entity is the record's content).
    fn decided_by_report(self, p: u32, took_effect: bool) -> Option<Event> {
        if !took_effect {
            return None;
        }
        let Candidate {
            offset,
            record,
            position,
            deleted_at,
        } = self;
        match record {
            Record::MessagePosted(r) => Some(post_event(offset, r, &position, deleted_at, &[])),
            Record::EmotionRecorded(r) => Some(emotion_event(
                offset,
                EmotionView::from_record(&r, LogPosition::new(p, offset))?,
            )),
            _ => None,
        }
    }

    /// The event, given the value of `key` in the views.
    fn decided(self, value: Option<ViewValue>) -> Option<Event> {
        let Candidate {
            offset,
            record,
            position,
            deleted_at,
        } = self;
        match (record, value) {
            (Record::MessagePosted(r), Some(value)) => {
                let attachments = match &value {
                    ViewValue::Message(m) => m.attachments.as_slice(),
                    _ => &[],
                };
                Some(post_event(offset, r, &position, deleted_at, attachments))
            }
            (Record::EmotionRecorded(_), Some(ViewValue::Emotion(em))) if em.position == position => {
                Some(emotion_event(offset, em))
            }
            (Record::EmotionRecorded(_), Some(ViewValue::MessageEdit(edit))) => Some(emotion_event(
                offset,
                edit.emotion.filter(|em| em.position == position)?,
            )),
            (Record::MessageEdited(_) | Record::MessageDeleted(_), Some(ViewValue::MessageChange(c))) => Some(Event {
                offset,
                frame: protocol::message_change(&c, &position),
                room_id: c.room_id,
                stream: Stream::Chat,
                left: None,
            }),
            (Record::MemberJoined(_) | Record::MemberQuit(_), Some(ViewValue::RoomEvent(ev))) => Some(Event {
                offset,
                frame: protocol::membership(&ev, &position),
                left: (!ev.joined).then(|| ev.user_id.clone()),
                room_id: ev.room_id,
                stream: Stream::Chat,
            }),
            _ => None,
        }
    }
}

/// A post's event: the message (with `attachments`, from its stored
/// entity), or its tombstone for a catch-up of a message deleted since.
fn post_event(
    offset: u64,
    r: emosation_core::record::MessagePosted,
    position: &str,
    deleted_at: Option<i64>,
    attachments: &[emosation_core::view::AttachmentRef],
) -> Event {
    Event {
        offset,
        frame: match deleted_at {
            Some(at) => protocol::tombstone(&r, position, at),
            None => protocol::message(&r, position, attachments),
        },
        room_id: r.room_id,
        stream: Stream::Chat,
        left: None,
    }
}

/// An emotion's event, on the `emotion` stream.
fn emotion_event(offset: u64, em: EmotionView) -> Event {
    Event {
        offset,
        frame: protocol::emotion(&em),
        room_id: em.room_id,
        stream: Stream::Emotion,
        left: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use emosation_core::ids::Topology;
    use emosation_storage::{EmbeddedLog, EmbeddedViewStore, LocalDecisions};
    use tokio::sync::Semaphore;

    /// A subscription that must catch up takes one of the connection's
    /// permits until it is live; with none left it is refused at once.
    #[tokio::test]
    async fn catch_ups_are_bounded_per_connection() {
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(&dir.path().join("log"), Topology::default()).unwrap());
        let views: Arc<dyn ViewStore> = Arc::new(EmbeddedViewStore::open(&dir.path().join("views")).unwrap());
        // No projector runs: a catch-up waits for it, holding its permit.
        let decisions = Arc::new(LocalDecisions::new());
        let feed = Feed::new(log.clone(), views, decisions, Duration::ZERO, CancellationToken::new());
        let mut first = None;
        for i in 0..3 {
            let pos = log.append(Topic::Rooms, b"room-a", Bytes::from(vec![i])).await.unwrap();
            first.get_or_insert(pos);
        }
        let since = first.unwrap().to_id();
        let conn = Arc::new(ConnHandle::new(1, "u".into(), 64, None));
        let permits = Arc::new(Semaphore::new(1));
        let cursor = feed
            .subscribe(Arc::clone(&conn), "room-a", Some(&since), Streams::ALL, &permits)
            .await
            .unwrap();
        assert_eq!(cursor, since);
        assert_eq!(permits.available_permits(), 0, "the catch-up holds the permit");
        let refused = feed
            .subscribe(Arc::clone(&conn), "room-a", Some(&since), Streams::ALL, &permits)
            .await
            .unwrap_err();
        assert_eq!(refused.code, "rate_limited");
        // Without `since` no catch-up is needed, and none is refused.
        feed.subscribe(Arc::clone(&conn), "room-a", None, Streams::ALL, &permits)
            .await
            .unwrap();
    }

    /// A subscription without `since` starts live delivery at the log's end,
    /// and `subscribed` goes out only once the views hold everything before
    /// it: history read after `subscribed` then has every record up to the
    /// cursor, and live delivery has every one after it (no gap between).
    #[tokio::test]
    async fn a_fresh_subscription_waits_for_the_views_to_reach_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(&dir.path().join("log"), Topology::default()).unwrap());
        let views: Arc<dyn ViewStore> = Arc::new(EmbeddedViewStore::open(&dir.path().join("views")).unwrap());
        let decisions = Arc::new(LocalDecisions::new());
        let feed = Feed::new(
            log.clone(),
            views,
            decisions.clone(),
            Duration::ZERO,
            CancellationToken::new(),
        );
        let mut last = None;
        for i in 0..3 {
            last = Some(log.append(Topic::Rooms, b"room-a", Bytes::from(vec![i])).await.unwrap());
        }
        let last = last.unwrap();
        let conn = Arc::new(ConnHandle::new(1, "u".into(), 64, None));
        let permits = Arc::new(Semaphore::new(1));
        let subscribing = tokio::spawn({
            let feed = Arc::clone(&feed);
            async move { feed.subscribe(conn, "room-a", None, Streams::ALL, &permits).await }
        });
        // The views hold nothing yet: no answer.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !subscribing.is_finished(),
            "subscribed before the views reached the log's end"
        );
        // The projector folds all but the last record: still waiting.
        decisions.applied(Topic::Rooms, last.partition, last.offset);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !subscribing.is_finished(),
            "subscribed before the views held the last record"
        );
        decisions.applied(Topic::Rooms, last.partition, last.offset + 1);
        let cursor = tokio::time::timeout(Duration::from_secs(5), subscribing)
            .await
            .expect("subscribed once the views reached the end")
            .unwrap()
            .unwrap();
        assert_eq!(cursor, last.to_id(), "live delivery starts after the last record");
    }
}
