//! Scaled dot-product attention on the CPU without a mask, in f32 or, for
//! `[engine] precision = "bf16"`, with bf16 matrix products.
//!
//! Tasks of (head, block of 64 query rows) are spread over the rayon pool.
//! Each computes its scores into a buffer it keeps, exponentiates them (the
//! row sums kept, not applied), multiplies by V straight into its rows of
//! the output and divides those few columns by the sums: no full score
//! matrix, no pass that normalises every score, no copies to stitch chunks
//! together. In bf16, K^T and V are packed once per head and the
//! exponentials are made as they are packed for the value product; scores,
//! exponentials and sums stay f32 either way.

use std::cell::RefCell;

use candle_core::Tensor;
use rayon::prelude::*;

use crate::bf16_gemm::{gemm_packed_b, gemm_prepacked, PackedA, PackedB};
use crate::buffers::{with_f32, OutBlock};
use crate::f32_gemm::{self, Matrix};
use crate::softmax::{exp_rows, exp_shifted, max_of};

/// Query rows per task: 64 rows of scores against 4096 keys (SD at 512²)
/// are 1 MiB, about one core's L2, through the passes over them.
const ROWS: usize = 64;

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The products' operands, per head.
enum Operands<'a> {
    F32 {
        kt: &'a [f32],
        v: &'a [f32],
    },
    Bf16 {
        keys: Vec<PackedB>,
        values: Vec<PackedB>,
    },
}

/// softmax(q·kᵀ·scale)·v for (batch·heads, tokens, head_dim) f32 operands
/// on the CPU; `kt` is k transposed, (batch·heads, head_dim, keys). The
/// products run in bf16 when `bf16` (the kernel must be available). With
/// `causal`, query i attends to keys 0..=i only (CLIP's text encoder; as
/// many queries as keys).
pub fn attention(
    q: &Tensor,
    kt: &Tensor,
    v: &Tensor,
    scale: f64,
    bf16: bool,
    causal: bool,
) -> candle_core::Result<Tensor> {
    let (heads, nq, d) = q.dims3()?;
    let nk = v.dim(1)?;
    if causal && nq != nk {
        candle_core::bail!("causal attention: {nq} queries against {nk} keys");
    }
    with_f32(kt, "attention keys", |kt| {
        with_f32(v, "attention values", |v| {
            let operands = if bf16 {
                Operands::Bf16 {
                    keys: (0..heads)
                        .into_par_iter()
                        .map(|h| PackedB::from_rows(&kt[h * d * nk..][..d * nk], d, nk, nk))
                        .collect(),
                    values: (0..heads)
                        .into_par_iter()
                        .map(|h| PackedB::from_rows(&v[h * nk * d..][..nk * d], nk, d, d))
                        .collect(),
                }
            } else {
                Operands::F32 { kt, v }
            };
            with_f32(&(q * scale)?, "attention queries", |q| {
                attend(q, &operands, (heads, nq, nk, d), causal)
            })?
        })?
    })?
}

/// Masks the keys after each query: −∞ scores, so their exponentials are
/// 0. `first` is the block's first query.
fn mask_after_queries(scores: &mut [f32], nk: usize, first: usize) {
    for (i, row) in scores.chunks_mut(nk).enumerate() {
        row[(first + i + 1).min(nk)..].fill(f32::NEG_INFINITY);
    }
}

