//! Kernel bodies in Cranelift IR (`Emitter`): loop nests over a kernel's
//! loop shape in row-major order, index expressions as integer arithmetic,
//! masked and bounds-checked loads and stores, element programs,
//! reductions and row maps. One element's arithmetic (unary and binary
//! functions, casts) is in `scalar_ops.rs`; the f32x4 path and the calls
//! of the AVX-512 / AVX2 row code in `vector.rs` and `wide.rs`.

use std::collections::HashMap;

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, Function, InstBuilder, Type, Value};
use cranelift_frontend::{FunctionBuilder, Variable};

use kiln_graph::{ArgOp, DType, ReduceOp, Scalar};
use kiln_optimizer::index::{Atom, Index};
use kiln_optimizer::kernel::{
    Access, BufferId, Cond, ElementProgram, Instr, KernelProgram, ReduceKind,
};

use super::vector::RowAcc;
use crate::error::{Error, Result};

use super::jit::{cl, flags, Body};

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
    pub(super) table: Value,
    pub(super) ptr: Type,
    pub(super) bases: HashMap<BufferId, Value>,
    pub(super) funcs: HashMap<&'static str, cranelift_codegen::ir::FuncRef>,
    pub(super) loop_vars: Vec<Variable>,
    /// The `lo..hi` parameters: the range of loop variable 0 when it is split.
    pub(super) range: (Value, Value),
    /// The host has fused multiply-add.
    pub(super) fma: bool,
    /// Long f32 rows may call the row code of this ISA.
    pub(super) wide: Option<super::wide::Isa>,
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

    pub(super) fn zero(&mut self, dtype: DType) -> Value {
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

    /// One element of an elementwise kernel at the current loop indices.
    fn element(
        &mut self,
        out: BufferId,
        strides: &[usize],
        inputs: &[Access],
        program: &ElementProgram,
        acc_from_out: bool,
    ) -> Result<()> {
        let idx = self.idx();
        let lin = self.linear(&idx, strides);
        let acc = if acc_from_out {
            let addr = self.address(out, lin);
            Some((self.load_elem(out, addr), self.prog.buffer(out).dtype))
        } else {
            None
        };
        let v = self.program(program, inputs, &idx, acc)?;
        self.store(out, lin, v);
        Ok(())
    }

    /// One row (the innermost loop) of an elementwise kernel, inside its
    /// outer loops, split at selects whose bounds tests are the same along
    /// the row (`ElementProgram::split_row_select`): the tests are
    /// evaluated once, and each side runs as a row of its own, vectorized
    /// where it can be. On the side where the tests hold, reads masked by
    /// exactly those tests are unmasked (the tests hold for the whole row).
    fn split_row(
        &mut self,
        out: BufferId,
        shape: &[usize],
        strides: &[usize],
        inputs: &[Access],
        program: &ElementProgram,
        acc_from_out: bool,
    ) -> Result<()> {
        let last = shape.len() - 1;
        let split = (last > 0).then(|| program.split_row_select(last)).flatten();
        if let Some((conds, holds, fails)) = split {
            // The row variable is not defined yet; the tests do not read it.
            let vars = self.loop_vars.clone();
            let mut idx: Vec<Value> = vars[..last].iter().map(|&v| self.b.use_var(v)).collect();
            idx.push(self.iconst(0));
            let c = self.conds(&conds, &idx);
            let (yes, no, done) = (
                self.b.create_block(),
                self.b.create_block(),
                self.b.create_block(),
            );
            self.b.ins().brif(c, yes, &[], no, &[]);
            self.b.switch_to_block(yes);
            let unmasked: Vec<Access> = inputs
                .iter()
                .map(|a| Access {
                    mask: a
                        .mask
                        .iter()
                        .filter(|m| !conds.contains(m))
                        .cloned()
                        .collect(),
                    ..a.clone()
                })
                .collect();
            self.split_row(out, shape, strides, &unmasked, &holds, acc_from_out)?;
            self.b.ins().jump(done, &[]);
            self.b.switch_to_block(no);
            self.split_row(out, shape, strides, inputs, &fails, acc_from_out)?;
            self.b.ins().jump(done, &[]);
            self.b.switch_to_block(done);
            return Ok(());
        }
        if super::vector::vectorizable(self.prog, shape, inputs, program, out, acc_from_out) {
            let acc = if acc_from_out {
                RowAcc::FromOut
            } else {
                RowAcc::None
            };
            return self.vector_row(out, shape, strides, inputs, program, acc);
        }
        self.loops(&[(last, shape[last])], &mut |e| {
            e.element(out, strides, inputs, program, acc_from_out)
        })
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

    pub(super) fn body(&mut self, body: &Body<'_>) -> Result<()> {
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

                // Row by row: selects split, rows vectorized where they can be.
                if !self.checked && !shape.is_empty() {
                    if self.segmented_rows(out, shape, inputs, program, acc_from_out)? {
                        return Ok(());
                    }
                    let last = shape.len() - 1;
                    return self.loops(&dims[..last], &mut |e| {
                        e.split_row(out, shape, &strides, inputs, program, acc_from_out)
                    });
                }
                self.loops(&dims, &mut |e| {
                    e.element(out, &strides, inputs, program, acc_from_out)
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
                // reads them back instead, where both run in the row code.
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
