//! `POST /api/generate` as a multipart form, the way a browser form or
//! `curl -F init_image=@photo.png` sends a picture: its parts become the
//! same JSON object a JSON body is, so one decoder (`params`) judges both.
//! A picture part (`init_image`, `mask_image`) sent as a file is its bytes
//! (base64 here); sent as text it names a gallery image or holds base64.
//! `settings`, `loras`, `outpaint` and `hires` parts are JSON; the prompt,
//! negative prompt and model are text as sent; any other part is read as a
//! JSON value (`20`, `true`) when it is one, else kept as text, so a
//! wrong type still gets the field's own message.

use axum::extract::multipart::{Multipart, MultipartError};
use base64::Engine as _;
use serde_json::{Map, Value};

use crate::error_table::ApiError;

/// Parts that are pictures.
const PICTURES: [&str; 2] = ["init_image", "mask_image"];
/// Parts that are text whatever they look like.
const TEXT: [&str; 4] = ["prompt", "negative_prompt", "model", "model_id"];
/// Parts that hold a JSON object or list.
const JSON: [&str; 4] = ["settings", "loras", "outpaint", "hires"];

fn form_error(e: MultipartError) -> ApiError {
    ApiError::bad_request(format!("cannot read the multipart form: {}", e.body_text()))
}

/// The form as the JSON object a JSON body would be.
pub async fn form_to_json(mut form: Multipart) -> Result<Value, ApiError> {
    let mut out = Map::new();
    while let Some(field) = form.next_field().await.map_err(form_error)? {
        let name = field.name().unwrap_or_default().to_owned();
        if out.contains_key(&name) {
            return Err(ApiError::bad_request(format!(
                "the form has two {name:?} parts; send one"
            )));
        }
        let is_file = field.file_name().is_some()
            || field
                .content_type()
                .is_some_and(|t| !t.starts_with("text/"));
        let value = if PICTURES.contains(&name.as_str()) && is_file {
            let bytes = field.bytes().await.map_err(form_error)?;
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            let text = field.text().await.map_err(form_error)?;
            if TEXT.contains(&name.as_str()) || PICTURES.contains(&name.as_str()) {
                Value::String(text)
            } else if JSON.contains(&name.as_str()) {
                serde_json::from_str(&text).map_err(|e| {
                    ApiError::bad_request(format!("the {name} part is not JSON: {e}"))
                })?
            } else {
                serde_json::from_str(text.trim()).unwrap_or(Value::String(text))
            }
        };
        out.insert(name, value);
    }
    Ok(Value::Object(out))
}
