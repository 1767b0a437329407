//! LoRA files as people download them, read into one form: for each
//! adapted layer, the low-rank pair (`down`: rank × input, `up`: output ×
//! rank, convolutions with their kernel dimensions) and its alpha.
//!
//! Names read (a prefix for the component, then the layer's module path):
//! - kohya / AUTOMATIC1111 (`lora_unet_…`, `lora_te_…`, `lora_te1_…`,
//!   `lora_te2_…`, `lora_te3_…`; `.lora_down.weight`, `.lora_up.weight`,
//!   `.alpha`), whose layer names are module paths with every `.` turned
//!   into `_`, LoCon convolutions included; `lora_transformer_…` is the
//!   same flattening of a transformer's diffusers names;
//! - diffusers / PEFT (`unet.…`, `transformer.…`, `text_encoder.…`,
//!   `text_encoder_2.…`, `text_encoder_3.…`; `.lora_A.weight`,
//!   `.lora_B.weight`; no alpha means alpha = rank);
//! - the original module names as ComfyUI saves them
//!   (`diffusion_model.double_blocks.…`), with either pair of suffixes.
//!
//! Which weight of the model a layer name means is decided by the model
//! (`lora_merge::LoraTarget`): for a UNet or a text encoder against its
//! own parameter names ([`resolve`]), because the flattened kohya names
//! cannot be split back into a path by themselves.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::EngineLoadError;
use crate::weights::files::read_tensors;

/// The model part a LoRA layer adapts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// The UNet (or, later, the denoising transformer).
    Denoiser,
    /// The first or second text encoder.
    TextEncoder(usize),
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Component::Denoiser => write!(f, "denoiser"),
            Component::TextEncoder(0) => write!(f, "text encoder"),
            Component::TextEncoder(i) => write!(f, "text encoder {}", i + 1),
        }
    }
}

/// A layer's name as the file writes it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LayerName {
    /// A module path (`down_blocks.0.attentions.0.proj_in`).
    Dotted(String),
    /// A module path with `_` for `.` (kohya's).
    Flattened(String),
}

impl std::fmt::Display for LayerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayerName::Dotted(name) | LayerName::Flattened(name) => f.write_str(name),
        }
    }
}

/// One adapted layer.
#[derive(Clone, Debug)]
pub struct LowRank {
    pub component: Component,
    pub layer: LayerName,
    pub down: Tensor,
    pub up: Tensor,
    pub alpha: Option<f32>,
}

impl LowRank {
    pub fn rank(&self) -> usize {
        self.down.dims().first().copied().unwrap_or(0)
    }

    /// `strength · alpha / rank · up @ down`, shaped as `weight_dims`.
    pub fn delta(&self, weight_dims: &[usize], strength: f64) -> Result<Tensor, EngineLoadError> {
        let rows = weight_dims.first().copied().unwrap_or(0);
        if self.up.dim(0)? != rows {
            return Err(self.wrong_shape(weight_dims));
        }
        let (down, up) = self.scaled_pair(0..rows, weight_dims, strength)?;
        Ok(up.matmul(&down)?.reshape(weight_dims)?)
    }

    /// `down` (rank × inputs) and the scaled `up[up_rows]` (rows × rank)
    /// whose product is the change of those rows, shaped as `shape`: what
    /// is added into a weight, or runs beside a quantized one.
    pub fn scaled_pair(
        &self,
        up_rows: Range<usize>,
        shape: &[usize],
        strength: f64,
    ) -> Result<(Tensor, Tensor), EngineLoadError> {
        self.check_pair(up_rows.clone(), shape)?;
        let rank = self.rank();
        let up = self.up.flatten_from(1)?;
        let down = self.down.flatten_from(1)?;
        let scale = strength * f64::from(self.alpha.unwrap_or(rank as f32)) / rank as f64;
        let up = (up.narrow(0, up_rows.start, up_rows.len())? * scale)?;
        Ok((down.contiguous()?, up.contiguous()?))
    }

