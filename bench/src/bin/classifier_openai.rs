//! The OpenAI-compatible classifier's micro-batching: 8 "partitions" each
//! receive messages at RATE/8 per second for SECS and classify what has
//! arrived whenever their previous call returns (as the analyzer does),
//! against an in-process stub server that answers after MODEL_MS. Reports
//! requests per message (target ≤ 1/16 at 1,000 msg/s) and latencies.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use emosation_analyzer::openai::{OpenAiClassifier, OpenAiConfig};
use emosation_core::emotion::Label;
use emosation_core::ports::Classifier;
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[derive(Default)]
struct Stub {
    requests: AtomicU64,
    messages: AtomicU64,
    model_ms: u64,
}

/// Answers every numbered text with the label its last word names.
async fn complete(State(stub): State<Arc<Stub>>, body: String) -> axum::Json<Value> {
    stub.requests.fetch_add(1, Ordering::Relaxed);
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let user: Value = serde_json::from_str(body["messages"][1]["content"].as_str().unwrap_or("{}")).unwrap_or_default();
    let results: Vec<Value> = user["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let label = m["text"]
                .as_str()
                .and_then(|t| t.split_whitespace().last())
                .and_then(|w| w.parse::<Label>().ok())
                .unwrap_or(Label::Neutral);
            json!({"index": m["index"], "label": label.as_str()})
        })
        .collect();
    stub.messages.fetch_add(results.len() as u64, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(stub.model_ms)).await;
    let content = json!({ "results": results }).to_string();
    axum::Json(
        json!({"id": "b", "object": "chat.completion", "created": 0, "model": "stub",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rate: f64 = emosation_bench::env("RATE", 1_000.0);
    let secs: f64 = emosation_bench::env("SECS", 5.0f64).clamp(0.5, 60.0);
    let partitions: usize = emosation_bench::env("PARTITIONS", 8usize).max(1);
    let model_ms: u64 = emosation_bench::env("MODEL_MS", 20);
    let defaults = OpenAiConfig::default();
    let max_batch: usize = emosation_bench::env("MAX_BATCH", defaults.max_batch);
    let linger_ms: u64 = emosation_bench::env("LINGER_MS", defaults.linger.as_millis() as u64);

    let stub = Arc::new(Stub {
        model_ms,
        ..Stub::default()
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(complete))
        .with_state(Arc::clone(&stub));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let classifier = Arc::new(OpenAiClassifier::new(OpenAiConfig {
        max_batch,
        linger: Duration::from_millis(linger_ms),
        ..OpenAiConfig::new(format!("http://{addr}/v1"), "stub")
    }));

    let period = Duration::from_secs_f64(partitions as f64 / rate);
    let per_partition = (rate * secs / partitions as f64).round() as u64;
    let mut tasks = Vec::new();
    for p in 0..partitions {
        let classifier = Arc::clone(&classifier);
        tasks.push(tokio::spawn(async move {
            let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, String)>();
            // The partition's arrivals, at a steady rate.
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                for i in 0..per_partition {
                    tick.tick().await;
                    let label = Label::ALL[(i as usize + p) % 7];
                    if tx
                        .send((Instant::now(), format!("partition {p} message {i} {label}")))
                        .is_err()
                    {
                        return;
                    }
                }
            });
            // The analyzer's loop: classify whatever arrived, up to 64 at a time.
            let (mut message_us, mut call_us, mut errors) = (Vec::new(), Vec::new(), 0u64);
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < 64 {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
                let texts: Vec<&str> = batch.iter().map(|(_, t)| t.as_str()).collect();
                let started = Instant::now();
                match classifier.classify(&texts).await {
                    Ok(out) => {
                        let done = Instant::now();
                        call_us.push((done - started).as_micros() as u64);
                        for ((at, text), c) in batch.iter().zip(out) {
                            if !text.ends_with(c.label.as_str()) {
                                errors += 1;
                            }
                            message_us.push((done - *at).as_micros() as u64);
                        }
                    }
                    Err(_) => errors += batch.len() as u64,
                }
            }
            (message_us, call_us, errors)
        }));
    }
    let t = Instant::now();
    let (mut message_us, mut call_us, mut errors) = (Vec::new(), Vec::new(), 0);
    for task in tasks {
        let (m, c, e) = tokio::time::timeout(Duration::from_secs_f64(secs + 30.0), task).await??;
        message_us.extend(m);
        call_us.extend(c);
        errors += e;
    }
    let elapsed = t.elapsed().as_secs_f64();
    let messages = message_us.len() as u64;
    let requests = stub.requests.load(Ordering::Relaxed);
    println!(
        "{}",
        json!({"bench": "classifier_openai", "rate": rate, "secs": elapsed, "partitions": partitions,
               "model_ms": model_ms, "max_batch": max_batch, "linger_ms": linger_ms,
               "messages": messages, "classify_calls": call_us.len(), "requests": requests,
               "requests_per_message": requests as f64 / messages.max(1) as f64,
               "target_requests_per_message": 1.0 / 16.0,
               "messages_per_request": stub.messages.load(Ordering::Relaxed) as f64 / requests.max(1) as f64,
               "errors": errors,
               "classify_latency": emosation_bench::percentiles(call_us),
               "message_latency": emosation_bench::percentiles(message_us)})
    );
    Ok(())
}
