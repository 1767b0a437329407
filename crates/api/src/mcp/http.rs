//! The Streamable HTTP transport at `/mcp` (and at `/api/mcp` for
//! standard methods; see `jsonrpc.rs`).
//!
//! Handshake era: `initialize` opens a session (`Mcp-Session-Id`), later
//! requests must name it, `DELETE` ends it, `notifications/cancelled`
//! cancels a request in flight; dropping a connection does not cancel
//! (the job then simply finishes into the gallery). Modern era (2026-07-28):
//! no session; each request carries its envelope and the `Mcp-Method` /
//! `Mcp-Name` / `MCP-Protocol-Version` headers, and closing the response
//! stream cancels the request. Tool calls answer with an SSE stream when
//! the client accepts one, so progress notifications can precede the
//! result; everything else answers with plain JSON.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::protocol::{self, Era, Incoming};
use super::{dispatch, CallContext, McpError, Outcome};
use crate::error_table::rpc;
use crate::{body, AppState};

pub const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
const METHOD_HEADER: &str = "mcp-method";
const NAME_HEADER: &str = "mcp-name";
/// How long a streamed call's answer may take and still go back as plain
/// JSON (see `request`).
const ANSWER_AT_ONCE: Duration = Duration::from_millis(500);

pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/mcp",
        post(post_endpoint).get(get_stream).delete(end_session),
    )
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn accepts(headers: &HeaderMap, mime: &str) -> bool {
    let Some(accept) = header_str(headers, header::ACCEPT.as_str()) else {
        return false;
    };
    accept.split(',').any(|part| {
        let m = part.split(';').next().unwrap_or("").trim();
        m == mime || m == "*/*"
    })
}

/// HTTP status of a JSON-RPC error: the modern era maps codes to statuses,
/// the handshake era answers every JSON-RPC error with 200.
fn status_for(code: i64, modern: bool) -> StatusCode {
    if !modern {
        return StatusCode::OK;
    }
    match code {
        rpc::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        rpc::PARSE_ERROR
        | rpc::INVALID_REQUEST
        | rpc::INVALID_PARAMS
        | protocol::HEADER_MISMATCH
        | protocol::UNSUPPORTED_PROTOCOL_VERSION
        | super::tasks::MISSING_CLIENT_CAPABILITY => StatusCode::BAD_REQUEST,
        _ => StatusCode::OK,
    }
}

fn json_error(status: StatusCode, id: &Value, err: &McpError) -> Response {
    (status, Json(protocol::error_response(id, err))).into_response()
}

fn base_url(headers: &HeaderMap) -> Option<String> {
    let host = header_str(headers, header::HOST.as_str())?;
    let scheme = match header_str(headers, "x-forwarded-proto") {
        Some("https") => "https",
        _ => "http",
    };
    Some(format!("{scheme}://{host}"))
}

/// Decodes the `=?base64?…?=` form clients use for header values that are
/// not plain printable ASCII.
fn decode_header_value(raw: &str) -> Option<String> {
    match raw
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        Some(payload) => base64::engine::general_purpose::STANDARD
            .decode(payload)
            .ok()
            .and_then(|b| String::from_utf8(b).ok()),
        None => Some(raw.to_owned()),
    }
}

/// The modern era's rule: the routing headers must agree with the body, so
/// intermediaries can route on them without reading it.
fn check_routing_headers(
    headers: &HeaderMap,
    version: &str,
    method: &str,
    params: &Value,
) -> Result<(), McpError> {
    let mismatch = |what: &str| {
        McpError::new(
            protocol::HEADER_MISMATCH,
            format!("the {what} header does not match the request body"),
        )
    };
    if header_str(headers, VERSION_HEADER) != Some(version) {
        return Err(mismatch("MCP-Protocol-Version"));
    }
    if header_str(headers, METHOD_HEADER) != Some(method) {
        return Err(mismatch("Mcp-Method"));
    }
    let name_key = match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        "tasks/get" | "tasks/update" | "tasks/cancel" => Some("taskId"),
        _ => None,
    };
    if let Some(body_name) = name_key.and_then(|k| params.get(k)).and_then(Value::as_str) {
        let header_name = header_str(headers, NAME_HEADER).and_then(decode_header_value);
        if header_name.as_deref() != Some(body_name) {
            return Err(mismatch("Mcp-Name"));
        }
    }
    Ok(())
}

/// SEP-2243's custom headers: a tool argument whose schema names an
/// `x-mcp-header` travels also as `Mcp-Param-{name}` (plain, or
/// `=?base64?…?=`), and must equal the body's; a value in the body with no
/// header, or a header that does not decode, is refused.
fn check_param_headers(
    headers: &HeaderMap,
    mapped: &[(String, String)],
    params: &Value,
) -> Result<(), McpError> {
    for (argument, suffix) in mapped {
        let body = params
            .get("arguments")
            .and_then(|a| a.get(argument))
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        let header = header_str(
            headers,
            &format!("mcp-param-{}", suffix.to_ascii_lowercase()),
        );
        let agrees = match (&body, header) {
            (None, None) => true,
            (Some(body), Some(raw)) => decode_header_value(raw.trim()).as_ref() == Some(body),
            _ => false,
        };
        if !agrees {
            return Err(McpError::new(
                protocol::HEADER_MISMATCH,
                format!("the Mcp-Param-{suffix} header does not match the argument {argument:?}"),
            ));
        }
    }
    Ok(())
}

