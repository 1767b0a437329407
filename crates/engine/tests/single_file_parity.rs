//! Single checkpoint files, as people download them, load to exactly the
//! model of their diffusers folder. The files in `fixtures/single-file/`
//! are the tiny models in the published layouts (A1111/LDM SD 1.5, SGM
//! SDXL, BFL FLUX with separate CLIP, T5 and autoencoder files, FP8), made
//! by `fixtures/single_files.py`, which checks each against diffusers'
//! own `from_single_file` before writing it.
//!
//! Here: every component's tensors, as our loader renames them, equal the
//! diffusers folder's (names and values, bit for bit); the generated
//! pictures are identical; FP8 codes decode as PyTorch decodes them and an
//! FP8 checkpoint runs exactly as its dequantized copy.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use cyberimage_core::{
    CancelToken, Catalogue, GenerationSpec, Generator, ModelEntry, ModelFamily, ProgressObserver,
    ProgressUpdate,
};
use cyberimage_engine::weights::shapes::component_shapes;
use cyberimage_engine::weights::{component_tensors, read_tensors};
use cyberimage_engine::{CandleGenerator, EngineOptions};
use support::fixture_dir;

struct NoProgress;

impl ProgressObserver for NoProgress {
    fn on_progress(&self, _: ProgressUpdate) {}
}

fn single_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/single-file")
        .join(name)
}

fn builtin(key: &str) -> ModelEntry {
    Catalogue::builtin_test_models()
        .into_iter()
        .find(|m| m.key == key)
        .unwrap()
}

/// The tiny model `name` from its diffusers folder, under `key`.
fn folder_entry(name: &str, like: &str) -> ModelEntry {
    ModelEntry {
        key: format!("{name}-folder"),
        source: fixture_dir(name).display().to_string(),
        ..builtin(like)
    }
}

fn file_entry(key: &str, file: &str, config: &str, like: &str) -> ModelEntry {
    ModelEntry {
        key: key.into(),
        source: single_file(file).display().to_string(),
        config: Some(fixture_dir(config).display().to_string()),
        ..builtin(like)
    }
}

fn flux_files(key: &str, transformer: &str) -> ModelEntry {
    ModelEntry {
        vae: Some(
            single_file("tiny-flux-ae.safetensors")
                .display()
                .to_string(),
        ),
        text_encoders: vec![
            single_file("tiny-flux-t5.safetensors")
                .display()
                .to_string(),
            single_file("tiny-flux-clip_l.safetensors")
                .display()
                .to_string(),
        ],
        ..file_entry(key, transformer, "tiny-flux", "tiny-flux-random")
    }
}

fn spec(model: &ModelEntry) -> GenerationSpec {
    GenerationSpec {
        prompt: "a red fox in the snow".into(),
        negative_prompt: Some("blurry".into()),
        model: model.key.clone(),
        width: 64,
        height: 48,
        steps: 3,
        guidance_scale: model.defaults.guidance_scale,
        num_images: 1,
        seed: 4242,
        init_image: None,
        loras: Vec::new(),
        upscale: None,
        hires: None,
    }
}

fn pixels(generator: &CandleGenerator, model: &ModelEntry) -> Vec<u8> {
    generator
        .generate(model, &spec(model), &NoProgress, &CancelToken::new())
        .unwrap_or_else(|e| panic!("{}: {e}", model.key))
        .remove(0)
        .rgb
}

/// The component's tensors; on the way, the names and shapes its headers
/// alone give (what a LoRA is checked against before its job is queued,
/// `lora_check.rs`) must be exactly theirs.
fn tensors(folder: &Path) -> HashMap<String, Tensor> {
    let tensors = component_tensors(folder, &Device::Cpu, DType::F32)
        .unwrap_or_else(|e| panic!("{}: {e}", folder.display()));
    let loaded: HashMap<String, Vec<usize>> = tensors
        .iter()
        .map(|(name, t)| (name.clone(), t.dims().to_vec()))
        .collect();
    let from_headers = component_shapes(folder).unwrap();
    assert!(
        from_headers == loaded,
        "{}: the headers' shapes are not the loaded ones",
        folder.display()
    );
    tensors
}

/// Transformers 5 saves CLIP without the `text_model.` prefix that the
/// files people have carry; the encoder reads both.
fn without_text_model(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    tensors
        .into_iter()
        .map(|(k, v)| (k.strip_prefix("text_model.").unwrap_or(&k).to_string(), v))
        .collect()
}

fn assert_same_tensors(
    what: &str,
    expected: &HashMap<String, Tensor>,
    got: &HashMap<String, Tensor>,
) {
    let mut missing: Vec<&String> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
    let mut extra: Vec<&String> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
    missing.sort();
    extra.sort();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing {missing:?}, unexpected {extra:?}"
    );
    for (name, want) in expected {
        let have = &got[name];
        assert_eq!(want.dims(), have.dims(), "{what}: {name} shape");
        let (a, b) = (
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            have.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{what}: {name} differs"
        );
    }
    assert!(!expected.is_empty(), "{what}: no tensors compared");
}

