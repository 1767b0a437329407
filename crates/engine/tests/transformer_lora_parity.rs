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
use cyberimage_engine::pipelines::sd3::Sd3;
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
    support::lora_case(model, meta, case)
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

fn sd3_picture(sd3: &Sd3) -> Tensor {
    let refs = references_of("tiny-sd3");
    let settings = settings_of("tiny-sd3");
    let text = |key: &str| settings[key].as_str().unwrap().to_string();
    let cond = sd3
        .encode_prompts(&text("prompt"), Some(&text("negative_prompt")))
        .unwrap();
    let latents = sd3
        .denoise(
            &cond,
            refs["initial_latents"].clone(),
            settings["steps"].as_u64().unwrap() as usize,
            settings["guidance_scale"].as_f64().unwrap(),
            &mut |_, _| true,
        )
        .unwrap()
        .unwrap();
    sd3.decode_unit(&latents).unwrap()
}

#[test]
fn sd3_loras_match_diffusers() {
    let (refs, meta) = lora_references("tiny-sd3");
    let mut sd3 = Sd3::load(&fixture_dir("tiny-sd3"), &Device::Cpu).unwrap();
    let base = sd3_picture(&sd3);
    assert_images_close(&base, &refs["base.image"]);
    sd3.set_loras(&lora_set("tiny-sd3", &meta, "peft")).unwrap();
    for (component, names) in meta["probes"].as_object().unwrap() {
        for name in names.as_array().unwrap() {
            let name = name.as_str().unwrap();
            let ours = sd3
                .parameter(component_of(component), &format!("{name}.weight"))
                .unwrap_or_else(|| panic!("no {component} weight {name}"));
            assert_close(
                &format!("SD3 peft {component} {name}"),
                &ours,
                &refs[&format!("peft.{component}.{name}")],
                1e-5,
            );
        }
    }
    let image = sd3_picture(&sd3);
    assert!(!same_bits(&image, &base));
    assert_images_close(&image, &refs["peft.image"]);
    sd3.set_loras(&[]).unwrap();
    assert!(same_bits(&sd3_picture(&sd3), &base));
}

