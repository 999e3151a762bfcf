//! Checks of a kernel program's invariants: what the steps after lowering
//! and every backend assume of their input. [`verify`] holds after every
//! step (lowering, loop reshaping, scheduling, planning); [`verify_memory`]
//! holds once the arena is planned. A broken invariant is an
//! [`Error::Verify`] naming it, never a panic: the lowering steps run these
//! between them in debug and test builds (see `lowering.rs`).
//!
//! The invariants:
//! - every buffer id a kernel, an output or an update names is in range;
//! - every buffer's size in bytes is addressable;
//! - `kernel_nodes` has one entry per kernel;
//! - kernels write only arena and result buffers, each buffer at most once;
//! - every buffer a kernel reads is an input, a variable or a constant, or
//!   is written by an earlier kernel (the schedule respects dependencies);
//! - every fetched output and every assigned value is written by a kernel
//!   or is an input, variable or constant; updates target variables;
//! - element programs refer only to earlier instructions and to accesses
//!   the kernel has, and their result is one of their instructions;
//! - loop shapes match the element counts of the buffers they write;
//! - after planning: arena offsets are 64-byte aligned, every temporary fits
//!   in the arena, and two temporaries whose lifetimes overlap do not share
//!   bytes (except an elementwise kernel writing in place over an input
//!   whose last use it is).

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::kernel::{
    Access, BufferId, ElementProgram, Epilogue, Instr, Kernel, KernelProgram, Storage,
};

/// The arena alignment `plan_memory` guarantees.
const ALIGN: usize = 64;

fn fail<T>(msg: String) -> Result<T> {
    Err(Error::Verify(msg))
}

fn in_range(p: &KernelProgram, b: BufferId, what: &str) -> Result<()> {
    if b.0 >= p.buffers.len() {
        return fail(format!(
            "{what} names buffer {b}, but the program has {} buffers",
            p.buffers.len()
        ));
    }
    Ok(())
}

/// True for buffers whose value exists before the first kernel runs.
fn is_source(storage: &Storage) -> bool {
    matches!(
        storage,
        Storage::Input { .. } | Storage::Variable { .. } | Storage::Constant { .. }
    )
}

fn check_accesses(p: &KernelProgram, accesses: &[Access], what: &str) -> Result<()> {
    for a in accesses {
        in_range(p, a.buffer, what)?;
    }
    Ok(())
}

fn check_element_program(e: &ElementProgram, loads: usize, what: &str) -> Result<()> {
    if e.result >= e.instrs.len() {
        return fail(format!(
            "{what}: the result is %{} but there are {} instructions",
            e.result,
            e.instrs.len()
        ));
    }
    for (i, ins) in e.instrs.iter().enumerate() {
        let operands: Vec<usize> = match ins {
            Instr::Load(a) => {
                if *a >= loads {
                    return fail(format!(
                        "{what}: %{i} loads access {a}, but the kernel has {loads} accesses"
                    ));
                }
                Vec::new()
            }
            Instr::Unary(_, a) | Instr::Cast(_, a) => vec![*a],
            Instr::Binary(_, a, b) => vec![*a, *b],
            Instr::Select(c, a, b) => vec![*c, *a, *b],
            Instr::Const(_)
            | Instr::Acc
            | Instr::InBounds(_)
            | Instr::IndexValue(..)
            | Instr::Random { .. } => Vec::new(),
        };
        if let Some(&o) = operands.iter().find(|&&o| o >= i) {
            return fail(format!(
                "{what}: %{i} uses %{o}, which is not an earlier instruction"
            ));
        }
    }
    Ok(())
}

fn check_epilogue(p: &KernelProgram, e: &Epilogue, what: &str) -> Result<()> {
    check_accesses(p, &e.inputs, what)?;
    check_element_program(&e.program, e.inputs.len(), &format!("{what} epilogue"))
}

fn product(dims: impl IntoIterator<Item = usize>) -> Option<usize> {
    dims.into_iter().try_fold(1usize, |a, d| a.checked_mul(d))
}

fn check_len(p: &KernelProgram, b: BufferId, want: Option<usize>, what: &str) -> Result<()> {
    let have = p.buffer(b).len();
    if want != Some(have) {
        let want = want.map_or("an overflowing count".into(), |w| w.to_string());
        return fail(format!(
            "{what} loops over {want} elements but writes {b} of {have} ({}{:?})",
            p.buffer(b).dtype,
            p.buffer(b).shape
        ));
    }
    Ok(())
}

