//! The command line. Every flag also reads an `EMOSATION_*` environment variable.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use emosation_core::ids::Topology;
use emosation_http::client::TrustedProxies;
use emosation_http::server::ConnectionLimits;
use emosation_http::tls::{Tls, TlsFiles};
use emosation_ingest::{AbuseLimits, IngestConfig, Limit};
use emosation_ws_fanout::FanoutConfig;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::net::TcpListener;

use crate::system::{Engines, Roles, ServeConfig, Server};

/// emosation: an event-sourced, emotion-aware chat backend.
///
/// With no subcommand, runs `serve`: every service in one process on the
/// embedded log and views under ./data.
#[derive(Debug, Parser)]
#[command(name = "emosation", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Let the kernel back this process's memory with transparent huge pages.
    /// Off by default: a huge-page fault zeroes (and may first compact) 2 MiB
    /// synchronously, which slows replay and adds latency spikes.
    #[arg(long, global = true, env = "EMOSATION_TRANSPARENT_HUGE_PAGES")]
    pub transparent_huge_pages: bool,
    /// Log lines on stderr: `text` for people, or `json`, one object per
    /// line (`timestamp`, `level`, `fields`, and the spans, among them
    /// `request` with its `request_id`), for a log pipeline.
    #[arg(long, global = true, env = "EMOSATION_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every service in one process (the default).
    Serve(ServeArgs),
    /// Drop the views and rebuild them from the start of the log.
    Replay(ReplayArgs),
    /// Inspect the views.
    Views {
        #[command(subcommand)]
        command: ViewsCommand,
    },
    /// Grant or revoke the admin role: appends a record to the log, so the
    /// role replays like everything else.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Run the ingest service alone (distributed deployment).
    Ingest(ServeArgs),
    /// Run the projector alone (distributed deployment).
    Projector(ServeArgs),
    /// Run a WebSocket fan-out node alone (distributed deployment).
    Fanout(ServeArgs),
    /// Run the emotion analyzer alone (distributed deployment).
    Analyzer(ServeArgs),
    /// Run the query API alone (distributed deployment).
    QueryApi(ServeArgs),
}

#[derive(Debug, Subcommand)]
pub enum ViewsCommand {
    /// Print one deterministic digest of every view's content.
    Checksum(ChecksumArgs),
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Make USERNAME an admin.
    Grant(AdminArgs),
    /// Take the admin role from USERNAME.
    Revoke(AdminArgs),
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The account's username.
    pub username: String,
    #[command(flatten)]
    pub engines: EngineArgs,
}

#[derive(Debug, Args)]
pub struct ChecksumArgs {
    #[command(flatten)]
    pub engines: EngineArgs,
    /// First fold the records the views have not folded yet (a server killed
    /// mid-stream leaves some), so that the digest is the whole log's, as a
    /// replay's is. Like replay, only on a stopped deployment. Without it the
    /// digest is of the views as stored, and how far they are behind the log
    /// is printed on stderr.
    #[arg(long, env = "EMOSATION_CATCH_UP", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub catch_up: bool,
}

/// Where the log and the views live.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Directory of the embedded engines (log, views, JWT secret).
    #[arg(long, env = "EMOSATION_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Log URL: `embedded://PATH` (default: DATA_DIR/log) or `kafka://HOST:PORT,…`.
    #[arg(long, env = "EMOSATION_LOG")]
    pub log: Option<String>,
    /// View store URL: `embedded://PATH` (default: DATA_DIR/views) or `scylla://HOST:PORT`.
    #[arg(long, env = "EMOSATION_STORE")]
    pub store: Option<String>,
    /// Cache and presence URL: in-process by default, or `redis://HOST:PORT`.
    #[arg(long, env = "EMOSATION_CACHE")]
    pub cache: Option<String>,
    /// Blob store URL for attachments' bytes: `embedded://PATH` (default:
    /// DATA_DIR/blobs) or `s3://BUCKET?endpoint=URL&region=…` (credentials
    /// from `access_key_id=`/`secret_access_key=` or the AWS environment).
    #[arg(long, env = "EMOSATION_BLOBS")]
    pub blobs: Option<String>,
    /// Partitions of the accounts topic, used when the log is created.
    #[arg(long, env = "EMOSATION_ACCOUNTS_PARTITIONS", default_value_t = 4)]
    pub accounts_partitions: u32,
    /// Partitions of the rooms topic, used when the log is created.
    #[arg(long, env = "EMOSATION_ROOMS_PARTITIONS", default_value_t = 8)]
    pub rooms_partitions: u32,
}

