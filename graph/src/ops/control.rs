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
        } => (|| {
            let (c, b) = (get(*cond_fn)?, get(*body_fn)?);
            if *vars == 0 || *vars > owned.len() || *index >= *vars {
                return Err(format!(
                    "{vars} loop variables (index {index}) for {} inputs",
                    owned.len()
                ));
            }
            for (name, f) in [("condition", c), ("body", b)] {
                if f.param_types() != owned {
                    return Err(format!(
                        "the {name} takes ({}) but is given ({})",
                        types(&f.param_types()),
                        types(&owned)
                    ));
                }
            }
            if c.result_types() != [TensorType::new(DType::Bool, Shape::scalar())] {
                return Err(format!(
                    "the condition must return one bool scalar, not ({})",
                    types(&c.result_types())
                ));
            }
            if b.result_types() != owned[..*vars] {
                return Err(format!(
                    "the body returns ({}) but the loop variables are ({}); they must keep their types",
                    types(&b.result_types()),
                    types(&owned[..*vars])
                ));
            }
            if owned[*index] != *ty {
                return Err(format!("loop variable {index} is not of type {ty}"));
            }
            Ok(())
        })(),
        _ => Ok(()),
    };
    r.err()
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

/// The meaning of `cond` and `while`: result `index` of the called functions.
pub fn eval(
    op: &Op,
    functions: &[Arc<Function>],
    inputs: &[&Array],
    bindings: &Bindings,
) -> Result<Array> {
    match op {
        Op::Cond {
            then_fn,
            else_fn,
            index,
            ..
        } => {
            let pred = inputs[0].as_slice::<bool>().map(|v| v[0]).unwrap_or(false);
            let f = &functions[if pred { *then_fn } else { *else_fn }];
            Ok(call(f, &inputs[1..], bindings)?.swap_remove(*index))
        }
        Op::While {
            cond_fn,
            body_fn,
            vars,
            index,
            ..
        } => {
            let (c, b) = (&functions[*cond_fn], &functions[*body_fn]);
            let captured: Vec<Array> = inputs[*vars..].iter().map(|a| (*a).clone()).collect();
            let mut state: Vec<Array> = inputs[..*vars].iter().map(|a| (*a).clone()).collect();
            loop {
                let args: Vec<&Array> = state.iter().chain(&captured).collect();
                let go = call(c, &args, bindings)?.remove(0);
                if !go.as_slice::<bool>().is_some_and(|v| v[0]) {
                    break;
                }
                state = call(b, &args, bindings)?;
            }
            Ok(state.swap_remove(*index))
        }
        other => Err(Error::InvalidGraph(format!(
            "{} is not control flow",
            other.name()
        ))),
    }
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
                    },
                    &ins,
                    loc.clone(),
                )
            })
            .collect()
    }
}
