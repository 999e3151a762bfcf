//! `Array`: a dense host tensor with a concrete shape, used for constants,
//! variable values, feeds, fetches and by the reference interpreter.

use std::fmt;

use crate::dtype::DType;

/// Typed element storage of an [`Array`], row-major.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// f32 elements.
    F32(Vec<f32>),
    /// f64 elements.
    F64(Vec<f64>),
    /// i32 elements.
    I32(Vec<i32>),
    /// i64 elements.
    I64(Vec<i64>),
    /// i8 elements.
    I8(Vec<i8>),
    /// i16 elements.
    I16(Vec<i16>),
    /// u8 elements.
    U8(Vec<u8>),
    /// u16 elements.
    U16(Vec<u16>),
    /// u32 elements.
    U32(Vec<u32>),
    /// u64 elements.
    U64(Vec<u64>),
    /// bool elements.
    Bool(Vec<bool>),
    /// f16 elements.
    F16(Vec<half::f16>),
    /// bf16 elements.
    BF16(Vec<half::bf16>),
}

impl Data {
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::F64(_) => DType::F64,
            Data::I32(_) => DType::I32,
            Data::I64(_) => DType::I64,
            Data::I8(_) => DType::I8,
            Data::I16(_) => DType::I16,
            Data::U8(_) => DType::U8,
            Data::U16(_) => DType::U16,
            Data::U32(_) => DType::U32,
            Data::U64(_) => DType::U64,
            Data::Bool(_) => DType::Bool,
            Data::F16(_) => DType::F16,
            Data::BF16(_) => DType::BF16,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
            Data::I32(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::I8(v) => v.len(),
            Data::I16(v) => v.len(),
            Data::U8(v) => v.len(),
            Data::U16(v) => v.len(),
            Data::U32(v) => v.len(),
            Data::U64(v) => v.len(),
            Data::Bool(v) => v.len(),
            Data::F16(v) => v.len(),
            Data::BF16(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` zeros (false for bool).
    pub fn zeros(dtype: DType, n: usize) -> Data {
        match dtype {
            DType::F32 => Data::F32(vec![0.0; n]),
            DType::F64 => Data::F64(vec![0.0; n]),
            DType::I32 => Data::I32(vec![0; n]),
            DType::I64 => Data::I64(vec![0; n]),
            DType::I8 => Data::I8(vec![0; n]),
            DType::I16 => Data::I16(vec![0; n]),
            DType::U8 => Data::U8(vec![0; n]),
            DType::U16 => Data::U16(vec![0; n]),
            DType::U32 => Data::U32(vec![0; n]),
            DType::U64 => Data::U64(vec![0; n]),
            DType::Bool => Data::Bool(vec![false; n]),
            DType::F16 => Data::F16(vec![half::f16::ZERO; n]),
            DType::BF16 => Data::BF16(vec![half::bf16::ZERO; n]),
        }
    }

    /// `n` copies of `v` converted to `dtype` (as [`Elem::from_f64`] does).
    pub fn filled(dtype: DType, n: usize, v: f64) -> Data {
        match dtype {
            DType::F32 => Data::F32(vec![f32::from_f64(v); n]),
            DType::F64 => Data::F64(vec![v; n]),
            DType::I32 => Data::I32(vec![i32::from_f64(v); n]),
            DType::I64 => Data::I64(vec![i64::from_f64(v); n]),
            DType::I8 => Data::I8(vec![i8::from_f64(v); n]),
            DType::I16 => Data::I16(vec![i16::from_f64(v); n]),
            DType::U8 => Data::U8(vec![u8::from_f64(v); n]),
            DType::U16 => Data::U16(vec![u16::from_f64(v); n]),
            DType::U32 => Data::U32(vec![u32::from_f64(v); n]),
            DType::U64 => Data::U64(vec![u64::from_f64(v); n]),
            DType::Bool => Data::Bool(vec![bool::from_f64(v); n]),
            DType::F16 => Data::F16(vec![half::f16::from_f64(v); n]),
            DType::BF16 => Data::BF16(vec![half::bf16::from_f64(v); n]),
        }
    }

    /// Little-endian bytes of the elements (bool as 0/1 bytes).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I8(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::U8(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::U16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::U32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::U64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::Bool(v) => v.iter().map(|&b| b as u8).collect(),
            Data::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::BF16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    /// Reads little-endian elements; `None` when the length is not a whole
    /// number of elements or a bool byte is not 0 or 1.
    pub fn from_le_bytes(dtype: DType, bytes: &[u8]) -> Option<Data> {
        let w = dtype.size_bytes();
        if !bytes.len().is_multiple_of(w) {
            return None;
        }
        Some(match dtype {
            DType::F32 => Data::F32(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            DType::F64 => Data::F64(
                bytes
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            DType::I32 => Data::I32(
                bytes
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            DType::I64 => Data::I64(
                bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            DType::I8 => Data::I8(
                bytes
                    .chunks_exact(1)
                    .map(|c| i8::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            DType::I16 => Data::I16(
                bytes
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            DType::U8 => Data::U8(
                bytes
                    .chunks_exact(1)
                    .map(|c| u8::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            DType::U16 => Data::U16(
                bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            DType::U32 => Data::U32(
                bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            DType::U64 => Data::U64(
                bytes
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            DType::Bool => {
                if bytes.iter().any(|&b| b > 1) {
                    return None;
                }
                Data::Bool(bytes.iter().map(|&b| b == 1).collect())
            }
            DType::F16 => Data::F16(
                bytes
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
            DType::BF16 => Data::BF16(
                bytes
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
        })
    }
}

/// Runs `$body` with `$v` bound to the typed element vector of `$data`, for
/// every dtype; `$body` must evaluate to a `Vec` of the same element type.
#[macro_export]
macro_rules! map_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::array::Data::F32($v) => $crate::array::Data::F32($body),
            $crate::array::Data::F64($v) => $crate::array::Data::F64($body),
            $crate::array::Data::I32($v) => $crate::array::Data::I32($body),
            $crate::array::Data::I64($v) => $crate::array::Data::I64($body),
            $crate::array::Data::I8($v) => $crate::array::Data::I8($body),
            $crate::array::Data::I16($v) => $crate::array::Data::I16($body),
            $crate::array::Data::U8($v) => $crate::array::Data::U8($body),
            $crate::array::Data::U16($v) => $crate::array::Data::U16($body),
            $crate::array::Data::U32($v) => $crate::array::Data::U32($body),
            $crate::array::Data::U64($v) => $crate::array::Data::U64($body),
            $crate::array::Data::Bool($v) => $crate::array::Data::Bool($body),
            $crate::array::Data::F16($v) => $crate::array::Data::F16($body),
            $crate::array::Data::BF16($v) => $crate::array::Data::BF16($body),
        }
    };
}

/// A Rust element type that can live in an [`Array`].
pub trait Elem: Copy + PartialEq + PartialOrd + fmt::Debug + Send + Sync + 'static {
    /// The matching dtype.
    const DTYPE: DType;
    /// Borrows the typed slice, when `data` holds this type.
    fn slice(data: &Data) -> Option<&[Self]>;
    /// Wraps a vector as [`Data`].
    fn wrap(v: Vec<Self>) -> Data;
    /// Converts to f64 (bool: 0 or 1).
    fn to_f64(self) -> f64;
    /// Converts from f64 with Rust `as` semantics (saturating, NaN to 0; bool: != 0).
    fn from_f64(v: f64) -> Self;
}

macro_rules! impl_elem {
    ($t:ty, $variant:ident, $dt:expr, |$x:ident| $to:expr, |$v:ident| $from:expr) => {
        impl Elem for $t {
            const DTYPE: DType = $dt;
            fn slice(data: &Data) -> Option<&[Self]> {
                match data {
                    Data::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn wrap(v: Vec<Self>) -> Data {
                Data::$variant(v)
            }
            fn to_f64(self) -> f64 {
                let $x = self;
                $to
            }
            fn from_f64($v: f64) -> Self {
                $from
            }
        }
    };
}

impl_elem!(f32, F32, DType::F32, |x| x as f64, |v| v as f32);
impl_elem!(f64, F64, DType::F64, |x| x, |v| v);
impl_elem!(i32, I32, DType::I32, |x| x as f64, |v| v as i32);
impl_elem!(i64, I64, DType::I64, |x| x as f64, |v| v as i64);
impl_elem!(i8, I8, DType::I8, |x| x as f64, |v| v as i8);
impl_elem!(i16, I16, DType::I16, |x| x as f64, |v| v as i16);
impl_elem!(u8, U8, DType::U8, |x| x as f64, |v| v as u8);
impl_elem!(u16, U16, DType::U16, |x| x as f64, |v| v as u16);
impl_elem!(u32, U32, DType::U32, |x| x as f64, |v| v as u32);
impl_elem!(u64, U64, DType::U64, |x| x as f64, |v| v as u64);
impl_elem!(half::f16, F16, DType::F16, |x| x.to_f64(), |v| {
    half::f16::from_f64(v)
});
impl_elem!(half::bf16, BF16, DType::BF16, |x| x.to_f64(), |v| {
    half::bf16::from_f64(v)
});
impl_elem!(bool, Bool, DType::Bool, |x| x as u8 as f64, |v| v != 0.0);

/// One element of any dtype.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar {
    /// An f32.
    F32(f32),
    /// An f64.
    F64(f64),
    /// An i32.
    I32(i32),
    /// An i64.
    I64(i64),
    /// A i8.
    I8(i8),
    /// A i16.
    I16(i16),
    /// A u8.
    U8(u8),
    /// A u16.
    U16(u16),
    /// A u32.
    U32(u32),
    /// A u64.
    U64(u64),
    /// A bool.
    Bool(bool),
    /// An f16.
    F16(half::f16),
    /// A bf16.
    BF16(half::bf16),
}

impl Scalar {
    /// The dtype.
    pub fn dtype(self) -> DType {
        match self {
            Scalar::F32(_) => DType::F32,
            Scalar::F64(_) => DType::F64,
            Scalar::I32(_) => DType::I32,
            Scalar::I64(_) => DType::I64,
            Scalar::I8(_) => DType::I8,
            Scalar::I16(_) => DType::I16,
            Scalar::U8(_) => DType::U8,
            Scalar::U16(_) => DType::U16,
            Scalar::U32(_) => DType::U32,
            Scalar::U64(_) => DType::U64,
            Scalar::Bool(_) => DType::Bool,
            Scalar::F16(_) => DType::F16,
            Scalar::BF16(_) => DType::BF16,
        }
    }

    /// `v` as `dtype`, with [`Elem::from_f64`] semantics.
    pub fn from_f64(dtype: DType, v: f64) -> Scalar {
        match dtype {
            DType::F32 => Scalar::F32(v as f32),
            DType::F64 => Scalar::F64(v),
            DType::I32 => Scalar::I32(v as i32),
            DType::I64 => Scalar::I64(v as i64),
            DType::I8 => Scalar::I8(v as i8),
            DType::I16 => Scalar::I16(v as i16),
            DType::U8 => Scalar::U8(v as u8),
            DType::U16 => Scalar::U16(v as u16),
            DType::U32 => Scalar::U32(v as u32),
            DType::U64 => Scalar::U64(v as u64),
            DType::Bool => Scalar::Bool(v != 0.0),
            DType::F16 => Scalar::F16(half::f16::from_f64(v)),
            DType::BF16 => Scalar::BF16(half::bf16::from_f64(v)),
        }
    }

    /// The value as f64 (bool as 0/1).
    pub fn to_f64(self) -> f64 {
        match self {
            Scalar::F32(v) => v as f64,
            Scalar::F64(v) => v,
            Scalar::I32(v) => v as f64,
            Scalar::I64(v) => v as f64,
            Scalar::I8(v) => v as f64,
            Scalar::I16(v) => v as f64,
            Scalar::U8(v) => v as f64,
            Scalar::U16(v) => v as f64,
            Scalar::U32(v) => v as f64,
            Scalar::U64(v) => v as f64,
            Scalar::Bool(v) => v as u8 as f64,
            Scalar::F16(v) => v.to_f64(),
            Scalar::BF16(v) => v.to_f64(),
        }
    }

    /// The least value of an integer dtype; `None` for other dtypes.
    pub fn int_min(dtype: DType) -> Option<Scalar> {
        Some(match dtype {
            DType::I8 => Scalar::I8(i8::MIN),
            DType::I16 => Scalar::I16(i16::MIN),
            DType::I32 => Scalar::I32(i32::MIN),
            DType::I64 => Scalar::I64(i64::MIN),
            DType::U8 => Scalar::U8(0),
            DType::U16 => Scalar::U16(0),
            DType::U32 => Scalar::U32(0),
            DType::U64 => Scalar::U64(0),
            _ => return None,
        })
    }

    /// The greatest value of an integer dtype; `None` for other dtypes.
    pub fn int_max(dtype: DType) -> Option<Scalar> {
        Some(match dtype {
            DType::I8 => Scalar::I8(i8::MAX),
            DType::I16 => Scalar::I16(i16::MAX),
            DType::I32 => Scalar::I32(i32::MAX),
            DType::I64 => Scalar::I64(i64::MAX),
            DType::U8 => Scalar::U8(u8::MAX),
            DType::U16 => Scalar::U16(u16::MAX),
            DType::U32 => Scalar::U32(u32::MAX),
            DType::U64 => Scalar::U64(u64::MAX),
            _ => return None,
        })
    }

    /// True when the value is a bool `true`.
    pub fn is_true(self) -> bool {
        matches!(self, Scalar::Bool(true))
    }
}

/// A dense row-major host tensor.
#[derive(Clone, PartialEq)]
pub struct Array {
    shape: Vec<usize>,
    data: Data,
}

impl Array {
    /// An array from a shape and data; `None` when the element count differs.
    pub fn new(shape: impl Into<Vec<usize>>, data: Data) -> Option<Array> {
        let shape = shape.into();
        (checked_product(&shape) == Some(data.len())).then_some(Array { shape, data })
    }

    /// An array from a shape and a typed vector; `None` when the element count differs.
    pub fn from_vec<T: Elem>(shape: impl Into<Vec<usize>>, v: Vec<T>) -> Option<Array> {
        Array::new(shape, T::wrap(v))
    }

    /// A rank-0 array.
    pub fn scalar<T: Elem>(v: T) -> Array {
        Array {
            shape: vec![],
            data: T::wrap(vec![v]),
        }
    }

    /// Zeros of a dtype and shape.
    pub fn zeros(dtype: DType, shape: &[usize]) -> Array {
        Array {
            shape: shape.to_vec(),
            data: Data::zeros(dtype, shape.iter().product()),
        }
    }

    /// An array filled with `v` converted to `dtype`.
    pub fn filled(dtype: DType, shape: &[usize], v: f64) -> Array {
        Array {
            shape: shape.to_vec(),
            data: Data::filled(dtype, shape.iter().product(), v),
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The dtype.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// The element storage.
    pub fn data(&self) -> &Data {
        &self.data
    }

    /// Consumes the array, returning its storage.
    pub fn into_data(self) -> Data {
        self.data
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The same data with another shape of equal element count.
    pub fn reshaped(self, shape: impl Into<Vec<usize>>) -> Option<Array> {
        Array::new(shape, self.data)
    }

    /// Borrows the elements as `T`, when the dtype matches.
    pub fn as_slice<T: Elem>(&self) -> Option<&[T]> {
        T::slice(&self.data)
    }

    /// The elements converted to f64 (bool as 0/1).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.data {
            Data::F32(v) => v.iter().map(|x| x.to_f64()).collect(),
            Data::F64(v) => v.clone(),
            Data::I32(v) => v.iter().map(|x| x.to_f64()).collect(),
            Data::I64(v) => v.iter().map(|x| x.to_f64()).collect(),
            Data::I8(v) => v.iter().map(|x| x.to_f64()).collect(),
            Data::I16(v) => v.iter().map(|x| x.to_f64()).collect(),
            Data::U8(v) => v.iter().map(|x| x.to_f64()).collect(),
            Data::U16(v) => v.iter().map(|x| x.to_f64()).collect(),
            Data::U32(v) => v.iter().map(|x| x.to_f64()).collect(),
            Data::U64(v) => v.iter().map(|x| x.to_f64()).collect(),
            Data::Bool(v) => v.iter().map(|x| x.to_f64()).collect(),
            Data::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            Data::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
        }
    }

    /// A pointer to the first element's bytes (for compiled code; the
    /// elements are little-endian, bools one byte of 0 or 1).
    pub fn as_ptr(&self) -> *const u8 {
        match &self.data {
            Data::F32(v) => v.as_ptr() as *const u8,
            Data::F64(v) => v.as_ptr() as *const u8,
            Data::I32(v) => v.as_ptr() as *const u8,
            Data::I64(v) => v.as_ptr() as *const u8,
            Data::I8(v) => v.as_ptr() as *const u8,
            Data::I16(v) => v.as_ptr() as *const u8,
            Data::U8(v) => v.as_ptr(),
            Data::U16(v) => v.as_ptr() as *const u8,
            Data::U32(v) => v.as_ptr() as *const u8,
            Data::U64(v) => v.as_ptr() as *const u8,
            Data::Bool(v) => v.as_ptr() as *const u8,
            Data::F16(v) => v.as_ptr() as *const u8,
            Data::BF16(v) => v.as_ptr() as *const u8,
        }
    }

    /// A mutable pointer to the first element's bytes (see [`Array::as_ptr`]).
    /// Compiled code may write any value of the dtype through it; bools must
    /// be written as 0 or 1.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        match &mut self.data {
            Data::F32(v) => v.as_mut_ptr() as *mut u8,
            Data::F64(v) => v.as_mut_ptr() as *mut u8,
            Data::I32(v) => v.as_mut_ptr() as *mut u8,
            Data::I64(v) => v.as_mut_ptr() as *mut u8,
            Data::I8(v) => v.as_mut_ptr() as *mut u8,
            Data::I16(v) => v.as_mut_ptr() as *mut u8,
            Data::U8(v) => v.as_mut_ptr(),
            Data::U16(v) => v.as_mut_ptr() as *mut u8,
            Data::U32(v) => v.as_mut_ptr() as *mut u8,
            Data::U64(v) => v.as_mut_ptr() as *mut u8,
            Data::Bool(v) => v.as_mut_ptr() as *mut u8,
            Data::F16(v) => v.as_mut_ptr() as *mut u8,
            Data::BF16(v) => v.as_mut_ptr() as *mut u8,
        }
    }

    /// Element `i` (row-major).
    ///
    /// Panics if `i` is out of range.
    pub fn get(&self, i: usize) -> Scalar {
        match &self.data {
            Data::F32(v) => Scalar::F32(v[i]),
            Data::F64(v) => Scalar::F64(v[i]),
            Data::I32(v) => Scalar::I32(v[i]),
            Data::I64(v) => Scalar::I64(v[i]),
            Data::I8(v) => Scalar::I8(v[i]),
            Data::I16(v) => Scalar::I16(v[i]),
            Data::U8(v) => Scalar::U8(v[i]),
            Data::U16(v) => Scalar::U16(v[i]),
            Data::U32(v) => Scalar::U32(v[i]),
            Data::U64(v) => Scalar::U64(v[i]),
            Data::Bool(v) => Scalar::Bool(v[i]),
            Data::F16(v) => Scalar::F16(v[i]),
            Data::BF16(v) => Scalar::BF16(v[i]),
        }
    }

    /// An array of `dtype` from scalars of that dtype; `None` when the count
    /// does not match the shape or a scalar has another dtype.
    pub fn from_scalars(shape: impl Into<Vec<usize>>, dtype: DType, v: &[Scalar]) -> Option<Array> {
        macro_rules! collect {
            ($variant:ident) => {
                v.iter()
                    .map(|s| match s {
                        Scalar::$variant(x) => Some(*x),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()
                    .map(Data::$variant)
            };
        }
        let data = match dtype {
            DType::F32 => collect!(F32),
            DType::F64 => collect!(F64),
            DType::I32 => collect!(I32),
            DType::I64 => collect!(I64),
            DType::I8 => collect!(I8),
            DType::I16 => collect!(I16),
            DType::U8 => collect!(U8),
            DType::U16 => collect!(U16),
            DType::U32 => collect!(U32),
            DType::U64 => collect!(U64),
            DType::Bool => collect!(Bool),
            DType::F16 => collect!(F16),
            DType::BF16 => collect!(BF16),
        }?;
        Array::new(shape, data)
    }

    /// Size of the elements in bytes.
    pub fn size_bytes(&self) -> usize {
        self.len() * self.dtype().size_bytes()
    }

    /// The elements' bytes (see [`Array::as_ptr`]).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `as_ptr` points at `size_bytes` initialized bytes owned by `self`.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.size_bytes()) }
    }

    /// Same dtype, shape and bits (unlike `==`, NaN matches NaN and -0.0
    /// differs from 0.0).
    pub fn same_bits(&self, other: &Array) -> bool {
        self.dtype() == other.dtype()
            && self.shape() == other.shape()
            && self.as_bytes() == other.as_bytes()
    }
}

/// The product of `dims`, or `None` on overflow.
pub fn checked_product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

impl fmt::Debug for Array {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Array({}{:?}, ", self.dtype(), self.shape)?;
        const SHOW: usize = 16;
        let vals = self.to_f64_vec();
        let shown: Vec<String> = vals.iter().take(SHOW).map(|v| format!("{v}")).collect();
        write!(f, "[{}", shown.join(", "))?;
        if vals.len() > SHOW {
            write!(f, ", ... {} more", vals.len() - SHOW)?;
        }
        f.write_str("])")
    }
}
