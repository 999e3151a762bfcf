//! Direct f32 depthwise convolution of channels-last (NHWC) tensors,
//! vectorised over channels (MobileNet's and EfficientNet's 3x3 and 5x5
//! layers with the activations kept as `[n, h, w, c]`).
//!
//! `conv_depthwise.rs` does the same for NCHW tensors by transposing each
//! block of 8 or 16 channels into a channel-interleaved layout and the
//! results back. In NHWC the input already is that layout, with a block's
//! pixels `c` floats apart instead of `L`: the loops here read the input
//! and write the output in place, with no scratch and no transposes.
//!
//! A vector holds the same pixel of `L = 8` channels (AVX2), so a tap's 8
//! weights are one vector and every lane works whatever the plane's size.
//! Each output row (over all images, `n * oh` of them) is cut into tiles of
//! up to 12 pixels (10 for 5-column taps) as even as can be (112 columns as
//! ten tiles of 11 or 12, 14 as two of 7, 7 as one). For a tile, each full
//! block of channels in turn keeps the tile's accumulators in registers
//! across every tap `(ky, kx)`:
//! - output rows whose taps reach above or below the input skip those tap
//!   rows (their range is worked out once per row when planned), so no tap
//!   row is tested;
//! - tiles whose taps stay within the input's columns run a copy of the
//!   loop with no test at all; the tiles at a row's ends (padding within
//!   the kernel's reach) run a copy that tests the columns of each tap
//!   row, never each multiply-add: with 3 tap columns those outside the
//!   image read a vector of zeros (a select of the address), with 5 they
//!   are skipped (see `x86::pick` for the measurements); padding beyond
//!   the kernel's reach runs the general loop, which tests each load;
//! - for 3 or 5 undilated columns and strides 1 and 2, a tap row's input
//!   columns are loaded once each and multiplied into every pixel they
//!   reach, with the row's weights in registers (`x86::reuse`): about a
//!   third (stride 1) or two thirds (stride 2) of a load per multiply-add
//!   instead of one, on a core (Zen 1) that loads one 256-bit vector per
//!   cycle and multiply-adds one; any other kernel, stride or dilation
//!   runs `x86::generic`, a vector loaded per multiply-add;
//! - the channels past the last whole block of 8 (`c` not a multiple of 8)
//!   run the general loop with masked loads and stores, so nothing past
//!   the buffers is read or written.
//!
//! Where a large plane streams much new input per output row (112x112x96
//! stride 2), each row prefetches the input rows the next one adds, spread
//! over its tiles' blocks; elsewhere the hardware prefetchers keep up.
//!
//! Loads and stores are unaligned: the executor's buffers are only 16-byte
//! aligned (on Zen 1 that costs nothing: buffers 16 bytes past a cache
//! line ran as fast as aligned ones). Weights are packed into
//! `[block][tap][L]` (zero past the last channel) once where they are
//! constant ([`DepthwiseNhwc::prepack`]), else on each run. Work splits
//! across the team in bands of output rows (at least 50,000 multiply-adds
//! a part); after each output row the caller's epilogue sees its pixels
//! while they are still in cache.
//!
//! On the 2-core Zen 1 this was written on (one thread, prepacked, median
//! of runs; GF/s counting every tap): 112x112x32 3x3 ran in about 240 us
//! (30 GF/s), 56x56x144 3x3 in 270 (30), 28x28x192 3x3 in 86 (31),
//! 28x28x240 5x5 in 240 (39), 14x14x672 5x5 in 157 (42), 7x7x1152 5x5 in
//! 55 (51: its padding taps are skipped), 56x56x144 5x5 stride 2 in 190
//! (30); 112x112x96 stride 2, bound by memory, in 380 to 480 (the NCHW
//! kernel with its transposes took about 730 us for 112x112x32 and 850
//! for 56x56x144). The loops run near the core's one 256-bit
//! multiply-add per cycle; two threads take about half the time.
//!
//! A host without AVX2 and FMA (or not x86-64) runs a plain loop over the
//! same packed weights.

// The tiles' plan and the prefetching serve only the x86-64 loops.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use crate::team::Team;
use std::ops::Range;
use std::sync::Arc;

/// Channels per vector.
const L: usize = 8;

/// Multiply-adds below which a part is not worth another thread.
const PART_MACS: usize = 50_000;

/// A planned depthwise convolution of NHWC f32 tensors: input `[n, h, w, c]`,
/// weight `[c, 1, kh, kw]` (ONNX/PyTorch OIHW with one channel per group),
/// output `[n, oh, ow, c]`.
pub struct DepthwiseNhwc {
    /// Images, input rows and columns, channels.
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    /// Output rows and columns.
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    /// Strides and dilations (rows, columns).
    sy: usize,
    sx: usize,
    dy: usize,
    dx: usize,
    /// Top and left padding (the bottom and right follow from the output's
    /// size: taps past the input read zeros).
    top: usize,
    left: usize,
    /// The tiles of an output row.
    tiles: Vec<Tile>,
    /// Per output row, the taps `ky0..ky1` whose input rows lie in the
    /// image (empty where none does).
    taps: Vec<(usize, usize)>,
    /// Weights as `[block][tap][L]`, zero past the last channel.
    packed: Arc<Vec<f32>>,
    prepacked: bool,
    /// Whether the AVX2 kernels run (else the plain loop).
    simd: bool,
    /// Whether each output row prefetches the input the next one reads.
    prefetch: bool,
}

