//! Stability's SD 3.x single-file layout mapped to diffusers' names as
//! each tensor is read: the MMDiT stores q/k/v fused and its final (and
//! last block's context) modulation as shift-then-scale, where diffusers
//! keeps separate projections and scale-then-shift. The fixture script
//! checks our test file against diffusers' own converter.

use std::collections::HashMap;

use candle_core::Device;

use super::layout_weight::LayoutWeight;
use crate::error::EngineLoadError;

/// Temporary names of the fused projections until `split_fused` splits
/// them: (fused, the three it becomes).
const FUSED: [(&str, [&str; 3]); 3] = [
    ("attn.qkv_fused", ["attn.to_q", "attn.to_k", "attn.to_v"]),
    (
        "attn.add_qkv_fused",
        ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
    ),
    (
        "attn2.qkv_fused",
        ["attn2.to_q", "attn2.to_k", "attn2.to_v"],
    ),
];

/// A block's sub-layer names: (Stability's, diffusers').
const BLOCK_PARTS: [(&str, &str); 16] = [
    ("x_block.attn.qkv.", "attn.qkv_fused."),
    ("context_block.attn.qkv.", "attn.add_qkv_fused."),
    ("x_block.attn.ln_q.", "attn.norm_q."),
    ("x_block.attn.ln_k.", "attn.norm_k."),
    ("context_block.attn.ln_q.", "attn.norm_added_q."),
    ("context_block.attn.ln_k.", "attn.norm_added_k."),
    ("x_block.attn.proj.", "attn.to_out.0."),
    ("context_block.attn.proj.", "attn.to_add_out."),
    ("x_block.attn2.qkv.", "attn2.qkv_fused."),
    ("x_block.attn2.ln_q.", "attn2.norm_q."),
    ("x_block.attn2.ln_k.", "attn2.norm_k."),
    ("x_block.attn2.proj.", "attn2.to_out.0."),
    ("x_block.adaLN_modulation.1.", "norm1.linear."),
    ("context_block.adaLN_modulation.1.", "norm1_context.linear."),
    ("x_block.mlp.fc1.", "ff.net.0.proj."),
    ("x_block.mlp.fc2.", "ff.net.2."),
];

const CONTEXT_MLP: [(&str, &str); 2] = [
    ("context_block.mlp.fc1.", "ff_context.net.0.proj."),
    ("context_block.mlp.fc2.", "ff_context.net.2."),
];

/// A tensor name of the MMDiT (after `model.diffusion_model.`) in
/// diffusers' naming.
pub(super) fn mmdit_name(name: &str) -> Option<String> {
    const FIXED: [(&str, &str); 7] = [
        ("x_embedder.proj.", "pos_embed.proj."),
        (
            "t_embedder.mlp.0.",
            "time_text_embed.timestep_embedder.linear_1.",
        ),
        (
            "t_embedder.mlp.2.",
            "time_text_embed.timestep_embedder.linear_2.",
        ),
        (
            "y_embedder.mlp.0.",
            "time_text_embed.text_embedder.linear_1.",
        ),
        (
            "y_embedder.mlp.2.",
            "time_text_embed.text_embedder.linear_2.",
        ),
        ("final_layer.linear.", "proj_out."),
        ("final_layer.adaLN_modulation.1.", "norm_out.linear."),
    ];
    if name == "pos_embed" {
        return Some("pos_embed.pos_embed".into());
    }
    if name.starts_with("context_embedder.") {
        return Some(name.to_string());
    }
    for (from, to) in FIXED {
        if let Some(rest) = name.strip_prefix(from) {
            return Some(format!("{to}{rest}"));
        }
    }
    let rest = name.strip_prefix("joint_blocks.")?;
    let (block, rest) = rest.split_once('.')?;
    let (from, to) = BLOCK_PARTS
        .iter()
        .chain(CONTEXT_MLP.iter())
        .find(|(from, _)| rest.starts_with(from))?;
    Some(format!(
        "transformer_blocks.{block}.{to}{}",
        &rest[from.len()..]
    ))
}

/// Splits the fused projections and puts the shift-then-scale
/// modulations in diffusers' order.
pub(super) fn finish_mmdit<W: LayoutWeight>(
    tensors: &mut HashMap<String, W>,
) -> Result<(), EngineLoadError> {
    let fused: Vec<String> = tensors
        .keys()
        .filter(|k| FUSED.iter().any(|(f, _)| k.contains(&format!(".{f}."))))
        .cloned()
        .collect();
    for name in fused {
        let tensor = tensors.remove(&name).expect("listed");
        let (fused, parts) = FUSED
            .iter()
            .find(|(f, _)| name.contains(&format!(".{f}.")))
            .expect("matched above");
        let rows = tensor.dims().first().copied().unwrap_or(0);
        if rows % 3 != 0 {
            return Err(EngineLoadError::Unsupported(format!(
                "{name}: {rows} rows do not split into q, k and v"
            )));
        }
        for (i, part) in parts.iter().enumerate() {
            let rows_of = tensor.rows(i * rows / 3, rows / 3)?;
            tensors.insert(name.replace(fused, part), rows_of);
        }
    }
    let last = tensors
        .keys()
        .filter_map(|k| k.strip_prefix("transformer_blocks."))
        .filter_map(|k| k.split_once('.')?.0.parse::<usize>().ok())
        .max();
    let mut swapped = vec![
        "norm_out.linear.weight".to_string(),
        "norm_out.linear.bias".to_string(),
    ];
    if let Some(last) = last {
        for kind in ["weight", "bias"] {
            swapped.push(format!(
                "transformer_blocks.{last}.norm1_context.linear.{kind}"
            ));
        }
    }
    for name in swapped {
        if let Some(tensor) = tensors.remove(&name) {
            tensors.insert(name, tensor.swapped_halves()?);
        }
    }
    Ok(())
}

