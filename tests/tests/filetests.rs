//! Rewrite tests as text files (Cranelift's filetests, LLVM's FileCheck):
//! every `tests/filetests/*.kt` is a graph listing with a header saying
//! what to run and check lines saying what the result must contain.
//!
//! A file, line by line:
//! - `; pass: NAME, NAME` runs those graph passes (names as in
//!   `kiln_optimizer::passes::all_pass_names`) to a fixpoint, the graph
//!   verified after each; the output is the resulting graph's listing.
//!   `; pass: pipeline` runs the default pipeline, `; pass: pipeline-frozen`
//!   the inference one (with `freeze_variables`).
//! - `; dump-after: STEP NAME=N ...` compiles the graph instead, binding the
//!   symbolic dims `NAME` to `N`, and outputs the graph or kernel program
//!   right after the compilation step `STEP` (`kiln_optimizer::lowering`).
//! - `; freeze` compiles (or runs `pipeline`) for inference: variables
//!   nothing assigns become constants.
//! - `; model: NAME` takes the input graph from `kiln_tests` (the example
//!   models) instead of the listing in the file.
//! - Any other line that does not start with `#` is the input graph, in the
//!   listing form `Graph`'s `Display` prints and `text_parse.rs` reads.
//! - `# check: TEXT`: some line at or after the previous match contains
//!   TEXT; `# check-next: TEXT`: the line right after the previous match
//!   contains it; `# check-not: TEXT`: no line between the previous match
//!   and the next one (or the end) contains it; `# check-count: N TEXT`:
//!   exactly N lines of the whole output contain TEXT.
//! - `# expect:` followed by `# | LINE` lines: the whole output, line for
//!   line. `UPDATE_EXPECT=1 cargo test -p kiln-tests --test filetests`
//!   rewrites these blocks from the current output (review the diff).
//!
//! A failing check is reported as `FILE:LINE` with the output. Lines
//! starting with `#` and no known directive are comments.

use std::path::{Path, PathBuf};

use kiln::graph::text_parse::parse_graph;
use kiln::graph::{Bindings, Graph};
use kiln_optimizer::compile::{compile_until, CompileOptions, Snapshot};
use kiln_optimizer::passes::default_pipeline;

/// One check line of a file.
enum Check {
    Contains(String),
    Next(String),
    Not(String),
    Count(usize, String),
}

/// A parsed filetest.
struct FileTest {
    passes: Vec<String>,
    dump_after: Option<(String, Bindings)>,
    model: Option<String>,
    freeze: bool,
    listing: String,
    checks: Vec<(usize, Check)>,
    /// The expected output, and the line range of its block in the file.
    expect: Option<(Vec<String>, usize, usize)>,
}

fn parse_file(path: &Path, text: &str) -> Result<FileTest, String> {
    let mut t = FileTest {
        passes: Vec::new(),
        dump_after: None,
        model: None,
        freeze: false,
        listing: String::new(),
        checks: Vec::new(),
        expect: None,
    };
    let lines: Vec<&str> = text.lines().collect();
    let at = |i: usize| format!("{}:{}", path.display(), i + 1);
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(v) = line.strip_prefix("; pass:") {
            t.passes.extend(
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty()),
            );
        } else if let Some(v) = line.strip_prefix("; dump-after:") {
            let mut words = v.split_whitespace();
            let step = words.next().ok_or_else(|| format!("{}: no step", at(i)))?;
            let mut b = Bindings::new();
            for w in words {
                let (k, n) = w
                    .split_once('=')
                    .and_then(|(k, n)| Some((k, n.parse::<usize>().ok()?)))
                    .ok_or_else(|| format!("{}: '{w}' is not NAME=N", at(i)))?;
                b.insert(k.to_string(), n);
            }
            t.dump_after = Some((step.to_string(), b));
        } else if let Some(v) = line.strip_prefix("; model:") {
            t.model = Some(v.trim().to_string());
        } else if line.trim_end() == "; freeze" {
            t.freeze = true;
        } else if line.starts_with(';') {
            return Err(format!("{}: unknown directive '{line}'", at(i)));
        } else if let Some(v) = line.strip_prefix("# check:") {
            t.checks
                .push((i + 1, Check::Contains(v.trim().to_string())));
        } else if let Some(v) = line.strip_prefix("# check-next:") {
            t.checks.push((i + 1, Check::Next(v.trim().to_string())));
        } else if let Some(v) = line.strip_prefix("# check-not:") {
            t.checks.push((i + 1, Check::Not(v.trim().to_string())));
        } else if let Some(v) = line.strip_prefix("# check-count:") {
            let (n, what) = v
                .trim()
                .split_once(' ')
                .and_then(|(n, w)| Some((n.parse().ok()?, w.trim().to_string())))
                .ok_or_else(|| format!("{}: check-count is `N TEXT`", at(i)))?;
            t.checks.push((i + 1, Check::Count(n, what)));
        } else if line.trim_end() == "# expect:" {
            let start = i;
            let mut want = Vec::new();
            while i + 1 < lines.len() && lines[i + 1].starts_with("# |") {
                i += 1;
                let l = &lines[i]["# |".len()..];
                want.push(l.strip_prefix(' ').unwrap_or(l).to_string());
            }
            t.expect = Some((want, start, i + 1));
        } else if !line.starts_with('#') {
            t.listing.push_str(line);
            t.listing.push('\n');
        }
        i += 1;
    }
    if t.passes.is_empty() == t.dump_after.is_none() {
        return Err(format!(
            "{}: give either `; pass: NAME` or `; dump-after: STEP`",
            path.display()
        ));
    }
    if t.checks.is_empty() && t.expect.is_none() {
        return Err(format!(
            "{}: no `# check` lines and no `# expect:` block",
            path.display()
        ));
    }
    Ok(t)
}

