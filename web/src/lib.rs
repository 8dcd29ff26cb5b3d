//! The web client: a chat room with live emotions, served by the same binary.
//!
//! The client is plain standard ES modules, loaded by the browser as they
//! are: no build step, nothing generated. Every asset is compiled into the
//! binary (`include_bytes!`), so `emosation serve` alone serves the product.
//! Why this stack, and how the client uses the API: docs/web.md.
//!
//! Every answer carries a strict `Content-Security-Policy` (scripts, styles
//! and connections from this origin only, no inline script or style) and an
//! `ETag`; assets are revalidated on each load (`Cache-Control: no-cache`)
//! and answered `304 Not Modified` when unchanged, so a new binary never
//! serves a stale module next to a fresh one.
//!
//! # Layout
//! - [`routes`]: `GET /` (the page) and `GET /assets/{path}`.
//! - `assets/`: `index.html`, `app.css`, `icon.svg`, `js/*.js`.

use std::sync::OnceLock;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use emosation_http::ApiError;
use sha2::{Digest, Sha256};

/// The policy every answer of this crate carries. `connect-src 'self'`
/// covers `ws://` / `wss://` to the same host (CSP level 3).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; manifest-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// One compiled-in file.
#[derive(Debug)]
pub struct Asset {
    /// Path under `/assets/` (the page itself is `index.html`).
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

macro_rules! assets {
    ($($path:literal => $ty:expr),* $(,)?) => {
        &[$(Asset { path: $path, content_type: $ty, body: include_bytes!(concat!("../assets/", $path)) }),*]
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the client.
pub static ASSETS: &[Asset] = assets![
    "index.html" => "text/html; charset=utf-8",
    "app.css" => "text/css; charset=utf-8",
    "icon.svg" => "image/svg+xml",
    "js/main.js" => JS,
    "js/api.js" => JS,
    "js/socket.js" => JS,
    "js/i18n.js" => JS,
    "js/dom.js" => JS,
    "js/auth.js" => JS,
    "js/rooms.js" => JS,
    "js/chat.js" => JS,
    "js/chart.js" => JS,
];

/// Quoted strong ETags, one per asset, computed once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.body);
                let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    })
}

/// The client's routes, ready to merge with the services' routes.
pub fn routes() -> Router {
    Router::new()
        .route(
            "/",
            get(|headers: HeaderMap| async move { serve("index.html", &headers) }),
        )
        .route(
            "/assets/{*path}",
            // Matched on the raw path: asset names are plain ASCII, so
            // nothing percent-encoded can name one.
            get(|uri: Uri, headers: HeaderMap| async move {
                serve(uri.path().strip_prefix("/assets/").unwrap_or_default(), &headers)
            }),
        )
}

/// Does `If-None-Match` (a list of tags, weak or strong, or `*`) match `etag`?
fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.path == path) else {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such asset").into_response();
    };
    let (asset, etag) = (&ASSETS[i], &etags()[i]);
    let common = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    let etag = HeaderValue::from_str(etag).expect("hex etag");
    if none_match(headers, etag.to_str().expect("ascii")) {
        return (StatusCode::NOT_MODIFIED, common, [(header::ETAG, etag)]).into_response();
    }
    (
        common,
        [
            (header::ETAG, etag),
            (header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
        ],
        asset.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn get(uri: &str, if_none_match: Option<&str>) -> Response {
        let mut req = Request::get(uri);
        if let Some(t) = if_none_match {
            req = req.header(header::IF_NONE_MATCH, t);
        }
        routes().oneshot(req.body(Body::empty()).unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn page_and_assets_carry_type_csp_and_etag() {
        for (uri, ty) in [
            ("/", "text/html; charset=utf-8"),
            ("/assets/js/main.js", JS),
            ("/assets/app.css", "text/css; charset=utf-8"),
        ] {
            let res = get(uri, None).await;
            assert_eq!(res.status(), StatusCode::OK, "{uri}");
            let h = res.headers();
            assert_eq!(h[header::CONTENT_TYPE], ty, "{uri}");
            let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(csp.contains("script-src 'self';") && !csp.contains("unsafe"), "{csp}");
            assert!(csp.contains("connect-src 'self'"), "{csp}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert!(h[header::ETAG].to_str().unwrap().starts_with('"'));
        }
    }

    #[tokio::test]
    async fn a_known_etag_is_answered_304_without_body() {
        let etag = get("/assets/js/chat.js", None).await.headers()[header::ETAG].clone();
        let tag = etag.to_str().unwrap();
        for inm in [tag.to_owned(), format!("W/{tag}"), format!("\"x\", {tag}"), "*".into()] {
            let res = get("/assets/js/chat.js", Some(&inm)).await;
            assert_eq!(res.status(), StatusCode::NOT_MODIFIED, "{inm}");
            assert_eq!(res.headers()[header::ETAG], etag);
            let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
            assert!(body.is_empty());
        }
        assert_eq!(
            get("/assets/js/chat.js", Some("\"other\"")).await.status(),
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn unknown_or_hostile_paths_are_404_json() {
        for uri in [
            "/assets/nope.js",
            "/assets/../Cargo.toml",
            "/assets/%2e%2e/src/lib.rs",
            "/assets/js/",
            "/assets/%ff%fe",
        ] {
            let res = get(uri, None).await;
            assert_eq!(res.status(), StatusCode::NOT_FOUND, "{uri}");
            assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        }
    }

    #[test]
    fn the_page_loads_no_inline_script_and_nothing_third_party() {
        for a in ASSETS {
            // The SVG namespace is a name, not a place anything is fetched from.
            let text = std::str::from_utf8(a.body)
                .unwrap()
                .replace("http://www.w3.org/2000/svg", "");
            assert!(!text.contains("http://") && !text.contains("https://"), "{}", a.path);
            if a.path.ends_with(".html") {
                assert!(
                    !text.contains("<script>") && !text.contains("style="),
                    "inline code in {}",
                    a.path
                );
            }
        }
    }
}
