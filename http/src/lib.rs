//! What every emosation HTTP service shares.
//!
//! # Layout
//! - [`error`]: [`ApiError`], the one error type handlers return, rendered as
//!   `{"error":{"code","message"}}`; internal errors say little to the client
//!   and everything to the log.
//! - [`json`]: [`ApiJson`], a JSON extractor whose rejections are [`ApiError`]s.
//! - [`auth`]: JWT issue and verification ([`TokenKeys`]) and the [`AuthUser`]
//!   extractor, which also refuses revoked sessions and deleted accounts.
//! - [`observe`]: request metrics middleware, `/metrics`, `/healthz`, fallbacks.

pub mod auth;
pub mod error;
pub mod json;
pub mod observe;

pub use auth::{AuthUser, Authenticator, TokenKeys, TokenPair};
pub use error::ApiError;
pub use json::{ApiJson, ApiPath, ApiQuery};
