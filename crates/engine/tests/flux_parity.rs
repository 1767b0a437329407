//! Parity of the FLUX pipeline with diffusers on the tiny FLUX.1-class
//! model (`fixtures/tiny/tiny-flux`): tokenizers, CLIP pooled output, T5
//! states, latent packing, the flow-matching schedule, one transformer
//! forward from each weight layout (diffusers folder, BFL single file), the
//! trajectory and the final image; and the GGUF path against its own
//! dequantized f32 result.

mod support;

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use cyberimage_engine::models::flux::weights::FluxWeights;
use cyberimage_engine::models::flux::FluxTransformer;
use cyberimage_engine::models::tokenizer::PromptTokenizer;
use cyberimage_engine::pipelines::flux::{load_transformer, pack, Flux};
use cyberimage_engine::schedulers::flow::{FlowMatchConfig, FlowSchedule};
use cyberimage_kernels::relative_error;
use support::{
    assert_close, assert_images_close, assert_token_ids, fixture_dir, references_of, settings_of,
    Trajectory,
};

const NAME: &str = "tiny-flux";

fn prompt() -> String {
    settings_of(NAME)["prompt"].as_str().unwrap().to_owned()
}

#[test]
fn tokenizers_match_transformers() {
    let refs = references_of(NAME);
    let dir = fixture_dir(NAME);
    let clip = PromptTokenizer::load(&dir.join("tokenizer"), 77).unwrap();
    let t5 = PromptTokenizer::load_t5(&dir.join("tokenizer_2"), 32).unwrap();
    assert_token_ids(&clip, &[&prompt()], &refs["input_ids"], "CLIP");
    assert_token_ids(&t5, &[&prompt()], &refs["t5_input_ids"], "T5");
    // Truncation keeps the end token, as transformers does.
    let long = t5.encode(&"snow ".repeat(100)).unwrap();
    assert_eq!((long.len(), long[31]), (32, 1));
}

#[test]
fn prompt_encoding_matches_encode_prompt() {
    let refs = references_of(NAME);
    let flux = Flux::load(&fixture_dir(NAME), &Device::Cpu).unwrap();
    let cond = flux.encode_prompt(&prompt()).unwrap();
    assert_close("T5 states", &cond.t5, &refs["prompt_embeds"], 1e-4);
    assert_close(
        "CLIP pooled",
        &cond.pooled,
        &refs["pooled_prompt_embeds"],
        1e-4,
    );
}

#[test]
fn packing_and_schedules_match_diffusers() {
    let refs = references_of(NAME);
    let packed = pack(&refs["initial_noise"]).unwrap();
    assert_eq!(
        packed.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        refs["initial_latents_packed"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    );
    let dev: FlowMatchConfig = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir(NAME).join("scheduler/scheduler_config.json"))
            .unwrap(),
    )
    .unwrap();
    let schnell: FlowMatchConfig =
        serde_json::from_str(r#"{"shift": 1.0, "use_dynamic_shifting": false}"#).unwrap();
    for (cfg, key) in [(dev, "sigmas"), (schnell, "schnell_sigmas")] {
        let ours = FlowSchedule::flux(&cfg, 4, packed.dim(1).unwrap()).unwrap();
        let expected = refs[key].to_vec1::<f32>().unwrap();
        for (a, b) in ours.sigmas().iter().zip(&expected) {
            assert!(
                (a - b).abs() < 1e-6,
                "{key}: {:?} vs {expected:?}",
                ours.sigmas()
            );
        }
        assert_eq!(ours.sigmas().len(), expected.len());
    }
}

fn transformer_output(folder: &std::path::Path) -> Tensor {
    let refs = references_of(NAME);
    let (weights, config) = load_transformer(folder, &Device::Cpu).unwrap();
    run_transformer(&weights, config).unwrap_or_else(|e| panic!("{}: {e}", refs.len()))
}

fn run_transformer(
    weights: &FluxWeights,
    config: cyberimage_engine::models::flux::FluxConfig,
) -> candle_core::Result<Tensor> {
    let refs = references_of(NAME);
    let model = FluxTransformer::new(weights, config).unwrap();
    let (_, _, h, w) = refs["initial_noise"].dims4()?;
    let rope = model.rope(refs["prompt_embeds"].dim(1)?, h / 2, w / 2, &Device::Cpu)?;
    model.forward(
        &refs["initial_latents_packed"],
        &refs["prompt_embeds"],
        &refs["pooled_prompt_embeds"],
        0.75,
        settings_of(NAME)["guidance_scale"].as_f64().unwrap(),
        &rope,
    )
}

