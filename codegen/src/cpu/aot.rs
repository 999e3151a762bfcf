//! Ahead-of-time code (first part of issue 7): a kernel program compiled by
//! the same emitter as the JIT into an object file (`cranelift-object`,
//! position-independent) with its constants as read-only data, its arena as
//! a zeroed static block, and one entry point, `{prefix}_run(inputs,
//! outputs)`; plus a C header declaring it with the inputs' and outputs'
//! types and shapes. `cc main.c model.o -lm` links a program that runs the
//! model (tests/tests/aot.rs compares it with the JIT session).
//!
//! What is here compiles programs made of loop nests (elementwise kernels
//! and reductions) whose operations are inline code. Matrix products,
//! convolutions and ops, which the JIT's executor runs through its own
//! support code, and the transcendental functions JIT code calls need the
//! static runtime library that comes next; they are refused with an error.

use kiln_graph::DType;
use kiln_optimizer::kernel::{KernelProgram, Storage};

use super::jit::{Jit, Target};
use super::{compile_kernels, Pending};
use crate::error::{Error, Result};

/// One exported kernel function.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectKernel {
    /// Its position in run order (the program kernel it computes: every
    /// kernel of a program taken here is one loop nest).
    pub kernel: usize,
    /// Its symbol: `{prefix}_kN`.
    pub symbol: String,
    /// Extent of its outermost loop (the `hi` of a whole call).
    pub extent: usize,
}

/// A program compiled ahead of time.
#[derive(Clone, Debug)]
pub struct ObjectCode {
    /// The object file (ELF on Linux).
    pub bytes: Vec<u8>,
    /// Its kernel functions in run order, each
    /// `void f(void *const *buffers, int64_t lo, int64_t hi)`.
    pub kernels: Vec<ObjectKernel>,
}

/// Compiles `program`'s kernels for `target` into an object file whose
/// functions are named `{prefix}_kN`. Errors for a program with a matrix
/// product, convolution or other op (they need the runtime library).
pub fn compile_object(program: &KernelProgram, prefix: &str, target: Target) -> Result<ObjectCode> {
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
    needs_no_runtime(program)?;
    let mut jit = Jit::object(prefix, target)?;
    let pending = compile_kernels(&mut jit, program)?;
    let mut kernels = Vec::new();
    let mut calls = Vec::new();
    for p in pending {
        match p {
            Pending::Jit(id, shape, _) => {
                let extent = shape.first().copied().unwrap_or(1);
                calls.push((id, extent));
                kernels.push(ObjectKernel {
                    kernel: kernels.len(),
                    symbol: jit.symbol(id),
                    extent,
                })
            }
            Pending::MatMul(k, _) | Pending::Op(k, _) => {
                return Err(Error::Codegen {
                    kernel: k,
                    reason: format!(
                        "a {} kernel needs kiln's runtime library, which ahead-of-time \
                         binaries do not have yet",
                        program.kernels[k].label()
                    ),
                })
            }
        }
    }
    jit.entry(program, &calls)?;
    Ok(ObjectCode {
        bytes: jit.emit()?,
        kernels,
    })
}

/// An error for a program whose code would call kiln's support functions
/// (transcendentals, pow, random samples, half conversions), which the
/// runtime library will provide.
fn needs_no_runtime(program: &KernelProgram) -> Result<()> {
    use kiln_graph::BinaryOp;
    use kiln_optimizer::kernel::{Instr, Kernel};
    let refuse = |k: usize, what: String| {
        Err(Error::Codegen {
            kernel: k,
            reason: format!(
                "{what} needs kiln's runtime library, which ahead-of-time binaries \
                 do not have yet"
            ),
        })
    };
    if let Some(b) = program.buffers.iter().find(|b| b.dtype.is_half()) {
        return refuse(usize::MAX, format!("a {} tensor", b.dtype));
    }
    for (k, kernel) in program.kernels.iter().enumerate() {
        let programs: Vec<&kiln_optimizer::kernel::ElementProgram> = match kernel {
            Kernel::Elementwise { program: p, .. } => vec![p],
            Kernel::Reduce { body, map, .. } => std::iter::once(body)
                .chain(map.iter().map(|m| &m.1))
                .collect(),
            _ => Vec::new(),
        };
        for p in programs {
            for ins in &p.instrs {
                match ins {
                    Instr::Unary(f, _) if super::support::CALLED_UNARY.contains(f) => {
                        return refuse(k, format!("{f:?}"));
                    }
                    Instr::Binary(BinaryOp::Pow, _, _) => return refuse(k, "pow".into()),
                    Instr::Random { .. } => return refuse(k, "a random op".into()),
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

fn c_type(d: DType) -> &'static str {
    match d {
        DType::F32 => "float",
        DType::F64 => "double",
        DType::I32 => "int32_t",
        DType::I64 => "int64_t",
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
/// comments, the kernel functions, and per buffer where it lives.
pub fn header(program: &KernelProgram, code: &ObjectCode, prefix: &str) -> String {
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
        "/* Generated by kiln. Not reentrant: the arena is one static block. */\n\
         #ifndef {up}_H\n#define {up}_H\n#include <stdint.h>\n\n\
         /* Runs the model: inputs[i] and outputs[j] point at dense row-major\n   \
         arrays of the types and sizes below. */\n\
         void {prefix}_run(const void *const *inputs, void *const *outputs);\n\n\
         #define {up}_INPUTS {}\n#define {up}_OUTPUTS {}\n#define {up}_ARENA_BYTES {}\n\n",
        inputs.len(),
        program.outputs.len(),
        program.memory.arena,
    );
    for (k, (i, name)) in inputs.iter().enumerate() {
        let b = &program.buffers[*i];
        let n: usize = b.shape.iter().product();
        let cn = c_name(name);
        h.push_str(&format!(
            "/* input {k}: \"{name}\", {} {:?} */\n#define {up}_INPUT_{cn} {k}\n#define {up}_INPUT_{cn}_ELEMENTS {n}\n",
            c_type(b.dtype),
            b.shape
        ));
    }
    for (k, o) in program.outputs.iter().enumerate() {
        let b = program.buffer(*o);
        let n: usize = b.shape.iter().product();
        h.push_str(&format!(
            "/* output {k}: {} {:?} */\n#define {up}_OUTPUT_{k}_ELEMENTS {n}\n",
            c_type(b.dtype),
            b.shape
        ));
    }
    h.push('\n');
    for (i, b) in program.buffers.iter().enumerate() {
        let place = match &b.storage {
            Storage::Input { name } => format!("input \"{name}\""),
            Storage::Variable { name } => format!("variable \"{name}\""),
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
    for k in &code.kernels {
        h.push_str(&format!(
            "void {}(void *const *buffers, int64_t lo, int64_t hi); /* hi = {} */\n",
            k.symbol, k.extent
        ));
    }
    h.push_str(&format!("\n#endif /* {up}_H */\n"));
    h
}
