//! `--log-format json` on the real binary: every line on stderr is one JSON
//! object, and a request's lines carry its request id (the client's
//! `X-Request-Id`, or the one the server made and answered with). Text
//! stays the default.

mod common;

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_emosation");

/// Runs `serve` with `extra` flags, makes `requests` (path, X-Request-Id),
/// stops it with SIGTERM and returns its stderr lines and the response ids.
async fn run(extra: &[&str], requests: &[(&str, Option<&str>)]) -> (Vec<String>, Vec<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let port = emosation_testkit::free_port();
    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(tmp.path())
        .args(extra)
        .env("EMOSATION_JWT_SECRET", common::SECRET)
        // Every request's line is at debug; the rest at info.
        .env(
            "EMOSATION_LOG_LEVEL",
            "info,emosation_http=debug,fjall=warn,lsm_tree=warn",
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = tokio::spawn(async move {
        let mut out = Vec::new();
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            out.push(l);
        }
        out
    });
    let base = format!("http://127.0.0.1:{port}");
    common::wait_healthy(&base, Duration::from_secs(60)).await;
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for (path, id) in requests {
        let mut req = http.get(format!("{base}{path}"));
        if let Some(id) = id {
            req = req.header("x-request-id", *id);
        }
        let res = req.send().await.unwrap();
        ids.push(res.headers()["x-request-id"].to_str().unwrap().to_owned());
    }
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits on SIGTERM")
        .unwrap();
    (lines.await.unwrap(), ids)
}

/// The `request` span's fields of a JSON line, if it has one.
fn request_span(line: &Value) -> Option<&Value> {
    line["spans"].as_array()?.iter().find(|s| s["name"] == "request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_and_carry_the_request_id() {
    let (lines, ids) = run(
        &["--log-format", "json"],
        &[
            ("/healthz", Some("trace-me-42")),
            ("/v1/rooms/nope", None),
            ("/healthz", Some("bad id!")),
        ],
    )
    .await;
    assert_eq!(ids[0], "trace-me-42", "a sane client id is kept");
    assert!(
        ids[1].len() == 16 && ids[1].bytes().all(|b| b.is_ascii_hexdigit()),
        "{}",
        ids[1]
    );
    assert!(
        ids[2].len() == 16 && ids[2] != "bad id!",
        "an id with spaces is replaced: {}",
        ids[2]
    );

    assert!(lines.len() >= 4, "{lines:#?}");
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object: {l:?}: {e}")))
        .collect();
    for p in &parsed {
        assert!(p["timestamp"].is_string() && p["level"].is_string(), "{p}");
        assert!(p["fields"]["message"].is_string(), "{p}");
    }
    assert!(
        parsed.iter().any(|p| p["fields"]["message"] == "emosation serving"),
        "the start-up line: {lines:#?}"
    );
    for (id, path, status) in [(&ids[0], "/healthz", 200), (&ids[1], "/v1/rooms/nope", 404)] {
        let line = parsed
            .iter()
            .find(|p| request_span(p).is_some_and(|s| s["request_id"] == **id))
            .unwrap_or_else(|| panic!("no line with request id {id}: {lines:#?}"));
        let span = request_span(line).unwrap();
        assert_eq!(span["path"], path, "{line}");
        assert_eq!(span["method"], "GET", "{line}");
        assert_eq!(line["fields"]["message"], "request answered", "{line}");
        assert_eq!(line["fields"]["status"], status, "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_stay_the_default() {
    let (lines, _) = run(&[], &[("/healthz", Some("text-id-7"))]).await;
    let serving = lines
        .iter()
        .find(|l| l.contains("emosation serving"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(serde_json::from_str::<Value>(serving).is_err(), "{serving}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("request_id=text-id-7") && l.contains("request answered")),
        "{lines:#?}"
    );
}
