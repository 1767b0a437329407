//! The conformance suite's input-required fixtures (2026-07-28, SEP-2322):
//! `test_input_required_result_*` tools and prompt, and
//! `test_tool_with_task` (input first, then a task). Served only with
//! `--conformance-fixtures`; they touch no job, image or engine. Each
//! asks what the suite's scenario descriptions say, and answers from the
//! client's `inputResponses` (and our signed `requestState`).

use serde_json::{json, Map, Value};

use super::input_required::{accepted, ask_text, client_can, responses, result, verified_state};
use super::{CallContext, McpError, McpServer, Outcome};

fn text(t: &str) -> Value {
    json!({"content": [{"type": "text", "text": t}], "isError": false})
}

fn requests(entries: Vec<(&str, Value)>) -> Map<String, Value> {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn sample(question: &str, max_tokens: u32) -> Value {
    json!({"method": "sampling/createMessage", "params": {
        "messages": [{"role": "user", "content": {"type": "text", "text": question}}],
        "maxTokens": max_tokens}})
}

fn list_roots() -> Value {
    json!({"method": "roots/list", "params": {}})
}

fn ask_bool(message: &str, field: &str) -> Value {
    json!({"method": "elicitation/create", "params": {
        "message": message,
        "requestedSchema": {"type": "object",
                            "properties": {field: {"type": "boolean"}},
                            "required": [field]}}})
}

/// An accepted elicitation's string field.
fn field<'a>(answers: Option<&'a Map<String, Value>>, key: &str, name: &str) -> Option<&'a str> {
    answers?.get(key).and_then(accepted)?.get(name)?.as_str()
}

/// A sampling answer's text.
fn sampled(answers: Option<&Map<String, Value>>, key: &str) -> Option<String> {
    let content = answers?.get(key)?.get("content")?;
    let text = match content {
        Value::Array(parts) => parts.iter().find_map(|p| p.get("text")?.as_str()),
        other => other.get("text")?.as_str(),
    }?;
    Some(text.to_string())
}

fn roots(answers: Option<&Map<String, Value>>, key: &str) -> Option<Vec<String>> {
    let roots = answers?.get(key)?.get("roots")?.as_array()?;
    Some(
        roots
            .iter()
            .filter_map(|r| r.get("uri")?.as_str().map(str::to_owned))
            .collect(),
    )
}

pub fn tool_definitions() -> Vec<Value> {
    [
        "elicitation",
        "sampling",
        "list_roots",
        "request_state",
        "multiple_inputs",
        "multi_round",
        "tampered_state",
        "capabilities",
    ]
    .iter()
    .map(|kind| {
        json!({"name": format!("test_input_required_result_{kind}"),
               "description": "Conformance fixture: asks the client first (input required).",
               "inputSchema": {"type": "object", "properties": {}}})
    })
    .chain([
        json!({"name": "test_tool_with_task",
               "description": "Conformance fixture: asks a name, then answers as a task.",
               "inputSchema": {"type": "object", "properties": {}},
               "execution": {"taskSupport": "required"}}),
        json!({"name": "test_missing_capability",
               "description": "Conformance fixture: needs the client's sampling capability.",
               "inputSchema": {"type": "object", "properties": {}}}),
        json!({"name": "test_streaming_elicitation",
               "description": "Conformance fixture: asks by an input-required result, never by a request of its own.",
               "inputSchema": {"type": "object", "properties": {}}}),
        json!({"name": "test_logging_tool",
               "description": "Conformance fixture: logs only when the request sets a log level.",
               "inputSchema": {"type": "object", "properties": {}}}),
    ])
    .collect()
}

/// `None` when `name` is not one of these fixtures.
pub fn call_tool(
    server: &McpServer,
    ctx: &CallContext,
    name: &str,
    params: &Value,
) -> Option<Result<Value, Outcome>> {
    Some(
        answer(server, ctx, name, params)
            .transpose()?
            .map_err(Outcome::from),
    )
}

