//! Shared pieces of the benchmarks: latency summaries, record generators, and
//! starting the release server as a child process.
//!
//! Run a scenario with `cargo run --release -p emosation-bench --bin NAME`;
//! `bench/run` runs them all. Each prints one JSON line with its figures.

pub mod c100k;
pub mod raw_ws;
pub mod small_rooms;

/// The allocator of the server binary, so figures match it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use emosation_core::Record;
use emosation_core::record::{MemberJoined, MessagePosted, RoomCreated, UserSignedUp};
use reqwest::Client;
use serde_json::{Value, json};

/// Runs the benchmark process as the server runs by default: without
/// transparent huge pages (see `emosation::process`), unless
/// `EMOSATION_TRANSPARENT_HUGE_PAGES=true`.
pub fn like_the_server() {
    if !env("EMOSATION_TRANSPARENT_HUGE_PAGES", false)
        && let Err(e) = emosation::process::disable_transparent_huge_pages()
    {
        eprintln!("could not opt out of transparent huge pages: {e}");
    }
}

/// A benchmark knob from the environment, or its default.
pub fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Joins load tasks that each return `(latencies, errors)` and sums them.
pub async fn gather(tasks: Vec<tokio::task::JoinHandle<(Vec<u64>, u64)>>) -> anyhow::Result<(Vec<u64>, u64)> {
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    Ok((lat, errors))
}

/// Latency percentiles in microseconds.
pub fn percentiles(mut us: Vec<u64>) -> Value {
    if us.is_empty() {
        return json!({});
    }
    us.sort_unstable();
    let p = |q: f64| us[((us.len() as f64 * q) as usize).min(us.len() - 1)];
    json!({"p50_us": p(0.50), "p90_us": p(0.90), "p99_us": p(0.99), "p999_us": p(0.999), "max_us": us[us.len() - 1], "n": us.len()})
}

/// Where the server's time went, from its `/metrics`: for each histogram
/// named (`name`, or `name{label="value"}` for one series), the count and the bucket bounds (µs) below which half and 99% of
/// the observations, and all of them, fall (upper bounds: the histograms
/// are bucketed).
pub async fn server_stages(http: &Client, base: &str, names: &[&str]) -> Value {
    stages_between(&Histograms::default(), &server_histograms(http, base, names).await)
}

/// The server's own latency histograms the ws scenarios report: where an
/// ack's time went (append → durable, then the fold's decision), the log's
/// group commit, the views' commits, and the fan-out's read → queued.
pub const SERVER_STAGES: &[&str] = &[
    "emosation_ingest_append_seconds",
    "emosation_ingest_decision_seconds",
    "emosation_fanout_read_to_queued_seconds",
    "emosation_log_group_commit_seconds{phase=\"write\"}",
    "emosation_log_group_commit_seconds{phase=\"sync\"}",
    "emosation_views_commit_seconds",
];

/// Cumulative bucket counts `(le, count)` of a server's histograms, by name.
pub type Histograms = std::collections::BTreeMap<String, Vec<(f64, f64)>>;

/// The buckets of the named histograms (`name` or `name{label="value"}`) from
/// the server's `/metrics`; none if it does not answer.
pub async fn server_histograms(http: &Client, base: &str, names: &[&str]) -> Histograms {
    let Ok(text) = async { http.get(format!("{base}/metrics")).send().await?.text().await }.await else {
        return Histograms::default();
    };
    let mut out = Histograms::new();
    for name in names {
        let prefix = match name.split_once('{') {
            Some((base, labels)) => format!("{base}_bucket{{{},le=\"", labels.trim_end_matches('}')),
            None => format!("{name}_bucket{{le=\""),
        };
        let buckets: Vec<(f64, f64)> = text
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|l| {
                let (le, count) = l.split_once("\"} ")?;
                Some((le.parse().unwrap_or(f64::INFINITY), count.trim().parse().ok()?))
            })
            .collect();
        if !buckets.is_empty() {
            out.insert((*name).to_owned(), buckets);
        }
    }
    out
}

