//! The command endpoints of the contract (`POST`s and `DELETE /v1/me`).

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use emosation_http::client::ClientAddr;
use emosation_http::{ApiError, ApiJson, ApiPath, AuthUser, Authenticator};
use serde::Deserialize;
use serde_json::json;

use crate::Ingest;

#[derive(Clone)]
pub struct IngestState {
    pub ingest: Arc<Ingest>,
}

impl FromRef<IngestState> for Arc<Authenticator> {
    fn from_ref(s: &IngestState) -> Self {
        Arc::clone(s.ingest.authenticator())
    }
}

/// The command routes, ready to merge with other services' routes.
pub fn routes(ingest: Arc<Ingest>) -> Router {
    Router::new()
        .route("/v1/auth/signup", post(signup))
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/auth/logout", post(logout))
        .route("/v1/me", delete(delete_me))
        .route("/v1/rooms", post(create_room))
        .route("/v1/rooms/{room_id}/join", post(join))
        .route("/v1/rooms/{room_id}/quit", post(quit))
        .route("/v1/rooms/{room_id}/messages", post(post_message))
        .route("/v1/rooms/{room_id}/read", post(mark_read))
        .route("/v1/admin/users/{user_id}/restore", post(restore))
        .with_state(IngestState { ingest })
}

/// The body of `POST /v1/auth/signup` and `POST /v1/auth/login` (public so
/// that the fuzz targets in `fuzz/` extract it as the handlers do).
#[derive(Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

async fn signup(
    State(s): State<IngestState>,
    ClientAddr(client): ClientAddr,
    ApiJson(c): ApiJson<Credentials>,
) -> Result<Response, ApiError> {
    s.ingest.admit_signup(client).await?;
    let (user_id, username) = s.ingest.signup(&c.username, &c.password).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"user_id": user_id, "username": username})),
    )
        .into_response())
}

async fn login(
    State(s): State<IngestState>,
    ClientAddr(client): ClientAddr,
    ApiJson(c): ApiJson<Credentials>,
) -> Result<Response, ApiError> {
    s.ingest.admit_login(&c.username, client).await?;
    let pair = s.ingest.login(&c.username, &c.password).await?;
    Ok(axum::Json(pair).into_response())
}

/// The body of `POST /v1/auth/refresh`.
#[derive(Deserialize)]
pub struct RefreshBody {
    pub refresh_token: String,
}

async fn refresh(State(s): State<IngestState>, ApiJson(b): ApiJson<RefreshBody>) -> Result<Response, ApiError> {
    Ok(axum::Json(s.ingest.refresh(&b.refresh_token).await?).into_response())
}

async fn logout(State(s): State<IngestState>, user: AuthUser) -> Result<StatusCode, ApiError> {
    s.ingest.logout(&user).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_me(State(s): State<IngestState>, user: AuthUser) -> Result<StatusCode, ApiError> {
    s.ingest.delete_account(&user).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn restore(
    State(s): State<IngestState>,
    headers: HeaderMap,
    ApiPath(user_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let Some(expected) = s.ingest.config().admin_token.as_deref() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "admin endpoints are disabled",
        ));
    };
    let given = headers
        .get("x-admin-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "admin token required",
        ));
    }
    s.ingest.restore_account(&user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The body of `POST /v1/rooms`.
#[derive(Deserialize)]
pub struct CreateRoom {
    pub name: String,
    pub capacity: Option<i64>,
}

async fn create_room(
    State(s): State<IngestState>,
    user: AuthUser,
    ApiJson(b): ApiJson<CreateRoom>,
) -> Result<Response, ApiError> {
    let room = s.ingest.create_room(&user, &b.name, b.capacity).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "room_id": room.room_id,
            "name": room.name,
            "capacity": room.capacity,
            "owner_id": room.owner_id,
            "member_count": room.member_count,
        })),
    )
        .into_response())
}

async fn join(
    State(s): State<IngestState>,
    user: AuthUser,
    ApiPath(room_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let member_count = s.ingest.join(&user, &room_id).await?;
    Ok(axum::Json(json!({"room_id": room_id, "member_count": member_count})).into_response())
}

async fn quit(
    State(s): State<IngestState>,
    user: AuthUser,
    ApiPath(room_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let member_count = s.ingest.quit(&user, &room_id).await?;
    Ok(axum::Json(json!({"room_id": room_id, "member_count": member_count})).into_response())
}

/// The body of `POST /v1/rooms/{room_id}/messages`.
#[derive(Deserialize)]
pub struct PostMessage {
    pub client_msg_id: String,
    pub text: String,
}

async fn post_message(
    State(s): State<IngestState>,
    user: AuthUser,
    ApiPath(room_id): ApiPath<String>,
    ApiJson(b): ApiJson<PostMessage>,
) -> Result<Response, ApiError> {
    let posted = s.ingest.post(&user, &room_id, &b.client_msg_id, &b.text).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"message_id": posted.message_id, "cursor": posted.cursor})),
    )
        .into_response())
}

/// The body of `POST /v1/rooms/{room_id}/read`.
#[derive(Deserialize)]
pub struct MarkRead {
    pub message_id: String,
}

async fn mark_read(
    State(s): State<IngestState>,
    user: AuthUser,
    ApiPath(room_id): ApiPath<String>,
    ApiJson(b): ApiJson<MarkRead>,
) -> Result<StatusCode, ApiError> {
    s.ingest.mark_read(&user, &room_id, &b.message_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
