//! Optimizers as graph ops: `GraphBuilder::minimize` differentiates a loss
//! with respect to every trainable float variable it depends on and emits
//! the update rule as assignments, grouped into one train op to fetch
//! together with the layers' update ops (batch norm's running statistics,
//! dropout's step counter).

use crate::array::Array;
use crate::builder::{GraphBuilder, Tensor};
use crate::error::{Error, Result, SourceLoc};
use crate::graph::NodeId;
use crate::op::Op;

/// An update rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    /// `v -= lr * (g + wd * v)`.
    Sgd {
        /// Learning rate.
        lr: f64,
        /// L2 weight decay, added to the gradient.
        weight_decay: f64,
    },
    /// Heavy-ball momentum: `m = momentum * m + (g + wd * v); v -= lr * m`.
    Momentum {
        /// Learning rate.
        lr: f64,
        /// Momentum coefficient.
        momentum: f64,
        /// L2 weight decay, added to the gradient.
        weight_decay: f64,
    },
    /// Adam with bias correction and decoupled weight decay (AdamW):
    /// `v -= lr * (m_hat / (sqrt(s_hat) + eps) + wd * v)`.
    Adam {
        /// Learning rate.
        lr: f64,
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Denominator guard.
        eps: f64,
        /// Decoupled weight decay.
        weight_decay: f64,
    },
}

impl Optimizer {
    /// Plain SGD.
    pub fn sgd(lr: f64) -> Optimizer {
        Optimizer::Sgd {
            lr,
            weight_decay: 0.0,
        }
    }

    /// SGD with momentum.
    pub fn momentum(lr: f64, momentum: f64) -> Optimizer {
        Optimizer::Momentum {
            lr,
            momentum,
            weight_decay: 0.0,
        }
    }

    /// Adam with the usual defaults (beta1 0.9, beta2 0.999, eps 1e-8).
    pub fn adam(lr: f64) -> Optimizer {
        Optimizer::Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }

    /// The same optimizer with weight decay `wd`.
    pub fn with_weight_decay(self, wd: f64) -> Optimizer {
        match self {
            Optimizer::Sgd { lr, .. } => Optimizer::Sgd {
                lr,
                weight_decay: wd,
            },
            Optimizer::Momentum { lr, momentum, .. } => Optimizer::Momentum {
                lr,
                momentum,
                weight_decay: wd,
            },
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
                ..
            } => Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay: wd,
            },
        }
    }
}

impl GraphBuilder {
    /// The trainable float variables `loss` depends on (what
    /// [`GraphBuilder::minimize`] trains). Variables made with
    /// [`GraphBuilder::non_trainable_variable`] (statistics, counters) are
    /// left out; `gradients` still differentiates with respect to them when
    /// asked by name.
    pub fn trainable_variables<'g>(&'g self, loss: Tensor<'g>) -> Result<Vec<Tensor<'g>>> {
        let graph = self.graph();
        graph
            .ancestors(&[loss.id()])
            .into_iter()
            .filter(|&n| {
                matches!(
                    graph.node(n).op,
                    Op::Variable {
                        trainable: true,
                        ..
                    }
                ) && graph.node(n).ty.dtype.is_float()
            })
            .map(|n: NodeId| self.tensor(n))
            .collect()
    }

    /// A train op: fetching it applies one step of `opt` to every trainable
    /// float variable `loss` depends on (optimizer state lives in new
    /// non-trainable variables under `optimizer/`) and runs the update ops
    /// of the layers `loss` depends on ([`GraphBuilder::updates_for`]).
    /// Reads in the same run see the values before the step.
    #[track_caller]
    pub fn minimize<'g>(&'g self, loss: Tensor<'g>, opt: Optimizer) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        let vars = self.trainable_variables(loss)?;
        if vars.is_empty() {
            return Err(loss.err(
                "minimize",
                &[],
                loc,
                "the loss depends on no float variable that is trainable".into(),
            ));
        }
        let grads = self.gradients(loss, &vars)?;
        let _s = self.scope("optimizer");
        let mut updates = Vec::new();
        let state = |v: Tensor<'g>, what: &str| -> Result<Tensor<'g>> {
            let shape = v
                .shape()
                .as_fixed()
                .ok_or_else(|| Error::InvalidGraph("variables have fixed shapes".into()))?;
            self.non_trainable_variable(
                &format!("{}/{what}", v.name()),
                Array::zeros(v.dtype(), &shape),
            )
        };
        let step = match opt {
            Optimizer::Adam { .. } => {
                let t = self.non_trainable_variable("step", Array::scalar(0.0f64))?;
                let t1 = t.add(1.0)?;
                updates.push(t.assign(t1)?);
                Some(t1)
            }
            _ => None,
        };
        for (&v, &g) in vars.iter().zip(&grads) {
            let new = match opt {
                Optimizer::Sgd { lr, weight_decay } => {
                    let g = if weight_decay != 0.0 {
                        g.add(v.mul(weight_decay)?)?
                    } else {
                        g
                    };
                    v.sub(g.mul(lr)?)?
                }
                Optimizer::Momentum {
                    lr,
                    momentum,
                    weight_decay,
                } => {
                    let g = if weight_decay != 0.0 {
                        g.add(v.mul(weight_decay)?)?
                    } else {
                        g
                    };
                    let m = state(v, "momentum")?;
                    let m1 = m.mul(momentum)?.add(g)?;
                    updates.push(m.assign(m1)?);
                    v.sub(m1.mul(lr)?)?
                }
                Optimizer::Adam {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                } => {
                    let t = step.expect("adam has a step").cast(v.dtype())?;
                    let m = state(v, "adam_m")?;
                    let s = state(v, "adam_v")?;
                    let m1 = m.mul(beta1)?.add(g.mul(1.0 - beta1)?)?;
                    let s1 = s.mul(beta2)?.add(g.mul(g)?.mul(1.0 - beta2)?)?;
                    updates.push(m.assign(m1)?);
                    updates.push(s.assign(s1)?);
                    let b1 = self.scalar(beta1, v.dtype())?.pow(t)?.neg()?.add(1.0)?;
                    let b2 = self.scalar(beta2, v.dtype())?.pow(t)?.neg()?.add(1.0)?;
                    let step = m1.div(b1)?.div(s1.div(b2)?.sqrt()?.add(eps)?)?;
                    let step = if weight_decay != 0.0 {
                        step.add(v.mul(weight_decay)?)?
                    } else {
                        step
                    };
                    v.sub(step.mul(lr)?)?
                }
            };
            updates.push(v.assign(new)?);
        }
        updates.extend(self.updates_for(loss));
        self.group(&updates)
    }

    /// Runs every tensor of `xs` when fetched; its value is `true`.
    #[track_caller]
    pub fn group<'g>(&'g self, xs: &[Tensor<'g>]) -> Result<Tensor<'g>> {
        self.push(Op::Group, xs, SourceLoc::caller())
    }
}
