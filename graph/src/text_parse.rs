//! Reads the graph's text listing (`text.rs`, the `Display` of a [`Graph`])
//! back into a graph, so that a rewrite can be tested as a text file.
//!
//! The listing, line by line:
//! - `name = op{key=value, ...}(input, ...) : dtype[dims]`: one node, its
//!   inputs named by earlier lines. Attribute values are the op's JSON
//!   attributes with the quotes dropped; the op's type is inferred again
//!   and must equal the one written.
//! - `outputs: name, ...`: the graph's outputs.
//! - `function 0.1(p: f32[3], ...) -> (r, ...):` opens function 1 of
//!   function 0 (indented two spaces per level); its nodes follow, two
//!   spaces further in. Parameters are the function's placeholders.
//! - Blank lines and lines starting with `#` or `;` are skipped.
//!
//! Constants: `value=[...]` (any length, the elements in the node's dtype)
//! or `value=splat(x)`; a constant written without a value reads back as
//! the ramp `0, 1, 2, ...` (bools alternate), which the listing prints
//! without a value again, so `parse(g.to_string()).to_string() ==
//! g.to_string()` for every graph, though the values of large non-uniform
//! constants are not kept. A test that depends on values writes them.
//! Variables read back with zeros (their value is never listed).
//!
//! Errors name the line and what could not be read; nothing here panics on
//! bad text.

use std::fmt;

use serde_json::{Map, Number, Value};

use crate::array::{Array, Scalar};
use crate::dim_expr::DimExpr;
use crate::dtype::DType;
use crate::error::SourceLoc;
use crate::graph::{Function, Graph, NodeId};
use crate::op::{Op, Weight};
use crate::shape::{Dim, Shape, TensorType};

/// A line of a listing that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

type Res<T> = std::result::Result<T, ParseError>;

fn err<T>(line: usize, message: impl Into<String>) -> Res<T> {
    Err(ParseError {
        line,
        message: message.into(),
    })
}

/// A function's text: header fields and its lines, before it is built.
#[derive(Default)]
struct FnText {
    line: usize,
    params: Vec<(String, TensorType)>,
    results: Vec<String>,
    nodes: Vec<(usize, String)>,
    functions: Vec<FnText>,
}

/// Parses a graph listing (see the module doc).
pub fn parse_graph(text: &str) -> Res<Graph> {
    let mut top = FnText::default();
    let mut outputs: Option<(usize, Vec<String>)> = None;
    // The path of open functions: indices into each level's `functions`.
    let mut open: Vec<usize> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let body = raw.trim_start_matches(' ');
        if body.is_empty() || body.starts_with('#') || body.starts_with(';') {
            continue;
        }
        let indent = raw.len() - body.len();
        if indent % 2 != 0 {
            return err(line, "indentation is not a multiple of two spaces");
        }
        // A node named `function` is a node line: it has ` = `.
        let header = body
            .strip_prefix("function ")
            .filter(|_| !body.contains(" = "));
        if let Some(header) = header {
            let depth = indent / 2;
            if depth == 0 || depth > open.len() + 1 {
                return err(line, "a function header at the wrong indentation");
            }
            open.truncate(depth - 1);
            let parent = walk(&mut top, &open);
            let (path, f) = function_header(line, header)?;
            let want = open
                .iter()
                .chain([&parent.functions.len()])
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(".");
            if path != want {
                return err(
                    line,
                    format!("function {path} is listed where {want} belongs"),
                );
            }
            open.push(parent.functions.len());
            parent.functions.push(f);
        } else if indent == 0 {
            open.clear();
            if let Some(names) = body.strip_prefix("outputs:") {
                if outputs.is_some() {
                    return err(line, "a second 'outputs:' line");
                }
                let names = names.split(',').map(|s| s.trim().to_string());
                outputs = Some((line, names.filter(|s| !s.is_empty()).collect()));
            } else {
                top.nodes.push((line, body.to_string()));
            }
        } else {
            let depth = indent / 2 - 1;
            if depth == 0 || depth > open.len() {
                return err(line, "a node line indented past any open function");
            }
            open.truncate(depth);
            walk(&mut top, &open).nodes.push((line, body.to_string()));
        }
    }
    let (mut g, _) = build(&top)?;
    if let Some((line, names)) = outputs {
        for n in names {
            let id = g.find(&n).map_err(|_| ParseError {
                line,
                message: format!("output '{n}' is not a node"),
            })?;
            g.add_output(id).map_err(|e| ParseError {
                line,
                message: e.to_string(),
            })?;
        }
    }
    Ok(g)
}

