//! Shapes whose dims are fixed sizes, symbols or expressions over symbols,
//! the broadcasting rule, and the size checks deferred to binding time.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::dim_expr::DimExpr;

use crate::dtype::DType;

/// One dimension of a shape: a fixed size, a named symbolic size such as
/// `batch`, or an expression over symbols (`batch*seq`, `(seq+1)/2`).
///
/// The form is canonical: a constant expression is `Fixed`, a lone symbol
/// is `Sym`, so equal sizes compare equal; build `Expr` dims with
/// [`Dim::from_expr`] or the arithmetic operators.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A size known when the graph is built.
    Fixed(usize),
    /// A size bound when the session is fed; all dims of the same name are equal.
    Sym(String),
    /// An expression over symbols, neither a constant nor one symbol.
    Expr(Arc<DimExpr>),
}

impl Dim {
    /// A symbolic dimension named `name`.
    pub fn sym(name: &str) -> Dim {
        Dim::Sym(name.to_string())
    }

    /// The dim whose size is `e`: an error when `e` is provably negative.
    pub fn from_expr(e: DimExpr) -> Result<Dim, String> {
        if let Some(c) = e.as_const() {
            return usize::try_from(c)
                .map(Dim::Fixed)
                .map_err(|_| format!("a size of {c}, which is negative"));
        }
        if let Some(s) = e.as_sym() {
            return Ok(Dim::Sym(s.to_string()));
        }
        if e.bounds().1 < 0 {
            return Err(format!("the size {e}, which is negative for every binding"));
        }
        Ok(Dim::Expr(Arc::new(e)))
    }

    /// The size as an expression.
    pub fn expr(&self) -> DimExpr {
        match self {
            Dim::Fixed(n) => DimExpr::val(i64::try_from(*n).unwrap_or(i64::MAX)),
            Dim::Sym(s) => DimExpr::sym(s),
            Dim::Expr(e) => (**e).clone(),
        }
    }

    /// The fixed size, if this dim is fixed.
    pub fn fixed(&self) -> Option<usize> {
        match self {
            Dim::Fixed(n) => Some(*n),
            _ => None,
        }
    }

    /// True unless the dim is fixed.
    pub fn is_symbolic(&self) -> bool {
        !matches!(self, Dim::Fixed(_))
    }

    /// The concrete size under `bindings`, if known (and not negative).
    pub fn resolve(&self, bindings: &Bindings) -> Option<usize> {
        self.eval(bindings).ok()
    }

    /// The concrete size under `bindings`; an error names the unbound
    /// symbol, or gives the negative or overflowing value.
    pub fn eval(&self, bindings: &Bindings) -> Result<usize, String> {
        match self {
            Dim::Fixed(n) => Ok(*n),
            Dim::Sym(s) => bindings
                .get(s)
                .copied()
                .ok_or_else(|| format!("symbolic dim '{s}' is not bound")),
            Dim::Expr(e) => {
                let v = e.eval(bindings)?;
                usize::try_from(v).map_err(|_| format!("the size {e} is {v}, which is negative"))
            }
        }
    }

    /// The dim with the bound symbols replaced by their sizes.
    pub fn substitute(&self, bindings: &Bindings) -> Result<Dim, String> {
        match self {
            Dim::Fixed(_) => Ok(self.clone()),
            _ => Dim::from_expr(self.expr().substitute(bindings)?),
        }
    }

    fn arith(
        &self,
        other: &Dim,
        op: &str,
        f: impl Fn(&DimExpr, &DimExpr) -> Result<DimExpr, String>,
    ) -> Dim {
        f(&self.expr(), &other.expr())
            .and_then(Dim::from_expr)
            .unwrap_or_else(|e| panic!("dim arithmetic {self} {op} {other}: {e}"))
    }
}

