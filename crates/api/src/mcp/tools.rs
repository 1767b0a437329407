//! The MCP tools: generate (waiting, with progress), submit and poll,
//! cancel, list models, search the gallery. Bad arguments and failed jobs
//! come back as `isError` results the model can read and correct, never as
//! protocol errors; only an unknown tool name is a protocol error.

use base64::Engine as _;
use cyberimage_core::{ImageId, ImageRecord, Job, JobId, JobStatus, Progress, Stage};
use cyberimage_jobs::{GalleryQuery, ImageVariant, JobsError};
use serde_json::{json, Map, Value};

use super::tool_schemas::GALLERY_MAX_PER_PAGE;
use super::{input_required, CallContext, McpError, McpServer, Outcome};
use crate::error_table::ApiError;
use crate::params;

const GENERATION_ARGS: [&str; 12] = [
    "prompt",
    "negative_prompt",
    "model",
    "width",
    "height",
    "steps",
    "guidance",
    "guidance_scale",
    "seed",
    "num_images",
    "loras",
    "hires",
];

pub fn image_uri(id: &ImageId) -> String {
    format!("cyberimage://image/{id}")
}

/// A tool's outcome: structured content plus the blocks shown to the model.
pub(super) struct ToolResult {
    pub(super) content: Vec<Value>,
    pub(super) structured: Value,
    pub(super) is_error: bool,
    /// Set when the call answers with something else than a tool result:
    /// a task (`tasks.rs`) or input requests (`input_required.rs`).
    pub(super) answer: Option<Box<Value>>,
}

impl ToolResult {
    pub(super) fn error(message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            content: vec![json!({"type": "text", "text": message})],
            structured: json!({"error": message}),
            is_error: true,
            answer: None,
        }
    }

    pub(super) fn ok(text: String, structured: Value) -> Self {
        Self {
            content: vec![json!({"type": "text", "text": text})],
            structured,
            is_error: false,
            answer: None,
        }
    }

    fn into_value(self, ctx: &CallContext) -> Value {
        if let Some(answer) = self.answer {
            return *answer;
        }
        let mut content = self.content;
        let structured = ctx.era.supports_structured_content();
        if structured && !self.is_error {
            // Older clients read only `content`: give them the data as text too.
            content.push(json!({"type": "text", "text": self.structured.to_string()}));
        }
        let mut v = json!({"content": content, "isError": self.is_error});
        if structured && !self.is_error {
            v["structuredContent"] = self.structured;
        }
        v
    }
}

impl From<JobsError> for ToolResult {
    fn from(e: JobsError) -> Self {
        ToolResult::error(ApiError::from(e).message)
    }
}

pub async fn call(server: &McpServer, ctx: &CallContext, params: &Value) -> Result<Value, Outcome> {
    let Some(name) = params.get("name").and_then(Value::as_str) else {
        return Err(McpError::invalid_params("tools/call needs a tool name").into());
    };
    let args = match params.get("arguments") {
        None | Some(Value::Null) => json!({}),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            return Ok(ToolResult::error("arguments must be an object").into_value(ctx));
        }
    };
    if server.options.conformance_fixtures {
        if let Some(v) = super::conformance::call_tool(ctx, name).await {
            return Ok(v);
        }
        if let Some(answer) =
            super::conformance_tasks::call_tool(&server.fixture_tasks, ctx, name, &args).await
        {
            return answer;
        }
        if let Some(answer) = super::conformance_input::call_tool(server, ctx, name, params) {
            return answer;
        }
        if let Some(answer) = super::conformance_ask::call_tool(server, ctx, name, &args).await {
            return answer;
        }
    }
    let mut args = args;
    if matches!(name, "generate_image" | "edit_image") {
        if let Some(ask) = ask_for_prompt(server, ctx, params, &mut args).await? {
            return Ok(ask);
        }
    }
    let result = match name {
        "generate_image" => generate(server, ctx, &args, true).await?,
        "edit_image" => edit_image(server, ctx, &args).await?,
        "upscale_image" => super::upscale_tool::upscale_image(server, ctx, &args).await?,
        "submit_generation" => generate(server, ctx, &args, false).await?,
        "get_generation" => get_generation(server, ctx, &args).await,
        "cancel_generation" => cancel_generation(server, ctx, &args).await,
        "list_models" => list_models(server, &args).await,
        "search_gallery" => search_gallery(server, ctx, &args).await,
        "enhance_prompt" => enhance_prompt(server, &args).await,
        other => match super::admin_tools::call(server, ctx, other, &args).await {
            Some(result) => result,
            None => {
                return Err(McpError::invalid_params(format!("unknown tool: {other}")).into());
            }
        },
    };
    Ok(result.into_value(ctx))
}

