//! A plain-loop executor of the kernel program: the check of fusion,
//! lowering and memory planning before any code generation exists.
//!
//! Every temporary lives at its planned offset in one byte arena, so an
//! overlap the planner should have prevented corrupts the result and the
//! differential tests catch it. Element programs run instruction by
//! instruction with the ops' scalar meaning from `kiln-graph`; reductions,
//! matmuls and opaque ops evaluate their gathered operands with the ops'
//! reference meaning, so this executor agrees with the interpreter by
//! construction wherever the lowering is right.

use std::collections::HashMap;

use kiln_graph::ops::elementwise::{binary_scalar, cast_scalar, unary_scalar};
use kiln_graph::ops::random::{normal_element, uniform_element};
use kiln_graph::{Array, DType, Op, Scalar};

use crate::error::{Error, Result};
use crate::kernel::{
    Access, BufferId, ElementProgram, Epilogue, Instr, Kernel, KernelProgram, Operand, ReduceKind,
    Storage,
};

struct Memory<'p> {
    prog: &'p KernelProgram,
    arena: Vec<u8>,
    own: HashMap<BufferId, Vec<u8>>,
}

fn read_scalar(bytes: &[u8], dtype: DType, i: usize) -> Option<Scalar> {
    let w = dtype.size_bytes();
    let b = bytes.get(i * w..i * w + w)?;
    Some(match dtype {
        DType::F32 => Scalar::F32(f32::from_le_bytes(b.try_into().ok()?)),
        DType::F64 => Scalar::F64(f64::from_le_bytes(b.try_into().ok()?)),
        DType::I32 => Scalar::I32(i32::from_le_bytes(b.try_into().ok()?)),
        DType::I64 => Scalar::I64(i64::from_le_bytes(b.try_into().ok()?)),
        DType::I8 => Scalar::I8(i8::from_le_bytes(b.try_into().ok()?)),
        DType::I16 => Scalar::I16(i16::from_le_bytes(b.try_into().ok()?)),
        DType::U8 => Scalar::U8(u8::from_le_bytes(b.try_into().ok()?)),
        DType::U16 => Scalar::U16(u16::from_le_bytes(b.try_into().ok()?)),
        DType::U32 => Scalar::U32(u32::from_le_bytes(b.try_into().ok()?)),
        DType::U64 => Scalar::U64(u64::from_le_bytes(b.try_into().ok()?)),
        DType::Bool => Scalar::Bool(b[0] != 0),
        DType::F16 => Scalar::F16(half::f16::from_le_bytes(b.try_into().ok()?)),
        DType::BF16 => Scalar::BF16(half::bf16::from_le_bytes(b.try_into().ok()?)),
    })
}

fn scalar_bytes(s: Scalar) -> Vec<u8> {
    match s {
        Scalar::F32(v) => v.to_le_bytes().to_vec(),
        Scalar::F64(v) => v.to_le_bytes().to_vec(),
        Scalar::I32(v) => v.to_le_bytes().to_vec(),
        Scalar::I64(v) => v.to_le_bytes().to_vec(),
        Scalar::I8(v) => v.to_le_bytes().to_vec(),
        Scalar::I16(v) => v.to_le_bytes().to_vec(),
        Scalar::U8(v) => v.to_le_bytes().to_vec(),
        Scalar::U16(v) => v.to_le_bytes().to_vec(),
        Scalar::U32(v) => v.to_le_bytes().to_vec(),
        Scalar::U64(v) => v.to_le_bytes().to_vec(),
        Scalar::Bool(v) => vec![v as u8],
        Scalar::F16(v) => v.to_le_bytes().to_vec(),
        Scalar::BF16(v) => v.to_le_bytes().to_vec(),
    }
}

fn zero(dtype: DType) -> Scalar {
    Scalar::from_f64(dtype, 0.0)
}

