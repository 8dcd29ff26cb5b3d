//! One connection's session: admitted under the session policy, greeted
//! with `hello`, then its client frames read and answered in order —
//! subscriptions go to the [`Feed`](crate::feed::Feed), sends through
//! ingest's command path, typing to the [`Hub`](crate::hub::Hub) — until it
//! closes. The session decides; the [socket layer](crate::socket) writes.
//!
//! Memory: an idle connection holds its two tasks (this loop and the
//! writer), tungstenite's small read buffer and an empty queue. The frame
//! handling, which awaits view lookups and the feed, runs boxed, so it is
//! not part of the idle task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use emosation_core::access;
use emosation_core::ports::KickReason;
use emosation_http::AuthUser;
use emosation_http::auth::{SessionEndCause, TokenKind};
use emosation_ingest::CommandError;
use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;

use crate::here;
use crate::node::{Fanout, Live};
use crate::protocol::{self, ClientFrame, FrameError};
use crate::socket::outbox::{count_close, writer};
use crate::socket::reader::client_stream;
use crate::socket::{ConnHandle, Socket};

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Sends in flight per connection before the reader stops reading.
const MAX_INFLIGHT_SENDS: usize = 256;
/// How long a connection the server closed waits for the client's close
/// frame: long enough for a client to read the backlog queued before it.
const CLOSE_DRAIN: Duration = Duration::from_secs(10);
/// Catch-ups (subscriptions with `since` reading the log) one connection
/// may run at once.
const MAX_CATCH_UPS: usize = 4;
/// `subscribe` frames per second per connection, and the burst.
const SUBSCRIBE_RATE: f64 = 10.0;
const SUBSCRIBE_BURST: f64 = 20.0;
/// `typing` frames relayed per connection and room at most this often.
const TYPING_EVERY: Duration = Duration::from_secs(1);

/// One connection's own limits: what it may ask of the node, whatever the
/// client does.
struct Limits {
    /// Subscriptions, a token bucket.
    subscribe_tokens: f64,
    subscribe_at: tokio::time::Instant,
    /// Permits for catch-ups running at once.
    catch_ups: Arc<Semaphore>,
    /// When a typing notice for each room was last relayed.
    typing: std::collections::HashMap<String, tokio::time::Instant>,
}

impl Limits {
    fn new() -> Limits {
        Limits {
            subscribe_tokens: SUBSCRIBE_BURST,
            subscribe_at: tokio::time::Instant::now(),
            catch_ups: Arc::new(Semaphore::new(MAX_CATCH_UPS)),
            typing: Default::default(),
        }
    }

