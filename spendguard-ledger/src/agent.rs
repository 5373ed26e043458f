//! Agent names: dotted paths such as `acme.research.summarizer`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A validated agent name: dot-separated segments matching `[a-z0-9]([-a-z0-9_]*[a-z0-9])?`,
/// at most 63 characters in total (a valid Kubernetes label value).
///
/// A request's cost counts against the agent and every ancestor (`acme.research`, `acme`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentName(String);

/// Why a string is not an agent name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{name}' is not a valid agent name: {problem}; use dot-separated segments of lowercase \
     letters, digits, '-' and '_' that start and end with a letter or digit, at most 63 \
     characters in all (e.g. acme.research.summarizer)"
)]
pub struct AgentNameError {
    pub name: String,
    pub problem: String,
}

impl AgentName {
    /// Longest allowed name, in characters.
    pub const MAX_LEN: usize = 63;

    /// Validates `name`.
    pub fn new(name: &str) -> Result<AgentName, AgentNameError> {
        let fail = |problem: String| AgentNameError {
            name: name.to_string(),
            problem,
        };
        if name.is_empty() {
            return Err(fail("it is empty".into()));
        }
        if name.len() > Self::MAX_LEN {
            return Err(fail(format!(
                "it is {} characters long, the limit is {}",
                name.len(),
                Self::MAX_LEN
            )));
        }
        for (i, segment) in name.split('.').enumerate() {
            let n = i + 1;
            if segment.is_empty() {
                return Err(fail(format!("segment {n} is empty")));
            }
            if let Some(c) = segment
                .chars()
                .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '_'))
            {
                return Err(fail(format!("segment '{segment}' contains {c:?}")));
            }
            let edge_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
            let bytes = segment.as_bytes();
            if !edge_ok(bytes[0]) || !edge_ok(bytes[bytes.len() - 1]) {
                return Err(fail(format!(
                    "segment '{segment}' must start and end with a letter or digit"
                )));
            }
        }
        Ok(AgentName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Number of segments (`acme` = 1, `acme.research` = 2).
    pub fn depth(&self) -> usize {
        self.0.split('.').count()
    }

    /// The parent level, `None` for a root.
    pub fn parent(&self) -> Option<AgentName> {
        self.0
            .rsplit_once('.')
            .map(|(parent, _)| AgentName(parent.to_string()))
    }

    /// Every level from the root down to this agent:
    /// `acme`, `acme.research`, `acme.research.summarizer`.
    pub fn ancestors_and_self(&self) -> Vec<AgentName> {
        let mut out = Vec::with_capacity(4);
        for (i, b) in self.0.bytes().enumerate() {
            if b == b'.' {
                out.push(AgentName(self.0[..i].to_string()));
            }
        }
        out.push(self.clone());
        out
    }

    /// True if `self` is `other` or lies below it (`acme.research` is within `acme`).
    pub fn is_within(&self, other: &AgentName) -> bool {
        self.0 == other.0
            || (self.0.len() > other.0.len()
                && self.0.starts_with(&other.0)
                && self.0.as_bytes()[other.0.len()] == b'.')
    }
}

impl FromStr for AgentName {
    type Err = AgentNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AgentName::new(s)
    }
}

impl TryFrom<String> for AgentName {
    type Error = AgentNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        AgentName::new(&s)
    }
}

impl From<AgentName> for String {
    fn from(a: AgentName) -> String {
        a.0
    }
}

// Same ordering and equality as the inner string, so maps keyed by names can be searched by `&str`.
impl std::borrow::Borrow<str> for AgentName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for AgentName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentName({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> AgentName {
        s.parse().unwrap()
    }

    #[test]
    fn accepts_valid_names() {
        for ok in [
            "acme",
            "a",
            "0",
            "acme.research.summarizer",
            "a-b_c.d9",
            "x1.y-2.z_3",
            &"a".repeat(63),
        ] {
            assert!(AgentName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_invalid_names_with_a_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("Acme", "contains"),
            ("acme.", "segment 2 is empty"),
            (".acme", "segment 1 is empty"),
            ("acme..x", "segment 2 is empty"),
            ("-acme", "start and end"),
            ("acme_", "start and end"),
            ("ac me", "contains"),
            ("acme/x", "contains"),
            ("é", "contains"),
        ] {
            let err = AgentName::new(bad).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
        let long = "a".repeat(64);
        assert!(AgentName::new(&long)
            .unwrap_err()
            .to_string()
            .contains("64 characters"));
        assert!(serde_json::from_str::<AgentName>("\"Bad\"").is_err());
    }

    #[test]
    fn ancestors_from_root() {
        let v: Vec<String> = n("acme.research.summarizer")
            .ancestors_and_self()
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(v, ["acme", "acme.research", "acme.research.summarizer"]);
        assert_eq!(n("acme").ancestors_and_self(), vec![n("acme")]);
        assert_eq!(n("acme.research").parent(), Some(n("acme")));
        assert_eq!(n("acme").parent(), None);
    }

    #[test]
    fn within() {
        assert!(n("acme.research").is_within(&n("acme")));
        assert!(n("acme").is_within(&n("acme")));
        assert!(!n("acme-x").is_within(&n("acme")));
        assert!(!n("acmex.y").is_within(&n("acme")));
        assert!(!n("acme").is_within(&n("acme.research")));
    }
}
