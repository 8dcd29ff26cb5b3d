//! Wiring: engines from URLs, services on top, one HTTP router.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use emosation_analyzer::{ActivityConsumer, AdminConsumer, Analyzer, run_consumer};
use emosation_core::ids::Topology;
use emosation_core::ports::{BlobStore, Log, Presence, RateLimiter, ViewStore};
use emosation_http::server::ConnectionLimits;
use emosation_http::{Authenticator, TokenKeys};
use emosation_ingest::{Ingest, IngestConfig};
use emosation_projector::Projector;
use emosation_ws_fanout::{Fanout, FanoutConfig, Feed};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Largest request body accepted (a 4000-character message is at most ~16 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Where the engines are.
#[derive(Debug, Clone)]
pub struct Engines {
    pub data_dir: PathBuf,
    /// Log URL; `None` → `embedded://DATA_DIR/log`.
    pub log: Option<String>,
    /// View store URL; `None` → `embedded://DATA_DIR/views`.
    pub store: Option<String>,
    /// Cache URL (presence, rate limits); `None` → in process.
    pub cache: Option<String>,
    /// Blob store URL (attachments' bytes); `None` → `DATA_DIR/blobs`.
    pub blobs: Option<String>,
    pub topology: Topology,
    /// Testing only: the embedded log's writer fails, as on a full disk,
    /// once this many more records have been appended.
    #[doc(hidden)]
    pub inject_log_fault_after: Option<u64>,
}

impl Engines {
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        Engines {
            data_dir: data_dir.into(),
            log: None,
            store: None,
            cache: None,
            blobs: None,
            topology: Topology::default(),
            inject_log_fault_after: None,
        }
    }

    /// The blob store (attachments): `embedded://PATH`, `s3://BUCKET?…`, or
    /// `DATA_DIR/blobs`.
    pub fn open_blobs(&self) -> anyhow::Result<Arc<dyn BlobStore>> {
        crate::process::private_dir(&self.data_dir)
            .with_context(|| format!("create data dir {}", self.data_dir.display()))?;
        emosation_storage::open_blobs(self.blobs.as_deref(), &self.data_dir.join("blobs")).context("open blob store")
    }

    fn log_url(&self) -> String {
        self.log
            .clone()
            .unwrap_or_else(|| format!("embedded://{}", self.data_dir.join("log").display()))
    }

    fn store_url(&self) -> String {
        self.store
            .clone()
            .unwrap_or_else(|| format!("embedded://{}", self.data_dir.join("views").display()))
    }

    pub async fn open_log(&self) -> anyhow::Result<Arc<dyn Log>> {
        crate::process::private_dir(&self.data_dir)
            .with_context(|| format!("create data dir {}", self.data_dir.display()))?;
        match self.inject_log_fault_after {
            Some(after) => emosation_storage::open_log_failing_after(&self.log_url(), self.topology, after).await,
            None => emosation_storage::open_log(&self.log_url(), self.topology).await,
        }
        .context("open log")
    }

    pub async fn open_presence(&self) -> anyhow::Result<Arc<dyn Presence>> {
        emosation_storage::open_presence(self.cache.as_deref())
            .await
            .context("open cache/presence")
    }

    pub async fn open_rate_limiter(&self) -> anyhow::Result<Arc<dyn RateLimiter>> {
        emosation_storage::open_rate_limiter(self.cache.as_deref())
            .await
            .context("open cache/rate limiter")
    }

    pub async fn open_views(&self) -> anyhow::Result<Arc<dyn ViewStore>> {
        crate::process::private_dir(&self.data_dir)
            .with_context(|| format!("create data dir {}", self.data_dir.display()))?;
        emosation_storage::open_views(&self.store_url())
            .await
            .context("open view store")
    }
}

