//! OpenAI's `POST /v1/images/edits`: a multipart form with the picture
//! (`image`, or `image[]` as the SDKs send a list), the prompt and the
//! generation fields, run as an image-to-image job. A `mask` asks for
//! inpainting, which is not built yet: it is refused, not ignored.

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
                return Err(OpenAiError::invalid(
                    "mask",
                    "inpainting with a mask is not supported yet: send the image without a mask \
                     for an image-to-image edit",
                ))
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
    run_to_response(&state, &headers, request, b64).await
}
