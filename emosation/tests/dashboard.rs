//! The operator's dashboard cannot silently rot: every metric that a PromQL
//! expression of deploy/grafana/dashboards/emosation.json reads is exported
//! on `/metrics` by a real `serve` under a little load (sign-ups, a room,
//! WebSocket sends and receives, a rate-limited login, a refused
//! connection, a closed socket); the dashboard and the Prometheus and
//! Grafana configuration parse, and agree with each other.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::ws_client::Client;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every `expr` of the dashboard's panels (rows' nested panels included).
fn exprs(dashboard: &Value) -> Vec<String> {
    fn walk(panels: &Value, out: &mut Vec<String>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push(e.to_owned());
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The metric names a PromQL expression reads: its identifiers, less what
/// is not a metric — string literals, label matchers `{…}`, ranges `[…]`,
/// the label lists of `by`/`without`/`on`/`ignoring`/`group_*`, function
/// names (an identifier before `(`), aggregation operators, keywords and
/// numbers.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        // Aggregation operators, which may be followed by `by (…)` rather
        // than by their parenthesis.
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
        // Binary operators and modifiers.
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
    ];
    const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    // Blank out strings, matchers and ranges; a matcher's values are
    // strings, which may hold braces.
    let mut plain = String::with_capacity(expr.len());
    let mut in_matcher = false;
    let mut in_range = false;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in expr.chars() {
        let keep = if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            false
        } else if matches!(c, '"' | '\'' | '`') {
            quote = Some(c);
            false
        } else if in_matcher {
            in_matcher = c != '}';
            false
        } else if in_range {
            in_range = c != ']';
            false
        } else if c == '{' {
            in_matcher = true;
            false
        } else if c == '[' {
            in_range = true;
            false
        } else {
            true
        };
        plain.push(if keep { c } else { ' ' });
    }
    let chars: Vec<char> = plain.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_list = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace()).copied();
            if LABEL_LISTS.contains(&word.as_str()) {
                // Its parenthesised list names labels, not metrics.
                skip_list = next == Some('(');
                continue;
            }
            if next == Some('(') || KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                continue;
            }
            names.insert(word);
        } else if c.is_ascii_digit() || c == '.' {
            // A number or a duration (1, 0.99, 1e3, 5m): no name in it.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c == '(' && skip_list {
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            skip_list = false;
            i += 1;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_expression_reader_finds_metrics_and_nothing_else() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, route) (rate(emosation_x_bucket{route!="a{b}",x=~"[0-9]"}[$__rate_interval])))
           / on (route) group_left (service) max without (instance) (up) + 1e3 * sum(other_total offset 5m) > bool 2"#,
    );
    let want: BTreeSet<String> = ["emosation_x_bucket", "up", "other_total"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(names, want);
}

/// The names a Prometheus text exposition exports.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// YAML files read by python3's yaml (what scripts/compose-check uses), as
/// JSON; `None` if python3 or its yaml module is missing.
fn yaml_files(paths: &[&Path]) -> Option<Vec<Value>> {
    let script = "import json, sys, yaml\nprint(json.dumps([yaml.safe_load(open(p)) for p in sys.argv[1:]]))";
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(paths)
        .output()
        .ok()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("No module named"), "a YAML file does not parse: {err}");
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("python printed JSON"))
}

