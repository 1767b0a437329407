//! LoRAs checked against a model before its job is queued, from its
//! files' headers alone (`weights::shapes`, each pipeline's
//! `check_loras_in`, `Generator::check_loras`). The check must say what
//! merging says: for every tiny model (SD 1.5, SDXL, SD 3, FLUX as a
//! diffusers folder, a BFL single file and a Q8_0 GGUF file, SD 1.5 as an
//! A1111 checkpoint) and a set of LoRAs that fit and that do not (a layer
//! renamed to one no model has, another family's, another size's), the
//! header check's verdict and message equal the loaded model's merge.
//! That the header shapes equal the loaded ones for every layout is
//! checked in `single_file_parity.rs` beside each load.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use cyberimage_core::spec::LoraRef;
use cyberimage_core::{Catalogue, GenerationSpec, Generator, ModelEntry};
use cyberimage_engine::pipelines::flux::{load_transformer, Flux};
use cyberimage_engine::pipelines::sd::StableDiffusion;
use cyberimage_engine::pipelines::sd3::Sd3;
use cyberimage_engine::weights::lora::LoraFile;
use cyberimage_engine::weights::lora_merge::LoraUse;
use cyberimage_engine::{CandleGenerator, EngineOptions};
use support::fixture_dir;

fn lora_path(model: &str, name: &str) -> PathBuf {
    fixture_dir(model)
        .join("loras")
        .join(format!("{name}.safetensors"))
}

fn use_of(path: &Path) -> LoraUse {
    LoraUse {
        id: path.file_stem().unwrap().to_string_lossy().into_owned(),
        file: Arc::new(LoraFile::read(path).unwrap()),
        strength: 0.8,
    }
}

/// `path`'s LoRA with the first layer whose name starts with `among`
/// renamed to `…nowhere`, a layer no model has, written into `dir`.
fn with_a_missing_layer(path: &Path, among: &str, dir: &Path) -> PathBuf {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let first = names
        .iter()
        .find(|n| n.starts_with(among) && (n.contains("lora_down") || n.contains("lora_A")))
        .unwrap();
    let module = first
        .split(".lora_")
        .next()
        .unwrap()
        .trim_end_matches(".")
        .to_string();
    let nowhere = match module.rsplit_once(['.', '_']) {
        Some((head, _)) => format!("{head}{}nowhere", &module[head.len()..head.len() + 1]),
        None => "nowhere".into(),
    };
    let renamed: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| match k.strip_prefix(&module) {
            Some(rest) if rest.starts_with('.') => (format!("{nowhere}{rest}"), v),
            _ => (k, v),
        })
        .collect();
    let out = dir.join(format!(
        "{}-missing-{}.safetensors",
        path.file_stem().unwrap().to_string_lossy(),
        among.trim_end_matches(['.', '_'])
    ));
    candle_core::safetensors::save(&renamed, &out).unwrap();
    out
}

/// The check's verdict against the merge's, for each set; `fits` says
/// which sets must fit.
fn assert_check_is_merge(
    model: &str,
    check: impl Fn(&[LoraUse]) -> Result<(), String>,
    mut merge: impl FnMut(&[LoraUse]) -> Result<(), String>,
    cases: &[(&str, Vec<LoraUse>, bool)],
) {
    for (case, set, fits) in cases {
        let checked = check(set);
        let merged = merge(set);
        assert_eq!(
            checked, merged,
            "{model} {case}: the header check and the merge disagree"
        );
        assert_eq!(checked.is_ok(), *fits, "{model} {case}: {checked:?}");
        if let Err(message) = &checked {
            eprintln!("{model} {case}: refused: {message}");
        }
        merge(&[]).unwrap();
    }
}

