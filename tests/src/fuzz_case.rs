//! The model-level ONNX fuzzer's shared Rust side (issue 17): running an
//! ONNX model the way `kiln import` and `kiln run` do (import with the
//! default options, plus the fed arrays' shapes for inputs with symbolic
//! dims, then a [`Session`] on a device) with panics caught, reading
//! the saved regression cases (`tests/onnx/fuzz-cases/<name>/`: `model.onnx`,
//! `input_<i>.npy`, `output_<i>.npy`, `case.json`), and the comparison rule
//! both the Python fuzzer and kiln use (same dtype and shape; integers and
//! bools exactly; floats NaN only where NaN is expected, the same
//! infinities, else `|got - want| <= atol + rtol * |want|`), which names
//! the worst element.
//!
//! Used by the `kiln-onnx-runner` binary (serve and `--replay` modes) and
//! by the `onnx_fuzz_cases` test.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln::graph::{Array, Dim, Graph, Scalar, Shape};
use kiln::onnx::ImportOptions;
use kiln::prelude::*;

/// How an attempt to import and run a model ended.
#[derive(Debug)]
pub enum Outcome {
    /// Ran: every graph output in graph-output order, keyed by its ONNX
    /// output name, with the milliseconds import and compile-and-run took.
    Ok {
        outputs: Vec<(String, Array)>,
        import_ms: f64,
        run_ms: f64,
    },
    /// kiln refused the model at import.
    ImportError(String),
    /// Compiling or running failed with a kiln error.
    RunError(String),
    /// A Rust panic inside import or run (caught).
    Panic(String),
}

impl Outcome {
    /// The status word of the runner's answer: `ok`, `import_error`,
    /// `run_error` or `panic`.
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Ok { .. } => "ok",
            Outcome::ImportError(_) => "import_error",
            Outcome::RunError(_) => "run_error",
            Outcome::Panic(_) => "panic",
        }
    }
}

thread_local! {
    /// While set on this thread, the panic hook records panics here
    /// instead of passing them to the previous hook.
    static CAUGHT: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

/// Installs (once per process) a panic hook that, on a thread inside
/// [`guarded`], records the panic's message and place for the caller and
/// writes one line to standard error; on any other thread it hands the
/// panic to the hook that was installed before (the default one prints to
/// standard error). Nothing is ever written to standard output.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let capturing = CAUGHT.with(|c| c.borrow().is_some());
            if !capturing {
                previous(info);
                return;
            }
            let text = format!(
                "{}{}",
                payload_text(info.payload()),
                info.location()
                    .map(|l| format!(" (at {}:{}:{})", l.file(), l.line(), l.column()))
                    .unwrap_or_default()
            );
            eprintln!("kiln-onnx-runner: caught a panic: {text}");
            CAUGHT.with(|c| *c.borrow_mut() = Some(Some(text)));
        }));
    });
}

/// The message a panic was raised with (`panic!("...")` gives a `&str`
/// or a `String`).
fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a payload that is not text".to_string()
    }
}

/// Runs `f`, turning a panic on this thread into `Err(message)` (with the
/// place it was raised); the message goes to standard error as well, never
/// to standard output.
pub fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_panic_hook();
    let outer = CAUGHT.with(|c| c.borrow_mut().replace(None));
    let result = catch_unwind(AssertUnwindSafe(f));
    let recorded = CAUGHT.with(|c| std::mem::replace(&mut *c.borrow_mut(), outer));
    result.map_err(|payload| {
        recorded
            .flatten()
            .unwrap_or_else(|| payload_text(payload.as_ref()))
    })
}

/// An ONNX model's interface: its graph inputs that are not initializers
/// (what a caller feeds), in graph-input order, with their declared
/// shapes, and its graph outputs, in graph-output order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OnnxInterface {
    pub inputs: Vec<String>,
    /// The declared type of each of `inputs`.
    pub declared: Vec<Declared>,
    pub outputs: Vec<String>,
}

/// What an ONNX graph input declares about its shape.
#[derive(Clone, Debug, PartialEq)]
pub enum Declared {
    /// Not a tensor (a sequence, an optional, ...), or no type at all.
    NotTensor,
    /// A tensor of unknown rank.
    Unranked,
    /// A tensor's dims: a size, or `None` for a symbolic (`dim_param`) or
    /// unknown one.
    Dims(Vec<Option<u64>>),
}

