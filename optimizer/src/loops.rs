//! Loop shapes that backends run well: a last pass over the lowered
//! program that changes how kernels loop, never what they compute (every
//! output element keeps its row-major position).
//!
//! - Leading loop dims of extent 1 are dropped, so loop variable 0 (the
//!   one a backend splits across threads) has real extent: attention over
//!   `[1, heads, seq, seq]` splits over heads.
//! - An elementwise kernel's last dim is split in two where that removes
//!   floor divisions and modulos from its index expressions: the merge of
//!   attention heads reads `x[64*i1 + i2%64 + 8192*(i2/64)]` over
//!   `[128, 256]`; over `[128, 4, 64]` it reads `x[64*i1 + i3 + 8192*i2]`,
//!   which is contiguous along the last dim and so vectorizes.
//!
//! - Adjacent dims every index walks contiguously merge into one, so rows
//!   get long enough for the wide vector code.
//!
//! - A batched matrix product with one right-hand matrix for every batch
//!   becomes one product over all the batches' rows.
//!
//! Not done: reordering loops, or splitting any dim but the last (a kernel
//! whose divisions sit on an outer dim keeps them).

use crate::index::{Atom, Index};
use crate::kernel::{
    Access, Cond, ElementProgram, Epilogue, Instr, Kernel, KernelProgram, Operand,
};

/// Reshapes the loops of every elementwise and reduction kernel.
pub fn reshape_loops(program: &mut KernelProgram) {
    for k in &mut program.kernels {
        match k {
            Kernel::Elementwise {
                shape,
                inputs,
                program,
                ..
            } => {
                drop_unit_dims(shape, inputs, &mut [program], None);
                merge_dims(shape, inputs, &mut [program], None, 0);
                while split_last(shape, inputs, program) {}
            }
            Kernel::Reduce {
                shape,
                axes,
                inputs,
                body,
                map,
                ..
            } => {
                let mut programs: Vec<&mut ElementProgram> = vec![body];
                if let Some((_, m)) = map {
                    programs.push(m);
                }
                drop_unit_dims(shape, inputs, &mut programs, Some(&mut *axes));
                merge_dims(shape, inputs, &mut programs, Some(axes), 0);
            }
            Kernel::MatMul {
                a, b, batch, mnk, ..
            } => fold_batch_into_rows(a, b, batch, mnk),
            Kernel::Op { .. } => {}
        }
    }
}

/// A batched product whose right operand is the same matrix for every
/// batch (strides 0: a layer's weights applied at every time step or
/// position) and whose left operand's batch and row dims walk its rows
/// evenly becomes one product of `batch * m` rows: a recurrent layer's
/// input projection over 100 steps is one GEMM instead of 100 products
/// of one row, each reading the whole weight matrix. The output is laid
/// out the same either way (row-major `[..batch, m, n]`), so the epilogue,
/// which loops over the output buffer's shape, is unchanged.
fn fold_batch_into_rows(
    a: &mut Operand,
    b: &mut Operand,
    batch: &mut Vec<usize>,
    mnk: &mut [usize; 3],
) {
    let nb = batch.len();
    if nb == 0 || b.strides[..nb].iter().any(|&s| s != 0) {
        return;
    }
    // The batch dims and m, with their strides in `a`; dims of extent 1
    // never move, so their strides do not matter.
    let dims: Vec<(usize, i64)> = batch
        .iter()
        .copied()
        .chain([mnk[0]])
        .zip(a.strides[..=nb].iter().copied())
        .filter(|&(n, _)| n != 1)
        .collect();
    let even = dims.windows(2).all(|w| w[0].1 == w[1].1 * w[1].0 as i64);
    if !even {
        return;
    }
    let row = dims.last().map_or(0, |&(_, s)| s);
    let k_stride = a.strides[nb + 1];
    a.strides = vec![row, k_stride];
    b.strides.drain(..nb);
    mnk[0] *= batch.iter().product::<usize>();
    batch.clear();
}

/// The loop of an epilogue over its output's `shape` with the leading unit
/// dims dropped (as [`reshape_loops`] does for kernels) and contiguous dims
/// after the first merged, and the epilogue rewritten for it; row-major
/// positions are unchanged. Dim 0 stays as it is: executors run an
/// epilogue on ranges of it (a convolution's images or channels as they
/// are done, a product's rows), and its extent is
/// the output's first dim after the unit ones. A convolution's `[channels, 7, 7]` thus loops
/// over rows of 49, long enough for the wide vector code.
pub fn epilogue_loop(shape: &[usize], e: &Epilogue) -> (Vec<usize>, Epilogue) {
    let (mut shape, mut e) = (shape.to_vec(), e.clone());
    drop_unit_dims(&mut shape, &mut e.inputs, &mut [&mut e.program], None);
    merge_dims(&mut shape, &mut e.inputs, &mut [&mut e.program], None, 1);
    (shape, e)
}

