//! Inpainting UNets (9 input channels: latents, mask, masked image) against
//! diffusers' `StableDiffusionInpaintPipeline` and
//! `StableDiffusionXLInpaintPipeline` on tiny random ones
//! (`fixtures/inpaint_unet_references.py`, beside tiny-sd15's / tiny-sdxl's
//! text encoders, VAE and scheduler): partial strength and strength 1, with the
//! pipeline's own draws; and generator jobs on the same folder, which
//! find the UNet's kind in its config: inpainting conditioned on the kept
//! part of the input, and text to image on the inpainting model.

mod support;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use cyberimage_engine::pipelines::img2img::{image_tensor, latent_mask};
use cyberimage_engine::pipelines::sd::StableDiffusion;
use support::{assert_close, assert_images_close, fixture_dir};

/// The tiny base model with its inpainting UNet in place of its own.
fn inpainting_model(base: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy(&fixture_dir(base), dir.path(), &|p: &Path| {
        let name = p.file_name().unwrap().to_string_lossy();
        !name.contains("references") && name != "loras" && name != "unet"
    });
    copy(
        &fixture_dir(&format!("{base}-inpaint")).join("unet"),
        &dir.path().join("unet"),
        &|_| true,
    );
    dir
}

fn copy(from: &Path, to: &Path, keep: &dyn Fn(&Path) -> bool) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if !keep(&path) {
            continue;
        }
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy(&path, &target, keep);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

fn references(base: &str) -> (HashMap<String, Tensor>, serde_json::Value) {
    let dir = fixture_dir(&format!("{base}-inpaint"));
    (
        candle_core::safetensors::load(
            dir.join("inpaint_unet_references.safetensors"),
            &Device::Cpu,
        )
        .unwrap(),
        serde_json::from_str(
            &std::fs::read_to_string(dir.join("inpaint_unet_references.json")).unwrap(),
        )
        .unwrap(),
    )
}

fn bytes(t: &Tensor) -> Vec<u8> {
    t.flatten_all().unwrap().to_vec1::<u8>().unwrap()
}

#[test]
fn nine_channel_unets_inpaint_as_diffusers_does() {
    for base in ["tiny-sd15", "tiny-sdxl"] {
        nine_channel_unet_inpaints(base);
    }
}

fn nine_channel_unet_inpaints(base: &str) {
    let (refs, meta) = references(base);
    let model = inpainting_model(base);
    let sd = StableDiffusion::load(model.path(), &Device::Cpu).unwrap();
    assert_eq!(sd.latent_channels(), 4);
    assert_eq!(sd.conditioning_channels(), 5);
    let (w, h) = (
        meta["width"].as_u64().unwrap() as usize,
        meta["height"].as_u64().unwrap() as usize,
    );
    let image = image_tensor(&bytes(&refs["init_image_u8"]), w, h, &Device::Cpu).unwrap();
    let luma = bytes(&refs["mask_u8"]);
    let mask = latent_mask(&luma, w, h, 8, &Device::Cpu).unwrap();
    let pixel_mask = latent_mask(&luma, w, h, 1, &Device::Cpu).unwrap();
    let masked = image.broadcast_mul(&(1.0 - &pixel_mask).unwrap()).unwrap();
    let guidance = meta["guidance_scale"].as_f64().unwrap();
    let cond = sd
        .encode_for_guidance(
            meta["prompt"].as_str().unwrap(),
            meta["negative_prompt"].as_str(),
            guidance,
        )
        .unwrap();
    let steps = meta["steps"].as_u64().unwrap() as usize;
    for (run, settings) in meta["runs"].as_object().unwrap() {
        let strength = settings["strength"].as_f64().unwrap();
        let encoder = sd.image_encoder();
        let masked_latents = encoder
            .latents(&masked, &refs[&format!("{run}.masked_posterior_noise")])
            .unwrap();
        let conditioning = Tensor::cat(&[&mask, &masked_latents], 1).unwrap();
        let clean = refs
            .get(&format!("{run}.posterior_noise"))
            .map(|eps| encoder.latents(&image, eps).unwrap());
        let expected_steps = settings["timesteps"].as_array().unwrap().len();
        let mut counted = 0;
        let latents = sd
            .denoise_conditioned(
                &cond,
                clean.as_ref(),
                &refs[&format!("{run}.noise")],
                &conditioning,
                steps,
                strength,
                guidance,
                &mut |_| panic!("DDIM draws no step noise"),
                &mut |done, _| {
                    counted = done;
                    true
                },
            )
            .unwrap()
            .unwrap();
        assert_eq!(counted, expected_steps, "{base} {run}: steps run");
        assert_close(
            &format!("{base} {run} final latents"),
            &latents,
            &refs[&format!("{run}.final_latents")],
            1e-4,
        );
        assert_images_close(
            &sd.decode_unit(&latents).unwrap(),
            &refs[&format!("{run}.final_image")],
        );
    }
}

