//! Generated images as MCP resources (`cyberimage://image/{id}`, newest
//! first, paginated), and the prompt templates.

use base64::Engine as _;
use cyberimage_core::ImageId;
use cyberimage_jobs::{GalleryQuery, ImageVariant, JobsError};
use serde_json::{json, Value};

use super::tools::image_uri;
use super::{conformance, CallContext, McpError, McpServer, Outcome};
use crate::error_table::rpc;

const PAGE_SIZE: u32 = 50;
const URI_PREFIX: &str = "cyberimage://image/";

fn cursor_page(params: &Value) -> Result<u32, McpError> {
    match params.get("cursor") {
        None | Some(Value::Null) => Ok(1),
        Some(Value::String(c)) => c
            .strip_prefix("page-")
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| (2..=1_000_000).contains(n))
            .ok_or_else(|| McpError::invalid_params(format!("invalid cursor {c:?}"))),
        Some(_) => Err(McpError::invalid_params("cursor must be a string")),
    }
}

pub async fn list(server: &McpServer, params: &Value) -> Result<Value, Outcome> {
    let page = cursor_page(params)?;
    let query = GalleryQuery {
        page,
        per_page: PAGE_SIZE,
        model: None,
        search: None,
        keywords: Vec::new(),
        favorites_only: false,
    };
    let result = server
        .service
        .gallery(&query)
        .await
        .map_err(|e| McpError::from(crate::ApiError::from(e)))?;
    let resources: Vec<Value> = result
        .images
        .iter()
        .map(|img| {
            json!({
                "uri": image_uri(&img.id),
                "name": img.id.to_string(),
                "title": img.prompt.chars().take(80).collect::<String>(),
                "description": format!("{}×{} PNG from {}, seed {}: {}",
                    img.width, img.height, img.model, img.seed, img.prompt),
                "mimeType": "image/png",
            })
        })
        .collect();
    let mut resources = resources;
    if server.options.conformance_fixtures && page == 1 {
        resources.splice(0..0, conformance::resources());
    }
    let mut v = json!({"resources": resources});
    if u64::from(page) * u64::from(PAGE_SIZE) < result.total {
        v["nextCursor"] = json!(format!("page-{}", page + 1));
    }
    Ok(v)
}

pub fn templates(server: &McpServer) -> Value {
    let mut v = json!({"resourceTemplates": [
        {
            "uriTemplate": "cyberimage://image/{id}",
            "name": "image",
            "title": "Generated image",
            "description": "A generated image as PNG, with its generation parameters in the PNG text chunks.",
            "mimeType": "image/png",
        },
        {
            "uriTemplate": "cyberimage://image/{id}/thumbnail",
            "name": "thumbnail",
            "title": "Image thumbnail",
            "description": "A generated image downscaled to at most 384 pixels a side.",
            "mimeType": "image/png",
        },
    ]});
    if server.options.conformance_fixtures {
        let list = v["resourceTemplates"].as_array_mut().expect("a list");
        list.extend(conformance::resource_templates());
    }
    v
}

fn not_found(uri: &str) -> Outcome {
    Outcome::Error(McpError {
        code: rpc::MCP_RESOURCE_NOT_FOUND,
        message: format!("resource not found: {uri}"),
        data: Some(Box::new(json!({"uri": uri}))),
    })
}

pub async fn read(server: &McpServer, params: &Value) -> Result<Value, Outcome> {
    let Some(uri) = params.get("uri").and_then(Value::as_str) else {
        return Err(McpError::invalid_params("resources/read needs a uri").into());
    };
    if server.options.conformance_fixtures {
        if let Some(found) = conformance::read_resource(uri) {
            return Ok(found);
        }
    }
    let Some(rest) = uri.strip_prefix(URI_PREFIX) else {
        return Err(not_found(uri));
    };
    let (raw_id, variant) = match rest.strip_suffix("/thumbnail") {
        Some(id) => (id, ImageVariant::Thumbnail),
        None => (rest, ImageVariant::Full),
    };
    // Only well-formed ids reach the store, so a uri cannot name a path.
    let Ok(id) = ImageId::parse(raw_id) else {
        return Err(not_found(uri));
    };
    match server.service.image_bytes(id, variant).await {
        Ok(png) => Ok(json!({"contents": [{
            "uri": uri,
            "mimeType": "image/png",
            "blob": base64::engine::general_purpose::STANDARD.encode(png),
        }]})),
        Err(JobsError::ImageNotFound) => Err(not_found(uri)),
        Err(e) => Err(McpError::from(crate::ApiError::from(e)).into()),
    }
}

