//! [`Fanout`]: this node — its settings, its open connections by id, and the
//! session policy shared with every other node through the `Presence` port
//! (a user's connections beyond the newest few are kicked, wherever they are).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use emosation_core::ports::{ConnRef, Presence, PresenceError};
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
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig {
            sessions_per_user: 1,
            queue_frames: 1024,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            max_frame_bytes: 64 * 1024,
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
    conns: std::sync::Mutex<HashMap<u64, Arc<ConnHandle>>>,
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
                Arc::new(move |id| {
                    if let Some(f) = weak.upgrade() {
                        f.kick_local(id);
                    }
                }),
            )
            .await?;
        Ok(fanout)
    }

    fn kick_local(&self, id: u64) {
        let conn = self.conns.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned();
        if let Some(c) = conn {
            kick(&c);
        }
    }

    pub(crate) fn add_conn(&self, conn: &Arc<ConnHandle>) {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(conn.id, Arc::clone(conn));
    }

    pub(crate) fn remove_conn(&self, id: u64) {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    /// Applies the session policy to a new connection: the user's
    /// connections beyond the newest `sessions_per_user` are kicked, here or
    /// on whichever node holds them. If the registry is unreachable the
    /// connection is let in (availability first) and the policy is applied
    /// at its next refresh.
    pub(crate) async fn admit(&self, conn: &Arc<ConnHandle>) {
        self.add_conn(conn);
        let me = self.conn_ref(conn.id);
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
                self.kick_local(old.conn);
            } else if let Err(e) = self.presence.kick(&old).await {
                // Its node learns it at its next refresh.
                warn!(error = %e, node = %old.node, "cannot send a kick order");
            }
        }
    }

    pub(crate) fn conn_ref(&self, id: u64) -> ConnRef {
        ConnRef {
            node: self.node.clone(),
            conn: id,
        }
    }

    /// A registration outlives three missed refreshes (one per ping).
    pub(crate) fn session_ttl(&self) -> Duration {
        self.cfg.ping_interval * 3
    }
}

/// Ends a connection that a newer one of the same user replaced: a
/// `kicked` frame, then close 1008.
pub(crate) fn kick(conn: &ConnHandle) {
    conn.end_with(1008, "duplicate_session", protocol::kicked("duplicate_session"));
}
