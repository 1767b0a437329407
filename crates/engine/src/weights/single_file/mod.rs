//! Models whose weights are single checkpoint files, the way ComfyUI and
//! AUTOMATIC1111 users keep them: an SD 1.x/2.x/XL checkpoint with its VAE
//! and text encoders inside (original LDM / Stability names), Stability's
//! SD 3.5 file (`sd3`), or a FLUX transformer beside separate `clip_l`,
//! `t5xxl` and `ae` files.
//!
//! Such a model is assembled (`assemble`) into a small folder in the
//! diffusers layout: configs and tokenizers copied from a diffusers folder
//! or Hugging Face repo (the checkpoint has none), and in each component
//! folder a `single-file.json` naming the file, the prefix of that
//! component's tensors in it, and their naming (`Layout`). The weights are
//! read from the file in place, renamed as they are read (`ldm`), so
//! nothing gigabyte-sized is copied and the pipelines load the folder like
//! any other. `detect` tells what a file holds from its tensor names and
//! shapes.

pub mod assemble;
pub mod detect;
mod layout_weight;
pub(crate) mod ldm;
mod sd3;
pub use sd3::{stability_linears, StabilityPlace};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::EngineLoadError;
use crate::weights::files::{read_config, read_file};
use crate::weights::safetensors::read_header;
use layout_weight::{LayoutWeight, Shape};

/// The name of the pointer file in a component folder.
pub const POINTER_FILE: &str = "single-file.json";

/// Where a component's tensors are, in a file shared with other components.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentFile {
    pub file: PathBuf,
    /// What every tensor of this component starts with in the file.
    #[serde(default)]
    pub prefix: String,
    pub layout: Layout,
}

/// How a component's tensors are named in the file, after the prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// diffusers or transformers names, or the BFL FLUX layout (which the
    /// FLUX loader reads natively).
    AsIs,
    /// The original LDM UNet (`input_blocks.1.0.in_layers.0`).
    LdmUnet,
    /// The original LDM / BFL autoencoder (`decoder.up.3.block.0`).
    LdmVae,
    /// An OpenCLIP text tower (`transformer.resblocks.0.attn.in_proj_weight`).
    OpenClip,
    /// Stability's SD 3.x MMDiT (`joint_blocks.0.x_block.attn.qkv`).
    Sd3Mmdit,
    /// SD 3's CLIP-L in transformers' names, whose projection is the
    /// identity.
    Sd3ClipL,
}

/// The component's pointer, if its folder has one.
pub fn pointer(folder: &Path) -> Result<Option<ComponentFile>, EngineLoadError> {
    let path = folder.join(POINTER_FILE);
    if !path.exists() {
        return Ok(None);
    }
    read_config(&path).map(Some)
}

/// The sizes the renaming needs from the component's config.
#[derive(Deserialize)]
struct BlockCounts {
    #[serde(default)]
    layers_per_block: Option<usize>,
    #[serde(default)]
    block_out_channels: Vec<usize>,
}

/// A layout's tensor name → diffusers' (`None`: not a tensor we load).
type Rename = dyn Fn(&str) -> Option<String>;

/// How `part`'s tensor names become diffusers' (the folder's config gives
/// the block counts some layouts need).
fn renamer(folder: &Path, part: &ComponentFile) -> Result<Box<Rename>, EngineLoadError> {
    let counts =
        || -> Result<BlockCounts, EngineLoadError> { read_config(&folder.join("config.json")) };
    Ok(match part.layout {
        Layout::AsIs | Layout::Sd3ClipL => Box::new(|name| Some(name.to_string())),
        Layout::Sd3Mmdit => Box::new(sd3::mmdit_name),
        Layout::LdmUnet => {
            let layers = counts()?.layers_per_block.ok_or_else(|| {
                EngineLoadError::Unsupported(format!(
                    "{}: the UNet config has no layers_per_block",
                    folder.display()
                ))
            })?;
            Box::new(move |name| ldm::unet_name(name, layers))
        }
        Layout::LdmVae => {
            let blocks = counts()?.block_out_channels.len();
            Box::new(move |name| ldm::vae_name(name, blocks))
        }
        Layout::OpenClip => Box::new(ldm::open_clip_name),
    })
}

/// The component's tensors from its file, under diffusers' names.
pub fn read_component(
    folder: &Path,
    part: &ComponentFile,
    device: &Device,
    dtype: DType,
) -> Result<HashMap<String, Tensor>, EngineLoadError> {
    let rename = renamer(folder, part)?;
    let prefix = part.prefix.as_str();
    let mut tensors = HashMap::new();
    read_file(
        &part.file,
        device,
        dtype,
        &|name| name.strip_prefix(prefix).and_then(&rename),
        &mut tensors,
    )?;
    finish(folder, part, tensors, device)
}

