//! Reading serialized values: `TensorProto` files (the `input_N.pb` /
//! `output_N.pb` files of the ONNX backend test data) and sequence and
//! optional values (`SequenceProto`, `OptionalProto` of
//! `onnx-data.proto`) as [`DataValue`]s ([`read_value_file`] reads a file
//! by its declared type).

use std::path::Path;

use kiln_graph::Array;
use prost::Message;

use crate::proto::{OptionalProto, SequenceProto, TensorProto, TypeProto};
use crate::tensor::to_array;

/// Reads a file holding one serialized `TensorProto` (such as the ONNX
/// backend tests' `test_data_set_0/input_0.pb`); returns the tensor's name
/// and contents (external data relative to the file's folder). Errors name
/// the file.
pub fn read_tensor_file(path: &Path) -> Result<(String, Array), String> {
    let _external = crate::external::Scope::enter(path.parent());
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let t = TensorProto::decode(bytes.as_slice())
        .map_err(|e| format!("{}: not a serialized ONNX TensorProto: {e}", path.display()))?;
    let a = to_array(&t).map_err(|e| {
        // SequenceProto, OptionalProto and MapProto (onnx-data.proto) are
        // wire-compatible enough to decode as a TensorProto; their nested
        // values land in `segment` and their element type in `data_type`.
        let hint = if t.segment.is_some() || t.data_type == 0 {
            " (the file may hold a SequenceProto, OptionalProto or MapProto rather than a TensorProto)"
        } else {
            ""
        };
        format!("{}: {e}{hint}", path.display())
    })?;
    Ok((t.name, a))
}

/// A value of a non-tensor ONNX type as `onnx-data.proto` stores it (the
/// backend test data's sequence and optional inputs and outputs): a
/// tensor, a sequence of values, or an optional (none, or a value). Maps
/// and sparse tensors are refused.
#[derive(Clone, Debug, PartialEq)]
pub enum DataValue {
    /// A tensor.
    Tensor(Array),
    /// A sequence (its elements, in order).
    Sequence(Vec<DataValue>),
    /// An optional: `None` when it holds no value.
    Optional(Option<Box<DataValue>>),
}

/// The elements of a `SequenceProto`.
pub fn sequence_values(s: &SequenceProto) -> Result<Vec<DataValue>, String> {
    use crate::proto::sequence_proto::DataType as K;
    let label = || {
        if s.name.is_empty() {
            "unnamed sequence".to_string()
        } else {
            format!("sequence '{}'", s.name)
        }
    };
    match K::try_from(s.elem_type) {
        Ok(K::Tensor) => s
            .tensor_values
            .iter()
            .map(|t| to_array(t).map(DataValue::Tensor))
            .collect(),
        Ok(K::Sequence) => s
            .sequence_values
            .iter()
            .map(|q| sequence_values(q).map(DataValue::Sequence))
            .collect(),
        Ok(K::Optional) => s
            .optional_values
            .iter()
            .map(|o| optional_value(o).map(|v| DataValue::Optional(v.map(Box::new))))
            .collect(),
        // An empty sequence may leave its element kind unset.
        Ok(K::Undefined)
            if s.tensor_values.is_empty()
                && s.sequence_values.is_empty()
                && s.optional_values.is_empty()
                && s.map_values.is_empty()
                && s.sparse_tensor_values.is_empty() =>
        {
            Ok(Vec::new())
        }
        Ok(k) => Err(format!(
            "{}: sequences of {} are not supported",
            label(),
            k.as_str_name()
        )),
        Err(_) => Err(format!("{}: unknown elem_type {}", label(), s.elem_type)),
    }
}

/// The value of an `OptionalProto` (`None`: it holds none).
pub fn optional_value(o: &OptionalProto) -> Result<Option<DataValue>, String> {
    use crate::proto::optional_proto::DataType as K;
    let label = || {
        if o.name.is_empty() {
            "unnamed optional".to_string()
        } else {
            format!("optional '{}'", o.name)
        }
    };
    match K::try_from(o.elem_type) {
        Ok(K::Undefined) => Ok(None),
        Ok(K::Tensor) => match &o.tensor_value {
            Some(t) => to_array(t).map(|a| Some(DataValue::Tensor(a))),
            None => Ok(None),
        },
        Ok(K::Sequence) => match &o.sequence_value {
            Some(q) => sequence_values(q).map(|v| Some(DataValue::Sequence(v))),
            None => Ok(None),
        },
        Ok(K::Optional) => match &o.optional_value {
            Some(q) => optional_value(q).map(|v| Some(DataValue::Optional(v.map(Box::new)))),
            None => Ok(None),
        },
        Ok(k) => Err(format!(
            "{}: optionals of {} are not supported",
            label(),
            k.as_str_name()
        )),
        Err(_) => Err(format!("{}: unknown elem_type {}", label(), o.elem_type)),
    }
}

/// Reads a file holding one serialized value of the ONNX type `ty` (a
/// graph input's or output's declared type): a `TensorProto` for a tensor
/// type, a `SequenceProto` for a sequence type, an `OptionalProto` for an
/// optional type. Returns the value's name and the value. Errors name the
/// file.
pub fn read_value_file(path: &Path, ty: &TypeProto) -> Result<(String, DataValue), String> {
    use crate::proto::type_proto::Value as T;
    let _external = crate::external::Scope::enter(path.parent());
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let at = |e: String| format!("{}: {e}", path.display());
    match &ty.value {
        Some(T::TensorType(_)) => {
            read_tensor_file(path).map(|(name, a)| (name, DataValue::Tensor(a)))
        }
        Some(T::SequenceType(_)) => {
            let s = SequenceProto::decode(bytes.as_slice())
                .map_err(|e| at(format!("not a serialized ONNX SequenceProto: {e}")))?;
            let v = sequence_values(&s).map_err(at)?;
            Ok((s.name, DataValue::Sequence(v)))
        }
        Some(T::OptionalType(_)) => {
            let o = OptionalProto::decode(bytes.as_slice())
                .map_err(|e| at(format!("not a serialized ONNX OptionalProto: {e}")))?;
            let v = optional_value(&o).map_err(at)?;
            Ok((o.name, DataValue::Optional(v.map(Box::new))))
        }
        Some(T::MapType(_)) => Err(at("map values are not supported".into())),
        Some(T::SparseTensorType(_)) => Err(at("sparse tensors are not supported".into())),
        Some(T::OpaqueType(_)) => Err(at("opaque values are not supported".into())),
        None => Err(at("the value has no declared type".into())),
    }
}
