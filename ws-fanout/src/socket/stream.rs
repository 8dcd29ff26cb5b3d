//! The socket a WebSocket runs on: the accepted TCP stream itself, or, for
//! a connection over TLS, one end of the socket pair that
//! [`emosation_http::tls::bridge`] encrypts to and from the client. Both
//! take the same non-blocking writes, so the writing code above is the same.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{TcpStream, UnixStream, tcp, unix};

/// A WebSocket's socket, before it is split.
#[derive(Debug)]
pub enum Socket {
    Tcp(TcpStream),
    /// The plaintext side of a TLS connection.
    Tls(UnixStream),
}

impl Socket {
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Socket::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Socket::Tls(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }
}

/// The socket's read side.
#[derive(Debug)]
pub enum ReadHalf {
    Tcp(tcp::OwnedReadHalf),
    Tls(unix::OwnedReadHalf),
}

impl AsyncRead for ReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

/// The socket's write side; dropping it shuts the socket down for writing.
#[derive(Debug)]
pub enum WriteHalf {
    Tcp(tcp::OwnedWriteHalf),
    Tls(unix::OwnedWriteHalf),
}

impl From<tcp::OwnedWriteHalf> for WriteHalf {
    fn from(w: tcp::OwnedWriteHalf) -> Self {
        WriteHalf::Tcp(w)
    }
}

impl WriteHalf {
    /// Writes what the socket takes without waiting (`WouldBlock`: nothing).
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            WriteHalf::Tcp(w) => w.try_write(buf),
            WriteHalf::Tls(w) => w.try_write(buf),
        }
    }

    /// As [`WriteHalf::try_write`], from several buffers in order.
    pub fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            WriteHalf::Tcp(w) => w.try_write_vectored(bufs),
            WriteHalf::Tls(w) => w.try_write_vectored(bufs),
        }
    }

    /// Resolves once the socket may take more.
    pub async fn writable(&self) -> io::Result<()> {
        match self {
            WriteHalf::Tcp(w) => w.writable().await,
            WriteHalf::Tls(w) => w.writable().await,
        }
    }
}
