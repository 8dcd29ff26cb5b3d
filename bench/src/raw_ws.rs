//! A minimal WebSocket client for load generators: a fixed upgrade request
//! and raw frames (no JSON parsing, no per-frame allocation beyond the read
//! buffer), so that one core of load keeps ahead of the server's.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether the server under test is the Socket.IO peer (`bench/peers/socketio`):
/// then a socket opens at `/socket.io/` and joins the default namespace, and
/// every client frame goes inside an event (`42["f",<frame>]`; see [`wrap`]).
/// Server frames need no unwrapping: the generator finds what it reads in a
/// payload by searching it (`"type":"ack"`, `"text":"t=…`), which Socket.IO's
/// `42["f",{…}]` contains unchanged. One server is driven at a time, so this
/// is set once per server by the `ws` benchmark.
static SOCKET_IO: AtomicBool = AtomicBool::new(false);

/// Drive the Socket.IO peer (true) or emosation's own protocol (false).
pub fn use_socket_io(on: bool) {
    SOCKET_IO.store(on, Ordering::Relaxed);
}

/// Whether [`use_socket_io`] is on.
pub fn socket_io() -> bool {
    SOCKET_IO.load(Ordering::Relaxed)
}

/// A client frame as the server under test takes it: unchanged, or inside
/// Socket.IO's event packet.
pub fn wrap(frame: &str) -> Cow<'_, str> {
    if socket_io() {
        Cow::Owned(format!("42[\"f\",{frame}]"))
    } else {
        Cow::Borrowed(frame)
    }
}

/// The upgrade request's path and query for `token`.
pub fn ws_path(token: &str) -> String {
    if socket_io() {
        format!("/socket.io/?EIO=4&transport=websocket&token={token}")
    } else {
        format!("/v1/ws?access_token={token}")
    }
}

/// Connects to `/v1/ws` with `token` and completes the upgrade; returns the
/// stream and the bytes read past the handshake (the start of the `hello`).
/// On the Socket.IO peer it also takes the Engine.IO `open` packet and joins
/// the default namespace (`40` → `40{…}`).
pub async fn handshake(addr: &str, token: &str) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let path = ws_path(token);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed during the handshake");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            anyhow::ensure!(
                buf.starts_with(b"HTTP/1.1 101"),
                "upgrade refused: {}",
                String::from_utf8_lossy(&buf)
            );
            let rest = buf.split_off(end + 4);
            if socket_io() {
                return join_namespace(s, rest).await;
            }
            return Ok((s, rest));
        }
    }
}

/// Socket.IO: waits for Engine.IO's `open` (`0{…}`), joins the default
/// namespace (`40`) and waits for its answer (`40{…}`); returns the bytes
/// read past it.
async fn join_namespace(mut s: TcpStream, mut buf: Vec<u8>) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let mut chunk = [0u8; 1024];
    let mut joined = false;
    loop {
        while let Some((payload, used)) = frame(&buf) {
            let (open, connected) = (payload.starts_with(b"0{"), payload.starts_with(b"40"));
            anyhow::ensure!(
                !payload.starts_with(b"44"),
                "namespace refused: {}",
                String::from_utf8_lossy(payload)
            );
            buf.drain(..used);
            if open && !joined {
                s.write_all(&masked(b"40")).await?;
                joined = true;
            } else if connected {
                return Ok((s, buf));
            }
        }
        let n = s.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed while joining the namespace");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// [`handshake`], then reads the `hello`.
pub async fn connect(addr: &str, token: &str) -> anyhow::Result<TcpStream> {
    let (mut s, rest) = handshake(addr, token).await?;
    read_frame(&mut s, rest).await?;
    Ok(s)
}

/// The first whole server frame in `buf`: its payload and the bytes it takes.
pub fn frame(buf: &[u8]) -> Option<(&[u8], usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (len, head) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            (u64::from_be_bytes(buf[2..10].try_into().ok()?) as usize, 10)
        }
        n => (n as usize, 2),
    };
    (buf.len() >= head + len).then(|| (&buf[head..head + len], head + len))
}

