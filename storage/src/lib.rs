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
//! | blobs (attachments) | [`embedded::blobs`]: [`FsBlobStore`], files under the data dir | [`s3`]: [`S3BlobStore`], `object_store` (`s3://`) |
//!
//! [`redis::conn`] is the connection layer the Redis adapters share.
//! [`open_log`], [`open_views`], [`open_presence`], [`open_rate_limiter`]
//! and [`open_decisions`] map a URL to its adapter.
//!
//! # Features
//! The heavy clients sit behind default-on features: `kafka` (rdkafka),
//! `redis`, `scylla` (with rustls) and `s3` (object_store). The embedded and in-process engines
//! are always built, so `--no-default-features` compiles only them (all a
//! single-process deployment needs). A URL naming an engine the build left
//! out opens as [`OpenError::Unsupported`] ("built without the kafka
//! feature"). A change here builds warning-free in every combination:
//! `cargo check -p emosation-storage --tests --no-default-features
//! [--features kafka|redis|scylla]` as well as the default build.

use std::path::PathBuf;
use std::sync::Arc;

use emosation_core::ids::Topology;
use emosation_core::ports::{BlobStore, Decisions, Log, Presence, RateLimiter, ViewStore};

pub mod embedded;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod local;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(feature = "scylla")]
pub mod scylla;

pub use embedded::{EmbeddedLog, EmbeddedViewStore, FsBlobStore};
#[cfg(feature = "kafka")]
pub use kafka::KafkaLog;
pub use local::{LocalDecisions, LocalPresence, LocalRateLimiter};
#[cfg(feature = "redis")]
pub use redis::{RedisDecisions, RedisPresence, RedisRateLimiter, RedisViewStore};
#[cfg(feature = "s3")]
pub use s3::S3BlobStore;
#[cfg(feature = "scylla")]
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

