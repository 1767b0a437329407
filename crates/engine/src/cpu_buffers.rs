//! The CPU buffers our kernels read and write: a contiguous f32 operand out
//! of candle's storage, and an output buffer parallel tasks write disjoint
//! parts of.

use candle_core::{CpuStorage, Layout, Storage, Tensor};

/// The f32 elements of a contiguous operand (`what` names it in the error).
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: operand not contiguous"),
    }
}

/// Lends `f` the f32 elements of `tensor` (a CPU tensor, made contiguous
/// first if it is not) without copying them out.
pub(crate) fn with_f32<R>(
    tensor: &Tensor,
    what: &str,
    f: impl FnOnce(&[f32]) -> R,
) -> candle_core::Result<R> {
    let tensor = tensor.contiguous()?;
    let (storage, layout) = tensor.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("{what}: not on the CPU");
    };
    Ok(f(contiguous_f32(cpu, layout, what)?))
}

/// A raw pointer into an output buffer, shared by tasks that write
/// disjoint parts of it (which the caller guarantees).
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(*mut f32);

// SAFETY: only the address crosses threads; every task writes a part of the
// buffer no other task touches, and the buffer outlives the tasks.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(crate) fn new(buffer: &mut [f32]) -> Self {
        Self(buffer.as_mut_ptr())
    }

    /// Through a method, so closures capture the whole (Sync) wrapper.
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}
