//! Small builders of ONNX protobuf messages (`kiln_onnx::proto`) for tests
//! that make their models in Rust: value infos, nodes, attributes and 1-D
//! initializers, so each test file states only its model.

use kiln_onnx::proto::{
    self, attribute_proto::AttributeType, tensor_proto::DataType,
    tensor_shape_proto::dimension::Value as OnnxDim,
};

/// A tensor value info of element type `elem`, with fixed `dims` (or no
/// shape when `None`).
pub fn value_info(name: &str, elem: DataType, dims: Option<&[i64]>) -> proto::ValueInfoProto {
    let shape = dims.map(|d| proto::TensorShapeProto {
        dim: d
            .iter()
            .map(|&n| proto::tensor_shape_proto::Dimension {
                value: Some(OnnxDim::DimValue(n)),
                ..Default::default()
            })
            .collect(),
    });
    proto::ValueInfoProto {
        name: name.into(),
        r#type: Some(proto::TypeProto {
            value: Some(proto::type_proto::Value::TensorType(
                proto::type_proto::Tensor {
                    elem_type: elem as i32,
                    shape,
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A node of `op` (default domain) from `inputs` to `outputs`.
pub fn node(
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<proto::AttributeProto>,
) -> proto::NodeProto {
    proto::NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

/// An integer attribute.
pub fn attr_int(name: &str, v: i64) -> proto::AttributeProto {
    proto::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

/// An integer-list attribute.
pub fn attr_ints(name: &str, v: &[i64]) -> proto::AttributeProto {
    proto::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// A float attribute.
pub fn attr_float(name: &str, v: f32) -> proto::AttributeProto {
    proto::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f: v,
        ..Default::default()
    }
}

/// A string attribute.
pub fn attr_str(name: &str, v: &str) -> proto::AttributeProto {
    proto::AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// A 1-D f32 initializer.
pub fn tensor_f32(name: &str, v: &[f32]) -> proto::TensorProto {
    proto::TensorProto {
        name: name.into(),
        data_type: DataType::Float as i32,
        dims: vec![v.len() as i64],
        float_data: v.to_vec(),
        ..Default::default()
    }
}

/// A 1-D i64 initializer.
pub fn tensor_i64(name: &str, v: &[i64]) -> proto::TensorProto {
    proto::TensorProto {
        name: name.into(),
        data_type: DataType::Int64 as i32,
        dims: vec![v.len() as i64],
        int64_data: v.to_vec(),
        ..Default::default()
    }
}