impl EngineArgs {
    fn engines(&self) -> anyhow::Result<Engines> {
        for (what, n) in [("accounts", self.accounts_partitions), ("rooms", self.rooms_partitions)] {
            anyhow::ensure!(
                (1..=emosation_core::ids::MAX_PARTITIONS).contains(&n),
                "--{what}-partitions must be between 1 and {}",
                emosation_core::ids::MAX_PARTITIONS
            );
        }
        Ok(Engines {
            data_dir: self.data_dir.clone(),
            log: self.log.clone(),
            store: self.store.clone(),
            cache: self.cache.clone(),
            blobs: self.blobs.clone(),
            inject_log_fault_after: None,
            topology: Topology {
                accounts_partitions: self.accounts_partitions,
                rooms_partitions: self.rooms_partitions,
            },
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to serve HTTP and WebSocket on (HTTPS and WSS with --tls-cert).
    #[arg(long, env = "EMOSATION_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// PEM certificate chain (the server's certificate first): serve HTTPS
    /// and WSS on --listen. Needs --tls-key; both files are read again on
    /// SIGHUP, for new connections (open ones keep theirs).
    #[arg(long, env = "EMOSATION_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "EMOSATION_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Also listen for plain HTTP on this address and answer every request
    /// with a 308 redirect to the same path over HTTPS (needs --tls-cert).
    #[arg(long, env = "EMOSATION_REDIRECT_HTTP", requires = "tls_cert")]
    pub redirect_http: Option<String>,
    #[command(flatten)]
    pub engines: EngineArgs,
    /// Messages per second per user (burst 2×); 0 turns the limit off.
    #[arg(long, env = "EMOSATION_MESSAGE_RATE", default_value_t = 50)]
    pub message_rate: u32,
    /// Login attempts per username, as BURST/PER_MINUTE, or off.
    #[arg(long, env = "EMOSATION_LOGIN_LIMIT", default_value = "10/10")]
    pub login_limit: Limit,
    /// Login attempts per client address, as BURST/PER_MINUTE, or off.
    #[arg(long, env = "EMOSATION_LOGIN_LIMIT_PER_IP", default_value = "60/60")]
    pub login_limit_per_ip: Limit,
    /// Sign-ups per client address, as BURST/PER_MINUTE, or off.
    #[arg(long, env = "EMOSATION_SIGNUP_LIMIT_PER_IP", default_value = "30/30")]
    pub signup_limit_per_ip: Limit,
    /// Rooms created per account, as BURST/PER_MINUTE, or off.
    #[arg(long, env = "EMOSATION_ROOM_LIMIT", default_value = "20/20")]
    pub room_limit: Limit,
    /// Joins per account, as BURST/PER_MINUTE, or off.
    #[arg(long, env = "EMOSATION_JOIN_LIMIT", default_value = "60/60")]
    pub join_limit: Limit,
    /// The largest file one upload may hold, in bytes (beyond it: 413).
    #[arg(long, env = "EMOSATION_ATTACHMENT_MAX_BYTES", default_value_t = emosation_ingest::attachments::DEFAULT_ATTACHMENT_MAX_BYTES)]
    pub attachment_max_bytes: u64,
    /// How long an upload may wait for a message to carry it before it is
    /// expired and its bytes deleted: seconds, or a number with `s`, `m`,
    /// `h` or `d`.
    #[arg(long, env = "EMOSATION_ATTACHMENT_GC_AFTER", default_value = "24h", value_parser = parse_duration)]
    pub attachment_gc_after: Duration,
    /// Turns every abuse limit above off (load tests from one address).
    #[arg(long, env = "EMOSATION_NO_ABUSE_LIMITS")]
    pub no_abuse_limits: bool,
    /// Proxies whose connections may name the client in X-Forwarded-For
    /// (the compose gateway), as ADDRESS[/PREFIX],…; none by default.
    #[arg(long, env = "EMOSATION_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: TrustedProxies,
    /// JWT signing secret (≥ 32 bytes). Default: generated into DATA_DIR/jwt.secret.
    #[arg(long, env = "EMOSATION_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Lifetime of access tokens, in seconds.
    #[arg(long, env = "EMOSATION_ACCESS_TTL_SECS", default_value_t = 900)]
    pub access_ttl_secs: u64,
    /// Lifetime of refresh tokens, in seconds (each refresh issues a new one;
    /// none outlives its session).
    #[arg(long, env = "EMOSATION_REFRESH_TTL_SECS", default_value_t = 30 * 24 * 3600)]
    pub refresh_ttl_secs: u64,
    /// Absolute lifetime of a session from its login, in seconds: refreshes
    /// never extend it, and then the user logs in again.
    #[arg(long, env = "EMOSATION_SESSION_LIFETIME_SECS", default_value_t = 30 * 24 * 3600)]
    pub session_lifetime_secs: u64,
    /// Shared secret for the admin endpoints (`X-Admin-Token`); unset disables them.
    #[arg(long, env = "EMOSATION_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Seconds to wait for the fold's decision on a command before answering 503.
    #[arg(long, env = "EMOSATION_DECISION_TIMEOUT_SECS", default_value_t = 10)]
    pub decision_timeout_secs: u64,
    /// WebSocket connections a user may hold at once; a newer one kicks the oldest.
    #[arg(long, env = "EMOSATION_SESSIONS_PER_USER", default_value_t = 1)]
    pub sessions_per_user: usize,
    /// Frames queued per WebSocket before the client is closed as too slow (1013).
    #[arg(long, env = "EMOSATION_WS_QUEUE_FRAMES", default_value_t = 1024)]
    pub ws_queue_frames: usize,
    /// Milliseconds over which a busy room of 64 or more subscribers on a
    /// node has its messages batched into one write per socket (0: a write
    /// per delivery pass). Adds at most this much to such a room's latency.
    #[arg(long, env = "EMOSATION_WS_BATCH_WINDOW_MS", default_value_t = 25)]
    pub ws_batch_window_ms: u64,
    /// Milliseconds a user who closed a room (every tab, on every node) has
    /// to come back before the room's subscribers are told they left: a
    /// reload or a reconnect is not a departure and an arrival.
    #[arg(long, env = "EMOSATION_PRESENCE_GRACE_MS", default_value_t = 5000)]
    pub presence_grace_ms: u64,
    /// Run the emotion analyzer in this process (`false` when it runs as its own service).
    #[arg(long, env = "EMOSATION_ANALYZER", default_value_t = true, action = clap::ArgAction::Set)]
    pub analyzer: bool,
    /// Seconds without any frame from a WebSocket client before it is closed.
    #[arg(long, env = "EMOSATION_WS_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub ws_idle_timeout_secs: u64,
    /// Seconds a client has to send a request's head (request line and
    /// headers), from when its connection opens or, on a keep-alive
    /// connection, from the previous response; a slower one is closed. Also
    /// the WebSocket handshake timeout.
    #[arg(long, env = "EMOSATION_HTTP_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub http_header_timeout_secs: u64,
    /// Seconds a request's body may take to arrive after its head; a slower
    /// one is answered 408 `request_timeout` and its connection closed.
    #[arg(long, env = "EMOSATION_HTTP_BODY_TIMEOUT_SECS", default_value_t = 10)]
    pub http_body_timeout_secs: u64,
    /// Seconds a keep-alive connection may wait for its next request before
    /// it is closed (the header timeout runs meanwhile too: the shorter wins).
    #[arg(long, env = "EMOSATION_HTTP_IDLE_TIMEOUT_SECS", default_value_t = 5)]
    pub http_idle_timeout_secs: u64,
    /// Open connections, HTTP and WebSocket, this process holds at most;
    /// beyond it a new one is answered 503 `overloaded` and closed. Default:
    /// three quarters of the open-file limit (raised to its hard limit at
    /// start).
    #[arg(long, env = "EMOSATION_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Open connections from one client address (IPv6: one /64) at most;
    /// beyond it a new one is answered 429 `rate_limited` and closed. 0: no
    /// cap (behind a proxy every client has the proxy's address).
    #[arg(long, env = "EMOSATION_MAX_CONNECTIONS_PER_IP", default_value_t = 1000)]
    pub max_connections_per_ip: usize,
    /// Seconds between a storage fault this process cannot recover from (the
    /// log's writer stopped, the view store refuses writes: a full disk) and
    /// its exit with status 1, for a supervisor to restart it; `/readyz`
    /// answers 503 meanwhile.
    #[arg(long, env = "EMOSATION_FAIL_GRACE_SECS", default_value_t = 5)]
    pub fail_grace_secs: u64,
    /// Testing only: the embedded log's writer fails, as on a full disk,
    /// once this many more records have been appended.
    #[arg(long, env = "EMOSATION_INJECT_LOG_FAULT_AFTER", hide = true)]
    pub inject_log_fault_after: Option<u64>,
    /// Boxed: keeps `Command`'s variants of similar size.
    #[command(flatten)]
    pub classifier: Box<ClassifierArgs>,
}

/// Which emotion classifier the analyzer uses.
#[derive(Clone, Args)]
pub struct ClassifierArgs {
    /// Emotion classifier: `offline` (lexicon, no network) or `openai` (any OpenAI-compatible server).
    #[arg(long = "classifier", env = "EMOSATION_CLASSIFIER", default_value = "offline",
          value_parser = ["offline", "openai"])]
    pub kind: String,
    /// Base URL of the OpenAI-compatible API, up to `/v1` (Ollama: http://localhost:11434/v1).
    #[arg(long, env = "EMOSATION_OPENAI_BASE_URL", default_value = emosation_analyzer::openai::DEFAULT_BASE_URL)]
    pub openai_base_url: String,
    /// Model id the server knows (e.g. gpt-4o-mini, llama3.2:3b).
    #[arg(long, env = "EMOSATION_OPENAI_MODEL", default_value = emosation_analyzer::openai::DEFAULT_MODEL)]
    pub openai_model: String,
    /// API key sent as a bearer token; unset sends none (local servers).
    #[arg(long, env = "EMOSATION_OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<String>,
    /// While the model is out (circuit open): `fallback` to the offline classifier, or `wait` for it.
    #[arg(long, env = "EMOSATION_CLASSIFIER_ON_OUTAGE", default_value = "fallback")]
    pub classifier_on_outage: emosation_analyzer::openai::OnOutage,
}

impl std::fmt::Debug for ClassifierArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassifierArgs")
            .field("kind", &self.kind)
            .field("openai_base_url", &self.openai_base_url)
            .field("openai_model", &self.openai_model)
            .field("openai_api_key", &self.openai_api_key.as_ref().map(|_| "<redacted>"))
            .field("classifier_on_outage", &self.classifier_on_outage)
            .finish()
    }
}

