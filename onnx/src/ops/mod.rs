//! ONNX ops as compositions of kiln primitives, one family per file. Each
//! family lists its converters in `OPS`; a converter gets the node (its
//! attributes, its inputs with their values where known at import time,
//! its opset) and returns one tensor per output, or a reason it cannot.
//!
//! Converters are generic over the builder's lifetime: the importer also
//! runs them on a scratch builder to evaluate nodes whose inputs are all
//! constants.
//!
//! Sequence and optional ops (`sequence.rs`) take and give values other
//! than tensors: they have converters of their own (`sequence::find`),
//! which the importer calls; their entries here only list them.

use std::sync::Arc;

use kiln_graph::{Array, DType, GraphBuilder, Tensor};

use crate::proto::{AttributeProto, NodeProto};

mod attention;
mod conv;
mod deform;
mod elementwise;
mod error;
pub(crate) mod flex;
mod index;
mod linalg;
mod linear_attention;
mod loss;
mod matmul;
mod minifloat;
mod ml;
mod norm;
mod pad;
mod pool;
mod quant;
mod random;
mod rearrange;
mod reduce;
mod resize;
mod rnn;
mod sampling;
pub(crate) mod sequence;
mod shape;
mod spectral;
mod tables;
mod text;
pub(crate) mod training;
mod value_shaped;

pub(crate) use error::{ConvertError, R};

/// Converts one node.
pub(crate) type Converter = for<'a, 'g> fn(&Node<'a, 'g>) -> R<Vec<Tensor<'g>>>;

/// Control flow: `If`, `Loop` and `Scan` convert their subgraphs recursively, so
/// the importer (`import.rs`) handles them itself.
const CONTROL: &[(&str, Converter)] = &[
    ("If", |_| {
        Err(ConvertError::Invalid("handled by the importer".into()))
    }),
    ("Loop", |_| {
        Err(ConvertError::Invalid("handled by the importer".into()))
    }),
    ("Scan", |_| {
        Err(ConvertError::Invalid("handled by the importer".into()))
    }),
];

/// Every family's converters.
const FAMILIES: [&[(&str, Converter)]; 27] = [
    elementwise::OPS,
    quant::OPS,
    linear_attention::OPS,
    text::OPS,
    rnn::OPS,
    sampling::OPS,
    linalg::OPS,
    rearrange::OPS,
    spectral::OPS,
    random::OPS,
    value_shaped::OPS,
    resize::OPS,
    attention::OPS,
    loss::OPS,
    conv::OPS,
    pool::OPS,
    matmul::OPS,
    norm::OPS,
    shape::OPS,
    pad::OPS,
    index::OPS,
    reduce::OPS,
    sequence::OPS,
    training::OPS,
    ml::OPS,
    deform::OPS,
    CONTROL,
];

/// Every supported op type, with its converter.
pub(crate) static TABLE: std::sync::LazyLock<Vec<(&'static str, Converter)>> =
    std::sync::LazyLock::new(|| FAMILIES.iter().flat_map(|f| f.iter().copied()).collect());

/// The converter of `op_type` (default domain) or `domain.op_type` (others).
pub(crate) fn find(op_type: &str) -> Option<Converter> {
    TABLE.iter().find(|(n, _)| *n == op_type).map(|(_, c)| *c)
}

/// Whether kiln converts any op of the non-default `domain`.
pub(crate) fn knows_domain(domain: &str) -> bool {
    TABLE
        .iter()
        .any(|(n, _)| n.strip_prefix(domain).is_some_and(|r| r.starts_with('.')))
}

/// An input of a node: its tensor, and its value where known.
#[derive(Clone)]
pub(crate) struct Input<'g> {
    pub t: Tensor<'g>,
    pub value: Option<Arc<Array>>,
}

/// A node being converted.
pub(crate) struct Node<'a, 'g> {
    /// The builder to add ops to.
    pub g: &'g GraphBuilder,
    pub proto: &'a NodeProto,
    /// The opset of the default domain.
    pub opset: i64,
    /// One per ONNX input; `None` for an omitted optional input.
    pub inputs: Vec<Option<Input<'g>>>,
    /// The ONNX element type of each input where the model declares it
    /// (graph inputs, initializers, `value_info`) or a conversion made it
    /// (casts and quantization to the sub-byte types): what tells an int4
    /// value (held in i8) from an int8 one.
    pub declared: Vec<Option<i32>>,
}

/// The most values a converter computes into a table of its own (a DFT or
/// resize matrix, a tree ensemble's path tables, padding indices): 2^26
/// (512 MiB of f64; a DFT of length 8192). Such tables are part of the conversion (they cannot wait
/// for run time), so a larger one, sized by a file's dims or attributes, is
/// the node's error instead of an allocation that could abort.
pub(crate) const MAX_TABLE_VALUES: usize = 1 << 26;