/// A generation without a prompt, from a client that can be asked (it
/// declared elicitation): 2026-07-28 gets an input-required result and
/// comes back with the answer; the handshake era is asked on the call's
/// stream (`elicitation/create`) and the call goes on with the answer.
/// `Some` is what to answer instead of running the tool.
async fn ask_for_prompt(
    server: &McpServer,
    ctx: &CallContext,
    params: &Value,
    args: &mut Value,
) -> Result<Option<Value>, Outcome> {
    let has_prompt = args
        .get("prompt")
        .and_then(Value::as_str)
        .is_some_and(|p| !p.trim().is_empty());
    if has_prompt || ctx.client_capabilities.get("elicitation").is_none() {
        return Ok(None);
    }
    let question = input_required::ask_text("What should the image show? (the prompt)", "prompt");
    let prompt_of = |answer: &Value| {
        input_required::accepted(answer)
            .and_then(|c| c.get("prompt"))
            .and_then(Value::as_str)
            .filter(|p| !p.trim().is_empty())
            .map(str::to_owned)
    };
    let answered = if ctx.era.is_modern() {
        let answered = input_required::responses(params)?
            .and_then(|r| r.get("prompt"))
            .and_then(prompt_of);
        if answered.is_none() {
            return Ok(Some(input_required::result(
                Map::from_iter([("prompt".to_string(), question)]),
                None,
            )));
        }
        answered
    } else if ctx.notify.is_some() {
        let answer = server
            .client_requests
            .ask(ctx, "elicitation/create", question["params"].clone())
            .await?;
        prompt_of(&answer)
    } else {
        None
    };
    if let Some(prompt) = answered {
        args["prompt"] = json!(prompt);
    }
    Ok(None)
}

pub(super) fn check_known(args: &Value, known: &[&str]) -> Result<(), ToolResult> {
    let unknown: Vec<&str> = args
        .as_object()
        .map(|o| {
            o.keys()
                .map(String::as_str)
                .filter(|k| !known.contains(k))
                .collect()
        })
        .unwrap_or_default();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(ToolResult::error(format!(
            "unknown argument(s): {}; accepted: {}",
            unknown.join(", "),
            known.join(", ")
        )))
    }
}

fn image_view(img: &ImageRecord, ctx: &CallContext) -> Value {
    let path = crate::views::image_url(&img.id);
    let thumb = format!("/api/images/{}/thumbnail", img.id);
    let base = ctx.base_url.as_deref().unwrap_or("");
    json!({
        "id": img.id,
        "uri": image_uri(&img.id),
        "url": format!("{base}{path}"),
        "thumbnail_url": format!("{base}{thumb}"),
        "model": img.model,
        "prompt": img.prompt,
        "negative_prompt": img.negative_prompt,
        "width": img.width,
        "height": img.height,
        "steps": img.steps,
        "guidance_scale": img.guidance_scale,
        "seed": img.seed,
        "created_at": cyberimage_core::time::rfc3339(&img.created_at),
        "favorite": img.favorite,
    })
}

fn job_view(job: &Job, ctx: &CallContext) -> Value {
    json!({
        "job_id": job.id,
        "status": job.status.as_str(),
        "model": job.spec.model,
        "prompt": job.spec.prompt,
        "num_images": job.spec.num_images,
        "progress": {
            "stage": job.progress.stage.as_str(),
            "step": job.progress.step,
            "total_steps": job.progress.total_steps,
        },
        "images": job.images.iter().map(|i| image_view(i, ctx)).collect::<Vec<_>>(),
        "error": job.error,
    })
}

/// A `resource_link` block, or for clients older than 2025-06-18 (which
/// do not know that block) the same facts as text.
fn link_block(img: &ImageRecord, ctx: &CallContext) -> Value {
    let uri = image_uri(&img.id);
    if ctx.era.supports_structured_content() {
        json!({
            "type": "resource_link",
            "uri": uri,
            "name": img.id.to_string(),
            "title": truncate(&img.prompt, 80),
            "description": format!("{}×{} PNG, model {}, seed {}", img.width, img.height, img.model, img.seed),
            "mimeType": "image/png",
        })
    } else {
        json!({"type": "text", "text": format!("image {uri} ({}×{} PNG)", img.width, img.height)})
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max_chars - 1).collect();
        t.push('…');
        t
    }
}

