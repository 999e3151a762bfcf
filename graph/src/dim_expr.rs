//! Integer expressions over named symbols (`batch*seq`, `(seq+1)/2`,
//! `min(seq,512)`), kept in one canonical form so that equal sizes reached
//! by different paths compare equal.
//!
//! An expression is a sum of terms, each an integer coefficient times a
//! product of atoms; an atom is a symbol, a floor division of an expression
//! by a constant above 1, a remainder by one, or a min/max of expressions. The canonical form:
//! atoms in each product sorted, terms sorted by their products and merged,
//! no zero coefficient, constants folded, `floor((d*a + b)/d) = a +
//! floor(b/d)`, nested divisions joined, remainders `x % d` with `x`'s
//! coefficients reduced below `d` (so `(2*seq+3) % 2 = 1`).
//! It is like tract's `TDim`; unlike it, every operation is checked (an
//! overflow is an error, never a wrong size) and min/max decide by interval
//! bounds (`min(seq, seq+1) = seq`).
//!
//! Symbols stand for sizes: every symbol is taken to lie in
//! `0..=SYMBOL_MAX`, which [`check_binding`] enforces when a size is bound.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The largest size a symbol may be bound to (2^40): the bound that lets
/// `min(seq, 9223372036854775807)` simplify to `seq`.
pub const SYMBOL_MAX: i64 = 1 << 40;

/// Checks that a symbol may take `value` (at most [`SYMBOL_MAX`]).
pub fn check_binding(name: &str, value: usize) -> Result<(), String> {
    if value as u128 > SYMBOL_MAX as u128 {
        return Err(format!(
            "'{name}' = {value} is too large: a symbolic dim may be at most 2^40 = {SYMBOL_MAX}"
        ));
    }
    Ok(())
}

