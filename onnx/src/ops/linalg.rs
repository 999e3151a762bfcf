//! Linear algebra on the last dims:
//!
//! - `Det`: a cofactor expansion for n <= 4, Gaussian elimination with
//!   partial pivoting (one-hot row swaps) above.
//! - `LpNormalization` (p 1 or 2) along an axis.

use std::collections::HashMap;

use kiln_graph::{DType, Tensor};

use super::{axis, fixed_shape, Converter, Node, R};
use crate::ops::tables::{constant, one};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[("Det", det), ("LpNormalization", lp_normalization)];

// ------------------------------------------------------- normalization, crop

/// `LpNormalization`: `x / ||x||_p` along `axis` (p 1 or 2; 0 where the
/// norm is 0).
fn lp_normalization<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let a = axis(n.int("axis", -1), x.rank())? as i64;
    let norm = match n.int("p", 2) {
        1 => x.abs()?.sum(&[a], true)?,
        2 => x.mul(x)?.sum(&[a], true)?.sqrt()?,
        p => return n.unsupported(format!("p = {p} (1 or 2)")),
    };
    // A zero norm gives zeros (the test data's meaning), not NaN.
    let safe = n.g.select(norm.eq(0.0)?, norm.add(1.0)?, norm)?;
    Ok(one(x.div(safe)?))
}

// ---------------------------------------------------------------- Det

/// `Det` of `[..., m, m]`: a cofactor expansion (memoized over column
/// subsets) for m <= 4, Gaussian elimination with partial pivoting above.
fn det<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let xs = fixed_shape(x)?;
    let r = xs.len();
    if r < 2 || xs[r - 1] != xs[r - 2] {
        return Err(format!("Det needs [..., m, m], got {xs:?}").into());
    }
    if !x.dtype().is_float() {
        return Err(format!("Det needs floating point input, got {}", x.dtype()).into());
    }
    let m = xs[r - 1];
    if m == 0 {
        return Ok(one(n.g.full(1.0, x.dtype(), &xs[..r - 2])?));
    }
    if m <= 4 {
        return cofactor_det(x, m).map(one);
    }
    elimination_det(n, x, &xs).map(one)
}

fn cofactor_det<'g>(x: Tensor<'g>, m: usize) -> R<Tensor<'g>> {
    let mut e = Vec::with_capacity(m);
    for i in 0..m {
        let row = x.slice_axis(-2, i as i64, i as i64 + 1, 1)?.squeeze(-2)?;
        let mut cols = Vec::with_capacity(m);
        for j in 0..m {
            cols.push(row.slice_axis(-1, j as i64, j as i64 + 1, 1)?.squeeze(-1)?);
        }
        e.push(cols);
    }
    // minor(mask): the determinant of the last popcount(mask) rows over the
    // columns in mask, expanded along its first row.
    fn minor<'g>(
        e: &[Vec<Tensor<'g>>],
        mask: u32,
        memo: &mut HashMap<u32, Tensor<'g>>,
    ) -> R<Tensor<'g>> {
        if let Some(t) = memo.get(&mask) {
            return Ok(*t);
        }
        let m = e.len();
        let k = mask.count_ones() as usize;
        let row = m - k;
        let cols: Vec<usize> = (0..m).filter(|&j| mask & (1 << j) != 0).collect();
        let out = if k == 1 {
            e[row][cols[0]]
        } else {
            let mut acc: Option<Tensor<'g>> = None;
            for (pos, &j) in cols.iter().enumerate() {
                let term = e[row][j].mul(minor(e, mask & !(1 << j), memo)?)?;
                acc = Some(match acc {
                    None if pos % 2 == 0 => term,
                    None => term.neg()?,
                    Some(a) if pos % 2 == 0 => a.add(term)?,
                    Some(a) => a.sub(term)?,
                });
            }
            acc.expect("k >= 2 columns")
        };
        memo.insert(mask, out);
        Ok(out)
    }
    minor(&e, (1u32 << m) - 1, &mut HashMap::new())
}

fn elimination_det<'g>(n: &Node<'_, 'g>, x: Tensor<'g>, xs: &[usize]) -> R<Tensor<'g>> {
    let r = xs.len();
    let m = xs[r - 1];
    let dt = x.dtype();
    let rows = n.g.iota(DType::I64, vec![m], 0)?;
    let mut a = x;
    let mut det: Option<Tensor<'g>> = None;
    for k in 0..m {
        // Column k; rows above k are out of the running.
        let col = a.slice_axis(-1, k as i64, k as i64 + 1, 1)?.squeeze(-1)?;
        let below = constant(
            n,
            &(0..m)
                .map(|i| if i >= k { 0.0 } else { -1.0 })
                .collect::<Vec<_>>(),
            &[m],
            dt,
        )?;
        let avail = rows.ge(k as i64)?;
        let score = n.g.select(avail, col.abs()?, below)?;
        let p = score.argmax(-1, true)?; // [..., 1]
        let onehot = rows.eq(p)?.cast(dt)?; // [..., m]
        let oh = onehot.unsqueeze(-1)?; // [..., m, 1]
        let row_p = a.mul(oh)?.sum(&[-2], false)?; // [..., m]
        let row_k = a.slice_axis(-2, k as i64, k as i64 + 1, 1)?.squeeze(-2)?;
        let ek = constant(
            n,
            &(0..m)
                .map(|i| if i == k { 1.0 } else { 0.0 })
                .collect::<Vec<_>>(),
            &[m, 1],
            dt,
        )?;
        // Swap rows k and p (a no-op where p == k).
        let diff = row_k.sub(row_p)?.unsqueeze(-2)?; // [..., 1, m]
        a = a.add(oh.mul(diff)?)?.sub(ek.mul(diff)?)?;
        let swapped = p.squeeze(-1)?.ne(k as i64)?;
        let pivot = row_p
            .slice_axis(-1, k as i64, k as i64 + 1, 1)?
            .squeeze(-1)?;
        let signed = n.g.select(swapped, pivot.neg()?, pivot)?;
        det = Some(match det {
            None => signed,
            Some(d) => d.mul(signed)?,
        });
        if k + 1 < m {
            // Eliminate column k below row k (a zero pivot: det is 0, and
            // the factors are kept finite).
            let zero = pivot.eq(0.0)?;
            let safe = n.g.select(zero, pivot.add(1.0)?, pivot)?;
            let col = a.slice_axis(-1, k as i64, k as i64 + 1, 1)?.squeeze(-1)?;
            let lower = rows.gt(k as i64)?.cast(dt)?;
            let factor = col.mul(lower)?.div(safe.unsqueeze(-1)?)?;
            a = a.sub(factor.unsqueeze(-1)?.mul(row_p.unsqueeze(-2)?)?)?;
        }
    }
    det.ok_or_else(|| "empty matrix".into())
}
