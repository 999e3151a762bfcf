//! Ops of the `ai.onnx.ml` domain that are tensor arithmetic:
//! `Binarizer`, `ArrayFeatureExtractor` and `TreeEnsemble` (opset 5). The
//! encoders, the older tree-ensemble classifiers and regressors and the
//! other classical-ML ops of the domain are not converted.

use kiln_graph::{Array, DType, Tensor};

use super::{Converter, Node, R};

/// The ops of this family (keyed by domain and op type).
pub(crate) const OPS: &[(&str, Converter)] = &[
    ("ai.onnx.ml.Binarizer", binarizer),
    ("ai.onnx.ml.ArrayFeatureExtractor", array_feature_extractor),
    ("ai.onnx.ml.TreeEnsemble", tree_ensemble),
];

/// `Binarizer`: `X > threshold ? 1 : 0`, in X's type.
fn binarizer<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    if !x.dtype().is_numeric() {
        return Err(format!("X must be numeric, got {}", x.dtype()).into());
    }
    let threshold = n.float("threshold", 0.0) as f64;
    Ok(vec![x.gt(threshold)?.cast(x.dtype())?])
}

/// `ArrayFeatureExtractor`: the elements of the last axis of X at the
/// indices Y (negative indices count from the end); a 1-D X gives `[1, |Y|]`.
fn array_feature_extractor<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let y = n.input(1)?;
    let y = y.reshape_to(&[-1])?;
    let z = x.gather(y, -1)?;
    Ok(vec![if x.rank() == 1 { z.unsqueeze(0)? } else { z }])
}

/// `TreeEnsemble` (ai.onnx.ml opset 5): each tree routes a row of X
/// (`[N, F]`) from its root through branch nodes to one leaf, whose weight
/// goes to its target; the trees' values are combined per target by
/// `aggregate_function` (SUM, AVERAGE, MIN, MAX; as ONNX's reference, a
/// target no tree reaches keeps MIN's or MAX's starting value, the
/// type's largest or lowest number). `post_transform` must be NONE.
///
/// The structure is known at import time, so it becomes arithmetic: every
/// branch node's test is one comparison over X's column (`MEMBER`: any of
/// its set; a NaN goes the true way where `nodes_missing_value_tracks_true`
/// says so), and a leaf is reached when all the tests on its path agree:
/// per tree, `P @ A_true + (1 - P) @ A_false` counts the agreeing tests of
/// each leaf (`P`: the tests as 0/1, `A_*`: which tests each leaf's path
/// takes which way), equal to the path length only at the reached leaf.
/// Membership sets are taken from `membership_values` (NaN-separated) in
/// the order the reference visits `MEMBER` nodes: depth first, true branch
/// first.
fn tree_ensemble<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let dtype = x.dtype();
    if !dtype.is_float() {
        return Err(format!("X must be floating point, got {dtype}").into());
    }
    let xs = super::fixed_shape(x)?;
    if xs.len() != 2 {
        return Err(format!("X must have shape [N, F], got {xs:?}").into());
    }
    let e = Ensemble::read(n, &xs)?;
    let (trees, member_set) = e.walk()?;
    let test = node_tests(x, &e, &trees, &member_set)?;
    let y = aggregate(n, &e, &trees, &test, xs[0], dtype)?;
    // The spec numbers SOFTMAX 1 and LOGISTIC 2, ONNX's reference ignores
    // the attribute and ONNX Runtime reads 1 as LOGISTIC: with no agreed
    // meaning, only NONE is converted.
    if let p @ 1.. = n.int("post_transform", 0) {
        return n.unsupported(format!(
            "post_transform {p} (the spec, ONNX's reference and ONNX Runtime disagree on it; \
             kiln converts NONE only)"
        ));
    }
    Ok(vec![y.broadcast_to(vec![xs[0], e.n_targets])?])
}

