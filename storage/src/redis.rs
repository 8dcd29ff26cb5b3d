//! The Redis engine: views, presence, rate limits and the decision feed
//! shared by every process of a deployment, over one connection layer
//! ([`conn`]).

pub mod conn;
pub mod decisions;
pub mod presence;
pub mod rate_limiter;
pub mod views;

pub use decisions::RedisDecisions;
pub use presence::RedisPresence;
pub use rate_limiter::RedisRateLimiter;
pub use views::RedisViewStore;
