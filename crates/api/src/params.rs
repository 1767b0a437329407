//! Decoding generation parameters from JSON into a `SpecRequest`, with an
//! error that names the field. Shared by REST and JSON-RPC so both accept
//! exactly the same inputs: the seed's nested `settings` object, or the same
//! fields at the top level.

use cyberimage_core::{HiresRequest, LoraRequest, SpecRequest};
use serde_json::{Map, Value};

pub(crate) fn text(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{field} must be a string")),
    }
}

pub(crate) fn integer(v: &Value, name: &str) -> Result<i64, String> {
    let Value::Number(n) = v else {
        return Err(format!("{name} must be an integer"));
    };
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    match n.as_f64() {
        // Beyond i64 is beyond every limit: saturate so the range check
        // reports it in the usual words.
        Some(f) if f.fract() == 0.0 && f.is_finite() => {
            Ok(f.clamp(i64::MIN as f64, i64::MAX as f64) as i64)
        }
        _ if n.is_u64() => Ok(i64::MAX),
        _ => Err(format!("{name} must be an integer, got {n}")),
    }
}

pub(crate) fn number(v: &Value, name: &str) -> Result<f64, String> {
    v.as_f64().ok_or_else(|| format!("{name} must be a number"))
}

/// Looks `names` up in `settings` first, then at the top level.
fn lookup<'a>(
    top: &'a Map<String, Value>,
    settings: Option<&'a Map<String, Value>>,
    names: &[&str],
) -> Option<(&'a Value, String)> {
    for n in names {
        if let Some(v) = settings.and_then(|s| s.get(*n)).filter(|v| !v.is_null()) {
            return Some((v, format!("settings.{n}")));
        }
    }
    for n in names {
        if let Some(v) = top.get(*n).filter(|v| !v.is_null()) {
            return Some((v, (*n).to_owned()));
        }
    }
    None
}

/// The top-level fields `spec_request` reads (the settings may also stand
/// at the top level).
const TOP_LEVEL_FIELDS: &[&str] = &["prompt", "negative_prompt", "model", "model_id", "settings"];
/// The settings `spec_request` reads, by every name it accepts.
const SETTINGS_FIELDS: &[&str] = &[
    "num_images",
    "num_inference_steps",
    "steps",
    "guidance_scale",
    "guidance",
    "width",
    "height",
    "seed",
    "init_image",
    "mask_image",
    "outpaint",
    "strength",
    "denoising_strength",
    "mask_blur",
    "keep_unmasked",
    "loras",
    "hires",
];

/// Refuses a field `spec_request` would not read, naming it: a misspelt
/// `num_inference_step` would otherwise run with the default, silently.
/// For REST's `/api/generate`, whose fields the OpenAPI document lists;
/// the seed's JSON-RPC methods stay as lenient as the seed is.
pub fn check_known_fields(params: &Value) -> Result<(), String> {
    let Value::Object(top) = params else {
        return Ok(()); // spec_request reports the shape
    };
    let known = |name: &str, names: &[&str]| names.contains(&name);
    if let Some(name) = top
        .keys()
        .find(|k| !known(k, TOP_LEVEL_FIELDS) && !known(k, SETTINGS_FIELDS))
    {
        return Err(format!(
            "unknown field {name:?}; the fields are {} and the settings {}",
            TOP_LEVEL_FIELDS.join(", "),
            SETTINGS_FIELDS.join(", ")
        ));
    }
    if let Some(Value::Object(settings)) = top.get("settings") {
        if let Some(name) = settings.keys().find(|k| !known(k, SETTINGS_FIELDS)) {
            return Err(format!(
                "unknown field settings.{name}; the settings are {}",
                SETTINGS_FIELDS.join(", ")
            ));
        }
    }
    Ok(())
}

/// A picture named by a gallery image id or base64, in `settings` or at
/// the top level.
fn image_ref(
    top: &Map<String, Value>,
    settings: Option<&Map<String, Value>>,
    field: &str,
) -> Result<Option<String>, String> {
    match lookup(top, settings, &[field]) {
        None => Ok(None),
        Some((Value::String(s), _)) => Ok(Some(s.clone())),
        Some((_, name)) => Err(format!("{name} must be a string (an image id or base64)")),
    }
}

