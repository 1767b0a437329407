//! The gemm crate's f32 matrix product behind bounds-checked operands: the
//! one place its raw-pointer interface is called.

use crate::buffers::OutBlock;

/// An operand: `rows` rows of `cols` floats, element (i, j) at
/// `data[i·row_stride + j·col_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct Matrix<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Matrix<'a> {
    /// A row-major operand, rows `stride` apart; checks that `data` holds
    /// the rows described.
    pub(crate) fn new(data: &'a [f32], rows: usize, cols: usize, stride: usize) -> Self {
        assert!(
            cols <= stride || rows <= 1,
            "a {rows}×{cols} operand (stride {stride}) overlaps itself"
        );
        Self::checked(data, rows, cols, stride, 1)
    }

    /// The transpose of a row-major `cols × rows` matrix (rows `stride`
    /// apart) read in place: a linear layer's `[out, in]` weights as the
    /// `in × out` right operand.
    pub(crate) fn transposed(data: &'a [f32], rows: usize, cols: usize, stride: usize) -> Self {
        assert!(
            rows <= stride || cols <= 1,
            "a transposed {rows}×{cols} operand (stride {stride}) overlaps itself"
        );
        Self::checked(data, rows, cols, 1, stride)
    }

    fn checked(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Self {
        let extent = if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * row_stride + (cols - 1) * col_stride + 1
        };
        assert!(
            extent <= data.len(),
            "a {rows}×{cols} operand (strides {row_stride}, {col_stride}) over {} floats",
            data.len()
        );
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
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
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}