impl Memory<'_> {
    fn region(&self, b: BufferId) -> (&[u8], usize) {
        match self.prog.buffer(b).storage {
            Storage::Arena { offset } => (&self.arena, offset),
            _ => (&self.own[&b], 0),
        }
    }

    fn read(&self, b: BufferId, i: usize) -> Result<Scalar> {
        let buf = self.prog.buffer(b);
        let (bytes, off) = self.region(b);
        if i >= buf.len() {
            return Err(Error::Exec {
                kernel: usize::MAX,
                reason: format!("read of {b} at {i} is outside its {} elements", buf.len()),
            });
        }
        read_scalar(&bytes[off..], buf.dtype, i).ok_or_else(|| Error::Exec {
            kernel: usize::MAX,
            reason: format!("read of {b} at {i} is outside the arena"),
        })
    }

    fn write(&mut self, b: BufferId, i: usize, v: Scalar) -> Result<()> {
        let buf = self.prog.buffer(b);
        if v.dtype() != buf.dtype || i >= buf.len() {
            return Err(Error::Exec {
                kernel: usize::MAX,
                reason: format!("bad write of {v:?} to {b} at {i}"),
            });
        }
        let w = buf.dtype.size_bytes();
        let (bytes, off) = match buf.storage {
            Storage::Arena { offset } => (&mut self.arena, offset),
            _ => (self.own.get_mut(&b).expect("own buffer"), 0),
        };
        bytes[off + i * w..off + i * w + w].copy_from_slice(&scalar_bytes(v));
        Ok(())
    }

    fn array(&self, b: BufferId) -> Result<Array> {
        let buf = self.prog.buffer(b);
        let v: Vec<Scalar> = (0..buf.len())
            .map(|i| self.read(b, i))
            .collect::<Result<_>>()?;
        Ok(Array::from_scalars(buf.shape.clone(), buf.dtype, &v).expect("buffer shape"))
    }

    fn store(&mut self, b: BufferId, a: &Array) -> Result<()> {
        for i in 0..a.len() {
            self.write(b, i, a.get(i))?;
        }
        Ok(())
    }

    fn load(&self, a: &Access, vars: &[usize]) -> Result<Option<Scalar>> {
        for c in &a.mask {
            let v = c.expr.eval(vars);
            if v < c.lo || v >= c.hi {
                return Ok(None);
            }
        }
        let off = a.offset.eval(vars);
        if off < 0 {
            return Err(Error::Exec {
                kernel: usize::MAX,
                reason: format!("negative offset {off} into {}", a.buffer),
            });
        }
        self.read(a.buffer, off as usize).map(Some)
    }

    fn run_program(
        &self,
        p: &ElementProgram,
        inputs: &[Access],
        vars: &[usize],
        acc: Option<Scalar>,
    ) -> Result<Scalar> {
        let mut vals: Vec<Scalar> = Vec::with_capacity(p.instrs.len());
        for ins in &p.instrs {
            let v = match ins {
                Instr::Load(a) => {
                    let acc_dtype = self.prog.buffer(inputs[*a].buffer).dtype;
                    self.load(&inputs[*a], vars)?.unwrap_or(zero(acc_dtype))
                }
                Instr::Const(c) => *c,
                Instr::Unary(f, a) => unary_scalar(*f, vals[*a]),
                Instr::Binary(f, a, b) => binary_scalar(*f, vals[*a], vals[*b]),
                Instr::Select(c, a, b) => {
                    if vals[*c].is_true() {
                        vals[*a]
                    } else {
                        vals[*b]
                    }
                }
                Instr::Cast(to, a) => cast_scalar(vals[*a], *to),
                Instr::Acc => acc.ok_or_else(|| Error::Exec {
                    kernel: usize::MAX,
                    reason: "Acc outside an epilogue".into(),
                })?,
                Instr::InBounds(conds) => Scalar::Bool(conds.iter().all(|c| {
                    let v = c.expr.eval(vars);
                    c.lo <= v && v < c.hi
                })),
                Instr::IndexValue(e, dtype) => Scalar::from_f64(*dtype, e.eval(vars) as f64),
                Instr::Random {
                    normal,
                    seed,
                    a,
                    b,
                    dtype,
                    index,
                } => {
                    let i = index.eval(vars) as u64;
                    if *normal {
                        normal_element(*dtype, *seed, *a, *b, i)
                    } else {
                        uniform_element(*dtype, *seed, *a, *b, i)
                    }
                }
            };
            vals.push(v);
        }
        Ok(vals[p.result])
    }

    /// Runs an epilogue over every element of `acc`, writing `out`.
    fn epilogue(&mut self, e: &Epilogue, acc: &Array, out: BufferId) -> Result<()> {
        let shape = acc.shape().to_vec();
        let mut vars = vec![0usize; shape.len()];
        for i in 0..acc.len() {
            let v = self.run_program(&e.program, &e.inputs, &vars, Some(acc.get(i)))?;
            self.write(out, i, v)?;
            next_index(&mut vars, &shape);
        }
        Ok(())
    }

    fn operand(&self, o: &Operand, shape: &[usize]) -> Result<Array> {
        let buf = self.prog.buffer(o.buffer);
        let n: usize = shape.iter().product();
        let mut vars = vec![0usize; shape.len()];
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let off = o.offset
                + vars
                    .iter()
                    .zip(&o.strides)
                    .map(|(&i, &s)| i as i64 * s)
                    .sum::<i64>();
            v.push(self.read(o.buffer, off as usize)?);
            next_index(&mut vars, shape);
        }
        Ok(Array::from_scalars(shape.to_vec(), buf.dtype, &v).expect("operand shape"))
    }

    fn kernel(&mut self, k: &Kernel) -> Result<()> {
        match k {
            Kernel::Elementwise {
                out,
                shape,
                inputs,
                program,
            } => {
                let mut vars = vec![0usize; shape.len()];
                for i in 0..shape.iter().product() {
                    let v = self.run_program(program, inputs, &vars, None)?;
                    self.write(*out, i, v)?;
                    next_index(&mut vars, shape);
                }
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
                let mut vals = Vec::with_capacity(shape.iter().product());
                let mut vars = vec![0usize; shape.len()];
                for _ in 0..shape.iter().product() {
                    vals.push(self.run_program(body, inputs, &vars, None)?);
                    next_index(&mut vars, shape);
                }
                // An empty loop has no value to show the body's dtype (the
                // map's output may have another one: `x < max(x)` is bool).
                let dtype = match vals.first() {
                    Some(v) => v.dtype(),
                    None => result_dtype(self.prog, body, inputs).ok_or_else(|| Error::Exec {
                        kernel: usize::MAX,
                        reason: "the reduced body has no dtype".into(),
                    })?,
                };
                let input = Array::from_scalars(shape.clone(), dtype, &vals).expect("body values");
                let op = match kind {
                    ReduceKind::Value(f) => Op::Reduce {
                        f: *f,
                        axes: axes.clone(),
                        keepdims: true,
                    },
                    ReduceKind::Arg(f) => Op::ArgReduce {
                        f: *f,
                        axis: axes[0],
                        keepdims: true,
                    },
                };
                let rshape: Vec<usize> = shape
                    .iter()
                    .enumerate()
                    .map(|(d, &n)| if axes.contains(&d) { 1 } else { n })
                    .collect();
                let reduced = op.eval(&[&input], &rshape).map_err(|r| Error::Exec {
                    kernel: usize::MAX,
                    reason: r,
                })?;
                if let Some(o) = out {
                    self.store(*o, &reduced)?;
                }
                if let Some((mo, prog)) = map {
                    let rst = kiln_graph::shape::strides(&rshape);
                    let mut vars = vec![0usize; shape.len()];
                    for i in 0..shape.iter().product() {
                        let r: usize = vars
                            .iter()
                            .enumerate()
                            .map(|(d, &v)| if axes.contains(&d) { 0 } else { v * rst[d] })
                            .sum();
                        let v = self.run_program(prog, inputs, &vars, Some(reduced.get(r)))?;
                        self.write(*mo, i, v)?;
                        next_index(&mut vars, shape);
                    }
                }
            }
            Kernel::MatMul {
                out,
                a,
                b,
                batch,
                mnk,
                epilogue,
            } => {
                let [m, n, kk] = *mnk;
                let mut ash = batch.clone();
                ash.extend([m, kk]);
                let mut bsh = batch.clone();
                bsh.extend([kk, n]);
                let (av, bv) = (self.operand(a, &ash)?, self.operand(b, &bsh)?);
                // The product's own shape; the output buffer's may differ
                // where batches were folded into rows (same layout).
                let mut pshape = batch.clone();
                pshape.extend([m, n]);
                let oshape = self.prog.buffer(*out).shape.clone();
                let acc = Op::MatMul
                    .eval(&[&av, &bv], &pshape)
                    .map_err(|r| Error::Exec {
                        kernel: usize::MAX,
                        reason: r,
                    })?
                    .reshaped(oshape)
                    .ok_or(Error::Exec {
                        kernel: usize::MAX,
                        reason: "a product's output buffer holds another number of elements".into(),
                    })?;
                self.epilogue(epilogue, &acc, *out)?;
            }
            Kernel::Op {
                op,
                out,
                args,
                epilogue,
            } => {
                let arrays: Vec<Array> =
                    args.iter().map(|&b| self.array(b)).collect::<Result<_>>()?;
                let refs: Vec<&Array> = arrays.iter().collect();
                let oshape = self.prog.buffer(*out).shape.clone();
                let acc = self
                    .prog
                    .eval_op(op, &refs, &oshape)
                    .map_err(|r| Error::Exec {
                        kernel: usize::MAX,
                        reason: r,
                    })?;
                self.epilogue(epilogue, &acc, *out)?;
            }
        }
        Ok(())
    }
}

