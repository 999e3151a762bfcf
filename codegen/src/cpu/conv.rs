//! 2-D convolution as im2col + GEMM (the `gemm` crate), one image and group
//! at a time, into a column buffer allocated once at compile time. A 1x1
//! convolution with stride 1 and no padding multiplies the input directly.

use kiln_graph::DType;

/// A compiled convolution of f32 or f64 NCHW tensors.
pub(crate) struct Conv {
    pub dtype: DType,
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
    /// The column matrix `[c/groups * kh * kw, oh * ow]`, as f64 slots.
    scratch: Vec<f64>,
}

impl Conv {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        dtype: DType,
        input: [usize; 4],
        weight: [usize; 4],
        out_hw: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 4],
        dilation: [usize; 2],
        groups: usize,
    ) -> Conv {
        let rows = weight[1] * weight[2] * weight[3];
        let cols = out_hw[0] * out_hw[1];
        let direct = Self::is_direct(weight, stride, padding, dilation);
        let scratch = if direct {
            Vec::new()
        } else {
            vec![0.0; rows * cols]
        };
        Conv {
            dtype,
            input,
            weight,
            out_hw,
            stride,
            padding,
            dilation,
            groups,
            scratch,
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

    /// Runs the convolution.
    ///
    /// # Safety
    /// `out`, `x` and `w` must point at buffers of this convolution's shapes and dtype.
    pub(crate) unsafe fn run(
        &mut self,
        out: *mut u8,
        x: *const u8,
        w: *const u8,
        parallelism: gemm::Parallelism,
    ) {
        match self.dtype {
            DType::F32 => unsafe {
                self.run_typed::<f32>(
                    out as *mut f32,
                    x as *const f32,
                    w as *const f32,
                    parallelism,
                )
            },
            _ => unsafe {
                self.run_typed::<f64>(
                    out as *mut f64,
                    x as *const f64,
                    w as *const f64,
                    parallelism,
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
    ) {
        let [n, c, h, wd] = self.input;
        let [o, cg, kh, kw] = self.weight;
        let [oh, ow] = self.out_hw;
        let og = o / self.groups;
        let (rows, cols) = (cg * kh * kw, oh * ow);
        let direct = Self::is_direct(self.weight, self.stride, self.padding, self.dilation);
        let col = self.scratch.as_mut_ptr() as *mut T;
        for b in 0..n {
            for g in 0..self.groups {
                // SAFETY: all offsets below stay inside the buffers (shapes checked by the shape rule).
                unsafe {
                    let xin = x.add((b * c + g * cg) * h * wd);
                    let src: *const T = if direct {
                        xin
                    } else {
                        for ci in 0..cg {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let r = (ci * kh + ky) * kw + kx;
                                    let row = col.add(r * cols);
                                    for y in 0..oh {
                                        let iy = (y * self.stride[0] + ky * self.dilation[0])
                                            as isize
                                            - self.padding[0] as isize;
                                        for xo in 0..ow {
                                            let ix = (xo * self.stride[1] + kx * self.dilation[1])
                                                as isize
                                                - self.padding[1] as isize;
                                            *row.add(y * ow + xo) = if iy >= 0
                                                && iy < h as isize
                                                && ix >= 0
                                                && ix < wd as isize
                                            {
                                                *xin.add((ci * h + iy as usize) * wd + ix as usize)
                                            } else {
                                                T::ZERO
                                            };
                                        }
                                    }
                                }
                            }
                        }
                        col
                    };
                    let wg = w.add(g * og * rows);
                    let dst = out.add((b * o + g * og) * cols);
                    gemm::gemm(
                        og,
                        cols,
                        rows,
                        dst,
                        1,
                        cols as isize,
                        false,
                        wg,
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
    }
}

/// f32 or f64.
pub(crate) trait Float: Copy + 'static {
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