pub fn spec_request(params: &Value) -> Result<SpecRequest, String> {
    let top = match params {
        Value::Object(m) => m,
        _ => return Err("params must be an object".into()),
    };
    let settings = match top.get("settings") {
        None | Some(Value::Null) => None,
        Some(Value::Object(s)) => Some(s),
        Some(_) => return Err("settings must be an object".into()),
    };
    let int = |names: &[&str]| -> Result<Option<i64>, String> {
        lookup(top, settings, names)
            .map(|(v, name)| integer(v, &name))
            .transpose()
    };
    // CyberImage's own REST clients name the model `model_id`; the seed's
    // methods name it `model`. Either, or both if they agree.
    let model = match (text(top, "model")?, text(top, "model_id")?) {
        (Some(a), Some(b)) if a != b => {
            return Err(format!(
                "model ({a:?}) and model_id ({b:?}) name different models; send one"
            ))
        }
        (model, model_id) => model.or(model_id),
    };
    Ok(SpecRequest {
        prompt: text(top, "prompt")?,
        negative_prompt: text(top, "negative_prompt")?,
        model,
        width: int(&["width"])?,
        height: int(&["height"])?,
        steps: int(&["num_inference_steps", "steps"])?,
        num_images: int(&["num_images"])?,
        seed: int(&["seed"])?,
        guidance_scale: lookup(top, settings, &["guidance_scale", "guidance"])
            .map(|(v, name)| number(v, &name))
            .transpose()?,
        // Image-to-image: an image id or base64, and A1111's name for the
        // strength too.
        init_image: image_ref(top, settings, "init_image")?,
        strength: lookup(top, settings, &["strength", "denoising_strength"])
            .map(|(v, name)| number(v, &name))
            .transpose()?,
        outpaint: match lookup(top, settings, &["outpaint"]) {
            None => None,
            Some((Value::Object(o), name)) => {
                let side = |k: &str| -> Result<i64, String> {
                    match o.get(k) {
                        None | Some(Value::Null) => Ok(0),
                        Some(v) => integer(v, &format!("{name}.{k}")),
                    }
                };
                if let Some(other) = o
                    .keys()
                    .find(|k| !["left", "right", "top", "bottom"].contains(&k.as_str()))
                {
                    return Err(format!(
                        "unknown field {name}.{other}; the sides are left, right, top, bottom"
                    ));
                }
                Some(cyberimage_core::Outpaint {
                    left: side("left")?,
                    right: side("right")?,
                    top: side("top")?,
                    bottom: side("bottom")?,
                })
            }
            Some((_, name)) => {
                return Err(format!(
                "{name} must be an object: {{\"left\", \"right\", \"top\", \"bottom\"}} in pixels"
            ))
            }
        },
        // Inpainting: white where the model repaints.
        mask_image: image_ref(top, settings, "mask_image")?,
        mask_blur: int(&["mask_blur"])?,
        keep_unmasked: match lookup(top, settings, &["keep_unmasked"]) {
            None => None,
            Some((Value::Bool(b), _)) => Some(*b),
            Some((_, name)) => return Err(format!("{name} must be true or false")),
        },
        loras: match lookup(top, settings, &["loras"]) {
            None => Vec::new(),
            Some((value, name)) => lora_list(value, &name)?,
        },
        hires: match lookup(top, settings, &["hires"]) {
            None => None,
            Some((value, name)) => Some(hires(value, &name)?),
        },
    })
}

