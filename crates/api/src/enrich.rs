//! Prompt enrichment over REST: `POST /api/enrich {prompt, style, model}`
//! (the CyberImage app's route and answer, plus our names for the same
//! values) and `GET /api/enrich/styles` (the style menu and whether a chat
//! endpoint is configured). The MCP tool `enhance_prompt` shares
//! [`enrich`]. The work itself is `cyberimage-enrich`'s; this only reads
//! the request, picks the prompt form the target model reads, and maps
//! errors through the one table.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use cyberimage_core::{Catalogue, ValidationError};
use cyberimage_enrich::{Enriched, Enricher, PromptForm};
use cyberimage_jobs::JobsError;
use serde_json::{json, Value};

use crate::error_table::ApiError;
use crate::{body, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/enrich", post(enrich_route))
        .route("/api/enrich/styles", get(styles))
}

const FIELDS: [&str; 3] = ["prompt", "style", "model"];

/// Enriches `prompt`; with `model` (a catalogue key) the answer is written
/// in the form that model's text encoder reads best.
pub(crate) async fn enrich(
    enricher: &Enricher,
    catalogue: &Catalogue,
    prompt: &str,
    style: Option<&str>,
    model: Option<&str>,
) -> Result<Enriched, ApiError> {
    let form = match model {
        None => None,
        Some(key) => {
            let entry = catalogue.get(key).ok_or_else(|| {
                JobsError::Invalid(ValidationError::unknown_model(catalogue, key))
            })?;
            Some(if entry.family.reads_long_prompts() {
                PromptForm::Sentences
            } else {
                PromptForm::Phrases
            })
        }
    };
    Ok(enricher.enrich(prompt, style, form).await?)
}

fn optional_text<'a>(value: &'a Value, field: &str) -> Result<Option<&'a str>, ApiError> {
    match value.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(ApiError::bad_request(format!("{field} must be a string"))),
    }
}

async fn enrich_route(
    State(state): State<AppState>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let value = body::json(raw)?;
    let Some(object) = value.as_object() else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    body::check_fields(object, &FIELDS)?;
    let prompt = match value.get("prompt") {
        Some(Value::String(p)) => p.as_str(),
        Some(_) => return Err(ApiError::bad_request("prompt must be a string")),
        None => return Err(ApiError::bad_request("no prompt provided")),
    };
    let out = enrich(
        &state.enricher,
        state.service.catalogue(),
        prompt,
        optional_text(&value, "style")?,
        optional_text(&value, "model")?,
    )
    .await?;
    Ok(Json(json!({
        "prompt": out.prompt,
        "original": out.original,
        "style": out.style,
        // The CyberImage app's names for the same two prompts.
        "enriched_prompt": out.prompt,
        "original_prompt": out.original,
        "enriched_by": out.model,
    })))
}

async fn styles(State(state): State<AppState>) -> Json<Value> {
    let status = state.enricher.status();
    Json(json!({
        "default": cyberimage_enrich::DEFAULT_STYLE,
        "styles": state.enricher.styles().iter().map(|s| json!({
            "name": s.name,
            "description": s.description,
        })).collect::<Vec<_>>(),
        "configured": status.configured,
        "model": status.model,
        "reason": status.reason,
    }))
}
