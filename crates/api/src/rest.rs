//! The REST API. JSON in and out; errors as `{"error":{"code","message"}}`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Path, Query, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use cyberimage_core::{ImageId, JobId};
use cyberimage_jobs::{GalleryQuery, ImageVariant, JobsError, MAX_KEYWORDS};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error_table::ApiError;
use crate::{body, params, views, AppState};

const MAX_PER_PAGE: u32 = 100;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/api/generate", post(generate))
        .route("/api/status/{job_id}", get(status))
        .route("/api/preview/{job_id}", get(preview))
        .route("/api/cancel/{job_id}", post(cancel))
        .route("/api/get_image/{image_id}", get(full_image))
        .route("/api/images/{image_id}/thumbnail", get(thumbnail))
        .route(
            "/api/images/{image_id}",
            delete(delete_image).get(image_info),
        )
        // CyberImage's own REST names for the same image record.
        .route(
            "/api/image/{image_id}",
            delete(delete_image).get(image_info),
        )
        .route("/api/image/{image_id}/metadata", get(image_info))
        .route(
            "/api/images/{image_id}/favorite",
            axum::routing::put(set_favorite).post(set_favorite),
        )
        .route("/api/gallery", get(gallery))
        .route("/api/models", get(models))
        .route("/api/loras", get(loras))
        .route("/api/queue", get(queue))
        .route("/api/reset_queue", post(reset_queue))
}

fn job_id(raw: &str) -> Result<JobId, ApiError> {
    JobId::parse(raw).map_err(|_| JobsError::JobNotFound.into())
}

/// Ids that are not well-formed never reach the filesystem: 404 at once.
fn image_id(raw: &str) -> Result<ImageId, ApiError> {
    ImageId::parse(raw).map_err(|_| JobsError::ImageNotFound.into())
}

/// Liveness. `healthy` is the word the CyberImage app answers and its
/// start scripts wait for; like the app it names the device and counts the
/// queue, but the probe needs no key, so with keys configured the counts
/// go only to a caller presenting a valid one.
async fn health(State(state): State<AppState>, headers: HeaderMap) -> Json<Value> {
    let mut body = json!({"status": "healthy", "version": env!("CARGO_PKG_VERSION")});
    body["device"] = json!(state
        .device
        .as_deref()
        .unwrap_or("none (jobs run in worker processes)"));
    if state.keys.authorizes(&headers) {
        // A database that does not answer still leaves the process alive:
        // the counts are left out, `/ready` reports the database.
        if let Ok(counts) = state.service.database_ready().await {
            body["queue"] = json!({
                "pending": counts.pending,
                "processing": counts.processing,
                "queue_size": counts.pending + counts.processing,
            });
        }
    }
    Json(body)
}

/// A JSON body, or a multipart form (`generate_form`) with the same fields
/// and pictures as files.
async fn generate(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("multipart/form-data"));
    let value = if multipart {
        let form = axum::extract::Multipart::from_request(request, &state)
            .await
            .map_err(|e| {
                ApiError::bad_request(format!("not a multipart form: {}", e.body_text()))
            })?;
        crate::generate_form::form_to_json(form).await?
    } else {
        body::json(Bytes::from_request(request, &state).await)?
    };
    params::check_known_fields(&value).map_err(ApiError::bad_request)?;
    let request = params::spec_request(&value).map_err(ApiError::bad_request)?;
    let job = state.service.submit(request).await?;
    let location = format!("/api/status/{}", job.id);
    let mut resp = (StatusCode::ACCEPTED, Json(views::rest_job_submitted(&job))).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

async fn status(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = state.service.job(job_id(&raw)?).await?;
    let mut body = views::rest_job_status(&job);
    if let Some((step, _)) = state.service.preview(job.id) {
        body["preview_url"] = json!(format!("/api/preview/{}?step={step}", job.id));
    }
    Ok(Json(body))
}

