//! Float attributes in the graph JSON without loss. JSON has no NaN or
//! infinity (serde_json writes them as `null`, which then fails to load),
//! so an attribute that is not finite is written as one of the strings
//! `"nan"`, `"inf"` and `"-inf"`; finite values stay numbers, written
//! with the shortest representation that reads back to the same `f64`.
//! Reading accepts a number or one of those strings (any case, `+inf`
//! and `infinity` too), and says what it found otherwise. A NaN's sign
//! and payload are not kept: kiln's ops give every NaN the same meaning.

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// Writes `v` as a JSON number, or as `"nan"`, `"inf"`, `"-inf"`.
pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_finite() {
        s.serialize_f64(*v)
    } else if v.is_nan() {
        s.serialize_str("nan")
    } else if *v > 0.0 {
        s.serialize_str("inf")
    } else {
        s.serialize_str("-inf")
    }
}

/// Reads a number, or one of the strings [`serialize`] writes.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_any(FloatVisitor)
}

struct FloatVisitor;

impl Visitor<'_> for FloatVisitor {
    type Value = f64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a number, or \"nan\", \"inf\" or \"-inf\"")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        match v.to_ascii_lowercase().as_str() {
            "nan" => Ok(f64::NAN),
            "inf" | "+inf" | "infinity" | "+infinity" => Ok(f64::INFINITY),
            "-inf" | "-infinity" => Ok(f64::NEG_INFINITY),
            _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug)]
    struct T {
        #[serde(with = "super")]
        v: f64,
    }

    fn round_trip(v: f64) -> (String, f64) {
        let json = serde_json::to_string(&T { v }).unwrap();
        let back: T = serde_json::from_str(&json).unwrap();
        (json, back.v)
    }

    #[test]
    fn every_special_value_survives() {
        for v in [
            0.0,
            -0.0,
            1.5,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            5e-324,
            f32::MAX as f64,
            f32::MIN as f64,
            1e-45,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            let (json, back) = round_trip(v);
            assert_eq!(back.to_bits(), v.to_bits(), "{v} wrote {json}");
        }
        let (json, back) = round_trip(f64::NAN);
        assert_eq!(json, r#"{"v":"nan"}"#);
        assert!(back.is_nan());
    }

    #[test]
    fn other_strings_and_null_are_named_errors() {
        for bad in [r#"{"v":"big"}"#, r#"{"v":null}"#, r#"{"v":[1]}"#] {
            let e = serde_json::from_str::<T>(bad).unwrap_err().to_string();
            assert!(e.contains("\"nan\""), "{bad}: {e}");
        }
    }
}
