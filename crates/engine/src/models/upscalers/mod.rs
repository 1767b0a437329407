//! Super-resolution networks, recognised from their weights' names and
//! shapes as spandrel (the reference loader ComfyUI and chaiNNer use)
//! recognises them:
//! - `rrdb`: ESRGAN's RRDBNet, in the original ESRGAN names
//!   (`model.1.sub.N.RDB1…`) and BasicSR's (`body.N.rdb1…`, Real-ESRGAN),
//!   with Real-ESRGAN's pixel-unshuffled ×2 and ×1 variants;
//! - `compact`: Real-ESRGAN's SRVGGNetCompact (`realesr-general-x4v3`,
//!   the anime video models);
//! - `rdn`: the Residual Dense Network of idealo's image-super-resolution,
//!   the architecture of UpscalerJS's `esrgan-slim` and `esrgan-medium`
//!   models (converted by `fixtures/convert_upscalerjs.py`).
//!
//! Every network maps an NCHW f32 picture in [0, 1] to one `scale` times
//! larger; the pipeline (`pipelines::upscale`) tiles and clamps.

mod compact;
mod rdn;
mod rrdb;

use std::collections::HashMap;

use candle_core::Tensor;

use crate::error::EngineLoadError;

pub use compact::Compact;
pub use rdn::Rdn;
pub use rrdb::Rrdb;

/// What a weights file holds, before anything is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    Rrdb,
    Compact,
    Rdn,
}

impl Architecture {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rrdb => "esrgan-rrdb",
            Self::Compact => "realesrgan-compact",
            Self::Rdn => "rdn",
        }
    }

    /// The architecture of a state dict, from its names alone.
    pub fn detect(names: &HashMap<String, Tensor>) -> Result<Self, EngineLoadError> {
        let has = |name: &str| names.contains_key(name);
        if (has("model.0.weight") && has("model.1.sub.0.RDB1.conv1.0.weight"))
            || (has("conv_first.weight") && has("body.0.rdb1.conv1.weight"))
            || (has("conv_first.weight") && has("RRDB_trunk.0.RDB1.conv1.weight"))
        {
            return Ok(Self::Rrdb);
        }
        if has("body.0.weight") && has("body.1.weight") {
            return Ok(Self::Compact);
        }
        if has("F_m1.weight") && has("UPN3.weight") {
            return Ok(Self::Rdn);
        }
        Err(EngineLoadError::Unsupported(
            "not an upscaler this engine knows: the weights are neither ESRGAN/Real-ESRGAN \
             (RRDBNet), Real-ESRGAN Compact (SRVGGNet) nor RDN"
                .into(),
        ))
    }
}

/// A loaded super-resolution network (boxed: their layer lists differ in
/// size, and a net is made once per file).
pub enum UpscalerNet {
    Rrdb(Box<Rrdb>),
    Compact(Box<Compact>),
    Rdn(Box<Rdn>),
}

impl UpscalerNet {
    /// Builds the network a state dict describes (sizes from its shapes).
    pub fn from_tensors(tensors: HashMap<String, Tensor>) -> Result<Self, EngineLoadError> {
        Ok(match Architecture::detect(&tensors)? {
            Architecture::Rrdb => Self::Rrdb(Box::new(Rrdb::new(tensors)?)),
            Architecture::Compact => Self::Compact(Box::new(Compact::new(tensors)?)),
            Architecture::Rdn => Self::Rdn(Box::new(Rdn::new(tensors)?)),
        })
    }

    pub fn architecture(&self) -> Architecture {
        match self {
            Self::Rrdb(_) => Architecture::Rrdb,
            Self::Compact(_) => Architecture::Compact,
            Self::Rdn(_) => Architecture::Rdn,
        }
    }

    /// Output pixels per input pixel, along each axis.
    pub fn scale(&self) -> usize {
        match self {
            Self::Rrdb(net) => net.scale(),
            Self::Compact(net) => net.scale(),
            Self::Rdn(net) => net.scale(),
        }
    }

    /// The input's sides must be multiples of this (pixel-unshuffled
    /// inputs); the pipeline pads to it.
    pub fn size_multiple(&self) -> usize {
        match self {
            Self::Rrdb(net) => net.unshuffle(),
            Self::Compact(_) | Self::Rdn(_) => 1,
        }
    }

    /// Pixels of context a tile needs on each side for its centre to come
    /// out (nearly) as the whole picture would: about the receptive field
    /// that matters in practice, as Real-ESRGAN's own `tile_pad` of 10.
    pub fn tile_padding(&self) -> usize {
        match self {
            Self::Rrdb(_) => 16,
            Self::Compact(_) => 12,
            Self::Rdn(_) => 12,
        }
    }

    /// `x`: NCHW RGB in [0, 1]. The result is unclamped.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, EngineLoadError> {
        Ok(match self {
            Self::Rrdb(net) => net.forward(x)?,
            Self::Compact(net) => net.forward(x)?,
            Self::Rdn(net) => net.forward(x)?,
        })
    }
}

/// Takes tensor `name` out of a state dict, or says which is missing.
pub(crate) fn take(
    tensors: &mut HashMap<String, Tensor>,
    name: &str,
) -> Result<Tensor, EngineLoadError> {
    tensors
        .remove(name)
        .ok_or_else(|| EngineLoadError::Unsupported(format!("upscaler weights lack {name}")))
}

/// A convolution `prefix.weight` (+ `prefix.bias`) with "same" padding.
pub(crate) fn same_conv(
    tensors: &mut HashMap<String, Tensor>,
    prefix: &str,
) -> Result<cyberimage_kernels::conv::Conv2d, EngineLoadError> {
    let weight = take(tensors, &format!("{prefix}.weight"))?;
    let (_, _, kh, kw) = weight.dims4()?;
    if kh != kw || kh % 2 == 0 {
        return Err(EngineLoadError::Unsupported(format!(
            "{prefix}: a {kh}×{kw} kernel (square odd kernels only)"
        )));
    }
    let bias = tensors.remove(&format!("{prefix}.bias"));
    let config = candle_nn::Conv2dConfig {
        padding: kh / 2,
        ..Default::default()
    };
    Ok(cyberimage_kernels::conv::Conv2d::new(weight, bias, config))
}

/// The one integer `s` with `s·s·channels == total`, if any.
pub(crate) fn square_factor(total: usize, channels: usize) -> Option<usize> {
    (1..=16).find(|s| s * s * channels == total)
}
