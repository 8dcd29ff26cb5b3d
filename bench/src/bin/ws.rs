//! WebSocket fan-out scenarios against the release server (a child process),
//! latency measured from the sender's `send` to each receiver's frame, through
//! the log. One JSON line per scenario.
//!
//! Run pinned, server on one core and this load generator on the other:
//! `BENCH_SERVER_CPU=0 taskset -c 1 target/release/ws` (what `bench/run` does).
//! `SCENARIOS=room1k,rooms100,light,ramp` picks scenarios; `SECS` (default 10)
//! sets each load's duration; `ROOM1K_RATE` (500) the messages/s of both `room1k`s,
//! `ROOM1K_SENDERS` (10) how many connections send them.
//! `BENCH_DUMP=<path>` writes, per scenario, `<path>.<scenario>`: a line per
//! message, `<send time µs> <first receiver's latency µs> <last receiver's>`,
//! to see when in a run the tail happened (stalls, warm-up).
//!
//! `room1k_2nodes` is `room1k` on the distributed deployment: a tansu broker
//! (sqlite engine) and redis-server, one `emosation serve --log kafka://…
//! --cache redis://…` (ingest, projector, analyzer; the HTTP setup goes
//! there) and two `emosation fanout` nodes, each folding its own replica of
//! the views from the broker. The 1,000 receivers and 10 senders alternate
//! between the two nodes; a message sent on one node reaches the other's
//! clients through the broker. All five processes are pinned to
//! `BENCH_CLUSTER_CPU` (default `BENCH_SERVER_CPU`, i.e. the one core the
//! single server gets; `BENCH_KAFKA_CPU` pins the broker elsewhere);
//! `KAFKA_OPTIONS` adds librdkafka properties to the
//! log URL (e.g. `fetch.wait.max.ms=5`).
//!
//! `c100k` (issue 21: 100,000 sockets over six fan-out nodes on one shared
//! log) is described in `bench/src/c100k.rs`; not in the default set either.
//!
//! `small_rooms` (issue 21: 5,000 rooms of two, 10,000 sockets all sending,
//! the rate stepped up until the ack p99 passes 50 ms) is described in
//! `bench/src/small_rooms.rs`; it is not in the default set (it takes a few
//! minutes). `small_rooms_kafka` is the same against `serve` with its log
//! on tansu and its cache on Redis (the lines say `"server":
//! "emosation-kafka"`; the CPU per message is `serve`'s alone).
//!
//! `gateway` is the docker-compose gateway carrying sockets: Debian's nginx
//! with the deployment's own `deploy/nginx/nginx.conf` (its backends.conf
//! pointing at 127.0.0.1) in front of the same distributed deployment with
//! two fan-out nodes. `GATEWAY_CONNS` (16,000) WebSockets are opened through
//! it, all subscribed to one room, then `GATEWAY_MESSAGES` (20) messages are
//! posted through it at 10/s; it reports how fast sockets opened, how they
//! spread over the nodes, nginx's memory per socket, and every delivery's
//! latency (0 lost expected). The old gateway (`events {}`: one worker, 512
//! connections) carried about 250.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use emosation_bench::raw_ws as raw;
use emosation_bench::{
    Peer, ServerProcess, Ws, cpu_us, create_room, env, join, now_us, percentiles, rss_kb, sent_at, user,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// Connects, retrying for up to 30 s while the node refuses the token (a
/// fan-out node's replica of the views may not have folded the signup yet).
async fn connect(base: &str, token: &str) -> anyhow::Result<Ws> {
    let started = Instant::now();
    loop {
        match emosation_bench::connect_ws(base, token).await {
            Ok(ws) => return Ok(ws),
            Err(e) if started.elapsed() > Duration::from_secs(30) => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A delivery's message, by who sent it: `sender << 32 | n` from the text's
/// ` c<sender> n<n>` (two senders may send within the same microsecond).
fn message_key(sender: u64, n: u64) -> u64 {
    sender << 32 | n
}

/// One receiver's deliveries: (the message's key, its send time in µs, its
/// latency in µs).
type Deliveries = Arc<std::sync::Mutex<Vec<(u64, u64, u32)>>>;

struct Receivers {
    latencies: Vec<Deliveries>,
    received: Arc<AtomicU64>,
    /// Deliveries that came before an earlier message of the same sender.
    out_of_order: Arc<AtomicU64>,
}

/// Opens `n` subscribed receivers per room, spread round robin over the
/// nodes at `bases`, each with room for `expected` deliveries (a vector that
/// grows mid-run copies every receiver's record at once: a stall of the
/// load generator, measured as the server's latency). Raw clients (no JSON
/// parsing, one read takes every frame waiting), so that the generator's
/// one core keeps ahead of a room of 1,000 at a million deliveries a second.
async fn receivers(
    bases: &[String],
    token: &str,
    rooms: &[String],
    per_room: usize,
    expected: usize,
) -> anyhow::Result<Receivers> {
    let received = Arc::new(AtomicU64::new(0));
    let out_of_order = Arc::new(AtomicU64::new(0));
    let mut latencies = Vec::new();
    for room in rooms {
        for i in 0..per_room {
            let addr = bases[i % bases.len()].trim_start_matches("http://");
            let mut s = raw::subscribe(addr, token, room, r#"["chat"]"#).await?;
            let lat = Arc::new(std::sync::Mutex::new(Vec::with_capacity(expected)));
            latencies.push(Arc::clone(&lat));
            let (received, out_of_order) = (Arc::clone(&received), Arc::clone(&out_of_order));
            tokio::spawn(async move {
                let mut last: std::collections::HashMap<u64, u64> = Default::default();
                let mut batch = Vec::new();
                raw::read_stamps(&mut s, 1 << 16, |now, stamps| {
                    for &(t, c, n) in stamps {
                        batch.push((message_key(c, n), t, now.saturating_sub(t) as u32));
                        let seen = last.entry(c).or_insert(0);
                        if n < *seen {
                            out_of_order.fetch_add(1, Ordering::Relaxed);
                        }
                        *seen = n;
                    }
                    received.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    lat.lock().unwrap().append(&mut batch);
                    true
                })
                .await;
            });
        }
    }
    Ok(Receivers {
        latencies,
        received,
        out_of_order,
    })
}

/// `senders` connections (spread round robin over the nodes at `bases`) send
/// `rate` messages/s in total for `secs` over `rooms`, round robin; returns
/// the number acknowledged.
async fn send_load(
    bases: &[String],
    token: &str,
    rooms: &[String],
    senders: usize,
    rate: u64,
    secs: u64,
) -> anyhow::Result<(u64, Vec<u64>)> {
    let acked = Arc::new(AtomicU64::new(0));
    let ack_latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let per_sender = rate as f64 / senders as f64;
    let interval = Duration::from_secs_f64(1.0 / per_sender);
    let total_per_sender = (per_sender * secs as f64) as u64;
    let mut tasks = Vec::new();
    for s in 0..senders {
        let ws = connect(&bases[s % bases.len()], token).await?;
        let (mut tx, mut rx) = ws.split();
        let (acked, ack_latencies) = (Arc::clone(&acked), Arc::clone(&ack_latencies));
        let rooms = rooms.to_vec();
        let acks = tokio::spawn(async move {
            let mut n = 0;
            while n < total_per_sender {
                match tokio::time::timeout(Duration::from_secs(30), rx.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("\"ack\"") => {
                        n += 1;
                        acked.fetch_add(1, Ordering::Relaxed);
                        if let Some(at) = acked_send_time(t.as_str()) {
                            ack_latencies.lock().unwrap().push(now_us().saturating_sub(at));
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
            }
        });
        tasks.push(tokio::spawn(async move {
            let start = Instant::now() + interval.mul_f64(s as f64 / senders as f64);
            for i in 0..total_per_sender {
                tokio::time::sleep_until((start + interval.mul_f64(i as f64)).into()).await;
                let room = &rooms[(i as usize * senders + s) % rooms.len()];
                let now = now_us();
                let f = json!({"type": "send", "room_id": room, "client_msg_id": format!("s{s}-{i}-t{now}"), "text": format!("t={now} c{s} n{i} hello")});
                if tx.send(Message::text(raw::wrap(&f.to_string()).into_owned())).await.is_err() {
                    break;
                }
            }
            let _ = acks.await;
        }));
    }
    for t in tasks {
        t.await?;
    }
    let latencies = std::mem::take(&mut *ack_latencies.lock().unwrap());
    Ok((acked.load(Ordering::Relaxed), latencies))
}

/// The send time carried in an ack's `client_msg_id` (`s<sender>-<n>-t<micros>`).
fn acked_send_time(frame: &str) -> Option<u64> {
    let i = frame.find("\"client_msg_id\":\"")? + 17;
    let id = &frame[i..];
    let id = &id[..id.find('"')?];
    id.rsplit_once("-t")?.1.parse().ok()
}

/// One load: receivers per room, senders, total messages/s, duration.
struct Load {
    per_room: usize,
    senders: usize,
    rate: u64,
    secs: u64,
}

async fn scenario(
    name: &str,
    server: &str,
    bases: &[String],
    (recv_token, send_token): (&str, &str),
    rooms: &[String],
    load: Load,
    processes: &[(String, u32)],
) -> anyhow::Result<()> {
    let Load {
        per_room,
        senders,
        rate,
        secs,
    } = load;
    // Each receiver's share of the messages, with a margin.
    let per_receiver = (rate * secs) as usize / rooms.len() + 1024;
    let r = receivers(bases, recv_token, rooms, per_room, per_receiver).await?;
    let cpu_before: Vec<u64> = processes.iter().map(|(_, pid)| cpu_us(*pid)).collect();
    let generator_before = cpu_us(std::process::id());
    let started = Instant::now();
    let (acked, ack_latencies) = send_load(bases, send_token, rooms, senders, rate, secs).await?;
    // Let deliveries drain.
    let expected = acked * per_room as u64;
    let drain = Instant::now();
    while r.received.load(Ordering::Relaxed) < expected && drain.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // CPU each server process used over the load and the drain.
    let cpu_ms: serde_json::Map<String, serde_json::Value> = processes
        .iter()
        .zip(cpu_before)
        .map(|((name, pid), before)| (name.clone(), json!(cpu_us(*pid).saturating_sub(before) / 1000)))
        .collect();
    let generator_cpu_ms = cpu_us(std::process::id()).saturating_sub(generator_before) / 1000;
    let received = r.received.load(Ordering::Relaxed);
    let stages =
        emosation_bench::server_stages(&reqwest::Client::new(), &bases[0], emosation_bench::SERVER_STAGES).await;
    let mut all = Vec::new();
    // Per message (by its id): its send time, its first receiver's latency,
    // and how much later its last receiver got it (the room's delivery spread).
    let mut by_message: std::collections::HashMap<u64, (u64, u64, u64)> = Default::default();
    for l in &r.latencies {
        for &(key, at, lat) in l.lock().unwrap().iter() {
            let lat = lat as u64;
            all.push(lat);
            let e = by_message.entry(key).or_insert((at, lat, lat));
            e.1 = e.1.min(lat);
            e.2 = e.2.max(lat);
        }
    }
    if let Ok(path) = std::env::var("BENCH_DUMP") {
        let mut v: Vec<_> = by_message.values().copied().collect();
        v.sort_unstable();
        let text: String = v.iter().map(|(at, min, max)| format!("{at} {min} {max}\n")).collect();
        let _ = std::fs::write(format!("{path}.{name}"), text);
    }
    let first: Vec<u64> = by_message.values().map(|(_, min, _)| *min).collect();
    let spread: Vec<u64> = by_message.values().map(|(_, min, max)| max - min).collect();
    println!(
        "{}",
        json!({"bench": "ws", "scenario": name, "server": server, "nodes": bases.len(), "rooms": rooms.len(), "clients_per_room": per_room, "senders": senders,
               "offered_msgs_per_sec": rate, "acked": acked, "deliveries_expected": expected, "deliveries": received,
               "lost": expected.saturating_sub(received), "out_of_sender_order": r.out_of_order.load(Ordering::Relaxed), "deliveries_per_sec": (received as f64 / elapsed).round(),
               "latency": percentiles(all), "first_receiver_latency": percentiles(first), "delivery_spread": percentiles(spread),
               "ack_latency": percentiles(ack_latencies), "seconds": elapsed, "server_cpu_ms": cpu_ms, "generator_cpu_ms": generator_cpu_ms, "server_stages": stages})
    );
    Ok(())
}

/// Opens `n` connections (with the JWT check) as fast as the server accepts
/// them, 256 handshakes at a time, taking the tokens in turn. Returns them
/// and how long it took.
async fn open_raw(addr: &str, tokens: &[&str], n: usize) -> anyhow::Result<(Vec<tokio::net::TcpStream>, f64)> {
    let t = Instant::now();
    let mut conns = Vec::with_capacity(n);
    let mut pending = futures_util::stream::FuturesUnordered::new();
    let mut opened = 0;
    while opened < n || !pending.is_empty() {
        while opened < n && pending.len() < 256 {
            pending.push(raw::connect(addr, tokens[opened % tokens.len()]));
            opened += 1;
        }
        if let Some(r) = pending.next().await {
            conns.push(r?);
        }
    }
    Ok((conns, t.elapsed().as_secs_f64()))
}

/// Subscribes every connection to `room`.
async fn subscribe_raw(conns: &mut [tokio::net::TcpStream], room: &str) -> anyhow::Result<()> {
    let subscribe = json!({"type": "subscribe", "room_id": room}).to_string();
    for s in conns.iter_mut() {
        raw::send_text(s, &subscribe).await?;
    }
    for s in conns.iter_mut() {
        let f = raw::read_frame(s, Vec::new()).await?;
        anyhow::ensure!(String::from_utf8_lossy(&f).contains("subscribed"), "subscribe failed");
    }
    Ok(())
}

/// The server's `emosation_fanout_connections` gauge.
async fn connections_gauge(http: &reqwest::Client, base: &str) -> Option<f64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("emosation_fanout_connections "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// What a scenario runs against: one `serve` process, or (distributed) a
/// `serve` process on Kafka and Redis plus fan-out nodes. Fields drop in
/// order: the processes before the broker.
struct Deployment {
    /// `serve`, or the peer's name.
    core_name: String,
    core: ServerProcess,
    fanouts: Vec<ServerProcess>,
    engines: Option<(emosation_testkit::Tansu, emosation_testkit::RedisServer)>,
}

impl Deployment {
    async fn single(analyzer: &str) -> anyhow::Result<Deployment> {
        let core = ServerProcess::start(&[
            "--sessions-per-user",
            "100000",
            "--ws-queue-frames",
            "4096",
            "--analyzer",
            analyzer,
        ])
        .await?;
        Ok(Deployment {
            core_name: "serve".to_owned(),
            core,
            fanouts: Vec::new(),
            engines: None,
        })
    }

    /// A peer (see [`Peer`]) on the server's core (`BENCH_SERVER_CPU`).
    async fn peer(name: &str, emotions: bool) -> anyhow::Result<Deployment> {
        let cpu = std::env::var("BENCH_SERVER_CPU").ok();
        let core = Peer::from_name(name)?.start(emotions, cpu.as_deref()).await?;
        Ok(Deployment {
            core_name: name.to_owned(),
            core,
            fanouts: Vec::new(),
            engines: None,
        })
    }

    /// tansu + redis-server + `serve` (ingest, projector, analyzer, query
    /// API; HTTP setup goes here) + `fanouts` × `emosation fanout`, every
    /// process pinned to `BENCH_CLUSTER_CPU` (default `BENCH_SERVER_CPU`),
    /// the broker to `BENCH_KAFKA_CPU` if set.
    async fn distributed(analyzer: &str, fanouts: usize, extra: &[&str]) -> anyhow::Result<Deployment> {
        let cpu = std::env::var("BENCH_CLUSTER_CPU")
            .or_else(|_| std::env::var("BENCH_SERVER_CPU"))
            .ok();
        let cpu = cpu.as_deref();
        let kafka_cpu = std::env::var("BENCH_KAFKA_CPU").ok();
        let (broker, url) = emosation_bench::tansu(kafka_cpu.as_deref().or(cpu), &env("KAFKA_OPTIONS", String::new()))?;
        let redis = emosation_testkit::RedisServer::start();
        if let (Some(cpu), Some(pid)) = (cpu, redis.pid()) {
            emosation_bench::pin(pid, cpu)?;
        }
        let common = [
            "--log",
            url.as_str(),
            "--cache",
            redis.url(),
            "--sessions-per-user",
            "100000",
            "--ws-queue-frames",
            "4096",
        ];
        let mut common = common.to_vec();
        common.extend(extra);
        let mut args = common.clone();
        args.extend(["--analyzer", analyzer]);
        let core = ServerProcess::spawn("serve", &args, cpu).await?;
        let mut nodes = Vec::new();
        for _ in 0..fanouts {
            nodes.push(ServerProcess::spawn("fanout", &common, cpu).await?);
        }
        Ok(Deployment {
            core_name: "serve".to_owned(),
            core,
            fanouts: nodes,
            engines: Some((broker, redis)),
        })
    }

    /// (name, pid) of every server process, for CPU accounting.
    fn pids(&self) -> Vec<(String, u32)> {
        let mut pids = vec![(self.core_name.clone(), self.core.child.id().unwrap_or(0))];
        for (i, n) in self.fanouts.iter().enumerate() {
            pids.push((format!("fanout{i}"), n.child.id().unwrap_or(0)));
        }
        if let Some((broker, redis)) = &self.engines {
            pids.push(("tansu".to_owned(), broker.pid().unwrap_or(0)));
            pids.push(("redis".to_owned(), redis.pid().unwrap_or(0)));
        }
        pids
    }

    /// Where WebSocket clients go: the fan-out nodes, else the one server.
    fn ws_bases(&self) -> Vec<String> {
        if self.fanouts.is_empty() {
            vec![self.core.base.clone()]
        } else {
            self.fanouts.iter().map(|n| n.base.clone()).collect()
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    if std::env::var_os("C100K_CHILD").is_some() {
        return emosation_bench::c100k::child().await;
    }
    let scenarios: String = env("SCENARIOS", "light,rooms100,room1k,ramp".to_owned());
    let secs: u64 = env("SECS", 10);
    // `SERVERS=emosation,broadcaster,socketio` runs each scenario on each, one
    // after the other on the same core: emosation and the peers it is
    // compared with (see `Peer`).
    let servers: String = env("SERVERS", "emosation".to_owned());
    for name in scenarios.split(',') {
        for server in servers.split(',') {
            if server != "emosation" && !PEER_SCENARIOS.contains(&name) {
                println!(
                    "{}",
                    json!({"bench": "ws", "scenario": name, "server": server, "skipped": "runs on emosation only"})
                );
                continue;
            }
            raw::use_socket_io(server == "socketio");
            run(name, server, secs).await?;
        }
    }
    Ok(())
}

/// The scenarios the peers run too (the others need emosation's own
/// deployment: fan-out nodes, a broker, a gateway).
const PEER_SCENARIOS: [&str; 5] = ["light", "rooms100", "room1k", "ramp", "small_rooms"];

/// Runs one scenario on one server (`emosation` or a peer's name).
async fn run(name: &str, server_name: &str, secs: u64) -> anyhow::Result<()> {
    {
        // Write back now what earlier work (a build, another benchmark) left
        // dirty in the page cache: the kernel writes it back 30 s after it
        // was written, and a write-back of hundreds of megabytes in the
        // middle of a scenario stalls the server's log fsyncs behind it
        // (seen: 314 MB in 0.4 s, a 161 ms p99 in rooms100).
        let _ = std::process::Command::new("sync").status();
        // BENCH_ANALYZER=false runs the server without the in-process analyzer
        // (as when the analyzer runs as its own service).
        let analyzer: String = env("BENCH_ANALYZER", "true".to_owned());
        let deployment = match (server_name, name) {
            ("emosation", _) => match name {
                "room1k_2nodes" => Deployment::distributed(&analyzer, 2, &[]).await?,
                // `small_rooms` with the log on tansu and the cache on Redis (one
                // `serve`, no separate fan-out nodes), all on the server's core.
                "small_rooms_kafka" => Deployment::distributed(&analyzer, 0, &[]).await?,
                // Raw clients answer no pings; a node holds ~16,700 sockets,
                // more than ¾ of the descriptor limit (the default maximum).
                "c100k" => {
                    let nodes = env("C100K_NODES", 6);
                    Deployment::distributed(
                        &analyzer,
                        nodes,
                        &["--ws-idle-timeout-secs", "600", "--max-connections", "19500"],
                    )
                    .await?
                }
                // Raw clients answer no pings: a long idle timeout keeps them.
                "gateway" => Deployment::distributed(&analyzer, 2, &["--ws-idle-timeout-secs", "600"]).await?,
                _ => Deployment::single(&analyzer).await?,
            },
            (peer, _) => Deployment::peer(peer, analyzer == "true").await?,
        };
        let server = &deployment.core;
        let base = server.base.clone();
        if name == "c100k" {
            let nodes: Vec<(String, u32)> = deployment
                .fanouts
                .iter()
                .map(|n| (n.base.clone(), n.child.id().unwrap_or(0)))
                .collect();
            emosation_bench::c100k::run(&base, &nodes).await?;
            return Ok(());
        }
        if name == "small_rooms" || name == "small_rooms_kafka" {
            let label = if name == "small_rooms" {
                server_name
            } else {
                "emosation-kafka"
            };
            emosation_bench::small_rooms::run(label, &base, server.child.id().unwrap_or(0)).await?;
            return Ok(());
        }
        let bases = deployment.ws_bases();
        let http = reqwest::Client::new();
        let (_, rt) = user(&http, &base, "receiver").await?;
        let (_, st) = user(&http, &base, "sender").await?;
        let room_count = if name == "rooms100" { 100 } else { 1 };
        let mut rooms = Vec::new();
        for i in 0..room_count {
            let room = create_room(&http, &base, &st, &format!("r{i}")).await?;
            join(&http, &base, &rt, &room).await?;
            rooms.push(room);
        }
        match name {
            "light" => {
                let load = Load {
                    per_room: 100,
                    senders: 1,
                    rate: 25,
                    secs,
                };
                scenario(name, server_name, &bases, (&rt, &st), &rooms, load, &deployment.pids()).await?
            }
            "rooms100" => {
                let load = Load {
                    per_room: 10,
                    senders: 10,
                    rate: 2000,
                    secs,
                };
                scenario(name, server_name, &bases, (&rt, &st), &rooms, load, &deployment.pids()).await?
            }
            "room1k" | "room1k_2nodes" => {
                let load = Load {
                    per_room: 1000,
                    senders: env("ROOM1K_SENDERS", 10),
                    rate: env("ROOM1K_RATE", 500),
                    secs,
                };
                scenario(name, server_name, &bases, (&rt, &st), &rooms, load, &deployment.pids()).await?
            }
            "ramp" => {
                let n: usize = env("RAMP_CONNS", 10_000);
                let warmup: usize = env("RAMP_WARMUP", 1_000);
                let pid = server.child.id().unwrap_or(0);
                let addr = base.trim_start_matches("http://").to_owned();
                let start_rss = rss_kb(pid);
                // Warm-up connections first: the RSS measured before the
                // timed ones then already holds what the allocator and the
                // runtime keep once connections exist (arenas, timer wheel,
                // tables), and memory freed during set-up that they would
                // otherwise reuse unseen. Per connection is the marginal cost.
                let mut conns = open_raw(&addr, &[&rt], warmup).await?.0;
                subscribe_raw(&mut conns, &rooms[0]).await?;
                tokio::time::sleep(Duration::from_secs(2)).await;
                let before = rss_kb(pid);
                let cpu_before = cpu_us(pid);
                let (mut more, connect_secs) = open_raw(&addr, &[&rt], n).await?;
                let server_cpu_us = cpu_us(pid).saturating_sub(cpu_before);
                subscribe_raw(&mut more, &rooms[0]).await?;
                conns.extend(more);
                tokio::time::sleep(Duration::from_secs(2)).await;
                let after = rss_kb(pid);
                // Every client leaves at once (a load balancer draining, a
                // network blip): how long until the server has let go of
                // every subscription of the one room.
                let t = Instant::now();
                drop(std::mem::take(&mut conns));
                let mut close_secs = None;
                // (A peer has no gauge: not measured there.)
                while server_name == "emosation" && t.elapsed() < Duration::from_secs(60) {
                    if connections_gauge(&http, &base).await == Some(0.0) {
                        close_secs = Some(t.elapsed().as_secs_f64());
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                println!(
                    "{}",
                    json!({"bench": "ws", "scenario": "ramp", "server": server_name, "connections": n, "warmup_connections": warmup, "connect_secs": connect_secs,
                           "connections_per_sec": (n as f64 / connect_secs).round(), "rss_start_kb": start_rss, "rss_before_kb": before,
                           "rss_after_kb": after, "rss_per_connection_kb": ((after.saturating_sub(before)) as f64 / n as f64 * 10.0).round() / 10.0,
                           "server_cpu_us_per_connection": server_cpu_us / n as u64,
                           "server_capacity_connections_per_sec": (n as f64 / (server_cpu_us.max(1) as f64 / 1e6)).round(),
                           "all_closed_secs": close_secs})
                );
            }
            "gateway" => gateway(&deployment, &http, (&rt, &st), &rooms[0]).await?,
            other => anyhow::bail!("unknown scenario {other}"),
        }
        drop(deployment);
    }
    Ok(())
}

/// Debian's nginx running the deployment's own `deploy/nginx/nginx.conf`,
/// with a backends.conf that points its variables at 127.0.0.1 ports
/// instead of Docker's names (and a port of its own instead of 8080).
struct Gateway {
    child: std::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Gateway {
    fn start(api: &str, fanouts: &[String]) -> anyhow::Result<Gateway> {
        let dir = tempfile::tempdir()?;
        let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx/nginx.conf");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let conf = std::fs::read_to_string(&deploy)?;
        anyhow::ensure!(
            conf.contains("listen 8080 "),
            "deploy/nginx/nginx.conf listens elsewhere"
        );
        std::fs::write(
            dir.path().join("nginx.conf"),
            conf.replace("listen 8080 ", &format!("listen 127.0.0.1:{port} ")),
        )?;
        let host = |base: &str| base.trim_start_matches("http://").to_owned();
        let mut split = String::new();
        for (i, node) in fanouts.iter().enumerate() {
            if i + 1 == fanouts.len() {
                split.push_str(&format!("  * {};\n", host(node)));
            } else {
                split.push_str(&format!("  {:.2}% {};\n", 100.0 / fanouts.len() as f64, host(node)));
            }
        }
        std::fs::write(
            dir.path().join("backends.conf"),
            format!(
                "map $request_method $ingest_backend {{ default {api}; }}\n\
                 map $request_method $query_api_backend {{ default {api}; }}\n\
                 split_clients \"${{remote_addr}}${{remote_port}}${{msec}}\" $fanout_backend {{\n{split}}}\n",
                api = host(api)
            ),
        )?;
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .ok_or_else(|| anyhow::anyhow!("nginx not found (apt-get install nginx)"))?;
        let d = dir.path().display();
        let child = std::process::Command::new(nginx)
            .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf"), "-g"])
            .arg(format!("daemon off; pid {d}/nginx.pid; error_log {d}/error.log warn;"))
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let addr = format!("127.0.0.1:{port}");
        let t = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(10), "nginx did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Gateway { child, addr, _dir: dir })
    }

    /// The worker processes' resident memory, KB.
    fn workers_rss_kb(&self) -> (usize, u64) {
        let out = std::process::Command::new("pgrep")
            .args(["-P", &self.child.id().to_string()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let pids: Vec<u32> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
        (pids.len(), pids.iter().map(|p| rss_kb(*p)).sum())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads server frames from a raw socket until `want` message frames came or
/// `deadline`: the latency of each (from the `t=` send time in its text).
async fn count_messages(mut s: tokio::net::TcpStream, want: usize, deadline: Instant) -> Vec<u64> {
    use tokio::io::AsyncReadExt;
    let mut latencies = Vec::with_capacity(want);
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    while latencies.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        buf.extend_from_slice(&chunk[..n]);
        // Whole frames off the front (server frames are unmasked).
        loop {
            if buf.len() < 2 {
                break;
            }
            let (len, head) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap_or([0; 8])) as usize, 10),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if buf.len() < head + len {
                break;
            }
            let payload = String::from_utf8_lossy(&buf[head..head + len]).into_owned();
            if payload.contains("\"type\":\"message\"")
                && let Some(sent) = sent_at(&payload)
            {
                latencies.push(now_us().saturating_sub(sent));
            }
            buf.drain(..head + len);
        }
    }
    latencies
}

async fn gateway(
    deployment: &Deployment,
    http: &reqwest::Client,
    (receiver, sender): (&str, &str),
    room: &str,
) -> anyhow::Result<()> {
    let n: usize = env("GATEWAY_CONNS", 16_000);
    let messages: usize = env("GATEWAY_MESSAGES", 20);
    // Sockets of many people, as in a deployment (Redis presence admits a
    // session in time linear in the user's sessions: one user with 16,000
    // would measure that instead of the gateway).
    let users: usize = env("GATEWAY_USERS", 400);
    let base = deployment.core.base.clone();
    let mut tokens = vec![receiver.to_owned()];
    let mut pending = futures_util::stream::FuturesUnordered::new();
    let mut made = 1;
    while made < users || !pending.is_empty() {
        while made < users && pending.len() < 16 {
            let (http, base, name) = (http.clone(), base.clone(), format!("gw{made}"));
            pending.push(async move {
                let (_, token) = user(&http, &base, &name).await?;
                join(&http, &base, &token, room).await?;
                anyhow::Ok(token)
            });
            made += 1;
        }
        if let Some(token) = pending.next().await {
            tokens.push(token?);
        }
    }
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let nodes = deployment.ws_bases();
    let gw = Gateway::start(&deployment.core.base, &nodes)?;
    let gw_base = format!("http://{}", gw.addr);
    // Every node knows every receiver and membership before sockets open.
    let t = Instant::now();
    loop {
        match raw::connect(&gw.addr, tokens[tokens.len() - 1]).await {
            Ok(mut s) => {
                if subscribe_raw(std::slice::from_mut(&mut s), room).await.is_ok() {
                    break;
                }
            }
            Err(e) if t.elapsed() > Duration::from_secs(30) => return Err(e),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Both nodes' replicas of the views fold every partition by now.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The same sockets and messages straight to the nodes, then through
    // the gateway: what nginx adds, measured in the same run.
    let mut phases = serde_json::Map::new();
    for phase in ["direct", "gateway"] {
        let (workers, rss_before) = gw.workers_rss_kb();
        let (mut conns, connect_secs) = if phase == "gateway" {
            open_raw(&gw.addr, &tokens, n).await?
        } else {
            let t = Instant::now();
            let mut all = Vec::with_capacity(n);
            for (i, node) in nodes.iter().enumerate() {
                let share = n / nodes.len() + usize::from(i < n % nodes.len());
                all.extend(open_raw(node.trim_start_matches("http://"), &tokens, share).await?.0);
            }
            (all, t.elapsed().as_secs_f64())
        };
        subscribe_raw(&mut conns, room).await?;
        let (_, rss_after) = gw.workers_rss_kb();
        let mut per_node = Vec::new();
        for node in &nodes {
            per_node.push(connections_gauge(http, node).await.unwrap_or(0.0) as u64);
        }
        let deadline = Instant::now() + Duration::from_secs(messages as u64 / 10 + 30);
        let readers: Vec<_> = conns
            .into_iter()
            .map(|s| tokio::spawn(count_messages(s, messages, deadline)))
            .collect();
        // Posted through the gateway (a POST goes to ingest) in both phases.
        let mut acked = 0;
        for i in 0..messages {
            let r = http
                .post(format!("{gw_base}/v1/rooms/{room}/messages"))
                .bearer_auth(sender)
                .json(&json!({"client_msg_id": format!("{phase}{i}"), "text": format!("t={}", now_us())}))
                .send()
                .await?;
            if r.status().as_u16() == 202 {
                acked += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut latencies = Vec::with_capacity(n * messages);
        for r in readers {
            latencies.extend(r.await?);
        }
        let deliveries = latencies.len();
        let expected = n * acked;
        let mut figures = json!({"connect_secs": connect_secs, "connections_per_sec": (n as f64 / connect_secs).round(),
               "connections_per_node": per_node, "messages_acked": acked, "deliveries_expected": expected,
               "deliveries": deliveries, "lost": expected.saturating_sub(deliveries), "latency": percentiles(latencies)});
        if phase == "gateway" {
            figures["nginx_workers"] = json!(workers);
            figures["nginx_rss_per_connection_kb"] =
                json!(((rss_after.saturating_sub(rss_before)) as f64 / n as f64 * 10.0).round() / 10.0);
        }
        phases.insert(phase.to_owned(), figures);
        // Let every node see the sockets go before the next phase.
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            let mut open = 0.0;
            for node in &nodes {
                open += connections_gauge(http, node).await.unwrap_or(0.0);
            }
            if open == 0.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!(
        "{}",
        json!({"bench": "ws", "scenario": "gateway", "connections": n, "users": tokens.len(), "messages": messages,
               "direct": phases["direct"], "gateway": phases["gateway"]})
    );
    Ok(())
}
