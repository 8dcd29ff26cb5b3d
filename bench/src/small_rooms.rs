//! `small_rooms` (issue 21): most chat traffic is many small rooms and
//! direct conversations, where every message costs a whole trip through
//! ingest, the log, the fold, the views, the fan-out and the analyzer.
//!
//! `SMALL_ROOMS` (5,000) rooms of two members; each member holds one socket
//! per room, subscribed to `chat` and `emotion` (10,000 sockets; the members
//! are `SMALL_USERS` (200) people, each in 50 rooms, so that set-up does not
//! hash 10,000 passwords). Every socket sends into its room at an equal
//! share of the offered rate, with at most `SMALL_WINDOW` (16) sends
//! awaiting their `ack` (a send due while the window is full waits: the
//! generator offers what the server takes, never a queue without end). The
//! rate steps through `SMALL_RATES` (messages/s), `SMALL_STEP_SECS` (20)
//! (after the last step it waits up to `SMALL_DRAIN_SECS`, 30, for what is
//! still on its way)
//! each, and stops after the first step whose ack p99 passes `SMALL_P99_MS`
//! (50).
//!
//! Per step it reports messages acked per second, deliveries (both members
//! get every message) and emotion events per second, ack and delivery
//! p50/p99, and the server's CPU per message; at the end, lost deliveries
//! and emotions (expected: two of each per acked message) and deliveries
//! out of their sender's order (each text carries its socket and sequence).
//!
//! The generator is a raw client (fixed frames, no JSON parsing, no
//! per-frame allocation beyond the read buffer) so that its one core keeps
//! ahead of the server's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

use crate::{cpu_us, env, login, now_us, percentiles, raw_ws, signup};

/// What the sockets record, per step.
#[derive(Default)]
struct StepStats {
    ack_us: Vec<u64>,
    delivery_us: Vec<u64>,
    acks: u64,
    deliveries: u64,
    emotions: u64,
    /// Sends that waited for the window (16 in flight) past their due time.
    held: u64,
}

/// Shared by every socket task.
struct Shared {
    /// Microseconds between one socket's sends (0: not sending).
    interval_us: AtomicU64,
    /// The step sends and receipts are counted in.
    step: AtomicUsize,
    stats: Vec<Mutex<StepStats>>,
    /// Totals over the run.
    acked: AtomicU64,
    delivered: AtomicU64,
    emotions: AtomicU64,
    out_of_order: AtomicU64,
    errors: AtomicU64,
    stop_sending: AtomicBool,
    window: usize,
}

/// One socket's sends awaiting their ack (sequence → send time, µs), and
/// the wake-up of a sender waiting for the window.
#[derive(Default)]
struct InFlight {
    sent: Mutex<HashMap<u64, u64>>,
    acked: tokio::sync::Notify,
}

/// One socket: its room, its index (which is in its texts), its sends awaiting acks.
struct Sock {
    index: usize,
    room: String,
}

