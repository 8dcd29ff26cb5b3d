//! HTTP on loopback against the release server (a child process):
//! - `post`: `POST /v1/rooms/{id}/messages`, closed loop, many connections:
//!   requests/s and latency percentiles (each 202 means durable and folded);
//!   then (`http_post_emotions`) how many of the messages had their emotion
//!   when the load stopped, how long until all did, and the rate with every
//!   emotion in (the analyzer yields to the chat path, so a saturating
//!   closed loop defers emotions: see `emotions_caught_up`);
//! - `history`: `GET /v1/rooms/{id}/messages?limit=50` open loop at a fixed
//!   rate (default 10,000 req/s): achieved rate and latency percentiles.
//!
//! `BENCH_LOG=kafka` runs the server on a `KafkaLog` against a tansu broker
//! (its sqlite engine, started here) instead of the embedded log: a 202 then
//! means the broker acknowledged the record (`acks=all`) *and* the projector
//! fetched it back from the broker and folded it.
//!
//! `SERVERS=emosation,broadcaster,socketio` runs `post` on each (the peers
//! are in-memory broadcasters with no log: `emosation_bench::Peer`).
//!
//! Env: POST_SECS (5), POST_CONNS (64), HISTORY_RATE (10000), HISTORY_SECS (5),
//! HISTORY (`true`; `false` skips it), BENCH_LOG (`embedded` or `kafka`),
//! KAFKA_OPTIONS (librdkafka properties added to the URL, `k=v&…`),
//! BENCH_SERVER_CPU / BENCH_KAFKA_CPU (pin the server / broker with taskset).

use std::sync::Arc;
use std::time::{Duration, Instant};

use emosation_bench::{Peer, ServerProcess, create_room, env, gather, join, percentiles, user};
use serde_json::json;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let engine: String = env("BENCH_LOG", "embedded".to_owned());
    let history: bool = env("HISTORY", true);
    let (_broker, extra) = match engine.as_str() {
        "embedded" => (None, Vec::new()),
        "kafka" => {
            let cpu = std::env::var("BENCH_KAFKA_CPU").ok();
            let (broker, url) = emosation_bench::tansu(cpu.as_deref(), &env("KAFKA_OPTIONS", String::new()))?;
            (Some(broker), vec!["--log".to_owned(), url])
        }
        other => anyhow::bail!("unknown BENCH_LOG {other} (embedded, kafka)"),
    };
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    // `SERVERS=emosation,broadcaster,socketio`: `post` on emosation and on the
    // in-memory peers it is compared with (`Peer`), one after the other on
    // the same core (`BENCH_SERVER_CPU`); `history` on emosation only.
    let servers: String = env("SERVERS", "emosation".to_owned());
    for name in servers.split(',') {
        let server = match name {
            "emosation" => ServerProcess::start(&extra).await?,
            peer => {
                let cpu = std::env::var("BENCH_SERVER_CPU").ok();
                Peer::from_name(peer)?.start(true, cpu.as_deref()).await?
            }
        };
        run(name, server, &engine, history && name == "emosation").await?;
    }
    Ok(())
}

