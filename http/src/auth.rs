//! JWT issue and verification.
//!
//! Tokens are HS256 JWTs, the algorithm pinned on both sides (an `alg:none` or
//! RS256 token is refused before its claims are read). A login opens a
//! *session* (`sid`): its short-lived access token and long-lived refresh token
//! share the `sid`, and logout appends a `SessionRevoked` record, after which
//! the views refuse both. Every authenticated request also checks that the
//! account is not soft-deleted.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use emosation_core::ports::{StoreError, ViewStore};
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Username.
    pub name: String,
    /// Session id, shared by a login's access and refresh tokens.
    pub sid: String,
    pub typ: TokenKind,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

/// The signing keys, built once.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
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

fn random_hex() -> String {
    format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>())
}

impl TokenKeys {
    /// Keys from a secret of at least 32 bytes.
    pub fn new(secret: &[u8], access_ttl: Duration, refresh_ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            access_ttl,
            refresh_ttl,
        }
    }

    /// Issues an access and a refresh token for session `sid`.
    pub fn issue(&self, user_id: &str, username: &str, sid: &str) -> Result<TokenPair, AuthError> {
        let now = now_secs();
        let make = |typ: TokenKind, ttl: Duration| {
            let claims = Claims {
                sub: user_id.to_owned(),
                name: username.to_owned(),
                sid: sid.to_owned(),
                typ,
                iat: now,
                exp: now + ttl.as_secs() as i64,
                jti: random_hex(),
            };
            encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).map_err(|e| {
                tracing::error!(error = %e, "jwt encode");
                AuthError::Internal
            })
        };
        Ok(TokenPair {
            access_token: make(TokenKind::Access, self.access_ttl)?,
            refresh_token: make(TokenKind::Refresh, self.refresh_ttl)?,
            token_type: "Bearer",
            expires_in: self.access_ttl.as_secs(),
            user_id: user_id.to_owned(),
        })
    }

    /// Verifies signature, algorithm, expiry and kind. Says nothing about
    /// revocation: see [`Authenticator::authenticate`].
    pub fn verify(&self, token: &str, kind: TokenKind) -> Result<Claims, AuthError> {
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

/// Verifies tokens and checks them against the views (revoked sessions,
/// deleted accounts).
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

    /// A token's claims, if it is valid, of the given kind, its session is not
    /// revoked and its account exists and is not deleted.
    pub async fn authenticate(&self, token: &str, kind: TokenKind) -> Result<Claims, AuthError> {
        let claims = self.keys.verify(token, kind)?;
        if self.views.session(&claims.name, &claims.sid).await?.is_some() {
            return Err(AuthError::InvalidToken("session has been logged out".into()));
        }
        match self.views.user(&claims.sub).await? {
            Some(u) if u.deleted_at.is_none() => Ok(claims),
            _ => Err(AuthError::InvalidToken("account does not exist or is deleted".into())),
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
