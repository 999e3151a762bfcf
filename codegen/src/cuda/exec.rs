//! Running a kernel program on a device through generated kernels and
//! cuBLAS.
//!
//! [`DeviceExecutable`] does what a run needs, whatever the device: it
//! gives every buffer device memory (temporaries at their offsets in one
//! arena, the rest their own, constants uploaded once), binds each
//! generated kernel and matrix product to its buffers' addresses, and per
//! run copies the feeds in, launches the kernels in order, runs primitive
//! ops (`Kernel::Op`) without device code on the host between them, and
//! copies the fetches out. Variables are the caller's device memory,
//! bound where they lie and assigned there after the outputs are taken.
//! [`DeviceExecutable::run_device`] instead takes feeds already in device
//! memory and leaves the results there: inputs and results are read and
//! written where they lie, with no copy, by binding their addresses.
//!
//! A program with no host steps records its launches once as a CUDA graph
//! and replays it on later runs, recording again only when the addresses
//! bound to it change (`CudaSettings::graphs` off, `KILN_CUDA_GRAPHS=0`, turns
//! graphs off).
//!
//! The device is the [`Gpu`] trait: [`CudaGpu`] on NVIDIA GPUs through
//! cudarc, and in the tests a host stand-in that compiles the same CUDA C
//! as C++ (`tests/tests/cuda.rs`), which is how this logic is checked on
//! machines without a GPU.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use kiln_graph::{Array, DType};
use kiln_optimizer::kernel::{BufferId, Kernel, KernelProgram, Storage};

pub use super::driver::{CudaGpu, MatmulPrecision};
use super::source::{self, KernelSource};
use crate::cpu::KernelTime;
use crate::error::{Error, Result};

/// A strided batched matrix product in cuBLAS's column-major terms: for
/// each batch `q`, `C_q = op(A_q) op(B_q)` with `C_q` `m x n`, `op(A_q)`
/// `m x k` and `op(B_q)` `k x n`; element `(i, j)` of a matrix with leading
/// dimension `ld` is at `i + j * ld`, `op` transposes where `trans_*` says,
/// and batch `q` starts `q * stride` elements after the first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmCall {
    /// `F32` or `F64`.
    pub dtype: DType,
    /// Whether `A` is read transposed.
    pub trans_a: bool,
    /// Whether `B` is read transposed.
    pub trans_b: bool,
    /// Rows of `C`.
    pub m: usize,
    /// Columns of `C`.
    pub n: usize,
    /// The summed dimension.
    pub k: usize,
    /// Device address of `A`'s first element.
    pub a: u64,
    /// `A`'s leading dimension.
    pub lda: usize,
    /// Elements between batches of `A` (0: one matrix for every batch).
    pub stride_a: i64,
    /// Device address of `B`'s first element.
    pub b: u64,
    /// `B`'s leading dimension.
    pub ldb: usize,
    /// Elements between batches of `B`.
    pub stride_b: i64,
    /// Device address of `C`'s first element.
    pub c: u64,
    /// `C`'s leading dimension.
    pub ldc: usize,
    /// Elements between batches of `C`.
    pub stride_c: i64,
    /// Number of batches.
    pub batch: usize,
}

