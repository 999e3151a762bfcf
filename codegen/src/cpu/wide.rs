//! Long f32 elementwise rows in AVX-512 or AVX2: an [`ElementProgram`]
//! turned into `kiln_rt::rows`'s row program (slots, fills and block
//! steps), which compiled code hands row by row to the row code of the
//! chosen [`Isa`] (`kiln_row_f32` / `kiln_reduce_row_f32` for AVX-512,
//! `kiln_row_f32_avx2` / `kiln_reduce_row_f32_avx2` for AVX2; see
//! `kiln_rt::rows` for the evaluation). The program is the same bytes for
//! both; [`isa`] picks: AVX-512 where the host has it and the setting
//! allows, else AVX2 with FMA, else none (rows stay in `vector.rs`'s
//! 128-bit code).
//!
//! The approximations are the algorithms and constants of the 128-bit code
//! in `vector.rs`, except that erf is a rational function (no exp), that
//! the reciprocals inside tanh, sigmoid and erf are a hardware estimate
//! refined by Newton steps rather than a division, and that a product
//! feeding only a sum or difference is one fused multiply-add; every path
//! is held to the same error bounds by `tests/tests/cpu_math.rs`,
//! `tests/tests/cpu_wide.rs` and `tests/tests/math_range.rs`.

use kiln_graph::{BinaryOp, DType, ReduceOp, UnaryOp};
use kiln_optimizer::kernel::{Access, ElementProgram, Instr, KernelProgram};
use kiln_rt::rows::{Binary, Fill, GeluForm, MulAdd, Src, Step, MAX_PTRS, MAX_SLOTS};
pub(crate) use kiln_rt::rows::{Isa, RowProgram};

/// The ISA of the host's row code: AVX-512 where the host has it and
/// `avx512` allows it, else AVX2 with FMA where the host has those; `None`
/// on a host with neither.
pub(crate) fn isa(avx512: bool) -> Option<Isa> {
    Isa::host(avx512)
}

/// The code `kiln_reduce_row_f32` (either ISA's) takes for `op`.
pub(crate) fn reduce_code(op: ReduceOp) -> i32 {
    match op {
        ReduceOp::Sum => 0,
        ReduceOp::Prod => 1,
        ReduceOp::Max => 2,
        ReduceOp::Min => 3,
    }
}

/// The block form of a unary op: the functions the 128-bit path computes
/// in lanes ([`super::vector::has_vector_form`]); rows with others run the
/// scalar loop.
fn unary(f: UnaryOp) -> Option<UnaryOp> {
    super::vector::has_vector_form(f).then_some(f)
}

/// The block form of a binary op.
fn binary(f: BinaryOp) -> Option<Binary> {
    use BinaryOp::*;
    Some(match f {
        Add => Binary::Add,
        Sub => Binary::Sub,
        Mul => Binary::Mul,
        Div => Binary::Div,
        Max => Binary::Max,
        Min => Binary::Min,
        Eq => Binary::Eq,
        Ne => Binary::Ne,
        Lt => Binary::Lt,
        Le => Binary::Le,
        Gt => Binary::Gt,
        Ge => Binary::Ge,
        _ => return None,
    })
}

/// How an elementwise row reads its accumulator (`Instr::Acc`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum RowAccess {
    /// The row has no accumulator.
    None,
    /// Row pointer `n` (after the inputs) is contiguous along the row.
    Row,
    /// Row pointer `n` points at one scalar for the whole row.
    Scalar,
}

/// Row programs from element programs.
pub(crate) trait FromElements: Sized {
    /// Prepares `p` over `inputs` for a row along loop variable `last`, or
    /// `None` where some instruction or access has no block form. `stride`
    /// gives each input's coefficient of `last` (0 or 1; `None` rejects).
    fn from_elements(
        prog: &KernelProgram,
        inputs: &[Access],
        p: &ElementProgram,
        stride: &dyn Fn(&Access) -> Option<i64>,
        acc: RowAccess,
    ) -> Option<Self>;
}

