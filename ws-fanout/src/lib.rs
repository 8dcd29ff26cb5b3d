//! WebSocket fan-out: `GET /v1/ws`.
//!
//! A fan-out node reads the log partitions of the rooms its sockets subscribe
//! to — and only those — and delivers every event it reads, in log order. It
//! learns what the fold decided about a record from the views, once the
//! projector's applied watermark has passed it: a message was accepted iff its
//! `Message` entity exists, a membership change iff its `RoomEvent` exists.
//! Sends go through ingest's command path, like HTTP; nothing bypasses the log.
//!
//! Each event's frame is encoded once and shared by all of the room's sockets.
//! A socket that cannot keep up overflows its bounded queue and is closed with
//! 1013; it resumes with `since`, reading what it missed from the log.
//!
//! # Layout
//! Layers, each calling only the ones below it:
//! - [`endpoint`]: the `/v1/ws` route — token check, then the handshake.
//! - [`session`]: one connection's loop — admission, client frames in,
//!   answers out; the protocol's decisions.
//! - [`node`]: [`Fanout`], this node — settings, its connections, the
//!   session policy shared with other nodes (kicks).
//! - [`feed`]: [`Feed`], the log side — partition tailers, catch-up from a
//!   cursor, what the fold decided.
//! - [`hub`]: [`Hub`], the registry of rooms → subscriptions, and delivery.
//! - [`here`]: room presence — who has a room open on any node — and the
//!   room signals (typing, arrivals, departures) relayed between nodes.
//! - [`protocol`]: the client's and the server's frames (JSON).
//! - [`socket`]: bytes — handshake, frame codec, outbox and writer, reader.

pub mod endpoint;
pub mod feed;
pub mod here;
pub mod hub;
pub mod node;
pub mod protocol;
pub mod session;
pub mod socket;

pub use endpoint::routes;
pub use feed::Feed;
pub use hub::Hub;
pub use node::{Fanout, FanoutConfig};