async fn post_endpoint(
    State(state): State<AppState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let bytes = match body::bytes(raw) {
        Ok(b) => b,
        Err(e) => {
            return json_error(
                e.status,
                &Value::Null,
                &McpError::invalid_request(e.message),
            )
        }
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(message) => handle_post(&state, &headers, message).await,
        Err(e) => json_error(
            StatusCode::BAD_REQUEST,
            &Value::Null,
            &McpError::new(rpc::PARSE_ERROR, format!("parse error: {e}")),
        ),
    }
}

/// Answers one POSTed message.
pub async fn handle_post(state: &AppState, headers: &HeaderMap, message: Value) -> Response {
    if !accepts(headers, "application/json") && !accepts(headers, "text/event-stream") {
        return json_error(
            StatusCode::NOT_ACCEPTABLE,
            &Value::Null,
            &McpError::invalid_request(
                "the Accept header must include application/json and text/event-stream",
            ),
        );
    }
    if message.is_array() {
        return json_error(
            StatusCode::BAD_REQUEST,
            &Value::Null,
            &McpError::invalid_request("batches are not supported: send one message per POST"),
        );
    }
    match protocol::classify(message) {
        Err((id, err)) => json_error(StatusCode::BAD_REQUEST, &id, &err),
        Ok(Incoming::Response { id, message }) => {
            state.mcp.client_requests.answer(&id, message);
            StatusCode::ACCEPTED.into_response()
        }
        Ok(Incoming::Notification { method, params }) => {
            if method == "notifications/cancelled" {
                if let (Some(session), Some(request_id)) =
                    (header_str(headers, SESSION_HEADER), params.get("requestId"))
                {
                    state.mcp.sessions.cancel(session, request_id);
                }
            }
            StatusCode::ACCEPTED.into_response()
        }
        Ok(Incoming::Request { id, method, params }) => {
            request(state, headers, id, method, params).await
        }
    }
}

