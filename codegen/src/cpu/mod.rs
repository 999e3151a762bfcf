//! The CPU backend: kernel programs compiled to machine code by Cranelift.
//!
//! Elementwise and reduction kernels (and the epilogues of matmuls and
//! opaque ops) become JIT-compiled loop nests; matmuls call the `gemm`
//! crate with strided operands; conv, pooling, gather and scatter-add run
//! their reference implementation on the stored operands. All temporaries
//! live in one arena allocated at compile time.

pub mod aot;
mod conv;
mod functions;
mod gemv;
mod jit;
pub use jit::Target;
mod sgemm;
mod support;
pub(crate) mod team;
mod vector;
mod wide;

use std::collections::HashMap;

use kiln_graph::{Array, DType, Op};
use kiln_optimizer::kernel::{BufferId, Epilogue, Kernel, KernelProgram, Operand, Storage};

use crate::error::{Error, Result};
use crate::{Backend, Executable};
use jit::{Body, Jit, KernelFn};

/// Compiles kernel programs for the host CPU.
#[derive(Clone, Copy, Debug)]
pub struct CpuBackend {
    /// Threads large kernels may use (1: single-threaded).
    pub threads: usize,
    /// Long f32 elementwise rows run in AVX-512 where the host has it
    /// (otherwise, and when false, in Cranelift's four-lane vectors).
    pub avx512: bool,
}