/// As [`epilogue_loop`] for an output whose first `rows` dims are rows of
/// one matrix (a channels-last convolution's `[n, oh, ow]`, whose
/// channels are the last dim): those dims merged into dim 0 where every
/// access walks them as one, so the executor can run the epilogue on
/// ranges of pixels. Where they do not merge, dim 0 is shorter than the
/// rows' count, and the executor runs the epilogue whole.
pub fn epilogue_loop_rows(shape: &[usize], e: &Epilogue, rows: usize) -> (Vec<usize>, Epilogue) {
    let (mut shape, mut e) = (shape.to_vec(), e.clone());
    let before = shape.len();
    drop_unit_dims(&mut shape, &mut e.inputs, &mut [&mut e.program], None);
    let mut rows = rows.saturating_sub(before - shape.len());
    while rows > 1
        && shape.len() > 1
        && merge_pair(&mut shape, &mut e.inputs, &mut [&mut e.program], 0)
    {
        rows -= 1;
    }
    merge_dims(&mut shape, &mut e.inputs, &mut [&mut e.program], None, 1);
    (shape, e)
}

/// Rewrites every index expression of a kernel with `f`.
fn rewrite(
    inputs: &mut [Access],
    programs: &mut [&mut ElementProgram],
    f: &dyn Fn(&Index) -> Index,
) {
    let conds = |cs: &mut Vec<Cond>| {
        for c in cs {
            c.expr = f(&c.expr);
        }
    };
    for a in inputs {
        a.offset = f(&a.offset);
        conds(&mut a.mask);
    }
    for p in programs {
        for ins in &mut p.instrs {
            match ins {
                Instr::InBounds(cs) => conds(cs),
                Instr::IndexValue(e, _) => *e = f(e),
                Instr::Random { index, .. } => *index = f(index),
                _ => {}
            }
        }
    }
}

fn drop_unit_dims(
    shape: &mut Vec<usize>,
    inputs: &mut [Access],
    programs: &mut [&mut ElementProgram],
    axes: Option<&mut Vec<usize>>,
) {
    let lead = shape.iter().take_while(|&&n| n == 1).count();
    // Keep one dim; and a reduction over a dropped dim keeps its shape.
    let lead = lead.min(shape.len().saturating_sub(1));
    if lead == 0 || axes.as_ref().is_some_and(|a| a.iter().any(|&d| d < lead)) {
        return;
    }
    let ext: Vec<usize> = shape[lead..].to_vec();
    rewrite(inputs, programs, &|e| {
        substitute(
            e,
            &|v| {
                if v < lead {
                    Index::constant(0)
                } else {
                    Index::var(v - lead)
                }
            },
            &ext,
        )
    });
    shape.drain(..lead);
    if let Some(axes) = axes {
        for d in axes.iter_mut() {
            *d -= lead;
        }
    }
}

/// Merges adjacent loop dims that every index walks contiguously (the
/// outer one's coefficient is the inner one's times the inner extent, and
/// neither sits inside a division): `x[256*i1 + 16*i2 + i3]` over
/// `[.., 16, 16]` becomes `x[256*i1 + i2]` over `[.., 256]`. Rows get
/// longer (a global average pool's 16 x 16 window becomes one row of 256)
/// and loops fewer. A reduction merges only reduced with reduced and kept
/// with kept dims. Dims before `first` are left alone.
fn merge_dims(
    shape: &mut Vec<usize>,
    inputs: &mut [Access],
    programs: &mut [&mut ElementProgram],
    mut axes: Option<&mut Vec<usize>>,
    first: usize,
) {
    let mut d = first;
    while d + 1 < shape.len() {
        let same_kind = axes
            .as_ref()
            .is_none_or(|a| a.contains(&d) == a.contains(&(d + 1)));
        if !(same_kind && merge_pair(shape, inputs, programs, d)) {
            d += 1;
            continue;
        }
        if let Some(a) = axes.as_mut() {
            a.retain(|&x| x != d + 1);
            for x in a.iter_mut() {
                if *x > d + 1 {
                    *x -= 1;
                }
            }
        }
    }
}

/// Merges dims `d` and `d + 1` into one where every index walks them as
/// one; returns whether it did.
fn merge_pair(
    shape: &mut Vec<usize>,
    inputs: &mut [Access],
    programs: &mut [&mut ElementProgram],
    d: usize,
) -> bool {
    let inner = shape[d + 1] as i64;
    let mut ok = true;
    for_each_index(inputs, programs, &mut |e: &Index| {
        ok &= contiguous(e, d, inner);
    });
    if !ok {
        return false;
    }
    let mut ext = shape.clone();
    ext[d] *= shape[d + 1];
    ext.remove(d + 1);
    rewrite(inputs, programs, &|e| {
        substitute(
            e,
            &|v| match v {
                v if v == d => Index::constant(0),
                v if v == d + 1 => Index::var(d),
                v if v > d + 1 => Index::var(v - 1),
                v => Index::var(v),
            },
            &ext,
        )
    });
    *shape = ext;
    true
}

