//! Builds `kiln-rt` as a static library (`libkiln_rt.a`) for `kiln
//! compile` and `kiln::aot::Build` to ship next to the objects they write:
//! ahead-of-time binaries link it for the executor, GEMM, convolutions and
//! support functions. It is a separate `cargo rustc` run (release, LTO,
//! panic = abort, so the library holds only what its C entry points reach)
//! in a target directory of its own beside the workspace's, shared by the
//! debug and release builds of kiln. Without it (no cargo, an offline
//! registry without the crates) kiln still builds, and ahead-of-time
//! compilation says the library is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    let rt = manifest.join("../rt");
    println!("cargo:rerun-if-changed={}", rt.display());
    println!(
        "cargo:rerun-if-changed={}",
        manifest.join("../Cargo.lock").display()
    );
    println!("cargo:rerun-if-env-changed=KILN_RT_SKIP");
    let lib = out.join("libkiln_rt.a");
    let _ = std::fs::remove_file(&lib);
    if std::env::var_os("KILN_RT_SKIP").is_some() {
        return write_missing(&lib, "KILN_RT_SKIP was set");
    }
    // OUT_DIR is TARGET/PROFILE/build/kiln-HASH/out: share TARGET/kiln-rt.
    let target_dir = out
        .ancestors()
        .nth(4)
        .map(|t| t.join("kiln-rt"))
        .unwrap_or_else(|| out.join("kiln-rt"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["rustc", "--release", "--lib", "--crate-type", "staticlib"])
        .arg("--manifest-path")
        .arg(rt.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .args(["--locked", "--offline", "--quiet"])
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .status();
    let built = target_dir.join("release/libkiln_rt.a");
    match status {
        Ok(s) if s.success() && built.exists() => {
            std::fs::copy(&built, &lib).expect("copying libkiln_rt.a into OUT_DIR");
            if let Err(e) = localize(&lib, &out.join("rt-member")) {
                println!(
                    "cargo:warning=libkiln_rt.a keeps its Rust symbols global ({e}); \
                     programs linking it and another Rust library may see duplicates"
                );
            }
            // The standard library's debug information is most of the
            // archive and no use to a model binary.
            let _ = quiet("strip").arg("--strip-debug").arg(&lib).status();
        }
        Ok(s) => write_missing(&lib, &format!("cargo rustc -p kiln-rt exited with {s}")),
        Err(e) => write_missing(&lib, &format!("cargo did not run: {e}")),
    }
}

/// A command with its diagnostics discarded (binutils complain about the
/// LLVM bitcode sections of Rust objects).
fn quiet(program: &str) -> Command {
    let mut c = Command::new(program);
    c.stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    c
}

/// Makes every symbol of the library's Rust object local except its C
/// entry points (`kiln_*`): the standard library inside it then cannot
/// clash with a Rust program's own (or another Rust library's) when both
/// are linked.
fn localize(lib: &Path, dir: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let list = Command::new("ar")
        .arg("t")
        .arg(lib)
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("ar: {e}"))?;
    let names = String::from_utf8_lossy(&list.stdout);
    let member = names
        .lines()
        .find(|n| n.starts_with("kiln_rt-") && n.ends_with(".o"))
        .ok_or("no kiln_rt object in the archive")?
        .to_string();
    let ok = |c: &mut Command, what: &str| -> Result<(), String> {
        match c.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("{what} exited with {s}")),
            Err(e) => Err(format!("{what}: {e}")),
        }
    };
    ok(
        quiet("ar").current_dir(dir).arg("x").arg(lib).arg(&member),
        "ar x",
    )?;
    ok(
        quiet("objcopy")
            .current_dir(dir)
            .args([
                "-w",
                "--keep-global-symbol=kiln_*",
                "--keep-global-symbol=DW.ref.*",
            ])
            .arg(&member),
        "objcopy",
    )?;
    ok(
        quiet("ar").current_dir(dir).arg("r").arg(lib).arg(&member),
        "ar r",
    )?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// An empty library file: `kiln::aot` reports it as missing, with `why`.
fn write_missing(lib: &Path, why: &str) {
    println!(
        "cargo:warning=libkiln_rt.a was not built ({why}); ahead-of-time compilation will say so"
    );
    std::fs::write(lib, b"").expect("writing OUT_DIR");
    std::fs::write(lib.with_extension("why"), why).expect("writing OUT_DIR");
}