/// Reads one server frame's payload, given bytes already read (anything
/// after the frame is dropped: for request–answer steps only).
pub async fn read_frame(s: &mut TcpStream, mut buf: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some((payload, _)) = frame(&buf) {
            return Ok(payload.to_vec());
        }
        let n = s.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A client text frame, masked with a zero mask (the payload unchanged).
pub fn masked(p: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(p.len() + 8);
    f.push(0x81);
    if p.len() < 126 {
        f.push(0x80 | p.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(p.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(p);
    f
}

/// Sends a client text frame (wrapped for the server under test: [`wrap`]).
pub async fn send_text(s: &mut TcpStream, text: &str) -> anyhow::Result<()> {
    s.write_all(&masked(wrap(text).as_bytes())).await?;
    Ok(())
}

/// Connects and subscribes to `room` with `streams` (a JSON array), waiting
/// for `subscribed` (the `hello` before it is skipped). While the node
/// answers `not_member` (a fan-out node's replica of the views has not
/// folded the join yet) or `unavailable` (its log did not answer in time)
/// it asks again, as a client would, for up to 60 s.
pub async fn subscribe(addr: &str, token: &str, room: &str, streams: &str) -> anyhow::Result<TcpStream> {
    let (mut s, mut buf) = handshake(addr, token).await?;
    let sub = format!("{{\"type\":\"subscribe\",\"room_id\":\"{room}\",\"streams\":{streams}}}");
    send_text(&mut s, &sub).await?;
    let started = Instant::now();
    let mut chunk = [0u8; 1024];
    loop {
        while let Some((payload, used)) = frame(&buf) {
            let text = String::from_utf8_lossy(payload).into_owned();
            buf.drain(..used);
            if text.contains("\"subscribed\"") {
                anyhow::ensure!(buf.is_empty(), "frames after subscribed during set-up");
                return Ok(s);
            }
            if (text.contains("not_member") || text.contains("\"unavailable\""))
                && started.elapsed() < Duration::from_secs(60)
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                send_text(&mut s, &sub).await?;
                continue;
            }
            anyhow::ensure!(!text.contains("\"error\""), "subscribe: {text}");
        }
        let n = s.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed while subscribing");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The decimal number right after `tag` in `s`.
pub fn number_after(s: &[u8], tag: &[u8]) -> Option<u64> {
    let at = s.windows(tag.len()).position(|w| w == tag)? + tag.len();
    let mut n: u64 = 0;
    let mut digits = 0;
    for &c in &s[at..] {
        if !c.is_ascii_digit() {
            break;
        }
        n = n * 10 + u64::from(c - b'0');
        digits += 1;
    }
    (digits > 0).then_some(n)
}

/// What a load generator's message text starts with: `t=<send µs> c<sender>
/// n<sequence>`, found with one search per frame (std's substring search;
/// a million deliveries a second on one core leaves ~1 µs for each).
pub fn stamp(payload: &[u8]) -> Option<(u64, u64, u64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut rest = &text[text.find("\"text\":\"t=")? + 10..];
    let mut next = |tag: Option<&str>| -> Option<u64> {
        if let Some(tag) = tag {
            rest = rest.strip_prefix(tag)?;
        }
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let n = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        Some(n)
    };
    Some((next(None)?, next(Some(" c"))?, next(Some(" n"))?))
}

/// Reads server frames from `s` until it closes (or `on_batch` says stop),
/// handing each read's stamped messages ([`stamp`]: send time, sender,
/// sequence) to `on_batch` with the time they were read, in µs. One read
/// takes every frame waiting; `chunk` bytes at most per read.
pub async fn read_stamps(s: &mut TcpStream, chunk: usize, mut on_batch: impl FnMut(u64, &[(u64, u64, u64)]) -> bool) {
    let mut buf: Vec<u8> = Vec::with_capacity(chunk);
    let mut read = vec![0u8; chunk];
    let mut stamps = Vec::new();
    while let Ok(n) = s.read(&mut read).await {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&read[..n]);
        let now = crate::now_us();
        let mut at = 0;
        while let Some((payload, used)) = frame(&buf[at..]) {
            at += used;
            stamps.extend(stamp(payload));
        }
        buf.drain(..at);
        if buf.capacity() > 2 * chunk {
            buf.shrink_to(chunk);
        }
        if !stamps.is_empty() && !on_batch(now, &stamps) {
            break;
        }
        stamps.clear();
    }
}