impl ClassifierArgs {
    pub fn settings(&self) -> emosation_analyzer::ClassifierSettings {
        use emosation_analyzer::openai::OpenAiConfig;
        match self.kind.as_str() {
            "openai" => emosation_analyzer::ClassifierSettings::OpenAi(OpenAiConfig {
                on_outage: self.classifier_on_outage,
                ..OpenAiConfig::new(&self.openai_base_url, &self.openai_model)
                    .with_api_key(self.openai_api_key.clone().unwrap_or_default())
            }),
            _ => emosation_analyzer::ClassifierSettings::Offline,
        }
    }
}

impl Default for ServeArgs {
    fn default() -> Self {
        // Parsing an empty command line applies the defaults and the environment.
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            args: ServeArgs,
        }
        Wrap::parse_from(["emosation"]).args
    }
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub engines: EngineArgs,
    /// Views to rebuild (comma-separated): `core` (every view the fold writes, rebuilt together since
    /// they share its decisions) and/or `activity`, `admin` (analytics views: cleared here and rebuilt
    /// from offset 0 by their consumers when the server next runs).
    #[arg(long, env = "EMOSATION_VIEWS", value_delimiter = ',', default_value = "core")]
    pub views: Vec<String>,
}

/// A duration: whole seconds (`90`), or a number and a unit (`90s`, `30m`,
/// `24h`, `7d`); at least one second.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected e.g. 90, 90s, 30m, 24h or 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{s:?}: the unit is one of s, m, h, d")),
    };
    if secs == 0 {
        return Err(format!("{s:?}: at least one second"));
    }
    Ok(Duration::from_secs(secs))
}

