//! [`OpenAiClassifier`] against a stub OpenAI-compatible server over real
//! HTTP: request shape, batching, retries, timeouts, tolerant parsing, the
//! circuit breaker, and an outage in the middle of the analyzer's stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use emosation_analyzer::Analyzer;
use emosation_analyzer::offline;
use emosation_analyzer::openai::{OnOutage, OpenAiClassifier, OpenAiConfig, SYSTEM_PROMPT};
use emosation_core::emotion::{Classification, Label};
use emosation_core::ids::{LogPosition, Topic, Topology};
use emosation_core::ports::{Classifier, ClassifyError, Log};
use emosation_core::record::{MessagePosted, Record};
use emosation_storage::EmbeddedLog;
use emosation_testkit::eventually;
use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// What the stub does with its `n`th request (counting from 0).
#[derive(Clone)]
enum Reply {
    /// Classify every text by its last word (`"… joy"` → joy, else neutral).
    Answer,
    /// This status, with an optional `Retry-After`.
    Status(u16, Option<&'static str>),
    /// Sleep, then answer.
    Sleep(Duration),
    /// A completion whose content is this text.
    Content(String),
    /// 200 with this body, not a chat completion.
    Raw(&'static str),
    /// 401 whose body echoes the Authorization header, as a careless server might.
    EchoKey,
}

type Script = Box<dyn Fn(usize) -> Reply + Send + Sync>;

struct Seen {
    path: String,
    authorization: Option<String>,
    body: Value,
}

struct StubState {
    script: Mutex<Script>,
    seen: Mutex<Vec<Seen>>,
    count: AtomicUsize,
}

struct Stub {
    addr: SocketAddr,
    state: Arc<StubState>,
    task: tokio::task::JoinHandle<()>,
}

impl Stub {
    async fn start(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Stub {
        let state = Arc::new(StubState {
            script: Mutex::new(Box::new(script)),
            seen: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(handle))
            .fallback(|uri: Uri| async move { (StatusCode::NOT_FOUND, format!("no route {uri}")) })
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Stub { addr, state, task }
    }

    fn set(&self, script: impl Fn(usize) -> Reply + Send + Sync + 'static) {
        *self.state.script.lock().unwrap() = Box::new(script);
    }

    fn requests(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    fn config(&self) -> OpenAiConfig {
        OpenAiConfig {
            linger: Duration::from_millis(10),
            timeout: Duration::from_secs(2),
            retries: 2,
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(3),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_millis(500),
            ..OpenAiConfig::new(format!("http://{}/v1", self.addr), "stub-model")
        }
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(state): State<Arc<StubState>>, uri: Uri, headers: HeaderMap, body: String) -> Response {
    let n = state.count.fetch_add(1, Ordering::SeqCst);
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let reply = (state.script.lock().unwrap())(n);
    let texts = texts_of(&body);
    state.seen.lock().unwrap().push(Seen {
        path: uri.path().to_owned(),
        authorization: headers.get("authorization").map(|v| v.to_str().unwrap().to_owned()),
        body,
    });
    match reply {
        Reply::Answer => completion(&answer(&texts)),
        Reply::Sleep(d) => {
            tokio::time::sleep(d).await;
            completion(&answer(&texts))
        }
        Reply::Content(c) => completion(&c),
        Reply::Raw(s) => (StatusCode::OK, s).into_response(),
        Reply::EchoKey => {
            let auth = state.seen.lock().unwrap().last().and_then(|s| s.authorization.clone());
            (StatusCode::UNAUTHORIZED, format!("bad key: {auth:?}")).into_response()
        }
        Reply::Status(code, retry_after) => {
            let mut r = (
                StatusCode::from_u16(code).unwrap(),
                r#"{"error":{"message":"stub failure","type":"server_error","param":null,"code":null}}"#,
            )
                .into_response();
            if let Some(after) = retry_after {
                r.headers_mut().insert("retry-after", after.parse().unwrap());
            }
            r
        }
    }
}

/// The numbered texts of a request's user message.
fn texts_of(body: &Value) -> Vec<(u64, String)> {
    let Some(user) = body["messages"][1]["content"].as_str() else {
        return Vec::new();
    };
    let doc: Value = serde_json::from_str(user).unwrap_or(Value::Null);
    doc["messages"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| (m["index"].as_u64().unwrap(), m["text"].as_str().unwrap().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn label_of(text: &str) -> Label {
    text.split_whitespace()
        .last()
        .and_then(|w| w.parse().ok())
        .unwrap_or(Label::Neutral)
}

/// The stub model's answer, in reverse order so only the indices map it back.
fn answer(texts: &[(u64, String)]) -> String {
    let results: Vec<Value> = texts
        .iter()
        .rev()
        .map(|(i, t)| {
            let label = label_of(t);
            let scores: serde_json::Map<String, Value> = Label::ALL
                .iter()
                .map(|l| (l.as_str().to_owned(), json!(if *l == label { 0.7 } else { 0.05 })))
                .collect();
            json!({ "index": i, "label": label.as_str(), "scores": scores })
        })
        .collect();
    json!({ "results": results }).to_string()
}

fn completion(content: &str) -> Response {
    axum::Json(json!({
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": "stub-model",
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": content }, "finish_reason": "stop" }]
    }))
    .into_response()
}

/// Every classify in these tests is bounded.
async fn classify(c: &OpenAiClassifier, texts: &[&str]) -> Result<Vec<Classification>, ClassifyError> {
    tokio::time::timeout(Duration::from_secs(15), c.classify(texts))
        .await
        .expect("classify never hangs")
}

#[tokio::test]
async fn request_shape() {
    let stub = Stub::start(|_| Reply::Answer).await;
    let c = OpenAiClassifier::new(stub.config().with_api_key("sk-test-key"));
    assert_eq!(c.model(), "openai:stub-model");
    let out = classify(&c, &["what a day joy", "so unfair anger"]).await.unwrap();
    assert_eq!(
        out.iter().map(|c| c.label).collect::<Vec<_>>(),
        [Label::Joy, Label::Anger]
    );
    assert!(out.iter().all(|c| c.model == "openai:stub-model"));
    assert!((out[0].score - 0.7).abs() < 1e-5);

    {
        let seen = stub.state.seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let s = &seen[0];
        assert_eq!(s.path, "/v1/chat/completions");
        assert_eq!(s.authorization.as_deref(), Some("Bearer sk-test-key"));
        assert_eq!(s.body["model"], "stub-model");
        assert_eq!(s.body["messages"][0]["role"], "system");
        assert_eq!(s.body["messages"][0]["content"], SYSTEM_PROMPT);
        assert_eq!(s.body["messages"][1]["role"], "user");
        assert_eq!(s.body["response_format"]["type"], "json_schema");
        assert_eq!(s.body["response_format"]["json_schema"]["strict"], true);
        assert!(s.body["response_format"]["json_schema"]["schema"]["properties"]["results"].is_object());
        assert_eq!(
            texts_of(&s.body),
            [(0, "what a day joy".to_owned()), (1, "so unfair anger".to_owned())],
            "messages are numbered"
        );
    }

    // Without a key: no Authorization header at all, and the base URL's path is kept.
    let c = OpenAiClassifier::new(stub.config());
    classify(&c, &["hi"]).await.unwrap();
    let seen = stub.state.seen.lock().unwrap();
    assert_eq!(seen[1].authorization, None);
    assert_eq!(seen[1].path, "/v1/chat/completions");
}

#[tokio::test]
async fn concurrent_calls_share_requests() {
    let stub = Stub::start(|_| Reply::Answer).await;
    let c = OpenAiClassifier::new(OpenAiConfig {
        max_batch: 32,
        linger: Duration::from_millis(50),
        ..stub.config()
    });
    let texts: Vec<String> = (0..64).map(|i| format!("message {i} {}", Label::ALL[i % 7])).collect();
    let results = join_all(texts.iter().map(|t| {
        let c = &c;
        async move { classify(c, &[t.as_str()]).await }
    }))
    .await;
    for (t, r) in texts.iter().zip(results) {
        let r = r.unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].label, label_of(t), "{t} got its own answer");
    }
    let requests = stub.requests();
    assert!(requests <= 4, "64 calls took {requests} requests");
    {
        let seen = stub.state.seen.lock().unwrap();
        assert!(seen.iter().all(|s| texts_of(&s.body).len() <= 32), "max_batch holds");
    }

    // A call with more texts than max_batch is split and reassembled in order.
    let many: Vec<&str> = texts.iter().map(String::as_str).collect();
    let out = classify(&c, &many).await.unwrap();
    assert_eq!(out.len(), 64);
    assert!(out.iter().zip(&texts).all(|(c, t)| c.label == label_of(t)));
}

#[tokio::test]
async fn server_errors_are_retried() {
    let stub = Stub::start(|n| if n < 2 { Reply::Status(500, None) } else { Reply::Answer }).await;
    let c = OpenAiClassifier::new(stub.config());
    let out = classify(&c, &["finally joy"]).await.unwrap();
    assert_eq!(out[0].label, Label::Joy);
    assert_eq!(stub.requests(), 3, "two 500s, then the answer");

    // Beyond the retries: Unavailable.
    stub.set(|_| Reply::Status(503, None));
    let before = stub.requests();
    let e = classify(&c, &["x"]).await.unwrap_err();
    assert!(
        matches!(e, ClassifyError::Unavailable(ref m) if m.contains("503")),
        "{e}"
    );
    assert_eq!(stub.requests() - before, 3, "first attempt and two retries");
}

#[tokio::test]
async fn rate_limits_honour_retry_after() {
    let stub = Stub::start(|n| {
        if n == 0 {
            Reply::Status(429, Some("1"))
        } else {
            Reply::Answer
        }
    })
    .await;
    let c = OpenAiClassifier::new(stub.config());
    let t = Instant::now();
    let out = classify(&c, &["calm neutral"]).await.unwrap();
    assert_eq!(out[0].label, Label::Neutral);
    assert_eq!(stub.requests(), 2);
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "waited Retry-After: {:?}",
        t.elapsed()
    );

    // A Retry-After beyond max_backoff fails now instead of holding the batch.
    stub.set(|_| Reply::Status(429, Some("3600")));
    let t = Instant::now();
    assert!(matches!(classify(&c, &["x"]).await, Err(ClassifyError::Unavailable(_))));
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let stub = Stub::start(|_| Reply::Status(400, None)).await;
    let c = OpenAiClassifier::new(stub.config().with_api_key("sk-never-shown"));
    let e = classify(&c, &["x"]).await.unwrap_err();
    assert!(matches!(e, ClassifyError::Unavailable(_)), "{e}");
    assert!(!e.to_string().contains("sk-never-shown"), "{e}");
    assert_eq!(stub.requests(), 1);

    // Not even when the server echoes it back.
    stub.set(|_| Reply::EchoKey);
    let e = classify(&c, &["x"]).await.unwrap_err();
    assert!(
        e.to_string().contains("401") && e.to_string().contains("<redacted>"),
        "{e}"
    );
    assert!(!e.to_string().contains("sk-never-shown"), "{e}");
    assert_eq!(stub.requests(), 2, "401 is not retried");
}

#[tokio::test]
async fn timeouts_are_retried_then_fail_cleanly() {
    let stub = Stub::start(|_| Reply::Sleep(Duration::from_secs(5))).await;
    let c = OpenAiClassifier::new(OpenAiConfig {
        timeout: Duration::from_millis(200),
        retries: 1,
        ..stub.config()
    });
    let t = Instant::now();
    let e = classify(&c, &["slow"]).await.unwrap_err();
    assert!(
        matches!(e, ClassifyError::Unavailable(ref m) if m.contains("timed out")),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(stub.requests(), 2);

    // A slow first attempt, then a quick one.
    stub.set(|n| {
        if n == 2 {
            Reply::Sleep(Duration::from_secs(5))
        } else {
            Reply::Answer
        }
    });
    assert_eq!(classify(&c, &["ok joy"]).await.unwrap()[0].label, Label::Joy);
}

#[tokio::test]
async fn answers_are_read_tolerantly_or_rejected() {
    let fenced = "Here you are:\n```json\n{\"results\":[{\"index\":0,\"label\":\"Sadness\"}]}\n```";
    let stub = Stub::start(move |_| Reply::Content(fenced.into())).await;
    let c = OpenAiClassifier::new(OpenAiConfig {
        retries: 1,
        // Unreadable answers count as failures; keep the breaker out of this test.
        breaker_failures: 100,
        ..stub.config()
    });
    let out = classify(&c, &["a"]).await.unwrap();
    assert_eq!(out[0].label, Label::Sadness);
    assert_eq!(out[0].scores[1], 1.0, "missing scores: all weight on the label");

    stub.set(|_| Reply::Content("I'd rather not say.".into()));
    let before = stub.requests();
    let e = classify(&c, &["a"]).await.unwrap_err();
    assert!(matches!(e, ClassifyError::Malformed(_)), "{e}");
    assert_eq!(stub.requests() - before, 2, "an unreadable answer is asked again once");

    stub.set(|_| Reply::Raw("<html>gateway says hi</html>"));
    assert!(matches!(classify(&c, &["a"]).await, Err(ClassifyError::Malformed(_))));

    // One result missing out of two: the batch is unreadable as a whole.
    stub.set(|_| Reply::Content(r#"{"results":[{"index":0,"label":"joy"}]}"#.into()));
    assert!(matches!(
        classify(&c, &["a", "b"]).await,
        Err(ClassifyError::Malformed(_))
    ));
}

#[tokio::test]
async fn breaker_falls_back_to_offline_then_recovers() {
    let stub = Stub::start(|_| Reply::Status(500, None)).await;
    let c = OpenAiClassifier::new(OpenAiConfig {
        retries: 3,
        breaker_failures: 2,
        breaker_cooldown: Duration::from_millis(400),
        on_outage: OnOutage::Fallback,
        ..stub.config()
    });
    let offline = offline::LexiconClassifier::new();
    let text = "I am so happy today";
    let out = classify(&c, &[text]).await.unwrap();
    assert_eq!(out[0].model, offline::MODEL, "the offline classifier answered");
    assert_eq!(out[0], offline.classify_one(text));
    assert_eq!(stub.requests(), 2, "retries stop once the breaker opens");

    // While open, the stub is not asked.
    let t = Instant::now();
    let out = classify(&c, &["so sad"]).await.unwrap();
    assert_eq!(out[0].model, offline::MODEL);
    assert!(t.elapsed() < Duration::from_millis(100));
    assert_eq!(stub.requests(), 2);

    // After the cool-down a probe finds the model back.
    stub.set(|_| Reply::Answer);
    tokio::time::sleep(Duration::from_millis(450)).await;
    let out = classify(&c, &["back to work joy"]).await.unwrap();
    assert_eq!(out[0].model, "openai:stub-model");
    assert_eq!(out[0].label, Label::Joy);
    assert_eq!(stub.requests(), 3);
}

#[tokio::test]
async fn breaker_in_wait_mode_fails_fast_and_probes() {
    let stub = Stub::start(|_| Reply::Status(502, None)).await;
    let c = OpenAiClassifier::new(OpenAiConfig {
        retries: 3,
        breaker_failures: 2,
        breaker_cooldown: Duration::from_millis(400),
        on_outage: OnOutage::Wait,
        ..stub.config()
    });
    assert!(matches!(classify(&c, &["x"]).await, Err(ClassifyError::Unavailable(_))));
    assert_eq!(stub.requests(), 2);

    let t = Instant::now();
    for _ in 0..5 {
        assert!(matches!(classify(&c, &["x"]).await, Err(ClassifyError::Unavailable(_))));
    }
    assert!(t.elapsed() < Duration::from_millis(100), "open: fails at once");
    assert_eq!(stub.requests(), 2, "open: the endpoint is not asked");

    // Half-open with the model still down: one probe, then open again.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(matches!(classify(&c, &["x"]).await, Err(ClassifyError::Unavailable(_))));
    assert_eq!(stub.requests(), 3, "a probe is one attempt");
    assert!(matches!(classify(&c, &["x"]).await, Err(ClassifyError::Unavailable(_))));
    assert_eq!(stub.requests(), 3);

    stub.set(|_| Reply::Answer);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(classify(&c, &["up fear"]).await.unwrap()[0].label, Label::Fear);
    assert_eq!(classify(&c, &["up surprise"]).await.unwrap()[0].label, Label::Surprise);
    assert_eq!(stub.requests(), 5, "closed again");
}

#[tokio::test]
async fn unreachable_endpoint_falls_back() {
    // A port nobody listens on.
    let addr = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let c = OpenAiClassifier::new(OpenAiConfig {
        breaker_failures: 2,
        ..OpenAiConfig::new(format!("http://{addr}/v1"), "m")
    });
    let out = classify(&c, &["thank you so much"]).await.unwrap();
    assert_eq!(out[0].model, offline::MODEL);
}

fn message(i: usize) -> Record {
    Record::MessagePosted(MessagePosted {
        request_id: i as i64,
        at: 1_700_000_000_000 + i as i64,
        room_id: format!("room-{}", i % 5),
        author_id: "user-1".into(),
        author: "alice".into(),
        client_msg_id: format!("c{i}"),
        text: format!("message {i} {}", Label::ALL[i % 7]),
        attachments: vec![],
    })
}

async fn post_message(log: &dyn Log, i: usize) {
    let r = message(i);
    log.append(
        Topic::Rooms,
        r.key().as_bytes(),
        Bytes::from(emosation_schemas::encode(&r).unwrap()),
    )
    .await
    .unwrap();
}

/// Message id → the emotions recorded for it (label, model), and message id
/// → text, read back from the log.
async fn emotions(log: &dyn Log) -> (HashMap<String, Vec<(String, String)>>, HashMap<String, String>) {
    let mut by_message: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut messages = HashMap::new();
    for p in 0..log.topology().rooms_partitions {
        let end = log.end_offset(Topic::Rooms, p).await.unwrap();
        let entries = log
            .fetch(Topic::Rooms, p, 0, end as usize + 1, Duration::ZERO)
            .await
            .unwrap();
        for e in entries {
            match emosation_schemas::decode(&e.value).unwrap() {
                Record::EmotionRecorded(r) => by_message.entry(r.message_id).or_default().push((r.label, r.model)),
                Record::MessagePosted(m) => {
                    messages.insert(LogPosition::new(p, e.offset).to_id(), m.text);
                }
                _ => {}
            }
        }
    }
    (by_message, messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_mid_stream_still_gives_every_message_exactly_one_emotion() {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn Log> = Arc::new(
        EmbeddedLog::open(
            dir.path(),
            Topology {
                accounts_partitions: 1,
                rooms_partitions: 3,
            },
        )
        .unwrap(),
    );
    let stub = Stub::start(|_| Reply::Answer).await;
    let classifier = Arc::new(OpenAiClassifier::new(OpenAiConfig {
        retries: 1,
        breaker_failures: 3,
        breaker_cooldown: Duration::from_millis(300),
        on_outage: OnOutage::Wait,
        ..stub.config()
    }));
    let stop = CancellationToken::new();
    let analyzer = Analyzer::new(Arc::clone(&log), classifier);
    let run = tokio::spawn(analyzer.run(stop.clone()));

    let total = 60;
    for i in 0..20 {
        post_message(&*log, i).await;
    }
    // Let the first messages through, then take the model down.
    eventually(
        "a healthy model classifies the first messages",
        Duration::from_secs(20),
        async || match emotions(&*log).await.0.len() {
            n if n >= 20 => Ok(()),
            n => Err(format!("{n} classified")),
        },
    )
    .await;
    stub.set(|_| Reply::Status(503, None));
    let down_at = stub.requests();
    for i in 20..45 {
        post_message(&*log, i).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let failed = stub.requests() - down_at;
    assert!(
        failed >= 3,
        "the analyzer kept trying during the outage ({failed} requests)"
    );
    assert_eq!(
        emotions(&*log).await.0.len(),
        20,
        "nothing appended while the model is out"
    );
    stub.set(|_| Reply::Answer);
    for i in 45..total {
        post_message(&*log, i).await;
    }

    eventually("every message classified", Duration::from_secs(30), async || {
        let (by_message, messages) = emotions(&*log).await;
        assert_eq!(messages.len(), total);
        if by_message.len() == total {
            Ok(())
        } else {
            Err(format!("{} of {total}", by_message.len()))
        }
    })
    .await;
    // Let any straggling append land before counting duplicates.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("analyzer stops")
        .unwrap()
        .unwrap();

    let (by_message, messages) = emotions(&*log).await;
    assert_eq!(by_message.len(), total);
    for (id, text) in &messages {
        let records = &by_message[id];
        assert_eq!(records.len(), 1, "message {id} has exactly one emotion: {records:?}");
        assert_eq!(records[0].1, "openai:stub-model", "wait mode: only the model answers");
        assert_eq!(records[0].0, label_of(text).as_str(), "{text:?} got its own answer");
    }
}
