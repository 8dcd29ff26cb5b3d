//! [`TailCache`]: the rendered newest messages of busy rooms.
//!
//! Most history reads ask for the newest page of a room. Messages never change
//! once posted, so the newest N messages of a room are fully determined by the
//! room's `last_message_id`, which every history request reads from the views
//! anyway (for the 404/403 checks). A cached tail is used only while it was
//! built for exactly that `last_message_id`; any new message makes the next
//! reader rebuild it from the views. Entries hold each message already
//! rendered as JSON, so a hit costs no store scan, no decoding, no serializing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use emosation_core::view::{EmotionView, MessageView, RoomView};

use crate::json;

/// Messages kept per room: the largest page a client may ask for.
pub const TAIL_LEN: usize = crate::MAX_HISTORY_LIMIT;

/// One message, rendered.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub message_id: String,
    pub seq: u64,
    pub json: Bytes,
}

impl Rendered {
    pub fn new(m: &MessageView, emotion: Option<&EmotionView>) -> Self {
        Rendered {
            message_id: m.message_id.clone(),
            seq: m.seq,
            json: Bytes::from(serde_json::to_vec(&json::Message::new(m, emotion)).unwrap_or_default()),
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

#[derive(Debug)]
pub struct TailCache {
    shards: Vec<Mutex<HashMap<String, Arc<RoomTail>>>>,
    rooms_per_shard: usize,
}

impl TailCache {
    /// A cache holding the tails of up to `rooms` rooms.
    pub fn new(rooms: usize) -> Self {
        let shards = 16;
        TailCache {
            shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
            rooms_per_shard: rooms.div_ceil(shards).max(1),
        }
    }

    fn shard(&self, room_id: &str) -> &Mutex<HashMap<String, Arc<RoomTail>>> {
        let h = emosation_core::ids::murmur2(room_id.as_bytes()) as usize;
        &self.shards[h % self.shards.len()]
    }

    /// The cached tail of `room`, if it is current.
    pub fn get(&self, room: &RoomView) -> Option<Arc<RoomTail>> {
        let shard = self.shard(&room.room_id).lock().ok()?;
        shard
            .get(&room.room_id)
            .filter(|t| t.last_message_id == room.last_message_id && t.emotions == emotion_total(room))
            .cloned()
    }

    /// Stores a tail built from the views for `room`'s current state.
    pub fn put(&self, room: &RoomView, messages: &[MessageView], emotions: &[Option<EmotionView>]) -> Arc<RoomTail> {
        let tail = Arc::new(RoomTail {
            last_message_id: room.last_message_id.clone(),
            emotions: emotion_total(room),
            entries: messages
                .iter()
                .zip(emotions.iter().map(Option::as_ref).chain(std::iter::repeat(None)))
                .map(|(m, e)| Rendered::new(m, e))
                .collect(),
        });
        if let Ok(mut shard) = self.shard(&room.room_id).lock() {
            if shard.len() >= self.rooms_per_shard && !shard.contains_key(&room.room_id) {
                // Evict an arbitrary room: the cache is an accelerator, not a store.
                if let Some(k) = shard.keys().next().cloned() {
                    shard.remove(&k);
                }
            }
            shard.insert(room.room_id.clone(), Arc::clone(&tail));
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
