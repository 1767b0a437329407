//! The convolution on AMX tiles: every kernel tap multiplies a shifted view
//! of one NHWC bf16 copy of the input (`bf16_gemm::implicit`), so the input
//! is converted once (its own size) instead of unfolded (`kh·kw` times its
//! size, written and packed on every call). Blocks of 32 output pixels × 32
//! output channels are summed over every tap and channel in the tile
//! registers and written once, transposed into the NCHW output with the
//! bias added.
//!
//! Output rows are cut into groups of 16 pixels (one tile); a row whose
//! width is not a multiple of 16 ends in a group that overlaps the one
//! before it (those pixels are computed twice and written twice, equal).
//! Rows narrower than 16 pixels (SD's 8×8 level at 512²) are read as one
//! flat run over the padded grid instead, where a stride-1 kernel's
//! consecutive output pixels stay one input pixel apart even across rows:
//! groups of 16 consecutive grid pixels, the ones in the padding columns
//! computed and dropped. Narrow strided layers stay with im2col.

use rayon::prelude::*;

use super::geometry::Geometry;
use crate::bf16_gemm::implicit::{
    self, ConvTaps, NhwcPairs, TapProducts, BLOCK_CHANNELS, BLOCK_PIXELS, GROUP_PIXELS,
};
use crate::bf16_gemm::transpose_16x16;
use crate::buffers::SharedOut;

/// Output pixels per task: a task's share of the input copy (its rows and
/// the taps' reach) stays in L2 across every panel of weights, and each
/// panel across the task's blocks.
const TASK_PIXELS: usize = 512;

/// Whether the tile kernel takes this layer.
pub(super) fn suits(g: &Geometry) -> bool {
    let flat = g.stride == 1 && g.kw <= GROUP_PIXELS;
    (g.out_w >= GROUP_PIXELS || flat) && implicit::usable()
}

/// A tile's 16 output pixels.
#[derive(Clone, Copy)]
enum Group {
    /// Pixels `x..x + 16` of output row `y`.
    Row { y: usize, x: usize },
    /// Pixels `first..first + 16` of the padded grid (rows the padded
    /// width apart; those in the padding columns or past the last row are
    /// dropped).
    Flat { first: usize },
}

/// The convolution of `batch` images through `weights` packed as taps.
pub(super) fn convolve(
    input: &[f32],
    batch: usize,
    weights: &ConvTaps,
    bias: Option<&[f32]>,
    g: &Geometry,
) -> Vec<f32> {
    assert_eq!(
        (
            weights.out_channels(),
            weights.in_channels(),
            weights.taps()
        ),
        (g.c_out, g.c_in, g.kh * g.kw),
        "tap tiles: weights do not fit the layer"
    );
    let copy = NhwcPairs::new(input, (batch, g.c_in, g.h, g.w), g.padding);
    let total = batch * g.c_out * g.out_h * g.out_w;
    let mut out = Vec::new();
    let out_buf = SharedOut::spare(&mut out, total);
    let threads = rayon::current_num_threads().max(1);
    if g.out_w >= GROUP_PIXELS {
        // Each output row's groups of 16 pixels (the last one shifted left
        // to end at the row's end); tasks of whole rows.
        let row_groups: Vec<usize> = (0..g.out_w.div_ceil(GROUP_PIXELS))
            .map(|k| (k * GROUP_PIXELS).min(g.out_w - GROUP_PIXELS))
            .collect();
        let rows_for_size = (TASK_PIXELS / g.out_w).max(1);
        let rows_for_threads = (batch * g.out_h).div_ceil(2 * threads).max(1);
        let rows_per_task = rows_for_size.min(rows_for_threads).min(g.out_h);
        let tasks_per_image = g.out_h.div_ceil(rows_per_task);
        let task_groups = |task: usize| {
            let (image, chunk) = (task / tasks_per_image, task % tasks_per_image);
            let rows = chunk * rows_per_task..((chunk + 1) * rows_per_task).min(g.out_h);
            let groups = rows
                .flat_map(|y| row_groups.iter().map(move |&x| Group::Row { y, x }))
                .collect();
            (image, groups)
        };
        run_blocks(
            &copy,
            weights,
            bias,
            g,
            batch * tasks_per_image,
            task_groups,
            out_buf,
        );
    } else {
        // Narrow stride-1 layers: runs of the padded grid.
        let grid = g.out_h * copy.columns();
        let groups_per_image = grid.div_ceil(GROUP_PIXELS);
        let groups_per_task = (TASK_PIXELS / GROUP_PIXELS)
            .min((batch * groups_per_image).div_ceil(2 * threads))
            .max(1);
        let tasks_per_image = groups_per_image.div_ceil(groups_per_task);
        let task_groups = |task: usize| {
            let (image, chunk) = (task / tasks_per_image, task % tasks_per_image);
            let first = chunk * groups_per_task;
            let groups = (first..(first + groups_per_task).min(groups_per_image))
                .map(|k| Group::Flat {
                    first: k * GROUP_PIXELS,
                })
                .collect();
            (image, groups)
        };
        run_blocks(
            &copy,
            weights,
            bias,
            g,
            batch * tasks_per_image,
            task_groups,
            out_buf,
        );
    }
    // SAFETY: every output pixel of every channel lies in some group of
    // some task, which wrote it.
    unsafe { out.set_len(total) };
    out
}

