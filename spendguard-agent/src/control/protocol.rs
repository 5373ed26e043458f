//! The typed request/response protocol between `spendguard` and the agent. Ledger views travel as
//! JSON values (their schema is the ledger's `Serialize` output, which is also what `--json` prints).

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use spendguard_ledger::LimitsPatch;

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
    Error {
        message: String,
    },
}
