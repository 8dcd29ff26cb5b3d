//! `GET /v1/rooms?q=` (API extension, docs/api.md), over HTTP against a
//! real server on the embedded views and on Redis: the rooms whose name
//! contains `q`, ignoring case, in id order, paged with `after`/`limit`
//! and `next_after` like the unfiltered list.

mod common;

use std::collections::HashSet;

use common::TestServer;
use serde_json::Value;

async fn page(api: &common::Api, token: &str, query: &str) -> (Vec<(String, String)>, Option<String>) {
    let body = api.get(&format!("/v1/rooms?{query}"), token).await.expect(200);
    let rooms = body["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["room_id"].as_str().unwrap().to_owned(),
                r["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (rooms, body["next_after"].as_str().map(str::to_owned))
}

/// Every room of `query`, following `next_after` (and the pages themselves).
async fn all(api: &common::Api, token: &str, query: &str) -> (Vec<(String, String)>, usize) {
    let (mut out, mut pages, mut after) = (Vec::new(), 0, None::<String>);
    loop {
        let q = match &after {
            Some(a) => format!("{query}&after={a}"),
            None => query.to_owned(),
        };
        let (rooms, next) = page(api, token, &q).await;
        pages += 1;
        out.extend(rooms);
        match next {
            Some(n) => after = Some(n),
            None => return (out, pages),
        }
    }
}

async fn filter_by_name(s: TestServer) {
    let api = s.client();
    let (_, token) = api.user("finder").await;
    let names = [
        "Weekend plans",
        "WEEKEND hikes",
        "weekday lunch",
        "Book club",
        "Cozy Café",
        "서울 주말 모임",
        "The weekend",
    ];
    let mut ids = Vec::new();
    for n in names {
        ids.push(api.create_room(&token, n, None).await);
    }
    let id_of = |name: &str| ids[names.iter().position(|n| *n == name).unwrap()].clone();

    // Case-insensitive substring, in id order.
    let (rooms, _) = all(&api, &token, "q=weekend").await;
    let mut expected: Vec<String> = ["Weekend plans", "WEEKEND hikes", "The weekend"]
        .iter()
        .map(|n| id_of(n))
        .collect();
    expected.sort();
    assert_eq!(rooms.iter().map(|r| r.0.clone()).collect::<Vec<_>>(), expected);
    let (rooms, _) = all(&api, &token, "q=%20WeEk%20").await;
    assert_eq!(rooms.len(), 4, "trimmed, any case, `weekday` too: {rooms:?}");
    let (rooms, _) = all(&api, &token, "q=caf%C3%A9").await;
    assert_eq!(rooms, vec![(id_of("Cozy Café"), "Cozy Café".to_owned())]);
    let (rooms, _) = all(&api, &token, "q=%EC%A3%BC%EB%A7%90").await; // 주말
    assert_eq!(rooms.len(), 1);
    let (rooms, _) = all(&api, &token, "q=nothing%20like%20it").await;
    assert!(rooms.is_empty());
    // An empty q is no filter.
    let (rooms, _) = all(&api, &token, "q=").await;
    assert_eq!(rooms.len(), names.len());

    // Paged like the list: limit 1 gives one room a page, each once.
    let (rooms, pages) = all(&api, &token, "q=weekend&limit=1").await;
    assert_eq!(rooms.iter().map(|r| r.0.clone()).collect::<Vec<_>>(), expected);
    assert!(pages >= 3, "{pages} pages");
    let (first, next) = page(&api, &token, "q=weekend&limit=2").await;
    assert_eq!(first.len(), 2);
    assert_eq!(next.as_deref(), Some(first[1].0.as_str()));
    let (rest, _) = page(&api, &token, &format!("q=weekend&limit=2&after={}", first[1].0)).await;
    assert_eq!(rest.iter().map(|r| r.0.clone()).collect::<Vec<_>>(), expected[2..]);

    // Public like the list (no token), and bounded.
    let r = api
        .call(reqwest::Method::GET, "/v1/rooms?q=book", None, None)
        .await
        .expect(200);
    assert_eq!(r["rooms"].as_array().unwrap().len(), 1);
    api.get(&format!("/v1/rooms?q={}", "x".repeat(101)), &token)
        .await
        .expect_error(400, "invalid_request");
    api.get("/v1/rooms?q=a%07b", &token)
        .await
        .expect_error(400, "invalid_request");
    api.get("/v1/rooms?q=week&limit=0", &token)
        .await
        .expect_error(400, "invalid_request");
}

async fn filter_scans_past_a_page_of_the_underlying_list(s: TestServer) {
    // More rooms than one step of the scan (1,000): the matches after it are found.
    let api = s.client();
    let (_, token) = api.user("hoarder").await;
    let mut wanted = HashSet::new();
    for i in 0..1105 {
        let name = if i % 100 == 99 {
            format!("Needle {i}")
        } else {
            format!("Hay {i}")
        };
        let id = api.create_room(&token, &name, None).await;
        if name.starts_with("Needle") {
            wanted.insert(id);
        }
    }
    let (rooms, _) = all(&api, &token, "q=needle&limit=4").await;
    let got: HashSet<String> = rooms.iter().map(|r| r.0.clone()).collect();
    assert_eq!(got.len(), rooms.len(), "each once");
    assert_eq!(got, wanted);
    let body: Value = api.get("/v1/rooms?q=needle", &token).await.expect(200);
    assert_eq!(body["rooms"].as_array().unwrap().len(), 11);
    assert!(body["next_after"].is_null());
}

mod embedded {
    use super::TestServer;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn filter_by_name() {
        super::filter_by_name(TestServer::start().await).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn filter_scans_past_a_page_of_the_underlying_list() {
        super::filter_scans_past_a_page_of_the_underlying_list(TestServer::start().await).await
    }
}

mod redis {
    use super::TestServer;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn filter_by_name() {
        super::filter_by_name(TestServer::start_on_redis().await).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn filter_scans_past_a_page_of_the_underlying_list() {
        super::filter_scans_past_a_page_of_the_underlying_list(TestServer::start_on_redis().await).await
    }
}