struct NoProgress;

impl cyberimage_core::ProgressObserver for NoProgress {
    fn on_progress(&self, _: cyberimage_core::ProgressUpdate) {}
}

#[test]
fn jobs_on_an_inpainting_model_are_conditioned_on_the_kept_part() {
    use cyberimage_core::{
        CancelToken, Catalogue, GenerationSpec, Generator, InitImage, InputImage,
    };
    let model_dir = inpainting_model("tiny-sd15");
    let model = cyberimage_core::ModelEntry {
        key: "tiny-sd15-inpainting".into(),
        source: model_dir.path().display().to_string(),
        ..Catalogue::builtin_test_models()
            .into_iter()
            .find(|m| m.key == "tiny-sd15-random")
            .unwrap()
    };
    let models = tempfile::tempdir().unwrap();
    let generator = cyberimage_engine::CandleGenerator::new(
        models.path().to_path_buf(),
        cyberimage_engine::EngineOptions::default(),
    )
    .unwrap();
    let (w, h) = (64usize, 64usize);
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
    // Repaint the right half only.
    let luma: Vec<u8> = (0..w * h)
        .map(|i| if i % w >= w / 2 { 255 } else { 0 })
        .collect();
    let mut job = GenerationSpec {
        prompt: "a lighthouse at dusk".into(),
        negative_prompt: None,
        model: model.key.clone(),
        width: w as u32,
        height: h as u32,
        steps: 4,
        guidance_scale: 7.5,
        num_images: 1,
        seed: 11,
        init_image: Some(InitImage {
            sha256: "ab".repeat(32),
            strength: 1.0,
            mask_sha256: Some("cd".repeat(32)),
            mask_blur: 0,
            keep_unmasked: false,
        }),
        loras: Vec::new(),
        upscale: None,
        hires: None,
    };
    let input = |rgb: Vec<u8>| InputImage {
        width: w as u32,
        height: h as u32,
        rgb,
        mask: Some(luma.clone()),
    };
    let run = |job: &GenerationSpec, input: Option<&InputImage>| {
        generator
            .generate_from(&model, job, input, &NoProgress, &CancelToken::new())
            .unwrap()
            .remove(0)
            .rgb
    };
    let first = run(&job, Some(&input(rgb.clone())));
    assert_eq!(first, run(&job, Some(&input(rgb.clone()))), "deterministic");
    // Another picture in the kept (left) half only: the 9-channel UNet
    // sees it through the masked image, so the output changes.
    let mut other = rgb.clone();
    for y in 0..h {
        for x in 0..w / 4 {
            other[(y * w + x) * 3] = 255 - other[(y * w + x) * 3];
        }
    }
    assert_ne!(
        first,
        run(&job, Some(&input(other))),
        "the kept part conditions the UNet"
    );
    // Text to image on the inpainting model: everything repainted.
    job.init_image = None;
    let plain = run(&job, None);
    assert_eq!(plain.len(), w * h * 3);
    assert_ne!(plain, first);
}