    /// Whether `up[up_rows] @ down` can change rows shaped as `shape`: the
    /// ranks agree, and the rows and inputs are the weight's.
    pub fn check_pair(
        &self,
        up_rows: Range<usize>,
        shape: &[usize],
    ) -> Result<(), EngineLoadError> {
        let rank = self.rank();
        let (up, down) = (self.up.dims(), self.down.dims());
        let flat = |dims: &[usize]| dims.iter().skip(1).product::<usize>();
        if up.len() < 2 || down.is_empty() || flat(up) != rank || rank == 0 {
            return Err(EngineLoadError::Lora(format!(
                "{}: up is {up:?}, down {down:?}: their ranks differ",
                self.layer
            )));
        }
        if up_rows.end > up[0] || shape.first() != Some(&up_rows.len()) || flat(down) != flat(shape)
        {
            return Err(self.wrong_shape(shape));
        }
        Ok(())
    }

    fn wrong_shape(&self, weight_dims: &[usize]) -> EngineLoadError {
        EngineLoadError::Lora(format!(
            "{} makes a {:?} × {:?} change for a {:?} weight: is the LoRA for another model?",
            self.layer,
            self.up.dims(),
            self.down.dims(),
            weight_dims
        ))
    }
}

/// The file formats read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraFormat {
    Kohya,
    Peft,
}

#[derive(Clone, Debug)]
pub struct LoraFile {
    pub format: LoraFormat,
    pub layers: Vec<LowRank>,
}

/// The largest LoRA file read (SDXL's big LoRAs are under 1 GB).
pub const MAX_LORA_BYTES: u64 = 2 << 30;

