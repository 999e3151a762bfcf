//! Kernels that differ only in the buffers they touch share one compiled
//! function. An unrolled recurrent layer repeats one cell per time step,
//! a transformer one block per layer, a ResNet one block per stage: the
//! same loop nests over other buffers, or over other slices of one buffer
//! (step `t` reads row `t` of the input projection). Each such nest is
//! rewritten over *slots* (its buffers numbered in order of first use, each
//! input's constant element offset moved into its slot's base address),
//! compiled once per distinct rewritten form, and given at run time a
//! table of its own: per slot, a buffer of the program's table plus a byte
//! offset (`kiln_rt::executor::Launch::slots`).
//!
//! What code generation reads of a buffer besides its accesses — dtype and
//! shape, and whether an output overlaps an input in the arena — is part of
//! the form, so two kernels share code only where they would have got the
//! same code.

use std::collections::HashMap;

use kiln_optimizer::kernel::{Access, Buffer, BufferId, ElementProgram, KernelProgram, Storage};

use super::jit::Body;

/// A loop nest rewritten over slots.
pub(crate) struct Canonical {
    /// A stand-in program with one buffer per slot.
    pub program: KernelProgram,
    /// The nest's output and map output, as slots.
    pub out: Option<BufferId>,
    pub map_out: Option<BufferId>,
    /// The reads, over slots, their constant offsets moved into the slots.
    pub inputs: Vec<Access>,
    /// Per slot: the program's buffer and the byte offset added to its base.
    pub slots: Vec<(usize, i64)>,
    /// Equal for two nests exactly when their code is the same.
    pub key: String,
}

impl Canonical {
    /// The rewritten body (same loop, programs and flags as `body`).
    pub(crate) fn body<'a>(&'a self, body: &Body<'a>) -> Body<'a> {
        match *body {
            Body::Elementwise {
                shape,
                program,
                acc_from_out,
                ..
            } => Body::Elementwise {
                out: self.out.expect("an elementwise nest has an output"),
                shape,
                inputs: &self.inputs,
                program,
                acc_from_out,
            },
            Body::Reduce {
                shape,
                axes,
                kind,
                body,
                map,
                ..
            } => Body::Reduce {
                out: self.out,
                shape,
                axes,
                kind,
                inputs: &self.inputs,
                body,
                map: map.map(|(_, p)| (self.map_out.expect("a map has an output"), p)),
            },
        }
    }
}

/// `body` of `program` rewritten over slots.
pub(crate) fn canonical(program: &KernelProgram, body: &Body<'_>) -> Canonical {
    let (out, inputs, map_out) = match *body {
        Body::Elementwise { out, inputs, .. } => (Some(out), inputs, None),
        Body::Reduce {
            out, inputs, map, ..
        } => (out, inputs, map.map(|m| m.0)),
    };
    let written: Vec<BufferId> = out.into_iter().chain(map_out).collect();
    // Each read-only buffer's base moves to its smallest constant offset.
    let mut shift: HashMap<BufferId, i64> = HashMap::new();
    for a in inputs {
        if !written.contains(&a.buffer) {
            let s = shift.entry(a.buffer).or_insert(a.offset.constant);
            *s = (*s).min(a.offset.constant);
        }
    }
    let mut slot_of: HashMap<BufferId, usize> = HashMap::new();
    let mut order: Vec<BufferId> = Vec::new();
    let mut slot = |b: BufferId| -> BufferId {
        BufferId(*slot_of.entry(b).or_insert_with(|| {
            order.push(b);
            order.len() - 1
        }))
    };
    let c_out = out.map(&mut slot);
    let c_inputs: Vec<Access> = inputs
        .iter()
        .map(|a| {
            let mut offset = a.offset.clone();
            offset.constant -= shift.get(&a.buffer).copied().unwrap_or(0);
            Access {
                buffer: slot(a.buffer),
                offset,
                mask: a.mask.clone(),
            }
        })
        .collect();
    let c_map_out = map_out.map(&mut slot);
    // Overlaps in the arena between a written buffer and any other, as
    // slot pairs: the code may depend on them (a map that keeps values in
    // its output only when no input lives there).
    let span = |b: BufferId| match program.buffer(b).storage {
        Storage::Arena { offset } => Some(offset..offset + program.buffer(b).size_bytes()),
        _ => None,
    };
    let mut overlaps = Vec::new();
    for (i, &x) in order.iter().enumerate() {
        for (j, &y) in order.iter().enumerate().skip(i + 1) {
            if !(written.contains(&x) || written.contains(&y)) {
                continue;
            }
            if let (Some(p), Some(q)) = (span(x), span(y)) {
                if p.start < q.end && q.start < p.end {
                    overlaps.push((i, j));
                }
            }
        }
    }
    // The stand-in: every slot its own memory, except that the buffers of
    // an overlapping pair all sit at one arena offset.
    let overlapping = |i: usize| overlaps.iter().any(|&(x, y)| x == i || y == i);
    let buffers: Vec<Buffer> = order
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let real = program.buffer(b);
            Buffer {
                dtype: real.dtype,
                shape: real.shape.clone(),
                storage: if overlapping(i) {
                    Storage::Arena { offset: 0 }
                } else {
                    Storage::Result
                },
                node: String::new(),
            }
        })
        .collect();
    let slots = order
        .iter()
        .map(|b| {
            let bytes = program.buffer(*b).dtype.size_bytes() as i64;
            (b.0, shift.get(b).copied().unwrap_or(0) * bytes)
        })
        .collect();
    let layout: Vec<_> = buffers.iter().map(|b| (b.dtype, &b.shape)).collect();
    let key = match *body {
        Body::Elementwise {
            shape,
            program: p,
            acc_from_out,
            ..
        } => format!("E{shape:?}{acc_from_out}{c_inputs:?}{p:?}"),
        Body::Reduce {
            shape,
            axes,
            kind,
            body: p,
            map,
            ..
        } => {
            let m: Option<&ElementProgram> = map.map(|m| m.1);
            format!("R{shape:?}{axes:?}{kind:?}{c_out:?}{c_map_out:?}{c_inputs:?}{p:?}{m:?}")
        }
    } + &format!("{layout:?}{overlaps:?}");
    Canonical {
        program: KernelProgram {
            buffers,
            ..KernelProgram::default()
        },
        out: c_out,
        map_out: c_map_out,
        inputs: c_inputs,
        slots,
        key,
    }
}
