//! Lowering: from a graph with concrete shapes, through fusion groups, to
//! kernels with element programs. Movement ops become index expressions
//! (see `index.rs`); a kernel reads each stored value through an `Access`.

use std::collections::{BTreeSet, HashMap, HashSet};

use kiln_graph::{Bindings, Graph, NodeId, Op, Scalar};

use crate::error::{Error, Result};
use crate::fuse::{class, group, Anchor, Class, Group};
use crate::index::Index;
use crate::kernel::{
    Access, Buffer, BufferId, Cond, ElementProgram, Epilogue, Instr, Kernel, KernelProgram,
    Operand, ReduceKind, Storage,
};

/// How a kernel's loop index maps to the multi-index of a node's value, and
/// the conditions under which that value is actually used.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Mapping {
    idx: Vec<Index>,
    mask: Vec<Cond>,
}

impl Mapping {
    /// The identity over a loop of extents `ext`. A dim of extent 1 is the
    /// constant 0, so that mappings compare equal whenever they address the
    /// same elements (a `[1, n]` operand read by a `[1, n]` loop, say).
    fn identity(ext: &[usize]) -> Mapping {
        Mapping {
            idx: ext
                .iter()
                .enumerate()
                .map(|(d, &e)| loop_var(d, e))
                .collect(),
            mask: Vec::new(),
        }
    }
}

/// Loop variable `d` of extent `e` (the constant 0 when `e == 1`).
fn loop_var(d: usize, e: usize) -> Index {
    if e == 1 {
        Index::constant(0)
    } else {
        Index::var(d)
    }
}

/// Lowering found a node it must store instead of fusing.
struct Materialize(NodeId);

fn row_major(shape: &[usize]) -> Vec<i64> {
    kiln_graph::shape::strides(shape)
        .into_iter()
        .map(|s| s as i64)
        .collect()
}

fn linear(idx: &[Index], shape: &[usize]) -> Index {
    idx.iter()
        .zip(row_major(shape))
        .fold(Index::constant(0), |acc, (i, s)| acc.add(&i.mul(s)))
}

/// The buffers of a program under construction.
struct Buffers {
    list: Vec<Buffer>,
    of: HashMap<NodeId, BufferId>,
}

impl Buffers {
    fn add(&mut self, node: NodeId, buffer: Buffer) -> BufferId {
        let id = BufferId(self.list.len());
        self.list.push(buffer);
        self.of.insert(node, id);
        id
    }

    /// The buffer of a source, created on first use.
    fn source(&mut self, g: &Graph, n: NodeId, shape: &[usize]) -> BufferId {
        if let Some(&b) = self.of.get(&n) {
            return b;
        }
        let node = g.node(n);
        let storage = match &node.op {
            Op::Placeholder { .. } => Storage::Input {
                name: node.name.clone(),
            },
            Op::Variable { .. } => Storage::Variable {
                name: node.name.clone(),
            },
            Op::Constant { value } => Storage::Constant {
                value: value.clone(),
            },
            _ => unreachable!("only sources get source buffers"),
        };
        self.add(
            n,
            Buffer {
                dtype: node.ty.dtype,
                shape: shape.to_vec(),
                storage,
                node: node.name.clone(),
            },
        )
    }
}

struct Lowering<'a> {
    g: &'a Graph,
    shapes: &'a HashMap<NodeId, Vec<usize>>,
    bufs: Buffers,
}

/// Generates one element program over a loop.
struct Gen<'a, 'b> {
    lw: &'b mut Lowering<'a>,
    members: &'b BTreeSet<NodeId>,
    acc: Option<(NodeId, Mapping)>,
    ext: Vec<usize>,
    instrs: Vec<Instr>,
    memo: HashMap<(NodeId, Mapping), usize>,
    accesses: &'b mut Vec<Access>,
}

impl Gen<'_, '_> {
    fn push(&mut self, i: Instr) -> usize {
        self.instrs.push(i);
        self.instrs.len() - 1
    }

    fn shape(&self, n: NodeId) -> &[usize] {
        &self.lw.shapes[&n]
    }

