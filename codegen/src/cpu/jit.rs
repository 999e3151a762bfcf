//! The Cranelift module behind the CPU backend (`Jit`): a JIT module for
//! the host or an object module for ahead-of-time code (`object.rs`), the
//! ISA flags, the support functions kernels import, and the driver that
//! compiles one kernel body (`Jit::compile`, through `emit.rs`).
//!
//! Every compiled kernel is `extern "C" fn(buffers: *const *mut u8, lo,
//! hi)`: the table holds each buffer's base address, indexed by
//! `BufferId`; a kernel whose outermost loop can be split runs it over
//! `lo..hi`.

use std::collections::HashMap;

use cranelift_codegen::ir::{
    types, AbiParam, Function, InstBuilder, MemFlagsData, Type, UserFuncName,
};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};

use kiln_graph::DType;
use kiln_optimizer::kernel::{Access, BufferId, ElementProgram, KernelProgram, ReduceKind};

use super::support;
use super::wide::Isa;
use crate::error::{Error, Result};

use super::emit::{Emitter, RowData};

/// A compiled kernel entry point.
/// `(buffer table, lo, hi)`: a kernel whose outermost loop can be split
/// runs that loop over `lo..hi` only (see [`Jit::compile`]).
pub(crate) type KernelFn = unsafe extern "C" fn(*const *mut u8, i64, i64);

pub(super) fn cl(dtype: DType) -> Type {
    match dtype {
        DType::F32 => types::F32,
        DType::F64 => types::F64,
        DType::I32 | DType::U32 => types::I32,
        DType::I64 | DType::U64 => types::I64,
        DType::Bool | DType::I8 | DType::U8 => types::I8,
        DType::I16 | DType::U16 => types::I16,
        // Half values live in f32 registers (exactly: every f16 and bf16
        // is an f32) and in 16 bits in memory (`Emitter::load_elem`,
        // `Emitter::store`).
        DType::F16 | DType::BF16 => types::F32,
    }
}

pub(super) fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

pub(super) fn host_has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}

/// The module kernels are compiled into and the functions in it: a
/// [`JITModule`] (machine code in memory, for sessions) or an
/// `ObjectModule` (an object file, for ahead-of-time binaries).
pub(crate) struct Jit<M: Module = JITModule> {
    pub(super) module: M,
    pub(super) ctx: Context,
    pub(super) fctx: FunctionBuilderContext,
    pub(super) imports: HashMap<&'static str, FuncId>,
    pub(super) count: usize,
    pub(super) fma: bool,
    /// The ISA long f32 rows run in through the run-time library's row
    /// code (`kiln_rt::rows`), if any.
    pub(super) wide: Option<Isa>,
    /// The row programs compiled code points at (boxed: their addresses
    /// are baked into the code, so they must not move).
    #[allow(clippy::vec_box)]
    pub(super) rows: Vec<Box<super::wide::RowProgram>>,
    /// Linkage and name prefix of kernel functions: local `kernel_N` in a
    /// JIT, exported `{prefix}_kN` in an object.
    pub(super) export: Option<String>,
    /// Row programs placed as data in an object so far.
    pub(super) object_rows: usize,
    /// Every load and store checks its index (scalar code only; see
    /// `Emitter::address`).
    pub(super) checked: bool,
    /// Generated code printed as it is compiled.
    pub(super) dumps: super::Dumps,
    /// Functions by the rewritten form of the nests they compute
    /// (`super::shared`).
    shared: HashMap<String, FuncId>,
}

/// What a loop body needs to know to compute one element.
pub(crate) enum Body<'a> {
    /// `out[i] = program(i)` over `shape`; with `acc_from_out`, `Acc` is the
    /// element already in `out` (an epilogue applied in place).
    Elementwise {
        out: BufferId,
        shape: &'a [usize],
        inputs: &'a [Access],
        program: &'a ElementProgram,
        acc_from_out: bool,
    },
    /// A reduction with an optional row map.
    Reduce {
        out: Option<BufferId>,
        shape: &'a [usize],
        axes: &'a [usize],
        kind: ReduceKind,
        inputs: &'a [Access],
        body: &'a ElementProgram,
        map: Option<(BufferId, &'a ElementProgram)>,
    },
}

