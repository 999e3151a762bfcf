//! Direct f32 depthwise convolution vectorised over channels (MobileNet's
//! and EfficientNet's 3x3 and 5x5 layers: one input and one output channel
//! per group), in the layout ONNX Runtime's NCHWc kernels use.
//!
//! `conv_grouped.rs` vectorises over one channel's output plane: a 7x7 or
//! 14x14 plane is a few part-filled vectors per channel, and each channel
//! is a call of its own. Here a vector holds the same pixel of `L`
//! channels (16 with AVX-512, 8 with AVX2), so every lane works whatever
//! the plane's size, and a tap's `L` weights are one vector.
//!
//! For one image and block of `L` channels:
//! - the block's input planes are transposed, `L` pixels of the flattened
//!   plane at a time (an `L x L` transpose in registers), into a
//!   zero-padded channel-interleaved layout `[row][col][L]`: padded row
//!   `r`, column `c` holds input pixel `(r - top, c - left)` of every
//!   channel of the block. Its padding is zeroed once, when the scratch is
//!   allocated, and never written (the transposes write only input
//!   pixels' slots; but see the rings below), so no tap tests bounds;
//! - each output row is computed in tiles of up to [`Simd::TILE`] pixels
//!   whose `L`-lane accumulators stay in registers across every tap
//!   `(ky, kx)`: the tap's weight vector times the layout vector at padded
//!   row `y * sy + ky * dy`, column `x * sx + kx * dx` for each pixel `x`
//!   of the tile, so strides and dilations only change the step between
//!   reads. For 3 or 5 undilated columns and strides 1 and 2, a tap row's
//!   columns are loaded once and feed every pixel they reach, with the
//!   row's weights in registers ([`tile_row`]): a third as many loads;
//! - the `[pixel][L]` results are transposed back into the block's NCHW
//!   output planes, again `L` flattened pixels at a time.
//!
//! Both transposes run row by row with the computation, so the layout and
//! the results need only hold a few rows: from 28x28 planes on (where
//! either would pass 32 KiB) they are rings. The layout keeps the rows an
//! output row reads plus the transposes' run-ahead (padded row `r` in
//! ring row `r % ring`; a padding row's input columns are zeroed as it
//! comes round, the side columns are still never written), the results
//! two output rows. A whole 112x112 layout and results (1.6 MB for 16
//! channels) fell out of cache between one inference and the next: in
//! EfficientNet-B0 its 112x112x32 layer took 560 us, against 440 with
//! rings (and 480 on the grouped kernel).
//!
//! The scratch starts at a cache line, and where planes are whole vectors
//! long a first short run of pixels aligns the rest of the input's loads
//! and the output's stores: the executor's buffers are 16-byte aligned,
//! and 64-byte loads straddling two lines cost 5 to 12% of the whole on
//! 28x28 to 112x112 planes. The last block's missing channels are zero
//! lanes, never stored.
//! Weights are transposed into `[block][tap][L]` once where they are
//! constant (`prepack`), else on each run.
//!
//! The loop is written once over [`Simd`] and compiled for AVX-512 and
//! AVX2; a host with neither gets no plan (`conv_grouped.rs` runs). An
//! AVX-512 host runs the 8-lane copy where 16 lanes would leave the last
//! block at least half empty (24, 40 or 72 channels).

use super::SendPtr;
use std::sync::Arc;

/// Which compiled copy of the loop runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
}

/// A depthwise convolution plan for one shape.
pub(crate) struct Depthwise {
    /// Images and channels (input, output and groups alike).
    n: usize,
    c: usize,
    /// Input and output rows and columns.
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    stride: [usize; 2],
    dilation: [usize; 2],
    /// Top and left padding.
    top: usize,
    left: usize,
    /// Rows of the padded input, and those the layout keeps at a time
    /// (padded row `r` in ring row `r % ring`); columns of the layout (in
    /// pixels of `lanes` floats).
    rows: usize,
    ring: usize,
    cols: usize,
    /// Pixels the results keep at a time (pixel `p`, shifted, at ring
    /// position `p % pixels`), a multiple of `lanes`.
    pixels: usize,
    /// Floats of the layout and of the results (with room past the ring
    /// for a tile's overflow).
    layout: usize,
    results: usize,
    /// Channels per vector.
    lanes: usize,
    isa: Isa,
    /// The tiles of an output row: first column and width.
    tiles: Vec<(usize, usize)>,
    /// Weights as `[block][tap][lanes]`, zero past the last channel.
    packed: Arc<Vec<f32>>,
    prepacked: bool,
    /// Per thread: a layout and the results.
    scratch: Vec<f32>,
}

