//! Convolutions as tile products read straight from the input (an
//! "implicit" GEMM, on AMX only): the input is copied once into NHWC bf16
//! with zero borders, where the channels of one pixel are consecutive, so
//! a tile row (16 channel pairs of one pixel) is 64 bytes of that copy and
//! the 16 rows of a tile (16 output pixels along a row) lie a fixed stride
//! apart. Each kernel tap is then a shifted view of the same copy, and no
//! unfolded matrix is ever written: the im2col kernel packed `c_in·kh·kw`
//! values per output pixel on every call, which on AMX cost more than the
//! product itself (the tiles multiply faster than the unfolding writes).
//!
//! Layouts, in u32s holding two bf16 values consecutive along the
//! channels:
//! - [`NhwcPairs`]: `[image][padded row][padded column][pair]`, `pairs`
//!   per pixel (the channels rounded up to a multiple of 32, zeros after);
//! - [`ConvTaps`]: per panel of 32 output channels, `[tap][pair][column]`
//!   (taps in the weights' `kh·kw` order), zero columns past `c_out`.

use rayon::prelude::*;

use super::amx::{self, Tiles, PAIRS_PER_TILE, ROWS};
use super::pack::{pack_consecutive, pack_pair_rows, transpose_16x16};
use super::{pair, NR};
use crate::buffers::LineBuffer;

/// Channels per tile row.
pub(crate) const CHANNELS_PER_TILE: usize = 2 * PAIRS_PER_TILE;
/// Output pixels per block: two tiles of 16 rows.
pub(crate) const BLOCK_PIXELS: usize = ROWS;
/// Output pixels per tile: 16 consecutive ones along an output row.
pub(crate) const GROUP_PIXELS: usize = ROWS / 2;
/// Output channels per block.
pub(crate) const BLOCK_CHANNELS: usize = NR;

/// Zero pixels kept after the last image: a group of 16 output pixels
/// read over the padded grid reaches at most 16 + kw − 1 pixels past the
/// image's end (kernels up to 16 wide).
pub(crate) const SLACK_PIXELS: usize = 32;

/// Stored pairs per pixel for `channels` channels.
fn stored_pairs(channels: usize) -> usize {
    channels.next_multiple_of(CHANNELS_PER_TILE) / 2
}

/// A convolution's weights (`[c_out, c_in, kh, kw]`) packed for tile
/// products over an [`NhwcPairs`] input.
#[derive(Debug)]
pub struct ConvTaps {
    c_out: usize,
    c_in: usize,
    taps: usize,
    pairs: usize,
    data: LineBuffer,
}

impl ConvTaps {
    pub fn new(weights: &[f32], c_out: usize, c_in: usize, kh: usize, kw: usize) -> Self {
        let (taps, pairs) = (kh * kw, stored_pairs(c_in));
        assert_eq!(weights.len(), c_out * c_in * taps, "conv taps: weights");
        let panel_len = taps * pairs * NR;
        let panels = c_out.div_ceil(NR);
        let mut data = LineBuffer::zeroed(panels * panel_len);
        let out = data.as_mut_slice();
        // Zeros stay past c_in (pairs) and past c_out (columns).
        let at = |o: usize, c: usize, t: usize| weights[(o * c_in + c) * taps + t];
        out.par_chunks_mut(panel_len)
            .enumerate()
            .for_each(|(panel, block)| {
                for j in 0..NR.min(c_out - panel * NR) {
                    let o = panel * NR + j;
                    for t in 0..taps {
                        for p in 0..c_in.div_ceil(2) {
                            let hi = if 2 * p + 1 < c_in {
                                at(o, 2 * p + 1, t)
                            } else {
                                0.0
                            };
                            block[(t * pairs + p) * NR + j] = pair(at(o, 2 * p, t), hi);
                        }
                    }
                }
            });
        Self {
            c_out,
            c_in,
            taps,
            pairs,
            data,
        }
    }

    pub fn out_channels(&self) -> usize {
        self.c_out
    }

    pub fn in_channels(&self) -> usize {
        self.c_in
    }

    pub fn taps(&self) -> usize {
        self.taps
    }

    /// Panels of [`BLOCK_CHANNELS`] output channels.
    pub(crate) fn panels(&self) -> usize {
        self.c_out.div_ceil(NR)
    }

    fn panel(&self, panel: usize) -> &[u32] {
        let len = self.taps * self.pairs * NR;
        &self.data.as_slice()[panel * len..(panel + 1) * len]
    }
}

/// Images (`[batch, c, h, w]` f32) copied into NHWC bf16 pairs with
/// `padding` zero pixels on every side.
pub(crate) struct NhwcPairs {
    pairs: usize,
    rows: usize,
    columns: usize,
    data: LineBuffer,
}

