//! The error every handler returns.

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use emosation_core::Rejection;
use emosation_core::access::AccessError;
use emosation_core::ports::{LogError, StoreError};
use serde_json::json;
use tracing::error;

/// How long a client is told to wait before retrying after `unavailable`:
/// long enough not to hammer a node that is failing, short enough that a
/// restarted node (or another behind the same address) is found soon.
pub const RETRY_UNAVAILABLE: Duration = Duration::from_secs(1);

/// An error answered to a client. `code` is part of the public contract.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Sent as `Retry-After` (whole seconds, rounded up): when the client
    /// may try again.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, answered with `Retry-After: after`.
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn invalid_token(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_token", message)
    }

    pub fn room_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "room_not_found", "room not found")
    }

    pub fn not_member() -> Self {
        Self::new(StatusCode::FORBIDDEN, "not_member", "you are not a member of this room")
    }

    /// An internal failure: logged in full, answered as a bare 500.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        error!(%context, error = %err, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }

    /// A dependency is down or too slow; the client may retry, after
    /// [`RETRY_UNAVAILABLE`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message).with_retry_after(RETRY_UNAVAILABLE)
    }

    /// This process is at a capacity limit; the client may retry after `after`.
    pub fn overloaded(message: impl Into<String>, after: Duration) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message).with_retry_after(after)
    }

    /// The request's body did not arrive in time.
    pub fn request_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message)
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub fn retry_after_secs(after: Duration) -> u64 {
    after.as_millis().div_ceil(1000).max(1) as u64
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut res = (self.status, Json(body)).into_response();
        if let Some(after) = self.retry_after {
            res.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, retry_after_secs(after).into());
        }
        if matches!(self.status, StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT) {
            // The rest of the body was never read, so the connection cannot
            // carry another request: say so, or a client reusing it would
            // see its next request fail.
            res.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        res
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::internal("view store", e)
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Closed => ApiError::unavailable("the log is shutting down"),
            LogError::Busy(why) => ApiError::unavailable(why),
            // An append that failed before it was acknowledged: the record
            // may or may not be stored, and a retry (the same
            // `client_msg_id`) is stored at most once.
            LogError::Storage(why) => {
                error!(error = %why, "log storage error");
                ApiError::unavailable("the log could not store the request; retry it")
            }
            other => ApiError::internal("log", other),
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        let status = match r {
            Rejection::UsernameTaken | Rejection::RoomExists | Rejection::RoomFull => StatusCode::CONFLICT,
            Rejection::UnknownUser | Rejection::RoomNotFound | Rejection::MessageNotFound => StatusCode::NOT_FOUND,
            Rejection::NotMember | Rejection::NotAuthor | Rejection::Blocked | Rejection::NotFriends => {
                StatusCode::FORBIDDEN
            }
            Rejection::NoRequest => StatusCode::NOT_FOUND,
            Rejection::MessageDeleted => StatusCode::CONFLICT,
            Rejection::Malformed | Rejection::InvalidAttachment => StatusCode::BAD_REQUEST,
            Rejection::SessionEnded => StatusCode::UNAUTHORIZED,
        };
        ApiError::new(status, r.code(), r.to_string())
    }
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::Refused(r) => r.into(),
            AccessError::Store(e) => e.into(),
        }
    }
}
