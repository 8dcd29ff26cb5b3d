//! The log, read from outside the workspace: `emosation serve` on a tansu
//! broker, a chat with refused posts and repeated sends, then the Python
//! example (examples/python-emotion-mix: confluent-kafka, fastavro and the
//! published .avsc files alone) reads `emosation.rooms` from the beginning
//! under its own group. Its emotion mix per room and hour must equal the
//! server's own views: each room's `/emotions` summary, its history, and its
//! `/activity` hours.
//!
//! The Python packages are installed by the README's test command
//! (`scripts/test`, which sets `EMOSATION_REQUIRE_TEST_TOOLS=1`); run
//! alone without them, the test says so and passes over them.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use emosation_testkit::{Tansu, eventually, free_port};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::process::Command;

fn example_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python-emotion-mix")
}

/// Whether `python3` can import what the example needs.
async fn python_ready() -> bool {
    let out = Command::new("python3")
        .args(["-c", "import confluent_kafka, fastavro"])
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => true,
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            assert!(
                std::env::var_os("EMOSATION_REQUIRE_TEST_TOOLS").is_none(),
                "python3 with confluent-kafka and fastavro is required here: {why}"
            );
            eprintln!(
                "skipping: python3 with confluent-kafka and fastavro is not installed \
                 (scripts/test installs examples/python-emotion-mix/requirements.txt): {why}"
            );
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_consumer_decodes_the_log_and_agrees_with_the_views() {
    if !python_ready().await {
        return;
    }
    let kafka = Tansu::start();
    let log_url = kafka.isolated_url();
    let prefix = log_url.split("prefix=").nth(1).unwrap().to_owned();
    let bootstrap = kafka.url().trim_start_matches("kafka://").to_owned();
    let dir = tempfile::tempdir().unwrap();
    let (mut server, api) = common::spawn_binary("serve", dir.path(), free_port(), &["--log", &log_url]).await;

    let (_, ann) = api.user("ann").await;
    let (bob_id, bob) = api.user("bob").await;
    let (_, cid) = api.user("cid").await;
    let lounge = api.create_room(&ann, "lounge", None).await;
    let pair = api.create_room(&bob, "pair", Some(2)).await;
    api.post(&format!("/v1/rooms/{lounge}/join"), Some(&bob), json!({}))
        .await
        .expect(200);
    api.post(&format!("/v1/rooms/{pair}/join"), Some(&ann), json!({}))
        .await
        .expect(200);
    // The pair is full: cid's join is refused and so is her post there.
    api.post(&format!("/v1/rooms/{pair}/join"), Some(&cid), json!({}))
        .await
        .expect_error(409, "room_full");
    api.send(&cid, &pair, "c0", "let me in")
        .await
        .expect_error(403, "not_member");
    let texts = [
        "I love this, what a wonderful day",
        "this makes me so angry, I hate it",
        "I am scared and afraid of the dark",
        "so sad, I miss you and I am crying",
        "wow, what a surprise, unbelievable",
        "the meeting is at three",
        "gross, that is disgusting",
        "thank you, I am so happy and grateful",
    ];
    let mut sent = 0;
    for (i, text) in texts.iter().enumerate() {
        let (token, room) = match i % 3 {
            0 => (&ann, &lounge),
            1 => (&bob, &lounge),
            _ => (&bob, &pair),
        };
        api.send(token, room, &format!("m{i}"), text).await.expect(202);
        sent += 1;
    }
    // A repeated client_msg_id is one message; quitting and posting is refused.
    api.send(&ann, &lounge, "m0", "I love this, what a wonderful day")
        .await
        .expect(202);
    api.post(&format!("/v1/rooms/{pair}/quit"), Some(&ann), json!({}))
        .await
        .expect(200);
    api.send(&ann, &pair, "late", "am I still here?")
        .await
        .expect_error(403, "not_member");

    // Edits and deletes: ann rewrites her first message (its new emotion
    // supersedes the first), and as the lounge's owner deletes bob's (its
    // emotion stops counting). A direct-message room, opened once ann and
    // bob are friends, holds two more.
    let ids: Vec<String> = api
        .all_messages(&ann, &lounge)
        .await
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_owned())
        .collect();
    let (anns, bobs) = (ids[0].clone(), ids[1].clone());
    api.call(
        Method::PATCH,
        &format!("/v1/rooms/{lounge}/messages/{anns}"),
        Some(&ann),
        Some(json!({"text": "this makes me furious, I hate it"})),
    )
    .await
    .expect(200);
    api.call(
        Method::DELETE,
        &format!("/v1/rooms/{lounge}/messages/{bobs}"),
        Some(&ann),
        None,
    )
    .await
    .expect(200);
    // A file: ann uploads one and sends it (the consumer must see it is
    // hers, unsent, in that room); bob may not send ann's upload (ingest
    // refuses it before the log).
    let upload = api
        .http
        .post(format!("{}/v1/rooms/{lounge}/attachments?name=note.txt", api.base))
        .bearer_auth(&ann)
        .body("a note")
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status().as_u16(), 201);
    let file: Value = upload.json().await.unwrap();
    let file = file["attachment_id"].as_str().unwrap().to_owned();
    api.post(
        &format!("/v1/rooms/{lounge}/messages"),
        Some(&bob),
        json!({"client_msg_id": "f0", "text": "mine now", "attachments": [file]}),
    )
    .await
    .expect_error(400, "invalid_attachment");
    api.post(
        &format!("/v1/rooms/{lounge}/messages"),
        Some(&ann),
        json!({"client_msg_id": "f1", "text": "here is the file, I love it", "attachments": [file]}),
    )
    .await
    .expect(202);
    sent += 1;
    api.post("/v1/friends/requests", Some(&ann), json!({"username": "bob"}))
        .await
        .expect(200);
    api.post("/v1/friends/requests", Some(&bob), json!({"username": "ann"}))
        .await
        .expect(200);
    let dm = api
        .post(&format!("/v1/dms/{bob_id}"), Some(&ann), json!({}))
        .await
        .expect(200)["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (i, text) in ["see you at noon", "I am so happy you came"].iter().enumerate() {
        api.send(&ann, &dm, &format!("d{i}"), text).await.expect(202);
        sent += 1;
    }

    // The server's views, once every stored message has its emotion (the
    // edited one its edit's, the deleted one none).
    let rooms = [(&lounge, &ann), (&pair, &bob), (&dm, &ann)];
    let expected = eventually(
        "every stored message has its emotion and its hour",
        Duration::from_secs(30),
        async || {
            let mut expected = BTreeMap::new();
            let mut complete = true;
            for (room, token) in rooms {
                let history = api.all_messages(token, room).await;
                let emotions = api
                    .get(&format!("/v1/rooms/{room}/emotions?limit=200"), token)
                    .await
                    .expect(200);
                // The summary lists every label; the consumer, those it saw.
                let mut summary: BTreeMap<String, u64> = serde_json::from_value(emotions["summary"].clone()).unwrap();
                summary.retain(|_, n| *n > 0);
                let activity = api.get(&format!("/v1/rooms/{room}/activity"), token).await.expect(200);
                let counted: u64 = activity["hours"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| h["messages"].as_u64().unwrap())
                    .sum();
                let n = history.len() as u64;
                let deleted = history.iter().filter(|m| m["deleted"] == true).count() as u64;
                let edit_classified = history
                    .iter()
                    .filter(|m| m["edited_at"].is_string())
                    .all(|m| m["emotion"]["created_at"].as_str() >= m["edited_at"].as_str());
                complete &= summary.values().sum::<u64>() == n - deleted && counted == n && edit_classified;
                // The deleted messages' hours (`2026-12-02T06:00:00Z`).
                let mut deleted_hours: BTreeMap<String, u64> = BTreeMap::new();
                for m in history.iter().filter(|m| m["deleted"] == true) {
                    let at = m["created_at"].as_str().unwrap();
                    *deleted_hours.entry(format!("{}:00:00Z", &at[..13])).or_default() += 1;
                }
                expected.insert(
                    room.clone(),
                    (history.len(), summary, activity["hours"].clone(), deleted_hours),
                );
            }
            if complete {
                Ok(expected)
            } else {
                Err(format!("{expected:?}"))
            }
        },
    )
    .await;
    assert_eq!(expected.values().map(|(n, ..)| n).sum::<usize>(), sent);

    // The Python consumer, its own group, from offset 0.
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new("python3")
            .arg(example_dir().join("emotion_mix.py"))
            .args(["--bootstrap", &bootstrap, "--topic-prefix", &prefix, "--timeout", "90"])
            .output(),
    )
    .await
    .expect("the consumer finishes")
    .unwrap();
    assert!(
        out.status.success(),
        "emotion_mix.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["undecodable"], 0, "{report:#}");
    assert_eq!(report["misrouted"], 0, "{report:#}");
    assert!(report["records"].as_u64().unwrap() > sent as u64, "{report:#}");
    // It saw the duplicate and the refused join as the fold did.
    assert_eq!(report["refused"]["duplicate"], 1, "{report:#}");
    assert_eq!(report["refused"]["room_full"], 1, "{report:#}");

    for (room, (n, summary, hours, deleted_hours)) in &expected {
        let mine = &report["rooms"][room.as_str()];
        assert_eq!(mine["messages"].as_u64(), Some(*n as u64), "{room}: {mine:#}");
        let mix: BTreeMap<String, u64> = serde_json::from_value(mine["emotions"].clone()).unwrap();
        assert_eq!(&mix, summary, "{room}: emotion mix against /emotions");
        // Hour by hour: messages and distinct authors as /activity counts them,
        // and every message's emotion in its hour.
        let activity: BTreeMap<String, (u64, u64)> = hours
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["hour"].as_str().unwrap().to_owned(),
                    (h["messages"].as_u64().unwrap(), h["authors"].as_u64().unwrap()),
                )
            })
            .collect();
        let by_hour: BTreeMap<String, (u64, u64)> = mine["hours"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(hour, h)| {
                let emotions: u64 = h["emotions"]
                    .as_object()
                    .unwrap()
                    .values()
                    .map(|v| v.as_u64().unwrap())
                    .sum();
                // Every message's emotion in its hour, but a deleted one's.
                let deleted = deleted_hours.get(hour).copied().unwrap_or(0);
                assert_eq!(Some(emotions + deleted), h["messages"].as_u64(), "{room} {hour}");
                (
                    hour.clone(),
                    (h["messages"].as_u64().unwrap(), h["authors"].as_u64().unwrap()),
                )
            })
            .collect();
        assert_eq!(by_hour, activity, "{room}: hours against /activity");
    }
    server.kill().await.unwrap();
}
