//! Reading generation parameters back out of a PNG: our versioned
//! `cyberimage` JSON chunk when present, else the A1111 `parameters` text
//! that Stable Diffusion web UI, Forge, SwarmUI and Civitai write.

use serde::Serialize;
use serde_json::{Map, Value};

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PngInfo {
    /// `cyberimage` or `a1111`.
    pub source: &'static str,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub steps: Option<u64>,
    pub sampler: Option<String>,
    pub guidance_scale: Option<f64>,
    pub seed: Option<u64>,
    pub width: Option<u64>,
    pub height: Option<u64>,
    pub model: Option<String>,
    pub model_hash: Option<String>,
    /// Settings of the A1111 line we do not map to a field.
    pub extra: Map<String, Value>,
    /// Our JSON record as written, when the image is ours.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cyberimage: Option<Value>,
}

/// A PNG's text chunks, keyword and text, in file order.
pub type TextChunks = Vec<(String, String)>;

/// Reads a PNG's text chunks and parses them: `Ok(None)` when the PNG
/// carries no generation parameters, `Err` when it is not a PNG.
pub fn png_info_from_bytes(
    png: &[u8],
) -> Result<(Option<PngInfo>, TextChunks), cyberimage_store::StoreError> {
    let chunks = cyberimage_store::read_png_text(png)?;
    Ok((parse_png_info(&chunks), chunks))
}

/// Parses the text chunks of a PNG; `None` when none carries parameters.
pub fn parse_png_info(chunks: &[(String, String)]) -> Option<PngInfo> {
    let text = |key: &str| {
        chunks
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let a1111 = text("parameters").map(parse_a1111);
    let ours = text("cyberimage").and_then(|t| serde_json::from_str::<Value>(t).ok());
    match ours {
        Some(json) if json.is_object() => {
            let base = a1111.unwrap_or_default();
            let str_field = |k: &str| json[k].as_str().map(str::to_owned);
            Some(PngInfo {
                source: "cyberimage",
                prompt: str_field("prompt").unwrap_or(base.prompt),
                negative_prompt: str_field("negative_prompt").or(base.negative_prompt),
                steps: json["steps"].as_u64().or(base.steps),
                sampler: json["engine"]["sampler"]
                    .as_str()
                    .map(str::to_owned)
                    .or(base.sampler),
                guidance_scale: json["guidance_scale"].as_f64().or(base.guidance_scale),
                seed: json["seed"].as_u64().or(base.seed),
                width: json["width"].as_u64().or(base.width),
                height: json["height"].as_u64().or(base.height),
                model: str_field("model").or(base.model),
                model_hash: str_field("weights_sha256").or(base.model_hash),
                extra: base.extra,
                cyberimage: Some(json),
            })
        }
        _ => a1111,
    }
}

/// `prompt\nNegative prompt: …\nSteps: 20, Sampler: Euler a, …`; the
/// prompt and the negative prompt may span lines, the settings line is last.
pub fn parse_a1111(text: &str) -> PngInfo {
    let mut lines: Vec<&str> = text.lines().collect();
    let settings = match lines.last() {
        Some(last) if last.trim_start().starts_with("Steps: ") => lines.pop(),
        _ => None,
    };
    let neg_at = lines.iter().position(|l| l.starts_with("Negative prompt:"));
    let (prompt_lines, negative) = match neg_at {
        Some(i) => {
            let first = lines[i]["Negative prompt:".len()..].trim_start();
            let rest = &lines[i + 1..];
            let negative = std::iter::once(first)
                .chain(rest.iter().copied())
                .collect::<Vec<_>>()
                .join("\n");
            (&lines[..i], Some(negative))
        }
        None => (&lines[..], None),
    };
    let mut info = PngInfo {
        source: "a1111",
        prompt: prompt_lines.join("\n").trim().to_owned(),
        negative_prompt: negative.map(|n| n.trim().to_owned()),
        ..Default::default()
    };
    for (key, value) in settings.map(settings_pairs).unwrap_or_default() {
        match key.as_str() {
            "Steps" => info.steps = value.parse().ok(),
            "Sampler" => info.sampler = Some(value),
            "CFG scale" => info.guidance_scale = value.parse().ok(),
            "Seed" => info.seed = value.parse().ok(),
            "Size" => {
                if let Some((w, h)) = value.split_once('x') {
                    info.width = w.trim().parse().ok();
                    info.height = h.trim().parse().ok();
                }
            }
            "Model" => info.model = Some(value),
            "Model hash" => info.model_hash = Some(value),
            _ => {
                info.extra.insert(key, Value::String(value));
            }
        }
    }
    info
}

/// `Key: value, Key: "quoted, value", …` as A1111 writes it.
fn settings_pairs(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let Some(colon) = rest.find(": ") else { break };
        let key = rest[..colon].trim().to_owned();
        rest = &rest[colon + 2..];
        let value;
        if let Some(quoted) = rest.strip_prefix('"') {
            // Up to the closing quote that is not escaped.
            let mut end = None;
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        end = Some(i);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            let end = end.unwrap_or(quoted.len());
            value = quoted[..end].replace("\\\"", "\"");
            rest = quoted.get(end + 1..).unwrap_or("");
            rest = rest
                .trim_start()
                .strip_prefix(',')
                .unwrap_or(rest)
                .trim_start();
        } else {
            let end = rest.find(", ").unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = rest.get(end + 2..).unwrap_or("").trim_start();
        }
        out.push((key, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a1111_text_with_multiline_prompts_and_quoted_values() {
        let info = parse_a1111(
            "a cat,\nsitting\nNegative prompt: ugly,\nblurry\nSteps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.5, \
             Seed: 42, Size: 512x768, Model hash: abcdef0123, Model: sd15, Lora hashes: \"a: 1, b: 2\", Clip skip: 2",
        );
        assert_eq!(info.prompt, "a cat,\nsitting");
        assert_eq!(info.negative_prompt.as_deref(), Some("ugly,\nblurry"));
        assert_eq!(info.steps, Some(30));
        assert_eq!(info.sampler.as_deref(), Some("DPM++ 2M Karras"));
        assert_eq!(info.guidance_scale, Some(7.5));
        assert_eq!((info.width, info.height), (Some(512), Some(768)));
        assert_eq!(info.model_hash.as_deref(), Some("abcdef0123"));
        assert_eq!(info.extra["Lora hashes"], "a: 1, b: 2");
        assert_eq!(info.extra["Clip skip"], "2");
    }

    #[test]
    fn prompt_only_and_no_negative() {
        let info = parse_a1111("just a prompt");
        assert_eq!(info.prompt, "just a prompt");
        assert_eq!(info.negative_prompt, None);
        assert_eq!(info.steps, None);
        let info = parse_a1111("p\nSteps: 4, Seed: 1");
        assert_eq!((info.prompt.as_str(), info.seed), ("p", Some(1)));
    }

    #[test]
    fn our_json_wins_over_the_text() {
        let chunks = vec![
            ("parameters".to_owned(), "p\nSteps: 4, Sampler: DDIM, Seed: 1".to_owned()),
            (
                "cyberimage".to_owned(),
                r#"{"version":1,"prompt":"p","seed":9,"steps":4,"width":64,"height":64,"engine":{"sampler":"DDIM"}}"#
                    .to_owned(),
            ),
        ];
        let info = parse_png_info(&chunks).unwrap();
        assert_eq!(info.source, "cyberimage");
        assert_eq!(info.seed, Some(9));
        assert_eq!(info.sampler.as_deref(), Some("DDIM"));
        assert!(parse_png_info(&[("Software".into(), "x".into())]).is_none());
    }
}
