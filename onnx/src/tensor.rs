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

use std::path::Path;

use kiln_graph::array::checked_product;
use kiln_graph::{Array, DType, Data};
use prost::Message;

use crate::proto::tensor_proto::{DataLocation, DataType};
use crate::proto::{OptionalProto, SequenceProto, TensorProto, TypeProto};

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

/// The width in bits and the signedness of ONNX's sub-byte integer types
/// (UINT4 21, INT4 22, UINT2 25, INT2 26). kiln holds them unpacked, one
/// value per byte, as i8 (signed) or u8; the ops that make them (`Cast`,
/// `QuantizeLinear`) keep the values in their range.
pub fn sub_byte(onnx_type: i32) -> Option<(u32, bool)> {
    match onnx_type {
        21 => Some((4, false)),
        22 => Some((4, true)),
        25 => Some((2, false)),
        26 => Some((2, true)),
        _ => None,
    }
}

/// What special values an 8- or 4-bit float type has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MiniKind {
    /// IEEE-like: infinities and NaNs in the top exponent (FLOAT8E5M2).
    Ieee,
    /// No infinities; NaN is all exponent and mantissa bits set
    /// (FLOAT8E4M3FN).
    Fn,
    /// No infinities and no negative zero; NaN is the code of -0 (the
    /// `fnuz` types).
    Fnuz,
    /// Neither infinities nor NaNs (FLOAT4E2M1).
    Finite,
}

/// An ONNX 8- or 4-bit float type. kiln holds its values in f16, which
/// represents every one of them exactly; `Cast` and `QuantizeLinear` round
/// to its grid (`ops::minifloat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MiniFloat {
    /// Bits per value (8, or 4 packed two per byte).
    pub bits: u32,
    /// Exponent bits.
    pub exp: u32,
    /// Mantissa bits.
    pub man: u32,
    /// Exponent bias.
    pub bias: i32,
    /// Special values.
    pub kind: MiniKind,
}

/// The layout of ONNX element type `t` where it is an 8- or 4-bit float
/// (FLOAT8E4M3FN 17, FLOAT8E4M3FNUZ 18, FLOAT8E5M2 19, FLOAT8E5M2FNUZ 20,
/// FLOAT4E2M1 23).
pub fn minifloat(t: i32) -> Option<MiniFloat> {
    let f = |bits, exp, man, bias, kind| MiniFloat {
        bits,
        exp,
        man,
        bias,
        kind,
    };
    Some(match t {
        17 => f(8, 4, 3, 7, MiniKind::Fn),
        18 => f(8, 4, 3, 8, MiniKind::Fnuz),
        19 => f(8, 5, 2, 15, MiniKind::Ieee),
        20 => f(8, 5, 2, 16, MiniKind::Fnuz),
        23 => f(4, 2, 1, 1, MiniKind::Finite),
        _ => return None,
    })
}

impl MiniFloat {
    /// The exponent of the smallest normal value.
    pub fn min_exp(self) -> i32 {
        1 - self.bias
    }

    /// The exponent of the largest finite value.
    pub fn max_exp(self) -> i32 {
        let top = (1i32 << self.exp) - 1;
        match self.kind {
            MiniKind::Ieee => top - 1 - self.bias,
            _ => top - self.bias,
        }
    }

    /// The largest finite value.
    pub fn max(self) -> f64 {
        let all = (1u32 << self.man) - 1;
        // FN's top code (all ones) is NaN, so its largest mantissa is one less.
        let m = if self.kind == MiniKind::Fn {
            all - 1
        } else {
            all
        };
        (1.0 + m as f64 / (1u32 << self.man) as f64) * 2f64.powi(self.max_exp())
    }

    /// The value of `code` (its low `bits` bits).
    pub fn decode(self, code: u8) -> f32 {
        let sign_bit = 1u8 << (self.bits - 1);
        let emask = (1u8 << self.exp) - 1;
        let mmask = (1u8 << self.man) - 1;
        let (e, m) = ((code >> self.man) & emask, code & mmask);
        match self.kind {
            MiniKind::Fnuz if code == sign_bit => return f32::NAN,
            MiniKind::Fn if e == emask && m == mmask => return f32::NAN,
            MiniKind::Ieee if e == emask => {
                return if m != 0 {
                    f32::NAN
                } else if code & sign_bit != 0 {
                    f32::NEG_INFINITY
                } else {
                    f32::INFINITY
                };
            }
            _ => {}
        }
        let v = if e == 0 {
            m as f64 * 2f64.powi(self.min_exp() - self.man as i32)
        } else {
            (1.0 + m as f64 / (1u32 << self.man) as f64) * 2f64.powi(e as i32 - self.bias)
        };
        (if code & sign_bit != 0 { -v } else { v }) as f32
    }
}

