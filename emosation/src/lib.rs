//! The `emosation` binary's library: command line, wiring of adapters to
//! services, and the all-in-one server.
//!
//! # Layout
//! - [`cli`]: the command line (`serve`, `replay`, `views checksum`, services).
//! - [`process`]: process-wide OS settings (transparent huge pages, thread
//!   priority) the binary applies.
//! - [`system`]: opens the engines named by URLs and starts services on them;
//!   [`system::Server`] is what tests start on `127.0.0.1:0`.

pub mod cli;
pub mod process;
pub mod system;
