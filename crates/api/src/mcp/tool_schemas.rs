//! The tools' JSON Schemas and descriptions, as `tools/list` shows them.
//! Limits and model names come from the running configuration, so the
//! schema a client validates against is the one the server enforces.

use serde_json::{json, Map, Value};

use super::McpServer;

pub const GALLERY_MAX_PER_PAGE: u32 = 50;

fn generation_properties(server: &McpServer) -> Map<String, Value> {
    let catalogue = server.service.catalogue();
    let keys: Vec<&str> = catalogue.models().iter().map(|m| m.key.as_str()).collect();
    let limits = server.service.limits();
    let props = json!({
        "prompt": {"type": "string", "minLength": 1, "maxLength": limits.max_prompt_chars,
                   "description": "What the image should show."},
        "negative_prompt": {"type": "string", "description": "What the image should not show (ignored by models without classifier-free guidance)."},
        "model": {"type": "string", "enum": keys, "default": catalogue.default_key(),
                  "description": "Model key from list_models; the server's default when omitted."},
        "width": {"type": "integer", "minimum": limits.min_dimension, "maximum": limits.max_dimension, "description": "Pixels; a multiple of 8 or 16 depending on the model. Model default when omitted."},
        "height": {"type": "integer", "minimum": limits.min_dimension, "maximum": limits.max_dimension, "description": "Pixels; as width."},
        "steps": {"type": "integer", "minimum": 1, "maximum": limits.max_steps, "description": "Denoising steps; model default when omitted."},
        "guidance": {"type": "number", "minimum": 0, "maximum": limits.max_guidance_scale, "description": "Guidance scale; model default when omitted."},
        "seed": {"type": "integer", "minimum": -1, "maximum": 9007199254740991_u64, "description": "Same seed and settings give the same image; random when omitted or -1."},
        "num_images": {"type": "integer", "minimum": 1, "maximum": limits.max_num_images, "default": 1},
        "loras": {"type": "array", "maxItems": cyberimage_core::lora::MAX_LORAS,
                  "items": {"type": "object", "required": ["name"], "additionalProperties": false,
                            "properties": {"name": {"type": "string"},
                                           "weight": {"type": "number", "minimum": -cyberimage_core::lora::MAX_LORA_WEIGHT,
                                                      "maximum": cyberimage_core::lora::MAX_LORA_WEIGHT, "default": 1}}},
                  "description": "LoRAs from the server's loras/ folder (GET /api/loras lists them), for SD 1.x/2.x, SDXL, SD 3 and FLUX models. `<lora:NAME:WEIGHT>` in the prompt works too."},
        "hires": crate::params::hires_schema(limits),
    });
    match props {
        Value::Object(m) => m,
        _ => unreachable!("a JSON object literal"),
    }
}

fn image_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "uri": {"type": "string"},
            "url": {"type": "string"},
            "thumbnail_url": {"type": "string"},
            "model": {"type": "string"},
            "prompt": {"type": "string"},
            "negative_prompt": {"type": ["string", "null"]},
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "steps": {"type": "integer"},
            "guidance_scale": {"type": "number"},
            "seed": {"type": "integer"},
            "created_at": {"type": "string"},
        },
        "required": ["id", "uri", "url", "width", "height", "seed"],
    })
}

fn job_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "job_id": {"type": "string"},
            "status": {"type": "string", "enum": ["pending", "processing", "completed", "failed", "cancelled"]},
            "model": {"type": "string"},
            "prompt": {"type": "string"},
            "num_images": {"type": "integer"},
            "progress": {
                "type": "object",
                "properties": {
                    "stage": {"type": "string"},
                    "step": {"type": "integer"},
                    "total_steps": {"type": "integer"},
                },
            },
            "images": {"type": "array", "items": image_schema()},
            "error": {"type": ["string", "null"]},
        },
        "required": ["job_id", "status"],
    })
}

