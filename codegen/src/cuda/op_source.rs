//! CUDA C for the kernels that are not fused loop nests: matrix products
//! (the general form, where cuBLAS does not take one), gather,
//! scatter-add, convolution and pooling (`emit_op`). Elementwise and
//! reduction kernels and epilogues are in `source.rs`.

use std::fmt::Write;

use kiln_graph::DType;
use kiln_optimizer::kernel::{BufferId, Kernel, KernelProgram};

use super::source::{ctype, KernelSource, PRELUDE};

/// A matrix product of kernel `k` (`Kernel::MatMul`) as CUDA C: one thread
/// per output element over the batch, any operand strides, f32 summed in
/// double like the reference, integers wrapping. (cuBLAS will take the
/// f32 and f64 products that fit its layouts; this is the general form.)
/// Its epilogue, if any, is the separate kernel [`emit`] gives.
pub fn emit_matmul(program: &KernelProgram, k: usize) -> Option<KernelSource> {
    let Kernel::MatMul {
        out,
        a,
        b,
        batch,
        mnk: [m, n, kk],
        ..
    } = &program.kernels[k]
    else {
        return None;
    };
    let t = program.buffer(*out).dtype;
    let c = ctype(t);
    let (acc_t, mac) = match t {
        DType::F32 => ("double", "acc + (double)x * (double)y"),
        DType::F64 => ("double", "acc + x * y"),
        DType::Bool => return None,
        _ => (c, "(TYPE)((u64)acc + (u64)x * (u64)y)"),
    };
    let mac = mac.replace("TYPE", c);
    let nb: usize = batch.iter().product();
    let nbd = batch.len();
    let bst = kiln_graph::shape::strides(batch);
    let mut offsets = String::new();
    for d in 0..nbd {
        let _ = writeln!(
            offsets,
            "        {{ const i64 q = (bi / {}LL) % {}LL; oa += q * {}LL; ob += q * {}LL; }}",
            bst[d], batch[d], a.strides[d], b.strides[d]
        );
    }
    let name = format!("kiln_k{k}_matmul");
    let body = format!(
        "    for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < count; t += (i64)gridDim.x * blockDim.x) {{\n\
         const i64 j = t % {n}LL, i = (t / {n}LL) % {m}LL, bi = t / {mn}LL;\n\
         i64 oa = {ao}LL, ob = {bo}LL;\n{offsets}\
         const {c}* A = ({c} const*)p1 + oa + i * {ars}LL;\n\
         const {c}* B = ({c} const*)p2 + ob + j * {bcs}LL;\n\
         {acc_t} acc = 0;\n\
         for (i64 r = 0; r < {kk}LL; ++r) {{ const {c} x = A[r * {acs}LL]; const {c} y = B[r * {brs}LL]; acc = {mac}; }}\n\
         (({c}*)p0)[t] = ({c})acc;\n\
         }}\n",
        mn = m * n,
        ao = a.offset,
        bo = b.offset,
        ars = a.strides[nbd],
        acs = a.strides[nbd + 1],
        brs = b.strides[nbd],
        bcs = b.strides[nbd + 1],
    );
    let function = format!(
        "extern \"C\" __global__ void {name}(void* __restrict__ p0, void* __restrict__ p1, void* __restrict__ p2, const i64 count) {{\n{body}}}\n"
    );
    Some(KernelSource {
        name,
        source: format!("{PRELUDE}\n{function}"),
        function,
        params: vec![*out, a.buffer, b.buffer],
        count: nb * m * n,
        error_word: false,
    })
}

