//! Cluster-wide budgets: the store client beside the node ledger.
//!
//! With a cluster store (Redis ≥ 7 / Valkey ≥ 7.2) an agent path's limits, pause state and spend
//! are one budget across every node. The request path stays on the node: it carves requests from
//! *slices* the node leased from the store ([`ClusterStore::grant`], one atomic script that checks
//! every level of the path against spent + every node's outstanding slices), exactly as it carves
//! from local leases without a store. What a node spends, and what it hands back, goes to the
//! store in batches ([`ClusterStore::settle`]) from a durable outbox in the node's redb, so a crash
//! or an unreachable store never loses a charge (see `ARCHITECTURE.md`, "Cluster-wide budgets").
//!
//! This module only defines what the ledger needs from a store (the [`ClusterStore`] trait) and
//! its data; `redis.rs` implements it; `link.rs` runs the node's side (grants, outbox, sync).

use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};

use crate::agent::AgentName;
use crate::limits::Limits;
use crate::money::MicroUsd;
use crate::period::Period;

pub(crate) mod link;
mod redis;

pub use self::redis::RedisStore;
pub(crate) use link::Link;
pub use link::{ClusterOptions, ClusterUsage};

/// A boxed future, so the trait can be used as `dyn ClusterStore`.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ClusterError>> + Send + 'a>>;

/// Why the cluster store could not answer. The node then spends only the slices it holds.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "cluster store {url} unreachable ({detail}); this node spends only the budget slices it \
         holds. Check that the store is up and reachable from this node"
    )]
    Unreachable { url: String, detail: String },
    #[error(
        "cluster store {url} did not answer within {millis} ms; this node spends only the budget \
         slices it holds. Check the store's load and the network"
    )]
    Timeout { url: String, millis: u64 },
    #[error(
        "cluster store {url} answered something unexpected to {what}: {detail}; check that it is \
         Redis ≥ 7 or Valkey ≥ 7.2 and that nothing else writes SpendGuard's keys"
    )]
    Protocol {
        url: String,
        what: &'static str,
        detail: String,
    },
    #[error(
        "cluster store URL {url} is not usable: {detail}; use redis://[user:password@]host:port[/db] \
         or rediss://… (TLS)"
    )]
    BadUrl { url: String, detail: String },
}

/// Start of each calendar period at the time of a call (Unix seconds), computed by the node
/// (UTC, as the node ledger does), so every node rolls over at the same instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeriodStarts {
    pub day: i64,
    pub week: i64,
    pub month: i64,
    pub now: i64,
}

impl PeriodStarts {
    pub fn at(now: DateTime<Utc>) -> PeriodStarts {
        PeriodStarts {
            day: Period::Daily.start(now).timestamp(),
            week: Period::Weekly.start(now).timestamp(),
            month: Period::Monthly.start(now).timestamp(),
            now: now.timestamp(),
        }
    }
}

/// One lease request: a slice of `want` for `agent`, or at least `min` (the request waiting for
/// it), or nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantCall {
    /// Chosen by the node; a retry with the same id returns the first answer (never two slices).
    pub id: String,
    pub node: String,
    pub agent: AgentName,
    pub want: MicroUsd,
    pub min: MicroUsd,
    pub starts: PeriodStarts,
    /// Slices are at most 1/(divisor × nodes holding) of what is left.
    pub divisor: u64,
}

/// The slice-sizing rule, as `grant.lua` applies it (a test runs both on the same inputs): a
/// node asking for `want` to cover a request of `min` gets at most 1/(`divisor` × nodes holding
/// slices of this agent, itself included) of what the tightest level has left (`avail`, after
/// every node's outstanding slices; `None`: no limit), never less than the request itself while
/// it fits, and nothing once it does not. So slices shrink geometrically as a budget nears its end
/// and the last dollars are reserved exactly; `cargo xtask sim` measures what that costs at scale.
pub fn slice_size(want: u64, min: u64, avail: Option<u64>, holders: u64, divisor: u64) -> u64 {
    match avail {
        None => want,
        Some(a) if min > a => 0,
        Some(a) => want.min((a / (divisor.max(1) * holders.max(1))).max(min)),
    }
}

