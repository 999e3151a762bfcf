//! Golden tests of the kernel program text: the fusion of an MLP, a CNN
//! block, an attention block and layer norm + softmax, checked against
//! `tests/golden/*.txt`. After an intended change, re-bless with
//! `UPDATE_EXPECT=1 cargo test -p kiln-tests --test golden` and review the diff.

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

fn check(name: &str, description: &str, p: &KernelProgram) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(format!("{name}.txt"));
    let text = format!("# {description}\n{p}");
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_EXPECT=1 to create it",
            path.display()
        )
    });
    if want != text {
        let diff: Vec<String> = want
            .lines()
            .zip(text.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .take(5)
            .map(|(i, (a, b))| format!("line {}:\n  want: {a}\n  got:  {b}", i + 1))
            .collect();
        panic!("{name}: kernel program differs from {} ({} vs {} lines)\n{}\nre-bless with UPDATE_EXPECT=1 if intended", path.display(), want.lines().count(), text.lines().count(), diff.join("\n"));
    }
}

fn kernels_with(p: &KernelProgram, label: &str) -> usize {
    p.kernels.iter().filter(|k| k.label() == label).count()
}

#[test]
fn mlp_is_three_gemm_kernels() {
    let p = program(&kiln_tests::mlp(&[784, 512, 512, 10]), 2, false);
    assert_eq!(p.kernels.len(), 3, "{p}");
    assert_eq!(kernels_with(&p, "matmul"), 3);
    check(
        "mlp_784_512_512_10",
        "784-512-512-10 ReLU MLP, batch 2: GEMM+bias+relu twice, GEMM+bias",
        &p,
    );
}

#[test]
fn layer_norm_and_softmax_are_two_kernels_each() {
    let p = program(&kiln_tests::layer_norm_only(), 2, false);
    assert_eq!(p.kernels.len(), 4, "{p}");
    assert_eq!(kernels_with(&p, "reduce_sum+map"), 2, "{p}");
    check(
        "layer_norm_softmax",
        "layer_norm (2 kernels) then softmax (2 kernels), batch 2",
        &p,
    );
}

#[test]
fn cnn_block_folds_batch_norm_and_fuses_epilogues() {
    let p = program(&kiln_tests::cnn_block(), 2, true);
    // conv+bn+relu, conv+relu, conv+residual+relu, avg pool, global pool, linear.
    assert_eq!(kernels_with(&p, "conv2d"), 3, "{p}");
    assert!(p.kernels.len() <= 7, "{p}");
    check(
        "cnn_block",
        "conv3x3+BN+ReLU, residual block, avg pool, global pool, linear; batch 2, frozen",
        &p,
    );
}

#[test]
fn attention_block() {
    let p = program(&kiln_tests::attention_block(), 1, false);
    check(
        "attention_block",
        "pre-norm transformer block (4 heads, d 16, seq 6, FFN 32, GELU), batch 1",
        &p,
    );
}
