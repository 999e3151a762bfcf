//! The `.kiln` file: byte-identical round trips, same results after
//! loading, and clear errors (never panics) for damaged files.

use kiln::graph::{Error, FileErrorKind};
use kiln::prelude::*;

fn models() -> Vec<(&'static str, Graph)> {
    let mlp = {
        let g = GraphBuilder::with_seed(11);
        let x = g.placeholder("x", DType::F32, shape!["batch", 6]).unwrap();
        let h = g.dense("fc1", x, 7, Activation::Gelu).unwrap();
        let y = g.linear("fc2", h, 3).unwrap().log_softmax(-1).unwrap();
        g.output(y).unwrap();
        g.into_graph()
    };
    let cnn = {
        let g = GraphBuilder::with_seed(12);
        let x = g
            .placeholder("img", DType::F32, shape!["n", 2, 8, 8])
            .unwrap();
        let c = g
            .conv2d_layer(
                "c1",
                x,
                4,
                3,
                Conv2dOptions::default().padding(1),
                Activation::Relu,
            )
            .unwrap();
        let c = g.batch_norm("bn", c, 1e-5).unwrap();
        let p = g
            .max_pool2d(c, 2, 2, 0)
            .unwrap()
            .global_avg_pool()
            .unwrap()
            .flatten()
            .unwrap();
        g.output(g.linear("head", p, 5).unwrap()).unwrap();
        g.into_graph()
    };
    let attention = {
        let g = GraphBuilder::with_seed(13);
        let x = g
            .placeholder("tokens", DType::F32, shape!["b", 4, 8])
            .unwrap();
        let a = g.multi_head_attention("attn", x, 2, true).unwrap();
        let y = g.layer_norm("ln", x.add(a).unwrap(), 1e-5).unwrap();
        g.output(y).unwrap();
        g.into_graph()
    };
    let every_dtype = {
        let g = GraphBuilder::new();
        let i = g.placeholder("i", DType::I32, [3]).unwrap();
        let c32 = g
            .constant(Array::from_vec(vec![3], vec![1i32, -2, 3]).unwrap())
            .unwrap();
        let c64 = g
            .constant(Array::from_vec(vec![3], vec![1i64 << 40, -2, 3]).unwrap())
            .unwrap();
        let cb = g
            .constant(Array::from_vec(vec![3], vec![true, false, true]).unwrap())
            .unwrap();
        let cf = g
            .constant(Array::from_vec(vec![3], vec![0.5f64, -1e300, f64::NAN]).unwrap())
            .unwrap();
        let s = i
            .add(c32)
            .unwrap()
            .cast(DType::I64)
            .unwrap()
            .mul(c64)
            .unwrap();
        let sel = g.select(cb, s.cast(DType::F64).unwrap(), cf).unwrap();
        g.output(sel).unwrap();
        g.output(g.iota(DType::I64, [2, 3], 1).unwrap()).unwrap();
        g.output(g.random_normal(DType::F32, [4], 9, 0.0, 1.0).unwrap())
            .unwrap();
        g.into_graph()
    };
    // Every dtype's extremes as constants, and every special float as a
    // padding value (an attribute in the graph JSON, where JSON itself has
    // no NaN or infinity): all must read back to the same bits.
    let extremes = {
        let g = GraphBuilder::new();
        fn out(g: &GraphBuilder, a: Array, pads: &[f64]) {
            let c = g.constant(a).unwrap();
            g.output(c).unwrap();
            for &v in pads {
                g.output(c.pad(&[1], &[2], v).unwrap()).unwrap();
            }
        }
        let floats = [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            0.1,
        ];
        out(
            &g,
            Array::from_vec(
                vec![7],
                vec![
                    f32::MAX,
                    f32::MIN,
                    f32::MIN_POSITIVE,
                    1e-45,
                    -0.0,
                    f32::INFINITY,
                    f32::NAN,
                ],
            )
            .unwrap(),
            &floats,
        );
        out(
            &g,
            Array::from_vec(
                vec![6],
                vec![
                    f64::MAX,
                    f64::MIN,
                    5e-324,
                    -0.0,
                    f64::NEG_INFINITY,
                    f64::NAN,
                ],
            )
            .unwrap(),
            &floats,
        );
        let h = |v: f32| half::f16::from_f32(v);
        let hb = |v: f32| half::bf16::from_f32(v);
        let specials = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            65504.0,
            6e-8,
        ];
        out(
            &g,
            Array::from_vec(vec![6], specials.map(h).to_vec()).unwrap(),
            &floats,
        );
        out(
            &g,
            Array::from_vec(vec![6], specials.map(hb).to_vec()).unwrap(),
            &floats,
        );
        let ints = [i64::MIN as f64, i64::MAX as f64, u64::MAX as f64, -1.0, 0.0];
        out(
            &g,
            Array::from_vec(vec![2], vec![i8::MIN, i8::MAX]).unwrap(),
            &ints,
        );
        out(
            &g,
            Array::from_vec(vec![2], vec![i16::MIN, i16::MAX]).unwrap(),
            &ints,
        );
        out(
            &g,
            Array::from_vec(vec![2], vec![i32::MIN, i32::MAX]).unwrap(),
            &ints,
        );
        out(
            &g,
            Array::from_vec(vec![2], vec![i64::MIN, i64::MAX]).unwrap(),
            &ints,
        );
        out(
            &g,
            Array::from_vec(vec![2], vec![0u8, u8::MAX]).unwrap(),
            &ints,
        );
        out(
            &g,
            Array::from_vec(vec![2], vec![0u16, u16::MAX]).unwrap(),
            &ints,
        );
        out(
            &g,
            Array::from_vec(vec![2], vec![0u32, u32::MAX]).unwrap(),
            &ints,
        );
        out(
            &g,
            Array::from_vec(vec![2], vec![0u64, u64::MAX]).unwrap(),
            &ints,
        );
        out(
            &g,
            Array::from_vec(vec![2], vec![false, true]).unwrap(),
            &[0.0, 1.0],
        );
        g.output(
            g.random_uniform(DType::F64, [3], 1, -f64::MAX, 1e308)
                .unwrap(),
        )
        .unwrap();
        g.output(g.random_normal(DType::F64, [3], 2, -1e300, 5e-324).unwrap())
            .unwrap();
        g.into_graph()
    };
    vec![
        ("mlp", mlp),
        ("cnn", cnn),
        ("attention", attention),
        ("every_dtype", every_dtype),
        ("extremes", extremes),
    ]
}

