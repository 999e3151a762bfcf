//! `kiln compile`: ahead-of-time objects, headers and standalone programs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::common::{default_fetches, load, CompileArgs};

/// Arguments of `kiln compile`.
#[derive(clap::Args)]
pub struct Args {
    /// The .kiln model file.
    pub model: PathBuf,
    /// Where to write NAME.o and NAME.h.
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
    /// Also build DIR/NAME, a standalone program (with `cc`) that runs
    /// the model on NAME=FILE.npy inputs and writes its outputs as .npy
    /// files (`-o OUTDIR`).
    #[arg(long)]
    pub exe: bool,
}

/// Runs `kiln compile`.
pub fn main(a: Args) -> Result<()> {
    compile_aot(&a.model, &a.output, a.name, &a.target, a.dims, a.exe)
}

fn compile_aot(
    model: &Path,
    dir: &Path,
    name: Option<String>,
    target: &str,
    dims: Vec<String>,
    exe: bool,
) -> Result<()> {
    let target: kiln_codegen::cpu::Target = target.parse()?;
    let graph = load(model)?;
    let name = name.unwrap_or_else(|| {
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
    });
    let args = CompileArgs {
        dims,
        freeze: true,
        disable: Vec::new(),
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
    // Output names as file names ('/' in a scoped name becomes '_').
    let names: Vec<String> = default_fetches(&graph)?
        .iter()
        .map(|&o| graph.node(o).name.replace(['/', '\\'], "_"))
        .collect();
    let m = kiln::aot::compile_c(&c.program, &name, target, &names, dir)?;
    let (obj, lib) = (&m.object, &m.library);
    println!(
        "{}: {} step(s), {} function(s), {} bytes of object code and weights -> {}, {}, {}",
        model.display(),
        m.code.steps,
        m.code.functions.len(),
        m.code.bytes.len(),
        obj.display(),
        m.header.display(),
        lib.display()
    );
    if exe {
        let main_c = dir.join(format!("{name}_main.c"));
        let bin = dir.join(&name);
        std::fs::write(
            &main_c,
            kiln_codegen::cpu::aot::standalone_main(&c.program, &name, &names),
        )
        .with_context(|| format!("writing {}", main_c.display()))?;
        let out = std::process::Command::new("cc")
            .arg("-O2")
            .arg("-o")
            .arg(&bin)
            .arg(&main_c)
            .arg(obj)
            .arg(lib)
            .args(kiln::aot::SYSTEM_LIBS)
            .output()
            .context("--exe needs a C compiler: 'cc' did not run")?;
        if !out.status.success() {
            bail!(
                "cc could not build {}:\n{}",
                bin.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
        println!("standalone program: {} ({size} bytes)", bin.display());
    }
    Ok(())
}