/// The JSON schema of the `hires` object, for the MCP tools and the
/// OpenAPI document.
pub(crate) fn hires_schema(limits: &cyberimage_core::Limits) -> Value {
    serde_json::json!({"type": "object", "additionalProperties": false,
           "properties": {
               "scale": {"type": "number", "minimum": 1, "maximum": cyberimage_core::hires::MAX_HIRES_SCALE, "default": cyberimage_core::hires::DEFAULT_HIRES_SCALE,
                         "description": "Final size over the first pass's."},
               "width": {"type": "integer", "minimum": 0, "maximum": limits.max_dimension, "description": "Final width instead of scale (0: from scale); one side alone keeps the proportions."},
               "height": {"type": "integer", "minimum": 0, "maximum": limits.max_dimension, "description": "Final height instead of scale."},
               "steps": {"type": "integer", "minimum": 0, "maximum": limits.max_steps, "description": "The second pass's schedule (0 or omitted: the first pass's steps); strength × steps of it run."},
               "strength": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": cyberimage_core::hires::DEFAULT_HIRES_STRENGTH,
                            "description": "How much the second pass may change the enlarged picture."},
               "upscaler": {"type": "string", "default": cyberimage_core::hires::LANCZOS, "description": "An upscaler to enlarge with, named as upscale_image takes it (GET /api/upscalers lists them), or lanczos."}},
           "description": "Hires fix: make the picture at the model's size, enlarge it, then denoise it again at the larger size so it keeps its composition and gains detail (AUTOMATIC1111's hires fix). Text-to-image only."})
}

/// The fields of a request's `hires` object.
pub(crate) const HIRES_FIELDS: [&str; 6] =
    ["scale", "width", "height", "steps", "strength", "upscaler"];

/// `{"scale", "width", "height", "steps", "strength", "upscaler"}`, each
/// optional (`true` alone: every default).
fn hires(value: &Value, name: &str) -> Result<HiresRequest, String> {
    let o = match value {
        Value::Bool(true) => return Ok(HiresRequest::default()),
        Value::Object(o) => o,
        _ => {
            return Err(format!(
                "{name} must be an object {{{}}} (each optional) or true",
                HIRES_FIELDS.join(", ")
            ))
        }
    };
    if let Some(other) = o.keys().find(|k| !HIRES_FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown field {name}.{other}; the fields are {}",
            HIRES_FIELDS.join(", ")
        ));
    }
    let field = |k: &str| o.get(k).filter(|v| !v.is_null());
    let int = |k: &str| {
        field(k)
            .map(|v| integer(v, &format!("{name}.{k}")))
            .transpose()
    };
    let num = |k: &str| {
        field(k)
            .map(|v| number(v, &format!("{name}.{k}")))
            .transpose()
    };
    Ok(HiresRequest {
        scale: num("scale")?,
        width: int("width")?,
        height: int("height")?,
        steps: int("steps")?,
        strength: num("strength")?,
        upscaler: text(o, "upscaler")
            .map_err(|_| format!("{name}.upscaler must be a string (an upscaler's name)"))?,
    })
}

