//! Pieces shared by the diffusion transformers (FLUX, SD3's MMDiT): the
//! adaptive layer norm they modulate every block with, and the RMS norm of
//! queries and keys. Both models use ε = 1e-6 throughout.

use candle_core::{Tensor, D};

const EPS: f64 = 1e-6;

/// Layer norm without learned scale or shift.
pub(crate) fn plain_layer_norm(x: &Tensor) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred.broadcast_div(&(var + EPS)?.sqrt()?)
}

/// `norm(x) * (1 + scale) + shift`, the (batch, dim) modulation broadcast
/// over the tokens of x (batch, tokens, dim).
pub(crate) fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> candle_core::Result<Tensor> {
    plain_layer_norm(x)?
        .broadcast_mul(&(scale + 1.0)?.unsqueeze(1)?)?
        .broadcast_add(&shift.unsqueeze(1)?)
}

/// `count` equal chunks of a modulation vector (batch, count·dim).
pub(crate) fn chunks(v: &Tensor, count: usize) -> candle_core::Result<Vec<Tensor>> {
    let size = v.dim(1)? / count;
    (0..count).map(|i| v.narrow(1, i * size, size)).collect()
}

/// RMS norm over the last dimension with a learned scale.
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + EPS)?.sqrt()?)?.broadcast_mul(weight)
}