/// An integer expression over named symbols, in canonical form.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct DimExpr {
    /// Sorted by `atoms`, no two with the same `atoms`, no zero `coef`.
    terms: Vec<Term>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Term {
    /// A sorted product; empty for the constant term.
    atoms: Vec<Atom>,
    coef: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Atom {
    Sym(String),
    /// `floor(e / d)`, `d > 1`, `e` not a constant.
    Div(Box<DimExpr>, i64),
    /// `e mod d` (floor: in `0..d`), `d > 1`, `e`'s coefficients and
    /// constant reduced below `d`, `e` not already in `0..d`.
    Mod(Box<DimExpr>, i64),
    /// At least two expressions, sorted, none provably below another.
    Min(Vec<DimExpr>),
    Max(Vec<DimExpr>),
}

type Res = Result<DimExpr, String>;

fn overflow() -> String {
    "integer overflow in a dim expression".to_string()
}

impl DimExpr {
    /// The constant `v`.
    pub fn val(v: i64) -> DimExpr {
        if v == 0 {
            DimExpr::default()
        } else {
            DimExpr {
                terms: vec![Term {
                    atoms: Vec::new(),
                    coef: v,
                }],
            }
        }
    }

    /// The symbol `name`.
    pub fn sym(name: &str) -> DimExpr {
        DimExpr::atom(Atom::Sym(name.to_string()))
    }

    fn atom(a: Atom) -> DimExpr {
        DimExpr {
            terms: vec![Term {
                atoms: vec![a],
                coef: 1,
            }],
        }
    }

    /// The value, when the expression is a constant.
    pub fn as_const(&self) -> Option<i64> {
        match self.terms.as_slice() {
            [] => Some(0),
            [t] if t.atoms.is_empty() => Some(t.coef),
            _ => None,
        }
    }

    /// The symbol's name, when the expression is one symbol.
    pub fn as_sym(&self) -> Option<&str> {
        match self.terms.as_slice() {
            [Term { atoms, coef: 1 }] => match atoms.as_slice() {
                [Atom::Sym(s)] => Some(s),
                _ => None,
            },
            _ => None,
        }
    }

    /// The names of the symbols it uses.
    pub fn symbols(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        self.collect_symbols(&mut out);
        out
    }

    fn collect_symbols(&self, out: &mut BTreeSet<String>) {
        for t in &self.terms {
            for a in &t.atoms {
                match a {
                    Atom::Sym(s) => {
                        out.insert(s.clone());
                    }
                    Atom::Div(e, _) | Atom::Mod(e, _) => e.collect_symbols(out),
                    Atom::Min(es) | Atom::Max(es) => es.iter().for_each(|e| e.collect_symbols(out)),
                }
            }
        }
    }

    fn from_terms(mut terms: Vec<Term>) -> Res {
        terms.retain(|t| t.coef != 0);
        terms.sort_by(|a, b| a.atoms.cmp(&b.atoms));
        let mut out: Vec<Term> = Vec::with_capacity(terms.len());
        for t in terms {
            match out.last_mut() {
                Some(last) if last.atoms == t.atoms => {
                    last.coef = last.coef.checked_add(t.coef).ok_or_else(overflow)?;
                }
                _ => out.push(t),
            }
        }
        out.retain(|t| t.coef != 0);
        DimExpr { terms: out }.sum_into_extreme()
    }

    /// `r ± min(a, b)` (or max) as `min(r ± a, r ± b)` (`max` when
    /// subtracted), where `r` holds no min/max: a sum never sits outside a
    /// lone min/max, so `n - min(1, n)` and `max(n - 1, 0)` are one form.
    fn sum_into_extreme(self) -> Res {
        let is_extreme = |t: &Term| {
            t.atoms
                .iter()
                .any(|a| matches!(a, Atom::Min(_) | Atom::Max(_)))
        };
        let mut lone = None;
        for (i, t) in self.terms.iter().enumerate() {
            if is_extreme(t) {
                let single = t.atoms.len() == 1 && (t.coef == 1 || t.coef == -1);
                if lone.is_some() || !single {
                    return Ok(self);
                }
                lone = Some(i);
            }
        }
        let Some(i) = lone else { return Ok(self) };
        let t = &self.terms[i];
        if self.terms.len() == 1 && t.coef == 1 {
            return Ok(self);
        }
        let (items, is_min) = match &t.atoms[0] {
            Atom::Min(es) => (es, t.coef == 1),
            Atom::Max(es) => (es, t.coef == -1),
            _ => unreachable!("an extreme term"),
        };
        let mut rest = self.terms.clone();
        rest.remove(i);
        let rest = DimExpr { terms: rest };
        let mut acc: Option<DimExpr> = None;
        for e in items {
            let v = e.scale(t.coef)?.add(&rest)?;
            acc = Some(match acc {
                None => v,
                Some(a) => a.extreme(&v, is_min)?,
            });
        }
        Ok(acc.expect("two items"))
    }

    /// `self + other`.
    pub fn add(&self, other: &DimExpr) -> Res {
        DimExpr::from_terms(self.terms.iter().chain(&other.terms).cloned().collect())
    }

    /// `-self`.
    pub fn neg(&self) -> Res {
        self.scale(-1)
    }

    /// `self - other`.
    pub fn sub(&self, other: &DimExpr) -> Res {
        self.add(&other.neg()?)
    }

    /// `k * self`.
    pub fn scale(&self, k: i64) -> Res {
        let terms = self
            .terms
            .iter()
            .map(|t| {
                Ok(Term {
                    atoms: t.atoms.clone(),
                    coef: t.coef.checked_mul(k).ok_or_else(overflow)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        DimExpr::from_terms(terms)
    }

    /// `self * other`, multiplied out.
    pub fn mul(&self, other: &DimExpr) -> Res {
        if self.terms.len().saturating_mul(other.terms.len()) > 4096 {
            return Err("a dim expression grows beyond 4096 terms".into());
        }
        let mut terms = Vec::with_capacity(self.terms.len() * other.terms.len());
        for a in &self.terms {
            for b in &other.terms {
                let mut atoms: Vec<Atom> = a.atoms.iter().chain(&b.atoms).cloned().collect();
                atoms.sort();
                terms.push(Term {
                    atoms,
                    coef: a.coef.checked_mul(b.coef).ok_or_else(overflow)?,
                });
            }
        }
        DimExpr::from_terms(terms)
    }

    /// `floor(self / d)`. A constant divisor always works; an expression
    /// divides only exactly (`batch*seq / seq = batch`).
    pub fn div_floor(&self, d: &DimExpr) -> Res {
        if let Some(k) = d.as_const() {
            return self.div_const(k);
        }
        self.div_exact(d)
            .ok_or_else(|| format!("{self} / {d} is not an exact division kiln can express"))
    }

    /// `self mod d` with the sign of `d` (`self - d*floor(self/d)`); by an
    /// expression only where it divides exactly (giving 0).
    pub fn rem_floor(&self, d: &DimExpr) -> Res {
        let Some(k) = d.as_const() else {
            return match self.div_exact(d) {
                Some(_) => Ok(DimExpr::val(0)),
                None => Err(format!("{self} % {d} is not a remainder kiln can express")),
            };
        };
        match k.cmp(&0) {
            Ordering::Equal => Err("remainder by zero in a dim expression".into()),
            // x mod k (k < 0) = -((-x) mod -k): floor(x/k) = floor(-x/-k).
            Ordering::Less => self
                .neg()?
                .rem_floor(&DimExpr::val(k.checked_neg().ok_or_else(overflow)?))?
                .neg(),
            Ordering::Greater if k == 1 => Ok(DimExpr::val(0)),
            Ordering::Greater => {
                // Whole multiples of k drop out: reduce every coefficient.
                let e = DimExpr::from_terms(
                    self.terms
                        .iter()
                        .map(|t| Term {
                            atoms: t.atoms.clone(),
                            coef: t.coef.rem_euclid(k),
                        })
                        .collect(),
                )?;
                if let Some(c) = e.as_const() {
                    return Ok(DimExpr::val(c.rem_euclid(k)));
                }
                let (lo, hi) = e.bounds();
                if lo >= 0 && hi < k as i128 {
                    return Ok(e);
                }
                Ok(DimExpr::atom(Atom::Mod(Box::new(e), k)))
            }
        }
    }

    fn div_const(&self, k: i64) -> Res {
        match k.cmp(&0) {
            Ordering::Equal => return Err("division by zero in a dim expression".into()),
            Ordering::Less => return self.neg()?.div_const(k.checked_neg().ok_or_else(overflow)?),
            Ordering::Greater => {}
        }
        if k == 1 {
            return Ok(self.clone());
        }
        if let Some(c) = self.as_const() {
            return Ok(DimExpr::val(c.div_euclid(k)));
        }
        // floor((k*q + r)/k) = q + floor(r/k): whole multiples of k come out.
        let mut whole = Vec::new();
        let mut rest = Vec::new();
        for t in &self.terms {
            if t.coef % k == 0 {
                whole.push(Term {
                    atoms: t.atoms.clone(),
                    coef: t.coef / k,
                });
            } else {
                rest.push(t.clone());
            }
        }
        let q = DimExpr::from_terms(whole)?;
        let r = DimExpr::from_terms(rest)?;
        if r.terms.is_empty() {
            return Ok(q);
        }
        if let Some(c) = r.as_const() {
            return q.add(&DimExpr::val(c.div_euclid(k)));
        }
        // A common factor of the rest's coefficients and k cancels.
        let g = r.terms.iter().fold(k, |g, t| gcd(g, t.coef));
        let (r, k) = if g > 1 {
            (r.div_exact_const(g)?, k / g)
        } else {
            (r, k)
        };
        if k == 1 {
            return q.add(&r);
        }
        // The rest's constant term, reduced below k.
        let c = r.constant();
        let (r, q) = if !(0..k).contains(&c) {
            let m = c.div_euclid(k);
            (
                r.sub(&DimExpr::val(m.checked_mul(k).ok_or_else(overflow)?))?,
                q.add(&DimExpr::val(m))?,
            )
        } else {
            (r, q)
        };
        // floor(floor(e/a)/k) = floor(e/(a*k)).
        if let [Term { atoms, coef: 1 }] = r.terms.as_slice() {
            if let [Atom::Div(e, a)] = atoms.as_slice() {
                let ak = a.checked_mul(k).ok_or_else(overflow)?;
                return q.add(&e.div_const(ak)?);
            }
        }
        q.add(&DimExpr::atom(Atom::Div(Box::new(r), k)))
    }

    fn div_exact_const(&self, k: i64) -> Res {
        DimExpr::from_terms(
            self.terms
                .iter()
                .map(|t| Term {
                    atoms: t.atoms.clone(),
                    coef: t.coef / k,
                })
                .collect(),
        )
    }

    fn constant(&self) -> i64 {
        self.terms
            .first()
            .filter(|t| t.atoms.is_empty())
            .map_or(0, |t| t.coef)
    }

    /// `self / d` when `d` is one term dividing every term of `self`.
    fn div_exact(&self, d: &DimExpr) -> Option<DimExpr> {
        if self == d {
            return Some(DimExpr::val(1));
        }
        let [dt] = d.terms.as_slice() else {
            return None;
        };
        let mut terms = Vec::with_capacity(self.terms.len());
        for t in &self.terms {
            if t.coef.checked_rem(dt.coef)? != 0 {
                return None;
            }
            let mut atoms = t.atoms.clone();
            for a in &dt.atoms {
                let i = atoms.iter().position(|x| x == a)?;
                atoms.remove(i);
            }
            terms.push(Term {
                atoms,
                coef: t.coef.checked_div(dt.coef)?,
            });
        }
        DimExpr::from_terms(terms).ok()
    }

    /// The smaller of the two; decided where the bounds decide it.
    pub fn min_with(&self, other: &DimExpr) -> Res {
        self.extreme(other, true)
    }

    /// The larger of the two; decided where the bounds decide it.
    pub fn max_with(&self, other: &DimExpr) -> Res {
        self.extreme(other, false)
    }

    fn extreme(&self, other: &DimExpr, is_min: bool) -> Res {
        let mut items: Vec<DimExpr> = Vec::new();
        for e in [self, other] {
            match e.single_atom() {
                Some(Atom::Min(es)) if is_min => items.extend(es.iter().cloned()),
                Some(Atom::Max(es)) if !is_min => items.extend(es.iter().cloned()),
                _ => items.push(e.clone()),
            }
        }
        // Drop every item that another one provably bounds.
        let mut keep: Vec<DimExpr> = Vec::new();
        'items: for e in items {
            let mut i = 0;
            while i < keep.len() {
                let (lo, hi) = e.sub(&keep[i])?.bounds();
                let e_wins = if is_min { hi <= 0 } else { lo >= 0 };
                let k_wins = if is_min { lo >= 0 } else { hi <= 0 };
                if k_wins {
                    continue 'items;
                }
                if e_wins {
                    keep.remove(i);
                } else {
                    i += 1;
                }
            }
            keep.push(e);
        }
        keep.sort();
        if keep.len() == 1 {
            return Ok(keep.pop().expect("one item"));
        }
        Ok(DimExpr::atom(if is_min {
            Atom::Min(keep)
        } else {
            Atom::Max(keep)
        }))
    }

    fn single_atom(&self) -> Option<&Atom> {
        match self.terms.as_slice() {
            [Term { atoms, coef: 1 }] if atoms.len() == 1 => atoms.first(),
            _ => None,
        }
    }

    /// Bounds `(lo, hi)` of the value over every binding of the symbols in
    /// `0..=SYMBOL_MAX` (saturating at the ends of `i128`).
    pub fn bounds(&self) -> (i128, i128) {
        self.bounds_in(0)
    }

    /// [`bounds`](DimExpr::bounds) with every symbol at least 1: what
    /// shape checks use to call two sizes different (`n` and `3*n` differ
    /// unless both are empty).
    pub fn bounds_positive(&self) -> (i128, i128) {
        self.bounds_in(1)
    }

    fn bounds_in(&self, sym_lo: i128) -> (i128, i128) {
        let mut lo = 0i128;
        let mut hi = 0i128;
        for t in &self.terms {
            let (mut tl, mut th) = (t.coef as i128, t.coef as i128);
            for a in &t.atoms {
                let (al, ah) = a.bounds_in(sym_lo);
                let c = [
                    tl.saturating_mul(al),
                    tl.saturating_mul(ah),
                    th.saturating_mul(al),
                    th.saturating_mul(ah),
                ];
                tl = *c.iter().min().expect("four");
                th = *c.iter().max().expect("four");
            }
            lo = lo.saturating_add(tl);
            hi = hi.saturating_add(th);
        }
        (lo, hi)
    }

    /// Whether the expression is provably never negative.
    pub fn is_nonneg(&self) -> bool {
        self.bounds().0 >= 0
    }

    /// The value under `bindings`; an error names an unbound symbol or says
    /// the value overflows.
    pub fn eval(&self, bindings: &BTreeMap<String, usize>) -> Result<i64, String> {
        let mut sum = 0i64;
        for t in &self.terms {
            let mut p = t.coef;
            for a in &t.atoms {
                let v = a.eval(bindings)?;
                p = p.checked_mul(v).ok_or_else(overflow)?;
            }
            sum = sum.checked_add(p).ok_or_else(overflow)?;
        }
        Ok(sum)
    }

    /// The expression with the bound symbols replaced by their sizes.
    pub fn substitute(&self, bindings: &BTreeMap<String, usize>) -> Res {
        let mut out = DimExpr::default();
        for t in &self.terms {
            let mut p = DimExpr::val(t.coef);
            for a in &t.atoms {
                let v = match a {
                    Atom::Sym(s) => match bindings.get(s) {
                        Some(&n) => DimExpr::val(i64::try_from(n).map_err(|_| overflow())?),
                        None => DimExpr::sym(s),
                    },
                    Atom::Div(e, d) => e.substitute(bindings)?.div_const(*d)?,
                    Atom::Mod(e, d) => e.substitute(bindings)?.rem_floor(&DimExpr::val(*d))?,
                    Atom::Min(es) | Atom::Max(es) => {
                        let is_min = matches!(a, Atom::Min(_));
                        let mut it = es.iter();
                        let mut acc = it.next().expect("two items").substitute(bindings)?;
                        for e in it {
                            acc = acc.extreme(&e.substitute(bindings)?, is_min)?;
                        }
                        acc
                    }
                };
                p = p.mul(&v)?;
            }
            out = out.add(&p)?;
        }
        Ok(out)
    }

    /// Parses the text [`Display`](fmt::Display) writes: integers, symbols
    /// (identifiers, or any text in backquotes), `+ - * / %`, parentheses,
    /// `min(a, b, ...)` and `max(...)`.
    pub fn parse(text: &str) -> Res {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
            depth: 0,
        };
        let e = p.expr()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!(
                "unexpected '{}' at byte {} of dim expression '{text}'",
                String::from_utf8_lossy(&p.s[p.i..]),
                p.i
            ));
        }
        Ok(e)
    }
}

impl Atom {
    fn bounds_in(&self, sym_lo: i128) -> (i128, i128) {
        match self {
            Atom::Sym(_) => (sym_lo, SYMBOL_MAX as i128),
            Atom::Div(e, d) => {
                let (lo, hi) = e.bounds_in(sym_lo);
                (lo.div_euclid(*d as i128), hi.div_euclid(*d as i128))
            }
            Atom::Mod(_, d) => (0, *d as i128 - 1),
            Atom::Min(es) => es
                .iter()
                .map(|e| e.bounds_in(sym_lo))
                .fold((i128::MAX, i128::MAX), |(l, h), (el, eh)| {
                    (l.min(el), h.min(eh))
                }),
            Atom::Max(es) => es
                .iter()
                .map(|e| e.bounds_in(sym_lo))
                .fold((i128::MIN, i128::MIN), |(l, h), (el, eh)| {
                    (l.max(el), h.max(eh))
                }),
        }
    }

    fn eval(&self, bindings: &BTreeMap<String, usize>) -> Result<i64, String> {
        match self {
            Atom::Sym(s) => {
                let v = *bindings
                    .get(s)
                    .ok_or_else(|| format!("symbolic dim '{s}' is not bound"))?;
                i64::try_from(v).map_err(|_| overflow())
            }
            Atom::Div(e, d) => Ok(e.eval(bindings)?.div_euclid(*d)),
            Atom::Mod(e, d) => Ok(e.eval(bindings)?.rem_euclid(*d)),
            Atom::Min(es) => es
                .iter()
                .map(|e| e.eval(bindings))
                .try_fold(i64::MAX, |m, v| Ok(m.min(v?))),
            Atom::Max(es) => es
                .iter()
                .map(|e| e.eval(bindings))
                .try_fold(i64::MIN, |m, v| Ok(m.max(v?))),
        }
    }
}

/// The greatest common divisor of `|a|` and `|b|`, when it fits an `i64`.
fn gcd(a: i64, b: i64) -> i64 {
    let (mut a, mut b) = (a.unsigned_abs(), b.unsigned_abs());
    while b != 0 {
        (a, b) = (b, a % b);
    }
    i64::try_from(a).unwrap_or(1)
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        && s != "min"
        && s != "max"
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Atom::Sym(s) if is_ident(s) => f.write_str(s),
            Atom::Sym(s) => write!(f, "`{s}`"),
            Atom::Div(e, d) | Atom::Mod(e, d) => {
                let op = if matches!(self, Atom::Div(..)) {
                    "/"
                } else {
                    "%"
                };
                if e.terms.len() == 1 && e.terms[0].coef == 1 && e.terms[0].atoms.len() == 1 {
                    write!(f, "{e}{op}{d}")
                } else {
                    write!(f, "({e}){op}{d}")
                }
            }
            Atom::Min(es) | Atom::Max(es) => {
                f.write_str(if matches!(self, Atom::Min(_)) {
                    "min("
                } else {
                    "max("
                })?;
                for (i, e) in es.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{e}")?;
                }
                f.write_str(")")
            }
        }
    }
}

