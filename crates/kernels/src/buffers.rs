//! The CPU buffers our kernels read and write: a contiguous f32 operand out
//! of candle's storage, and output buffers that parallel tasks write
//! disjoint, bounds-checked parts of.

use std::marker::PhantomData;
use std::mem::MaybeUninit;

use candle_core::{CpuStorage, Layout, Storage, Tensor};

/// The f32 elements of a contiguous operand (`what` names it in the error).
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: operand not contiguous"),
    }
}

/// Lends `f` the f32 elements of `tensor` (a CPU tensor, made contiguous
/// first if it is not) without copying them out.
pub(crate) fn with_f32<R>(
    tensor: &Tensor,
    what: &str,
    f: impl FnOnce(&[f32]) -> R,
) -> candle_core::Result<R> {
    let tensor = tensor.contiguous()?;
    let (storage, layout) = tensor.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("{what}: not on the CPU");
    };
    Ok(f(contiguous_f32(cpu, layout, what)?))
}

/// The bytes of `values`, to read f32s straight into (in this CPU's byte
/// order) without a staging copy.
pub fn f32_bytes_mut(values: &mut [f32]) -> &mut [u8] {
    let len = std::mem::size_of_val(values);
    // SAFETY: the same initialised memory, borrowed mutably for as long;
    // u8 has no alignment requirement and every bit pattern written
    // through it is a valid f32.
    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), len) }
}

/// An output buffer that parallel tasks fill in parts no other task
/// touches, where those parts interleave (a convolution tile writes a few
/// columns of every channel's rows) so that the buffer cannot be split into
/// disjoint slices. Made over a `Vec`'s spare capacity (the output is
/// written once, so zeroing it first would be a wasted pass over memory) or
/// over initialised floats; every part handed out is bounds-checked.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut<'a> {
    ptr: *mut MaybeUninit<f32>,
    len: usize,
    _buffer: PhantomData<&'a mut [MaybeUninit<f32>]>,
}

// SAFETY: only the address crosses threads; the methods that hand out
// memory are unsafe and require that no two tasks are given the same
// elements, and the buffer is borrowed for the wrapper's lifetime.
unsafe impl Send for SharedOut<'_> {}
unsafe impl Sync for SharedOut<'_> {}

impl<'a> SharedOut<'a> {
    /// The first `len` floats of `out`'s spare capacity (`out` is emptied
    /// and grown first). Once every element is written, `out.set_len(len)`.
    pub(crate) fn spare(out: &'a mut Vec<f32>, len: usize) -> Self {
        out.clear();
        out.reserve(len);
        let spare = &mut out.spare_capacity_mut()[..len];
        Self {
            ptr: spare.as_mut_ptr(),
            len,
            _buffer: PhantomData,
        }
    }

    /// Floats that are already initialised (pre-filled with a bias).
    pub(crate) fn init(out: &'a mut [f32]) -> Self {
        Self {
            ptr: out.as_mut_ptr().cast(),
            len: out.len(),
            _buffer: PhantomData,
        }
    }

    /// Elements `offset..offset + len`, to be written.
    ///
    /// # Safety
    /// No other live reference, task or [`OutBlock`] may reach these
    /// elements while the slice is alive.
    pub(crate) unsafe fn part(self, offset: usize, len: usize) -> &'a mut [MaybeUninit<f32>] {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "output part {offset}+{len} outside a buffer of {}",
            self.len
        );
        // SAFETY: inside the buffer (checked above), exclusive by the
        // caller's guarantee; MaybeUninit has no validity requirement.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset), len) }
    }

    /// `rows` rows of `cols` floats, `stride` apart, from `offset`: the
    /// destination of one matrix product.
    ///
    /// # Safety
    /// While the block is alive no other task, block or reference may reach
    /// its elements, and those a product accumulates into (rather than
    /// overwrites) must be initialised.
    pub(crate) unsafe fn block(
        self,
        offset: usize,
        rows: usize,
        cols: usize,
        stride: usize,
    ) -> OutBlock<'a> {
        assert!(cols <= stride || rows <= 1, "output rows overlap");
        let extent = if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * stride + cols
        };
        assert!(
            offset
                .checked_add(extent)
                .is_some_and(|end| end <= self.len),
            "output block {rows}×{cols} (stride {stride}) at {offset} outside a buffer of {}",
            self.len
        );
        OutBlock {
            // In bounds: checked above.
            ptr: self.ptr.wrapping_add(offset).cast(),
            rows,
            cols,
            stride,
            _buffer: PhantomData,
        }
    }
}

/// A checked destination of a matrix product: `rows` rows of `cols`
/// floats, `stride` apart, inside a buffer that outlives it, reached by
/// nothing else while it lives (see [`SharedOut::block`]).
#[derive(Clone, Copy)]
pub(crate) struct OutBlock<'a> {
    ptr: *mut f32,
    rows: usize,
    cols: usize,
    stride: usize,
    _buffer: PhantomData<&'a mut [f32]>,
}

impl<'a> OutBlock<'a> {
    /// Over a whole slice the caller owns: safe to write, as nothing else
    /// can reach it.
    pub(crate) fn of_slice(out: &'a mut [f32], rows: usize, cols: usize, stride: usize) -> Self {
        // SAFETY: `out` is borrowed exclusively for the block's lifetime,
        // and initialised.
        unsafe { SharedOut::init(out).block(0, rows, cols, stride) }
    }

    /// The first element, for a kernel writing `rows × cols` of the block
    /// (checked to fit).
    pub(crate) fn ptr_for(&self, rows: usize, cols: usize) -> *mut f32 {
        assert!(
            rows <= self.rows && cols <= self.cols,
            "a {rows}×{cols} product into a {}×{} block",
            self.rows,
            self.cols
        );
        self.ptr
    }

    pub(crate) fn stride(&self) -> usize {
        self.stride
    }
}

/// Writes `src` into `dst` (same length).
pub(crate) fn write_all(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "write_all: lengths differ");
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
}

/// Zero-fills `part` and hands it out as floats, for code that writes
/// through `&mut [f32]`: used on a task's own small output range just
/// before the task overwrites it, while it is in cache.
pub(crate) fn zeroed(part: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    part.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was just initialised; same layout.
    unsafe { &mut *(part as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// One cache line of u32s.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Line([u32; 16]);

/// A zero-initialised u32 buffer that starts on a cache line: a packed
/// operand whose tile rows (64 bytes) each fill one line instead of two.
#[derive(Debug, Default)]
pub(crate) struct LineBuffer {
    lines: Vec<Line>,
    len: usize,
}

impl LineBuffer {
    pub(crate) fn zeroed(len: usize) -> Self {
        let mut buffer = Self::default();
        buffer.reset_zeroed(len);
        buffer
    }

    /// Makes it `len` zeros, keeping the allocation where it is enough.
    pub(crate) fn reset_zeroed(&mut self, len: usize) {
        self.lines.clear();
        self.lines.resize(len.div_ceil(16), Line([0; 16]));
        self.len = len;
    }

    pub(crate) fn as_slice(&self) -> &[u32] {
        // SAFETY: `lines` holds at least `len` initialised u32s
        // (reset_zeroed), contiguous since Line is 16 u32s with no padding
        // (repr(C), 64 bytes).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<u32>(), self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u32] {
        // SAFETY: as in as_slice, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<u32>(), self.len) }
    }
}
