//! The elementwise functions of one operand, in one place: [`UnaryFn`] is
//! kiln's set of them (`kiln-graph` names it `UnaryOp`), with the integer
//! code compiled code passes for each (its `repr`), its name and the
//! properties backends read; [`unary_f32`] and [`unary_f64`] are their
//! float meaning, which the reference interpreter and the functions
//! compiled code calls ([`crate::extern_fns`]) both compute, so all agree
//! bit for bit. Backends match on [`UnaryFn`] exhaustively: a new variant
//! makes the compiler name every backend that lacks it.

/// Defines [`UnaryFn`] from one line per function (its variant, code and
/// name), with [`UnaryFn::ALL`] and [`UnaryFn::name`], so that the list is
/// written once.
macro_rules! unary_fns {
    ($($(#[$doc:meta])* $variant:ident = $code:literal, $name:literal;)*) => {
        /// An elementwise function of one operand. The discriminant is its
        /// code in compiled code (the `op` argument of
        /// [`crate::extern_fns::kiln_unary_f32`]) and never changes for a
        /// function; new functions take the next code.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[cfg_attr(
            feature = "serde",
            derive(serde::Serialize, serde::Deserialize),
            serde(rename_all = "snake_case")
        )]
        #[repr(u8)]
        pub enum UnaryFn {
            $($(#[$doc])* $variant = $code,)*
        }

        impl UnaryFn {
            /// Every function, in code order.
            pub const ALL: &'static [UnaryFn] = &[$(UnaryFn::$variant),*];

            /// Its name (in graph files, messages and the builder).
            pub fn name(self) -> &'static str {
                match self {
                    $(UnaryFn::$variant => $name,)*
                }
            }
        }
    };
}

unary_fns! {
    /// Negation (wrapping for integers).
    Neg = 0, "neg";
    /// Absolute value (wrapping for integers).
    Abs = 1, "abs";
    /// -1, 0 or 1 (a float zero or NaN gives itself).
    Sign = 2, "sign";
    /// Natural exponential.
    Exp = 3, "exp";
    /// Natural logarithm.
    Log = 4, "log";
    /// Square root.
    Sqrt = 5, "sqrt";
    /// `1 / sqrt x`.
    Rsqrt = 6, "rsqrt";
    /// `1 / x`.
    Recip = 7, "recip";
    /// Sine.
    Sin = 8, "sin";
    /// Cosine.
    Cos = 9, "cos";
    /// Tangent.
    Tan = 10, "tan";
    /// Arcsine (NaN outside [-1, 1]).
    Asin = 11, "asin";
    /// Arccosine (NaN outside [-1, 1]).
    Acos = 12, "acos";
    /// Arctangent.
    Atan = 13, "atan";
    /// Hyperbolic sine.
    Sinh = 14, "sinh";
    /// Hyperbolic cosine.
    Cosh = 15, "cosh";
    /// Inverse hyperbolic sine.
    Asinh = 16, "asinh";
    /// Inverse hyperbolic cosine (NaN below 1).
    Acosh = 17, "acosh";
    /// Inverse hyperbolic tangent (NaN outside [-1, 1], ±inf at ±1).
    Atanh = 18, "atanh";
    /// Hyperbolic tangent.
    Tanh = 19, "tanh";
    /// `1 / (1 + e^-x)`.
    Sigmoid = 20, "sigmoid";
    /// The error function.
    Erf = 21, "erf";
    /// Round toward -inf.
    Floor = 22, "floor";
    /// Round toward +inf.
    Ceil = 23, "ceil";
    /// Round half to even.
    Round = 24, "round";
    /// Logical not (bool) or bitwise not (integers).
    Not = 25, "not";
}

/// The element types a function takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// f32 and f64 (and the half types, computed in f32).
    Float,
    /// Every numeric type, integers included (wrapping at their width).
    Numeric,
    /// Bool and the integers (bitwise).
    Logical,
}

impl UnaryFn {
    /// Its code in compiled code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The function of a code, if any.
    pub fn from_code(code: u32) -> Option<UnaryFn> {
        let f = *Self::ALL.get(usize::try_from(code).ok()?)?;
        (u32::from(f.code()) == code).then_some(f)
    }

    /// The element types it takes.
    pub fn domain(self) -> Domain {
        use UnaryFn::*;
        match self {
            Neg | Abs | Sign => Domain::Numeric,
            Not => Domain::Logical,
            Exp | Log | Sqrt | Rsqrt | Recip | Sin | Cos | Tan | Asin | Acos | Atan | Sinh
            | Cosh | Asinh | Acosh | Atanh | Tanh | Sigmoid | Erf | Floor | Ceil | Round => {
                Domain::Float
            }
        }
    }

