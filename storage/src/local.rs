//! The in-process engine: presence, rate limits and the decision feed for a
//! deployment whose services share one process.

pub mod decisions;
pub mod presence;
pub mod rate_limiter;

pub use decisions::LocalDecisions;
pub use presence::LocalPresence;
pub use rate_limiter::LocalRateLimiter;
