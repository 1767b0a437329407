//! Gallery work on many images at once: delete a selection, and download
//! one as a ZIP streamed while it is written (one picture in memory at a
//! time). `ids` come as a JSON list (`POST`) or a comma-separated query
//! (`GET`, so a plain link can save straight to disk), at most
//! `MAX_BATCH` of them.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cyberimage_core::{ImageId, ImageRecord};
use cyberimage_jobs::{ImageVariant, JobService, JobsError};
use serde_json::{json, Value};

use crate::error_table::ApiError;
use crate::zip_stream::ZipWriter;
use crate::{body, AppState};

/// Most images one batch names (keeps a ZIP of 2048² PNGs under 4 GiB).
pub const MAX_BATCH: usize = 200;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/images/delete", post(delete_many))
        .route(
            "/api/images/download",
            get(download_query).post(download_body),
        )
}

/// Distinct ids in the order given; malformed ones are a 400 naming them.
fn parse_ids<'a>(raw: impl Iterator<Item = &'a str>) -> Result<Vec<ImageId>, ApiError> {
    let mut ids = Vec::new();
    for text in raw.map(str::trim).filter(|t| !t.is_empty()) {
        let id = ImageId::parse(text)
            .map_err(|_| ApiError::bad_request(format!("{text:?} is not an image id")))?;
        if !ids.contains(&id) {
            ids.push(id);
        }
        if ids.len() > MAX_BATCH {
            return Err(ApiError::bad_request(format!(
                "at most {MAX_BATCH} images at once"
            )));
        }
    }
    if ids.is_empty() {
        return Err(ApiError::bad_request("ids is empty: name the images"));
    }
    Ok(ids)
}

fn ids_from_body(raw: Result<Bytes, BytesRejection>) -> Result<Vec<ImageId>, ApiError> {
    let value = body::json(raw)?;
    let Some(object) = value.as_object() else {
        return Err(ApiError::bad_request(
            "the body must be a JSON object with ids",
        ));
    };
    body::check_fields(object, &["ids"])?;
    let Some(Value::Array(list)) = object.get("ids") else {
        return Err(ApiError::bad_request("ids must be a list of image ids"));
    };
    let texts: Vec<&str> = list
        .iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| ApiError::bad_request("ids must be strings"))
        })
        .collect::<Result<_, _>>()?;
    parse_ids(texts.into_iter())
}

async fn delete_many(
    State(state): State<AppState>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let ids = ids_from_body(raw)?;
    let (mut deleted, mut missing) = (Vec::new(), Vec::new());
    for id in ids {
        match state.service.delete_image(id).await {
            Ok(()) => deleted.push(id),
            Err(JobsError::ImageNotFound) => missing.push(id),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Json(json!({"deleted": deleted, "missing": missing})))
}

async fn download_query(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let Some(list) = query.get("ids") else {
        return Err(ApiError::bad_request("ids is required: ?ids=img_…,img_…"));
    };
    zip_response(state.service.clone(), parse_ids(list.split(','))?).await
}

async fn download_body(
    State(state): State<AppState>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    zip_response(state.service.clone(), ids_from_body(raw)?).await
}

/// A readable, unique file name: the prompt's first words and the id.
fn member_name(record: &ImageRecord) -> String {
    let slug: String = record
        .prompt
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|w| !w.is_empty())
        .take(6)
        .collect::<Vec<_>>()
        .join("-");
    let slug: String = slug.chars().take(48).collect();
    if slug.is_empty() {
        format!("{}.png", record.id)
    } else {
        format!("{slug}-{}.png", record.id)
    }
}

/// The ZIP of the images that exist (404 when none does); the names of
/// any that do not are in the `X-Missing-Images` header.
async fn zip_response(service: Arc<JobService>, ids: Vec<ImageId>) -> Result<Response, ApiError> {
    let mut records = Vec::new();
    let mut missing = Vec::new();
    for id in ids {
        match service.image(id).await {
            Ok(record) => records.push(record),
            Err(JobsError::ImageNotFound) => missing.push(id.to_string()),
            Err(e) => return Err(e.into()),
        }
    }
    if records.is_empty() {
        return Err(JobsError::ImageNotFound.into());
    }
    let stream = futures::stream::unfold(
        (service, records.into_iter(), Some(ZipWriter::default())),
        |(service, mut records, writer)| async move {
            let mut writer = writer?;
            for record in records.by_ref() {
                let bytes = match service.image_bytes(record.id, ImageVariant::Full).await {
                    Ok(bytes) => bytes,
                    // Deleted while the archive was written: left out.
                    Err(e) => {
                        tracing::warn!(image = %record.id, error = %e, "left out of a ZIP");
                        continue;
                    }
                };
                let chunk = writer
                    .member(&member_name(&record), &bytes, &record.created_at)
                    .map_err(std::io::Error::other);
                return Some((chunk.map(Bytes::from), (service, records, Some(writer))));
            }
            Some((Ok(Bytes::from(writer.finish())), (service, records, None)))
        },
    );
    let name = format!(
        "cyberimage-{}.zip",
        chrono::Utc::now().format("%Y%m%d-%H%M%S")
    );
    let mut response = (
        [
            (header::CONTENT_TYPE, "application/zip".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        Body::from_stream(stream),
    )
        .into_response();
    if !missing.is_empty() {
        if let Ok(v) = header::HeaderValue::from_str(&missing.join(",")) {
            response.headers_mut().insert("x-missing-images", v);
        }
    }
    Ok(response)
}
