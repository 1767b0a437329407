//! The LoRAs a request asks for: a `loras` list (`[{"name", "weight"}]`)
//! and AUTOMATIC1111's prompt syntax `<lora:NAME:WEIGHT>` (`<lora:NAME>`
//! is weight 1; a third field, A1111's separate text-encoder weight, is
//! refused rather than misread), which is taken out of the prompt as A1111
//! does. Names are checked here; whether the file exists and what it
//! hashes to is the jobs service's business.

use serde::{Deserialize, Serialize};

use crate::spec::{LoraRef, ValidationError};

/// At most this many LoRAs in one job.
pub const MAX_LORAS: usize = 8;
/// Weights outside ±this are refused (A1111's UI slider spans ±2; files
/// trained weak are used up to about 4).
pub const MAX_LORA_WEIGHT: f64 = 10.0;
pub const MAX_NAME_CHARS: usize = 128;

/// One entry of a request's `loras` list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraRequest {
    pub name: String,
    /// Default 1.
    #[serde(default)]
    pub weight: Option<f64>,
}

/// A LoRA name as it may name a file in `loras/`: letters, digits, `-`,
/// `_`, `.` and spaces, not starting with a dot, no path separators.
pub fn check_lora_name(name: &str) -> Result<(), ValidationError> {
    let fine = !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && !name.starts_with('.')
        && name.trim() == name
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ' | '+'));
    if fine {
        Ok(())
    } else {
        Err(ValidationError::new(
            "loras",
            format!(
                "{name:?} is not a LoRA name: up to {MAX_NAME_CHARS} letters, digits, '-', '_', \
                 '.', '+' or spaces, not starting with '.' (the file name in loras/ without \
                 .safetensors)"
            ),
        ))
    }
}

/// `prompt` without its `<lora:…>` tags, and the tags' LoRAs in order.
pub fn take_prompt_loras(prompt: &str) -> Result<(String, Vec<LoraRequest>), ValidationError> {
    let mut rest = String::with_capacity(prompt.len());
    let mut found = Vec::new();
    let mut tail = prompt;
    while let Some(start) = tail.find("<lora:") {
        rest.push_str(&tail[..start]);
        let after = &tail[start + "<lora:".len()..];
        let end = after.find('>').ok_or_else(|| {
            ValidationError::new(
                "prompt",
                "a <lora:NAME:WEIGHT> tag in the prompt is not closed",
            )
        })?;
        let fields: Vec<&str> = after[..end].split(':').collect();
        let weight = match fields[..] {
            [_] => None,
            [_, weight] => Some(weight.trim().parse::<f64>().map_err(|_| {
                ValidationError::new(
                    "prompt",
                    format!("<lora:{}>: {weight:?} is not a weight", &after[..end]),
                )
            })?),
            _ => {
                return Err(ValidationError::new(
                    "prompt",
                    format!(
                        "<lora:{}>: only <lora:NAME> and <lora:NAME:WEIGHT> are supported \
                         (not separate text-encoder and UNet weights)",
                        &after[..end]
                    ),
                ))
            }
        };
        found.push(LoraRequest {
            name: fields[0].trim().to_string(),
            weight,
        });
        tail = &after[end + 1..];
    }
    rest.push_str(tail);
    Ok((rest.split_whitespace().collect::<Vec<_>>().join(" "), found))
}

/// The request's LoRAs, checked (the digest is filled in later).
pub fn resolve_loras(requests: Vec<LoraRequest>) -> Result<Vec<LoraRef>, ValidationError> {
    if requests.len() > MAX_LORAS {
        return Err(ValidationError::new(
            "loras",
            format!("{} LoRAs; at most {MAX_LORAS} in one job", requests.len()),
        ));
    }
    let mut loras: Vec<LoraRef> = Vec::with_capacity(requests.len());
    for request in requests {
        check_lora_name(&request.name)?;
        let weight = request.weight.unwrap_or(1.0);
        if !weight.is_finite() || weight.abs() > MAX_LORA_WEIGHT {
            return Err(ValidationError::new(
                "loras",
                format!(
                    "LoRA {:?}: weight {weight} is outside -{MAX_LORA_WEIGHT}..{MAX_LORA_WEIGHT}",
                    request.name
                ),
            ));
        }
        if loras.iter().any(|l| l.name == request.name) {
            return Err(ValidationError::new(
                "loras",
                format!("LoRA {:?} is asked for twice", request.name),
            ));
        }
        loras.push(LoraRef {
            name: request.name,
            weight: weight as f32,
            sha256: String::new(),
        });
    }
    Ok(loras)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_tags_are_taken_out_and_checked() {
        let (prompt, loras) =
            take_prompt_loras("a cat <lora:paper-cut:0.8>, in snow <lora:film grain>").unwrap();
        assert_eq!(prompt, "a cat , in snow");
        assert_eq!(
            loras[0],
            LoraRequest {
                name: "paper-cut".into(),
                weight: Some(0.8)
            }
        );
        assert_eq!(
            loras[1],
            LoraRequest {
                name: "film grain".into(),
                weight: None
            }
        );
        let resolved = resolve_loras(loras).unwrap();
        assert_eq!(resolved[1].weight, 1.0);
        for (bad, says) in [
            ("a <lora:x:0.5", "not closed"),
            ("a <lora:x:lots>", "not a weight"),
            ("a <lora:x:0.5:1>", "only <lora:NAME>"),
        ] {
            let err = take_prompt_loras(bad).unwrap_err();
            assert!(err.message.contains(says), "{bad}: {}", err.message);
        }
    }

    #[test]
    fn names_weights_and_counts_are_limited() {
        let one = |name: &str, weight: f64| LoraRequest {
            name: name.into(),
            weight: Some(weight),
        };
        for name in ["../etc/passwd", "a/b", ".hidden", "", " x", "x\0"] {
            assert!(resolve_loras(vec![one(name, 1.0)]).is_err(), "{name:?}");
        }
        assert!(resolve_loras(vec![one("x", 11.0)])
            .unwrap_err()
            .message
            .contains("outside"));
        assert!(resolve_loras(vec![one("x", f64::NAN)]).is_err());
        assert!(resolve_loras(vec![one("x", 1.0), one("x", 0.5)])
            .unwrap_err()
            .message
            .contains("twice"));
        let many = (0..9).map(|i| one(&format!("l{i}"), 1.0)).collect();
        assert!(resolve_loras(many)
            .unwrap_err()
            .message
            .contains("at most 8"));
        assert_eq!(
            resolve_loras(vec![one("Ghibli_style v2.1", -0.5)]).unwrap()[0].weight,
            -0.5
        );
    }
}
