//! Control flow: `cond` and `while`, ops that call functions (graphs kept in
//! the calling graph's function table). Their shape rule checks the
//! functions' signatures; their meaning runs the functions on the
//! reference interpreter.

use std::collections::HashMap;
use std::sync::Arc;

use crate::array::Array;
use crate::builder::{GraphBuilder, Tensor};
use crate::dtype::DType;
use crate::error::{Error, Result, SourceLoc};
use crate::graph::{Function, NodeId};
use crate::op::Op;
use crate::shape::{Bindings, Shape, TensorType};

fn types(ts: &[TensorType]) -> String {
    ts.iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The signature check of a control-flow node (`None` when fine or not control flow).
pub fn check(op: &Op, inputs: &[&TensorType], functions: &[Arc<Function>]) -> Option<String> {
    let get = |i: usize| {
        functions
            .get(i)
            .ok_or_else(|| format!("calls function {i}, which the graph does not have"))
    };
    let owned: Vec<TensorType> = inputs.iter().map(|t| (*t).clone()).collect();
    let r = match op {
        Op::Cond {
            then_fn,
            else_fn,
            index,
            ty,
        } => (|| {
            let (t, e) = (get(*then_fn)?, get(*else_fn)?);
            if owned.first() != Some(&TensorType::new(DType::Bool, Shape::scalar())) {
                return Err("the predicate must be a bool scalar".to_string());
            }
            let args = &owned[1..];
            for (name, f) in [("then", t), ("else", e)] {
                if f.param_types() != args {
                    return Err(format!(
                        "the {name} branch takes ({}) but is given ({})",
                        types(&f.param_types()),
                        types(args)
                    ));
                }
            }
            if t.result_types() != e.result_types() {
                return Err(format!(
                    "the branches' results differ: ({}) vs ({})",
                    types(&t.result_types()),
                    types(&e.result_types())
                ));
            }
            match t.result_types().get(*index) {
                Some(r) if r == ty => Ok(()),
                _ => Err(format!("result {index} is not of type {ty}")),
            }
        })(),
        Op::While {
            cond_fn,
            body_fn,
            vars,
            index,
            ty,
            ..
        } => (|| {
            check_loop(get(*cond_fn)?, get(*body_fn)?, *vars, &owned)?;
            if *index >= *vars {
                return Err(format!("loop variable {index} of {vars}"));
            }
            if owned[*index] != *ty {
                return Err(format!("loop variable {index} is not of type {ty}"));
            }
            Ok(())
        })(),
        Op::WhileGrad {
            cond_fn,
            body_fn,
            grad_fn,
            vars,
            seed,
            index,
            ty,
            ..
        } => (|| {
            let Some((g, loop_ins)) = owned.split_last() else {
                return Err("takes the loop's inputs and a gradient".into());
            };
            check_loop(get(*cond_fn)?, get(*body_fn)?, *vars, loop_ins)?;
            let gf = get(*grad_fn)?;
            let mut want = loop_ins.to_vec();
            want.extend_from_slice(&loop_ins[..*vars]);
            if gf.param_types() != want || gf.result_types() != loop_ins {
                return Err(format!(
                    "the gradient function maps ({}) to ({}); expected ({}) to ({})",
                    types(&gf.param_types()),
                    types(&gf.result_types()),
                    types(&want),
                    types(loop_ins)
                ));
            }
            if *seed >= *vars || loop_ins[*seed] != *g {
                return Err(format!(
                    "the gradient {g} does not match loop variable {seed}"
                ));
            }
            match loop_ins.get(*index) {
                Some(t) if t == ty => Ok(()),
                _ => Err(format!("loop input {index} is not of type {ty}")),
            }
        })(),
        _ => Ok(()),
    };
    r.err()
}

/// Checks a loop's condition and body against its inputs `owned`.
fn check_loop(
    c: &Function,
    b: &Function,
    vars: usize,
    owned: &[TensorType],
) -> std::result::Result<(), String> {
    if vars == 0 || vars > owned.len() {
        return Err(format!("{vars} loop variables for {} inputs", owned.len()));
    }
    for (name, f) in [("condition", c), ("body", b)] {
        if f.param_types() != owned {
            return Err(format!(
                "the {name} takes ({}) but is given ({})",
                types(&f.param_types()),
                types(owned)
            ));
        }
    }
    if c.result_types() != [TensorType::new(DType::Bool, Shape::scalar())] {
        return Err(format!(
            "the condition must return one bool scalar, not ({})",
            types(&c.result_types())
        ));
    }
    if b.result_types() != owned[..vars] {
        return Err(format!(
            "the body returns ({}) but the loop variables are ({}); they must keep their types",
            types(&b.result_types()),
            types(&owned[..vars])
        ));
    }
    Ok(())
}

/// Runs the functions control-flow ops call: the reference interpreter
/// ([`Interpreted`]) or a backend that compiles each function.
pub trait FunctionRunner: Send + Sync + std::fmt::Debug {
    /// Runs function `index` (`f`) on `args`; returns its results.
    fn call(
        &self,
        index: usize,
        f: &Function,
        args: &[&Array],
        bindings: &Bindings,
    ) -> Result<Vec<Array>>;
}

/// Runs functions on the reference interpreter.
#[derive(Debug)]
pub struct Interpreted;

impl FunctionRunner for Interpreted {
    fn call(
        &self,
        _index: usize,
        f: &Function,
        args: &[&Array],
        bindings: &Bindings,
    ) -> Result<Vec<Array>> {
        call(f, args, bindings)
    }
}

/// Runs function `f` on `args` with the reference interpreter.
pub fn call(f: &Function, args: &[&Array], bindings: &Bindings) -> Result<Vec<Array>> {
    let feeds: HashMap<&str, &Array> = f
        .params
        .iter()
        .zip(args)
        .map(|(&p, a)| (f.graph.node(p).name.as_str(), *a))
        .collect();
    let inputs = crate::interp::RunInputs {
        feeds: &feeds,
        variables: &HashMap::new(),
        bindings,
    };
    Ok(crate::interp::run(&f.graph, &inputs, &f.results)?.fetched)
}

/// Which call a control-flow node makes: nodes that differ only in the
/// result they take make the same call.
#[derive(Clone, Copy, Debug, PartialEq)]
enum CallKey {
    Cond(usize, usize),
    While(usize, usize, usize, Option<u64>),
    WhileGrad(usize, usize, usize, usize, usize, Option<u64>),
}

fn call_key(op: &Op) -> Option<CallKey> {
    Some(match *op {
        Op::Cond {
            then_fn, else_fn, ..
        } => CallKey::Cond(then_fn, else_fn),
        Op::While {
            cond_fn,
            body_fn,
            vars,
            max_iterations,
            ..
        } => CallKey::While(cond_fn, body_fn, vars, max_iterations),
        Op::WhileGrad {
            cond_fn,
            body_fn,
            grad_fn,
            vars,
            seed,
            max_iterations,
            ..
        } => CallKey::WhileGrad(cond_fn, body_fn, grad_fn, vars, seed, max_iterations),
        _ => return None,
    })
}

/// The results of recent control-flow calls, so the nodes of one call (one
/// per result, or one per input gradient of a loop) run it once. An entry
/// is reused only when the call and its input values are the same, so a
/// cache may live across runs; it keeps the last few calls.
#[derive(Debug, Default)]
pub struct CallCache(std::sync::Mutex<Vec<CachedCall>>);

/// A call, its input values and its results.
type CachedCall = (CallKey, Vec<Array>, Arc<Vec<Array>>);

impl Clone for CallCache {
    /// A new, empty cache.
    fn clone(&self) -> Self {
        CallCache::default()
    }
}

impl CallCache {
    const CAPACITY: usize = 8;

    fn get_or_run(
        &self,
        key: CallKey,
        inputs: &[&Array],
        run: impl FnOnce() -> Result<Vec<Array>>,
    ) -> Result<Arc<Vec<Array>>> {
        let hit = {
            let entries = self.0.lock().unwrap_or_else(|e| e.into_inner());
            entries
                .iter()
                .find(|(k, ins, _)| {
                    *k == key
                        && ins.len() == inputs.len()
                        && ins.iter().zip(inputs).all(|(a, b)| a.same_bits(b))
                })
                .map(|(_, _, out)| out.clone())
        };
        if let Some(out) = hit {
            return Ok(out);
        }
        let out = Arc::new(run()?);
        let mut entries = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= Self::CAPACITY {
            entries.remove(0);
        }
        entries.push((
            key,
            inputs.iter().map(|a| (*a).clone()).collect(),
            out.clone(),
        ));
        Ok(out)
    }
}

/// The meaning of `cond` and `while`: result `index` of the called
/// functions, from `cache` when the same call already ran.
pub fn eval(
    op: &Op,
    functions: &[Arc<Function>],
    inputs: &[&Array],
    bindings: &Bindings,
    cache: &CallCache,
    runner: &dyn FunctionRunner,
) -> Result<Array> {
    let (Some(key), Some(index)) = (
        call_key(op),
        match op {
            Op::Cond { index, .. } | Op::While { index, .. } | Op::WhileGrad { index, .. } => {
                Some(*index)
            }
            _ => None,
        },
    ) else {
        return Err(Error::InvalidGraph(format!(
            "{} is not control flow",
            op.name()
        )));
    };
    let all = cache.get_or_run(key, inputs, || {
        eval_all(op, functions, inputs, bindings, runner)
    })?;
    Ok(all[index].clone())
}

/// All results of a control-flow call.
fn eval_all(
    op: &Op,
    functions: &[Arc<Function>],
    inputs: &[&Array],
    bindings: &Bindings,
    runner: &dyn FunctionRunner,
) -> Result<Vec<Array>> {
    let run = |i: usize, args: &[&Array]| runner.call(i, &functions[i], args, bindings);
    match op {
        Op::Cond {
            then_fn, else_fn, ..
        } => {
            let pred = inputs[0].as_slice::<bool>().map(|v| v[0]).unwrap_or(false);
            run(if pred { *then_fn } else { *else_fn }, &inputs[1..])
        }
        Op::While {
            cond_fn,
            body_fn,
            vars,
            max_iterations,
            ..
        } => run_loop(
            &run,
            *cond_fn,
            *body_fn,
            *vars,
            *max_iterations,
            inputs,
            |_| {},
        ),
        Op::WhileGrad {
            cond_fn,
            body_fn,
            grad_fn,
            vars,
            seed,
            max_iterations,
            ..
        } => {
            let (g, loop_ins) = inputs.split_last().expect("checked arity");
            let mut history: Vec<Vec<Array>> = Vec::new();
            run_loop(
                &run,
                *cond_fn,
                *body_fn,
                *vars,
                *max_iterations,
                loop_ins,
                |s| history.push(s.to_vec()),
            )?;
            let captured = &loop_ins[*vars..];
            let mut d_state: Vec<Array> = loop_ins[..*vars]
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    if i == *seed {
                        (*g).clone()
                    } else {
                        Array::zeros(a.dtype(), a.shape())
                    }
                })
                .collect();
            let mut d_captured: Vec<Array> = captured
                .iter()
                .map(|a| Array::zeros(a.dtype(), a.shape()))
                .collect();
            for state in history.iter().rev() {
                let args: Vec<&Array> = state
                    .iter()
                    .chain(captured.iter().copied())
                    .chain(&d_state)
                    .collect();
                let mut d = run(*grad_fn, &args)?;
                let d_cap = d.split_off(*vars);
                d_state = d;
                for (acc, x) in d_captured.iter_mut().zip(&d_cap) {
                    if acc.dtype().is_float() {
                        *acc = super::elementwise::eval_binary(
                            crate::op::BinaryOp::Add,
                            acc,
                            x,
                            x.shape(),
                        )
                        .map_err(Error::InvalidGraph)?;
                    }
                }
            }
            d_state.extend(d_captured);
            Ok(d_state)
        }
        other => Err(Error::InvalidGraph(format!(
            "{} is not control flow",
            other.name()
        ))),
    }
}

