//! `kiln compile`: ahead-of-time objects, headers and standalone programs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::common::{default_fetches, load, CompileArgs};

/// Arguments of `kiln compile`.
#[derive(clap::Args)]
#[command(after_help = "Example:\n  \
    kiln compile examples/mlp.kiln -o build --dim batch=1 --exe\n  \
    ./build/mlp x=examples/digit.npy -o out     (writes out/probs.npy, out/class.npy)")]
pub struct Args {
    /// The .kiln model file.
    pub model: PathBuf,
    /// Where to write NAME.o, NAME.h and libkiln_rt.a (created if missing;
    /// left as it was if anything fails).
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    /// The C name prefix (default: the model file's stem).
    #[arg(long)]
    pub name: Option<String>,
    /// The CPU to compile for: native (this machine), x86-64-v3 or x86-64-v4.
    #[arg(long, default_value = "native")]
    pub target: String,
    /// The size of a symbolic dim, as NAME=N (repeatable; every one is needed).
    #[arg(long = "dim", value_name = "NAME=N")]
    pub dims: Vec<String>,
    /// Also build DIR/NAME, a standalone program (with the C compiler `cc`,
    /// or $CC) that runs the model on NAME=FILE.npy inputs and writes its
    /// outputs as OUTDIR/OUTPUT.npy (`-o OUTDIR`; `DIR/NAME --help`).
    #[arg(long)]
    pub exe: bool,
}

/// Runs `kiln compile`.
pub fn main(a: Args) -> Result<()> {
    // The environment is read here, at the edge.
    let cc = std::env::var("CC").ok();
    compile_aot(&a, cc.as_deref())
}

/// The C name for a model file: its stem, letters and digits kept and the
/// rest `_`, with `model_` before one that would not start an identifier.
fn default_name(model: &Path) -> String {
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut n: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if n.is_empty() || n.starts_with(|c: char| c.is_ascii_digit()) {
        n.insert_str(0, "model_");
    }
    n
}

fn compile_aot(a: &Args, cc: Option<&str>) -> Result<()> {
    let target: kiln_codegen::cpu::Target = a.target.parse()?;
    if let Some(n) = &a.name {
        if n.is_empty()
            || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || n.starts_with(|c: char| c.is_ascii_digit())
        {
            bail!(
                "--name '{n}' is not a C identifier (letters, digits and _, not starting \
                 with a digit)"
            );
        }
    }
    // A standalone program needs a C compiler: found before anything else,
    // so that its absence changes nothing.
    let cc = if a.exe {
        Some(kiln::aot::CCompiler::find(cc)?)
    } else {
        None
    };
    let graph = load(&a.model)?;
    let name = a.name.clone().unwrap_or_else(|| default_name(&a.model));
    let args = CompileArgs {
        dims: a.dims.clone(),
        freeze: true,
        disable: Vec::new(),
        channels_last: false,
    };
    let bindings = args.bindings(&graph)?;
    for s in bindings.keys() {
        if !args
            .dims
            .iter()
            .any(|d| d.split_once('=').is_some_and(|(n, _)| n == s))
        {
            bail!("symbolic dim '{s}' must be bound: add --dim {s}=N");
        }
    }
    let c = args.compile(&graph)?;
    let names: Vec<String> = default_fetches(&graph)?
        .iter()
        .map(|&o| graph.node(o).name.clone())
        .collect();
    let dir = &a.output;
    let m = match &cc {
        Some(cc) => kiln::aot::compile_standalone(&c.program, &name, target, &names, dir, cc)?,
        None => kiln::aot::compile_c(&c.program, &name, target, &names, dir)?,
    };
    println!(
        "{}: {} step(s), {} function(s), {} of object code and weights",
        a.model.display(),
        m.code.steps,
        m.code.functions.len(),
        super::common::human_bytes(m.code.bytes.len()),
    );
    if let Some(top) = &m.created {
        println!("created {}", top.display());
    }
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| super::common::human_bytes(m.len() as usize))
            .unwrap_or_default()
    };
    println!(
        "wrote {} ({}): kernels, weights and {name}_run",
        m.object.display(),
        size(&m.object)
    );
    println!(
        "wrote {}: {name}_run and the inputs' and outputs' types and shapes",
        m.header.display()
    );
    println!(
        "wrote {} ({}): kiln's run-time library",
        m.library.display(),
        size(&m.library)
    );
    if let (Some(src), Some(bin)) = (&m.source, &m.program) {
        println!("wrote {}: the standalone program's source", src.display());
        println!(
            "wrote {} ({}): the standalone program; run {} --help",
            bin.display(),
            size(bin),
            bin.display()
        );
    } else {
        println!(
            "link: cc main.c {} {} {}",
            m.object.display(),
            m.library.display(),
            kiln::aot::SYSTEM_LIBS.join(" ")
        );
        let (src, bin) = (dir.join(format!("{name}_main.c")), dir.join(&name));
        if src.is_file() && bin.is_file() {
            println!(
                "note: {} is from an earlier --exe build and still runs the old model; \
                 add --exe to rebuild it",
                bin.display()
            );
        }
    }
    Ok(())
}
