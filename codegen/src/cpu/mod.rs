//! The CPU backend: kernel programs compiled to machine code by Cranelift.
//!
//! Elementwise and reduction kernels (and the epilogues of matmuls and
//! opaque ops) become JIT-compiled loop nests. The steps run on
//! `kiln-rt`'s executor (the same code ahead-of-time binaries link): loop
//! nests split across the worker team, matrix products through the packed
//! AVX-512 GEMM, the matrix-vector path or the `gemm` crate, convolutions
//! directly or as im2col + GEMM, pooling, gathers as row copies;
//! scatter-add and control flow run their reference implementation on the
//! stored operands between them ("host steps"). All temporaries live in one arena allocated at
//! compile time.

pub mod aot;
mod emit;
mod functions;
mod fused;
mod jit;
mod object;
mod scalar_ops;
mod shared;
pub use jit::Target;
/// The thread count's bound and checks (`kiln run --threads`, `KILN_NUM_THREADS`).
pub use kiln_rt::executor::{core_threads, parse_threads, MAX_THREADS};
pub use kiln_rt::settings::{env_threads, ConvPath, Settings};

/// Whether the optimizer's `channels_last` pass pays on this host: it runs
/// channels-last convolutions on their fast kernels (AVX2 and FMA: kiln's
/// GEMM and the 8-lane depthwise kernel) and the NCHW kernels have no
/// AVX-512 to use instead (`avx512`: whether they may use the host's).
/// Where they have it, they ran the depthwise networks faster: on a Zen 5,
/// one thread, EfficientNet-B0 9.0 ms against 10.3 channels-last,
/// MobileNet-V3-Small batch 8 11.8 against 14.3 (MobileNet-V2 level).
pub fn has_channels_last_kernels(avx512: bool) -> bool {
    kiln_rt::sgemm::isa(false).is_some() && !(avx512 && kiln_rt::avx512())
}
mod support;
mod vector;
mod wide;

use std::collections::HashMap;

use kiln_graph::{Array, DType, Op};
use kiln_optimizer::kernel::{BufferId, Epilogue, Kernel, KernelProgram, Storage};
use kiln_rt::blob::{self, ConvShape, Nest};
use kiln_rt::executor::{Exec, KernelFn};

use crate::error::{Error, Result};
use crate::{Engine, Executable, RunOutput};
use jit::{Body, Jit};

/// Compiles kernel programs for the host CPU. Its settings come from the
/// edge (`kiln::SessionOptions`, the CLI); the defaults read nothing from
/// the environment.
#[derive(Clone, Copy, Debug)]
pub struct CpuBackend {
    /// Threads large kernels may use (1: single-threaded).
    pub threads: usize,
    /// AVX-512 kernels where the host has them: long f32 elementwise rows
    /// in the AVX-512 row code (when false, or on a host without AVX-512,
    /// in the AVX2 row code where the host has AVX2 and FMA), and the
    /// run-time library's AVX-512 products and convolutions.
    pub avx512: bool,
    /// Long f32 elementwise rows run in the run-time library's row code
    /// (AVX-512 or AVX2, see `avx512`) where the host has one; when false,
    /// all rows stay in Cranelift's four-lane vectors (the path hosts
    /// without AVX2 take, and what tests compare the row code with).
    pub wide_rows: bool,
    /// Debug mode: every load and store of compiled code checks its index
    /// against its buffer (scalar code only); an access outside is an
    /// error of the run, not a stray read or write.
    pub bounds_checks: bool,
    /// Split kernels across threads always, never, or as measured (`None`).
    pub split: Option<bool>,
    /// How convolutions choose between the direct kernel and im2col + GEMM.
    pub conv: ConvPath,
    /// Generated code printed on stderr as it is compiled.
    pub dumps: Dumps,
}

/// Debug output of compilation, on stderr (`KILN_DUMP_CLIF`,
/// `KILN_DUMP_ASM`, `KILN_DUMP_ROWS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dumps {
    /// Each kernel's Cranelift IR.
    pub clif: bool,
    /// Each kernel's machine code.
    pub asm: bool,
    /// The row programs (AVX-512 or AVX2 row code).
    pub rows: bool,
}

impl Default for CpuBackend {
    /// Every available core, AVX-512 (else AVX2) where the host has it, no
    /// bounds checks, splitting and convolution paths as measured, no
    /// dumps.
    fn default() -> Self {
        CpuBackend {
            threads: kiln_rt::executor::core_threads(),
            avx512: true,
            wide_rows: true,
            bounds_checks: false,
            split: None,
            conv: ConvPath::Measured,
            dumps: Dumps::default(),
        }
    }
}