macro_rules! dim_ops {
    ($($tr:ident $m:ident $sym:literal $f:expr;)*) => {$(
        impl std::ops::$tr<Dim> for Dim {
            type Output = Dim;
            /// Panics on overflow or a negative result, like integer arithmetic.
            fn $m(self, o: Dim) -> Dim { self.arith(&o, $sym, $f) }
        }
        impl std::ops::$tr<&Dim> for &Dim {
            type Output = Dim;
            fn $m(self, o: &Dim) -> Dim { self.arith(o, $sym, $f) }
        }
        impl std::ops::$tr<usize> for Dim {
            type Output = Dim;
            fn $m(self, o: usize) -> Dim { self.arith(&Dim::Fixed(o), $sym, $f) }
        }
        impl std::ops::$tr<usize> for &Dim {
            type Output = Dim;
            fn $m(self, o: usize) -> Dim { self.arith(&Dim::Fixed(o), $sym, $f) }
        }
    )*};
}

dim_ops! {
    Add add "+" DimExpr::add;
    Sub sub "-" DimExpr::sub;
    Mul mul "*" DimExpr::mul;
    Div div "/" DimExpr::div_floor;
    Rem rem "%" DimExpr::rem_floor;
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::Fixed(n)
    }
}

impl From<&str> for Dim {
    fn from(s: &str) -> Dim {
        Dim::Sym(s.to_string())
    }
}

impl From<&Dim> for Dim {
    fn from(d: &Dim) -> Dim {
        d.clone()
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
            Dim::Expr(e) => write!(f, "{e}"),
        }
    }
}

/// How a dim is written in a `.kiln` file: a number, a symbol's name, or
/// (since format version 2) `{"expr": "batch*seq"}`.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum DimRepr {
    Fixed(usize),
    Sym(String),
    Expr { expr: DimExpr },
}

impl Serialize for Dim {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Dim::Fixed(n) => DimRepr::Fixed(*n),
            Dim::Sym(x) => DimRepr::Sym(x.clone()),
            Dim::Expr(e) => DimRepr::Expr {
                expr: (**e).clone(),
            },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Dim {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dim, D::Error> {
        match DimRepr::deserialize(d)? {
            DimRepr::Fixed(n) => Ok(Dim::Fixed(n)),
            DimRepr::Sym(s) => Ok(Dim::Sym(s)),
            DimRepr::Expr { expr } => Dim::from_expr(expr).map_err(serde::de::Error::custom),
        }
    }
}

/// A condition on sizes that the build could not decide (is `seq` equal to
/// `n`?): checked when the symbols are bound, before anything runs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DimCheck {
    /// What the op needs, for the error (`dim 1 of operand 2`).
    pub what: String,
    /// The size found.
    pub found: Dim,
    /// The size it must equal (or be 1, or be at least: `kind`).
    pub expected: Dim,
    /// How `found` must relate to `expected`.
    pub kind: CheckKind,
}

/// How a [`DimCheck`]'s two sizes must relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// Equal.
    Equal,
    /// Equal, or `found` is 1 (it broadcasts).
    EqualOrOne,
    /// `found >= expected` (a slice bound taken to count from the front).
    AtLeast,
}

impl DimCheck {
    /// `None` when it holds under `bindings`, else why not; a symbol it
    /// uses that is not bound leaves it unchecked.
    pub fn violation(&self, bindings: &Bindings) -> Option<String> {
        let (Ok(f), Ok(e)) = (
            self.found.expr().eval(bindings),
            self.expected.expr().eval(bindings),
        ) else {
            return None;
        };
        let holds = match self.kind {
            CheckKind::Equal => f == e,
            CheckKind::EqualOrOne => f == e || f == 1,
            CheckKind::AtLeast => f >= e,
        };
        if holds {
            return None;
        }
        let (found, expected) = (self.found.expr(), self.expected.expr());
        Some(match self.kind {
            CheckKind::AtLeast => format!(
                "{}: {found} = {f} but it must be at least {expected} = {e}",
                self.what
            ),
            kind => format!(
                "{}: {found} = {f} but it must be {expected} = {e}{}",
                self.what,
                if kind == CheckKind::EqualOrOne {
                    " (or 1)"
                } else {
                    ""
                }
            ),
        })
    }
}

