//! One WebSocket connection.
//!
//! Two halves: the reader handles client frames (subscribe, send, typing…);
//! the writer drains the connection's bounded queue, coalescing whatever is
//! queued into one flush, and sends keepalive pings. Anything that must end
//! the connection — a full queue, a kick, an idle timeout — goes through
//! [`ConnHandle::close`], which the writer turns into a close frame.
//!
//! Memory: an idle connection holds its two tasks, its socket's small read
//! buffer and a [`ConnHandle`] whose queue is an empty `VecDeque` (no
//! allocation until frames queue up, released again once a burst that grew
//! it has drained). A tokio channel would allocate a block of 32 slots per
//! connection up front. The reader's frame handling, which awaits view
//! lookups and the hub, runs boxed, so it is not part of the idle task.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use emosation_http::rooms::member_room;
use emosation_http::{ApiError, AuthUser};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::Fanout;
use crate::frames::{self, ClientFrame, FrameError};

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Sends in flight per connection before the reader stops reading.
const MAX_INFLIGHT_SENDS: usize = 256;
/// Frames written per flush at most.
const COALESCE: usize = 64;
/// How long a connection the server closed waits for the client's close
/// frame: long enough for a client to read the backlog queued before it.
const CLOSE_DRAIN: Duration = Duration::from_secs(10);
/// A drained queue whose buffer grew past this many frames gives it back.
const KEEP_QUEUE: usize = 16;

/// The shareable side of a connection: its queue and its way to be closed.
pub struct ConnHandle {
    pub id: u64,
    pub user_id: String,
    /// Frames waiting for the writer, at most `capacity`.
    queue: Mutex<Outbox>,
    capacity: usize,
    /// Wakes the writer: frames were queued.
    queued: Notify,
    /// Wakes [`ConnHandle::push_waiting`]: the writer took frames.
    drained: Notify,
    closer: CancellationToken,
    /// Close code, reason and a last frame to send first (e.g. `kicked`).
    ending: Mutex<Option<(u16, &'static str, Option<Utf8Bytes>)>>,
}

/// A connection's queue, and whether it still takes frames: one lock per
/// delivered frame (the cancellation token has a lock of its own).
#[derive(Default)]
struct Outbox {
    frames: VecDeque<Utf8Bytes>,
    closed: bool,
}

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnHandle")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .finish()
    }
}

