//! The I/O-free heart of emosation.
//!
//! Everything that must behave identically in every process and on every replay
//! lives here: the records written to the log, the ids derived from log
//! positions, the deterministic [`fold`] that turns records into view entities,
//! and the port traits ([`ports::Log`], [`ports::ViewStore`]) that adapters
//! implement. No networking, no files, no clocks: the fold reads time only from
//! the records it is given.
//!
//! # Layout
//! - [`limits`]: the contract's limits on a record's ids and strings.
//! - [`ids`]: log positions, message ids and cursors, topic names, the partitioner.
//! - [`record`]: the commands as they are stored on the log (one Avro schema each).
//! - [`view`]: view entities and their keys; [`view::MemState`], a whole state in memory.
//! - [`bulk`]: write-once entities encoded for a bulk load.
//! - [`fold`]: `fold(state, position, record) -> outcome`, and the keys a record reads.
//! - [`emotion`]: emotion labels and classifications.
//! - [`access`]: the room-exists and caller-is-a-member checks, on the views.
//! - [`ports`]: the log, view-store, decisions and classifier contracts.
//! - [`time`]: RFC 3339 formatting of record timestamps.

pub mod access;
pub mod bulk;
pub mod emotion;
pub mod fold;
pub mod ids;
pub mod limits;
pub mod ports;
pub mod record;
pub mod time;
pub mod view;

pub use fold::{Accepted, Outcome, Rejection, fold, keys_read_by};
pub use ids::{LogPosition, Topic};
pub use record::Record;
pub use view::{FoldState, ViewKey, ViewValue};