impl LoraFile {
    pub fn read(path: &Path) -> Result<Self, EngineLoadError> {
        let size = std::fs::metadata(path)
            .map_err(|source| EngineLoadError::Io {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        if size > MAX_LORA_BYTES {
            return Err(EngineLoadError::Lora(format!(
                "{} is {size} bytes, over the {MAX_LORA_BYTES}-byte limit",
                path.display()
            )));
        }
        let tensors = read_tensors(&[path.to_path_buf()], &Device::Cpu, DType::F32)?;
        Self::from_tensors(tensors)
    }

    pub fn from_tensors(tensors: HashMap<String, Tensor>) -> Result<Self, EngineLoadError> {
        if let Some(name) = tensors.keys().find(|k| {
            ["hada_w1", "lokr_w1", "oft_blocks"]
                .iter()
                .any(|p| k.contains(p))
                || k.ends_with(".diff")
                || k.ends_with(".diff_b")
        }) {
            return Err(EngineLoadError::Lora(format!(
                "{name}: LyCORIS LoHa / LoKr / OFT / full-difference adapters are not supported, only LoRA and LoCon"
            )));
        }
        let kohya = tensors.keys().any(|k| k.starts_with("lora_"));
        let mut parts: BTreeMap<(Component, LayerName), Parts> = BTreeMap::new();
        for (key, tensor) in tensors {
            let (layer, part) = split_key(&key).ok_or_else(|| {
                EngineLoadError::Lora(format!(
                    "unrecognised tensor {key:?}: not a kohya (lora_unet_…), diffusers/PEFT \
                     (unet.….lora_A, transformer.…) or BFL/ComfyUI (diffusion_model.…) LoRA"
                ))
            })?;
            let entry = parts.entry(layer).or_default();
            match part {
                Part::Down => entry.down = Some(tensor),
                Part::Up => entry.up = Some(tensor),
                Part::Alpha => {
                    entry.alpha = Some(
                        tensor
                            .to_dtype(DType::F32)?
                            .flatten_all()?
                            .get(0)?
                            .to_scalar::<f32>()?,
                    )
                }
            }
        }
        if parts.is_empty() {
            return Err(EngineLoadError::Lora(
                "the file holds no LoRA layers".into(),
            ));
        }
        let layers = parts
            .into_iter()
            .map(|((component, layer), p)| match (p.down, p.up) {
                (Some(down), Some(up)) => Ok(LowRank {
                    component,
                    layer,
                    down,
                    up,
                    alpha: p.alpha,
                }),
                _ => Err(EngineLoadError::Lora(format!(
                    "{component} layer {layer} lacks its down or up half"
                ))),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            format: if kohya {
                LoraFormat::Kohya
            } else {
                LoraFormat::Peft
            },
            layers,
        })
    }

    /// The components it adapts.
    pub fn components(&self) -> Vec<Component> {
        let mut found: Vec<Component> = self.layers.iter().map(|l| l.component).collect();
        found.sort();
        found.dedup();
        found
    }
}

#[derive(Default)]
struct Parts {
    down: Option<Tensor>,
    up: Option<Tensor>,
    alpha: Option<f32>,
}

enum Part {
    Down,
    Up,
    Alpha,
}

/// The halves' suffixes: kohya's, PEFT's, and the older `lora.down` of
/// some diffusers exports.
const DOWN: [&str; 3] = [".lora_down.weight", ".lora_A.weight", ".lora.down.weight"];
const UP: [&str; 3] = [".lora_up.weight", ".lora_B.weight", ".lora.up.weight"];

/// What a key starts with, the component it adapts, and whether the layer
/// path after it is flattened (kohya's `_` for `.`). Tried in order: a
/// longer prefix before one it starts with.
const PREFIXES: &[(&str, Component, bool)] = &[
    ("lora_unet_", Component::Denoiser, true),
    // Flattened diffusers names of a transformer (OneTrainer, SimpleTuner).
    ("lora_transformer_", Component::Denoiser, true),
    ("lora_te1_", Component::TextEncoder(0), true),
    ("lora_te2_", Component::TextEncoder(1), true),
    ("lora_te3_", Component::TextEncoder(2), true),
    ("lora_te_", Component::TextEncoder(0), true),
    ("unet.", Component::Denoiser, false),
    ("transformer.", Component::Denoiser, false),
    // The original (BFL, SAI) module names, as ComfyUI saves them.
    ("model.diffusion_model.", Component::Denoiser, false),
    ("diffusion_model.", Component::Denoiser, false),
    ("text_encoder_3.", Component::TextEncoder(2), false),
    ("text_encoder_2.", Component::TextEncoder(1), false),
    ("text_encoder.", Component::TextEncoder(0), false),
];

fn split_key(key: &str) -> Option<((Component, LayerName), Part)> {
    let (stem, part) = if let Some(stem) = DOWN.iter().find_map(|s| key.strip_suffix(s)) {
        (stem, Part::Down)
    } else if let Some(stem) = UP.iter().find_map(|s| key.strip_suffix(s)) {
        (stem, Part::Up)
    } else {
        (key.strip_suffix(".alpha")?, Part::Alpha)
    };
    let (component, flattened, layer) = PREFIXES
        .iter()
        .find_map(|(prefix, c, flat)| stem.strip_prefix(prefix).map(|rest| (*c, *flat, rest)))?;
    let layer = if flattened {
        LayerName::Flattened(layer.to_string())
    } else {
        LayerName::Dotted(layer.to_string())
    };
    Some(((component, layer), part))
}

/// Which of the component's weights (`….weight` names in `table`) a layer
/// name means. A CLIP checkpoint's names may or may not start with
/// `text_model.`, and a LoRA's either way, so both are tried.
pub fn resolve<'a>(table: &'a ParameterNames, layer: &LayerName) -> Option<&'a str> {
    let (index, name, prefix) = match layer {
        LayerName::Dotted(name) => (&table.dotted, name, "text_model."),
        LayerName::Flattened(name) => (&table.flattened, name, "text_model_"),
    };
    let bare = name.strip_prefix(prefix).unwrap_or(name);
    let found = [name.clone(), bare.to_string(), format!("{prefix}{bare}")]
        .iter()
        .find_map(|candidate| index.get(candidate))
        .map(String::as_str);
    if found.is_some() {
        return found;
    }
    // kohya's sd-scripts name SDXL (and some SD 1.x) UNet layers by the
    // original LDM blocks: `input_blocks_4_1_…`.
    match (layer, table.ldm_layers_per_block) {
        (LayerName::Flattened(name), Some(per_block)) => {
            let diffusers = crate::weights::single_file::ldm::flattened_unet_name(name, per_block)?;
            table.flattened.get(&diffusers).map(String::as_str)
        }
        _ => None,
    }
}

