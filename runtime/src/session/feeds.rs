//! What a session checks before a run: the fetches name nodes (else the
//! outputs and similar names are listed), each feed names a placeholder
//! and has its type, symbolic dims bind consistently across feeds and
//! satisfy the graph's deferred size checks, and every placeholder a
//! fetch needs is fed.

use std::collections::HashMap;

use kiln_graph::{Array, Bindings, DType, Dim, Graph, NodeId, Op};

use super::{lock, DeviceTensor, Session};
use crate::error::{Error, Result};

/// What a feed is checked by: a host array or a device tensor.
pub(super) trait FeedValue {
    fn dtype(&self) -> DType;
    fn shape(&self) -> &[usize];
}

impl FeedValue for Array {
    fn dtype(&self) -> DType {
        Array::dtype(self)
    }
    fn shape(&self) -> &[usize] {
        Array::shape(self)
    }
}

impl FeedValue for DeviceTensor {
    fn dtype(&self) -> DType {
        DeviceTensor::dtype(self)
    }
    fn shape(&self) -> &[usize] {
        DeviceTensor::shape(self)
    }
}

/// `name TYPE` of each node, joined by commas; `none` for no nodes.
fn list_nodes(graph: &Graph, nodes: &[NodeId]) -> String {
    if nodes.is_empty() {
        return "none".into();
    }
    let items: Vec<String> = nodes
        .iter()
        .map(|&n| format!("{} {}", graph.node(n).name, graph.node(n).ty))
        .collect();
    items.join(", ")
}

/// `a` or `an`, for an op's name.
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// Up to five node names close to `name`: containing it or contained in it
/// (ignoring case), or a couple of edits away.
fn similar_names(graph: &Graph, name: &str) -> Vec<String> {
    let lower = name.to_lowercase();
    let mut found: Vec<(usize, String)> = graph
        .topo_order()
        .into_iter()
        .map(|n| graph.node(n).name.clone())
        .filter_map(|cand| {
            let c = cand.to_lowercase();
            // Names of very different lengths are more than two edits
            // apart; long ones are compared by containment only.
            let near = c.len().abs_diff(lower.len()) <= 2 && c.len() <= 64;
            let d = if near {
                edit_distance(&c, &lower)
            } else {
                usize::MAX
            };
            let (short, long) = if c.len() < lower.len() {
                (&c, &lower)
            } else {
                (&lower, &c)
            };
            let close = d <= 2 || (short.len() >= 3 && long.contains(short.as_str()));
            close.then_some((d, cand))
        })
        .collect();
    found.sort();
    found.into_iter().take(5).map(|(_, n)| n).collect()
}

/// Levenshtein distance (of names of at most 64 bytes: quadratic is fine).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

impl Session {
    pub(super) fn fetch_ids(&self, fetches: &[&str]) -> Result<Vec<NodeId>> {
        fetches
            .iter()
            .map(|&f| {
                self.graph.find(f).map_err(|_| {
                    let mut reason = format!(
                        "no node has this name; the model's outputs are: {}",
                        list_nodes(&self.graph, self.graph.outputs())
                    );
                    let similar = similar_names(&self.graph, f);
                    if !similar.is_empty() {
                        reason.push_str(&format!("; similar names: {}", similar.join(", ")));
                    }
                    Error::Fetch {
                        name: f.into(),
                        reason,
                    }
                })
            })
            .collect()
    }