impl Declared {
    /// Whether this is a tensor with a dim (or rank) not known from the
    /// model alone.
    pub fn is_symbolic(&self) -> bool {
        match self {
            Declared::NotTensor => false,
            Declared::Unranked => true,
            Declared::Dims(d) => d.iter().any(Option::is_none),
        }
    }

    /// Whether an array of `shape` fits: the same rank (where known) and
    /// the same sizes where the model fixes them.
    pub fn fits(&self, shape: &[usize]) -> bool {
        match self {
            Declared::NotTensor => false,
            Declared::Unranked => true,
            Declared::Dims(d) => {
                d.len() == shape.len()
                    && d.iter()
                        .zip(shape)
                        .all(|(d, &n)| d.is_none_or(|d| d == n as u64))
            }
        }
    }
}

/// The declared shape of an ONNX value.
fn declared(info: &kiln_onnx::proto::ValueInfoProto) -> Declared {
    use kiln_onnx::proto::tensor_shape_proto::dimension::Value as D;
    use kiln_onnx::proto::type_proto::Value as T;
    let Some(T::TensorType(t)) = info.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Declared::NotTensor;
    };
    let Some(shape) = &t.shape else {
        return Declared::Unranked;
    };
    Declared::Dims(
        shape
            .dim
            .iter()
            .map(|d| match d.value {
                Some(D::DimValue(n)) if n >= 0 => Some(n as u64),
                _ => None,
            })
            .collect(),
    )
}

/// Reads the interface of the ONNX model at `path`.
pub fn onnx_interface(path: &Path) -> Result<OnnxInterface, String> {
    use prost::Message;
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let model = kiln_onnx::proto::ModelProto::decode(bytes.as_slice())
        .map_err(|e| format!("{}: not an ONNX model: {e}", path.display()))?;
    let graph = model.graph.unwrap_or_default();
    let initialized: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let fed: Vec<_> = graph
        .input
        .iter()
        .filter(|i| !initialized.contains(i.name.as_str()))
        .collect();
    Ok(OnnxInterface {
        inputs: fed.iter().map(|i| i.name.clone()).collect(),
        declared: fed.iter().map(|i| declared(i)).collect(),
        outputs: graph.output.iter().map(|o| o.name.clone()).collect(),
    })
}

