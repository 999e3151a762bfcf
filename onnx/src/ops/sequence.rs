//! Sequence and optional ops: `SequenceConstruct`, `SequenceEmpty`,
//! `SequenceInsert`, `SequenceErase`, `SequenceAt`, `SequenceLength`,
//! `ConcatFromSequence`, `SplitToSequence`, `SequenceMap`, `Optional`,
//! `OptionalHasElement`, `OptionalGetElement`.
//!
//! kiln has no sequence or optional types: the importer keeps them as
//! import-time structures ([`Item`]): a sequence is a list of tensors whose
//! length is known while importing, an optional is known to hold a value
//! or none. These converters rearrange such lists; only
//! `ConcatFromSequence` and `SplitToSequence` add kiln ops (evaluated at
//! import time when their inputs are constants). Deliberate limits, all
//! from kiln's static shapes:
//!
//! - positions (`SequenceAt`, `SequenceInsert`, `SequenceErase`) and
//!   `SplitToSequence`'s `split` must be known at import time (a graph
//!   input they come from can be bound: `Error::NeedsValue`);
//! - `SplitToSequence` splits a fixed-size axis (a symbolic one needs the
//!   input's value);
//! - `SequenceMap` runs its body once per element (unrolled);
//! - `OptionalHasElement` is a constant.

use kiln_graph::{Array, DType, Data, GraphBuilder, Tensor};

use super::{axis, ints_of, Converter, Node, R};
use crate::control::call_subgraph;
use crate::error::Result;
use crate::fold::build_or_fold;
use crate::proto::NodeProto;
use crate::scope::{node_error, Item, Scope, Value};

/// A sequence or optional node being converted: its inputs are any values
/// (tensors, sequences, optionals).
pub(crate) struct SeqNode<'a, 'g> {
    /// The builder to add ops to.
    pub g: &'g GraphBuilder,
    pub proto: &'a NodeProto,
    /// The opset of the default domain.
    pub opset: i64,
    /// One per ONNX input; `None` for an omitted optional input.
    pub inputs: Vec<Option<Item<'g>>>,
    /// The values of the enclosing graph (what a subgraph reads).
    pub scope: &'a Scope<'g>,
}

/// Converts one sequence or optional node.
pub(crate) type SeqConverter = for<'a, 'g> fn(&SeqNode<'a, 'g>) -> Result<Vec<Item<'g>>>;

/// The converters, by op type.
const CONVERTERS: &[(&str, SeqConverter)] = &[
    ("SequenceConstruct", sequence_construct),
    ("SequenceEmpty", |_| Ok(vec![Item::Sequence(Vec::new())])),
    ("SequenceInsert", sequence_insert),
    ("SequenceErase", sequence_erase),
    ("SequenceAt", sequence_at),
    ("SequenceLength", sequence_length),
    ("ConcatFromSequence", concat_from_sequence),
    ("SplitToSequence", split_to_sequence),
    ("SequenceMap", sequence_map),
    ("Optional", optional),
    ("OptionalHasElement", optional_has_element),
    ("OptionalGetElement", optional_get_element),
];

fn handled<'a, 'g>(_: &Node<'a, 'g>) -> R<Vec<Tensor<'g>>> {
    Err("a sequence op (the importer converts it)".into())
}

/// The op table entries (the importer dispatches these ops to [`find`]).
pub(crate) const OPS: &[(&str, Converter)] = &[
    ("SequenceConstruct", handled),
    ("SequenceEmpty", handled),
    ("SequenceInsert", handled),
    ("SequenceErase", handled),
    ("SequenceAt", handled),
    ("SequenceLength", handled),
    ("ConcatFromSequence", handled),
    ("SplitToSequence", handled),
    ("SequenceMap", handled),
    ("Optional", handled),
    ("OptionalHasElement", handled),
    ("OptionalGetElement", handled),
];

/// The converter of sequence or optional op `op_type`.
pub(crate) fn find(op_type: &str) -> Option<SeqConverter> {
    CONVERTERS
        .iter()
        .find(|(n, _)| *n == op_type)
        .map(|(_, c)| *c)
}

