//! `c100k` (issue 21): 100,000 subscribed WebSocket connections on one
//! machine, spread over as many `emosation fanout` nodes as the per-process
//! descriptor limit (20,000 here) needs, on one shared log (a tansu broker)
//! with redis-server for sessions and presence; 1,000 rooms of 100; a
//! steady trickle of messages posted over HTTP to the `serve` process.
//!
//! A process holds at most ~19,000 sockets, so the load is spread the same
//! way as the server: the `ws` binary starts one child of itself per node
//! (`C100K_CHILD`), each opening and subscribing its share of raw sockets
//! to its node, then reading every delivery until told to stop. It reports:
//! - per node, RSS before and after its connections (marginal RSS per
//!   connection) and its CPU over the trickle;
//! - kernel memory per connection (`Slab` of /proc/meminfo and the TCP
//!   stack's pages in /proc/net/sockstat, both ends of each socket: the
//!   clients live on the same machine);
//! - every delivery's latency (send → frame) across nodes, and lost ones;
//! - what one more node costs: an idle node's RSS with its replica of the
//!   views folded, before it holds a connection.
//!
//! Knobs: `C100K_CONNS` (100,000), `C100K_ROOMS` (1,000), `C100K_NODES`
//! (6), `C100K_RATE` (100 messages/s over all rooms), `SECS` (the trickle's
//! duration, 10 by default).

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::{create_room, env, join, now_us, percentiles, raw_ws, rss_kb, user};

/// What a child is asked to do: open `conns` sockets to `addr`, the i-th
/// subscribed to `rooms[i % rooms.len()]` with `tokens[i % tokens.len()]`
/// (sent to it as one JSON line).
struct Plan {
    addr: String,
    rooms: Vec<String>,
    tokens: Vec<String>,
    conns: usize,
}

impl Plan {
    fn to_json(&self) -> String {
        json!({"addr": self.addr, "rooms": self.rooms, "tokens": self.tokens, "conns": self.conns}).to_string()
    }

    fn from_json(line: &str) -> anyhow::Result<Plan> {
        let v: Value = serde_json::from_str(line)?;
        let strings = |k: &str| -> Vec<String> {
            v[k].as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        };
        Ok(Plan {
            addr: v["addr"].as_str().context("addr")?.to_owned(),
            rooms: strings("rooms"),
            tokens: strings("tokens"),
            conns: v["conns"].as_u64().context("conns")? as usize,
        })
    }
}

/// A child's part: reads a [`Plan`] line from stdin, opens and subscribes
/// its sockets, prints `{"ready": n}`, reads deliveries until stdin closes,
/// then prints `{"received": n, "latencies_us": [...]}`.
pub async fn child() -> anyhow::Result<()> {
    // Lines of stdin (tokio's stdin is a feature the bench does without);
    // the channel closes when stdin does.
    let (lines_tx, mut stdin) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let plan = Plan::from_json(&stdin.recv().await.context("no plan")?)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u32>>();
    let mut pending = futures_util::stream::FuturesUnordered::new();
    let mut opened = 0;
    let mut ready = 0usize;
    let mut retried = 0u64;
    use futures_util::StreamExt;
    while opened < plan.conns || !pending.is_empty() {
        while opened < plan.conns && pending.len() < 256 {
            let (addr, room, token) = (
                plan.addr.clone(),
                plan.rooms[opened % plan.rooms.len()].clone(),
                plan.tokens[opened % plan.tokens.len()].clone(),
            );
            pending.push(async move {
                // A refused or dropped handshake is tried again, as a
                // client reconnecting would (counted), up to 20 times.
                let mut retries = 0u32;
                loop {
                    match raw_ws::subscribe(&addr, &token, &room, r#"["chat"]"#).await {
                        Ok(s) => return Ok((s, retries)),
                        Err(e) if retries >= 20 => return Err(e),
                        Err(_) => {
                            retries += 1;
                            tokio::time::sleep(Duration::from_millis(200 * u64::from(retries))).await;
                        }
                    }
                }
            });
            opened += 1;
        }
        if let Some(s) = pending.next().await {
            let (mut s, r): (tokio::net::TcpStream, u32) = s?;
            retried += u64::from(r);
            ready += 1;
            let tx = tx.clone();
            tokio::spawn(async move {
                raw_ws::read_stamps(&mut s, 4096, |now, stamps| {
                    let lat = stamps.iter().map(|(t, _, _)| now.saturating_sub(*t) as u32).collect();
                    tx.send(lat).is_ok()
                })
                .await;
            });
        }
    }
    drop(tx);
    println!("{}", json!({ "ready": ready, "handshakes_retried": retried }));
    let mut latencies: Vec<u32> = Vec::new();
    loop {
        tokio::select! {
            line = stdin.recv() => if line.is_none() { break },
            Some(l) = rx.recv() => latencies.extend(l),
        }
    }
    while let Ok(l) = rx.try_recv() {
        latencies.extend(l);
    }
    println!("{}", json!({ "received": latencies.len(), "latencies_us": latencies }));
    Ok(())
}

