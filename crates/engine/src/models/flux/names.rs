//! FLUX's two namings of the same weights: diffusers'
//! (`transformer_blocks.0.attn.to_q`) and the original Black Forest Labs
//! one the model runs in (`double_blocks.0.img_attn.qkv`, with q, k and v
//! fused into one matrix). Read by the diffusers loader and by LoRAs,
//! which come in either naming.

use std::ops::Range;

/// Linears renamed one to one, outside the blocks.
pub(super) const GLOBAL_LINEARS: [(&str, &str); 7] = [
    ("x_embedder", "img_in"),
    ("context_embedder", "txt_in"),
    (
        "time_text_embed.timestep_embedder.linear_1",
        "time_in.in_layer",
    ),
    (
        "time_text_embed.timestep_embedder.linear_2",
        "time_in.out_layer",
    ),
    (
        "time_text_embed.text_embedder.linear_1",
        "vector_in.in_layer",
    ),
    (
        "time_text_embed.text_embedder.linear_2",
        "vector_in.out_layer",
    ),
    ("proj_out", "final_layer.linear"),
];

/// Dev models' guidance embedding.
pub(super) const GUIDANCE_LINEARS: [(&str, &str); 2] = [
    (
        "time_text_embed.guidance_embedder.linear_1",
        "guidance_in.in_layer",
    ),
    (
        "time_text_embed.guidance_embedder.linear_2",
        "guidance_in.out_layer",
    ),
];

/// The final modulation: diffusers orders its halves (scale, shift), BFL
/// (shift, scale).
pub(super) const FINAL_MODULATION: (&str, &str) =
    ("norm_out.linear", "final_layer.adaLN_modulation.1");

/// A double block's linears renamed one to one.
pub(super) const DOUBLE_LINEARS: [(&str, &str); 8] = [
    ("norm1.linear", "img_mod.lin"),
    ("norm1_context.linear", "txt_mod.lin"),
    ("attn.to_out.0", "img_attn.proj"),
    ("attn.to_add_out", "txt_attn.proj"),
    ("ff.net.0.proj", "img_mlp.0"),
    ("ff.net.2", "img_mlp.2"),
    ("ff_context.net.0.proj", "txt_mlp.0"),
    ("ff_context.net.2", "txt_mlp.2"),
];

/// A double block's fused projections: diffusers' three (each `hidden`
/// rows) stacked into BFL's one.
pub(super) const DOUBLE_FUSED: [([&str; 3], &str); 2] = [
    (["attn.to_q", "attn.to_k", "attn.to_v"], "img_attn.qkv"),
    (
        ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
        "txt_attn.qkv",
    ),
];

/// A double block's q/k norms (diffusers' `weight`, BFL's `scale`).
pub(super) const DOUBLE_NORMS: [(&str, &str); 4] = [
    ("norm_q", "img_attn.norm.query_norm"),
    ("norm_k", "img_attn.norm.key_norm"),
    ("norm_added_q", "txt_attn.norm.query_norm"),
    ("norm_added_k", "txt_attn.norm.key_norm"),
];

/// A single block's `linear1`: q, k, v (`hidden` rows each) and the MLP's
/// input (4 · `hidden`).
pub(super) const SINGLE_FUSED: [&str; 4] = ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"];

pub(super) const SINGLE_LINEARS: [(&str, &str); 2] =
    [("proj_out", "linear2"), ("norm.linear", "modulation.lin")];

pub(super) const SINGLE_NORMS: [(&str, &str); 2] =
    [("norm_q", "query_norm"), ("norm_k", "key_norm")];

/// Where rows of a diffusers linear lie in a BFL weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowsIn {
    /// The BFL module (`double_blocks.0.img_attn.qkv`).
    pub module: String,
    /// The diffusers weight's rows (`None`: all of them, as many as the
    /// BFL weight has) …
    pub rows: Option<Range<usize>>,
    /// … start at this row of the BFL weight.
    pub first_row: usize,
}

/// Every diffusers linear module of a model with `double` and `single`
/// blocks of width `hidden`, and where its rows lie in the BFL weights.
pub fn diffusers_linears(
    hidden: usize,
    double: usize,
    single: usize,
    guidance: bool,
) -> Vec<(String, Vec<RowsIn>)> {
    let whole = |module: String| {
        vec![RowsIn {
            module,
            rows: None,
            first_row: 0,
        }]
    };
    let mut out = Vec::new();
    let globals = GLOBAL_LINEARS
        .iter()
        .chain(GUIDANCE_LINEARS.iter().filter(|_| guidance));
    for (from, to) in globals {
        out.push((from.to_string(), whole(to.to_string())));
    }
    let (scale, shift) = (0..hidden, hidden..2 * hidden);
    out.push((
        FINAL_MODULATION.0.to_string(),
        vec![
            RowsIn {
                module: FINAL_MODULATION.1.into(),
                rows: Some(scale),
                first_row: hidden,
            },
            RowsIn {
                module: FINAL_MODULATION.1.into(),
                rows: Some(shift),
                first_row: 0,
            },
        ],
    ));
    for i in 0..double {
        let (from, to) = (
            format!("transformer_blocks.{i}"),
            format!("double_blocks.{i}"),
        );
        for (d, b) in DOUBLE_LINEARS {
            out.push((format!("{from}.{d}"), whole(format!("{to}.{b}"))));
        }
        for (parts, fused) in DOUBLE_FUSED {
            for (k, part) in parts.iter().enumerate() {
                out.push((
                    format!("{from}.{part}"),
                    vec![RowsIn {
                        module: format!("{to}.{fused}"),
                        rows: Some(0..hidden),
                        first_row: k * hidden,
                    }],
                ));
            }
        }
    }
    for i in 0..single {
        let (from, to) = (
            format!("single_transformer_blocks.{i}"),
            format!("single_blocks.{i}"),
        );
        for (d, b) in SINGLE_LINEARS {
            out.push((format!("{from}.{d}"), whole(format!("{to}.{b}"))));
        }
        for (k, part) in SINGLE_FUSED.iter().enumerate() {
            let rows = if k == 3 { 4 * hidden } else { hidden };
            out.push((
                format!("{from}.{part}"),
                vec![RowsIn {
                    module: format!("{to}.linear1"),
                    rows: Some(0..rows),
                    first_row: k * hidden,
                }],
            ));
        }
    }
    out
}
