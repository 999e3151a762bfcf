//! Recurrent ONNX ops: `RNN`, `LSTM` and `GRU` (opsets 7 to 22, with
//! opset 14's `layout`), UNROLLED over the sequence: one copy of the cell
//! per time step, built from kiln's matmul, slices and elementwise ops.
//!
//! The input projection `X W^T + Wb (+ Rb)` runs once for the whole
//! sequence; each step adds `H R^T`, splits the gates (LSTM `iofc`, GRU
//! `zrh`, as ONNX orders them) and applies the activations. A zero initial
//! state (omitted `initial_h` / `initial_c`) drops the terms it multiplies,
//! so the batch dim may be symbolic.
//!
//! Supported: `direction` forward / reverse / bidirectional, optional `B`,
//! `initial_h`, `initial_c`, `P` (peepholes), `clip` (applied to every
//! gate's pre-activation, as onnxruntime does; not to the cell before
//! `h`), `input_forget` (LSTM: `f = 1 - i`), `linear_before_reset` (GRU),
//! `activations` (Relu, Tanh, Sigmoid, Affine, LeakyRelu, ThresholdedRelu,
//! ScaledTanh, HardSigmoid, Elu, Softsign, Softplus; case-insensitive;
//! one list for both directions of a bidirectional node is used for both)
//! with `activation_alpha` / `activation_beta` consumed in order by the
//! activations that take them (onnxruntime's reading; defaults are the
//! ONNX ops' own), and the outputs `Y`, `Y_h`, `Y_c`.
//!
//! `sequence_lens`: omitted, or known at import time with every length
//! full, costs nothing. Known shorter lengths mask the steps past each
//! batch entry's length (the state stops updating, `Y` is zero there; the
//! reverse direction runs over each entry's own prefix backwards). A
//! `sequence_lens` computed at run time gets the same masks computed at run
//! time on every step. A zero length gives zero `Y_h` / `Y_c`, as
//! onnxruntime does.
//!
//! Deliberate limits: the sequence length must be fixed (a symbolic one is
//! an unsupported reason, since the loop is unrolled); `W` and `R` need
//! fixed shapes. Opset 1's `output_sequence` attribute is ignored (`Y` is
//! computed where the node wants it).

use kiln_graph::{Array, Tensor};

use super::{fixed_shape, Converter, Node, R};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[
    ("RNN", |n| recurrent(n, Cell::Rnn)),
    ("LSTM", |n| recurrent(n, Cell::Lstm)),
    ("GRU", |n| recurrent(n, Cell::Gru)),
];

/// The kind of recurrent cell.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cell {
    Rnn,
    Lstm,
    Gru,
}

impl Cell {
    /// Gates per hidden unit (rows of `W` per hidden unit).
    fn gates(self) -> usize {
        match self {
            Cell::Rnn => 1,
            Cell::Lstm => 4,
            Cell::Gru => 3,
        }
    }

    /// The default activations of one direction.
    fn default_activations(self) -> &'static [&'static str] {
        match self {
            Cell::Rnn => &["Tanh"],
            Cell::Lstm => &["Sigmoid", "Tanh", "Tanh"],
            Cell::Gru => &["Sigmoid", "Tanh"],
        }
    }
}

/// An activation function of the recurrent ops, with its parameters.
#[derive(Clone, Copy, Debug)]
enum Act {
    Relu,
    Tanh,
    Sigmoid,
    /// `alpha * x + beta`.
    Affine(f64, f64),
    /// `x >= 0 ? x : alpha * x`.
    LeakyRelu(f64),
    /// `x > alpha ? x : 0`.
    ThresholdedRelu(f64),
    /// `alpha * tanh(beta * x)`.
    ScaledTanh(f64, f64),
    /// `clamp(alpha * x + beta, 0, 1)`.
    HardSigmoid(f64, f64),
    /// `x >= 0 ? x : alpha * (e^x - 1)`.
    Elu(f64),
    /// `x / (1 + |x|)`.
    Softsign,
    /// `log(1 + e^x)`.
    Softplus,
}

