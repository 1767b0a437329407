//! Parity of the SDXL pipeline with diffusers on the tiny SDXL-class model
//! (`fixtures/tiny/tiny-sdxl`): both tokenizers, the two encoders'
//! penultimate states and the projected pooled output, the UNet with its
//! `text_time` added embedding, the Euler trajectory and the final images
//! with a negative prompt and without one (zero negative conditioning).

mod support;

use candle_core::{DType, Device, Tensor};
use cyberimage_engine::models::tokenizer::PromptTokenizer;
use cyberimage_engine::models::unet::{AddedConditioning, UNet};
use cyberimage_engine::pipelines::sd::StableDiffusion;
use support::{
    assert_close, assert_images_close, assert_token_ids, fixture_dir, references_of, settings_of,
    Trajectory,
};

const NAME: &str = "tiny-sdxl";

fn prompt() -> String {
    settings_of(NAME)["prompt"].as_str().unwrap().to_owned()
}

fn negative() -> String {
    settings_of(NAME)["negative_prompt"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn both_tokenizers_match_transformers() {
    let refs = references_of(NAME);
    for (folder, key) in [("tokenizer", "input_ids"), ("tokenizer_2", "input_ids_2")] {
        let tok = PromptTokenizer::load(&fixture_dir(NAME).join(folder), 77).unwrap();
        assert_token_ids(&tok, &[&prompt(), &negative()], &refs[key], folder);
    }
}

#[test]
fn prompt_encoding_matches_encode_prompt() {
    let refs = references_of(NAME);
    let sd = StableDiffusion::load(&fixture_dir(NAME), &Device::Cpu).unwrap();
    let cond = sd.encode_prompts(&prompt(), Some(&negative())).unwrap();
    let context = Tensor::cat(
        &[&refs["negative_prompt_embeds"], &refs["prompt_embeds"]],
        0,
    )
    .unwrap();
    assert_close("prompt embeds", &cond.context, &context, 1e-4);
    let pooled = Tensor::cat(
        &[
            &refs["negative_pooled_prompt_embeds"],
            &refs["pooled_prompt_embeds"],
        ],
        0,
    )
    .unwrap();
    assert_close(
        "pooled embeds",
        cond.pooled.as_ref().unwrap(),
        &pooled,
        1e-4,
    );
}

#[test]
fn unet_with_text_time_embedding_matches_diffusers() {
    let refs = references_of(NAME);
    let unet = UNet::load(&fixture_dir(NAME).join("unet"), DType::F32, &Device::Cpu).unwrap();
    let context = Tensor::cat(
        &[&refs["negative_prompt_embeds"], &refs["prompt_embeds"]],
        0,
    )
    .unwrap();
    let added = AddedConditioning {
        text_embeds: Tensor::cat(
            &[
                &refs["negative_pooled_prompt_embeds"],
                &refs["pooled_prompt_embeds"],
            ],
            0,
        )
        .unwrap(),
        time_ids: refs["add_time_ids"].repeat((2, 1)).unwrap(),
    };
    let out = unet
        .forward(&refs["unet_input"], 500.0, &context, Some(&added))
        .unwrap();
    assert_close("unet", &out, &refs["unet_output_t500"], 1e-4);
    // Without its added conditioning an SDXL UNet refuses to run.
    assert!(unet
        .forward(&refs["unet_input"], 500.0, &context, None)
        .is_err());
}

fn run(sd: &StableDiffusion, negative: Option<&str>, trajectory: Option<&Tensor>) -> Tensor {
    let refs = references_of(NAME);
    let settings = settings_of(NAME);
    let cond = sd.encode_prompts(&prompt(), negative).unwrap();
    let check = trajectory.map(Trajectory::new);
    let latents = sd
        .denoise(
            &cond,
            refs["initial_latents"].clone(),
            settings["steps"].as_u64().unwrap() as usize,
            settings["guidance_scale"].as_f64().unwrap(),
            &mut |_| panic!("Euler needs no noise"),
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
fn euler_trajectory_and_final_images_match_diffusers() {
    let refs = references_of(NAME);
    let sd = StableDiffusion::load(&fixture_dir(NAME), &Device::Cpu).unwrap();
    assert_eq!(sd.scheduler(4).unwrap().name(), "Euler");
    let image = run(&sd, Some(&negative()), Some(&refs["euler_trajectory"]));
    let settings = settings_of(NAME);
    assert_eq!(
        image.dims()[..2],
        [
            settings["height"].as_u64().unwrap() as usize,
            settings["width"].as_u64().unwrap() as usize
        ]
    );
    assert_images_close(&image, &refs["final_image"]);
    let image = run(&sd, None, None);
    assert_images_close(&image, &refs["final_image_without_negative"]);
}
