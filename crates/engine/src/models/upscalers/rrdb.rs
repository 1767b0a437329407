//! ESRGAN's RRDBNet (Wang et al. 2018), as Real-ESRGAN and BasicSR run it:
//! a first convolution, N residual-in-residual dense blocks and a trunk
//! convolution around a skip, then ×2 nearest-neighbour upsampling steps
//! each followed by a convolution, a high-resolution convolution and the
//! last one. Leaky ReLU slope 0.2, residual scale 0.2.
//!
//! Names: BasicSR's (`conv_first`, `body.N.rdbK.convJ`, `conv_body`,
//! `conv_upK`, `conv_hr`, `conv_last`), BSRGAN's (`RRDB_trunk`,
//! `trunk_conv`, `upconvK`, `HRconv`) and the original ESRGAN's
//! sequential ones (`model.0`, `model.1.sub.N.RDBK.convJ.0`, then the
//! upsampling convolutions, `HRconv` and the last at the following
//! indices), all mapped to one layout here. A first convolution taking
//! 4× or 16× the output channels marks Real-ESRGAN's ×2 / ×1 models, which
//! pixel-unshuffle their input by 2 or 4 first.

use std::collections::HashMap;

use candle_core::{Module, Tensor};
use cyberimage_kernels::conv::Conv2d;
use cyberimage_kernels::pointwise::{add_scaled, leaky_relu};

use super::{same_conv, square_factor};
use crate::error::EngineLoadError;

const SLOPE: f32 = 0.2;
const RESIDUAL: f32 = 0.2;

/// One dense block: five convolutions, each seeing every earlier output.
struct DenseBlock {
    convs: [Conv2d; 5],
    /// Channels each of the first four adds (32 in every ESRGAN).
    growth: usize,
}

impl DenseBlock {
    /// The input and each new output are written once into one buffer
    /// whose leading channels every convolution reads (a view, for one
    /// picture), instead of concatenating all of them again per layer.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, channels, h, w) = x.dims4()?;
        let buffer = Tensor::zeros(
            (batch, channels + 4 * self.growth, h, w),
            x.dtype(),
            x.device(),
        )?;
        buffer.slice_set(&x.contiguous()?, 1, 0)?;
        for (i, conv) in self.convs[..4].iter().enumerate() {
            let seen = buffer.narrow(1, 0, channels + i * self.growth)?;
            let out = leaky_relu(&conv.forward(&seen)?, SLOPE)?;
            buffer.slice_set(&out, 1, channels + i * self.growth)?;
        }
        add_scaled(x, &self.convs[4].forward(&buffer)?, RESIDUAL)
    }
}

pub struct Rrdb {
    unshuffle: usize,
    conv_first: Conv2d,
    blocks: Vec<[DenseBlock; 3]>,
    conv_body: Conv2d,
    upsamplers: Vec<Conv2d>,
    conv_hr: Conv2d,
    conv_last: Conv2d,
}

impl Rrdb {
    pub fn new(tensors: HashMap<String, Tensor>) -> Result<Self, EngineLoadError> {
        let mut t = to_basicsr_names(tensors)?;
        let in_channels = t
            .get("conv_first.weight")
            .ok_or_else(|| EngineLoadError::Unsupported("RRDBNet without conv_first".into()))?
            .dim(1)?;
        let out_channels = t
            .get("conv_last.weight")
            .ok_or_else(|| EngineLoadError::Unsupported("RRDBNet without conv_last".into()))?
            .dim(0)?;
        let unshuffle = match square_factor(in_channels, out_channels) {
            Some(s @ (1 | 2 | 4)) => s,
            _ => {
                return Err(EngineLoadError::Unsupported(format!(
                    "RRDBNet with {in_channels} input and {out_channels} output channels"
                )))
            }
        };
        let conv_first = same_conv(&mut t, "conv_first")?;
        let mut blocks = Vec::new();
        while t.contains_key(&format!("body.{}.rdb1.conv1.weight", blocks.len())) {
            let n = blocks.len();
            let dense = |t: &mut HashMap<String, Tensor>, k: usize| -> Result<_, EngineLoadError> {
                let conv = |t: &mut HashMap<String, Tensor>, j: usize| {
                    same_conv(t, &format!("body.{n}.rdb{k}.conv{j}"))
                };
                let growth = t
                    .get(&format!("body.{n}.rdb{k}.conv1.weight"))
                    .map(|w| w.dim(0))
                    .transpose()?
                    .unwrap_or(0);
                Ok(DenseBlock {
                    growth,
                    convs: [
                        conv(t, 1)?,
                        conv(t, 2)?,
                        conv(t, 3)?,
                        conv(t, 4)?,
                        conv(t, 5)?,
                    ],
                })
            };
            blocks.push([dense(&mut t, 1)?, dense(&mut t, 2)?, dense(&mut t, 3)?]);
        }
        let conv_body = same_conv(&mut t, "conv_body")?;
        let mut upsamplers = Vec::new();
        while t.contains_key(&format!("conv_up{}.weight", upsamplers.len() + 1)) {
            upsamplers.push(same_conv(
                &mut t,
                &format!("conv_up{}", upsamplers.len() + 1),
            )?);
        }
        let net = Self {
            unshuffle,
            conv_first,
            blocks,
            conv_body,
            upsamplers,
            conv_hr: same_conv(&mut t, "conv_hr")?,
            conv_last: same_conv(&mut t, "conv_last")?,
        };
        if net.blocks.is_empty() || (1 << net.upsamplers.len()) < net.unshuffle {
            return Err(EngineLoadError::Unsupported(format!(
                "RRDBNet with {} blocks, {} upsampling steps and a ×{} unshuffle",
                net.blocks.len(),
                net.upsamplers.len(),
                net.unshuffle
            )));
        }
        Ok(net)
    }

