//! What the subcommands share: loading a model, compile arguments, writing text.

use std::path::Path;

use anyhow::{bail, Context, Result};
use kiln::graph::Graph;

/// How to compile a model for `show --optimized`, `plan` and `optimize`.
#[derive(clap::Args, Clone)]
pub struct CompileArgs {
    /// The size of a symbolic dim, as NAME=N (repeatable; unnamed dims are 1).
    #[arg(long = "dim", value_name = "NAME=N")]
    pub dims: Vec<String>,
    /// Treat variables nothing assigns as constants (inference), so batch
    /// norm and other constant work fold away.
    #[arg(long)]
    pub freeze: bool,
    /// Skip a pass by name (repeatable).
    #[arg(long = "disable-pass", value_name = "PASS")]
    pub disable: Vec<String>,
}

impl CompileArgs {
    pub fn bindings(&self, graph: &Graph) -> Result<kiln::graph::Bindings> {
        let mut symbols: Vec<String> = Vec::new();
        for p in graph.placeholders() {
            for s in graph.node(p).ty.shape.symbols() {
                if !symbols.iter().any(|x| x == s) {
                    symbols.push(s.to_string());
                }
            }
        }
        let mut b: kiln::graph::Bindings = symbols.iter().map(|s| (s.clone(), 1)).collect();
        for spec in &self.dims {
            let (name, n) = spec
                .split_once('=')
                .with_context(|| format!("--dim '{spec}' is not NAME=N"))?;
            let n: usize = n
                .parse()
                .with_context(|| format!("--dim '{spec}': '{n}' is not a size"))?;
            if !symbols.iter().any(|s| s == name) {
                bail!(
                    "--dim {name}: the model has no symbolic dim '{name}' (it has: {})",
                    if symbols.is_empty() {
                        "none".into()
                    } else {
                        symbols.join(", ")
                    }
                );
            }
            b.insert(name.to_string(), n);
        }
        Ok(b)
    }

    pub fn options(&self) -> kiln_optimizer::CompileOptions {
        kiln_optimizer::CompileOptions {
            freeze_variables: self.freeze,
            disabled_passes: self.disable.clone(),
            no_simplify: false,
        }
    }

    pub fn compile(&self, graph: &Graph) -> Result<kiln_optimizer::Compiled> {
        let fetches = default_fetches(graph)?;
        Ok(kiln_optimizer::compile(
            graph,
            &fetches,
            &self.bindings(graph)?,
            &self.options(),
        )?)
    }
}

pub fn default_fetches(graph: &Graph) -> Result<Vec<kiln::graph::NodeId>> {
    if graph.outputs().is_empty() {
        bail!("the model declares no outputs");
    }
    Ok(graph.outputs().to_vec())
}

/// Reads a `.kiln` model.
pub fn load(model: &Path) -> Result<Graph> {
    Ok(Graph::load(model)?)
}

/// Writes `text` to `path`, or to standard output for `-`.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    if path == Path::new("-") {
        print!("{text}");
    } else {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// A byte count for people: B, KiB or MiB.
pub fn human_bytes(b: usize) -> String {
    match b {
        b if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Refuses to write `output` when it is the model file itself (the same
/// path, or another name for the same file): `show --dot` and `plan --svg`
/// would replace the model with a picture of it.
pub fn refuse_overwriting(model: &Path, output: &Path, flag: &str) -> Result<()> {
    if output == Path::new("-") {
        return Ok(());
    }
    let same = match (std::fs::metadata(model), std::fs::metadata(output)) {
        #[cfg(unix)]
        (Ok(a), Ok(b)) => {
            use std::os::unix::fs::MetadataExt;
            (a.dev(), a.ino()) == (b.dev(), b.ino())
        }
        #[cfg(not(unix))]
        (Ok(_), Ok(_)) => std::fs::canonicalize(model).ok() == std::fs::canonicalize(output).ok(),
        _ => false,
    };
    if same {
        bail!(
            "{flag} {} would overwrite the model it reads; name another file",
            output.display()
        );
    }
    Ok(())
}