fn model(name: &str) -> Result<Graph, String> {
    kiln_tests::example_models()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, g)| g)
        .ok_or_else(|| format!("no example model named '{name}'"))
}

/// The text the checks run over.
fn output(t: &FileTest, path: &Path) -> Result<String, String> {
    let graph = match &t.model {
        Some(m) => model(m)?,
        None => {
            parse_graph(&t.listing).map_err(|e| format!("{}: input graph, {e}", path.display()))?
        }
    };
    if let Some((step, bindings)) = &t.dump_after {
        let snapshot = compile_until(
            &graph,
            graph.outputs(),
            bindings,
            &CompileOptions {
                freeze_variables: t.freeze,
                ..Default::default()
            },
            step,
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok(match snapshot {
            Snapshot::Graph(g) => g.to_string(),
            Snapshot::Program(p) => p.to_string(),
        });
    }
    let (freeze, names): (bool, Vec<String>) = match t.passes.as_slice() {
        [p] if p == "pipeline" => (t.freeze, Vec::new()),
        [p] if p == "pipeline-frozen" => (true, Vec::new()),
        ps => (ps.iter().any(|p| p == "freeze_variables"), ps.to_vec()),
    };
    let mut pipeline = default_pipeline(freeze).verify_always();
    if !names.is_empty() {
        for n in &names {
            if !pipeline.pass_names().contains(&n.as_str()) {
                return Err(format!("{}: no pass named '{n}'", path.display()));
            }
        }
        for p in pipeline.pass_names() {
            if !names.iter().any(|n| n == p) {
                pipeline
                    .disable(p)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
    }
    let (g, _) = pipeline
        .run(&graph)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(g.to_string())
}

/// Runs the checks over `out`; the first failure as `FILE:LINE: why`.
fn run_checks(path: &Path, checks: &[(usize, Check)], out: &str) -> Result<(), String> {
    let lines: Vec<&str> = out.lines().collect();
    let fail = |line: usize, why: String| Err(format!("{}:{line}: {why}", path.display()));
    // The line after the previous match, and the pending check-nots.
    let mut from = 0;
    let mut nots: Vec<(usize, &str)> = Vec::new();
    let check_nots = |nots: &[(usize, &str)], lo: usize, hi: usize| -> Result<(), String> {
        for &(line, what) in nots {
            if let Some(k) = (lo..hi).find(|&k| lines[k].contains(what)) {
                return fail(
                    line,
                    format!(
                        "check-not '{what}' matches output line {}: {}",
                        k + 1,
                        lines[k]
                    ),
                );
            }
        }
        Ok(())
    };
    for (line, c) in checks {
        match c {
            Check::Contains(what) => {
                let Some(k) = (from..lines.len()).find(|&k| lines[k].contains(what.as_str()))
                else {
                    return fail(
                        *line,
                        format!(
                            "check '{what}' matches no line from output line {}",
                            from + 1
                        ),
                    );
                };
                check_nots(&nots, from, k)?;
                nots.clear();
                from = k + 1;
            }
            Check::Next(what) => {
                if from == 0 {
                    return fail(*line, "check-next with no previous match".into());
                }
                if lines.get(from).is_none_or(|l| !l.contains(what.as_str())) {
                    return fail(
                        *line,
                        format!(
                            "check-next '{what}': output line {} is '{}'",
                            from + 1,
                            lines.get(from).unwrap_or(&"<end>")
                        ),
                    );
                }
                check_nots(&nots, from, from)?;
                nots.clear();
                from += 1;
            }
            Check::Not(what) => nots.push((*line, what)),
            Check::Count(n, what) => {
                let got = lines.iter().filter(|l| l.contains(what.as_str())).count();
                if got != *n {
                    return fail(
                        *line,
                        format!("check-count: {got} lines contain '{what}', not {n}"),
                    );
                }
            }
        }
    }
    check_nots(&nots, from, lines.len())
}

fn files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("filetests");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "kt"))
        .collect();
    v.sort();
    v
}

