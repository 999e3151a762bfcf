//! The primitive ops as methods on [`Tensor`], so model code chains:
//! `x.matmul(w)?.add(b)?.relu()?`. Each method checks types at the call.

use crate::array::Array;
use crate::builder::Tensor;
use crate::dim_expr::DimExpr;
use crate::dtype::DType;
use crate::error::{Result, SourceLoc};
use crate::op::{ArgOp, BinaryOp, Op, ReduceOp, SliceAxis, UnaryOp, Window2d};
use crate::shape::{Dim, Shape};

/// Something usable as the second operand of a binary op: a tensor, or a
/// number that becomes a scalar constant of the other operand's dtype.
pub trait Operand<'g> {
    /// The operand as a tensor, shaped after `like`'s dtype where it is a number.
    #[track_caller]
    fn into_tensor(self, like: Tensor<'g>) -> Result<Tensor<'g>>;
}

impl<'g> Operand<'g> for Tensor<'g> {
    fn into_tensor(self, _like: Tensor<'g>) -> Result<Tensor<'g>> {
        Ok(self)
    }
}

macro_rules! number_operand {
    ($($t:ty),*) => {$(
        impl<'g> Operand<'g> for $t {
            #[track_caller]
            fn into_tensor(self, like: Tensor<'g>) -> Result<Tensor<'g>> {
                let dtype = like.dtype();
                let loc = SourceLoc::caller();
                if dtype == DType::Bool {
                    return Err(like.err("constant", &[], loc, format!("cannot combine the number {self} with a bool tensor")));
                }
                // Converted from its own type with `as` semantics (exact for
                // integers in range, so large u64 and i64 values survive).
                let a = crate::ops::elementwise::eval_cast(&Array::scalar(self), dtype);
                like.b.push(Op::Constant { value: crate::op::Weight::new(a) }, &[], loc)
            }
        }
    )*};
}
number_operand!(f64, f32, i8, i16, i32, i64, u8, u16, u32, u64);

/// Options of a 2-D convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dOptions {
    /// Stride (h, w).
    pub stride: [usize; 2],
    /// Padding: top, left, bottom, right.
    pub padding: [usize; 4],
    /// Dilation (h, w).
    pub dilation: [usize; 2],
    /// Channel groups.
    pub groups: usize,
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Conv2dOptions {
            stride: [1, 1],
            padding: [0; 4],
            dilation: [1, 1],
            groups: 1,
        }
    }
}

impl Conv2dOptions {
    /// Stride `s` in both dims.
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = [s, s];
        self
    }
    /// Padding `p` on every side.
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = [p; 4];
        self
    }
    /// Dilation `d` in both dims.
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = [d, d];
        self
    }
    /// Channel groups.
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
}

impl Window2d {
    /// A `k`x`k` window with stride `s`, padding `p` on every side, no dilation, floor mode.
    pub fn square(k: usize, s: usize, p: usize) -> Window2d {
        Window2d {
            kernel: [k, k],
            stride: [s, s],
            padding: [p; 4],
            dilation: [1, 1],
            ceil_mode: false,
        }
    }
}