/// Per histogram, what was observed between two scrapes: count, and the
/// bucket bounds (µs) holding its median, 99th percentile and maximum.
pub fn stages_between(before: &Histograms, after: &Histograms) -> Value {
    let mut out = serde_json::Map::new();
    for (name, buckets) in after {
        let earlier = before.get(name);
        let buckets: Vec<(f64, f64)> = buckets
            .iter()
            .map(|&(le, c)| {
                let b = earlier
                    .and_then(|e| e.iter().find(|(l, _)| *l == le))
                    .map_or(0.0, |(_, c)| *c);
                (le, c - b)
            })
            .collect();
        let Some(&(_, total)) = buckets.last() else { continue };
        if total <= 0.0 {
            continue;
        }
        let bound = |q: f64| {
            buckets.iter().find(|(_, c)| *c >= q * total).map(|(le, _)| {
                if le.is_finite() {
                    json!((le * 1e6).round())
                } else {
                    json!("inf")
                }
            })
        };
        out.insert(
            name.clone(),
            json!({"n": total, "p50_le_us": bound(0.5), "p99_le_us": bound(0.99), "max_le_us": bound(1.0)}),
        );
    }
    Value::Object(out)
}

/// A process's resident memory (`VmRSS`), KB; 0 if it is gone.
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// How many file descriptors a process has open (entries of `/proc/PID/fd`).
pub fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// Wall-clock microseconds since the epoch: what a message's `t=` carries,
/// so that another connection can measure its delivery.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The send time embedded in a message frame's text (`"text":"t=<micros>`).
pub fn sent_at(frame: &str) -> Option<u64> {
    let i = frame.find("\"text\":\"t=")? + 10;
    let digits: &str = &frame[i..];
    let end = digits.find(|c: char| !c.is_ascii_digit())?;
    digits[..end].parse().ok()
}

