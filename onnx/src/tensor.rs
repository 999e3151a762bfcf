//! Conversion between ONNX [`TensorProto`]s and kiln [`Array`]s, and reading
//! serialized `TensorProto` files (the `input_N.pb` / `output_N.pb` files of
//! the ONNX backend test data); sequence and optional values
//! (`SequenceProto`, `OptionalProto` of `onnx-data.proto`) as
//! [`DataValue`]s ([`read_value_file`] reads a file by its declared type).
//!
//! ONNX's FLOAT, DOUBLE, FLOAT16, BFLOAT16, INT8/16/32/64, UINT8/16/32/64
//! and BOOL map onto kiln's dtypes of the same names; INT4/INT2 and
//! UINT4/UINT2 are unpacked into i8 and u8 ([`sub_byte`]); every other
//! ONNX element type (strings, complex, float8, float4) is refused with a
//! message naming it. Data is read from `raw_data`
//! (little-endian, bools one byte each) when it is non-empty, and otherwise
//! from the typed field ONNX assigns to the element type: `float_data`,
//! `double_data`, `int64_data`, `uint64_data` (UINT32, UINT64) or
//! `int32_data` (INT32, the narrower integers, BOOL, and FLOAT16 / BFLOAT16
//! as 16-bit patterns). External data (what `raw_data` would hold, in
//! another file) is read, memory-mapped, while a model is imported from a
//! file: relative to the model's folder, which the file must not leave
//! (`external.rs`); importing from bytes, it is an error. Segmented
//! tensors are refused. The element count (and an external tensor's byte
//! count) is checked against `dims` before anything is allocated, so a
//! corrupt size cannot cause a huge allocation.

use kiln_graph::array::checked_product;
use kiln_graph::{Array, DType, Data};

use crate::proto::tensor_proto::{DataLocation, DataType};
use crate::proto::TensorProto;

mod packed;
#[cfg(test)]
mod tests;
mod values;

use packed::{decode_minifloat, unpack_sub_byte};
pub use packed::{minifloat, sub_byte, MiniFloat, MiniKind};
pub use values::{optional_value, read_tensor_file, read_value_file, sequence_values, DataValue};

/// The kiln dtype of an ONNX element type (`TensorProto.data_type`,
/// `TypeProto.Tensor.elem_type`); an error naming the type when kiln has no
/// such dtype.
pub fn dtype_of(onnx_type: i32) -> Result<DType, String> {
    if let Some((_, signed)) = sub_byte(onnx_type) {
        return Ok(if signed { DType::I8 } else { DType::U8 });
    }
    if minifloat(onnx_type).is_some() {
        return Ok(DType::F16);
    }
    match DataType::try_from(onnx_type) {
        Ok(DataType::Float) => Ok(DType::F32),
        Ok(DataType::Double) => Ok(DType::F64),
        Ok(DataType::Int32) => Ok(DType::I32),
        Ok(DataType::Int64) => Ok(DType::I64),
        Ok(DataType::Bool) => Ok(DType::Bool),
        Ok(DataType::Float16) => Ok(DType::F16),
        Ok(DataType::Bfloat16) => Ok(DType::BF16),
        Ok(DataType::Int8) => Ok(DType::I8),
        Ok(DataType::Int16) => Ok(DType::I16),
        Ok(DataType::Uint8) => Ok(DType::U8),
        Ok(DataType::Uint16) => Ok(DType::U16),
        Ok(DataType::Uint32) => Ok(DType::U32),
        Ok(DataType::Uint64) => Ok(DType::U64),
        Ok(DataType::Undefined) => Err("the element type is UNDEFINED (0)".to_string()),
        _ => match onnx_type_name(onnx_type) {
            "unknown" => Err(format!("unknown ONNX element type {onnx_type}")),
            name => Err(format!(
                "{name} tensors are not supported (kiln has f32, f64, f16, bf16, i8, i16, i32, i64, u8, u16, u32, u64, bool)"
            )),
        },
    }
}

/// The ONNX element type (a [`DataType`] value) of a kiln dtype.
pub fn onnx_type(dtype: DType) -> i32 {
    let t = match dtype {
        DType::F32 => DataType::Float,
        DType::F64 => DataType::Double,
        DType::I32 => DataType::Int32,
        DType::I64 => DataType::Int64,
        DType::Bool => DataType::Bool,
        DType::F16 => DataType::Float16,
        DType::BF16 => DataType::Bfloat16,
        DType::I8 => DataType::Int8,
        DType::I16 => DataType::Int16,
        DType::U8 => DataType::Uint8,
        DType::U16 => DataType::Uint16,
        DType::U32 => DataType::Uint32,
        DType::U64 => DataType::Uint64,
    };
    t as i32
}

