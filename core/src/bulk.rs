//! [`BulkRows`]: write-once view entities encoded for a bulk load
//! ([`crate::ports::ViewStore::bulk_load`]).
//!
//! A replay produces hundreds of thousands of messages and idempotency keys
//! between two bulk loads. Holding them as typed values costs an allocation per
//! string and a large vector of large enums that is copied as it grows; here
//! each entity is encoded once, as it leaves the fold: its table, its
//! canonical key bytes ([`ViewKey::encode`]) and its value bytes
//! ([`ViewValue::encode`]), the bytes every adapter stores.
//!
//! Rows are kept in *buckets* of one table and one 16-byte key prefix — a
//! room, for messages and idempotency keys — each bucket in its own chunks of
//! memory, written once and never moved.
//! [`BulkRows::sorted`] then orders the buckets (a few thousand) rather than
//! the rows (millions), and a bucket's rows are usually in order already (a
//! room's messages are written in message-id order) or sorted where they lie
//! together in memory: a store that loads sorted runs (an LSM's ingestion)
//! reads the rows almost sequentially instead of jumping through memory for
//! every comparison.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use rustc_hash::FxHasher;

use crate::ports::StoreError;
use crate::view::{TABLES, ViewKey, ViewValue};

/// Encoded write-once entities; rows are numbered in push order.
#[derive(Debug, Default, Clone)]
pub struct BulkRows {
    rows: Vec<Row>,
    buckets: Vec<Bucket>,
    bucket_of: HashMap<(u8, u128), u32, BuildHasherDefault<FxHasher>>,
    /// The rows' bytes. A bucket fills one chunk at a time and starts a new,
    /// larger one when it is full: rows never move once written (a growing
    /// buffer would copy them, and fault in twice the memory, at every
    /// doubling), and each chunk holds one bucket's rows together.
    chunks: Vec<Chunk>,
    bytes: usize,
    scratch: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Bucket {
    table: u8,
    prefix: u128,
    /// Its rows, in push order (or by key, after [`BulkRows::sort_buckets`]).
    rows: Vec<u32>,
    /// Encoded bytes of its rows.
    bytes: usize,
    /// The chunk it is filling, if any.
    filling: Option<u32>,
}

#[derive(Debug, Clone)]
struct Chunk {
    bucket: u32,
    bytes: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Row {
    chunk: u32,
    start: u32,
    key_len: u32,
    value_len: u32,
}

/// A bucket's first chunk; each next one is twice as large, up to
/// [`MAX_CHUNK`] (a larger row gets a chunk of its own size).
const FIRST_CHUNK: usize = 256;
const MAX_CHUNK: usize = 64 << 10;

impl BulkRows {
    pub fn new() -> Self {
        BulkRows::default()
    }

    /// Appends one entity; returns its row number. Only write-once entities
    /// ([`ViewKey::is_write_once`]) may be bulk-loaded.
    pub fn push(&mut self, key: &ViewKey, value: &ViewValue) -> Result<u32, StoreError> {
        if !key.is_write_once() {
            return Err(StoreError::Storage(format!("bulk load of a mutable entity {key:?}")));
        }
        let too_large = || StoreError::Storage("bulk load too large".into());
        let index = u32::try_from(self.rows.len()).map_err(|_| too_large())?;
        self.scratch.clear();
        key.encode_into(&mut self.scratch);
        let key_len = self.scratch.len();
        value
            .encode_into(&mut self.scratch)
            .map_err(|e| StoreError::Storage(format!("encoding {key:?}: {e}")))?;
        let row_len = self.scratch.len();
        let (Ok(key_len), Ok(value_len)) = (u32::try_from(key_len), u32::try_from(row_len - key_len)) else {
            return Err(too_large());
        };
        let b = self.bucket(key.table_index() as u8, prefix(&self.scratch[..key_len as usize]));
        let chunk = self.chunk_for(b, row_len).ok_or_else(too_large)?;
        let bytes = &mut self.chunks[chunk as usize].bytes;
        let start = u32::try_from(bytes.len()).map_err(|_| too_large())?;
        bytes.extend_from_slice(&self.scratch);
        let bucket = &mut self.buckets[b as usize];
        bucket.rows.push(index);
        bucket.bytes += row_len;
        self.bytes += row_len;
        self.rows.push(Row {
            chunk,
            start,
            key_len,
            value_len,
        });
        Ok(index)
    }