impl std::str::FromStr for Graph {
    type Err = ParseError;

    fn from_str(s: &str) -> Res<Graph> {
        parse_graph(s)
    }
}

/// The function at `path` below `top`.
fn walk<'a>(top: &'a mut FnText, path: &[usize]) -> &'a mut FnText {
    let mut f = top;
    for &i in path {
        f = &mut f.functions[i];
    }
    f
}

/// `0.1(a: f32[3], b: i64[]) -> (r, s):` into its path and an empty function.
fn function_header(line: usize, h: &str) -> Res<(String, FnText)> {
    let bad = || ParseError {
        line,
        message: "a function header is `function N(name: type, ...) -> (name, ...):`".into(),
    };
    let (path, rest) = h.split_once('(').ok_or_else(bad)?;
    let (params, rest) = rest.split_once(") -> (").ok_or_else(bad)?;
    let results = rest.strip_suffix("):").ok_or_else(bad)?;
    let mut f = FnText {
        line,
        ..FnText::default()
    };
    for p in split_top(params, ", ") {
        let (name, ty) = p.split_once(": ").ok_or_else(bad)?;
        f.params.push((name.to_string(), parse_type(line, ty)?));
    }
    f.results = split_top(results, ", ").map(str::to_string).collect();
    Ok((path.to_string(), f))
}

/// Splits at `sep` outside brackets, braces and parentheses; nothing for "".
fn split_top<'a>(s: &'a str, sep: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'[' | b'{' | b'(' => depth += 1,
            b']' | b'}' | b')' => depth -= 1,
            _ if depth == 0 && s[i..].starts_with(sep) => {
                parts.push(&s[start..i]);
                i += sep.len();
                start = i;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    if !s.is_empty() {
        parts.push(&s[start..]);
    }
    parts.into_iter()
}

/// Builds a function's (or the top level's) graph: its functions first,
/// then its parameters, then its nodes. Returns the graph and the ids of
/// the parameters.
fn build(f: &FnText) -> Res<(Graph, Vec<NodeId>)> {
    let mut g = Graph::new();
    for sub in &f.functions {
        let (fg, params) = build(sub)?;
        let mut results = Vec::new();
        for r in &sub.results {
            let id = fg.find(r).map_err(|_| ParseError {
                line: sub.line,
                message: format!("result '{r}' is not a node of the function"),
            })?;
            results.push(id);
        }
        g.add_function(Function {
            graph: fg,
            params,
            results,
        });
    }
    let loc = |line: usize| SourceLoc {
        file: "listing".into(),
        line: line as u32,
        column: 1,
    };
    let mut params = Vec::new();
    for (name, ty) in &f.params {
        let op = Op::Placeholder {
            dtype: ty.dtype,
            shape: ty.shape.clone(),
        };
        let id = g
            .add_node(name, op, &[], loc(f.line))
            .map_err(|e| ParseError {
                line: f.line,
                message: e.to_string(),
            })?;
        params.push(id);
    }
    for &(line, ref text) in &f.nodes {
        let node = parse_node_line(line, text)?;
        let inputs = node
            .inputs
            .iter()
            .map(|n| {
                g.find(n).map_err(|_| ParseError {
                    line,
                    message: format!("input '{n}' is not defined on an earlier line"),
                })
            })
            .collect::<Res<Vec<_>>>()?;
        let op = make_op(line, node.op, node.attrs, &node.ty)?;
        let id = g
            .add_node(node.name, op, &inputs, loc(line))
            .map_err(|e| ParseError {
                line,
                message: e.to_string(),
            })?;
        if g.node(id).ty != node.ty {
            return err(
                line,
                format!(
                    "'{}' is written as {} but its op gives {}",
                    node.name,
                    node.ty,
                    g.node(id).ty
                ),
            );
        }
    }
    Ok((g, params))
}

