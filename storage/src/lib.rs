//! Adapters for the ports of `emosation-core`, picked by URL scheme.
//!
//! # Layout
//! One module per engine; each holds that engine's adapters.
//!
//! | port | embedded (default) | real engine |
//! |---|---|---|
//! | log | [`embedded::log`]: [`EmbeddedLog`], fjall, group commit | [`kafka::log`]: [`KafkaLog`], rdkafka (`kafka://`) |
//! | views | [`embedded::views`]: [`EmbeddedViewStore`], fjall | [`redis::views`]: [`RedisViewStore`] (`redis://`); [`scylla::views`]: [`ScyllaViewStore`] (`scylla://`) |
//! | presence | [`local::presence`]: [`LocalPresence`], in process | [`redis::presence`]: [`RedisPresence`] (`redis://`) |
//! | rate limits | [`local::rate_limiter`]: [`LocalRateLimiter`], in process | [`redis::rate_limiter`]: [`RedisRateLimiter`] (`redis://`) |
//! | decisions | [`local::decisions`]: [`LocalDecisions`], in process | [`redis::decisions`]: [`RedisDecisions`], pub/sub (`redis://`) |
//!
//! [`redis::conn`] is the connection layer the Redis adapters share.
//! [`open_log`], [`open_views`], [`open_presence`] and [`open_rate_limiter`]
//! map a URL to its adapter.

use std::path::PathBuf;
use std::sync::Arc;

use emosation_core::ids::Topology;
use emosation_core::ports::{Log, Presence, RateLimiter, ViewStore};

pub mod embedded;
pub mod kafka;
pub mod local;
pub mod redis;
pub mod scylla;

pub use embedded::{EmbeddedLog, EmbeddedViewStore};
pub use kafka::KafkaLog;
pub use local::{LocalDecisions, LocalPresence, LocalRateLimiter};
pub use redis::{RedisDecisions, RedisPresence, RedisRateLimiter, RedisViewStore};
pub use scylla::{ScyllaConfig, ScyllaViewStore};

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("unsupported {what} URL {url:?}: {reason}")]
    Unsupported {
        what: &'static str,
        url: String,
        reason: &'static str,
    },
    #[error("cannot open {what} at {path}: {reason}")]
    Open {
        what: &'static str,
        path: String,
        reason: String,
    },
}

/// Where a consumer's position in a partition is kept, in every adapter
/// (the log's committed offsets, each view store's positions):
/// `consumer \0 topic \0 partition (u32, big-endian)`.
pub(crate) fn consumer_partition_key(consumer: &str, topic: emosation_core::ids::Topic, partition: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(consumer.len() + topic.name().len() + 6);
    k.extend_from_slice(consumer.as_bytes());
    k.push(0);
    k.extend_from_slice(topic.name().as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// Splits `embedded://PATH` (or a bare path) into the path; `None` for other schemes.
fn embedded_path(url: &str) -> Option<PathBuf> {
    if let Some(rest) = url.strip_prefix("embedded://") {
        return Some(PathBuf::from(rest));
    }
    if url.contains("://") {
        None
    } else {
        Some(PathBuf::from(url))
    }
}

/// Opens the log named by `url`: `embedded://PATH` (or a bare path) or
/// `kafka://HOST:PORT,…` (see [`kafka::log`]). `topology` gives the partition
/// counts of topics this call creates; existing topics keep theirs.
pub async fn open_log(url: &str, topology: Topology) -> Result<Arc<dyn Log>, OpenError> {
    if url.starts_with("kafka://") {
        return Ok(Arc::new(KafkaLog::connect(url, topology).await?));
    }
    match embedded_path(url) {
        Some(path) => Ok(Arc::new(EmbeddedLog::open(&path, topology)?)),
        None => Err(OpenError::Unsupported {
            what: "log",
            url: url.to_owned(),
            reason: "expected embedded://PATH or kafka://HOST:PORT",
        }),
    }
}

/// Opens the presence port named by `url`: in-process when `None`, or
/// `redis://HOST:PORT` (see [`redis::presence`]).
pub async fn open_presence(url: Option<&str>) -> Result<Arc<dyn Presence>, OpenError> {
    match url {
        None => Ok(Arc::new(LocalPresence::new())),
        Some(u) if u.starts_with("redis://") => Ok(Arc::new(RedisPresence::connect(u).await?)),
        Some(u) => Err(OpenError::Unsupported {
            what: "cache",
            url: u.to_owned(),
            reason: "expected redis://HOST:PORT (or no cache URL for the in-process one)",
        }),
    }
}

/// Opens the rate limiter named by `url`: in-process when `None`, or
/// `redis://HOST:PORT` (see [`redis::rate_limiter`]).
pub async fn open_rate_limiter(url: Option<&str>) -> Result<Arc<dyn RateLimiter>, OpenError> {
    match url {
        None => Ok(Arc::new(LocalRateLimiter::new())),
        Some(u) if u.starts_with("redis://") => Ok(Arc::new(RedisRateLimiter::connect(u).await?)),
        Some(u) => Err(OpenError::Unsupported {
            what: "cache",
            url: u.to_owned(),
            reason: "expected redis://HOST:PORT (or no cache URL for the in-process one)",
        }),
    }
}

/// Whether the view store at `url` is shared by processes (`redis://`,
/// `scylla://`) rather than private to one (`embedded://`, a bare path).
pub fn is_shared_view_store(url: &str) -> bool {
    url.starts_with("redis://") || url.starts_with("scylla://")
}

/// Opens the view store named by `url`: `embedded://PATH` (or a bare path)
/// `redis://HOST:PORT` (see [`redis::views`]) or `scylla://HOST:PORT,…`
/// (see [`scylla::views`]).
pub async fn open_views(url: &str) -> Result<Arc<dyn ViewStore>, OpenError> {
    if url.starts_with("redis://") {
        return Ok(Arc::new(RedisViewStore::connect(url).await?));
    }
    if url.starts_with("scylla://") {
        let store = ScyllaViewStore::connect(url).await.map_err(|e| OpenError::Open {
            what: "scylla view store",
            path: url.to_owned(),
            reason: e.to_string(),
        })?;
        return Ok(Arc::new(store));
    }
    match embedded_path(url) {
        Some(path) => Ok(Arc::new(EmbeddedViewStore::open(&path)?)),
        None => Err(OpenError::Unsupported {
            what: "view store",
            url: url.to_owned(),
            reason: "expected embedded://PATH, redis://HOST:PORT or scylla://HOST:PORT",
        }),
    }
}
