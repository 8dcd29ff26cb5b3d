//! [`RedisViewStore`]: the view store on Redis, for hot state that must be
//! shared by every node and served from memory.
//!
//! # Data model
//! Every key carries the hash tag `{NS}` (default `{emosation}`), so a Redis
//! Cluster keeps one deployment's views in one slot and the apply script may
//! touch them all atomically. (That caps the views at one shard: they are
//! hot state — rooms, memberships, recent history, revoked sessions — not an
//! archive; ScyllaDB is the store that scales out.)
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{NS}:t:TABLE` | hash | canonical key bytes ([`ViewKey::encode`]) → postcard [`ViewValue`], one per table of [`TABLES`] |
//! | `{NS}:rooms` | zset (lex) | room ids, for listing rooms in id order |
//! | `{NS}:m:ROOM` / `{NS}:ur:USER` | zset (lex) | members of a room / rooms of a user |
//! | `{NS}:h:ROOM` | zset (lex) | message ids of a room (fixed-width hex, so lex order is log order) |
//! | `{NS}:e:ROOM` | zset (lex) | message ids with an emotion |
//! | `{NS}:usernames` | zset (lex) | usernames, for an admin's search by prefix |
//! | `{NS}:f:USER` | zset (lex) | the other users a user has a relationship row with |
//! | `{NS}:a:ROOM` | zset (lex) | hours of the room with an activity entity (16 hex digits, so lex order is time order) |
//! | `{NS}:positions` | hash | `consumer\0topic\0partition` → next offset (8 bytes BE); `consumer\x01rebuilding` |
//!
//! Values and key bytes are exactly the embedded store's, so a consumer's
//! checksum (its tables in [`TABLES`] order, entries in key-byte order, then
//! its positions) is equal for equal content whichever store holds it.
//!
//! # Atomic batches, and noticing a Redis that came back empty
//! `apply` runs one Lua script: it first checks that each position the batch
//! advances is still where this store last saw it (read by `position`, or
//! written by its previous `apply`), then makes every change and writes the
//! new positions. Redis runs a script atomically, so readers see all of a
//! batch or none of it. If Redis restarted without its data (or someone
//! flushed it), the positions are gone, the check fails, and `apply` returns
//! an error naming the lost position; the projector then re-reads its
//! position (now 0) and folds the partition again from the start of the log,
//! which rebuilds exactly the same views.
//!
//! URL: `redis://HOST:PORT[/DB][?ns=NAME&pool=N]`.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use emosation_core::bulk::BulkRows;
use emosation_core::ids::Topic;
use emosation_core::ports::{CORE_VIEWS, StoreError, ViewBatch, ViewQueries, ViewStore};
use emosation_core::view::ACTIVITY_VIEWS;
use emosation_core::view::{
    ActivityView, EmotionView, MemberView, MessageView, RoomView, TABLES, ViewKey, ViewValue, hour_field, table_owner,
};
use sha2::{Digest, Sha256};

use crate::embedded::views::is_position_of;
use crate::redis::conn::{RedisPool, RedisUrl};
use crate::{OpenError, consumer_partition_key};

/// Keys written per pipeline round trip by `bulk_load`.
const INGEST_CHUNK: usize = 2_000;

const APPLY_SCRIPT: &str = r#"
-- KEYS[1]: the positions hash.
-- ARGV: n_checks, then (field, expected) pairs, then ops:
--   "s" hash field value | "d" hash field | "z" zset member | "r" zset member
local n = tonumber(ARGV[1])
local i = 2
for _ = 1, n do
  local have = redis.call('HGET', KEYS[1], ARGV[i])
  local want = ARGV[i + 1]
  if want == '' then
    if have then return redis.error_reply('EMOSATION_MOVED position advanced elsewhere') end
  elseif have ~= want then
    return redis.error_reply('EMOSATION_LOST view position missing or moved (did Redis restart empty?)')
  end
  i = i + 2
end
while i <= #ARGV do
  local op = ARGV[i]
  if op == 's' then redis.call('HSET', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]); i = i + 4
  elseif op == 'd' then redis.call('HDEL', ARGV[i + 1], ARGV[i + 2]); i = i + 3
  elseif op == 'z' then redis.call('ZADD', ARGV[i + 1], 0, ARGV[i + 2]); i = i + 3
  elseif op == 'r' then redis.call('ZREM', ARGV[i + 1], ARGV[i + 2]); i = i + 3
  else return redis.error_reply('EMOSATION_BADOP ' .. tostring(op)) end