impl Act {
    /// Parses `name`, taking its alpha / beta from the iterators where it
    /// uses them (the ONNX op's default when the list ran out).
    fn parse(
        name: &str,
        alphas: &mut impl Iterator<Item = f64>,
        betas: &mut impl Iterator<Item = f64>,
    ) -> R<Act> {
        let mut a = |d: f64| alphas.next().unwrap_or(d);
        Ok(match name.to_ascii_lowercase().as_str() {
            "relu" => Act::Relu,
            "tanh" => Act::Tanh,
            "sigmoid" => Act::Sigmoid,
            "affine" => Act::Affine(a(1.0), betas.next().unwrap_or(0.0)),
            "leakyrelu" => Act::LeakyRelu(a(0.01)),
            "thresholdedrelu" => Act::ThresholdedRelu(a(1.0)),
            "scaledtanh" => Act::ScaledTanh(a(1.0), betas.next().unwrap_or(1.0)),
            "hardsigmoid" => Act::HardSigmoid(a(0.2), betas.next().unwrap_or(0.5)),
            "elu" => Act::Elu(a(1.0)),
            "softsign" => Act::Softsign,
            "softplus" => Act::Softplus,
            _ => return Err(format!("unsupported: activation {name:?}").into()),
        })
    }

    fn apply<'g>(self, x: Tensor<'g>) -> R<Tensor<'g>> {
        Ok(self.build(x)?)
    }

    fn build<'g>(self, x: Tensor<'g>) -> kiln_graph::Result<Tensor<'g>> {
        let g = x.builder();
        match self {
            Act::Relu => x.relu(),
            Act::Tanh => x.tanh(),
            Act::Sigmoid => x.sigmoid(),
            Act::Affine(a, b) => x.mul(a)?.add(b),
            Act::LeakyRelu(a) => g.select(x.ge(0.0)?, x, x.mul(a)?),
            Act::ThresholdedRelu(a) => g.select(x.gt(a)?, x, x.mul(0.0)?),
            Act::ScaledTanh(a, b) => x.mul(b)?.tanh()?.mul(a),
            Act::HardSigmoid(a, b) => x.mul(a)?.add(b)?.maximum(0.0)?.minimum(1.0),
            Act::Elu(a) => g.select(x.ge(0.0)?, x, x.exp()?.sub(1.0)?.mul(a)?),
            Act::Softsign => x.div(x.abs()?.add(1.0)?),
            // max(x, 0) + log(1 + e^-|x|): no overflow.
            Act::Softplus => x.maximum(0.0)?.add(x.abs()?.neg()?.exp()?.add(1.0)?.log()?),
        }
    }
}

/// Which batch entries a time step updates.
enum StepMask<'g> {
    /// Every entry.
    All,
    /// None (every entry's sequence ended before this step).
    Nothing,
    /// Those where this bool `[batch, 1]` tensor holds.
    Some(Tensor<'g>),
}

/// `sequence_lens`, as the masks it implies.
enum Lengths<'g> {
    /// Every entry runs the whole sequence.
    Full,
    /// Known lengths (one per batch entry).
    Known(Vec<i64>),
    /// Computed at run time (`[batch]` integers).
    Runtime(Tensor<'g>),
}

impl<'g> Lengths<'g> {
    /// The mask of step `t` (the same for both directions: the reverse
    /// direction walks `t` down, so each entry starts at its last step).
    fn at(&self, n: &Node<'_, 'g>, t: usize) -> R<StepMask<'g>> {
        match self {
            Lengths::Full => Ok(StepMask::All),
            Lengths::Known(lens) => {
                let active: Vec<bool> = lens.iter().map(|&l| (t as i64) < l).collect();
                if active.iter().all(|&a| a) {
                    Ok(StepMask::All)
                } else if !active.iter().any(|&a| a) {
                    Ok(StepMask::Nothing)
                } else {
                    let a = Array::from_vec([lens.len(), 1], active).expect("mask shape");
                    Ok(StepMask::Some(n.constant(a)?))
                }
            }
            Lengths::Runtime(l) => Ok(StepMask::Some(l.gt(t as f64)?.unsqueeze(1)?)),
        }
    }

    /// The mask of entries with a nonzero length, where some have zero
    /// (their final state is zero, as onnxruntime gives).
    fn nonempty(&self, n: &Node<'_, 'g>) -> R<Option<Tensor<'g>>> {
        match self {
            Lengths::Full => Ok(None),
            Lengths::Known(lens) => {
                if lens.iter().all(|&l| l > 0) {
                    return Ok(None);
                }
                let a: Vec<bool> = lens.iter().map(|&l| l > 0).collect();
                let a = Array::from_vec([lens.len(), 1], a).expect("mask shape");
                n.constant(a).map(Some)
            }
            Lengths::Runtime(l) => Ok(Some(l.gt(0.0)?.unsqueeze(1)?)),
        }
    }
}

