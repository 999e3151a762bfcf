//! The closed set of primitive ops, grouped in bands, with their attributes.
//!
//! Each op's shape rule and reference meaning live in one file of `ops/`;
//! this file only names the ops and dispatches to those homes. Layers
//! (softmax, dense, attention, ...) are builder functions that emit these
//! primitives, never new ops.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::array::Array;
use crate::dtype::DType;
use crate::ops;
use crate::shape::{Shape, TensorType};

/// A tensor value held by a constant or a variable initializer.
///
/// Not serialized with the op: graph files store it as a named tensor beside
/// the graph (see `format.rs`).
#[derive(Clone, Debug, PartialEq)]
pub struct Weight(pub Arc<Array>);

impl Default for Weight {
    fn default() -> Weight {
        Weight(Arc::new(Array::zeros(DType::F32, &[0])))
    }
}

/// A variable read from a file without the flag is trainable.
fn trainable_default() -> bool {
    true
}

/// Skips writing the flag in its default state.
fn is_trainable(t: &bool) -> bool {
    *t
}

impl Weight {
    /// Wraps an array.
    pub fn new(a: Array) -> Weight {
        Weight(Arc::new(a))
    }
}

/// Elementwise functions of one operand: `kiln-rt`'s [`UnaryFn`], the one
/// list every backend matches on (with each function's code, name and
/// float meaning).
///
/// [`UnaryFn`]: kiln_rt::scalar::UnaryFn
pub use kiln_rt::scalar::UnaryFn as UnaryOp;

/// Elementwise functions of two operands, with numpy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    /// Integer division truncates toward zero; an integer division by zero gives 0.
    Div,
    Pow,
    /// Truncated remainder `a - trunc(a / b) * b`, with the sign of `a`.
    /// Floats: IEEE `fmod`, exact (NaN when `b` is 0 or `a` infinite).
    /// Integers: with [`BinaryOp::Div`]'s `x / 0 = 0`, `x rem 0 = x`;
    /// `MIN rem -1 = 0`.
    Rem,
    Max,
    Min,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    Xor,
}

impl BinaryOp {
    /// True for comparisons (result bool, operands numeric or bool).
    pub fn is_comparison(self) -> bool {
        use BinaryOp::*;
        matches!(self, Eq | Ne | Lt | Le | Gt | Ge)
    }

    /// True for logical ops (bool operands and result).
    pub fn is_logical(self) -> bool {
        matches!(self, BinaryOp::And | BinaryOp::Or | BinaryOp::Xor)
    }
}

/// Reductions over axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum ReduceOp {
    Sum,
    Prod,
    Max,
    Min,
}

/// Index-returning reductions over one axis (result i64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum ArgOp {
    ArgMax,
    ArgMin,
}

/// One axis of a slice, with Python semantics: negative `start`/`end` count
/// from the end, out-of-range values clamp, `step` may be negative but not 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SliceAxis {
    /// First index (inclusive).
    pub start: i64,
    /// Last index (exclusive); `i64::MAX` means "to the end".
    pub end: i64,
    /// Step; negative walks backwards.
    pub step: i64,
}

impl SliceAxis {
    /// The whole axis.
    pub const FULL: SliceAxis = SliceAxis {
        start: 0,
        end: i64::MAX,
        step: 1,
    };
}

/// A 2-D sliding window over the last two dims of an NCHW tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Window2d {
    /// Window height and width.
    pub kernel: [usize; 2],
    /// Step between windows.
    pub stride: [usize; 2],
    /// Zero padding: top, left, bottom, right.
    pub padding: [usize; 4],
    /// Spacing between window taps.
    pub dilation: [usize; 2],
    /// Round the output size up instead of down (the last window must still
    /// start inside the input or its leading padding).
    pub ceil_mode: bool,
}