/// Runs `folder` and `file` (same weights, two layouts) and checks each
/// listed component and the pictures.
fn assert_same_model(folder: ModelEntry, file: ModelEntry, components: &[&str]) {
    let models = tempfile::tempdir().unwrap();
    let generator = CandleGenerator::new(models.path().to_path_buf(), EngineOptions::default())
        .expect("cpu generator");
    generator
        .can_run(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.key));
    let assembled = models.path().join("single-file").join(&file.key);
    for component in components {
        let mut expected = tensors(&Path::new(&folder.source).join(component));
        let mut got = tensors(&assembled.join(component));
        if component.starts_with("text_encoder") {
            expected = without_text_model(expected);
            got = without_text_model(got);
        }
        assert_same_tensors(&format!("{} {component}", file.key), &expected, &got);
    }
    assert_eq!(
        pixels(&generator, &folder),
        pixels(&generator, &file),
        "{}: the pictures differ",
        file.key
    );
}

#[test]
fn an_a1111_sd15_checkpoint_is_its_diffusers_model() {
    assert_same_model(
        folder_entry("tiny-sd15", "tiny-sd15-random"),
        file_entry(
            "sd15-file",
            "tiny-sd15-ldm.safetensors",
            "tiny-sd15",
            "tiny-sd15-random",
        ),
        &["unet", "vae", "text_encoder"],
    );
}

#[test]
fn an_sdxl_checkpoint_with_open_clip_is_its_diffusers_model() {
    assert_same_model(
        folder_entry("tiny-sdxl", "tiny-sdxl-random"),
        file_entry(
            "sdxl-file",
            "tiny-sdxl-sgm.safetensors",
            "tiny-sdxl",
            "tiny-sdxl-random",
        ),
        &["unet", "vae", "text_encoder", "text_encoder_2"],
    );
}

#[test]
fn a_bfl_flux_transformer_with_separate_encoders_is_its_diffusers_model() {
    // The transformer keeps BFL's fused names (its loader reads them as
    // they are), so it is compared through the pictures; the rest tensor
    // by tensor.
    assert_same_model(
        folder_entry("tiny-flux", "tiny-flux-random"),
        flux_files("flux-files", "tiny-flux-bfl.safetensors"),
        &["vae", "text_encoder", "text_encoder_2"],
    );
}

#[test]
fn an_fp8_checkpoint_runs_as_its_dequantized_copy() {
    let fp8 = flux_files("flux-fp8", "tiny-flux-bfl-fp8.safetensors");
    let dequantized = flux_files(
        "flux-dequantized",
        "tiny-flux-bfl-fp8-dequantized.safetensors",
    );
    let models = tempfile::tempdir().unwrap();
    let generator =
        CandleGenerator::new(models.path().to_path_buf(), EngineOptions::default()).unwrap();
    for model in [&fp8, &dequantized] {
        generator.can_run(model).unwrap();
    }
    let transformer = |key: &str| {
        tensors(
            &models
                .path()
                .join("single-file")
                .join(key)
                .join("transformer"),
        )
    };
    assert_same_tensors(
        "FP8 transformer",
        &transformer("flux-dequantized"),
        &transformer("flux-fp8"),
    );
    assert_eq!(pixels(&generator, &fp8), pixels(&generator, &dequantized));
}

