//! Serde helpers that show [`MicroUsd`] as a JSON number of dollars (`4.97`), the unit the
//! operator-facing JSON (402 bodies, status, audit, limits) uses.
//!
//! Serialising goes through `f64` only at this edge, and only below $2^33, where an f64 still tells
//! micro-dollars apart (larger amounts go out as exact decimal strings). Deserialising never does
//! arithmetic on a float: the number's shortest decimal form is parsed exactly by
//! [`MicroUsd::from_str`], so `4.97` becomes exactly 4 970 000 µUSD, and more than six decimals or a
//! negative amount is refused.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

use crate::money::MicroUsd;

/// Below 2^33 dollars an f64 is closer than half a micro-dollar to every amount, so its shortest
/// decimal is the amount itself; above it, neighbouring micro-dollars share an f64.
const EXACT_AS_F64: u64 = (1 << 33) * MicroUsd::PER_USD;

pub fn serialize<S: Serializer>(v: &MicroUsd, s: S) -> Result<S::Ok, S::Error> {
    if v.0 < EXACT_AS_F64 {
        s.serialize_f64(v.as_usd_f64())
    } else {
        // A JSON number would come back as a different amount: send the exact decimal as a
        // string, which `deserialize` accepts (caught by the control_protocol fuzz target).
        let exact = v.to_string();
        s.serialize_str(exact.trim_start_matches('$'))
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<MicroUsd, D::Error> {
    d.deserialize_any(UsdVisitor)
}

struct UsdVisitor;

impl Visitor<'_> for UsdVisitor {
    type Value = MicroUsd;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a non-negative dollar amount with at most 6 decimals, as a number or a string")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<MicroUsd, E> {
        v.checked_mul(MicroUsd::PER_USD)
            .map(MicroUsd)
            .ok_or_else(|| E::custom(format!("{v} dollars is too large an amount")))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<MicroUsd, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(format!(
                "{v} is negative; dollar amounts must be >= 0"
            ))),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<MicroUsd, E> {
        if !v.is_finite() || v < 0.0 {
            return Err(E::custom(format!(
                "{v} is not a non-negative dollar amount"
            )));
        }
        // `Display` for f64 prints the shortest decimal that round-trips, never an exponent.
        MicroUsd::from_str(&v.to_string()).map_err(E::custom)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<MicroUsd, E> {
        MicroUsd::from_str(v).map_err(E::custom)
    }
}

/// `Option<MicroUsd>` as dollars or `null`.
pub mod option {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    #[serde(transparent)]
    struct Usd(#[serde(with = "super")] MicroUsd);

    pub fn serialize<S: Serializer>(v: &Option<MicroUsd>, s: S) -> Result<S::Ok, S::Error> {
        v.map(Usd).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MicroUsd>, D::Error> {
        Ok(Option::<Usd>::deserialize(d)?.map(|u| u.0))
    }
}

/// `Option<Option<MicroUsd>>` for patches: field absent = unchanged (needs `#[serde(default)]`),
/// `null` = remove, a number = set.
pub mod patch {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    #[serde(transparent)]
    struct Usd(#[serde(with = "super")] MicroUsd);

    pub fn serialize<S: Serializer>(v: &Option<Option<MicroUsd>>, s: S) -> Result<S::Ok, S::Error> {
        // Only reached when `Some` (the field uses `skip_serializing_if = "Option::is_none"`).
        v.flatten().map(Usd).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<MicroUsd>>, D::Error> {
        Ok(Some(Option::<Usd>::deserialize(d)?.map(|u| u.0)))
    }
}

/// `Option<Option<T>>` for patches of non-money fields: absent = unchanged, `null` = remove.
pub mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, T: Serialize>(
        v: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Ok(Some(Option::<T>::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct W(#[serde(with = "super")] MicroUsd);

    #[test]
    fn round_trips_exactly() {
        for micros in [0, 1, 15, 4_970_000, 5_000_000, 123_456_789, 999_999_999_999] {
            let json = serde_json::to_string(&W(MicroUsd(micros))).unwrap();
            let back: W = serde_json::from_str(&json).unwrap();
            assert_eq!(back.0, MicroUsd(micros), "{json}");
        }
        assert_eq!(
            serde_json::to_string(&W(MicroUsd(4_970_000))).unwrap(),
            "4.97"
        );
    }

    #[test]
    fn amounts_an_f64_cannot_hold_travel_as_exact_strings() {
        let below = EXACT_AS_F64 - 1;
        let json = serde_json::to_string(&W(MicroUsd(below))).unwrap();
        assert_eq!(json, "8589934591.999999");
        // Every micro-dollar just below the limit survives as a number; so do spread-out ones.
        let near = (below - 100_000..=below).chain((1..=100_000).map(|i| below / 100_000 * i + i));
        for micros in near {
            let json = serde_json::to_string(&W(MicroUsd(micros))).unwrap();
            let back: W = serde_json::from_str(&json).unwrap();
            assert_eq!(back.0, MicroUsd(micros), "{json}");
        }
        for micros in [below, EXACT_AS_F64, 9_007_199_254_740_993, u64::MAX] {
            let json = serde_json::to_string(&W(MicroUsd(micros))).unwrap();
            let back: W = serde_json::from_str(&json).unwrap();
            assert_eq!(back.0, MicroUsd(micros), "{json}");
        }
        assert_eq!(
            serde_json::to_string(&W(MicroUsd::MAX)).unwrap(),
            "\"18446744073709.551615\""
        );
    }

    #[test]
    fn accepts_numbers_and_strings_refuses_garbage() {
        let w: W = serde_json::from_str("5").unwrap();
        assert_eq!(w.0, MicroUsd::from_usd(5));
        let w: W = serde_json::from_str("\"$0.000015\"").unwrap();
        assert_eq!(w.0, MicroUsd(15));
        let w: W = serde_json::from_str("0.1").unwrap();
        assert_eq!(w.0, MicroUsd(100_000));
        assert!(serde_json::from_str::<W>("-1").is_err());
        assert!(serde_json::from_str::<W>("0.0000001").is_err());
        assert!(serde_json::from_str::<W>("\"abc\"").is_err());
    }
}