impl CpuBackend {
    /// The run-time library's settings of this backend.
    fn rt_settings(&self) -> Settings {
        Settings {
            avx512: self.avx512,
            split: self.split,
            conv: self.conv,
        }
    }
}

/// A kernel program compiled for the CPU.
///
/// Immutable once compiled and shared by every caller: runs may come from
/// several threads at once (`run` takes `&self`). Each run takes a scratch
/// (the arena of planned temporaries and the buffer table) from a pool, or
/// allocates one when all are in use; the machine code, the constants and
/// the packed weights exist once.
pub struct CpuExecutable {
    /// The machine code, freed when the executable is dropped (a JIT
    /// module's memory is not freed by dropping it).
    jit: std::mem::ManuallyDrop<Jit>,
    program: KernelProgram,
    exec: Exec,
    /// The kernel of each host step (by step index).
    host: HashMap<usize, usize>,
    /// Scratches not in use by a run.
    scratch: std::sync::Mutex<Vec<Scratch>>,
    /// Whether runs record their kernel times (read without a lock).
    profiling: std::sync::atomic::AtomicBool,
    /// The kernel times recorded.
    profile: std::sync::Mutex<Vec<KernelTime>>,
    /// Distinct compiled functions (kernels that differ only in their
    /// buffers share one: see `shared`).
    functions: usize,
}

/// What one run writes besides its results: the arena and the table of
/// buffer addresses the kernels read.
struct Scratch {
    arena: Vec<u64>,
    table: Vec<*mut u8>,
}

impl Scratch {
    /// A zeroed arena for `program` (an allocation failure is an error,
    /// not an abort) and an empty table.
    fn new(program: &KernelProgram) -> Result<Scratch> {
        let words = program.memory.arena.div_ceil(8) + 8;
        let mut arena: Vec<u64> = Vec::new();
        arena.try_reserve_exact(words).map_err(|_| Error::Codegen {
            kernel: usize::MAX,
            reason: format!(
                "the program's arena of {} bytes could not be allocated",
                program.memory.arena
            ),
        })?;
        arena.resize(words, 0);
        Ok(Scratch {
            arena,
            table: vec![std::ptr::null_mut(); program.buffers.len()],
        })
    }

    fn arena_base(&mut self) -> *mut u8 {
        // 64-byte align the arena start.
        let p = self.arena.as_mut_ptr() as *mut u8;
        let pad = (64 - (p as usize) % 64) % 64;
        // SAFETY: the arena has 64 spare bytes beyond the planned size.
        unsafe { p.add(pad) }
    }
}

// SAFETY: the table's pointers are rewritten at the start of every run and
// only dereferenced by the kernels of the run that holds the scratch.
unsafe impl Send for Scratch {}

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

impl Drop for CpuExecutable {
    fn drop(&mut self) {
        // SAFETY: `jit` is taken once, here, and never used again; the
        // only callers of its code are this executable's steps, which
        // cannot run once it is being dropped.
        unsafe { std::mem::ManuallyDrop::take(&mut self.jit).free() }
    }
}

// SAFETY: the JIT's code is immutable after compilation; a run writes only
// the scratch it took from the pool (behind a lock) and its own results;
// `Exec` is `Sync` (see there); the profile is behind a lock.
unsafe impl Send for CpuExecutable {}
unsafe impl Sync for CpuExecutable {}

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

/// The loop the epilogue `e` of kernel `k` (writing `out`) is compiled
/// for: a channels-last convolution's merges its `[n, oh, ow]` into dim 0
/// where it can, for the executor to run it on ranges of pixels as they
/// are done (see `kiln_rt::conv_nhwc`).
fn epilogue_loop(
    program: &KernelProgram,
    k: usize,
    out: BufferId,
    e: &Epilogue,
) -> (Vec<usize>, Epilogue) {
    let shape = &program.buffer(out).shape;
    match &program.kernels[k] {
        Kernel::Op {
            op: Op::Conv2d {
                channels_last: true,
                ..
            },
            ..
        } => kiln_optimizer::loops::epilogue_loop_rows(shape, e, 3),
        _ => kiln_optimizer::loops::epilogue_loop(shape, e),
    }
}

