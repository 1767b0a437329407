//! Real-ESRGAN's SRVGGNetCompact: a plain stack of 3×3 convolutions with
//! PReLU between them at the input's size, a last convolution to
//! `3·scale²` channels, a pixel shuffle, and the nearest-upsampled input
//! added (the network learns the residual). Names `body.0` (conv),
//! `body.1` (PReLU, one slope per channel), … `body.N` (the last conv),
//! as Real-ESRGAN saves it; the PReLU slopes are what tell this layout
//! apart (spandrel detects it the same way).

use std::collections::HashMap;

use candle_core::{Module, Tensor};
use cyberimage_kernels::conv::Conv2d;
use cyberimage_kernels::pointwise::prelu_channels;

use super::{same_conv, square_factor, take};
use crate::error::EngineLoadError;

pub struct Compact {
    /// Each convolution but the last, with the PReLU slopes after it.
    body: Vec<(Conv2d, Tensor)>,
    last: Conv2d,
    scale: usize,
}

impl Compact {
    pub fn new(mut t: HashMap<String, Tensor>) -> Result<Self, EngineLoadError> {
        let in_channels = t
            .get("body.0.weight")
            .ok_or_else(|| EngineLoadError::Unsupported("Compact weights without body.0".into()))?
            .dim(1)?;
        let mut body = Vec::new();
        let mut index = 0;
        loop {
            let conv = format!("body.{index}");
            if !t.contains_key(&format!("{conv}.weight")) {
                return Err(EngineLoadError::Unsupported(format!(
                    "Real-ESRGAN Compact weights end without a last convolution (no {conv})"
                )));
            }
            let slope = format!("body.{}.weight", index + 1);
            if !t.contains_key(&slope) {
                break;
            }
            let layer = same_conv(&mut t, &conv)?;
            let slopes = take(&mut t, &slope)?;
            if slopes.rank() != 1 {
                return Err(EngineLoadError::Unsupported(format!(
                    "{slope}: expected PReLU slopes (one per channel), found shape {:?} \
                     (Compact models with ReLU or leaky ReLU cannot be told from their weights)",
                    slopes.dims()
                )));
            }
            body.push((layer, slopes));
            index += 2;
        }
        let last_name = format!("body.{index}");
        let last_weight = t
            .get(&format!("{last_name}.weight"))
            .ok_or_else(|| EngineLoadError::Unsupported(format!("no {last_name}")))?;
        let out = last_weight.dim(0)?;
        let last = same_conv(&mut t, &last_name)?;
        let scale = square_factor(out, in_channels).ok_or_else(|| {
            EngineLoadError::Unsupported(format!(
                "Compact's last convolution gives {out} channels: not {in_channels}·scale²"
            ))
        })?;
        if body.is_empty() {
            return Err(EngineLoadError::Unsupported(
                "Real-ESRGAN Compact weights without a body".into(),
            ));
        }
        Ok(Self { body, last, scale })
    }

    pub fn scale(&self) -> usize {
        self.scale
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut out = x.clone();
        for (conv, slopes) in &self.body {
            out = prelu_channels(&conv.forward(&out)?, slopes)?;
        }
        let out = candle_nn::ops::pixel_shuffle(&self.last.forward(&out)?, self.scale)?;
        let (_, _, h, w) = x.dims4()?;
        out + x.upsample_nearest2d(h * self.scale, w * self.scale)?
    }
}
