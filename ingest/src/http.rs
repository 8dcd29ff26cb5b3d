//! The command endpoints of the contract (`POST`s and `DELETE /v1/me`).

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, patch, post, put};
use emosation_http::auth::TokenKind;
use emosation_http::client::ClientAddr;
use emosation_http::{ApiError, ApiJson, ApiPath, ApiQuery, AuthUser, Authenticator, TokenPair};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use crate::{Ingest, cookie};

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
        .route("/v1/rooms/{room_id}/attachments", post(upload))
        .route(
            "/v1/rooms/{room_id}/messages/{message_id}",
            patch(edit_message).delete(delete_message),
        )
        .route("/v1/friends/requests", post(friend_request))
        .route("/v1/friends/requests/{user_id}", delete(relate("cancel")))
        .route("/v1/friends/requests/{user_id}/accept", post(relate("accept")))
        .route("/v1/friends/requests/{user_id}/decline", post(relate("decline")))
        .route("/v1/friends/{user_id}", delete(relate("remove")))
        .route("/v1/blocks/{user_id}", put(relate("block")).delete(relate("unblock")))
        .route("/v1/dms/{user_id}", post(open_dm))
        .route("/v1/admin/users/{user_id}", delete(admin_delete))
        .route("/v1/admin/users/{user_id}/restore", post(restore))
        .route("/v1/admin/users/{user_id}/admin", put(grant_admin).delete(revoke_admin))
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
    headers: HeaderMap,
    ApiJson(c): ApiJson<Credentials>,
) -> Result<Response, ApiError> {
    s.ingest.admit_login(&c.username, client).await?;
    let pair = s.ingest.login(&c.username, &c.password).await?;
    Ok(tokens(&s, &headers, pair))
}

/// The tokens of a login or refresh: all in the body, or (with
/// `X-Refresh-Cookie`) the refresh token in the cookie and the rest in the body.
fn tokens(s: &IngestState, headers: &HeaderMap, pair: TokenPair) -> Response {
    if !cookie::wanted(headers) {
        return axum::Json(pair).into_response();
    }
    let now = emosation_core::time::now_ms() / 1000;
    let max_age = s
        .ingest
        .authenticator()
        .keys
        .verify(&pair.refresh_token, TokenKind::Refresh)
        .map_or(0, |c| c.exp - now);
    (
        [(header::SET_COOKIE, cookie::set(headers, &pair.refresh_token, max_age))],
        axum::Json(json!({
            "access_token": pair.access_token,
            "token_type": pair.token_type,
            "expires_in": pair.expires_in,
            "user_id": pair.user_id,
        })),
    )
        .into_response()
}

/// The body of `POST /v1/auth/refresh`.
#[derive(Deserialize)]
pub struct RefreshBody {
    pub refresh_token: String,
}

/// The body of a refresh with `X-Refresh-Cookie`: may be empty or `{}`.
#[derive(Deserialize, Default)]
struct CookieRefreshBody {
    refresh_token: Option<String>,
}

async fn refresh(State(s): State<IngestState>, headers: HeaderMap, req: Request) -> Result<Response, ApiError> {
    if !cookie::wanted(&headers) {
        let ApiJson(b) = ApiJson::<RefreshBody>::from_request(req, &s).await?;
        return Ok(axum::Json(s.ingest.refresh(&b.refresh_token).await?).into_response());
    }
    let body = bytes::Bytes::from_request(req, &s)
        .await
        .map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(e.status(), "payload_too_large", "request body is too large")
            }
            _ => ApiError::invalid_request(e.body_text()),
        })?;
    let b = if body.iter().all(u8::is_ascii_whitespace) {
        CookieRefreshBody::default()
    } else {
        let ApiJson(b) = ApiJson::<CookieRefreshBody>::from_request(rebuilt(&headers, body), &s).await?;
        b
    };
    let Some(token) = b.refresh_token.or_else(|| cookie::read(&headers)) else {
        return Err(ApiError::from(crate::CommandError::InvalidToken(
            "no refresh token: neither in the body nor in the refresh cookie".into(),
        )));
    };
    match s.ingest.refresh(&token).await {
        Ok(pair) => Ok(tokens(&s, &headers, pair)),
        Err(e) => Ok(forget_cookie(&headers, ApiError::from(e))),
    }
}

/// A request with these headers and body, for an extractor.
fn rebuilt(headers: &HeaderMap, body: bytes::Bytes) -> Request {
    let mut req = Request::new(axum::body::Body::from(body));
    *req.headers_mut() = headers.clone();
    req
}

/// An error answered in cookie mode: a refused token also removes the cookie.
fn forget_cookie(headers: &HeaderMap, e: ApiError) -> Response {
    if e.status == StatusCode::UNAUTHORIZED {
        ([(header::SET_COOKIE, cookie::clear(headers))], e).into_response()
    } else {
        e.into_response()
    }
}

