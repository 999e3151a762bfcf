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
use kiln_rt::rows::{Binary, Fill, MulAdd, Src, Step, MAX_PTRS, MAX_SLOTS};
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
