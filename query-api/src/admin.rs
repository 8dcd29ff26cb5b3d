//! The admin console's reads: `GET /v1/admin/users`, for a signed-in admin
//! (the admin role, on the log) or the holder of the shared admin token.

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use emosation_core::ids::normalize_username;
use emosation_core::ports::{Presence, ViewStore};
use emosation_core::time;
use emosation_core::view::{UserView, ViewKey, ViewValue};
use emosation_http::{ApiError, ApiQuery, AuthUser, Authenticator};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Clone)]
struct AdminState {
    views: Arc<dyn ViewStore>,
    auth: Arc<Authenticator>,
    presence: Arc<dyn Presence>,
    admin_token: Option<Arc<str>>,
}

impl FromRef<AdminState> for Arc<Authenticator> {
    fn from_ref(s: &AdminState) -> Self {
        Arc::clone(&s.auth)
    }
}

/// Users listed per page by default, and at most.
pub const DEFAULT_USERS_LIMIT: usize = 50;
pub const MAX_USERS_LIMIT: usize = 200;

/// The admin read routes; `admin_token` is the shared `X-Admin-Token`
/// (none: only admins by role).
pub fn routes(
    views: Arc<dyn ViewStore>,
    auth: Arc<Authenticator>,
    presence: Arc<dyn Presence>,
    admin_token: Option<String>,
) -> Router {
    Router::new()
        .route("/v1/admin/users", get(users))
        .with_state(AdminState {
            views,
            auth,
            presence,
            admin_token: admin_token.map(Arc::from),
        })
}

/// The token holder, or a user whose admin role is granted; else `403 forbidden`.
async fn admin(s: &AdminState, headers: &HeaderMap, user: Result<AuthUser, ApiError>) -> Result<(), ApiError> {
    if let (Some(expected), Some(given)) = (
        s.admin_token.as_deref(),
        headers.get("x-admin-token").and_then(|v| v.to_str().ok()),
    ) && expected.len() == given.len()
        && expected
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    {
        return Ok(());
    }
    if let Ok(user) = user {
        let key = ViewKey::admin_role(&normalize_username(&user.username));
        if let Some(ViewValue::AdminRole(r)) = s.views.load(&[key]).await?.pop().flatten()
            && r.granted
            && r.user_id == user.user_id
        {
            return Ok(());
        }
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "the admin role or the admin token is required",
    ))
}

#[derive(Deserialize)]
struct UsersQuery {
    q: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

/// `GET /v1/admin/users?q=&after=&limit=`: accounts whose username starts
/// with `q` (any when empty), in username order, with their status
/// (`active` / `deleted`), whether each is an admin and online now.
async fn users(
    State(s): State<AdminState>,
    headers: HeaderMap,
    user: Result<AuthUser, ApiError>,
    ApiQuery(q): ApiQuery<UsersQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&s, &headers, user).await?;
    let limit = crate::parse_limit(q.limit.as_deref(), DEFAULT_USERS_LIMIT, MAX_USERS_LIMIT)?;
    let prefix = normalize_username(q.q.as_deref().unwrap_or_default().trim());
    if prefix.chars().count() > emosation_core::limits::MAX_USERNAME_CHARS || prefix.chars().any(char::is_control) {
        return Err(ApiError::invalid_request(
            "q must be at most 32 characters, without control characters",
        ));
    }
    let names = s.views.usernames(&prefix, q.after.as_deref(), limit).await?;
    let mut keys: Vec<ViewKey> = names.iter().map(|(_, id)| ViewKey::User(id.clone())).collect();
    keys.extend(names.iter().map(|(name, _)| ViewKey::admin_role(name)));
    let mut values = s.views.load(&keys).await?.into_iter();
    let found: Vec<Option<UserView>> = values
        .by_ref()
        .take(names.len())
        .map(|v| match v {
            Some(ViewValue::User(u)) => Some(u),
            _ => None,
        })
        .collect();
    let roles: Vec<bool> = values
        .map(|v| matches!(v, Some(ViewValue::AdminRole(r)) if r.granted))
        .collect();
    let ids: Vec<String> = names.iter().map(|(_, id)| id.clone()).collect();
    let online = s.presence.online(&ids).await.unwrap_or_else(|_| vec![false; ids.len()]);
    let users: Vec<Value> = found
        .iter()
        .zip(roles.iter().zip(&online))
        .filter_map(|(u, (admin, online))| {
            let u = u.as_ref()?;
            Some(json!({
                "user_id": u.user_id,
                "username": u.username,
                "created_at": time::rfc3339_millis(u.created_at),
                "status": if u.deleted_at.is_some() { "deleted" } else { "active" },
                "deleted_at": u.deleted_at.map(time::rfc3339_millis),
                "admin": admin,
                "online": online,
            }))
        })
        .collect();
    let next_after = (names.len() == limit)
        .then(|| names.last().map(|(n, _)| n.clone()))
        .flatten();
    Ok(axum::Json(json!({"users": users, "next_after": next_after})))
}
