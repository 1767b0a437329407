//! Routing one MCP request to its handler, and the server's self-description
//! (`initialize`, `server/discover`).

use serde_json::{json, Value};

use super::protocol::{self, Era};
use super::{
    completion, resources, tasks, tool_schemas, tools, CallContext, McpError, McpServer, Outcome,
};

const INSTRUCTIONS: &str = "CyberImage turns text prompts into images on this machine. \
Call list_models to see which models are installed. generate_image waits for the image \
and reports progress per denoising step; for long generations with clients that time out, \
use submit_generation and poll get_generation. Every image is also a resource at \
cyberimage://image/{id}.";

pub fn server_info() -> Value {
    json!({
        "name": "cyberimage",
        "title": "CyberImage",
        "version": env!("CARGO_PKG_VERSION"),
    })
}

/// `handshake`: the handshake era's resource subscriptions and list
/// changes (`subscriptions.rs`); 2026-07-28 has neither.
fn capabilities(handshake: bool) -> Value {
    json!({
        "tools": {"listChanged": false},
        "resources": {"listChanged": handshake, "subscribe": handshake},
        "prompts": {"listChanged": false},
        "completions": {},
    })
}

/// The `initialize` result for a client offering `offered`.
pub fn initialize_result(offered: Option<&str>) -> Value {
    json!({
        "protocolVersion": protocol::negotiate(offered),
        "capabilities": capabilities(true),
        "serverInfo": server_info(),
        "instructions": INSTRUCTIONS,
    })
}

fn discover_result() -> Value {
    // No resource subscriptions in 2026-07-28: they moved to
    // `subscriptions/listen`, which we do not serve.
    let mut capabilities = capabilities(false);
    capabilities["extensions"] = json!({tasks::TASKS_EXTENSION: {}});
    json!({
        "supportedVersions": protocol::all_versions(),
        "capabilities": capabilities,
        "instructions": INSTRUCTIONS,
        "_meta": {protocol::SERVER_INFO_KEY: server_info()},
    })
}

/// 2026-07-28 (SEP-2164) reports a missing resource as -32602, where the
/// handshake era used -32002.
fn modern_not_found(era: &Era, outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Error(mut e)
            if era.is_modern() && e.code == crate::error_table::rpc::MCP_RESOURCE_NOT_FOUND =>
        {
            e.code = crate::error_table::rpc::INVALID_PARAMS;
            Outcome::Error(e)
        }
        other => other,
    }
}

impl McpServer {
    /// Answers one request. Transports handle sessions and cancellation;
    /// this is the same for every transport and era.
    pub async fn handle(
        &self,
        ctx: &CallContext,
        method: &str,
        params: &Value,
    ) -> Result<Value, Outcome> {
        if ctx.era.is_modern() && protocol::removed_in_modern(method) {
            return Err(McpError::method_not_found(method).into());
        }
        let result = match method {
            "initialize" => {
                initialize_result(params.get("protocolVersion").and_then(Value::as_str))
            }
            "server/discover" => discover_result(),
            "ping" => json!({}),
            // We send no log messages, so any level is already honoured.
            "logging/setLevel" => json!({}),
            "tools/list" => json!({"tools": tool_schemas::definitions(self)}),
            "tools/call" => tools::call(self, ctx, params).await?,
            "resources/list" => resources::list(self, params).await?,
            "resources/templates/list" => resources::templates(self),
            "resources/read" => resources::read(self, params)
                .await
                .map_err(|outcome| modern_not_found(&ctx.era, outcome))?,
            "prompts/list" => resources::prompts(self),
            "prompts/get" => resources::get_prompt(self, params)?,
            "resources/subscribe" => resources::subscribe(self, ctx, params).await?,
            "resources/unsubscribe" => resources::unsubscribe(self, ctx, params)?,
            "completion/complete" => completion::complete(self, params).await?,
            // The tasks extension is 2026-07-28's (2025-11-25's experimental
            // tasks are another API, not served).
            "tasks/get" if ctx.era.is_modern() => tasks::get(self, ctx, params).await?,
            "tasks/cancel" if ctx.era.is_modern() => tasks::cancel(self, ctx, params).await?,
            "tasks/update" if ctx.era.is_modern() => tasks::update(self, ctx, params).await?,
            other => return Err(McpError::method_not_found(other).into()),
        };
        Ok(protocol::finish_result(&ctx.era, method, result))
    }

    /// The era a request on a stream transport (stdio) is answered in: the
    /// modern envelope when present, else the session's negotiated version.
    pub fn era_for(params: &Value, session_version: Option<&str>) -> Result<Era, McpError> {
        if protocol::envelope_version(params).is_some() {
            return protocol::check_envelope(params).map(Era::Modern);
        }
        Ok(Era::Handshake(
            session_version
                .unwrap_or(protocol::HTTP_DEFAULT_VERSION)
                .to_owned(),
        ))
    }
}
