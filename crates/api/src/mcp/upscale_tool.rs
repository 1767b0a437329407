//! The `upscale_image` tool: a picture (a `cyberimage://image/…` resource,
//! a gallery image id or base64) made larger by an upscaler, waited for
//! with a progress notification per tile, answered like `generate_image`.
//! The same request decoder as `POST /api/upscale`.

use serde_json::{json, Map, Value};

use super::tools::{bool_arg, check_known, wait_for, ToolResult};
use super::{CallContext, McpServer, Outcome};
use crate::upscale::{upscale_submit, FIELDS};

pub(super) fn definition(job_schema: Value) -> Value {
    json!({
        "name": "upscale_image",
        "title": "Upscale image",
        "description": "Make a picture larger with a super-resolution network (ESRGAN, Real-ESRGAN, RDN) and wait for it. `upscaler` names one from the server's upscalers/ folder or a built-in one (default: the built-in upscalerjs-esrgan-medium-x4); `scale` the output factor (default: the network's own; other factors are resized from its result). Returns the new image inline, a resource link and the job record.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "image": {"type": "string", "description": "The picture: a cyberimage://image/… resource URI, a gallery image id (img_…), or a PNG/JPEG as base64."},
                "upscaler": {"type": "string", "description": "An upscaler's name (GET /api/upscalers lists them)."},
                "scale": {"type": "number", "minimum": 1, "maximum": 8},
                "tile": {"type": "integer", "minimum": 32, "maximum": 1024, "description": "Input pixels per tile side (default 192): smaller uses less memory."},
                "inline_preview": {"type": "boolean", "default": true,
                                   "description": "Return the image inline (its thumbnail when large) as well as a link to it."},
            },
            "required": ["image"],
            "additionalProperties": false,
        },
        "outputSchema": job_schema,
        "annotations": {"title": "Upscale image", "readOnlyHint": false, "destructiveHint": false,
                        "idempotentHint": false, "openWorldHint": false},
    })
}

pub(super) async fn upscale_image(
    server: &McpServer,
    ctx: &CallContext,
    args: &Value,
) -> Result<ToolResult, Outcome> {
    let known: Vec<&str> = FIELDS
        .iter()
        .copied()
        .filter(|f| *f != "image_id")
        .chain(["inline_preview"])
        .collect();
    if let Err(e) = check_known(args, &known) {
        return Ok(e);
    }
    let inline_preview = match args.get("inline_preview") {
        None | Some(Value::Null) => true,
        Some(_) => match bool_arg(args, "inline_preview") {
            Ok(b) => b,
            Err(e) => return Ok(e),
        },
    };
    let mut obj: Map<String, Value> = args.as_object().cloned().unwrap_or_default();
    obj.remove("inline_preview");
    if let Some(Value::String(image)) = obj.get_mut("image") {
        if let Some(id) = image.strip_prefix("cyberimage://image/") {
            *image = id.to_owned();
        }
    }
    let request = match upscale_submit(&obj) {
        Ok(r) => r,
        Err(message) => return Ok(ToolResult::error(message)),
    };
    let job = match server.service.submit_upscale(request).await {
        Ok(job) => job,
        Err(e) => return Ok(e.into()),
    };
    wait_for(server, ctx, job, inline_preview).await
}