/// Settings of the all-in-one server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub engines: Engines,
    pub ingest: IngestConfig,
    /// JWT signing secret; `None` → read or create `DATA_DIR/jwt.secret`.
    pub jwt_secret: Option<String>,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub fanout: FanoutConfig,
    /// The services this process runs.
    pub roles: Roles,
    /// The analyzer's classifier (offline by default).
    pub classifier: emosation_analyzer::ClassifierSettings,
    /// Timeouts and caps of the HTTP listener's connections.
    pub connections: ConnectionLimits,
    /// How long `/readyz` answers 503 after a storage fault this process
    /// cannot recover from, before the process exits with an error.
    pub fail_grace: Duration,
    /// Proxies whose connections may name the client in `X-Forwarded-For`.
    pub trusted_proxies: emosation_http::client::TrustedProxies,
    /// Serve HTTPS and WSS with this certificate; plain HTTP when `None`.
    pub tls: Option<emosation_http::tls::Tls>,
    /// Uploads no message carried within this long are expired and their
    /// blobs deleted (by the processes that run ingest).
    pub attachment_gc_after: Duration,
}

/// How long an upload may wait for a message to carry it, by default.
pub const DEFAULT_ATTACHMENT_GC_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How often the attachment collector runs for a given delay: a quarter of
/// it, between a second and ten minutes.
pub fn attachment_gc_every(after: Duration) -> Duration {
    (after / 4).clamp(Duration::from_secs(1), Duration::from_secs(600))
}

/// The services of one process: all of them for `serve`, one for
/// `emosation ingest | projector | fanout | analyzer | query-api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub ingest: bool,
    pub projector: bool,
    pub fanout: bool,
    pub analyzer: bool,
    pub query_api: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        ingest: true,
        projector: true,
        fanout: true,
        analyzer: true,
        query_api: true,
    };
    pub const NONE: Roles = Roles {
        ingest: false,
        projector: false,
        fanout: false,
        analyzer: false,
        query_api: false,
    };

    /// Whether any of the services reads the views.
    fn reads_views(&self) -> bool {
        self.ingest || self.fanout || self.query_api || self.projector
    }
}

/// What a process runs beside its roles, decided from the roles and the
/// engines' URLs alone (no I/O), so the decision has tests of its own.
///
/// Views are per process when the store is embedded: a process whose
/// services read views then folds the log into its own embedded store (a
/// replica — the fold is deterministic, so every replica decides every
/// command the same way) and learns decisions from its own projector. With
/// a shared store (`redis://`, `scylla://`), only a projector writes it, and
/// the others learn its decisions through Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub roles: Roles,
    /// The views are shared by every process (`redis://`, `scylla://`).
    pub shared_views: bool,
    /// A projector runs here: the projector's role, or the replica of
    /// embedded views that this process's services read.
    pub projector: bool,
    /// Decisions cross processes through Redis (shared views and a
    /// `redis://` cache); otherwise they stay in the process.
    pub redis_decisions: bool,
    /// The activity and admin consumers run here: where `/activity` and
    /// `/v1/admin/stats` are served on per-process views, in the analyzer
    /// service on shared ones.
    pub activity: bool,
    /// Analytics share the process with the chat path, so they get a
    /// low-priority runtime of their own.
    pub analytics_runtime: bool,
    /// The projector shares the process with what serves clients (ingest,
    /// fan-out, query API), so it gets a thread and runtime of its own (see
    /// [`SideRuntime`]).
    pub projector_runtime: bool,
}

impl Plan {
    pub fn new(roles: Roles, engines: &Engines) -> anyhow::Result<Plan> {
        let shared_views = engines
            .store
            .as_deref()
            .is_some_and(emosation_storage::is_shared_view_store);
        let projector = roles.projector || (roles.reads_views() && !shared_views);
        let redis_decisions = shared_views && engines.cache.as_deref().is_some_and(|c| c.starts_with("redis://"));
        anyhow::ensure!(
            projector || !(roles.ingest || roles.fanout) || redis_decisions,
            "ingest and fan-out on a shared view store learn the projector's decisions through Redis: \
             give --cache redis://…, or run them with the projector (`serve`), or on embedded views"
        );
        let activity = (shared_views && roles.analyzer) || (!shared_views && projector && roles.query_api);
        let chat_path = roles.ingest || roles.fanout || roles.projector || roles.query_api;
        Ok(Plan {
            roles,
            shared_views,
            projector,
            redis_decisions,
            activity,
            analytics_runtime: chat_path && (roles.analyzer || activity),
            projector_runtime: projector && (roles.ingest || roles.fanout || roles.query_api),
        })
    }
}

