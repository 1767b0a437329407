//! Image-to-image and inpainting parity with diffusers' img2img and
//! inpaint pipelines (`StableDiffusionImg2ImgPipeline`,
//! `StableDiffusionInpaintPipeline`, the SDXL, SD 3 and FLUX ones) on the
//! tiny models: the same init image (and mask), strength 0.6 of 5 steps,
//! and the random draws diffusers made (the VAE posterior sample and the
//! noise mixed into the encoded image), recorded by
//! `fixtures/img2img_references.py`. Checked: the image as the VAE takes
//! it, the steps that strength keeps, and the final picture.

mod support;

use candle_core::{Device, Tensor};
use cyberimage_engine::pipelines::flux::Flux;
use cyberimage_engine::pipelines::img2img::{image_tensor, latent_mask, start_step};
use cyberimage_engine::pipelines::sd::StableDiffusion;
use cyberimage_engine::pipelines::sd3::Sd3;
use std::collections::HashMap;
use support::{assert_close, assert_images_close, fixture_dir};

struct Case {
    refs: HashMap<String, Tensor>,
    settings: serde_json::Value,
}

/// Which diffusers pipeline the references come from.
#[derive(Clone, Copy)]
enum Task {
    Img2Img,
    Inpaint,
}

impl Case {
    fn of(name: &str, task: Task) -> Self {
        let dir = fixture_dir(name);
        let stem = match task {
            Task::Img2Img => "img2img_references",
            Task::Inpaint => "inpaint_references",
        };
        Self {
            refs: candle_core::safetensors::load(
                dir.join(format!("{stem}.safetensors")),
                &Device::Cpu,
            )
            .unwrap(),
            settings: serde_json::from_str(
                &std::fs::read_to_string(dir.join(format!("{stem}.json"))).unwrap(),
            )
            .unwrap(),
        }
    }

    /// The inpainting mask at latent size, when the case has one.
    fn mask(&self) -> Option<Tensor> {
        let mask = self.refs.get("mask_u8")?;
        let (h, w) = mask.dims2().unwrap();
        let luma = mask.flatten_all().unwrap().to_vec1::<u8>().unwrap();
        Some(latent_mask(&luma, w, h, 8, &Device::Cpu).unwrap())
    }

    fn text(&self, key: &str) -> String {
        self.settings[key].as_str().unwrap().to_string()
    }

    fn number(&self, key: &str) -> f64 {
        self.settings[key].as_f64().unwrap()
    }

    fn steps(&self) -> usize {
        self.number("steps") as usize
    }

    /// Our preprocessing of the init image equals diffusers'; returns it.
    fn image(&self) -> Tensor {
        let pixels = &self.refs["init_image_u8"];
        let (h, w, _) = pixels.dims3().unwrap();
        let rgb = pixels.flatten_all().unwrap().to_vec1::<u8>().unwrap();
        let ours = image_tensor(&rgb, w, h, &Device::Cpu).unwrap();
        if let Some(theirs) = self.refs.get("preprocessed") {
            assert_close("preprocessed image", &ours, theirs, 1e-6);
        }
        ours
    }

    /// Inpainting: the final latents against diffusers' (`packed` for
    /// FLUX's token layout).
    fn check_latents(&self, ours: &Tensor) {
        if let Some(theirs) = self.refs.get("final_latents") {
            assert_close("final latents", ours, theirs, 1e-4);
        }
    }

    /// The steps strength keeps are the ones diffusers ran.
    fn check_steps(&self) {
        let kept = self.steps() - start_step(self.steps(), self.number("strength")).unwrap();
        assert_eq!(kept, self.refs["timesteps"].dim(0).unwrap());
    }

    fn counter(&self) -> impl FnMut(usize, &Tensor) -> bool {
        let expected = self.refs["timesteps"].dim(0).unwrap();
        let mut last = 0;
        move |done, _| {
            assert_eq!(done, last + 1, "steps are counted from 1 in each run");
            last = done;
            assert!(done <= expected);
            true
        }
    }
}

