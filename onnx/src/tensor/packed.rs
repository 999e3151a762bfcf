//! Element types kiln holds in a wider dtype: the sub-byte integers (INT4,
//! UINT4, INT2, UINT2, unpacked into i8 and u8) and the minifloats
//! (float8 and float4 kinds, decoded to f32).

use kiln_graph::Data;

use crate::proto::TensorProto;
use crate::tensor::onnx_type_name;

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
pub(crate) fn packed_codes(
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
pub(crate) fn decode_minifloat(
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
pub(crate) fn unpack_sub_byte(
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
