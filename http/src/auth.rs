//! JWT issue and verification.
//!
//! Tokens are HS256 JWTs, the algorithm pinned on both sides (an `alg:none` or
//! RS256 token is refused before its claims are read), issued by [`ISSUER`]
//! for [`AUDIENCE`] and checked for both, and for `exp` and `nbf`. A login
//! opens a *session* (`sid`), a record on the log: its short-lived access
//! tokens and its refresh token share the `sid`. Each refresh rotates the
//! refresh token (its `gen` claim counts up); the fold decides every refresh
//! in log order. Every authenticated request checks the session in the views:
//! opened, not ended (logout, a reused refresh token), before its absolute
//! end, not opened before a deletion of its account; and that the account
//! exists and is not soft-deleted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use emosation_core::ports::{StoreError, ViewStore};
use emosation_core::view::{SessionEndReason, ViewKey, ViewValue};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};

use crate::ApiError;

/// Why a token was not accepted (or could not be made).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Expired, forged, of the wrong kind, or its session or account ended.
    #[error("{0}")]
    InvalidToken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing failed (logged where it happened).
    #[error("internal error")]
    Internal,
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidToken(m) => ApiError::invalid_token(m),
            AuthError::Store(e) => e.into(),
            AuthError::Internal => ApiError::internal("token", "signing failed"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    Access,
    Refresh,
}

/// The `iss` of every token this server issues, and the only one it accepts.
pub const ISSUER: &str = "emosation";
/// The `aud` of every token this server issues, and the only one it accepts.
pub const AUDIENCE: &str = "emosation-api";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Always [`ISSUER`].
    pub iss: String,
    /// Always [`AUDIENCE`].
    pub aud: String,
    /// User id.
    pub sub: String,
    /// Username.
    pub name: String,
    /// Session id, shared by a login's access and refresh tokens.
    pub sid: String,
    pub typ: TokenKind,
    pub iat: i64,
    /// Not valid before (seconds): the issue time.
    pub nbf: i64,
    /// Never after the session's absolute end.
    pub exp: i64,
    pub jti: String,
    /// Refresh tokens only: the session's refresh generation when the token
    /// was issued. The fold accepts a refresh presenting the current
    /// generation, once.
    #[serde(rename = "gen", default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

/// The signing keys, built once.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Access tokens verified lately ([`Verified`]).
    verified: Mutex<Verified>,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

/// Seconds of clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECS: i64 = 5;

/// Access tokens kept per generation of [`Verified`] (at most twice as
/// many held: ~2.5 MB of tokens and claims).
const VERIFIED_GENERATION: usize = 2048;

/// Access tokens verified lately, by their exact text, with their claims.
///
/// A client presents the same access token with every request for the
/// token's whole life, and verifying it — two base64 decodes, an
/// HMAC-SHA256, two JSON parses — was ~7% of the server's CPU per
/// `POST …/messages` (bench/README.md). What verification decides depends
/// only on the token's bytes and the keys (built once), except `exp` and
/// `nbf`, which a hit checks again against the clock, as verification
/// would; the session's checks ([`Authenticator::authenticate`]: logout,
/// revocation, deletion) run on every request as before. Only tokens that
/// passed verification enter, so forgeries can neither hit nor fill it.
/// Two generations bound it: when the young one is full it becomes the
/// old one (the previous old one dropped), and a hit in the old one moves
/// back to the young: what is in use stays, whatever else is forgotten.
#[derive(Default)]
struct Verified {
    young: HashMap<Box<str>, Claims>,
    old: HashMap<Box<str>, Claims>,
}

impl Verified {
    /// The claims of `token` if it was verified and is still within its
    /// time bounds at `now` (seconds); one past them is forgotten.
    fn get(&mut self, token: &str, now: i64) -> Option<Claims> {
        let timely = |c: &Claims| c.exp >= now - LEEWAY_SECS && c.nbf <= now + LEEWAY_SECS;
        if let Some(c) = self.young.get(token) {
            if timely(c) {
                return Some(c.clone());
            }
            self.young.remove(token);
            return None;
        }
        let (token, claims) = self.old.remove_entry(token)?;
        if !timely(&claims) {
            return None;
        }
        let hit = claims.clone();
        self.insert(token, claims);
        Some(hit)
    }

