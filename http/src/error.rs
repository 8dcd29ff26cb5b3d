//! The error every handler returns.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use emosation_core::Rejection;
use emosation_core::access::AccessError;
use emosation_core::ports::{LogError, StoreError};
use serde_json::json;
use tracing::error;

/// An error answered to a client. `code` is part of the public contract.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
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

    /// A dependency is down or too slow; the client may retry.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was never read, so the connection cannot
            // carry another request: say so, or a client reusing it would
            // see its next request fail.
            return (self.status, [(axum::http::header::CONNECTION, "close")], Json(body)).into_response();
        }
        (self.status, Json(body)).into_response()
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
            other => ApiError::internal("log", other),
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        let status = match r {
            Rejection::UsernameTaken | Rejection::RoomExists | Rejection::RoomFull => StatusCode::CONFLICT,
            Rejection::UnknownUser | Rejection::RoomNotFound | Rejection::MessageNotFound => StatusCode::NOT_FOUND,
            Rejection::NotMember => StatusCode::FORBIDDEN,
            Rejection::Malformed => StatusCode::BAD_REQUEST,
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
