//! Protocol adapters over the jobs service: the REST API, the seed's
//! JSON-RPC methods at `/api/mcp`, standard MCP (Streamable HTTP at `/mcp`
//! and `/api/mcp`, and stdio), and the one table that maps service errors
//! to HTTP statuses and JSON-RPC codes. Adapters build a `SpecRequest` and
//! call `JobService`; they never touch the engine. The OpenAI-compatible
//! Images API (`/v1/…`) is one more such adapter.

mod auth;
mod body;
mod error_table;
mod events;
mod jsonrpc;
pub mod mcp;
mod openai;
mod origin;
mod params;
pub mod png_info;
mod rest;
mod views;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use cyberimage_jobs::JobService;

pub use auth::{digest_hex, ApiKeys, BadDigest};
pub use error_table::ApiError;
pub use mcp::{McpOptions, McpServer};
pub use origin::OriginPolicy;

#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub max_body_bytes: usize,
    pub api_keys: ApiKeys,
    /// Browser origins allowed besides loopback pages (see `origin.rs`).
    pub allowed_origins: Vec<String>,
    pub mcp: McpOptions,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            api_keys: ApiKeys::default(),
            allowed_origins: Vec::new(),
            mcp: McpOptions::default(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct AppState {
    pub service: Arc<JobService>,
    pub mcp: Arc<McpServer>,
}

pub fn router(service: Arc<JobService>, config: &ApiConfig) -> Router {
    let mcp = McpServer::new(service.clone(), config.mcp.clone());
    let state = AppState { service, mcp };
    rest::routes()
        .merge(jsonrpc::routes())
        .merge(mcp::http::routes())
        .merge(openai::routes())
        .merge(png_info::routes())
        .merge(events::routes())
        .fallback(|| async { ApiError::new_not_found("no such route") })
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            config.api_keys.clone(),
            auth::require_key,
        ))
        // Outermost: a refused origin learns nothing, not even whether a key is needed.
        .layer(axum::middleware::from_fn_with_state(
            OriginPolicy::new(&config.allowed_origins),
            origin::check,
        ))
        .layer(axum::middleware::from_fn(openai::reshape_errors))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
