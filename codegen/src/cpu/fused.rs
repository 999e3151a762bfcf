//! Epilogues of channels-last convolutions that the kernels apply in
//! registers as they store (`kiln_rt::fuse`): a chain from the
//! convolution's result through a per-channel bias, a residual of the
//! output's layout and clamps by constants, each intermediate used once,
//! ending in at most one activation (sigmoid, SiLU as `x * sigmoid(x)`,
//! hard-swish as kiln's ONNX import writes it). Anything else compiles as
//! an epilogue loop.

use kiln_graph::{BinaryOp, DType, Op, UnaryOp};
use kiln_optimizer::index::Atom;
use kiln_optimizer::kernel::{Access, Epilogue, Instr, Kernel, KernelProgram};
use kiln_rt::fuse::Step;

/// A fused epilogue: its steps and where the bias and residual are
/// (buffer, element offset).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Fusion {
    pub steps: Vec<Step>,
    pub bias: Option<(usize, i64)>,
    pub residual: Option<(usize, i64)>,
}

/// The fused form of kernel `k`'s epilogue, where it is a channels-last
/// f32 convolution's and has one.
pub(crate) fn fusion(program: &KernelProgram, k: usize) -> Option<Fusion> {
    let Kernel::Op {
        op: Op::Conv2d {
            channels_last: true,
            ..
        },
        out,
        epilogue,
        ..
    } = &program.kernels[k]
    else {
        return None;
    };
    let shape = &program.buffer(*out).shape;
    if program.buffer(*out).dtype != DType::F32 || shape.len() != 4 {
        return None;
    }
    of(program, shape, epilogue)
}

/// How an input of the epilogue is read, over the output's `[n, oh, ow, c]`.
#[derive(Clone, Copy, PartialEq)]
enum Read {
    /// By channel only.
    Bias,
    /// At the output's own position.
    Residual,
}

fn read(a: &Access, shape: &[usize]) -> Option<Read> {
    if !a.mask.is_empty() {
        return None;
    }
    let mut coef = [0i64; 4];
    for (c, atom) in &a.offset.terms {
        match atom {
            Atom::Var(v) if *v < 4 => coef[*v] += c,
            _ => return None,
        }
    }
    let strides = [
        shape[1] * shape[2] * shape[3],
        shape[2] * shape[3],
        shape[3],
        1,
    ];
    // Dims of one element read any coefficient.
    let fits = |want: &dyn Fn(usize) -> i64| (0..4).all(|d| shape[d] == 1 || coef[d] == want(d));
    if fits(&|d| if d == 3 { 1 } else { 0 }) {
        Some(Read::Bias)
    } else if fits(&|d| strides[d] as i64) {
        Some(Read::Residual)
    } else {
        None
    }
}

fn of(program: &KernelProgram, shape: &[usize], e: &Epilogue) -> Option<Fusion> {
    let p = &e.program;
    let mut uses = vec![0usize; p.instrs.len()];
    for i in &p.instrs {
        for o in i.operands() {
            uses[o] += 1;
        }
    }
    let mut fusion = Fusion {
        steps: Vec::new(),
        bias: None,
        residual: None,
    };
    let constant = |i: usize| match &p.instrs[i] {
        Instr::Const(s) => Some(s.to_f64() as f32).filter(|v| !v.is_nan()),
        _ => None,
    };
    // From the result back to the accumulator, the activation first.
    let mut at = p.result;
    if let Some((step, x)) = activation(p, &uses, at) {
        fusion.steps.push(step);
        at = x;
    }
    loop {
        match &p.instrs[at] {
            Instr::Acc => break,
            Instr::Binary(f, a, b) => {
                let (a, b) = (*a, *b);
                let step = match f {
                    BinaryOp::Add => {
                        let (load, chain) = match (&p.instrs[a], &p.instrs[b]) {
                            (Instr::Load(i), _) => (*i, b),
                            (_, Instr::Load(i)) => (*i, a),
                            _ => return None,
                        };
                        let input = e.inputs.get(load)?;
                        let buf = program.buffer(input.buffer);
                        if buf.dtype != DType::F32 {
                            return None;
                        }
                        let operand = (input.buffer.0, input.offset.constant);
                        let step = match read(input, shape)? {
                            Read::Bias if fusion.bias.is_none() => {
                                fusion.bias = Some(operand);
                                Step::Bias
                            }
                            Read::Residual if fusion.residual.is_none() => {
                                fusion.residual = Some(operand);
                                Step::Residual
                            }
                            _ => return None,
                        };
                        (step, chain)
                    }
                    BinaryOp::Max | BinaryOp::Min => {
                        let (k, chain) = match (constant(a), constant(b)) {
                            (Some(k), None) => (k, b),
                            (None, Some(k)) => (k, a),
                            _ => return None,
                        };
                        let step = if *f == BinaryOp::Max {
                            Step::Max(k)
                        } else {
                            Step::Min(k)
                        };
                        (step, chain)
                    }
                    _ => return None,
                };
                let (step, chain) = step;
                if uses[chain] != 1 {
                    return None;
                }
                fusion.steps.push(step);
                at = chain;
            }
            _ => return None,
        }
    }
    fusion.steps.reverse();
    kiln_rt::fuse::canonical(&fusion.steps)?;
    (!fusion.steps.is_empty()).then_some(fusion)
}