struct NodeText<'a> {
    name: &'a str,
    op: &'a str,
    attrs: &'a str,
    inputs: Vec<&'a str>,
    ty: TensorType,
}

/// `name = op{attrs}(inputs) : type` into its parts.
fn parse_node_line(line: usize, text: &str) -> Res<NodeText<'_>> {
    let Some((name, rest)) = text.split_once(" = ") else {
        return err(line, "a node line is `name = op{attrs}(inputs) : type`");
    };
    let Some((rest, ty)) = rest.rsplit_once(" : ") else {
        return err(line, "the node's type is missing (` : dtype[dims]`)");
    };
    let ty = parse_type(line, ty)?;
    let op_end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let (op, mut rest) = rest.split_at(op_end);
    if op.is_empty() {
        return err(line, "the op's name is missing");
    }
    let mut attrs = "";
    if rest.starts_with('{') {
        let mut depth = 0;
        let mut end = None;
        for (i, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(end) = end else {
            return err(line, "the attributes' '{' is never closed");
        };
        attrs = &rest[1..end];
        rest = &rest[end + 1..];
    }
    let inputs = if rest.is_empty() {
        Vec::new()
    } else if let Some(list) = rest.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
        list.split(", ").collect()
    } else {
        return err(line, format!("unexpected text '{rest}' after the op"));
    };
    Ok(NodeText {
        name,
        op,
        attrs,
        inputs,
        ty,
    })
}

/// `f32[batch,3]` into a type.
pub fn parse_type(line: usize, s: &str) -> Res<TensorType> {
    let bad = |m: String| ParseError { line, message: m };
    let (dtype, dims) = s
        .split_once('[')
        .ok_or_else(|| bad(format!("'{s}' is not a type (`dtype[dims]`)")))?;
    let dtype = DType::from_name(dtype).ok_or_else(|| bad(format!("'{dtype}' is not a dtype")))?;
    let dims = dims
        .strip_suffix(']')
        .ok_or_else(|| bad(format!("the shape of '{s}' is not closed")))?;
    let mut shape = Vec::new();
    for d in split_top(dims, ",") {
        shape.push(parse_dim(d).map_err(|m| bad(format!("dim '{d}': {m}")))?);
    }
    Ok(TensorType::new(dtype, Shape(shape)))
}

fn parse_dim(d: &str) -> Result<Dim, String> {
    if let Ok(n) = d.parse::<usize>() {
        return Ok(Dim::Fixed(n));
    }
    let e = DimExpr::parse(d)?;
    Dim::from_expr(e)
}