pub fn prompts(server: &McpServer) -> Value {
    let mut v = json!({"prompts": [{
        "name": "make_image",
        "title": "Make an image",
        "description": "Ask the assistant to generate an image of a subject, optionally in a style.",
        "arguments": [
            {"name": "subject", "description": "What the image should show.", "required": true},
            {"name": "style", "description": "A visual style, e.g. 'watercolour' or 'cyberpunk neon'.", "required": false},
            {"name": "model", "description": "The model to use (completion/complete lists them).", "required": false},
        ],
    }]});
    if server.options.conformance_fixtures {
        let list = v["prompts"].as_array_mut().expect("a list");
        list.extend(conformance::prompts());
        list.extend(super::conformance_input::prompts());
    }
    v
}

pub fn get_prompt(server: &McpServer, params: &Value) -> Result<Value, Outcome> {
    if server.options.conformance_fixtures {
        let name = params.get("name").and_then(Value::as_str).unwrap_or("");
        if let Some(found) = conformance::get_prompt(name, params.get("arguments")) {
            return found;
        }
        if let Some(found) = super::conformance_input::get_prompt(name, params) {
            return found;
        }
    }
    match params.get("name").and_then(Value::as_str) {
        Some("make_image") => {}
        Some(other) => {
            return Err(McpError::invalid_params(format!("unknown prompt: {other}")).into())
        }
        None => return Err(McpError::invalid_params("prompts/get needs a name").into()),
    }
    let args = params.get("arguments");
    let arg = |name: &str| {
        args.and_then(|a| a.get(name))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let Some(subject) = arg("subject") else {
        return Err(McpError::invalid_params("the make_image prompt needs a subject").into());
    };
    let style = arg("style")
        .map(|s| format!(" in the style of {s}"))
        .unwrap_or_default();
    let model = arg("model")
        .map(|m| format!(" with the model {m}"))
        .unwrap_or_default();
    Ok(json!({
        "description": "Generate an image with CyberImage",
        "messages": [{"role": "user", "content": {"type": "text", "text": format!(
            "Use the generate_image tool{model} to make an image of {subject}{style}. \
             Write a detailed prompt (subject, composition, lighting, style) and show me the result."
        )}}],
    }))
}

/// `resources/subscribe` (handshake era): an image that exists (or, with
/// the conformance fixtures, one of theirs), watched for its session.
pub async fn subscribe(
    server: &McpServer,
    ctx: &CallContext,
    params: &Value,
) -> Result<Value, Outcome> {
    let uri = subscription_uri(params)?;
    let fixture = server.options.conformance_fixtures && uri.starts_with("test://");
    if !fixture {
        let raw_id = uri
            .strip_prefix(URI_PREFIX)
            .map(|rest| rest.strip_suffix("/thumbnail").unwrap_or(rest))
            .ok_or_else(|| not_found(uri))?;
        let id = ImageId::parse(raw_id).map_err(|_| not_found(uri))?;
        match server.service.image(id).await {
            Ok(_) => {}
            Err(JobsError::ImageNotFound) => return Err(not_found(uri)),
            Err(e) => return Err(McpError::from(crate::ApiError::from(e)).into()),
        }
    }
    let session = ctx.session.as_deref().ok_or_else(|| {
        McpError::invalid_request("resources/subscribe needs a session: send initialize first")
    })?;
    server.subscriptions.subscribe(session, uri);
    // On stdio the request's own channel is the connection's stdout: the
    // notifications go there. (Over HTTP the session's GET stream is.)
    if let Some(stdout) = &ctx.notify {
        server.subscriptions.set_stream(session, stdout.clone());
    }
    Ok(json!({}))
}

pub fn unsubscribe(
    server: &McpServer,
    ctx: &CallContext,
    params: &Value,
) -> Result<Value, Outcome> {
    let uri = subscription_uri(params)?;
    if let Some(session) = &ctx.session {
        server.subscriptions.unsubscribe(session, uri);
    }
    Ok(json!({}))
}

fn subscription_uri(params: &Value) -> Result<&str, McpError> {
    params
        .get("uri")
        .and_then(Value::as_str)
        .ok_or_else(|| McpError::invalid_params("a subscription needs a uri"))
}
