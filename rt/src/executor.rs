//! The CPU executor: a kernel program's steps in run order over a buffer
//! table (one pointer per program buffer), each compiled loop nest split
//! across the worker team when that pays, matrix products through the
//! packed AVX-512 GEMM, the matrix-vector path or the `gemm` crate, and
//! convolutions. The JIT session runs its programs here, and so does an
//! ahead-of-time binary (through [`crate::abi`]), so both run the same code.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::conv::{self, Conv};
use crate::{gemv, sgemm, team, Elem};

/// A compiled loop nest: `f(table, lo, hi)` runs loop variable 0 over `lo..hi`.
pub type KernelFn = unsafe extern "C" fn(*const *mut u8, i64, i64);

/// Weight elements above which a batch-1 matrix-vector product splits its
/// columns across the threads (handing work to the team costs more than a
/// 1-2 MB product gains from a second core: measured on mlp_b1).
const GEMV_SPLIT: usize = 1 << 18;

/// Work (multiply-adds) below which a GEMM through `gemm` (rayon) stays on
/// one thread.
const PARALLEL_WORK: usize = 1 << 23;

/// Work (multiply-adds) below which a product or convolution split across
/// the team stays on one thread.
const TEAM_WORK: usize = 1 << 18;

/// Elements below which an elementwise or reduction kernel stays on one thread.
const PARALLEL_ELEMENTS: usize = 1 << 14;

