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

/// The `rooms_by_id` partition of a room: its id's first byte (1–255). Ids
/// compare as byte strings, so walking the shards in order, and each shard
/// in id order, lists rooms in id order; a store's rooms spread over as
/// many partitions as their ids have first bytes (16 for the hex ids ingest
/// makes). Shard 0 holds the index written before shards existed (no id
/// starts with a NUL byte), listed beside the others until the next replay.
pub(crate) fn room_shard(room_id: &str) -> i32 {
    room_id.as_bytes().first().map_or(0, |b| i32::from(*b))
}

/// Rooms listed in id order from the legacy shard's page and the sharded
/// walk's page, each in id order: merged, without repeats, `limit` at most.
pub(crate) fn merge_room_pages(legacy: Vec<String>, sharded: Vec<String>, limit: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(limit.min(legacy.len() + sharded.len()));
    let (mut a, mut b) = (legacy.into_iter().peekable(), sharded.into_iter().peekable());
    while out.len() < limit {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x == y => {
                b.next();
                a.next()
            }
            (Some(x), Some(y)) if x < y => a.next(),
            (Some(_), Some(_)) | (None, Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, None) => None,
        };
        match next {
            Some(id) => out.push(id),
            None => break,
        }
    }
    out
}

/// A position as stored in `positions.next_offset` (offsets are below 2^48).
pub(crate) fn position_timestamp(next_offset: u64) -> i64 {
    i64::try_from(next_offset).unwrap_or(i64::MAX)
}

/// A consumer's generation: `clear` moves the consumer to the next one, so
/// its positions start empty, and its writes to a new, higher range of
/// timestamps.
///
/// Every write of a generation is timestamped `base + next offset` of the
/// position its batch advances to. Each entity is written only by records of
/// one log partition (the fold's locality rule), in offset order, so a later
/// batch always carries a larger timestamp than an earlier one for every
/// entity they share, and a re-applied batch carries the same one: it
/// converges instead of duplicating. Position-less writes (bulk loads, a
/// replay's batches into freshly cleared tables) are at `base` itself, below
/// every positioned write of the generation.
///
/// The base of a new generation is above every timestamp the old one can
/// have written and above the wall clock after the clear's TRUNCATE, so
/// every entity the rebuild writes wins, however TRUNCATE removes data: were
/// it a tombstone at the time of the truncate (scylladb/scylladb#11230
/// proposes it), or a pre-truncate write replayed late from a hint. (An old
/// cell the rebuild does not rewrite is removed by TRUNCATE: today by
/// dropping its SSTables; as a tombstone, as long as its timestamp is below
/// the truncate's, i.e. the partition's offsets since the previous clear do
/// not outnumber the microseconds since it.) Generation 0 (stores written
/// before bases existed) has base 0: their timestamps are the offsets
/// themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Generation {
    pub(crate) number: i64,
    pub(crate) base: i64,
}

impl Generation {
    pub(crate) const FIRST: Generation = Generation { number: 0, base: 0 };

    /// The timestamp of the writes of a batch that advances to `next_offset`.
    pub(crate) fn timestamp(self, next_offset: u64) -> i64 {
        self.base.saturating_add(position_timestamp(next_offset))
    }

    /// The timestamp of a batch: that of its greatest position, or the base
    /// for a position-less batch. Every caller passes the one partition its
    /// changes came from; with several, the greatest still orders each
    /// partition's own batches as long as a batch never mixes partitions that
    /// share entities (they never do).
    pub(crate) fn batch_timestamp(self, positions: &[(Topic, u32, u64)]) -> i64 {
        positions
            .iter()
            .map(|(_, _, next)| self.timestamp(*next))
            .max()
            .unwrap_or(self.base)
    }

    /// The generation `clear` moves to, given the greatest next offset among
    /// this generation's positions and the wall clock (µs) once its tables
    /// are truncated.
    pub(crate) fn next(self, highest_next: u64, now_micros: i64) -> Generation {
        Generation {
            number: self.number + 1,
            base: now_micros
                .saturating_add(1)
                .max(self.timestamp(highest_next).saturating_add(1)),
        }
    }
}

