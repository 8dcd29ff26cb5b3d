//! The HTTP contract against a real server on 127.0.0.1:0.

#[macro_use]
mod common;

use std::collections::HashSet;
use std::sync::Arc;

use base64::Engine;
use common::{SECRET, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

async fn accounts_signup_login_refresh_me_logout(s: TestServer) {
    let api = s.client();

    let created = api.signup("alice").await.expect(201);
    assert_eq!(created["username"], "alice");
    let user_id = created["user_id"].as_str().unwrap().to_owned();
    api.signup("alice").await.expect_error(409, "username_taken");

    // Validation.
    for bad in ["al", "Alice", "with space", "ü_nicode", &"a".repeat(33)] {
        api.post(
            "/v1/auth/signup",
            None,
            json!({"username": bad, "password": "long enough"}),
        )
        .await
        .expect_error(400, "invalid_request");
    }
    api.post("/v1/auth/signup", None, json!({"username": "bob", "password": "short"}))
        .await
        .expect_error(400, "invalid_request");
    api.post(
        "/v1/auth/signup",
        None,
        json!({"username": "bob", "password": "x".repeat(129)}),
    )
    .await
    .expect_error(400, "invalid_request");

    // Login.
    api.post(
        "/v1/auth/login",
        None,
        json!({"username": "alice", "password": "wrong password"}),
    )
    .await
    .expect_error(401, "invalid_credentials");
    api.post(
        "/v1/auth/login",
        None,
        json!({"username": "nobody", "password": "correct horse"}),
    )
    .await
    .expect_error(401, "invalid_credentials");
    let login = api.login("alice").await;
    assert_eq!(login["token_type"], "Bearer");
    assert_eq!(login["user_id"], user_id.as_str());
    assert!(login["expires_in"].as_u64().unwrap() > 0);
    let access = login["access_token"].as_str().unwrap().to_owned();
    let refresh = login["refresh_token"].as_str().unwrap().to_owned();

    let me = api.get("/v1/me", &access).await.expect(200);
    assert_eq!(me["user_id"], user_id.as_str());
    assert_eq!(me["username"], "alice");
    assert!(me["created_at"].as_str().unwrap().ends_with('Z'));

    // A refresh token is not an access token, and vice versa.
    api.get("/v1/me", &refresh).await.expect_error(401, "invalid_token");
    api.post("/v1/auth/refresh", None, json!({"refresh_token": access}))
        .await
        .expect_error(401, "invalid_token");
    let refreshed = api
        .post("/v1/auth/refresh", None, json!({"refresh_token": refresh}))
        .await
        .expect(200);
    let access2 = refreshed["access_token"].as_str().unwrap().to_owned();
    api.get("/v1/me", &access2).await.expect(200);

    // Logout revokes the session: its access and refresh tokens all stop working.
    let other = api.login("alice").await["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        api.call(Method::POST, "/v1/auth/logout", Some(&access), None)
            .await
            .status,
        204
    );
    api.get("/v1/me", &access).await.expect_error(401, "invalid_token");
    api.get("/v1/me", &access2).await.expect_error(401, "invalid_token");
    api.post("/v1/auth/refresh", None, json!({"refresh_token": refresh}))
        .await
        .expect_error(401, "invalid_token");
    api.call(Method::POST, "/v1/auth/logout", Some(&access), None)
        .await
        .expect_error(401, "invalid_token");
    // Another session of the same user is unaffected.
    api.get("/v1/me", &other).await.expect(200);

    // No token at all.
    api.call(Method::GET, "/v1/me", None, None)
        .await
        .expect_error(401, "unauthorized");
}

async fn soft_delete_refuses_login_keeps_data_and_admin_restores(s: TestServer) {
    let api = s.client();
    let (uid, token) = api.user("carol").await;
    let room = api.create_room(&token, "kept", None).await;
    api.send(&token, &room, "c1", "before delete").await.expect(202);

    assert_eq!(api.call(Method::DELETE, "/v1/me", Some(&token), None).await.status, 204);
    api.get("/v1/me", &token).await.expect_error(401, "invalid_token");
    api.post(
        "/v1/auth/login",
        None,
        json!({"username": "carol", "password": "correct horse"}),
    )
    .await
    .expect_error(401, "invalid_credentials");
    // The name stays taken: data is kept.
    api.signup("carol").await.expect_error(409, "username_taken");

    // Admin restore needs the admin token.
    let path = format!("/v1/admin/users/{uid}/restore");
    let r = api.raw(Method::POST, &path, None, None, vec![]).await;
    r.expect_error(403, "forbidden");
    let res = api
        .http
        .post(format!("{}{}", api.base, path))
        .header("x-admin-token", "admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    let token = api.login("carol").await["access_token"].as_str().unwrap().to_owned();
    let history = api.get(&format!("/v1/rooms/{room}/messages"), &token).await.expect(200);
    assert_eq!(history["messages"][0]["text"], "before delete");
}

async fn forged_alg_none_expired_and_garbage_tokens_are_refused(s: TestServer) {
    let api = s.client();
    let (uid, token) = api.user("dave").await;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // The genuine token's session: a token naming a session no login opened
    // is refused whatever its signature.
    let genuine: Value = serde_json::from_slice(&b64.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
    let sid = genuine["sid"].as_str().unwrap();
    let claims = |exp: i64| json!({"iss": "emosation", "aud": "emosation-api", "sub": uid, "name": "dave", "sid": sid, "typ": "access", "iat": now, "nbf": now, "exp": exp, "jti": "x"});

    // alg:none with valid-looking claims.
    let none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims(now + 600).to_string())
    );
    // Signed with another key.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(now + 600),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-server-secret-not-the-server-secret"),
    )
    .unwrap();
    // Right key, but expired.
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(now - 3600),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    // Right key, wrong algorithm.
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims(now + 600),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    // A genuine token with one payload byte changed.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut payload = b64.decode(&parts[1]).unwrap();
    let i = payload.len() / 2;
    payload[i] ^= 1;
    parts[1] = b64.encode(payload);
    let tampered = parts.join(".");

    for (what, t) in [
        ("none", none),
        ("forged", forged),
        ("expired", expired),
        ("hs512", hs512),
        ("tampered", tampered),
        ("garbage", "abc.def".to_owned()),
    ] {
        let r = api.get("/v1/me", &t).await;
        assert_eq!(r.status.as_u16(), 401, "{what}: {}", r.body);
        assert_eq!(r.code(), "invalid_token", "{what}");
    }
    // The right key and claims still work, so the refusals above were about the tokens.
    let valid = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(now + 600),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    api.get("/v1/me", &valid).await.expect(200);
}

