//! [`CommandError`]: why a command was not carried out, independent of the
//! transport that carried it. The HTTP endpoints answer it as an
//! [`ApiError`] (one `From` below); the fan-out answers a WebSocket `send`
//! with an error frame (one `From` in ws-fanout's protocol). Both use
//! [`CommandError::code`], the contract's error code.

use std::time::Duration;

use emosation_core::Rejection;
use emosation_core::access::AccessError;
use emosation_core::ports::{LogError, StoreError};
use emosation_http::ApiError;
use emosation_http::auth::AuthError;

/// Why a command was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The input breaks the contract's rules (names the field).
    #[error("{0}")]
    Invalid(String),
    /// Refused by an early check on the views or by the fold's decision.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// Wrong username or password (which one is not said).
    #[error("wrong username or password")]
    InvalidCredentials,
    /// A token that is expired, forged, of the wrong kind, or whose session
    /// or account has ended.
    #[error("{0}")]
    InvalidToken(String),
    /// Over a rate limit (messages, logins, sign-ups, …); retry after
    /// `retry_after`.
    #[error("{message}")]
    RateLimited { message: String, retry_after: Duration },
    /// The server is at capacity for this kind of work (password hashing);
    /// retry after `retry_after`.
    #[error("{message}")]
    Overloaded { message: String, retry_after: Duration },
    /// Durably appended at `position`, but not decided within the decision
    /// timeout; a retry with the same `client_msg_id` is idempotent.
    #[error("the command is durably in the log at {position}, but the views have not decided it yet")]
    DecisionPending { position: String },
    /// A dependency is down or shutting down; the client may retry.
    #[error("{0}")]
    Unavailable(String),
    /// An upload over the limit (`payload_too_large`).
    #[error("the file is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    /// A failure of ours: logged in full where it is made, told to the
    /// client as "internal error".
    #[error("internal error")]
    Internal,
}

impl CommandError {
    /// The contract's error code.
    pub fn code(&self) -> &'static str {
        match self {
            CommandError::Invalid(_) => "invalid_request",
            CommandError::Rejected(r) => r.code(),
            CommandError::InvalidCredentials => "invalid_credentials",
            CommandError::InvalidToken(_) => "invalid_token",
            CommandError::RateLimited { .. } => "rate_limited",
            CommandError::Overloaded { .. } => "overloaded",
            CommandError::DecisionPending { .. } => "decision_pending",
            CommandError::Unavailable(_) => "unavailable",
            CommandError::TooLarge { .. } => "payload_too_large",
            CommandError::Internal => "internal",
        }
    }

    /// An internal failure: logged with its context, answered as
    /// [`CommandError::Internal`].
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(%context, error = %err, "internal error");
        CommandError::Internal
    }
}

impl From<StoreError> for CommandError {
    fn from(e: StoreError) -> Self {
        CommandError::internal("view store", e)
    }
}

impl From<LogError> for CommandError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Closed => CommandError::Unavailable("the log is shutting down".into()),
            LogError::Busy(why) => CommandError::Unavailable(why),
            // The append failed before it was acknowledged: the record may
            // or may not be stored, and a retry with the same
            // `client_msg_id` is stored at most once.
            LogError::Storage(why) => {
                tracing::error!(error = %why, "log storage error");
                CommandError::Unavailable("the log could not store the command; retry it".into())
            }
            other => CommandError::internal("log", other),
        }
    }
}

impl From<AccessError> for CommandError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::Refused(r) => r.into(),
            AccessError::Store(e) => e.into(),
        }
    }
}

impl From<AuthError> for CommandError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidToken(m) => CommandError::InvalidToken(m),
            AuthError::Store(e) => e.into(),
            AuthError::Internal => CommandError::Internal,
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        use axum::http::StatusCode as S;
        let status = match &e {
            CommandError::Invalid(_) => S::BAD_REQUEST,
            CommandError::Rejected(r) => return ApiError::from(*r),
            CommandError::InvalidCredentials | CommandError::InvalidToken(_) => S::UNAUTHORIZED,
            CommandError::RateLimited { .. } => S::TOO_MANY_REQUESTS,
            CommandError::DecisionPending { .. } | CommandError::Unavailable(_) | CommandError::Overloaded { .. } => {
                S::SERVICE_UNAVAILABLE
            }
            CommandError::TooLarge { .. } => S::PAYLOAD_TOO_LARGE,
            CommandError::Internal => S::INTERNAL_SERVER_ERROR,
        };
        let api = ApiError::new(status, e.code(), e.to_string());
        match e {
            CommandError::Unavailable(_) => api.with_retry_after(emosation_http::error::RETRY_UNAVAILABLE),
            CommandError::RateLimited { retry_after, .. } | CommandError::Overloaded { retry_after, .. } => {
                api.with_retry_after(retry_after)
            }
            _ => api,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answers_keep_the_contract_codes() {
        for r in [
            Rejection::UsernameTaken,
            Rejection::UnknownUser,
            Rejection::RoomExists,
            Rejection::RoomNotFound,
            Rejection::RoomFull,
            Rejection::NotMember,
            Rejection::MessageNotFound,
            Rejection::Malformed,
        ] {
            // The command's code and the HTTP answer's code are the same.
            assert_eq!(ApiError::from(CommandError::from(r)).code, r.code());
        }
        let cases = [
            (CommandError::Invalid("x".into()), 400, "invalid_request"),
            (CommandError::InvalidCredentials, 401, "invalid_credentials"),
            (CommandError::InvalidToken("t".into()), 401, "invalid_token"),
            (
                CommandError::RateLimited {
                    message: "m".into(),
                    retry_after: Duration::from_secs(1),
                },
                429,
                "rate_limited",
            ),
            (
                CommandError::Overloaded {
                    message: "m".into(),
                    retry_after: Duration::from_secs(1),
                },
                503,
                "overloaded",
            ),
            (
                CommandError::DecisionPending { position: "p".into() },
                503,
                "decision_pending",
            ),
            (CommandError::from(LogError::Closed), 503, "unavailable"),
            (
                CommandError::from(LogError::Storage("ENOSPC".into())),
                503,
                "unavailable",
            ),
            (CommandError::Internal, 500, "internal"),
        ];
        for (e, status, code) in cases {
            let unavailable = matches!(e, CommandError::Unavailable(_));
            let api = ApiError::from(e);
            assert_eq!((api.status.as_u16(), api.code), (status, code));
            if unavailable {
                assert!(api.retry_after.is_some(), "{code}: a retry is invited with Retry-After");
            }
        }
    }
}