/// Connections the kernel completes and queues for `accept` (capped by
/// `net.core.somaxconn`). A burst of reconnecting clients (a fan-out node
/// restarted, a network blip) overflows a short queue, and every dropped
/// handshake waits a full second for the client's SYN to be retransmitted.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` (host:port, resolved) with a deep accept queue.
async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address to listen on")))
}

pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EMOSATION_LOG_LEVEL")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fjall=warn,lsm_tree=warn"));
    // Colours only for a terminal: a file, a pipe or a container's log
    // collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        // The current span's fields are in each line's `span`, and every
        // enclosing span's in `spans`: a request's lines carry its id.
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).try_init(),
    };
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let alone = |f: fn(&mut Roles)| {
        let mut roles = Roles::NONE;
        f(&mut roles);
        roles
    };
    let (args, roles) = match cli.command.unwrap_or_else(|| Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => (args, Roles::ALL),
        Command::Ingest(args) => (args, alone(|r| r.ingest = true)),
        Command::Projector(args) => (args, alone(|r| r.projector = true)),
        Command::Fanout(args) => (args, alone(|r| r.fanout = true)),
        Command::Analyzer(args) => (args, alone(|r| r.analyzer = true)),
        Command::QueryApi(args) => (args, alone(|r| r.query_api = true)),
        Command::Replay(args) => return replay(args).await,
        Command::Views {
            command: ViewsCommand::Checksum(args),
        } => return checksum(args).await,
        Command::Admin {
            command: AdminCommand::Grant(args),
        } => return admin_role(args, true).await,
        Command::Admin {
            command: AdminCommand::Revoke(args),
        } => return admin_role(args, false).await,
    };
    serve(args, roles).await
}

