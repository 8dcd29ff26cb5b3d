//! Serving a router on a listener with connection hygiene: every timeout a
//! client could otherwise hold a connection open with, and caps on open
//! connections per process and per client address.
//!
//! - **Header read timeout**: a request's head must arrive within it,
//!   counted from when the connection opens or, on a keep-alive connection,
//!   from the end of the previous response; otherwise the connection is
//!   closed. This is also the WebSocket handshake timeout: the upgrade is a
//!   request like any other, so a client that connects and never completes
//!   it is dropped the same way.
//! - **Body timeout**: a request's body must have arrived within it of its
//!   head; a slower one is answered `408 request_timeout` and the connection
//!   closed.
//! - **Idle timeout**: a keep-alive connection with no request in progress is
//!   closed after it. The header read timeout also runs while a connection
//!   waits for its next request, so an idle connection is closed after the
//!   shorter of the two.
//! - **Connection caps**: beyond [`ConnectionLimits::max_connections`] open
//!   connections a new one is answered `503 overloaded`, beyond
//!   [`ConnectionLimits::max_connections_per_ip`] from one address (IPv6: one
//!   /64) `429 rate_limited`, both with `Retry-After` and `Connection: close`,
//!   at once, and closed. A connection counts from accept until it closes,
//!   including after a WebSocket upgrade: each request carries the
//!   connection's [`ConnectionPermit`], and the WebSocket handshake keeps it
//!   for as long as the socket is open.
//! - **TLS** (with a [`Tls`]): every connection is HTTPS (and its WebSockets
//!   WSS). The handshake must complete within the header read timeout. A
//!   plain HTTP request sent to the TLS port is answered `400 https_required`
//!   in plain HTTP and the connection closed, rather than left to fail as a
//!   malformed handshake. Each request carries `X-Forwarded-Proto: https`
//!   (replacing a client's), so handlers see HTTPS as behind a proxy that
//!   terminated TLS, and each response `Strict-Transport-Security`.
//! - **Request ids**: each request gets one (the client's `X-Request-Id` if
//!   it is 1–64 characters of `A-Za-z0-9._-`, else 16 random hex digits),
//!   echoed in the response's `X-Request-Id` and recorded on the `request`
//!   span, so every log line of the request names it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::http::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{Instrument, debug, error, warn};

use crate::ApiError;
use crate::error::retry_after_secs;
use crate::tls::Tls;

/// `Strict-Transport-Security` of every response over TLS: a year, this
/// host only (other services on subdomains are not ours to commit).
const HSTS: &str = "max-age=31536000";

/// A request's id (a request extension; see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub Arc<str>);

impl RequestId {
    /// The client's `X-Request-Id` if it is a sane token, else a new one.
    fn of(headers: &hyper::http::HeaderMap) -> RequestId {
        let given = headers.get("x-request-id").and_then(|v| v.to_str().ok()).filter(|v| {
            (1..=64).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
        match given {
            Some(id) => RequestId(Arc::from(id)),
            None => RequestId(Arc::from(format!("{:016x}", rand::random::<u64>()))),
        }
    }
}

/// The limits every connection of a listener is held to.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// How long a request's head may take to arrive (see the module doc).
    pub header_read_timeout: Duration,
    /// How long a request's body may take to arrive after its head.
    pub body_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Open connections of the listener, at most.
    pub max_connections: usize,
    /// Open connections from one client address, at most; 0: no cap.
    pub max_connections_per_ip: usize,
    /// The `Retry-After` of a connection refused by a cap.
    pub retry_after: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(5),
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            retry_after: Duration::from_secs(1),
        }
    }
}

/// A slot among the open connections, held from accept until the
/// connection closes. Requests carry a clone in their extensions; whoever
/// takes the connection out of the HTTP server (the WebSocket handshake)
/// keeps one for as long as it holds the connection.
#[derive(Clone)]
pub struct ConnectionPermit(Arc<Slot>);

impl std::fmt::Debug for ConnectionPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionPermit").field("ip", &self.0.ip).finish()
    }
}

/// The open connections of one listener, in total and per client address.
struct Slots {
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max: usize,
    max_per_ip: usize,
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Process,
    Ip,
}

struct Slot {
    slots: Arc<Slots>,
    /// The address counted against `max_per_ip`, if that cap is on.
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut per_ip = self.slots.per_ip.lock().expect("per-ip lock");
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        let open = self.slots.open.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!("emosation_http_connections_open").set(open as f64);
    }
}