/// The number of values of a table `what` of `dims`, where within
/// [`MAX_TABLE_VALUES`].
pub(crate) fn table_len(what: &str, dims: &[usize]) -> R<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_TABLE_VALUES)
        .ok_or_else(|| {
            ConvertError::Invalid(format!(
                "{what} of {dims:?} would hold more than {MAX_TABLE_VALUES} values \
                 (kiln's limit on a table computed while importing)"
            ))
        })
}

impl<'a, 'g> Node<'a, 'g> {
    pub(crate) fn new(
        g: &'g GraphBuilder,
        proto: &'a NodeProto,
        opset: i64,
        inputs: Vec<Option<Input<'g>>>,
    ) -> Node<'a, 'g> {
        Node {
            g,
            proto,
            opset,
            inputs,
            declared: Vec::new(),
        }
    }

    /// The declared ONNX element type of input `i`, where known.
    pub fn declared(&self, i: usize) -> Option<i32> {
        self.declared.get(i).copied().flatten()
    }

    /// The sub-byte type (bits, signed) input `i` holds, where it is one.
    pub fn sub_byte_input(&self, i: usize) -> Option<(u32, bool)> {
        self.declared(i).and_then(crate::tensor::sub_byte)
    }

    /// The op type.
    pub fn op(&self) -> &str {
        &self.proto.op_type
    }

    /// Number of outputs the node declares.
    pub fn outputs(&self) -> usize {
        self.proto.output.len()
    }

    /// Whether output `i` is used (declared and named).
    pub fn wants_output(&self, i: usize) -> bool {
        self.proto.output.get(i).is_some_and(|o| !o.is_empty())
    }

    /// Required input `i`.
    pub fn input(&self, i: usize) -> R<Tensor<'g>> {
        self.inputs
            .get(i)
            .and_then(|v| v.as_ref())
            .map(|v| v.t)
            .ok_or_else(|| ConvertError::Invalid(format!("input {i} is required")))
    }

    /// Optional input `i`.
    pub fn opt(&self, i: usize) -> Option<Tensor<'g>> {
        self.inputs.get(i).and_then(|v| v.as_ref()).map(|v| v.t)
    }

    /// Every present input, in order.
    pub fn all_inputs(&self) -> Vec<Tensor<'g>> {
        self.inputs.iter().flatten().map(|v| v.t).collect()
    }

    /// The value of input `i` where it is known at import time (`None`:
    /// omitted; `Err`: present but computed at run time).
    pub fn const_input(&self, i: usize) -> R<Option<Arc<Array>>> {
        match self.inputs.get(i).and_then(|v| v.as_ref()) {
            None => Ok(None),
            Some(v) => v
                .value
                .clone()
                .map(Some)
                .ok_or_else(|| ConvertError::NeedsValue(self.proto.input[i].clone())),
        }
    }

    /// Input `i` as integers known at import time (`None` when omitted).
    pub fn const_ints(&self, i: usize) -> R<Option<Vec<i64>>> {
        Ok(match self.const_input(i)? {
            None => None,
            Some(a) => Some(ints_of(&a)?),
        })
    }

    /// Input `i` as integers known at import time, as expressions over the
    /// symbolic dims where it is a shape value (`Shape` and what is
    /// computed from it); `None` when omitted.
    pub fn sym_ints(&self, i: usize) -> R<Option<Vec<kiln_graph::DimExpr>>> {
        match self.inputs.get(i).and_then(|v| v.as_ref()) {
            None => Ok(None),
            Some(v) => {
                if let Some(a) = &v.value {
                    return Ok(Some(
                        ints_of(a)?
                            .into_iter()
                            .map(kiln_graph::DimExpr::val)
                            .collect(),
                    ));
                }
                v.t.sym_values()
                    .map(Some)
                    .ok_or_else(|| ConvertError::NeedsValue(self.proto.input[i].clone()))
            }
        }
    }

    /// Input `i` as one float known at import time (`None` when omitted).
    pub fn const_scalar(&self, i: usize) -> R<Option<f64>> {
        Ok(match self.const_input(i)? {
            None => None,
            Some(a) => {
                let v = a.to_f64_vec();
                if v.len() != 1 {
                    return Err(format!("input {i} must hold one value, has {}", v.len()).into());
                }
                Some(v[0])
            }
        })
    }

    /// Attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&'a AttributeProto> {
        self.proto.attribute.iter().find(|a| a.name == name)
    }

    /// Integer attribute `name`, or `default`.
    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map_or(default, |a| a.i)
    }

    /// Float attribute `name`, or `default`.
    pub fn float(&self, name: &str, default: f32) -> f32 {
        self.attr(name).map_or(default, |a| a.f)
    }

    /// Integer list attribute `name`.
    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }

    /// Float list attribute `name`.
    pub fn floats(&self, name: &str) -> Option<Vec<f32>> {
        self.attr(name).map(|a| a.floats.clone())
    }

    /// String attribute `name`.
    pub fn string(&self, name: &str) -> Option<String> {
        self.attr(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }

    /// Tensor attribute `name`.
    pub fn tensor(&self, name: &str) -> R<Option<Array>> {
        match self.attr(name).and_then(|a| a.t.as_ref()) {
            None => Ok(None),
            Some(t) => Ok(Some(crate::tensor::to_array(t).map_err(|e| {
                ConvertError::Invalid(format!("attribute '{name}': {e}"))
            })?)),
        }
    }

    /// An error for an attribute value kiln does not support.
    pub fn unsupported<T>(&self, what: impl std::fmt::Display) -> R<T> {
        Err(ConvertError::Unsupported(what.to_string()))
    }

    /// A constant tensor.
    pub fn constant(&self, a: Array) -> R<Tensor<'g>> {
        Ok(self.g.constant(a)?)
    }

    /// A scalar constant of `dtype`.
    pub fn scalar(&self, v: f64, dtype: DType) -> R<Tensor<'g>> {
        Ok(self.g.scalar(v, dtype)?)
    }
}

