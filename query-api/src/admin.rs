//! The admin console's reads — `GET /v1/admin/users`, `GET /v1/admin/stats`
//! and `GET /v1/admin/audit` — for a signed-in admin (the admin role, on the
//! log) or the holder of the shared admin token. Stats and audit are the
//! `admin` consumer's views (`emosation_analyzer::admin`), summed over the
//! partitions that wrote them.

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use emosation_core::emotion::Label;
use emosation_core::ids::{Topic, Topology, is_id, normalize_username};
use emosation_core::ports::{Presence, ViewStore};
use emosation_core::time::{self, DAY_MS};
use emosation_core::view::{AUDIT_PAGE, AdminCountsView, AuditEntryView, UserView, ViewKey, ViewValue};
use emosation_http::{ApiError, ApiQuery, AuthUser, Authenticator};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Clone)]
struct AdminState {
    views: Arc<dyn ViewStore>,
    auth: Arc<Authenticator>,
    presence: Arc<dyn Presence>,
    admin_token: Option<Arc<str>>,
    topology: Topology,
}

impl FromRef<AdminState> for Arc<Authenticator> {
    fn from_ref(s: &AdminState) -> Self {
        Arc::clone(&s.auth)
    }
}

/// Users listed per page by default, and at most.
pub const DEFAULT_USERS_LIMIT: usize = 50;
pub const MAX_USERS_LIMIT: usize = 200;

/// Audit entries per page by default, and at most.
pub const DEFAULT_AUDIT_LIMIT: usize = 50;
pub const MAX_AUDIT_LIMIT: usize = 200;
/// Days of `GET /v1/admin/stats`, today (UTC) included.
pub const STATS_DAYS: i64 = 7;