fn is_identity(e: &Epilogue) -> bool {
    e.program.instrs.len() == 1 && e.inputs.is_empty()
}

/// A kernel's compiled functions, before their addresses are known: a loop
/// nest (its loop shape and whether dim 0 may split across threads), or a
/// matrix product or op (by kernel index) with its epilogue, if any.
pub(crate) enum Pending {
    Jit(Compiled, Vec<usize>, bool),
    MatMul(usize, Option<Compiled>),
    Op(usize, Option<Compiled>),
}

/// A compiled function and the table it reads: per entry, a buffer and a
/// byte offset (empty: the program's whole table; see `shared`).
pub(crate) type Compiled = (cranelift_module::FuncId, Vec<(usize, i64)>);

/// Compiles every loop nest and epilogue of `program` into `jit`, in
/// kernel order.
pub(crate) fn compile_kernels<M: cranelift_module::Module>(
    jit: &mut Jit<M>,
    program: &KernelProgram,
) -> Result<Vec<Pending>> {
    let mut pending = Vec::new();
    for (i, k) in program.kernels.iter().enumerate() {
        let epilogue_fn =
            |jit: &mut Jit<M>, out: BufferId, e: &Epilogue| -> Result<Option<Compiled>> {
                if is_identity(e) {
                    return Ok(None);
                }
                let (shape, e) = epilogue_loop(program, i, out, e);
                let body = Body::Elementwise {
                    out,
                    shape: &shape,
                    inputs: &e.inputs,
                    program: &e.program,
                    acc_from_out: true,
                };
                jit.compile_nest(program, &body, i).map(Some)
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
                Pending::Jit(jit.compile_nest(program, &body, i)?, shape.clone(), true)
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
                    jit.compile_nest(program, &b, i)?,
                    shape.clone(),
                    !axes.contains(&0),
                )
            }
            Kernel::MatMul { out, epilogue, .. } => {
                Pending::MatMul(i, epilogue_fn(jit, *out, epilogue)?)
            }
            // A fused epilogue is applied as the convolution stores.
            Kernel::Op { .. } if fused::fusion(program, i).is_some() => Pending::Op(i, None),
            Kernel::Op { out, epilogue, .. } => Pending::Op(i, epilogue_fn(jit, *out, epilogue)?),
        });
    }
    Ok(pending)
}

/// The run-time element type of a matrix product's dtype.
fn elem(d: DType) -> Option<kiln_rt::Elem> {
    Some(match d {
        DType::F32 => kiln_rt::Elem::F32,
        DType::F64 => kiln_rt::Elem::F64,
        DType::I32 => kiln_rt::Elem::I32,
        DType::I64 => kiln_rt::Elem::I64,
        DType::I8 => kiln_rt::Elem::I8,
        DType::I16 => kiln_rt::Elem::I16,
        DType::U8 => kiln_rt::Elem::U8,
        DType::U16 => kiln_rt::Elem::U16,
        DType::U32 => kiln_rt::Elem::U32,
        DType::U64 => kiln_rt::Elem::U64,
        _ => return None,
    })
}

/// The steps of a program for `kiln-rt`'s executor (see `kiln_rt::blob`),
/// the compiled functions they name by index, and the kernel each host
/// step (an op the executor has no code for) runs.
pub(crate) struct Steps {
    pub words: Vec<i64>,
    pub functions: Vec<cranelift_module::FuncId>,
    pub host: HashMap<usize, usize>,
}

