//! Strided f32 tensors made contiguous on every thread.
//!
//! candle 0.11 copies a strided CPU tensor element by element on one
//! thread. The attention layers' head splits and merges, their transposed
//! keys and the image ↔ token transposes of the SD transformers make about
//! 1 GB of such copies per SD 1.5 UNet step at 512², during which the other
//! cores wait. Here the two layouts those are (runs of the last dimension
//! that are contiguous, or the last two dimensions transposed) are copied
//! by the rayon pool, runs by `copy_from_slice` and transposes in 16×16
//! register blocks. Other layouts, dtypes and devices use candle's copy.

use candle_core::{CpuStorage, DType, Layout, Storage, Tensor};
use rayon::prelude::*;

use crate::bf16_gemm::transpose_16x16;
use crate::buffers::{write_all, SharedOut};

/// Below this many elements a copy stays candle's (no threads to wake).
const MIN_PARALLEL: usize = 1 << 16;
/// Rows (of the last dimension) per task when copying runs.
const RUN_FLOATS_PER_TASK: usize = 1 << 15;
/// Transpose blocks are 16 × 16.
const BLOCK: usize = 16;

/// `t` contiguous: `t` itself when it is, a copy otherwise.
pub fn contiguous(t: &Tensor) -> candle_core::Result<Tensor> {
    if t.is_contiguous()
        || !t.device().is_cpu()
        || t.dtype() != DType::F32
        || t.elem_count() < MIN_PARALLEL
    {
        return t.contiguous();
    }
    let copied = {
        let (storage, layout) = t.storage_and_layout();
        match &*storage {
            Storage::Cpu(CpuStorage::F32(data)) => copy(data, layout),
            _ => None,
        }
    };
    match copied {
        Some(values) => Tensor::from_vec(values, t.shape().clone(), t.device()),
        None => t.contiguous(),
    }
}

/// The element offset in `data` of the `index`-th element of `dims[..outer]`
/// (row-major), for `strides`.
fn offset_of(mut index: usize, dims: &[usize], strides: &[usize]) -> usize {
    let mut offset = 0;
    for (&dim, &stride) in dims.iter().zip(strides).rev() {
        offset += (index % dim) * stride;
        index /= dim;
    }
    offset
}

/// The copy for the two layouts handled here, `None` for others.
fn copy(data: &[f32], layout: &Layout) -> Option<Vec<f32>> {
    let (dims, strides) = (layout.dims(), layout.stride());
    let start = layout.start_offset();
    let rank = dims.len();
    let total: usize = dims.iter().product();
    let mut out = Vec::new();
    let out_buf = SharedOut::spare(&mut out, total);
    if rank >= 1 && (strides[rank - 1] == 1 || dims[rank - 1] == 1) {
        // Runs: each row of the last dimension is contiguous in `data`.
        let run = dims[rank - 1];
        let rows = total / run;
        let rows_per_task = (RUN_FLOATS_PER_TASK / run).max(1);
        let outer = (&dims[..rank - 1], &strides[..rank - 1]);
        (0..rows.div_ceil(rows_per_task))
            .into_par_iter()
            .for_each(|task| {
                let first = task * rows_per_task;
                for row in first..(first + rows_per_task).min(rows) {
                    let from = start + offset_of(row, outer.0, outer.1);
                    // SAFETY: row `row` of the output is this task's alone.
                    let dst = unsafe { out_buf.part(row * run, run) };
                    write_all(dst, &data[from..from + run]);
                }
            });
    } else if rank >= 2 && strides[rank - 2] == 1 {
        // The last two dimensions transposed: per outer index, a matrix
        // whose rows (the last dimension's steps) are contiguous along the
        // second-to-last.
        let (rows_out, cols_out) = (dims[rank - 2], dims[rank - 1]);
        let src_stride = strides[rank - 1];
        let outer_count = total / (rows_out * cols_out);
        let outer = (&dims[..rank - 2], &strides[..rank - 2]);
        let row_blocks = rows_out.div_ceil(BLOCK);
        (0..outer_count * row_blocks)
            .into_par_iter()
            .for_each(|task| {
                let (o, block) = (task / row_blocks, task % row_blocks);
                let base = start + offset_of(o, outer.0, outer.1);
                let rows = block * BLOCK..((block + 1) * BLOCK).min(rows_out);
                let mut tile = [[0f32; BLOCK]; BLOCK];
                for c0 in (0..cols_out).step_by(BLOCK) {
                    let cols = c0..(c0 + BLOCK).min(cols_out);
                    let whole = rows.len() == BLOCK && cols.len() == BLOCK;
                    if whole {
                        // tile[j][i] = element (row rows.start + j, column c0 + i).
                        let src = &data[base + c0 * src_stride + rows.start..];
                        transpose_16x16(src, src_stride, &mut tile);
                    } else {
                        for (j, r) in rows.clone().enumerate() {
                            for (i, c) in cols.clone().enumerate() {
                                tile[j][i] = data[base + c * src_stride + r];
                            }
                        }
                    }
                    for (j, r) in rows.clone().enumerate() {
                        let at = (o * rows_out + r) * cols_out + c0;
                        // SAFETY: rows `rows` of matrix `o` are this task's
                        // alone.
                        let dst = unsafe { out_buf.part(at, cols.len()) };
                        write_all(dst, &tile[j][..cols.len()]);
                    }
                }
            });
    } else {
        return None;
    }
    // SAFETY: every output element was written above (each row once).
    unsafe { out.set_len(total) };
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Every view the layers make, against candle's own copy, bit for bit.
    #[test]
    fn strided_views_copy_as_candle_copies_them() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (3, 37, 24, 40), &dev).unwrap();
        let views = [
            // A head split: runs of 40.
            x.transpose(1, 2).unwrap(),
            // Transposed keys: the last two dimensions swapped.
            x.transpose(2, 3).unwrap(),
            // Image ↔ tokens: (b, c, hw) → (b, hw, c).
            x.reshape((3, 37, 960)).unwrap().transpose(1, 2).unwrap(),
            // A narrowed view (an offset start) transposed.
            x.narrow(1, 3, 30).unwrap().transpose(2, 3).unwrap(),
            x.narrow(3, 1, 33).unwrap(),
        ];
        for (i, view) in views.iter().enumerate() {
            assert!(!view.is_contiguous(), "view {i}");
            assert!(
                view.elem_count() >= MIN_PARALLEL,
                "view {i} is copied by candle"
            );
            let ours = contiguous(view).unwrap();
            assert!(ours.is_contiguous());
            assert_eq!(ours.dims(), view.dims());
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(flat(&ours), flat(&view.contiguous().unwrap()), "view {i}");
        }
        // A layout neither case covers falls back to candle's copy.
        let odd = x.permute((3, 1, 0, 2)).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(
            flat(&contiguous(&odd).unwrap()),
            flat(&odd.contiguous().unwrap())
        );
    }
}
