//! `Session`: runs a graph with feeds and fetches, and holds the state of
//! its variables across runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use kiln_codegen::cpu::{ConvPath, CpuBackend, CpuExecutable, Dumps};
pub use kiln_codegen::cuda::exec::MatmulPrecision;
use kiln_codegen::cuda::exec::{CudaGpu, DeviceExecutable, DeviceRef};
use kiln_codegen::cuda::CudaSettings;
pub use kiln_codegen::cuda::DeviceTensor;
use kiln_codegen::{Engine, Executable};
use kiln_graph::interp::{self, RunInputs};
use kiln_graph::{Array, Bindings, Graph, NodeId, Op};
use kiln_optimizer::{CompileOptions, KernelProgram};

mod feeds;

use crate::device::Device;
use crate::error::{Error, Result};

/// A graph prepared to run on a device, with its variables' state.
///
/// The session keeps its own copy of the graph: adding nodes to the builder
/// afterwards cannot change what it runs. Variables are initialized when the
/// session is created, so no run can see an uninitialized variable. On a
/// compiling device, the first run for each set of fetches and each
/// concrete shape of the feeds compiles a program, which later runs reuse.
///
/// A session is shared by the threads that run it (`run` takes `&self`;
/// `Session` is `Send + Sync`): on the CPU, runs that assign no variable
/// (inference) go at the same time, each on a scratch arena of its own,
/// over one copy of the compiled code, constants and packed weights; runs
/// that assign variables (training steps) take the variables exclusively,
/// one at a time, each seeing the last one's updates. CUDA runs take the
/// session's GPU state in turn.
pub struct Session {
    graph: Graph,
    device: Device,
    options: SessionOptions,
    variables: RwLock<HashMap<String, Array>>,
    /// The CPU's compiled programs.
    compiled: Mutex<Programs<Arc<Slot>>>,
    /// The GPU of a `Device::Cuda` session and its compiled programs.
    gpu: Option<Mutex<Gpu>>,
    profiling: bool,
    epoch: std::time::Instant,
    needed: Mutex<HashMap<NodeId, Vec<NodeId>>>,
}

/// A compiled program's key: its fetches and the sizes of its symbols.
type Key = (Vec<NodeId>, Bindings);

/// A CPU program's place in the cache: empty until the first thread that
/// needs it has compiled it (the others wait on the lock rather than
/// compile it again).
type Slot = Mutex<Option<Arc<CpuExecutable>>>;

/// Compiled programs by key, with the least recently run first in `recent`.
struct Programs<E> {
    map: HashMap<Key, E>,
    recent: Vec<Key>,
}

impl<E> Default for Programs<E> {
    fn default() -> Self {
        Programs {
            map: HashMap::new(),
            recent: Vec::new(),
        }
    }
}

impl<E> Programs<E> {
    /// Marks `key` as the most recently run and drops the least recently
    /// run programs beyond `max`; returns the keys dropped.
    fn touch(&mut self, key: &Key, max: usize) -> Vec<Key> {
        if let Some(i) = self.recent.iter().position(|k| k == key) {
            let k = self.recent.remove(i);
            self.recent.push(k);
        } else {
            self.recent.push(key.clone());
        }
        let mut dropped = Vec::new();
        while self.recent.len() > max.max(1) {
            let old = self.recent.remove(0);
            self.map.remove(&old);
            dropped.push(old);
        }
        dropped
    }

    fn clear(&mut self) {
        self.map.clear();
        self.recent.clear();
    }
}

/// Locks `m`, taking the value of a lock a panicking run left behind (the
/// maps it guards are consistent between statements).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A CUDA session's device and the programs compiled for it, with the
/// tensors each leaves its results in on device runs, and the variables'
/// state in device memory.
struct Gpu {
    device: kiln_codegen::cuda::CudaDevice,
    compiled: Programs<DeviceExecutable<CudaGpu>>,
    results: HashMap<Key, Vec<DeviceTensor>>,
    /// Each variable's state, uploaded on its first GPU run and updated
    /// there by training steps: the weights stay on the device.
    vars: HashMap<String, DeviceTensor>,
    /// Variables a GPU run assigned: the session's host copy is out of
    /// date, and the current value is downloaded when asked for (and kept
    /// here until the next change).
    stale: HashMap<String, Option<Array>>,
}

