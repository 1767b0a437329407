//! The original checkpoints' tensor names, mapped to diffusers' as each
//! tensor is read: the LDM UNet and autoencoder (SD 1.x/2.x/XL files, the
//! BFL `ae.safetensors`) and the OpenCLIP text tower (SD 2.x, SDXL's second
//! encoder). These are the maps diffusers' `from_single_file` applies; the
//! fixture script checks our test files against diffusers itself.

use std::collections::HashMap;

use super::layout_weight::LayoutWeight;
use crate::error::EngineLoadError;

/// Sub-layer names inside an LDM ResNet block, and diffusers' for them.
const RESNET: [(&str, &str); 6] = [
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("emb_layers.1.", "time_emb_proj."),
    ("skip_connection.", "conv_shortcut."),
];

fn resnet_tail(tail: &str) -> String {
    for (ldm, diffusers) in RESNET {
        if let Some(rest) = tail.strip_prefix(ldm) {
            return format!("{diffusers}{rest}");
        }
    }
    tail.to_string()
}

/// `index.slot.rest` → (index, slot, rest).
fn split_block(rest: &str) -> Option<(usize, usize, &str)> {
    let (index, rest) = rest.split_once('.')?;
    let (slot, rest) = rest.split_once('.')?;
    Some((index.parse().ok()?, slot.parse().ok()?, rest))
}