/// Where rows of a weight in Stability's MMDiT layout lie in diffusers'
/// weights (for LoRAs named after that layout, kohya's
/// `lora_unet_joint_blocks_…`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StabilityPlace {
    /// The diffusers weight.
    pub weight: String,
    /// The Stability weight's rows: all (`None`), or the k-th of `of`
    /// equal row blocks (`Some((k, of))`) …
    pub block: Option<(usize, usize)>,
    /// … placed as this equal row block of `weight` (0 when whole).
    pub at_block: usize,
}

/// Every Stability linear of a model whose last joint block is `last`,
/// and where its rows go.
pub fn stability_linears(last: usize) -> Vec<(String, Vec<StabilityPlace>)> {
    let mut modules: Vec<String> = [
        "context_embedder",
        "t_embedder.mlp.0",
        "t_embedder.mlp.2",
        "y_embedder.mlp.0",
        "y_embedder.mlp.2",
        "final_layer.linear",
        "final_layer.adaLN_modulation.1",
    ]
    .map(String::from)
    .to_vec();
    for block in 0..=last {
        for (from, _) in BLOCK_PARTS.iter().chain(CONTEXT_MLP.iter()) {
            if !from.contains(".ln_") {
                modules.push(format!(
                    "joint_blocks.{block}.{}",
                    from.trim_end_matches('.')
                ));
            }
        }
    }
    let last_context = format!("transformer_blocks.{last}.norm1_context.linear.weight");
    modules
        .into_iter()
        .filter_map(|module| {
            let diffusers = mmdit_name(&format!("{module}.weight"))?;
            let places = match FUSED
                .iter()
                .find(|(f, _)| diffusers.contains(&format!(".{f}.")))
            {
                Some((fused, parts)) => parts
                    .iter()
                    .enumerate()
                    .map(|(k, part)| StabilityPlace {
                        weight: diffusers.replace(fused, part),
                        block: Some((k, 3)),
                        at_block: 0,
                    })
                    .collect(),
                // Shift, scale in Stability's order: each half goes to the
                // other half of diffusers' weight.
                None if diffusers == "norm_out.linear.weight" || diffusers == last_context => (0
                    ..2)
                    .map(|k| StabilityPlace {
                        weight: diffusers.clone(),
                        block: Some((k, 2)),
                        at_block: 1 - k,
                    })
                    .collect(),
                None => vec![StabilityPlace {
                    weight: diffusers,
                    block: None,
                    at_block: 0,
                }],
            };
            Some((module, places))
        })
        .collect()
}

/// SD 3's CLIP-L: its pooled output is used as is, so its projection is
/// the identity (what diffusers' single-file loader sets, whatever the
/// file holds).
pub(super) fn identity_projection<W: LayoutWeight>(
    tensors: &mut HashMap<String, W>,
    device: &Device,
) -> Result<(), EngineLoadError> {
    let width = [
        "text_model.final_layer_norm.weight",
        "final_layer_norm.weight",
    ]
    .iter()
    .find_map(|k| tensors.get(*k))
    .and_then(|t| t.dims().first().copied())
    .ok_or_else(|| EngineLoadError::Unsupported("a CLIP-L without its final layer norm".into()))?;
    let like = tensors.values().find(|t| t.is_float());
    let identity = W::identity(width, like, device)?;
    tensors.insert("text_projection.weight".into(), identity);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmdit_names_map_to_diffusers() {
        assert_eq!(mmdit_name("pos_embed").unwrap(), "pos_embed.pos_embed");
        assert_eq!(
            mmdit_name("joint_blocks.2.context_block.attn.ln_k.weight").unwrap(),
            "transformer_blocks.2.attn.norm_added_k.weight"
        );
        assert_eq!(
            mmdit_name("joint_blocks.0.x_block.attn2.qkv.bias").unwrap(),
            "transformer_blocks.0.attn2.qkv_fused.bias"
        );
        assert_eq!(
            mmdit_name("joint_blocks.1.context_block.mlp.fc2.weight").unwrap(),
            "transformer_blocks.1.ff_context.net.2.weight"
        );
        assert_eq!(mmdit_name("joint_blocks.1.unknown.weight"), None);
    }
}
