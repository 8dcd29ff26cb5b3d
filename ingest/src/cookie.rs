//! The browser's refresh cookie (an API extension, docs/api.md): a client
//! that sends `X-Refresh-Cookie: 1` with login or refresh gets its refresh
//! token as an httpOnly, `SameSite=Strict` cookie limited to `/v1/auth`
//! (`Secure` when the page is on HTTPS) instead of in the body, and refresh
//! and logout read the cookie when the request carries no token of its own.
//! The cookie is read only on requests carrying that header, which no other
//! site can make a browser send without a CORS preflight this server never
//! grants: the header is the CSRF defence (with `SameSite=Strict`).

use axum::http::{HeaderMap, HeaderValue, header};

/// The opt-in (and CSRF) header.
pub const HEADER: &str = "x-refresh-cookie";
/// The cookie's name.
pub const NAME: &str = "emosation_refresh";
/// The only path the browser sends it to.
pub const PATH: &str = "/v1/auth";

/// Whether the request opts in to the cookie (`X-Refresh-Cookie: 1` or `true`).
pub fn wanted(headers: &HeaderMap) -> bool {
    headers
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches!(v.trim(), "1" | "true"))
}

/// The refresh token in the request's cookie, if any.
pub fn read(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == NAME)
        .map(|(_, value)| value.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
}

/// Whether the page is on HTTPS: its `Origin` says so, or TLS was
/// terminated in front of the handler (`X-Forwarded-Proto: https`): by a
/// proxy, or by this server's own listener with `--tls-cert`, which sets
/// the header on every request it decrypted. Either only ever adds
/// `Secure`, which a forged header could only take away from its sender.
fn over_tls(headers: &HeaderMap) -> bool {
    let has = |name: &str, prefix: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with(prefix))
    };
    has("origin", "https://") || has("x-forwarded-proto", "https")
}

/// `Set-Cookie` holding `token` for `max_age_secs`.
pub fn set(headers: &HeaderMap, token: &str, max_age_secs: i64) -> HeaderValue {
    let secure = if over_tls(headers) { "; Secure" } else { "" };
    let value = format!(
        "{NAME}={token}; Path={PATH}; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
        max_age_secs.max(0)
    );
    HeaderValue::from_str(&value).unwrap_or_else(|_| clear(headers))
}

/// `Set-Cookie` that removes the cookie.
pub fn clear(headers: &HeaderMap) -> HeaderValue {
    let secure = if over_tls(headers) { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{NAME}=; Path={PATH}; Max-Age=0; HttpOnly; SameSite=Strict{secure}"
    ))
    .expect("ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_read_among_others_and_set_with_its_attributes() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; emosation_refresh=tok.en-x; b=2"),
        );
        assert_eq!(read(&h).as_deref(), Some("tok.en-x"));
        assert!(!wanted(&h));
        h.insert(HEADER, HeaderValue::from_static("1"));
        assert!(wanted(&h));
        let plain = set(&h, "t", 60);
        assert_eq!(
            plain.to_str().unwrap(),
            "emosation_refresh=t; Path=/v1/auth; Max-Age=60; HttpOnly; SameSite=Strict"
        );
        h.insert("origin", HeaderValue::from_static("https://chat.example"));
        assert!(set(&h, "t", 60).to_str().unwrap().ends_with("; Secure"));
        assert!(clear(&h).to_str().unwrap().contains("Max-Age=0"));
        h.insert(header::COOKIE, HeaderValue::from_static("emosation_refresh="));
        assert_eq!(read(&h), None);
    }
}