/// A `TreeEnsemble`'s attributes, checked against each other and X.
struct Ensemble {
    feature: Vec<i64>,
    t_ids: Vec<i64>,
    f_ids: Vec<i64>,
    t_leaf: Vec<i64>,
    f_leaf: Vec<i64>,
    targets: Vec<i64>,
    roots: Vec<i64>,
    splits: Vec<f64>,
    modes: Vec<f64>,
    weights: Vec<f64>,
    members: Vec<f64>,
    missing: Vec<i64>,
    n_targets: usize,
}

impl Ensemble {
    /// The attributes of node `n`, for an X of fixed shape `xs` ([N, F]).
    fn read(n: &Node<'_, '_>, xs: &[usize]) -> R<Ensemble> {
        let ints = |name: &str| -> R<Vec<i64>> {
            n.ints(name)
                .ok_or_else(|| format!("the '{name}' attribute is required").into())
        };
        let floats =
            |name: &str| -> R<Option<Vec<f64>>> { Ok(n.tensor(name)?.map(|a| a.to_f64_vec())) };
        let feature = ints("nodes_featureids")?;
        let (t_ids, f_ids) = (ints("nodes_truenodeids")?, ints("nodes_falsenodeids")?);
        let (t_leaf, f_leaf) = (ints("nodes_trueleafs")?, ints("nodes_falseleafs")?);
        let targets = ints("leaf_targetids")?;
        let roots = ints("tree_roots")?;
        let splits = floats("nodes_splits")?.ok_or("the 'nodes_splits' attribute is required")?;
        let modes = floats("nodes_modes")?.ok_or("the 'nodes_modes' attribute is required")?;
        let weights = floats("leaf_weights")?.ok_or("the 'leaf_weights' attribute is required")?;
        let members = floats("membership_values")?.unwrap_or_default();
        let missing = n
            .ints("nodes_missing_value_tracks_true")
            .unwrap_or_default();
        let n_targets = n.int("n_targets", 0);
        let nodes = feature.len();
        if [&t_ids, &f_ids, &t_leaf, &f_leaf]
            .iter()
            .any(|v| v.len() != nodes)
            || splits.len() != nodes
            || modes.len() != nodes
            || (!missing.is_empty() && missing.len() != nodes)
        {
            return Err(format!("the nodes_* attributes must all have {nodes} entries").into());
        }
        if targets.len() != weights.len() {
            return Err(format!(
                "leaf_targetids has {} entries, leaf_weights {}",
                targets.len(),
                weights.len()
            )
            .into());
        }
        if n_targets <= 0 || targets.iter().any(|&t| t < 0 || t >= n_targets) {
            return Err(format!("n_targets ({n_targets}) must exceed every leaf target").into());
        }
        if let Some(&f) = feature.iter().find(|&&f| f < 0 || f as usize >= xs[1]) {
            return Err(format!("feature {f} is out of range for X of shape {xs:?}").into());
        }
        Ok(Ensemble {
            feature,
            t_ids,
            f_ids,
            t_leaf,
            f_leaf,
            targets,
            roots,
            splits,
            modes,
            weights,
            members,
            missing,
            n_targets: n_targets as usize,
        })
    }

    /// The number of nodes.
    fn nodes(&self) -> usize {
        self.feature.len()
    }

    /// Leaf index `to`, where in range.
    fn leaf(&self, to: i64) -> R<usize> {
        let l = usize::try_from(to).ok().filter(|&l| l < self.weights.len());
        Ok(l.ok_or("a leaf index is out of range")?)
    }