/// The latest live preview of a running job (a small PNG), or of one that
/// finished less than 30 s ago (a page may fetch the last one an event
/// announced after the job ended); 404 when there is none: not started,
/// no preview made, finished longer ago, or running in another process.
async fn preview(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = job_id(&raw)?;
    let Some((step, png)) = state.service.downloadable_preview(id) else {
        return Err(ApiError::new_not_found("no preview for this job now"));
    };
    let mut resp = (
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        png.as_ref().clone(),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&step.to_string()) {
        resp.headers_mut().insert("x-preview-step", v);
    }
    Ok(resp)
}

async fn cancel(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = state.service.cancel(job_id(&raw)?).await?;
    Ok(Json(views::rest_job_status(&job)))
}

async fn png_response(
    state: &AppState,
    raw: &str,
    variant: ImageVariant,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let id = image_id(raw)?;
    // An image never changes once written, so its id is a perfect ETag.
    let etag = format!("\"{id}-{}\"", matches!(variant, ImageVariant::Full) as u8);
    let cached = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let bytes = state.service.image_bytes(id, variant).await?;
    let headers = [
        (header::CONTENT_TYPE, "image/png".to_owned()),
        (
            header::CACHE_CONTROL,
            "private, max-age=31536000, immutable".to_owned(),
        ),
        (header::ETAG, etag),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
        (
            header::CONTENT_DISPOSITION,
            format!("inline; filename=\"{id}.png\""),
        ),
    ];
    if cached {
        return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
    }
    Ok((headers, bytes).into_response())
}

async fn full_image(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    png_response(&state, &raw, ImageVariant::Full, &headers).await
}

async fn thumbnail(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    png_response(&state, &raw, ImageVariant::Thumbnail, &headers).await
}

async fn image_info(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = state.service.image(image_id(&raw)?).await?;
    Ok(Json(views::image(&record)))
}

/// `{"favorite": true|false}`: marks or unmarks a gallery image.
async fn set_favorite(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    body_raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = image_id(&raw)?;
    let value = body::json(body_raw)?;
    let favorite = match value.as_object() {
        Some(o) if o.len() == 1 => match o.get("favorite") {
            Some(Value::Bool(b)) => *b,
            _ => return Err(ApiError::bad_request("favorite must be true or false")),
        },
        _ => {
            return Err(ApiError::bad_request(
                "the body must be {\"favorite\": true} or {\"favorite\": false}",
            ))
        }
    };
    let record = state.service.set_favorite(id, favorite).await?;
    Ok(Json(views::image(&record)))
}

async fn delete_image(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = image_id(&raw)?;
    state.service.delete_image(id).await?;
    Ok(Json(json!({"deleted": id})))
}

#[derive(Deserialize)]
struct GalleryParams {
    page: Option<String>,
    per_page: Option<String>,
    /// CyberImage's name for `per_page`.
    limit: Option<String>,
    model: Option<String>,
    q: Option<String>,
    /// CyberImage's search: words that must all appear in the prompt or
    /// the model.
    search: Option<String>,
    /// `true`: only favourites.
    favorites: Option<String>,
}

fn positive(name: &str, raw: Option<&str>, default: u32, max: u32) -> Result<u32, ApiError> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(default);
    };
    match raw.parse::<u32>() {
        Ok(v) if (1..=max).contains(&v) => Ok(v),
        _ => Err(ApiError::bad_request(format!(
            "{name} must be an integer between 1 and {max}, got {raw:?}"
        ))),
    }
}