/// The `n` codes of `bits` bits each (8, 4 or 2) a tensor packs into bytes,
/// low bits first: from `raw` (its `raw_data` or external data, where it
/// has them), or `int32_data` holding one byte per entry.
fn packed_codes(
    t: &TensorProto,
    raw: Option<&[u8]>,
    n: usize,
    bits: u32,
) -> Result<Vec<u8>, String> {
    let per = (8 / bits) as usize;
    let need = n.div_ceil(per);
    let owned: Vec<u8>;
    let bytes: &[u8] = match raw {
        Some(raw) => raw,
        None => {
            owned = t
                .int32_data
                .iter()
                .map(|&v| {
                    u8::try_from(v).map_err(|_| {
                        format!("int32_data entry {v} is not a packed byte (0 to 255)")
                    })
                })
                .collect::<Result<_, _>>()?;
            &owned
        }
    };
    if bytes.len() != need {
        return Err(format!(
            "dims {:?} of {} need {need} packed bytes, the tensor has {}",
            t.dims,
            onnx_type_name(t.data_type),
            bytes.len()
        ));
    }
    let mask = ((1u16 << bits) - 1) as u8;
    Ok((0..n)
        .map(|i| (bytes[i / per] >> ((i % per) as u32 * bits)) & mask)
        .collect())
}

/// The values of an 8- or 4-bit float tensor as f16.
fn decode_minifloat(
    t: &TensorProto,
    raw: Option<&[u8]>,
    n: usize,
    f: MiniFloat,
) -> Result<Data, String> {
    let codes = packed_codes(t, raw, n, f.bits)?;
    Ok(Data::F16(
        codes
            .into_iter()
            .map(|c| half::f16::from_f32(f.decode(c)))
            .collect(),
    ))
}

