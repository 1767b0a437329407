//! The conformance suite's fixtures for the tasks extension (`greet`,
//! `slow_compute`, `failing_job`, `protocol_error_job`, and
//! `confirm_delete` / `multi_input`, whose tasks wait for the client's
//! answers through `tasks/update`), served only with
//! `--conformance-fixtures`, like the other `test_*` fixtures. Their tasks
//! live in memory (a job's task lives in the database: `tasks.rs`); they
//! touch no job, image or engine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cyberimage_core::time::{now, rfc3339};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use super::tasks::{created, envelope, missing_extension};
use super::{CallContext, McpError, Outcome};

/// Fixture tasks are forgotten an hour after they were made.
const TTL_MS: u64 = 3_600_000;

struct FixtureTask {
    envelope: Map<String, Value>,
    /// `result` or `error`, once terminal.
    outcome: Option<(&'static str, Value)>,
    /// Input requests not answered yet (`input_required` while any is).
    pending: Map<String, Value>,
    /// The answers so far, for the result.
    answers: Vec<String>,
    cancel: CancellationToken,
}

/// The fixture tasks by id.
#[derive(Default, Clone)]
pub struct FixtureTasks(Arc<Mutex<HashMap<String, FixtureTask>>>);

impl FixtureTasks {
    /// The task's `tasks/get` answer, if it is one of ours.
    pub fn get(&self, id: &str) -> Option<Value> {
        let tasks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let task = tasks.get(id)?;
        let mut out = task.envelope.clone();
        if let Some((key, value)) = &task.outcome {
            out.insert((*key).into(), value.clone());
        }
        if !task.pending.is_empty() {
            out.insert("inputRequests".into(), Value::Object(task.pending.clone()));
        }
        Some(Value::Object(out))
    }

    /// Takes `responses` for the task's pending input requests (others
    /// are ignored); once none is pending the task completes. `None` when
    /// the task is not one of ours.
    pub fn update(&self, id: &str, responses: &Map<String, Value>) -> Option<()> {
        let mut tasks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let task = tasks.get_mut(id)?;
        if task.envelope["status"] != "input_required" {
            return Some(());
        }
        for (key, response) in responses {
            if task.pending.remove(key).is_some() {
                task.answers.push(format!("{key}: {response}"));
            }
        }
        if task.pending.is_empty() {
            let text = format!("done with {}", task.answers.join("; "));
            task.envelope.insert("status".into(), json!("completed"));
            task.outcome = Some(("result", text_result(&text, false)));
        }
        task.envelope
            .insert("lastUpdatedAt".into(), json!(rfc3339(&now())));
        Some(())
    }

    /// A task that waits for the client's answers to `requests` (keyed by
    /// our ids), then completes.
    fn start_input(&self, requests: Map<String, Value>) -> Value {
        let id = format!("fixture-{}", uuid::Uuid::new_v4());
        let at = rfc3339(&now());
        let task = FixtureTask {
            envelope: envelope(&id, "input_required", &at, &at, Some(TTL_MS)),
            outcome: None,
            pending: requests,
            answers: Vec::new(),
            cancel: CancellationToken::new(),
        };
        let answer = created(task.envelope.clone());
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, task);
        answer
    }

    /// Cancels the task if it is one of ours and still working; whether it
    /// is one of ours.
    pub fn cancel(&self, id: &str) -> bool {
        let mut tasks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match tasks.get_mut(id) {
            Some(task) => {
                task.cancel.cancel();
                // A task waiting for input has no worker to see the token.
                if task.envelope["status"] == "input_required" {
                    task.envelope.insert("status".into(), json!("cancelled"));
                    task.pending.clear();
                }
                true
            }
            None => false,
        }
    }

    fn settle(&self, id: &str, status: &str, outcome: Option<(&'static str, Value)>) {
        let mut tasks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = tasks.get_mut(id) {
            if task.envelope["status"] == "working" {
                task.envelope.insert("status".into(), json!(status));
                task.envelope
                    .insert("lastUpdatedAt".into(), json!(rfc3339(&now())));
                task.outcome = outcome;
            }
        }
    }

    /// A task whose result is `result` (it completes at once).
    pub fn start_done(&self, result: Value) -> Value {
        self.start(async move { Ok(result) })
    }

    /// Starts `work` as a task: the `CreateTaskResult` at once, the outcome
    /// (`Ok` a tool result, `Err` a protocol error) when it ends, or
    /// `cancelled` when cancelled first.
    fn start(
        &self,
        work: impl std::future::Future<Output = Result<Value, McpError>> + Send + 'static,
    ) -> Value {
        let id = format!("fixture-{}", uuid::Uuid::new_v4());
        let at = rfc3339(&now());
        let cancel = CancellationToken::new();
        let task = FixtureTask {
            envelope: envelope(&id, "working", &at, &at, Some(TTL_MS)),
            outcome: None,
            pending: Map::new(),
            answers: Vec::new(),
            cancel: cancel.clone(),
        };
        let answer = created(task.envelope.clone());
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), task);
        let tasks = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => tasks.settle(&id, "cancelled", None),
                outcome = work => match outcome {
                    Ok(result) => tasks.settle(&id, "completed", Some(("result", result))),
                    Err(e) => tasks.settle(&id, "failed", Some(("error", json!({
                        "code": e.code, "message": e.message})))),
                },
            }
        });
        answer
    }
}