/// The lowercase name of an ONNX element type (`"float"`, `"uint8"`,
/// `"bfloat16"`, ...), `"unknown"` for a value ONNX does not define.
pub fn onnx_type_name(t: i32) -> &'static str {
    match t {
        0 => "undefined",
        1 => "float",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        8 => "string",
        9 => "bool",
        10 => "float16",
        11 => "double",
        12 => "uint32",
        13 => "uint64",
        14 => "complex64",
        15 => "complex128",
        16 => "bfloat16",
        17 => "float8e4m3fn",
        18 => "float8e4m3fnuz",
        19 => "float8e5m2",
        20 => "float8e5m2fnuz",
        21 => "uint4",
        22 => "int4",
        23 => "float4e2m1",
        24 => "float8e8m0",
        25 => "uint2",
        26 => "int2",
        // Added after ONNX 1.22 (IR version 14).
        27 => "float6e2m3",
        28 => "float6e3m2",
        _ => "unknown",
    }
}

/// How messages name a tensor.
fn label(t: &TensorProto) -> String {
    if t.name.is_empty() {
        "unnamed tensor".to_string()
    } else {
        format!("tensor {:?}", t.name)
    }
}

/// The shape of `t` and its element count, checked: no negative dims, no
/// overflow.
fn shape_of(t: &TensorProto) -> Result<(Vec<usize>, usize), String> {
    let shape = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("dims {:?} has a negative dim", t.dims)))
        .collect::<Result<Vec<usize>, String>>()?;
    let n = checked_product(&shape)
        .ok_or_else(|| format!("dims {:?} have more elements than fit in memory", t.dims))?;
    Ok((shape, n))
}

/// Checks that a typed field holds exactly `n` elements.
fn check_len(field: &str, len: usize, n: usize, t: &TensorProto) -> Result<(), String> {
    if len == n {
        return Ok(());
    }
    if len == 0 {
        Err(format!(
            "dims {:?} need {n} elements but the tensor has no data (raw_data and {field} are empty)",
            t.dims
        ))
    } else {
        Err(format!(
            "dims {:?} need {n} elements but {field} has {len}",
            t.dims
        ))
    }
}

/// 16-bit float patterns from `int32_data` entries (which hold them
/// zero-extended; sign-extended values are accepted too).
fn bits16(t: &TensorProto) -> Result<Vec<u16>, String> {
    t.int32_data
        .iter()
        .map(|&v| {
            if (i16::MIN as i32..=u16::MAX as i32).contains(&v) {
                Ok(v as u16)
            } else {
                Err(format!(
                    "int32_data entry {v} is not a 16-bit pattern of a {} element",
                    onnx_type_name(t.data_type)
                ))
            }
        })
        .collect()
}

/// The bytes `n` elements of `t`'s element type (kiln dtype `dtype`) take
/// in `raw_data` (or external data): packed for the sub-byte types.
fn raw_bytes(t: &TensorProto, dtype: DType, n: usize) -> Result<usize, String> {
    let bits = sub_byte(t.data_type)
        .map(|(bits, _)| bits)
        .or_else(|| minifloat(t.data_type).map(|f| f.bits));
    match bits {
        Some(bits) => Ok(n.div_ceil((8 / bits) as usize)),
        None => n
            .checked_mul(dtype.size_bytes())
            .ok_or_else(|| format!("dims {:?} have more bytes than fit in memory", t.dims)),
    }
}

/// Reads the elements from `bytes` (`raw_data`, or external data).
fn from_raw(t: &TensorProto, bytes: &[u8], dtype: DType, n: usize) -> Result<Data, String> {
    let need = raw_bytes(t, dtype, n)?;
    if bytes.len() != need {
        return Err(format!(
            "raw_data has {} bytes but dims {:?} of {} need {need}",
            bytes.len(),
            t.dims,
            onnx_type_name(t.data_type)
        ));
    }
    if dtype == DType::Bool {
        // One byte per element; any non-zero byte is true.
        return Ok(Data::Bool(bytes.iter().map(|&b| b != 0).collect()));
    }
    Data::from_le_bytes(dtype, bytes).ok_or_else(|| "raw_data is malformed".to_string())
}