/// Checks the structural invariants of `p` (see the module doc).
pub fn verify(p: &KernelProgram) -> Result<()> {
    for (i, b) in p.buffers.iter().enumerate() {
        let bytes =
            product(b.shape.iter().copied()).and_then(|n| n.checked_mul(b.dtype.size_bytes()));
        if bytes.is_none_or(|n| n > isize::MAX as usize) {
            return fail(format!(
                "buffer b{i} ({}{:?}) has more bytes than fit in memory",
                b.dtype, b.shape
            ));
        }
    }
    if p.kernel_nodes.len() != p.kernels.len() {
        return fail(format!(
            "{} kernels but {} lists of their nodes",
            p.kernels.len(),
            p.kernel_nodes.len()
        ));
    }
    let mut writer: HashMap<BufferId, usize> = HashMap::new();
    for (i, k) in p.kernels.iter().enumerate() {
        let what = format!("kernel k{i} ({})", k.label());
        check_kernel(p, k, &what)?;
        for b in k.reads() {
            let defined = is_source(&p.buffer(b).storage) || writer.contains_key(&b);
            if !defined {
                return fail(format!(
                    "{what} reads {b} ('{}'), which no earlier kernel writes",
                    p.buffer(b).node
                ));
            }
        }
        for b in k.outputs() {
            match &p.buffer(b).storage {
                Storage::Arena { .. } | Storage::Result => {}
                Storage::Input { .. } | Storage::Variable { .. } | Storage::Constant { .. } => {
                    return fail(format!(
                        "{what} writes {b} ('{}'), which is an input, variable or constant",
                        p.buffer(b).node
                    ))
                }
            }
            if let Some(j) = writer.insert(b, i) {
                return fail(format!("{b} is written by both k{j} and k{i}"));
            }
        }
    }
    let defined = |b: BufferId| is_source(&p.buffer(b).storage) || writer.contains_key(&b);
    for &o in &p.outputs {
        in_range(p, o, "an output")?;
        if !defined(o) {
            return fail(format!(
                "output {o} ('{}') is never written",
                p.buffer(o).node
            ));
        }
    }
    for &(v, x) in &p.updates {
        in_range(p, v, "an update")?;
        in_range(p, x, "an update")?;
        if !matches!(p.buffer(v).storage, Storage::Variable { .. }) {
            return fail(format!("update {v} <- {x}: {v} is not a variable"));
        }
        if !defined(x) {
            return fail(format!("update {v} <- {x}: {x} is never written"));
        }
        if p.buffer(v).dtype != p.buffer(x).dtype || p.buffer(v).len() != p.buffer(x).len() {
            return fail(format!(
                "update {v} <- {x}: the types differ ({}{:?} vs {}{:?})",
                p.buffer(v).dtype,
                p.buffer(v).shape,
                p.buffer(x).dtype,
                p.buffer(x).shape
            ));
        }
    }
    Ok(())
}

fn check_kernel(p: &KernelProgram, k: &Kernel, what: &str) -> Result<()> {
    for b in k.outputs().into_iter().chain(k.reads()) {
        in_range(p, b, what)?;
    }
    match k {
        Kernel::Elementwise {
            out,
            shape,
            inputs,
            program,
        } => {
            check_element_program(program, inputs.len(), what)?;
            check_len(p, *out, product(shape.iter().copied()), what)
        }
        Kernel::Reduce {
            out,
            shape,
            axes,
            inputs,
            body,
            map,
            ..
        } => {
            if let Some(&a) = axes.iter().find(|&&a| a >= shape.len()) {
                return fail(format!(
                    "{what} reduces axis {a} of a loop of rank {}",
                    shape.len()
                ));
            }
            check_element_program(body, inputs.len(), what)?;
            if let Some(o) = out {
                let kept = shape
                    .iter()
                    .enumerate()
                    .filter(|(d, _)| !axes.contains(d))
                    .map(|(_, &n)| n);
                check_len(p, *o, product(kept), what)?;
            }
            if let Some((m, prog)) = map {
                check_element_program(prog, inputs.len(), &format!("{what} map"))?;
                check_len(
                    p,
                    *m,
                    product(shape.iter().copied()),
                    &format!("{what} map"),
                )?;
            }
            Ok(())
        }
        Kernel::MatMul {
            out,
            a,
            b,
            batch,
            mnk,
            epilogue,
        } => {
            for (name, o) in [("a", a), ("b", b)] {
                if o.strides.len() != batch.len() + 2 {
                    return fail(format!(
                        "{what}: operand {name} has {} strides for {} batch dims",
                        o.strides.len(),
                        batch.len()
                    ));
                }
            }
            check_epilogue(p, epilogue, what)?;
            let n = product(batch.iter().copied().chain([mnk[0], mnk[1]]));
            check_len(p, *out, n, what)
        }
        Kernel::Op { epilogue, .. } => check_epilogue(p, epilogue, what),
    }
}

