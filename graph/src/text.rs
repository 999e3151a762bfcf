//! Human-readable forms of a graph: a text listing (one node per line, in
//! topological order) and Graphviz DOT.

use std::fmt::{self, Write};

use crate::array::{Array, Scalar};
use crate::graph::{Graph, NodeId};
use crate::op::Op;

/// The op's attributes as `key=value` pairs (from its serialized form).
pub fn op_attributes(op: &Op) -> String {
    let Ok(serde_json::Value::Object(map)) = serde_json::to_value(op) else {
        return String::new();
    };
    map.iter()
        // `f` is already part of the op's name (`reduce_sum`, `add`, ...).
        .filter(|(k, _)| k.as_str() != "op" && k.as_str() != "f")
        .map(|(k, v)| format!("{k}={}", v.to_string().replace('"', "")))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Graph {
    /// One line for node `id`: `name = op{attrs}(inputs) : type`.
    pub fn node_line(&self, id: NodeId) -> String {
        let n = self.node(id);
        let mut attrs = op_attributes(&n.op);
        if let Op::Constant { value } = &n.op {
            if value.0.len() <= 4 {
                attrs = format!("value={}", small_values(&value.0));
            }
        }
        let ins: Vec<String> = self
            .inputs(id)
            .iter()
            .map(|&i| self.node(i).name.clone())
            .collect();
        let mut s = format!("{} = {}", n.name, n.op.name());
        if !attrs.is_empty() {
            write!(s, "{{{attrs}}}").unwrap();
        }
        if !ins.is_empty() {
            write!(s, "({})", ins.join(", ")).unwrap();
        }
        write!(s, " : {}", n.ty).unwrap();
        s
    }

    /// The functions control-flow ops call, each with its signature and
    /// nodes (nested functions numbered `outer.inner`); empty when none.
    pub fn functions_listing(&self) -> String {
        let mut s = String::new();
        self.list_functions("", 1, &mut s);
        s
    }

    fn list_functions(&self, prefix: &str, depth: usize, s: &mut String) {
        let pad = "  ".repeat(depth);
        for (i, f) in self.functions().iter().enumerate() {
            let sig = |ids: &[NodeId]| {
                ids.iter()
                    .map(|&n| format!("{}: {}", f.graph.node(n).name, f.graph.node(n).ty))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let results: Vec<&str> = f
                .results
                .iter()
                .map(|&n| f.graph.node(n).name.as_str())
                .collect();
            write!(
                s,
                "\n{pad}function {prefix}{i}({}) -> ({}):\n",
                sig(&f.params),
                results.join(", ")
            )
            .unwrap();
            for id in f.graph.topo_order() {
                if !f.params.contains(&id) {
                    writeln!(s, "{pad}  {}", f.graph.node_line(id)).unwrap();
                }
            }
            f.graph
                .list_functions(&format!("{prefix}{i}."), depth + 1, s);
        }
    }

    /// Graphviz DOT of the graph: one box per node (name, op, type).
    pub fn to_dot(&self) -> String {
        let mut s = String::from("digraph kiln {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\", fontsize=10];\n");
        let outputs = self.outputs();
        for id in self.topo_order() {
            let n = self.node(id);
            let style = match n.op {
                Op::Placeholder { .. } => ", style=filled, fillcolor=\"#cfe8ff\"",
                Op::Variable { .. } => ", style=filled, fillcolor=\"#ffe9c2\"",
                Op::Constant { .. } => ", style=filled, fillcolor=\"#eeeeee\"",
                _ if outputs.contains(&id) => ", style=filled, fillcolor=\"#d6f5d6\"",
                _ => "",
            };
            let label = format!("{}\\n{}\\n{}", escape(&n.name), n.op.name(), n.ty);
            writeln!(s, "  n{} [label=\"{label}\"{style}];", id.index()).unwrap();
            for i in self.inputs(id) {
                writeln!(s, "  n{} -> n{};", i.index(), id.index()).unwrap();
            }
        }
        s.push_str("}\n");
        s
    }
}

/// The elements of a small array as written in its dtype: integers as
/// integers (an i64 beyond 2^53 exactly), floats as the shortest decimal
/// that reads back to the same value of their own width, bools as words.
fn small_values(a: &Array) -> String {
    let items: Vec<String> = (0..a.len())
        .map(|i| match a.get(i) {
            Scalar::F32(v) => format!("{v:?}"),
            Scalar::F64(v) => format!("{v:?}"),
            Scalar::F16(v) => format!("{:?}", v.to_f32()),
            Scalar::BF16(v) => format!("{:?}", v.to_f32()),
            Scalar::I32(v) => v.to_string(),
            Scalar::I64(v) => v.to_string(),
            Scalar::I8(v) => v.to_string(),
            Scalar::I16(v) => v.to_string(),
            Scalar::U8(v) => v.to_string(),
            Scalar::U16(v) => v.to_string(),
            Scalar::U32(v) => v.to_string(),
            Scalar::U64(v) => v.to_string(),
            Scalar::Bool(v) => v.to_string(),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for id in self.topo_order() {
            writeln!(f, "{}", self.node_line(id))?;
        }
        write!(f, "{}", self.functions_listing())
    }
}