impl<'a, 'g> SeqNode<'a, 'g> {
    /// The error of this node for `reason`.
    fn fail(&self, reason: impl Into<super::ConvertError>) -> crate::Error {
        node_error(self.proto, self.opset, reason.into())
    }

    /// Input `i`, where present.
    fn opt(&self, i: usize) -> Option<&Item<'g>> {
        self.inputs.get(i).and_then(|v| v.as_ref())
    }

    /// Required input `i`.
    fn item(&self, i: usize) -> Result<&Item<'g>> {
        self.opt(i)
            .ok_or_else(|| self.fail(format!("input {i} is required")))
    }

    /// Required input `i`, a sequence.
    fn sequence(&self, i: usize) -> Result<&[Value<'g>]> {
        match self.item(i)? {
            Item::Sequence(vs) => Ok(vs),
            other => Err(self.fail(format!("input {i} is {}, not a sequence", other.kind()))),
        }
    }

    /// Input `i`, a tensor (`None` when omitted).
    fn tensor(&self, i: usize) -> Result<Option<&Value<'g>>> {
        match self.opt(i) {
            None => Ok(None),
            Some(Item::Tensor(v)) => Ok(Some(v)),
            Some(other) => Err(self.fail(format!("input {i} is {}, not a tensor", other.kind()))),
        }
    }

    /// Input `i` as integers known at import time (`None` when omitted).
    fn const_ints(&self, i: usize) -> Result<Option<Vec<i64>>> {
        let Some(v) = self.tensor(i)? else {
            return Ok(None);
        };
        match &v.constant {
            Some(a) => ints_of(a).map(Some).map_err(|e| self.fail(e)),
            None => Err(self.fail(super::ConvertError::NeedsValue(self.proto.input[i].clone()))),
        }
    }

    /// Input `i`, a position in a sequence of `len` elements known at
    /// import time, made non-negative (`None` when omitted). Positions
    /// range over `-len..len`, or `-len..=len` with `end` (an insertion).
    fn position(&self, i: usize, len: usize, end: bool) -> Result<Option<usize>> {
        let Some(p) = self.const_ints(i)? else {
            return Ok(None);
        };
        let [p] = p[..] else {
            return Err(self.fail(format!("the position holds {} values", p.len())));
        };
        let n = len as i64;
        let hi = if end { n } else { n - 1 };
        if p < -n || p > hi {
            return Err(self.fail(format!(
                "position {p} is out of range for a sequence of {len}"
            )));
        }
        Ok(Some(if p < 0 { p + n } else { p } as usize))
    }

    /// Integer attribute `name`, or `default`.
    fn int(&self, name: &str, default: i64) -> i64 {
        self.proto
            .attribute
            .iter()
            .find(|a| a.name == name)
            .map_or(default, |a| a.i)
    }

    /// A constant scalar of `dtype`.
    fn scalar(&self, v: f64, dtype: DType) -> Result<Item<'g>> {
        let a = Array::new(Vec::new(), Data::filled(dtype, 1, v))
            .ok_or_else(|| self.fail("a scalar"))?;
        let t = self.g.constant(a).map_err(|e| self.fail(e))?;
        Ok(Item::Tensor(Value::of(t)))
    }
}

