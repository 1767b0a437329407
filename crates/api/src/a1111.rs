//! AUTOMATIC1111's web UI API (`/sdapi/v1/…`), which Open WebUI, SillyTavern,
//! Krita plugins and many scripts speak: txt2img and img2img (with
//! inpainting masks) as ordinary jobs waited for, the model list and the
//! `sd_model_checkpoint` option, samplers and schedulers, progress with the
//! live preview, interrupt, and PNG info. A thin adapter like the others:
//! A1111's field names and defaults in, one `SpecRequest` to the jobs
//! service. Fields A1111 has and we do not use (restore faces, hires fix,
//! scripts…) are accepted and ignored, as A1111 clients send them all.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use cyberimage_core::{HiresRequest, JobId, JobStatus, SpecRequest};
use cyberimage_jobs::{ImageVariant, JobsError};
use serde_json::{json, Map, Value};

use crate::error_table::ApiError;
use crate::{body, params, AppState};

/// What A1111's API remembers between calls.
#[derive(Default)]
pub struct A1111State {
    /// `sd_model_checkpoint` as set through `/options` (else the default).
    model: Mutex<Option<String>>,
    /// The job `/progress` and `/interrupt` are about: the latest one.
    current: Mutex<Option<JobId>>,
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/sdapi/v1/txt2img", post(txt2img))
        .route("/sdapi/v1/img2img", post(img2img))
        .route("/sdapi/v1/sd-models", get(sd_models))
        .route("/sdapi/v1/samplers", get(samplers))
        .route("/sdapi/v1/schedulers", get(schedulers))
        .route("/sdapi/v1/loras", get(loras))
        .route("/sdapi/v1/options", get(options).post(set_options))
        .route("/sdapi/v1/progress", get(progress))
        .route("/sdapi/v1/interrupt", post(interrupt))
        .route("/sdapi/v1/png-info", post(png_info))
}

/// A1111's LoRA list: `name` is what `<lora:NAME:WEIGHT>` takes.
async fn loras(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let loras = state.service.loras().await?;
    Ok(Json(json!(loras
        .iter()
        .map(|l| json!({"name": l.name, "alias": l.name, "path": format!("loras/{}.safetensors", l.name), "metadata": {}}))
        .collect::<Vec<_>>())))
}

/// A gallery image's PNG and its A1111 infotext (the `parameters` chunk).
pub(crate) async fn png_and_infotext(
    state: &AppState,
    id: cyberimage_core::ImageId,
) -> Result<(Vec<u8>, String), ApiError> {
    let png = state.service.image_bytes(id, ImageVariant::Full).await?;
    let parameters = cyberimage_jobs::png_info_from_bytes(&png)
        .ok()
        .and_then(|(_, t)| {
            t.into_iter()
                .find(|(k, _)| k == "parameters")
                .map(|(_, v)| v)
        })
        .unwrap_or_default();
    Ok((png, parameters))
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message.into())
}

fn object(raw: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
    match body::json(raw)? {
        Value::Object(m) => Ok(m),
        _ => Err(invalid("the request body must be a JSON object")),
    }
}

/// A model named as A1111 names checkpoints ("name [hash]") or by key.
fn model_key(name: &str) -> String {
    match name.rsplit_once(" [") {
        Some((key, hash)) if hash.ends_with(']') => key.to_owned(),
        _ => name.to_owned(),
    }
}

// The generation parameters' readers, with A1111's errors as 400s.
fn int(obj: &Map<String, Value>, name: &str) -> Result<Option<i64>, ApiError> {
    present(obj, name)
        .map(|v| params::integer(v, name))
        .transpose()
        .map_err(invalid)
}

fn number(obj: &Map<String, Value>, name: &str) -> Result<Option<f64>, ApiError> {
    present(obj, name)
        .map(|v| params::number(v, name))
        .transpose()
        .map_err(invalid)
}

fn text(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    params::text(obj, name).map_err(invalid)
}

fn present<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

/// A1111's txt2img fields → a `SpecRequest`, with A1111's defaults
/// (20 steps, CFG 7, 512², seed -1) where the request is silent.
fn spec_request(state: &AppState, obj: &Map<String, Value>) -> Result<SpecRequest, ApiError> {
    let checkpoint = obj
        .get("override_settings")
        .and_then(|o| o.get("sd_model_checkpoint"))
        .and_then(Value::as_str)
        .map(model_key)
        .or_else(|| state.a1111.model.lock().expect("a1111 model").clone());
    let images = int(obj, "batch_size")?.unwrap_or(1) * int(obj, "n_iter")?.unwrap_or(1);
    Ok(SpecRequest {
        prompt: text(obj, "prompt")?,
        negative_prompt: text(obj, "negative_prompt")?,
        model: checkpoint,
        width: Some(int(obj, "width")?.unwrap_or(512)),
        height: Some(int(obj, "height")?.unwrap_or(512)),
        steps: Some(int(obj, "steps")?.unwrap_or(20)),
        guidance_scale: Some(number(obj, "cfg_scale")?.unwrap_or(7.0)),
        num_images: Some(images),
        seed: Some(int(obj, "seed")?.unwrap_or(-1)),
        ..Default::default()
    })
}