/// One tile of an output row's pixels, the same in every row.
#[derive(Clone, Copy)]
struct Tile {
    /// First output column.
    x0: usize,
    /// The input column under the tile's first tap column (negative in the
    /// left padding).
    ix0: isize,
    /// The tile's input columns, `ix0 + j` for `j` in `0..span`, that lie in
    /// the image: `jlo..jhi` (empty where none does).
    jlo: usize,
    jhi: usize,
    /// The loop for whole blocks of channels, and for the last part-filled
    /// block.
    #[cfg(target_arch = "x86_64")]
    full: x86::Kernel,
    #[cfg(target_arch = "x86_64")]
    tail: x86::Kernel,
}

/// What a tile's loop reads and writes, for one output row.
#[derive(Clone, Copy)]
struct Args {
    /// Channel 0 of the first block at the tile's first tap column (in the
    /// padding, and then never read, on edge tiles) of its first tap row
    /// in the image.
    src: *const f32,
    /// Tap rows in the image, and floats between them.
    rows: usize,
    row: usize,
    /// Floats between neighbouring input columns, and between neighbouring
    /// output pixels (`c`).
    col: usize,
    /// The first block's weights for the first tap row in the image, and
    /// the floats between blocks' weights.
    wts: *const f32,
    wblk: usize,
    /// Blocks of `L` channels to run (each `L` floats on from the last in
    /// the input, output and `L * kh * kw` in the weights).
    blocks: usize,
    /// Channel 0 of the first block of the tile's first output pixel.
    out: *mut f32,
    /// The tile's input columns in the image (see [`Tile`]).
    jlo: usize,
    jhi: usize,
    /// Tap columns, column stride and dilation (for the general loop).
    kw: usize,
    sx: usize,
    dx: usize,
    /// Channels of the (one) block that the masked loop runs.
    nch: usize,
    /// Input lines (16 floats) from `ahead` to prefetch, `per_block`
    /// before each block.
    ahead: *const f32,
    lines: usize,
    per_block: usize,
}

/// A raw pointer that may cross threads (each part touches its own rows).
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: used only to hand disjoint output rows (and the shared, read-only
// input and weights) to the team's threads for the length of a run.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the whole wrapper).
    fn get(self) -> *mut T {
        self.0
    }
}