    fn insert(&mut self, token: Box<str>, claims: Claims) {
        if self.young.len() >= VERIFIED_GENERATION {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(token, claims);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("access_ttl", &self.access_ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .finish_non_exhaustive()
    }
}

/// A login's tokens, as answered by login and refresh.
#[derive(Debug, Clone, Serialize)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub user_id: String,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn random_hex() -> String {
    format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>())
}

impl TokenKeys {
    /// Keys from a secret of at least 32 bytes.
    pub fn new(secret: &[u8], access_ttl: Duration, refresh_ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS as u64;
        validation.validate_nbf = true;
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "nbf", "sub", "iss", "aud"]);
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            verified: Mutex::new(Verified::default()),
            access_ttl,
            refresh_ttl,
        }
    }

    /// Issues an access token and a refresh token of `generation` for
    /// session `sid`, which ends at `session_expires_at` (milliseconds): no
    /// token outlives it.
    pub fn issue(
        &self,
        user_id: &str,
        username: &str,
        sid: &str,
        generation: i64,
        session_expires_at: i64,
    ) -> Result<TokenPair, AuthError> {
        let now = now_secs();
        let session_end = session_expires_at.div_euclid(1000);
        let exp = |ttl: Duration| (now + ttl.as_secs() as i64).min(session_end);
        let make = |typ: TokenKind, exp: i64, generation: Option<i64>| {
            let claims = Claims {
                iss: ISSUER.to_owned(),
                aud: AUDIENCE.to_owned(),
                sub: user_id.to_owned(),
                name: username.to_owned(),
                sid: sid.to_owned(),
                typ,
                iat: now,
                nbf: now,
                exp,
                jti: random_hex(),
                generation,
            };
            encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).map_err(|e| {
                tracing::error!(error = %e, "jwt encode");
                AuthError::Internal
            })
        };
        let access_exp = exp(self.access_ttl);
        Ok(TokenPair {
            access_token: make(TokenKind::Access, access_exp, None)?,
            refresh_token: make(TokenKind::Refresh, exp(self.refresh_ttl), Some(generation))?,
            token_type: "Bearer",
            expires_in: (access_exp - now).max(0) as u64,
            user_id: user_id.to_owned(),
        })
    }

    /// Verifies signature, algorithm, issuer, audience, `nbf`, expiry and
    /// kind. Says nothing about the session: see
    /// [`Authenticator::authenticate`]. An access token verified lately is
    /// answered from [`Verified`] (its time bounds checked again).
    pub fn verify(&self, token: &str, kind: TokenKind) -> Result<Claims, AuthError> {
        if kind != TokenKind::Access {
            return self.verify_token(token, kind);
        }
        if let Some(claims) = self.verified().get(token, now_secs()) {
            return Ok(claims);
        }
        let claims = self.verify_token(token, kind)?;
        self.verified().insert(token.into(), claims.clone());
        Ok(claims)
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, Verified> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`TokenKeys::verify`] in full, every time.
    fn verify_token(&self, token: &str, kind: TokenKind) -> Result<Claims, AuthError> {
        let data = decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AuthError::InvalidToken(format!("token rejected: {e}")))?;
        if data.claims.typ != kind {
            return Err(AuthError::InvalidToken("wrong kind of token".into()));
        }
        Ok(data.claims)
    }

    /// Seconds until a session's refresh token expires, for revocation records.
    pub fn session_expiry(&self, issued_at: i64) -> i64 {
        issued_at + self.refresh_ttl.as_secs() as i64
    }
}

/// Verifies tokens and checks them against the views (sessions, deleted
/// accounts).
pub struct Authenticator {
    pub keys: TokenKeys,
    pub views: Arc<dyn ViewStore>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(keys: TokenKeys, views: Arc<dyn ViewStore>) -> Self {
        Authenticator { keys, views }
    }

