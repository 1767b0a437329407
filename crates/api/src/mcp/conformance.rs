//! The official MCP conformance suite's fixtures (`test_*` tools,
//! `test://` resources, `test_*` prompts), served only with
//! `cyberimage serve --conformance-fixtures`: off by default, never in
//! production, there so the suite (`@modelcontextprotocol/conformance`)
//! can score the scenarios that call them. They touch no job, image or
//! engine. What each returns is what the suite's scenario descriptions
//! ask for.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use super::{protocol, CallContext, McpError, Outcome};

/// A 1×1 red PNG.
fn red_pixel_png() -> Vec<u8> {
    let mut png = Vec::new();
    image::RgbImage::from_pixel(1, 1, image::Rgb([255, 0, 0]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("a 1x1 PNG encodes");
    png
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A WAV file of 8 silent 8-bit mono samples at 8 kHz.
fn silent_wav() -> Vec<u8> {
    let samples = [128u8; 8];
    let mut wav = Vec::new();
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + samples.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&8000u32.to_le_bytes());
    wav.extend_from_slice(&8000u32.to_le_bytes()); // bytes per second
    wav.extend_from_slice(&1u16.to_le_bytes()); // block align
    wav.extend_from_slice(&8u16.to_le_bytes()); // bits per sample
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(samples.len() as u32).to_le_bytes());
    wav.extend_from_slice(&samples);
    wav
}

fn no_args() -> Value {
    json!({"type": "object", "properties": {}})
}

pub fn tool_definitions() -> Vec<Value> {
    let tool = |name: &str, description: &str| json!({"name": name, "description": description, "inputSchema": no_args()});
    vec![
        tool("test_simple_text", "Conformance fixture: one text block."),
        tool("test_image_content", "Conformance fixture: a 1×1 PNG."),
        tool("test_audio_content", "Conformance fixture: a short WAV."),
        tool(
            "test_embedded_resource",
            "Conformance fixture: an embedded text resource.",
        ),
        tool(
            "test_multiple_content_types",
            "Conformance fixture: text, image and resource.",
        ),
        tool(
            "test_error_handling",
            "Conformance fixture: always an isError result.",
        ),
        tool(
            "test_tool_with_progress",
            "Conformance fixture: progress 0, 50, 100 of 100.",
        ),
        tool(
            "test_tool_with_logging",
            "Conformance fixture: three log messages.",
        ),
        json!({"name": "test_custom_header",
               "description": "Conformance fixture: its region travels in the Mcp-Param-Region header too.",
               "inputSchema": {"type": "object", "required": ["region"],
                               "properties": {"region": {"type": "string", "x-mcp-header": "Region"}}}}),
        json!({"name": "json_schema_2020_12_tool",
               "description": "Tool with JSON Schema 2020-12 features",
               "inputSchema": json_schema_2020_12()}),
    ]
}

/// The suite's JSON Schema 2020-12 input schema, kept keyword for keyword.
fn json_schema_2020_12() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {"address": {"$anchor": "addressDef", "type": "object",
                              "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
        "properties": {
            "name": {"type": "string"},
            "address": {"$ref": "#/$defs/address"},
            "contactMethod": {"type": "string", "enum": ["phone", "email"]},
            "phone": {"type": "string"},
            "email": {"type": "string"}
        },
        "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
        "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
        "then": {"required": ["phone"]},
        "else": {"required": ["email"]},
        "additionalProperties": false
    })
}

fn text(t: &str) -> Value {
    json!({"type": "text", "text": t})
}

/// `None` when `name` is not a fixture tool.
pub async fn call_tool(ctx: &CallContext, name: &str) -> Option<Value> {
    let png = json!({"type": "image", "data": b64(&red_pixel_png()), "mimeType": "image/png"});
    let content = match name {
        "test_simple_text" => vec![text("This is a simple text response for testing.")],
        "test_image_content" => vec![png],
        "test_audio_content" => {
            vec![json!({"type": "audio", "data": b64(&silent_wav()), "mimeType": "audio/wav"})]
        }
        "test_embedded_resource" => vec![json!({"type": "resource", "resource": {
            "uri": "test://embedded-resource", "mimeType": "text/plain",
            "text": "This is an embedded resource content."}})],
        "test_multiple_content_types" => vec![
            text("Multiple content types test:"),
            png,
            json!({"type": "resource", "resource": {"uri": "test://mixed-content-resource",
                   "mimeType": "application/json", "text": "{\"test\":\"data\",\"value\":123}"}}),
        ],
        "test_custom_header" => vec![text("The region header matched the argument.")],
        "test_error_handling" => {
            return Some(json!({"isError": true, "content": [
                text("This tool intentionally returns an error for testing")]}))
        }
        "test_tool_with_progress" => {
            for (i, step) in [0.0, 50.0, 100.0].into_iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                ctx.progress(step, 100.0, "conformance progress");
            }
            vec![text("Progress test completed")]
        }
        "test_tool_with_logging" => {
            let messages = [
                "Tool execution started",
                "Tool processing data",
                "Tool execution completed",
            ];
            for (i, message) in messages.into_iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if let Some(notify) = &ctx.notify {
                    let params = json!({"level": "info", "logger": "conformance", "data": message});
                    let _ = notify.send(protocol::notification("notifications/message", params));
                }
            }
            vec![text("Logging test completed")]
        }
        _ => return None,
    };
    Some(json!({"content": content, "isError": false}))
}