/// `out[o, i, p] = data[o, indices[i], p]` (numpy `take` along `axis`),
/// negative indices counting from the end; an index out of range sets the
/// error word and writes 0.
fn gather(
    program: &KernelProgram,
    k: usize,
    out: BufferId,
    args: &[BufferId],
    axis: usize,
) -> Option<KernelSource> {
    let data = program.buffer(args[0]);
    let idx = program.buffer(args[1]);
    if !matches!(idx.dtype, DType::I32 | DType::I64) || axis >= data.shape.len() {
        return None;
    }
    let c = ctype(data.dtype);
    let it = ctype(idx.dtype);
    let len = data.shape[axis];
    let inner: usize = data.shape[axis + 1..].iter().product();
    let nidx: usize = idx.shape.iter().product();
    let outer: usize = data.shape[..axis].iter().product();
    let count = outer * nidx * inner;
    let body = format!(
        "    for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < count; t += (i64)gridDim.x * blockDim.x) {{\n\
         const i64 q = t % {inner}LL, i = (t / {inner}LL) % {nidx}LL, o = t / {ni}LL;\n\
         i64 j = (i64)(({it} const*)p2)[i];\n\
         if (j < 0) j += {len}LL;\n\
         if (j < 0 || j >= {len}LL) {{ *(int*)err = {code}; (({c}*)p0)[t] = ({c})0; continue; }}\n\
         (({c}*)p0)[t] = (({c} const*)p1)[(o * {len}LL + j) * {inner}LL + q];\n\
         }}\n",
        inner = inner.max(1),
        nidx = nidx.max(1),
        ni = (inner * nidx).max(1),
        code = k + 1,
    );
    op_source(k, body, vec![out, args[0], args[1]], count, true)
}

/// Scatter-add of kernel `k` as two kernels: the data copied to the
/// output, then every update added at its index with an atomic add (so
/// repeated indices sum, in an order the hardware picks: floats may differ
/// from the reference's order in the last bits). `None` for other
/// kernels, bool data, or when the output shares memory with the updates
/// or indices (the copy would overwrite them first).
pub fn emit_scatter_add(program: &KernelProgram, k: usize) -> Option<[KernelSource; 2]> {
    use kiln_graph::Op;
    let Kernel::Op {
        op: Op::ScatterAdd { axis },
        out,
        args,
        ..
    } = &program.kernels[k]
    else {
        return None;
    };
    let (data, idx, upd) = (
        program.buffer(args[0]),
        program.buffer(args[1]),
        program.buffer(args[2]),
    );
    // CUDA has no 8- and 16-bit atomic adds: narrow integers run elsewhere.
    if !matches!(
        data.dtype,
        DType::F32 | DType::F64 | DType::I32 | DType::I64
    ) || !matches!(idx.dtype, DType::I32 | DType::I64)
    {
        return None;
    }
    let span = |b: BufferId| match program.buffer(b).storage {
        kiln_optimizer::kernel::Storage::Arena { offset } => {
            Some(offset..offset + program.buffer(b).size_bytes())
        }
        _ => None,
    };
    let overlaps = |b: BufferId| {
        b == *out
            || matches!((span(b), span(*out)), (Some(x), Some(y)) if x.start < y.end && y.start < x.end)
    };
    if overlaps(args[1]) || overlaps(args[2]) {
        return None;
    }
    let c = ctype(data.dtype);
    let it = ctype(idx.dtype);
    let n: usize = data.shape.iter().product();
    let copy = format!(
        "    for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < count; t += (i64)gridDim.x * blockDim.x) {{\n\
         (({c}*)p0)[t] = (({c} const*)p1)[t];\n\
         }}\n"
    );
    let len = data.shape[*axis];
    let inner: usize = data.shape[axis + 1..].iter().product();
    let nidx: usize = idx.shape.iter().product();
    let count: usize = upd.shape.iter().product();
    let add = match data.dtype {
        DType::F32 | DType::F64 => format!("atomicAdd(&(({c}*)p0)[at], v)"),
        DType::I32 => "atomicAdd(&((int*)p0)[at], v)".to_string(),
        _ => "atomicAdd((unsigned long long*)&((i64*)p0)[at], (unsigned long long)v)".to_string(),
    };
    let scatter = format!(
        "    for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < count; t += (i64)gridDim.x * blockDim.x) {{\n\
         const i64 q = t % {inner}LL, i = (t / {inner}LL) % {nidx}LL, o = t / {ni}LL;\n\
         i64 j = (i64)(({it} const*)p2)[i];\n\
         if (j < 0) j += {len}LL;\n\
         if (j < 0 || j >= {len}LL) {{ *(int*)err = {code}; continue; }}\n\
         const i64 at = (o * {len}LL + j) * {inner}LL + q;\n\
         const {c} v = (({c} const*)p1)[t];\n\
         {add};\n\
         }}\n",
        inner = inner.max(1),
        nidx = nidx.max(1),
        ni = (inner * nidx).max(1),
        code = k + 1,
    );
    let mut first = op_source(k, copy, vec![*out, args[0]], n, false)?;
    first.name = format!("kiln_k{k}_copy");
    first.function = first
        .function
        .replace(&format!("kiln_k{k}_op"), &first.name);
    first.source = first.source.replace(&format!("kiln_k{k}_op"), &first.name);
    let second = op_source(k, scatter, vec![*out, args[2], args[1]], count, true)?;
    Some([first, second])
}

