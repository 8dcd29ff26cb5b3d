//! Ingest: the command path.
//!
//! A command is validated, checked against the views for the cheap refusals
//! (unknown room, not a member, username already taken), turned into a
//! [`Record`], appended to the log, and answered only once the projector has
//! folded it: the answer is the fold's decision, taken in log order, so two
//! racing signups or a join into the last seat are decided exactly as every
//! replay will decide them. A 2xx for a write therefore means the record is
//! durable in the log *and* the views already show it.
//!
//! # Layout
//! - [`Ingest`]: the commands, callable from HTTP (here) and WebSocket (ws-fanout).
//! - [`error`]: [`CommandError`], transport-neutral; converted to the HTTP
//!   error here and to an error frame in ws-fanout.
//! - [`validate`]: the contract's input rules.
//! - [`attachments`]: uploads, messages' attachments, garbage collection.
//! - [`http`]: the command endpoints.

pub mod attachments;
pub mod cookie;
pub mod error;
pub mod http;
pub mod validate;

pub use error::CommandError;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use emosation_core::access;
use emosation_core::ids::{LogPosition, normalize_username, random_id};
use emosation_core::ports::{
    BlobStore, ConnRef, Decisions, KickReason, Log, NoticeKind, Presence, RateLimiter, RoomSignal, SignalKind,
    ViewStore,
};
use emosation_core::record::*;
use emosation_core::view::{RoomView, ViewKey, ViewValue};
use emosation_core::{Accepted, Record, Rejection};
use emosation_http::auth::TokenKind;
use emosation_http::{AuthUser, Authenticator, TokenPair};
use tokio::sync::{Semaphore, SemaphorePermit};

/// Ingest settings.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Messages per second per user (burst 2×); 0 disables the limit.
    pub message_rate: u32,
    /// Limits on logins, sign-ups, room creation and joins.
    pub abuse: AbuseLimits,
    /// How long to wait for the fold's decision before answering 503.
    pub decision_timeout: Duration,
    /// Shared secret for the admin endpoints; `None` disables them.
    pub admin_token: Option<String>,
    /// A session's absolute lifetime from its login: refreshes rotate its
    /// tokens but never extend it.
    pub session_lifetime: Duration,
    /// The largest upload, in bytes.
    pub attachment_max_bytes: u64,
}

/// An abuse limit: `burst` actions at once, then `per_minute` a minute.
/// `per_minute == 0` disables it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub burst: u32,
    pub per_minute: u32,
}

impl Limit {
    pub const OFF: Limit = Limit {
        burst: 0,
        per_minute: 0,
    };

    pub const fn new(burst: u32, per_minute: u32) -> Limit {
        Limit { burst, per_minute }
    }

    fn rate(self) -> f64 {
        self.per_minute as f64 / 60.0
    }

    /// How long an emptied bucket takes to allow one more action.
    fn retry_after(self) -> Duration {
        Duration::from_secs_f64(60.0 / self.per_minute.max(1) as f64)
    }
}

impl std::str::FromStr for Limit {
    type Err = String;

    /// `BURST/PER_MINUTE` (`10/10`), or `off`.
    fn from_str(s: &str) -> Result<Limit, String> {
        if s == "off" {
            return Ok(Limit::OFF);
        }
        let (burst, per_minute) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected BURST/PER_MINUTE (e.g. 10/10) or off"))?;
        let n = |v: &str| v.trim().parse::<u32>().map_err(|e| format!("{s:?}: {e}"));
        Ok(Limit::new(n(burst)?, n(per_minute)?))
    }
}

/// Limits on what one account or one client address may do, enforced
/// through the `RateLimiter` port (across ingest nodes on Redis). The
/// defaults leave people alone and stop scripts; load tests turn them off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbuseLimits {
    /// Login attempts per username, whoever makes them (password guessing).
    pub login_per_username: Limit,
    /// Login attempts per client address.
    pub login_per_ip: Limit,
    /// Sign-ups per client address.
    pub signup_per_ip: Limit,
    /// Rooms created per account.
    pub rooms_per_user: Limit,
    /// Joins per account.
    pub joins_per_user: Limit,
}

impl Default for AbuseLimits {
    fn default() -> Self {
        AbuseLimits {
            login_per_username: Limit::new(10, 10),
            login_per_ip: Limit::new(60, 60),
            signup_per_ip: Limit::new(30, 30),
            rooms_per_user: Limit::new(20, 20),
            joins_per_user: Limit::new(60, 60),
        }
    }
}

impl AbuseLimits {
    /// Every limit off (load tests from one address).
    pub fn off() -> Self {
        AbuseLimits {
            login_per_username: Limit::OFF,
            login_per_ip: Limit::OFF,
            signup_per_ip: Limit::OFF,
            rooms_per_user: Limit::OFF,
            joins_per_user: Limit::OFF,
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            message_rate: 50,
            abuse: AbuseLimits::default(),
            decision_timeout: Duration::from_secs(10),
            admin_token: None,
            session_lifetime: Duration::from_secs(30 * 24 * 3600),
            attachment_max_bytes: attachments::DEFAULT_ATTACHMENT_MAX_BYTES,
        }
    }
}

