//! `kiln import`: ONNX models as .kiln files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln::npy;

/// Arguments of `kiln import`.
#[derive(clap::Args)]
pub struct Args {
    /// The .onnx model file.
    pub model: PathBuf,
    /// The .kiln file to write.
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
}

/// Runs `kiln import`.
pub fn main(a: Args) -> Result<()> {
    import_onnx(
        &a.model,
        &a.output,
        a.trainable,
        &a.constants,
        &a.sequences,
        &a.absent,
    )
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

fn import_onnx(
    model: &Path,
    output: &Path,
    trainable: bool,
    constants: &[String],
    sequences: &[String],
    absent: &[String],
) -> Result<()> {
    let mut options = kiln::onnx::ImportOptions {
        initializers_as_variables: trainable,
        absent_inputs: absent.iter().cloned().collect(),
        ..Default::default()
    };
    for spec in sequences {
        let (name, shapes) = sequence_spec(spec)?;
        options.sequence_inputs.insert(name, shapes);
    }
    for spec in constants {
        let (name, file) = spec
            .split_once('=')
            .with_context(|| format!("--constant '{spec}' is not NAME=FILE.npy"))?;
        options
            .constant_inputs
            .insert(name.to_string(), npy::read(file)?);
    }
    let graph = kiln_onnx::import_with(model, &options)?;
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
        inputs.join(", "),
        outputs.join(", ")
    );
    Ok(())
}
