//! Random sources: `Bernoulli`, `RandomUniform`, `RandomNormal`,
//! `RandomUniformLike`, `RandomNormalLike`, on kiln's counter-based random
//! sources. Their values are a function of the seed (the `seed` attribute,
//! else one derived from the node's output name), the same on every run;
//! they cannot reproduce another runtime's samples.

use kiln_graph::{DType, Tensor};

use super::{Converter, Node, R};
use crate::ops::tables::{one, onnx_dtype};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[
    ("Bernoulli", bernoulli),
    ("RandomUniform", |n| random(n, false, false)),
    ("RandomNormal", |n| random(n, true, false)),
    ("RandomUniformLike", |n| random(n, false, true)),
    ("RandomNormalLike", |n| random(n, true, true)),
];

// ---------------------------------------------------------------- random

/// The seed of a random node: its `seed` attribute, else one derived from
/// its first output's name (stable across imports).
fn seed_of(n: &Node<'_, '_>) -> u64 {
    match n.attr("seed") {
        Some(a) => (a.f as f64).to_bits(),
        None => {
            n.g.seed_for(n.proto.output.first().map(String::as_str).unwrap_or(""))
        }
    }
}

/// `RandomUniform`/`RandomNormal` (shape attribute) and their `Like` forms
/// (the input's shape, and dtype unless `dtype` is given).
pub(crate) fn random<'g>(n: &Node<'_, 'g>, normal: bool, like: bool) -> R<Vec<Tensor<'g>>> {
    let (shape, dtype) = if like {
        let x = n.input(0)?;
        let dtype = match n.attr("dtype") {
            Some(a) => onnx_dtype(a.i)?,
            None => x.dtype(),
        };
        (x.shape(), dtype)
    } else {
        let shape = n.ints("shape").ok_or("shape is required")?;
        let dims = shape
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| format!("bad shape {shape:?}").into()))
            .collect::<R<Vec<_>>>()?;
        (
            kiln_graph::Shape::from(dims),
            onnx_dtype(n.int("dtype", 1))?,
        )
    };
    if !dtype.is_float() {
        return n.unsupported(format!("random values of {dtype}"));
    }
    let seed = seed_of(n);
    let t = if normal {
        let (mean, scale) = (n.float("mean", 0.0) as f64, n.float("scale", 1.0) as f64);
        n.g.random_normal(dtype, shape, seed, mean, scale)?
    } else {
        let (low, high) = (n.float("low", 0.0) as f64, n.float("high", 1.0) as f64);
        n.g.random_uniform(dtype, shape, seed, low, high)?
    };
    Ok(vec![t])
}

/// `Bernoulli`: 1 where a uniform sample in [0, 1) is below the
/// probability `x`, else 0, in `dtype` (default `x`'s).
fn bernoulli<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let dtype = match n.attr("dtype") {
        Some(a) => onnx_dtype(a.i)?,
        None => x.dtype(),
    };
    let ft = if x.dtype().is_float() {
        x.dtype()
    } else {
        DType::F32
    };
    let u = n.g.random_uniform(ft, x.shape(), seed_of(n), 0.0, 1.0)?;
    Ok(one(u.lt(x.cast(ft)?)?.cast(dtype)?))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use kiln_graph::{Array, GraphBuilder};

    use super::super::{find, Input, Node};
    use crate::proto::{AttributeProto, NodeProto};

    fn float_attr(name: &str, f: f32) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            f,
            r#type: 1,
            ..Default::default()
        }
    }

    fn ints_attr(name: &str, ints: Vec<i64>) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            ints,
            r#type: 7,
            ..Default::default()
        }
    }

    /// Converts one node with constant inputs and evaluates its first output.
    fn eval(op: &str, attrs: Vec<AttributeProto>, inputs: Vec<Array>) -> Vec<f64> {
        let g = GraphBuilder::new();
        let proto = NodeProto {
            input: (0..inputs.len()).map(|i| format!("in{i}")).collect(),
            output: vec!["y".into()],
            op_type: op.into(),
            attribute: attrs,
            ..Default::default()
        };
        let ins = inputs
            .into_iter()
            .map(|a| {
                Some({
                    let t = g.constant(a).unwrap();
                    Input {
                        t,
                        value: t.constant_value(),
                    }
                })
            })
            .collect();
        let node = Node::new(&g, &proto, 22, ins);
        let outs = find(op).unwrap()(&node).unwrap();
        let graph = g.graph();
        let run = kiln_graph::interp::run(
            &graph,
            &kiln_graph::interp::RunInputs {
                feeds: &HashMap::new(),
                variables: &HashMap::new(),
                bindings: &kiln_graph::Bindings::new(),
            },
            &[outs[0].id()],
        )
        .unwrap();
        run.fetched[0].to_f64_vec()
    }

    #[test]
    fn random_uniform_stays_in_range() {
        let v = eval(
            "RandomUniform",
            vec![
                ints_attr("shape", vec![1000]),
                float_attr("low", 2.0),
                float_attr("high", 3.0),
            ],
            vec![],
        );
        assert_eq!(v.len(), 1000);
        assert!(v.iter().all(|&x| (2.0..3.0).contains(&x)));
        let mean = v.iter().sum::<f64>() / 1000.0;
        assert!((mean - 2.5).abs() < 0.05, "mean {mean}");
    }

    #[test]
    fn random_normal_like_has_its_moments() {
        let x = Array::from_vec(vec![4000], vec![0f32; 4000]).unwrap();
        let v = eval(
            "RandomNormalLike",
            vec![float_attr("mean", 5.0), float_attr("scale", 0.5)],
            vec![x],
        );
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!((mean - 5.0).abs() < 0.05, "mean {mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.05, "std {}", var.sqrt());
    }

    #[test]
    fn bernoulli_follows_the_probabilities() {
        let p: Vec<f32> = (0..4000)
            .map(|i| if i % 2 == 0 { 0.2 } else { 1.0 })
            .collect();
        let v = eval(
            "Bernoulli",
            vec![float_attr("seed", 5.0)],
            vec![Array::from_vec(vec![4000], p).unwrap()],
        );
        assert!(v.iter().all(|&x| x == 0.0 || x == 1.0));
        assert!(v.iter().skip(1).step_by(2).all(|&x| x == 1.0));
        let ones = v.iter().step_by(2).filter(|&&x| x == 1.0).count() as f64 / 2000.0;
        assert!((ones - 0.2).abs() < 0.04, "fraction {ones}");
    }
}
