//! What the single-file layout fixes need of a weight, so the same fixes
//! run on tensors (loading) and on shapes alone (`component_shapes`: a
//! LoRA checked against a model from its headers).

use candle_core::{DType, Device, Tensor};

use crate::error::EngineLoadError;

/// A weight as the layout fixes handle it: the tensor when loading, or
/// only its shape when a check needs names and shapes without the data
/// (a LoRA checked at submit), so the same fixes give the same names.
pub(crate) trait LayoutWeight: Sized {
    fn dims(&self) -> &[usize];
    /// Rows `start .. start + len`.
    fn rows(&self, start: usize, len: usize) -> Result<Self, EngineLoadError>;
    /// The second half of the rows, then the first.
    fn swapped_halves(&self) -> Result<Self, EngineLoadError>;
    /// A matrix transposed.
    fn transposed(&self) -> Result<Self, EngineLoadError>;
    fn reshaped(&self, dims: &[usize]) -> Result<Self, EngineLoadError>;
    /// The `width × width` identity, of the float type `like` has.
    fn identity(
        width: usize,
        like: Option<&Self>,
        device: &Device,
    ) -> Result<Self, EngineLoadError>;
    fn is_float(&self) -> bool;
    /// This weight times `scale` (broadcast).
    fn scaled(&self, scale: &Self) -> Result<Self, EngineLoadError>;
}

impl LayoutWeight for Tensor {
    fn dims(&self) -> &[usize] {
        Tensor::dims(self)
    }

    fn rows(&self, start: usize, len: usize) -> Result<Self, EngineLoadError> {
        Ok(self.narrow(0, start, len)?.contiguous()?)
    }

    fn swapped_halves(&self) -> Result<Self, EngineLoadError> {
        let half = self.dim(0)? / 2;
        Ok(Tensor::cat(
            &[self.narrow(0, half, half)?, self.narrow(0, 0, half)?],
            0,
        )?)
    }

    fn transposed(&self) -> Result<Self, EngineLoadError> {
        Ok(self.t()?.contiguous()?)
    }

    fn reshaped(&self, dims: &[usize]) -> Result<Self, EngineLoadError> {
        Ok(self.reshape(dims)?)
    }

    fn identity(
        width: usize,
        like: Option<&Self>,
        device: &Device,
    ) -> Result<Self, EngineLoadError> {
        let dtype = like.map(|t| t.dtype()).unwrap_or(DType::F32);
        Ok(Tensor::eye(width, dtype, device)?)
    }

    fn is_float(&self) -> bool {
        self.dtype().is_float()
    }

    fn scaled(&self, scale: &Self) -> Result<Self, EngineLoadError> {
        Ok(self.broadcast_mul(&scale.to_dtype(self.dtype())?)?)
    }
}

/// A weight's shape, standing in for it (`component_shapes`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Shape(pub Vec<usize>);

impl LayoutWeight for Shape {
    fn dims(&self) -> &[usize] {
        &self.0
    }

    fn rows(&self, _start: usize, len: usize) -> Result<Self, EngineLoadError> {
        let mut dims = self.0.clone();
        if let Some(rows) = dims.first_mut() {
            *rows = len;
        }
        Ok(Self(dims))
    }

    fn swapped_halves(&self) -> Result<Self, EngineLoadError> {
        Ok(self.clone())
    }

    fn transposed(&self) -> Result<Self, EngineLoadError> {
        Ok(Self(self.0.iter().rev().copied().collect()))
    }

    fn reshaped(&self, dims: &[usize]) -> Result<Self, EngineLoadError> {
        Ok(Self(dims.to_vec()))
    }

    fn identity(width: usize, _: Option<&Self>, _: &Device) -> Result<Self, EngineLoadError> {
        Ok(Self(vec![width, width]))
    }

    fn is_float(&self) -> bool {
        true
    }

    fn scaled(&self, _: &Self) -> Result<Self, EngineLoadError> {
        Ok(self.clone())
    }
}
