//! Live previews through a tiny preview decoder when its file is present:
//! the real generator on the built-in tiny SD 1.5 and FLUX models, with the
//! tiny random TAESD-architecture decoders of `fixtures/tiny/taesd/` put
//! where the family looks (`taesd_decoder.safetensors`,
//! `taef1_decoder.safetensors`). With one, the previews are the job's
//! size and the decoder's picture of the step latents; without one, the
//! latent-sized projection. The finished pictures are the same either way.

use std::sync::Mutex;

use cyberimage_core::{
    CancelToken, Catalogue, GenerationSpec, Generator, ModelEntry, PreviewImage, ProgressObserver,
    ProgressUpdate,
};
use cyberimage_engine::{CandleGenerator, EngineOptions};

#[derive(Default)]
struct Previews(Mutex<Vec<PreviewImage>>);

impl ProgressObserver for Previews {
    fn on_progress(&self, _: ProgressUpdate) {}
    fn on_preview(&self, preview: PreviewImage) {
        self.0.lock().unwrap().push(preview);
    }
}

fn model(key: &str) -> ModelEntry {
    Catalogue::builtin_test_models()
        .into_iter()
        .find(|m| m.key == key)
        .unwrap()
}

fn spec(model: &ModelEntry) -> GenerationSpec {
    GenerationSpec {
        prompt: "a lighthouse at dusk".into(),
        negative_prompt: None,
        model: model.key.clone(),
        width: 64,
        height: 48,
        steps: 3,
        guidance_scale: model.defaults.guidance_scale,
        num_images: 1,
        seed: 5,
        init_image: None,
        loras: Vec::new(),
        upscale: None,
        hires: None,
    }
}

fn run(key: &str, decoders: Option<&std::path::Path>) -> (Vec<PreviewImage>, Vec<u8>) {
    let models = tempfile::tempdir().unwrap();
    let mut generator =
        CandleGenerator::new(models.path().to_path_buf(), EngineOptions::default()).unwrap();
    if let Some(dir) = decoders {
        generator = generator.with_preview_decoders_dir(dir.to_path_buf());
    }
    let model = model(key);
    let observer = Previews::default();
    let images = generator
        .generate(&model, &spec(&model), &observer, &CancelToken::new())
        .unwrap();
    let previews = observer.0.into_inner().unwrap();
    (previews, images.into_iter().next().unwrap().rgb)
}

#[test]
fn a_present_decoder_makes_full_size_previews() {
    let fixtures =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny/taesd");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures.join("tiny-taesd_decoder.safetensors"),
        dir.path().join("taesd_decoder.safetensors"),
    )
    .unwrap();
    std::fs::copy(
        fixtures.join("tiny-taef1_decoder.safetensors"),
        dir.path().join("taef1_decoder.safetensors"),
    )
    .unwrap();
    for key in ["tiny-sd15-random", "tiny-flux-random"] {
        let (plain, picture) = run(key, None);
        let (decoded, same_picture) = run(key, Some(dir.path()));
        assert_eq!(
            picture, same_picture,
            "{key}: previews change nothing in the picture"
        );
        assert_eq!(
            plain.len(),
            2,
            "{key}: a preview after each step but the last"
        );
        assert_eq!(decoded.len(), 2, "{key}");
        // The projection is latent-sized; the decoder gives the job's size.
        assert_eq!((plain[0].width, plain[0].height), (8, 6), "{key}");
        assert_eq!((decoded[0].width, decoded[0].height), (64, 48), "{key}");
        assert_eq!(decoded[0].rgb.len(), 64 * 48 * 3);
        assert_ne!(
            decoded[0].rgb, decoded[1].rgb,
            "{key}: each step's own latents"
        );
    }
}
