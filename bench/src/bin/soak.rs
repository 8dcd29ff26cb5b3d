//! Soak: a realistic mixed load held for `SOAK_SECS` (default 30 minutes)
//! against the release server as users run it (`serve`, embedded default,
//! analyzer on). Every `SOAK_REPORT_SECS` (60) it prints one JSON line: the
//! server's resident memory, open descriptors, threads and CPU in the
//! interval, the p50/p99 of what clients did, and counts; at the end a
//! summary says whether memory and descriptors stayed flat after warm-up.
//!
//! The load comes from `SOAK_USERS` (200) users in `SOAK_ROOMS` (20) rooms,
//! each user in one room:
//! - every user is a WebSocket client living as the web client does: it
//!   reads the room list and its room's newest history page, connects,
//!   subscribes to its room's `chat` and `emotion` streams (resuming with
//!   `since` = the last cursor it received), sends its share of `SOAK_RATE`
//!   (200) msg/s (a `typing` frame before one send in three), reads every
//!   delivery, renews its token every `SOAK_REFRESH_SECS` (300: a refresh,
//!   whose refresh token must have rotated, then an in-band `auth` frame),
//!   and after `SOAK_ONLINE_MIN_SECS`–`SOAK_ONLINE_MAX_SECS` (30–90) leaves —
//!   waiting up to 5 s for its acks, then closing politely or dropping the
//!   connection, in turn — and comes back after up to `SOAK_OFFLINE_MAX_SECS` (5);
//! - history reads, `GET /v1/rooms/{id}/messages?limit=50` as a random
//!   member, `SOAK_HISTORY_RATE` (20) a second;
//! - logins as random users, `SOAK_LOGIN_RATE` (2) a second: each session
//!   refreshes once (the refresh token must rotate), then is logged out (1 in
//!   4), has its spent refresh token replayed, which must be refused and end
//!   the session (1 in 4), or is abandoned.
//!
//! Every client checks its room's stream: a message whose cursor is not above
//! the last message it received is **duplicated**; a message acknowledged to
//! its sender whose cursor is below one this client received later (or, once
//! sending has stopped, below the room's last) and that never reached it is
//! **lost**. Each check waits 10 s after the delivery, for the acks of
//! earlier messages to be in.
//!
//! Warm-up is the first `SOAK_WARMUP_SECS` (two thirds of the run, at most
//! 20 minutes): the embedded engines' memtables fill towards their journals'
//! bound (64 MiB of keys and values each, a memtable flushed at 8 or 16 MiB)
//! at the soak's write rate in 15–20 minutes, and RSS rises until they have
//! (bench/README.md, "the soak"). Flat means: the least-squares line through the RSS samples after
//! warm-up rises by at most 10% of the first of them over that span, and
//! every descriptor count after warm-up is within 5% + 16 of their median,
//! and their least-squares line rises or falls by less than that band (a
//! client's reconnect or a keep-alive connection moves the count a little;
//! a leak moves it steadily).
//!
//! Run it pinned like the ws scenarios, the server on core 0 and this load
//! generator on core 1: `BENCH_SERVER_CPU=0 taskset -c 1 target/release/soak`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound::{Excluded, Included};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emosation_bench::{
    ServerProcess, Ws, connect_ws, cpu_us, create_room, env, join, login, now_us, open_fds, percentiles, rss_kb,
    sent_at, signup,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::sleep_until;
use tokio_tungstenite::tungstenite::Message;

/// What a message's deliveries are checked against: the verdict on a
/// delivery waits this long, for the acks of earlier messages to be in.
const CHECK_DELAY: Duration = Duration::from_secs(10);
/// How long a leaving client waits for its sends' acks.
const ACK_WAIT: Duration = Duration::from_secs(5);
/// The texts clients send (after `t=<µs> `): a mix the classifier tells apart.
const TEXTS: &[&str] = &[
    "I love this, what great news!",
    "this is so sad, I miss the old days",
    "why is it broken again? I'm furious",
    "I'm scared about tomorrow's exam",
    "wow, I did not expect that at all",
    "ugh, that smell in the kitchen is disgusting",
    "the meeting moved to three o'clock",
];

/// A small deterministic generator (splitmix64): jitter and choices, each
/// client seeded apart.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n ≥ 1).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Knobs {
    secs: u64,
    report_secs: u64,
    warmup_secs: u64,
    users: usize,
    rooms: usize,
    rate: f64,
    history_rate: f64,
    login_rate: f64,
    online: (u64, u64),
    offline_max_ms: u64,
    refresh_secs: u64,
}

impl Knobs {
    fn from_env() -> Knobs {
        let secs = env("SOAK_SECS", 1800);
        Knobs {
            secs,
            report_secs: env("SOAK_REPORT_SECS", 60).max(1),
            warmup_secs: env("SOAK_WARMUP_SECS", (secs * 2 / 3).min(1200)),
            users: env("SOAK_USERS", 200).max(1),
            rooms: env("SOAK_ROOMS", 20).max(1),
            rate: env("SOAK_RATE", 200.0),
            history_rate: env("SOAK_HISTORY_RATE", 20.0),
            login_rate: env("SOAK_LOGIN_RATE", 2.0),
            online: (env("SOAK_ONLINE_MIN_SECS", 30), env("SOAK_ONLINE_MAX_SECS", 90)),
            offline_max_ms: env("SOAK_OFFLINE_MAX_SECS", 5) * 1000,
            refresh_secs: env("SOAK_REFRESH_SECS", 300),
        }
    }
}