impl DepthwiseNhwc {
    /// A plan for input `[n, h, w, c]`, a `kernel` of `[kh, kw]` taps per
    /// channel and output `[n, oh, ow, c]` (`out_hw`); padding is
    /// `[top, left, bottom, right]`; stride and dilation are `[h, w]`.
    /// Taps that fall outside the input read zeros, whatever the padding
    /// says, so an output larger than the padding allows is still safe.
    ///
    /// # Panics
    /// If a kernel size, stride or dilation is zero.
    pub fn new(
        input: [usize; 4],
        kernel: [usize; 2],
        out_hw: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 4],
        dilation: [usize; 2],
    ) -> DepthwiseNhwc {
        let [n, h, w, c] = input;
        let [kh, kw] = kernel;
        let [oh, ow] = out_hw;
        let [sy, sx] = stride;
        let [dy, dx] = dilation;
        assert!(
            kh > 0 && kw > 0 && sy > 0 && sx > 0 && dy > 0 && dx > 0,
            "depthwise NHWC: zero kernel size, stride or dilation"
        );
        let simd = avx2();
        // Prefetch the next output row's new input where an image passes
        // 1 MiB (the L2 is 512 KiB) and each output row streams in at
        // least 8 bytes of new input per vector multiply-add (`sy * w * c`
        // floats against `ow * c / 8 * kh * kw`): 112x112x96 stride 2
        // (14 bytes) ran in 380-480 us against 530-730 without, its lines
        // otherwise arriving one miss at a time as the loop walks each
        // pixel's channels `c` floats apart. Where less streams in, the
        // hardware keeps up and the prefetches cost 1 to 8% (56x56x144 5x5
        // stride 2, 5 bytes: 207 us against 191; 7x7 to 28x28 planes).
        let prefetch = h * w * c * 4 > 1 << 20 && 4 * sy * w >= ow * kh * kw;
        let widest = widest(kw, sx, dx);
        // Tiles as even as can be: 112 columns as ten of 11 or 12, 28 as
        // three of 9 or 10.
        let count = ow.div_ceil(widest);
        let tiles = (0..count)
            .map(|i| {
                let x0 = ow * i / count;
                let width = ow * (i + 1) / count - x0;
                let ix0 = (x0 * sx) as isize - padding[1] as isize;
                let span = ((width - 1) * sx + (kw - 1) * dx + 1) as isize;
                let jlo = (-ix0).clamp(0, span) as usize;
                let jhi = (w as isize - ix0).clamp(0, span) as usize;
                #[cfg(target_arch = "x86_64")]
                let (full, tail) = x86::pick(kw, sx, dx, width, jlo, jhi);
                Tile {
                    x0,
                    ix0,
                    jlo,
                    jhi,
                    #[cfg(target_arch = "x86_64")]
                    full,
                    #[cfg(target_arch = "x86_64")]
                    tail,
                }
            })
            .collect();
        // Padded rows `top..end` are the input's.
        let end = padding[0] + h;
        let taps = (0..oh)
            .map(|y| {
                // Padded row of the first tap.
                let base = y * sy;
                let ky0 = if base >= padding[0] {
                    0
                } else {
                    (padding[0] - base).div_ceil(dy)
                };
                let ky1 = if end > base {
                    ((end - base - 1) / dy + 1).min(kh)
                } else {
                    0
                };
                (ky0.min(ky1), ky1)
            })
            .collect();
        DepthwiseNhwc {
            n,
            h,
            w,
            c,
            oh,
            ow,
            kh,
            kw,
            sy,
            sx,
            dy,
            dx,
            top: padding[0],
            left: padding[1],
            tiles,
            taps,
            packed: Arc::new(Vec::new()),
            prepacked: false,
            simd,
            prefetch,
        }
    }

    /// Packs constant weights (`[c, 1, kh, kw]`) once into the kernel's
    /// layout; later runs ignore their `w`.
    ///
    /// # Safety
    /// `w` points at `c * kh * kw` floats.
    pub unsafe fn prepack(&mut self, w: *const f32) {
        // SAFETY: the caller's contract.
        self.packed = Arc::new(unsafe { self.pack(w) });
        self.prepacked = true;
    }

    /// A copy for another concurrent caller (packed weights shared via
    /// `Arc`).
    pub fn fork(&self) -> DepthwiseNhwc {
        DepthwiseNhwc {
            tiles: self.tiles.clone(),
            taps: self.taps.clone(),
            packed: self.packed.clone(),
            ..*self
        }
    }

    /// Runs the convolution `out[n, oh, ow, c]` of `x[n, h, w, c]` and
    /// `w[c, 1, kh, kw]` on up to `threads` threads of [`Team::global`]
    /// (1: on the calling thread only), in bands of output rows. Weights
    /// not prepacked are packed on this call. After each output row is
    /// final, calls `epilogue(range)` on the thread that computed it, with
    /// the row's pixels numbered over the flattened `[n, oh, ow]` (pixel
    /// `p`'s channels are `out[p * c..p * c + c]`): each pixel exactly
    /// once, while the row is still in cache.
    ///
    /// # Safety
    /// `out`, `x` and (unless prepacked) `w` address buffers of the planned
    /// shapes; `out` overlaps neither of the others. Any alignment of `f32`
    /// will do.
    pub unsafe fn run(
        &self,
        out: *mut f32,
        x: *const f32,
        w: *const f32,
        threads: usize,
        epilogue: Option<&(dyn Fn(Range<usize>) + Sync)>,
    ) {
        let local;
        let packed: &[f32] = if self.prepacked {
            &self.packed
        } else {
            // SAFETY: `w` holds the weights (the caller's contract).
            local = unsafe { self.pack(w) };
            &local
        };
        let rows = self.n * self.oh;
        let parts = self.parts(threads);
        let (out, x, wts) = (
            SendPtr(out),
            SendPtr(x as *mut f32),
            SendPtr(packed.as_ptr() as *mut f32),
        );
        let part = |t: usize| {
            let band = rows * t / parts..rows * (t + 1) / parts;
            // SAFETY: part `t` writes only the rows of its band; the
            // buffers are the planned shapes (the caller's contract).
            unsafe { self.band(band, out.get(), x.get(), wts.get(), epilogue) };
        };
        if parts <= 1 {
            (0..parts).for_each(part);
        } else {
            Team::global().run(parts, &part);
        }
    }

    /// Parts a run on up to `threads` threads splits into: one per
    /// [`PART_MACS`] multiply-adds at most, and no more than the team's
    /// threads or the output rows.
    fn parts(&self, threads: usize) -> usize {
        let rows = self.n * self.oh;
        let macs = rows * self.ow * self.c * self.kh * self.kw;
        let team = if threads > 1 {
            Team::global().size()
        } else {
            1
        };
        threads.min(team).min(macs / PART_MACS).max(1).min(rows)
    }

    /// `w[c][kh * kw]` into `[c / L][kh * kw][L]`, zero past the last
    /// channel.
    ///
    /// # Safety
    /// `w` points at `c * kh * kw` floats.
    unsafe fn pack(&self, w: *const f32) -> Vec<f32> {
        let k = self.kh * self.kw;
        let mut packed = vec![0.0; self.c.div_ceil(L) * k * L];
        if packed.is_empty() {
            // No channels: `w` may be dangling.
            return packed;
        }
        // SAFETY: the caller's contract.
        let w = unsafe { std::slice::from_raw_parts(w, self.c * k) };
        for (ch, taps) in w.chunks_exact(k).enumerate() {
            let (blk, lane) = (ch / L, ch % L);
            for (t, &v) in taps.iter().enumerate() {
                packed[(blk * k + t) * L + lane] = v;
            }
        }
        packed
    }

    /// The taps `ky0..ky1` of output row `y` whose input rows lie in the
    /// image (empty where none does).
    fn tap_rows(&self, y: usize) -> (usize, usize) {
        self.taps[y]
    }

    /// Computes output rows `band` (over the flattened `[n, oh]`), calling
    /// the epilogue after each.
    ///
    /// # Safety
    /// The run's buffers; `wts` the packed weights.
    unsafe fn band(
        &self,
        band: Range<usize>,
        out: *mut f32,
        x: *const f32,
        wts: *const f32,
        epilogue: Option<&(dyn Fn(Range<usize>) + Sync)>,
    ) {
        if band.is_empty() {
            return;
        }
        let (mut b, mut y) = (band.start / self.oh, band.start % self.oh);
        for r in band {
            #[cfg(target_arch = "x86_64")]
            if self.simd {
                // SAFETY: the caller's contract; the host has AVX2 and FMA.
                unsafe { self.row_simd(b, y, out, x, wts) };
            } else {
                // SAFETY: the caller's contract.
                unsafe { self.row_plain(b, y, out, x, wts) };
            }
            #[cfg(not(target_arch = "x86_64"))]
            // SAFETY: the caller's contract.
            unsafe {
                self.row_plain(b, y, out, x, wts)
            };
            if let Some(e) = epilogue {
                e(r * self.ow..(r + 1) * self.ow);
            }
            y += 1;
            if y == self.oh {
                (b, y) = (b + 1, 0);
            }
        }
    }

    /// Output row `y` of image `b` by the AVX2 tiles.
    ///
    /// # Safety
    /// The run's buffers; the host has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    unsafe fn row_simd(&self, b: usize, y: usize, out: *mut f32, x: *const f32, wts: *const f32) {
        let (c, k) = (self.c, self.kh * self.kw);
        if c == 0 || self.tiles.is_empty() {
            return;
        }
        let (ky0, ky1) = self.tap_rows(y);
        // The first tap row in the image (any row where there is none: it
        // is not read).
        let iy0 = if ky0 < ky1 {
            y * self.sy + ky0 * self.dy - self.top
        } else {
            0
        };
        let blocks = c / L;
        let nch = c % L;
        // The row's first input pixel, as an address (columns of an edge
        // tile's padding are never read).
        let first = x.wrapping_add((b * self.h + iy0) * self.w * c);
        // The input the next output row reads and this one does not (the
        // new rows at its bottom, or the next image's first), prefetched a
        // tile's share at a time, spread over its blocks, where planned.
        let ahead = if self.prefetch {
            self.ahead(b, y)
        } else {
            0..0
        };
        let lines = ahead.len().div_ceil(16);
        let per = lines.div_ceil(self.tiles.len());
        for (i, t) in self.tiles.iter().enumerate() {
            let (from, to) = ((i * per).min(lines), ((i + 1) * per).min(lines));
            let a = Args {
                src: first.wrapping_offset(t.ix0 * c as isize),
                rows: ky1 - ky0,
                row: self.dy * self.w * c,
                col: c,
                // SAFETY: ky0 <= kh taps into the first block.
                wts: unsafe { wts.add(ky0 * self.kw * L) },
                wblk: k * L,
                blocks,
                // SAFETY: pixel (b, y, x0) of the output.
                out: unsafe { out.add(((b * self.oh + y) * self.ow + t.x0) * c) },
                jlo: t.jlo,
                jhi: t.jhi,
                kw: self.kw,
                sx: self.sx,
                dx: self.dx,
                nch,
                ahead: x.wrapping_add(ahead.start + from * 16),
                lines: to - from,
                per_block: (to - from).div_ceil(blocks.max(1)),
            };
            if blocks > 0 {
                // SAFETY: the tile's reads lie in the image's tap rows
                // `ky0..ky1` and columns `jlo..jhi` (all of its span on
                // tiles planned without the column tests), channels below
                // `blocks * L`; its writes are its pixels' channels.
                unsafe { (t.full)(&a) };
            }
            if nch > 0 {
                let a = Args {
                    src: a.src.wrapping_add(blocks * L),
                    // SAFETY: the last block's weights.
                    wts: unsafe { a.wts.add(blocks * k * L) },
                    // SAFETY: the last block's first channel.
                    out: unsafe { a.out.add(blocks * L) },
                    blocks: 1,
                    lines: if blocks > 0 { 0 } else { a.lines },
                    ..a
                };
                // SAFETY: as above, with loads and stores masked to the
                // `nch` channels that exist.
                unsafe { (t.tail)(&a) };
            }
        }
    }

    /// The floats of the input (from its start) that the output row after
    /// row `y` of image `b` reads and row `y` does not: whole rows,
    /// contiguous in NHWC.
    fn ahead(&self, b: usize, y: usize) -> Range<usize> {
        // Input rows `start..end` of output row `y`.
        let reads = |y: usize| {
            let (ky0, ky1) = self.tap_rows(y);
            if ky0 < ky1 {
                let base = y * self.sy;
                (
                    base + ky0 * self.dy - self.top,
                    base + (ky1 - 1) * self.dy + 1 - self.top,
                )
            } else {
                (0, 0)
            }
        };
        let (next_b, next_y) = if y + 1 < self.oh {
            (b, y + 1)
        } else {
            (b + 1, 0)
        };
        if next_b >= self.n {
            return 0..0;
        }
        let (mut start, end) = reads(next_y);
        if next_b == b {
            start = start.max(reads(y).1);
        }
        let row = self.w * self.c;
        let image = next_b * self.h;
        (image + start) * row..(image + end.max(start)) * row
    }

    /// Output row `y` of image `b` by a plain loop (hosts without AVX2).
    ///
    /// # Safety
    /// The run's buffers; `wts` the packed weights.
    unsafe fn row_plain(&self, b: usize, y: usize, out: *mut f32, x: *const f32, wts: *const f32) {
        let (c, k) = (self.c, self.kh * self.kw);
        let (ky0, ky1) = self.tap_rows(y);
        // SAFETY: the packed weights are `[c / L][k][L]`, rounded up.
        let wts = unsafe { std::slice::from_raw_parts(wts, c.div_ceil(L) * k * L) };
        for ox in 0..self.ow {
            // SAFETY: pixel (b, y, ox) of the output, its own `c` floats.
            let o = unsafe {
                std::slice::from_raw_parts_mut(out.add(((b * self.oh + y) * self.ow + ox) * c), c)
            };
            o.fill(0.0);
            for ky in ky0..ky1 {
                let iy = y * self.sy + ky * self.dy - self.top;
                for kx in 0..self.kw {
                    let ix = (ox * self.sx + kx * self.dx) as isize - self.left as isize;
                    if ix < 0 || ix >= self.w as isize {
                        continue;
                    }
                    // SAFETY: input pixel (b, iy, ix) is in the image.
                    let i = unsafe {
                        std::slice::from_raw_parts(
                            x.add(((b * self.h + iy) * self.w + ix as usize) * c),
                            c,
                        )
                    };
                    let t = ky * self.kw + kx;
                    for (ch, (o, &v)) in o.iter_mut().zip(i).enumerate() {
                        *o += v * wts[((ch / L) * k + t) * L + ch % L];
                    }
                }
            }
        }
    }
}

