//! 2-D convolution. f32 3x3 stride-1 convolutions of one group run as
//! Winograd F(2x2, 3x3) (`conv_winograd.rs`) on AVX2 hosts where that
//! measured faster; other f32 convolutions of one channel group run the
//! direct kernel of `conv_direct.rs` where it pays, depthwise ones
//! the channel-vectorised kernel of `conv_depthwise.rs` (AVX-512 or AVX2),
//! other grouped ones with few channels per group the direct kernel of
//! `conv_grouped.rs` (AVX-512, AVX2 or plain); the rest run as
//! im2col + GEMM (the `gemm` crate), one image and group at a time, into a
//! column buffer allocated once at compile time. A 1x1 convolution with
//! stride 1 and no padding multiplies the input directly.

use crate::Real;

#[cfg(target_arch = "x86_64")]
#[path = "conv_depthwise.rs"]
mod depthwise;
#[cfg(target_arch = "x86_64")]
#[path = "conv_direct.rs"]
mod direct;
#[path = "conv_grouped.rs"]
mod grouped;
#[cfg(target_arch = "x86_64")]
#[path = "conv_winograd.rs"]
mod winograd;

/// Called with an image and a range of its output channels once they are
/// computed (each channel of each image exactly once, possibly from
/// several threads): the convolution's epilogue, applied while the
/// channels are in cache.
pub type Epilogue<'a> = dyn Fn(usize, std::ops::Range<usize>) + Sync + 'a;

/// A compiled convolution of f32 or f64 NCHW tensors.
pub struct Conv {
    pub dtype: Real,
    /// Input dims `[n, c, h, w]`.
    pub input: [usize; 4],
    /// Weight dims `[o, c/groups, kh, kw]`.
    pub weight: [usize; 4],
    /// Output spatial dims.
    pub out_hw: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 4],
    pub dilation: [usize; 2],
    pub groups: usize,
    /// Winograd F(2x2, 3x3), where it applies and measures faster.
    #[cfg(target_arch = "x86_64")]
    winograd: Option<Box<winograd::Winograd>>,
    /// The direct AVX-512 path, where it applies and measures faster.
    #[cfg(target_arch = "x86_64")]
    direct: Option<Box<direct::Direct>>,
    /// The channel-vectorised depthwise kernel, where it measures faster.
    #[cfg(target_arch = "x86_64")]
    depthwise: Option<Box<depthwise::Depthwise>>,
    /// The direct grouped (depthwise) kernel, for f32 with groups.
    grouped: Option<Box<grouped::Grouped>>,
    /// How constant weights are packed for kiln's own GEMM (`sgemm.rs`),
    /// where that beats the `gemm` crate: f32, one group, not direct, on
    /// AVX-512 hosts.
    #[cfg(target_arch = "x86_64")]
    packs: Option<(Orient, crate::sgemm::Isa)>,
    /// Those weights, packed once (shared by forks).
    #[cfg(target_arch = "x86_64")]
    packed: Option<Packed>,
}

/// Which way round a convolution's product runs on kiln's GEMM, whose
/// 12 x 32 tile vectorises its 32 columns and computes only the rows there
/// are.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Orient {
    /// `out[o, pixels] = w[o, k] @ columns[k, pixels]`: pixels in lanes,
    /// for planes that fill 32-lane panels (56x56: 98 panels exactly).
    Channels,
    /// `out^T[pixels, o] = columns^T @ w^T`: output channels in lanes, for
    /// small planes that would waste lanes (7x7 is 49 of 64), then
    /// transposed into place.
    Pixels,
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone)]
enum Packed {
    Channels(std::sync::Arc<crate::sgemm::PackedA>),
    Pixels(std::sync::Arc<crate::sgemm::PackedB>),
}