impl Default for CpuBackend {
    /// Threads from `KILN_NUM_THREADS`, else every available core; AVX-512
    /// unless `KILN_AVX512=0`.
    fn default() -> Self {
        let threads = std::env::var("KILN_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            });
        CpuBackend {
            threads: threads.max(1),
            avx512: std::env::var("KILN_AVX512").map_or(true, |v| v != "0"),
        }
    }
}

/// Weight elements above which a batch-1 matrix-vector product splits its
/// columns across the threads (handing work to the pool costs more than a
/// 1-2 MB product gains from a second core: measured on mlp_b1).
const GEMV_SPLIT: usize = 1 << 18;

/// Work (multiply-adds) below which a GEMM through `gemm` (rayon) stays on
/// one thread.
const PARALLEL_WORK: usize = 1 << 23;

/// Work (multiply-adds) below which a product or convolution split across
/// the team (`team.rs`) stays on one thread.
const TEAM_WORK: usize = 1 << 18;

fn parallelism(threads: usize, work: usize) -> gemm::Parallelism {
    if threads > 1 && work >= PARALLEL_WORK {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// A compiled loop nest and how it may be split across threads.
struct Launch {
    f: KernelFn,
    /// Extent of loop variable 0 (1 for rank 0).
    extent: i64,
    /// Loop variable 0 may run in disjoint chunks on several threads.
    split: bool,
    /// Elements the kernel visits (to decide whether threads pay).
    work: usize,
}

impl Launch {
    fn new(f: KernelFn, shape: &[usize], split: bool) -> Launch {
        Launch {
            f,
            extent: shape.first().copied().unwrap_or(1) as i64,
            split: split && !shape.is_empty(),
            work: shape.iter().product(),
        }
    }
}

/// Elements below which an elementwise or reduction kernel stays on one thread.
const PARALLEL_ELEMENTS: usize = 1 << 14;

enum Step {
    Jit(Launch),
    MatMul {
        out: BufferId,
        a: Operand,
        b: Operand,
        batch: Vec<usize>,
        mnk: [usize; 3],
        epilogue: Option<Launch>,
        /// The right-hand side packed at compile time (f32, constant).
        packed: Option<sgemm::PackedB>,
        /// Where the right-hand sides are packed at run time (f32 products
        /// of computed operands, on AVX-512 hosts).
        scratch: Option<Vec<f32>>,
    },
    Conv {
        conv: conv::Conv,
        out: BufferId,
        x: BufferId,
        w: BufferId,
        epilogue: Option<Launch>,
    },
    Op {
        op: Op,
        out: BufferId,
        args: Vec<BufferId>,
        epilogue: Option<Launch>,
    },
}

/// A kernel program compiled for the CPU.
pub struct CpuExecutable {
    _jit: Jit,
    program: KernelProgram,
    steps: Vec<Step>,
    arena: Vec<u64>,
    table: Vec<*mut u8>,
    threads: usize,
    pool: Option<rayon::ThreadPool>,
    profile: Option<std::sync::Mutex<Vec<KernelTime>>>,
    /// Whether splitting kernels across threads pays, measured.
    tuner: Tuner,
    /// Some kernel could split.
    splittable: bool,
}

/// Runs a program both with and without splitting kernels across threads
/// while it is new, then the faster way.
///
/// Whether kernels gain from a second thread depends on more than their
/// size: on where the host places the virtual CPUs and what else runs
/// there. Measured on this project's 2-vCPU machine, one batch-1 network
/// ran in 0.073 ms split and 0.089 ms on one thread at one time, and in
/// 0.157 ms split at another, when even its unsplit kernels ran 40% slower
/// while the other vCPU's worker spun (as on two hyperthreads of one core).
/// So the first runs go split and unsplit in alternating blocks of four,
/// each way keeping its fastest whole-run time; later runs split unless
/// that measured more than 1/8 slower, and the measuring repeats after `FIRST_RETUNE` runs
/// (a worker thread just started may share its parent's CPU until the
/// scheduler moves it) and then every `RETUNE` runs, as the host's
/// placement can change. Programs with nothing to split skip it.
#[derive(Clone, Copy, Debug)]
struct Tuner {
    runs: u32,
    /// Measuring rounds finished.
    rounds: u32,
    /// Fastest run (ns) unsplit and split.
    best: [u64; 2],
    /// `KILN_SPLIT=0` or `1` fixes the way.
    forced: Option<bool>,
}

/// Runs measured each way (the first of each block is a warm-up).
const TUNE_RUNS: u32 = 8;
/// Runs in a block of one way.
const BLOCK: u32 = 4;
/// Runs after which the ways are measured again.
const RETUNE: u32 = 5000;
/// Runs after which the ways are measured a second time.
const FIRST_RETUNE: u32 = 200;

impl Default for Tuner {
    fn default() -> Self {
        Tuner {
            runs: 0,
            rounds: 0,
            best: [u64::MAX; 2],
            forced: std::env::var("KILN_SPLIT").ok().map(|v| v != "0"),
        }
    }
}

impl Tuner {
    /// Whether this run splits kernels (where the size rules allow it).
    fn split(self) -> bool {
        if let Some(f) = self.forced {
            return f;
        }
        match self.runs {
            // Blocks of `BLOCK` runs, split and unsplit in turn, so that a
            // disturbance early on (a worker not yet on its own CPU) spoils
            // one block of one way, not the whole measure of it.
            0 => true,
            r if r <= 2 * TUNE_RUNS => ((r - 1) / BLOCK).is_multiple_of(2),
            // Splitting is the default unless it measured clearly slower
            // (one disturbed block must not turn a program single-threaded).
            _ => self.best[1] <= self.best[0].saturating_add(self.best[0] / 8),
        }
    }

    fn record(mut self, split: bool, took: std::time::Duration) -> Tuner {
        let r = self.runs;
        // The first run of each block warms that way up and is not kept.
        if (1..=2 * TUNE_RUNS).contains(&r) && !(r - 1).is_multiple_of(BLOCK) {
            let b = &mut self.best[split as usize];
            *b = (*b).min(took.as_nanos() as u64);
        }
        self.runs += 1;
        let period = if self.rounds == 0 {
            FIRST_RETUNE
        } else {
            RETUNE
        };
        if self.runs >= period {
            self = Tuner {
                runs: 1,
                rounds: self.rounds + 1,
                best: [u64::MAX; 2],
                ..self
            };
        }
        self
    }
}

/// One timed execution of a kernel (see [`CpuExecutable::set_profiling`]).
#[derive(Clone, Debug)]
pub struct KernelTime {
    /// The kernel's index in the program.
    pub kernel: usize,
    /// When it started.
    pub start: std::time::Instant,
    /// How long it ran.
    pub duration: std::time::Duration,
}

// SAFETY: the raw pointers in `table` are rewritten at the start of every run
// and only dereferenced by this executable's kernels during `run`, which
// takes `&mut self`.
unsafe impl Send for CpuExecutable {}

/// The loop shape epilogues of `out` are compiled for (see
/// `kiln_optimizer::loops::epilogue_loop`).
fn epilogue_shape(program: &KernelProgram, out: BufferId) -> Vec<usize> {
    let s = &program.buffer(out).shape;
    let lead = s
        .iter()
        .take_while(|&&n| n == 1)
        .count()
        .min(s.len().saturating_sub(1));
    s[lead..].to_vec()
}

fn is_identity(e: &Epilogue) -> bool {
    e.program.instrs.len() == 1 && e.inputs.is_empty()
}

impl CpuBackend {
    /// The right-hand side of an f32 matrix product packed for
    /// `sgemm`, where it is a constant, the product has one batch and more
    /// than one row (one row is a matrix-vector product), and the host runs
    /// AVX-512.
    fn pack(
        &self,
        program: &KernelProgram,
        b: &Operand,
        batch: &[usize],
        [m, n, k]: [usize; 3],
    ) -> Option<sgemm::PackedB> {
        let buf = program.buffer(b.buffer);
        let Storage::Constant { value } = &buf.storage else {
            return None;
        };
        if !self.avx512
            || !sgemm::available()
            || buf.dtype != DType::F32
            || m < 2
            || batch.iter().product::<usize>() != 1
        {
            return None;
        }
        let nbd = batch.len();
        let (rs, cs) = (b.strides[nbd], b.strides[nbd + 1]);
        if rs < 0 || cs < 0 || b.offset < 0 {
            return None;
        }
        let data = value.0.as_slice::<f32>()?;
        let view = data.get(b.offset as usize..)?;
        if k == 0 || n == 0 || (k - 1) * rs as usize + (n - 1) * cs as usize >= view.len() {
            return None;
        }
        Some(sgemm::PackedB::new(view, rs as usize, cs as usize, k, n))
    }
}

/// A kernel's compiled functions, before their addresses are known: a loop
/// nest (its loop shape and whether dim 0 may split across threads), or a
/// matrix product or op (by kernel index) with its epilogue, if any.
pub(crate) enum Pending {
    Jit(cranelift_module::FuncId, Vec<usize>, bool),
    MatMul(usize, Option<cranelift_module::FuncId>),
    Op(usize, Option<cranelift_module::FuncId>),
}

/// Compiles every loop nest and epilogue of `program` into `jit`, in
/// kernel order.
pub(crate) fn compile_kernels<M: cranelift_module::Module>(
    jit: &mut Jit<M>,
    program: &KernelProgram,
) -> Result<Vec<Pending>> {
    let mut pending = Vec::new();
    for (i, k) in program.kernels.iter().enumerate() {
        let epilogue_fn = |jit: &mut Jit<M>,
                           out: BufferId,
                           e: &Epilogue|
         -> Result<Option<cranelift_module::FuncId>> {
            if is_identity(e) {
                return Ok(None);
            }
            let (shape, e) = kiln_optimizer::loops::epilogue_loop(&program.buffer(out).shape, e);
            let body = Body::Elementwise {
                out,
                shape: &shape,
                inputs: &e.inputs,
                program: &e.program,
                acc_from_out: true,
            };
            jit.compile(program, &body, i).map(Some)
        };
        pending.push(match k {
            Kernel::Elementwise {
                out,
                shape,
                inputs,
                program: p,
            } => {
                let body = Body::Elementwise {
                    out: *out,
                    shape,
                    inputs,
                    program: p,
                    acc_from_out: false,
                };
                Pending::Jit(jit.compile(program, &body, i)?, shape.clone(), true)
            }
            Kernel::Reduce {
                out,
                shape,
                axes,
                kind,
                inputs,
                body,
                map,
            } => {
                let b = Body::Reduce {
                    out: *out,
                    shape,
                    axes,
                    kind: *kind,
                    inputs,
                    body,
                    map: map.as_ref().map(|(o, p)| (*o, p)),
                };
                // Splitting dim 0 across threads is safe when it is not reduced.
                Pending::Jit(
                    jit.compile(program, &b, i)?,
                    shape.clone(),
                    !axes.contains(&0),
                )
            }
            Kernel::MatMul { out, epilogue, .. } => {
                Pending::MatMul(i, epilogue_fn(jit, *out, epilogue)?)
            }
            Kernel::Op { out, epilogue, .. } => Pending::Op(i, epilogue_fn(jit, *out, epilogue)?),
        });
    }
    Ok(pending)
}

impl Backend for CpuBackend {
    type Executable = CpuExecutable;

    fn compile(&self, program: &KernelProgram) -> Result<CpuExecutable> {
        if self.threads > 1 {
            // Start the workers now, so they are settled on their own CPUs
            // before the first runs measure splitting.
            team::Team::global();
        }
        let mut jit = Jit::new(self.avx512)?;
        let pending = compile_kernels(&mut jit, program)?;
        jit.finalize()?;
        let steps: Vec<Step> = pending
            .into_iter()
            .map(|p| match p {
                Pending::Jit(id, shape, split) => {
                    Step::Jit(Launch::new(jit.function(id), &shape, split))
                }
                Pending::MatMul(i, e) => match &program.kernels[i] {
                    Kernel::MatMul {
                        out,
                        a,
                        b,
                        batch,
                        mnk,
                        ..
                    } => Step::MatMul {
                        out: *out,
                        packed: self.pack(program, b, batch, *mnk),
                        scratch: (self.avx512
                            && sgemm::available()
                            && program.buffer(*out).dtype == DType::F32
                            && !matches!(
                                program.buffer(b.buffer).storage,
                                Storage::Constant { .. }
                            )
                            && mnk[0] >= 4)
                            .then(Vec::new),
                        a: a.clone(),
                        b: b.clone(),
                        batch: batch.clone(),
                        mnk: *mnk,
                        epilogue: e.map(|id| {
                            Launch::new(jit.function(id), &epilogue_shape(program, *out), true)
                        }),
                    },
                    _ => unreachable!("pending matmul"),
                },
                Pending::Op(i, e) => match &program.kernels[i] {
                    Kernel::Op {
                        op:
                            Op::Conv2d {
                                stride,
                                padding,
                                dilation,
                                groups,
                            },
                        out,
                        args,
                        ..
                    } if program.buffer(*out).dtype.is_float() => {
                        let dims = |b: BufferId| -> [usize; 4] {
                            let s = &program.buffer(b).shape;
                            [s[0], s[1], s[2], s[3]]
                        };
                        let oshape = dims(*out);
                        let mut conv = conv::Conv::new(
                            program.buffer(*out).dtype,
                            dims(args[0]),
                            dims(args[1]),
                            [oshape[2], oshape[3]],
                            *stride,
                            *padding,
                            *dilation,
                            *groups,
                        );
                        if let Storage::Constant { value } = &program.buffer(args[1]).storage {
                            // SAFETY: the program keeps its constants for the
                            // executable's life (this executable owns a copy).
                            unsafe { conv.prepack(value.0.as_ptr()) };
                        }
                        Step::Conv {
                            conv,
                            out: *out,
                            x: args[0],
                            w: args[1],
                            epilogue: e.map(|id| {
                                Launch::new(jit.function(id), &epilogue_shape(program, *out), true)
                            }),
                        }
                    }
                    Kernel::Op { op, out, args, .. } => Step::Op {
                        op: op.clone(),
                        out: *out,
                        args: args.clone(),
                        epilogue: e.map(|id| {
                            Launch::new(jit.function(id), &epilogue_shape(program, *out), true)
                        }),
                    },
                    _ => unreachable!("pending op"),
                },
            })
            .collect();
        let arena = vec![0u64; program.memory.arena.div_ceil(8) + 8];
        let table = vec![std::ptr::null_mut(); program.buffers.len()];
        let mut program = program.clone();
        if !program.functions.is_empty() {
            // Control flow calls its functions as compiled code too.
            program.runner = Some(std::sync::Arc::new(functions::CompiledFunctions::new(
                *self,
            )));
        }
        Ok(CpuExecutable {
            _jit: jit,
            program,
            steps,
            arena,
            table,
            threads: self.threads,
            pool: (self.threads > 1)
                .then(|| {
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(self.threads)
                        .build()
                        .ok()
                })
                .flatten(),
            profile: None,
            tuner: Tuner::default(),
            splittable: self.threads > 1,
        })
    }
}

impl CpuExecutable {
    /// Records the time of every kernel of later runs (or stops recording).
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(|| std::sync::Mutex::new(Vec::new()));
    }

    /// The kernel times recorded since the last call.
    pub fn take_profile(&mut self) -> Vec<KernelTime> {
        self.profile
            .as_mut()
            .map(|m| std::mem::take(m.get_mut().expect("profile lock")))
            .unwrap_or_default()
    }

    /// The program this executable runs.
    pub fn program(&self) -> &KernelProgram {
        &self.program
    }

    fn arena_base(&mut self) -> *mut u8 {
        // 64-byte align the arena start.
        let p = self.arena.as_mut_ptr() as *mut u8;
        let pad = (64 - (p as usize) % 64) % 64;
        // SAFETY: the arena has 64 spare bytes beyond the planned size.
        unsafe { p.add(pad) }
    }

    /// Reads buffer `b` into an array (for opaque ops).
    fn read(&self, b: BufferId) -> Array {
        let buf = self.program.buffer(b);
        let n = buf.size_bytes();
        let mut bytes = vec![0u8; n];
        // SAFETY: the table holds a valid pointer to `n` bytes for this buffer during a run.
        unsafe { std::ptr::copy_nonoverlapping(self.table[b.0], bytes.as_mut_ptr(), n) };
        let data =
            kiln_graph::Data::from_le_bytes(buf.dtype, &bytes).expect("buffer bytes are valid");
        Array::new(buf.shape.clone(), data).expect("buffer shape")
    }

    fn write(&self, b: BufferId, a: &Array) {
        let n = self.program.buffer(b).size_bytes().min(a.size_bytes());
        // SAFETY: as in `read`; the array has the buffer's type.
        unsafe { std::ptr::copy_nonoverlapping(a.as_ptr(), self.table[b.0], n) };
    }

    #[allow(clippy::too_many_arguments)]
    fn matmul(
        po: SendMut,
        pa: SendMut,
        pb: SendMut,
        dtype: DType,
        a: &Operand,
        b: &Operand,
        batch: &[usize],
        mnk: [usize; 3],
        threads: usize,
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<()> {
        let [m, n, k] = mnk;
        let nb: usize = batch.iter().product();
        let nbd = batch.len();
        // Batch-1 f32 dense layers: a matrix-vector product over contiguous rows.
        if m == 1 && nb == 1 && dtype == DType::F32 && b.strides[nbd + 1] == 1 {
            let (x, xs) = (
                SendMut(unsafe { pa.get().add(a.offset as usize * 4) }),
                a.strides[nbd + 1] as isize,
            );
            let w = SendMut(unsafe { pb.get().add(b.offset as usize * 4) });
            let ws = b.strides[nbd] as isize;
            let run = move |cols: std::ops::Range<usize>| {
                // SAFETY: the operand views lie inside their buffers (see below).
                unsafe {
                    gemv::gemv_f32(
                        x.get() as *const f32,
                        xs,
                        w.get() as *const f32,
                        ws,
                        po.get() as *mut f32,
                        k,
                        cols,
                    )
                }
            };
            let team = team::Team::global();
            // Large weight matrices stream faster from two cores' caches.
            if pool.is_some() && k * n >= GEMV_SPLIT && n >= 64 {
                let parts = threads.min(team.size()).min(n / 32).max(1);
                team.run(parts, &|p| {
                    let lo = n * p / parts / 16 * 16;
                    let hi = if p + 1 == parts {
                        n
                    } else {
                        n * (p + 1) / parts / 16 * 16
                    };
                    run(lo..hi)
                });
            } else {
                run(0..n)
            }
            return Ok(());
        }
        for (bi, (oa, ob)) in batch_offsets(a, b, batch).enumerate() {
            let oo = (bi * m * n) as isize;
            let (ars, acs, brs, bcs) = (
                a.strides[nbd] as isize,
                a.strides[nbd + 1] as isize,
                b.strides[nbd] as isize,
                b.strides[nbd + 1] as isize,
            );
            // SAFETY: operand views and the output stay inside their buffers (the
            // lowering derives them from the buffers' shapes).
            unsafe {
                match dtype {
                    DType::F32 => float_gemm::<f32>(
                        po,
                        pa,
                        pb,
                        [oo, oa as isize, ob as isize],
                        [ars, acs, brs, bcs],
                        mnk,
                        threads,
                    ),
                    DType::F64 => float_gemm::<f64>(
                        po,
                        pa,
                        pb,
                        [oo, oa as isize, ob as isize],
                        [ars, acs, brs, bcs],
                        mnk,
                        threads,
                    ),
                    DType::I32 => int_matmul::<i32>(
                        po.get() as *mut i32,
                        oo,
                        pa.get() as *const i32,
                        oa as isize,
                        ars,
                        acs,
                        pb.get() as *const i32,
                        ob as isize,
                        brs,
                        bcs,
                        m,
                        n,
                        k,
                    ),
                    DType::I64 => int_matmul::<i64>(
                        po.get() as *mut i64,
                        oo,
                        pa.get() as *const i64,
                        oa as isize,
                        ars,
                        acs,
                        pb.get() as *const i64,
                        ob as isize,
                        brs,
                        bcs,
                        m,
                        n,
                        k,
                    ),
                    DType::Bool | DType::F16 | DType::BF16 => {
                        return Err(Error::Run {
                            kernel: usize::MAX,
                            reason: format!("{dtype} matmul"),
                        })
                    }
                }
            }
        }
        Ok(())
    }
}

/// The element offsets of `a`'s and `b`'s views for each product of a
/// batched matmul, in row-major batch order.
fn batch_offsets<'a>(
    a: &'a Operand,
    b: &'a Operand,
    batch: &'a [usize],
) -> impl Iterator<Item = (i64, i64)> + 'a {
    let bst = kiln_graph::shape::strides(batch);
    let nb: usize = batch.iter().product();
    (0..nb).map(move |bi| {
        let (mut oa, mut ob) = (a.offset, b.offset);
        for (d, &s) in bst.iter().enumerate() {
            let i = ((bi / s) % batch[d]) as i64;
            oa += i * a.strides[d];
            ob += i * b.strides[d];
        }
        (oa, ob)
    })
}

/// One float GEMM of strided operands: `out[oo..] = a[oa..] @ b[ob..]` with
/// row/column strides `[a_row, a_col, b_row, b_col]`.
///
/// # Safety
/// The views must lie inside the buffers the pointers point at.
unsafe fn float_gemm<T: conv::Float>(
    po: SendMut,
    pa: SendMut,
    pb: SendMut,
    off: [isize; 3],
    st: [isize; 4],
    mnk: [usize; 3],
    threads: usize,
) {
    let [m, n, k] = mnk;
    let (d, l, r) = (
        po.get() as *mut T,
        pa.get() as *const T,
        pb.get() as *const T,
    );
    let [ars, acs, brs, bcs] = st;
    // SAFETY: guaranteed by the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            d.offset(off[0]),
            1,
            n as isize,
            false,
            l.offset(off[1]),
            acs,
            ars,
            r.offset(off[2]),
            bcs,
            brs,
            T::ZERO,
            T::ONE,
            false,
            false,
            false,
            parallelism(threads, m * n * k),
        );
    }
}