impl ConnHandle {
    pub(crate) fn new(id: u64, user_id: String, capacity: usize) -> ConnHandle {
        ConnHandle {
            id,
            user_id,
            queue: Mutex::new(Outbox::default()),
            capacity: capacity.max(1),
            queued: Notify::new(),
            drained: Notify::new(),
            closer: CancellationToken::new(),
            ending: Mutex::new(None),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `frame` unless the connection is closing (`Err(None)`) or its
    /// queue is full (`Err(Some(frame))`).
    fn try_push(&self, frame: Utf8Bytes) -> Result<(), Option<Utf8Bytes>> {
        let mut q = self.queue();
        if q.closed {
            return Err(None);
        }
        if q.frames.len() >= self.capacity {
            return Err(Some(frame));
        }
        q.frames.push_back(frame);
        drop(q);
        self.queued.notify_one();
        Ok(())
    }

    /// Queues a frame; a full queue closes the connection (1013): a slow
    /// client never slows its room.
    pub fn push(&self, frame: Utf8Bytes) -> bool {
        match self.try_push(frame) {
            Ok(()) => true,
            Err(Some(_)) => {
                metrics::counter!("emosation_fanout_slow_disconnects_total").increment(1);
                self.close(1013, "too slow: resume with since");
                false
            }
            Err(None) => false,
        }
    }

    /// Queues a frame, waiting for room (catch-up reads at the client's pace),
    /// but not forever.
    pub async fn push_waiting(&self, frame: Utf8Bytes) -> bool {
        let wait = async {
            let mut frame = frame;
            loop {
                // Registered before looking, so a drain in between is not missed.
                let drained = self.drained.notified();
                tokio::pin!(drained);
                drained.as_mut().enable();
                match self.try_push(frame) {
                    Ok(()) => return true,
                    Err(None) => return false,
                    Err(Some(f)) => frame = f,
                }
                tokio::select! {
                    _ = drained => {}
                    _ = self.closer.cancelled() => return false,
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), wait).await {
            Ok(queued) => queued,
            Err(_) => {
                self.close(1013, "too slow: resume with since");
                false
            }
        }
    }

    /// Takes up to `max` queued frames, oldest first, into `out`; false (and
    /// nothing taken) once the connection is closing.
    fn take(&self, out: &mut Vec<Utf8Bytes>, max: usize) -> bool {
        let mut q = self.queue();
        if q.closed {
            return false;
        }
        // Only a full queue has a `push_waiting` to wake: it waits after
        // finding the queue full, and only this writer takes frames out.
        let was_full = q.frames.len() >= self.capacity;
        let n = q.frames.len().min(max);
        out.extend(q.frames.drain(..n));
        if q.frames.is_empty() && q.frames.capacity() > KEEP_QUEUE {
            // A burst is over: an idle connection holds no large buffer.
            q.frames = VecDeque::new();
        }
        drop(q);
        if n > 0 && was_full {
            self.drained.notify_waiters();
        }
        true
    }

    pub fn close(&self, code: u16, reason: &'static str) {
        self.ending
            .lock()
            .expect("ending lock")
            .get_or_insert((code, reason, None));
        self.shut();
    }

    /// Takes no more frames, and tells both halves to end.
    fn shut(&self) {
        self.queue().closed = true;
        // The writer waits only on its queue: this wakes it to end.
        self.queued.notify_one();
        self.closer.cancel();
    }

    /// Ends this connection because a newer one of the same user replaced it.
    pub fn kick(&self) {
        self.ending.lock().expect("ending lock").get_or_insert((
            1008,
            "duplicate_session",
            Some(frames::kicked("duplicate_session")),
        ));
        self.shut();
    }

    pub fn is_closed(&self) -> bool {
        self.closer.is_cancelled()
    }
}

fn frame_error(e: ApiError, client_msg_id: Option<&str>) -> FrameError {
    FrameError {
        code: e.code,
        message: e.message,
        client_msg_id: client_msg_id.map(str::to_owned),
    }
}

/// Serves one upgraded socket until it closes.
pub async fn run(fanout: Arc<Fanout>, user: AuthUser, socket: WebSocket) {
    let cfg = fanout.cfg.clone();
    let (mut sink, mut stream) = socket.split();
    let conn = Arc::new(ConnHandle::new(
        NEXT_CONN.fetch_add(1, Ordering::Relaxed),
        user.user_id.clone(),
        cfg.queue_frames,
    ));
    if sink
        .send(Message::Text(frames::hello(&user.user_id, &user.session_id)))
        .await
        .is_err()
    {
        return;
    }
    fanout.admit(&conn).await;
    metrics::gauge!("emosation_fanout_connections").increment(1.0);

    let writer = {
        let conn = Arc::clone(&conn);
        let fanout_w = Arc::clone(&fanout);
        let ping_every = cfg.ping_interval;
        tokio::spawn(async move {
            let mut ping = tokio::time::interval(ping_every);
            ping.tick().await;
            let mut batch = Vec::new();
            // The writer waits on its queue alone (closing wakes it too, see
            // `shut`): one wake-up and one lock per delivery.
            loop {
                tokio::select! {
                    biased;
                    _ = conn.queued.notified() => {
                        // Whatever is queued goes out in one flush (in
                        // batches of COALESCE frames).
                        let open = loop {
                            if !conn.take(&mut batch, COALESCE) {
                                break false;
                            }
                            if batch.is_empty() {
                                break true;
                            }
                            for f in batch.drain(..) {
                                if sink.feed(Message::Text(f)).await.is_err() {
                                    conn.close(1011, "write failed");
                                    return;
                                }
                            }
                            if sink.flush().await.is_err() {
                                conn.close(1011, "write failed");
                                return;
                            }
                        };
                        if batch.capacity() > KEEP_QUEUE {
                            batch = Vec::new();
                        }
                        if !open {
                            break;
                        }
                    }
                    _ = ping.tick() => {
                        if sink.send(Message::Ping(Default::default())).await.is_err() {
                            conn.close(1011, "write failed");
                            return;
                        }
                        // Keep the registration alive; a connection evicted
                        // by a newer one (whose kick order was lost) learns
                        // it here.
                        let me = fanout_w.conn_ref(conn.id);
                        if let Ok(false) = fanout_w.presence.refresh(&conn.user_id, &me, fanout_w.session_ttl()).await {
                            conn.kick();
                        }
                    }
                }
            }
            let ending = conn.ending.lock().expect("ending lock").take();
            let (code, reason, last) = ending.unwrap_or((1000, "", None));
            if let Some(f) = last {
                let _ = sink.send(Message::Text(f)).await;
            }
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code,
                    reason: Utf8Bytes::from_static(reason),
                })))
                .await;
            let _ = sink.close().await;
        })
    };

    let sends = Arc::new(Semaphore::new(MAX_INFLIGHT_SENDS));
    // Whether the server ended the connection (full queue, kick, idle) while
    // the client may still be writing; see the closing handshake below.
    let mut server_closed = false;
    loop {
        let next = tokio::select! {
            _ = conn.closer.cancelled() => {
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
                    conn.push(frames::error(&FrameError::new(
                        "frame_too_large",
                        format!("frames are at most {} bytes", cfg.max_frame_bytes),
                    )));
                    continue;
                }
                match frames::parse(t.as_str()) {
                    // Boxed: its view lookups' state is not part of the
                    // connection's idle task.
                    Ok(frame) => Box::pin(handle(&fanout, &conn, &user, frame, &sends)).await,
                    Err(e) => {
                        conn.push(frames::error(&e));
                    }
                }
            }
            Message::Binary(_) => {
                conn.push(frames::error(&FrameError::new(
                    "unsupported_frame",
                    "binary frames are not supported; send JSON text frames",
                )));
            }
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }

    fanout.hub.drop_conn(conn.id);
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
            let member = member_room(&**fanout.hub.views(), &room_id, &user.user_id)
                .await
                .map_err(|e| frame_error(e, None));
            let result = match member {
                Ok(_) => fanout
                    .hub
                    .subscribe(Arc::clone(conn), &room_id, since.as_deref(), streams)
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                conn.push(frames::error(&e));
            }
        }
        ClientFrame::Unsubscribe { room_id } => {
            if fanout.hub.unsubscribe(conn.id, &room_id) {
                conn.push(frames::unsubscribed(&room_id));
            } else {
                conn.push(frames::error(&FrameError::new(
                    "not_subscribed",
                    "not subscribed to this room",
                )));
            }
        }
        ClientFrame::Typing { room_id } => {
            if fanout.hub.is_subscribed(conn.id, &room_id) {
                fanout.hub.typing(conn.id, &room_id, &user.user_id);
            } else {
                conn.push(frames::error(&FrameError::new(
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
            // Sends run concurrently (acks carry client_msg_id), bounded per connection.
            let Ok(permit) = Arc::clone(sends).acquire_owned().await else {
                return;
            };
            let (fanout, conn, user) = (Arc::clone(fanout), Arc::clone(conn), user.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let frame = match fanout.ingest.post(&user, &room_id, &client_msg_id, &text).await {
                    Ok(p) => frames::ack(&client_msg_id, &p.message_id, &p.cursor),
                    Err(e) => frames::error(&frame_error(e, Some(&client_msg_id))),
                };
                conn.push(frame);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &str) -> Utf8Bytes {
        Utf8Bytes::from(s.to_owned())
    }

    #[tokio::test]
    async fn push_waiting_waits_for_the_writer_to_take_from_a_full_queue() {
        let conn = Arc::new(ConnHandle::new(1, "u".into(), 2));
        assert!(conn.push(frame("a")) && conn.push(frame("b")));
        let waiting = tokio::spawn({
            let conn = Arc::clone(&conn);
            async move { conn.push_waiting(frame("c")).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the queue is full: it waits");
        let mut out = Vec::new();
        assert!(conn.take(&mut out, 1));
        assert!(waiting.await.unwrap(), "queued once the writer took a frame");
        out.clear();
        assert!(conn.take(&mut out, 8));
        assert_eq!(out, vec![frame("b"), frame("c")]);
        // Closing ends a waiting push, and the writer takes nothing more.
        assert!(conn.push(frame("d")) && conn.push(frame("e")));
        let waiting = tokio::spawn({
            let conn = Arc::clone(&conn);
            async move { conn.push_waiting(frame("f")).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        conn.close(1000, "");
        assert!(!waiting.await.unwrap());
        assert!(!conn.take(&mut out, 8));
    }
}