async fn rooms_membership_messages_and_unread(s: TestServer) {
    let api = s.client();
    let (alice_id, alice) = api.user("alice").await;
    let (bob_id, bob) = api.user("bob").await;

    let created = api
        .post("/v1/rooms", Some(&alice), json!({"name": "  lobby ", "capacity": 3}))
        .await
        .expect(201);
    assert_eq!(created["name"], "lobby");
    assert_eq!(created["capacity"], 3);
    assert_eq!(created["owner_id"], alice_id.as_str());
    assert_eq!(created["member_count"], 1);
    let room = created["room_id"].as_str().unwrap().to_owned();
    let default_cap = api
        .post("/v1/rooms", Some(&alice), json!({"name": "big"}))
        .await
        .expect(201);
    assert_eq!(default_cap["capacity"], 100);

    for bad in [
        json!({"name": ""}),
        json!({"name": "x", "capacity": 0}),
        json!({"name": "x", "capacity": "3"}),
        json!({"capacity": 3}),
        json!({"name": "a".repeat(101)}),
    ] {
        let r = api.post("/v1/rooms", Some(&alice), bad.clone()).await;
        r.expect_error(400, "invalid_request");
    }

    let listed = s.client().call(Method::GET, "/v1/rooms", None, None).await.expect(200);
    assert_eq!(listed["rooms"].as_array().unwrap().len(), 2);
    let one = api.get(&format!("/v1/rooms/{room}"), &bob).await.expect(200);
    assert_eq!(one["member_count"], 1);
    api.get("/v1/rooms/00000000000000ff", &bob)
        .await
        .expect_error(404, "room_not_found");
    api.get("/v1/rooms/not-an-id", &bob)
        .await
        .expect_error(404, "room_not_found");

    // Non-members are refused.
    api.get(&format!("/v1/rooms/{room}/members"), &bob)
        .await
        .expect_error(403, "not_member");
    api.get(&format!("/v1/rooms/{room}/messages"), &bob)
        .await
        .expect_error(403, "not_member");
    api.get(&format!("/v1/rooms/{room}/emotions"), &bob)
        .await
        .expect_error(403, "not_member");
    api.send(&bob, &room, "b1", "let me in")
        .await
        .expect_error(403, "not_member");
    api.post(&format!("/v1/rooms/{room}/quit"), Some(&bob), json!({}))
        .await
        .expect_error(403, "not_member");
    api.send(&bob, "00000000000000ff", "b1", "hi")
        .await
        .expect_error(404, "room_not_found");
    api.post("/v1/rooms/00000000000000ff/join", Some(&bob), json!({}))
        .await
        .expect_error(404, "room_not_found");

    // Join (twice is a no-op), members.
    let j = api
        .post(&format!("/v1/rooms/{room}/join"), Some(&bob), json!({}))
        .await
        .expect(200);
    assert_eq!(j, json!({"room_id": room, "member_count": 2}));
    let j = api
        .post(&format!("/v1/rooms/{room}/join"), Some(&bob), json!({}))
        .await
        .expect(200);
    assert_eq!(j["member_count"], 2);
    let members = api.get(&format!("/v1/rooms/{room}/members"), &bob).await.expect(200);
    let mut names: Vec<_> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["username"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["alice", "bob"]);

    // Messages: validation, ordering, history fields.
    api.send(&alice, &room, "a0", "")
        .await
        .expect_error(400, "invalid_request");
    api.send(&alice, &room, "a0", &"x".repeat(4001))
        .await
        .expect_error(400, "invalid_request");
    api.send(&alice, &room, "", "no key")
        .await
        .expect_error(400, "invalid_request");
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = api
            .send(&alice, &room, &format!("a{i}"), &format!("hello {i}"))
            .await
            .expect(202);
        assert_eq!(r["message_id"], r["cursor"]);
        ids.push(r["message_id"].as_str().unwrap().to_owned());
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "message ids sort in log order");
    let h = api.get(&format!("/v1/rooms/{room}/messages"), &bob).await.expect(200);
    let msgs = h["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 5);
    assert_eq!(msgs[0]["text"], "hello 0");
    assert_eq!(msgs[4]["author"], "alice");
    assert_eq!(msgs[4]["author_id"], alice_id.as_str());
    assert_eq!(msgs[4]["room_id"], room.as_str());
    assert!(msgs[4]["created_at"].as_str().unwrap().contains('T'));
    assert_eq!(h["next_before"], serde_json::Value::Null);

    // Unread: bob has 5, alice 0 (own messages count as read).
    let mine = api.get("/v1/me/rooms", &bob).await.expect(200);
    let r = &mine["rooms"][0];
    assert_eq!(r["room_id"], room.as_str());
    assert_eq!(r["unread_count"], 5);
    assert_eq!(r["member_count"], 2);
    let mine = api.get("/v1/me/rooms", &alice).await.expect(200);
    let lobby = mine["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room_id"] == room.as_str())
        .unwrap()
        .clone();
    assert_eq!(lobby["unread_count"], 0);
    assert_eq!(lobby["last_read_message_id"], ids[4].as_str());

    // Read markers.
    assert_eq!(
        api.post(
            &format!("/v1/rooms/{room}/read"),
            Some(&bob),
            json!({"message_id": ids[2]})
        )
        .await
        .status,
        204
    );
    let mine = api.get("/v1/me/rooms", &bob).await.expect(200);
    assert_eq!(mine["rooms"][0]["unread_count"], 2);
    assert_eq!(mine["rooms"][0]["last_read_message_id"], ids[2].as_str());
    // Markers never move backwards.
    assert_eq!(
        api.post(
            &format!("/v1/rooms/{room}/read"),
            Some(&bob),
            json!({"message_id": ids[0]})
        )
        .await
        .status,
        204
    );
    assert_eq!(
        api.get("/v1/me/rooms", &bob).await.expect(200)["rooms"][0]["unread_count"],
        2
    );
    api.post(
        &format!("/v1/rooms/{room}/read"),
        Some(&bob),
        json!({"message_id": "0000ffffffffffff"}),
    )
    .await
    .expect_error(404, "message_not_found");
    api.post(
        &format!("/v1/rooms/{room}/read"),
        Some(&bob),
        json!({"message_id": "nope"}),
    )
    .await
    .expect_error(400, "invalid_request");

    // Quit.
    let q = api
        .post(&format!("/v1/rooms/{room}/quit"), Some(&bob), json!({}))
        .await
        .expect(200);
    assert_eq!(q["member_count"], 1);
    api.get(&format!("/v1/rooms/{room}/messages"), &bob)
        .await
        .expect_error(403, "not_member");
    assert!(
        api.get("/v1/me/rooms", &bob).await.expect(200)["rooms"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let _ = bob_id;

    // Emotions: shaped, with a count for every label.
    let e = api.get(&format!("/v1/rooms/{room}/emotions"), &alice).await.expect(200);
    assert!(e["emotions"].is_array());
    for l in ["joy", "sadness", "anger", "fear", "surprise", "disgust", "neutral"] {
        assert!(e["summary"][l].is_u64(), "summary has {l}: {e}");
    }
}

async fn history_pages_by_cursor(s: TestServer) {
    let api = s.client();
    let (_, t) = api.user("pager").await;
    let room = api.create_room(&t, "pages", None).await;
    let mut ids = Vec::new();
    for i in 0..120 {
        ids.push(
            api.send(&t, &room, &format!("m{i}"), &format!("n{i}"))
                .await
                .expect(202)["message_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let p1 = api
        .get(&format!("/v1/rooms/{room}/messages?limit=50"), &t)
        .await
        .expect(200);
    let m1 = p1["messages"].as_array().unwrap();
    assert_eq!(m1.len(), 50);
    assert_eq!(m1[0]["text"], "n70");
    assert_eq!(m1[49]["text"], "n119");
    let nb = p1["next_before"].as_str().unwrap();
    assert_eq!(nb, ids[70]);
    let p2 = api
        .get(&format!("/v1/rooms/{room}/messages?limit=50&before={nb}"), &t)
        .await
        .expect(200);
    assert_eq!(p2["messages"][0]["text"], "n20");
    let nb = p2["next_before"].as_str().unwrap();
    let p3 = api
        .get(&format!("/v1/rooms/{room}/messages?limit=50&before={nb}"), &t)
        .await
        .expect(200);
    assert_eq!(p3["messages"].as_array().unwrap().len(), 20);
    assert_eq!(p3["next_before"], serde_json::Value::Null, "start of the room");
    let default = api.get(&format!("/v1/rooms/{room}/messages"), &t).await.expect(200);
    assert_eq!(default["messages"].as_array().unwrap().len(), 50);
    assert_eq!(api.all_messages(&t, &room).await.len(), 120);

    for bad in ["limit=0", "limit=201", "limit=abc", "limit=-1", "before=xyz"] {
        api.get(&format!("/v1/rooms/{room}/messages?{bad}"), &t)
            .await
            .expect_error(400, "invalid_request");
    }
    let max = api
        .get(&format!("/v1/rooms/{room}/messages?limit=200"), &t)
        .await
        .expect(200);
    assert_eq!(max["messages"].as_array().unwrap().len(), 120);
}

async fn client_msg_id_repeat_returns_the_first_id_and_stores_one_copy(s: TestServer) {
    let api = s.client();
    let (_, t) = api.user("idem").await;
    let room = api.create_room(&t, "idem", None).await;
    let first = api.send(&t, &room, "same-key", "once").await.expect(202);
    // Sequential repeats, even with another text.
    for text in ["once", "different text"] {
        let again = api.send(&t, &room, "same-key", text).await.expect(202);
        assert_eq!(again["message_id"], first["message_id"]);
        assert_eq!(again["cursor"], first["cursor"]);
    }
    // Concurrent repeats of a fresh key: all answers agree, one copy stored.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (api, t, room) = (api.clone(), t.clone(), room.clone());
        tasks.push(tokio::spawn(async move {
            api.send(&t, &room, "racy-key", "race").await.expect(202)
        }));
    }
    let mut ids = HashSet::new();
    for task in tasks {
        ids.insert(task.await.unwrap()["message_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "every repeat answered with the first id");
    let all = api.all_messages(&t, &room).await;
    assert_eq!(all.len(), 2, "one stored copy per key: {all:?}");
    // The key is per sender: another member may use the same key.
    let (_, other) = api.user("other").await;
    api.post(&format!("/v1/rooms/{room}/join"), Some(&other), json!({}))
        .await
        .expect(200);
    let theirs = api.send(&other, &room, "same-key", "mine").await.expect(202);
    assert_ne!(theirs["message_id"], first["message_id"]);
}

async fn three_hundred_concurrent_identical_signups_make_one_account(s: TestServer) {
    let api = s.client();
    let mut tasks = Vec::new();
    for _ in 0..300 {
        let api = api.clone();
        // Beyond the password-hashing queue a sign-up is answered
        // `overloaded` at once: a client retries it.
        tasks.push(tokio::spawn(async move {
            loop {
                let r = api.signup("popular").await;
                if r.status.as_u16() != 503 || r.code() != "overloaded" {
                    return r;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }));
    }
    let mut created = Vec::new();
    let mut taken = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            201 => created.push(r.body["user_id"].as_str().unwrap().to_owned()),
            409 => {
                assert_eq!(r.code(), "username_taken");
                taken += 1
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert_eq!(created.len(), 1, "exactly one signup wins");
    assert_eq!(taken, 299);
    let l = api.login("popular").await;
    assert_eq!(l["user_id"], created[0].as_str());
}

async fn capacity_five_admits_four_of_thirty_concurrent_joins(s: TestServer) {
    let api = s.client();
    let (_, owner) = api.user("owner").await;
    let room = api.create_room(&owner, "small", Some(5)).await;
    let mut tokens = Vec::new();
    for i in 0..30 {
        tokens.push(api.user(&format!("joiner_{i}")).await.1);
    }
    let room = Arc::new(room);
    let mut tasks = Vec::new();
    for t in tokens {
        let (api, room) = (api.clone(), Arc::clone(&room));
        tasks.push(tokio::spawn(async move {
            api.post(&format!("/v1/rooms/{room}/join"), Some(&t), json!({})).await
        }));
    }
    let (mut ok, mut full) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            200 => ok += 1,
            409 => {
                assert_eq!(r.code(), "room_full");
                full += 1
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert_eq!(ok, 4);
    assert_eq!(full, 26);
    let members = api.get(&format!("/v1/rooms/{room}/members"), &owner).await.expect(200);
    assert_eq!(members["members"].as_array().unwrap().len(), 5);
    assert_eq!(
        api.get(&format!("/v1/rooms/{room}"), &owner).await.expect(200)["member_count"],
        5
    );
}

async fn bad_input_gets_contract_errors(s: TestServer) {
    let api = s.client();
    let (_, t) = api.user("eve").await;
    let room = api.create_room(&t, "r", None).await;
    let path = format!("/v1/rooms/{room}/messages");
    let json_ct = Some("application/json");

    api.raw(Method::POST, &path, Some(&t), json_ct, b"{not json".to_vec())
        .await
        .expect_error(400, "invalid_json");
    api.raw(Method::POST, &path, Some(&t), json_ct, b"".to_vec())
        .await
        .expect_error(400, "invalid_json");
    api.raw(
        Method::POST,
        &path,
        Some(&t),
        json_ct,
        br#"{"client_msg_id": 5, "text": "x"}"#.to_vec(),
    )
    .await
    .expect_error(400, "invalid_request");
    api.raw(Method::POST, &path, Some(&t), json_ct, br#"{"text": "x"}"#.to_vec())
        .await
        .expect_error(400, "invalid_request");
    api.raw(Method::POST, &path, Some(&t), json_ct, br#"[1,2,3]"#.to_vec())
        .await
        .expect_error(400, "invalid_request");
    api.raw(
        Method::POST,
        &path,
        Some(&t),
        None,
        br#"{"client_msg_id":"a","text":"x"}"#.to_vec(),
    )
    .await
    .expect_error(415, "unsupported_media_type");
    let huge = format!(r#"{{"client_msg_id":"a","text":"{}"}}"#, "x".repeat(200_000));
    api.raw(Method::POST, &path, Some(&t), json_ct, huge.into_bytes())
        .await
        .expect_error(413, "payload_too_large");
    api.raw(Method::POST, "/v1/auth/signup", None, json_ct, vec![0xff, 0xfe, 0x00])
        .await
        .expect_error(400, "invalid_json");
    api.call(Method::GET, "/v1/nowhere", None, None)
        .await
        .expect_error(404, "not_found");
    api.call(Method::PUT, "/v1/rooms", Some(&t), None)
        .await
        .expect_error(405, "method_not_allowed");
    let r = api.raw(Method::GET, "/v1/me", None, None, vec![]).await;
    r.expect_error(401, "unauthorized");
    let res = api
        .http
        .get(format!("{}/v1/me", api.base))
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);

    // Nothing accepted was lost or corrupted by the noise.
    api.send(&t, &room, "ok", "still fine").await.expect(202);
    let all = api.all_messages(&t, &room).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["text"], "still fine");

    // Health and metrics.
    let h = api.http.get(format!("{}/healthz", api.base)).send().await.unwrap();
    assert_eq!(h.status().as_u16(), 200);
    let m = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("emosation_http_requests_total"), "{m}");
    assert!(m.contains("emosation_projector_records_total"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429() {
    rate_limit_body(None).await;
}

/// The buckets live in Redis, shared by every ingest node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_redis_buckets() {
    let redis = emosation_testkit::RedisServer::start();
    rate_limit_body(Some(redis.url().to_owned())).await;
}

async fn rate_limit_body(cache: Option<String>) {
    let s = TestServer::start_configured(|cfg| {
        cfg.ingest.message_rate = 5;
        cfg.engines.cache = cache;
    })
    .await;
    let api = s.client();
    let (_, t) = api.user("chatty").await;
    let room = api.create_room(&t, "r", None).await;
    let mut statuses = Vec::new();
    let started = std::time::Instant::now();
    for i in 0..30 {
        let r = api.send(&t, &room, &format!("k{i}"), "spam").await;
        if r.status.as_u16() == 429 {
            assert_eq!(r.code(), "rate_limited");
        }
        statuses.push(r.status.as_u16());
    }
    // The burst (2 x 5), plus what refilled at 5/s while the sends ran (a
    // loaded machine takes longer over them; the bucket refills meanwhile).
    let refilled = (5.0 * started.elapsed().as_secs_f64()).ceil() as usize;
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    assert!(
        (10..=10 + refilled).contains(&accepted),
        "burst of 2x5 plus {refilled} refilled, got {accepted}: {statuses:?}"
    );
    assert!(statuses.contains(&429));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_survive_restart_and_replay_gives_the_same_checksum() {
    let tmp = tempfile::tempdir().unwrap();
    // Without the analyzer: it appends emotions after the posts were
    // answered (lingering between batches), and as an at-least-once consumer
    // it may append some again after a restart (duplicates the fold
    // ignores, but whose offsets move the stored positions). Here a restart
    // must change nothing; replays with emotions are tested elsewhere.
    let config = || {
        let mut cfg = common::config(tmp.path());
        cfg.roles.analyzer = false;
        cfg
    };
    let mut s = TestServer::start_with(config()).await;
    let api = s.client();
    let (_, a) = api.user("anna").await;
    let (_, b) = api.user("ben").await;
    let room = api.create_room(&a, "r", Some(3)).await;
    api.post(&format!("/v1/rooms/{room}/join"), Some(&b), json!({}))
        .await
        .expect(200);
    for i in 0..40 {
        api.send(
            if i % 2 == 0 { &a } else { &b },
            &room,
            &format!("k{i}"),
            &format!("t{i}"),
        )
        .await
        .expect(202);
    }
    let last = api.send(&a, &room, "k0", "dup").await.expect(202);
    api.post(
        &format!("/v1/rooms/{room}/read"),
        Some(&b),
        json!({"message_id": last["message_id"]}),
    )
    .await;
    api.post(&format!("/v1/rooms/{room}/quit"), Some(&b), json!({}))
        .await
        .expect(200);
    api.call(Method::POST, "/v1/auth/logout", Some(&b), None).await;
    s.stop().await;

    let engines = emosation::system::Engines::embedded(tmp.path());
    let live = engines.open_views().await.unwrap().checksum().await.unwrap();
    drop(engines);

    // Restarted, the server resumes from the stored positions: same views.
    // (Only reads: a login is a record, and would change them.)
    let mut s = TestServer::start_with(config()).await;
    let api = s.client();
    assert_eq!(api.all_messages(&a, &room).await.len(), 40);
    s.stop().await;

    // Replay from scratch gives the same digest.
    let engines = emosation::system::Engines::embedded(tmp.path());
    let log = engines.open_log().await.unwrap();
    let views = engines.open_views().await.unwrap();
    assert_eq!(views.checksum().await.unwrap(), live, "restart changed nothing");
    let stats = emosation_projector::replay(log, std::sync::Arc::clone(&views), std::sync::Arc::new(|_, _| {}))
        .await
        .unwrap();
    assert!(stats.records >= 47, "replayed {}", stats.records);
    assert_eq!(views.checksum().await.unwrap(), live);
}

async fn every_message_gets_exactly_one_emotion(s: TestServer) {
    let api = s.client();
    let (_, t) = api.user("feeler").await;
    let room = api.create_room(&t, "feelings", None).await;
    let texts = [
        ("I am so happy today!", "joy"),
        ("I miss you so much, I cried all night", "sadness"),
        ("This is ridiculous, I'm furious", "anger"),
        ("정말 무서워요", "fear"),
        ("The meeting is at 3pm", "neutral"),
    ];
    let mut ids = Vec::new();
    for (i, (text, _)) in texts.iter().enumerate() {
        ids.push(
            api.send(&t, &room, &format!("e{i}"), text).await.expect(202)["message_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // A repeated post is one message, so one emotion.
    api.send(&t, &room, "e0", "I am so happy today!").await.expect(202);
    let mut body = Value::Null;
    for _ in 0..200 {
        body = api.get(&format!("/v1/rooms/{room}/emotions"), &t).await.expect(200);
        if body["emotions"].as_array().unwrap().len() >= texts.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let emotions = body["emotions"].as_array().unwrap();
    assert_eq!(emotions.len(), texts.len(), "one emotion per message: {body}");
    for ((_, label), (e, id)) in texts.iter().zip(emotions.iter().zip(&ids)) {
        assert_eq!(e["message_id"], id.as_str());
        assert_eq!(e["label"], *label, "{e}");
        assert_eq!(e["model"], "offline-lexicon-v1");
        assert!(e["scores"]["joy"].is_number());
        assert_eq!(e["cursor"].as_str().unwrap().len(), 16);
    }
    assert_eq!(body["summary"]["joy"], 1);
    assert_eq!(body["summary"]["neutral"], 1);
    // History carries each message's emotion.
    let history = api.get(&format!("/v1/rooms/{room}/messages"), &t).await.expect(200);
    for (m, (_, label)) in history["messages"].as_array().unwrap().iter().zip(texts.iter()) {
        assert_eq!(m["emotion"]["label"], *label, "{m}");
    }
}

async fn activity_counts_stored_messages_per_hour_for_members(s: TestServer) {
    let api = s.client();
    let (_, alice) = api.user("alice").await;
    let (_, bob) = api.user("bob").await;
    let (_, carol) = api.user("carol").await;
    let room = api.create_room(&alice, "busy", None).await;
    api.post(&format!("/v1/rooms/{room}/join"), Some(&bob), json!({}))
        .await
        .expect(200);
    for (i, t) in [&alice, &bob, &alice, &bob, &alice].into_iter().enumerate() {
        api.send(t, &room, &format!("m{i}"), "so happy today").await.expect(202);
    }
    // A repeat is one message, counted once.
    api.send(&alice, &room, "m0", "again").await.expect(202);

    // The activity view trails the post by a batch: wait for it (bounded).
    let path = format!("/v1/rooms/{room}/activity");
    let body = emosation_testkit::eventually(
        "activity counted five",
        std::time::Duration::from_secs(15),
        async || {
            let body = api.get(&path, &alice).await.expect(200);
            let total: u64 = body["hours"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["messages"].as_u64().unwrap())
                .sum();
            if total >= 5 { Ok(body) } else { Err(body.to_string()) }
        },
    )
    .await;
    assert_eq!(body["room_id"], room.as_str());
    // Hours are those of the messages' created_at (the test may straddle one).
    let messages = api.all_messages(&alice, &room).await;
    assert_eq!(messages.len(), 5);
    let mut expected: Vec<(String, u64)> = Vec::new();
    for m in &messages {
        let hour = format!("{}:00:00Z", &m["created_at"].as_str().unwrap()[..13]);
        match expected.last_mut() {
            Some((h, n)) if *h == hour => *n += 1,
            _ => expected.push((hour, 1)),
        }
    }
    let hours: Vec<(String, u64)> = body["hours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["hour"].as_str().unwrap().to_owned(), h["messages"].as_u64().unwrap()))
        .collect();
    assert_eq!(hours, expected, "{body}");
    if hours.len() == 1 {
        assert_eq!(body["hours"][0]["authors"], 2);
    }

    // An explicit window: the hour of the first message only, or the past.
    let first = &expected[0].0;
    let one = api
        .get(&format!("{path}?from={first}&to={}:59:59Z", &first[..13]), &bob)
        .await
        .expect(200);
    assert_eq!(one["from"], first.as_str());
    assert_eq!(one["hours"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one["hours"][0]["messages"], expected[0].1);
    let before = api.get(&format!("{path}?to={first}"), &bob).await.expect(200);
    assert_eq!(before["hours"], json!([]), "to is exclusive");
    let past = api
        .get(
            &format!("{path}?from=2000-01-01T00:30:00%2B09:00&to=2000-01-02T00:00:00Z"),
            &bob,
        )
        .await
        .expect(200);
    assert_eq!(past["hours"], json!([]));
    assert_eq!(past["from"], "1999-12-31T15:00:00Z");

    // Members only; the room must exist; bad windows are 400 in the contract's shape.
    api.get(&path, &carol).await.expect_error(403, "not_member");
    api.get("/v1/rooms/00000000000000ff/activity", &alice)
        .await
        .expect_error(404, "room_not_found");
    for bad in [
        "from=yesterday",
        "to=2026-11-22",
        "from=2026-11-22T10:00:00Z&to=2026-11-22T10:00:00Z",
        "from=2026-11-22T11:00:00Z&to=2026-11-22T10:00:00Z",
        "from=2026-01-01T00:00:00Z&to=2026-11-22T00:00:00Z",
    ] {
        api.get(&format!("{path}?{bad}"), &alice)
            .await
            .expect_error(400, "invalid_request");
    }
}

/// Waits (bounded) until `check` holds for the room's `/emotions` answer.
async fn emotions_until(api: &common::Api, t: &str, room: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    emosation_testkit::eventually(what, std::time::Duration::from_secs(15), async || {
        let body = api.get(&format!("/v1/rooms/{room}/emotions"), t).await.expect(200);
        if check(&body) { Ok(body) } else { Err(body.to_string()) }
    })
    .await
}

async fn edits_and_deletes_change_history_emotions_and_the_mood(s: TestServer) {
    let api = s.client();
    let (_, alice) = api.user("alice").await;
    let (bob_id, bob) = api.user("bob").await;
    let (_, carol) = api.user("carol").await;
    let room = api.create_room(&alice, "edits", None).await;
    api.post(&format!("/v1/rooms/{room}/join"), Some(&bob), json!({}))
        .await
        .expect(200);
    let m1 = api.send(&bob, &room, "b1", "I am so happy today!").await.expect(202)["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let m2 = api.send(&alice, &room, "a1", "The meeting is at 3pm").await.expect(202)["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    emotions_until(&api, &bob, &room, "both classified", |b| {
        b["emotions"].as_array().unwrap().len() == 2 && b["summary"]["joy"] == 1
    })
    .await;
    // Prime the history cache: an edit must make it stale.
    let before = api.get(&format!("/v1/rooms/{room}/messages"), &bob).await.expect(200);
    assert!(before["messages"][0].get("edited_at").is_none(), "{before}");

    // The author edits.
    let path = |m: &str| format!("/v1/rooms/{room}/messages/{m}");
    let edited = api
        .call(
            Method::PATCH,
            &path(&m1),
            Some(&bob),
            Some(json!({"text": "I miss you so much, I cried all night"})),
        )
        .await
        .expect(200);
    assert_eq!(edited["message_id"], m1.as_str());
    assert_eq!(edited["room_id"], room.as_str());
    let edit_cursor = edited["cursor"].as_str().unwrap().to_owned();
    assert!(edit_cursor > m2, "the edit is after both messages in the room's log");
    assert!(edited["edited_at"].as_str().unwrap().ends_with('Z'));

    // Refusals, in the contract's shape.
    let patch = async |m: &str, t: &str, body: Value| api.call(Method::PATCH, &path(m), Some(t), Some(body)).await;
    patch(&m1, &alice, json!({"text": "not mine"}))
        .await
        .expect_error(403, "not_author");
    patch(&m1, &carol, json!({"text": "not a member"}))
        .await
        .expect_error(403, "not_member");
    patch(&m1, &bob, json!({"text": ""}))
        .await
        .expect_error(400, "invalid_request");
    patch(&m1, &bob, json!({"text": 5}))
        .await
        .expect_error(400, "invalid_request");
    patch(&m1, &bob, json!({"text": "x".repeat(4001)}))
        .await
        .expect_error(400, "invalid_request");
    patch("0000000000000999", &bob, json!({"text": "no such"}))
        .await
        .expect_error(404, "message_not_found");
    patch("not-an-id", &bob, json!({"text": "no such"}))
        .await
        .expect_error(404, "message_not_found");
    api.call(
        Method::PATCH,
        &format!("/v1/rooms/00000000000000ff/messages/{m1}"),
        Some(&bob),
        Some(json!({"text": "x"})),
    )
    .await
    .expect_error(404, "room_not_found");

    // History shows the latest text with edited_at; the edit's emotion supersedes the first.
    let history = api.get(&format!("/v1/rooms/{room}/messages"), &bob).await.expect(200);
    let first = &history["messages"][0];
    assert_eq!(first["text"], "I miss you so much, I cried all night", "{history}");
    assert_eq!(first["edited_at"], edited["edited_at"]);
    assert_eq!(first["author_id"], bob_id.as_str());
    assert!(first.get("deleted").is_none());
    let mood = emotions_until(&api, &bob, &room, "the edit classified", |b| {
        b["summary"]["sadness"] == 1
    })
    .await;
    assert_eq!(mood["summary"]["joy"], 0, "superseded: {mood}");
    assert_eq!(
        mood["emotions"].as_array().unwrap().len(),
        2,
        "one emotion per message: {mood}"
    );
    assert_eq!(mood["emotions"][0]["label"], "sadness");
    let history = api.get(&format!("/v1/rooms/{room}/messages"), &bob).await.expect(200);
    assert_eq!(history["messages"][0]["emotion"]["label"], "sadness", "{history}");

    // Deletes: not by a member who is neither author nor owner; by the owner, yes.
    api.call(Method::DELETE, &path(&m2), Some(&bob), None)
        .await
        .expect_error(403, "not_author");
    api.call(Method::DELETE, &path(&m2), Some(&carol), None)
        .await
        .expect_error(403, "not_member");
    let deleted = api
        .call(Method::DELETE, &path(&m1), Some(&alice), None)
        .await
        .expect(200);
    assert!(deleted["cursor"].as_str().unwrap() > edit_cursor.as_str());
    let again = api.call(Method::DELETE, &path(&m1), Some(&bob), None).await.expect(200);
    assert_eq!(
        again["deleted_at"], deleted["deleted_at"],
        "a second delete changes nothing"
    );
    patch(&m1, &bob, json!({"text": "too late"}))
        .await
        .expect_error(409, "message_deleted");
    // The author deletes their own too.
    api.call(Method::DELETE, &path(&m2), Some(&alice), None)
        .await
        .expect(200);

    // Tombstones: no text, no emotion; the mood forgets them.
    let history = api.get(&format!("/v1/rooms/{room}/messages"), &bob).await.expect(200);
    let msgs = history["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "tombstones keep their place: {history}");
    for m in msgs {
        assert_eq!(m["deleted"], true, "{m}");
        assert_eq!(m["text"], "");
        assert!(m.get("emotion").is_none());
        assert!(m["deleted_at"].is_string());
    }
    let mood = api.get(&format!("/v1/rooms/{room}/emotions"), &bob).await.expect(200);
    assert_eq!(mood["emotions"], json!([]), "{mood}");
    assert!(mood["summary"].as_object().unwrap().values().all(|n| n == 0), "{mood}");
}

async fn friends_blocks_and_direct_messages(s: TestServer) {
    let api = s.client();
    let (alice_id, alice) = api.user("alice").await;
    let (bob_id, bob) = api.user("bob").await;
    let (carol_id, carol) = api.user("carol").await;
    let call = async |m: Method, path: &str, t: &str, body: Option<Value>| api.call(m, path, Some(t), body).await;

    // A request by username; both sides see it pending.
    let asked = call(
        Method::POST,
        "/v1/friends/requests",
        &alice,
        Some(json!({"username": "Bob"})),
    )
    .await
    .expect(200);
    assert_eq!(
        (asked["user_id"].as_str(), asked["status"].as_str()),
        (Some(bob_id.as_str()), Some("request_out"))
    );
    let theirs = api.get("/v1/friends", &bob).await.expect(200);
    assert_eq!(theirs["incoming"][0]["username"], "alice", "{theirs}");
    assert_eq!(
        api.get("/v1/friends", &alice).await.expect(200)["outgoing"][0]["user_id"],
        bob_id.as_str()
    );
    // Not one's own request to accept; no DM before they are friends.
    call(
        Method::POST,
        &format!("/v1/friends/requests/{bob_id}/accept"),
        &alice,
        None,
    )
    .await
    .expect_error(404, "no_request");
    call(Method::POST, &format!("/v1/dms/{bob_id}"), &alice, None)
        .await
        .expect_error(403, "not_friends");
    let accepted = call(
        Method::POST,
        &format!("/v1/friends/requests/{alice_id}/accept"),
        &bob,
        None,
    )
    .await
    .expect(200);
    assert_eq!(accepted["status"], "friends");

    // Friends, with whether each is online now (bob has a socket open).
    let _socket = common::ws_client::Client::connect(&s.base, &bob).await;
    let mine = api.get("/v1/friends", &alice).await.expect(200);
    assert_eq!(mine["friends"][0]["username"], "bob", "{mine}");
    assert_eq!(mine["friends"][0]["online"], true, "{mine}");
    assert_eq!(mine["outgoing"], json!([]));
    assert_eq!(
        api.get("/v1/friends", &bob).await.expect(200)["friends"][0]["online"],
        false
    );

    // The direct-message room: created on first use, the same from both sides.
    let dm = call(Method::POST, &format!("/v1/dms/{bob_id}"), &alice, None)
        .await
        .expect(200);
    let room = dm["room_id"].as_str().unwrap().to_owned();
    assert_eq!(dm["name"], "bob");
    assert_eq!(
        call(Method::POST, &format!("/v1/dms/{alice_id}"), &bob, None)
            .await
            .expect(200)["room_id"],
        room.as_str()
    );
    assert_eq!(mine["friends"][0]["room_id"], room.as_str());
    api.send(&alice, &room, "d1", "I am so happy to see you!")
        .await
        .expect(202);
    let history = api.get(&format!("/v1/rooms/{room}/messages"), &bob).await.expect(200);
    assert_eq!(history["messages"][0]["text"], "I am so happy to see you!");
    // Listed among bob's rooms under alice's name, with the unread message.
    let rooms = api.get("/v1/me/rooms", &bob).await.expect(200);
    let listed = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room_id"] == room.as_str())
        .unwrap();
    assert_eq!(
        (listed["name"].as_str(), listed["direct"].as_bool()),
        (Some("alice"), Some(true))
    );
    assert_eq!(listed["unread_count"], 1);
    // Emotions like any room.
    emotions_until(&api, &bob, &room, "the direct message classified", |b| {
        b["summary"]["joy"] == 1
    })
    .await;
    // Private: not in the directory, not to others, nobody else joins.
    let directory = api.call(Method::GET, "/v1/rooms", None, None).await.expect(200);
    assert!(
        !directory["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["room_id"] == room.as_str())
    );
    api.call(Method::GET, &format!("/v1/rooms/{room}"), None, None)
        .await
        .expect_error(404, "room_not_found");
    api.get(&format!("/v1/rooms/{room}"), &carol)
        .await
        .expect_error(404, "room_not_found");
    assert_eq!(
        api.get(&format!("/v1/rooms/{room}"), &bob).await.expect(200)["name"],
        "alice"
    );
    call(Method::POST, &format!("/v1/rooms/{room}/join"), &carol, Some(json!({})))
        .await
        .expect_error(404, "room_not_found");
    api.send(&carol, &room, "c1", "let me in")
        .await
        .expect_error(403, "not_member");

    // A block ends the friendship and the messages; the blocked cannot ask again.
    let blocked = call(Method::PUT, &format!("/v1/blocks/{alice_id}"), &bob, None)
        .await
        .expect(200);
    assert_eq!(blocked["status"], "none");
    api.send(&alice, &room, "d2", "hello?")
        .await
        .expect_error(403, "not_member");
    call(
        Method::POST,
        "/v1/friends/requests",
        &alice,
        Some(json!({"user_id": bob_id})),
    )
    .await
    .expect_error(403, "blocked");
    call(Method::POST, &format!("/v1/dms/{bob_id}"), &alice, None)
        .await
        .expect_error(403, "blocked");
    let bobs = api.get("/v1/friends", &bob).await.expect(200);
    assert_eq!(
        (bobs["friends"].clone(), bobs["blocked"][0]["user_id"].clone()),
        (json!([]), json!(alice_id))
    );
    call(Method::DELETE, &format!("/v1/blocks/{alice_id}"), &bob, None)
        .await
        .expect(200);
    let none = api.get("/v1/friends", &alice).await.expect(200);
    assert_eq!(
        none,
        json!({"friends": [], "incoming": [], "outgoing": [], "blocked": []})
    );

    // Cancel and decline; then nothing is pending.
    call(
        Method::POST,
        "/v1/friends/requests",
        &carol,
        Some(json!({"username": "alice"})),
    )
    .await
    .expect(200);
    call(
        Method::DELETE,
        &format!("/v1/friends/requests/{alice_id}"),
        &carol,
        None,
    )
    .await
    .expect(200);
    assert_eq!(api.get("/v1/friends", &alice).await.expect(200)["incoming"], json!([]));
    call(
        Method::POST,
        "/v1/friends/requests",
        &carol,
        Some(json!({"username": "alice"})),
    )
    .await
    .expect(200);
    call(
        Method::POST,
        &format!("/v1/friends/requests/{carol_id}/decline"),
        &alice,
        None,
    )
    .await
    .expect(200);
    call(
        Method::POST,
        &format!("/v1/friends/requests/{carol_id}/accept"),
        &alice,
        None,
    )
    .await
    .expect_error(404, "no_request");
    call(Method::DELETE, &format!("/v1/friends/{carol_id}"), &alice, None)
        .await
        .expect_error(403, "not_friends");

    // Bad input.
    call(
        Method::POST,
        "/v1/friends/requests",
        &alice,
        Some(json!({"username": "alice"})),
    )
    .await
    .expect_error(400, "invalid_request");
    call(
        Method::POST,
        "/v1/friends/requests",
        &alice,
        Some(json!({"username": "nobody_here"})),
    )
    .await
    .expect_error(404, "user_not_found");
    call(Method::POST, "/v1/friends/requests", &alice, Some(json!({})))
        .await
        .expect_error(400, "invalid_request");
    call(
        Method::POST,
        "/v1/friends/requests",
        &alice,
        Some(json!({"username": 7})),
    )
    .await
    .expect_error(400, "invalid_request");
    call(Method::PUT, "/v1/blocks/not-an-id", &alice, None)
        .await
        .expect_error(404, "user_not_found");
    api.call(Method::GET, "/v1/friends", None, None)
        .await
        .expect_error(401, "unauthorized");
}

async fn admins_are_granted_on_the_log_and_restore_without_the_token(s: TestServer) {
    let api = s.client();
    let (alice_id, alice) = api.user("alice").await;
    let (bob_id, bob) = api.user("bob").await;
    let (carol_id, carol) = api.user("carol").await;
    api.call(Method::DELETE, "/v1/me", Some(&carol), None).await;
    let restore = format!("/v1/admin/users/{carol_id}/restore");
    let role = |id: &str| format!("/v1/admin/users/{id}/admin");
    // Not an admin yet: refused, with or without a token of one's own.
    api.call(Method::POST, &restore, Some(&alice), None)
        .await
        .expect_error(403, "forbidden");
    api.call(Method::PUT, &role(&alice_id), Some(&alice), None)
        .await
        .expect_error(403, "forbidden");
    // The shared token bootstraps the first admin.
    let granted = api
        .http
        .put(format!("{}{}", api.base, role(&alice_id)))
        .header("x-admin-token", "admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(granted.status().as_u16(), 200);
    assert_eq!(granted.json::<Value>().await.unwrap()["admin"], true);
    assert_eq!(api.get("/v1/me", &alice).await.expect(200)["admin"], true);
    assert_eq!(api.get("/v1/me", &bob).await.expect(200)["admin"], false);
    // An admin restores with her own token, and makes another admin.
    api.call(Method::POST, &restore, Some(&alice), None).await.expect(204);
    api.login("carol").await;
    assert_eq!(
        api.call(Method::PUT, &role(&bob_id), Some(&alice), None)
            .await
            .expect(200)["admin"],
        true
    );
    api.call(Method::PUT, "/v1/admin/users/00000000000000ff/admin", Some(&bob), None)
        .await
        .expect_error(404, "user_not_found");
    // An admin deletes an account: its sessions end, its login is refused;
    // a restore brings it back.
    let delete = format!("/v1/admin/users/{carol_id}");
    let carol = api.login("carol").await["access_token"].as_str().unwrap().to_owned();
    api.call(Method::DELETE, &delete, Some(&carol), None)
        .await
        .expect_error(403, "forbidden");
    api.call(Method::DELETE, &delete, Some(&bob), None).await.expect(204);
    api.get("/v1/me", &carol).await.expect_error(401, "invalid_token");
    api.call(Method::DELETE, "/v1/admin/users/not-an-id", Some(&bob), None)
        .await
        .expect_error(404, "user_not_found");
    // The users list: by username prefix, paged, with status and role.
    let all = api.get("/v1/admin/users", &bob).await.expect(200);
    let rows: Vec<(String, String, bool)> = all["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["username"].as_str().unwrap().to_owned(),
                u["status"].as_str().unwrap().to_owned(),
                u["admin"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("alice".to_owned(), "active".to_owned(), true),
            ("bob".to_owned(), "active".to_owned(), true),
            ("carol".to_owned(), "deleted".to_owned(), false),
        ],
        "{all}"
    );
    assert!(all["users"][2]["deleted_at"].is_string());
    assert_eq!(all["next_after"], Value::Null);
    let page = api.get("/v1/admin/users?limit=1", &bob).await.expect(200);
    assert_eq!(
        (page["users"][0]["username"].as_str(), page["next_after"].as_str()),
        (Some("alice"), Some("alice"))
    );
    let next = api.get("/v1/admin/users?limit=1&after=alice", &bob).await.expect(200);
    assert_eq!(next["users"][0]["username"], "bob");
    let named = api.get("/v1/admin/users?q=Ca", &bob).await.expect(200);
    assert_eq!(named["users"].as_array().unwrap().len(), 1, "{named}");
    assert_eq!(named["users"][0]["user_id"], carol_id.as_str());
    let none = api.get("/v1/admin/users?q=zzz", &bob).await.expect(200);
    assert_eq!(none["users"], json!([]));
    api.get(&format!("/v1/admin/users?q={}", "a".repeat(40)), &bob)
        .await
        .expect_error(400, "invalid_request");
    api.get("/v1/admin/users?limit=0", &bob)
        .await
        .expect_error(400, "invalid_request");
    api.call(Method::POST, &restore, Some(&bob), None).await.expect(204);
    api.login("carol").await;
    // Revoked, she is refused again.
    assert_eq!(
        api.call(Method::DELETE, &role(&alice_id), Some(&bob), None)
            .await
            .expect(200)["admin"],
        false
    );
    api.call(Method::POST, &restore, Some(&alice), None)
        .await
        .expect_error(403, "forbidden");
    api.get("/v1/admin/users", &alice).await.expect_error(403, "forbidden");
}

/// The admin console's figures and audit: sign-ups, rooms, messages and the
/// emotion mix per day (only what the fold accepted), users online now, and
/// every admin action with who did it, newest first, paged.
async fn admin_stats_and_audit_follow_the_log(s: TestServer) {
    let api = s.client();
    let (alice_id, alice) = api.user("alice").await;
    let (bob_id, bob) = api.user("bob").await;
    let (carol_id, carol) = api.user("carol").await;
    // A taken name is refused by the fold: not a sign-up.
    api.signup("alice").await.expect_error(409, "username_taken");
    let room = api.create_room(&alice, "stats", None).await;
    for (i, text) in ["what a wonderful day", "this is awful and I hate it"]
        .iter()
        .enumerate()
    {
        api.send(&alice, &room, &format!("c{i}"), text).await.expect(202);
    }
    // A repeated client_msg_id stores one message.
    api.send(&alice, &room, "c0", "what a wonderful day").await.expect(202);
    // The owner deletes her own account: not an admin action.
    api.call(Method::DELETE, "/v1/me", Some(&carol), None).await.expect(204);
    let token_put = |path: String| {
        api.http
            .put(format!("{}{}", api.base, path))
            .header("x-admin-token", "admin-token")
            .send()
    };
    assert_eq!(
        token_put(format!("/v1/admin/users/{alice_id}/admin"))
            .await
            .unwrap()
            .status(),
        200
    );
    let role = |id: &str| format!("/v1/admin/users/{id}/admin");
    api.call(
        Method::POST,
        &format!("/v1/admin/users/{carol_id}/restore"),
        Some(&alice),
        None,
    )
    .await
    .expect(204);
    api.call(Method::PUT, &role(&bob_id), Some(&alice), None)
        .await
        .expect(200);
    api.call(Method::DELETE, &format!("/v1/admin/users/{carol_id}"), Some(&bob), None)
        .await
        .expect(204);
    api.call(Method::DELETE, &role(&alice_id), Some(&bob), None)
        .await
        .expect(200);

    // Admins only.
    api.get("/v1/admin/stats", &alice).await.expect_error(403, "forbidden");
    api.get("/v1/admin/audit", &alice).await.expect_error(403, "forbidden");

    let _socket = common::ws_client::Client::connect(&s.base, &bob).await;
    let stats = emosation_testkit::eventually(
        "the admin views caught up",
        std::time::Duration::from_secs(20),
        async || {
            let v = api.get("/v1/admin/stats", &bob).await.expect(200);
            let mix: u64 = v["week"]["emotions"]
                .as_object()
                .unwrap()
                .values()
                .map(|n| n.as_u64().unwrap())
                .sum();
            if v["totals"]["users"] == 3 && v["totals"]["messages"] == 2 && mix == 2 && v["online_now"] == 1 {
                Ok(v)
            } else {
                Err(v.to_string())
            }
        },
    )
    .await;
    let days = stats["days"].as_array().unwrap();
    assert_eq!(days.len(), 7, "{stats}");
    let today = &days[6];
    assert_eq!(today["day"].as_str().unwrap().len(), 10, "a date: {stats}");
    assert!(
        days.windows(2).all(|w| w[0]["day"].as_str() < w[1]["day"].as_str()),
        "oldest first: {stats}"
    );
    assert_eq!(
        (
            today["signups"].as_u64(),
            today["rooms"].as_u64(),
            today["messages"].as_u64()
        ),
        (Some(3), Some(1), Some(2)),
        "{stats}"
    );
    assert!(
        days[..6].iter().all(|d| d["signups"] == 0 && d["messages"] == 0),
        "{stats}"
    );
    assert_eq!(stats["totals"]["rooms"], 1, "{stats}");
    assert_eq!(today["emotions"], stats["week"]["emotions"], "{stats}");
    assert_eq!(stats["week"]["emotions"]["joy"], 1, "{stats}");

    // The audit: five admin actions (carol's own deletion is not one).
    let audit = api.get("/v1/admin/audit", &bob).await.expect(200);
    let entries = audit["entries"].as_array().unwrap();
    let mut actions: Vec<(String, String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["by"].as_str().unwrap().to_owned(),
                e["username"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    actions.sort();
    let mut expected = vec![
        ("admin_granted".to_owned(), "token".to_owned(), "alice".to_owned()),
        ("account_restored".to_owned(), alice_id.clone(), "carol".to_owned()),
        ("admin_granted".to_owned(), alice_id.clone(), "bob".to_owned()),
        ("account_deleted".to_owned(), bob_id.clone(), "carol".to_owned()),
        ("admin_revoked".to_owned(), bob_id.clone(), "alice".to_owned()),
    ];
    expected.sort();
    assert_eq!(actions, expected, "{audit}");
    assert!(
        entries.windows(2).all(|w| w[0]["at"].as_str() >= w[1]["at"].as_str()),
        "newest first: {audit}"
    );
    let by_bob = entries.iter().find(|e| e["by"] == bob_id.as_str()).unwrap();
    assert_eq!(by_bob["by_name"], "bob");
    assert_eq!(audit["next_before"], Value::Null);
    // Paged: two at a time, every entry once.
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    for _ in 0..5 {
        let path = match &before {
            None => "/v1/admin/audit?limit=2".to_owned(),
            Some(b) => format!("/v1/admin/audit?limit=2&before={b}"),
        };
        let page = api.get(&path, &bob).await.expect(200);
        seen.extend(
            page["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["position"].clone()),
        );
        match page["next_before"].as_str() {
            Some(b) => before = Some(b.to_owned()),
            None => break,
        }
    }
    let all: Vec<Value> = entries.iter().map(|e| e["position"].clone()).collect();
    assert_eq!(seen, all, "pages in order, none twice");
    api.get("/v1/admin/audit?before=garbage", &bob)
        .await
        .expect_error(400, "invalid_request");
    api.get("/v1/admin/audit?limit=500", &bob)
        .await
        .expect_error(400, "invalid_request");
}

/// `emosation admin grant` appends the role to the log of a stopped server;
/// the restarted server honours it, and a replay rebuilds the same views.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_command_grants_on_the_log_and_the_role_replays() {
    let tmp = tempfile::tempdir().unwrap();
    let config = || {
        let mut cfg = common::config(tmp.path());
        cfg.roles.analyzer = false;
        cfg.ingest.admin_token = None;
        cfg
    };
    let mut s = TestServer::start_with(config()).await;
    let api = s.client();
    let (_, root) = api.user("root").await;
    let (dora_id, dora) = api.user("dora").await;
    api.call(Method::DELETE, "/v1/me", Some(&dora), None).await;
    s.stop().await;
    let _ = root;

    let admin = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_emosation"))
            .arg("admin")
            .args(args)
            .arg("--data-dir")
            .arg(tmp.path())
            .output()
            .unwrap()
    };
    let out = admin(&["grant", "Root"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("admin role granted to root"));
    let out = admin(&["grant", "nobody_here"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such user"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let engines = emosation::system::Engines::embedded(tmp.path());
    let live = engines.open_views().await.unwrap().checksum().await.unwrap();
    drop(engines);
    let mut s = TestServer::start_with(config()).await;
    let api = s.client();
    let root = api.login("root").await["access_token"].as_str().unwrap().to_owned();
    api.call(
        Method::POST,
        &format!("/v1/admin/users/{dora_id}/restore"),
        Some(&root),
        None,
    )
    .await
    .expect(204);
    s.stop().await;

    // Replayed from the log, the role is there again: the same digest as
    // the views the live projector built (before the restore), and after it.
    let engines = emosation::system::Engines::embedded(tmp.path());
    let log = engines.open_log().await.unwrap();
    let views = engines.open_views().await.unwrap();
    let after = views.checksum().await.unwrap();
    assert_ne!(after, live);
    emosation_projector::replay(log, Arc::clone(&views), Arc::new(|_, _| {}))
        .await
        .unwrap();
    assert_eq!(views.checksum().await.unwrap(), after);
    let role = views
        .load(&[emosation_core::view::ViewKey::admin_role("root")])
        .await
        .unwrap()
        .pop()
        .flatten();
    assert!(
        matches!(&role, Some(emosation_core::view::ViewValue::AdminRole(r)) if r.granted && r.by == "cli"),
        "{role:?}"
    );
}

on_every_store!(
    accounts_signup_login_refresh_me_logout,
    soft_delete_refuses_login_keeps_data_and_admin_restores,
    forged_alg_none_expired_and_garbage_tokens_are_refused,
    rooms_membership_messages_and_unread,
    history_pages_by_cursor,
    client_msg_id_repeat_returns_the_first_id_and_stores_one_copy,
    three_hundred_concurrent_identical_signups_make_one_account,
    capacity_five_admits_four_of_thirty_concurrent_joins,
    bad_input_gets_contract_errors,
    every_message_gets_exactly_one_emotion,
    activity_counts_stored_messages_per_hour_for_members,
    edits_and_deletes_change_history_emotions_and_the_mood,
    friends_blocks_and_direct_messages,
    admins_are_granted_on_the_log_and_restore_without_the_token,
    admin_stats_and_audit_follow_the_log,
);

/// Text people read is stored NFC-normalised; bidirectional controls and
/// text of only invisible characters are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_is_normalised_and_deceptive_text_refused() {
    let s = TestServer::start().await;
    let api = s.client();
    let (_, t) = api.user("nfc").await;
    let room = api.create_room(&t, "Cafe\u{0301}", None).await;
    assert_eq!(
        api.get(&format!("/v1/rooms/{room}"), &t).await.expect(200)["name"],
        "Caf\u{00E9}"
    );
    api.send(&t, &room, "n1", "re\u{0301}sume\u{0301}").await.expect(202);
    for (cmid, text) in [
        ("b1", "invoice\u{202E}fdp.exe"),
        ("b2", "\u{200B}\u{2060}\u{FEFF}"),
        ("b3", "a\u{2066}b"),
    ] {
        api.send(&t, &room, cmid, text)
            .await
            .expect_error(400, "invalid_request");
    }
    api.post("/v1/rooms", Some(&t), json!({"name": "\u{200B}"}))
        .await
        .expect_error(400, "invalid_request");
    let texts: Vec<Value> = api
        .all_messages(&t, &room)
        .await
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(texts, vec![json!("r\u{00E9}sum\u{00E9}")]);
}

/// `GET /v1/rooms/{id}/members` and `GET /v1/me/rooms` are paged like the
/// room list: `?limit=` and `?after=`, answered with `next_after`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_and_my_rooms_are_paged() {
    let s = TestServer::start().await;
    let api = s.client();
    let (_, owner) = api.user("pager").await;
    let room = api.create_room(&owner, "paged", None).await;
    for i in 0..4 {
        let (_, t) = api.user(&format!("member_{i}")).await;
        api.post(&format!("/v1/rooms/{room}/join"), Some(&t), json!({}))
            .await
            .expect(200);
    }
    let all = api.get(&format!("/v1/rooms/{room}/members"), &owner).await.expect(200);
    let everyone: Vec<Value> = all["members"].as_array().unwrap().clone();
    assert_eq!(everyone.len(), 5);
    assert!(all["next_after"].is_null());
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let q = after.as_ref().map_or(String::new(), |a| format!("&after={a}"));
        let page = api
            .get(&format!("/v1/rooms/{room}/members?limit=2{q}"), &owner)
            .await
            .expect(200);
        paged.extend(page["members"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_str() {
            Some(a) => after = Some(a.to_owned()),
            None => break,
        }
        assert!(paged.len() <= 5, "the pages end");
    }
    assert_eq!(paged, everyone, "the pages are the whole list, in order, once");

    for i in 0..2 {
        api.create_room(&owner, &format!("more {i}"), None).await;
    }
    let first = api.get("/v1/me/rooms?limit=2", &owner).await.expect(200);
    assert_eq!(first["rooms"].as_array().unwrap().len(), 2);
    let after = first["next_after"].as_str().unwrap().to_owned();
    let rest = api
        .get(&format!("/v1/me/rooms?limit=2&after={after}"), &owner)
        .await
        .expect(200);
    assert_eq!(rest["rooms"].as_array().unwrap().len(), 1);
    assert!(rest["next_after"].is_null());
    api.get("/v1/me/rooms?limit=0", &owner)
        .await
        .expect_error(400, "invalid_request");
}
