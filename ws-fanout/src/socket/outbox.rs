//! A connection's bytes out: [`ConnHandle`], its queue of whole frames and
//! the socket's write side, and the writer task.
//!
//! Every frame the server sends is a [`Frame`]: complete
//! WebSocket bytes, encoded once and shared. Whoever queues a frame on a
//! socket that is idle writes it at once, with a non-blocking write from its
//! own task: the hub's tailer delivering a room's event writes straight into
//! each subscriber's socket, the send path writes its `ack` itself. Only when
//! the kernel takes no more (the client reads slower than the room talks)
//! does the socket pass to the connection's writer task, which waits until it
//! is writable, writes what queued meanwhile in vectored writes of up to
//! [`COALESCE`] frames, and hands the socket back once the queue is empty.
//! Whoever holds the queue's lock decides who writes, so bytes never
//! interleave and frames leave in the order they were queued.
//!
//! Anything that must end the connection — a full queue, a kick, an idle
//! timeout — goes through [`ConnHandle::close`]: the queue takes no more
//! frames and the writer task ends the socket with a close frame.
//!
//! Memory: an idle connection's [`ConnHandle`] holds an empty `VecDeque`
//! (no allocation until frames queue up, released again once a burst that
//! grew it has drained).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Frame;
use super::stream::WriteHalf;

/// Frames written per (vectored) write at most.
const COALESCE: usize = 64;
/// How long the writer tries to get the last frames (a `kicked`, the close
/// frame) into a socket whose client does not read.
const CLOSE_WRITE: Duration = Duration::from_secs(5);
/// A drained queue whose buffer grew past this many frames gives it back
/// (a socket of a busy room keeps its buffer from one batch to the next
/// instead of growing it anew every time: 2 KiB).
const KEEP_QUEUE: usize = 64;

/// The shareable side of a connection: its outgoing queue and socket, and
/// its way to be closed.
pub struct ConnHandle {
    pub id: u64,
    pub user_id: String,
    out: Mutex<Outbox>,
    /// Frames queued at most; one more closes the connection (1013).
    capacity: usize,
    /// Wakes the writer task: the socket is its to drain, or the connection
    /// is closing.
    wake: Notify,
    /// Wakes [`ConnHandle::push_waiting`]: the writer took from a full queue.
    drained: Notify,
    closer: CancellationToken,
    /// Close code, reason and a last frame to send first (e.g. `kicked`).
    ending: Mutex<Option<(u16, &'static str, Option<Frame>)>>,
}

/// A connection's frames on their way out, and who may write them.
#[derive(Default)]
struct Outbox {
    /// Bytes not yet written: whole frames, except that the first may be
    /// the rest of a frame partly written (`partial`).
    frames: VecDeque<Bytes>,
    partial: bool,
    /// The writer task owns the socket (it waits for it to be writable):
    /// frames queue for it, nobody else writes.
    draining: bool,
    /// Takes no more frames: the connection is ending.
    closed: bool,
    /// The socket's write side; the writer task drops it at the end (which
    /// sends FIN). `None` before a socket is attached, and in unit tests.
    sock: Option<Arc<WriteHalf>>,
}

impl Outbox {
    /// Removes the first `n` bytes written.
    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.frames.front_mut() else {
                return;
            };
            if n < front.len() {
                front.advance(n);
                self.partial = true;
                return;
            }
            n -= front.len();
            self.frames.pop_front();
            self.partial = false;
        }
        if self.frames.is_empty() && self.frames.capacity() > KEEP_QUEUE {
            // A burst is over: an idle connection holds no large buffer.
            self.frames = VecDeque::new();
        }
    }
}

/// Writes as much of `frames` (up to [`COALESCE`] of them) as the socket
/// takes without waiting.
fn write_now<'a>(sock: &WriteHalf, frames: impl IntoIterator<Item = &'a Bytes>) -> io::Result<usize> {
    let mut slices = [IoSlice::new(&[]); COALESCE];
    let mut n = 0;
    for (slot, f) in slices.iter_mut().zip(frames) {
        *slot = IoSlice::new(f);
        n += 1;
    }
    if n == 1 {
        return sock.try_write(&slices[0]);
    }
    sock.try_write_vectored(&slices[..n])
}

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnHandle")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .finish()
    }
}

/// What [`ConnHandle::queue`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queued {
    /// Queued on an idle socket: the caller calls [`ConnHandle::flush`].
    Flush,
    /// Queued behind others; whoever queued the first writes it, or the
    /// writer task does.
    Behind,
    /// Not queued: the connection is ending (or this frame ended it).
    Dropped,
}

