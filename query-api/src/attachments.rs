//! `GET /v1/attachments/{id}`: a room's file, for its members.
//!
//! The id names the room (it is the room id followed by the upload's log
//! position), so one point read finds the attachment and one the caller's
//! membership. An upload no message carries yet is its uploader's alone; a
//! deleted message's files are gone with it. The body streams from the blob
//! store, whole or one `Range` (`206`, or `416` past the end), with the
//! stored content type, a `Content-Disposition` that makes anything but
//! plain images a download, and [`SAFETY_HEADERS`] (`nosniff`, a sandboxing
//! CSP) on every answer.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use emosation_core::access;
use emosation_core::ids::attachment_room;
use emosation_core::ports::{BlobError, BlobStore, ViewStore};
use emosation_core::view::{ViewKey, ViewValue};
use emosation_http::files::{Ranged, SAFETY_HEADERS, disposition, parse_range};
use emosation_http::{ApiError, ApiPath, AuthUser, Authenticator};

#[derive(Clone)]
struct FilesState {
    views: Arc<dyn ViewStore>,
    auth: Arc<Authenticator>,
    blobs: Arc<dyn BlobStore>,
}

impl axum::extract::FromRef<FilesState> for Arc<Authenticator> {
    fn from_ref(s: &FilesState) -> Self {
        Arc::clone(&s.auth)
    }
}

/// The download route, ready to merge with the other read routes.
pub fn routes(views: Arc<dyn ViewStore>, auth: Arc<Authenticator>, blobs: Arc<dyn BlobStore>) -> Router {
    Router::new()
        .route("/v1/attachments/{attachment_id}", get(download))
        .with_state(FilesState { views, auth, blobs })
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "attachment_not_found", "no such attachment")
}

async fn download(
    State(s): State<FilesState>,
    user: AuthUser,
    ApiPath(attachment_id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let room_id = attachment_room(&attachment_id).ok_or_else(not_found)?;
    access::member_room(&*s.views, room_id, &user.user_id).await?;
    let Some(Some(ViewValue::Attachment(a))) = s
        .views
        .load(&[ViewKey::attachment(room_id, &attachment_id)])
        .await?
        .pop()
    else {
        return Err(not_found());
    };
    match &a.message_id {
        // Not sent yet: its uploader's alone.
        None if a.uploader_id != user.user_id => return Err(not_found()),
        None => {}
        Some(message_id) => {
            let edit = s.views.load(&[ViewKey::message_edit(room_id, message_id)]).await?.pop();
            if matches!(edit, Some(Some(ViewValue::MessageEdit(e))) if e.deleted_at.is_some()) {
                return Err(not_found());
            }
        }
    }
    let range = match parse_range(headers.get(header::RANGE).and_then(|v| v.to_str().ok()), a.size) {
        Ranged::Whole => None,
        Ranged::Part(r) => Some(r),
        Ranged::Unsatisfiable => {
            let mut res = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the file has {} bytes", a.size),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", a.size)) {
                res.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            safe(res.headers_mut());
            return Ok(res);
        }
    };
    // An empty file has no range to ask for.
    let asked = range.clone().filter(|r| r.start < r.end);
    let (stream, size) = match s.blobs.get(&a.blob_key, asked.clone()).await {
        Ok(found) => found,
        Err(BlobError::NotFound) => return Err(not_found()),
        Err(BlobError::BadRange { size }) => {
            return Err(ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the file has {size} bytes"),
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, %attachment_id, "blob store");
            return Err(ApiError::unavailable("the file could not be read; retry"));
        }
    };
    let (status, length) = match &asked {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.end - r.start),
        None => (StatusCode::OK, size),
    };
    let mut res = Response::new(Body::from_stream(stream));
    *res.status_mut() = status;
    let h = res.headers_mut();
    let mut set = |name: header::HeaderName, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    set(header::CONTENT_TYPE, a.content_type.clone());
    set(header::CONTENT_LENGTH, length.to_string());
    set(header::CONTENT_DISPOSITION, disposition(&a.file_name, &a.content_type));
    set(header::ACCEPT_RANGES, "bytes".into());
    set(header::ETAG, format!("\"{}\"", a.sha256));
    set(header::CACHE_CONTROL, "private, max-age=3600".into());
    if let Some(r) = &asked {
        set(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{}", r.start, r.end - 1, size),
        );
    }
    safe(h);
    Ok(res)
}

fn safe(h: &mut HeaderMap) {
    for (name, value) in SAFETY_HEADERS {
        h.insert(name, HeaderValue::from_static(value));
    }
}