/// The answer for a URL this build cannot open (another scheme, or an
/// engine left out of the build).
fn left_out(what: &'static str, url: &str, reason: &'static str) -> OpenError {
    OpenError::Unsupported {
        what,
        url: url.to_owned(),
        reason,
    }
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
        #[cfg(feature = "kafka")]
        return Ok(Arc::new(KafkaLog::connect(url, topology).await?));
        #[cfg(not(feature = "kafka"))]
        return Err(left_out("log", url, "built without the kafka feature"));
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

/// Testing only: [`open_log`] on an embedded log whose writer fails, as on
/// a full disk, once `appends` more records have been appended
/// ([`EmbeddedLog::fail_after_appends`]).
#[doc(hidden)]
pub async fn open_log_failing_after(url: &str, topology: Topology, appends: u64) -> Result<Arc<dyn Log>, OpenError> {
    let path = embedded_path(url).ok_or_else(|| OpenError::Unsupported {
        what: "log with an injected fault",
        url: url.to_owned(),
        reason: "only an embedded log takes an injected fault",
    })?;
    let log = EmbeddedLog::open(&path, topology)?;
    log.fail_after_appends(appends);
    Ok(Arc::new(log))
}

/// Where a cache-side port (presence, decisions, rate limits) lives, by its
/// URL: in process when there is none, or on Redis. Refuses other schemes,
/// and `redis://` in a build without the redis feature.
fn cache_engine<'a>(what: &'static str, url: Option<&'a str>) -> Result<Option<&'a str>, OpenError> {
    match url {
        None => Ok(None),
        #[cfg(feature = "redis")]
        Some(u) if u.starts_with("redis://") => Ok(Some(u)),
        #[cfg(not(feature = "redis"))]
        Some(u) if u.starts_with("redis://") => Err(left_out(what, u, "built without the redis feature")),
        Some(u) => Err(left_out(
            what,
            u,
            "expected redis://HOST:PORT (or no URL for the in-process one)",
        )),
    }
}

/// Opens the blob store (attachments) named by `url`: files under `dir`
/// when `None` (or `embedded://PATH`), or `s3://BUCKET?endpoint=…` (see
/// [`s3`]).
pub fn open_blobs(url: Option<&str>, dir: &std::path::Path) -> Result<Arc<dyn BlobStore>, OpenError> {
    let fs = |path: &std::path::Path| {
        FsBlobStore::open(path)
            .map(|b| Arc::new(b) as Arc<dyn BlobStore>)
            .map_err(|e| OpenError::Open {
                what: "blob store",
                path: path.display().to_string(),
                reason: e.to_string(),
            })
    };
    match url {
        None => fs(dir),
        Some(u) if u.starts_with("s3://") => {
            #[cfg(feature = "s3")]
            return Ok(Arc::new(S3BlobStore::connect(u)?));
            #[cfg(not(feature = "s3"))]
            return Err(left_out("blob store", u, "built without the s3 feature"));
        }
        Some(u) => match embedded_path(u) {
            Some(p) => fs(&p),
            None => Err(left_out(
                "blob store",
                u,
                "expected s3://BUCKET?endpoint=… or embedded://PATH",
            )),
        },
    }
}

/// Opens the presence port named by `url`: in-process when `None`, or
/// `redis://HOST:PORT` (see [`redis::presence`]).
pub async fn open_presence(url: Option<&str>) -> Result<Arc<dyn Presence>, OpenError> {
    match cache_engine("cache", url)? {
        None => Ok(Arc::new(LocalPresence::new())),
        #[cfg(feature = "redis")]
        Some(u) => Ok(Arc::new(RedisPresence::connect(u).await?)),
        #[cfg(not(feature = "redis"))]
        Some(u) => Err(left_out("cache", u, "built without the redis feature")),
    }
}

/// Opens the decisions feed named by `url`: in-process when `None`, or
/// across processes on `redis://HOST:PORT` (see [`redis::decisions`]).
/// Either way it is opened over `views`, the view store this process reads,
/// so that waiting for the projector's applied position also sees a
/// projector in another process ([`LocalDecisions::with_views`]).
pub async fn open_decisions(url: Option<&str>, views: Arc<dyn ViewStore>) -> Result<Arc<dyn Decisions>, OpenError> {
    match cache_engine("decisions", url)? {
        None => Ok(Arc::new(LocalDecisions::with_views(views))),
        #[cfg(feature = "redis")]
        Some(u) => Ok(Arc::new(RedisDecisions::connect(u, Some(views)).await?)),
        #[cfg(not(feature = "redis"))]
        Some(u) => Err(left_out("cache", u, "built without the redis feature")),
    }
}

/// Opens the rate limiter named by `url`: in-process when `None`, or
/// `redis://HOST:PORT` (see [`redis::rate_limiter`]).
pub async fn open_rate_limiter(url: Option<&str>) -> Result<Arc<dyn RateLimiter>, OpenError> {
    match cache_engine("cache", url)? {
        None => Ok(Arc::new(LocalRateLimiter::new())),
        #[cfg(feature = "redis")]
        Some(u) => Ok(Arc::new(RedisRateLimiter::connect(u).await?)),
        #[cfg(not(feature = "redis"))]
        Some(u) => Err(left_out("cache", u, "built without the redis feature")),
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
        #[cfg(feature = "redis")]
        return Ok(Arc::new(RedisViewStore::connect(url).await?));
        #[cfg(not(feature = "redis"))]
        return Err(left_out("view store", url, "built without the redis feature"));
    }
    if url.starts_with("scylla://") {
        #[cfg(feature = "scylla")]
        {
            let store = ScyllaViewStore::connect(url).await.map_err(|e| OpenError::Open {
                what: "scylla view store",
                path: url.to_owned(),
                reason: e.to_string(),
            })?;
            return Ok(Arc::new(store));
        }
        #[cfg(not(feature = "scylla"))]
        return Err(left_out("view store", url, "built without the scylla feature"));
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

#[cfg(test)]
mod tests {
    /// The reason a URL was refused, or `None` if it opened.
    #[cfg(not(all(feature = "kafka", feature = "redis", feature = "scylla")))]
    fn refusal<T>(r: Result<T, super::OpenError>) -> Option<String> {
        r.err().map(|e| e.to_string())
    }

    #[cfg(not(feature = "kafka"))]
    #[tokio::test]
    async fn a_kafka_url_names_the_missing_feature() {
        let r = super::open_log("kafka://127.0.0.1:9092", emosation_core::ids::Topology::default()).await;
        assert!(refusal(r).is_some_and(|e| e.contains("built without the kafka feature")));
    }

    #[cfg(not(feature = "redis"))]
    #[tokio::test]
    async fn a_redis_url_names_the_missing_feature() {
        let url = "redis://127.0.0.1:6379";
        for e in [
            refusal(super::open_views(url).await),
            refusal(super::open_presence(Some(url)).await),
            refusal(super::open_rate_limiter(Some(url)).await),
        ] {
            assert!(e.is_some_and(|e| e.contains("built without the redis feature")));
        }
    }

    #[cfg(not(feature = "scylla"))]
    #[tokio::test]
    async fn a_scylla_url_names_the_missing_feature() {
        let r = super::open_views("scylla://127.0.0.1:9042").await;
        assert!(refusal(r).is_some_and(|e| e.contains("built without the scylla feature")));
    }
}