/// A wrapping integer matrix product of strided operands.
#[allow(clippy::too_many_arguments)]
unsafe fn int_matmul<T: Copy + WrappingMulAdd>(
    d: *mut T,
    od: isize,
    a: *const T,
    oa: isize,
    ars: isize,
    acs: isize,
    b: *const T,
    ob: isize,
    brs: isize,
    bcs: isize,
    m: usize,
    n: usize,
    k: usize,
) {
    for i in 0..m as isize {
        for j in 0..n as isize {
            let mut s = T::ZERO;
            for p in 0..k as isize {
                // SAFETY: the caller guarantees the views are in bounds.
                s = s.mul_add_wrapping(unsafe { *a.offset(oa + i * ars + p * acs) }, unsafe {
                    *b.offset(ob + p * brs + j * bcs)
                });
            }
            // SAFETY: as above.
            unsafe { *d.offset(od + i * n as isize + j) = s };
        }
    }
}

trait WrappingMulAdd {
    const ZERO: Self;
    fn mul_add_wrapping(self, a: Self, b: Self) -> Self;
}

impl WrappingMulAdd for i32 {
    const ZERO: i32 = 0;
    fn mul_add_wrapping(self, a: i32, b: i32) -> i32 {
        self.wrapping_add(a.wrapping_mul(b))
    }
}

