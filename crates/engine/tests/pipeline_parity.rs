//! End-to-end parity of the SD pipeline with diffusers on the tiny
//! SD1.5-class model: the DDIM trajectory step by step and the final image.

mod support;

use candle_core::Device;
use cyberimage_engine::relative_error;
use cyberimage_engine::sd::StableDiffusion;
use support::{model_dir, reference_settings, references};

#[test]
fn ddim_trajectory_and_final_image_match_diffusers() {
    let refs = references();
    let meta = reference_settings();
    let sd = StableDiffusion::load(&model_dir(), &Device::Cpu).unwrap();
    let context = sd
        .encode_prompts(
            meta["prompt"].as_str().unwrap(),
            meta["negative_prompt"].as_str().unwrap(),
        )
        .unwrap();
    let trajectory = &refs["ddim_trajectory"];
    let mut worst = 0f32;
    let latents = sd
        .denoise(
            &context,
            refs["initial_latents"].clone(),
            meta["steps"].as_u64().unwrap() as usize,
            meta["guidance_scale"].as_f64().unwrap(),
            &mut |step, latents| {
                let expected = trajectory.get(step - 1).unwrap();
                let err = relative_error(latents, &expected).unwrap();
                worst = worst.max(err);
                true
            },
        )
        .unwrap()
        .unwrap();
    eprintln!("worst trajectory relative error {worst:e}");
    assert!(worst <= 1e-4, "trajectory relative error {worst}");

    let image = sd.decode_unit(&latents).unwrap();
    let expected = &refs["final_image"];
    assert_eq!(image.dims(), expected.dims());
    // Final images: within 1/255 on at least 99% of pixel values.
    let ours = image.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let theirs = expected.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let close = ours
        .iter()
        .zip(&theirs)
        .filter(|(a, b)| (*a - *b).abs() <= 1.0 / 255.0)
        .count();
    let share = close as f64 / ours.len() as f64;
    eprintln!("final image: {:.4}% of values within 1/255", share * 100.0);
    assert!(share >= 0.99, "only {share} within 1/255");
}