/// The outcome of posting a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub message_id: String,
    pub cursor: String,
    /// The `client_msg_id` had been used before; nothing new was stored.
    pub duplicate: bool,
}

/// Password hashes that may wait for a worker (each takes ~19 MiB and tens
/// of milliseconds of a core); more are refused at once.
pub const HASHES_WAITING: usize = 16;

/// How long ending a session waits for its connections to be gone.
pub const END_WAIT: Duration = Duration::from_secs(2);

/// A command's answer, once its record (already appended) is decided.
pub type Answer<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, CommandError>> + Send>>;

/// The command path shared by HTTP and WebSocket.
pub struct Ingest {
    log: Arc<dyn Log>,
    views: Arc<dyn ViewStore>,
    decisions: Arc<dyn Decisions>,
    auth: Arc<Authenticator>,
    /// Rate limits live in a port, so with a shared store they hold across ingest nodes.
    limits: Arc<dyn RateLimiter>,
    /// The registry of live connections on every fan-out node, through
    /// which an ended session's sockets are ended.
    presence: Arc<dyn Presence>,
    /// Bounds concurrent password hashes (each takes ~19 MiB and a core).
    hashing: Semaphore,
    /// Bounds the hashes running or waiting: beyond it a login or sign-up
    /// is answered `overloaded` at once instead of queueing without end.
    hashing_queue: Semaphore,
    dummy_hash: String,
    cfg: IngestConfig,
    /// Where uploads go; `None` on a node that takes no files.
    blobs: Option<Arc<dyn BlobStore>>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

/// The `limit` label of `emosation_rate_limited_total` for an abuse
/// limit's bucket (`KIND:KEY`): a closed set, never the key.
fn limit_label(bucket: &str) -> &'static str {
    match bucket.split_once(':').map_or(bucket, |(kind, _)| kind) {
        "login" => "login",
        "login-ip" => "login_ip",
        "signup-ip" => "signup_ip",
        "rooms" => "room",
        "joins" => "join",
        _ => "other",
    }
}

fn hash_password(password: &str) -> Result<String, CommandError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| CommandError::internal("argon2 hash", e))
}

fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

impl Ingest {
    /// Takes uploads into `blobs` (`POST /v1/rooms/{id}/attachments`) and
    /// deletes the blobs of expired ones.
    pub fn with_blobs(mut self, blobs: Arc<dyn BlobStore>) -> Self {
        self.blobs = Some(blobs);
        self
    }

    pub fn new(
        log: Arc<dyn Log>,
        views: Arc<dyn ViewStore>,
        decisions: Arc<dyn Decisions>,
        auth: Arc<Authenticator>,
        limits: Arc<dyn RateLimiter>,
        presence: Arc<dyn Presence>,
        cfg: IngestConfig,
    ) -> Result<Self, CommandError> {
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Ok(Ingest {
            log,
            views,
            decisions,
            auth,
            limits,
            presence,
            hashing: Semaphore::new(workers * 2),
            hashing_queue: Semaphore::new(workers * 2 + HASHES_WAITING),
            dummy_hash: hash_password("not-a-real-password")?,
            cfg,
            blobs: None,
        })
    }

    /// Takes a token from the user's message bucket (`message_rate` per
    /// second, burst 2×).
    async fn allow_message(&self, user_id: &str) -> Result<(), CommandError> {
        let rate = self.cfg.message_rate;
        if self
            .take(&format!("msg:{user_id}"), rate as f64, rate.saturating_mul(2))
            .await
        {
            Ok(())
        } else {
            metrics::counter!("emosation_rate_limited_total", "limit" => "message").increment(1);
            Err(CommandError::RateLimited {
                message: format!("more than {rate} messages per second"),
                retry_after: Duration::from_secs(1),
            })
        }
    }

    /// Takes a token from `bucket` under `limit`; `what` names the action
    /// in the refusal.
    async fn limit(&self, bucket: String, limit: Limit, what: &str) -> Result<(), CommandError> {
        if self.take(&bucket, limit.rate(), limit.burst).await {
            Ok(())
        } else {
            metrics::counter!("emosation_rate_limited_total", "limit" => limit_label(&bucket)).increment(1);
            Err(CommandError::RateLimited {
                message: format!("too many {what}; at most {} a minute", limit.per_minute),
                retry_after: limit.retry_after(),
            })
        }
    }