/// The names and shapes [`read_component`] gives, from the file's header
/// alone.
pub fn component_shapes(
    folder: &Path,
    part: &ComponentFile,
) -> Result<HashMap<String, Vec<usize>>, EngineLoadError> {
    let rename = renamer(folder, part)?;
    let prefix = part.prefix.as_str();
    let header = read_header(&part.file).map_err(|source| EngineLoadError::Io {
        path: part.file.clone(),
        source,
    })?;
    let shapes = header
        .into_iter()
        .filter_map(|(name, entry)| {
            let name = name.strip_prefix(prefix).and_then(&rename)?;
            Some((name, Shape(entry.shape)))
        })
        .collect();
    Ok(finish(folder, part, shapes, &Device::Cpu)?
        .into_iter()
        .map(|(name, shape)| (name, shape.0))
        .collect())
}

/// The layout's fixes after renaming (fused matrices split, modulations
/// reordered, FP8 scales applied), on tensors or on their shapes alone.
fn finish<W: LayoutWeight>(
    folder: &Path,
    part: &ComponentFile,
    mut tensors: HashMap<String, W>,
    device: &Device,
) -> Result<HashMap<String, W>, EngineLoadError> {
    if tensors.is_empty() {
        return Err(EngineLoadError::Unsupported(format!(
            "{} has no tensors under {:?} for {}",
            part.file.display(),
            part.prefix,
            folder.display()
        )));
    }
    match part.layout {
        Layout::LdmVae => ldm::vae_attention_as_linear(&mut tensors)?,
        Layout::OpenClip => ldm::split_open_clip(&mut tensors)?,
        Layout::Sd3Mmdit => sd3::finish_mmdit(&mut tensors)?,
        Layout::Sd3ClipL => sd3::identity_projection(&mut tensors, device)?,
        Layout::AsIs | Layout::LdmUnet => {}
    }
    apply_fp8_scales(&mut tensors)?;
    Ok(tensors)
}

/// ComfyUI's "scaled" FP8 checkpoints store `w / s` in FP8 and `s` as
/// `<layer>.scale_weight`: the weight is the product. Their input scales
/// and the `scaled_fp8` marker matter only to FP8 matmuls, not to a
/// dequantized model.
fn apply_fp8_scales<W: LayoutWeight>(
    tensors: &mut HashMap<String, W>,
) -> Result<(), EngineLoadError> {
    let scaled: Vec<String> = tensors
        .keys()
        .filter_map(|k| k.strip_suffix(".scale_weight").map(str::to_string))
        .collect();
    for layer in scaled {
        let scale = tensors
            .remove(&format!("{layer}.scale_weight"))
            .expect("listed");
        let key = format!("{layer}.weight");
        if let Some(weight) = tensors.get(&key) {
            let scaled = weight.scaled(&scale)?;
            tensors.insert(key, scaled);
        }
    }
    tensors.retain(|k, _| k != "scaled_fp8" && !k.ends_with(".scale_input"));
    Ok(())
}

/// Bytes the component takes once loaded as f32 (from the header only).
pub fn component_f32_bytes(part: &ComponentFile) -> std::io::Result<u64> {
    Ok(read_header(&part.file)?
        .iter()
        .filter(|(name, _)| name.starts_with(&part.prefix))
        .map(|(_, e)| e.elements() * 4)
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_fp8_weights_are_multiplied_by_their_scale() {
        let device = Device::Cpu;
        let mut tensors: HashMap<String, Tensor> = [
            ("a.weight", Tensor::new(&[[1f32, 2.], [3., 4.]], &device)),
            ("a.scale_weight", Tensor::new(&[0.5f32], &device)),
            ("a.scale_input", Tensor::new(&[9f32], &device)),
            ("scaled_fp8", Tensor::new(&[0f32], &device)),
            ("b.weight", Tensor::new(&[[7f32]], &device)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.unwrap()))
        .collect();
        apply_fp8_scales(&mut tensors).unwrap();
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        assert_eq!(names, ["a.weight", "b.weight"]);
        assert_eq!(
            tensors["a.weight"].to_vec2::<f32>().unwrap(),
            [[0.5, 1.0], [1.5, 2.0]]
        );
        assert_eq!(tensors["b.weight"].to_vec2::<f32>().unwrap(), [[7.0]]);
    }
}
