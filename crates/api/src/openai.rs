//! The OpenAI Images API subset that chat UIs, agents and the OpenAI SDKs
//! call: `POST /v1/images/generations`, `POST /v1/images/edits`
//! (`openai_edits`) and `GET /v1/models`, with errors in OpenAI's shape. A generation is an ordinary queued job; the request
//! waits for it (and cancels it when the client hangs up).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use cyberimage_core::{JobStatus, SpecRequest};
use cyberimage_jobs::{ImageVariant, JobsError};
use serde_json::{json, Map, Value};

use crate::error_table::ApiError;
use crate::{body, views, AppState};

/// OpenAI's fields we read, and the ones we accept and ignore because they
/// have no meaning for a local diffusion model.
const KNOWN: [&str; 13] = [
    "strength",
    "prompt",
    "model",
    "n",
    "size",
    "response_format",
    "output_format",
    "negative_prompt",
    "seed",
    "steps",
    "guidance_scale",
    "width",
    "height",
];
const IGNORED: [&str; 9] = [
    "input_fidelity",
    "quality",
    "style",
    "user",
    "background",
    "moderation",
    "output_compression",
    "stream",
    "partial_images",
];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/images/generations", post(generations))
        .route("/v1/images/edits", post(crate::openai_edits::edits))
        .route("/v1/models", get(models))
}

/// An error in OpenAI's shape: `{"error":{"message","type","param","code"}}`.
pub struct OpenAiError {
    status: StatusCode,
    message: String,
    param: Option<String>,
    code: Option<String>,
    retry_after: Option<u64>,
}

impl OpenAiError {
    pub(crate) fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param.to_owned()),
            code: Some("invalid_value".into()),
            retry_after: None,
        }
    }
}

fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    }
}

impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> Self {
        Self {
            status: e.status,
            message: e.message,
            param: None,
            code: Some(e.code.to_owned()),
            retry_after: e.retry_after_secs,
        }
    }
}

impl From<JobsError> for OpenAiError {
    fn from(e: JobsError) -> Self {
        let param = match &e {
            JobsError::Invalid(v) => Some(openai_param(v.field).to_owned()),
            _ => None,
        };
        let mut err = OpenAiError::from(ApiError::from(e));
        err.param = param;
        err
    }
}

/// Our field names back to the ones the OpenAI request used.
fn openai_param(field: &str) -> &str {
    match field {
        "num_images" => "n",
        "width" | "height" => "size",
        "init_image" => "image",
        other => other,
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": error_type(self.status),
            "param": self.param,
            "code": self.code,
        }});
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        resp
    }
}

/// Rewrites our own error bodies (auth, body limits, unknown routes) into
/// OpenAI's shape on `/v1/` paths, so OpenAI clients read every error.
pub async fn reshape_errors(request: Request, next: Next) -> Response {
    if !request.uri().path().starts_with("/v1/") {
        return next.run(request).await;
    }
    let resp = next.run(request).await;
    if resp.status().is_success() {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return parts.status.into_response();
    };
    let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
    let ours = parsed
        .as_ref()
        .map(|v| &v["error"])
        .filter(|e| e.get("type").is_none() && e.get("message").is_some());
    let Some(ours) = ours else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    let mut reshaped = OpenAiError {
        status: parts.status,
        message: ours["message"].as_str().unwrap_or_default().to_owned(),
        param: None,
        code: ours["code"].as_str().map(str::to_owned),
        retry_after: None,
    }
    .into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_LENGTH && name != header::CONTENT_TYPE {
            reshaped.headers_mut().insert(name, value.clone());
        }
    }
    reshaped
}

fn parse_size(size: &str) -> Result<Option<(i64, i64)>, OpenAiError> {
    if size == "auto" {
        return Ok(None);
    }
    let bad = || {
        OpenAiError::invalid(
            "size",
            format!("size must be \"WIDTHxHEIGHT\" or \"auto\", got {size:?}"),
        )
    };
    let (w, h) = size.split_once(['x', 'X']).ok_or_else(bad)?;
    let w = w.trim().parse::<i64>().map_err(|_| bad())?;
    let h = h.trim().parse::<i64>().map_err(|_| bad())?;
    Ok(Some((w, h)))
}

fn string_field(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, OpenAiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(OpenAiError::invalid(
            name,
            format!("{name} must be a string"),
        )),
    }
}

fn int_field(obj: &Map<String, Value>, name: &str) -> Result<Option<i64>, OpenAiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match (v.as_i64(), v.as_f64()) {
            (Some(i), _) => Ok(Some(i)),
            (None, Some(f)) if f.fract() == 0.0 => {
                Ok(Some(f.clamp(i64::MIN as f64, i64::MAX as f64) as i64))
            }
            _ => Err(OpenAiError::invalid(
                name,
                format!("{name} must be an integer"),
            )),
        },
    }
}

/// OpenAI's own model names map to our default model, so tools that
/// hard-code them work; any other name must be one of ours.
fn model_key(requested: Option<String>, state: &AppState) -> Result<Option<String>, OpenAiError> {
    let Some(name) = requested else {
        return Ok(None);
    };
    if state.service.catalogue().get(&name).is_some() {
        return Ok(Some(name));
    }
    if name.starts_with("dall-e") || name.starts_with("gpt-image") {
        return Ok(None);
    }
    Err(OpenAiError {
        status: StatusCode::BAD_REQUEST,
        message: format!("the model {name:?} does not exist; GET /v1/models lists the models"),
        param: Some("model".into()),
        code: Some("model_not_found".into()),
        retry_after: None,
    })
}

