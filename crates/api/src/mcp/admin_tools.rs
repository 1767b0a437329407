//! The queue-administration MCP tools, the same actions as the REST
//! routes in `admin.rs`: retry one failed generation or all of them,
//! delete a generation's record, clear the queue, and the queue's 24-hour
//! statistics. With API keys configured, the four that change the queue
//! need a key with the `admin` scope.

use cyberimage_core::JobId;
use cyberimage_jobs::{clear_scope, JobsError, CLEAR_SCOPES};
use serde_json::{json, Value};

use super::tools::{bool_arg, check_known, ToolResult};
use super::{CallContext, McpServer};
use crate::auth::Scope;

fn object(properties: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": properties, "required": required,
           "additionalProperties": false})
}

fn annotations(title: &str, destructive: bool, idempotent: bool) -> Value {
    json!({"title": title, "readOnlyHint": false, "destructiveHint": destructive,
           "idempotentHint": idempotent, "openWorldHint": false})
}

pub fn definitions() -> Vec<Value> {
    let job_id = json!({"type": "string", "description": "The job id (a UUID)."});
    let force = json!({"type": "boolean", "default": false,
                       "description": "Retry even jobs that used up their attempts (the app's force-retry)."});
    vec![
        json!({
            "name": "retry_generation",
            "title": "Retry generation",
            "description": "Put a failed generation job back in the queue. Returns the job.",
            "inputSchema": object(json!({"job_id": job_id, "force": force}), &["job_id"]),
            "annotations": annotations("Retry generation", false, false),
        }),
        json!({
            "name": "retry_failed_generations",
            "title": "Retry failed generations",
            "description": "Put every failed generation job that may be retried back in the queue, oldest first, while the queue has room.",
            "inputSchema": object(json!({"force": force}), &[]),
            "annotations": annotations("Retry failed generations", false, false),
        }),
        json!({
            "name": "delete_generation",
            "title": "Delete generation",
            "description": "Delete a generation job's record (not a running one). A job whose images are in the gallery is kept unless delete_images is true.",
            "inputSchema": object(json!({"job_id": job_id, "delete_images": {"type": "boolean", "default": false}}), &["job_id"]),
            "annotations": annotations("Delete generation", true, true),
        }),
        json!({
            "name": "clear_queue",
            "title": "Clear queue",
            "description": "Delete the records of jobs with a status (pending, failed, cancelled, completed, or all). Running jobs and jobs whose images are in the gallery are kept.",
            "inputSchema": object(json!({"status": {"type": "string", "enum": CLEAR_SCOPES}}), &["status"]),
            "annotations": annotations("Clear queue", true, true),
        }),
        json!({
            "name": "queue_stats",
            "title": "Queue statistics",
            "description": "Jobs by status, the last 24 hours by model with success and failure counts, and the mean time a job takes.",
            "inputSchema": object(json!({}), &[]),
            "annotations": {"title": "Queue statistics", "readOnlyHint": true, "destructiveHint": false,
                            "idempotentHint": true, "openWorldHint": false},
        }),
    ]
}

/// `None` when `name` is none of these tools.
pub async fn call(
    server: &McpServer,
    ctx: &CallContext,
    name: &str,
    args: &Value,
) -> Option<ToolResult> {
    let known: &[&str] = match name {
        "retry_generation" => &["job_id", "force"],
        "retry_failed_generations" => &["force"],
        "delete_generation" => &["job_id", "delete_images"],
        "clear_queue" => &["status"],
        "queue_stats" => &[],
        _ => return None,
    };
    if let Err(e) = check_known(args, known) {
        return Some(e);
    }
    if name != "queue_stats" && !ctx.scopes.allows(Scope::Admin) {
        return Some(ToolResult::error(
            "this API key lacks the \"admin\" scope that queue administration needs",
        ));
    }
    Some(run(server, name, args).await.unwrap_or_else(|e| e))
}

fn job_id(args: &Value) -> Result<JobId, ToolResult> {
    match args.get("job_id").and_then(Value::as_str) {
        Some(raw) => JobId::parse(raw.trim()).map_err(|_| JobsError::JobNotFound.into()),
        None => Err(ToolResult::error("job_id is required")),
    }
}

/// Refusals and failures as the `isError` results the model reads.
async fn run(server: &McpServer, name: &str, args: &Value) -> Result<ToolResult, ToolResult> {
    let service = &server.service;
    Ok(match name {
        "retry_generation" => {
            let job = service
                .retry_job(job_id(args)?, bool_arg(args, "force")?)
                .await?;
            ToolResult::ok(
                format!("Job {} is back in the queue.", job.id),
                crate::views::rest_job_status(&job),
            )
        }
        "retry_failed_generations" => {
            let report = service.retry_failed(bool_arg(args, "force")?).await?;
            ToolResult::ok(
                format!(
                    "Retried {} failed job(s); {} used up their attempts, {} wait for room in the queue.",
                    report.retried, report.exhausted, report.over_queue_bound
                ),
                json!(report),
            )
        }
        "delete_generation" => {
            let id = job_id(args)?;
            let images = service
                .delete_job(id, bool_arg(args, "delete_images")?)
                .await?;
            ToolResult::ok(
                format!("Deleted job {id} and {images} image(s)."),
                json!({"deleted": id, "images_deleted": images}),
            )
        }
        "clear_queue" => {
            let scope = args.get("status").and_then(Value::as_str).unwrap_or("");
            let Some(statuses) = clear_scope(scope) else {
                return Err(ToolResult::error(format!(
                    "status must be one of {}",
                    CLEAR_SCOPES.join(", ")
                )));
            };
            let report = service.clear_jobs(statuses).await?;
            ToolResult::ok(
                format!(
                    "Deleted {} job record(s); kept {} whose images are in the gallery.",
                    report.deleted, report.kept_with_images
                ),
                json!(report),
            )
        }
        _ => {
            let queue = service.queue(0).await?;
            let stats = service.recent_stats().await?;
            let t = queue.totals;
            let mut body = json!({
                "pending": t.pending, "processing": t.processing, "completed": t.completed,
                "failed": t.failed, "cancelled": t.cancelled, "total": t.total(),
            });
            crate::views::add_queue_details(&mut body, &stats, &t);
            ToolResult::ok(
                format!(
                    "{} pending, {} running, {} completed, {} failed, {} cancelled.",
                    t.pending, t.processing, t.completed, t.failed, t.cancelled
                ),
                body,
            )
        }
    })
}