impl fmt::Display for DimExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.terms.is_empty() {
            return f.write_str("0");
        }
        // Symbolic terms first, the constant last: `seq-1`.
        let order = self
            .terms
            .iter()
            .filter(|t| !t.atoms.is_empty())
            .chain(self.terms.iter().filter(|t| t.atoms.is_empty()));
        for (i, t) in order.enumerate() {
            let c = t.coef;
            if i > 0 {
                f.write_str(if c < 0 { "-" } else { "+" })?;
            } else if c < 0 {
                f.write_str("-")?;
            }
            let a = c.unsigned_abs();
            if t.atoms.is_empty() {
                write!(f, "{a}")?;
                continue;
            }
            if a != 1 {
                write!(f, "{a}*")?;
            }
            // `x/d` among other factors is parenthesized: `batch*(seq/2)`.
            let alone = a == 1 && t.atoms.len() == 1;
            for (j, atom) in t.atoms.iter().enumerate() {
                if j > 0 {
                    f.write_str("*")?;
                }
                match atom {
                    Atom::Div(..) | Atom::Mod(..) if !alone => write!(f, "({atom})")?,
                    _ => write!(f, "{atom}")?,
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for DimExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DimExpr({self})")
    }
}

impl Serialize for DimExpr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DimExpr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<DimExpr, D::Error> {
        let text = String::deserialize(d)?;
        DimExpr::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl From<i64> for DimExpr {
    fn from(v: i64) -> DimExpr {
        DimExpr::val(v)
    }
}

impl From<&str> for DimExpr {
    fn from(s: &str) -> DimExpr {
        DimExpr::sym(s)
    }
}

/// Recursive descent over the text `Display` writes.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> Res {
        self.depth += 1;
        if self.depth > 64 {
            return Err("dim expression nested more than 64 deep".into());
        }
        let mut acc = self.term()?;
        loop {
            if self.eat(b'+') {
                acc = acc.add(&self.term()?)?;
            } else if self.eat(b'-') {
                acc = acc.sub(&self.term()?)?;
            } else {
                break;
            }
        }
        self.depth -= 1;
        Ok(acc)
    }

    fn term(&mut self) -> Res {
        let mut acc = self.factor()?;
        loop {
            if self.eat(b'*') {
                acc = acc.mul(&self.factor()?)?;
            } else if self.eat(b'/') {
                acc = acc.div_floor(&self.factor()?)?;
            } else if self.eat(b'%') {
                acc = acc.rem_floor(&self.factor()?)?;
            } else {
                return Ok(acc);
            }
        }
    }

    fn factor(&mut self) -> Res {
        self.ws();
        let start = self.i;
        match self.s.get(self.i).copied() {
            Some(b'-') => {
                self.i += 1;
                self.factor()?.neg()
            }
            Some(b'(') => {
                self.i += 1;
                let e = self.expr()?;
                if !self.eat(b')') {
                    return Err(format!("missing ')' in dim expression at byte {}", self.i));
                }
                Ok(e)
            }
            Some(b'`') => {
                let end = self.s[start + 1..]
                    .iter()
                    .position(|&c| c == b'`')
                    .ok_or("unclosed '`' in dim expression")?;
                self.i = start + 2 + end;
                let name = std::str::from_utf8(&self.s[start + 1..start + 1 + end])
                    .map_err(|_| "a symbol that is not UTF-8")?;
                Ok(DimExpr::sym(name))
            }
            Some(c) if c.is_ascii_digit() => {
                while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
                    self.i += 1;
                }
                let t = std::str::from_utf8(&self.s[start..self.i]).expect("digits");
                t.parse::<i64>()
                    .map(DimExpr::val)
                    .map_err(|_| format!("{t} does not fit a 64-bit integer"))
            }
            Some(c) if c.is_ascii_alphabetic() || c == b'_' => {
                while self
                    .s
                    .get(self.i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                {
                    self.i += 1;
                }
                let name = std::str::from_utf8(&self.s[start..self.i]).expect("ASCII");
                if name == "min" || name == "max" {
                    if !self.eat(b'(') {
                        return Err(format!("'{name}' needs '(' in dim expression"));
                    }
                    let mut acc = self.expr()?;
                    while self.eat(b',') {
                        let e = self.expr()?;
                        acc = if name == "min" {
                            acc.min_with(&e)?
                        } else {
                            acc.max_with(&e)?
                        };
                    }
                    if !self.eat(b')') {
                        return Err(format!("missing ')' after '{name}(' in dim expression"));
                    }
                    return Ok(acc);
                }
                Ok(DimExpr::sym(name))
            }
            _ => Err(format!(
                "expected a number, a symbol or '(' at byte {start} of a dim expression"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> DimExpr {
        DimExpr::parse(s).unwrap()
    }

    #[test]
    fn canonical_forms_compare_equal() {
        assert_eq!(p("batch*seq"), p("seq*batch"));
        assert_eq!(p("(seq+1)/2*2"), p("2*((seq+1)/2)"));
        assert_eq!(p("seq+seq"), p("2*seq"));
        assert_eq!(p("seq-seq"), DimExpr::val(0));
        assert_eq!(p("(2*seq+4)/2"), p("seq+2"));
        assert_eq!(p("(seq+5)/2"), p("(seq+1)/2+2"));
        assert_eq!(p("seq/2/3"), p("seq/6"));
        assert_eq!(p("(6*seq+3)/9"), p("(2*seq+1)/3"));
        assert_eq!(p("batch*seq*768/(batch*12*64)"), p("seq"));
        assert_eq!(p("7%3"), DimExpr::val(1));
        assert_eq!(p("-7%3"), DimExpr::val(2));
        assert_eq!(p("(2*seq)%2"), DimExpr::val(0));
        assert_eq!(p("(2*seq+3)%2"), DimExpr::val(1));
        assert_eq!(p("(9*seq+10)%8"), p("(seq+2)%8"));
        assert_eq!(p("seq%8").bounds(), (0, 7));
        assert_eq!(p("(seq%8)%8"), p("seq%8"));
        assert_eq!(p("min(seq, seq+1)"), p("seq"));
        assert_eq!(p("max(seq, 0)"), p("seq"));
        assert_eq!(p("min(seq, 9223372036854775807)"), p("seq"));
        assert_eq!(p("min(seq, 4)"), p("min(4, seq)"));
        assert_eq!(p("min(min(a, b), c)"), p("min(c, min(b, a))"));
        assert_eq!(p("(a+b)*(a-b)"), p("a*a-b*b"));
    }

    #[test]
    fn display_parses_back() {
        for s in [
            "batch*seq",
            "seq-1",
            "2*seq+1",
            "(seq+1)/2",
            "min(4,seq)",
            "max(0,seq-1)",
            "-seq+3",
            "`batch size`*2",
            "seq/2*batch",
            "(seq+7)%8*batch",
            "(8-seq%8)%8",
        ] {
            let e = p(s);
            assert_eq!(p(&e.to_string()), e, "{s} -> {e}");
        }
        assert_eq!(p("seq - 1").to_string(), "seq-1");
        assert_eq!(p("`a b`").as_sym(), Some("a b"));
    }

    #[test]
    fn evaluates_and_substitutes() {
        let b: BTreeMap<String, usize> = [("seq".to_string(), 7), ("batch".to_string(), 3)].into();
        assert_eq!(p("(seq+1)/2*batch").eval(&b), Ok(12));
        assert_eq!(p("min(seq,4)").eval(&b), Ok(4));
        assert_eq!(p("(seq-9)/2").eval(&b), Ok(-1));
        let only_seq: BTreeMap<String, usize> = [("seq".to_string(), 7)].into();
        assert_eq!(p("(seq+1)/2*batch").substitute(&only_seq), Ok(p("4*batch")));
        assert!(p("x").eval(&b).unwrap_err().contains("'x'"));
    }

    #[test]
    fn errors_not_panics() {
        assert!(DimExpr::parse("seq/0").is_err());
        assert!(DimExpr::parse("seq/").is_err());
        assert!(DimExpr::parse("99999999999999999999").is_err());
        assert!(DimExpr::parse("9223372036854775807*2").is_err());
        assert!(DimExpr::parse("seq/batch").is_err());
        assert!(DimExpr::parse(&"(".repeat(100)).is_err());
        assert!(DimExpr::parse("min(").is_err());
        assert!(DimExpr::parse("`a").is_err());
    }
}