/// The activation that instruction `at` ends, and the value it takes: the
/// instructions between them used by the activation alone, the value by
/// nothing else.
fn activation(
    p: &kiln_optimizer::kernel::ElementProgram,
    uses: &[usize],
    at: usize,
) -> Option<(Step, usize)> {
    let constant = |i: usize, k: f64| matches!(&p.instrs[i], Instr::Const(s) if s.to_f64() == k);
    let sigmoid_of = |i: usize| match &p.instrs[i] {
        Instr::Unary(UnaryOp::Sigmoid, x) if uses[i] == 1 => Some(*x),
        _ => None,
    };
    // `op(a, b)` or `op(b, a)` where `b` is the constant `k`: `a`.
    let with_const = |i: usize, op: BinaryOp, k: f64| match &p.instrs[i] {
        Instr::Binary(f, a, b) if *f == op && uses[i] == 1 => {
            if constant(*b, k) {
                Some(*a)
            } else if constant(*a, k) && op != BinaryOp::Div {
                Some(*b)
            } else {
                None
            }
        }
        _ => None,
    };
    if let Instr::Unary(UnaryOp::Sigmoid, x) = &p.instrs[at] {
        return (uses[*x] == 1).then_some((Step::Sigmoid, *x));
    }
    let Instr::Binary(BinaryOp::Mul, a, b) = &p.instrs[at] else {
        return None;
    };
    for (l, r) in [(*a, *b), (*b, *a)] {
        // x * sigmoid(x)
        if sigmoid_of(r) == Some(l) && uses[l] == 2 {
            return Some((Step::Silu, l));
        }
        // max(x, -3) * min(max((x + 3) / 6, 0), 1)
        let x = with_const(l, BinaryOp::Max, -3.0);
        let h = with_const(r, BinaryOp::Min, 1.0)
            .and_then(|i| with_const(i, BinaryOp::Max, 0.0))
            .and_then(|i| with_const(i, BinaryOp::Div, 6.0))
            .and_then(|i| with_const(i, BinaryOp::Add, 3.0));
        if let (Some(x), Some(h)) = (x, h) {
            if x == h && uses[x] == 2 {
                return Some((Step::HardSwish, x));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_graph::Scalar;
    use kiln_optimizer::kernel::ElementProgram;
    use BinaryOp::*;

    /// `instrs` as a program whose result is the last, and each
    /// instruction's number of readers.
    fn program(instrs: Vec<Instr>) -> (ElementProgram, Vec<usize>) {
        let mut uses = vec![0; instrs.len()];
        for ins in &instrs {
            for r in ins.operands() {
                uses[r] += 1;
            }
        }
        let result = instrs.len() - 1;
        (ElementProgram { instrs, result }, uses)
    }

    fn c(v: f32) -> Instr {
        Instr::Const(Scalar::F32(v))
    }

    /// Hard-swish of instruction 0 as kiln's ONNX import writes it, with
    /// `six` for 6 and the product's operands swapped or not.
    fn hard_swish(six: f32, swap: bool) -> Vec<Instr> {
        vec![
            Instr::Acc,
            c(-3.0),
            Instr::Binary(Max, 0, 1),
            c(3.0),
            Instr::Binary(Add, 0, 3),
            c(six),
            Instr::Binary(Div, 4, 5),
            c(0.0),
            Instr::Binary(Max, 6, 7),
            c(1.0),
            Instr::Binary(Min, 8, 9),
            if swap {
                Instr::Binary(Mul, 10, 2)
            } else {
                Instr::Binary(Mul, 2, 10)
            },
        ]
    }

    fn found(instrs: Vec<Instr>) -> Option<(Step, usize)> {
        let (p, uses) = program(instrs);
        activation(&p, &uses, p.result)
    }

    #[test]
    fn activations_are_found_and_near_misses_are_not() {
        let sig = Instr::Unary(UnaryOp::Sigmoid, 0);
        assert_eq!(
            found(vec![Instr::Acc, sig.clone()]),
            Some((Step::Sigmoid, 0))
        );
        for mul in [Instr::Binary(Mul, 0, 1), Instr::Binary(Mul, 1, 0)] {
            assert_eq!(
                found(vec![Instr::Acc, sig.clone(), mul]),
                Some((Step::Silu, 0))
            );
        }
        assert_eq!(found(hard_swish(6.0, false)), Some((Step::HardSwish, 0)));
        assert_eq!(found(hard_swish(6.0, true)), Some((Step::HardSwish, 0)));
        // x * sigmoid(y); a value read by a third instruction; another
        // constant; sigmoid's value read elsewhere.
        let other = vec![
            Instr::Acc,
            Instr::Load(0),
            Instr::Unary(UnaryOp::Sigmoid, 1),
            Instr::Binary(Mul, 0, 2),
        ];
        assert_eq!(found(other), None);
        let mut third = vec![Instr::Acc, sig.clone(), Instr::Binary(Mul, 0, 1)];
        third.push(Instr::Binary(Add, 2, 0));
        let (p, uses) = program(third);
        assert_eq!(activation(&p, &uses, 2), None);
        assert_eq!(found(hard_swish(5.0, false)), None);
        let shared = vec![
            Instr::Acc,
            sig,
            Instr::Binary(Mul, 0, 1),
            Instr::Binary(Add, 2, 1),
        ];
        let (p, uses) = program(shared);
        assert_eq!(activation(&p, &uses, 2), None);
    }
}