/// Everything one direction's unrolled loop needs.
struct Direction<'g> {
    cell: Cell,
    /// Hidden size.
    h: usize,
    /// `X W^T` plus the biases folded into it: `[seq, batch, gates * h]`.
    xw: Tensor<'g>,
    /// `R^T`: `[h, gates * h]`.
    rt: Tensor<'g>,
    /// GRU with `linear_before_reset`: `Rbh`, added to `H Rh^T` before the
    /// reset gate multiplies it.
    rbh: Option<Tensor<'g>>,
    /// LSTM peepholes `(p_i, p_o, p_f)`, each `[h]`.
    p: Option<[Tensor<'g>; 3]>,
    /// This direction's activations (`f`; `f, g`; or `f, g, h`).
    acts: Vec<Act>,
    clip: Option<f64>,
    input_forget: bool,
    linear_before_reset: bool,
    /// Walks the sequence from its end.
    reverse: bool,
}

/// Gate `k` of a `[.., gates * h]` tensor.
fn part(t: Tensor<'_>, k: usize, h: usize) -> R<Tensor<'_>> {
    Ok(t.slice_axis(-1, (k * h) as i64, ((k + 1) * h) as i64, 1)?)
}

impl<'g> Direction<'g> {
    /// `x` clipped to `[-clip, clip]` where the node clips.
    fn clip(&self, x: Tensor<'g>) -> R<Tensor<'g>> {
        match self.clip {
            None => Ok(x),
            Some(c) => Ok(x.maximum(-c)?.minimum(c)?),
        }
    }

    /// `act(clip(x))`.
    fn act(&self, i: usize, x: Tensor<'g>) -> R<Tensor<'g>> {
        self.acts[i].apply(self.clip(x)?)
    }

    /// One step: the new hidden state (and cell state for LSTM) from the
    /// projected input `x` (`[batch, gates * h]`) and the previous states
    /// (`None`: zero).
    fn step(
        &self,
        x: Tensor<'g>,
        hp: Option<Tensor<'g>>,
        cp: Option<Tensor<'g>>,
    ) -> R<(Tensor<'g>, Option<Tensor<'g>>)> {
        let h = self.h;
        match self.cell {
            Cell::Rnn => {
                let pre = match hp {
                    Some(hp) => x.add(hp.matmul(self.rt)?)?,
                    None => x,
                };
                Ok((self.act(0, pre)?, None))
            }
            Cell::Lstm => {
                let gates = match hp {
                    Some(hp) => x.add(hp.matmul(self.rt)?)?,
                    None => x,
                };
                // With a peephole, `gate + p * C` (nothing where C is zero).
                let peep = |g: Tensor<'g>, k: usize, c: Option<Tensor<'g>>| -> R<Tensor<'g>> {
                    match (&self.p, c) {
                        (Some(p), Some(c)) => Ok(g.add(p[k].mul(c)?)?),
                        _ => Ok(g),
                    }
                };
                let i = self.act(0, peep(part(gates, 0, h)?, 0, cp)?)?;
                let f = if self.input_forget {
                    i.neg()?.add(1.0)?
                } else {
                    self.act(0, peep(part(gates, 2, h)?, 2, cp)?)?
                };
                let c = self.act(1, part(gates, 3, h)?)?;
                let ic = i.mul(c)?;
                let cn = match cp {
                    Some(cp) => f.mul(cp)?.add(ic)?,
                    None => ic,
                };
                let o = self.act(0, peep(part(gates, 1, h)?, 1, Some(cn))?)?;
                let hn = o.mul(self.acts[2].apply(cn)?)?;
                Ok((hn, Some(cn)))
            }
            Cell::Gru => {
                let xzr = x.slice_axis(-1, 0, (2 * h) as i64, 1)?;
                let xh = part(x, 2, h)?;
                // `H R^T` for the z and r gates (and h, before reset).
                let hr = match hp {
                    None => None,
                    Some(hp) if self.linear_before_reset => Some(hp.matmul(self.rt)?),
                    Some(hp) => {
                        let rzr = self.rt.slice_axis(1, 0, (2 * h) as i64, 1)?;
                        Some(hp.matmul(rzr)?)
                    }
                };
                let zr = match hr {
                    Some(hr) => {
                        let hzr = hr.slice_axis(1, 0, (2 * h) as i64, 1)?;
                        xzr.add(hzr)?
                    }
                    None => xzr,
                };
                let z = self.act(0, part(zr, 0, h)?)?;
                let r = self.act(0, part(zr, 1, h)?)?;
                let pre = if self.linear_before_reset {
                    // Xh + r * (H Rh^T + Rbh) (Wbh already in Xh).
                    let inner = match (hr, self.rbh) {
                        (Some(hr), Some(b)) => Some(part(hr, 2, h)?.add(b)?),
                        (Some(hr), None) => Some(part(hr, 2, h)?),
                        (None, b) => b,
                    };
                    match inner {
                        Some(inner) => xh.add(r.mul(inner)?)?,
                        None => xh,
                    }
                } else {
                    // Xh + (r * H) Rh^T (both biases already in Xh).
                    match hp {
                        Some(hp) => {
                            let rh = part(self.rt, 2, h)?;
                            xh.add(r.mul(hp)?.matmul(rh)?)?
                        }
                        None => xh,
                    }
                };
                let hh = self.act(1, pre)?;
                // (1 - z) * h + z * H.
                let keep = z.neg()?.add(1.0)?.mul(hh)?;
                let hn = match hp {
                    Some(hp) => keep.add(z.mul(hp)?)?,
                    None => keep,
                };
                Ok((hn, None))
            }
        }
    }

    /// Runs the sequence: the per-step outputs in time order (each
    /// `[batch, h]`) and the final hidden and cell states.
    #[allow(clippy::type_complexity)]
    fn run(
        &self,
        n: &Node<'_, 'g>,
        lens: &Lengths<'g>,
        seq: usize,
        mut hs: Option<Tensor<'g>>,
        mut cs: Option<Tensor<'g>>,
    ) -> R<(Vec<Tensor<'g>>, Option<Tensor<'g>>, Option<Tensor<'g>>)> {
        let dtype = self.xw.dtype();
        let zero = n.scalar(0.0, dtype)?;
        let mut ys: Vec<Option<Tensor<'g>>> = vec![None; seq];
        let order: Vec<usize> = if self.reverse {
            (0..seq).rev().collect()
        } else {
            (0..seq).collect()
        };
        for t in order {
            let mask = lens.at(n, t)?;
            if let StepMask::Nothing = mask {
                continue;
            }
            let x = self.xw.slice_axis(0, t as i64, t as i64 + 1, 1)?;
            let x = x.squeeze(0)?;
            let (hn, cn) = self.step(x, hs, cs)?;
            match mask {
                StepMask::All => {
                    ys[t] = Some(hn);
                    hs = Some(hn);
                    cs = cn;
                }
                StepMask::Some(m) => {
                    // Entries past their length keep their state; Y is zero.
                    let keep = |new: Tensor<'g>, old: Option<Tensor<'g>>| -> R<Tensor<'g>> {
                        Ok(n.g.select(m, new, old.unwrap_or(zero))?)
                    };
                    ys[t] = Some(n.g.select(m, hn, zero)?);
                    hs = Some(keep(hn, hs)?);
                    cs = match cn {
                        Some(cn) => Some(keep(cn, cs)?),
                        None => None,
                    };
                }
                StepMask::Nothing => unreachable!(),
            }
        }
        // Steps no entry reaches (known lengths only, so the batch is fixed).
        let batch = match lens {
            Lengths::Known(l) => l.len(),
            _ => 0,
        };
        let zeros = || Ok(n.g.full(0.0, dtype, &[batch, self.h])?);
        let ys = ys
            .into_iter()
            .map(|y| y.map_or_else(zeros, Ok))
            .collect::<R<Vec<_>>>()?;
        // Zero final states where a length is zero.
        if let Some(m) = lens.nonempty(n)? {
            let z = |s: Option<Tensor<'g>>| -> R<Option<Tensor<'g>>> {
                match s {
                    Some(s) => Ok(Some(n.g.select(m, s, zero)?)),
                    None => zeros().map(Some),
                }
            };
            hs = z(hs)?;
            if self.cell == Cell::Lstm {
                cs = z(cs)?;
            }
        }
        Ok((ys, hs, cs))
    }
}

/// `RNN` / `LSTM` / `GRU`: the setup shared by the three (inputs, layout,
/// directions, biases, activations), then each direction's unrolled loop.
fn recurrent<'g>(n: &Node<'_, 'g>, cell: Cell) -> R<Vec<Tensor<'g>>> {
    let layout = n.int("layout", 0);
    if layout != 0 && layout != 1 {
        return n.unsupported(format!("layout {layout}"));
    }
    let mut x = n.input(0)?;
    let (w, r) = (n.input(1)?, n.input(2)?);
    if x.rank() != 3 {
        return Err(format!("X must have rank 3, has shape {}", x.shape()).into());
    }
    if layout == 1 {
        x = x.permute(&[1, 0, 2])?;
    }
    let seq = match x.shape().0[0].fixed() {
        Some(s) => s,
        None => {
            return n.unsupported(format!(
                "symbolic sequence length ({}; the recurrence is unrolled)",
                x.shape().0[0]
            ))
        }
    };
    if seq == 0 {
        return n.unsupported("an empty sequence");
    }
    let batch = x.shape().0[1].fixed();

    let direction = n.string("direction").unwrap_or_else(|| "forward".into());
    let dirs: &[bool] = match direction.as_str() {
        "forward" => &[false],
        "reverse" => &[true],
        "bidirectional" => &[false, true],
        other => return n.unsupported(format!("direction {other:?}")),
    };
    let nd = dirs.len();
    let (ws, rs) = (fixed_shape(w)?, fixed_shape(r)?);
    if ws.len() != 3 || rs.len() != 3 {
        return Err(format!("W and R must have rank 3, have {ws:?} and {rs:?}").into());
    }
    let h = match n.attr("hidden_size") {
        Some(a) => a.i as usize,
        None => rs[2],
    };
    let gh = cell.gates() * h;
    if ws[0] != nd || rs[0] != nd || ws[1] != gh || rs[1] != gh || rs[2] != h {
        return Err(format!(
            "W {ws:?} and R {rs:?} do not fit {nd} direction(s) of {} gate(s) of hidden size {h}",
            cell.gates()
        )
        .into());
    }

    let per = cell.default_activations().len();
    let acts = activations(n, cell, nd)?;

    let clip = n.attr("clip").map(|a| a.f as f64);
    let input_forget = cell == Cell::Lstm && n.int("input_forget", 0) != 0;
    let linear_before_reset = cell == Cell::Gru && n.int("linear_before_reset", 0) != 0;

    let lens = lengths(n, batch, seq)?;

    // Initial states, `[num_directions, batch, h]` (layout 1: batch first).
    let state = |i: usize| -> R<Option<Tensor<'g>>> {
        match n.opt(i) {
            None => Ok(None),
            Some(s) if layout == 1 => Ok(Some(s.permute(&[1, 0, 2])?)),
            Some(s) => Ok(Some(s)),
        }
    };
    let h0 = state(5)?;
    let c0 = if cell == Cell::Lstm { state(6)? } else { None };
    let p = if cell == Cell::Lstm { n.opt(7) } else { None };
    let b = n.opt(3);

    let mut ys = Vec::with_capacity(nd);
    let mut yhs = Vec::with_capacity(nd);
    let mut ycs = Vec::with_capacity(nd);
    for (d, &reverse) in dirs.iter().enumerate() {
        let pick = |t: Tensor<'g>| -> R<Tensor<'g>> {
            Ok(t.slice_axis(0, d as i64, d as i64 + 1, 1)?.squeeze(0)?)
        };
        let wt = pick(w)?.transpose()?;
        let rt = pick(r)?.transpose()?;
        let mut xw = x.matmul(wt)?;
        let mut rbh = None;
        if let Some(b) = b {
            let bd = pick(b)?;
            let wb = bd.slice_axis(0, 0, gh as i64, 1)?;
            let rb = bd.slice_axis(0, gh as i64, 2 * gh as i64, 1)?;
            let bias = if linear_before_reset {
                // Rbh stays apart: the reset gate multiplies it.
                rbh = Some(part(rb, 2, h)?);
                let zr = wb.slice_axis(0, 0, 2 * h as i64, 1)?;
                let zr = zr.add(rb.slice_axis(0, 0, 2 * h as i64, 1)?)?;
                n.g.concat(&[zr, part(wb, 2, h)?], 0)?
            } else {
                wb.add(rb)?
            };
            xw = xw.add(bias)?;
        }
        let p = match p {
            Some(p) => {
                let pd = pick(p)?;
                Some([part(pd, 0, h)?, part(pd, 1, h)?, part(pd, 2, h)?])
            }
            None => None,
        };
        let dir = Direction {
            cell,
            h,
            xw,
            rt,
            rbh,
            p,
            acts: acts[d * per..(d + 1) * per].to_vec(),
            clip,
            input_forget,
            linear_before_reset,
            reverse,
        };
        let h0 = h0.map(pick).transpose()?;
        let c0 = c0.map(pick).transpose()?;
        let (y, yh, yc) = dir.run(n, &lens, seq, h0, c0)?;
        if n.wants_output(0) {
            let y = y
                .into_iter()
                .map(|t| Ok(t.unsqueeze(0)?))
                .collect::<R<Vec<_>>>()?;
            // [seq, 1, batch, h]
            ys.push(n.g.concat(&y, 0)?.unsqueeze(1)?);
        }
        let yh = yh.ok_or("no step ran")?;
        yhs.push(yh.unsqueeze(0)?);
        if cell == Cell::Lstm {
            let yc = yc.ok_or("no step ran")?;
            ycs.push(yc.unsqueeze(0)?);
        }
    }

    outputs(n, cell, layout, &ys, &yhs, &ycs)
}

