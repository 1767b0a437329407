//! The Residual Dense Network (Zhang et al. 2018) as idealo's
//! image-super-resolution builds it, the architecture of UpscalerJS's
//! `esrgan-slim` and `esrgan-medium` models: two shallow convolutions
//! (`F_m1`, `F_0`), D residual dense blocks of C ReLU convolutions each
//! (`F_d_c`, every one seeing the block's input and the earlier outputs,
//! fused by a 1×1 `LFF_d` and added to the input), global fusion of all
//! blocks (`GFF_1` 1×1, `GFF_2` 3×3) added to `F_m1`, then `UPN1`–`UPN3`
//! (5×5 and 3×3 with ReLU, then 3·scale² channels), nearest-neighbour
//! upsampling by the scale and the output convolution `SR`.
//!
//! Names are the Keras layer names; `fixtures/convert_upscalerjs.py`
//! writes them as PyTorch-layout tensors, with the models' 0–255 pixel
//! range folded into the first and last convolutions, so that this
//! network maps [0, 1] to [0, 1] like the others.

use std::collections::HashMap;

use candle_core::{Module, Tensor};
use cyberimage_kernels::conv::Conv2d;

use super::{same_conv, square_factor};
use crate::error::EngineLoadError;

struct DenseBlock {
    convs: Vec<Conv2d>,
    fusion: Conv2d,
}

pub struct Rdn {
    shallow: [Conv2d; 2],
    blocks: Vec<DenseBlock>,
    global_fusion: [Conv2d; 2],
    upsampling: [Conv2d; 3],
    output: Conv2d,
    scale: usize,
}

impl Rdn {
    pub fn new(mut t: HashMap<String, Tensor>) -> Result<Self, EngineLoadError> {
        let shallow = [same_conv(&mut t, "F_m1")?, same_conv(&mut t, "F_0")?];
        let mut blocks = Vec::new();
        while t.contains_key(&format!("LFF_{}.weight", blocks.len() + 1)) {
            let d = blocks.len() + 1;
            let mut convs = Vec::new();
            while t.contains_key(&format!("F_{d}_{}.weight", convs.len() + 1)) {
                convs.push(same_conv(&mut t, &format!("F_{d}_{}", convs.len() + 1))?);
            }
            if convs.is_empty() {
                return Err(EngineLoadError::Unsupported(format!(
                    "RDN block {d} has no convolutions (no F_{d}_1)"
                )));
            }
            blocks.push(DenseBlock {
                convs,
                fusion: same_conv(&mut t, &format!("LFF_{d}"))?,
            });
        }
        if blocks.is_empty() {
            return Err(EngineLoadError::Unsupported(
                "RDN weights without dense blocks (no LFF_1)".into(),
            ));
        }
        let upsampling = [
            same_conv(&mut t, "UPN1")?,
            same_conv(&mut t, "UPN2")?,
            same_conv(&mut t, "UPN3")?,
        ];
        let (channels, upn3) = match t.get("SR.weight") {
            Some(w) => (w.dim(0)?, w.dim(1)?),
            None => return Err(EngineLoadError::Unsupported("RDN weights lack SR".into())),
        };
        let output = same_conv(&mut t, "SR")?;
        let scale = square_factor(upn3, channels).ok_or_else(|| {
            EngineLoadError::Unsupported(format!(
                "RDN's UPN3 gives {upn3} channels: not {channels}·scale²"
            ))
        })?;
        Ok(Self {
            shallow,
            blocks,
            global_fusion: [same_conv(&mut t, "GFF_1")?, same_conv(&mut t, "GFF_2")?],
            upsampling,
            output,
            scale,
        })
    }

    pub fn scale(&self) -> usize {
        self.scale
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let f_m1 = self.shallow[0].forward(x)?;
        let mut x = self.shallow[1].forward(&f_m1)?;
        let mut block_outputs = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let mut features = vec![x.clone()];
            for conv in &block.convs {
                let out = conv.forward(&Tensor::cat(&features, 1)?)?.relu()?;
                features.push(out);
            }
            x = (block.fusion.forward(&Tensor::cat(&features, 1)?)? + &x)?;
            block_outputs.push(x.clone());
        }
        let fused = self.global_fusion[0].forward(&Tensor::cat(&block_outputs, 1)?)?;
        let x = (self.global_fusion[1].forward(&fused)? + f_m1)?;
        let x = self.upsampling[0].forward(&x)?.relu()?;
        let x = self.upsampling[1].forward(&x)?.relu()?;
        let x = self.upsampling[2].forward(&x)?;
        let (_, _, h, w) = x.dims4()?;
        let x = x.upsample_nearest2d(h * self.scale, w * self.scale)?;
        self.output.forward(&x)
    }
}
