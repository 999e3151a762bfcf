//! The CUDA backend as far as a machine without a GPU can check it: a CUDA
//! session says exactly what is missing, and the CUDA C of every
//! elementwise and reduction kernel of the example models (and of graphs
//! using every elementwise op and reduction) compiles with NVRTC, which
//! needs no GPU, only libnvrtc (found by the loader, in
//! `/usr/local/cuda/lib64`, or in `KILN_NVRTC_DIR`). Where NVRTC is absent
//! the compile test says so and checks only that every kernel has source.

use kiln::graph::{Bindings, Graph, ReduceOp, Tensor};
use kiln::prelude::*;
use kiln_codegen::cuda;
use kiln_optimizer::{compile, CompileOptions};

#[test]
fn a_cuda_session_says_what_is_missing() {
    let graph = kiln_tests::mlp(&[4, 3]);
    let err = match Session::new(&graph, Device::Cuda(0)) {
        Ok(_) => panic!("the CUDA backend cannot run programs yet, so no session"),
        Err(e) => e.to_string(),
    };
    if !cuda::driver_available() {
        eprintln!("no CUDA driver here: checking the error says so");
        assert!(
            err.contains("cuda:0") && err.contains("no CUDA driver"),
            "{err}"
        );
    } else {
        eprintln!("a CUDA driver is present: {err}");
        assert!(err.contains("cuda:"), "{err}");
    }
    let err = Session::new(&graph, Device::Cuda(99))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("cuda:99"), "{err}");
}

#[test]
fn devices_parse() {
    assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
    assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
    assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
    assert!("cuda:x".parse::<Device>().is_err());
}

/// Graphs whose kernels cover every elementwise op and reduction kind.
fn op_graphs() -> Vec<(String, Graph)> {
    let mut out = Vec::new();
    for dtype in [DType::F32, DType::F64] {
        let g = GraphBuilder::new();
        let x = g.placeholder("x", dtype, shape![4, 33]).unwrap();
        let y = g.placeholder("y", dtype, shape![4, 33]).unwrap();
        let mut acc = x.add(y).unwrap();
        let unary: [fn(Tensor<'_>) -> kiln::graph::Result<Tensor<'_>>; 16] = [
            |t| t.neg(),
            |t| t.abs(),
            |t| t.sign(),
            |t| t.exp(),
            |t| t.sqrt(),
            |t| t.rsqrt(),
            |t| t.recip(),
            |t| t.sin(),
            |t| t.cos(),
            |t| t.tanh(),
            |t| t.sigmoid(),
            |t| t.erf(),
            |t| t.floor(),
            |t| t.ceil(),
            |t| t.round(),
            |t| t.log(),
        ];
        for f in unary {
            acc = acc.add(f(acc).unwrap()).unwrap();
        }
        let m = g.select(
            x.gt(y).unwrap(),
            x.maximum(y).unwrap(),
            x.minimum(y).unwrap(),
        );
        let m = m.unwrap().pow(y).unwrap().div(acc).unwrap();
        let i = m
            .cast(DType::I32)
            .unwrap()
            .mul(3i32)
            .unwrap()
            .div(2i32)
            .unwrap();
        let j = i
            .cast(DType::I64)
            .unwrap()
            .pow(2i64)
            .unwrap()
            .neg()
            .unwrap()
            .abs()
            .unwrap();
        let b = j
            .ne(0i64)
            .unwrap()
            .and(x.le(y).unwrap())
            .unwrap()
            .not()
            .unwrap();
        b.cast(dtype).unwrap().named("elementwise").unwrap();
        for (k, f) in [ReduceOp::Sum, ReduceOp::Prod, ReduceOp::Max, ReduceOp::Min]
            .into_iter()
            .enumerate()
        {
            let r = match f {
                ReduceOp::Sum => m.sum(&[1], true),
                ReduceOp::Prod => m.prod(&[0], false),
                ReduceOp::Max => m.max(&[0, 1], false),
                ReduceOp::Min => m.min(&[1], true),
            };
            r.unwrap().named(&format!("reduce{k}")).unwrap();
        }
        m.softmax(-1).unwrap().named("softmax").unwrap();
        m.argmax(1, false).unwrap().named("argmax").unwrap();
        j.sum(&[1], false).unwrap().named("int_sum").unwrap();
        let mut graph = g.into_graph();
        let names = [
            "elementwise",
            "reduce0",
            "reduce1",
            "reduce2",
            "reduce3",
            "softmax",
            "argmax",
            "int_sum",
        ];
        let outs = names.iter().map(|n| graph.find(n).unwrap()).collect();
        graph.set_outputs(outs).unwrap();
        out.push((format!("ops {dtype}"), graph));
    }
    out
}

#[test]
fn every_kernel_has_cuda_c_that_nvrtc_compiles() {
    let nvrtc = cuda::nvrtc_available();
    if !nvrtc {
        eprintln!(
            "NVRTC not found (no toolkit, KILN_NVRTC_DIR unset): checking that every \
             kernel has CUDA C, not compiling it"
        );
    }
    let mut graphs: Vec<(String, Graph)> = kiln_tests::example_models()
        .into_iter()
        .map(|(n, g)| (n.to_string(), g))
        .collect();
    graphs.extend(op_graphs());
    let mut compiled = 0;
    for (name, graph) in graphs {
        let bindings: Bindings = [("batch".to_string(), 2usize)].into_iter().collect();
        let opts = CompileOptions {
            freeze_variables: true,
            ..Default::default()
        };
        let program = compile(&graph, graph.outputs(), &bindings, &opts)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .program;
        let sources = cuda::sources(&program).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!sources.is_empty(), "{name}: no kernels emitted");
        if nvrtc {
            for s in &sources {
                cuda::compile(&s.source, "sm_90")
                    .unwrap_or_else(|e| panic!("{name}, {}: {e}\n{}", s.name, s.source));
                compiled += 1;
            }
        }
    }
    if nvrtc {
        eprintln!("compiled {compiled} kernels with NVRTC for sm_90");
    }
}