/// The activations of each direction (`activations`, with
/// `activation_alpha` and `activation_beta`; the cell's defaults where not
/// given), `nd` lists one after the other.
fn activations(n: &Node<'_, '_>, cell: Cell, nd: usize) -> R<Vec<Act>> {
    let per = cell.default_activations().len();
    let names: Vec<String> = match n.attr("activations") {
        Some(a) if !a.strings.is_empty() => a
            .strings
            .iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
        _ => cell
            .default_activations()
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let names: Vec<String> = if names.len() == per && nd == 2 {
        names.iter().chain(names.iter()).cloned().collect()
    } else {
        names
    };
    if names.len() != per * nd {
        return Err(format!(
            "{} activations given, {} wanted ({per} per direction)",
            names.len(),
            per * nd
        )
        .into());
    }
    let mut alphas = n
        .floats("activation_alpha")
        .unwrap_or_default()
        .into_iter()
        .map(f64::from);
    let mut betas = n
        .floats("activation_beta")
        .unwrap_or_default()
        .into_iter()
        .map(f64::from);
    names
        .iter()
        .map(|s| Act::parse(s, &mut alphas, &mut betas))
        .collect()
}

/// `sequence_lens` (input 4): known lengths give static masks (none at all
/// when every length is full); run-time ones give run-time masks.
fn lengths<'g>(n: &Node<'_, 'g>, batch: Option<usize>, seq: usize) -> R<Lengths<'g>> {
    Ok(match n.inputs.get(4).and_then(|v| v.as_ref()) {
        None => Lengths::Full,
        Some(v) => match &v.value {
            Some(a) => {
                let l = super::ints_of(a)?;
                if let Some(b) = batch.filter(|&b| b != l.len()) {
                    return Err(
                        format!("sequence_lens has {} entries, batch is {b}", l.len()).into(),
                    );
                }
                if l.iter().all(|&l| l >= seq as i64) {
                    Lengths::Full
                } else {
                    Lengths::Known(l)
                }
            }
            None => Lengths::Runtime(v.t),
        },
    })
}

/// The node's outputs from each direction's `Y` (`ys`, `[seq, 1, batch,
/// h]`), final state `Y_h` (`yhs`) and, for LSTM, final cell `Y_c` (`ycs`).
fn outputs<'g>(
    n: &Node<'_, 'g>,
    cell: Cell,
    layout: i64,
    ys: &[Tensor<'g>],
    yhs: &[Tensor<'g>],
    ycs: &[Tensor<'g>],
) -> R<Vec<Tensor<'g>>> {
    let cat = |v: &[Tensor<'g>], axis: i64| -> R<Tensor<'g>> {
        if v.len() == 1 {
            Ok(v[0])
        } else {
            Ok(n.g.concat(v, axis)?)
        }
    };
    // The final states: [num_directions, batch, h] (layout 1: batch first).
    let fin = |v: &[Tensor<'g>]| -> R<Tensor<'g>> {
        let s = cat(v, 0)?;
        if layout == 1 {
            Ok(s.permute(&[1, 0, 2])?)
        } else {
            Ok(s)
        }
    };
    let yh = fin(yhs)?;
    // Y: [seq, num_directions, batch, h] (layout 1: [batch, seq, nd, h]).
    let y = if n.wants_output(0) {
        let y = cat(ys, 1)?;
        if layout == 1 {
            y.permute(&[2, 0, 1, 3])?
        } else {
            y
        }
    } else {
        yh
    };
    let mut out = vec![y, yh];
    if cell == Cell::Lstm {
        out.push(fin(ycs)?);
    }
    out.truncate(n.outputs().max(1));
    Ok(out)
}
