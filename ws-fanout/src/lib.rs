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

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use emosation_http::ApiError;
use emosation_http::auth::TokenKind;
use emosation_ingest::Ingest;
use serde::Deserialize;

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
    pub sessions: conn::Sessions,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl Fanout {
    pub fn new(hub: Arc<Hub>, ingest: Arc<Ingest>, cfg: FanoutConfig) -> Arc<Self> {
        Arc::new(Fanout {
            hub,
            ingest,
            cfg,
            sessions: conn::Sessions::default(),
        })
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
    ws.read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(1024 * 1024)
        .on_upgrade(move |socket| conn::run(fanout, user, socket))
}