#[test]
fn the_header_check_says_what_merging_says_on_every_family_and_layout() {
    let scratch = tempfile::tempdir().unwrap();
    let sd15_kohya = lora_path("tiny-sd15", "tiny-kohya");
    let sd15 = || use_of(&sd15_kohya);
    let sd15_peft = || use_of(&lora_path("tiny-sd15", "tiny-peft"));
    let sd15_missing = |among| use_of(&with_a_missing_layer(&sd15_kohya, among, scratch.path()));
    let sdxl = || use_of(&lora_path("tiny-sdxl", "tiny-kohya"));
    let sdxl_peft = lora_path("tiny-sdxl", "tiny-peft");
    let sdxl_missing = |among| use_of(&with_a_missing_layer(&sdxl_peft, among, scratch.path()));
    let sd3_peft = lora_path("tiny-sd3", "tiny-sd3-peft");
    let sd3 = || use_of(&sd3_peft);
    let sd3_missing = |among| use_of(&with_a_missing_layer(&sd3_peft, among, scratch.path()));
    let flux_peft = lora_path("tiny-flux", "tiny-flux-peft");
    let flux = || use_of(&flux_peft);
    let flux_kohya = || use_of(&lora_path("tiny-flux", "tiny-flux-kohya"));
    let flux_missing = |among| use_of(&with_a_missing_layer(&flux_peft, among, scratch.path()));

    let sd_cases = |dir: &Path, label: &str| {
        let mut model = StableDiffusion::load(dir, &Device::Cpu).unwrap();
        let sdxl_model = label.contains("sdxl");
        let cases = if sdxl_model {
            vec![
                ("its kohya LoRA", vec![sdxl()], true),
                ("its PEFT LoRA", vec![use_of(&sdxl_peft)], true),
                (
                    "a renamed text encoder layer",
                    vec![sdxl_missing("text_encoder.")],
                    false,
                ),
                ("a renamed UNet layer", vec![sdxl_missing("unet.")], false),
                ("an SD 1.5 LoRA", vec![sd15()], false),
            ]
        } else {
            vec![
                ("its kohya LoRA", vec![sd15()], true),
                ("kohya and PEFT", vec![sd15(), sd15_peft()], true),
                (
                    "a renamed text encoder layer",
                    vec![sd15(), sd15_missing("lora_te_")],
                    false,
                ),
                (
                    "a renamed UNet layer",
                    vec![sd15_missing("lora_unet_")],
                    false,
                ),
                ("an SDXL LoRA", vec![sdxl()], false),
                ("a FLUX LoRA", vec![flux()], false),
            ]
        };
        assert_check_is_merge(
            label,
            |set| StableDiffusion::check_loras_in(dir, set).map_err(|e| e.to_string()),
            |set| model.set_loras(set).map_err(|e| e.to_string()),
            &cases,
        );
    };
    sd_cases(&fixture_dir("tiny-sd15"), "tiny-sd15 folder");
    sd_cases(&fixture_dir("tiny-sdxl"), "tiny-sdxl folder");
    let models = tempfile::tempdir().unwrap();
    let generator =
        CandleGenerator::new(models.path().to_path_buf(), EngineOptions::default()).unwrap();
    let ldm = ModelEntry {
        key: "sd15-file".into(),
        source: fixture_dir("../single-file/tiny-sd15-ldm.safetensors")
            .display()
            .to_string(),
        config: Some(fixture_dir("tiny-sd15").display().to_string()),
        ..builtin("tiny-sd15-random")
    };
    generator.can_run(&ldm).unwrap();
    sd_cases(
        &models.path().join("single-file/sd15-file"),
        "tiny-sd15 A1111 file",
    );

    let sd3_dir = fixture_dir("tiny-sd3");
    let mut model = Sd3::load(&sd3_dir, &Device::Cpu).unwrap();
    assert_check_is_merge(
        "tiny-sd3",
        |set| Sd3::check_loras_in(&sd3_dir, set).map_err(|e| e.to_string()),
        |set| model.set_loras(set).map_err(|e| e.to_string()),
        &[
            ("its PEFT LoRA", vec![sd3()], true),
            (
                "a renamed CLIP layer",
                vec![sd3_missing("text_encoder.")],
                false,
            ),
            (
                "a renamed MMDiT layer",
                vec![sd3_missing("transformer.")],
                false,
            ),
            ("a FLUX LoRA", vec![flux()], false),
            ("an SD 1.5 LoRA", vec![sd15()], false),
        ],
    );

    let (weights, _) =
        load_transformer(&fixture_dir("tiny-flux").join("transformer"), &Device::Cpu).unwrap();
    let bfl = flux_copy(scratch.path(), "bfl", |folder| {
        candle_core::safetensors::save(
            &weights.to_dense().unwrap(),
            folder.join("flux1-tiny.safetensors"),
        )
        .unwrap();
    });
    let gguf = flux_copy(scratch.path(), "gguf", |folder| {
        weights
            .quantized(GgmlDType::Q8_0)
            .unwrap()
            .write_gguf(&folder.join("flux1-tiny-Q8_0.gguf"))
            .unwrap();
    });
    for (dir, label) in [
        (fixture_dir("tiny-flux"), "tiny-flux folder"),
        (bfl, "tiny-flux BFL file"),
        (gguf, "tiny-flux GGUF"),
    ] {
        let mut model = Flux::load(&dir, &Device::Cpu).unwrap();
        assert_check_is_merge(
            label,
            |set| Flux::check_loras_in(&dir, set).map_err(|e| e.to_string()),
            |set| model.set_loras(set).map_err(|e| e.to_string()),
            &[
                ("its PEFT LoRA", vec![flux()], true),
                ("its kohya LoRA", vec![flux_kohya()], true),
                ("both", vec![flux(), flux_kohya()], true),
                (
                    "a renamed CLIP layer",
                    vec![flux(), flux_missing("text_encoder.")],
                    false,
                ),
                (
                    "a renamed transformer layer",
                    vec![flux_missing("transformer.")],
                    false,
                ),
                ("an SD 3 LoRA", vec![sd3()], false),
                ("an SD 1.5 LoRA", vec![sd15()], false),
            ],
        );
    }
}

