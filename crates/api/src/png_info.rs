//! `POST /api/png-info`: the generation parameters inside a PNG, ours or
//! A1111's, for "what made this image?" and remixing. The body is the PNG
//! itself (any content type); images can exceed the general body limit.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::error_table::{rpc, ApiError};
use crate::{body, AppState};

/// A 2048² PNG with text chunks is well under this.
const MAX_PNG_BYTES: usize = 32 * 1024 * 1024;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route(
        "/api/png-info",
        post(png_info).layer(DefaultBodyLimit::max(MAX_PNG_BYTES)),
    )
}

/// The reader's answer: the parsed parameters (`source` is `cyberimage`,
/// `a1111`, or null when the PNG carries none) and every text chunk as is.
pub fn describe(png: &[u8]) -> Result<Value, ApiError> {
    let (info, chunks) = cyberimage_jobs::png_info_from_bytes(png).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_png",
            rpc::INVALID_PARAMS,
            format!("the body is not a readable PNG: {e}"),
        )
    })?;
    let text: Map<String, Value> = chunks
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let mut out = match info {
        Some(info) => serde_json::to_value(info).expect("serializable"),
        None => json!({"source": null}),
    };
    out["text_chunks"] = Value::Object(text);
    Ok(out)
}

async fn png_info(raw: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let bytes = body::bytes(raw)?;
    describe(&bytes).map(Json)
}
