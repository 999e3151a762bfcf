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

/// The `.npy` type code of `d` (little-endian).
fn npy_descr(d: DType) -> &'static str {
    match d {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
        DType::Bool => "|b1",
        DType::F16 => "<f2",
        DType::BF16 => "<V2",
    }
}

/// The C source of a standalone program around `{prefix}_run`: it takes
/// `NAME=FILE.npy` for each input (by the model's input names) and `-o DIR`
/// (default `.`), checks each file's type and shape against the model and
/// says what is wrong and where, runs the model, and writes each output to
/// `DIR/OUTPUT.npy` (`outputs` names them, in order).
pub fn standalone_main(program: &KernelProgram, prefix: &str, outputs: &[String]) -> String {
    let inputs: Vec<(String, DType, Vec<usize>)> = program
        .buffers
        .iter()
        .filter_map(|b| match &b.storage {
            Storage::Input { name } => Some((name.clone(), b.dtype, b.shape.clone())),
            _ => None,
        })
        .collect();
    let list = |dims: &[usize]| {
        if dims.is_empty() {
            "0".to_string()
        } else {
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let mut c = format!(
        r#"/* Generated by kiln: runs {prefix} on .npy files. */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "{prefix}.h"

static void die(const char *fmt, ...) {{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "{prefix}: error: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}}

static char *shape_text(const long *shape, int rank, char *buf, size_t n) {{
    size_t used = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < rank && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, "%ld%s", shape[i], rank == 1 ? "," : (i + 1 < rank ? ", " : ""));
    if (used < n) snprintf(buf + used, n - used, ")");
    return buf;
}}

/* The value of key `key` in an .npy header dict, copied into `out`. */
static int header_value(const char *h, const char *key, char *out, size_t n) {{
    char pat[32];
    snprintf(pat, sizeof pat, "'%s'", key);
    const char *p = strstr(h, pat);
    if (!p) return 0;
    p = strchr(p + strlen(pat), ':');
    if (!p) return 0;
    p++;
    while (*p == ' ') p++;
    size_t i = 0;
    if (*p == '(') {{
        while (*p && *p != ')' && i + 1 < n) out[i++] = *p++;
        if (*p == ')' && i + 1 < n) out[i++] = *p;
    }} else {{
        while (*p && *p != ',' && *p != '}}' && i + 1 < n) out[i++] = *p++;
    }}
    out[i] = 0;
    return 1;
}}

static void *read_npy(const char *path, const char *name, const char *descr, const long *shape, int rank, size_t bytes) {{
    FILE *f = fopen(path, "rb");
    if (!f) die("input '%s': cannot open %s: %s", name, path, strerror(errno));
    unsigned char pre[10];
    if (fread(pre, 1, 8, f) != 8 || memcmp(pre, "\x93NUMPY", 6) != 0)
        die("input '%s': %s is not an .npy file", name, path);
    size_t hlen;
    if (pre[6] == 1) {{
        if (fread(pre + 8, 1, 2, f) != 2) die("input '%s': %s is truncated", name, path);
        hlen = pre[8] | (size_t)pre[9] << 8;
    }} else if (pre[6] == 2 || pre[6] == 3) {{
        unsigned char l[4];
        if (fread(l, 1, 4, f) != 4) die("input '%s': %s is truncated", name, path);
        hlen = l[0] | (size_t)l[1] << 8 | (size_t)l[2] << 16 | (size_t)l[3] << 24;
    }} else die("input '%s': %s has unsupported .npy version %d", name, path, pre[6]);
    if (hlen > 1 << 20) die("input '%s': %s has a header of %zu bytes", name, path, hlen);
    char *h = malloc(hlen + 1);
    if (!h || fread(h, 1, hlen, f) != hlen) die("input '%s': %s is truncated", name, path);
    h[hlen] = 0;
    char v[256], want[128], got[128];
    if (!header_value(h, "descr", v, sizeof v)) die("input '%s': %s has no 'descr'", name, path);
    char d[16] = {{0}};
    sscanf(v, " '%15[^']'", d);
    if (strcmp(d, descr) != 0 && !(d[0] == '=' && strcmp(d + 1, descr + 1) == 0))
        die("input '%s': %s holds '%s' elements, the model takes '%s'", name, path, d, descr);
    if (!header_value(h, "fortran_order", v, sizeof v) || strstr(v, "True"))
        die("input '%s': %s is in Fortran order; write it C-ordered", name, path);
    if (!header_value(h, "shape", v, sizeof v)) die("input '%s': %s has no 'shape'", name, path);
    long fs[32];
    int frank = 0;
    for (char *p = v + 1; *p && *p != ')';) {{
        char *end;
        long x = strtol(p, &end, 10);
        if (end == p) {{ p++; continue; }}
        if (frank == 32) die("input '%s': %s has too many dims", name, path);
        fs[frank++] = x;
        p = end;
    }}
    int same = frank == rank;
    for (int i = 0; same && i < rank; i++) same = fs[i] == shape[i];
    if (!same)
        die("input '%s': %s has shape %s, the model takes %s", name, path,
            shape_text(fs, frank, got, sizeof got), shape_text(shape, rank, want, sizeof want));
    free(h);
    void *data = malloc(bytes ? bytes : 1);
    if (!data || fread(data, 1, bytes, f) != bytes)
        die("input '%s': %s has fewer data bytes than its shape needs (%zu)", name, path, bytes);
    fclose(f);
    return data;
}}

static void write_npy(const char *dir, const char *name, const char *descr, const long *shape, int rank, const void *data, size_t bytes) {{
    char path[4096], s[128], h[256];
    snprintf(path, sizeof path, "%s/%s.npy", dir, name);
    int n = snprintf(h, sizeof h, "{{'descr': '%s', 'fortran_order': False, 'shape': %s, }}", descr, shape_text(shape, rank, s, sizeof s));
    int total = 10 + n + 1;
    int pad = (64 - total % 64) % 64;
    FILE *f = fopen(path, "wb");
    if (!f) die("output '%s': cannot write %s: %s", name, path, strerror(errno));
    unsigned short hl = (unsigned short)(n + pad + 1);
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fputc(hl & 0xff, f);
    fputc(hl >> 8, f);
    fwrite(h, 1, (size_t)n, f);
    for (int i = 0; i < pad; i++) fputc(' ', f);
    fputc('\n', f);
    if (fwrite(data, 1, bytes, f) != bytes || fclose(f) != 0) die("output '%s': writing %s failed", name, path);
}}

int main(int argc, char **argv) {{
    const char *names[] = {{ {names} }};
    const char *files[{ni}] = {{ 0 }};
    const char *dir = ".";
    for (int i = 1; i < argc; i++) {{
        if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) {{ dir = argv[++i]; continue; }}
        const char *eq = strchr(argv[i], '=');
        int k = -1;
        for (int j = 0; eq && j < {ni}; j++)
            if (strlen(names[j]) == (size_t)(eq - argv[i]) && strncmp(argv[i], names[j], (size_t)(eq - argv[i])) == 0) k = j;
        if (k < 0) die("unknown argument '%s' (usage: %s{usage} [-o DIR])", argv[i], argv[0]);
        files[k] = eq + 1;
    }}
    const void *inputs[{ni}];
"#,
        names = inputs
            .iter()
            .map(|(n, _, _)| format!("\"{n}\""))
            .chain(std::iter::once("0".to_string()))
            .collect::<Vec<_>>()
            .join(", "),
        ni = inputs.len().max(1),
        usage = inputs
            .iter()
            .map(|(n, _, _)| format!(" {n}=FILE.npy"))
            .collect::<String>(),
    );
    for (k, (name, dt, shape)) in inputs.iter().enumerate() {
        let bytes = shape.iter().product::<usize>() * dt.size_bytes();
        c.push_str(&format!(
            "    {{\n        static const long shape[] = {{ {} }};\n        if (!files[{k}]) die(\"input '{name}' was not given (add {name}=FILE.npy)\");\n        inputs[{k}] = read_npy(files[{k}], \"{name}\", \"{}\", shape, {}, {bytes});\n    }}\n",
            list(shape),
            npy_descr(*dt),
            shape.len()
        ));
    }
    c.push_str(&format!(
        "    void *outputs[{}];\n",
        program.outputs.len().max(1)
    ));
    for (o, b) in program.outputs.iter().enumerate() {
        c.push_str(&format!(
            "    outputs[{o}] = malloc({});\n    if (!outputs[{o}]) die(\"out of memory\");\n",
            program.buffer(*b).size_bytes().max(1)
        ));
    }
    c.push_str(&format!("    {prefix}_run(inputs, outputs);\n"));
    for (o, b) in program.outputs.iter().enumerate() {
        let buf = program.buffer(*b);
        let name = outputs
            .get(o)
            .cloned()
            .unwrap_or_else(|| format!("output{o}"));
        c.push_str(&format!(
            "    {{\n        static const long shape[] = {{ {} }};\n        write_npy(dir, \"{name}\", \"{}\", shape, {}, outputs[{o}], {});\n    }}\n",
            list(&buf.shape),
            npy_descr(buf.dtype),
            buf.shape.len(),
            buf.size_bytes()
        ));
    }
    c.push_str("    return 0;\n}\n");
    c
}
