//! Scaled dot-product attention with bf16 matrix products, for
//! `[engine] precision = "bf16"`.
//!
//! Per head, K^T and V are packed once; tasks of (head, block of query rows)
//! are spread over the rayon pool. Each computes its scores into a buffer
//! it keeps, exponentiates them as it packs them for the value product
//! (the row sums kept, not applied), multiplies by V and divides its few
//! output columns by the sums — two passes less over the scores than
//! normalising them in place and packing them after. Scores, exponentials
//! and sums stay f32; only the products' operands are rounded to bf16.

use std::cell::RefCell;

use candle_core::Tensor;
use rayon::prelude::*;

use crate::bf16_gemm::{gemm_packed_b, gemm_prepacked, PackedA, PackedB};
use crate::cpu_buffers::{with_f32, SharedOut};
use crate::softmax::{exp_shifted, max_of};

/// Query rows per task: 64 rows of scores against 4096 keys (SD at 512²)
/// are 1 MiB, about one core's L2, through the three passes over them.
const ROWS: usize = 64;

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// softmax(q·kᵀ·scale)·v for (batch·heads, tokens, head_dim) operands on the
/// CPU in f32; `kt` is k transposed, (batch·heads, head_dim, keys).
pub fn attention(q: &Tensor, kt: &Tensor, v: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    let (heads, nq, d) = q.dims3()?;
    let nk = v.dim(1)?;
    let keys: Vec<PackedB> = with_f32(kt, "attention keys", |kt| {
        (0..heads)
            .into_par_iter()
            .map(|h| PackedB::from_rows(&kt[h * d * nk..(h + 1) * d * nk], d, nk, nk))
            .collect()
    })?;
    let values: Vec<PackedB> = with_f32(v, "attention values", |v| {
        (0..heads)
            .into_par_iter()
            .map(|h| PackedB::from_rows(&v[h * nk * d..(h + 1) * nk * d], nk, d, d))
            .collect()
    })?;
    let mut out = vec![0f32; heads * nq * d];
    let shared = SharedOut::new(&mut out);
    with_f32(&(q * scale)?, "attention queries", |q| {
        let blocks = nq.div_ceil(ROWS);
        (0..heads * blocks).into_par_iter().for_each(|task| {
            let (h, block) = (task / blocks, task % blocks);
            let start = block * ROWS;
            let len = ROWS.min(nq - start);
            let first = (h * nq + start) * d;
            SCORES.with(|scores| {
                let mut scores = scores.borrow_mut();
                if scores.len() < len * nk {
                    scores.resize(len * nk, 0.0);
                }
                let scores = &mut scores[..len * nk];
                // SAFETY: `scores` holds len rows of nk floats; this task's
                // output rows (len × d at `first`) are its own; the kernel is
                // available (the caller runs under bf16_gemm::scoped).
                unsafe {
                    gemm_packed_b(
                        &q[first..first + len * d],
                        len,
                        d,
                        &keys[h],
                        scores.as_mut_ptr(),
                        nk,
                        false,
                    );
                    let maxes: Vec<f32> = scores.chunks(nk).map(max_of).collect();
                    let mut sums = vec![0f32; len];
                    // The exponentials are made as they are packed for the
                    // value product: never written back as f32 scores.
                    let probabilities = PackedA::from_rows_with(len, nk, |row, columns, out| {
                        let src = &scores[row * nk..][columns];
                        sums[row] += exp_shifted(src, maxes[row], out);
                    });
                    let dst = shared.at(first);
                    gemm_prepacked(&probabilities, &values[h], dst, d, false);
                    let rows = std::slice::from_raw_parts_mut(dst, len * d);
                    for (row, sum) in rows.chunks_mut(d).zip(&sums) {
                        let inverse = 1.0 / sum;
                        row.iter_mut().for_each(|x| *x *= inverse);
                    }
                }
            });
        });
    })?;
    Tensor::from_vec(out, (heads, nq, d), &candle_core::Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn stays_close_to_f32_attention() {
        if !crate::bf16_gemm::available() {
            return;
        }
        let dev = Device::Cpu;
        // Ragged query blocks (600 = 9·64 + 24) and head_dim under a panel.
        let q = Tensor::randn(0f32, 1., (3, 600, 40), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (3, 300, 40), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (3, 300, 40), &dev).unwrap();
        let kt = k.t().unwrap().contiguous().unwrap();
        let scale = 40f64.powf(-0.5);
        let ours = attention(&q, &kt, &v, scale).unwrap();
        let scores = (q.matmul(&kt).unwrap() * scale).unwrap();
        let exact = candle_nn::ops::softmax_last_dim(&scores)
            .unwrap()
            .matmul(&v)
            .unwrap();
        let err = crate::relative_error(&ours, &exact).unwrap();
        assert!(err < 2e-2 && err > 1e-6, "{err}");
    }
}