/// The address a per-client cap counts: an IPv4 address (also when mapped
/// into IPv6), or an IPv6 address's /64, which one client usually holds whole.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !((1u128 << 64) - 1))),
        },
    }
}

impl Slots {
    fn take(self: &Arc<Self>, peer: IpAddr) -> Result<ConnectionPermit, Refusal> {
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1));
        let Ok(before) = admitted else {
            return Err(Refusal::Process);
        };
        let mut slot = Slot {
            slots: Arc::clone(self),
            ip: None,
        };
        if self.max_per_ip > 0 {
            let ip = client_key(peer);
            let mut per_ip = self.per_ip.lock().expect("per-ip lock");
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                drop(per_ip);
                // Dropping the slot gives back the process-wide place.
                return Err(Refusal::Ip);
            }
            *n += 1;
            slot.ip = Some(ip);
        }
        metrics::gauge!("emosation_http_connections_open").set((before + 1) as f64);
        Ok(ConnectionPermit(Arc::new(slot)))
    }
}

/// Refused connections being answered at once, at most; beyond it a refused
/// connection gets its answer only if the socket takes it without waiting.
const MAX_REFUSING: usize = 1024;

/// How long a refused connection is kept to read what the client sent:
/// closing a socket with unread input resets it, and the client may then
/// lose the answer.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown`, then stops accepting,
/// lets every open connection finish its request in progress, and returns
/// once they are closed (WebSockets taken over by their handler are theirs
/// to close).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    tls: Option<Tls>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Slots {
        open: AtomicUsize::new(0),
        per_ip: Mutex::new(HashMap::new()),
        max: limits.max_connections.max(1),
        max_per_ip: limits.max_connections_per_ip,
    });
    let refusing = Arc::new(AtomicUsize::new(0));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let http = Arc::new(http);
    let acceptor = tls.as_ref().map(Tls::acceptor);
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        // Small frames and responses go out at once: Nagle's algorithm
        // with delayed ACKs would hold them back by tens of milliseconds.
        if let Err(e) = tcp.set_nodelay(true) {
            warn!(error = %e, "cannot set TCP_NODELAY");
        }
        match slots.take(peer.ip()) {
            Ok(permit) => {
                let conn = Connection {
                    router: router.clone(),
                    state: Arc::new(ConnState {
                        permit,
                        peer: peer.ip(),
                        tls: acceptor.is_some(),
                        body_timeout: limits.body_timeout,
                        opened: Instant::now(),
                        in_flight: AtomicUsize::new(0),
                        idle_since_ms: AtomicU64::new(0),
                    }),
                };
                let (http, stop, idle) = (Arc::clone(&http), shutdown.clone(), limits.idle_timeout);
                match &acceptor {
                    None => {
                        connections.spawn(conn.serve(TokioIo::new(tcp), http, idle, stop));
                    }
                    Some(acceptor) => {
                        let (acceptor, handshake) = (acceptor.clone(), limits.header_read_timeout);
                        connections.spawn(async move {
                            if let Some(tls) = accept_tls(tcp, peer, acceptor, handshake).await {
                                conn.serve(TokioIo::new(tls), http, idle, stop).await;
                            }
                        });
                    }
                }
            }
            Err(refusal) => refuse(tcp, peer, refusal, limits.retry_after, &refusing),
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// An accept error: a connection that failed before it was accepted is
/// skipped; anything else (out of file descriptors) is logged and the
/// accept retried shortly, as the connections holding them close.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind as K;
    if matches!(
        e.kind(),
        K::ConnectionAborted | K::ConnectionReset | K::ConnectionRefused | K::Interrupted
    ) {
        return;
    }
    error!(error = %e, "accept failed; retrying in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Answers a connection a cap refused and closes it, without waiting for
/// its request: `503 overloaded` (the process's cap) or `429 rate_limited`
/// (the address's), with `Retry-After` and `Connection: close`.
fn refuse(tcp: TcpStream, peer: SocketAddr, refusal: Refusal, retry_after: Duration, refusing: &Arc<AtomicUsize>) {
    let (status, code, message, limit) = match refusal {
        Refusal::Process => (
            "503 Service Unavailable",
            "overloaded",
            "this server holds as many connections as it takes; retry later",
            "process",
        ),
        Refusal::Ip => (
            "429 Too Many Requests",
            "rate_limited",
            "too many connections from this address; retry later",
            "ip",
        ),
    };
    metrics::counter!("emosation_http_connections_refused_total", "limit" => limit).increment(1);
    debug!(%peer, limit, "connection refused");
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let answer = Bytes::from(format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nretry-after: {}\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{body}",
        retry_after_secs(retry_after),
        body.len()
    ));
    if refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
        refusing.fetch_sub(1, Ordering::AcqRel);
        let _ = tcp.try_write(&answer);
        return;
    }
    let refusing = Arc::clone(refusing);
    tokio::spawn(async move {
        answer_and_close(tcp, &answer).await;
        refusing.fetch_sub(1, Ordering::AcqRel);
    });
}