fn attend(
    q: &[f32],
    operands: &Operands,
    (heads, nq, nk, d): (usize, usize, usize, usize),
    causal: bool,
) -> candle_core::Result<Tensor> {
    let mut out = vec![0f32; heads * nq * d];
    // Task (head, block of ROWS queries) owns those queries' output rows:
    // consecutive, so the buffer splits into one slice per task.
    let tasks = out
        .par_chunks_mut(nq * d)
        .enumerate()
        .flat_map(|(h, head)| {
            head.par_chunks_mut(ROWS * d)
                .enumerate()
                .map(move |(block, rows)| (h, block, rows))
        });
    tasks.for_each(|(h, block, rows)| {
        let start = block * ROWS;
        let len = ROWS.min(nq - start);
        let first = (h * nq + start) * d;
        let queries = &q[first..first + len * d];
        SCORES.with(|scores| {
            let mut scores = scores.borrow_mut();
            if scores.len() < len * nk {
                scores.resize(len * nk, 0.0);
            }
            let scores = &mut scores[..len * nk];
            let mut sums = vec![0f32; len];
            match operands {
                Operands::F32 { kt, v } => {
                    // scores (len × nk) = queries (len × d) · K_hᵀ (d × nk).
                    f32_gemm::gemm(
                        OutBlock::of_slice(scores, len, nk, nk),
                        Matrix::new(queries, len, d, d),
                        Matrix::new(&kt[h * d * nk..], d, nk, nk),
                        false,
                        gemm::Parallelism::None,
                    );
                    if causal {
                        mask_after_queries(scores, nk, start);
                    }
                    exp_rows(scores, nk, &mut sums);
                    // rows (len × d) = exp(scores) (len × nk) · V_h (nk × d).
                    f32_gemm::gemm(
                        OutBlock::of_slice(rows, len, d, d),
                        Matrix::new(scores, len, nk, nk),
                        Matrix::new(&v[h * nk * d..], nk, d, d),
                        false,
                        gemm::Parallelism::None,
                    );
                }
                Operands::Bf16 { keys, values } => {
                    let scores_out = OutBlock::of_slice(scores, len, nk, nk);
                    gemm_packed_b(queries, len, d, &keys[h], scores_out, false);
                    if causal {
                        mask_after_queries(scores, nk, start);
                    }
                    let maxes: Vec<f32> = scores.chunks(nk).map(max_of).collect();
                    // The exponentials are made as they are packed for the
                    // value product: never written back as f32 scores.
                    let probabilities = PackedA::from_rows_with(len, nk, |row, columns, out| {
                        let src = &scores[row * nk..][columns];
                        sums[row] += exp_shifted(src, maxes[row], out);
                    });
                    let rows_out = OutBlock::of_slice(rows, len, d, d);
                    gemm_prepacked(&probabilities, &values[h], rows_out, false);
                }
            }
            for (row, sum) in rows.chunks_mut(d).zip(&sums) {
                let inverse = 1.0 / sum;
                row.iter_mut().for_each(|x| *x *= inverse);
            }
        });
    });
    Tensor::from_vec(out, (heads, nq, d), &candle_core::Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn exact(q: &Tensor, kt: &Tensor, v: &Tensor, scale: f64) -> Tensor {
        let scores = (q.matmul(kt).unwrap() * scale).unwrap();
        candle_nn::ops::softmax_last_dim(&scores)
            .unwrap()
            .matmul(v)
            .unwrap()
    }

    #[test]
    fn matches_candle_in_f32_and_stays_close_in_bf16() {
        let dev = Device::Cpu;
        // Ragged query blocks (600 = 9·64 + 24), head_dim under a bf16
        // panel, few keys (cross-attention's 77) and many.
        for (nq, nk) in [(600, 300), (130, 77), (64, 1000)] {
            let q = Tensor::randn(0f32, 1., (3, nq, 40), &dev).unwrap();
            let k = Tensor::randn(0f32, 1., (3, nk, 40), &dev).unwrap();
            let v = Tensor::randn(0f32, 1., (3, nk, 40), &dev).unwrap();
            let kt = k.t().unwrap().contiguous().unwrap();
            let scale = 40f64.powf(-0.5);
            let expected = exact(&q, &kt, &v, scale);
            let ours = attention(&q, &kt, &v, scale, false, false).unwrap();
            let err = crate::relative_error(&ours, &expected).unwrap();
            assert!(err < 1e-5, "f32 {nq}×{nk}: {err}");
            if crate::bf16_gemm::available() {
                let ours = attention(&q, &kt, &v, scale, true, false).unwrap();
                let err = crate::relative_error(&ours, &expected).unwrap();
                assert!(err < 2e-2 && err > 1e-6, "bf16 {nq}×{nk}: {err}");
            } else {
                cyberimage_testkit::skipped("bf16 half: this CPU has no AVX-512 BF16");
            }
        }
    }

    /// Causal attention against candle with CLIP's additive −∞ triangle,
    /// across query blocks (150 = 2·64 + 22 rows).
    #[test]
    fn causal_matches_the_masked_product() {
        let dev = Device::Cpu;
        let (n, d) = (150, 64);
        let q = Tensor::randn(0f32, 1., (4, n, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (4, n, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (4, n, d), &dev).unwrap();
        let kt = k.t().unwrap().contiguous().unwrap();
        let triangle: Vec<f32> = (0..n)
            .flat_map(|i| (0..n).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(triangle, (n, n), &dev).unwrap();
        let scale = (d as f64).powf(-0.5);
        let scores = (q.matmul(&kt).unwrap() * scale)
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        let expected = candle_nn::ops::softmax_last_dim(&scores)
            .unwrap()
            .matmul(&v)
            .unwrap();
        let ours = attention(&q, &kt, &v, scale, false, true).unwrap();
        let err = crate::relative_error(&ours, &expected).unwrap();
        assert!(err < 1e-5, "f32: {err}");
        // Not the unmasked answer.
        let unmasked = attention(&q, &kt, &v, scale, false, false).unwrap();
        assert!(crate::relative_error(&unmasked, &expected).unwrap() > 1e-2);
        if crate::bf16_gemm::available() {
            let ours = attention(&q, &kt, &v, scale, true, true).unwrap();
            let err = crate::relative_error(&ours, &expected).unwrap();
            assert!(err < 2e-2 && err > 1e-6, "bf16: {err}");
        } else {
            cyberimage_testkit::skipped("bf16 half: this CPU has no AVX-512 BF16");
        }
        assert!(attention(&q.narrow(1, 0, 10).unwrap(), &kt, &v, scale, false, true).is_err());
    }
}
