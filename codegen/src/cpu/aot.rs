//! Ahead-of-time code: a kernel program compiled by the same emitter as the
//! JIT into an object file (`cranelift-object`, position-independent) with
//! its constants as read-only data, its arena as a zeroed static block, its
//! steps as a `kiln_rt::blob` list, and two entry points, `{prefix}_run(inputs,
//! outputs)` on the static arena (calls serialized) and
//! `{prefix}_run_r(inputs, outputs, arena)` on the caller's (re-entrant),
//! which hand them to `kiln-rt`'s executor (`kiln_rt_run`): the
//! JIT session's own executor, so matrix products, convolutions and thread
//! splits run the same code. Plus a C header declaring it with the inputs'
//! and outputs' types and shapes, and a standalone `.npy` program.
//! `cc main.c model.o libkiln_rt.a -lm -lpthread -ldl` links a program that
//! runs the model (tests/tests/aot.rs compares it with the JIT session).
//!
//! Ops the executor has no code for (scatter-add, control flow: the JIT
//! runs them through kiln's interpreter) are refused with an error naming
//! them.

use kiln_graph::DType;
use kiln_optimizer::kernel::{Kernel, KernelProgram, Storage};

use super::jit::{Jit, Target};
use super::{compile_kernels, write_steps};
use crate::error::{Error, Result};

mod standalone;

pub use standalone::{output_files, standalone_main};

/// A program compiled ahead of time.
#[derive(Clone, Debug)]
pub struct ObjectCode {
    /// The object file (ELF on Linux).
    pub bytes: Vec<u8>,
    /// Its loop-nest functions (kernels and epilogues), in the order the
    /// step list names them, each
    /// `void f(void *const *buffers, int64_t lo, int64_t hi)`.
    pub functions: Vec<String>,
    /// Steps in the step list (loop nests, products, convolutions).
    pub steps: usize,
}

/// Compiles `program` for `target` into an object file whose functions are
/// named `{prefix}_...`. Errors for a program with an op the run-time
/// library has no code for, or with variables it assigns (training).
pub fn compile_object(program: &KernelProgram, prefix: &str, target: Target) -> Result<ObjectCode> {
    compile_object_with(program, prefix, target, super::Dumps::default())
}

/// [`compile_object`], printing the generated code that `dumps` asks for.
pub fn compile_object_with(
    program: &KernelProgram,
    prefix: &str,
    target: Target,
    dumps: super::Dumps,
) -> Result<ObjectCode> {
    if prefix.is_empty()
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        || prefix.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(Error::Codegen {
            kernel: usize::MAX,
            reason: format!("'{prefix}' is not a C identifier"),
        });
    }
    check_sizes(program)?;
    let mut jit = Jit::object(prefix, target)?;
    jit.set_dumps(dumps);
    let pending = compile_kernels(&mut jit, program)?;
    let steps = write_steps(program, &pending)?;
    if let Some(&k) = steps.host.values().min() {
        let what = match &program.kernels[k] {
            Kernel::Op { op, out, .. } => {
                format!("a {} op ({})", op.name(), program.buffer(*out).dtype)
            }
            other => other.label().to_string(),
        };
        return Err(Error::Codegen {
            kernel: k,
            reason: format!(
                "{what} has no code in kiln's runtime library (the JIT runs it through \
                 the interpreter), so ahead-of-time binaries cannot take it yet"
            ),
        });
    }
    let functions = steps.functions.iter().map(|&id| jit.symbol(id)).collect();
    jit.entry(program, &steps.functions, &steps.words)?;
    Ok(ObjectCode {
        bytes: jit.emit()?,
        functions,
        steps: pending.len(),
    })
}

/// The most bytes of static data (the arena, the constants and scratch)
/// an object may hold: x86-64 code reaches its data with 32-bit
/// PC-relative offsets, so a program's code and data, the run-time library
/// and libc included, must span less than 2 GiB; 16 MiB of that is left to
/// code and the libraries.
pub const MAX_STATIC_BYTES: usize = (1 << 31) - (1 << 24);

/// A byte count for people: B, KiB, MiB, GiB or TiB.
fn human_bytes(b: usize) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut x = b as f64 / 1024.0;
    let mut unit = 0;
    while x >= 1024.0 && unit + 1 < UNITS.len() {
        x /= 1024.0;
        unit += 1;
    }
    format!("{x:.1} {}", UNITS[unit])
}

