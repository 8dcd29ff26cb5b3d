//! Pure helpers of the Scylla adapter: buckets, write timestamps, the redo
//! record, canonical keys and the checksum digest. No I/O, so unit-tested here.

use emosation_core::ids::{Topic, is_id};
use emosation_core::view::{TABLES, ViewKey, hour_field};
use sha2::{Digest, Sha256};

/// A message (or emotion) bucket spans 2^18 = 262,144 offsets of the room's
/// log partition. Even a room that alone fills its partition puts at most
/// that many messages (~50 MB at ~200 bytes) in one Scylla partition, well
/// under Scylla's large-partition thresholds, while a page of history in a
/// busy room is usually one bucket read.
pub(crate) const BUCKET_BITS: u32 = 18;

/// The timestamp of writes that carry no log position (bulk loads, and the
/// position-less batches a replay writes into freshly truncated tables): below
/// every positioned write, so any later live write wins.
pub(crate) const UNPOSITIONED: i64 = 0;

/// Redo records are stored in chunks of at most this many bytes, below
/// Scylla's large-cell warning (1 MB) and far below its mutation size limit.
pub(crate) const REDO_CHUNK: usize = 512 * 1024;

/// The bucket of a message id. Ids are log positions (`pppp` + 12 hex digits
/// of offset), so the bucket grows with the id and buckets walked downwards
/// visit a room's messages newest first. Ids of another shape (none are made
/// by the fold) all fall in bucket 0.
pub(crate) fn bucket_of(message_id: &str) -> i64 {
    if !is_id(message_id) {
        return 0;
    }
    match u64::from_str_radix(message_id, 16) {
        Ok(v) => (v >> BUCKET_BITS) as i64,
        Err(_) => 0,
    }
}

/// The write timestamp of a position: the next offset itself. Each entity is
/// written only by records of one log partition (the fold's locality rule),
/// in offset order, so a later batch always carries a larger timestamp than an
/// earlier one for every entity they share, and a re-applied batch carries the
/// same one. Offsets are below 2^48, far from overflowing.
pub(crate) fn position_timestamp(next_offset: u64) -> i64 {
    i64::try_from(next_offset).unwrap_or(i64::MAX)
}

/// The write timestamp of a batch: that of its greatest position, or
/// [`UNPOSITIONED`]. Every caller passes the one partition its changes came
/// from; with several, the greatest still orders each partition's own
/// batches as long as a batch never mixes partitions that share entities
/// (they never do).
pub(crate) fn batch_timestamp(positions: &[(Topic, u32, u64)]) -> i64 {
    positions
        .iter()
        .map(|(_, _, next)| position_timestamp(*next))
        .max()
        .unwrap_or(UNPOSITIONED)
}

/// Rebuilds a key from its table and canonical bytes ([`ViewKey::encode`]).
/// Only the last component may contain NUL, exactly the assumption the
/// canonical encoding makes.
pub(crate) fn decode_key(table: &str, raw: &[u8]) -> Option<ViewKey> {
    let text = std::str::from_utf8(raw).ok()?;
    let one = || text.to_owned();
    let two = || {
        let (a, b) = text.split_once('\0')?;
        Some((a.to_owned(), b.to_owned()))
    };
    Some(match table {
        "users" => ViewKey::User(one()),
        "usernames" => ViewKey::Username(one()),
        "rooms" => ViewKey::Room(one()),
        "members" => {
            let (room_id, user_id) = two()?;
            ViewKey::Member { room_id, user_id }
        }
        "messages" => {
            let (room_id, message_id) = two()?;
            ViewKey::Message { room_id, message_id }
        }
        "client_msgs" => {
            let mut it = text.splitn(3, '\0');
            let (room_id, user_id, client_msg_id) = (it.next()?, it.next()?, it.next()?);
            ViewKey::ClientMsg {
                room_id: room_id.to_owned(),
                user_id: user_id.to_owned(),
                client_msg_id: client_msg_id.to_owned(),
            }
        }
        "sessions" => {
            let (username, session_id) = two()?;
            ViewKey::Session { username, session_id }
        }
        "room_events" => {
            let (room_id, position) = two()?;
            ViewKey::RoomEvent { room_id, position }
        }
        "emotions" => {
            let (room_id, message_id) = two()?;
            ViewKey::Emotion { room_id, message_id }
        }
        "activity" => {
            let (room_id, hour) = two()?;
            let hour = i64::from_str_radix(&hour, 16).ok().filter(|h| hour_field(*h) == hour)?;
            ViewKey::Activity { room_id, hour }
        }
        _ => return None,
    })
}

/// A table's entities as (canonical key, value bytes).
pub(crate) type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A redo record's row: table index, canonical key, value bytes.
type RedoRow<V> = (u8, Vec<u8>, Option<V>);

/// One change of a batch, its value already postcard-encoded.
pub(crate) type Change = (ViewKey, Option<Vec<u8>>);

/// The redo record of a batch: `(table index, canonical key, value)` per
/// change, postcard-encoded. Replaying it writes exactly what the batch wrote.
pub(crate) fn encode_redo(changes: &[Change]) -> Result<Vec<u8>, String> {
    let rows: Vec<RedoRow<&[u8]>> = changes
        .iter()
        .map(|(k, v)| (table_index(k.table()), k.encode(), v.as_deref()))
        .collect();
    postcard::to_allocvec(&rows).map_err(|e| e.to_string())
}