fn feeds_for(graph: &Graph) -> Vec<(String, Array)> {
    kiln_tests::feeds_for(graph, 2, 3)
}

fn run_all(graph: &Graph) -> Vec<Array> {
    let feeds = feeds_for(graph);
    let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
    let s = Session::new(graph, Device::Reference).unwrap();
    s.run_outputs(&refs)
        .unwrap()
        .into_iter()
        .map(|(_, a)| a)
        .collect()
}

fn same_bits(a: &Array, b: &Array) -> bool {
    a.shape() == b.shape()
        && a.dtype() == b.dtype()
        && a.data().to_le_bytes() == b.data().to_le_bytes()
}

#[test]
fn save_load_save_is_byte_identical_and_runs_the_same() {
    let dir = std::env::temp_dir().join(format!("kiln-format-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, graph) in models() {
        let path = dir.join(format!("{name}.kiln"));
        graph.save(&path).unwrap();
        let first = std::fs::read(&path).unwrap();
        let loaded = Graph::load(&path).unwrap();
        assert_eq!(
            loaded.to_bytes().unwrap(),
            first,
            "{name}: save -> load -> save differs"
        );
        assert_eq!(loaded.len(), graph.len());
        assert_eq!(
            loaded.to_string(),
            graph.to_string(),
            "{name}: text form differs"
        );
        let (a, b) = (run_all(&graph), run_all(&loaded));
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert!(same_bits(x, y), "{name}: outputs differ after loading");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn source_locations_survive_the_file() {
    let (_, graph) = models().remove(0);
    let loaded = Graph::from_bytes(&graph.to_bytes().unwrap(), "mem").unwrap();
    let w = loaded.node(loaded.find("fc1/weight").unwrap());
    assert_eq!(w.location.file, file!());
}

fn kind_of(bytes: &[u8]) -> Result<FileErrorKind, String> {
    match Graph::from_bytes(bytes, "damaged.kiln") {
        Err(Error::File { kind, path, detail }) => {
            assert_eq!(path, "damaged.kiln");
            assert!(!detail.is_empty());
            Ok(kind)
        }
        Err(other) => Err(format!("not a file error: {other}")),
        Ok(_) => Err("loaded".into()),
    }
}

#[test]
fn every_truncation_is_reported_as_truncated() {
    let bytes = models().remove(3).1.to_bytes().unwrap();
    for cut in 0..bytes.len() {
        assert_eq!(
            kind_of(&bytes[..cut]),
            Ok(FileErrorKind::Truncated),
            "cut at {cut} of {}",
            bytes.len()
        );
    }
}

#[test]
fn wrong_magic() {
    assert_eq!(
        kind_of(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR and so on"),
        Ok(FileErrorKind::BadMagic)
    );
    assert_eq!(
        kind_of(&[0x93, b'N', b'U', b'M', b'P', b'Y', 1, 0, 0x76, 0]),
        Ok(FileErrorKind::BadMagic)
    );
    // A valid safetensors file that holds no kiln graph.
    let header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(header);
    st.extend_from_slice(&1.0f32.to_le_bytes());
    assert_eq!(kind_of(&st), Ok(FileErrorKind::BadMagic));
    let e = Graph::from_bytes(&st, "weights.safetensors")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("weights.safetensors") && e.contains("without a kiln graph"),
        "{e}"
    );
}

/// Replaces `from` by `to` (same length) in the graph JSON inside the file.
fn patch(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = find(bytes, from);
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to.as_bytes());
    out
}

/// The byte offset of the first `what` in `bytes`.
fn find(bytes: &[u8], what: &str) -> usize {
    bytes
        .windows(what.len())
        .position(|w| w == what.as_bytes())
        .unwrap_or_else(|| panic!("'{what}' not in file"))
}

#[test]
fn newer_version_is_refused_with_both_versions_named() {
    let bytes = models().remove(0).1.to_bytes().unwrap();
    let newer = patch(&bytes, r#"\"version\":1"#, r#"\"version\":7"#);
    assert_eq!(kind_of(&newer), Ok(FileErrorKind::UnsupportedVersion));
    let e = Graph::from_bytes(&newer, "new.kiln")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("format version 7") && e.contains("reads versions 1 to 2"),
        "{e}"
    );
}

#[test]
fn unknown_op_cycle_and_type_mismatch_are_corrupt() {
    let bytes = models().remove(0).1.to_bytes().unwrap();
    let unknown = patch(&bytes, r#"\"op\":\"matmul\""#, r#"\"op\":\"matmux\""#);
    assert_eq!(kind_of(&unknown), Ok(FileErrorKind::Corrupt));
    let e = Graph::from_bytes(&unknown, "f").unwrap_err().to_string();
    assert!(
        e.contains("unknown op 'matmux'") && e.contains("fc1/matmul_0"),
        "{e}"
    );

    // Point the first matmul at a later node: a cycle or dangling edge.
    let at = find(&bytes, r#"\"name\":\"fc1/matmul_0\""#);
    let inputs_at = at + find(&bytes[at..], r#"\"inputs\":["#) + r#"\"inputs\":["#.len();
    let mut cyclic = bytes.clone();
    cyclic[inputs_at] = b'9';
    assert_eq!(kind_of(&cyclic), Ok(FileErrorKind::Corrupt));
    let e = Graph::from_bytes(&cyclic, "f").unwrap_err().to_string();
    assert!(e.contains("not defined before it"), "{e}");

    let mismatch = patch(
        &bytes,
        r#"\"shape\":[\"batch\",6]"#,
        r#"\"shape\":[\"batch\",5]"#,
    );
    assert_eq!(kind_of(&mismatch), Ok(FileErrorKind::Corrupt));
}

#[test]
fn flipping_any_byte_never_panics() {
    let bytes = models().remove(3).1.to_bytes().unwrap();
    let mut loaded = 0;
    for i in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] ^= mask;
            match Graph::from_bytes(&b, "flip") {
                Ok(g) => {
                    loaded += 1;
                    // Whatever loads must also save.
                    g.to_bytes().unwrap();
                }
                Err(Error::File { .. }) => {}
                Err(other) => panic!("byte {i} ^ {mask:#x}: not a file error: {other}"),
            }
        }
    }
    // Flips inside weight data or inside names still load; most flips are caught.
    assert!(
        loaded < bytes.len(),
        "{loaded} of {} flipped files loaded",
        bytes.len() * 3
    );
}

#[test]
fn saving_over_a_file_is_atomic() {
    let dir = std::env::temp_dir().join(format!("kiln-atomic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.kiln");
    let (_, graph) = models().remove(0);
    graph.save(&path).unwrap();
    let before = std::fs::read(&path).unwrap();
    // A save that fails (the target is a directory) leaves no partial file behind.
    let bad = dir.join("sub");
    std::fs::create_dir_all(&bad).unwrap();
    assert!(graph.save(&bad).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let e = Graph::load("/nonexistent/model.kiln").unwrap_err();
    assert!(matches!(e, Error::Io { .. }));
    assert!(e.to_string().contains("/nonexistent/model.kiln"));
}
