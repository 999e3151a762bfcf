//! Files that are not what they claim, one test per case: paths that are
//! not regular files (`/dev/zero`, a directory, a FIFO), headers that
//! declare more than the file holds, a flipped byte in a weight, a tensor
//! removed from a file's table; and the messages around them — I/O errors
//! said once, unknown pass names, constants printed in their own dtype,
//! the memory-plan picture labelled. Each checks the error's kind and that
//! its message names the culprit, and that bad input fails fast.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kiln::graph::format::{crc32c, tensors_to_bytes};
use kiln::graph::{Error as GraphError, FileErrorKind, Op};
use kiln::prelude::*;
use kiln::Error;
use serde_json::Value;

// ---------------------------------------------------------------- helpers

/// A fresh directory for this test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-bad-files-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Asserts that `msg` contains every string of `parts`.
#[track_caller]
fn mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message lacks '{p}': {msg}");
    }
}

/// Runs `f` on another thread and fails the test (instead of hanging it)
/// unless it returns within `limit`.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("did not finish within {limit:?}"))
}

/// A small MLP with weights `fc1/weight`, `fc1/bias`, `fc2/weight`, `fc2/bias`.
fn model() -> Graph {
    kiln_tests::mlp(&[6, 5, 3])
}

/// The header of safetensors `bytes` (tensor entries and `__metadata__`)
/// and where the data starts.
fn header(bytes: &[u8]) -> (serde_json::Map<String, Value>, usize) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&bytes[8..8 + n]).unwrap(), 8 + n)
}