impl FromElements for RowProgram {
    fn from_elements(
        prog: &KernelProgram,
        inputs: &[Access],
        p: &ElementProgram,
        stride: &dyn Fn(&Access) -> Option<i64>,
        acc: RowAccess,
    ) -> Option<RowProgram> {
        let n = inputs.len();
        if n + 1 > MAX_PTRS {
            return None;
        }
        // Which instructions the result needs.
        let mut needed = vec![false; p.instrs.len()];
        needed[p.result] = true;
        for i in (0..p.instrs.len()).rev() {
            if !needed[i] {
                continue;
            }
            match p.instrs[i] {
                Instr::Unary(_, a) => needed[a] = true,
                Instr::Binary(_, a, b) => {
                    needed[a] = true;
                    needed[b] = true;
                }
                Instr::Select(c, a, b) => {
                    needed[c] = true;
                    needed[a] = true;
                    needed[b] = true;
                }
                _ => {}
            }
        }
        // Last step index that reads each instruction's value, and how many
        // steps read it.
        let mut last_use = vec![0usize; p.instrs.len()];
        let mut uses = vec![0usize; p.instrs.len()];
        for (i, ins) in p.instrs.iter().enumerate().filter(|(i, _)| needed[*i]) {
            for r in operands(ins) {
                last_use[r] = i;
                uses[r] += 1;
            }
        }
        // GELU, its intermediates read only inside it: one step (see
        // `gelu_at`), its root's operands not computed on their own.
        let mut gelu: Vec<Option<Gelu>> = vec![None; p.instrs.len()];
        for i in (0..p.instrs.len()).rev() {
            if !needed[i] {
                continue;
            }
            if let Some(g) = gelu_at(p, i, &uses) {
                for &m in &g.members {
                    needed[m] = false;
                }
                last_use[g.x] = last_use[g.x].max(i);
                gelu[i] = Some(g);
            }
        }
        // x * sigmoid(x), the sigmoid read only there: one swish step (the
        // sigmoid is then not computed on its own).
        let mut swish: Vec<Option<usize>> = vec![None; p.instrs.len()];
        for (i, ins) in p.instrs.iter().enumerate() {
            if !needed[i] {
                continue;
            }
            if let Instr::Binary(BinaryOp::Mul, a, c) = *ins {
                let sig = |s: usize, x: usize| {
                    s != p.result
                        && uses[s] == 1
                        && matches!(p.instrs[s], Instr::Unary(UnaryOp::Sigmoid, y) if y == x)
                };
                if sig(c, a) {
                    swish[i] = Some(a);
                } else if sig(a, c) {
                    swish[i] = Some(c);
                }
                if let Some(x) = swish[i] {
                    let s = if x == a { c } else { a };
                    needed[s] = false;
                    last_use[x] = last_use[x].max(i);
                }
            }
        }
        // A product read only by a sum or difference becomes one fused
        // multiply-add there (one pass over the block instead of two).
        let mut fused: Vec<Option<usize>> = vec![None; p.instrs.len()];
        for (i, ins) in p.instrs.iter().enumerate().filter(|(i, _)| needed[*i]) {
            if let Instr::Binary(BinaryOp::Add | BinaryOp::Sub, a, c) = *ins {
                let product = |m: usize| {
                    m != p.result
                        && uses[m] == 1
                        && swish[m].is_none()
                        && matches!(p.instrs[m], Instr::Binary(BinaryOp::Mul, ..))
                };
                let m = if product(a) {
                    a
                } else if product(c) && c != a {
                    c
                } else {
                    continue;
                };
                fused[m] = Some(i);
                if let Instr::Binary(_, x, y) = p.instrs[m] {
                    last_use[x] = last_use[x].max(i);
                    last_use[y] = last_use[y].max(i);
                }
            }
        }
        let mut b = Builder {
            fills: Vec::new(),
            steps: Vec::new(),
            rows: Vec::new(),
            free: Vec::new(),
            slots: 0,
        };
        let mut vals: Vec<Option<Src>> = vec![None; p.instrs.len()];
        // Step results own their slot until their last use.
        let mut owned: Vec<Option<u16>> = vec![None; p.instrs.len()];
        // f32 vectors (true) or lane masks (false).
        let mut float = vec![true; p.instrs.len()];
        for (i, ins) in p.instrs.iter().enumerate() {
            if !needed[i] {
                continue;
            }
            let (step, reads): (Step, Vec<usize>) = match *ins {
                Instr::Load(a) => {
                    let acc = &inputs[a];
                    if prog.buffer(acc.buffer).dtype != DType::F32 || !acc.mask.is_empty() {
                        return None;
                    }
                    vals[i] = Some(match stride(acc)? {
                        1 => b.row(a as u16),
                        0 => b.fill(Fill::Scalar(a as u16))?,
                        _ => return None,
                    });
                    continue;
                }
                Instr::Const(c) if c.dtype() == DType::F32 => {
                    vals[i] = Some(b.fill(Fill::Const(c.to_f64() as f32))?);
                    continue;
                }
                Instr::Acc => {
                    vals[i] = Some(match acc {
                        RowAccess::None => return None,
                        RowAccess::Row => b.row(n as u16),
                        RowAccess::Scalar => b.fill(Fill::Scalar(n as u16))?,
                    });
                    continue;
                }
                Instr::Unary(f, a) => {
                    if !super::vector::has_vector_form(f) || !float[a] {
                        return None;
                    }
                    (Step::Unary(unary(f)?, vals[a]?), vec![a])
                }
                Instr::Binary(..) if gelu[i].is_some() => {
                    let g = gelu[i].as_ref()?;
                    if !float[g.x] {
                        return None;
                    }
                    let k1 = b.fill(Fill::Const(g.k1))?;
                    let k2 = b.fill(Fill::Const(g.k2))?;
                    (
                        Step::Gelu(g.form, g.half_last, vals[g.x]?, k1, k2),
                        vec![g.x],
                    )
                }
                Instr::Binary(..) if swish[i].is_some() => {
                    let x = swish[i]?;
                    if !float[x] {
                        return None;
                    }
                    (Step::Swish(vals[x]?), vec![x])
                }
                Instr::Binary(f, a, c) => {
                    use BinaryOp::*;
                    if !float[a] || !float[c] {
                        return None;
                    }
                    match f {
                        Add | Sub | Mul | Div | Max | Min => {}
                        Eq | Ne | Lt | Le | Gt | Ge => float[i] = false,
                        _ => return None,
                    }
                    if fused[i].is_some() {
                        // Computed by the step that reads it.
                        continue;
                    }
                    let product = |m: usize| match p.instrs[m] {
                        Instr::Binary(Mul, x, y) if fused[m] == Some(i) => Some((x, y)),
                        _ => None,
                    };
                    match (f, product(a), product(c)) {
                        (Add, Some((x, y)), _) | (Add, None, Some((x, y))) => {
                            let other = if product(a).is_some() { c } else { a };
                            let step = Step::MulAdd(MulAdd::Add, vals[x]?, vals[y]?, vals[other]?);
                            (step, vec![x, y, other])
                        }
                        (Sub, Some((x, y)), _) => {
                            let step = Step::MulAdd(MulAdd::Sub, vals[x]?, vals[y]?, vals[c]?);
                            (step, vec![x, y, c])
                        }
                        (Sub, None, Some((x, y))) => {
                            let step = Step::MulAdd(MulAdd::SubFrom, vals[x]?, vals[y]?, vals[a]?);
                            (step, vec![x, y, a])
                        }
                        _ => (Step::Binary(binary(f)?, vals[a]?, vals[c]?), vec![a, c]),
                    }
                }
                Instr::Select(c, x, y) => {
                    if float[c] || !float[x] || !float[y] {
                        return None;
                    }
                    (Step::Select(vals[c]?, vals[x]?, vals[y]?), vec![c, x, y])
                }
                _ => return None,
            };
            // Operands read for the last time free their slots first, so the
            // result may overwrite one (steps go vector by vector).
            for r in reads {
                if last_use[r] == i {
                    if let Some(s) = owned[r].take() {
                        b.free.push(s);
                    }
                }
            }
            if i == p.result {
                b.steps.push((step, None));
            } else {
                let s = b.fresh()?;
                owned[i] = Some(s);
                vals[i] = Some(Src::Slot(s));
                b.steps.push((step, Some(s)));
            }
        }
        if !float[p.result] {
            return None;
        }
        if !matches!(
            p.instrs[p.result],
            Instr::Unary(..) | Instr::Binary(..) | Instr::Select(..)
        ) {
            b.steps.push((Step::Copy(vals[p.result]?), None));
        }
        let Builder {
            fills, steps, rows, ..
        } = b;
        RowProgram::new(
            n + usize::from(acc != RowAccess::None),
            &fills,
            &steps,
            &rows,
        )
    }
}