impl Depthwise {
    /// A plan for a depthwise f32 convolution (`groups` equal to the input
    /// and output channels), or `None` for any other shape, a host without
    /// AVX2 and FMA, or a layout too large to be worth it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        input: [usize; 4],
        weight: [usize; 4],
        out_hw: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 4],
        dilation: [usize; 2],
        groups: usize,
        avx512: bool,
    ) -> Option<Depthwise> {
        let [n, c, h, w] = input;
        let [o, cg, kh, kw] = weight;
        let [oh, ow] = out_hw;
        let [sy, sx] = stride;
        let [dy, dx] = dilation;
        if cg != 1 || o != c || groups != c || c == 0 || n == 0 || h == 0 || w == 0 {
            return None;
        }
        if oh == 0 || ow == 0 || kh == 0 || kw == 0 || sy == 0 || sx == 0 || dy == 0 || dx == 0 {
            return None;
        }
        // 8-lane vectors where 16 would leave the last block at least half
        // empty (24, 40, 72 channels): on the Zen 4 this was measured on,
        // 512-bit operations run as two halves and the 8-lane copy keeps
        // up lane for lane (with full blocks it was 10% slower on 7x7
        // planes, up to 15% faster on 112x112 stride 2); 56x56x24 3x3 ran
        // in 37 us against 47 (stride 2 15 against 23), 112x112x24 in 155
        // against 194.
        let isa = match detect(avx512)? {
            Isa::Avx512 if c.next_multiple_of(8) < c.next_multiple_of(16) => detect(false)?,
            isa => isa,
        };
        let lanes = match isa {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
        };
        let (top, left) = (padding[0], padding[1]);
        // The farthest tap of the last output pixel, and every input pixel,
        // has a slot.
        let rows = ((oh - 1) * sy + (kh - 1) * dy + 1).max(top + h);
        let cols = ((ow - 1) * sx + (kw - 1) * dx + 1).max(left + w);
        // Rings where a whole layout or results would pass 32 KiB (from
        // 28x28 planes on); the whole otherwise, where a ring's wrapping
        // cost 3 to 5% on 7x7 and 14x14 planes.
        let small = |floats: usize| floats * lanes <= 8192;
        // An output row reads `span` rows; the transposes run up to a
        // vector of pixels (some rows of a narrow plane) ahead.
        let span = (kh - 1) * dy + 1;
        let ring = if small(rows * cols) {
            rows
        } else {
            rows.min(span + lanes.div_ceil(w) + 1)
        };
        // The pixels not yet transposed back (fewer than a vector) and a
        // row, twice over; or the whole plane.
        let whole = oh * ow + lanes;
        let pixels = if small(whole) {
            whole
        } else {
            whole.min(2 * (ow + lanes))
        }
        .next_multiple_of(lanes);
        let tile = match isa {
            Isa::Avx512 => x86::Avx512::TILE,
            Isa::Avx2 => x86::Avx2::TILE,
        };
        let layout = ring.checked_mul(cols)?.checked_mul(lanes)?;
        let results = (pixels + tile) * lanes;
        if layout + results > 1 << 26 {
            return None;
        }
        // Tiles as even as can be: 14 columns as one tile, 28 as two.
        let count = ow.div_ceil(tile);
        let tiles = (0..count)
            .map(|i| (ow * i / count, ow * (i + 1) / count - ow * i / count))
            .collect();
        Some(Depthwise {
            n,
            c,
            h,
            w,
            oh,
            ow,
            kh,
            kw,
            stride,
            dilation,
            top,
            left,
            rows,
            ring,
            cols,
            pixels,
            layout,
            results,
            lanes,
            isa,
            tiles,
            packed: Arc::new(Vec::new()),
            prepacked: false,
            scratch: Vec::new(),
        })
    }

    /// Channels per vector.
    pub(crate) fn lanes(&self) -> usize {
        self.lanes
    }

    /// A copy for another concurrent caller: weights packed once are
    /// shared; the scratch and per-run packing are its own.
    pub(crate) fn fork(&self) -> Depthwise {
        Depthwise {
            tiles: self.tiles.clone(),
            packed: if self.prepacked {
                self.packed.clone()
            } else {
                Arc::new(Vec::new())
            },
            scratch: Vec::new(),
            ..*self
        }
    }

    /// Packs constant weights now, once, instead of on every run.
    ///
    /// # Safety
    /// `w` must hold the `c * kh * kw` weights, and keep them for every run.
    pub(crate) unsafe fn prepack(&mut self, w: *const f32) {
        unsafe { self.pack(w) };
        self.prepacked = true;
    }

    /// `w[c][kh * kw]` into `[c / lanes][kh * kw][lanes]`.
    ///
    /// # Safety
    /// `w` holds the `c * kh * kw` weights.
    unsafe fn pack(&mut self, w: *const f32) {
        let (l, k) = (self.lanes, self.kh * self.kw);
        let blocks = self.c.div_ceil(l);
        // Unshared here: a copy that packs on every run has its own buffer.
        let packed = Arc::make_mut(&mut self.packed);
        packed.clear();
        packed.resize(blocks * k * l, 0.0);
        for ch in 0..self.c {
            let (blk, lane) = (ch / l, ch % l);
            for t in 0..k {
                // SAFETY: ch < c and t < k.
                packed[(blk * k + t) * l + lane] = unsafe { *w.add(ch * k + t) };
            }
        }
    }

    /// Runs the convolution `out[n, c, oh, ow]` of `x[n, c, h, w]` and
    /// `w[c, 1, kh, kw]`; returns whether it applied `epilogue` itself.
    ///
    /// # Safety
    /// The pointers must address buffers of this plan's shapes.
    pub(crate) unsafe fn run(
        &mut self,
        out: *mut f32,
        x: *const f32,
        w: *const f32,
        par: gemm::Parallelism,
        epilogue: Option<&super::Epilogue<'_>>,
    ) -> bool {
        let team = crate::team::Team::global();
        let threads = super::team_threads(par);
        // Slots of whole cache lines, from a cache line: vectors of the
        // layout and results never straddle two lines.
        let per = (self.layout + self.results).next_multiple_of(16);
        if self.scratch.len() < per * threads + 15 {
            // Zeros: the layouts' padding, never written afterwards. A new
            // buffer, not a grown one, whose alignment could shift it.
            self.scratch = vec![0.0; per * threads + 15];
        }
        if !self.prepacked {
            // SAFETY: `w` holds the weights (the caller's contract).
            unsafe { self.pack(w) };
        }
        let this = &*self;
        let first = this.scratch.as_ptr().align_offset(64).min(15);
        // SAFETY: within the scratch (15 floats of slack).
        let slots = SendPtr(unsafe { this.scratch.as_ptr().add(first) } as *mut f32);
        let (out, x) = (SendPtr(out), SendPtr(x as *mut f32));
        let blocks = this.c.div_ceil(this.lanes);
        // Per image when whole images are done; per block's channels when
        // there is one image (the executor's hook takes either).
        let block_done = |b: usize, blk: usize| {
            if let (Some(e), 1) = (epilogue, this.n) {
                e(b, blk * this.lanes..((blk + 1) * this.lanes).min(this.c));
            }
        };
        if threads == 1 || this.n >= threads {
            let parts = threads.min(this.n);
            team.run(parts, &|t| {
                let base = slots;
                // SAFETY: part t owns scratch slot t and images lo..hi.
                let s = unsafe { base.0.add(t * per) };
                for b in this.n * t / parts..this.n * (t + 1) / parts {
                    for blk in 0..blocks {
                        unsafe { this.block(b, blk, 0..this.oh, out, x, s) };
                        block_done(b, blk);
                    }
                    if let Some(e) = epilogue.filter(|_| this.n > 1) {
                        e(b, 0..this.c);
                    }
                }
            });
            epilogue.is_some()
        } else if blocks >= 2 * threads || blocks.is_multiple_of(threads) || this.oh < threads {
            // Fewer images than threads: the blocks of each image split
            // across the team.
            let parts = threads.min(blocks);
            for b in 0..this.n {
                team.run(parts, &|t| {
                    let base = slots;
                    // SAFETY: part t owns scratch slot t and its blocks.
                    let s = unsafe { base.0.add(t * per) };
                    for blk in blocks * t / parts..blocks * (t + 1) / parts {
                        unsafe { this.block(b, blk, 0..this.oh, out, x, s) };
                        block_done(b, blk);
                    }
                });
            }
            // Several images: the executor runs the epilogue afterwards.
            epilogue.is_some() && this.n == 1
        } else {
            // Too few blocks to share evenly (one, or three on two
            // threads: 112x112x16 ran in 98 us on two threads as on one,
            // against 66 on the grouped kernel; 57 in bands):
            // each thread takes a band of every block's output rows, its
            // input rows (and the taps' overlap) transposed again. A block
            // is done only when every band is, so the executor runs the
            // epilogue afterwards.
            for b in 0..this.n {
                team.run(threads, &|t| {
                    let base = slots;
                    // SAFETY: part t owns scratch slot t and its rows.
                    let s = unsafe { base.0.add(t * per) };
                    let band = this.oh * t / threads..this.oh * (t + 1) / threads;
                    for blk in 0..blocks {
                        unsafe { this.block(b, blk, band.clone(), out, x, s) };
                    }
                });
            }
            false
        }
    }

    /// Convolves output rows `rows` of block `blk` of image `b`, with `s`
    /// as the scratch, on the chosen ISA.
    ///
    /// # Safety
    /// The run's buffers; `s` a scratch slot of this plan.
    unsafe fn block(
        &self,
        b: usize,
        blk: usize,
        rows: std::ops::Range<usize>,
        out: SendPtr<f32>,
        x: SendPtr<f32>,
        s: *mut f32,
    ) {
        let args = (b, blk, rows, out.0, x.0 as *const f32, s);
        match self.isa {
            // SAFETY: detected on this host; the caller's pointers.
            Isa::Avx512 => unsafe { self.block_avx512(args) },
            // SAFETY: as above.
            Isa::Avx2 => unsafe { self.block_avx2(args) },
        }
    }

    #[target_feature(enable = "avx512f,fma")]
    unsafe fn block_avx512(&self, args: BlockArgs) {
        unsafe { self.block_body::<x86::Avx512>(args) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_avx2(&self, args: BlockArgs) {
        unsafe { self.block_body::<x86::Avx2>(args) }
    }

    /// The block's work, inlined into each ISA's copy.
    #[inline(always)]
    unsafe fn block_body<S: Simd>(&self, (b, blk, band, out, x, s): BlockArgs) {
        let l = S::L;
        let c0 = blk * l;
        let nch = (self.c - c0).min(l);
        let k = self.kh * self.kw;
        let [sy, sx] = self.stride;
        let [dy, dx] = self.dilation;
        let (plane, oplane) = (self.h * self.w, self.oh * self.ow);
        let (ring, pixels) = (self.ring, self.pixels);
        let span = (self.kh - 1) * dy + 1;
        // SAFETY (whole body): offsets within the plan's shapes: input
        // pixels land inside the layout (ring rows below `ring`, columns
        // below `cols`), taps read inside it, results inside their ring and
        // its overflow, outputs are `oh * ow` pixels of channels below `c`.
        unsafe {
            let (layout, results) = (s, s.add(self.layout));
            let wts = self.packed.as_ptr().add(blk * k * l);
            let src = x.add((b * self.c + c0) * plane);
            let dst = out.add((b * self.c + c0) * oplane);
            // Where a plane is whole vectors long, every plane of the block
            // starts at the same offset in a vector's span of memory: a
            // first shorter run of pixels then aligns every later load of
            // the input and store of the output (the executor's buffers
            // are aligned to less than a 16-float vector).
            let lead = |p: *const f32, whole: usize, len: usize| {
                let a = l * 4;
                if whole.is_multiple_of(l) {
                    ((a - p as usize % a) % a / 4).min(len)
                } else {
                    0
                }
            };
            // The band's first input row (its taps' first padded row less
            // the top padding) and output pixel.
            let (y0, y1) = (band.start, band.end);
            let first = (y0 * sy).saturating_sub(self.top).min(self.h) * self.w;
            let start = y0 * self.ow;
            let lead_in = lead(src.add(first), plane, plane - first);
            let lead_out = lead(dst.add(start), oplane, oplane - start);
            // Results: pixel p at ring position (p - start + shift) %
            // pixels, so that every run transposed back starts a vector of
            // positions.
            let shift = (l - lead_out) % l;
            // A layout that wraps holds other rows where padding rows come
            // round: their columns of input are zeroed as they do (the
            // columns of side padding are never written).
            let wraps = ring < self.rows;
            let clear = |r: usize| {
                let slot = layout.add((r % ring * self.cols + self.left) * l);
                std::ptr::write_bytes(slot, 0, self.w * l);
            };
            if wraps {
                (0..self.top.min(self.rows)).for_each(clear);
            }
            let mut bottom = self.top + self.h;
            let slot = |rr: usize, ix: usize| layout.add((rr * self.cols + self.left + ix) * l);
            // Input pixels transposed so far, and the next one's column and
            // ring row.
            let (mut done, mut ix, mut rr) = (first, 0, (first / self.w + self.top) % ring);
            // Output pixels transposed back so far.
            let mut written = start;
            for y in band {
                // Input rows this output row reads.
                let need = (y * sy + span).saturating_sub(self.top).min(self.h);
                while done < need * self.w {
                    let len = if done == first && lead_in > 0 {
                        lead_in
                    } else {
                        (plane - done).min(l)
                    };
                    let t = S::transpose_in(src.add(done), plane, nch, len);
                    if len == l && ix + l <= self.w {
                        // Within one row.
                        let first = slot(rr, ix);
                        for (j, v) in t.as_ref().iter().enumerate() {
                            S::store(first.add(j * l), *v);
                        }
                        ix += l;
                    } else if len == l {
                        // Across rows: each pixel's slot without a branch
                        // (and the vectors in registers).
                        for v in t.as_ref() {
                            S::store(slot(rr, ix), *v);
                            ix += 1;
                            let end = ix == self.w;
                            ix = if end { 0 } else { ix };
                            rr += end as usize;
                            rr = if rr == ring { 0 } else { rr };
                        }
                    } else {
                        for v in t.as_ref().iter().take(len) {
                            if ix == self.w {
                                ix = 0;
                                rr = if rr + 1 == ring { 0 } else { rr + 1 };
                            }
                            S::store(slot(rr, ix), *v);
                            ix += 1;
                        }
                    }
                    if ix == self.w {
                        ix = 0;
                        rr = if rr + 1 == ring { 0 } else { rr + 1 };
                    }
                    done += len;
                }
                if wraps {
                    while bottom < (y * sy + span).min(self.rows) {
                        clear(bottom);
                        bottom += 1;
                    }
                }
                for &(x0, width) in &self.tiles {
                    let tap = Taps {
                        src: layout.add(x0 * sx * l),
                        first: y * sy % ring,
                        ring,
                        row: self.cols * l,
                        dy,
                        wts,
                        kh: self.kh,
                        kw: self.kw,
                        kx: dx * l,
                        step: sx * l,
                        reuse: if dx == 1 && sx <= 2 { sx } else { 0 },
                    };
                    let q = (y * self.ow + x0 - start + shift) % pixels;
                    tile_any::<S>(&tap, width, results.add(q * l));
                    if q + width > pixels {
                        // Past the ring: the overflow goes round.
                        std::ptr::copy_nonoverlapping(
                            results.add(pixels * l),
                            results,
                            (q + width - pixels) * l,
                        );
                    }
                }
                let ready = (y + 1) * self.ow;
                while written < ready {
                    let want = if written == start && lead_out > 0 {
                        lead_out
                    } else {
                        l
                    };
                    let len = want.min(ready - written);
                    if len < want && y + 1 < y1 {
                        break;
                    }
                    let q = (written - start + shift) % pixels;
                    S::transpose_out(results.add(q * l), dst.add(written), oplane, nch, len);
                    written += len;
                }
            }
        }
    }
}

/// One block's work: image, block, output rows, output, input, scratch.
type BlockArgs = (
    usize,
    usize,
    std::ops::Range<usize>,
    *mut f32,
    *const f32,
    *mut f32,
);

/// Where one tile's taps read: the layout at its first pixel's first tap
/// column, the ring row of its first tap row, the ring's rows, the floats
/// of a row, the rows between tap rows; the block's `[tap][L]` weights,
/// and the steps (in floats) between taps' columns and the tile's pixels.
#[derive(Clone, Copy)]
struct Taps {
    src: *const f32,
    first: usize,
    ring: usize,
    row: usize,
    dy: usize,
    wts: *const f32,
    kh: usize,
    kw: usize,
    kx: usize,
    step: usize,
    /// Stride of the columns (1 or 2) where the row's taps may share loads
    /// (no column dilation, 3 or 5 columns), else 0.
    reuse: usize,
}

impl Taps {
    /// The ring row of the next tap row after ring row `r` (`dy` is below
    /// the ring's rows wherever there is a next).
    #[inline(always)]
    fn next(&self, r: usize) -> usize {
        let r = r + self.dy;
        if r >= self.ring {
            r - self.ring
        } else {
            r
        }
    }
}

/// A tile of `width` (at most [`Simd::TILE`]) pixels, each width its own
/// copy of the loop so the accumulators live in registers.
///
/// # Safety
/// As [`tile`].
#[inline(always)]
unsafe fn tile_any<S: Simd>(t: &Taps, width: usize, out: *mut f32) {
    macro_rules! rows {
        ($($w:literal)*) => {
            match (t.kw, t.reuse, width) {
                $(
                    (3, 1, $w) => return tile_row::<S, $w, 3, 1>(t, out),
                    (5, 1, $w) => return tile_row::<S, $w, 5, 1>(t, out),
                    (3, 2, $w) => return tile_row::<S, $w, 3, 2>(t, out),
                    (5, 2, $w) => return tile_row::<S, $w, 5, 2>(t, out),
                )*
                _ => {}
            }
        };
    }
    // SAFETY: the caller's contract.
    unsafe {
        // The widths tiles of 7, 14, 28, 56 and 112 columns have.
        if S::TILE >= 14 {
            rows!(4 7 14);
        } else {
            rows!(4 7 8);
        }
        match width {
            1 => tile::<S, 1>(t, out),
            2 => tile::<S, 2>(t, out),
            3 => tile::<S, 3>(t, out),
            4 => tile::<S, 4>(t, out),
            5 => tile::<S, 5>(t, out),
            6 => tile::<S, 6>(t, out),
            7 => tile::<S, 7>(t, out),
            8 => tile::<S, 8>(t, out),
            9 => tile::<S, 9>(t, out),
            10 => tile::<S, 10>(t, out),
            11 => tile::<S, 11>(t, out),
            12 => tile::<S, 12>(t, out),
            13 if S::TILE >= 13 => tile::<S, 13>(t, out),
            14 if S::TILE >= 14 => tile::<S, 14>(t, out),
            // Wider than any copy (not planned): pixel by pixel.
            _ => {
                for i in 0..width {
                    let one = Taps {
                        src: t.src.add(i * t.step),
                        ..*t
                    };
                    tile::<S, 1>(&one, out.add(i * S::L));
                }
            }
        }
    }
}

/// `out[i] = sum over taps (ky, kx) of wts[ky * kw + kx] * src[row(ky) +
/// kx * t.kx + i * t.step]` for the tile's `T` pixels `i`, `L` lanes each,
/// `row(ky)` the floats before ring row `(first + ky * dy) % ring`.
///
/// # Safety
/// Every read lies in the layout and weights; `out` holds `T * L` floats.
#[inline(always)]
unsafe fn tile<S: Simd, const T: usize>(t: &Taps, out: *mut f32) {
    // SAFETY: the caller's contract.
    unsafe {
        let mut acc = [S::zero(); T];
        let mut w = t.wts;
        let mut r = t.first;
        for _ in 0..t.kh {
            let row = t.src.add(r * t.row);
            r = t.next(r);
            for kx in 0..t.kw {
                let wv = S::load(w);
                w = w.add(S::L);
                let p = row.add(kx * t.kx);
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = S::fma(S::load(p.add(i * t.step)), wv, *a);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            S::store(out.add(i * S::L), *a);
        }
    }
}

/// [`tile`] for taps whose columns share loads: `KW` columns, no column
/// dilation, stride `SX`. Each of a tap row's `(T - 1) * SX + KW` layout
/// vectors is loaded once and multiplied into every pixel it feeds (pixel
/// `i`, tap `kx` with `i * SX + kx` its column), with the row's `KW`
/// weights in registers: about 3 (stride 1) or 1.5 (stride 2) times fewer
/// loads than one per multiply-add.
///
/// # Safety
/// As [`tile`].
#[inline(always)]
unsafe fn tile_row<S: Simd, const T: usize, const KW: usize, const SX: usize>(
    t: &Taps,
    out: *mut f32,
) {
    // SAFETY: the caller's contract (the same reads as `tile`'s).
    unsafe {
        let mut acc = [S::zero(); T];
        let mut w = t.wts;
        let mut r = t.first;
        for _ in 0..t.kh {
            let row = t.src.add(r * t.row);
            r = t.next(r);
            let mut wv = [S::zero(); KW];
            for (kx, v) in wv.iter_mut().enumerate() {
                *v = S::load(w.add(kx * S::L));
            }
            w = w.add(KW * S::L);
            // Written out column by column (every condition a constant),
            // so the accumulators stay registers: a loop this long is not
            // unrolled by the compiler.
            macro_rules! tap {
                ($v:ident, $j:literal, $($kx:literal)*) => {$(
                    let d = ($j as usize).wrapping_sub($kx);
                    if $kx < KW && $j >= $kx && d % SX == 0 && d / SX < T {
                        acc[d / SX] = S::fma($v, wv[$kx], acc[d / SX]);
                    }
                )*};
            }
            macro_rules! columns {
                ($($j:literal)*) => {$(
                    if $j < (T - 1) * SX + KW {
                        let v = S::load(row.add($j * S::L));
                        tap!(v, $j, 0 1 2 3 4);
                    }
                )*};
            }
            columns!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30);
        }
        for (i, a) in acc.iter().enumerate() {
            S::store(out.add(i * S::L), *a);
        }
    }
}

/// What differs between the ISAs' copies of the loop.
trait Simd {
    /// Lanes (channels) per vector.
    const L: usize;
    /// The widest tile of pixels whose accumulators fit the registers
    /// beside a weight vector.
    const TILE: usize;
    type V: Copy;
    /// `L` vectors.
    type Block: AsRef<[Self::V]>;
    fn zero() -> Self::V;
    /// # Safety
    /// `p` holds `L` floats.
    unsafe fn load(p: *const f32) -> Self::V;
    /// # Safety
    /// `p` holds `L` floats.
    unsafe fn store(p: *mut f32, v: Self::V);
    fn fma(a: Self::V, b: Self::V, acc: Self::V) -> Self::V;
    /// Floats `0..len` (`len <= L`) of the `nch` (at most `L`) rows
    /// `src + r * stride`, transposed: vector `j < len` holds float `j` of
    /// every row (zero past `nch`).
    ///
    /// # Safety
    /// The rows hold `len` floats each.
    unsafe fn transpose_in(src: *const f32, stride: usize, nch: usize, len: usize) -> Self::Block;
    /// The inverse: lane `r < nch` of the `len` vectors at `src` (`L`
    /// floats apart) into floats `0..len` of row `dst + r * stride`.
    ///
    /// # Safety
    /// `src` holds `len * L` floats; the rows `len` floats each.
    unsafe fn transpose_out(src: *const f32, dst: *mut f32, stride: usize, nch: usize, len: usize);
}

pub(super) mod x86 {
    use std::arch::x86_64::*;

    pub(super) struct Avx512;
    pub(super) struct Avx2;

    /// The first `n` (at most 16) lanes.
    #[inline(always)]
    fn mask16(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as u16
    }

    /// 16 vectors of 16 floats transposed: unpacks pair rows' floats,
    /// shuffles pair their pairs, and two 128-bit lane shuffles finish.
    #[inline(always)]
    pub(in crate::conv) unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        // SAFETY: only inlined into `avx512f` functions.
        unsafe {
            let mut t = [_mm512_setzero_ps(); 16];
            for i in 0..8 {
                t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
            }
            let mut u = [_mm512_setzero_ps(); 16];
            for q in 0..4 {
                let b = 4 * q;
                u[b] = _mm512_shuffle_ps::<0x44>(t[b], t[b + 2]);
                u[b + 1] = _mm512_shuffle_ps::<0xEE>(t[b], t[b + 2]);
                u[b + 2] = _mm512_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
                u[b + 3] = _mm512_shuffle_ps::<0xEE>(t[b + 1], t[b + 3]);
            }
            for i in 0..4 {
                t[i] = _mm512_shuffle_f32x4::<0x88>(u[i], u[i + 4]);
                t[i + 4] = _mm512_shuffle_f32x4::<0xDD>(u[i], u[i + 4]);
                t[i + 8] = _mm512_shuffle_f32x4::<0x88>(u[i + 8], u[i + 12]);
                t[i + 12] = _mm512_shuffle_f32x4::<0xDD>(u[i + 8], u[i + 12]);
            }
            for i in 0..8 {
                u[i] = _mm512_shuffle_f32x4::<0x88>(t[i], t[i + 8]);
                u[i + 8] = _mm512_shuffle_f32x4::<0xDD>(t[i], t[i + 8]);
            }
            u
        }
    }

    impl super::Simd for Avx512 {
        const L: usize = 16;
        /// 32 registers: 14 accumulators, a weight, room to spare.
        const TILE: usize = 14;
        type V = __m512;
        type Block = [__m512; 16];
        #[inline(always)]
        fn zero() -> __m512 {
            // SAFETY: only inlined into `avx512f` functions.
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        fn fma(a: __m512, b: __m512, acc: __m512) -> __m512 {
            // SAFETY: only inlined into `avx512f,fma` functions.
            unsafe { _mm512_fmadd_ps(a, b, acc) }
        }
        #[inline(always)]
        unsafe fn transpose_in(
            src: *const f32,
            stride: usize,
            nch: usize,
            len: usize,
        ) -> [__m512; 16] {
            // SAFETY: the masks keep reads within `len` floats of the
            // first `nch` rows.
            unsafe {
                if nch == 16 && len == 16 {
                    transpose16(std::array::from_fn(|i| {
                        _mm512_loadu_ps(src.add(i * stride))
                    }))
                } else {
                    let m = mask16(len);
                    transpose16(std::array::from_fn(|i| {
                        if i < nch {
                            _mm512_maskz_loadu_ps(m, src.add(i * stride))
                        } else {
                            _mm512_setzero_ps()
                        }
                    }))
                }
            }
        }
        #[inline(always)]
        unsafe fn transpose_out(
            src: *const f32,
            dst: *mut f32,
            stride: usize,
            nch: usize,
            len: usize,
        ) {
            // SAFETY: reads `len` vectors; the mask keeps writes within
            // `len` floats of the first `nch` rows.
            unsafe {
                let t = if len == 16 {
                    transpose16(std::array::from_fn(|i| _mm512_loadu_ps(src.add(i * 16))))
                } else {
                    transpose16(std::array::from_fn(|i| {
                        if i < len {
                            _mm512_loadu_ps(src.add(i * 16))
                        } else {
                            _mm512_setzero_ps()
                        }
                    }))
                };
                if len == 16 && nch == 16 {
                    for (i, v) in t.iter().enumerate() {
                        _mm512_storeu_ps(dst.add(i * stride), *v);
                    }
                } else {
                    let m = mask16(len);
                    for (i, v) in t.iter().enumerate() {
                        if i < nch {
                            _mm512_mask_storeu_ps(dst.add(i * stride), m, *v);
                        }
                    }
                }
            }
        }
    }

    /// 8 vectors of 8 floats transposed.
    #[inline(always)]
    unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        // SAFETY: only inlined into `avx` functions.
        unsafe {
            let mut t = [_mm256_setzero_ps(); 8];
            for i in 0..4 {
                t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
            }
            let mut u = [_mm256_setzero_ps(); 8];
            for q in 0..2 {
                let b = 4 * q;
                u[b] = _mm256_shuffle_ps::<0x44>(t[b], t[b + 2]);
                u[b + 1] = _mm256_shuffle_ps::<0xEE>(t[b], t[b + 2]);
                u[b + 2] = _mm256_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
                u[b + 3] = _mm256_shuffle_ps::<0xEE>(t[b + 1], t[b + 3]);
            }
            for i in 0..4 {
                t[i] = _mm256_permute2f128_ps::<0x20>(u[i], u[i + 4]);
                t[i + 4] = _mm256_permute2f128_ps::<0x31>(u[i], u[i + 4]);
            }
            t
        }
    }

    /// Lanes `0..n` (at most 8) set, for masked loads and stores.
    #[inline(always)]
    unsafe fn mask8(n: usize) -> __m256i {
        // SAFETY: only inlined into `avx2` functions.
        unsafe {
            let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), idx)
        }
    }

    impl super::Simd for Avx2 {
        const L: usize = 8;
        /// 16 registers: 8 accumulators, a row's 5 weights, and the rest.
        const TILE: usize = 8;
        type V = __m256;
        type Block = [__m256; 8];
        #[inline(always)]
        fn zero() -> __m256 {
            // SAFETY: only inlined into `avx2` functions.
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        fn fma(a: __m256, b: __m256, acc: __m256) -> __m256 {
            // SAFETY: only inlined into `avx2,fma` functions.
            unsafe { _mm256_fmadd_ps(a, b, acc) }
        }
        #[inline(always)]
        unsafe fn transpose_in(
            src: *const f32,
            stride: usize,
            nch: usize,
            len: usize,
        ) -> [__m256; 8] {
            // SAFETY: full loads only where `len` is 8; masked loads
            // (which do not fault past the mask) otherwise.
            unsafe {
                if len == 8 && nch == 8 {
                    transpose8(std::array::from_fn(|i| {
                        _mm256_loadu_ps(src.add(i * stride))
                    }))
                } else {
                    let m = mask8(len);
                    transpose8(std::array::from_fn(|i| {
                        if i < nch {
                            _mm256_maskload_ps(src.add(i * stride), m)
                        } else {
                            _mm256_setzero_ps()
                        }
                    }))
                }
            }
        }
        #[inline(always)]
        unsafe fn transpose_out(
            src: *const f32,
            dst: *mut f32,
            stride: usize,
            nch: usize,
            len: usize,
        ) {
            // SAFETY: reads `len` vectors; full stores only where `len`
            // is 8, masked ones otherwise, to the first `nch` rows.
            unsafe {
                let t = transpose8(std::array::from_fn(|i| {
                    if i < len {
                        _mm256_loadu_ps(src.add(i * 8))
                    } else {
                        _mm256_setzero_ps()
                    }
                }));
                if len == 8 && nch == 8 {
                    for (i, v) in t.iter().enumerate() {
                        _mm256_storeu_ps(dst.add(i * stride), *v);
                    }
                } else {
                    let m = mask8(len);
                    for (i, v) in t.iter().enumerate() {
                        if i < nch {
                            _mm256_maskstore_ps(dst.add(i * stride), m, *v);
                        }
                    }
                }
            }
        }
    }
}

