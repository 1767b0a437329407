//! The text chunks written into every PNG: the A1111 `parameters` line that
//! Civitai, SwarmUI and ComfyUI read, and a versioned JSON record with
//! everything needed to reproduce the image.

use cyberimage_core::{GeneratedImage, ImageRecord};

const METADATA_VERSION: u32 = 1;

pub fn png_text_chunks(record: &ImageRecord, image: &GeneratedImage) -> Vec<(String, String)> {
    let extra_value = |key: &str| {
        image
            .extra_metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    if let Some(upscaler) = extra_value("upscaler") {
        return upscaled_chunks(record, image, upscaler);
    }
    let mut parameters = record.prompt.clone();
    // A1111 keeps the `<lora:…>` tags in the prompt it writes (its PNG-info
    // and "send to txt2img" restore them from there).
    for lora in extra_value("loras").into_iter().flat_map(|l| l.split(", ")) {
        parameters.push_str(&format!(" <lora:{lora}>"));
    }
    if let Some(neg) = &record.negative_prompt {
        parameters.push_str("\nNegative prompt: ");
        parameters.push_str(neg);
    }
    let sampler = extra_value("sampler").unwrap_or("default");
    let weights = extra_value("weights_sha256").map(str::to_owned);
    // A hires picture's size is its first pass's, as A1111 writes it; the
    // final size follows under "Hires resize".
    let size = extra_value("first_pass_size")
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{}x{}", record.width, record.height));
    parameters.push_str(&format!(
        "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {size}, ",
        record.steps, sampler, record.guidance_scale, record.seed,
    ));
    // A1111 writes the first 10 hex digits of the checkpoint's SHA-256.
    if let Some(hash) = weights.as_deref().and_then(|w| w.get(..10)) {
        parameters.push_str(&format!("Model hash: {hash}, "));
    }
    parameters.push_str(&format!("Model: {}", record.model));
    // Image-to-image: A1111 writes the strength; the input's digest is in
    // the JSON record (the engine's `init_image_sha256`).
    if let Some(strength) = extra_value("denoising_strength") {
        parameters.push_str(&format!(", Denoising strength: {strength}"));
    }
    if let Some(resize) = extra_value("hires_resize") {
        parameters.push_str(&format!(
            ", Hires resize: {resize}, Hires steps: {}, Hires upscaler: {}",
            extra_value("hires_steps").unwrap_or("0"),
            extra_value("hires_upscaler").unwrap_or("Lanczos"),
        ));
    }
    // Inpainting, as A1111 writes it.
    if let Some(blur) = extra_value("mask_blur").filter(|b| *b != "0") {
        parameters.push_str(&format!(", Mask blur: {blur}"));
    }
    if let Some(hashes) = extra_value("lora_hashes") {
        parameters.push_str(&format!(", Lora hashes: \"{hashes}\""));
    }
    let json = json_record(record, image, weights);
    vec![
        ("parameters".into(), parameters),
        ("cyberimage".into(), json),
    ]
}

/// An upscaled picture: its prompt (the source image's), then what
/// AUTOMATIC1111's "Extras" tab writes for an upscale.
fn upscaled_chunks(
    record: &ImageRecord,
    image: &GeneratedImage,
    upscaler: &str,
) -> Vec<(String, String)> {
    let by = image
        .extra_metadata
        .iter()
        .find(|(k, _)| k == "upscale_by")
        .map(|(_, v)| v.as_str())
        .unwrap_or("?");
    let mut parameters = record.prompt.clone();
    if !parameters.is_empty() {
        parameters.push('\n');
    }
    parameters.push_str(&format!(
        "Postprocess upscale by: {by}, Postprocess upscaler: {upscaler}, Size: {}x{}",
        record.width, record.height
    ));
    vec![
        ("parameters".into(), parameters),
        ("cyberimage".into(), json_record(record, image, None)),
    ]
}

fn json_record(record: &ImageRecord, image: &GeneratedImage, weights: Option<String>) -> String {
    let extra: serde_json::Map<String, serde_json::Value> = image
        .extra_metadata
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::json!({
        "version": METADATA_VERSION,
        "generator": format!("cyberimage {}", env!("CARGO_PKG_VERSION")),
        "image_id": record.id,
        "job_id": record.job_id,
        "model": record.model,
        "prompt": record.prompt,
        "negative_prompt": record.negative_prompt,
        "width": record.width,
        "height": record.height,
        "steps": record.steps,
        "guidance_scale": record.guidance_scale,
        "seed": record.seed,
        "weights_sha256": weights,
        "engine": extra,
    })
    .to_string()
}
