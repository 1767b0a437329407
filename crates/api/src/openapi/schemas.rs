//! The document's reusable schemas (`components.schemas`): errors, the
//! generate request, images, jobs, JSON-RPC.

use serde_json::{json, Value};

pub(super) fn schemas() -> Value {
    json!({
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                "code": {"type": "string", "description": "Stable machine-readable code, e.g. invalid_parameter, queue_full, job_not_found."},
                "message": {"type": "string"}}}},
        },
        "OpenAiError": {
            "type": "object",
            "properties": {"error": {"type": "object", "properties": {
                "message": {"type": "string"}, "type": {"type": "string"},
                "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
        },
        "GenerateRequest": {
            "type": "object",
            "required": ["prompt"],
            "description": "Settings may be given in `settings` (the seed's shape) or at the top level. A field not listed here (nor `steps`, `guidance`, the settings' other names) is refused with a 400 naming it.",
            "properties": {
                "prompt": {"type": "string", "maxLength": 4000},
                "negative_prompt": {"type": "string"},
                "model": {"type": "string", "description": "Model key; the server default when omitted."},
                "model_id": {"type": "string", "description": "The same as `model`, as CyberImage's REST clients name it."},
                "settings": {"type": "object", "properties": {
                    "num_images": {"type": "integer", "minimum": 1, "maximum": 8},
                    "num_inference_steps": {"type": "integer", "minimum": 1, "maximum": 150},
                    "guidance_scale": {"type": "number", "minimum": 0, "maximum": 30},
                    "height": {"type": "integer", "minimum": 64, "maximum": 2048},
                    "width": {"type": "integer", "minimum": 64, "maximum": 2048},
                    "seed": {"type": "integer", "minimum": -1, "maximum": 9007199254740991_u64,
                             "description": "-1 or omitted: random."},
                    "init_image": {"type": "string", "description": "Image-to-image: a gallery image id (img_…), or a PNG/JPEG as base64 or a data: URL (≤ 16 Mpx). Width and height default to its size, rounded down to the model's multiple; another size resizes it (Lanczos)."},
                    "mask_image": {"type": "string", "description": "Inpainting: a mask of the init_image's size (same forms), white where the model repaints, black where the picture is kept."},
                    "outpaint": {"type": "object", "description": "Outpainting: pixels to add to the init_image on each side (left, right, top, bottom; each 0–max dimension); the border is filled from the nearest edge, masked with an 8-pixel seam and drawn at strength 1 unless given. Not with mask_image.",
                                 "properties": {"left": {"type": "integer", "minimum": 0}, "right": {"type": "integer", "minimum": 0}, "top": {"type": "integer", "minimum": 0}, "bottom": {"type": "integer", "minimum": 0}}},
                    "mask_blur": {"type": "integer", "minimum": 0, "maximum": 64, "default": 0,
                                  "description": "Inpainting: Gaussian blur of the mask in pixels (A1111's mask_blur), a soft edge between kept and repainted parts."},
                    "keep_unmasked": {"type": "boolean", "default": false,
                                      "description": "Inpainting: put the init_image's pixels back where the (blurred) mask is black, blending across its edge, so what was not masked is kept exactly (A1111 always does)."},
                    "strength": {"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                                 "description": "With init_image: the share of the schedule that runs (diffusers' strength; default 0.8). `denoising_strength` is accepted too."},
                    "loras": {"type": "array", "maxItems": 8, "description": "LoRAs from the data dir's loras/ folder (GET /api/loras), merged into the model for this job (SD 1.x/2.x, SDXL, SD 3 and FLUX models; beside a GGUF FLUX transformer as a low-rank branch): [{\"name\", \"weight\" (default 1, -10..10)}], or names, or {name: weight}. `<lora:NAME:WEIGHT>` in the prompt adds one too (and is taken out of the prompt, as AUTOMATIC1111 does). A name that is not there, or a LoRA made for another model family, is a 400.",
                              "items": {"type": "object", "properties": {"name": {"type": "string"}, "weight": {"type": "number"}}, "required": ["name"]}},
                    "hires": crate::params::hires_schema(&cyberimage_core::Limits::default())}},
            },
        },
        "JobSubmitted": {
            "type": "object",
            "properties": {"job_id": {"type": "string"}, "status": {"type": "string"}, "num_images": {"type": "integer"}, "message": {"type": "string"}},
        },
        "Image": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "pattern": "^img_[0-9a-f]{32}$"},
                "url": {"type": "string"}, "thumbnail_url": {"type": "string"},
                "created_at": {"type": "string", "format": "date-time"},
                "favorite": {"type": "boolean", "description": "Marked as a favourite in the gallery."},
                "metadata": {"type": "object", "properties": {
                    "model_id": {"type": "string"}, "prompt": {"type": "string"},
                    "negative_prompt": {"type": ["string", "null"]},
                    "settings": {"type": "object"}}},
            },
        },
        "JobStatus": {
            "type": "object",
            "properties": {
                "job_id": {"type": "string"},
                "status": {"type": "string", "enum": ["pending", "processing", "completed", "failed", "cancelled"]},
                "model": {"type": "string"}, "prompt": {"type": "string"},
                "created_at": {"type": "string"}, "started_at": {"type": ["string", "null"]},
                "completed_at": {"type": ["string", "null"]},
                "progress": {"type": "object"},
                "images": {"type": "array", "items": {"$ref": "#/components/schemas/Image"}},
                "error": {"type": ["string", "null"]},
                "id": {"type": "string", "description": "The job id again, as CyberImage's REST status names it."},
                "model_id": {"type": "string", "description": "The model again, under CyberImage's REST name."},
                "negative_prompt": {"type": ["string", "null"]},
                "settings": {"type": "object", "description": "The job's resolved settings (the seed as chosen)."},
                "message": {"type": "string", "description": "Where the job stands, for a person."},
            },
        },
        "OpenAiImageRequest": {
            "type": "object",
            "required": ["prompt"],
            "properties": {
                "prompt": {"type": "string"}, "model": {"type": "string"},
                "n": {"type": "integer", "minimum": 1, "maximum": 8},
                "size": {"type": "string", "description": "WIDTHxHEIGHT or auto"},
                "response_format": {"type": "string", "enum": ["url", "b64_json"]},
                "output_format": {"type": "string", "enum": ["png"]},
                "negative_prompt": {"type": "string"}, "seed": {"type": "integer"},
                "steps": {"type": "integer"}, "guidance_scale": {"type": "number"},
                "width": {"type": "integer"}, "height": {"type": "integer"},
            },
        },
        "JsonRpcRequest": {
            "type": "object",
            "required": ["jsonrpc", "method"],
            "properties": {"jsonrpc": {"const": "2.0"}, "method": {"type": "string"},
                           "params": {"type": "object"}, "id": {"type": ["string", "integer", "null"]}},
        },
    })
}
