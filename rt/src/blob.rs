//! A program's steps as a flat list of `i64` words: how an ahead-of-time
//! object hands its steps to the run-time library (as read-only data), and
//! how the JIT builds its executor too, so both go through one decoder.
//! Loop nests are named by their index in a function table given at decode
//! time; buffers by their index in the program's buffer table.

use crate::conv::Conv;
use crate::conv_nhwc::ConvNhwc;
use crate::executor::{KernelFn, Launch, MatMul, Operand, Step};
use crate::fuse::Step as FuseStep;
use crate::pool::Pool;
use crate::{Elem, Real};

/// The first word: "kiln" and the format's version.
pub const MAGIC: i64 = 0x6b69_6c6e_0002;

const JIT: i64 = 0;
const MATMUL: i64 = 1;
const CONV: i64 = 2;
const HOST: i64 = 3;
const POOL: i64 = 4;
const GATHER: i64 = 5;
const CONV_NHWC: i64 = 6;

/// A compiled loop nest named by its function index, with its loop shape
/// and whether dim 0 may be split across threads. `slots`: where the
/// function is shared by kernels that differ only in their buffers, the
/// table it reads, as (buffer, byte offset) per entry; empty, the
/// program's whole buffer table.
#[derive(Clone, Copy, Debug)]
pub struct Nest<'a> {
    pub function: usize,
    pub shape: &'a [usize],
    pub split: bool,
    pub slots: &'a [(usize, i64)],
}

/// The geometry of a 2-D convolution (of NCHW tensors, or NHWC ones where
/// `channels_last`; the dims are given NCHW either way).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvShape {
    pub dtype: Real,
    /// Input dims `[n, c, h, w]`.
    pub input: [usize; 4],
    /// Weight dims `[o, c/groups, kh, kw]`.
    pub weight: [usize; 4],
    pub out_hw: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 4],
    pub dilation: [usize; 2],
    pub groups: usize,
    /// Input and output NHWC.
    pub channels_last: bool,
}

/// An epilogue a channels-last convolution applies as it stores (see
/// [`crate::fuse`]): its steps, and the bias and residual as (buffer,
/// element offset).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FusedSteps {
    pub steps: Vec<FuseStep>,
    pub bias: Option<(usize, i64)>,
    pub residual: Option<(usize, i64)>,
}

/// Writes the steps of a program, in run order.
pub struct Writer {
    words: Vec<i64>,
    steps: usize,
}

impl Default for Writer {
    fn default() -> Self {
        Writer {
            words: vec![MAGIC, 0],
            steps: 0,
        }
    }
}

impl Writer {
    fn nest(&mut self, n: Option<Nest<'_>>) {
        match n {
            None => self.words.push(-1),
            Some(n) => {
                self.words.push(n.function as i64);
                self.dims(n.shape);
                self.words.push(n.split as i64);
                self.words.push(n.slots.len() as i64);
                for &(b, off) in n.slots {
                    self.words.extend([b as i64, off]);
                }
            }
        }
    }

    fn dims(&mut self, d: &[usize]) {
        self.words.push(d.len() as i64);
        self.words.extend(d.iter().map(|&x| x as i64));
    }

    fn operand(&mut self, o: &Operand) {
        self.words
            .extend([o.buffer as i64, o.offset, o.strides.len() as i64]);
        self.words.extend(&o.strides);
    }

    fn begin(&mut self, tag: i64) {
        self.words.push(tag);
        self.steps += 1;
    }

    /// A loop nest.
    pub fn jit(&mut self, n: Nest<'_>) {
        self.begin(JIT);
        self.nest(Some(n));
    }

