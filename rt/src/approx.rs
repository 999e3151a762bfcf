//! The constants of the fast f32 approximations (exp, log, tanh, sigmoid,
//! erf): range limits, range-reduction constants and polynomial
//! coefficients. The 128-bit emitter (kiln-codegen's `cpu/vector.rs`) and
//! the AVX-512 and AVX2 row code ([`crate::rows`]) both read them from here,
//! so every path evaluates the same polynomials; the CUDA C generator
//! calls NVIDIA's library and writes none. Sigmoid is built on exp and has
//! no constants of its own. Polynomials are highest power first (Horner).

/// exp: inputs are clamped to `[EXP_LO, EXP_HI]`. Beyond +88.72 the final
/// products overflow to +inf; from -104 (where e^x < 2^-150, half the least
/// subnormal) they round to 0, not to 2^-149.
pub const EXP_HI: f32 = 89.0;

/// See [`EXP_HI`].
pub const EXP_LO: f32 = -104.0;

/// exp: `1.5 * 2^23`. Adding it to `x / ln 2` rounds to an integer `n`,
/// whose low mantissa bits are `n`.
pub const EXP_ROUND: f32 = 12_582_912.0;

/// ln 2 split in two (Cody and Waite): `LN2_HI` has few significant bits so
/// that `n * LN2_HI` is exact, `LN2_HI + LN2_LO` is ln 2 to f32 precision
/// and beyond. exp subtracts `n ln 2` from `x`; log adds `e ln 2`.
pub const LN2_HI: f32 = 0.693_359_4;

/// See [`LN2_HI`].
pub const LN2_LO: f32 = -2.121_944_4e-4;

/// exp: `(e^r - 1 - r) / r^2` on `|r| <= ln 2 / 2` (Cephes' `expf`).
pub const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// log: subnormal inputs are multiplied by `2^23` first (and `23 ln 2`
/// taken off the result).
pub const LOG_SUBNORMAL_SCALE: f32 = 8_388_608.0;

/// log: what the scaling of subnormals adds to the logarithm, `23 ln 2`.
pub const LOG_SUBNORMAL_SHIFT: f32 = 23.0 * std::f32::consts::LN_2;

/// log: `(log(1 + x) - x + x^2/2) / x^3` on `[sqrt(1/2) - 1, sqrt(2) - 1]`
/// (Cephes' `logf`).
pub const LOG_POLY: [f32; 9] = [
    7.037_683_6e-2,
    -1.151_461e-1,
    1.167_699_9e-1,
    -1.242_014_1e-1,
    1.424_932_3e-1,
    -1.666_805_8e-1,
    2.000_071_4e-1,
    -2.499_999_4e-1,
    3.333_333e-1,
];

/// tanh: below this magnitude `1 - e^-2|x|` cancels, and [`TANH_SMALL`]
/// is used instead.
pub const TANH_SMALL_BELOW: f32 = 0.125;

/// `tanh x / x` for small `x` as a polynomial in `x^2` (Taylor):
/// `1 - x^2/3 + 2x^4/15 - 17x^6/315` (relative error under 3e-9 for
/// `|x| < 1/8`).
pub const TANH_SMALL: [f32; 4] = [-17.0 / 315.0, 2.0 / 15.0, -1.0 / 3.0, 1.0];

/// erf: the rational approximation holds on `[-ERF_CLAMP, ERF_CLAMP]`,
/// where f32 erf reaches +/-1; inputs are clamped to it.
pub const ERF_CLAMP: f32 = 4.0;

/// The least f32 whose erf rounds to 1 in f32 (erfc(x) < 2^-25 from here
/// on): the vector erfs return exactly +/-1 from this magnitude.
pub const ERF_ONE: f32 = 3.919_206;

/// The vector erfs' rational approximation on `[-4, 4]` (the form XLA and
/// Eigen use): `erf x ~ x * P(x^2) / Q(x^2)`, numerator coefficients
/// highest power first ...
pub const ERF_NUM: [f32; 7] = [
    -2.726_142_3e-10,
    2.770_681_4e-8,
    -2.101_024e-6,
    -5.692_506_4e-5,
    -7.349_906_3e-4,
    -2.9546e-3,
    -1.609_603_3e-2,
];

/// ... and denominator coefficients (`Q` is in `[-0.29, -0.014]` there).
pub const ERF_DEN: [f32; 5] = [
    -1.456_607_2e-5,
    -2.133_740_6e-4,
    -1.682_827e-3,
    -7.373_329e-3,
    -1.426_474e-2,
];
