//! The embedded engine: the log and the view store on fjall, and the blob
//! store on files, in the process that uses them. The default for every port
//! that needs durable storage.

pub mod blobs;
mod entity_cache;
pub mod log;
pub mod views;

pub use blobs::FsBlobStore;
pub use log::EmbeddedLog;
pub use views::EmbeddedViewStore;