    /// Depth-first walk of each tree: its branch nodes and leaves, each leaf
    /// with its path; MEMBER nodes take their sets (of each node, returned
    /// too) as they are visited.
    fn walk(&self) -> R<(Vec<Tree>, MemberSets)> {
        let nodes = self.nodes();
        let mut sets = self.members.split(|v| v.is_nan()).map(|s| s.to_vec());
        let mut member_set: MemberSets = vec![None; nodes];
        let mut trees = Vec::with_capacity(self.roots.len());
        for &root in &self.roots {
            let root = usize::try_from(root)
                .ok()
                .filter(|&r| r < nodes)
                .ok_or_else(|| format!("tree root {root} is out of range"))?;
            let mut tree = Tree {
                nodes: Vec::new(),
                leaves: Vec::new(),
            };
            // A root whose branches are one leaf is that leaf.
            if self.t_leaf[root] != 0
                && self.f_leaf[root] != 0
                && self.t_ids[root] == self.f_ids[root]
            {
                tree.leaves.push((self.leaf(self.t_ids[root])?, Vec::new()));
                trees.push(tree);
                continue;
            }
            let mut stack: Vec<(usize, Vec<(usize, bool)>)> = vec![(root, Vec::new())];
            while let Some((node, path)) = stack.pop() {
                if path.len() > nodes {
                    return Err("a tree's branches form a cycle".into());
                }
                let mode = self.modes[node];
                if mode == 6.0 {
                    let set = sets
                        .next()
                        .ok_or("membership_values has fewer sets than the MEMBER nodes")?;
                    member_set[node] = Some(set);
                } else if !(0.0..=5.0).contains(&mode) {
                    return Err(format!("node {node} has unknown mode {mode}").into());
                }
                tree.nodes.push(node);
                // False branch pushed first, so the true branch is walked first.
                for (to, is_leaf, way) in [
                    (self.f_ids[node], self.f_leaf[node], false),
                    (self.t_ids[node], self.t_leaf[node], true),
                ] {
                    let mut p = path.clone();
                    p.push((node, way));
                    if is_leaf != 0 {
                        tree.leaves.push((self.leaf(to)?, p));
                    } else {
                        let next = usize::try_from(to).ok().filter(|&i| i < nodes);
                        stack.push((next.ok_or("a node index is out of range")?, p));
                    }
                }
            }
            trees.push(tree);
        }
        Ok((trees, member_set))
    }
}

/// The value set of each `MEMBER` node (`None` for the other nodes).
type MemberSets = Vec<Option<Vec<f64>>>;

/// One tree of an ensemble: its branch nodes (walk order) and its leaves,
/// each with its path (node, way taken).
struct Tree {
    nodes: Vec<usize>,
    leaves: Vec<(usize, Vec<(usize, bool)>)>,
}

/// Each branch node's test on `x`'s column, as 0/1 in X's type.
fn node_tests<'g>(
    x: Tensor<'g>,
    e: &Ensemble,
    trees: &[Tree],
    member_set: &[Option<Vec<f64>>],
) -> R<Vec<Option<Tensor<'g>>>> {
    let mut test: Vec<Option<Tensor<'g>>> = vec![None; e.nodes()];
    for &node in trees.iter().flat_map(|t| &t.nodes) {
        if test[node].is_some() {
            continue;
        }
        let col = x.slice_axis(1, e.feature[node], e.feature[node] + 1, 1)?;
        let s = e.splits[node];
        let mut t = match e.modes[node] as u8 {
            0 => col.le(s)?,
            1 => col.lt(s)?,
            2 => col.ge(s)?,
            3 => col.gt(s)?,
            4 => col.eq(s)?,
            5 => col.ne(s)?,
            _ => {
                // In any of its set (an empty set holds nothing).
                let set = member_set[node].as_deref().unwrap_or(&[]);
                let mut any = col.lt(f64::NEG_INFINITY)?;
                for &v in set {
                    any = any.or(col.eq(v)?)?;
                }
                any
            }
        };
        if e.missing.get(node).is_some_and(|&m| m != 0) {
            t = t.or(col.ne(col)?)?;
        }
        test[node] = Some(t.cast(x.dtype())?);
    }
    Ok(test)
}