    fn access(&mut self, b: BufferId, m: &Mapping) -> usize {
        let shape = self.lw.bufs.list[b.0].shape.clone();
        let a = Access {
            buffer: b,
            offset: linear(&m.idx, &shape),
            mask: m.mask.clone(),
        };
        match self.accesses.iter().position(|x| *x == a) {
            Some(i) => i,
            None => {
                self.accesses.push(a);
                self.accesses.len() - 1
            }
        }
    }

    /// The mapping of an input of shape `inp` broadcast to an output mapping.
    fn bcast(&self, m: &Mapping, inp: &[usize]) -> Mapping {
        let off = m.idx.len() - inp.len();
        let idx = inp
            .iter()
            .enumerate()
            .map(|(e, &d)| {
                if d == 1 {
                    Index::constant(0)
                } else {
                    m.idx[off + e].clone()
                }
            })
            .collect();
        Mapping {
            idx,
            mask: m.mask.clone(),
        }
    }

    /// The value of elementwise operand `n` broadcast to the output mapping `m`.
    fn broadcast_value(
        &mut self,
        n: NodeId,
        m: &Mapping,
    ) -> std::result::Result<usize, Materialize> {
        let im = self.bcast(m, self.shape(n));
        self.value(n, &im)
    }

    fn value(&mut self, n: NodeId, m: &Mapping) -> std::result::Result<usize, Materialize> {
        if let Some(&i) = self.memo.get(&(n, m.clone())) {
            return Ok(i);
        }
        let g = self.lw.g;
        let node = g.node(n);
        let ins = g.inputs(n);
        let v = if let Some((a, am)) = &self.acc {
            if *a == n {
                if am != m {
                    return Err(Materialize(n));
                }
                Some(self.push(Instr::Acc))
            } else {
                None
            }
        } else {
            None
        };
        let v = match v {
            Some(v) => v,
            None if matches!(node.op, Op::Assign) => self.value(ins[1], m)?,
            None if !self.members.contains(&n) => match &node.op {
                Op::Constant { value } if value.0.len() == 1 => {
                    self.push(Instr::Const(value.0.get(0)))
                }
                _ => {
                    let b = match self.lw.bufs.of.get(&n) {
                        Some(&b) => b,
                        None if class(&node.op) == Class::Source => {
                            let shape = self.shape(n).to_vec();
                            self.lw.bufs.source(g, n, &shape)
                        }
                        None => return Err(Materialize(n)),
                    };
                    let a = self.access(b, m);
                    self.push(Instr::Load(a))
                }
            },
            None => self.member(n, m, &ins)?,
        };
        self.memo.insert((n, m.clone()), v);
        Ok(v)
    }