/// A component's weight names, indexed by module path both ways.
#[derive(Debug, Default)]
pub struct ParameterNames {
    dotted: HashMap<String, String>,
    flattened: HashMap<String, String>,
    /// For a UNet (its `down_blocks.0.resnets.N` counted): kohya's LDM
    /// block names are resolved through diffusers' ones.
    ldm_layers_per_block: Option<usize>,
}

impl ParameterNames {
    pub fn new<'a>(names: impl IntoIterator<Item = &'a String>) -> Self {
        let mut table = Self::default();
        for name in names {
            if let Some(module) = name.strip_suffix(".weight") {
                table.dotted.insert(module.to_string(), name.clone());
                table
                    .flattened
                    .insert(module.replace('.', "_"), name.clone());
            }
            if let Some(rest) = name.strip_prefix("down_blocks.0.resnets.") {
                if let Some(n) = rest.split('.').next().and_then(|n| n.parse::<usize>().ok()) {
                    let seen = table.ldm_layers_per_block.unwrap_or(0);
                    table.ldm_layers_per_block = Some(seen.max(n + 1));
                }
            }
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(rank: usize, out: usize, inp: usize) -> (Tensor, Tensor) {
        let dev = Device::Cpu;
        (
            Tensor::ones((rank, inp), DType::F32, &dev).unwrap(),
            Tensor::ones((out, rank), DType::F32, &dev).unwrap(),
        )
    }

    #[test]
    fn kohya_ldm_block_names_resolve_to_diffusers_layers() {
        let names: Vec<String> = [
            "down_blocks.0.resnets.0.conv1.weight",
            "down_blocks.0.resnets.1.conv1.weight",
            "down_blocks.0.downsamplers.0.conv.weight",
            "down_blocks.1.resnets.1.conv1.weight",
            "down_blocks.1.resnets.0.time_emb_proj.weight",
            "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight",
            "mid_block.attentions.0.proj_in.weight",
            "mid_block.resnets.1.conv2.weight",
            "up_blocks.0.upsamplers.0.conv.weight",
            "up_blocks.1.attentions.2.transformer_blocks.0.ff.net.2.weight",
        ]
        .map(String::from)
        .to_vec();
        let table = ParameterNames::new(&names);
        let find = |ldm: &str| resolve(&table, &LayerName::Flattened(ldm.to_string()));
        // SGM / SDXL block numbering with two layers per block, as
        // diffusers' _convert_non_diffusers_lora_to_diffusers maps it.
        for (ldm, diffusers) in [
            (
                "input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                names[5].as_str(),
            ),
            ("input_blocks_1_0_in_layers_2", names[0].as_str()),
            ("input_blocks_2_0_in_layers_2", names[1].as_str()),
            ("input_blocks_3_0_op", names[2].as_str()),
            ("input_blocks_5_0_in_layers_2", names[3].as_str()),
            ("input_blocks_4_0_emb_layers_1", names[4].as_str()),
            ("middle_block_1_proj_in", names[6].as_str()),
            ("middle_block_2_out_layers_3", names[7].as_str()),
            ("output_blocks_2_1_conv", names[8].as_str()),
            (
                "output_blocks_5_1_transformer_blocks_0_ff_net_2",
                names[9].as_str(),
            ),
        ] {
            assert_eq!(find(ldm), Some(diffusers), "{ldm}");
        }
        assert_eq!(find("input_blocks_99_1_proj_in"), None);
        assert_eq!(find("input_blocks_4_7_proj_in"), None);
        let text = ParameterNames::new(&["text_model.encoder.layers.0.mlp.fc1.weight".to_string()]);
        assert_eq!(
            resolve(
                &text,
                &LayerName::Flattened("input_blocks_4_1_proj_in".into())
            ),
            None,
            "text encoders have no LDM blocks"
        );
    }

    #[test]
    fn reads_both_formats_and_resolves_flattened_names() {
        let (down, up) = pair(2, 3, 4);
        let alpha = Tensor::new(1f32, &Device::Cpu).unwrap();
        let kohya = HashMap::from([
            (
                "lora_unet_down_blocks_0_attn1_to_q.lora_down.weight".to_string(),
                down.clone(),
            ),
            (
                "lora_unet_down_blocks_0_attn1_to_q.lora_up.weight".to_string(),
                up.clone(),
            ),
            (
                "lora_unet_down_blocks_0_attn1_to_q.alpha".to_string(),
                alpha,
            ),
            (
                "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight".to_string(),
                down.clone(),
            ),
            (
                "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight".to_string(),
                up.clone(),
            ),
        ]);
        let file = LoraFile::from_tensors(kohya).unwrap();
        assert_eq!(file.format, LoraFormat::Kohya);
        assert_eq!(
            file.components(),
            [Component::Denoiser, Component::TextEncoder(0)]
        );
        let unet_names = [
            "down_blocks.0.attn1.to_q.weight".to_string(),
            "down_blocks.0.attn1.to_q.bias".to_string(),
        ];
        let unet = ParameterNames::new(&unet_names);
        let text_names = ["encoder.layers.0.mlp.fc1.weight".to_string()];
        let text = ParameterNames::new(&text_names);
        let [first, second] = &file.layers[..] else {
            panic!()
        };
        assert_eq!(
            resolve(&unet, &first.layer),
            Some("down_blocks.0.attn1.to_q.weight")
        );
        assert_eq!(
            resolve(&text, &second.layer),
            Some("encoder.layers.0.mlp.fc1.weight")
        );
        // alpha 1 of rank 2 at strength 0.5: every entry 2 · 0.5 · 1/2.
        let delta = first.delta(&[3, 4], 0.5).unwrap();
        assert_eq!(delta.to_vec2::<f32>().unwrap(), vec![vec![0.5f32; 4]; 3]);
        assert!(second.alpha.is_none());
        assert!(first
            .delta(&[4, 4], 1.0)
            .unwrap_err()
            .to_string()
            .contains("another model"));

        let peft = HashMap::from([
            (
                "text_encoder_2.encoder.layers.0.mlp.fc1.lora_A.weight".to_string(),
                down,
            ),
            (
                "text_encoder_2.encoder.layers.0.mlp.fc1.lora_B.weight".to_string(),
                up,
            ),
        ]);
        let file = LoraFile::from_tensors(peft).unwrap();
        assert_eq!(file.format, LoraFormat::Peft);
        assert_eq!(file.components(), [Component::TextEncoder(1)]);
        let prefixed = ["text_model.encoder.layers.0.mlp.fc1.weight".to_string()];
        assert!(resolve(&ParameterNames::new(&prefixed), &file.layers[0].layer).is_some());
    }

    #[test]
    fn other_files_are_refused_with_the_reason() {
        let t = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        let err = |tensors: HashMap<String, Tensor>| {
            LoraFile::from_tensors(tensors).unwrap_err().to_string()
        };
        assert!(err(HashMap::from([(
            "model.diffusion_model.x.weight".into(),
            t.clone()
        )]))
        .contains("unrecognised"));
        assert!(err(HashMap::from([("lora_unet_x.hada_w1_a".into(), t.clone())])).contains("LoHa"));
        assert!(err(HashMap::from([("lora_unet_x.lora_down.weight".into(), t)])).contains("lacks"));
        assert!(err(HashMap::new()).contains("no LoRA layers"));
    }
}