thread_local! {
    /// Checks deferred while one node's type is inferred; `Graph::add_node`
    /// clears them before inference and attaches them to the node after.
    static DEFERRED: std::cell::RefCell<Vec<DimCheck>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Takes the checks deferred since the last call.
pub fn take_deferred() -> Vec<DimCheck> {
    DEFERRED.with(|d| std::mem::take(&mut *d.borrow_mut()))
}

/// Records a check the op's shape rule could not decide (see [`unify_dims`]).
pub fn defer_check(check: DimCheck) {
    DEFERRED.with(|d| d.borrow_mut().push(check));
}

/// The size two dims that must be equal share: their common value when
/// they are the same expression; when both are symbolic and some binding
/// makes them equal ([`may_equal`]), the second, with the equality
/// checked when the symbols are bound; otherwise an error. (A symbolic
/// size against a fixed one is an error: that they meet is taken as a
/// mistake, not a coincidence to wait for.) `what` names them for errors.
pub fn unify_dims(a: &Dim, b: &Dim, what: &str) -> Result<Dim, String> {
    if a == b {
        return Ok(a.clone());
    }
    if !may_equal(a, b) {
        return Err(format!("{what}: {a} vs {b}"));
    }
    defer_check(DimCheck {
        what: what.to_string(),
        found: a.clone(),
        expected: b.clone(),
        kind: CheckKind::Equal,
    });
    Ok(b.clone())
}

/// Whether both dims are symbolic and some binding of their symbols to
/// sizes of at least 1 makes them equal (`seq` and `n`; not `n` and `2*n`).
pub fn may_equal(a: &Dim, b: &Dim) -> bool {
    if !a.is_symbolic() || !b.is_symbolic() {
        return false;
    }
    match a.expr().sub(&b.expr()) {
        Ok(d) => {
            let (lo, hi) = d.bounds_positive();
            lo <= 0 && hi >= 0
        }
        Err(_) => true,
    }
}

/// Whether a symbolic dim may be 1 (then it broadcasts).
pub fn may_be_one(d: &Dim) -> bool {
    d.is_symbolic() && d.expr().bounds_positive().0 <= 1
}

/// Values of symbolic dims for one run: `batch -> 32`.
pub type Bindings = BTreeMap<String, usize>;

/// A tensor shape: a list of dims (rank 0 is a scalar).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Shape(pub Vec<Dim>);

/// Builds a [`Shape`] from dims that are sizes or symbolic names:
/// `shape!["batch", 784]`.
#[macro_export]
macro_rules! shape {
    ($($d:expr),* $(,)?) => { $crate::shape::Shape(vec![$($crate::shape::Dim::from($d)),*]) };
}

impl Shape {
    /// The scalar shape `[]`.
    pub fn scalar() -> Shape {
        Shape(Vec::new())
    }

    /// A shape of fixed dims.
    pub fn fixed(dims: &[usize]) -> Shape {
        Shape(dims.iter().map(|&d| Dim::Fixed(d)).collect())
    }

    /// Number of dims.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// The dims.
    pub fn dims(&self) -> &[Dim] {
        &self.0
    }

    /// The fixed sizes, if no dim is symbolic.
    pub fn as_fixed(&self) -> Option<Vec<usize>> {
        self.0.iter().map(Dim::fixed).collect()
    }

    /// True when some dim is symbolic.
    pub fn is_symbolic(&self) -> bool {
        self.0.iter().any(Dim::is_symbolic)
    }

    /// The names of the symbols the dims use, in order of first appearance.
    pub fn symbols(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for d in &self.0 {
            match d {
                Dim::Fixed(_) => {}
                Dim::Sym(s) => {
                    if !out.contains(s) {
                        out.push(s.clone());
                    }
                }
                Dim::Expr(e) => {
                    for s in e.symbols() {
                        if !out.contains(&s) {
                            out.push(s);
                        }
                    }
                }
            }
        }
        out
    }

    /// The concrete sizes under `bindings`; the error says which dim has
    /// none (an unbound symbol) or a negative one.
    pub fn resolve(&self, bindings: &Bindings) -> Result<Vec<usize>, String> {
        self.0.iter().map(|d| d.eval(bindings)).collect()
    }

    /// The shape with the bound symbols replaced by their sizes.
    pub fn substitute(&self, bindings: &Bindings) -> Result<Shape, String> {
        self.0
            .iter()
            .map(|d| d.substitute(bindings))
            .collect::<Result<Vec<_>, _>>()
            .map(Shape)
    }

    /// The element count as an expression.
    pub fn size_expr(&self) -> Result<DimExpr, String> {
        self.0
            .iter()
            .try_fold(DimExpr::val(1), |acc, d| acc.mul(&d.expr()))
    }

    /// Number of elements when every dim is fixed.
    /// `None` when a dim is symbolic or the count overflows.
    pub fn num_elements(&self) -> Option<usize> {
        self.as_fixed()
            .and_then(|d| crate::array::checked_product(&d))
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Shape {
        Shape::fixed(&d)
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Shape {
        Shape::fixed(d)
    }
}

impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Shape {
        Shape::fixed(&d)
    }
}

impl From<Vec<Dim>> for Shape {
    fn from(d: Vec<Dim>) -> Shape {
        Shape(d)
    }
}

impl<const N: usize> From<[Dim; N]> for Shape {
    fn from(d: [Dim; N]) -> Shape {
        Shape(d.to_vec())
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Broadcasts two dims by numpy's rule; `None` when they are incompatible.
/// Two different symbolic sizes that may be equal, or the second of which
/// may be 1, give the first, with that checked when they are bound
/// ([`DimCheck`]); a symbolic size against a fixed one other than 1 is
/// incompatible.
pub fn broadcast_dim(a: &Dim, b: &Dim) -> Option<Dim> {
    match (a, b) {
        (Dim::Fixed(1), other) | (other, Dim::Fixed(1)) => Some(other.clone()),
        (x, y) if x == y => Some(x.clone()),
        (x, y) => {
            let (keep, other) = (x, y);
            if !(may_equal(keep, other) || (keep.is_symbolic() && may_be_one(other))) {
                return None;
            }
            defer_check(DimCheck {
                what: "broadcast".into(),
                found: other.clone(),
                expected: keep.clone(),
                kind: CheckKind::EqualOrOne,
            });
            Some(keep.clone())
        }
    }
}

/// Broadcasts shapes by numpy's rule (align trailing dims; 1 stretches).
pub fn broadcast_shapes(shapes: &[&Shape]) -> Result<Shape, String> {
    let rank = shapes.iter().map(|s| s.rank()).max().unwrap_or(0);
    let mut out = vec![Dim::Fixed(1); rank];
    for s in shapes {
        let off = rank - s.rank();
        for (i, d) in s.0.iter().enumerate() {
            out[off + i] = broadcast_dim(&out[off + i], d).ok_or_else(|| {
                let list: Vec<String> = shapes.iter().map(|s| s.to_string()).collect();
                format!(
                    "shapes {} do not broadcast (dim {} of the result: {} vs {})",
                    list.join(" and "),
                    off + i,
                    out[off + i],
                    d
                )
            })?;
        }
    }
    Ok(Shape(out))
}

/// Broadcasts concrete shapes by numpy's rule.
pub fn broadcast_concrete(shapes: &[&[usize]]) -> Option<Vec<usize>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[off + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return None;
            }
        }
    }
    Some(out)
}

/// The static type of a tensor: dtype and shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorType {
    /// Element type.
    pub dtype: DType,
    /// Shape, possibly with symbolic dims.
    pub shape: Shape,
}

impl TensorType {
    /// A new tensor type.
    pub fn new(dtype: DType, shape: impl Into<Shape>) -> TensorType {
        TensorType {
            dtype,
            shape: shape.into(),
        }
    }

    /// Rank of the shape.
    pub fn rank(&self) -> usize {
        self.shape.rank()
    }

    /// Bytes of one tensor of this type, when all dims are fixed.
    pub fn size_bytes(&self) -> Option<usize> {
        self.shape
            .num_elements()
            .map(|n| n * self.dtype.size_bytes())
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, self.shape)
    }
}

/// Row-major strides of a concrete shape, in elements.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Strides for reading an input of shape `input` broadcast to `output`
/// (0 where the input dim is 1 or missing).
pub fn broadcast_strides(input: &[usize], output: &[usize]) -> Vec<usize> {
    let st = strides(input);
    let off = output.len() - input.len();
    (0..output.len())
        .map(|i| {
            if i < off || input[i - off] == 1 {
                0
            } else {
                st[i - off]
            }
        })
        .collect()
}

/// Normalises a possibly negative axis against `rank`.
pub fn normalize_axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    if axis < -r || axis >= r.max(0) {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    Ok(if axis < 0 {
        (axis + r) as usize
    } else {
        axis as usize
    })
}