/// A constant matrix of `dtype` from f64 values.
fn matrix<'g>(n: &Node<'_, 'g>, v: Vec<f64>, shape: Vec<usize>, dtype: DType) -> R<Tensor<'g>> {
    let a = Array::from_vec(shape, v).ok_or("matrix shape")?;
    n.constant(kiln_graph::ops::elementwise::eval_cast(&a, dtype))
}

/// Which leaf of `tree` each of the `rows` rows reaches ([rows, leaves of
/// the tree], 0/1), from the node tests `test`.
fn reached<'g>(
    n: &Node<'_, 'g>,
    tree: &Tree,
    test: &[Option<Tensor<'g>>],
    rows: usize,
    dtype: DType,
) -> R<Tensor<'g>> {
    let g = n.g;
    let m = tree.nodes.len();
    let l = tree.leaves.len();
    if m == 0 {
        return Ok(g.scalar(1.0, dtype)?.broadcast_to(vec![rows, 1])?);
    }
    let cols: Vec<Tensor<'g>> = tree
        .nodes
        .iter()
        .map(|&i| test[i].ok_or_else(|| "a node without its test".into()))
        .collect::<R<_>>()?;
    let p = g.concat(&cols, 1)?;
    let ml = super::table_len("a tree's path tests", &[m, l])?;
    let (mut yes, mut no, mut depth) = (vec![0.0; ml], vec![0.0; ml], vec![0.0; l]);
    for (j, (_, path)) in tree.leaves.iter().enumerate() {
        depth[j] = path.len() as f64;
        for &(node, way) in path {
            let i = tree
                .nodes
                .iter()
                .position(|&k| k == node)
                .expect("on the walk");
            if way {
                yes[i * l + j] = 1.0;
            } else {
                no[i * l + j] = 1.0;
            }
        }
    }
    let agree =
        p.matmul(matrix(n, yes, vec![m, l], dtype)?)?
            .add(
                p.neg()?
                    .add(1.0)?
                    .matmul(matrix(n, no, vec![m, l], dtype)?)?,
            )?;
    Ok(agree.eq(matrix(n, depth, vec![l], dtype)?)?.cast(dtype)?)
}

/// A tree's [leaves of the tree, n_targets] weights and 0/1 targets.
fn leaf_mats<'g>(
    n: &Node<'_, 'g>,
    e: &Ensemble,
    tree: &Tree,
    dtype: DType,
) -> R<(Tensor<'g>, Tensor<'g>)> {
    let l = tree.leaves.len();
    let nt = e.n_targets;
    let lt = super::table_len("a tree's leaf weights", &[l, nt])?;
    let (mut w, mut hit) = (vec![0.0; lt], vec![0.0; lt]);
    for (j, &(leaf, _)) in tree.leaves.iter().enumerate() {
        let t = e.targets[leaf] as usize;
        w[j * nt + t] += e.weights[leaf];
        hit[j * nt + t] = 1.0;
    }
    Ok((
        matrix(n, w, vec![l, nt], dtype)?,
        matrix(n, hit, vec![l, nt], dtype)?,
    ))
}

