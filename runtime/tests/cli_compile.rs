//! Tests of `kiln compile` and the standalone program `--exe` builds:
//! sizes refused before anything is written, no change to the output
//! directory when a step fails, the directory created, what was written
//! listed, the header's output names, and the standalone program's help,
//! byte orders, output names and output directory. The tests that build a
//! program need a C compiler (`cc`) and, without one, fail saying what to
//! install.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn mlp() -> String {
    repo().join("examples/mlp.kiln").display().to_string()
}

/// `kiln ARGS` with `env` set (a `None` value removes the variable).
fn kiln_env(args: &[&str], env: &[(&str, Option<&str>)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(args).current_dir(repo());
    for (k, v) in env {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.output().expect("kiln runs")
}

fn kiln(args: &[&str]) -> Output {
    kiln_env(args, &[])
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh, empty directory for one test.
fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-cli-compile-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Fails, saying what to install, where there is no C compiler: the
/// standalone program is built with one.
fn need_cc() {
    assert!(
        Command::new("cc")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "`kiln compile --exe` builds with a C compiler and `cc --version` does not run: \
         install one (Debian/Ubuntu: `apt-get install build-essential`) and put `cc` on PATH"
    );
}

/// Every entry under `dir`: name -> (bytes, modification time).
fn snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, SystemTime)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            let bytes = if m.is_file() {
                std::fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            (
                e.file_name().to_string_lossy().into_owned(),
                (bytes, m.modified().unwrap()),
            )
        })
        .collect()
}

/// An output directory holding an earlier build's files.
fn earlier_build(dir: &Path) -> BTreeMap<String, (Vec<u8>, SystemTime)> {
    std::fs::create_dir_all(dir).unwrap();
    for (f, text) in [
        ("mlp.o", "an earlier object"),
        ("mlp.h", "an earlier header"),
        ("libkiln_rt.a", "an earlier library"),
        ("mlp_main.c", "an earlier source"),
        ("mlp", "an earlier program"),
    ] {
        std::fs::write(dir.join(f), text).unwrap();
    }
    snapshot(dir)
}

