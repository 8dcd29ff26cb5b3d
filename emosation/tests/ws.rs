//! The WebSocket protocol against a real server on 127.0.0.1:0.

mod common;

use std::time::Duration;

use common::ws_client::Client;
use common::{Api, TestServer};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;

async fn room_with(api: &Api, owner: &str, others: &[&str]) -> (String, Vec<String>) {
    let mut tokens = vec![api.user(owner).await.1];
    for o in others {
        tokens.push(api.user(o).await.1);
    }
    (another_room(api, &tokens, "ws").await, tokens)
}

/// A room owned by `tokens[0]`, joined by every other token's user.
async fn another_room(api: &Api, tokens: &[String], name: &str) -> String {
    let room = api.create_room(&tokens[0], name, None).await;
    for t in &tokens[1..] {
        api.post(&format!("/v1/rooms/{room}/join"), Some(t), json!({}))
            .await
            .expect(200);
    }
    room
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_chat_live() {
    let s = TestServer::start().await;
    let api = s.client();
    let (room, t) = room_with(&api, "alice", &["bob"]).await;
    let mut a = Client::connect(&s.base, &t[0]).await;
    let mut b = Client::connect(&s.base, &t[1]).await;
    assert_eq!(a.subscribe(&room, None).await["type"], "subscribed");
    let sub = b.subscribe(&room, None).await;
    assert_eq!(sub["room_id"], room.as_str());
    assert!(sub["cursor"].as_str().unwrap().len() == 16);

    // A WebSocket send: acked once durable, delivered to both.
    a.send(json!({"type": "send", "room_id": room, "client_msg_id": "w1", "text": "hi bob"}))
        .await;
    // The ack and the delivery of one's own message may come in either order.
    let first = a.next_of(&["ack", "message"]).await;
    let second = a.next_of(&["ack", "message"]).await;
    let (ack, own) = if first["type"] == "ack" {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(ack["client_msg_id"], "w1");
    let id = ack["message_id"].as_str().unwrap().to_owned();
    assert_eq!(ack["cursor"], id.as_str());
    let got = b.next_of(&["message"]).await;
    assert_eq!(got["message_id"], id.as_str());
    assert_eq!(got["text"], "hi bob");
    assert_eq!(got["author"], "alice");
    assert_eq!(own["message_id"], id.as_str());

    // An HTTP send reaches WebSocket subscribers too; a repeat is not delivered twice.
    api.send(&t[1], &room, "h1", "hello from http").await.expect(202);
    api.send(&t[1], &room, "h1", "hello from http").await.expect(202);
    assert_eq!(a.next_of(&["message"]).await["text"], "hello from http");
    a.send(json!({"type": "send", "room_id": room, "client_msg_id": "w1", "text": "repeat"}))
        .await;
    assert_eq!(
        a.next_of(&["ack"]).await["message_id"],
        id.as_str(),
        "idempotent over WebSocket too"
    );
    api.send(&t[1], &room, "h2", "marker").await.expect(202);
    assert_eq!(
        a.next_of(&["message"]).await["text"],
        "marker",
        "no duplicate before the marker"
    );

    // Typing goes to the others only, and is not logged.
    a.send(json!({"type": "typing", "room_id": room})).await;
    let typing = b.next_of(&["typing"]).await;
    assert_eq!(typing["room_id"], room.as_str());
    assert!(a.quiet(200).await, "the typist does not get its own typing frame");

    // Membership changes carry the member count.
    let (_, carol) = api.user("carol").await;
    api.post(&format!("/v1/rooms/{room}/join"), Some(&carol), json!({}))
        .await
        .expect(200);
    let joined = b.next_of(&["member_joined"]).await;
    assert_eq!(joined["username"], "carol");
    assert_eq!(joined["member_count"], 3);
    api.post(&format!("/v1/rooms/{room}/quit"), Some(&carol), json!({}))
        .await
        .expect(200);
    let left = b.next_of(&["member_left"]).await;
    assert_eq!(left["member_count"], 2);

    // Send errors carry the client_msg_id.
    a.send(json!({"type": "send", "room_id": room, "client_msg_id": "e1", "text": ""}))
        .await;
    let e = a.next_of(&["error"]).await;
    assert_eq!(e["code"], "invalid_request");
    assert_eq!(e["client_msg_id"], "e1");

    // Unsubscribe stops delivery.
    b.send(json!({"type": "unsubscribe", "room_id": room})).await;
    assert_eq!(b.next_of(&["unsubscribed"]).await["room_id"], room.as_str());
    api.send(&t[0], &room, "after", "after unsubscribe").await.expect(202);
    assert!(b.quiet(300).await);
}

/// A partition's tailer stops once no room of it has a subscriber here, and a
/// later subscription starts one again: live delivery resumes, and two rooms
/// of one node leaving and coming back in turns never strand either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_every_room_then_coming_back_delivers_live_again() {
    let s = TestServer::start().await;
    let api = s.client();
    let (r1, t) = room_with(&api, "poster", &["reader"]).await;
    let r2 = another_room(&api, &t, "second").await;
    let mut reader = Client::connect(&s.base, &t[1]).await;
    for round in 0..3 {
        for room in [&r1, &r2] {
            reader.subscribe(room, None).await;
            let cmid = format!("{round}-{room}");
            // Two in a row: the tailer goes on while the room is wanted.
            for n in 0..2 {
                let text = format!("{cmid}-{n}");
                api.send(&t[0], room, &text, &text).await.expect(202);
                let m = reader.next_of(&["message"]).await;
                assert_eq!(m["text"], text.as_str(), "round {round}");
            }
            reader.send(json!({"type": "unsubscribe", "room_id": room})).await;
            assert_eq!(reader.next_of(&["unsubscribed"]).await["room_id"], room.as_str());
            // With no subscriber left, the next record lets the tailer stop.
            api.send(&t[0], room, &format!("gone-{cmid}"), "unseen")
                .await
                .expect(202);
            assert!(reader.quiet(200).await);
        }
    }
}

/// Rooms sharing a partition: a node decodes only its subscribed rooms'
/// records (by the log key), and a catch-up reads only its own room's, yet
/// each subscriber gets exactly its room's events, live and on resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_sharing_a_partition_each_get_exactly_their_own_events() {
    let s = TestServer::start_configured(|cfg| {
        cfg.engines.topology.rooms_partitions = 1;
    })
    .await;
    let api = s.client();
    let (ra, t) = room_with(&api, "poster", &["reader"]).await;
    let rb = another_room(&api, &t, "other").await;
    let mut reader = Client::connect(&s.base, &t[1]).await;
    reader.subscribe(&ra, None).await;

    // Interleaved in the one partition: only room A's reach the reader.
    let b1 = api.send(&t[0], &rb, "b1", "b1").await.expect(202)["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    api.send(&t[0], &ra, "a1", "a1").await.expect(202);
    assert_eq!(reader.next_of(&["message"]).await["text"], "a1");
    assert!(reader.quiet(200).await, "room B's message reached a room A subscriber");

    // Room B from just before b1: the catch-up finds b1 among A's records,
    // then both rooms are live, each message once, in log order.
    let sub = reader.subscribe(&rb, Some(&LogCursor::before(&b1))).await;
    assert_eq!(sub["type"], "subscribed", "{sub}");
    let first = reader.next_of(&["message"]).await;
    assert_eq!(
        (first["room_id"].as_str(), first["text"].as_str()),
        (Some(rb.as_str()), Some("b1"))
    );
    for (room, text) in [(&rb, "b2"), (&ra, "a2"), (&rb, "b3")] {
        api.send(&t[0], room, text, text).await.expect(202);
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = reader.next_of(&["message"]).await;
        got.push((
            m["room_id"].as_str().unwrap().to_owned(),
            m["text"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(
        got,
        vec![
            (rb.clone(), "b2".to_owned()),
            (ra.clone(), "a2".to_owned()),
            (rb.clone(), "b3".to_owned())
        ]
    );
    assert!(reader.quiet(200).await, "nothing more");
}

/// One connection's pipelined sends (not waiting for their acks) are
/// stored, and delivered, in the order sent: per connection, per room, FIFO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sends_are_stored_and_delivered_in_the_order_sent() {
    let s = TestServer::start_configured(|cfg| cfg.ingest.message_rate = 0).await;
    let api = s.client();
    let (room, t) = room_with(&api, "pia", &["rex"]).await;
    let mut a = Client::connect(&s.base, &t[0]).await;
    let mut b = Client::connect(&s.base, &t[1]).await;
    b.subscribe(&room, None).await;
    const N: usize = 300;
    for i in 0..N {
        a.send(json!({"type": "send", "room_id": room, "client_msg_id": format!("p{i}"), "text": format!("n{i}")}))
            .await;
    }
    for _ in 0..N {
        let f = a.next_of(&["ack", "error"]).await;
        assert_eq!(f["type"], "ack", "{f}");
    }
    let want: Vec<String> = (0..N).map(|i| format!("n{i}")).collect();
    let mut delivered = Vec::new();
    while delivered.len() < N {
        let f = b.next_of(&["message"]).await;
        delivered.push(f["text"].as_str().unwrap().to_owned());
    }
    assert_eq!(delivered, want, "delivered in the order sent");
    let stored: Vec<String> = api
        .all_messages(&t[1], &room)
        .await
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stored, want, "stored in the order sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_fifty_missed_messages_is_exact() {
    let s = TestServer::start().await;
    let api = s.client();
    let (room, t) = room_with(&api, "ann", &["ben"]).await;
    let mut b = Client::connect(&s.base, &t[1]).await;
    b.subscribe(&room, None).await;
    api.send(&t[0], &room, "seen", "seen live").await.expect(202);
    let seen = b.next_of(&["message"]).await;
    let cursor = seen["cursor"].as_str().unwrap().to_owned();
    drop(b);

    let mut sent = Vec::new();
    for i in 0..50 {
        sent.push(
            api.send(&t[0], &room, &format!("m{i}"), &format!("missed {i}"))
                .await
                .expect(202)["message_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut b = Client::connect(&s.base, &t[1]).await;
    let sub = b.subscribe(&room, Some(&cursor)).await;
    assert_eq!(sub["type"], "subscribed", "{sub}");
    // Live traffic during the catch-up must come after it, without gap or duplicate.
    let api2 = api.clone();
    let (room2, t0) = (room.clone(), t[0].clone());
    let live = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..10 {
            ids.push(
                api2.send(&t0, &room2, &format!("l{i}"), &format!("live {i}"))
                    .await
                    .expect(202)["message_id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        ids
    });
    let mut got = Vec::new();
    while got.len() < 60 {
        let f = b.next_of(&["message"]).await;
        got.push(f["message_id"].as_str().unwrap().to_owned());
    }
    sent.extend(live.await.unwrap());
    assert_eq!(
        got, sent,
        "exactly the missed messages, then the live ones, in log order"
    );
    assert!(b.quiet(300).await, "nothing more");

    // A cursor of another room or garbage is refused.
    let e = b.subscribe(&room, Some("zzzz")).await;
    assert_eq!(e["code"], "invalid_cursor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_connection_kicks_the_older_one() {
    let s = TestServer::start().await;
    let api = s.client();
    let (_, t) = api.user("dup").await;
    let mut first = Client::connect(&s.base, &t).await;
    let _second = Client::connect(&s.base, &t).await;
    let kicked = first.next().await;
    assert_eq!(kicked, json!({"type": "kicked", "reason": "duplicate_session"}));
    let close = first.next().await;
    assert_eq!(close["type"], "__close");
    assert_eq!(close["code"], 1008);
}

/// With `sessions_per_user = 2` a user's two connections live side by side
/// and both receive the room; a third kicks the oldest only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_sessions_allowed_a_third_kicks_the_oldest() {
    let s = TestServer::start_configured(|cfg| {
        cfg.fanout.sessions_per_user = 2;
    })
    .await;
    let api = s.client();
    let (room, t) = room_with(&api, "twice", &[]).await;
    let mut first = Client::connect(&s.base, &t[0]).await;
    let mut second = Client::connect(&s.base, &t[0]).await;
    assert!(first.quiet(300).await, "a second session does not kick the first");
    for c in [&mut first, &mut second] {
        assert_eq!(c.subscribe(&room, None).await["type"], "subscribed");
    }
    api.send(&t[0], &room, "both", "to both sessions").await.expect(202);
    for c in [&mut first, &mut second] {
        assert_eq!(c.next_of(&["message"]).await["text"], "to both sessions");
    }

    let mut third = Client::connect(&s.base, &t[0]).await;
    assert_eq!(
        first.next_of(&["kicked"]).await,
        json!({"type": "kicked", "reason": "duplicate_session"})
    );
    assert_eq!(first.next().await["code"], 1008);
    assert!(second.quiet(300).await, "the second session stays");
    assert_eq!(third.subscribe(&room, None).await["type"], "subscribed");
    api.send(&t[0], &room, "after", "after the kick").await.expect(202);
    for c in [&mut second, &mut third] {
        assert_eq!(c.next_of(&["message"]).await["text"], "after the kick");
    }
}

/// Keepalive: the server pings; a client that answers (tungstenite pongs as
/// it reads) outlives the idle timeout, and one that goes silent — no frame,
/// no pong — is closed with 1000 once the timeout has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_keep_a_live_client_and_a_silent_one_times_out() {
    let s = TestServer::start_configured(|cfg| {
        cfg.fanout.idle_timeout = Duration::from_millis(1200);
        cfg.fanout.ping_interval = Duration::from_millis(300);
    })
    .await;
    let api = s.client();
    let (_, alive) = api.user("alive").await;
    let (_, silent) = api.user("silent").await;
    let mut live = Client::connect(&s.base, &alive).await;
    let mut mute = Client::connect(&s.base, &silent).await;

    // The live client reads (and so answers pings) for three idle timeouts.
    let started = std::time::Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_millis(3600) {
        match tokio::time::timeout(Duration::from_millis(200), futures_util::StreamExt::next(&mut live.ws)).await {
            Err(_) => {}
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(other) => panic!("a live client stays open and gets only pings, got {other:?}"),
        }
    }
    assert!(pings >= 5, "pings every 300 ms, got {pings} in 3.6 s");
    // ... and is still served.
    live.send(json!({"type": "unsubscribe", "room_id": "nope"})).await;
    assert_eq!(live.next_of(&["error"]).await["code"], "not_subscribed");

    // The mute client has read nothing all along, so it answered no ping:
    // what is waiting for it ends in the server's close frame.
    // (Reading now answers the pings, so a server that had not closed it
    // would keep it open: bounded.)
    let close = tokio::time::timeout(Duration::from_secs(5), mute.next_of(&["__close"]))
        .await
        .expect("the silent client was closed");
    assert_eq!(close["code"], 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_bad_frames_keep_the_connection_open() {
    let s = TestServer::start().await;
    let api = s.client();
    let (room, t) = room_with(&api, "owner", &[]).await;
    let (_, stranger) = api.user("stranger").await;
    let mut c = Client::connect(&s.base, &stranger).await;
    assert_eq!(c.subscribe(&room, None).await["code"], "not_member");
    assert_eq!(c.subscribe("00000000000000ff", None).await["code"], "room_not_found");
    assert_eq!(c.subscribe("../etc", None).await["code"], "room_not_found");
    for (frame, code) in [
        ("not json".to_owned(), "invalid_json"),
        (r#"{"type":"dance"}"#.to_owned(), "unknown_type"),
        (r#"{"type":"subscribe"}"#.to_owned(), "invalid_request"),
        (r#"{"no_type":1}"#.to_owned(), "invalid_request"),
        (format!(r#"{{"type":"typing","room_id":"{room}"}}"#), "not_subscribed"),
        (
            format!(
                r#"{{"type":"send","room_id":"{room}","client_msg_id":"x","text":"{}"}}"#,
                "a".repeat(70_000)
            ),
            "frame_too_large",
        ),
    ] {
        c.ws.send(Message::text(frame)).await.unwrap();
        let e = c.next_of(&["error"]).await;
        assert_eq!(e["code"], code, "{e}");
    }
    c.ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(c.next_of(&["error"]).await["code"], "unsupported_frame");
    // A ping is answered with a pong carrying its payload.
    c.ws.send(Message::Ping(b"still there?".to_vec().into())).await.unwrap();
    let pong = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match futures_util::StreamExt::next(&mut c.ws)
                .await
                .expect("open")
                .expect("a frame")
            {
                Message::Pong(p) => return p,
                Message::Text(_) | Message::Ping(_) => continue,
                other => panic!("expected a pong, got {other:?}"),
            }
        }
    })
    .await
    .expect("a pong");
    assert_eq!(pong.as_ref(), b"still there?");
    c.send(json!({"type": "send", "room_id": room, "client_msg_id": "s1", "text": "let me in"}))
        .await;
    let e = c.next_of(&["error"]).await;
    assert_eq!(
        (e["code"].as_str(), e["client_msg_id"].as_str()),
        (Some("not_member"), Some("s1"))
    );

    // Still open: a member's connection in the same process works normally.
    let mut owner = Client::connect(&s.base, &t[0]).await;
    assert_eq!(owner.subscribe(&room, None).await["type"], "subscribed");
    c.send(json!({"type": "unsubscribe", "room_id": room})).await;
    assert_eq!(c.next_of(&["error"]).await["code"], "not_subscribed");

    // A valid token without a WebSocket handshake is told what is missing.
    let plain = api.call(reqwest::Method::GET, "/v1/ws", Some(&t[0]), None).await;
    assert_eq!(
        (plain.status.as_u16(), plain.body["error"]["code"].as_str()),
        (400, Some("upgrade_required"))
    );
    let old_version = reqwest::Client::new()
        .get(format!("{}/v1/ws", s.base))
        .bearer_auth(&t[0])
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "8")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(old_version.status().as_u16(), 400);
    let body: serde_json::Value = old_version.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upgrade_required", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("13"), "{body}");

    // Tokens are checked before the upgrade.
    let base = s.base.replace("http://", "ws://");
    for url in [format!("{base}/v1/ws"), format!("{base}/v1/ws?access_token=garbage")] {
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 401),
            other => panic!("expected a 401 refusal, got {:?}", other.map(|_| ())),
        }
    }
    api.call(reqwest::Method::POST, "/v1/auth/logout", Some(&stranger), None)
        .await;
    match tokio_tungstenite::connect_async(format!("{base}/v1/ws?access_token={stranger}")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 401),
        other => panic!("a revoked token must be refused, got {:?}", other.map(|_| ())),
    }
}

/// A client whose socket has a tiny receive buffer (4 KiB), so that a server
/// writing to it fills the kernel's buffers quickly; `hello` already read.
async fn tiny_buffer_client(s: &TestServer, token: &str) -> Client {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(s.server.as_ref().unwrap().addr).await.unwrap();
    let url = format!("{}/v1/ws?access_token={token}", s.base.replace("http://", "ws://"));
    let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    let mut client = Client { ws };
    client.next().await; // hello
    client
}

/// `n` posts of 3,900 bytes to `room` by 8 concurrent HTTP senders (several
/// MB: enough to fill a non-reading socket's kernel buffers, then its queue).
fn storm(api: &Api, token: &str, room: &str, n: usize) -> tokio::task::JoinHandle<()> {
    let (api, token, room) = (api.clone(), token.to_owned(), room.to_owned());
    tokio::spawn(async move {
        let text = "x".repeat(3900);
        let mut senders = Vec::new();
        for w in 0..8 {
            let (api, token, room, text) = (api.clone(), token.clone(), room.clone(), text.clone());
            senders.push(tokio::spawn(async move {
                for i in (w..n).step_by(8) {
                    api.send(&token, &room, &format!("k{i}"), &text).await.expect(202);
                }
            }));
        }
        for s in senders {
            s.await.unwrap();
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_disconnected_while_the_room_goes_on() {
    let s = TestServer::start_configured(|cfg| {
        // Small enough that the storm below overflows the slow reader's queue
        // many times over (1,600 frames of 4 KB); large enough that the fast
        // reader, sharing two cores with the server, the storm and the other
        // tests, never falls 64 frames behind (with 16 it sometimes did on CI).
        cfg.fanout.queue_frames = 64;
    })
    .await;
    let api = s.client();
    let (room, t) = room_with(&api, "talker", &["slow", "fast"]).await;

    // The slow client's socket has a tiny receive buffer and it never reads.
    let mut slow = tiny_buffer_client(&s, &t[1]).await;
    slow.subscribe(&room, None).await;
    let mut fast = Client::connect(&s.base, &t[2]).await;
    fast.subscribe(&room, None).await;

    // Enough traffic to fill the kernel's socket buffers (several MB), then
    // the connection's queue.
    const N: usize = 1600;
    let fast_reader = tokio::spawn(async move {
        let mut ids = Vec::new();
        while ids.len() < N {
            let f = fast.next_of(&["message"]).await;
            ids.push(f["message_id"].as_str().unwrap().to_owned());
        }
        ids
    });
    storm(&api, &t[0], &room, N).await.unwrap();
    // The fast reader got every message, in log order, while the slow one stalled.
    let got = fast_reader.await.unwrap();
    assert_eq!(got.len(), N);
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    // The slow reader, reading at last, finds its connection closed with 1013.
    let mut closed = None;
    for _ in 0..100_000 {
        let f = slow.next().await;
        if f["type"] == "__close" {
            closed = Some(f);
            break;
        }
    }
    assert_eq!(closed.expect("closed")["code"], 1013);
}

/// A client closed as too slow that keeps writing still gets its close frame
/// (1013): the server reads what the client sends until the client's own
/// close (for a bounded time) instead of dropping the socket with input
/// unread, which makes the kernel reset the connection — and the client then
/// sees an I/O error instead of the close and its code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_that_keeps_writing_still_gets_its_close_frame() {
    use futures_util::StreamExt;
    let s = TestServer::start_configured(|cfg| {
        cfg.fanout.queue_frames = 16;
    })
    .await;
    let api = s.client();
    let (room, t) = room_with(&api, "storm", &["writer", "watcher"]).await;

    let mut writer = tiny_buffer_client(&s, &t[1]).await;
    writer.subscribe(&room, None).await;
    let mut watcher = Client::connect(&s.base, &t[2]).await;
    watcher.subscribe(&room, None).await;

    // A storm the writer never reads fills its socket buffers, then its queue.
    let posting = storm(&api, &t[0], &room, 1600);
    // Meanwhile the writer types every 20 ms, and goes on typing
    // until the end. The watcher sees it relayed for as long as the server
    // reads the writer's socket; once the relays stop, the server has closed
    // it, and the writer starts reading.
    let (mut tx, mut rx) = writer.ws.split();
    let typing = Message::text(json!({"type": "typing", "room_id": room}).to_string());
    let typist = tokio::spawn(async move {
        while tx.send(typing.clone()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let started = std::time::Instant::now();
    let mut relayed_once = false;
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the writer was never closed"
        );
        // Two seconds without a relay: closed (a busy machine delays a
        // relay by milliseconds, not seconds).
        let relayed = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match watcher.next().await["type"].as_str() {
                    Some("typing") => break true,
                    Some("__close") => break false,
                    _ => {}
                }
            }
        })
        .await;
        let relayed = match relayed {
            Ok(true) => true,
            Ok(false) => {
                // On a busy machine the watcher itself can fall behind the
                // storm (the queue is 16 frames) and be closed as slow: it
                // comes back and watches on.
                watcher = Client::connect(&s.base, &t[2]).await;
                watcher.subscribe(&room, None).await;
                continue;
            }
            Err(_) => false,
        };
        relayed_once |= relayed;
        if relayed_once && !relayed {
            break;
        }
    }
    let mut code = None;
    while let Some(m) = tokio::time::timeout(Duration::from_secs(10), rx.next())
        .await
        .expect("the server ends the connection")
    {
        match m {
            Ok(Message::Close(c)) => {
                code = c.map(|c| u16::from(c.code));
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("the close frame was lost: {e}"),
        }
    }
    typist.abort();
    assert_eq!(code, Some(1013));
    posting.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emotions_arrive_on_their_own_stream_only() {
    let s = TestServer::start().await;
    let api = s.client();
    let (room, t) = room_with(&api, "emo_a", &["emo_b"]).await;
    let mut both = Client::connect(&s.base, &t[0]).await;
    both.send(json!({"type": "subscribe", "room_id": room})).await;
    assert_eq!(both.next_of(&["subscribed"]).await["room_id"], room.as_str());
    let mut chat_only = Client::connect(&s.base, &t[1]).await;
    chat_only
        .send(json!({"type": "subscribe", "room_id": room, "streams": ["chat"]}))
        .await;
    assert_eq!(chat_only.next_of(&["subscribed"]).await["room_id"], room.as_str());

    let id = api
        .send(&t[0], &room, "happy", "I am so happy today!")
        .await
        .expect(202)["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let emotion = both.next_of(&["emotion"]).await;
    assert_eq!(emotion["message_id"], id.as_str());
    assert_eq!(emotion["label"], "joy");
    assert_eq!(emotion["room_id"], room.as_str());
    assert!(emotion["scores"]["neutral"].is_number());
    // Posted after the emotion record: the chat-only subscriber sees the two
    // messages and nothing of the emotion stream between them.
    let marker = api.send(&t[0], &room, "marker", "marker").await.expect(202)["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = chat_only.next().await;
    assert_eq!(first["message_id"], id.as_str(), "{first}");
    let second = chat_only.next().await;
    assert_eq!(
        second["type"], "message",
        "no emotion frame on a chat-only subscription: {second}"
    );
    assert_eq!(second["message_id"], marker.as_str());

    // Resume covers the emotion stream too.
    let mut again = Client::connect(&s.base, &t[0]).await;
    let cursor = LogCursor::before(&id);
    again
        .send(json!({"type": "subscribe", "room_id": room, "since": cursor}))
        .await;
    let sub = again.next_of(&["subscribed", "error"]).await;
    assert_eq!(sub["type"], "subscribed", "{sub}");
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let f = again.next_of(&["message", "emotion"]).await;
        kinds.push((
            f["type"].as_str().unwrap().to_owned(),
            f["message_id"].as_str().unwrap().to_owned(),
        ));
    }
    assert!(kinds.contains(&("emotion".to_owned(), id.clone())), "{kinds:?}");
}

/// Edits and deletes over WebSocket: `edit` / `delete` frames answered
/// `edited` / `deleted` (or an error naming the message), subscribers get
/// `message_edited` / `message_deleted` live with the change's cursor, and a
/// resume replays the message and its changes in log order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_deletes_arrive_live_and_on_resume() {
    let s = TestServer::start().await;
    let api = s.client();
    let (room, t) = room_with(&api, "ann", &["ben"]).await;
    let mut a = Client::connect(&s.base, &t[0]).await;
    a.subscribe(&room, None).await;
    let mut b = Client::connect(&s.base, &t[1]).await;
    b.send(json!({"type": "subscribe", "room_id": room, "streams": ["chat"]}))
        .await;
    b.next_of(&["subscribed"]).await;
    let m = api.send(&t[0], &room, "m", "first words").await.expect(202)["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(b.next_of(&["message"]).await["message_id"], m.as_str());

    a.send(json!({"type": "edit", "room_id": room, "message_id": m, "text": "second thoughts"}))
        .await;
    let edited = a.next_of(&["edited", "error"]).await;
    assert_eq!(edited["type"], "edited", "{edited}");
    assert_eq!(edited["message_id"], m.as_str());
    let live = b.next_of(&["message_edited"]).await;
    assert_eq!(live["text"], "second thoughts");
    assert_eq!(live["room_id"], room.as_str());
    assert_eq!(live["cursor"], edited["cursor"]);
    assert_eq!(live["edited_at"], edited["edited_at"]);

    // Refusals name the message; the connection stays open.
    b.send(json!({"type": "edit", "room_id": room, "message_id": m, "text": "mine now"}))
        .await;
    let e = b.next_of(&["error"]).await;
    assert_eq!(
        (e["code"].as_str(), e["message_id"].as_str()),
        (Some("not_author"), Some(m.as_str()))
    );
    b.send(json!({"type": "delete", "room_id": room, "message_id": m}))
        .await;
    assert_eq!(b.next_of(&["error"]).await["code"], "not_author");
    b.send(json!({"type": "edit", "room_id": room, "message_id": m})).await;
    assert_eq!(b.next_of(&["error"]).await["code"], "invalid_request");
    b.send(json!({"type": "delete", "room_id": room, "message_id": "0000000000000fff"}))
        .await;
    assert_eq!(b.next_of(&["error"]).await["code"], "message_not_found");

    a.send(json!({"type": "delete", "room_id": room, "message_id": m}))
        .await;
    let deleted = a.next_of(&["deleted", "error"]).await;
    assert_eq!(deleted["type"], "deleted", "{deleted}");
    let gone = b.next_of(&["message_deleted"]).await;
    assert_eq!(gone["message_id"], m.as_str());
    assert_eq!(gone["cursor"], deleted["cursor"]);
    assert_eq!(gone["deleted_at"], deleted["deleted_at"]);
    assert!(gone.get("text").is_none(), "a delete carries no text: {gone}");
    a.send(json!({"type": "edit", "room_id": room, "message_id": m, "text": "too late"}))
        .await;
    assert_eq!(a.next_of(&["error"]).await["code"], "message_deleted");
    drop(b);

    // Resume from before the message: it is deleted now, so the catch-up
    // replays neither its text nor its edit, only the tombstone (as history
    // shows it) and the delete, in order.
    let mut again = Client::connect(&s.base, &t[1]).await;
    again
        .send(json!({"type": "subscribe", "room_id": room, "since": LogCursor::before(&m), "streams": ["chat", "emotion"]}))
        .await;
    again.next_of(&["subscribed"]).await;
    let tomb = again
        .next_of(&["message", "message_edited", "message_deleted", "emotion"])
        .await;
    assert_eq!(
        (tomb["type"].as_str(), tomb["cursor"].as_str()),
        (Some("message"), Some(m.as_str())),
        "{tomb}"
    );
    assert_eq!((&tomb["text"], &tomb["deleted"]), (&json!(""), &json!(true)), "{tomb}");
    assert_eq!(tomb["deleted_at"], deleted["deleted_at"]);
    let gone = again
        .next_of(&["message", "message_edited", "message_deleted", "emotion"])
        .await;
    assert_eq!(
        (gone["type"].as_str(), gone["cursor"].as_str()),
        (Some("message_deleted"), deleted["cursor"].as_str()),
        "{gone}"
    );
    assert!(
        again.quiet(300).await,
        "nothing else of the deleted message is replayed"
    );
}

/// Cursors are 16 hex digits: partition (4) and offset (12).
struct LogCursor;

impl LogCursor {
    /// The cursor just before a message (same partition, offset - 1).
    fn before(id: &str) -> String {
        let p = &id[..4];
        let off = u64::from_str_radix(&id[4..], 16).unwrap();
        format!("{p}{:012x}", off - 1)
    }
}

/// What a socket saw until the server closed it: its acks, the
/// `session_ended` reason, the close code.
#[derive(Debug, Default)]
struct Ending {
    acks: usize,
    reason: Option<String>,
    code: Option<u16>,
}

/// Sends on `c` every 2 ms (for at most 5 s) while reading its frames,
/// until the server closes it.
async fn send_until_closed(c: Client, room: String) -> Ending {
    use futures_util::StreamExt;
    let (mut sink, mut stream) = c.ws.split();
    let sender = tokio::spawn(async move {
        for i in 0..2500 {
            let f = json!({"type": "send", "room_id": room, "client_msg_id": format!("s{i}"), "text": format!("s{i}")});
            if sink.send(Message::text(f.to_string())).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let mut ending = Ending::default();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        match m {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                match v["type"].as_str() {
                    Some("ack") => ending.acks += 1,
                    Some("session_ended") => ending.reason = v["reason"].as_str().map(str::to_owned),
                    _ => {}
                }
            }
            Message::Close(c) => {
                ending.code = c.map(|c| u16::from(c.code));
                break;
            }
            _ => {}
        }
    }
    sender.abort();
    ending
}

/// A logout ends the session's open sockets, and only that session's:
/// `session_ended` (`logout`), then close 1008; a socket that keeps sending
/// through the logout has nothing stored once the logout is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_sessions_sockets_and_nothing_sent_after_is_stored() {
    let s = TestServer::start_configured(|cfg| {
        cfg.fanout.sessions_per_user = 2;
        cfg.ingest.message_rate = 0;
    })
    .await;
    let api = s.client();
    let (_, first) = api.user("lou").await;
    let second = api.login("lou").await["access_token"].as_str().unwrap().to_owned();
    let room = api.create_room(&first, "bye", None).await;
    let a = Client::connect(&s.base, &first).await;
    let mut b = Client::connect(&s.base, &second).await;
    let ending = tokio::spawn(send_until_closed(a, room.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.post("/v1/auth/logout", Some(&first), json!({})).await.expect(204);
    let stored = api.all_messages(&second, &room).await.len();
    let ending = ending.await.unwrap();
    assert_eq!(ending.reason.as_deref(), Some("logout"), "{ending:?}");
    assert_eq!(ending.code, Some(1008), "{ending:?}");
    assert!(ending.acks > 0 && stored >= ending.acks, "{ending:?}, {stored} stored");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        api.all_messages(&second, &room).await.len(),
        stored,
        "nothing stored after the logout was answered"
    );
    // The other session goes on.
    b.send(json!({"type": "send", "room_id": room, "client_msg_id": "b1", "text": "still here"}))
        .await;
    assert_eq!(b.next_of(&["ack", "error", "session_ended"]).await["type"], "ack");
}

/// Deleting the account ends every session's sockets (`account_deleted`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_account_ends_all_its_sockets() {
    let s = TestServer::start_configured(|cfg| cfg.fanout.sessions_per_user = 2).await;
    let api = s.client();
    let (_, first) = api.user("dee").await;
    let second = api.login("dee").await["access_token"].as_str().unwrap().to_owned();
    let mut a = Client::connect(&s.base, &first).await;
    let mut b = Client::connect(&s.base, &second).await;
    api.call(reqwest::Method::DELETE, "/v1/me", Some(&first), None)
        .await
        .expect(204);
    for c in [&mut a, &mut b] {
        let end = c.next_of(&["session_ended"]).await;
        assert_eq!(end["reason"], "account_deleted");
        assert_eq!(c.next_of(&["__close"]).await["code"], 1008);
    }
}

/// A socket lasts as long as its access token: it ends with
/// `token_expired` unless an `auth` frame brings a newer token of the same
/// session; a token of another session is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_ends_with_its_token_unless_renewed_in_band() {
    let s = TestServer::start_configured(|cfg| {
        cfg.fanout.sessions_per_user = 3;
        cfg.access_ttl = Duration::from_secs(3);
    })
    .await;
    let api = s.client();
    let (_, t1) = api.user("tia").await;
    let login2 = api.login("tia").await;
    let t2 = login2["access_token"].as_str().unwrap().to_owned();
    let started = std::time::Instant::now();
    let mut a = Client::connect(&s.base, &t1).await;
    let mut b = Client::connect(&s.base, &t2).await;

    // b renews with a refreshed token of its own session; a token of a's
    // session is refused on b.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let refreshed = api
        .post(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": login2["refresh_token"]}),
        )
        .await
        .expect(200);
    b.send(json!({"type": "auth", "access_token": t1})).await;
    assert_eq!(b.next_of(&["error"]).await["code"], "invalid_token");
    b.send(json!({"type": "auth", "access_token": refreshed["access_token"]}))
        .await;
    assert_eq!(b.next_of(&["authenticated", "error"]).await["type"], "authenticated");

    let end = a.next_of(&["session_ended"]).await;
    assert_eq!(end["reason"], "token_expired");
    assert_eq!(a.next_of(&["__close"]).await["code"], 1008);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "not before its expiry"
    );
    // b, renewed, outlives a's token.
    let room = api
        .create_room(refreshed["access_token"].as_str().unwrap(), "renewed", None)
        .await;
    assert_eq!(b.subscribe(&room, None).await["type"], "subscribed");
}

/// Abuse limits of one connection: a typing flood relays one notice per
/// second per room; a subscribe flood is answered `rate_limited` beyond 10
/// a second (burst 20), and the connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_subscribe_floods_are_contained() {
    let s = TestServer::start().await;
    let api = s.client();
    let (room, t) = room_with(&api, "flo", &["gil"]).await;
    let mut a = Client::connect(&s.base, &t[0]).await;
    let mut b = Client::connect(&s.base, &t[1]).await;
    a.subscribe(&room, None).await;
    b.subscribe(&room, None).await;
    for _ in 0..200 {
        a.send(json!({"type": "typing", "room_id": room})).await;
    }
    assert!(b.next_of(&["typing"]).await["user_id"].is_string());
    assert!(b.quiet(500).await, "one typing notice relayed, the flood dropped");

    for _ in 0..60 {
        a.send(json!({"type": "subscribe", "room_id": room, "streams": ["chat"]}))
            .await;
    }
    let (mut subscribed, mut limited) = (0, 0);
    while subscribed + limited < 60 {
        let f = a.next_of(&["subscribed", "error"]).await;
        match f["type"].as_str() {
            Some("subscribed") => subscribed += 1,
            _ => {
                assert_eq!(f["code"], "rate_limited", "{f}");
                limited += 1;
            }
        }
    }
    assert!(
        (20..=30).contains(&subscribed),
        "{subscribed} subscribed, {limited} refused"
    );
    // Still open and served.
    api.send(&t[1], &room, "after", "after the flood").await.expect(202);
    assert_eq!(a.next_of(&["message"]).await["text"], "after the flood");
}

/// A frame over 64 KiB is answered with `frame_too_large` and the socket
/// stays open; one over 1 MiB ends the connection with 1009.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_closes_with_1009() {
    let s = TestServer::start().await;
    let api = s.client();
    let (_, t) = api.user("big").await;
    let mut c = Client::connect(&s.base, &t).await;
    c.ws.send(Message::text(format!(
        "{{\"type\":\"typing\",\"room_id\":\"{}\"}}",
        "x".repeat(70_000)
    )))
    .await
    .unwrap();
    assert_eq!(c.next_of(&["error"]).await["code"], "frame_too_large");
    let _ = c.ws.send(Message::text("y".repeat(1024 * 1024 + 1))).await;
    let close = c.next_of(&["__close"]).await;
    assert_eq!(close["code"], 1009, "{close}");
}

/// Subscribes to `room` with the chat and presence streams.
async fn subscribe_presence(c: &mut Client, room: &str) {
    c.send(json!({"type": "subscribe", "room_id": room, "streams": ["chat", "presence"]}))
        .await;
    assert_eq!(c.next_of(&["subscribed", "error"]).await["type"], "subscribed");
}

/// Who has the room open: `presence` frames for arrivals and (after the
/// grace period) departures, to subscribers of the `presence` stream only,
/// with the online count; a reconnect within the grace period is neither;
/// `GET /v1/rooms/{id}/presence` lists who is here, for members only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_presence_announces_arrivals_and_departures_but_not_reconnects() {
    let grace = Duration::from_millis(600);
    let s = TestServer::start_configured(|cfg| cfg.fanout.presence_grace = grace).await;
    let api = s.client();
    let (room, t) = room_with(&api, "alice", &["bob", "dave"]).await;
    let (alice, bob, dave) = (&t[0], &t[1], &t[2]);
    let (_, carol) = api.user("carol").await;
    let alice_id = api.get("/v1/me", alice).await.expect(200)["user_id"].clone();
    let bob_id = api.get("/v1/me", bob).await.expect(200)["user_id"].clone();

    // Alice opens the room: her own arrival, one online.
    let mut a = Client::connect(&s.base, alice).await;
    subscribe_presence(&mut a, &room).await;
    let p = a.next_of(&["presence"]).await;
    assert_eq!(
        (&p["user_id"], p["state"].as_str(), p["online_count"].as_u64()),
        (&alice_id, Some("arrived"), Some(1)),
        "{p}"
    );

    // Bob opens it.
    let mut b = Client::connect(&s.base, bob).await;
    subscribe_presence(&mut b, &room).await;
    let p = a.next_of(&["presence"]).await;
    assert_eq!(
        (&p["user_id"], p["state"].as_str(), p["online_count"].as_u64()),
        (&bob_id, Some("arrived"), Some(2)),
        "{p}"
    );
    let here = api.get(&format!("/v1/rooms/{room}/presence"), dave).await.expect(200);
    assert_eq!(here["online_count"], 2);
    let mut names: Vec<&str> = here["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["alice", "bob"]);
    api.get(&format!("/v1/rooms/{room}/presence"), &carol)
        .await
        .expect_error(403, "not_member");

    // Bob's connection drops and he is back within the grace period: no
    // departure, no arrival.
    drop(b);
    let mut b = Client::connect(&s.base, bob).await;
    subscribe_presence(&mut b, &room).await;
    assert!(
        a.quiet(grace.as_millis() as u64 + 600).await,
        "a reconnect is not announced"
    );

    // Dave follows the room without the presence stream (as for an unread
    // count): he does not have it open, and hears of no presence.
    let mut d = Client::connect(&s.base, dave).await;
    assert_eq!(d.subscribe(&room, None).await["type"], "subscribed");
    assert!(a.quiet(300).await, "following without presence is not opening");
    // Then he opens it: Alice hears it, and so does he.
    subscribe_presence(&mut d, &room).await;
    assert_eq!(a.next_of(&["presence"]).await["online_count"], 3);
    assert_eq!(d.next_of(&["presence"]).await["online_count"], 3);
    // Following it again without presence closes it (after the grace period).
    assert_eq!(d.subscribe(&room, None).await["type"], "subscribed");
    let p = a.next_of(&["presence"]).await;
    assert_eq!(
        (p["state"].as_str(), p["online_count"].as_u64()),
        (Some("left"), Some(2)),
        "{p}"
    );
    assert!(d.quiet(300).await, "no presence frames without the presence stream");

    // Bob closes the room for good: announced once the grace period is over.
    let closed = std::time::Instant::now();
    b.send(json!({"type": "unsubscribe", "room_id": room})).await;
    let p = a.next_of(&["presence"]).await;
    assert!(closed.elapsed() >= grace, "not before the grace period ends");
    assert_eq!(
        (&p["user_id"], p["state"].as_str(), p["online_count"].as_u64()),
        (&bob_id, Some("left"), Some(1)),
        "{p}"
    );
    let here = api.get(&format!("/v1/rooms/{room}/presence"), alice).await.expect(200);
    assert_eq!(here["online_count"], 1);

    // The node counts what it announced.
    let metrics = reqwest::get(format!("{}/metrics", s.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |state: &str| -> f64 {
        let prefix = format!("emosation_presence_announcements_total{{state=\"{state}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(
        (count("arrived"), count("left")),
        (3.0, 2.0),
        "alice, bob, dave; dave, bob"
    );

    // A bad stream name is refused.
    a.send(json!({"type": "subscribe", "room_id": room, "streams": ["presence", "gossip"]}))
        .await;
    assert_eq!(a.next_of(&["error"]).await["code"], "invalid_request");
}

/// Friend notices reach every connection of the person concerned, without
/// subscribing to anything: a request, then its acceptance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friend_requests_and_acceptances_are_notified_over_the_socket() {
    let s = TestServer::start().await;
    let api = s.client();
    let (alice_id, alice) = api.user("alice").await;
    let (bob_id, bob) = api.user("bob").await;
    let mut a = Client::connect(&s.base, &alice).await;
    let mut b = Client::connect(&s.base, &bob).await;

    api.post("/v1/friends/requests", Some(&bob), json!({"username": "alice"}))
        .await
        .expect(200);
    let n = a.next_of(&["notification"]).await;
    assert_eq!(
        (n["kind"].as_str(), n["user_id"].as_str(), n["username"].as_str()),
        (Some("friend_request"), Some(bob_id.as_str()), Some("bob")),
        "{n}"
    );
    assert_eq!(n["room_id"].as_str().map(str::len), Some(16), "the pair's room: {n}");
    assert!(b.quiet(300).await, "the one who asked hears nothing");

    api.post(
        &format!("/v1/friends/requests/{bob_id}/accept"),
        Some(&alice),
        json!({}),
    )
    .await
    .expect(200);
    let n = b.next_of(&["notification"]).await;
    assert_eq!(
        (n["kind"].as_str(), n["user_id"].as_str(), n["username"].as_str()),
        (Some("friend_accepted"), Some(alice_id.as_str()), Some("alice")),
        "{n}"
    );
    // A decline or a cancel is not announced.
    let (_, carol) = api.user("carol").await;
    api.post("/v1/friends/requests", Some(&carol), json!({"username": "alice"}))
        .await
        .expect(200);
    assert_eq!(a.next_of(&["notification"]).await["username"], "carol");
    let carol_id = api.get("/v1/me", &carol).await.expect(200)["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    api.post(
        &format!("/v1/friends/requests/{carol_id}/decline"),
        Some(&alice),
        json!({}),
    )
    .await
    .expect(200);
    assert!(a.quiet(300).await);
}
