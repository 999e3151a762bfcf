//! Loss ops: `NegativeLogLikelihoodLoss` and `SoftmaxCrossEntropyLoss`
//! (opsets 12 to 22). The target picks each sample's class through a
//! one-hot mask (`iota == target`), so targets equal to `ignore_index` (or
//! out of range) pick nothing and weigh nothing; `mean` divides by the
//! summed weights of the samples that count, as ONNX does.

use kiln_graph::{Shape, Tensor};

use super::{Converter, Node, R};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[
    ("NegativeLogLikelihoodLoss", |n| {
        let loss = nll(n, n.input(0)?)?;
        Ok(vec![loss])
    }),
    ("SoftmaxCrossEntropyLoss", |n| {
        let scores = n.input(0)?;
        let log_prob = scores.log_softmax(1)?;
        let loss = nll(n, log_prob)?;
        let mut out = vec![loss];
        if n.wants_output(1) {
            out.push(log_prob);
        }
        Ok(out)
    }),
];

/// The negative log-likelihood of `input` `[N, C, d...]` at node `n`'s
/// target (input 1) with optional class weights (input 2).
fn nll<'g>(n: &Node<'_, 'g>, input: Tensor<'g>) -> R<Tensor<'g>> {
    let target = n.input(1)?;
    let weight = n.opt(2);
    let reduction = n.string("reduction").unwrap_or_else(|| "mean".into());
    let rank = input.rank();
    if rank < 2 {
        return Err(format!("input must be [N, C, ...], got {}", input.shape()).into());
    }
    let c = input.shape().0[1]
        .fixed()
        .ok_or("the class dim must be a fixed size")?;
    // One-hot of the target over the class axis: [N, C, d...].
    let mut dims = input.shape().0;
    dims[1] = kiln_graph::Dim::Fixed(c);
    let classes = n.g.iota(target.dtype(), Shape(dims), 1)?;
    let t1 = target.unsqueeze(1)?;
    let mut hot = classes.eq(t1)?;
    if let Some(ii) = n.attr("ignore_index") {
        let keep = target
            .ne(n.scalar(ii.i as f64, target.dtype())?)?
            .unsqueeze(1)?;
        hot = hot.and(keep)?;
    }
    let dtype = input.dtype();
    let hot = hot.cast(dtype)?;
    // Each sample's weight: its class's, or 1 (0 where ignored).
    let w = match weight {
        Some(w) => {
            let mut wd = vec![kiln_graph::Dim::Fixed(1); rank];
            wd[1] = kiln_graph::Dim::Fixed(c);
            let w = w.cast(dtype)?.reshape(Shape(wd))?;
            hot.mul(w)?
        }
        None => hot,
    };
    let loss = input.mul(w)?.sum(&[1], false)?.neg()?;
    match reduction.as_str() {
        "none" => Ok(loss),
        "sum" => Ok(loss.sum(&all_axes(rank - 1), false)?),
        "mean" => {
            let axes = all_axes(rank - 1);
            let total = w.sum(&[1], false)?.sum(&axes, false)?;
            Ok(loss.sum(&axes, false)?.div(total)?)
        }
        other => n.unsupported(format!("reduction '{other}'")),
    }
}

fn all_axes(rank: usize) -> Vec<i64> {
    (0..rank as i64).collect()
}
