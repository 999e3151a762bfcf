//! `Scan`: opset 9 and later (scan axes and directions), and opset 8's
//! form (a batch axis and sequence lengths).

use kiln_graph::{GraphBuilder, Tensor};

use crate::control::{captures, free_names, run_subgraph, subgraph, tensor_inputs};
use crate::error::Result;
use crate::ops::{self, ConvertError};
use crate::proto::NodeProto;
use crate::scope::{needs_value, node_error, Item, Scope, Value};

/// `Scan` (opset 9 and later): the body unrolled over the scan axis (a
/// fixed size), states carried from step to step, scan outputs stacked.
pub(crate) fn control_scan<'g>(
    g: &'g GraphBuilder,
    n: &NodeProto,
    opset: i64,
    scope: &Scope<'g>,
) -> Result<Vec<Item<'g>>> {
    let fail = |e: ConvertError| node_error(n, opset, e);
    if opset < 9 {
        return control_scan8(g, n, opset, scope);
    }
    let body = subgraph(n, "body").map_err(fail)?;
    let attr_ints = |name: &str| -> Vec<i64> {
        n.attribute
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.ints.clone())
            .unwrap_or_default()
    };
    let m = n
        .attribute
        .iter()
        .find(|a| a.name == "num_scan_inputs")
        .map(|a| a.i as usize)
        .ok_or_else(|| fail("no num_scan_inputs".into()))?;
    let ins = tensor_inputs(scope, &n.input, &fail)?;
    let nstate = ins
        .len()
        .checked_sub(m)
        .ok_or_else(|| fail("more scan inputs than inputs".into()))?;
    let nscan_out = body
        .output
        .len()
        .checked_sub(nstate)
        .ok_or_else(|| fail("the body gives fewer outputs than states".into()))?;
    let in_axes = attr_ints("scan_input_axes");
    let in_dirs = attr_ints("scan_input_directions");
    let out_axes = attr_ints("scan_output_axes");
    let out_dirs = attr_ints("scan_output_directions");
    let err = |e: kiln_graph::Error| fail(e.into());
    let mut len = None;
    let mut scans = Vec::new();
    for (j, v) in ins[nstate..].iter().enumerate() {
        let rank = v.t.rank() as i64;
        let a = in_axes.get(j).copied().unwrap_or(0);
        let a = if a < 0 { a + rank } else { a };
        let l = v.t.shape().0[a as usize]
            .fixed()
            .ok_or_else(|| fail("the scan axis must be a fixed size".into()))?;
        if len.is_some_and(|x| x != l) {
            return Err(fail("scan inputs of different lengths".into()));
        }
        len = Some(l);
        scans.push((v.t, a, in_dirs.get(j).copied().unwrap_or(0) != 0));
    }
    let len = len.ok_or_else(|| fail("no scan inputs".into()))?;
    let outer = captures(scope, &free_names(body)).map_err(fail)?;
    let mut states: Vec<Item<'g>> = ins[..nstate].iter().cloned().map(Item::Tensor).collect();
    let mut stacked: Vec<Vec<Tensor<'g>>> = vec![Vec::new(); nscan_out];
    for t in 0..len {
        let mut step = states.clone();
        for &(x, a, reverse) in &scans {
            let i = if reverse { len - 1 - t } else { t } as i64;
            let s = x
                .slice_axis(a, i, i + 1, 1)
                .map_err(err)?
                .squeeze(a)
                .map_err(err)?;
            step.push(Item::Tensor(Value::runtime(s)));
        }
        let outs = run_subgraph(g, body, opset, &outer, &step)?;
        states = outs[..nstate].to_vec();
        for (k, o) in outs[nstate..].iter().enumerate() {
            let Item::Tensor(o) = o else {
                return Err(fail(format!("scan output {k} is {}", o.kind()).into()));
            };
            stacked[k].push(o.t);
        }
    }
    let mut out = states;
    for (k, mut steps) in stacked.into_iter().enumerate() {
        if out_dirs.get(k).copied().unwrap_or(0) != 0 {
            steps.reverse();
        }
        let rank = steps[0].rank() as i64 + 1;
        let a = out_axes.get(k).copied().unwrap_or(0);
        let a = if a < 0 { a + rank } else { a };
        let parts: Vec<Tensor<'g>> = steps
            .iter()
            .map(|s| s.unsqueeze(a))
            .collect::<kiln_graph::Result<_>>()
            .map_err(err)?;
        let t = g.concat(&parts, a).map_err(err)?;
        out.push(Item::Tensor(Value::runtime(t)));
    }
    Ok(out)
}

