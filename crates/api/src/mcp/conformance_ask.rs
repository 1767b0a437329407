//! The conformance suite's fixtures that ask the client during a call, in
//! the handshake era (`test_sampling`, `test_elicitation`,
//! `test_elicitation_sep1034_defaults`, `test_elicitation_sep1330_enums`):
//! each sends the request its scenario describes through
//! `client_requests` and reports the answer. Served only with
//! `--conformance-fixtures`; they touch no job, image or engine.

use serde_json::{json, Value};

use super::{CallContext, McpError, McpServer, Outcome};

pub fn tool_definitions() -> Vec<Value> {
    let string = |description: &str| json!({"type": "string", "description": description});
    vec![
        json!({"name": "test_sampling", "description": "Conformance fixture: asks the client's model.",
               "inputSchema": {"type": "object", "required": ["prompt"],
                               "properties": {"prompt": string("The prompt to send to the LLM")}}}),
        json!({"name": "test_elicitation", "description": "Conformance fixture: asks the user.",
               "inputSchema": {"type": "object", "required": ["message"],
                               "properties": {"message": string("The message to show the user")}}}),
        json!({"name": "test_elicitation_sep1034_defaults",
               "description": "Conformance fixture: asks with defaults for every primitive type.",
               "inputSchema": {"type": "object", "properties": {}}}),
        json!({"name": "test_elicitation_sep1330_enums",
               "description": "Conformance fixture: asks with the five kinds of enum.",
               "inputSchema": {"type": "object", "properties": {}}}),
    ]
}

fn needs(ctx: &CallContext, capability: &str, tool: &str) -> Result<(), Outcome> {
    if ctx.client_capabilities.get(capability).is_some() {
        return Ok(());
    }
    Err(McpError::invalid_params(format!(
        "{tool} asks the client by {capability}, which this client did not declare"
    ))
    .into())
}

fn text(t: String) -> Value {
    json!({"content": [{"type": "text", "text": t}], "isError": false})
}

/// `None` when `name` is not one of these fixtures.
pub async fn call_tool(
    server: &McpServer,
    ctx: &CallContext,
    name: &str,
    args: &Value,
) -> Option<Result<Value, Outcome>> {
    let arg = |key: &str| {
        args.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let elicit =
        |message: &str, schema: Value| json!({"message": message, "requestedSchema": schema});
    let (capability, method, params) = match name {
        "test_sampling" => (
            "sampling",
            "sampling/createMessage",
            json!({"messages": [{"role": "user", "content": {"type": "text", "text": arg("prompt")}}],
                   "maxTokens": 100}),
        ),
        "test_elicitation" => (
            "elicitation",
            "elicitation/create",
            elicit(
                &arg("message"),
                json!({"type": "object", "required": ["username", "email"],
                "properties": {"username": {"type": "string", "description": "User's response"},
                               "email": {"type": "string", "description": "User's email address"}}}),
            ),
        ),
        "test_elicitation_sep1034_defaults" => (
            "elicitation",
            "elicitation/create",
            elicit(
                "Confirm the defaults",
                json!({"type": "object", "properties": {
                "name": {"type": "string", "default": "John Doe"},
                "age": {"type": "integer", "default": 30},
                "score": {"type": "number", "default": 95.5},
                "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
                "verified": {"type": "boolean", "default": true}}}),
            ),
        ),
        "test_elicitation_sep1330_enums" => (
            "elicitation",
            "elicitation/create",
            elicit(
                "Choose",
                json!({"type": "object", "properties": {
                "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
                "titledSingle": {"type": "string", "oneOf": [
                    {"const": "value1", "title": "First Option"},
                    {"const": "value2", "title": "Second Option"},
                    {"const": "value3", "title": "Third Option"}]},
                "legacyEnum": {"type": "string", "enum": ["opt1", "opt2", "opt3"],
                               "enumNames": ["Option One", "Option Two", "Option Three"]},
                "untitledMulti": {"type": "array",
                                  "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
                "titledMulti": {"type": "array", "items": {"anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"}]}}}}),
            ),
        ),
        _ => return None,
    };
    if let Err(e) = needs(ctx, capability, name) {
        return Some(Err(e));
    }
    Some(
        server
            .client_requests
            .ask(ctx, method, params)
            .await
            .map(|answer| {
                text(match name {
                    "test_sampling" => format!(
                        "LLM response: {}",
                        answer["content"]["text"].as_str().unwrap_or_default()
                    ),
                    "test_elicitation" => format!("User response: {answer}"),
                    _ => format!(
                        "Elicitation completed: action={}, content={}",
                        answer["action"].as_str().unwrap_or("?"),
                        answer["content"]
                    ),
                })
            }),
    )
}