/// The op of a node line.
fn make_op(line: usize, name: &str, attrs: &str, ty: &TensorType) -> Res<Op> {
    match name {
        "constant" => return constant(line, attrs, ty),
        "variable" => {
            let trainable = match attrs {
                "" => true,
                "trainable=false" => false,
                other => return err(line, format!("unknown variable attributes '{other}'")),
            };
            let shape = fixed_shape(line, ty)?;
            return Ok(Op::Variable {
                init: Weight::new(Array::zeros(ty.dtype, &shape)),
                trainable,
            });
        }
        _ => {}
    }
    let mut map = attributes(line, attrs)?;
    if name == "symbolic_constant" {
        // Dim expressions are strings in JSON; a plain number lost its quotes.
        if let Some(Value::Array(vs)) = map.get_mut("values") {
            for v in vs.iter_mut() {
                if let Value::Number(n) = v {
                    *v = Value::String(n.to_string());
                }
            }
        }
    }
    for (tag, f) in op_candidates(name) {
        let mut m = map.clone();
        m.insert("op".into(), Value::String(tag));
        if let Some(f) = f {
            m.insert("f".into(), Value::String(f));
        }
        if let Ok(op) = serde_json::from_value::<Op>(Value::Object(m)) {
            if op.name() == name {
                return Ok(op);
            }
        }
    }
    // Say why the most likely reading failed.
    let (tag, f) = op_candidates(name)
        .pop()
        .unwrap_or((name.to_string(), None));
    map.insert("op".into(), Value::String(tag));
    if let Some(f) = f {
        map.insert("f".into(), Value::String(f));
    }
    match serde_json::from_value::<Op>(Value::Object(map)) {
        Ok(_) => err(line, format!("unknown op '{name}'")),
        Err(e) => err(line, format!("op '{name}': {e}")),
    }
}

/// The serialized tags (and functions) an op name may stand for, most
/// likely last; the caller keeps the one whose name reads back the same.
fn op_candidates(name: &str) -> Vec<(String, Option<String>)> {
    let mut v = vec![
        ("unary".to_string(), Some(name.to_string())),
        ("binary".to_string(), Some(name.to_string())),
    ];
    let binary = match name {
        "maximum" => Some("max"),
        "minimum" => Some("min"),
        "equal" => Some("eq"),
        "not_equal" => Some("ne"),
        "less" => Some("lt"),
        "less_equal" => Some("le"),
        "greater" => Some("gt"),
        "greater_equal" => Some("ge"),
        _ => None,
    };
    if let Some(f) = binary {
        v.push(("binary".into(), Some(f.into())));
    }
    if let Some(f) = name.strip_prefix("reduce_") {
        v.push(("reduce".into(), Some(f.into())));
    }
    if let Some(f) = name.strip_prefix("arg") {
        v.push(("arg_reduce".into(), Some(format!("arg_{f}"))));
    }
    v.push((name.to_string(), None));
    v
}

fn fixed_shape(line: usize, ty: &TensorType) -> Res<Vec<usize>> {
    ty.shape.as_fixed().ok_or_else(|| ParseError {
        line,
        message: format!(
            "a constant or variable needs a fixed shape, not {}",
            ty.shape
        ),
    })
}

/// A constant of type `ty` from its attributes (see the module doc).
fn constant(line: usize, attrs: &str, ty: &TensorType) -> Res<Op> {
    let shape = fixed_shape(line, ty)?;
    let n: usize = shape.iter().product();
    let dtype = ty.dtype;
    let values: Vec<Scalar> = if attrs.is_empty() {
        (0..n)
            .map(|i| match dtype {
                DType::Bool => Scalar::Bool(i % 2 == 1),
                _ => Scalar::from_f64(dtype, i as f64),
            })
            .collect()
    } else if let Some(v) = attrs
        .strip_prefix("value=splat(")
        .and_then(|r| r.strip_suffix(')'))
    {
        vec![scalar(line, dtype, v)?; n]
    } else if let Some(list) = attrs
        .strip_prefix("value=[")
        .and_then(|r| r.strip_suffix(']'))
    {
        let items: Vec<&str> = if list.trim().is_empty() {
            Vec::new()
        } else {
            list.split(',').map(str::trim).collect()
        };
        if items.len() != n {
            return err(
                line,
                format!("{} values for a constant of {n} elements", items.len()),
            );
        }
        items
            .into_iter()
            .map(|v| scalar(line, dtype, v))
            .collect::<Res<_>>()?
    } else {
        return err(
            line,
            format!("a constant's attributes are `value=[...]` or `value=splat(x)`, not '{attrs}'"),
        );
    };
    let a = Array::from_scalars(shape, dtype, &values).ok_or_else(|| ParseError {
        line,
        message: "the values do not fit the constant's type".into(),
    })?;
    Ok(Op::Constant {
        value: Weight::new(a),
    })
}

