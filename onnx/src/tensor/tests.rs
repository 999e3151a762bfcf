//! Tests of reading and writing `TensorProto`s, the packed element types
//! and value files.

use super::*;
use prost::Message;

use crate::proto::tensor_proto::Segment;
use crate::proto::StringStringEntryProto;
use crate::proto::{OptionalProto, SequenceProto, TypeProto};
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
    let d = std::env::temp_dir().join(format!("kiln-onnx-external-{test}-{}", std::process::id()));
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