/// A GELU found in an element program: its input, form, constants and
/// the instructions it replaces (all but the input).
#[derive(Clone, Debug)]
struct Gelu {
    x: usize,
    form: GeluForm,
    /// `(x * T) * 0.5` rather than `(x * 0.5) * T`.
    half_last: bool,
    k1: f32,
    k2: f32,
    members: Vec<usize>,
}

/// The GELU that instruction `root` computes, if it is one: `x * T * 0.5`
/// (the product in any order and grouping) with `T` either `1 + erf(x *
/// k1)` or `1 + erf(x / c)` (PyTorch's exact GELU, `k1` = 1/sqrt(2)), or
/// `1 + tanh((x + x * x * x * k1) * k2)` (GPT-2's, `k1` = 0.044715, `k2` =
/// sqrt(2/pi)), each constant within 1e-6 of those, every intermediate
/// read only inside (`uses`).
fn gelu_at(p: &ElementProgram, root: usize, uses: &[usize]) -> Option<Gelu> {
    let konst = |j: usize| match &p.instrs[j] {
        Instr::Const(c) if c.dtype() == DType::F32 => Some(c.to_f64() as f32),
        _ => None,
    };
    let inner = |j: usize| j != p.result && uses[j] == 1;
    // The leaves of a product tree from `j`, through products read once.
    fn factors(
        p: &ElementProgram,
        j: usize,
        top: bool,
        inner: &dyn Fn(usize) -> bool,
        members: &mut Vec<usize>,
        out: &mut Vec<usize>,
    ) {
        match p.instrs[j] {
            Instr::Binary(BinaryOp::Mul, a, b) if top || inner(j) => {
                if !top {
                    members.push(j);
                }
                factors(p, a, false, inner, members, out);
                factors(p, b, false, inner, members, out);
            }
            _ => out.push(j),
        }
    }
    let near = |v: f32, want: f64| ((v as f64) - want).abs() <= 1e-6 * want.abs();
    let mut members = Vec::new();
    let mut leaves = Vec::new();
    if !matches!(p.instrs[root], Instr::Binary(BinaryOp::Mul, ..)) {
        return None;
    }
    factors(p, root, true, &inner, &mut members, &mut leaves);
    if leaves.len() != 3 {
        return None;
    }
    let half = leaves.iter().position(|&j| konst(j) == Some(0.5))?;
    let rest: Vec<usize> = (0..3).filter(|&k| k != half).map(|k| leaves[k]).collect();
    if inner(leaves[half]) {
        members.push(leaves[half]);
    }
    // One of the other two is `T = 1 + f(..)`, the other `x`.
    for (t, x) in [(rest[0], rest[1]), (rest[1], rest[0])] {
        if !inner(t) || konst(x).is_some() {
            continue;
        }
        // The half applied last: `(x * T) * 0.5`, either way round.
        let half_last = match p.instrs[root] {
            Instr::Binary(_, a, b) => [(a, b), (b, a)].into_iter().any(|(h, q)| {
                h == leaves[half]
                    && matches!(p.instrs[q], Instr::Binary(BinaryOp::Mul, u, v)
                        if (u == x && v == t) || (u == t && v == x))
            }),
            _ => false,
        };
        let Instr::Binary(BinaryOp::Add, a, b) = p.instrs[t] else {
            continue;
        };
        let (one, f) = if konst(a) == Some(1.0) {
            (a, b)
        } else {
            (b, a)
        };
        if konst(one) != Some(1.0) || !inner(f) {
            continue;
        }
        let mut m = members.clone();
        m.extend([t, f]);
        if inner(one) {
            m.push(one);
        }
        match p.instrs[f] {
            Instr::Unary(UnaryOp::Erf, z) if inner(z) => {
                m.push(z);
                let k1 = match p.instrs[z] {
                    Instr::Binary(BinaryOp::Mul, u, v) if u == x => konst(v),
                    Instr::Binary(BinaryOp::Mul, u, v) if v == x => konst(u),
                    Instr::Binary(BinaryOp::Div, u, v) if u == x => konst(v).map(|c| 1.0 / c),
                    _ => None,
                };
                let Some(k1) = k1.filter(|&k| near(k, std::f64::consts::FRAC_1_SQRT_2)) else {
                    continue;
                };
                if let Instr::Binary(_, u, v) = p.instrs[z] {
                    let c = if u == x { v } else { u };
                    if inner(c) {
                        m.push(c);
                    }
                }
                return Some(Gelu {
                    x,
                    form: GeluForm::Erf,
                    half_last,
                    k1,
                    k2: k1,
                    members: m,
                });
            }
            Instr::Unary(UnaryOp::Tanh, u) if inner(u) => {
                let mut outer = Vec::new();
                factors(p, u, false, &inner, &mut m, &mut outer);
                if outer.len() != 2 {
                    continue;
                }
                let Some(ki) = outer.iter().position(|&j| konst(j).is_some()) else {
                    continue;
                };
                let (kj, vj) = (outer[ki], outer[1 - ki]);
                let k2 = konst(kj)?;
                if !near(k2, (2.0 / std::f64::consts::PI).sqrt()) || !inner(vj) {
                    continue;
                }
                if inner(kj) {
                    m.push(kj);
                }
                // v = x + x * x * x * k1.
                let Instr::Binary(BinaryOp::Add, a, b) = p.instrs[vj] else {
                    continue;
                };
                m.push(vj);
                let w = if a == x {
                    b
                } else if b == x {
                    a
                } else {
                    continue;
                };
                if !inner(w) || !matches!(p.instrs[w], Instr::Binary(BinaryOp::Mul, ..)) {
                    continue;
                }
                let mut cubic = Vec::new();
                m.push(w);
                factors(p, w, true, &inner, &mut m, &mut cubic);
                let Some(ci) = cubic.iter().position(|&j| konst(j).is_some()) else {
                    continue;
                };
                let k1 = konst(cubic[ci])?;
                let xs = cubic
                    .iter()
                    .enumerate()
                    .filter(|&(k, &j)| k != ci && j == x)
                    .count();
                if cubic.len() != 4 || xs != 3 || !near(k1, 0.044715) {
                    continue;
                }
                if inner(cubic[ci]) {
                    m.push(cubic[ci]);
                }
                return Some(Gelu {
                    x,
                    form: GeluForm::Tanh,
                    half_last,
                    k1,
                    k2,
                    members: m,
                });
            }
            _ => continue,
        }
    }
    None
}

