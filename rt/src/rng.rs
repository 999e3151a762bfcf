//! Counter-based random numbers: every sample is a pure function of
//! (seed, index), so any backend can reproduce them in any order.

/// The splitmix64 finaliser: a bijective 64-bit mix.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 64 random bits for sample `index` of stream `seed`.
pub fn bits(seed: u64, index: u64) -> u64 {
    splitmix64(splitmix64(seed) ^ index.wrapping_mul(0xD2B7_4407_B1CE_6E93))
}

/// A uniform f64 in `[0, 1)` with 53 random bits.
pub fn uniform_f64(seed: u64, index: u64) -> f64 {
    (bits(seed, index) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A uniform f32 in `[0, 1)` with 24 random bits.
pub fn uniform_f32(seed: u64, index: u64) -> f32 {
    (bits(seed, index) >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
}

/// A standard normal sample (Box-Muller over samples `2i` and `2i+1`).
pub fn normal_f64(seed: u64, index: u64) -> f64 {
    let u1 = 1.0 - uniform_f64(seed, index.wrapping_mul(2));
    let u2 = uniform_f64(seed, index.wrapping_mul(2).wrapping_add(1));
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A stable 64-bit hash of a string (FNV-1a), for deriving per-name seeds.
pub fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// Sample `i` of uniform f32 samples in `[low, high)`: `low + (high - low) * u`
/// in f32, computed in f64 when `high - low` overflows f32, and moved just
/// below `high` where rounding reaches it (`low` when `low == high`).
pub fn uniform_sample_f32(seed: u64, low: f64, high: f64, i: u64) -> f32 {
    let (l, h) = (low as f32, high as f32);
    let u = uniform_f32(seed, i);
    let v = if (h - l).is_finite() {
        l + (h - l) * u
    } else {
        (low + (high - low) * u as f64) as f32
    };
    if v >= h && l < h {
        h.next_down()
    } else {
        v
    }
}

/// As [`uniform_sample_f32`], in f64.
pub fn uniform_sample_f64(seed: u64, low: f64, high: f64, i: u64) -> f64 {
    let u = uniform_f64(seed, i);
    let v = if (high - low).is_finite() {
        low + (high - low) * u
    } else {
        low * (1.0 - u) + high * u
    };
    if v >= high && low < high {
        high.next_down()
    } else {
        v
    }
}

/// Sample `i` of normal samples: `mean + std * z`, in f64.
pub fn normal_sample(seed: u64, mean: f64, std: f64, i: u64) -> f64 {
    mean + std * normal_f64(seed, i)
}