/// The widest copy the host has and `avx512` allows; `None` without AVX2
/// and FMA.
fn detect(avx512: bool) -> Option<Isa> {
    if avx512 && std::arch::is_x86_feature_detected!("avx512f") {
        return Some(Isa::Avx512);
    }
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return Some(Isa::Avx2);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan against a plain loop, on every ISA the host has: partial
    /// channel blocks, strides, dilations, asymmetric padding, several
    /// images, rows wider than one tile, epilogue ranges.
    #[test]
    fn matches_a_plain_loop() {
        // n, c, h, w, k [kh, kw], stride, padding [t, l, b, r], dilation
        let shapes = [
            (1, 40, [7, 7], [5, 5], [1, 1], [2, 2, 2, 2], [1, 1]),
            (2, 24, [14, 14], [3, 3], [2, 2], [1, 1, 1, 1], [1, 1]),
            (1, 17, [13, 31], [3, 5], [2, 1], [0, 2, 1, 3], [2, 1]),
            (3, 8, [9, 9], [3, 3], [1, 2], [1, 0, 2, 1], [2, 2]),
            (1, 33, [30, 30], [5, 5], [2, 2], [2, 2, 2, 2], [1, 1]),
            (1, 5, [1, 1], [3, 3], [1, 1], [1, 1, 1, 1], [1, 1]),
            (1, 16, [6, 5], [1, 1], [1, 1], [0, 0, 0, 0], [1, 1]),
            // Planes of whole vectors: runs aligned to the input's and
            // output's offsets (shifted below).
            (1, 20, [8, 8], [3, 3], [1, 1], [1, 1, 1, 1], [1, 1]),
            (2, 48, [16, 12], [3, 3], [2, 1], [1, 1, 1, 1], [1, 1]),
        ];
        for (n, c, [h, w], [kh, kw], [sy, sx], pad, [dy, dx]) in shapes {
            let oh = (h + pad[0] + pad[2] - (kh - 1) * dy - 1) / sy + 1;
            let ow = (w + pad[1] + pad[3] - (kw - 1) * dx - 1) / sx + 1;
            let x: Vec<f32> = (0..n * c * h * w)
                .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
                .collect();
            let wt: Vec<f32> = (0..c * kh * kw)
                .map(|i| ((i * 53) % 97) as f32 / 48.0 - 1.0)
                .collect();
            let mut want = vec![0f32; n * c * oh * ow];
            for b in 0..n {
                for ch in 0..c {
                    for y in 0..oh {
                        for xo in 0..ow {
                            let mut s = 0f32;
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (y * sy + ky * dy) as isize - pad[0] as isize;
                                    let ix = (xo * sx + kx * dx) as isize - pad[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let xi = ((b * c + ch) * h + iy as usize) * w + ix as usize;
                                    s += x[xi] * wt[(ch * kh + ky) * kw + kx];
                                }
                            }
                            want[((b * c + ch) * oh + y) * ow + xo] = s;
                        }
                    }
                }
            }
            // Weights packed per run or once; buffers at several offsets
            // from a cache line; one thread and two.
            let ways = [(false, 0, 1), (true, 1, 1), (true, 3, 2), (false, 6, 2)];
            for avx512 in [true, false] {
                for (prepack, shift, threads) in ways {
                    let Some(mut d) = Depthwise::new(
                        [n, c, h, w],
                        [c, 1, kh, kw],
                        [oh, ow],
                        [sy, sx],
                        pad,
                        [dy, dx],
                        c,
                        avx512,
                    ) else {
                        continue;
                    };
                    if prepack {
                        unsafe { d.prepack(wt.as_ptr()) };
                    }
                    let seen = std::sync::Mutex::new(vec![0usize; n * c]);
                    let hook = |b: usize, r: std::ops::Range<usize>| {
                        let mut s = seen.lock().unwrap();
                        for ch in r {
                            s[b * c + ch] += 1;
                        }
                    };
                    let mut xs = vec![0f32; shift];
                    xs.extend(&x);
                    let mut got = vec![f32::NAN; shift + want.len()];
                    let par = match threads {
                        1 => gemm::Parallelism::None,
                        t => gemm::Parallelism::Rayon(t),
                    };
                    // Twice: the second run reuses the scratch.
                    for _ in 0..2 {
                        let applied = unsafe {
                            d.run(
                                got.as_mut_ptr().add(shift),
                                xs.as_ptr().add(shift),
                                wt.as_ptr(),
                                par,
                                Some(&hook),
                            )
                        };
                        // Not applied (several images, or bands of rows,
                        // split across threads): the executor's epilogue.
                        if !applied {
                            let mut s = seen.lock().unwrap();
                            s.iter_mut().for_each(|k| *k += 1);
                        }
                    }
                    assert!(seen.lock().unwrap().iter().all(|&k| k == 2));
                    for (i, (g, r)) in got[shift..].iter().zip(&want).enumerate() {
                        assert!(
                            (g - r).abs() <= 1e-4,
                            "{:?} n{n} c{c} {h}x{w} k{kh}x{kw} s{sy}{sx} d{dy}{dx} {pad:?} \
                             shift {shift} threads {threads}: element {i}: {g} vs {r}",
                            d.isa
                        );
                    }
                }
            }
        }
    }
}
