//! Editing loaded weights where they lie: adding a low-rank difference
//! into a weight tensor and copying saved values back (how LoRAs are
//! merged and unmerged without reloading the model), and the cache of
//! derived forms (the bf16-packed weights) that such an edit invalidates.
//!
//! A model's layers hold candle tensors that share their storage with the
//! tensor table the model was loaded from, so an edit through the table is
//! seen by the layer. Every edit bumps a process-wide epoch; a
//! [`DerivedCache`] made under an older epoch is rebuilt on its next use.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Tensor};

static WEIGHTS_EPOCH: AtomicU64 = AtomicU64::new(0);

fn weights_changed() {
    WEIGHTS_EPOCH.fetch_add(1, Ordering::SeqCst);
}

/// Something computed from a layer's weights, valid until they change.
#[derive(Debug)]
pub struct DerivedCache<T> {
    cell: RwLock<Option<(u64, Arc<T>)>>,
}

impl<T> Default for DerivedCache<T> {
    fn default() -> Self {
        Self {
            cell: RwLock::new(None),
        }
    }
}

impl<T> DerivedCache<T> {
    /// The cached value, or `make()`'s when the weights changed since it was
    /// made (or it never was).
    pub fn get_or_make(&self, make: impl FnOnce() -> Result<T>) -> Result<Arc<T>> {
        let epoch = WEIGHTS_EPOCH.load(Ordering::SeqCst);
        if let Some((made, value)) = &*self.cell.read().unwrap_or_else(|e| e.into_inner()) {
            if *made == epoch {
                return Ok(value.clone());
            }
        }
        let value = Arc::new(make()?);
        *self.cell.write().unwrap_or_else(|e| e.into_inner()) = Some((epoch, value.clone()));
        Ok(value)
    }

    /// Whether a value made under the current weights is held.
    pub fn is_current(&self) -> bool {
        let epoch = WEIGHTS_EPOCH.load(Ordering::SeqCst);
        matches!(&*self.cell.read().unwrap_or_else(|e| e.into_inner()), Some((made, _)) if *made == epoch)
    }
}

#[derive(Clone, Copy)]
enum Edit {
    Add,
    Copy,
}

impl InplaceOp2 for Edit {
    fn name(&self) -> &'static str {
        match self {
            Edit::Add => "add-in-place",
            Edit::Copy => "copy-in-place",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (CpuStorage::F32(target), CpuStorage::F32(source)) = (s1, s2) else {
            candle_core::bail!("{}: only float32 weights can be edited", self.name())
        };
        let (Some((t0, t1)), Some((s0, s1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("{}: both tensors must be contiguous", self.name())
        };
        if t1 - t0 != s1 - s0 {
            candle_core::bail!("{}: {:?} vs {:?}", self.name(), l1.shape(), l2.shape())
        }
        let (target, source) = (&mut target[t0..t1], &source[s0..s1]);
        match self {
            Edit::Add => target.iter_mut().zip(source).for_each(|(t, s)| *t += s),
            Edit::Copy => target.copy_from_slice(source),
        }
        Ok(())
    }
}

fn edit(target: &Tensor, source: &Tensor, op: Edit) -> Result<()> {
    if target.dims() != source.dims() {
        candle_core::bail!("{}: {:?} vs {:?}", op.name(), target.dims(), source.dims())
    }
    if !target.device().is_cpu() || target.dtype() != DType::F32 {
        candle_core::bail!(
            "editing weights in place is implemented for float32 on the CPU only ({:?} on {:?})",
            target.dtype(),
            target.device().location()
        )
    }
    let source = source.to_dtype(DType::F32)?.contiguous()?;
    target.inplace_op2(&source, &op)?;
    weights_changed();
    Ok(())
}

/// `target += delta`, in `target`'s own storage (every tensor sharing it
/// sees the sum).
pub fn add_in_place(target: &Tensor, delta: &Tensor) -> Result<()> {
    edit(target, delta, Edit::Add)
}

/// `target = saved`, in `target`'s own storage.
pub fn copy_in_place(target: &Tensor, saved: &Tensor) -> Result<()> {
    edit(target, saved, Edit::Copy)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Device;

    /// Held by tests that edit weights and by tests that check a cache is
    /// current, which such an edit on another thread would make stale.
    pub(crate) static EDITS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn edits_reach_every_tensor_sharing_the_storage_and_invalidate_caches() {
        let _edits = EDITS.lock();
        let dev = Device::Cpu;
        let weight = Tensor::new(&[[1f32, 2.], [3., 4.]], &dev).unwrap();
        let layer_view = weight.clone();
        let saved = weight.copy().unwrap();
        let cache = DerivedCache::<f32>::default();
        let sum = |t: &Tensor| t.sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(*cache.get_or_make(|| Ok(sum(&layer_view))).unwrap(), 10.0);
        assert!(cache.is_current());
        add_in_place(
            &weight,
            &Tensor::new(&[[0.5f32, 0.], [0., -1.]], &dev).unwrap(),
        )
        .unwrap();
        assert_eq!(layer_view.to_vec2::<f32>().unwrap(), [[1.5, 2.], [3., 3.]]);
        assert!(!cache.is_current(), "an edit makes derived forms stale");
        assert_eq!(*cache.get_or_make(|| Ok(sum(&layer_view))).unwrap(), 9.5);
        copy_in_place(&weight, &saved).unwrap();
        assert_eq!(layer_view.to_vec2::<f32>().unwrap(), [[1., 2.], [3., 4.]]);
        let wrong = Tensor::zeros((3, 2), DType::F32, &dev).unwrap();
        assert!(add_in_place(&weight, &wrong).is_err());
    }
}
