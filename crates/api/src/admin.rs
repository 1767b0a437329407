//! Queue administration over REST: our routes (`/api/jobs…`,
//! `/api/queue/clear`, `/api/queue/retry_failed`) and the CyberImage app's
//! admin actions under `/admin/…` with its field names (a form or JSON
//! body with `job_id` / `status`) and its `{success, message}` answers, so
//! its scripts keep working. With API keys configured these need a key
//! with the `admin` scope (`auth::required_scope`). Each is one call to
//! the jobs service; errors go through the one table.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::routing::{get, post};
use axum::{Json, Router};
use cyberimage_core::{JobId, JobStatus};
use cyberimage_jobs::{clear_scope, JobsError, CLEAR_SCOPES};
use serde_json::{json, Map, Value};

use crate::body::check_fields;
use crate::error_table::ApiError;
use crate::{views, AppState};

/// Most jobs one listing returns.
const MAX_LISTED: u32 = 500;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/jobs", get(list_jobs))
        .route("/api/jobs/{job_id}", get(job_details).delete(delete_job))
        .route("/api/jobs/{job_id}/retry", post(retry_job))
        .route("/api/queue/retry_failed", post(retry_failed))
        .route("/api/queue/clear", post(clear))
        // The CyberImage app's admin actions.
        .route("/admin/job/{job_id}", get(job_details))
        .route("/admin/queue/clear", post(app_clear))
        .route("/admin/queue/retry", post(app_retry))
        .route("/admin/queue/force-retry", post(app_retry))
        .route("/admin/queue/retry-all", post(app_retry_all))
        .route("/admin/queue/force-retry-all", post(app_retry_all))
}

fn job_id(raw: &str) -> Result<JobId, ApiError> {
    JobId::parse(raw.trim()).map_err(|_| JobsError::JobNotFound.into())
}

/// A JSON object or an HTML form's fields (the app's admin page posts
/// forms); an empty body is no fields.
fn fields(headers: &HeaderMap, body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    if form {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
            .map_err(|e| ApiError::bad_request(format!("malformed form body: {e}")))?;
        return Ok(pairs
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("the body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("malformed JSON: {e}"))),
    }
}

/// `true`/`false` as JSON or as a form's or query's text.
fn flag(value: Option<&Value>, name: &str) -> Result<bool, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") || s == "1" => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") || s == "0" || s.is_empty() => {
            Ok(false)
        }
        Some(other) => Err(ApiError::bad_request(format!(
            "{name} must be true or false, got {other}"
        ))),
    }
}

/// A `true`/`false` query parameter.
fn query_flag(query: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    flag(query.get(name).cloned().map(Value::String).as_ref(), name)
}

fn text<'a>(map: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, ApiError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim())),
        Some(_) => Err(ApiError::bad_request(format!("{name} must be a string"))),
    }
}

fn statuses(scope: &str) -> Result<&'static [JobStatus], ApiError> {
    clear_scope(scope).ok_or_else(|| {
        ApiError::bad_request(format!(
            "status must be one of {}, got {scope:?}",
            CLEAR_SCOPES.join(", ")
        ))
    })
}

async fn list_jobs(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let wanted: Vec<JobStatus> = match query.get("status").map(String::as_str) {
        None | Some("") | Some("all") => JobStatus::ALL.to_vec(),
        Some(list) => list
            .split(',')
            .map(|s| {
                JobStatus::parse(s.trim())
                    .ok_or_else(|| ApiError::bad_request(format!("unknown status {s:?} in status")))
            })
            .collect::<Result<_, _>>()?,
    };
    let limit = match query.get("limit") {
        None => 100,
        Some(raw) => match raw.parse::<u32>() {
            Ok(n) if (1..=MAX_LISTED).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit must be an integer between 1 and {MAX_LISTED}"
                )))
            }
        },
    };
    let jobs = state.service.list_jobs(&wanted, limit).await?;
    Ok(Json(json!({
        "jobs": jobs.iter().map(views::job_summary).collect::<Vec<_>>(),
    })))
}

/// A job with its images: the app's `/admin/job/{id}` answer (`job`,
/// `images`) and our status view in `job`.
async fn job_details(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = state.service.job(job_id(&raw)?).await?;
    let mut view = views::rest_job_status(&job);
    view["attempts"] = json!(job.attempts);
    Ok(Json(json!({
        "job": view,
        "images": job.images.iter().map(views::image).collect::<Vec<_>>(),
    })))
}

async fn retry_job(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let map = fields(&headers, &body)?;
    check_fields(&map, &["force"])?;
    let force = flag(map.get("force"), "force")? || query_flag(&query, "force")?;
    let job = state.service.retry_job(job_id(&raw)?, force).await?;
    Ok(Json(views::rest_job_status(&job)))
}

async fn retry_failed(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let map = fields(&headers, &body)?;
    check_fields(&map, &["force"])?;
    let report = state
        .service
        .retry_failed(flag(map.get("force"), "force")?)
        .await?;
    Ok(Json(json!(report)))
}

async fn delete_job(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let id = job_id(&raw)?;
    let with_images = query_flag(&query, "images")?;
    let images = state.service.delete_job(id, with_images).await?;
    Ok(Json(json!({"deleted": id, "images_deleted": images})))
}

async fn clear(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let map = fields(&headers, &body)?;
    check_fields(&map, &["status"])?;
    let Some(scope) = text(&map, "status")? else {
        return Err(ApiError::bad_request(format!(
            "status is required: one of {}",
            CLEAR_SCOPES.join(", ")
        )));
    };
    let report = state.service.clear_jobs(statuses(scope)?).await?;
    Ok(Json(json!(report)))
}

/// The app's clear: one job by `job_id`, every job of a `status`, or,
/// with neither, every job (running ones and gallery pictures' jobs kept).
async fn app_clear(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let map = fields(&headers, &body)?;
    check_fields(&map, &["status", "job_id"])?;
    if let Some(raw) = text(&map, "job_id")? {
        let id = job_id(raw)?;
        state.service.delete_job(id, false).await?;
        return Ok(Json(json!({
            "success": true, "deleted": 1,
            "message": format!("Job {id} deleted successfully"),
        })));
    }
    let scope = text(&map, "status")?.unwrap_or("all");
    let report = state.service.clear_jobs(statuses(scope)?).await?;
    Ok(Json(json!({
        "success": true,
        "deleted": report.deleted,
        "kept_with_images": report.kept_with_images,
        "message": format!("Cleared {} jobs with status '{scope}'", report.deleted),
    })))
}

/// The app's retry and force-retry: an admin's retry always forces, as
/// the app does.
async fn app_retry(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let map = fields(&headers, &body)?;
    check_fields(&map, &["job_id"])?;
    let Some(raw) = text(&map, "job_id")? else {
        return Err(ApiError::bad_request("No job ID provided"));
    };
    let job = state.service.retry_job(job_id(raw)?, true).await?;
    Ok(Json(json!({
        "success": true,
        "message": format!("Job {} has been retried with retry count reset", job.id),
        "job": views::rest_job_status(&job),
    })))
}

async fn app_retry_all(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let map = fields(&headers, &body)?;
    check_fields(&map, &[])?;
    let report = state.service.retry_failed(true).await?;
    Ok(Json(json!({
        "success": true,
        "message": format!("Retried {} failed jobs", report.retried),
        "details": {"total_retried": report.retried, "over_queue_bound": report.over_queue_bound},
    })))
}
