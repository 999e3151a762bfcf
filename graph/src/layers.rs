//! Layers: builder functions that emit primitive ops (no layer is an op).
//! Each creates its variables under `name/` and reports errors at the
//! caller's line.

use crate::array::Array;
use crate::builder::{GraphBuilder, Tensor};
use crate::dtype::DType;
use crate::error::{Result, SourceLoc};
use crate::init::Init;
use crate::op::Window2d;
use crate::shape::Dim;
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
    /// `name/{gamma,beta,mean,var}` (ones, zeros, zeros, ones).
    #[track_caller]
    pub fn batch_norm<'g>(&'g self, name: &str, x: Tensor<'g>, eps: f64) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        let shape = x.shape();
        let c = match shape.0.get(1) {
            Some(Dim::Fixed(c)) => *c,
            _ => {
                return Err(x.err(
                    "batch_norm",
                    &[],
                    loc,
                    "input must be [n, c, ...] with a fixed c".into(),
                ))
            }
        };
        let mut pshape = vec![c];
        pshape.extend(std::iter::repeat_n(1, x.rank() - 2));
        let _s = self.scope(name);
        let dt = x.dtype();
        let gamma = self.variable_init("gamma", dt, &pshape, Init::Ones)?;
        let beta = self.variable_init("beta", dt, &pshape, Init::Zeros)?;
        let mean = self.variable_init("mean", dt, &pshape, Init::Zeros)?;
        let var = self.variable_init("var", dt, &pshape, Init::Ones)?;
        x.sub(mean)?
            .mul(var.add(eps)?.rsqrt()?)?
            .mul(gamma)?
            .add(beta)
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