#[test]
fn the_dashboard_and_the_prometheus_and_grafana_configuration_parse_and_agree() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy().join("grafana/dashboards/emosation.json")).unwrap())
            .expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "emosation");
    let exprs = exprs(&dashboard);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let compose = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml");
    let files = [
        deploy().join("prometheus/prometheus.yml"),
        deploy().join("grafana/provisioning/datasources/prometheus.yml"),
        deploy().join("grafana/provisioning/dashboards/emosation.yml"),
        compose,
    ];
    let Some(parsed) = yaml_files(&files.iter().map(PathBuf::as_path).collect::<Vec<_>>()) else {
        assert!(
            std::env::var_os("EMOSATION_REQUIRE_TEST_TOOLS").is_none(),
            "python3 with yaml is needed to read the YAML files"
        );
        eprintln!("skipping the YAML half: python3 with yaml is missing (scripts/test installs it)");
        return;
    };
    let (prometheus, datasources, providers, compose) = (&parsed[0], &parsed[1], &parsed[2], &parsed[3]);

    // Prometheus scrapes /metrics of every emosation service the compose
    // file runs (those that serve: not the one-shot certificate maker).
    let job = &prometheus["scrape_configs"][0];
    assert_eq!(job["metrics_path"], "/metrics");
    let targets: BTreeSet<String> = job["static_configs"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    let services: BTreeSet<String> = compose["services"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, s)| s["image"] == "emosation:local" && s.get("healthcheck").is_some_and(|h| !h.is_null()))
        .map(|(name, _)| format!("{name}:8080"))
        .collect();
    assert!(services.len() >= 6, "{services:?}");
    assert_eq!(targets, services, "Prometheus scrapes exactly the emosation services");

    // Every panel reads the provisioned data source.
    let uid = datasources["datasources"][0]["uid"].as_str().unwrap();
    fn datasource_uids(panels: &Value, out: &mut BTreeSet<String>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.insert(t["datasource"]["uid"].as_str().unwrap_or("").to_owned());
            }
            datasource_uids(&p["panels"], out);
        }
    }
    let mut uids = BTreeSet::new();
    datasource_uids(&dashboard["panels"], &mut uids);
    assert_eq!(uids, BTreeSet::from([uid.to_owned()]));
    // Grafana reads the dashboards where compose mounts them.
    let path = providers["providers"][0]["options"]["path"].as_str().unwrap();
    let grafana_mounts = compose["services"]["grafana"]["volumes"].as_array().unwrap();
    assert!(
        grafana_mounts
            .iter()
            .any(|v| v.as_str().unwrap().starts_with("./deploy/grafana/dashboards:")
                && v.as_str().unwrap().contains(path)),
        "{grafana_mounts:?} vs {path}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exported_under_load() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy().join("grafana/dashboards/emosation.json")).unwrap())
            .unwrap();
    let wanted: BTreeSet<String> = exprs(&dashboard).iter().flat_map(|e| metric_names(e)).collect();
    for must in [
        "emosation_ingest_commands_total",
        "emosation_fanout_deliveries_total",
        "emosation_ingest_append_seconds_bucket",
        "emosation_ingest_ack_seconds_bucket",
        "emosation_consumer_lag_records",
        "emosation_fanout_connections",
        "emosation_fanout_closes_total",
        "emosation_analyzer_emotions_total",
        "emosation_http_requests_total",
        "emosation_rate_limited_total",
    ] {
        assert!(
            wanted.contains(must),
            "the dashboard no longer shows {must}: {wanted:?}"
        );
    }

    let tmp = tempfile::tempdir().unwrap();
    let port = emosation_testkit::free_port();
    let (_child, api) = common::spawn_binary(
        "serve",
        tmp.path(),
        port,
        &["--login-limit", "1/1", "--max-connections-per-ip", "16"],
    )
    .await;

    // Load: two users, a room, WebSocket sends and deliveries, emotions.
    let (_, alice) = api.user("alice").await;
    let (_, bob) = api.user("bob").await;
    let room = api.create_room(&alice, "watched", None).await;
    api.post(&format!("/v1/rooms/{room}/join"), Some(&bob), json!({}))
        .await
        .expect(200);
    let mut bob_ws = Client::connect(&api.base, &bob).await;
    assert_eq!(bob_ws.subscribe(&room, None).await["type"], "subscribed");
    let mut alice_ws = Client::connect(&api.base, &alice).await;
    for (i, text) in ["what a lovely day", "I am so angry", "this is scary"]
        .iter()
        .enumerate()
    {
        alice_ws
            .send(json!({"type": "send", "room_id": room, "client_msg_id": format!("m{i}"), "text": text}))
            .await;
        assert_eq!(alice_ws.next_of(&["ack", "error"]).await["type"], "ack");
        assert_eq!(bob_ws.next_of(&["message"]).await["text"], *text);
    }
    api.send(&alice, &room, "h1", "happy over http").await.expect(202);
    // A socket closed by its client.
    bob_ws.ws.close(None).await.unwrap();
    // A rate-limited login (one a minute per username here).
    let refused = api
        .post(
            "/v1/auth/login",
            None,
            json!({"username": "alice", "password": "correct horse"}),
        )
        .await;
    refused.expect_error(429, "rate_limited");
    // A connection refused by the per-address cap.
    let addr = format!("127.0.0.1:{port}");
    let mut held = Vec::new();
    let mut refused_conn = false;
    for _ in 0..32 {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut buf = [0u8; 64];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut buf)).await
            && buf[..n].starts_with(b"HTTP/1.1 429")
        {
            refused_conn = true;
            break;
        }
        held.push(tcp);
    }
    assert!(refused_conn, "no connection was refused by --max-connections-per-ip");
    drop(held);

    let http = reqwest::Client::new();
    let mut missing = BTreeSet::new();
    emosation_testkit::eventually("every dashboard metric exported", Duration::from_secs(30), async || {
        let text = http
            .get(format!("{}/metrics", api.base))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        let have = exported(&text);
        missing = wanted.difference(&have).cloned().collect();
        // Lag per partition for every consumer group the dashboard shows.
        for group in ["core", "analyzer", "activity"] {
            if !text.contains(&format!("emosation_consumer_lag_records{{group=\"{group}\"")) {
                missing.insert(format!("emosation_consumer_lag_records{{group=\"{group}\"}}"));
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("not exported: {missing:?}"))
        }
    })
    .await;
}