#[test]
fn transformer_matches_diffusers_from_both_layouts() {
    let refs = references_of(NAME);
    let folder = fixture_dir(NAME).join("transformer");
    let expected = &refs["transformer_output_t750"];
    assert_close(
        "transformer (diffusers layout)",
        &transformer_output(&folder),
        expected,
        1e-4,
    );

    // The same weights as a BFL single file (the layout of
    // flux1-dev.safetensors), renamed and fused by our own mapping.
    let (weights, _) = load_transformer(&folder, &Device::Cpu).unwrap();
    let bfl = tempfile::tempdir().unwrap();
    candle_core::safetensors::save(
        &weights.to_dense().unwrap(),
        bfl.path().join("flux1-tiny.safetensors"),
    )
    .unwrap();
    std::fs::copy(folder.join("config.json"), bfl.path().join("config.json")).unwrap();
    let (reloaded, _) = load_transformer(bfl.path(), &Device::Cpu).unwrap();
    assert_eq!(reloaded.format, "safetensors (BFL layout)");
    assert!(reloaded.contains("double_blocks.1.img_attn.qkv.weight"));
    assert_close(
        "transformer (BFL layout)",
        &transformer_output(bfl.path()),
        expected,
        1e-4,
    );
}

#[test]
fn gguf_transformer_matches_its_dequantized_weights() {
    let refs = references_of(NAME);
    let folder = fixture_dir(NAME).join("transformer");
    let (weights, config) = load_transformer(&folder, &Device::Cpu).unwrap();
    // ggml's quantized matmuls also quantize the activations to 8-bit
    // blocks, so even Q8_0 differs from the dequantized f32 run by ~2.5e-2
    // at the output of this tiny model (random weights amplify it); a wrong
    // name, shape or layout gives errors of order 1. F32 tensors stored in
    // GGUF check the file path itself at full precision.
    for (dtype, limit) in [
        (GgmlDType::F32, 1e-4),
        (GgmlDType::Q8_0, 4e-2),
        (GgmlDType::Q4K, 4e-2),
        (GgmlDType::Q4_0, 4e-2),
    ] {
        let quantized = weights.quantized(dtype).unwrap();
        let dir = tempfile::tempdir().unwrap();
        quantized
            .write_gguf(&dir.path().join("flux1-tiny.gguf"))
            .unwrap();
        std::fs::copy(folder.join("config.json"), dir.path().join("config.json")).unwrap();
        let (from_file, _) = load_transformer(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(from_file.format, "GGUF");
        let ours = run_transformer(&from_file, config.clone()).unwrap();
        // The reference: the same quantized values, dequantized to f32 and
        // run through the dense path.
        let dense = FluxWeights::from_bfl(from_file.to_dense().unwrap(), &Device::Cpu);
        let reference = run_transformer(&dense, config.clone()).unwrap();
        assert_close(
            &format!("GGUF {dtype:?} vs its dequantized f32"),
            &ours,
            &reference,
            limit,
        );
        // And the quantization error against diffusers' f32 output.
        let err = relative_error(&ours, &refs["transformer_output_t750"]).unwrap();
        eprintln!("GGUF {dtype:?} vs diffusers f32: relative error {err:e}");
    }
}

#[test]
fn trajectory_and_final_image_match_diffusers() {
    let refs = references_of(NAME);
    let settings = settings_of(NAME);
    let flux = Flux::load(&fixture_dir(NAME), &Device::Cpu).unwrap();
    let cond = flux.encode_prompt(&prompt()).unwrap();
    let check = Trajectory::new(&refs["trajectory"]);
    let latents = flux
        .denoise(
            &cond,
            &refs["initial_noise"],
            settings["steps"].as_u64().unwrap() as usize,
            settings["guidance_scale"].as_f64().unwrap(),
            &mut |step, latents| check.check(step, latents),
        )
        .unwrap()
        .unwrap();
    check.assert_close();
    let image = flux.decode_unit(&latents).unwrap();
    assert_images_close(&image, &refs["final_image"]);
}
