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
//! serves a stale module next to a fresh one. A client that accepts gzip
//! gets each file gzipped (compressed once, at first use), with its own
//! ETag and `Vary: Accept-Encoding`.
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
     img-src 'self' data: blob:; connect-src 'self'; manifest-src 'self'; base-uri 'none'; \
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
    "js/friends.js" => JS,
    "js/admin.js" => JS,
];

/// What is served for one asset: its ETag, and its gzip form with its own
/// ETag when that is smaller.
struct Served {
    etag: String,
    gzip: Option<(Vec<u8>, String)>,
}

/// Every asset's ETag and gzip form, computed once, at first use (all
/// together, ~100 KB: tens of milliseconds, once per process).
fn served() -> &'static [Served] {
    static SERVED: OnceLock<Vec<Served>> = OnceLock::new();
    SERVED.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.body);
                let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
                let gz = gzip(a.body);
                Served {
                    etag: format!("\"{hex}\""),
                    // A strong ETag names one representation: the gzip one differs.
                    gzip: (gz.len() < a.body.len()).then(|| (gz, format!("\"{hex}-gz\""))),
                }
            })
            .collect()
    })
}

/// `data` as a gzip member (RFC 1952): the deflate stream at the best
/// level, with the CRC-32 and length of the original.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    // Magic, deflate, no flags, no mtime, best compression, unknown OS.
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 255];
    out.extend(miniz_oxide::deflate::compress_to_vec(data, 10));
    out.extend(crc32(data).to_le_bytes());
    out.extend((data.len() as u32).to_le_bytes());
    out
}

/// CRC-32 (IEEE 802.3, reflected, as gzip uses it).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Whether `Accept-Encoding` accepts gzip (`gzip` or `*` with a q-value
/// above 0, and `gzip` not refused by `gzip;q=0` when `*` is given).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut star = None;
    for item in headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or_default().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
            .filter_map(|q| q.trim().parse::<f32>().ok())
            .next()
            .unwrap_or(1.0);
        match coding.as_str() {
            "gzip" | "x-gzip" => gzip = Some(q > 0.0),
            "*" => star = Some(q > 0.0),
            _ => {}
        }
    }
    gzip.or(star).unwrap_or(false)
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
    let (asset, served) = (&ASSETS[i], &served()[i]);
    let common = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-cache"),
        (header::VARY, "Accept-Encoding"),
    ];
    let (body, etag, encoding): (&[u8], &str, Option<&str>) = match &served.gzip {
        Some((gz, etag)) if accepts_gzip(headers) => (gz, etag, Some("gzip")),
        _ => (asset.body, &served.etag, None),
    };
    let etag = HeaderValue::from_str(etag).expect("hex etag");
    if none_match(headers, etag.to_str().expect("ascii")) {
        return (StatusCode::NOT_MODIFIED, common, [(header::ETAG, etag)]).into_response();
    }
    let mut res = (
        common,
        [
            (header::ETAG, etag),
            (header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
        ],
        body,
    )
        .into_response();
    if let Some(e) = encoding {
        res.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static(e));
    }
    res
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

    #[test]
    fn gzip_members_inflate_to_the_original_with_its_crc() {
        for a in ASSETS {
            let gz = gzip(a.body);
            assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
            let n = gz.len();
            let inflated = miniz_oxide::inflate::decompress_to_vec(&gz[10..n - 8]).unwrap();
            assert_eq!(inflated, a.body, "{}", a.path);
            assert_eq!(gz[n - 8..n - 4], crc32(a.body).to_le_bytes());
            assert_eq!(gz[n - 4..], (a.body.len() as u32).to_le_bytes());
        }
        // The check value of the CRC-32 used by gzip.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    /// One HTTP/1.1 request to a real server: (status line, headers, body).
    async fn http_get(addr: std::net::SocketAddr, path: &str, extra: &str) -> (String, Vec<(String, String)>, Vec<u8>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}\r\n");
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).await.unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = std::str::from_utf8(&raw[..split]).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().to_owned();
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        (status, headers, raw[split + 4..].to_vec())
    }

    fn field<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    #[tokio::test]
    async fn over_http_gzip_is_negotiated_with_its_own_etag_and_vary() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, routes()).await.unwrap() });
        let chat = ASSETS.iter().find(|a| a.path == "js/chat.js").unwrap();

        let (status, h, body) = http_get(addr, "/assets/js/chat.js", "Accept-Encoding: gzip, deflate, br\r\n").await;
        assert!(status.contains(" 200 "), "{status}");
        assert_eq!(field(&h, "content-encoding"), Some("gzip"));
        assert_eq!(field(&h, "vary"), Some("Accept-Encoding"));
        assert_eq!(field(&h, "content-type"), Some(JS));
        let gz_etag = field(&h, "etag").unwrap().to_owned();
        assert!(
            body.len() * 2 < chat.body.len(),
            "{} of {}",
            body.len(),
            chat.body.len()
        );
        let n = body.len();
        assert_eq!(
            miniz_oxide::inflate::decompress_to_vec(&body[10..n - 8]).unwrap(),
            chat.body
        );

        let (_, h, body) = http_get(addr, "/assets/js/chat.js", "").await;
        assert_eq!(field(&h, "content-encoding"), None, "no Accept-Encoding: identity");
        assert_eq!(field(&h, "vary"), Some("Accept-Encoding"));
        assert_eq!(body, chat.body);
        let plain_etag = field(&h, "etag").unwrap().to_owned();
        assert_ne!(plain_etag, gz_etag, "one ETag per representation");

        for refused in ["gzip;q=0", "br", "*;q=0", "identity", "*, gzip;q=0"] {
            let (_, h, body) = http_get(addr, "/", &format!("Accept-Encoding: {refused}\r\n")).await;
            assert_eq!(field(&h, "content-encoding"), None, "{refused}");
            assert!(
                body.starts_with(b"<!doctype html>") || body.starts_with(b"<!DOCTYPE html>"),
                "{refused}"
            );
        }
        let (_, h, _) = http_get(addr, "/", "Accept-Encoding: *\r\n").await;
        assert_eq!(field(&h, "content-encoding"), Some("gzip"));

        // Revalidation: 304 for the representation the client holds.
        let (status, h, body) = http_get(
            addr,
            "/assets/js/chat.js",
            &format!("Accept-Encoding: gzip\r\nIf-None-Match: {gz_etag}\r\n"),
        )
        .await;
        assert!(status.contains(" 304 "), "{status}");
        assert_eq!(field(&h, "etag"), Some(gz_etag.as_str()));
        assert_eq!(field(&h, "vary"), Some("Accept-Encoding"));
        assert!(body.is_empty());
        let (status, ..) = http_get(addr, "/assets/js/chat.js", &format!("If-None-Match: {plain_etag}\r\n")).await;
        assert!(status.contains(" 304 "), "{status}");
        // A tag of the other representation is not a match.
        let (status, h, _) = http_get(
            addr,
            "/assets/js/chat.js",
            &format!("Accept-Encoding: gzip\r\nIf-None-Match: {plain_etag}\r\n"),
        )
        .await;
        assert!(status.contains(" 200 "), "{status}");
        assert_eq!(field(&h, "content-encoding"), Some("gzip"));
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