end
return 1
"#;

/// One `HSCAN` page: the next cursor and field/value pairs.
type HashPage = (u64, Vec<(Vec<u8>, Vec<u8>)>);

fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(format!("redis: {e}"))
}

fn rebuilding_field(consumer: &str) -> Vec<u8> {
    let mut k = consumer.as_bytes().to_vec();
    k.extend_from_slice(b"\x01rebuilding");
    k
}

/// The view store on Redis.
pub struct RedisViewStore {
    pool: RedisPool,
    ns: String,
    apply: redis::Script,
    /// Where each position was when this store last read or wrote it (the
    /// apply script's guard against a Redis that lost its data); `None` once
    /// an apply failed, until `position` reads it again.
    seen: Mutex<HashMap<Vec<u8>, Option<u64>>>,
}

impl std::fmt::Debug for RedisViewStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisViewStore").field("ns", &self.ns).finish()
    }
}

impl RedisViewStore {
    pub async fn connect(url: &str) -> Result<Self, OpenError> {
        let url = RedisUrl::parse(url)?;
        let pool = RedisPool::connect(&url).await?;
        Ok(RedisViewStore {
            pool,
            ns: url.ns,
            apply: redis::Script::new(APPLY_SCRIPT),
            seen: Mutex::new(HashMap::new()),
        })
    }

    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{{{}}}:{rest}", self.ns).into_bytes()
    }

    fn table_key(&self, table: &str) -> Vec<u8> {
        self.key(&format!("t:{table}"))
    }

    fn index_key(&self, kind: &str, id: &str) -> Vec<u8> {
        self.key(&format!("{kind}:{id}"))
    }

    fn positions_key(&self) -> Vec<u8> {
        self.key("positions")
    }

    fn decode(table: &'static str, raw: &[u8]) -> Result<ViewValue, StoreError> {
        postcard::from_bytes(raw).map_err(|e| StoreError::Corrupt {
            table,
            reason: e.to_string(),
        })
    }

    /// The index entries (zset, member) a key keeps.
    fn indexes(&self, key: &ViewKey) -> Vec<(Vec<u8>, String)> {
        match key {
            ViewKey::Room(id) => vec![(self.key("rooms"), id.clone())],
            ViewKey::Username(name) => vec![(self.key("usernames"), name.clone())],
            ViewKey::Member { room_id, user_id } => vec![
                (self.index_key("m", room_id), user_id.clone()),
                (self.index_key("ur", user_id), room_id.clone()),
            ],
            ViewKey::Message { room_id, message_id } => vec![(self.index_key("h", room_id), message_id.clone())],
            ViewKey::Emotion { room_id, message_id } => vec![(self.index_key("e", room_id), message_id.clone())],
            ViewKey::Activity { room_id, hour } => vec![(self.index_key("a", room_id), hour_field(*hour))],
            ViewKey::Friend { user_id, other_id } => vec![(self.index_key("f", user_id), other_id.clone())],
            _ => Vec::new(),
        }
    }

    async fn get_many(&self, keys: &[ViewKey]) -> Result<Vec<Option<ViewValue>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("HGET").arg(self.table_key(k.table())).arg(k.encode());
        }
        let raw: Vec<Option<Vec<u8>>> = self.pool.read(&pipe).await.map_err(storage)?;
        keys.iter()
            .zip(raw)
            .map(|(k, r)| r.map(|r| Self::decode(k.table(), &r)).transpose())
            .collect()
    }

    /// Ids from a lex zset: `(after, +]` ascending or `[-, before)` descending.
    async fn range(
        &self,
        zset: Vec<u8>,
        after: Option<&str>,
        before: Option<&str>,
        rev: bool,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let limit = limit.min(i64::MAX as usize) as i64;
        let mut cmd = if rev {
            let mut c = redis::cmd("ZREVRANGEBYLEX");
            c.arg(zset)
                .arg(before.map_or("+".to_owned(), |b| format!("({b}")))
                .arg("-");
            c
        } else {
            let mut c = redis::cmd("ZRANGEBYLEX");
            c.arg(zset)
                .arg(after.map_or("-".to_owned(), |a| format!("({a}")))
                .arg("+");
            c
        };
        cmd.arg("LIMIT").arg(0).arg(limit);
        self.pool.read(&cmd).await.map_err(storage)
    }

    async fn scan_keys(&self, pattern: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
            let (next, keys): (u64, Vec<Vec<u8>>) = self.pool.read(&cmd).await.map_err(storage)?;
            out.extend(keys);
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// Every field of a hash, sorted by field bytes.
    async fn sorted_hash(&self, key: Vec<u8>) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let mut cmd = redis::cmd("HSCAN");
            cmd.arg(&key).arg(cursor).arg("COUNT").arg(1000);
            let (next, chunk): HashPage = self.pool.read(&cmd).await.map_err(storage)?;
            out.extend(chunk);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        // HSCAN may return a field twice while the hash is rehashing.
        out.sort_unstable();
        out.dedup_by(|a, b| a.0 == b.0);
        Ok(out)
    }

    fn values_of<T>(vals: Vec<Option<ViewValue>>, pick: impl Fn(ViewValue) -> Option<T>) -> Vec<T> {
        vals.into_iter().flatten().filter_map(pick).collect()
    }
}