/// Checks that `program` fits an object file before any code is made: each
/// buffer's size is a byte count that fits `isize`, and the static data
/// (the arena, the constants and scratch results) is at most
/// [`MAX_STATIC_BYTES`]. Past that, the link would fail with relocation
/// errors; the error here names the sizes and the bound dims instead.
pub fn check_sizes(program: &KernelProgram) -> Result<()> {
    let dims = if program.bindings.is_empty() {
        String::new()
    } else {
        format!(
            " with {}",
            program
                .bindings
                .iter()
                .map(|(s, n)| format!("{s}={n}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut weights = 0usize;
    let mut scratch = 0usize;
    for (i, b) in program.buffers.iter().enumerate() {
        let bytes = b
            .shape
            .iter()
            .try_fold(b.dtype.size_bytes(), |a, &d| a.checked_mul(d))
            .filter(|&n| isize::try_from(n).is_ok())
            .ok_or_else(|| {
                Error::Input(format!(
                    "buffer {i} ('{}', {} {:?}){dims} has more bytes than this machine can address",
                    b.node, b.dtype, b.shape
                ))
            })?;
        match &b.storage {
            Storage::Constant { .. } => weights = weights.saturating_add(bytes),
            Storage::Result
                if !program
                    .outputs
                    .contains(&kiln_optimizer::kernel::BufferId(i)) =>
            {
                scratch = scratch.saturating_add(bytes)
            }
            _ => {}
        }
    }
    let arena = program.memory.arena.max(64);
    let total = arena.saturating_add(weights).saturating_add(scratch);
    if total > MAX_STATIC_BYTES {
        return Err(Error::Input(format!(
            "the model{dims} needs a {} arena and {} of weights{}, more than an \
             ahead-of-time object can hold (2 GiB less 16 MiB for code: x86-64 code \
             reaches its data with 32-bit offsets){}",
            human_bytes(arena),
            human_bytes(weights),
            if scratch > 0 {
                format!(" and {} of scratch", human_bytes(scratch))
            } else {
                String::new()
            },
            if dims.is_empty() {
                String::new()
            } else {
                "; bind smaller sizes".to_string()
            }
        )));
    }
    Ok(())
}

fn c_type(d: DType) -> &'static str {
    match d {
        DType::F32 => "float",
        DType::F64 => "double",
        DType::I32 => "int32_t",
        DType::I64 => "int64_t",
        DType::I8 => "int8_t",
        DType::I16 => "int16_t",
        DType::U8 => "uint8_t",
        DType::U16 => "uint16_t",
        DType::U32 => "uint32_t",
        DType::U64 => "uint64_t",
        DType::Bool => "uint8_t",
        DType::F16 | DType::BF16 => "uint16_t",
    }
}

/// The C identifier for a tensor name: letters and digits kept, the rest
/// `_`, upper-cased.
fn c_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// A C header for `code`: the entry point `{prefix}_run`, each input's and
/// output's position, type, element count and shape as constants and
/// comments, the kernel functions, and per buffer where it lives. Outputs
/// are known by index (`{PREFIX}_OUTPUT_0_ELEMENTS`); [`header_named`] adds
/// their names.
pub fn header(program: &KernelProgram, code: &ObjectCode, prefix: &str) -> String {
    header_named(program, code, prefix, &[])
}

/// Text that cannot end the C comment it is put in.
fn comment(text: &str) -> String {
    text.replace("*/", "* /")
}

/// The C names of `names` for macros, with `None` for each one whose C name
/// another also has (`a/b` and `a_b`), or, where `indexed`, that is a
/// number (it would clash with the indexed macros).
fn macro_names(names: &[&str], indexed: bool) -> Vec<Option<String>> {
    let c: Vec<String> = names.iter().map(|n| c_name(n)).collect();
    c.iter()
        .map(|n| {
            let clash = c.iter().filter(|m| *m == n).count() > 1
                || (indexed && !n.is_empty() && n.chars().all(|ch| ch.is_ascii_digit()));
            (!clash).then(|| n.clone())
        })
        .collect()
}

/// [`header`], with the outputs also known by `outputs`, their names in
/// output order: `{PREFIX}_OUTPUT_{NAME}` is the output's position and
/// `{PREFIX}_OUTPUT_{NAME}_ELEMENTS` its element count (names as C
/// identifiers: letters and digits upper-cased, the rest `_`; names whose
/// C names clash get only the indexed macros).
pub fn header_named(
    program: &KernelProgram,
    code: &ObjectCode,
    prefix: &str,
    outputs: &[String],
) -> String {
    let up = prefix.to_ascii_uppercase();
    let inputs: Vec<(usize, &str)> = program
        .buffers
        .iter()
        .enumerate()
        .filter_map(|(i, b)| match &b.storage {
            Storage::Input { name } => Some((i, name.as_str())),
            _ => None,
        })
        .collect();
    let mut h = format!(
        "/* Generated by kiln. Link with libkiln_rt.a (and -lm -lpthread -ldl).\n   \
         {prefix}_run's calls are serialized (its arena is one static block);\n   \
         {prefix}_run_r's run at the same time, each on its caller's arena. */\n\
         #ifndef {up}_H\n#define {up}_H\n#include <stddef.h>\n#include <stdint.h>\n\n\
         /* Runs the model: inputs[i] and outputs[j] point at dense row-major\n   \
         arrays of the types and sizes below. Returns 0, or nonzero with\n   \
         kiln_rt_last_error() saying why. The first call also packs the\n   \
         weights (once). Threads: KILN_NUM_THREADS, else every core. */\n\
         int {prefix}_run(const void *const *inputs, void *const *outputs);\n\
         /* The same on `arena`: {prefix}_arena_bytes() bytes (= {up}_ARENA_BYTES),\n   \
         64-byte aligned, the caller's for the call (one arena per thread). */\n\
         int {prefix}_run_r(const void *const *inputs, void *const *outputs, void *arena);\n\
         size_t {prefix}_arena_bytes(void);\n\
         const char *kiln_rt_last_error(void);\n\n\
         #define {up}_INPUTS {}\n#define {up}_OUTPUTS {}\n#define {up}_ARENA_BYTES {}\n\n",
        inputs.len(),
        program.outputs.len(),
        super::object::arena_layout(program).0,
    );
    let input_names: Vec<&str> = inputs.iter().map(|(_, n)| *n).collect();
    for (k, ((i, name), cn)) in inputs
        .iter()
        .zip(macro_names(&input_names, false))
        .enumerate()
    {
        let b = &program.buffers[*i];
        let n: usize = b.shape.iter().product();
        h.push_str(&format!(
            "/* input {k}: \"{}\", {} {:?} */\n",
            comment(name),
            c_type(b.dtype),
            b.shape
        ));
        match cn {
            Some(cn) => h.push_str(&format!(
                "#define {up}_INPUT_{cn} {k}\n#define {up}_INPUT_{cn}_ELEMENTS {n}\n"
            )),
            None => h.push_str("/* (no named macros: another input's C name is the same) */\n"),
        }
    }
    let output_names: Vec<&str> = outputs
        .iter()
        .take(program.outputs.len())
        .map(String::as_str)
        .collect();
    let named = macro_names(&output_names, true);
    for (k, o) in program.outputs.iter().enumerate() {
        let b = program.buffer(*o);
        let n: usize = b.shape.iter().product();
        match output_names.get(k) {
            Some(name) => h.push_str(&format!(
                "/* output {k}: \"{}\", {} {:?} */\n",
                comment(name),
                c_type(b.dtype),
                b.shape
            )),
            None => h.push_str(&format!(
                "/* output {k}: {} {:?} */\n",
                c_type(b.dtype),
                b.shape
            )),
        }
        h.push_str(&format!("#define {up}_OUTPUT_{k}_ELEMENTS {n}\n"));
        match named.get(k) {
            Some(Some(cn)) => h.push_str(&format!(
                "#define {up}_OUTPUT_{cn} {k}\n#define {up}_OUTPUT_{cn}_ELEMENTS {n}\n"
            )),
            Some(None) => {
                h.push_str("/* (no named macros: its C name is another output's or a number) */\n")
            }
            None => {}
        }
    }
    h.push('\n');
    for (i, b) in program.buffers.iter().enumerate() {
        let place = match &b.storage {
            Storage::Input { name } => format!("input \"{}\"", comment(name)),
            Storage::Variable { name } => format!("variable \"{}\"", comment(name)),
            Storage::Constant { .. } => "constant".into(),
            Storage::Result => "result".into(),
            Storage::Arena { offset } => format!("arena + {offset}"),
        };
        h.push_str(&format!(
            "/* buffer {i}: {} [{}] {:?}, {place} */\n",
            c_type(b.dtype),
            b.shape.iter().product::<usize>(),
            b.shape,
        ));
    }
    h.push('\n');
    for f in &code.functions {
        h.push_str(&format!(
            "void {f}(void *const *buffers, int64_t lo, int64_t hi);\n"
        ));
    }
    h.push_str(&format!("\n#endif /* {up}_H */\n"));
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_whose_c_names_clash_get_no_macros() {
        assert_eq!(
            macro_names(&["a/b", "a_b", "probs", "1"], true),
            [None, None, Some("PROBS".to_string()), None]
        );
        assert_eq!(macro_names(&["1"], false), [Some("1".to_string())]);
    }

    #[test]
    fn byte_counts_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(human_bytes(MAX_STATIC_BYTES), "2.0 GiB");
        assert_eq!(human_bytes(5 << 40), "5.0 TiB");
    }
}