/// Cranelift flags shared by JIT and object code.
pub(super) fn flag_builder(pic: bool) -> Result<settings::Builder> {
    let host = |e: String| Error::Host(e);
    let mut fb = settings::builder();
    fb.set("opt_level", "speed")
        .map_err(|e| host(e.to_string()))?;
    fb.set("use_colocated_libcalls", "false")
        .map_err(|e| host(e.to_string()))?;
    fb.set("is_pic", if pic { "true" } else { "false" })
        .map_err(|e| host(e.to_string()))?;
    // Cranelift checks every function it compiles unless told not to: a
    // cost at every compile (a 9,300-node GRU compiles 600 kernels) that
    // debug builds, which the tests run too, keep paying.
    let verify = if cfg!(debug_assertions) {
        "true"
    } else {
        "false"
    };
    fb.set("enable_verifier", verify)
        .map_err(|e| host(e.to_string()))?;
    Ok(fb)
}

/// What an ahead-of-time object is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The machine compiling it (every feature it has).
    Host,
    /// x86-64 with AVX2 and FMA (Haswell and later).
    X86_64V3,
    /// x86-64-v3 plus AVX-512 F/BW/CD/DQ/VL.
    X86_64V4,
}

impl std::str::FromStr for Target {
    type Err = Error;
    fn from_str(s: &str) -> Result<Target> {
        match s {
            "native" | "host" => Ok(Target::Host),
            "x86-64-v3" => Ok(Target::X86_64V3),
            "x86-64-v4" => Ok(Target::X86_64V4),
            other => Err(Error::Host(format!(
                "unknown target CPU '{other}': native, x86-64-v3 or x86-64-v4"
            ))),
        }
    }
}

impl Jit {
    /// A JIT for the host; long f32 rows run in the row code of ISA
    /// `wide` (which the host must have), or all in Cranelift's code.
    pub(crate) fn new(wide: Option<Isa>) -> Result<Jit> {
        let host = |e: String| Error::Host(e);
        let isa = cranelift_native::builder()
            .map_err(|e| host(e.to_string()))?
            .finish(settings::Flags::new(flag_builder(false)?))
            .map_err(|e| host(e.to_string()))?;
        let mut jb = JITBuilder::with_isa(isa, default_libcall_names());
        for (name, ptr) in support::symbols() {
            jb.symbol(name, ptr);
        }
        Ok(Jit::with_module(
            JITModule::new(jb),
            host_has_fma(),
            wide.filter(|i| i.available()),
            None,
        ))
    }

    /// Finishes compilation; afterwards [`Jit::function`] gives entry points.
    pub(crate) fn finalize(&mut self) -> Result<()> {
        self.module
            .finalize_definitions()
            .map_err(|e| Error::Codegen {
                kernel: usize::MAX,
                reason: e.to_string(),
            })
    }

    /// Frees the machine code of every function compiled here.
    ///
    /// # Safety
    /// No function of this module may run, or be called, afterwards.
    pub(crate) unsafe fn free(self) {
        // SAFETY: the caller guarantees no compiled function is used again.
        unsafe { self.module.free_memory() }
    }

    /// The entry point of a compiled kernel (after [`Jit::finalize`]).
    pub(crate) fn function(&self, id: FuncId) -> KernelFn {
        let p = self.module.get_finalized_function(id);
        // SAFETY: every function compiled here has the signature `fn(*const *mut u8)`.
        unsafe { std::mem::transmute::<*const u8, KernelFn>(p) }
    }
}

impl<M: Module> Jit<M> {
    pub(super) fn with_module(
        module: M,
        fma: bool,
        wide: Option<Isa>,
        export: Option<String>,
    ) -> Jit<M> {
        let ctx = module.make_context();
        Jit {
            module,
            ctx,
            fctx: FunctionBuilderContext::new(),
            imports: HashMap::new(),
            count: 0,
            fma,
            wide,
            rows: Vec::new(),
            export,
            object_rows: 0,
            checked: false,
            dumps: super::Dumps::default(),
            shared: HashMap::new(),
        }
    }