pub fn resources() -> Vec<Value> {
    vec![
        json!({"uri": "test://static-text", "name": "static-text", "mimeType": "text/plain"}),
        json!({"uri": "test://static-binary", "name": "static-binary", "mimeType": "image/png"}),
        json!({"uri": "test://watched-resource", "name": "watched-resource", "mimeType": "text/plain"}),
    ]
}

pub fn resource_templates() -> Vec<Value> {
    vec![
        json!({"uriTemplate": "test://template/{id}/data", "name": "template-data",
                "mimeType": "application/json"}),
    ]
}

/// `None` when `uri` is not a fixture resource.
pub fn read_resource(uri: &str) -> Option<Value> {
    let content = match uri {
        "test://static-text" => json!({"uri": uri, "mimeType": "text/plain",
            "text": "This is the content of the static text resource."}),
        "test://static-binary" => {
            json!({"uri": uri, "mimeType": "image/png", "blob": b64(&red_pixel_png())})
        }
        "test://watched-resource" => {
            json!({"uri": uri, "mimeType": "text/plain", "text": "Watched resource content."})
        }
        _ => {
            let id = uri
                .strip_prefix("test://template/")?
                .strip_suffix("/data")
                .filter(|id| !id.is_empty() && !id.contains('/'))?;
            let data =
                json!({"id": id, "templateTest": true, "data": format!("Data for ID: {id}")});
            json!({"uri": uri, "mimeType": "application/json", "text": data.to_string()})
        }
    };
    Some(json!({"contents": [content]}))
}

pub fn prompts() -> Vec<Value> {
    let arg = |name: &str, description: &str| json!({"name": name, "description": description, "required": true});
    vec![
        json!({"name": "test_simple_prompt", "description": "Conformance fixture: a simple prompt."}),
        json!({"name": "test_prompt_with_arguments", "description": "Conformance fixture: two arguments.",
               "arguments": [arg("arg1", "First test argument"), arg("arg2", "Second test argument")]}),
        json!({"name": "test_prompt_with_embedded_resource", "description": "Conformance fixture: an embedded resource.",
               "arguments": [arg("resourceUri", "URI of the resource to embed")]}),
        json!({"name": "test_prompt_with_image", "description": "Conformance fixture: an image."}),
    ]
}

/// `None` when `name` is not a fixture prompt.
pub fn get_prompt(name: &str, args: Option<&Value>) -> Option<Result<Value, Outcome>> {
    let arg = |key: &str| {
        args.and_then(|a| a.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let user = |content: Value| json!({"role": "user", "content": content});
    let messages = match name {
        "test_simple_prompt" => vec![user(text("This is a simple prompt for testing."))],
        "test_prompt_with_arguments" => {
            let (Some(a), Some(b)) = (arg("arg1"), arg("arg2")) else {
                return Some(Err(
                    McpError::invalid_params("arg1 and arg2 are required").into()
                ));
            };
            vec![user(text(&format!(
                "Prompt with arguments: arg1='{a}', arg2='{b}'"
            )))]
        }
        "test_prompt_with_embedded_resource" => {
            let Some(uri) = arg("resourceUri") else {
                return Some(Err(
                    McpError::invalid_params("resourceUri is required").into()
                ));
            };
            vec![
                user(
                    json!({"type": "resource", "resource": {"uri": uri, "mimeType": "text/plain",
                             "text": "Embedded resource content for testing."}}),
                ),
                user(text("Please process the embedded resource above.")),
            ]
        }
        "test_prompt_with_image" => vec![
            user(json!({"type": "image", "data": b64(&red_pixel_png()), "mimeType": "image/png"})),
            user(text("Please analyze the image above.")),
        ],
        _ => return None,
    };
    Some(Ok(json!({"messages": messages})))
}

/// Completion values for the fixture prompt's `arg1` (the suite only
/// checks the shape).
pub fn complete(prompt: &str, argument: &str) -> Option<Vec<String>> {
    (prompt == "test_prompt_with_arguments" && argument == "arg1").then(|| {
        ["paris", "park", "party"]
            .into_iter()
            .map(str::to_owned)
            .collect()
    })
}