pub(crate) struct Parsed {
    pub request: SpecRequest,
    pub b64: bool,
}

pub(crate) fn parse(value: &Value, state: &AppState) -> Result<Parsed, OpenAiError> {
    let Value::Object(obj) = value else {
        return Err(OpenAiError::invalid(
            "body",
            "the request body must be a JSON object",
        ));
    };
    if let Some(unknown) = obj
        .keys()
        .find(|k| !KNOWN.contains(&k.as_str()) && !IGNORED.contains(&k.as_str()))
    {
        return Err(OpenAiError::invalid(
            unknown,
            format!("unknown parameter {unknown:?}"),
        ));
    }
    let prompt = string_field(obj, "prompt")?
        .ok_or_else(|| OpenAiError::invalid("prompt", "prompt is required"))?;
    let b64 = match string_field(obj, "response_format")?.as_deref() {
        None | Some("url") => false,
        Some("b64_json") => true,
        Some(other) => {
            return Err(OpenAiError::invalid(
                "response_format",
                format!("response_format must be \"url\" or \"b64_json\", got {other:?}"),
            ))
        }
    };
    match string_field(obj, "output_format")?.as_deref() {
        None | Some("png") => {}
        Some(other) => {
            return Err(OpenAiError::invalid(
                "output_format",
                format!("only \"png\" output is supported, got {other:?}"),
            ))
        }
    }
    if obj.get("stream") == Some(&Value::Bool(true)) {
        return Err(OpenAiError::invalid("stream", "streaming is not supported"));
    }
    let size = string_field(obj, "size")?
        .map(|s| parse_size(&s))
        .transpose()?
        .flatten();
    let request = SpecRequest {
        prompt: Some(prompt),
        negative_prompt: string_field(obj, "negative_prompt")?,
        model: model_key(string_field(obj, "model")?, state)?,
        width: int_field(obj, "width")?.or(size.map(|s| s.0)),
        height: int_field(obj, "height")?.or(size.map(|s| s.1)),
        steps: int_field(obj, "steps")?,
        guidance_scale: match obj.get("guidance_scale") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_f64().ok_or_else(|| {
                OpenAiError::invalid("guidance_scale", "guidance_scale must be a number")
            })?),
        },
        num_images: int_field(obj, "n")?,
        seed: int_field(obj, "seed")?,
        strength: match obj.get("strength") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_f64()
                    .ok_or_else(|| OpenAiError::invalid("strength", "strength must be a number"))?,
            ),
        },
        ..Default::default()
    };
    Ok(Parsed { request, b64 })
}

fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1:5050");
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}

async fn generations(
    State(state): State<AppState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, OpenAiError> {
    let value = body::json(raw)?;
    let Parsed { request, b64 } = parse(&value, &state)?;
    run_to_response(&state, &headers, request, b64).await
}

/// Queues `request`, waits for it (cancelling it if the client hangs up)
/// and answers in OpenAI's images shape.
pub(crate) async fn run_to_response(
    state: &AppState,
    headers: &HeaderMap,
    request: SpecRequest,
    b64: bool,
) -> Result<Json<Value>, OpenAiError> {
    let job = state.service.submit(request).await?;
    // A client that hangs up no longer wants the images: cancel the job.
    let service = state.service.clone();
    let id = job.id;
    let guard = CancelOnDrop(Some(Box::new(move || {
        tokio::spawn(async move {
            let _ = service.cancel(id).await;
        });
    })));
    let job = state.service.wait_until_finished(job.id, |_| {}).await?;
    guard.disarm();
    match job.status {
        JobStatus::Completed => {}
        JobStatus::Cancelled => {
            return Err(OpenAiError {
                status: StatusCode::CONFLICT,
                message: format!("job {} was cancelled", job.id),
                param: None,
                code: Some("cancelled".into()),
                retry_after: None,
            })
        }
        _ => {
            return Err(OpenAiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: format!(
                    "generation failed: {}",
                    job.error.as_deref().unwrap_or("no reason recorded")
                ),
                param: None,
                code: Some("generation_failed".into()),
                retry_after: None,
            })
        }
    }
    let base = base_url(headers);
    let mut data = Vec::new();
    for img in &job.images {
        let mut entry = json!({"revised_prompt": img.prompt});
        if b64 {
            let png = state
                .service
                .image_bytes(img.id, ImageVariant::Full)
                .await?;
            entry["b64_json"] = json!(base64::engine::general_purpose::STANDARD.encode(png));
        } else {
            entry["url"] = json!(format!("{base}{}", views::image_url(&img.id)));
        }
        data.push(entry);
    }
    Ok(Json(json!({
        "created": job.completed_at.unwrap_or(job.created_at).timestamp(),
        "data": data,
        "output_format": "png",
        "size": format!("{}x{}", job.spec.width, job.spec.height),
    })))
}

/// Runs its action when dropped before `disarm`.
struct CancelOnDrop(Option<Box<dyn FnOnce() + Send>>);

impl CancelOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(action) = self.0.take() {
            action();
        }
    }
}

async fn models(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = state
        .service
        .catalogue()
        .models()
        .iter()
        .map(|m| json!({"id": m.key, "object": "model", "created": 0, "owned_by": "cyberimage"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}
