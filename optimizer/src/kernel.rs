//! The kernel program: the backend-neutral output of the optimizer and the
//! input of every backend. An ordered list of kernels over buffers; every
//! temporary buffer has an offset in one planned arena.

use serde::{Deserialize, Serialize};
use std::fmt;

use kiln_graph::op::Weight;
use kiln_graph::{ArgOp, BinaryOp, DType, Op, ReduceOp, Scalar, UnaryOp};

use crate::index::Index;

/// A typed index of a buffer in a [`KernelProgram`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BufferId(pub usize);

impl fmt::Display for BufferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}", self.0)
    }
}

/// Where a buffer lives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Storage {
    /// A fed placeholder.
    Input {
        /// The placeholder's name.
        name: String,
    },
    /// A variable's state.
    Variable {
        /// The variable's name.
        name: String,
    },
    /// Constant data (weights), kept by the program.
    Constant {
        /// The data (not serialized).
        #[serde(skip)]
        value: Weight,
    },
    /// A fetched result or a value assigned to a variable: its own memory,
    /// apart from the arena.
    Result,
    /// A temporary at a byte offset in the arena.
    Arena {
        /// Byte offset, 64-byte aligned.
        offset: usize,
    },
}

/// A buffer: a dense row-major tensor somewhere in memory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Buffer {
    /// Element type.
    pub dtype: DType,
    /// Concrete shape.
    pub shape: Vec<usize>,
    /// Where it lives.
    pub storage: Storage,
    /// The graph node whose value it holds (for dumps).
    pub node: String,
}

impl Buffer {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size in bytes.
    pub fn size_bytes(&self) -> usize {
        self.len() * self.dtype.size_bytes()
    }
}

/// A read of a buffer element at an index computed from the loop variables.
/// Where a mask condition fails the access is not performed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Access {
    /// The buffer.
    pub buffer: BufferId,
    /// Element offset (row-major) as a function of the loop variables.
    pub offset: Index,
    /// Conditions `lo <= expr < hi` under which the element is read.
    pub mask: Vec<Cond>,
}

/// `lo <= expr < hi`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cond {
    /// The expression.
    pub expr: Index,
    /// Inclusive lower bound.
    pub lo: i64,
    /// Exclusive upper bound.
    pub hi: i64,
}

/// One instruction of an [`ElementProgram`]; operands refer to earlier instructions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Instr {
    /// The value of access `n` of the kernel.
    Load(usize),
    /// A constant.
    Const(#[serde(with = "scalar_serde")] Scalar),
    /// A unary op.
    Unary(UnaryOp, usize),
    /// A binary op.
    Binary(BinaryOp, usize, usize),
    /// `c ? a : b`.
    Select(usize, usize, usize),
    /// A cast.
    Cast(DType, usize),
    /// The result of the kernel's contraction or reduction at this index.
    Acc,
    /// True when every condition holds.
    InBounds(Vec<Cond>),
    /// An index expression as a number of `dtype`.
    IndexValue(Index, DType),
    /// Element `index` of a random op's output (`kiln_graph::ops::random`).
    Random {
        /// Normal (`a` mean, `b` std) rather than uniform (`a` low, `b` high).
        normal: bool,
        /// Seed.
        seed: u64,
        /// First parameter.
        a: f64,
        /// Second parameter.
        b: f64,
        /// Element type.
        dtype: DType,
        /// The element's row-major index in the random op's output.
        index: Index,
    },
}

mod scalar_serde {
    use kiln_graph::{DType, Scalar};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// The value: integers exactly (an f64 cannot hold every i64 or u64).
    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Value {
        Unsigned(u64),
        Signed(i64),
        Float(f64),
    }

