//! The Redis engine: views, presence and the decision feed shared by every
//! process of a deployment, over one connection layer ([`conn`]).

pub mod conn;
pub mod decisions;
pub mod presence;
pub mod views;

pub use decisions::RedisDecisions;
pub use presence::RedisPresence;
pub use views::RedisViewStore;
