//! Integer index expressions over loop variables: affine sums plus floor
//! division and modulo atoms, simplified with the loop bounds so that
//! reshapes of contiguous data stay affine. Every movement op lowers to a
//! transformation of these expressions.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A non-affine building block of an [`Index`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Atom {
    /// Loop variable `i<n>`.
    Var(usize),
    /// `floor(e / k)` with `k > 0`.
    Div(Box<Index>, i64),
    /// `e mod k` (Euclidean, in `[0, k)`) with `k > 0`.
    Mod(Box<Index>, i64),
}

/// `sum(coef * atom) + constant`, with atoms sorted and coefficients nonzero.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord, Default)]
pub struct Index {
    /// The terms.
    pub terms: Vec<(i64, Atom)>,
    /// The constant part.
    pub constant: i64,
}

/// Extents of the loop variables (`i<n>` ranges over `0..extents[n]`).
pub type Extents = [usize];

impl Index {
    /// Whether loop variable `var` appears in the expression (also inside
    /// a division or modulo).
    pub fn mentions(&self, var: usize) -> bool {
        self.terms.iter().any(|(_, a)| match a {
            Atom::Var(v) => *v == var,
            Atom::Div(i, _) | Atom::Mod(i, _) => i.mentions(var),
        })
    }

    /// The constant `c`.
    pub fn constant(c: i64) -> Index {
        Index {
            terms: Vec::new(),
            constant: c,
        }
    }

    /// Loop variable `n`.
    pub fn var(n: usize) -> Index {
        Index {
            terms: vec![(1, Atom::Var(n))],
            constant: 0,
        }
    }

    fn normalize(mut self) -> Index {
        self.terms.sort_by(|a, b| a.1.cmp(&b.1));
        let mut out: Vec<(i64, Atom)> = Vec::with_capacity(self.terms.len());
        for (c, a) in self.terms {
            match out.last_mut() {
                Some((c0, a0)) if *a0 == a => *c0 += c,
                _ => out.push((c, a)),
            }
        }
        out.retain(|(c, _)| *c != 0);
        // k*b*floor(x / k) + b*(x mod k) = b*x: a reshape's row-major
        // index taken apart and put back together.
        for i in 0..out.len() {
            let (a, Atom::Div(x, k)) = &out[i] else {
                continue;
            };
            let found = out
                .iter()
                .position(|(b, m)| matches!(m, Atom::Mod(y, j) if y == x && j == k) && *a == b * k);
            if let Some(j) = found {
                let (b, x) = (out[j].0, (**x).clone());
                let (hi, lo) = (i.max(j), i.min(j));
                out.remove(hi);
                out.remove(lo);
                self.terms = out;
                return self.add(&x.mul(b));
            }
        }
        self.terms = out;
        self
    }

    /// `self = c*x + y` with `0 <= y < c` over the loop, for a `c` that
    /// divides `k` (the coefficient of an outer index of a reshape): then
    /// `floor(self / k) = floor(x / (k/c))` and `self mod k = c*(x mod k/c)
    /// + y`. `None` where no coefficient does.
    fn factor(&self, k: i64, ext: &Extents) -> Option<(i64, Index, Index)> {
        let mut cs: Vec<i64> = self
            .terms
            .iter()
            .map(|(c, _)| c.abs())
            .filter(|&c| c > 1 && c < k && k % c == 0)
            .collect();
        cs.sort_unstable();
        cs.dedup();
        cs.into_iter().rev().find_map(|c| {
            let (x, y) = self.split(c);
            let (lo, hi) = y.range(ext);
            (lo >= 0 && hi < c).then_some((c, x, y))
        })
    }

    /// `self + other`.
    pub fn add(&self, other: &Index) -> Index {
        let mut terms = self.terms.clone();
        terms.extend(other.terms.iter().cloned());
        Index {
            terms,
            constant: self.constant + other.constant,
        }
        .normalize()
    }

    /// `self + c`.
    pub fn add_const(&self, c: i64) -> Index {
        Index {
            terms: self.terms.clone(),
            constant: self.constant + c,
        }
    }

    /// `self * k`.
    pub fn mul(&self, k: i64) -> Index {
        if k == 0 {
            return Index::constant(0);
        }
        Index {
            terms: self.terms.iter().map(|(c, a)| (c * k, a.clone())).collect(),
            constant: self.constant * k,
        }
    }

    /// The inclusive range of values over the loop.
    pub fn range(&self, ext: &Extents) -> (i64, i64) {
        let (mut lo, mut hi) = (self.constant, self.constant);
        for (c, a) in &self.terms {
            let (alo, ahi) = a.range(ext);
            let (x, y) = (c * alo, c * ahi);
            lo += x.min(y);
            hi += x.max(y);
        }
        (lo, hi)
    }

    /// Splits into (multiple of `k` divided by `k`, remainder): `self = k*q + r`.
    fn split(&self, k: i64) -> (Index, Index) {
        let mut q = Index::default();
        let mut r = Index::default();
        for (c, a) in &self.terms {
            if c % k == 0 {
                q.terms.push((c / k, a.clone()));
            } else {
                r.terms.push((*c, a.clone()));
            }
        }
        q.constant = self.constant.div_euclid(k);
        r.constant = self.constant.rem_euclid(k);
        (q.normalize(), r.normalize())
    }

