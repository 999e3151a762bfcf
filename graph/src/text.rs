//! Human-readable forms of a graph: a text listing (one node per line, in
//! topological order, then `outputs: ...` and the functions) and Graphviz
//! DOT. `text_parse.rs` reads the listing back.
//!
//! Constant values in the listing: a constant of at most 4 elements prints
//! them all (`value=[1.0, 2.0]`); a larger one whose elements all print the
//! same prints `value=splat(0.5)`; any other prints no value (weights would
//! swamp the listing). Variables never print their initial value.

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
            } else if let Some(v) = splat_value(&value.0) {
                attrs = format!("value=splat({v})");
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
    let items: Vec<String> = (0..a.len()).map(|i| scalar_text(a.get(i))).collect();
    format!("[{}]", items.join(", "))
}

/// The one element every element of `a` prints as, if there is one.
fn splat_value(a: &Array) -> Option<String> {
    if a.is_empty() {
        return None;
    }
    let first = scalar_text(a.get(0));
    (1..a.len())
        .all(|i| scalar_text(a.get(i)) == first)
        .then_some(first)
}

/// One element as the listing writes it (see [`small_values`]).
pub(crate) fn scalar_text(v: Scalar) -> String {
    match v {
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
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for id in self.topo_order() {
            writeln!(f, "{}", self.node_line(id))?;
        }
        if !self.outputs().is_empty() {
            let names: Vec<&str> = self
                .outputs()
                .iter()
                .map(|&o| self.node(o).name.as_str())
                .collect();
            writeln!(f, "outputs: {}", names.join(", "))?;
        }
        write!(f, "{}", self.functions_listing())
    }
}
