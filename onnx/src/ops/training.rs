//! Ops of the `ai.onnx.preview.training` domain (opset 1): the optimizer
//! update rules `Adagrad`, `Adam` and `Momentum`, each as elementwise
//! arithmetic on every (X, G, state...) group of its inputs. The learning
//! rate `R` and step count `T` are scalars; `T` (int64) is cast to the
//! tensors' float type. `Gradient` reads values by name: the importer
//! converts it with [`gradient`].

use kiln_graph::{DType, GraphBuilder, Tensor};

use super::{ConvertError, Converter, Node, R};
use crate::proto::NodeProto;
use crate::scope::{Item, Scope, Value};

/// The ops of this family (keyed by domain and op type).
pub(crate) const OPS: &[(&str, Converter)] = &[
    ("ai.onnx.preview.training.Adagrad", adagrad),
    ("ai.onnx.preview.training.Adam", adam),
    ("ai.onnx.preview.training.Momentum", momentum),
];

/// The common prefix of the three update rules: `R`, `T` (as the float type
/// of the first tensor input) and the remaining inputs split into `groups`
/// equal runs (X..., G..., state...).
struct Update<'g> {
    r: Tensor<'g>,
    t: Tensor<'g>,
    dtype: DType,
    runs: Vec<Vec<Tensor<'g>>>,
}

fn update<'g>(n: &Node<'_, 'g>, groups: usize) -> R<Update<'g>> {
    let rest = n.inputs.len().saturating_sub(2);
    if rest == 0 || !rest.is_multiple_of(groups) {
        return Err(format!(
            "expected R, T and {groups} equally long runs of tensors, got {} inputs",
            n.inputs.len()
        )
        .into());
    }
    let k = rest / groups;
    let x0 = n.input(2)?;
    let dtype = x0.dtype();
    if !dtype.is_float() {
        return Err(format!("the optimized tensors must be floats, got {dtype}").into());
    }
    let scalar = |i: usize, what: &str| -> R<Tensor<'g>> {
        let t = n.input(i)?;
        if t.shape().rank() > 1 || t.shape().dims().iter().any(|d| d.fixed() != Some(1)) {
            return Err(format!("{what} must be a scalar, got shape {}", t.shape()).into());
        }
        Ok(t.reshape(kiln_graph::Shape::scalar())?.cast(dtype)?)
    };
    let r = scalar(0, "R (the learning rate)")?;
    let t = scalar(1, "T (the update count)")?;
    let runs = (0..groups)
        .map(|g| {
            (0..k)
                .map(|j| n.input(2 + g * k + j))
                .collect::<R<Vec<_>>>()
        })
        .collect::<R<Vec<_>>>()?;
    for (j, x) in runs[0].iter().enumerate() {
        for run in &runs[1..] {
            if run[j].shape() != x.shape() || run[j].dtype() != dtype {
                return Err(format!(
                    "tensor {j} of each run must share X's type {dtype}{}, got {}{}",
                    x.shape(),
                    run[j].dtype(),
                    run[j].shape()
                )
                .into());
            }
        }
    }
    Ok(Update { r, t, dtype, runs })
}

/// `norm_coefficient * X + G`.
fn regularized<'g>(n: &Node<'_, 'g>, x: Tensor<'g>, g: Tensor<'g>) -> R<Tensor<'g>> {
    let c = n.float("norm_coefficient", 0.0) as f64;
    if c == 0.0 {
        return Ok(g);
    }
    Ok(x.mul(c)?.add(g)?)
}

/// `Adagrad`: `r = R / (1 + T * decay_factor)`, `G' = norm * X + G`,
/// `H' = H + G'^2`, `X' = X - r * G' / (sqrt(H') + epsilon)`. Outputs all
/// X' then all H'.
fn adagrad<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let u = update(n, 3)?;
    let decay = n.float("decay_factor", 0.0) as f64;
    let eps = n.float("epsilon", 1e-6) as f64;
    let r = u.r.div(u.t.mul(decay)?.add(1.0)?)?;
    let (mut xs, mut hs) = (Vec::new(), Vec::new());
    for j in 0..u.runs[0].len() {
        let (x, g, h) = (u.runs[0][j], u.runs[1][j], u.runs[2][j]);
        let g = regularized(n, x, g)?;
        let h_new = h.add(g.mul(g)?)?;
        let step = r.mul(g)?.div(h_new.sqrt()?.add(eps)?)?;
        xs.push(x.sub(step)?);
        hs.push(h_new);
    }
    xs.extend(hs);
    Ok(xs)
}

