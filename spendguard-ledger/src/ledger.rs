//! The public handle.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::agent::AgentName;
use crate::clock::{Clock, SystemClock};
use crate::committer::{Committer, Granted, Op};
use crate::error::{LedgerError, ReserveError};
use crate::limits::{Limits, LimitsPatch};
use crate::money::MicroUsd;
use crate::notify::Notifier;
use crate::state::{Effects, State};
use crate::store::{Opener, Reader, Store, WriteSet};
use crate::types::{
    AgentStatus, AuditContext, AuditEvent, AuditFilter, Denial, DenyReason, Notification,
    Reservation, ReserveRequest, Settled,
};

/// redb's page cache. Its default (1 GiB) let the agent's RSS grow with the audit log (the bench
/// saw +60 MB after a load test); decisions come from the in-memory mirror and writes are appends,
/// so a small cache costs nothing on the request path.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

/// How many operations may wait for the committer before callers wait to enqueue.
const QUEUE_CAPACITY: usize = 16 * 1024;

/// How the ledger behaves.
#[derive(Debug, Clone)]
pub struct LedgerOptions {
    /// Limits for a *requesting* agent in every period it has no limit of its own for (per field:
    /// per-call, daily, weekly, monthly, total, expiry, webhook; `pause_on_exhaust` if either
    /// sets it). They do not apply to its ancestors' levels, and `set_limits` does not check them
    /// against the hierarchy. The embedded default sets none: metered, not limited.
    pub default_limits: Limits,
    /// Audit events older than this are deleted (by the committer, a bounded number per batch).
    pub audit_retention: chrono::Duration,
    /// Source of the current time; inject a [`crate::ManualClock`] in tests.
    pub clock: Arc<dyn Clock>,
    /// Most operations one commit carries. 1 turns group commit off (one commit per operation).
    pub max_batch: usize,
    /// Capacity of each [`Ledger::subscribe`] queue.
    pub notification_capacity: usize,
    /// Largest budget lease (slice) an agent is granted; zero reserves every request exactly,
    /// with one durable commit on its path. See `lease.rs`: a crash charges at most the unused
    /// part of one slice per agent on top of the open requests' worst cases.
    pub lease_max: MicroUsd,
    /// How long a batch holding only settles and lease renewals (nobody's request waits for
    /// those) waits for more before it is committed. Zero commits at once.
    pub settle_linger: std::time::Duration,
    /// Settles of carved requests (leases on) are committed without an fsync and made durable
    /// at most this long later, or with the next durable commit, or at close. A crash in between
    /// loses their audit events, never their money: the lease row on disk still covers them at
    /// their worst case and is charged in full. Zero: every settle is durable before it returns.
    pub settle_durable_within: std::time::Duration,
}

impl Default for LedgerOptions {
    fn default() -> Self {
        LedgerOptions {
            default_limits: Limits::default(),
            audit_retention: chrono::Duration::days(90),
            clock: Arc::new(SystemClock),
            max_batch: 4096,
            notification_capacity: 1024,
            lease_max: MicroUsd::ZERO,
            settle_linger: std::time::Duration::from_millis(5),
            settle_durable_within: std::time::Duration::from_secs(1),
        }
    }
}

/// Joins the committer when the last [`Ledger`] clone goes away, so the database file is closed
/// (and can be opened again) once the drop returns.
struct CommitterThread(Option<JoinHandle<()>>);

impl Drop for CommitterThread {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            if h.join().is_err() {
                tracing::error!("the ledger committer thread panicked");
            }
        }
    }
}

struct Shared {
    state: Arc<Mutex<State>>,
    reader: Reader,
    notifier: Arc<Notifier>,
    clock: Arc<dyn Clock>,
    path: PathBuf,
    /// Leases on (`lease_max > 0`): the request path tries to carve first.
    leases: bool,
    ledger_id: u64,
}