/// One element of `dtype` as the listing writes it.
fn scalar(line: usize, dtype: DType, s: &str) -> Res<Scalar> {
    fn p<T: std::str::FromStr>(s: &str) -> Option<T> {
        s.parse().ok()
    }
    let v = match dtype {
        DType::F32 => p::<f32>(s).map(Scalar::F32),
        DType::F64 => p::<f64>(s).map(Scalar::F64),
        DType::F16 => p::<f32>(s).map(|v| Scalar::F16(half::f16::from_f32(v))),
        DType::BF16 => p::<f32>(s).map(|v| Scalar::BF16(half::bf16::from_f32(v))),
        DType::I8 => p(s).map(Scalar::I8),
        DType::I16 => p(s).map(Scalar::I16),
        DType::I32 => p(s).map(Scalar::I32),
        DType::I64 => p(s).map(Scalar::I64),
        DType::U8 => p(s).map(Scalar::U8),
        DType::U16 => p(s).map(Scalar::U16),
        DType::U32 => p(s).map(Scalar::U32),
        DType::U64 => p(s).map(Scalar::U64),
        DType::Bool => p(s).map(Scalar::Bool),
    };
    v.ok_or_else(|| ParseError {
        line,
        message: format!("'{s}' is not a {dtype} value"),
    })
}

/// `key=value, ...` (JSON values with their quotes dropped) into a map.
fn attributes(line: usize, attrs: &str) -> Res<Map<String, Value>> {
    let mut map = Map::new();
    for pair in split_top(attrs, ", ") {
        let Some((k, v)) = pair.split_once('=') else {
            return err(line, format!("attribute '{pair}' is not key=value"));
        };
        let mut r = Reader {
            s: v.as_bytes(),
            i: 0,
        };
        let value = r.value().ok_or_else(|| ParseError {
            line,
            message: format!("attribute {k}: cannot read '{v}'"),
        })?;
        if r.i != r.s.len() {
            return err(line, format!("attribute {k}: unexpected text after '{v}'"));
        }
        map.insert(k.to_string(), value);
    }
    Ok(map)
}

/// A reader of JSON without quotes: a bare word is a number, `true`,
/// `false`, `null`, or else a string.
struct Reader<'a> {
    s: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn value(&mut self) -> Option<Value> {
        match self.peek()? {
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                if self.peek()? == b']' {
                    self.i += 1;
                    return Some(Value::Array(items));
                }
                loop {
                    items.push(self.value()?);
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Some(Value::Array(items));
                        }
                        _ => return None,
                    }
                }
            }
            b'{' => {
                self.i += 1;
                let mut map = Map::new();
                if self.peek()? == b'}' {
                    self.i += 1;
                    return Some(Value::Object(map));
                }
                loop {
                    let start = self.i;
                    while self.peek()? != b':' {
                        self.i += 1;
                    }
                    let key = std::str::from_utf8(&self.s[start..self.i])
                        .ok()?
                        .to_string();
                    self.i += 1;
                    map.insert(key, self.value()?);
                    match self.peek()? {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return Some(Value::Object(map));
                        }
                        _ => return None,
                    }
                }
            }
            _ => {
                let start = self.i;
                let mut depth = 0;
                while let Some(c) = self.peek() {
                    match c {
                        b'(' => depth += 1,
                        b')' if depth > 0 => depth -= 1,
                        b',' | b']' | b'}' if depth == 0 => break,
                        _ => {}
                    }
                    self.i += 1;
                }
                let word = std::str::from_utf8(&self.s[start..self.i]).ok()?;
                Some(bare(word))
            }
        }
    }
}

