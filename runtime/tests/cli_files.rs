//! The `kiln` binary and the files it is pointed at: what the user sees
//! for a missing file, something that is not a regular file, an output
//! path that is the model itself, an unknown pass; that `plan` writes a
//! picture only when asked; and that each command's help ends in examples.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `kiln args` in `dir`.
fn kiln_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("kiln runs")
}

fn kiln(args: &[&str]) -> Output {
    kiln_in(&repo(), args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-cli-files-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Asserts that `kiln args` fails with exactly `message` on standard error.
#[track_caller]
fn fails_with(args: &[&str], message: &str) {
    let o = kiln(args);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
    assert_eq!(stderr(&o), format!("kiln: error: {message}\n"), "{args:?}");
}

/// A missing file is named with what was being done, and the OS's reason
/// appears once.
#[test]
fn a_missing_file_is_reported_once() {
    fails_with(
        &["show", "nope.kiln"],
        "reading nope.kiln: No such file or directory (os error 2)",
    );
    fails_with(
        &["run", "examples/mlp.kiln", "--input", "x=examples/nope.npy"],
        "reading examples/nope.npy: No such file or directory (os error 2)",
    );
    let o = kiln(&["plan", "missing/model.kiln"]);
    assert_eq!(
        stderr(&o).matches("os error 2").count(),
        1,
        "{}",
        stderr(&o)
    );
}

/// `/dev/zero` and a directory, as a model or as an input, fail at once.
#[test]
fn what_is_not_a_regular_file_is_refused_at_once() {
    let start = Instant::now();
    fails_with(
        &["show", "/dev/zero"],
        "reading /dev/zero: a character device, not a regular file",
    );
    fails_with(
        &["show", "examples"],
        "reading examples: a directory, not a regular file",
    );
    fails_with(
        &["run", "examples/mlp.kiln", "--input", "x=/dev/zero"],
        "reading /dev/zero: a character device, not a regular file",
    );
    fails_with(
        &["run", "examples/mlp.kiln", "--input", "x=examples"],
        "reading examples: a directory, not a regular file",
    );
    assert!(start.elapsed() < Duration::from_secs(60));
}

/// `--disable-pass` with a name that is no pass says so and lists the passes.
#[test]
fn an_unknown_pass_is_named_with_the_list() {
    for cmd in ["optimize", "plan", "show"] {
        let mut args = vec![cmd, "examples/mlp.kiln", "--disable-pass", "bogus"];
        if cmd == "show" {
            args.push("--optimized");
        }
        let o = kiln(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("there is no pass named 'bogus'; the passes are: fold_constants,"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("verification"), "{err}");
    }
}

/// `show` prints an i64 constant as integers, not floats.
#[test]
fn show_prints_integer_constants_as_integers() {
    use kiln::prelude::*;
    let dir = temp_dir("ints");
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::I64, [3]).unwrap();
    let c = g
        .constant(Array::from_vec(vec![3], vec![2i64, -5, 1 << 40]).unwrap())
        .unwrap()
        .named("offsets")
        .unwrap();
    g.output(x.add(c).unwrap().named("y").unwrap()).unwrap();
    let path = dir.join("ints.kiln");
    g.into_graph().save(&path).unwrap();
    let o = kiln(&["show", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("offsets = constant{value=[2, -5, 1099511627776]} : i64[3]"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `plan` draws a picture only when given `--svg FILE`.
#[test]
fn plan_writes_an_svg_only_when_asked() {
    let dir = temp_dir("plan");
    let model = repo().join("examples/mlp.kiln");
    let o = kiln_in(&dir, &["plan", model.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("liveness lower bound:"));
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "plan wrote {left:?}");
    let o = kiln_in(&dir, &["plan", model.to_str().unwrap(), "--svg", "p.svg"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let svg = std::fs::read_to_string(dir.join("p.svg")).unwrap();
    assert!(svg.contains("kernel step") && svg.contains("arena offset"));
    // '-': the picture alone on standard output.
    let o = kiln_in(&dir, &["plan", model.to_str().unwrap(), "--svg", "-"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("<svg") && out.trim_end().ends_with("</svg>"),
        "{out}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `show --dot` and `plan --svg` refuse to write over the model they read,
/// whatever name the output is given; the model is left as it was.
#[test]
fn show_and_plan_refuse_to_overwrite_the_model() {
    let dir = temp_dir("overwrite");
    let model = dir.join("m.kiln");
    std::fs::copy(repo().join("examples/mlp.kiln"), &model).unwrap();
    let before = std::fs::read(&model).unwrap();
    let link = dir.join("link.kiln");
    std::os::unix::fs::symlink(&model, &link).unwrap();
    let hard = dir.join("hard.kiln");
    std::fs::hard_link(&model, &hard).unwrap();
    for (args, flag, out) in [
        (vec!["show", "m.kiln", "--dot", "m.kiln"], "--dot", "m.kiln"),
        (
            vec!["show", "m.kiln", "--dot", "./m.kiln"],
            "--dot",
            "./m.kiln",
        ),
        (
            vec!["show", "m.kiln", "--optimized", "--dot", "link.kiln"],
            "--dot",
            "link.kiln",
        ),
        (vec!["plan", "m.kiln", "--svg", "m.kiln"], "--svg", "m.kiln"),
        (
            vec!["plan", "link.kiln", "--svg", "hard.kiln"],
            "--svg",
            "hard.kiln",
        ),
    ] {
        let o = kiln_in(&dir, &args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert_eq!(
            stderr(&o),
            format!(
                "kiln: error: {flag} {out} would overwrite the model it reads; name another file\n"
            ),
        );
        assert_eq!(std::fs::read(&model).unwrap(), before, "{args:?}");
    }
    // Another file is fine.
    let o = kiln_in(&dir, &["show", "m.kiln", "--dot", "m.dot"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read_to_string(dir.join("m.dot"))
        .unwrap()
        .starts_with("digraph"));
    std::fs::remove_dir_all(&dir).ok();
}

/// `optimize -o` may name its own model: the file is replaced, atomically,
/// by a model that loads.
#[test]
fn optimize_may_replace_its_own_model() {
    let dir = temp_dir("optimize");
    let model = dir.join("m.kiln");
    std::fs::copy(repo().join("examples/mlp.kiln"), &model).unwrap();
    let o = kiln_in(&dir, &["optimize", "m.kiln", "--freeze", "-o", "m.kiln"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("replaced m.kiln"), "{}", stdout(&o));
    let g = kiln::graph::Graph::load(&model).unwrap();
    assert!(g.variables().is_empty(), "--freeze left variables");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(left.len(), 1, "temp files left: {left:?}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The help of `show`, `plan` and `optimize` ends with examples that name
/// the command.
#[test]
fn help_ends_with_examples() {
    for cmd in ["show", "plan", "optimize"] {
        let o = kiln(&[cmd, "--help"]);
        assert!(o.status.success());
        let text = stdout(&o);
        let (_, examples) = text
            .rsplit_once("Examples:\n")
            .unwrap_or_else(|| panic!("{cmd} --help has no examples:\n{text}"));
        assert!(
            examples
                .lines()
                .all(|l| l.trim().is_empty() || l.trim_start().starts_with(&format!("kiln {cmd} "))),
            "{examples}"
        );
        assert!(examples.lines().count() >= 2, "{examples}");
    }
}