/// A primitive op of kernel `k` (`Kernel::Op`) as CUDA C where it has
/// one: 2-D convolution and max/average pooling of f32 or f64, one thread
/// per output element, summing in double like the reference. `None` for
/// the others (gather, scatter, control flow), which run on the host.
/// Its epilogue, if any, is the separate kernel [`emit`] gives.
pub fn emit_op(program: &KernelProgram, k: usize) -> Option<KernelSource> {
    use kiln_graph::Op;
    let Kernel::Op { op, out, args, .. } = &program.kernels[k] else {
        return None;
    };
    let t = program.buffer(*out).dtype;
    if let Op::Gather { axis } = op {
        return gather(program, k, *out, args, *axis);
    }
    if !t.is_float() {
        return None;
    }
    let c = ctype(t);
    let dims = |b: BufferId| program.buffer(b).shape.clone();
    let o = dims(*out);
    let xs = dims(args[0]);
    if o.len() != 4 || xs.len() != 4 || program.buffer(args[0]).dtype != t {
        return None;
    }
    let [n, ch, h, w] = [xs[0], xs[1], xs[2], xs[3]];
    let [oc, oh, ow] = [o[1], o[2], o[3]];
    let count = n * oc * oh * ow;
    // 32-bit index arithmetic where it fits (64-bit division is slow).
    let (u, sfx) = if count <= i32::MAX as usize {
        ("(unsigned)", "u")
    } else {
        ("", "LL")
    };
    let head = format!(
        "    for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < count; t += (i64)gridDim.x * blockDim.x) {{\n\
         const i64 xo = {u}t % {ow}{sfx}, y = ({u}t / {ow}{sfx}) % {oh}{sfx}, oc = ({u}t / {ohw}{sfx}) % {oc}{sfx}, b = {u}t / {cohw}{sfx};\n",
        ohw = oh * ow,
        cohw = oc * oh * ow,
    );
    let (body, params) = match op {
        Op::Conv2d {
            stride,
            padding,
            dilation,
            groups,
            channels_last: false,
        } => {
            let ws = dims(args[1]);
            if ws.len() != 4 || program.buffer(args[1]).dtype != t {
                return None;
            }
            let [cg, kh, kw] = [ws[1], ws[2], ws[3]];
            let og = oc / groups.max(&1);
            let body = format!(
                "{head}\
                 const i64 g = oc / {og}LL;\n\
                 double s = 0.0;\n\
                 for (i64 ic = 0; ic < {cg}LL; ++ic) {{\n\
                 const i64 cin = g * {cg}LL + ic;\n\
                 for (i64 ky = 0; ky < {kh}LL; ++ky) {{\n\
                 const i64 iy = y * {sy}LL + ky * {dy}LL - {py}LL;\n\
                 if (iy < 0 || iy >= {h}LL) continue;\n\
                 for (i64 kx = 0; kx < {kw}LL; ++kx) {{\n\
                 const i64 ix = xo * {sx}LL + kx * {dx}LL - {px}LL;\n\
                 if (ix < 0 || ix >= {w}LL) continue;\n\
                 s += (double)(({c} const*)p1)[((b * {ch}LL + cin) * {h}LL + iy) * {w}LL + ix]\
                  * (double)(({c} const*)p2)[((oc * {cg}LL + ic) * {kh}LL + ky) * {kw}LL + kx];\n\
                 }} }} }}\n\
                 (({c}*)p0)[t] = ({c})s;\n\
                 }}\n",
                sy = stride[0],
                sx = stride[1],
                dy = dilation[0],
                dx = dilation[1],
                py = padding[0],
                px = padding[1],
            );
            (body, vec![*out, args[0], args[1]])
        }
        Op::MaxPool2d { window } | Op::AvgPool2d { window, .. } => {
            let avg = match op {
                Op::AvgPool2d {
                    count_include_pad, ..
                } => Some(*count_include_pad),
                _ => None,
            };
            let [kh, kw] = window.kernel;
            let (init, step, fin) = match avg {
                None => (
                    "double m = -1.0 / 0.0;",
                    "m = (v != v || m != m) ? __longlong_as_double(0x7ff8000000000000LL) : (v > m ? v : m);",
                    "m".to_string(),
                ),
                Some(include) => (
                    "double m = 0.0;",
                    "m += v; ++taps;",
                    format!(
                        "({d} == 0 ? __longlong_as_double(0x7ff8000000000000LL) : m / (double){d})",
                        d = if include { "padded" } else { "taps" }
                    ),
                ),
            };
            let body = format!(
                "{head}\
                 {init} i64 taps = 0, padded = 0;\n\
                 const i64 plane = b * {ch}LL + oc;\n\
                 for (i64 ky = 0; ky < {kh}LL; ++ky) {{\n\
                 const i64 iy = y * {sy}LL + ky * {dy}LL - {py}LL;\n\
                 const bool in_pad_y = iy < {hpad}LL;\n\
                 for (i64 kx = 0; kx < {kw}LL; ++kx) {{\n\
                 const i64 ix = xo * {sx}LL + kx * {dx}LL - {px}LL;\n\
                 if (in_pad_y && ix < {wpad}LL) ++padded;\n\
                 if (iy < 0 || iy >= {h}LL || ix < 0 || ix >= {w}LL) continue;\n\
                 const double v = (double)(({c} const*)p1)[(plane * {h}LL + iy) * {w}LL + ix];\n\
                 {step}\n\
                 }} }}\n\
                 (void)taps; (void)padded;\n\
                 (({c}*)p0)[t] = ({c})({fin});\n\
                 }}\n",
                sy = window.stride[0],
                sx = window.stride[1],
                dy = window.dilation[0],
                dx = window.dilation[1],
                py = window.padding[0],
                px = window.padding[1],
                hpad = h + window.padding[2],
                wpad = w + window.padding[3],
            );
            (body, vec![*out, args[0]])
        }
        _ => return None,
    };
    let error_word = false;
    op_source(k, body, params, count, error_word)
}

fn op_source(
    k: usize,
    body: String,
    params: Vec<BufferId>,
    count: usize,
    error_word: bool,
) -> Option<KernelSource> {
    let name = format!("kiln_k{k}_op");
    let sig: Vec<String> = (0..params.len())
        .map(|i| format!("void* __restrict__ p{i}"))
        .chain(error_word.then(|| "void* __restrict__ err".to_string()))
        .chain(["const i64 count".to_string()])
        .collect();
    let function = format!(
        "extern \"C\" __global__ void {name}({}) {{\n{body}}}\n",
        sig.join(", ")
    );
    Some(KernelSource {
        name,
        source: format!("{PRELUDE}\n{function}"),
        function,
        params,
        count,
        error_word,
    })
}
