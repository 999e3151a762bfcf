//! Ops of the `ai.onnx.ml` domain (opset 1) that are tensor arithmetic:
//! `Binarizer` and `ArrayFeatureExtractor`. The tree ensembles, encoders
//! and other classical-ML ops of the domain are not converted.

use kiln_graph::Tensor;

use super::{Converter, Kiln, Node, R};

/// The ops of this family (keyed by domain and op type).
pub(crate) const OPS: &[(&str, Converter)] = &[
    ("ai.onnx.ml.Binarizer", binarizer),
    ("ai.onnx.ml.ArrayFeatureExtractor", array_feature_extractor),
];

/// `Binarizer`: `X > threshold ? 1 : 0`, in X's type.
fn binarizer<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    if !x.dtype().is_numeric() {
        return Err(format!("X must be numeric, got {}", x.dtype()));
    }
    let threshold = n.float("threshold", 0.0) as f64;
    Ok(vec![x.gt(threshold).k()?.cast(x.dtype()).k()?])
}

/// `ArrayFeatureExtractor`: the elements of the last axis of X at the
/// indices Y (negative indices count from the end); a 1-D X gives `[1, |Y|]`.
fn array_feature_extractor<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let y = n.input(1)?;
    let y = y.reshape_to(&[-1]).k()?;
    let z = x.gather(y, -1).k()?;
    Ok(vec![if x.rank() == 1 {
        z.unsqueeze(0).k()?
    } else {
        z
    }])
}