/// What [`DeviceExecutable`] needs of a device. Memory is named by device
/// address; a [`Gpu::Mem`] only owns its block.
pub trait Gpu {
    /// A block of device memory.
    type Mem;
    /// `bytes` of zeroed device memory.
    fn alloc(&self, bytes: usize) -> Result<Self::Mem>;
    /// The device address of `m`'s first byte.
    fn address(&self, m: &Self::Mem) -> u64;
    /// Copies `bytes` to device address `dst` (in order with launches).
    fn upload(&self, dst: u64, bytes: &[u8]) -> Result<()>;
    /// Copies `out.len()` bytes from device address `src`, once every
    /// launch before has finished.
    fn download(&self, src: u64, out: &mut [u8]) -> Result<()>;
    /// Copies `bytes` bytes from `src` to `dst`, both on the device.
    fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()>;
    /// Compiles and loads `kernels`; later launches name them by position.
    fn load(&mut self, kernels: &[KernelSource]) -> Result<()>;
    /// Launches kernel `k` with device addresses `params` and a count.
    fn launch(&self, k: usize, params: &[u64], count: usize) -> Result<()>;
    /// Whether [`Gpu::gemm`] is available; matrix products are generated
    /// kernels where it is not.
    fn has_gemm(&self) -> bool {
        false
    }
    /// Runs a matrix product (F32 or F64).
    fn gemm(&self, call: &GemmCall) -> Result<()> {
        let _ = call;
        Err(Error::Cuda("this device has no GEMM library".into()))
    }
    /// How programs for this device are made and run.
    fn settings(&self) -> super::CudaSettings {
        super::CudaSettings::default()
    }
    /// Waits for everything launched.
    fn synchronize(&self) -> Result<()>;
    /// Records the launches `launches` makes into a graph this device can
    /// replay (they do not run now); `false` where it has no graphs.
    fn record(&mut self, launches: &dyn Fn(&Self) -> Result<()>) -> Result<bool> {
        let _ = launches;
        Ok(false)
    }
    /// Runs the recorded graph.
    fn replay(&self) -> Result<()> {
        Err(Error::Cuda("no recorded graph".into()))
    }
    /// Runs `work` and returns how long the device took for it.
    fn time(&self, work: &dyn Fn(&Self) -> Result<()>) -> Result<Duration> {
        self.synchronize()?;
        let t = Instant::now();
        work(self)?;
        self.synchronize()?;
        Ok(t.elapsed())
    }
}

/// A tensor in device memory, for [`DeviceExecutable::run_device`].
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceRef {
    /// The device address of its first element.
    pub address: u64,
    /// Element type.
    pub dtype: DType,
    /// Dims (row-major, dense).
    pub shape: Vec<usize>,
}

/// Whether a run's launches are recorded once and replayed.
#[derive(Clone, Copy, PartialEq)]
enum Graph {
    /// Not recorded for the current addresses.
    Untried,
    Recorded,
    /// The device has no graphs, a step runs on the host, or
    /// `KILN_CUDA_GRAPHS=0`.
    Off,
}

/// What a parameter points at: a program buffer, or scratch memory of the
/// executable's own (an im2col matrix).
#[derive(Clone, Copy, Debug)]
enum Arg {
    Buffer(BufferId),
    Scratch(usize),
}

enum Step {
    /// A generated kernel: its buffers, then the addresses bound to them.
    Launch {
        kernel: usize,
        buffers: Vec<Arg>,
        /// Whether the error word's address follows the buffers'.
        error_word: bool,
        params: Vec<u64>,
        count: usize,
        /// The program's kernel it belongs to (for errors).
        of: usize,
    },
    /// A matrix product through the device's GEMM library: `A` and `B`
    /// (in [`GemmCall`]'s terms) as buffers and byte offsets, and `C`.
    Gemm {
        a: (Arg, u64),
        b: (Arg, u64),
        c: Arg,
        call: GemmCall,
        of: usize,
    },
    /// A primitive op, run on the host.
    Host(usize),
}

/// Where a buffer lives: a block of its own, or the arena at an offset.
#[derive(Clone, Copy)]
enum Place {
    Own(usize),
    Arena(usize),
}

/// A kernel program built for a [`Gpu`].
pub struct DeviceExecutable<G: Gpu> {
    gpu: G,
    program: KernelProgram,
    arena: G::Mem,
    own: Vec<G::Mem>,
    scratch: Vec<G::Mem>,
    places: Vec<Place>,
    /// Addresses bound in place of a buffer's own memory (by
    /// [`DeviceExecutable::run_device`]).
    bound: Vec<Option<u64>>,
    /// Inputs no kernel writes, and results no other output or update
    /// shares: the buffers that can be bound to memory outside.
    bindable: Vec<bool>,
    steps: Vec<Step>,
    graph: Graph,
    /// Set by kernels that find an input out of range
    /// (`source::KernelSource::error_word`).
    error: Option<G::Mem>,
    profiling: bool,
    profile: Vec<KernelTime>,
    /// Recordings that failed (see `execute`).
    record_failures: usize,
}

