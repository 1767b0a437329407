//! The engine options on the real generator and the built-in tiny models:
//! dropping the text encoders after encoding changes nothing in the
//! pictures, and a memory budget refuses a model before loading it, with
//! the numbers.

use cyberimage_core::{
    CancelToken, Catalogue, EngineError, GenerationSpec, Generator, ModelEntry, ProgressObserver,
    ProgressUpdate,
};

struct NoProgress;

impl ProgressObserver for NoProgress {
    fn on_progress(&self, _: ProgressUpdate) {}
}
use cyberimage_engine::{CandleGenerator, EngineOptions};

fn model(key: &str) -> ModelEntry {
    Catalogue::builtin_test_models()
        .into_iter()
        .find(|m| m.key == key)
        .unwrap()
}

fn spec(model: &ModelEntry) -> GenerationSpec {
    GenerationSpec {
        prompt: "a lighthouse at dusk".into(),
        negative_prompt: Some("fog".into()),
        model: model.key.clone(),
        width: 64,
        height: 48,
        steps: 2,
        guidance_scale: model.defaults.guidance_scale,
        num_images: 1,
        seed: 77,
        init_image: None,
        loras: Vec::new(),
        upscale: None,
        hires: None,
    }
}

fn pixels(options: EngineOptions, key: &str) -> Result<Vec<u8>, EngineError> {
    let models = tempfile::tempdir().unwrap();
    let generator = CandleGenerator::new(models.path().to_path_buf(), options).unwrap();
    let model = model(key);
    let images = generator.generate(&model, &spec(&model), &NoProgress, &CancelToken::new())?;
    Ok(images.into_iter().next().unwrap().rgb)
}

#[test]
fn dropping_text_encoders_gives_the_same_pixels() {
    for key in [
        "tiny-sd15-random",
        "tiny-sdxl-random",
        "tiny-sd3-random",
        "tiny-flux-random",
    ] {
        let kept = pixels(EngineOptions::default(), key).unwrap();
        let dropped = pixels(
            EngineOptions {
                drop_text_encoders: true,
                ..Default::default()
            },
            key,
        )
        .unwrap();
        assert_eq!(kept, dropped, "{key}");
    }
}

#[test]
fn a_memory_budget_refuses_a_model_that_does_not_fit() {
    let tight = EngineOptions {
        // About 1 MB: smaller than any tiny model's denoiser and VAE.
        memory_budget_gib: Some(0.001),
        ..Default::default()
    };
    let err = pixels(tight.clone(), "tiny-flux-random").unwrap_err();
    let EngineError::ModelUnavailable(message) = &err else {
        panic!("{err:?}");
    };
    assert!(
        message.contains("over the memory budget of 0.0 GiB"),
        "{message}"
    );
    assert!(message.contains("drop_text_encoders"), "{message}");
    // can_run says the same before a job is queued, here for the model's
    // files as a local folder (as a user's own download would be).
    let models = tempfile::tempdir().unwrap();
    let dir = cyberimage_engine::weights::builtin::materialize("tiny-flux", models.path()).unwrap();
    let local = ModelEntry {
        key: "my-flux".into(),
        source: dir.display().to_string(),
        ..model("tiny-flux-random")
    };
    let generator = CandleGenerator::new(models.path().to_path_buf(), tight).unwrap();
    let refusal = generator.can_run(&local).unwrap_err().to_string();
    assert!(refusal.contains("\"my-flux\" needs about"), "{refusal}");
    let roomy =
        CandleGenerator::new(models.path().to_path_buf(), EngineOptions::default()).unwrap();
    assert!(roomy.can_run(&local).is_ok());
    let roomy_budget = EngineOptions {
        memory_budget_gib: Some(1.0),
        ..Default::default()
    };
    assert!(pixels(roomy_budget, "tiny-flux-random").is_ok());
}

/// bf16 matrix products on the tiny SD models: pixels close to f32's (the
/// operands keep 8 significant bits), not identical (the kernel ran), and
/// the image's metadata says how it was computed. Where the CPU lacks
/// AVX-512 BF16, the generator refuses the option at startup instead.
#[test]
fn bf16_products_stay_close_to_f32_and_are_declared() {
    let bf16 = EngineOptions {
        precision: cyberimage_engine::Precision::Bf16,
        ..Default::default()
    };
    if !cyberimage_kernels::bf16_gemm::available() {
        let err = CandleGenerator::new(std::env::temp_dir(), bf16)
            .err()
            .expect("refused without AVX-512 BF16");
        assert!(err.contains("AVX-512 BF16"), "{err}");
        return cyberimage_testkit::skipped(
            "bf16 products: this CPU has no AVX-512 BF16 (checked that bf16 is refused)",
        );
    }
    for key in ["tiny-sd15-random", "tiny-sdxl-random"] {
        let exact = pixels(EngineOptions::default(), key).unwrap();
        let rounded = pixels(bf16.clone(), key).unwrap();
        assert_ne!(exact, rounded, "{key}: bf16 changed nothing");
        let mean_diff = exact
            .iter()
            .zip(&rounded)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / exact.len() as f64;
        assert!(mean_diff < 2.0, "{key}: mean pixel difference {mean_diff}");
    }
    let models = tempfile::tempdir().unwrap();
    let generator = CandleGenerator::new(models.path().to_path_buf(), bf16).unwrap();
    let model = model("tiny-sd15-random");
    let image = generator
        .generate(&model, &spec(&model), &NoProgress, &CancelToken::new())
        .unwrap()
        .remove(0);
    let dtype = image.extra_metadata.iter().find(|(k, _)| k == "dtype");
    assert_eq!(
        dtype.map(|(_, v)| v.as_str()),
        Some("f32 with bf16 matrix products")
    );
}