    /// True for the functions whose f32 vector forms (128-bit, AVX2 and
    /// AVX-512) are approximations with the constants of [`crate::approx`],
    /// not the reference's libm result.
    pub fn approximated(self) -> bool {
        use UnaryFn::*;
        match self {
            Exp | Log | Tanh | Sigmoid | Erf => true,
            Neg | Abs | Sign | Sqrt | Rsqrt | Recip | Sin | Cos | Tan | Asin | Acos | Atan
            | Sinh | Cosh | Asinh | Acosh | Atanh | Floor | Ceil | Round | Not => false,
        }
    }
}

/// The float meaning of each function in one precision: std's and the
/// `libm` crate's functions (bit for bit the same on every host).
macro_rules! float_meaning {
    ($name:ident, $t:ty, $acosh:ident, $libm_acosh:path, $erf:path,
     [$tan:path, $asin:path, $acos:path, $atan:path, $sinh:path, $cosh:path, $asinh:path,
      $atanh:path]) => {
        /// Function `f` of `x`; NaN for `Not`, which takes no floats.
        pub fn $name(f: UnaryFn, x: $t) -> $t {
            use UnaryFn::*;
            match f {
                Neg => -x,
                Abs => x.abs(),
                Sign => {
                    if x > 0.0 {
                        1.0
                    } else if x < 0.0 {
                        -1.0
                    } else {
                        x
                    }
                }
                Exp => x.exp(),
                Log => x.ln(),
                Sqrt => x.sqrt(),
                Rsqrt => 1.0 / x.sqrt(),
                Recip => 1.0 / x,
                Sin => x.sin(),
                Cos => x.cos(),
                Tan => $tan(x),
                Asin => $asin(x),
                Acos => $acos(x),
                Atan => $atan(x),
                Sinh => $sinh(x),
                Cosh => $cosh(x),
                Asinh => $asinh(x),
                Acosh => $acosh(x),
                Atanh => $atanh(x),
                Tanh => x.tanh(),
                Sigmoid => 1.0 / (1.0 + (-x).exp()),
                Erf => $erf(x),
                Floor => x.floor(),
                Ceil => x.ceil(),
                Round => x.round_ties_even(),
                Not => <$t>::NAN,
            }
        }

        /// Inverse hyperbolic cosine: NaN below 1. (libm's `acosh`/`acoshf`
        /// reads only the magnitude's exponent, so x <= -2 gives a finite
        /// value: `acoshf(-8192)` is -23.6.)
        pub fn $acosh(x: $t) -> $t {
            if x < 1.0 {
                <$t>::NAN
            } else {
                $libm_acosh(x)
            }
        }
    };
}

float_meaning!(
    unary_f32,
    f32,
    acosh_f32,
    libm::acoshf,
    libm::erff,
    [
        libm::tanf,
        libm::asinf,
        libm::acosf,
        libm::atanf,
        libm::sinhf,
        libm::coshf,
        libm::asinhf,
        libm::atanhf
    ]
);
float_meaning!(
    unary_f64,
    f64,
    acosh_f64,
    libm::acosh,
    libm::erf,
    [
        libm::tan,
        libm::asin,
        libm::acos,
        libm::atan,
        libm::sinh,
        libm::cosh,
        libm::asinh,
        libm::atanh
    ]
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_positions_in_all() {
        // Every variant is in ALL (the macro lists them), at its code.
        for (i, f) in UnaryFn::ALL.iter().enumerate() {
            assert_eq!(f.code() as usize, i, "{f:?}");
            assert_eq!(UnaryFn::from_code(i as u32), Some(*f));
        }
        assert_eq!(UnaryFn::from_code(UnaryFn::ALL.len() as u32), None);
        assert_eq!(UnaryFn::from_code(u32::MAX), None);
    }

    #[test]
    fn names_are_distinct() {
        let mut names: Vec<_> = UnaryFn::ALL.iter().map(|f| f.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), UnaryFn::ALL.len());
    }

    #[test]
    fn acosh_is_nan_below_one() {
        assert!(acosh_f32(-8192.0).is_nan());
        assert!(acosh_f64(0.5).is_nan());
        assert_eq!(acosh_f64(1.0), 0.0);
        assert!(unary_f32(UnaryFn::Not, 1.0).is_nan());
    }
}
