//! The socket layer: bytes and frames, no protocol decisions.
//!
//! - [`handshake`]: the opening handshake (RFC 6455 §4.2) and the takeover
//!   of the connection's socket from the HTTP server.
//! - [`stream`]: [`Socket`], that socket: TCP, or the plaintext side of TLS.
//! - [`codec`]: [`Frame`], complete server frames encoded once and shared.
//! - [`outbox`]: [`ConnHandle`], one connection's outgoing queue, inline
//!   writes and the writer task; closing.
//! - [`reader`]: the client's frames, read by tungstenite.

pub mod codec;
pub mod handshake;
pub mod outbox;
pub mod reader;
pub mod stream;

pub use codec::Frame;
pub use outbox::ConnHandle;
pub(crate) use outbox::Queued;
pub use stream::Socket;
