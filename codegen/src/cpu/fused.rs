//! Epilogues of channels-last convolutions that the kernels apply in
//! registers as they store (`kiln_rt::fuse`): a chain from the
//! convolution's result through a per-channel bias, a residual of the
//! output's layout and clamps by constants, each intermediate used once.
//! Anything else compiles as an epilogue loop.

use kiln_graph::{BinaryOp, DType, Op};
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
    // From the result back to the accumulator.
    let mut at = p.result;
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