    /// One token, or `true` if the bucket store is unreachable: a limit is
    /// protection, not a reason to refuse people.
    async fn take(&self, bucket: &str, rate: f64, burst: u32) -> bool {
        if rate <= 0.0 {
            return true;
        }
        match self.limits.take(bucket, rate, burst).await {
            Ok(allowed) => allowed,
            Err(e) => {
                tracing::warn!(error = %e, bucket, "rate-limit store unreachable; letting it through");
                true
            }
        }
    }

    pub fn authenticator(&self) -> &Arc<Authenticator> {
        &self.auth
    }

    pub fn config(&self) -> &IngestConfig {
        &self.cfg
    }

    async fn hash(&self, password: String) -> Result<String, CommandError> {
        let _permit = self.hashing_permit().await?;
        tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(|e| CommandError::internal("hash task", e))?
    }

    async fn verify(&self, password: String, phc: String) -> Result<bool, CommandError> {
        let _permit = self.hashing_permit().await?;
        tokio::task::spawn_blocking(move || verify_password(&password, &phc))
            .await
            .map_err(|e| CommandError::internal("verify task", e))
    }

    /// A place among the running hashes: waits behind at most
    /// [`HASHES_WAITING`] others, else answers `overloaded` at once.
    async fn hashing_permit(&self) -> Result<(SemaphorePermit<'_>, SemaphorePermit<'_>), CommandError> {
        let queued = self.hashing_queue.try_acquire().map_err(|_| CommandError::Overloaded {
            message: "too many logins and sign-ups in progress; retry shortly".into(),
            retry_after: Duration::from_secs(1),
        })?;
        let running = self
            .hashing
            .acquire()
            .await
            .map_err(|_| CommandError::Unavailable("shutting down".into()))?;
        Ok((queued, running))
    }

