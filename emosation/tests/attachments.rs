//! Attachments end to end (issue 20): uploads streamed to the blob store,
//! downloads for the room's members with ranges and safe headers, messages
//! that carry them over HTTP and WebSocket (history, live frames, resume),
//! the size limit, and the garbage collection of uploads never sent.

#[macro_use]
mod common;

use std::time::Duration;

use common::ws_client::Client;
use common::{Api, TestServer};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A PNG's signature and header chunk: enough for its width and height.
fn png(width: u32, height: u32, tail: usize) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    b.extend_from_slice(&width.to_be_bytes());
    b.extend_from_slice(&height.to_be_bytes());
    b.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
    b.extend((0..tail).map(|i| (i % 251) as u8));
    b
}

/// Uploads `body` to `room` as `name` (query parameter) with `content_type`.
async fn upload(
    api: &Api,
    token: &str,
    room: &str,
    name: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> common::Resp {
    let path = format!("/v1/rooms/{room}/attachments?name={name}");
    api.raw(Method::POST, &path, Some(token), content_type, body).await
}

/// A download's status, headers and bytes.
async fn download(api: &Api, token: &str, id: &str, range: Option<&str>) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = api
        .http
        .get(format!("{}/v1/attachments/{id}", api.base))
        .bearer_auth(token);
    if let Some(r) = range {
        req = req.header("range", r);
    }
    let res = req.send().await.unwrap();
    let (status, headers) = (res.status().as_u16(), res.headers().clone());
    (status, headers, res.bytes().await.unwrap().to_vec())
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn uploads_downloads_and_messages_that_carry_them(s: TestServer) {
    let api = s.client();
    let (alice_id, alice) = api.user("alice").await;
    let (_, bob) = api.user("bob").await;
    let (_, carol) = api.user("carol").await;
    let room = api.create_room(&alice, "files", None).await;
    let other_room = api.create_room(&alice, "elsewhere", None).await;
    api.post(&format!("/v1/rooms/{room}/join"), Some(&bob), json!({}))
        .await
        .expect(200);

    // An image without a declared type: sniffed, and its size read.
    let image = png(640, 480, 5_000);
    let up = upload(&api, &alice, &room, "cat%20photo.png", None, image.clone())
        .await
        .expect(201);
    let image_id = up["attachment_id"].as_str().unwrap().to_owned();
    assert_eq!(up["room_id"], room.as_str());
    assert_eq!(up["file_name"], "cat photo.png");
    assert_eq!(up["size"], image.len());
    assert_eq!(up["content_type"], "image/png");
    assert_eq!((up["width"].clone(), up["height"].clone()), (json!(640), json!(480)));
    assert_eq!(up["url"], format!("/v1/attachments/{image_id}"));
    // A page, declared as one, named by the header (percent-encoded UTF-8).
    let page = api
        .http
        .post(format!("{}/v1/rooms/{room}/attachments", api.base))
        .bearer_auth(&alice)
        .header("content-type", "text/html; charset=utf-8")
        .header("x-file-name", "%ED%8E%98%EC%9D%B4%EC%A7%80.html")
        .body("<script>alert(1)</script>")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 201);
    let page: Value = page.json().await.unwrap();
    let page_id = page["attachment_id"].as_str().unwrap().to_owned();
    assert_eq!(page["file_name"], "페이지.html");
    assert_eq!(page["content_type"], "text/html");
    assert_eq!(page["width"], Value::Null);

    // Members only, both ways.
    upload(&api, &carol, &room, "x.bin", None, vec![1, 2, 3])
        .await
        .expect_error(403, "not_member");
    let (status, _, body) = download(&api, &carol, &image_id, None).await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    // Not sent yet: the uploader's alone.
    assert_eq!(download(&api, &bob, &image_id, None).await.0, 404);
    for bad in [
        "nope",
        "00000000000000ff0000000000000001",
        &format!("{room}0000000000009999"),
    ] {
        let (status, _, body) = download(&api, &alice, bad, None).await;
        assert!(status == 404 || status == 403, "{bad}: {status}");
        let err: Value = serde_json::from_slice(&body).unwrap();
        assert!(err["error"]["code"].is_string(), "{err}");
    }

    // The bytes, whole and in ranges, with the stored type and safe headers.
    let (status, h, body) = download(&api, &alice, &image_id, None).await;
    assert_eq!(status, 200);
    assert_eq!(body, image);
    assert_eq!(header(&h, "content-type"), "image/png");
    assert!(header(&h, "content-disposition").starts_with("inline;"), "{h:?}");
    assert_eq!(header(&h, "x-content-type-options"), "nosniff");
    assert!(header(&h, "content-security-policy").contains("sandbox"));
    assert_eq!(header(&h, "accept-ranges"), "bytes");
    let (status, h, body) = download(&api, &alice, &image_id, Some("bytes=10-19")).await;
    assert_eq!(status, 206);
    assert_eq!(body, image[10..20]);
    assert_eq!(header(&h, "content-range"), format!("bytes 10-19/{}", image.len()));
    let (status, _, body) = download(&api, &alice, &image_id, Some("bytes=-7")).await;
    assert_eq!((status, body.as_slice()), (206, &image[image.len() - 7..]));
    let (status, h, body) = download(&api, &alice, &image_id, Some("bytes=999999-")).await;
    assert_eq!(status, 416);
    assert_eq!(header(&h, "content-range"), format!("bytes */{}", image.len()));
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(err["error"]["code"], "range_not_satisfiable");
    // A page is a download, never rendered.
    let (status, h, body) = download(&api, &alice, &page_id, None).await;
    assert_eq!(status, 200);
    assert_eq!(body, b"<script>alert(1)</script>");
    assert!(header(&h, "content-disposition").starts_with("attachment;"), "{h:?}");
    assert!(header(&h, "content-disposition").contains("filename*=UTF-8''%ED%8E%98"));
    assert_eq!(header(&h, "x-content-type-options"), "nosniff");

    // Messages carry only the sender's unsent uploads to the same room.
    let elsewhere = upload(&api, &alice, &other_room, "e.txt", Some("text/plain"), b"hi".to_vec())
        .await
        .expect(201);
    let bobs = upload(&api, &bob, &room, "b.txt", Some("text/plain"), b"bob".to_vec())
        .await
        .expect(201);
    let send = |token: &str, cmid: &str, files: Vec<&str>| {
        let api = api.clone();
        let (token, cmid, room) = (token.to_owned(), cmid.to_owned(), room.clone());
        let files: Vec<String> = files.into_iter().map(str::to_owned).collect();
        async move {
            api.post(
                &format!("/v1/rooms/{room}/messages"),
                Some(&token),
                json!({"client_msg_id": cmid, "text": "", "attachments": files}),
            )
            .await
        }
    };
    for (files, why) in [
        (vec![elsewhere["attachment_id"].as_str().unwrap()], "another room's"),
        (vec![bobs["attachment_id"].as_str().unwrap()], "another sender's"),
        (vec![image_id.as_str(), image_id.as_str()], "twice"),
        (vec!["not-an-id"], "not an id"),
    ] {
        let r = send(&alice, "bad", files).await;
        assert_eq!(r.status.as_u16(), 400, "{why}: {}", r.body);
        assert!(
            r.code() == "invalid_attachment" || r.code() == "invalid_request",
            "{why}: {}",
            r.body
        );
    }
    // Empty text without attachments is still refused.
    send(&alice, "empty", vec![]).await.expect_error(400, "invalid_request");

    let mut bobs_socket = Client::connect(&s.base, &bob).await;
    assert_eq!(bobs_socket.subscribe(&room, None).await["type"], "subscribed");
    let sent = send(&alice, "m1", vec![&image_id, &page_id]).await.expect(202);
    let message_id = sent["message_id"].as_str().unwrap().to_owned();
    // A retry answers the first message; another message may not reuse them.
    assert_eq!(
        send(&alice, "m1", vec![&image_id, &page_id]).await.expect(202)["message_id"],
        message_id.as_str()
    );
    send(&alice, "m2", vec![&image_id])
        .await
        .expect_error(400, "invalid_attachment");

    let check = |m: &Value| {
        assert_eq!(m["message_id"], message_id.as_str(), "{m}");
        assert_eq!(m["author_id"], alice_id.as_str());
        let files = m["attachments"].as_array().expect("attachments");
        assert_eq!(files.len(), 2, "{m}");
        assert_eq!(files[0]["attachment_id"], image_id.as_str());
        assert_eq!(files[0]["file_name"], "cat photo.png");
        assert_eq!(files[0]["size"], image.len());
        assert_eq!(files[0]["content_type"], "image/png");
        assert_eq!(
            (files[0]["width"].clone(), files[0]["height"].clone()),
            (json!(640), json!(480))
        );
        assert_eq!(files[0]["url"], format!("/v1/attachments/{image_id}"));
        assert_eq!(files[1]["attachment_id"], page_id.as_str());
        assert_eq!(files[1]["content_type"], "text/html");
    };
    check(&bobs_socket.next_of(&["message"]).await);
    let history = api.all_messages(&bob, &room).await;
    check(history.last().unwrap());
    // Sent: now every member's.
    let (status, _, body) = download(&api, &bob, &image_id, Some("bytes=0-7")).await;
    assert_eq!((status, body.as_slice()), (206, &image[..8]));

    // Over the socket: a send frame with attachments, acked, delivered, resumed.
    let note = upload(&api, &alice, &room, "note.txt", Some("text/plain"), b"a note".to_vec())
        .await
        .expect(201);
    let note_id = note["attachment_id"].as_str().unwrap().to_owned();
    let mut alices_socket = Client::connect(&s.base, &alice).await;
    alices_socket
        .send(json!({"type": "send", "room_id": room, "client_msg_id": "w1", "text": "see", "attachments": [note_id]}))
        .await;
    let ack = alices_socket.next_of(&["ack", "error"]).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let live = bobs_socket.next_of(&["message"]).await;
    assert_eq!(live["attachments"][0]["attachment_id"], note_id.as_str(), "{live}");
    assert_eq!(live["attachments"][0]["file_name"], "note.txt");
    assert_eq!(live["attachments"][0]["width"], Value::Null);
    let mut resumed = Client::connect(&s.base, &bob).await;
    resumed.subscribe(&room, Some(&message_id)).await;
    let again = resumed.next_of(&["message"]).await;
    assert_eq!(again["message_id"], ack["message_id"], "{again}");
    assert_eq!(again["attachments"][0]["attachment_id"], note_id.as_str());
    alices_socket
        .send(json!({"type": "send", "room_id": room, "client_msg_id": "w2", "text": "x", "attachments": [note_id]}))
        .await;
    let refused = alices_socket.next_of(&["ack", "error"]).await;
    assert_eq!(refused["code"], "invalid_attachment", "{refused}");

    // A deleted message's files go with it.
    api.call(
        Method::DELETE,
        &format!("/v1/rooms/{room}/messages/{message_id}"),
        Some(&alice),
        None,
    )
    .await
    .expect(200);
    assert_eq!(download(&api, &bob, &image_id, None).await.0, 404);
    let tomb = api.all_messages(&bob, &room).await;
    let tomb = tomb.iter().find(|m| m["message_id"] == message_id.as_str()).unwrap();
    assert!(tomb.get("attachments").is_none(), "{tomb}");
}

