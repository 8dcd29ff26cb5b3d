//! [`RedisPresence`]: the presence port on Redis, shared by every fan-out node.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{NS}:s:USER` | zset | the user's connections `NODE/CONN/SESSION`, scored by registration order |
//! | `{NS}:c:NODE/CONN/SESSION` | string, expiring | the connection is alive (its owner refreshes it) |
//! | `{NS}:seq` | counter | registration order |
//! | `{NS}:online` | zset | users with a connection, scored by when its liveness expires (ms, Redis's clock): `online_count` |
//! | channel `{NS}:kick:NODE` | pub/sub | `CONN REASON`: connections the node must close, and why |
//! | `{NS}:r:ROOM` | zset | users with the room open, scored by their latest entry's expiry (ms) |
//! | `{NS}:ru:ROOM:USER` | zset | that user's connections with the room open, scored by expiry (ms) |
//! | `{NS}:rd:ROOM` | set | users whose departure from the room is pending (the grace period) |
//! | channel `{NS}:signals` | pub/sub | [`RoomSignal`]s (typing, arrivals, departures) for every node |
//!
//! `register` is one Lua script (prune expired connections, add the new one,
//! evict beyond `max`), so concurrent registrations of a user on any nodes
//! are serialised by Redis and every eviction is returned to exactly one
//! caller. A connection whose node died simply expires. A node that missed a
//! kick message (pub/sub is at-most-once) still learns it was evicted on its
//! next `refresh`, which returns `false`.
//!
//! Room presence is four Lua scripts (enter, exit, settle, sweep), each
//! atomic, so a user entering on one node while leaving on another gets one
//! outcome. Expiries are scores (the caller's clock, in ms): nodes' clocks
//! need only agree within a fraction of the entry TTL (a minute). Every key
//! expires on its own a TTL after its last write, so a room nobody closes
//! properly (all its nodes died) leaves nothing behind. Signals go over one
//! channel that every node reads, each delivering those of the rooms it has
//! subscribers in: a deployment with hundreds of nodes would shard it by
//! room.

use std::time::Duration;

use async_trait::async_trait;
use emosation_core::ports::{ConnRef, KickReason, KickSink, Presence, PresenceError, RoomSignal, SignalSink};
use tracing::warn;

use crate::OpenError;
use crate::redis::conn::{RedisPool, RedisUrl, subscribe_forever};

const REGISTER: &str = r#"
-- ARGV: prefix, user, member, max, ttl_ms
local p, user, member, max, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local z = p .. 's:' .. user
for _, m in ipairs(redis.call('ZRANGE', z, 0, -1)) do
  if m ~= member and redis.call('EXISTS', p .. 'c:' .. m) == 0 then redis.call('ZREM', z, m) end
end
local seq = redis.call('INCR', p .. 'seq')
redis.call('ZADD', z, seq, member)
redis.call('SET', p .. 'c:' .. member, user, 'PX', ttl)
redis.call('PEXPIRE', z, ttl)
local t = redis.call('TIME')
redis.call('ZADD', p .. 'online', 'GT', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + ttl, user)
local n = redis.call('ZCARD', z)
local evicted = {}
if n > max then
  evicted = redis.call('ZRANGE', z, 0, n - max - 1)
  redis.call('ZREMRANGEBYRANK', z, 0, n - max - 1)
  for _, m in ipairs(evicted) do redis.call('DEL', p .. 'c:' .. m) end
end
return evicted
"#;

const REFRESH: &str = r#"
-- ARGV: prefix, user, member, ttl_ms
local p, user, member, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local z = p .. 's:' .. user
if redis.call('ZSCORE', z, member) == false then return 0 end
redis.call('SET', p .. 'c:' .. member, user, 'PX', ttl)
redis.call('PEXPIRE', z, ttl)
local t = redis.call('TIME')
local untl = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + ttl
redis.call('ZADD', p .. 'online', 'GT', untl, user)
return 1
"#;