/// What happened in one reporting interval.
#[derive(Default)]
struct Window {
    ack_us: Vec<u64>,
    delivery_us: Vec<u64>,
    history_us: Vec<u64>,
    login_us: Vec<u64>,
    refresh_us: Vec<u64>,
    room_list_us: Vec<u64>,
    sends: u64,
    acks: u64,
    /// Live deliveries of messages (sent after the subscription).
    deliveries: u64,
    /// Messages delivered by a catch-up (`since`).
    caught_up: u64,
    emotions: u64,
    reconnects: u64,
    renewals: u64,
    logins: u64,
    lost: u64,
    duplicated: u64,
    errors: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Stats(Mutex<Window>);

impl Stats {
    fn add(&self, f: impl FnOnce(&mut Window)) {
        f(&mut self.0.lock().unwrap());
    }

    fn error(&self, kind: impl Into<String>) {
        self.errors(kind, 1);
    }

    fn errors(&self, kind: impl Into<String>, n: u64) {
        *self.0.lock().unwrap().errors.entry(kind.into()).or_default() += n;
    }

    fn take(&self) -> Window {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

struct Room {
    id: String,
    /// Cursors of the room's messages acknowledged to their senders.
    acked: Mutex<BTreeSet<u64>>,
}

struct User {
    name: String,
    room: usize,
    /// The newest access token of the user's client session (history readers
    /// use it).
    access: Mutex<String>,
}

struct Soak {
    knobs: Knobs,
    base: String,
    http: reqwest::Client,
    stats: Stats,
    rooms: Vec<Room>,
    users: Vec<User>,
    /// When the load stops.
    end: Instant,
    /// Clients done sending (the final check waits for them all).
    done_sending: AtomicUsize,
}

fn cursor(v: &Value) -> Option<u64> {
    u64::from_str_radix(v["cursor"].as_str()?, 16).ok()
}

/// A status or transport error, as an error kind.
fn failure(what: &str, r: &Result<reqwest::Response, reqwest::Error>) -> String {
    match r {
        Ok(r) => format!("{what}:{}", r.status().as_u16()),
        Err(_) => format!("{what}:transport"),
    }
}

/// Logs in and out and refreshes on behalf of one client session.
struct Session {
    access: String,
    refresh: String,
    renewed: Instant,
}

impl Soak {
    /// `POST /v1/auth/login`, timed; retried while the hashing queue is full.
    async fn login(&self, name: &str) -> Option<Session> {
        for _ in 0..20 {
            let t = Instant::now();
            match login(&self.http, &self.base, name).await {
                Ok(l) => {
                    let us = t.elapsed().as_micros() as u64;
                    self.stats.add(|w| {
                        w.login_us.push(us);
                        w.logins += 1;
                    });
                    return Some(Session {
                        access: l["access_token"].as_str()?.to_owned(),
                        refresh: l["refresh_token"].as_str()?.to_owned(),
                        renewed: Instant::now(),
                    });
                }
                Err(e) => {
                    let status = e.downcast_ref::<reqwest::Error>().and_then(reqwest::Error::status);
                    self.stats.error(format!("login:{}", status.map_or(0, |s| s.as_u16())));
                    if status.map(|s| s.as_u16()) != Some(503) {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        None
    }

    /// `POST /v1/auth/refresh`, timed: the new tokens, the refresh token
    /// rotated.
    async fn refresh(&self, s: &Session) -> Option<Session> {
        let t = Instant::now();
        let r = self
            .http
            .post(format!("{}/v1/auth/refresh", self.base))
            .json(&json!({"refresh_token": s.refresh}))
            .send()
            .await;
        if !r.as_ref().is_ok_and(|r| r.status().is_success()) {
            self.stats.error(failure("refresh", &r));
            return None;
        }
        let body: Value = r.ok()?.json().await.ok()?;
        let us = t.elapsed().as_micros() as u64;
        self.stats.add(|w| w.refresh_us.push(us));
        let next = Session {
            access: body["access_token"].as_str()?.to_owned(),
            refresh: body["refresh_token"].as_str()?.to_owned(),
            renewed: Instant::now(),
        };
        if next.refresh == s.refresh {
            self.stats.error("refresh:not_rotated");
        }
        Some(next)
    }

    /// A timed GET as `token`; false (and an error counted) unless 200.
    async fn get(&self, what: &str, path: &str, token: Option<&str>, lat: fn(&mut Window) -> &mut Vec<u64>) -> bool {
        let t = Instant::now();
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let r = req.send().await;
        if !r.as_ref().is_ok_and(|r| r.status().is_success()) {
            self.stats.error(failure(what, &r));
            return false;
        }
        if let Ok(r) = r
            && r.bytes().await.is_ok()
        {
            let us = t.elapsed().as_micros() as u64;
            self.stats.add(|w| lat(w).push(us));
            return true;
        }
        self.stats.error(format!("{what}:body"));
        false
    }
}

/// How a visit (one WebSocket connection) ended.
#[derive(PartialEq)]
enum Left {
    /// As planned: online time over, acks in.
    Planned,
    /// The connection failed or the server ended it.
    Failed,
}

/// One user's client: its session, its place in its room's stream, and the
/// deliveries it has not checked yet.
struct Client {
    soak: Arc<Soak>,
    u: usize,
    rng: Rng,
    session: Session,
    /// The newest cursor received in the room (any stream): where to resume.
    resume: Option<u64>,
    /// The newest message cursor received.
    last_message: Option<u64>,
    /// Deliveries are checked up to this cursor.
    checked: Option<u64>,
    /// Message cursors received and not checked yet, with when.
    unchecked: VecDeque<(u64, Instant)>,
    seq: u64,
    /// Sends waiting for their ack: sequence number → when sent.
    pending: HashMap<u64, Instant>,
    visits: u64,
}

impl Client {
    fn room(&self) -> &Room {
        &self.soak.rooms[self.soak.users[self.u].room]
    }

    async fn run(mut self) {
        let soak = Arc::clone(&self.soak);
        // Bounded in count as well as in time.
        for _ in 0..100_000 {
            if Instant::now() >= soak.end {
                break;
            }
            self.open_app().await;
            self.visit(false).await;
            self.visits += 1;
            let offline = Duration::from_millis(self.rng.below(soak.knobs.offline_max_ms + 1));
            sleep_until((Instant::now() + offline).min(soak.end).into()).await;
        }
        // Once every client has stopped sending, come back one last time and
        // check everything up to the room's last acknowledged message.
        soak.done_sending.fetch_add(1, Ordering::SeqCst);
        let wait = Instant::now();
        while soak.done_sending.load(Ordering::SeqCst) < soak.users.len() && wait.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.visit(true).await;
    }

    /// What the web client reads when it opens: the room list and the room's
    /// newest history page.
    async fn open_app(&self) {
        let soak = &self.soak;
        soak.get("room_list", "/v1/rooms?limit=100", None, |w| &mut w.room_list_us)
            .await;
        let path = format!("/v1/rooms/{}/messages?limit=50", self.room().id);
        soak.get("history", &path, Some(&self.session.access), |w| &mut w.history_us)
            .await;
    }

    /// One connection: subscribe (resuming), send and read until the online
    /// time is over, then wait for acks and leave. `last`: the final visit,
    /// which sends nothing and reads until the room's last acked message.
    async fn visit(&mut self, last: bool) -> Left {
        let soak = Arc::clone(&self.soak);
        let k = &soak.knobs;
        let mut ws = match connect_ws(&soak.base, &self.session.access).await {
            Ok(ws) => ws,
            Err(e) => {
                let kind = if e.to_string().contains("401") {
                    "ws_connect:401"
                } else {
                    "ws_connect"
                };
                soak.stats.error(kind);
                // A refused token: log in again.
                if kind.ends_with("401")
                    && let Some(s) = soak.login(&soak.users[self.u].name).await
                {
                    self.adopt(s);
                }
                return Left::Failed;
            }
        };
        if self.visits > 0 || last {
            soak.stats.add(|w| w.reconnects += 1);
        }
        let mut sub = json!({"type": "subscribe", "room_id": self.room().id, "streams": ["chat", "emotion"]});
        if let Some(c) = self.resume {
            sub["since"] = json!(format!("{c:016x}"));
        }
        let subscribed_at = now_us();
        if ws.send(Message::text(sub.to_string())).await.is_err() {
            soak.stats.error("ws_send");
            return Left::Failed;
        }
        let started = Instant::now();
        let online = Duration::from_secs(k.online.0 + self.rng.below(k.online.1.saturating_sub(k.online.0) + 1));
        let online_until = if last {
            started
        } else {
            (started + online).min(soak.end)
        };
        let room_rate = k.rate / k.users as f64;
        let interval = if room_rate > 0.0 {
            Duration::from_secs_f64(1.0 / room_rate)
        } else {
            Duration::from_secs(86_400)
        };
        let mut next_send = started + interval.mul_f64(self.rng.unit());
        let mut next_tick = started + Duration::from_secs(1);
        let mut leaving: Option<Instant> = None;
        // The final visit's target: the room's last acknowledged message.
        let target = if last {
            self.room().acked.lock().unwrap().last().copied()
        } else {
            None
        };
        // The final visit waits at most 30 s for the room's last message.
        let hard_stop = online_until + Duration::from_secs(30);
        let outcome = loop {
            let now = Instant::now();
            if now >= hard_stop {
                soak.stats.error("visit_overran");
                break Left::Failed;
            }
            let sending = leaving.is_none() && now < online_until;
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(t))) => {
                        if !self.on_frame(t.as_str(), subscribed_at) {
                            break Left::Failed;
                        }
                        if last && target.is_none_or(|t| self.last_message.is_some_and(|m| m >= t)) {
                            break Left::Planned;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        soak.stats.error("ws_closed_by_server");
                        break Left::Failed;
                    }
                    Some(Ok(_)) => {}
                },
                _ = sleep_until(next_send.into()), if sending => {
                    next_send += interval.mul_f64(0.5 + self.rng.unit());
                    if !self.send(&mut ws).await {
                        break Left::Failed;
                    }
                }
                _ = sleep_until(next_tick.into()) => {
                    next_tick += Duration::from_secs(1);
                    self.check(None);
                    if !last && self.session.renewed.elapsed() >= Duration::from_secs(k.refresh_secs) {
                        self.renew(&mut ws).await;
                    }
                    if !last && leaving.is_none() && now >= online_until {
                        leaving = Some(now);
                    }
                    if let Some(since) = leaving
                        && (self.pending.is_empty() || since.elapsed() >= ACK_WAIT)
                    {
                        break Left::Planned;
                    }
                }
            }
        };
        if !self.pending.is_empty() {
            soak.stats.errors("unacked", self.pending.len() as u64);
            self.pending.clear();
        }
        if last {
            if outcome == Left::Planned {
                self.check(target);
            } else {
                // Check what did come.
                soak.stats.error("final_incomplete");
                self.check(self.last_message);
            }
        }
        // In turn: a polite close, or the connection just dropped.
        if outcome == Left::Planned && self.visits.is_multiple_of(2) {
            let _ = ws.close(None).await;
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(2) {
                match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
                    Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => break,
                    Ok(Some(Ok(_))) => {}
                }
            }
        }
        outcome
    }

    /// Handles a server frame; false if the connection is over.
    fn on_frame(&mut self, text: &str, subscribed_at: u64) -> bool {
        let soak = Arc::clone(&self.soak);
        let Ok(f) = serde_json::from_str::<Value>(text) else {
            soak.stats.error("bad_frame");
            return true;
        };
        let c = cursor(&f);
        match f["type"].as_str().unwrap_or("") {
            "message" => {
                let Some(c) = c else {
                    soak.stats.error("message_without_cursor");
                    return true;
                };
                if self.last_message.is_some_and(|m| c <= m) {
                    soak.stats.add(|w| w.duplicated += 1);
                    return true;
                }
                if self.resume.is_some_and(|r| c < r) {
                    soak.stats.error("out_of_order");
                }
                self.last_message = Some(c);
                self.resume = self.resume.max(Some(c));
                self.unchecked.push_back((c, Instant::now()));
                match sent_at(text) {
                    Some(at) if at >= subscribed_at => {
                        let us = now_us().saturating_sub(at);
                        soak.stats.add(|w| {
                            w.deliveries += 1;
                            w.delivery_us.push(us);
                        });
                    }
                    _ => soak.stats.add(|w| w.caught_up += 1),
                }
            }
            "emotion" => {
                self.resume = self.resume.max(c);
                soak.stats.add(|w| w.emotions += 1);
            }
            "member_joined" | "member_left" => self.resume = self.resume.max(c),
            "subscribed" => {
                if self.checked.is_none() {
                    self.checked = c;
                    self.resume = c;
                }
            }
            "ack" => {
                let seq = f["client_msg_id"]
                    .as_str()
                    .and_then(|id| id.rsplit_once('-'))
                    .and_then(|(_, n)| n.parse::<u64>().ok());
                if let Some(sent) = seq.and_then(|s| self.pending.remove(&s)) {
                    let us = sent.elapsed().as_micros() as u64;
                    soak.stats.add(|w| {
                        w.acks += 1;
                        w.ack_us.push(us);
                    });
                    if let Some(c) = c {
                        self.room().acked.lock().unwrap().insert(c);
                    }
                } else {
                    soak.stats.error("ack_unknown");
                }
            }
            "authenticated" => soak.stats.add(|w| w.renewals += 1),
            "typing" => {}
            "error" => {
                let code = f["code"].as_str().unwrap_or("?");
                if let Some(seq) = f["client_msg_id"]
                    .as_str()
                    .and_then(|id| id.rsplit_once('-'))
                    .and_then(|(_, n)| n.parse::<u64>().ok())
                {
                    self.pending.remove(&seq);
                    soak.stats.error(format!("send:{code}"));
                } else {
                    soak.stats.error(format!("ws_error:{code}"));
                    // A refused subscription leaves nothing to read.
                    return false;
                }
            }
            other => {
                // session_ended, kicked, unsubscribed: the visit is over.
                soak.stats.error(format!("ws_{other}"));
                return false;
            }
        }
        true
    }

    async fn send(&mut self, ws: &mut Ws) -> bool {
        let room = self.room().id.clone();
        if self.rng.below(3) == 0 {
            let typing = json!({"type": "typing", "room_id": room}).to_string();
            if ws.send(Message::text(typing)).await.is_err() {
                return false;
            }
        }
        self.seq += 1;
        let text = format!("t={} {}", now_us(), TEXTS[self.rng.below(TEXTS.len() as u64) as usize]);
        let f = json!({"type": "send", "room_id": room, "client_msg_id": format!("u{}-{}", self.u, self.seq), "text": text});
        self.pending.insert(self.seq, Instant::now());
        self.soak.stats.add(|w| w.sends += 1);
        ws.send(Message::text(f.to_string())).await.is_ok()
    }

    /// Refreshes the session and hands the new access token to the live socket.
    async fn renew(&mut self, ws: &mut Ws) {
        let soak = Arc::clone(&self.soak);
        let next = match soak.refresh(&self.session).await {
            Some(s) => s,
            // A refused refresh: log in again (the next connection uses it).
            None => match soak.login(&soak.users[self.u].name).await {
                Some(s) => s,
                None => return,
            },
        };
        let auth = json!({"type": "auth", "access_token": next.access}).to_string();
        self.adopt(next);
        if ws.send(Message::text(auth)).await.is_err() {
            soak.stats.error("ws_send");
        }
    }

    fn adopt(&mut self, s: Session) {
        *self.soak.users[self.u].access.lock().unwrap() = s.access.clone();
        self.session = s;
    }

    /// Checks the deliveries received at least `CHECK_DELAY` ago (all of
    /// them if `upto` is given, and up to `upto`): every acknowledged message
    /// of the room with a cursor in the checked range must be among them.
    fn check(&mut self, upto: Option<u64>) {
        let Some(from) = self.checked else { return };
        let mut received = Vec::new();
        while let Some(&(c, at)) = self.unchecked.front()
            && (upto.is_some() || at.elapsed() >= CHECK_DELAY)
        {
            received.push(c);
            self.unchecked.pop_front();
        }
        let Some(to) = received.last().copied().max(upto) else {
            return;
        };
        if to <= from {
            return;
        }
        let lost = self
            .room()
            .acked
            .lock()
            .unwrap()
            .range((Excluded(from), Included(to)))
            .filter(|c| received.binary_search(c).is_err())
            .count() as u64;
        self.checked = Some(to);
        if lost > 0 {
            self.soak.stats.add(|w| w.lost += lost);
        }
    }
}

/// History reads at `SOAK_HISTORY_RATE` as random members, open loop.
async fn history_reader(soak: Arc<Soak>) {
    let k = &soak.knobs;
    if k.history_rate <= 0.0 {
        return;
    }
    let interval = Duration::from_secs_f64(1.0 / k.history_rate);
    let mut rng = Rng(1);
    let mut next = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..(k.history_rate * k.secs as f64) as u64 + 1 {
        if next >= soak.end {
            break;
        }
        sleep_until(next.into()).await;
        next += interval;
        while tasks.try_join_next().is_some() {}
        if tasks.len() >= 64 {
            soak.stats.error("history:backlog");
            continue;
        }
        let user = &soak.users[rng.below(soak.users.len() as u64) as usize];
        let (path, token) = (
            format!("/v1/rooms/{}/messages?limit=50", soak.rooms[user.room].id),
            user.access.lock().unwrap().clone(),
        );
        let soak = Arc::clone(&soak);
        tasks.spawn(async move { soak.get("history", &path, Some(&token), |w| &mut w.history_us).await });
    }
    while tasks.join_next().await.is_some() {}
}

/// Logins at `SOAK_LOGIN_RATE` as random users, open loop: each session
/// refreshes once, then is logged out, has its spent refresh token replayed
/// (which must end it), or is abandoned.
async fn logins(soak: Arc<Soak>) {
    let k = &soak.knobs;
    if k.login_rate <= 0.0 {
        return;
    }
    let interval = Duration::from_secs_f64(1.0 / k.login_rate);
    let mut rng = Rng(2);
    let mut next = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..(k.login_rate * k.secs as f64) as u64 + 1 {
        if next >= soak.end {
            break;
        }
        sleep_until(next.into()).await;
        next += interval;
        while tasks.try_join_next().is_some() {}
        if tasks.len() >= 32 {
            soak.stats.error("login:backlog");
            continue;
        }
        let name = soak.users[rng.below(soak.users.len() as u64) as usize].name.clone();
        let soak = Arc::clone(&soak);
        tasks.spawn(async move {
            let Some(first) = soak.login(&name).await else { return };
            let Some(second) = soak.refresh(&first).await else {
                return;
            };
            match n % 4 {
                0 => {
                    let r = soak
                        .http
                        .post(format!("{}/v1/auth/logout", soak.base))
                        .bearer_auth(&second.access)
                        .send()
                        .await;
                    if !matches!(&r, Ok(r) if r.status().as_u16() == 204) {
                        soak.stats.error(failure("logout", &r));
                    }
                }
                1 => {
                    // Reuse of a spent refresh token ends the session: the
                    // replay and then the newest refresh token are refused.
                    for (what, s) in [("reuse", &first), ("after_reuse", &second)] {
                        let r = soak
                            .http
                            .post(format!("{}/v1/auth/refresh", soak.base))
                            .json(&json!({"refresh_token": s.refresh}))
                            .send()
                            .await;
                        if !matches!(&r, Ok(r) if r.status().as_u16() == 401) {
                            soak.stats.error(failure(&format!("{what}_not_refused"), &r));
                        }
                    }
                }
                _ => {}
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Signs every user up and in, creates the rooms and joins them: a few at a
/// time (the server hashes passwords on a bounded queue).
async fn setup(http: &reqwest::Client, base: &str, k: &Knobs) -> anyhow::Result<(Vec<Room>, Vec<User>, Vec<Session>)> {
    let name = |u: usize| format!("soak_{u}");
    let mut sessions: Vec<Option<Session>> = (0..k.users).map(|_| None).collect();
    let mut pending = futures_util::stream::FuturesUnordered::new();
    let mut next = 0;
    while next < k.users || !pending.is_empty() {
        while next < k.users && pending.len() < 4 {
            let (http, base, u) = (http.clone(), base.to_owned(), next);
            pending.push(async move {
                let mut tries = 0;
                loop {
                    tries += 1;
                    let r = async {
                        signup(&http, &base, &name(u)).await.or_else(|e| {
                            // Signed up by an earlier try whose login failed.
                            let taken = e.downcast_ref::<reqwest::Error>().and_then(reqwest::Error::status);
                            if taken.map(|s| s.as_u16()) == Some(409) {
                                Ok(())
                            } else {
                                Err(e)
                            }
                        })?;
                        login(&http, &base, &name(u)).await
                    }
                    .await;
                    match r {
                        Ok(l) => return anyhow::Ok((u, l)),
                        Err(e) if tries >= 50 => return Err(e),
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            });
            next += 1;
        }
        if let Some(r) = pending.next().await {
            let (u, l) = r?;
            sessions[u] = Some(Session {
                access: l["access_token"].as_str().unwrap_or_default().to_owned(),
                refresh: l["refresh_token"].as_str().unwrap_or_default().to_owned(),
                renewed: Instant::now(),
            });
        }
    }
    let sessions: Vec<Session> = sessions.into_iter().map(|s| s.expect("every user set up")).collect();
    let mut rooms = Vec::new();
    for r in 0..k.rooms {
        // User r (r < rooms) creates room r; user u is in room u % rooms.
        let owner = &sessions[r % k.users].access;
        rooms.push(Room {
            id: create_room(http, base, owner, &format!("soak room {r}")).await?,
            acked: Mutex::default(),
        });
    }
    for (u, s) in sessions.iter().enumerate() {
        if u >= k.rooms {
            join(http, base, &s.access, &rooms[u % k.rooms].id).await?;
        }
    }
    let users = (0..k.users)
        .map(|u| User {
            name: name(u),
            room: u % k.rooms,
            access: Mutex::new(sessions[u].access.clone()),
        })
        .collect();
    Ok((rooms, users, sessions))
}

/// Bytes under `dir`, recursively.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// p50 and p99 of one interval's latencies.
fn p50_p99(us: Vec<u64>) -> Value {
    let p = percentiles(us);
    json!({"p50_us": p["p50_us"], "p99_us": p["p99_us"], "n": p["n"].as_u64().unwrap_or(0)})
}

/// The least-squares slope of `ys` over `xs`.
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    if xs.len() < 2 {
        return 0.0;
    }
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

/// A sample of the server process at the end of an interval.
struct Sample {
    minute: f64,
    rss_kb: u64,
    fds: u64,
    /// What the server's bounded caches and buffers hold (its
    /// `emosation_memory_bytes`), by part, and their bounds, in KB.
    cached_kb: BTreeMap<String, (u64, u64)>,
}

impl Sample {
    fn cached_total_kb(&self) -> u64 {
        self.cached_kb.values().map(|(b, _)| b).sum()
    }

    /// RSS beyond what the bounded caches hold: what must not grow.
    fn rss_beyond_caches_kb(&self) -> u64 {
        self.rss_kb.saturating_sub(self.cached_total_kb())
    }
}

/// The server's `emosation_memory_bytes{part}` and
/// `emosation_memory_limit_bytes{part}`, in KB, by part.
async fn memory_parts(http: &reqwest::Client, base: &str) -> BTreeMap<String, (u64, u64)> {
    let mut parts = BTreeMap::<String, (u64, u64)>::new();
    let Ok(text) = async { http.get(format!("{base}/metrics")).send().await?.text().await }.await else {
        return parts;
    };
    for line in text.lines() {
        let (used, rest) = if let Some(r) = line.strip_prefix("emosation_memory_bytes{part=\"") {
            (true, r)
        } else if let Some(r) = line.strip_prefix("emosation_memory_limit_bytes{part=\"") {
            (false, r)
        } else {
            continue;
        };
        let Some((part, value)) = rest.split_once("\"} ") else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else { continue };
        let e = parts.entry(part.to_owned()).or_default();
        if used {
            e.0 = v as u64 / 1024
        } else {
            e.1 = v as u64 / 1024
        }
    }
    parts
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let k = Knobs::from_env();
    // What earlier work left dirty in the page cache would be written back
    // in the middle of the run (see ws.rs).
    let _ = std::process::Command::new("sync").status();
    let server = ServerProcess::start(&[]).await?;
    let pid = server.child.id().unwrap_or(0);
    // Idle keep-alive connections are let go before the server's
    // `--http-idle-timeout-secs` (5) closes them, as browsers retry a request
    // that meets a connection closing under it: no race counted as an error.
    let http = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(4))
        .build()?;
    let (rooms, users, sessions) = setup(&http, &server.base, &k).await?;

    let start = Instant::now();
    let soak = Arc::new(Soak {
        base: server.base.clone(),
        http,
        stats: Stats::default(),
        rooms,
        users,
        end: start + Duration::from_secs(k.secs),
        done_sending: AtomicUsize::new(0),
        knobs: k,
    });
    let k = &soak.knobs;
    let mut tasks = tokio::task::JoinSet::new();
    for (u, session) in sessions.into_iter().enumerate() {
        let client = Client {
            soak: Arc::clone(&soak),
            u,
            rng: Rng(1000 + u as u64),
            session,
            resume: None,
            last_message: None,
            checked: None,
            unchecked: VecDeque::new(),
            seq: 0,
            pending: HashMap::new(),
            visits: 0,
        };
        tasks.spawn(client.run());
    }
    tasks.spawn(history_reader(Arc::clone(&soak)));
    tasks.spawn(logins(Arc::clone(&soak)));

    let (rss_start, fds_start) = (rss_kb(pid), open_fds(pid));
    println!(
        "{}",
        json!({"bench": "soak", "start": true, "users": k.users, "rooms": k.rooms, "msgs_per_sec": k.rate,
               "history_per_sec": k.history_rate, "logins_per_sec": k.login_rate, "secs": k.secs,
               "report_secs": k.report_secs, "warmup_secs": k.warmup_secs, "rss_kb": rss_start, "fds": fds_start})
    );
    let me = std::process::id();
    let mut cpu = (cpu_us(pid), cpu_us(me));
    let mut samples = Vec::new();
    let mut totals = Window::default();
    let mut worst_p99 = BTreeMap::<&str, u64>::new();
    let intervals = k.secs.div_ceil(k.report_secs);
    for i in 1..=intervals {
        let at = start + Duration::from_secs((i * k.report_secs).min(k.secs));
        sleep_until(at.into()).await;
        let w = soak.stats.take();
        let now_cpu = (cpu_us(pid), cpu_us(me));
        let (server_ms, gen_ms) = ((now_cpu.0 - cpu.0) / 1000, (now_cpu.1 - cpu.1) / 1000);
        cpu = now_cpu;
        let secs = start.elapsed().as_secs_f64();
        let s = Sample {
            minute: secs / 60.0,
            rss_kb: rss_kb(pid),
            fds: open_fds(pid),
            cached_kb: memory_parts(&soak.http, &soak.base).await,
        };
        let threads = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_owned()))
            })
            .and_then(|v| v.parse::<u64>().ok());
        let mut line = json!({"bench": "soak", "minute": (s.minute * 100.0).round() / 100.0, "rss_kb": s.rss_kb, "fds": s.fds,
               "threads": threads, "server_cpu_ms": server_ms, "generator_cpu_ms": gen_ms,
               "data_dir_mb": (dir_bytes(server.data_dir()) as f64 / 1e6).round(),
               "cached_kb": s.cached_total_kb(), "rss_beyond_caches_kb": s.rss_beyond_caches_kb(),
               "caches_kb": s.cached_kb.iter().map(|(k, (b, l))| (k.clone(), json!([b, l]))).collect::<serde_json::Map<_, _>>()});
        for (name, v) in [
            ("send_ack", &w.ack_us),
            ("send_delivery", &w.delivery_us),
            ("history", &w.history_us),
            ("login", &w.login_us),
            ("refresh", &w.refresh_us),
            ("room_list", &w.room_list_us),
        ] {
            let p = p50_p99(v.clone());
            if let Some(p99) = p["p99_us"].as_u64() {
                let e = worst_p99.entry(name).or_default();
                *e = (*e).max(p99);
            }
            line[name] = p;
        }
        add_counts(&mut line, &w);
        println!("{line}");
        merge(&mut totals, w);
        samples.push(s);
    }

    // The end: every client checks its room's stream to the last acked message.
    let drain = Instant::now();
    while !tasks.is_empty() && drain.elapsed() < Duration::from_secs(180) {
        let _ = tokio::time::timeout(Duration::from_secs(1), tasks.join_next()).await;
    }
    let unfinished = tasks.len();
    tasks.abort_all();
    let tail = soak.stats.take();
    merge(&mut totals, tail);

    let warm: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.minute * 60.0 > k.warmup_secs as f64 + 1.0)
        .collect();
    let xs: Vec<f64> = warm.iter().map(|s| s.minute).collect();
    let (rss, fds): (Vec<f64>, Vec<f64>) = warm.iter().map(|s| (s.rss_kb as f64, s.fds as f64)).unzip();
    let beyond: Vec<f64> = warm.iter().map(|s| s.rss_beyond_caches_kb() as f64).collect();
    let span = xs.last().zip(xs.first()).map_or(0.0, |(l, f)| l - f);
    let range = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max) - v.iter().copied().fold(f64::MAX, f64::min);
    let (rss_slope, fds_slope) = (slope(&xs, &rss), slope(&xs, &fds));
    let rss_growth_pct = rss.first().map_or(0.0, |first| rss_slope * span / first * 100.0);
    let fds_median = {
        let mut sorted = fds.clone();
        sorted.sort_by(f64::total_cmp);
        sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
    };
    let fds_band = fds_median * 0.05 + 16.0;
    let rss_flat = rss_growth_pct <= 10.0;
    let beyond_slope = slope(&xs, &beyond);
    let beyond_growth_pct = beyond.first().map_or(0.0, |first| beyond_slope * span / first * 100.0);
    let beyond_flat = beyond_growth_pct <= 10.0;
    let caches_at_end = samples.last().map(|s| s.cached_kb.clone()).unwrap_or_default();
    let cache_limits_kb: u64 = caches_at_end.values().map(|(_, l)| l).sum();
    let fds_flat = fds.iter().all(|f| (f - fds_median).abs() <= fds_band) && (fds_slope * span).abs() < fds_band;
    let mut summary = json!({"bench": "soak", "summary": true, "seconds": k.secs, "users": k.users, "rooms": k.rooms,
        "msgs_per_sec": k.rate, "warmup_secs": k.warmup_secs, "samples_after_warmup": warm.len(),
        "rss_kb": {"start": rss_start, "after_warmup": rss.first(), "end": rss.last(), "max_minus_min": (!rss.is_empty()).then(|| range(&rss)),
                   "slope_kb_per_min": (rss_slope * 10.0).round() / 10.0, "growth_pct": (rss_growth_pct * 100.0).round() / 100.0},
        "fds": {"start": fds_start, "after_warmup": fds.first(), "end": fds.last(), "max_minus_min": (!fds.is_empty()).then(|| range(&fds)),
                "slope_per_min": (fds_slope * 100.0).round() / 100.0, "median": fds_median, "band": fds_band.round()},
        "rss_beyond_caches_kb": {"after_warmup": beyond.first(), "end": beyond.last(), "max_minus_min": (!beyond.is_empty()).then(|| range(&beyond)),
                   "slope_kb_per_min": (beyond_slope * 10.0).round() / 10.0, "growth_pct": (beyond_growth_pct * 100.0).round() / 100.0},
        "caches_at_end_kb": caches_at_end.iter().map(|(k, (b, l))| (k.clone(), json!({"held": b, "bound": l}))).collect::<serde_json::Map<_, _>>(),
        "cache_bounds_kb": cache_limits_kb,
        "flat_rule": "RSS (and RSS beyond what the bounded caches hold): the least-squares line after warm-up rises <= 10% of the first sample; fds: every sample after warm-up within 5% + 16 of their median, and their least-squares line moves less than that. `flat` needs the fds flat and either RSS flat or, while the caches are still filling towards their bounds, RSS beyond them flat",
        "rss_flat": rss_flat, "rss_beyond_caches_flat": beyond_flat, "fds_flat": fds_flat,
        "flat": (rss_flat || beyond_flat) && fds_flat && warm.len() >= 2,
        "worst_minute_p99_us": worst_p99, "clients_unfinished": unfinished});
    add_counts(&mut summary, &totals);
    summary["no_loss_no_duplicates"] = json!(totals.lost == 0 && totals.duplicated == 0);
    println!("{summary}");
    drop(server);
    Ok(())
}

fn add_counts(line: &mut Value, w: &Window) {
    let errors: u64 = w.errors.values().sum();
    for (name, n) in [
        ("sends", w.sends),
        ("acks", w.acks),
        ("deliveries", w.deliveries),
        ("caught_up", w.caught_up),
        ("emotions", w.emotions),
        ("reconnects", w.reconnects),
        ("renewals", w.renewals),
        ("logins", w.logins),
        ("errors", errors),
        ("lost", w.lost),
        ("duplicated", w.duplicated),
    ] {
        line[name] = json!(n);
    }
    if !w.errors.is_empty() {
        line["error_kinds"] = json!(w.errors);
    }
}

/// Adds an interval's counts to the run's totals (latencies are per interval).
fn merge(totals: &mut Window, w: Window) {
    totals.sends += w.sends;
    totals.acks += w.acks;
    totals.deliveries += w.deliveries;
    totals.caught_up += w.caught_up;
    totals.emotions += w.emotions;
    totals.reconnects += w.reconnects;
    totals.renewals += w.renewals;
    totals.logins += w.logins;
    totals.lost += w.lost;
    totals.duplicated += w.duplicated;
    for (k, n) in w.errors {
        *totals.errors.entry(k).or_default() += n;
    }
}