/// Reads the elements from the typed field of `dtype`.
fn from_typed(t: &TensorProto, dtype: DType, n: usize) -> Result<Data, String> {
    Ok(match dtype {
        DType::F32 => {
            check_len("float_data", t.float_data.len(), n, t)?;
            Data::F32(t.float_data.clone())
        }
        DType::F64 => {
            check_len("double_data", t.double_data.len(), n, t)?;
            Data::F64(t.double_data.clone())
        }
        DType::I64 => {
            check_len("int64_data", t.int64_data.len(), n, t)?;
            Data::I64(t.int64_data.clone())
        }
        DType::I32 => {
            check_len("int32_data", t.int32_data.len(), n, t)?;
            Data::I32(t.int32_data.clone())
        }
        DType::Bool => {
            check_len("int32_data", t.int32_data.len(), n, t)?;
            Data::Bool(t.int32_data.iter().map(|&v| v != 0).collect())
        }
        DType::F16 => {
            check_len("int32_data", t.int32_data.len(), n, t)?;
            Data::F16(bits16(t)?.into_iter().map(half::f16::from_bits).collect())
        }
        DType::BF16 => {
            check_len("int32_data", t.int32_data.len(), n, t)?;
            Data::BF16(bits16(t)?.into_iter().map(half::bf16::from_bits).collect())
        }
        DType::I8 => Data::I8(narrow(t, n)?),
        DType::I16 => Data::I16(narrow(t, n)?),
        DType::U8 => Data::U8(narrow(t, n)?),
        DType::U16 => Data::U16(narrow(t, n)?),
        DType::U32 => {
            check_len("uint64_data", t.uint64_data.len(), n, t)?;
            t.uint64_data
                .iter()
                .map(|&v| {
                    u32::try_from(v)
                        .map_err(|_| format!("uint64_data entry {v} is out of range for uint32"))
                })
                .collect::<Result<Vec<u32>, String>>()
                .map(Data::U32)?
        }
        DType::U64 => {
            check_len("uint64_data", t.uint64_data.len(), n, t)?;
            Data::U64(t.uint64_data.clone())
        }
    })
}

/// Elements of a narrow integer type from `int32_data`, range-checked.
fn narrow<T: TryFrom<i32>>(t: &TensorProto, n: usize) -> Result<Vec<T>, String> {
    check_len("int32_data", t.int32_data.len(), n, t)?;
    t.int32_data
        .iter()
        .map(|&v| {
            T::try_from(v).map_err(|_| {
                format!(
                    "int32_data entry {v} is out of range for {}",
                    onnx_type_name(t.data_type)
                )
            })
        })
        .collect()
}

/// The contents of a tensor as an [`Array`] (a scalar has `dims == []`).
/// Errors name the tensor: unsupported element types, segments, negative
/// dims, data whose size does not match `dims`, and external data that
/// cannot be read. External data is read relative to the model's folder
/// while a model is imported from a file ([`crate::import`]), and relative
/// to the file's folder by [`read_tensor_file`] and [`read_value_file`];
/// elsewhere it is an error.
pub fn to_array(t: &TensorProto) -> Result<Array, String> {
    let inner = || -> Result<Array, String> {
        let external = match DataLocation::try_from(t.data_location) {
            Ok(DataLocation::Default) => false,
            Ok(DataLocation::External) => true,
            Err(_) => return Err(format!("unknown data_location {}", t.data_location)),
        };
        if let Some(s) = &t.segment {
            return Err(format!(
                "it is a segment (elements {}..{}) of a larger tensor, which is not supported",
                s.begin, s.end
            ));
        }
        let dtype = dtype_of(t.data_type)?;
        let (shape, n) = shape_of(t)?;
        // The bytes of `raw_data` or of the external file, where the tensor
        // has them (the external ones checked against the size dims need
        // before anything is copied).
        let mapped;
        let raw: Option<&[u8]> = if external {
            mapped = crate::external::read(t, raw_bytes(t, dtype, n)?)?;
            Some(&mapped)
        } else if t.raw_data.is_empty() {
            None
        } else {
            Some(&t.raw_data)
        };
        let data = if let Some((bits, signed)) = sub_byte(t.data_type) {
            unpack_sub_byte(t, raw, n, bits, signed)?
        } else if let Some(f) = minifloat(t.data_type) {
            decode_minifloat(t, raw, n, f)?
        } else if let Some(raw) = raw {
            from_raw(t, raw, dtype, n)?
        } else {
            from_typed(t, dtype, n)?
        };
        Array::new(shape, data).ok_or_else(|| "the data does not match dims".to_string())
    };
    inner().map_err(|e| format!("{}: {e}", label(t)))
}

/// A tensor named `name` holding `a`, with the data in `raw_data`.
pub fn from_array(name: &str, a: &Array) -> TensorProto {
    let raw_data = if cfg!(target_endian = "little") {
        a.as_bytes().to_vec()
    } else {
        a.data().to_le_bytes()
    };
    TensorProto {
        name: name.to_string(),
        dims: a.shape().iter().map(|&d| d as i64).collect(),
        data_type: onnx_type(a.dtype()),
        raw_data,
        ..TensorProto::default()
    }
}
