//! The embedded engine: the log and the view store on fjall, in the process
//! that uses them. The default for every port that needs durable storage.

mod entity_cache;
pub mod log;
pub mod views;

pub use log::EmbeddedLog;
pub use views::EmbeddedViewStore;