    pub fn serialize<S: Serializer>(s: &Scalar, ser: S) -> Result<S::Ok, S::Error> {
        let v = match *s {
            Scalar::U8(x) => Value::Unsigned(x as u64),
            Scalar::U16(x) => Value::Unsigned(x as u64),
            Scalar::U32(x) => Value::Unsigned(x as u64),
            Scalar::U64(x) => Value::Unsigned(x),
            Scalar::I8(x) => Value::Signed(x as i64),
            Scalar::I16(x) => Value::Signed(x as i64),
            Scalar::I32(x) => Value::Signed(x as i64),
            Scalar::I64(x) => Value::Signed(x),
            other => Value::Float(other.to_f64()),
        };
        (s.dtype(), v).serialize(ser)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Scalar, D::Error> {
        let (d, v) = <(DType, Value)>::deserialize(de)?;
        let exact = |x: Scalar| kiln_graph::ops::elementwise::cast_scalar(x, d);
        Ok(match v {
            Value::Unsigned(x) => exact(Scalar::U64(x)),
            Value::Signed(x) => exact(Scalar::I64(x)),
            Value::Float(x) => Scalar::from_f64(d, x),
        })
    }
}

/// A straight-line program computing one element from loads and constants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct ElementProgram {
    /// Instructions in order.
    pub instrs: Vec<Instr>,
    /// The instruction whose value is the result.
    pub result: usize,
}

impl Instr {
    /// The instructions this one reads.
    pub fn operands(&self) -> Vec<usize> {
        match *self {
            Instr::Unary(_, a) | Instr::Cast(_, a) => vec![a],
            Instr::Binary(_, a, b) => vec![a, b],
            Instr::Select(c, a, b) => vec![c, a, b],
            Instr::Load(_)
            | Instr::Const(_)
            | Instr::Acc
            | Instr::InBounds(_)
            | Instr::IndexValue(..)
            | Instr::Random { .. } => vec![],
        }
    }

    /// This instruction reading `f(operand)` for each operand.
    fn renumbered(&self, f: impl Fn(usize) -> usize) -> Instr {
        match self.clone() {
            Instr::Unary(op, a) => Instr::Unary(op, f(a)),
            Instr::Cast(t, a) => Instr::Cast(t, f(a)),
            Instr::Binary(op, a, b) => Instr::Binary(op, f(a), f(b)),
            Instr::Select(c, a, b) => Instr::Select(f(c), f(a), f(b)),
            other => other,
        }
    }
}

impl ElementProgram {
    /// The program computing instruction `root`'s value: the instructions
    /// it depends on, in their order.
    pub fn slice(&self, root: usize) -> ElementProgram {
        let mut needed = vec![false; root + 1];
        needed[root] = true;
        for i in (0..=root).rev() {
            if needed[i] {
                for a in self.instrs[i].operands() {
                    needed[a] = true;
                }
            }
        }
        let mut new_index = vec![usize::MAX; root + 1];
        let mut instrs = Vec::new();
        for i in (0..=root).filter(|&i| needed[i]) {
            new_index[i] = instrs.len();
            instrs.push(self.instrs[i].renumbered(|a| new_index[a]));
        }
        ElementProgram {
            result: instrs.len() - 1,
            instrs,
        }
    }

    /// Index-set splitting: where the result is a select on bounds tests
    /// that do not involve loop variable `var` (a concatenation or a pad
    /// along an outer dim), every row along `var` takes one side whole.
    /// Returns the tests, the program of the side taken when they hold,
    /// and that of the other side; a backend branches once per row and
    /// computes one side, instead of both in every lane (a recurrent
    /// layer's output concatenates 100 time steps: 100 sides).
    pub fn split_row_select(
        &self,
        var: usize,
    ) -> Option<(Vec<Cond>, ElementProgram, ElementProgram)> {
        let Instr::Select(c, a, b) = self.instrs[self.result] else {
            return None;
        };
        let Instr::InBounds(conds) = &self.instrs[c] else {
            return None;
        };
        if conds.iter().any(|c| c.expr.mentions(var)) {
            return None;
        }
        Some((conds.clone(), self.slice(a), self.slice(b)))
    }
}

/// What a reduction kernel reduces with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReduceKind {
    /// Sum, product, max or min over the reduced axes.
    Value(ReduceOp),
    /// Index of the first extreme along the single reduced axis.
    Arg(ArgOp),
}

