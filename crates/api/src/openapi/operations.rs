//! The operation table: every route with its method, summary, parameters
//! and responses. A new route is added here (`tests/openapi.rs` calls each
//! documented operation on a live server, and cannot see undocumented ones).

use serde_json::{json, Value};

use super::{error_response, json_response, path_param, png_response, query_param};

/// Every operation: (method, path, summary, extra fields of the operation).
pub(super) fn operations() -> Vec<(&'static str, &'static str, &'static str, Value)> {
    let job_id = path_param("job_id", "The job id returned at submission.");
    let image_id = path_param("image_id", "`img_` and 32 hex digits.");
    let ok_json = |d: &str| json!({"200": json_response(d, json!({"type": "object"}))});
    vec![
        ("get", "/health", "Liveness: {\"status\": \"healthy\", \"version\", \"device\"} (no key needed); with no keys configured, or a valid key presented, also \"queue\": {pending, processing, queue_size}", ok_json("Alive")),
        (
            "get",
            "/ready",
            "Readiness: database reachable and workers alive",
            json!({"200": json_response("Ready", json!({"type": "object"})), "503": json_response("Not ready", json!({"type": "object"}))}),
        ),
        (
            "get",
            "/metrics",
            "Prometheus metrics",
            json!({"200": {"description": "Text exposition format 0.0.4", "content": {"text/plain": {"schema": {"type": "string"}}}}}),
        ),
        (
            "post",
            "/api/generate",
            "Submit a generation job: a JSON body, or a multipart form with the same fields (init_image and mask_image as files, or text naming a gallery image or holding base64; settings, loras, outpaint and hires as JSON parts)",
            json!({
            "requestBody": {"required": true, "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/GenerateRequest"}},
                "multipart/form-data": {"schema": {"type": "object", "properties": {
                    "prompt": {"type": "string"}, "negative_prompt": {"type": "string"}, "model_id": {"type": "string"},
                    "init_image": {"type": "string", "format": "binary"}, "mask_image": {"type": "string", "format": "binary"},
                    "settings": {"type": "string", "description": "The GenerateRequest's settings object, as JSON"}}}}}},
            "responses": {
                "202": json_response("Queued", json!({"$ref": "#/components/schemas/JobSubmitted"})),
                "400": error_response("Invalid parameters"), "413": error_response("Body too large"),
                "429": error_response("Queue full (Retry-After)")}}),
        ),
        (
            "get",
            "/api/status/{job_id}",
            "Job status and, when completed, its images; while it runs here, `preview_url` names its latest live preview",
            json!({
            "parameters": [job_id.clone()],
            "responses": {"200": json_response("The job", json!({"$ref": "#/components/schemas/JobStatus"})),
                          "404": error_response("No such job")}}),
        ),
        (
            "get",
            "/api/preview/{job_id}",
            "The latest live preview of a running job: a latent-sized PNG (each latent pixel projected to RGB), `X-Preview-Step` its step; still served for 30 s after the job ends (a page may fetch the last one announced); 404 before the first step, later after the job, or when another process runs it. `/api/events` announces each as a `preview` event",
            json!({
            "parameters": [job_id.clone()],
            "responses": {"200": {"description": "PNG", "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
                          "404": error_response("No preview now")}}),
        ),
        (
            "post",
            "/api/cancel/{job_id}",
            "Cancel a pending or running job",
            json!({
            "parameters": [job_id],
            "responses": {"200": json_response("Cancelled", json!({"$ref": "#/components/schemas/JobStatus"})),
                          "404": error_response("No such job"), "409": error_response("Already finished")}}),
        ),
        (
            "get",
            "/api/get_image/{image_id}",
            "The full PNG (immutable; ETag)",
            json!({
            "parameters": [image_id.clone()],
            "responses": {"200": png_response("PNG with generation parameters in its text chunks"), "304": {"description": "Not modified"},
                          "404": error_response("No such image")}}),
        ),
        (
            "get",
            "/api/images/{image_id}/thumbnail",
            "A PNG thumbnail, at most 384 px a side",
            json!({
            "parameters": [image_id.clone()],
            "responses": {"200": png_response("Thumbnail"), "404": error_response("No such image")}}),
        ),
        (
            "get",
            "/api/images/{image_id}",
            "Image metadata",
            json!({
            "parameters": [image_id.clone()],
            "responses": {"200": json_response("The image", json!({"$ref": "#/components/schemas/Image"})),
                          "404": error_response("No such image")}}),
        ),
        (
            "delete",
            "/api/images/{image_id}",
            "Delete an image (row, file, thumbnail)",
            json!({
            "parameters": [image_id.clone()],
            "responses": {"200": json_response("Deleted", json!({"type": "object"})), "404": error_response("No such image")}}),
        ),
        (
            "get",
            "/api/image/{image_id}",
            "Image metadata (CyberImage's REST name for /api/images/{image_id})",
            json!({
            "parameters": [image_id.clone()],
            "responses": {"200": json_response("The image", json!({"$ref": "#/components/schemas/Image"})),
                          "404": error_response("No such image")}}),
        ),
        (
            "get",
            "/api/image/{image_id}/metadata",
            "Image metadata (CyberImage's REST name)",
            json!({
            "parameters": [image_id.clone()],
            "responses": {"200": json_response("The image", json!({"$ref": "#/components/schemas/Image"})),
                          "404": error_response("No such image")}}),
        ),
        (
            "delete",
            "/api/image/{image_id}",
            "Delete an image (CyberImage's REST name for DELETE /api/images/{image_id})",
            json!({
            "parameters": [image_id.clone()],
            "responses": {"200": json_response("Deleted", json!({"type": "object"})), "404": error_response("No such image")}}),
        ),
        (
            "get",
            "/api/gallery",
            "Images, newest first, paginated, searchable",
            json!({
            "parameters": [query_param("page", "integer", "1-based page"),
                           query_param("per_page", "integer", "1 to 100; default 24"),
                           query_param("limit", "integer", "CyberImage's name for per_page (send one of the two)"),
                           query_param("model", "string", "Only this model"),
                           query_param("q", "string", "A case-insensitive substring of the prompt"),
                           query_param("search", "string", "Up to 16 words, each in the prompt or the model key (case-insensitive), all of them"),
                           query_param("favorites", "boolean", "Only images marked as favourites")],
            "responses": {"200": json_response("A page", json!({"type": "object", "properties": {
                "images": {"type": "array", "items": {"$ref": "#/components/schemas/Image"}},
                "page": {"type": "integer"}, "per_page": {"type": "integer"},
                "total": {"type": "integer"}, "total_pages": {"type": "integer"},
                "has_more": {"type": "boolean", "description": "A later page exists."}}})),
                          "400": error_response("Bad query")}}),
        ),
        (
            "get",
            "/api/models",
            "The model catalogue and the default model",
            ok_json("Models"),
        ),
        (
            "get",
            "/api/loras",
            "The LoRA files in the data dir's loras/ folder (name, bytes, sha256 of the tensor data, short_hash as A1111 writes it, family: the model family its layer names give away — \"SD 1.x/2.x\", \"SDXL\", \"SD 3\", \"FLUX\" — or null when they do not tell); jobs name them in loras or <lora:NAME:WEIGHT>",
            ok_json("LoRAs"),
        ),
        (
            "post",
            "/api/upscale",
            "Queue an upscaling job: `image` (or `image_id`) a gallery image id or base64 PNG/JPEG, `upscaler` a name from GET /api/upscalers (default: the built-in upscalerjs-esrgan-medium-x4), `scale` the output factor 1-8 (default: the network's own; other factors are resized from its result with Lanczos), `tile` input pixels per tile side (32-1024, default 192). The job's steps are its tiles; its image keeps the gallery image's prompt and records its source",
            json!({
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "additionalProperties": false, "properties": {
                "image": {"type": "string"}, "image_id": {"type": "string"},
                "upscaler": {"type": "string"},
                "scale": {"type": "number", "minimum": 1, "maximum": 8},
                "tile": {"type": "integer", "minimum": 32, "maximum": 1024}}}}}},
            "responses": {
                "202": json_response("Queued", json!({"$ref": "#/components/schemas/JobSubmitted"})),
                "400": error_response("Invalid request: no picture, unknown upscaler, scale or size out of range"),
                "429": error_response("Queue full (Retry-After)")}}),
        ),
        (
            "get",
            "/api/upscalers",
            "The upscalers: .safetensors / .pth files in the data dir's upscalers/ folder (ESRGAN, Real-ESRGAN, Real-ESRGAN Compact, RDN) and the built-in ones, with name, builtin, bytes, sha256 (of the file), runnable, and architecture and scale or the reason it cannot run",
            ok_json("Upscalers"),
        ),
        (
            "post",
            "/api/enrich",
            "Prompt enrichment: a chat model behind the configured OpenAI-compatible endpoint ([enrich] in the config; Ollama, llama.cpp, vLLM, OpenAI) rewrites the prompt in a style. `model` (an image model key) asks for the form its text encoder reads: short phrases for CLIP models, sentences for FLUX and SD 3",
            json!({
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["prompt"], "additionalProperties": false, "properties": {
                "prompt": {"type": "string", "maxLength": 4000},
                "style": {"type": "string", "default": "cyberpunk", "description": "A name from GET /api/enrich/styles"},
                "model": {"type": "string", "description": "The image model the prompt is for"}}}}}},
            "responses": {"200": json_response("The enriched prompt", json!({"type": "object", "properties": {
                "prompt": {"type": "string"}, "original": {"type": "string"}, "style": {"type": "string"},
                "enriched_prompt": {"type": "string", "description": "The same as prompt (the CyberImage app's name)"},
                "original_prompt": {"type": "string", "description": "The same as original (the app's name)"},
                "enriched_by": {"type": "string", "description": "The chat model"}}})),
                          "400": error_response("No prompt, an unknown style, field or model"),
                          "502": error_response("The chat endpoint failed (enrich_upstream_error)"),
                          "503": error_response("Not configured (enrich_not_configured) or not reachable (enrich_unavailable)"),
                          "504": error_response("The chat endpoint did not answer in time (enrich_timeout)")}}),
        ),
        (
            "post",
            "/api/images/{image_id}/favorite",
            "Mark or unmark a gallery image as a favourite: {\"favorite\": true|false} (PUT does the same); the gallery's ?favorites=true lists only favourites",
            json!({"parameters": [image_id.clone()],
                   "responses": {"200": json_response("The image", json!({"$ref": "#/components/schemas/Image"})), "400": error_response("Not {favorite: bool}"), "404": error_response("No such image")}}),
        ),
        (
            "post",
            "/api/images/delete",
            "Delete a selection of images: {\"ids\": [img_…]} (at most 200): {deleted, missing}",
            json!({"responses": {"200": json_response("What was deleted", json!({"type": "object"})), "400": error_response("No, malformed or too many ids")}}),
        ),
        (
            "get",
            "/api/images/download",
            "A selection of images as one ZIP (stored PNGs, streamed): ?ids=img_…,img_… (at most 200); ids that do not exist are left out and named in X-Missing-Images. POST with {\"ids\": […]} does the same",
            json!({"parameters": [query_param("ids", "string", "Comma-separated image ids")],
                   "responses": {"200": {"description": "The ZIP", "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
                                 "400": error_response("No, malformed or too many ids"), "404": error_response("None of the images exists")}}),
        ),
        (
            "post",
            "/api/images/download",
            "The same ZIP as GET, the ids in the body: {\"ids\": [img_…]}",
            json!({"responses": {"200": {"description": "The ZIP", "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
                                 "400": error_response("No, malformed or too many ids"), "404": error_response("None of the images exists")}}),
        ),
        (
            "get",
            "/api/jobs",
            "Job records for the admin table, newest first: ?status=pending,failed,… (or all) and ?limit (1-500, default 100)",
            json!({"parameters": [query_param("status", "string", "Comma-separated statuses, or all"),
                                  query_param("limit", "integer", "1-500")],
                   "responses": {"200": json_response("Jobs", json!({"type": "object"})), "400": error_response("Bad status or limit")}}),
        ),
        (
            "get",
            "/api/jobs/{job_id}",
            "A job with its images: {job (the status view plus attempts), images}",
            json!({"parameters": [job_id.clone()], "responses": {"200": json_response("The job", json!({"type": "object"})), "404": error_response("No such job")}}),
        ),
        (
            "delete",
            "/api/jobs/{job_id}",
            "Delete a job record (admin scope). Not a running job (409 job_running); a job whose images are in the gallery only with ?images=true, which deletes them too (else 409 job_has_images)",
            json!({"parameters": [job_id.clone(), query_param("images", "boolean", "Delete the job's images as well")],
                   "responses": {"200": json_response("Deleted", json!({"type": "object"})), "404": error_response("No such job"), "409": error_response("Running, or has images")}}),
        ),
        (
            "post",
            "/api/jobs/{job_id}/retry",
            "Put a failed job back in the queue (admin scope): while it has attempts left ([queue] max_attempts), or always with {\"force\": true}, which also resets them. 409 job_not_failed / attempts_exhausted; 429 when the queue is full",
            json!({"parameters": [job_id.clone()], "responses": {"200": json_response("The job, pending again", json!({"type": "object"})), "404": error_response("No such job"), "409": error_response("Not failed, or no attempts left")}}),
        ),
        (
            "post",
            "/api/queue/retry_failed",
            "Retry every failed job that may be ({\"force\": true}: all of them), oldest first, while the queue has room (admin scope): {retried, exhausted, over_queue_bound}",
            ok_json("What was retried"),
        ),
        (
            "post",
            "/api/queue/clear",
            "Delete job records by {\"status\": pending | failed | cancelled | completed | all} (admin scope); running jobs and jobs whose images are in the gallery are kept: {deleted, kept_with_images}",
            json!({"responses": {"200": json_response("What was deleted", json!({"type": "object"})), "400": error_response("No or unknown status")}}),
        ),
        (
            "get",
            "/admin/job/{job_id}",
            "The CyberImage app's job details: {job, images} (admin scope)",
            json!({"parameters": [job_id.clone()], "responses": {"200": json_response("The job", json!({"type": "object"})), "404": error_response("No such job")}}),
        ),
        ("post", "/admin/queue/clear", "The app's clear: a form or JSON with job_id (one record) or status (pending, failed, cancelled, completed, all; none: all) (admin scope): {success, message, deleted}", ok_json("Cleared")),
        ("post", "/admin/queue/retry", "The app's retry of one failed job (job_id; an admin's retry always forces, as in the app) (admin scope)", ok_json("Retried")),
        ("post", "/admin/queue/force-retry", "The same as /admin/queue/retry", ok_json("Retried")),
        ("post", "/admin/queue/retry-all", "The app's retry of every failed job, forced (admin scope): {success, message, details}", ok_json("Retried")),
        ("post", "/admin/queue/force-retry-all", "The same as /admin/queue/retry-all", ok_json("Retried")),
        (
            "get",
            "/api/enrich/styles",
            "The enrichment styles (name, description), the default, and whether a chat endpoint is configured (configured, model, reason)",
            ok_json("Styles"),
        ),
        (
            "get",
            "/api/queue",
            "Queue counts (pending, processing, and CyberImage's totals: completed, failed, cancelled, total, queue_size), active jobs and recent failures; ?detailed=true adds recent_24h (jobs created in the last 24 h by status), avg_processing_time_seconds, models (per model key, by status) and failure_rate (percent of finished jobs that failed)",
            ok_json("Queue"),
        ),
        (
            "post",
            "/api/reset_queue",
            "Put jobs whose worker died back in the queue now (CyberImage's reset; live jobs are left alone)",
            json!({"responses": {"200": json_response("What was recovered", json!({"type": "object", "properties": {
                "status": {"type": "string", "enum": ["success"]}, "reset_count": {"type": "integer"},
                "requeued": {"type": "integer"}, "failed": {"type": "integer"}, "message": {"type": "string"}}}))}}),
        ),
        (
            "get",
            "/api/events",
            "Server-sent job events",
            json!({
            "parameters": [query_param("job_id", "string", "Only this job: starts from its state, ends when it finishes")],
            "responses": {"200": {"description": "`event: job` with JSON data", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                          "404": error_response("No such job")}}),
        ),
        (
            "post",
            "/api/png-info",
            "Generation parameters stored in a PNG (ours or A1111's)",
            json!({
            "requestBody": {"required": true, "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": {"200": json_response("Parsed parameters and all text chunks", json!({"type": "object"})),
                          "400": error_response("Not a PNG")}}),
        ),
        (
            "post",
            "/api/mcp",
            "JSON-RPC 2.0: the seed's context.image_generation.* methods, and standard MCP",
            json!({
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JsonRpcRequest"}}}},
            "responses": {"200": json_response("JSON-RPC response (or SSE for MCP tool calls)", json!({"type": "object"})),
                          "204": {"description": "Only notifications were sent"}}}),
        ),
        (
            "post",
            "/mcp",
            "Standard MCP over Streamable HTTP",
            json!({
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JsonRpcRequest"}}}},
            "responses": {"200": {"description": "JSON-RPC response, or an SSE stream of progress notifications and the response"},
                          "202": {"description": "Notification accepted"},
                          "400": {"description": "Missing session, bad headers or unsupported version"},
                          "403": error_response("Origin not allowed"), "404": {"description": "Unknown session"}}}),
        ),
        (
            "delete",
            "/mcp",
            "End an MCP session",
            json!({
            "responses": {"204": {"description": "Ended"}, "404": {"description": "Unknown session"}}}),
        ),
        (
            "post",
            "/v1/images/generations",
            "OpenAI-compatible image generation (waits for the job)",
            json!({
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAiImageRequest"}}}},
            "responses": {"200": json_response("Images", json!({"type": "object", "properties": {
                "created": {"type": "integer"}, "data": {"type": "array", "items": {"type": "object", "properties": {
                    "url": {"type": "string"}, "b64_json": {"type": "string"}, "revised_prompt": {"type": "string"}}}}}})),
                          "400": json_response("Invalid request", json!({"$ref": "#/components/schemas/OpenAiError"})),
                          "500": json_response("Generation failed", json!({"$ref": "#/components/schemas/OpenAiError"}))}}),
        ),
        (
            "post",
            "/v1/images/edits",
            "OpenAI-compatible image edit (multipart: image or image[], an optional mask (transparent = edit, as OpenAI's; without alpha, white = edit), prompt, n, size, response_format, model; our strength, seed, steps, guidance_scale, negative_prompt): an image-to-image or inpainting job, waited for",
            json!({
            "requestBody": {"required": true, "content": {"multipart/form-data": {"schema": {"type": "object", "required": ["image", "prompt"], "properties": {
                "image": {"type": "string", "format": "binary"}, "mask": {"type": "string", "format": "binary"},
                "prompt": {"type": "string"}, "n": {"type": "integer"},
                "size": {"type": "string"}, "response_format": {"type": "string", "enum": ["url", "b64_json"]},
                "model": {"type": "string"}, "strength": {"type": "number"}}}}}},
            "responses": {"200": json_response("Images", json!({"type": "object"})),
                          "400": json_response("Invalid request", json!({"$ref": "#/components/schemas/OpenAiError"}))}}),
        ),
        (
            "post",
            "/sdapi/v1/txt2img",
            "AUTOMATIC1111's txt2img (prompt, negative_prompt, steps 20, cfg_scale 7, width/height 512, seed -1, batch_size × n_iter, override_settings.sd_model_checkpoint; the hires fix: enable_hr, hr_scale 2, hr_resize_x/y, hr_second_pass_steps, denoising_strength 0.7, hr_upscaler (latent ones enlarge by Lanczos); other A1111 fields accepted and ignored): waits for the job; images as base64 PNGs, info as a JSON string with the infotexts",
            json!({"requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}}},
                   "responses": {"200": json_response("Images", json!({"type": "object", "properties": {
                       "images": {"type": "array", "items": {"type": "string"}}, "parameters": {"type": "object"}, "info": {"type": "string"}}})),
                                 "400": error_response("Invalid request")}}),
        ),
        (
            "post",
            "/sdapi/v1/img2img",
            "AUTOMATIC1111's img2img: init_images[0] (base64), denoising_strength (0.75), mask (base64, white = inpaint), and the txt2img fields",
            json!({"requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}}},
                   "responses": {"200": json_response("Images", json!({"type": "object"})), "400": error_response("Invalid request")}}),
        ),
        ("get", "/sdapi/v1/upscalers", "The upscalers as AUTOMATIC1111 lists them (None, then ours: name, model_name, model_path, scale)", ok_json("Upscalers")),
        (
            "post",
            "/sdapi/v1/extra-single-image",
            "AUTOMATIC1111's Extras upscale: image (base64), upscaler_1 (ours, or A1111's R-ESRGAN names for the same release files), resize_mode 0 with upscaling_resize, or 1 with upscaling_resize_w/h of the same aspect ratio; waits for the job and answers {image, html_info}. Face restoration and upscaler_2 are refused",
            json!({"requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}}},
                   "responses": {"200": json_response("Upscaled", json!({"type": "object", "properties": {
                       "image": {"type": "string"}, "html_info": {"type": "string"}}})),
                                 "400": error_response("Invalid request")}}),
        ),
        ("get", "/sdapi/v1/sd-models", "AUTOMATIC1111's model list (title = model_name = our key)", ok_json("Models")),
        ("get", "/sdapi/v1/samplers", "The sampler names our metadata writes (the model's scheduler config picks the one that runs)", ok_json("Samplers")),
        ("get", "/sdapi/v1/schedulers", "AUTOMATIC1111's scheduler list (one: automatic)", ok_json("Schedulers")),
        ("get", "/sdapi/v1/loras", "The LoRAs in the data dir's loras/ folder, as AUTOMATIC1111 lists them (name, alias, path)", ok_json("LoRAs")),
        ("get", "/sdapi/v1/options", "sd_model_checkpoint as set for AUTOMATIC1111 requests", ok_json("Options")),
        (
            "post",
            "/sdapi/v1/options",
            "Sets sd_model_checkpoint for later AUTOMATIC1111 requests (other options are ignored)",
            json!({"requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}}},
                   "responses": {"200": json_response("Set", json!({"type": "null"})), "400": error_response("Unknown model")}}),
        ),
        ("get", "/sdapi/v1/progress", "The latest AUTOMATIC1111 job's progress, with its live preview as current_image", ok_json("Progress")),
        (
            "post",
            "/sdapi/v1/interrupt",
            "Cancels the latest AUTOMATIC1111 job",
            json!({"responses": {"200": json_response("Done", json!({"type": "null"}))}}),
        ),
        (
            "post",
            "/sdapi/v1/png-info",
            "AUTOMATIC1111's PNG info: {image: base64} → {info: the parameters text, items: every text chunk}",
            json!({"requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": {"image": {"type": "string"}}}}}},
                   "responses": {"200": json_response("Info", json!({"type": "object"})), "400": error_response("Not a PNG")}}),
        ),
        (
            "get",
            "/v1/models",
            "OpenAI-compatible model list",
            ok_json("Models"),
        ),
        (
            "get",
            "/api/openapi.json",
            "This document",
            ok_json("OpenAPI 3.1"),
        ),
        (
            "get",
            "/api/docs",
            "A readable page of this document",
            json!({"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}),
        ),
    ]
}