/// The device tensors' addresses, by name.
fn refs(tensors: &HashMap<String, DeviceTensor>) -> HashMap<&str, DeviceRef> {
    tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.device_ref()))
        .collect()
}

impl Gpu {
    /// Uploads the variables that have no device copy yet.
    fn upload_variables(&mut self, host: &HashMap<String, Array>) -> Result<()> {
        for (name, value) in host {
            if !self.vars.contains_key(name) {
                let t = self.device.tensor(value)?;
                self.vars.insert(name.clone(), t);
            }
        }
        Ok(())
    }

    /// Marks what the program of `key` assigns as changed on the device.
    fn mark_assigned(&mut self, key: &Key) {
        let p = self.compiled.map[key].program();
        let names: Vec<String> = p
            .updates
            .iter()
            .filter_map(|(var, _)| match &p.buffer(*var).storage {
                kiln_optimizer::kernel::Storage::Variable { name } => Some(name.clone()),
                _ => None,
            })
            .collect();
        for n in names {
            self.stale.insert(n, None);
        }
    }

    /// Variable `name`'s device state, if a GPU run changed it.
    fn current(&mut self, name: &str) -> Result<Option<Array>> {
        let Some(cached) = self.stale.get(name) else {
            return Ok(None);
        };
        if let Some(a) = cached {
            return Ok(Some(a.clone()));
        }
        let a = self.vars[name].to_host()?;
        self.stale.insert(name.to_string(), Some(a.clone()));
        Ok(Some(a))
    }
}

/// Options of a [`Session`]. Each one left `None` is taken from the
/// environment once, when the session is created (`kiln::env` lists the
/// variables; [`SessionOptions::from_env`] reads them all), else its
/// default.
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// Threads the CPU backend may use; `None` takes `KILN_NUM_THREADS`, else
    /// every available core. Small kernels stay on one thread regardless.
    /// Either must be a whole number from 1 to
    /// [`MAX_THREADS`](kiln_codegen::cpu::MAX_THREADS) (1024): anything
    /// else is an [`Error::Device`] when a CPU session is created.
    pub threads: Option<usize>,
    /// Whether the CPU backend may use its AVX-512 kernels on hosts that
    /// have them (long f32 elementwise rows, products, convolutions);
    /// `None` takes `KILN_AVX512` (`0` turns it off), else yes. Off, long
    /// rows run in the AVX2 row code where the host has AVX2 and FMA (same
    /// algorithms, results within an ulp or two).
    pub avx512: Option<bool>,
    /// Whether long f32 elementwise rows run in the precompiled row code
    /// (AVX-512 or AVX2, see `avx512`) on hosts that have one; `None` takes
    /// `KILN_WIDE_ROWS` (`0` turns it off), else yes. Off, they run in
    /// Cranelift's 128-bit vectors (same algorithms and results up to
    /// rounding order).
    pub wide_rows: Option<bool>,
    /// How f32 matrix products run on a GPU; `None` takes
    /// `KILN_MATMUL_PRECISION` (`highest`, `tf32`, `bf16`, `f16`), else
    /// strict FP32. See [`MatmulPrecision`].
    pub matmul_precision: Option<MatmulPrecision>,
    /// The most bytes one compiled program's arena (its planned
    /// temporaries) may take; `None` takes `KILN_MAX_ARENA_BYTES`, else no
    /// limit. A program over it is an [`Error::Resource`] when it is
    /// compiled: at session creation for a graph whose declared outputs
    /// have static shapes, else at the first run of a new shape.
    pub max_arena_bytes: Option<usize>,
    /// Debug mode of the CPU backend: every load and store of compiled
    /// code checks its index against its buffer (scalar code only, several
    /// times slower), and an access outside is an error of the run; `None`
    /// takes `KILN_CHECK_BOUNDS` (`1` turns it on).
    pub bounds_checks: Option<bool>,
    /// The most compiled programs the session keeps (one per set of
    /// fetches and binding of the symbolic dims: a model served at every
    /// sequence length would otherwise keep a program, and its packed
    /// weights, per length); beyond it the least recently run is dropped,
    /// and compiled again when needed. `None`: 32.
    pub max_programs: Option<usize>,
    /// Whether the CPU splits kernels across threads always (`true`),
    /// never (`false`), or as measured on a program's first runs; `None`
    /// takes `KILN_SPLIT`.
    pub split: Option<bool>,
    /// How CPU convolutions choose between Winograd F(2x2, 3x3), the
    /// direct kernels and im2col + GEMM; `None` takes `KILN_CONV`, else by
    /// the measured rules.
    pub conv: Option<ConvPath>,
    /// Whether the CPU compiler moves the convolutions of depthwise
    /// networks (MobileNet, EfficientNet) to channels-last, where its
    /// pointwise and depthwise kernels run faster (the optimizer's
    /// `channels_last` pass); `None` takes `KILN_CHANNELS_LAST` (`0` off,
    /// else on), else where it pays: hosts with AVX2 and FMA whose NCHW
    /// kernels may not use AVX-512
    /// (`kiln_codegen::cpu::has_channels_last_kernels`).
    pub channels_last: Option<bool>,
    /// Generated code printed on stderr as it is compiled; `None` takes
    /// `KILN_DUMP_CLIF`, `KILN_DUMP_ASM`, `KILN_DUMP_ROWS`.
    pub dumps: Option<Dumps>,
    /// How CUDA programs are made and run; `None` takes `KILN_CUDA_CONV`,
    /// `KILN_CUDA_GRAPHS`, `KILN_CUDA_ILP` and `KILN_CUBLAS`.
    pub cuda: Option<CudaSettings>,
}

