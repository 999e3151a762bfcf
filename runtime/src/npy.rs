//! Reading and writing NumPy `.npy` files (format versions 1.0, 2.0, 3.0).
//!
//! Supported dtypes: `f2`, `f4`, `f8`, `i1`, `i2`, `i4`, `i8`, `u1`, `u2`,
//! `u4`, `u8` (either byte order) and `b1`, C order. Declared sizes are checked against the file before anything is
//! allocated.

use std::path::Path;

use kiln_graph::{Array, DType, Data};

use crate::error::{Error, Result};

const MAGIC: &[u8] = b"\x93NUMPY";

/// Encodes an array as `.npy` bytes (version 1.0, little-endian). NumPy
/// has no bfloat16, so bf16 arrays are written widened to f32 (exactly).
pub fn to_bytes(a: &Array) -> Vec<u8> {
    if a.dtype() == DType::BF16 {
        return to_bytes(&kiln_graph::ops::elementwise::eval_cast(a, DType::F32));
    }
    let descr = match a.dtype() {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
        DType::I8 => "|i1",
        DType::I16 => "<i2",
        DType::U8 => "|u1",
        DType::U16 => "<u2",
        DType::U32 => "<u4",
        DType::U64 => "<u8",
        DType::Bool => "|b1",
        DType::F16 => "<f2",
        DType::BF16 => unreachable!("widened above"),
    };
    let shape = match a.shape() {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that magic + version + length + header is a multiple of 64, ending in '\n'.
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + a.size_bytes());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&a.data().to_le_bytes());
    out
}

/// Writes `a` to `path` as `.npy`.
pub fn write(path: impl AsRef<Path>, a: &Array) -> Result<()> {
    let path = path.as_ref();
    std::fs::write(path, to_bytes(a)).map_err(|e| Error::io("writing", path, e))
}

/// Reads an `.npy` file. Only a regular file is read, and no more bytes
/// than it holds: a directory, `/dev/zero` or a FIFO is an error at once.
pub fn read(path: impl AsRef<Path>) -> Result<Array> {
    let path = path.as_ref();
    let bytes =
        kiln_graph::format::read_regular_file(path).map_err(|e| Error::io("reading", path, e))?;
    from_bytes(&bytes, &path.display().to_string())
}

/// Decodes `.npy` bytes; `origin` names the source in errors.
pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Array> {
    let fail = |reason: String| Error::Npy {
        path: origin.into(),
        reason,
    };
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(fail("not an .npy file (bad magic)".into()));
    }
    let (hlen, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(fail("truncated header".into()));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(fail(format!("unsupported .npy version {v}.{}", bytes[7]))),
    };
    let end = start
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| fail("truncated header".into()))?;
    let header =
        std::str::from_utf8(&bytes[start..end]).map_err(|_| fail("header is not text".into()))?;
    let descr = dict_value(header, "descr")
        .ok_or_else(|| fail(format!("header has no 'descr': {header:?}")))?;
    let fortran = dict_value(header, "fortran_order")
        .ok_or_else(|| fail("header has no 'fortran_order'".into()))?;
    let shape_txt =
        dict_value(header, "shape").ok_or_else(|| fail("header has no 'shape'".into()))?;
    if fortran != "False" {
        return Err(fail(
            "Fortran-order arrays are not supported; save with np.ascontiguousarray".into(),
        ));
    }
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let (big_endian, code) = match descr.as_bytes().first() {
        Some(b'<') | Some(b'|') | Some(b'=') => (false, &descr[1..]),
        Some(b'>') => (true, &descr[1..]),
        _ => (false, descr),
    };
    let dtype = match code {
        "f4" => DType::F32,
        "f8" => DType::F64,
        "f2" => DType::F16,
        "i4" => DType::I32,
        "i8" => DType::I64,
        "i1" => DType::I8,
        "i2" => DType::I16,
        "u1" => DType::U8,
        "u2" => DType::U16,
        "u4" => DType::U32,
        "u8" => DType::U64,
        "b1" | "?" => DType::Bool,
        other => {
            return Err(fail(format!(
                "unsupported dtype '{other}' (kiln reads f2, f4, f8, i1, i2, i4, i8, u1, u2, u4, u8, b1)"
            )))
        }
    };
    let shape = parse_shape(shape_txt).ok_or_else(|| fail(format!("invalid shape {shape_txt}")))?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| fail("shape overflows".into()))?;
    let need = count
        .checked_mul(dtype.size_bytes())
        .ok_or_else(|| fail("shape overflows".into()))?;
    let body = &bytes[end..];
    if body.len() != need {
        return Err(fail(format!(
            "shape {shape:?} of {dtype} needs {need} data bytes, the file has {}",
            body.len()
        )));
    }
    let data = if big_endian && dtype.size_bytes() > 1 {
        let w = dtype.size_bytes();
        let swapped: Vec<u8> = body
            .chunks_exact(w)
            .flat_map(|c| c.iter().rev().copied())
            .collect();
        Data::from_le_bytes(dtype, &swapped)
    } else {
        Data::from_le_bytes(dtype, body)
    }
    .ok_or_else(|| fail(format!("invalid {dtype} data")))?;
    Array::new(shape, data).ok_or_else(|| fail("shape does not match the data".into()))
}