/// Whether `e` walks dims `d` and `d + 1` (inner extent `inner`) as one.
fn contiguous(e: &Index, d: usize, inner: i64) -> bool {
    let (mut cd, mut cd1) = (0, 0);
    for (c, a) in &e.terms {
        match a {
            Atom::Var(v) if *v == d => cd += c,
            Atom::Var(v) if *v == d + 1 => cd1 += c,
            Atom::Var(_) => {}
            Atom::Div(i, _) | Atom::Mod(i, _) => {
                if i.mentions(d) || i.mentions(d + 1) {
                    return false;
                }
            }
        }
    }
    cd == cd1 * inner
}

/// Calls `f` on every index expression of a kernel.
fn for_each_index(inputs: &[Access], programs: &[&mut ElementProgram], f: &mut dyn FnMut(&Index)) {
    for a in inputs {
        f(&a.offset);
        a.mask.iter().for_each(|c| f(&c.expr));
    }
    for p in programs {
        for ins in &p.instrs {
            match ins {
                Instr::InBounds(cs) => cs.iter().for_each(|c| f(&c.expr)),
                Instr::IndexValue(e, _) => f(e),
                Instr::Random { index, .. } => f(index),
                _ => {}
            }
        }
    }
}

/// Splits the last dim `n` into `[n / k, k]` for the divisor `k` that most
/// reduces the divisions and modulos of the kernel's index expressions.
/// Returns whether it split.
fn split_last(shape: &mut Vec<usize>, inputs: &mut [Access], program: &mut ElementProgram) -> bool {
    let Some(last) = shape.len().checked_sub(1) else {
        return false;
    };
    let n = shape[last];
    let before = count_divisions(inputs, program);
    if before == 0 {
        return false;
    }
    let mut divisors = Vec::new();
    for a in inputs.iter() {
        collect_divisors(&a.offset, last, &mut divisors);
    }
    divisors.retain(|&k| k > 1 && (k as usize) < n && n.is_multiple_of(k as usize));
    divisors.sort_unstable();
    divisors.dedup();
    let mut best: Option<(usize, i64, Vec<Access>, ElementProgram)> = None;
    for k in divisors {
        let mut ext = shape.clone();
        ext[last] = n / k as usize;
        ext.push(k as usize);
        let (mut ins, mut prog) = (inputs.to_vec(), program.clone());
        rewrite(&mut ins, &mut [&mut prog], &|e| {
            substitute(
                e,
                &|v| {
                    if v == last {
                        Index::var(last).mul(k).add(&Index::var(last + 1))
                    } else {
                        Index::var(v)
                    }
                },
                &ext,
            )
        });
        let after = count_divisions(&ins, &prog);
        if after < before && best.as_ref().is_none_or(|b| after < b.0) {
            best = Some((after, k, ins, prog));
        }
    }
    let Some((_, k, ins, prog)) = best else {
        return false;
    };
    shape[last] = n / k as usize;
    shape.push(k as usize);
    inputs.clone_from_slice(&ins);
    *program = prog;
    true
}

/// `e` with loop variable `v` replaced by `f(v)`, simplified over `ext`.
pub fn substitute(e: &Index, f: &dyn Fn(usize) -> Index, ext: &[usize]) -> Index {
    let mut out = Index::constant(e.constant);
    for (c, a) in &e.terms {
        let t = match a {
            Atom::Var(v) => f(*v),
            Atom::Div(inner, k) => substitute(inner, f, ext).div(*k, ext),
            Atom::Mod(inner, k) => substitute(inner, f, ext).modulo(*k, ext),
        };
        out = out.add(&t.mul(*c));
    }
    out
}

fn count_in(e: &Index) -> usize {
    e.terms
        .iter()
        .map(|(_, a)| match a {
            Atom::Var(_) => 0,
            Atom::Div(i, _) | Atom::Mod(i, _) => 1 + count_in(i),
        })
        .sum()
}

fn count_divisions(inputs: &[Access], p: &ElementProgram) -> usize {
    let mut n = 0;
    for a in inputs {
        n += count_in(&a.offset);
        n += a.mask.iter().map(|c| count_in(&c.expr)).sum::<usize>();
    }
    for ins in &p.instrs {
        n += match ins {
            Instr::InBounds(cs) => cs.iter().map(|c| count_in(&c.expr)).sum(),
            Instr::IndexValue(e, _) => count_in(e),
            Instr::Random { index, .. } => count_in(index),
            _ => 0,
        };
    }
    n
}

/// Divisors of division and modulo atoms whose operand involves `var`.
fn collect_divisors(e: &Index, var: usize, out: &mut Vec<i64>) {
    for (_, a) in &e.terms {
        if let Atom::Div(i, k) | Atom::Mod(i, k) = a {
            if i.mentions(var) {
                out.push(*k);
            }
            collect_divisors(i, var, out);
        }
    }
}
