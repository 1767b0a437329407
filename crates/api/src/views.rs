//! JSON shapes of jobs and images, exactly as the seed contract shows them.
//! REST and JSON-RPC share these so the two never drift apart.

use cyberimage_core::time::{rfc3339, rfc3339_opt};
use cyberimage_core::{Catalogue, ImageRecord, Job, JobStatus};
use cyberimage_jobs::{QueueStats, StatusCounts};
use serde_json::{json, Map, Value};

pub fn image_url(id: &cyberimage_core::ImageId) -> String {
    format!("/api/get_image/{id}")
}

/// The seed's image object: `id`, `url`, `metadata{model_id, prompt,
/// settings}`; we add the seed and negative prompt, which a user needs to
/// reproduce the image.
pub fn image(img: &ImageRecord) -> Value {
    json!({
        "id": img.id,
        "url": image_url(&img.id),
        "thumbnail_url": format!("/api/images/{}/thumbnail", img.id),
        "created_at": rfc3339(&img.created_at),
        "favorite": img.favorite,
        "metadata": {
            "model_id": img.model,
            "prompt": img.prompt,
            "negative_prompt": img.negative_prompt,
            "settings": {
                "num_inference_steps": img.steps,
                "guidance_scale": img.guidance_scale,
                "height": img.height,
                "width": img.width,
                "seed": img.seed,
            }
        }
    })
}

/// The REST status: the seed's status result, plus the fields CyberImage's
/// own REST status has (`id`, `model_id`, `negative_prompt`, `settings`,
/// `message`). The seed's JSON-RPC status keeps its exact shape
/// ([`job_status`]).
pub fn rest_job_status(job: &Job) -> Value {
    let spec = &job.spec;
    let mut v = job_status(job);
    let obj = v.as_object_mut().expect("object");
    for (key, value) in [
        ("id", json!(job.id)),
        ("model_id", json!(spec.model)),
        ("negative_prompt", json!(spec.negative_prompt)),
        (
            "settings",
            json!({
                "num_images": spec.num_images,
                "num_inference_steps": spec.steps,
                "guidance_scale": spec.guidance_scale,
                "width": spec.width,
                "height": spec.height,
                "seed": spec.seed,
            }),
        ),
        ("message", json!(status_message(job))),
    ] {
        obj.insert(key.into(), value);
    }
    if let (Some(init), Some(settings)) = (
        &spec.init_image,
        obj.get_mut("settings").and_then(Value::as_object_mut),
    ) {
        settings.insert("init_image".into(), json!(init.sha256));
        settings.insert("strength".into(), json!(init.strength));
        if let Some(mask) = &init.mask_sha256 {
            settings.insert("mask_image".into(), json!(mask));
            settings.insert("mask_blur".into(), json!(init.mask_blur));
            settings.insert("keep_unmasked".into(), json!(init.keep_unmasked));
        }
    }
    if let Some(settings) = obj.get_mut("settings").and_then(Value::as_object_mut) {
        if !spec.loras.is_empty() {
            settings.insert("loras".into(), json!(spec.loras));
        }
        // The hires pass: its final size, steps, strength and upscaler.
        if let Some(hires) = &spec.hires {
            settings.insert("hires".into(), json!(hires));
        }
    }
    // An upscaling job: which upscaler, the factor, the input's size and
    // the gallery image it came from.
    if let Some(upscale) = &spec.upscale {
        obj.insert("upscale".into(), json!(upscale));
    }
    // CyberImage numbers each image of a job (1-based) and gives the count.
    if let Some(images) = obj.get_mut("images").and_then(Value::as_array_mut) {
        let total = images.len();
        for (i, image) in images.iter_mut().enumerate() {
            if let Some(image) = image.as_object_mut() {
                image.insert("image_number".into(), json!(i + 1));
                image.insert("total_images".into(), json!(total));
            }
        }
    }
    v
}

/// REST's answer to a submission: the seed's fields and CyberImage's
/// `message`.
pub fn rest_job_submitted(job: &Job) -> Value {
    let mut v = job_submitted(job);
    v["message"] = json!(format!("{} image(s) queued", job.spec.num_images));
    v
}

/// The seed's status result.
pub fn job_status(job: &Job) -> Value {
    let mut v = json!({
        "job_id": job.id,
        "status": job.status.as_str(),
        "model": job.spec.model,
        "prompt": job.spec.prompt,
        "created_at": rfc3339(&job.created_at),
        "started_at": rfc3339_opt(&job.started_at),
        "completed_at": rfc3339_opt(&job.completed_at),
        "progress": job.progress.to_seed_json(),
    });
    let obj = v.as_object_mut().expect("object");
    match job.status {
        JobStatus::Completed => {
            obj.insert(
                "images".into(),
                Value::Array(job.images.iter().map(image).collect()),
            );
        }
        JobStatus::Failed | JobStatus::Cancelled => {
            obj.insert("error".into(), json!(job.error));
        }
        _ => {}
    }
    v
}