/// The trees' values aggregated by `aggregate_function` ([N, n_targets]
/// or broadcastable to it).
fn aggregate<'g>(
    n: &Node<'_, 'g>,
    e: &Ensemble,
    trees: &[Tree],
    test: &[Option<Tensor<'g>>],
    rows: usize,
    dtype: DType,
) -> R<Tensor<'g>> {
    let g = n.g;
    let aggregate = n.int("aggregate_function", 1);
    let mut result: Option<Tensor<'g>> = None;
    let (lowest, highest) = if dtype == DType::F64 {
        (f64::MIN, f64::MAX)
    } else {
        (f32::MIN as f64, f32::MAX as f64)
    };
    for tree in trees {
        let r = reached(n, tree, test, rows, dtype)?;
        let (w, hit) = leaf_mats(n, e, tree, dtype)?;
        let value = r.matmul(w)?;
        result = Some(match aggregate {
            0 | 1 => match result {
                Some(acc) => acc.add(value)?,
                None => value,
            },
            2 | 3 => {
                let init = if aggregate == 2 { highest } else { lowest };
                let hits = r.matmul(hit)?.gt(0.0)?;
                let v = g.select(hits, value, g.scalar(init, dtype)?)?;
                let acc = result.unwrap_or(g.scalar(init, dtype)?);
                if aggregate == 2 {
                    acc.minimum(v)?
                } else {
                    acc.maximum(v)?
                }
            }
            a => return n.unsupported(format!("aggregate_function {a}")),
        });
    }
    let y = result.ok_or("the ensemble has no trees (tree_roots is empty)")?;
    if aggregate == 0 {
        return Ok(y.div(trees.len() as f64)?);
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use kiln_graph::Array;

    use super::super::test_support::run_node;
    use crate::proto::AttributeProto;

    fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            ints: v.to_vec(),
            r#type: 7,
            ..Default::default()
        }
    }

    fn int(name: &str, i: i64) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            i,
            r#type: 2,
            ..Default::default()
        }
    }

    fn tensor(name: &str, a: Array) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            t: Some(crate::tensor::from_array(name, &a)),
            r#type: 4,
            ..Default::default()
        }
    }

    /// Two trees over x = [[0.5], [2.0], [NaN]]: tree A (x <= 1: leaf 0
    /// (target 0, 10) else leaf 1 (target 1, 20)), tree B (x < 3, a NaN
    /// going the true way: leaf 2 (target 0, 4) else leaf 3 (target 0, 6)).
    fn ensemble(aggregate: i64) -> Result<Vec<f64>, String> {
        let attrs = vec![
            ints("nodes_featureids", &[0, 0]),
            tensor(
                "nodes_splits",
                Array::from_vec(vec![2], vec![1.0f32, 3.0]).unwrap(),
            ),
            tensor(
                "nodes_modes",
                Array::from_vec(vec![2], vec![0u8, 1]).unwrap(),
            ),
            ints("nodes_truenodeids", &[0, 2]),
            ints("nodes_falsenodeids", &[1, 3]),
            ints("nodes_trueleafs", &[1, 1]),
            ints("nodes_falseleafs", &[1, 1]),
            ints("nodes_missing_value_tracks_true", &[0, 1]),
            ints("leaf_targetids", &[0, 1, 0, 0]),
            tensor(
                "leaf_weights",
                Array::from_vec(vec![4], vec![10.0f32, 20.0, 4.0, 6.0]).unwrap(),
            ),
            ints("tree_roots", &[0, 1]),
            int("n_targets", 2),
            int("aggregate_function", aggregate),
        ];
        let x = Array::from_vec(vec![3, 1], vec![0.5f32, 2.0, f32::NAN]).unwrap();
        let y = run_node("ai.onnx.ml.TreeEnsemble", 22, attrs, vec![Some(x)])?;
        Ok(y[0].to_f64_vec())
    }

    #[test]
    fn tree_ensemble_aggregates_per_target() {
        let big = f32::MAX as f64;
        // Rows reach: 0.5 -> A leaf 0, B leaf 2; 2.0 -> A leaf 1, B leaf 2;
        // NaN -> A leaf 1 (NaN <= 1 is false), B leaf 2 (tracks true).
        assert_eq!(ensemble(1).unwrap(), [14.0, 0.0, 4.0, 20.0, 4.0, 20.0]);
        assert_eq!(ensemble(0).unwrap(), [7.0, 0.0, 2.0, 10.0, 2.0, 10.0]);
        assert_eq!(ensemble(2).unwrap(), [4.0, big, 4.0, 20.0, 4.0, 20.0]);
        assert_eq!(ensemble(3).unwrap(), [10.0, -big, 4.0, 20.0, 4.0, 20.0]);
        assert!(ensemble(7).unwrap_err().contains("aggregate_function 7"));
    }
}