/// Runs one step's device work (a launch or a matrix product).
fn launch_step<G: Gpu>(gpu: &G, step: &Step) -> Result<()> {
    let (r, of) = match step {
        Step::Launch {
            kernel,
            params,
            count,
            of,
            ..
        } => {
            if *count == 0 {
                return Ok(());
            }
            (gpu.launch(*kernel, params, *count), *of)
        }
        Step::Gemm { call, of, .. } => (gpu.gemm(call), *of),
        Step::Host(_) => return Ok(()),
    };
    r.map_err(|e| Error::Run {
        kernel: of,
        reason: e.to_string(),
    })
}

/// Launches every device step (a program without host steps).
fn launch_all<G: Gpu>(gpu: &G, steps: &[Step]) -> Result<()> {
    steps.iter().try_for_each(|s| launch_step(gpu, s))
}

/// How a row-major view `X[rows][cols]` with row stride `rs` and column
/// stride `cs` reads as the column-major `cols x rows` matrix `X^T` in
/// cuBLAS's terms: `(false, ld)` when columns are contiguous (stored as
/// `X^T` with leading dimension `rs`), `(true, ld)` when rows are (stored
/// as `X`, transposed on reading); `None` when neither is.
fn layout(rs: i64, cs: i64, rows: usize, cols: usize) -> Option<(bool, usize)> {
    let (rs, cs) = (usize::try_from(rs).ok()?, usize::try_from(cs).ok()?);
    if (cs == 1 || cols == 1) && (rows == 1 || rs >= cols) {
        return Some((false, if rows == 1 { cols.max(1) } else { rs }));
    }
    if (rs == 1 || rows == 1) && (cols == 1 || cs >= rows) {
        return Some((true, if cols == 1 { rows.max(1) } else { cs }));
    }
    None
}

/// Kernel `k` (a matrix product) as one strided batched GEMM, where its
/// type is F32 or F64, its operands have a unit stride in rows or columns
/// and its batch dims collapse to one stride each; `None` otherwise (the
/// generated kernel takes it). Returns the call (addresses left 0) with
/// `A`, `B` (buffer, byte offset) and `C`.
#[allow(clippy::type_complexity)]
pub fn gemm_of(
    program: &KernelProgram,
    k: usize,
) -> Option<(GemmCall, (BufferId, u64), (BufferId, u64), BufferId)> {
    let Kernel::MatMul {
        out,
        a,
        b,
        batch,
        mnk: [m, n, kk],
        ..
    } = &program.kernels[k]
    else {
        return None;
    };
    let (m, n, kk) = (*m, *n, *kk);
    let dtype = program.buffer(*out).dtype;
    if !matches!(dtype, DType::F32 | DType::F64) || m == 0 || n == 0 || kk == 0 {
        return None;
    }
    let limit = i32::MAX as usize;
    let nb = batch.len();
    let c_strides = kiln_graph::shape::strides(batch);
    // Batch dims of one element drop out; the rest must nest like dense
    // dims in all three operands to be one stride.
    let mut dims: Vec<(usize, i64, i64, i64)> = (0..nb)
        .filter(|&d| batch[d] > 1)
        .map(|d| {
            (
                batch[d],
                a.strides[d],
                b.strides[d],
                (c_strides[d] * m * n) as i64,
            )
        })
        .collect();
    while dims.len() > 1 {
        let (n2, a2, b2, c2) = dims.pop().expect("two or more");
        let (n1, a1, b1, c1) = dims.pop().expect("two or more");
        let w = n2 as i64;
        if a1 != a2 * w || b1 != b2 * w || c1 != c2 * w {
            return None;
        }
        dims.push((n1 * n2, a2, b2, c2));
    }
    let (count, sa, sb, sc) = dims.first().copied().unwrap_or((1, 0, 0, (m * n) as i64));
    if sa < 0 || sb < 0 || a.offset < 0 || b.offset < 0 {
        return None;
    }
    let (ta, lda) = layout(a.strides[nb], a.strides[nb + 1], m, kk)?;
    let (tb, ldb) = layout(b.strides[nb], b.strides[nb + 1], kk, n)?;
    if [m, n, kk, lda, ldb, count].iter().any(|&v| v > limit) {
        return None;
    }
    let size = dtype.size_bytes() as u64;
    // Row-major C = A B is column-major C^T = B^T A^T.
    let call = GemmCall {
        dtype,
        trans_a: tb,
        trans_b: ta,
        m: n,
        n: m,
        k: kk,
        a: 0,
        lda: ldb,
        stride_a: sb,
        b: 0,
        ldb: lda,
        stride_b: sa,
        c: 0,
        ldc: n,
        stride_c: sc,
        batch: count,
    };
    Some((
        call,
        (b.buffer, b.offset as u64 * size),
        (a.buffer, a.offset as u64 * size),
        *out,
    ))
}

