//! An output buffer written by parallel tasks, each to its own rows.

/// A raw pointer into an output buffer, shared by tasks that write
/// disjoint parts of it (which the caller guarantees).
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(*mut f32);

// SAFETY: only the address crosses threads; every task writes a part of the
// buffer no other task touches, and the buffer outlives the tasks.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(crate) fn new(buffer: &mut [f32]) -> Self {
        Self(buffer.as_mut_ptr())
    }

    /// Through a method, so closures capture the whole (Sync) wrapper.
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}
