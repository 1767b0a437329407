//! Reading JSON request bodies so that every failure (too large, not JSON,
//! wrong content) becomes our JSON error shape instead of axum's plain text.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde_json::{Map, Value};

use crate::error_table::{rpc, ApiError};

/// Whether the body stopped arriving before the request body timeout.
fn timed_out(rejection: &BytesRejection) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> =
        std::error::Error::source(rejection);
    while let Some(e) = source {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = e.source();
    }
    false
}

pub fn bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if timed_out(&rejection) {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                rpc::INVALID_REQUEST,
                "the request body did not arrive in time",
            )
        } else if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                rpc::INVALID_REQUEST,
                "request body is larger than the server accepts",
            )
        } else {
            ApiError::bad_request(format!("cannot read request body: {rejection}"))
        }
    })
}

/// Refuses a body naming fields a route does not take, naming them and
/// the ones it does (a typo is an error, not a silent default).
pub fn check_fields(map: &Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    let unknown: Vec<&str> = map
        .keys()
        .map(String::as_str)
        .filter(|k| !known.contains(k))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "unknown field(s): {}; accepted: {}",
        unknown.join(", "),
        known.join(", ")
    )))
}

pub fn json(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = bytes(body)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            rpc::PARSE_ERROR,
            format!("request body is not valid JSON: {e}"),
        )
    })
}
