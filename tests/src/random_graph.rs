//! A deterministic generator of small random graphs for differential tests
//! of the optimizer against the reference interpreter.
//!
//! [`generate`] builds one graph from a seed with the builder API: one to
//! three placeholders (f32 mostly, some f64/i32/i64/bool and a few of the
//! narrow and unsigned integer dtypes, some with the symbolic dim `n`),
//! sometimes variables, then 4 to 20 random steps. Each
//! step takes its operands from a pool of the values made so far: one of the
//! latest (so chains form), one nothing uses yet (so little is dead), or any
//! (so values fan out to several consumers). Steps cover every primitive op
//! and some layers: unary and broadcasting binary ops, comparisons feeding
//! selects, casts, reductions and argmax/argmin, every movement op, matmul
//! (batched, broadcast, on transposes and slices of stored values), conv2d,
//! pooling, gather and scatter-add, random and iota sources, constants,
//! assignments; and bait for the graph passes: duplicated ops (CSE),
//! identities, constant chains (reassociation, scale folding), constant
//! expressions (folding) and movement chains. A graph's outputs are its last
//! value, values nothing uses and sometimes intermediates.
//!
//! The narrow and unsigned integer dtypes (i8, i16, u8, u16, u32, u64) come
//! in through placeholders, casts (from floats scaled so they saturate, and
//! to floats unclamped and scaled back by a power of two), constants that
//! hold their extremes, the sign bit and random bit patterns (so arithmetic
//! wraps), and sources; on them run the integer unary ops (bitwise not
//! included), arithmetic, comparisons, bitwise and/or/xor, reductions,
//! argmax/argmin, select, gather/scatter-add and every movement op (pads
//! with infinite or NaN fill saturate). Matmul is left out for them: the
//! CPU backend cannot compile it (see [`narrow_int`]).
//!
//! Every op is valid by construction: operands are fitted to the shape an op
//! needs with movement ops and reductions (`fit`), indices are clamped into
//! range, log/sqrt/rsqrt/recip/div/pow take `|x| + c`, and float values stay
//! bounded (`tame`; a narrow integer counts at its dtype's full range, since
//! its arithmetic wraps) so the comparison tolerances hold where passes
//! reassociate arithmetic; f32 values that passes may round differently are
//! never widened to f64 (`perturbable`). Every choice comes from one
//! counter-based stream, so a seed always gives the same graph.

use kiln::graph::rng::bits;
use kiln::graph::{
    one_hot, Array, BinaryOp, Conv2dOptions, DType, Dim, Graph, GraphBuilder, NodeId, Op, ReduceOp,
    Scalar, Shape, SliceAxis, Tensor, UnaryOp, Window2d,
};

/// No value of a generated graph has more elements than this.
pub const MAX_ELEMS: usize = 256;

/// Float values are kept within this magnitude (ulp ~ 4e-6 in f32, under the
/// absolute tolerance even where a rounding difference cancels).
const FLOAT_LIMIT: f64 = 32.0;

/// A small counter-based random stream (`kiln::graph::rng::bits`).
pub struct Rng {
    seed: u64,
    n: u64,
}

impl Rng {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { seed, n: 0 }
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.n += 1;
        bits(self.seed, self.n)
    }

    /// Uniform in `0..n` (0 when `n <= 1`).
    pub fn below(&mut self, n: usize) -> usize {
        if n <= 1 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as usize) as i64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// One of `xs`.
    pub fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())].clone()
    }

    /// An index drawn with the given weights.
    pub fn weighted(&mut self, ws: &[u32]) -> usize {
        let total: u32 = ws.iter().sum();
        let mut r = self.below(total as usize) as u32;
        for (i, &w) in ws.iter().enumerate() {
            if r < w {
                return i;
            }
            r -= w;
        }
        ws.len() - 1
    }
}

/// One generated graph.
pub struct RandomGraph {
    /// The seed it came from.
    pub seed: u64,
    /// The graph; its outputs are what the test fetches.
    pub graph: Graph,
    /// The size every symbolic dim is fed with.
    pub sym: usize,
    /// The kinds of ops the generator applied (for coverage counts).
    pub ops: Vec<&'static str>,
}

/// A value in the pool: a tensor and a bound on its magnitude.
#[derive(Clone, Copy)]
struct Val<'g> {
    t: Tensor<'g>,
    /// Upper bound on `|x|` (1 for bools; may be inf or loose for ints; the
    /// dtype's whole range for narrow integers, which wrap).
    mag: f64,
}

struct Gen<'g> {
    b: &'g GraphBuilder,
    rng: Rng,
    sym: usize,
    pool: Vec<Val<'g>>,
    /// How many ops took each pool value (by node) as an operand.
    uses: std::collections::HashMap<NodeId, usize>,
    vars: Vec<Val<'g>>,
    assigned: Vec<NodeId>,
    outputs: Vec<NodeId>,
    ops: Vec<&'static str>,
    allow_vars: bool,
    /// Some placeholder has the dim `n` (so its size is bound at run time).
    has_sym: bool,
    seeds: u64,
}

fn dims(t: Tensor<'_>) -> Vec<Dim> {
    t.shape().0
}

fn is_sym(d: &Dim) -> bool {
    d.is_symbolic()
}

fn divisors(n: usize) -> Vec<usize> {
    (1..=n.max(1))
        .filter(|d| n.max(1).is_multiple_of(*d))
        .collect()
}

/// True for the integer dtypes other than i32 and i64 (narrow or unsigned).
pub fn narrow_int(dt: DType) -> bool {
    dt.is_int() && !matches!(dt, DType::I32 | DType::I64)
}

/// The narrow and unsigned integer dtypes.
const NARROW_INTS: [DType; 6] = [
    DType::I8,
    DType::I16,
    DType::U8,
    DType::U16,
    DType::U32,
    DType::U64,
];

/// The largest magnitude an integer dtype holds (`|MIN|` for signed ones).
fn int_range(dt: DType) -> f64 {
    let lo = Scalar::int_min(dt).map_or(0.0, |s| s.to_f64().abs());
    let hi = Scalar::int_max(dt).map_or(0.0, Scalar::to_f64);
    lo.max(hi)
}

/// The bound `tame` and casts assume for `v`: its own, except that a
/// narrow integer may hold anything its dtype does (its arithmetic wraps).
fn bound(v: &Val<'_>) -> f64 {
    if narrow_int(v.t.dtype()) {
        int_range(v.t.dtype())
    } else {
        v.mag
    }
}

/// Generates the graph of `seed`.
pub fn generate(seed: u64) -> RandomGraph {
    let b = GraphBuilder::with_seed(seed);
    let (sym, ops, outputs) = {
        let mut g = Gen {
            b: &b,
            rng: Rng::new(seed.wrapping_mul(0x9E37_79B9).wrapping_add(17)),
            sym: 0,
            pool: Vec::new(),
            uses: std::collections::HashMap::new(),
            vars: Vec::new(),
            assigned: Vec::new(),
            outputs: Vec::new(),
            ops: Vec::new(),
            allow_vars: false,
            has_sym: false,
            seeds: seed << 8,
        };
        g.build();
        (g.sym, g.ops, g.outputs)
    };
    for o in outputs {
        let t = b.tensor(o).expect("output node");
        b.output(t).expect("output");
    }
    RandomGraph {
        seed,
        graph: b.into_graph(),
        sym,
        ops,
    }
}

impl<'g> Gen<'g> {
    fn size(&self, d: &Dim) -> usize {
        // Every symbol takes the size `sym`.
        let bindings: kiln::graph::Bindings = d
            .expr()
            .symbols()
            .into_iter()
            .map(|s| (s, self.sym))
            .collect();
        d.eval(&bindings).expect("sizes of the generator's dims")
    }

    fn count(&self, ds: &[Dim]) -> usize {
        ds.iter().map(|d| self.size(d)).product()
    }

    fn fits(&self, ds: &[Dim]) -> bool {
        self.count(ds) <= MAX_ELEMS
    }

    fn concrete(&self, ds: &[Dim]) -> Vec<usize> {
        ds.iter().map(|d| self.size(d)).collect()
    }