/// `program`'s steps, from its compiled kernels.
pub(crate) fn write_steps(program: &KernelProgram, pending: &[Pending]) -> Result<Steps> {
    let mut w = blob::Writer::default();
    let mut functions = Vec::new();
    let mut host = HashMap::new();
    for (step, p) in pending.iter().enumerate() {
        // An epilogue's function index and loop shape.
        let mut epilogue = |e: &Option<Compiled>, out: BufferId| {
            e.as_ref().map(|(id, slots)| {
                functions.push(*id);
                (
                    functions.len() - 1,
                    epilogue_shape(program, out),
                    slots.clone(),
                )
            })
        };
        match p {
            Pending::Jit((id, slots), shape, split) => {
                functions.push(*id);
                w.jit(Nest {
                    function: functions.len() - 1,
                    shape,
                    split: *split,
                    slots,
                })
            }
            Pending::MatMul(i, e) => {
                let Kernel::MatMul {
                    out,
                    a,
                    b,
                    batch,
                    mnk,
                    ..
                } = &program.kernels[*i]
                else {
                    unreachable!("pending matmul")
                };
                let dtype = program.buffer(*out).dtype;
                let Some(el) = elem(dtype) else {
                    return Err(Error::Codegen {
                        kernel: *i,
                        reason: format!("{dtype} matmul (half products run widened to f32)"),
                    });
                };
                let operand = |o: &kiln_optimizer::kernel::Operand| kiln_rt::executor::Operand {
                    buffer: o.buffer.0,
                    offset: o.offset,
                    strides: o.strides.clone(),
                };
                let bbuf = program.buffer(b.buffer);
                let constant_b = matches!(bbuf.storage, Storage::Constant { .. })
                    .then(|| bbuf.shape.iter().product::<usize>());
                let e = epilogue(e, *out);
                w.matmul(
                    el,
                    out.0,
                    &operand(a),
                    &operand(b),
                    batch,
                    *mnk,
                    e.as_ref().map(|(f, s, slots)| Nest {
                        function: *f,
                        shape: s,
                        split: true,
                        slots,
                    }),
                    constant_b,
                );
            }
            Pending::Op(i, e) => {
                let Kernel::Op {
                    op,
                    out,
                    args,
                    epilogue: kernel_epilogue,
                } = &program.kernels[*i]
                else {
                    unreachable!("pending op")
                };
                let mut e = epilogue(e, *out);
                if let (
                    Some(e),
                    Op::Conv2d {
                        channels_last: true,
                        ..
                    },
                ) = (e.as_mut(), op)
                {
                    e.1 = epilogue_loop(program, *i, *out, kernel_epilogue).0;
                }
                let e = e.as_ref().map(|(f, s, slots)| Nest {
                    function: *f,
                    shape: s,
                    split: true,
                    slots,
                });
                let dtype = program.buffer(*out).dtype;
                match op {
                    Op::Conv2d {
                        stride,
                        padding,
                        dilation,
                        groups,
                        channels_last,
                    } if matches!(dtype, DType::F32 | DType::F64) => {
                        // NCHW dims either way (an NHWC buffer's dims moved).
                        let dims = |b: BufferId| -> [usize; 4] {
                            let s = &program.buffer(b).shape;
                            if *channels_last {
                                [s[0], s[3], s[1], s[2]]
                            } else {
                                [s[0], s[1], s[2], s[3]]
                            }
                        };
                        let o = dims(*out);
                        let shape = ConvShape {
                            dtype: if dtype == DType::F32 {
                                kiln_rt::Real::F32
                            } else {
                                kiln_rt::Real::F64
                            },
                            input: dims(args[0]),
                            weight: {
                                let s = &program.buffer(args[1]).shape;
                                [s[0], s[1], s[2], s[3]]
                            },
                            out_hw: [o[2], o[3]],
                            stride: *stride,
                            padding: *padding,
                            dilation: *dilation,
                            groups: *groups,
                            channels_last: *channels_last,
                        };
                        let constant_w =
                            matches!(program.buffer(args[1]).storage, Storage::Constant { .. });
                        let fusion = fused::fusion(program, *i).map(|f| blob::FusedSteps {
                            steps: f.steps,
                            bias: f.bias,
                            residual: f.residual,
                        });
                        w.conv(
                            &shape,
                            out.0,
                            args[0].0,
                            args[1].0,
                            constant_w,
                            e,
                            fusion.as_ref(),
                        );
                    }
                    Op::MaxPool2d { window } | Op::AvgPool2d { window, .. }
                        if matches!(dtype, DType::F32 | DType::F64) =>
                    {
                        let s = &program.buffer(args[0]).shape;
                        let o = &program.buffer(*out).shape;
                        let pool = kiln_rt::pool::Pool {
                            dtype: if dtype == DType::F32 {
                                kiln_rt::Real::F32
                            } else {
                                kiln_rt::Real::F64
                            },
                            max: matches!(op, Op::MaxPool2d { .. }),
                            count_include_pad: matches!(
                                op,
                                Op::AvgPool2d {
                                    count_include_pad: true,
                                    ..
                                }
                            ),
                            input: [s[0], s[1], s[2], s[3]],
                            out_hw: [o[2], o[3]],
                            kernel: window.kernel,
                            stride: window.stride,
                            padding: window.padding,
                            dilation: window.dilation,
                        };
                        w.pool(&pool, out.0, args[0].0, e);
                    }
                    Op::Gather { axis } => {
                        let data = &program.buffer(args[0]).shape;
                        let indices = program.buffer(args[1]);
                        let g = kiln_rt::gather::Gather {
                            elem_bytes: dtype.size_bytes(),
                            outer: data[..*axis].iter().product(),
                            len: data[*axis],
                            inner: data[*axis + 1..].iter().product(),
                            count: indices.shape.iter().product(),
                            wide: indices.dtype == DType::I64,
                        };
                        w.gather(&g, out.0, args[0].0, args[1].0, e);
                    }
                    _ => {
                        host.insert(step, *i);
                        w.host(e);
                    }
                }
            }
        }
    }
    Ok(Steps {
        words: w.finish(),
        functions,
        host,
    })
}