/// Runs the scenario against `server` (emosation or a peer's name) at
/// `base` (process `pid`); prints one JSON line per step and a summary.
pub async fn run(server: &str, base: &str, pid: u32) -> anyhow::Result<()> {
    let rooms_n: usize = env("SMALL_ROOMS", 5_000);
    let users_n: usize = env("SMALL_USERS", 200);
    let step_secs: u64 = env("SMALL_STEP_SECS", 20);
    let p99_limit_ms: f64 = env("SMALL_P99_MS", 50.0);
    let window: usize = env("SMALL_WINDOW", 16);
    let drain_secs: u64 = env("SMALL_DRAIN_SECS", 30);
    let rates: Vec<u64> = env(
        "SMALL_RATES",
        "10000,20000,30000,40000,50000,60000,70000,80000".to_owned(),
    )
    .split(',')
    .filter_map(|r| r.trim().parse().ok())
    .collect();
    let http = Client::new();
    let addr = base.trim_start_matches("http://").to_owned();

    // People: signed up a few at a time (the server bounds its hashing queue).
    let t = Instant::now();
    let mut tokens = Vec::with_capacity(users_n);
    for chunk in (0..users_n).collect::<Vec<_>>().chunks(8) {
        let mut pending = Vec::new();
        for &u in chunk {
            let (http, base) = (http.clone(), base.to_owned());
            pending.push(tokio::spawn(async move {
                let name = format!("small{u}");
                signup(&http, &base, &name).await?;
                let l = login(&http, &base, &name).await?;
                anyhow::Ok(l["access_token"].as_str().unwrap_or_default().to_owned())
            }));
        }
        for p in pending {
            tokens.push(p.await??);
        }
    }
    // Rooms: room i is owned by person i % users and joined by another.
    let mut members = Vec::with_capacity(rooms_n);
    for i in 0..rooms_n {
        let a = i % users_n;
        let b = (a + 1 + i / users_n) % users_n;
        let b = if b == a { (b + 1) % users_n } else { b };
        members.push((a, b));
    }
    let room_ids = Arc::new(Mutex::new(vec![String::new(); rooms_n]));
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..32 {
        let (http, base, tokens, members, room_ids, next) = (
            http.clone(),
            base.to_owned(),
            tokens.clone(),
            members.clone(),
            Arc::clone(&room_ids),
            Arc::clone(&next),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= members.len() {
                    return anyhow::Ok(());
                }
                let (a, b) = members[i];
                let create = || {
                    http.post(format!("{base}/v1/rooms"))
                        .bearer_auth(&tokens[a])
                        .json(&json!({"name": format!("pair{i}"), "capacity": 2}))
                };
                let r: serde_json::Value = with_retries(create).await?.error_for_status()?.json().await?;
                let room = r["room_id"].as_str().unwrap_or_default().to_owned();
                let join = || {
                    http.post(format!("{base}/v1/rooms/{room}/join"))
                        .bearer_auth(&tokens[b])
                };
                let joined = with_retries(join).await?;
                // 409: a join answered 503 had been decided after all.
                if joined.status().as_u16() != 409 {
                    joined.error_for_status()?;
                }
                room_ids.lock().unwrap()[i] = room;
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let room_ids = std::mem::take(&mut *room_ids.lock().unwrap());
    let setup_secs = t.elapsed().as_secs_f64();

    // Sockets: two per room, subscribed to both streams.
    let shared = Arc::new(Shared {
        interval_us: AtomicU64::new(0),
        step: AtomicUsize::new(0),
        stats: (0..rates.len() + 1).map(|_| Mutex::new(StepStats::default())).collect(),
        acked: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        emotions: AtomicU64::new(0),
        out_of_order: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop_sending: AtomicBool::new(false),
        window,
    });
    let t = Instant::now();
    let mut socks = Vec::with_capacity(rooms_n * 2);
    let mut pending = futures_util::stream::FuturesUnordered::new();
    let mut opened = 0;
    use futures_util::StreamExt;
    while opened < rooms_n * 2 || !pending.is_empty() {
        while opened < rooms_n * 2 && pending.len() < 256 {
            let (room, member) = (opened / 2, opened % 2);
            let user = if member == 0 { members[room].0 } else { members[room].1 };
            let (addr, token, room_id, index) = (addr.clone(), tokens[user].clone(), room_ids[room].clone(), opened);
            pending.push(async move {
                let s = raw_ws::subscribe(&addr, &token, &room_id, r#"["chat","emotion"]"#).await?;
                anyhow::Ok((s, Sock { index, room: room_id }))
            });
            opened += 1;
        }
        if let Some(r) = pending.next().await {
            socks.push(r?);
        }
    }
    let connect_secs = t.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"bench": "ws", "scenario": "small_rooms", "server": server, "setup": true, "rooms": rooms_n, "people": users_n,
               "sockets": socks.len(), "setup_secs": setup_secs, "connect_secs": connect_secs, "window": window})
    );

    let sockets = socks.len() as u64;
    let mut tasks = Vec::with_capacity(socks.len());
    for (stream, sock) in socks {
        tasks.push(tokio::spawn(drive(stream, sock, Arc::clone(&shared))));
    }

    let mut held_rate = None;
    let mut steps = Vec::new();
    for (i, &rate) in rates.iter().enumerate() {
        shared.step.store(i, Ordering::Relaxed);
        // Each socket sends every `interval` µs: sockets × 1e6 / interval = rate.
        shared
            .interval_us
            .store((sockets * 1_000_000 / rate.max(1)).max(1), Ordering::Relaxed);
        let hist0 = crate::server_histograms(&http, base, crate::SERVER_STAGES).await;
        let cpu0 = cpu_us(pid);
        let gen0 = cpu_us(std::process::id());
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(step_secs)).await;
        let secs = t0.elapsed().as_secs_f64();
        let cpu = cpu_us(pid).saturating_sub(cpu0);
        let generator = cpu_us(std::process::id()).saturating_sub(gen0);
        let stages = crate::stages_between(
            &hist0,
            &crate::server_histograms(&http, base, crate::SERVER_STAGES).await,
        );
        let s = std::mem::take(&mut *shared.stats[i].lock().unwrap());
        let ack = percentiles(s.ack_us);
        let delivery = percentiles(s.delivery_us);
        let p99_ms = ack["p99_us"].as_f64().unwrap_or(f64::MAX) / 1000.0;
        let acked_per_sec = (s.acks as f64 / secs).round();
        let line = json!({"bench": "ws", "scenario": "small_rooms", "server": server, "step": i, "offered_msgs_per_sec": rate,
            "acked_per_sec": acked_per_sec, "deliveries_per_sec": (s.deliveries as f64 / secs).round(),
            "emotions_per_sec": (s.emotions as f64 / secs).round(), "ack_latency": ack, "delivery_latency": delivery,
            "held_by_window": s.held, "server_cpu_ms": cpu / 1000,
            "server_cpu_us_per_msg": ((cpu as f64 / s.acks.max(1) as f64) * 10.0).round() / 10.0,
            "server_core_busy_pct": (cpu as f64 / (secs * 1e6) * 1000.0).round() / 10.0,
            "generator_core_busy_pct": (generator as f64 / (secs * 1e6) * 1000.0).round() / 10.0,
            "server_stages": stages});
        println!("{line}");
        steps.push(line);
        if p99_ms > p99_limit_ms {
            break;
        }
        held_rate = Some(acked_per_sec);
    }
    // Drain: stop sending, let every ack, delivery and emotion arrive.
    shared.stop_sending.store(true, Ordering::Relaxed);
    shared.step.store(rates.len(), Ordering::Relaxed);
    let drain = Instant::now();
    let mut last = (0, 0, 0);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = (
            shared.acked.load(Ordering::Relaxed),
            shared.delivered.load(Ordering::Relaxed),
            shared.emotions.load(Ordering::Relaxed),
        );
        let done = now.1 >= 2 * now.0 && now.2 >= 2 * now.0;
        if done && now == last || drain.elapsed() > Duration::from_secs(drain_secs) {
            break;
        }
        last = now;
    }
    for t in &tasks {
        t.abort();
    }
    let (acked, delivered, emotions) = (
        shared.acked.load(Ordering::Relaxed),
        shared.delivered.load(Ordering::Relaxed),
        shared.emotions.load(Ordering::Relaxed),
    );
    println!(
        "{}",
        json!({"bench": "ws", "scenario": "small_rooms", "server": server, "summary": true,
               "highest_rate_held_msgs_per_sec": held_rate, "p99_limit_ms": p99_limit_ms,
               "acked": acked, "deliveries": delivered, "lost_deliveries": (2 * acked).saturating_sub(delivered),
               "emotions": emotions, "lost_emotions": (2 * acked).saturating_sub(emotions),
               "out_of_sender_order": shared.out_of_order.load(Ordering::Relaxed),
               "errors": shared.errors.load(Ordering::Relaxed), "steps": steps.len(),
               "drained_secs": drain.elapsed().as_secs_f64()})
    );
    Ok(())
}