    /// Compiles a loop nest, or finds the function compiled for an earlier
    /// nest that differs only in its buffers (`super::shared`); returns it
    /// with the table it reads (empty: the program's own). Checked code
    /// names its buffers in its reports, so it is never shared.
    pub(crate) fn compile_nest(
        &mut self,
        prog: &KernelProgram,
        body: &Body<'_>,
        kernel: usize,
    ) -> Result<(FuncId, Vec<(usize, i64)>)> {
        if self.checked {
            return Ok((self.compile(prog, body, kernel)?, Vec::new()));
        }
        let c = super::shared::canonical(prog, body);
        if let Some(&id) = self.shared.get(&c.key) {
            return Ok((id, c.slots));
        }
        let id = self.compile(&c.program, &c.body(body), kernel)?;
        self.shared.insert(c.key, id);
        Ok((id, c.slots))
    }

    fn import(&mut self, name: &'static str, params: &[Type], ret: &[Type]) -> Result<FuncId> {
        if let Some(&id) = self.imports.get(name) {
            return Ok(id);
        }
        let mut sig = self.module.make_signature();
        sig.params.extend(params.iter().map(|&t| AbiParam::new(t)));
        sig.returns.extend(ret.iter().map(|&t| AbiParam::new(t)));
        let id = self
            .module
            .declare_function(name, Linkage::Import, &sig)
            .map_err(|e| Error::Codegen {
                kernel: usize::MAX,
                reason: e.to_string(),
            })?;
        self.imports.insert(name, id);
        Ok(id)
    }