fn as_member(v: ViewValue) -> Option<MemberView> {
    match v {
        ViewValue::Member(m) => Some(m),
        _ => None,
    }
}

#[async_trait]
impl ViewQueries for RedisViewStore {
    async fn load(&self, keys: &[ViewKey]) -> Result<Vec<Option<ViewValue>>, StoreError> {
        self.get_many(keys).await
    }

    async fn rooms(&self, after: Option<&str>, limit: usize) -> Result<Vec<RoomView>, StoreError> {
        let ids = self.range(self.key("rooms"), after, None, false, limit).await?;
        let keys: Vec<ViewKey> = ids.into_iter().map(ViewKey::Room).collect();
        Ok(Self::values_of(self.get_many(&keys).await?, |v| match v {
            ViewValue::Room(r) => Some(r),
            _ => None,
        }))
    }

    async fn members(&self, room_id: &str, after: Option<&str>, limit: usize) -> Result<Vec<MemberView>, StoreError> {
        let ids = self
            .range(self.index_key("m", room_id), after, None, false, limit)
            .await?;
        let keys: Vec<ViewKey> = ids
            .into_iter()
            .map(|user_id| ViewKey::Member {
                room_id: room_id.to_owned(),
                user_id,
            })
            .collect();
        Ok(Self::values_of(self.get_many(&keys).await?, as_member))
    }

    async fn usernames(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let min = match after.filter(|a| *a >= prefix) {
            Some(a) => format!("({a}"),
            None => format!("[{prefix}"),
        };
        // Usernames are printable ASCII: every one with the prefix sorts
        // below the prefix followed by 0x7f.
        let mut cmd = redis::cmd("ZRANGEBYLEX");
        cmd.arg(self.key("usernames"))
            .arg(min)
            .arg(format!("[{prefix}\u{7f}"))
            .arg("LIMIT")
            .arg(0)
            .arg(limit.min(i64::MAX as usize) as i64);
        let names: Vec<String> = self.pool.read(&cmd).await.map_err(storage)?;
        let keys: Vec<ViewKey> = names.iter().map(|n| ViewKey::Username(n.clone())).collect();
        let ids = self.get_many(&keys).await?;
        Ok(names
            .into_iter()
            .zip(ids)
            .filter_map(|(n, v)| match v {
                Some(ViewValue::Username(id)) => Some((n, id)),
                _ => None,
            })
            .collect())
    }

