//! Log positions, ids derived from them, topic names and the partitioner.
//!
//! A message id and a cursor are both the log position of a record, written as
//! 16 lowercase hex digits: 4 for the partition, 12 for the offset. A room lives
//! in exactly one partition, so within a room ids compare (as equal-length
//! strings) in log order.

use std::fmt;

/// The topics on the log. Names are Kafka-legal and identical on every adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Topic {
    /// Account commands, keyed by normalized username: signup, delete, restore,
    /// session revocation. One username's commands are therefore totally ordered.
    Accounts,
    /// Room commands, keyed by room id: create, join, quit, post, read marker.
    /// One room's commands are totally ordered.
    Rooms,
}

impl Topic {
    pub const ALL: [Topic; 2] = [Topic::Accounts, Topic::Rooms];

    pub fn name(self) -> &'static str {
        match self {
            Topic::Accounts => "emosation.accounts",
            Topic::Rooms => "emosation.rooms",
        }
    }

    pub fn from_name(name: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Partition counts of the topics. Fixed when the log is created: changing them
/// would move keys between partitions and break per-key ordering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub accounts_partitions: u32,
    pub rooms_partitions: u32,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            accounts_partitions: 4,
            rooms_partitions: 8,
        }
    }
}

impl Topology {
    pub fn partitions(&self, topic: Topic) -> u32 {
        match topic {
            Topic::Accounts => self.accounts_partitions,
            Topic::Rooms => self.rooms_partitions,
        }
    }
}

/// Where a record sits on the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct LogPosition {
    pub partition: u32,
    pub offset: u64,
}

/// Largest partition number an id can carry (4 hex digits).
pub const MAX_PARTITIONS: u32 = 0x1_0000;
const MAX_OFFSET: u64 = (1 << 48) - 1;

impl LogPosition {
    pub fn new(partition: u32, offset: u64) -> Self {
        LogPosition { partition, offset }
    }

    /// The 16-hex-digit form used for message ids and cursors.
    pub fn to_id(self) -> String {
        debug_assert!(self.partition < MAX_PARTITIONS && self.offset <= MAX_OFFSET);
        if self.partition >= MAX_PARTITIONS || self.offset > MAX_OFFSET {
            return format!("{:04x}{:012x}", self.partition, self.offset);
        }
        // Every message id is made here (a replay makes a million): sixteen
        // nibbles written directly, without the formatting machinery.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = (u64::from(self.partition) << 48) | self.offset;
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            *b = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Parses the form written by [`LogPosition::to_id`]; `None` for anything else.
    pub fn parse_id(s: &str) -> Option<LogPosition> {
        if s.len() != 16 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let partition = u32::from_str_radix(&s[..4], 16).ok()?;
        let offset = u64::from_str_radix(&s[4..], 16).ok()?;
        Some(LogPosition { partition, offset })
    }
}

/// Kafka's default partitioner (murmur2 of the key bytes, sign bit cleared),
/// so the embedded log and a Kafka cluster place every key in the same partition.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// The murmur2 variant used by the Java Kafka client (seed 0x9747b28c).
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// A fresh opaque id (users, rooms, sessions): 16 lowercase hex digits of the
/// given random value. The caller supplies the randomness; core has no RNG.
pub fn random_id(random: u64) -> String {
    format!("{random:016x}")
}

/// Whether `s` has the shape of an id: 16 lowercase hex digits (user, room
/// and message ids, cursors). Anything else names nothing.
pub fn is_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The id of the attachment uploaded to `room_id` by the record at `pos`:
/// the room id followed by the position's 16 hex digits, so that a download
/// finds the room (whose members may read it) from the id alone.
pub fn attachment_id(room_id: &str, pos: LogPosition) -> String {
    let mut id = String::with_capacity(room_id.len() + 16);
    id.push_str(room_id);
    id.push_str(&pos.to_id());
    id
}

/// The room of an attachment id made by [`attachment_id`]; `None` for a
/// string that is not one.
pub fn attachment_room(id: &str) -> Option<&str> {
    let split = id.len().checked_sub(16)?;
    let (room, pos) = (id.get(..split)?, id.get(split..)?);
    (!room.is_empty() && LogPosition::parse_id(pos).is_some()).then_some(room)
}

/// The id of the direct-message room of two users, whichever of them asks:
/// 16 hex digits of the FNV-1a hash of the ordered pair. It is also the key
/// of every record about the pair (friend requests, blocks), so the pair's
/// relationship and its room are decided in one partition, in log order.
pub fn pair_room_id(a: &str, b: &str) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"dm\0".iter().chain(lo.as_bytes()).chain(b"\0").chain(hi.as_bytes()) {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Usernames are matched case-insensitively: `Alice` and `alice` are one account.
pub fn normalize_username(name: &str) -> String {
    name.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka_reference_values() {
        // Values from Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21") as i32, -973_932_308);
        assert_eq!(murmur2(b"foobar") as i32, -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1_486_304_829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58_897_971
        );
        assert_eq!(murmur2(b"abc") as i32, 479_470_107);
    }

    #[test]
    fn ids_round_trip_and_sort_in_log_order() {
        let a = LogPosition::new(3, 9);
        let b = LogPosition::new(3, 10);
        assert_eq!(LogPosition::parse_id(&a.to_id()), Some(a));
        assert!(a.to_id() < b.to_id());
        assert_eq!(a.to_id().len(), 16);
        assert_eq!(LogPosition::parse_id("zz"), None);
        assert_eq!(LogPosition::parse_id("000300000000000G"), None);
        assert_eq!(LogPosition::parse_id("0003000000000A0b"), None, "uppercase is not ours");
        for (partition, offset) in [
            (0, 0),
            (3, 9),
            (0xabcd, 0x1234_5678_9abc),
            (0xffff, MAX_OFFSET),
            (7, 1 << 40),
        ] {
            let p = LogPosition::new(partition, offset);
            assert_eq!(p.to_id(), format!("{partition:04x}{offset:012x}"));
            assert_eq!(LogPosition::parse_id(&p.to_id()), Some(p));
        }
    }

    #[test]
    fn id_shape() {
        assert!(is_id("00000000000000af"));
        assert!(!is_id("../etc/passwd"));
        assert!(!is_id("00000000000000AF"));
    }

    #[test]
    fn partitioner_is_stable_and_in_range() {
        for n in 1..20u32 {
            for key in ["alice", "bob", "0123456789abcdef", ""] {
                let p = partition_for(key.as_bytes(), n);
                assert!(p < n);
                assert_eq!(p, partition_for(key.as_bytes(), n));
            }
        }
    }
}
