//! The one table from service errors to HTTP statuses, stable error codes
//! and JSON-RPC codes. Every adapter answers errors through here.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cyberimage_enrich::EnrichError;
use cyberimage_jobs::JobsError;
use serde_json::json;

/// JSON-RPC 2.0 codes: the standard ones and our application range.
pub mod rpc {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const SERVER_ERROR: i64 = -32000;
    pub const JOB_NOT_FOUND: i64 = -32001;
    pub const QUEUE_FULL: i64 = -32002;
    pub const IMAGE_NOT_FOUND: i64 = -32003;
    pub const CONFLICT: i64 = -32004;
    pub const UNAVAILABLE: i64 = -32005;
    pub const UNAUTHORIZED: i64 = -32006;
    /// A service we call (the enrichment chat endpoint) failed or was slow.
    pub const UPSTREAM_FAILED: i64 = -32007;
    /// Standard MCP fixes -32002 as "resource not found" for
    /// `resources/read`. It shares the number with `QUEUE_FULL` of the
    /// seed's methods; standard MCP never reports a full queue as a
    /// protocol error (tools answer it as an `isError` result), so the two
    /// cannot meet on one surface.
    pub const MCP_RESOURCE_NOT_FOUND: i64 = -32002;
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub rpc_code: i64,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        rpc_code: i64,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            rpc_code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            rpc::INVALID_PARAMS,
            message,
        )
    }

    pub fn new_not_found(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            rpc::METHOD_NOT_FOUND,
            message,
        )
    }
}

impl From<JobsError> for ApiError {
    fn from(e: JobsError) -> Self {
        use StatusCode as S;
        let message = e.to_string();
        let (status, code, rpc_code) = match &e {
            JobsError::Invalid(v) if v.unknown_model => {
                (S::BAD_REQUEST, "unknown_model", rpc::INVALID_PARAMS)
            }
            JobsError::Invalid(_) => (S::BAD_REQUEST, "invalid_parameter", rpc::INVALID_PARAMS),
            JobsError::QueueFull { .. } => (S::TOO_MANY_REQUESTS, "queue_full", rpc::QUEUE_FULL),
            JobsError::JobNotFound => (S::NOT_FOUND, "job_not_found", rpc::JOB_NOT_FOUND),
            JobsError::ImageNotFound => (S::NOT_FOUND, "image_not_found", rpc::IMAGE_NOT_FOUND),
            JobsError::AlreadyFinished(_) => (S::CONFLICT, "job_finished", rpc::CONFLICT),
            JobsError::Refused { code, .. } => (S::CONFLICT, *code, rpc::CONFLICT),
            JobsError::ShuttingDown => (S::SERVICE_UNAVAILABLE, "shutting_down", rpc::UNAVAILABLE),
            JobsError::Database(_) | JobsError::Storage(_) => {
                tracing::error!(error = %e, "internal error");
                (
                    S::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    rpc::SERVER_ERROR,
                )
            }
        };
        let mut err = Self::new(status, code, rpc_code, message);
        if let JobsError::QueueFull {
            retry_after_secs, ..
        } = e
        {
            err.retry_after_secs = Some(retry_after_secs);
        }
        if let JobsError::ShuttingDown = e {
            err.retry_after_secs = Some(5);
        }
        err
    }
}

impl From<EnrichError> for ApiError {
    fn from(e: EnrichError) -> Self {
        use StatusCode as S;
        let (status, code, rpc_code) = match &e {
            EnrichError::InvalidRequest(_) => {
                (S::BAD_REQUEST, "invalid_request", rpc::INVALID_PARAMS)
            }
            EnrichError::NotConfigured => (
                S::SERVICE_UNAVAILABLE,
                "enrich_not_configured",
                rpc::UNAVAILABLE,
            ),
            EnrichError::Unreachable { .. } => (
                S::SERVICE_UNAVAILABLE,
                "enrich_unavailable",
                rpc::UNAVAILABLE,
            ),
            EnrichError::Timeout(_) => (S::GATEWAY_TIMEOUT, "enrich_timeout", rpc::UPSTREAM_FAILED),
            EnrichError::Upstream { .. } | EnrichError::BadReply(_) | EnrichError::Local(_) => (
                S::BAD_GATEWAY,
                "enrich_upstream_error",
                rpc::UPSTREAM_FAILED,
            ),
            EnrichError::BadConfig(_) => {
                tracing::error!(error = %e, "enrichment misconfigured");
                (
                    S::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    rpc::SERVER_ERROR,
                )
            }
        };
        Self::new(status, code, rpc_code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
