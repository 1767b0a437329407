//! Where the parity tests find the tiny fixtures and their diffusers
//! reference outputs, and the measure final images are held to.
// Each test binary uses only some of these helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};

/// The tiny SD1.5-class model.
pub fn model_dir() -> PathBuf {
    fixture_dir("tiny-sd15")
}

pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/tiny")
        .join(name)
}

pub fn references_of(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixture_dir(name).join("references.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

pub fn settings_of(name: &str) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixture_dir(name).join("references.json")).unwrap(),
    )
    .unwrap()
}

pub fn references() -> HashMap<String, Tensor> {
    references_of("tiny-sd15")
}

/// `references.json`: the prompts and settings the references were made with.
pub fn reference_settings() -> serde_json::Value {
    settings_of("tiny-sd15")
}

/// Final images: within 1/255 on at least 99% of pixel values.
pub fn assert_images_close(image: &candle_core::Tensor, expected: &candle_core::Tensor) {
    assert_eq!(image.dims(), expected.dims());
    let ours = image.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let theirs = expected.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let close = ours
        .iter()
        .zip(&theirs)
        .filter(|(a, b)| (*a - *b).abs() <= 1.0 / 255.0)
        .count();
    let share = close as f64 / ours.len() as f64;
    eprintln!("final image: {:.4}% of values within 1/255", share * 100.0);
    assert!(share >= 0.99, "only {share} within 1/255");
}

/// A stage's output against diffusers': same shape, relative error ≤ `limit`.
pub fn assert_close(name: &str, ours: &Tensor, expected: &Tensor, limit: f32) -> f32 {
    assert_eq!(ours.dims(), expected.dims(), "{name}");
    let err = cyberimage_kernels::relative_error(ours, expected).unwrap();
    eprintln!("{name}: relative error {err:e}");
    assert!(err <= limit, "{name}: relative error {err} > {limit}");
    err
}

/// Follows a denoising run step by step against diffusers' trajectory
/// (latents after each step) and keeps the worst relative error.
pub struct Trajectory<'a> {
    expected: &'a Tensor,
    worst: std::cell::Cell<f32>,
}

impl<'a> Trajectory<'a> {
    pub fn new(expected: &'a Tensor) -> Self {
        Self {
            expected,
            worst: std::cell::Cell::new(0.0),
        }
    }

    /// The step callback: compares, never stops the run.
    pub fn check(&self, step: usize, latents: &Tensor) -> bool {
        let expected = self.expected.get(step - 1).unwrap();
        let err = cyberimage_kernels::relative_error(latents, &expected).unwrap();
        self.worst.set(self.worst.get().max(err));
        true
    }

    /// Every step within 1e-4.
    pub fn assert_close(&self) {
        let worst = self.worst.get();
        eprintln!("worst trajectory relative error {worst:e}");
        assert!(worst <= 1e-4, "trajectory relative error {worst}");
    }
}

/// Our ids for `texts`, one row each, equal transformers' (`expected`).
pub fn assert_token_ids(
    tokenizer: &cyberimage_engine::models::tokenizer::PromptTokenizer,
    texts: &[&str],
    expected: &Tensor,
    label: &str,
) {
    let ours: Vec<Vec<u32>> = texts.iter().map(|t| tokenizer.encode(t).unwrap()).collect();
    let expected = expected
        .to_dtype(candle_core::DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    assert_eq!(ours, expected, "{label}");
}

/// The LoRAs of a reference case (`meta["cases"][case]`: name → weight),
/// read from the tiny model's `loras/` folder.
pub fn lora_case(
    model: &str,
    meta: &serde_json::Value,
    case: &str,
) -> Vec<cyberimage_engine::weights::lora_merge::LoraUse> {
    use cyberimage_engine::weights::lora::LoraFile;
    meta["cases"][case]
        .as_object()
        .unwrap()
        .iter()
        .map(
            |(name, weight)| cyberimage_engine::weights::lora_merge::LoraUse {
                id: name.clone(),
                file: std::sync::Arc::new(
                    LoraFile::read(
                        &fixture_dir(model)
                            .join("loras")
                            .join(format!("{name}.safetensors")),
                    )
                    .unwrap(),
                ),
                strength: weight.as_f64().unwrap(),
            },
        )
        .collect()
}
