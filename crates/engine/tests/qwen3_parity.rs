//! Qwen3 against transformers' `Qwen3ForCausalLM` on a tiny random model
//! (`fixtures/qwen3_references.py`: grouped-query attention, per-head q/k
//! norms, randomised norm weights, tied embeddings): every layer's hidden
//! states and the logits of a prompt, and 8 greedily generated tokens,
//! which run the key/value cache a token at a time.

mod support;

use candle_core::{Device, Tensor};
use cyberimage_engine::models::qwen3::{KvCache, Logits, Qwen3};
use support::{assert_close, fixture_dir};

fn load() -> (Qwen3, std::collections::HashMap<String, Tensor>) {
    let dir = fixture_dir("tiny-qwen3");
    let model = Qwen3::load(&dir, &Device::Cpu).unwrap();
    let refs =
        candle_core::safetensors::load(dir.join("references.safetensors"), &Device::Cpu).unwrap();
    (model, refs)
}

fn ids(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as u32)
        .collect()
}

#[test]
fn hidden_states_and_logits_match_transformers() {
    let (model, refs) = load();
    let prompt = Tensor::new(ids(&refs["input_ids"]).as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let out = model.forward(&prompt, None, true, Logits::All).unwrap();
    assert_eq!(out.hidden_states.len(), model.config.num_hidden_layers + 1);
    for (i, ours) in out.hidden_states.iter().enumerate() {
        assert_close(
            &format!("hidden state {i}"),
            ours,
            &refs[&format!("hidden_states.{i}")],
            1e-5,
        );
    }
    assert_close("logits", &out.logits.unwrap(), &refs["logits"], 1e-5);
}

#[test]
fn greedy_generation_with_the_cache_matches_transformers() {
    let (model, refs) = load();
    let generated = model
        .generate_greedy(&ids(&refs["input_ids"]), 8, &[])
        .unwrap();
    assert_eq!(generated, ids(&refs["generated"]));

    // The cache gives the same logits as the whole sequence at once.
    let prompt = ids(&refs["input_ids"]);
    let whole = Tensor::new(prompt.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let full = model.forward(&whole, None, false, Logits::Last).unwrap();
    let mut cache = KvCache::default();
    let (head, tail) = prompt.split_at(5);
    for part in [head, tail] {
        let part = Tensor::new(part, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let step = model
            .forward(&part, Some(&mut cache), false, Logits::Last)
            .unwrap();
        if cache.len() == prompt.len() {
            assert_close(
                "cached logits",
                &step.logits.unwrap(),
                &full.logits.clone().unwrap(),
                1e-5,
            );
        }
    }
    assert_eq!(cache.len(), prompt.len());
}