    fn member(
        &mut self,
        n: NodeId,
        m: &Mapping,
        ins: &[NodeId],
    ) -> std::result::Result<usize, Materialize> {
        let g = self.lw.g;
        let node = g.node(n);
        let out = self.shape(n).to_vec();
        Ok(match &node.op {
            Op::Unary { f } => {
                let a = self.broadcast_value(ins[0], m)?;
                self.push(Instr::Unary(*f, a))
            }
            Op::Binary { f } => {
                let a = self.broadcast_value(ins[0], m)?;
                let b = self.broadcast_value(ins[1], m)?;
                self.push(Instr::Binary(*f, a, b))
            }
            Op::Select => {
                let c = self.broadcast_value(ins[0], m)?;
                let a = self.broadcast_value(ins[1], m)?;
                let b = self.broadcast_value(ins[2], m)?;
                self.push(Instr::Select(c, a, b))
            }
            Op::Cast { to } => {
                let a = self.value(ins[0], m)?;
                self.push(Instr::Cast(*to, a))
            }
            // A group's value is `true`; its inputs run for their assignments.
            Op::Group => self.push(Instr::Const(Scalar::Bool(true))),
            Op::Iota { dtype, axis, .. } => {
                self.push(Instr::IndexValue(m.idx[*axis].clone(), *dtype))
            }
            Op::RandomUniform {
                dtype,
                seed,
                low,
                high,
                ..
            } => {
                let index = linear(&m.idx, &out);
                self.push(Instr::Random {
                    normal: false,
                    seed: *seed,
                    a: *low,
                    b: *high,
                    dtype: *dtype,
                    index,
                })
            }
            Op::RandomNormal {
                dtype,
                seed,
                mean,
                std,
                ..
            } => {
                let index = linear(&m.idx, &out);
                self.push(Instr::Random {
                    normal: true,
                    seed: *seed,
                    a: *mean,
                    b: *std,
                    dtype: *dtype,
                    index,
                })
            }
            Op::Reshape { .. } | Op::Permute { .. } | Op::Broadcast { .. } | Op::Slice { .. } => {
                let inp = self.shape(ins[0]).to_vec();
                let im = view_input(&node.op, m, &out, &inp, &self.ext);
                self.value(ins[0], &im)?
            }
            Op::Pad { before, value, .. } => {
                let inp = self.shape(ins[0]).to_vec();
                let mut idx = Vec::new();
                let mut conds = Vec::new();
                for (d, i) in m.idx.iter().enumerate() {
                    let e = i.add_const(-(before[d] as i64));
                    if out[d] != inp[d] {
                        conds.push(Cond {
                            expr: e.clone(),
                            lo: 0,
                            hi: inp[d] as i64,
                        });
                    }
                    idx.push(e);
                }
                let mut mask = m.mask.clone();
                mask.extend(conds.iter().cloned());
                let inner = self.value(ins[0], &Mapping { idx, mask })?;
                let fill = self.push(Instr::Const(Scalar::from_f64(node.ty.dtype, *value)));
                let c = self.push(Instr::InBounds(conds));
                self.push(Instr::Select(c, inner, fill))
            }
            Op::Concat { axis } => {
                let mut start = 0i64;
                let mut pieces = Vec::new();
                for &i in ins {
                    let len = self.shape(i)[*axis] as i64;
                    let cond = Cond {
                        expr: m.idx[*axis].clone(),
                        lo: start,
                        hi: start + len,
                    };
                    let mut idx = m.idx.clone();
                    idx[*axis] = idx[*axis].add_const(-start);
                    let mut mask = m.mask.clone();
                    mask.push(cond.clone());
                    let v = self.value(i, &Mapping { idx, mask })?;
                    pieces.push((cond, v));
                    start += len;
                }
                let (_, mut v) = pieces.pop().expect("concat has inputs");
                while let Some((cond, pv)) = pieces.pop() {
                    let c = self.push(Instr::InBounds(vec![cond]));
                    v = self.push(Instr::Select(c, pv, v));
                }
                v
            }
            _ => return Err(Materialize(n)),
        })
    }
}

/// The mapping of a view op's input, given its output mapping.
fn view_input(op: &Op, m: &Mapping, out: &[usize], inp: &[usize], ext: &[usize]) -> Mapping {
    let idx = match op {
        // An empty input has no element to map to (and a dim of size 0 has
        // no modulus): the output is empty too, so its reads lie in an empty
        // loop or under a mask that never holds (pad, concat).
        Op::Reshape { .. } if inp.contains(&0) => vec![Index::constant(0); inp.len()],
        Op::Reshape { .. } => {
            let lin = linear(&m.idx, out);
            let st = row_major(inp);
            (0..inp.len())
                .map(|e| {
                    let q = lin.div(st[e].max(1), ext);
                    if e == 0 {
                        q
                    } else {
                        q.modulo(inp[e] as i64, ext)
                    }
                })
                .collect()
        }
        Op::Permute { perm } => {
            let mut idx = vec![Index::constant(0); inp.len()];
            for (i, &p) in perm.iter().enumerate() {
                idx[p] = m.idx[i].clone();
            }
            idx
        }
        Op::Broadcast { .. } => {
            let off = out.len() - inp.len();
            inp.iter()
                .enumerate()
                .map(|(e, &d)| {
                    if d == 1 {
                        Index::constant(0)
                    } else {
                        m.idx[off + e].clone()
                    }
                })
                .collect()
        }
        Op::Slice { axes } => axes
            .iter()
            .enumerate()
            .map(|(d, a)| {
                let (start, len, step) = kiln_graph::ops::movement::slice_range(inp[d], *a);
                if len <= 1 {
                    Index::constant(start.max(0))
                } else {
                    m.idx[d].mul(step).add_const(start)
                }
            })
            .collect(),
        _ => unreachable!("not a view op"),
    };
    Mapping {
        idx,
        mask: m.mask.clone(),
    }
}

