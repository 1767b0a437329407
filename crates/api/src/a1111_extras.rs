//! AUTOMATIC1111's "Extras" upscaling: `GET /sdapi/v1/upscalers` and
//! `POST /sdapi/v1/extra-single-image`, as an upscaling job waited for.
//! A1111's names for the Real-ESRGAN networks (`R-ESRGAN 4x+`, …) find the
//! same files under their release names in `upscalers/`
//! (`RealESRGAN_x4plus.pth`, …), so scripts written for A1111 keep
//! working once the file is there. Face restoration and the second
//! upscaler are not done: a request that asks for them is refused.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use cyberimage_core::upscale::UpscaleAsk;
use cyberimage_core::JobStatus;
use cyberimage_jobs::UpscaleSubmit;
use serde_json::{json, Map, Value};

use crate::error_table::ApiError;
use crate::params::{number, text};
use crate::{body, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/sdapi/v1/upscalers", get(upscalers))
        .route("/sdapi/v1/extra-single-image", post(extra_single_image))
}

/// A1111's upscaler names and the release file names they stand for.
const A1111_NAMES: &[(&str, &str)] = &[
    ("R-ESRGAN 4x+", "RealESRGAN_x4plus"),
    ("R-ESRGAN 4x+ Anime6B", "RealESRGAN_x4plus_anime_6B"),
    ("R-ESRGAN General 4xV3", "realesr-general-x4v3"),
    ("R-ESRGAN General WDN 4xV3", "realesr-general-wdn-x4v3"),
    ("R-ESRGAN AnimeVideo", "realesr-animevideov3"),
    ("R-ESRGAN 2x+", "RealESRGAN_x2plus"),
    ("ESRGAN_4x", "ESRGAN_4x"),
];

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message.into())
}

async fn upscalers(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let listed = state.service.upscalers().await?;
    let mut out = vec![
        json!({"name": "None", "model_name": null, "model_path": null,
                              "model_url": null, "scale": 4}),
    ];
    for l in listed.iter().filter(|l| l.info.is_ok()) {
        out.push(json!({
            "name": l.file.name,
            "model_name": l.file.name,
            "model_path": l.file.path.display().to_string(),
            "model_url": null,
            "scale": l.info.as_ref().map(|i| i.scale).unwrap_or(4),
        }));
    }
    Ok(Json(Value::Array(out)))
}

/// The fraction of `field` (0 when absent).
fn visibility(obj: &Map<String, Value>, field: &str) -> Result<f64, ApiError> {
    match obj.get(field).filter(|v| !v.is_null()) {
        None => Ok(0.0),
        Some(v) => number(v, field).map_err(invalid),
    }
}

async fn extra_single_image(
    State(state): State<AppState>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let value = body::json(raw)?;
    let Value::Object(obj) = value else {
        return Err(invalid("the body must be a JSON object"));
    };
    let image = text(&obj, "image")
        .map_err(invalid)?
        .filter(|i| !i.is_empty())
        .ok_or_else(|| invalid("image must hold a base64 picture"))?;
    for field in [
        "gfpgan_visibility",
        "codeformer_visibility",
        "extras_upscaler_2_visibility",
    ] {
        if visibility(&obj, field)? > 0.0 {
            return Err(invalid(format!(
                "{field} is not supported here: only upscaler_1 runs"
            )));
        }
    }
    let upscaler = text(&obj, "upscaler_1")
        .map_err(invalid)?
        .unwrap_or_else(|| "None".into());
    if upscaler == "None" {
        // A1111 returns the picture as it came when nothing is to be done.
        return Ok(Json(json!({"html_info": "", "image": image})));
    }
    let upscaler = A1111_NAMES
        .iter()
        .find(|(a1111, _)| *a1111 == upscaler)
        .map(|(_, file)| file.to_string())
        .unwrap_or(upscaler);
    let mode = obj.get("resize_mode").and_then(Value::as_i64).unwrap_or(0);
    let scale = match mode {
        0 => visibility(&obj, "upscaling_resize").map(|s| if s > 0.0 { s } else { 2.0 })?,
        1 => scale_to(&state, &obj, &image).await?,
        other => {
            return Err(invalid(format!(
                "resize_mode {other}: 0 (scale by) or 1 (scale to)"
            )))
        }
    };
    let request = UpscaleSubmit {
        image,
        upscaler: Some(upscaler),
        ask: UpscaleAsk {
            scale: Some(scale),
            tile: None,
        },
    };
    let job = state.service.submit_upscale(request).await?;
    let job = state.service.wait_until_finished(job.id, |_| {}).await?;
    if job.status != JobStatus::Completed {
        return Err(invalid(format!(
            "upscaling {}: {}",
            job.status.as_str(),
            job.error.as_deref().unwrap_or("no reason recorded")
        )));
    }
    let first = job
        .images
        .first()
        .ok_or_else(|| invalid("the upscaling job made no image"))?;
    let (png, parameters) = crate::a1111::png_and_infotext(&state, first.id).await?;
    Ok(Json(json!({
        "html_info": format!("<p>{}</p>", html_escape(&parameters)),
        "image": base64::engine::general_purpose::STANDARD.encode(png),
    })))
}

/// "Scale to": the factor that takes the picture to `upscaling_resize_w ×
/// upscaling_resize_h`. A1111 crops when the aspect ratio differs; that
/// is refused here rather than done differently.
async fn scale_to(
    state: &AppState,
    obj: &Map<String, Value>,
    image: &str,
) -> Result<f64, ApiError> {
    let side = |field: &str| -> Result<f64, ApiError> {
        match obj.get(field) {
            Some(v) => number(v, field).map_err(invalid),
            None => Err(invalid(format!("resize_mode 1 needs {field}"))),
        }
    };
    let (w, h) = (side("upscaling_resize_w")?, side("upscaling_resize_h")?);
    let (pw, ph) = state.service.picture_size(image).await?;
    let (sx, sy) = (w / f64::from(pw), h / f64::from(ph));
    if (sx - sy).abs() > 0.01 * sx.max(sy) {
        return Err(invalid(format!(
            "resize_mode 1 to {w}x{h} changes the {pw}x{ph} picture's aspect ratio; cropping is \
             not supported: send a size of the same ratio, or resize_mode 0"
        )));
    }
    Ok(sx)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\n', "<br>")
}
