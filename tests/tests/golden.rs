//! Kernel counts of the fusion of an MLP, a CNN block and layer norm +
//! softmax. Their whole kernel programs (and the attention block's) are
//! golden filetests, `tests/filetests/golden_*.kt`: after an intended
//! change, re-bless with `UPDATE_EXPECT=1 cargo test -p kiln-tests --test
//! filetests` and review the diff.

use kiln::graph::{Bindings, Graph};
use kiln_optimizer::{compile, CompileOptions, KernelProgram};

fn program(graph: &Graph, batch: usize, freeze: bool) -> KernelProgram {
    let bindings: Bindings = [("batch".to_string(), batch)].into_iter().collect();
    let opts = CompileOptions {
        freeze_variables: freeze,
        ..Default::default()
    };
    compile(graph, graph.outputs(), &bindings, &opts)
        .unwrap()
        .program
}

fn kernels_with(p: &KernelProgram, label: &str) -> usize {
    p.kernels.iter().filter(|k| k.label() == label).count()
}

#[test]
fn mlp_is_three_gemm_kernels() {
    let p = program(&kiln_tests::mlp(&[784, 512, 512, 10]), 2, false);
    assert_eq!(p.kernels.len(), 3, "{p}");
    assert_eq!(kernels_with(&p, "matmul"), 3);
}

#[test]
fn layer_norm_and_softmax_are_two_kernels_each() {
    let p = program(&kiln_tests::layer_norm_only(), 2, false);
    assert_eq!(p.kernels.len(), 4, "{p}");
    assert_eq!(kernels_with(&p, "reduce_sum+map"), 2, "{p}");
}

#[test]
fn cnn_block_folds_batch_norm_and_fuses_epilogues() {
    let p = program(&kiln_tests::cnn_block(), 2, true);
    // conv+bn+relu, conv+relu, conv+residual+relu, avg pool, global pool, linear.
    assert_eq!(kernels_with(&p, "conv2d"), 3, "{p}");
    assert!(p.kernels.len() <= 7, "{p}");
}

#[test]
fn attention_block_is_fifteen_kernels_eight_of_them_gemms() {
    let p = program(&kiln_tests::attention_block(), 1, false);
    assert_eq!(p.kernels.len(), 15, "{p}");
    assert_eq!(kernels_with(&p, "matmul"), 8, "{p}");
    kiln_optimizer::verify::verify(&p).unwrap();
    kiln_optimizer::verify::verify_memory(&p).unwrap();
}
