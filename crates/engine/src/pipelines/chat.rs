//! A small chat model in this process (Qwen3 in transformers' layout:
//! `config.json`, safetensors, `tokenizer.json`), for prompt enrichment
//! without a chat server, as mold runs one. The chat is Qwen3's template
//! with thinking off (an empty think block opens the answer); the answer
//! is sampled at the asked temperature among the 20 likeliest tokens
//! (Qwen's advice for its non-thinking mode), greedily at 0, seeded, and
//! stops at `<|im_end|>` or `<|endoftext|>`.

use std::path::Path;

use candle_core::{Device, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::error::EngineLoadError;
use crate::models::qwen3::{KvCache, Logits, Qwen3};

/// Candidates a sampled token is drawn from.
const TOP_K: usize = 20;
/// The longest prompt (template included) read, in tokens.
const MAX_PROMPT_TOKENS: usize = 4096;

pub struct ChatModel {
    model: Qwen3,
    tokenizer: tokenizers::Tokenizer,
    stop: Vec<u32>,
    device: Device,
}

/// Qwen3's chat template for one system and one user message, thinking
/// off.
pub fn chat_text(system: &str, user: &str) -> String {
    format!(
        "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n\
         <|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
}

impl ChatModel {
    /// On the CPU (the chat model is small; CUDA comes with issue 26's
    /// device work).
    pub fn load_cpu(folder: &Path) -> Result<Self, EngineLoadError> {
        Self::load(folder, &Device::Cpu)
    }

    pub fn load(folder: &Path, device: &Device) -> Result<Self, EngineLoadError> {
        let file = folder.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&file)
            .map_err(|e| EngineLoadError::Unsupported(format!("{}: {e}", file.display())))?;
        let stop = ["<|im_end|>", "<|endoftext|>"]
            .iter()
            .filter_map(|t| tokenizer.token_to_id(t))
            .collect();
        Ok(Self {
            model: Qwen3::load(folder, device)?,
            tokenizer,
            stop,
            device: device.clone(),
        })
    }

    /// The template's token ids for this exchange.
    pub fn prompt_ids(&self, system: &str, user: &str) -> Result<Vec<u32>, EngineLoadError> {
        let encoding = self
            .tokenizer
            .encode(chat_text(system, user), false)
            .map_err(|e| EngineLoadError::Unsupported(format!("tokenizing the chat: {e}")))?;
        let ids = encoding.get_ids().to_vec();
        if ids.len() > MAX_PROMPT_TOKENS {
            return Err(EngineLoadError::Unsupported(format!(
                "the chat is {} tokens; at most {MAX_PROMPT_TOKENS} are read",
                ids.len()
            )));
        }
        Ok(ids)
    }

    /// The answer's token ids: at most `max_tokens`, at `temperature` (0:
    /// greedy), from the draw `seed`.
    pub fn answer_ids(
        &self,
        prompt: &[u32],
        max_tokens: usize,
        temperature: f32,
        seed: u64,
    ) -> Result<Vec<u32>, EngineLoadError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut cache = KvCache::default();
        let mut input = Tensor::new(prompt, &self.device)?.unsqueeze(0)?;
        let mut out = Vec::new();
        while out.len() < max_tokens {
            let step = self
                .model
                .forward(&input, Some(&mut cache), false, Logits::Last)?;
            let logits: Vec<f32> = step.logits.expect("asked for").flatten_all()?.to_vec1()?;
            let token = pick(&logits, temperature, &mut rng);
            if self.stop.contains(&token) {
                break;
            }
            out.push(token);
            input = Tensor::new(&[token], &self.device)?.unsqueeze(0)?;
        }
        Ok(out)
    }

    /// The model's answer to `user` under `system`, as text.
    pub fn complete(
        &self,
        system: &str,
        user: &str,
        max_tokens: usize,
        temperature: f32,
        seed: u64,
    ) -> Result<String, EngineLoadError> {
        let prompt = self.prompt_ids(system, user)?;
        let answer = self.answer_ids(&prompt, max_tokens, temperature, seed)?;
        self.tokenizer
            .decode(&answer, true)
            .map_err(|e| EngineLoadError::Unsupported(format!("decoding the answer: {e}")))
    }
}

/// The next token: the likeliest at temperature 0, else drawn from the
/// softmax of the top `TOP_K` logits over `temperature`.
fn pick(logits: &[f32], temperature: f32, rng: &mut ChaCha8Rng) -> u32 {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if temperature <= 0.0 || !temperature.is_finite() {
        return order[0] as u32;
    }
    let top = &order[..TOP_K.min(order.len())];
    let best = logits[top[0]];
    let weights: Vec<f64> = top
        .iter()
        .map(|&i| f64::from((logits[i] - best) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut draw = (rng.next_u64() as f64 / u64::MAX as f64) * total;
    for (&i, w) in top.iter().zip(&weights) {
        if draw < *w {
            return i as u32;
        }
        draw -= w;
    }
    top[top.len() - 1] as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picking_is_greedy_at_zero_and_stays_among_the_likeliest_otherwise() {
        let mut logits = vec![0.0f32; 100];
        logits[7] = 5.0;
        logits[3] = 4.9;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(pick(&logits, 0.0, &mut rng), 7);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(pick(&logits, 0.7, &mut rng));
        }
        assert!(seen.contains(&7) && seen.contains(&3), "{seen:?}");
        // 98 logits tie at 0, far below: only the top 20 may be drawn, and
        // a cold temperature keeps to the top two.
        let mut cold = std::collections::HashSet::new();
        for _ in 0..200 {
            cold.insert(pick(&logits, 0.05, &mut rng));
        }
        assert!(cold.is_subset(&[7, 3].into()), "{cold:?}");
        let a: Vec<u32> = {
            let mut r = ChaCha8Rng::seed_from_u64(9);
            (0..20).map(|_| pick(&logits, 1.0, &mut r)).collect()
        };
        let b: Vec<u32> = {
            let mut r = ChaCha8Rng::seed_from_u64(9);
            (0..20).map(|_| pick(&logits, 1.0, &mut r)).collect()
        };
        assert_eq!(a, b, "seeded");
    }
}
