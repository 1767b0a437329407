//! LoRA parity with diffusers on the tiny SD 1.5 and SDXL models: two
//! random LoRAs each, one in kohya's format (alpha 2 of rank 4, LoCon
//! convolutions included; SDXL's adapts the UNet only) and one in PEFT's
//! (SDXL's with both text encoders), alone and together (one at a negative weight),
//! against diffusers' `load_lora_weights` + `fuse_lora`, recorded by
//! `fixtures/lora_references.py`. Checked: fused weights of the UNet (a
//! Linear and a 3x3 convolution) and of the text encoder, the final
//! picture, that switching LoRAs and back gives the same pictures bit for
//! bit, that the per-prompt text encoders (`drop_text_encoders`) get the
//! LoRA too, and that a LoRA for another model is refused with nothing
//! merged.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use cyberimage_engine::pipelines::sd::StableDiffusion;
use cyberimage_engine::weights::lora::{Component, LoraFile};
use cyberimage_engine::weights::lora_merge::LoraUse;
use support::{assert_close, assert_images_close, fixture_dir, references_of};

fn model_dir() -> std::path::PathBuf {
    fixture_dir("tiny-sd15")
}

fn references() -> (HashMap<String, Tensor>, serde_json::Value) {
    references_in("tiny-sd15")
}

fn references_in(model: &str) -> (HashMap<String, Tensor>, serde_json::Value) {
    let dir = fixture_dir(model);
    (
        candle_core::safetensors::load(dir.join("lora_references.safetensors"), &Device::Cpu)
            .unwrap(),
        serde_json::from_str(&std::fs::read_to_string(dir.join("lora_references.json")).unwrap())
            .unwrap(),
    )
}

fn lora_set(meta: &serde_json::Value, case: &str) -> Vec<LoraUse> {
    lora_set_in("tiny-sd15", meta, case)
}

fn lora_set_in(model: &str, meta: &serde_json::Value, case: &str) -> Vec<LoraUse> {
    support::lora_case(model, meta, case)
}

fn picture(sd: &StableDiffusion, meta: &serde_json::Value) -> Tensor {
    picture_of("tiny-sd15", sd, meta)
}

