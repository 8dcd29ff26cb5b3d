//! The real binary, killed with SIGKILL in the middle of a send storm: every
//! message that was answered 202 is in the history after a restart, and a
//! replay from scratch (through the CLI) gives the same views checksum.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Api;
use emosation_testkit::eventually;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_emosation");

async fn spawn_server(dir: &Path, port: u16) -> (Child, Api) {
    common::spawn_binary("serve", dir, port, &[]).await
}

async fn cli(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_send_storm_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut child, api) = spawn_server(dir, emosation_testkit::free_port()).await;

    let mut users = Vec::new();
    for i in 0..4 {
        users.push(api.user(&format!("storm_{i}")).await.1);
    }
    let room = api.create_room(&users[0], "storm", None).await;
    for t in &users[1..] {
        api.post(&format!("/v1/rooms/{room}/join"), Some(t), json!({}))
            .await
            .expect(200);
    }

    // 16 senders post as fast as they can; every 202 is recorded.
    let acked = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for s in 0..16 {
        let (api, token, room, acked, stop) = (
            api.clone(),
            users[s % 4].clone(),
            room.clone(),
            Arc::clone(&acked),
            Arc::clone(&stop),
        );
        senders.push(tokio::spawn(async move {
            for i in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let cmid = format!("s{s}-{i}");
                let req = api
                    .http
                    .post(format!("{}/v1/rooms/{room}/messages", api.base))
                    .bearer_auth(&token)
                    .json(&json!({"client_msg_id": cmid, "text": format!("storm {s} {i}")}))
                    .send()
                    .await;
                match req {
                    Ok(r) if r.status().as_u16() == 202 => {
                        let body: serde_json::Value = r.json().await.unwrap_or_default();
                        if let Some(id) = body["message_id"].as_str() {
                            acked.lock().unwrap().push((cmid, id.to_owned()));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break, // the server is gone
                }
            }
        }));
    }
    // Let the storm run, then kill -9 while requests are in flight.
    let t0 = Instant::now();
    while acked.lock().unwrap().len() < 400 && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        let _ = s.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 400, "the storm produced only {} acks", acked.len());

    // Restart on the same data dir: every acknowledged message is there.
    let (mut child, api) = spawn_server(dir, emosation_testkit::free_port()).await;
    let token = api.login("storm_0").await["access_token"].as_str().unwrap().to_owned();
    let history = api.all_messages(&token, &room).await;
    let stored: HashSet<&str> = history.iter().map(|m| m["message_id"].as_str().unwrap()).collect();
    let missing: Vec<_> = acked.iter().filter(|(_, id)| !stored.contains(id.as_str())).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    // And no duplicates: every client_msg_id appears once.
    let texts: HashSet<&str> = history.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts.len(), history.len());
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    // `replay` rebuilds the views from scratch to the same digest. The kill
    // may have left records the views had not folded yet (the analyzer's
    // emotions, still being appended): `--catch-up` folds them first, so the
    // digest is the whole log's, as the replay's is.
    let before = cli(dir, &["views", "checksum", "--catch-up"]).await;
    assert_eq!(cli(dir, &["views", "checksum"]).await, before, "caught up for good");
    let out = cli(dir, &["replay"]).await;
    assert!(out.contains("events/s"), "{out}");
    let after = cli(dir, &["views", "checksum"]).await;
    assert_eq!(before.trim().len(), 64);
    assert_eq!(before, after, "replay from scratch gives the same views");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_help_and_bad_flags() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["replay", "--help"],
        vec!["views", "checksum", "--help"],
    ] {
        let out = Command::new(BIN).args(&args).output().await.unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage"), "{text}");
    }
    let serve_help = String::from_utf8(
        Command::new(BIN)
            .args(["serve", "--help"])
            .output()
            .await
            .unwrap()
            .stdout,
    )
    .unwrap();
    for env in [
        "EMOSATION_LISTEN",
        "EMOSATION_DATA_DIR",
        "EMOSATION_MESSAGE_RATE",
        "EMOSATION_LOG",
        "EMOSATION_STORE",
        "EMOSATION_CACHE",
    ] {
        assert!(serve_help.contains(env), "--help names {env}");
    }
    let out = Command::new(BIN)
        .args(["replay", "--views", "bogus", "--data-dir", "/nonexistent/x"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown view"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_websocket_sends_then_resume_delivers_every_acked_message() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut child, api) = spawn_server(dir, emosation_testkit::free_port()).await;
    let (_, token) = api.user("wsstorm").await;
    let room = api.create_room(&token, "wsstorm", None).await;
    let ws_url = |api: &Api| format!("{}/v1/ws?access_token={token}", api.base.replace("http://", "ws://"));
    let json = |m: Message| -> Option<serde_json::Value> {
        match m {
            Message::Text(t) => serde_json::from_str(t.as_str()).ok(),
            _ => None,
        }
    };

    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&api)).await.unwrap();
    ws.next().await; // hello
    ws.send(Message::text(json!({"type": "subscribe", "room_id": room}).to_string()))
        .await
        .unwrap();
    let cursor = loop {
        let f = json(ws.next().await.unwrap().unwrap());
        if let Some(f) = f.filter(|f| f["type"] == "subscribed") {
            break f["cursor"].as_str().unwrap().to_owned();
        }
    };
    // The sending socket leaves the room: its queue then holds only acks
    // (at most one per send in flight), never the room's traffic, so however
    // slowly this debug-built client reads, it is not closed as too slow.
    ws.send(Message::text(
        json!({"type": "unsubscribe", "room_id": room}).to_string(),
    ))
    .await
    .unwrap();
    loop {
        let f = json(ws.next().await.unwrap().unwrap());
        if f.is_some_and(|f| f["type"] == "unsubscribed") {
            break;
        }
    }
    // Pipeline sends; record every ack; kill -9 once a few hundred are acked.
    let (mut tx, mut rx) = ws.split();
    let sender = tokio::spawn(async move {
        for i in 0..5000 {
            let f =
                json!({"type": "send", "room_id": room, "client_msg_id": format!("w{i}"), "text": format!("ws {i}")});
            if tx.send(Message::text(f.to_string())).await.is_err() {
                break;
            }
            if i % 64 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    let mut acked = Vec::new();
    while acked.len() < 300 {
        match tokio::time::timeout(Duration::from_secs(20), rx.next()).await {
            Ok(Some(Ok(m))) => {
                if let Some(f) = json(m).filter(|f| f["type"] == "ack") {
                    acked.push(f["message_id"].as_str().unwrap().to_owned());
                }
            }
            other => panic!("stream ended early: {other:?}"),
        }
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    // Acks already in flight when the process died count too.
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(200), rx.next()).await {
        if let Some(f) = json(m).filter(|f| f["type"] == "ack") {
            acked.push(f["message_id"].as_str().unwrap().to_owned());
        }
    }
    sender.abort();

    // Restart and resume from the cursor: every acked message arrives, once.
    let (mut child, api) = spawn_server(dir, emosation_testkit::free_port()).await;
    let (ws, _) = tokio_tungstenite::connect_async(ws_url(&api)).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    let room_id = api.get("/v1/me/rooms", &token).await.expect(200)["rooms"][0]["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    tx.send(Message::text(
        json!({"type": "subscribe", "room_id": room_id, "since": cursor}).to_string(),
    ))
    .await
    .unwrap();
    let wanted: HashSet<String> = acked.iter().cloned().collect();
    let mut seen = HashSet::new();
    let mut delivered = 0;
    while !wanted.is_subset(&seen) {
        let m = tokio::time::timeout(Duration::from_secs(20), rx.next())
            .await
            .expect("resume delivers within 20 s")
            .unwrap()
            .unwrap();
        if let Some(f) = json(m).filter(|f| f["type"] == "message") {
            delivered += 1;
            assert!(
                seen.insert(f["message_id"].as_str().unwrap().to_owned()),
                "no duplicate on resume"
            );
        }
    }
    assert!(delivered >= acked.len());
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

/// The room's messages per hour, from `/activity`, once it counts `total`
/// messages (bounded wait).
async fn activity_with(api: &Api, token: &str, room: &str, total: u64) -> serde_json::Value {
    eventually("activity caught up", Duration::from_secs(30), async || {
        let body = api.get(&format!("/v1/rooms/{room}/activity"), token).await.expect(200);
        let counted: u64 = body["hours"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["messages"].as_u64().unwrap())
            .sum();
        if counted < total {
            return Err(format!("{counted}/{total}"));
        }
        assert_eq!(counted, total, "never counted twice: {body}");
        Ok(body["hours"].clone())
    })
    .await
}

/// A server of the crash tests with the admin token `admin-token`.
async fn spawn_admin(dir: &Path) -> (Child, Api) {
    common::spawn_binary(
        "serve",
        dir,
        emosation_testkit::free_port(),
        &["--admin-token", common::ADMIN_TOKEN],
    )
    .await
}

/// `GET /v1/admin/stats` once the admin consumer counted `messages`
/// messages and as many first emotions (each message gets exactly one, in
/// the log after it: counting the messages alone could catch a consumer
/// that keeps up closely before the last emotions) and the one sign-up:
/// its days and totals (never more than stored).
async fn admin_counts(api: &Api, messages: u64) -> Value {
    eventually("the admin counts caught up", Duration::from_secs(30), async || {
        let body = api.admin_get("/v1/admin/stats").await?;
        let counted = body["totals"]["messages"].as_u64().unwrap_or(0);
        let emotions: u64 = body["totals"]["emotions"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        // Accounts are another topic, read by their own partition task: the
        // sign-up may be counted after the last message.
        let users = body["totals"]["users"].as_u64().unwrap_or(0);
        if counted < messages || emotions < messages || users < 1 {
            return Err(format!(
                "{counted}/{messages} messages, {emotions}/{messages} emotions, {users}/1 users"
            ));
        }
        assert_eq!(counted, messages, "never counted twice: {body}");
        assert_eq!(emotions, messages, "one first emotion each: {body}");
        assert_eq!(body["totals"]["users"], 1, "{body}");
        Ok(json!({"days": body["days"], "totals": body["totals"]}))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_and_admin_views_survive_kill_9_and_rebuild_from_offset_0() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut child, api) = spawn_admin(dir).await;
    let (_, alice) = api.user("alice").await;
    let room = api.create_room(&alice, "counted", None).await;
    // A storm cut short by kill -9: the activity consumer dies mid-stream too.
    let storm = {
        let (api, alice, room) = (api.clone(), alice.clone(), room.clone());
        tokio::spawn(async move {
            for i in 0..3_000 {
                let sent = api
                    .http
                    .post(format!("{}/v1/rooms/{room}/messages", api.base))
                    .bearer_auth(&alice)
                    .json(&json!({"client_msg_id": format!("c{i}"), "text": "busy busy"}))
                    .send()
                    .await;
                if !matches!(sent, Ok(r) if r.status() == 202) {
                    break;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    storm.await.unwrap();

    let (mut child, api) = spawn_admin(dir).await;
    // Records appended before the kill but not yet folded are folded after
    // the restart; one more post, answered only once the fold decided it,
    // is behind all of them in the room's partition.
    api.post(
        &format!("/v1/rooms/{room}/messages"),
        Some(&alice),
        json!({"client_msg_id": "after-restart", "text": "back"}),
    )
    .await
    .expect(202);
    let stored = api.all_messages(&alice, &room).await.len() as u64;
    assert!(stored > 0);
    let live = activity_with(&api, &alice, &room, stored).await;
    let live_admin = admin_counts(&api, stored).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    // Cleared through the CLI, the core views untouched, then rebuilt by the
    // consumer from offset 0 to the same counts.
    let core = cli(dir, &["views", "checksum"]).await;
    let out = cli(dir, &["replay", "--views", "activity,admin"]).await;
    assert!(out.contains("activity views cleared"), "{out}");
    assert!(out.contains("admin views cleared"), "{out}");
    assert_eq!(cli(dir, &["views", "checksum"]).await, core);
    let (mut child, api) = spawn_admin(dir).await;
    assert_eq!(activity_with(&api, &alice, &room, stored).await, live);
    assert_eq!(admin_counts(&api, stored).await, live_admin);
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

/// The data directory and everything the server writes in it (the log with
/// its password hashes, the views) are private to the
/// server's user: the directory 0700, the files without group or other
/// permissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (mut child, api) = spawn_server(&dir, emosation_testkit::free_port()).await;
    api.user("priv").await;
    child.kill().await.unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "the data directory");
    let mut seen = 0;
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            assert_eq!(mode(&p) & 0o077, 0, "{} is {:o}", p.display(), mode(&p));
            if p.is_dir() {
                stack.push(p);
            }
            seen += 1;
        }
    }
    assert!(seen > 5, "the log and the views were written ({seen} entries)");
}