impl WrappingMulAdd for i64 {
    const ZERO: i64 = 0;
    fn mul_add_wrapping(self, a: i64, b: i64) -> i64 {
        self.wrapping_add(a.wrapping_mul(b))
    }
}

/// The buffer table, shared read-only by the threads of one kernel.
#[derive(Clone, Copy)]
struct Table(*const *mut u8);
// SAFETY: during a launch the table is only read, and the chunks of a split
// kernel write disjoint elements.
unsafe impl Send for Table {}
// SAFETY: as above.
unsafe impl Sync for Table {}

impl Table {
    fn get(self) -> *const *mut u8 {
        self.0
    }
}

/// A buffer pointer handed to the pool's threads (each touches its own part).
#[derive(Clone, Copy)]
struct SendMut(*mut u8);
// SAFETY: see `Table`.
unsafe impl Send for SendMut {}
// SAFETY: see `Table`.
unsafe impl Sync for SendMut {}

impl SendMut {
    fn get(self) -> *mut u8 {
        self.0
    }
}

impl CpuExecutable {
    /// Runs `f` inside this executable's thread pool when `parallel` (handing
    /// work to the pool costs microseconds, so small kernels run here).
    fn in_pool<R: Send>(&self, parallel: bool, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(p) if parallel => p.install(f),
            _ => f(),
        }
    }

    /// Runs a compiled loop nest, split over loop variable 0 across the
    /// threads when that pays.
    fn launch(&self, l: &Launch, table: *const *mut u8, split: bool) {
        let t = Table(table);
        let team = team::Team::global();
        let n = (self.threads.min(team.size()) as i64).min(l.extent);
        if split && l.split && l.work >= PARALLEL_ELEMENTS && n >= 2 {
            let f = l.f;
            team.run(n as usize, &|c| {
                let c = c as i64;
                let (lo, hi) = (l.extent * c / n, l.extent * (c + 1) / n);
                // SAFETY: chunks cover disjoint ranges of the outermost loop.
                unsafe { f(t.get(), lo, hi) }
            });
        } else {
            // SAFETY: the table points at live buffers of the program's types.
            unsafe { (l.f)(table, 0, l.extent) }
        }
    }

    /// Each product of a batched matmul as an `sgemm` item.
    fn batch_items(
        &self,
        out: &BufferId,
        a: &Operand,
        b: &Operand,
        batch: &[usize],
        [m, n, _]: [usize; 3],
    ) -> Vec<sgemm::Item> {
        let nbd = batch.len();
        let (pa, pb, po) = (
            self.table[a.buffer.0] as *const f32,
            self.table[b.buffer.0] as *const f32,
            self.table[out.0] as *mut f32,
        );
        batch_offsets(a, b, batch)
            .enumerate()
            .map(|(bi, (oa, ob))| sgemm::Item {
                a: sgemm::Lhs {
                    ptr: pa.wrapping_offset(oa as isize),
                    rs: a.strides[nbd] as isize,
                    cs: a.strides[nbd + 1] as isize,
                    m,
                },
                b: pb.wrapping_offset(ob as isize),
                out: po.wrapping_add(bi * m * n),
            })
            .collect()
    }

    /// A matrix product through the `gemm` crate (or the matrix-vector
    /// path), on this executable's pool.
    fn gemm_step(
        &self,
        out: &BufferId,
        a: &Operand,
        b: &Operand,
        batch: &[usize],
        mnk: [usize; 3],
        split: bool,
    ) -> Result<()> {
        let work = batch.iter().product::<usize>() * mnk.iter().product::<usize>();
        let parallel = split && work >= PARALLEL_WORK;
        // GEMM threads come from this executable's pool, not rayon's
        // global one, so kernels never oversubscribe the cores.
        let (po, pa, pb) = (
            SendMut(self.table[out.0]),
            SendMut(self.table[a.buffer.0]),
            SendMut(self.table[b.buffer.0]),
        );
        let dtype = self.program.buffer(*out).dtype;
        let threads = if split { self.threads } else { 1 };
        let pool = self.pool.as_ref().filter(|_| split);
        self.in_pool(parallel, || {
            Self::matmul(po, pa, pb, dtype, a, b, batch, mnk, threads, pool)
        })
    }

    fn run_steps(&self, steps: &mut [Step], table: *const *mut u8, split: bool) -> Result<()> {
        let at = |ki: usize| {
            move |e: Error| match e {
                Error::Run { reason, .. } => Error::Run { kernel: ki, reason },
                other => other,
            }
        };
        for (ki, step) in steps.iter_mut().enumerate() {
            let started = self.profile.as_ref().map(|_| std::time::Instant::now());
            match step {
                // SAFETY: the table points at live buffers of the program's types.
                Step::Jit(l) => self.launch(l, table, split),
                Step::MatMul {
                    out,
                    a,
                    b,
                    batch,
                    mnk,
                    epilogue,
                    packed,
                    scratch,
                } => {
                    let work = batch.iter().product::<usize>() * mnk.iter().product::<usize>();
                    let mut done_epilogue = false;
                    if let Some(pb) = packed {
                        let nbd = batch.len();
                        let lhs = sgemm::Lhs {
                            // SAFETY: the view's offset lies inside its buffer.
                            ptr: unsafe {
                                (self.table[a.buffer.0] as *const f32).add(a.offset as usize)
                            },
                            rs: a.strides[nbd] as isize,
                            cs: a.strides[nbd + 1] as isize,
                            m: mnk[0],
                        };
                        let out = self.table[out.0] as *mut f32;
                        // SAFETY: the operand view and output have the product's
                        // shapes; `pack` checked the host.
                        let parallel = split && work >= TEAM_WORK;
                        // An epilogue over the rows runs on each part's rows as
                        // it finishes them.
                        let fused = epilogue.as_ref().filter(|l| l.extent as usize == mnk[0]);
                        let t = Table(table);
                        let rows = |lo: usize, hi: usize| {
                            if let Some(l) = fused {
                                // SAFETY: the epilogue covers rows lo..hi of the output.
                                unsafe { (l.f)(t.get(), lo as i64, hi as i64) }
                            }
                        };
                        let hook: Option<&(dyn Fn(usize, usize) + Sync)> =
                            fused.map(|_| &rows as &(dyn Fn(usize, usize) + Sync));
                        unsafe { sgemm::matmul(lhs, pb, out, self.threads, parallel, hook) };
                        if fused.is_some() {
                            done_epilogue = true;
                        }
                    } else if let Some(scratch) = scratch {
                        let items = self.batch_items(out, a, b, batch, *mnk);
                        let nbd = batch.len();
                        let parallel = split && work >= TEAM_WORK;
                        // SAFETY: the views and outputs lie in their buffers (the
                        // lowering derives them from the buffers' shapes).
                        unsafe {
                            sgemm::batched(
                                &items,
                                b.strides[nbd] as isize,
                                b.strides[nbd + 1] as isize,
                                mnk[2],
                                mnk[1],
                                scratch,
                                self.threads,
                                parallel,
                            )
                        };
                    } else {
                        self.gemm_step(out, a, b, batch, *mnk, split)
                            .map_err(at(ki))?;
                    }
                    if let Some(l) = epilogue.as_ref().filter(|_| !done_epilogue) {
                        self.launch(l, table, split);
                    }
                }
                Step::Conv {
                    conv,
                    out,
                    x,
                    w,
                    epilogue,
                } => {
                    let [o, cg, kh, kw] = conv.weight;
                    let work = conv.input[0] * o * cg * kh * kw * conv.out_hw[0] * conv.out_hw[1];
                    // SAFETY: the buffers have the shapes the convolution was built for.
                    let (o_ptr, x_ptr, w_ptr) = (
                        SendMut(self.table[out.0]),
                        SendMut(self.table[x.0]),
                        SendMut(self.table[w.0]),
                    );
                    // The direct kernel splits across the team from a smaller size
                    // than a GEMM through rayon pays for.
                    let par = if !split {
                        gemm::Parallelism::None
                    } else if conv.uses_rayon() {
                        parallelism(self.threads, work)
                    } else if self.threads > 1 && work >= TEAM_WORK {
                        gemm::Parallelism::Rayon(self.threads)
                    } else {
                        gemm::Parallelism::None
                    };
                    let parallel = conv.uses_rayon() && matches!(par, gemm::Parallelism::Rayon(_));
                    // The epilogue's loop runs over [n, o, oh, ow] without its
                    // leading unit dims: per image, per channel range of a
                    // single image, or whole.
                    let (n, o) = (conv.input[0], conv.weight[0]);
                    let t = Table(table);
                    let hook = |b: usize, ch: std::ops::Range<usize>| {
                        let Some(l) = epilogue.as_ref() else { return };
                        let (lo, hi) = if n > 1 {
                            (b, b + 1)
                        } else if o > 1 {
                            (ch.start, ch.end)
                        } else {
                            (0, l.extent as usize)
                        };
                        if n > 1 && ch.end != o {
                            return;
                        }
                        // SAFETY: the epilogue covers those outputs, now computed.
                        unsafe { (l.f)(t.get(), lo as i64, hi as i64) }
                    };
                    let hook: Option<&conv::Epilogue<'_>> = epilogue.as_ref().map(|_| &hook as _);
                    let applied = self.in_pool(parallel, || unsafe {
                        conv.run(o_ptr.get(), x_ptr.get(), w_ptr.get(), par, hook)
                    });
                    if let Some(l) = epilogue.as_ref().filter(|_| !applied) {
                        self.launch(l, table, split);
                    }
                }
                Step::Op {
                    op,
                    out,
                    args,
                    epilogue,
                } => {
                    let arrays: Vec<Array> = args.iter().map(|&b| self.read(b)).collect();
                    let refs: Vec<&Array> = arrays.iter().collect();
                    let shape = self.program.buffer(*out).shape.clone();
                    // Pooling, gather, scatter and control flow run their reference meaning.
                    let v = self
                        .program
                        .eval_op(op, &refs, &shape)
                        .map_err(|reason| Error::Run { kernel: ki, reason })?;
                    self.write(*out, &v);
                    if let Some(l) = epilogue {
                        self.launch(l, table, split);
                    }
                }
            }
            if let (Some(t), Some(log)) = (started, &self.profile) {
                log.lock().expect("profile lock").push(KernelTime {
                    kernel: ki,
                    start: t,
                    duration: t.elapsed(),
                });
            }
        }
        Ok(())
    }
}

