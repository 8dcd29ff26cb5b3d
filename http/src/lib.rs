//! What every emosation HTTP service shares.
//!
//! # Layout
//! - [`error`]: [`ApiError`], the one error type handlers return, rendered as
//!   `{"error":{"code","message"}}`; internal errors say little to the client
//!   and everything to the log.
//! - [`json`]: [`ApiJson`], a JSON extractor whose rejections are [`ApiError`]s.
//! - [`auth`]: JWT issue and verification ([`TokenKeys`]) and the [`AuthUser`]
//!   extractor, which also refuses revoked sessions and deleted accounts.
//! - [`observe`]: request metrics middleware (labels from a closed set),
//!   `/metrics`, `/healthz`, `/readyz`, fallbacks.
//! - [`server`]: [`server::serve`], a router on a listener with connection
//!   hygiene (header, body and idle timeouts; caps per process and per
//!   client address), TLS, request ids.
//! - [`files`]: uploads (file names, declared types, image sizes) and
//!   downloads (`Range`, `Content-Disposition`, the headers that keep a
//!   stored file from running as a page).
//! - [`tls`]: [`tls::Tls`], the certificate and key (PEM) every listener
//!   serves HTTPS with, reloadable; [`tls::bridge`] for WebSockets over TLS.

pub mod auth;
pub mod client;
pub mod error;
pub mod files;
pub mod json;
pub mod observe;
pub mod server;
pub mod tls;

pub use auth::{AuthUser, Authenticator, TokenKeys, TokenPair};
pub use error::ApiError;
pub use json::{ApiJson, ApiPath, ApiQuery};