/// `[{"name": "…", "weight": 0.8}]`, or `["name", …]` (weight 1), or an
/// object `{"name": weight}`, the three shapes clients send.
fn lora_list(value: &Value, name: &str) -> Result<Vec<LoraRequest>, String> {
    let one = |v: &Value, at: String| -> Result<LoraRequest, String> {
        match v {
            Value::String(lora) => Ok(LoraRequest {
                name: lora.clone(),
                weight: None,
            }),
            Value::Object(o) => {
                if let Some(other) = o.keys().find(|k| !["name", "weight"].contains(&k.as_str())) {
                    return Err(format!(
                        "unknown field {at}.{other}; a LoRA has name and weight"
                    ));
                }
                Ok(LoraRequest {
                    name: match o.get("name") {
                        Some(Value::String(n)) => n.clone(),
                        _ => return Err(format!("{at}.name must be a string")),
                    },
                    weight: match o.get("weight") {
                        None | Some(Value::Null) => None,
                        Some(w) => Some(number(w, &format!("{at}.weight"))?),
                    },
                })
            }
            _ => Err(format!(
                "{at} must be a LoRA name or {{\"name\", \"weight\"}}"
            )),
        }
    };
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| one(v, format!("{name}[{i}]")))
            .collect(),
        Value::Object(map) => map
            .iter()
            .map(|(lora, w)| {
                Ok(LoraRequest {
                    name: lora.clone(),
                    weight: Some(number(w, &format!("{name}.{lora}"))?),
                })
            })
            .collect(),
        _ => Err(format!("{name} must be a list of {{\"name\", \"weight\"}}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seed_shape_and_flat_shape_agree() {
        let nested = spec_request(&json!({
            "prompt": "p", "model": "m",
            "settings": {"num_images": 2, "num_inference_steps": 30, "guidance_scale": 7.5, "height": 1024, "width": 512}
        }))
        .unwrap();
        let flat = spec_request(&json!({
            "prompt": "p", "model": "m", "num_images": 2, "steps": 30, "guidance_scale": 7.5, "height": 1024, "width": 512
        }))
        .unwrap();
        assert_eq!(nested, flat);
        assert_eq!(nested.width, Some(512));
        assert_eq!(nested.guidance_scale, Some(7.5));
    }

    #[test]
    fn model_id_names_the_model_as_cyberimage_rest_clients_send_it() {
        let by_id = spec_request(&json!({"prompt": "p", "model_id": "sd-3.5"})).unwrap();
        assert_eq!(by_id.model.as_deref(), Some("sd-3.5"));
        let both = spec_request(&json!({"prompt": "p", "model": "a", "model_id": "a"})).unwrap();
        assert_eq!(both.model.as_deref(), Some("a"));
        let clash =
            spec_request(&json!({"prompt": "p", "model": "a", "model_id": "b"})).unwrap_err();
        assert!(clash.contains("model_id"), "{clash}");
        let wrong = spec_request(&json!({"prompt": "p", "model_id": 3})).unwrap_err();
        assert_eq!(wrong, "model_id must be a string");
    }

    #[test]
    fn unknown_fields_are_named_and_known_ones_pass() {
        let ok = json!({"prompt": "p", "model_id": "m", "steps": 3,
                        "settings": {"num_inference_steps": 4, "seed": -1, "guidance": 2}});
        assert_eq!(check_known_fields(&ok), Ok(()));
        let top = check_known_fields(&json!({"prompt": "p", "sampler": "euler"})).unwrap_err();
        assert!(top.starts_with("unknown field \"sampler\""), "{top}");
        let nested =
            check_known_fields(&json!({"prompt": "p", "settings": {"num_inference_step": 4}}))
                .unwrap_err();
        assert!(
            nested.starts_with("unknown field settings.num_inference_step"),
            "{nested}"
        );
        // Every field spec_request reads is known.
        let all: Map<String, Value> = TOP_LEVEL_FIELDS
            .iter()
            .chain(SETTINGS_FIELDS)
            .map(|f| (f.to_string(), Value::Null))
            .collect();
        assert_eq!(check_known_fields(&Value::Object(all)), Ok(()));
    }

    #[test]
    fn wrong_types_name_the_field() {
        for (params, needle) in [
            (json!([1, 2]), "params must be an object"),
            (json!({"prompt": 5}), "prompt must be a string"),
            (
                json!({"prompt": "p", "settings": 3}),
                "settings must be an object",
            ),
            (
                json!({"prompt": "p", "settings": {"width": "512"}}),
                "settings.width must be an integer",
            ),
            (
                json!({"prompt": "p", "settings": {"width": 512.5}}),
                "settings.width must be an integer",
            ),
            (
                json!({"prompt": "p", "guidance_scale": "high"}),
                "guidance_scale must be a number",
            ),
        ] {
            let err = spec_request(&params).unwrap_err();
            assert!(err.contains(needle), "{params}: {err}");
        }
    }

    #[test]
    fn huge_numbers_saturate_into_range_errors() {
        let r =
            spec_request(&json!({"prompt": "p", "width": 1e300, "seed": 18446744073709551615u64}))
                .unwrap();
        assert_eq!(r.width, Some(i64::MAX));
        assert_eq!(r.seed, Some(i64::MAX));
    }
}