async fn serve(args: ServeArgs, roles: Roles) -> anyhow::Result<()> {
    // One service alone only makes sense beside the others, on a log they share.
    anyhow::ensure!(
        roles == Roles::ALL || args.engines.log.as_deref().is_some_and(|l| l.starts_with("kafka://")),
        "a service alone needs the log the other services share: give --log kafka://HOST:PORT \
         (or run `emosation serve` for every service in one process)"
    );
    let roles = Roles {
        // `serve --analyzer false` leaves the analyzer to its own process.
        analyzer: roles.analyzer && (args.analyzer || roles != Roles::ALL),
        ..roles
    };
    let open_files = match crate::process::raise_open_file_limit() {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            None
        }
    };
    let mut engines = args.engines.engines()?;
    engines.inject_log_fault_after = args.inject_log_fault_after;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            Tls::new(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })
            .context("--tls-cert/--tls-key")?,
        ),
        _ => None,
    };
    let cfg = ServeConfig {
        engines,
        ingest: IngestConfig {
            message_rate: args.message_rate,
            abuse: if args.no_abuse_limits {
                AbuseLimits::off()
            } else {
                AbuseLimits {
                    login_per_username: args.login_limit,
                    login_per_ip: args.login_limit_per_ip,
                    signup_per_ip: args.signup_limit_per_ip,
                    rooms_per_user: args.room_limit,
                    joins_per_user: args.join_limit,
                }
            },
            decision_timeout: Duration::from_secs(args.decision_timeout_secs.max(1)),
            admin_token: args.admin_token.filter(|t| !t.is_empty()),
            session_lifetime: Duration::from_secs(args.session_lifetime_secs.max(1)),
            attachment_max_bytes: args.attachment_max_bytes,
        },
        attachment_gc_after: args.attachment_gc_after,
        jwt_secret: args.jwt_secret,
        trusted_proxies: args.trusted_proxies,
        access_ttl: Duration::from_secs(args.access_ttl_secs.max(1)),
        refresh_ttl: Duration::from_secs(args.refresh_ttl_secs.max(1)),
        fanout: FanoutConfig {
            sessions_per_user: args.sessions_per_user.max(1),
            queue_frames: args.ws_queue_frames.max(1),
            idle_timeout: Duration::from_secs(args.ws_idle_timeout_secs.max(1)),
            ping_interval: Duration::from_secs((args.ws_idle_timeout_secs / 3).max(1)),
            batch_window: Duration::from_millis(args.ws_batch_window_ms),
            presence_grace: Duration::from_millis(args.presence_grace_ms),
            ..FanoutConfig::default()
        },
        roles,
        classifier: args.classifier.settings(),
        connections: ConnectionLimits {
            header_read_timeout: Duration::from_secs(args.http_header_timeout_secs.max(1)),
            body_timeout: Duration::from_secs(args.http_body_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(args.http_idle_timeout_secs.max(1)),
            max_connections: args
                .max_connections
                .unwrap_or_else(|| default_max_connections(open_files, tls.is_some()))
                .max(1),
            max_connections_per_ip: args.max_connections_per_ip,
            ..ConnectionLimits::default()
        },
        fail_grace: Duration::from_secs(args.fail_grace_secs),
        tls: tls.clone(),
    };
    let listener = listen(&args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let redirect = match &args.redirect_http {
        Some(addr) => Some(
            listen(addr)
                .await
                .with_context(|| format!("listen on {addr} (--redirect-http)"))?,
        ),
        None => None,
    };
    let mut server = Server::start(cfg, listener).await?;
    if let Some(redirect) = redirect {
        server.redirect_http(redirect)?;
    }
    if let Some(tls) = tls {
        tokio::spawn(reload_on_hangup(tls));
    }
    let stop = server.shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    server.wait().await
}

/// Connections a process holds by default: three quarters of its open-file
/// limit, leaving the rest to the engines' files and clients, so that a
/// connection beyond the cap is answered `overloaded` rather than failing
/// to be accepted at all.
/// With TLS a WebSocket holds three descriptors (its TCP connection and
/// the socket pair of its TLS bridge), so the default is a quarter.
fn default_max_connections(open_files: Option<u64>, tls: bool) -> usize {
    match open_files {
        Some(n) if tls => usize::try_from(n / 4).unwrap_or(usize::MAX),
        Some(n) => usize::try_from(n / 4 * 3).unwrap_or(usize::MAX),
        None => 1 << 20,
    }
}

/// Reads the certificate and key again at every SIGHUP: new connections
/// get the new pair, open ones keep theirs. A pair that cannot be used is
/// logged and the current one kept.
async fn reload_on_hangup(tls: Tls) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: the certificate will not be reloaded");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        let cert = tls.files().cert.display().to_string();
        match tls.reload() {
            Ok(()) => tracing::info!(%cert, "SIGHUP: reloaded the TLS certificate and key"),
            Err(e) => {
                tracing::error!(%cert, error = %e, "SIGHUP: cannot reload the TLS certificate; keeping the current one")
            }
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn checksum(args: ChecksumArgs) -> anyhow::Result<()> {
    let engines = args.engines.engines()?;
    let views = engines.open_views().await?;
    if args.catch_up {
        let log = engines.open_log().await?;
        let folded = emosation_projector::catch_up(&*log, &*views).await?;
        if folded > 0 {
            eprintln!("caught up: folded the {folded} records the views had not folded yet");
        }
    } else {
        // Only a note: the digest of the views as stored needs no log.
        let behind = match engines.open_log().await {
            Ok(log) => emosation_projector::lag(&*log, &*views)
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        match behind {
            Ok(0) => {}
            Ok(n) => eprintln!(
                "note: the views are {n} records behind the log; this digest is of the views as stored \
                 (--catch-up folds those records first, on a stopped deployment)"
            ),
            Err(e) => eprintln!("note: could not compare the views with the log: {e:#}"),
        }
    }
    println!("{}", views.checksum().await?);
    Ok(())
}

/// `emosation admin grant|revoke USERNAME`: appends an `AdminRoleChanged`
/// to the log. On the embedded engines (which a running server holds, so the
/// server is stopped) the record is folded at once, as `views checksum
/// --catch-up` folds; on a shared log the running projector folds it.
async fn admin_role(args: AdminArgs, granted: bool) -> anyhow::Result<()> {
    let engines = args.engines.engines()?;
    let views = engines
        .open_views()
        .await
        .context("open the views (on the embedded engines, stop the server first)")?;
    let log = engines.open_log().await?;
    let (user_id, username, pos) = emosation_ingest::append_admin_role(&*log, &*views, &args.username, granted, "cli")
        .await
        .with_context(|| format!("grant or revoke the admin role of {:?}", args.username))?;
    let what = if granted { "granted to" } else { "revoked from" };
    if args.engines.log.as_deref().is_none_or(|l| l.starts_with("embedded://")) {
        emosation_projector::catch_up(&*log, &*views).await?;
        println!("admin role {what} {username} ({user_id}), at {}", pos.to_id());
    } else {
        println!(
            "admin role {what} {username} ({user_id}): appended at {}; the projector folds it",
            pos.to_id()
        );
    }
    Ok(())
}

async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    use emosation_core::ports::CORE_VIEWS;
    use emosation_core::view::{ACTIVITY_VIEWS, ADMIN_VIEWS};
    for v in &args.views {
        anyhow::ensure!(
            v == CORE_VIEWS || v == ACTIVITY_VIEWS || v == ADMIN_VIEWS,
            "unknown view {v:?}; known views: {CORE_VIEWS} (every view the fold writes: users, rooms, members, \
             messages, sessions, emotions), {ACTIVITY_VIEWS}, {ADMIN_VIEWS}"
        );
    }
    let engines = args.engines.engines()?;
    let views = engines.open_views().await?;
    for analytics in [ACTIVITY_VIEWS, ADMIN_VIEWS] {
        if args.views.iter().any(|v| v == analytics) {
            // An analytics view is its own consumer's: dropping it (and its
            // positions) makes the consumer backfill it from offset 0.
            views.clear(analytics).await?;
            println!(
                "{analytics} views cleared: the {analytics} consumer rebuilds them from offset 0 when the server next runs"
            );
        }
    }
    if !args.views.iter().any(|v| v == CORE_VIEWS) {
        return Ok(());
    }
    let log = engines.open_log().await?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} records  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let b = bar.clone();
    let progress = Arc::new(move |done: u64, total: u64| {
        b.set_length(total);
        b.set_position(done);
    });
    let stats = emosation_projector::replay(log, Arc::clone(&views), progress).await?;
    bar.finish();
    println!(
        "replayed {} records in {:.2}s: {:.0} events/s",
        stats.records,
        stats.elapsed.as_secs_f64(),
        stats.per_second()
    );
    println!("views checksum {}", views.checksum().await?);
    Ok(())
}