    /// `floor(self / k)`, simplified when the remainder stays in `[0, k)`.
    pub fn div(&self, k: i64, ext: &Extents) -> Index {
        if k == 1 {
            return self.clone();
        }
        let (q, r) = self.split(k);
        let (lo, hi) = r.range(ext);
        if lo >= 0 && hi < k {
            return q;
        }
        if lo >= 0 && r.terms.is_empty() {
            return q.add_const(r.constant / k);
        }
        let (lo, hi) = self.range(ext);
        if lo == hi {
            return Index::constant(lo.div_euclid(k));
        }
        // floor((k*q + r) / k) = q + floor(r / k) for integral q.
        if q != Index::default() {
            return q.add(&r.div(k, ext));
        }
        if let Some((c, x, _)) = self.factor(k, ext) {
            return x.div(k / c, ext);
        }
        Index {
            terms: vec![(1, Atom::Div(Box::new(self.clone()), k))],
            constant: 0,
        }
    }

    /// `self mod k`, simplified when the remainder stays in `[0, k)`.
    pub fn modulo(&self, k: i64, ext: &Extents) -> Index {
        if k == 1 {
            return Index::constant(0);
        }
        let (_, r) = self.split(k);
        let (lo, hi) = r.range(ext);
        if lo >= 0 && hi < k {
            return r;
        }
        let (lo, hi) = self.range(ext);
        if lo >= 0 && hi < k {
            return self.clone();
        }
        if let Some((c, x, y)) = r.factor(k, ext) {
            return x.modulo(k / c, ext).mul(c).add(&y);
        }
        Index {
            terms: vec![(1, Atom::Mod(Box::new(r), k))],
            constant: 0,
        }
    }

    /// The value for concrete loop variables.
    pub fn eval(&self, vars: &[usize]) -> i64 {
        self.constant
            + self
                .terms
                .iter()
                .map(|(c, a)| c * a.eval(vars))
                .sum::<i64>()
    }

    /// The coefficient of each loop variable if the expression is affine.
    pub fn affine(&self, rank: usize) -> Option<Vec<i64>> {
        let mut co = vec![0; rank];
        for (c, a) in &self.terms {
            match a {
                Atom::Var(v) if *v < rank => co[*v] += c,
                _ => return None,
            }
        }
        Some(co)
    }
}

impl Atom {
    fn range(&self, ext: &Extents) -> (i64, i64) {
        match self {
            Atom::Var(v) => (0, ext.get(*v).map_or(0, |&e| e as i64 - 1).max(0)),
            Atom::Div(e, k) => {
                let (lo, hi) = e.range(ext);
                (lo.div_euclid(*k), hi.div_euclid(*k))
            }
            Atom::Mod(_, k) => (0, k - 1),
        }
    }

    fn eval(&self, vars: &[usize]) -> i64 {
        match self {
            Atom::Var(v) => vars[*v] as i64,
            Atom::Div(e, k) => e.eval(vars).div_euclid(*k),
            Atom::Mod(e, k) => e.eval(vars).rem_euclid(*k),
        }
    }
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Atom::Var(v) => write!(f, "i{v}"),
            Atom::Div(e, k) => write!(f, "({e})/{k}"),
            Atom::Mod(e, k) => write!(f, "({e})%{k}"),
        }
    }
}

impl fmt::Display for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (c, a) in &self.terms {
            let sep = if first { "" } else { " + " };
            match c {
                1 => write!(f, "{sep}{a}")?,
                -1 if first => write!(f, "-{a}")?,
                c => write!(f, "{sep}{c}*{a}")?,
            }
            first = false;
        }
        if first {
            write!(f, "{}", self.constant)
        } else if self.constant != 0 {
            write!(f, " + {}", self.constant)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_of_contiguous_data_stays_affine() {
        // Loop over [4, 6]; linear = 6*i0 + i1; view as [4, 2, 3].
        let ext = [4usize, 6];
        let lin = Index::var(0).mul(6).add(&Index::var(1));
        assert_eq!(lin.div(6, &ext), Index::var(0));
        assert_eq!(lin.modulo(6, &ext), Index::var(1));
        let mid = lin.modulo(6, &ext).div(3, &ext);
        assert_eq!(mid.to_string(), "(i1)/3");
        assert_eq!(lin.div(24, &ext), Index::constant(0));
    }

    #[test]
    fn a_reshape_taken_apart_and_put_back_is_the_identity() {
        // [512, 1024] as [8, 64, 1024] and back: i1 + 65536*(lin / 65536)
        // + 1024*((lin / 1024) % 64) is lin itself.
        let ext = [512usize, 1024];
        let lin = Index::var(0).mul(1024).add(&Index::var(1));
        let outer = lin.div(65536, &ext);
        assert_eq!(outer.to_string(), "(i0)/64");
        let mid = lin.div(1024, &ext).modulo(64, &ext);
        let back = outer
            .mul(65536)
            .add(&mid.mul(1024))
            .add(&lin.modulo(1024, &ext));
        assert_eq!(back, lin);
    }

    #[test]
    fn evaluation_matches_simplification() {
        let ext = [3usize, 5, 7];
        let e0 = Index::var(0)
            .mul(35)
            .add(&Index::var(1).mul(7))
            .add(&Index::var(2));
        // With and without a constant (without, 7 and 35 factor out).
        for (e, k) in [e0.add_const(3), e0]
            .iter()
            .flat_map(|e| [1, 2, 5, 7, 14, 35, 36, 70, 105].map(|k| (e.clone(), k)))
        {
            let (d, m) = (e.div(k, &ext), e.modulo(k, &ext));
            for a in 0..3 {
                for b in 0..5 {
                    for c in 0..7 {
                        let v = e.eval(&[a, b, c]);
                        assert_eq!(d.eval(&[a, b, c]), v.div_euclid(k), "{e} / {k} = {d}");
                        assert_eq!(m.eval(&[a, b, c]), v.rem_euclid(k), "{e} % {k} = {m}");
                    }
                }
            }
        }
    }
}