    fn take_subscribe(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        let refill = now.duration_since(self.subscribe_at).as_secs_f64() * SUBSCRIBE_RATE;
        self.subscribe_tokens = (self.subscribe_tokens + refill).min(SUBSCRIBE_BURST);
        self.subscribe_at = now;
        if self.subscribe_tokens >= 1.0 {
            self.subscribe_tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether a typing notice for `room_id` may be relayed now.
    fn take_typing(&mut self, room_id: &str) -> bool {
        let now = tokio::time::Instant::now();
        if self
            .typing
            .get(room_id)
            .is_some_and(|t| now.duration_since(*t) < TYPING_EVERY)
        {
            return false;
        }
        if self.typing.len() >= 64 {
            self.typing.retain(|_, t| now.duration_since(*t) < TYPING_EVERY);
        }
        self.typing.insert(room_id.to_owned(), now);
        true
    }
}

/// When a token expiring at `exp` (seconds since the epoch) stops being valid.
fn deadline(exp: i64) -> tokio::time::Instant {
    let left = exp.saturating_sub(emosation_core::time::now_ms() / 1000).max(0);
    tokio::time::Instant::now() + Duration::from_secs(left as u64)
}

/// Serves one upgraded socket until it closes; `pre` is what the HTTP
/// server read past the handshake; the access token it was opened with
/// expires at `exp` (seconds since the epoch).
pub async fn run(fanout: Arc<Fanout>, user: AuthUser, exp: i64, socket: Socket, pre: Bytes) {
    let cfg = fanout.cfg.clone();
    let (read, write) = socket.into_split();
    let conn = Arc::new(ConnHandle::new(
        NEXT_CONN.fetch_add(1, Ordering::Relaxed),
        user.user_id.clone(),
        cfg.queue_frames,
        Some(write),
    ));
    let live = Arc::new(Live::new(
        Arc::clone(&conn),
        user.user_id.clone(),
        user.session_id.clone(),
    ));
    // Admitted before its `hello`: a client that has its hello is this
    // user's newest session, so one that connects after it is newer (and
    // kicks it first under the session policy). A connection kicked in
    // between (a newer one admitted meanwhile) still gets its `kicked` and
    // close frame from the writer task below.
    Box::pin(fanout.admit(&live)).await;
    conn.push(protocol::hello(&user.user_id, &user.session_id));
    metrics::gauge!("emosation_fanout_connections").increment(1.0);
    let writer = {
        let (fanout, live, user) = (Arc::clone(&fanout), Arc::clone(&live), user.clone());
        // At every ping: keep the registration alive (a connection evicted
        // by a newer one whose kick order was lost learns it here), and ask
        // the views whether the session has ended (an ending whose order
        // was lost ends it here).
        let keepalive = move || {
            let (fanout, live, user) = (Arc::clone(&fanout), Arc::clone(&live), user.clone());
            async move {
                let me = fanout.conn_ref(&live);
                if let Ok(false) = fanout.presence.refresh(&live.user_id, &me, fanout.session_ttl()).await {
                    live.end(KickReason::DuplicateSession);
                    return;
                }
                // Only rooms it has open: a socket following rooms for
                // unread counts costs the presence store nothing.
                let rooms = fanout.feed.hub().open_rooms_of(live.handle.id);
                here::refresh(
                    &*fanout.presence,
                    &fanout.node,
                    live.handle.id,
                    &live.user_id,
                    &rooms,
                    fanout.session_ttl(),
                )
                .await;
                let ended = fanout
                    .ingest
                    .authenticator()
                    .session_end_cause(&user.user_id, &user.username, &user.session_id)
                    .await;
                match ended {
                    Ok(None) => {}
                    Ok(Some(cause)) => live.end(match cause {
                        SessionEndCause::LoggedOut => KickReason::Logout,
                        SessionEndCause::AccountDeleted => KickReason::AccountDeleted,
                        SessionEndCause::Expired => KickReason::TokenExpired,
                        SessionEndCause::Revoked | SessionEndCause::Unknown => KickReason::Revoked,
                    }),
                    Err(e) => debug!(error = %e, "cannot check the session; next ping"),
                }
            }
        };
        tokio::spawn(writer(Arc::clone(&conn), cfg.ping_interval, keepalive))
    };

    let mut stream = client_stream(pre, read, Arc::clone(&conn)).await;

    let sends = Arc::new(Semaphore::new(MAX_INFLIGHT_SENDS));
    let mut limits = Limits::new();
    // The access token's expiry, moved by `auth` frames.
    let expiry = tokio::time::sleep_until(deadline(exp));
    tokio::pin!(expiry);
    // Whether the server ended the connection (full queue, kick, idle) while
    // the client may still be writing; see the closing handshake below.
    let mut server_closed = false;
    loop {
        let next = tokio::select! {
            _ = conn.closed() => {
                server_closed = true;
                break;
            }
            _ = &mut expiry => {
                live.end(KickReason::TokenExpired);
                server_closed = true;
                break;
            }
            m = tokio::time::timeout(cfg.idle_timeout, stream.next()) => m,
        };
        let msg = match next {
            Err(_) => {
                conn.close(1000, "idle timeout");
                server_closed = true;
                break;
            }
            // A frame or message over the 1 MiB the reader takes (see
            // socket::reader) ends the connection with 1009.
            Ok(Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_)))) => {
                conn.close(1009, "message too big");
                server_closed = true;
                break;
            }
            Ok(None) | Ok(Some(Err(_))) => {
                count_close(1006, "client");
                break;
            }
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Text(t) => {
                if t.len() > cfg.max_frame_bytes {
                    conn.push(protocol::error(&FrameError::new(
                        "frame_too_large",
                        format!("frames are at most {} bytes", cfg.max_frame_bytes),
                    )));
                    continue;
                }
                match protocol::parse(t.as_str()) {
                    Ok(ClientFrame::Auth { access_token }) => {
                        // Boxed, as `handle` below.
                        if let Some(exp) = Box::pin(renew(&fanout, &user, &access_token, &conn)).await {
                            expiry.as_mut().reset(deadline(exp));
                        }
                    }
                    // Boxed: its view lookups' state is not part of the
                    // connection's idle task.
                    Ok(frame) => Box::pin(handle(&fanout, &live, &user, frame, &sends, &mut limits)).await,
                    Err(e) => {
                        conn.push(protocol::error(&e));
                    }
                }
            }
            Message::Binary(_) => {
                conn.push(protocol::error(&FrameError::new(
                    "unsupported_frame",
                    "binary frames are not supported; send JSON text frames",
                )));
            }
            Message::Close(frame) => {
                count_close(frame.map_or(1005, |f| u16::from(f.code)), "client");
                break;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }

    fanout.feed.hub().drop_conn(conn.id);
    fanout.remove_conn(conn.id);
    if let Err(e) = fanout.presence.unregister(&conn.user_id, &fanout.conn_ref(&live)).await {
        debug!(error = %e, "cannot unregister a closed connection; it will expire");
    }
    conn.shut();
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    if server_closed {
        // The closing handshake (RFC 6455 §7.1.1): the writer has sent our
        // close frame; read (and drop) what the client still sends until its
        // close frame, for a bounded time. Dropping the socket with unread
        // input would make the kernel answer with a reset, which can discard
        // the close frame (and the frames before it) in the client's buffer:
        // a pipelining client would see "connection reset" instead of 1013.
        let _ = tokio::time::timeout(CLOSE_DRAIN, async {
            while let Some(Ok(m)) = stream.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    metrics::gauge!("emosation_fanout_connections").decrement(1.0);
    debug!(conn = conn.id, user = %conn.user_id, "connection closed");
}

/// An `auth` frame: a newer access token of the same session replaces the
/// connection's; answers `authenticated` and returns its expiry, or an
/// `invalid_token` error frame (the connection keeps its current token).
async fn renew(fanout: &Fanout, user: &AuthUser, token: &str, conn: &ConnHandle) -> Option<i64> {
    let claims = match fanout
        .ingest
        .authenticator()
        .authenticate(token, TokenKind::Access)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            conn.push(protocol::error(&FrameError::from(CommandError::from(e))));
            return None;
        }
    };
    if claims.sub != user.user_id || claims.sid != user.session_id {
        conn.push(protocol::error(&FrameError::new(
            "invalid_token",
            "the token belongs to another session; open a new connection with it",
        )));
        return None;
    }
    conn.push(protocol::authenticated(claims.exp.saturating_mul(1000)));
    Some(claims.exp)
}

async fn handle(
    fanout: &Arc<Fanout>,
    live: &Live,
    user: &AuthUser,
    frame: ClientFrame,
    sends: &Arc<Semaphore>,
    limits: &mut Limits,
) {
    let conn = &live.handle;
    match frame {
        ClientFrame::Subscribe {
            room_id,
            since,
            streams,
        } => {
            if !limits.take_subscribe() {
                conn.push(protocol::error(&FrameError::new(
                    "rate_limited",
                    format!("more than {SUBSCRIBE_RATE} subscribe frames per second"),
                )));
                return;
            }
            let member = access::member_room(&**fanout.feed.views(), &room_id, &user.user_id)
                .await
                .map_err(FrameError::from);
            let result = match member {
                Ok(_) => fanout
                    .feed
                    .subscribe(Arc::clone(conn), &room_id, since.as_deref(), streams, &limits.catch_ups)
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                conn.push(protocol::error(&e));
            }
        }
        ClientFrame::Unsubscribe { room_id } => {
            if fanout.feed.hub().unsubscribe(conn.id, &room_id) {
                conn.push(protocol::unsubscribed(&room_id));
            } else {
                conn.push(protocol::error(&FrameError::new(
                    "not_subscribed",
                    "not subscribed to this room",
                )));
            }
        }
        // Answered by the connection loop, which owns the token's expiry.
        ClientFrame::Auth { .. } => {}
        ClientFrame::Typing { room_id } => {
            let hub = fanout.feed.hub();
            if hub.is_subscribed(conn.id, &room_id) {
                // At most one relayed per second per connection and room;
                // the others are dropped (a notice, not a message).
                if limits.take_typing(&room_id) {
                    // To the room's subscribers on every node.
                    here::typing(&*fanout.presence, &fanout.node, conn.id, &room_id, &user.user_id).await;
                }
            } else {
                conn.push(protocol::error(&FrameError::new(
                    "not_subscribed",
                    "subscribe to the room first",
                )));
            }
        }
        ClientFrame::Edit {
            room_id,
            message_id,
            text,
        } => change(fanout, live, user, sends, room_id, message_id, Some(text)).await,
        ClientFrame::Delete { room_id, message_id } => {
            change(fanout, live, user, sends, room_id, message_id, None).await
        }
        ClientFrame::Send {
            room_id,
            client_msg_id,
            text,
            attachments,
        } => {
            // Checked and appended here, in the order the frames arrived, so
            // a connection's sends are stored in the order sent; their answers
            // (acks carry client_msg_id) are awaited concurrently, bounded
            // per connection.
            let Ok(permit) = Arc::clone(sends).acquire_owned().await else {
                return;
            };
            // Appended only while the session lasts: an ending closes the
            // gate before its `session_ended` frame is queued, so no send
            // after it is stored or acknowledged.
            let ingest = &fanout.ingest;
            let begun = match ingest
                .check_post(user, &room_id, &client_msg_id, &text, &attachments)
                .await
            {
                Ok(text) => live.while_open(|| ingest.begin_post(user, &room_id, &client_msg_id, &text, &attachments)),
                Err(e) => Some(Err(e)),
            };
            let answer = match begun {
                None => return,
                Some(Ok(answer)) => answer,
                Some(Err(e)) => {
                    conn.push(protocol::error(&FrameError::from(e).for_send(&client_msg_id)));
                    return;
                }
            };
            let conn = Arc::clone(conn);
            tokio::spawn(async move {
                let _permit = permit;
                let frame = match answer.await {
                    Ok(p) => protocol::ack(&client_msg_id, &p.message_id, &p.cursor),
                    Err(e) => protocol::error(&FrameError::from(e).for_send(&client_msg_id)),
                };
                conn.push(frame);
            });
        }
    }
}

/// An `edit` (`text`) or `delete` (`None`) frame: carried out by ingest's
/// command path like an HTTP `PATCH`/`DELETE`, answered `edited` / `deleted`
/// or with an error frame naming the message. Awaited in a task of its own,
/// bounded with the connection's sends, so the reader goes on meanwhile.
async fn change(
    fanout: &Arc<Fanout>,
    live: &Live,
    user: &AuthUser,
    sends: &Arc<Semaphore>,
    room_id: String,
    message_id: String,
    text: Option<String>,
) {
    let Ok(permit) = Arc::clone(sends).acquire_owned().await else {
        return;
    };
    let (fanout, conn, user) = (Arc::clone(fanout), Arc::clone(&live.handle), user.clone());
    tokio::spawn(async move {
        let _permit = permit;
        let ingest = &fanout.ingest;
        let done = match &text {
            Some(t) => ingest.edit_message(&user, &room_id, &message_id, t).await,
            None => ingest.delete_message(&user, &room_id, &message_id).await,
        };
        conn.push(match done {
            Ok(c) => protocol::changed(text.is_some(), &room_id, &c),
            Err(e) => protocol::error(&FrameError::from(e).for_message(&message_id)),
        });
    });
}