/// Runs a loop over `inputs` (loop variables, then captured values),
/// calling `visit` with the state before each run of the body; returns the
/// final state.
fn run_loop<R: Fn(usize, &[&Array]) -> Result<Vec<Array>>>(
    run: &R,
    cond_fn: usize,
    body_fn: usize,
    vars: usize,
    max_iterations: Option<u64>,
    inputs: &[&Array],
    mut visit: impl FnMut(&[Array]),
) -> Result<Vec<Array>> {
    let captured = &inputs[vars..];
    let mut state: Vec<Array> = inputs[..vars].iter().map(|a| (*a).clone()).collect();
    for _ in 0..max_iterations.unwrap_or(u64::MAX) {
        let args: Vec<&Array> = state.iter().chain(captured.iter().copied()).collect();
        let go = run(cond_fn, &args)?.remove(0);
        if !go.as_slice::<bool>().is_some_and(|v| v[0]) {
            return Ok(state);
        }
        visit(&state);
        state = run(body_fn, &args)?;
    }
    Ok(state)
}

/// Builds a function from a closure over parameters of `types`.
#[track_caller]
fn function(
    types: &[TensorType],
    body: impl for<'s> FnOnce(&'s GraphBuilder, &[Tensor<'s>]) -> Result<Vec<Tensor<'s>>>,
) -> Result<Function> {
    let loc = SourceLoc::caller();
    let sub = GraphBuilder::new();
    let params: Vec<Tensor<'_>> = types
        .iter()
        .enumerate()
        .map(|(i, t)| sub.placeholder(&format!("arg{i}"), t.dtype, t.shape.clone()))
        .collect::<Result<_>>()?;
    let results = body(&sub, &params)?;
    let (param_ids, result_ids): (Vec<NodeId>, Vec<NodeId>) = (
        params.iter().map(|t| t.id()).collect(),
        results.iter().map(|t| t.id()).collect(),
    );
    if let Some(t) = results.iter().find(|t| !std::ptr::eq(t.builder(), &sub)) {
        return Err(Error::Type {
            op: "function".into(),
            location: loc,
            reason: format!("result '{}' was not built from the function's parameters (pass outer values as arguments)", t.name()),
            operands: String::new(),
        });
    }
    let graph = sub.into_graph();
    if let Some(n) = graph
        .topo_order()
        .into_iter()
        .find(|&n| matches!(graph.node(n).op, Op::Variable { .. } | Op::Assign))
    {
        return Err(Error::Type {
            op: "function".into(),
            location: loc,
            reason: format!("'{}' is a variable or assignment; functions are pure (pass variables in as arguments)", graph.node(n).name),
            operands: String::new(),
        });
    }
    Ok(Function {
        graph,
        params: param_ids,
        results: result_ids,
    })
}

impl GraphBuilder {
    /// `pred ? then_fn(args) : else_fn(args)`, running only the chosen branch.
    /// Each branch builds its results from the arguments it is given; both
    /// must return results of the same types.
    #[track_caller]
    pub fn cond<'g>(
        &'g self,
        pred: Tensor<'g>,
        args: &[Tensor<'g>],
        then_fn: impl for<'s> FnOnce(&'s GraphBuilder, &[Tensor<'s>]) -> Result<Vec<Tensor<'s>>>,
        else_fn: impl for<'s> FnOnce(&'s GraphBuilder, &[Tensor<'s>]) -> Result<Vec<Tensor<'s>>>,
    ) -> Result<Vec<Tensor<'g>>> {
        let loc = SourceLoc::caller();
        let tys: Vec<TensorType> = args.iter().map(|a| a.ty()).collect();
        let t = function(&tys, then_fn)?;
        let e = function(&tys, else_fn)?;
        let results = t.result_types();
        let (ti, ei) = (self.add_function(t), self.add_function(e));
        let mut ins = vec![pred];
        ins.extend_from_slice(args);
        results
            .into_iter()
            .enumerate()
            .map(|(index, ty)| {
                self.push(
                    Op::Cond {
                        then_fn: ti,
                        else_fn: ei,
                        index,
                        ty,
                    },
                    &ins,
                    loc.clone(),
                )
            })
            .collect()
    }

    /// `while cond_fn(vars, captured) { vars = body_fn(vars, captured) }`; returns
    /// the final loop variables. `captured` values are passed to both functions
    /// unchanged (weights of an RNN, say); the body must keep every loop
    /// variable's type.
    #[track_caller]
    pub fn while_loop<'g>(
        &'g self,
        vars: &[Tensor<'g>],
        captured: &[Tensor<'g>],
        cond_fn: impl for<'s> FnOnce(&'s GraphBuilder, &[Tensor<'s>]) -> Result<Tensor<'s>>,
        body_fn: impl for<'s> FnOnce(&'s GraphBuilder, &[Tensor<'s>]) -> Result<Vec<Tensor<'s>>>,
    ) -> Result<Vec<Tensor<'g>>> {
        self.while_loop_impl(vars, captured, None, cond_fn, body_fn)
    }

    /// [`GraphBuilder::while_loop`] that also stops after `max_iterations`
    /// runs of the body (TensorFlow's `maximum_iterations`): a guard against
    /// a condition that never turns false, and a fixed trip count with
    /// a condition that is always true.
    #[track_caller]
    pub fn while_loop_at_most<'g>(
        &'g self,
        max_iterations: u64,
        vars: &[Tensor<'g>],
        captured: &[Tensor<'g>],
        cond_fn: impl for<'s> FnOnce(&'s GraphBuilder, &[Tensor<'s>]) -> Result<Tensor<'s>>,
        body_fn: impl for<'s> FnOnce(&'s GraphBuilder, &[Tensor<'s>]) -> Result<Vec<Tensor<'s>>>,
    ) -> Result<Vec<Tensor<'g>>> {
        self.while_loop_impl(vars, captured, Some(max_iterations), cond_fn, body_fn)
    }

    #[track_caller]
    fn while_loop_impl<'g>(
        &'g self,
        vars: &[Tensor<'g>],
        captured: &[Tensor<'g>],
        max_iterations: Option<u64>,
        cond_fn: impl for<'s> FnOnce(&'s GraphBuilder, &[Tensor<'s>]) -> Result<Tensor<'s>>,
        body_fn: impl for<'s> FnOnce(&'s GraphBuilder, &[Tensor<'s>]) -> Result<Vec<Tensor<'s>>>,
    ) -> Result<Vec<Tensor<'g>>> {
        let loc = SourceLoc::caller();
        let ins: Vec<Tensor<'g>> = vars.iter().chain(captured).copied().collect();
        let tys: Vec<TensorType> = ins.iter().map(|a| a.ty()).collect();
        let c = function(&tys, |b, p| Ok(vec![cond_fn(b, p)?]))?;
        let body = function(&tys, body_fn)?;
        let (ci, bi) = (self.add_function(c), self.add_function(body));
        (0..vars.len())
            .map(|index| {
                let ty = vars[index].ty();
                self.push(
                    Op::While {
                        cond_fn: ci,
                        body_fn: bi,
                        vars: vars.len(),
                        index,
                        ty,
                        max_iterations,
                    },
                    &ins,
                    loc.clone(),
                )
            })
            .collect()
    }
}

/// The vector-Jacobian product of `f` for its results `seeds`: a function
/// `(params..., d_seeds...) -> (d_params...)` computing the gradients of
/// `sum_k <f(params)[seeds[k]], d_seeds[k]>`. Non-float parameters get zeros.
#[track_caller]
fn vjp(f: &Function, seeds: &[usize]) -> Result<Function> {
    let sub = GraphBuilder::new();
    // A fresh builder: adding the callee's functions in order keeps their indices.
    for nested in f.graph.functions() {
        sub.add_function((**nested).clone());
    }
    let params: Vec<Tensor<'_>> = f
        .params
        .iter()
        .map(|&p| {
            let n = f.graph.node(p);
            sub.placeholder(&n.name, n.ty.dtype, n.ty.shape.clone())
        })
        .collect::<Result<_>>()?;
    let mut map: HashMap<NodeId, Tensor<'_>> = f
        .params
        .iter()
        .copied()
        .zip(params.iter().copied())
        .collect();
    for id in f.graph.topo_order() {
        if map.contains_key(&id) {
            continue;
        }
        let n = f.graph.node(id);
        let ins: Vec<Tensor<'_>> = f.graph.inputs(id).iter().map(|i| map[i]).collect();
        let t = sub.push_named(&n.name, n.op.clone(), &ins, n.location.clone())?;
        map.insert(id, t);
    }
    let dys: Vec<Tensor<'_>> = seeds
        .iter()
        .enumerate()
        .map(|(k, &r)| {
            let ty = &f.graph.node(f.results[r]).ty;
            let taken = sub.graph();
            let name = (0..)
                .map(|n| format!("vjp/d{k}_{n}"))
                .find(|c| !taken.has_name(c))
                .expect("a free name");
            sub.placeholder(&name, ty.dtype, ty.shape.clone())
        })
        .collect::<Result<_>>()?;
    let mut total: Option<Tensor<'_>> = None;
    for (&r, &dy) in seeds.iter().zip(&dys) {
        let y = map[&f.results[r]];
        if !y.dtype().is_float() {
            continue;
        }
        let term = y.mul(dy)?.sum_all()?;
        total = Some(match total {
            Some(t) => t.add(term)?,
            None => term,
        });
    }
    let grads = match total {
        Some(t) => sub.gradients(t, &params)?,
        None => params
            .iter()
            .map(|&p| crate::autodiff::zeros_like(p))
            .collect::<Result<_>>()?,
    };
    let params_ids: Vec<NodeId> = params.iter().chain(&dys).map(|t| t.id()).collect();
    let results: Vec<NodeId> = grads.iter().map(|t| t.id()).collect();
    Ok(Function {
        graph: sub.into_graph(),
        params: params_ids,
        results,
    })
}

/// The gradients of a control-flow node's inputs given its output's
/// gradient `g`: `cond` differentiates into a `cond` over the branches'
/// vector-Jacobian products, `while` into `while_grad` nodes, one per
/// `wanted` float input.
#[track_caller]
pub(crate) fn grad<'g>(
    op: &Op,
    functions: &[Arc<Function>],
    wanted: &[bool],
    ins: &[Tensor<'g>],
    g: Tensor<'g>,
) -> Result<Vec<Option<Tensor<'g>>>> {
    let loc = SourceLoc::caller();
    let b = g.builder();
    let mut call_ins: Vec<Tensor<'g>> = ins.to_vec();
    call_ins.push(g);
    match op {
        Op::Cond {
            then_fn,
            else_fn,
            index,
            ..
        } => {
            let ti = b.add_function(vjp(&functions[*then_fn], &[*index])?);
            let ei = b.add_function(vjp(&functions[*else_fn], &[*index])?);
            let mut out = vec![None];
            for (j, x) in ins[1..].iter().enumerate() {
                out.push(if wanted[1 + j] && x.dtype().is_float() {
                    Some(b.push(
                        Op::Cond {
                            then_fn: ti,
                            else_fn: ei,
                            index: j,
                            ty: x.ty(),
                        },
                        &call_ins,
                        loc.clone(),
                    )?)
                } else {
                    None
                });
            }
            Ok(out)
        }
        Op::While {
            cond_fn,
            body_fn,
            vars,
            index,
            max_iterations,
            ..
        } => {
            let seeds: Vec<usize> = (0..*vars).collect();
            let gi = b.add_function(vjp(&functions[*body_fn], &seeds)?);
            ins.iter()
                .enumerate()
                .map(|(j, x)| {
                    if !wanted[j] || !x.dtype().is_float() {
                        return Ok(None);
                    }
                    b.push(
                        Op::WhileGrad {
                            cond_fn: *cond_fn,
                            body_fn: *body_fn,
                            grad_fn: gi,
                            vars: *vars,
                            seed: *index,
                            index: j,
                            ty: x.ty(),
                            max_iterations: *max_iterations,
                        },
                        &call_ins,
                        loc.clone(),
                    )
                    .map(Some)
                })
                .collect()
        }
        other => Err(Error::Type {
            op: other.name().into(),
            location: loc,
            reason: "second derivatives through while loops are not supported".into(),
            operands: String::new(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_cache_reuses_only_identical_calls() {
        let cache = CallCache::default();
        let (a, b) = (Array::scalar(1.0f32), Array::scalar(2.0f32));
        let mut runs = 0;
        let mut call = |key, x: &Array| {
            cache
                .get_or_run(key, &[x], || {
                    runs += 1;
                    Ok(vec![x.clone()])
                })
                .unwrap()
        };
        call(CallKey::Cond(0, 1), &a);
        call(CallKey::Cond(0, 1), &a);
        assert_eq!(call(CallKey::Cond(0, 1), &b)[0], b);
        call(CallKey::Cond(1, 0), &a);
        for i in 0..CallCache::CAPACITY {
            call(CallKey::While(i, 0, 1, None), &a);
        }
        call(CallKey::Cond(0, 1), &a);
        // 3 distinct calls, 8 loops, then the first call again once evicted.
        assert_eq!(runs, 3 + CallCache::CAPACITY + 1);
    }
}
