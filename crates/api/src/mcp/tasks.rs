//! The tasks extension of 2026-07-28 (`io.modelcontextprotocol/tasks`,
//! SEP-2663): a client that declares it is not kept waiting on a call for
//! the minutes a generation takes. `generate_image`, `edit_image` and
//! `upscale_image` then answer at once with a `CreateTaskResult` whose
//! task id is the job's; `tasks/get` reads the job from the database (so a
//! task outlives the connection and a restart of the server), with the
//! step in `statusMessage` and, once the job is done, the tool's own
//! result inlined; `tasks/cancel` cancels the job. A failed generation is
//! a tool error (`completed` with `isError`), as the extension has it;
//! `failed` is for protocol errors. Clients that do not declare the
//! extension get the tools as before: the call waits.

use cyberimage_core::time::rfc3339;
use cyberimage_core::{Job, JobId, JobStatus, Stage};
use serde_json::{json, Map, Value};

use super::{CallContext, McpError, McpServer, Outcome};

pub const TASKS_EXTENSION: &str = "io.modelcontextprotocol/tasks";
/// SEP-2575: the request needs a capability the client did not declare.
pub const MISSING_CLIENT_CAPABILITY: i64 = -32021;
/// How often a client should poll `tasks/get`.
pub const POLL_INTERVAL_MS: u64 = 1000;

/// The tools that answer with a task when the client takes tasks.
pub const TASK_TOOLS: [&str; 3] = ["generate_image", "edit_image", "upscale_image"];

/// Whether a request's client capabilities declare the tasks extension
/// (2026-07-28 sends them with every request).
pub fn declared(params: &Value) -> bool {
    params
        .get("_meta")
        .and_then(|m| m.get(super::protocol::CLIENT_CAPABILITIES_KEY))
        .and_then(|c| c.get("extensions"))
        .and_then(|e| e.get(TASKS_EXTENSION))
        .is_some()
}

/// -32021 naming the extension the request needs.
pub fn missing_extension(what: &str) -> McpError {
    McpError {
        code: MISSING_CLIENT_CAPABILITY,
        message: format!(
            "{what} needs the {TASKS_EXTENSION} extension: declare it under extensions in the \
             request's _meta client capabilities"
        ),
        data: Some(Box::new(json!({
            "requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}
        }))),
    }
}

/// The fields every task answer carries. `ttl_ms: None` is a task kept
/// until someone deletes it (a job's record).
pub fn envelope(
    id: &str,
    status: &str,
    created: &str,
    updated: &str,
    ttl_ms: Option<u64>,
) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("taskId".into(), json!(id));
    out.insert("status".into(), json!(status));
    out.insert("createdAt".into(), json!(created));
    out.insert("lastUpdatedAt".into(), json!(updated));
    out.insert("ttlMs".into(), json!(ttl_ms));
    out.insert("pollIntervalMs".into(), json!(POLL_INTERVAL_MS));
    out
}

/// A `CreateTaskResult` from its envelope.
pub fn created(envelope: Map<String, Value>) -> Value {
    let mut out = envelope;
    out.insert("resultType".into(), json!("task"));
    Value::Object(out)
}

fn job_status(job: &Job) -> &'static str {
    match job.status {
        JobStatus::Pending | JobStatus::Processing => "working",
        JobStatus::Completed | JobStatus::Failed => "completed",
        JobStatus::Cancelled => "cancelled",
    }
}

fn job_envelope(job: &Job) -> Map<String, Value> {
    let updated = job
        .completed_at
        .or(job.started_at)
        .unwrap_or(job.created_at);
    // Jobs are kept until deleted: no expiry.
    envelope(
        &job.id.to_string(),
        job_status(job),
        &rfc3339(&job.created_at),
        &rfc3339(&updated),
        None,
    )
}

/// The task of a job just queued by a task-supporting tool.
pub fn created_for(job: &Job) -> Value {
    created(job_envelope(job))
}