fn parallelism(threads: usize, work: usize) -> gemm::Parallelism {
    if threads > 1 && work >= PARALLEL_WORK {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// A compiled loop nest and how it may be split across threads.
#[derive(Clone, Debug)]
pub struct Launch {
    pub f: KernelFn,
    /// Extent of loop variable 0 (1 for rank 0).
    pub extent: i64,
    /// Loop variable 0 may run in disjoint chunks on several threads.
    pub split: bool,
    /// Elements the kernel visits (to decide whether threads pay).
    pub work: usize,
    /// The function's own table, where it is shared by kernels that differ
    /// only in their buffers: entry `i` is buffer `slots[i].0` of the
    /// program's table plus `slots[i].1` bytes. Empty: the program's table.
    pub slots: std::sync::Arc<[(usize, isize)]>,
}

impl Launch {
    /// Runs the nest's loop variable 0 over `lo..hi`, over the program's
    /// `table` (or the function's own, gathered from it: see `slots`).
    ///
    /// # Safety
    /// `table` must point at live buffers of the program's types.
    pub unsafe fn run(&self, table: *const *mut u8, lo: i64, hi: i64) {
        const INLINE: usize = 16;
        if self.slots.is_empty() {
            // SAFETY: guaranteed by the caller.
            return unsafe { (self.f)(table, lo, hi) };
        }
        let mut inline = [std::ptr::null_mut::<u8>(); INLINE];
        let mut heap = Vec::new();
        let own: &mut [*mut u8] = if self.slots.len() <= INLINE {
            &mut inline[..self.slots.len()]
        } else {
            heap.resize(self.slots.len(), std::ptr::null_mut());
            &mut heap
        };
        for (p, &(b, off)) in own.iter_mut().zip(self.slots.iter()) {
            // SAFETY: the slots name buffers of the table (checked when
            // decoded); the offset keeps the kernel's accesses in the
            // buffer, as its unshared code would.
            *p = unsafe { (*table.add(b)).wrapping_offset(off) };
        }
        // SAFETY: guaranteed by the caller; the own table lives to the end.
        unsafe { (self.f)(own.as_ptr(), lo, hi) }
    }

    /// A loop nest over `shape`; `split`: its dim 0 may be split.
    pub fn new(f: KernelFn, shape: &[usize], split: bool) -> Launch {
        Launch {
            f,
            extent: shape.first().copied().unwrap_or(1) as i64,
            split: split && !shape.is_empty(),
            work: shape.iter().product(),
            slots: std::sync::Arc::new([]),
        }
    }
}

/// A strided view of a matrix product's operand: element `[batch.., r, c]`
/// at `offset + sum(index * stride)` of buffer `buffer`.
#[derive(Clone, Debug, PartialEq)]
pub struct Operand {
    pub buffer: usize,
    pub offset: i64,
    /// One per batch dim, then row and column.
    pub strides: Vec<i64>,
}

/// The constant right-hand sides a program's products packed, by buffer,
/// offset, matrix strides, `[k, n]` and ISA: the steps of an unrolled
/// recurrent layer share one packed copy of its weights, which stays in
/// cache from step to step (a copy per step measured slower than the
/// `gemm` crate, which packs as it goes, and multiplied the memory).
#[derive(Default)]
pub struct Packs(std::collections::HashMap<PackKey, std::sync::Arc<sgemm::PackedB>>);

/// Buffer, offset, matrix strides, `[k, n]`, ISA.
type PackKey = (usize, i64, Vec<i64>, [usize; 2], sgemm::Isa);

/// A matrix product step: `out[batch.., m, n] = a[batch.., m, k] @ b[batch.., k, n]`.
pub struct MatMul {
    pub dtype: Elem,
    pub out: usize,
    pub a: Operand,
    pub b: Operand,
    pub batch: Vec<usize>,
    pub mnk: [usize; 3],
    pub epilogue: Option<Launch>,
    /// The right-hand side packed once (f32, constant), shared by every
    /// copy of the step.
    packed: Option<std::sync::Arc<sgemm::PackedB>>,
    /// The right-hand sides are packed at run time, into the run's
    /// scratch, for kiln's GEMM on this ISA (f32 products of computed
    /// operands, on AVX-512 or AVX2 hosts).
    packs_at_run: Option<sgemm::Isa>,
}

impl MatMul {
    /// A product step. `constant_b`: the whole right-hand buffer when it is a
    /// constant (f32 constants are packed once, into `packs`, which the
    /// program's steps share); `avx512`: the packed GEMM may be used
    /// (where the host has it).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dtype: Elem,
        out: usize,
        a: Operand,
        b: Operand,
        batch: Vec<usize>,
        mnk: [usize; 3],
        epilogue: Option<Launch>,
        constant_b: Option<&[f32]>,
        avx512: bool,
        packs: &mut Packs,
    ) -> MatMul {
        let isa = sgemm::isa(avx512).filter(|_| dtype == Elem::F32);
        let packed = isa.zip(constant_b).and_then(|(isa, data)| {
            let (_, groups) = Self::shared_rhs(&a, &b, &batch, mnk[0])?;
            if groups * mnk[0] < 2 {
                return None;
            }
            let key = (
                b.buffer,
                b.offset,
                b.strides[batch.len()..].to_vec(),
                [mnk[2], mnk[1]],
                isa,
            );
            if let Some(p) = packs.0.get(&key) {
                return Some(p.clone());
            }
            let p = std::sync::Arc::new(Self::pack(data, &b, &batch, mnk, isa)?);
            packs.0.insert(key, p.clone());
            Some(p)
        });
        // Computed right-hand sides of few rows (on AVX2, under 16) stay on
        // the `gemm` crate, which packs as it goes.
        let packs_at_run = isa.filter(|&isa| {
            constant_b.is_none() && mnk[0] >= 4 && (isa == sgemm::Isa::Avx512 || mnk[0] >= 16)
        });
        MatMul {
            dtype,
            out,
            a,
            b,
            batch,
            mnk,
            epilogue,
            packed,
            packs_at_run,
        }
    }

    /// Where every product of the batch shares one right-hand side (its
    /// batch strides are all 0) and the left-hand sides' batch dims walk
    /// one stride: that stride and the batch's size, so the batch runs as
    /// one product of `groups * m` rows (an RNN's input projection over a
    /// time-major view of batch-major data, whose rows do not merge).
    fn shared_rhs(a: &Operand, b: &Operand, batch: &[usize], m: usize) -> Option<(isize, usize)> {
        let nbd = batch.len();
        if b.strides[..nbd].iter().any(|&s| s != 0) {
            return None;
        }
        let groups: usize = batch.iter().product();
        // The dims of more than one entry, outermost first, must nest.
        let dims: Vec<(usize, i64)> = batch
            .iter()
            .zip(&a.strides[..nbd])
            .filter(|(&d, _)| d > 1)
            .map(|(&d, &s)| (d, s))
            .collect();
        for w in dims.windows(2) {
            if w[0].1 != w[1].1 * w[1].0 as i64 {
                return None;
            }
        }
        let gs = dims.last().map_or(m as i64 * a.strides[nbd], |d| d.1);
        Some((gs as isize, groups))
    }

    /// The constant right-hand side packed for `sgemm`, where the view
    /// lies in the data.
    fn pack(
        data: &[f32],
        b: &Operand,
        batch: &[usize],
        [_, n, k]: [usize; 3],
        isa: sgemm::Isa,
    ) -> Option<sgemm::PackedB> {
        let nbd = batch.len();
        let (rs, cs) = (b.strides[nbd], b.strides[nbd + 1]);
        if rs < 0 || cs < 0 || b.offset < 0 {
            return None;
        }
        let view = data.get(b.offset as usize..)?;
        if k == 0 || n == 0 || (k - 1) * rs as usize + (n - 1) * cs as usize >= view.len() {
            return None;
        }
        Some(sgemm::PackedB::new(
            view,
            rs as usize,
            cs as usize,
            k,
            n,
            isa,
        ))
    }
}

impl MatMul {
    /// A copy for another concurrent caller: the packed constant is
    /// shared.
    fn fork(&self) -> MatMul {
        MatMul {
            dtype: self.dtype,
            out: self.out,
            a: self.a.clone(),
            b: self.b.clone(),
            batch: self.batch.clone(),
            mnk: self.mnk,
            epilogue: self.epilogue.clone(),
            packed: self.packed.clone(),
            packs_at_run: self.packs_at_run,
        }
    }
}

/// One step of a program.
pub enum Step {
    /// A compiled loop nest.
    Jit(Launch),
    MatMul(MatMul),
    /// A convolution of NCHW tensors, then its epilogue.
    Conv {
        conv: Conv,
        out: usize,
        x: usize,
        w: usize,
        epilogue: Option<Launch>,
    },
    /// A convolution of NHWC tensors, its epilogue on ranges of pixels
    /// (dim 0 of its loop, where that merged `[n, oh, ow]`) as they are done.
    ConvNhwc {
        conv: crate::conv_nhwc::ConvNhwc,
        out: usize,
        x: usize,
        w: usize,
        /// Applied as the kernels store, before the epilogue.
        fused: Option<crate::blob::FusedSteps>,
        epilogue: Option<Launch>,
    },
    /// Max or average pooling, then its epilogue.
    Pool {
        pool: crate::pool::Pool,
        out: usize,
        x: usize,
        epilogue: Option<Launch>,
    },
    /// Rows of `data` picked by `indices`, then the epilogue.
    Gather {
        gather: crate::gather::Gather,
        out: usize,
        data: usize,
        indices: usize,
        epilogue: Option<Launch>,
    },
    /// Work the caller does (an op with no code here), then its epilogue.
    Host {
        epilogue: Option<Launch>,
    },
}

impl Step {
    /// A copy for another concurrent caller of the same program: what is
    /// fixed (plans, packed constants) is shared or copied, the scratch
    /// buffers a run writes are its own, allocated when it first runs.
    pub fn fork(&self) -> Step {
        match self {
            Step::Jit(l) => Step::Jit(l.clone()),
            Step::MatMul(mm) => Step::MatMul(mm.fork()),
            Step::Conv {
                conv,
                out,
                x,
                w,
                epilogue,
            } => Step::Conv {
                conv: conv.fork(),
                out: *out,
                x: *x,
                w: *w,
                epilogue: epilogue.clone(),
            },
            Step::ConvNhwc {
                conv,
                out,
                x,
                w,
                fused,
                epilogue,
            } => Step::ConvNhwc {
                conv: conv.fork(),
                out: *out,
                x: *x,
                w: *w,
                fused: fused.clone(),
                epilogue: epilogue.clone(),
            },
            Step::Pool {
                pool,
                out,
                x,
                epilogue,
            } => Step::Pool {
                pool: pool.clone(),
                out: *out,
                x: *x,
                epilogue: epilogue.clone(),
            },
            Step::Gather {
                gather,
                out,
                data,
                indices,
                epilogue,
            } => Step::Gather {
                gather: gather.clone(),
                out: *out,
                data: *data,
                indices: *indices,
                epilogue: epilogue.clone(),
            },
            Step::Host { epilogue } => Step::Host {
                epilogue: epilogue.clone(),
            },
        }
    }
}

/// What one run writes besides the program's buffers, shared by its
/// steps (which run one after another): im2col's column matrices and the
/// right-hand sides of products packed at run time. Grown to the largest
/// step's need, and kept with the copy of the steps for later runs.
#[derive(Default)]
pub struct RunScratch {
    columns: Vec<f64>,
    packing: Vec<f32>,
}

/// A step that failed: its index and why.
#[derive(Clone, Debug, PartialEq)]
pub struct StepError {
    pub step: usize,
    pub reason: String,
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
/// So the first runs go split and unsplit in alternating blocks of four
/// (the first run of each a warm-up), each way keeping its fastest
/// whole-run time; later runs split unless that measured more than 1/8
/// slower, and the measuring repeats after `FIRST_RETUNE` runs (a worker
/// thread just started may share its parent's CPU until the scheduler
/// moves it) and then every `RETUNE` runs, as the host's placement can
/// change. A slow program (its first run took `SLOW` or more: a ResNet-50
/// at batch 8 takes 400 ms) measures in blocks of one run, two each way,
/// so that it settles within a few runs rather than after seconds of runs
/// half of which go the slow way. Programs with nothing to split skip it.
#[derive(Clone, Copy, Debug)]
struct Tuner {
    runs: u32,
    /// Measuring rounds finished.
    rounds: u32,
    /// Fastest run (ns) unsplit and split.
    best: [u64; 2],
    /// The first run took `SLOW` or more.
    slow: bool,
    /// Fixed by the settings (`KILN_SPLIT`), else measured.
    forced: Option<bool>,
}

/// Runs measured each way (the first of each block is a warm-up).
const TUNE_RUNS: u32 = 8;
/// Runs in a block of one way.
const BLOCK: u32 = 4;
/// A first run this long or longer makes a slow program.
const SLOW: Duration = Duration::from_millis(20);
/// Runs measured each way by a slow program (blocks of one, no warm-up).
const SLOW_TUNE_RUNS: u32 = 2;
/// Runs after which the ways are measured again.
const RETUNE: u32 = 5000;
/// Runs after which the ways are measured a second time.
const FIRST_RETUNE: u32 = 200;

impl Tuner {
    /// A tuner that measures, or that `forced` fixes.
    fn new(forced: Option<bool>) -> Tuner {
        Tuner {
            runs: 0,
            rounds: 0,
            best: [u64::MAX; 2],
            slow: false,
            forced,
        }
    }

    /// Runs of one way in a block, and measured runs in all.
    fn plan(self) -> (u32, u32) {
        if self.slow {
            (1, 2 * SLOW_TUNE_RUNS)
        } else {
            (BLOCK, 2 * TUNE_RUNS)
        }
    }

    /// Whether this run splits kernels (where the size rules allow it).
    fn split(self) -> bool {
        if let Some(f) = self.forced {
            return f;
        }
        let (block, measured) = self.plan();
        match self.runs {
            // Blocks of runs, split and unsplit in turn, so that a
            // disturbance early on (a worker not yet on its own CPU) spoils
            // one block of one way, not the whole measure of it.
            0 => true,
            r if r <= measured => ((r - 1) / block).is_multiple_of(2),
            // Splitting is the default unless it measured clearly slower
            // (one disturbed block must not turn a program single-threaded).
            _ => self.best[1] <= self.best[0].saturating_add(self.best[0] / 8),
        }
    }

    fn record(mut self, split: bool, took: Duration) -> Tuner {
        let r = self.runs;
        if r == 0 && self.rounds == 0 {
            self.slow = took >= SLOW;
        }
        let (block, measured) = self.plan();
        // The first run of each block of several warms that way up and is
        // not kept.
        if (1..=measured).contains(&r) && (block == 1 || !(r - 1).is_multiple_of(block)) {
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

/// The most threads a program may use. Each executable starts a thread
/// pool of its thread count, so an unbounded count (`--threads 100000`)
/// would spend minutes creating threads; 1024 is above any core count
/// kiln runs on and starts in milliseconds.
pub const MAX_THREADS: usize = 1024;

/// A thread count written as text: a whole number from 1 to [`MAX_THREADS`].
pub fn parse_threads(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(n),
        Ok(0) => Err("0 threads: at least 1 is needed".into()),
        Ok(n) => Err(format!("{n} threads is over the limit of {MAX_THREADS}")),
        Err(_) => Err(format!(
            "'{text}' is not a thread count (a whole number from 1 to {MAX_THREADS})"
        )),
    }
}

/// Every available core (at most [`MAX_THREADS`]).
pub fn core_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_THREADS)
}

/// A program's steps with the threads they may use.
///
/// Runs may come from several threads at once (`run` takes `&self`): each
/// takes a copy of the steps from a pool ([`Step::fork`]), so the scratch
/// buffers a run writes are its own while plans and packed constant
/// weights exist once.
pub struct Exec {
    /// The steps as built: forked for each concurrent run, never run.
    steps: Vec<Step>,
    /// Copies of the steps, with their run's scratch, not in use by a run.
    spare: Mutex<Vec<(Vec<Step>, RunScratch)>>,
    threads: usize,
    pool: Option<rayon::ThreadPool>,
    /// Whether splitting kernels across threads pays, measured.
    tuner: Mutex<Tuner>,
}

// SAFETY: the steps hold function pointers and owned data; the raw pointers
// inside (sgemm operands) are built per run from the table. A run writes
// only the copy of the steps it took from `spare`, and `tuner` and `spare`
// are behind locks.
unsafe impl Send for Exec {}
unsafe impl Sync for Exec {}

/// Called after each step with its index and start time (profiling).
pub type StepHook<'a> = &'a mut dyn FnMut(usize, Instant);

impl Exec {
    /// Steps that may use `threads` threads (1: single-threaded).
    /// Counts over [`MAX_THREADS`] are taken as [`MAX_THREADS`].
    /// `split` fixes whether kernels split across threads (`None`:
    /// measured).
    pub fn new(steps: Vec<Step>, threads: usize, split: Option<bool>) -> Exec {
        let threads = threads.clamp(1, MAX_THREADS);
        if threads > 1 {
            // Start the workers now, so they are settled on their own CPUs
            // before the first runs measure splitting.
            team::Team::global();
        }
        Exec {
            steps,
            spare: Mutex::new(Vec::new()),
            threads,
            pool: (threads > 1)
                .then(|| {
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .ok()
                })
                .flatten(),
            tuner: Mutex::new(Tuner::new(split)),
        }
    }

    /// The steps.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Runs every step over `table`; `host(i)` does the work of host step
    /// `i`, and `after` (profiling) is called after each step.
    ///
    /// # Safety
    /// `table` must hold a live buffer of the program's type for every
    /// buffer the steps name, for the whole run.
    pub unsafe fn run(
        &self,
        table: *const *mut u8,
        host: &mut dyn FnMut(usize) -> Result<(), String>,
        mut after: Option<StepHook<'_>>,
    ) -> Result<(), StepError> {
        let splittable = self.threads > 1;
        let lock = |m: &Mutex<Tuner>| *m.lock().unwrap_or_else(|e| e.into_inner());
        let split = splittable && lock(&self.tuner).split();
        let started = Instant::now();
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let (mut steps, mut scratch) = spare.unwrap_or_else(|| {
            (
                self.steps.iter().map(Step::fork).collect(),
                RunScratch::default(),
            )
        });
        let r = (|| {
            for (i, step) in steps.iter_mut().enumerate() {
                let t = Instant::now();
                // SAFETY: the caller's contract.
                unsafe { self.step(step, &mut scratch, i, table, split, host) }
                    .map_err(|reason| StepError { step: i, reason })?;
                // A bounds-checked kernel's report (see `extern_fns`).
                if let Some((b, index, len)) = crate::extern_fns::take_bounds_failure() {
                    return Err(StepError {
                        step: i,
                        reason: format!(
                            "out-of-bounds access: element {index} of buffer {b} ({len} elements)"
                        ),
                    });
                }
                if let Some(a) = after.as_mut() {
                    a(i, t);
                }
            }
            Ok(())
        })();
        self.spare
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((steps, scratch));
        if splittable {
            let mut t = self.tuner.lock().unwrap_or_else(|e| e.into_inner());
            *t = t.record(split, started.elapsed());
        }
        r
    }

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
    unsafe fn launch(&self, l: &Launch, table: *const *mut u8, split: bool) {
        let t = Table(table);
        let team = team::Team::global();
        let n = (self.threads.min(team.size()) as i64).min(l.extent);
        if split && l.split && l.work >= PARALLEL_ELEMENTS && n >= 2 {
            team.run(n as usize, &|c| {
                let c = c as i64;
                let (lo, hi) = (l.extent * c / n, l.extent * (c + 1) / n);
                // SAFETY: chunks cover disjoint ranges of the outermost loop.
                unsafe { l.run(t.get(), lo, hi) }
            });
        } else {
            // SAFETY: the table points at live buffers of the program's types.
            unsafe { l.run(table, 0, l.extent) }
        }
    }

    unsafe fn step(
        &self,
        step: &mut Step,
        scratch: &mut RunScratch,
        i: usize,
        table: *const *mut u8,
        split: bool,
        host: &mut dyn FnMut(usize) -> Result<(), String>,
    ) -> Result<(), String> {
        // SAFETY (whole function): the caller guarantees the table.
        let buf = |b: usize| unsafe { *table.add(b) };
        match step {
            Step::Jit(l) => unsafe { self.launch(l, table, split) },
            Step::MatMul(mm) => {
                let done = unsafe { self.matmul(mm, &mut scratch.packing, table, split) }?;
                if let Some(l) = mm.epilogue.as_ref().filter(|_| !done) {
                    unsafe { self.launch(l, table, split) };
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
                let (o_ptr, x_ptr, w_ptr) =
                    (SendMut(buf(*out)), SendMut(buf(*x)), SendMut(buf(*w)));
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
                    unsafe { l.run(t.get(), lo as i64, hi as i64) }
                };
                let hook: Option<&conv::Epilogue<'_>> = epilogue.as_ref().map(|_| &hook as _);
                // SAFETY: the buffers have the shapes the convolution was built for.
                let applied = self.in_pool(parallel, || unsafe {
                    conv.run(
                        o_ptr.get(),
                        x_ptr.get(),
                        w_ptr.get(),
                        par,
                        hook,
                        &mut scratch.columns,
                    )
                });
                if let Some(l) = epilogue.as_ref().filter(|_| !applied) {
                    unsafe { self.launch(l, table, split) };
                }
            }
            Step::ConvNhwc {
                conv,
                out,
                x,
                w,
                fused,
                epilogue,
            } => {
                let [o, cg, kh, kw] = conv.weight;
                let pixels = conv.input[0] * conv.out_hw[0] * conv.out_hw[1];
                let work = pixels * o * cg * kh * kw;
                let threads = if split && self.threads > 1 && work >= TEAM_WORK {
                    self.threads
                } else {
                    1
                };
                let t = Table(table);
                // The epilogue's dim 0 is the pixels where its operands
                // let `[n, oh, ow]` merge (see the codegen); else it runs
                // whole, after.
                let by_pixels = epilogue
                    .as_ref()
                    .is_some_and(|l| l.extent as usize == pixels);
                let hook = |r: std::ops::Range<usize>| {
                    if let Some(l) = epilogue.as_ref() {
                        // SAFETY: the epilogue covers those pixels, now computed.
                        unsafe { l.run(t.get(), r.start as i64, r.end as i64) }
                    }
                };
                let hook: Option<&crate::conv_nhwc::Epilogue<'_>> = by_pixels.then_some(&hook as _);
                let operand = |o: Option<(usize, i64)>| {
                    // SAFETY: the codegen's offsets keep every read inside the buffer.
                    o.map_or(std::ptr::null(), |(b, off)| unsafe {
                        (buf(b) as *const f32).offset(off as isize)
                    })
                };
                let fused = fused.as_ref().map(|f| {
                    // The decoder checked the steps' order.
                    let form = crate::fuse::canonical(&f.steps).unwrap_or_default();
                    crate::fuse::Fused {
                        bias: operand(f.bias),
                        residual: operand(f.residual),
                        lo: form.lo,
                        hi: form.hi,
                        act: form.act,
                    }
                });
                // SAFETY: the buffers have the shapes the convolution was built for.
                unsafe {
                    conv.run(
                        buf(*out),
                        buf(*x),
                        buf(*w),
                        threads,
                        fused.as_ref(),
                        hook,
                        &mut scratch.columns,
                    )
                };
                if let Some(l) = epilogue.as_ref().filter(|_| !by_pixels) {
                    unsafe { self.launch(l, table, split) };
                }
            }
            Step::Pool {
                pool,
                out,
                x,
                epilogue,
            } => {
                // SAFETY: the buffers have the pooling's shapes and type.
                unsafe { pool.run(buf(*out), buf(*x), self.threads, split) };
                if let Some(l) = epilogue {
                    unsafe { self.launch(l, table, split) };
                }
            }
            Step::Gather {
                gather,
                out,
                data,
                indices,
                epilogue,
            } => {
                // SAFETY: the buffers have the gather's shapes and types.
                unsafe { gather.run(buf(*out), buf(*data), buf(*indices)) }?;
                if let Some(l) = epilogue {
                    unsafe { self.launch(l, table, split) };
                }
            }
            Step::Host { epilogue } => {
                host(i)?;
                if let Some(l) = epilogue {
                    unsafe { self.launch(l, table, split) };
                }
            }
        }
        Ok(())
    }

    /// Runs a matrix product; returns whether it applied its epilogue itself.
    unsafe fn matmul(
        &self,
        mm: &mut MatMul,
        packing: &mut Vec<f32>,
        table: *const *mut u8,
        split: bool,
    ) -> Result<bool, String> {
        let MatMul {
            dtype,
            out,
            a,
            b,
            batch,
            mnk,
            epilogue,
            packed,
            packs_at_run,
        } = mm;
        // SAFETY (whole function): the caller guarantees the table.
        let buf = |b: usize| unsafe { *table.add(b) };
        let work = batch.iter().product::<usize>() * mnk.iter().product::<usize>();
        let nbd = batch.len();
        if let Some(pb) = packed {
            let (gs, groups) = MatMul::shared_rhs(a, b, batch, mnk[0])
                .ok_or("a packed right-hand side that the batch does not share")?;
            let lhs = sgemm::Lhs::grouped(
                // SAFETY: the view's offset lies inside its buffer.
                unsafe { (buf(a.buffer) as *const f32).add(a.offset as usize) },
                a.strides[nbd] as isize,
                a.strides[nbd + 1] as isize,
                mnk[0],
                gs,
                groups,
            );
            let out = buf(*out) as *mut f32;
            let parallel = split && work >= TEAM_WORK;
            // An epilogue over the rows runs on each part's rows as it
            // finishes them (where its loop runs over rows: one batch).
            let fused = epilogue.as_ref().filter(|l| l.extent as usize == lhs.m);
            let t = Table(table);
            let rows = |lo: usize, hi: usize| {
                if let Some(l) = fused {
                    // SAFETY: the epilogue covers rows lo..hi of the output.
                    unsafe { l.run(t.get(), lo as i64, hi as i64) }
                }
            };
            let hook: Option<&(dyn Fn(usize, usize) + Sync)> =
                fused.map(|_| &rows as &(dyn Fn(usize, usize) + Sync));
            // SAFETY: the operand view and output have the product's shapes;
            // `MatMul::new` checked the host.
            unsafe { sgemm::matmul(lhs, pb, out, self.threads, parallel, hook) };
            return Ok(fused.is_some());
        }
        if let Some(isa) = *packs_at_run {
            let [m, n, _] = *mnk;
            let (pa, pb, po) = (
                buf(a.buffer) as *const f32,
                buf(b.buffer) as *const f32,
                buf(*out) as *mut f32,
            );
            let items: Vec<sgemm::Item> = batch_offsets(a, b, batch)
                .enumerate()
                .map(|(bi, (oa, ob))| sgemm::Item {
                    a: sgemm::Lhs::new(
                        pa.wrapping_offset(oa as isize),
                        a.strides[nbd] as isize,
                        a.strides[nbd + 1] as isize,
                        m,
                    ),
                    b: pb.wrapping_offset(ob as isize),
                    out: po.wrapping_add(bi * m * n),
                })
                .collect();
            let parallel = split && work >= TEAM_WORK;
            // SAFETY: the views and outputs lie in their buffers (the
            // lowering derives them from the buffers' shapes).
            unsafe {
                sgemm::batched(
                    isa,
                    &items,
                    b.strides[nbd] as isize,
                    b.strides[nbd + 1] as isize,
                    mnk[2],
                    mnk[1],
                    packing,
                    self.threads,
                    parallel,
                )
            };
            return Ok(false);
        }
        // Through the `gemm` crate (or the matrix-vector path), with GEMM
        // threads from this executable's pool, not rayon's global one, so
        // kernels never oversubscribe the cores.
        let parallel = split && work >= PARALLEL_WORK;
        let (po, pa, pb) = (
            SendMut(buf(*out)),
            SendMut(buf(a.buffer)),
            SendMut(buf(b.buffer)),
        );
        let threads = if split { self.threads } else { 1 };
        let pool = self.pool.as_ref().filter(|_| split);
        let (dtype, mnk) = (*dtype, *mnk);
        let (a, b, batch) = (&*a, &*b, &**batch);
        self.in_pool(parallel, || unsafe {
            general_matmul(po, pa, pb, dtype, a, b, batch, mnk, threads, pool.is_some())
        });
        Ok(false)
    }
}

/// A matrix product through the matrix-vector path (one f32 row) or the
/// `gemm` crate (floats) or plain loops (integers, wrapping).
///
/// # Safety
/// The operand views and the output must lie inside their buffers.
#[allow(clippy::too_many_arguments)]
unsafe fn general_matmul(
    po: SendMut,
    pa: SendMut,
    pb: SendMut,
    dtype: Elem,
    a: &Operand,
    b: &Operand,
    batch: &[usize],
    mnk: [usize; 3],
    threads: usize,
    pooled: bool,
) {
    let [m, n, k] = mnk;
    let nb: usize = batch.iter().product();
    let nbd = batch.len();
    // Batch-1 f32 dense layers: a matrix-vector product over contiguous rows.
    if m == 1 && nb == 1 && dtype == Elem::F32 && b.strides[nbd + 1] == 1 {
        let (x, xs) = (
            SendMut(unsafe { pa.get().add(a.offset as usize * 4) }),
            a.strides[nbd + 1] as isize,
        );
        let w = SendMut(unsafe { pb.get().add(b.offset as usize * 4) });
        let ws = b.strides[nbd] as isize;
        let run = move |cols: std::ops::Range<usize>| {
            // SAFETY: the operand views lie inside their buffers.
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
        if pooled && k * n >= GEMV_SPLIT && n >= 64 {
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
        return;
    }
    for (bi, (oa, ob)) in batch_offsets(a, b, batch).enumerate() {
        let oo = (bi * m * n) as isize;
        let st = [
            a.strides[nbd] as isize,
            a.strides[nbd + 1] as isize,
            b.strides[nbd] as isize,
            b.strides[nbd + 1] as isize,
        ];
        let off = [oo, oa as isize, ob as isize];
        // SAFETY: operand views and the output stay inside their buffers (the
        // lowering derives them from the buffers' shapes).
        unsafe {
            match dtype {
                Elem::F32 => float_gemm::<f32>(po, pa, pb, off, st, mnk, threads),
                Elem::F64 => float_gemm::<f64>(po, pa, pb, off, st, mnk, threads),
                Elem::I32 => int_matmul::<i32>(
                    po.get() as *mut i32,
                    pa.get() as *const i32,
                    pb.get() as *const i32,
                    off,
                    st,
                    mnk,
                ),
                Elem::I64 => int_matmul::<i64>(
                    po.get() as *mut i64,
                    pa.get() as *const i64,
                    pb.get() as *const i64,
                    off,
                    st,
                    mnk,
                ),
                Elem::I8 => narrow_matmul::<i8>(po, pa, pb, off, st, mnk),
                Elem::I16 => narrow_matmul::<i16>(po, pa, pb, off, st, mnk),
                Elem::U8 => narrow_matmul::<u8>(po, pa, pb, off, st, mnk),
                Elem::U16 => narrow_matmul::<u16>(po, pa, pb, off, st, mnk),
                Elem::U32 => narrow_matmul::<u32>(po, pa, pb, off, st, mnk),
                Elem::U64 => narrow_matmul::<u64>(po, pa, pb, off, st, mnk),
            }
        }
    }
}

/// The element offsets of `a`'s and `b`'s views for each product of a
/// batched matmul, in row-major batch order.
fn batch_offsets<'a>(
    a: &'a Operand,
    b: &'a Operand,
    batch: &'a [usize],
) -> impl Iterator<Item = (i64, i64)> + 'a {
    let nb: usize = batch.iter().product();
    let mut bst = vec![1usize; batch.len()];
    for d in (0..batch.len().saturating_sub(1)).rev() {
        bst[d] = bst[d + 1] * batch[d + 1];
    }
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

/// A wrapping integer matrix product of strided operands (offsets and
/// strides as for [`float_gemm`]).
///
/// # Safety
/// The views must lie inside the buffers the pointers point at.
unsafe fn int_matmul<T: Copy + WrappingMulAdd>(
    d: *mut T,
    a: *const T,
    b: *const T,
    [od, oa, ob]: [isize; 3],
    [ars, acs, brs, bcs]: [isize; 4],
    [m, n, k]: [usize; 3],
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

macro_rules! wrapping_mul_add {
    ($($t:ty),*) => {$(
        impl WrappingMulAdd for $t {
            const ZERO: $t = 0;
            fn mul_add_wrapping(self, a: $t, b: $t) -> $t {
                self.wrapping_add(a.wrapping_mul(b))
            }
        }
    )*};
}

wrapping_mul_add!(i8, i16, i32, i64, u8, u16, u32, u64);

/// [`int_matmul`] on the buffers' bytes as `T` (the narrow and unsigned
/// integers: products and sums wrap at `T`'s width).
///
/// # Safety
/// As [`int_matmul`].
unsafe fn narrow_matmul<T: Copy + WrappingMulAdd>(
    po: SendMut,
    pa: SendMut,
    pb: SendMut,
    off: [isize; 3],
    st: [isize; 4],
    mnk: [usize; 3],
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        int_matmul::<T>(
            po.get() as *mut T,
            pa.get() as *const T,
            pb.get() as *const T,
            off,
            st,
            mnk,
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays `runs` runs whose time depends on the way: returns the ways
    /// taken.
    fn replay(tuner: &mut Tuner, runs: usize, time: impl Fn(bool) -> Duration) -> Vec<bool> {
        (0..runs)
            .map(|_| {
                let split = tuner.split();
                *tuner = tuner.record(split, time(split));
                split
            })
            .collect()
    }

    #[test]
    fn a_slow_program_settles_within_five_runs() {
        let mut t = Tuner::new(None);
        // 400 ms split, 700 ms not.
        let ways = replay(&mut t, 12, |s| {
            Duration::from_millis(if s { 400 } else { 700 })
        });
        assert_eq!(&ways[..5], &[true, true, false, true, false]);
        assert!(ways[5..].iter().all(|&s| s), "{ways:?}");
        // And one where a second thread only hurts.
        let mut t = Tuner::new(None);
        let ways = replay(&mut t, 12, |s| {
            Duration::from_millis(if s { 90 } else { 50 })
        });
        assert!(ways[5..].iter().all(|&s| !s), "{ways:?}");
    }

    #[test]
    fn a_fast_program_measures_in_blocks_of_four() {
        let mut t = Tuner::new(None);
        let ways = replay(&mut t, 30, |s| {
            Duration::from_micros(if s { 90 } else { 50 })
        });
        // The first run, then 16 in blocks of four, alternating.
        assert_eq!(ways[1..17].iter().filter(|&&s| s).count(), 8);
        assert!(ways[17..].iter().all(|&s| !s), "{ways:?}");
        let mut t = Tuner::new(Some(true));
        assert!(replay(&mut t, 20, |_| Duration::from_micros(5))
            .iter()
            .all(|&s| s));
    }
}