impl<G: Gpu> DeviceExecutable<G> {
    /// Emits, compiles and loads `program`'s kernels on `gpu` and gives its
    /// buffers device memory.
    pub fn new(mut gpu: G, program: &KernelProgram) -> Result<DeviceExecutable<G>> {
        let arena = gpu.alloc(program.memory.arena.max(64))?;
        let mut own = Vec::new();
        let mut places = Vec::with_capacity(program.buffers.len());
        for b in &program.buffers {
            places.push(match &b.storage {
                Storage::Arena { offset } => Place::Arena(*offset),
                storage => {
                    let m = gpu.alloc(b.size_bytes().max(1))?;
                    if let Storage::Constant { value } = storage {
                        gpu.upload(gpu.address(&m), value.0.as_bytes())?;
                    }
                    own.push(m);
                    Place::Own(own.len() - 1)
                }
            });
        }
        let mut sources = Vec::new();
        let mut steps = Vec::new();
        let mut scratch = Vec::new();
        let mut error: Option<G::Mem> = None;
        let settings = gpu.settings();
        let conv_gemm = gpu.has_gemm() && settings.conv_gemm;
        let launch_with = |s: KernelSource,
                           args: Option<Vec<Arg>>,
                           k: usize,
                           steps: &mut Vec<Step>,
                           sources: &mut Vec<KernelSource>| {
            let args = args.unwrap_or_else(|| s.params.iter().map(|&b| Arg::Buffer(b)).collect());
            steps.push(Step::Launch {
                kernel: sources.len(),
                buffers: args,
                error_word: s.error_word,
                params: Vec::new(),
                count: s.count,
                of: k,
            });
            sources.push(s);
        };

        for (k, kernel) in program.kernels.iter().enumerate() {
            match kernel {
                Kernel::MatMul { .. } => match gemm_of(program, k).filter(|_| gpu.has_gemm()) {
                    Some((call, a, b, c)) => steps.push(Step::Gemm {
                        a: (Arg::Buffer(a.0), a.1),
                        b: (Arg::Buffer(b.0), b.1),
                        c: Arg::Buffer(c),
                        call,
                        of: k,
                    }),
                    None => match source::emit_matmul(program, k) {
                        Some(s) => launch_with(s, None, k, &mut steps, &mut sources),
                        None => {
                            return Err(Error::Codegen {
                                kernel: k,
                                reason: "bool matrix products have no device form".into(),
                            })
                        }
                    },
                },
                Kernel::Op { .. } => {
                    let im2col = conv_gemm
                        .then(|| super::conv::im2col_gemm(program, k))
                        .flatten();
                    if let (Some((src, bytes, call)), Some((weights, out))) =
                        (im2col, super::conv::weights_and_output(program, k))
                    {
                        scratch.push(gpu.alloc(bytes.max(1))?);
                        let col = Arg::Scratch(scratch.len() - 1);
                        let args = vec![col, Arg::Buffer(src.params[1])];
                        launch_with(src, Some(args), k, &mut steps, &mut sources);
                        steps.push(Step::Gemm {
                            a: (col, 0),
                            b: (Arg::Buffer(weights), 0),
                            c: Arg::Buffer(out),
                            call,
                            of: k,
                        });
                    } else if let Some(pair) = source::emit_scatter_add(program, k) {
                        for s in pair {
                            launch_with(s, None, k, &mut steps, &mut sources);
                        }
                    } else if let Some(s) = source::emit_op(program, k) {
                        launch_with(s, None, k, &mut steps, &mut sources);
                    } else {
                        steps.push(Step::Host(k));
                    }
                }
                _ => {}
            }
            let main = source::emit(program, k, settings.ilp)
                .map_err(|source::Unsupported(reason)| Error::Codegen { kernel: k, reason })?;
            if let Some(s) = main {
                launch_with(s, None, k, &mut steps, &mut sources);
            }
        }
        if steps.iter().any(|s| {
            matches!(
                s,
                Step::Launch {
                    error_word: true,
                    ..
                }
            )
        }) {
            error = Some(gpu.alloc(8)?);
        }
        gpu.load(&sources)?;
        // A run is one graph of launches when nothing runs on the host
        // between them: recorded on the first run, replayed after.
        let graph = if steps.iter().any(|s| matches!(s, Step::Host(_))) || !settings.graphs {
            Graph::Off
        } else {
            Graph::Untried
        };
        let written: HashSet<BufferId> = program.kernels.iter().flat_map(|k| k.outputs()).collect();
        let mut uses: HashMap<BufferId, usize> = HashMap::new();
        for &o in &program.outputs {
            *uses.entry(o).or_default() += 1;
        }
        for &(_, v) in &program.updates {
            *uses.entry(v).or_default() += 1;
        }
        let bindable = program
            .buffers
            .iter()
            .enumerate()
            .map(|(i, b)| match b.storage {
                Storage::Input { .. } | Storage::Variable { .. } => !written.contains(&BufferId(i)),
                Storage::Result => {
                    uses.get(&BufferId(i)) == Some(&1)
                        && !program.updates.iter().any(|u| u.1 == BufferId(i))
                }
                _ => false,
            })
            .collect();
        let mut exe = DeviceExecutable {
            gpu,
            program: program.clone(),
            arena,
            own,
            scratch,
            bound: vec![None; program.buffers.len()],
            bindable,
            places,
            steps,
            graph,
            error,
            profiling: false,
            profile: Vec::new(),
            record_failures: 0,
        };
        exe.bind();
        Ok(exe)
    }