/// Runs the request as a job and answers in A1111's shape: base64 PNGs,
/// the request echoed, and `info` as a JSON string.
async fn run(
    state: &AppState,
    request: SpecRequest,
    echo: Map<String, Value>,
) -> Result<Json<Value>, ApiError> {
    let job = state.service.submit(request).await?;
    *state.a1111.current.lock().expect("a1111 job") = Some(job.id);
    let job = state.service.wait_until_finished(job.id, |_| {}).await?;
    match job.status {
        JobStatus::Completed => {}
        JobStatus::Cancelled => return Err(invalid(format!("job {} was interrupted", job.id))),
        _ => {
            return Err(ApiError::from(JobsError::Invalid(
                cyberimage_core::ValidationError::new(
                    "model",
                    format!(
                        "generation failed: {}",
                        job.error.as_deref().unwrap_or("no reason recorded")
                    ),
                ),
            )))
        }
    }
    let mut images = Vec::new();
    let mut infotexts = Vec::new();
    for img in &job.images {
        let (png, parameters) = png_and_infotext(state, img.id).await?;
        infotexts.push(parameters);
        images.push(base64::engine::general_purpose::STANDARD.encode(png));
    }
    let spec = &job.spec;
    let seeds: Vec<u64> = job.images.iter().map(|i| i.seed).collect();
    let info = json!({
        "prompt": spec.prompt,
        "all_prompts": vec![&spec.prompt; images.len()],
        "negative_prompt": spec.negative_prompt.clone().unwrap_or_default(),
        "seed": spec.seed,
        "all_seeds": seeds,
        "width": spec.width,
        "height": spec.height,
        "steps": spec.steps,
        "cfg_scale": spec.guidance_scale,
        "sd_model_name": spec.model,
        "denoising_strength": spec.init_image.as_ref().map(|i| i.strength)
            .or(spec.hires.as_ref().map(|h| h.strength)),
        "infotexts": infotexts,
        "job_id": job.id,
    });
    Ok(Json(json!({
        "images": images,
        "parameters": echo,
        "info": info.to_string(),
    })))
}

async fn txt2img(
    State(state): State<AppState>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let obj = object(raw)?;
    let mut request = spec_request(&state, &obj)?;
    request.hires = hires(&obj)?;
    run(&state, request, obj).await
}

/// A1111's hires fix: `enable_hr` with `hr_scale` (2), `hr_resize_x/y`,
/// `hr_second_pass_steps` (0: the first pass's), `denoising_strength`
/// (0.7) and `hr_upscaler`. A1111's latent upscalers, "Nearest" and
/// "None" have no network: those enlarge by Lanczos here (which the
/// picture's metadata then names).
fn hires(obj: &Map<String, Value>) -> Result<Option<HiresRequest>, ApiError> {
    match present(obj, "enable_hr") {
        None | Some(Value::Bool(false)) => return Ok(None),
        Some(Value::Bool(true)) => {}
        Some(_) => return Err(invalid("enable_hr must be true or false")),
    }
    let upscaler = text(obj, "hr_upscaler")?.filter(|name| {
        let lower = name.to_ascii_lowercase();
        !(lower.starts_with("latent")
            || ["none", "nearest", "lanczos", ""].contains(&lower.as_str()))
    });
    Ok(Some(HiresRequest {
        scale: number(obj, "hr_scale")?,
        width: int(obj, "hr_resize_x")?,
        height: int(obj, "hr_resize_y")?,
        steps: int(obj, "hr_second_pass_steps")?,
        strength: number(obj, "denoising_strength")?,
        upscaler,
    }))
}

async fn img2img(
    State(state): State<AppState>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let obj = object(raw)?;
    let mut request = spec_request(&state, &obj)?;
    let init = match obj.get("init_images") {
        Some(Value::Array(images)) => images.first().and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };
    request.init_image =
        Some(init.ok_or_else(|| invalid("init_images must hold one base64 picture"))?);
    request.strength = Some(number(&obj, "denoising_strength")?.unwrap_or(0.75));
    request.mask_image = text(&obj, "mask")?;
    if request.mask_image.is_some() {
        // A1111's defaults: a 4-pixel blur, and the original laid back
        // over what the mask leaves out.
        request.mask_blur = Some(int(&obj, "mask_blur")?.unwrap_or(4));
        request.keep_unmasked = Some(true);
    }
    if request.mask_image.is_some() && int(&obj, "inpainting_mask_invert")?.unwrap_or(0) != 0 {
        return Err(invalid(
            "inpainting_mask_invert is not supported: send the mask white where the picture changes",
        ));
    }
    run(&state, request, obj).await
}

