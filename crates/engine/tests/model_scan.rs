//! A ComfyUI `models` folder and an AUTOMATIC1111 one, filled with the
//! tiny single-file fixtures, are scanned: each checkpoint appears with the
//! family its tensors say (file names are chosen to mislead), the FLUX
//! transformer is paired with its encoders and autoencoder, unusable files
//! are reported with their reason, and the scanned models generate.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cyberimage_core::{
    CancelToken, GenerationSpec, Generator, ModelFamily, ProgressObserver, ProgressUpdate,
};
use cyberimage_engine::weights::scan::{scan, ScanReport};
use cyberimage_engine::{CandleGenerator, EngineOptions};
use support::fixture_dir;

struct NoProgress;

impl ProgressObserver for NoProgress {
    fn on_progress(&self, _: ProgressUpdate) {}
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/single-file")
        .join(name)
}

fn place(root: &Path, relative: &str, fixture_name: &str) {
    let to = root.join(relative);
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(fixture(fixture_name), to).unwrap();
}

fn comfyui_tree(root: &Path) {
    // Names that say the wrong thing: detection must read the tensors.
    place(
        root,
        "checkpoints/sdxl_looking_name.safetensors",
        "tiny-sd15-ldm.safetensors",
    );
    place(
        root,
        "checkpoints/XL/My Model v2.safetensors",
        "tiny-sdxl-sgm.safetensors",
    );
    place(
        root,
        "checkpoints/sd35_medium.safetensors",
        "tiny-sd3-stability.safetensors",
    );
    place(
        root,
        "diffusion_models/flux1-dev-fp8.safetensors",
        "tiny-flux-bfl-fp8.safetensors",
    );
    place(
        root,
        "clip/clip_l.safetensors",
        "tiny-flux-clip_l.safetensors",
    );
    place(
        root,
        "text_encoders/t5xxl_fp16.safetensors",
        "tiny-flux-t5.safetensors",
    );
    place(root, "vae/ae.safetensors", "tiny-flux-ae.safetensors");
    // A VAE where a checkpoint belongs, a pickle, and noise.
    place(
        root,
        "checkpoints/stray_vae.safetensors",
        "tiny-flux-ae.safetensors",
    );
    std::fs::write(root.join("checkpoints/old.ckpt"), b"pickle").unwrap();
    place(
        root,
        "checkpoints/codes.safetensors",
        "fp8_codes.safetensors",
    );
    std::fs::write(root.join("checkpoints/truncated.safetensors"), b"\x10\0\0").unwrap();
}

fn a1111_tree(root: &Path) {
    place(
        root,
        "Stable-diffusion/v1-5-pruned-emaonly.safetensors",
        "tiny-sd15-ldm.safetensors",
    );
    place(
        root,
        "VAE/vae-ft-mse.safetensors",
        "tiny-flux-ae.safetensors",
    );
    // A second FLUX transformer with no encoders beside it.
    place(
        root,
        "Stable-diffusion/flux_alone.safetensors",
        "tiny-flux-bfl.safetensors",
    );
}

fn configs() -> BTreeMap<ModelFamily, String> {
    [
        (ModelFamily::Sd15, "tiny-sd15"),
        (ModelFamily::Sdxl, "tiny-sdxl"),
        (ModelFamily::Sd3, "tiny-sd3"),
        (ModelFamily::FluxDev, "tiny-flux"),
    ]
    .into_iter()
    .map(|(family, dir)| (family, fixture_dir(dir).display().to_string()))
    .collect()
}

fn reason_for<'a>(report: &'a ScanReport, file: &str) -> &'a str {
    &report
        .skipped
        .iter()
        .find(|s| s.path.ends_with(file))
        .unwrap_or_else(|| panic!("{file} not reported: {:?}", report.skipped))
        .reason
}

#[test]
fn comfyui_and_a1111_folders_become_models() {
    let comfy = tempfile::tempdir().unwrap();
    let a1111 = tempfile::tempdir().unwrap();
    comfyui_tree(comfy.path());
    a1111_tree(a1111.path());
    let roots = vec![comfy.path().to_path_buf(), a1111.path().to_path_buf()];
    let taken = vec!["flux-1".to_string(), "sdxl_looking_name".to_string()];
    let report = scan(&roots, &configs(), &taken);

    let found: Vec<(&str, ModelFamily)> = report
        .models
        .iter()
        .map(|m| (m.key.as_str(), m.family))
        .collect();
    assert_eq!(
        found,
        [
            ("my-model-v2", ModelFamily::Sdxl),
            ("sd35_medium", ModelFamily::Sd3),
            // The configured key is not reused.
            ("sdxl_looking_name-2", ModelFamily::Sd15),
            ("flux1-dev-fp8", ModelFamily::FluxDev),
            ("v1-5-pruned-emaonly", ModelFamily::Sd15),
        ],
        "{report:#?}"
    );
    let flux = &report.models[3];
    assert!(flux.vae.as_deref().unwrap().ends_with("vae/ae.safetensors"));
    assert_eq!(flux.text_encoders.len(), 2);
    assert!(reason_for(&report, "stray_vae.safetensors").contains("VAE"));
    assert!(reason_for(&report, "old.ckpt").contains("pickle"));
    assert!(reason_for(&report, "codes.safetensors").contains("no known model"));
    assert!(reason_for(&report, "truncated.safetensors").contains("cannot read"));
    assert!(reason_for(&report, "flux_alone.safetensors").contains("no a CLIP-L text encoder"));
    // The same folders give the same keys on the next start.
    assert_eq!(scan(&roots, &configs(), &taken), report);

    let models = tempfile::tempdir().unwrap();
    let generator =
        CandleGenerator::new(models.path().to_path_buf(), EngineOptions::default()).unwrap();
    for model in &report.models {
        generator
            .can_run(model)
            .unwrap_or_else(|e| panic!("{}: {e}", model.key));
    }
    for model in &report.models[1..] {
        let spec = GenerationSpec {
            prompt: "a lighthouse".into(),
            negative_prompt: None,
            model: model.key.clone(),
            width: 64,
            height: 64,
            steps: 2,
            guidance_scale: model.defaults.guidance_scale,
            num_images: 1,
            seed: 1,
            init_image: None,
            loras: Vec::new(),
            upscale: None,
            hires: None,
        };
        let images = generator
            .generate(model, &spec, &NoProgress, &CancelToken::new())
            .unwrap_or_else(|e| panic!("{}: {e}", model.key));
        assert_eq!(images[0].rgb.len(), 64 * 64 * 3);
    }
}
