//! Ahead-of-time objects from the same `Jit`: an object module for a named
//! target (`Jit::object`), the model's entry points `{prefix}_run` (static
//! arena, calls serialized), `{prefix}_run_r` (the caller's arena) and
//! `{prefix}_arena_bytes` (`Jit::entry`), and the object's bytes.

use std::collections::HashMap;

use cranelift_codegen::ir::{types, AbiParam, Function, InstBuilder, Type, UserFuncName};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};

use kiln_optimizer::kernel::{BufferId, KernelProgram, Storage};

use crate::error::{Error, Result};

use super::jit::{flag_builder, flags, host_has_fma, Jit, Target};
use super::wide::Isa;

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
        // Long rows call the run-time library's row code (their row
        // programs as read-only data) in the target's widest ISA: AVX-512
        // on v4, AVX2 on v3, the host's own on the host.
        let wide = match target {
            Target::X86_64V4 => Some(Isa::Avx512),
            Target::X86_64V3 => Some(Isa::Avx2),
            Target::Host => super::wide::isa(true),
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
