//! OpenAI's `POST /v1/images/edits`: a multipart form with the picture
//! (`image`, or `image[]` as the SDKs send a list), an optional `mask`,
//! the prompt and the generation fields, run as an image-to-image job, or
//! an inpainting one with the mask. OpenAI's masks mark the part to edit
//! as transparent; ours mark it white, so an alpha channel is turned into
//! that (a mask without alpha is taken as ours).

use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::HeaderMap;
use axum::Json;
use base64::Engine as _;
use serde_json::{Map, Value};

use crate::openai::{parse, run_to_response, OpenAiError, Parsed};
use crate::AppState;

/// Text fields whose values are numbers in the JSON form `parse` reads.
const NUMERIC: [&str; 7] = [
    "n",
    "seed",
    "steps",
    "width",
    "height",
    "guidance_scale",
    "strength",
];

fn multipart_error(e: axum::extract::multipart::MultipartError) -> OpenAiError {
    OpenAiError::invalid(
        "body",
        format!("not a valid multipart form: {}", e.body_text()),
    )
}

pub async fn edits(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Json<Value>, OpenAiError> {
    let mut form = form.map_err(|e| {
        OpenAiError::invalid(
            "body",
            format!("send a multipart/form-data body: {}", e.body_text()),
        )
    })?;
    let mut fields = Map::new();
    let mut image: Option<Vec<u8>> = None;
    let mut mask: Option<Vec<u8>> = None;
    while let Some(field) = form.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "image" | "image[]" => {
                let bytes = field.bytes().await.map_err(multipart_error)?;
                // The first picture is the one edited; OpenAI's newer
                // models take several as references, ours take one.
                image.get_or_insert_with(|| bytes.to_vec());
            }
            "mask" => {
                let bytes = field.bytes().await.map_err(multipart_error)?;
                mask = Some(openai_mask(&bytes)?);
            }
            _ => {
                let text = field.text().await.map_err(multipart_error)?;
                let value = if NUMERIC.contains(&name.as_str()) {
                    serde_json::from_str::<serde_json::Number>(text.trim())
                        .map(Value::Number)
                        .map_err(|_| {
                            OpenAiError::invalid(&name, format!("{name} must be a number"))
                        })?
                } else {
                    Value::String(text)
                };
                fields.insert(name, value);
            }
        }
    }
    let image = image.ok_or_else(|| OpenAiError::invalid("image", "image is required"))?;
    let Parsed { mut request, b64 } = parse(&Value::Object(fields), &state)?;
    request.init_image = Some(base64::engine::general_purpose::STANDARD.encode(image));
    request.mask_image = mask.map(|m| base64::engine::general_purpose::STANDARD.encode(m));
    run_to_response(&state, &headers, request, b64).await
}

/// An OpenAI mask (transparent = edit) as ours (white = repaint), as a
/// PNG; one without an alpha channel passes as it is. The pixel limit is
/// the jobs service's, checked when the mask is decoded there.
fn openai_mask(bytes: &[u8]) -> Result<Vec<u8>, OpenAiError> {
    let bad = |e: image::ImageError| OpenAiError::invalid("mask", format!("mask: {e}"));
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| OpenAiError::invalid("mask", format!("mask: {e}")))?;
    let (width, height) = reader.into_dimensions().map_err(bad)?;
    if u64::from(width) * u64::from(height) > 64 * 1024 * 1024 {
        return Err(OpenAiError::invalid("mask", "the mask is too large"));
    }
    let decoded = image::load_from_memory(bytes).map_err(bad)?;
    if !decoded.color().has_alpha() {
        return Ok(bytes.to_vec());
    }
    let rgba = decoded.to_rgba8();
    let grey = image::GrayImage::from_fn(width, height, |x, y| {
        image::Luma([255 - rgba.get_pixel(x, y).0[3]])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageLuma8(grey)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(bad)?;
    Ok(out)
}