fn picture_of(model: &str, sd: &StableDiffusion, meta: &serde_json::Value) -> Tensor {
    let initial = references_of(model)["initial_latents"].clone();
    let guidance = meta["guidance_scale"].as_f64().unwrap();
    let context = sd
        .encode_for_guidance(
            meta["prompt"].as_str().unwrap(),
            meta["negative_prompt"].as_str(),
            guidance,
        )
        .unwrap();
    let latents = sd
        .denoise(
            &context,
            initial,
            meta["steps"].as_u64().unwrap() as usize,
            guidance,
            &mut |_| panic!("DDIM and Euler draw no noise"),
            &mut |_, _| true,
        )
        .unwrap()
        .unwrap();
    sd.decode_unit(&latents).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn merged_loras_match_diffusers_fused_ones_and_come_out_again_exactly() {
    for model in ["tiny-sd15", "tiny-sdxl"] {
        merged_loras_match(model);
    }
}

fn merged_loras_match(model: &str) {
    let (refs, meta) = references_in(model);
    let mut sd = StableDiffusion::load(&fixture_dir(model), &Device::Cpu).unwrap();
    let picture = |sd: &StableDiffusion, meta: &serde_json::Value| picture_of(model, sd, meta);
    let lora_set = |meta: &serde_json::Value, case: &str| lora_set_in(model, meta, case);
    let base = picture(&sd, &meta);
    assert_images_close(&base, &refs["base.image"]);
    let mut pictures = HashMap::new();
    for case in ["kohya", "peft", "both"] {
        sd.set_loras(&lora_set(&meta, case)).unwrap();
        for (component, names) in meta["probes"].as_object().unwrap() {
            let which = match component.as_str() {
                "unet" => Component::Denoiser,
                "text_encoder_2" => Component::TextEncoder(1),
                _ => Component::TextEncoder(0),
            };
            for name in names.as_array().unwrap() {
                let name = name.as_str().unwrap();
                let ours = sd.parameter(which, &format!("{name}.weight")).unwrap();
                assert_close(
                    &format!("{case} {component} {name}"),
                    &ours,
                    &refs[&format!("{case}.{component}.{name}")],
                    1e-5,
                );
            }
        }
        let image = picture(&sd, &meta);
        let moved = flat(&(&image - &base).unwrap().abs().unwrap())
            .iter()
            .filter(|d| **d > 4.0 / 255.0)
            .count();
        assert!(
            moved > 100,
            "{model} {case}: the LoRA changed only {moved} values"
        );
        assert_images_close(&image, &refs[&format!("{case}.image")]);
        pictures.insert(case, flat(&image));
    }
    // Back and forth: the same weights, so the same pictures, bit for bit.
    sd.set_loras(&lora_set(&meta, "kohya")).unwrap();
    assert_eq!(flat(&picture(&sd, &meta)), pictures["kohya"]);
    sd.set_loras(&[]).unwrap();
    assert_eq!(flat(&picture(&sd, &meta)), flat(&base));
}

#[test]
fn text_encoders_loaded_per_prompt_get_the_lora_too() {
    let (refs, meta) = references();
    let mut sd = StableDiffusion::load_with(&model_dir(), &Device::Cpu, false).unwrap();
    sd.set_loras(&lora_set(&meta, "both")).unwrap();
    assert_images_close(&picture(&sd, &meta), &refs["both.image"]);
    let guidance = meta["guidance_scale"].as_f64().unwrap();
    let alone = StableDiffusion::encode_alone(
        &model_dir(),
        &Device::Cpu,
        meta["prompt"].as_str().unwrap(),
        meta["negative_prompt"].as_str(),
        guidance,
        &lora_set(&meta, "both"),
    )
    .unwrap();
    let kept = sd
        .encode_for_guidance(
            meta["prompt"].as_str().unwrap(),
            meta["negative_prompt"].as_str(),
            guidance,
        )
        .unwrap();
    assert_eq!(flat(&alone.context), flat(&kept.context));
}

#[test]
fn a_lora_for_another_model_is_refused_and_nothing_stays_merged() {
    let (_, meta) = references();
    let mut sd = StableDiffusion::load(&model_dir(), &Device::Cpu).unwrap();
    let base = picture(&sd, &meta);
    let mut set = lora_set(&meta, "kohya");
    // The same file with one layer renamed to one an SD 1.5 UNet lacks
    // (SDXL's third down block).
    let mut file = (*set[0].file).clone();
    let last = file.layers.len() - 1;
    file.layers[last].layer = cyberimage_engine::weights::lora::LayerName::Flattened(
        "down_blocks_2_attentions_0_transformer_blocks_9_attn1_to_q".into(),
    );
    file.layers[last].component = Component::Denoiser;
    set[0].file = Arc::new(file);
    let err = sd.set_loras(&set).unwrap_err().to_string();
    assert!(
        err.contains("down_blocks_2_attentions_0_transformer_blocks_9_attn1_to_q"),
        "{err}"
    );
    assert_eq!(flat(&picture(&sd, &meta)), flat(&base), "nothing merged");
    // A LoRA for SDXL's second text encoder.
    let mut file = (*lora_set(&meta, "peft")[0].file).clone();
    file.layers[0].component = Component::TextEncoder(1);
    let sdxl_only = [LoraUse {
        id: "sdxl-lora".into(),
        file: Arc::new(file),
        strength: 1.0,
    }];
    let err = sd.set_loras(&sdxl_only).unwrap_err().to_string();
    assert!(err.contains("text encoder 2"), "{err}");
    assert_eq!(flat(&picture(&sd, &meta)), flat(&base));
}

/// `lora_unet_down_blocks_1_attentions_0_…` as kohya's sd-scripts write the
/// same layer for SDXL: by the original LDM blocks (`input_blocks_4_1_…`).
/// Written here from the SGM layout (layers_per_block 2: three input
/// blocks per level, the first a convolution), not with the engine's map.
fn ldm_name(diffusers: &str) -> String {
    let (level, rest) = if let Some(r) = diffusers.strip_prefix("down_blocks_") {
        let (b, r) = r.split_once('_').unwrap();
        (Some(("input", b.parse::<usize>().unwrap())), r)
    } else if let Some(r) = diffusers.strip_prefix("up_blocks_") {
        let (b, r) = r.split_once('_').unwrap();
        (Some(("output", b.parse::<usize>().unwrap())), r)
    } else {
        (None, diffusers.strip_prefix("mid_block_").unwrap())
    };
    let (kind, rest) = rest.split_once('_').unwrap();
    let (layer, rest) = rest.split_once('_').unwrap();
    let layer: usize = layer.parse().unwrap();
    let rest = match (kind, rest) {
        ("resnets", "conv1") => "in_layers_2",
        ("resnets", "conv2") => "out_layers_3",
        ("resnets", other) => panic!("no LDM name for resnet layer {other}"),
        (_, other) => other,
    };
    let slot = if kind == "attentions" { 1 } else { 0 };
    let block = match level {
        Some(("input", b)) => format!("input_blocks_{}_{slot}", 1 + 3 * b + layer),
        Some((_, b)) => format!("output_blocks_{}_{slot}", 3 * b + layer),
        None if kind == "attentions" => "middle_block_1".to_owned(),
        None => format!("middle_block_{}", 2 * layer),
    };
    format!("{block}_{rest}")
}

#[test]
fn kohya_files_in_ldm_block_names_merge_the_same_weights() {
    let model = "tiny-sdxl";
    let (_, meta) = references_in(model);
    let original = fixture_dir(model)
        .join("loras")
        .join("tiny-kohya.safetensors");
    let tensors = candle_core::safetensors::load(&original, &Device::Cpu).unwrap();
    let mut renamed = HashMap::new();
    for (key, tensor) in tensors {
        let key = match key.strip_prefix("lora_unet_") {
            Some(rest) => {
                let (module, part) = rest.split_once('.').unwrap();
                format!("lora_unet_{}.{part}", ldm_name(module))
            }
            None => key,
        };
        renamed.insert(key, tensor);
    }
    assert!(renamed
        .keys()
        .any(|k| k.starts_with("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.")));
    assert!(renamed
        .keys()
        .any(|k| k.starts_with("lora_unet_middle_block_1_")));
    assert!(renamed
        .keys()
        .any(|k| k.starts_with("lora_unet_output_blocks_")));
    let dir = tempfile::tempdir().unwrap();
    let ldm_file = dir.path().join("ldm-kohya.safetensors");
    candle_core::safetensors::save(&renamed, &ldm_file).unwrap();

    let mut sd = StableDiffusion::load(&fixture_dir(model), &Device::Cpu).unwrap();
    let use_file = |path: &std::path::Path| {
        vec![LoraUse {
            id: path.display().to_string(),
            file: Arc::new(LoraFile::read(path).unwrap()),
            strength: 0.8,
        }]
    };
    sd.set_loras(&use_file(&original)).unwrap();
    let diffusers_named = flat(&picture_of(model, &sd, &meta));
    sd.set_loras(&use_file(&ldm_file)).unwrap();
    let ldm_named = flat(&picture_of(model, &sd, &meta));
    assert_eq!(
        ldm_named, diffusers_named,
        "the same LoRA under LDM block names gives the same picture, bit for bit"
    );
    sd.set_loras(&[]).unwrap();
    assert_ne!(
        flat(&picture_of(model, &sd, &meta)),
        ldm_named,
        "the LoRA did something"
    );
}