/// An LDM UNet tensor name (after `model.diffusion_model.`) in diffusers'
/// naming; `None` for tensors diffusers has no place for.
pub(super) fn unet_name(name: &str, layers_per_block: usize) -> Option<String> {
    const FIXED: [(&str, &str); 7] = [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("label_emb.0.0.", "add_embedding.linear_1."),
        ("label_emb.0.2.", "add_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
    ];
    for (ldm, diffusers) in FIXED {
        if let Some(rest) = name.strip_prefix(ldm) {
            return Some(format!("{diffusers}{rest}"));
        }
    }
    let per = layers_per_block + 1;
    if let Some(rest) = name.strip_prefix("input_blocks.") {
        let (i, slot, tail) = split_block(rest)?;
        let (block, layer) = ((i.checked_sub(1)?) / per, (i - 1) % per);
        return Some(match (slot, tail.strip_prefix("op.")) {
            (0, Some(op)) => format!("down_blocks.{block}.downsamplers.0.conv.{op}"),
            (0, None) => format!("down_blocks.{block}.resnets.{layer}.{}", resnet_tail(tail)),
            (1, _) => format!("down_blocks.{block}.attentions.{layer}.{tail}"),
            _ => return None,
        });
    }
    if let Some(rest) = name.strip_prefix("middle_block.") {
        let (i, tail) = rest.split_once('.')?;
        return Some(match i {
            "0" => format!("mid_block.resnets.0.{}", resnet_tail(tail)),
            "1" => format!("mid_block.attentions.0.{tail}"),
            "2" => format!("mid_block.resnets.1.{}", resnet_tail(tail)),
            _ => return None,
        });
    }
    if let Some(rest) = name.strip_prefix("output_blocks.") {
        let (i, slot, tail) = split_block(rest)?;
        let (block, layer) = (i / per, i % per);
        return Some(match (slot, tail.strip_prefix("conv.")) {
            (0, _) => format!("up_blocks.{block}.resnets.{layer}.{}", resnet_tail(tail)),
            (1 | 2, Some(conv)) => format!("up_blocks.{block}.upsamplers.0.conv.{conv}"),
            (1, None) => format!("up_blocks.{block}.attentions.{layer}.{tail}"),
            _ => return None,
        });
    }
    None
}

/// The flattened name of an LDM UNet layer, as kohya's sd-scripts write
/// LoRAs for SDXL and many for SD 1.x (`input_blocks_4_1_transformer_blocks
/// _0_attn1_to_q`), as the flattened diffusers module name the same layer
/// has (`down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q`).
/// The block part goes through [`unet_name`]; a ResNet's, a downsampler's
/// or an upsampler's own layer is mapped with it, anything else inside a
/// block (attention layers) keeps its name, as diffusers does.
pub(crate) fn flattened_unet_name(name: &str, layers_per_block: usize) -> Option<String> {
    fn number(s: &str) -> Option<(usize, &str)> {
        let (n, rest) = s.split_once('_').unwrap_or((s, ""));
        Some((n.parse().ok()?, rest))
    }
    let (head, rest) = if let Some(r) = name.strip_prefix("input_blocks_") {
        let (i, r) = number(r)?;
        let (slot, r) = number(r)?;
        (format!("input_blocks.{i}.{slot}"), r)
    } else if let Some(r) = name.strip_prefix("output_blocks_") {
        let (i, r) = number(r)?;
        let (slot, r) = number(r)?;
        (format!("output_blocks.{i}.{slot}"), r)
    } else if let Some(r) = name.strip_prefix("middle_block_") {
        let (i, r) = number(r)?;
        (format!("middle_block.{i}"), r)
    } else {
        return None;
    };
    const OWN_LAYERS: [(&str, &str); 8] = [
        ("in_layers_0", "in_layers.0"),
        ("in_layers_2", "in_layers.2"),
        ("out_layers_0", "out_layers.0"),
        ("out_layers_3", "out_layers.3"),
        ("emb_layers_1", "emb_layers.1"),
        ("skip_connection", "skip_connection"),
        ("op", "op"),
        ("conv", "conv"),
    ];
    // `Z` stands for the rest while the block part is mapped.
    let (dotted, kept) = match OWN_LAYERS.iter().find(|(flat, _)| *flat == rest) {
        Some((_, layer)) => (format!("{head}.{layer}.Z"), ""),
        None if rest.is_empty() => return None,
        None => (format!("{head}.Z"), rest),
    };
    let mapped = unet_name(&dotted, layers_per_block)?;
    let prefix = mapped.strip_suffix(".Z")?.replace('.', "_");
    Some(if kept.is_empty() {
        prefix
    } else {
        format!("{prefix}_{kept}")
    })
}

/// An LDM autoencoder tensor name in diffusers' naming; the decoder's up
/// blocks are numbered from the other end.
pub(super) fn vae_name(name: &str, blocks: usize) -> Option<String> {
    let (side, rest) = name.split_once('.')?;
    let rest = match side {
        "encoder" | "decoder" => rest,
        "quant_conv" | "post_quant_conv" => return Some(name.to_string()),
        _ => return None,
    };
    let shortcut = |tail: &str| tail.replace("nin_shortcut.", "conv_shortcut.");
    let mapped = if let Some(rest) = rest.strip_prefix("down.") {
        let (i, rest) = rest.split_once('.')?;
        if let Some(rest) = rest.strip_prefix("block.") {
            format!("down_blocks.{i}.resnets.{}", shortcut(rest))
        } else {
            format!(
                "down_blocks.{i}.downsamplers.0.{}",
                rest.strip_prefix("downsample.")?
            )
        }
    } else if let Some(rest) = rest.strip_prefix("up.") {
        let (i, rest) = rest.split_once('.')?;
        let i = blocks.checked_sub(1)?.checked_sub(i.parse().ok()?)?;
        if let Some(rest) = rest.strip_prefix("block.") {
            format!("up_blocks.{i}.resnets.{}", shortcut(rest))
        } else {
            format!(
                "up_blocks.{i}.upsamplers.0.{}",
                rest.strip_prefix("upsample.")?
            )
        }
    } else if let Some(rest) = rest.strip_prefix("mid.block_1.") {
        format!("mid_block.resnets.0.{}", shortcut(rest))
    } else if let Some(rest) = rest.strip_prefix("mid.block_2.") {
        format!("mid_block.resnets.1.{}", shortcut(rest))
    } else if let Some(rest) = rest.strip_prefix("mid.attn_1.") {
        let (layer, kind) = rest.split_once('.')?;
        let layer = match layer {
            "norm" => "group_norm",
            "q" => "to_q",
            "k" => "to_k",
            "v" => "to_v",
            "proj_out" => "to_out.0",
            _ => return None,
        };
        format!("mid_block.attentions.0.{layer}.{kind}")
    } else if let Some(rest) = rest.strip_prefix("norm_out.") {
        format!("conv_norm_out.{rest}")
    } else {
        rest.to_string()
    };
    Some(format!("{side}.{mapped}"))
}

/// The LDM attention's q/k/v/out are 1×1 convolutions; diffusers' are
/// linear layers over the same matrix.
pub(super) fn vae_attention_as_linear<W: LayoutWeight>(
    tensors: &mut HashMap<String, W>,
) -> Result<(), EngineLoadError> {
    for (name, tensor) in tensors.iter_mut() {
        if name.contains(".attentions.0.to_")
            && name.ends_with(".weight")
            && tensor.dims().len() == 4
        {
            let (out, inp) = (tensor.dims()[0], tensor.dims()[1]);
            *tensor = tensor.reshaped(&[out, inp])?;
        }
    }
    Ok(())
}

/// An OpenCLIP text-tower tensor name (after its `…model.` prefix) in
/// transformers' CLIP naming. The fused `in_proj` keeps a temporary name
/// until `split_open_clip` splits it.
pub(super) fn open_clip_name(name: &str) -> Option<String> {
    const FIXED: [(&str, &str); 4] = [
        (
            "token_embedding.weight",
            "text_model.embeddings.token_embedding.weight",
        ),
        (
            "positional_embedding",
            "text_model.embeddings.position_embedding.weight",
        ),
        ("ln_final.weight", "text_model.final_layer_norm.weight"),
        ("ln_final.bias", "text_model.final_layer_norm.bias"),
    ];
    if let Some((_, to)) = FIXED.iter().find(|(from, _)| *from == name) {
        return Some(to.to_string());
    }
    if name == "text_projection" {
        return Some(TEXT_PROJECTION_LDM.into());
    }
    let rest = name.strip_prefix("transformer.resblocks.")?;
    let (layer, rest) = rest.split_once('.')?;
    let mapped = match rest {
        "attn.in_proj_weight" => IN_PROJ_WEIGHT.to_string(),
        "attn.in_proj_bias" => IN_PROJ_BIAS.to_string(),
        _ => {
            const PARTS: [(&str, &str); 5] = [
                ("attn.out_proj.", "self_attn.out_proj."),
                ("ln_1.", "layer_norm1."),
                ("ln_2.", "layer_norm2."),
                ("mlp.c_fc.", "mlp.fc1."),
                ("mlp.c_proj.", "mlp.fc2."),
            ];
            let (from, to) = PARTS.iter().find(|(from, _)| rest.starts_with(from))?;
            format!("{to}{}", &rest[from.len()..])
        }
    };
    Some(format!("text_model.encoder.layers.{layer}.{mapped}"))
}

const IN_PROJ_WEIGHT: &str = "self_attn.in_proj.weight";
const IN_PROJ_BIAS: &str = "self_attn.in_proj.bias";
/// OpenCLIP's projection is stored `[width, dim]`: transposed from a
/// linear layer's weight.
const TEXT_PROJECTION_LDM: &str = "text_projection.ldm";

/// Splits the fused q/k/v rows into three projections and transposes the
/// text projection into a linear weight.
pub(super) fn split_open_clip<W: LayoutWeight>(
    tensors: &mut HashMap<String, W>,
) -> Result<(), EngineLoadError> {
    let fused: Vec<String> = tensors
        .keys()
        .filter(|k| k.ends_with(IN_PROJ_WEIGHT) || k.ends_with(IN_PROJ_BIAS))
        .cloned()
        .collect();
    for name in fused {
        let tensor = tensors.remove(&name).expect("listed");
        let (layer, kind) = name.rsplit_once(".in_proj.").expect("an in_proj name");
        let rows = tensor.dims().first().copied().unwrap_or(0);
        if rows % 3 != 0 {
            return Err(EngineLoadError::Unsupported(format!(
                "{name}: {rows} rows do not split into q, k and v"
            )));
        }
        for (i, part) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
            let rows_of = tensor.rows(i * rows / 3, rows / 3)?;
            tensors.insert(format!("{layer}.{part}.{kind}"), rows_of);
        }
    }
    if let Some(projection) = tensors.remove(TEXT_PROJECTION_LDM) {
        tensors.insert("text_projection.weight".into(), projection.transposed()?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unet_blocks_are_renumbered_as_diffusers_does() {
        let name = |n| unet_name(n, 2);
        assert_eq!(name("input_blocks.0.0.weight").unwrap(), "conv_in.weight");
        assert_eq!(
            name("input_blocks.4.0.in_layers.0.bias").unwrap(),
            "down_blocks.1.resnets.0.norm1.bias"
        );
        assert_eq!(
            name("input_blocks.3.0.op.weight").unwrap(),
            "down_blocks.0.downsamplers.0.conv.weight"
        );
        assert_eq!(
            name("input_blocks.5.1.proj_in.weight").unwrap(),
            "down_blocks.1.attentions.1.proj_in.weight"
        );
        assert_eq!(
            name("middle_block.2.out_layers.3.weight").unwrap(),
            "mid_block.resnets.1.conv2.weight"
        );
        assert_eq!(
            name("output_blocks.2.1.conv.bias").unwrap(),
            "up_blocks.0.upsamplers.0.conv.bias"
        );
        assert_eq!(
            name("output_blocks.5.2.conv.weight").unwrap(),
            "up_blocks.1.upsamplers.0.conv.weight"
        );
        assert_eq!(
            name("output_blocks.4.0.skip_connection.weight").unwrap(),
            "up_blocks.1.resnets.1.conv_shortcut.weight"
        );
        assert_eq!(
            name("label_emb.0.2.bias").unwrap(),
            "add_embedding.linear_2.bias"
        );
        assert_eq!(name("model_ema.decay"), None);
    }

    #[test]
    fn vae_up_blocks_count_from_the_other_end() {
        assert_eq!(
            vae_name("decoder.up.0.block.1.nin_shortcut.weight", 4).unwrap(),
            "decoder.up_blocks.3.resnets.1.conv_shortcut.weight"
        );
        assert_eq!(
            vae_name("decoder.up.3.upsample.conv.bias", 4).unwrap(),
            "decoder.up_blocks.0.upsamplers.0.conv.bias"
        );
        assert_eq!(
            vae_name("encoder.mid.attn_1.proj_out.weight", 4).unwrap(),
            "encoder.mid_block.attentions.0.to_out.0.weight"
        );
        assert_eq!(
            vae_name("decoder.norm_out.bias", 4).unwrap(),
            "decoder.conv_norm_out.bias"
        );
        assert_eq!(vae_name("model_ema.x", 4), None);
    }
}
