//! What the subcommands share: loading a model (`.kiln` or `.onnx`),
//! reading and generating inputs, compile arguments, writing text.

use std::path::Path;

use anyhow::{bail, Context, Result};
use kiln::graph::{Array, DType, Dim, Graph, Scalar};
use kiln::npy;

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
    /// Move the regions holding depthwise convolutions to channels-last
    /// layout, as CPU sessions do on hosts with AVX2 and FMA (the
    /// `channels_last` pass).
    #[arg(long)]
    pub channels_last: bool,
}

impl CompileArgs {
    pub fn bindings(&self, graph: &Graph) -> Result<kiln::graph::Bindings> {
        let mut symbols: Vec<String> = Vec::new();
        for p in graph.placeholders() {
            for s in graph.node(p).ty.shape.symbols() {
                if !symbols.contains(&s) {
                    symbols.push(s);
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
            channels_last: self.channels_last,
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

/// Reads a model: a `.kiln` file, or an `.onnx` file (by its extension,
/// in any case) imported in memory with the default import options, as
/// `kiln import` would without flags.
pub fn load(model: &Path) -> Result<Graph> {
    if is_onnx(model) {
        use kiln::onnx::FromOnnx;
        return Ok(Graph::from_onnx(model)?);
    }
    Ok(Graph::load(model)?)
}

/// Whether `model` is named as an ONNX file (`.onnx`, any case).
pub fn is_onnx(model: &Path) -> bool {
    model
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// Parses `--input NAME=FILE.npy` and reads the file.
pub fn read_input(spec: &str) -> Result<(String, Array)> {
    let (name, file) = spec
        .split_once('=')
        .with_context(|| format!("--input '{spec}' is not NAME=FILE.npy"))?;
    if name.is_empty() {
        bail!("--input '{spec}': no input name given (NAME=FILE.npy)");
    }
    if file.is_empty() {
        bail!("--input '{spec}': no file given (NAME=FILE.npy)");
    }
    Ok((name.to_string(), npy::read(file)?))
}

/// Inputs by name.
pub type Feeds = Vec<(String, Array)>;

/// The most bytes one generated input may take (1 GiB).
pub const MAX_GENERATED_BYTES: usize = 1 << 30;

/// What `kiln bench` feeds an input it is not given, in words.
pub const GENERATED_INPUTS: &str = "floats uniform in [-1, 1), integers uniform in \
    [0, 4) (valid as indices and sizes of small dims), bools true or false with even odds";

/// Feeds for the model's inputs: the `given` ones, then one generated for
/// each other placeholder (see [`GENERATED_INPUTS`]) from `seed`, its
/// symbolic dims taken from `--dim` (`dims`), else from a given input that
/// binds them, else 1. Returns the feeds in the model's input order and,
/// for each generated one, a line saying what it is.
pub fn complete_inputs(
    graph: &Graph,
    given: Feeds,
    dims: &[String],
    seed: u64,
) -> Result<(Feeds, Vec<String>)> {
    let explicit = CompileArgs {
        dims: dims.to_vec(),
        freeze: false,
        disable: Vec::new(),
        channels_last: false,
    }
    .bindings(graph)?;
    let named: Vec<&str> = dims
        .iter()
        .filter_map(|d| d.split_once('='))
        .map(|d| d.0)
        .collect();
    // Dims the given inputs bind, unless --dim names them.
    let mut bindings = explicit.clone();
    for (name, a) in &given {
        let Ok(id) = graph.find(name) else { continue };
        let shape = &graph.node(id).ty.shape;
        if shape.rank() != a.shape().len() {
            continue;
        }
        for (d, &n) in shape.dims().iter().zip(a.shape()) {
            if let Dim::Sym(s) = d {
                if !named.contains(&s.as_str()) {
                    bindings.insert(s.clone(), n);
                }
            }
        }
    }
    let mut rng = SplitMix64(seed);
    let mut feeds = given;
    let mut said = Vec::new();
    for p in graph.placeholders() {
        let node = graph.node(p);
        if feeds.iter().any(|(n, _)| *n == node.name) {
            continue;
        }
        let shape: Vec<usize> = node
            .ty
            .shape
            .dims()
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => *n,
                Dim::Sym(s) => bindings.get(s).copied().unwrap_or(1),
                Dim::Expr(_) => d.eval(&bindings).unwrap_or(1),
            })
            .collect();
        let dtype = node.ty.dtype;
        let bytes = kiln::graph::array::checked_product(&shape)
            .and_then(|n| n.checked_mul(dtype.size_bytes()))
            .filter(|&b| b <= MAX_GENERATED_BYTES);
        let Some(_) = bytes else {
            bail!(
                "input '{}' ({}) as {dtype}{shape:?} is over {} to generate; \
                 give smaller --dim values or the input itself with --input",
                node.name,
                node.ty,
                human_bytes(MAX_GENERATED_BYTES)
            );
        };
        let n: usize = shape.iter().product();
        let values: Vec<Scalar> = (0..n)
            .map(|_| {
                let r = rng.next_f64();
                let v = if dtype.is_float() {
                    2.0 * r - 1.0
                } else if dtype == DType::Bool {
                    (r < 0.5) as u8 as f64
                } else {
                    (4.0 * r).floor()
                };
                Scalar::from_f64(dtype, v)
            })
            .collect();
        let a = Array::from_scalars(shape.clone(), dtype, &values)
            .context("generating an input: the values do not fill its shape")?;
        let what = if dtype.is_float() {
            "uniform in [-1, 1)"
        } else if dtype == DType::Bool {
            "random bools"
        } else {
            "integers in [0, 4)"
        };
        said.push(format!(
            "{} {dtype}{shape:?}: generated, {what} (seed {seed})",
            node.name
        ));
        feeds.push((node.name.clone(), a));
    }
    // The model's input order, then anything else given (the session
    // names a feed the model has no input for).
    let order: Vec<String> = graph
        .placeholders()
        .iter()
        .map(|&p| graph.node(p).name.clone())
        .collect();
    feeds.sort_by_key(|(n, _)| order.iter().position(|o| o == n).unwrap_or(usize::MAX));
    Ok((feeds, said))
}

/// SplitMix64 (Steele, Lea and Flood): a small, fast generator, enough
/// for benchmark inputs.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Where `run` and `bench` execute a model: the fetches, the device and
/// the CPU threads.
#[derive(clap::Args)]
pub struct Exec {
    /// Fetch these nodes instead of the model's declared outputs (repeatable).
    #[arg(short, long = "fetch", value_name = "NAME")]
    pub fetches: Vec<String>,
    /// Device to run on.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Threads for the CPU backend, 1 to 1024 (default: KILN_NUM_THREADS or
    /// every core).
    #[arg(long, value_name = "N", value_parser = parse_threads)]
    pub threads: Option<usize>,
}

/// Parses a `--threads` value: a whole number from 1 to 1024.
pub fn parse_threads(s: &str) -> std::result::Result<usize, String> {
    kiln_codegen::cpu::parse_threads(s)
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