    /// Appends the record built by `make(request_id, at)`, waits for the
    /// fold's decision, and maps an acceptance to the command's answer with
    /// `answer` (`Err` hands back an acceptance this command cannot have: an
    /// internal error). A rejection is the command's error.
    async fn command<T: Send + 'static>(
        &self,
        what: &'static str,
        make: impl FnOnce(i64, i64) -> Record,
        answer: impl FnOnce(Accepted) -> Result<T, Box<Accepted>> + Send + 'static,
    ) -> Result<T, CommandError> {
        self.begin(what, make, answer)?.await
    }

    /// [`Ingest::command`] whose answer also takes the record's log position
    /// (a cursor on its room's stream).
    async fn command_at<T: Send + 'static>(
        &self,
        what: &'static str,
        make: impl FnOnce(i64, i64) -> Record,
        answer: impl FnOnce(Accepted, String) -> Result<T, Box<Accepted>> + Send + 'static,
    ) -> Result<T, CommandError> {
        self.begin_at(what, make, answer)?.await
    }

    /// [`Ingest::command`] in two steps: the record is appended when this
    /// returns (its place in the log taken: commands begun one after another
    /// are stored in that order), and the returned future gives the answer.
    fn begin<T: Send + 'static>(
        &self,
        what: &'static str,
        make: impl FnOnce(i64, i64) -> Record,
        answer: impl FnOnce(Accepted) -> Result<T, Box<Accepted>> + Send + 'static,
    ) -> Result<Answer<T>, CommandError> {
        self.begin_at(what, make, |a, _| answer(a))
    }

    /// [`Ingest::begin`] whose answer also takes the record's log position.
    fn begin_at<T: Send + 'static>(
        &self,
        what: &'static str,
        make: impl FnOnce(i64, i64) -> Record,
        answer: impl FnOnce(Accepted, String) -> Result<T, Box<Accepted>> + Send + 'static,
    ) -> Result<Answer<T>, CommandError> {
        let request_id = rand::random::<i64>();
        let record = make(request_id, emosation_core::time::now_ms());
        let value = emosation_schemas::encode(&record).map_err(|e| CommandError::internal("encode record", e))?;
        let decided = self.decisions.expect(request_id);
        let key = record.key();
        let kind = record.kind();
        let started = std::time::Instant::now();
        let appended = self.log.append(record.topic(), key.as_bytes(), value.into());
        let timeout = self.cfg.decision_timeout;
        Ok(Box::pin(async move {
            let pos = appended.await?;
            let durable = started.elapsed();
            metrics::counter!("emosation_ingest_commands_total", "kind" => kind).increment(1);
            metrics::histogram!("emosation_ingest_append_seconds").record(durable.as_secs_f64());
            let decision = match tokio::time::timeout(timeout, decided).await {
                Ok(Some(decision)) => {
                    let answered = started.elapsed();
                    metrics::histogram!("emosation_ingest_decision_seconds").record((answered - durable).as_secs_f64());
                    // The whole wait a 2xx or an `ack` stands for: durable, then decided.
                    metrics::histogram!("emosation_ingest_ack_seconds").record(answered.as_secs_f64());
                    decision
                }
                Ok(None) => {
                    return Err(CommandError::Unavailable(
                        "the projector stopped before deciding".into(),
                    ));
                }
                Err(_) => return Err(CommandError::DecisionPending { position: pos.to_id() }),
            };
            // `answer` hands back an acceptance this command cannot have.
            answer(decision.outcome?, pos.to_id())
                .map_err(|other| CommandError::internal(what, format!("unexpected outcome {other:?}")))
        }))
    }

    /// The abuse limits of a login attempt: per username (whoever tries
    /// it), and per client address when it is known. Checked before the
    /// password is, so guessing costs no hash beyond the limit.
    pub async fn admit_login(&self, username: &str, client: Option<IpAddr>) -> Result<(), CommandError> {
        let limits = &self.cfg.abuse;
        if let Some(ip) = client {
            self.limit(
                format!("login-ip:{ip}"),
                limits.login_per_ip,
                "login attempts from this address",
            )
            .await?;
        }
        let name = normalize_username(username);
        self.limit(
            format!("login:{name}"),
            limits.login_per_username,
            "login attempts for this username",
        )
        .await
    }

    /// The abuse limit of a sign-up: per client address, when it is known.
    pub async fn admit_signup(&self, client: Option<IpAddr>) -> Result<(), CommandError> {
        match client {
            Some(ip) => {
                self.limit(
                    format!("signup-ip:{ip}"),
                    self.cfg.abuse.signup_per_ip,
                    "sign-ups from this address",
                )
                .await
            }
            None => Ok(()),
        }
    }

    pub async fn signup(&self, username: &str, password: &str) -> Result<(String, String), CommandError> {
        validate::username(username)?;
        validate::password(password)?;
        let username = normalize_username(username);
        // Cheap early refusal; the fold still decides every race.
        if self.views.user_by_name(&username).await?.is_some() {
            return Err(Rejection::UsernameTaken.into());
        }
        let password_hash = self.hash(password.to_owned()).await?;
        let make = |request_id, at| {
            Record::UserSignedUp(UserSignedUp {
                request_id,
                at,
                username: username.clone(),
                password_hash,
            })
        };
        let user_id = self
            .command("signup", make, |a| match a {
                Accepted::SignedUp { user_id } => Ok(user_id),
                other => Err(Box::new(other)),
            })
            .await?;
        Ok((user_id, username))
    }

    pub async fn login(&self, username: &str, password: &str) -> Result<TokenPair, CommandError> {
        let user = if validate::username(username).is_ok() {
            self.views.user_by_name(&normalize_username(username)).await?
        } else {
            None
        };
        // Verify against a dummy hash for unknown users, so timing does not
        // reveal which usernames exist.
        let phc = user
            .as_ref()
            .map_or_else(|| self.dummy_hash.clone(), |u| u.password_hash.clone());
        let ok = self.verify(password.to_owned(), phc).await?;
        let u = match user {
            Some(u) if ok && u.deleted_at.is_none() => u,
            _ => return Err(CommandError::InvalidCredentials),
        };
        // The session is a record, so the fold decides it against a
        // deletion racing this login, and replay rebuilds it.
        let sid = random_id(rand::random());
        let lifetime = i64::try_from(self.cfg.session_lifetime.as_millis()).unwrap_or(i64::MAX);
        let make = |request_id, at: i64| {
            Record::SessionOpened(SessionOpened {
                request_id,
                at,
                user_id: u.user_id.clone(),
                username: u.username.clone(),
                session_id: sid.clone(),
                expires_at: at.saturating_add(lifetime),
            })
        };
        let opened = self
            .command("login", make, |a| match a {
                Accepted::SessionOpened { expires_at } => Ok(expires_at),
                other => Err(Box::new(other)),
            })
            .await;
        let expires_at = match opened {
            Ok(expires_at) => expires_at,
            // Deleted between the check above and the fold.
            Err(CommandError::Rejected(Rejection::UnknownUser)) => return Err(CommandError::InvalidCredentials),
            Err(e) => return Err(e),
        };
        metrics::counter!("emosation_logins_total").increment(1);
        Ok(self.auth.keys.issue(&u.user_id, &u.username, &sid, 0, expires_at)?)
    }

    /// Rotates a session's refresh token. The fold decides in log order: the
    /// token's generation must be the session's current one, and then no
    /// longer is; a token presented again (stolen, or replayed) revokes the
    /// whole session, whose sockets are then ended, and is answered
    /// `invalid_token` like any other dead token.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, CommandError> {
        let claims = self.auth.authenticate(refresh_token, TokenKind::Refresh).await?;
        let generation = claims
            .generation
            .ok_or_else(|| CommandError::InvalidToken("refresh token without a generation".into()))?;
        let make = |request_id, at| {
            Record::SessionRefreshed(SessionRefreshed {
                request_id,
                at,
                user_id: claims.sub.clone(),
                username: claims.name.clone(),
                session_id: claims.sid.clone(),
                generation,
            })
        };
        let rotated = self
            .command("refresh", make, |a| match a {
                Accepted::Refreshed { generation, expires_at } => Ok(Some((generation, expires_at))),
                Accepted::RefreshReused => Ok(None),
                other => Err(Box::new(other)),
            })
            .await;
        match rotated {
            Ok(Some((generation, expires_at))) => {
                Ok(self
                    .auth
                    .keys
                    .issue(&claims.sub, &claims.name, &claims.sid, generation, expires_at)?)
            }
            Ok(None) => {
                tracing::warn!(user_id = %claims.sub, session_id = %claims.sid, "refresh token reused; session revoked");
                self.end_sessions(&claims.sub, Some(&claims.sid), KickReason::Revoked)
                    .await;
                Err(CommandError::InvalidToken(
                    "refresh token already used: the session is revoked".into(),
                ))
            }
            Err(CommandError::Rejected(Rejection::SessionEnded)) => {
                Err(CommandError::InvalidToken("the session has ended".into()))
            }
            Err(e) => Err(e),
        }
    }

    pub async fn logout(&self, user: &AuthUser) -> Result<(), CommandError> {
        let expires_at = self.auth.keys.session_expiry(user.issued_at) * 1000;
        let make = |request_id, at| {
            Record::SessionRevoked(SessionRevoked {
                request_id,
                at,
                user_id: user.user_id.clone(),
                username: user.username.clone(),
                session_id: user.session_id.clone(),
                expires_at,
            })
        };
        self.command("logout", make, |_| Ok(())).await?;
        self.end_sessions(&user.user_id, Some(&user.session_id), KickReason::Logout)
            .await;
        Ok(())
    }

    /// Ends the open WebSocket connections of a session (`Some(sid)`) or of
    /// every session of the user (`None`), on every fan-out node, once the
    /// views already refuse their tokens: each gets a `session_ended` frame
    /// and close 1008, and appends none of its sends after that. Returns
    /// once no such connection is registered any more, or after
    /// [`END_WAIT`] (a node that cannot be reached ends them at its next
    /// ping, when its periodic session check sees the views).
    pub async fn end_sessions(&self, user_id: &str, session: Option<&str>, reason: KickReason) {
        let ours = |c: &ConnRef| session.is_none_or(|s| c.session == s);
        let targets: Vec<ConnRef> = match self.presence.connections(user_id).await {
            Ok(conns) => conns.into_iter().filter(ours).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the session's connections; they end at their next ping");
                return;
            }
        };
        if targets.is_empty() {
            return;
        }
        for c in &targets {
            if let Err(e) = self.presence.kick(c, reason).await {
                tracing::warn!(error = %e, node = %c.node, "cannot send a session end; it ends at its next ping");
            }
        }
        let deadline = tokio::time::Instant::now() + END_WAIT;
        while tokio::time::Instant::now() < deadline {
            match self.presence.connections(user_id).await {
                Ok(conns) if !conns.iter().any(|c| targets.contains(c)) => return,
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "cannot list connections while ending a session"),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::warn!(
            user_id,
            "a session's connections did not end within {END_WAIT:?}; they end at their next ping"
        );
    }

    pub async fn delete_account(&self, user: &AuthUser) -> Result<(), CommandError> {
        self.soft_delete(&user.user_id, &user.username, None).await
    }

    /// Soft-deletes the account `user_id` for an admin (`by`: the admin's
    /// user id, `token` or `cli`, recorded for the audit): like the user's
    /// own `DELETE /v1/me`, its sessions end everywhere and an admin can
    /// restore it.
    pub async fn delete_user(&self, user_id: &str, by: &str) -> Result<(), CommandError> {
        if !emosation_core::ids::is_id(user_id) {
            return Err(Rejection::UnknownUser.into());
        }
        let user = self.views.user(user_id).await?.ok_or(Rejection::UnknownUser)?;
        self.soft_delete(&user.user_id, &user.username, Some(by)).await
    }

    /// Appends the deletion (`by`: `None` for the owner) and ends the
    /// account's sessions on every node.
    async fn soft_delete(&self, user_id: &str, username: &str, by: Option<&str>) -> Result<(), CommandError> {
        let make = |request_id, at| {
            Record::AccountDeleted(AccountDeleted {
                request_id,
                at,
                user_id: user_id.to_owned(),
                username: username.to_owned(),
                by: by.map(str::to_owned),
            })
        };
        self.command("delete account", make, |_| Ok(())).await?;
        self.end_sessions(user_id, None, KickReason::AccountDeleted).await;
        Ok(())
    }

    /// Restores a soft-deleted account for an admin (`by`, as for
    /// [`Ingest::delete_user`]).
    pub async fn restore_account(&self, user_id: &str, by: &str) -> Result<(), CommandError> {
        if !emosation_core::ids::is_id(user_id) {
            return Err(Rejection::UnknownUser.into());
        }
        let user = self.views.user(user_id).await?.ok_or(Rejection::UnknownUser)?;
        let make = |request_id, at| {
            Record::AccountRestored(AccountRestored {
                request_id,
                at,
                user_id: user.user_id.clone(),
                username: user.username.clone(),
                by: Some(by.to_owned()),
            })
        };
        self.command("restore account", make, |_| Ok(())).await
    }

    pub async fn create_room(
        &self,
        user: &AuthUser,
        name: &str,
        capacity: Option<i64>,
    ) -> Result<RoomView, CommandError> {
        let name = validate::room_name(name)?;
        self.limit(
            format!("rooms:{}", user.user_id),
            self.cfg.abuse.rooms_per_user,
            "rooms created",
        )
        .await?;
        let capacity = validate::capacity(capacity)?;
        let room_id = random_id(rand::random());
        let make = |request_id, at| {
            Record::RoomCreated(RoomCreated {
                request_id,
                at,
                room_id,
                name,
                capacity,
                owner_id: user.user_id.clone(),
                owner_name: user.username.clone(),
            })
        };
        self.command("create room", make, |a| match a {
            Accepted::RoomCreated(room) => Ok(room),
            other => Err(Box::new(other)),
        })
        .await
    }

    /// Joins a room; joining twice is a no-op. Returns the member count.
    pub async fn join(&self, user: &AuthUser, room_id: &str) -> Result<u32, CommandError> {
        let room = access::room(&*self.views, room_id).await?;
        if self.views.member(room_id, &user.user_id).await?.is_some() {
            return Ok(room.member_count);
        }
        self.limit(
            format!("joins:{}", user.user_id),
            self.cfg.abuse.joins_per_user,
            "joins",
        )
        .await?;
        let make = |request_id, at| {
            Record::MemberJoined(MemberJoined {
                request_id,
                at,
                room_id: room_id.to_owned(),
                user_id: user.user_id.clone(),
                username: user.username.clone(),
            })
        };
        self.command("join", make, |a| match a {
            Accepted::Joined { member_count, .. } => Ok(member_count),
            other => Err(Box::new(other)),
        })
        .await
    }

    pub async fn quit(&self, user: &AuthUser, room_id: &str) -> Result<u32, CommandError> {
        access::member_room(&*self.views, room_id, &user.user_id).await?;
        let make = |request_id, at| {
            Record::MemberQuit(MemberQuit {
                request_id,
                at,
                room_id: room_id.to_owned(),
                user_id: user.user_id.clone(),
                username: user.username.clone(),
            })
        };
        self.command("quit", make, |a| match a {
            Accepted::Quit { member_count } => Ok(member_count),
            other => Err(Box::new(other)),
        })
        .await
    }

    /// Posts a message. A repeated `client_msg_id` answers the first message.
    pub async fn post(
        &self,
        user: &AuthUser,
        room_id: &str,
        client_msg_id: &str,
        text: &str,
        attachments: &[String],
    ) -> Result<Posted, CommandError> {
        let text = self.check_post(user, room_id, client_msg_id, text, attachments).await?;
        self.begin_post(user, room_id, client_msg_id, &text, attachments)?.await
    }

    /// The checks of a post that may wait (input rules, membership, the
    /// attachments, the message rate); returns the text as it is stored
    /// (NFC-normalised), which [`Ingest::begin_post`] then takes.
    pub async fn check_post(
        &self,
        user: &AuthUser,
        room_id: &str,
        client_msg_id: &str,
        text: &str,
        attachments: &[String],
    ) -> Result<String, CommandError> {
        validate::client_msg_id(client_msg_id)?;
        let text = if attachments.is_empty() || !text.is_empty() {
            validate::text(text)?
        } else {
            String::new()
        };
        access::member_room(&*self.views, room_id, &user.user_id).await?;
        self.check_attachments(user, room_id, attachments).await?;
        self.allow_message(&user.user_id).await?;
        Ok(text)
    }

    /// Appends a post that passed [`Ingest::check_post`]; the returned
    /// future answers once the fold has decided it.
    pub fn begin_post(
        &self,
        user: &AuthUser,
        room_id: &str,
        client_msg_id: &str,
        text: &str,
        attachments: &[String],
    ) -> Result<Answer<Posted>, CommandError> {
        let make = |request_id, at| {
            Record::MessagePosted(MessagePosted {
                request_id,
                at,
                room_id: room_id.to_owned(),
                author_id: user.user_id.clone(),
                author: user.username.clone(),
                client_msg_id: client_msg_id.to_owned(),
                text: text.to_owned(),
                attachments: attachments.to_vec(),
            })
        };
        self.begin("post", make, |a| match a {
            Accepted::Posted { message_id, duplicate } => Ok(Posted {
                cursor: message_id.clone(),
                message_id,
                duplicate,
            }),
            other => Err(Box::new(other)),
        })
    }

    pub async fn mark_read(&self, user: &AuthUser, room_id: &str, message_id: &str) -> Result<(), CommandError> {
        access::room(&*self.views, room_id).await?;
        if LogPosition::parse_id(message_id).is_none() {
            return Err(CommandError::Invalid("message_id is not a message id".into()));
        }
        access::member_room(&*self.views, room_id, &user.user_id).await?;
        let make = |request_id, at| {
            Record::ReadMarkerSet(ReadMarkerSet {
                request_id,
                at,
                room_id: room_id.to_owned(),
                user_id: user.user_id.clone(),
                message_id: message_id.to_owned(),
            })
        };
        self.command("mark read", make, |_| Ok(())).await
    }

    /// The checks an edit or delete of `message_id` in `room_id` makes
    /// before appending (the fold decides again, in log order): the room
    /// exists, the user is a member, the message is one of the room's, and
    /// the user may change it (its author; for a delete, also the room's
    /// owner). Returns the message's author.
    async fn check_change(
        &self,
        user: &AuthUser,
        room_id: &str,
        message_id: &str,
        owner_may: bool,
    ) -> Result<(), CommandError> {
        let room = access::member_room(&*self.views, room_id, &user.user_id).await?;
        if LogPosition::parse_id(message_id).is_none() {
            return Err(Rejection::MessageNotFound.into());
        }
        let keys = [
            ViewKey::message(room_id, message_id),
            ViewKey::message_edit(room_id, message_id),
        ];
        let mut found = self.views.load(&keys).await?.into_iter();
        let Some(Some(ViewValue::Message(m))) = found.next() else {
            return Err(Rejection::MessageNotFound.into());
        };
        if m.author_id != user.user_id && !(owner_may && room.owner_id == user.user_id) {
            return Err(Rejection::NotAuthor.into());
        }
        if !owner_may && matches!(found.next(), Some(Some(ViewValue::MessageEdit(e))) if e.deleted_at.is_some()) {
            return Err(Rejection::MessageDeleted.into());
        }
        Ok(())
    }

    /// Replaces the text of one's own message. The analyzer classifies the
    /// new text, and its emotion supersedes the message's.
    pub async fn edit_message(
        &self,
        user: &AuthUser,
        room_id: &str,
        message_id: &str,
        text: &str,
    ) -> Result<Changed, CommandError> {
        let text = validate::text(text)?;
        self.check_change(user, room_id, message_id, false).await?;
        self.allow_message(&user.user_id).await?;
        let make = |request_id, at| {
            Record::MessageEdited(MessageEdited {
                request_id,
                at,
                room_id: room_id.to_owned(),
                message_id: message_id.to_owned(),
                user_id: user.user_id.clone(),
                username: user.username.clone(),
                text,
            })
        };
        self.command_at("edit message", make, |a, cursor| match a {
            Accepted::MessageEdited { message_id, edited_at } => Ok(Changed {
                message_id,
                cursor,
                at: edited_at,
            }),
            other => Err(Box::new(other)),
        })
        .await
    }

    /// Deletes a message: one's own, or any in a room one owns. Deleting a
    /// deleted message answers as the first delete did.
    pub async fn delete_message(
        &self,
        user: &AuthUser,
        room_id: &str,
        message_id: &str,
    ) -> Result<Changed, CommandError> {
        self.check_change(user, room_id, message_id, true).await?;
        let make = |request_id, at| {
            Record::MessageDeleted(MessageDeleted {
                request_id,
                at,
                room_id: room_id.to_owned(),
                message_id: message_id.to_owned(),
                user_id: user.user_id.clone(),
                username: user.username.clone(),
            })
        };
        self.command_at("delete message", make, |a, cursor| match a {
            Accepted::MessageDeleted {
                message_id, deleted_at, ..
            } => Ok(Changed {
                message_id,
                cursor,
                at: deleted_at,
            }),
            other => Err(Box::new(other)),
        })
        .await
    }
}

