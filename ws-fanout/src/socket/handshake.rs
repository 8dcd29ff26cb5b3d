//! The WebSocket opening handshake (RFC 6455 §4.2), on axum: the request is
//! checked, the `101 Switching Protocols` answer built, and once it has gone
//! out the connection's own TCP stream is taken from the HTTP server, so that
//! frames are written to it directly rather than through hyper's upgraded IO.
//! A connection over TLS is bridged to a socket pair instead (see
//! [`emosation_http::tls::bridge`]), which takes the same writes.
//! The connection's [`ConnectionPermit`] goes with the stream: the socket
//! counts against the server's connection caps for as long as it is open.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use emosation_http::ApiError;
use emosation_http::server::ConnectionPermit;
use emosation_http::tls::{TlsStream, bridge};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::Socket;

/// A checked opening handshake; the connection is taken over with
/// [`Handshake::accept`].
pub struct Handshake {
    key: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
    /// The connection's slot under the server's caps, when it has one.
    permit: Option<ConnectionPermit>,
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
        let permit = parts.extensions.remove::<ConnectionPermit>();
        Ok(Handshake {
            key,
            on_upgrade,
            permit,
        })
    }
}

impl Handshake {
    /// The `101` answer. Once it has gone out, `serve` gets the connection's
    /// socket and what the HTTP server read past the request.
    pub fn accept<F, Fut>(self, serve: F) -> Response
    where
        F: FnOnce(Socket, Bytes) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Handshake {
            key,
            on_upgrade,
            permit,
        } = self;
        tokio::spawn(async move {
            let _permit = permit;
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    debug!(error = %e, "WebSocket upgrade failed");
                    return;
                }
            };
            // Served by hyper's HTTP/1 server (`emosation_http::server`), or
            // through hyper-util's auto builder, which wraps the stream. One
            // `serve(…).await` for every kind of stream: each await of it
            // holds its own copy of the connection's whole state machine in
            // this task (with three, `ramp` measured 7.8 KB per idle socket;
            // with one, 3.2 KB).
            let Some((socket, pre)) = take_socket(upgraded) else {
                return;
            };
            serve(socket, pre).await
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
}

/// The upgraded connection's socket (TCP, or TLS bridged to a Unix socket
/// pair) and what the HTTP server read past the handshake.
fn take_socket(upgraded: hyper::upgrade::Upgraded) -> Option<(Socket, Bytes)> {
    type Io = hyper_util::rt::TokioIo<TcpStream>;
    let upgraded = match upgraded.downcast::<Io>() {
        Ok(parts) => return Some((Socket::Tcp(parts.io.into_inner()), parts.read_buf)),
        Err(upgraded) => upgraded,
    };
    let upgraded = match upgraded.downcast::<hyper_util::rt::TokioIo<TlsStream>>() {
        Ok(parts) => {
            return match bridge(parts.io.into_inner()) {
                Ok(plain) => Some((Socket::Tls(plain), parts.read_buf)),
                Err(e) => {
                    warn!(error = %e, "cannot bridge a WebSocket over TLS; closing it");
                    None
                }
            };
        }
        Err(upgraded) => upgraded,
    };
    match hyper_util::server::conn::auto::upgrade::downcast::<Io>(upgraded) {
        Ok(parts) => Some((Socket::Tcp(parts.io.into_inner()), parts.read_buf)),
        Err(_) => {
            warn!("an upgraded connection is neither a TCP nor a TLS stream; closing it");
            None
        }
    }
}