fn job_id_arg(args: &Value) -> Result<JobId, ToolResult> {
    check_known(args, &["job_id"])?;
    let raw = match args.get("job_id") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(ToolResult::error("job_id must be a string")),
        None => return Err(ToolResult::error("job_id is required")),
    };
    JobId::parse(raw).map_err(|_| ToolResult::error(format!("no job has the id {raw:?}")))
}

/// `edit_image`: `generate_image` from an input picture. `image` is a
/// `cyberimage://image/…` resource, a gallery image id, or base64.
async fn edit_image(
    server: &McpServer,
    ctx: &CallContext,
    args: &Value,
) -> Result<ToolResult, Outcome> {
    let mut args = args.clone();
    let Some(obj) = args.as_object_mut() else {
        return Ok(ToolResult::error("arguments must be an object"));
    };
    let image = match obj.remove("image") {
        Some(Value::String(s)) => s,
        Some(_) => return Ok(ToolResult::error("image must be a string")),
        None => {
            return Ok(ToolResult::error(
                "image is required: a cyberimage:// URI, an image id or base64",
            ))
        }
    };
    let reference = |s: String| {
        s.strip_prefix("cyberimage://image/")
            .map(str::to_owned)
            .unwrap_or(s)
    };
    obj.insert("init_image".into(), Value::String(reference(image)));
    match obj.remove("mask") {
        Some(Value::String(mask)) => {
            obj.insert("mask_image".into(), Value::String(reference(mask)));
        }
        Some(_) => return Ok(ToolResult::error("mask must be a string")),
        None => {}
    }
    generate(server, ctx, &args, true).await
}

async fn generate(
    server: &McpServer,
    ctx: &CallContext,
    args: &Value,
    wait: bool,
) -> Result<ToolResult, Outcome> {
    let mut known: Vec<&str> = GENERATION_ARGS.to_vec();
    if wait {
        known.push("inline_preview");
    }
    if args.get("init_image").is_some() {
        known.extend([
            "init_image",
            "mask_image",
            "outpaint",
            "strength",
            "mask_blur",
            "keep_unmasked",
        ]);
    }
    if let Err(e) = check_known(args, &known) {
        return Ok(e);
    }
    let inline_preview = match args.get("inline_preview") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Ok(ToolResult::error("inline_preview must be a boolean")),
    };
    let request = match params::spec_request(args) {
        Ok(r) => r,
        Err(message) => return Ok(ToolResult::error(message)),
    };
    let job = match server.service.submit(request).await {
        Ok(job) => job,
        Err(e) => return Ok(e.into()),
    };
    if !wait {
        return Ok(ToolResult {
            content: vec![json!({"type": "text", "text": format!(
                "Queued job {} ({} image(s) with {}). Poll it with get_generation.",
                job.id, job.spec.num_images, job.spec.model)})],
            structured: job_view(&job, ctx),
            is_error: false,
            answer: None,
        });
    }
    wait_for(server, ctx, job, inline_preview).await
}

/// Waits for a submitted job with progress notifications (steps, or an
/// upscale's tiles) and answers with its images; a client that gives up
/// on the call cancels the job. A client that takes tasks gets the job's
/// task at once instead (`tasks.rs`), and the images from `tasks/get`.
pub(super) async fn wait_for(
    server: &McpServer,
    ctx: &CallContext,
    job: Job,
    inline_preview: bool,
) -> Result<ToolResult, Outcome> {
    if ctx.tasks {
        return Ok(ToolResult {
            content: Vec::new(),
            structured: Value::Null,
            is_error: false,
            answer: Some(Box::new(super::tasks::created_for(&job))),
        });
    }
    let total = f64::from(job.progress.total_steps);
    let mut reported: Option<u32> = None;
    let report = |p: &Progress| {
        // Progress must rise strictly: each step count is reported once;
        // the loading stage is reported as 0 before any step.
        if reported.is_some_and(|r| p.step <= r) {
            return;
        }
        let message = match p.stage {
            Stage::LoadingModel => "loading model".to_owned(),
            Stage::Generating if p.step > 0 => format!("step {}/{}", p.step, p.total_steps),
            Stage::Saving if p.step > 0 => "saving".to_owned(),
            _ => return,
        };
        reported = Some(p.step);
        // The job id lets a client that gives up look the job up later.
        ctx.progress(f64::from(p.step), total, &format!("{message} ({})", job.id));
    };
    let finished = tokio::select! {
        _ = ctx.cancel.cancelled() => {
            // The client gave up on the call: the job is not wanted either.
            let _ = server.service.cancel(job.id).await;
            return Err(Outcome::Cancelled);
        }
        finished = server.service.wait_until_finished(job.id, report) => finished,
    };
    Ok(match finished {
        Ok(job) => finished_job(server, ctx, &job, inline_preview).await,
        Err(e) => e.into(),
    })
}