    /// The program this runs.
    pub fn program(&self) -> &KernelProgram {
        &self.program
    }

    /// The device.
    pub fn gpu(&self) -> &G {
        &self.gpu
    }

    /// Times every step of later runs (replaying no graph meanwhile), or
    /// stops.
    pub fn set_profiling(&mut self, on: bool) {
        self.profiling = on;
    }

    /// The steps timed since the last call: device time of each launch or
    /// matrix product (a kernel with an epilogue appears twice), host time
    /// of host steps.
    pub fn take_profile(&mut self) -> Vec<KernelTime> {
        std::mem::take(&mut self.profile)
    }

    /// The device address of buffer `b` now.
    fn address(&self, b: BufferId) -> u64 {
        if let Some(a) = self.bound[b.0] {
            return a;
        }
        match self.places[b.0] {
            Place::Own(i) => self.gpu.address(&self.own[i]),
            Place::Arena(o) => self.gpu.address(&self.arena) + o as u64,
        }
    }

    fn arg_address(&self, a: Arg) -> u64 {
        match a {
            Arg::Buffer(b) => self.address(b),
            Arg::Scratch(i) => self.gpu.address(&self.scratch[i]),
        }
    }

    /// Writes the current addresses into every step; a recorded graph
    /// must be recorded again.
    fn bind(&mut self) {
        let error = self.error.as_ref().map(|e| self.gpu.address(e));
        let mut steps = std::mem::take(&mut self.steps);
        for step in &mut steps {
            match step {
                Step::Launch {
                    buffers,
                    error_word,
                    params,
                    ..
                } => {
                    *params = buffers.iter().map(|&b| self.arg_address(b)).collect();
                    if *error_word {
                        params.push(error.expect("allocated with the steps"));
                    }
                }
                Step::Gemm { a, b, c, call, .. } => {
                    call.a = self.arg_address(a.0) + a.1;
                    call.b = self.arg_address(b.0) + b.1;
                    call.c = self.arg_address(*c);
                }
                Step::Host(_) => {}
            }
        }
        self.steps = steps;
        if self.graph == Graph::Recorded {
            self.graph = Graph::Untried;
        }
    }

