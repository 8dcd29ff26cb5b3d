//! Helpers shared by the integration tests: a real server on 127.0.0.1:0 and
//! a small HTTP client for the contract.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use emosation::system::{ServeConfig, Server};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub mod ws_client;

/// `on_every_store!(body, …)`: a test per body on the embedded views and one
/// on Redis views (with Redis presence), each body an `async fn(TestServer)`
/// of the test file: everything above the view-store port behaves the same
/// on both.
#[allow(unused_macros)]
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            use super::TestServer;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(TestServer::start().await).await
                }
            )*
        }
        mod redis {
            use super::TestServer;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(TestServer::start_on_redis().await).await
                }
            )*
        }
    };
}

pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";
/// The shared admin token of the test servers (`--admin-token`).
pub const ADMIN_TOKEN: &str = "admin-token";

pub struct TestServer {
    pub server: Option<Server>,
    pub base: String,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    /// The Redis holding the views and presence, for `start_on_redis`.
    pub redis: Option<emosation_testkit::RedisServer>,
}

pub fn config(dir: &Path) -> ServeConfig {
    let mut cfg = ServeConfig::embedded(dir);
    cfg.jwt_secret = Some(SECRET.to_owned());
    // Every test client connects from 127.0.0.1 and some race hundreds of
    // sign-ups: the rate and abuse limits are off unless a test turns one on
    // (emosation/tests/abuse.rs, the message-rate tests).
    cfg.ingest.message_rate = 0;
    cfg.ingest.abuse = emosation_ingest::AbuseLimits::off();
    cfg.ingest.admin_token = Some(ADMIN_TOKEN.into());
    cfg
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_configured(|_| {}).await
    }

    /// A server on a fresh data dir (removed with the server) with the test
    /// configuration as `adjust` changes it.
    pub async fn start_configured(adjust: impl FnOnce(&mut ServeConfig)) -> TestServer {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = config(tmp.path());
        adjust(&mut cfg);
        let mut s = Self::start_with(cfg).await;
        s._tmp = Some(tmp);
        s
    }

    /// A server whose views and presence live in a fresh Redis.
    pub async fn start_on_redis() -> TestServer {
        let redis = emosation_testkit::RedisServer::start();
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = config(tmp.path());
        cfg.engines.store = Some(redis.url().to_owned());
        cfg.engines.cache = Some(redis.url().to_owned());
        let mut s = Self::start_with(cfg).await;
        s._tmp = Some(tmp);
        s.redis = Some(redis);
        s
    }

    pub async fn start_with(cfg: ServeConfig) -> TestServer {
        let dir = cfg.engines.data_dir.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server::start(cfg, listener).await.unwrap();
        TestServer {
            base: format!("http://{}", server.addr),
            server: Some(server),
            dir,
            _tmp: None,
            redis: None,
        }
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await.unwrap();
        }
    }

    pub fn client(&self) -> Api {
        Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            base: self.base.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

/// A response: status and JSON body (`Value::Null` when empty).
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub body: Value,
}

impl Resp {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "unexpected response body: {}", self.body);
        self.body
    }
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(self.code(), code, "body: {}", self.body);
        assert!(self.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

impl Api {
    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Resp {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Resp { status, body }
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Resp {
        let mut req = self.http.request(method, format!("{}{}", self.base, path)).body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Resp { status, body }
    }

    /// `GET path` with the shared admin token ([`ADMIN_TOKEN`]): its JSON
    /// body, or why there is none (for `eventually`).
    pub async fn admin_get(&self, path: &str) -> Result<Value, String> {
        self.http
            .get(format!("{}{path}", self.base))
            .header("x-admin-token", ADMIN_TOKEN)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.call(Method::POST, path, token, Some(body)).await
    }

    pub async fn signup(&self, username: &str) -> Resp {
        self.post(
            "/v1/auth/signup",
            None,
            json!({"username": username, "password": "correct horse"}),
        )
        .await
    }

    pub async fn login(&self, username: &str) -> Value {
        self.post(
            "/v1/auth/login",
            None,
            json!({"username": username, "password": "correct horse"}),
        )
        .await
        .expect(200)
    }

    /// Signs up and logs in; returns (user_id, access_token).
    pub async fn user(&self, username: &str) -> (String, String) {
        self.signup(username).await.expect(201);
        let l = self.login(username).await;
        (
            l["user_id"].as_str().unwrap().to_owned(),
            l["access_token"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn create_room(&self, token: &str, name: &str, capacity: Option<u32>) -> String {
        let mut body = json!({"name": name});
        if let Some(c) = capacity {
            body["capacity"] = json!(c);
        }
        let r = self.post("/v1/rooms", Some(token), body).await.expect(201);
        r["room_id"].as_str().unwrap().to_owned()
    }

    pub async fn send(&self, token: &str, room: &str, cmid: &str, text: &str) -> Resp {
        self.post(
            &format!("/v1/rooms/{room}/messages"),
            Some(token),
            json!({"client_msg_id": cmid, "text": text}),
        )
        .await
    }

    /// Every message of a room, oldest first, following `next_before`.
    pub async fn all_messages(&self, token: &str, room: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let path = match &before {
                Some(b) => format!("/v1/rooms/{room}/messages?limit=200&before={b}"),
                None => format!("/v1/rooms/{room}/messages?limit=200"),
            };
            let page = self.get(&path, token).await.expect(200);
            let mut msgs = page["messages"].as_array().unwrap().clone();
            msgs.extend(out);
            out = msgs;
            match page["next_before"].as_str() {
                Some(b) => before = Some(b.to_owned()),
                None => return out,
            }
        }
    }
}

/// Starts the real binary: `emosation <service> --listen 127.0.0.1:PORT
/// --data-dir DIR --message-rate 0 EXTRA…` with the test secret, and waits
/// until it answers `/healthz`. Killed when the child is dropped.
pub async fn spawn_binary(service: &str, dir: &Path, port: u16, extra: &[&str]) -> (tokio::process::Child, Api) {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_emosation"))
        .args([service, "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir)
        .args(["--message-rate", "0"])
        .args(extra)
        .env("EMOSATION_JWT_SECRET", SECRET)
        .env("EMOSATION_LOG_LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let api = Api {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap(),
        base: format!("http://127.0.0.1:{port}"),
    };
    wait_healthy(&api.base, Duration::from_secs(60)).await;
    (child, api)
}

/// Waits until the server at `base` answers `/healthz` (a spawned process
/// coming up), failing the test after `within`.
pub async fn wait_healthy(base: &str, within: Duration) {
    let http = reqwest::Client::new();
    emosation_testkit::eventually(&format!("{base} up"), within, async || {
        match http.get(format!("{base}/healthz")).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(r.status().to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}