/// Runs one file; with `bless`, rewrites its `# expect:` block.
fn run_file(path: &Path, bless: bool) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let t = parse_file(path, &text)?;
    let out = output(&t, path)?;
    let with_output = |e: String| format!("{e}\n--- output ---\n{out}");
    run_checks(path, &t.checks, &out).map_err(with_output)?;
    if let Some((want, start, end)) = &t.expect {
        let got: Vec<&str> = out.lines().collect();
        if bless {
            let lines: Vec<&str> = text.lines().collect();
            let mut new: Vec<String> = lines[..=*start].iter().map(|s| s.to_string()).collect();
            new.extend(
                got.iter()
                    .map(|l| format!("# | {l}").trim_end().to_string()),
            );
            new.extend(lines[*end..].iter().map(|s| s.to_string()));
            std::fs::write(path, new.join("\n") + "\n").map_err(|e| e.to_string())?;
        } else if let Some(k) = (0..want.len().max(got.len()))
            .find(|&k| want.get(k).map(|s| s.trim_end()) != got.get(k).map(|s| s.trim_end()))
        {
            return Err(with_output(format!(
                "{}:{}: expected output differs at its line {}:\n  want: {}\n  got:  {}\n\
                 re-bless with UPDATE_EXPECT=1 if intended",
                path.display(),
                start + 2 + k,
                k + 1,
                want.get(k).map_or("<end>", |s| s),
                got.get(k).unwrap_or(&"<end>")
            )));
        }
    }
    Ok(())
}

#[test]
fn every_filetest_passes() {
    let bless = std::env::var_os("UPDATE_EXPECT").is_some();
    let files = files();
    assert!(files.len() >= 8, "only {} filetests", files.len());
    let failures: Vec<String> = files
        .iter()
        .filter_map(|p| run_file(p, bless).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The checks themselves: each kind can fail, and says where.
#[test]
fn checks_fail_where_they_should() {
    let out = "a = x\nb = y\nc = z\n";
    let p = Path::new("t.kt");
    let ok = |c: Vec<(usize, Check)>| run_checks(p, &c, out);
    assert!(ok(vec![
        (1, Check::Contains("b =".into())),
        (2, Check::Next("c".into()))
    ])
    .is_ok());
    let e = ok(vec![
        (1, Check::Contains("c".into())),
        (2, Check::Contains("a".into())),
    ])
    .unwrap_err();
    assert!(e.starts_with("t.kt:2:"), "{e}");
    let e = ok(vec![
        (1, Check::Contains("a".into())),
        (3, Check::Next("c".into())),
    ])
    .unwrap_err();
    assert!(e.starts_with("t.kt:3:"), "{e}");
    let e = ok(vec![
        (4, Check::Not("y".into())),
        (5, Check::Contains("z".into())),
    ])
    .unwrap_err();
    assert!(e.starts_with("t.kt:4:"), "{e}");
    assert!(ok(vec![
        (1, Check::Contains("b".into())),
        (4, Check::Not("y".into()))
    ])
    .is_ok());
    let e = ok(vec![(6, Check::Count(2, "=".into()))]).unwrap_err();
    assert!(e.starts_with("t.kt:6:"), "{e}");
}

/// `parse(g.to_string()).to_string() == g.to_string()` over random graphs
/// and the example models.
#[test]
fn the_listing_round_trips() {
    let mut graphs: Vec<(String, Graph)> = kiln_tests::example_models()
        .into_iter()
        .map(|(n, g)| (n.to_string(), g))
        .collect();
    for seed in 0..300 {
        graphs.push((
            format!("random seed {seed}"),
            kiln_tests::random_graph::generate(seed).graph,
        ));
    }
    for (name, g) in graphs {
        let text = g.to_string();
        let back = parse_graph(&text).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
        assert_eq!(back.to_string(), text, "{name}");
        assert_eq!(back.outputs().len(), g.outputs().len(), "{name}");
    }
}