/// An `elicitation/create` input request asking `message`.
fn elicit(message: &str) -> Value {
    json!({"method": "elicitation/create", "params": {
        "message": message,
        "requestedSchema": {"type": "object", "properties": {
            "confirm": {"type": "boolean"}, "name": {"type": "string"}}}}})
}

fn text_result(t: &str, is_error: bool) -> Value {
    json!({"content": [{"type": "text", "text": t}], "isError": is_error})
}

pub fn tool_definitions() -> Vec<Value> {
    let tool = |name: &str, description: &str, properties: Value, support: Option<&str>| {
        let mut t = json!({"name": name, "description": description,
                           "inputSchema": {"type": "object", "properties": properties}});
        if let Some(support) = support {
            t["execution"] = json!({"taskSupport": support});
        }
        t
    };
    vec![
        tool(
            "greet",
            "Conformance fixture: Hello, {name}! (no task).",
            json!({"name": {"type": "string"}}),
            None,
        ),
        tool(
            "slow_compute",
            "Conformance fixture: sleeps `seconds`, then answers (a task when the client takes them).",
            json!({"seconds": {"type": "number"}, "label": {"type": "string"}}),
            Some("optional"),
        ),
        tool(
            "failing_job",
            "Conformance fixture: a tool error after a second (tasks required).",
            json!({}),
            Some("required"),
        ),
        tool(
            "protocol_error_job",
            "Conformance fixture: a protocol error (as a task).",
            json!({}),
            Some("optional"),
        ),
        tool(
            "confirm_delete",
            "Conformance fixture: a task that asks the client to confirm, then completes.",
            json!({"filename": {"type": "string"}}),
            Some("required"),
        ),
        tool(
            "multi_input",
            "Conformance fixture: a task that asks two questions at once.",
            json!({}),
            Some("required"),
        ),
    ]
}

/// `None` when `name` is not a tasks fixture.
pub async fn call_tool(
    tasks: &FixtureTasks,
    ctx: &CallContext,
    name: &str,
    args: &Value,
) -> Option<Result<Value, Outcome>> {
    let seconds = args.get("seconds").and_then(Value::as_f64).unwrap_or(0.0);
    let label = args
        .get("label")
        .and_then(Value::as_str)
        .unwrap_or("slow_compute")
        .to_owned();
    let slow = async move {
        tokio::time::sleep(Duration::from_secs_f64(seconds.clamp(0.0, 600.0))).await;
        Ok(text_result(
            &format!("{label}: done after {seconds} s"),
            false,
        ))
    };
    let failing = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(text_result("failing_job: this job always fails", true))
    };
    let protocol_error = async {
        Err(McpError::new(
            -32603,
            "protocol_error_job: an internal error",
        ))
    };
    Some(match (name, ctx.tasks) {
        ("greet", _) => {
            let who = args.get("name").and_then(Value::as_str).unwrap_or("World");
            Ok(text_result(&format!("Hello, {who}!"), false))
        }
        ("slow_compute", true) => Ok(tasks.start(slow)),
        ("slow_compute", false) => slow.await.map_err(Outcome::from),
        ("failing_job", true) => Ok(tasks.start(failing)),
        ("failing_job", false) => Err(missing_extension("failing_job").into()),
        ("protocol_error_job", true) => Ok(tasks.start(protocol_error)),
        ("protocol_error_job", false) => protocol_error.await.map_err(Outcome::from),
        ("confirm_delete", true) => {
            let file = args
                .get("filename")
                .and_then(Value::as_str)
                .unwrap_or("the file");
            Ok(tasks.start_input(Map::from_iter([(
                "confirm".to_string(),
                elicit(&format!("Delete {file}?")),
            )])))
        }
        ("multi_input", true) => Ok(tasks.start_input(Map::from_iter([
            ("first".to_string(), elicit("Your name?")),
            ("second".to_string(), elicit("Confirm?")),
        ]))),
        ("confirm_delete" | "multi_input", false) => Err(missing_extension(name).into()),
        _ => return None,
    })
}