impl Ingest {
    /// The live account named `username`, for a friend request or block by name.
    pub async fn user_named(&self, username: &str) -> Result<emosation_core::view::UserView, CommandError> {
        self.views
            .user_by_name(&normalize_username(username))
            .await?
            .filter(|u| u.deleted_at.is_none())
            .ok_or_else(|| Rejection::UnknownUser.into())
    }

    /// Acts on the relationship with user `other_id` (`action` is one of
    /// `emosation_core::record::RELATIONSHIP_ACTIONS`), decided by the fold in the
    /// pair's partition. `open` answers the pair's direct-message room.
    pub async fn relate(&self, user: &AuthUser, other_id: &str, action: &str) -> Result<Related, CommandError> {
        if other_id == user.user_id {
            return Err(CommandError::Invalid("that is your own account".into()));
        }
        if !emosation_core::ids::is_id(other_id) {
            return Err(Rejection::UnknownUser.into());
        }
        let other = self
            .views
            .user(other_id)
            .await?
            .filter(|u| u.deleted_at.is_none())
            .ok_or(Rejection::UnknownUser)?;
        self.limit(
            format!("friends:{}", user.user_id),
            self.cfg.abuse.joins_per_user,
            "friend and block actions",
        )
        .await?;
        let room_id = emosation_core::ids::pair_room_id(&user.user_id, &other.user_id);
        let make = |request_id, at| {
            Record::RelationshipChanged(RelationshipChanged {
                request_id,
                at,
                room_id,
                user_id: user.user_id.clone(),
                username: user.username.clone(),
                other_id: other.user_id.clone(),
                other_name: other.username.clone(),
                action: action.to_owned(),
            })
        };
        let (other_id, other_name) = (other.user_id.clone(), other.username.clone());
        let related = self
            .command("relationship", make, move |a| match a {
                Accepted::Relationship { status, room_id } => Ok(Related {
                    other_id,
                    other_name,
                    status: status.as_str(),
                    room_id,
                }),
                other => Err(Box::new(other)),
            })
            .await?;
        // The other person hears of a request, or of being accepted, on
        // every connection they have (best effort: `GET /v1/friends` has
        // the whole picture).
        let notice = match (action, related.status) {
            ("request", "request_out") => Some(NoticeKind::FriendRequest),
            ("request" | "accept", "friends") => Some(NoticeKind::FriendAccepted),
            _ => None,
        };
        if let Some(what) = notice {
            let signal = RoomSignal {
                room_id: emosation_core::ids::pair_room_id(&user.user_id, &related.other_id),
                user_id: related.other_id.clone(),
                kind: SignalKind::Notice {
                    what,
                    from_id: user.user_id.clone(),
                    from_name: user.username.clone(),
                },
                origin: None,
            };
            if let Err(e) = self.presence.signal(&signal).await {
                tracing::debug!(error = %e, "cannot send a friend notice; the friends list has it");
            }
        }
        Ok(related)
    }
}