impl Engine for CpuBackend {
    type Executable = CpuExecutable;

    fn placement(&self) -> crate::engine::Placement {
        crate::engine::Placement::Cpu
    }

    fn compile(&self, program: &KernelProgram) -> Result<CpuExecutable> {
        self.check(program)?;
        let rows = if self.wide_rows {
            wide::isa(self.avx512)
        } else {
            None
        };
        let mut jit = Jit::new(rows)?;
        jit.set_checked(self.bounds_checks);
        jit.set_dumps(self.dumps);
        let pending = compile_kernels(&mut jit, program)?;
        jit.finalize()?;
        let Steps {
            words,
            functions,
            host,
        } = write_steps(program, &pending)?;
        let fns: Vec<KernelFn> = functions.iter().map(|&id| jit.function(id)).collect();
        let mut program = program.clone();
        let constant = |b: usize| match &program.buffers[b].storage {
            Storage::Constant { value } => value.0.as_ptr(),
            _ => std::ptr::null(),
        };
        // SAFETY: the constants are this executable's copy of the program's,
        // which it keeps unchanged for its life.
        let steps = unsafe {
            blob::decode(
                &words,
                &fns,
                program.buffers.len(),
                &constant,
                &self.rt_settings(),
            )
        }
        .map_err(|reason| Error::Codegen {
            kernel: usize::MAX,
            reason: format!("step list: {reason}"),
        })?;
        if !program.functions.is_empty() {
            // Control flow calls its functions as compiled code too.
            program.runner = Some(std::sync::Arc::new(functions::CompiledFunctions::new(
                *self,
            )));
        }
        // The first scratch: a program whose arena cannot be allocated
        // fails here, not at its first run.
        let first = Scratch::new(&program)?;
        Ok(CpuExecutable {
            jit: std::mem::ManuallyDrop::new(jit),
            exec: Exec::new(steps, self.threads, self.split),
            host,
            scratch: std::sync::Mutex::new(vec![first]),
            program,
            profiling: std::sync::atomic::AtomicBool::new(false),
            profile: std::sync::Mutex::new(Vec::new()),
            functions: functions
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len(),
        })
    }
}

impl CpuExecutable {
    /// Records the time of every kernel of later runs (or stops recording).
    pub fn set_profiling(&self, on: bool) {
        self.profiling
            .store(on, std::sync::atomic::Ordering::Relaxed);
        self.profile
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The kernel times recorded since the last call.
    pub fn take_profile(&self) -> Vec<KernelTime> {
        std::mem::take(&mut *self.profile.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// How many distinct functions of machine code the program's loop
    /// nests and epilogues compiled to.
    pub fn compiled_functions(&self) -> usize {
        self.functions
    }

    /// The program this executable runs.
    pub fn program(&self) -> &KernelProgram {
        &self.program
    }

    /// The kernels that run on the host, by their reference meaning, in
    /// step order (see `kiln_codegen::engine`).
    pub fn host_kernels(&self) -> Vec<usize> {
        let mut k: Vec<usize> = self.host.values().copied().collect();
        k.sort_unstable();
        k
    }

    /// A scratch for one run: a spare one, else a new one.
    fn take_scratch(&self) -> Result<Scratch> {
        let spare = self.scratch.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match spare {
            Some(s) => Ok(s),
            None => Scratch::new(&self.program),
        }
    }
}

/// Runs the op of kernel `kernel` (pooling, gather, scatter, control flow)
/// by its reference meaning on the stored operands.
fn host_step(
    program: &KernelProgram,
    table: &[*mut u8],
    kernel: usize,
) -> std::result::Result<(), String> {
    let Kernel::Op { op, out, args, .. } = &program.kernels[kernel] else {
        return Err(format!("kernel {kernel} is not an op"));
    };
    let arrays: Vec<Array> = args.iter().map(|&b| read(program, table, b)).collect();
    let refs: Vec<&Array> = arrays.iter().collect();
    let shape = program.buffer(*out).shape.clone();
    let v = program.eval_op(op, &refs, &shape)?;
    let n = program.buffer(*out).size_bytes().min(v.size_bytes());
    // SAFETY: as in `read`; the array has the buffer's type.
    unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), table[out.0], n) };
    Ok(())
}

