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
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use emosation_core::ports::{ConnRef, Presence, PresenceError};
use emosation_http::ApiError;
use emosation_http::auth::TokenKind;
use emosation_ingest::Ingest;
use serde::Deserialize;
use tracing::{debug, warn};

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

/// A WebSocket opening handshake (RFC 6455 §4.2.1), checked; the
/// connection is taken over once the 101 response has gone out.
struct Handshake {
    key: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

impl<S: Send + Sync> FromRequestParts<S> for Handshake {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let refuse = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, "upgrade_required", m);
        if parts.version != Version::HTTP_11 || parts.method != Method::GET {
            return Err(refuse("a WebSocket opens with an HTTP/1.1 GET upgrade request"));
        }
        if !header_has(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(refuse("the Connection header must include 'upgrade'"));
        }
        if !header_has(&parts.headers, header::UPGRADE, "websocket") {
            return Err(refuse("the Upgrade header must be 'websocket'"));
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(refuse("Sec-WebSocket-Version must be 13"));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .filter(|k| !k.is_empty())
            .cloned()
            .ok_or_else(|| refuse("the Sec-WebSocket-Key header is missing"))?;
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or_else(|| refuse("this connection cannot be upgraded"))?;
        Ok(Handshake { key, on_upgrade })
    }
}

/// Checks the token *before* upgrading: a refused token never gets a socket.
async fn upgrade(
    State(fanout): State<Arc<Fanout>>,
    headers: HeaderMap,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    handshake: Result<Handshake, ApiError>,
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
    let Handshake { key, on_upgrade } = match handshake {
        Ok(h) => h,
        Err(e) => return e.into_response(),
    };
    let user = emosation_http::AuthUser {
        user_id: claims.sub,
        username: claims.name,
        session_id: claims.sid,
        issued_at: claims.iat,
    };
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                debug!(error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        // The connection's own TCP stream: frames are written to it
        // directly (see `conn`), not through hyper's upgraded IO.
        type Io = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
        match hyper_util::server::conn::auto::upgrade::downcast::<Io>(upgraded) {
            Ok(parts) => conn::run(fanout, user, parts.io.into_inner(), parts.read_buf).await,
            Err(_) => warn!("an upgraded connection is not a TCP stream; closing it"),
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