/// The JSON value a quote-less word stood for.
fn bare(word: &str) -> Value {
    match word {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        "null" => return Value::Null,
        _ => {}
    }
    let numeric = word
        .trim_start_matches('-')
        .starts_with(|c: char| c.is_ascii_digit());
    if numeric {
        if let Ok(n) = word.parse::<u64>() {
            return Value::Number(n.into());
        }
        if let Ok(n) = word.parse::<i64>() {
            return Value::Number(n.into());
        }
        if let Some(n) = word.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(word.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::GraphBuilder;

    fn round_trip(g: &Graph) {
        let text = g.to_string();
        let back = parse_graph(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back.to_string(), text);
    }

    #[test]
    fn a_small_graph_round_trips() {
        let g = GraphBuilder::new();
        let x = g
            .placeholder("x", DType::F32, crate::shape!["batch", 4])
            .unwrap();
        let c = g
            .constant(Array::from_vec(vec![4], vec![1.0f32, 2.0, -0.5, f32::NAN]).unwrap())
            .unwrap();
        let big = g
            .constant(Array::filled(DType::F32, &[4, 4], 0.25))
            .unwrap();
        let y = x.mul(c).unwrap().matmul(big).unwrap().exp().unwrap();
        let s = y.sum(&[1], true).unwrap().maximum(0.0).unwrap();
        g.output(s.named("out").unwrap()).unwrap();
        let graph = g.into_graph();
        let text = graph.to_string();
        assert!(text.contains("value=splat(0.25)"), "{text}");
        assert!(text.contains("outputs: out"), "{text}");
        round_trip(&graph);
    }

    #[test]
    fn control_flow_and_nested_functions_round_trip() {
        let g = GraphBuilder::new();
        let x = g.placeholder("x", DType::F32, [3]).unwrap();
        let p = g.placeholder("p", DType::Bool, [0usize; 0]).unwrap();
        let r = g
            .cond(
                p,
                &[x],
                |b, a| {
                    // A loop inside a branch: function 0 holds function 0.0 and 0.1.
                    let n = b.scalar(0.0, DType::F32).unwrap();
                    let out = b
                        .while_loop_at_most(
                            3,
                            &[a[0], n],
                            &[],
                            |_, v| v[1].lt(2.0),
                            |_, v| Ok(vec![v[0].exp()?, v[1].add(1.0)?]),
                        )
                        .unwrap();
                    Ok(vec![out[0]])
                },
                |_, a| Ok(vec![a[0].neg()?]),
            )
            .unwrap();
        g.output(r[0]).unwrap();
        let graph = g.into_graph();
        let text = graph.to_string();
        assert!(text.contains("function 0.1("), "{text}");
        round_trip(&graph);
    }

    #[test]
    fn bad_lines_are_errors_that_name_the_line() {
        let cases = [
            (
                "x = placeholder{dtype=f32, shape=[2]} : f32[2]\ny = frobnicate(x) : f32[2]\n",
                2,
                "frobnicate",
            ),
            (
                "x = placeholder{dtype=f32, shape=[2]} : f32[2]\ny = exp(z) : f32[2]\n",
                2,
                "'z'",
            ),
            (
                "x = placeholder{dtype=f32, shape=[2]} : f32[3]\n",
                1,
                "written as",
            ),
            (
                "x = placeholder{dtype=f32, shape=[2] : f32[2]\n",
                1,
                "never closed",
            ),
            ("x = constant{value=[1.0]} : f32[2]\n", 1, "1 values"),
            (
                "x = constant{value=[1.0, x]} : f32[2]\n",
                1,
                "'x' is not a f32",
            ),
            (
                "x = placeholder{dtype=f32, shape=[2]} : q9[2]\n",
                1,
                "not a dtype",
            ),
            ("x = exp\n", 1, "type is missing"),
            ("outputs: nowhere\n", 1, "not a node"),
            ("   x = exp\n", 1, "indentation"),
            ("  function 1(a: f32[]) -> (a):\n", 1, "belongs"),
        ];
        for (text, line, what) in cases {
            let e = parse_graph(text).expect_err(text);
            assert_eq!(e.line, line, "{text}: {e}");
            assert!(e.message.contains(what), "{text}: {e}");
        }
    }
}
