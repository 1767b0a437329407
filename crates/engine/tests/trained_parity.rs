//! Parity with diffusers on TRAINED weights: the built-in `shapes-64`
//! (fixtures/trained/, training/train_shapes.py) draws, for each reference
//! prompt, the same picture in our engine as in diffusers (within 1/255),
//! from the same initial latents, 20 DDIM steps at guidance 7. References:
//! training/references.py. What the pictures show is checked by the
//! semantic test (tests/semantic/test_shapes_model.py).

mod support;

use candle_core::{Device, Tensor};
use cyberimage_engine::pipelines::sd::StableDiffusion;
use std::collections::HashMap;
use std::path::PathBuf;
use support::assert_images_close;

fn folder() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/trained/shapes-64")
}

#[test]
fn shapes_64_draws_what_diffusers_draws() {
    let refs: HashMap<String, Tensor> =
        candle_core::safetensors::load(folder().join("references.safetensors"), &Device::Cpu)
            .unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder().join("references.json")).unwrap())
            .unwrap();
    let steps = meta["steps"].as_u64().unwrap() as usize;
    let guidance = meta["guidance_scale"].as_f64().unwrap();
    let sd = StableDiffusion::load(&folder(), &Device::Cpu).unwrap();
    let prompts = meta["prompts"].as_array().unwrap();
    assert!(
        prompts.len() >= 3,
        "the references hold {} prompts",
        prompts.len()
    );
    for (i, entry) in prompts.iter().enumerate() {
        let prompt = entry["prompt"].as_str().unwrap();
        let negative = entry["negative_prompt"].as_str().filter(|n| !n.is_empty());
        let context = sd.encode_for_guidance(prompt, negative, guidance).unwrap();
        let latents = sd
            .denoise(
                &context,
                refs[&format!("{i}.initial_latents")].clone(),
                steps,
                guidance,
                &mut |_| panic!("DDIM draws no noise"),
                &mut |_, _| true,
            )
            .unwrap()
            .unwrap();
        eprintln!("{prompt:?}:");
        assert_images_close(
            &sd.decode_unit(&latents).unwrap(),
            &refs[&format!("{i}.final_image")],
        );
    }
}
