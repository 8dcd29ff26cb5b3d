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
use emosation_http::AuthUser;
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;

use crate::node::{Fanout, kick};
use crate::protocol::{self, ClientFrame, FrameError};
use crate::socket::ConnHandle;
use crate::socket::outbox::writer;
use crate::socket::reader::client_stream;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Sends in flight per connection before the reader stops reading.
const MAX_INFLIGHT_SENDS: usize = 256;
/// How long a connection the server closed waits for the client's close
/// frame: long enough for a client to read the backlog queued before it.
const CLOSE_DRAIN: Duration = Duration::from_secs(10);

/// Serves one upgraded socket until it closes; `pre` is what the HTTP
/// server read past the handshake.
pub async fn run(fanout: Arc<Fanout>, user: AuthUser, tcp: TcpStream, pre: Bytes) {
    let cfg = fanout.cfg.clone();
    let (read, write) = tcp.into_split();
    let conn = Arc::new(ConnHandle::new(
        NEXT_CONN.fetch_add(1, Ordering::Relaxed),
        user.user_id.clone(),
        cfg.queue_frames,
        Some(write),
    ));
    // Admitted before its `hello`: a client that has its hello is this
    // user's newest session, so one that connects after it is newer (and
    // kicks it first under the session policy). Admitting after the hello
    // let two quick connections register in either order. A connection
    // kicked in between (a newer one admitted meanwhile) still gets its
    // `kicked` and close frame from the writer task below.
    fanout.admit(&conn).await;
    conn.push(protocol::hello(&user.user_id, &user.session_id));
    metrics::gauge!("emosation_fanout_connections").increment(1.0);
    let writer = {
        let (fanout, me) = (Arc::clone(&fanout), Arc::clone(&conn));
        // Keep the registration alive; a connection evicted by a newer one
        // (whose kick order was lost) learns it here.
        let keepalive = move || {
            let (fanout, conn) = (Arc::clone(&fanout), Arc::clone(&me));
            async move {
                let me = fanout.conn_ref(conn.id);
                if let Ok(false) = fanout.presence.refresh(&conn.user_id, &me, fanout.session_ttl()).await {
                    kick(&conn);
                }
            }
        };
        tokio::spawn(writer(Arc::clone(&conn), cfg.ping_interval, keepalive))
    };

    let mut stream = client_stream(pre, read, Arc::clone(&conn)).await;

    let sends = Arc::new(Semaphore::new(MAX_INFLIGHT_SENDS));
    // Whether the server ended the connection (full queue, kick, idle) while
    // the client may still be writing; see the closing handshake below.
    let mut server_closed = false;
    loop {
        let next = tokio::select! {
            _ = conn.closed() => {
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
            Ok(None) | Ok(Some(Err(_))) => break,
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
                    // Boxed: its view lookups' state is not part of the
                    // connection's idle task.
                    Ok(frame) => Box::pin(handle(&fanout, &conn, &user, frame, &sends)).await,
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
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }

    fanout.feed.hub().drop_conn(conn.id);
    fanout.remove_conn(conn.id);
    if let Err(e) = fanout
        .presence
        .unregister(&conn.user_id, &fanout.conn_ref(conn.id))
        .await
    {
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

async fn handle(
    fanout: &Arc<Fanout>,
    conn: &Arc<ConnHandle>,
    user: &AuthUser,
    frame: ClientFrame,
    sends: &Arc<Semaphore>,
) {
    match frame {
        ClientFrame::Subscribe {
            room_id,
            since,
            streams,
        } => {
            let member = access::member_room(&**fanout.feed.views(), &room_id, &user.user_id)
                .await
                .map_err(FrameError::from);
            let result = match member {
                Ok(_) => fanout
                    .feed
                    .subscribe(Arc::clone(conn), &room_id, since.as_deref(), streams)
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
        ClientFrame::Typing { room_id } => {
            let hub = fanout.feed.hub();
            if hub.is_subscribed(conn.id, &room_id) {
                hub.typing(conn.id, &room_id, &user.user_id);
            } else {
                conn.push(protocol::error(&FrameError::new(
                    "not_subscribed",
                    "subscribe to the room first",
                )));
            }
        }
        ClientFrame::Send {
            room_id,
            client_msg_id,
            text,
        } => {
            // Checked and appended here, in the order the frames arrived, so
            // a connection's sends are stored in the order sent; their answers
            // (acks carry client_msg_id) are awaited concurrently, bounded
            // per connection.
            let Ok(permit) = Arc::clone(sends).acquire_owned().await else {
                return;
            };
            let ingest = &fanout.ingest;
            let begun = match ingest.check_post(user, &room_id, &client_msg_id, &text).await {
                Ok(()) => ingest.begin_post(user, &room_id, &client_msg_id, &text),
                Err(e) => Err(e),
            };
            let answer = match begun {
                Ok(answer) => answer,
                Err(e) => {
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
