//! Agent names: dotted paths of Kubernetes-label-safe segments, e.g. `acme.research.summarizer`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest name: a Kubernetes label value is at most 63 characters.
pub const MAX_LEN: usize = 63;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid agent name {name:?}: {why} (an agent name is dot-separated segments of [a-z0-9]([-a-z0-9_]*[a-z0-9])?, at most 63 characters, e.g. acme.research.summarizer)")]
pub struct InvalidAgentName {
    pub name: String,
    pub why: &'static str,
}

impl AgentName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The root-most ancestor first, this name last: `acme`, `acme.research`, `acme.research.x`.
    pub fn ancestors_and_self(&self) -> impl Iterator<Item = &str> {
        let s = self.0.as_str();
        s.match_indices('.')
            .map(move |(i, _)| &s[..i])
            .chain(std::iter::once(s))
    }
}

impl FromStr for AgentName {
    type Err = InvalidAgentName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why| InvalidAgentName {
            name: s.to_string(),
            why,
        };
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if s.len() > MAX_LEN {
            return Err(bad("it is longer than 63 characters"));
        }
        for seg in s.split('.') {
            let b = seg.as_bytes();
            let (Some(first), Some(last)) = (b.first(), b.last()) else {
                return Err(bad("it has an empty segment"));
            };
            let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
            if !alnum(first) || !alnum(last) {
                return Err(bad(
                    "a segment must start and end with a lowercase letter or digit",
                ));
            }
            if !b.iter().all(|c| alnum(c) || *c == b'-' || *c == b'_') {
                return Err(bad(
                    "only lowercase letters, digits, '-', '_' and '.' are allowed",
                ));
            }
        }
        Ok(AgentName(s.to_string()))
    }
}

impl TryFrom<String> for AgentName {
    type Error = InvalidAgentName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}
impl From<AgentName> for String {
    fn from(n: AgentName) -> String {
        n.0
    }
}
impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so width and alignment work in tables.
        f.pad(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_and_invalid_names() {
        for ok in ["a", "acme.research.summarizer", "a-b_c.d9", "0"] {
            assert!(ok.parse::<AgentName>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "a..b",
            ".a",
            "a.",
            "-a",
            "a-",
            "a b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(bad.parse::<AgentName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ancestors_root_first() {
        let n: AgentName = "acme.research.summarizer".parse().expect("valid");
        let v: Vec<_> = n.ancestors_and_self().collect();
        assert_eq!(v, ["acme", "acme.research", "acme.research.summarizer"]);
    }
}