    /// A token's claims, if it is valid and of the given kind, and its
    /// session is live ([`Authenticator::session_end_cause`] finds no end).
    pub async fn authenticate(&self, token: &str, kind: TokenKind) -> Result<Claims, AuthError> {
        let claims = self.keys.verify(token, kind)?;
        match self.session_end_cause(&claims.sub, &claims.name, &claims.sid).await? {
            None => Ok(claims),
            Some(cause) => Err(AuthError::InvalidToken(cause.message().into())),
        }
    }

    /// Why the session `sid` of user `user_id` (`username`) is over, if it
    /// is, in one lookup of the views (a live connection opened with one of
    /// its tokens also asks this at every ping, in case the order ending it
    /// was lost): it must have been opened on the log
    /// (a session the views do not know is over: tokens from before
    /// sessions were records lack `iss` and `aud` and never get here), not
    /// ended, before its absolute end, opened since the account was last
    /// deleted; and the account must exist and not be deleted.
    pub async fn session_end_cause(
        &self,
        user_id: &str,
        username: &str,
        sid: &str,
    ) -> Result<Option<SessionEndCause>, AuthError> {
        let keys = [
            ViewKey::session(username, sid),
            ViewKey::session_epoch(username),
            ViewKey::User(user_id.to_owned()),
        ];
        let mut found = self.views.load(&keys).await?.into_iter();
        let (session, epoch, user) = (found.next().flatten(), found.next().flatten(), found.next().flatten());
        let epoch = match epoch {
            Some(ViewValue::SessionEpoch(e)) => e.epoch,
            _ => 0,
        };
        match user {
            Some(ViewValue::User(u)) if u.deleted_at.is_none() && u.username == username => {}
            _ => return Ok(Some(SessionEndCause::AccountDeleted)),
        }
        Ok(match session {
            Some(ViewValue::OpenedSession(s)) if s.user_id == user_id => match &s.ended {
                Some(end) if end.reason == SessionEndReason::Logout => Some(SessionEndCause::LoggedOut),
                Some(_) => Some(SessionEndCause::Revoked),
                None if s.account_epoch != epoch => Some(SessionEndCause::AccountDeleted),
                None if !s.is_live(now_ms(), epoch) => Some(SessionEndCause::Expired),
                None => None,
            },
            Some(ViewValue::Session(_)) => Some(SessionEndCause::LoggedOut),
            _ => Some(SessionEndCause::Unknown),
        })
    }
}

/// Why a session is over, in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEndCause {
    LoggedOut,
    /// The account is deleted, or was deleted after the session opened.
    AccountDeleted,
    /// A refresh token of the session was used twice.
    Revoked,
    /// Past the session's absolute end.
    Expired,
    /// No login opened it.
    Unknown,
}

impl SessionEndCause {
    fn message(self) -> &'static str {
        match self {
            SessionEndCause::LoggedOut => "session has been logged out",
            SessionEndCause::AccountDeleted => "account does not exist or is deleted",
            SessionEndCause::Revoked => "session was revoked: a refresh token was used twice",
            SessionEndCause::Expired => "session has reached its end; log in again",
            SessionEndCause::Unknown => "unknown session; log in again",
        }
    }
}

/// The caller of an authenticated endpoint.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user_id: String,
    pub username: String,
    pub session_id: String,
    /// `iat` of the access token (seconds).
    pub issued_at: i64,
}

/// The bearer token of a request, from `Authorization: Bearer …`.
pub fn bearer(parts: &Parts) -> Option<&str> {
    bearer_header(&parts.headers)
}

