//! [`RedisDecisions`]: the decision feed across processes, on Redis pub/sub,
//! for deployments whose ingest and fan-out nodes share a view store with a
//! projector running elsewhere.
//!
//! The projector's `publish` and `applied` calls are queued and sent in
//! batches — one `PUBLISH` of a postcard-encoded batch per flush — on the
//! channel `{NS}:decisions`; the applied watermarks are also kept in the hash
//! `{NS}:applied`, which a process reads when it (re)subscribes so its
//! watermarks start where the projector is. Every process subscribes and
//! feeds what it hears into an in-process [`LocalDecisions`], which holds the
//! waiters; decisions nobody here waits for are dropped there. Connected
//! over the view store the process reads, its `wait_applied` also reads the
//! stored core position, so a watermark lost on the way delays a waiter by
//! a second at most ([`LocalDecisions::with_views`]).
//!
//! Pub/sub is at-most-once. A decision lost while a subscriber reconnects
//! leaves its ingest request waiting until its decision timeout (503): the
//! command is in the log and the fold decides it regardless; the client
//! retries with the same `client_msg_id`, which is idempotent.

use std::sync::Arc;
use std::time::Duration;

use emosation_core::ids::Topic;
use emosation_core::ports::{AppliedTicket, Decision, DecisionTicket, Decisions, ViewStore};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::warn;

use crate::OpenError;
use crate::local::LocalDecisions;
use crate::redis::conn::{RedisPool, RedisUrl, dropped, subscribe_forever};

/// Items sent per `PUBLISH` at most.
const FLUSH_MAX: usize = 4096;

#[derive(Debug, Serialize, Deserialize)]
enum Wire {
    Decision(i64, Decision),
    Applied(Topic, u32, u64),
}

pub struct RedisDecisions {
    local: Arc<LocalDecisions>,
    out: mpsc::UnboundedSender<Wire>,
}

impl std::fmt::Debug for RedisDecisions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDecisions").finish_non_exhaustive()
    }
}

fn applied_field(topic: Topic, partition: u32) -> String {
    format!("{}/{partition}", topic.name())
}

fn parse_applied_field(f: &str) -> Option<(Topic, u32)> {
    let (t, p) = f.rsplit_once('/')?;
    let topic = Topic::ALL.into_iter().find(|x| x.name() == t)?;
    Some((topic, p.parse().ok()?))
}

impl RedisDecisions {
    /// Subscribes (before returning, so no decision published afterwards is
    /// missed) and starts the publisher and subscriber tasks. `views`, if
    /// given, is the view store whose core positions answer waits too.
    pub async fn connect(url: &str, views: Option<Arc<dyn ViewStore>>) -> Result<Self, OpenError> {
        let url = RedisUrl::parse(url)?;
        let open = |e: redis::RedisError| OpenError::Open {
            what: "redis decisions",
            path: url.client_url.clone(),
            reason: e.to_string(),
        };
        let pool = RedisPool::connect(&url).await?;
        let client = redis::Client::open(url.client_url.as_str()).map_err(open)?;
        let channel = format!("{{{}}}:decisions", url.ns);
        let applied_key = format!("{{{}}}:applied", url.ns);
        let local = Arc::new(match views {
            Some(views) => LocalDecisions::with_views(views),
            None => LocalDecisions::new(),
        });

        let on_message = {
            let local = Arc::clone(&local);
            move |msg: redis::Msg| feed(&local, msg)
        };
        // After a reconnect, catch up on the watermarks (decisions missed
        // meanwhile are lost: see the module docs).
        let on_resubscribe = {
            let (pool, key, local) = (pool.clone(), applied_key.clone(), Arc::clone(&local));
            move || {
                let (pool, key, local) = (pool.clone(), key.clone(), Arc::clone(&local));
                async move { load_applied(&pool, &key, &local).await }
            }
        };
        subscribe_forever(client, channel.clone(), on_message, on_resubscribe)
            .await
            .map_err(open)?;
        load_applied(&pool, &applied_key, &local).await;

        let (out, rx) = mpsc::unbounded_channel();
        tokio::spawn(publisher(rx, pool, channel, applied_key));
        Ok(RedisDecisions { local, out })
    }
}

