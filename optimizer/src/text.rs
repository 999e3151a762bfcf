//! The printable form of a kernel program (`kiln show --optimized`, golden tests).

use std::fmt::{self, Write};

use crate::kernel::{Access, ElementProgram, Instr, Kernel, KernelProgram, Operand, Storage};

fn access(a: &Access) -> String {
    let mut s = format!("{}[{}]", a.buffer, a.offset);
    for c in &a.mask {
        write!(s, " if {}<={}<{}", c.lo, c.expr, c.hi).unwrap();
    }
    s
}

fn program(p: &ElementProgram, inputs: &[Access], indent: &str) -> String {
    let mut s = String::new();
    for (i, ins) in p.instrs.iter().enumerate() {
        let rhs = match ins {
            Instr::Load(a) => format!("load {}", access(&inputs[*a])),
            Instr::Const(c) => format!("const {}:{}", c.to_f64(), c.dtype()),
            Instr::Unary(f, a) => format!("{} %{a}", kiln_graph::ops::elementwise::unary_name(*f)),
            Instr::Binary(f, a, b) => format!(
                "{} %{a}, %{b}",
                kiln_graph::ops::elementwise::binary_name(*f)
            ),
            Instr::Select(c, a, b) => format!("select %{c}, %{a}, %{b}"),
            Instr::Cast(t, a) => format!("cast:{t} %{a}"),
            Instr::Acc => "acc".into(),
            Instr::InBounds(cs) => {
                let v: Vec<String> = cs
                    .iter()
                    .map(|c| format!("{}<={}<{}", c.lo, c.expr, c.hi))
                    .collect();
                format!("in_bounds {}", v.join(" && "))
            }
            Instr::IndexValue(e, t) => format!("index:{t} {e}"),
            Instr::Random {
                normal,
                seed,
                a,
                b,
                dtype,
                index,
            } => {
                format!(
                    "random_{}:{dtype} seed={seed} ({a}, {b}) at {index}",
                    if *normal { "normal" } else { "uniform" }
                )
            }
        };
        let mark = if i == p.result { "  <- result" } else { "" };
        writeln!(s, "{indent}%{i} = {rhs}{mark}").unwrap();
    }
    s
}

fn operand(o: &Operand) -> String {
    format!("{}+{} strides {:?}", o.buffer, o.offset, o.strides)
}

impl fmt::Display for KernelProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "buffers:")?;
        for (i, b) in self.buffers.iter().enumerate() {
            let place = match &b.storage {
                Storage::Input { .. } => "input".to_string(),
                Storage::Variable { .. } => "variable".to_string(),
                Storage::Constant { .. } => "constant".to_string(),
                Storage::Result => "result".to_string(),
                Storage::Arena { offset } => format!("arena@{offset}"),
            };
            writeln!(f, "  b{i} {place} {}{:?} '{}'", b.dtype, b.shape, b.node)?;
        }
        writeln!(f, "kernels:")?;
        for (i, k) in self.kernels.iter().enumerate() {
            let outs: Vec<String> = k.outputs().iter().map(|b| b.to_string()).collect();
            writeln!(
                f,
                "  k{i} {} -> {}  ({})",
                k.label(),
                outs.join(", "),
                self.kernel_nodes[i].join(", ")
            )?;
            match k {
                Kernel::Elementwise {
                    shape,
                    inputs,
                    program: p,
                    ..
                } => {
                    writeln!(f, "    loop {shape:?}")?;
                    f.write_str(&program(p, inputs, "    "))?;
                }
                Kernel::Reduce {
                    shape,
                    axes,
                    inputs,
                    body,
                    map,
                    ..
                } => {
                    writeln!(f, "    loop {shape:?} reduce axes {axes:?}")?;
                    f.write_str(&program(body, inputs, "    "))?;
                    if let Some((_, m)) = map {
                        writeln!(f, "    map:")?;
                        f.write_str(&program(m, inputs, "    "))?;
                    }
                }
                Kernel::MatMul {
                    a,
                    b,
                    batch,
                    mnk,
                    epilogue,
                    ..
                } => {
                    writeln!(
                        f,
                        "    batch {batch:?} m={} n={} k={}; a {}; b {}",
                        mnk[0],
                        mnk[1],
                        mnk[2],
                        operand(a),
                        operand(b)
                    )?;
                    if epilogue.program.instrs.len() > 1 {
                        writeln!(f, "    epilogue:")?;
                        f.write_str(&program(&epilogue.program, &epilogue.inputs, "    "))?;
                    }
                }
                Kernel::Op {
                    op, args, epilogue, ..
                } => {
                    let a: Vec<String> = args.iter().map(|b| b.to_string()).collect();
                    writeln!(
                        f,
                        "    {}({}) {}",
                        op.name(),
                        a.join(", "),
                        kiln_graph::text::op_attributes(op)
                    )?;
                    if epilogue.program.instrs.len() > 1 {
                        writeln!(f, "    epilogue:")?;
                        f.write_str(&program(&epilogue.program, &epilogue.inputs, "    "))?;
                    }
                }
            }
        }
        let outs: Vec<String> = self.outputs.iter().map(|b| b.to_string()).collect();
        writeln!(f, "outputs: {}", outs.join(", "))?;
        for (v, x) in &self.updates {
            writeln!(f, "update: {v} <- {x}")?;
        }
        let m = &self.memory;
        writeln!(
            f,
            "memory: arena {} B, liveness lower bound {} B, unplanned {} B, results {} B",
            m.arena, m.lower_bound, m.unplanned, m.results
        )
    }
}

/// Graphviz DOT of `graph` (the optimized graph `program` was lowered from)
/// with the nodes of each kernel in one cluster.
pub fn dot_with_kernels(graph: &kiln_graph::Graph, program: &KernelProgram) -> String {
    let mut kernel_of = std::collections::HashMap::new();
    for (k, names) in program.kernel_nodes.iter().enumerate() {
        for n in names {
            kernel_of.insert(n.as_str(), k);
        }
    }
    let mut s = String::from(
        "digraph kiln {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\", fontsize=10];\n",
    );
    let mut clusters: Vec<Vec<String>> = vec![Vec::new(); program.kernels.len()];
    let order = graph.topo_order();
    for &id in &order {
        let n = graph.node(id);
        let line = format!(
            "n{} [label=\"{}\\n{}\\n{}\"];",
            id.index(),
            n.name.replace('"', "\\\""),
            n.op.name(),
            n.ty
        );
        match kernel_of.get(n.name.as_str()) {
            Some(&k) => clusters[k].push(line),
            None => writeln!(s, "  {line}").unwrap(),
        }
    }
    for (k, lines) in clusters.iter().enumerate() {
        writeln!(s, "  subgraph cluster_k{k} {{\n    label=\"k{k} {}\";\n    style=filled; fillcolor=\"#eef3fb\";", program.kernels[k].label()).unwrap();
        for l in lines {
            writeln!(s, "    {l}").unwrap();
        }
        s.push_str("  }\n");
    }
    for &id in &order {
        for i in graph.inputs(id) {
            writeln!(s, "  n{} -> n{};", i.index(), id.index()).unwrap();
        }
    }
    s.push_str("}\n");
    s
}