/// A primitive op. The output type of a node is inferred from its op and
/// input types when it is added (see [`Op::infer`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    // ---- sources ----
    /// A value fed at run time.
    Placeholder {
        /// Element type.
        dtype: DType,
        /// Shape, possibly symbolic.
        shape: Shape,
    },
    /// A constant tensor.
    Constant {
        /// The value.
        #[serde(skip)]
        value: Weight,
    },
    /// A mutable tensor whose state persists across runs of a session.
    Variable {
        /// The initial value.
        #[serde(skip)]
        init: Weight,
        /// Whether optimizers may update it: true for weights, false for
        /// statistics and counters (batch norm's running mean and variance,
        /// a dropout step), which only assignments change. Written to files
        /// only when false, so files from before the flag load as trainable.
        #[serde(default = "trainable_default", skip_serializing_if = "is_trainable")]
        trainable: bool,
    },
    /// A small integer tensor whose values are expressions over the
    /// symbolic dims (a tensor's shape, `batch*seq`, `seq-1`): known when
    /// the graph is built, a constant of each compiled program.
    SymbolicConstant {
        /// Element type (an integer type or bool).
        dtype: DType,
        /// Shape (fixed).
        shape: Vec<usize>,
        /// The values, row-major.
        values: Vec<crate::dim_expr::DimExpr>,
    },
    /// `out[i] = i[axis]`: the index along `axis`, as `dtype`.
    Iota {
        /// Element type.
        dtype: DType,
        /// Shape.
        shape: Shape,
        /// The axis whose index is the value.
        axis: usize,
    },
    /// Uniform samples in `[low, high)`, a pure function of seed, shape and index.
    RandomUniform {
        /// Element type (float).
        dtype: DType,
        /// Shape.
        shape: Shape,
        /// Seed.
        seed: u64,
        /// Lower bound.
        #[serde(with = "crate::format::float")]
        low: f64,
        /// Upper bound.
        #[serde(with = "crate::format::float")]
        high: f64,
    },
    /// Normal samples, a pure function of seed, shape and index.
    RandomNormal {
        /// Element type (float).
        dtype: DType,
        /// Shape.
        shape: Shape,
        /// Seed.
        seed: u64,
        /// Mean.
        #[serde(with = "crate::format::float")]
        mean: f64,
        /// Standard deviation.
        #[serde(with = "crate::format::float")]
        std: f64,
    },

    // ---- elementwise ----
    /// `f(x)`.
    Unary {
        /// The function.
        f: UnaryOp,
    },
    /// `f(a, b)` with broadcasting.
    Binary {
        /// The function.
        f: BinaryOp,
    },
    /// `cond ? a : b`, all three broadcast.
    Select,
    /// Converts the element type (floats to ints truncate and saturate, NaN gives 0).
    Cast {
        /// Target type.
        to: DType,
    },

    // ---- reductions ----
    /// Reduces `axes` (sorted, distinct) with `f`.
    Reduce {
        /// The reduction.
        f: ReduceOp,
        /// Axes to reduce.
        axes: Vec<usize>,
        /// Keep reduced axes as size 1.
        keepdims: bool,
    },
    /// Index of the first maximum/minimum along `axis` (i64).
    ArgReduce {
        /// Which.
        f: ArgOp,
        /// Axis.
        axis: usize,
        /// Keep the axis as size 1.
        keepdims: bool,
    },

    // ---- movement ----
    /// Same elements, new shape of equal element count.
    Reshape {
        /// Target shape.
        shape: Shape,
    },
    /// Reorders dims: output dim `i` is input dim `perm[i]`.
    Permute {
        /// The permutation.
        perm: Vec<usize>,
    },
    /// Numpy-broadcasts the input to `shape`.
    Broadcast {
        /// Target shape.
        shape: Shape,
    },
    /// Strided slice, one entry per dim.
    Slice {
        /// Per-axis ranges.
        axes: Vec<SliceAxis>,
    },
    /// Constant padding before and after each dim.
    Pad {
        /// Elements before, per dim.
        before: Vec<usize>,
        /// Elements after, per dim.
        after: Vec<usize>,
        /// Fill value (converted to the dtype).
        #[serde(with = "crate::format::float")]
        value: f64,
    },
    /// Joins inputs along `axis`.
    Concat {
        /// Axis.
        axis: usize,
    },

    // ---- contractions ----
    /// `[..., m, k] x [..., k, n] -> [..., m, n]`, batch dims broadcast.
    #[serde(rename = "matmul")]
    MatMul,
    /// 2-D convolution: input NCHW, weight `[out, in/groups, kh, kw]`.
    Conv2d {
        /// Stride (h, w).
        stride: [usize; 2],
        /// Padding: top, left, bottom, right.
        padding: [usize; 4],
        /// Dilation (h, w).
        dilation: [usize; 2],
        /// Channel groups.
        groups: usize,
        /// Input and output channels-last (NHWC: `[n, h, w, c]` in,
        /// `[n, oh, ow, o]` out; the weight stays OIHW). Graphs are built
        /// NCHW; the CPU compiler's `ChannelsLast` pass sets this where its
        /// kernels run faster that way.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        channels_last: bool,
    },

    // ---- pooling ----
    /// Max over each window (padding never wins).
    MaxPool2d {
        /// The window.
        window: Window2d,
    },
    /// Mean over each window.
    AvgPool2d {
        /// The window.
        window: Window2d,
        /// Count padding positions in the divisor.
        count_include_pad: bool,
    },

    // ---- gather / scatter ----
    /// `out[pre, i, post] = data[pre, indices[i], post]` (numpy `take`); negative
    /// indices count from the end; out of range is an error.
    Gather {
        /// Axis of `data` indexed.
        axis: usize,
    },
    /// The adjoint of `Gather`: `out = data; out[pre, indices[i], post] += updates[pre, i, post]`.
    ScatterAdd {
        /// Axis of `data` indexed.
        axis: usize,
    },

    // ---- state ----
    /// Inputs `(variable, value)`: the variable takes `value` at the end of the run;
    /// the output is `value`.
    Assign,
    /// Runs all its inputs (any types); the output is the bool `true`. Fetching
    /// it runs a set of assignments, e.g. a training step.
    Group,

    // ---- control flow ----
    /// `pred ? then_fn(args) : else_fn(args)` with inputs `(pred, args...)`;
    /// only the chosen function runs. The output is result `index` (one node
    /// per result; unused ones are dead code).
    Cond {
        /// The function run when `pred` is true (index into the graph's functions).
        then_fn: usize,
        /// The function run otherwise.
        else_fn: usize,
        /// Which result this node is.
        index: usize,
        /// Its type (checked against both functions when the node is added).
        ty: TensorType,
    },
    /// `state = inputs[..vars]; while cond_fn(state, captured) { state =
    /// body_fn(state, captured) }`, with `captured = inputs[vars..]`; the
    /// output is the final `state[index]`.
    While {
        /// Returns a bool scalar: whether to run the body again.
        cond_fn: usize,
        /// Returns the next state.
        body_fn: usize,
        /// Number of loop variables (the rest of the inputs are captured).
        vars: usize,
        /// Which loop variable this node is.
        index: usize,
        /// Its type (checked against the functions when the node is added).
        ty: TensorType,
        /// Stop after this many runs of the body even if the condition holds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_iterations: Option<u64>,
    },
    /// The gradient of a `while` loop's final `state[seed]` with respect to
    /// the loop's input `index`, given that output's gradient. Inputs are
    /// the loop's inputs followed by the gradient. It reruns the loop,
    /// keeping each iteration's state, then runs `grad_fn` (the body's
    /// vector-Jacobian product: `(state, captured, d_next_state) ->
    /// (d_state, d_captured)`) from the last iteration back to the first.
    WhileGrad {
        /// The loop's condition.
        cond_fn: usize,
        /// The loop's body.
        body_fn: usize,
        /// The body's vector-Jacobian product.
        grad_fn: usize,
        /// Number of loop variables.
        vars: usize,
        /// Which final loop variable the incoming gradient belongs to.
        seed: usize,
        /// Which loop input this node is the gradient of.
        index: usize,
        /// Its type (that input's type).
        ty: TensorType,
        /// The loop's bound on runs of the body.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_iterations: Option<u64>,
    },
}