impl Executable for CpuExecutable {
    fn run(
        &mut self,
        inputs: &HashMap<&str, &Array>,
        variables: &mut HashMap<String, Array>,
    ) -> Result<Vec<Array>> {
        // Results are fresh arrays the kernels write into directly.
        let mut results: HashMap<BufferId, Array> = HashMap::new();
        let arena = self.arena_base();
        for (i, b) in self.program.buffers.iter().enumerate() {
            let check = |a: &Array, what: &str, name: &str| -> Result<()> {
                if a.dtype() != b.dtype || a.shape() != b.shape.as_slice() {
                    return Err(Error::Input(format!(
                        "{what} '{name}' is {}{:?}, the program expects {}{:?}",
                        a.dtype(),
                        a.shape(),
                        b.dtype,
                        b.shape
                    )));
                }
                Ok(())
            };
            self.table[i] = match &b.storage {
                Storage::Input { name } => {
                    let a = *inputs
                        .get(name.as_str())
                        .ok_or_else(|| Error::Input(format!("input '{name}' was not supplied")))?;
                    check(a, "input", name)?;
                    a.as_ptr() as *mut u8
                }
                Storage::Variable { name } => {
                    let a = variables.get(name).ok_or_else(|| {
                        Error::Input(format!("variable '{name}' was not supplied"))
                    })?;
                    check(a, "variable", name)?;
                    a.as_ptr() as *mut u8
                }
                Storage::Constant { value } => value.0.as_ptr() as *mut u8,
                Storage::Arena { offset } => {
                    // SAFETY: offsets come from the plan, within the arena's size.
                    unsafe { arena.add(*offset) }
                }
                Storage::Result => {
                    let a = results
                        .entry(BufferId(i))
                        .or_insert_with(|| Array::zeros(b.dtype, &b.shape));
                    a.as_mut_ptr()
                }
            };
        }
        let table = self.table.as_ptr();
        let mut steps = std::mem::take(&mut self.steps);
        let split = self.splittable && self.tuner.split();
        let started = std::time::Instant::now();
        let result = self.run_steps(&mut steps, table, split);
        if self.splittable {
            self.tuner = self.tuner.record(split, started.elapsed());
        }
        self.steps = steps;
        result?;
        // Results move out on their last use (a copy only where a buffer is
        // fetched twice, or fetched and also a variable's new value).
        let mut uses: HashMap<BufferId, usize> = HashMap::new();
        let updates = self.program.updates.iter().map(|&(_, val)| val);
        for b in self.program.outputs.iter().copied().chain(updates) {
            *uses.entry(b).or_default() += 1;
        }
        let mut take = |b: BufferId, this: &Self| -> Array {
            let left = uses.get_mut(&b).expect("counted above");
            *left -= 1;
            let found = if *left == 0 {
                results.remove(&b)
            } else {
                results.get(&b).cloned()
            };
            found.unwrap_or_else(|| this.read(b))
        };
        let outputs = self
            .program
            .outputs
            .iter()
            .map(|&b| take(b, self))
            .collect();
        for &(var, val) in &self.program.updates {
            if let Storage::Variable { name } = &self.program.buffer(var).storage {
                variables.insert(name.clone(), take(val, self));
            }
        }
        Ok(outputs)
    }
}