/// Sends the request `make` builds; a `503` (the server's decision did not
/// come in time: on a slow broker) or a `429` is asked again after a pause,
/// as a client would, up to 20 times. A create answered `503` may have been
/// decided meanwhile: the set-up then has a spare room, which is harmless.
async fn with_retries(make: impl Fn() -> reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
    let mut tries = 0;
    loop {
        let r = make().send().await?;
        let status = r.status().as_u16();
        if (status == 503 || status == 429) && tries < 20 {
            tries += 1;
            tokio::time::sleep(Duration::from_millis(250 * tries)).await;
            continue;
        }
        return Ok(r);
    }
}

/// One socket: sends on its schedule within the window, reads acks,
/// messages and emotions.
async fn drive(stream: TcpStream, sock: Sock, shared: Arc<Shared>) {
    let (mut rd, mut wr) = stream.into_split();
    let in_flight: Arc<InFlight> = Arc::default();
    // Aborted with this task too (when the run ends), so that the socket
    // closes: the next server of the run needs the descriptors.
    let writer = {
        let (shared, in_flight) = (Arc::clone(&shared), Arc::clone(&in_flight));
        let room = sock.room.clone();
        let index = sock.index;
        AbortOnDrop(tokio::spawn(async move {
            send_loop(&mut wr, index, &room, &shared, &in_flight).await
        }))
    };
    // The last sequence seen from each sender (this socket and the other).
    let mut last_seq: HashMap<u64, u64> = HashMap::with_capacity(2);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 16384];
    loop {
        let n = match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        let now = now_us();
        let step = shared.step.load(Ordering::Relaxed);
        let mut s = StepStats::default();
        while let Some((payload, used)) = raw_ws::frame(&buf[at..]) {
            at += used;
            let kind = payload
                .windows(8)
                .position(|w| w == b"\"type\":\"")
                .and_then(|i| payload.get(i + 8..i + 12))
                .unwrap_or_default();
            match kind {
                b"ack\"" => {
                    if let Some(seq) = raw_ws::number_after(payload, b"\"client_msg_id\":\"q")
                        && let Some(sent) = in_flight.sent.lock().unwrap().remove(&seq)
                    {
                        s.ack_us.push(now.saturating_sub(sent));
                        in_flight.acked.notify_one();
                    }
                    s.acks += 1;
                }
                b"mess" => {
                    if let Some((t, c, q)) = raw_ws::stamp(payload) {
                        s.delivery_us.push(now.saturating_sub(t));
                        let last = last_seq.entry(c).or_insert(0);
                        if q < *last {
                            shared.out_of_order.fetch_add(1, Ordering::Relaxed);
                        }
                        *last = q;
                    }
                    s.deliveries += 1;
                }
                b"emot" => s.emotions += 1,
                b"erro" => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        buf.drain(..at);
        if s.acks + s.deliveries + s.emotions > 0 {
            shared.acked.fetch_add(s.acks, Ordering::Relaxed);
            shared.delivered.fetch_add(s.deliveries, Ordering::Relaxed);
            shared.emotions.fetch_add(s.emotions, Ordering::Relaxed);
            if let Some(st) = shared.stats.get(step) {
                let mut st = st.lock().unwrap();
                st.acks += s.acks;
                st.deliveries += s.deliveries;
                st.emotions += s.emotions;
                st.ack_us.extend_from_slice(&s.ack_us);
                st.delivery_us.extend_from_slice(&s.delivery_us);
            }
        }
    }
    drop(writer);
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends `send` frames every `interval_us` (re-read each time), waiting
/// while `window` sends await their ack.
async fn send_loop(wr: &mut OwnedWriteHalf, index: usize, room: &str, shared: &Shared, in_flight: &InFlight) {
    // Spread the sockets' phases over one interval.
    let mut seq: u64 = 1;
    let mut due: Option<Instant> = None;
    // The interval `due` was scheduled with: a new step's rate re-phases
    // the socket at once, instead of keeping the old schedule until its
    // next send (which offered ~12% less than each later step's rate).
    let mut scheduled_with = 0;
    loop {
        let interval = shared.interval_us.load(Ordering::Relaxed);
        if interval == 0 || shared.stop_sending.load(Ordering::Relaxed) {
            due = None;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        if interval != scheduled_with {
            scheduled_with = interval;
            due = None;
        }
        let at = *due.get_or_insert_with(|| {
            Instant::now() + Duration::from_micros((index as u64).wrapping_mul(7919) % interval)
        });
        // Asleep in slices of at most 500 ms, so that a new step's rate is
        // seen within them, not one old interval later.
        if at > Instant::now() {
            let slice = Instant::now() + Duration::from_millis(500);
            tokio::time::sleep_until(at.min(slice).into()).await;
            if at > Instant::now() {
                continue;
            }
        }
        if in_flight.sent.lock().unwrap().len() >= shared.window {
            // The window is full: wait for an ack, then send at once.
            let step = shared.step.load(Ordering::Relaxed);
            if let Some(st) = shared.stats.get(step) {
                st.lock().unwrap().held += 1;
            }
            while in_flight.sent.lock().unwrap().len() >= shared.window && !shared.stop_sending.load(Ordering::Relaxed)
            {
                // Bounded, so that the end of the run is seen without an ack.
                let _ = tokio::time::timeout(Duration::from_millis(100), in_flight.acked.notified()).await;
            }
        }
        let now = now_us();
        let text = format!(
            "{{\"type\":\"send\",\"room_id\":\"{room}\",\"client_msg_id\":\"q{seq}\",\"text\":\"t={now} c{index} n{seq} hello there\"}}"
        );
        in_flight.sent.lock().unwrap().insert(seq, now);
        if wr
            .write_all(&raw_ws::masked(raw_ws::wrap(&text).as_bytes()))
            .await
            .is_err()
        {
            return;
        }
        seq += 1;
        due = Some(at + Duration::from_micros(interval));
        // Behind schedule by more than a second (the window held): start
        // afresh rather than send a burst.
        if due.is_some_and(|d| d + Duration::from_secs(1) < Instant::now()) {
            due = Some(Instant::now());
        }
    }
}
