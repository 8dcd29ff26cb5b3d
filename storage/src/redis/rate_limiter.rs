//! [`RedisRateLimiter`]: token buckets on Redis, shared by every node.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{NS}:b:BUCKET` | hash, expiring | tokens and last refill (ms, Redis's clock) |
//!
//! `take` is one Lua script, so concurrent takes on a bucket from any nodes
//! are serialised by Redis. A bucket expires once it would have refilled
//! (plus a second), which forgets it as the port allows.

use async_trait::async_trait;
use emosation_core::ports::{RateLimitError, RateLimiter};

use crate::OpenError;
use crate::redis::conn::{RedisPool, RedisUrl};

const TAKE: &str = r#"
-- ARGV: key, rate, burst
local key, rate, burst = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', key, 'tokens', 'at')
local tokens, at = tonumber(b[1]), tonumber(b[2])
if tokens == nil then tokens, at = burst, now end
tokens = math.min(burst, tokens + (now - at) * rate / 1000)
local ok = 0
if tokens >= 1 then tokens = tokens - 1; ok = 1 end
redis.call('HSET', key, 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 1000)
return ok
"#;

pub struct RedisRateLimiter {
    pool: RedisPool,
    prefix: String,
    take: redis::Script,
}

impl std::fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisRateLimiter {
    /// `redis://HOST:PORT[/DB][?ns=NAME&pool=N]`.
    pub async fn connect(url: &str) -> Result<Self, OpenError> {
        let url = RedisUrl::parse(url)?;
        Ok(RedisRateLimiter {
            pool: RedisPool::connect(&url).await?,
            prefix: format!("{{{}}}:", url.ns),
            take: redis::Script::new(TAKE),
        })
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn take(&self, bucket: &str, rate: f64, burst: u32) -> Result<bool, RateLimitError> {
        if rate <= 0.0 || rate.is_nan() {
            return Ok(true);
        }
        let ok: i64 = self
            .take
            .arg(format!("{}b:{bucket}", self.prefix))
            .arg(rate)
            .arg(burst.max(1))
            .invoke_async(&mut self.pool.get())
            .await
            .map_err(|e| RateLimitError::Storage(format!("redis: {e}")))?;
        Ok(ok == 1)
    }
}