/// The step of each buffer's first write and last use: `(def, last)`.
fn lifetimes(p: &KernelProgram) -> Vec<Option<(usize, usize)>> {
    let mut life: Vec<Option<(usize, usize)>> = vec![None; p.buffers.len()];
    for (i, k) in p.kernels.iter().enumerate() {
        for b in k.outputs() {
            let l = life[b.0].get_or_insert((i, i));
            l.0 = l.0.min(i);
            l.1 = l.1.max(i);
        }
    }
    for (i, k) in p.kernels.iter().enumerate() {
        for b in k.reads() {
            if let Some(l) = &mut life[b.0] {
                l.1 = l.1.max(i);
            }
        }
    }
    life
}

/// True when kernel `step` is elementwise, writes one of `a`, `b` and reads
/// the other: the planner may place its output over that input.
fn in_place_at(p: &KernelProgram, step: usize, a: usize, b: usize) -> bool {
    let k = &p.kernels[step];
    let Kernel::Elementwise { out, .. } = k else {
        return false;
    };
    let reads = k.reads();
    (out.0 == a && reads.contains(&BufferId(b))) || (out.0 == b && reads.contains(&BufferId(a)))
}

/// Checks the memory plan of a planned program (see the module doc); call
/// after [`verify`].
pub fn verify_memory(p: &KernelProgram) -> Result<()> {
    let life = lifetimes(p);
    // (buffer, offset, bytes, def, last) of every written temporary.
    let mut temps = Vec::new();
    for (i, b) in p.buffers.iter().enumerate() {
        let Storage::Arena { offset } = b.storage else {
            continue;
        };
        if offset % ALIGN != 0 {
            return fail(format!(
                "buffer b{i} ('{}') is at arena offset {offset}, not {ALIGN}-byte aligned",
                b.node
            ));
        }
        let Some((def, last)) = life[i] else {
            continue;
        };
        let end = offset + b.size_bytes();
        if end > p.memory.arena {
            return fail(format!(
                "buffer b{i} ('{}') ends at byte {end}, past the {}-byte arena",
                b.node, p.memory.arena
            ));
        }
        if b.size_bytes() > 0 {
            temps.push((i, offset, end, def, last));
        }
    }
    // By offset: each buffer meets only those that start before it ends.
    temps.sort_by_key(|t| (t.1, t.0));
    for (x, &(a, a_lo, a_hi, a_def, a_last)) in temps.iter().enumerate() {
        for &(b, b_lo, b_hi, b_def, b_last) in &temps[x + 1..] {
            if b_lo >= a_hi {
                break;
            }
            let live_together = a_def <= b_last && b_def <= a_last;
            if !live_together {
                continue;
            }
            // Lifetimes that only touch at one step where one buffer is
            // written in place over the other.
            let touch = if a_last == b_def {
                Some(a_last)
            } else if b_last == a_def {
                Some(b_last)
            } else {
                None
            };
            if touch.is_some_and(|s| in_place_at(p, s, a, b)) {
                continue;
            }
            return fail(format!(
                "buffers b{a} ('{}', bytes {a_lo}..{a_hi}, kernels {a_def}..={a_last}) and b{b} \
                 ('{}', bytes {b_lo}..{b_hi}, kernels {b_def}..={b_last}) share arena bytes while both live",
                p.buffers[a].node, p.buffers[b].node
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lowering::Lowering;
    use kiln_graph::{Array, Bindings, DType, GraphBuilder};

    /// exp(x) @ w + sin(x) @ w: two matmul operands live at once in the arena.
    fn program() -> KernelProgram {
        let g = GraphBuilder::new();
        let x = g.placeholder("x", DType::F32, [4, 8]).unwrap();
        let w = g
            .constant(Array::from_vec(vec![8, 8], vec![0.5f32; 64]).unwrap())
            .unwrap();
        let p = x.exp().unwrap().matmul(w).unwrap();
        let q = x.sin().unwrap().matmul(w).unwrap();
        g.output(p.add(q).unwrap()).unwrap();
        let graph = g.into_graph();
        crate::compile(
            &graph,
            graph.outputs(),
            &Bindings::new(),
            &Default::default(),
        )
        .unwrap()
        .program
    }

    fn err(p: &KernelProgram) -> String {
        match verify(p).and_then(|()| verify_memory(p)) {
            Ok(()) => panic!("verify accepted a broken program:\n{p}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_compiled_program_verifies() {
        let p = program();
        verify(&p).unwrap();
        verify_memory(&p).unwrap();
        // And running the steps again over it keeps it valid.
        let mut q = p.clone();
        Lowering::new().verify_always().run_steps(&mut q).unwrap();
    }

    #[test]
    fn a_read_before_its_write_is_caught() {
        let mut p = program();
        let first_reader = p
            .kernels
            .iter()
            .position(|k| k.reads().iter().any(|b| !is_source(&p.buffer(*b).storage)))
            .expect("some kernel reads a temporary");
        let producer = p.kernels.remove(first_reader - 1);
        p.kernels.push(producer);
        let e = err(&p);
        assert!(e.contains("which no earlier kernel writes"), "{e}");
        // Through the steps, the error names where it was found.
        let e = Lowering::new()
            .verify_always()
            .run_steps(&mut p)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("step input: verification failed"), "{e}");
    }

    #[test]
    fn a_buffer_out_of_range_is_caught() {
        let mut p = program();
        p.outputs.push(BufferId(p.buffers.len() + 3));
        assert!(err(&p).contains("names buffer"));
    }

    #[test]
    fn a_forward_reference_in_an_element_program_is_caught() {
        let mut p = program();
        let k = p
            .kernels
            .iter_mut()
            .find_map(|k| match k {
                Kernel::MatMul { epilogue, .. } | Kernel::Op { epilogue, .. } => Some(epilogue),
                _ => None,
            })
            .expect("a matmul");
        let n = k.program.instrs.len();
        k.program
            .instrs
            .push(Instr::Unary(kiln_graph::UnaryOp::Neg, n + 1));
        assert!(err(&p).contains("is not an earlier instruction"));
    }

    #[test]
    fn a_loop_that_does_not_cover_its_output_is_caught() {
        let mut p = program();
        let shape = p
            .kernels
            .iter_mut()
            .find_map(|k| match k {
                Kernel::Elementwise { shape, .. } => Some(shape),
                _ => None,
            })
            .expect("an elementwise kernel");
        shape.push(2);
        assert!(err(&p).contains("loops over"));
    }

    #[test]
    fn writing_an_input_is_caught() {
        let mut p = program();
        let out = p.kernels[0].outputs()[0];
        p.buffers[out.0].storage = Storage::Input { name: "x2".into() };
        assert!(err(&p).contains("which is an input, variable or constant"));
    }

    #[test]
    fn overlapping_live_temporaries_are_caught() {
        let mut p = program();
        let life = lifetimes(&p);
        let temps: Vec<usize> = (0..p.buffers.len())
            .filter(|&b| matches!(p.buffers[b].storage, Storage::Arena { .. }) && life[b].is_some())
            .collect();
        let (a, b) = temps
            .iter()
            .flat_map(|&a| temps.iter().map(move |&b| (a, b)))
            .find(|&(a, b)| {
                let (x, y) = (life[a].unwrap(), life[b].unwrap());
                a < b && x.0 <= y.1 && y.0 <= x.1 && x.1 != y.0 && y.1 != x.0
            })
            .expect("two temporaries live at once");
        p.buffers[a].storage = Storage::Arena { offset: 0 };
        p.buffers[b].storage = Storage::Arena { offset: 0 };
        verify(&p).unwrap();
        assert!(err(&p).contains("share arena bytes while both live"));
    }

    #[test]
    fn a_misaligned_offset_is_caught() {
        let mut p = program();
        let b = p
            .buffers
            .iter()
            .position(|b| matches!(b.storage, Storage::Arena { .. }))
            .expect("a temporary");
        p.buffers[b].storage = Storage::Arena { offset: 8 };
        assert!(err(&p).contains("not 64-byte aligned"));
    }
}