impl Ingest {
    /// Whether `user` holds the admin role (granted on the log, not revoked since).
    pub async fn is_admin(&self, user: &AuthUser) -> Result<bool, CommandError> {
        let key = emosation_core::view::ViewKey::admin_role(&normalize_username(&user.username));
        Ok(matches!(
            self.views.load(&[key]).await?.pop().flatten(),
            Some(ViewValue::AdminRole(r)) if r.granted && r.user_id == user.user_id
        ))
    }

    /// Grants or revokes the admin role of `user_id`; `by` is recorded
    /// (an admin's user id, or `token`). Answers whether it is granted now.
    pub async fn set_admin(&self, user_id: &str, granted: bool, by: &str) -> Result<bool, CommandError> {
        if !emosation_core::ids::is_id(user_id) {
            return Err(Rejection::UnknownUser.into());
        }
        let user = self.views.user(user_id).await?.ok_or(Rejection::UnknownUser)?;
        let make = |request_id, at| {
            Record::AdminRoleChanged(AdminRoleChanged {
                request_id,
                at,
                user_id: user.user_id.clone(),
                username: user.username.clone(),
                granted,
                by: by.to_owned(),
            })
        };
        self.command("admin role", make, |a| match a {
            Accepted::AdminRole { granted } => Ok(granted),
            other => Err(Box::new(other)),
        })
        .await
    }
}

