//! The `--exe` program of `kiln compile`: C source around `{prefix}_run`
//! that reads the inputs from `.npy` files as `kiln run` does, runs the
//! model and writes each output to `DIR/NAME.npy`. The model's tables (names,
//! types, shapes, `.npy` headers, help text) are generated here; the code
//! that uses them is `standalone.c`, the same for every model.

use kiln_graph::DType;
use kiln_optimizer::kernel::{KernelProgram, Storage};

/// The `.npy` type code of `d` with its byte order (as kiln's `.npy`
/// writer spells it); bf16, which `.npy` has no code for, travels as f32.
fn npy_descr(d: DType) -> &'static str {
    match d {
        DType::F32 | DType::BF16 => "<f4",
        DType::F64 => "<f8",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
        DType::I8 => "|i1",
        DType::I16 => "<i2",
        DType::U8 => "|u1",
        DType::U16 => "<u2",
        DType::U32 => "<u4",
        DType::U64 => "<u8",
        DType::Bool => "|b1",
        DType::F16 => "<f2",
    }
}

/// A C string literal holding `bytes`: printable ASCII as itself, the rest
/// (and `"`, `\`, `?`) as three-digit octal escapes, which cannot run into
/// the characters after them.
pub(super) fn c_literal(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() + 2);
    s.push('"');
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && !matches!(b, b'"' | b'\\' | b'?') {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\{b:03o}"));
        }
    }
    s.push('"');
    s
}

