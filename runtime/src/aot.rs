//! Ahead-of-time models in Rust programs: a build script compiles a
//! `.kiln` file into an object and a Rust module, and the program calls the
//! model without the JIT (or any of kiln) at run time.
//!
//! In `build.rs`'s `main`:
//!
//! ```no_run
//! let out = std::env::var("OUT_DIR").unwrap();
//! kiln::aot::Build::new("model.kiln", "model")
//!     .dim("batch", 8)
//!     .write(out.as_ref())
//!     .unwrap();
//! println!("cargo:rerun-if-changed=model.kiln");
//! ```
//!
//! and in the crate: `include!(concat!(env!("OUT_DIR"), "/model.rs"));`,
//! then `let (y,) = model::run(&x).unwrap();`.
//!
//! `write` also writes `libkiln_rt.a` (kiln's run-time library: the
//! executor, GEMM, convolutions and support functions, with no other kiln
//! code) and prints `cargo:rustc-link-arg` lines for the object and the
//! library, so both link into the crate. Same limits as `kiln compile`:
//! every op but pooling, gather, scatter-add and control flow; frozen
//! graphs. (A program that also links the `kiln-rt` crate itself should
//! not link the library too: their C symbols would clash.)

use std::fmt::Write;
use std::path::{Path, PathBuf};

use kiln_codegen::cpu::Target;
use kiln_graph::{DType, Graph};
use kiln_optimizer::kernel::Storage;

use crate::error::{Error, Result};

/// The run-time library `libkiln_rt.a` this kiln was built with (see
/// `runtime/build.rs`), or an error saying why it is missing.
pub fn runtime_library() -> Result<&'static [u8]> {
    static LIB: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libkiln_rt.a"));
    if LIB.is_empty() {
        return Err(Error::Aot {
            model: "libkiln_rt.a".into(),
            reason: "this kiln was built without its run-time library libkiln_rt.a \
                     (see the warning its build printed; rebuild with cargo and the \
                     registry's crates available)"
                .into(),
        });
    }
    Ok(LIB)
}

/// Writes `dir/libkiln_rt.a` (see [`runtime_library`]) and returns its path.
pub fn write_runtime_library(dir: &Path) -> Result<PathBuf> {
    let lib = runtime_library()?;
    let path = dir.join("libkiln_rt.a");
    std::fs::write(&path, lib).map_err(|e| Error::Aot {
        model: "libkiln_rt.a".into(),
        reason: format!("writing {}: {e}", path.display()),
    })?;
    Ok(path)
}

/// A kernel program compiled for C programs (what `kiln compile` writes).
#[derive(Clone, Debug)]
pub struct CModel {
    /// `DIR/NAME.o`: the kernels, weights, step list and `NAME_run`.
    pub object: PathBuf,
    /// `DIR/NAME.h`: the entry point, shapes and types.
    pub header: PathBuf,
    /// `DIR/libkiln_rt.a`.
    pub library: PathBuf,
    /// `DIR/NAME_main.c`, the standalone program's source (from
    /// [`compile_standalone`]).
    pub source: Option<PathBuf>,
    /// `DIR/NAME`, the standalone program (from [`compile_standalone`]).
    pub program: Option<PathBuf>,
    /// The outermost directory created for `DIR`, where it was missing.
    pub created: Option<PathBuf>,
    /// The compiled code.
    pub code: kiln_codegen::cpu::aot::ObjectCode,
}

/// A C compiler for standalone programs: a command line as `$CC` spells
/// one (`cc`, `gcc -m64`, `ccache clang`).
#[derive(Clone, Debug)]
pub struct CCompiler {
    words: Vec<String>,
}