/// An integer tensor's values.
pub(crate) fn ints_of(a: &Array) -> R<Vec<i64>> {
    if let Some(v) = a.as_slice::<i64>() {
        return Ok(v.to_vec());
    }
    if let Some(v) = a.as_slice::<i32>() {
        return Ok(v.iter().map(|&x| x as i64).collect());
    }
    Err(format!("expected an integer tensor, got {}", a.dtype()).into())
}

/// `axis` (possibly negative) of a rank-`rank` tensor.
pub(crate) fn axis(axis: i64, rank: usize) -> R<usize> {
    let r = rank as i64;
    if axis < -r || axis >= r.max(1) {
        return Err(format!("axis {axis} is out of range for rank {rank}").into());
    }
    Ok(if axis < 0 { axis + r } else { axis } as usize)
}

/// The fixed dims of `t`, or why they are not all fixed.
pub(crate) fn fixed_shape(t: Tensor<'_>) -> R<Vec<usize>> {
    t.shape()
        .0
        .iter()
        .map(|d| {
            d.fixed().ok_or_else(|| {
                ConvertError::Invalid(format!("needs fixed dims, got {}", t.shape()))
            })
        })
        .collect()
}

/// Converting and evaluating one node, for the converters' unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use std::collections::HashMap;

    use kiln_graph::{Array, GraphBuilder};

    use super::{find, Input, Node};
    use crate::proto::{AttributeProto, NodeProto};

    /// Converts a node of op `key` (`op_type`, or `domain.op_type`) over
    /// constant `inputs` (`None`: omitted) and evaluates its outputs on the
    /// reference interpreter; `Err` is the converter's reason.
    pub(crate) fn run_node(
        key: &str,
        opset: i64,
        attrs: Vec<AttributeProto>,
        inputs: Vec<Option<Array>>,
    ) -> Result<Vec<Array>, String> {
        let g = GraphBuilder::new();
        let (domain, op) = key.rsplit_once('.').unwrap_or(("", key));
        let proto = NodeProto {
            input: (0..inputs.len()).map(|i| format!("in{i}")).collect(),
            output: vec!["y".into()],
            op_type: op.into(),
            domain: domain.into(),
            attribute: attrs,
            ..Default::default()
        };
        let ins = inputs
            .into_iter()
            .map(|a| {
                a.map(|a| {
                    let t = g.constant(a).unwrap();
                    Input {
                        t,
                        value: t.constant_value(),
                    }
                })
            })
            .collect();
        let node = Node::new(&g, &proto, opset, ins);
        let outs = find(key).ok_or_else(|| format!("no converter for {key}"))?(&node)
            .map_err(|e| e.to_string())?;
        let graph = g.graph();
        let ids: Vec<_> = outs.iter().map(|t| t.id()).collect();
        let run = kiln_graph::interp::run(
            &graph,
            &kiln_graph::interp::RunInputs {
                feeds: &HashMap::new(),
                variables: &HashMap::new(),
                bindings: &kiln_graph::Bindings::new(),
            },
            &ids,
        )
        .map_err(|e| e.to_string())?;
        Ok(run.fetched)
    }
}