/// The PEFT LoRA's transformer layers rewritten in Stability's names as
/// kohya saves them: q, k and v fused (downs stacked, ups block-diagonal,
/// which is the same change), plus a final-modulation layer given both
/// ways (Stability orders its halves shift, scale; diffusers scale, shift).
fn stability_named(peft: &LoraFile) -> (LoraFile, LoraFile) {
    let dev = Device::Cpu;
    let mut diffusers = HashMap::new();
    let mut stability = HashMap::new();
    let by_name: HashMap<String, &cyberimage_engine::weights::lora::LowRank> = peft
        .layers
        .iter()
        .filter(|l| l.component == Component::Denoiser)
        .map(|l| (l.layer.to_string(), l))
        .collect();
    let put = |map: &mut HashMap<String, Tensor>, key: String, down: Tensor, up: Tensor| {
        map.insert(format!("{key}.lora_down.weight"), down);
        map.insert(format!("{key}.lora_up.weight"), up);
    };
    let blocks = (0..)
        .take_while(|i| by_name.contains_key(&format!("transformer_blocks.{i}.attn.to_q")))
        .count();
    assert!(blocks >= 2, "the PEFT LoRA covers the blocks");
    for i in 0..blocks {
        let b = format!("transformer_blocks.{i}");
        let joint = format!("lora_unet_joint_blocks_{i}");
        for (parts, fused) in [
            (["attn.to_q", "attn.to_k", "attn.to_v"], "x_block_attn_qkv"),
            (
                ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
                "context_block_attn_qkv",
            ),
        ] {
            let layers: Vec<_> = parts
                .iter()
                .filter_map(|p| by_name.get(&format!("{b}.{p}")))
                .collect();
            if layers.len() < 3 {
                continue;
            }
            let downs: Vec<Tensor> = layers.iter().map(|l| l.down.clone()).collect();
            let (rank, rows) = (layers[0].rank(), layers[0].up.dim(0).unwrap());
            let ups: Vec<Tensor> = layers
                .iter()
                .enumerate()
                .map(|(k, l)| l.up.pad_with_zeros(1, k * rank, (2 - k) * rank).unwrap())
                .collect();
            assert_eq!(ups[0].dims(), [rows, 3 * rank]);
            put(
                &mut stability,
                format!("{joint}_{fused}"),
                Tensor::cat(&downs, 0).unwrap(),
                Tensor::cat(&ups, 0).unwrap(),
            );
        }
        for (part, name) in [
            ("attn.to_out.0", "x_block_attn_proj"),
            ("attn.to_add_out", "context_block_attn_proj"),
            ("ff.net.0.proj", "x_block_mlp_fc1"),
            ("ff.net.2", "x_block_mlp_fc2"),
            ("ff_context.net.0.proj", "context_block_mlp_fc1"),
            ("ff_context.net.2", "context_block_mlp_fc2"),
        ] {
            if let Some(l) = by_name.get(&format!("{b}.{part}")) {
                put(
                    &mut stability,
                    format!("{joint}_{name}"),
                    l.down.clone(),
                    l.up.clone(),
                );
            }
        }
    }
    for (key, l) in &by_name {
        let key = format!("lora_transformer_{}", key.replace('.', "_"));
        put(&mut diffusers, key, l.down.clone(), l.up.clone());
    }
    // norm_out: 2 · hidden rows.
    let sd3 = Sd3::load(&fixture_dir("tiny-sd3"), &Device::Cpu).unwrap();
    let norm_out = sd3
        .parameter(Component::Denoiser, "norm_out.linear.weight")
        .unwrap();
    let (rows, inputs) = norm_out.dims2().unwrap();
    let down = Tensor::randn(0f32, 0.3, (4, inputs), &dev).unwrap();
    let up = Tensor::randn(0f32, 0.3, (rows, 4), &dev).unwrap();
    let half = rows / 2;
    let swapped = Tensor::cat(
        &[
            up.narrow(0, half, half).unwrap(),
            up.narrow(0, 0, half).unwrap(),
        ],
        0,
    )
    .unwrap();
    put(
        &mut stability,
        "lora_unet_final_layer_adaLN_modulation_1".into(),
        down.clone(),
        up,
    );
    put(
        &mut diffusers,
        "lora_transformer_norm_out_linear".into(),
        down,
        swapped,
    );
    (
        LoraFile::from_tensors(diffusers).unwrap(),
        LoraFile::from_tensors(stability).unwrap(),
    )
}

#[test]
fn sd3_loras_in_stabilitys_names_equal_their_diffusers_twins() {
    let peft =
        LoraFile::read(&fixture_dir("tiny-sd3").join("loras/tiny-sd3-peft.safetensors")).unwrap();
    let (diffusers, stability) = stability_named(&peft);
    let use_of = |id: &str, file: LoraFile| LoraUse {
        id: id.into(),
        file: Arc::new(file),
        strength: 0.8,
    };
    let mut a = Sd3::load(&fixture_dir("tiny-sd3"), &Device::Cpu).unwrap();
    let mut b = Sd3::load(&fixture_dir("tiny-sd3"), &Device::Cpu).unwrap();
    let base = sd3_picture(&a);
    a.set_loras(&[use_of("diffusers-named", diffusers)])
        .unwrap();
    b.set_loras(&[use_of("stability-named", stability)])
        .unwrap();
    for name in [
        "transformer_blocks.0.attn.to_k.weight",
        "transformer_blocks.1.attn.add_v_proj.weight",
        "transformer_blocks.0.attn.to_add_out.weight",
        "transformer_blocks.1.ff.net.2.weight",
        "norm_out.linear.weight",
    ] {
        let (x, y) = (
            a.parameter(Component::Denoiser, name).unwrap(),
            b.parameter(Component::Denoiser, name).unwrap(),
        );
        assert!(!same_bits(&x, &b_base(name)), "{name} is adapted");
        assert_close(name, &y, &x, 1e-6);
    }
    let (pa, pb) = (sd3_picture(&a), sd3_picture(&b));
    assert!(!same_bits(&pa, &base));
    assert_close("pictures", &pb, &pa, 1e-5);
}

fn b_base(name: &str) -> Tensor {
    Sd3::load(&fixture_dir("tiny-sd3"), &Device::Cpu)
        .unwrap()
        .parameter(Component::Denoiser, name)
        .unwrap()
}