    /// Binds `bound` (one entry a buffer) if it differs from what is bound.
    fn rebind(&mut self, bound: Vec<Option<u64>>) {
        if bound != self.bound {
            self.bound = bound;
            self.bind();
        }
    }

    fn read(&self, b: BufferId) -> Result<Array> {
        let buf = self.program.buffer(b);
        let mut a = Array::zeros(buf.dtype, &buf.shape);
        let bytes = a.size_bytes();
        // SAFETY: `a` owns `bytes` bytes of plain elements; the device
        // writes bools as 0 or 1.
        let out = unsafe { std::slice::from_raw_parts_mut(a.as_mut_ptr(), bytes) };
        self.gpu.download(self.address(b), out)?;
        Ok(a)
    }

    fn write(&self, b: BufferId, a: &Array) -> Result<()> {
        self.gpu.upload(self.address(b), a.as_bytes())
    }

    fn check(&self, i: usize, dtype: DType, shape: &[usize]) -> Result<()> {
        let b = &self.program.buffers[i];
        if dtype != b.dtype || shape != b.shape.as_slice() {
            return Err(Error::Input(format!(
                "buffer {i}: expected {}{:?}, got {}{:?}",
                b.dtype, b.shape, dtype, shape
            )));
        }
        Ok(())
    }

    /// Runs with placeholder values in host memory and the variables'
    /// states in device memory (by name); returns the program's outputs
    /// and leaves assigned variables' new values in their device memory.
    ///
    /// # Safety
    ///
    /// Every variable's address must be that of live device memory of this
    /// device's context holding at least its dtype and shape's bytes, apart
    /// from every other variable's.
    pub unsafe fn run(
        &mut self,
        inputs: &HashMap<&str, &Array>,
        variables: &HashMap<&str, DeviceRef>,
    ) -> Result<Vec<Array>> {
        // SAFETY: as this function's contract.
        unsafe { self.prepare(None, None, variables)? };
        for i in 0..self.program.buffers.len() {
            if let Storage::Input { name } = &self.program.buffers[i].storage {
                let value = inputs
                    .get(name.as_str())
                    .copied()
                    .ok_or_else(|| Error::Input(format!("input '{name}' was not supplied")))?;
                self.check(i, value.dtype(), value.shape())?;
                self.write(BufferId(i), value)?;
            }
        }
        self.execute()?;
        let outputs = self
            .program
            .outputs
            .iter()
            .map(|&b| self.read(b))
            .collect::<Result<Vec<_>>>()?;
        self.commit(variables)?;
        Ok(outputs)
    }