/// A finished job's tool result (the one `generate_image` answers), for a
/// task's `tasks/get`.
pub(super) async fn finished_result(server: &McpServer, ctx: &CallContext, job: &Job) -> Value {
    finished_job(server, ctx, job, true).await.into_value(ctx)
}

async fn finished_job(
    server: &McpServer,
    ctx: &CallContext,
    job: &Job,
    inline_preview: bool,
) -> ToolResult {
    match job.status {
        JobStatus::Completed => {}
        JobStatus::Failed => {
            return ToolResult::error(format!(
                "generation failed: {}",
                job.error.as_deref().unwrap_or("no reason recorded")
            ))
        }
        JobStatus::Cancelled => return ToolResult::error(format!("job {} was cancelled", job.id)),
        JobStatus::Pending | JobStatus::Processing => {
            return ToolResult::error(format!("job {} has not finished", job.id))
        }
    }
    let seeds: Vec<String> = job.images.iter().map(|i| i.seed.to_string()).collect();
    let summary = match &job.spec.upscale {
        Some(up) => format!(
            "Upscaled {}×{} to {}×{} with {} (×{}).",
            up.input_width, up.input_height, job.spec.width, job.spec.height, up.upscaler, up.scale
        ),
        None => format!(
            "Generated {} image(s) with {} ({}×{}, {} steps, guidance {}, seed {}).",
            job.images.len(),
            job.spec.model,
            job.spec.width,
            job.spec.height,
            job.spec.steps,
            job.spec.guidance_scale,
            seeds.join(", ")
        ),
    };
    let mut content = vec![json!({"type": "text", "text": summary})];
    for img in &job.images {
        if inline_preview {
            match preview_png(server, img.id).await {
                Ok(png) => content.push(json!({
                    "type": "image",
                    "data": base64::engine::general_purpose::STANDARD.encode(png),
                    "mimeType": "image/png",
                })),
                Err(e) => return e.into(),
            }
        }
        content.push(link_block(img, ctx));
    }
    ToolResult {
        content,
        structured: job_view(job, ctx),
        is_error: false,
        answer: None,
    }
}

/// The full PNG when it is small enough to inline, else its thumbnail.
async fn preview_png(server: &McpServer, id: ImageId) -> Result<Vec<u8>, JobsError> {
    let full = server.service.image_bytes(id, ImageVariant::Full).await?;
    if full.len() <= server.options.max_inline_image_bytes {
        return Ok(full);
    }
    server
        .service
        .image_bytes(id, ImageVariant::Thumbnail)
        .await
}

async fn get_generation(server: &McpServer, ctx: &CallContext, args: &Value) -> ToolResult {
    let id = match job_id_arg(args) {
        Ok(id) => id,
        Err(e) => return e,
    };
    let job = match server.service.job(id).await {
        Ok(job) => job,
        Err(e) => return e.into(),
    };
    let mut content = vec![json!({"type": "text", "text": match job.status {
        JobStatus::Pending => format!("Job {} is queued.", job.id),
        JobStatus::Processing => format!("Job {} is {}: step {}/{}.", job.id,
            job.progress.stage.as_str().replace('_', " "), job.progress.step, job.progress.total_steps),
        JobStatus::Completed => format!("Job {} completed with {} image(s).", job.id, job.images.len()),
        JobStatus::Failed => format!("Job {} failed: {}", job.id, job.error.as_deref().unwrap_or("no reason recorded")),
        JobStatus::Cancelled => format!("Job {} was cancelled.", job.id),
    }})];
    content.extend(job.images.iter().map(|i| link_block(i, ctx)));
    ToolResult {
        content,
        structured: job_view(&job, ctx),
        is_error: false,
        answer: None,
    }
}

async fn cancel_generation(server: &McpServer, ctx: &CallContext, args: &Value) -> ToolResult {
    let id = match job_id_arg(args) {
        Ok(id) => id,
        Err(e) => return e,
    };
    match server.service.cancel(id).await {
        Ok(job) => ToolResult {
            content: vec![json!({"type": "text", "text": format!("Job {} is cancelled.", job.id)})],
            structured: job_view(&job, ctx),
            is_error: false,
            answer: None,
        },
        Err(e) => e.into(),
    }
}

