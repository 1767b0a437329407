//! Upscaling over REST: `POST /api/upscale` queues a job that makes a
//! gallery image (or an uploaded picture) larger with an upscaler, and
//! `GET /api/upscalers` lists the upscalers (the data dir's `upscalers/`
//! files and the built-in ones) with what the engine read of each. The
//! request decoder is shared with the MCP tool and AUTOMATIC1111's
//! `extra-single-image`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cyberimage_core::upscale::UpscaleAsk;
use cyberimage_jobs::{UpscaleSubmit, UpscalerListing, DEFAULT_UPSCALER};
use serde_json::{json, Map, Value};

use crate::error_table::ApiError;
use crate::params::{integer, number, text};
use crate::{body, views, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/upscale", post(upscale))
        .route("/api/upscalers", get(upscalers))
}

/// The fields `POST /api/upscale` reads.
pub const FIELDS: &[&str] = &["image", "image_id", "upscaler", "scale", "tile"];

/// An upscaling request from a JSON object: `image` (or `image_id`) a
/// gallery id or base64 data, `upscaler`, `scale`, `tile`.
pub fn upscale_submit(obj: &Map<String, Value>) -> Result<UpscaleSubmit, String> {
    let image = match (text(obj, "image")?, text(obj, "image_id")?) {
        (Some(_), Some(_)) => return Err("give image or image_id, not both".into()),
        (Some(image), None) | (None, Some(image)) => image,
        (None, None) => {
            return Err("image is required: a gallery image id (img_…) or base64 image data".into())
        }
    };
    let scale = obj
        .get("scale")
        .filter(|v| !v.is_null())
        .map(|v| number(v, "scale"))
        .transpose()?;
    let tile = obj
        .get("tile")
        .filter(|v| !v.is_null())
        .map(|v| integer(v, "tile"))
        .transpose()?;
    Ok(UpscaleSubmit {
        image,
        upscaler: text(obj, "upscaler")?.filter(|u| !u.is_empty()),
        ask: UpscaleAsk { scale, tile },
    })
}

async fn upscale(
    State(state): State<AppState>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let value = body::json(raw)?;
    let Value::Object(obj) = &value else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    body::check_fields(obj, FIELDS)?;
    let request = upscale_submit(obj).map_err(ApiError::bad_request)?;
    let job = state.service.submit_upscale(request).await?;
    let location = format!("/api/status/{}", job.id);
    let mut answer = views::rest_job_submitted(&job);
    let upscale = job.spec.upscale.as_ref();
    answer["message"] = json!(format!(
        "upscaling to {}x{} queued",
        job.spec.width, job.spec.height
    ));
    answer["upscaler"] = json!(upscale.map(|u| &u.upscaler));
    answer["width"] = json!(job.spec.width);
    answer["height"] = json!(job.spec.height);
    let mut resp = (StatusCode::ACCEPTED, Json(answer)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// One upscaler as the API lists it.
pub fn upscaler_view(listing: &UpscalerListing) -> Value {
    let file = &listing.file;
    let mut v = json!({
        "name": file.name,
        "builtin": file.builtin,
        "default": file.name == DEFAULT_UPSCALER,
        "bytes": file.bytes,
        "sha256": file.sha256,
        "runnable": listing.info.is_ok(),
    });
    match &listing.info {
        Ok(info) => {
            v["architecture"] = json!(info.architecture);
            v["scale"] = json!(info.scale);
        }
        Err(why) => v["error"] = json!(why),
    }
    v
}

async fn upscalers(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let listed = state.service.upscalers().await?;
    Ok(Json(json!({
        "upscalers": listed.iter().map(upscaler_view).collect::<Vec<_>>(),
        "default": DEFAULT_UPSCALER,
    })))
}