async fn gallery(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let Query(p): Query<GalleryParams> = Query::try_from_uri(
        &format!("/?{}", raw.unwrap_or_default())
            .parse()
            .map_err(|_| ApiError::bad_request("malformed query string"))?,
    )
    .map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
    let page = positive("page", p.page.as_deref(), 1, 1_000_000)?;
    let per_page = match (&p.per_page, &p.limit) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "per_page and limit are the same setting; send one",
            ))
        }
        (_, Some(limit)) => positive("limit", Some(limit), 24, MAX_PER_PAGE)?,
        (per_page, None) => positive("per_page", per_page.as_deref(), 24, MAX_PER_PAGE)?,
    };
    for (name, text) in [("q", &p.q), ("search", &p.search)] {
        if text.as_ref().is_some_and(|t| t.chars().count() > 500) {
            return Err(ApiError::bad_request(format!(
                "{name} is limited to 500 characters"
            )));
        }
    }
    let keywords: Vec<String> = p
        .search
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if keywords.len() > MAX_KEYWORDS {
        return Err(ApiError::bad_request(format!(
            "search takes at most {MAX_KEYWORDS} words"
        )));
    }
    let query = GalleryQuery {
        page,
        per_page,
        model: p.model.filter(|m| !m.is_empty()),
        search: p.q.map(|q| q.trim().to_owned()).filter(|q| !q.is_empty()),
        keywords,
        favorites_only: match p.favorites.as_deref() {
            None | Some("") | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "favorites must be true or false, got {other:?}"
                )))
            }
        },
    };
    let result = state.service.gallery(&query).await?;
    let total_pages = result.total.div_ceil(u64::from(per_page));
    Ok(Json(json!({
        "images": result.images.iter().map(views::image).collect::<Vec<_>>(),
        "page": page,
        "per_page": per_page,
        "total": result.total,
        "total_pages": total_pages,
        "has_more": u64::from(page) < total_pages,
    })))
}

async fn models(State(state): State<AppState>) -> Json<Value> {
    let availability = state.service.model_availability().await;
    Json(views::models(
        state.service.catalogue(),
        Some(&availability),
    ))
}

/// The LoRA files in the data dir's `loras/` folder, which jobs name in
/// `loras` or `<lora:NAME:WEIGHT>`.
async fn loras(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let loras = state.service.loras_with_family().await?;
    Ok(Json(json!({
        "loras": loras.iter().map(|(l, family)| json!({
            "name": l.name,
            "bytes": l.bytes,
            "sha256": l.sha256,
            // What A1111 writes in a picture's `Lora hashes`.
            "short_hash": l.sha256.get(..12),
            // The model family its layer names give away; null when
            // they do not tell.
            "family": family.map(|f| f.as_str()),
        })).collect::<Vec<_>>(),
    })))
}

/// CyberImage's "reset queue": jobs stuck in `processing` go back to the
/// queue. Here only those whose worker is dead (no heartbeat within
/// `stale_after`, in any process): a live job is never taken from its
/// worker. The workers' periodic pass does the same; this does it now.
async fn reset_queue(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let report = state.service.recover_stale_jobs().await?;
    Ok(Json(json!({
        // CyberImage's answer: `status` and `reset_count`.
        "status": "success",
        "reset_count": report.requeued,
        "requeued": report.requeued,
        "failed": report.failed,
        "message": format!(
            "{} stalled job(s) back in the queue, {} failed after too many attempts",
            report.requeued, report.failed
        ),
    })))
}

#[derive(Deserialize)]
struct QueueParams {
    #[serde(default)]
    detailed: Option<String>,
}

async fn queue(
    State(state): State<AppState>,
    Query(params): Query<QueueParams>,
) -> Result<Json<Value>, ApiError> {
    let q = state.service.queue(20).await?;
    let t = q.totals;
    let mut body = json!({
        "pending": q.counts.pending,
        "processing": q.counts.processing,
        // CyberImage's queue totals: every job by status.
        "completed": t.completed,
        "failed": t.failed,
        "cancelled": t.cancelled,
        "total": t.total(),
        "queue_size": q.counts.pending + q.counts.processing,
        "jobs": q.active.iter().map(views::job_summary).collect::<Vec<_>>(),
        "recent_failures": q.recent_failures.iter().map(views::job_summary).collect::<Vec<_>>(),
    });
    if params
        .detailed
        .as_deref()
        .is_some_and(|d| d.eq_ignore_ascii_case("true"))
    {
        let stats = state.service.recent_stats().await?;
        views::add_queue_details(&mut body, &stats, &t);
    }
    Ok(Json(body))
}
