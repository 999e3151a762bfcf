//! What the tests fetch for themselves, so that `cargo test --workspace`
//! in a fresh clone needs no manual step: the ONNX backend test data
//! (`scripts/onnx-test-data.sh`) and NVRTC (`scripts/nvrtc.sh`), each into
//! `target/` once, under a lock so that tests and test binaries running at
//! the same time wait for one download. Where a fetch fails the test fails
//! with what to run by hand. Standard library only: the `kiln` crate's
//! tests include this file too (`#[path]`), as they cannot depend on
//! `kiln-tests`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root: the parent of the crate being tested (`tests/`
/// and `runtime/` both sit one level down), else the current directory
/// (a test binary carried to another checkout and run from its root).
pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if root.join("scripts").is_dir() {
        root
    } else {
        PathBuf::from(".")
    }
}

/// Runs `scripts/SCRIPT DEST` (DEST under the workspace root) holding the
/// lock file `DEST.lock`, and returns the directory the script prints as
/// its last line, made absolute. A script that fails, or prints no
/// existing directory, panics with its error output and `help`.
pub fn fetch(script: &str, dest: &str, help: &str) -> PathBuf {
    let root = workspace_root();
    let dest_path = root.join(dest);
    if let Some(parent) = dest_path.parent() {
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}\n{help}", parent.display()));
    }
    let lock_path = root.join(format!("{dest}.lock"));
    let lock = std::fs::File::create(&lock_path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}\n{help}", lock_path.display()));
    // Held until `lock` is dropped at the end of this function.
    lock.lock()
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}\n{help}", lock_path.display()));
    let out = Command::new("bash")
        .arg(root.join("scripts").join(script))
        .arg(dest)
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/{script} (bash): {e}\n{help}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("").trim();
    let dir = root.join(last);
    if !out.status.success() || last.is_empty() || !dir.is_dir() {
        panic!(
            "scripts/{script} {dest} failed ({}):\n{}{}\n{help}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir.canonicalize().unwrap_or(dir)
}

/// The ONNX backend test data directory (the one holding `node/`):
/// `KILN_ONNX_DATA` when set, else fetched from the pinned onnx wheel into
/// `target/onnx-test-data` by `scripts/onnx-test-data.sh` (once; later
/// runs find it there). Panics, saying what to run, when neither works.
pub fn onnx_test_data() -> PathBuf {
    let dir = match std::env::var_os("KILN_ONNX_DATA") {
        Some(d) => PathBuf::from(d),
        None => fetch(
            "onnx-test-data.sh",
            "target/onnx-test-data",
            "The ONNX tests need the ONNX backend test data (the pinned onnx==1.22.0 \
             wheel from PyPI; needs python3 with pip or venv, and network once). Run \
             `scripts/onnx-test-data.sh target/onnx-test-data` from the repository root, \
             or set KILN_ONNX_DATA to an onnx/backend/test/data directory.",
        ),
    };
    assert!(
        dir.join("node").is_dir(),
        "{} has no node/ directory: run `scripts/onnx-test-data.sh target/onnx-test-data` \
         (or point KILN_ONNX_DATA at an onnx/backend/test/data directory)",
        dir.display()
    );
    dir
}