/// Reads buffer `b` into an array (for host steps and results read twice).
fn read(program: &KernelProgram, table: &[*mut u8], b: BufferId) -> Array {
    let buf = program.buffer(b);
    let n = buf.size_bytes();
    let mut bytes = vec![0u8; n];
    // SAFETY: the table holds a valid pointer to `n` bytes for this buffer during a run.
    unsafe { std::ptr::copy_nonoverlapping(table[b.0], bytes.as_mut_ptr(), n) };
    let data = kiln_graph::Data::from_le_bytes(buf.dtype, &bytes).expect("buffer bytes are valid");
    Array::new(buf.shape.clone(), data).expect("buffer shape")
}

impl Executable for CpuExecutable {
    fn program(&self) -> &KernelProgram {
        &self.program
    }

    fn run(
        &self,
        inputs: &HashMap<&str, &Array>,
        variables: &HashMap<String, Array>,
    ) -> Result<RunOutput> {
        let mut scratch = self.take_scratch()?;
        let out = self.run_in(&mut scratch, inputs, variables);
        self.scratch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(scratch);
        out
    }
}

impl CpuExecutable {
    /// One run, with `scratch` as its arena and table.
    fn run_in(
        &self,
        scratch: &mut Scratch,
        inputs: &HashMap<&str, &Array>,
        variables: &HashMap<String, Array>,
    ) -> Result<RunOutput> {
        // Results are fresh arrays the kernels write into directly.
        let mut results: HashMap<BufferId, Array> = HashMap::new();
        let arena = scratch.arena_base();
        for (i, b) in self.program.buffers.iter().enumerate() {
            let check = |a: &Array, what: &str, name: &str| crate::check_operand(a, b, what, name);
            scratch.table[i] = match &b.storage {
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
        let table = scratch.table.as_ptr();
        let buffers = &scratch.table;
        let mut host = |i: usize| host_step(&self.program, buffers, self.host[&i]);
        let profiling = self.profiling.load(std::sync::atomic::Ordering::Relaxed);
        let mut log = Vec::new();
        let mut record = |i: usize, t: std::time::Instant| {
            log.push(KernelTime {
                kernel: i,
                start: t,
                duration: t.elapsed(),
            })
        };
        // SAFETY: the table was filled above with live buffers of the
        // program's types, which outlive the run. Kernels only read the
        // inputs, variables and constants: assignments come back as results.
        let result = unsafe {
            self.exec.run(
                table,
                &mut host,
                profiling.then_some(&mut record as &mut dyn FnMut(usize, std::time::Instant)),
            )
        };
        if profiling {
            self.profile
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(log);
        }
        result.map_err(|e| Error::Run {
            kernel: e.step,
            reason: e.reason,
        })?;
        // Results move out on their last use (a copy only where a buffer is
        // fetched twice, or fetched and also a variable's new value).
        let mut uses: HashMap<BufferId, usize> = HashMap::new();
        let updates = self.program.updates.iter().map(|&(_, val)| val);
        for b in self.program.outputs.iter().copied().chain(updates) {
            *uses.entry(b).or_default() += 1;
        }
        let mut take = |b: BufferId| -> Array {
            let left = uses.get_mut(&b).expect("counted above");
            *left -= 1;
            let found = if *left == 0 {
                results.remove(&b)
            } else {
                results.get(&b).cloned()
            };
            found.unwrap_or_else(|| read(&self.program, &scratch.table, b))
        };
        let fetched = self.program.outputs.iter().map(|&b| take(b)).collect();
        let mut assigned = Vec::new();
        for &(var, val) in &self.program.updates {
            if let Storage::Variable { name } = &self.program.buffer(var).storage {
                assigned.push((name.clone(), take(val)));
            }
        }
        Ok(RunOutput {
            fetched,
            updates: assigned,
        })
    }
}
