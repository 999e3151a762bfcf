//! Layers: builder functions that emit primitive ops (no layer is an op).
//! Each creates its variables under `name/` and reports errors at the
//! caller's line.

use crate::array::Array;
use crate::builder::{GraphBuilder, Tensor};
use crate::dtype::DType;
use crate::error::{Result, SourceLoc};
use crate::init::Init;
use crate::op::Window2d;
use crate::shape::{Dim, Shape};
use crate::tensor_ops::Conv2dOptions;

/// An activation applied after a dense or conv layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// None.
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// Exact GELU.
    Gelu,
    /// Logistic sigmoid.
    Sigmoid,
    /// Hyperbolic tangent.
    Tanh,
}

/// Options of [`GraphBuilder::batch_norm_with_training`], PyTorch's
/// conventions and defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormOptions {
    /// Added to the variance under the square root (default 1e-5).
    pub eps: f64,
    /// Weight of each training batch in the running averages:
    /// `running = (1 - momentum) * running + momentum * batch` (default
    /// 0.1, as PyTorch; Keras' and ONNX's `momentum` is one minus this).
    pub momentum: f64,
}

impl Default for BatchNormOptions {
    fn default() -> Self {
        BatchNormOptions {
            eps: 1e-5,
            momentum: 0.1,
        }
    }
}

impl<'g> Tensor<'g> {
    /// `max(x, 0)`.
    #[track_caller]
    pub fn relu(self) -> Result<Tensor<'g>> {
        self.maximum(0.0)
    }

    /// Exact GELU: `0.5 x (1 + erf(x / sqrt 2))`.
    #[track_caller]
    pub fn gelu(self) -> Result<Tensor<'g>> {
        let inner = self.mul(std::f64::consts::FRAC_1_SQRT_2)?.erf()?.add(1.0)?;
        self.mul(0.5)?.mul(inner)
    }

    /// GELU, tanh approximation: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
    #[track_caller]
    pub fn gelu_tanh(self) -> Result<Tensor<'g>> {
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let cube = self.mul(self)?.mul(self)?;
        let inner = self.add(cube.mul(0.044715)?)?.mul(c)?.tanh()?.add(1.0)?;
        self.mul(0.5)?.mul(inner)
    }

    /// `x` for `x > 0`, `alpha x` otherwise.
    #[track_caller]
    pub fn leaky_relu(self, alpha: f64) -> Result<Tensor<'g>> {
        let pos = self.gt(0.0)?;
        let neg = self.mul(alpha)?;
        self.b.select(pos, self, neg)
    }

    /// Applies `act`.
    #[track_caller]
    pub fn activation(self, act: Activation) -> Result<Tensor<'g>> {
        match act {
            Activation::Identity => Ok(self),
            Activation::Relu => self.relu(),
            Activation::Gelu => self.gelu(),
            Activation::Sigmoid => self.sigmoid(),
            Activation::Tanh => self.tanh(),
        }
    }

    /// Numerically stable softmax along `axis`: `exp(x - max) / sum`.
    #[track_caller]
    pub fn softmax(self, axis: i64) -> Result<Tensor<'g>> {
        let e = self.sub(self.max(&[axis], true)?)?.exp()?;
        e.div(e.sum(&[axis], true)?)
    }

    /// Numerically stable log-softmax along `axis`: `x - max - log(sum(exp(x - max)))`.
    #[track_caller]
    pub fn log_softmax(self, axis: i64) -> Result<Tensor<'g>> {
        let shifted = self.sub(self.max(&[axis], true)?)?;
        shifted.sub(shifted.exp()?.sum(&[axis], true)?.log()?)
    }

    /// Merges all dims after the first into one: `[n, ...] -> [n, prod(...)]`.
    #[track_caller]
    pub fn flatten(self) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        if self.rank() < 1 {
            return Err(self.err("reshape", &[], loc, "flatten needs rank >= 1".into()));
        }
        let mut dims = vec![0i64];
        dims.push(-1);
        if self.rank() == 1 {
            return self.unsqueeze(1);
        }
        self.reshape_to(&dims)
    }

    /// Mean over the spatial dims of NCHW: `[n, c, h, w] -> [n, c, 1, 1]`.
    #[track_caller]
    pub fn global_avg_pool(self) -> Result<Tensor<'g>> {
        self.mean(&[2, 3], true)
    }

    /// Normalises over the last `axes` with `gamma` and `beta` (broadcast).
    #[track_caller]
    pub fn normalize(
        self,
        axes: &[i64],
        gamma: Tensor<'g>,
        beta: Tensor<'g>,
        eps: f64,
    ) -> Result<Tensor<'g>> {
        let mean = self.mean(axes, true)?;
        let centered = self.sub(mean)?;
        let var = centered.mul(centered)?.mean(axes, true)?;
        centered.mul(var.add(eps)?.rsqrt()?)?.mul(gamma)?.add(beta)
    }
}