/// The position a reader may rely on: the batch's entities are all written.
/// `materialized` is written after a batch's entities, `next_offset` before
/// them (it commits the batch); rows written before the watermark existed
/// have none and are taken as written.
pub(crate) fn readable_position(next_offset: Option<i64>, materialized: Option<i64>) -> i64 {
    let next = next_offset.unwrap_or(0);
    materialized.map_or(next, |m| m.min(next))
}

/// What a position's compare-and-set commit expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    /// No row: `INSERT … IF NOT EXISTS`.
    Absent,
    /// `UPDATE … IF next_offset = N`.
    At(u64),
}

/// The expectation from what this store last saw of the position: nothing
/// (never read: a fresh consumer, or after `clear`) or 0 is no row; `None`
/// (a commit that may or may not have landed) must be re-read first.
pub(crate) fn expectation(seen: Option<&Option<u64>>) -> Result<Expect, &'static str> {
    match seen {
        None | Some(Some(0)) => Ok(Expect::Absent),
        Some(Some(n)) => Ok(Expect::At(*n)),
        Some(None) => Err("a previous batch failed: re-read the position before applying more"),
    }
}

/// Which generation of `wanted` the checksum digests, and whether its
/// rebuilding mark is set, from the `consumers` rows. A consumer with no
/// row (never cleared nor marked) is at generation 0 with its positions all
/// the same: the digest must not depend on whether the row exists.
pub(crate) fn digested_generation(wanted: &str, consumers: &[(String, Option<i64>, Option<bool>)]) -> (i64, bool) {
    consumers
        .iter()
        .find(|(c, ..)| c == wanted)
        .map_or((0, false), |(_, generation, rebuilding)| {
            (generation.unwrap_or(0), *rebuilding == Some(true))
        })
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
        "message_edits" => {
            let (room_id, message_id) = two()?;
            ViewKey::MessageEdit { room_id, message_id }
        }
        "friends" => {
            let (user_id, other_id) = two()?;
            ViewKey::Friend { user_id, other_id }
        }
        "attachments" => {
            let (room_id, attachment_id) = two()?;
            ViewKey::Attachment { room_id, attachment_id }
        }
        "activity" => {
            let (room_id, hour) = two()?;
            let hour = i64::from_str_radix(&hour, 16).ok().filter(|h| hour_field(*h) == hour)?;
            ViewKey::Activity { room_id, hour }
        }
        "admin" => {
            let (scope, bucket) = two()?;
            let bucket = i64::from_str_radix(&bucket, 16)
                .ok()
                .filter(|b| hour_field(*b) == bucket)?;
            ViewKey::Admin { scope, bucket }
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
    // TABLES has 14 entries and `table` comes from `ViewKey::table`.
    TABLES.iter().position(|t| *t == table).unwrap_or(usize::MAX) as u8
}

/// The content digest of the view-store contract, in the embedded store's
/// exact encoding: for each named table in the given order, its name, then
/// each entry in ascending key order as length-prefixed key and value (u32
/// big-endian lengths). Entries may come in any order. The reference the
/// checksum's [`StreamingDigest`] is tested against.
#[cfg(test)]
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

/// The same digest as [`digest`], over tables of any size: each table's
/// entries are pushed in any order, kept sorted in memory up to a budget and
/// spilled to temporary files in sorted runs past it, then merged in key
/// order into the hash. Memory stays near the budget however large the
/// views are.
pub(crate) struct StreamingDigest {
    hasher: Sha256,
    budget: usize,
}

/// One table's entries on their way into a [`StreamingDigest`].
pub(crate) struct TableSorter {
    name: String,
    budget: usize,
    buffer: Entries,
    bytes: usize,
    runs: Vec<std::fs::File>,
}

impl StreamingDigest {
    pub(crate) fn new(budget: usize) -> Self {
        StreamingDigest {
            hasher: Sha256::new(),
            budget: budget.max(1),
        }
    }

    pub(crate) fn table(&self, name: &str) -> TableSorter {
        TableSorter {
            name: name.to_owned(),
            budget: self.budget,
            buffer: Vec::new(),
            bytes: 0,
            runs: Vec::new(),
        }
    }

    /// Hashes a table's entries in key order (tables go in the order added).
    pub(crate) fn add(&mut self, table: TableSorter) -> std::io::Result<()> {
        use std::io::{BufReader, Seek};
        let h = &mut self.hasher;
        h.update((table.name.len() as u32).to_be_bytes());
        h.update(table.name.as_bytes());
        let TableSorter { mut buffer, runs, .. } = table;
        buffer.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut readers = Vec::with_capacity(runs.len());
        for mut run in runs {
            run.rewind()?;
            readers.push(BufReader::new(run));
        }
        // A k-way merge of the runs and the in-memory rest.
        // The smallest key first: (key, run, value).
        type Head = std::cmp::Reverse<(Vec<u8>, usize, Vec<u8>)>;
        let mut heads: std::collections::BinaryHeap<Head> = std::collections::BinaryHeap::new();
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some((k, v)) = read_entry(r)? {
                heads.push(std::cmp::Reverse((k, i, v)));
            }
        }
        let mut rest = buffer.into_iter().peekable();
        loop {
            let take_rest = match (rest.peek(), heads.peek()) {
                (Some((k, _)), Some(std::cmp::Reverse((r, ..)))) => k <= r,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let (k, v) = if take_rest {
                rest.next().unwrap_or_default()
            } else {
                let Some(std::cmp::Reverse((k, i, v))) = heads.pop() else {
                    break;
                };
                if let Some((nk, nv)) = read_entry(&mut readers[i])? {
                    heads.push(std::cmp::Reverse((nk, i, nv)));
                }
                (k, v)
            };
            h.update((k.len() as u32).to_be_bytes());
            h.update(&k);
            h.update((v.len() as u32).to_be_bytes());
            h.update(&v);
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> String {
        self.hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl TableSorter {
    pub(crate) fn push(&mut self, key: Vec<u8>, value: Vec<u8>) -> std::io::Result<()> {
        self.bytes += key.len() + value.len() + 64;
        self.buffer.push((key, value));
        if self.bytes > self.budget {
            self.spill()?;
        }
        Ok(())
    }

    /// Writes the buffer, sorted, as one run: `u32` key length, key, `u32`
    /// value length, value (big-endian lengths).
    fn spill(&mut self) -> std::io::Result<()> {
        use std::io::Write;
        self.buffer.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let file = tempfile::tempfile()?;
        let mut w = std::io::BufWriter::new(file);
        for (k, v) in self.buffer.drain(..) {
            w.write_all(&(k.len() as u32).to_be_bytes())?;
            w.write_all(&k)?;
            w.write_all(&(v.len() as u32).to_be_bytes())?;
            w.write_all(&v)?;
        }
        self.runs.push(w.into_inner().map_err(|e| e.into_error())?);
        self.bytes = 0;
        Ok(())
    }

    /// Sorted runs written to disk so far.
    #[cfg(test)]
    fn runs(&self) -> usize {
        self.runs.len()
    }
}

fn read_entry(r: &mut impl std::io::Read) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut k = vec![0u8; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut k)?;
    r.read_exact(&mut len)?;
    let mut v = vec![0u8; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut v)?;
    Ok(Some((k, v)))
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
        let g = Generation::FIRST;
        assert_eq!(g.batch_timestamp(&[]), 0);
        assert_eq!(g.batch_timestamp(&[(Topic::Rooms, 3, 61)]), 61);
        assert_eq!(g.batch_timestamp(&[(Topic::Rooms, 3, 61), (Topic::Accounts, 0, 1)]), 61);
        assert!(
            g.timestamp(1) > g.batch_timestamp(&[]),
            "a live write beats a bulk load"
        );
        assert!(g.timestamp(62) > g.timestamp(61));
        assert_eq!(g.timestamp(u64::MAX), i64::MAX);
        let later = Generation { number: 3, base: 1_000 };
        assert_eq!(later.batch_timestamp(&[]), 1_000);
        assert_eq!(later.batch_timestamp(&[(Topic::Rooms, 0, 5)]), 1_005);
    }

    /// Cell resolution as Scylla does it: the greatest timestamp wins, and
    /// on equal timestamps a deletion wins over a write.
    #[derive(Default)]
    struct Cell {
        writes: Vec<(i64, bool)>,
    }

    impl Cell {
        fn write(&mut self, ts: i64) {
            self.writes.push((ts, true));
        }
        fn delete(&mut self, ts: i64) {
            self.writes.push((ts, false));
        }
        fn visible(&self) -> bool {
            self.writes
                .iter()
                .max_by_key(|(ts, live)| (*ts, !*live))
                .is_some_and(|(_, live)| *live)
        }
    }

    /// The old TRUNCATE canary wrote and deleted one row at timestamp 1 on
    /// every clear: from the second clear on, the first clear's deletion
    /// (equal timestamp, so it wins) hid the new canary and `clear` failed.
    /// Generations need no canary: what a rebuild writes wins over a
    /// tombstone-based truncate and over late pre-truncate writes, however
    /// many clears came before.
    #[test]
    fn rebuilt_views_win_over_truncation_on_every_clear() {
        let mut canary = Cell::default();
        canary.write(1);
        canary.delete(1);
        canary.write(1);
        assert!(!canary.visible(), "the defect: a second clear's canary is invisible");

        let mut g = Generation::FIRST;
        let mut now = 1_795_000_000_000_000i64;
        let mut cell = Cell::default();
        for round in 0..5u64 {
            // The generation writes the cell up to a high offset, and a
            // write is still in flight (a hint) when the clear comes.
            let highest = 1_000_000 * (round + 1);
            cell.write(g.timestamp(highest));
            let late = g.timestamp(highest - 1);
            // TRUNCATE as a tombstone at the wall clock, an hour later.
            now += 3_600_000_000;
            cell.delete(now);
            let next = g.next(highest, now);
            assert!(next.number > g.number && next.base > now.max(g.timestamp(highest)));
            g = next;
            cell.write(late);
            assert!(!cell.visible(), "round {round}: nothing old survives the clear");
            cell.write(g.batch_timestamp(&[]));
            assert!(cell.visible(), "round {round}: the rebuild's bulk write is visible");
            cell.delete(g.timestamp(7));
            assert!(!cell.visible(), "round {round}: and a later live deletion wins");
        }
    }

    #[test]
    fn readers_see_positions_whose_entities_are_written() {
        assert_eq!(readable_position(Some(10), Some(10)), 10);
        // Committed, entities still being written (or the writer crashed):
        // readers stay at the last fully written batch.
        assert_eq!(readable_position(Some(10), Some(6)), 6);
        // Rows from before the watermark existed.
        assert_eq!(readable_position(Some(10), None), 10);
        assert_eq!(readable_position(None, None), 0);
    }

    /// `rooms_by_id` was one partition for every room of the store; rooms
    /// now spread over their ids' first bytes, and the walk over shards in
    /// order lists them in id order still.
    #[test]
    fn room_shards_keep_the_listing_in_id_order() {
        let mut ids: Vec<String> = (0..500u64)
            .map(|i| format!("{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            .chain(["Zed".to_owned(), "éclair".to_owned(), "_x".to_owned()])
            .collect();
        let mut by_shard = ids.clone();
        by_shard.sort_by(|a, b| (room_shard(a), a).cmp(&(room_shard(b), b)));
        ids.sort();
        assert_eq!(by_shard, ids);
        let shards: std::collections::BTreeSet<i32> = ids.iter().map(|i| room_shard(i)).collect();
        assert!(shards.len() >= 16 && !shards.contains(&0), "{shards:?}");
        // The legacy shard's rooms merge into the walk's in id order, once.
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            merge_room_pages(s(&["a1", "c3", "e5"]), s(&["b2", "c3", "d4"]), 10),
            s(&["a1", "b2", "c3", "d4", "e5"])
        );
        assert_eq!(merge_room_pages(s(&["a1", "c3"]), s(&["b2"]), 2), s(&["a1", "b2"]));
        assert_eq!(merge_room_pages(vec![], s(&["b2"]), 0), Vec::<String>::new());
    }

    /// Two writers of one consumer (a rolling deploy overlapping): the row
    /// is a compare-and-set, as Scylla's LWT applies it, and whoever finds
    /// the position moved writes nothing until it has re-read it.
    #[test]
    fn a_second_writer_is_fenced_by_the_position_compare_and_set() {
        fn cas(row: &mut Option<u64>, expect: Expect, next: u64) -> bool {
            let holds = match expect {
                Expect::Absent => row.is_none(),
                Expect::At(n) => *row == Some(n),
            };
            if holds {
                *row = Some(next);
            }
            holds
        }
        let mut row = None;
        // Both start on a fresh consumer; the first commit wins.
        let (mut a, mut b): (Option<Option<u64>>, Option<Option<u64>>) = (None, None);
        assert!(cas(&mut row, expectation(a.as_ref()).unwrap(), 10));
        a = Some(Some(10));
        assert!(
            !cas(&mut row, expectation(b.as_ref()).unwrap(), 7),
            "the stale writer is refused"
        );
        b = Some(None);
        assert!(
            expectation(b.as_ref()).is_err(),
            "and must re-read before anything else"
        );
        assert!(cas(&mut row, expectation(a.as_ref()).unwrap(), 20));
        // Re-read, the other writer goes on from where the views are.
        b = Some(row);
        assert!(!cas(&mut row, expectation(a.as_ref()).unwrap(), 30), "a is stale now");
        assert!(cas(&mut row, expectation(b.as_ref()).unwrap(), 30));
        assert_eq!(row, Some(30));
        assert_eq!(expectation(Some(&Some(0))), Ok(Expect::Absent));
    }

    /// The checksum read positions only of consumers with a `consumers` row,
    /// written by `clear` or `set_rebuilding` alone: a store that was never
    /// rebuilt digested no positions, unlike the embedded store.
    #[test]
    fn a_consumer_without_a_row_is_digested_at_generation_zero() {
        assert_eq!(digested_generation("core", &[]), (0, false));
        let rows = vec![
            ("activity".to_owned(), Some(4), Some(true)),
            ("core".to_owned(), None, Some(false)),
        ];
        assert_eq!(digested_generation("core", &rows), (0, false));
        assert_eq!(digested_generation("activity", &rows), (4, true));
        assert_eq!(digested_generation("analyzer", &rows), (0, false));
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
            ViewKey::MessageEdit {
                room_id: "r1".into(),
                message_id: "0003000000000010".into(),
            },
            ViewKey::Friend {
                user_id: "u1".into(),
                other_id: "u2".into(),
            },
            ViewKey::Attachment {
                room_id: "r1".into(),
                attachment_id: "r10003000000000011".into(),
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

    /// Tables far larger than the budget digest as the in-memory digest
    /// does, through runs on disk; the checksum no longer holds a whole
    /// table in memory.
    #[test]
    fn the_streaming_digest_equals_the_sorted_one_past_its_budget() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let tables: Vec<(&str, Entries)> = vec![
            (
                "users",
                (0..3000)
                    .map(|i| {
                        (
                            format!("u{:08x}", next() ^ i).into_bytes(),
                            vec![i as u8; (i % 50) as usize],
                        )
                    })
                    .collect(),
            ),
            ("empty", Vec::new()),
            (
                "messages",
                (0..5000)
                    .map(|i| {
                        (
                            format!("r{}\0{:016x}", i % 7, next()).into_bytes(),
                            next().to_be_bytes().to_vec(),
                        )
                    })
                    .collect(),
            ),
        ];
        let expected = digest(tables.clone());
        for budget in [1, 4096, 64 * 1024, usize::MAX / 2] {
            let mut d = StreamingDigest::new(budget);
            for (name, entries) in &tables {
                let mut t = d.table(name);
                for (k, v) in entries {
                    t.push(k.clone(), v.clone()).unwrap();
                }
                if budget == 4096 && !entries.is_empty() {
                    assert!(t.runs() > 1, "{name}: spilled to several runs");
                }
                d.add(t).unwrap();
            }
            assert_eq!(d.finish(), expected, "budget {budget}");
        }
    }

    #[test]
    fn digest_is_order_independent() {
        let a = vec![(b"b".to_vec(), b"2".to_vec()), (b"a".to_vec(), b"1".to_vec())];
        let b = vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), b"2".to_vec())];
        assert_eq!(digest(vec![("t", a)]), digest(vec![("t", b.clone())]));
        assert_ne!(digest(vec![("t", b.clone())]), digest(vec![("u", b)]));
    }
}