fn operands(ins: &Instr) -> Vec<usize> {
    match *ins {
        Instr::Unary(_, a) => vec![a],
        Instr::Binary(_, a, b) => vec![a, b],
        Instr::Select(c, a, b) => vec![c, a, b],
        _ => Vec::new(),
    }
}

struct Builder {
    fills: Vec<(u16, Fill)>,
    steps: Vec<(Step, Option<u16>)>,
    rows: Vec<u16>,
    free: Vec<u16>,
    slots: usize,
}

impl Builder {
    fn fresh(&mut self) -> Option<u16> {
        if let Some(s) = self.free.pop() {
            return Some(s);
        }
        (self.slots < MAX_SLOTS).then(|| {
            self.slots += 1;
            (self.slots - 1) as u16
        })
    }

    fn fill(&mut self, f: Fill) -> Option<Src> {
        // A slot of its own: fills happen once per row, before any step, so
        // a slot a step has used (and freed) would be overwritten per block.
        if self.slots >= MAX_SLOTS {
            return None;
        }
        self.slots += 1;
        let s = (self.slots - 1) as u16;
        self.fills.push((s, f));
        Some(Src::Slot(s))
    }

    fn row(&mut self, k: u16) -> Src {
        if !self.rows.contains(&k) {
            self.rows.push(k);
        }
        Src::Ptr(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_graph::Scalar;

    /// `instrs` as a program whose result is the last, and each
    /// instruction's number of readers.
    fn program(instrs: Vec<Instr>) -> (ElementProgram, Vec<usize>) {
        let mut uses = vec![0; instrs.len()];
        for ins in &instrs {
            for r in operands(ins) {
                uses[r] += 1;
            }
        }
        let result = instrs.len() - 1;
        (ElementProgram { instrs, result }, uses)
    }

    fn c(v: f32) -> Instr {
        Instr::Const(Scalar::F32(v))
    }

    /// PyTorch's exact GELU as exported: `(x * (1 + erf(x / c))) * half`.
    fn exact(sqrt2: f32, half: f32) -> Vec<Instr> {
        use BinaryOp::*;
        vec![
            Instr::Load(0),
            c(sqrt2),
            Instr::Binary(Div, 0, 1),
            Instr::Unary(UnaryOp::Erf, 2),
            c(1.0),
            Instr::Binary(Add, 3, 4),
            Instr::Binary(Mul, 0, 5),
            c(half),
            Instr::Binary(Mul, 6, 7),
        ]
    }

    /// GPT-2's: `(x * 0.5) * (1 + tanh((x + x * x * x * k1) * k2))`.
    fn tanh_form(k1: f32) -> Vec<Instr> {
        use BinaryOp::*;
        vec![
            Instr::Load(0),
            c(0.5),
            Instr::Binary(Mul, 0, 1),
            Instr::Binary(Mul, 0, 0),
            Instr::Binary(Mul, 3, 0),
            c(k1),
            Instr::Binary(Mul, 4, 5),
            Instr::Binary(Add, 0, 6),
            c(0.797_884_6),
            Instr::Binary(Mul, 7, 8),
            Instr::Unary(UnaryOp::Tanh, 9),
            c(1.0),
            Instr::Binary(Add, 10, 11),
            Instr::Binary(Mul, 2, 12),
        ]
    }

    #[test]
    fn gelu_forms_are_found_and_near_misses_are_not() {
        let (p, uses) = program(exact(std::f32::consts::SQRT_2, 0.5));
        let g = gelu_at(&p, p.result, &uses).expect("the exact GELU");
        assert_eq!((g.x, g.form, g.half_last), (0, GeluForm::Erf, true));
        assert!((g.k1 - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-7);
        assert!(!g.members.contains(&0) && g.members.contains(&3));
        let (p, uses) = program(tanh_form(0.044715));
        let g = gelu_at(&p, p.result, &uses).expect("the tanh GELU");
        assert_eq!((g.x, g.form, g.half_last), (0, GeluForm::Tanh, false));
        assert_eq!((g.k1, g.k2), (0.044715, 0.797_884_6));
        // Other constants, or an intermediate read twice, are not GELU.
        for (what, instrs) in [
            ("half 0.6", exact(std::f32::consts::SQRT_2, 0.6)),
            ("divisor 1.5", exact(1.5, 0.5)),
            ("k1 0.05", tanh_form(0.05)),
        ] {
            let (p, uses) = program(instrs);
            assert!(gelu_at(&p, p.result, &uses).is_none(), "{what}");
        }
        let mut twice = exact(std::f32::consts::SQRT_2, 0.5);
        twice.push(Instr::Binary(BinaryOp::Add, 8, 3));
        let (p, uses) = program(twice);
        assert!(gelu_at(&p, 8, &uses).is_none(), "erf read outside");
    }
}
