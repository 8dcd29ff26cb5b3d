//! Issue 16: connection hygiene (timeouts, caps), metric labels from a
//! closed set, and failing loudly on a storage fault. Black-box, over real
//! TCP against a real server; timeouts are shortened so each test takes a
//! second or two.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::TestServer;
use common::ws_client::Client;
use emosation::system::ServeConfig;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A server whose connection limits `adjust` sets.
async fn server(adjust: impl FnOnce(&mut ServeConfig)) -> TestServer {
    TestServer::start_configured(adjust).await
}

fn addr(s: &TestServer) -> SocketAddr {
    s.server.as_ref().unwrap().addr
}

/// Reads until the server closes the connection (EOF or reset), for at most
/// `within`: what was read, and when it closed (`None`: still open).
async fn read_until_closed(tcp: &mut TcpStream, within: Duration) -> (Vec<u8>, Option<Duration>) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Err(_) => return (got, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(started.elapsed())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// An HTTP/1.1 answer read off the wire: status, headers (lower-cased
/// names), JSON body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Answer {
    fn parse(raw: &[u8]) -> Answer {
        let text = String::from_utf8_lossy(raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no answer: {text:?}"));
        let mut lines = head.lines();
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Answer {
            status,
            headers,
            body: serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

const GET_HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";

/// Sends a request on a new connection and reads the answer until the
/// server closes the connection: (answer, how long it took).
async fn refused(addr: SocketAddr) -> (Answer, Duration) {
    let started = Instant::now();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let _ = tcp.write_all(GET_HEALTHZ).await;
    let (raw, closed) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "the refused connection is closed");
    (Answer::parse(&raw), started.elapsed())
}

#[tokio::test]
async fn half_a_request_line_then_silence_is_closed_within_the_header_timeout() {
    let s = server(|c| {
        c.connections.header_read_timeout = Duration::from_secs(1);
        c.connections.idle_timeout = Duration::from_secs(60);
    })
    .await;
    for opening in [&b"GET /heal"[..], b"", b"GET /v1/ws HTTP/1.1\r\nUpgrade: websocket\r\n"] {
        // Half a request line; nothing at all; a WebSocket upgrade whose
        // headers never end (the handshake timeout is the header timeout).
        let mut tcp = TcpStream::connect(addr(&s)).await.unwrap();
        tcp.write_all(opening).await.unwrap();
        let (_, closed) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
        let closed = closed.unwrap_or_else(|| panic!("{opening:?}: still open after 5 s"));
        assert!(
            closed >= Duration::from_millis(900) && closed < Duration::from_secs(3),
            "{opening:?}: closed after {closed:?}"
        );
    }
}

#[tokio::test]
async fn half_a_body_is_answered_408_and_closed() {
    let s = server(|c| c.connections.body_timeout = Duration::from_secs(1)).await;
    let mut tcp = TcpStream::connect(addr(&s)).await.unwrap();
    tcp.write_all(
        b"POST /v1/auth/login HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"username\"",
    )
    .await
    .unwrap();
    let (raw, closed) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    let closed = closed.expect("closed after the answer");
    assert!(closed < Duration::from_secs(3), "answered after {closed:?}");
    let answer = Answer::parse(&raw);
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(answer.code(), "request_timeout", "{answer:?}");
    assert_eq!(answer.header("connection"), Some("close"));
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let s = server(|c| {
        c.connections.idle_timeout = Duration::from_secs(1);
        c.connections.header_read_timeout = Duration::from_secs(60);
    })
    .await;
    let mut tcp = TcpStream::connect(addr(&s)).await.unwrap();
    for _ in 0..2 {
        // Kept alive while in use: each request is answered on it.
        tcp.write_all(GET_HEALTHZ).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"ok") {
            let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed while in use");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(Answer::parse(&got).status, 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, closed) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    let closed = closed.expect("an idle connection is closed");
    assert!(closed < Duration::from_secs(2), "closed after {closed:?} idle");
}

#[tokio::test]
async fn over_the_connection_cap_a_connection_is_answered_503_overloaded_at_once() {
    let s = server(|c| {
        c.connections.max_connections = 2;
        c.connections.max_connections_per_ip = 0;
    })
    .await;
    let held = [
        TcpStream::connect(addr(&s)).await.unwrap(),
        TcpStream::connect(addr(&s)).await.unwrap(),
    ];
    let (answer, took) = refused(addr(&s)).await;
    assert_eq!((answer.status, answer.code()), (503, "overloaded"), "{answer:?}");
    assert!(answer.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    // A closed connection gives its place back.
    drop(held);
    let api = s.client();
    emosation_testkit::eventually("a place is free", Duration::from_secs(5), async || {
        match api.http.get(format!("{}/healthz", api.base)).send().await {
            Ok(r) if r.status() == 200 => Ok(()),
            Ok(r) => Err(r.status().to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
}

#[tokio::test]
async fn an_open_websocket_counts_against_the_cap_until_it_closes() {
    let s = server(|c| {
        c.connections.max_connections = 2;
        c.connections.max_connections_per_ip = 0;
    })
    .await;
    // One request per connection, so that none stays open in a pool.
    let api = common::Api {
        http: reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap(),
        base: s.base.clone(),
    };
    let (_, alice) = api.user("alice").await;
    let (_, bob) = api.user("bob").await;
    let first = Client::connect(&s.base, &alice).await;
    let _second = Client::connect(&s.base, &bob).await;
    let (answer, _) = refused(addr(&s)).await;
    assert_eq!((answer.status, answer.code()), (503, "overloaded"), "{answer:?}");
    drop(first);
    emosation_testkit::eventually("the socket's place is free", Duration::from_secs(5), async || match api
        .http
        .get(format!("{}/healthz", api.base))
        .send()
        .await
    {
        Ok(r) if r.status() == 200 => Ok(()),
        Ok(r) => Err(r.status().to_string()),
        Err(e) => Err(e.to_string()),
    })
    .await;
}

#[tokio::test]
async fn over_the_per_address_cap_a_connection_is_answered_429_rate_limited() {
    let s = server(|c| {
        c.connections.max_connections = 100;
        c.connections.max_connections_per_ip = 2;
    })
    .await;
    let _held = [
        TcpStream::connect(addr(&s)).await.unwrap(),
        TcpStream::connect(addr(&s)).await.unwrap(),
    ];
    let (answer, took) = refused(addr(&s)).await;
    assert_eq!((answer.status, answer.code()), (429, "rate_limited"), "{answer:?}");
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    // Another address is not held to this one's count (all of 127/8 is
    // loopback on Linux).
    let other = TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut tcp = other.connect(addr(&s)).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (raw, _) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert_eq!(Answer::parse(&raw).status, 200);
}

/// Lines of `/metrics`.
async fn metric_lines(api: &common::Api) -> Vec<String> {
    let text = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn made_up_methods_and_paths_do_not_grow_the_metrics() {
    let s = TestServer::start().await;
    let api = s.client();
    // Every label value that the requests below can produce exists before.
    for method in [reqwest::Method::from_bytes(b"WARMUP").unwrap(), reqwest::Method::GET] {
        for path in ["/nowhere", "/healthz", "/v1/rooms"] {
            let _ = api
                .http
                .request(method.clone(), format!("{}{path}", api.base))
                .send()
                .await
                .unwrap();
        }
    }
    let before = metric_lines(&api).await;
    for i in 0..1000 {
        let method = reqwest::Method::from_bytes(format!("X{i}").as_bytes()).unwrap();
        let path = match i % 3 {
            0 => format!("/nowhere/{i}"),
            1 => "/healthz".to_owned(),
            _ => format!("/v1/rooms?x={i}"),
        };
        let r = api
            .http
            .request(method, format!("{}{path}", api.base))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
    }
    let after = metric_lines(&api).await;
    // Other tests of this binary share the process's metrics: count the
    // request series of the routes used here.
    let ours = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.starts_with("emosation_http_request"))
            .filter(|l| {
                ["unmatched", "/healthz", "/v1/rooms"]
                    .iter()
                    .any(|r| l.contains(&format!("route=\"{r}\"")))
            })
            .count()
    };
    let grown = ours(&after).saturating_sub(ours(&before));
    let new: Vec<_> = after
        .iter()
        .filter(|l| !before.contains(l) && l.contains("method="))
        .collect();
    assert!(grown <= 3, "/metrics grew by {grown} lines: {new:#?}");
    assert!(after.iter().any(|l| l.contains("method=\"other\"")));
    assert!(!after.iter().any(|l| l.contains("X99")));
    assert!(after.iter().any(|l| l.contains("route=\"unmatched\"")));
}

#[tokio::test]
async fn readyz_answers_ready_on_a_healthy_server() {
    let s = TestServer::start().await;
    let r = s.client().http.get(format!("{}/readyz", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ready");
}

#[tokio::test]
async fn a_dead_log_writer_fails_readiness_and_the_process_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (mut child, api) = common::spawn_binary(
        "serve",
        dir.path(),
        port,
        &["--inject-log-fault-after", "1", "--fail-grace-secs", "2"],
    )
    .await;
    let ready = api.http.get(format!("{}/readyz", api.base)).send().await.unwrap();
    assert_eq!(ready.status(), 200, "ready before the fault");
    api.signup("alice").await.expect(201);
    // The next append fails as on a full disk: not acknowledged, so 503
    // `unavailable` with Retry-After, and the client may retry.
    let failed = api
        .http
        .post(format!("{}/v1/auth/signup", api.base))
        .json(&serde_json::json!({"username": "bob", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 503);
    assert!(failed.headers().contains_key("retry-after"), "{:?}", failed.headers());
    let body: Value = failed.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let started = Instant::now();
    let ready = api.http.get(format!("{}/readyz", api.base)).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.headers().contains_key("retry-after"));
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    // Liveness stays: the process answers until it exits.
    let live = api.http.get(format!("{}/healthz", api.base)).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the process exits after the grace period")
        .unwrap();
    assert!(!status.success(), "exit status {status}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "exited after the grace period"
    );
}
