//! LoRA parity with diffusers on the tiny transformer models, recorded by
//! `fixtures/transformer_lora_references.py`:
//! - FLUX: a PEFT LoRA on every linear of the transformer (diffusers'
//!   names, which the model runs as row blocks of BFL's fused matrices)
//!   and CLIP, and a kohya one in BFL's names (fused q/k/v, alpha), alone
//!   and together, on the transformer as a diffusers folder loads it
//!   (separate q/k/v blocks) and as a BFL single file does (one fused
//!   matrix); fused weights, final pictures, and the weights as loaded
//!   after the LoRAs are taken out;
//! - FLUX on quantized weights: the LoRA runs as a branch beside the
//!   quantized product, checked exactly against the merged dense result
//!   (on f32 "quantized" storage, whose product is exact) and in a real
//!   Q8_0 GGUF file against its dequantized weights;
//! - SD 3.5: a PEFT LoRA on the MMDiT's attention and feed-forward layers
//!   and both CLIP encoders.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use cyberimage_engine::models::flux::FluxTransformer;
use cyberimage_engine::pipelines::flux::{load_transformer, pack, Flux};
use cyberimage_engine::weights::lora::{Component, LoraFile};
use cyberimage_engine::weights::lora_merge::{LoraTarget, LoraUse, MergedLoras};
use support::{assert_close, assert_images_close, fixture_dir, references_of, settings_of};

fn lora_references(model: &str) -> (HashMap<String, Tensor>, serde_json::Value) {
    let dir = fixture_dir(model);
    (
        candle_core::safetensors::load(
            dir.join("transformer_lora_references.safetensors"),
            &Device::Cpu,
        )
        .unwrap(),
        serde_json::from_str(
            &std::fs::read_to_string(dir.join("transformer_lora_references.json")).unwrap(),
        )
        .unwrap(),
    )
}

fn lora_set(model: &str, meta: &serde_json::Value, case: &str) -> Vec<LoraUse> {
    meta["cases"][case]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, weight)| LoraUse {
            id: name.clone(),
            file: Arc::new(
                LoraFile::read(
                    &fixture_dir(model)
                        .join("loras")
                        .join(format!("{name}.safetensors")),
                )
                .unwrap(),
            ),
            strength: weight.as_f64().unwrap(),
        })
        .collect()
}

fn component_of(name: &str) -> Component {
    match name {
        "transformer" => Component::Denoiser,
        "text_encoder_2" => Component::TextEncoder(1),
        _ => Component::TextEncoder(0),
    }
}

fn flux_picture(flux: &Flux) -> Tensor {
    let refs = references_of("tiny-flux");
    let settings = settings_of("tiny-flux");
    let cond = flux
        .encode_prompt(settings["prompt"].as_str().unwrap())
        .unwrap();
    let latents = flux
        .denoise(
            &cond,
            &refs["initial_noise"],
            settings["steps"].as_u64().unwrap() as usize,
            settings["guidance_scale"].as_f64().unwrap(),
            &mut |_, _| true,
        )
        .unwrap()
        .unwrap();
    flux.decode_unit(&latents).unwrap()
}

fn same_bits(a: &Tensor, b: &Tensor) -> bool {
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    flat(a) == flat(b)
}

