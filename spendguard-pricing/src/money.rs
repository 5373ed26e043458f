//! Money as integer micro-dollars (1 µUSD = $0.000001). Never floats in the ledger or in pricing:
//! floats appear only at the edges where a human or a JSON number wants dollars.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An amount of US dollars in micro-dollars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MicroUsd(pub u64);

/// Why a dollar string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyParseError {
    #[error("'{0}' is not a dollar amount: expected digits with at most 6 decimals, e.g. 5, 5.00 or 0.000015")]
    Malformed(String),
    #[error("'{0}' is too large a dollar amount")]
    Overflow(String),
}

impl MicroUsd {
    pub const ZERO: MicroUsd = MicroUsd(0);
    pub const MAX: MicroUsd = MicroUsd(u64::MAX);
    pub const PER_USD: u64 = 1_000_000;

    pub const fn from_usd(whole_dollars: u64) -> MicroUsd {
        MicroUsd(whole_dollars * Self::PER_USD)
    }
    pub fn checked_add(self, o: MicroUsd) -> Option<MicroUsd> {
        self.0.checked_add(o.0).map(MicroUsd)
    }
    pub fn saturating_add(self, o: MicroUsd) -> MicroUsd {
        MicroUsd(self.0.saturating_add(o.0))
    }
    pub fn saturating_sub(self, o: MicroUsd) -> MicroUsd {
        MicroUsd(self.0.saturating_sub(o.0))
    }
    /// Dollars as a float, for JSON numbers and display only.
    pub fn as_usd_f64(self) -> f64 {
        self.0 as f64 / Self::PER_USD as f64
    }
}

impl FromStr for MicroUsd {
    type Err = MoneyParseError;
    /// Parses "5", "5.00", "$5.5", "0.000015". Negative, exponent, NaN or more than 6 decimals are refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MoneyParseError::Malformed(s.to_string());
        let t = s.trim();
        let t = t.strip_prefix('$').unwrap_or(t);
        let (whole, frac) = match t.split_once('.') {
            Some((w, f)) => (w, f),
            None => (t, ""),
        };
        if whole.is_empty() && frac.is_empty() {
            return Err(bad());
        }
        if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        if frac.len() > 6 {
            return Err(bad());
        }
        let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| MoneyParseError::Overflow(s.to_string()))? };
        let mut frac_micro: u64 = 0;
        for (i, b) in frac.bytes().enumerate() {
            frac_micro += u64::from(b - b'0') * 10u64.pow(5 - i as u32);
        }
        whole
            .checked_mul(Self::PER_USD)
            .and_then(|w| w.checked_add(frac_micro))
            .map(MicroUsd)
            .ok_or_else(|| MoneyParseError::Overflow(s.to_string()))
    }
}

impl fmt::Display for MicroUsd {
    /// "$4.97", "$0.000015": at least two decimals, more only when they carry value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / Self::PER_USD;
        let frac = self.0 % Self::PER_USD;
        let mut digits = format!("{frac:06}");
        while digits.len() > 2 && digits.ends_with('0') {
            digits.pop();
        }
        write!(f, "${whole}.{digits}")
    }
}