    /// Runs with placeholder values already in device memory, writing the
    /// program's outputs to `outputs` (one each, in order); variables as
    /// for [`DeviceExecutable::run`]. Inputs and variables no kernel writes,
    /// and results, are bound where they lie (no copy); the graph of
    /// launches is recorded again only when those addresses change. Returns
    /// once the results are written.
    ///
    /// # Safety
    ///
    /// Every address must be that of live device memory of this device's
    /// context holding at least its dtype and shape's bytes, and no output
    /// or variable may overlap another output, variable or input.
    pub unsafe fn run_device(
        &mut self,
        inputs: &HashMap<&str, DeviceRef>,
        outputs: &[DeviceRef],
        variables: &HashMap<&str, DeviceRef>,
    ) -> Result<()> {
        // SAFETY: as this function's contract.
        let copy_out = unsafe { self.prepare(Some(inputs), Some(outputs), variables)? };
        self.execute()?;
        for (b, dst) in copy_out {
            let bytes = self.program.buffer(b).size_bytes();
            self.gpu.copy(dst, self.address(b), bytes)?;
        }
        self.commit(variables)?;
        self.gpu.synchronize()
    }

    /// Binds a run's device memory: the inputs (when given in device
    /// memory), the outputs (when given) and the variables, each where it
    /// lies if its buffer can be bound, else copied in now (inputs,
    /// variables) or listed to copy out after the run (outputs).
    ///
    /// # Safety
    ///
    /// As [`DeviceExecutable::run_device`].
    unsafe fn prepare(
        &mut self,
        inputs: Option<&HashMap<&str, DeviceRef>>,
        outputs: Option<&[DeviceRef]>,
        variables: &HashMap<&str, DeviceRef>,
    ) -> Result<Vec<(BufferId, u64)>> {
        if let Some(outputs) = outputs {
            if outputs.len() != self.program.outputs.len() {
                return Err(Error::Input(format!(
                    "{} outputs given for a program of {}",
                    outputs.len(),
                    self.program.outputs.len()
                )));
            }
        }
        let mut bound = vec![None; self.program.buffers.len()];
        let mut copy_in = Vec::new();
        for (i, slot) in bound.iter_mut().enumerate() {
            let r = match &self.program.buffers[i].storage {
                Storage::Input { name } => match inputs {
                    Some(inputs) => inputs
                        .get(name.as_str())
                        .ok_or_else(|| Error::Input(format!("input '{name}' was not supplied")))?,
                    None => continue,
                },
                Storage::Variable { name } => variables
                    .get(name.as_str())
                    .ok_or_else(|| Error::Input(format!("variable '{name}' was not supplied")))?,
                _ => continue,
            };
            self.check(i, r.dtype, &r.shape)?;
            if self.bindable[i] {
                *slot = Some(r.address);
            } else {
                copy_in.push((i, r.address));
            }
        }
        let mut copy_out = Vec::new();
        for (o, r) in outputs.unwrap_or_default().iter().enumerate() {
            let b = self.program.outputs[o];
            self.check(b.0, r.dtype, &r.shape)?;
            // A fetched input is copied out of wherever it is bound.
            let result = matches!(self.program.buffer(b).storage, Storage::Result);
            if result && self.bindable[b.0] {
                bound[b.0] = Some(r.address);
            } else {
                copy_out.push((b, r.address));
            }
        }
        self.rebind(bound);
        for (i, src) in copy_in {
            let bytes = self.program.buffers[i].size_bytes();
            self.gpu.copy(self.address(BufferId(i)), src, bytes)?;
        }
        Ok(copy_out)
    }