/// One line a person can read about where the job stands.
fn status_message(job: &Job) -> String {
    let images = job.spec.num_images;
    let plural = if images == 1 { "" } else { "s" };
    let upscaling = job.spec.upscale.is_some();
    match job.status {
        JobStatus::Pending => "Waiting in the queue".into(),
        JobStatus::Processing if upscaling => format!(
            "Upscaling: tile {} of {}",
            job.progress.step, job.progress.total_steps
        ),
        JobStatus::Completed if upscaling => {
            format!("Upscaled to {}x{}", job.spec.width, job.spec.height)
        }
        JobStatus::Processing => format!(
            "Generating {images} image{plural}: step {} of {}",
            job.progress.step, job.progress.total_steps
        ),
        JobStatus::Completed => format!("Generated {} image{plural}", job.images.len()),
        JobStatus::Failed => format!(
            "Failed: {}",
            job.error.as_deref().unwrap_or("no reason recorded")
        ),
        JobStatus::Cancelled => "Cancelled".into(),
    }
}

/// The seed's submit result.
pub fn job_submitted(job: &Job) -> Value {
    json!({
        "job_id": job.id,
        "status": job.status.as_str(),
        "num_images": job.spec.num_images,
    })
}

/// A job in queue listings: status plus the settings it runs with.
pub fn job_summary(job: &Job) -> Value {
    let mut v = job_status(job);
    let obj = v.as_object_mut().expect("object");
    obj.insert("settings".into(), json!(job.spec));
    obj.insert("attempts".into(), json!(job.attempts));
    v
}

/// Per model key: `Ok` when it can run in this process, else why not.
pub type Availability = Option<Vec<(String, Result<(), String>)>>;

/// Whether model `key` can run here (`None`: no engine in this process).
pub fn availability_of(availability: &Availability, key: &str) -> Option<Result<(), String>> {
    availability
        .as_ref()
        .and_then(|a| a.iter().find(|(k, _)| k == key))
        .map(|(_, r)| r.clone())
}

/// The seed's models result: `{models: {key: {id, description}}, default}`;
/// REST adds each model's family, defaults and whether it can run here
/// (`available`: null when this process runs no engine).
pub fn models(catalogue: &Catalogue, detailed: Option<&Availability>) -> Value {
    let mut models = Map::new();
    for m in catalogue.models() {
        let mut entry = json!({"id": m.source, "description": m.description});
        if let Some(availability) = detailed {
            let obj = entry.as_object_mut().expect("object");
            obj.insert("family".into(), json!(m.family));
            obj.insert("defaults".into(), json!(m.defaults));
            obj.insert("steps_range".into(), json!(m.steps_range));
            obj.insert("fixed_steps".into(), json!(m.fixed_steps));
            obj.insert(
                "negative_prompt".into(),
                json!(m.family.supports_negative_prompt()),
            );
            let state = availability_of(availability, &m.key);
            obj.insert("available".into(), json!(state.as_ref().map(Result::is_ok)));
            obj.insert(
                "unavailable_reason".into(),
                json!(state.and_then(Result::err)),
            );
        }
        models.insert(m.key.clone(), entry);
    }
    json!({"models": models, "default": catalogue.default_key()})
}

/// Counts by status, as CyberImage's queue page names them.
fn status_counts_json(c: &StatusCounts) -> Value {
    json!({
        "pending": c.pending,
        "processing": c.processing,
        "completed": c.completed,
        "failed": c.failed,
        "cancelled": c.cancelled,
        "total": c.total(),
    })
}

/// `/api/queue?detailed=true`: CyberImage's extra fields. `recent_24h`
/// and `models` count the jobs created in the last 24 hours,
/// `avg_processing_time_seconds` their completed jobs' mean run time (0
/// with none), `failure_rate` the failed share of every finished job, in
/// percent (0 with none), both rounded to 2 decimals.
pub fn add_queue_details(body: &mut Value, stats: &QueueStats, totals: &StatusCounts) {
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    body["recent_24h"] = status_counts_json(&stats.all_models());
    body["avg_processing_time_seconds"] = json!(round2(stats.mean_run_ms.unwrap_or(0.0) / 1000.0));
    body["models"] = Value::Object(
        stats
            .per_model
            .iter()
            .map(|(model, counts)| (model.clone(), status_counts_json(counts)))
            .collect(),
    );
    let finished = totals.completed + totals.failed;
    body["failure_rate"] = json!(if finished == 0 {
        0.0
    } else {
        round2(totals.failed as f64 * 100.0 / finished as f64)
    });
}
