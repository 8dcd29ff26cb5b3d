//! [`RedisPresence`]: the presence port on Redis, shared by every fan-out node.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{NS}:s:USER` | zset | the user's connections `NODE/CONN/SESSION`, scored by registration order |
//! | `{NS}:c:NODE/CONN/SESSION` | string, expiring | the connection is alive (its owner refreshes it) |
//! | `{NS}:seq` | counter | registration order |
//! | channel `{NS}:kick:NODE` | pub/sub | `CONN REASON`: connections the node must close, and why |
//!
//! `register` is one Lua script (prune expired connections, add the new one,
//! evict beyond `max`), so concurrent registrations of a user on any nodes
//! are serialised by Redis and every eviction is returned to exactly one
//! caller. A connection whose node died simply expires. A node that missed a
//! kick message (pub/sub is at-most-once) still learns it was evicted on its
//! next `refresh`, which returns `false`.

use std::time::Duration;

use async_trait::async_trait;
use emosation_core::ports::{ConnRef, KickReason, KickSink, Presence, PresenceError};
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
return 1
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

pub struct RedisPresence {
    client: redis::Client,
    pool: RedisPool,
    prefix: String,
    register: redis::Script,
    refresh: redis::Script,
    online: redis::Script,
    connections: redis::Script,
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
            connections: redis::Script::new(CONNECTIONS),
        })
    }

    fn kick_channel(&self, node: &str) -> String {
        format!("{}kick:{node}", self.prefix)
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
        let m = member(conn);
        let () = redis::pipe()
            .atomic()
            .cmd("ZREM")
            .arg(format!("{}s:{user_id}", self.prefix))
            .arg(&m)
            .ignore()
            .cmd("DEL")
            .arg(format!("{}c:{m}", self.prefix))
            .ignore()
            .query_async(&mut self.pool.get())
            .await
            .map_err(err)?;
        Ok(())
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