fn builtin(key: &str) -> ModelEntry {
    Catalogue::builtin_test_models()
        .into_iter()
        .find(|m| m.key == key)
        .unwrap()
}

/// The tiny FLUX folder (links to its files) with its transformer written
/// by `write`.
fn flux_copy(scratch: &Path, name: &str, write: impl FnOnce(&Path)) -> PathBuf {
    let source = fixture_dir("tiny-flux");
    let dir = scratch.join(name);
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let to = dir.join(path.file_name().unwrap());
        std::fs::create_dir_all(&dir).unwrap();
        if path.file_name().unwrap() == "transformer" {
            std::fs::create_dir_all(&to).unwrap();
            std::fs::copy(path.join("config.json"), to.join("config.json")).unwrap();
        } else {
            std::os::unix::fs::symlink(&path, &to).unwrap();
        }
    }
    write(&dir.join("transformer"));
    dir
}

/// Through the generator, as the jobs service asks before queueing: a
/// layer the model lacks is refused by name; the LoRAs that fit pass.
#[test]
fn the_generator_checks_a_jobs_loras_against_the_model_without_loading_it() {
    let loras = tempfile::tempdir().unwrap();
    let kohya = lora_path("tiny-sd15", "tiny-kohya");
    std::fs::copy(&kohya, loras.path().join("tiny-kohya.safetensors")).unwrap();
    with_a_missing_layer(&kohya, "lora_unet_", loras.path());
    let models = tempfile::tempdir().unwrap();
    let generator = CandleGenerator::new(models.path().to_path_buf(), EngineOptions::default())
        .unwrap()
        .with_loras_dir(loras.path().to_path_buf());
    let model = builtin("tiny-sd15-random");
    let spec = |name: &str| GenerationSpec {
        prompt: "a fox".into(),
        negative_prompt: None,
        model: model.key.clone(),
        width: 64,
        height: 64,
        steps: 2,
        guidance_scale: 7.0,
        num_images: 1,
        seed: 1,
        init_image: None,
        loras: vec![LoraRef {
            name: name.into(),
            weight: 0.8,
            sha256: format!("digest of {name}"),
        }],
        upscale: None,
        hires: None,
    };
    generator.check_loras(&model, &spec("tiny-kohya")).unwrap();
    let err = generator
        .check_loras(&model, &spec("tiny-kohya-missing-lora_unet"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nowhere") && err.contains("does not have"),
        "{err}"
    );
}
