//! [`Fanout`]: this node — its settings, its open connections by id, and the
//! session policy shared with every other node through the `Presence` port:
//! a user's connections beyond the newest few are kicked, wherever they are,
//! and a session that ends (logout, account deletion, a revoked session)
//! ends on every node. A connection's sends pass its [`Live`] gate, which an
//! ending closes first: once a kick has been applied here, no send of the
//! connection is appended any more.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use emosation_core::ports::{ConnRef, KickReason, Presence, PresenceError};
use emosation_ingest::Ingest;
use tracing::warn;

use crate::feed::Feed;
use crate::protocol;
use crate::socket::ConnHandle;

/// Fan-out settings.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    /// Connections a user may hold at once; a newer one kicks the oldest.
    pub sessions_per_user: usize,
    /// Frames queued per socket before it is closed as too slow (1013).
    pub queue_frames: usize,
    /// Server pings this often.
    pub ping_interval: Duration,
    /// A socket silent this long (no frame, no pong) is closed.
    pub idle_timeout: Duration,
    /// Largest client frame answered normally; larger ones get an error frame.
    pub max_frame_bytes: usize,
    /// A busy wide room's deliveries are batched over this window (see
    /// [`Feed::new`](crate::Feed::new)).
    pub batch_window: Duration,
    /// A user who closes a room is announced as gone only after this long
    /// without coming back (see [`crate::here`]).
    pub presence_grace: Duration,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig {
            sessions_per_user: 1,
            queue_frames: 1024,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            max_frame_bytes: 64 * 1024,
            batch_window: Duration::from_millis(25),
            presence_grace: Duration::from_secs(5),
        }
    }
}

/// Everything a socket needs.
pub struct Fanout {
    pub feed: Arc<Feed>,
    pub ingest: Arc<Ingest>,
    pub cfg: FanoutConfig,
    /// The session registry shared by every node (in process, or Redis).
    pub presence: Arc<dyn Presence>,
    /// This node's name in the registry (unique per process).
    pub node: String,
    /// This node's open connections, by id: where kick orders land.
    conns: std::sync::Mutex<HashMap<u64, Arc<Live>>>,
}

/// A connection as its node knows it.
pub struct Live {
    pub handle: Arc<ConnHandle>,
    pub user_id: String,
    /// The login session its token belongs to.
    pub session_id: String,
    /// Open while the connection may append sends; closed by an ending,
    /// under this lock, before its last frame is queued.
    gate: std::sync::Mutex<bool>,
}

impl Live {
    pub(crate) fn new(handle: Arc<ConnHandle>, user_id: String, session_id: String) -> Live {
        Live {
            handle,
            user_id,
            session_id,
            gate: std::sync::Mutex::new(true),
        }
    }

    /// Runs `append` unless the connection has ended: the check and the
    /// append happen under the gate's lock, so an ending that returned
    /// first is never followed by an append.
    pub(crate) fn while_open<T>(&self, append: impl FnOnce() -> T) -> Option<T> {
        let open = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        (*open).then(append)
    }

    /// Ends the connection: no more appends, then the last frame (`kicked`
    /// or `session_ended`) and close 1008.
    pub(crate) fn end(&self, reason: KickReason) {
        *self.gate.lock().unwrap_or_else(|e| e.into_inner()) = false;
        let last = match reason {
            KickReason::DuplicateSession => protocol::kicked(reason.as_str()),
            other => protocol::session_ended(other.as_str()),
        };
        self.handle.end_with(1008, reason.as_str(), last);
    }
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl Fanout {
    /// Builds the node and subscribes it to the kick orders addressed to it.
    pub async fn start(
        feed: Arc<Feed>,
        ingest: Arc<Ingest>,
        presence: Arc<dyn Presence>,
        cfg: FanoutConfig,
    ) -> Result<Arc<Self>, PresenceError> {
        let node = format!("fanout-{:016x}", rand::random::<u64>());
        let fanout = Arc::new(Fanout {
            feed,
            ingest,
            cfg,
            presence,
            node,
            conns: Default::default(),
        });
        let weak = Arc::downgrade(&fanout);
        fanout
            .presence
            .on_kicks(
                &fanout.node,
                Arc::new(move |id, reason| {
                    if let Some(f) = weak.upgrade() {
                        f.kick_local(id, reason);
                    }
                }),
            )
            .await?;
        let here = crate::here::start(
            Arc::downgrade(&fanout),
            Arc::downgrade(&fanout.feed),
            Arc::clone(&fanout.presence),
            &fanout.node,
            fanout.session_ttl(),
            fanout.cfg.presence_grace,
            fanout.cfg.ping_interval,
        )
        .await?;
        fanout.feed.hub().watch(here);
        Ok(fanout)
    }

    fn kick_local(&self, id: u64, reason: KickReason) {
        let conn = self.conns.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned();
        if let Some(c) = conn {
            c.end(reason);
        }
    }

    /// Queues `frame` on every connection of `user_id` on this node (a
    /// notice: few and far between, so the node's connections are scanned
    /// rather than indexed by user).
    pub(crate) fn push_to_user(&self, user_id: &str, frame: crate::socket::Frame) {
        let conns: Vec<Arc<Live>> = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|c| c.user_id == user_id)
            .cloned()
            .collect();
        for c in conns {
            c.handle.push(frame.clone());
        }
    }

    fn add_conn(&self, conn: &Arc<Live>) {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(conn.handle.id, Arc::clone(conn));
    }

    pub(crate) fn remove_conn(&self, id: u64) {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    /// Applies the session policy to a new connection: the user's
    /// connections beyond the newest `sessions_per_user` are kicked, here or
    /// on whichever node holds them. If the registry is unreachable the
    /// connection is let in (availability first) and the policy is applied
    /// at its next refresh.
    pub(crate) async fn admit(&self, conn: &Arc<Live>) {
        self.add_conn(conn);
        let me = self.conn_ref(conn);
        let evicted = match self
            .presence
            .register(&conn.user_id, &me, self.cfg.sessions_per_user, self.session_ttl())
            .await
        {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, user = %conn.user_id, "session registry unreachable; admitting");
                return;
            }
        };
        for old in evicted {
            if old.node == self.node {
                self.kick_local(old.conn, KickReason::DuplicateSession);
            } else if let Err(e) = self.presence.kick(&old, KickReason::DuplicateSession).await {
                // Its node learns it at its next refresh.
                warn!(error = %e, node = %old.node, "cannot send a kick order");
            }
        }
    }

    pub(crate) fn conn_ref(&self, conn: &Live) -> ConnRef {
        ConnRef {
            node: self.node.clone(),
            conn: conn.handle.id,
            session: conn.session_id.clone(),
        }
    }

    /// A registration outlives three missed refreshes (one per ping).
    pub(crate) fn session_ttl(&self) -> Duration {
        self.cfg.ping_interval * 3
    }
}