    /// A matrix product; `constant_b`: the right-hand buffer's element count
    /// when it is a constant (packed once at load).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &mut self,
        dtype: Elem,
        out: usize,
        a: &Operand,
        b: &Operand,
        batch: &[usize],
        mnk: [usize; 3],
        epilogue: Option<Nest<'_>>,
        constant_b: Option<usize>,
    ) {
        self.begin(MATMUL);
        self.words.extend([dtype.code(), out as i64]);
        self.operand(a);
        self.operand(b);
        self.dims(batch);
        self.words.extend(mnk.map(|x| x as i64));
        self.nest(epilogue);
        self.words.push(constant_b.map_or(-1, |n| n as i64));
    }

    /// A convolution; `constant_w`: its weights are a constant (packed once);
    /// `fused` (channels-last only): an epilogue its kernels apply as they
    /// store, before `epilogue`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        shape: &ConvShape,
        out: usize,
        x: usize,
        w: usize,
        constant_w: bool,
        epilogue: Option<Nest<'_>>,
        fused: Option<&FusedSteps>,
    ) {
        self.begin(if shape.channels_last { CONV_NHWC } else { CONV });
        self.words.push(matches!(shape.dtype, Real::F64) as i64);
        self.words.extend([out, x, w].map(|x| x as i64));
        for d in [
            &shape.input[..],
            &shape.weight,
            &shape.out_hw,
            &shape.stride,
            &shape.padding,
            &shape.dilation,
            &[shape.groups],
        ] {
            self.words.extend(d.iter().map(|&x| x as i64));
        }
        self.words.push(constant_w as i64);
        self.nest(epilogue);
        if shape.channels_last {
            let f = fused.cloned().unwrap_or_default();
            self.words.push(f.steps.len() as i64);
            for s in &f.steps {
                let (code, k) = match *s {
                    FuseStep::Bias => (0, 0.0),
                    FuseStep::Residual => (1, 0.0),
                    FuseStep::Max(k) => (2, k),
                    FuseStep::Min(k) => (3, k),
                    FuseStep::Silu => (4, 0.0),
                    FuseStep::HardSwish => (5, 0.0),
                    FuseStep::Sigmoid => (6, 0.0),
                };
                self.words.extend([code, k.to_bits() as i64]);
            }
            for o in [f.bias, f.residual] {
                let (b, off) = o.map_or((-1, 0), |(b, off)| (b as i64, off));
                self.words.extend([b, off]);
            }
        }
    }

    /// A pooling.
    pub fn pool(&mut self, p: &Pool, out: usize, x: usize, epilogue: Option<Nest<'_>>) {
        self.begin(POOL);
        self.words.extend([
            matches!(p.dtype, Real::F64) as i64,
            p.max as i64,
            p.count_include_pad as i64,
            out as i64,
            x as i64,
        ]);
        for d in [
            &p.input[..],
            &p.out_hw,
            &p.kernel,
            &p.stride,
            &p.padding,
            &p.dilation,
        ] {
            self.words.extend(d.iter().map(|&x| x as i64));
        }
        self.nest(epilogue);
    }

    /// A gather of rows.
    pub fn gather(
        &mut self,
        g: &crate::gather::Gather,
        out: usize,
        data: usize,
        indices: usize,
        epilogue: Option<Nest<'_>>,
    ) {
        self.begin(GATHER);
        self.words.extend([
            g.elem_bytes as i64,
            g.outer as i64,
            g.len as i64,
            g.inner as i64,
            g.count as i64,
            g.wide as i64,
            out as i64,
            data as i64,
            indices as i64,
        ]);
        self.nest(epilogue);
    }

    /// Work the caller of the executor does, then its epilogue.
    pub fn host(&mut self, epilogue: Option<Nest<'_>>) {
        self.begin(HOST);
        self.nest(epilogue);
    }

    /// The words.
    pub fn finish(mut self) -> Vec<i64> {
        self.words[1] = self.steps as i64;
        self.words
    }
}

/// Reads words, every read checked.
struct Reader<'a> {
    words: &'a [i64],
    at: usize,
}