/// Writes `answer`, closes the sending side, and reads (for at most
/// [`REFUSAL_LINGER`]) what the client still sends before dropping the
/// socket, so that its unread input does not reset the connection before
/// the client has read the answer.
async fn answer_and_close(mut tcp: TcpStream, answer: &[u8]) {
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        tcp.write_all(answer).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut read = 0;
        while read < 64 * 1024 {
            match tcp.read(&mut sink).await? {
                0 => break,
                n => read += n,
            }
        }
        std::io::Result::Ok(())
    })
    .await;
}

/// The TLS handshake of a connection, within `within` of its accept.
/// A connection that opens with an HTTP request instead (a letter where a
/// handshake record's type, 0x16, belongs) is answered `400
/// https_required` in plain HTTP and closed; one that fails or does not
/// finish the handshake in time is closed. Counted in
/// `emosation_http_tls_refused_total{reason}`.
async fn accept_tls(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    within: Duration,
) -> Option<crate::tls::TlsStream> {
    let deadline = Instant::now() + within;
    let refused = |reason: &'static str| {
        metrics::counter!("emosation_http_tls_refused_total", "reason" => reason).increment(1);
        debug!(%peer, reason, "TLS connection refused");
    };
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0].is_ascii_alphabetic() => {
            refused("plain_http");
            let body = serde_json::json!({"error": {
                "code": "https_required",
                "message": "this port speaks HTTPS only: use https:// (or wss://)",
            }})
            .to_string();
            let answer = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n\
                 content-length: {}\r\n\r\n{body}",
                body.len()
            );
            answer_and_close(tcp, answer.as_bytes()).await;
            return None;
        }
        Ok(Ok(1)) => {}
        Ok(_) => return None,
        Err(_) => {
            refused("timeout");
            return None;
        }
    }
    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            refused("handshake");
            debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            refused("timeout");
            None
        }
    }
}

/// One accepted connection: the router, and what its requests share.
struct Connection {
    router: Router,
    state: Arc<ConnState>,
}

struct ConnState {
    permit: ConnectionPermit,
    /// The client's address, as accepted (see [`crate::client`]).
    peer: IpAddr,
    /// The connection is TLS.
    tls: bool,
    body_timeout: Duration,
    opened: Instant,
    /// Requests whose response has not been sent in full.
    in_flight: AtomicUsize,
    /// When `in_flight` last fell to 0, in milliseconds since `opened`.
    idle_since_ms: AtomicU64,
}

impl ConnState {
    /// When the connection will have been idle for `idle`, or `None` while a
    /// request is in progress.
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.opened + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(since + idle)
    }
}

/// A request in progress on a connection; dropped once its response has
/// been sent in full (or abandoned).
struct Busy(Arc<ConnState>);

impl Busy {
    fn begin(state: &Arc<ConnState>) -> Busy {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(state))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let now = self.0.opened.elapsed().as_millis() as u64;
        self.0.idle_since_ms.store(now, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Connection {
    /// Serves the connection's requests over `io`: the TCP stream as
    /// accepted, or its TLS stream. Either is what an upgrade's handler gets
    /// back (`TokioIo<TcpStream>` or `TokioIo<TlsStream>`).
    async fn serve<I>(
        self,
        io: I,
        http: Arc<hyper::server::conn::http1::Builder>,
        idle: Duration,
        shutdown: CancellationToken,
    ) where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let service = RequestService {
            router: self.router,
            state: Arc::clone(&self.state),
        };
        let conn = http.serve_connection(io, service).with_upgrades();
        tokio::pin!(conn);
        let check = tokio::time::sleep(idle);
        tokio::pin!(check);
        let mut closing = false;
        loop {
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        debug!(error = %e, "connection ended with an error");
                    }
                    break;
                }
                _ = shutdown.cancelled(), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = check.as_mut(), if !closing => {
                    match self.state.idle_deadline(idle) {
                        Some(at) if at <= Instant::now() => {
                            // Closes the connection now if no request has
                            // begun; one in progress is answered first.
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                        }
                        Some(at) => check.as_mut().reset(at),
                        None => check.as_mut().reset(Instant::now() + idle),
                    }
                }
            }
        }
    }
}

