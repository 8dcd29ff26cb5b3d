//! Sessions over HTTP against a real server: refresh-token rotation and
//! reuse detection, the absolute lifetime, a restore that revives no old
//! token, and the JWT's `iss`, `aud` and `nbf`.

#[macro_use]
mod common;

use std::time::Duration;

use base64::Engine;
use common::ws_client::Client;
use common::{Api, SECRET, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

/// A token's claims (its payload, unverified).
fn claims(token: &str) -> Value {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    serde_json::from_slice(&b64.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Signs `claims` with the server's secret and algorithm.
fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn tokens(login: &Value) -> (String, String) {
    (
        login["access_token"].as_str().unwrap().to_owned(),
        login["refresh_token"].as_str().unwrap().to_owned(),
    )
}

async fn refresh(api: &Api, refresh_token: &str) -> common::Resp {
    api.post("/v1/auth/refresh", None, json!({"refresh_token": refresh_token}))
        .await
}

/// Each refresh answers a new refresh token (the old one is spent) in the
/// same session; presenting a spent one revokes the session: every token of
/// it, old and new, access and refresh, is refused from then on. Other
/// sessions of the user are unaffected.
async fn a_refresh_rotates_and_a_spent_token_revokes_the_session(s: TestServer) {
    let api = s.client();
    api.signup("rita").await.expect(201);
    let (access0, refresh0) = tokens(&api.login("rita").await);
    let (other_access, _) = tokens(&api.login("rita").await);

    let first = refresh(&api, &refresh0).await.expect(200);
    let (access1, refresh1) = tokens(&first);
    assert_ne!(refresh1, refresh0);
    assert_eq!(claims(&refresh1)["sid"], claims(&refresh0)["sid"], "the same session");
    assert_eq!(claims(&refresh0)["gen"], 0);
    assert_eq!(claims(&refresh1)["gen"], 1);
    let second = refresh(&api, &refresh1).await.expect(200);
    let (access2, refresh2) = tokens(&second);
    assert_eq!(claims(&refresh2)["gen"], 2);
    for t in [&access0, &access1, &access2] {
        api.get("/v1/me", t).await.expect(200);
    }

    // refresh1 was spent: presenting it again is reuse.
    refresh(&api, &refresh1).await.expect_error(401, "invalid_token");
    for t in [&access0, &access1, &access2] {
        api.get("/v1/me", t).await.expect_error(401, "invalid_token");
    }
    for t in [&refresh0, &refresh1, &refresh2] {
        refresh(&api, t).await.expect_error(401, "invalid_token");
    }
    api.get("/v1/me", &other_access).await.expect(200);
    // The user logs in again.
    let (again, _) = tokens(&api.login("rita").await);
    api.get("/v1/me", &again).await.expect(200);
}

/// Two refreshes racing with one token: the fold decides them in log order,
/// so exactly one gets new tokens and the other is reuse, which ends the
/// session — the winner's new tokens included.
async fn two_refreshes_racing_with_one_token_one_wins_and_the_session_ends(s: TestServer) {
    let api = s.client();
    api.signup("race").await.expect(201);
    for round in 0..5 {
        let (access, refresh_token) = tokens(&api.login("race").await);
        let (a, b) = tokio::join!(refresh(&api, &refresh_token), refresh(&api, &refresh_token));
        let mut statuses = [a.status.as_u16(), b.status.as_u16()];
        statuses.sort();
        assert_eq!(statuses, [200, 401], "round {round}: {} / {}", a.body, b.body);
        let (winner, loser) = if a.status == 200 { (a, b) } else { (b, a) };
        loser.expect_error(401, "invalid_token");
        let (new_access, new_refresh) = tokens(&winner.body);
        for t in [&access, &new_access] {
            api.get("/v1/me", t).await.expect_error(401, "invalid_token");
        }
        refresh(&api, &new_refresh).await.expect_error(401, "invalid_token");
    }
}

/// A refresh token reused while a socket of its session is open ends that
/// socket: `session_ended` (`revoked`), then close 1008.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_ends_the_sessions_open_sockets() {
    let s = TestServer::start().await;
    let api = s.client();
    api.signup("sock").await.expect(201);
    let (_, refresh0) = tokens(&api.login("sock").await);
    let (access1, _) = tokens(&refresh(&api, &refresh0).await.expect(200));
    let mut ws = Client::connect(&s.base, &access1).await;
    refresh(&api, &refresh0).await.expect_error(401, "invalid_token");
    let ended = ws.next_of(&["session_ended", "__close"]).await;
    assert_eq!(ended["type"], "session_ended", "{ended}");
    assert_eq!(ended["reason"], "revoked", "{ended}");
    let close = ws.next_of(&["__close"]).await;
    assert_eq!(close["code"], 1008, "{close}");
}

/// A session lives `session_lifetime` from its login however often it is
/// refreshed: no token outlives it, and at its end every token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_at_its_absolute_lifetime() {
    let s = TestServer::start_configured(|cfg| cfg.ingest.session_lifetime = Duration::from_secs(3)).await;
    let api = s.client();
    api.signup("brief").await.expect(201);
    let before = now_secs();
    let login = api.login("brief").await;
    assert!(login["expires_in"].as_u64().unwrap() <= 3, "{login}");
    let (access, refresh0) = tokens(&login);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let refreshed = refresh(&api, &refresh0).await.expect(200);
    let (access1, refresh1) = tokens(&refreshed);
    for t in [&access1, &refresh1] {
        let exp = claims(t)["exp"].as_i64().unwrap();
        assert!(
            exp <= before + 4,
            "a refreshed token outlives its session: exp {exp}, login {before}"
        );
    }
    api.get("/v1/me", &access1).await.expect(200);

    tokio::time::sleep(Duration::from_millis(2500)).await;
    for t in [&access, &access1] {
        api.get("/v1/me", t).await.expect_error(401, "invalid_token");
    }
    refresh(&api, &refresh1).await.expect_error(401, "invalid_token");
    // Refused because it ended, not revoked: a new login works at once.
    let (fresh, _) = tokens(&api.login("brief").await);
    api.get("/v1/me", &fresh).await.expect(200);
}

/// After a deletion and an admin restore, the tokens of sessions opened
/// before the deletion stay dead; a new login works.
async fn a_restore_revives_no_token_issued_before_the_deletion(s: TestServer) {
    let api = s.client();
    let user_id = api.signup("lazarus").await.expect(201)["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (access, refresh0) = tokens(&api.login("lazarus").await);
    let (rotated_access, rotated_refresh) = tokens(&refresh(&api, &refresh0).await.expect(200));
    assert_eq!(
        api.call(Method::DELETE, "/v1/me", Some(&access), None).await.status,
        204
    );
    let restored = api
        .http
        .post(format!("{}/v1/admin/users/{user_id}/restore", api.base))
        .header("x-admin-token", "admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(restored.status().as_u16(), 204);

    for t in [&access, &rotated_access] {
        api.get("/v1/me", t).await.expect_error(401, "invalid_token");
    }
    for t in [&refresh0, &rotated_refresh] {
        refresh(&api, t).await.expect_error(401, "invalid_token");
    }
    let (access2, refresh2) = tokens(&api.login("lazarus").await);
    api.get("/v1/me", &access2).await.expect(200);
    refresh(&api, &refresh2).await.expect(200);
}

/// Tokens carry `iss` and `aud` and `nbf`; signed with the server's own
/// secret, a token with another issuer or audience, without one of the
/// three, or not valid yet, is refused.
async fn a_wrong_or_missing_iss_aud_or_nbf_is_refused(s: TestServer) {
    let api = s.client();
    api.signup("iris").await.expect(201);
    let (access, refresh_token) = tokens(&api.login("iris").await);
    let genuine = claims(&access);
    assert_eq!(genuine["iss"], "emosation");
    assert_eq!(genuine["aud"], "emosation-api");
    assert!(genuine["nbf"].as_i64().unwrap() <= now_secs());

    let with = |field: &str, value: Value| {
        let mut c = genuine.clone();
        c[field] = value;
        sign(&c)
    };
    let without = |field: &str| {
        let mut c = genuine.clone();
        c.as_object_mut().unwrap().remove(field);
        sign(&c)
    };
    for (what, t) in [
        ("another issuer", with("iss", json!("someone-else"))),
        ("another audience", with("aud", json!("another-api"))),
        ("audiences without ours", with("aud", json!(["another-api"]))),
        ("not valid for a minute", with("nbf", json!(now_secs() + 60))),
        ("no issuer", without("iss")),
        ("no audience", without("aud")),
        ("no nbf", without("nbf")),
    ] {
        let r = api.get("/v1/me", &t).await;
        assert_eq!(r.status.as_u16(), 401, "{what}: {}", r.body);
        assert_eq!(r.code(), "invalid_token", "{what}");
    }
    // The same claims re-signed are accepted: the refusals were about the claims.
    api.get("/v1/me", &sign(&genuine)).await.expect(200);

    // A refresh token with a wrong audience is refused without spending it.
    let mut refresh_claims = claims(&refresh_token);
    refresh_claims["aud"] = json!("another-api");
    refresh(&api, &sign(&refresh_claims))
        .await
        .expect_error(401, "invalid_token");
    refresh(&api, &refresh_token).await.expect(200);
}

on_every_store!(
    a_refresh_rotates_and_a_spent_token_revokes_the_session,
    two_refreshes_racing_with_one_token_one_wins_and_the_session_ends,
    a_restore_revives_no_token_issued_before_the_deletion,
    a_wrong_or_missing_iss_aud_or_nbf_is_refused,
);
