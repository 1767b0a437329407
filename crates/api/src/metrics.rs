//! Operations endpoints: `/ready` (the database answers and every worker of
//! this process is alive) and Prometheus `/metrics` (HTTP requests by route
//! and status, queue depth, job metrics from the jobs service).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cyberimage_jobs::metrics::label;
use serde_json::json;

use crate::AppState;

/// Requests by (method, route template, status); templates, not raw
/// paths, so ids do not explode the label set.
#[derive(Clone, Default)]
pub struct HttpMetrics(Arc<Mutex<BTreeMap<RequestKey, u64>>>);

/// Method, route template, status.
type RequestKey = (String, String, u16);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
}

pub async fn count_requests(
    State(counts): State<HttpMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let resp = next.run(request).await;
    let key = (method, route, resp.status().as_u16());
    *counts
        .0
        .lock()
        .expect("http metrics")
        .entry(key)
        .or_default() += 1;
    resp
}

async fn ready(State(state): State<AppState>) -> Response {
    let (spawned, alive) = state.service.metrics().workers();
    let database = state.service.database_ready().await;
    let db_ok = database.is_ok();
    let workers_ok = alive == spawned;
    let body = json!({
        "status": if db_ok && workers_ok { "ready" } else { "not_ready" },
        "database": match &database {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.to_string(),
        },
        "workers": {"spawned": spawned, "alive": alive},
    });
    let status = if db_ok && workers_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut out = String::new();
    match state.service.database_ready().await {
        Ok(counts) => {
            out.push_str("# HELP cyberimage_queue_jobs Jobs waiting or running, from the database (all processes).\n");
            out.push_str("# TYPE cyberimage_queue_jobs gauge\n");
            let _ = writeln!(
                out,
                "cyberimage_queue_jobs{{state=\"pending\"}} {}",
                counts.pending
            );
            let _ = writeln!(
                out,
                "cyberimage_queue_jobs{{state=\"processing\"}} {}",
                counts.processing
            );
            out.push_str("# TYPE cyberimage_database_up gauge\ncyberimage_database_up 1\n");
        }
        Err(_) => out.push_str("# TYPE cyberimage_database_up gauge\ncyberimage_database_up 0\n"),
    }
    state.service.metrics().render(&mut out);
    out.push_str("# HELP cyberimage_http_requests_total HTTP requests answered, by route template and status.\n");
    out.push_str("# TYPE cyberimage_http_requests_total counter\n");
    for ((method, route, status), n) in state.http_metrics.0.lock().expect("http metrics").iter() {
        let _ = writeln!(
            out,
            "cyberimage_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
            label(method),
            label(route)
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