/// `Slab` of /proc/meminfo plus the TCP stack's memory in
/// /proc/net/sockstat (pages), in KB.
fn kernel_kb() -> (u64, u64) {
    let slab = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Slab:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    let tcp_pages: u64 = std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("TCP:"))?.to_owned();
            let w: Vec<&str> = l.split_whitespace().collect();
            w.iter()
                .position(|x| *x == "mem")
                .and_then(|i| w.get(i + 1)?.parse().ok())
        })
        .unwrap_or(0);
    (slab, tcp_pages * 4)
}

/// The scenario, on a distributed deployment: `core` is the `serve`
/// process's base URL, `nodes` the fan-out nodes' (base URL, pid).
pub async fn run(core: &str, nodes: &[(String, u32)]) -> anyhow::Result<()> {
    let conns: usize = env("C100K_CONNS", 100_000);
    let rooms_n: usize = env("C100K_ROOMS", 1_000);
    let rate: u64 = env("C100K_RATE", 100);
    let secs: u64 = env("SECS", 10);
    let per_room = conns / rooms_n;
    let http = reqwest::Client::new();
    let t = Instant::now();
    // The sender owns every room; `per_room` people are members of all of
    // them (each holds many connections: one per room it is subscribed in).
    let (_, sender) = user(&http, core, "c100k_sender").await?;
    let mut rooms = Vec::with_capacity(rooms_n);
    for i in 0..rooms_n {
        rooms.push(create_room(&http, core, &sender, &format!("c{i}")).await?);
    }
    let mut tokens = Vec::with_capacity(per_room);
    for i in 0..per_room {
        tokens.push(user(&http, core, &format!("c100k_{i}")).await?.1);
    }
    {
        use futures_util::StreamExt;
        let joins = rooms.iter().flat_map(|r| tokens.iter().map(move |t| (r, t)));
        let mut s = futures_util::stream::iter(joins)
            .map(|(r, t)| join(&http, core, t, r))
            .buffer_unordered(64);
        while let Some(r) = s.next().await {
            r?;
        }
    }
    let setup_secs = t.elapsed().as_secs_f64();
    // Fresh access tokens: the joins take minutes at this scale.
    for (i, token) in tokens.iter_mut().enumerate() {
        let l = crate::login(&http, core, &format!("c100k_{i}")).await?;
        *token = l["access_token"].as_str().unwrap_or_default().to_owned();
    }
    // Each node's replica folds the joins before it accepts subscriptions:
    // wait until every node takes the last join (raw_ws::subscribe retries
    // `not_member`), so the connect phase measures connecting.
    for (base, _) in nodes {
        let addr = base.trim_start_matches("http://");
        let last = (rooms.last().context("no rooms")?, tokens.last().context("no people")?);
        let started = Instant::now();
        while raw_ws::subscribe(addr, last.1, last.0, r#"["chat"]"#).await.is_err() {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(300),
                "{base} did not fold the joins"
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss: Vec<u64> = nodes.iter().map(|(_, pid)| rss_kb(*pid)).collect();
    let kernel_before = kernel_kb();
    // One child per node; node k's sockets are every room's members
    // k, k + nodes, … so that each room spreads over all nodes.
    // This very executable, even if a rebuild has replaced the file meanwhile.
    let me = std::path::PathBuf::from("/proc/self/exe");
    let mut children = Vec::new();
    let per_node = conns / nodes.len();
    for (k, (base, _)) in nodes.iter().enumerate() {
        let mut child = tokio::process::Command::new(&me)
            .env("C100K_CHILD", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        // Node k's sockets: room i % rooms, token (k + nodes * (i / rooms)).
        let node_tokens: Vec<String> = (0..per_node.div_ceil(rooms_n))
            .map(|j| tokens[(k + nodes.len() * j) % tokens.len()].clone())
            .collect();
        let plan = Plan {
            addr: base.trim_start_matches("http://").to_owned(),
            rooms: rooms.clone(),
            tokens: node_tokens,
            conns: per_node,
        };
        let mut stdin = child.stdin.take().context("child stdin")?;
        stdin.write_all(format!("{}\n", plan.to_json()).as_bytes()).await?;
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?).lines();
        children.push((child, stdin, stdout));
    }
    let t = Instant::now();
    let (mut ready, mut retried) = (0u64, 0u64);
    for (_, _, out) in &mut children {
        let line = out.next_line().await?.context("child ended before ready")?;
        let v: Value = serde_json::from_str(&line)?;
        ready += v["ready"].as_u64().unwrap_or(0);
        retried += v["handshakes_retried"].as_u64().unwrap_or(0);
    }
    let connect_secs = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let busy_rss: Vec<u64> = nodes.iter().map(|(_, pid)| rss_kb(*pid)).collect();
    let kernel_after = kernel_kb();
    // The trickle: `rate` messages/s, round robin over the rooms, posted.
    let cpu_before: Vec<u64> = nodes.iter().map(|(_, pid)| crate::cpu_us(*pid)).collect();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let total = rate * secs;
    let start = Instant::now();
    let mut posted = 0u64;
    let mut posts = Vec::new();
    for i in 0..total {
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        let room = rooms[i as usize % rooms.len()].clone();
        let (http, core, sender) = (http.clone(), core.to_owned(), sender.clone());
        posts.push(tokio::spawn(async move {
            let now = now_us();
            http.post(format!("{core}/v1/rooms/{room}/messages"))
                .bearer_auth(&sender)
                .json(&json!({"client_msg_id": format!("c{i}"), "text": format!("t={now} c0 n{i} hello")}))
                .send()
                .await
                .map_or(0, |r| r.status().as_u16())
        }));
    }
    // Subscribers per room, as the children were told to open them.
    let mut subscribers = vec![0u64; rooms.len()];
    for _ in nodes {
        for i in 0..per_node {
            subscribers[i % rooms.len()] += 1;
        }
    }
    let mut statuses: std::collections::BTreeMap<u16, u64> = Default::default();
    let mut expected = 0u64;
    for (i, p) in posts.into_iter().enumerate() {
        let status = p.await.unwrap_or(0);
        *statuses.entry(status).or_default() += 1;
        if status == 202 {
            posted += 1;
            expected += subscribers[i % rooms.len()];
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu_ms: Vec<u64> = nodes
        .iter()
        .zip(&cpu_before)
        .map(|((_, pid), b)| crate::cpu_us(*pid).saturating_sub(*b) / 1000)
        .collect();
    let mut latencies = Vec::new();
    for (mut child, stdin, mut out) in children {
        drop(stdin);
        let line = out.next_line().await?.context("child ended without a report")?;
        let v: Value = serde_json::from_str(&line)?;
        latencies.extend(
            v["latencies_us"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64),
        );
        let _ = child.wait().await;
    }
    let received = latencies.len() as u64;
    let per_conn = |before: &[u64], after: &[u64]| -> f64 {
        let d: u64 = after.iter().zip(before).map(|(a, b)| a.saturating_sub(*b)).sum();
        (d as f64 / ready.max(1) as f64 * 100.0).round() / 100.0
    };
    println!(
        "{}",
        json!({"bench": "ws", "scenario": "c100k", "nodes": nodes.len(), "connections": ready, "rooms": rooms_n,
               "clients_per_room": per_room, "setup_secs": setup_secs, "connect_secs": connect_secs,
               "connections_per_sec": (ready as f64 / connect_secs).round(),
               "idle_node_rss_kb": idle_rss, "node_rss_kb": busy_rss,
               "rss_per_connection_kb": per_conn(&idle_rss, &busy_rss),
               "kernel_slab_per_connection_kb": (kernel_after.0.saturating_sub(kernel_before.0) as f64 / ready.max(1) as f64 * 100.0).round() / 100.0,
               "kernel_tcp_per_connection_kb": (kernel_after.1.saturating_sub(kernel_before.1) as f64 / ready.max(1) as f64 * 100.0).round() / 100.0,
               "handshakes_retried": retried, "offered_msgs_per_sec": rate, "posted": posted,
               "post_statuses": statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(), "deliveries_expected": expected, "deliveries": received,
               "lost": expected.saturating_sub(received), "latency": percentiles(latencies),
               "node_cpu_ms": cpu_ms, "seconds": secs})
    );
    Ok(())
}