impl Op {
    /// True for ops that call functions of the graph (`cond`, `while`).
    pub fn is_control_flow(&self) -> bool {
        matches!(
            self,
            Op::Cond { .. } | Op::While { .. } | Op::WhileGrad { .. }
        )
    }

    /// The op's name as used in messages, text dumps and files.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Placeholder { .. } => "placeholder",
            Op::Constant { .. } => "constant",
            Op::Variable { .. } => "variable",
            Op::SymbolicConstant { .. } => "symbolic_constant",
            Op::Iota { .. } => "iota",
            Op::RandomUniform { .. } => "random_uniform",
            Op::RandomNormal { .. } => "random_normal",
            Op::Unary { f } => ops::elementwise::unary_name(*f),
            Op::Binary { f } => ops::elementwise::binary_name(*f),
            Op::Select => "select",
            Op::Cast { .. } => "cast",
            Op::Reduce { f, .. } => match f {
                ReduceOp::Sum => "reduce_sum",
                ReduceOp::Prod => "reduce_prod",
                ReduceOp::Max => "reduce_max",
                ReduceOp::Min => "reduce_min",
            },
            Op::ArgReduce { f, .. } => match f {
                ArgOp::ArgMax => "argmax",
                ArgOp::ArgMin => "argmin",
            },
            Op::Reshape { .. } => "reshape",
            Op::Permute { .. } => "permute",
            Op::Broadcast { .. } => "broadcast",
            Op::Slice { .. } => "slice",
            Op::Pad { .. } => "pad",
            Op::Concat { .. } => "concat",
            Op::MatMul => "matmul",
            Op::Conv2d { .. } => "conv2d",
            Op::MaxPool2d { .. } => "max_pool2d",
            Op::AvgPool2d { .. } => "avg_pool2d",
            Op::Gather { .. } => "gather",
            Op::ScatterAdd { .. } => "scatter_add",
            Op::Assign => "assign",
            Op::Group => "group",
            Op::Cond { .. } => "cond",
            Op::While { .. } => "while",
            Op::WhileGrad { .. } => "while_grad",
        }
    }

    /// Number of inputs the op takes; `None` for variadic ops (concat).
    pub fn arity(&self) -> Option<usize> {
        Some(match self {
            Op::Placeholder { .. }
            | Op::Constant { .. }
            | Op::Variable { .. }
            | Op::SymbolicConstant { .. }
            | Op::Iota { .. }
            | Op::RandomUniform { .. }
            | Op::RandomNormal { .. } => 0,
            Op::Unary { .. }
            | Op::Cast { .. }
            | Op::Reduce { .. }
            | Op::ArgReduce { .. }
            | Op::Reshape { .. }
            | Op::Permute { .. }
            | Op::Broadcast { .. }
            | Op::Slice { .. }
            | Op::Pad { .. }
            | Op::MaxPool2d { .. }
            | Op::AvgPool2d { .. } => 1,
            Op::Binary { .. } | Op::MatMul | Op::Conv2d { .. } | Op::Gather { .. } | Op::Assign => {
                2
            }
            Op::Select | Op::ScatterAdd { .. } => 3,
            Op::Concat { .. }
            | Op::Group
            | Op::Cond { .. }
            | Op::While { .. }
            | Op::WhileGrad { .. } => return None,
        })
    }

    /// True for ops with no inputs.
    pub fn is_source(&self) -> bool {
        self.arity() == Some(0)
    }

    /// True for ops whose value is pure elementwise in their inputs.
    pub fn is_elementwise(&self) -> bool {
        matches!(
            self,
            Op::Unary { .. } | Op::Binary { .. } | Op::Select | Op::Cast { .. }
        )
    }

    /// True for movement ops (views of their input).
    pub fn is_movement(&self) -> bool {
        matches!(
            self,
            Op::Reshape { .. }
                | Op::Permute { .. }
                | Op::Broadcast { .. }
                | Op::Slice { .. }
                | Op::Pad { .. }
                | Op::Concat { .. }
        )
    }

    /// The op's output type for the given input types: the shape rule.
    ///
    /// The error is a reason for a person; the caller adds the op, operands and
    /// location.
    pub fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, String> {
        if let Some(n) = self.arity() {
            if inputs.len() != n {
                return Err(format!("expects {n} inputs, got {}", inputs.len()));
            }
        } else if inputs.is_empty() {
            return Err("expects at least one input".into());
        }
        match self {
            Op::Placeholder { dtype, shape } => Ok(TensorType::new(*dtype, shape.clone())),
            Op::Constant { value } => {
                Ok(TensorType::new(value.0.dtype(), value.0.shape().to_vec()))
            }
            Op::Variable { init, .. } => {
                Ok(TensorType::new(init.0.dtype(), init.0.shape().to_vec()))
            }
            Op::SymbolicConstant {
                dtype,
                shape,
                values,
            } => ops::symbolic::infer(*dtype, shape, values),
            Op::Iota { dtype, shape, axis } => ops::index::infer_iota(*dtype, shape, *axis),
            Op::RandomUniform {
                dtype,
                shape,
                low,
                high,
                ..
            } => {
                ops::random::infer_random(*dtype, shape, *low <= *high, "low must not exceed high")
            }
            Op::RandomNormal {
                dtype, shape, std, ..
            } => ops::random::infer_random(*dtype, shape, *std >= 0.0, "std must not be negative"),
            Op::Unary { f } => ops::elementwise::infer_unary(*f, inputs[0]),
            Op::Binary { f } => ops::elementwise::infer_binary(*f, inputs[0], inputs[1]),
            Op::Select => ops::elementwise::infer_select(inputs[0], inputs[1], inputs[2]),
            Op::Cast { to } => Ok(TensorType::new(*to, inputs[0].shape.clone())),
            Op::Reduce { f, axes, keepdims } => {
                ops::reduce::infer_reduce(*f, inputs[0], axes, *keepdims)
            }
            Op::ArgReduce { axis, keepdims, .. } => {
                ops::reduce::infer_arg(inputs[0], *axis, *keepdims)
            }
            Op::Reshape { shape } => ops::movement::infer_reshape(inputs[0], shape),
            Op::Permute { perm } => ops::movement::infer_permute(inputs[0], perm),
            Op::Broadcast { shape } => ops::movement::infer_broadcast(inputs[0], shape),
            Op::Slice { axes } => ops::movement::infer_slice(inputs[0], axes),
            Op::Pad { before, after, .. } => ops::movement::infer_pad(inputs[0], before, after),
            Op::Concat { axis } => ops::movement::infer_concat(inputs, *axis),
            Op::MatMul => ops::linalg::infer_matmul(inputs[0], inputs[1]),
            Op::Conv2d {
                stride,
                padding,
                dilation,
                groups,
                channels_last: false,
            } => ops::linalg::infer_conv2d(
                inputs[0], inputs[1], *stride, *padding, *dilation, *groups,
            ),
            Op::Conv2d {
                stride,
                padding,
                dilation,
                groups,
                channels_last: true,
            } => {
                let x = ops::movement::infer_permute(inputs[0], &[0, 3, 1, 2])?;
                let y = ops::linalg::infer_conv2d(
                    &x, inputs[1], *stride, *padding, *dilation, *groups,
                )?;
                ops::movement::infer_permute(&y, &[0, 2, 3, 1])
            }
            Op::MaxPool2d { window } | Op::AvgPool2d { window, .. } => {
                ops::pool::infer_pool(inputs[0], window)
            }
            Op::Gather { axis } => ops::index::infer_gather(inputs[0], inputs[1], *axis),
            Op::ScatterAdd { axis } => {
                ops::index::infer_scatter_add(inputs[0], inputs[1], inputs[2], *axis)
            }
            Op::Assign => ops::state::infer_assign(inputs[0], inputs[1]),
            Op::Group => Ok(TensorType::new(DType::Bool, Shape::scalar())),
            // Checked against the called functions by `Graph::add_node`.
            Op::Cond { ty, .. } | Op::While { ty, .. } | Op::WhileGrad { ty, .. } => Ok(ty.clone()),
        }
    }

    /// The op's reference meaning: its output for concrete inputs.
    ///
    /// `out` is the node's output shape with symbolic dims resolved. Placeholders
    /// and variables are not evaluated here: the interpreter supplies their values.
    ///
    /// Half types (`f16`, `bf16`) compute in f32: an op with a half input, or
    /// a half dtype of its own (iota, random), runs on the inputs widened to
    /// f32 (exactly) and rounds its f32 result to that half type once. Casts
    /// and constants are themselves.
    pub fn eval(&self, inputs: &[&Array], out: &[usize]) -> Result<Array, String> {
        let own = match self {
            Op::Iota { dtype, .. }
            | Op::RandomUniform { dtype, .. }
            | Op::RandomNormal { dtype, .. } => Some(*dtype),
            _ => None,
        };
        let half = own
            .into_iter()
            .chain(inputs.iter().map(|a| a.dtype()))
            .find(|d| d.is_half());
        let passes = matches!(
            self,
            Op::Cast { .. } | Op::Constant { .. } | Op::Placeholder { .. } | Op::Variable { .. }
        );
        let Some(half) = half.filter(|_| !passes) else {
            return self.eval_native(inputs, out);
        };
        let wide: Vec<Array> = inputs
            .iter()
            .map(|a| {
                if a.dtype().is_half() {
                    ops::elementwise::eval_cast(a, DType::F32)
                } else {
                    (*a).clone()
                }
            })
            .collect();
        let refs: Vec<&Array> = wide.iter().collect();
        let mut op = self.clone();
        if let Op::Iota { dtype, .. }
        | Op::RandomUniform { dtype, .. }
        | Op::RandomNormal { dtype, .. } = &mut op
        {
            if dtype.is_half() {
                *dtype = DType::F32;
            }
        }
        let r = op.eval_native(&refs, out)?;
        Ok(if r.dtype() == DType::F32 {
            ops::elementwise::eval_cast(&r, half)
        } else {
            r
        })
    }

    fn eval_native(&self, inputs: &[&Array], out: &[usize]) -> Result<Array, String> {
        match self {
            Op::Placeholder { .. } | Op::Variable { .. } => {
                Err("placeholders and variables take their value from the session".into())
            }
            Op::Constant { value } => Ok((*value.0).clone()),
            Op::SymbolicConstant { .. } => {
                Err("a symbolic constant takes its value from the sizes bound in a run".into())
            }
            Op::Iota { dtype, axis, .. } => Ok(ops::index::eval_iota(*dtype, out, *axis)),
            Op::RandomUniform {
                dtype,
                seed,
                low,
                high,
                ..
            } => Ok(ops::random::eval_uniform(*dtype, out, *seed, *low, *high)),
            Op::RandomNormal {
                dtype,
                seed,
                mean,
                std,
                ..
            } => Ok(ops::random::eval_normal(*dtype, out, *seed, *mean, *std)),
            Op::Unary { f } => ops::elementwise::eval_unary(*f, inputs[0]),
            Op::Binary { f } => ops::elementwise::eval_binary(*f, inputs[0], inputs[1], out),
            Op::Select => ops::elementwise::eval_select(inputs[0], inputs[1], inputs[2], out),
            Op::Cast { to } => Ok(ops::elementwise::eval_cast(inputs[0], *to)),
            Op::Reduce { f, axes, .. } => ops::reduce::eval_reduce(*f, inputs[0], axes, out),
            Op::ArgReduce { f, axis, .. } => ops::reduce::eval_arg(*f, inputs[0], *axis, out),
            Op::Reshape { .. } => ops::movement::eval_reshape(inputs[0], out),
            Op::Permute { perm } => Ok(ops::movement::eval_permute(inputs[0], perm)),
            Op::Broadcast { .. } => Ok(ops::movement::eval_broadcast(inputs[0], out)),
            Op::Slice { axes } => Ok(ops::movement::eval_slice(inputs[0], axes)),
            Op::Pad {
                before,
                after,
                value,
            } => Ok(ops::movement::eval_pad(inputs[0], before, after, *value)),
            Op::Concat { axis } => Ok(ops::movement::eval_concat(inputs, *axis, out)),
            Op::MatMul => ops::linalg::eval_matmul(inputs[0], inputs[1], out),
            Op::Conv2d {
                stride,
                padding,
                dilation,
                groups,
                channels_last: false,
            } => ops::linalg::eval_conv2d(
                inputs[0], inputs[1], *stride, *padding, *dilation, *groups, out,
            ),
            Op::Conv2d {
                stride,
                padding,
                dilation,
                groups,
                channels_last: true,
            } => {
                let x = ops::movement::eval_permute(inputs[0], &[0, 3, 1, 2]);
                let nchw = [out[0], out[3], out[1], out[2]];
                let y = ops::linalg::eval_conv2d(
                    &x, inputs[1], *stride, *padding, *dilation, *groups, &nchw,
                )?;
                Ok(ops::movement::eval_permute(&y, &[0, 2, 3, 1]))
            }
            Op::MaxPool2d { window } => ops::pool::eval_max_pool(inputs[0], window, out),
            Op::AvgPool2d {
                window,
                count_include_pad,
            } => ops::pool::eval_avg_pool(inputs[0], window, *count_include_pad, out),
            Op::Gather { axis } => ops::index::eval_gather(inputs[0], inputs[1], *axis, out),
            Op::ScatterAdd { axis } => {
                ops::index::eval_scatter_add(inputs[0], inputs[1], inputs[2], *axis)
            }
            Op::Assign => Ok(inputs[1].clone()),
            Op::Group => Ok(Array::scalar(true)),
            Op::Cond { .. } | Op::While { .. } | Op::WhileGrad { .. } => {
                Err("control flow needs the graph's functions: see ops::control::eval".into())
            }
        }
    }
}
