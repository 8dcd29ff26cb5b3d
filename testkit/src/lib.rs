//! Test support: the real engines, started as child processes on loopback.
//!
//! Tests never fake Kafka or Redis. Each [`Tansu`] / [`RedisServer`] is a
//! real server on a free port of 127.0.0.1, in its own temporary directory,
//! stopped when dropped. A watchdog shell stops it too if the test process
//! dies without dropping it (a panic that aborts, a `kill -9`), so no broker
//! outlives its test run.
//!
//! The binaries are found on `PATH` (and `~/.cargo/bin` for tansu); the
//! README's test command (`scripts/test`) installs both. Set
//! `EMOSATION_TEST_KAFKA` / `EMOSATION_TEST_REDIS` to a URL to use servers
//! you run yourself instead.
//!
//! # Layout
//! - [`Tansu`]: a tansu broker on its sqlite engine (durable, and its high
//!   watermarks are right, unlike its memory engine).
//! - [`RedisServer`]: Debian's `redis-server`, no persistence.
//! - [`free_port`], [`unique`]: ports and names that do not collide.
//! - [`eventually`]: wait, bounded, until something observed holds.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Calls `check` until it returns `Ok`, every 20 ms, and returns its value;
/// fails the test after `within` with `what` and the last `Err` it gave
/// (what was observed instead). Every "poll until a deadline" of the tests
/// is this call, so none can hang and each says what it waited for.
pub async fn eventually<T>(what: &str, within: Duration, mut check: impl AsyncFnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(observed) => assert!(
                started.elapsed() < within,
                "{what}: not within {within:?}; last observed: {observed}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port of 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A name unique within this machine's recent test runs (pid, time, counter).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!(
        "{prefix}{}x{t:x}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn find_binary(name: &str, extra: &[PathBuf]) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().cloned())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed: run scripts/test (the README's test command), which installs it")
        })
}

/// A child server process, stopped on drop and watched by a shell that stops
/// it if this test process goes away first.
#[derive(Debug)]
struct Supervised {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Supervised {
    fn spawn(program: &PathBuf, args: &[String], dir: tempfile::TempDir, log_name: &str) -> Self {
        let log = std::fs::File::create(dir.path().join(log_name)).expect("create server log");
        // `exec` keeps the server's pid the child's; the watchdog is a
        // sibling that waits for this test process (its parent's pid) to end.
        let script = format!(
            "parent={parent}; ( while kill -0 $parent 2>/dev/null; do sleep 0.5; done; kill -9 $$ 2>/dev/null ) & exec \"$0\" \"$@\"",
            parent = std::process::id()
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(program)
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        Supervised { child, _dir: dir }
    }

    fn wait_listening(&mut self, port: u16, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_dir(self._dir.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .collect::<Vec<_>>()
                    .join("\n");
                panic!("{what} exited with {status} before listening:\n{log}");
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{what} did not listen on 127.0.0.1:{port} within 20 s");
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server at once (`kill -9`), as a crash would.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tansu Kafka-protocol broker on its sqlite engine.
#[derive(Debug)]
pub struct Tansu {
    server: Option<Supervised>,
    url: String,
}

impl Tansu {
    /// Starts a fresh broker (or adopts `EMOSATION_TEST_KAFKA`).
    pub fn start() -> Self {
        if let Ok(url) = std::env::var("EMOSATION_TEST_KAFKA") {
            return Tansu { server: None, url };
        }
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        let bin = find_binary("tansu", &[home.join(".cargo/bin")]);
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = format!("tcp://127.0.0.1:{port}");
        let args: Vec<String> = [
            "broker",
            "--listener-url",
            &listener,
            "--advertised-listener-url",
            &listener,
            "--storage-engine",
            "sqlite://tansu.db",
            "--cluster-id",
            "emosation-test",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut server = Supervised::spawn(&bin, &args, dir, "tansu.log");
        server.wait_listening(port, "tansu");
        Tansu {
            server: Some(server),
            url: format!("kafka://127.0.0.1:{port}"),
        }
    }

    /// `kafka://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The broker's process id (`None` for an adopted `EMOSATION_TEST_KAFKA`),
    /// e.g. for pinning it to a core in benchmarks.
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(Supervised::pid)
    }

    /// The URL with a topic prefix unique to the caller, so tests sharing a
    /// broker never see each other's records.
    pub fn isolated_url(&self) -> String {
        format!("{}?prefix={}.", self.url, unique("t"))
    }
}

/// An empty, memory-only `redis-server` on 127.0.0.1:`port`, listening.
fn spawn_redis(port: u16) -> Supervised {
    let bin = find_binary("redis-server", &[PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")]);
    let dir = tempfile::tempdir().expect("tempdir");
    let args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.path().display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut server = Supervised::spawn(&bin, &args, dir, "redis.log");
    server.wait_listening(port, "redis-server");
    server
}

/// Debian's `redis-server`, in memory only.
#[derive(Debug)]
pub struct RedisServer {
    server: Option<Supervised>,
    url: String,
    port: u16,
}

impl RedisServer {
    /// Starts a fresh, empty server (or adopts `EMOSATION_TEST_REDIS`).
    pub fn start() -> Self {
        if let Ok(url) = std::env::var("EMOSATION_TEST_REDIS") {
            return RedisServer {
                server: None,
                url,
                port: 0,
            };
        }
        let port = free_port();
        let server = spawn_redis(port);
        RedisServer {
            server: Some(server),
            url: format!("redis://127.0.0.1:{port}"),
            port,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's process id (`None` for an adopted `EMOSATION_TEST_REDIS`).
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(Supervised::pid)
    }

    /// Kills the server and starts an empty one on the same port, as a Redis
    /// that restarted without persistence would come back.
    pub fn restart_empty(&mut self) {
        let Some(old) = self.server.take() else {
            panic!("cannot restart an external Redis (EMOSATION_TEST_REDIS)");
        };
        drop(old);
        let server = spawn_redis(self.port);
        self.server = Some(server);
    }
}

impl Tansu {
    /// Kills the broker (`kill -9`); its data stays until this value drops.
    pub fn kill(&mut self) {
        if let Some(s) = self.server.as_mut() {
            s.kill();
        }
    }
}

/// An S3-compatible server for the blob store's tests: moto's server
/// (`moto_server`, PyPI `moto[server]`, installed by scripts/test), in
/// memory, with one empty bucket.
#[derive(Debug)]
pub struct S3Server {
    _server: Supervised,
    url: String,
}

impl S3Server {
    /// Starts a fresh server and creates its bucket.
    pub fn start() -> Self {
        let bin = find_binary("moto_server", &[PathBuf::from("/usr/local/bin")]);
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let args: Vec<String> = ["-H", "127.0.0.1", "-p", &port.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut server = Supervised::spawn(&bin, &args, dir, "moto.log");
        server.wait_listening(port, "moto_server");
        let bucket = "emosation-test";
        // Moto takes requests without checking their signature: a bare PUT
        // creates the bucket.
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to moto");
        write!(
            s,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .expect("create the bucket");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "bucket not created: {answer}");
        S3Server {
            _server: server,
            url: format!(
                "s3://{bucket}?endpoint=http://127.0.0.1:{port}&region=us-east-1&access_key_id=test&secret_access_key=test"
            ),
        }
    }

    /// `s3://BUCKET?endpoint=…` with the server's (test) credentials.
    pub fn url(&self) -> &str {
        &self.url
    }
}