    fn push(&mut self, v: Val<'g>) -> Val<'g> {
        let v = Val {
            mag: bound(&v),
            ..v
        };
        self.pool.push(v);
        v
    }

    /// A pool value satisfying `pred`: one of the three most recent with
    /// probability 0.45 (chains), one nothing uses yet with probability 0.3
    /// (little dead code), otherwise any (fan-out).
    fn pick(&mut self, pred: impl Fn(&Self, &Val<'g>) -> bool) -> Option<Val<'g>> {
        let cands: Vec<Val<'g>> = self
            .pool
            .iter()
            .copied()
            .filter(|v| pred(self, v))
            .collect();
        if cands.is_empty() {
            return None;
        }
        let unused: Vec<Val<'g>> = cands
            .iter()
            .copied()
            .filter(|v| !self.uses.contains_key(&v.t.id()))
            .collect();
        let r = self.rng.unit();
        let v = if r < 0.45 {
            let k = cands.len().min(3);
            cands[cands.len() - 1 - self.rng.below(k)]
        } else if r < 0.75 && !unused.is_empty() {
            self.rng.pick(&unused)
        } else {
            self.rng.pick(&cands)
        };
        *self.uses.entry(v.t.id()).or_default() += 1;
        Some(v)
    }

    fn next_seed(&mut self) -> u64 {
        self.seeds += 1;
        self.seeds
    }

    // ---- graph skeleton ----

    fn build(&mut self) {
        // `n` is sometimes 0 (an empty batch) and often 1 (a dim that
        // broadcasts without being declared 1).
        self.sym = self.rng.weighted(&[1, 4, 4, 3]);
        self.allow_vars = self.rng.chance(0.3);
        let np = 1 + self.rng.below(3);
        for i in 0..np {
            self.placeholder(i);
        }
        if self.allow_vars {
            for i in 0..1 + self.rng.below(2) {
                self.variable(i);
            }
        }
        let steps = 4 + self.rng.below(17);
        let mut done = 0;
        let mut tries = 0;
        while done < steps && tries < steps * 6 {
            tries += 1;
            if self.step().is_some() {
                done += 1;
            }
        }
        // Outputs: the last value, up to two values nothing uses and up to
        // one more (often an intermediate), plus assignments.
        let last = *self.pool.last().expect("placeholders exist");
        self.outputs.push(last.t.id());
        let unused: Vec<NodeId> = self
            .pool
            .iter()
            .map(|v| v.t.id())
            .filter(|id| !self.uses.contains_key(id))
            .collect();
        for _ in 0..self.rng.below(3) {
            if let Some(&id) = unused.get(self.rng.below(unused.len())) {
                if !self.outputs.contains(&id) {
                    self.outputs.push(id);
                }
            }
        }
        if self.rng.chance(0.4) {
            let v = self.rng.pick(&self.pool);
            if !self.outputs.contains(&v.t.id()) {
                self.outputs.push(v.t.id());
            }
        }
        if !self.vars.is_empty() && self.rng.chance(0.4) {
            if let Some(v) = self.op_assign() {
                self.outputs.push(v.t.id());
                self.ops.push("assign");
            }
        }
    }

    fn placeholder(&mut self, i: usize) {
        let dtype = [
            DType::F32,
            DType::F64,
            DType::I32,
            DType::I64,
            DType::Bool,
            DType::I8,
            DType::I16,
            DType::U8,
            DType::U16,
            DType::U32,
            DType::U64,
        ][self.rng.weighted(&[62, 12, 9, 7, 10, 2, 2, 3, 2, 2, 2])];
        let nchw = dtype.is_float() && self.rng.chance(0.2);
        let mut shape: Vec<Dim> = if nchw {
            let c = self.rng.between(1, 3) as usize;
            let h = self.rng.between(3, 5) as usize;
            let w = self.rng.between(3, 5) as usize;
            let n = if self.rng.chance(0.5) {
                Dim::sym("n")
            } else {
                Dim::Fixed(self.rng.between(1, 2) as usize)
            };
            vec![n, Dim::Fixed(c), Dim::Fixed(h), Dim::Fixed(w)]
        } else {
            let rank = self.rng.weighted(&[1, 3, 5, 4, 2]);
            let mut s: Vec<Dim> = (0..rank)
                .map(|_| Dim::Fixed(self.rng.between(1, 5) as usize))
                .collect();
            if rank > 0 && self.rng.chance(0.4) {
                let at = if self.rng.chance(0.7) {
                    0
                } else {
                    self.rng.below(rank)
                };
                s[at] = Dim::sym("n");
            }
            s
        };
        while self.count(&shape) > 64 {
            let i = shape.iter().position(|d| d.fixed().is_some_and(|n| n > 1));
            match i {
                Some(i) => shape[i] = Dim::Fixed(shape[i].fixed().unwrap() - 1),
                None => break,
            }
        }
        self.has_sym |= shape.iter().any(is_sym);
        let t = self
            .b
            .placeholder(&format!("x{i}"), dtype, Shape(shape))
            .expect("placeholder");
        let mag = match dtype {
            DType::Bool => 1.0,
            DType::I32 | DType::I64 => 6.0,
            d if narrow_int(d) => int_range(d),
            _ => 2.0,
        };
        self.push(Val { t, mag });
    }

    fn variable(&mut self, i: usize) {
        let dtype = if self.rng.chance(0.8) {
            DType::F32
        } else if self.rng.chance(0.7) {
            self.rng.pick(&[DType::F64, DType::I32])
        } else {
            self.rng.pick(&NARROW_INTS)
        };
        let rank = 1 + self.rng.below(3);
        let shape: Vec<usize> = (0..rank).map(|_| self.rng.between(1, 4) as usize).collect();
        let (a, mag) = self.constant_array(dtype, &shape);
        let t = self.b.variable(&format!("v{i}"), a).expect("variable");
        let v = Val { t, mag };
        self.vars.push(v);
        self.push(v);
    }

    /// Assigns a value fitted to a variable's type (a function of the
    /// variable itself 40% of the time); the assignment's value joins the
    /// pool and often the outputs, sometimes with the variable's old value.
    fn op_assign(&mut self) -> Option<Val<'g>> {
        let free: Vec<Val<'g>> = self
            .vars
            .iter()
            .copied()
            .filter(|v| !self.assigned.contains(&v.t.id()))
            .collect();
        if free.is_empty() {
            return None;
        }
        let var = self.rng.pick(&free);
        let dt = var.t.dtype();
        let target = dims(var.t);
        let src = if self.rng.chance(0.4) {
            let p = self.partner(var)?;
            let t = if dt == DType::Bool {
                var.t.xor(p.t)
            } else {
                var.t.add(p.t)
            }
            .ok()?;
            Val {
                t,
                mag: var.mag + p.mag,
            }
        } else {
            self.pick(|_, _| true)?
        };
        let src = self.cast_to(src, dt)?;
        let val = self.fit(src, &target)?;
        let val = self.tame(val, FLOAT_LIMIT);
        let t = var.t.assign(val.t).ok()?;
        self.assigned.push(var.t.id());
        if self.rng.chance(0.6) {
            self.outputs.push(t.id());
        }
        if self.rng.chance(0.3) && !self.outputs.contains(&var.t.id()) {
            self.outputs.push(var.t.id());
        }
        Some(Val { t, mag: val.mag })
    }

    /// One random op on the pool; `None` when it did not apply.
    fn step(&mut self) -> Option<()> {
        let assign = if self.vars.is_empty() { 0 } else { 2 };
        let kinds: [(&'static str, u32); 31] = [
            ("unary", 14),
            ("binary", 20),
            ("select", 7),
            ("logical", 3),
            ("bitwise", 3),
            ("cast", 5),
            ("reduce", 9),
            ("argreduce", 4),
            ("reshape", 6),
            ("permute", 5),
            ("broadcast", 3),
            ("slice", 6),
            ("pad", 4),
            ("concat", 4),
            ("squeeze", 3),
            ("matmul", 9),
            ("conv2d", 4),
            ("pool", 4),
            ("gather", 4),
            ("scatter_add", 3),
            ("layer", 5),
            ("source", 3),
            ("fit", 3),
            ("tame", 1),
            ("twin", 4),
            ("identity", 4),
            ("const_chain", 5),
            ("const_expr", 3),
            ("movement_chain", 4),
            ("assign", assign),
            ("half", 3),
        ];
        let ws: Vec<u32> = kinds.iter().map(|k| k.1).collect();
        let k = kinds[self.rng.weighted(&ws)].0;
        let v = match k {
            "unary" => self.op_unary(),
            "binary" => self.op_binary(),
            "select" => self.op_select(),
            "logical" => self.op_logical(),
            "bitwise" => self.op_bitwise(),
            "cast" => self.op_cast(),
            "half" => self.op_half(),
            "reduce" => self.op_reduce(),
            "argreduce" => self.op_argreduce(),
            "reshape" => self.op_reshape(),
            "permute" => self.op_permute(),
            "broadcast" => self.op_broadcast(),
            "slice" => self.op_slice(),
            "pad" => self.op_pad(),
            "concat" => self.op_concat(),
            "squeeze" => self.op_squeeze(),
            "matmul" => self.op_matmul(),
            "conv2d" => self.op_conv(),
            "pool" => self.op_pool(),
            "gather" => self.op_gather(),
            "scatter_add" => self.op_scatter(),
            "layer" => self.op_layer(),
            "source" => self.op_source(),
            "fit" => self.op_fit(),
            "twin" => self.op_twin(),
            "identity" => self.op_identity(),
            "const_chain" => self.op_const_chain(),
            "const_expr" => self.op_const_expr(),
            "movement_chain" => self.op_movement_chain(),
            "assign" => self.op_assign(),
            _ => self.op_tame(),
        }?;
        if !self.fits(&dims(v.t)) {
            return None;
        }
        let v = if v.t.dtype().is_float() {
            self.tame(v, FLOAT_LIMIT)
        } else {
            v
        };
        self.push(v);
        self.ops.push(k);
        Some(())
    }

    // ---- values ----

    /// A random float: dyadic (exact in every float type) or any value in [-2, 2).
    fn float_value(&mut self) -> f64 {
        if self.rng.chance(0.5) {
            self.rng.between(-8, 8) as f64 / 4.0
        } else {
            self.rng.unit() * 4.0 - 2.0
        }
    }

    fn constant_array(&mut self, dtype: DType, shape: &[usize]) -> (Array, f64) {
        let n: usize = shape.iter().product();
        let mut mag: f64 = 0.25;
        let vals: Vec<Scalar> = (0..n)
            .map(|_| {
                let s = match dtype {
                    DType::Bool => Scalar::Bool(self.rng.chance(0.5)),
                    DType::I32 | DType::I64 => {
                        Scalar::from_f64(dtype, self.rng.between(-5, 5) as f64)
                    }
                    d if narrow_int(d) => self.narrow_value(d),
                    _ => Scalar::from_f64(dtype, self.float_value()),
                };
                mag = mag.max(s.to_f64().abs());
                s
            })
            .collect();
        let mag = match dtype {
            DType::Bool => 1.0,
            d if narrow_int(d) => int_range(d),
            _ => mag,
        };
        (
            Array::from_scalars(shape.to_vec(), dtype, &vals).expect("constant shape"),
            mag,
        )
    }

    /// A value of the narrow integer dtype `dt` that makes arithmetic wrap
    /// often: a small one (40%), an extreme, a neighbour of one, or the sign
    /// bit and its neighbours (30%), or a random bit pattern (30%).
    fn narrow_value(&mut self, dt: DType) -> Scalar {
        let bits = dt.int_bits();
        let mask = u64::MAX >> (64 - bits);
        let sign = 1u64 << (bits - 1);
        let pattern = match self.rng.weighted(&[4, 3, 3]) {
            0 if dt.is_unsigned() => self.rng.between(0, 6) as u64,
            0 => self.rng.between(-5, 5) as u64,
            1 => self.rng.pick(&[
                mask,
                mask - 1,
                sign,
                sign + 1,
                sign - 1,
                sign - 2,
                mask - 55,
            ]),
            _ => self.rng.next_u64(),
        };
        // Truncated to the dtype's width, as `as` does.
        kiln::graph::ops::elementwise::cast_scalar(Scalar::U64(pattern & mask), dt)
    }

    /// A new tensor of exactly `shape`: a constant, a variable, a random or
    /// iota source (symbolic dims come from a broadcast or from the source).
    fn fresh(&mut self, dtype: DType, shape: &[Dim]) -> Option<Val<'g>> {
        let has_sym = shape.iter().any(is_sym);
        let kind = self
            .rng
            .weighted(&[5, 3, 2, if self.allow_vars { 2 } else { 0 }]);
        let v = match kind {
            1 if dtype.is_float() => {
                let seed = self.next_seed();
                if self.rng.chance(0.5) {
                    let lo = self.rng.between(-4, 0) as f64 / 2.0;
                    let hi = lo + self.rng.between(0, 4) as f64 / 2.0;
                    let t = self
                        .b
                        .random_uniform(dtype, Shape(shape.to_vec()), seed, lo, hi)
                        .ok()?;
                    Val {
                        t,
                        mag: lo.abs().max(hi.abs()).max(0.25),
                    }
                } else {
                    let mean = self.float_value();
                    let std = self.rng.between(0, 4) as f64 / 4.0;
                    let t = self
                        .b
                        .random_normal(dtype, Shape(shape.to_vec()), seed, mean, std)
                        .ok()?;
                    Val {
                        t,
                        mag: mean.abs() + 9.0 * std + 0.25,
                    }
                }
            }
            2 if !shape.is_empty() && dtype != DType::Bool => {
                let axis = self.rng.below(shape.len());
                let t = self.b.iota(dtype, Shape(shape.to_vec()), axis).ok()?;
                Val {
                    t,
                    mag: self.size(&shape[axis]) as f64,
                }
            }
            3 if !has_sym && dtype != DType::Bool => {
                let (a, mag) = self.constant_array(dtype, &self.concrete(shape));
                let name = format!("w{}", self.vars.len() + self.pool.len());
                let t = self.b.variable(&name, a).ok()?;
                let v = Val { t, mag };
                self.vars.push(v);
                v
            }
            _ => {
                let cshape: Vec<usize> = shape
                    .iter()
                    .map(|d| if is_sym(d) { 1 } else { self.size(d) })
                    .collect();
                let (a, mag) = self.constant_array(dtype, &cshape);
                let mut t = self.b.constant(a).ok()?;
                if has_sym {
                    t = t.broadcast_to(Shape(shape.to_vec())).ok()?;
                }
                Val { t, mag }
            }
        };
        Some(v)
    }

    /// Keeps a value's magnitude within `limit` (tanh or a clamp).
    fn tame(&mut self, v: Val<'g>, limit: f64) -> Val<'g> {
        let dt = v.t.dtype();
        if !dt.is_numeric() || bound(&v) <= limit {
            return v;
        }
        let r = if dt.is_float() && self.rng.chance(0.4) {
            v.t.tanh().and_then(|t| t.mul(limit))
        } else {
            v.t.maximum(-limit).and_then(|t| t.minimum(limit))
        };
        match r {
            Ok(t) => Val { t, mag: limit },
            Err(_) => v,
        }
    }

    /// True when graph passes may legitimately change the bits of float
    /// value `t`: on the way from its float producers, some add, subtract or
    /// multiply by a constant meets another one or a contraction, which
    /// `simplify_algebra` reassociates or distributes and
    /// `fold_scale_into_contraction` folds into weights, rounding otherwise.
    /// Such a value is within its own dtype's tolerance, but not within f64's
    /// once widened, and not through a discontinuity: values tied in exact
    /// arithmetic (common with broadcasting) may round apart, and argmax, a
    /// comparison, floor, sign or a cast to an integer then jumps.
    ///
    /// Variables count as constants (they are, once frozen), and identities
    /// and movement ops are looked through, as the passes do.
    fn perturbable(&self, t: Tensor<'g>) -> bool {
        use std::collections::{HashMap, HashSet};
        let g = self.b.graph();
        // Computed from constants only (folded alike everywhere), and from
        // constants and variables.
        let mut folded: HashMap<NodeId, bool> = HashMap::new();
        let mut konst: HashMap<NodeId, bool> = HashMap::new();
        for n in g.topo_order() {
            let op = &g.node(n).op;
            let ins = g.inputs(n);
            let (f, k) = match op {
                Op::Constant { .. } => (true, true),
                Op::Variable { .. } => (false, true),
                _ if op.is_source() => (false, false),
                _ => (ins.iter().all(|i| folded[i]), ins.iter().all(|i| konst[i])),
            };
            folded.insert(n, f);
            konst.insert(n, k);
        }
        let scaled = |n: NodeId| {
            matches!(
                g.node(n).op,
                Op::Binary {
                    f: BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul
                }
            ) && g.inputs(n).iter().any(|i| konst[i])
        };
        // What a pass sees through identities and movement ops.
        let inner = |mut n: NodeId| loop {
            let ins = g.inputs(n);
            n = match &g.node(n).op {
                op if op.is_movement() && ins.len() == 1 => ins[0],
                Op::Unary { f: UnaryOp::Neg } => ins[0],
                Op::Binary {
                    f: BinaryOp::Div | BinaryOp::Pow,
                } if konst[&ins[1]] => ins[0],
                _ => return n,
            };
        };
        let mut stack = vec![t.id()];
        let mut seen = HashSet::new();
        while let Some(n) = stack.pop() {
            let node = g.node(n);
            if !seen.insert(n) || !node.ty.dtype.is_float() || folded[&n] {
                continue;
            }
            let ins = g.inputs(n);
            // The CPU backend rounds these differently from the reference:
            // fast f32 approximations of transcendentals, f32 lanes in sums,
            // and GEMM accumulation order in matmul and conv.
            let f32_approx = node.ty.dtype == DType::F32
                && matches!(
                    node.op,
                    Op::Unary {
                        f: UnaryOp::Exp
                            | UnaryOp::Log
                            | UnaryOp::Tanh
                            | UnaryOp::Sigmoid
                            | UnaryOp::Erf
                    } | Op::Reduce {
                        f: ReduceOp::Sum | ReduceOp::Prod,
                        ..
                    }
                );
            if f32_approx || matches!(node.op, Op::MatMul | Op::Conv2d { .. }) {
                return true;
            }
            if scaled(n)
                && ins.iter().any(|&i| {
                    let x = inner(i);
                    scaled(x) || matches!(g.node(x).op, Op::MatMul | Op::Conv2d { .. })
                })
            {
                return true;
            }
            stack.extend(ins);
        }
        false
    }

    /// False for a float value the passes may round differently (see
    /// [`Gen::perturbable`]): discontinuous ops take only exact values.
    fn exact(&self, v: &Val<'g>) -> bool {
        !v.t.dtype().is_float() || !self.perturbable(v.t)
    }

    fn cast_to(&mut self, v: Val<'g>, dt: DType) -> Option<Val<'g>> {
        if v.t.dtype() == dt {
            return Some(v);
        }
        let widen = dt == DType::F64 && v.t.dtype() == DType::F32;
        if (widen || !dt.is_float()) && !self.exact(&v) {
            return None;
        }
        let v = if dt.is_float() {
            self.tame(v, FLOAT_LIMIT)
        } else {
            v
        };
        let t = v.t.cast(dt).ok()?;
        let mag = if dt == DType::Bool || v.t.dtype() == DType::Bool {
            1.0
        } else {
            v.mag
        };
        Some(Val { t, mag })
    }

    /// A slice of a fixed dim of size `a` with exactly `n` elements, in one
    /// of several spellings (steps of either sign, negative or clamped bounds).
    fn slice_to(&mut self, a: usize, n: usize) -> SliceAxis {
        let (ai, ni) = (a as i64, n as i64);
        let simple = |rng: &mut Rng| {
            let start = rng.between(0, ai - ni);
            SliceAxis {
                start,
                end: start + ni,
                step: 1,
            }
        };
        if n == 0 {
            let s = self.rng.between(0, ai);
            return SliceAxis {
                start: s,
                end: s,
                step: 1,
            };
        }
        let k = self.rng.between(1, 3);
        if (ni - 1) * k >= ai {
            return simple(&mut self.rng);
        }
        let ax = if self.rng.chance(0.5) {
            let start = self.rng.between(0, ai - 1 - (ni - 1) * k);
            let end = start + (ni - 1) * k + 1 + self.rng.between(0, k - 1);
            SliceAxis {
                start: if self.rng.chance(0.3) {
                    start - ai
                } else {
                    start
                },
                end: if end >= ai {
                    if self.rng.chance(0.5) {
                        i64::MAX
                    } else {
                        end + self.rng.between(0, 3)
                    }
                } else if self.rng.chance(0.3) {
                    end - ai
                } else {
                    end
                },
                step: k,
            }
        } else {
            let start = self.rng.between((ni - 1) * k, ai - 1);
            let end = start - (ni - 1) * k - 1 - self.rng.between(0, k - 1);
            SliceAxis {
                start: if self.rng.chance(0.3) {
                    start - ai
                } else if start == ai - 1 && self.rng.chance(0.3) {
                    ai + 5
                } else {
                    start
                },
                end: if end < 0 {
                    if self.rng.chance(0.5) {
                        i64::MIN
                    } else {
                        -ai - 1 - self.rng.between(0, 2)
                    }
                } else if self.rng.chance(0.3) {
                    end - ai
                } else {
                    end
                },
                step: -k,
            }
        };
        if kiln::graph::ops::movement::slice_range(a, ax).1 == n {
            ax
        } else {
            simple(&mut self.rng)
        }
    }

    fn reduce_with(
        &mut self,
        v: Val<'g>,
        axes: &[usize],
        keepdims: bool,
        kind: usize,
    ) -> Option<Val<'g>> {
        let d = dims(v.t);
        let r = d.len() as i64;
        let count: usize = axes.iter().map(|&a| self.size(&d[a])).product();
        // Negative spellings of the axes half the time.
        let ax: Vec<i64> = axes
            .iter()
            .map(|&a| {
                if self.rng.chance(0.5) {
                    a as i64 - r
                } else {
                    a as i64
                }
            })
            .collect();
        let float = v.t.dtype().is_float();
        let fixed_axes = axes.iter().all(|&a| !is_sym(&d[a]));
        Some(match kind {
            0 => Val {
                t: v.t.sum(&ax, keepdims).ok()?,
                mag: v.mag * count as f64,
            },
            1 => Val {
                t: v.t.max(&ax, keepdims).ok()?,
                mag: v.mag,
            },
            2 => Val {
                t: v.t.min(&ax, keepdims).ok()?,
                mag: v.mag,
            },
            3 if !float || count <= 16 => {
                let v = if float { self.tame(v, 1.25) } else { v };
                Val {
                    t: v.t.prod(&ax, keepdims).ok()?,
                    mag: v.mag.powi(count as i32).max(1.0),
                }
            }
            4 if float && fixed_axes => Val {
                t: v.t.mean(&ax, keepdims).ok()?,
                mag: v.mag,
            },
            _ => Val {
                t: v.t.max(&ax, keepdims).ok()?,
                mag: v.mag,
            },
        })
    }

    /// `v` moved, sliced, padded, reduced and broadcast into exactly `target`.
    fn fit(&mut self, v: Val<'g>, target: &[Dim]) -> Option<Val<'g>> {
        let mut v = v;
        let numeric = v.t.dtype().is_numeric();
        while v.t.rank() < target.len() {
            let at = if self.rng.chance(0.8) {
                0
            } else {
                self.rng.below(v.t.rank() + 1)
            };
            v.t = v.t.unsqueeze(at as i64).ok()?;
        }
        if v.t.rank() > target.len() {
            let extra = v.t.rank() - target.len();
            let d = dims(v.t);
            let lead_fixed = extra < d.len() && d[..=extra].iter().all(|x| !is_sym(x));
            if lead_fixed && self.rng.chance(0.4) {
                // Merge the leading dims into the first kept one.
                let n: usize = d[..=extra].iter().map(|x| self.size(x)).product();
                let mut s = vec![Dim::Fixed(n)];
                s.extend(d[extra + 1..].iter().cloned());
                v.t = v.t.reshape(Shape(s)).ok()?;
            } else if numeric {
                let kind = self.rng.below(3);
                let axes: Vec<usize> = (0..extra).collect();
                v = self.reduce_with(v, &axes, false, kind)?;
            } else if d[..extra].iter().all(|x| !is_sym(x)) {
                let mut axes = vec![SliceAxis::FULL; d.len()];
                for a in axes.iter_mut().take(extra) {
                    *a = SliceAxis {
                        start: 0,
                        end: 1,
                        step: 1,
                    };
                }
                let t = v.t.slice(&axes).ok()?;
                let mut s = dims(t);
                s.drain(..extra);
                v.t = t.reshape(Shape(s)).ok()?;
            } else {
                return None;
            }
        }
        let d = dims(v.t);
        let r = d.len();
        let mut reduce_axes = Vec::new();
        let mut slice = vec![SliceAxis::FULL; r];
        let mut sliced = false;
        let (mut before, mut after) = (vec![0usize; r], vec![0usize; r]);
        let mut padded = false;
        let mut bcast = false;
        for i in 0..r {
            match (&d[i], &target[i]) {
                (a, b) if a == b => {}
                (a, Dim::Fixed(1)) => {
                    if numeric && (is_sym(a) || self.rng.chance(0.5)) {
                        reduce_axes.push(i);
                    } else if let Dim::Fixed(n) = a {
                        slice[i] = self.slice_to(*n, 1);
                        sliced = true;
                    } else {
                        return None;
                    }
                }
                (Dim::Fixed(1), _) => bcast = true,
                (Dim::Fixed(a), Dim::Fixed(b)) if a > b => {
                    slice[i] = self.slice_to(*a, *b);
                    sliced = true;
                }
                (Dim::Fixed(a), Dim::Fixed(b)) => {
                    let extra = b - a;
                    before[i] = self.rng.below(extra + 1);
                    after[i] = extra - before[i];
                    padded = true;
                }
                _ => return None,
            }
        }
        if !reduce_axes.is_empty() {
            let kind = self.rng.below(5);
            v = self.reduce_with(v, &reduce_axes, true, kind)?;
        }
        if sliced {
            v.t = v.t.slice(&slice).ok()?;
        }
        if padded {
            let value = if v.t.dtype() == DType::Bool {
                1.0
            } else {
                self.rng.pick(&[0.0, 1.0, -1.5])
            };
            v.t = v.t.pad(&before, &after, value).ok()?;
            v.mag = v.mag.max(1.5);
        }
        if bcast {
            v.t = v.t.broadcast_to(Shape(target.to_vec())).ok()?;
        }
        (dims(v.t) == target).then_some(v)
    }

    /// An operand for a binary op with `a`: same dtype, broadcast-compatible.
    fn partner(&mut self, a: Val<'g>) -> Option<Val<'g>> {
        let dt = a.t.dtype();
        let da = dims(a.t);
        let style = self
            .rng
            .weighted(&[3, 5, if dt.is_numeric() { 3 } else { 0 }, 6]);
        match style {
            0 => {
                let (arr, mag) = self.constant_array(dt, &[]);
                Some(Val {
                    t: self.b.constant(arr).ok()?,
                    mag,
                })
            }
            1 => {
                let v = self.pick(|g, v| {
                    v.t.dtype() == dt
                        && kiln::graph::shape::broadcast_shapes(&[&a.t.shape(), &v.t.shape()])
                            .is_ok_and(|s| g.fits(&s.0))
                });
                match v {
                    Some(v) => Some(v),
                    None => self.partner_shaped(a, &da),
                }
            }
            2 if !da.is_empty() => {
                // The softmax pattern: a reduction of `a`, mostly with keepdims
                // (without, it broadcasts back only where the dims allow).
                let r = da.len();
                let mut axes: Vec<usize> = (0..r).filter(|_| self.rng.chance(0.4)).collect();
                if axes.is_empty() {
                    axes.push(self.rng.below(r));
                }
                let kind = self.rng.below(5);
                let keep = self.rng.chance(0.75);
                self.reduce_with(a, &axes, keep, kind)
            }
            _ => self.partner_shaped(a, &da),
        }
    }

    /// A partner of a shape derived from `da`: leading dims dropped, some dims
    /// 1, and some 1-dims of `a` expanded (broadcasting both ways).
    fn partner_shaped(&mut self, a: Val<'g>, da: &[Dim]) -> Option<Val<'g>> {
        let dt = a.t.dtype();
        let drop = if self.rng.chance(0.3) {
            self.rng.below(da.len() + 1)
        } else {
            0
        };
        let mut s: Vec<Dim> = da[drop..].to_vec();
        for d in s.iter_mut() {
            if *d == Dim::Fixed(1) && self.rng.chance(0.4) {
                *d = if self.has_sym && self.rng.chance(0.2) {
                    Dim::sym("n")
                } else {
                    Dim::Fixed(self.rng.between(2, 4) as usize)
                };
            } else if self.rng.chance(0.3) {
                *d = Dim::Fixed(1);
            }
        }
        let out =
            kiln::graph::shape::broadcast_shapes(&[&Shape(da.to_vec()), &Shape(s.clone())]).ok()?;
        if !self.fits(&out.0) {
            return None;
        }
        if self.rng.chance(0.5) {
            if let Some(p) = self.pick(|_, v| v.t.dtype() == dt && v.t.id() != a.t.id()) {
                if let Some(v) = self.fit(p, &s) {
                    return Some(v);
                }
            }
        }
        let v = self.fresh(dt, &s)?;
        if self.rng.chance(0.3) {
            self.push(v);
        }
        Some(v)
    }

    // ---- ops ----

    fn op_unary(&mut self) -> Option<Val<'g>> {
        let v = self.pick(|_, _| true)?;
        let dt = v.t.dtype();
        if dt == DType::Bool {
            return Some(Val {
                t: v.t.not().ok()?,
                mag: 1.0,
            });
        }
        if dt.is_int() {
            // `not` is bitwise on integers: !x == -x - 1 in two's complement.
            let t = match self.rng.below(4) {
                0 => v.t.neg(),
                1 => v.t.abs(),
                2 => v.t.sign(),
                _ => v.t.not(),
            }
            .ok()?;
            return Some(Val {
                t,
                mag: v.mag + 1.0,
            });
        }
        let m = v.mag;
        let shifted = |v: Val<'g>, c: f64| v.t.abs().and_then(|t| t.add(c));
        let k = self.rng.below(16);
        // sign, floor, ceil and round jump: exact values only.
        if matches!(k, 2 | 13..) && !self.exact(&v) {
            return None;
        }
        Some(match k {
            0 => Val {
                t: v.t.neg().ok()?,
                mag: m,
            },
            1 => Val {
                t: v.t.abs().ok()?,
                mag: m,
            },
            2 => Val {
                t: v.t.sign().ok()?,
                mag: 1.0,
            },
            3 => {
                let v = self.tame(v, 3.0);
                Val {
                    t: v.t.exp().ok()?,
                    mag: v.mag.exp(),
                }
            }
            4 => Val {
                t: shifted(v, 1.0).ok()?.log().ok()?,
                mag: (m + 1.0).ln(),
            },
            5 => Val {
                t: shifted(v, 1.0).ok()?.sqrt().ok()?,
                mag: (m + 1.0).sqrt(),
            },
            6 => Val {
                t: shifted(v, 1.0).ok()?.rsqrt().ok()?,
                mag: 1.0,
            },
            7 => Val {
                t: shifted(v, 0.5).ok()?.recip().ok()?,
                mag: 2.0,
            },
            8 => Val {
                t: v.t.sin().ok()?,
                mag: 1.0,
            },
            9 => Val {
                t: v.t.cos().ok()?,
                mag: 1.0,
            },
            10 => Val {
                t: v.t.tanh().ok()?,
                mag: 1.0,
            },
            11 => Val {
                t: v.t.sigmoid().ok()?,
                mag: 1.0,
            },
            12 => Val {
                t: v.t.erf().ok()?,
                mag: 1.0,
            },
            13 => Val {
                t: v.t.floor().ok()?,
                mag: m + 1.0,
            },
            14 => Val {
                t: v.t.ceil().ok()?,
                mag: m + 1.0,
            },
            _ => Val {
                t: v.t.round().ok()?,
                mag: m + 1.0,
            },
        })
    }

    fn op_binary(&mut self) -> Option<Val<'g>> {
        let a = self.pick(|_, v| v.t.dtype().is_numeric())?;
        let p = self.partner(a)?;
        let (a, p) = if self.rng.chance(0.3) { (p, a) } else { (a, p) };
        let out = kiln::graph::shape::broadcast_shapes(&[&a.t.shape(), &p.t.shape()]).ok()?;
        if !self.fits(&out.0) {
            return None;
        }
        let float = a.t.dtype().is_float();
        let (ma, mp) = (a.mag, p.mag);
        Some(match self.rng.weighted(&[5, 4, 5, 3, 2, 2, 2]) {
            0 => Val {
                t: a.t.add(p.t).ok()?,
                mag: ma + mp,
            },
            1 => Val {
                t: a.t.sub(p.t).ok()?,
                mag: ma + mp,
            },
            2 => Val {
                t: a.t.mul(p.t).ok()?,
                mag: ma * mp,
            },
            3 if float => Val {
                t: a.t.div(p.t.abs().ok()?.add(0.5).ok()?).ok()?,
                mag: 2.0 * ma,
            },
            3 => Val {
                t: a.t.div(p.t).ok()?,
                mag: ma,
            },
            4 if float => {
                let base = self.tame(a, 6.0);
                let e = self.tame(p, 2.0);
                let t = base.t.abs().ok()?.add(0.5).ok()?.pow(e.t).ok()?;
                Val {
                    t,
                    mag: (base.mag + 0.5).powf(e.mag).max(4.0),
                }
            }
            4 => {
                let e = p.t.minimum(4.0).ok()?;
                Val {
                    t: a.t.pow(e).ok()?,
                    mag: f64::INFINITY,
                }
            }
            5 => Val {
                t: a.t.maximum(p.t).ok()?,
                mag: ma.max(mp),
            },
            _ => Val {
                t: a.t.minimum(p.t).ok()?,
                mag: ma.max(mp),
            },
        })
    }

    fn compare(&mut self, a: Val<'g>, p: Val<'g>) -> Option<Tensor<'g>> {
        if !self.exact(&a) || !self.exact(&p) {
            return None;
        }
        let t = match self.rng.below(6) {
            0 => a.t.lt(p.t),
            1 => a.t.le(p.t),
            2 => a.t.gt(p.t),
            3 => a.t.ge(p.t),
            4 => a.t.eq(p.t),
            _ => a.t.ne(p.t),
        };
        t.ok()
    }

    fn op_select(&mut self) -> Option<Val<'g>> {
        let a = self.pick(|_, _| true)?;
        let p = self.partner(a)?;
        let cond = if a.t.dtype() == DType::Bool && self.rng.chance(0.3) {
            a.t
        } else {
            self.compare(a, p)?
        };
        // Branches: `a` (or another value fitted to the condition) and a partner.
        let x = if self.rng.chance(0.7) {
            a
        } else {
            let o = self.pick(|_, _| true)?;
            self.fit(o, &dims(cond))?
        };
        let y = self.partner(x)?;
        let (x, y) = if self.rng.chance(0.5) { (x, y) } else { (y, x) };
        let out =
            kiln::graph::shape::broadcast_shapes(&[&cond.shape(), &x.t.shape(), &y.t.shape()])
                .ok()?;
        if !self.fits(&out.0) {
            return None;
        }
        Some(Val {
            t: self.b.select(cond, x.t, y.t).ok()?,
            mag: x.mag.max(y.mag),
        })
    }

    fn op_logical(&mut self) -> Option<Val<'g>> {
        let a = match self.pick(|_, v| v.t.dtype() == DType::Bool) {
            Some(a) => a,
            None => {
                let v = self.pick(|_, v| v.t.dtype().is_numeric())?;
                let p = self.partner(v)?;
                Val {
                    t: self.compare(v, p)?,
                    mag: 1.0,
                }
            }
        };
        let p = self.partner(a)?;
        let out = kiln::graph::shape::broadcast_shapes(&[&a.t.shape(), &p.t.shape()]).ok()?;
        if !self.fits(&out.0) {
            return None;
        }
        let t = match self.rng.below(4) {
            0 => a.t.and(p.t),
            1 => a.t.or(p.t),
            2 => a.t.xor(p.t),
            _ => a.t.not(),
        };
        Some(Val {
            t: t.ok()?,
            mag: 1.0,
        })
    }

    /// Bitwise and, or, xor or not of an integer value (and a partner of
    /// its dtype); sometimes of a value cast to an integer dtype first.
    fn op_bitwise(&mut self) -> Option<Val<'g>> {
        let a = match self.pick(|_, v| v.t.dtype().is_int()) {
            Some(a) if self.rng.chance(0.7) => a,
            _ => {
                let v = self.pick(|_, v| v.t.dtype().is_numeric())?;
                let to = self.rng.pick(&[
                    DType::I8,
                    DType::I16,
                    DType::I32,
                    DType::I64,
                    DType::U8,
                    DType::U16,
                    DType::U32,
                    DType::U64,
                ]);
                self.cast_to(v, to)?
            }
        };
        let bound = int_range(a.t.dtype());
        let t = match self.rng.below(4) {
            3 => a.t.not().ok()?,
            k => {
                let p = self.partner(a)?;
                let out =
                    kiln::graph::shape::broadcast_shapes(&[&a.t.shape(), &p.t.shape()]).ok()?;
                if !self.fits(&out.0) {
                    return None;
                }
                match k {
                    0 => a.t.and(p.t),
                    1 => a.t.or(p.t),
                    _ => a.t.xor(p.t),
                }
                .ok()?
            }
        };
        Some(Val { t, mag: bound })
    }