/// An elementwise map applied to a contraction's or reduction's result while
/// it is hot: `Acc` is that result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Epilogue {
    /// Reads of other buffers, indexed by the output's loop variables.
    pub inputs: Vec<Access>,
    /// The map.
    pub program: ElementProgram,
}

/// One kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Kernel {
    /// `out[i] = program(i)` for every index `i` of `shape` (= out's shape).
    Elementwise {
        /// Output buffer.
        out: BufferId,
        /// Loop shape.
        shape: Vec<usize>,
        /// Reads.
        inputs: Vec<Access>,
        /// The element program.
        program: ElementProgram,
    },
    /// A reduction over `axes` of a loop over `shape` (the unreduced input
    /// shape) of `body`; optionally a map over the same loop using the
    /// reduced value (`Acc`) of each element's row, written to `map_out`.
    Reduce {
        /// The reduced result (keepdims layout: reduced axes have size 1), if needed.
        out: Option<BufferId>,
        /// Loop shape (the reduction's input shape).
        shape: Vec<usize>,
        /// Reduced loop dims.
        axes: Vec<usize>,
        /// The reduction.
        kind: ReduceKind,
        /// Reads of the body and the map.
        inputs: Vec<Access>,
        /// The value reduced.
        body: ElementProgram,
        /// The map over the full loop and its output.
        map: Option<(BufferId, ElementProgram)>,
    },
    /// Batched matrix product of strided operands with an epilogue.
    MatMul {
        /// Output buffer `[..batch, m, n]`.
        out: BufferId,
        /// Left operand `[..batch, m, k]`.
        a: Operand,
        /// Right operand `[..batch, k, n]`.
        b: Operand,
        /// Output batch dims.
        batch: Vec<usize>,
        /// Rows, columns, inner dim.
        mnk: [usize; 3],
        /// Applied to each output element.
        epilogue: Epilogue,
    },
    /// A primitive op on whole buffers (conv2d, pooling, gather, scatter-add),
    /// with an epilogue on its output.
    Op {
        /// The op (never a constant or variable, so it serializes whole).
        op: Op,
        /// Output buffer.
        out: BufferId,
        /// Input buffers, in the op's input order.
        args: Vec<BufferId>,
        /// Applied to each output element.
        epilogue: Epilogue,
    },
}

/// A strided view of a buffer as a matmul operand: element `[..batch, r, c]`
/// is at `offset + sum(batch strides) + r * strides[-2] + c * strides[-1]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operand {
    /// The buffer.
    pub buffer: BufferId,
    /// Element offset of the first element.
    pub offset: i64,
    /// One stride per output batch dim, then row and column strides.
    pub strides: Vec<i64>,
}

impl Kernel {
    /// The buffers the kernel writes.
    pub fn outputs(&self) -> Vec<BufferId> {
        match self {
            Kernel::Elementwise { out, .. }
            | Kernel::MatMul { out, .. }
            | Kernel::Op { out, .. } => vec![*out],
            Kernel::Reduce { out, map, .. } => {
                out.iter().copied().chain(map.iter().map(|m| m.0)).collect()
            }
        }
    }

    /// The buffers the kernel reads.
    pub fn reads(&self) -> Vec<BufferId> {
        let mut v: Vec<BufferId> = match self {
            Kernel::Elementwise { inputs, .. } | Kernel::Reduce { inputs, .. } => {
                inputs.iter().map(|a| a.buffer).collect()
            }
            Kernel::MatMul { a, b, epilogue, .. } => {
                let mut v = vec![a.buffer, b.buffer];
                v.extend(epilogue.inputs.iter().map(|a| a.buffer));
                v
            }
            Kernel::Op { args, epilogue, .. } => {
                let mut v = args.clone();
                v.extend(epilogue.inputs.iter().map(|a| a.buffer));
                v
            }
        };
        v.sort();
        v.dedup();
        v
    }

