//! Scheduling and memory planning of a kernel program.
//!
//! Scheduling picks, among the kernels whose inputs are ready, the one that
//! grows live memory least (ties: program order). Memory planning gives
//! every temporary an interval of kernel steps, lets an elementwise kernel
//! write over an input that dies there when it reads it at the very element
//! it writes (in place), then places buffers largest first at the best-fitting
//! free offset among the buffers live at the same time (XLA's heap
//! simulator, global decreasing-size best fit), 64-byte aligned. Inputs,
//! variables, constants and results are not in the arena.

use std::collections::{HashMap, HashSet};

use crate::index::Index;
use crate::kernel::{BufferId, Kernel, KernelProgram, MemoryStats, Storage};

const ALIGN: usize = 64;

fn aligned(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

fn is_temp(p: &KernelProgram, b: BufferId) -> bool {
    matches!(p.buffer(b).storage, Storage::Arena { .. })
}

/// Reorders the kernels to keep peak live memory low.
pub fn schedule(p: &mut KernelProgram) {
    let n = p.kernels.len();
    let producer: HashMap<BufferId, usize> = p
        .kernels
        .iter()
        .enumerate()
        .flat_map(|(i, k)| k.outputs().into_iter().map(move |b| (b, i)))
        .collect();
    let deps: Vec<HashSet<usize>> = p
        .kernels
        .iter()
        .enumerate()
        .map(|(i, k)| {
            k.reads()
                .iter()
                .filter_map(|b| producer.get(b).copied())
                .filter(|&j| j != i)
                .collect()
        })
        .collect();
    let mut remaining_reads: HashMap<BufferId, usize> = HashMap::new();
    for k in &p.kernels {
        for b in k.reads() {
            *remaining_reads.entry(b).or_default() += 1;
        }
    }
    let mut done = vec![false; n];
    let mut order = Vec::with_capacity(n);
    for _ in 0..n {
        let best = (0..n)
            .filter(|&i| !done[i] && deps[i].iter().all(|&d| done[d]))
            .min_by_key(|&i| {
                let grow: i64 = p.kernels[i]
                    .outputs()
                    .iter()
                    .filter(|&&b| is_temp(p, b))
                    .map(|&b| p.buffer(b).size_bytes() as i64)
                    .sum();
                let freed: i64 = p.kernels[i]
                    .reads()
                    .iter()
                    .filter(|&&b| is_temp(p, b) && remaining_reads[&b] == 1)
                    .map(|&b| p.buffer(b).size_bytes() as i64)
                    .sum();
                (grow - freed, i)
            })
            .expect("the kernel graph is acyclic");
        done[best] = true;
        for b in p.kernels[best].reads() {
            *remaining_reads.get_mut(&b).expect("counted") -= 1;
        }
        order.push(best);
    }
    let kernels = std::mem::take(&mut p.kernels);
    let names = std::mem::take(&mut p.kernel_nodes);
    let mut slots: Vec<Option<_>> = kernels.into_iter().zip(names).map(Some).collect();
    for i in order {
        let (k, nm) = slots[i].take().expect("each kernel once");
        p.kernels.push(k);
        p.kernel_nodes.push(nm);
    }
}

/// True when every access of `b` in elementwise kernel `k` reads the element
/// the kernel writes (identity offset, no mask).
fn reads_in_place(p: &KernelProgram, k: &Kernel, b: BufferId) -> bool {
    let Kernel::Elementwise { shape, inputs, .. } = k else {
        return false;
    };
    let st = kiln_graph::shape::strides(shape);
    let ident = (0..shape.len()).fold(Index::constant(0), |acc, d| {
        acc.add(&Index::var(d).mul(st[d] as i64))
    });
    let uses: Vec<_> = inputs.iter().filter(|a| a.buffer == b).collect();
    !uses.is_empty()
        && uses.iter().all(|a| a.mask.is_empty() && a.offset == ident)
        && p.buffer(b).shape == *shape
}

/// Assigns arena offsets to the temporaries and records the memory figures.
pub fn plan_memory(p: &mut KernelProgram) {
    let nb = p.buffers.len();
    let mut def = vec![usize::MAX; nb];
    let mut last = vec![0usize; nb];
    for (i, k) in p.kernels.iter().enumerate() {
        for b in k.outputs() {
            def[b.0] = def[b.0].min(i);
            last[b.0] = last[b.0].max(i);
        }
        for b in k.reads() {
            last[b.0] = last[b.0].max(i);
        }
    }
    // Alias classes: an in-place output shares its input's memory.
    let mut class: Vec<usize> = (0..nb).collect();
    fn find(c: &mut [usize], x: usize) -> usize {
        let mut r = x;
        while c[r] != r {
            r = c[r];
        }
        c[x] = r;
        r
    }
    for (i, k) in p.kernels.iter().enumerate() {
        let Kernel::Elementwise { out, .. } = k else {
            continue;
        };
        if !is_temp(p, *out) {
            continue;
        }
        for b in k.reads() {
            // Element `i` of the output must take exactly the bytes of
            // element `i` of the input: with another element size (a cast
            // f32 -> f64) writing it would clobber inputs not yet read, even
            // where the two buffers round to the same aligned size.
            let same_elements = p.buffer(b).dtype.size_bytes() == p.buffer(*out).dtype.size_bytes()
                && p.buffer(b).shape == p.buffer(*out).shape;
            if is_temp(p, b)
                && last[b.0] == i
                && same_elements
                && reads_in_place(p, k, b)
                && find(&mut class, b.0) == b.0
            {
                let root = find(&mut class, b.0);
                class[out.0] = root;
                last[root] = last[root].max(last[out.0]);
                break;
            }
        }
    }
    // One interval and size per class.
    let mut members: HashMap<usize, (usize, usize, usize)> = HashMap::new();
    for b in 0..nb {
        if !is_temp(p, BufferId(b)) || def[b] == usize::MAX {
            continue;
        }
        let r = find(&mut class, b);
        let e = members.entry(r).or_insert((usize::MAX, 0, 0));
        e.0 = e.0.min(def[b]);
        e.1 = e.1.max(last[b]);
        e.2 = e.2.max(aligned(p.buffer(BufferId(b)).size_bytes()));
    }
    let steps = p.kernels.len();
    let mut live = vec![0usize; steps];
    for &(s, e, size) in members.values() {
        for l in live.iter_mut().take(e + 1).skip(s) {
            *l += size;
        }
    }
    let lower_bound = live.iter().copied().max().unwrap_or(0);
    let mut order: Vec<(usize, (usize, usize, usize))> = members.into_iter().collect();
    order.sort_by(|a, b| {
        b.1 .2
            .cmp(&a.1 .2)
            .then(a.1 .0.cmp(&b.1 .0))
            .then(a.0.cmp(&b.0))
    });
    let mut placed: Vec<(usize, usize, usize, usize)> = Vec::new(); // (start, end, offset, size)
    let mut offset_of: HashMap<usize, usize> = HashMap::new();
    let mut arena = 0;
    for (root, (s, e, size)) in order {
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|p| p.0 <= e && s <= p.1)
            .map(|p| (p.2, p.2 + p.3))
            .collect();
        busy.sort();
        let mut best: Option<(usize, usize)> = None; // (gap size, offset)
        let mut at = 0;
        for &(lo, hi) in &busy {
            if lo >= at + size {
                let gap = lo - at;
                if best.is_none_or(|b| gap < b.0) {
                    best = Some((gap, at));
                }
            }
            at = at.max(hi);
        }
        let off = best.map(|b| b.1).unwrap_or(at);
        placed.push((s, e, off, size));
        offset_of.insert(root, off);
        arena = arena.max(off + size);
    }
    let mut unplanned = 0;
    let mut results = 0;
    for b in 0..nb {
        match p.buffers[b].storage {
            Storage::Arena { .. } => {
                let r = find(&mut class, b);
                let off = offset_of.get(&r).copied().unwrap_or(0);
                p.buffers[b].storage = Storage::Arena { offset: off };
                unplanned += aligned(p.buffers[b].size_bytes());
            }
            Storage::Result => results += p.buffers[b].size_bytes(),
            _ => {}
        }
    }
    p.memory = MemoryStats {
        arena,
        lower_bound,
        unplanned,
        results,
    };
}