fn status_message(job: &Job) -> String {
    let p = job.progress;
    match (job.status, p.stage) {
        (JobStatus::Pending, _) => "waiting in the queue".into(),
        (JobStatus::Processing, Stage::LoadingModel) => "loading the model".into(),
        (JobStatus::Processing, Stage::Saving) => "saving".into(),
        (JobStatus::Processing, _) => format!("step {}/{}", p.step, p.total_steps),
        (JobStatus::Completed, _) => "done".into(),
        (JobStatus::Failed, _) => job
            .error
            .clone()
            .unwrap_or_else(|| "the generation failed".into()),
        (JobStatus::Cancelled, _) => "cancelled".into(),
    }
}

fn task_id(params: &Value) -> Result<&str, McpError> {
    params
        .get("taskId")
        .and_then(Value::as_str)
        .ok_or_else(|| McpError::invalid_params("taskId is required (a string)"))
}

fn unknown_task(id: &str) -> McpError {
    McpError::invalid_params(format!("no task {id:?}"))
}

/// The job a task id names, if it names one.
async fn job_of(server: &McpServer, id: &str) -> Result<Option<Job>, Outcome> {
    let Ok(job_id) = JobId::parse(id) else {
        return Ok(None);
    };
    match server.service.job(job_id).await {
        Ok(job) => Ok(Some(job)),
        Err(cyberimage_jobs::JobsError::JobNotFound) => Ok(None),
        Err(e) => Err(McpError::from(crate::error_table::ApiError::from(e)).into()),
    }
}

/// `tasks/get`: the task's state, and its result once it has one.
pub async fn get(server: &McpServer, ctx: &CallContext, params: &Value) -> Result<Value, Outcome> {
    if !ctx.tasks {
        return Err(missing_extension("tasks/get").into());
    }
    let id = task_id(params)?;
    if server.options.conformance_fixtures {
        if let Some(task) = server.fixture_tasks.get(id) {
            return Ok(task);
        }
    }
    let job = job_of(server, id).await?.ok_or_else(|| unknown_task(id))?;
    let mut out = job_envelope(&job);
    out.insert("statusMessage".into(), json!(status_message(&job)));
    if job.status.is_terminal() && job.status != JobStatus::Cancelled {
        let result = super::tools::finished_result(server, ctx, &job).await;
        out.insert("result".into(), result);
    }
    Ok(Value::Object(out))
}

/// `tasks/cancel`: an empty acknowledgement, for a running task and for
/// one already finished alike; `tasks/get` shows the outcome.
pub async fn cancel(
    server: &McpServer,
    ctx: &CallContext,
    params: &Value,
) -> Result<Value, Outcome> {
    if !ctx.tasks {
        return Err(missing_extension("tasks/cancel").into());
    }
    let id = task_id(params)?;
    if server.options.conformance_fixtures && server.fixture_tasks.cancel(id) {
        return Ok(json!({}));
    }
    let job = job_of(server, id).await?.ok_or_else(|| unknown_task(id))?;
    if !job.status.is_terminal() {
        match server.service.cancel(job.id).await {
            // It finished meanwhile: cancelling it is done all the same.
            Ok(_) | Err(cyberimage_jobs::JobsError::AlreadyFinished(_)) => {}
            Err(e) => return Err(McpError::from(crate::error_table::ApiError::from(e)).into()),
        }
    }
    Ok(json!({}))
}

/// `tasks/update`: answers for a task waiting on input (none of a job's
/// ever does; the conformance fixtures' do), acknowledged empty.
pub async fn update(
    server: &McpServer,
    ctx: &CallContext,
    params: &Value,
) -> Result<Value, Outcome> {
    if !ctx.tasks {
        return Err(missing_extension("tasks/update").into());
    }
    let id = task_id(params)?;
    let responses = params
        .get("inputResponses")
        .and_then(Value::as_object)
        .ok_or_else(|| McpError::invalid_params("inputResponses must be an object"))?;
    if server.options.conformance_fixtures && server.fixture_tasks.update(id, responses).is_some() {
        return Ok(json!({}));
    }
    match job_of(server, id).await? {
        // Nothing of a job asks for input: answers are ignored.
        Some(_) => Ok(json!({})),
        None => Err(unknown_task(id).into()),
    }
}
