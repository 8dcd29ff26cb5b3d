//! The distributed deployment, for real: the log on a tansu broker, Redis for
//! presence, one process running ingest, projector, analyzer and query API on
//! embedded views, and two `emosation fanout` processes (each folding its own
//! replica of the views from the log).
//!
//! - a client on node B receives a message sent through node A, with its emotion;
//! - a user's second connection on node B kicks the first on node A;
//! - kill -9 node A: its client resumes on node B with `since`, no gap, no duplicate;
//! - kill -9 the projector's process mid-stream, restart: its views checksum
//!   equals a fresh replay's from the broker.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::ws_client::Client;
use common::{Api, SECRET};
use emosation_testkit::{RedisServer, Tansu, eventually, free_port};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_emosation");

struct Cluster {
    kafka: String,
    redis: String,
    /// `--store` for every process (`None`: embedded views per process).
    store: Option<String>,
    /// `--blobs` for every process (`None`: each its own data directory's).
    blobs: Option<String>,
}

struct Proc {
    child: Child,
    base: String,
}

impl Cluster {
    async fn spawn(&self, service: &str, dir: &Path) -> Proc {
        let port = free_port();
        let child = Command::new(BIN)
            .arg(service)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir)
            .args(["--log", &self.kafka, "--cache", &self.redis, "--message-rate", "0"])
            .args(self.store.iter().flat_map(|s| ["--store", s.as_str()]))
            .args(self.blobs.iter().flat_map(|b| ["--blobs", b.as_str()]))
            .env("EMOSATION_JWT_SECRET", SECRET)
            .env("EMOSATION_ADMIN_TOKEN", common::ADMIN_TOKEN)
            // EMOSATION_TEST_LOG=debug shows what the processes do.
            .env(
                "EMOSATION_LOG_LEVEL",
                std::env::var("EMOSATION_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        common::wait_healthy(&base, Duration::from_secs(60)).await;
        Proc { child, base }
    }

    async fn cli(&self, args: &[&str], dir: &Path) -> String {
        let out = Command::new(BIN)
            .args(args)
            .arg("--data-dir")
            .arg(dir)
            .args(["--log", &self.kafka])
            .args(self.store.iter().flat_map(|s| ["--store", s.as_str()]))
            .env("EMOSATION_LOG_LEVEL", "warn")
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Proc {
    fn api(&self) -> Api {
        Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            base: self.base.clone(),
        }
    }

    async fn kill9(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// SIGTERM, then wait for a clean exit.
    async fn stop(mut self) {
        let pid = self.child.id().expect("running");
        let st = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .unwrap();
        assert!(st.success());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("clean stop within 30 s")
            .unwrap();
        assert!(status.success(), "exited with {status}");
    }
}

/// Waits (bounded) until `/metrics` shows each group's lag at 0 on every
/// rooms partition (8 by default).
async fn caught_up(node: &Proc, groups: &[&str]) {
    let http = reqwest::Client::new();
    eventually("analytics consumers caught up", Duration::from_secs(60), async || {
        let text = http
            .get(format!("{}/metrics", node.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let done = groups.iter().all(|g| {
            let lags: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.starts_with("emosation_consumer_lag_records{")
                        && l.contains(&format!("group=\"{g}\""))
                        && l.contains("topic=\"emosation.rooms\"")
                })
                .collect();
            lags.len() == 8 && lags.iter().all(|l| l.ends_with(" 0"))
        });
        if done {
            return Ok(());
        }
        Err(text
            .lines()
            .filter(|l| l.starts_with("emosation_consumer_lag"))
            .collect::<Vec<_>>()
            .join("\n"))
    })
    .await
}

/// Connects to a fan-out node, retrying while its replica of the views has
/// not yet folded the user's signup (the token is checked against it).
async fn connect(node: &Proc, token: &str) -> Client {
    let url = format!("{}/v1/ws?access_token={token}", node.base.replace("http://", "ws://"));
    let mut c = eventually(
        &format!("connected to {}", node.base),
        Duration::from_secs(30),
        async || match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((ws, _)) => Ok(Client { ws }),
            Err(e) => Err(e.to_string()),
        },
    )
    .await;
    let hello = c.next().await;
    assert_eq!(hello["type"], "hello", "{hello}");
    c
}

/// Subscribes, retrying while the node's replica has not folded the join yet.
async fn subscribe(c: &mut Client, room: &str, since: Option<&str>, streams: &[&str]) -> Value {
    eventually("a member on this node", Duration::from_secs(30), async || {
        let mut f = json!({"type": "subscribe", "room_id": room, "streams": streams});
        if let Some(s) = since {
            f["since"] = json!(s);
        }
        c.send(f).await;
        let r = c.next_of(&["subscribed", "error"]).await;
        if r["type"] == "subscribed" {
            return Ok(r);
        }
        assert_eq!(r["code"], "not_member", "{r}");
        Err(r.to_string())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fanout_nodes_on_kafka_and_redis() {
    let tansu = Tansu::start();
    let redis = RedisServer::start();
    let cluster = Cluster {
        kafka: tansu.isolated_url(),
        redis: redis.url().to_owned(),
        store: None,
        blobs: None,
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| -> PathBuf { tmp.path().join(name) };

    let core = cluster.spawn("serve", &dir("core")).await;
    let mut node_a = cluster.spawn("fanout", &dir("node-a")).await;
    let node_b = cluster.spawn("fanout", &dir("node-b")).await;
    let api = core.api();
    let (_, alice) = api.user("alice").await;
    let (_, bob) = api.user("bob").await;
    let (_, carol) = api.user("carol").await;
    let room = api.create_room(&alice, "distributed", None).await;
    for t in [&bob, &carol] {
        api.post(&format!("/v1/rooms/{room}/join"), Some(t), json!({}))
            .await
            .expect(200);
    }

    // A message sent through node A reaches node B, then its emotion.
    let mut bob_b = connect(&node_b, &bob).await;
    subscribe(&mut bob_b, &room, None, &["chat", "emotion"]).await;
    let mut alice_a = connect(&node_a, &alice).await;
    alice_a
        .send(json!({"type": "send", "room_id": room, "client_msg_id": "hello-1", "text": "I am so happy and grateful today!"}))
        .await;
    let ack = alice_a.next_of(&["ack", "error"]).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let message_id = ack["message_id"].as_str().unwrap().to_owned();
    let msg = bob_b.next_of(&["message"]).await;
    assert_eq!(msg["message_id"], message_id.as_str());
    assert_eq!(msg["text"], "I am so happy and grateful today!");
    let emotion = bob_b.next_of(&["emotion"]).await;
    assert_eq!(emotion["message_id"], message_id.as_str());
    assert_eq!(emotion["label"], "joy", "{emotion}");

    // Room presence and typing cross nodes through Redis: carol opens the
    // room on node B (bob only follows it there); alice opening it on node A
    // is announced there, with both counted, and her typing reaches carol.
    let mut carol_p = connect(&node_b, &carol).await;
    subscribe(&mut carol_p, &room, None, &["chat", "presence"]).await;
    assert_eq!(carol_p.next_of(&["presence"]).await["online_count"], 1, "carol alone");
    subscribe(&mut alice_a, &room, None, &["chat", "presence"]).await;
    let p = carol_p.next_of(&["presence"]).await;
    assert_eq!(
        (p["state"].as_str(), p["online_count"].as_u64()),
        (Some("arrived"), Some(2)),
        "{p}"
    );
    let here = api.get(&format!("/v1/rooms/{room}/presence"), &bob).await.expect(200);
    assert_eq!(here["online_count"], 2, "{here}");
    alice_a.send(json!({"type": "typing", "room_id": room})).await;
    assert_eq!(carol_p.next_of(&["typing"]).await["room_id"], room.as_str());

    // A second connection of alice on node B kicks the first, on node A.
    let _alice_b = connect(&node_b, &alice).await;
    assert_eq!(
        alice_a.next_of(&["kicked"]).await,
        json!({"type": "kicked", "reason": "duplicate_session"})
    );

    // A logout answered by the core node ends the session's socket on node
    // B, through the Redis registry and kick channel.
    let (_, dave) = api.user("dave").await;
    let mut dave_b = connect(&node_b, &dave).await;
    api.post("/v1/auth/logout", Some(&dave), json!({})).await.expect(204);
    let end = dave_b.next_of(&["session_ended"]).await;
    assert_eq!(end["reason"], "logout");
    assert_eq!(dave_b.next_of(&["__close"]).await["code"], 1008);

    // Carol follows the room on node A; node A dies; she resumes on node B.
    let mut carol_a = connect(&node_a, &carol).await;
    let sub = subscribe(&mut carol_a, &room, None, &["chat"]).await;
    let start_cursor = sub["cursor"].as_str().unwrap().to_owned();
    let mut cursor = start_cursor.clone();
    let mut sent = Vec::new();
    for i in 0..10 {
        let r = api
            .send(&alice, &room, &format!("before-{i}"), &format!("before {i}"))
            .await;
        sent.push(r.expect(202)["message_id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let f = carol_a.next_of(&["message"]).await;
        cursor = f["cursor"].as_str().unwrap().to_owned();
        seen.push(f["message_id"].as_str().unwrap().to_owned());
    }
    node_a.kill9().await;
    for i in 0..10 {
        let r = api
            .send(&alice, &room, &format!("after-{i}"), &format!("after {i}"))
            .await;
        sent.push(r.expect(202)["message_id"].as_str().unwrap().to_owned());
    }
    let mut carol_b = connect(&node_b, &carol).await;
    subscribe(&mut carol_b, &room, Some(&cursor), &["chat"]).await;
    while seen.len() < sent.len() {
        let f = carol_b.next_of(&["message"]).await;
        seen.push(f["message_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, sent, "resumed on another node with no gap and no duplicate");
    assert!(carol_b.quiet(300).await, "nothing after the last message");

    // kill -9 the projector's process in the middle of a send storm.
    let mut core = core;
    let storm = {
        let api = core.api();
        let (alice, room) = (alice.clone(), room.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..2_000 {
                match api
                    .http
                    .post(format!("{}/v1/rooms/{room}/messages", api.base))
                    .bearer_auth(&alice)
                    .json(&json!({"client_msg_id": format!("storm-{i}"), "text": format!("storm {i}")}))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 202 => {
                        let v: Value = r.json().await.unwrap();
                        acked.push(v["message_id"].as_str().unwrap().to_owned());
                    }
                    _ => break,
                }
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    core.kill9().await;
    let acked = storm.await.unwrap();
    assert!(!acked.is_empty(), "some sends were acknowledged before the kill");
    assert!(acked.len() < 2_000, "the kill came mid-stream");
    eprintln!("{} sends acknowledged before kill -9", acked.len());
    let core = cluster.spawn("serve", &dir("core")).await;
    let api = core.api();
    let history: HashSet<String> = api
        .all_messages(&alice, &room)
        .await
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_owned())
        .collect();
    for id in acked.iter().chain(&sent) {
        assert!(history.contains(id), "acknowledged message {id} is in the history");
    }
    // Wait until the analyzer has caught up (every message has its emotion),
    // so nothing more is appended, then stop and compare with a fresh replay.
    emotions_settle(&api, &alice, &room, history.len() as u64).await;
    // The analyzer may still append repeated emotions (it classifies again
    // what it had not committed before the kill): wait until every analytics
    // consumer has read to the end of every partition. The activity
    // consumer is never ahead of the core views, so then the projector has
    // folded everything too.
    caught_up(&core, &["analyzer", "activity"]).await;
    core.stop().await;
    let live = cluster.cli(&["views", "checksum"], &dir("core")).await;
    cluster.cli(&["replay"], &dir("fresh")).await;
    let fresh = cluster.cli(&["views", "checksum"], &dir("fresh")).await;
    assert_eq!(live, fresh, "the restarted projector's views equal a fresh replay's");
    // Node B has been folding the same log all along: once it delivers the
    // emotion of the last message (the last record of the room's partition;
    // fan-out delivers only what its views have applied), it has folded
    // everything; stop it and compare.
    let last = history.iter().max().unwrap().clone();
    let mut watcher = connect(&node_b, &carol).await;
    subscribe(&mut watcher, &room, Some(&start_cursor), &["emotion"]).await;
    loop {
        let f = watcher.next_of(&["emotion"]).await;
        if f["message_id"] == last.as_str() {
            break;
        }
    }
    node_b.stop().await;
    let replica = cluster.cli(&["views", "checksum"], &dir("node-b")).await;
    assert_eq!(replica, fresh, "node B's replica folded the same views");
}

/// Waits until the room's emotion summary counts `n` emotions (the analyzer
/// has caught up and appends nothing more).
async fn emotions_settle(api: &Api, token: &str, room: &str, n: u64) {
    eventually("emotions caught up", Duration::from_secs(60), async || {
        let e = api.get(&format!("/v1/rooms/{room}/emotions"), token).await.expect(200);
        let counted: u64 = e["summary"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        if counted >= n {
            Ok(())
        } else {
            Err(format!("{counted}/{n}"))
        }
    })
    .await
}

/// Every service in its own process over shared views in Redis: decisions
/// reach ingest and fan-out through Redis; when Redis comes back empty, the
/// projector notices and rebuilds the views from the log, to the same checksum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_service_per_process_on_shared_redis_views() {
    let tansu = Tansu::start();
    let mut redis = RedisServer::start();
    // One blob store, as ingest and the query API share a bucket.
    let blobs = tempfile::tempdir().unwrap();
    let cluster = Cluster {
        kafka: tansu.isolated_url(),
        redis: redis.url().to_owned(),
        store: Some(redis.url().to_owned()),
        blobs: Some(format!("embedded://{}", blobs.path().display())),
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| -> PathBuf { tmp.path().join(name) };
    let _projector = cluster.spawn("projector", &dir("projector")).await;
    let ingest = cluster.spawn("ingest", &dir("ingest")).await;
    let query = cluster.spawn("query-api", &dir("query")).await;
    let fanout = cluster.spawn("fanout", &dir("fanout")).await;
    let _analyzer = cluster.spawn("analyzer", &dir("analyzer")).await;
    let (cmd, read) = (ingest.api(), query.api());

    // Commands answer with the fold's decision, which crossed processes.
    let (_, alice) = cmd.user("alice").await;
    let (_, bob) = cmd.user("bob").await;
    cmd.signup("alice").await.expect_error(409, "username_taken");
    let room = cmd.create_room(&alice, "shared", Some(3)).await;
    cmd.post(&format!("/v1/rooms/{room}/join"), Some(&bob), json!({}))
        .await
        .expect(200);

    let mut bob_ws = connect(&fanout, &bob).await;
    subscribe(&mut bob_ws, &room, None, &["chat", "emotion"]).await;
    let mut sent = Vec::new();
    for i in 0..20 {
        let r = cmd
            .send(
                &alice,
                &room,
                &format!("m{i}"),
                &format!("message {i}, what a lovely day"),
            )
            .await;
        sent.push(r.expect(202)["message_id"].as_str().unwrap().to_owned());
    }
    // Read your writes on another process: the 202 came after the views had it.
    let history: Vec<String> = read
        .all_messages(&alice, &room)
        .await
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(history, sent);
    let mut delivered = Vec::new();
    while delivered.len() < sent.len() {
        let f = bob_ws.next_of(&["message"]).await;
        delivered.push(f["message_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(delivered, sent, "fan-out delivered every message in order");
    emotions_settle(&read, &alice, &room, 20).await;
    // The admin console's figures: folded by the analyzer service's admin
    // consumer into the shared views, served by query-api, with who is
    // online from the shared presence store (bob, on the fan-out node).
    let stats = eventually("the admin figures", Duration::from_secs(30), async || {
        let v = read.admin_get("/v1/admin/stats").await?;
        let mix: u64 = v["week"]["emotions"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        if v["totals"]["messages"] == 20 && mix == 20 {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await;
    assert_eq!(
        (
            &stats["totals"]["users"],
            &stats["totals"]["rooms"],
            &stats["online_now"]
        ),
        (&json!(2), &json!(1), &json!(1)),
        "{stats}"
    );
    let before = cluster.cli(&["views", "checksum"], &dir("cli")).await;

    // Redis restarts with nothing: the projector notices and refolds the log.
    redis.restart_empty();
    eventually(
        "the views rebuilt from the log to the same checksum",
        Duration::from_secs(60),
        async || {
            let out = Command::new(BIN)
                .args(["views", "checksum", "--store", redis.url(), "--data-dir"])
                .arg(dir("cli"))
                .output()
                .await
                .unwrap();
            let now = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && now == before {
                Ok(())
            } else {
                Err(now)
            }
        },
    )
    .await;
    // And the deployment carries on.
    let r = cmd.send(&alice, &room, "after", "back again").await;
    let after = r.expect(202)["message_id"].as_str().unwrap().to_owned();
    let history = read.all_messages(&alice, &room).await;
    assert_eq!(history.last().unwrap()["message_id"], after.as_str());
    assert_eq!(history.len(), 21);

    // A file uploaded through ingest, sent, delivered by the fan-out node,
    // and downloaded through the query API: processes that share the log,
    // the views and the blob store.
    let up = cmd
        .raw(
            reqwest::Method::POST,
            &format!("/v1/rooms/{room}/attachments?name=shared.txt"),
            Some(&alice),
            Some("text/plain"),
            b"shared bytes".to_vec(),
        )
        .await
        .expect(201);
    let file = up["attachment_id"].as_str().unwrap().to_owned();
    let posted = cmd
        .post(
            &format!("/v1/rooms/{room}/messages"),
            Some(&alice),
            json!({"client_msg_id": "with-file", "text": "", "attachments": [file]}),
        )
        .await
        .expect(202);
    let frame = loop {
        let f = bob_ws.next_of(&["message"]).await;
        if f["message_id"] == posted["message_id"] {
            break f;
        }
    };
    assert_eq!(frame["attachments"][0]["attachment_id"], file.as_str(), "{frame}");
    let got = read
        .http
        .get(format!("{}/v1/attachments/{file}", read.base))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), b"shared bytes");
}