/// The shape of batch norm's per-channel variables for `x: [n, c, ...]`:
/// `[c, 1, ...]` (broadcasting against `x`'s trailing dims).
fn batch_norm_param_shape(x: Tensor<'_>, loc: &SourceLoc) -> Result<Vec<usize>> {
    let shape = x.shape();
    let c = match shape.0.get(1) {
        Some(Dim::Fixed(c)) => *c,
        _ => {
            return Err(x.err(
                "batch_norm",
                &[],
                loc.clone(),
                "input must be [n, c, ...] with a fixed c".into(),
            ))
        }
    };
    let mut pshape = vec![c];
    pshape.extend(std::iter::repeat_n(1, x.rank() - 2));
    Ok(pshape)
}

/// Checks that `training` is a bool scalar; its value when it is a constant.
fn training_mode(
    x: Tensor<'_>,
    training: Tensor<'_>,
    op: &str,
    loc: &SourceLoc,
) -> Result<Option<bool>> {
    if training.dtype() != DType::Bool || training.rank() != 0 {
        return Err(x.err(
            op,
            &[training],
            loc.clone(),
            format!(
                "the training flag must be a bool scalar, got {}",
                training.ty()
            ),
        ));
    }
    Ok(training
        .constant_value()
        .map(|a| a.to_f64_vec().first() != Some(&0.0)))
}

/// 32 random bits (as u64) per element of `x`: Widynski's "Squares"
/// counter-based generator (four rounds of squaring, adding and swapping
/// halves), keyed by `seed`, of a counter that combines the element's
/// index and the run-time `step` (a u64 scalar) with odd multipliers
/// (distinct for distinct inputs in practice). It uses u64 multiplication
/// and addition (wrapping) and division and multiplication by 2^32 for the
/// shifts, so every device computes the same bits.
fn hashed_bits<'g>(x: Tensor<'g>, seed: u64, step: Tensor<'g>) -> Result<Tensor<'g>> {
    use crate::rng::splitmix64;
    let b = x.builder();
    let shape = x.shape();
    let mut ctr = step
        .mul(splitmix64(seed ^ 0x5354_4550) | 1)?
        .broadcast_to(shape.clone())?;
    for axis in 0..x.rank() {
        let index = b.iota(DType::U64, shape.clone(), axis)?;
        ctr = ctr.add(index.mul(splitmix64(seed.wrapping_add(axis as u64 + 1)) | 1)?)?;
    }
    let key = splitmix64(seed) | 1;
    let y = ctr.mul(key)?;
    let z = y.add(key)?;
    // (x >> 32) | (x << 32): the two halves do not overlap, so `|` is `+`.
    let swap = |t: Tensor<'g>| t.div(1u64 << 32)?.add(t.mul(1u64 << 32)?);
    let square_add = |t: Tensor<'g>, c: Tensor<'g>| t.mul(t)?.add(c);
    let t = swap(square_add(y, y)?)?;
    let t = swap(square_add(t, z)?)?;
    let t = swap(square_add(t, y)?)?;
    square_add(t, z)?.div(1u64 << 32)
}

/// Per-example softmax cross-entropy of `logits` `[n, classes]` against
/// one-hot (or soft) `labels` of the same shape: `-sum(labels * log_softmax)`.
#[track_caller]
pub fn softmax_cross_entropy<'g>(logits: Tensor<'g>, labels: Tensor<'g>) -> Result<Tensor<'g>> {
    logits
        .log_softmax(-1)?
        .mul(labels)?
        .sum(&[-1], false)?
        .neg()
}

/// Per-example softmax cross-entropy against integer class indices `[n]`.
#[track_caller]
pub fn sparse_softmax_cross_entropy<'g>(
    logits: Tensor<'g>,
    classes: Tensor<'g>,
) -> Result<Tensor<'g>> {
    let loc = SourceLoc::caller();
    let shape = logits.shape();
    let c = match shape.0.last() {
        Some(Dim::Fixed(c)) => *c,
        _ => {
            return Err(logits.err(
                "one_hot",
                &[classes],
                loc,
                "the class dim must be fixed".into(),
            ))
        }
    };
    let one_hot = one_hot(classes, c, logits.dtype())?;
    softmax_cross_entropy(logits, one_hot)
}