/// Why a grant was refused (or smaller than asked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The tightest level (index into `ancestors_and_self`) in `period` has less than `min` left.
    Exhausted {
        level: usize,
        period: Period,
        limit: MicroUsd,
        spent: MicroUsd,
        outstanding: MicroUsd,
    },
    Paused {
        level: usize,
    },
    Expired {
        level: usize,
    },
    PerCall {
        level: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantReply {
    pub granted: MicroUsd,
    /// Set when nothing was granted.
    pub refusal: Option<Refusal>,
}

/// What one node sends back for one agent: every outbox entry it has for it, oldest first. The
/// store applies the entries above its watermark for (node, agent), so a retry or a restart that
/// resends an entry never counts it twice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettleCall {
    pub node: String,
    /// The node ledger's identity: a re-created ledger numbers its entries from 1 again.
    pub epoch: u64,
    pub agent: AgentName,
    pub entries: Vec<SettleEntry>,
    pub starts: PeriodStarts,
}

/// One outbox entry: `charge` spent (counts against every level), `release` of the slice the
/// node no longer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SettleEntry {
    pub seq: u64,
    pub charge: MicroUsd,
    pub release: MicroUsd,
}

/// An agent's cluster-wide policy: its own limits and pause flag.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    pub limits: Limits,
    pub paused: bool,
}

/// One level's cluster-wide numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LevelUsage {
    /// Spent in the current day, week, month, and in total.
    pub spent: [MicroUsd; 4],
    /// Σ every node's slices of this level's subtree.
    pub outstanding: MicroUsd,
    /// What each node holds leased for exactly this agent.
    pub held: Vec<(String, MicroUsd)>,
}

/// What the ledger needs from a cluster store. Every call is atomic in the store.
pub trait ClusterStore: Send + Sync + 'static {
    /// The store's address without credentials (for logs and `/readyz`).
    fn describe(&self) -> String;
    /// Grants a slice (see [`GrantCall`]).
    fn grant<'a>(&'a self, call: &'a GrantCall) -> StoreFuture<'a, GrantReply>;
    /// Charges and releases (see [`SettleCall`]); returns what was released by this call.
    fn settle<'a>(&'a self, call: &'a SettleCall) -> StoreFuture<'a, MicroUsd>;
    /// Sets what `node` holds of `agent` (reconcile, `node forget`); returns what it held.
    fn set_held<'a>(
        &'a self,
        node: &'a str,
        agent: &'a AgentName,
        amount: MicroUsd,
    ) -> StoreFuture<'a, MicroUsd>;
    /// Records that `node` may hold slices of `agent` (before its first grant), so a forget or a
    /// restart finds them.
    fn note_holder<'a>(&'a self, node: &'a str, agent: &'a AgentName) -> StoreFuture<'a, ()>;
    /// Every agent `node` may hold slices of.
    fn held_by<'a>(&'a self, node: &'a str) -> StoreFuture<'a, Vec<AgentName>>;
    /// Forgets the list of [`ClusterStore::held_by`] (after a forget).
    fn drop_holder<'a>(&'a self, node: &'a str) -> StoreFuture<'a, ()>;
    /// Writes an agent's policy and bumps the policy version.
    fn put_policy<'a>(&'a self, agent: &'a AgentName, p: &'a Policy) -> StoreFuture<'a, ()>;
    /// The policy version: it changes whenever any policy (or shared setting) does.
    fn policy_version(&self) -> StoreFuture<'_, u64>;
    /// Every agent's policy.
    fn policies(&self) -> StoreFuture<'_, Vec<(AgentName, Policy)>>;
    /// Writes a shared setting (e.g. a price set by `price set`) and bumps the policy version;
    /// `None` deletes it.
    fn put_shared<'a>(
        &'a self,
        key: &'a str,
        value: Option<&'a serde_json::Value>,
    ) -> StoreFuture<'a, ()>;
    /// Every shared setting.
    fn shared(&self) -> StoreFuture<'_, Vec<(String, serde_json::Value)>>;
    /// Cluster-wide numbers of one level.
    fn usage<'a>(
        &'a self,
        agent: &'a AgentName,
        starts: PeriodStarts,
    ) -> StoreFuture<'a, LevelUsage>;
    /// A warning when the store's persistence could lose a grant after its own crash.
    fn durability_warning(&self) -> StoreFuture<'_, Option<String>>;
}
