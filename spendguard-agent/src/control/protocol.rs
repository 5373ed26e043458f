//! The typed request/response protocol between `spendguard` and the agent.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::identity::Tag;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Ping,
    Tag { cgroup: PathBuf, agent: String },
    Untag { cgroup: PathBuf },
    Agents,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Pong { version: String },
    Tagged { tag: Tag },
    Untagged { tag: Tag },
    Agents { tags: Vec<Tag> },
    Error { message: String },
}