impl ConnHandle {
    pub(crate) fn new(id: u64, user_id: String, capacity: usize, sock: Option<WriteHalf>) -> ConnHandle {
        ConnHandle {
            id,
            user_id,
            out: Mutex::new(Outbox {
                sock: sock.map(Arc::new),
                ..Outbox::default()
            }),
            capacity: capacity.max(1),
            wake: Notify::new(),
            drained: Notify::new(),
            closer: CancellationToken::new(),
            ending: Mutex::new(None),
        }
    }

    fn out(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes the first `n` bytes written (by an inline flush or the
    /// writer task) and, if that made room in a full queue, wakes a
    /// [`ConnHandle::push_waiting`] (the only state one waits in).
    fn consume(&self, q: &mut Outbox, n: usize) {
        let was_full = q.frames.len() >= self.capacity;
        q.consume(n);
        if was_full && n > 0 {
            self.drained.notify_waiters();
        }
    }

    /// Queues `frame` unless the connection is closing (`Err(None)`) or its
    /// queue is full (`Err(Some(frame))`); `Ok(true)` if the socket is idle
    /// (the caller flushes).
    fn try_queue(&self, frame: Frame) -> Result<bool, Option<Frame>> {
        let mut q = self.out();
        if q.closed {
            return Err(None);
        }
        if q.frames.len() >= self.capacity {
            return Err(Some(frame));
        }
        let idle = q.frames.is_empty() && !q.draining;
        q.frames.push_back(frame.into_bytes());
        Ok(idle)
    }

    /// [`ConnHandle::queue`] for several frames, in order, under one lock:
    /// all of them, or (a queue they would overflow) the connection closes
    /// (1013) and none is queued.
    pub(crate) fn queue_all(&self, frames: impl ExactSizeIterator<Item = Frame>) -> Queued {
        let mut q = self.out();
        if q.closed {
            return Queued::Dropped;
        }
        if q.frames.len() + frames.len() > self.capacity {
            drop(q);
            metrics::counter!("emosation_fanout_slow_disconnects_total").increment(1);
            self.close(1013, "too slow: resume with since");
            return Queued::Dropped;
        }
        let idle = q.frames.is_empty() && !q.draining;
        q.frames.extend(frames.map(Frame::into_bytes));
        if idle { Queued::Flush } else { Queued::Behind }
    }

    /// The bytes queued and not yet written (tests look at deliveries to
    /// connections without a socket).
    #[cfg(test)]
    pub(crate) fn queued_bytes(&self) -> Vec<Bytes> {
        self.out().frames.iter().cloned().collect()
    }

    /// Queues a frame without writing it (a caller delivering to many
    /// sockets under a lock flushes them after). A full queue closes the
    /// connection (1013): a slow client never slows its room.
    pub(crate) fn queue(&self, frame: Frame) -> Queued {
        match self.try_queue(frame) {
            Ok(true) => Queued::Flush,
            Ok(false) => Queued::Behind,
            Err(Some(_)) => {
                metrics::counter!("emosation_fanout_slow_disconnects_total").increment(1);
                self.close(1013, "too slow: resume with since");
                Queued::Dropped
            }
            Err(None) => Queued::Dropped,
        }
    }

    /// Queues a frame and, if the socket is idle, writes it now; false if
    /// it was dropped (the connection is ending, or this frame overflowed
    /// its queue and ended it).
    pub fn push(&self, frame: Frame) -> bool {
        match self.queue(frame) {
            Queued::Flush => {
                self.flush();
                true
            }
            Queued::Behind => true,
            Queued::Dropped => false,
        }
    }

    /// Writes what is queued as far as the socket takes it without waiting;
    /// a rest goes to the writer task. Nothing to do if the writer task owns
    /// the socket already.
    pub(crate) fn flush(&self) {
        let mut q = self.out();
        if q.draining || q.closed || q.frames.is_empty() {
            return;
        }
        let Some(sock) = q.sock.as_ref() else {
            return;
        };
        match write_now(sock, &q.frames) {
            Ok(n) => {
                self.consume(&mut q, n);
                if q.frames.is_empty() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                drop(q);
                debug!(conn = self.id, error = %e, "write failed");
                self.close(1011, "write failed");
                return;
            }
        }
        q.draining = true;
        drop(q);
        self.wake.notify_one();
    }

    /// Queues a frame, waiting for room (catch-up reads at the client's pace),
    /// but not forever; then writes it if the socket is idle.
    pub async fn push_waiting(&self, frame: Frame) -> bool {
        let wait = async {
            let mut frame = frame;
            loop {
                // Registered before looking, so a drain in between is not missed.
                let drained = self.drained.notified();
                tokio::pin!(drained);
                drained.as_mut().enable();
                match self.try_queue(frame) {
                    Ok(idle) => return Some(idle),
                    Err(None) => return None,
                    Err(Some(f)) => frame = f,
                }
                tokio::select! {
                    _ = drained => {}
                    _ = self.closer.cancelled() => return None,
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), wait).await {
            Ok(Some(idle)) => {
                if idle {
                    self.flush();
                }
                true
            }
            Ok(None) => false,
            Err(_) => {
                self.close(1013, "too slow: resume with since");
                false
            }
        }
    }

    pub fn close(&self, code: u16, reason: &'static str) {
        self.end((code, reason, None));
    }

    /// Records how the connection ends, unless it is ending already (the
    /// first reason wins), and ends it.
    fn end(&self, ending: (u16, &'static str, Option<Frame>)) {
        {
            let mut current = self.ending.lock().expect("ending lock");
            if current.is_none() {
                count_close(ending.0, "server");
                *current = Some(ending);
            }
        }
        self.shut();
    }

    /// Takes no more frames, and tells both halves to end.
    pub(crate) fn shut(&self) {
        self.out().closed = true;
        self.wake.notify_one();
        self.closer.cancel();
    }

    /// Ends this connection with `last` (a `kicked`) before the close frame.
    pub fn end_with(&self, code: u16, reason: &'static str, last: Frame) {
        self.end((code, reason, Some(last)));
    }

    pub fn is_closed(&self) -> bool {
        self.closer.is_cancelled()
    }

    /// Resolves once the connection is closing.
    pub async fn closed(&self) {
        self.closer.cancelled().await
    }

    /// Whether the writer task is to drain the queue (taking the socket if
    /// frames wait and nobody writes them); `None` once closing.
    fn writer_turn(&self) -> Option<bool> {
        let mut q = self.out();
        if q.closed {
            return None;
        }
        if !q.frames.is_empty() {
            q.draining = true;
        }
        Some(q.draining)
    }

    /// The writer task's drain: writes the queue as the socket becomes
    /// writable, until it is empty (the socket goes back to inline writes)
    /// or the connection closes. Err if a write failed.
    async fn drain(&self, sock: &WriteHalf, batch: &mut Vec<Bytes>) -> io::Result<()> {
        loop {
            batch.clear();
            {
                let mut q = self.out();
                if q.closed {
                    return Ok(());
                }
                if q.frames.is_empty() {
                    q.draining = false;
                    return Ok(());
                }
                batch.extend(q.frames.iter().take(COALESCE).cloned());
            }
            tokio::select! {
                r = sock.writable() => r?,
                _ = self.closer.cancelled() => return Ok(()),
            }
            match write_now(sock, batch.iter()) {
                Ok(n) => self.consume(&mut self.out(), n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The writer's last words: the rest of a frame partly written (so the
    /// stream stays well formed), a last frame (`kicked`), the close frame.
    async fn finish(&self, sock: &WriteHalf) {
        let ending = self.ending.lock().expect("ending lock").take();
        let (code, reason, last) = ending.unwrap_or((1000, "", None));
        let rest = {
            let mut q = self.out();
            let rest = if q.partial { q.frames.pop_front() } else { None };
            q.frames = VecDeque::new();
            rest
        };
        let mut pieces: Vec<Bytes> = rest.into_iter().collect();
        pieces.extend(last.map(Frame::into_bytes));
        pieces.push(Frame::close(code, reason).into_bytes());
        let write_all = async {
            for mut piece in pieces {
                while piece.has_remaining() {
                    sock.writable().await?;
                    match sock.try_write(&piece) {
                        Ok(n) => piece.advance(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            io::Result::Ok(())
        };
        if let Ok(Err(e)) = tokio::time::timeout(CLOSE_WRITE, write_all).await {
            debug!(conn = self.id, error = %e, "cannot write the close frame");
        }
    }
}

/// Counts a connection's end in `emosation_fanout_closes_total{code,by}`:
/// `by` the server (its close frame's code) or the client (the code of its
/// close frame; 1005 for one without a code, 1006 for a connection that
/// ended without one). Codes outside RFC 6455's are counted as `other`.
pub(crate) fn count_close(code: u16, by: &'static str) {
    let code = match code {
        1000 => "1000",
        1001 => "1001",
        1002 => "1002",
        1003 => "1003",
        1005 => "1005",
        1006 => "1006",
        1007 => "1007",
        1008 => "1008",
        1009 => "1009",
        1010 => "1010",
        1011 => "1011",
        1012 => "1012",
        1013 => "1013",
        1014 => "1014",
        _ => "other",
    };
    metrics::counter!("emosation_fanout_closes_total", "code" => code, "by" => by).increment(1);
}

/// The connection's writer task: drains the queue when the socket is its,
/// pings every `ping_every` (then runs `keepalive`, the session's periodic
/// check), and ends the socket when the connection closes.
pub(crate) async fn writer<K, F>(conn: Arc<ConnHandle>, ping_every: Duration, keepalive: K)
where
    K: Fn() -> F,
    F: Future<Output = ()>,
{
    let Some(sock) = conn.out().sock.clone() else {
        return;
    };
    let mut ping = tokio::time::interval(ping_every);
    ping.tick().await;
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = conn.wake.notified() => {}
            _ = ping.tick() => {
                conn.push(Frame::ping());
                // Boxed: its state (view lookups) is not part of every idle
                // connection's writer task.
                Box::pin(keepalive()).await;
            }
        }
        match conn.writer_turn() {
            None => break,
            Some(false) => {}
            Some(true) => {
                if let Err(e) = conn.drain(&sock, &mut batch).await {
                    debug!(conn = conn.id, error = %e, "write failed");
                    conn.close(1011, "write failed");
                }
                if batch.capacity() > KEEP_QUEUE {
                    batch = Vec::new();
                }
            }
        }
    }
    conn.finish(&sock).await;
    // The last handle on the write side: dropping it sends FIN.
    conn.out().sock = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::tcp::OwnedReadHalf;
    use tokio::net::{TcpListener, TcpSocket, TcpStream};

    /// A connected pair on loopback with small kernel buffers, so that a
    /// client that does not read fills them quickly: the server's write
    /// side, and the client.
    async fn pair() -> (WriteHalf, OwnedReadHalf, TcpStream) {
        let listener = TcpSocket::new_v4().unwrap();
        listener.set_send_buffer_size(4096).unwrap();
        listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let listener: TcpListener = listener.listen(8).unwrap();
        let client = TcpSocket::new_v4().unwrap();
        client.set_recv_buffer_size(4096).unwrap();
        let (client, accepted) = tokio::join!(client.connect(addr), listener.accept());
        let (read, write) = accepted.unwrap().0.into_split();
        (WriteHalf::from(write), read, client.unwrap())
    }

    fn text(i: usize, size: usize) -> Frame {
        Frame::json(&serde_json::json!({"n": format!("{i:06}{}", "x".repeat(size))}))
    }

    /// Reads whole frames from the client's socket until `until` matches one
    /// (or the stream ends); returns them all.
    async fn read_frames(client: &mut TcpStream, buf: &mut Vec<u8>, until: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            while let Some((_, end)) = super::super::codec::split_frame(buf) {
                let f: Vec<u8> = buf.drain(..end).collect();
                let done = until(&f);
                out.push(f);
                if done {
                    return out;
                }
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut chunk))
                .await
                .expect("frames arrive")
                .unwrap();
            if n == 0 {
                return out;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn queued(conn: &ConnHandle) -> (usize, bool) {
        let q = conn.out();
        (q.frames.len(), q.draining)
    }

    #[tokio::test]
    async fn an_idle_socket_is_written_at_once_and_a_full_one_passes_to_the_writer() {
        let (write, _read, mut client) = pair().await;
        let conn = Arc::new(ConnHandle::new(1, "u".into(), 10_000, Some(write)));
        // Idle: written inline, nothing queued, no writer task needed.
        assert!(conn.push(text(0, 10)));
        assert_eq!(queued(&conn), (0, false));
        let mut buf = Vec::new();
        let got = read_frames(&mut client, &mut buf, |_| true).await;
        assert_eq!(got, vec![text(0, 10).bytes().to_vec()]);

        // The client stops reading: the kernel fills up, the rest queues for
        // the writer task (none runs yet, so it stays queued).
        let mut sent = vec![];
        for i in 1..=200 {
            assert!(conn.push(text(i, 1000)));
            sent.push(text(i, 1000).bytes().to_vec());
        }
        let (waiting, draining) = queued(&conn);
        assert!(draining && waiting > 0, "the socket is the writer's: {waiting} queued");
        // Frames queued meanwhile wait their turn (never written inline,
        // which would interleave with the writer's bytes).
        assert!(conn.push(text(201, 10)));
        sent.push(text(201, 10).bytes().to_vec());
        assert_eq!(queued(&conn), (waiting + 1, true));

        let task = tokio::spawn(writer(Arc::clone(&conn), Duration::from_secs(3600), || async {}));
        let last = sent.last().unwrap().clone();
        let got = read_frames(&mut client, &mut buf, |f| f == last.as_slice()).await;
        assert_eq!(got, sent, "every frame, whole and in order");
        // Drained: the socket is back to inline writes.
        tokio::time::timeout(Duration::from_secs(5), async {
            while queued(&conn) != (0, false) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the writer hands the socket back");
        assert!(conn.push(text(202, 10)));
        assert_eq!(queued(&conn), (0, false));

        // Closing: a close frame after what was written, then FIN.
        conn.close(1000, "bye");
        task.await.unwrap();
        let got = read_frames(&mut client, &mut buf, |_| false).await;
        assert_eq!(
            got,
            vec![
                text(202, 10).bytes().to_vec(),
                Frame::close(1000, "bye").bytes().to_vec()
            ]
        );
        assert!(!conn.push(text(203, 10)), "a closed connection takes no frames");
    }

    #[tokio::test]
    async fn overflowing_the_queue_closes_with_1013_after_whole_frames() {
        let (write, _read, mut client) = pair().await;
        let conn = Arc::new(ConnHandle::new(1, "u".into(), 8, Some(write)));
        let task = tokio::spawn(writer(Arc::clone(&conn), Duration::from_secs(3600), || async {}));
        let mut pushed = 0;
        while conn.push(text(pushed, 3000)) {
            pushed += 1;
            assert!(pushed < 10_000, "the queue overflows");
        }
        assert!(conn.is_closed());
        task.await.unwrap();
        let mut buf = Vec::new();
        let got = read_frames(&mut client, &mut buf, |_| false).await;
        let (close, data) = got.split_last().unwrap();
        assert_eq!(
            close,
            Frame::close(1013, "too slow: resume with since").bytes().as_ref()
        );
        // Whatever the kernel had taken arrives whole and in order (a frame
        // cut by the close would not parse); the queued rest is dropped.
        assert!(!data.is_empty() && data.len() < pushed);
        for (i, f) in data.iter().enumerate() {
            assert_eq!(f, text(i, 3000).bytes().as_ref());
        }
    }

    #[tokio::test]
    async fn push_waiting_waits_for_room_and_ends_on_close() {
        let (write, _read, mut client) = pair().await;
        let conn = Arc::new(ConnHandle::new(1, "u".into(), 4, Some(write)));
        // Fill the kernel buffers and the queue (no writer task yet).
        let mut i = 0;
        while queued(&conn).0 < 4 {
            assert!(conn.push(text(i, 3000)));
            i += 1;
        }
        let waiting = tokio::spawn({
            let conn = Arc::clone(&conn);
            async move { conn.push_waiting(text(i, 10)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the queue is full: it waits");
        // The client reads, the writer drains: the waiting frame goes out last.
        let task = tokio::spawn(writer(Arc::clone(&conn), Duration::from_secs(3600), || async {}));
        let mut buf = Vec::new();
        let last = text(i, 10).bytes().to_vec();
        let got = read_frames(&mut client, &mut buf, |f| f == last.as_slice()).await;
        assert!(waiting.await.unwrap());
        assert_eq!(got.len(), i + 1);

        // Queued to the brim by a caller that flushes later (the hub): that
        // flush makes room, and wakes the waiting push.
        let (write, _read3, mut client3) = pair().await;
        let conn3 = Arc::new(ConnHandle::new(3, "u".into(), 2, Some(write)));
        assert_eq!(conn3.queue(text(0, 10)), Queued::Flush);
        assert_eq!(conn3.queue(text(1, 10)), Queued::Behind);
        let waiting = tokio::spawn({
            let conn = Arc::clone(&conn3);
            async move { conn.push_waiting(text(2, 10)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the queue is full: it waits");
        conn3.flush();
        assert!(
            tokio::time::timeout(Duration::from_secs(5), waiting)
                .await
                .unwrap()
                .unwrap()
        );
        let mut buf3 = Vec::new();
        let last = text(2, 10).bytes().to_vec();
        assert_eq!(
            read_frames(&mut client3, &mut buf3, |f| f == last.as_slice())
                .await
                .len(),
            3
        );

        // A push waiting on a full queue ends when the connection closes.
        let (write, _read2, _client2) = pair().await;
        let conn = Arc::new(ConnHandle::new(2, "u".into(), 1, Some(write)));
        while queued(&conn).0 < 1 {
            assert!(conn.push(text(0, 3000)));
        }
        let waiting = tokio::spawn({
            let conn = Arc::clone(&conn);
            async move { conn.push_waiting(text(1, 10)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        conn.close(1000, "");
        assert!(!waiting.await.unwrap());
        conn.close(1000, "");
        task.abort();
    }
}