/// A client WebSocket.
pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/v1/ws` at `base` with `token` and reads the `hello`: one
/// attempt. Small client buffers: a generator holds thousands of sockets.
/// On the Socket.IO peer ([`raw_ws::use_socket_io`]) it joins the default
/// namespace first; send its frames through [`raw_ws::wrap`].
pub async fn connect_ws(base: &str, token: &str) -> anyhow::Result<Ws> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("{}{}", base.replace("http://", "ws://"), raw_ws::ws_path(token));
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str().contains("\"hello\"") => return Ok(ws),
            Some(Ok(Message::Text(t))) if raw_ws::socket_io() && t.as_str().starts_with("0{") => {
                ws.send(Message::text("40")).await?
            }
            Some(Ok(Message::Text(t))) if raw_ws::socket_io() && t.as_str().starts_with("40") => {}
            other => anyhow::bail!("no hello: {other:?}"),
        }
    }
}

/// CPU time (user + system) a process has used, in microseconds.
pub fn cpu_us(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which ends with ')'): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks * 10_000 // USER_HZ = 100
}

pub fn id(n: u64) -> String {
    format!("{n:016x}")
}

/// A realistic log: `users` signups, `rooms` rooms each joined by 10 users,
/// then messages round-robin over the rooms until `total` records.
pub fn synthetic_log(total: u64, users: u64, rooms: u64) -> impl Iterator<Item = Record> {
    let setup = users + rooms + rooms * 10;
    (0..total).map(move |i| {
        let at = 1_795_000_000_000 + i as i64;
        if i < users {
            Record::UserSignedUp(UserSignedUp {
                request_id: i as i64,
                at,
                username: format!("user_{i}"),
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
            })
        } else if i < users + rooms {
            let r = i - users;
            Record::RoomCreated(RoomCreated {
                request_id: i as i64,
                at,
                room_id: id(0x2000_0000 + r),
                name: format!("room {r}"),
                capacity: 100,
                owner_id: id(0x1000_0000 + r % users),
                owner_name: format!("user_{}", r % users),
            })
        } else if i < setup {
            let j = i - users - rooms;
            let (r, k) = (j / 10, j % 10);
            let u = (r * 10 + k + 1) % users;
            Record::MemberJoined(MemberJoined {
                request_id: i as i64,
                at,
                room_id: id(0x2000_0000 + r),
                user_id: id(0x1000_0000 + u),
                username: format!("user_{u}"),
            })
        } else {
            let m = i - setup;
            let r = m % rooms;
            let u = (r * 10 + (m / rooms) % 10 + 1) % users;
            Record::MessagePosted(MessagePosted {
                request_id: i as i64,
                at,
                room_id: id(0x2000_0000 + r),
                author_id: id(0x1000_0000 + u),
                author: format!("user_{u}"),
                client_msg_id: format!("c{m}"),
                text: format!("message number {m}: how are you feeling today? 🙂"),
                attachments: vec![],
            })
        }
    })
}

/// The release `emosation` binary next to this benchmark.
pub fn server_binary() -> PathBuf {
    let me = std::env::current_exe().expect("current exe");
    me.parent().expect("bin dir").join("emosation")
}

/// A server child process on a free port with its own data dir.
pub struct ServerProcess {
    pub child: tokio::process::Child,
    pub base: String,
    _dir: tempfile::TempDir,
}

/// The JWT secret every benchmark server process shares (fan-out nodes check
/// tokens the core process issued).
pub const JWT_SECRET: &str = "emosation-benchmark-jwt-secret-0123456789abcdef";

impl ServerProcess {
    /// `emosation serve` with `extra` arguments, pinned to `BENCH_SERVER_CPU`
    /// if set.
    pub async fn start(extra: &[&str]) -> anyhow::Result<ServerProcess> {
        let cpu = std::env::var("BENCH_SERVER_CPU").ok();
        ServerProcess::spawn("serve", extra, cpu.as_deref()).await
    }

    /// `emosation SERVICE` (serve, fanout, …) on a free port with its own
    /// data dir and `extra` arguments, pinned to `cpu` (a taskset list) if
    /// given; returns once its `/healthz` answers.
    pub async fn spawn(service: &str, extra: &[&str], cpu: Option<&str>) -> anyhow::Result<ServerProcess> {
        let bin = server_binary();
        anyhow::ensure!(
            bin.exists(),
            "{} not found: run `cargo build --release` first",
            bin.display()
        );
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let listen = format!("127.0.0.1:{port}");
        let data_dir = dir.path().display().to_string();
        let mut args = vec![
            service,
            "--listen",
            &listen,
            "--message-rate",
            "0",
            // Every load generator connects from 127.0.0.1, signing up
            // and logging in thousands of users.
            "--max-connections-per-ip",
            "0",
            "--no-abuse-limits",
            "--data-dir",
            &data_dir,
        ];
        args.extend(extra);
        ServerProcess::spawn_program(&bin, &args, port, dir, cpu, service).await
    }

    /// A peer the scenarios compare emosation with (`bench/src/bin/broadcaster.rs`,
    /// `bench/peers/socketio`): `program` with `args` (which make it listen
    /// on `port`), pinned to `cpu` if given; returns once `/healthz` answers.
    pub async fn spawn_peer(
        program: &Path,
        args: &[&str],
        port: u16,
        cpu: Option<&str>,
    ) -> anyhow::Result<ServerProcess> {
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        ServerProcess::spawn_program(program, args, port, tempfile::tempdir()?, cpu, &name).await
    }

    async fn spawn_program(
        program: &Path,
        args: &[&str],
        port: u16,
        dir: tempfile::TempDir,
        cpu: Option<&str>,
        name: &str,
    ) -> anyhow::Result<ServerProcess> {
        let mut cmd = match cpu {
            Some(cpu) => {
                let mut c = tokio::process::Command::new("taskset");
                c.arg("-c").arg(cpu).arg(program);
                c
            }
            None => tokio::process::Command::new(program),
        };
        let child = cmd
            .args(args)
            .env("EMOSATION_LOG_LEVEL", "warn")
            .env("EMOSATION_JWT_SECRET", JWT_SECRET)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let base = format!("http://127.0.0.1:{port}");
        let client = Client::new();
        let t = Instant::now();
        loop {
            if let Ok(r) = client.get(format!("{base}/healthz")).send().await
                && r.status().is_success()
            {
                break;
            }
            anyhow::ensure!(t.elapsed() < Duration::from_secs(60), "{name} did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(ServerProcess { child, base, _dir: dir })
    }

    pub fn data_dir(&self) -> &Path {
        self._dir.path()
    }
}

/// Pins a running process and all its threads to `cpu` (a taskset list).
pub fn pin(pid: u32, cpu: &str) -> anyhow::Result<()> {
    let st = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpu, &pid.to_string()])
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(st.success(), "taskset -a -p -c {cpu} {pid} failed");
    Ok(())
}

/// A tansu broker (through the test kit) pinned to `cpu` if given; its URL
/// with a fresh topic prefix and `options` (librdkafka properties, `k=v&…`).
pub fn tansu(cpu: Option<&str>, options: &str) -> anyhow::Result<(emosation_testkit::Tansu, String)> {
    let broker = emosation_testkit::Tansu::start();
    if let (Some(cpu), Some(pid)) = (cpu, broker.pid()) {
        pin(pid, cpu)?;
    }
    let mut url = broker.isolated_url();
    if !options.is_empty() {
        url = format!("{url}&{options}");
    }
    Ok((broker, url))
}

/// The password of every benchmark user.
pub const PASSWORD: &str = "benchmark-password";

/// Signs up `name` (with [`PASSWORD`]).
pub async fn signup(client: &Client, base: &str, name: &str) -> anyhow::Result<()> {
    client
        .post(format!("{base}/v1/auth/signup"))
        .json(&json!({"username": name, "password": PASSWORD}))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// Logs `name` in; the login answer (`access_token`, `refresh_token`, `user_id`, …).
pub async fn login(client: &Client, base: &str, name: &str) -> anyhow::Result<Value> {
    Ok(client
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"username": name, "password": PASSWORD}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// Signs up and logs in; returns (user_id, token).
pub async fn user(client: &Client, base: &str, name: &str) -> anyhow::Result<(String, String)> {
    signup(client, base, name).await?;
    let l = login(client, base, name).await?;
    Ok((
        l["user_id"].as_str().unwrap_or_default().to_owned(),
        l["access_token"].as_str().unwrap_or_default().to_owned(),
    ))
}

pub async fn create_room(client: &Client, base: &str, token: &str, name: &str) -> anyhow::Result<String> {
    let r: Value = client
        .post(format!("{base}/v1/rooms"))
        .bearer_auth(token)
        .json(&json!({"name": name, "capacity": 100000}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(r["room_id"].as_str().unwrap_or_default().to_owned())
}

pub async fn join(client: &Client, base: &str, token: &str, room: &str) -> anyhow::Result<()> {
    client
        .post(format!("{base}/v1/rooms/{room}/join"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// A server emosation is compared with, side by side in the same run, on the
/// same core, driven by the same clients (`SERVERS=emosation,broadcaster,socketio`
/// in the `ws` benchmark). Neither has a log: an `ack` means "in memory", a
/// restart loses everything, nothing can be replayed or resumed. They are the
/// ceiling a chat server with no durability reaches on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// `bench/src/bin/broadcaster.rs`: Rust, axum's WebSocket, rooms in memory.
    Broadcaster,
    /// `bench/peers/socketio`: Node.js and Socket.IO 4, rooms in memory.
    SocketIo,
}

impl Peer {
    pub fn from_name(name: &str) -> anyhow::Result<Peer> {
        match name {
            "broadcaster" => Ok(Peer::Broadcaster),
            "socketio" => Ok(Peer::SocketIo),
            other => anyhow::bail!("unknown server {other:?} (emosation, broadcaster, socketio)"),
        }
    }

    /// Starts the peer on a free port, pinned to `cpu` if given; with
    /// `emotions` it classifies each message and sends an `emotion` frame.
    pub async fn start(self, emotions: bool, cpu: Option<&str>) -> anyhow::Result<ServerProcess> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["--listen", listen.as_str()];
        if emotions {
            args.push("--emotions");
        }
        match self {
            Peer::Broadcaster => {
                let bin = server_binary().with_file_name("broadcaster");
                anyhow::ensure!(
                    bin.exists(),
                    "{} not found: cargo build --release -p emosation-bench",
                    bin.display()
                );
                ServerProcess::spawn_peer(&bin, &args, port, cpu).await
            }
            Peer::SocketIo => {
                let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/socketio");
                if !dir.join("node_modules/socket.io").exists() {
                    // Pinned by its package-lock.json; from the npm registry.
                    let st = std::process::Command::new("npm")
                        .args(["ci", "--silent", "--no-audit", "--no-fund"])
                        .current_dir(&dir)
                        .status()?;
                    anyhow::ensure!(st.success(), "npm ci in {} failed", dir.display());
                }
                let script = dir.join("server.js").display().to_string();
                let mut node_args = vec![script.as_str()];
                node_args.extend(&args);
                ServerProcess::spawn_peer(Path::new("node"), &node_args, port, cpu).await
            }
        }
    }
}