/// `post`, then (if `history`) `history`, against `server`.
async fn run(name: &str, server: ServerProcess, engine: &str, history: bool) -> anyhow::Result<()> {
    let base = server.base.clone();
    let client = reqwest::Client::builder().pool_max_idle_per_host(1024).build()?;

    // Users and one room everyone is in.
    let conns: usize = env("POST_CONNS", 64);
    let mut tokens = Vec::new();
    for i in 0..16 {
        tokens.push(user(&client, &base, &format!("bench_{i}")).await?.1);
    }
    let room = create_room(&client, &base, &tokens[0], "bench").await?;
    for t in &tokens[1..] {
        join(&client, &base, t, &room).await?;
    }

    // --- post: closed loop.
    let secs: u64 = env("POST_SECS", 5);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (client, base, room, token) = (
            client.clone(),
            base.clone(),
            room.clone(),
            tokens[c % tokens.len()].clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let url = format!("{base}/v1/rooms/{room}/messages");
            // Bounded in time and in count.
            for i in 0..1_000_000u64 {
                if Instant::now() >= deadline {
                    break;
                }
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"client_msg_id": format!("c{c}-{i}"), "text": "benchmark message, how do you feel?"}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().as_u16() == 202 => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed().as_micros() as u64)
                    }
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let (lat, errors) = gather(tasks).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let n = lat.len();
    println!(
        "{}",
        json!({"bench": "http_post_messages", "server": name, "log": engine, "connections": conns, "seconds": elapsed, "accepted": n, "errors": errors,
               "req_per_sec": (n as f64 / elapsed).round(), "latency": percentiles(lat)})
    );
    if name == "emosation" {
        emotions_caught_up(&client, &base, &tokens[0], &room, n, elapsed).await?;
    }

    if !history {
        return Ok(());
    }
    // --- history: open loop at a fixed rate over a room with >= 10,000 messages.
    let rate: u64 = env("HISTORY_RATE", 10_000);
    let hsecs: u64 = env("HISTORY_SECS", 5);
    let workers: u64 = 100;
    let per_worker_interval = Duration::from_secs_f64(workers as f64 / rate as f64);
    let url = Arc::new(format!("{base}/v1/rooms/{room}/messages?limit=50"));
    // Let the server settle (background compaction after the post storm),
    // then warm up connections.
    tokio::time::sleep(Duration::from_secs(env("SETTLE_SECS", 3))).await;
    for _ in 0..200 {
        client
            .get(url.as_str())
            .bearer_auth(&tokens[0])
            .send()
            .await?
            .bytes()
            .await?;
    }
    let started = Instant::now();
    let end = started + Duration::from_secs(hsecs);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (client, url, token) = (
            client.clone(),
            Arc::clone(&url),
            tokens[(w as usize) % tokens.len()].clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut next = started + per_worker_interval.mul_f64(w as f64 / workers as f64);
            while next < end {
                tokio::time::sleep_until(next.into()).await;
                let t = Instant::now();
                match client.get(url.as_str()).bearer_auth(&token).send().await {
                    Ok(r) if r.status().is_success() => {
                        let body = r.bytes().await.unwrap_or_default();
                        if body.len() < 1000 {
                            errors += 1;
                        }
                        lat.push(t.elapsed().as_micros() as u64);
                    }
                    _ => errors += 1,
                }
                next += per_worker_interval;
            }
            (lat, errors)
        }));
    }
    let (lat, errors) = gather(tasks).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let n = lat.len();
    let summary = percentiles(lat);
    println!(
        "{}",
        json!({"bench": "http_history_page", "log": engine, "limit": 50, "offered_per_sec": rate, "seconds": elapsed, "requests": n,
               "errors": errors, "achieved_per_sec": (n as f64 / elapsed).round(), "latency": summary, "target_p99_us": 2000})
    );
    drop(server);
    Ok(())
}

/// After `post`: how many of the `accepted` messages (all in `room`) had
/// their emotion when the load stopped, and how long until all did. The
/// analyzer runs at the lowest CPU priority, so at saturation it classifies
/// in what time the chat path leaves, and a closed loop leaves none: the
/// `post` rate alone is then a rate with emotions deferred. The rate with
/// every emotion in is `accepted / (load seconds + seconds to catch up)`
/// (bounded: it gives up after 120 s).
async fn emotions_caught_up(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    room: &str,
    accepted: usize,
    load_secs: f64,
) -> anyhow::Result<()> {
    let url = format!("{base}/v1/rooms/{room}/emotions?limit=1");
    let classified = async || -> anyhow::Result<u64> {
        let v: serde_json::Value = client
            .get(&url)
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(v["summary"]
            .as_object()
            .map(|m| m.values().filter_map(serde_json::Value::as_u64).sum())
            .unwrap_or(0))
    };
    let stopped = Instant::now();
    let at_end = classified().await?;
    let mut now = at_end;
    while now < accepted as u64 && stopped.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = classified().await?;
    }
    let caught_up = (now >= accepted as u64).then(|| stopped.elapsed().as_secs_f64());
    println!(
        "{}",
        json!({"bench": "http_post_emotions", "accepted": accepted, "with_emotion_when_load_stopped": at_end,
               "with_emotion_now": now, "all_classified_after_secs": caught_up,
               "req_per_sec_with_every_emotion": caught_up.map(|c| (accepted as f64 / (load_secs + c)).round())})
    );
    Ok(())
}