macro_rules! unary_methods {
    ($($(#[$m:meta])* $name:ident => $f:ident),* $(,)?) => {$(
        $(#[$m])*
        #[track_caller]
        pub fn $name(self) -> Result<Tensor<'g>> {
            self.op(Op::Unary { f: UnaryOp::$f }, &[], SourceLoc::caller())
        }
    )*};
}

macro_rules! binary_methods {
    ($($(#[$m:meta])* $name:ident => $f:ident),* $(,)?) => {$(
        $(#[$m])*
        #[track_caller]
        pub fn $name(self, rhs: impl Operand<'g>) -> Result<Tensor<'g>> {
            let loc = SourceLoc::caller();
            let rhs = rhs.into_tensor(self)?;
            self.op(Op::Binary { f: BinaryOp::$f }, &[rhs], loc)
        }
    )*};
}

impl<'g> Tensor<'g> {
    unary_methods! {
        /// `-x`.
        neg => Neg,
        /// `|x|`.
        abs => Abs,
        /// -1, 0 or 1 (NaN stays NaN).
        sign => Sign,
        /// `e^x`.
        exp => Exp,
        /// Natural logarithm.
        log => Log,
        /// Square root.
        sqrt => Sqrt,
        /// `1 / sqrt(x)`.
        rsqrt => Rsqrt,
        /// `1 / x`.
        recip => Recip,
        /// Sine.
        sin => Sin,
        /// Cosine.
        cos => Cos,
        /// Tangent.
        tan => Tan,
        /// Arcsine (NaN outside `[-1, 1]`).
        asin => Asin,
        /// Arccosine (NaN outside `[-1, 1]`).
        acos => Acos,
        /// Arctangent.
        atan => Atan,
        /// Hyperbolic sine.
        sinh => Sinh,
        /// Hyperbolic cosine.
        cosh => Cosh,
        /// Inverse hyperbolic sine.
        asinh => Asinh,
        /// Inverse hyperbolic cosine (NaN below 1).
        acosh => Acosh,
        /// Inverse hyperbolic tangent (NaN outside `[-1, 1]`).
        atanh => Atanh,
        /// Hyperbolic tangent.
        tanh => Tanh,
        /// `1 / (1 + e^-x)`.
        sigmoid => Sigmoid,
        /// The error function.
        erf => Erf,
        /// Round down.
        floor => Floor,
        /// Round up.
        ceil => Ceil,
        /// Round half to even.
        round => Round,
        /// Logical not.
        not => Not,
    }

    binary_methods! {
        /// `a + b`.
        add => Add,
        /// `a - b`.
        sub => Sub,
        /// `a * b`.
        mul => Mul,
        /// `a / b` (integers truncate; integer division by zero gives 0).
        div => Div,
        /// `a ^ b`.
        pow => Pow,
        /// Truncated remainder `a - trunc(a / b) * b` (sign of `a`; floats:
        /// IEEE fmod, exact; integers: `x rem 0 = x`).
        rem => Rem,
        /// Elementwise maximum (NaN propagates).
        maximum => Max,
        /// Elementwise minimum (NaN propagates).
        minimum => Min,
        /// `a == b`.
        eq => Eq,
        /// `a != b`.
        ne => Ne,
        /// `a < b`.
        lt => Lt,
        /// `a <= b`.
        le => Le,
        /// `a > b`.
        gt => Gt,
        /// `a >= b`.
        ge => Ge,
        /// Logical and.
        and => And,
        /// Logical or.
        or => Or,
        /// Logical xor.
        xor => Xor,
    }

    /// Converts to `dtype`.
    #[track_caller]
    pub fn cast(self, dtype: DType) -> Result<Tensor<'g>> {
        if self.dtype() == dtype {
            return Ok(self);
        }
        self.op(Op::Cast { to: dtype }, &[], SourceLoc::caller())
    }

    fn reduce(
        self,
        f: ReduceOp,
        name: &str,
        axes: &[i64],
        keepdims: bool,
        loc: SourceLoc,
    ) -> Result<Tensor<'g>> {
        let mut ax = Vec::with_capacity(axes.len());
        for &a in axes {
            ax.push(self.axis(name, a, &loc)?);
        }
        ax.sort_unstable();
        if ax.windows(2).any(|w| w[0] == w[1]) {
            return Err(self.err(name, &[], loc, format!("axes {axes:?} repeat an axis")));
        }
        self.op(
            Op::Reduce {
                f,
                axes: ax,
                keepdims,
            },
            &[],
            loc,
        )
    }

    /// Sum over `axes` (negative axes count from the end).
    #[track_caller]
    pub fn sum(self, axes: &[i64], keepdims: bool) -> Result<Tensor<'g>> {
        self.reduce(
            ReduceOp::Sum,
            "reduce_sum",
            axes,
            keepdims,
            SourceLoc::caller(),
        )
    }

    /// Product over `axes`.
    #[track_caller]
    pub fn prod(self, axes: &[i64], keepdims: bool) -> Result<Tensor<'g>> {
        self.reduce(
            ReduceOp::Prod,
            "reduce_prod",
            axes,
            keepdims,
            SourceLoc::caller(),
        )
    }

    /// Maximum over `axes`.
    #[track_caller]
    pub fn max(self, axes: &[i64], keepdims: bool) -> Result<Tensor<'g>> {
        self.reduce(
            ReduceOp::Max,
            "reduce_max",
            axes,
            keepdims,
            SourceLoc::caller(),
        )
    }

    /// Minimum over `axes`.
    #[track_caller]
    pub fn min(self, axes: &[i64], keepdims: bool) -> Result<Tensor<'g>> {
        self.reduce(
            ReduceOp::Min,
            "reduce_min",
            axes,
            keepdims,
            SourceLoc::caller(),
        )
    }

    /// Sum over every axis, as a scalar.
    #[track_caller]
    pub fn sum_all(self) -> Result<Tensor<'g>> {
        let axes: Vec<i64> = (0..self.rank() as i64).collect();
        self.reduce(
            ReduceOp::Sum,
            "reduce_sum",
            &axes,
            false,
            SourceLoc::caller(),
        )
    }

    /// Mean over `axes`: a sum times a constant. The reduced dims must be fixed.
    #[track_caller]
    pub fn mean(self, axes: &[i64], keepdims: bool) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        let shape = self.shape();
        let mut count = 1usize;
        let mut symbolic = false;
        for &a in axes {
            let i = self.axis("mean", a, &loc)?;
            match &shape.0[i] {
                Dim::Fixed(n) => count *= n,
                _ => symbolic = true,
            }
        }
        if !self.dtype().is_float() {
            return Err(self.err(
                "mean",
                &[],
                loc,
                format!("mean needs f32 or f64, got {}", self.dtype()),
            ));
        }
        if symbolic {
            // The count is an expression (`batch*seq`): a shape value,
            // a constant of each compiled program.
            let s = self.reduce(ReduceOp::Sum, "reduce_sum", axes, keepdims, loc.clone())?;
            let mut count = DimExpr::val(1);
            for &a in axes {
                let i = self.axis("mean", a, &loc)?;
                count = count
                    .mul(&shape.0[i].expr())
                    .map_err(|e| self.err("mean", &[], loc.clone(), e))?;
            }
            let n = self.b.sizes_value(&[count], &[], loc.clone())?.op(
                Op::Cast { to: self.dtype() },
                &[],
                loc.clone(),
            )?;
            return s.op(Op::Binary { f: BinaryOp::Div }, &[n], loc);
        }
        let s = self.reduce(ReduceOp::Sum, "reduce_sum", axes, keepdims, loc.clone())?;
        let inv = self.b.push(
            Op::Constant {
                value: crate::op::Weight::new(Array::filled(self.dtype(), &[], 1.0 / count as f64)),
            },
            &[],
            loc.clone(),
        )?;
        s.op(Op::Binary { f: BinaryOp::Mul }, &[inv], loc)
    }

    /// Index of the maximum along `axis` (i64).
    #[track_caller]
    pub fn argmax(self, axis: i64, keepdims: bool) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        let axis = self.axis("argmax", axis, &loc)?;
        self.op(
            Op::ArgReduce {
                f: ArgOp::ArgMax,
                axis,
                keepdims,
            },
            &[],
            loc,
        )
    }

    /// Index of the minimum along `axis` (i64).
    #[track_caller]
    pub fn argmin(self, axis: i64, keepdims: bool) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        let axis = self.axis("argmin", axis, &loc)?;
        self.op(
            Op::ArgReduce {
                f: ArgOp::ArgMin,
                axis,
                keepdims,
            },
            &[],
            loc,
        )
    }

    /// Same elements in a new shape of equal element count.
    #[track_caller]
    pub fn reshape(self, shape: impl Into<Shape>) -> Result<Tensor<'g>> {
        self.op(
            Op::Reshape {
                shape: shape.into(),
            },
            &[],
            SourceLoc::caller(),
        )
    }

    /// Reshape with ONNX conventions: `0` copies the input dim at that position,
    /// one `-1` is inferred from the element count (symbolic dims included).
    #[track_caller]
    pub fn reshape_to(self, dims: &[i64]) -> Result<Tensor<'g>> {
        let dims: Vec<DimExpr> = dims.iter().map(|&d| DimExpr::val(d)).collect();
        self.reshape_like_onnx(&dims, SourceLoc::caller())
    }

    /// [`reshape_to`](Tensor::reshape_to) with sizes that are expressions
    /// over symbols (a shape computed from other tensors' shapes): a
    /// constant `0` copies the input dim, one constant `-1` is inferred as
    /// the element count divided by the others (`batch*seq*768 / (batch*768)
    /// = seq`).
    #[track_caller]
    pub fn reshape_dims(self, dims: &[DimExpr]) -> Result<Tensor<'g>> {
        self.reshape_like_onnx(dims, SourceLoc::caller())
    }

    fn reshape_like_onnx(self, dims: &[DimExpr], loc: SourceLoc) -> Result<Tensor<'g>> {
        let input = self.shape();
        let fail = |reason: String| self.err("reshape", &[], loc.clone(), reason);
        let list = || {
            let d: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            format!("[{}]", d.join(", "))
        };
        let mut out: Vec<Option<Dim>> = Vec::with_capacity(dims.len());
        for (i, d) in dims.iter().enumerate() {
            out.push(match d.as_const() {
                Some(-1) => None,
                Some(0) => Some(input.0.get(i).cloned().ok_or_else(|| {
                    fail(format!(
                        "dim {i} is 0 (copy) but the input has rank {}",
                        input.rank()
                    ))
                })?),
                _ if d.is_nonneg() => {
                    Some(Dim::from_expr(d.clone()).map_err(|e| fail(format!("dim {i}: {e}")))?)
                }
                _ => return Err(fail(format!("invalid target dim {d} in {}", list()))),
            });
        }
        let holes = out.iter().filter(|d| d.is_none()).count();
        if holes > 1 {
            return Err(fail(format!("more than one -1 in {}", list())));
        }
        if holes == 1 {
            let known = Shape(out.iter().flatten().cloned().collect());
            let cannot =
                |why: String| fail(format!("cannot infer -1 in {} from {input}: {why}", list()));
            let total = input.size_expr().map_err(&cannot)?;
            let part = known.size_expr().map_err(&cannot)?;
            if part == DimExpr::val(0) {
                return Err(cannot("the other dims hold no elements".into()));
            }
            let fill = total.div_floor(&part).map_err(&cannot)?;
            if fill.mul(&part).map_err(&cannot)? != total {
                return Err(cannot(format!("{part} does not divide {total}")));
            }
            let fill = Dim::from_expr(fill).map_err(&cannot)?;
            for d in out.iter_mut() {
                if d.is_none() {
                    *d = Some(fill.clone());
                }
            }
        }
        self.op(
            Op::Reshape {
                shape: Shape(out.into_iter().flatten().collect()),
            },
            &[],
            loc,
        )
    }

    /// Reorders dims: output dim `i` is input dim `perm[i]`.
    #[track_caller]
    pub fn permute(self, perm: &[usize]) -> Result<Tensor<'g>> {
        self.op(
            Op::Permute {
                perm: perm.to_vec(),
            },
            &[],
            SourceLoc::caller(),
        )
    }

    /// Swaps the last two dims.
    #[track_caller]
    pub fn transpose(self) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        let r = self.rank();
        if r < 2 {
            return Err(self.err("permute", &[], loc, "transpose needs rank >= 2".into()));
        }
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 2, r - 1);
        self.op(Op::Permute { perm }, &[], loc)
    }

    /// Broadcasts to `shape` by numpy's rule.
    #[track_caller]
    pub fn broadcast_to(self, shape: impl Into<Shape>) -> Result<Tensor<'g>> {
        self.op(
            Op::Broadcast {
                shape: shape.into(),
            },
            &[],
            SourceLoc::caller(),
        )
    }

    /// Strided slice, one range per dim.
    #[track_caller]
    pub fn slice(self, axes: &[SliceAxis]) -> Result<Tensor<'g>> {
        self.op(
            Op::Slice {
                axes: axes.to_vec(),
            },
            &[],
            SourceLoc::caller(),
        )
    }

    /// Slices one axis `start..end` by `step`, keeping the others whole.
    #[track_caller]
    pub fn slice_axis(self, axis: i64, start: i64, end: i64, step: i64) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        let a = self.axis("slice", axis, &loc)?;
        let mut axes = vec![SliceAxis::FULL; self.rank()];
        axes[a] = SliceAxis { start, end, step };
        self.op(Op::Slice { axes }, &[], loc)
    }

    /// A slice of `axis` whose bounds may be expressions over the symbolic
    /// dims (`x[:, :seq]`, `x[k-q:k]`), Python-style like
    /// [`slice_axis`](Tensor::slice_axis): negative bounds count from the
    /// end, so the sign of a symbolic bound must not depend on the binding.
    /// Constant bounds give a slice; others a gather of `start + i*step`.
    #[track_caller]
    pub fn slice_dyn(
        self,
        axis: i64,
        start: &DimExpr,
        end: &DimExpr,
        step: i64,
    ) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        let a = self.axis("slice", axis, &loc)?;
        let fail = |reason: String| self.err("slice", &[], loc.clone(), reason);
        if let (Some(s), Some(e)) = (start.as_const(), end.as_const()) {
            let mut axes = vec![SliceAxis::FULL; self.rank()];
            axes[a] = SliceAxis {
                start: s,
                end: e,
                step,
            };
            return self.op(Op::Slice { axes }, &[], loc);
        }
        let d = self.dim(a).expr();
        crate::shape::take_deferred();
        let range = crate::ops::movement::slice_range_expr(&d, start, end, step);
        let checks = crate::shape::take_deferred();
        let (first, len) = range.map_err(|e| fail(format!("dim {a} ({d}): {e}")))?;
        let len = Dim::from_expr(len).map_err(&fail)?;
        let b = self.b;
        let first = b.size_value(&first)?;
        let idx = b
            .iota(DType::I64, Shape(vec![len]), 0)?
            .mul(step)?
            .add(first)?;
        let out = self.gather(idx, a as i64)?;
        // The bounds' signs the build assumed are checked with the gather.
        b.add_checks(out, checks);
        Ok(out)
    }

    /// Reshape to the shape held by the i64 tensor `shape`, whose values must
    /// be known while building (a shape value: [`GraphBuilder::shape_of`]
    /// and what is computed from it), with [`reshape_to`](Tensor::reshape_to)'s
    /// `0` and `-1`.
    #[track_caller]
    pub fn reshape_by(self, shape: Tensor<'g>) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        let dims = self.shape_operand("reshape", shape, &loc)?;
        self.reshape_like_onnx(&dims, loc)
    }

    /// The values of a 1-D tensor operand that holds a shape.
    pub(crate) fn shape_operand(
        self,
        op: &str,
        shape: Tensor<'g>,
        loc: &SourceLoc,
    ) -> Result<Vec<DimExpr>> {
        if shape.rank() != 1 || !shape.dtype().is_int() {
            return Err(self.err(
                op,
                &[shape],
                loc.clone(),
                format!("the shape must be a 1-D integer tensor, got {}", shape.ty()),
            ));
        }
        shape.sym_values().ok_or_else(|| {
            self.err(
                op,
                &[shape],
                loc.clone(),
                format!(
                    "the shape '{}' is computed from tensor data at run time; it must be \
                     known while building (a constant, or computed from shapes)",
                    shape.name()
                ),
            )
        })
    }

    /// Pads with `value`: `before[i]` and `after[i]` elements on dim `i`.
    #[track_caller]
    pub fn pad(self, before: &[usize], after: &[usize], value: f64) -> Result<Tensor<'g>> {
        self.op(
            Op::Pad {
                before: before.to_vec(),
                after: after.to_vec(),
                value,
            },
            &[],
            SourceLoc::caller(),
        )
    }

    /// Inserts a size-1 dim at `axis` (which may be `rank`).
    #[track_caller]
    pub fn unsqueeze(self, axis: i64) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        let a = crate::shape::normalize_axis(axis, self.rank() + 1)
            .map_err(|r| self.err("reshape", &[], loc.clone(), r))?;
        let mut s = self.shape();
        s.0.insert(a, Dim::Fixed(1));
        self.op(Op::Reshape { shape: s }, &[], loc)
    }

    /// Removes the size-1 dim at `axis`.
    #[track_caller]
    pub fn squeeze(self, axis: i64) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        let a = self.axis("reshape", axis, &loc)?;
        let mut s = self.shape();
        if s.0[a] != Dim::Fixed(1) {
            return Err(self.err(
                "reshape",
                &[],
                loc,
                format!("cannot squeeze dim {a} of size {}", s.0[a]),
            ));
        }
        s.0.remove(a);
        self.op(Op::Reshape { shape: s }, &[], loc)
    }

    /// Matrix product; 1-D operands are treated as a row (lhs) or column (rhs)
    /// vector and that dim is removed from the result, as numpy does.
    #[track_caller]
    pub fn matmul(self, rhs: Tensor<'g>) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        if self.rank() == 0 || rhs.rank() == 0 {
            return Err(self.err("matmul", &[rhs], loc, "operands must have rank >= 1".into()));
        }
        let a = if self.rank() == 1 {
            self.op(
                Op::Reshape {
                    shape: prepend1(self.shape()),
                },
                &[],
                loc.clone(),
            )?
        } else {
            self
        };
        let b = if rhs.rank() == 1 {
            rhs.op(
                Op::Reshape {
                    shape: append1(rhs.shape()),
                },
                &[],
                loc.clone(),
            )?
        } else {
            rhs
        };
        let mut out =
            a.b.push(Op::MatMul, &[a, b], loc.clone())
                .map_err(|e| relabel(e, self, rhs))?;
        if self.rank() == 1 {
            out = out.squeeze_at(-2, &loc)?;
        }
        if rhs.rank() == 1 {
            out = out.squeeze_at(-1, &loc)?;
        }
        Ok(out)
    }

    fn squeeze_at(self, axis: i64, loc: &SourceLoc) -> Result<Tensor<'g>> {
        let a = self.axis("reshape", axis, loc)?;
        let mut s = self.shape();
        s.0.remove(a);
        self.op(Op::Reshape { shape: s }, &[], loc.clone())
    }

    /// 2-D convolution of an NCHW input with an OIHW weight.
    #[track_caller]
    pub fn conv2d(self, weight: Tensor<'g>, opts: Conv2dOptions) -> Result<Tensor<'g>> {
        let Conv2dOptions {
            stride,
            padding,
            dilation,
            groups,
        } = opts;
        self.op(
            Op::Conv2d {
                stride,
                padding,
                dilation,
                groups,
                channels_last: false,
            },
            &[weight],
            SourceLoc::caller(),
        )
    }

    /// Max pooling over windows of the last two dims.
    #[track_caller]
    pub fn max_pool2d(self, window: Window2d) -> Result<Tensor<'g>> {
        self.op(Op::MaxPool2d { window }, &[], SourceLoc::caller())
    }

    /// Average pooling over windows of the last two dims.
    #[track_caller]
    pub fn avg_pool2d(self, window: Window2d, count_include_pad: bool) -> Result<Tensor<'g>> {
        self.op(
            Op::AvgPool2d {
                window,
                count_include_pad,
            },
            &[],
            SourceLoc::caller(),
        )
    }

    /// `out[pre, i, post] = self[pre, indices[i], post]` along `axis`.
    #[track_caller]
    pub fn gather(self, indices: Tensor<'g>, axis: i64) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        let axis = self.axis("gather", axis, &loc)?;
        self.op(Op::Gather { axis }, &[indices], loc)
    }

    /// `self` with `updates` added at `indices` along `axis` (the adjoint of gather).
    #[track_caller]
    pub fn scatter_add(
        self,
        indices: Tensor<'g>,
        updates: Tensor<'g>,
        axis: i64,
    ) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        let axis = self.axis("scatter_add", axis, &loc)?;
        self.op(Op::ScatterAdd { axis }, &[indices, updates], loc)
    }

    /// Assigns `value` to this variable at the end of the run; yields `value`.
    #[track_caller]
    pub fn assign(self, value: Tensor<'g>) -> Result<Tensor<'g>> {
        self.op(Op::Assign, &[value], SourceLoc::caller())
    }
}

fn prepend1(s: Shape) -> Shape {
    let mut v = vec![Dim::Fixed(1)];
    v.extend(s.0);
    Shape(v)
}

fn append1(mut s: Shape) -> Shape {
    s.0.push(Dim::Fixed(1));
    s
}

/// Reports a matmul error with the user's operand types, not the internal reshapes.
fn relabel(e: crate::error::Error, a: Tensor<'_>, b: Tensor<'_>) -> crate::error::Error {
    match e {
        crate::error::Error::Type {
            op,
            location,
            reason,
            ..
        } => crate::error::Error::Type {
            op,
            location,
            reason,
            operands: format!("{}, {}", a.ty(), b.ty()),
        },
        other => other,
    }
}
