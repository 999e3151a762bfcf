//! Convolutions as matrix products: an im2col kernel gathers each image's
//! receptive fields into a scratch matrix, and one strided batched GEMM
//! (cuBLAS) multiplies the weights by it, writing NCHW output directly.
//!
//! For image `b`, with `K = channels * kh * kw` and `P = oh * ow`,
//! `col_b[K][P]` holds the input under tap `k` for output pixel `p` (zero
//! in the padding), and `out_b[oc][P] = W[oc][K] col_b[K][P]`. In cuBLAS's
//! column-major terms that is `out_b^T (P x oc) = col_b^T (P x K) W^T
//! (K x oc)`: `A = col_b` with leading dimension `P`, `B = W` with leading
//! dimension `K` (the same for every image: stride 0), `C = out_b` with
//! leading dimension `P`.
//!
//! Grouped convolutions keep the direct kernel (`source::emit_op`).

use kiln_graph::{DType, Op};
use kiln_optimizer::kernel::{BufferId, Kernel, KernelProgram};

use super::exec::GemmCall;
use super::source::{self, KernelSource};

/// Kernel `k`'s convolution as im2col + GEMM: the im2col kernel (its
/// parameters: the scratch matrix, then the input, listed as `[input,
/// input]`), the scratch matrix's
/// size in bytes, and the GEMM (addresses 0: `A` is the scratch, `B` the
/// weights, `C` the output). `None` where the kernel is not an F32/F64
/// convolution of one group, or a dim is beyond cuBLAS's `int`.
pub fn im2col_gemm(program: &KernelProgram, k: usize) -> Option<(KernelSource, usize, GemmCall)> {
    let Kernel::Op { op, out, args, .. } = &program.kernels[k] else {
        return None;
    };
    let Op::Conv2d {
        stride,
        padding,
        dilation,
        groups,
        channels_last: false,
    } = op
    else {
        return None;
    };
    let t = program.buffer(*out).dtype;
    if *groups != 1
        || !matches!(t, DType::F32 | DType::F64)
        || args.len() != 2
        || program.buffer(args[0]).dtype != t
        || program.buffer(args[1]).dtype != t
    {
        return None;
    }
    let (xs, ws, os) = (
        &program.buffer(args[0]).shape,
        &program.buffer(args[1]).shape,
        &program.buffer(*out).shape,
    );
    if xs.len() != 4 || ws.len() != 4 || os.len() != 4 {
        return None;
    }
    let [n, ch, h, w] = [xs[0], xs[1], xs[2], xs[3]];
    let [oc, kh, kw] = [ws[0], ws[2], ws[3]];
    let [oh, ow] = [os[2], os[3]];
    let (kk, p) = (ch * kh * kw, oh * ow);
    if n * kk * p == 0 || ws[1] != ch || os[1] != oc {
        return None;
    }
    if [kk, p, oc, n].iter().any(|&v| v > i32::MAX as usize) {
        return None;
    }
    let c = source::ctype(t);
    let name = format!("kiln_k{k}_im2col");
    // 32-bit index arithmetic where it fits (64-bit division is slow).
    let (u, sfx) = if n * kk * p <= i32::MAX as usize {
        ("(unsigned)", "u")
    } else {
        ("", "LL")
    };
    let function = format!(
        "extern \"C\" __global__ void {name}(void* __restrict__ p0, void* __restrict__ p1, const i64 count) {{\n\
         for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < count; t += (i64)gridDim.x * blockDim.x) {{\n\
         const i64 px = {u}t % {ow}{sfx}, py = ({u}t / {ow}{sfx}) % {oh}{sfx}, tap = ({u}t / {p}{sfx}) % {kk}{sfx}, b = {u}t / {kp}{sfx};\n\
         const i64 kx = {u}tap % {kw}{sfx}, ky = ({u}tap / {kw}{sfx}) % {kh}{sfx}, ic = {u}tap / {khw}{sfx};\n\
         const i64 iy = py * {sy}LL + ky * {dy}LL - {pt}LL, ix = px * {sx}LL + kx * {dx}LL - {pl}LL;\n\
         (({c}*)p0)[t] = (iy < 0 || iy >= {h}LL || ix < 0 || ix >= {w}LL) ? ({c})0 : \
         (({c} const*)p1)[((b * {ch}LL + ic) * {h}LL + iy) * {w}LL + ix];\n\
         }}\n}}\n",
        kp = kk * p,
        khw = kh * kw,
        sy = stride[0],
        sx = stride[1],
        dy = dilation[0],
        dx = dilation[1],
        pt = padding[0],
        pl = padding[1],
    );
    let scratch = n * kk * p * t.size_bytes();
    let src = KernelSource {
        name,
        source: source::unit(&[KernelSource {
            name: String::new(),
            source: String::new(),
            function: function.clone(),
            params: Vec::new(),
            count: 0,
            error_word: false,
        }]),
        function,
        // Parameter 0 is the scratch matrix, which is no program buffer:
        // the executable binds it itself (see `exec`). The input stands in
        // for it here so that the list has one entry per pointer.
        params: vec![args[0], args[0]],
        count: n * kk * p,
        error_word: false,
    };
    let call = GemmCall {
        dtype: t,
        trans_a: false,
        trans_b: false,
        m: p,
        n: oc,
        k: kk,
        a: 0,
        lda: p,
        stride_a: (kk * p) as i64,
        b: 0,
        ldb: kk,
        stride_b: 0,
        c: 0,
        ldc: p,
        stride_c: (oc * p) as i64,
        batch: n,
    };
    Some((src, scratch, call))
}

/// The weights and output of kernel `k` (a convolution).
pub fn weights_and_output(program: &KernelProgram, k: usize) -> Option<(BufferId, BufferId)> {
    match &program.kernels[k] {
        Kernel::Op { out, args, .. } if args.len() == 2 => Some((args[1], *out)),
        _ => None,
    }
}