/// The mapping at which a reduction's consumers must read it for it to be
/// the current row's value (`Acc`) inside the map loop.
fn reduce_acc_mapping(op: &Op, ext: &[usize]) -> Mapping {
    let (axes, keepdims) = match op {
        Op::Reduce { axes, keepdims, .. } => (axes.clone(), *keepdims),
        Op::ArgReduce { axis, keepdims, .. } => (vec![*axis], *keepdims),
        _ => unreachable!("not a reduction"),
    };
    let mut idx = Vec::new();
    for (d, &e) in ext.iter().enumerate() {
        if axes.contains(&d) {
            if keepdims {
                idx.push(Index::constant(0));
            }
        } else {
            idx.push(loop_var(d, e));
        }
    }
    Mapping {
        idx,
        mask: Vec::new(),
    }
}

impl<'a> Lowering<'a> {
    fn program(
        &mut self,
        members: &BTreeSet<NodeId>,
        acc: Option<(NodeId, Mapping)>,
        root: NodeId,
        ext: Vec<usize>,
        accesses: &mut Vec<Access>,
    ) -> std::result::Result<ElementProgram, Materialize> {
        let mut gen = Gen {
            lw: self,
            members,
            acc,
            ext: ext.clone(),
            instrs: Vec::new(),
            memo: HashMap::new(),
            accesses,
        };
        let result = gen.value(root, &Mapping::identity(&ext))?;
        Ok(ElementProgram {
            instrs: gen.instrs,
            result,
        })
    }

    fn buffer_of(&mut self, n: NodeId) -> std::result::Result<BufferId, Materialize> {
        let g = self.g;
        if matches!(g.node(n).op, Op::Assign) {
            return self.buffer_of(g.inputs(n)[1]);
        }
        if let Some(&b) = self.bufs.of.get(&n) {
            return Ok(b);
        }
        if class(&g.node(n).op) == Class::Source {
            let shape = self.shapes[&n].clone();
            return Ok(self.bufs.source(g, n, &shape));
        }
        Err(Materialize(n))
    }

    /// A matmul operand: a strided view of a stored value through movement members.
    fn operand(
        &mut self,
        n: NodeId,
        members: &BTreeSet<NodeId>,
        out_batch: &[usize],
    ) -> std::result::Result<Operand, Materialize> {
        let g = self.g;
        let shape = self.shapes[&n].clone();
        let ext = shape.clone();
        let mut m = Mapping::identity(&shape);
        let mut cur = n;
        while members.contains(&cur) {
            let op = &g.node(cur).op;
            if !matches!(
                op,
                Op::Reshape { .. } | Op::Permute { .. } | Op::Broadcast { .. } | Op::Slice { .. }
            ) {
                return Err(Materialize(cur));
            }
            let input = g.inputs(cur)[0];
            m = view_input(
                op,
                &m,
                &self.shapes[&cur].clone(),
                &self.shapes[&input].clone(),
                &ext,
            );
            cur = input;
        }
        let b = self.buffer_of(cur)?;
        let bshape = self.bufs.list[b.0].shape.clone();
        let off = linear(&m.idx, &bshape);
        let coefs = off
            .affine(shape.len())
            .filter(|_| m.mask.is_empty())
            .ok_or(Materialize(n))?;
        let r = shape.len();
        let (nb, rb) = (out_batch.len(), r - 2);
        let mut strides = Vec::with_capacity(nb + 2);
        for j in 0..nb {
            strides.push(if j < nb - rb || shape[j - (nb - rb)] == 1 {
                0
            } else {
                coefs[j - (nb - rb)]
            });
        }
        strides.push(coefs[r - 2]);
        strides.push(coefs[r - 1]);
        Ok(Operand {
            buffer: b,
            offset: off.constant,
            strides,
        })
    }

    fn epilogue(
        &mut self,
        grp: &Group,
        anchor: NodeId,
    ) -> std::result::Result<Epilogue, Materialize> {
        let out = self.shapes[&anchor].clone();
        if grp.root == anchor {
            return Ok(Epilogue {
                inputs: Vec::new(),
                program: ElementProgram {
                    instrs: vec![Instr::Acc],
                    result: 0,
                },
            });
        }
        let mut inputs = Vec::new();
        let acc = Some((anchor, Mapping::identity(&out)));
        let program = self.program(&grp.members, acc, grp.root, out, &mut inputs)?;
        Ok(Epilogue { inputs, program })
    }

