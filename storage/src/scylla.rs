//! The Scylla engine: the view store on a Scylla (or Cassandra) cluster.

pub mod views;

pub use views::{ScyllaConfig, ScyllaViewStore};
