//! Parity of the CLIP tokenizer and text encoder with transformers, on the
//! tiny random SD1.5-class model in `fixtures/tiny/tiny-sd15`.

mod support;

use candle_core::{DType, Device, Tensor};
use cyberimage_engine::models::clip::ClipTextEncoder;
use cyberimage_engine::models::tokenizer::PromptTokenizer;
use cyberimage_kernels::relative_error;
use support::{model_dir, reference_settings, references};

fn prompts() -> (String, String) {
    let meta = reference_settings();
    (
        meta["prompt"].as_str().unwrap().to_owned(),
        meta["negative_prompt"].as_str().unwrap().to_owned(),
    )
}

fn token_ids() -> Tensor {
    let tok = PromptTokenizer::load(&model_dir().join("tokenizer"), 77).unwrap();
    let (prompt, negative) = prompts();
    let ids: Vec<u32> = [prompt, negative]
        .iter()
        .flat_map(|p| tok.encode(p).unwrap())
        .collect();
    Tensor::from_vec(ids, (2, 77), &Device::Cpu).unwrap()
}

#[test]
fn tokenizer_matches_transformers_ids_exactly() {
    let expected = references()["input_ids"].to_dtype(DType::U32).unwrap();
    let ours = token_ids();
    assert_eq!(
        ours.to_vec2::<u32>().unwrap(),
        expected.to_vec2::<u32>().unwrap()
    );
}

#[test]
fn text_encoder_matches_transformers() {
    let encoder =
        ClipTextEncoder::load(&model_dir().join("text_encoder"), DType::F32, &Device::Cpu).unwrap();
    let out = encoder.forward(&token_ids()).unwrap();
    let expected = &references()["text_embeddings"];
    assert_eq!(out.last_hidden_state.dims(), expected.dims());
    let err = relative_error(&out.last_hidden_state, expected).unwrap();
    eprintln!("CLIP relative error {err:e}");
    assert!(err <= 1e-4, "relative error {err}");
}

#[test]
fn the_parity_measure_catches_a_wrong_layer() {
    // Guard against a vacuous comparison: a perturbed output must fail.
    let expected = &references()["text_embeddings"];
    let broken = (expected * 1.01).unwrap();
    assert!(relative_error(&broken, expected).unwrap() > 1e-4);
}

#[test]
fn tokenizer_from_vocab_and_merges_equals_tokenizer_json() {
    // The released SD repos ship only vocab.json + merges.txt.
    let slow = tempfile::tempdir().unwrap();
    for name in [
        "vocab.json",
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(
            model_dir().join("tokenizer").join(name),
            slow.path().join(name),
        )
        .unwrap();
    }
    let from_files = PromptTokenizer::load(slow.path(), 77).unwrap();
    let from_json = PromptTokenizer::load(&model_dir().join("tokenizer"), 77).unwrap();
    let (prompt, negative) = prompts();
    for text in [
        prompt.as_str(),
        negative.as_str(),
        "",
        "  Ünïcödé  CAPS\tand\nnewlines, 1234 numbers; it's (weird) punctuation!!! <|endoftext|>",
        "emoji 🦊 and 日本語",
    ] {
        assert_eq!(
            from_files.encode(text).unwrap(),
            from_json.encode(text).unwrap(),
            "{text:?}"
        );
    }
}
