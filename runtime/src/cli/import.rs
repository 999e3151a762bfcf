//! `kiln import`: ONNX models as .kiln files.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln::npy;

/// Arguments of `kiln import`.
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
    kiln import resnet50.onnx -o resnet50.kiln --dim batch=1\n  \
    kiln import model.onnx -o model.kiln --input-shape pixels=1x3x224x224")]
pub struct Args {
    /// The .onnx model file.
    pub model: PathBuf,
    /// The .kiln file to write (not the model itself).
    #[arg(short, long, value_name = "OUT.kiln")]
    pub output: PathBuf,
    /// Import initializers as variables (to train or fine-tune).
    #[arg(long)]
    pub trainable: bool,
    /// Bind a graph input to a value at import time, as NAME=FILE.npy
    /// (repeatable): inputs that decide shapes (a Reshape's shape, a
    /// Resize's sizes), which kiln needs known.
    #[arg(long = "constant", value_name = "NAME=FILE.npy")]
    pub constants: Vec<String>,
    /// The element shapes of a sequence-typed graph input, as
    /// NAME=SHAPE,SHAPE,... with each SHAPE as dims joined by 'x'
    /// (2x3; `scalar` for a rank-0 element): element i becomes the
    /// placeholder NAME/i (repeatable).
    #[arg(long = "sequence", value_name = "NAME=SHAPE,...")]
    pub sequences: Vec<String>,
    /// An optional-typed graph input that holds no value (repeatable).
    #[arg(long = "absent", value_name = "NAME")]
    pub absent: Vec<String>,
    /// Fix a symbolic dim of the inputs (a dim_param, or INPUT_AXIS for an
    /// unnamed one) to a size, as NAME=N (repeatable).
    #[arg(long = "dim", value_name = "NAME=N")]
    pub dims: Vec<String>,
    /// Replace a tensor input's declared shape, as NAME=DIMS with DIMS
    /// joined by 'x' or ',', each a size or a symbol (batchx3x224x224,
    /// max_len,512; `scalar` for rank 0) (repeatable).
    #[arg(long = "input-shape", value_name = "NAME=DIMS")]
    pub input_shapes: Vec<String>,
    /// Evaluate a node whose inputs are known at import time only if it
    /// computes at most this many bytes (larger results are computed at
    /// run time).
    #[arg(long, value_name = "BYTES", default_value_t = kiln_onnx::DEFAULT_FOLD_LIMIT_BYTES)]
    pub fold_limit: usize,
}

/// Runs `kiln import`.
pub fn main(a: Args) -> Result<()> {
    refuse_overwriting(&a.model, &a.output)?;
    let mut options = kiln::onnx::ImportOptions {
        initializers_as_variables: a.trainable,
        absent_inputs: a.absent.iter().cloned().collect(),
        fold_limit_bytes: a.fold_limit,
        ..Default::default()
    };
    for spec in &a.sequences {
        let (name, shapes) = sequence_spec(spec)?;
        options.sequence_inputs.insert(name, shapes);
    }
    for spec in &a.dims {
        let (name, n) = spec
            .split_once('=')
            .with_context(|| format!("--dim '{spec}' is not NAME=N"))?;
        let n: usize = n
            .trim()
            .parse()
            .with_context(|| format!("--dim '{spec}': '{n}' is not a size"))?;
        options.dims.insert(name.to_string(), n);
    }
    for spec in &a.input_shapes {
        let (name, shape) = input_shape_spec(spec)?;
        options.input_shapes.insert(name, shape);
    }
    for spec in &a.constants {
        let (name, file) = spec
            .split_once('=')
            .with_context(|| format!("--constant '{spec}' is not NAME=FILE.npy"))?;
        options
            .constant_inputs
            .insert(name.to_string(), npy::read(file)?);
    }
    import_onnx(&a.model, &a.output, &options)
}

