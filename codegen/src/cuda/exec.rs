//! Running a kernel program on a device through generated kernels.
//!
//! [`DeviceExecutable`] does what a run needs, whatever the device: it
//! gives every buffer device memory (temporaries at their offsets in one
//! arena, the rest their own, constants uploaded once), binds each
//! generated kernel to its buffers' addresses when it is built, and per
//! run copies the feeds and variables in, launches the kernels in order,
//! runs primitive ops (`Kernel::Op`) on the host between them, and copies
//! the fetches and the variables' new values out.
//!
//! A program with no host steps records its launches once as a CUDA graph
//! and replays it on later runs (`KILN_CUDA_GRAPHS=0` turns that off).
//!
//! The device is the [`Gpu`] trait: [`CudaGpu`] on NVIDIA GPUs through
//! cudarc, and in the tests a host stand-in that compiles the same CUDA C
//! as C++ (`tests/tests/cuda.rs`), which is how this logic is checked on
//! machines without a GPU.

use std::collections::HashMap;

use kiln_graph::{Array, Data};
use kiln_optimizer::kernel::{BufferId, Kernel, KernelProgram, Storage};

use super::source::{self, KernelSource};
use crate::error::{Error, Result};

/// What [`DeviceExecutable`] needs of a device.
pub trait Gpu {
    /// A block of device memory.
    type Mem;
    /// `bytes` of zeroed device memory.
    fn alloc(&self, bytes: usize) -> Result<Self::Mem>;
    /// The device address of `m`'s first byte.
    fn address(&self, m: &Self::Mem) -> u64;
    /// Copies `bytes` to `m` from byte `offset`.
    fn upload(&self, m: &mut Self::Mem, offset: usize, bytes: &[u8]) -> Result<()>;
    /// Copies `out.len()` bytes from `m` at byte `offset`.
    fn download(&self, m: &Self::Mem, offset: usize, out: &mut [u8]) -> Result<()>;
    /// Compiles and loads `kernels`; later launches name them by position.
    fn load(&mut self, kernels: &[KernelSource]) -> Result<()>;
    /// Launches kernel `k` with device addresses `params` and a count.
    fn launch(&self, k: usize, params: &[u64], count: usize) -> Result<()>;
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
}

/// Whether a run's launches are recorded once and replayed.
#[derive(Clone, Copy, PartialEq)]
enum Graph {
    /// Not tried yet.
    Untried,
    Recorded,
    /// The device has no graphs, a step runs on the host, or
    /// `KILN_CUDA_GRAPHS=0`.
    Off,
}