    /// A chunk of bucket `b` with room for `len` more bytes, started if need be.
    fn chunk_for(&mut self, b: u32, len: usize) -> Option<u32> {
        let bucket = &mut self.buckets[b as usize];
        let last = bucket.filling.map(|c| &self.chunks[c as usize].bytes);
        if let Some(bytes) = last
            && bytes.capacity() - bytes.len() >= len
        {
            return bucket.filling;
        }
        let size = last.map_or(FIRST_CHUNK, |bytes| (bytes.capacity() * 2).min(MAX_CHUNK));
        let c = u32::try_from(self.chunks.len()).ok()?;
        self.chunks.push(Chunk {
            bucket: b,
            bytes: Vec::with_capacity(size.max(len)),
        });
        bucket.filling = Some(c);
        Some(c)
    }

    /// The bucket of `(table, prefix)`, created if new.
    fn bucket(&mut self, table: u8, prefix: u128) -> u32 {
        let next = self.buckets.len() as u32;
        let b = *self.bucket_of.entry((table, prefix)).or_insert(next);
        if b == next {
            self.buckets.push(Bucket {
                table,
                prefix,
                rows: Vec::new(),
                bytes: 0,
                filling: None,
            });
        }
        b
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Encoded bytes held (keys and values).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Moves `other`'s rows after this one's; they are renumbered after
    /// this one's. Its chunks move whole, without copying a byte.
    pub fn append(&mut self, other: BulkRows) {
        let shift = self.rows.len() as u32;
        let chunk_shift = self.chunks.len() as u32;
        // other's bucket → this one's
        let mut moved = Vec::with_capacity(other.buckets.len());
        for ob in other.buckets {
            let b = self.bucket(ob.table, ob.prefix);
            let bucket = &mut self.buckets[b as usize];
            bucket.rows.extend(ob.rows.iter().map(|r| r + shift));
            bucket.bytes += ob.bytes;
            if bucket.filling.is_none() {
                bucket.filling = ob.filling.map(|c| c + chunk_shift);
            }
            moved.push(b);
        }
        self.chunks.extend(other.chunks.into_iter().map(|c| Chunk {
            bucket: moved[c.bucket as usize],
            bytes: c.bytes,
        }));
        self.rows.extend(other.rows.iter().map(|r| Row {
            chunk: r.chunk + chunk_shift,
            ..*r
        }));
        self.bytes += other.bytes;
    }

    /// Row `i`'s table (one of [`TABLES`]).
    pub fn table(&self, i: u32) -> &'static str {
        let chunk = &self.chunks[self.rows[i as usize].chunk as usize];
        TABLES[self.buckets[chunk.bucket as usize].table as usize]
    }

    /// Row `i`'s canonical key bytes.
    pub fn key(&self, i: u32) -> &[u8] {
        let r = self.rows[i as usize];
        let at = r.start as usize;
        &self.chunks[r.chunk as usize].bytes[at..at + r.key_len as usize]
    }

    /// Row `i`'s encoded value.
    pub fn value(&self, i: u32) -> &[u8] {
        let r = self.rows[i as usize];
        let at = r.start as usize + r.key_len as usize;
        &self.chunks[r.chunk as usize].bytes[at..at + r.value_len as usize]
    }

    /// Row `i`'s value, decoded.
    pub fn decode_value(&self, i: u32) -> Result<ViewValue, StoreError> {
        ViewValue::decode(self.value(i)).map_err(|e| StoreError::Corrupt {
            table: self.table(i),
            reason: e.to_string(),
        })
    }

    /// `(table, key, value)` of every row, in push order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &[u8], &[u8])> + '_ {
        (0..self.rows.len() as u32).map(|i| (self.table(i), self.key(i), self.value(i)))
    }

    /// Row numbers per table (indexed like [`TABLES`]), each sorted by key
    /// with repeated keys dropped (the first pushed stays).
    pub fn sorted(&self) -> Vec<Vec<u32>> {
        (0..TABLES.len()).map(|t| self.sorted_table(t)).collect()
    }