fn sd_family(name: &str, task: Task) {
    let case = Case::of(name, task);
    let mask = case.mask();
    case.check_steps();
    let sd = StableDiffusion::load(&fixture_dir(name), &Device::Cpu).unwrap();
    let clean = sd
        .image_encoder()
        .latents(&case.image(), &case.refs["posterior_noise"])
        .unwrap();
    let guidance = case.number("guidance_scale");
    let cond = sd
        .encode_for_guidance(
            &case.text("prompt"),
            Some(&case.text("negative_prompt")),
            guidance,
        )
        .unwrap();
    let latents = sd
        .denoise_image(
            &cond,
            &clean,
            &case.refs["noise"],
            mask.as_ref(),
            case.steps(),
            case.number("strength"),
            guidance,
            &mut |_| panic!("a deterministic sampler draws no step noise"),
            &mut case.counter(),
        )
        .unwrap()
        .unwrap();
    case.check_latents(&latents);
    assert_images_close(
        &sd.decode_unit(&latents).unwrap(),
        &case.refs["final_image"],
    );
}

#[test]
fn sd15_img2img_matches_diffusers() {
    sd_family("tiny-sd15", Task::Img2Img);
}

#[test]
fn sdxl_img2img_matches_diffusers() {
    sd_family("tiny-sdxl", Task::Img2Img);
}

#[test]
fn sd15_inpainting_matches_diffusers() {
    sd_family("tiny-sd15", Task::Inpaint);
}

#[test]
fn sdxl_inpainting_matches_diffusers() {
    sd_family("tiny-sdxl", Task::Inpaint);
}

#[test]
fn sd3_img2img_matches_diffusers() {
    sd3(Task::Img2Img);
}

#[test]
fn sd3_inpainting_matches_diffusers() {
    sd3(Task::Inpaint);
}

#[test]
fn flux_img2img_matches_diffusers() {
    flux(Task::Img2Img);
}

#[test]
fn flux_inpainting_matches_diffusers() {
    flux(Task::Inpaint);
}

fn sd3(task: Task) {
    let case = Case::of("tiny-sd3", task);
    let mask = case.mask();
    case.check_steps();
    let sd3 = Sd3::load(&fixture_dir("tiny-sd3"), &Device::Cpu).unwrap();
    let clean = sd3
        .image_encoder()
        .latents(&case.image(), &case.refs["posterior_noise"])
        .unwrap();
    let cond = sd3
        .encode_prompts(&case.text("prompt"), Some(&case.text("negative_prompt")))
        .unwrap();
    let latents = sd3
        .denoise_image(
            &cond,
            &clean,
            &case.refs["noise"],
            mask.as_ref(),
            case.steps(),
            case.number("strength"),
            case.number("guidance_scale"),
            &mut case.counter(),
        )
        .unwrap()
        .unwrap();
    case.check_latents(&latents);
    // diffusers' SD 3 inpaint pipeline decodes without the VAE's shift
    // (its text-to-image and img2img pipelines add it): there the latents
    // are the parity, and the picture is decoded the way img2img does.
    if matches!(task, Task::Img2Img) {
        assert_images_close(
            &sd3.decode_unit(&latents).unwrap(),
            &case.refs["final_image"],
        );
    }
}

fn flux(task: Task) {
    let case = Case::of("tiny-flux", task);
    let mask = case.mask();
    case.check_steps();
    let flux = Flux::load(&fixture_dir("tiny-flux"), &Device::Cpu).unwrap();
    let clean = flux
        .image_encoder()
        .latents(&case.image(), &case.refs["posterior_noise"])
        .unwrap();
    let cond = flux.encode_prompt(&case.text("prompt")).unwrap();
    let latents = flux
        .denoise_image(
            &cond,
            &clean,
            &case.refs["noise"],
            mask.as_ref(),
            case.steps(),
            case.number("strength"),
            case.number("guidance_scale"),
            &mut case.counter(),
        )
        .unwrap()
        .unwrap();
    if matches!(task, Task::Inpaint) {
        case.check_latents(&cyberimage_engine::pipelines::flux::pack(&latents).unwrap());
    }
    assert_images_close(
        &flux.decode_unit(&latents).unwrap(),
        &case.refs["final_image"],
    );
}

#[test]
fn a_strength_that_keeps_no_step_is_refused() {
    let err = start_step(5, 0.1).unwrap_err().to_string();
    assert!(err.contains("keeps no step"), "{err}");
    assert_eq!(
        start_step(10, 0.7).unwrap(),
        3,
        "int(10 · 0.7) = 7 steps run"
    );
    assert_eq!(start_step(4, 1.0).unwrap(), 0);
}