fn sequence_construct<'g>(n: &SeqNode<'_, 'g>) -> Result<Vec<Item<'g>>> {
    let elems = (0..n.inputs.len())
        .map(|i| {
            n.tensor(i)?
                .cloned()
                .ok_or_else(|| n.fail(format!("input {i} is required")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(vec![Item::Sequence(elems)])
}

/// `SequenceInsert(seq, tensor, position = len)`.
fn sequence_insert<'g>(n: &SeqNode<'_, 'g>) -> Result<Vec<Item<'g>>> {
    let mut seq = n.sequence(0)?.to_vec();
    let t = n
        .tensor(1)?
        .cloned()
        .ok_or_else(|| n.fail("input 1 is required"))?;
    let at = n.position(2, seq.len(), true)?.unwrap_or(seq.len());
    seq.insert(at, t);
    Ok(vec![Item::Sequence(seq)])
}

/// `SequenceErase(seq, position = -1)`.
fn sequence_erase<'g>(n: &SeqNode<'_, 'g>) -> Result<Vec<Item<'g>>> {
    let mut seq = n.sequence(0)?.to_vec();
    if seq.is_empty() {
        return Err(n.fail("erasing from an empty sequence"));
    }
    let at = n.position(1, seq.len(), false)?.unwrap_or(seq.len() - 1);
    seq.remove(at);
    Ok(vec![Item::Sequence(seq)])
}

fn sequence_at<'g>(n: &SeqNode<'_, 'g>) -> Result<Vec<Item<'g>>> {
    let seq = n.sequence(0)?;
    let at = n
        .position(1, seq.len(), false)?
        .ok_or_else(|| n.fail("input 1 (the position) is required"))?;
    Ok(vec![Item::Tensor(seq[at].clone())])
}

fn sequence_length<'g>(n: &SeqNode<'_, 'g>) -> Result<Vec<Item<'g>>> {
    let len = n.sequence(0)?.len();
    Ok(vec![n.scalar(len as f64, DType::I64)?])
}

/// `ConcatFromSequence(seq; axis, new_axis)`: the elements concatenated
/// along `axis`, or stacked along a new `axis` with `new_axis = 1`.
fn concat_from_sequence<'g>(n: &SeqNode<'_, 'g>) -> Result<Vec<Item<'g>>> {
    let seq = n.sequence(0)?;
    let first = seq
        .first()
        .ok_or_else(|| n.fail("concatenating an empty sequence (its element shape is unknown)"))?;
    let new_axis = n.int("new_axis", 0) != 0;
    let rank = first.t.rank() + usize::from(new_axis);
    let a = n
        .proto
        .attribute
        .iter()
        .find(|a| a.name == "axis")
        .map(|a| a.i)
        .ok_or_else(|| n.fail("the 'axis' attribute is required"))?;
    let a = axis(a, rank).map_err(|e| n.fail(e))? as i64;
    let out = build_or_fold(n.g, seq, &|b, ts| {
        let parts = if new_axis {
            ts.iter()
                .map(|t| t.unsqueeze(a))
                .collect::<kiln_graph::Result<Vec<_>>>()?
        } else {
            ts.to_vec()
        };
        Ok(vec![b.concat(&parts, a)?])
    })
    .map_err(|e| n.fail(e))?;
    Ok(out.into_iter().map(Item::Tensor).collect())
}

/// `SplitToSequence(input, split?; axis = 0, keepdims = 1)`: without
/// `split`, pieces of size 1 (squeezed unless `keepdims`); a scalar
/// `split`, pieces of that size (the last one smaller); a 1-D `split`,
/// pieces of those sizes.
fn split_to_sequence<'g>(n: &SeqNode<'_, 'g>) -> Result<Vec<Item<'g>>> {
    let x = n
        .tensor(0)?
        .cloned()
        .ok_or_else(|| n.fail("input 0 is required"))?;
    let rank = x.t.rank();
    let a = axis(n.int("axis", 0), rank).map_err(|e| n.fail(e))?;
    let split = n.const_ints(1)?;
    let scalar_split = n.tensor(1)?.is_some_and(|v| v.t.rank() == 0);
    let Some(len) = x.t.shape().0[a].fixed() else {
        // kiln slices symbolic dims only whole: the input's shape must be
        // known.
        return Err(n.fail(super::ConvertError::NeedsValue(n.proto.input[0].clone())));
    };
    let (sizes, squeeze) = match split {
        None => (vec![1; len], n.int("keepdims", 1) == 0),
        Some(s) if scalar_split => {
            let k = s[0];
            if k <= 0 {
                return Err(n.fail(format!("split size {k}")));
            }
            let k = k as usize;
            let mut sizes = vec![k; len / k];
            if len % k != 0 {
                sizes.push(len % k);
            }
            (sizes, false)
        }
        Some(s) => {
            if s.iter().any(|&v| v < 0) || s.iter().sum::<i64>() != len as i64 {
                return Err(n.fail(format!(
                    "split {s:?} does not add up to the axis' size {len}"
                )));
            }
            (s.iter().map(|&v| v as usize).collect(), false)
        }
    };
    let out = build_or_fold(n.g, std::slice::from_ref(&x), &|_, ts| {
        let mut start = 0i64;
        let mut parts = Vec::with_capacity(sizes.len());
        for &s in &sizes {
            let end = start + s as i64;
            let mut p = ts[0].slice_axis(a as i64, start, end, 1)?;
            if squeeze {
                p = p.squeeze(a as i64)?;
            }
            parts.push(p);
            start = end;
        }
        Ok(parts)
    })
    .map_err(|e| n.fail(e))?;
    Ok(vec![Item::Sequence(out)])
}

/// `SequenceMap(seq, others...; body)`: the body once per element of the
/// sequences (sequence inputs give their element, tensor inputs
/// themselves); each body output gathered into a sequence.
fn sequence_map<'g>(n: &SeqNode<'_, 'g>) -> Result<Vec<Item<'g>>> {
    let len = n.sequence(0)?.len();
    for i in 1..n.inputs.len() {
        if let Some(Item::Sequence(vs)) = n.opt(i) {
            if vs.len() != len {
                return Err(n.fail(format!(
                    "input {i} is a sequence of {}, input 0 of {len}",
                    vs.len()
                )));
            }
        }
    }
    let mut outs: Vec<Vec<Value<'g>>> = vec![Vec::new(); n.proto.output.len()];
    for e in 0..len {
        let ins = (0..n.inputs.len())
            .map(|i| match n.item(i)? {
                Item::Sequence(vs) => Ok(Item::Tensor(vs[e].clone())),
                other => Ok(other.clone()),
            })
            .collect::<Result<Vec<_>>>()?;
        let res = call_subgraph(n.g, n.proto, "body", n.opset, n.scope, &ins)?;
        if res.len() != outs.len() {
            return Err(n.fail(format!(
                "the body gives {} outputs, the node has {}",
                res.len(),
                outs.len()
            )));
        }
        for (k, r) in res.into_iter().enumerate() {
            match r {
                Item::Tensor(v) => outs[k].push(v),
                other => return Err(n.fail(format!("the body's output {k} is {}", other.kind()))),
            }
        }
    }
    Ok(outs.into_iter().map(Item::Sequence).collect())
}

/// `Optional(input?)`: holding the input, or none without it.
fn optional<'g>(n: &SeqNode<'_, 'g>) -> Result<Vec<Item<'g>>> {
    Ok(vec![Item::Optional(n.opt(0).cloned().map(Box::new))])
}

/// `OptionalHasElement(input?)`: whether an optional holds a value (a
/// tensor or sequence input does, from opset 18; an omitted one does not).
fn optional_has_element<'g>(n: &SeqNode<'_, 'g>) -> Result<Vec<Item<'g>>> {
    let has = match n.opt(0) {
        None | Some(Item::Optional(None)) => false,
        Some(_) => true,
    };
    Ok(vec![n.scalar(f64::from(u8::from(has)), DType::Bool)?])
}

/// `OptionalGetElement(input)`: an optional's value (a tensor or sequence
/// input is itself, from opset 18).
fn optional_get_element<'g>(n: &SeqNode<'_, 'g>) -> Result<Vec<Item<'g>>> {
    match n.item(0)? {
        Item::Optional(None) => Err(n.fail("the optional holds no value")),
        Item::Optional(Some(v)) => Ok(vec![(**v).clone()]),
        other => Ok(vec![other.clone()]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_agree() {
        let a: Vec<&str> = CONVERTERS.iter().map(|(n, _)| *n).collect();
        let b: Vec<&str> = OPS.iter().map(|(n, _)| *n).collect();
        assert_eq!(a, b);
    }
}
