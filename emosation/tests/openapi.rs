//! docs/openapi.json describes the server: every documented operation is
//! routed (answers something other than the not_found / method_not_allowed
//! fallbacks), and documented status codes are the ones the contract uses.

mod common;

use common::TestServer;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served() {
    let spec: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/openapi.json")).expect("docs/openapi.json is JSON");
    assert_eq!(spec["openapi"], "3.1.0");
    let s = TestServer::start().await;
    let api = s.client();
    let (uid, token) = api.user("spec_reader").await;
    let room = api.create_room(&token, "spec", None).await;
    let mut checked = 0;
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let concrete = path.replace("{room_id}", &room).replace("{user_id}", &uid);
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            // Logout and delete would end the session the other checks use.
            if (path == "/v1/auth/logout" && method == "post") || (path == "/v1/me" && method == "delete") {
                let r = api.call(m, &concrete, None, None).await;
                assert_eq!(r.status.as_u16(), 401, "{method} {path} exists and wants a token");
                checked += 1;
                continue;
            }
            let r = api.call(m, &concrete, Some(&token), None).await;
            assert_ne!(r.code(), "not_found", "{method} {path} is documented but not routed");
            assert_ne!(
                r.code(),
                "method_not_allowed",
                "{method} {path} is documented but not routed"
            );
            let documented: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
            assert!(
                documented.iter().any(|c| c.as_str() == r.status.as_str()),
                "{method} {path} answered {} which the spec does not list ({documented:?}): {}",
                r.status,
                r.body
            );
            checked += 1;
        }
    }
    assert!(checked >= 19, "checked {checked} operations");
}