    pub(super) fn check_feeds<T: FeedValue>(&self, feeds: &[(&str, &T)]) -> Result<Bindings> {
        let mut seen: Vec<NodeId> = Vec::with_capacity(feeds.len());
        let mut bindings = Bindings::new();
        let mut bound_by: HashMap<String, String> = HashMap::new();
        let mut exprs = Vec::new();
        for &(name, value) in feeds {
            let err = |reason: String| Error::Feed {
                name: name.into(),
                reason,
            };
            let inputs = || list_nodes(&self.graph, &self.graph.placeholders());
            let id = self.graph.find(name).map_err(|_| {
                err(format!(
                    "no node has this name; the model's inputs are: {}",
                    inputs()
                ))
            })?;
            let node = self.graph.node(id);
            let Op::Placeholder { dtype, shape } = &node.op else {
                let op = node.op.name();
                return Err(err(format!(
                    "it is {} {op} node, not an input; the model's inputs are: {}",
                    article(op),
                    inputs()
                )));
            };
            if seen.contains(&id) {
                return Err(err("fed more than once".into()));
            }
            seen.push(id);
            if value.dtype() != *dtype {
                return Err(err(format!(
                    "expected {}, got {}{:?}",
                    node.ty,
                    value.dtype(),
                    value.shape()
                )));
            }
            if value.shape().len() != shape.rank() {
                return Err(err(format!(
                    "expected rank {} ({}), got shape {:?}",
                    shape.rank(),
                    node.ty,
                    value.shape()
                )));
            }
            for (i, (d, &n)) in shape.dims().iter().zip(value.shape()).enumerate() {
                match d {
                    Dim::Fixed(k) if *k != n => {
                        return Err(err(format!(
                            "dim {i} must be {k} ({}), got shape {:?}",
                            node.ty,
                            value.shape()
                        )));
                    }
                    Dim::Sym(s) => match bindings.get(s) {
                        Some(&b) if b != n => {
                            return Err(err(format!(
                                "dim {i} binds '{s}' to {n}, but feed '{}' bound it to {b}",
                                bound_by[s]
                            )));
                        }
                        Some(_) => {}
                        None => {
                            kiln_graph::dim_expr::check_binding(s, n)
                                .map_err(|e| err(format!("dim {i}: {e}")))?;
                            bindings.insert(s.clone(), n);
                            bound_by.insert(s.clone(), name.to_string());
                        }
                    },
                    Dim::Fixed(_) | Dim::Expr(_) => {}
                }
            }
            exprs.push((name, node.ty.clone(), value.shape().to_vec()));
        }
        // Dims that are expressions (`2*seq`) must equal what the symbols
        // that other dims bound make them.
        for (name, ty, got) in exprs {
            for (i, (d, &n)) in ty.shape.dims().iter().zip(&got).enumerate() {
                let Dim::Expr(e) = d else { continue };
                let want = d.eval(&bindings).map_err(|why| Error::Feed {
                    name: name.into(),
                    reason: format!("dim {i} is {e} ({ty}), which no feed's dims bind: {why}"),
                })?;
                if want != n {
                    return Err(Error::Feed {
                        name: name.into(),
                        reason: format!("dim {i} must be {e} = {want} ({ty}), got shape {got:?}"),
                    });
                }
            }
        }
        // The size conditions the build left to the binding.
        self.graph.check_bindings(&bindings)?;
        Ok(bindings)
    }

    pub(super) fn check_needed_feeds<T>(
        &self,
        fetch_ids: &[NodeId],
        fetches: &[&str],
        feeds: &[(&str, &T)],
    ) -> Result<()> {
        // The placeholders each fetch needs, found once per fetch; checked
        // under the cache's lock (no copy per run).
        let mut cache = lock(&self.needed);
        for (&f, &fname) in fetch_ids.iter().zip(fetches) {
            let needed = cache.entry(f).or_insert_with(|| {
                let graph = &self.graph;
                graph
                    .ancestors(&[f])
                    .into_iter()
                    .filter(|&n| matches!(graph.node(n).op, Op::Placeholder { .. }))
                    .collect()
            });
            for &n in needed.iter() {
                let node = self.graph.node(n);
                if !feeds.iter().any(|(name, _)| *name == node.name) {
                    return Err(Error::Feed {
                        name: node.name.clone(),
                        reason: format!(
                            "placeholder ({}) is needed by fetch '{fname}' but was not fed",
                            node.ty
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}