/// Refuses an output that is the model file itself (the same path, or
/// another name of the same file).
fn refuse_overwriting(model: &Path, output: &Path) -> Result<()> {
    let same = match (std::fs::canonicalize(model), std::fs::canonicalize(output)) {
        (Ok(m), Ok(o)) => m == o || same_file(&m, &o),
        _ => false,
    };
    if same {
        bail!(
            "-o {}: that is the model being imported; write the .kiln file elsewhere",
            output.display()
        );
    }
    Ok(())
}

/// Whether two existing paths name one file (hard links).
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(a), Ok(b)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return a.dev() == b.dev() && a.ino() == b.ino();
        }
    }
    let _ = (a, b);
    false
}

/// `--input-shape NAME=DIMS`: dims joined by 'x', each a size or a symbol.
fn input_shape_spec(spec: &str) -> Result<(String, kiln::graph::Shape)> {
    let (name, dims) = spec
        .split_once('=')
        .with_context(|| format!("--input-shape '{spec}' is not NAME=DIMS"))?;
    let dims = dims.trim();
    if dims == "scalar" {
        return Ok((name.to_string(), kiln::graph::Shape::scalar()));
    }
    // Joined by ',' where the dims hold one (so that a symbol may hold
    // an 'x': max_len,3), else by 'x'.
    let sep = if dims.contains(',') { ',' } else { 'x' };
    let dims = dims
        .split(sep)
        .map(|d| {
            let d = d.trim();
            if let Ok(n) = d.parse::<usize>() {
                return Ok(kiln::graph::Dim::Fixed(n));
            }
            let symbol = !d.is_empty()
                && !d.starts_with(|c: char| c.is_ascii_digit())
                && d.chars().all(|c| c.is_alphanumeric() || c == '_');
            if !symbol {
                bail!(
                    "--input-shape '{spec}': dim '{d}' is neither a size nor a symbol \
                     (dims are joined by 'x' or ',': batchx3x224x224, max_len,512)"
                );
            }
            Ok(kiln::graph::Dim::sym(d))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((name.to_string(), kiln::graph::Shape(dims)))
}

/// The element shapes of `--sequence NAME=SHAPE,...`.
fn sequence_spec(spec: &str) -> Result<(String, Vec<kiln::graph::Shape>)> {
    let (name, shapes) = spec
        .split_once('=')
        .with_context(|| format!("--sequence '{spec}' is not NAME=SHAPE,..."))?;
    let shapes = shapes
        .split(',')
        .map(|s| {
            let s = s.trim();
            if s == "scalar" {
                return Ok(kiln::graph::Shape::scalar());
            }
            let dims = s
                .split('x')
                .map(|d| d.trim().parse::<usize>())
                .collect::<std::result::Result<Vec<usize>, _>>()
                .with_context(|| {
                    format!(
                        "--sequence '{spec}': element shape '{s}' is not dims joined by 'x' \
                         (such as 2x3) or `scalar`"
                    )
                })?;
            Ok(kiln::graph::Shape::from(dims))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((name.to_string(), shapes))
}

fn import_onnx(model: &Path, output: &Path, options: &kiln::onnx::ImportOptions) -> Result<()> {
    let imported = kiln_onnx::import_report(model, options)?;
    for w in &imported.warnings {
        eprintln!("kiln: warning: {}: {w}", model.display());
    }
    let graph = imported.graph;
    graph
        .save(output)
        .with_context(|| format!("writing {}", output.display()))?;
    let inputs: Vec<String> = graph
        .placeholders()
        .iter()
        .map(|&p| format!("{}: {}", graph.node(p).name, graph.node(p).ty))
        .collect();
    let outputs: Vec<String> = graph
        .outputs()
        .iter()
        .map(|&o| format!("{}: {}", graph.node(o).name, graph.node(o).ty))
        .collect();
    println!(
        "{} -> {}: {} nodes; inputs {}; outputs {}",
        model.display(),
        output.display(),
        graph.len(),
        listed(&inputs),
        listed(&outputs)
    );
    Ok(())
}

/// `items` joined by commas, or `none`.
fn listed(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}