async fn request(
    state: &AppState,
    headers: &HeaderMap,
    id: Value,
    method: String,
    params: Value,
) -> Response {
    let header_version = header_str(headers, VERSION_HEADER);
    let modern = header_version.is_some_and(protocol::is_modern_version)
        || protocol::envelope_version(&params).is_some();
    let (era, session) = if modern {
        // The rungs in order: envelope shape, headers against the body, and
        // only then whether we serve the version.
        let checked = protocol::envelope_shape(&params).and_then(|v| {
            check_routing_headers(headers, &v, &method, &params)?;
            if method == "tools/call" {
                let tool = params
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let mapped = super::tool_schemas::header_params(&state.mcp, tool);
                check_param_headers(headers, &mapped, &params)?;
            }
            protocol::check_supported(&v)?;
            Ok(v)
        });
        match checked {
            Ok(version) => (Era::Modern(version), None),
            Err(e) => return json_error(status_for(e.code, true), &id, &e),
        }
    } else if method == "initialize" {
        let result =
            dispatch::initialize_result(params.get("protocolVersion").and_then(Value::as_str));
        let version = result["protocolVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let capabilities = params.get("capabilities").cloned().unwrap_or(Value::Null);
        let session = state.mcp.sessions.create(&version, capabilities);
        let era = Era::Handshake(version);
        let body = protocol::response(&id, protocol::finish_result(&era, &method, result));
        let mut resp = Json(body).into_response();
        if let Ok(v) = HeaderValue::from_str(&session) {
            resp.headers_mut().insert(SESSION_HEADER, v);
        }
        return resp;
    } else {
        let Some(session) = header_str(headers, SESSION_HEADER) else {
            return json_error(
                StatusCode::BAD_REQUEST,
                &id,
                &McpError::invalid_request("missing Mcp-Session-Id header: send initialize first"),
            );
        };
        let Some(version) = state.mcp.sessions.version(session) else {
            return json_error(
                StatusCode::NOT_FOUND,
                &id,
                &McpError::invalid_request("unknown or expired session: send initialize again"),
            );
        };
        if let Some(v) = header_version.filter(|v| !protocol::is_handshake_version(v)) {
            return json_error(
                StatusCode::BAD_REQUEST,
                &id,
                &protocol::unsupported_version(v),
            );
        }
        (Era::Handshake(version), Some(session.to_owned()))
    };

    let mut ctx = CallContext::new(era, &params);
    if let Some(s) = &session {
        ctx.client_capabilities = state.mcp.sessions.capabilities(s);
    }
    ctx.session = session.clone();
    ctx.base_url = base_url(headers);
    ctx.scopes = state.keys.scopes_for(headers);
    let token = ctx.cancel.clone();
    if let Some(s) = &session {
        state.mcp.sessions.track(s, &id, token.clone());
    }
    // In the modern era a closed response stream is the cancel signal.
    let cancel_on_drop = modern.then(|| token.clone().drop_guard());

    if method == "tools/call" && accepts(headers, "text/event-stream") {
        let (tx, rx) = mpsc::unbounded_channel();
        ctx.notify = Some(tx.clone());
        let mcp = state.mcp.clone();
        tokio::spawn(async move {
            let outcome = mcp.handle(&ctx, &method, &params).await;
            if let Some(s) = &session {
                mcp.sessions.untrack(s, &id);
            }
            let message = match outcome {
                Ok(result) => protocol::response(&id, result),
                Err(Outcome::Error(e)) => protocol::error_response(&id, &e),
                Err(Outcome::Cancelled) => return,
            };
            let _ = tx.send(message);
        });
        let mut rx = rx;
        // An answer that comes at once (before any notification, within
        // the first moments) goes back as plain JSON, so an error gets its
        // HTTP status (a capability the client lacks: 400). Anything
        // longer is streamed from the start, keep-alives included, so no
        // proxy waits minutes for the response's headers.
        let first = match tokio::time::timeout(ANSWER_AT_ONCE, rx.recv()).await {
            Ok(Some(message)) => Some(message),
            Ok(None) => return StatusCode::ACCEPTED.into_response(),
            Err(_) => None,
        };
        if let Some(answer) = first.as_ref().filter(|m| m.get("method").is_none()) {
            drop(cancel_on_drop.map(|g| g.disarm()));
            let status = answer
                .get("error")
                .and_then(|e| e.get("code"))
                .and_then(Value::as_i64)
                .map_or(StatusCode::OK, |code| status_for(code, modern));
            return (status, Json(answer.clone())).into_response();
        }
        let stream = futures::stream::iter(first)
            .chain(UnboundedReceiverStream::new(rx))
            .map(move |message| {
                let _held_until_the_stream_ends = &cancel_on_drop;
                Ok::<_, Infallible>(Event::default().event("message").data(message.to_string()))
            });
        return Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response();
    }

    let outcome = state.mcp.handle(&ctx, &method, &params).await;
    drop(cancel_on_drop.map(|g| g.disarm()));
    if let Some(s) = &session {
        state.mcp.sessions.untrack(s, &id);
    }
    match outcome {
        Ok(result) => Json(protocol::response(&id, result)).into_response(),
        Err(Outcome::Error(e)) => json_error(status_for(e.code, modern), &id, &e),
        Err(Outcome::Cancelled) => StatusCode::ACCEPTED.into_response(),
    }
}

/// The handshake era's session stream (`GET /mcp`): the notifications of
/// the session's resource subscriptions (`subscriptions.rs`). A newer
/// stream replaces an older one. 2026-07-28 has no such stream.
pub async fn get_stream(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !accepts(&headers, "text/event-stream") {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "POST, DELETE")],
        )
            .into_response();
    }
    let Some(session) = header_str(&headers, SESSION_HEADER) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            &Value::Null,
            &McpError::invalid_request("missing Mcp-Session-Id header: send initialize first"),
        );
    };
    if state.mcp.sessions.version(session).is_none() {
        return json_error(
            StatusCode::NOT_FOUND,
            &Value::Null,
            &McpError::invalid_request("unknown or expired session: send initialize again"),
        );
    }
    let (tx, rx) = mpsc::unbounded_channel();
    state.mcp.subscriptions.set_stream(session, tx);
    super::subscriptions::start_forwarding(&state.mcp);
    let stream = UnboundedReceiverStream::new(rx).map(|message: Value| {
        Ok::<_, Infallible>(Event::default().event("message").data(message.to_string()))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

pub async fn end_session(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match header_str(&headers, SESSION_HEADER) {
        None => json_error(
            StatusCode::BAD_REQUEST,
            &Value::Null,
            &McpError::invalid_request("missing Mcp-Session-Id header"),
        ),
        Some(s) if state.mcp.sessions.remove(s) => {
            state.mcp.subscriptions.remove(s);
            StatusCode::NO_CONTENT.into_response()
        }
        Some(_) => json_error(
            StatusCode::NOT_FOUND,
            &Value::Null,
            &McpError::invalid_request("unknown or expired session"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_decode_from_the_base64_form() {
        assert_eq!(
            decode_header_value("generate_image").unwrap(),
            "generate_image"
        );
        assert_eq!(decode_header_value("=?base64?w6lsw6k=?=").unwrap(), "élé");
        assert!(decode_header_value("=?base64?!!!?=").is_none());
    }

    #[test]
    fn modern_errors_map_to_statuses_and_old_ones_do_not() {
        assert_eq!(
            status_for(rpc::METHOD_NOT_FOUND, true),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status_for(protocol::HEADER_MISMATCH, true),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(status_for(rpc::SERVER_ERROR, true), StatusCode::OK);
        assert_eq!(status_for(rpc::METHOD_NOT_FOUND, false), StatusCode::OK);
    }
}