    /// A short name for dumps: `elementwise`, `reduce_sum+map`, `matmul`, `conv2d`, ...
    pub fn label(&self) -> String {
        match self {
            Kernel::Elementwise { .. } => "elementwise".into(),
            Kernel::Reduce { kind, map, .. } => {
                let k = match kind {
                    ReduceKind::Value(ReduceOp::Sum) => "reduce_sum",
                    ReduceKind::Value(ReduceOp::Prod) => "reduce_prod",
                    ReduceKind::Value(ReduceOp::Max) => "reduce_max",
                    ReduceKind::Value(ReduceOp::Min) => "reduce_min",
                    ReduceKind::Arg(ArgOp::ArgMax) => "argmax",
                    ReduceKind::Arg(ArgOp::ArgMin) => "argmin",
                };
                if map.is_some() {
                    format!("{k}+map")
                } else {
                    k.into()
                }
            }
            Kernel::MatMul { .. } => "matmul".into(),
            Kernel::Op { op, .. } => op.name().into(),
        }
    }
}

/// Memory-planning figures, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// The planned arena.
    pub arena: usize,
    /// The largest sum of live temporaries at any step (no plan can do better).
    pub lower_bound: usize,
    /// The sum of all temporaries (what no planning would use).
    pub unplanned: usize,
    /// Bytes of results (fetches and assigned values), kept apart.
    pub results: usize,
}

/// The kernel program.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct KernelProgram {
    /// Every buffer.
    pub buffers: Vec<Buffer>,
    /// Kernels in execution order.
    pub kernels: Vec<Kernel>,
    /// The fetched values, in fetch order.
    pub outputs: Vec<BufferId>,
    /// Variable updates committed after the last kernel: (variable, value).
    pub updates: Vec<(BufferId, BufferId)>,
    /// Memory figures of the plan.
    pub memory: MemoryStats,
    /// Per kernel, the graph nodes it computes (for dumps and DOT clusters).
    pub kernel_nodes: Vec<Vec<String>>,
    /// The functions `cond` and `while` kernels call (not serialized).
    #[serde(skip)]
    pub functions: Vec<std::sync::Arc<kiln_graph::graph::Function>>,
    /// Recent control-flow calls, so the nodes of one call run it once.
    #[serde(skip)]
    pub calls: kiln_graph::ops::control::CallCache,
    /// Runs the functions (a backend's compiled code; the interpreter when unset).
    #[serde(skip)]
    pub runner: Option<std::sync::Arc<dyn kiln_graph::ops::control::FunctionRunner>>,
    /// The sizes of symbolic dims the program was compiled for.
    pub bindings: kiln_graph::Bindings,
}

impl KernelProgram {
    /// Evaluates an `Op` kernel's op on whole arrays: its reference meaning,
    /// or for control flow, the called functions on the reference interpreter.
    pub fn eval_op(
        &self,
        op: &kiln_graph::Op,
        args: &[&kiln_graph::Array],
        out: &[usize],
    ) -> Result<kiln_graph::Array, String> {
        match op {
            op if op.is_control_flow() => kiln_graph::ops::control::eval(
                op,
                &self.functions,
                args,
                &self.bindings,
                &self.calls,
                self.runner
                    .as_deref()
                    .unwrap_or(&kiln_graph::ops::control::Interpreted),
            )
            .map_err(|e| e.to_string()),
            _ => op.eval(args, out),
        }
    }

    /// The buffer `id`.
    pub fn buffer(&self, id: BufferId) -> &Buffer {
        &self.buffers[id.0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_round_trip_exactly() {
        let values = [
            Scalar::U64(u64::MAX),
            Scalar::I64(i64::MIN),
            Scalar::I64((1 << 53) + 1),
            Scalar::U8(255),
            Scalar::I8(-128),
            Scalar::U32(u32::MAX),
            Scalar::F32(0.1),
            Scalar::F64(-2.5e300),
            Scalar::Bool(true),
        ];
        for v in values {
            let json = serde_json::to_string(&Instr::Const(v)).unwrap();
            let back: Instr = serde_json::from_str(&json).unwrap();
            assert_eq!(back, Instr::Const(v), "{json}");
        }
    }
}
