//! Observability and the edges of routing: request metrics, `/metrics`,
//! `/healthz` (liveness), `/readyz` (ready to take writes), and JSON answers
//! for unknown routes and methods.
//!
//! Metric labels come from a closed set, never from client input: the route
//! is the matched route's template (`unmatched` when none matched) and the
//! method is one of the methods of RFC 9110 (`other` for any other token).

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use emosation_core::ports::MemoryUse;

use crate::ApiError;

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ])
                .expect("static buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests embedding several
            // servers); the handle still renders this recorder's view.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Middleware: counts requests and their latency by route, method and status.
pub async fn track(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(req.method());
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!("emosation_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("emosation_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    res
}

/// The `method` label: a standard method's name, else `other` (a client
/// may send any token as a method, and each label value is a series kept
/// for the life of the process).
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Whether this process can take writes: `Err(reason)` while it cannot.
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The memory this process's caches and buffers hold, by part, read when
/// `/metrics` is rendered.
pub type MemoryReport = Arc<dyn Fn() -> Vec<MemoryUse> + Send + Sync>;

/// Sets `emosation_memory_bytes{part}` and `emosation_memory_limit_bytes{part}`.
fn record_memory(parts: &[MemoryUse]) {
    for m in parts {
        metrics::gauge!("emosation_memory_bytes", "part" => m.part).set(m.bytes as f64);
        metrics::gauge!("emosation_memory_limit_bytes", "part" => m.part).set(m.limit as f64);
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

/// Adds `/healthz`, `/readyz`, `/metrics`, JSON fallbacks and request
/// metrics to a service's routes.
///
/// `/metrics` first records what `memory` reports. `/healthz` is liveness: 200 while the process answers at all. `/readyz`
/// is 200 `ready` while `ready` says the process can take writes, else 503
/// `unavailable` with the reason and `Retry-After`.
pub fn finish(routes: Router, ready: ReadyCheck, memory: MemoryReport) -> Router {
    let handle = prometheus();
    routes
        .route("/healthz", get(|| async { (StatusCode::OK, "ok") }))
        .route(
            "/readyz",
            get(move || {
                let verdict = ready();
                async move {
                    match verdict {
                        Ok(()) => (StatusCode::OK, "ready").into_response(),
                        Err(why) => ApiError::unavailable(format!("not ready: {why}")).into_response(),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let h = handle.clone();
                record_memory(&memory());
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        h.render(),
                    )
                        .into_response()
                }
            }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(track))
}