/// Logout by the access token (`Authorization: Bearer`), or, with
/// `X-Refresh-Cookie`, by the refresh cookie when there is no valid access
/// token; in cookie mode the cookie is removed.
async fn logout(
    State(s): State<IngestState>,
    headers: HeaderMap,
    user: Result<AuthUser, ApiError>,
) -> Result<Response, ApiError> {
    let cookie_mode = cookie::wanted(&headers);
    let user = match (user, cookie_mode.then(|| cookie::read(&headers)).flatten()) {
        (Ok(user), _) => user,
        (Err(_), Some(token)) => match s.ingest.authenticator().authenticate(&token, TokenKind::Refresh).await {
            Ok(c) => AuthUser {
                user_id: c.sub,
                username: c.name,
                session_id: c.sid,
                issued_at: c.iat,
            },
            Err(e) => return Ok(forget_cookie(&headers, ApiError::from(e))),
        },
        (Err(e), None) => return Err(e),
    };
    s.ingest.logout(&user).await?;
    if cookie_mode {
        return Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie::clear(&headers))]).into_response());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_me(State(s): State<IngestState>, user: AuthUser) -> Result<StatusCode, ApiError> {
    s.ingest.delete_account(&user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Who may call an admin endpoint: the holder of the shared admin token
/// (`X-Admin-Token`, the bootstrap: `token`), or a signed-in user with the
/// admin role (their user id). Anyone else is refused `403 forbidden`.
async fn admin(s: &IngestState, headers: &HeaderMap, user: Result<AuthUser, ApiError>) -> Result<String, ApiError> {
    if let (Some(expected), Some(given)) = (
        s.ingest.config().admin_token.as_deref(),
        headers.get("x-admin-token").and_then(|v| v.to_str().ok()),
    ) && constant_time_eq(given.as_bytes(), expected.as_bytes())
    {
        return Ok("token".into());
    }
    if let Ok(user) = user
        && s.ingest.is_admin(&user).await?
    {
        return Ok(user.user_id);
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "the admin role or the admin token is required",
    ))
}

async fn restore(
    State(s): State<IngestState>,
    headers: HeaderMap,
    user: Result<AuthUser, ApiError>,
    ApiPath(user_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let by = admin(&s, &headers, user).await?;
    s.ingest.restore_account(&user_id, &by).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn admin_delete(
    State(s): State<IngestState>,
    headers: HeaderMap,
    user: Result<AuthUser, ApiError>,
    ApiPath(user_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let by = admin(&s, &headers, user).await?;
    s.ingest.delete_user(&user_id, &by).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn grant_admin(
    State(s): State<IngestState>,
    headers: HeaderMap,
    user: Result<AuthUser, ApiError>,
    ApiPath(user_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let by = admin(&s, &headers, user).await?;
    let granted = s.ingest.set_admin(&user_id, true, &by).await?;
    Ok(axum::Json(json!({"user_id": user_id, "admin": granted})).into_response())
}

async fn revoke_admin(
    State(s): State<IngestState>,
    headers: HeaderMap,
    user: Result<AuthUser, ApiError>,
    ApiPath(user_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let by = admin(&s, &headers, user).await?;
    let granted = s.ingest.set_admin(&user_id, false, &by).await?;
    Ok(axum::Json(json!({"user_id": user_id, "admin": granted})).into_response())
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

/// The body of `POST /v1/rooms/{room_id}/messages`: `text` may be empty
/// (or left out) only when the message carries attachments.
#[derive(Deserialize)]
pub struct PostMessage {
    pub client_msg_id: String,
    #[serde(default)]
    pub text: String,
    /// Ids of the sender's uploads to this room.
    #[serde(default)]
    pub attachments: Vec<String>,
}

async fn post_message(
    State(s): State<IngestState>,
    user: AuthUser,
    ApiPath(room_id): ApiPath<String>,
    ApiJson(b): ApiJson<PostMessage>,
) -> Result<Response, ApiError> {
    let posted = s
        .ingest
        .post(&user, &room_id, &b.client_msg_id, &b.text, &b.attachments)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"message_id": posted.message_id, "cursor": posted.cursor})),
    )
        .into_response())
}

/// The query of `POST /v1/rooms/{room_id}/attachments`.
#[derive(Deserialize)]
struct UploadQuery {
    name: Option<String>,
}

/// `POST /v1/rooms/{room_id}/attachments`: the request body is the file,
/// streamed to the blob store; its name is `?name=` (else the
/// `X-File-Name` header, percent-encoded UTF-8, else `file`), its type the
/// `Content-Type` (sniffed from the first bytes when absent or
/// `application/octet-stream`).
async fn upload(
    State(s): State<IngestState>,
    user: AuthUser,
    ApiPath(room_id): ApiPath<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<UploadQuery>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let name = query.name.or_else(|| {
        let raw = headers.get("x-file-name")?.to_str().ok()?;
        Some(
            percent_encoding::percent_decode_str(raw)
                .decode_utf8_lossy()
                .into_owned(),
        )
    });
    let declared = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // The body stays reachable after the upload gave up on it, so that a
    // refusal can read (and drop) what the client is still sending.
    let body = Arc::new(tokio::sync::Mutex::new(body.into_data_stream()));
    let stream = futures_util::stream::unfold(Arc::clone(&body), |b| async move {
        let next = b.lock().await.next().await;
        next.map(|chunk| (chunk.map_err(std::io::Error::other), b))
    });
    let stored = s
        .ingest
        .upload(
            &user,
            &room_id,
            name.as_deref().unwrap_or("file"),
            declared,
            length,
            Box::pin(stream),
        )
        .await;
    match stored {
        Ok(stored) => Ok((StatusCode::CREATED, axum::Json(attachment_json(&stored))).into_response()),
        Err(e) => {
            if matches!(e, crate::CommandError::TooLarge { .. }) {
                drain(&body).await;
            }
            Err(e.into())
        }
    }
}

/// Bytes of a refused upload read and dropped so that the client, still
/// sending, reads the 413 instead of a reset connection (a socket closed
/// with unread input is reset, and the reset can destroy the answer).
const DRAIN_BYTES: usize = 8 * 1024 * 1024;

async fn drain(body: &tokio::sync::Mutex<axum::body::BodyDataStream>) {
    let mut body = body.lock().await;
    let mut left = DRAIN_BYTES;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while left > 0 {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => left = left.saturating_sub(chunk.len()),
            _ => return,
        }
    }
}

/// An attachment as the API shows it (the upload's answer; messages carry
/// the same fields but `room_id`, `sha256` and `uploaded_at`).
pub fn attachment_json(a: &emosation_core::view::AttachmentView) -> serde_json::Value {
    json!({
        "attachment_id": a.attachment_id,
        "room_id": a.room_id,
        "file_name": a.file_name,
        "size": a.size,
        "content_type": a.content_type,
        "width": a.width,
        "height": a.height,
        "sha256": a.sha256,
        "uploaded_at": emosation_core::time::rfc3339_millis(a.uploaded_at),
        "url": format!("/v1/attachments/{}", a.attachment_id),
    })
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

/// The body of `PATCH /v1/rooms/{room_id}/messages/{message_id}`.
#[derive(Deserialize)]
pub struct EditMessage {
    pub text: String,
}

async fn edit_message(
    State(s): State<IngestState>,
    user: AuthUser,
    ApiPath((room_id, message_id)): ApiPath<(String, String)>,
    ApiJson(b): ApiJson<EditMessage>,
) -> Result<Response, ApiError> {
    let c = s.ingest.edit_message(&user, &room_id, &message_id, &b.text).await?;
    Ok(axum::Json(json!({
        "room_id": room_id,
        "message_id": c.message_id,
        "edited_at": emosation_core::time::rfc3339_millis(c.at),
        "cursor": c.cursor,
    }))
    .into_response())
}

async fn delete_message(
    State(s): State<IngestState>,
    user: AuthUser,
    ApiPath((room_id, message_id)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let c = s.ingest.delete_message(&user, &room_id, &message_id).await?;
    Ok(axum::Json(json!({
        "room_id": room_id,
        "message_id": c.message_id,
        "deleted_at": emosation_core::time::rfc3339_millis(c.at),
        "cursor": c.cursor,
    }))
    .into_response())
}

/// The body of `POST /v1/friends/requests`: whom to ask, by username or id.
#[derive(Deserialize)]
pub struct FriendRequest {
    pub username: Option<String>,
    pub user_id: Option<String>,
}

/// What a relationship handler returns.
type Answer = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, ApiError>> + Send>>;

/// The handler of a relationship action on `/…/{user_id}` (accept,
/// decline, cancel, remove, block, unblock): one record, one answer shape.
fn relate(
    action: &'static str,
) -> impl Fn(State<IngestState>, AuthUser, ApiPath<String>) -> Answer + Clone + Send + Sync + 'static {
    move |State(s): State<IngestState>, user: AuthUser, ApiPath(other): ApiPath<String>| {
        Box::pin(async move { Ok(related(s.ingest.relate(&user, &other, action).await?)) })
    }
}

fn related(r: crate::Related) -> Response {
    axum::Json(json!({
        "user_id": r.other_id,
        "username": r.other_name,
        "status": r.status,
    }))
    .into_response()
}

async fn friend_request(
    State(s): State<IngestState>,
    user: AuthUser,
    ApiJson(b): ApiJson<FriendRequest>,
) -> Result<Response, ApiError> {
    let other_id = match (b.user_id, b.username) {
        (Some(id), _) => id,
        (None, Some(name)) => s.ingest.user_named(&name).await?.user_id,
        (None, None) => return Err(ApiError::invalid_request("give the username (or user_id) to ask")),
    };
    Ok(related(s.ingest.relate(&user, &other_id, "request").await?))
}

/// Opens (creating on first use) the direct-message room with a friend.
async fn open_dm(
    State(s): State<IngestState>,
    user: AuthUser,
    ApiPath(other): ApiPath<String>,
) -> Result<Response, ApiError> {
    let r = s.ingest.relate(&user, &other, "open").await?;
    Ok(axum::Json(json!({
        "room_id": r.room_id,
        "user_id": r.other_id,
        "username": r.other_name,
        "name": r.other_name,
        "direct": true,
    }))
    .into_response())
}
