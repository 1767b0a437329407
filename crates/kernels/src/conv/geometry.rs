//! A convolution's sizes for one image, and the unfolding of its input
//! rows into the matrix the direct kernel multiplies (im2col).

/// Sizes of one convolution, for one image.
pub(super) struct Geometry {
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub padding: usize,
    pub c_out: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl Geometry {
    pub fn new(
        (c_in, h, w): (usize, usize, usize),
        (kh, kw): (usize, usize),
        stride: usize,
        padding: usize,
        c_out: usize,
    ) -> candle_core::Result<Self> {
        if h + 2 * padding < kh || w + 2 * padding < kw || stride == 0 {
            candle_core::bail!("conv2d: a {kh}×{kw} kernel does not fit a {h}×{w} input");
        }
        Ok(Self {
            c_in,
            h,
            w,
            kh,
            kw,
            stride,
            padding,
            c_out,
            out_h: (h + 2 * padding - kh) / stride + 1,
            out_w: (w + 2 * padding - kw) / stride + 1,
        })
    }

    /// Rows of the unfolded matrix: one per weight column (`c_in·kh·kw`).
    pub fn depth(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// A 1×1, stride-1, unpadded convolution reads its input as it lies.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding == 0
    }

    /// Unfolds output rows `rows` of one image into `col`
    /// (`depth × rows.len()·out_w`, row-major, zeros where the window
    /// overhangs the padding).
    pub fn unfold(&self, image: &[f32], rows: std::ops::Range<usize>, col: &mut [f32]) {
        let n = rows.len() * self.out_w;
        for (index, dst) in col.chunks_exact_mut(n).take(self.depth()).enumerate() {
            self.unfold_one(image, rows.clone(), index, dst);
        }
    }

    /// Row `index` (input channel, kernel row, kernel column) of the
    /// unfolded matrix for output rows `rows`, into `dst`
    /// (`rows.len()·out_w` values).
    pub fn unfold_one(
        &self,
        image: &[f32],
        rows: std::ops::Range<usize>,
        index: usize,
        dst: &mut [f32],
    ) {
        let (c, i, j) = (
            index / (self.kh * self.kw),
            index / self.kw % self.kh,
            index % self.kw,
        );
        let plane = &image[c * self.h * self.w..(c + 1) * self.h * self.w];
        for (r, y) in rows.enumerate() {
            let out = &mut dst[r * self.out_w..(r + 1) * self.out_w];
            let iy = (y * self.stride + i) as isize - self.padding as isize;
            if iy < 0 || iy >= self.h as isize {
                out.fill(0.0);
                continue;
            }
            let src = &plane[iy as usize * self.w..(iy as usize + 1) * self.w];
            self.unfold_row(src, j, out);
        }
    }

    /// One output row's inputs for kernel column `j`: a shifted copy of the
    /// input row (every `stride`-th element), zeros off its ends.
    fn unfold_row(&self, src: &[f32], j: usize, out: &mut [f32]) {
        let offset = j as isize - self.padding as isize;
        // Output columns whose input column x·stride + offset is inside the row.
        let first = if offset < 0 {
            ((-offset) as usize).div_ceil(self.stride)
        } else {
            0
        }
        .min(self.out_w);
        let limit = self.w as isize - offset; // x·stride < limit
        let end = if limit <= 0 {
            first
        } else {
            ((limit as usize).div_ceil(self.stride)).clamp(first, self.out_w)
        };
        out[..first].fill(0.0);
        out[end..].fill(0.0);
        let start = (first * self.stride) as isize + offset;
        if self.stride == 1 {
            out[first..end].copy_from_slice(&src[start as usize..start as usize + end - first]);
        } else {
            for (k, o) in out[first..end].iter_mut().enumerate() {
                *o = src[start as usize + k * self.stride];
            }
        }
    }
}