/// The bearer token in a set of headers.
pub fn bearer_header(headers: &axum::http::HeaderMap) -> Option<&str> {
    let h = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = h.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl<S> FromRequestParts<S> for AuthUser
where
    Arc<Authenticator>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = Arc::<Authenticator>::from_ref(state);
        let token = bearer(parts).ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
        let claims = auth.authenticate(token, TokenKind::Access).await?;
        Ok(AuthUser {
            user_id: claims.sub,
            username: claims.name,
            session_id: claims.sid,
            issued_at: claims.iat,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::new(
            b"unit-test-secret-unit-test-secret-0123",
            Duration::from_secs(900),
            Duration::from_secs(30 * 24 * 3600),
        )
    }

    #[test]
    fn tokens_carry_issuer_audience_nbf_and_never_outlive_their_session() {
        let keys = keys();
        let session_end_ms = (now_secs() + 60) * 1000 + 500;
        let pair = keys.issue("u1", "alice", "s1", 3, session_end_ms).unwrap();
        let access = keys.verify(&pair.access_token, TokenKind::Access).unwrap();
        let refresh = keys.verify(&pair.refresh_token, TokenKind::Refresh).unwrap();
        for c in [&access, &refresh] {
            assert_eq!(
                (c.iss.as_str(), c.aud.as_str(), c.sid.as_str()),
                (ISSUER, AUDIENCE, "s1")
            );
            assert_eq!(c.nbf, c.iat);
            assert_eq!(c.exp, session_end_ms / 1000, "capped at the session's end");
        }
        assert_eq!((access.generation, refresh.generation), (None, Some(3)));
        assert!(pair.expires_in <= 60);
        // Far from its end, a session's tokens live their own lifetimes.
        let far = keys.issue("u1", "alice", "s1", 0, i64::MAX).unwrap();
        let access = keys.verify(&far.access_token, TokenKind::Access).unwrap();
        assert_eq!(access.exp - access.iat, 900);
        assert_eq!(far.expires_in, 900);
    }

    #[test]
    fn a_verified_access_token_is_answered_again_only_while_it_is_valid() {
        let keys = keys();
        let pair = keys.issue("u1", "alice", "s1", 0, i64::MAX).unwrap();
        let first = keys.verify(&pair.access_token, TokenKind::Access).unwrap();
        assert_eq!(keys.verified().len(), 1, "kept once verified");
        let again = keys.verify(&pair.access_token, TokenKind::Access).unwrap();
        assert_eq!(
            (again.sub, again.sid, again.jti),
            (first.sub, first.sid, first.jti.clone())
        );

        // The exact text only: the same token with its signature altered is
        // verified, and refused, as before.
        // (A character well inside the signature: every bit of it counts.)
        let mut forged = pair.access_token.clone().into_bytes();
        let at = forged.len() - 5;
        forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert!(matches!(
            keys.verify(&forged, TokenKind::Access),
            Err(AuthError::InvalidToken(_))
        ));
        // Nor does a hit answer for another kind: refresh tokens are never kept.
        assert!(keys.verify(&pair.access_token, TokenKind::Refresh).is_err());
        keys.verify(&pair.refresh_token, TokenKind::Refresh).unwrap();
        assert_eq!(keys.verified().len(), 1);

        // Its time bounds are checked again at every hit, with verification's leeway.
        let mut v = keys.verified();
        let (exp, nbf) = (first.exp, first.nbf);
        assert!(v.get(&pair.access_token, exp + LEEWAY_SECS).is_some());
        assert!(v.get(&pair.access_token, nbf - LEEWAY_SECS).is_some());
        assert!(
            v.get(&pair.access_token, nbf - LEEWAY_SECS - 1).is_none(),
            "not yet valid"
        );
        assert!(v.get(&pair.access_token, exp + LEEWAY_SECS + 1).is_none(), "expired");
        assert_eq!(v.len(), 0, "an expired token is forgotten");
    }

    #[test]
    fn the_kept_tokens_are_bounded_and_the_ones_in_use_stay() {
        let keys = keys();
        let now = now_secs();
        let tokens: Vec<String> = (0..VERIFIED_GENERATION * 2 + 10)
            .map(|i| {
                keys.issue(&format!("u{i}"), "alice", "s1", 0, i64::MAX)
                    .unwrap()
                    .access_token
            })
            .collect();
        let hot = &tokens[0];
        for t in &tokens {
            keys.verify(t, TokenKind::Access).unwrap();
            // One client keeps using its token the whole time.
            keys.verify(hot, TokenKind::Access).unwrap();
            assert!(keys.verified().len() <= 2 * VERIFIED_GENERATION);
        }
        let mut v = keys.verified();
        assert!(v.get(hot, now).is_some(), "in use, so kept");
        assert!(
            v.get(&tokens[1], now).is_none(),
            "unused for two generations, so forgotten"
        );
        assert!(v.get(tokens.last().unwrap(), now).is_some());
    }
}
