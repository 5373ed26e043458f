//! Agent names: dotted paths such as `acme.research.summarizer`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A validated agent name: dot-separated segments matching `[a-z0-9]([-a-z0-9_]*[a-z0-9])?`,
/// at most 63 characters in total (a valid Kubernetes label value).
///
/// A request's cost counts against the agent and every ancestor (`acme.research`, `acme`).
///
/// Held inline (the 63-character limit makes that 64 bytes), not in a `String`: the ledger
/// clones names on every carve and settle (the request's levels, the carve, its audit record,
/// the batch's set of touched agents), and each clone of a `String` was a heap allocation —
/// about a third of a metered request's allocations in the ledger (benches/carve.rs).
#[derive(Clone)]
pub struct AgentName {
    len: u8,
    /// The name's ASCII bytes, zero after `len`.
    bytes: [u8; AgentName::MAX_LEN],
}

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
        Ok(AgentName::inline(name))
    }

    /// A name already known valid (`new` checked it, or it is a prefix ending at a `.` of one).
    fn inline(valid: &str) -> AgentName {
        let mut bytes = [0u8; AgentName::MAX_LEN];
        bytes[..valid.len()].copy_from_slice(valid.as_bytes());
        AgentName {
            // At most MAX_LEN (63): `new` refuses anything longer.
            len: valid.len() as u8,
            bytes,
        }
    }

    fn name_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn as_str(&self) -> &str {
        // Only ever filled from a `&str` of ASCII (`new` admits nothing else) up to `len`.
        std::str::from_utf8(self.name_bytes()).unwrap_or_default()
    }

    /// Number of segments (`acme` = 1, `acme.research` = 2).
    pub fn depth(&self) -> usize {
        self.as_str().split('.').count()
    }

    /// The parent level, `None` for a root.
    pub fn parent(&self) -> Option<AgentName> {
        self.as_str()
            .rsplit_once('.')
            .map(|(parent, _)| AgentName::inline(parent))
    }

    /// Every level from the root down to this agent:
    /// `acme`, `acme.research`, `acme.research.summarizer`.
    pub fn ancestors_and_self(&self) -> Vec<AgentName> {
        let name = self.as_str();
        // Exactly the levels (a name is 64 bytes inline: no spare room for nothing).
        let mut out = Vec::with_capacity(name.bytes().filter(|b| *b == b'.').count() + 1);
        for (i, b) in name.bytes().enumerate() {
            if b == b'.' {
                out.push(AgentName::inline(&name[..i]));
            }
        }
        out.push(self.clone());
        out
    }

    /// True if `self` is `other` or lies below it (`acme.research` is within `acme`).
    pub fn is_within(&self, other: &AgentName) -> bool {
        let (me, other) = (self.as_str(), other.as_str());
        me == other
            || (me.len() > other.len()
                && me.starts_with(other)
                && me.as_bytes()[other.len()] == b'.')
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
        a.as_str().to_string()
    }
}

// Equality, ordering and hashing are the string's, so maps keyed by names can be searched by
// `&str` (`Borrow<str>` requires it).
impl PartialEq for AgentName {
    fn eq(&self, other: &Self) -> bool {
        self.name_bytes() == other.name_bytes()
    }
}

impl Eq for AgentName {}

impl PartialOrd for AgentName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for AgentName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Byte order is `str` order.
        self.name_bytes().cmp(other.name_bytes())
    }
}

impl std::hash::Hash for AgentName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl std::borrow::Borrow<str> for AgentName {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for AgentName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// A JSON string, as when the name was a `String` (same bytes on disk), written without a copy.
impl Serialize for AgentName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AgentName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AgentName::new(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentName({})", self.as_str())
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

    /// The inline form orders, compares, hashes and serialises exactly as the string did (maps
    /// are searched by `&str`, and the bytes on disk must not change).
    #[test]
    fn inline_names_behave_as_their_strings() {
        use std::collections::{BTreeMap, HashMap};
        let names = [
            "acme",
            "acme-x",
            "acme.research",
            "acme.research.a",
            "b",
            &"z".repeat(63),
        ];
        let mut sorted: Vec<AgentName> = names.iter().rev().map(|s| n(s)).collect();
        sorted.sort();
        let mut want: Vec<&str> = names.to_vec();
        want.sort();
        assert_eq!(
            sorted.iter().map(AgentName::as_str).collect::<Vec<_>>(),
            want
        );
        let tree: BTreeMap<AgentName, usize> =
            names.iter().enumerate().map(|(i, s)| (n(s), i)).collect();
        let hash: HashMap<AgentName, usize> =
            names.iter().enumerate().map(|(i, s)| (n(s), i)).collect();
        for (i, s) in names.iter().enumerate() {
            assert_eq!(tree.get(*s), Some(&i));
            assert_eq!(hash.get(*s), Some(&i));
        }
        assert_eq!(n("acme.research").parent(), Some(n("acme")));
        let json = serde_json::to_string(&n("acme.research")).unwrap();
        assert_eq!(json, r#""acme.research""#);
        assert_eq!(
            serde_json::from_str::<AgentName>(&json).unwrap(),
            n("acme.research")
        );
        assert_eq!(String::from(n("acme.x")), "acme.x");
        assert_eq!(format!("{:?}", n("acme")), "AgentName(acme)");
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
