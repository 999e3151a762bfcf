//! Products, as compositions of kiln's primitives:
//!
//! - `Gemm`, `MatMul` (numpy semantics), `Einsum` (diagonals, sums, then
//!   pairwise contractions as batched matmuls).

use kiln_graph::{Dim, Tensor};

use super::{Converter, Node, R};
use crate::ops::conv::{dim_product, one, reshape};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[
    ("Gemm", gemm),
    ("MatMul", |n| Ok(one(n.input(0)?.matmul(n.input(1)?)?))),
    ("Einsum", einsum),
];

// ---- contractions ----

/// `Gemm`: `alpha * A' B' + beta * C`, `A'`/`B'` transposed per `transA`/`transB`.
fn gemm<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (mut a, mut b) = (n.input(0)?, n.input(1)?);
    if n.int("transA", 0) != 0 {
        a = a.transpose()?;
    }
    if n.int("transB", 0) != 0 {
        b = b.transpose()?;
    }
    let (alpha, beta) = (n.float("alpha", 1.0) as f64, n.float("beta", 1.0) as f64);
    let mut y = a.matmul(b)?;
    if alpha != 1.0 {
        y = y.mul(alpha)?;
    }
    if let Some(c) = n.opt(2) {
        if beta != 0.0 {
            let c = if beta != 1.0 { c.mul(beta)? } else { c };
            y = y.add(c)?;
        }
    }
    Ok(vec![y])
}

/// An operand of an einsum: a tensor and one label per dim.
struct Term<'g> {
    t: Tensor<'g>,
    labels: Vec<char>,
}

/// The labels of one einsum term of an operand of `rank` (`None`: the
/// output); `...` becomes the trailing broadcast labels of `ell` that the
/// rank leaves room for (all of them in the output).
fn parse_term(term: &str, ell: &[char], rank: Option<usize>) -> R<Vec<char>> {
    let letters = term.replace("...", "");
    if letters.chars().any(|c| !c.is_ascii_alphabetic()) {
        return Err(format!("unsupported: einsum term '{term}'").into());
    }
    let letters: Vec<char> = letters.chars().collect();
    let Some(pos) = term.find("...") else {
        if rank.is_some_and(|r| r != letters.len()) {
            return Err(format!("einsum term '{term}' does not match rank {rank:?}").into());
        }
        return Ok(letters);
    };
    let e = match rank {
        Some(r) => r
            .checked_sub(letters.len())
            .ok_or_else(|| format!("einsum term '{term}' has more labels than rank {r}"))?,
        None => ell.len(),
    };
    let before = term[..pos].chars().count();
    let mut v = letters[..before].to_vec();
    v.extend(&ell[ell.len() - e..]);
    v.extend(&letters[before..]);
    Ok(v)
}

/// `Einsum` (explicit or implicit output, `...` broadcasting): each
/// operand's repeated labels become diagonals and labels no one else needs
/// are summed; operands are then contracted left to right, each pair as one
/// batched matmul (shared labels still needed are batch dims, the others
/// contracted); the result is permuted to the output.
fn einsum<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let eq: String = n
        .string("equation")
        .ok_or("needs an equation")?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    let inputs = n.all_inputs();
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != inputs.len() {
        return Err(format!(
            "equation '{eq}' has {} operands, the node {}",
            terms.len(),
            inputs.len()
        )
        .into());
    }
    // Broadcast (ellipsis) labels: private-use characters.
    let mut e = 0;
    for (term, t) in terms.iter().zip(&inputs) {
        if term.contains("...") {
            let letters = term.replace("...", "").chars().count();
            e = e.max(t.rank().saturating_sub(letters));
        }
    }
    let ell: Vec<char> = (0..e as u32)
        .map(|i| char::from_u32(0xE000 + i).expect("private use"))
        .collect();
    let mut ops = Vec::with_capacity(inputs.len());
    for (term, &t) in terms.iter().zip(&inputs) {
        let labels = parse_term(term, &ell, Some(t.rank()))?;
        ops.push(Term { t, labels });
    }
    let out: Vec<char> = match rhs {
        Some(r) => parse_term(r, &ell, None)?,
        None => {
            let mut counts = std::collections::BTreeMap::new();
            for o in &ops {
                for &l in &o.labels {
                    *counts.entry(l).or_insert(0) += 1;
                }
            }
            let mut v = ell.clone();
            v.extend(
                counts
                    .iter()
                    .filter(|&(l, &c)| c == 1 && l.is_ascii_alphabetic())
                    .map(|(&l, _)| l),
            );
            v
        }
    };
    for &l in &out {
        if !ops.iter().any(|o| o.labels.contains(&l)) {
            return Err(format!("output label '{l}' is in no operand of '{eq}'").into());
        }
    }
    // Diagonals, then sums of labels only this operand has.
    for i in 0..ops.len() {
        diagonals(&mut ops[i])?;
        let others: Vec<char> = ops
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .flat_map(|(_, o)| o.labels.iter().copied())
            .chain(out.iter().copied())
            .collect();
        sum_out(&mut ops[i], |l| others.contains(&l))?;
    }
    let mut rest = ops.into_iter();
    let mut acc = rest.next().ok_or("einsum needs an operand")?;
    let rest: Vec<Term<'g>> = rest.collect();
    for (i, b) in rest.iter().enumerate() {
        let keep: Vec<char> = rest[i + 1..]
            .iter()
            .flat_map(|o| o.labels.iter().copied())
            .chain(out.iter().copied())
            .collect();
        acc = contract(acc, b, &keep)?;
    }
    sum_out(&mut acc, |l| out.contains(&l))?;
    let perm: Vec<usize> = out
        .iter()
        .map(|l| acc.labels.iter().position(|x| x == l).expect("kept"))
        .collect();
    let y = if perm.iter().enumerate().all(|(i, &p)| i == p) {
        acc.t
    } else {
        acc.t.permute(&perm)?
    };
    Ok(vec![y])
}