/// Past the limit: refused by its declared length before a byte is read,
/// and, streamed without one, as soon as it passes the limit; nothing kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_over_the_limit_are_refused_with_413() {
    let s = TestServer::start_configured(|c| c.ingest.attachment_max_bytes = 64 * 1024).await;
    let api = s.client();
    let (_, alice) = api.user("alice").await;
    let room = api.create_room(&alice, "big", None).await;
    upload(&api, &alice, &room, "big.bin", None, vec![7; 64 * 1024 + 1])
        .await
        .expect_error(413, "payload_too_large");
    upload(&api, &alice, &room, "fits.bin", None, vec![7; 64 * 1024])
        .await
        .expect(201);

    // Chunked, no length: the server stops reading past the limit.
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/rooms/{room}/attachments?name=c.bin HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {alice}\r\n\
         transfer-encoding: chunked\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 16 * 1024];
    for _ in 0..8 {
        let mut c = format!("{:x}\r\n", chunk.len()).into_bytes();
        c.extend_from_slice(&chunk);
        c.extend_from_slice(b"\r\n");
        if tcp.write_all(&c).await.is_err() {
            break;
        }
    }
    let _ = tcp.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    // Nothing of it stayed behind: one blob (the one that fit).
    let files = walk(&s.dir.join("blobs").join("sha256"));
    assert_eq!(files.len(), 1, "{files:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// Uploads no message carried are expired after the delay — a record on the
/// log, so a replay agrees — and their blobs deleted; sent ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsent_uploads_are_collected_after_the_delay() {
    // Without the analyzer, whose emotions may still be on their way when
    // the server stops (replays with emotions are tested elsewhere).
    let mut s = TestServer::start_configured(|c| {
        c.attachment_gc_after = Duration::from_secs(1);
        c.roles.analyzer = false;
    })
    .await;
    let api = s.client();
    let (_, alice) = api.user("alice").await;
    let room = api.create_room(&alice, "gc", None).await;
    let kept = upload(&api, &alice, &room, "kept.png", None, png(2, 2, 10))
        .await
        .expect(201);
    let kept_id = kept["attachment_id"].as_str().unwrap().to_owned();
    api.post(
        &format!("/v1/rooms/{room}/messages"),
        Some(&alice),
        json!({"client_msg_id": "k", "text": "kept", "attachments": [kept_id]}),
    )
    .await
    .expect(202);
    let dropped = upload(&api, &alice, &room, "dropped.bin", None, vec![9; 1000])
        .await
        .expect(201);
    let dropped_id = dropped["attachment_id"].as_str().unwrap().to_owned();
    assert_eq!(walk(&s.dir.join("blobs").join("sha256")).len(), 2);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while download(&api, &alice, &dropped_id, None).await.0 != 404 {
        assert!(tokio::time::Instant::now() < deadline, "never collected");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Collected: too late to send, its bytes gone; the sent one untouched.
    api.post(
        &format!("/v1/rooms/{room}/messages"),
        Some(&alice),
        json!({"client_msg_id": "late", "text": "", "attachments": [dropped_id]}),
    )
    .await
    .expect_error(400, "invalid_attachment");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while walk(&s.dir.join("blobs").join("sha256")).len() != 1 {
        assert!(tokio::time::Instant::now() < deadline, "blob not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(download(&api, &alice, &kept_id, None).await.0, 200);
    // The expiry is on the log: a replay rebuilds the same views.
    let dir = s.dir.clone();
    s.stop().await;
    let engines = emosation::system::Engines::embedded(&dir);
    let (log, views) = (engines.open_log().await.unwrap(), engines.open_views().await.unwrap());
    let live = views.checksum().await.unwrap();
    emosation_projector::replay(log, std::sync::Arc::clone(&views), std::sync::Arc::new(|_, _| {}))
        .await
        .unwrap();
    assert_eq!(views.checksum().await.unwrap(), live);
}

on_every_store!(uploads_downloads_and_messages_that_carry_them);