#[test]
fn fp8_codes_decode_as_pytorch_decodes_them() {
    let codes = read_tensors(
        &[single_file("fp8_codes.safetensors")],
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    for format in ["e4m3fn", "e5m2"] {
        let ours = codes[format].to_vec1::<f32>().unwrap();
        let torch = codes[&format!("{format}_as_f32")].to_vec1::<f32>().unwrap();
        assert_eq!(ours.len(), 256);
        for (code, (a, b)) in ours.iter().zip(&torch).enumerate() {
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{format} code {code:#04x}: {a} vs PyTorch's {b}"
            );
        }
    }
}

#[test]
fn a_file_of_the_wrong_family_is_refused_with_what_it_holds() {
    let models = tempfile::tempdir().unwrap();
    let generator =
        CandleGenerator::new(models.path().to_path_buf(), EngineOptions::default()).unwrap();
    let mut wrong = file_entry(
        "sdxl-as-sd15",
        "tiny-sdxl-sgm.safetensors",
        "tiny-sd15",
        "tiny-sd15-random",
    );
    let err = generator.can_run(&wrong).unwrap_err().to_string();
    assert!(
        err.contains("holds a sdxl model") && err.contains("says sd15"),
        "{err}"
    );
    wrong.family = ModelFamily::FluxDev;
    wrong.source = single_file("tiny-flux-bfl.safetensors")
        .display()
        .to_string();
    let err = generator.can_run(&wrong).unwrap_err().to_string();
    assert!(
        err.contains("needs a CLIP-L text encoder") && err.contains("the autoencoder"),
        "{err}"
    );
    let missing_config = ModelEntry {
        config: Some("nobody/not-cached".into()),
        ..file_entry(
            "no-config",
            "tiny-sd15-ldm.safetensors",
            "tiny-sd15",
            "tiny-sd15-random",
        )
    };
    let err = generator.can_run(&missing_config).unwrap_err().to_string();
    assert!(
        err.contains("configs and tokenizers of nobody/not-cached") && err.contains("models pull"),
        "{err}"
    );
}

/// Stability's SD 3.5 file: every component as in the diffusers folder but
/// CLIP-L's projection, which is the identity in an SD 3 single file (as
/// diffusers' loader makes it); so the picture is held to diffusers' own
/// run of `from_single_file` on the same file.
#[test]
fn a_stability_sd35_file_matches_diffusers_from_single_file() {
    use cyberimage_engine::pipelines::sd3::Sd3;

    let file = file_entry(
        "sd3-file",
        "tiny-sd3-stability.safetensors",
        "tiny-sd3",
        "tiny-sd3-random",
    );
    let models = tempfile::tempdir().unwrap();
    let generator =
        CandleGenerator::new(models.path().to_path_buf(), EngineOptions::default()).unwrap();
    generator
        .can_run(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.key));
    let assembled = models.path().join("single-file/sd3-file");
    let folder = fixture_dir("tiny-sd3");
    for component in ["transformer", "vae", "text_encoder_2", "text_encoder_3"] {
        let expected = without_text_model(tensors(&folder.join(component)));
        let mut got = without_text_model(tensors(&assembled.join(component)));
        if component == "text_encoder_3" {
            // The file also stores T5's tied embedding under its second name.
            assert!(got.remove("encoder.embed_tokens.weight").is_some());
        }
        assert_same_tensors(&format!("SD3 {component}"), &expected, &got);
    }
    let mut expected = without_text_model(tensors(&folder.join("text_encoder")));
    let mut got = without_text_model(tensors(&assembled.join("text_encoder")));
    let projection = got.remove("text_projection.weight").unwrap();
    let width = projection.dim(0).unwrap();
    let eye = Tensor::eye(width, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(
        projection.to_vec2::<f32>().unwrap(),
        eye.to_vec2::<f32>().unwrap()
    );
    expected.remove("text_projection.weight");
    assert_same_tensors("SD3 text_encoder", &expected, &got);

    let settings = support::settings_of("tiny-sd3");
    let text = |key: &str| settings[key].as_str().unwrap().to_string();
    let refs = candle_core::safetensors::load(
        single_file("tiny-sd3-stability.references.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let sd3 = Sd3::load(&assembled, &Device::Cpu).unwrap();
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
    support::assert_images_close(&sd3.decode_unit(&latents).unwrap(), &refs["final_image"]);
}

/// An inpainting checkpoint is its base model with a 9-channel first
/// convolution: the config borrowed from the base model's folder says 4,
/// and the loader takes the file's word for it.
#[test]
fn an_inpainting_single_file_gets_its_nine_input_channels() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors =
        candle_core::safetensors::load(single_file("tiny-sd15-ldm.safetensors"), &Device::Cpu)
            .unwrap();
    let name = "model.diffusion_model.input_blocks.0.0.weight";
    let conv_in = &tensors[name];
    let (out, inputs, kh, kw) = conv_in.dims4().unwrap();
    assert_eq!(inputs, 4);
    let extra = Tensor::randn(0f32, 0.2, (out, 5, kh, kw), &Device::Cpu)
        .unwrap()
        .to_dtype(conv_in.dtype())
        .unwrap();
    let wider = Tensor::cat(&[conv_in, &extra], 1).unwrap();
    tensors.insert(name.into(), wider);
    let file = dir.path().join("tiny-sd15-inpainting.safetensors");
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let model = ModelEntry {
        key: "tiny-sd15-inpainting-file".into(),
        source: file.display().to_string(),
        config: Some(fixture_dir("tiny-sd15").display().to_string()),
        ..builtin("tiny-sd15-random")
    };
    let models = tempfile::tempdir().unwrap();
    let generator =
        CandleGenerator::new(models.path().to_path_buf(), EngineOptions::default()).unwrap();
    let spec = GenerationSpec {
        prompt: "a lighthouse at dusk".into(),
        negative_prompt: None,
        model: model.key.clone(),
        width: 64,
        height: 64,
        steps: 2,
        guidance_scale: 7.5,
        num_images: 1,
        seed: 3,
        init_image: None,
        loras: Vec::new(),
        upscale: None,
        hires: None,
    };
    let image = generator
        .generate(&model, &spec, &NoProgress, &CancelToken::new())
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0);
    assert_eq!(image.rgb.len(), 64 * 64 * 3);
}