/// Records the step totals a job reports.
#[derive(Default)]
struct StepTotals(std::sync::Mutex<Vec<(u32, u32)>>);

impl ProgressObserver for StepTotals {
    fn on_progress(&self, update: ProgressUpdate) {
        if let ProgressUpdate::Step { done, total } = update {
            self.0.lock().unwrap().push((done, total));
        }
    }
}

/// Image-to-image through the generator, every family: the steps the
/// strength keeps are the ones reported, the input decides the picture,
/// the same input and seed give the same picture, and the metadata says
/// what it started from.
#[test]
fn image_to_image_starts_from_the_input_in_every_family() {
    let models = tempfile::tempdir().unwrap();
    let generator =
        CandleGenerator::new(models.path().to_path_buf(), EngineOptions::default()).unwrap();
    let input = |shade: u8| cyberimage_core::InputImage {
        width: 64,
        height: 48,
        rgb: (0..64 * 48 * 3)
            .map(|i| if i % 3 == 0 { shade } else { (i % 251) as u8 })
            .collect(),
        mask: None,
    };
    for key in [
        "tiny-sd15-random",
        "tiny-sdxl-random",
        "tiny-sd3-random",
        "tiny-flux-random",
    ] {
        let model = model(key);
        let mut job = spec(&model);
        job.steps = 4;
        job.num_images = 2;
        job.init_image = Some(cyberimage_core::InitImage {
            sha256: "ab".repeat(32),
            strength: 0.5,
            mask_sha256: None,
            mask_blur: 0,
            keep_unmasked: false,
        });
        let run = |image: &cyberimage_core::InputImage| {
            let totals = StepTotals::default();
            let images = generator
                .generate_from(&model, &job, Some(image), &totals, &CancelToken::new())
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            (images, totals.0.into_inner().unwrap())
        };
        let (first, steps) = run(&input(10));
        assert_eq!(
            steps,
            vec![(1, 4), (2, 4), (3, 4), (4, 4)],
            "{key}: 2 of 4 steps per image, 2 images"
        );
        let (again, _) = run(&input(10));
        assert_eq!(first[0].rgb, again[0].rgb, "{key}: same input and seed");
        let (other, _) = run(&input(240));
        assert_ne!(first[0].rgb, other[0].rgb, "{key}: the input matters");
        assert_ne!(first[0].rgb, first[1].rgb, "{key}: each image its own seed");
        let metadata: std::collections::HashMap<_, _> =
            first[0].extra_metadata.iter().cloned().collect();
        assert_eq!(metadata["denoising_strength"], "0.5", "{key}");
        assert_eq!(metadata["init_image_sha256"], "ab".repeat(32), "{key}");
        // The spec asks for an input: running without one is refused.
        let err = generator
            .generate(&model, &job, &NoProgress, &CancelToken::new())
            .unwrap_err();
        assert!(
            err.to_string().contains("input image was not given"),
            "{err}"
        );
    }
}

#[derive(Default)]
struct Previews(std::sync::Mutex<Vec<cyberimage_core::PreviewImage>>);

impl ProgressObserver for Previews {
    fn on_progress(&self, _: ProgressUpdate) {}
    fn on_preview(&self, preview: cyberimage_core::PreviewImage) {
        self.0.lock().unwrap().push(preview);
    }
}

/// A latent-sized RGB preview follows every step but an image's last, in
/// every family (FLUX's unpacked from its tokens), and they change as the
/// latents do.
#[test]
fn previews_arrive_between_steps_in_every_family() {
    let models = tempfile::tempdir().unwrap();
    let generator =
        CandleGenerator::new(models.path().to_path_buf(), EngineOptions::default()).unwrap();
    for key in [
        "tiny-sd15-random",
        "tiny-sdxl-random",
        "tiny-sd3-random",
        "tiny-flux-random",
    ] {
        let model = model(key);
        let mut job = spec(&model);
        job.steps = 3;
        let previews = Previews::default();
        generator
            .generate(&model, &job, &previews, &CancelToken::new())
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        let previews = previews.0.into_inner().unwrap();
        assert_eq!(
            previews.iter().map(|p| p.step).collect::<Vec<_>>(),
            vec![1, 2],
            "{key}"
        );
        for p in &previews {
            assert_eq!((p.width, p.height), (64 / 8, 48 / 8), "{key}: latent-sized");
            assert_eq!(p.rgb.len(), 8 * 6 * 3);
        }
        assert_ne!(
            previews[0].rgb, previews[1].rgb,
            "{key}: the preview follows the latents"
        );
    }
}
