//! `Loop`: unrolled where its trip count is known at import time and small
//! (or where it carries sequences, optionals or scan outputs), otherwise
//! kiln's `while_loop`.

use kiln_graph::{Array, GraphBuilder, Tensor};

use crate::control::{
    captures, free_names, remake, run_subgraph, runtime_params, subgraph, FirstError,
};
use crate::error::{Error, Result};
use crate::fold::build_or_fold;
use crate::ops::ConvertError;
use crate::proto::{GraphProto, NodeProto};
use crate::scope::{needs_value, node_error, Item, Scope, Value};

/// Trip counts up to which a `Loop` is unrolled.
const MAX_UNROLL: i64 = 4096;

/// `Loop`. A loop with scan outputs (per-iteration values stacked) or
/// loop-carried sequences or optionals is unrolled: its trip count and
/// condition must be known at import time (`Error::NeedsValue` otherwise),
/// and the condition the body computes too; each iteration runs the body
/// with a constant iteration number, and stops where the condition turns
/// false. A loop of tensors only with a small constant trip count (at most
/// 16) is unrolled as well; otherwise kiln's `while_loop` carries
/// (iteration, condition, values).
pub(crate) fn control_loop<'g>(
    g: &'g GraphBuilder,
    n: &NodeProto,
    opset: i64,
    scope: &Scope<'g>,
) -> Result<Vec<Item<'g>>> {
    let fail = |e: ConvertError| node_error(n, opset, e);
    let body = subgraph(n, "body").map_err(fail)?;
    let input = |i: usize| -> Option<&Item<'g>> {
        n.input
            .get(i)
            .filter(|s| !s.is_empty())
            .and_then(|s| scope.values.get(s))
    };
    let tensor_input = |i: usize, what: &str| -> Result<Option<&Value<'g>>> {
        match input(i) {
            None => Ok(None),
            Some(Item::Tensor(v)) => Ok(Some(v)),
            Some(other) => Err(fail(format!("its {what} is {}", other.kind()).into())),
        }
    };
    let trip = tensor_input(0, "trip count")?;
    let cond = tensor_input(1, "condition")?;
    let vars: Vec<Item<'g>> = (2..n.input.len())
        .map(|i| {
            input(i)
                .cloned()
                .ok_or_else(|| fail(format!("input {i} is missing").into()))
        })
        .collect::<Result<_>>()?;
    let nv = vars.len();
    let scans = body
        .output
        .len()
        .checked_sub(1 + nv)
        .ok_or_else(|| fail("the body gives fewer outputs than loop values".into()))?;
    let outer = captures(scope, &free_names(body)).map_err(fail)?;
    // Must the loop be unrolled (values kiln's while_loop cannot carry)?
    let structured = scans > 0 || vars.iter().any(|v| !matches!(v, Item::Tensor(_)));
    let trip_const = trip.map(first_value);
    let cond_const = cond.map(first_value);
    if structured {
        if let Some(None) = trip_const {
            return Err(needs_value(n, opset, &n.input[0]));
        }
        if let Some(None) = cond_const {
            return Err(needs_value(n, opset, &n.input[1]));
        }
        if trip.is_none() && cond.is_none() {
            return Err(fail(
                "a loop without a trip count or condition never ends".into(),
            ));
        }
    }
    let l = Loop {
        g,
        n,
        opset,
        body,
        outer: &outer,
        scans,
    };
    let known = !matches!(trip_const, Some(None)) && !matches!(cond_const, Some(None));
    let max = trip_const.flatten().map(|m| m as i64);
    if known && (structured || max.is_some_and(|m| m <= 16)) {
        if max.is_some_and(|m| m > MAX_UNROLL) {
            return Err(fail(
                format!(
                    "a trip count of {} (more than {MAX_UNROLL}) in a loop that must be unrolled",
                    max.unwrap_or_default()
                )
                .into(),
            ));
        }
        if let Some(out) = unroll(&l, vars.clone(), max, cond_const.flatten(), structured)? {
            return Ok(out);
        }
    }
    while_loop(&l, &vars, trip, cond)
}

/// A `Loop` node being converted: its body, the outer values the body
/// reads, and its number of scan outputs.
struct Loop<'a, 'g> {
    g: &'g GraphBuilder,
    n: &'a NodeProto,
    opset: i64,
    body: &'a GraphProto,
    outer: &'a [(String, Item<'g>)],
    scans: usize,
}

impl Loop<'_, '_> {
    /// `e`, said of the node.
    fn fail(&self, e: ConvertError) -> Error {
        node_error(self.n, self.opset, e)
    }
}

/// The first value of `v` where known at import time.
fn first_value(v: &Value<'_>) -> Option<f64> {
    v.constant
        .as_ref()
        .and_then(|a| a.to_f64_vec().first().copied())
}