/// The name kiln's ONNX importer gives the value `onnx` (its private
/// `kiln_name` in `onnx/src/import.rs`): control characters, quotes and
/// whitespace become `_`, an empty name or one starting with `__` gets the
/// prefix `onnx`, and it is cut to 400 bytes (here at a character boundary).
fn importer_name(onnx: &str) -> String {
    let mut s: String = onnx
        .chars()
        .map(|c| {
            if c.is_control() || c == '"' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if s.is_empty() || s.starts_with("__") {
        s.insert_str(0, "onnx");
    }
    let mut end = s.len().min(400);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

/// The graph's placeholder that stands for ONNX input `onnx`: the node of
/// that name, else the name the importer makes of it. A name the graph has
/// no node for is passed on as it is (the session then says which inputs
/// the model has).
fn feed_name(graph: &Graph, onnx: &str) -> String {
    if graph.find(onnx).is_ok() {
        return onnx.to_string();
    }
    let renamed = importer_name(onnx);
    if graph.find(&renamed).is_ok() {
        renamed
    } else {
        onnx.to_string()
    }
}

/// The import options the runner uses for `inputs` of a model of
/// `interface`: the defaults (`kiln import` without flags), plus, for each
/// input whose declared shape has a symbolic or unknown dim (or no shape)
/// and whose array fits it, that array's shape as its shape
/// (`kiln import --input-shape NAME=DIMS`), so that shape arithmetic on
/// it is known at import time, as it is to ONNX Runtime at run time.
pub fn import_options(interface: &OnnxInterface, inputs: &[(String, Array)]) -> ImportOptions {
    let mut options = ImportOptions::default();
    for (name, a) in inputs {
        let Some(k) = interface.inputs.iter().position(|n| n == name) else {
            continue;
        };
        let d = &interface.declared[k];
        if d.is_symbolic() && d.fits(a.shape()) {
            let dims = a.shape().iter().map(|&n| Dim::Fixed(n)).collect();
            options.input_shapes.insert(name.clone(), Shape(dims));
        }
    }
    options
}

/// Imports the ONNX model at `model` as `kiln import` does with default
/// options, plus the shapes of `inputs` for inputs with symbolic dims (see
/// [`import_options`]), writes it to `.kiln` bytes and reads it back (a
/// failure there is a run error starting `save/load:`), then runs it on
/// `device` as `kiln run` does (a [`Session`] with default options),
/// fetching every graph output. `inputs` are keyed by ONNX input name. Outputs are
/// keyed by ONNX output name where the graph has one output per ONNX
/// output (tensor outputs; a sequence output has one per element, and then
/// kiln's names are used). A panic anywhere in import or run becomes
/// [`Outcome::Panic`].
pub fn run_model(model: &Path, inputs: &[(String, Array)], device: Device) -> Outcome {
    let ran = guarded(|| {
        let interface = onnx_interface(model).ok();
        let options = interface
            .as_ref()
            .map(|i| import_options(i, inputs))
            .unwrap_or_default();
        let t0 = Instant::now();
        let graph = match Graph::from_onnx_with(model, &options) {
            Ok(g) => g,
            Err(e) => return Outcome::ImportError(e.to_string()),
        };
        let import_ms = t0.elapsed().as_secs_f64() * 1e3;
        // As `kiln import` + `kiln run`: the graph goes through a `.kiln`
        // file's bytes, so every case also checks that the file reads back.
        let graph = match graph
            .to_bytes()
            .and_then(|b| Graph::from_bytes(&b, &model.display().to_string()))
        {
            Ok(g) => g,
            Err(e) => return Outcome::RunError(format!("save/load: {e}")),
        };
        let feeds: Vec<(String, &Array)> = inputs
            .iter()
            .map(|(name, a)| (feed_name(&graph, name), a))
            .collect();
        let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), *a)).collect();
        let t1 = Instant::now();
        let ran = Session::with_options(&graph, device, kiln::SessionOptions::default())
            .and_then(|s| s.run_outputs(&refs));
        let run_ms = t1.elapsed().as_secs_f64() * 1e3;
        let mut outputs = match ran {
            Ok(o) => o,
            Err(e) => return Outcome::RunError(e.to_string()),
        };
        if let Some(interface) = interface {
            if interface.outputs.len() == outputs.len() {
                for ((name, _), onnx) in outputs.iter_mut().zip(interface.outputs) {
                    *name = onnx;
                }
            }
        }
        Outcome::Ok {
            outputs,
            import_ms,
            run_ms,
        }
    });
    ran.unwrap_or_else(Outcome::Panic)
}

/// What `case.json` says (other keys are kept by the fuzzer and ignored here).
#[derive(Clone, Debug, serde::Deserialize)]
pub struct CaseMeta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub family: Option<String>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub oracle: Option<String>,
    pub rtol: f64,
    pub atol: f64,
    #[serde(default)]
    pub what: Option<String>,
    #[serde(default)]
    pub command: Option<String>,
}

/// A saved regression case, read.
#[derive(Debug)]
pub struct Case {
    /// The case's name (`case.json`'s, else the directory's).
    pub name: String,
    pub dir: PathBuf,
    pub meta: CaseMeta,
    /// The inputs by ONNX input name, in graph-input order.
    pub inputs: Vec<(String, Array)>,
    /// The expected outputs by ONNX output name, in graph-output order.
    pub expected: Vec<(String, Array)>,
}

impl Case {
    /// The tolerance `case.json` gives.
    pub fn tolerance(&self) -> Tolerance {
        Tolerance {
            rtol: self.meta.rtol,
            atol: self.meta.atol,
        }
    }

    /// The model file.
    pub fn model(&self) -> PathBuf {
        self.dir.join("model.onnx")
    }
}

/// Whether `dir` holds a case (a `case.json`).
pub fn is_case(dir: &Path) -> bool {
    dir.join("case.json").is_file()
}