/// Programs a session keeps when [`SessionOptions::max_programs`] is `None`.
pub const DEFAULT_MAX_PROGRAMS: usize = 32;

/// One kernel execution recorded while profiling (see [`Session::set_profiling`]).
#[derive(Clone, Debug)]
pub struct ProfileEvent {
    /// The kernel's index in its program.
    pub kernel: usize,
    /// What the kernel is (`matmul`, `reduce_sum+map`, `elementwise`, ...).
    pub label: String,
    /// The graph nodes the kernel computes.
    pub nodes: Vec<String>,
    /// Start, in microseconds since the session was created.
    pub start_us: f64,
    /// Duration in microseconds.
    pub duration_us: f64,
}

/// Keeps large allocations in the heap rather than fresh mappings (glibc):
/// the results a compiled program writes each run are large, and by
/// default every one of them is a new `mmap` whose pages fault in and are
/// zeroed on first write, then are unmapped when dropped (halving the
/// speed of memory-bound programs). Sets glibc's mmap threshold to its
/// 32 MiB maximum and the trim threshold to 256 MiB, once per process;
/// `KILN_TUNE_MALLOC=0` leaves the allocator alone.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if !crate::env::tune_malloc() {
                return;
            }
            // SAFETY: mallopt only adjusts allocator parameters.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
            }
        });
    }
}