/// The loop unrolled from `vars`, at most `max` iterations while the
/// condition (`cond`, then the body's) holds; `None` where the body's
/// condition turns out to be computed at run time in a loop that need not
/// be unrolled (kiln's `while_loop` carries it instead; what was built is
/// left unused).
fn unroll<'g>(
    l: &Loop<'_, 'g>,
    vars: Vec<Item<'g>>,
    max: Option<i64>,
    cond: Option<f64>,
    structured: bool,
) -> Result<Option<Vec<Item<'g>>>> {
    let (g, opset, body, outer, scans) = (l.g, l.opset, l.body, l.outer, l.scans);
    let fail = |e: ConvertError| l.fail(e);
    let nv = vars.len();
    let scalar = |v: f64, dtype| -> Result<Item<'g>> {
        let a = Array::new(Vec::new(), kiln_graph::Data::filled(dtype, 1, v))
            .ok_or_else(|| fail("a scalar".into()))?;
        let t = g.constant(a).map_err(|e| fail(e.into()))?;
        Ok(Item::Tensor(Value::of(t)))
    };
    let mut cur = vars;
    let mut stacked: Vec<Vec<Value<'g>>> = vec![Vec::new(); scans];
    let mut go = cond.is_none_or(|c| c != 0.0);
    let mut i = 0i64;
    while go && max.is_none_or(|m| i < m) {
        if i == MAX_UNROLL {
            return Err(fail(
                format!("the loop runs more than {MAX_UNROLL} iterations (unrolled)").into(),
            ));
        }
        let mut ins = vec![
            scalar(i as f64, kiln_graph::DType::I64)?,
            scalar(1.0, kiln_graph::DType::Bool)?,
        ];
        ins.extend(cur.iter().cloned());
        let outs = run_subgraph(g, body, opset, outer, &ins)?;
        match &outs[0] {
            Item::Tensor(c) => match first_value(c) {
                Some(c) => go = c != 0.0,
                None if structured => {
                    return Err(fail(
                        "the body's condition is computed at run time in a loop that must \
                         be unrolled"
                            .into(),
                    ))
                }
                // Carried by kiln's while_loop instead (what was built is
                // left unused).
                None => return Ok(None),
            },
            other => {
                return Err(fail(
                    format!("the body's condition is {}", other.kind()).into(),
                ))
            }
        }
        cur = outs[1..1 + nv].to_vec();
        for (k, s) in outs[1 + nv..].iter().enumerate() {
            let Item::Tensor(s) = s else {
                return Err(fail(format!("scan output {k} is {}", s.kind()).into()));
            };
            stacked[k].push(s.clone());
        }
        i += 1;
    }
    let mut out = cur;
    for s in stacked {
        if s.is_empty() {
            return Err(fail("scan outputs of a loop that runs no iteration".into()));
        }
        let t = build_or_fold(g, &s, &|b, ts| {
            let parts = ts
                .iter()
                .map(|t| t.unsqueeze(0))
                .collect::<kiln_graph::Result<Vec<_>>>()?;
            Ok(vec![b.concat(&parts, 0)?])
        })
        .map_err(fail)?;
        out.extend(t.into_iter().map(Item::Tensor));
    }
    Ok(Some(out))
}

/// The loop as kiln's `while_loop` carrying (iteration, condition, values):
/// `while (i < M && cond) { (cond, vars) = body(i, cond, vars); i += 1 }`.
fn while_loop<'g>(
    l: &Loop<'_, 'g>,
    vars: &[Item<'g>],
    trip: Option<&Value<'g>>,
    cond: Option<&Value<'g>>,
) -> Result<Vec<Item<'g>>> {
    let (g, body, opset, outer) = (l.g, l.body, l.opset, l.outer);
    let fail = |e: ConvertError| l.fail(e);
    let vars: Vec<Tensor<'g>> = vars
        .iter()
        .map(|v| match v {
            Item::Tensor(v) => Ok(v.t),
            other => Err(fail(format!("a loop value is {}", other.kind()).into())),
        })
        .collect::<Result<_>>()?;
    let i0 = g
        .scalar(0.0, kiln_graph::DType::I64)
        .map_err(|e| fail(e.into()))?;
    let c0 = match cond {
        Some(c) => {
            c.t.reshape(kiln_graph::Shape(Vec::new()))
                .map_err(|e| fail(e.into()))?
        }
        None => g
            .scalar(1.0, kiln_graph::DType::Bool)
            .map_err(|e| fail(e.into()))?,
    };
    let mut state = vec![i0, c0];
    state.extend(vars);
    let params = runtime_params(outer);
    let mut captured_t = params.clone();
    let has_trip = trip.is_some();
    if let Some(m) = trip {
        captured_t.push(
            m.t.reshape(kiln_graph::Shape(Vec::new()))
                .map_err(|e| fail(e.into()))?,
        );
    }
    let first = FirstError::new();
    let ns = state.len();
    let ncap = params.len();
    let r = g.while_loop(
        &state,
        &captured_t,
        |_b, p| {
            let go = p[1];
            if has_trip {
                go.and(p[0].lt(p[ns + ncap])?)
            } else {
                Ok(go)
            }
        },
        |b, p| {
            let ins: Vec<Item<'_>> = p[..ns]
                .iter()
                .map(|&t| Item::Tensor(Value::runtime(t)))
                .collect();
            let outer = first.keep(remake(b, outer, &p[ns..ns + ncap]))?;
            let outs = first.keep(run_subgraph(b, body, opset, &outer, &ins))?;
            let mut next = vec![p[0].add(1.0)?];
            for (k, o) in outs.iter().take(ns - 1).enumerate() {
                let Item::Tensor(v) = o else {
                    return first.keep(Err(fail(
                        format!("the body's output {k} is {}", o.kind()).into(),
                    )));
                };
                next.push(if k == 0 {
                    v.t.reshape(kiln_graph::Shape(Vec::new()))?
                } else {
                    v.t
                });
            }
            Ok(next)
        },
    );
    match (r, first.0.into_inner()) {
        (Ok(ts), _) => Ok(ts[2..]
            .iter()
            .map(|&t| Item::Tensor(Value::runtime(t)))
            .collect()),
        (Err(_), Some(e)) => Err(e),
        (Err(e), None) => Err(fail(format!("its body: {e}").into())),
    }
}
