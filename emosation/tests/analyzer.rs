//! The analyzer with an OpenAI-compatible model (a stub server in this test,
//! real HTTP): a slow model never holds chat back, and once it answers every
//! message gets exactly one emotion from it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use common::TestServer;
use emosation_analyzer::ClassifierSettings;
use emosation_analyzer::openai::{OnOutage, OpenAiConfig};
use emosation_testkit::eventually;
use serde_json::{Value, json};
use tokio::sync::watch;

#[derive(Clone)]
struct Stub {
    /// Requests are held until this turns true: a model that is "slow" for as
    /// long as the test needs, without timing anything.
    open: watch::Receiver<bool>,
    requests: Arc<AtomicUsize>,
}

/// Answers every numbered text with `joy`.
async fn complete(State(stub): State<Stub>, axum::Json(body): axum::Json<Value>) -> axum::Json<Value> {
    stub.requests.fetch_add(1, Ordering::Relaxed);
    let mut open = stub.open.clone();
    let _ = open.wait_for(|o| *o).await;
    let user: Value = serde_json::from_str(body["messages"][1]["content"].as_str().unwrap_or("{}")).unwrap_or_default();
    let results: Vec<Value> = user["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|m| json!({"index": m["index"], "label": "joy", "scores": {"joy": 0.9, "neutral": 0.1}}))
        .collect();
    axum::Json(json!({
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": "stub-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": json!({"results": results}).to_string()}, "finish_reason": "stop"}]
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_model_never_holds_chat_back() {
    let (gate, open) = watch::channel(false);
    let requests = Arc::new(AtomicUsize::new(0));
    let stub = Stub {
        open,
        requests: Arc::clone(&requests),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/v1/chat/completions", post(complete))
        .with_state(stub);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut model = OpenAiConfig::new(&base, "stub-model");
    model.timeout = Duration::from_secs(120);
    model.on_outage = OnOutage::Wait;
    let s = TestServer::start_configured(|cfg| cfg.classifier = ClassifierSettings::OpenAi(model)).await;
    let api = s.client();
    let (_, t) = api.user("alice").await;
    let room = api.create_room(&t, "slow model", None).await;

    // The model holds every request; chat goes on regardless.
    let mut sent = Vec::new();
    for i in 0..20 {
        let r = api.send(&t, &room, &format!("m{i}"), &format!("message {i}")).await;
        sent.push(r.expect(202)["message_id"].as_str().unwrap().to_owned());
    }
    let history: Vec<String> = api
        .all_messages(&t, &room)
        .await
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(history, sent, "every message is served while the model is stuck");
    eventually(
        "the analyzer asked the model",
        Duration::from_secs(20),
        async || match requests.load(Ordering::Relaxed) {
            0 => Err("no request".to_owned()),
            n => Ok(n),
        },
    )
    .await;
    let e = api.get(&format!("/v1/rooms/{room}/emotions"), &t).await.expect(200);
    assert_eq!(
        e["emotions"].as_array().unwrap().len(),
        0,
        "no emotion before the model answers"
    );

    // The model answers: every message gets exactly one emotion, from it.
    gate.send(true).unwrap();
    let emotions = eventually("every message's emotion arrived", Duration::from_secs(60), async || {
        let e = api
            .get(&format!("/v1/rooms/{room}/emotions?limit=100"), &t)
            .await
            .expect(200);
        let list = e["emotions"].as_array().unwrap().clone();
        if list.len() < sent.len() {
            return Err(format!("{} emotions", list.len()));
        }
        assert_eq!(e["summary"]["joy"], 20, "{e}");
        Ok(list)
    })
    .await;
    let ids: Vec<&str> = emotions.iter().map(|e| e["message_id"].as_str().unwrap()).collect();
    assert_eq!(ids, sent.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        emotions
            .iter()
            .all(|e| e["model"] == "openai:stub-model" && e["label"] == "joy")
    );
    let batched = requests.load(Ordering::Relaxed);
    assert!(
        batched < sent.len(),
        "messages share requests ({batched} for {})",
        sent.len()
    );
}
