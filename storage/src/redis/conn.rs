//! What the Redis adapters share: the `redis://` URL, a small pool of
//! self-reconnecting connections, and a pub/sub subscription that survives
//! Redis restarts.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use tracing::{debug, warn};

use crate::OpenError;

/// Parsed `redis://` URL: the part the client takes, and ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub client_url: String,
    pub ns: String,
    pub pool: usize,
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<Self, OpenError> {
        let bad = |reason: &'static str| OpenError::Unsupported {
            what: "redis",
            url: url.to_owned(),
            reason,
        };
        if !url.starts_with("redis://") || url.len() == "redis://".len() {
            return Err(bad("expected redis://HOST:PORT[/DB]"));
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut parsed = RedisUrl {
            client_url: base.to_owned(),
            ns: "emosation".to_owned(),
            pool: 4,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("ns", v)) if !v.is_empty() && !v.contains(['{', '}']) => parsed.ns = v.to_owned(),
                Some(("pool", v)) => {
                    parsed.pool = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=64).contains(n))
                        .ok_or(bad("pool must be 1..=64"))?
                }
                _ => return Err(bad("options are ns=NAME (no braces) and pool=N")),
            }
        }
        Ok(parsed)
    }
}

/// A command or a pipeline: what [`RedisPool::read`] runs.
#[derive(Clone, Copy)]
pub(crate) enum Query<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
}

impl<'a> From<&'a redis::Cmd> for Query<'a> {
    fn from(c: &'a redis::Cmd) -> Self {
        Query::Cmd(c)
    }
}

impl<'a> From<&'a redis::Pipeline> for Query<'a> {
    fn from(p: &'a redis::Pipeline) -> Self {
        Query::Pipe(p)
    }
}

/// A small pool of multiplexed, self-reconnecting connections.
#[derive(Clone)]
pub(crate) struct RedisPool {
    conns: Arc<Vec<ConnectionManager>>,
    next: Arc<AtomicUsize>,
}

impl RedisPool {
    pub(crate) async fn connect(url: &RedisUrl) -> Result<Self, OpenError> {
        let open = |e: redis::RedisError| OpenError::Open {
            what: "redis",
            path: url.client_url.clone(),
            reason: e.to_string(),
        };
        let client = redis::Client::open(url.client_url.as_str()).map_err(open)?;
        let mut conns = Vec::with_capacity(url.pool);
        for _ in 0..url.pool {
            let cfg = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(5)))
                .set_response_timeout(Some(Duration::from_secs(10)))
                .set_number_of_retries(3);
            conns.push(
                ConnectionManager::new_with_config(client.clone(), cfg)
                    .await
                    .map_err(open)?,
            );
        }
        Ok(RedisPool {
            conns: Arc::new(conns),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Runs a read (a command or a pipeline); if its connection had dropped
    /// (a restarted Redis), runs it again on the same manager once it has
    /// reconnected. Only for reads and other commands safe to repeat.
    pub(crate) async fn read<'a, T: redis::FromRedisValue>(&self, q: impl Into<Query<'a>>) -> redis::RedisResult<T> {
        let q = q.into();
        let mut con = self.get();
        let mut tries = 0;
        loop {
            let r = match q {
                Query::Cmd(c) => c.query_async(&mut con).await,
                Query::Pipe(p) => p.query_async(&mut con).await,
            };
            match r {
                Err(e) if dropped(&e) && tries < 3 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20 * tries)).await;
                }
                r => return r,
            }
        }
    }

    pub(crate) fn get(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
    }
}

/// The connection broke (Redis restarted or went away) rather than the
/// command failing.
pub(crate) fn dropped(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// Subscribes to `channel` before returning (so nothing published after
/// this call is missed while Redis is up), then keeps the subscription for
/// the life of the process: when it breaks (Redis restarted), it subscribes
/// again and calls `on_resubscribe` so the caller can reload what it may
/// have missed. Pub/sub is at-most-once; messages sent meanwhile are lost.
pub(crate) async fn subscribe_forever<M, R, RF>(
    client: redis::Client,
    channel: String,
    mut on_message: M,
    mut on_resubscribe: R,
) -> redis::RedisResult<()>
where
    M: FnMut(redis::Msg) + Send + 'static,
    R: FnMut() -> RF + Send + 'static,
    RF: Future<Output = ()> + Send,
{
    let mut first = client.get_async_pubsub().await?;
    first.subscribe(&channel).await?;
    tokio::spawn(async move {
        let mut pubsub = Some(first);
        loop {
            let mut ps = match pubsub.take() {
                Some(ps) => ps,
                None => {
                    let sub = async {
                        let mut ps = client.get_async_pubsub().await?;
                        ps.subscribe(&channel).await?;
                        Ok::<_, redis::RedisError>(ps)
                    };
                    match sub.await {
                        Ok(ps) => {
                            on_resubscribe().await;
                            ps
                        }
                        Err(e) => {
                            debug!(%channel, error = %e, "subscription failed; retrying");
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            continue;
                        }
                    }
                }
            };
            let mut messages = ps.on_message();
            while let Some(msg) = messages.next().await {
                on_message(msg);
            }
            drop(messages);
            warn!(%channel, "subscription lost; resubscribing");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = RedisUrl::parse("redis://127.0.0.1:6379/2?ns=t1&pool=8").unwrap();
        assert_eq!(u.client_url, "redis://127.0.0.1:6379/2");
        assert_eq!((u.ns.as_str(), u.pool), ("t1", 8));
        let d = RedisUrl::parse("redis://h:1").unwrap();
        assert_eq!((d.ns.as_str(), d.pool), ("emosation", 4));
        for bad in [
            "redis://",
            "kafka://h:1",
            "redis://h:1?ns={x}",
            "redis://h:1?pool=0",
            "redis://h:1?x=1",
        ] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
