//! The in-process engine: presence and the decision feed for a deployment
//! whose services share one process.

pub mod decisions;
pub mod presence;

pub use decisions::LocalDecisions;
pub use presence::LocalPresence;