/// The case directories `paths` name: a path holding a `case.json` is a
/// case; a directory without one stands for every subdirectory of it that
/// holds one, sorted by name. A path that is neither is an error.
pub fn case_dirs(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if is_case(p) {
            out.push(p.clone());
            continue;
        }
        if !p.is_dir() {
            return Err(format!(
                "{}: not a case directory (no case.json) nor a directory of cases",
                p.display()
            ));
        }
        let entries = std::fs::read_dir(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|d| is_case(d))
            .collect();
        if found.is_empty() {
            return Err(format!(
                "{}: holds no case.json and no case directories",
                p.display()
            ));
        }
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

/// Reads the case in `dir`: `case.json`, the model's interface, then
/// `input_<i>.npy` for each of its inputs and `output_<i>.npy` for each of
/// its outputs. Every file the model needs must be there, and no
/// `input_<i>.npy` beyond them.
pub fn read_case(dir: &Path) -> Result<Case, String> {
    let json_path = dir.join("case.json");
    let text =
        std::fs::read_to_string(&json_path).map_err(|e| format!("{}: {e}", json_path.display()))?;
    let meta: CaseMeta =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json_path.display()))?;
    for (what, v) in [("rtol", meta.rtol), ("atol", meta.atol)] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(format!(
                "{}: {what} is {v}; it must be a finite number >= 0",
                json_path.display()
            ));
        }
    }
    let interface = onnx_interface(&dir.join("model.onnx"))?;
    let read = |file: String| -> Result<Array, String> {
        kiln::npy::read(dir.join(&file)).map_err(|e| e.to_string())
    };
    let inputs = interface
        .inputs
        .iter()
        .enumerate()
        .map(|(i, name)| Ok((name.clone(), read(format!("input_{i}.npy"))?)))
        .collect::<Result<Vec<_>, String>>()?;
    let extra = dir.join(format!("input_{}.npy", interface.inputs.len()));
    if extra.exists() {
        return Err(format!(
            "{}: the model has {} inputs ({}), so there is no input {}",
            extra.display(),
            interface.inputs.len(),
            interface.inputs.join(", "),
            interface.inputs.len()
        ));
    }
    let expected = interface
        .outputs
        .iter()
        .enumerate()
        .map(|(i, name)| Ok((name.clone(), read(format!("output_{i}.npy"))?)))
        .collect::<Result<Vec<_>, String>>()?;
    let name = meta.name.clone().unwrap_or_else(|| {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string())
    });
    Ok(Case {
        name,
        dir: dir.to_path_buf(),
        meta,
        inputs,
        expected,
    })
}

/// How close a float must be: `|got - want| <= atol + rtol * |want|`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
}

/// The element of an output that is furthest from what was expected.
#[derive(Clone, Debug, PartialEq)]
pub struct Worst {
    /// Its index, one entry per dim.
    pub index: Vec<usize>,
    /// Its value and the expected one, as text.
    pub got: String,
    pub want: String,
    /// `|got - want|` (infinite where one is NaN or infinite and the other
    /// is not the same).
    pub diff: f64,
    /// `diff` as a multiple of the element's tolerance `atol + rtol *
    /// |want|` (above 1: a mismatch; infinite for any difference where the
    /// tolerance is zero, and for NaN or an infinity misplaced).
    pub excess: f64,
}

/// How one output compares with what was expected.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// Whether every element is within the tolerance (and dtype and shape agree).
    pub ok: bool,
    /// Elements outside the tolerance.
    pub mismatches: usize,
    /// The element with the largest excess over its tolerance (or, when all
    /// are within it, the largest difference); `None` for an empty output
    /// or when dtypes or shapes differ.
    pub worst: Option<Worst>,
    /// Why dtypes or shapes differ, where they do.
    pub type_mismatch: Option<String>,
}

/// An element as text: integers exactly, floats as Rust prints them
/// (shortest text that reads back the same), NaN and infinities as
/// `NaN`, `inf`, `-inf`, bools as `true`/`false`.
fn element_text(s: Scalar) -> String {
    match s {
        Scalar::F32(v) => v.to_string(),
        Scalar::F64(v) => v.to_string(),
        Scalar::F16(v) => v.to_f32().to_string(),
        Scalar::BF16(v) => v.to_f32().to_string(),
        Scalar::Bool(v) => v.to_string(),
        s => exact_value(s).to_string(),
    }
}

