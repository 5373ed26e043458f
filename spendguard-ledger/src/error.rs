//! Ledger errors. Every message says what the operator should check.

use std::path::PathBuf;
use std::sync::Arc;

use crate::agent::AgentName;
use crate::limits::LimitKind;
use crate::money::MicroUsd;
use crate::types::Denial;

/// Something went wrong in the ledger itself (not a budget decision). The proxy must not forward
/// a request whose reservation failed with one of these (fail closed).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    #[error(
        "cannot open the ledger database {path}: {source}; check that the state directory exists \
         and is writable by spendguard-agent, that the disk is not full, and that no other \
         spendguard-agent has this file open"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: Arc<redb::DatabaseError>,
    },

    #[error(
        "the ledger database {path} is damaged ({source}): it cannot be opened, so nothing is \
         forwarded (tagged traffic is refused, the pinned redirect stays). Restore the file from a \
         backup, or run `spendguard-agent recover` to set it aside and start a new ledger that \
         holds every request until an operator confirms the budgets"
    )]
    Damaged {
        path: PathBuf,
        #[source]
        source: Arc<redb::DatabaseError>,
    },

    #[error(
        "the ledger database {path} failed while {action}: {source}; check free disk space and \
         the filesystem holding it; requests are refused until the ledger can write again"
    )]
    Storage {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: Arc<redb::Error>,
    },

    #[error(
        "the ledger database {path} holds an unreadable {table} record {key}: {detail}; nothing is \
         forwarded without a ledger (tagged traffic is refused). Restore the file from a backup, \
         or run `spendguard-agent recover` to set it aside and start a new ledger that holds every \
         request until an operator confirms the budgets"
    )]
    Corrupt {
        path: PathBuf,
        table: &'static str,
        key: String,
        detail: String,
    },

    #[error(
        "the ledger database {path} has schema version {found}, newer than this spendguard-agent \
         understands (up to {expected}): it was written by a newer release. Run that release (a \
         rollback must not drop the newer ledger), or restore a backup this release wrote"
    )]
    SchemaVersion {
        path: PathBuf,
        found: u64,
        expected: u64,
    },

    #[error(
        "reservation {id} is unknown: it was already settled, was never made, or was charged in \
         full when the ledger recovered after a restart"
    )]
    UnknownReservation { id: u64 },

    #[error(
        "the {kind} limit {limit} for {agent} is larger than the {kind} limit {ancestor_limit} of \
         its ancestor {ancestor}; lower it, or raise {ancestor}'s limit first"
    )]
    LimitAboveAncestor {
        agent: AgentName,
        kind: LimitKind,
        limit: MicroUsd,
        /// Boxed: names are 64 bytes inline, and two would make every `Result` of the ledger
        /// carry this rare error's size.
        ancestor: Box<AgentName>,
        ancestor_limit: MicroUsd,
    },

    #[error(
        "the {kind} limit {limit} for {agent} is smaller than the {kind} limit {descendant_limit} \
         of its descendant {descendant}; lower or remove {descendant}'s limit first"
    )]
    LimitBelowDescendant {
        agent: AgentName,
        kind: LimitKind,
        limit: MicroUsd,
        /// Boxed, as `ancestor` above.
        descendant: Box<AgentName>,
        descendant_limit: MicroUsd,
    },

    #[error(
        "time zone {zone} for {agent}: with a cluster store, budget periods are UTC (every node \
         rolls over at the same instant); remove --tz, or run without cluster_store"
    )]
    ZoneNeedsLocalLedger { agent: AgentName, zone: String },

    #[error("soft threshold {pct}% for {agent} is out of range; use a percentage from 1 to 100")]
    InvalidThreshold { agent: AgentName, pct: u8 },

    #[error(
        "the ledger could not encode {what}: {detail}; this is a bug in spendguard, please report it"
    )]
    Encode { what: &'static str, detail: String },

    #[error(
        "the ledger could not start its committer thread: {source}; check the process and memory \
         limits of spendguard-agent"
    )]
    Spawn {
        #[source]
        source: Arc<std::io::Error>,
    },

    #[error(
        "the ledger has shut down (its committer thread stopped); see the earlier errors in the \
         log and restart spendguard-agent"
    )]
    Closed,

    /// The cluster store did not answer (the node spends only the slices it holds; past them
    /// requests are refused with 503).
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

impl LedgerError {
    /// The disk failed (full, I/O error, cannot reopen): the same operation may succeed once the
    /// operator fixes it. Nothing of a failed batch was applied, so retrying is safe.
    pub fn is_transient(&self) -> bool {
        matches!(self, LedgerError::Storage { .. } | LedgerError::Open { .. })
    }

    pub(crate) fn storage<'a>(
        path: &'a std::path::Path,
        action: &'static str,
    ) -> impl FnOnce(redb::Error) -> LedgerError + 'a {
        move |e| LedgerError::Storage {
            path: path.to_path_buf(),
            action,
            source: Arc::new(e),
        }
    }
}

/// Why `reserve` did not return a reservation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReserveError {
    /// A budget decision: answer 402 with this.
    #[error("{}", .0.message)]
    Denied(Denial),
    /// The ledger failed: the request must not go out.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl ReserveError {
    pub fn denial(&self) -> Option<&Denial> {
        match self {
            ReserveError::Denied(d) => Some(d),
            ReserveError::Ledger(_) => None,
        }
    }
}