pub(crate) fn decode_redo(raw: &[u8]) -> Result<Vec<Change>, String> {
    let rows: Vec<RedoRow<Vec<u8>>> = postcard::from_bytes(raw).map_err(|e| e.to_string())?;
    rows.into_iter()
        .map(|(t, k, v)| {
            let table = TABLES.get(usize::from(t)).ok_or_else(|| format!("unknown table {t}"))?;
            let key = decode_key(table, &k).ok_or_else(|| format!("undecodable key in {table}"))?;
            Ok((key, v))
        })
        .collect()
}

fn table_index(table: &str) -> u8 {
    // TABLES has 10 entries and `table` comes from `ViewKey::table`.
    TABLES.iter().position(|t| *t == table).unwrap_or(usize::MAX) as u8
}

/// The content digest of the view-store contract, in the embedded store's
/// exact encoding: for each named table in the given order, its name, then
/// each entry in ascending key order as length-prefixed key and value (u32
/// big-endian lengths). Entries may come in any order.
pub(crate) fn digest(tables: Vec<(&str, Entries)>) -> String {
    let mut h = Sha256::new();
    for (name, mut entries) in tables {
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        h.update((name.len() as u32).to_be_bytes());
        h.update(name.as_bytes());
        for (k, v) in entries {
            h.update((k.len() as u32).to_be_bytes());
            h.update(&k);
            h.update((v.len() as u32).to_be_bytes());
            h.update(&v);
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use emosation_core::ids::LogPosition;

    #[test]
    fn buckets_follow_message_ids() {
        let id = |offset| LogPosition::new(3, offset).to_id();
        assert_eq!(bucket_of(&id(0)), bucket_of(&id((1 << BUCKET_BITS) - 1)));
        assert_eq!(bucket_of(&id(1 << BUCKET_BITS)), bucket_of(&id(0)) + 1);
        // Partition 3's buckets sit above all of partition 2's.
        assert!(bucket_of(&id(0)) > bucket_of(&LogPosition::new(2, (1 << 48) - 1).to_id()));
        assert_eq!(bucket_of(&id(0)), 3 << (48 - BUCKET_BITS));
        let mut ids: Vec<String> = (0..2000u64).map(|i| id(i * 7919)).collect();
        ids.sort();
        assert!(ids.windows(2).all(|w| bucket_of(&w[0]) <= bucket_of(&w[1])));
        assert_eq!(bucket_of("not-an-id"), 0);
        assert_eq!(bucket_of("FFFFFFFFFFFFFFFF"), 0, "uppercase is not an id");
        assert!(
            bucket_of("ffffffffffffffff") > 0,
            "the largest id fits in an i64 bucket"
        );
    }

    #[test]
    fn timestamps_come_from_positions() {
        assert_eq!(batch_timestamp(&[]), UNPOSITIONED);
        assert_eq!(batch_timestamp(&[(Topic::Rooms, 3, 61)]), 61);
        assert_eq!(batch_timestamp(&[(Topic::Rooms, 3, 61), (Topic::Accounts, 0, 1)]), 61);
        assert!(position_timestamp(1) > UNPOSITIONED, "a live write beats a bulk load");
        assert!(position_timestamp(62) > position_timestamp(61));
        assert_eq!(position_timestamp(u64::MAX), i64::MAX);
    }

    fn every_kind_of_key() -> Vec<ViewKey> {
        vec![
            ViewKey::User("00000000000000a1".into()),
            ViewKey::Username("alice".into()),
            ViewKey::Room("r1".into()),
            ViewKey::Member {
                room_id: "r1".into(),
                user_id: "u2".into(),
            },
            ViewKey::Message {
                room_id: "r1".into(),
                message_id: "0003000000000010".into(),
            },
            ViewKey::ClientMsg {
                room_id: "r1".into(),
                user_id: "u1".into(),
                client_msg_id: "c\0with nul".into(),
            },
            ViewKey::Session {
                username: "alice".into(),
                session_id: "s1".into(),
            },
            ViewKey::RoomEvent {
                room_id: "r1".into(),
                position: "0003000000000011".into(),
            },
            ViewKey::Emotion {
                room_id: "r1".into(),
                message_id: "0003000000000010".into(),
            },
            ViewKey::Activity {
                room_id: "r1".into(),
                hour: 1_795_305_600_000,
            },
        ]
    }

    #[test]
    fn keys_round_trip_through_their_canonical_bytes() {
        for k in every_kind_of_key() {
            assert_eq!(decode_key(k.table(), &k.encode()), Some(k.clone()));
        }
        assert_eq!(decode_key("members", b"no-separator"), None);
        assert_eq!(decode_key("nope", b"x"), None);
        assert_eq!(decode_key("users", &[0xff]), None);
        assert_eq!(decode_key("activity", b"r1\0not-hex"), None);
    }

    #[test]
    fn redo_records_round_trip() {
        let changes: Vec<Change> = every_kind_of_key()
            .into_iter()
            .enumerate()
            .map(|(i, k)| (k, (i % 3 != 0).then(|| vec![i as u8; i * 100])))
            .collect();
        let raw = encode_redo(&changes).unwrap();
        assert_eq!(decode_redo(&raw).unwrap(), changes);
        assert!(decode_redo(&raw[..raw.len() / 2]).is_err());
        assert_eq!(decode_redo(&encode_redo(&[]).unwrap()).unwrap(), vec![]);
    }

    #[test]
    fn digest_is_order_independent() {
        let a = vec![(b"b".to_vec(), b"2".to_vec()), (b"a".to_vec(), b"1".to_vec())];
        let b = vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), b"2".to_vec())];
        assert_eq!(digest(vec![("t", a)]), digest(vec![("t", b.clone())]));
        assert_ne!(digest(vec![("t", b.clone())]), digest(vec![("u", b)]));
    }
}