/// The tiny FLUX folder with its transformer stored another way.
fn flux_copy_with_transformer(write: impl FnOnce(&Path)) -> tempfile::TempDir {
    let source = fixture_dir("tiny-flux");
    let dir = tempfile::tempdir().unwrap();
    for entry in walk(&source) {
        let relative = entry.strip_prefix(&source).unwrap();
        if relative.starts_with("transformer") && relative.file_name().unwrap() != "config.json" {
            continue;
        }
        let to = dir.path().join(relative);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &to).unwrap();
    }
    write(&dir.path().join("transformer"));
    dir
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn check_flux_cases(flux: &mut Flux, layout: &str) {
    let (refs, meta) = lora_references("tiny-flux");
    let base = flux_picture(flux);
    assert_images_close(&base, &refs["base.image"]);
    for case in ["peft", "kohya", "both"] {
        flux.set_loras(&lora_set("tiny-flux", &meta, case)).unwrap();
        for (component, names) in meta["probes"].as_object().unwrap() {
            for name in names.as_array().unwrap() {
                let name = name.as_str().unwrap();
                let ours = flux
                    .parameter(component_of(component), &format!("{name}.weight"))
                    .unwrap_or_else(|| panic!("{layout}: no {component} weight {name}"));
                assert_close(
                    &format!("{layout} {case} {component} {name}"),
                    &ours,
                    &refs[&format!("{case}.{component}.{name}")],
                    1e-5,
                );
            }
        }
        let image = flux_picture(flux);
        assert!(!same_bits(&image, &base), "{layout} {case}: no change");
        assert_images_close(&image, &refs[&format!("{case}.image")]);
    }
    flux.set_loras(&[]).unwrap();
    assert!(
        same_bits(&flux_picture(flux), &base),
        "{layout}: the weights as loaded come back bit for bit"
    );
}

#[test]
fn flux_loras_match_diffusers_in_both_layouts() {
    let mut from_diffusers = Flux::load(&fixture_dir("tiny-flux"), &Device::Cpu).unwrap();
    check_flux_cases(&mut from_diffusers, "diffusers folder");

    let bfl = flux_copy_with_transformer(|folder| {
        let (weights, _) =
            load_transformer(&fixture_dir("tiny-flux").join("transformer"), &Device::Cpu).unwrap();
        candle_core::safetensors::save(
            &weights.to_dense().unwrap(),
            folder.join("flux1-tiny.safetensors"),
        )
        .unwrap();
    });
    let mut from_bfl = Flux::load(bfl.path(), &Device::Cpu).unwrap();
    assert_eq!(from_bfl.transformer_format, "safetensors (BFL layout)");
    check_flux_cases(&mut from_bfl, "BFL single file");
}

fn transformer_output(transformer: &FluxTransformer) -> Tensor {
    let refs = references_of("tiny-flux");
    let noise = &refs["initial_noise"];
    let (_, _, h, w) = noise.dims4().unwrap();
    let txt = &refs["prompt_embeds"];
    let rope = transformer
        .rope(txt.dim(1).unwrap(), h / 2, w / 2, &Device::Cpu)
        .unwrap();
    transformer
        .forward(
            &pack(noise).unwrap(),
            txt,
            &refs["pooled_prompt_embeds"],
            0.75,
            3.5,
            &rope,
        )
        .unwrap()
}

#[test]
fn a_lora_beside_quantized_weights_equals_its_merged_dense_result() {
    let (_, meta) = lora_references("tiny-flux");
    let set = lora_set("tiny-flux", &meta, "both");
    let folder = fixture_dir("tiny-flux").join("transformer");
    let (weights, config) = load_transformer(&folder, &Device::Cpu).unwrap();
    // The transformer's layers only: CLIP's belong to the text encoder.
    let uses: Vec<LoraUse> = set
        .iter()
        .map(|u| LoraUse {
            file: Arc::new(LoraFile {
                format: u.file.format,
                layers: u
                    .file
                    .layers
                    .iter()
                    .filter(|l| l.component == Component::Denoiser)
                    .cloned()
                    .collect(),
            }),
            ..u.clone()
        })
        .collect();
    // f32 blocks in quantized storage: candle's product over them is the
    // dense one, so the branch alone is what is measured. (Made before the
    // merge below, which edits the tensors `weights` shares with `dense`.)
    let exact = weights.quantized(GgmlDType::F32).unwrap();
    let dense = FluxTransformer::new(&weights, config.clone()).unwrap();
    let base = transformer_output(&dense);
    let mut merged = MergedLoras::default();
    let target = [(Component::Denoiser, dense.lora_target() as &dyn LoraTarget)];
    merged.set_on(&target, &uses).unwrap();
    let with_lora = transformer_output(&dense);

    let quantized = FluxTransformer::new(&exact, config.clone()).unwrap();
    assert!(quantized
        .lora_target()
        .is_quantized("double_blocks.0.img_attn.qkv.weight"));
    assert_close(
        "quantized f32, no LoRA",
        &transformer_output(&quantized),
        &base,
        1e-6,
    );
    let target = [(
        Component::Denoiser,
        quantized.lora_target() as &dyn LoraTarget,
    )];
    let mut branches = MergedLoras::default();
    branches.set_on(&target, &uses).unwrap();
    assert!(quantized.lora_target().adapted_layers() > 20);
    assert_close(
        "LoRA branch vs merged",
        &transformer_output(&quantized),
        &with_lora,
        1e-5,
    );
    branches.unmerge_on(&target).unwrap();
    assert_eq!(quantized.lora_target().adapted_layers(), 0);
    assert_close(
        "branches removed",
        &transformer_output(&quantized),
        &base,
        1e-6,
    );
}

