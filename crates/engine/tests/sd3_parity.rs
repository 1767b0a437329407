//! Parity of the SD 3.5 pipeline with diffusers on the tiny SD3.5-class
//! model (`fixtures/tiny/tiny-sd3`): the three tokenizers, the joint
//! CLIP + T5 conditioning and pooled text, one CFG-batched MMDiT forward
//! (RMS q/k norms, a dual-attention block, the context-pre-only last
//! block), the shifted flow schedule, the trajectory and the final image.

mod support;

use candle_core::{DType, Device, Tensor};
use cyberimage_engine::models::mmdit::Mmdit;
use cyberimage_engine::models::tokenizer::PromptTokenizer;
use cyberimage_engine::pipelines::sd3::Sd3;
use support::{
    assert_close, assert_images_close, assert_token_ids, fixture_dir, references_of, settings_of,
    Trajectory,
};

const NAME: &str = "tiny-sd3";

fn text(key: &str) -> String {
    settings_of(NAME)[key].as_str().unwrap().to_owned()
}

fn cat(a: &Tensor, b: &Tensor) -> Tensor {
    Tensor::cat(&[a, b], 0).unwrap()
}

#[test]
fn tokenizers_match_transformers() {
    let refs = references_of(NAME);
    let dir = fixture_dir(NAME);
    for (key, tokenizer) in [
        (
            "input_ids",
            PromptTokenizer::load(&dir.join("tokenizer"), 77).unwrap(),
        ),
        (
            "input_ids_2",
            PromptTokenizer::load(&dir.join("tokenizer_2"), 77).unwrap(),
        ),
        (
            "input_ids_3",
            PromptTokenizer::load_t5(&dir.join("tokenizer_3"), 32).unwrap(),
        ),
    ] {
        let texts = [text("prompt"), text("negative_prompt")];
        assert_token_ids(&tokenizer, &[&texts[0], &texts[1]], &refs[key], key);
    }
}

#[test]
fn conditioning_matches_encode_prompt() {
    let refs = references_of(NAME);
    let sd3 = Sd3::load(&fixture_dir(NAME), &Device::Cpu).unwrap();
    let cond = sd3
        .encode_prompts(&text("prompt"), Some(&text("negative_prompt")))
        .unwrap();
    assert_close(
        "joint text states",
        &cond.context,
        &cat(&refs["negative_prompt_embeds"], &refs["prompt_embeds"]),
        1e-4,
    );
    assert_close(
        "pooled text",
        &cond.pooled,
        &cat(
            &refs["negative_pooled_prompt_embeds"],
            &refs["pooled_prompt_embeds"],
        ),
        1e-4,
    );
}

#[test]
fn mmdit_matches_diffusers() {
    let refs = references_of(NAME);
    let model = Mmdit::load(
        &fixture_dir(NAME).join("transformer"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let latents = &refs["initial_latents"];
    let out = model
        .forward(
            &cat(latents, latents),
            750.0,
            &cat(&refs["negative_prompt_embeds"], &refs["prompt_embeds"]),
            &cat(
                &refs["negative_pooled_prompt_embeds"],
                &refs["pooled_prompt_embeds"],
            ),
        )
        .unwrap();
    assert_close("MMDiT", &out, &refs["transformer_output_t750"], 1e-4);
}

#[test]
fn schedule_trajectory_and_final_image_match_diffusers() {
    let refs = references_of(NAME);
    let settings = settings_of(NAME);
    let sd3 = Sd3::load(&fixture_dir(NAME), &Device::Cpu).unwrap();
    let steps = settings["steps"].as_u64().unwrap() as usize;
    let sigmas = sd3.schedule(steps).unwrap();
    let expected = refs["sigmas"].to_vec1::<f32>().unwrap();
    assert_eq!(sigmas.sigmas().len(), expected.len());
    for (a, b) in sigmas.sigmas().iter().zip(&expected) {
        assert!(
            (a - b).abs() < 1e-6,
            "{:?} vs {expected:?}",
            sigmas.sigmas()
        );
    }
    let cond = sd3
        .encode_prompts(&text("prompt"), Some(&text("negative_prompt")))
        .unwrap();
    let check = Trajectory::new(&refs["trajectory"]);
    let latents = sd3
        .denoise(
            &cond,
            refs["initial_latents"].clone(),
            steps,
            settings["guidance_scale"].as_f64().unwrap(),
            &mut |step, latents| check.check(step, latents),
        )
        .unwrap()
        .unwrap();
    check.assert_close();
    assert_images_close(&sd3.decode_unit(&latents).unwrap(), &refs["final_image"]);
}