/// Runs `tasks` tasks over the rayon pool, task t computing and writing
/// the groups `task_groups(t)` gives (with their image): for every panel of
/// output channels, the groups two at a time as one block. The tasks'
/// groups must reach disjoint output pixels.
fn run_blocks(
    copy: &NhwcPairs,
    weights: &ConvTaps,
    bias: Option<&[f32]>,
    g: &Geometry,
    tasks: usize,
    task_groups: impl Fn(usize) -> (usize, Vec<Group>) + Sync,
    out_buf: SharedOut<'_>,
) {
    let taps = copy.tap_offsets(g.kh, g.kw);
    let column_stride = copy.column_stride(g.stride);
    (0..tasks).into_par_iter().for_each(|task| {
        let (image, groups) = task_groups(task);
        let products = TapProducts::start().expect("tap tiles: AMX was usable when chosen");
        let mut block = [0f32; BLOCK_PIXELS * BLOCK_CHANNELS];
        let mut by_channel = [[0f32; GROUP_PIXELS]; GROUP_PIXELS];
        let start = |group: &Group| match *group {
            Group::Row { y, x } => copy.pixel(image, y * g.stride, x * g.stride),
            Group::Flat { first } => copy.pixel(image, 0, 0) + first * column_stride,
        };
        for panel in 0..weights.panels() {
            let channels = panel * BLOCK_CHANNELS..((panel + 1) * BLOCK_CHANNELS).min(g.c_out);
            for pair in groups.chunks(2) {
                // A lone last group is computed twice, written once.
                let second = pair.last().unwrap_or(&pair[0]);
                products.block(
                    copy,
                    weights,
                    panel,
                    [start(&pair[0]), start(second)],
                    (&taps, column_stride),
                    &mut block,
                );
                let at = Place {
                    image,
                    channels: channels.clone(),
                    grid_w: copy.columns(),
                };
                // SAFETY: this task's groups' pixels are its alone (the
                // callers' split), and its blocks reach them one after
                // another.
                unsafe { write_block(&block, pair, &at, g, bias, out_buf, &mut by_channel) };
            }
        }
    });
}

/// Which output channels of which image a block holds, and the padded
/// grid's width (for flat groups).
struct Place {
    image: usize,
    channels: std::ops::Range<usize>,
    grid_w: usize,
}

/// Writes a block's pixels (`pair`: its one or two groups) into the NCHW
/// output with the bias added: a row group's 16 pixels per channel through
/// a transpose, a flat group's pixel by pixel. Not inlined: profiles then
/// show it apart from the products.
///
/// # Safety
/// The output pixels of `pair` in `at`'s channels and image are the
/// caller's alone while it runs.
#[inline(never)]
unsafe fn write_block(
    block: &[f32; BLOCK_PIXELS * BLOCK_CHANNELS],
    pair: &[Group],
    at: &Place,
    g: &Geometry,
    bias: Option<&[f32]>,
    out_buf: SharedOut<'_>,
    by_channel: &mut [[f32; GROUP_PIXELS]; GROUP_PIXELS],
) {
    let (image, channels) = (at.image, &at.channels);
    let out_px = g.out_h * g.out_w;
    let offset = |c: usize, y: usize, x: usize| (image * g.c_out + c) * out_px + y * g.out_w + x;
    let add = |c: usize| bias.map_or(0.0, |bias| bias[c]);
    for (half, group) in pair.iter().enumerate() {
        let pixels = &block[half * GROUP_PIXELS * BLOCK_CHANNELS..];
        match *group {
            Group::Row { y, x } => {
                // Channel by channel, 16 at a time through a transpose
                // (each channel's 16 pixels then one vector).
                for j0 in (0..channels.len()).step_by(GROUP_PIXELS) {
                    let whole = j0 + GROUP_PIXELS <= channels.len();
                    if whole {
                        transpose_16x16(&pixels[j0..], BLOCK_CHANNELS, by_channel);
                    }
                    for j in j0..(j0 + GROUP_PIXELS).min(channels.len()) {
                        let c = channels.start + j;
                        // SAFETY: these pixels are the caller's alone (the
                        // function's contract).
                        let dst = unsafe { out_buf.part(offset(c, y, x), GROUP_PIXELS) };
                        if whole {
                            for (d, &value) in dst.iter_mut().zip(&by_channel[j - j0]) {
                                d.write(value + add(c));
                            }
                            continue;
                        }
                        let column = pixels[j..].iter().step_by(BLOCK_CHANNELS);
                        for (d, &value) in dst.iter_mut().zip(column) {
                            d.write(value + add(c));
                        }
                    }
                }
            }
            Group::Flat { first } => {
                for r in 0..GROUP_PIXELS {
                    let (y, x) = ((first + r) / at.grid_w, (first + r) % at.grid_w);
                    if y >= g.out_h || x >= g.out_w {
                        continue;
                    }
                    let values = &pixels[r * BLOCK_CHANNELS..];
                    for (j, c) in channels.clone().enumerate() {
                        // SAFETY: as above.
                        let dst = unsafe { out_buf.part(offset(c, y, x), 1) };
                        dst[0].write(values[j] + add(c));
                    }
                }
            }
        }
    }
}
