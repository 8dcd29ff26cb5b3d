//! The socket layer: bytes and frames, no protocol decisions.
//!
//! - [`handshake`]: the opening handshake (RFC 6455 §4.2) and the takeover
//!   of the TCP stream from the HTTP server.
//! - [`codec`]: [`Frame`], complete server frames encoded once and shared.
//! - [`outbox`]: [`ConnHandle`], one connection's outgoing queue, inline
//!   writes and the writer task; closing.
//! - [`reader`]: the client's frames, read by tungstenite.

pub mod codec;
pub mod handshake;
pub mod outbox;
pub mod reader;

pub use codec::Frame;
pub use outbox::ConnHandle;
pub(crate) use outbox::Queued;