/// The dtype of an element program's result, from its instructions.
fn result_dtype(prog: &KernelProgram, p: &ElementProgram, inputs: &[Access]) -> Option<DType> {
    let mut types: Vec<Option<DType>> = Vec::with_capacity(p.instrs.len());
    for ins in &p.instrs {
        let t = match ins {
            Instr::Load(a) => Some(prog.buffer(inputs[*a].buffer).dtype),
            Instr::Const(c) => Some(c.dtype()),
            Instr::Unary(_, a) | Instr::Select(_, a, _) => types[*a],
            Instr::Binary(f, _, _) if f.is_comparison() => Some(DType::Bool),
            Instr::Binary(_, a, _) => types[*a],
            Instr::Cast(to, _) => Some(*to),
            Instr::Acc => None,
            Instr::InBounds(_) => Some(DType::Bool),
            Instr::IndexValue(_, dtype) | Instr::Random { dtype, .. } => Some(*dtype),
        };
        types.push(t);
    }
    types.get(p.result).copied().flatten()
}

/// Advances a row-major multi-index.
fn next_index(vars: &mut [usize], shape: &[usize]) {
    for d in (0..shape.len()).rev() {
        vars[d] += 1;
        if vars[d] < shape[d] {
            return;
        }
        vars[d] = 0;
    }
}

