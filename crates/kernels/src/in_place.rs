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

use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor};

use crate::buffers::OutBlock;
use crate::f32_gemm::{self, Matrix};

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

/// Only float32 weights on the CPU are edited in place.
fn check_editable(target: &Tensor) -> Result<()> {
    if !target.device().is_cpu() || target.dtype() != DType::F32 {
        candle_core::bail!(
            "editing weights in place is implemented for float32 on the CPU only ({:?} on {:?})",
            target.dtype(),
            target.device().location()
        )
    }
    Ok(())
}

fn edit(target: &Tensor, source: &Tensor, op: Edit) -> Result<()> {
    if target.dims() != source.dims() {
        candle_core::bail!("{}: {:?} vs {:?}", op.name(), target.dims(), source.dims())
    }
    check_editable(target)?;
    let source = source.to_dtype(DType::F32)?.contiguous()?;
    target.inplace_op2(&source, &op)?;
    weights_changed();
    Ok(())
}

/// `target += up · down` (a LoRA's change, its scale in `up`) computed
/// into `target`'s storage by one accumulating product: the rows × inputs
/// difference is never materialised, which would cost as much memory as
/// the weight and a second pass over it.
struct AddProduct {
    rows: usize,
    cols: usize,
    rank: usize,
}

impl InplaceOp3 for AddProduct {
    fn name(&self) -> &'static str {
        "add-low-rank-in-place"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let (CpuStorage::F32(target), CpuStorage::F32(up), CpuStorage::F32(down)) = (s1, s2, s3)
        else {
            candle_core::bail!("{}: only float32 weights can be edited", self.name())
        };
        let (Some((t0, t1)), Some((u0, u1)), Some((d0, d1))) = (
            l1.contiguous_offsets(),
            l2.contiguous_offsets(),
            l3.contiguous_offsets(),
        ) else {
            candle_core::bail!("{}: the tensors must be contiguous", self.name())
        };
        let (rows, cols, rank) = (self.rows, self.cols, self.rank);
        if t1 - t0 != rows * cols || u1 - u0 != rows * rank || d1 - d0 != rank * cols {
            candle_core::bail!("{}: shapes disagree", self.name())
        }
        f32_gemm::gemm(
            OutBlock::of_slice(&mut target[t0..t1], rows, cols, cols),
            Matrix::new(&up[u0..u1], rows, rank, rank),
            Matrix::new(&down[d0..d1], rank, cols, cols),
            true,
            gemm::Parallelism::Rayon(0),
        );
        Ok(())
    }
}

/// `target += up · down`, where `target` is rows × (inputs…) (a matrix or
/// a convolution's kernel), `up` rows × rank and `down` rank × inputs.
pub fn add_product_in_place(target: &Tensor, up: &Tensor, down: &Tensor) -> Result<()> {
    let (rows, rank) = up.dims2()?;
    let (down_rank, cols) = down.dims2()?;
    if target.dims().first() != Some(&rows)
        || target.elem_count() != rows * cols
        || down_rank != rank
    {
        candle_core::bail!(
            "add-low-rank-in-place: {:?} += {:?} · {:?}",
            target.dims(),
            up.dims(),
            down.dims()
        )
    }
    check_editable(target)?;
    let up = up.to_dtype(DType::F32)?.contiguous()?;
    let down = down.to_dtype(DType::F32)?.contiguous()?;
    target.inplace_op3(&up, &down, &AddProduct { rows, cols, rank })?;
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

    #[test]
    fn a_low_rank_product_is_added_into_the_rows_it_names() {
        let _edits = EDITS.lock();
        let dev = Device::Cpu;
        let weight = Tensor::randn(0f32, 1., (7, 3, 2, 2), &dev).unwrap();
        let before = weight.copy().unwrap();
        let up = Tensor::randn(0f32, 1., (4, 2), &dev).unwrap();
        let down = Tensor::randn(0f32, 1., (2, 12), &dev).unwrap();
        // Rows 2..6 of a convolution's kernel, through a view.
        add_product_in_place(&weight.narrow(0, 2, 4).unwrap(), &up, &down).unwrap();
        let expected = (before.narrow(0, 2, 4).unwrap()
            + up.matmul(&down).unwrap().reshape((4, 3, 2, 2)).unwrap())
        .unwrap();
        let got = weight.narrow(0, 2, 4).unwrap();
        let gap = (got - expected)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(gap < 1e-5, "{gap}");
        for rows in [0..2, 6..7] {
            let (a, b) = (
                weight.narrow(0, rows.start, rows.len()).unwrap(),
                before.narrow(0, rows.start, rows.len()).unwrap(),
            );
            assert_eq!(
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
        assert!(add_product_in_place(&weight, &up, &down).is_err());
    }
}