    pub fn scale(&self) -> usize {
        (1 << self.upsamplers.len()) / self.unshuffle
    }

    pub fn unshuffle(&self) -> usize {
        self.unshuffle
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = match self.unshuffle {
            1 => x.clone(),
            s => candle_nn::ops::pixel_unshuffle(x, s)?,
        };
        let feat = self.conv_first.forward(&x)?;
        let mut body = feat.clone();
        for [a, b, c] in &self.blocks {
            let out = c.forward(&b.forward(&a.forward(&body)?)?)?;
            body = add_scaled(&body, &out, RESIDUAL)?;
        }
        let mut feat = (self.conv_body.forward(&body)? + feat)?;
        for conv in &self.upsamplers {
            let (_, _, h, w) = feat.dims4()?;
            let up = feat.upsample_nearest2d(h * 2, w * 2)?;
            feat = leaky_relu(&conv.forward(&up)?, SLOPE)?;
        }
        let hr = leaky_relu(&self.conv_hr.forward(&feat)?, SLOPE)?;
        self.conv_last.forward(&hr)
    }
}

/// Renames the older layouts' tensors to BasicSR's.
fn to_basicsr_names(
    tensors: HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>, EngineLoadError> {
    if tensors.contains_key("conv_first.weight") {
        // BasicSR already, or BSRGAN's variant of it.
        return Ok(tensors
            .into_iter()
            .map(|(name, t)| (bsrgan_to_basicsr(&name), t))
            .collect());
    }
    let mut blocks = 0;
    while tensors.contains_key(&format!("model.1.sub.{blocks}.RDB1.conv1.0.weight")) {
        blocks += 1;
    }
    // After model.1 (the trunk): upsampling convolutions, then HRconv and
    // the last convolution, at increasing sequential indices.
    let mut tail: Vec<usize> = tensors
        .keys()
        .filter_map(|name| {
            let rest = name.strip_prefix("model.")?.strip_suffix(".weight")?;
            let index: usize = rest.parse().ok()?;
            (index >= 2).then_some(index)
        })
        .collect();
    tail.sort_unstable();
    if tail.len() < 2 {
        return Err(EngineLoadError::Unsupported(
            "ESRGAN weights without their last convolutions".into(),
        ));
    }
    let mut names = HashMap::new();
    names.insert("model.0".to_string(), "conv_first".to_string());
    names.insert(format!("model.1.sub.{blocks}"), "conv_body".to_string());
    let ups = tail.len() - 2;
    for (k, index) in tail.iter().enumerate() {
        let new = if k < ups {
            format!("conv_up{}", k + 1)
        } else if k == ups {
            "conv_hr".to_string()
        } else {
            "conv_last".to_string()
        };
        names.insert(format!("model.{index}"), new);
    }
    let mut renamed = HashMap::new();
    for (name, tensor) in tensors {
        let (layer, kind) = name
            .rsplit_once('.')
            .ok_or_else(|| EngineLoadError::Unsupported(format!("ESRGAN tensor {name}")))?;
        let new = if let Some(new) = names.get(layer) {
            format!("{new}.{kind}")
        } else if let Some(rest) = layer.strip_prefix("model.1.sub.") {
            // N.RDBk.convj.0 → body.N.rdbk.convj
            let rest = rest.strip_suffix(".0").unwrap_or(rest);
            format!("body.{}.{kind}", rest.replace(".RDB", ".rdb"))
        } else {
            return Err(EngineLoadError::Unsupported(format!(
                "ESRGAN tensor {name} fits no layer (ESRGAN+ and other variants are not supported)"
            )));
        };
        renamed.insert(new, tensor);
    }
    Ok(renamed)
}

fn bsrgan_to_basicsr(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("RRDB_trunk.") {
        return format!("body.{}", rest.replace(".RDB", ".rdb"));
    }
    for (old, new) in [
        ("trunk_conv.", "conv_body."),
        ("upconv1.", "conv_up1."),
        ("upconv2.", "conv_up2."),
        ("upconv3.", "conv_up3."),
        ("HRconv.", "conv_hr."),
    ] {
        if let Some(rest) = name.strip_prefix(old) {
            return format!("{new}{rest}");
        }
    }
    name.to_string()
}