/// The service hyper calls for each request of one connection.
#[derive(Clone)]
struct RequestService {
    router: Router,
    state: Arc<ConnState>,
}

type BoxError = Box<dyn StdError + Send + Sync>;

impl hyper::service::Service<Request<Incoming>> for RequestService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let busy = Busy::begin(&self.state);
        let timed_out = Arc::new(AtomicBool::new(false));
        // An upload may take longer than the timeout as a whole: its body
        // must only keep arriving, a chunk at least every timeout.
        let idle = req.method() == hyper::Method::POST && req.uri().path().ends_with("/attachments");
        let mut req = req.map(|body| TimedBody {
            inner: body,
            timeout: self.state.body_timeout,
            started: Instant::now(),
            deadline: None,
            timed_out: Arc::clone(&timed_out),
            idle,
        });
        req.extensions_mut().insert(self.state.permit.clone());
        req.extensions_mut().insert(crate::client::ClientIp(self.state.peer));
        let tls = self.state.tls;
        if tls {
            req.headers_mut()
                .insert("x-forwarded-proto", HeaderValue::from_static("https"));
        }
        let id = RequestId::of(req.headers());
        let span = tracing::info_span!("request", request_id = %id.0, method = %req.method(), path = req.uri().path());
        req.extensions_mut().insert(id.clone());
        let router = self.router.clone();
        let started = Instant::now();
        Box::pin(
            async move {
                let res = match router.oneshot(req).await {
                    Ok(res) => res,
                    Err(never) => match never {},
                };
                let mut res = if timed_out.load(Ordering::Acquire) {
                    ApiError::request_timeout("the request body did not arrive in time").into_response()
                } else {
                    res
                };
                let status = res.status().as_u16();
                let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
                debug!(status, elapsed_ms, "request answered");
                let headers = res.headers_mut();
                if let Ok(v) = HeaderValue::from_str(&id.0) {
                    headers.insert("x-request-id", v);
                }
                if tls {
                    headers.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS));
                }
                Ok(res.map(|body| {
                    Body::new(Tracked {
                        inner: body,
                        _busy: busy,
                    })
                }))
            }
            .instrument(span),
        )
    }
}

/// A request body that must arrive in full within `timeout` of the head.
struct TimedBody {
    inner: Incoming,
    timeout: Duration,
    started: Instant,
    /// Armed the first time the body is waited for.
    deadline: Option<Pin<Box<Sleep>>>,
    timed_out: Arc<AtomicBool>,
    /// The timeout runs from the last chunk received, not from the head
    /// (uploads).
    idle: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimeout;

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if this.idle {
                    this.started = Instant::now();
                    this.deadline = None;
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let at = this.started + this.timeout;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                if deadline.as_mut().poll(cx).is_ready() {
                    this.timed_out.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err(BodyTimeout.into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request counted as in progress until it
/// has been sent (hyper drops it then).
struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(max: usize, max_per_ip: usize) -> Arc<Slots> {
        Arc::new(Slots {
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            max,
            max_per_ip,
        })
    }

    #[test]
    fn caps_count_until_the_last_permit_is_dropped() {
        let s = slots(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = s.take(a).unwrap();
        let p2 = s.take(a).unwrap();
        assert_eq!(s.take(a).unwrap_err(), Refusal::Ip);
        let p3 = s.take(b).unwrap();
        assert_eq!(s.take(b).unwrap_err(), Refusal::Process);
        // A clone (a request's, an upgraded socket's) holds the same slot.
        let held = p1.clone();
        drop(p1);
        assert_eq!(s.take(b).unwrap_err(), Refusal::Process);
        drop(held);
        let p4 = s.take(b).unwrap();
        drop((p2, p3, p4));
        assert_eq!(s.open.load(Ordering::Acquire), 0);
        assert!(s.per_ip.lock().unwrap().is_empty());
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64() {
        let s = slots(10, 1);
        let _p = s.take("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert_eq!(s.take("2001:db8:1:2::ffff".parse().unwrap()).unwrap_err(), Refusal::Ip);
        s.take("2001:db8:1:3::1".parse().unwrap()).unwrap();
        let _v4 = s.take("192.0.2.7".parse().unwrap()).unwrap();
        assert_eq!(
            s.take("::ffff:192.0.2.7".parse().unwrap()).unwrap_err(),
            Refusal::Ip,
            "an IPv4-mapped address is its IPv4 address"
        );
    }
}