/// `Adam`: `G' = norm * X + G`, `V' = alpha V + (1 - alpha) G'`,
/// `H' = beta H + (1 - beta) G'^2`, `r = R sqrt(1 - beta^T) / (1 - alpha^T)`
/// when `T > 0` (else `R`), `X' = (1 - norm_post) (X - r V' / (sqrt(H') +
/// epsilon))`. Outputs all X', all V', all H'.
fn adam<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let u = update(n, 4)?;
    let alpha = n.float("alpha", 0.9) as f64;
    let beta = n.float("beta", 0.999) as f64;
    let eps = n.float("epsilon", 1e-6) as f64;
    let post = n.float("norm_coefficient_post", 0.0) as f64;
    let pow = |base: f64| -> R<Tensor<'g>> { Ok(n.scalar(base, u.dtype)?.pow(u.t)?) };
    let one_minus = |t: Tensor<'g>| -> R<Tensor<'g>> { Ok(n.scalar(1.0, u.dtype)?.sub(t)?) };
    let adjusted =
        u.r.mul(one_minus(pow(beta)?)?.sqrt()?)?
            .div(one_minus(pow(alpha)?)?)?;
    let r = n.g.select(u.t.gt(0.0)?, adjusted, u.r)?;
    let (mut xs, mut vs, mut hs) = (Vec::new(), Vec::new(), Vec::new());
    for j in 0..u.runs[0].len() {
        let (x, g, v, h) = (u.runs[0][j], u.runs[1][j], u.runs[2][j], u.runs[3][j]);
        let g = regularized(n, x, g)?;
        let v_new = v.mul(alpha)?.add(g.mul(1.0 - alpha)?)?;
        let h_new = h.mul(beta)?.add(g.mul(g)?.mul(1.0 - beta)?)?;
        let step = r.mul(v_new.div(h_new.sqrt()?.add(eps)?)?)?;
        let x_new = x.sub(step)?;
        xs.push(if post == 0.0 {
            x_new
        } else {
            x_new.mul(1.0 - post)?
        });
        vs.push(v_new);
        hs.push(h_new);
    }
    xs.extend(vs);
    xs.extend(hs);
    Ok(xs)
}

/// `Momentum`: `G' = norm * X + G`, `V' = alpha V + beta' G'` with
/// `beta' = beta` when `T > 0` (else 1); `standard`: `X' = X - R V'`;
/// `nesterov`: `X' = X - R (G' + alpha V')`. Outputs all X', all V'.
fn momentum<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let u = update(n, 3)?;
    let alpha = n.float("alpha", 0.0) as f64;
    let beta = n.float("beta", 0.0) as f64;
    let nesterov = match n.string("mode").as_deref() {
        Some("standard") | None => false,
        Some("nesterov") => true,
        Some(m) => return n.unsupported(format!("mode {m:?} (standard or nesterov)")),
    };
    let beta_t = n.g.select(
        u.t.gt(0.0)?,
        n.scalar(beta, u.dtype)?,
        n.scalar(1.0, u.dtype)?,
    )?;
    let (mut xs, mut vs) = (Vec::new(), Vec::new());
    for j in 0..u.runs[0].len() {
        let (x, g, v) = (u.runs[0][j], u.runs[1][j], u.runs[2][j]);
        let g = regularized(n, x, g)?;
        let v_new = v.mul(alpha)?.add(beta_t.mul(g)?)?;
        let dir = if nesterov {
            g.add(v_new.mul(alpha)?)?
        } else {
            v_new
        };
        xs.push(x.sub(u.r.mul(dir)?)?);
        vs.push(v_new);
    }
    xs.extend(vs);
    Ok(xs)
}

/// `ai.onnx.preview.training.Gradient`: the gradients of the value named by
/// its `y` attribute (of its sum, where not a scalar) with respect to the
/// values named by `xs`, by kiln's symbolic differentiation. It reads
/// values by name, so the importer converts it itself.
pub(crate) const GRADIENT: &str = "ai.onnx.preview.training.Gradient";

pub(crate) fn gradient<'g>(
    g: &'g GraphBuilder,
    n: &NodeProto,
    scope: &Scope<'g>,
) -> R<Vec<Item<'g>>> {
    let attr = |name: &str| n.attribute.iter().find(|a| a.name == name);
    let value = |name: &str| {
        scope.tensor(name).map(|v| v.t).ok_or_else(|| {
            ConvertError::Invalid(format!("'{name}' is not a tensor computed before the node"))
        })
    };
    let y = attr("y")
        .map(|a| String::from_utf8_lossy(&a.s).into_owned())
        .ok_or("the 'y' attribute is required")?;
    let xs = attr("xs")
        .map(|a| {
            a.strings
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
        .ok_or("the 'xs' attribute is required")?;
    let y = value(&y)?;
    let xs = xs.iter().map(|x| value(x)).collect::<R<Vec<_>>>()?;
    let grads = g.gradients(y, &xs)?;
    Ok(grads
        .into_iter()
        .map(|t| Item::Tensor(Value::runtime(t)))
        .collect())
}