/// The admin read routes; `admin_token` is the shared `X-Admin-Token`
/// (none: only admins by role); `topology`, the log's partitions, whose
/// counters the stats sum.
pub fn routes(
    views: Arc<dyn ViewStore>,
    auth: Arc<Authenticator>,
    presence: Arc<dyn Presence>,
    admin_token: Option<String>,
    topology: Topology,
) -> Router {
    Router::new()
        .route("/v1/admin/users", get(users))
        .route("/v1/admin/stats", get(stats))
        .route("/v1/admin/audit", get(audit))
        .with_state(AdminState {
            views,
            auth,
            presence,
            admin_token: admin_token.map(Arc::from),
            topology,
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

fn emotions_json(counts: &[u64; 7]) -> Value {
    Value::Object(
        Label::ALL
            .iter()
            .zip(counts)
            .map(|(l, n)| (l.as_str().to_owned(), json!(n)))
            .collect(),
    )
}

/// `GET /v1/admin/stats`: per UTC day over the last seven (oldest first,
/// today last) sign-ups, rooms created, messages stored and the emotion mix
/// of those messages; the same over all time; and the users with a
/// WebSocket open now on any node (`null` when the presence store cannot
/// be reached).
async fn stats(
    State(s): State<AdminState>,
    headers: HeaderMap,
    user: Result<AuthUser, ApiError>,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&s, &headers, user).await?;
    let today = time::day_start(time::now_ms());
    let days: Vec<i64> = (0..STATS_DAYS).rev().map(|i| today - i * DAY_MS).collect();
    let mut keys = Vec::new();
    for topic in Topic::ALL {
        for partition in 0..s.topology.partitions(topic) {
            keys.push(ViewKey::admin_totals(topic, partition));
            keys.extend(days.iter().map(|d| ViewKey::admin_day(topic, partition, *d)));
        }
    }
    let values = s.views.load(&keys).await?;
    let mut totals = AdminCountsView::default();
    let mut per_day: Vec<AdminCountsView> = days.iter().map(|_| AdminCountsView::default()).collect();
    for chunk in values.chunks(days.len() + 1) {
        if let Some(Some(ViewValue::AdminCounts(c))) = chunk.first() {
            totals.add(c);
        }
        for (day, v) in per_day.iter_mut().zip(&chunk[1..]) {
            if let Some(ViewValue::AdminCounts(c)) = v {
                day.add(c);
            }
        }
    }
    let mut week = AdminCountsView::default();
    for d in &per_day {
        week.add(d);
    }
    let online = s.presence.online_count().await.ok();
    let days_json: Vec<Value> = days
        .iter()
        .zip(&per_day)
        .map(|(day, c)| {
            json!({
                "day": &time::rfc3339_seconds(*day)[..10],
                "signups": c.signups,
                "rooms": c.rooms,
                "messages": c.messages,
                "emotions": emotions_json(&c.emotions),
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "days": days_json,
        "week": {
            "signups": week.signups,
            "rooms": week.rooms,
            "messages": week.messages,
            "emotions": emotions_json(&week.emotions),
        },
        "totals": {
            "users": totals.signups,
            "rooms": totals.rooms,
            "messages": totals.messages,
            "emotions": emotions_json(&totals.emotions),
        },
        "online_now": online,
    })))
}

#[derive(Deserialize)]
struct AuditQuery {
    before: Option<String>,
    limit: Option<String>,
}

/// An audit entry's place in the listing, newest first: by `at`, then by
/// position. As a cursor: `AT.POSITION`.
fn audit_order(e: &AuditEntryView) -> (i64, &str) {
    (e.at, e.position.as_str())
}

fn parse_cursor(raw: &str) -> Option<(i64, String)> {
    let (at, position) = raw.split_once('.')?;
    Some((at.parse().ok()?, position.to_owned())).filter(|(_, p)| is_id(p))
}

/// `GET /v1/admin/audit?before=&limit=`: admin actions, newest first — the
/// admin role granted or revoked, accounts deleted by an admin, accounts
/// restored — each with who did it (`by`: an admin's user id, with
/// `by_name`, or `token` / `cli`), the account, `at` and the record's log
/// position; `next_before` continues the listing (null on the last page).
async fn audit(
    State(s): State<AdminState>,
    headers: HeaderMap,
    user: Result<AuthUser, ApiError>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&s, &headers, user).await?;
    let limit = crate::parse_limit(q.limit.as_deref(), DEFAULT_AUDIT_LIMIT, MAX_AUDIT_LIMIT)?;
    let before = match q.before.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(
            parse_cursor(raw)
                .ok_or_else(|| ApiError::invalid_request("before must be a cursor from next_before (AT.POSITION)"))?,
        ),
    };
    let wanted = |e: &AuditEntryView| match &before {
        None => true,
        Some((at, pos)) => audit_order(e) < (*at, pos.as_str()),
    };
    // Each accounts partition's entries are in log order, which is `at`
    // order for one ingest clock: walk its pages from the newest until it
    // has given `limit` wanted entries (no older one can make the page).
    let partitions = s.topology.partitions(Topic::Accounts);
    let heads: Vec<ViewKey> = (0..partitions).map(|p| ViewKey::audit(p, None)).collect();
    let mut found: Vec<AuditEntryView> = Vec::new();
    for (partition, head) in (0..partitions).zip(s.views.load(&heads).await?) {
        let Some(ViewValue::AuditHead(head)) = head else {
            continue;
        };
        let mut taken = 0;
        let mut page = head.count.div_ceil(AUDIT_PAGE);
        while page > 0 && taken < limit {
            page -= 1;
            let key = ViewKey::audit(partition, Some(page));
            let Some(ViewValue::AuditPage(p)) = s.views.load(&[key]).await?.pop().flatten() else {
                break;
            };
            for e in p.entries.into_iter().rev().filter(|e| wanted(e)) {
                found.push(e);
                taken += 1;
            }
        }
    }
    found.sort_by(|a, b| audit_order(b).cmp(&audit_order(a)));
    found.truncate(limit);
    // Who acted, by name, for the entries by an admin.
    let mut admins: Vec<String> = found.iter().filter(|e| is_id(&e.by)).map(|e| e.by.clone()).collect();
    admins.sort();
    admins.dedup();
    let keys: Vec<ViewKey> = admins.iter().map(|id| ViewKey::User(id.clone())).collect();
    let names: std::collections::HashMap<String, String> = admins
        .iter()
        .zip(s.views.load(&keys).await?)
        .filter_map(|(id, v)| match v {
            Some(ViewValue::User(u)) => Some((id.clone(), u.username)),
            _ => None,
        })
        .collect();
    let next_before = (found.len() == limit)
        .then(|| found.last().map(|e| format!("{}.{}", e.at, e.position)))
        .flatten();
    let entries: Vec<Value> = found
        .iter()
        .map(|e| {
            json!({
                "at": time::rfc3339_millis(e.at),
                "position": e.position,
                "action": e.action,
                "by": e.by,
                "by_name": names.get(&e.by),
                "user_id": e.user_id,
                "username": e.username,
            })
        })
        .collect();
    Ok(axum::Json(json!({"entries": entries, "next_before": next_before})))
}
