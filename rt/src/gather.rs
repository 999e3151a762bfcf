//! Gather along one axis as a step of the executor (the JIT's and
//! ahead-of-time code's), where it once ran through kiln's interpreter:
//! an embedding lookup or a row selection is a loop of row copies.
//!
//! `out[o, k, r] = data[o, idx(k), r]` over `o < outer`, `k < count`,
//! `r < inner` (elements of `elem_bytes` bytes), with `idx(k)` the k-th
//! index (i32 or i64), negative ones counting from the end of the axis of
//! `len`; an index outside the axis is an error of the run, worded as the
//! reference's.

/// One gather's geometry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gather {
    /// Bytes of one element.
    pub elem_bytes: usize,
    /// Product of the dims before the axis.
    pub outer: usize,
    /// The axis's size.
    pub len: usize,
    /// Product of the dims after the axis.
    pub inner: usize,
    /// Number of indices.
    pub count: usize,
    /// The indices are i64 (else i32).
    pub wide: bool,
}

impl Gather {
    /// Index `k`, resolved against the axis.
    ///
    /// # Safety
    /// `indices` must hold `count` indices of the step's type.
    unsafe fn index(&self, indices: *const u8, k: usize) -> Result<usize, String> {
        // SAFETY: the caller's contract; k < count.
        let raw = unsafe {
            if self.wide {
                (indices as *const i64).add(k).read_unaligned()
            } else {
                i64::from((indices as *const i32).add(k).read_unaligned())
            }
        };
        let len = self.len as i64;
        let j = if raw < 0 { raw + len } else { raw };
        if j < 0 || j >= len {
            return Err(format!(
                "index {raw} is out of range for an axis of size {}",
                self.len
            ));
        }
        Ok(j as usize)
    }

    /// Copies the gathered rows into `out`.
    ///
    /// # Safety
    /// `out`, `data` and `indices` must point at buffers of the gather's
    /// shapes and types; `out` must not overlap the others.
    pub unsafe fn run(
        &self,
        out: *mut u8,
        data: *const u8,
        indices: *const u8,
    ) -> Result<(), String> {
        let row = self.inner * self.elem_bytes;
        for k in 0..self.count {
            // SAFETY: the caller's contract.
            let i = unsafe { self.index(indices, k) }?;
            for o in 0..self.outer {
                let src = ((o * self.len + i) * self.inner) * self.elem_bytes;
                let dst = ((o * self.count + k) * self.inner) * self.elem_bytes;
                // SAFETY: i < len and k < count keep both rows in their buffers.
                unsafe { std::ptr::copy_nonoverlapping(data.add(src), out.add(dst), row) };
            }
        }
        Ok(())
    }
}
