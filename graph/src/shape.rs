//! Shapes with fixed and named symbolic dimensions, and the broadcasting rule.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

use crate::dtype::DType;

/// One dimension of a shape: a fixed size or a named symbolic size such as `batch`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    /// A size known when the graph is built.
    Fixed(usize),
    /// A size bound when the session is fed; all dims of the same name are equal.
    Sym(String),
}

impl Dim {
    /// A symbolic dimension named `name`.
    pub fn sym(name: &str) -> Dim {
        Dim::Sym(name.to_string())
    }

    /// The fixed size, if this dim is fixed.
    pub fn fixed(&self) -> Option<usize> {
        match self {
            Dim::Fixed(n) => Some(*n),
            Dim::Sym(_) => None,
        }
    }

    /// The concrete size under `bindings`, if known.
    pub fn resolve(&self, bindings: &Bindings) -> Option<usize> {
        match self {
            Dim::Fixed(n) => Some(*n),
            Dim::Sym(s) => bindings.get(s).copied(),
        }
    }
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

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
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
        self.0.iter().any(|d| matches!(d, Dim::Sym(_)))
    }

    /// The names of the symbolic dims, in order of first appearance.
    pub fn symbols(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for d in &self.0 {
            if let Dim::Sym(s) = d {
                if !out.contains(&s.as_str()) {
                    out.push(s);
                }
            }
        }
        out
    }

    /// The concrete sizes under `bindings`; `Err(name)` names the first unbound symbol.
    pub fn resolve(&self, bindings: &Bindings) -> Result<Vec<usize>, String> {
        self.0
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => Ok(*n),
                Dim::Sym(s) => bindings.get(s).copied().ok_or_else(|| s.clone()),
            })
            .collect()
    }

    /// Number of elements when every dim is fixed.
    /// `None` when a dim is symbolic or the count overflows.
    pub fn num_elements(&self) -> Option<usize> {
        self.as_fixed()
            .and_then(|d| crate::array::checked_product(&d))
    }

    /// The symbolic element count: a fixed factor times a sorted list of symbols.
    pub fn symbolic_size(&self) -> (usize, Vec<String>) {
        let mut n = 1usize;
        let mut syms = Vec::new();
        for d in &self.0 {
            match d {
                Dim::Fixed(k) => n = n.saturating_mul(*k),
                Dim::Sym(s) => syms.push(s.clone()),
            }
        }
        syms.sort();
        (n, syms)
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
pub fn broadcast_dim(a: &Dim, b: &Dim) -> Option<Dim> {
    match (a, b) {
        (Dim::Fixed(1), other) | (other, Dim::Fixed(1)) => Some(other.clone()),
        (x, y) if x == y => Some(x.clone()),
        _ => None,
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
