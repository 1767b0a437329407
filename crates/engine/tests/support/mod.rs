//! Where the parity tests find the tiny SD1.5-class fixture and its
//! diffusers reference outputs.
// Each test binary uses only some of these helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};

pub fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny/tiny-sd15")
}

pub fn references() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(model_dir().join("references.safetensors"), &Device::Cpu)
        .unwrap()
}

/// `references.json`: the prompts and settings the references were made with.
pub fn reference_settings() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(model_dir().join("references.json")).unwrap())
        .unwrap()
}