fn answer(
    server: &McpServer,
    ctx: &CallContext,
    name: &str,
    params: &Value,
) -> Result<Option<Value>, McpError> {
    const OTHERS: [&str; 4] = [
        "test_tool_with_task",
        "test_missing_capability",
        "test_streaming_elicitation",
        "test_logging_tool",
    ];
    if !name.starts_with("test_input_required_result_") && !OTHERS.contains(&name) {
        return Ok(None);
    }
    let answers = responses(params)?;
    let state = verified_state(params)?;
    let ask_name = || ask_text("What is your name?", "name");
    Ok(Some(match name {
        "test_input_required_result_elicitation" => match field(answers, "user_name", "name") {
            Some(who) => text(&format!("Hello, {who}!")),
            None => result(requests(vec![("user_name", ask_name())]), None),
        },
        "test_input_required_result_sampling" => match sampled(answers, "capital_question") {
            Some(answer) => text(&format!("The model said: {answer}")),
            None => result(
                requests(vec![(
                    "capital_question",
                    sample("What is the capital of France?", 100),
                )]),
                None,
            ),
        },
        "test_input_required_result_list_roots" => match roots(answers, "client_roots") {
            Some(uris) => text(&format!("Roots: {}", uris.join(", "))),
            None => result(requests(vec![("client_roots", list_roots())]), None),
        },
        "test_input_required_result_request_state"
        | "test_input_required_result_tampered_state" => {
            match (answers.and_then(|a| a.get("confirm")), state.as_deref()) {
                (Some(_), Some("confirm")) => text("Confirmed: state-ok"),
                _ => result(
                    requests(vec![("confirm", ask_bool("Please confirm", "ok"))]),
                    Some("confirm"),
                ),
            }
        }
        "test_input_required_result_multiple_inputs" => {
            let all = ["user_name", "greeting", "client_roots"]
                .iter()
                .all(|k| answers.is_some_and(|a| a.contains_key(*k)));
            if all && state.as_deref() == Some("multiple") {
                text(&format!(
                    "Hello, {}: {} (roots: {})",
                    field(answers, "user_name", "name").unwrap_or("?"),
                    sampled(answers, "greeting").unwrap_or_default(),
                    roots(answers, "client_roots")
                        .unwrap_or_default()
                        .join(", ")
                ))
            } else {
                result(
                    requests(vec![
                        ("user_name", ask_name()),
                        ("greeting", sample("Generate a greeting", 50)),
                        ("client_roots", list_roots()),
                    ]),
                    Some("multiple"),
                )
            }
        }
        "test_input_required_result_multi_round" => match (state.as_deref(), answers) {
            (Some("round-1"), Some(a)) if a.contains_key("step1") => result(
                requests(vec![(
                    "step2",
                    ask_text("Step 2: What is your favorite color?", "color"),
                )]),
                Some(&format!(
                    "round-2:{}",
                    field(answers, "step1", "name").unwrap_or("?")
                )),
            ),
            (Some(s), Some(a)) if s.starts_with("round-2:") && a.contains_key("step2") => {
                text(&format!(
                    "{} likes {}",
                    &s["round-2:".len()..],
                    field(answers, "step2", "color").unwrap_or("?")
                ))
            }
            _ => result(
                requests(vec![(
                    "step1",
                    ask_text("Step 1: What is your name?", "name"),
                )]),
                Some("round-1"),
            ),
        },
        "test_input_required_result_capabilities" => {
            let mut wanted = Vec::new();
            if client_can(ctx, "elicitation") {
                wanted.push(("user_name", ask_name()));
            }
            if client_can(ctx, "sampling") {
                wanted.push(("greeting", sample("Generate a greeting", 50)));
            }
            if client_can(ctx, "roots") {
                wanted.push(("client_roots", list_roots()));
            }
            if wanted.is_empty() || answers.is_some() {
                text("Nothing more to ask")
            } else {
                result(requests(wanted), None)
            }
        }
        "test_missing_capability" if !client_can(ctx, "sampling") => {
            return Err(McpError {
                code: super::tasks::MISSING_CLIENT_CAPABILITY,
                message: "test_missing_capability needs the client's sampling capability".into(),
                data: Some(Box::new(json!({"requiredCapabilities": {"sampling": {}}}))),
            })
        }
        "test_missing_capability" => text("The client can sample"),
        "test_streaming_elicitation" => match field(answers, "user_name", "name") {
            Some(who) => text(&format!("Hello, {who}!")),
            None => result(requests(vec![("user_name", ask_name())]), None),
        },
        // We log nothing unless asked: no level set, no messages.
        "test_logging_tool" => text("Logged nothing (no log level was set)"),
        "test_tool_with_task" => match field(answers, "user_name", "name") {
            Some(who) if ctx.tasks => {
                let greeting = text(&format!("Hello, {who}! (from a task)"));
                server.fixture_tasks.start_done(greeting)
            }
            Some(_) => return Err(super::tasks::missing_extension("test_tool_with_task")),
            None => result(requests(vec![("user_name", ask_name())]), None),
        },
        _ => return Ok(None),
    }))
}

pub fn prompts() -> Vec<Value> {
    vec![json!({"name": "test_input_required_result_prompt",
                "description": "Conformance fixture: asks for context first."})]
}

/// `None` when `name` is not this fixture prompt.
pub fn get_prompt(name: &str, params: &Value) -> Option<Result<Value, Outcome>> {
    if name != "test_input_required_result_prompt" {
        return None;
    }
    let answers = match responses(params) {
        Ok(a) => a,
        Err(e) => return Some(Err(e.into())),
    };
    Some(Ok(match field(answers, "user_context", "context") {
        Some(context) => json!({"messages": [{"role": "user", "content": {
            "type": "text", "text": format!("Use this context: {context}")}}]}),
        None => result(
            requests(vec![(
                "user_context",
                ask_text("What context should the prompt use?", "context"),
            )]),
            None,
        ),
    }))
}