/// The values of a sub-byte integer tensor, sign-extended for the signed
/// types.
fn unpack_sub_byte(
    t: &TensorProto,
    raw: Option<&[u8]>,
    n: usize,
    bits: u32,
    signed: bool,
) -> Result<Data, String> {
    let codes = packed_codes(t, raw, n, bits)?;
    Ok(if signed {
        let shift = 8 - bits;
        Data::I8(
            codes
                .into_iter()
                .map(|c| ((c << shift) as i8) >> shift)
                .collect(),
        )
    } else {
        Data::U8(codes)
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tensor_proto::Segment;
    use crate::proto::StringStringEntryProto;
    use half::{bf16, f16};

    fn tensor(data_type: DataType, dims: &[i64]) -> TensorProto {
        TensorProto {
            name: "t".to_string(),
            dims: dims.to_vec(),
            data_type: data_type as i32,
            ..TensorProto::default()
        }
    }

    /// The same tensor via typed field and via raw_data.
    fn both(typed: TensorProto, raw: Vec<u8>) -> (Array, Array) {
        let mut r = typed.clone();
        r.float_data.clear();
        r.double_data.clear();
        r.int32_data.clear();
        r.int64_data.clear();
        r.raw_data = raw;
        (to_array(&typed).unwrap(), to_array(&r).unwrap())
    }

    #[test]
    fn minifloat_layouts_and_codes() {
        let f = |t| minifloat(t).unwrap();
        assert_eq!(f(17).max(), 448.0);
        assert_eq!(f(18).max(), 240.0);
        assert_eq!(f(19).max(), 57344.0);
        assert_eq!(f(20).max(), 57344.0);
        assert_eq!(f(23).max(), 6.0);
        // E4M3FN: 0x38 = 1.0, 0x01 = 2^-9, 0x7f NaN, 0xfe = -448.
        assert_eq!(f(17).decode(0x38), 1.0);
        assert_eq!(f(17).decode(0x01), 2f32.powi(-9));
        assert!(f(17).decode(0x7f).is_nan());
        assert_eq!(f(17).decode(0xfe), -448.0);
        // FNUZ: 0x80 is the NaN, 0x40 = 1.0 (bias 8).
        assert!(f(18).decode(0x80).is_nan());
        assert_eq!(f(18).decode(0x40), 1.0);
        // E5M2 is the top byte of an f16.
        for code in 0..=255u8 {
            let want = half::f16::from_bits((code as u16) << 8).to_f32();
            let got = f(19).decode(code);
            assert!(got == want || (got.is_nan() && want.is_nan()), "{code:#x}");
        }
        // FLOAT4E2M1: codes 0..7 are 0, 0.5, 1, 1.5, 2, 3, 4, 6.
        let v: Vec<f32> = (0..8).map(|c| f(23).decode(c)).collect();
        assert_eq!(v, [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]);
        assert_eq!(f(23).decode(0xf), -6.0);
        // Packed FLOAT4 in a tensor: [1.5, -6, 0.5].
        let mut t = tensor(DataType::Float, &[3]);
        t.data_type = 23;
        t.raw_data = vec![0xf3, 0x01];
        let a = to_array(&t).unwrap();
        assert_eq!(a.to_f64_vec(), [1.5, -6.0, 0.5]);
        assert_eq!(a.dtype(), DType::F16);
    }

    #[test]
    fn sub_byte_integers_unpack_low_bits_first() {
        // INT4 [7, -8, -1] packed as 0x87, 0x0f (the last high nibble unused).
        let mut t = tensor(DataType::Float, &[3]);
        t.data_type = 22;
        t.raw_data = vec![0x87, 0x0f];
        assert_eq!(
            to_array(&t).unwrap(),
            Array::from_vec(vec![3], vec![7i8, -8, -1]).unwrap()
        );
        // The same bytes as UINT4, and in int32_data.
        t.data_type = 21;
        t.raw_data.clear();
        t.int32_data = vec![0x87, 0x0f];
        assert_eq!(
            to_array(&t).unwrap(),
            Array::from_vec(vec![3], vec![7u8, 8, 15]).unwrap()
        );
        // INT2: four per byte, 0b11_10_01_00 = [0, 1, -2, -1].
        let mut t = tensor(DataType::Float, &[4]);
        t.data_type = 26;
        t.raw_data = vec![0b1110_0100];
        assert_eq!(
            to_array(&t).unwrap(),
            Array::from_vec(vec![4], vec![0i8, 1, -2, -1]).unwrap()
        );
        t.raw_data = vec![0, 0];
        let e = to_array(&t).unwrap_err();
        assert!(e.contains("need 1 packed bytes, the tensor has 2"), "{e}");
        let mut t = tensor(DataType::Float, &[2]);
        t.data_type = 22;
        t.int32_data = vec![256];
        assert!(to_array(&t).unwrap_err().contains("not a packed byte"));
    }

    #[test]
    fn narrow_integers_from_typed_fields() {
        let mut t = tensor(DataType::Int8, &[3]);
        t.int32_data = vec![-128, 0, 127];
        assert_eq!(
            to_array(&t).unwrap(),
            Array::from_vec(vec![3], vec![-128i8, 0, 127]).unwrap()
        );
        t.int32_data = vec![-129, 0, 127];
        let e = to_array(&t).unwrap_err();
        assert!(
            e.contains("int32_data entry -129 is out of range for int8"),
            "{e}"
        );
        let mut t = tensor(DataType::Uint16, &[2]);
        t.int32_data = vec![65535, 7];
        assert_eq!(
            to_array(&t).unwrap(),
            Array::from_vec(vec![2], vec![65535u16, 7]).unwrap()
        );
        let mut t = tensor(DataType::Uint32, &[2]);
        t.uint64_data = vec![u32::MAX as u64, 1];
        assert_eq!(
            to_array(&t).unwrap(),
            Array::from_vec(vec![2], vec![u32::MAX, 1]).unwrap()
        );
        t.uint64_data = vec![1 << 32, 1];
        assert!(to_array(&t)
            .unwrap_err()
            .contains("out of range for uint32"));
        let mut t = tensor(DataType::Uint64, &[1]);
        t.uint64_data = vec![u64::MAX];
        assert_eq!(
            to_array(&t).unwrap(),
            Array::from_vec(vec![1], vec![u64::MAX]).unwrap()
        );
        let mut t = tensor(DataType::Uint8, &[2]);
        t.raw_data = vec![255, 1];
        assert_eq!(
            to_array(&t).unwrap(),
            Array::from_vec(vec![2], vec![255u8, 1]).unwrap()
        );
    }

    #[test]
    fn dtype_mapping() {
        for d in DType::ALL {
            assert_eq!(dtype_of(onnx_type(d)), Ok(d));
        }
        assert_eq!(
            dtype_of(DataType::Complex64 as i32).unwrap_err(),
            "complex64 tensors are not supported (kiln has f32, f64, f16, bf16, i8, i16, i32, i64, u8, u16, u32, u64, bool)"
        );
        assert!(dtype_of(DataType::String as i32)
            .unwrap_err()
            .contains("string"));
        // 8- and 4-bit floats are held in f16, 4- and 2-bit integers in a byte.
        assert_eq!(dtype_of(DataType::Float8e4m3fn as i32), Ok(DType::F16));
        assert_eq!(dtype_of(23), Ok(DType::F16));
        assert_eq!(dtype_of(22), Ok(DType::I8));
        assert_eq!(dtype_of(25), Ok(DType::U8));
        assert!(dtype_of(24).unwrap_err().contains("float8e8m0"));
        assert!(dtype_of(0).unwrap_err().contains("UNDEFINED"));
        assert_eq!(dtype_of(99).unwrap_err(), "unknown ONNX element type 99");
        assert_eq!(onnx_type_name(16), "bfloat16");
        assert_eq!(onnx_type_name(26), "int2");
        assert_eq!(onnx_type_name(-1), "unknown");
        // Every enum value has a name.
        for v in 0..=26 {
            assert!(DataType::try_from(v).is_ok());
            assert_ne!(onnx_type_name(v), "unknown");
        }
    }

    #[test]
    fn f32_raw_and_typed() {
        let v = [1.5f32, -2.0, 0.0, f32::INFINITY, 3.25, -0.5];
        let mut t = tensor(DataType::Float, &[2, 3]);
        t.float_data = v.to_vec();
        let (a, b) = both(t, v.iter().flat_map(|x| x.to_le_bytes()).collect());
        assert_eq!(a, Array::from_vec(vec![2, 3], v.to_vec()).unwrap());
        assert_eq!(a, b);
    }

    #[test]
    fn f64_raw_and_typed() {
        let v = [1.0f64 / 3.0, -1e300, 2.0];
        let mut t = tensor(DataType::Double, &[3]);
        t.double_data = v.to_vec();
        let (a, b) = both(t, v.iter().flat_map(|x| x.to_le_bytes()).collect());
        assert_eq!(a, Array::from_vec(vec![3], v.to_vec()).unwrap());
        assert_eq!(a, b);
    }

    #[test]
    fn i32_raw_and_typed() {
        let v = [i32::MIN, -1, 0, 7, i32::MAX, 42];
        let mut t = tensor(DataType::Int32, &[3, 2]);
        t.int32_data = v.to_vec();
        let (a, b) = both(t, v.iter().flat_map(|x| x.to_le_bytes()).collect());
        assert_eq!(a, Array::from_vec(vec![3, 2], v.to_vec()).unwrap());
        assert_eq!(a, b);
    }

    #[test]
    fn i64_raw_and_typed() {
        let v = [i64::MIN, -1, 0, i64::MAX];
        let mut t = tensor(DataType::Int64, &[2, 1, 2]);
        t.int64_data = v.to_vec();
        let (a, b) = both(t, v.iter().flat_map(|x| x.to_le_bytes()).collect());
        assert_eq!(a, Array::from_vec(vec![2, 1, 2], v.to_vec()).unwrap());
        assert_eq!(a, b);
    }

    #[test]
    fn bool_raw_and_typed() {
        let v = [true, false, false, true];
        let mut t = tensor(DataType::Bool, &[4]);
        t.int32_data = vec![1, 0, 0, 1];
        let (a, b) = both(t, vec![1, 0, 0, 1]);
        assert_eq!(a, Array::from_vec(vec![4], v.to_vec()).unwrap());
        assert_eq!(a, b);
        // Any non-zero byte or entry is true.
        let mut t = tensor(DataType::Bool, &[2]);
        t.raw_data = vec![0, 255];
        assert_eq!(
            to_array(&t).unwrap().as_slice::<bool>().unwrap(),
            &[false, true]
        );
    }

    #[test]
    fn f16_bits_in_int32_data() {
        let v = [
            f16::from_f32(1.5),
            f16::from_f32(-2.0),
            f16::INFINITY,
            f16::MIN_POSITIVE,
        ];
        let mut t = tensor(DataType::Float16, &[2, 2]);
        // Zero-extended bit patterns, as onnx.helper writes them.
        t.int32_data = v.iter().map(|x| x.to_bits() as i32).collect();
        assert!(t.int32_data[1] > 0x7fff);
        let (a, b) = both(t.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect());
        assert_eq!(a, Array::from_vec(vec![2, 2], v.to_vec()).unwrap());
        assert_eq!(a, b);
        // Sign-extended patterns read the same.
        t.int32_data[1] = v[1].to_bits() as i16 as i32;
        assert!(t.int32_data[1] < 0);
        assert_eq!(to_array(&t).unwrap(), a);
        // Entries that are not 16-bit patterns are refused.
        t.int32_data[1] = 0x10000;
        let e = to_array(&t).unwrap_err();
        assert!(e.contains("not a 16-bit pattern of a float16"), "{e}");
    }

    #[test]
    fn bf16_bits_in_int32_data() {
        let v = [bf16::from_f32(1.5), bf16::from_f32(-3.0), bf16::NAN];
        let mut t = tensor(DataType::Bfloat16, &[3]);
        t.int32_data = v.iter().map(|x| x.to_bits() as i32).collect();
        let (a, b) = both(t, v.iter().flat_map(|x| x.to_le_bytes()).collect());
        assert_eq!(a.dtype(), DType::BF16);
        let want = Array::from_vec(vec![3], v.to_vec()).unwrap();
        assert!(a.same_bits(&want) && b.same_bits(&want));
    }

    #[test]
    fn scalar() {
        let mut t = tensor(DataType::Float, &[]);
        t.float_data = vec![2.5];
        let a = to_array(&t).unwrap();
        assert_eq!(a, Array::scalar(2.5f32));
        assert!(a.shape().is_empty());
        let mut t = tensor(DataType::Int64, &[]);
        t.raw_data = 7i64.to_le_bytes().to_vec();
        assert_eq!(to_array(&t).unwrap(), Array::scalar(7i64));
        // A scalar with no data is an error, not an empty array.
        let e = to_array(&tensor(DataType::Float, &[])).unwrap_err();
        assert!(e.contains("no data"), "{e}");
    }

    #[test]
    fn zero_size() {
        for dt in [
            DataType::Float,
            DataType::Int64,
            DataType::Bool,
            DataType::Float16,
        ] {
            let a = to_array(&tensor(dt, &[2, 0, 3])).unwrap();
            assert_eq!(a.shape(), &[2, 0, 3]);
            assert!(a.is_empty());
        }
        // A zero dim makes the count 0 even beside huge dims.
        let a = to_array(&tensor(DataType::Double, &[0, i64::MAX])).unwrap();
        assert_eq!(a.shape(), &[0, i64::MAX as usize]);
    }

    #[test]
    fn count_mismatch() {
        let mut t = tensor(DataType::Float, &[2, 3]);
        t.float_data = vec![1.0; 5];
        let e = to_array(&t).unwrap_err();
        assert_eq!(
            e,
            "tensor \"t\": dims [2, 3] need 6 elements but float_data has 5"
        );
        // Data in another field than the type's.
        let mut t = tensor(DataType::Int32, &[2]);
        t.int64_data = vec![1, 2];
        let e = to_array(&t).unwrap_err();
        assert!(e.contains("no data") && e.contains("int32_data"), "{e}");
        // Too much data.
        let mut t = tensor(DataType::Int64, &[1]);
        t.int64_data = vec![1, 2];
        assert!(to_array(&t).unwrap_err().contains("int64_data has 2"));
    }

    #[test]
    fn truncated_raw_data() {
        let mut t = tensor(DataType::Float, &[4]);
        t.raw_data = vec![0; 15];
        let e = to_array(&t).unwrap_err();
        assert_eq!(
            e,
            "tensor \"t\": raw_data has 15 bytes but dims [4] of float need 16"
        );
        // A huge declared size is refused before anything is allocated.
        let mut t = tensor(DataType::Double, &[1 << 40, 1 << 20]);
        t.raw_data = vec![0; 8];
        assert!(to_array(&t).unwrap_err().contains("raw_data has 8 bytes"));
        let mut t = tensor(DataType::Double, &[i64::MAX, i64::MAX]);
        t.raw_data = vec![0; 8];
        assert!(to_array(&t).unwrap_err().contains("more elements than fit"));
        let mut t = tensor(DataType::Double, &[1 << 62]);
        t.raw_data = vec![0; 8];
        assert!(to_array(&t).unwrap_err().contains("more bytes than fit"));
    }

    #[test]
    fn negative_dim() {
        let mut t = tensor(DataType::Float, &[2, -1]);
        t.float_data = vec![1.0, 2.0];
        let e = to_array(&t).unwrap_err();
        assert!(e.contains("negative dim"), "{e}");
    }

    #[test]
    fn unsupported_type_names_tensor() {
        let mut t = tensor(DataType::Complex64, &[1]);
        t.name = "w".to_string();
        t.raw_data = vec![0; 8];
        let e = to_array(&t).unwrap_err();
        assert!(
            e.starts_with("tensor \"w\": complex64 tensors are not supported"),
            "{e}"
        );
        let mut t = tensor(DataType::Float, &[1]);
        t.name.clear();
        assert!(to_array(&t).unwrap_err().starts_with("unnamed tensor: "));
    }

    /// An external tensor of `dims` and type `data_type`, in `location`
    /// (with `offset` and `length` entries where given).
    fn external(
        data_type: i32,
        dims: &[i64],
        location: &str,
        offset: Option<&str>,
        length: Option<&str>,
    ) -> TensorProto {
        let entry = |key: &str, value: &str| StringStringEntryProto {
            key: key.to_string(),
            value: value.to_string(),
        };
        let mut external_data = vec![entry("location", location)];
        external_data.extend(offset.map(|v| entry("offset", v)));
        external_data.extend(length.map(|v| entry("length", v)));
        TensorProto {
            name: "weight".to_string(),
            dims: dims.to_vec(),
            data_type,
            data_location: DataLocation::External as i32,
            external_data,
            ..TensorProto::default()
        }
    }

    /// A fresh directory for a test's files.
    fn scratch(test: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("kiln-onnx-external-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn external_data_needs_the_model_folder() {
        let t = external(DataType::Float as i32, &[2], "weights.bin", None, None);
        let e = to_array(&t).unwrap_err();
        assert!(
            e.starts_with("tensor \"weight\": ")
                && e.contains("external file (\"weights.bin\")")
                && e.contains("import the model from its file path"),
            "{e}"
        );
        let mut t = t;
        t.data_location = 5;
        assert!(to_array(&t)
            .unwrap_err()
            .contains("unknown data_location 5"));
    }

    #[test]
    fn external_data_is_read_from_the_mapped_file() {
        let dir = scratch("read");
        // 3 bytes of something else, then 4 f32 (unaligned), then 2 INT4
        // packed in one byte, then 2 i64.
        let v = [1.5f32, -2.0, 0.25, 8.0];
        let mut bytes = vec![7u8, 7, 7];
        bytes.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        bytes.push(0x8f); // INT4 [-1, -8]
        bytes.extend([5i64, -6].iter().flat_map(|x| x.to_le_bytes()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/w.bin"), &bytes).unwrap();
        let _scope = crate::external::Scope::enter(Some(&dir));
        let f = external(
            DataType::Float as i32,
            &[2, 2],
            "sub/w.bin",
            Some("3"),
            Some("16"),
        );
        assert_eq!(
            to_array(&f).unwrap(),
            Array::from_vec(vec![2, 2], v.to_vec()).unwrap()
        );
        let q = external(22, &[2], "./sub/../sub/w.bin", Some("19"), Some("1"));
        assert_eq!(
            to_array(&q).unwrap(),
            Array::from_vec(vec![2], vec![-1i8, -8]).unwrap()
        );
        // No length: the rest of the file.
        let i = external(DataType::Int64 as i32, &[2], "sub/w.bin", Some("20"), None);
        assert_eq!(
            to_array(&i).unwrap(),
            Array::from_vec(vec![2], vec![5i64, -6]).unwrap()
        );
        // The file was mapped once for the three tensors.
        assert_eq!(crate::external::mapped_files(), 1);
        // A zero-size tensor at the end of the file, and in an empty file.
        let z = external(
            DataType::Float as i32,
            &[0],
            "sub/w.bin",
            Some("36"),
            Some("0"),
        );
        assert!(to_array(&z).unwrap().is_empty());
        std::fs::write(dir.join("empty.bin"), []).unwrap();
        let z = external(DataType::Float as i32, &[0, 3], "empty.bin", None, None);
        assert_eq!(to_array(&z).unwrap().shape(), &[0, 3]);
        drop(_scope);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn external_data_errors_name_tensor_file_and_numbers() {
        let dir = scratch("errors");
        let model = dir.join("model");
        std::fs::create_dir_all(model.join("folder.bin")).unwrap();
        std::fs::write(model.join("w.bin"), [0u8; 16]).unwrap();
        std::fs::write(dir.join("secret.bin"), [0u8; 16]).unwrap();
        let _scope = crate::external::Scope::enter(Some(&model));
        let float = DataType::Float as i32;
        let err = |location: &str, offset: Option<&str>, length: Option<&str>| {
            let e = to_array(&external(float, &[4], location, offset, length)).unwrap_err();
            assert!(e.starts_with("tensor \"weight\": "), "{e}");
            e
        };
        let has = |e: &str, parts: &[&str]| {
            for p in parts {
                assert!(e.contains(p), "lacks {p:?}: {e}");
            }
        };
        // Paths out of the folder.
        for location in ["../secret.bin", "a/../../secret.bin", "/etc/passwd"] {
            let e = err(location, None, None);
            has(
                &e,
                &[&format!("{location:?}"), "escapes the model's folder"],
            );
        }
        let abs = dir.join("secret.bin").display().to_string();
        has(&err(&abs, None, None), &["escapes the model's folder"]);
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.join("secret.bin"), model.join("link.bin")).unwrap();
            let e = err("link.bin", None, None);
            has(
                &e,
                &["\"link.bin\"", "escapes the model's folder", "secret.bin"],
            );
            // A link inside the folder is followed.
            std::os::unix::fs::symlink(model.join("w.bin"), model.join("inside.bin")).unwrap();
            assert_eq!(
                to_array(&external(float, &[4], "inside.bin", None, None)).unwrap(),
                Array::zeros(DType::F32, &[4])
            );
        }
        // Missing, or not a regular file.
        has(
            &err("nope.bin", None, None),
            &["\"nope.bin\"", "no such file"],
        );
        has(
            &err("folder.bin", None, None),
            &["\"folder.bin\"", "a directory"],
        );
        // Offsets and lengths past the end.
        has(
            &err("w.bin", Some("17"), None),
            &["\"w.bin\"", "offset 17 is beyond the end", "16 bytes"],
        );
        has(
            &err("w.bin", Some("8"), Some("16")),
            &[
                "\"w.bin\"",
                "offset 8 of length 16 runs past the end",
                "16 bytes",
            ],
        );
        has(
            &err("w.bin", Some("1"), Some(&u64::MAX.to_string())),
            &["runs past the end"],
        );
        // Lengths that do not match the dims.
        has(
            &err("w.bin", Some("0"), Some("12")),
            &[
                "\"w.bin\"",
                "12 bytes (length)",
                "dims [4] of float need 16",
            ],
        );
        has(
            &err("w.bin", Some("4"), None),
            &["12 bytes (the rest of the file)", "need 16"],
        );
        // Unparsable numbers, no location.
        has(
            &err("w.bin", Some("-4"), None),
            &["offset \"-4\"", "\"w.bin\"", "not a byte count"],
        );
        has(&err("w.bin", None, Some("16 ")), &["length \"16 \""]);
        let mut t = external(float, &[4], "w.bin", None, None);
        t.external_data.clear();
        assert!(to_array(&t).unwrap_err().contains("has no location"));
        // A huge declared size is refused without allocating it.
        let t = external(
            DataType::Double as i32,
            &[1 << 40, 1 << 20],
            "w.bin",
            None,
            None,
        );
        has(
            &to_array(&t).unwrap_err(),
            &["16 bytes", "need 9223372036854775808"],
        );
        drop(_scope);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn segment_refused() {
        let mut t = tensor(DataType::Float, &[2]);
        t.float_data = vec![1.0, 2.0];
        t.segment = Some(Segment { begin: 0, end: 2 });
        let e = to_array(&t).unwrap_err();
        assert!(e.starts_with("tensor \"t\": it is a segment"), "{e}");
    }

    #[test]
    fn round_trip() {
        let arrays = [
            Array::from_vec(vec![2, 3], vec![1.0f32, -2.0, 3.5, 0.0, f32::MAX, -0.0]).unwrap(),
            Array::from_vec(vec![2], vec![1e-300f64, -7.0]).unwrap(),
            Array::from_vec(vec![1, 3], vec![-5i32, 0, 9]).unwrap(),
            Array::from_vec(vec![2, 2], vec![i64::MIN, 1, 2, i64::MAX]).unwrap(),
            Array::from_vec(vec![3], vec![true, false, true]).unwrap(),
            Array::from_vec(vec![2], vec![f16::from_f32(0.5), f16::NEG_INFINITY]).unwrap(),
            Array::from_vec(vec![1, 1, 2], vec![bf16::from_f32(3.0), bf16::MIN]).unwrap(),
            Array::scalar(42i64),
            Array::zeros(DType::F32, &[0, 4]),
        ];
        for a in arrays {
            let t = from_array("x", &a);
            let bytes = t.encode_to_vec();
            let back = TensorProto::decode(bytes.as_slice()).unwrap();
            assert_eq!(back, t);
            assert_eq!(back.name, "x");
            let b = to_array(&back).unwrap();
            assert!(b.same_bits(&a), "{a:?} -> {b:?}");
        }
    }

    #[test]
    fn read_file() {
        let dir = std::env::temp_dir().join(format!("kiln-onnx-tensor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = Array::from_vec(vec![2, 2], vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
        let path = dir.join("input_0.pb");
        std::fs::write(&path, from_array("x", &a).encode_to_vec()).unwrap();
        let (name, b) = read_tensor_file(&path).unwrap();
        assert_eq!((name.as_str(), &b), ("x", &a));

        let bad = dir.join("bad.pb");
        std::fs::write(&bad, [0xff, 0xff, 0xff]).unwrap();
        let e = read_tensor_file(&bad).unwrap_err();
        assert!(
            e.contains("bad.pb") && e.contains("not a serialized"),
            "{e}"
        );

        let mut t = from_array("y", &a);
        t.raw_data.pop();
        let short = dir.join("short.pb");
        std::fs::write(&short, t.encode_to_vec()).unwrap();
        let e = read_tensor_file(&short).unwrap_err();
        assert!(
            e.contains("short.pb: tensor \"y\": raw_data has 15 bytes"),
            "{e}"
        );

        // A SequenceProto (name = 1, elem_type = 2, tensor_values = 3)
        // decodes as a TensorProto whose values are a `segment`.
        let mut seq = vec![0x0a, 0x01, b's', 0x10, 0x01, 0x1a];
        let inner = from_array("e", &a).encode_to_vec();
        seq.push(inner.len() as u8);
        seq.extend(inner);
        let seq_path = dir.join("seq.pb");
        std::fs::write(&seq_path, seq).unwrap();
        let e = read_tensor_file(&seq_path).unwrap_err();
        assert!(e.contains("segment") && e.contains("SequenceProto"), "{e}");

        // The same bytes as the sequence they are, by the declared type.
        use crate::proto::type_proto::{Optional as OptionalType, Sequence, Value as T};
        let seq_type = TypeProto {
            value: Some(T::SequenceType(Sequence { elem_type: None })),
            ..TypeProto::default()
        };
        let (name, v) = read_value_file(&seq_path, &seq_type).unwrap();
        assert_eq!(
            (name.as_str(), v),
            ("s", DataValue::Sequence(vec![DataValue::Tensor(a.clone())]))
        );
        // An OptionalProto (name = 1, elem_type = 2, tensor_value = 3), and
        // one holding none.
        let mut opt = vec![0x0a, 0x01, b'o', 0x10, 0x01, 0x1a];
        let inner = from_array("e", &a).encode_to_vec();
        opt.push(inner.len() as u8);
        opt.extend(inner);
        let opt_path = dir.join("opt.pb");
        std::fs::write(&opt_path, opt).unwrap();
        let opt_type = TypeProto {
            value: Some(T::OptionalType(OptionalType { elem_type: None })),
            ..TypeProto::default()
        };
        let (_, v) = read_value_file(&opt_path, &opt_type).unwrap();
        assert_eq!(
            v,
            DataValue::Optional(Some(Box::new(DataValue::Tensor(a.clone()))))
        );
        std::fs::write(&opt_path, [0x0a, 0x01, b'o']).unwrap();
        let (_, v) = read_value_file(&opt_path, &opt_type).unwrap();
        assert_eq!(v, DataValue::Optional(None));
        // An optional sequence (sequence_value = 5) and a sequence of
        // optionals (optional_values = 7).
        let o = OptionalProto {
            elem_type: crate::proto::optional_proto::DataType::Sequence as i32,
            sequence_value: Some(SequenceProto {
                elem_type: crate::proto::sequence_proto::DataType::Optional as i32,
                optional_values: vec![OptionalProto::default()],
                ..SequenceProto::default()
            }),
            ..OptionalProto::default()
        };
        assert_eq!(
            optional_value(&o).unwrap(),
            Some(DataValue::Sequence(vec![DataValue::Optional(None)]))
        );

        let e = read_tensor_file(&dir.join("missing.pb")).unwrap_err();
        assert!(
            e.starts_with("cannot read ") && e.contains("missing.pb"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unpacked_repeated_fields_decode() {
        // proto2 writers may emit repeated scalars unpacked: tag 4 (float_data)
        // as wire type 5 twice, tag 1 (dims) as varint.
        let mut bytes = vec![0x08, 0x02]; // dims: 2 (unpacked)
        bytes.extend([0x10, 0x01]); // data_type: FLOAT
        for x in [1.5f32, -1.0] {
            bytes.push(0x25); // field 4, wire type 5
            bytes.extend(x.to_le_bytes());
        }
        let t = TensorProto::decode(bytes.as_slice()).unwrap();
        assert_eq!(t.dims, [2]);
        assert_eq!(
            to_array(&t).unwrap().as_slice::<f32>().unwrap(),
            &[1.5, -1.0]
        );
        // dims are written unpacked, as the reference writer does.
        let enc = from_array("", &Array::from_vec(vec![3], vec![0i32; 3]).unwrap()).encode_to_vec();
        assert_eq!(&enc[..2], &[0x08, 0x03]);
    }
}