    fn op_cast(&mut self) -> Option<Val<'g>> {
        let v = self.pick(|_, _| true)?;
        let to = [
            DType::F32,
            DType::F64,
            DType::I32,
            DType::I64,
            DType::Bool,
            DType::I8,
            DType::I16,
            DType::U8,
            DType::U16,
            DType::U32,
            DType::U64,
        ][self.rng.weighted(&[4, 2, 3, 2, 2, 1, 1, 2, 1, 1, 1])];
        let from = v.t.dtype();
        if to == from {
            return None;
        }
        if from.is_float() && to.is_int() && self.rng.chance(0.5) {
            // Scaled past the integer range (|x| <= 32 times 2^(bits - 3)),
            // so the cast saturates; negative values saturate at 0 unsigned.
            let scale = 2f64.powi(to.int_bits() as i32 - 3);
            let scaled = Val {
                t: v.t.mul(scale).ok()?,
                mag: v.mag * scale,
            };
            return self.cast_to(scaled, to);
        }
        if from.is_int() && to.is_float() && self.rng.chance(0.6) {
            // The whole integer range, unclamped (u64 above 2^63 included),
            // then scaled by a power of two (exact) to within FLOAT_LIMIT.
            let range = int_range(from).min(bound(&v));
            let scale = 2f64.powi(5 - range.log2().ceil().max(0.0) as i32);
            let t = v.t.cast(to).ok()?.mul(scale).ok()?;
            return Some(Val {
                t,
                mag: range * scale,
            });
        }
        self.cast_to(v, to)
    }

    /// A float value through a half type (f16 or bf16) and a short chain
    /// of ops every backend computes identically (scaling by 1.5, adding
    /// 0.75, ReLU, negation, a sum over the last axis, accumulated wide),
    /// then back to f32 (sometimes also an output in the half type).
    fn op_half(&mut self) -> Option<Val<'g>> {
        let v = self.pick(|_, v| v.t.dtype().is_float() && v.mag <= 1e3)?;
        let h = if self.rng.chance(0.5) {
            DType::F16
        } else {
            DType::BF16
        };
        let mut t = v.t.cast(h).ok()?;
        let mut mag = v.mag;
        for _ in 0..self.rng.between(1, 3) {
            t = match self.rng.below(5) {
                0 => {
                    mag *= 1.5;
                    t.mul(1.5).ok()?
                }
                1 => {
                    mag += 0.75;
                    t.add(0.75).ok()?
                }
                2 => t.relu().ok()?,
                3 => t.neg().ok()?,
                _ => {
                    let r = t.rank();
                    if r == 0 {
                        t
                    } else {
                        let n = dims(t)[r - 1].fixed().unwrap_or(self.sym.max(1));
                        mag *= n as f64;
                        t.sum(&[r as i64 - 1], false).ok()?
                    }
                }
            };
        }
        if self.rng.chance(0.3) {
            self.outputs.push(t.id());
        }
        Some(Val {
            t: t.cast(DType::F32).ok()?,
            mag,
        })
    }

    fn op_reduce(&mut self) -> Option<Val<'g>> {
        let v = self.pick(|_, v| v.t.dtype().is_numeric())?;
        let r = v.t.rank();
        let axes: Vec<usize> = if r == 0 || self.rng.chance(0.04) {
            Vec::new()
        } else {
            let mut a: Vec<usize> = (0..r).filter(|_| self.rng.chance(0.4)).collect();
            if a.is_empty() {
                a.push(self.rng.below(r));
            }
            a
        };
        let keepdims = self.rng.chance(0.5);
        let kind = self.rng.below(5);
        self.reduce_with(v, &axes, keepdims, kind)
    }

    fn op_argreduce(&mut self) -> Option<Val<'g>> {
        let v = self
            .pick(|g, v| v.t.dtype().is_numeric() && v.t.rank() > 0 && g.count(&dims(v.t)) > 0)?;
        if !self.exact(&v) {
            return None;
        }
        let r = v.t.rank();
        let axis = self.rng.below(r);
        let len = self.size(&dims(v.t)[axis]);
        let ax = if self.rng.chance(0.5) {
            axis as i64 - r as i64
        } else {
            axis as i64
        };
        let keep = self.rng.chance(0.5);
        let t = if self.rng.chance(0.6) {
            v.t.argmax(ax, keep)
        } else {
            v.t.argmin(ax, keep)
        };
        Some(Val {
            t: t.ok()?,
            mag: len as f64,
        })
    }

    /// A random shape with the same symbolic size as `d`.
    fn reshaped_dims(&mut self, d: &[Dim]) -> Vec<Dim> {
        let fixed: usize = d.iter().filter_map(|x| x.fixed()).product();
        let syms: Vec<Dim> = d.iter().filter(|x| is_sym(x)).cloned().collect();
        let style = self.rng.below(5);
        let mut out: Vec<Dim> = match style {
            // Merge a symbolic dim with its neighbour: an expression (`3*n`).
            4 if d.len() >= 2 => {
                let i = self.rng.below(d.len() - 1);
                if is_sym(&d[i]) || is_sym(&d[i + 1]) {
                    let mut s = d[..i].to_vec();
                    s.push(&d[i] * &d[i + 1]);
                    s.extend(d[i + 2..].iter().cloned());
                    return s;
                }
                Vec::new()
            }
            // Merge two adjacent fixed dims.
            0 if d.len() >= 2 => {
                let i = self.rng.below(d.len() - 1);
                match (&d[i], &d[i + 1]) {
                    (Dim::Fixed(a), Dim::Fixed(b)) => {
                        let mut s = d[..i].to_vec();
                        s.push(Dim::Fixed(a * b));
                        s.extend(d[i + 2..].iter().cloned());
                        return s;
                    }
                    _ => Vec::new(),
                }
            }
            // Split a fixed dim into two factors.
            1 if !d.is_empty() => {
                let i = self.rng.below(d.len());
                if let Dim::Fixed(n) = d[i] {
                    let f = self.rng.pick(&divisors(n));
                    let mut s = d[..i].to_vec();
                    s.push(Dim::Fixed(f));
                    s.push(Dim::Fixed(n / f.max(1)));
                    s.extend(d[i + 1..].iter().cloned());
                    if n > 0 {
                        return s;
                    }
                }
                Vec::new()
            }
            _ => Vec::new(),
        };
        // Any factorization of the fixed part, with the symbols anywhere.
        let k = self.rng.below(4);
        let mut rest = fixed;
        for _ in 0..k.saturating_sub(1) {
            let f = if rest == 0 {
                self.rng.pick(&[0, 1, 2])
            } else {
                self.rng.pick(&divisors(rest))
            };
            out.push(Dim::Fixed(f));
            // After a 0 factor the rest is free: the product stays 0.
            rest = match rest.checked_div(f) {
                Some(q) => q,
                None => self.rng.pick(&[0, 1, 3]),
            };
        }
        if k > 0 || rest != 1 {
            out.push(Dim::Fixed(rest));
        }
        for s in syms {
            let at = self.rng.below(out.len() + 1);
            out.insert(at, s);
        }
        out
    }

    fn op_reshape(&mut self) -> Option<Val<'g>> {
        let v = self.pick(|_, _| true)?;
        let s = self.reshaped_dims(&dims(v.t));
        Some(Val {
            t: v.t.reshape(Shape(s)).ok()?,
            mag: v.mag,
        })
    }

    fn op_permute(&mut self) -> Option<Val<'g>> {
        let v = self.pick(|_, v| v.t.rank() >= 2)?;
        let r = v.t.rank();
        let t = if self.rng.chance(0.35) {
            v.t.transpose().ok()?
        } else {
            let mut perm: Vec<usize> = (0..r).collect();
            for i in (1..r).rev() {
                let j = self.rng.below(i + 1);
                perm.swap(i, j);
            }
            v.t.permute(&perm).ok()?
        };
        Some(Val { t, mag: v.mag })
    }

    fn op_broadcast(&mut self) -> Option<Val<'g>> {
        let v = self.pick(|_, _| true)?;
        let mut s: Vec<Dim> = dims(v.t)
            .into_iter()
            .map(|d| {
                if d == Dim::Fixed(1) && self.rng.chance(0.6) {
                    if self.has_sym && self.rng.chance(0.2) {
                        Dim::sym("n")
                    } else {
                        Dim::Fixed(self.rng.between(2, 4) as usize)
                    }
                } else {
                    d
                }
            })
            .collect();
        for _ in 0..self.rng.below(3) {
            s.insert(0, Dim::Fixed(self.rng.between(1, 3) as usize));
        }
        if !self.fits(&s) {
            return None;
        }
        Some(Val {
            t: v.t.broadcast_to(Shape(s)).ok()?,
            mag: v.mag,
        })
    }

    fn op_slice(&mut self) -> Option<Val<'g>> {
        let v = self.pick(|_, v| v.t.rank() >= 1)?;
        let d = dims(v.t);
        let mut axes = Vec::new();
        for x in &d {
            axes.push(match x {
                Dim::Fixed(n) if self.rng.chance(0.7) => {
                    let n = *n;
                    if self.rng.chance(0.75) {
                        let want = if self.rng.chance(0.04) {
                            0
                        } else {
                            self.rng.between(1, n.max(1) as i64) as usize
                        };
                        self.slice_to(n, want.min(n))
                    } else {
                        // Arbitrary bounds and steps, clamped by the op.
                        let ni = n as i64;
                        let step = self.rng.pick(&[-3, -2, -1, 1, 2, 3, 7]);
                        SliceAxis {
                            start: self.rng.between(-ni - 2, ni + 2),
                            end: self.rng.between(-ni - 2, ni + 2),
                            step,
                        }
                    }
                }
                _ => SliceAxis::FULL,
            });
        }
        Some(Val {
            t: v.t.slice(&axes).ok()?,
            mag: v.mag,
        })
    }

    fn op_pad(&mut self) -> Option<Val<'g>> {
        let v = self.pick(|_, v| v.t.rank() >= 1)?;
        let d = dims(v.t);
        let mut before = Vec::new();
        let mut after = Vec::new();
        for x in &d {
            let fixed = !is_sym(x);
            before.push(if fixed { self.rng.below(3) } else { 0 });
            after.push(if fixed { self.rng.below(3) } else { 0 });
        }
        let value = self.rng.pick(&[
            0.0,
            1.0,
            -1.5,
            2.5,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NAN,
        ]);
        let mag = if value.is_finite() {
            v.mag.max(value.abs())
        } else {
            f64::INFINITY
        };
        Some(Val {
            t: v.t.pad(&before, &after, value).ok()?,
            mag,
        })
    }

    fn op_concat(&mut self) -> Option<Val<'g>> {
        let v = self.pick(|_, v| v.t.rank() >= 1 && dims(v.t).iter().any(|d| !is_sym(d)))?;
        let d = dims(v.t);
        let fixed_axes: Vec<usize> = (0..d.len()).filter(|&i| !is_sym(&d[i])).collect();
        let axis = self.rng.pick(&fixed_axes);
        let mut parts = vec![v];
        let mut mag = v.mag;
        for _ in 0..1 + self.rng.below(2) {
            let mut s = d.clone();
            s[axis] = Dim::Fixed(self.rng.between(1, 3) as usize);
            let p = if self.rng.chance(0.25) {
                v
            } else if let Some(o) = self.pick(|_, o| o.t.dtype() == v.t.dtype()) {
                match self.fit(o, &s) {
                    Some(p) => p,
                    None => self.fresh(v.t.dtype(), &s)?,
                }
            } else {
                self.fresh(v.t.dtype(), &s)?
            };
            mag = mag.max(p.mag);
            parts.push(p);
        }
        let at = self.rng.below(parts.len());
        parts.swap(0, at);
        let ts: Vec<Tensor<'g>> = parts.iter().map(|p| p.t).collect();
        let ax = if self.rng.chance(0.5) {
            axis as i64 - d.len() as i64
        } else {
            axis as i64
        };
        Some(Val {
            t: self.b.concat(&ts, ax).ok()?,
            mag,
        })
    }

    fn op_squeeze(&mut self) -> Option<Val<'g>> {
        let v = self.pick(|_, _| true)?;
        let d = dims(v.t);
        let ones: Vec<usize> = (0..d.len()).filter(|&i| d[i] == Dim::Fixed(1)).collect();
        let t = if !ones.is_empty() && self.rng.chance(0.5) {
            v.t.squeeze(self.rng.pick(&ones) as i64).ok()?
        } else {
            let at = self.rng.between(-(d.len() as i64) - 1, d.len() as i64);
            v.t.unsqueeze(at).ok()?
        };
        Some(Val { t, mag: v.mag })
    }

    fn op_matmul(&mut self) -> Option<Val<'g>> {
        let a = self
            .pick(|g, v| v.t.dtype().is_numeric() && v.t.rank() >= 1 && g.count(&dims(v.t)) > 0)?;
        let a = self.tame(a, 4.0);
        let dt = a.t.dtype();
        let da = dims(a.t);
        let r = da.len();
        let n = Dim::Fixed(self.rng.between(1, 5) as usize);
        let style = self.rng.weighted(&[5, 3, 2, 3, 3, 3]);
        let (lhs, rhs) = match style {
            // x @ a^T and a^T @ x: operands that are transposes of stored values.
            1 if r >= 2 => (
                a,
                Val {
                    t: a.t.transpose().ok()?,
                    mag: a.mag,
                },
            ),
            2 if r >= 2 => (
                Val {
                    t: a.t.transpose().ok()?,
                    mag: a.mag,
                },
                a,
            ),
            // Batched, with broadcast batch dims.
            3 if r >= 3 => {
                let mut s: Vec<Dim> = da[..r - 2]
                    .iter()
                    .map(|d| {
                        if self.rng.chance(0.4) {
                            Dim::Fixed(1)
                        } else {
                            d.clone()
                        }
                    })
                    .collect();
                let keep = self.rng.below(s.len() + 1);
                s.drain(..keep.min(s.len()));
                s.push(da[r - 1].clone());
                s.push(n.clone());
                (a, self.fresh(dt, &s)?)
            }
            // A stored value, fitted to [n, k] and transposed.
            4 => {
                let p = self.pick(|_, v| v.t.dtype() == dt && v.t.id() != a.t.id())?;
                let p = self.tame(p, 4.0);
                let p = self.fit(p, &[n.clone(), da[r - 1].clone()])?;
                (
                    a,
                    Val {
                        t: p.t.transpose().ok()?,
                        mag: p.mag,
                    },
                )
            }
            // A strided slice of the rows of the left operand.
            5 if r >= 2 => {
                let rows = self.size(&da[r - 2]);
                if is_sym(&da[r - 2]) || rows == 0 {
                    return None;
                }
                let want = self.rng.between(1, rows as i64) as usize;
                let mut axes = vec![SliceAxis::FULL; r];
                axes[r - 2] = self.slice_to(rows, want);
                let l = Val {
                    t: a.t.slice(&axes).ok()?,
                    mag: a.mag,
                };
                (l, self.fresh(dt, &[da[r - 1].clone(), n.clone()])?)
            }
            // A weight [k, n] (constant, variable or random); a vector times a
            // matrix when `a` is 1-D, or the matrix on the left.
            _ => {
                let w = self.fresh(dt, &[da[r - 1].clone(), n.clone()])?;
                if r == 1 && self.rng.chance(0.3) {
                    let w2 = self.fresh(dt, &[n.clone(), da[0].clone()])?;
                    (w2, a)
                } else {
                    (a, w)
                }
            }
        };
        let k = self.size(&dims(lhs.t)[lhs.t.rank() - 1]);
        let t = lhs.t.matmul(rhs.t).ok()?;
        if !self.fits(&dims(t)) {
            return None;
        }
        let mut v = Val {
            t,
            mag: lhs.mag * rhs.mag * k.max(1) as f64,
        };
        // Epilogues: a bias, a per-column scale (folds into constant weights), ReLU.
        if dt.is_float() && v.t.rank() >= 1 {
            let cols = dims(v.t)[v.t.rank() - 1].clone();
            if self.rng.chance(0.3) && !is_sym(&cols) {
                let bias = self.fresh(dt, std::slice::from_ref(&cols))?;
                v = Val {
                    t: v.t.add(bias.t).ok()?,
                    mag: v.mag + bias.mag,
                };
            }
            if self.rng.chance(0.3) && !is_sym(&cols) {
                let (arr, m) = self.constant_array(dt, &[self.size(&cols)]);
                let c = self.b.constant(arr).ok()?;
                v = Val {
                    t: v.t.mul(c).ok()?,
                    mag: v.mag * m,
                };
            }
            if self.rng.chance(0.2) {
                v.t = v.t.relu().ok()?;
            }
        }
        Some(v)
    }

    /// `v` as a float NCHW tensor with fixed C, H, W.
    fn nchw(&mut self, v: Val<'g>) -> Option<Val<'g>> {
        let d = dims(v.t);
        let v = if v.t.dtype().is_float() {
            v
        } else {
            self.cast_to(v, DType::F32)?
        };
        if d.len() == 4 && d[1..].iter().all(|x| !is_sym(x)) {
            return Some(v);
        }
        let syms: Vec<Dim> = d.iter().filter(|x| is_sym(x)).cloned().collect();
        if syms.len() > 1 {
            return None;
        }
        let p: usize = d.iter().filter_map(|x| x.fixed()).product();
        if p == 0 {
            return None;
        }
        let lead = match syms.first() {
            Some(s) => (s.clone(), p),
            None => {
                let l = if self.rng.chance(0.3) {
                    self.rng.pick(&divisors(p))
                } else {
                    1
                };
                (Dim::Fixed(l), p / l)
            }
        };
        let rest = lead.1;
        let c = self.rng.pick(
            &divisors(rest)
                .into_iter()
                .filter(|&c| c <= 4)
                .collect::<Vec<_>>(),
        );
        let hw = rest / c;
        let h = self.rng.pick(&divisors(hw));
        let s = vec![lead.0, Dim::Fixed(c), Dim::Fixed(h), Dim::Fixed(hw / h)];
        Some(Val {
            t: v.t.reshape(Shape(s)).ok()?,
            mag: v.mag,
        })
    }

    fn op_conv(&mut self) -> Option<Val<'g>> {
        let v = self.pick(|g, v| v.t.dtype() != DType::Bool && g.count(&dims(v.t)) > 0)?;
        let x = self.nchw(v)?;
        let x = self.tame(x, 4.0);
        let dt = x.t.dtype();
        let d = dims(x.t);
        let c = self.size(&d[1]);
        let groups = self.rng.pick(&divisors(c));
        let o = groups * self.rng.between(1, 2) as usize;
        let kh = self.rng.between(1, 3) as usize;
        let kw = self.rng.between(1, 3) as usize;
        let w = self.fresh(
            dt,
            &[
                Dim::Fixed(o),
                Dim::Fixed(c / groups),
                Dim::Fixed(kh),
                Dim::Fixed(kw),
            ],
        )?;
        let w = self.tame(w, 2.0);
        let opts = Conv2dOptions {
            stride: [
                self.rng.between(1, 2) as usize,
                self.rng.between(1, 2) as usize,
            ],
            padding: [0; 4].map(|_| self.rng.weighted(&[5, 3, 1])),
            dilation: [self.rng.weighted(&[0, 4, 1]), self.rng.weighted(&[0, 4, 1])],
            groups,
        };
        let t = x.t.conv2d(w.t, opts).ok()?;
        if !self.fits(&dims(t)) {
            return None;
        }
        let mut v = Val {
            t,
            mag: x.mag * w.mag * (c / groups * kh * kw) as f64,
        };
        if self.rng.chance(0.3) {
            let (arr, m) = self.constant_array(dt, &[o, 1, 1]);
            let bias = self.b.constant(arr).ok()?;
            v = Val {
                t: v.t.add(bias).ok()?,
                mag: v.mag + m,
            };
        }
        if self.rng.chance(0.3) {
            let (arr, m) = self.constant_array(dt, &[o, 1, 1]);
            let scale = self.b.constant(arr).ok()?;
            v = Val {
                t: v.t.mul(scale).ok()?,
                mag: v.mag * m,
            };
        }
        if self.rng.chance(0.3) {
            v.t = v.t.relu().ok()?;
        }
        Some(v)
    }

    fn op_pool(&mut self) -> Option<Val<'g>> {
        let v = self.pick(|g, v| v.t.dtype() != DType::Bool && g.count(&dims(v.t)) > 0)?;
        let x = self.nchw(v)?;
        let mut w = Window2d {
            kernel: [
                self.rng.between(1, 3) as usize,
                self.rng.between(1, 3) as usize,
            ],
            stride: [
                self.rng.between(1, 3) as usize,
                self.rng.between(1, 3) as usize,
            ],
            padding: [0; 4],
            dilation: [self.rng.weighted(&[0, 4, 1]), self.rng.weighted(&[0, 4, 1])],
            ceil_mode: self.rng.chance(0.3),
        };
        for i in 0..4 {
            let span = w.dilation[i % 2] * (w.kernel[i % 2] - 1) + 1;
            w.padding[i] = self.rng.below(span.min(3));
        }
        let t = if self.rng.chance(0.5) {
            x.t.max_pool2d(w)
        } else {
            x.t.avg_pool2d(w, self.rng.chance(0.5))
        }
        .ok()?;
        Some(Val { t, mag: x.mag })
    }

    /// Indices into an axis of size `len`, of shape `shape`, always in range.
    fn indices(&mut self, len: usize, shape: &[Dim]) -> Option<Tensor<'g>> {
        let l = len as i64;
        let clamp = |t: Tensor<'g>| t.maximum(-l).and_then(|t| t.minimum(l - 1));
        let dt = if self.rng.chance(0.5) {
            DType::I32
        } else {
            DType::I64
        };
        match self.rng.below(5) {
            0 if !shape.iter().any(is_sym) => {
                let vals: Vec<Scalar> = (0..self.count(shape))
                    .map(|_| Scalar::from_f64(dt, self.rng.between(-l, l - 1) as f64))
                    .collect();
                let a = Array::from_scalars(self.concrete(shape), dt, &vals)?;
                self.b.constant(a).ok()
            }
            1 => {
                let v = self.pick(|_, v| v.t.dtype().is_int())?;
                let v = self.fit(v, shape)?;
                // Narrow and unsigned integers cast (wrapping) to the index dtype.
                clamp(v.t.cast(dt).ok()?).ok()
            }
            2 => {
                let v = self.pick(|g, v| {
                    v.t.dtype().is_numeric() && v.t.rank() >= 1 && g.count(&dims(v.t)) > 0
                })?;
                if !self.exact(&v) {
                    return None;
                }
                let t = v.t.argmax(-1, false).ok()?;
                let v = self.fit(Val { t, mag: l as f64 }, shape)?;
                clamp(v.t).ok()
            }
            3 if !shape.is_empty() => {
                let axis = self.rng.below(shape.len());
                let t = self.b.iota(dt, Shape(shape.to_vec()), axis).ok()?;
                clamp(t.neg().ok()?.add(l - 1).ok()?).ok()
            }
            _ => {
                let v = self.pick(|_, v| v.t.dtype().is_float())?;
                let v = self.tame(v, 4.0);
                let v = self.fit(v, shape)?;
                let scaled = Val {
                    t: v.t.mul(l as f64 / 2.0).ok()?,
                    mag: v.mag * l as f64,
                };
                if !self.exact(&scaled) {
                    return None;
                }
                let t = scaled.t.floor().ok()?.cast(dt).ok()?;
                clamp(t).ok()
            }
        }
    }

    fn index_shape(&mut self) -> Vec<Dim> {
        let r = self.rng.weighted(&[2, 5, 2]);
        (0..r)
            .map(|_| {
                if self.has_sym && self.rng.chance(0.1) {
                    Dim::sym("n")
                } else {
                    Dim::Fixed(self.rng.between(1, 4) as usize)
                }
            })
            .collect()
    }

    fn op_gather(&mut self) -> Option<Val<'g>> {
        let data = self.pick(|g, v| v.t.rank() >= 1 && g.count(&dims(v.t)) > 0)?;
        let d = dims(data.t);
        let axis = self.rng.below(d.len());
        let len = self.size(&d[axis]);
        let is = self.index_shape();
        let mut out = d[..axis].to_vec();
        out.extend(is.iter().cloned());
        out.extend(d[axis + 1..].iter().cloned());
        if !self.fits(&out) {
            return None;
        }
        let idx = self.indices(len, &is)?;
        let ax = if self.rng.chance(0.3) {
            axis as i64 - d.len() as i64
        } else {
            axis as i64
        };
        Some(Val {
            t: data.t.gather(idx, ax).ok()?,
            mag: data.mag,
        })
    }

    fn op_scatter(&mut self) -> Option<Val<'g>> {
        let data = self
            .pick(|g, v| v.t.dtype().is_numeric() && v.t.rank() >= 1 && g.count(&dims(v.t)) > 0)?;
        let dt = data.t.dtype();
        let d = dims(data.t);
        let axis = self.rng.below(d.len());
        let len = self.size(&d[axis]);
        let is = self.index_shape();
        let mut us = d[..axis].to_vec();
        us.extend(is.iter().cloned());
        us.extend(d[axis + 1..].iter().cloned());
        if !self.fits(&us) {
            return None;
        }
        let idx = self.indices(len, &is)?;
        let upd = match self.rng.below(3) {
            0 => Val {
                t: data.t.gather(idx, axis as i64).ok()?,
                mag: data.mag,
            },
            1 => match self.pick(|_, v| v.t.dtype() == dt) {
                Some(p) => self.fit(p, &us)?,
                None => self.fresh(dt, &us)?,
            },
            _ => self.fresh(dt, &us)?,
        };
        let repeats = self.count(&is).max(1) as f64;
        Some(Val {
            t: data.t.scatter_add(idx, upd.t, axis as i64).ok()?,
            mag: data.mag + upd.mag * repeats,
        })
    }

    fn op_layer(&mut self) -> Option<Val<'g>> {
        let v = self.pick(|_, v| v.t.dtype().is_float() && v.t.rank() >= 1)?;
        let r = v.t.rank() as i64;
        let axis = self.rng.between(-r, r - 1);
        let last_fixed = !is_sym(&dims(v.t)[v.t.rank() - 1]);
        Some(match self.rng.below(8) {
            // A hard one-hot of the argmax/argmin: an index reduction whose
            // value is mapped over its own input's shape. (Not over an empty
            // axis: the reference panics there, see the test's notes.)
            7 if self.size(&dims(v.t)[axis.rem_euclid(r) as usize]) > 0 && self.exact(&v) => {
                let a = if self.rng.chance(0.5) {
                    v.t.argmax(axis, true)
                } else {
                    v.t.argmin(axis, true)
                }
                .ok()?;
                let ax = axis.rem_euclid(r) as usize;
                let pos = self.b.iota(DType::I64, v.t.shape(), ax).ok()?;
                let t = pos.eq(a).ok()?.cast(v.t.dtype()).ok()?;
                Val { t, mag: 1.0 }
            }
            0 => Val {
                t: v.t.softmax(axis).ok()?,
                mag: 1.0,
            },
            1 => {
                let v = self.tame(v, 8.0);
                Val {
                    t: v.t.log_softmax(axis).ok()?,
                    mag: 2.0 * v.mag + 6.0,
                }
            }
            2 if last_fixed => {
                let n = self.size(&dims(v.t)[v.t.rank() - 1]);
                let dt = v.t.dtype();
                let (ga, gm) = self.constant_array(dt, &[n]);
                let (ba, bm) = self.constant_array(dt, &[n]);
                let gamma = self.b.constant(ga).ok()?;
                let beta = self.b.constant(ba).ok()?;
                // The 1e-1 epsilon keeps the normalisation well-conditioned
                // for rows that are (nearly) constant.
                Val {
                    t: v.t.normalize(&[-1], gamma, beta, 1e-1).ok()?,
                    mag: gm * (n as f64).sqrt() * 4.0 + bm,
                }
            }
            3 => Val {
                t: v.t.gelu().ok()?,
                mag: v.mag,
            },
            4 => Val {
                t: v.t.leaky_relu(0.125).ok()?,
                mag: v.mag,
            },
            5 if self.exact(&v) => {
                let depth = self.rng.between(1, 4) as usize;
                let idx = v.t.floor().ok()?.cast(DType::I64).ok()?;
                let t = one_hot(idx, depth, v.t.dtype()).ok()?;
                Val { t, mag: 1.0 }
            }
            _ => Val {
                t: v.t.relu().ok()?,
                mag: v.mag,
            },
        })
    }

    fn op_source(&mut self) -> Option<Val<'g>> {
        let base = self.pick(|_, _| true)?;
        let mut s = dims(base.t);
        if self.rng.chance(0.3) {
            s = (0..self.rng.below(4))
                .map(|_| Dim::Fixed(self.rng.between(1, 4) as usize))
                .collect();
        }
        let dt = [
            DType::F32,
            DType::F64,
            DType::I32,
            DType::I64,
            DType::Bool,
            DType::I8,
            DType::I16,
            DType::U8,
            DType::U16,
            DType::U32,
            DType::U64,
        ][self.rng.weighted(&[12, 2, 4, 2, 2, 1, 1, 2, 1, 1, 1])];
        if dt == DType::Bool {
            let a = self.fresh(DType::F32, &s)?;
            return Some(Val {
                t: a.t.gt(0.0).ok()?,
                mag: 1.0,
            });
        }
        self.fresh(dt, &s)
    }

    fn op_fit(&mut self) -> Option<Val<'g>> {
        let v = self.pick(|_, _| true)?;
        let target = self.pick(|_, _| true)?;
        self.fit(v, &dims(target.t))
    }

    fn op_tame(&mut self) -> Option<Val<'g>> {
        let v = self.pick(|_, v| v.t.dtype().is_numeric())?;
        let mut w = v;
        w.mag = f64::INFINITY;
        let limit = self.rng.pick(&[0.5, 1.0, 3.0]);
        Some(self.tame(w, limit))
    }

    // ---- bait for the graph passes ----

    /// Two ops on one value that are the same (CSE merges them) or differ
    /// only in an attribute (it must not), stacked into one value.
    fn op_twin(&mut self) -> Option<Val<'g>> {
        let v = self.pick(|g, v| v.t.rank() >= 1 && g.count(&dims(v.t)) > 0)?;
        let d = dims(v.t);
        let same = self.rng.chance(0.4);
        let fixed: Vec<usize> = (0..d.len()).filter(|&i| !is_sym(&d[i])).collect();
        let (a, b) = match self.rng.below(6) {
            0 => {
                let before: Vec<usize> = d
                    .iter()
                    .map(|x| if is_sym(x) { 0 } else { self.rng.below(2) })
                    .collect();
                let after: Vec<usize> = d
                    .iter()
                    .map(|x| if is_sym(x) { 0 } else { self.rng.below(2) })
                    .collect();
                let vals = [0.0, -0.0, 1.0, f64::NEG_INFINITY, f64::INFINITY, f64::NAN];
                let x = self.rng.pick(&vals);
                let y = if same { x } else { self.rng.pick(&vals) };
                let mag = if x.is_finite() && y.is_finite() {
                    v.mag.max(1.0)
                } else {
                    f64::INFINITY
                };
                (
                    Val {
                        t: v.t.pad(&before, &after, x).ok()?,
                        mag,
                    },
                    Val {
                        t: v.t.pad(&before, &after, y).ok()?,
                        mag,
                    },
                )
            }
            1 if !fixed.is_empty() => {
                let ax = self.rng.pick(&fixed);
                let n = self.size(&d[ax]);
                let k = self.rng.between(1, n as i64) as usize;
                let mut s1 = vec![SliceAxis::FULL; d.len()];
                s1[ax] = self.slice_to(n, k);
                let mut s2 = s1.clone();
                if !same {
                    s2[ax] = self.slice_to(n, k);
                }
                (
                    Val {
                        t: v.t.slice(&s1).ok()?,
                        mag: v.mag,
                    },
                    Val {
                        t: v.t.slice(&s2).ok()?,
                        mag: v.mag,
                    },
                )
            }
            2 => {
                let seed = self.next_seed();
                let seed2 = if same { seed } else { seed + 1 };
                let dt = if self.rng.chance(0.8) {
                    DType::F32
                } else {
                    DType::F64
                };
                let (lo, hi): (f64, f64) = (-1.0, self.rng.pick(&[-1.0, 0.5, 1.0]));
                let normal = self.rng.chance(0.5);
                let mk = |s: u64| {
                    if normal {
                        self.b.random_normal(dt, Shape(d.clone()), s, lo, hi.abs())
                    } else {
                        self.b.random_uniform(dt, Shape(d.clone()), s, lo, hi)
                    }
                };
                (
                    Val {
                        t: mk(seed).ok()?,
                        mag: 10.0,
                    },
                    Val {
                        t: mk(seed2).ok()?,
                        mag: 10.0,
                    },
                )
            }
            3 if v.t.dtype().is_numeric() => {
                let r = d.len();
                let axes: Vec<usize> = vec![self.rng.below(r)];
                let k1 = self.rng.below(5);
                let k2 = if same { k1 } else { self.rng.below(5) };
                let keep = self.rng.chance(0.5);
                (
                    self.reduce_with(v, &axes, keep, k1)?,
                    self.reduce_with(v, &axes, keep, k2)?,
                )
            }
            4 if d.len() >= 2 => {
                let r = d.len();
                let mut p1: Vec<usize> = (0..r).collect();
                p1.swap(0, r - 1);
                let mut p2 = p1.clone();
                if !same {
                    p2 = (0..r).rev().collect();
                    if (0..r).map(|i| &d[p1[i]]).ne((0..r).map(|i| &d[p2[i]])) {
                        p2 = p1.clone();
                    }
                }
                (
                    Val {
                        t: v.t.permute(&p1).ok()?,
                        mag: v.mag,
                    },
                    Val {
                        t: v.t.permute(&p2).ok()?,
                        mag: v.mag,
                    },
                )
            }
            _ => {
                let dt = v.t.dtype();
                let to = if dt == DType::F32 {
                    DType::I32
                } else {
                    DType::F32
                };
                let c1 = self.cast_to(v, to)?;
                let c2 = if same {
                    self.cast_to(v, to)?
                } else {
                    self.cast_to(v, DType::Bool)?
                        .t
                        .cast(to)
                        .ok()
                        .map(|t| Val { t, mag: 1.0 })?
                };
                (c1, c2)
            }
        };
        let ta = a.t.unsqueeze(0).ok()?;
        let tb = b.t.unsqueeze(0).ok()?;
        Some(Val {
            t: self.b.concat(&[ta, tb], 0).ok()?,
            mag: a.mag.max(b.mag),
        })
    }

    /// Something that changes nothing: `x + 0`, `x * 1`, `neg(neg x)`, a
    /// reshape or broadcast to the same shape, a full slice, a zero pad, ...
    fn op_identity(&mut self) -> Option<Val<'g>> {
        let v = self.pick(|_, _| true)?;
        let d = dims(v.t);
        let dt = v.t.dtype();
        let numeric = dt.is_numeric();
        let t = match self.rng.below(12) {
            0 if numeric => v.t.add(0.0),
            1 if numeric => v.t.mul(1.0),
            2 if numeric => v.t.sub(0.0),
            3 if numeric => v.t.div(1.0),
            4 if numeric => v.t.pow(1.0),
            5 if numeric => v.t.neg().and_then(|t| t.neg()),
            6 if numeric => {
                // Zeros of the full shape (a constant, not a scalar).
                let z = self.b.constant(Array::zeros(dt, &self.concrete(&d))).ok()?;
                if d.iter().any(is_sym) {
                    return None;
                }
                if self.rng.chance(0.5) {
                    z.add(v.t)
                } else {
                    v.t.add(z)
                }
            }
            7 => v.t.reshape(Shape(d.clone())),
            8 => v.t.broadcast_to(Shape(d.clone())),
            9 => {
                let axes: Vec<SliceAxis> = d
                    .iter()
                    .map(|x| match x {
                        Dim::Fixed(n) if self.rng.chance(0.5) => SliceAxis {
                            start: self.rng.pick(&[0, -(*n as i64), -100]),
                            end: self.rng.pick(&[*n as i64, i64::MAX, 100]),
                            step: 1,
                        },
                        _ => SliceAxis::FULL,
                    })
                    .collect();
                v.t.slice(&axes)
            }
            10 => {
                let z = vec![0; d.len()];
                v.t.pad(&z, &z, 7.0)
            }
            _ if d.len() >= 2 && self.rng.chance(0.5) => {
                v.t.transpose().and_then(|t| t.transpose())
            }
            _ => self.b.concat(&[v.t], 0),
        }
        .ok()?;
        Some(Val { t, mag: v.mag })
    }

    /// Constants on either side of chains of adds and multiplies, which the
    /// passes reassociate, distribute and fold into contraction weights.
    fn op_const_chain(&mut self) -> Option<Val<'g>> {
        let v = self.pick(|_, v| v.t.dtype().is_numeric())?;
        // Narrow integers wrap (exactly, on every backend): no taming.
        let v = if narrow_int(v.t.dtype()) {
            v
        } else {
            self.tame(v, 4.0)
        };
        let dt = v.t.dtype();
        let d = dims(v.t);
        let mut cur = v;
        for _ in 0..2 + self.rng.below(2) {
            // A scalar, a row, or a constant that broadcasts `cur` larger.
            let cshape: Vec<usize> = match self.rng.below(4) {
                0 | 1 => Vec::new(),
                2 if !d.is_empty() && !is_sym(&d[d.len() - 1]) => vec![self.size(&d[d.len() - 1])],
                _ => {
                    let mut s: Vec<usize> = d
                        .iter()
                        .map(|x| if is_sym(x) { 1 } else { self.size(x) })
                        .collect();
                    if self.rng.chance(0.3) {
                        s.insert(0, 2);
                    }
                    s
                }
            };
            let (a, m) = self.constant_array(dt, &cshape);
            let c = self.b.constant(a).ok()?;
            let left = self.rng.chance(0.3);
            let t = match self.rng.below(3) {
                0 => {
                    if left {
                        c.add(cur.t)
                    } else {
                        cur.t.add(c)
                    }
                }
                1 => cur.t.sub(c),
                _ => {
                    if left {
                        c.mul(cur.t)
                    } else {
                        cur.t.mul(c)
                    }
                }
            }
            .ok()?;
            let mag = (cur.mag + m).max(cur.mag * m);
            if !self.fits(&dims(t)) {
                return None;
            }
            cur = Val { t, mag };
        }
        Some(cur)
    }

    /// An expression over constants only, which folding evaluates (or keeps,
    /// where it would grow the data), combined with a pool value.
    fn op_const_expr(&mut self) -> Option<Val<'g>> {
        let v = self.pick(|_, v| v.t.dtype().is_numeric())?;
        let dt = v.t.dtype();
        let d = dims(v.t);
        let s: Vec<usize> = d
            .iter()
            .map(|x| if is_sym(x) { 1 } else { self.size(x) })
            .collect();
        let (a, ma) = self.constant_array(dt, &s);
        let (b, mb) = self.constant_array(dt, &[]);
        let ca = self.b.constant(a).ok()?;
        let cb = self.b.constant(b).ok()?;
        let mut e = Val {
            t: ca.mul(cb).ok()?,
            mag: ma * mb,
        };
        if dt.is_float() && self.rng.chance(0.5) {
            e = Val {
                t: e.t.tanh().ok()?,
                mag: 1.0,
            };
        }
        if s.len() >= 2 && self.rng.chance(0.4) {
            e.t = e.t.transpose().ok()?.transpose().ok()?;
        }
        if self.rng.chance(0.3) {
            // A broadcast too large to fold.
            let mut big = s.clone();
            big.insert(0, 70);
            if big.iter().product::<usize>() <= MAX_ELEMS * 4 {
                let t =
                    e.t.broadcast_to(Shape::fixed(&big))
                        .ok()?
                        .sum(&[0], false)
                        .ok()?;
                e = Val {
                    t,
                    mag: e.mag * 70.0,
                };
                e = self.tame(e, 4.0);
            }
        }
        let t = if self.rng.chance(0.5) {
            v.t.add(e.t)
        } else {
            e.t.mul(v.t)
        }
        .ok()?;
        Some(Val {
            t,
            mag: (v.mag + e.mag).max(v.mag * e.mag),
        })
    }

    /// Two movement ops in a row: permutes (sometimes inverse), reshapes,
    /// slices, pads and broadcasts of views.
    fn op_movement_chain(&mut self) -> Option<Val<'g>> {
        let v = self.pick(|_, v| v.t.rank() >= 1)?;
        let d = dims(v.t);
        let r = d.len();
        let t = match self.rng.below(4) {
            0 if r >= 2 => {
                let mut p: Vec<usize> = (0..r).collect();
                for i in (1..r).rev() {
                    let j = self.rng.below(i + 1);
                    p.swap(i, j);
                }
                let inv: Vec<usize> = (0..r)
                    .map(|i| p.iter().position(|&x| x == i).unwrap())
                    .collect();
                let q: Vec<usize> = if self.rng.chance(0.5) {
                    inv
                } else {
                    let mut q: Vec<usize> = (0..r).collect();
                    q.rotate_left(1);
                    q
                };
                v.t.permute(&p).ok()?.permute(&q).ok()?
            }
            1 => {
                let s1 = self.reshaped_dims(&d);
                let s2 = self.reshaped_dims(&s1);
                v.t.reshape(Shape(s1)).ok()?.reshape(Shape(s2)).ok()?
            }
            2 => {
                let once = self.op_slice_of(v)?;
                self.op_slice_of(once)?.t
            }
            _ => {
                let z: Vec<usize> = d
                    .iter()
                    .map(|x| if is_sym(x) { 0 } else { self.rng.below(2) })
                    .collect();
                let t = v.t.pad(&z, &z, 0.5).ok()?;
                let mut s = dims(t);
                s.insert(0, Dim::Fixed(2));
                t.broadcast_to(Shape(s)).ok()?.transpose().ok()?
            }
        };
        Some(Val {
            t,
            mag: v.mag.max(0.5),
        })
    }

    fn op_slice_of(&mut self, v: Val<'g>) -> Option<Val<'g>> {
        let d = dims(v.t);
        let axes: Vec<SliceAxis> = d
            .iter()
            .map(|x| match x {
                Dim::Fixed(n) if *n > 0 => {
                    let want = self.rng.between(1, *n as i64) as usize;
                    self.slice_to(*n, want)
                }
                _ => SliceAxis::FULL,
            })
            .collect();
        Some(Val {
            t: v.t.slice(&axes).ok()?,
            mag: v.mag,
        })
    }
}