    fn kernel(&mut self, grp: &Group) -> std::result::Result<Kernel, Materialize> {
        let g = self.g;
        let out = self.bufs.of[&grp.root];
        Ok(match grp.anchor {
            Anchor::None => {
                let shape = self.shapes[&grp.root].clone();
                let mut inputs = Vec::new();
                let program =
                    self.program(&grp.members, None, grp.root, shape.clone(), &mut inputs)?;
                Kernel::Elementwise {
                    out,
                    shape,
                    inputs,
                    program,
                }
            }
            Anchor::Reduce(r) => {
                let node = g.node(r);
                let input = g.inputs(r)[0];
                let shape = self.shapes[&input].clone();
                let (axes, kind) = match &node.op {
                    Op::Reduce { f, axes, .. } => (axes.clone(), ReduceKind::Value(*f)),
                    Op::ArgReduce { f, axis, .. } => (vec![*axis], ReduceKind::Arg(*f)),
                    _ => unreachable!("reduce anchor"),
                };
                let mut inputs = Vec::new();
                let body = self.program(&grp.members, None, input, shape.clone(), &mut inputs)?;
                let (out, map) = if grp.root == r {
                    (Some(out), None)
                } else {
                    let acc = Some((r, reduce_acc_mapping(&node.op, &shape)));
                    let map =
                        self.program(&grp.members, acc, grp.root, shape.clone(), &mut inputs)?;
                    (None, Some((out, map)))
                };
                Kernel::Reduce {
                    out,
                    shape,
                    axes,
                    kind,
                    inputs,
                    body,
                    map,
                }
            }
            Anchor::MatMul(mm) => {
                let ins = g.inputs(mm);
                let oshape = self.shapes[&mm].clone();
                let r = oshape.len();
                let batch = oshape[..r - 2].to_vec();
                let a = self.operand(ins[0], &grp.members, &batch)?;
                let b = self.operand(ins[1], &grp.members, &batch)?;
                let k = self.shapes[&ins[0]][self.shapes[&ins[0]].len() - 1];
                let epilogue = self.epilogue(grp, mm)?;
                Kernel::MatMul {
                    out,
                    a,
                    b,
                    batch,
                    mnk: [oshape[r - 2], oshape[r - 1], k],
                    epilogue,
                }
            }
            Anchor::Op(o) => {
                let mut args = Vec::new();
                for i in g.inputs(o) {
                    args.push(self.buffer_of(i)?);
                }
                let epilogue = self.epilogue(grp, o)?;
                Kernel::Op {
                    op: g.node(o).op.clone(),
                    out,
                    args,
                    epilogue,
                }
            }
        })
    }
}