enum Step {
    /// A generated kernel and its parameters' addresses.
    Launch {
        kernel: usize,
        params: Vec<u64>,
        count: usize,
        /// The program's kernel it belongs to (for errors).
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
    places: Vec<Place>,
    steps: Vec<Step>,
    graph: Graph,
    /// Set by kernels that find an input out of range
    /// (`source::KernelSource::error_word`).
    error: Option<G::Mem>,
}

/// Launches every kernel step (a program without host steps).
fn launch_all<G: Gpu>(gpu: &G, steps: &[Step]) -> Result<()> {
    for step in steps {
        if let Step::Launch {
            kernel,
            params,
            count,
            of,
        } = step
        {
            if *count > 0 {
                gpu.launch(*kernel, params, *count)
                    .map_err(|e| Error::Run {
                        kernel: *of,
                        reason: e.to_string(),
                    })?;
            }
        }
    }
    Ok(())
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
                    let mut m = gpu.alloc(b.size_bytes().max(1))?;
                    if let Storage::Constant { value } = storage {
                        gpu.upload(&mut m, 0, value.0.as_bytes())?;
                    }
                    own.push(m);
                    Place::Own(own.len() - 1)
                }
            });
        }
        let addr = |b: BufferId, gpu: &G, own: &[G::Mem], arena: &G::Mem| match places[b.0] {
            Place::Own(i) => gpu.address(&own[i]),
            Place::Arena(o) => gpu.address(arena) + o as u64,
        };
        let mut sources = Vec::new();
        let mut steps = Vec::new();
        let mut error: Option<G::Mem> = None;
        for (k, kernel) in program.kernels.iter().enumerate() {
            let mut emitted: Vec<KernelSource> = Vec::new();
            match kernel {
                Kernel::MatMul { .. } => match source::emit_matmul(program, k) {
                    Some(s) => emitted.push(s),
                    None => {
                        return Err(Error::Codegen {
                            kernel: k,
                            reason: "bool matrix products have no device form".into(),
                        })
                    }
                },
                Kernel::Op { .. } => {
                    if let Some(pair) = source::emit_scatter_add(program, k) {
                        emitted.extend(pair);
                    } else if let Some(s) = source::emit_op(program, k) {
                        emitted.push(s);
                    } else {
                        steps.push(Step::Host(k));
                    }
                }
                _ => {}
            }
            let main = source::emit(program, k)
                .map_err(|source::Unsupported(reason)| Error::Codegen { kernel: k, reason })?;
            emitted.extend(main);
            for s in emitted {
                let mut params: Vec<u64> = s
                    .params
                    .iter()
                    .map(|&b| addr(b, &gpu, &own, &arena))
                    .collect();
                if s.error_word {
                    if error.is_none() {
                        error = Some(gpu.alloc(8)?);
                    }
                    params.push(gpu.address(error.as_ref().expect("allocated above")));
                }
                steps.push(Step::Launch {
                    kernel: sources.len(),
                    params,
                    count: s.count,
                    of: k,
                });
                sources.push(s);
            }
        }
        gpu.load(&sources)?;
        // A run is one graph of launches when nothing runs on the host
        // between them: recorded on the first run, replayed after.
        let graph = if steps.iter().any(|s| matches!(s, Step::Host(_)))
            || std::env::var("KILN_CUDA_GRAPHS").is_ok_and(|v| v == "0")
        {
            Graph::Off
        } else {
            Graph::Untried
        };
        Ok(DeviceExecutable {
            gpu,
            program: program.clone(),
            arena,
            own,
            places,
            steps,
            graph,
            error,
        })
    }

    fn mem(&mut self, b: BufferId) -> (&mut G::Mem, usize) {
        match self.places[b.0] {
            Place::Own(i) => (&mut self.own[i], 0),
            Place::Arena(o) => (&mut self.arena, o),
        }
    }

    fn read(&mut self, b: BufferId) -> Result<Array> {
        let buf = self.program.buffer(b).clone();
        let mut bytes = vec![0u8; buf.size_bytes()];
        let (m, off) = match self.places[b.0] {
            Place::Own(i) => (&self.own[i], 0),
            Place::Arena(o) => (&self.arena, o),
        };
        self.gpu.download(m, off, &mut bytes)?;
        let data = Data::from_le_bytes(buf.dtype, &bytes)
            .ok_or_else(|| Error::Input("device buffer of the wrong size".into()))?;
        Array::new(buf.shape.clone(), data)
            .ok_or_else(|| Error::Input("device buffer of the wrong shape".into()))
    }

    fn write(&mut self, b: BufferId, a: &Array) -> Result<()> {
        let (m, off) = self.mem(b);
        // Reborrow the device separately from the memory.
        let m: *mut G::Mem = m;
        // SAFETY: `m` points into `self.own` or `self.arena`, which
        // `self.gpu` does not alias.
        self.gpu.upload(unsafe { &mut *m }, off, a.as_bytes())
    }

    /// Runs with placeholder values and variable states by name; returns
    /// the program's outputs and writes assigned variables back.
    pub fn run(
        &mut self,
        inputs: &HashMap<&str, &Array>,
        variables: &mut HashMap<String, Array>,
    ) -> Result<Vec<Array>> {
        for i in 0..self.program.buffers.len() {
            let b = self.program.buffers[i].clone();
            let value = match &b.storage {
                Storage::Input { name } => inputs
                    .get(name.as_str())
                    .copied()
                    .ok_or_else(|| Error::Input(format!("input '{name}' was not supplied")))?,
                Storage::Variable { name } => variables
                    .get(name)
                    .ok_or_else(|| Error::Input(format!("variable '{name}' was not supplied")))?,
                _ => continue,
            };
            if value.dtype() != b.dtype || value.shape() != b.shape.as_slice() {
                return Err(Error::Input(format!(
                    "buffer {i}: expected {}{:?}, got {}{:?}",
                    b.dtype,
                    b.shape,
                    value.dtype(),
                    value.shape()
                )));
            }
            let value = value.clone();
            self.write(BufferId(i), &value)?;
        }
        if self.graph == Graph::Untried {
            let steps = &self.steps;
            self.graph = if self.gpu.record(&|g| launch_all(g, steps))? {
                Graph::Recorded
            } else {
                Graph::Off
            };
        }
        let steps = if self.graph == Graph::Recorded {
            self.gpu.replay()?;
            0
        } else {
            self.steps.len()
        };
        for s in 0..steps {
            match &self.steps[s] {
                Step::Launch {
                    kernel,
                    params,
                    count,
                    of,
                } => {
                    if *count > 0 {
                        self.gpu
                            .launch(*kernel, params, *count)
                            .map_err(|e| Error::Run {
                                kernel: *of,
                                reason: e.to_string(),
                            })?;
                    }
                }
                Step::Host(k) => {
                    let k = *k;
                    let Kernel::Op { op, out, args, .. } = self.program.kernels[k].clone() else {
                        unreachable!("host steps are ops")
                    };
                    self.gpu.synchronize()?;
                    let arrays = args
                        .iter()
                        .map(|&b| self.read(b))
                        .collect::<Result<Vec<_>>>()?;
                    let refs: Vec<&Array> = arrays.iter().collect();
                    let shape = self.program.buffer(out).shape.clone();
                    let v = self
                        .program
                        .eval_op(&op, &refs, &shape)
                        .map_err(|reason| Error::Run { kernel: k, reason })?;
                    self.write(out, &v)?;
                }
            }
        }
        self.gpu.synchronize()?;
        if let Some(e) = self.error.as_mut() {
            let mut word = [0u8; 4];
            self.gpu.download(e, 0, &mut word)?;
            let code = i32::from_le_bytes(word);
            if code != 0 {
                self.gpu.upload(e, 0, &[0u8; 4])?;
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
        let outputs = self
            .program
            .outputs
            .clone()
            .into_iter()
            .map(|b| self.read(b))
            .collect::<Result<Vec<_>>>()?;
        for (var, val) in self.program.updates.clone() {
            if let Storage::Variable { name } = self.program.buffer(var).storage.clone() {
                let v = self.read(val)?;
                variables.insert(name, v);
            }
        }
        Ok(outputs)
    }
}

/// An NVIDIA GPU through cudarc: one context, one non-default stream.
pub struct CudaGpu {
    ctx: std::sync::Arc<cudarc::driver::CudaContext>,
    stream: std::sync::Arc<cudarc::driver::CudaStream>,
    arch: &'static str,
    functions: Vec<cudarc::driver::CudaFunction>,
    graph: Option<cudarc::driver::CudaGraph>,
}

fn cuda_err(e: impl std::fmt::Display) -> Error {
    Error::Cuda(format!("CUDA: {e}"))
}

impl CudaGpu {
    /// A GPU checked by [`super::CudaDevice::open`].
    pub fn new(device: &super::CudaDevice) -> Result<CudaGpu> {
        let ctx = device.ctx.clone();
        let stream = ctx.new_stream().map_err(cuda_err)?;
        let arch: &'static str = Box::leak(device.arch()?.into_boxed_str());
        Ok(CudaGpu {
            ctx,
            stream,
            arch,
            functions: Vec::new(),
            graph: None,
        })
    }
}

impl Gpu for CudaGpu {
    type Mem = cudarc::driver::CudaSlice<u8>;

    fn alloc(&self, bytes: usize) -> Result<Self::Mem> {
        self.stream.alloc_zeros::<u8>(bytes).map_err(cuda_err)
    }

    fn address(&self, m: &Self::Mem) -> u64 {
        use cudarc::driver::DevicePtr;
        let (p, _sync) = m.device_ptr(&self.stream);
        p
    }

    fn upload(&self, m: &mut Self::Mem, offset: usize, bytes: &[u8]) -> Result<()> {
        let mut view = m.slice_mut(offset..offset + bytes.len());
        self.stream.memcpy_htod(bytes, &mut view).map_err(cuda_err)
    }

    fn download(&self, m: &Self::Mem, offset: usize, out: &mut [u8]) -> Result<()> {
        let view = m.slice(offset..offset + out.len());
        self.stream.memcpy_dtoh(&view, out).map_err(cuda_err)
    }

    fn load(&mut self, kernels: &[KernelSource]) -> Result<()> {
        if kernels.is_empty() {
            return Ok(());
        }
        // One unit, one NVRTC call (or a cache hit), one module.
        let ptx = super::compile_cached(&source::unit(kernels), self.arch)?;
        let module = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(cuda_err)?;
        for k in kernels {
            self.functions
                .push(module.load_function(&k.name).map_err(cuda_err)?);
        }
        Ok(())
    }

    fn launch(&self, k: usize, params: &[u64], count: usize) -> Result<()> {
        use cudarc::driver::PushKernelArg;
        let threads = 256usize;
        let blocks = count.div_ceil(threads).clamp(1, 1 << 16) as u32;
        let cfg = cudarc::driver::LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (threads as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let count = count as i64;
        let mut b = self.stream.launch_builder(&self.functions[k]);
        for p in params {
            b.arg(p);
        }
        b.arg(&count);
        // SAFETY: the parameters are the device addresses and count the
        // kernel was generated for.
        unsafe { b.launch(cfg) }.map(|_| ()).map_err(cuda_err)
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(cuda_err)
    }

    fn record(&mut self, launches: &dyn Fn(&Self) -> Result<()>) -> Result<bool> {
        use cudarc::driver::sys;
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(cuda_err)?;
        let launched = launches(self);
        let graph = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(cuda_err)?;
        launched?;
        self.graph = graph;
        Ok(self.graph.is_some())
    }

    fn replay(&self) -> Result<()> {
        match &self.graph {
            Some(g) => g.launch().map_err(cuda_err),
            None => Err(Error::Cuda("no recorded graph".into())),
        }
    }
}