impl Conv {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dtype: Real,
        input: [usize; 4],
        weight: [usize; 4],
        out_hw: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 4],
        dilation: [usize; 2],
        groups: usize,
        settings: crate::settings::Settings,
    ) -> Conv {
        #[cfg(target_arch = "x86_64")]
        let winograd = if dtype == Real::F32 && groups == 1 {
            winograd::Winograd::new(
                input,
                weight,
                out_hw,
                stride,
                padding,
                dilation,
                settings.avx512,
            )
            .filter(|w| {
                Self::winograd_pays(
                    input,
                    weight,
                    w.flat(),
                    settings.conv,
                    crate::sgemm::isa(settings.avx512) == Some(crate::sgemm::Isa::Avx512),
                )
            })
            .map(Box::new)
        } else {
            None
        };
        #[cfg(target_arch = "x86_64")]
        let direct = if dtype == Real::F32
            && groups == 1
            && winograd.is_none()
            && Self::direct_pays(
                weight,
                out_hw,
                stride,
                padding,
                dilation,
                settings.conv,
                crate::sgemm::isa(settings.avx512) == Some(crate::sgemm::Isa::Avx512),
            ) {
            direct::Direct::new(
                input,
                weight,
                out_hw,
                stride,
                padding,
                dilation,
                settings.avx512,
            )
            .map(Box::new)
        } else {
            None
        };
        #[cfg(target_arch = "x86_64")]
        let depthwise = if dtype == Real::F32 {
            depthwise::Depthwise::new(
                input,
                weight,
                out_hw,
                stride,
                padding,
                dilation,
                groups,
                settings.avx512,
            )
            .filter(|d| Self::depthwise_pays(input[1], d.lanes(), out_hw, settings.conv))
            .map(Box::new)
        } else {
            None
        };
        #[cfg(target_arch = "x86_64")]
        let planned = depthwise.is_some();
        #[cfg(not(target_arch = "x86_64"))]
        let planned = false;
        let grouped = if dtype == Real::F32
            && groups > 1
            && !planned
            && Self::grouped_pays(weight, settings.conv)
        {
            grouped::Grouped::new(
                input,
                weight,
                out_hw,
                stride,
                padding,
                dilation,
                groups,
                settings.avx512,
            )
            .map(Box::new)
        } else {
            None
        };
        #[cfg(target_arch = "x86_64")]
        // A Zen 4 only: on AVX2 (a Zen 1) the `gemm` crate measured faster
        // through convolutions than kiln's 6 x 16 tiles with the whole
        // image's columns packed first (ResNet-18's 56x56 3x3 layers 7.6
        // vs 9.0 ms), while dense layers gain from weights packed once;
        // and on a Zen 5, whose 512-bit units are whole, than kiln's 12 x
        // 32 AVX-512 tiles (12 broadcasts per 24 multiply-adds, against the
        // crate's 6): ResNet-50 b1 one thread 50-54 -> 47.7-48.5 ms, two
        // 32.5 -> 26.6, its 7x7 layers 1.8-1.9 -> 1.5 ms each.
        let packs = crate::sgemm::isa(settings.avx512)
            .filter(|&isa| {
                isa == crate::sgemm::Isa::Avx512
                    && crate::zen4()
                    && dtype == Real::F32
                    && groups == 1
                    && direct.is_none()
                    && winograd.is_none()
                    && settings.conv != crate::settings::ConvPath::Direct
            })
            .and_then(|isa| Some((Self::orient(weight[0], out_hw[0] * out_hw[1])?, isa)));
        Conv {
            dtype,
            input,
            weight,
            out_hw,
            stride,
            padding,
            dilation,
            groups,
            #[cfg(target_arch = "x86_64")]
            winograd,
            #[cfg(target_arch = "x86_64")]
            direct,
            #[cfg(target_arch = "x86_64")]
            depthwise,
            grouped,
            #[cfg(target_arch = "x86_64")]
            packs,
            #[cfg(target_arch = "x86_64")]
            packed: None,
        }
    }

    /// The GEMM orientation for `o` output channels of `pixels` each, or
    /// `None` where the `gemm` crate measures faster: the way round whose
    /// 32-lane panels waste fewer lanes, if that is clearly fewer; else
    /// pixels in lanes for large planes.
    #[cfg(target_arch = "x86_64")]
    fn orient(o: usize, pixels: usize) -> Option<Orient> {
        let used = |n: usize| n as f64 / n.next_multiple_of(32) as f64;
        if used(o) > used(pixels) + 0.15 {
            Some(Orient::Pixels)
        } else if pixels >= 1024 {
            Some(Orient::Channels)
        } else {
            None
        }
    }

    /// Whether the channel-vectorised depthwise kernel, with vectors of
    /// `lanes` of the `c` channels, beats the grouped kernel (which
    /// vectorises over one channel's plane).
    ///
    /// Measured on a Zen 4 (AVX-512), single-layer models with their bias,
    /// grouped vs depthwise kernel, one thread (us): 7x7x1152 5x5 139 vs
    /// 55, stride 2 99 vs 28; 14x14x672 5x5 215 vs 135, 3x3 stride 2 77 vs
    /// 39; 28x28x240 5x5 228 vs 151, 3x3 126 vs 98; 56x56x144 3x3 279 vs
    /// 229, 5x5 stride 2 188 vs 135; 112x112x32 3x3 241 vs 196, stride 2
    /// 108 vs 92; 112x112x96 5x5 1384 vs 951; 56x56x8 3x3 15.6 vs 12.8:
    /// faster on all 58 shapes tried (planes 7 to 112, kernels 3 and 5,
    /// strides 1 and 2, 8 to 1152 channels), by 1.15x to 3.5x (1.5x
    /// geometric mean). Two threads, split forced: 7x7x1152 5x5 88 vs 30,
    /// 14x14x672 5x5 118 vs 75, 28x28x240 5x5 121 vs 93, 56x56x144 3x3 165
    /// vs 143, 112x112x32 3x3 192 vs 166 (one or three channel blocks of
    /// a large plane go in bands of rows, and come out about even).
    /// Empty lanes of the last block cost their share: 24 channels in
    /// 16 lanes (a quarter empty) gave 112x112 stride 2 80 vs 94 and
    /// 56x56 45 vs 47, though still 28x28 13.2 vs 12.5 and 14x14 3.7 vs
    /// 2.4; 8 channels in 16 lanes lost from 28x28 up (56x56 15.7 vs
    /// 21.4). (Such counts now take 8-lane vectors.) Hence: wherever at
    /// most 1/8 of the lanes are empty, or a quarter for output planes up
    /// to 28x28. `path` (`KILN_CONV`) overrides the rule as for the others.
    fn depthwise_pays(
        c: usize,
        lanes: usize,
        out_hw: [usize; 2],
        path: crate::settings::ConvPath,
    ) -> bool {
        use crate::settings::ConvPath;
        match path {
            ConvPath::Gemm => false,
            ConvPath::Direct => true,
            ConvPath::Measured | ConvPath::Winograd => {
                let padded = c.next_multiple_of(lanes);
                let waste = padded - c;
                8 * waste <= padded || (4 * waste <= padded && out_hw[0] * out_hw[1] <= 784)
            }
        }
    }

    /// Whether Winograd F(2x2, 3x3) beats the direct kernel and im2col +
    /// GEMM, for a plan that is `flat` or not.
    ///
    /// Measured on a Zen 1 (AVX2), one thread, single layers with bias and
    /// ReLU, direct vs Winograd (ms): 56x56 64->64 6.2 vs 4.3, 28x28
    /// 128->128 6.2 vs 3.3, 14x14 256->256 6.3 vs 3.9; two threads 3.8 vs
    /// 2.4 and 3.5 vs 2.4; but 7x7 512->512 7.1 vs 23.8 (4 tiles a row in
    /// vectors of 8 on the padded plan: half of every product wasted, and
    /// the 16 transformed weight matrices, 16 MiB, streamed per block). ResNet-18 b1 t1 went
    /// 0.83 -> 1.05 of ONNX Runtime. The flat plan for such small planes
    /// (`Winograd::flat`) does better: 7x7 512->512 6.6 vs 7.6 (three
    /// runs each way). Hence: at least 16 channels in and out, and for the
    /// flat plan at least 256 (its tile-by-tile transforms cost more
    /// beside fewer channels).
    ///
    /// On AVX-512 (Zen 5, one thread, ResNet-18's layers in the model,
    /// direct vs Winograd, us): 56x56 64->64 1100-1134 vs 944-969, 28x28
    /// 128->128 1096-1126 vs 779-804; but 14x14 256->256 1147-1199 vs
    /// 1776-1836 (im2col + GEMM 1280-1295) and 7x7 512->512 (GEMM 1589-1695)
    /// 2878-2937. ResNet-18 b1 went 22.3 -> 20.7 ms, b8 184-197 -> 155-165.
    /// Hence there: planes of at least 28x28, never the flat plan.
    /// `path` overrides: `KILN_CONV=winograd` wherever it applies, `gemm`
    /// and `direct` never.
    fn winograd_pays(
        input: [usize; 4],
        weight: [usize; 4],
        flat: bool,
        path: crate::settings::ConvPath,
        avx512: bool,
    ) -> bool {
        use crate::settings::ConvPath;
        match path {
            ConvPath::Winograd => true,
            ConvPath::Gemm | ConvPath::Direct => false,
            ConvPath::Measured => {
                let (c, o) = (input[1], weight[0]);
                let plane = input[2] * input[3];
                if avx512 {
                    c >= 16 && o >= 16 && !flat && plane >= 28 * 28
                } else {
                    c >= 16 && o >= 16 && (!flat || c.min(o) >= 256)
                }
            }
        }
    }

    /// Whether the direct grouped kernel beats one im2col + GEMM per group:
    /// for few input channels per group (depthwise: one), where each
    /// group's product is too small for GEMM blocking to pay.
    fn grouped_pays(weight: [usize; 4], path: crate::settings::ConvPath) -> bool {
        use crate::settings::ConvPath;
        match path {
            ConvPath::Gemm => false,
            ConvPath::Direct => true,
            ConvPath::Measured | ConvPath::Winograd => weight[1] <= 16,
        }
    }

    /// Whether the direct kernel beats im2col + GEMM for this shape.
    ///
    /// Measured one thread, Zen 5 (direct vs GEMM, us): 3x3 16->16 on 32x32
    /// 19.4 vs 35.7, 16->32 stride 2 12.3 vs 21.1, 32->32 on 16x16 21.3 vs
    /// 35.4, 64->64 on 14x14 72 vs 96, on 12x12 64 vs 70, but on 8x8 46 vs
    /// 35 and 4x4 110 vs 50 (a pixel vector is one output row, so narrow
    /// rows waste lanes); 256->256 on 14x14 equal, 512->512 on 16x16 6.5 ms
    /// vs 5.2 ms (long reductions favour GEMM's blocking); 1x1 stride 1
    /// unpadded (GEMM on the input itself) 35 vs 30. Hence: output rows of
    /// at least 12, at most 2304 taps per output, and not a plain 1x1.
    ///
    /// On AVX2 (Zen 1, one thread, ResNet-18's layers, direct vs GEMM, ms):
    /// the 7x7 stride-2 stem 6.6 vs 8.0, 3x3 64->64 on 56x56 (576 taps)
    /// 5.95 vs 7.2; but 128->128 on 28x28 (1152 taps) 6.0 vs 6.1, 256 on
    /// 14x14 6.06 vs 5.99, 512 on 7x7 6.8 vs 6.8 (a block's weights, taps
    /// x 6 channels, outgrow the 32 KiB L1 and stream from L2 for every two
    /// pixel vectors), and stride 2 onto 28x28 4.4 vs 3.1, 1x1 stride 2
    /// 1.09 vs 0.44 (rows of a few vectors, partly empty), MobileNet's
    /// 3x3 stride-2 stem (27 taps, 112x112) 1.71 vs 1.02 (too few taps to
    /// pay for the stores and the deinterleaving copy). Hence there: at
    /// most 1152 taps; stride 1, or output rows of at least 56 and at
    /// least 100 taps.
    /// `path` (`KILN_CONV=gemm` or `direct`) overrides the rule.
    fn direct_pays(
        weight: [usize; 4],
        out_hw: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 4],
        dilation: [usize; 2],
        path: crate::settings::ConvPath,
        avx512: bool,
    ) -> bool {
        use crate::settings::ConvPath;
        let taps = weight[1] * weight[2] * weight[3];
        match path {
            ConvPath::Gemm => false,
            ConvPath::Direct => true,
            ConvPath::Measured | ConvPath::Winograd => {
                let shape = if avx512 {
                    taps <= 2304
                } else {
                    taps <= 1152 && (stride[1] == 1 || (out_hw[1] >= 56 && taps >= 100))
                };
                out_hw[1] >= 12 && shape && !Self::is_direct(weight, stride, padding, dilation)
            }
        }
    }

    fn is_direct(
        weight: [usize; 4],
        stride: [usize; 2],
        padding: [usize; 4],
        dilation: [usize; 2],
    ) -> bool {
        weight[2] == 1
            && weight[3] == 1
            && stride == [1, 1]
            && padding == [0; 4]
            && dilation == [1, 1]
    }

    /// Packs constant weights once, where the kernel packs them at all.
    ///
    /// # Safety
    /// `w` must point at the weights, which must not change afterwards.
    pub unsafe fn prepack(&mut self, w: *const u8) {
        #[cfg(target_arch = "x86_64")]
        if let Some(d) = &mut self.winograd {
            unsafe { d.prepack(w as *const f32) };
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(d) = &mut self.direct {
            unsafe { d.prepack(w as *const f32) };
        }
        #[cfg(target_arch = "x86_64")]
        if let Some((orient, isa)) = self.packs {
            use std::sync::Arc;
            let [o, cg, kh, kw] = self.weight;
            let k = cg * kh * kw;
            self.packed = Some(match orient {
                Orient::Channels => {
                    let a = crate::sgemm::Lhs::new(w as *const f32, k as isize, 1, o);
                    // SAFETY: the weights `[o, k]`, as the caller promises.
                    Packed::Channels(Arc::new(unsafe { crate::sgemm::PackedA::new(a, k, isa) }))
                }
                Orient::Pixels => {
                    // SAFETY: as above.
                    let w = unsafe { std::slice::from_raw_parts(w as *const f32, o * k) };
                    Packed::Pixels(Arc::new(crate::sgemm::PackedB::new(w, 1, k, k, o, isa)))
                }
            });
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(d) = &mut self.depthwise {
            unsafe { d.prepack(w as *const f32) };
        }
        let _ = w;
    }

    /// A copy for another concurrent caller: the plan and any packed
    /// weights are shared, the direct kernel's padded images its own.
    pub fn fork(&self) -> Conv {
        Conv {
            dtype: self.dtype,
            input: self.input,
            weight: self.weight,
            out_hw: self.out_hw,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups: self.groups,
            #[cfg(target_arch = "x86_64")]
            winograd: self.winograd.as_ref().map(|d| Box::new(d.fork())),
            #[cfg(target_arch = "x86_64")]
            direct: self.direct.as_ref().map(|d| Box::new(d.fork())),
            #[cfg(target_arch = "x86_64")]
            depthwise: self.depthwise.as_ref().map(|d| Box::new(d.fork())),
            grouped: self.grouped.as_ref().map(|g| Box::new(g.fork())),
            #[cfg(target_arch = "x86_64")]
            packs: self.packs,
            #[cfg(target_arch = "x86_64")]
            packed: self.packed.clone(),
        }
    }

    /// True when the run hands work to the `gemm` crate's own threads
    /// (one image through im2col), which must then run in a rayon pool.
    pub fn uses_rayon(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self.direct.is_some()
            || self.depthwise.is_some()
            || self.packed.is_some()
            || self.winograd.is_some()
        {
            return false;
        }
        // One image of one group splits its output channels across the
        // team (`run_typed`); with several groups, the `gemm` crate splits.
        self.grouped.is_none() && self.input[0] < 2 && self.groups > 1
    }

    /// Runs the convolution; returns whether it applied `epilogue` (called
    /// per image and output channel range as they are done) itself.
    /// `columns` holds im2col's column matrices (`[c/groups * kh * kw,
    /// oh * ow]` per thread, as f64 slots), grown as needed: the run's
    /// scratch, shared by its steps.
    ///
    /// # Safety
    /// `out`, `x` and `w` must point at buffers of this convolution's shapes and dtype.
    pub unsafe fn run(
        &mut self,
        out: *mut u8,
        x: *const u8,
        w: *const u8,
        parallelism: gemm::Parallelism,
        epilogue: Option<&Epilogue<'_>>,
        columns: &mut Vec<f64>,
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let Some(d) = &mut self.winograd {
            // SAFETY: f32 buffers of the plan's shapes (the caller's contract).
            return unsafe {
                d.run(
                    out as *mut f32,
                    x as *const f32,
                    w as *const f32,
                    parallelism,
                )
            };
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(d) = &mut self.direct {
            // SAFETY: f32 buffers of the plan's shapes (the caller's contract).
            return unsafe {
                d.run(
                    out as *mut f32,
                    x as *const f32,
                    w as *const f32,
                    parallelism,
                    epilogue,
                )
            };
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(p) = self.packed.clone() {
            let (out, x) = (out as *mut f32, x as *const f32);
            // SAFETY: f32 buffers of the plan's shapes (the caller's contract).
            return unsafe {
                match &p {
                    Packed::Channels(a) => {
                        self.run_packed(a, out, x, parallelism, epilogue, columns)
                    }
                    Packed::Pixels(b) => self.run_pixels(b, out, x, parallelism, epilogue, columns),
                }
            };
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(d) = &mut self.depthwise {
            // SAFETY: f32 buffers of the plan's shapes (the caller's contract).
            return unsafe {
                d.run(
                    out as *mut f32,
                    x as *const f32,
                    w as *const f32,
                    parallelism,
                    epilogue,
                )
            };
        }
        if let Some(g) = &mut self.grouped {
            // SAFETY: f32 buffers of the plan's shapes (the caller's contract).
            return unsafe {
                g.run(
                    out as *mut f32,
                    x as *const f32,
                    w as *const f32,
                    parallelism,
                    epilogue,
                )
            };
        }
        match self.dtype {
            Real::F32 => unsafe {
                self.run_typed::<f32>(
                    out as *mut f32,
                    x as *const f32,
                    w as *const f32,
                    parallelism,
                    columns,
                    epilogue,
                )
            },
            _ => unsafe {
                self.run_typed::<f64>(
                    out as *mut f64,
                    x as *const f64,
                    w as *const f64,
                    parallelism,
                    columns,
                    epilogue,
                )
            },
        }
    }

    unsafe fn run_typed<T: Float>(
        &mut self,
        out: *mut T,
        x: *const T,
        w: *const T,
        par: gemm::Parallelism,
        columns: &mut Vec<f64>,
        epilogue: Option<&Epilogue<'_>>,
    ) -> bool {
        let n = self.input[0];
        let team = super::team::Team::global();
        let team_threads = team_threads(par);
        let [oh, ow] = self.out_hw;
        let (o, k) = (self.weight[0], self.scratch_len() / (oh * ow).max(1));
        if n == 1
            && self.groups == 1
            && team_threads > 1
            && oh >= 2 * team_threads
            && oh * ow > o
            && k > 0
        {
            // One image whose columns outweigh its weights (a large plane):
            // bands of output rows across the team, each thread writing
            // its band's columns and multiplying all the weights by them,
            // so the columns are written in parallel, each band while it
            // is in cache. The epilogue is left to the caller (it runs by
            // channels).
            let per = self.scratch_len();
            if columns.len() < per {
                columns.resize(per, 0.0);
            }
            let col = SendPtr(columns.as_ptr() as *mut T);
            let parts = team_threads.min(oh);
            let (out, x, w) = (SendPtr(out), SendPtr(x as *mut T), SendPtr(w as *mut T));
            team.run(parts, &|t| {
                let (out, x, w, col) = (out, x, w, col);
                let ys = oh * t / parts..oh * (t + 1) / parts;
                // SAFETY: part t owns output rows `ys` of every channel and
                // the columns' slots from `ys.start * ow * k` on.
                unsafe {
                    let band = col.0.add(ys.start * ow * k);
                    let (src, rs) = self.columns_rows(0, 0, x.0, band, ys.clone());
                    let pixels = ys.len() * ow;
                    gemm::gemm(
                        o,
                        pixels,
                        k,
                        out.0.add(ys.start * ow),
                        1,
                        (oh * ow) as isize,
                        false,
                        w.0,
                        1,
                        k as isize,
                        src,
                        1,
                        rs as isize,
                        T::ZERO,
                        T::ONE,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
            return false;
        }
        if n == 1 && self.groups == 1 && team_threads > 1 {
            // One image: its columns once, then blocks of output channels
            // across the team, each block's epilogue as soon as it is done.
            let per = self.scratch_len();
            if columns.len() < per {
                columns.resize(per, 0.0);
            }
            let col = columns.as_ptr() as *mut T;
            // SAFETY: the caller's pointers; the column buffer holds `per` slots.
            let src = SendPtr(unsafe { self.columns(0, 0, x, col) } as *mut T);
            let o = self.weight[0];
            let parts = team_threads.min(o.div_ceil(8));
            let (out, w) = (SendPtr(out), SendPtr(w as *mut T));
            team.run(parts, &|t| {
                let (out, w, src) = (out, w, src);
                let (lo, hi) = (o * t / parts, o * (t + 1) / parts);
                // SAFETY: part t owns output channels lo..hi.
                unsafe { self.product(0, 0, lo..hi, out.0, w.0, src.0, gemm::Parallelism::None) };
                if let Some(e) = epilogue {
                    e(0, lo..hi);
                }
            });
            return epilogue.is_some();
        }
        let threads = if n >= 2 { team_threads.min(n) } else { 1 };
        let per = self.scratch_len();
        if columns.len() < per * threads {
            columns.resize(per * threads, 0.0);
        }
        let columns = &*columns;
        let this = &*self;
        let (out, x, w) = (SendPtr(out), SendPtr(x as *mut T), SendPtr(w as *mut T));
        if threads == 1 {
            let col = SendPtr(columns.as_ptr() as *mut T);
            // SAFETY: the caller's pointers are valid; the column buffer holds `per` slots.
            unsafe { this.images(0..n, out, x, w, col, par) };
            return false;
        }
        // Images split across threads, each with its own column buffer and a
        // single-threaded GEMM.
        super::team::Team::global().run(threads, &|t| {
            let (out, x, w) = (out, x, w);
            let (lo, hi) = (n * t / threads, n * (t + 1) / threads);
            // SAFETY: part t owns column slots [t*per, (t+1)*per) and output images lo..hi.
            let col = SendPtr(unsafe { (columns.as_ptr() as *mut T).add(t * per) });
            unsafe { this.images(lo..hi, out, x, w, col, gemm::Parallelism::None) };
        });
        false
    }

    /// The convolution as kiln's own GEMM against the weights packed once:
    /// per image, its im2col columns (or the input itself, for a plain
    /// 1x1) packed into 32-column panels, then 12-channel blocks of the
    /// output.
    ///
    /// # Safety
    /// The buffers of the plan's shapes.
    #[cfg(target_arch = "x86_64")]
    unsafe fn run_packed(
        &self,
        a: &crate::sgemm::PackedA,
        out: *mut f32,
        x: *const f32,
        par: gemm::Parallelism,
        epilogue: Option<&Epilogue<'_>>,
        columns: &mut Vec<f64>,
    ) -> bool {
        use crate::sgemm;
        let k = self.weight[1] * self.weight[2] * self.weight[3];
        let cols = self.out_hw[0] * self.out_hw[1];
        let pack_len = sgemm::packed_len(k, cols);
        let x = SendPtr(x as *mut f32);
        // Image b's panels, after its columns in `col`.
        let prepare = |b: usize, col: *mut f32, _threads: usize| -> *mut f32 {
            let input = x;
            // SAFETY: the slot holds the columns and the panels; the input
            // holds image b.
            unsafe {
                let panels = col.add(self.scratch_len());
                let src = self.columns(b, 0, input.0 as *const f32, col);
                let dst = std::slice::from_raw_parts_mut(panels, pack_len);
                sgemm::pack_into(dst, src, cols as isize, 1, k, cols);
                panels
            }
        };
        // SAFETY: channels of one image's output, from its panels.
        let finish = |panels: *mut f32, image: *mut f32, chans: std::ops::Range<usize>| unsafe {
            sgemm::packed_rows(a, chans, panels, cols, image)
        };
        // SAFETY: the caller's contract.
        unsafe { self.run_own(pack_len, 12, out, par, epilogue, columns, &prepare, &finish) }
    }

    /// The convolution with pixels as the GEMM's rows (see
    /// [`Orient::Pixels`]): per image, the product `[pixels, o]` of the
    /// columns (transposed) and the weights packed once, then transposed
    /// into the output by channel ranges.
    ///
    /// # Safety
    /// The buffers of the plan's shapes.
    #[cfg(target_arch = "x86_64")]
    unsafe fn run_pixels(
        &self,
        w: &crate::sgemm::PackedB,
        out: *mut f32,
        x: *const f32,
        par: gemm::Parallelism,
        epilogue: Option<&Epilogue<'_>>,
        columns: &mut Vec<f64>,
    ) -> bool {
        use crate::sgemm;
        let o = self.weight[0];
        let pixels = self.out_hw[0] * self.out_hw[1];
        let k = self.weight[1] * self.weight[2] * self.weight[3];
        let x = SendPtr(x as *mut f32);
        // Image b's product `[pixels, o]` (on up to `threads`), after its
        // columns and their transpose in `col`.
        let prepare = |b: usize, col: *mut f32, threads: usize| -> *mut f32 {
            let input = x;
            // SAFETY: the slot holds the columns, their transpose and the
            // product; the input holds image b.
            unsafe {
                let rows = col.add(self.scratch_len());
                let prod = rows.add(pixels * k);
                let src = self.columns(b, 0, input.0 as *const f32, col);
                transpose_block(src, pixels, rows, k, k, pixels);
                let a = sgemm::Lhs::new(rows, k as isize, 1, pixels);
                sgemm::matmul(a, w, prod, threads, threads > 1, None);
                prod
            }
        };
        // SAFETY: channels of one image's output, from its product.
        let finish = |prod: *mut f32, image: *mut f32, chans: std::ops::Range<usize>| unsafe {
            transpose(prod, image, pixels, o, chans)
        };
        let extra = pixels * k + pixels * o;
        // SAFETY: the caller's contract.
        unsafe { self.run_own(extra, 16, out, par, epilogue, columns, &prepare, &finish) }
    }

    /// What both ways round share: per image, `prepare(b, slot, threads)`
    /// fills a scratch slot (the columns, then `extra` floats) and returns
    /// what `finish(prepared, image, channels)` turns into output channels.
    /// One image's channels (in blocks of `unit`) split across the team,
    /// each part's epilogue as soon as its channels are done; several
    /// images split across the team whole, each image's epilogue once it
    /// is done.
    ///
    /// # Safety
    /// The buffers of the plan's shapes; `prepare` and `finish` stay in
    /// their slot and their image's channels.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_own(
        &self,
        extra: usize,
        unit: usize,
        out: *mut f32,
        par: gemm::Parallelism,
        epilogue: Option<&Epilogue<'_>>,
        columns: &mut Vec<f64>,
        prepare: &(dyn Fn(usize, *mut f32, usize) -> *mut f32 + Sync),
        finish: &(dyn Fn(*mut f32, *mut f32, std::ops::Range<usize>) + Sync),
    ) -> bool {
        let (n, o) = (self.input[0], self.weight[0]);
        let plane = self.out_hw[0] * self.out_hw[1];
        // Per thread: f32 in f64 slots.
        let per = (self.scratch_len() + extra).div_ceil(2);
        let threads = team_threads(par);
        let slots = if n == 1 { 1 } else { threads.min(n) };
        if columns.len() < per * slots {
            columns.resize(per * slots, 0.0);
        }
        let base = SendPtr(columns.as_mut_ptr() as *mut f32);
        let out = SendPtr(out);
        let team = super::team::Team::global();
        if n == 1 {
            let prepared = SendPtr(prepare(0, base.0, threads));
            let blocks = o.div_ceil(unit);
            let parts = threads.min(blocks);
            team.run(parts, &|t| {
                let (prepared, out) = (prepared, out);
                let lo = (blocks * t / parts * unit).min(o);
                let hi = (blocks * (t + 1) / parts * unit).min(o);
                finish(prepared.0, out.0, lo..hi);
                if let Some(e) = epilogue {
                    e(0, lo..hi);
                }
            });
            return epilogue.is_some();
        }
        team.run(slots, &|t| {
            let (slot, dst) = (base, out);
            for b in n * t / slots..n * (t + 1) / slots {
                // SAFETY: part t owns scratch slot t and images n*t/slots..
                let image = unsafe { dst.0.add(b * o * plane) };
                let prepared = prepare(b, unsafe { slot.0.add(t * per * 2) }, 1);
                finish(prepared, image, 0..o);
                if let Some(e) = epilogue {
                    e(b, 0..o);
                }
            }
        });
        epilogue.is_some()
    }

    fn scratch_len(&self) -> usize {
        let [_, cg, kh, kw] = self.weight;
        if Self::is_direct(self.weight, self.stride, self.padding, self.dilation) {
            0
        } else {
            cg * kh * kw * self.out_hw[0] * self.out_hw[1]
        }
    }

    /// Convolves images `range` into `out`, using `col` as the column buffer.
    unsafe fn images<T: Float>(
        &self,
        range: std::ops::Range<usize>,
        out: SendPtr<T>,
        x: SendPtr<T>,
        w: SendPtr<T>,
        col: SendPtr<T>,
        par: gemm::Parallelism,
    ) {
        let og = self.weight[0] / self.groups;
        for b in range {
            for g in 0..self.groups {
                // SAFETY: the caller's buffers, of the plan's shapes.
                unsafe {
                    let src = self.columns(b, g, x.0, col.0);
                    self.product(b, g, 0..og, out.0, w.0, src, par);
                }
            }
        }
    }

    /// The right-hand side of image `b`, group `g`'s product: the input
    /// itself for a plain 1x1 convolution, else its im2col columns,
    /// written into `col`.
    ///
    /// # Safety
    /// `x` holds the input; `col` the columns (`scratch_len` elements).
    unsafe fn columns<T: Float>(&self, b: usize, g: usize, x: *const T, col: *mut T) -> *const T {
        // SAFETY: the caller's contract, for every output row.
        unsafe { self.columns_rows(b, g, x, col, 0..self.out_hw[0]).0 }
    }

    /// The columns of output rows `ys` only (`[c/groups * kh * kw,
    /// ys.len() * ow]`, into `col`), and their row stride: a band of the
    /// input itself for a plain 1x1 convolution.
    ///
    /// # Safety
    /// As [`Conv::columns`]; `col` holds the band's columns.
    unsafe fn columns_rows<T: Float>(
        &self,
        b: usize,
        g: usize,
        x: *const T,
        col: *mut T,
        ys: std::ops::Range<usize>,
    ) -> (*const T, usize) {
        let [_, c, h, wd] = self.input;
        let [_, cg, kh, kw] = self.weight;
        let ow = self.out_hw[1];
        let cols = ys.len() * ow;
        // SAFETY (whole body): offsets stay inside the buffers (shapes
        // checked by the shape rule).
        let xin = unsafe { x.add((b * c + g * cg) * h * wd) };
        if Self::is_direct(self.weight, self.stride, self.padding, self.dilation) {
            return (unsafe { xin.add(ys.start * ow) }, h * wd);
        }
        let [sy, sx] = self.stride;
        let [dy, dx] = self.dilation;
        let (py, px) = (self.padding[0] as isize, self.padding[1] as isize);
        unsafe {
            for ci in 0..cg {
                for ky in 0..kh {
                    for kx in 0..kw {
                        let row = col.add(((ci * kh + ky) * kw + kx) * cols);
                        // Output columns whose tap lands inside the input row.
                        let off = (kx * dx) as isize - px;
                        let lo = if off >= 0 {
                            0
                        } else {
                            ((-off) as usize).div_ceil(sx)
                        };
                        let hi = if (wd as isize - off) <= 0 {
                            0
                        } else {
                            ((wd as isize - off) as usize).div_ceil(sx)
                        };
                        let (lo, hi) = (lo.min(ow), hi.min(ow).max(lo.min(ow)));
                        for y in ys.clone() {
                            let dst = row.add((y - ys.start) * ow);
                            let iy = (y * sy + ky * dy) as isize - py;
                            if iy < 0 || iy >= h as isize {
                                std::ptr::write_bytes(dst, 0, ow);
                                continue;
                            }
                            for i in 0..lo {
                                *dst.add(i) = T::ZERO;
                            }
                            for i in hi..ow {
                                *dst.add(i) = T::ZERO;
                            }
                            let line = xin.add((ci * h + iy as usize) * wd);
                            if sx == 1 {
                                std::ptr::copy_nonoverlapping(
                                    line.offset(lo as isize + off),
                                    dst.add(lo),
                                    hi - lo,
                                );
                            } else {
                                for xo in lo..hi {
                                    *dst.add(xo) = *line.offset((xo * sx) as isize + off);
                                }
                            }
                        }
                    }
                }
            }
        }
        (col, cols)
    }

    /// Output channels `chans` (of group `g`, counted within it) of image
    /// `b`: their weight rows times the group's columns `src`.
    ///
    /// # Safety
    /// The buffers of the plan's shapes; `src` from [`Conv::columns`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn product<T: Float>(
        &self,
        b: usize,
        g: usize,
        chans: std::ops::Range<usize>,
        out: *mut T,
        w: *const T,
        src: *const T,
        par: gemm::Parallelism,
    ) {
        let [o, cg, kh, kw] = self.weight;
        let og = o / self.groups;
        let (rows, cols) = (cg * kh * kw, self.out_hw[0] * self.out_hw[1]);
        let first = g * og + chans.start;
        // SAFETY: the caller's contract.
        unsafe {
            gemm::gemm(
                chans.len(),
                cols,
                rows,
                out.add((b * o + first) * cols),
                1,
                cols as isize,
                false,
                w.add(first * rows),
                1,
                rows as isize,
                src,
                1,
                cols as isize,
                T::ZERO,
                T::ONE,
                false,
                false,
                false,
                par,
            );
        }
    }
}

/// `out[c, p] = t[p, c]` for channels `chans` of a `[rows, cols]` matrix
/// `t` (its transpose `[cols, rows]` in `out`).
///
/// # Safety
/// `t` holds `rows * cols` floats, `out` `cols * rows`.
#[cfg(target_arch = "x86_64")]
unsafe fn transpose(
    t: *const f32,
    out: *mut f32,
    rows: usize,
    cols: usize,
    chans: std::ops::Range<usize>,
) {
    // SAFETY: the block [0, rows) x chans of t, into out's rows chans.
    unsafe {
        transpose_block(
            t.add(chans.start),
            cols,
            out.add(chans.start * rows),
            rows,
            rows,
            chans.len(),
        )
    }
}

/// `dst[j * dst_rs + i] = src[i * src_rs + j]` for `i < rows`, `j < cols`:
/// in registers with AVX-512, else in 8 x 8 blocks (each block's rows and
/// columns in L1).
///
/// # Safety
/// Both views valid for those elements.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn transpose_block(
    src: *const f32,
    src_rs: usize,
    dst: *mut f32,
    dst_rs: usize,
    rows: usize,
    cols: usize,
) {
    if crate::avx512() {
        // SAFETY: the caller's views; the host has AVX-512.
        return unsafe { transpose_avx512(src, src_rs, dst, dst_rs, rows, cols) };
    }
    const B: usize = 8;
    for i0 in (0..rows).step_by(B) {
        for j0 in (0..cols).step_by(B) {
            for j in j0..(j0 + B).min(cols) {
                for i in i0..(i0 + B).min(rows) {
                    // SAFETY: element (i, j) of both views.
                    unsafe { *dst.add(j * dst_rs + i) = *src.add(i * src_rs + j) };
                }
            }
        }
    }
}

/// [`transpose_block`] as 16 x 16 blocks transposed in registers (masked
/// at the edges).
///
/// # Safety
/// Both views valid for those elements; AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_avx512(
    src: *const f32,
    src_rs: usize,
    dst: *mut f32,
    dst_rs: usize,
    rows: usize,
    cols: usize,
) {
    use std::arch::x86_64::*;
    let mask = |n: usize| -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as u16
        }
    };
    let mut i0 = 0;
    while i0 < rows {
        let ni = (rows - i0).min(16);
        let mut j0 = 0;
        while j0 < cols {
            let nj = (cols - j0).min(16);
            let (mi, mj) = (mask(ni), mask(nj));
            // SAFETY: rows i0..i0+ni, columns j0..j0+nj of both views.
            unsafe {
                let mut r = [_mm512_setzero_ps(); 16];
                for (i, v) in r.iter_mut().enumerate().take(ni) {
                    *v = _mm512_maskz_loadu_ps(mj, src.add((i0 + i) * src_rs + j0));
                }
                // (The depthwise kernel's 16 x 16 register transpose.)
                let c = depthwise::x86::transpose16(r);
                for (j, v) in c.iter().enumerate().take(nj) {
                    _mm512_mask_storeu_ps(dst.add((j0 + j) * dst_rs + i0), mi, *v);
                }
            }
            j0 += 16;
        }
        i0 += 16;
    }
}

/// The team's threads a kernel may use under `par` (the executor's say).
fn team_threads(par: gemm::Parallelism) -> usize {
    match par {
        gemm::Parallelism::Rayon(t) => t.min(super::team::Team::global().size()).max(1),
        gemm::Parallelism::None => 1,
    }
}

/// A raw pointer that may cross threads (each thread touches disjoint memory).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// SAFETY: used only to hand disjoint regions of buffers to scoped threads.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SendPtr<T> {}

/// f32 or f64.
pub trait Float: Copy + Send + Sync + 'static {
    const ZERO: Self;
    const ONE: Self;
}

impl Float for f32 {
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
}

impl Float for f64 {
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    /// Blocks of every edge size transpose exactly.
    #[test]
    fn transposes_match_the_definition() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        for (rows, cols) in [(16, 16), (49, 192), (5, 37), (33, 17), (1, 1)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let mut dst = vec![-1f32; rows * cols];
            // SAFETY: both buffers hold rows * cols floats; AVX-512 checked.
            unsafe {
                super::transpose_block(src.as_ptr(), cols, dst.as_mut_ptr(), rows, rows, cols)
            };
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(
                        dst[j * rows + i],
                        src[i * cols + j],
                        "{rows}x{cols} at {i},{j}"
                    );
                }
            }
        }
    }
}
