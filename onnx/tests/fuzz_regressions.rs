//! Inputs the fuzzer (`fuzz/`, target `onnx_import`) once crashed the
//! importer with: each must now import or fail with an error, not panic.

#[test]
fn former_fuzz_crashes_are_errors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let bytes = std::fs::read(e.path()).unwrap();
        let r = std::panic::catch_unwind(|| {
            kiln_onnx::import_bytes(&bytes, &kiln_onnx::ImportOptions::default()).map(|_| ())
        });
        assert!(r.is_ok(), "{} panics the importer", e.path().display());
        n += 1;
    }
    assert!(n > 0, "no regression inputs in {}", dir.display());
}
