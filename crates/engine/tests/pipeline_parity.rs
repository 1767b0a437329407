//! End-to-end parity of the SD pipeline with diffusers on the tiny
//! SD1.5-class model: the DDIM and Euler trajectories step by step, the
//! final images, and SD-Turbo's single step without guidance.

mod support;

use candle_core::Device;
use cyberimage_engine::pipelines::sd::StableDiffusion;
use support::{assert_images_close, model_dir, reference_settings, references, Trajectory};

fn euler_references() -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(
        model_dir().join("euler_references.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

/// The tiny model under diffusers' Euler scheduler with `spacing`.
fn euler_pipeline(spacing: &str) -> StableDiffusion {
    let sd = StableDiffusion::load(&model_dir(), &Device::Cpu).unwrap();
    let mut config = sd.scheduler_config().clone();
    config.class_name = "EulerDiscreteScheduler".into();
    config.timestep_spacing = spacing.into();
    sd.with_scheduler(config)
}

fn run_and_compare(
    sd: &StableDiffusion,
    steps: usize,
    guidance: f64,
    trajectory: Option<&candle_core::Tensor>,
) -> candle_core::Tensor {
    run_with_noise(sd, steps, guidance, trajectory, None)
}

/// `step_noise`: (steps, c, h, w), the noise diffusers drew at each step.
fn run_with_noise(
    sd: &StableDiffusion,
    steps: usize,
    guidance: f64,
    trajectory: Option<&candle_core::Tensor>,
    step_noise: Option<&candle_core::Tensor>,
) -> candle_core::Tensor {
    let refs = references();
    let meta = reference_settings();
    // As the generator encodes: without guidance, the prompt alone.
    let context = sd
        .encode_for_guidance(
            meta["prompt"].as_str().unwrap(),
            meta["negative_prompt"].as_str(),
            guidance,
        )
        .unwrap();
    let check = trajectory.map(Trajectory::new);
    let latents = sd
        .denoise(
            &context,
            refs["initial_latents"].clone(),
            steps,
            guidance,
            &mut |step| match step_noise {
                Some(noise) => noise.get(step)?.unsqueeze(0),
                None => panic!("this scheduler should not need noise"),
            },
            &mut |step, latents| check.as_ref().is_none_or(|c| c.check(step, latents)),
        )
        .unwrap()
        .unwrap();
    if let Some(check) = &check {
        check.assert_close();
    }
    sd.decode_unit(&latents).unwrap()
}

#[test]
fn euler_leading_and_trailing_match_diffusers() {
    let refs = euler_references();
    for spacing in ["leading", "trailing"] {
        let sd = euler_pipeline(spacing);
        assert_eq!(sd.scheduler(4).unwrap().name(), "Euler");
        let image = run_and_compare(
            &sd,
            4,
            7.5,
            Some(&refs[&format!("euler_{spacing}_trajectory")]),
        );
        assert_images_close(&image, &refs[&format!("euler_{spacing}_image")]);
    }
}

#[test]
fn turbo_single_step_without_guidance_matches_diffusers() {
    let refs = euler_references();
    let image = run_and_compare(&euler_pipeline("trailing"), 1, 0.0, None);
    assert_images_close(&image, &refs["turbo_image"]);
}

#[test]
fn unguided_encoding_is_the_prompt_row_and_cannot_drive_guidance() {
    let meta = reference_settings();
    let sd = euler_pipeline("trailing");
    let (prompt, negative) = (
        meta["prompt"].as_str().unwrap(),
        meta["negative_prompt"].as_str(),
    );
    let guided = sd.encode_prompts(prompt, negative).unwrap();
    let alone = sd.encode_for_guidance(prompt, negative, 1.0).unwrap();
    assert_eq!(alone.context.dim(0).unwrap(), 1);
    let diff = (guided.context.narrow(0, 1, 1).unwrap() - &alone.context)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-5, "prompt row differs by {diff}");
    let latents = references()["initial_latents"].clone();
    let err = sd
        .denoise(
            &alone,
            latents,
            1,
            7.5,
            &mut |_| unreachable!(),
            &mut |_, _| true,
        )
        .expect_err("guidance 7.5 without the negative row must fail");
    assert!(err.to_string().contains("negative prompt"), "{err}");
}

#[test]
fn ddim_trajectory_and_final_image_match_diffusers() {
    let refs = references();
    let meta = reference_settings();
    let sd = StableDiffusion::load(&model_dir(), &Device::Cpu).unwrap();
    assert_eq!(sd.scheduler(4).unwrap().name(), "DDIM");
    let image = run_and_compare(
        &sd,
        meta["steps"].as_u64().unwrap() as usize,
        meta["guidance_scale"].as_f64().unwrap(),
        Some(&refs["ddim_trajectory"]),
    );
    assert_images_close(&image, &refs["final_image"]);
}

#[test]
fn euler_ancestral_with_the_same_noise_matches_diffusers() {
    let refs = candle_core::safetensors::load(
        model_dir().join("euler_a_references.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let sd = StableDiffusion::load(&model_dir(), &Device::Cpu).unwrap();
    let mut config = sd.scheduler_config().clone();
    config.class_name = "EulerAncestralDiscreteScheduler".into();
    let sd = sd.with_scheduler(config);
    assert_eq!(sd.scheduler(4).unwrap().name(), "Euler a");
    let image = run_with_noise(
        &sd,
        4,
        7.5,
        Some(&refs["euler_a_trajectory"]),
        Some(&refs["euler_a_noise"]),
    );
    assert_images_close(&image, &refs["euler_a_image"]);
}
