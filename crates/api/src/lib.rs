//! Protocol adapters over the jobs service: the REST API, the seed's
//! JSON-RPC methods at `/api/mcp`, standard MCP (Streamable HTTP at `/mcp`
//! and `/api/mcp`, and stdio), and the one table that maps service errors
//! to HTTP statuses and JSON-RPC codes. Adapters build a `SpecRequest` and
//! call `JobService`; they never touch the engine. The OpenAI-compatible
//! Images API (`/v1/…`) is one more such adapter.

#![forbid(unsafe_code)]

mod a1111;
mod a1111_extras;
mod admin;
mod auth;
mod body;
mod enrich;
mod error_table;
mod events;
mod gallery_batch;
mod generate_form;
mod jsonrpc;
pub mod mcp;
mod metrics;
mod openai;
mod openai_edits;
pub mod openapi;
mod origin;
mod params;
pub mod png_info;
mod rate_limit;
mod rest;
mod upscale;
mod views;
mod web;
mod zip_stream;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use cyberimage_jobs::JobService;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use auth::{digest_hex, ApiKeys, BadDigest, Scope, Scopes};
pub use cyberimage_enrich::{EnrichConfig, Enricher, LocalChat};
pub use error_table::ApiError;
pub use mcp::{McpOptions, McpServer};
pub use origin::OriginPolicy;
pub use rate_limit::RateLimitConfig;

#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub max_body_bytes: usize,
    pub api_keys: ApiKeys,
    /// Browser origins allowed besides loopback pages (see `origin.rs`).
    pub allowed_origins: Vec<String>,
    pub mcp: McpOptions,
    pub rate_limit: RateLimitConfig,
    /// A client that has not sent its whole body by then gets 408 (slow
    /// senders cannot hold connections open forever).
    pub request_body_timeout: std::time::Duration,
    /// The device this process's workers run on (`/health` says it);
    /// `None` when jobs run in other processes.
    pub device: Option<String>,
    /// Prompt enrichment (`POST /api/enrich`, the MCP `enhance_prompt`
    /// tool); disabled unless a chat endpoint is configured.
    pub enricher: Arc<Enricher>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            api_keys: ApiKeys::default(),
            allowed_origins: Vec::new(),
            mcp: McpOptions::default(),
            rate_limit: RateLimitConfig::default(),
            request_body_timeout: std::time::Duration::from_secs(30),
            device: None,
            enricher: Arc::new(Enricher::disabled()),
        }
    }
}

#[derive(Clone)]
pub(crate) struct AppState {
    pub service: Arc<JobService>,
    pub mcp: Arc<McpServer>,
    pub http_metrics: metrics::HttpMetrics,
    pub keys: ApiKeys,
    pub device: Option<String>,
    pub a1111: Arc<a1111::A1111State>,
    pub enricher: Arc<Enricher>,
}

pub fn router(service: Arc<JobService>, config: &ApiConfig) -> Router {
    let mcp = McpServer::new(service.clone(), config.mcp.clone(), config.enricher.clone());
    let http_metrics = metrics::HttpMetrics::default();
    let state = AppState {
        service,
        mcp,
        http_metrics: http_metrics.clone(),
        keys: config.api_keys.clone(),
        device: config.device.clone(),
        a1111: a1111::state(),
        enricher: config.enricher.clone(),
    };
    rest::routes()
        .merge(jsonrpc::routes())
        .merge(mcp::http::routes())
        .merge(openai::routes())
        .merge(a1111::routes())
        .merge(a1111_extras::routes())
        .merge(png_info::routes())
        .merge(enrich::routes())
        .merge(admin::routes())
        .merge(gallery_batch::routes())
        .merge(upscale::routes())
        .merge(metrics::routes())
        .merge(openapi::routes())
        .merge(web::routes())
        .merge(events::routes())
        .fallback(|| async { ApiError::new_not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                error_table::rpc::METHOD_NOT_FOUND,
                "this route does not answer that HTTP method",
            )
        })
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            config.api_keys.clone(),
            auth::require_key,
        ))
        // A refused origin learns nothing, not even whether a key is needed.
        .layer(axum::middleware::from_fn_with_state(
            OriginPolicy::new(&config.allowed_origins),
            origin::check,
        ))
        // Before auth, so floods of unauthenticated requests are limited too.
        .layer(axum::middleware::from_fn_with_state(
            rate_limit::RateLimiter::new(config.rate_limit.clone()),
            rate_limit::limit,
        ))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            config.request_body_timeout,
        ))
        .layer(axum::middleware::from_fn(openai::reshape_errors))
        .layer(axum::middleware::from_fn_with_state(
            http_metrics,
            metrics::count_requests,
        ))
        // Every request gets an `x-request-id` (the client's, or a new
        // UUID), which is in every log line of the request and echoed in
        // the response.
        .layer(
            tower::ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                        let id = req
                            .headers()
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-");
                        tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
                    }),
                )
                .layer(PropagateRequestIdLayer::x_request_id()),
        )
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Peer addresses feed the per-client rate limiter.
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