/// An integer or bool element exactly (u64 and i64 included).
fn exact_value(s: Scalar) -> i128 {
    match s {
        Scalar::I8(v) => v.into(),
        Scalar::I16(v) => v.into(),
        Scalar::I32(v) => v.into(),
        Scalar::I64(v) => v.into(),
        Scalar::U8(v) => v.into(),
        Scalar::U16(v) => v.into(),
        Scalar::U32(v) => v.into(),
        Scalar::U64(v) => v.into(),
        Scalar::Bool(v) => v.into(),
        // Floats never get here; truncation would do for them.
        s => s.to_f64() as i128,
    }
}

/// Flat position `flat` in an array of `shape` as one index per dim.
fn unravel(shape: &[usize], mut flat: usize) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (k, &d) in shape.iter().enumerate().rev() {
        idx[k] = flat % d.max(1);
        flat /= d.max(1);
    }
    idx
}

/// Compares `got` with `want` by the fuzzer's rule: the same dtype and
/// shape; integers and bools exactly; floats NaN where NaN is expected and
/// only there, the same infinities, else `|got - want| <= atol + rtol *
/// |want|`.
pub fn compare(want: &Array, got: &Array, tol: Tolerance) -> Comparison {
    if want.dtype() != got.dtype() || want.shape() != got.shape() {
        return Comparison {
            ok: false,
            mismatches: want.len().max(got.len()),
            worst: None,
            type_mismatch: Some(format!(
                "got {}{:?}, want {}{:?}",
                got.dtype(),
                got.shape(),
                want.dtype(),
                want.shape()
            )),
        };
    }
    // (excess over the tolerance, |got - want|, flat index) of the worst
    // element so far; an excess above 1 is a mismatch.
    let mut worst: Option<(f64, f64, usize)> = None;
    let mut mismatches = 0;
    let mut note = |excess: f64, diff: f64, i: usize| {
        if excess > 1.0 {
            mismatches += 1;
        }
        let better = worst.is_none_or(|(e, d, _)| excess > e || (excess == e && diff > d));
        if better {
            worst = Some((excess, diff, i));
        }
    };
    if want.dtype().is_float() {
        let (w, g) = (want.to_f64_vec(), got.to_f64_vec());
        for (i, (&w, &g)) in w.iter().zip(&g).enumerate() {
            let (excess, diff) = if w.is_nan() || g.is_nan() {
                if w.is_nan() && g.is_nan() {
                    (0.0, 0.0)
                } else {
                    (f64::INFINITY, f64::INFINITY)
                }
            } else if w.is_infinite() || g.is_infinite() {
                if w == g {
                    (0.0, 0.0)
                } else {
                    (f64::INFINITY, f64::INFINITY)
                }
            } else {
                let diff = (g - w).abs();
                let bound = tol.atol + tol.rtol * w.abs();
                let excess = if diff == 0.0 {
                    0.0
                } else if bound == 0.0 {
                    f64::INFINITY
                } else {
                    diff / bound
                };
                (excess, diff)
            };
            note(excess, diff, i);
        }
    } else {
        for i in 0..want.len() {
            let (w, g) = (exact_value(want.get(i)), exact_value(got.get(i)));
            let diff = (g - w).unsigned_abs() as f64;
            note(if w == g { 0.0 } else { f64::INFINITY }, diff, i);
        }
    }
    Comparison {
        ok: mismatches == 0,
        mismatches,
        worst: worst.map(|(excess, diff, i)| Worst {
            index: unravel(want.shape(), i),
            got: element_text(got.get(i)),
            want: element_text(want.get(i)),
            diff,
            excess,
        }),
        type_mismatch: None,
    }
}

