//! HTTPS and WSS on the real binary (`--tls-cert`, `--tls-key`,
//! `--redirect-http`), with certificates made here by rcgen and clients
//! that verify them: the API and the WebSocket end to end over TLS, HSTS
//! and the refresh cookie's `Secure`, plain HTTP on the TLS port refused
//! cleanly, the redirect listener's 308, and SIGHUP serving a new
//! certificate to new connections while an open WebSocket goes on.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::ws_client::Client;
use common::{Api, SECRET};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Child;
use tokio_rustls::client::TlsStream;

const BIN: &str = env!("CARGO_BIN_EXE_emosation");

/// A self-signed certificate for `localhost` and 127.0.0.1, written to
/// `cert.pem` and `key.pem` in `dir`; returns its DER (the root to trust).
fn write_cert(dir: &Path) -> CertificateDer<'static> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    std::fs::write(dir.join("cert.pem"), made.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), made.signing_key.serialize_pem()).unwrap();
    made.cert.der().clone()
}

fn client_config(roots: &[&CertificateDer<'static>]) -> rustls::ClientConfig {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth()
}

/// An HTTPS API client for `https://localhost:PORT` that trusts `root` only.
fn https_api(addr: SocketAddr, root: &CertificateDer<'static>) -> Api {
    Api {
        http: reqwest::Client::builder()
            .use_preconfigured_tls(client_config(&[root]))
            .resolve("localhost", addr)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap(),
        base: format!("https://localhost:{}", addr.port()),
    }
}

/// A TLS connection to `addr` as `localhost`, verified against `roots`.
async fn tls_connect(addr: SocketAddr, roots: &[&CertificateDer<'static>]) -> std::io::Result<TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(roots)));
    let tcp = TcpStream::connect(addr).await?;
    connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

/// A WSS client for `token`, verified against `root`.
async fn wss(addr: SocketAddr, root: &CertificateDer<'static>, token: &str) -> Client<TlsStream<TcpStream>> {
    let tls = tls_connect(addr, &[root]).await.expect("TLS handshake");
    let url = format!("wss://localhost:{}/v1/ws?access_token={token}", addr.port());
    Client::on(tls, &url).await
}

struct TlsServer {
    child: Child,
    addr: SocketAddr,
    redirect: SocketAddr,
    dir: PathBuf,
    root: CertificateDer<'static>,
    _tmp: tempfile::TempDir,
}

impl TlsServer {
    /// `emosation serve` with TLS on a fresh data dir and certificate, and
    /// a redirect listener; waits until it answers `/healthz` over HTTPS.
    async fn start() -> TlsServer {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let root = write_cert(&dir);
        let addr: SocketAddr = format!("127.0.0.1:{}", emosation_testkit::free_port()).parse().unwrap();
        let redirect: SocketAddr = format!("127.0.0.1:{}", emosation_testkit::free_port()).parse().unwrap();
        let child = tokio::process::Command::new(BIN)
            .args(["serve", "--listen", &addr.to_string(), "--message-rate", "0"])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("EMOSATION_TLS_CERT", dir.join("cert.pem"))
            .env("EMOSATION_TLS_KEY", dir.join("key.pem"))
            .env("EMOSATION_REDIRECT_HTTP", redirect.to_string())
            .env("EMOSATION_NO_ABUSE_LIMITS", "true")
            .env("EMOSATION_JWT_SECRET", SECRET)
            .env("EMOSATION_LOG_LEVEL", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let api = https_api(addr, &root);
        emosation_testkit::eventually("the TLS server up", Duration::from_secs(60), async || {
            match api.http.get(format!("{}/healthz", api.base)).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(r.status().to_string()),
                Err(e) => Err(format!("{e:?}")),
            }
        })
        .await;
        TlsServer {
            child,
            addr,
            redirect,
            dir,
            root,
            _tmp: tmp,
        }
    }

    fn api(&self) -> Api {
        https_api(self.addr, &self.root)
    }

    fn hangup(&self) {
        let pid = rustix::process::Pid::from_raw(self.child.id().unwrap() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    }
}

/// Sends `request` on a plain TCP connection and reads until the server
/// closes it (failing after 5 s: well within the 10 s header timeout, so a
/// close means the server closed, not a timeout).
async fn plain_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection, not leaves it hanging")
        .expect("a clean close");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_websockets_work_over_tls_with_a_verified_certificate() {
    let server = TlsServer::start().await;
    let api = server.api();

    // Every answer over TLS carries HSTS (and a request id).
    let health = api.http.get(format!("{}/healthz", api.base)).send().await.unwrap();
    assert_eq!(
        health.headers()["strict-transport-security"],
        "max-age=31536000",
        "{:?}",
        health.headers()
    );
    assert!(health.headers().contains_key("x-request-id"));

    let (_, alice) = api.user("alice").await;
    let (_, bob) = api.user("bob").await;
    let room = api.create_room(&alice, "over tls", None).await;
    api.post(&format!("/v1/rooms/{room}/join"), Some(&bob), json!({}))
        .await
        .expect(200);

    // WSS: bob subscribes, alice sends over her own socket and over HTTPS.
    let mut bob_ws = wss(server.addr, &server.root, &bob).await;
    assert_eq!(bob_ws.subscribe(&room, None).await["type"], "subscribed");
    let mut alice_ws = wss(server.addr, &server.root, &alice).await;
    alice_ws
        .send(json!({"type": "send", "room_id": room, "client_msg_id": "w1", "text": "hello over wss"}))
        .await;
    let ack = alice_ws.next_of(&["ack", "error"]).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let got = bob_ws.next_of(&["message"]).await;
    assert_eq!(got["text"], "hello over wss");
    assert_eq!(got["message_id"], ack["message_id"]);
    api.send(&alice, &room, "h1", "hello over https").await.expect(202);
    assert_eq!(bob_ws.next_of(&["message"]).await["text"], "hello over https");
    // Many frames at once through the TLS bridge arrive whole and in order.
    for i in 0..200 {
        alice_ws
            .send(
                json!({"type": "send", "room_id": room, "client_msg_id": format!("b{i}"),
                         "text": format!("burst {i} {}", "x".repeat(2000))}),
            )
            .await;
    }
    for i in 0..200 {
        let m = bob_ws.next_of(&["message"]).await;
        assert!(
            m["text"].as_str().unwrap().starts_with(&format!("burst {i} ")),
            "{i}: {m}"
        );
    }
    let history = api.all_messages(&bob, &room).await;
    assert_eq!(history.len(), 202);

    // The refresh cookie is Secure on an HTTPS connection.
    let login = api
        .http
        .post(format!("{}/v1/auth/login", api.base))
        .header("x-refresh-cookie", "1")
        .json(&json!({"username": "alice", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("; Secure"), "{cookie}");

    // A client that does not trust this certificate is refused by its own check.
    let stranger = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let err = tls_connect(server.addr, &[stranger.cert.der()]).await.unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_the_tls_port_is_refused_cleanly_and_the_redirect_port_answers_308() {
    let server = TlsServer::start().await;

    let answer = plain_exchange(server.addr, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("\"code\":\"https_required\""), "{answer}");
    // Neither HTTP nor TLS: the handshake fails, answered at most with a
    // TLS alert record (type 21), and the connection closes.
    let answer = plain_exchange(server.addr, b"\x00\x01\x02\x03 not a handshake\r\n\r\n").await;
    assert!(answer.is_empty() || answer.starts_with('\u{15}'), "{answer:?}");

    // The redirect listener: same path and query, on the HTTPS port.
    let answer = plain_exchange(
        server.redirect,
        b"POST /v1/rooms?after=x&limit=2 HTTP/1.1\r\nHost: chat.example:80\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 308 "), "{answer}");
    let location = format!(
        "location: https://chat.example:{}/v1/rooms?after=x&limit=2\r\n",
        server.addr.port()
    );
    assert!(answer.to_ascii_lowercase().contains(&location), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("strict-transport-security"),
        "no HSTS over plain HTTP: {answer}"
    );
    let answer = plain_exchange(server.redirect, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.0 400 ") || answer.starts_with("HTTP/1.1 400 "),
        "{answer}"
    );
    assert!(answer.contains("invalid_request"), "{answer}");

    // And the TLS port still serves after all that.
    let api = server.api();
    api.signup("still_up").await.expect(201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_new_certificate_to_new_connections_and_open_websockets_go_on() {
    let server = TlsServer::start().await;
    let api = server.api();
    let (_, alice) = api.user("alice").await;
    let room = api.create_room(&alice, "reload", None).await;
    let mut ws = wss(server.addr, &server.root, &alice).await;
    assert_eq!(ws.subscribe(&room, None).await["type"], "subscribed");

    let first = server.root.clone();
    let second = write_cert(&server.dir);
    assert_ne!(first, second);
    server.hangup();
    // New connections get the new certificate (a client trusting both
    // shows which one it was given).
    let presented = async || {
        let tls = tls_connect(server.addr, &[&first, &second])
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(tls.get_ref().1.peer_certificates().unwrap()[0].clone())
    };
    emosation_testkit::eventually(
        "the new certificate served",
        Duration::from_secs(10),
        async || match presented().await? {
            c if c == second => Ok(()),
            _ => Err("still the first certificate".to_owned()),
        },
    )
    .await;
    // A client trusting only the new one gets through end to end.
    let renewed = https_api(server.addr, &second);
    renewed.signup("after_reload").await.expect(201);

    // The WebSocket opened before the reload goes on, both ways.
    ws.send(json!({"type": "send", "room_id": room, "client_msg_id": "r1", "text": "still here"}))
        .await;
    // Its ack and its own message frame, in either order.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let f = ws.next_of(&["ack", "message", "error"]).await;
        seen.push(f["type"].as_str().unwrap().to_owned());
        match f["type"].as_str() {
            Some("ack") => assert_eq!(f["client_msg_id"], "r1"),
            Some("message") => assert_eq!(f["text"], "still here"),
            _ => panic!("{f}"),
        }
    }
    seen.sort();
    assert_eq!(seen, ["ack", "message"]);

    // A reload that cannot be used keeps the current certificate.
    std::fs::write(server.dir.join("key.pem"), "not a key").unwrap();
    server.hangup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(presented().await.unwrap(), second);
    renewed.signup("after_bad_reload").await.expect(201);
}

#[tokio::test]
async fn tls_flags_that_cannot_work_are_refused_at_start_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_cert(dir);
    let run = |args: Vec<String>| async move {
        let out = tokio::process::Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .args(args)
            .env("EMOSATION_JWT_SECRET", SECRET)
            .output()
            .await
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let path = |f: &str| dir.join(f).display().to_string();

    let err = run(vec!["--redirect-http".into(), "127.0.0.1:0".into()]).await;
    assert!(err.contains("--tls-cert"), "{err}");
    let err = run(vec!["--tls-cert".into(), path("cert.pem")]).await;
    assert!(err.contains("--tls-key"), "{err}");
    // A key of another certificate.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("other.key"), other.signing_key.serialize_pem()).unwrap();
    let err = run(vec![
        "--tls-cert".into(),
        path("cert.pem"),
        "--tls-key".into(),
        path("other.key"),
    ])
    .await;
    assert!(err.contains("does not fit"), "{err}");
    let err = run(vec![
        "--tls-cert".into(),
        path("missing.pem"),
        "--tls-key".into(),
        path("key.pem"),
    ])
    .await;
    assert!(err.contains("missing.pem"), "{err}");
    let err = run(vec![
        "--tls-cert".into(),
        path("key.pem"),
        "--tls-key".into(),
        path("key.pem"),
    ])
    .await;
    assert!(err.contains("no PEM certificate"), "{err}");
}