impl ServeConfig {
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        ServeConfig {
            engines: Engines::embedded(data_dir),
            ingest: IngestConfig::default(),
            jwt_secret: None,
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            fanout: FanoutConfig::default(),
            roles: Roles::ALL,
            classifier: Default::default(),
            connections: ConnectionLimits::default(),
            fail_grace: Duration::from_secs(5),
            trusted_proxies: Default::default(),
            tls: None,
            attachment_gc_after: DEFAULT_ATTACHMENT_GC_AFTER,
        }
    }
}

/// The JWT secret: given, or read from / generated into `DATA_DIR/jwt.secret`
/// (mode 0600) so tokens survive restarts. Never a constant in the code.
pub fn jwt_secret(given: Option<&str>, data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    if let Some(s) = given {
        anyhow::ensure!(s.len() >= 32, "the JWT secret must be at least 32 bytes");
        return Ok(s.as_bytes().to_vec());
    }
    let path = data_dir.join("jwt.secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim();
        anyhow::ensure!(s.len() >= 32, "{} holds fewer than 32 bytes", path.display());
        return Ok(s.as_bytes().to_vec());
    }
    crate::process::private_dir(data_dir)?;
    let secret: String = (0..4).map(|_| format!("{:016x}", rand::random::<u64>())).collect();
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&path).with_context(|| format!("create {}", path.display()))?;
        f.write_all(secret.as_bytes())?;
        f.sync_all()?;
    }
    info!(path = %path.display(), "generated a new JWT signing secret");
    Ok(secret.into_bytes())
}

/// The engines whose failure this process cannot recover from without a
/// restart.
#[derive(Clone)]
struct Storage {
    log: Arc<dyn Log>,
    views: Arc<dyn ViewStore>,
}

impl Storage {
    /// How often [`Storage::watch`] asks the engines.
    const CHECK_EVERY: Duration = Duration::from_millis(200);

    fn health(&self) -> Result<(), String> {
        self.log.health().and_then(|()| self.views.health())
    }

    /// Ends with an error `grace` after the engines report a fault they will
    /// not recover from (the log's writer stopped, the view store refuses
    /// writes), so that the process exits and a supervisor restarts it:
    /// until then `/readyz` answers 503, and a write answers 503
    /// `unavailable`. Ends with `Ok` on a shutdown before any fault.
    async fn watch(self, grace: Duration, stop: CancellationToken) -> anyhow::Result<()> {
        let fault = loop {
            if let Err(why) = self.health() {
                break why;
            }
            tokio::select! {
                _ = tokio::time::sleep(Self::CHECK_EVERY) => {}
                _ = stop.cancelled() => return Ok(()),
            }
        };
        error!(fault = %fault, ?grace, "storage failed; not ready, exiting after the grace period");
        tokio::select! {
            _ = tokio::time::sleep(grace) => {}
            _ = stop.cancelled() => {}
        }
        anyhow::bail!("storage failed: {fault}")
    }
}

/// How often [`export_projector_lag`] reads the positions.
const PROJECTOR_LAG_EVERY: Duration = Duration::from_secs(2);