const UNREGISTER: &str = r#"
-- ARGV: prefix, user, member
local p, user, member = ARGV[1], ARGV[2], ARGV[3]
local z = p .. 's:' .. user
redis.call('ZREM', z, member)
redis.call('DEL', p .. 'c:' .. member)
for _, m in ipairs(redis.call('ZRANGE', z, 0, -1)) do
  if redis.call('EXISTS', p .. 'c:' .. m) == 1 then return 0 end
end
redis.call('ZREM', p .. 'online', user)
return 1
"#;

const ONLINE_COUNT: &str = r#"
-- ARGV: prefix
local p = ARGV[1]
local t = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', p .. 'online', '-inf', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
return redis.call('ZCARD', p .. 'online')
"#;

const ONLINE: &str = r#"
-- ARGV: prefix, users...
local p = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local live = 0
  for _, m in ipairs(redis.call('ZRANGE', p .. 's:' .. ARGV[i], 0, -1)) do
    if redis.call('EXISTS', p .. 'c:' .. m) == 1 then live = 1; break end
  end
  out[#out + 1] = live
end
return out
"#;

fn err(e: impl std::fmt::Display) -> PresenceError {
    PresenceError::Storage(format!("redis: {e}"))
}

fn member(conn: &ConnRef) -> String {
    format!("{}/{}/{}", conn.node, conn.conn, conn.session)
}

/// `NODE/CONN/SESSION`; a node name may hold `/`, a connection id and a
/// session id do not.
fn parse_member(m: &str) -> Option<ConnRef> {
    let (rest, session) = m.rsplit_once('/')?;
    let (node, conn) = rest.rsplit_once('/')?;
    Some(ConnRef {
        node: node.to_owned(),
        conn: conn.parse().ok()?,
        session: session.to_owned(),
    })
}

const CONNECTIONS: &str = r#"
-- ARGV: prefix, user
local p, user = ARGV[1], ARGV[2]
local out = {}
for _, m in ipairs(redis.call('ZRANGE', p .. 's:' .. user, 0, -1)) do
  if redis.call('EXISTS', p .. 'c:' .. m) == 1 then out[#out + 1] = m end
end
return out
"#;

const ENTER_ROOM: &str = r#"
-- ARGV: prefix, room, user, member, now_ms, until_ms, key_ttl_ms
local p, room, user, m, now, untl, kttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local r, ru, rd = p .. 'r:' .. room, p .. 'ru:' .. room .. ':' .. user, p .. 'rd:' .. room
redis.call('ZREMRANGEBYSCORE', ru, '-inf', now)
redis.call('ZREM', ru, m)
local there = redis.call('ZCARD', ru) > 0
if redis.call('SREM', rd, user) == 1 then there = true end
redis.call('ZADD', ru, untl, m)
redis.call('ZADD', r, 'GT', untl, user)
for _, k in ipairs({r, ru, rd}) do redis.call('PEXPIRE', k, kttl) end
if there then return 0 else return 1 end
"#;

const REFRESH_ROOMS: &str = r#"
-- ARGV: prefix, user, member, until_ms, key_ttl_ms, rooms...
local p, user, m, untl, kttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
for i = 6, #ARGV do
  local r, ru = p .. 'r:' .. ARGV[i], p .. 'ru:' .. ARGV[i] .. ':' .. user
  if redis.call('ZSCORE', ru, m) then
    redis.call('ZADD', ru, untl, m)
    redis.call('ZADD', r, 'GT', untl, user)
    redis.call('PEXPIRE', ru, kttl)
    redis.call('PEXPIRE', r, kttl)
  end
end
return 1
"#;

const EXIT_ROOM: &str = r#"
-- ARGV: prefix, room, user, member, now_ms, key_ttl_ms
local p, room, user, m, now, kttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local r, ru, rd = p .. 'r:' .. room, p .. 'ru:' .. room .. ':' .. user, p .. 'rd:' .. room
if redis.call('ZREM', ru, m) == 0 then return 0 end
redis.call('ZREMRANGEBYSCORE', ru, '-inf', now)
local top = redis.call('ZRANGE', ru, -1, -1, 'WITHSCORES')
if #top > 0 then
  redis.call('ZADD', r, top[2], user)
  return 0
end
redis.call('ZREM', r, user)
redis.call('SADD', rd, user)
redis.call('PEXPIRE', rd, kttl)
return 1
"#;

const SETTLE_DEPARTURE: &str = r#"
-- ARGV: prefix, room, user, now_ms
local p, room, user, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local ru, rd = p .. 'ru:' .. room .. ':' .. user, p .. 'rd:' .. room
redis.call('ZREMRANGEBYSCORE', ru, '-inf', now)
if redis.call('ZCARD', ru) > 0 then return 0 end
return redis.call('SREM', rd, user)
"#;

const SWEEP_ROOM: &str = r#"
-- ARGV: prefix, room, now_ms
local p, room, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local r, rd = p .. 'r:' .. room, p .. 'rd:' .. room
local out = {}
for _, user in ipairs(redis.call('ZRANGEBYSCORE', r, '-inf', now)) do
  local ru = p .. 'ru:' .. room .. ':' .. user
  redis.call('ZREMRANGEBYSCORE', ru, '-inf', now)
  local top = redis.call('ZRANGE', ru, -1, -1, 'WITHSCORES')
  if #top > 0 then
    redis.call('ZADD', r, top[2], user)
  else
    redis.call('ZREM', r, user)
    if redis.call('SISMEMBER', rd, user) == 0 then out[#out + 1] = user end
  end
end
return out
"#;

pub struct RedisPresence {
    client: redis::Client,
    pool: RedisPool,
    prefix: String,
    register: redis::Script,
    refresh: redis::Script,
    online: redis::Script,
    unregister: redis::Script,
    online_count: redis::Script,
    connections: redis::Script,
    enter_room: redis::Script,
    refresh_rooms: redis::Script,
    exit_room: redis::Script,
    settle_departure: redis::Script,
    sweep_room: redis::Script,
}

/// Room keys outlive their last write by this much more than the entries'
/// own TTL (which the scores carry): long enough for a pending departure to
/// be settled, short enough to leave nothing behind.
const ROOM_KEY_SLACK: Duration = Duration::from_secs(60);

fn now_ms() -> u64 {
    emosation_core::time::now_ms().max(0) as u64
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence").field("prefix", &self.prefix).finish()
    }
}

impl RedisPresence {
    /// `redis://HOST:PORT[/DB][?ns=NAME&pool=N]`.
    pub async fn connect(url: &str) -> Result<Self, OpenError> {
        let url = RedisUrl::parse(url)?;
        let pool = RedisPool::connect(&url).await?;
        let client = redis::Client::open(url.client_url.as_str()).map_err(|e| OpenError::Open {
            what: "redis",
            path: url.client_url.clone(),
            reason: e.to_string(),
        })?;
        Ok(RedisPresence {
            client,
            pool,
            prefix: format!("{{{}}}:", url.ns),
            register: redis::Script::new(REGISTER),
            refresh: redis::Script::new(REFRESH),
            online: redis::Script::new(ONLINE),
            unregister: redis::Script::new(UNREGISTER),
            online_count: redis::Script::new(ONLINE_COUNT),
            connections: redis::Script::new(CONNECTIONS),
            enter_room: redis::Script::new(ENTER_ROOM),
            refresh_rooms: redis::Script::new(REFRESH_ROOMS),
            exit_room: redis::Script::new(EXIT_ROOM),
            settle_departure: redis::Script::new(SETTLE_DEPARTURE),
            sweep_room: redis::Script::new(SWEEP_ROOM),
        })
    }

    fn kick_channel(&self, node: &str) -> String {
        format!("{}kick:{node}", self.prefix)
    }

    fn signal_channel(&self) -> String {
        format!("{}signals", self.prefix)
    }
}

#[async_trait]
impl Presence for RedisPresence {
    async fn register(
        &self,
        user_id: &str,
        conn: &ConnRef,
        max: usize,
        ttl: Duration,
    ) -> Result<Vec<ConnRef>, PresenceError> {
        let evicted: Vec<String> = self
            .register
            .arg(&self.prefix)
            .arg(user_id)
            .arg(member(conn))
            .arg(max.max(1))
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut self.pool.get())
            .await
            .map_err(err)?;
        Ok(evicted.iter().filter_map(|m| parse_member(m)).collect())
    }

    async fn refresh(&self, user_id: &str, conn: &ConnRef, ttl: Duration) -> Result<bool, PresenceError> {
        let live: i64 = self
            .refresh
            .arg(&self.prefix)
            .arg(user_id)
            .arg(member(conn))
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut self.pool.get())
            .await
            .map_err(err)?;
        Ok(live == 1)
    }

    async fn unregister(&self, user_id: &str, conn: &ConnRef) -> Result<(), PresenceError> {
        let _: i64 = self
            .unregister
            .arg(&self.prefix)
            .arg(user_id)
            .arg(member(conn))
            .invoke_async(&mut self.pool.get())
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn online_count(&self) -> Result<u64, PresenceError> {
        let n: u64 = self
            .online_count
            .arg(&self.prefix)
            .invoke_async(&mut self.pool.get())
            .await
            .map_err(err)?;
        Ok(n)
    }

    async fn online(&self, user_ids: &[String]) -> Result<Vec<bool>, PresenceError> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.online.arg(&self.prefix);
        for u in user_ids {
            inv.arg(u);
        }
        let flags: Vec<i64> = inv.invoke_async(&mut self.pool.get()).await.map_err(err)?;
        Ok(flags.into_iter().map(|f| f == 1).collect())
    }

    async fn connections(&self, user_id: &str) -> Result<Vec<ConnRef>, PresenceError> {
        let members: Vec<String> = self
            .connections
            .arg(&self.prefix)
            .arg(user_id)
            .invoke_async(&mut self.pool.get())
            .await
            .map_err(err)?;
        Ok(members.iter().filter_map(|m| parse_member(m)).collect())
    }

    async fn kick(&self, conn: &ConnRef, reason: KickReason) -> Result<(), PresenceError> {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(self.kick_channel(&conn.node))
            .arg(format!("{} {}", conn.conn, reason.as_str()))
            .query_async(&mut self.pool.get())
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn on_kicks(&self, node: &str, sink: KickSink) -> Result<(), PresenceError> {
        let on_message = move |msg: redis::Msg| {
            let order = msg.get_payload::<String>().ok();
            match order.as_deref().and_then(parse_kick) {
                Some((conn, reason)) => sink(conn, reason),
                None => warn!(order = ?order, "unreadable kick order"),
            }
        };
        // A kick missed while Redis was away is caught by the next refresh.
        subscribe_forever(self.client.clone(), self.kick_channel(node), on_message, || async {})
            .await
            .map_err(err)
    }

    async fn enter_room(
        &self,
        room_id: &str,
        user_id: &str,
        conn: &ConnRef,
        ttl: Duration,
    ) -> Result<bool, PresenceError> {
        let now = now_ms();
        let arrived: i64 = self
            .enter_room
            .arg(&self.prefix)
            .arg(room_id)
            .arg(user_id)
            .arg(member(conn))
            .arg(now)
            .arg(now + ttl.as_millis() as u64)
            .arg((ttl + ROOM_KEY_SLACK).as_millis() as u64)
            .invoke_async(&mut self.pool.get())
            .await
            .map_err(err)?;
        Ok(arrived == 1)
    }

    async fn refresh_rooms(
        &self,
        conn: &ConnRef,
        user_id: &str,
        rooms: &[String],
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        if rooms.is_empty() {
            return Ok(());
        }
        let mut inv = self.refresh_rooms.arg(&self.prefix);
        inv.arg(user_id)
            .arg(member(conn))
            .arg(now_ms() + ttl.as_millis() as u64)
            .arg((ttl + ROOM_KEY_SLACK).as_millis() as u64);
        for r in rooms {
            inv.arg(r);
        }
        let _: i64 = inv.invoke_async(&mut self.pool.get()).await.map_err(err)?;
        Ok(())
    }

    async fn exit_room(&self, room_id: &str, user_id: &str, conn: &ConnRef) -> Result<bool, PresenceError> {
        let last: i64 = self
            .exit_room
            .arg(&self.prefix)
            .arg(room_id)
            .arg(user_id)
            .arg(member(conn))
            .arg(now_ms())
            .arg(ROOM_KEY_SLACK.as_millis() as u64)
            .invoke_async(&mut self.pool.get())
            .await
            .map_err(err)?;
        Ok(last == 1)
    }

    async fn settle_departure(&self, room_id: &str, user_id: &str) -> Result<bool, PresenceError> {
        let gone: i64 = self
            .settle_departure
            .arg(&self.prefix)
            .arg(room_id)
            .arg(user_id)
            .arg(now_ms())
            .invoke_async(&mut self.pool.get())
            .await
            .map_err(err)?;
        Ok(gone == 1)
    }

    async fn sweep_room(&self, room_id: &str) -> Result<Vec<String>, PresenceError> {
        self.sweep_room
            .arg(&self.prefix)
            .arg(room_id)
            .arg(now_ms())
            .invoke_async(&mut self.pool.get())
            .await
            .map_err(err)
    }

    async fn here(&self, room_id: &str) -> Result<Vec<String>, PresenceError> {
        let mut q = redis::cmd("ZRANGEBYSCORE");
        q.arg(format!("{}r:{room_id}", self.prefix))
            .arg(format!("({}", now_ms()))
            .arg("+inf");
        let mut users: Vec<String> = self.pool.read(&q).await.map_err(err)?;
        users.sort();
        Ok(users)
    }

    async fn signal(&self, signal: &RoomSignal) -> Result<(), PresenceError> {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(self.signal_channel())
            .arg(signal.encode())
            .query_async(&mut self.pool.get())
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn on_signals(&self, _node: &str, sink: SignalSink) -> Result<(), PresenceError> {
        let on_message = move |msg: redis::Msg| {
            let line = msg.get_payload::<String>().ok();
            match line.as_deref().and_then(RoomSignal::decode) {
                Some(signal) => sink(signal),
                None => warn!(signal = ?line, "unreadable room signal"),
            }
        };
        // Signals missed while Redis was away are lost (they are notices;
        // clients resync presence with `GET …/presence`).
        subscribe_forever(self.client.clone(), self.signal_channel(), on_message, || async {})
            .await
            .map_err(err)
    }
}

/// A kick order: `CONN REASON`.
fn parse_kick(order: &str) -> Option<(u64, KickReason)> {
    let (conn, reason) = order.split_once(' ')?;
    Some((conn.parse().ok()?, KickReason::parse(reason)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_and_kick_orders_round_trip() {
        let c = ConnRef {
            node: "n-1/x".into(),
            conn: 42,
            session: "0123abcd".into(),
        };
        assert_eq!(parse_member(&member(&c)), Some(c));
        assert_eq!(parse_member("nonsense"), None);
        assert_eq!(parse_member("node/notanumber/s"), None);
        for r in KickReason::ALL {
            assert_eq!(parse_kick(&format!("7 {}", r.as_str())), Some((7, r)));
        }
        assert_eq!(parse_kick("7"), None);
        assert_eq!(parse_kick("7 nonsense"), None);
    }
}