/// Reassembles a safetensors file from a header and its data bytes.
fn assemble(header: &serde_json::Map<String, Value>, data: &[u8]) -> Vec<u8> {
    let text = serde_json::to_string(header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(data);
    out
}

/// The byte range in `bytes` of tensor `name`'s data.
fn tensor_range(bytes: &[u8], name: &str) -> std::ops::Range<usize> {
    let (h, start) = header(bytes);
    let off = &h[name]["data_offsets"];
    start + off[0].as_u64().unwrap() as usize..start + off[1].as_u64().unwrap() as usize
}

/// The graph JSON stored in a `.kiln` file's metadata.
fn graph_json(bytes: &[u8]) -> Value {
    let (h, _) = header(bytes);
    serde_json::from_str(h["__metadata__"]["kiln"].as_str().unwrap()).unwrap()
}

/// `graph` as a `.kiln` file written the way kiln did before it kept
/// checksums: the same tensors, the graph JSON without `crc32c`.
fn without_checksums(graph: &Graph) -> Vec<u8> {
    let bytes = graph.to_bytes().unwrap();
    let mut json = graph_json(&bytes);
    assert!(json.as_object_mut().unwrap().remove("crc32c").is_some());
    let weights: BTreeMap<String, Array> = graph
        .topo_order()
        .into_iter()
        .filter_map(|id| {
            let n = graph.node(id);
            match &n.op {
                Op::Constant { value: w } | Op::Variable { init: w, .. } => {
                    Some((n.name.clone(), (*w.0).clone()))
                }
                _ => None,
            }
        })
        .collect();
    let refs: Vec<(&str, &Array)> = weights.iter().map(|(n, a)| (n.as_str(), a)).collect();
    tensors_to_bytes(&refs, "kiln", &json.to_string()).unwrap()
}

/// A file error's kind and message for `bytes` loaded as `origin`.
#[track_caller]
fn file_error(bytes: &[u8], origin: &str) -> (FileErrorKind, String) {
    match Graph::from_bytes(bytes, origin) {
        Err(e @ GraphError::File { .. }) => {
            let msg = e.to_string();
            let GraphError::File { kind, .. } = e else {
                unreachable!()
            };
            mentions(&msg, &[origin]);
            (kind, msg)
        }
        Err(other) => panic!("expected a file error, got {other:?}"),
        Ok(_) => panic!("the file loaded"),
    }
}

/// A session over a graph with two variables, `w` and `b`.
fn session() -> Session {
    let g = GraphBuilder::new();
    let w = g
        .variable(
            "w",
            Array::from_vec(vec![3], vec![1.0f32, 2.0, 3.0]).unwrap(),
        )
        .unwrap();
    let b = g.variable("b", Array::scalar(0.5f32)).unwrap();
    w.add(b).unwrap().named("y").unwrap();
    Session::new(&g.into_graph(), Device::Reference).unwrap()
}

// ---------------------------------------------------------------- what is not a regular file

/// `/dev/zero` never ends and a directory has no bytes: both are refused
/// at once as a `.kiln` model, an `.npy` array and a checkpoint, with a
/// message saying what the path is.
#[test]
fn dev_zero_and_a_directory_are_refused_at_once() {
    let dir = scratch("irregular");
    let cases = [
        (PathBuf::from("/dev/zero"), "a character device"),
        (dir.clone(), "a directory"),
    ];
    for (path, what) in cases {
        let p = path.clone();
        let start = Instant::now();
        let e = within(Duration::from_secs(10), move || {
            Graph::load(&p).unwrap_err()
        });
        assert!(matches!(e, GraphError::Io { .. }), "{e:?}");
        mentions(
            &e.to_string(),
            &[&path.display().to_string(), what, "not a regular file"],
        );
        let p = path.clone();
        let e = within(Duration::from_secs(10), move || {
            kiln::npy::read(&p).unwrap_err()
        });
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        mentions(&e.to_string(), &[&path.display().to_string(), what]);
        let p = path.clone();
        let e = within(Duration::from_secs(10), move || {
            session().restore_checkpoint(&p).unwrap_err()
        });
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        mentions(&e.to_string(), &[&path.display().to_string(), what]);
        assert!(start.elapsed() < Duration::from_secs(10));
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Opening a FIFO waits for a writer that never comes: it is refused
/// without opening it.
#[cfg(unix)]
#[test]
fn a_fifo_is_refused_without_waiting_for_a_writer() {
    let dir = scratch("fifo");
    let fifo = dir.join("model.kiln");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let p = fifo.clone();
    let e = within(Duration::from_secs(10), move || {
        Graph::load(&p).unwrap_err()
    });
    mentions(
        &e.to_string(),
        &["model.kiln", "a FIFO, not a regular file"],
    );
    let p = fifo.clone();
    let e = within(Duration::from_secs(10), move || {
        kiln::npy::read(&p).unwrap_err()
    });
    mentions(&e.to_string(), &["model.kiln", "a FIFO"]);
    std::fs::remove_dir_all(&dir).ok();
}

/// A header that declares far more bytes than the file has fails as
/// truncated, without allocating what it declares.
#[test]
fn headers_declaring_more_than_the_file_holds_are_bounded() {
    let dir = scratch("oversized");
    // A .kiln whose safetensors header length is 2^40.
    let path = dir.join("huge-header.kiln");
    let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
    bytes.extend_from_slice(br#"{"__metadata__":{"kiln":""#);
    std::fs::write(&path, &bytes).unwrap();
    let e = Graph::load(&path).unwrap_err();
    mentions(&e.to_string(), &["huge-header.kiln"]);
    assert!(
        matches!(
            e,
            GraphError::File {
                kind: FileErrorKind::Truncated | FileErrorKind::BadMagic,
                ..
            }
        ),
        "{e:?}"
    );
    // A .kiln cut short: the header promises every tensor, the file ends early.
    let good = model().to_bytes().unwrap();
    let path = dir.join("cut.kiln");
    std::fs::write(&path, &good[..good.len() - 40]).unwrap();
    let e = Graph::load(&path).unwrap_err();
    assert!(
        matches!(
            e,
            GraphError::File {
                kind: FileErrorKind::Truncated,
                ..
            }
        ),
        "{e:?}"
    );
    // An .npy (version 2.0) whose header length is 4 GiB - 1.
    let path = dir.join("huge-header.npy");
    let mut npy = b"\x93NUMPY\x02\x00".to_vec();
    npy.extend_from_slice(&u32::MAX.to_le_bytes());
    npy.extend_from_slice(b"{'descr': '<f4', ");
    std::fs::write(&path, &npy).unwrap();
    let e = kiln::npy::read(&path).unwrap_err();
    mentions(&e.to_string(), &["huge-header.npy", "truncated header"]);
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------- checksums

/// Every tensor's CRC-32C is stored with the graph, equal to the CRC of the
/// tensor's bytes in the file, and saving stays deterministic.
#[test]
fn checksums_are_stored_per_tensor_and_saving_is_deterministic() {
    let g = model();
    let bytes = g.to_bytes().unwrap();
    let sums = graph_json(&bytes)["crc32c"].clone();
    let sums = sums.as_object().expect("a crc32c map");
    let (h, _) = header(&bytes);
    let tensors: Vec<&String> = h.keys().filter(|k| *k != "__metadata__").collect();
    assert_eq!(sums.len(), tensors.len());
    for name in tensors {
        let want = format!("{:08x}", crc32c(&bytes[tensor_range(&bytes, name)]));
        assert_eq!(sums[name.as_str()], want.as_str(), "{name}");
    }
    let again = Graph::from_bytes(&bytes, "mem")
        .unwrap()
        .to_bytes()
        .unwrap();
    assert_eq!(bytes, again, "save -> load -> save changed the bytes");
}

/// One flipped bit in a weight is found on load and named, with the file.
#[test]
fn a_flipped_byte_in_a_weight_is_detected() {
    let mut bytes = model().to_bytes().unwrap();
    let r = tensor_range(&bytes, "fc1/weight");
    bytes[r.start + 7] ^= 0x10;
    let (kind, msg) = file_error(&bytes, "flipped.kiln");
    assert_eq!(kind, FileErrorKind::Corrupt);
    mentions(&msg, &["tensor 'fc1/weight' is corrupt", "CRC-32C"]);
    // On disk too.
    let dir = scratch("flipped");
    let path = dir.join("flipped.kiln");
    std::fs::write(&path, &bytes).unwrap();
    let e = Graph::load(&path).unwrap_err();
    mentions(&e.to_string(), &[&path.display().to_string(), "fc1/weight"]);
    std::fs::remove_dir_all(&dir).ok();
}

/// A file written before kiln kept checksums still loads (unchecked), to
/// the same graph.
#[test]
fn a_file_without_checksums_still_loads() {
    let g = model();
    let old = without_checksums(&g);
    assert!(!String::from_utf8_lossy(&old).contains("crc32c"));
    let loaded = Graph::from_bytes(&old, "old.kiln").unwrap();
    assert_eq!(loaded.to_bytes().unwrap(), g.to_bytes().unwrap());
}

/// A checksum that is not 8 hex digits, a tensor without one, and one for
/// a tensor the file lacks are each named.
#[test]
fn malformed_checksum_maps_are_named() {
    let bytes = model().to_bytes().unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let (mut h, start) = header(&bytes);
        let mut json = graph_json(&bytes);
        f(json["crc32c"].as_object_mut().unwrap());
        h["__metadata__"]["kiln"] = Value::String(json.to_string());
        assemble(&h, &bytes[start..])
    };
    let (_, msg) = file_error(
        &edit(&|m| {
            m.insert("fc2/bias".into(), "xyz".into());
        }),
        "a.kiln",
    );
    mentions(&msg, &["fc2/bias", "not 8 hex digits"]);
    let (_, msg) = file_error(
        &edit(&|m| {
            m.remove("fc2/bias");
        }),
        "b.kiln",
    );
    mentions(&msg, &["tensor 'fc2/bias' has no checksum"]);
    let (_, msg) = file_error(
        &edit(&|m| {
            m.insert("ghost".into(), "00000000".into());
        }),
        "c.kiln",
    );
    mentions(&msg, &["'ghost'", "does not hold"]);
}

/// Checkpoints carry checksums too: a flipped byte is refused and names
/// the variable; a checkpoint written before checksums still restores.
#[test]
fn a_checkpoint_with_a_flipped_byte_is_refused() {
    let dir = scratch("checkpoint");
    let path = dir.join("a.ckpt");
    let mut s = session();
    s.save_checkpoint(&path).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let (h, _) = header(&bytes);
    assert!(h["__metadata__"]["kiln.checkpoint"]
        .as_str()
        .unwrap()
        .contains("crc32c"));
    s.restore_checkpoint(&path).unwrap();
    let r = tensor_range(&bytes, "w");
    bytes[r.start + 5] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let e = s.restore_checkpoint(&path).unwrap_err();
    mentions(&e.to_string(), &["a.ckpt", "tensor 'w' is corrupt"]);
    // The old marker: just "1", no checksums; the flipped byte goes unseen.
    let w = Array::from_vec(vec![3], vec![7.0f32, 8.0, 9.0]).unwrap();
    let b = Array::scalar(1.5f32);
    let old = tensors_to_bytes(&[("w", &w), ("b", &b)], "kiln.checkpoint", "1").unwrap();
    std::fs::write(&path, old).unwrap();
    s.restore_checkpoint(&path).unwrap();
    assert_eq!(
        s.variable("w").unwrap().as_slice::<f32>().unwrap(),
        &[7.0, 8.0, 9.0]
    );
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------- a tensor removed from the table

/// A weight's entry removed from the safetensors header (its bytes left in
/// place) is named, not blamed on the tensor after it.
#[test]
fn a_tensor_removed_from_the_table_is_named() {
    let bytes = model().to_bytes().unwrap();
    let (mut h, start) = header(&bytes);
    assert!(h.remove("fc1/weight").is_some());
    let (kind, msg) = file_error(&assemble(&h, &bytes[start..]), "deleted.kiln");
    assert_eq!(kind, FileErrorKind::Corrupt);
    mentions(&msg, &["tensor 'fc1/weight' is missing"]);
    assert!(!msg.contains("fc2/bias"), "{msg}");
    // Without a graph to say what is missing (a checkpoint), the gap is named.
    let w = Array::from_vec(vec![3], vec![1.0f32, 2.0, 3.0]).unwrap();
    let b = Array::scalar(0.5f32);
    let ckpt = tensors_to_bytes(&[("a", &w), ("b", &b)], "kiln.checkpoint", "1").unwrap();
    let (mut h, start) = header(&ckpt);
    assert!(h.remove("a").is_some());
    let dir = scratch("deleted");
    let path = dir.join("gap.ckpt");
    std::fs::write(&path, assemble(&h, &ckpt[start..])).unwrap();
    let e = session().restore_checkpoint(&path).unwrap_err();
    mentions(
        &e.to_string(),
        &["gap.ckpt", "bytes 0..12", "belong to no tensor"],
    );
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------- messages

/// An I/O error says what was done to which file and the OS's reason, once,
/// and is not also a `source()` (which error chains would print again).
#[test]
fn io_errors_name_the_file_and_say_the_reason_once() {
    let e = Graph::load("/nonexistent/model.kiln").unwrap_err();
    assert_eq!(
        e.to_string(),
        "reading /nonexistent/model.kiln: No such file or directory (os error 2)"
    );
    assert!(std::error::Error::source(&e).is_none());
    let e = kiln::npy::read("/nonexistent/x.npy").unwrap_err();
    assert_eq!(e.to_string().matches("os error 2").count(), 1, "{e}");
    mentions(&e.to_string(), &["reading /nonexistent/x.npy"]);
    assert!(std::error::Error::source(&e).is_none());
    let e = kiln::npy::write("/nonexistent/out.npy", &Array::scalar(1.0f32)).unwrap_err();
    mentions(&e.to_string(), &["writing /nonexistent/out.npy"]);
}

/// Disabling a pass that does not exist says so and lists the passes.
#[test]
fn an_unknown_pass_name_lists_the_passes() {
    let mut p = kiln_optimizer::passes::default_pipeline(false);
    let e = p.disable("bogus").unwrap_err();
    assert!(
        matches!(&e, kiln_optimizer::Error::UnknownPass { name, .. } if name == "bogus"),
        "{e:?}"
    );
    let msg = e.to_string();
    mentions(
        &msg,
        &[
            "no pass named 'bogus'",
            "fold_constants",
            "eliminate_dead_code",
        ],
    );
    assert!(!msg.contains("verification"), "{msg}");
    let e = p.only("bogus").unwrap_err();
    mentions(&e.to_string(), &["no pass named 'bogus'"]);
    // Through compile, as `--disable-pass` does.
    let g = model();
    let opts = kiln_optimizer::CompileOptions {
        disabled_passes: vec!["bogus".into()],
        ..Default::default()
    };
    let bindings = [("batch".to_string(), 1)].into_iter().collect();
    let e = kiln_optimizer::compile(&g, g.outputs(), &bindings, &opts)
        .err()
        .expect("an unknown pass is an error");
    mentions(&e.to_string(), &["no pass named 'bogus'"]);
}

/// Small constants print in their own dtype: integers as integers (an i64
/// beyond 2^53 exactly), bools as words, floats as the shortest decimal.
#[test]
fn constants_print_in_their_dtype() {
    let g = GraphBuilder::new();
    let i = g
        .constant(Array::from_vec(vec![3], vec![3i64, -7, (1 << 53) + 1]).unwrap())
        .unwrap()
        .named("ints")
        .unwrap();
    let b = g
        .constant(Array::from_vec(vec![2], vec![true, false]).unwrap())
        .unwrap()
        .named("flags")
        .unwrap();
    let f = g
        .constant(Array::from_vec(vec![2], vec![0.1f32, 2.0]).unwrap())
        .unwrap()
        .named("floats")
        .unwrap();
    let (i, b, f) = (i.id(), b.id(), f.id());
    let graph = g.into_graph();
    let line = graph.node_line(i);
    mentions(&line, &["value=[3, -7, 9007199254740993]"]);
    mentions(&graph.node_line(b), &["value=[true, false]"]);
    mentions(&graph.node_line(f), &["value=[0.1, 2.0]"]);
}

/// The plan's picture names its buffers (in the bar or a legend) and
/// labels both axes.
#[test]
fn the_plan_picture_is_labelled() {
    let g = kiln_tests::mlp(&[64, 32, 10]);
    let bindings = [("batch".to_string(), 4)].into_iter().collect();
    let c = kiln_optimizer::compile(&g, g.outputs(), &bindings, &Default::default()).unwrap();
    let svg = kiln_optimizer::svg::plan_svg(&c.program, "mlp.kiln");
    mentions(&svg, &["kernel step", "arena offset"]);
    let buffers = kiln_optimizer::svg::arena_buffers(&c.program);
    assert!(!buffers.is_empty());
    // Every buffer's node is named in visible text, outside the tooltips.
    let visible: String = svg
        .split("<title>")
        .map(|part| part.split_once("</title>").map_or(part, |(_, rest)| rest))
        .collect();
    for (b, ..) in buffers {
        let node = &c.program.buffer(b).node;
        assert!(
            visible.contains(node.as_str()),
            "{node} is not labelled:\n{svg}"
        );
    }
}