/// The widest tile: as many accumulators as the 16 registers hold beside
/// a tap row's weights (5 for [`x86::reuse`] with 5 columns) and a loaded
/// column.
fn widest(kw: usize, sx: usize, dx: usize) -> usize {
    if kw == 5 && dx == 1 && sx <= 2 {
        10
    } else {
        12
    }
}

/// Whether this host runs the AVX2 loops.
fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Args, L};
    use std::arch::x86_64::*;

    /// A compiled tile loop.
    pub(super) type Kernel = unsafe fn(&Args);

    /// How [`reuse`] treats a tile's input columns: all in the image;
    /// those outside skipped (their multiply-adds left out, a test per
    /// column); or read from [`ZEROS`] (a select of the address, no
    /// branch, the multiply-adds done on zeros).
    const INSIDE: u8 = 0;
    const SKIP: u8 = 1;
    const ZERO: u8 = 2;

    /// The prefetches' hint: to every level of cache.
    const PF: i32 = _MM_HINT_T0;

    /// Prefetches block `blk`'s share of the lines `a` asks for.
    #[inline(always)]
    unsafe fn prefetch(a: &Args, blk: usize) {
        let from = (blk * a.per_block).min(a.lines);
        let to = (from + a.per_block).min(a.lines);
        for line in from..to {
            // SAFETY: a prefetch never faults (and the lines are the
            // input's).
            unsafe { _mm_prefetch::<PF>(a.ahead.wrapping_add(line * 16) as *const i8) };
        }
    }

    /// What the columns of an edge tile outside the image read.
    static ZEROS: [f32; L] = [0.0; L];

    /// The loops for a tile of `width` pixels (at most [`super::widest`])
    /// whose input columns `jlo..jhi` lie in the image: for whole blocks,
    /// and masked for the last part-filled block.
    pub(super) fn pick(
        kw: usize,
        sx: usize,
        dx: usize,
        width: usize,
        jlo: usize,
        jhi: usize,
    ) -> (Kernel, Kernel) {
        macro_rules! one {
            ($f:ident, $t:literal, [$($g:tt)*]) => {
                $f::<$t, $($g)*> as Kernel
            };
        }
        macro_rules! widths {
            ($f:ident, $g:tt, $($t:literal)*) => {
                match width {
                    $($t => one!($f, $t, $g),)*
                    _ => unreachable!("tile wider than planned"),
                }
            };
        }
        let span = (width - 1) * sx + (kw - 1) * dx + 1;
        // Within the image, or missing only some of the first and last
        // `kw - 1` columns (padding within the kernel's reach): `reuse`,
        // testing columns; the general loop otherwise.
        let inside = jlo == 0 && jhi == span;
        let ends = jlo < kw && jhi + kw > span;
        // Edge tiles of 3 columns read zeros: the loop stays the
        // interior's, and one column in 14 or 25 is wasted. With 5
        // columns tests (whose branches spill some accumulators) were
        // faster: 28x28x240 246 us against 253, 7x7x1152 57 against 66
        // (a 7-pixel row's tile is 4 columns of padding in 11), 56x56x144
        // stride 2 198 against 226. With 3, zeros were: 56x56x144 259 us
        // against 276-292, 112x112x96 stride 2 439-459 against 475-545
        // (Zen 1, medians with another job on the machine; with 5
        // columns, testing only the outer `kw - 1` was slower still).
        let full = match (kw, sx, dx) {
            _ if !inside && !ends => {
                widths!(generic, [true, false], 1 2 3 4 5 6 7 8 9 10 11 12)
            }
            (3, 1, 1) if inside => widths!(reuse, [3, 1, INSIDE], 1 2 3 4 5 6 7 8 9 10 11 12),
            (3, 1, 1) => widths!(reuse, [3, 1, ZERO], 1 2 3 4 5 6 7 8 9 10 11 12),
            (3, 2, 1) if inside => widths!(reuse, [3, 2, INSIDE], 1 2 3 4 5 6 7 8 9 10 11 12),
            (3, 2, 1) => widths!(reuse, [3, 2, ZERO], 1 2 3 4 5 6 7 8 9 10 11 12),
            (5, 1, 1) if inside => widths!(reuse, [5, 1, INSIDE], 1 2 3 4 5 6 7 8 9 10),
            (5, 1, 1) => widths!(reuse, [5, 1, SKIP], 1 2 3 4 5 6 7 8 9 10),
            (5, 2, 1) if inside => widths!(reuse, [5, 2, INSIDE], 1 2 3 4 5 6 7 8 9 10),
            (5, 2, 1) => widths!(reuse, [5, 2, SKIP], 1 2 3 4 5 6 7 8 9 10),
            _ if inside => widths!(generic, [false, false], 1 2 3 4 5 6 7 8 9 10 11 12),
            _ => widths!(generic, [true, false], 1 2 3 4 5 6 7 8 9 10 11 12),
        };
        let tail = widths!(generic, [true, true], 1 2 3 4 5 6 7 8 9 10 11 12);
        (full, tail)
    }

    /// A tile of `T` pixels whose taps share loads: `KW` tap columns, no
    /// column dilation, column stride `SX`. Each of a tap row's
    /// `(T - 1) * SX + KW` input columns is loaded once and multiplied into
    /// every pixel it feeds (pixel `i` by tap `kx` where `i * SX + kx` is
    /// its column), with the row's `KW` weights in registers. Unless
    /// `EDGE` is [`INSIDE`], only the columns `jlo..jhi` (those in the
    /// image) are read, where `jlo < KW` and `jhi > span - KW`: with
    /// [`ZERO`] only the first and last `KW - 1` columns are tested.
    ///
    /// # Safety
    /// `a` describes reads within the input and weights and writes of `T`
    /// pixels' `a.blocks * L` channels within the output; AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn reuse<const T: usize, const KW: usize, const SX: usize, const EDGE: u8>(
        a: &Args,
    ) {
        let span = (T - 1) * SX + KW;
        // SAFETY: the reads are the columns `0..span` (`jlo..jhi`, and
        // `ZEROS`, on edges) of the `rows` tap rows, channels of `blocks`
        // blocks, and `KW` weights per tap row; the writes `T` pixels'
        // channels (the caller's contract).
        unsafe {
            for blk in 0..a.blocks {
                prefetch(a, blk);
                let mut acc = [_mm256_setzero_ps(); T];
                let mut p = a.src.wrapping_add(blk * L);
                let mut w = a.wts.add(blk * a.wblk);
                for _ in 0..a.rows {
                    let mut wv = [_mm256_setzero_ps(); KW];
                    for (kx, v) in wv.iter_mut().enumerate() {
                        *v = _mm256_loadu_ps(w.add(kx * L));
                    }
                    w = w.add(KW * L);
                    let mut q = p;
                    // Written out column by column with constant
                    // conditions, so the accumulators stay registers (a
                    // loop this long is not unrolled by the compiler).
                    macro_rules! taps {
                        ($v:ident, $j:literal, $($kx:literal)*) => {$(
                            let d = ($j as usize).wrapping_sub($kx);
                            if $kx < KW && $j >= $kx && d % SX == 0 && d / SX < T {
                                acc[d / SX] = _mm256_fmadd_ps($v, wv[$kx], acc[d / SX]);
                            }
                        )*};
                    }
                    macro_rules! columns {
                        ($($j:literal)*) => {$(
                            if $j < span {
                                // Only the first and last `KW - 1` columns
                                // can be outside the image (tested all the
                                // same with `SKIP`: faster, as measured).
                                // (The literal column makes clippy see `x - 1 >= y`.)
                                #[allow(clippy::int_plus_one)]
                                let middle = $j + 1 >= KW && $j + KW <= span;
                                let inside = EDGE == INSIDE
                                    || (EDGE == ZERO && middle)
                                    || ($j >= a.jlo && $j < a.jhi);
                                if EDGE == ZERO {
                                    let s = if inside { q } else { ZEROS.as_ptr() };
                                    let v = _mm256_loadu_ps(s);
                                    taps!(v, $j, 0 1 2 3 4);
                                } else if inside {
                                    let v = _mm256_loadu_ps(q);
                                    taps!(v, $j, 0 1 2 3 4);
                                }
                                q = q.wrapping_add(a.col);
                            }
                        )*};
                    }
                    columns!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24);
                    // (The last column's step is not read.)
                    let _ = q;
                    p = p.wrapping_add(a.row);
                }
                let o = a.out.add(blk * L);
                for (i, v) in acc.iter().enumerate() {
                    _mm256_storeu_ps(o.add(i * a.col), *v);
                }
            }
        }
    }

    /// A tile of `T` pixels for any taps: a vector loaded per multiply-add.
    /// With `CLIP`, only the columns `jlo..jhi` are read; with `MASK`,
    /// only the first `nch` channels of each pixel are read and written
    /// (one block: the last, part-filled).
    ///
    /// # Safety
    /// As [`reuse`], for columns `i * sx + kx * dx` of the tap rows.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn generic<const T: usize, const CLIP: bool, const MASK: bool>(a: &Args) {
        let m = _mm256_cmpgt_epi32(
            _mm256_set1_epi32(a.nch as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        // Floats between the tile's pixels and between a row's taps.
        let (step, tap) = (a.sx * a.col, a.dx * a.col);
        // SAFETY: as `reuse` (the caller's contract); masked loads do not
        // touch the lanes masked off.
        unsafe {
            for blk in 0..a.blocks {
                prefetch(a, blk);
                let mut acc = [_mm256_setzero_ps(); T];
                let mut p = a.src.wrapping_add(blk * L);
                let mut w = a.wts.add(blk * a.wblk);
                for _ in 0..a.rows {
                    let mut q = p;
                    for kx in 0..a.kw {
                        let wv = _mm256_loadu_ps(w);
                        w = w.add(L);
                        let j0 = kx * a.dx;
                        macro_rules! pixels {
                            ($($i:literal)*) => {$(
                                if $i < T {
                                    let j = j0 + $i * a.sx;
                                    if !CLIP || (j >= a.jlo && j < a.jhi) {
                                        let s = q.wrapping_add($i * step);
                                        let v = if MASK {
                                            _mm256_maskload_ps(s, m)
                                        } else {
                                            _mm256_loadu_ps(s)
                                        };
                                        acc[$i] = _mm256_fmadd_ps(v, wv, acc[$i]);
                                    }
                                }
                            )*};
                        }
                        pixels!(0 1 2 3 4 5 6 7 8 9 10 11);
                        q = q.wrapping_add(tap);
                    }
                    p = p.wrapping_add(a.row);
                }
                let o = a.out.add(blk * L);
                for (i, v) in acc.iter().enumerate() {
                    if MASK {
                        _mm256_maskstore_ps(o.add(i * a.col), m, *v);
                    } else {
                        _mm256_storeu_ps(o.add(i * a.col), *v);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A test shape: images, channels, input plane, kernel, stride,
    /// padding `[t, l, b, r]`, dilation.
    #[derive(Clone, Copy, Debug)]
    struct Shape {
        n: usize,
        c: usize,
        hw: [usize; 2],
        k: [usize; 2],
        s: [usize; 2],
        pad: [usize; 4],
        d: [usize; 2],
    }

    impl Shape {
        /// The output plane, or `None` where the padded input is shorter
        /// than the kernel's reach.
        fn out(&self) -> Option<[usize; 2]> {
            let o = |i: usize| {
                let padded = self.hw[i] + self.pad[i] + self.pad[i + 2];
                let reach = (self.k[i] - 1) * self.d[i] + 1;
                (padded >= reach).then(|| (padded - reach) / self.s[i] + 1)
            };
            Some([o(0)?, o(1)?])
        }
    }

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 37 + seed * 11) % 101) as f32 / 50.5 - 1.0)
            .collect()
    }

    /// The definition, in f64: the output and, per element, the sum of its
    /// terms' magnitudes (the scale of its rounding error).
    fn reference(s: &Shape, x: &[f32], wt: &[f32]) -> (Vec<f32>, Vec<f64>) {
        let [h, w] = s.hw;
        let [kh, kw] = s.k;
        let [oh, ow] = s.out().unwrap();
        let c = s.c;
        let mut want = vec![0f32; s.n * oh * ow * c];
        let mut scale = vec![0f64; want.len()];
        for b in 0..s.n {
            for y in 0..oh {
                for xo in 0..ow {
                    for ch in 0..c {
                        let (mut sum, mut mag) = (0f64, 0f64);
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (y * s.s[0] + ky * s.d[0]) as isize - s.pad[0] as isize;
                                let ix = (xo * s.s[1] + kx * s.d[1]) as isize - s.pad[1] as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xi = ((b * h + iy as usize) * w + ix as usize) * c + ch;
                                let t = x[xi] as f64 * wt[(ch * kh + ky) * kw + kx] as f64;
                                sum += t;
                                mag += t.abs();
                            }
                        }
                        let o = ((b * oh + y) * ow + xo) * c + ch;
                        want[o] = sum as f32;
                        scale[o] = mag;
                    }
                }
            }
        }
        (want, scale)
    }

    /// Runs `s` every way asked and checks the output against the
    /// definition (relative 1e-5 of the terms' magnitudes), the epilogue
    /// (every pixel once, final when handed), and that nothing past the
    /// output was written.
    fn check(s: Shape, simd: bool, prepack: bool, threads: usize, shift: usize) {
        let Some([oh, ow]) = s.out() else { return };
        let [h, w] = s.hw;
        let c = s.c;
        let x = values(s.n * h * w * c, 1);
        let wt = values(c * s.k[0] * s.k[1], 2);
        let (want, scale) = reference(&s, &x, &wt);
        let mut d = DepthwiseNhwc::new([s.n, h, w, c], s.k, [oh, ow], s.s, s.pad, s.d);
        if !simd {
            d.simd = false;
        }
        if prepack {
            unsafe { d.prepack(wt.as_ptr()) };
        }
        // Input at `shift` floats past the allocation's start, exactly
        // sized; output with guards on both sides.
        let mut xs = vec![0f32; shift];
        xs.extend(&x);
        let guard = 9;
        let mut got = vec![f32::NAN; shift + want.len() + guard];
        let pixels = s.n * oh * ow;
        let seen: Vec<AtomicUsize> = (0..pixels).map(|_| AtomicUsize::new(0)).collect();
        let bad = AtomicUsize::new(0);
        let close = |i: usize, g: f32| (g as f64 - want[i] as f64).abs() <= 1e-5 * scale[i] + 1e-30;
        let outp = SendPtr(unsafe { got.as_mut_ptr().add(shift) });
        let hook = |r: Range<usize>| {
            for p in r {
                seen[p].fetch_add(1, Ordering::Relaxed);
                for ch in 0..c {
                    let i = p * c + ch;
                    // SAFETY: pixel p is final and no thread writes it again.
                    let g = unsafe { *outp.get().add(i) };
                    if !close(i, g) {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        };
        // Twice: a second run over the first's output and weights.
        for _ in 0..2 {
            let wp = if prepack {
                std::ptr::null()
            } else {
                wt.as_ptr()
            };
            unsafe { d.run(outp.get(), xs.as_ptr().add(shift), wp, threads, Some(&hook)) };
        }
        let what = format!("{s:?} simd {simd} prepack {prepack} threads {threads} shift {shift}");
        assert!(
            got[..shift].iter().all(|v| v.is_nan()),
            "{what}: wrote before the output"
        );
        assert!(
            got[shift + want.len()..].iter().all(|v| v.is_nan()),
            "{what}: wrote past the output"
        );
        assert!(
            seen.iter().all(|k| k.load(Ordering::Relaxed) == 2),
            "{what}: epilogue counts"
        );
        assert_eq!(
            bad.load(Ordering::Relaxed),
            0,
            "{what}: epilogue saw unfinished pixels"
        );
        for (i, &g) in got[shift..shift + want.len()].iter().enumerate() {
            assert!(close(i, g), "{what}: element {i}: {g} vs {}", want[i]);
        }
    }

    /// Every kernel, stride, dilation and kind of padding, each with
    /// several channel counts, planes and image counts, on the AVX2 loops
    /// (where the host has them) and the plain one.
    #[test]
    fn matches_the_definition() {
        let kernels = [[1, 1], [3, 3], [5, 5], [7, 7], [3, 5]];
        let strides = [[1, 1], [2, 2], [3, 3], [1, 2], [2, 1]];
        let dilations = [[1, 1], [2, 2], [1, 2]];
        let channels = [1, 3, 8, 13, 16, 24, 144];
        let planes = [[1, 1], [2, 3], [7, 7], [14, 14], [17, 9]];
        let mut case = 0usize;
        for k in kernels {
            for s in strides {
                for d in dilations {
                    // Symmetric ("same" for stride 1), none, asymmetric,
                    // and more than the kernel's reach on one side.
                    let reach = [(k[0] - 1) * d[0], (k[1] - 1) * d[1]];
                    let pads = [
                        [reach[0] / 2, reach[1] / 2, reach[0] / 2, reach[1] / 2],
                        [0, 0, 0, 0],
                        [reach[0], 0, 1, reach[1] / 2 + 1],
                        [0, reach[1] + 3, reach[0] + 2, 1],
                    ];
                    for pad in pads {
                        case += 1;
                        // Channels, planes and images cycle at different
                        // rates, so every pairing comes round.
                        let c = channels[case % channels.len()];
                        let hw = planes[(case / 2) % planes.len()];
                        let n = [1, 3][(case / 3) % 2];
                        let shape = Shape {
                            n,
                            c,
                            hw,
                            k,
                            s,
                            pad,
                            d,
                        };
                        let threads = 1 + case % 2;
                        let prepack = (case / 5).is_multiple_of(2);
                        check(shape, true, prepack, threads, case % 5);
                        if case.is_multiple_of(3) {
                            check(shape, false, !prepack, 1, 0);
                        }
                    }
                }
            }
        }
    }

    /// MobileNet's and EfficientNet's layers (3x3 and 5x5, strides 1 and 2,
    /// "same" padding) at every channel count and plane, one and three
    /// images.
    #[test]
    fn common_layers() {
        let channels = [1, 3, 8, 13, 16, 24, 144];
        let planes = [[1, 1], [2, 3], [7, 7], [14, 14], [17, 9]];
        let mut case = 0usize;
        for (k, p) in [(3, 1), (5, 2)] {
            for s in [1, 2] {
                for c in channels {
                    for hw in planes {
                        case += 1;
                        let shape = Shape {
                            n: 1 + 2 * (case % 2),
                            c,
                            hw,
                            k: [k, k],
                            s: [s, s],
                            pad: [p; 4],
                            d: [1, 1],
                        };
                        check(shape, true, !case.is_multiple_of(3), 1 + case % 2, case % 4);
                    }
                }
            }
        }
    }

    /// No channels, no images, no output: nothing is touched (and the
    /// epilogue still sees every pixel there is).
    #[test]
    fn degenerate_shapes() {
        let seen = AtomicUsize::new(0);
        let hook = |r: Range<usize>| {
            seen.fetch_add(r.len(), Ordering::Relaxed);
        };
        let d = DepthwiseNhwc::new([2, 5, 4, 0], [3, 3], [5, 4], [1, 1], [1; 4], [1, 1]);
        let dangling = std::ptr::NonNull::<f32>::dangling().as_ptr();
        unsafe { d.run(dangling, dangling, dangling, 2, Some(&hook)) };
        assert_eq!(seen.load(Ordering::Relaxed), 2 * 5 * 4);
        for (input, out) in [
            ([0, 5, 4, 8], [5, 4]),
            ([1, 5, 4, 8], [0, 4]),
            ([1, 5, 4, 8], [5, 0]),
        ] {
            let mut d = DepthwiseNhwc::new(input, [3, 3], out, [1, 1], [1; 4], [1, 1]);
            let wt = values(8 * 9, 2);
            unsafe { d.prepack(wt.as_ptr()) };
            unsafe { d.run(dangling, dangling, std::ptr::null(), 2, Some(&hook)) };
        }
        assert_eq!(seen.load(Ordering::Relaxed), 2 * 5 * 4);
    }

    /// Shapes with enough work split across two threads, which then agree
    /// with the definition.
    #[test]
    fn two_threads_split() {
        let shapes = [
            Shape {
                n: 3,
                c: 48,
                hw: [17, 9],
                k: [3, 3],
                s: [1, 1],
                pad: [1; 4],
                d: [1, 1],
            },
            Shape {
                n: 3,
                c: 144,
                hw: [14, 14],
                k: [5, 5],
                s: [2, 2],
                pad: [2, 1, 2, 3],
                d: [1, 1],
            },
        ];
        for s in shapes {
            let [oh, ow] = s.out().unwrap();
            let d =
                DepthwiseNhwc::new([s.n, s.hw[0], s.hw[1], s.c], s.k, [oh, ow], s.s, s.pad, s.d);
            assert_eq!(d.parts(1), 1);
            if Team::global().size() >= 2 {
                assert_eq!(d.parts(2), 2, "{s:?}");
            }
            for prepack in [true, false] {
                check(s, true, prepack, 2, 3);
            }
            check(s, false, true, 2, 1);
        }
        // Too little work for a second part.
        let d = DepthwiseNhwc::new([1, 7, 7, 8], [3, 3], [7, 7], [1, 1], [1; 4], [1, 1]);
        assert_eq!(d.parts(2), 1);
    }

    /// A fork shares the packed weights and runs alongside its origin.
    #[test]
    fn forks_share_weights() {
        let s = Shape {
            n: 1,
            c: 40,
            hw: [9, 11],
            k: [3, 3],
            s: [1, 1],
            pad: [1; 4],
            d: [1, 1],
        };
        let [oh, ow] = s.out().unwrap();
        let x = values(s.hw[0] * s.hw[1] * s.c, 1);
        let wt = values(s.c * 9, 2);
        let (want, _) = reference(&s, &x, &wt);
        let mut d = DepthwiseNhwc::new([1, 9, 11, 40], s.k, [oh, ow], s.s, s.pad, s.d);
        unsafe { d.prepack(wt.as_ptr()) };
        let f = d.fork();
        assert!(Arc::ptr_eq(&d.packed, &f.packed));
        std::thread::scope(|scope| {
            for plan in [&d, &f] {
                let x = &x;
                let want = &want;
                scope.spawn(move || {
                    let mut got = vec![0f32; want.len()];
                    unsafe { plan.run(got.as_mut_ptr(), x.as_ptr(), std::ptr::null(), 1, None) };
                    for (g, r) in got.iter().zip(want) {
                        assert!((g - r).abs() <= 1e-5 * (1.0 + r.abs()));
                    }
                });
            }
        });
    }
}