async fn load_applied(pool: &RedisPool, key: &str, local: &LocalDecisions) {
    let mut cmd = redis::cmd("HGETALL");
    cmd.arg(key);
    let got: Result<Vec<(String, u64)>, _> = pool.read(&cmd).await;
    match got {
        Ok(fields) => {
            for (f, next) in fields {
                if let Some((topic, partition)) = parse_applied_field(&f) {
                    local.applied(topic, partition, next);
                }
            }
        }
        Err(e) => warn!(error = %e, "cannot read the applied watermarks"),
    }
}

/// Feeds one published batch into this process's waiters.
fn feed(local: &LocalDecisions, msg: redis::Msg) {
    let payload: Vec<u8> = match msg.get_payload() {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "unreadable decision message");
            return;
        }
    };
    match postcard::from_bytes::<Vec<Wire>>(&payload) {
        Ok(items) => {
            for item in items {
                match item {
                    Wire::Decision(id, d) => local.publish(id, d),
                    Wire::Applied(t, p, next) => local.applied(t, p, next),
                }
            }
        }
        Err(e) => warn!(error = %e, "undecodable decision batch"),
    }
}

async fn publisher(mut rx: mpsc::UnboundedReceiver<Wire>, pool: RedisPool, channel: String, applied_key: String) {
    let mut batch = Vec::with_capacity(FLUSH_MAX);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < FLUSH_MAX {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let payload = match postcard::to_allocvec(&batch) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot encode decisions");
                batch.clear();
                continue;
            }
        };
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH").arg(&channel).arg(payload).ignore();
        for w in &batch {
            if let Wire::Applied(t, p, next) = w {
                pipe.cmd("HSET")
                    .arg(&applied_key)
                    .arg(applied_field(*t, *p))
                    .arg(*next)
                    .ignore();
            }
        }
        // A failed publish loses these decisions for remote waiters (see the
        // module docs); retrying later would only deliver them after their
        // waiters have timed out.
        let mut con = pool.get();
        let mut r: Result<(), _> = pipe.query_async(&mut con).await;
        if let Err(e) = &r
            && dropped(e)
        {
            // Once more, after the manager reconnected (a restarted Redis).
            tokio::time::sleep(Duration::from_millis(50)).await;
            r = pipe.query_async(&mut con).await;
        }
        if let Err(e) = r {
            warn!(error = %e, items = batch.len(), "cannot publish decisions");
        }
        batch.clear();
    }
}

impl Decisions for RedisDecisions {
    fn expect(&self, request_id: i64) -> DecisionTicket {
        self.local.expect(request_id)
    }

    fn publish(&self, request_id: i64, decision: Decision) {
        // Waiters in this process hear it at once; others through Redis.
        self.local.publish(request_id, decision.clone());
        let _ = self.out.send(Wire::Decision(request_id, decision));
    }

    fn applied(&self, topic: Topic, partition: u32, next_offset: u64) {
        self.local.applied(topic, partition, next_offset);
        let _ = self.out.send(Wire::Applied(topic, partition, next_offset));
    }

    fn wait_applied(&self, topic: Topic, partition: u32, offset: u64, timeout: Duration) -> AppliedTicket {
        self.local.wait_applied(topic, partition, offset, timeout)
    }

    /// Kept in this process only: readers elsewhere ask their views.
    fn folded(&self, topic: Topic, partition: u32, from: u64, next: u64, effective: &[u64]) {
        self.local.folded(topic, partition, from, next, effective);
    }

    fn took_effect(&self, topic: Topic, partition: u32, offsets: &[u64]) -> Option<Vec<bool>> {
        self.local.took_effect(topic, partition, offsets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_fields_round_trip() {
        for t in Topic::ALL {
            assert_eq!(parse_applied_field(&applied_field(t, 7)), Some((t, 7)));
        }
        assert_eq!(parse_applied_field("nope/1"), None);
    }
}