fn object_schema(properties: Map<String, Value>, required: &[&str]) -> Value {
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

fn job_id_args() -> Value {
    let mut p = Map::new();
    p.insert(
        "job_id".into(),
        json!({"type": "string", "description": "The job_id a generation tool returned."}),
    );
    object_schema(p, &["job_id"])
}

pub fn definitions(server: &McpServer) -> Vec<Value> {
    let mut generate_props = generation_properties(server);
    generate_props.insert(
        "inline_preview".into(),
        json!({"type": "boolean", "default": true,
               "description": "Return the image inline (downscaled when large) as well as a link to it."}),
    );
    let mut edit_props = generate_props.clone();
    edit_props.remove("hires");
    edit_props.insert(
        "image".into(),
        json!({"type": "string", "description": "The picture to start from: a cyberimage://image/… resource URI, a gallery image id (img_…), or a PNG/JPEG as base64."}),
    );
    edit_props.insert(
        "mask".into(),
        json!({"type": "string", "description": "Inpainting: a mask of the picture's size, white where the picture is redrawn and black where it is kept (a resource URI, an image id or base64). Without it the whole picture is reworked."}),
    );
    edit_props.insert(
        "outpaint".into(),
        json!({"type": "object", "additionalProperties": false,
               "properties": {"left": {"type": "integer", "minimum": 0}, "right": {"type": "integer", "minimum": 0},
                              "top": {"type": "integer", "minimum": 0}, "bottom": {"type": "integer", "minimum": 0}},
               "description": "Outpainting: pixels to add on each side; the model draws them (and an 8-pixel seam). Not with mask."}),
    );
    edit_props.insert(
        "mask_blur".into(),
        json!({"type": "integer", "minimum": 0, "maximum": 64, "default": 0,
               "description": "With a mask: its Gaussian blur in pixels, for a soft edge."}),
    );
    edit_props.insert(
        "keep_unmasked".into(),
        json!({"type": "boolean", "default": false,
               "description": "With a mask: keep the picture's pixels exactly where the mask is black."}),
    );
    edit_props.insert(
        "strength".into(),
        json!({"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.8,
               "description": "How much of the schedule runs: low keeps the picture, 1 redraws it."}),
    );
    let mut gallery_props = Map::new();
    gallery_props.insert(
        "query".into(),
        json!({"type": "string", "maxLength": 500, "description": "Words the prompt contains."}),
    );
    gallery_props.insert("model".into(), json!({"type": "string"}));
    gallery_props.insert(
        "favorites".into(),
        json!({"type": "boolean", "default": false, "description": "Only images marked as favourites."}),
    );
    gallery_props.insert(
        "page".into(),
        json!({"type": "integer", "minimum": 1, "default": 1}),
    );
    gallery_props.insert(
        "per_page".into(),
        json!({"type": "integer", "minimum": 1, "maximum": GALLERY_MAX_PER_PAGE, "default": 12}),
    );
    let annotations = |title: &str, read_only: bool, destructive: bool, idempotent: bool| {
        json!({"title": title, "readOnlyHint": read_only, "destructiveHint": destructive,
               "idempotentHint": idempotent, "openWorldHint": false})
    };
    let styles: Vec<&str> = server
        .enricher
        .styles()
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    let mut enhance_props = Map::new();
    enhance_props.insert(
        "prompt".into(),
        json!({"type": "string", "minLength": 1, "description": "The prompt to enrich."}),
    );
    enhance_props.insert(
        "style".into(),
        json!({"type": "string", "enum": styles, "default": cyberimage_enrich::DEFAULT_STYLE}),
    );
    enhance_props.insert(
        "model".into(),
        json!({"type": "string", "description": "The image model the prompt is for: the answer is written in the form its text encoder reads best (short phrases for CLIP models, sentences for FLUX and SD 3)."}),
    );
    vec![
        json!({
            "name": "generate_image",
            "title": "Generate image",
            "description": "Generate images from a text prompt and wait for them. Sends progress notifications per denoising step when the request has a progressToken. Returns the images inline, a resource link per image and the job record.",
            "inputSchema": object_schema(generate_props, &["prompt"]),
            "outputSchema": job_schema(),
            "annotations": annotations("Generate image", false, false, false),
        }),
        json!({
            "name": "edit_image",
            "title": "Edit image",
            "description": "Make new images from an existing picture and a prompt (image-to-image, or inpainting with a mask) and wait for them: `strength` says how much the picture may change (0–1, default 0.8). The size defaults to the picture's. Returns what generate_image returns.",
            "inputSchema": object_schema(edit_props, &["prompt", "image"]),
            "outputSchema": job_schema(),
            "annotations": annotations("Edit image", false, false, false),
        }),
        super::upscale_tool::definition(job_schema()),
        json!({
            "name": "submit_generation",
            "title": "Submit generation",
            "description": "Queue an image generation and return its job_id at once; poll it with get_generation. For clients whose tool calls time out before a generation ends.",
            "inputSchema": object_schema(generation_properties(server), &["prompt"]),
            "outputSchema": job_schema(),
            "annotations": annotations("Submit generation", false, false, false),
        }),
        json!({
            "name": "get_generation",
            "title": "Get generation",
            "description": "Status, progress and, once completed, the images of a generation job.",
            "inputSchema": job_id_args(),
            "outputSchema": job_schema(),
            "annotations": annotations("Get generation", true, false, true),
        }),
        json!({
            "name": "cancel_generation",
            "title": "Cancel generation",
            "description": "Cancel a pending or running generation job.",
            "inputSchema": job_id_args(),
            "outputSchema": job_schema(),
            "annotations": annotations("Cancel generation", false, true, true),
        }),
        json!({
            "name": "list_models",
            "title": "List models",
            "description": "The models this server can generate with, their families and default settings, and which one is the default.",
            "inputSchema": object_schema(Map::new(), &[]),
            "outputSchema": {
                "type": "object",
                "properties": {
                    "default": {"type": "string"},
                    "models": {"type": "array", "items": {"type": "object", "properties": {
                        "key": {"type": "string"}, "source": {"type": "string"},
                        "family": {"type": "string"}, "description": {"type": "string"},
                        "defaults": {"type": "object"}, "is_default": {"type": "boolean"}},
                        "required": ["key", "family"]}},
                },
                "required": ["default", "models"],
            },
            "annotations": annotations("List models", true, false, true),
        }),
        json!({
            "name": "search_gallery",
            "title": "Search gallery",
            "description": "Find generated images, newest first, by words in their prompt and by model.",
            "inputSchema": object_schema(gallery_props, &[]),
            "outputSchema": {
                "type": "object",
                "properties": {
                    "images": {"type": "array", "items": image_schema()},
                    "total": {"type": "integer"}, "page": {"type": "integer"},
                    "per_page": {"type": "integer"},
                },
                "required": ["images", "total", "page", "per_page"],
            },
            "annotations": annotations("Search gallery", true, false, true),
        }),
        json!({
            "name": "enhance_prompt",
            "title": "Enhance prompt",
            "description": "Rewrite a short image prompt into a richer one in a style (cyberpunk by default), using the chat model the server is configured with. Returns the new prompt; pass it to generate_image.",
            "inputSchema": object_schema(enhance_props, &["prompt"]),
            "outputSchema": {
                "type": "object",
                "properties": {
                    "prompt": {"type": "string"}, "original": {"type": "string"},
                    "style": {"type": "string"}, "enriched_by": {"type": "string"},
                },
                "required": ["prompt", "original", "style"],
            },
            // It calls the configured chat endpoint, outside this server.
            "annotations": {"title": "Enhance prompt", "readOnlyHint": true,
                            "destructiveHint": false, "idempotentHint": false,
                            "openWorldHint": true},
        }),
    ]
    .into_iter()
    // Queue administration (the admin scope when keys are set).
    .chain(super::admin_tools::definitions())
    .chain(if server.options.conformance_fixtures {
        let mut fixtures = super::conformance::tool_definitions();
        fixtures.extend(super::conformance_tasks::tool_definitions());
        fixtures.extend(super::conformance_input::tool_definitions());
        fixtures.extend(super::conformance_ask::tool_definitions());
        fixtures
    } else {
        Vec::new()
    })
    .map(|mut tool| {
        // A client that takes tasks gets one from the long tools.
        if super::tasks::TASK_TOOLS.contains(&tool["name"].as_str().unwrap_or_default()) {
            tool["execution"] = json!({"taskSupport": "optional"});
        }
        tool
    })
    .collect()
}

/// The arguments of `tool` that travel in `Mcp-Param-*` headers too
/// (SEP-2243's `x-mcp-header`), as (argument, header name).
pub fn header_params(server: &McpServer, tool: &str) -> Vec<(String, String)> {
    definitions(server)
        .into_iter()
        .find(|t| t["name"] == tool)
        .and_then(|t| {
            let properties = t["inputSchema"]["properties"].as_object()?.clone();
            Some(
                properties
                    .into_iter()
                    .filter_map(|(name, schema)| {
                        Some((name, schema.get("x-mcp-header")?.as_str()?.to_owned()))
                    })
                    .collect(),
            )
        })
        .unwrap_or_default()
}