/// One line about output `index` (`name`) compared with `tol`: on a
/// mismatch, the worst element's index and values, its difference and the
/// tolerance, and how many elements are off; else the worst difference.
pub fn describe(index: usize, name: &str, c: &Comparison, want: &Array, tol: Tolerance) -> String {
    if let Some(t) = &c.type_mismatch {
        return format!("output {index} '{name}': {t}");
    }
    let Some(w) = &c.worst else {
        return format!(
            "output {index} '{name}': empty, {}{:?}",
            want.dtype(),
            want.shape()
        );
    };
    if c.ok {
        return format!(
            "output {index} '{name}': worst element {:?} |got - want| {:.3e} ({:.2} of its tolerance)",
            w.index, w.diff, w.excess
        );
    }
    let rule = if want.dtype().is_float() {
        format!(
            "tolerance atol {:e} + rtol {:e} * |want|",
            tol.atol, tol.rtol
        )
    } else {
        format!("{} must match exactly", want.dtype())
    };
    format!(
        "output {index} '{name}': element {:?} got {}, want {} (|got - want| {:.3e}; {rule}); \
         {} of {} elements differ",
        w.index,
        w.got,
        w.want,
        w.diff,
        c.mismatches,
        want.len()
    )
}

/// The result of replaying a case on one device.
#[derive(Debug)]
pub struct Replay {
    pub device: Device,
    pub pass: bool,
    /// What happened: per output, the worst difference; or the failure.
    pub detail: String,
}

/// Replays `case` on `device`: runs its model on its inputs and compares
/// each output with the expected one by the case's tolerance.
pub fn replay(case: &Case, device: Device) -> Replay {
    let fail = |detail: String| Replay {
        device,
        pass: false,
        detail,
    };
    let outputs = match run_model(&case.model(), &case.inputs, device) {
        Outcome::Ok { outputs, .. } => outputs,
        Outcome::ImportError(e) => return fail(format!("import_error: {e}")),
        Outcome::RunError(e) => return fail(format!("run_error: {e}")),
        Outcome::Panic(e) => return fail(format!("panic: {e}")),
    };
    if outputs.len() != case.expected.len() {
        return fail(format!(
            "kiln gave {} outputs ({}), the case expects {}",
            outputs.len(),
            outputs
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            case.expected.len()
        ));
    }
    let tol = case.tolerance();
    let compared: Vec<Comparison> = case
        .expected
        .iter()
        .zip(&outputs)
        .map(|((_, want), (_, got))| compare(want, got, tol))
        .collect();
    let pass = compared.iter().all(|c| c.ok);
    let say = |i: usize| {
        describe(
            i,
            &case.expected[i].0,
            &compared[i],
            &case.expected[i].1,
            tol,
        )
    };
    let detail = if pass {
        // The output whose worst element comes closest to its tolerance
        // (the first of equals).
        let mut worst: Option<(usize, &Worst)> = None;
        for (i, c) in compared.iter().enumerate() {
            if let Some(w) = &c.worst {
                if worst.is_none_or(|(_, b)| (w.excess, w.diff) > (b.excess, b.diff)) {
                    worst = Some((i, w));
                }
            }
        }
        match worst {
            None => "every output is empty".to_string(),
            Some((_, w)) if w.diff == 0.0 => "every element exact".to_string(),
            Some((i, _)) => say(i),
        }
    } else {
        // Each output that fails.
        (0..compared.len())
            .filter(|&i| !compared[i].ok)
            .map(say)
            .collect::<Vec<_>>()
            .join("; ")
    };
    Replay {
        device,
        pass,
        detail,
    }
}

/// Replays the case in `dir` on each of `devices`: whether it passes on
/// all, and one line saying so (`PASS name: ...` or `FAIL name: ...`).
pub fn replay_dir(dir: &Path, devices: &[Device]) -> (bool, String) {
    let case = match read_case(dir) {
        Ok(c) => c,
        Err(e) => {
            return (
                false,
                format!("FAIL {}: unreadable case: {e}", dir.display()),
            )
        }
    };
    let runs: Vec<Replay> = devices.iter().map(|&d| replay(&case, d)).collect();
    let pass = runs.iter().all(|r| r.pass);
    let parts: Vec<String> = runs
        .iter()
        .map(|r| {
            let verdict = if pass || !r.pass { "" } else { "passes; " };
            format!("[{}] {verdict}{}", r.device, r.detail)
        })
        .collect();
    let word = if pass { "PASS" } else { "FAIL" };
    (pass, format!("{word} {}: {}", case.name, parts.join(" | ")))
}
