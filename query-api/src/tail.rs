//! [`TailCache`]: the rendered newest messages of busy rooms.
//!
//! Most history reads ask for the newest page of a room. Messages never change
//! once posted, so the newest N messages of a room are fully determined by the
//! room's `last_message_id`, which every history request reads from the views
//! anyway (for the 404/403 checks). A cached tail is used only while it was
//! built for exactly that `last_message_id`; any new message makes the next
//! reader rebuild it from the views. Edits and deletes change messages in
//! place: each counts in the room's changes ([`RoomEditsView`]), which the
//! history request reads beside the room, and a tail is valid only for the
//! count it was built at. Entries hold each message already
//! rendered as JSON, so a hit costs no store scan, no decoding, no serializing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use emosation_core::view::{EmotionView, MessageEditView, MessageView, RoomView};

#[cfg(doc)]
use emosation_core::view::RoomEditsView;

use crate::json;

/// Messages kept per room: the largest page a client may ask for.
pub const TAIL_LEN: usize = crate::MAX_HISTORY_LIMIT;

/// What the views hold beside a message: its emotion and its edits.
#[derive(Debug, Clone, Default)]
pub struct Overlay {
    pub emotion: Option<EmotionView>,
    pub edit: Option<MessageEditView>,
}

/// One message, rendered.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub message_id: String,
    pub seq: u64,
    pub json: Bytes,
}

impl Rendered {
    pub fn new(m: &MessageView, emotion: Option<&EmotionView>, edit: Option<&MessageEditView>) -> Self {
        Rendered {
            message_id: m.message_id.clone(),
            seq: m.seq,
            json: Bytes::from(serde_json::to_vec(&json::Message::new(m, emotion, edit)).unwrap_or_default()),
        }
    }
}

/// The newest messages of a room, oldest first, valid for `last_message_id`.
#[derive(Debug)]
pub struct RoomTail {
    pub last_message_id: Option<String>,
    /// Emotions recorded in the room when the tail was built: an emotion
    /// arriving for a cached message makes the tail stale too.
    pub emotions: u32,
    /// The room's changes (edits, deletes, re-classifications) when built.
    pub changes: u64,
    pub entries: Vec<Rendered>,
}

impl RoomTail {
    /// The page of `limit` messages older than `before` (newest page if
    /// `None`), if this tail holds all of it.
    pub fn page(&self, before: Option<&str>, limit: usize) -> Option<&[Rendered]> {
        let starts_at_room_start = self.entries.first().is_none_or(|e| e.seq == 1);
        let end = match before {
            None => self.entries.len(),
            Some(b) => self.entries.partition_point(|e| e.message_id.as_str() < b),
        };
        let start = end.saturating_sub(limit);
        (end - start == limit || (start == 0 && starts_at_room_start)).then(|| &self.entries[start..end])
    }

    /// The page as a complete response body.
    pub fn render_page(page: &[Rendered]) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + page.iter().map(|r| r.json.len() + 1).sum::<usize>());
        out.extend_from_slice(b"{\"messages\":[");
        for (i, r) in page.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&r.json);
        }
        out.extend_from_slice(b"],\"next_before\":");
        match page.first().filter(|r| r.seq > 1) {
            Some(r) => {
                out.push(b'"');
                out.extend_from_slice(r.message_id.as_bytes());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
        out
    }
}

fn emotion_total(room: &RoomView) -> u32 {
    room.emotion_counts.iter().sum()
}

impl RoomTail {
    /// What it counts against the cache's byte bound.
    fn bytes(&self) -> usize {
        self.entries
            .iter()
            .map(|e| e.json.len() + e.message_id.len() + std::mem::size_of::<Rendered>())
            .sum::<usize>()
            + std::mem::size_of::<RoomTail>()
    }
}

#[derive(Debug)]
pub struct TailCache {
    shards: Vec<Mutex<Shard>>,
    rooms_per_shard: usize,
    bytes_per_shard: usize,
}