/// Prompt enrichment, as `POST /api/enrich`: the rewritten prompt as text
/// (so a model can pass it straight to generate_image) and structured.
async fn enhance_prompt(server: &McpServer, args: &Value) -> ToolResult {
    if let Err(e) = check_known(args, &["prompt", "style", "model"]) {
        return e;
    }
    let text = |name: &str| match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str()).filter(|s| !s.trim().is_empty())),
        Some(_) => Err(ToolResult::error(format!("{name} must be a string"))),
    };
    let (prompt, style, model) = match (text("prompt"), text("style"), text("model")) {
        (Ok(Some(p)), Ok(s), Ok(m)) => (p, s, m),
        (Ok(None), ..) => return ToolResult::error("prompt is required"),
        (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => return e,
    };
    let catalogue = server.service.catalogue();
    match crate::enrich::enrich(&server.enricher, catalogue, prompt, style, model).await {
        Ok(out) => ToolResult {
            content: vec![json!({"type": "text", "text": out.prompt})],
            structured: json!({"prompt": out.prompt, "original": out.original,
                               "style": out.style, "enriched_by": out.model}),
            is_error: false,
            answer: None,
        },
        Err(e) => ToolResult::error(e.message),
    }
}

async fn list_models(server: &McpServer, args: &Value) -> ToolResult {
    if let Err(e) = check_known(args, &[]) {
        return e;
    }
    let catalogue = server.service.catalogue();
    let default = catalogue.default_key();
    let availability = server.service.model_availability().await;
    let models: Vec<Value> = catalogue
        .models()
        .iter()
        .map(|m| {
            let state = crate::views::availability_of(&availability, &m.key);
            json!({
                "key": m.key, "source": m.source, "family": m.family,
                "description": m.description, "defaults": m.defaults,
                "is_default": m.key == default,
                "available": state.as_ref().map(Result::is_ok),
                "unavailable_reason": state.and_then(Result::err),
            })
        })
        .collect();
    let lines: Vec<String> = models
        .iter()
        .map(|m| {
            let state = match m["available"].as_bool() {
                Some(true) => " [ready]",
                Some(false) => " [cannot run here]",
                None => "",
            };
            format!(
                "- {} ({}){state}: {}",
                m["key"].as_str().unwrap_or_default(),
                m["family"].as_str().unwrap_or_default(),
                m["description"].as_str().unwrap_or_default()
            )
        })
        .collect();
    ToolResult {
        content: vec![json!({"type": "text", "text": format!(
            "Models (default {default}):\n{}", lines.join("\n"))})],
        structured: json!({"default": default, "models": models}),
        is_error: false,
        answer: None,
    }
}

fn positive_arg(args: &Value, name: &str, default: u32, max: u32) -> Result<u32, ToolResult> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 && n <= u64::from(max) => Ok(n as u32),
            _ => Err(ToolResult::error(format!(
                "{name} must be an integer from 1 to {max}"
            ))),
        },
    }
}

pub(super) fn bool_arg(args: &Value, name: &str) -> Result<bool, ToolResult> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ToolResult::error(format!("{name} must be true or false"))),
    }
}

fn text_arg(args: &Value, name: &str) -> Result<Option<String>, ToolResult> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_owned()).filter(|s| !s.is_empty())),
        Some(_) => Err(ToolResult::error(format!("{name} must be a string"))),
    }
}

async fn search_gallery(server: &McpServer, ctx: &CallContext, args: &Value) -> ToolResult {
    let parsed = (|| {
        check_known(args, &["query", "model", "page", "per_page", "favorites"])?;
        let search = text_arg(args, "query")?;
        if search.as_ref().is_some_and(|q| q.chars().count() > 500) {
            return Err(ToolResult::error("query is limited to 500 characters"));
        }
        Ok(GalleryQuery {
            page: positive_arg(args, "page", 1, 1_000_000)?,
            per_page: positive_arg(args, "per_page", 12, GALLERY_MAX_PER_PAGE)?,
            model: text_arg(args, "model")?,
            search,
            keywords: Vec::new(),
            favorites_only: bool_arg(args, "favorites")?,
        })
    })();
    let query = match parsed {
        Ok(q) => q,
        Err(e) => return e,
    };
    let page = match server.service.gallery(&query).await {
        Ok(p) => p,
        Err(e) => return e.into(),
    };
    let mut content = vec![json!({"type": "text", "text": format!(
        "{} image(s) match; page {} shows {}.", page.total, query.page, page.images.len())})];
    content.extend(page.images.iter().map(|i| link_block(i, ctx)));
    ToolResult {
        content,
        structured: json!({
            "images": page.images.iter().map(|i| image_view(i, ctx)).collect::<Vec<_>>(),
            "total": page.total,
            "page": query.page,
            "per_page": query.per_page,
        }),
        is_error: false,
        answer: None,
    }
}