impl NhwcPairs {
    pub(crate) fn new(
        input: &[f32],
        (batch, channels, h, w): (usize, usize, usize, usize),
        padding: usize,
    ) -> Self {
        assert_eq!(input.len(), batch * channels * h * w, "nhwc copy: input");
        let pairs = stored_pairs(channels);
        let (rows, columns) = (h + 2 * padding, w + 2 * padding);
        let row_len = columns * pairs;
        let images_len = batch * rows * row_len;
        // Zero pixels after the last image: a flat group (see `tap_tiles`)
        // near the end reads a few pixels past it.
        let mut data = LineBuffer::zeroed(images_len + SLACK_PIXELS * pairs);
        let plane = h * w;
        data.as_mut_slice()[..images_len]
            .par_chunks_mut(row_len)
            .enumerate()
            .for_each(|(index, row)| {
                let (image, y) = (index / rows, index % rows);
                if y < padding || y >= padding + h {
                    return;
                }
                let src = &input[image * channels * plane + (y - padding) * w..];
                copy_row(src, (channels, plane, w), (padding, pairs), row);
            });
        Self {
            pairs,
            rows,
            columns,
            data,
        }
    }

    /// Pixels per padded row.
    pub(crate) fn columns(&self) -> usize {
        self.columns
    }

    /// Where pixel (`y`, `x`) of `image`, in padded coordinates, starts.
    pub(crate) fn pixel(&self, image: usize, y: usize, x: usize) -> usize {
        ((image * self.rows + y) * self.columns + x) * self.pairs
    }

    /// The offsets of a `kh × kw` kernel's taps from the pixel at its top
    /// left, in the weights' tap order.
    pub(crate) fn tap_offsets(&self, kh: usize, kw: usize) -> Vec<usize> {
        (0..kh)
            .flat_map(|i| (0..kw).map(move |j| (i * self.columns + j) * self.pairs))
            .collect()
    }

    /// The distance between horizontally adjacent pixels `stride` apart.
    pub(crate) fn column_stride(&self, stride: usize) -> usize {
        stride * self.pairs
    }
}

/// Tile products on this thread (the tiles configured while it lives).
pub(crate) struct TapProducts {
    tiles: Tiles,
}

impl TapProducts {
    /// `None` where AMX is not usable.
    pub(crate) fn start() -> Option<Self> {
        Tiles::configure().map(|tiles| Self { tiles })
    }

    /// One block of output: `out[r][j]` for output pixels r (16 from
    /// `starts[0]`, 16 from `starts[1]`, `column_stride` apart) and output
    /// channels `panel·32 + j`, summed over every tap and channel.
    pub(crate) fn block(
        &self,
        input: &NhwcPairs,
        weights: &ConvTaps,
        panel: usize,
        starts: [usize; 2],
        (taps, column_stride): (&[usize], usize),
        out: &mut [f32; BLOCK_PIXELS * BLOCK_CHANNELS],
    ) {
        assert_eq!(input.pairs, weights.pairs, "tap products: channels differ");
        assert_eq!(taps.len(), weights.taps, "tap products: taps differ");
        self.tiles.taps_block(
            input.data.as_slice(),
            starts,
            taps,
            column_stride,
            weights.pairs,
            weights.panel(panel),
            out,
        );
    }
}

/// Whether tile products run here.
pub(crate) fn usable() -> bool {
    amx::usable()
}

/// One image row (`src`: channel c's pixels at `src[c·plane..][..w]`) into
/// its padded NHWC row. Not inlined: profiles then show it apart.
#[inline(never)]
fn copy_row(
    src: &[f32],
    (channels, plane, w): (usize, usize, usize),
    (padding, pairs): (usize, usize),
    row: &mut [u32],
) {
    let whole = w / NR * NR;
    let mut by_pair = [[0u32; NR]; PAIRS_PER_TILE];
    let mut by_pixel = [[0u32; PAIRS_PER_TILE]; PAIRS_PER_TILE];
    for c0 in (0..channels).step_by(CHANNELS_PER_TILE) {
        let width = CHANNELS_PER_TILE.min(channels - c0);
        // 32 pixels at a time: each channel pair's row rounded
        // into pairs (one vector op per 16), then 16×16
        // transposes to each pixel's 16 pairs.
        for x0 in (0..whole).step_by(NR) {
            for (q, line) in by_pair.iter_mut().enumerate() {
                let c = c0 + 2 * q;
                if c >= c0 + width {
                    *line = [0; NR];
                    continue;
                }
                let lo = &src[c * plane + x0..][..NR];
                let hi = if c + 1 < c0 + width {
                    &src[(c + 1) * plane + x0..][..NR]
                } else {
                    &[0f32; NR][..]
                };
                pack_pair_rows(lo, hi, line);
            }
            for half in 0..NR / PAIRS_PER_TILE {
                let flat = by_pair.as_flattened();
                transpose_16x16(&flat[half * PAIRS_PER_TILE..], NR, &mut by_pixel);
                for (i, pixel) in by_pixel.iter().enumerate() {
                    let x = x0 + half * PAIRS_PER_TILE + i;
                    let at = (x + padding) * pairs + c0 / 2;
                    row[at..at + PAIRS_PER_TILE].copy_from_slice(pixel);
                }
            }
        }
        // The rest one pixel at a time: its values gathered
        // into a line, then rounded into its pairs.
        let mut values = [0f32; CHANNELS_PER_TILE];
        for x in whole..w {
            for (i, value) in values[..width].iter_mut().enumerate() {
                *value = src[(c0 + i) * plane + x];
            }
            let at = (x + padding) * pairs + c0 / 2;
            pack_consecutive(&values[..width], &mut row[at..at + width.div_ceil(2)]);
        }
    }
}