#[derive(Debug, Default)]
struct Shard {
    rooms: HashMap<String, Arc<RoomTail>>,
    /// Sum of the held tails' [`RoomTail::bytes`].
    bytes: usize,
}

impl Shard {
    fn remove(&mut self, room_id: &str) {
        if let Some(t) = self.rooms.remove(room_id) {
            self.bytes -= t.bytes();
        }
    }
}

const SHARDS: usize = 16;

impl TailCache {
    /// A cache holding the tails of up to `rooms` rooms and `max_bytes`
    /// bytes of rendered messages.
    pub fn new(rooms: usize, max_bytes: usize) -> Self {
        TailCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            rooms_per_shard: rooms.div_ceil(SHARDS).max(1),
            bytes_per_shard: max_bytes.div_ceil(SHARDS).max(1),
        }
    }

    /// The bytes held (as counted against the bound) and the bound.
    pub fn memory(&self) -> emosation_core::ports::MemoryUse {
        let bytes = self
            .shards
            .iter()
            .map(|s| s.lock().map(|s| s.bytes).unwrap_or(0))
            .sum::<usize>();
        emosation_core::ports::MemoryUse {
            part: "query_tail_cache",
            bytes: bytes as u64,
            limit: (self.bytes_per_shard * self.shards.len()) as u64,
        }
    }

    fn shard(&self, room_id: &str) -> &Mutex<Shard> {
        let h = emosation_core::ids::murmur2(room_id.as_bytes()) as usize;
        &self.shards[h % self.shards.len()]
    }

    /// The cached tail of `room`, if it is current (`changes`: the room's
    /// changes to its messages so far).
    pub fn get(&self, room: &RoomView, changes: u64) -> Option<Arc<RoomTail>> {
        let shard = self.shard(&room.room_id).lock().ok()?;
        shard
            .rooms
            .get(&room.room_id)
            .filter(|t| {
                t.last_message_id == room.last_message_id && t.emotions == emotion_total(room) && t.changes == changes
            })
            .cloned()
    }

    /// Stores a tail built from the views for `room`'s current state.
    pub fn put(&self, room: &RoomView, changes: u64, messages: &[MessageView], overlays: &[Overlay]) -> Arc<RoomTail> {
        let none = Overlay::default();
        let tail = Arc::new(RoomTail {
            last_message_id: room.last_message_id.clone(),
            emotions: emotion_total(room),
            changes,
            entries: messages
                .iter()
                .zip(overlays.iter().chain(std::iter::repeat(&none)))
                .map(|(m, o)| Rendered::new(m, o.emotion.as_ref(), o.edit.as_ref()))
                .collect(),
        });
        let bytes = tail.bytes();
        if bytes <= self.bytes_per_shard
            && let Ok(mut shard) = self.shard(&room.room_id).lock()
        {
            shard.remove(&room.room_id);
            // Evict arbitrary rooms: the cache is an accelerator, not a store.
            while shard.rooms.len() >= self.rooms_per_shard || shard.bytes + bytes > self.bytes_per_shard {
                let Some(k) = shard.rooms.keys().next().cloned() else {
                    break;
                };
                shard.remove(&k);
            }
            shard.bytes += bytes;
            shard.rooms.insert(room.room_id.clone(), Arc::clone(&tail));
        }
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(seqs: std::ops::RangeInclusive<u64>) -> RoomTail {
        RoomTail {
            last_message_id: None,
            emotions: 0,
            changes: 0,
            entries: seqs
                .map(|s| Rendered {
                    message_id: format!("{s:016x}"),
                    seq: s,
                    json: Bytes::from(format!("{{\"s\":{s}}}")),
                })
                .collect(),
        }
    }

    fn seqs(p: &[Rendered]) -> Vec<u64> {
        p.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn pages_within_a_tail_that_starts_at_the_room_start() {
        let t = tail(1..=120);
        assert_eq!(seqs(t.page(None, 50).unwrap()), (71..=120).collect::<Vec<_>>());
        assert_eq!(
            seqs(t.page(Some(&format!("{:016x}", 71)), 50).unwrap()),
            (21..=70).collect::<Vec<_>>()
        );
        assert_eq!(
            seqs(t.page(Some(&format!("{:016x}", 21)), 50).unwrap()),
            (1..=20).collect::<Vec<_>>()
        );
        assert!(t.page(Some(&format!("{:016x}", 1)), 50).unwrap().is_empty());
        let empty = RoomTail {
            last_message_id: None,
            emotions: 0,
            changes: 0,
            entries: vec![],
        };
        assert!(empty.page(None, 50).unwrap().is_empty(), "an empty room");
    }

    #[test]
    fn a_partial_tail_answers_only_pages_it_holds_entirely() {
        let t = tail(301..=500);
        assert_eq!(seqs(t.page(None, 200).unwrap()).len(), 200);
        assert_eq!(
            seqs(t.page(Some(&format!("{:016x}", 351)), 50).unwrap()),
            (301..=350).collect::<Vec<_>>()
        );
        assert!(
            t.page(Some(&format!("{:016x}", 340)), 50).is_none(),
            "needs messages older than the tail"
        );
        assert!(t.page(Some(&format!("{:016x}", 5)), 50).is_none());
    }

    fn room(id: &str, last: u64) -> RoomView {
        RoomView {
            room_id: id.into(),
            name: id.into(),
            capacity: 10,
            owner_id: "o".into(),
            created_at: 0,
            member_count: 1,
            message_count: last,
            last_message_id: Some(format!("{last:016x}")),
            emotion_counts: [0; 7],
        }
    }

    fn message(room_id: &str, seq: u64, text_len: usize) -> MessageView {
        MessageView {
            message_id: format!("{seq:016x}"),
            room_id: room_id.into(),
            seq,
            author_id: "a".into(),
            author: "alice".into(),
            text: "x".repeat(text_len),
            created_at: 0,
            client_msg_id: format!("c{seq}"),
            attachments: vec![],
        }
    }

    #[test]
    fn the_cache_stays_within_its_rooms_and_bytes() {
        let cache = TailCache::new(1000, 16 * 100_000);
        for r in 0..200 {
            let id = format!("room{r}");
            let msgs: Vec<MessageView> = (1..=20).map(|s| message(&id, s, 1000)).collect();
            cache.put(&room(&id, 20), 0, &msgs, &[]);
        }
        let (mut rooms, mut bytes) = (0, 0);
        for shard in &cache.shards {
            let shard = shard.lock().unwrap();
            assert!(shard.bytes <= cache.bytes_per_shard, "{} bytes in a shard", shard.bytes);
            assert_eq!(shard.bytes, shard.rooms.values().map(|t| t.bytes()).sum::<usize>());
            rooms += shard.rooms.len();
            bytes += shard.bytes;
        }
        assert!(
            bytes <= 16 * 100_000 && rooms < 200,
            "{rooms} rooms, {bytes} bytes held"
        );
        // The newest put is held.
        assert!(cache.get(&room("room199", 20), 0).is_some());
        // A change to the room's messages makes it stale.
        assert!(cache.get(&room("room199", 20), 1).is_none());
    }

    #[test]
    fn rendered_pages_are_json_with_next_before() {
        let t = tail(1..=3);
        let body: serde_json::Value = serde_json::from_slice(&RoomTail::render_page(t.page(None, 2).unwrap())).unwrap();
        assert_eq!(body["messages"].as_array().unwrap().len(), 2);
        assert_eq!(body["next_before"], format!("{:016x}", 2));
        let body: serde_json::Value = serde_json::from_slice(&RoomTail::render_page(t.page(None, 5).unwrap())).unwrap();
        assert_eq!(body["next_before"], serde_json::Value::Null);
    }
}
