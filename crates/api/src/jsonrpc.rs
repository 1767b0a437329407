//! The seed's JSON-RPC 2.0 endpoint, `POST /api/mcp`, with its three
//! methods: `context.image_generation.models`, `.generate` and `.status`.
//!
//! Batches are answered per the JSON-RPC spec: one response per request
//! that has an id, in order; an empty batch is itself invalid; a batch of
//! notifications gets no body at all.
//!
//! Standard MCP shares this endpoint: a message that carries MCP's session
//! or version headers, or names a standard MCP method, goes to the
//! Streamable HTTP transport; the seed's methods are answered here, exactly
//! as before.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use cyberimage_core::JobId;
use serde_json::{json, Value};

use crate::error_table::{rpc, ApiError};
use crate::{body, params, views, AppState};

/// More requests than this in one batch is abuse, not a use case.
const MAX_BATCH: usize = 100;

pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/api/mcp",
        post(endpoint)
            .get(crate::mcp::http::get_stream)
            .delete(crate::mcp::http::end_session),
    )
}

/// Whether a message belongs to standard MCP rather than the seed's methods.
fn is_standard_mcp(headers: &HeaderMap, message: &Value) -> bool {
    if headers.contains_key(crate::mcp::http::SESSION_HEADER)
        || headers.contains_key("mcp-protocol-version")
    {
        return true;
    }
    let Some(method) = message.get("method").and_then(Value::as_str) else {
        return false;
    };
    matches!(method, "initialize" | "ping")
        || [
            "notifications/",
            "tools/",
            "resources/",
            "prompts/",
            "server/",
            "logging/",
            "completion/",
        ]
        .iter()
        .any(|prefix| method.starts_with(prefix))
}

fn error(id: Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "error": {"code": code, "message": message.into()}, "id": id})
}

async fn endpoint(
    State(state): State<AppState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let bytes = match body::bytes(raw) {
        Ok(b) => b,
        Err(e) => {
            let status = e.status;
            return (
                status,
                Json(error(Value::Null, rpc::INVALID_REQUEST, e.message)),
            )
                .into_response();
        }
    };
    let message: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return Json(error(
                Value::Null,
                rpc::PARSE_ERROR,
                format!("parse error: {e}"),
            ))
            .into_response()
        }
    };
    if is_standard_mcp(&headers, &message) {
        return crate::mcp::http::handle_post(&state, &headers, message).await;
    }
    match message {
        Value::Array(batch) if batch.is_empty() => {
            Json(error(Value::Null, rpc::INVALID_REQUEST, "empty batch")).into_response()
        }
        Value::Array(batch) if batch.len() > MAX_BATCH => Json(error(
            Value::Null,
            rpc::INVALID_REQUEST,
            format!(
                "batch of {} requests; at most {MAX_BATCH} are accepted",
                batch.len()
            ),
        ))
        .into_response(),
        Value::Array(batch) => {
            let mut responses = Vec::new();
            for request in batch {
                if let Some(r) = handle(&state, request).await {
                    responses.push(r);
                }
            }
            if responses.is_empty() {
                StatusCode::NO_CONTENT.into_response()
            } else {
                Json(Value::Array(responses)).into_response()
            }
        }
        single => match handle(&state, single).await {
            Some(r) => Json(r).into_response(),
            None => StatusCode::NO_CONTENT.into_response(),
        },
    }
}

/// Answers one request; `None` for a notification (no `id`).
async fn handle(state: &AppState, request: Value) -> Option<Value> {
    let Value::Object(obj) = request else {
        return Some(error(
            Value::Null,
            rpc::INVALID_REQUEST,
            "a request must be an object",
        ));
    };
    let id = match obj.get("id") {
        None => None,
        Some(v @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(v.clone()),
        Some(_) => {
            return Some(error(
                Value::Null,
                rpc::INVALID_REQUEST,
                "id must be a string, number or null",
            ))
        }
    };
    if obj.get("jsonrpc") != Some(&json!("2.0")) {
        return Some(error(
            id.unwrap_or(Value::Null),
            rpc::INVALID_REQUEST,
            "jsonrpc must be \"2.0\"",
        ));
    }
    let Some(Value::String(method)) = obj.get("method") else {
        return Some(error(
            id.unwrap_or(Value::Null),
            rpc::INVALID_REQUEST,
            "method must be a string",
        ));
    };
    let params = obj.get("params").cloned().unwrap_or(json!({}));
    if !params.is_object() && !params.is_array() {
        return Some(error(
            id.unwrap_or(Value::Null),
            rpc::INVALID_REQUEST,
            "params must be an object or array",
        ));
    }
    let outcome = dispatch(state, method, &params).await;
    let id = id?;
    Some(match outcome {
        Ok(result) => json!({"jsonrpc": "2.0", "result": result, "id": id}),
        Err(e) => error(id, e.rpc_code, e.message),
    })
}

fn invalid_params(message: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_params",
        rpc::INVALID_PARAMS,
        message,
    )
}

async fn dispatch(state: &AppState, method: &str, params: &Value) -> Result<Value, ApiError> {
    match method {
        "context.image_generation.models" => Ok(views::models(state.service.catalogue(), None)),
        "context.image_generation.generate" => {
            let request = params::spec_request(params).map_err(invalid_params)?;
            let job = state.service.submit(request).await?;
            Ok(views::job_submitted(&job))
        }
        "context.image_generation.status" => {
            let raw = match params.get("job_id") {
                Some(Value::String(s)) => s,
                Some(_) => return Err(invalid_params("job_id must be a string")),
                None => return Err(invalid_params("job_id is required")),
            };
            // A malformed id cannot name a job: same answer as an unknown one.
            let id = JobId::parse(raw)
                .map_err(|_| ApiError::from(cyberimage_jobs::JobsError::JobNotFound))?;
            let job = state.service.job(id).await?;
            Ok(views::job_status(&job))
        }
        other => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "method_not_found",
            rpc::METHOD_NOT_FOUND,
            format!("method not found: {other}"),
        )),
    }
}