impl CCompiler {
    /// The compiler `spec` names (its words split at white space; `None` or
    /// blank: `cc`), checked by running it with `--version`: an error says
    /// it did not run and what to do.
    pub fn find(spec: Option<&str>) -> Result<CCompiler> {
        let mut words: Vec<String> = spec
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if words.is_empty() {
            words.push("cc".into());
        }
        // A relative path names a file from here, wherever the compiler runs.
        if words[0].contains('/') {
            if let Ok(abs) = std::path::absolute(&words[0]) {
                words[0] = abs.display().to_string();
            }
        }
        let cc = CCompiler { words };
        let fail = |why: String| Error::Aot {
            model: format!("C compiler '{}'", cc.name()),
            reason: format!(
                "{why}; a standalone program needs one: install gcc or clang, or name \
                 one with CC=..."
            ),
        };
        match cc.command().arg("--version").output() {
            Ok(out) if out.status.success() => Ok(cc.clone()),
            Ok(out) => Err(fail(format!(
                "'{} --version' failed ({}){}",
                cc.name(),
                out.status,
                first_line(&out.stderr)
            ))),
            Err(e) => Err(fail(format!("it did not run ({e})"))),
        }
    }

    /// The command line, as given.
    pub fn name(&self) -> String {
        self.words.join(" ")
    }

    fn command(&self) -> std::process::Command {
        let mut c = std::process::Command::new(&self.words[0]);
        c.args(&self.words[1..]);
        c
    }
}

/// `: ` and the first line of `text`, if it has one.
fn first_line(text: &[u8]) -> String {
    String::from_utf8_lossy(text)
        .lines()
        .next()
        .map(|l| format!(": {l}"))
        .unwrap_or_default()
}

/// Compiles a frozen kernel program into `dir` as `NAME.o`, `NAME.h` (its
/// outputs named by `outputs`, in order) and `libkiln_rt.a`:
/// `cc main.c NAME.o libkiln_rt.a -lm -lpthread -ldl` links a program
/// calling `NAME_run`. `dir` is created if missing. Everything is made
/// first and moved into `dir` only when all of it succeeded, so an error
/// leaves `dir` as it was.
pub fn compile_c(
    program: &kiln_optimizer::KernelProgram,
    name: &str,
    target: Target,
    outputs: &[String],
    dir: &Path,
) -> Result<CModel> {
    write_c(program, name, target, outputs, dir, None)
}

/// [`compile_c`], and `NAME_main.c` and the standalone program `NAME` built
/// from them with `cc` (see
/// [`standalone_main`](kiln_codegen::cpu::aot::standalone_main)): a failed
/// build, too, leaves `dir` as it was.
pub fn compile_standalone(
    program: &kiln_optimizer::KernelProgram,
    name: &str,
    target: Target,
    outputs: &[String],
    dir: &Path,
    cc: &CCompiler,
) -> Result<CModel> {
    write_c(program, name, target, outputs, dir, Some(cc))
}

fn write_c(
    program: &kiln_optimizer::KernelProgram,
    name: &str,
    target: Target,
    outputs: &[String],
    dir: &Path,
    cc: Option<&CCompiler>,
) -> Result<CModel> {
    use kiln_codegen::cpu::aot;
    let fail = |reason: String| Error::Aot {
        model: name.to_string(),
        reason,
    };
    // Everything is made in memory first.
    let code = aot::compile_object_with(program, name, target, crate::env::dumps())?;
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (format!("{name}.o"), code.bytes.clone()),
        (
            format!("{name}.h"),
            aot::header_named(program, &code, name, outputs).into_bytes(),
        ),
        ("libkiln_rt.a".into(), runtime_library()?.to_vec()),
    ];
    if cc.is_some() {
        files.push((
            format!("{name}_main.c"),
            aot::standalone_main(program, name, outputs).into_bytes(),
        ));
    }
    let created = create_missing(dir).map_err(fail)?;
    let staged = (|| -> Result<Vec<String>> {
        let stage = Stage::new(dir, name).map_err(fail)?;
        for (file, bytes) in &files {
            stage.write(file, bytes).map_err(fail)?;
        }
        let mut names: Vec<String> = files.iter().map(|(f, _)| f.clone()).collect();
        if let Some(cc) = cc {
            let out = cc
                .command()
                .current_dir(&stage.path)
                .arg("-O2")
                .arg("-o")
                .arg(name)
                .arg(format!("{name}_main.c"))
                .arg(format!("{name}.o"))
                .arg("libkiln_rt.a")
                .args(SYSTEM_LIBS)
                .output()
                .map_err(|e| fail(format!("'{}' did not run: {e}", cc.name())))?;
            if !out.status.success() {
                return Err(fail(format!(
                    "'{}' could not build the standalone program ({}):\n{}",
                    cc.name(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim_end()
                )));
            }
            names.push(name.to_string());
        }
        stage.commit(dir, &names).map_err(fail)?;
        Ok(names)
    })();
    if let Err(e) = staged {
        if let Some(top) = &created {
            remove_created(dir, top);
        }
        return Err(e);
    }
    Ok(CModel {
        object: dir.join(format!("{name}.o")),
        header: dir.join(format!("{name}.h")),
        library: dir.join("libkiln_rt.a"),
        source: cc.map(|_| dir.join(format!("{name}_main.c"))),
        program: cc.map(|_| dir.join(name)),
        created,
        code,
    })
}