impl Reader<'_> {
    fn word(&mut self) -> Result<i64, String> {
        let w = *self
            .words
            .get(self.at)
            .ok_or_else(|| format!("the step list ends early (word {})", self.at))?;
        self.at += 1;
        Ok(w)
    }

    fn size(&mut self) -> Result<usize, String> {
        let w = self.word()?;
        usize::try_from(w).map_err(|_| format!("word {} is {w}, not a size", self.at - 1))
    }

    fn sizes<const N: usize>(&mut self) -> Result<[usize; N], String> {
        let mut a = [0; N];
        for x in &mut a {
            *x = self.size()?;
        }
        Ok(a)
    }

    fn dims(&mut self) -> Result<Vec<usize>, String> {
        let n = self.size()?;
        if n > 64 {
            return Err(format!("{n} dims"));
        }
        (0..n).map(|_| self.size()).collect()
    }

    fn operand(&mut self, buffers: usize) -> Result<Operand, String> {
        let buffer = self.buffer(buffers)?;
        let offset = self.word()?;
        let n = self.size()?;
        if n > 64 {
            return Err(format!("{n} strides"));
        }
        let strides = (0..n).map(|_| self.word()).collect::<Result<_, _>>()?;
        Ok(Operand {
            buffer,
            offset,
            strides,
        })
    }

    fn buffer(&mut self, buffers: usize) -> Result<usize, String> {
        let b = self.size()?;
        if b >= buffers {
            return Err(format!("buffer {b} of {buffers}"));
        }
        Ok(b)
    }

    fn nest(&mut self, fns: &[KernelFn], buffers: usize) -> Result<Option<Launch>, String> {
        let f = self.word()?;
        if f == -1 {
            return Ok(None);
        }
        let f = *usize::try_from(f)
            .ok()
            .and_then(|i| fns.get(i))
            .ok_or_else(|| format!("function {f} of {}", fns.len()))?;
        let shape = self.dims()?;
        let split = self.word()? != 0;
        let n = self.size()?;
        if n > buffers {
            return Err(format!("{n} slots of {buffers} buffers"));
        }
        let mut slots = Vec::with_capacity(n);
        for _ in 0..n {
            let b = self.buffer(buffers)?;
            let off = isize::try_from(self.word()?).map_err(|e| e.to_string())?;
            slots.push((b, off));
        }
        let mut l = Launch::new(f, &shape, split);
        l.slots = slots.into();
        Ok(Some(l))
    }
}

