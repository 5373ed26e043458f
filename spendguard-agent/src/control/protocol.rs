//! The typed request/response protocol between `spendguard` and the agent. Ledger views travel as
//! JSON values (their schema is the ledger's `Serialize` output, which is also what `--json` prints).

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use spendguard_ledger::LimitsPatch;

use super::MAX_REQUEST_BYTES;
use crate::identity::Tag;
use crate::metering::prices::PriceOverride;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Ping,
    Tag {
        cgroup: PathBuf,
        agent: String,
    },
    Untag {
        cgroup: PathBuf,
    },
    Agents,
    CaExport,
    LimitSet {
        agent: String,
        patch: LimitsPatch,
    },
    LimitShow {
        agent: String,
    },
    Status {
        agent: String,
    },
    Pause {
        agent: String,
    },
    Resume {
        agent: String,
    },
    Audit {
        agent: Option<String>,
        since: Option<DateTime<Utc>>,
        limit: usize,
    },
    PriceSet {
        model: String,
        price: PriceOverride,
    },
    Prices,
    /// Lift the recovery hold (`spendguard recover --confirm`).
    RecoverConfirm,
    /// Release every budget slice a dead node holds in the cluster store (audited).
    NodeForget {
        node: String,
    },
    /// One frame of `spendguard top`.
    Top,
    /// Spend from the audit log, grouped by day × agent × model (`spendguard report`).
    Report {
        agent: Option<String>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    },
}

/// Why a request line was refused before it reached a handler.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("request larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("malformed request: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Parses one request line as the server read it (at most `MAX_REQUEST_BYTES + 1` bytes, newline
/// included): the only handling of the client's bytes before dispatch. No I/O, so it can be fuzzed.
pub fn parse_request(line: &[u8]) -> Result<Request, ProtocolError> {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(ProtocolError::TooLarge {
            limit: MAX_REQUEST_BYTES,
        });
    }
    Ok(serde_json::from_slice(line)?)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Pong {
        version: String,
    },
    Tagged {
        tag: Tag,
    },
    Untagged {
        tag: Tag,
    },
    Agents {
        tags: Vec<Tag>,
        /// Budgets workloads created (`/.well-known/spendguard/delegate`) and who created them.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        delegated: Vec<DelegatedBudget>,
    },
    CaCert {
        pem: String,
    },
    Limits {
        agent: String,
        limits: Value,
    },
    Status {
        status: Value,
    },
    Done {
        message: String,
    },
    Audit {
        events: Value,
    },
    Prices {
        source: String,
        date: String,
        models: Value,
    },
    Top {
        snapshot: super::snapshot::Snapshot,
    },
    Report {
        /// The zone whose local days the rows use.
        tz: String,
        rows: Vec<crate::report::Row>,
    },
    Error {
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_an_f64_cannot_hold_survive_the_round_trip() {
        // Caught by the control_protocol fuzz target's round trip (input kept in
        // fuzz/regressions/control_protocol/): $2^33 and more went out as a JSON number and came
        // back a few micro-dollars off.
        for line in [
            &br#"{"op":"price_set","model":"m","price":{"input_per_mtok":"18446744073709.551615","output_per_mtok":1}}"#[..],
            br#"{"op":"limit_set","agent":"a","patch":{"daily":"9007199254.740993"}}"#,
        ] {
            let req = parse_request(line).unwrap();
            let wire = serde_json::to_vec(&req).unwrap();
            assert_eq!(parse_request(&wire).unwrap(), req, "{}", String::from_utf8_lossy(&wire));
        }
    }
}

/// A budget a workload created, as `spendguard agents` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DelegatedBudget {
    pub agent: String,
    #[serde(flatten)]
    pub record: crate::metering::delegate::Record,
}