    async fn friends(
        &self,
        user_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<emosation_core::view::FriendView>, StoreError> {
        let ids = self
            .range(self.index_key("f", user_id), after, None, false, limit)
            .await?;
        let keys: Vec<ViewKey> = ids.into_iter().map(|other| ViewKey::friend(user_id, &other)).collect();
        Ok(Self::values_of(self.get_many(&keys).await?, |v| match v {
            ViewValue::Friend(f) => Some(f),
            _ => None,
        }))
    }

    async fn user_rooms(
        &self,
        user_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MemberView>, StoreError> {
        let ids = self
            .range(self.index_key("ur", user_id), after, None, false, limit)
            .await?;
        let keys: Vec<ViewKey> = ids
            .into_iter()
            .map(|room_id| ViewKey::Member {
                room_id,
                user_id: user_id.to_owned(),
            })
            .collect();
        Ok(Self::values_of(self.get_many(&keys).await?, as_member))
    }

    async fn history(&self, room_id: &str, before: Option<&str>, limit: usize) -> Result<Vec<MessageView>, StoreError> {
        let ids = self
            .range(self.index_key("h", room_id), None, before, true, limit)
            .await?;
        let keys: Vec<ViewKey> = ids
            .into_iter()
            .rev()
            .map(|message_id| ViewKey::Message {
                room_id: room_id.to_owned(),
                message_id,
            })
            .collect();
        Ok(Self::values_of(self.get_many(&keys).await?, |v| match v {
            ViewValue::Message(m) => Some(m),
            _ => None,
        }))
    }

    async fn emotions(&self, room_id: &str, limit: usize) -> Result<Vec<EmotionView>, StoreError> {
        let ids = self
            .range(self.index_key("e", room_id), None, None, true, limit)
            .await?;
        let keys: Vec<ViewKey> = ids
            .into_iter()
            .rev()
            .map(|message_id| ViewKey::Emotion {
                room_id: room_id.to_owned(),
                message_id,
            })
            .collect();
        Ok(Self::values_of(self.get_many(&keys).await?, |v| match v {
            ViewValue::Emotion(e) => Some(e),
            _ => None,
        }))
    }

    async fn activity(&self, room_id: &str, from_hour: i64, to_hour: i64) -> Result<Vec<ActivityView>, StoreError> {
        if from_hour >= to_hour {
            return Ok(Vec::new());
        }
        let hours: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(self.index_key("a", room_id))
            .arg(format!("[{}", hour_field(from_hour)))
            .arg(format!("({}", hour_field(to_hour)))
            .query_async(&mut self.pool.get())
            .await
            .map_err(storage)?;
        let keys: Vec<ViewKey> = hours
            .iter()
            .filter_map(|h| i64::from_str_radix(h, 16).ok())
            .map(|hour| ViewKey::Activity {
                room_id: room_id.to_owned(),
                hour,
            })
            .collect();
        Ok(Self::values_of(self.get_many(&keys).await?, |v| match v {
            ViewValue::Activity(a) => Some(a),
            _ => None,
        }))
    }
}

#[async_trait]
impl ViewStore for RedisViewStore {
    async fn apply(&self, batch: ViewBatch) -> Result<(), StoreError> {
        let mut inv = self.apply.key(self.positions_key());
        let fields: Vec<(Vec<u8>, u64)> = batch
            .positions
            .iter()
            .map(|(t, p, next)| (consumer_partition_key(&batch.consumer, *t, *p), *next))
            .collect();
        {
            let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            inv.arg(fields.len());
            for (field, _) in &fields {
                inv.arg(field.as_slice());
                // A position this store never read is taken as absent (a
                // fresh consumer); one it read as 0 may be absent too.
                match seen.get(field) {
                    Some(Some(0)) | None => inv.arg(""),
                    Some(Some(v)) => inv.arg(v.to_be_bytes().as_slice()),
                    Some(None) => {
                        return Err(storage(
                            "a previous batch failed: re-read the position before applying more",
                        ));
                    }
                };
            }
        }
        for (key, value) in &batch.changes {
            let table = self.table_key(key.table());
            match value {
                Some(v) => {
                    inv.arg("s")
                        .arg(table)
                        .arg(key.encode())
                        .arg(postcard::to_allocvec(v).map_err(storage)?);
                    for (zset, member) in self.indexes(key) {
                        inv.arg("z").arg(zset).arg(member);
                    }
                }
                None => {
                    inv.arg("d").arg(table).arg(key.encode());
                    for (zset, member) in self.indexes(key) {
                        inv.arg("r").arg(zset).arg(member);
                    }
                }
            }
        }
        for (field, next) in &fields {
            inv.arg("s")
                .arg(self.positions_key())
                .arg(field.as_slice())
                .arg(next.to_be_bytes().as_slice());
        }
        let r: Result<i64, _> = inv.invoke_async(&mut self.pool.get()).await;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(_) => {
                for (field, next) in fields {
                    seen.insert(field, Some(next));
                }
                Ok(())
            }
            Err(e) => {
                // The batch may or may not have landed: the caller must
                // re-read its positions before it applies anything more.
                for (field, _) in fields {
                    seen.insert(field, None);
                }
                Err(storage(e))
            }
        }
    }

    async fn position(&self, consumer: &str, topic: Topic, partition: u32) -> Result<u64, StoreError> {
        let field = consumer_partition_key(consumer, topic, partition);
        let mut cmd = redis::cmd("HGET");
        cmd.arg(self.positions_key()).arg(&field);
        let raw: Option<Vec<u8>> = self.pool.read(&cmd).await.map_err(storage)?;
        let v = raw
            .and_then(|r| <[u8; 8]>::try_from(r.as_slice()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(field, Some(v));
        Ok(v)
    }

    async fn clear(&self, consumer: &str) -> Result<(), StoreError> {
        let mut con = self.pool.get();
        let mut doomed = Vec::new();
        for t in TABLES.into_iter().filter(|t| table_owner(t) == consumer) {
            doomed.push(self.table_key(t));
        }
        let index_kinds: &[&str] = match consumer {
            CORE_VIEWS => {
                doomed.push(self.key("rooms"));
                &["m", "ur", "h", "e"]
            }
            ACTIVITY_VIEWS => &["a"],
            _ => &[],
        };
        for kind in index_kinds {
            doomed.extend(self.scan_keys(&self.index_key(kind, "*")).await?);
        }
        for chunk in doomed.chunks(500) {
            let _: i64 = redis::cmd("UNLINK")
                .arg(chunk)
                .query_async(&mut con)
                .await
                .map_err(storage)?;
        }
        let fields: Vec<Vec<u8>> = self
            .sorted_hash(self.positions_key())
            .await?
            .into_iter()
            .map(|(f, _)| f)
            .filter(|f| f.starts_with(consumer.as_bytes()) && f.get(consumer.len()) == Some(&0))
            .collect();
        if !fields.is_empty() {
            let _: i64 = redis::cmd("HDEL")
                .arg(self.positions_key())
                .arg(&fields)
                .query_async(&mut con)
                .await
                .map_err(storage)?;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for f in fields {
            seen.insert(f, Some(0));
        }
        Ok(())
    }

    async fn bulk_load(&self, rows: BulkRows) -> Result<(), StoreError> {
        let all: Vec<u32> = (0..rows.len() as u32).collect();
        for chunk in all.chunks(INGEST_CHUNK) {
            let mut pipe = redis::pipe();
            for &i in chunk {
                let table = rows.table(i);
                let key = ViewKey::decode_write_once(table, rows.key(i))
                    .ok_or_else(|| storage(format!("bulk row {i} of {table} is not a write-once key")))?;
                pipe.cmd("HSET")
                    .arg(self.table_key(table))
                    .arg(rows.key(i))
                    .arg(rows.value(i))
                    .ignore();
                for (zset, member) in self.indexes(&key) {
                    pipe.cmd("ZADD").arg(zset).arg(0).arg(member).ignore();
                }
            }
            let () = pipe.query_async(&mut self.pool.get()).await.map_err(storage)?;
        }
        Ok(())
    }

    async fn set_rebuilding(&self, consumer: &str, on: bool) -> Result<(), StoreError> {
        let mut con = self.pool.get();
        let field = rebuilding_field(consumer);
        let _: i64 = if on {
            redis::cmd("HSET")
                .arg(self.positions_key())
                .arg(field)
                .arg(&[1u8][..])
                .query_async(&mut con)
                .await
        } else {
            redis::cmd("HDEL")
                .arg(self.positions_key())
                .arg(field)
                .query_async(&mut con)
                .await
        }
        .map_err(storage)?;
        Ok(())
    }

    async fn rebuilding(&self, consumer: &str) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("HEXISTS");
        cmd.arg(self.positions_key()).arg(rebuilding_field(consumer));
        self.pool.read(&cmd).await.map_err(storage)
    }

    async fn checksum_of(&self, consumer: &str) -> Result<String, StoreError> {
        let mut h = Sha256::new();
        let mut feed = |name: &str, rows: Vec<(Vec<u8>, Vec<u8>)>| {
            h.update((name.len() as u32).to_be_bytes());
            h.update(name.as_bytes());
            for (k, v) in rows {
                h.update((k.len() as u32).to_be_bytes());
                h.update(&k);
                h.update((v.len() as u32).to_be_bytes());
                h.update(&v);
            }
        };
        for t in TABLES.into_iter().filter(|t| table_owner(t) == consumer) {
            feed(t, self.sorted_hash(self.table_key(t)).await?);
        }
        let mut positions = self.sorted_hash(self.positions_key()).await?;
        positions.retain(|(f, _)| is_position_of(f, consumer));
        feed("positions", positions);
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }
}