    /// Runs every step and checks the error word.
    fn execute(&mut self) -> Result<()> {
        if self.profiling {
            for s in 0..self.steps.len() {
                let start = Instant::now();
                let (kernel, duration) = match &self.steps[s] {
                    Step::Host(k) => {
                        let k = *k;
                        self.gpu.synchronize()?;
                        self.host_step(k)?;
                        (k, start.elapsed())
                    }
                    step @ (Step::Launch { of, .. } | Step::Gemm { of, .. }) => {
                        (*of, self.gpu.time(&|g| launch_step(g, step))?)
                    }
                };
                self.profile.push(KernelTime {
                    kernel,
                    start,
                    duration,
                });
            }
        } else {
            if self.graph == Graph::Untried {
                let steps = &self.steps;
                match self.gpu.record(&|g| launch_all(g, steps)) {
                    Ok(true) => self.graph = Graph::Recorded,
                    Ok(false) => self.graph = Graph::Off,
                    // Something outside can spoil a recording (a device-wide
                    // synchronization from another thread): the steps run
                    // directly this time, and later runs record again, up
                    // to a few tries.
                    Err(_) => {
                        self.record_failures += 1;
                        if self.record_failures >= 3 {
                            self.graph = Graph::Off;
                        }
                    }
                }
            }
            if self.graph == Graph::Recorded {
                self.gpu.replay()?;
            } else {
                for s in 0..self.steps.len() {
                    match &self.steps[s] {
                        Step::Host(k) => {
                            let k = *k;
                            self.gpu.synchronize()?;
                            self.host_step(k)?;
                        }
                        step => launch_step(&self.gpu, step)?,
                    }
                }
            }
        }
        if let Some(e) = self.error.as_ref() {
            let e = self.gpu.address(e);
            let mut word = [0u8; 4];
            self.gpu.download(e, &mut word)?;
            let code = i32::from_le_bytes(word);
            if code != 0 {
                self.gpu.upload(e, &[0u8; 4])?;
                let k = (code - 1) as usize;
                let len = match self.program.kernels.get(k) {
                    Some(Kernel::Op {
                        args,
                        op: kiln_graph::Op::Gather { axis } | kiln_graph::Op::ScatterAdd { axis },
                        ..
                    }) => self.program.buffer(args[0]).shape[*axis].to_string(),
                    _ => "?".into(),
                };
                return Err(Error::Run {
                    kernel: k,
                    reason: format!("an index is out of range for an axis of size {len}"),
                });
            }
        }
        Ok(())
    }

    /// Writes assigned variables' new values to their device memory, once
    /// the outputs are taken (a fetched variable is its value before the
    /// run); staged where a new value is another variable's state, so that
    /// swaps hold.
    fn commit(&mut self, variables: &HashMap<&str, DeviceRef>) -> Result<()> {
        let mut copies = Vec::new();
        for (var, val) in self.program.updates.clone() {
            let Storage::Variable { name } = &self.program.buffer(var).storage else {
                continue;
            };
            let dst = variables
                .get(name.as_str())
                .ok_or_else(|| Error::Input(format!("variable '{name}' was not supplied")))?
                .address;
            let bytes = self.program.buffer(val).size_bytes();
            let src = self.address(val);
            if src == dst {
                continue;
            }
            if matches!(self.program.buffer(val).storage, Storage::Variable { .. }) {
                let stage = self.gpu.alloc(bytes.max(1))?;
                let at = self.gpu.address(&stage);
                self.gpu.copy(at, src, bytes)?;
                copies.push((dst, at, bytes, Some(stage)));
            } else {
                copies.push((dst, src, bytes, None));
            }
        }
        for (dst, src, bytes, _stage) in &copies {
            self.gpu.copy(*dst, *src, *bytes)?;
        }
        if copies.iter().any(|c| c.3.is_some()) {
            // The staging blocks are freed when dropped: wait for the copies.
            self.gpu.synchronize()?;
        }
        Ok(())
    }

    /// Runs primitive op `k` on the host: its inputs down, its output up.
    fn host_step(&mut self, k: usize) -> Result<()> {
        let Kernel::Op { op, out, args, .. } = &self.program.kernels[k] else {
            unreachable!("host steps are ops")
        };
        let arrays = args
            .iter()
            .map(|&b| self.read(b))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Array> = arrays.iter().collect();
        let shape = &self.program.buffer(*out).shape;
        let v = self
            .program
            .eval_op(op, &refs, shape)
            .map_err(|reason| Error::Run { kernel: k, reason })?;
        self.write(*out, &v)
    }
}