/// One-hot encoding of integer `indices` with `depth` classes as `dtype`
/// (`[...] -> [..., depth]`), built from iota and equality.
#[track_caller]
pub fn one_hot<'g>(indices: Tensor<'g>, depth: usize, dtype: DType) -> Result<Tensor<'g>> {
    let b = indices.builder();
    let classes = b.iota(indices.dtype(), [depth], 0)?;
    indices.unsqueeze(-1)?.eq(classes)?.cast(dtype)
}

impl GraphBuilder {
    /// A dense layer: `x @ w + b` then `act`, with `w: [in, units]` (Glorot
    /// uniform) and `b: [units]` (zeros), named `name/weight` and `name/bias`.
    #[track_caller]
    pub fn dense<'g>(
        &'g self,
        name: &str,
        x: Tensor<'g>,
        units: usize,
        act: Activation,
    ) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        let shape = x.shape();
        let fan_in = match shape.0.last() {
            Some(Dim::Fixed(n)) => *n,
            _ => {
                return Err(x.err(
                    "dense",
                    &[],
                    loc,
                    "the last dim must be a fixed size".into(),
                ))
            }
        };
        let dtype = x.dtype();
        let _s = self.scope(name);
        let w = self.variable_init("weight", dtype, &[fan_in, units], Init::GlorotUniform)?;
        let b = self.variable_init("bias", dtype, &[units], Init::Zeros)?;
        x.matmul(w)?.add(b)?.activation(act)
    }

    /// A simple recurrent layer (Elman RNN) over a `[time, batch, features]`
    /// sequence: `h_t = act(x_t @ w_in + h_{t-1} @ w_rec + b)` from `h_0 = 0`,
    /// returning the last state `[batch, units]`. The recurrence is a
    /// `while_loop` in the graph (the input projection of every step is one
    /// matmul before it); weights are `name/input_weight` (Glorot uniform),
    /// `name/recurrent_weight` (uniform in half the Glorot range) and
    /// `name/bias` (zeros).
    #[track_caller]
    pub fn simple_rnn<'g>(
        &'g self,
        name: &str,
        xs: Tensor<'g>,
        units: usize,
        act: Activation,
    ) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        let shape = xs.shape();
        let (steps, batch, features) = match shape.0.as_slice() {
            [Dim::Fixed(t), b, Dim::Fixed(f)] => (*t, b.clone(), *f),
            _ => {
                return Err(xs.err(
                    "simple_rnn",
                    &[],
                    loc,
                    "the input must be [time, batch, features] with fixed time and features".into(),
                ))
            }
        };
        let dtype = xs.dtype();
        let _s = self.scope(name);
        let w_in = self.variable_init(
            "input_weight",
            dtype,
            &[features, units],
            Init::GlorotUniform,
        )?;
        // Half the Glorot range keeps the recurrence contractive at the start.
        let a = 0.5 * (3.0 / units as f64).sqrt();
        let w_rec = self.variable_init(
            "recurrent_weight",
            dtype,
            &[units, units],
            Init::Uniform(-a, a),
        )?;
        let bias = self.variable_init("bias", dtype, &[units], Init::Zeros)?;
        let projected = xs.matmul(w_in)?.add(bias)?;
        let h0 = self
            .scalar(0.0, dtype)?
            .broadcast_to(crate::shape::Shape(vec![batch, Dim::Fixed(units)]))?;
        let t0 = self.scalar(0.0, DType::I64)?;
        let out = self.while_loop(
            &[t0, h0],
            &[projected, w_rec],
            move |_, v| v[0].lt(steps as i64),
            move |_, v| {
                let x_t = v[2].gather(v[0].reshape([1])?, 0)?.squeeze(0)?;
                let h = x_t.add(v[1].matmul(v[3])?)?.activation(act)?;
                Ok(vec![v[0].add(1i64)?, h])
            },
        )?;
        Ok(out[1])
    }

    /// A linear layer: [`GraphBuilder::dense`] without activation.
    #[track_caller]
    pub fn linear<'g>(&'g self, name: &str, x: Tensor<'g>, units: usize) -> Result<Tensor<'g>> {
        self.dense(name, x, units, Activation::Identity)
    }

    /// A conv layer on NCHW input with bias: weight `[out, in/groups, k, k]`
    /// (He uniform) and bias `[out]` (zeros).
    #[track_caller]
    pub fn conv2d_layer<'g>(
        &'g self,
        name: &str,
        x: Tensor<'g>,
        out_channels: usize,
        kernel: usize,
        opts: Conv2dOptions,
        act: Activation,
    ) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        let shape = x.shape();
        let cin = match shape.0.get(1) {
            Some(Dim::Fixed(c)) if x.rank() == 4 => *c,
            _ => {
                return Err(x.err(
                    "conv2d",
                    &[],
                    loc,
                    "input must be NCHW with a fixed channel dim".into(),
                ))
            }
        };
        if opts.groups == 0 || cin % opts.groups != 0 {
            return Err(x.err(
                "conv2d",
                &[],
                loc,
                format!("{cin} channels are not divisible by {} groups", opts.groups),
            ));
        }
        let _s = self.scope(name);
        let w = self.variable_init(
            "weight",
            x.dtype(),
            &[out_channels, cin / opts.groups, kernel, kernel],
            Init::HeUniform,
        )?;
        let b = self.variable_init("bias", x.dtype(), &[out_channels, 1, 1], Init::Zeros)?;
        x.conv2d(w, opts)?.add(b)?.activation(act)
    }

    /// Layer normalisation over the last dim with learned `gamma` (ones) and `beta` (zeros).
    #[track_caller]
    pub fn layer_norm<'g>(&'g self, name: &str, x: Tensor<'g>, eps: f64) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        let shape = x.shape();
        let d = match shape.0.last() {
            Some(Dim::Fixed(n)) => *n,
            _ => {
                return Err(x.err(
                    "layer_norm",
                    &[],
                    loc,
                    "the last dim must be a fixed size".into(),
                ))
            }
        };
        let _s = self.scope(name);
        let gamma = self.variable_init("gamma", x.dtype(), &[d], Init::Ones)?;
        let beta = self.variable_init("beta", x.dtype(), &[d], Init::Zeros)?;
        x.normalize(&[-1], gamma, beta, eps)
    }

    /// Batch normalisation, inference form, over dim 1 of `[n, c, ...]`:
    /// `(x - mean) / sqrt(var + eps) * gamma + beta`, with variables
    /// `name/{gamma,beta,mean,var}` (ones, zeros, zeros, ones). `mean` and
    /// `var` are statistics, not weights: non-trainable, so `minimize` leaves
    /// them alone (set them from a checkpoint or `Session::set_variable`).
    /// To train a model with batch norm, use
    /// [`GraphBuilder::batch_norm_with_training`].
    #[track_caller]
    pub fn batch_norm<'g>(&'g self, name: &str, x: Tensor<'g>, eps: f64) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        let pshape = batch_norm_param_shape(x, &loc)?;
        let _s = self.scope(name);
        let dt = x.dtype();
        let gamma = self.variable_init("gamma", dt, &pshape, Init::Ones)?;
        let beta = self.variable_init("beta", dt, &pshape, Init::Zeros)?;
        let mean = self.non_trainable_variable("mean", Array::filled(dt, &pshape, 0.0))?;
        let var = self.non_trainable_variable("var", Array::filled(dt, &pshape, 1.0))?;
        x.sub(mean)?
            .mul(var.add(eps)?.rsqrt()?)?
            .mul(gamma)?
            .add(beta)
    }

    /// Batch normalisation with a training mode, over dim 1 of `[n, c, ...]`,
    /// as PyTorch's `BatchNorm{1,2}d` and Keras' `BatchNormalization`.
    /// `training` is a bool scalar, usually a placeholder fed `true` for
    /// training steps and `false` for evaluation (or a constant, which
    /// builds only that mode's graph). Variables are those of
    /// [`GraphBuilder::batch_norm`]: `name/{gamma,beta}` (trainable) and the
    /// running statistics `name/{mean,var}` (non-trainable).
    ///
    /// - Training: `(x - m) / sqrt(v + eps) * gamma + beta` with the batch's
    ///   mean `m` and biased variance `v` over every dim but 1 (gradients flow
    ///   through both), and the update ops `mean = (1 - momentum) * mean +
    ///   momentum * m`, `var = (1 - momentum) * var + momentum * v * k/(k-1)`
    ///   (the unbiased variance over the `k` values per channel).
    /// - Inference: the same formula with the running `mean` and `var`; the
    ///   update ops leave them unchanged.
    ///
    /// The updates are registered for the output ([`GraphBuilder::add_update`]),
    /// so the train op of [`GraphBuilder::minimize`] runs them; fetching
    /// only the output does not change the statistics.
    #[track_caller]
    pub fn batch_norm_with_training<'g>(
        &'g self,
        name: &str,
        x: Tensor<'g>,
        training: Tensor<'g>,
        opts: BatchNormOptions,
    ) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        let pshape = batch_norm_param_shape(x, &loc)?;
        let mode = training_mode(x, training, "batch_norm", &loc)?;
        if !x.dtype().is_float() {
            return Err(x.err(
                "batch_norm",
                &[],
                loc,
                format!("batch norm needs a float input, got {}", x.dtype()),
            ));
        }
        if !(0.0..=1.0).contains(&opts.momentum) || opts.eps.is_nan() || opts.eps < 0.0 {
            return Err(x.err(
                "batch_norm",
                &[],
                loc,
                format!(
                    "momentum must be in [0, 1] and eps not negative, got {} and {}",
                    opts.momentum, opts.eps
                ),
            ));
        }
        let _s = self.scope(name);
        let dt = x.dtype();
        let gamma = self.variable_init("gamma", dt, &pshape, Init::Ones)?;
        let beta = self.variable_init("beta", dt, &pshape, Init::Zeros)?;
        let running_mean = self.non_trainable_variable("mean", Array::filled(dt, &pshape, 0.0))?;
        let running_var = self.non_trainable_variable("var", Array::filled(dt, &pshape, 1.0))?;
        let normalize = |mean: Tensor<'g>, var: Tensor<'g>| -> Result<Tensor<'g>> {
            x.sub(mean)?
                .mul(var.add(opts.eps)?.rsqrt()?)?
                .mul(gamma)?
                .add(beta)
        };
        if mode == Some(false) {
            return normalize(running_mean, running_var);
        }
        let axes: Vec<i64> = (0..x.rank() as i64).filter(|&a| a != 1).collect();
        let batch_mean = x.mean(&axes, true)?;
        let centered = x.sub(batch_mean)?;
        let batch_var = centered.mul(centered)?.mean(&axes, true)?;
        let batch_mean = batch_mean.reshape(pshape.clone())?;
        let batch_var = batch_var.reshape(pshape.clone())?;
        // k / (k - 1) turns the biased variance into the unbiased one; k is
        // the count per channel (a shape value when the batch dim is symbolic).
        let shape = x.shape();
        let k = Shape(axes.iter().map(|&a| shape.0[a as usize].clone()).collect())
            .size_expr()
            .map_err(|e| crate::error::Error::InvalidGraph(format!("batch norm count: {e}")))?;
        let count = match k.as_const() {
            Some(k) => self.scalar(k as f64, dt)?,
            None => self.size_value(&k)?.cast(dt)?,
        };
        let unbiased = batch_var.mul(count.div(count.sub(1.0)?.maximum(1.0)?)?)?;
        let m = opts.momentum;
        let mut new_mean = running_mean.mul(1.0 - m)?.add(batch_mean.mul(m)?)?;
        let mut new_var = running_var.mul(1.0 - m)?.add(unbiased.mul(m)?)?;
        let (mean, var) = if mode == Some(true) {
            (batch_mean, batch_var)
        } else {
            new_mean = self.select(training, new_mean, running_mean)?;
            new_var = self.select(training, new_var, running_var)?;
            (
                self.select(training, batch_mean, running_mean)?,
                self.select(training, batch_var, running_var)?,
            )
        };
        let y = normalize(mean, var)?;
        self.add_update(y, running_mean.assign(new_mean)?);
        self.add_update(y, running_var.assign(new_var)?);
        Ok(y)
    }

    /// Dropout with a training mode, as PyTorch's `Dropout`: in training,
    /// each element is zeroed with probability `rate` and the rest are
    /// scaled by `1 / (1 - rate)`; in inference, `x` unchanged. `training`
    /// is a bool scalar as for [`GraphBuilder::batch_norm_with_training`].
    ///
    /// The mask comes from a counter-based generator (Widynski's Squares)
    /// of the layer's seed, its step and the element's index, built from
    /// u64 ops so that every device draws the same mask (random ops take
    /// their seed as an attribute, fixed across runs): the seed comes from
    /// the builder's seed and `name`,
    /// the step is the non-trainable u64 variable `name/step`, advanced by
    /// an update op ([`GraphBuilder::add_update`]) that the train op of
    /// [`GraphBuilder::minimize`] runs, so each training step draws a new
    /// mask. Gradients flow through the kept elements, scaled alike.
    #[track_caller]
    pub fn dropout<'g>(
        &'g self,
        name: &str,
        x: Tensor<'g>,
        rate: f64,
        training: Tensor<'g>,
    ) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        let mode = training_mode(x, training, "dropout", &loc)?;
        if !x.dtype().is_float() || !(0.0..1.0).contains(&rate) {
            return Err(x.err(
                "dropout",
                &[],
                loc,
                format!(
                    "dropout needs a float input and a rate in [0, 1), got {} and {rate}",
                    x.dtype()
                ),
            ));
        }
        if mode == Some(false) {
            return Ok(x);
        }
        let _s = self.scope(name);
        let step = self.non_trainable_variable("step", Array::scalar(0u64))?;
        let seed = self.seed_for(&self.scoped_name("mask"));
        let bits = hashed_bits(x, seed, step)?;
        // Keep where the 32 bits are at least rate * 2^32: probability
        // 1 - rate up to 2^-32.
        let threshold = (rate * (1u64 << 32) as f64).ceil() as u64;
        let keep = bits.ge(threshold)?;
        let zero = self.scalar(0.0, x.dtype())?;
        let dropped = self.select(keep, x.mul(1.0 / (1.0 - rate))?, zero)?;
        let (y, next) = if mode == Some(true) {
            (dropped, step.add(1u64)?)
        } else {
            (
                self.select(training, dropped, x)?,
                self.select(training, step.add(1u64)?, step)?,
            )
        };
        self.add_update(y, step.assign(next)?);
        Ok(y)
    }

    /// Multi-head self-attention over `x: [batch, seq, d_model]` with `heads`
    /// heads: Q, K, V and output projections (`name/{q,k,v,out}`), scaled
    /// dot-product attention, and a causal mask when `causal`.
    #[track_caller]
    pub fn multi_head_attention<'g>(
        &'g self,
        name: &str,
        x: Tensor<'g>,
        heads: usize,
        causal: bool,
    ) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        let shape = x.shape();
        let (seq, d) = match (x.rank(), shape.0.get(1), shape.0.get(2)) {
            (3, Some(Dim::Fixed(t)), Some(Dim::Fixed(d))) => (*t, *d),
            _ => {
                return Err(x.err(
                    "attention",
                    &[],
                    loc,
                    "input must be [batch, seq, d_model] with fixed seq and d_model".into(),
                ))
            }
        };
        if heads == 0 || d % heads != 0 {
            return Err(x.err(
                "attention",
                &[],
                loc,
                format!("d_model {d} is not divisible by {heads} heads"),
            ));
        }
        let hd = d / heads;
        let _s = self.scope(name);
        // [b, t, d] -> [b, h, t, hd]
        let split = |t: Tensor<'g>| -> Result<Tensor<'g>> {
            t.reshape_to(&[0, seq as i64, heads as i64, hd as i64])?
                .permute(&[0, 2, 1, 3])
        };
        let q = split(self.linear("q", x, d)?)?;
        let k = split(self.linear("k", x, d)?)?;
        let v = split(self.linear("v", x, d)?)?;
        let mut scores = q.matmul(k.transpose()?)?.mul(1.0 / (hd as f64).sqrt())?;
        if causal {
            let rows = self.iota(DType::I64, [seq, seq], 0)?;
            let cols = self.iota(DType::I64, [seq, seq], 1)?;
            let allowed = cols.le(rows)?;
            let neg = self.constant(Array::filled(x.dtype(), &[], f64::NEG_INFINITY))?;
            scores = self.select(allowed, scores, neg)?;
        }
        let ctx = scores
            .softmax(-1)?
            .matmul(v)?
            .permute(&[0, 2, 1, 3])?
            .reshape_to(&[0, seq as i64, d as i64])?;
        self.linear("out", ctx, d)
    }

    /// Max pooling with a square window.
    #[track_caller]
    pub fn max_pool2d<'g>(
        &'g self,
        x: Tensor<'g>,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Tensor<'g>> {
        x.max_pool2d(Window2d::square(kernel, stride, padding))
    }

    /// Average pooling with a square window (padding not counted).
    #[track_caller]
    pub fn avg_pool2d<'g>(
        &'g self,
        x: Tensor<'g>,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Tensor<'g>> {
        x.avg_pool2d(Window2d::square(kernel, stride, padding), false)
    }
}