#[test]
fn a_q8_gguf_transformer_takes_the_lora_as_a_branch() {
    let (refs, meta) = lora_references("tiny-flux");
    let folder = fixture_dir("tiny-flux").join("transformer");
    let (weights, _) = load_transformer(&folder, &Device::Cpu).unwrap();
    let quantized = weights.quantized(GgmlDType::Q8_0).unwrap();
    let gguf = flux_copy_with_transformer(|folder| {
        quantized
            .write_gguf(&folder.join("flux1-tiny-Q8_0.gguf"))
            .unwrap();
    });
    let dequantized = flux_copy_with_transformer(|folder| {
        candle_core::safetensors::save(
            &quantized.to_dense().unwrap(),
            folder.join("flux1-tiny.safetensors"),
        )
        .unwrap();
    });
    let mut flux = Flux::load(gguf.path(), &Device::Cpu).unwrap();
    assert_eq!(flux.transformer_format, "GGUF");
    let mut reference = Flux::load(dequantized.path(), &Device::Cpu).unwrap();
    let base = flux_picture(&flux);
    let set = lora_set("tiny-flux", &meta, "both");
    flux.set_loras(&set).unwrap();
    reference.set_loras(&set).unwrap();
    assert!(flux.lora_target().adapted_layers() > 20);
    let ours = flux_picture(&flux);
    // ggml's product quantizes the activations too (see flux_parity's
    // GGUF test): the picture agrees with its dequantized twin to a few
    // levels, while the LoRA moves it by far more.
    let twin = flux_picture(&reference);
    let worst = |a: &Tensor, b: &Tensor| -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    let gap = worst(&ours, &twin);
    let effect = worst(&ours, &base);
    eprintln!("Q8_0 + LoRA vs dequantized + merged LoRA: max {gap}; LoRA effect max {effect}");
    assert!(gap < 0.03, "{gap}");
    assert!(effect > 10.0 * gap, "{effect} vs {gap}");
    let mean = |a: &Tensor, b: &Tensor| -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    eprintln!(
        "Q8_0 + LoRA vs diffusers' f32 + LoRA: mean {}",
        mean(&ours, &refs["both.image"])
    );
    flux.set_loras(&[]).unwrap();
    assert_eq!(flux.lora_target().adapted_layers(), 0);
    assert!(same_bits(&flux_picture(&flux), &base));
}

#[test]
fn flux_refuses_loras_it_cannot_reach_and_keeps_nothing_merged() {
    let (_, meta) = lora_references("tiny-flux");
    let mut flux = Flux::load(&fixture_dir("tiny-flux"), &Device::Cpu).unwrap();
    let base = flux_picture(&flux);
    let sd15 = LoraUse {
        id: "tiny-kohya".into(),
        file: Arc::new(
            LoraFile::read(&fixture_dir("tiny-sd15").join("loras/tiny-kohya.safetensors")).unwrap(),
        ),
        strength: 1.0,
    };
    let mut set = lora_set("tiny-flux", &meta, "peft");
    set.push(sd15);
    let err = flux.set_loras(&set).unwrap_err().to_string();
    assert!(err.contains("tiny-kohya"), "{err}");
    assert!(same_bits(&flux_picture(&flux), &base));
}