    /// Orders each bucket's rows by key (stably: of equal keys the first
    /// pushed stays first), so that [`BulkRows::sorted_table`] finds them in
    /// order. Rows moved into another `BulkRows` by [`BulkRows::append`] keep
    /// their order: whoever produces rows can sort them where it has cores to
    /// spare, instead of in the bulk load.
    pub fn sort_buckets(&mut self) {
        for b in 0..self.buckets.len() {
            let mut rows = std::mem::take(&mut self.buckets[b].rows);
            if !rows.is_sorted_by(|&x, &y| self.key(x) <= self.key(y)) {
                rows.sort_by(|&x, &y| self.key(x).cmp(self.key(y)));
            }
            self.buckets[b].rows = rows;
        }
    }

    /// Encoded bytes of table `t`'s rows, repeated keys included.
    pub fn table_bytes(&self, t: usize) -> usize {
        self.buckets
            .iter()
            .filter(|b| b.table as usize == t)
            .map(|b| b.bytes)
            .sum()
    }

    /// Whether table `t` (an index into [`TABLES`]) has rows.
    pub fn has_table(&self, t: usize) -> bool {
        self.buckets.iter().any(|b| b.table as usize == t && !b.rows.is_empty())
    }

    /// Table `t`'s part of [`BulkRows::sorted`]; tables can be sorted in
    /// parallel.
    pub fn sorted_table(&self, t: usize) -> Vec<u32> {
        let mut buckets: Vec<(u128, u32)> = self
            .buckets
            .iter()
            .enumerate()
            .filter(|(_, b)| b.table as usize == t)
            .map(|(i, b)| (b.prefix, i as u32))
            .collect();
        // Integer order of prefixes is byte order wherever they differ, and
        // rows with equal prefixes share a bucket.
        buckets.sort_unstable();
        let mut order = Vec::with_capacity(buckets.iter().map(|&(_, b)| self.buckets[b as usize].rows.len()).sum());
        for (_, b) in buckets {
            let from = order.len();
            order.extend_from_slice(&self.buckets[b as usize].rows);
            let group = &mut order[from..];
            // Strictly increasing: sorted and without repeats.
            if group.is_sorted_by(|&a, &b| self.key(a) < self.key(b)) {
                continue;
            }
            // Stable: of equal keys, the first pushed comes first and stays.
            group.sort_by(|&a, &b| self.key(a).cmp(self.key(b)));
            let mut kept = 1;
            for j in 1..group.len() {
                if self.key(group[j]) != self.key(group[kept - 1]) {
                    group[kept] = group[j];
                    kept += 1;
                }
            }
            let dropped = group.len() - kept;
            order.truncate(order.len() - dropped);
        }
        order
    }
}

/// The first 16 bytes of `key` as a big-endian integer, zero-padded: integer
/// order agrees with byte order wherever two prefixes differ.
fn prefix(key: &[u8]) -> u128 {
    let mut p = [0u8; 16];
    let n = key.len().min(16);
    p[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::MessageView;
    use proptest::prelude::*;

    fn message(room: &str, id: &str) -> (ViewKey, ViewValue) {
        (
            ViewKey::Message {
                room_id: room.into(),
                message_id: id.into(),
            },
            ViewValue::Message(MessageView {
                message_id: id.into(),
                room_id: room.into(),
                seq: 1,
                author_id: "a".into(),
                author: "alice".into(),
                text: format!("text of {id}"),
                created_at: 7,
                client_msg_id: String::new(),
                attachments: vec![],
            }),
        )
    }

    #[test]
    fn rows_keep_their_bytes_and_refuse_mutable_entities() {
        let mut rows = BulkRows::new();
        let (k, v) = message("r1", "m1");
        assert_eq!(rows.push(&k, &v).unwrap(), 0);
        assert_eq!(rows.key(0), k.encode());
        assert_eq!(rows.value(0), v.encode().unwrap());
        assert_eq!(rows.decode_value(0).unwrap(), v);
        assert_eq!(rows.table(0), "messages");
        assert!(
            rows.push(&ViewKey::Room("r1".into()), &ViewValue::Username("x".into()))
                .is_err()
        );
        assert_eq!(rows.len(), 1);
    }

    #[test]
    fn appended_rows_keep_their_bytes() {
        let (mut a, mut b) = (BulkRows::new(), BulkRows::new());
        let (k1, v1) = message("r", "1");
        let (k2, v2) = message("r", "2");
        a.push(&k1, &v1).unwrap();
        b.push(&k2, &v2).unwrap();
        let bytes = a.bytes() + b.bytes();
        a.append(b);
        assert_eq!((a.len(), a.bytes()), (2, bytes));
        assert_eq!((a.key(0), a.key(1)), (&k1.encode()[..], &k2.encode()[..]));
        assert_eq!(a.decode_value(1).unwrap(), v2);
    }

    #[test]
    fn rows_of_any_size_keep_their_bytes() {
        let mut rows = BulkRows::new();
        let mut want = Vec::new();
        for n in 0..3000 {
            let (k, mut v) = message("room", &format!("{n:08}"));
            if let ViewValue::Message(m) = &mut v {
                // Mostly small, some large, one of 3 MiB.
                m.text = "x".repeat(match n % 7 {
                    0 => 5000,
                    _ if n == 1500 => 3 << 20,
                    _ => n % 300,
                });
            }
            assert_eq!(rows.push(&k, &v).unwrap(), n as u32);
            want.push((k, v));
        }
        for (i, (k, v)) in want.iter().enumerate() {
            assert_eq!(rows.key(i as u32), k.encode());
            assert_eq!(rows.decode_value(i as u32).unwrap(), *v);
        }
    }

    proptest! {
        /// `sorted` orders every table's keys exactly as a full sort would,
        /// whatever the keys' shared prefixes and push order.
        #[test]
        fn sorted_equals_a_full_sort(keys in proptest::collection::vec(
            (0u8..3, "[a-c]{0,20}", "[a-c\\x00]{0,6}"), 0..200), split in 0usize..50) {
            let key = |t: u8, a: &String, b: &String| match t {
                0 => ViewKey::Message { room_id: a.clone(), message_id: b.clone() },
                1 => ViewKey::Emotion { room_id: a.clone(), message_id: b.clone() },
                _ => ViewKey::ClientMsg { room_id: a.clone(), user_id: b.clone(), client_msg_id: "c".into() },
            };
            let mut rows = BulkRows::new();
            for (t, a, b) in &keys {
                rows.push(&key(*t, a, b), &ViewValue::Username(b.clone())).unwrap();
            }
            let want = |rows: &BulkRows, t: usize| {
                let mut want: Vec<Vec<u8>> =
                    rows.iter().filter(|(table, ..)| *table == TABLES[t]).map(|(_, k, _)| k.to_vec()).collect();
                want.sort();
                want.dedup();
                want
            };
            for (t, order) in rows.sorted().iter().enumerate() {
                let got: Vec<Vec<u8>> = order.iter().map(|&i| rows.key(i).to_vec()).collect();
                prop_assert_eq!(got, want(&rows, t));
            }
            // Buckets sorted beforehand (as a replay's partition does): the
            // same rows chosen, repeated keys' first pushed included.
            let mut presorted = rows.clone();
            presorted.sort_buckets();
            prop_assert_eq!(presorted.sorted(), rows.sorted());
            // Pushed in parts and appended: the same rows, the same order.
            let mut merged = BulkRows::new();
            for part in keys.chunks(split.max(1)) {
                let mut rows = BulkRows::new();
                for (t, a, b) in part {
                    rows.push(&key(*t, a, b), &ViewValue::Username(b.clone())).unwrap();
                }
                if split % 2 == 0 {
                    rows.sort_buckets();
                }
                merged.append(rows);
            }
            prop_assert_eq!(merged.bytes(), rows.bytes());
            prop_assert!(merged.iter().eq(rows.iter()));
            for (t, order) in merged.sorted().iter().enumerate() {
                let got: Vec<Vec<u8>> = order.iter().map(|&i| merged.key(i).to_vec()).collect();
                prop_assert_eq!(got, want(&rows, t));
            }
        }
    }
}