/// Lowers the graph's outputs (and the assignments among them) to an
/// unscheduled, unplanned kernel program: kernels in dependency order, every
/// temporary at arena offset 0. Symbolic dims take their sizes from `bindings`.
pub fn lower(g: &Graph, bindings: &Bindings) -> Result<(KernelProgram, Vec<NodeId>)> {
    let outputs = g.outputs().to_vec();
    let needed = g.ancestors(&outputs);
    let mut shapes = HashMap::new();
    for &n in &needed {
        let node = g.node(n);
        let s = node
            .ty
            .shape
            .resolve(bindings)
            .map_err(|sym| Error::Unsupported {
                node: node.name.clone(),
                op: node.op.name().into(),
                reason: format!("symbolic dim '{sym}' has no size"),
            })?;
        // Sizes bound at run time can make a shape too large to address.
        let bytes = s
            .iter()
            .try_fold(node.ty.dtype.size_bytes(), |acc, &d| acc.checked_mul(d))
            .filter(|&b| b <= isize::MAX as usize);
        if bytes.is_none() {
            return Err(Error::Unsupported {
                node: node.name.clone(),
                op: node.op.name().into(),
                reason: format!("its {} {s:?} is too large to allocate", node.ty.dtype),
            });
        }
        if let Op::ArgReduce { axis, .. } = node.op {
            // Shapes of inputs come first in topological order.
            if shapes
                .get(&g.inputs(n)[0])
                .is_some_and(|inp: &Vec<usize>| inp[axis] == 0)
            {
                return Err(Error::Unsupported {
                    node: node.name.clone(),
                    op: node.op.name().into(),
                    reason: format!(
                        "axis {axis} is empty (a symbolic dim bound to 0): no index to return"
                    ),
                });
            }
        }
        shapes.insert(n, s);
    }
    // Follow assignments to the values they store.
    let resolve = |mut n: NodeId| {
        while matches!(g.node(n).op, Op::Assign) {
            n = g.inputs(n)[1];
        }
        n
    };
    let assigns: Vec<NodeId> = needed
        .iter()
        .copied()
        .filter(|&n| class(&g.node(n).op) == Class::Assign)
        .collect();
    // Fetched and assigned values live in their own memory, apart from the arena.
    let results: HashSet<NodeId> = outputs
        .iter()
        .map(|&n| resolve(n))
        .chain(assigns.iter().map(|&a| resolve(g.inputs(a)[1])))
        .collect();
    let mut forced: HashSet<NodeId> = results.clone();
    for &n in &needed {
        if class(&g.node(n).op) == Class::Opaque {
            forced.extend(g.inputs(n).into_iter().map(resolve));
        }
    }
    for _ in 0..=needed.len() {
        let groups = group(g, &needed, &forced, &shapes);
        let mut lw = Lowering {
            g,
            shapes: &shapes,
            bufs: Buffers {
                list: Vec::new(),
                of: HashMap::new(),
            },
        };
        for grp in &groups {
            let node = g.node(grp.root);
            let storage = if results.contains(&grp.root) {
                Storage::Result
            } else {
                Storage::Arena { offset: 0 }
            };
            lw.bufs.add(
                grp.root,
                Buffer {
                    dtype: node.ty.dtype,
                    shape: shapes[&grp.root].clone(),
                    storage,
                    node: node.name.clone(),
                },
            );
        }
        let mut kernels = Vec::new();
        let mut names = Vec::new();
        let mut failed = None;
        // Groups were found from the outputs back; kernels run producers first.
        for grp in groups.iter().rev() {
            match lw.kernel(grp) {
                Ok(k) => {
                    kernels.push(k);
                    names.push(
                        grp.members
                            .iter()
                            .map(|&m| g.node(m).name.clone())
                            .collect(),
                    );
                }
                Err(Materialize(n)) => {
                    failed = Some(n);
                    break;
                }
            }
        }
        if let Some(n) = failed {
            if !forced.insert(n) {
                return Err(Error::Unsupported {
                    node: g.node(n).name.clone(),
                    op: g.node(n).op.name().into(),
                    reason: "cannot be lowered to a kernel".into(),
                });
            }
            continue;
        }
        let mut prog = KernelProgram {
            kernels,
            kernel_nodes: names,
            functions: g.functions().to_vec(),
            bindings: bindings.clone(),
            ..Default::default()
        };
        let mut out_ids = Vec::new();
        for &o in &outputs {
            out_ids.push(
                lw.buffer_of(o)
                    .map_err(|Materialize(n)| Error::Unsupported {
                        node: g.node(n).name.clone(),
                        op: g.node(n).op.name().into(),
                        reason: "output has no buffer".into(),
                    })?,
            );
        }
        let mut seen_vars = HashSet::new();
        for &a in &assigns {
            let (var, val) = (g.inputs(a)[0], g.inputs(a)[1]);
            if !seen_vars.insert(var) {
                return Err(Error::Unsupported {
                    node: g.node(a).name.clone(),
                    op: "assign".into(),
                    reason: format!(
                        "variable '{}' is assigned more than once in one run",
                        g.node(var).name
                    ),
                });
            }
            let vb = lw.buffer_of(var).ok().expect("variables are sources");
            let xb = lw.buffer_of(val).map_err(|_| Error::Unsupported {
                node: g.node(a).name.clone(),
                op: "assign".into(),
                reason: "assigned value has no buffer".into(),
            })?;
            prog.updates.push((vb, xb));
        }
        prog.outputs = out_ids;
        prog.buffers = lw.bufs.list;
        return Ok((prog, needed));
    }
    unreachable!("each round stores one more node, so lowering ends")
}