/// Runs the program on `inputs` (by placeholder name) and `variables` (by
/// name); returns the fetched values and commits assignments to `variables`.
pub fn execute(
    prog: &KernelProgram,
    inputs: &HashMap<String, Array>,
    variables: &mut HashMap<String, Array>,
) -> Result<Vec<Array>> {
    let mut mem = Memory {
        prog,
        arena: vec![0; prog.memory.arena],
        own: HashMap::new(),
    };
    for (i, b) in prog.buffers.iter().enumerate() {
        let id = BufferId(i);
        let missing = |what: &str, name: &str| Error::Exec {
            kernel: usize::MAX,
            reason: format!("{what} '{name}' was not supplied"),
        };
        let bytes = match &b.storage {
            Storage::Arena { .. } => continue,
            Storage::Input { name } => inputs
                .get(name)
                .ok_or_else(|| missing("input", name))?
                .data()
                .to_le_bytes(),
            Storage::Variable { name } => variables
                .get(name)
                .ok_or_else(|| missing("variable", name))?
                .data()
                .to_le_bytes(),
            Storage::Constant { value } => value.0.data().to_le_bytes(),
            Storage::Result => vec![0; b.size_bytes()],
        };
        if bytes.len() != b.size_bytes() {
            return Err(Error::Exec {
                kernel: usize::MAX,
                reason: format!(
                    "{} for {id} has {} bytes, expected {}",
                    b.node,
                    bytes.len(),
                    b.size_bytes()
                ),
            });
        }
        mem.own.insert(id, bytes);
    }
    for (i, k) in prog.kernels.iter().enumerate() {
        mem.kernel(k).map_err(|e| match e {
            Error::Exec { reason, .. } => Error::Exec { kernel: i, reason },
            other => other,
        })?;
    }
    let outs = prog
        .outputs
        .iter()
        .map(|&b| mem.array(b))
        .collect::<Result<Vec<_>>>()?;
    let mut updates = Vec::new();
    for &(var, val) in &prog.updates {
        if let Storage::Variable { name } = &prog.buffer(var).storage {
            updates.push((name.clone(), mem.array(val)?));
        }
    }
    for (name, v) in updates {
        variables.insert(name, v);
    }
    Ok(outs)
}
