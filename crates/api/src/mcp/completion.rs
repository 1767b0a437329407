//! `completion/complete`: suggestions for the arguments of our prompt
//! (`make_image`: its `model` from the catalogue, models that can run here
//! first; its `style` from the enrichment styles) and of the image
//! resource template (`id`: the newest image ids with that prefix).

use serde_json::{json, Value};

use super::{McpError, McpServer, Outcome};

/// The most values one answer carries (the specification's limit).
const MAX_VALUES: usize = 100;

pub async fn complete(server: &McpServer, params: &Value) -> Result<Value, Outcome> {
    let reference = params
        .get("ref")
        .ok_or_else(|| McpError::invalid_params("completion/complete needs a ref"))?;
    let argument = params
        .get("argument")
        .ok_or_else(|| McpError::invalid_params("completion/complete needs an argument"))?;
    let name = argument.get("name").and_then(Value::as_str).unwrap_or("");
    let typed = argument
        .get("value")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_lowercase();
    let candidates: Vec<String> = match (
        reference.get("type").and_then(Value::as_str),
        reference.get("name").and_then(Value::as_str),
        reference.get("uri").and_then(Value::as_str),
    ) {
        (Some("ref/prompt"), Some("make_image"), _) => match name {
            "model" => models(server).await,
            "style" => server
                .enricher
                .styles()
                .iter()
                .map(|s| s.name.clone())
                .collect(),
            _ => Vec::new(),
        },
        (Some("ref/prompt"), Some(other), _) => {
            match super::conformance::complete(other, name)
                .filter(|_| server.options.conformance_fixtures)
            {
                Some(values) => values,
                None => {
                    return Err(McpError::invalid_params(format!("unknown prompt: {other}")).into())
                }
            }
        }
        (Some("ref/resource"), _, Some(uri)) if uri.starts_with("cyberimage://image/{id}") => {
            if name == "id" {
                image_ids(server).await?
            } else {
                Vec::new()
            }
        }
        (Some("ref/resource"), _, Some(uri)) => {
            return Err(McpError::invalid_params(format!("no resource template {uri:?}")).into())
        }
        _ => {
            return Err(McpError::invalid_params("ref must be a ref/prompt or ref/resource").into())
        }
    };
    let matching: Vec<String> = candidates
        .into_iter()
        .filter(|c| c.to_lowercase().starts_with(&typed))
        .collect();
    let total = matching.len();
    let values: Vec<String> = matching.into_iter().take(MAX_VALUES).collect();
    Ok(json!({"completion": {
        "values": values,
        "total": total,
        "hasMore": total > MAX_VALUES,
    }}))
}

/// Model keys, those that can run here first (the default first of all).
async fn models(server: &McpServer) -> Vec<String> {
    let catalogue = server.service.catalogue();
    let availability = server.service.model_availability().await;
    let runs = |key: &str| {
        crate::views::availability_of(&availability, key)
            .map(|state| state.is_ok())
            .unwrap_or(true)
    };
    let mut keys: Vec<(u8, String)> = catalogue
        .models()
        .iter()
        .map(|m| {
            let rank = if m.key == catalogue.default_key() {
                0
            } else if runs(&m.key) {
                1
            } else {
                2
            };
            (rank, m.key.clone())
        })
        .collect();
    keys.sort_by_key(|(rank, _)| *rank);
    keys.into_iter().map(|(_, key)| key).collect()
}

/// The newest images' ids.
async fn image_ids(server: &McpServer) -> Result<Vec<String>, Outcome> {
    let query = cyberimage_jobs::GalleryQuery {
        page: 1,
        per_page: MAX_VALUES as u32,
        ..Default::default()
    };
    let page = server
        .service
        .gallery(&query)
        .await
        .map_err(|e| Outcome::from(McpError::from(crate::error_table::ApiError::from(e))))?;
    Ok(page.images.iter().map(|i| i.id.to_string()).collect())
}
