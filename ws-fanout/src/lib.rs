//! WebSocket fan-out: `GET /v1/ws`.
//!
//! A fan-out node reads the log partitions of the rooms its sockets subscribe
//! to — and only those — and delivers every event it reads, in log order. It
//! learns what the fold decided about a record from the views, once the
//! projector's applied watermark has passed it: a message was accepted iff its
//! `Message` entity exists, a membership change iff its `RoomEvent` exists.
//! Sends go through ingest's command path, like HTTP; nothing bypasses the log.
//!
//! Each event's frame is encoded once and shared by all of the room's sockets.
//! A socket that cannot keep up overflows its bounded queue and is closed with
//! 1013; it resumes with `since`, reading what it missed from the log.
//!
//! # Layout
//! - [`hub`]: rooms → subscribers, one tailer task per partition, catch-up.
//! - [`conn`]: one socket: frames in, frames out, keepalive, session policy.
//! - [`frames`]: the protocol's frames.

pub mod conn;
pub mod frames;
pub mod hub;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use emosation_core::ports::{ConnRef, Presence, PresenceError};
use emosation_http::ApiError;
use emosation_http::auth::TokenKind;
use emosation_ingest::Ingest;
use serde::Deserialize;
use tracing::warn;

pub use hub::Hub;

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
    pub hub: Arc<Hub>,
    pub ingest: Arc<Ingest>,
    pub cfg: FanoutConfig,
    /// The session registry shared by every node (in process, or Redis).
    pub presence: Arc<dyn Presence>,
    /// This node's name in the registry (unique per process).
    pub node: String,
    /// This node's open connections, by id: where kick orders land.
    conns: std::sync::Mutex<HashMap<u64, Arc<conn::ConnHandle>>>,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl Fanout {
    /// Builds the node and subscribes it to the kick orders addressed to it.
    pub async fn start(
        hub: Arc<Hub>,
        ingest: Arc<Ingest>,
        presence: Arc<dyn Presence>,
        cfg: FanoutConfig,
    ) -> Result<Arc<Self>, PresenceError> {
        let node = format!("fanout-{:016x}", rand::random::<u64>());
        let fanout = Arc::new(Fanout {
            hub,
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
            c.kick();
        }
    }

    pub(crate) fn add_conn(&self, conn: &Arc<conn::ConnHandle>) {
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
    pub(crate) async fn admit(&self, conn: &Arc<conn::ConnHandle>) {
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

/// The `/v1/ws` route.
pub fn routes(fanout: Arc<Fanout>) -> Router {
    Router::new().route("/v1/ws", get(upgrade)).with_state(fanout)
}

#[derive(Deserialize)]
struct WsQuery {
    access_token: Option<String>,
}

/// Checks the token *before* upgrading: a refused token never gets a socket.
async fn upgrade(
    State(fanout): State<Arc<Fanout>>,
    headers: HeaderMap,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let from_header = emosation_http::auth::bearer_header(&headers).map(str::to_owned);
    let token = from_header.or_else(|| query.ok().and_then(|Query(q)| q.access_token));
    let Some(token) = token else {
        return ApiError::unauthorized("missing token (Authorization: Bearer or ?access_token=)").into_response();
    };
    let claims = match fanout
        .ingest
        .authenticator()
        .authenticate(&token, TokenKind::Access)
        .await
    {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(r) => {
            return ApiError::new(StatusCode::BAD_REQUEST, "upgrade_required", r.body_text()).into_response();
        }
    };
    let user = emosation_http::AuthUser {
        user_id: claims.sub,
        username: claims.name,
        session_id: claims.sid,
        issued_at: claims.iat,
    };
    // Small buffers: an idle socket should cost little memory. Frames up to
    // 1 MiB are read (and answered with an error if over the protocol limit);
    // larger ones end the connection with 1009.
    ws.read_buffer_size(512)
        .write_buffer_size(16 * 1024)
        .max_message_size(1024 * 1024)
        .on_upgrade(move |socket| conn::run(fanout, user, socket))
}