#[test]
fn a_huge_dim_is_refused_before_anything_is_written() {
    let tmp = temp_dir("huge");
    let fresh = tmp.join("fresh");
    let kept = tmp.join("kept");
    let before = earlier_build(&kept);
    need_cc();
    for (dir, exe) in [
        (&fresh, &[][..]),
        (&kept, &[][..]),
        (&fresh, &["--exe"][..]),
        (&kept, &["--exe"][..]),
    ] {
        let mut args = vec![
            "compile",
            &mlp(),
            "-o",
            dir.to_str().unwrap(),
            "--dim",
            "batch=100000000000",
        ]
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
        args.extend(exe.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = kiln(&args);
        assert!(!r.status.success(), "{}", stdout(&r));
        let e = stderr(&r);
        assert!(
            e.contains("with batch=100000000000") && e.contains("TiB arena"),
            "{e}"
        );
        assert!(
            e.lines().count() <= 2,
            "one clear error, not a link log: {e}"
        );
        assert!(!e.contains("panicked"), "{e}");
    }
    assert!(!fresh.exists(), "{} was created", fresh.display());
    assert_eq!(snapshot(&kept), before, "{} changed", kept.display());
    // A size past what any machine addresses: an error too, not a panic.
    let r = kiln(&[
        "compile",
        &mlp(),
        "-o",
        fresh.to_str().unwrap(),
        "--dim",
        "batch=4611686018427387904",
    ]);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("too large"), "{}", stderr(&r));
    assert!(!fresh.exists());
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn exe_without_a_c_compiler_changes_nothing() {
    let tmp = temp_dir("nocc");
    let dir = tmp.join("build");
    let before = earlier_build(&dir);
    let empty = tmp.join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let o = dir.to_str().unwrap();
    let args = ["compile", &mlp(), "-o", o, "--dim", "batch=1", "--exe"];
    // $CC naming nothing, and no `cc` on PATH.
    for env in [
        vec![("CC", Some("/nonexistent/cc"))],
        vec![("CC", None), ("PATH", Some(empty.to_str().unwrap()))],
    ] {
        let r = kiln_env(&args, &env);
        assert!(!r.status.success(), "{env:?}: {}", stdout(&r));
        let e = stderr(&r);
        assert!(
            e.contains("C compiler") && e.contains("did not run") && e.contains("CC="),
            "{env:?}: {e}"
        );
        assert_eq!(stdout(&r), "", "{env:?}: nothing reported as done");
        assert_eq!(snapshot(&dir), before, "{env:?}: {} changed", dir.display());
    }
    // Into a missing directory: it is not created.
    let missing = tmp.join("missing");
    let r = kiln_env(
        &[
            "compile",
            &mlp(),
            "-o",
            missing.to_str().unwrap(),
            "--dim",
            "batch=1",
            "--exe",
        ],
        &[("CC", Some("/nonexistent/cc"))],
    );
    assert!(!r.status.success());
    assert!(!missing.exists());
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn a_failed_build_leaves_the_directory_as_it_was() {
    let tmp = temp_dir("ccfails");
    // A compiler that answers --version and fails to compile.
    let fake = tmp.join("fake-cc");
    std::fs::write(
        &fake,
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo fake 1.0; exit 0; fi\n\
         echo 'fake-cc: cannot compile today' >&2\nexit 1\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let dir = tmp.join("build");
    let before = earlier_build(&dir);
    let missing = tmp.join("new/deeper");
    for d in [&dir, &missing] {
        let r = kiln_env(
            &[
                "compile",
                &mlp(),
                "-o",
                d.to_str().unwrap(),
                "--dim",
                "batch=1",
                "--exe",
            ],
            &[("CC", Some(fake.to_str().unwrap()))],
        );
        assert!(!r.status.success(), "{}", stdout(&r));
        assert!(
            stderr(&r).contains("cannot compile today"),
            "{}",
            stderr(&r)
        );
    }
    assert_eq!(snapshot(&dir), before, "{} changed", dir.display());
    assert!(!tmp.join("new").exists(), "the missing directory was left");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn compile_creates_the_directory_and_lists_what_it_wrote() {
    let tmp = temp_dir("create");
    let dir = tmp.join("a/b/build");
    let r = kiln(&[
        "compile",
        &mlp(),
        "-o",
        dir.to_str().unwrap(),
        "--dim",
        "batch=2",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let out = stdout(&r);
    assert!(
        out.contains(&format!("created {}", tmp.join("a").display())),
        "{out}"
    );
    for f in ["mlp.o", "mlp.h", "libkiln_rt.a"] {
        assert!(
            out.contains(&format!("wrote {}", dir.join(f).display())),
            "{f}: {out}"
        );
    }
    let mut files: Vec<String> = snapshot(&dir).into_keys().collect();
    files.sort();
    assert_eq!(files, ["libkiln_rt.a", "mlp.h", "mlp.o"]);
    // The header names the outputs (and keeps their indexed macros).
    let h = std::fs::read_to_string(dir.join("mlp.h")).unwrap();
    for line in [
        "#define MLP_OUTPUT_PROBS 0",
        "#define MLP_OUTPUT_PROBS_ELEMENTS 20",
        "#define MLP_OUTPUT_CLASS 1",
        "#define MLP_OUTPUT_CLASS_ELEMENTS 2",
        "#define MLP_OUTPUT_0_ELEMENTS 20",
        "#define MLP_INPUT_X_ELEMENTS 128",
        "/* output 0: \"probs\", float [2, 10] */",
    ] {
        assert!(h.contains(line), "{line}:\n{h}");
    }
    // An earlier --exe build's program is not rebuilt without --exe: said.
    std::fs::write(dir.join("mlp_main.c"), "an earlier source").unwrap();
    std::fs::write(dir.join("mlp"), "an earlier program").unwrap();
    let o = dir.to_str().unwrap();
    let r = kiln(&["compile", &mlp(), "-o", o, "--dim", "batch=2"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(
        stdout(&r).contains("is from an earlier --exe build"),
        "{}",
        stdout(&r)
    );
    // A --name that is no C identifier: a clear error, nothing written.
    let before = snapshot(&dir);
    let r = kiln(&[
        "compile",
        &mlp(),
        "-o",
        o,
        "--dim",
        "batch=2",
        "--name",
        "9x",
    ]);
    assert!(
        stderr(&r).contains("--name '9x' is not a C identifier"),
        "{}",
        stderr(&r)
    );
    assert_eq!(snapshot(&dir), before);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn compile_help_ends_with_an_example() {
    let r = kiln(&["compile", "--help"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let out = stdout(&r);
    let example = out.rfind("Example:").expect("an example");
    assert!(
        out[example..].contains("kiln compile examples/mlp.kiln -o build --dim batch=1 --exe"),
        "{out}"
    );
    assert!(out.contains("created if missing"), "{out}");
}

/// An f32 array as a big-endian `.npy` file.
fn big_endian_npy(a: &kiln::graph::Array) -> Vec<u8> {
    let shape = a
        .shape()
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let data: Vec<u8> = a
        .as_slice::<f32>()
        .unwrap()
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    npy_file(
        1,
        &format!("{{'descr': '>f4', 'fortran_order': False, 'shape': ({shape}), }}"),
        &data,
    )
}

#[test]
fn the_standalone_program_behaves_like_kiln_run() {
    need_cc();
    let tmp = temp_dir("exe");
    let build = tmp.join("build");
    let r = kiln(&[
        "compile",
        &mlp(),
        "-o",
        build.to_str().unwrap(),
        "--dim",
        "batch=1",
        "--exe",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let exe = build.join("mlp");
    assert!(
        stdout(&r).contains(&format!("wrote {}", exe.display())),
        "{}",
        stdout(&r)
    );
    assert!(stdout(&r).contains("mlp_main.c"), "{}", stdout(&r));
    // --help: inputs, outputs, files and an example.
    let h = Command::new(&exe).arg("--help").output().unwrap();
    assert!(h.status.success(), "{}", stderr(&h));
    let help = stdout(&h);
    for want in [
        "x=FILE.npy",
        "f32[1, 64]",
        "probs",
        "f32[1, 10]",
        "class.npy",
        "i64[1]",
        "Example:",
        "-o",
    ] {
        assert!(help.contains(want), "{want}: {help}");
    }
    assert_eq!(
        Command::new(&exe).arg("-h").output().unwrap().stdout,
        h.stdout
    );
    // Little-endian input; -o a directory that is not there yet.
    let digit = repo().join("examples/digit.npy");
    let le_out = tmp.join("le/nested");
    let run = Command::new(&exe)
        .arg(format!("x={}", digit.display()))
        .arg("-o")
        .arg(&le_out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let said = stdout(&run);
    assert!(
        said.contains(&format!(
            "wrote {} f32[1, 10]",
            le_out.join("probs.npy").display()
        )) && said.contains(&format!(
            "wrote {} i64[1]",
            le_out.join("class.npy").display()
        )),
        "{said}"
    );
    let graph = kiln::graph::Graph::load(repo().join("examples/mlp.kiln")).unwrap();
    let x = kiln::npy::read(&digit).unwrap();
    let want = kiln::Session::new(&graph, kiln::Device::Cpu)
        .unwrap()
        .run_outputs(&[("x", &x)])
        .unwrap();
    for (name, w) in &want {
        let got = kiln::npy::read(le_out.join(format!("{name}.npy"))).unwrap();
        assert!(got.same_bits(w), "{name}: {got:?} vs {w:?}");
    }
    // --time: one line of JSON with the run times, then the same outputs;
    // a time that is not a positive number is refused.
    let timed_out = tmp.join("timed");
    let run = Command::new(&exe)
        .arg(format!("x={}", digit.display()))
        .args(["--time", "0.05", "-o"])
        .arg(&timed_out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let said = stdout(&run);
    let line = said
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("a JSON line");
    let j: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(j["ok"], true, "{line}");
    assert!(j["runs"].as_u64().unwrap() >= 10, "{line}");
    let (med, p90) = (
        j["median_ms"].as_f64().unwrap(),
        j["p90_ms"].as_f64().unwrap(),
    );
    assert!(
        med > 0.0 && p90 >= med && j["first_run_ms"].as_f64().unwrap() > 0.0,
        "{line}"
    );
    for f in ["probs.npy", "class.npy"] {
        assert_eq!(
            std::fs::read(timed_out.join(f)).unwrap(),
            std::fs::read(le_out.join(f)).unwrap(),
            "{f}"
        );
    }
    for bad in ["0", "-1", "x", "nan"] {
        let r = Command::new(&exe)
            .arg(format!("x={}", digit.display()))
            .args(["--time", bad])
            .output()
            .unwrap();
        assert!(!r.status.success(), "--time {bad}");
        assert!(stderr(&r).contains("--time needs"), "{}", stderr(&r));
    }
    // The same digit, big-endian: what `kiln run` reads, the program reads.
    let be = tmp.join("digit_be.npy");
    std::fs::write(&be, big_endian_npy(&x)).unwrap();
    assert!(kiln::npy::read(&be).unwrap().same_bits(&x));
    let be_out = tmp.join("be");
    let run = Command::new(&exe)
        .arg(format!("x={}", be.display()))
        .arg("-o")
        .arg(&be_out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    for f in ["probs.npy", "class.npy"] {
        assert_eq!(
            std::fs::read(be_out.join(f)).unwrap(),
            std::fs::read(le_out.join(f)).unwrap(),
            "{f}"
        );
    }
    // -o naming a file: refused before the model runs, nothing written.
    let file = tmp.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let r = Command::new(&exe)
        .arg(format!("x={}", digit.display()))
        .arg("-o")
        .arg(file.join("sub"))
        .output()
        .unwrap();
    assert!(!r.status.success());
    assert!(
        stderr(&r).contains(&format!("-o {}", file.join("sub").display())),
        "{}",
        stderr(&r)
    );
    assert_eq!(stdout(&r), "");
    // An unknown argument points at --help; a trailing data byte is an error.
    let r = Command::new(&exe).arg("--verbose").output().unwrap();
    assert!(
        stderr(&r).contains("unknown argument '--verbose'") && stderr(&r).contains("--help"),
        "{}",
        stderr(&r)
    );
    let mut long = std::fs::read(&digit).unwrap();
    long.push(0);
    std::fs::write(tmp.join("long.npy"), &long).unwrap();
    let r = Command::new(&exe)
        .arg(format!("x={}", tmp.join("long.npy").display()))
        .output()
        .unwrap();
    assert!(!r.status.success());
    assert!(stderr(&r).contains("the file has more"), "{}", stderr(&r));
    let _ = std::fs::remove_dir_all(&tmp);
}

/// An `.npy` file of `version` with header dict `dict` and `data`.
fn npy_file(version: u8, dict: &str, data: &[u8]) -> Vec<u8> {
    let mut h = dict.to_string();
    let fixed = if version == 1 { 10 } else { 12 };
    while !(fixed + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut b = b"\x93NUMPY".to_vec();
    b.extend_from_slice(&[version, 0]);
    if version == 1 {
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
    } else {
        b.extend_from_slice(&(h.len() as u32).to_le_bytes());
    }
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(data);
    b
}

#[test]
fn the_standalone_program_reads_what_kiln_run_reads() {
    need_cc();
    use kiln::graph::{Array, DType, GraphBuilder};
    let tmp = temp_dir("npy");
    // A bool input, an output named with "*/" (which ends a C comment), a scalar output
    // and an input fetched as it is.
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [3]).unwrap();
    let flag = g.placeholder("flag", DType::Bool, [3]).unwrap();
    let y = x
        .mul(flag.cast(DType::F32).unwrap())
        .unwrap()
        .named("scores/y*/z")
        .unwrap();
    g.output(y).unwrap();
    g.output(x.sum_all().unwrap().named("total").unwrap())
        .unwrap();
    g.output(flag).unwrap();
    let graph = g.into_graph();
    let model = tmp.join("odd.kiln");
    graph.save(&model).unwrap();
    let build = tmp.join("build");
    let r = kiln(&[
        "compile",
        model.to_str().unwrap(),
        "-o",
        build.to_str().unwrap(),
        "--exe",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let h = std::fs::read_to_string(build.join("odd.h")).unwrap();
    assert!(
        h.contains("#define ODD_OUTPUT_SCORES_Y__Z 0") && h.contains("#define ODD_OUTPUT_TOTAL 1"),
        "{h}"
    );
    // x: big-endian, version 2, keys in double quotes; flag: '?' elements.
    let xs = [1.5f32, -2.0, 4.25];
    let x_be: Vec<u8> = xs.iter().flat_map(|v| v.to_be_bytes()).collect();
    let x_file = tmp.join("x.npy");
    std::fs::write(
        &x_file,
        npy_file(
            2,
            "{\"descr\": \">f4\", \"fortran_order\": False, \"shape\": (3,)}",
            &x_be,
        ),
    )
    .unwrap();
    let flag_file = tmp.join("flag.npy");
    std::fs::write(
        &flag_file,
        npy_file(
            1,
            "{'descr': '?', 'fortran_order': False, 'shape': (3,), }",
            &[1, 0, 1],
        ),
    )
    .unwrap();
    let feeds = [
        format!("x={}", x_file.display()),
        format!("flag={}", flag_file.display()),
    ];
    let by_kiln = tmp.join("by-kiln");
    let r = kiln(&[
        "run",
        model.to_str().unwrap(),
        "--input",
        &feeds[0],
        "--input",
        &feeds[1],
        "--output",
        by_kiln.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let by_exe = tmp.join("by-exe");
    let run = Command::new(build.join("odd"))
        .args(&feeds)
        .arg("-o")
        .arg(&by_exe)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let said = stdout(&run);
    assert!(said.contains("total.npy f32[]"), "{said}");
    let want = kiln::Session::new(&graph, kiln::Device::Cpu)
        .unwrap()
        .run_outputs(&[
            ("x", &Array::from_vec(vec![3], xs.to_vec()).unwrap()),
            (
                "flag",
                &Array::from_vec(vec![3], vec![true, false, true]).unwrap(),
            ),
        ])
        .unwrap();
    for ((name, w), file) in want
        .iter()
        .zip(["scores_y*_z.npy", "total.npy", "flag.npy"])
    {
        let got = kiln::npy::read(by_exe.join(file)).unwrap();
        assert!(got.same_bits(w), "{name}: {got:?} vs {w:?}");
    }
    for f in ["total.npy", "flag.npy"] {
        assert_eq!(
            std::fs::read(by_exe.join(f)).unwrap(),
            std::fs::read(by_kiln.join(f)).unwrap(),
            "{f}"
        );
    }
    // What kiln run refuses, the program refuses: Fortran order, a bool
    // byte that is not 0 or 1.
    let fortran = tmp.join("fortran.npy");
    std::fs::write(
        &fortran,
        npy_file(
            1,
            "{'descr': '<f4', 'fortran_order': True, 'shape': (3,), }",
            &[0; 12],
        ),
    )
    .unwrap();
    let r = Command::new(build.join("odd"))
        .arg(format!("x={}", fortran.display()))
        .arg(&feeds[1])
        .output()
        .unwrap();
    assert!(stderr(&r).contains("Fortran order"), "{}", stderr(&r));
    std::fs::write(
        &flag_file,
        npy_file(
            1,
            "{'descr': '|b1', 'fortran_order': False, 'shape': (3,), }",
            &[1, 2, 0],
        ),
    )
    .unwrap();
    let r = Command::new(build.join("odd"))
        .args(&feeds)
        .output()
        .unwrap();
    assert!(
        stderr(&r).contains("bool byte other than 0 and 1"),
        "{}",
        stderr(&r)
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