/// The raw text of `key`'s value in a Python dict literal.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat_single = format!("'{key}'");
    let pat_double = format!("\"{key}\"");
    let at = header
        .find(&pat_single)
        .map(|i| i + pat_single.len())
        .or_else(|| header.find(&pat_double).map(|i| i + pat_double.len()))?;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else if let Some(q) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') {
        rest[1..].find(q)? + 2
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim())
}

fn parse_shape(s: &str) -> Option<Vec<usize>> {
    let inner = s.strip_prefix('(')?.strip_suffix(')')?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.trim_end_matches('L').parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_dtype() {
        let arrays = [
            Array::from_vec(vec![2, 3], vec![1.5f32, -2.0, 0.0, 3.25, 1e-8, f32::MAX]).unwrap(),
            Array::from_vec(vec![3], vec![1.5f64, -2.0, 1e300]).unwrap(),
            Array::from_vec(vec![2, 1], vec![7i32, -9]).unwrap(),
            Array::from_vec(Vec::<usize>::new(), vec![i64::MIN]).unwrap(),
            Array::from_vec(vec![3], vec![-128i8, 0, 127]).unwrap(),
            Array::from_vec(vec![2], vec![i16::MIN, 300i16]).unwrap(),
            Array::from_vec(vec![3], vec![0u8, 7, 255]).unwrap(),
            Array::from_vec(vec![1], vec![u16::MAX]).unwrap(),
            Array::from_vec(vec![2], vec![u32::MAX, 1u32]).unwrap(),
            Array::from_vec(vec![2], vec![u64::MAX, 2u64]).unwrap(),
            Array::from_vec(vec![0, 4], Vec::<f32>::new()).unwrap(),
            Array::from_vec(vec![3], vec![true, false, true]).unwrap(),
        ];
        for a in arrays {
            let bytes = to_bytes(&a);
            assert_eq!(
                (MAGIC.len() + 4 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize) % 64,
                0
            );
            assert_eq!(from_bytes(&bytes, "mem").unwrap(), a);
        }
    }

    #[test]
    fn reads_numpy_written_headers() {
        // As written by numpy 1.26 for np.arange(6, dtype='>i4').reshape(2, 3).
        let mut b = MAGIC.to_vec();
        let h = "{'descr': '>i4', 'fortran_order': False, 'shape': (2, 3), }";
        let h = format!("{h}{}\n", " ".repeat(64 - (10 + h.len() + 1) % 64));
        b.extend_from_slice(&[1, 0]);
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        for i in 0..6i32 {
            b.extend_from_slice(&i.to_be_bytes());
        }
        let a = from_bytes(&b, "mem").unwrap();
        assert_eq!(a.shape(), &[2, 3]);
        assert_eq!(a.as_slice::<i32>().unwrap(), &[0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn rejects_bad_files_with_reasons() {
        let good = to_bytes(&Array::from_vec(vec![4], vec![1f32, 2.0, 3.0, 4.0]).unwrap());
        let err = |b: &[u8]| from_bytes(b, "x.npy").unwrap_err().to_string();
        assert!(err(b"hello world").contains("bad magic"));
        for cut in [3, 9, 20, good.len() - 1] {
            let e = err(&good[..cut]);
            assert!(e.contains("x.npy"), "{e}");
        }
        assert!(err(&good[..good.len() - 4]).contains("needs 16 data bytes, the file has 12"));
        // Header edits that keep its length.
        let edit = |from: &str, to: &str| -> Vec<u8> {
            let at = good
                .windows(from.len())
                .position(|w| w == from.as_bytes())
                .unwrap();
            let mut b = good.clone();
            b[at..at + from.len()].copy_from_slice(to.as_bytes());
            b
        };
        assert!(err(&edit("False", "True ")).contains("Fortran"));
        let with_header = |h: &str, body: &[u8]| -> Vec<u8> {
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&[1, 0]);
            b.extend_from_slice(&(h.len() as u16).to_le_bytes());
            b.extend_from_slice(h.as_bytes());
            b.extend_from_slice(body);
            b
        };
        let e = err(&with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 99999999999, 99999999999), }\n", &[0; 8]));
        assert!(e.contains("shape overflows"), "{e}");
        let e = err(&with_header(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000), }\n",
            &[0; 8],
        ));
        assert!(
            e.contains("needs 4000000000000 data bytes, the file has 8"),
            "{e}"
        );
        let e = err(&with_header(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }\n",
            &[0; 8],
        ));
        assert!(e.contains("invalid shape"), "{e}");
        assert!(err(&edit("<f4", "<c8")).contains("unsupported dtype 'c8'"));
    }
}