    /// Compiles one kernel body into a new function.
    pub(crate) fn compile(
        &mut self,
        prog: &KernelProgram,
        body: &Body<'_>,
        kernel: usize,
    ) -> Result<FuncId> {
        let err = |e: String| Error::Codegen { kernel, reason: e };
        let rows_before = self.rows.len();
        // Support functions the body may call.
        let ptr = self.module.target_config().pointer_type();
        let mut funcs = HashMap::new();
        for (name, params, ret) in [
            ("kiln_unary_f32", vec![types::I32, types::F32], types::F32),
            ("kiln_unary_f64", vec![types::I32, types::F64], types::F64),
            ("kiln_pow_f32", vec![types::F32, types::F32], types::F32),
            ("kiln_pow_f64", vec![types::F64, types::F64], types::F64),
            ("kiln_rem_f32", vec![types::F32, types::F32], types::F32),
            ("kiln_rem_f64", vec![types::F64, types::F64], types::F64),
            ("kiln_pow_i32", vec![types::I32, types::I32], types::I32),
            ("kiln_pow_i64", vec![types::I64, types::I64], types::I64),
            ("kiln_pow_u64", vec![types::I64, types::I64], types::I64),
            (
                "kiln_random_f32",
                vec![types::I32, types::I64, types::F64, types::F64, types::I64],
                types::F32,
            ),
            (
                "kiln_random_f64",
                vec![types::I32, types::I64, types::F64, types::F64, types::I64],
                types::F64,
            ),
        ] {
            funcs.insert(name, self.import(name, &params, &[ret])?);
        }
        funcs.insert(
            "kiln_half_to_f32",
            self.import("kiln_half_to_f32", &[types::I32, types::I32], &[types::F32])?,
        );
        funcs.insert(
            "kiln_f32_to_half",
            self.import("kiln_f32_to_half", &[types::F32, types::I32], &[types::I32])?,
        );
        funcs.insert(
            "kiln_round_half_f64",
            self.import(
                "kiln_round_half_f64",
                &[types::F64, types::I32],
                &[types::F32],
            )?,
        );
        funcs.insert(
            "kiln_bounds_fail",
            self.import(
                "kiln_bounds_fail",
                &[types::I64, types::I64, types::I64],
                &[],
            )?,
        );
        // The row code of the chosen ISA only (an object then names no
        // symbol it does not call).
        if let Some(isa) = self.wide {
            let (row, reduce) = (isa.row_symbol(), isa.reduce_symbol());
            funcs.insert(row, self.import(row, &[ptr, ptr, ptr, types::I64], &[])?);
            funcs.insert(
                reduce,
                self.import(
                    reduce,
                    &[ptr, ptr, types::I64, types::I32, ptr],
                    &[types::F32],
                )?,
            );
        }
        let target_config = self.module.target_config();
        let mut sig = self.module.make_signature();
        sig.params.push(AbiParam::new(ptr));
        sig.params.push(AbiParam::new(types::I64));
        sig.params.push(AbiParam::new(types::I64));
        let (name, linkage) = match &self.export {
            Some(prefix) => (format!("{prefix}_k{}", self.count), Linkage::Export),
            None => (format!("kernel_{}", self.count), Linkage::Local),
        };
        self.count += 1;
        let id = self
            .module
            .declare_function(&name, linkage, &sig)
            .map_err(|e| err(e.to_string()))?;
        self.ctx.func = Function::with_name_signature(UserFuncName::user(0, id.as_u32()), sig);
        {
            let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            let (table, lo, hi) = (
                b.block_params(entry)[0],
                b.block_params(entry)[1],
                b.block_params(entry)[2],
            );
            let mut refs = HashMap::new();
            for (name, fid) in &funcs {
                refs.insert(*name, self.module.declare_func_in_func(*fid, b.func));
            }
            // In an object, each row program is read-only data of its own.
            let module = &mut self.module;
            let rows_out = &mut self.object_rows;
            let prefix = self.export.clone();
            let dump_rows = self.dumps.rows;
            let mut row_data = |rp: &super::wide::RowProgram,
                                func: &mut Function|
             -> Result<cranelift_codegen::ir::GlobalValue> {
                if dump_rows {
                    eprintln!("; kernel {kernel}: row program {rp:?}");
                }
                let e = |e: cranelift_module::ModuleError| Error::Codegen {
                    kernel,
                    reason: e.to_string(),
                };
                let name = format!("{}_row{}", prefix.as_deref().unwrap_or("kiln"), *rows_out);
                *rows_out += 1;
                let id = module
                    .declare_data(&name, Linkage::Local, false, false)
                    .map_err(e)?;
                let mut d = cranelift_module::DataDescription::new();
                d.define(rp.as_bytes().to_vec().into());
                d.set_align(8);
                module.define_data(id, &d).map_err(e)?;
                Ok(module.declare_data_in_func(id, func))
            };
            let mut e = Emitter {
                row_data: self
                    .export
                    .is_some()
                    .then_some(&mut row_data as &mut RowData<'_>),
                b,
                prog,
                table,
                ptr,
                bases: HashMap::new(),
                funcs: refs,
                loop_vars: Vec::new(),
                range: (lo, hi),
                fma: self.fma,
                wide: self.wide,
                checked: self.checked,
                rows: Vec::new(),
            };
            e.body(body)?;
            let mut rows = std::mem::take(&mut e.rows);
            e.b.ins().return_(&[]);
            e.b.seal_all_blocks();
            e.b.finalize(target_config);
            self.rows.append(&mut rows);
        }
        // Debug output: each kernel's Cranelift IR, its machine code, its
        // row programs.
        if self.dumps.clif {
            eprintln!("; kernel {kernel}\n{}", self.ctx.func.display());
        }
        if self.dumps.rows {
            for rp in &self.rows[rows_before..] {
                eprintln!("; kernel {kernel}: row program {rp:?}");
            }
        }
        self.ctx.set_disasm(self.dumps.asm);
        self.module
            .define_function(id, &mut self.ctx)
            .map_err(|e| err(format!("{e:?}")))?;
        if let Some(text) = self.ctx.compiled_code().and_then(|c| c.vcode.as_ref()) {
            eprintln!("; kernel {kernel}\n{text}");
        }
        self.module.clear_context(&mut self.ctx);
        Ok(id)
    }

    /// Makes later kernels bounds-check every load and store (and use
    /// scalar code, so every access goes through one checked address).
    pub(crate) fn set_checked(&mut self, on: bool) {
        self.checked = on;
        if on {
            self.wide = None;
        }
    }

    /// Prints generated code as it is compiled.
    pub(crate) fn set_dumps(&mut self, dumps: super::Dumps) {
        self.dumps = dumps;
    }

    /// The symbol of kernel function `id` (exported in an object).
    pub(crate) fn symbol(&self, id: FuncId) -> String {
        self.module
            .declarations()
            .get_function_decl(id)
            .linkage_name(id)
            .into_owned()
    }
}
