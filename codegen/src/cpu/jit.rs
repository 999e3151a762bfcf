//! Lowering element programs, reductions and epilogues to Cranelift IR.
//!
//! Every compiled kernel is `extern "C" fn(buffers: *const *mut u8)`: the
//! table holds each buffer's base address, indexed by `BufferId`. Loop nests
//! run over the kernel's loop shape in row-major order; index expressions
//! become integer arithmetic; masked loads branch around the access.

use std::collections::HashMap;

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, AbiParam, Function, InstBuilder, MemFlagsData, Type, UserFuncName, Value,
};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};

use kiln_graph::{ArgOp, BinaryOp, DType, ReduceOp, Scalar, UnaryOp};
use kiln_optimizer::index::{Atom, Index};
use kiln_optimizer::kernel::{
    Access, BufferId, Cond, ElementProgram, Instr, KernelProgram, ReduceKind, Storage,
};

use super::support;
use super::vector::RowAcc;
use crate::error::{Error, Result};

/// A compiled kernel entry point.
/// `(buffer table, lo, hi)`: a kernel whose outermost loop can be split
/// runs that loop over `lo..hi` only (see [`Jit::compile`]).
pub(crate) type KernelFn = unsafe extern "C" fn(*const *mut u8, i64, i64);

fn cl(dtype: DType) -> Type {
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

fn host_has_fma() -> bool {
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
    module: M,
    ctx: Context,
    fctx: FunctionBuilderContext,
    imports: HashMap<&'static str, FuncId>,
    count: usize,
    fma: bool,
    /// Long f32 rows run through `wide::kiln_row_f32` (AVX-512).
    wide: bool,
    /// The row programs compiled code points at (boxed: their addresses
    /// are baked into the code, so they must not move).
    #[allow(clippy::vec_box)]
    rows: Vec<Box<super::wide::RowProgram>>,
    /// Linkage and name prefix of kernel functions: local `kernel_N` in a
    /// JIT, exported `{prefix}_kN` in an object.
    export: Option<String>,
    /// Row programs placed as data in an object so far.
    object_rows: usize,
    /// Every load and store checks its index (scalar code only; see
    /// `Emitter::address`).
    checked: bool,
    /// Generated code printed as it is compiled.
    dumps: super::Dumps,
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
fn flag_builder(pic: bool) -> Result<settings::Builder> {
    let host = |e: String| Error::Host(e);
    let mut fb = settings::builder();
    fb.set("opt_level", "speed")
        .map_err(|e| host(e.to_string()))?;
    fb.set("use_colocated_libcalls", "false")
        .map_err(|e| host(e.to_string()))?;
    fb.set("is_pic", if pic { "true" } else { "false" })
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

/// The bytes an ahead-of-time model's arena takes (`{prefix}_arena_bytes`),
/// and the offset in it of each result nothing fetches (none in frozen
/// programs; kept for safety), placed after the planned temporaries.
pub(crate) fn arena_layout(program: &KernelProgram) -> (usize, HashMap<usize, usize>) {
    let mut bytes = program.memory.arena.next_multiple_of(64);
    let mut extra = HashMap::new();
    for (i, b) in program.buffers.iter().enumerate() {
        if matches!(b.storage, Storage::Result) && !program.outputs.contains(&BufferId(i)) {
            extra.insert(i, bytes);
            bytes += b.size_bytes().max(1).next_multiple_of(64);
        }
    }
    (bytes.max(64), extra)
}

impl Jit<cranelift_object::ObjectModule> {
    /// An object-file module for `target`, its kernels exported as
    /// `{prefix}_kN` (PIC, so the object links into position-independent
    /// executables).
    pub(crate) fn object(prefix: &str, target: Target) -> Result<Self> {
        let host = |e: String| Error::Host(e);
        let flags = settings::Flags::new(flag_builder(true)?);
        let isa = match target {
            Target::Host => cranelift_native::builder()
                .map_err(|e| host(e.to_string()))?
                .finish(flags),
            Target::X86_64V3 | Target::X86_64V4 => {
                let mut b = cranelift_codegen::isa::lookup_by_name("x86_64")
                    .map_err(|e| host(e.to_string()))?;
                let mut feats = vec![
                    "has_sse3",
                    "has_ssse3",
                    "has_sse41",
                    "has_sse42",
                    "has_popcnt",
                    "has_avx",
                    "has_avx2",
                    "has_fma",
                    "has_bmi1",
                    "has_bmi2",
                    "has_lzcnt",
                ];
                if target == Target::X86_64V4 {
                    // The v4 level is AVX-512 F, BW, CD, DQ and VL; of
                    // Cranelift's AVX-512 settings, these (not BITALG or
                    // VBMI, which later CPUs add).
                    feats.extend(["has_avx512f", "has_avx512dq", "has_avx512vl"]);
                }
                for f in feats {
                    b.enable(f).map_err(|e| host(format!("{f}: {e}")))?;
                }
                b.finish(flags)
            }
        }
        .map_err(|e| host(e.to_string()))?;
        let builder = cranelift_object::ObjectBuilder::new(
            isa,
            prefix.as_bytes().to_vec(),
            default_libcall_names(),
        )
        .map_err(|e| host(e.to_string()))?;
        // Long rows call the run-time library's AVX-512 row code (their
        // row programs as read-only data) where the target has AVX-512: v4,
        // or the host when it does.
        let wide = match target {
            Target::X86_64V4 => true,
            Target::Host => super::wide::available(),
            Target::X86_64V3 => false,
        };
        Ok(Jit::with_module(
            cranelift_object::ObjectModule::new(builder),
            target != Target::Host || host_has_fma(),
            wide,
            Some(prefix.to_string()),
        ))
    }

    /// Defines the program's entry points. `{prefix}_run`:
    /// `int f(const void *const *inputs, void *const *outputs)`, inputs in
    /// the program's input buffer order, outputs in its output order, with
    /// the arena a zeroed static block of the object (so its calls are
    /// serialized by the run-time library); `{prefix}_run_r`: the same with
    /// a third argument, an arena of `{prefix}_arena_bytes()` bytes, 64-byte
    /// aligned, that the caller owns (calls with different arenas run at
    /// the same time). The constants are read-only data in the object. Each
    /// builds the buffer table and the table of `functions` on its stack and
    /// hands them, with the step list `words` (read-only data) and a state
    /// word of the model's, to `kiln-rt`'s `kiln_rt_run`; then it copies
    /// any output that is not a result of its own (a fetched input or
    /// constant, or a result fetched twice) and returns `kiln_rt_run`'s
    /// status (0, or 1 with `kiln_rt_last_error`).
    pub(crate) fn entry(
        &mut self,
        program: &KernelProgram,
        functions: &[FuncId],
        words: &[i64],
    ) -> Result<()> {
        use cranelift_codegen::ir::{StackSlotData, StackSlotKind};
        use cranelift_module::DataDescription;
        let prefix = self.export.clone().expect("an object module exports");
        let err = |e: String| Error::Codegen {
            kernel: usize::MAX,
            reason: e,
        };
        let ptr = self.module.target_config().pointer_type();
        let pb = ptr.bytes() as usize;
        let (arena_bytes, extra) = arena_layout(program);
        // The static arena and the constants as data.
        let arena = self
            .module
            .declare_data(&format!("{prefix}_arena"), Linkage::Local, true, false)
            .map_err(|e| err(e.to_string()))?;
        let mut d = DataDescription::new();
        d.define_zeroinit(arena_bytes);
        d.set_align(64);
        self.module
            .define_data(arena, &d)
            .map_err(|e| err(e.to_string()))?;
        let mut data = HashMap::new();
        for (i, b) in program.buffers.iter().enumerate() {
            let Storage::Constant { value } = &b.storage else {
                continue;
            };
            let bytes: Box<[u8]> = value.0.as_bytes().to_vec().into();
            let id = self
                .module
                .declare_data(&format!("{prefix}_b{i}"), Linkage::Local, false, false)
                .map_err(|e| err(e.to_string()))?;
            let mut d = DataDescription::new();
            d.define(if bytes.is_empty() {
                vec![0u8].into()
            } else {
                bytes
            });
            d.set_align(64);
            self.module
                .define_data(id, &d)
                .map_err(|e| err(e.to_string()))?;
            data.insert(i, id);
        }
        // The step list, and the word where the run-time library keeps the
        // model's executor.
        let mut data_of = |name: &str, bytes: Vec<u8>, writable: bool| -> Result<_> {
            let id = self
                .module
                .declare_data(&format!("{prefix}_{name}"), Linkage::Local, writable, false)
                .map_err(|e| err(e.to_string()))?;
            let mut d = DataDescription::new();
            d.define(bytes.into());
            d.set_align(8);
            self.module
                .define_data(id, &d)
                .map_err(|e| err(e.to_string()))?;
            Ok(id)
        };
        let steps = data_of(
            "steps",
            words.iter().flat_map(|w| w.to_le_bytes()).collect(),
            false,
        )?;
        let state = data_of("state", vec![0u8; pb], true)?;
        let import = |module: &mut cranelift_object::ObjectModule,
                      name: &str,
                      params: &[Type],
                      ret: Type| {
            let mut sig = module.make_signature();
            sig.params.extend(params.iter().map(|&t| AbiParam::new(t)));
            sig.returns.push(AbiParam::new(ret));
            module
                .declare_function(name, Linkage::Import, &sig)
                .map_err(|e| err(e.to_string()))
        };
        let memcpy = import(&mut self.module, "memcpy", &[ptr; 3], ptr)?;
        let rt_run = import(
            &mut self.module,
            "kiln_rt_run",
            &[
                ptr,
                ptr,
                types::I64,
                ptr,
                types::I64,
                ptr,
                types::I64,
                types::I64,
            ],
            types::I32,
        )?;
        // `{prefix}_arena_bytes`: what `{prefix}_run_r`'s arena must hold.
        let mut sig = self.module.make_signature();
        sig.returns.push(AbiParam::new(ptr));
        let size_fn = self
            .module
            .declare_function(&format!("{prefix}_arena_bytes"), Linkage::Export, &sig)
            .map_err(|e| err(e.to_string()))?;
        self.ctx.func = Function::with_name_signature(UserFuncName::user(0, size_fn.as_u32()), sig);
        {
            let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
            let entry = b.create_block();
            b.switch_to_block(entry);
            let n = b.ins().iconst(ptr, arena_bytes as i64);
            b.ins().return_(&[n]);
            b.seal_all_blocks();
            b.finalize(self.module.target_config());
        }
        self.module
            .define_function(size_fn, &mut self.ctx)
            .map_err(|e| err(format!("{e:?}")))?;
        self.module.clear_context(&mut self.ctx);
        for reentrant in [false, true] {
            let mut sig = self.module.make_signature();
            sig.params
                .extend(vec![AbiParam::new(ptr); 2 + usize::from(reentrant)]);
            sig.returns.push(AbiParam::new(types::I32));
            let name = if reentrant {
                format!("{prefix}_run_r")
            } else {
                format!("{prefix}_run")
            };
            let run = self
                .module
                .declare_function(&name, Linkage::Export, &sig)
                .map_err(|e| err(e.to_string()))?;
            self.ctx.func = Function::with_name_signature(UserFuncName::user(0, run.as_u32()), sig);
            let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            let (inputs, outputs) = (b.block_params(entry)[0], b.block_params(entry)[1]);
            let n = program.buffers.len().max(1);
            let slot = b.create_sized_stack_slot(StackSlotData::new(
                StackSlotKind::ExplicitSlot,
                (n * pb) as u32,
                3,
            ));
            let arena_addr = if reentrant {
                b.block_params(entry)[2]
            } else {
                let arena_gv = self.module.declare_data_in_func(arena, b.func);
                b.ins().symbol_value(ptr, arena_gv)
            };
            let mut addrs = Vec::with_capacity(program.buffers.len());
            let mut next_input = 0i32;
            for (i, buf) in program.buffers.iter().enumerate() {
                let a = match &buf.storage {
                    Storage::Arena { offset } => b.ins().iadd_imm_u(arena_addr, *offset as i64),
                    Storage::Input { .. } => {
                        let a = b.ins().load(ptr, flags(), inputs, next_input * pb as i32);
                        next_input += 1;
                        a
                    }
                    Storage::Result => match extra.get(&i) {
                        Some(&offset) => b.ins().iadd_imm_u(arena_addr, offset as i64),
                        None => {
                            let o = program
                                .outputs
                                .iter()
                                .position(|&x| x.0 == i)
                                .expect("results not in the arena are outputs");
                            b.ins().load(ptr, flags(), outputs, (o * pb) as i32)
                        }
                    },
                    Storage::Variable { name } => {
                        return Err(err(format!(
                            "variable '{name}' is assigned by the graph (training): \
                             ahead-of-time code takes frozen graphs"
                        )))
                    }
                    Storage::Constant { .. } => {
                        let gv = self.module.declare_data_in_func(data[&i], b.func);
                        b.ins().symbol_value(ptr, gv)
                    }
                };
                b.ins().stack_store(ptr, a, slot, (i * pb) as i32);
                addrs.push(a);
            }
            let table = b.ins().stack_addr(ptr, slot, 0);
            let fslot = b.create_sized_stack_slot(StackSlotData::new(
                StackSlotKind::ExplicitSlot,
                (functions.len().max(1) * pb) as u32,
                3,
            ));
            for (i, &f) in functions.iter().enumerate() {
                let fr = self.module.declare_func_in_func(f, b.func);
                let a = b.ins().func_addr(ptr, fr);
                b.ins().stack_store(ptr, a, fslot, (i * pb) as i32);
            }
            let fns = b.ins().stack_addr(ptr, fslot, 0);
            let gv = self.module.declare_data_in_func(state, b.func);
            let state_addr = b.ins().symbol_value(ptr, gv);
            let gv = self.module.declare_data_in_func(steps, b.func);
            let steps_addr = b.ins().symbol_value(ptr, gv);
            let nwords = b.ins().iconst(types::I64, words.len() as i64);
            let nfns = b.ins().iconst(types::I64, functions.len() as i64);
            let nbuf = b.ins().iconst(types::I64, program.buffers.len() as i64);
            let exclusive = b.ins().iconst(types::I64, i64::from(!reentrant));
            let fr = self.module.declare_func_in_func(rt_run, b.func);
            let call = b.ins().call(
                fr,
                &[
                    state_addr, steps_addr, nwords, fns, nfns, table, nbuf, exclusive,
                ],
            );
            let status = b.inst_results(call)[0];
            let mc = self.module.declare_func_in_func(memcpy, b.func);
            for (o, out) in program.outputs.iter().enumerate() {
                let own = matches!(program.buffer(*out).storage, Storage::Result)
                    && program.outputs.iter().position(|x| x == out) == Some(o);
                if own {
                    continue;
                }
                let dst = b.ins().load(ptr, flags(), outputs, (o * pb) as i32);
                let len = b
                    .ins()
                    .iconst(ptr, program.buffer(*out).size_bytes() as i64);
                b.ins().call(mc, &[dst, addrs[out.0], len]);
            }
            b.ins().return_(&[status]);
            b.seal_all_blocks();
            b.finalize(self.module.target_config());
            self.module
                .define_function(run, &mut self.ctx)
                .map_err(|e| err(format!("{e:?}")))?;
            self.module.clear_context(&mut self.ctx);
        }
        Ok(())
    }

    /// The object file's bytes.
    pub(crate) fn emit(self) -> Result<Vec<u8>> {
        self.module.finish().emit().map_err(|e| Error::Codegen {
            kernel: usize::MAX,
            reason: format!("writing the object file: {e}"),
        })
    }
}

impl Jit {
    /// A JIT for the host; `wide` lets long f32 rows use AVX-512 where the
    /// host has it.
    pub(crate) fn new(wide: bool) -> Result<Jit> {
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
            wide && super::wide::available(),
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
    fn with_module(module: M, fma: bool, wide: bool, export: Option<String>) -> Jit<M> {
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
        }
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
        funcs.insert(
            "kiln_row_f32",
            self.import("kiln_row_f32", &[ptr, ptr, ptr, types::I64], &[])?,
        );
        funcs.insert(
            "kiln_reduce_row_f32",
            self.import(
                "kiln_reduce_row_f32",
                &[ptr, ptr, types::I64, types::I32, ptr],
                &[types::F32],
            )?,
        );
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
        // AVX-512 row programs.
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
            self.wide = false;
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

/// Places a row program as read-only data of an object and returns its
/// global value in a function.
pub(super) type RowData<'c> = dyn FnMut(&super::wide::RowProgram, &mut Function) -> Result<cranelift_codegen::ir::GlobalValue>
    + 'c;

pub(super) struct Emitter<'a, 'b> {
    pub(super) b: FunctionBuilder<'b>,
    /// In an object: where row programs go (else they are boxed in `rows`
    /// and their addresses baked into the code).
    pub(super) row_data: Option<&'a mut RowData<'a>>,
    pub(super) prog: &'a KernelProgram,
    table: Value,
    ptr: Type,
    bases: HashMap<BufferId, Value>,
    funcs: HashMap<&'static str, cranelift_codegen::ir::FuncRef>,
    pub(super) loop_vars: Vec<Variable>,
    /// The `lo..hi` parameters: the range of loop variable 0 when it is split.
    pub(super) range: (Value, Value),
    /// The host has fused multiply-add.
    pub(super) fma: bool,
    /// Long f32 rows may call `kiln_row_f32`.
    pub(super) wide: bool,
    /// Every load and store checks its index.
    pub(super) checked: bool,
    /// Row programs this function's code points at.
    #[allow(clippy::vec_box)]
    pub(super) rows: Vec<Box<super::wide::RowProgram>>,
}

impl Emitter<'_, '_> {
    fn err(&self, reason: String) -> Error {
        Error::Codegen {
            kernel: usize::MAX,
            reason,
        }
    }

    /// The base address of buffer `id`. Kernels load every base they use in
    /// the entry block (see `preload_bases`), so later calls hit the cache.
    fn base(&mut self, id: BufferId) -> Value {
        if let Some(&v) = self.bases.get(&id) {
            return v;
        }
        let v = self.b.ins().load(
            self.ptr,
            flags(),
            self.table,
            (id.0 * self.ptr.bytes() as usize) as i32,
        );
        self.bases.insert(id, v);
        v
    }

    fn iconst(&mut self, v: i64) -> Value {
        self.b.ins().iconst(types::I64, v)
    }

    /// Evaluates an index expression as an i64.
    pub(super) fn index(&mut self, e: &Index, idx: &[Value]) -> Value {
        let mut acc = self.iconst(e.constant);
        for (c, a) in &e.terms {
            let v = match a {
                Atom::Var(d) => idx[*d],
                Atom::Div(inner, k) => {
                    let x = self.index(inner, idx);
                    let (q, r) = (
                        self.b.ins().sdiv_imm_s(x, *k),
                        self.b.ins().srem_imm_s(x, *k),
                    );
                    let neg = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, r, 0);
                    let one = self.b.ins().uextend(types::I64, neg);
                    self.b.ins().isub(q, one)
                }
                Atom::Mod(inner, k) => {
                    let x = self.index(inner, idx);
                    let r = self.b.ins().srem_imm_s(x, *k);
                    let neg = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, r, 0);
                    let kk = self.iconst(*k);
                    let zero = self.iconst(0);
                    let add = self.b.ins().select(neg, kk, zero);
                    self.b.ins().iadd(r, add)
                }
            };
            let t = self.b.ins().imul_imm_s(v, *c);
            acc = self.b.ins().iadd(acc, t);
        }
        acc
    }

    fn conds(&mut self, conds: &[Cond], idx: &[Value]) -> Value {
        let mut ok = self.b.ins().iconst(types::I8, 1);
        for c in conds {
            let v = self.index(&c.expr, idx);
            let lo = self
                .b
                .ins()
                .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, v, c.lo);
            let hi = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, v, c.hi);
            let both = self.b.ins().band(lo, hi);
            ok = self.b.ins().band(ok, both);
        }
        ok
    }

    pub(super) fn address(&mut self, buf: BufferId, offset: Value) -> Value {
        let size = self.prog.buffer(buf).dtype.size_bytes() as i64;
        let offset = if self.checked {
            self.checked_index(buf, offset)
        } else {
            offset
        };
        let base = self.base(buf);
        let bytes = self.b.ins().imul_imm_s(offset, size);
        self.b.ins().iadd(base, bytes)
    }

    /// `offset`, reported (`kiln_bounds_fail`) and replaced by 0 when it is
    /// outside buffer `buf`: a checked kernel never touches memory outside
    /// its buffers, and the executor turns the report into an error.
    fn checked_index(&mut self, buf: BufferId, offset: Value) -> Value {
        use cranelift_codegen::ir::condcodes::IntCC;
        let len = self.prog.buffer(buf).shape.iter().product::<usize>() as i64;
        let limit = self.b.ins().iconst(types::I64, len);
        let oob = self
            .b
            .ins()
            .icmp(IntCC::UnsignedGreaterThanOrEqual, offset, limit);
        let fail = self.b.create_block();
        let cont = self.b.create_block();
        self.b.ins().brif(oob, fail, &[], cont, &[]);
        self.b.switch_to_block(fail);
        let id = self.b.ins().iconst(types::I64, buf.0 as i64);
        let n = self.b.ins().iconst(types::I64, len);
        self.call_void("kiln_bounds_fail", &[id, offset, n]);
        self.b.ins().jump(cont, &[]);
        self.b.switch_to_block(cont);
        let zero = self.b.ins().iconst(types::I64, 0);
        self.b.ins().select(oob, zero, offset)
    }

    fn zero(&mut self, dtype: DType) -> Value {
        self.constant(Scalar::from_f64(dtype, 0.0))
    }

    fn constant(&mut self, s: Scalar) -> Value {
        match s {
            Scalar::F32(v) => self.b.ins().f32const(v),
            Scalar::F64(v) => self.b.ins().f64const(v),
            Scalar::I32(v) => self.b.ins().iconst(types::I32, v as u32 as i64),
            Scalar::I64(v) => self.b.ins().iconst(types::I64, v),
            Scalar::Bool(v) => self.b.ins().iconst(types::I8, v as i64),
            // Narrow immediates are given zero-extended, as Cranelift wants.
            Scalar::I8(v) => self.b.ins().iconst(types::I8, v as u8 as i64),
            Scalar::U8(v) => self.b.ins().iconst(types::I8, v as i64),
            Scalar::I16(v) => self.b.ins().iconst(types::I16, v as u16 as i64),
            Scalar::U16(v) => self.b.ins().iconst(types::I16, v as i64),
            Scalar::U32(v) => self.b.ins().iconst(types::I32, v as i64),
            Scalar::U64(v) => self.b.ins().iconst(types::I64, v as i64),
            Scalar::F16(v) => self.b.ins().f32const(v.to_f32()),
            Scalar::BF16(v) => self.b.ins().f32const(v.to_f32()),
        }
    }

    /// Loads the element of buffer `buf` at `addr` into its register type
    /// (a half value widened to f32).
    fn load_elem(&mut self, buf: BufferId, addr: Value) -> Value {
        let dtype = self.prog.buffer(buf).dtype;
        if dtype.is_half() {
            let bits = self.b.ins().uload16(types::I32, flags(), addr, 0);
            let bf = self
                .b
                .ins()
                .iconst(types::I32, (dtype == DType::BF16) as i64);
            return self.call("kiln_half_to_f32", &[bits, bf]);
        }
        self.b.ins().load(cl(dtype), flags(), addr, 0)
    }

    fn load(&mut self, a: &Access, idx: &[Value]) -> Value {
        let dtype = self.prog.buffer(a.buffer).dtype;
        let ty = cl(dtype);
        if a.mask.is_empty() {
            let off = self.index(&a.offset, idx);
            let addr = self.address(a.buffer, off);
            return self.load_elem(a.buffer, addr);
        }
        let ok = self.conds(&a.mask, idx);
        let var = self.b.declare_var(ty);
        let z = self.zero(dtype);
        self.b.def_var(var, z);
        let (then, merge) = (self.b.create_block(), self.b.create_block());
        self.b.ins().brif(ok, then, &[], merge, &[]);
        self.b.switch_to_block(then);
        let off = self.index(&a.offset, idx);
        let addr = self.address(a.buffer, off);
        let v = self.load_elem(a.buffer, addr);
        self.b.def_var(var, v);
        self.b.ins().jump(merge, &[]);
        self.b.switch_to_block(merge);
        self.b.use_var(var)
    }

    /// Calls a support function that returns nothing.
    pub(super) fn call_void(&mut self, name: &'static str, args: &[Value]) {
        let f = self.funcs[name];
        self.b.ins().call(f, args);
    }

    pub(super) fn call(&mut self, name: &'static str, args: &[Value]) -> Value {
        let f = self.funcs[name];
        let inst = self.b.ins().call(f, args);
        self.b.inst_results(inst)[0]
    }

    /// `x` of integer dtype `from` widened to i64 (sign- or zero-extended).
    fn widen_int(&mut self, from: DType, x: Value) -> Value {
        if cl(from) == types::I64 {
            x
        } else if from.is_signed_int() {
            self.b.ins().sextend(types::I64, x)
        } else {
            self.b.ins().uextend(types::I64, x)
        }
    }

    /// Unary op `f` on `x` of dtype `dt`.
    fn unary(&mut self, f: UnaryOp, x: Value, dt: DType) -> Value {
        let ty = self.b.func.dfg.value_type(x);
        if ty.is_float() {
            let one = if ty == types::F32 {
                self.b.ins().f32const(1.0)
            } else {
                self.b.ins().f64const(1.0)
            };
            return match f {
                UnaryOp::Neg => self.b.ins().fneg(x),
                UnaryOp::Abs => self.b.ins().fabs(x),
                UnaryOp::Sqrt => self.b.ins().sqrt(x),
                UnaryOp::Recip => self.b.ins().fdiv(one, x),
                UnaryOp::Floor => self.b.ins().floor(x),
                UnaryOp::Ceil => self.b.ins().ceil(x),
                UnaryOp::Round => self.b.ins().nearest(x),
                UnaryOp::Sign => {
                    let zero = if ty == types::F32 {
                        self.b.ins().f32const(0.0)
                    } else {
                        self.b.ins().f64const(0.0)
                    };
                    let m1 = self.b.ins().fneg(one);
                    let gt = self.b.ins().fcmp(FloatCC::GreaterThan, x, zero);
                    let lt = self.b.ins().fcmp(FloatCC::LessThan, x, zero);
                    let neg_or_x = self.b.ins().select(lt, m1, x);
                    self.b.ins().select(gt, one, neg_or_x)
                }
                UnaryOp::Exp | UnaryOp::Log | UnaryOp::Tanh | UnaryOp::Sigmoid | UnaryOp::Erf
                    if ty == types::F32 =>
                {
                    // The same approximation as the vector lanes, on lane 0.
                    let v = self.b.ins().splat(types::F32X4, x);
                    let r = self.vunary(f, v);
                    self.b.ins().extractlane(r, 0)
                }
                UnaryOp::Exp
                | UnaryOp::Log
                | UnaryOp::Tanh
                | UnaryOp::Sigmoid
                | UnaryOp::Erf
                | UnaryOp::Rsqrt
                | UnaryOp::Sin
                | UnaryOp::Cos
                | UnaryOp::Tan
                | UnaryOp::Asin
                | UnaryOp::Acos
                | UnaryOp::Atan
                | UnaryOp::Sinh
                | UnaryOp::Cosh
                | UnaryOp::Asinh
                | UnaryOp::Acosh
                | UnaryOp::Atanh
                | UnaryOp::Not => {
                    let c = self.b.ins().iconst(types::I32, i64::from(f.code()));
                    self.call(
                        if ty == types::F32 {
                            "kiln_unary_f32"
                        } else {
                            "kiln_unary_f64"
                        },
                        &[c, x],
                    )
                }
            };
        }
        let zero = self.b.ins().iconst(ty, 0);
        match f {
            UnaryOp::Not if dt == DType::Bool => self.b.ins().bxor_imm_s(x, 1),
            UnaryOp::Not => self.b.ins().bnot(x),
            UnaryOp::Neg => self.b.ins().ineg(x),
            UnaryOp::Abs if dt.is_unsigned() => x,
            UnaryOp::Abs => {
                let neg = self.b.ins().ineg(x);
                let lt = self.b.ins().icmp(IntCC::SignedLessThan, x, zero);
                self.b.ins().select(lt, neg, x)
            }
            UnaryOp::Sign => {
                let one = self.b.ins().iconst(ty, 1);
                if dt.is_unsigned() {
                    let nz = self.b.ins().icmp(IntCC::NotEqual, x, zero);
                    return self.b.ins().select(nz, one, zero);
                }
                let m1 = self
                    .b
                    .ins()
                    .iconst(ty, (u64::MAX >> (64 - ty.bits())) as i64);
                let gt = self.b.ins().icmp(IntCC::SignedGreaterThan, x, zero);
                let lt = self.b.ins().icmp(IntCC::SignedLessThan, x, zero);
                let neg_or_zero = self.b.ins().select(lt, m1, zero);
                self.b.ins().select(gt, one, neg_or_zero)
            }
            UnaryOp::Exp
            | UnaryOp::Log
            | UnaryOp::Sqrt
            | UnaryOp::Rsqrt
            | UnaryOp::Recip
            | UnaryOp::Sin
            | UnaryOp::Cos
            | UnaryOp::Tan
            | UnaryOp::Asin
            | UnaryOp::Acos
            | UnaryOp::Atan
            | UnaryOp::Sinh
            | UnaryOp::Cosh
            | UnaryOp::Asinh
            | UnaryOp::Acosh
            | UnaryOp::Atanh
            | UnaryOp::Tanh
            | UnaryOp::Sigmoid
            | UnaryOp::Erf
            | UnaryOp::Floor
            | UnaryOp::Ceil
            | UnaryOp::Round => {
                unreachable!("{f:?} takes floats only (infer_unary refuses it on {dt})")
            }
        }
    }

    /// Binary op `f` on operands of dtype `dt`.
    fn binary(&mut self, f: BinaryOp, a: Value, b: Value, dt: DType) -> Value {
        let ty = self.b.func.dfg.value_type(a);
        if f.is_comparison() {
            if ty.is_float() {
                let cc = match f {
                    BinaryOp::Eq => FloatCC::Equal,
                    BinaryOp::Ne => FloatCC::NotEqual,
                    BinaryOp::Lt => FloatCC::LessThan,
                    BinaryOp::Le => FloatCC::LessThanOrEqual,
                    BinaryOp::Gt => FloatCC::GreaterThan,
                    _ => FloatCC::GreaterThanOrEqual,
                };
                return self.b.ins().fcmp(cc, a, b);
            }
            // Bools and unsigned integers compare as unsigned (false < true).
            let signed = dt.is_signed_int();
            let cc = match (f, signed) {
                (BinaryOp::Eq, _) => IntCC::Equal,
                (BinaryOp::Ne, _) => IntCC::NotEqual,
                (BinaryOp::Lt, true) => IntCC::SignedLessThan,
                (BinaryOp::Le, true) => IntCC::SignedLessThanOrEqual,
                (BinaryOp::Gt, true) => IntCC::SignedGreaterThan,
                (BinaryOp::Ge, true) => IntCC::SignedGreaterThanOrEqual,
                (BinaryOp::Lt, false) => IntCC::UnsignedLessThan,
                (BinaryOp::Le, false) => IntCC::UnsignedLessThanOrEqual,
                (BinaryOp::Gt, false) => IntCC::UnsignedGreaterThan,
                _ => IntCC::UnsignedGreaterThanOrEqual,
            };
            return self.b.ins().icmp(cc, a, b);
        }
        if ty.is_float() {
            return match f {
                BinaryOp::Add => self.b.ins().fadd(a, b),
                BinaryOp::Sub => self.b.ins().fsub(a, b),
                BinaryOp::Mul => self.b.ins().fmul(a, b),
                BinaryOp::Div => self.b.ins().fdiv(a, b),
                BinaryOp::Max => self.b.ins().fmax(a, b),
                BinaryOp::Min => self.b.ins().fmin(a, b),
                // IEEE fmod, exact: no instruction computes it.
                BinaryOp::Rem => self.call(
                    if ty == types::F32 {
                        "kiln_rem_f32"
                    } else {
                        "kiln_rem_f64"
                    },
                    &[a, b],
                ),
                _ => self.call(
                    if ty == types::F32 {
                        "kiln_pow_f32"
                    } else {
                        "kiln_pow_f64"
                    },
                    &[a, b],
                ),
            };
        }
        let unsigned = dt.is_unsigned();
        match f {
            BinaryOp::Add => self.b.ins().iadd(a, b),
            BinaryOp::Sub => self.b.ins().isub(a, b),
            BinaryOp::Mul => self.b.ins().imul(a, b),
            BinaryOp::Max if unsigned => self.b.ins().umax(a, b),
            BinaryOp::Min if unsigned => self.b.ins().umin(a, b),
            BinaryOp::Max => self.b.ins().smax(a, b),
            BinaryOp::Min => self.b.ins().smin(a, b),
            BinaryOp::And => self.b.ins().band(a, b),
            BinaryOp::Or => self.b.ins().bor(a, b),
            BinaryOp::Xor => self.b.ins().bxor(a, b),
            BinaryOp::Div if unsigned => {
                // x / 0 = 0, without trapping.
                let zero = self.b.ins().iconst(ty, 0);
                let one = self.b.ins().iconst(ty, 1);
                let is0 = self.b.ins().icmp(IntCC::Equal, b, zero);
                let safe = self.b.ins().select(is0, one, b);
                let q = self.b.ins().udiv(a, safe);
                self.b.ins().select(is0, zero, q)
            }
            BinaryOp::Div => {
                // x / 0 = 0 and MIN / -1 = MIN (wrapping), without trapping.
                let zero = self.b.ins().iconst(ty, 0);
                let one = self.b.ins().iconst(ty, 1);
                let m1 = self
                    .b
                    .ins()
                    .iconst(ty, (u64::MAX >> (64 - ty.bits())) as i64);
                let is0 = self.b.ins().icmp(IntCC::Equal, b, zero);
                let is_m1 = self.b.ins().icmp(IntCC::Equal, b, m1);
                let special = self.b.ins().bor(is0, is_m1);
                let safe = self.b.ins().select(special, one, b);
                let q = self.b.ins().sdiv(a, safe);
                let neg = self.b.ins().ineg(a);
                let q = self.b.ins().select(is_m1, neg, q);
                self.b.ins().select(is0, zero, q)
            }
            BinaryOp::Rem => {
                // a - trunc(a / b) * b with Div's x / 0 = 0 and wrapping
                // MIN / -1: x rem 0 = x, MIN rem -1 = 0.
                let q = self.binary(BinaryOp::Div, a, b, dt);
                let qb = self.b.ins().imul(q, b);
                self.b.ins().isub(a, qb)
            }
            _ if dt == DType::U64 => self.call("kiln_pow_u64", &[a, b]),
            _ if ty == types::I32 && dt == DType::I32 => self.call("kiln_pow_i32", &[a, b]),
            _ => {
                // Powers are consistent modulo 2^width: the i64 power of
                // the extended operands, truncated, is the narrow power.
                let (wa, wb) = (self.widen_int(dt, a), self.widen_int(dt, b));
                let p = self.call("kiln_pow_i64", &[wa, wb]);
                if ty == types::I64 {
                    p
                } else {
                    self.b.ins().ireduce(ty, p)
                }
            }
        }
    }

    /// Cast of `x` (of dtype `from`) to `to`, with Rust `as` semantics
    /// (float to integer saturates, NaN gives 0; integers wrap or extend).
    fn cast(&mut self, to: DType, x: Value, from: DType) -> Value {
        if to.is_half() {
            // From f32 or f64 only (`widen_half` routes the rest through
            // f64): one rounding, kept in an f32 register. A half value
            // (already in f32) rounds to itself.
            let wide = if from == DType::F64 {
                x
            } else {
                self.b.ins().fpromote(types::F64, x)
            };
            let bf = self.b.ins().iconst(types::I32, (to == DType::BF16) as i64);
            return self.call("kiln_round_half_f64", &[wide, bf]);
        }
        let t = cl(to);
        // A half value is an f32 in its register.
        let from = if from.is_half() { DType::F32 } else { from };
        if from == to {
            return x;
        }
        let from_float = from.is_float();
        match to {
            DType::F32 | DType::F64 => {
                if from_float {
                    return if t == types::F64 {
                        self.b.ins().fpromote(t, x)
                    } else {
                        self.b.ins().fdemote(t, x)
                    };
                }
                if from == DType::U64 {
                    return self.b.ins().fcvt_from_uint(t, x);
                }
                // Bools and the other integers are exact in i64.
                let w = if from == DType::Bool {
                    self.b.ins().uextend(types::I64, x)
                } else {
                    self.widen_int(from, x)
                };
                self.b.ins().fcvt_from_sint(t, w)
            }
            DType::Bool => {
                if from_float {
                    let z = self.zero(from);
                    self.b.ins().fcmp(FloatCC::NotEqual, x, z)
                } else {
                    let z = self.zero(from);
                    self.b.ins().icmp(IntCC::NotEqual, x, z)
                }
            }
            _ if from_float => match to {
                DType::I32 | DType::I64 => self.b.ins().fcvt_to_sint_sat(t, x),
                DType::U32 | DType::U64 => self.b.ins().fcvt_to_uint_sat(t, x),
                _ => {
                    // Narrow targets: saturate in i32, clamp, truncate.
                    let (lo, hi) = match to {
                        DType::I8 => (i8::MIN as i64, i8::MAX as i64),
                        DType::U8 => (0, u8::MAX as i64),
                        DType::I16 => (i16::MIN as i64, i16::MAX as i64),
                        _ => (0, u16::MAX as i64),
                    };
                    let v = self.b.ins().fcvt_to_sint_sat(types::I32, x);
                    let lo = self.b.ins().iconst(types::I32, lo as u32 as i64);
                    let hi = self.b.ins().iconst(types::I32, hi);
                    let v = self.b.ins().smax(v, lo);
                    let v = self.b.ins().smin(v, hi);
                    self.b.ins().ireduce(t, v)
                }
            },
            _ => {
                // Integer (or bool) to integer: truncate, or extend by the
                // source's signedness (bools are 0 or 1).
                let ft = cl(from);
                if t.bits() < ft.bits() {
                    self.b.ins().ireduce(t, x)
                } else if t.bits() == ft.bits() {
                    x
                } else if from.is_signed_int() {
                    self.b.ins().sextend(t, x)
                } else {
                    self.b.ins().uextend(t, x)
                }
            }
        }
    }

    /// Emits an element program; returns its result.
    pub(super) fn program(
        &mut self,
        p: &ElementProgram,
        inputs: &[Access],
        idx: &[Value],
        acc: Option<(Value, DType)>,
    ) -> Result<Value> {
        let mut vals: Vec<Value> = Vec::with_capacity(p.instrs.len());
        let dts = instr_dtypes(self.prog, inputs, p, acc.map(|a| a.1));
        for ins in &p.instrs {
            let v = match ins {
                Instr::Load(a) => self.load(&inputs[*a], idx),
                Instr::Const(c) => self.constant(*c),
                Instr::Unary(f, a) => self.unary(*f, vals[*a], dts[*a]),
                Instr::Binary(f, a, b) => self.binary(*f, vals[*a], vals[*b], dts[*a]),
                Instr::Select(c, a, b) => self.b.ins().select(vals[*c], vals[*a], vals[*b]),
                Instr::Cast(to, a) => self.cast(*to, vals[*a], dts[*a]),
                Instr::Acc => {
                    acc.ok_or_else(|| self.err("Acc outside an epilogue".into()))?
                        .0
                }
                Instr::InBounds(conds) => self.conds(conds, idx),
                Instr::IndexValue(e, dtype) => {
                    let i = self.index(e, idx);
                    self.cast_index(i, *dtype)
                }
                Instr::Random {
                    normal,
                    seed,
                    a,
                    b,
                    dtype,
                    index,
                } => {
                    let i = self.index(index, idx);
                    let n = self.b.ins().iconst(types::I32, *normal as i64);
                    let s = self.b.ins().iconst(types::I64, *seed as i64);
                    let (fa, fb) = (self.b.ins().f64const(*a), self.b.ins().f64const(*b));
                    let name = if *dtype == DType::F32 {
                        "kiln_random_f32"
                    } else {
                        "kiln_random_f64"
                    };
                    self.call(name, &[n, s, fa, fb, i])
                }
            };
            vals.push(v);
        }
        Ok(vals[p.result])
    }

    fn cast_index(&mut self, i: Value, dtype: DType) -> Value {
        match dtype {
            DType::Bool => self.b.ins().icmp_imm_s(IntCC::NotEqual, i, 0),
            d if d.is_float() => self.b.ins().fcvt_from_sint(cl(d), i),
            d if cl(d) == types::I64 => i,
            d => self.b.ins().ireduce(cl(d), i),
        }
    }

    /// Emits loops over `dims` (pairs of loop variable and extent, outermost
    /// first), calling `body` in the innermost block; continues after the nest.
    pub(super) fn loops(
        &mut self,
        dims: &[(usize, usize)],
        body: &mut dyn FnMut(&mut Self) -> Result<()>,
    ) -> Result<()> {
        let Some((&(var, extent), rest)) = dims.split_first() else {
            return body(self);
        };
        let v = self.loop_vars[var];
        // Loop variable 0 runs over the caller's `lo..hi` (the whole extent
        // unless the runtime splits the kernel across threads).
        let start = if var == 0 {
            self.range.0
        } else {
            self.iconst(0)
        };
        self.b.def_var(v, start);
        let (header, inner, exit) = (
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
        );
        self.b.ins().jump(header, &[]);
        self.b.switch_to_block(header);
        let i = self.b.use_var(v);
        let c = if var == 0 {
            self.b.ins().icmp(IntCC::SignedLessThan, i, self.range.1)
        } else {
            self.b
                .ins()
                .icmp_imm_s(IntCC::SignedLessThan, i, extent as i64)
        };
        self.b.ins().brif(c, inner, &[], exit, &[]);
        self.b.switch_to_block(inner);
        self.loops(rest, body)?;
        let i = self.b.use_var(v);
        let next = self.b.ins().iadd_imm_s(i, 1);
        self.b.def_var(v, next);
        self.b.ins().jump(header, &[]);
        self.b.switch_to_block(exit);
        Ok(())
    }

    pub(super) fn idx(&mut self) -> Vec<Value> {
        let vars = self.loop_vars.clone();
        vars.into_iter().map(|v| self.b.use_var(v)).collect()
    }

    pub(super) fn linear(&mut self, idx: &[Value], strides: &[usize]) -> Value {
        let mut acc = self.iconst(0);
        for (&i, &s) in idx.iter().zip(strides) {
            let t = self.b.ins().imul_imm_s(i, s as i64);
            acc = self.b.ins().iadd(acc, t);
        }
        acc
    }

    pub(super) fn store(&mut self, buf: BufferId, offset: Value, v: Value) {
        let addr = self.address(buf, offset);
        let dtype = self.prog.buffer(buf).dtype;
        if dtype.is_half() {
            let bf = self
                .b
                .ins()
                .iconst(types::I32, (dtype == DType::BF16) as i64);
            let bits = self.call("kiln_f32_to_half", &[v, bf]);
            self.b.ins().istore16(flags(), bits, addr, 0);
            return;
        }
        self.b.ins().store(flags(), v, addr, 0);
    }

    fn preload_bases(&mut self, inputs: &[Access], extra: &[BufferId]) {
        for a in inputs {
            self.base(a.buffer);
        }
        for &b in extra {
            self.base(b);
        }
    }

    fn body(&mut self, body: &Body<'_>) -> Result<()> {
        match *body {
            Body::Elementwise {
                out,
                shape,
                inputs,
                program,
                acc_from_out,
            } => {
                self.preload_bases(inputs, &[out]);
                self.loop_vars = (0..shape.len())
                    .map(|_| self.b.declare_var(types::I64))
                    .collect();
                let strides = kiln_graph::shape::strides(shape);
                let dims: Vec<(usize, usize)> = shape.iter().copied().enumerate().collect();

                if !self.checked
                    && super::vector::vectorizable(
                        self.prog,
                        shape,
                        inputs,
                        program,
                        out,
                        acc_from_out,
                    )
                {
                    let last = shape.len() - 1;
                    return self.loops(&dims[..last], &mut |e| {
                        e.vector_row(
                            out,
                            shape,
                            &strides,
                            inputs,
                            program,
                            if acc_from_out {
                                RowAcc::FromOut
                            } else {
                                RowAcc::None
                            },
                        )
                    });
                }
                self.loops(&dims, &mut |e| {
                    let idx = e.idx();
                    let lin = e.linear(&idx, &strides);
                    let acc = if acc_from_out {
                        let addr = e.address(out, lin);
                        Some((e.load_elem(out, addr), e.prog.buffer(out).dtype))
                    } else {
                        None
                    };
                    let v = e.program(program, inputs, &idx, acc)?;
                    e.store(out, lin, v);
                    Ok(())
                })
            }
            Body::Reduce {
                out,
                shape,
                axes,
                kind,
                inputs,
                body,
                map,
            } => {
                let extra: Vec<BufferId> = out.iter().copied().chain(map.map(|m| m.0)).collect();
                self.preload_bases(inputs, &extra);
                self.loop_vars = (0..shape.len())
                    .map(|_| self.b.declare_var(types::I64))
                    .collect();
                let kept: Vec<(usize, usize)> = shape
                    .iter()
                    .copied()
                    .enumerate()
                    .filter(|(d, _)| !axes.contains(d))
                    .collect();
                let reduced: Vec<(usize, usize)> = shape
                    .iter()
                    .copied()
                    .enumerate()
                    .filter(|(d, _)| axes.contains(d))
                    .collect();
                let full_strides = kiln_graph::shape::strides(shape);
                let rshape: Vec<usize> = shape
                    .iter()
                    .enumerate()
                    .map(|(d, &n)| if axes.contains(&d) { 1 } else { n })
                    .collect();
                let rstrides: Vec<usize> = kiln_graph::shape::strides(&rshape)
                    .iter()
                    .enumerate()
                    .map(|(d, &s)| if axes.contains(&d) { 0 } else { s })
                    .collect();
                let in_dtype = body_dtype(self.prog, inputs, body);
                let out_dtype = match kind {
                    ReduceKind::Arg(_) => DType::I64,
                    ReduceKind::Value(_) => in_dtype,
                };
                // f32 rows whose last dim is reduced run in lanes, accumulating
                // in f32; otherwise floats accumulate in f64 like the reference.
                let lanes = !self.checked
                    && in_dtype == DType::F32
                    && matches!(kind, ReduceKind::Value(_))
                    && super::vector::reduce_vectorizable(
                        self.prog, shape, axes, inputs, body, map,
                    );
                // A map that recomputes the reduced values (softmax's exp)
                // reads them back instead, where both run as AVX-512 rows.
                let reuse = if lanes {
                    self.map_reuse(shape, inputs, body, map, &full_strides)
                } else {
                    None
                };
                let acc_ty = match (kind, in_dtype.is_float()) {
                    (ReduceKind::Value(_), true) if !lanes => types::F64,
                    _ => cl(in_dtype),
                };
                let acc_var = self.b.declare_var(acc_ty);
                let idx_var = self.b.declare_var(types::I64);
                let started = self.b.declare_var(types::I8);
                self.loops(&kept, &mut |e| {
                    // Initialise the accumulator for this output element.
                    let init = match kind {
                        ReduceKind::Value(f) => reduce_init(e, f, acc_ty, in_dtype),
                        ReduceKind::Arg(_) => e.zero(in_dtype),
                    };
                    e.b.def_var(acc_var, init);
                    let z = e.iconst(0);
                    e.b.def_var(idx_var, z);
                    let f = e.b.ins().iconst(types::I8, 0);
                    e.b.def_var(started, f);
                    if let (true, ReduceKind::Value(f)) = (lanes, kind) {
                        e.loops(&reduced[..reduced.len() - 1], &mut |e| {
                            let a = e.b.use_var(acc_var);
                            let keep = reuse
                                .as_ref()
                                .map(|_| (map.expect("reuse has a map").0, &full_strides[..]));
                            let r = e.vector_reduce(f, shape, inputs, body, a, keep)?;
                            e.b.def_var(acc_var, r);
                            Ok(())
                        })?;
                    } else {
                        e.loops(&reduced, &mut |e| {
                            let idx = e.idx();
                            let v = e.program(body, inputs, &idx, None)?;
                            let acc = e.b.use_var(acc_var);
                            match kind {
                                ReduceKind::Value(f) => {
                                    let v = if acc_ty == types::F64 && in_dtype == DType::F32 {
                                        e.b.ins().fpromote(types::F64, v)
                                    } else {
                                        v
                                    };
                                    let next = reduce_step(e, f, acc, v, acc_ty, in_dtype);
                                    e.b.def_var(acc_var, next);
                                }
                                ReduceKind::Arg(f) => {
                                    // First index of the extreme; a NaN wins and stays.
                                    let k = idx[reduced[0].0];
                                    let st = e.b.use_var(started);
                                    let (acc_nan, v_nan) = if in_dtype.is_float() {
                                        (
                                            e.b.ins().fcmp(FloatCC::Unordered, acc, acc),
                                            e.b.ins().fcmp(FloatCC::Unordered, v, v),
                                        )
                                    } else {
                                        let f0 = e.b.ins().iconst(types::I8, 0);
                                        (f0, f0)
                                    };
                                    let better = match (f, in_dtype.is_float()) {
                                        (ArgOp::ArgMax, true) => {
                                            e.b.ins().fcmp(FloatCC::GreaterThan, v, acc)
                                        }
                                        (ArgOp::ArgMin, true) => {
                                            e.b.ins().fcmp(FloatCC::LessThan, v, acc)
                                        }
                                        (ArgOp::ArgMax, false) => {
                                            let cc = if in_dtype.is_unsigned() {
                                                IntCC::UnsignedGreaterThan
                                            } else {
                                                IntCC::SignedGreaterThan
                                            };
                                            e.b.ins().icmp(cc, v, acc)
                                        }
                                        (ArgOp::ArgMin, false) => {
                                            let cc = if in_dtype.is_unsigned() {
                                                IntCC::UnsignedLessThan
                                            } else {
                                                IntCC::SignedLessThan
                                            };
                                            e.b.ins().icmp(cc, v, acc)
                                        }
                                    };
                                    let better = e.b.ins().bor(better, v_nan);
                                    let not_nan = e.b.ins().bxor_imm_s(acc_nan, 1);
                                    let better = e.b.ins().band(better, not_nan);
                                    let first = e.b.ins().bxor_imm_s(st, 1);
                                    let upd = e.b.ins().bor(first, better);
                                    let nacc = e.b.ins().select(upd, v, acc);
                                    let cur = e.b.use_var(idx_var);
                                    let nidx = e.b.ins().select(upd, k, cur);
                                    e.b.def_var(acc_var, nacc);
                                    e.b.def_var(idx_var, nidx);
                                    let one = e.b.ins().iconst(types::I8, 1);
                                    e.b.def_var(started, one);
                                }
                            }
                            Ok(())
                        })?;
                    }
                    let result = match kind {
                        ReduceKind::Arg(_) => e.b.use_var(idx_var),
                        ReduceKind::Value(_) => {
                            let a = e.b.use_var(acc_var);
                            if acc_ty == types::F64 && out_dtype == DType::F32 {
                                e.b.ins().fdemote(types::F32, a)
                            } else {
                                a
                            }
                        }
                    };
                    if let Some(o) = out {
                        let idx = e.idx();
                        let lin = e.linear(&idx, &rstrides);
                        e.store(o, lin, result);
                    }
                    if let (true, Some((mo, mp))) = (lanes, map) {
                        let last = reduced.len() - 1;
                        // The map reads back the values the reduction kept.
                        let (ins, prog) = match &reuse {
                            Some((i, p)) => (&i[..], p),
                            None => (inputs, mp),
                        };
                        e.loops(&reduced[..last], &mut |e| {
                            e.vector_row(mo, shape, &full_strides, ins, prog, RowAcc::Value(result))
                        })?;
                    } else if let Some((mo, mp)) = map {
                        e.loops(&reduced, &mut |e| {
                            let idx = e.idx();
                            let v = e.program(mp, inputs, &idx, Some((result, out_dtype)))?;
                            let lin = e.linear(&idx, &full_strides);
                            e.store(mo, lin, v);
                            Ok(())
                        })?;
                    }
                    Ok(())
                })
            }
        }
    }
}

fn body_dtype(prog: &KernelProgram, inputs: &[Access], p: &ElementProgram) -> DType {
    instr_dtypes(prog, inputs, p, None)[p.result]
}

/// The dtype of each instruction's value.
/// `acc` is the dtype of `Acc` (the accumulator of an epilogue), when known.
fn instr_dtypes(
    prog: &KernelProgram,
    inputs: &[Access],
    p: &ElementProgram,
    acc: Option<DType>,
) -> Vec<DType> {
    let mut dts: Vec<DType> = Vec::with_capacity(p.instrs.len());
    for ins in &p.instrs {
        let d = match ins {
            Instr::Load(a) => prog.buffer(inputs[*a].buffer).dtype,
            Instr::Const(c) => c.dtype(),
            Instr::Unary(_, a) => dts[*a],
            Instr::Binary(f, a, _) => {
                if f.is_comparison() {
                    DType::Bool
                } else {
                    dts[*a]
                }
            }
            Instr::Select(_, a, _) => dts[*a],
            Instr::Cast(t, _) => *t,
            Instr::Acc => acc.unwrap_or(DType::F32),
            Instr::InBounds(_) => DType::Bool,
            Instr::IndexValue(_, t) => *t,
            Instr::Random { dtype, .. } => *dtype,
        };
        dts.push(d);
    }
    dts
}

fn reduce_init(e: &mut Emitter<'_, '_>, f: ReduceOp, ty: Type, dtype: DType) -> Value {
    if ty.is_float() {
        let v = match f {
            ReduceOp::Sum => 0.0,
            ReduceOp::Prod => 1.0,
            ReduceOp::Max => f64::NEG_INFINITY,
            ReduceOp::Min => f64::INFINITY,
        };
        return if ty == types::F32 {
            e.b.ins().f32const(v as f32)
        } else {
            e.b.ins().f64const(v)
        };
    }
    // The extremes of the type, as zero-extended bit patterns.
    let bits = ty.bits();
    let mask = u64::MAX >> (64 - bits);
    let (min, max) = if dtype.is_unsigned() {
        (0, mask)
    } else {
        (1u64 << (bits - 1), mask >> 1)
    };
    let v = match f {
        ReduceOp::Sum => 0,
        ReduceOp::Prod => 1,
        ReduceOp::Max => min,
        ReduceOp::Min => max,
    };
    e.b.ins().iconst(ty, v as i64)
}

fn reduce_step(
    e: &mut Emitter<'_, '_>,
    f: ReduceOp,
    acc: Value,
    v: Value,
    ty: Type,
    dtype: DType,
) -> Value {
    if ty.is_float() {
        return match f {
            ReduceOp::Sum => e.b.ins().fadd(acc, v),
            ReduceOp::Prod => e.b.ins().fmul(acc, v),
            ReduceOp::Max => e.b.ins().fmax(acc, v),
            ReduceOp::Min => e.b.ins().fmin(acc, v),
        };
    }
    match f {
        ReduceOp::Sum => e.b.ins().iadd(acc, v),
        ReduceOp::Prod => e.b.ins().imul(acc, v),
        ReduceOp::Max if dtype.is_unsigned() => e.b.ins().umax(acc, v),
        ReduceOp::Min if dtype.is_unsigned() => e.b.ins().umin(acc, v),
        ReduceOp::Max => e.b.ins().smax(acc, v),
        ReduceOp::Min => e.b.ins().smin(acc, v),
    }
}