/// Creates `dir` where it is missing, returning the outermost directory
/// made (`None` when `dir` was there).
fn create_missing(dir: &Path) -> std::result::Result<Option<PathBuf>, String> {
    if dir.is_dir() {
        return Ok(None);
    }
    if dir.exists() {
        return Err(format!("{} is there and is not a directory", dir.display()));
    }
    let mut top = dir.to_path_buf();
    while let Some(parent) = top.parent() {
        if parent.as_os_str().is_empty() || parent.exists() {
            break;
        }
        top = parent.to_path_buf();
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(Some(top))
}

/// Removes the directories [`create_missing`] made, from `dir` up to
/// `top`, where they are still empty.
fn remove_created(dir: &Path, top: &Path) {
    let mut d = Some(dir);
    while let Some(p) = d {
        if std::fs::remove_dir(p).is_err() || p == top {
            break;
        }
        d = p.parent();
    }
}

/// A directory inside the output directory where files are made before
/// they are moved into place; removed when dropped.
struct Stage {
    path: PathBuf,
}

impl Stage {
    fn new(dir: &Path, name: &str) -> std::result::Result<Stage, String> {
        let mut last = None;
        for k in 0..100 {
            let path = dir.join(format!(".kiln-{name}-{}-{k}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(Stage { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(format!("creating a directory in {}: {e}", dir.display())),
            }
        }
        Err(format!(
            "creating a directory in {}: {}",
            dir.display(),
            last.map(|e| e.to_string()).unwrap_or_default()
        ))
    }

    fn write(&self, file: &str, bytes: &[u8]) -> std::result::Result<(), String> {
        let path = self.path.join(file);
        std::fs::write(&path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))
    }

    /// Moves `files` into `dir`, replacing what is there.
    fn commit(&self, dir: &Path, files: &[String]) -> std::result::Result<(), String> {
        for (k, f) in files.iter().enumerate() {
            let to = dir.join(f);
            std::fs::rename(self.path.join(f), &to).map_err(|e| {
                format!(
                    "moving {f} into {}: {e}{}",
                    dir.display(),
                    if k > 0 {
                        format!(" (after replacing {})", files[..k].join(", "))
                    } else {
                        String::new()
                    }
                )
            })?;
        }
        Ok(())
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The libraries a C program linking `libkiln_rt.a` needs besides libc.
pub const SYSTEM_LIBS: [&str; 3] = ["-lm", "-lpthread", "-ldl"];

/// A model to compile for a Rust program (see the module docs).
#[derive(Clone, Debug)]
pub struct Build {
    model: PathBuf,
    name: String,
    dims: Vec<(String, usize)>,
    target: Target,
    link: bool,
}

fn rust_type(d: DType) -> Option<&'static str> {
    Some(match d {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::I32 => "i32",
        DType::I64 => "i64",
        DType::I8 => "i8",
        DType::I16 => "i16",
        DType::U8 => "u8",
        DType::U16 => "u16",
        DType::U32 => "u32",
        DType::U64 => "u64",
        DType::Bool => "bool",
        DType::F16 | DType::BF16 => return None,
    })
}

fn snake(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

impl Build {
    /// The model at `model`, its Rust module and C symbols named `name`.
    pub fn new(model: impl Into<PathBuf>, name: &str) -> Build {
        Build {
            model: model.into(),
            name: name.to_string(),
            dims: Vec::new(),
            target: Target::Host,
            link: true,
        }
    }

    /// Binds symbolic dim `name` to `n` (every symbolic dim needs one).
    pub fn dim(mut self, name: &str, n: usize) -> Build {
        self.dims.push((name.to_string(), n));
        self
    }

    /// The CPU to compile for (default: the building machine).
    pub fn target(mut self, target: Target) -> Build {
        self.target = target;
        self
    }

    /// Whether `write` prints the `cargo:rustc-link-arg` line (on by
    /// default; off outside build scripts).
    pub fn cargo_link(mut self, on: bool) -> Build {
        self.link = on;
        self
    }

    /// Writes `dir/NAME.o`, `dir/libkiln_rt.a` and `dir/NAME.rs` (a module `NAME` with `run`,
    /// taking one slice per input in the model's input order and returning
    /// one `Vec` per output in output order, and the shapes as constants).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let invalid = |reason: String| Error::Aot {
            model: self.model.display().to_string(),
            reason,
        };
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || self.name.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(invalid(format!("'{}' is not an identifier", self.name)));
        }
        let graph = Graph::load(&self.model)?;
        let mut bindings = kiln_graph::Bindings::new();
        for p in graph.placeholders() {
            for s in graph.node(p).ty.shape.symbols() {
                let n = self
                    .dims
                    .iter()
                    .find(|(d, _)| *d == s)
                    .map(|(_, n)| *n)
                    .ok_or_else(|| invalid(format!("symbolic dim '{s}' needs .dim(\"{s}\", N)")))?;
                bindings.insert(s.to_string(), n);
            }
        }
        let fetches = graph.outputs().to_vec();
        if fetches.is_empty() {
            return Err(invalid("the model declares no outputs".into()));
        }
        // Channels-last where it pays on this host (the object runs
        // kiln-rt's channels-last kernels where the host running it has
        // AVX2, and plain loops where it has not).
        let opts = kiln_optimizer::CompileOptions {
            freeze_variables: true,
            channels_last: kiln_codegen::cpu::has_channels_last_kernels(true),
            ..Default::default()
        };
        let program = kiln_optimizer::compile(&graph, &fetches, &bindings, &opts)?.program;
        let code = kiln_codegen::cpu::aot::compile_object_with(
            &program,
            &self.name,
            self.target,
            crate::env::dumps(),
        )?;
        std::fs::create_dir_all(dir).map_err(|e| invalid(format!("{}: {e}", dir.display())))?;
        let lib = write_runtime_library(dir)?;
        let obj = dir.join(format!("{}.o", self.name));
        std::fs::write(&obj, &code.bytes)
            .map_err(|e| invalid(format!("writing {}: {e}", obj.display())))?;
        let inputs: Vec<(String, DType, Vec<usize>)> = program
            .buffers
            .iter()
            .filter_map(|b| match &b.storage {
                Storage::Input { name } => Some((name.clone(), b.dtype, b.shape.clone())),
                _ => None,
            })
            .collect();
        let outputs: Vec<(String, DType, Vec<usize>)> = program
            .outputs
            .iter()
            .zip(&fetches)
            .map(|(b, &f)| {
                let buf = program.buffer(*b);
                (graph.node(f).name.clone(), buf.dtype, buf.shape.clone())
            })
            .collect();
        let ty = |d: DType, what: &str| {
            rust_type(d)
                .ok_or_else(|| invalid(format!("{what} is {d}, which Rust has no type for")))
        };
        let name = &self.name;
        let mut m = format!(
            "/// The model {model}, compiled ahead of time by kiln.\n\
             #[allow(dead_code, clippy::all)]\npub mod {name} {{\n\
             extern \"C\" {{\n    fn {name}_run(inputs: *const *const u8, outputs: *const *mut u8) -> i32;\n    \
             fn kiln_rt_last_error() -> *const std::ffi::c_char;\n}}\n\n\
             static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());\n\n",
            model = self.model.display()
        );
        for (n, d, s) in inputs.iter().chain(&outputs) {
            let _ = writeln!(
                m,
                "/// `{n}`: {d} {s:?}.\npub const {}_SHAPE: [usize; {}] = {s:?};",
                snake(n).to_ascii_uppercase(),
                s.len()
            );
        }
        let args: Vec<String> = inputs
            .iter()
            .map(|(n, d, _)| {
                Ok(format!(
                    "{}: &[{}]",
                    snake(n),
                    ty(*d, &format!("input '{n}'"))?
                ))
            })
            .collect::<Result<_>>()?;
        let rets: Vec<String> = outputs
            .iter()
            .map(|(n, d, _)| Ok(format!("Vec<{}>", ty(*d, &format!("output '{n}'"))?)))
            .collect::<Result<_>>()?;
        let _ = write!(
            m,
            "\n/// Runs the model: one slice per input (row-major, of the length\n\
             /// its shape gives), one `Vec` per output. Calls are serialized\n\
             /// (the model's working memory is one static block).\n\
             pub fn run({}) -> Result<({},), String> {{\n",
            args.join(", "),
            rets.join(", ")
        );
        for (n, _, s) in &inputs {
            let len: usize = s.iter().product();
            let _ = writeln!(
                m,
                "    if {v}.len() != {len} {{ return Err(format!(\"input '{n}': {{}} elements, the model takes {len}\", {v}.len())); }}",
                v = snake(n)
            );
        }
        for (k, (_, d, s)) in outputs.iter().enumerate() {
            let len: usize = s.iter().product();
            let zero = if *d == DType::Bool { "false" } else { "0 as _" };
            let _ = writeln!(m, "    let mut o{k} = vec![{zero}; {len}];");
        }
        let _ = writeln!(
            m,
            "    let inputs: [*const u8; {}] = [{}];",
            inputs.len().max(1),
            if inputs.is_empty() {
                "std::ptr::null()".to_string()
            } else {
                inputs
                    .iter()
                    .map(|(n, _, _)| format!("{}.as_ptr() as *const u8", snake(n)))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        let _ = writeln!(
            m,
            "    let outputs: [*mut u8; {}] = [{}];",
            outputs.len(),
            (0..outputs.len())
                .map(|k| format!("o{k}.as_mut_ptr() as *mut u8"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = write!(
            m,
            "    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());\n\
             \x20   // SAFETY: every input slice and output vector has the length\n\
             \x20   // the compiled model reads or writes (checked above); bools are\n\
             \x20   // written as 0 or 1.\n\
             \x20   if unsafe {{ {name}_run(inputs.as_ptr(), outputs.as_ptr()) }} != 0 {{\n\
             \x20       // SAFETY: the library keeps the message until the next failure.\n\
             \x20       let why = unsafe {{ std::ffi::CStr::from_ptr(kiln_rt_last_error()) }};\n\
             \x20       return Err(why.to_string_lossy().into_owned());\n\
             \x20   }}\n\
             \x20   Ok(({},))\n}}\n}}\n",
            (0..outputs.len())
                .map(|k| format!("o{k}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let rs = dir.join(format!("{name}.rs"));
        std::fs::write(&rs, m).map_err(|e| invalid(format!("writing {}: {e}", rs.display())))?;
        if self.link {
            println!("cargo:rustc-link-arg={}", obj.display());
            println!("cargo:rustc-link-arg={}", lib.display());
            for l in SYSTEM_LIBS {
                println!("cargo:rustc-link-arg={l}");
            }
        }
        Ok(())
    }
}