/// Appends an `AdminRoleChanged` for the account named `username` to `log`
/// without waiting for the fold (the command line's `emosation admin
/// grant|revoke`, which may run while no projector does). Returns the
/// account's `(user_id, username)` and the record's position.
pub async fn append_admin_role(
    log: &dyn Log,
    views: &dyn ViewStore,
    username: &str,
    granted: bool,
    by: &str,
) -> Result<(String, String, LogPosition), CommandError> {
    let user = views
        .user_by_name(&normalize_username(username))
        .await?
        .ok_or(Rejection::UnknownUser)?;
    let record = Record::AdminRoleChanged(AdminRoleChanged {
        request_id: rand::random(),
        at: emosation_core::time::now_ms(),
        user_id: user.user_id.clone(),
        username: user.username.clone(),
        granted,
        by: by.to_owned(),
    });
    let bytes = emosation_schemas::encode(&record).map_err(|e| CommandError::internal("encode record", e))?;
    let pos = log
        .append(record.topic(), record.key().as_bytes(), bytes.into())
        .await?;
    Ok((user.user_id, user.username, pos))
}

/// Where the user stands with another after a relationship action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Related {
    pub other_id: String,
    pub other_name: String,
    /// `none`, `request_out`, `request_in` or `friends`.
    pub status: &'static str,
    /// The pair's direct-message room, for `open`.
    pub room_id: Option<String>,
}

/// An accepted edit or delete: the message, the change's log position (its
/// cursor on the room's stream) and when it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub message_id: String,
    pub cursor: String,
    pub at: i64,
}