async fn sd_models(State(state): State<AppState>) -> Json<Value> {
    let models: Vec<Value> = state
        .service
        .catalogue()
        .models()
        .iter()
        .map(|m| {
            json!({"title": m.key, "model_name": m.key, "hash": null, "sha256": null,
                   "filename": m.source, "config": null})
        })
        .collect();
    Json(Value::Array(models))
}

/// The sampler each model's scheduler config picks is the one that runs;
/// these are the names our metadata writes.
async fn samplers() -> Json<Value> {
    Json(json!(["DDIM", "Euler", "Euler a", "Flow-match Euler"]
        .iter()
        .map(|n| json!({"name": n, "aliases": [], "options": {}}))
        .collect::<Vec<_>>()))
}

async fn schedulers() -> Json<Value> {
    Json(
        json!([{"name": "automatic", "label": "Automatic", "aliases": null,
                 "default_rho": -1, "need_inner_model": false}]),
    )
}

async fn options(State(state): State<AppState>) -> Json<Value> {
    let model = state
        .a1111
        .model
        .lock()
        .expect("a1111 model")
        .clone()
        .unwrap_or_else(|| state.service.catalogue().default_key().to_owned());
    Json(json!({"sd_model_checkpoint": model, "samples_format": "png"}))
}

/// Sets `sd_model_checkpoint` for later A1111 requests (others are ignored).
async fn set_options(
    State(state): State<AppState>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let obj = object(raw)?;
    if let Some(name) = text(&obj, "sd_model_checkpoint")? {
        let key = model_key(&name);
        if state.service.catalogue().get(&key).is_none() {
            return Err(ApiError::from(JobsError::Invalid(
                cyberimage_core::ValidationError {
                    field: "sd_model_checkpoint",
                    message: format!("no model {key:?}; GET /sdapi/v1/sd-models lists them"),
                    unknown_model: true,
                },
            )));
        }
        *state.a1111.model.lock().expect("a1111 model") = Some(key);
    }
    Ok(Json(json!(null)))
}

/// The latest A1111 job's progress, with the live preview as
/// `current_image` while it runs.
async fn progress(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let current = *state.a1111.current.lock().expect("a1111 job");
    let Some(id) = current else {
        return Ok(Json(
            json!({"progress": 0.0, "eta_relative": 0.0, "state": {"job_count": 0},
                              "current_image": null, "textinfo": null}),
        ));
    };
    let job = state.service.job(id).await?;
    let running = matches!(job.status, JobStatus::Pending | JobStatus::Processing);
    let total = job.progress.total_steps.max(1);
    let fraction = if job.status == JobStatus::Completed {
        1.0
    } else {
        f64::from(job.progress.step) / f64::from(total)
    };
    let preview = state
        .service
        .preview(id)
        .map(|(_, png)| base64::engine::general_purpose::STANDARD.encode(png.as_ref()));
    Ok(Json(json!({
        "progress": if running { fraction } else { 0.0 },
        "eta_relative": 0.0,
        "state": {"job": id, "job_count": u32::from(running), "sampling_step": job.progress.step,
                  "sampling_steps": job.progress.total_steps, "interrupted": job.status == JobStatus::Cancelled},
        "current_image": preview,
        "textinfo": job.status.as_str(),
    })))
}

async fn interrupt(State(state): State<AppState>) -> Json<Value> {
    let current = *state.a1111.current.lock().expect("a1111 job");
    if let Some(id) = current {
        // Already finished is fine: there is nothing to interrupt.
        let _ = state.service.cancel(id).await;
    }
    Json(json!(null))
}

async fn png_info(raw: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let obj = object(raw)?;
    let image = text(&obj, "image")?.ok_or_else(|| invalid("image is required (base64)"))?;
    let payload = match image.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map(|(_, d)| d).unwrap_or(rest),
        None => image.as_str(),
    };
    let png = base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|_| invalid("image must be base64 PNG data"))?;
    let (_, chunks) =
        cyberimage_jobs::png_info_from_bytes(&png).map_err(|e| invalid(format!("image: {e}")))?;
    let info = chunks
        .iter()
        .find(|(k, _)| k == "parameters")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let items: Map<String, Value> = chunks
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    Ok(Json(
        json!({"info": info, "items": items, "parameters": {}}),
    ))
}

/// The adapter's shared state, built once per router.
pub fn state() -> Arc<A1111State> {
    Arc::new(A1111State::default())
}
