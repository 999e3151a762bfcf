//! CUDA behind the engine interface: [`CudaEngine`] compiles a kernel
//! program into a [`DeviceProgram`], an [`Executable`] that takes host
//! arrays like the CPU engine's (variables uploaded for the run, their new
//! values downloaded after it) and may be shared by many threads, whose
//! runs take the device program in turn. A `Session` on a GPU keeps the
//! variables in device memory across runs instead and drives
//! [`DeviceExecutable`] directly (`run_on_device`); this is the engine for
//! callers that hold their state on the host. [`DeviceProgram`] is generic
//! over the [`Gpu`], so the host stand-in of the tests runs the same code.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kiln_graph::Array;
use kiln_optimizer::kernel::{KernelProgram, Storage};

use super::exec::{CudaGpu, DeviceExecutable, DeviceRef, Gpu, MatmulPrecision};
use super::CudaDevice;
use crate::engine::Placement;
use crate::error::{Error, Result};
use crate::{Engine, Executable, RunOutput};

/// The CUDA engine of one device, its f32 products at `precision`.
pub struct CudaEngine {
    device: Arc<CudaDevice>,
    precision: MatmulPrecision,
}

impl CudaEngine {
    /// The engine of `device`.
    pub fn new(device: Arc<CudaDevice>, precision: MatmulPrecision) -> CudaEngine {
        CudaEngine { device, precision }
    }
}

impl Engine for CudaEngine {
    type Executable = DeviceProgram<CudaGpu>;

    fn placement(&self) -> Placement {
        Placement::Cuda
    }

    fn compile(&self, program: &KernelProgram) -> Result<DeviceProgram<CudaGpu>> {
        self.check(program)?;
        DeviceProgram::new(CudaGpu::new(&self.device, self.precision)?, program)
    }
}

/// A kernel program compiled for a device, run from host arrays.
pub struct DeviceProgram<G: Gpu> {
    exe: Mutex<DeviceExecutable<G>>,
    program: KernelProgram,
}

impl<G: Gpu> DeviceProgram<G> {
    /// `program` compiled for `gpu` (after [`Placement::Cuda`]'s check).
    pub fn new(gpu: G, program: &KernelProgram) -> Result<DeviceProgram<G>> {
        Placement::Cuda.check(program)?;
        Ok(DeviceProgram {
            exe: Mutex::new(DeviceExecutable::new(gpu, program)?),
            program: program.clone(),
        })
    }
}

impl<G> Executable for DeviceProgram<G>
where
    G: Gpu + Send,
    G::Mem: Send,
{
    fn program(&self) -> &KernelProgram {
        &self.program
    }

    fn run(
        &self,
        inputs: &HashMap<&str, &Array>,
        variables: &HashMap<String, Array>,
    ) -> Result<RunOutput> {
        let mut exe = self.exe.lock().unwrap_or_else(|e| e.into_inner());
        // Each variable the program names, in device memory of its own for
        // this run.
        let mut blocks = Vec::new();
        let mut refs: HashMap<&str, DeviceRef> = HashMap::new();
        for b in &self.program.buffers {
            let Storage::Variable { name } = &b.storage else {
                continue;
            };
            let value = variables
                .get(name)
                .ok_or_else(|| Error::Input(format!("variable '{name}' was not supplied")))?;
            crate::check_operand(value, b, "variable", name)?;
            let gpu = exe.gpu();
            let m = gpu.alloc(value.size_bytes().max(1))?;
            let address = gpu.address(&m);
            gpu.upload(address, value.as_bytes())?;
            blocks.push(m);
            refs.insert(
                name,
                DeviceRef {
                    address,
                    dtype: b.dtype,
                    shape: b.shape.clone(),
                },
            );
        }
        // SAFETY: every variable's address is a live allocation of this
        // device made above, of its type's size, apart from the others.
        let fetched = unsafe { exe.run(inputs, &refs)? };
        let mut updates = Vec::new();
        for &(var, _) in &self.program.updates {
            let Storage::Variable { name } = &self.program.buffer(var).storage else {
                continue;
            };
            let r = &refs[name.as_str()];
            let b = self.program.buffer(var);
            let mut bytes = vec![0u8; b.size_bytes()];
            exe.gpu().download(r.address, &mut bytes)?;
            let data = kiln_graph::Data::from_le_bytes(b.dtype, &bytes).ok_or_else(|| {
                Error::Input(format!("variable '{name}': its bytes do not fit its type"))
            })?;
            let value = Array::new(b.shape.clone(), data).ok_or_else(|| {
                Error::Input(format!(
                    "variable '{name}': its shape does not fit its data"
                ))
            })?;
            updates.push((name.clone(), value));
        }
        drop(blocks);
        Ok(RunOutput { fetched, updates })
    }
}