/// The steps `words` describe. `fns` are the loop nests by index, `buffers`
/// the program's buffer count, `constant(b)` the address of constant buffer
/// `b` (read to pack weights once); `settings`: whether the packed GEMM
/// may be used (`avx512`) and how convolutions choose their path.
///
/// # Safety
/// `constant(b)` must return the address of the live data of every buffer
/// the words mark as constant, of the element count and type they give.
pub unsafe fn decode(
    words: &[i64],
    fns: &[KernelFn],
    buffers: usize,
    constant: &dyn Fn(usize) -> *const u8,
    settings: &crate::settings::Settings,
) -> Result<Vec<Step>, String> {
    let avx512 = settings.avx512;
    let mut r = Reader { words, at: 0 };
    if r.word()? != MAGIC {
        return Err("not a kiln step list of this version".into());
    }
    let n = r.size()?;
    let mut steps = Vec::with_capacity(n.min(1 << 16));
    // Constant right-hand sides packed so far: every step of an unrolled
    // recurrent layer multiplies by the same weights, which are packed
    // once and shared.
    let mut packs = crate::executor::Packs::default();
    for _ in 0..n {
        let tag = r.word()?;
        steps.push(match tag {
            JIT => Step::Jit(
                r.nest(fns, buffers)?
                    .ok_or("a loop nest step without a function")?,
            ),
            MATMUL => {
                let code = r.word()?;
                let dtype = Elem::from_code(code).ok_or_else(|| format!("element code {code}"))?;
                let out = r.buffer(buffers)?;
                let a = r.operand(buffers)?;
                let b = r.operand(buffers)?;
                let batch = r.dims()?;
                let mnk = r.sizes::<3>()?;
                if a.strides.len() != batch.len() + 2 || b.strides.len() != batch.len() + 2 {
                    return Err("operand strides do not match the batch".into());
                }
                let epilogue = r.nest(fns, buffers)?;
                let len = r.word()?;
                // SAFETY: the caller's contract for constants.
                let data = (len >= 0 && dtype == Elem::F32).then(|| unsafe {
                    std::slice::from_raw_parts(constant(b.buffer) as *const f32, len as usize)
                });
                // (Constants of other types need no packing.)
                Step::MatMul(MatMul::new(
                    dtype, out, a, b, batch, mnk, epilogue, data, avx512, &mut packs,
                ))
            }
            CONV | CONV_NHWC => {
                let dtype = if r.word()? != 0 { Real::F64 } else { Real::F32 };
                let out = r.buffer(buffers)?;
                let x = r.buffer(buffers)?;
                let w = r.buffer(buffers)?;
                let s = ConvShape {
                    dtype,
                    input: r.sizes()?,
                    weight: r.sizes()?,
                    out_hw: r.sizes()?,
                    stride: r.sizes()?,
                    padding: r.sizes()?,
                    dilation: r.sizes()?,
                    groups: r.size()?,
                    channels_last: tag == CONV_NHWC,
                };
                let constant_w = r.word()? != 0;
                let epilogue = r.nest(fns, buffers)?;
                if s.groups == 0
                    || s.input[1] != s.weight[1] * s.groups
                    || !s.weight[0].is_multiple_of(s.groups)
                {
                    return Err(format!("convolution {s:?} is inconsistent"));
                }
                if s.channels_last {
                    let count = r.size()?;
                    if count > 64 {
                        return Err(format!("{count} fused steps"));
                    }
                    let mut fused = FusedSteps::default();
                    for _ in 0..count {
                        let code = r.word()?;
                        let k = f32::from_bits(r.word()? as u32);
                        fused.steps.push(match code {
                            0 => FuseStep::Bias,
                            1 => FuseStep::Residual,
                            2 => FuseStep::Max(k),
                            3 => FuseStep::Min(k),
                            4 => FuseStep::Silu,
                            5 => FuseStep::HardSwish,
                            6 => FuseStep::Sigmoid,
                            c => return Err(format!("fused step {c}")),
                        });
                    }
                    let operand = |r: &mut Reader<'_>| -> Result<Option<(usize, i64)>, String> {
                        let b = r.word()?;
                        let off = r.word()?;
                        if b < 0 {
                            return Ok(None);
                        }
                        let b = usize::try_from(b).ok().filter(|&b| b < buffers);
                        let b = b.ok_or_else(|| format!("fused operand buffer {b:?}"))?;
                        Ok(Some((b, off)))
                    };
                    fused.bias = operand(&mut r)?;
                    fused.residual = operand(&mut r)?;
                    let needs = |st: FuseStep| fused.steps.contains(&st);
                    if needs(FuseStep::Bias) != fused.bias.is_some()
                        || needs(FuseStep::Residual) != fused.residual.is_some()
                        || (!fused.steps.is_empty()
                            && crate::fuse::canonical(&fused.steps).is_none())
                    {
                        return Err(format!("fused steps {:?} out of order", fused.steps));
                    }
                    let mut conv = ConvNhwc::new(
                        s.dtype, s.input, s.weight, s.out_hw, s.stride, s.padding, s.dilation,
                        s.groups, *settings,
                    );
                    if constant_w {
                        // SAFETY: the caller's contract for constants.
                        unsafe { conv.prepack(constant(w)) };
                    }
                    Step::ConvNhwc {
                        conv,
                        out,
                        x,
                        w,
                        fused: (!fused.steps.is_empty()).then_some(fused),
                        epilogue,
                    }
                } else {
                    let mut conv = Conv::new(
                        s.dtype, s.input, s.weight, s.out_hw, s.stride, s.padding, s.dilation,
                        s.groups, *settings,
                    );
                    if constant_w {
                        // SAFETY: the caller's contract for constants.
                        unsafe { conv.prepack(constant(w)) };
                    }
                    Step::Conv {
                        conv,
                        out,
                        x,
                        w,
                        epilogue,
                    }
                }
            }
            POOL => {
                let dtype = if r.word()? != 0 { Real::F64 } else { Real::F32 };
                let (max, count_include_pad) = (r.word()? != 0, r.word()? != 0);
                let out = r.buffer(buffers)?;
                let x = r.buffer(buffers)?;
                let pool = Pool {
                    dtype,
                    max,
                    count_include_pad,
                    input: r.sizes()?,
                    out_hw: r.sizes()?,
                    kernel: r.sizes()?,
                    stride: r.sizes()?,
                    padding: r.sizes()?,
                    dilation: r.sizes()?,
                };
                Step::Pool {
                    pool,
                    out,
                    x,
                    epilogue: r.nest(fns, buffers)?,
                }
            }
            GATHER => {
                let [elem_bytes, outer, len, inner, count] = r.sizes()?;
                if !matches!(elem_bytes, 1 | 2 | 4 | 8) {
                    return Err(format!("a gather of {elem_bytes}-byte elements"));
                }
                let wide = r.word()? != 0;
                let gather = crate::gather::Gather {
                    elem_bytes,
                    outer,
                    len,
                    inner,
                    count,
                    wide,
                };
                Step::Gather {
                    gather,
                    out: r.buffer(buffers)?,
                    data: r.buffer(buffers)?,
                    indices: r.buffer(buffers)?,
                    epilogue: r.nest(fns, buffers)?,
                }
            }
            HOST => Step::Host {
                epilogue: r.nest(fns, buffers)?,
            },
            t => return Err(format!("step kind {t}")),
        });
    }
    if r.at != words.len() {
        return Err(format!("{} words after the last step", words.len() - r.at));
    }
    Ok(steps)
}
