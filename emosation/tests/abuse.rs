//! Abuse limits over HTTP (issue 16, item 5): logins per username and per
//! address, sign-ups per address, room creation and joins per account,
//! each answered `429 rate_limited` with `Retry-After`; the password-hashing
//! queue is bounded (`503 overloaded`, `Retry-After`, at once).

mod common;

use common::TestServer;
use emosation_ingest::{AbuseLimits, Limit};
use serde_json::{Value, json};

/// Posts `body`; returns status, error code and `Retry-After`.
async fn post(base: &str, path: &str, token: Option<&str>, body: Value) -> (u16, String, Option<String>) {
    let mut req = reqwest::Client::new().post(format!("{base}{path}")).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let retry = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let body: Value = res.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
    (status, code, retry)
}

fn login(name: &str, password: &str) -> Value {
    json!({"username": name, "password": password})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_attempts_are_limited_per_username_then_per_address() {
    let s = TestServer::start_configured(|cfg| {
        cfg.ingest.abuse = AbuseLimits {
            login_per_username: Limit::new(4, 6),
            login_per_ip: Limit::new(7, 6),
            ..AbuseLimits::off()
        };
    })
    .await;
    let api = s.client();
    // Each signs up and logs in once (one attempt of each username, two of
    // the address).
    api.user("vic").await;
    api.user("wes").await;
    // Two wrong passwords and the right one for vic: the fourth attempt is
    // the burst's last. The fifth, even with the right password, is
    // refused, with when to come back (one attempt per 10 s).
    for _ in 0..2 {
        assert_eq!(
            post(&s.base, "/v1/auth/login", None, login("vic", "wrong password"))
                .await
                .0,
            401
        );
    }
    assert_eq!(
        post(&s.base, "/v1/auth/login", None, login("vic", "correct horse"))
            .await
            .0,
        200
    );
    let (status, code, retry_after) = post(&s.base, "/v1/auth/login", None, login("vic", "correct horse")).await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
    assert_eq!(retry_after.as_deref(), Some("10"));
    // Another username is not affected by vic's limit...
    assert_eq!(
        post(&s.base, "/v1/auth/login", None, login("wes", "correct horse"))
            .await
            .0,
        200
    );
    // ...but the address has made its 7 attempts: the next one from it is refused.
    let (status, code, _) = post(&s.base, "/v1/auth/login", None, login("wes", "correct horse")).await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signups_rooms_and_joins_are_limited() {
    let s = TestServer::start_configured(|cfg| {
        cfg.ingest.abuse = AbuseLimits {
            signup_per_ip: Limit::new(3, 60),
            rooms_per_user: Limit::new(2, 60),
            joins_per_user: Limit::new(2, 60),
            ..AbuseLimits::off()
        };
    })
    .await;
    let api = s.client();
    let (_, owner) = api.user("own").await;
    let (_, joiner) = api.user("joy").await;
    let (_, third) = api.user("kit").await;
    let (status, code, retry) = post(&s.base, "/v1/auth/signup", None, login("lee", "correct horse")).await;
    assert_eq!(
        (status, code.as_str()),
        (429, "rate_limited"),
        "the fourth sign-up from one address"
    );
    assert_eq!(retry.as_deref(), Some("1"));

    let rooms = [
        api.create_room(&owner, "r0", None).await,
        api.create_room(&owner, "r1", None).await,
    ];
    let (status, code, _) = post(&s.base, "/v1/rooms", Some(&owner), json!({"name": "r2"})).await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"), "the third room");

    for r in &rooms {
        assert_eq!(
            post(&s.base, &format!("/v1/rooms/{r}/join"), Some(&joiner), json!({}))
                .await
                .0,
            200
        );
    }
    // Joining a room one is in already costs nothing.
    assert_eq!(
        post(
            &s.base,
            &format!("/v1/rooms/{}/join", rooms[0]),
            Some(&joiner),
            json!({})
        )
        .await
        .0,
        200
    );
    let kits = api.create_room(&third, "kit's", None).await;
    let (status, code, _) = post(&s.base, &format!("/v1/rooms/{kits}/join"), Some(&joiner), json!({})).await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"), "the third join");
    // The limits are per account: the owner's first join goes through.
    assert_eq!(
        post(&s.base, &format!("/v1/rooms/{kits}/join"), Some(&owner), json!({}))
            .await
            .0,
        200
    );
}

/// Many logins at once: those beyond the running and waiting hashes are
/// answered `503 overloaded` with `Retry-After` at once; none waits without
/// end, and every other one is answered normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_hashing_queue_is_bounded() {
    let s = TestServer::start_configured(|cfg| cfg.ingest.abuse = AbuseLimits::off()).await;
    let api = s.client();
    api.user("max").await;
    let mut tasks = Vec::new();
    for _ in 0..80 {
        let base = s.base.clone();
        tasks.push(tokio::spawn(async move {
            post(&base, "/v1/auth/login", None, login("max", "correct horse")).await
        }));
    }
    let (mut ok, mut overloaded) = (0, 0);
    for t in tasks {
        let (status, code, retry) = t.await.unwrap();
        match status {
            200 => ok += 1,
            503 => {
                assert_eq!(code, "overloaded");
                assert_eq!(retry.as_deref(), Some("1"));
                overloaded += 1;
            }
            other => panic!("unexpected {other} {code}"),
        }
    }
    assert!(ok >= emosation_ingest::HASHES_WAITING, "{ok} answered");
    assert!(overloaded > 0, "the queue is bounded: {ok} ok, {overloaded} overloaded");
}

/// Behind a trusted proxy (the compose gateway), the client is the address
/// the proxy names in `X-Forwarded-For`; from anyone else the header is
/// ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_limits_see_through_a_trusted_proxy_only() {
    let signup = |base: String, name: &'static str, forwarded: &'static str| async move {
        reqwest::Client::new()
            .post(format!("{base}/v1/auth/signup"))
            .header("x-forwarded-for", forwarded)
            .json(&login(name, "correct horse"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let limits = || AbuseLimits {
        signup_per_ip: Limit::new(1, 1),
        ..AbuseLimits::off()
    };
    let trusted = TestServer::start_configured(|cfg| {
        cfg.ingest.abuse = limits();
        cfg.trusted_proxies = "127.0.0.0/8".parse().unwrap();
    })
    .await;
    let b = trusted.base.clone();
    assert_eq!(signup(b.clone(), "xaa", "198.51.100.1").await, 201);
    assert_eq!(signup(b.clone(), "xbb", "198.51.100.2").await, 201, "another client");
    assert_eq!(
        signup(b.clone(), "xcc", "203.0.113.9, 198.51.100.1").await,
        429,
        "the proxy's view wins"
    );

    let untrusted = TestServer::start_configured(|cfg| cfg.ingest.abuse = limits()).await;
    let b = untrusted.base.clone();
    assert_eq!(signup(b.clone(), "yaa", "198.51.100.1").await, 201);
    assert_eq!(
        signup(b.clone(), "ybb", "198.51.100.2").await,
        429,
        "the header is not believed"
    );
}

/// Fills `room` with `n` messages over one socket, pipelined; returns the
/// first message's cursor once every send is acknowledged.
async fn fill(base: &str, token: &str, room: &str, n: usize) -> String {
    let mut ws = common::ws_client::Client::connect(base, token).await;
    for i in 0..n {
        ws.send(json!({"type": "send", "room_id": room, "client_msg_id": format!("{room}-{i}"), "text": format!("message {i}")}))
            .await;
    }
    let mut first = None;
    for _ in 0..n {
        let ack = ws.next_of(&["ack", "error"]).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        if ack["client_msg_id"] == format!("{room}-0") {
            first = ack["cursor"].as_str().map(str::to_owned);
        }
    }
    first.expect("the first send's ack")
}

/// At most four subscriptions of one connection catch up at once: a fifth
/// `subscribe` with `since` meanwhile is refused `rate_limited`, and taken
/// once they are live (issue 16, item 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_ups_are_bounded_per_connection() {
    let server = TestServer::start().await;
    let api = server.client();
    let (_, token) = api.user("catcher").await;
    let mut rooms = Vec::new();
    for i in 0..5 {
        let room = api.create_room(&token, &format!("history{i}"), None).await;
        // Long enough histories that the first four catch-ups are still
        // running when the fifth subscribe, sent right behind them, arrives.
        let first = fill(&server.base, &token, &room, 800).await;
        rooms.push((room, first));
    }
    let mut ws = common::ws_client::Client::connect(&server.base, &token).await;
    for (room, first) in &rooms {
        ws.send(json!({"type": "subscribe", "room_id": room, "streams": ["chat"], "since": first}))
            .await;
    }
    let (mut subscribed, mut refused, mut messages) = (Vec::new(), Vec::new(), 0);
    loop {
        let f = tokio::time::timeout(std::time::Duration::from_millis(1500), ws.next()).await;
        let Ok(f) = f else { break };
        match f["type"].as_str() {
            Some("subscribed") => subscribed.push(f["room_id"].as_str().unwrap().to_owned()),
            Some("error") => refused.push(f["code"].as_str().unwrap().to_owned()),
            Some("message") => messages += 1,
            _ => {}
        }
    }
    assert_eq!(refused, vec!["rate_limited"], "one of five catch-ups refused");
    assert_eq!(subscribed.len(), 4, "{subscribed:?}");
    assert_eq!(
        messages,
        4 * 799,
        "the four catch-ups delivered everything after `since`"
    );
    // Live now: the fifth catches up.
    let (room, first) = rooms.iter().find(|(r, _)| !subscribed.contains(r)).unwrap();
    let f = ws.subscribe(room, Some(first)).await;
    assert_eq!(f["type"], "subscribed", "{f}");
    for _ in 0..799 {
        let m = ws.next_of(&["message"]).await;
        assert_eq!(m["room_id"], room.as_str());
    }
}