/// A shape as NumPy writes it: `(3, 5)`, `(5,)` or `()`.
fn numpy_shape(shape: &[usize]) -> String {
    match shape {
        [n] => format!("({n},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The bytes an `.npy` file (version 1.0) holds before its data.
fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let mut h = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': {}, }}",
        numpy_shape(shape)
    );
    // Magic, version, length and header: a multiple of 64, ending in '\n'.
    let unpadded = 6 + 2 + 2 + h.len() + 1;
    h.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    h.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    match u16::try_from(h.len()) {
        Ok(n) => {
            out.extend_from_slice(&[1, 0]);
            out.extend_from_slice(&n.to_le_bytes());
        }
        // Thousands of dims: version 2.0's four-byte length (the padding
        // above is then off by two, which readers accept).
        Err(_) => {
            out.extend_from_slice(&[2, 0]);
            out.extend_from_slice(&(h.len() as u32).to_le_bytes());
        }
    }
    out.extend_from_slice(h.as_bytes());
    out
}

/// The file each output is written to: its name with `/` and `\` as `_`,
/// plus `.npy`; a name that would repeat an earlier one's file gets `_K`
/// added (its output index, or the next number free), so no output
/// overwrites another.
pub fn output_files(outputs: &[String]) -> Vec<String> {
    let mut files: Vec<String> = Vec::with_capacity(outputs.len());
    for (k, name) in outputs.iter().enumerate() {
        let mut stem = name.replace(['/', '\\'], "_");
        if stem.is_empty() || stem == "." || stem == ".." {
            stem = format!("output{k}");
        }
        let mut file = format!("{stem}.npy");
        let mut n = k;
        while files.contains(&file) {
            file = format!("{stem}_{n}.npy");
            n += 1;
        }
        files.push(file);
    }
    files
}

/// A type as kiln prints it: `f32[1, 10]`.
fn type_text(d: DType, shape: &[usize]) -> String {
    format!("{d}{shape:?}")
}

/// Column text for the help: the name padded to `width`.
fn padded(name: &str, width: usize) -> String {
    format!("{name:<width$}")
}

/// The C source of a standalone program around `{prefix}_run`: it takes
/// `NAME=FILE.npy` for each input (by the model's input names; `.npy`
/// versions 1 to 3, C order, either byte order, as `kiln run` reads them)
/// and `-o DIR` (created if missing, before the model runs; default the
/// current directory), checks each file's type and shape against the model
/// and says what is wrong and where, runs the model, writes each output to
/// `DIR/FILE` (`outputs` names them, in order; files as [`output_files`])
/// and prints what it wrote. `--help` lists the inputs and outputs.
pub fn standalone_main(program: &KernelProgram, prefix: &str, outputs: &[String]) -> String {
    let inputs: Vec<(String, DType, Vec<usize>)> = program
        .buffers
        .iter()
        .filter_map(|b| match &b.storage {
            Storage::Input { name } => Some((name.clone(), b.dtype, b.shape.clone())),
            _ => None,
        })
        .collect();
    let names: Vec<String> = (0..program.outputs.len())
        .map(|k| {
            outputs
                .get(k)
                .cloned()
                .unwrap_or_else(|| format!("output{k}"))
        })
        .collect();
    let files = output_files(&names);
    let mut c = format!(
        "/* Generated by kiln: runs the model {prefix} on .npy files ({prefix} --help). */\n\
         #include <errno.h>\n#include <stdarg.h>\n#include <stdint.h>\n#include <stdio.h>\n\
         #include <stdlib.h>\n#include <string.h>\n#include <sys/stat.h>\n#include <sys/types.h>\n\
         #include <time.h>\n#include <unistd.h>\n#include \"{prefix}.h\"\n\n\
         static const char *PROGRAM = \"{prefix}\";\n#define MODEL_RUN {prefix}_run\n\n\
         struct input {{\n    const char *name, *code, *descr, *shape_text;\n    \
         size_t count, file_width;\n    int rank, is_bool, is_bf16;\n    \
         const unsigned long long *shape;\n}};\n\n\
         struct output {{\n    const char *name, *file, *type;\n    const char *header;\n    \
         size_t header_len, count, width, bytes;\n    int is_bf16;\n}};\n\n"
    );
    for (k, (_, _, shape)) in inputs.iter().enumerate() {
        c.push_str(&format!(
            "static const unsigned long long SHAPE_{k}[] = {{ {} }};\n",
            if shape.is_empty() {
                "0".to_string()
            } else {
                shape
                    .iter()
                    .map(|d| format!("{d}ull"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
    }
    c.push_str(&format!(
        "#define N_INPUTS {}\nstatic const struct input INPUTS[N_INPUTS + 1] = {{\n",
        inputs.len()
    ));
    for (k, (name, d, shape)) in inputs.iter().enumerate() {
        let descr = npy_descr(*d);
        let count: usize = shape.iter().product();
        c.push_str(&format!(
            "    {{ {}, {}, {}, {}, {count}, {}, {}, {}, {}, SHAPE_{k} }},\n",
            c_literal(name.as_bytes()),
            c_literal(&descr.as_bytes()[1..]),
            c_literal(descr.as_bytes()),
            c_literal(numpy_shape(shape).as_bytes()),
            if *d == DType::BF16 { 4 } else { d.size_bytes() },
            shape.len(),
            u8::from(*d == DType::Bool),
            u8::from(*d == DType::BF16),
        ));
    }
    c.push_str("    { 0 }\n};\n\n");
    c.push_str(&format!(
        "#define N_OUTPUTS {}\nstatic const struct output OUTPUTS[N_OUTPUTS + 1] = {{\n",
        program.outputs.len()
    ));
    for (k, b) in program.outputs.iter().enumerate() {
        let buf = program.buffer(*b);
        let header = npy_header(npy_descr(buf.dtype), &buf.shape);
        let count: usize = buf.shape.iter().product();
        let written = if buf.dtype == DType::BF16 {
            format!("{} (bf16 written as f32)", type_text(buf.dtype, &buf.shape))
        } else {
            type_text(buf.dtype, &buf.shape)
        };
        c.push_str(&format!(
            "    {{ {}, {}, {}, {}, {}, {count}, {}, {}, {} }},\n",
            c_literal(names[k].as_bytes()),
            c_literal(files[k].as_bytes()),
            c_literal(written.as_bytes()),
            c_literal(&header),
            header.len(),
            buf.dtype.size_bytes(),
            buf.size_bytes(),
            u8::from(buf.dtype == DType::BF16),
        ));
    }
    c.push_str("    { 0 }\n};\n\n");
    // The help: what the program takes and writes.
    let usage: String = inputs
        .iter()
        .map(|(n, _, _)| format!(" {n}=FILE.npy"))
        .collect();
    let example: String = inputs
        .iter()
        .map(|(n, _, _)| format!(" {n}={}.npy", n.replace(['/', '\\'], "_")))
        .collect();
    let width = inputs
        .iter()
        .map(|(n, _, _)| n.len())
        .chain(names.iter().map(String::len))
        .max()
        .unwrap_or(0);
    let mut help = format!(
        "Runs the model {prefix}, compiled ahead of time by kiln, on .npy files and\n\
         writes each output to DIR/FILE (DIR: default the current directory;\n\
         created if missing).\n\n\
         Inputs, each as NAME=FILE.npy (NumPy's np.save: C order, either byte order):\n"
    );
    if inputs.is_empty() {
        help.push_str("  (none)\n");
    }
    for (n, d, s) in &inputs {
        let t = type_text(*d, s);
        let note = if *d == DType::BF16 {
            " (.npy has no bf16: give f32)"
        } else {
            ""
        };
        help.push_str(&format!("  {}  {t}{note}\n", padded(n, width)));
    }
    help.push_str("Outputs:\n");
    let types: Vec<String> = program
        .outputs
        .iter()
        .map(|b| type_text(program.buffer(*b).dtype, &program.buffer(*b).shape))
        .collect();
    let type_width = types.iter().map(String::len).max().unwrap_or(0);
    for (k, t) in types.iter().enumerate() {
        help.push_str(&format!(
            "  {}  {}  -> {}\n",
            padded(&names[k], width),
            padded(t, type_width),
            files[k]
        ));
    }
    help.push_str(
        "\nOptions:\n  -o, --output DIR  where to write the outputs\n  \
         --time SECONDS    also time the model: after the first run and 5 more,\n                    \
         runs for SECONDS (at least 10 runs), then prints one line of\n                    \
         JSON (first run, median and p90 in ms, runs)\n  \
         -h, --help        this text\n\
         Threads: KILN_NUM_THREADS (default: every core).\n",
    );
    c.push_str(&format!(
        "static const char *USAGE = {};\nstatic const char *EXAMPLE = {};\nstatic const char *HELP = {};\n\n",
        c_literal(usage.as_bytes()),
        c_literal(example.as_bytes()),
        c_literal(help.as_bytes()),
    ));
    c.push_str(include_str!("standalone.c"));
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_literals_escape_what_c_would_read_otherwise() {
        assert_eq!(c_literal(b"probs"), "\"probs\"");
        assert_eq!(
            c_literal(b"a\"b\\c?\n\x93N"),
            "\"a\\042b\\134c\\077\\012\\223N\""
        );
    }

    #[test]
    fn output_files_never_overwrite_each_other() {
        let names: Vec<String> = [
            "scores/y", "scores_y", "probs", "probs", "", "..", "a_7", "a", "a",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            output_files(&names),
            [
                "scores_y.npy",
                "scores_y_1.npy",
                "probs.npy",
                "probs_3.npy",
                "output4.npy",
                "output5.npy",
                "a_7.npy",
                "a.npy",
                "a_8.npy"
            ]
        );
    }

    #[test]
    fn npy_headers_are_padded_to_64_bytes() {
        for shape in [vec![], vec![7], vec![2, 3, 4]] {
            let h = npy_header("<f4", &shape);
            assert_eq!(h.len() % 64, 0, "{shape:?}");
            assert_eq!(h.last(), Some(&b'\n'));
            let text = String::from_utf8_lossy(&h[10..]);
            assert!(text.contains(&numpy_shape(&shape)), "{text}");
        }
        assert_eq!(numpy_shape(&[7]), "(7,)");
        assert_eq!(numpy_shape(&[]), "()");
    }
}