/// The durable budget ledger. Cheap to clone; all clones share one committer.
///
/// Every mutation (`reserve`, `settle`, limits, pause, settings, blocked-request audit) is durable
/// (committed to redb with immediate durability) before its future resolves — except the settle
/// of a carved request, durable within [`LedgerOptions::settle_durable_within`] (its lease row
/// covers it until then). Reads (`status`,
/// `limits`, `agents`, `settings_with_prefix`) come from the in-memory mirror; `audit` reads the
/// database.
#[derive(Clone)]
pub struct Ledger {
    // Field order matters: the sender must drop before the thread handle is joined.
    tx: mpsc::Sender<Op>,
    shared: Arc<Shared>,
    _committer: Arc<CommitterThread>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// Opens (or creates) the ledger at `path`; its directory must exist.
    ///
    /// Every reservation a previous process left open (it crashed or was killed before settling)
    /// is charged at its reserved amount — a charge is never lost — and its audit event is marked
    /// `recovered`. Blocking: call it before serving, or from `spawn_blocking`.
    pub fn open(path: impl AsRef<Path>, options: LedgerOptions) -> Result<Ledger, LedgerError> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        Self::open_with(
            path,
            Box::new(move || {
                redb::Database::builder()
                    .set_cache_size(CACHE_BYTES)
                    .create(&p)
            }),
            options,
        )
    }

    pub(crate) fn open_with(
        path: PathBuf,
        opener: Opener,
        options: LedgerOptions,
    ) -> Result<Ledger, LedgerError> {
        let store = Store::new(path.clone(), opener);
        store.open()?;
        let ledger_id = store.ledger_id()?;
        let mut state = store.load(options.default_limits.clone())?;
        state.lease_max = options.lease_max.0;
        let now = options.clock.now();
        let mut fx = Effects::default();
        let (count, sum) = state.recover_open(now, &mut fx);
        let ws = WriteSet::build(&state, &fx, now.checked_sub_signed(options.audit_retention))?;
        store.write(&ws, true)?;
        if count > 0 {
            tracing::warn!(
                path = %path.display(),
                reservations = count,
                charged = %sum,
                "charged reservations left open by the previous run at their reserved amounts"
            );
        }

        let state = Arc::new(Mutex::new(state));
        let notifier = Arc::new(Notifier::new(options.notification_capacity));
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let reader = store.reader();
        let committer = Committer {
            rx,
            store,
            state: state.clone(),
            notifier: notifier.clone(),
            clock: options.clock.clone(),
            audit_retention: options.audit_retention,
            max_batch: options.max_batch.max(1),
            broken: false,
            orphans: Arc::default(),
            wake: tx.downgrade(),
            linger: options.settle_linger,
            durable_within: options.settle_durable_within,
            unsynced_since: None,
        };
        let handle = std::thread::Builder::new()
            .name("spendguard-ledger".into())
            .spawn(move || committer.run())
            .map_err(|e| LedgerError::Spawn {
                source: Arc::new(e),
            })?;
        Ok(Ledger {
            tx,
            shared: Arc::new(Shared {
                state,
                reader,
                notifier,
                clock: options.clock,
                path,
                leases: options.lease_max > MicroUsd::ZERO,
                ledger_id,
            }),
            _committer: Arc::new(CommitterThread(Some(handle))),
        })
    }

    #[cfg(test)]
    pub(crate) fn shared_state_for_tests(&self) -> &Mutex<State> {
        &self.shared.state
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// This ledger's identity (random, given at creation; the agent's state manifest records it).
    pub fn ledger_id(&self) -> u64 {
        self.shared.ledger_id
    }

    /// The recovery hold, if one is in force: every request is refused (`agent_paused`) until
    /// an operator lifts it with [`Ledger::release_hold`]. `spendguard-agent recover` sets it
    /// when it had to start a new ledger, since the spend the old one recorded is unknown.
    pub fn hold(&self) -> Option<crate::types::Hold> {
        self.setting(crate::state::HOLD_SETTING)
            .and_then(|v| serde_json::from_value(v).ok())
    }

    /// Puts a recovery hold in force (see [`Ledger::hold`]).
    pub async fn set_hold(&self, hold: &crate::types::Hold) -> Result<(), LedgerError> {
        let v = serde_json::to_value(hold).map_err(|e| LedgerError::Encode {
            what: "a recovery hold",
            detail: e.to_string(),
        })?;
        self.put_setting(crate::state::HOLD_SETTING, v).await
    }

    /// Lifts the recovery hold: requests are decided by the budgets again.
    pub async fn release_hold(&self) -> Result<(), LedgerError> {
        self.delete_setting(crate::state::HOLD_SETTING).await
    }

    async fn call<T>(&self, op: impl FnOnce(oneshot::Sender<T>) -> Op) -> Result<T, LedgerError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(op(tx))
            .await
            .map_err(|_| LedgerError::Closed)?;
        rx.await.map_err(|_| LedgerError::Closed)
    }

    /// Reserves `req.amount` (the request's worst case) for the agent and every ancestor, if it
    /// fits every level's limits; durable before it returns `Ok`. Forward the request only then.
    ///
    /// If this future is dropped after the reservation was committed, the ledger releases it
    /// (nothing can have been forwarded).
    pub async fn reserve(&self, req: ReserveRequest) -> Result<Reservation, ReserveError> {
        // Fast path: carve from the agent's lease, durable already (no commit, no wait).
        let carved = if self.shared.leases {
            let now = self.shared.clock.now();
            self.state().try_carve(&req, now)
        } else {
            None
        };
        if let Some(c) = carved {
            if c.renew {
                let agent = c.reservation.agent.clone();
                if self.tx.try_send(Op::Renew { agent }).is_err() {
                    // Queue full or closed: let a later carve ask again.
                    if let Some(l) = self.state().leases.get_mut(&c.reservation.agent) {
                        l.renewing = false;
                    }
                }
            }
            return Ok(c.reservation);
        }
        match self.call(|reply| Op::Reserve { req, reply }).await {
            Ok(r) => r.map(Granted::take),
            Err(e) => Err(ReserveError::Ledger(e)),
        }
    }

    /// Replaces reservation `id` by the real cost `actual` (charged even if it exceeds the
    /// reservation, with a warning). With no usage report, settle at the reserved amount.
    pub async fn settle(&self, id: u64, actual: MicroUsd) -> Result<Settled, LedgerError> {
        self.call(|reply| Op::Settle { id, actual, reply }).await?
    }

    /// Records a request blocked before any reservation (`unknown_model`, `unpriced_request`) in
    /// the audit log, and returns the 402 content for it.
    pub async fn record_blocked(
        &self,
        agent: AgentName,
        reason: DenyReason,
        requested: MicroUsd,
        audit: AuditContext,
    ) -> Result<Denial, LedgerError> {
        self.call(|reply| Op::Blocked {
            agent,
            reason,
            requested,
            ctx: audit,
            reply,
        })
        .await?
    }

    /// Changes only the limits `patch` names; returns the agent's limits afterwards. Refuses a
    /// limit above an ancestor's, or below a descendant's, of the same kind.
    pub async fn set_limits(
        &self,
        agent: &AgentName,
        patch: LimitsPatch,
    ) -> Result<Limits, LedgerError> {
        let agent = agent.clone();
        self.call(|reply| Op::SetLimits {
            agent,
            patch,
            reply,
        })
        .await?
    }

    /// Blocks the agent and its descendants (`agent_paused`) until [`Ledger::resume`].
    pub async fn pause(&self, agent: &AgentName) -> Result<(), LedgerError> {
        self.set_paused(agent, true).await
    }

    /// Lifts a pause (set by an operator or by `pause_on_exhaust`).
    pub async fn resume(&self, agent: &AgentName) -> Result<(), LedgerError> {
        self.set_paused(agent, false).await
    }

    async fn set_paused(&self, agent: &AgentName, paused: bool) -> Result<(), LedgerError> {
        let agent = agent.clone();
        self.call(|reply| Op::SetPaused {
            agent,
            paused,
            reply,
        })
        .await?
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The agent's own limits (what `limit show` prints); defaults for an unknown agent.
    pub fn limits(&self, agent: &AgentName) -> Limits {
        self.state()
            .agents
            .get(agent)
            .map(|e| e.limits.clone())
            .unwrap_or_default()
    }

    /// Waits until every operation queued before this call (lease renewals included) is on disk.
    pub async fn flush(&self) -> Result<(), LedgerError> {
        self.call(|reply| Op::Flush { reply }).await?
    }

    /// Stops leasing and hands back every unused slice, durably; returns how much. Call it on a
    /// graceful stop, after in-flight requests were settled: the next start then charges only
    /// what is still open. Requests after this are reserved exactly.
    pub async fn release_leases(&self) -> Result<MicroUsd, LedgerError> {
        self.call(|reply| Op::ReleaseLeases { reply }).await?
    }

    /// The unused part of the agent's own budget lease: what a crash now would charge on top of
    /// its open requests' worst cases. Zero without a lease.
    pub fn lease_unused(&self, agent: &AgentName) -> MicroUsd {
        MicroUsd(self.state().leases.get(agent).map_or(0, |l| l.available()))
    }

    /// The `default_limits` this ledger applies.
    pub fn default_limits(&self) -> Limits {
        self.state().defaults.clone()
    }

    /// Budget status of one agent (an unknown agent shows zero spend).
    pub fn status(&self, agent: &AgentName) -> AgentStatus {
        let now = self.shared.clock.now();
        self.state().status(agent, now)
    }

    /// Every agent the ledger knows: those with limits, a pause, or any request so far, and
    /// their ancestors. Sorted.
    pub fn agents(&self) -> Vec<AgentName> {
        self.state().agents.keys().cloned().collect()
    }

    /// Audit events, oldest first (the newest `filter.limit` of those matching). Reads the
    /// database: blocking, but short. What it reads may lag [`Ledger::status`] by the group
    /// commit in progress (memory is updated first); [`Ledger::audit_synced`] waits for it.
    pub fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, LedgerError> {
        self.shared.reader.audit(filter)
    }

    /// [`Ledger::audit`] that reads its writes: it first waits until everything queued is on
    /// disk, so every settle `status` already counts shows in the log; then it reads off the
    /// async runtime's workers. If that wait fails (the disk is failing), it reads what is on
    /// disk.
    pub async fn audit_synced(&self, filter: AuditFilter) -> Result<Vec<AuditEvent>, LedgerError> {
        if let Err(e) = self.flush().await {
            tracing::debug!("audit: ledger flush failed ({e}); reading what is on disk");
        }
        let ledger = self.clone();
        tokio::task::spawn_blocking(move || ledger.audit(&filter))
            .await
            .map_err(|_| LedgerError::Closed)?
    }

    /// A bounded queue of notifications for the webhook notifier. When it is full, further
    /// notifications are dropped with a warning; the request path never waits for it.
    pub fn subscribe(&self) -> mpsc::Receiver<Notification> {
        self.shared.notifier.subscribe()
    }

    /// Stores `value` under `key` durably (tags, price overrides, ...).
    pub async fn put_setting(
        &self,
        key: &str,
        value: serde_json::Value,
    ) -> Result<(), LedgerError> {
        let key = key.to_string();
        self.call(|reply| Op::Setting {
            key,
            value: Some(value),
            reply,
        })
        .await?
    }

    /// Removes `key` (no error if it did not exist).
    pub async fn delete_setting(&self, key: &str) -> Result<(), LedgerError> {
        let key = key.to_string();
        self.call(|reply| Op::Setting {
            key,
            value: None,
            reply,
        })
        .await?
    }

    /// One setting.
    pub fn setting(&self, key: &str) -> Option<serde_json::Value> {
        self.state().settings.get(key).cloned()
    }

    /// Every setting whose key starts with `prefix`, sorted by key.
    pub fn settings_with_prefix(&self, prefix: &str) -> Vec<(String, serde_json::Value)> {
        self.state()
            .settings
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
