//! A connection's bytes in: tungstenite reads the client's frames (masking,
//! UTF-8, fragments, control frames, size limits); what it writes itself
//! (pongs) joins the connection's outgoing queue.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::codec::without_close;
use super::stream::ReadHalf;
use super::{ConnHandle, Frame};

/// A client's frames, read by tungstenite (masking, UTF-8, fragments,
/// control frames, size limits).
pub type ClientStream = WebSocketStream<ReadSide>;

/// Opens the client's side of the connection: frames from `read` (after
/// `pre`, what the HTTP server read past the handshake), tungstenite's own
/// writes (pongs) queued on `conn`.
pub async fn client_stream(pre: Bytes, read: ReadHalf, conn: Arc<ConnHandle>) -> ClientStream {
    // Small buffers: an idle socket should cost little memory. Frames up to
    // 1 MiB are read (and answered with an error if over the protocol limit);
    // larger ones end the connection with 1009.
    let config = WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(0)
        .max_message_size(Some(1024 * 1024))
        .max_frame_size(Some(1024 * 1024));
    let side = ReadSide {
        pre: detach(pre),
        read,
        conn,
    };
    WebSocketStream::from_raw_socket(side, Role::Server, Some(config)).await
}

/// The socket's read side as tungstenite sees it: reads come from the
/// socket (after the bytes hyper read past the handshake); tungstenite's own
/// writes (pongs) join the connection's queue. Its close frames are left
/// out: the writer task sends the connection's one close frame.
pub struct ReadSide {
    pre: Bytes,
    read: ReadHalf,
    conn: Arc<ConnHandle>,
}

impl AsyncRead for ReadSide {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            if self.pre.is_empty() {
                // Read once: release its allocation.
                self.pre = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadSide {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let frames = without_close(buf);
        if !frames.is_empty() {
            self.conn.push(Frame::raw(Bytes::from(frames)));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What hyper read past the request, as bytes of their own: a slice of its
/// read buffer would keep the whole buffer (8 KiB and more) alive for as
/// long as the connection lives.
fn detach(pre: Bytes) -> Bytes {
    if pre.is_empty() {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(&pre)
    }
}