/// Checks a CPU session's thread count (`KILN_NUM_THREADS` was checked
/// when read).
fn check_threads(threads: Option<usize>) -> Result<()> {
    let reason = threads.and_then(|t| {
        kiln_codegen::cpu::parse_threads(&t.to_string())
            .err()
            .map(|e| format!("SessionOptions::threads: {e}"))
    });
    match reason {
        Some(reason) => Err(Error::Device {
            device: Device::Cpu.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

impl Session {
    /// Prepares `graph` to run on `device` and initializes its variables.
    pub fn new(graph: &Graph, device: Device) -> Result<Session> {
        Session::with_options(graph, device, SessionOptions::default())
    }

    /// Like [`Session::new`], with options.
    pub fn with_options(graph: &Graph, device: Device, options: SessionOptions) -> Result<Session> {
        if device == Device::Cpu {
            check_threads(options.threads)?;
        }
        // The environment, read once, here.
        let options = options.with_env(Some(device))?;
        if device == Device::Cpu {
            tune_allocator();
        }
        if matches!(device, Device::Cuda(_)) {
            crate::env::init_cuda_paths();
        }
        let gpu = match device {
            Device::Cuda(n) => Some(Mutex::new(Gpu {
                device: kiln_codegen::cuda::CudaDevice::open_with(
                    n,
                    options.cuda.unwrap_or_default(),
                )
                .map_err(|e| Error::Device {
                    device: device.to_string(),
                    reason: e.to_string(),
                })?,
                compiled: Programs::default(),
                results: HashMap::new(),
                vars: HashMap::new(),
                stale: HashMap::new(),
            })),
            _ => None,
        };
        let graph = graph.clone();
        let mut variables = HashMap::new();
        for v in graph.variables() {
            if let Op::Variable { init, .. } = &graph.node(v).op {
                variables.insert(graph.node(v).name.clone(), (*init.0).clone());
            }
        }
        let session = Session {
            graph,
            device,
            options,
            variables: RwLock::new(variables),
            compiled: Mutex::new(Programs::default()),
            gpu,
            profiling: false,
            epoch: std::time::Instant::now(),
            needed: Mutex::new(HashMap::new()),
        };
        // With an arena limit, a graph of static shapes is planned now, so
        // a program over the limit fails here rather than at its first run.
        if session.arena_limit().is_some() && device != Device::Reference {
            let outputs = session.graph.outputs().to_vec();
            let fixed = session
                .graph
                .placeholders()
                .iter()
                .all(|&p| session.graph.node(p).ty.shape.symbols().is_empty());
            if fixed && !outputs.is_empty() {
                session.compile(&(outputs, Bindings::new()), device == Device::Cpu)?;
            }
        }
        Ok(session)
    }

    /// The arena limit: the option, else `KILN_MAX_ARENA_BYTES`.
    fn arena_limit(&self) -> Option<usize> {
        self.options.max_arena_bytes
    }

    /// An error when `program`'s arena exceeds the limit.
    fn check_arena(&self, program: &kiln_optimizer::KernelProgram) -> Result<()> {
        match self.arena_limit() {
            Some(limit) if program.memory.arena > limit => Err(Error::Resource {
                what: "arena".into(),
                needed: program.memory.arena,
                limit,
            }),
            _ => Ok(()),
        }
    }

    /// The graph this session runs.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The device.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Number of programs compiled so far (one per fetch set and shape).
    pub fn compiled_programs(&self) -> usize {
        let cpu = lock(&self.compiled)
            .map
            .values()
            // A slot being compiled (its lock held) is not compiled yet.
            .filter(|slot| slot.try_lock().is_ok_and(|s| s.is_some()))
            .count();
        cpu + self.gpu.as_ref().map_or(0, |g| lock(g).compiled.map.len())
    }

    /// The most programs the session keeps.
    fn max_programs(&self) -> usize {
        self.options
            .max_programs
            .unwrap_or(DEFAULT_MAX_PROGRAMS)
            .max(1)
    }

    /// The optimizer's program for `key`, within the arena limit. Variables
    /// nothing in the graph assigns are compiled as constants with their
    /// current values (so batch norm folds away); `set_variable` drops the
    /// compiled programs.
    fn compile(&self, key: &Key, cpu: bool) -> Result<kiln_optimizer::Compiled> {
        let current = self.export_graph()?;
        let opts = CompileOptions {
            freeze_variables: true,
            channels_last: cpu
                && self.options.channels_last.unwrap_or_else(|| {
                    let avx512 = self.options.avx512;
                    kiln_codegen::cpu::has_channels_last_kernels(
                        avx512.unwrap_or(CpuBackend::default().avx512),
                    )
                }),
            ..Default::default()
        };
        let compiled = kiln_optimizer::compile(&current, &key.0, &key.1, &opts)?;
        self.check_arena(&compiled.program)?;
        Ok(compiled)
    }

    /// The CPU program for `key`, compiled on its first use: by one
    /// thread, while others that need the same program wait for it (and
    /// runs of other programs go on).
    fn cpu_program(&self, key: &Key) -> Result<Arc<CpuExecutable>> {
        let max = self.max_programs();
        let slot = {
            let mut programs = lock(&self.compiled);
            let slot = programs.map.entry(key.clone()).or_default().clone();
            programs.touch(key, max);
            slot
        };
        let mut slot = lock(&slot);
        if let Some(exe) = slot.as_ref() {
            return Ok(exe.clone());
        }
        let compiled = self.compile(key, true)?;
        let o = &self.options;
        let d = CpuBackend::default();
        let backend = CpuBackend {
            threads: o.threads.map_or(d.threads, |t| t.max(1)),
            avx512: o.avx512.unwrap_or(d.avx512),
            wide_rows: o.wide_rows.unwrap_or(d.wide_rows),
            bounds_checks: o.bounds_checks.unwrap_or(d.bounds_checks),
            split: o.split,
            conv: o.conv.unwrap_or(d.conv),
            dumps: o.dumps.unwrap_or(d.dumps),
        };
        let exe = Arc::new(backend.compile(&compiled.program)?);
        exe.set_profiling(self.profiling);
        *slot = Some(exe.clone());
        Ok(exe)
    }

    /// Runs the part of the graph `fetches` need and returns their values, in
    /// order. Feeds are `(placeholder name, value)`; each is checked against
    /// its placeholder's dtype and shape, and symbolic dims are bound
    /// consistently across feeds. Assignments take effect when the run ends.
    ///
    /// Any number of threads may call this at once (see [`Session`]).
    pub fn run(&self, feeds: &[(&str, &Array)], fetches: &[&str]) -> Result<Vec<Array>> {
        let fetch_ids = self.fetch_ids(fetches)?;
        let bindings = self.check_feeds(feeds)?;
        self.check_needed_feeds(&fetch_ids, fetches, feeds)?;
        let feed_map: HashMap<&str, &Array> = feeds.iter().copied().collect();
        let key = (fetch_ids, bindings);
        match self.device {
            Device::Reference => {
                // The interpreter finds assignments as it goes: every run
                // takes the variables exclusively.
                let mut variables = self.variables.write().unwrap_or_else(|e| e.into_inner());
                let out = interp::run(
                    &self.graph,
                    &RunInputs {
                        feeds: &feed_map,
                        variables: &variables,
                        bindings: &key.1,
                    },
                    &key.0,
                )?;
                for (var, value) in out.updates {
                    variables.insert(self.graph.node(var).name.clone(), value);
                }
                Ok(out.fetched)
            }
            Device::Cuda(_) => {
                let gpu = self.gpu.as_ref().ok_or_else(|| self.no_gpu("run"))?;
                let mut gpu = lock(gpu);
                self.compile_for_gpu(&mut gpu, &key)?;
                gpu.upload_variables(&self.variables.read().unwrap_or_else(|e| e.into_inner()))?;
                let Gpu { compiled, vars, .. } = &mut *gpu;
                let vars = refs(vars);
                let exe = compiled.map.get_mut(&key).expect("compiled above");
                // SAFETY: the variables are the session's own device
                // tensors, one allocation each.
                let out = unsafe { exe.run(&feed_map, &vars)? };
                gpu.mark_assigned(&key);
                Ok(out)
            }
            Device::Cpu => {
                let exe = self.cpu_program(&key)?;
                let out = if exe.program().updates.is_empty() {
                    let variables = self.variables.read().unwrap_or_else(|e| e.into_inner());
                    exe.run(&feed_map, &variables).map(|out| out.fetched)
                } else {
                    // A training step: the variables are this run's until
                    // its updates are in.
                    let mut variables = self.variables.write().unwrap_or_else(|e| e.into_inner());
                    exe.run(&feed_map, &variables).map(|out| {
                        variables.extend(out.updates);
                        out.fetched
                    })
                };
                match out {
                    Ok(fetched) => Ok(fetched),
                    Err(e) => Err(name_kernel(exe.program(), e)),
                }
            }
        }
    }

    /// Compiles the program for `key` on the GPU unless it is compiled, and
    /// marks it the most recently run.
    fn compile_for_gpu(&self, gpu: &mut Gpu, key: &Key) -> Result<()> {
        if !gpu.compiled.map.contains_key(key) {
            let compiled = self.compile(key, false)?;
            let precision = self.options.matmul_precision.unwrap_or_default();
            kiln_codegen::engine::Placement::Cuda.check(&compiled.program)?;
            let backend = CudaGpu::new(&gpu.device, precision)?;
            let mut exe = DeviceExecutable::new(backend, &compiled.program)?;
            exe.set_profiling(self.profiling);
            gpu.compiled.map.insert(key.clone(), exe);
        }
        for old in gpu.compiled.touch(key, self.max_programs()) {
            gpu.results.remove(&old);
        }
        Ok(())
    }

    /// The error of a GPU call on a session without a GPU.
    fn no_gpu(&self, what: &str) -> Error {
        Error::Device {
            device: self.device.to_string(),
            reason: format!("{what} needs a CUDA session"),
        }
    }

    /// `f` of this CUDA session's device; an error for `what` elsewhere.
    fn with_cuda<R>(
        &self,
        what: &str,
        f: impl FnOnce(&kiln_codegen::cuda::CudaDevice) -> Result<R>,
    ) -> Result<R> {
        let gpu = self.gpu.as_ref().ok_or_else(|| self.no_gpu(what))?;
        f(&lock(gpu).device)
    }

    /// A copy of `a` in this CUDA session's GPU memory, to feed
    /// [`Session::run_on_device`] without copying it each run.
    pub fn to_device(&self, a: &Array) -> Result<DeviceTensor> {
        self.with_cuda("to_device", |d| Ok(d.tensor(a)?))
    }

    /// Like [`Session::run`] on a CUDA session, with feeds and results in
    /// GPU memory: nothing crosses the bus but the variables training
    /// assigns. Feeds are read where they lie and results written into
    /// tensors the session keeps for this fetch set and shape, returned
    /// here and overwritten by the next device run of the same program
    /// (copy one with [`DeviceTensor::to_host`] to keep it). Returns when
    /// the results are written.
    pub fn run_on_device(
        &mut self,
        feeds: &[(&str, &DeviceTensor)],
        fetches: &[&str],
    ) -> Result<&[DeviceTensor]> {
        let ordinal = self.with_cuda("run_on_device", |d| Ok(d.ordinal()))?;
        for (name, t) in feeds {
            if t.ordinal() != ordinal {
                return Err(Error::Feed {
                    name: name.to_string(),
                    reason: format!(
                        "a tensor on cuda:{}, fed to a session on {}",
                        t.ordinal(),
                        self.device
                    ),
                });
            }
        }
        let fetch_ids = self.fetch_ids(fetches)?;
        let bindings = self.check_feeds(feeds)?;
        self.check_needed_feeds(&fetch_ids, fetches, feeds)?;
        let key = (fetch_ids, bindings);
        let mut slot = self
            .gpu
            .take()
            .ok_or_else(|| self.no_gpu("run_on_device"))?;
        let ran = self.run_on_gpu(
            slot.get_mut().unwrap_or_else(|e| e.into_inner()),
            feeds,
            &key,
        );
        self.gpu = Some(slot);
        ran?;
        let gpu = self
            .gpu
            .as_mut()
            .expect("put back above")
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        Ok(&gpu.results[&key])
    }

    /// The device run of [`Session::run_on_device`].
    fn run_on_gpu(&self, gpu: &mut Gpu, feeds: &[(&str, &DeviceTensor)], key: &Key) -> Result<()> {
        self.compile_for_gpu(gpu, key)?;
        if !gpu.results.contains_key(key) {
            let p = gpu.compiled.map[key].program();
            let tensors = p
                .outputs
                .iter()
                .map(|&o| gpu.device.zeros(p.buffer(o).dtype, &p.buffer(o).shape))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            gpu.results.insert(key.clone(), tensors);
        }
        gpu.upload_variables(&self.variables.read().unwrap_or_else(|e| e.into_inner()))?;
        let vars = refs(&gpu.vars);
        let inputs: HashMap<&str, DeviceRef> =
            feeds.iter().map(|(n, t)| (*n, t.device_ref())).collect();
        let outputs: Vec<DeviceRef> = gpu.results[key]
            .iter()
            .map(DeviceTensor::device_ref)
            .collect();
        let exe = gpu.compiled.map.get_mut(key).expect("compiled above");
        // SAFETY: the feeds are live tensors on this session's device
        // (checked by the caller), borrowed for the call; the results and
        // variables are this session's own tensors, allocated with their
        // types, distinct from each other and from any feed (a feed cannot
        // borrow them while the caller borrows the session mutably).
        unsafe { exe.run_device(&inputs, &outputs, &vars)? };
        drop(vars);
        gpu.mark_assigned(key);
        Ok(())
    }

    /// Records the time of every kernel of later runs on compiling devices
    /// (`kiln run --profile`, `--trace`), or stops recording.
    pub fn set_profiling(&mut self, on: bool) {
        self.profiling = on;
        for slot in lock(&self.compiled).map.values() {
            if let Some(exe) = lock(slot).as_ref() {
                exe.set_profiling(on);
            }
        }
        if let Some(gpu) = &self.gpu {
            for exe in lock(gpu).compiled.map.values_mut() {
                exe.set_profiling(on);
            }
        }
    }

    /// The kernel executions recorded since the last call, in start order.
    pub fn take_profile(&mut self) -> Vec<ProfileEvent> {
        let mut events = Vec::new();
        let mut add = |times: Vec<kiln_codegen::cpu::KernelTime>, p: &KernelProgram| {
            for t in times {
                events.push(ProfileEvent {
                    kernel: t.kernel,
                    label: p.kernels[t.kernel].label(),
                    nodes: p.kernel_nodes[t.kernel].clone(),
                    start_us: t.start.duration_since(self.epoch).as_secs_f64() * 1e6,
                    duration_us: t.duration.as_secs_f64() * 1e6,
                });
            }
        };
        for slot in lock(&self.compiled).map.values() {
            if let Some(exe) = lock(slot).as_ref() {
                add(exe.take_profile(), exe.program());
            }
        }
        if let Some(gpu) = &self.gpu {
            for exe in lock(gpu).compiled.map.values_mut() {
                add(exe.take_profile(), exe.program());
            }
        }
        events.sort_by(|a, b| a.start_us.total_cmp(&b.start_us));
        events
    }

    /// Runs and returns the graph's declared outputs.
    pub fn run_outputs(&self, feeds: &[(&str, &Array)]) -> Result<Vec<(String, Array)>> {
        let names: Vec<String> = self
            .graph
            .outputs()
            .iter()
            .map(|&o| self.graph.node(o).name.clone())
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let values = self.run(feeds, &refs)?;
        Ok(names.into_iter().zip(values).collect())
    }

    /// Every variable's current value, by name (sorted).
    pub fn variables_by_name(&self) -> Result<Vec<(String, Array)>> {
        let mut names: Vec<String> = self
            .variables
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let v = self.current(&n)?;
                Ok((n, v))
            })
            .collect()
    }

    /// The current value of variable `name`.
    pub fn variable(&self, name: &str) -> Result<Array> {
        self.variable_id(name)?;
        self.current(name)
    }

    /// Variable `name`'s value: the host copy, or on a CUDA session whose
    /// runs assigned it, the device state (downloaded once per change).
    fn current(&self, name: &str) -> Result<Array> {
        if let Some(gpu) = &self.gpu {
            if let Some(a) = lock(gpu).current(name)? {
                return Ok(a);
            }
        }
        let variables = self.variables.read().unwrap_or_else(|e| e.into_inner());
        variables.get(name).cloned().ok_or_else(|| Error::Variable {
            name: name.into(),
            reason: "the session has no state for it".into(),
        })
    }

    /// Sets variable `name`; the value must have the variable's type.
    pub fn set_variable(&mut self, name: &str, value: Array) -> Result<()> {
        let id = self.variable_id(name)?;
        let ty = &self.graph.node(id).ty;
        if value.dtype() != ty.dtype || Some(value.shape().to_vec()) != ty.shape.as_fixed() {
            return Err(Error::Variable {
                name: name.into(),
                reason: format!("expected {ty}, got {}{:?}", value.dtype(), value.shape()),
            });
        }
        self.variables
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.into(), value);
        // Compiled programs may hold the old value as a constant.
        lock(&self.compiled).clear();
        if let Some(gpu) = &self.gpu {
            let mut gpu = lock(gpu);
            gpu.stale.remove(name);
            gpu.vars.remove(name);
            gpu.compiled.clear();
            gpu.results.clear();
        }
        Ok(())
    }

    fn variable_id(&self, name: &str) -> Result<NodeId> {
        let id = self.graph.find(name).map_err(|_| Error::Variable {
            name: name.into(),
            reason: "no node has this name".into(),
        })?;
        if !matches!(self.graph.node(id).op, Op::Variable { .. }) {
            return Err(Error::Variable {
                name: name.into(),
                reason: format!(
                    "node is a {}, not a variable",
                    self.graph.node(id).op.name()
                ),
            });
        }
        Ok(id)
    }

    /// The graph with every variable's initial value replaced by its current
    /// value: what to save after training.
    pub fn export_graph(&self) -> Result<Graph> {
        let mut g = self.graph.clone();
        for v in g.variables() {
            let name = g.node(v).name.clone();
            g.set_weight(v, self.current(&name)?)?;
        }
        Ok(g)
    }
}

/// A run error of a compiled program, naming the graph nodes of the kernel
/// that failed.
fn name_kernel(p: &KernelProgram, e: kiln_codegen::Error) -> Error {
    match e {
        kiln_codegen::Error::Run { kernel, reason } => {
            let nodes = p.kernel_nodes.get(kernel).cloned().unwrap_or_default();
            let label = p.kernels.get(kernel).map(|k| k.label()).unwrap_or_default();
            kiln_codegen::Error::Run {
                kernel,
                reason: if nodes.is_empty() {
                    reason
                } else {
                    format!("{label} of node(s) {}: {reason}", nodes.join(", "))
                },
            }
            .into()
        }
        e => e.into(),
    }
}