/// `Scan` of opset 8: batched (every input's dim 0 is the batch, the scan
/// axis of scan inputs is dim 1), with optional `sequence_lens` (known at
/// import time) and per-input `directions`. Each batch entry is unrolled
/// over its own length; its scan outputs are padded with zeros to the
/// longest.
fn control_scan8<'g>(
    g: &'g GraphBuilder,
    n: &NodeProto,
    opset: i64,
    scope: &Scope<'g>,
) -> Result<Vec<Item<'g>>> {
    let fail = |e: ConvertError| node_error(n, opset, e);
    let err = |e: kiln_graph::Error| fail(e.into());
    let body = subgraph(n, "body").map_err(fail)?;
    let attr = |name: &str| n.attribute.iter().find(|a| a.name == name);
    let m = attr("num_scan_inputs")
        .map(|a| a.i as usize)
        .ok_or_else(|| fail("no num_scan_inputs".into()))?;
    let dirs = attr("directions")
        .map(|a| a.ints.clone())
        .unwrap_or_default();
    let ins = tensor_inputs(scope, &n.input[1.min(n.input.len())..], &fail)?;
    let nstate = ins
        .len()
        .checked_sub(m)
        .filter(|_| m > 0)
        .ok_or_else(|| fail("no scan inputs, or more than inputs".into()))?;
    let nscan_out = body
        .output
        .len()
        .checked_sub(nstate)
        .ok_or_else(|| fail("the body gives fewer outputs than states".into()))?;
    let fixed = |v: &Value<'g>, d: usize| {
        v.t.shape()
            .0
            .get(d)
            .and_then(|d| d.fixed())
            .ok_or_else(|| fail("the batch and scan dims must be fixed sizes".into()))
    };
    let batch = fixed(&ins[0], 0)?;
    let max_len = fixed(&ins[nstate], 1)?;
    for v in &ins[nstate..] {
        if fixed(v, 0)? != batch || fixed(v, 1)? != max_len {
            return Err(fail("scan inputs of different batch or lengths".into()));
        }
    }
    let lens: Vec<usize> = match n.input.first().filter(|s| !s.is_empty()) {
        None => vec![max_len; batch],
        Some(name) => {
            let v = scope
                .tensor(name)
                .ok_or_else(|| fail("sequence_lens is not a tensor".into()))?;
            let a = v
                .constant
                .as_ref()
                .ok_or_else(|| needs_value(n, opset, name))?;
            let lens = ops::ints_of(a).map_err(fail)?;
            if lens.len() != batch || lens.iter().any(|&l| l < 0 || l as usize > max_len) {
                return Err(fail(
                    format!("sequence_lens {lens:?} for a batch of {batch} of length {max_len}")
                        .into(),
                ));
            }
            lens.into_iter().map(|l| l as usize).collect()
        }
    };
    let outer = captures(scope, &free_names(body)).map_err(fail)?;
    let entry = |v: &Value<'g>, b: usize| -> Result<Tensor<'g>> {
        v.t.slice_axis(0, b as i64, b as i64 + 1, 1)
            .and_then(|t| t.squeeze(0))
            .map_err(err)
    };
    let mut state_out: Vec<Vec<Tensor<'g>>> = vec![Vec::new(); nstate];
    let mut scan_out: Vec<Vec<Tensor<'g>>> = vec![Vec::new(); nscan_out];
    for (b, &len) in lens.iter().enumerate() {
        let mut states: Vec<Item<'g>> = ins[..nstate]
            .iter()
            .map(|v| Ok(Item::Tensor(Value::runtime(entry(v, b)?))))
            .collect::<Result<_>>()?;
        let xs: Vec<Tensor<'g>> = ins[nstate..]
            .iter()
            .map(|v| entry(v, b))
            .collect::<Result<_>>()?;
        let mut stacked: Vec<Vec<Tensor<'g>>> = vec![Vec::new(); nscan_out];
        for t in 0..len {
            let mut step = states.clone();
            for (j, x) in xs.iter().enumerate() {
                let reverse = dirs.get(j).copied().unwrap_or(0) != 0;
                let i = if reverse { len - 1 - t } else { t } as i64;
                let s = x.slice_axis(0, i, i + 1, 1).and_then(|s| s.squeeze(0));
                step.push(Item::Tensor(Value::runtime(s.map_err(err)?)));
            }
            let outs = run_subgraph(g, body, opset, &outer, &step)?;
            states = outs[..nstate].to_vec();
            for (k, o) in outs[nstate..].iter().enumerate() {
                let Item::Tensor(o) = o else {
                    return Err(fail(format!("scan output {k} is {}", o.kind()).into()));
                };
                stacked[k].push(o.t.unsqueeze(0).map_err(err)?);
            }
        }
        for (k, s) in states.iter().enumerate() {
            let Item::Tensor(s) = s else {
                return Err(fail(format!("state {k} is {}", s.kind()).into()));
            };
            state_out[k].push(s.t.unsqueeze(0).map_err(err)?);
        }
        for (k, steps) in stacked.into_iter().enumerate() {
            if steps.is_empty() {
                return Err(fail("a sequence of length 0 in the batch".into()));
            }
            let mut t = g.concat(&steps, 0).map_err(err)?;
            if len < max_len {
                let before = vec![0; t.rank()];
                let mut after = before.clone();
                after[0] = max_len - len;
                t = t.pad(&before, &after, 0.0).map_err(err)?;
            }
            scan_out[k].push(t.unsqueeze(0).map_err(err)?);
        }
    }
    state_out
        .into_iter()
        .chain(scan_out)
        .map(|parts| {
            let t = g.concat(&parts, 0).map_err(err)?;
            Ok(Item::Tensor(Value::runtime(t)))
        })
        .collect()
}