/// Replaces each repeated label of `o` by the diagonal over its dims.
fn diagonals(o: &mut Term<'_>) -> R<()> {
    while let Some((i, j)) = (0..o.labels.len()).find_map(|i| {
        (i + 1..o.labels.len())
            .find(|&j| o.labels[j] == o.labels[i])
            .map(|j| (i, j))
    }) {
        let shape = o.t.shape().0;
        let size = shape[i]
            .fixed()
            .filter(|&s| shape[j].fixed() == Some(s))
            .ok_or_else(|| format!("diagonal over dims {} and {} of {}", i, j, o.t.shape()))?;
        let mut perm: Vec<usize> = (0..o.labels.len()).filter(|&d| d != i && d != j).collect();
        let mut dims: Vec<Dim> = perm.iter().map(|&d| shape[d].clone()).collect();
        let mut labels: Vec<char> = perm.iter().map(|&d| o.labels[d]).collect();
        labels.push(o.labels[i]);
        perm.extend([i, j]);
        dims.push(Dim::Fixed(size * size));
        let t = reshape(o.t.permute(&perm)?, dims)?;
        o.t = t.slice_axis(-1, 0, i64::MAX, size as i64 + 1)?;
        o.labels = labels;
    }
    Ok(())
}

/// Sums the dims of `o` whose label `keep` rejects.
fn sum_out(o: &mut Term<'_>, keep: impl Fn(char) -> bool) -> R<()> {
    let axes: Vec<i64> = (0..o.labels.len())
        .filter(|&d| !keep(o.labels[d]))
        .map(|d| d as i64)
        .collect();
    if !axes.is_empty() {
        o.t = o.t.sum(&axes, false)?;
        o.labels.retain(|&l| keep(l));
    }
    Ok(())
}

/// The dims of `labels` in `o`.
fn label_dims(o: &Term<'_>, labels: &[char]) -> Vec<Dim> {
    let shape = o.t.shape().0;
    labels
        .iter()
        .map(|l| shape[o.labels.iter().position(|x| x == l).expect("own label")].clone())
        .collect()
}

/// A group of labels split into leading ones kept as dims of their own and
/// a tail merged into one matrix dim: the whole group where its sizes
/// merge (all fixed, or one), else only its last label.
fn split_group(o: &Term<'_>, mut group: Vec<char>) -> (Vec<char>, Vec<char>) {
    if dim_product(&label_dims(o, &group)).is_ok() {
        return (Vec::new(), group);
    }
    let last = group.pop().expect("a group of several labels");
    (group, vec![last])
}

/// `a` and `b` contracted over their shared labels not in `keep`, as one
/// batched matmul `[batch, a lead, 1.., a rows, shared] x [batch, 1..,
/// b lead, shared, b cols]`: rows and columns merge each side's own labels
/// where sizes allow, the rest broadcast as batch dims.
fn contract<'g>(mut a: Term<'g>, b: &Term<'g>, keep: &[char]) -> R<Term<'g>> {
    sum_out(&mut a, |l| b.labels.contains(&l) || keep.contains(&l))?;
    let mut b = Term {
        t: b.t,
        labels: b.labels.clone(),
    };
    sum_out(&mut b, |l| a.labels.contains(&l) || keep.contains(&l))?;
    let (al, bl) = (a.labels.clone(), b.labels.clone());
    let batch: Vec<char> = al
        .iter()
        .copied()
        .filter(|l| bl.contains(l) && keep.contains(l))
        .collect();
    let shared: Vec<char> = al
        .iter()
        .copied()
        .filter(|l| bl.contains(l) && !keep.contains(l))
        .collect();
    let (a_lead, a_rows) =
        split_group(&a, al.iter().copied().filter(|l| !bl.contains(l)).collect());
    let (b_lead, b_cols) =
        split_group(&b, bl.iter().copied().filter(|l| !al.contains(l)).collect());
    let ones = |k: usize| vec![Dim::Fixed(1); k];
    let arrange = |o: &Term<'g>, order: [&[char]; 4], dims: Vec<Dim>| -> R<Tensor<'g>> {
        let perm: Vec<usize> = order
            .iter()
            .flat_map(|g| g.iter())
            .map(|l| o.labels.iter().position(|x| x == l).expect("own label"))
            .collect();
        reshape(o.t.permute(&perm)?, dims)
    };
    let mut da = label_dims(&a, &batch);
    da.extend(label_dims(&a, &a_lead));
    da.extend(ones(b_lead.len()));
    da.push(dim_product(&label_dims(&a, &a_rows))?);
    da.push(dim_product(&label_dims(&a, &shared))?);
    let ta = arrange(&a, [&batch, &a_lead, &a_rows, &shared], da)?;
    let mut db = label_dims(&b, &batch);
    db.extend(ones(a_lead.len()));
    db.extend(label_dims(&b, &b_lead));
    db.push(dim_product(&label_dims(&b, &shared))?);
    db.push(dim_product(&label_dims(&b, &b_cols))?);
    let tb = arrange(&b, [&batch, &b_lead, &shared, &b_cols], db)?;
    let y = ta.matmul(tb)?;
    let ys = y.shape().0;
    let mut dims = ys[..ys.len() - 2].to_vec();
    dims.extend(label_dims(&a, &a_rows));
    dims.extend(label_dims(&b, &b_cols));
    let mut labels = batch;
    labels.extend(a_lead);
    labels.extend(b_lead);
    labels.extend(a_rows);
    labels.extend(b_cols);
    Ok(Term {
        t: reshape(y, dims)?,
        labels,
    })
}
