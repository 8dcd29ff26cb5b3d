//! Adapters for the ports of `emosation-core`, picked by URL scheme.
//!
//! # Layout
//! - [`embedded_log`]: [`EmbeddedLog`], the durable partitioned log on fjall with
//!   group commit: the default, needs nothing else installed.
//! - [`embedded_views`]: [`EmbeddedViewStore`], the view store on fjall.
//! - [`local_decisions`]: [`LocalDecisions`], the in-process decision feed.
//! - [`scylla_views`]: [`ScyllaViewStore`], the view store on ScyllaDB
//!   (`scylla://host:port[,…][/keyspace]`), same contract and checksum as the
//!   embedded one. Connecting is async, so the binary opens it itself.
//! - [`open_log`] / [`open_views`]: URL → adapter (`embedded://PATH` or a bare
//!   path). Kafka, ScyllaDB and Redis adapters join here behind their schemes.

use std::path::PathBuf;
use std::sync::Arc;

use emosation_core::ids::Topology;
use emosation_core::ports::{Log, ViewStore};

pub mod embedded_log;
pub mod embedded_views;
pub mod local_decisions;
pub mod scylla_views;

pub use embedded_log::EmbeddedLog;
pub use embedded_views::EmbeddedViewStore;
pub use local_decisions::LocalDecisions;
pub use scylla_views::{ScyllaConfig, ScyllaViewStore};

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("unsupported {what} URL {url:?}: {reason}")]
    Unsupported {
        what: &'static str,
        url: String,
        reason: &'static str,
    },
    #[error("cannot open {what} at {path}: {reason}")]
    Open {
        what: &'static str,
        path: String,
        reason: String,
    },
}

/// Splits `embedded://PATH` (or a bare path) into the path; `None` for other schemes.
fn embedded_path(url: &str) -> Option<PathBuf> {
    if let Some(rest) = url.strip_prefix("embedded://") {
        return Some(PathBuf::from(rest));
    }
    if url.contains("://") {
        None
    } else {
        Some(PathBuf::from(url))
    }
}

/// Opens the log named by `url`.
pub fn open_log(url: &str, topology: Topology) -> Result<Arc<dyn Log>, OpenError> {
    match embedded_path(url) {
        Some(path) => Ok(Arc::new(EmbeddedLog::open(&path, topology)?)),
        None => Err(OpenError::Unsupported {
            what: "log",
            url: url.to_owned(),
            reason: "this build supports embedded://PATH only",
        }),
    }
}

/// Opens the view store named by `url`.
pub fn open_views(url: &str) -> Result<Arc<dyn ViewStore>, OpenError> {
    match embedded_path(url) {
        Some(path) => Ok(Arc::new(EmbeddedViewStore::open(&path)?)),
        None => Err(OpenError::Unsupported {
            what: "view store",
            url: url.to_owned(),
            reason: "this build supports embedded://PATH only",
        }),
    }
}
