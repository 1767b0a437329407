//! Standard MCP (Model Context Protocol): image tools, image resources and
//! a prompt, over Streamable HTTP (`/mcp`, and `/api/mcp` for standard
//! methods) and stdio. Both protocol eras are spoken; see `protocol`.
//!
//! This is our own small JSON-RPC layer rather than the `rmcp` SDK: the
//! seed's sessionless methods must share `/api/mcp` with standard MCP,
//! which rmcp's transport refuses, and rmcp's API has broken across every
//! major release. The protocol surface we need is small and is tested
//! against the official Python SDK client. Like every adapter, it builds a
//! `SpecRequest` and calls the `JobService`; it never touches the engine.

mod admin_tools;
mod client_requests;
mod completion;
mod conformance;
mod conformance_ask;
mod conformance_input;
mod conformance_tasks;
mod dispatch;
pub(crate) mod http;
mod input_required;
pub(crate) mod protocol;
mod resources;
mod sessions;
pub mod stdio;
mod subscriptions;
mod tasks;
mod tool_schemas;
mod tools;
mod upscale_tool;

use std::sync::Arc;

use cyberimage_enrich::Enricher;
use cyberimage_jobs::JobService;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error_table::{rpc, ApiError};
pub use protocol::Era;

/// A JSON-RPC error as MCP sends it.
#[derive(Clone, Debug, PartialEq)]
pub struct McpError {
    pub code: i64,
    pub message: String,
    /// Boxed: errors travel in `Result`s, which should stay small.
    pub data: Option<Box<Value>>,
}

impl McpError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(rpc::INVALID_PARAMS, message)
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(rpc::INVALID_REQUEST, message)
    }

    pub fn method_not_found(method: &str) -> Self {
        Self::new(rpc::METHOD_NOT_FOUND, format!("method not found: {method}"))
    }
}

impl From<ApiError> for McpError {
    fn from(e: ApiError) -> Self {
        Self::new(e.rpc_code, e.message)
    }
}

/// Why a request produced no result.
#[derive(Debug)]
pub enum Outcome {
    Error(McpError),
    /// The client cancelled it: no response is sent.
    Cancelled,
}

impl From<McpError> for Outcome {
    fn from(e: McpError) -> Self {
        Outcome::Error(e)
    }
}

/// Options of the MCP surface; also the `[mcp]` section of the config file.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpOptions {
    /// Inline previews in tool results are downscaled above this many
    /// bytes of PNG (clients cap inline content at about 1 MiB).
    pub max_inline_image_bytes: usize,
    /// The conformance suite's `test_*` fixtures (`serve
    /// --conformance-fixtures` only; never from a config file).
    #[serde(skip)]
    pub conformance_fixtures: bool,
}

impl Default for McpOptions {
    fn default() -> Self {
        Self {
            max_inline_image_bytes: 768 * 1024,
            conformance_fixtures: false,
        }
    }
}

/// What one request runs with: its era, where its progress goes, and the
/// token that says the client gave up on it.
pub struct CallContext {
    pub era: Era,
    pub progress_token: Option<Value>,
    /// Server-to-client notifications tied to this request.
    pub notify: Option<mpsc::UnboundedSender<Value>>,
    pub cancel: CancellationToken,
    /// `http://host:port` as the client reached us, for absolute image URLs.
    pub base_url: Option<String>,
    /// What the caller's API key may do (all of it on stdio or without keys).
    pub scopes: crate::auth::Scopes,
    /// The client takes tasks (2026-07-28's tasks extension, declared in
    /// this request's client capabilities): long tools answer with one.
    pub tasks: bool,
    /// The client capabilities: this request's (2026-07-28), or those its
    /// session declared at `initialize` (the handshake era).
    pub client_capabilities: Value,
    /// The handshake-era session (HTTP's id, or one stdio connection's
    /// key), for resource subscriptions.
    pub session: Option<String>,
}

impl CallContext {
    pub fn new(era: Era, params: &Value) -> Self {
        let tasks = era.is_modern() && tasks::declared(params);
        let client_capabilities = match era.is_modern() {
            true => params
                .get("_meta")
                .and_then(|m| m.get(protocol::CLIENT_CAPABILITIES_KEY))
                .cloned()
                .unwrap_or(Value::Null),
            false => Value::Null,
        };
        Self {
            era,
            progress_token: params
                .get("_meta")
                .and_then(|m| m.get("progressToken"))
                .filter(|t| t.is_string() || t.is_number())
                .cloned(),
            notify: None,
            cancel: CancellationToken::new(),
            base_url: None,
            scopes: crate::auth::Scopes::ALL,
            tasks,
            client_capabilities,
            session: None,
        }
    }

    /// Sends `notifications/progress` when the client asked for progress.
    pub fn progress(&self, progress: f64, total: f64, message: &str) {
        let (Some(token), Some(notify)) = (&self.progress_token, &self.notify) else {
            return;
        };
        let params = serde_json::json!({
            "progressToken": token,
            "progress": progress,
            "total": total,
            "message": message,
        });
        // A closed channel means the client left; nothing to tell it.
        let _ = notify.send(protocol::notification("notifications/progress", params));
    }
}

/// The MCP server: protocol state shared by every transport.
pub struct McpServer {
    pub(crate) service: Arc<JobService>,
    pub(crate) options: McpOptions,
    pub(crate) sessions: sessions::Sessions,
    pub(crate) enricher: Arc<Enricher>,
    /// The conformance fixtures' tasks (`--conformance-fixtures` only).
    pub(crate) fixture_tasks: conformance_tasks::FixtureTasks,
    /// Our requests to clients, waiting for their answers.
    pub(crate) client_requests: client_requests::ClientRequests,
    /// Resource subscriptions by session.
    pub(crate) subscriptions: subscriptions::Subscriptions,
}

impl McpServer {
    pub fn new(
        service: Arc<JobService>,
        options: McpOptions,
        enricher: Arc<Enricher>,
    ) -> Arc<Self> {
        Arc::new(Self {
            service,
            options,
            sessions: sessions::Sessions::default(),
            enricher,
            fixture_tasks: Default::default(),
            client_requests: Default::default(),
            subscriptions: Default::default(),
        })
    }

    pub fn service(&self) -> &Arc<JobService> {
        &self.service
    }
}
