//! The gemm crate's f32 matrix product behind bounds-checked operands: the
//! one place its raw-pointer interface is called.

use crate::buffers::OutBlock;

/// A row-major operand: `rows` rows of `cols` floats, `stride` apart.
#[derive(Clone, Copy)]
pub(crate) struct Matrix<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    stride: usize,
}

impl<'a> Matrix<'a> {
    /// Checks that `data` holds the rows described.
    pub(crate) fn new(data: &'a [f32], rows: usize, cols: usize, stride: usize) -> Self {
        let extent = if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * stride + cols
        };
        assert!(
            extent <= data.len() && (cols <= stride || rows <= 1),
            "a {rows}×{cols} operand (stride {stride}) over {} floats",
            data.len()
        );
        Self {
            data,
            rows,
            cols,
            stride,
        }
    }
}

/// `dst = dst·accumulate + a·b`, on the rayon pool or this thread as
/// `parallelism` says.
pub(crate) fn gemm(
    dst: OutBlock<'_>,
    a: Matrix<'_>,
    b: Matrix<'_>,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    assert_eq!(a.cols, b.rows, "f32 gemm: inner dimensions differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    let out = dst.ptr_for(m, n);
    // SAFETY: every operand was checked to hold the rows read or written
    // (Matrix::new, OutBlock::ptr_for); the block is this product's alone
    // and initialised where accumulated into (OutBlock's contract).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            dst.stride() as isize,
            accumulate,
            a.data.as_ptr(),
            1,
            a.stride as isize,
            b.data.as_ptr(),
            1,
            b.stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}