/// Sets `emosation_consumer_lag_records{group="core",topic,partition}`, the
/// records of each partition the projector has not folded yet, every
/// [`PROJECTOR_LAG_EVERY`] until `stop`. The projector is on the chat path,
/// so the runner exports no lag for it (see `runner`); this reads the log's
/// end offsets and the views' positions from outside instead, costing the
/// fold nothing.
async fn export_projector_lag(log: &dyn Log, views: &dyn ViewStore, stop: CancellationToken) {
    use emosation_core::ids::Topic;
    use emosation_core::ports::CORE_VIEWS;
    let topology = log.topology();
    loop {
        for topic in Topic::ALL {
            for partition in 0..topology.partitions(topic) {
                let (end, at) = match (
                    log.end_offset(topic, partition).await,
                    views.position(CORE_VIEWS, topic, partition).await,
                ) {
                    (Ok(end), Ok(at)) => (end, at),
                    // A failing engine says so elsewhere; try again later.
                    _ => continue,
                };
                metrics::gauge!("emosation_consumer_lag_records",
                    "group" => CORE_VIEWS, "topic" => topic.name(), "partition" => partition.to_string())
                .set(end.saturating_sub(at) as f64);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(PROJECTOR_LAG_EVERY) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// A running all-in-one server.
pub struct Server {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
    /// The listener's connection limits, for the redirect listener too.
    limits: ConnectionLimits,
    /// Where the analytics consumers run beside the chat path (if they do).
    _analytics: Option<SideRuntime>,
    /// Where the projector runs beside the sockets (if it does).
    _projector: Option<SideRuntime>,
}

/// A runtime of its own for work that shares the process with the sockets,
/// so that the OS scheduler, not the sockets' run queue, decides when it
/// runs.
///
/// - **The analytics consumers** (analyzer, activity, admin) beside the chat
///   path (`serve`): their threads run at the lowest CPU priority (nice 19),
///   so classifying a message's emotion and folding activity happen in the
///   time the chat path leaves. On a core shared with the fan-out, an
///   analyzer woken by the same group commit as a message's socket writes
///   would run between them and add ~0.1 ms to its last receivers; at the
///   lowest priority it waits for them, and still progresses, with a small
///   share, on a saturated machine.
/// - **The projector** beside ingest, the fan-out or the query API: its
///   decisions gate every acknowledgement, and on the server's runtime it
///   was one task among thousands of sockets woken by the same burst (a
///   group commit's acks, a batch's deliveries), so a decision waited its
///   turn behind all of them — tens of milliseconds at a few thousand
///   messages a second, the tail that set `small_rooms`' highest rate held
///   (bench/README.md, "sixth session"). And its view commits block: fjall
///   takes its journal lock for a commit, which its flush workers hold while
///   they sync the journal (20–50 ms at times on a busy disk), so on the
///   server's runtime every socket on that worker stopped with it. On a
///   thread of its own, at normal priority, it runs when it wakes (the
///   kernel's scheduler favours a thread that slept) and blocks no one but
///   itself. One worker thread: the projector is one task.
struct SideRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl SideRuntime {
    fn analytics() -> std::io::Result<SideRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("analytics")
            .on_thread_start(|| {
                if let Err(e) = crate::process::lower_current_thread_priority() {
                    warn!(error = %e, "cannot lower an analytics thread's priority");
                }
            })
            .enable_all()
            .build()?;
        Ok(SideRuntime { runtime: Some(runtime) })
    }

    fn projector() -> std::io::Result<SideRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("projector")
            .enable_all()
            .build()?;
        Ok(SideRuntime { runtime: Some(runtime) })
    }

    /// Spawns `task` into the server's task set: on `side` if there is one
    /// (the task set then holds a future that ends with it), else where the
    /// server runs.
    fn spawn<F>(side: Option<&SideRuntime>, tasks: &mut JoinSet<anyhow::Result<()>>, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        match side.and_then(|a| a.runtime.as_ref()) {
            Some(rt) => {
                let handle = rt.spawn(task);
                tasks.spawn(async move {
                    handle
                        .await
                        .map_err(|e| anyhow::anyhow!("task on a side runtime: {e}"))?
                });
            }
            None => {
                tasks.spawn(task);
            }
        }
    }
}

impl Drop for SideRuntime {
    fn drop(&mut self) {
        // Never blocks (the server may be dropped inside the main runtime).
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Server {
    /// Opens the engines and starts what `Plan::new(cfg.roles, …)` decides,
    /// serving the HTTP side (and `/healthz`, `/metrics`) on `listener`.
    pub async fn start(cfg: ServeConfig, listener: TcpListener) -> anyhow::Result<Server> {
        let plan = Plan::new(cfg.roles, &cfg.engines)?;
        let roles = plan.roles;
        let log = cfg.engines.open_log().await?;
        let views = cfg.engines.open_views().await?;
        let decisions_url = cfg.engines.cache.as_deref().filter(|_| plan.redis_decisions);
        let decisions = emosation_storage::open_decisions(decisions_url, Arc::clone(&views))
            .await
            .context("subscribe to decisions")?;
        let secret = jwt_secret(cfg.jwt_secret.as_deref(), &cfg.engines.data_dir)?;
        let keys = TokenKeys::new(&secret, cfg.access_ttl, cfg.refresh_ttl);
        let auth = Arc::new(Authenticator::new(keys, Arc::clone(&views)));
        let presence = cfg.engines.open_presence().await?;
        // Files: uploads at ingest, downloads at the query API.
        let blobs = if roles.ingest || roles.query_api {
            Some(cfg.engines.open_blobs()?)
        } else {
            None
        };
        let mut ingest = Ingest::new(
            Arc::clone(&log),
            Arc::clone(&views),
            Arc::clone(&decisions),
            Arc::clone(&auth),
            cfg.engines.open_rate_limiter().await?,
            Arc::clone(&presence),
            cfg.ingest,
        )
        .context("start ingest")?;
        if let (true, Some(blobs)) = (roles.ingest, &blobs) {
            ingest = ingest.with_blobs(Arc::clone(blobs));
        }
        let ingest = Arc::new(ingest);

        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut app = Router::new();
        let tails = emosation_query_api::tail_cache();
        if roles.ingest {
            app = app.merge(emosation_ingest::http::routes(Arc::clone(&ingest)));
            let (ingest, after, stop) = (Arc::clone(&ingest), cfg.attachment_gc_after, shutdown.clone());
            tasks.spawn(async move {
                emosation_ingest::attachments::run_attachment_gc(
                    ingest,
                    after,
                    attachment_gc_every(after),
                    stop.cancelled_owned(),
                )
                .await;
                Ok(())
            });
        }
        if roles.query_api {
            app = app.merge(emosation_query_api::routes(
                Arc::clone(&views),
                Arc::clone(&auth),
                Arc::clone(&tails),
                Arc::clone(&presence),
            ));
            app = app.merge(emosation_query_api::admin::routes(
                Arc::clone(&views),
                Arc::clone(&auth),
                Arc::clone(&presence),
                ingest.config().admin_token.clone(),
                log.topology(),
            ));
            if let Some(blobs) = &blobs {
                app = app.merge(emosation_query_api::attachments::routes(
                    Arc::clone(&views),
                    Arc::clone(&auth),
                    Arc::clone(blobs),
                ));
            }
            app = app.merge(emosation_web::routes());
        }
        if roles.fanout {
            let feed = Feed::new(
                Arc::clone(&log),
                Arc::clone(&views),
                Arc::clone(&decisions),
                cfg.fanout.batch_window,
                shutdown.clone(),
            );
            let fanout = Fanout::start(feed, Arc::clone(&ingest), Arc::clone(&presence), cfg.fanout)
                .await
                .context("subscribe to kick orders")?;
            app = app.merge(emosation_ws_fanout::routes(fanout));
        }
        let analytics = if plan.analytics_runtime {
            Some(SideRuntime::analytics().context("start the analytics runtime")?)
        } else {
            None
        };
        if roles.analyzer {
            let analyzer = Analyzer::new(
                Arc::clone(&log),
                emosation_analyzer::classifier_from_settings(&cfg.classifier),
            );
            let stop = shutdown.clone();
            SideRuntime::spawn(analytics.as_ref(), &mut tasks, async move {
                analyzer.run(stop).await.context("analyzer")
            });
        }
        if plan.activity {
            let activity = Arc::new(ActivityConsumer::new(Arc::clone(&views), Arc::clone(&decisions)));
            let (activity_log, stop) = (Arc::clone(&log), shutdown.clone());
            SideRuntime::spawn(analytics.as_ref(), &mut tasks, async move {
                run_consumer(activity, activity_log, stop)
                    .await
                    .context("activity consumer")
            });
            // The admin console's counters and audit, beside the activity
            // consumer wherever it runs (a consumer of views of its own).
            let admin = Arc::new(AdminConsumer::new(Arc::clone(&views), Arc::clone(&decisions)));
            let (admin_log, stop) = (Arc::clone(&log), shutdown.clone());
            SideRuntime::spawn(analytics.as_ref(), &mut tasks, async move {
                run_consumer(admin, admin_log, stop).await.context("admin consumer")
            });
        }
        let projector_runtime = if plan.projector_runtime {
            Some(SideRuntime::projector().context("start the projector's runtime")?)
        } else {
            None
        };
        if plan.projector {
            let projector = Projector::new(Arc::clone(&log), Arc::clone(&views), decisions);
            let stop = shutdown.clone();
            SideRuntime::spawn(projector_runtime.as_ref(), &mut tasks, async move {
                projector.run(stop).await.context("projector")
            });
            let (log, views, stop) = (Arc::clone(&log), Arc::clone(&views), shutdown.clone());
            tasks.spawn(async move {
                export_projector_lag(&*log, &*views, stop).await;
                Ok(())
            });
        }
        info!(?plan, replica = plan.projector && !roles.projector, "services starting");

        let storage = Storage {
            log: Arc::clone(&log),
            views: Arc::clone(&views),
        };
        let ready = {
            let (storage, stop) = (storage.clone(), shutdown.clone());
            Arc::new(move || {
                if stop.is_cancelled() {
                    return Err("shutting down".to_owned());
                }
                storage.health()
            })
        };
        let memory = {
            let (log, views, tails) = (Arc::clone(&log), Arc::clone(&views), Arc::clone(&tails));
            Arc::new(move || {
                let mut parts = log.memory();
                parts.extend(views.memory());
                if roles.query_api {
                    parts.push(tails.memory());
                }
                parts
            })
        };
        let (grace, stop) = (cfg.fail_grace, shutdown.clone());
        tasks.spawn(async move { storage.watch(grace, stop).await });

        // `with_state(())` turns every handler into a ready route once, here,
        // instead of per request.
        let app = emosation_http::observe::finish(app, ready, memory)
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(cfg.trusted_proxies.clone()),
                emosation_http::client::resolve,
            ))
            .with_state(());
        let addr = listener.local_addr()?;
        let (limits, stop, tls) = (cfg.connections.clone(), shutdown.clone(), cfg.tls.clone());
        tasks.spawn(async move {
            emosation_http::server::serve(listener, app, limits, tls, stop)
                .await
                .context("http server")
        });
        info!(%addr, tls = cfg.tls.is_some(), "emosation serving");
        Ok(Server {
            addr,
            shutdown,
            tasks,
            limits: cfg.connections,
            _analytics: analytics,
            _projector: projector_runtime,
        })
    }

    /// Answers plain HTTP on `listener` with a `308` to the same path on
    /// this server's HTTPS port (`--redirect-http`), under the same
    /// connection limits, until the server stops.
    pub fn redirect_http(&mut self, listener: TcpListener) -> anyhow::Result<SocketAddr> {
        let at = listener.local_addr()?;
        let app = emosation_http::tls::redirect(self.addr.port())
            .layer(axum::middleware::from_fn(emosation_http::observe::track));
        let (limits, stop) = (self.limits.clone(), self.shutdown.clone());
        self.tasks.spawn(async move {
            emosation_http::server::serve(listener, app, limits, None, stop)
                .await
                .context("http redirect server")
        });
        info!(%at, to = self.addr.port(), "redirecting plain HTTP to HTTPS");
        Ok(at)
    }

    /// Waits until a task ends (an error, or shutdown), then stops the rest
    /// within a deadline.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let first = self.tasks.join_next().await;
        self.shutdown.cancel();
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = self.tasks.join_next() => if next.is_none() { break },
                _ = &mut deadline => {
                    warn!("shutdown deadline passed; aborting remaining tasks");
                    self.tasks.abort_all();
                    break;
                }
            }
        }
        match first {
            Some(Ok(r)) => r,
            Some(Err(e)) => Err(anyhow::anyhow!("task panicked: {e}")),
            None => Ok(()),
        }
    }

    /// Stops the server and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engines(store: Option<&str>, cache: Option<&str>) -> Engines {
        let mut e = Engines::embedded("/nonexistent");
        e.log = Some("kafka://k:9092".into());
        e.store = store.map(str::to_owned);
        e.cache = cache.map(str::to_owned);
        e
    }

    fn only(f: impl FnOnce(&mut Roles)) -> Roles {
        let mut r = Roles::NONE;
        f(&mut r);
        r
    }

    #[test]
    fn serve_on_the_embedded_engines_runs_everything_in_process() {
        let plan = Plan::new(Roles::ALL, &Engines::embedded("/nonexistent")).unwrap();
        assert!(plan.projector && plan.activity && plan.analytics_runtime && plan.projector_runtime);
        assert!(!plan.shared_views && !plan.redis_decisions);
    }

    #[test]
    fn a_service_alone_on_embedded_views_folds_its_own_replica() {
        let fanout = Plan::new(only(|r| r.fanout = true), &engines(None, Some("redis://r:6379"))).unwrap();
        assert!(fanout.projector, "a replica of the views it reads");
        assert!(!fanout.redis_decisions, "its own projector decides");
        assert!(!fanout.activity && !fanout.analytics_runtime);
        let query = Plan::new(only(|r| r.query_api = true), &engines(None, None)).unwrap();
        assert!(
            query.projector && query.activity,
            "activity is folded where it is served"
        );
        // The analyzer reads no views: no replica, no activity.
        let analyzer = Plan::new(only(|r| r.analyzer = true), &engines(None, None)).unwrap();
        assert!(!analyzer.projector && !analyzer.activity && !analyzer.analytics_runtime);
        assert!(
            fanout.projector_runtime && query.projector_runtime,
            "a replica's projector gets a thread of its own beside what serves clients"
        );
        let projector = Plan::new(only(|r| r.projector = true), &engines(None, None)).unwrap();
        assert!(
            !projector.projector_runtime,
            "alone, it has the process's runtime to itself"
        );
    }

    #[test]
    fn on_shared_views_only_the_projector_writes_and_decisions_go_through_redis() {
        let shared = |roles| Plan::new(roles, &engines(Some("scylla://s:9042"), Some("redis://r:6379")));
        let ingest = shared(only(|r| r.ingest = true)).unwrap();
        assert!(ingest.shared_views && ingest.redis_decisions && !ingest.projector);
        let projector = shared(only(|r| r.projector = true)).unwrap();
        assert!(projector.projector && !projector.activity);
        let analyzer = shared(only(|r| r.analyzer = true)).unwrap();
        assert!(
            analyzer.activity,
            "the shared activity view is folded by the analyzer service"
        );
        assert!(!analyzer.analytics_runtime, "alone, it needs no low-priority runtime");
        // Without Redis, ingest and the fan-out could not learn decisions.
        for roles in [only(|r| r.ingest = true), only(|r| r.fanout = true)] {
            let err = Plan::new(roles, &engines(Some("redis://v:6379"), None)).unwrap_err();
            assert!(err.to_string().contains("--cache redis://"), "{err}");
        }
        // With the projector in the same process they decide locally.
        let serve = shared(Roles::ALL).unwrap();
        assert!(serve.projector && serve.redis_decisions && serve.activity);
    }
}
