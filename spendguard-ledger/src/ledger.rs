//! The public handle.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::agent::AgentName;
use crate::clock::{Clock, SystemClock};
use crate::cluster::link::Acquired;
use crate::cluster::{ClusterError, ClusterOptions, ClusterUsage, Link};
use crate::committer::{Committer, Granted, Op};
use crate::error::{LedgerError, ReserveError};
use crate::limits::{Limits, LimitsPatch};
use crate::meter::{self, LeaseMeter};
use crate::money::MicroUsd;
use crate::notify::Notifier;
use crate::state::{Effects, SettleKind, State};
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
    /// How long settles made on their callers' tasks ([`Ledger::settle_now`]: carve settles,
    /// already charged in the in-memory mirror, and covered on disk by their lease rows at their
    /// worst case) wait for company before the committer writes them. Each batch costs the
    /// committer thread a wake-up, a timer and a commit; at 1,000 requests/s the 5 ms settle linger
    /// made that ~200 times a second. Anything else arriving meanwhile is committed within
    /// `settle_linger` (a reservation at once), and a stop writes them first.
    pub deferred_linger: std::time::Duration,
    /// Settles of carved requests (leases on) are committed without an fsync and made durable
    /// at most this long later, or with the next durable commit, or at close. A crash in between
    /// loses their audit events, never their money: the lease row on disk still covers them at
    /// their worst case and is charged in full. Zero: every settle is durable before it returns.
    pub settle_durable_within: std::time::Duration,
    /// Lease budget slices from a cluster store (one budget across every node naming it).
    /// Needs a tokio runtime when the ledger is opened. `lease_max` is then the largest slice
    /// ([`DEFAULT_CLUSTER_SLICE`] if zero).
    pub cluster: Option<ClusterOptions>,
}

/// The largest slice with a cluster store when `lease_max` sets none: $1.
pub const DEFAULT_CLUSTER_SLICE: MicroUsd = MicroUsd(1_000_000);

/// How many grants one request may see carved by others before it gives up (contention).
const MAX_GRANT_ROUNDS: usize = 32;

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
            deferred_linger: std::time::Duration::from_millis(50),
            settle_durable_within: std::time::Duration::from_secs(1),
            cluster: None,
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
    /// A carve may be settled on its caller's task ([`Ledger::settle_now`]): leases on, no
    /// cluster store, carve settles allowed to wait for their fsync.
    inline_settles: bool,
    ledger_id: u64,
    /// Largest slice (µUSD).
    lease_max: u64,
    cluster: Option<Arc<Link>>,
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
        state.cluster = options.cluster.is_some();
        if state.cluster && state.lease_max == 0 {
            state.lease_max = DEFAULT_CLUSTER_SLICE.0;
        }
        let lease_max = state.lease_max;
        let runtime = match &options.cluster {
            Some(c) => Some(tokio::runtime::Handle::try_current().map_err(|_| {
                LedgerError::Cluster(ClusterError::Unreachable {
                    url: c.store.describe(),
                    detail: "the ledger was opened outside a tokio runtime".into(),
                })
            })?),
            None => None,
        };
        let now = options.clock.now();
        let mut fx = Effects::default();
        // The meter (after `store.open`, which locks the ledger: one process per meter).
        let (meter, left) = LeaseMeter::open(
            &meter::path_for(&path),
            ledger_id,
            meter::boot_id().as_deref(),
        );
        let (count, sum, back) = state.recover_open(now, &left, &mut fx);
        state.meter = meter;
        // Recovered cluster slices: the store hears of them as spent (the outbox).
        state.seal_outbox(now, &mut fx);
        let ws = WriteSet::build(&state, &fx, now.checked_sub_signed(options.audit_retention))?;
        store.write(&ws, true)?;
        if count > 0 {
            tracing::warn!(
                path = %path.display(),
                reservations = count,
                charged = %sum,
                handed_back = %back,
                "charged reservations left open by the previous run (open requests at their worst case, unused budget slices handed back where the lease meter vouches for them)"
            );
        }

        let link = options
            .cluster
            .clone()
            .map(|c| Arc::new(Link::new(c, ledger_id)));
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
            deferred_linger: options.deferred_linger,
            durable_within: options.settle_durable_within,
            unsynced_since: None,
            outbox_wake: link.as_ref().map(|l| l.outbox_wake.clone()),
            idle: options
                .cluster
                .as_ref()
                .map_or(std::time::Duration::from_secs(1), |c| c.idle),
            write_set: WriteSet::default(),
            carried_settles: false,
        };
        let handle = std::thread::Builder::new()
            .name("spendguard-ledger".into())
            .spawn(move || committer.run())
            .map_err(|e| LedgerError::Spawn {
                source: Arc::new(e),
            })?;
        if let (Some(link), Some(rt)) = (&link, runtime) {
            rt.spawn(
                link.clone()
                    .run(state.clone(), tx.downgrade(), options.clock.clone()),
            );
        }
        Ok(Ledger {
            tx,
            shared: Arc::new(Shared {
                state,
                reader,
                notifier,
                clock: options.clock,
                path,
                ledger_id,
                leases: lease_max > 0,
                inline_settles: lease_max > 0
                    && link.is_none()
                    && !options.settle_durable_within.is_zero(),
                lease_max,
                cluster: link,
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
        if let Some(link) = &self.shared.cluster {
            return self.reserve_cluster(link, req).await;
        }
        // Fast path: carve from the agent's lease, durable already (no commit, no wait).
        let carved = if self.shared.leases {
            let now = self.shared.clock.now();
            self.state().try_carve(req, now)
        } else {
            Err(req)
        };
        let c = match carved {
            Ok(c) => c,
            Err(req) => {
                return match self.call(|reply| Op::Reserve { req, reply }).await {
                    Ok(r) => r.map(Granted::take),
                    Err(e) => Err(ReserveError::Ledger(e)),
                }
            }
        };
        if c.renew {
            let agent = c.reservation.agent.clone();
            if self.tx.try_send(Op::Renew { agent }).is_err() {
                // Queue full or closed: let a later carve ask again.
                if let Some(l) = self.state().leases.get_mut(&c.reservation.agent) {
                    l.renewing = false;
                }
            }
        }
        Ok(c.reservation)
    }

    /// With a cluster store: carve from this node's slices; lease more from the store when they
    /// do not cover the request; a refusal of the store becomes the audited 402.
    async fn reserve_cluster(
        &self,
        link: &Arc<Link>,
        mut req: ReserveRequest,
    ) -> Result<Reservation, ReserveError> {
        let clock = self.shared.clock.clone();
        for _ in 0..MAX_GRANT_ROUNDS {
            let now = clock.now();
            let carved = self.state().try_carve(req, now);
            match carved {
                Ok(c) => {
                    if c.renew {
                        self.top_up(link, &c.reservation.agent);
                    }
                    return Ok(c.reservation);
                }
                Err(back) => req = back,
            }
            let blocked = {
                let st = self.state();
                let levels = req.agent.ancestors_and_self();
                let eff = st.effective_all(&levels);
                !st.carve_allowed(&levels, &eff, req.amount, now)
            };
            if blocked {
                return self.cluster_deny(req, None).await;
            }
            let want = MicroUsd(self.shared.lease_max.max(req.amount.0));
            let has_room = || {
                self.state()
                    .leases
                    .get(&req.agent)
                    .is_some_and(|l| l.available() >= req.amount.0)
            };
            let got = link
                .acquire(
                    &req.agent,
                    req.amount,
                    want,
                    clock.as_ref(),
                    &self.tx,
                    true,
                    has_room,
                )
                .await;
            match got {
                Ok(None) | Ok(Some(Acquired::Granted)) => continue,
                Ok(Some(Acquired::Refused(r))) => return self.cluster_deny(req, Some(r)).await,
                Err(e) => return Err(ReserveError::Ledger(LedgerError::Cluster(e))),
            }
        }
        Err(ReserveError::Ledger(LedgerError::Cluster(
            ClusterError::Unreachable {
                url: link.opts.store.describe(),
                detail: "every slice leased for this request was carved by others first; retry"
                    .into(),
            },
        )))
    }

    /// A slice runs low: lease more in the background (nobody waits for it).
    fn top_up(&self, link: &Arc<Link>, agent: &AgentName) {
        let me = self.clone();
        let link = link.clone();
        let agent = agent.clone();
        tokio::spawn(async move {
            let want = MicroUsd(me.shared.lease_max);
            let clock = me.shared.clock.clone();
            let r = link
                .acquire(
                    &agent,
                    MicroUsd(1),
                    want,
                    clock.as_ref(),
                    &me.tx,
                    false,
                    || false,
                )
                .await;
            if let Err(e) = r {
                tracing::debug!(agent = %agent, "cluster slice top-up failed: {e}");
            }
            if let Some(l) = me.state().leases.get_mut(&agent) {
                l.renewing = false;
            }
        });
    }

    async fn cluster_deny(
        &self,
        req: ReserveRequest,
        refusal: Option<crate::cluster::Refusal>,
    ) -> Result<Reservation, ReserveError> {
        match self
            .call(|reply| Op::ClusterDeny {
                req,
                refusal,
                reply,
            })
            .await
        {
            Ok(r) => r.map(Granted::take),
            Err(e) => Err(ReserveError::Ledger(e)),
        }
    }

    /// With a cluster store: why this node cannot lease budget now (`/readyz`); `None` if it
    /// can, or without a store.
    pub fn cluster_not_ready(&self) -> Option<String> {
        self.shared.cluster.as_ref().and_then(|l| l.not_ready())
    }

    /// Whether a cluster store is configured.
    pub fn is_clustered(&self) -> bool {
        self.shared.cluster.is_some()
    }

    /// This node's name in the cluster store.
    pub fn cluster_node(&self) -> Option<&str> {
        self.shared.cluster.as_ref().map(|l| l.opts.node.as_str())
    }

    /// What this node still has to tell the cluster store (charges and hand-backs not yet sent).
    pub fn cluster_outbox_len(&self) -> usize {
        self.state().outbox.len()
    }

    /// Sends the outbox to the store now (a graceful stop, after [`Ledger::release_leases`]);
    /// returns whether it is empty afterwards.
    pub async fn push_cluster_outbox(&self) -> bool {
        match &self.shared.cluster {
            Some(link) => {
                link.push(&self.shared.state, &self.tx, self.shared.clock.as_ref())
                    .await
            }
            None => true,
        }
    }

    /// Cluster-wide status: spent, reserved (every node's slices) and remaining from the store,
    /// and what each node holds leased for this agent. `None` without a store.
    pub async fn cluster_status(
        &self,
        agent: &AgentName,
    ) -> Option<Result<ClusterUsage, LedgerError>> {
        let link = self.shared.cluster.as_ref()?;
        Some(self.usage(link, agent).await)
    }

    async fn usage(&self, link: &Link, agent: &AgentName) -> Result<ClusterUsage, LedgerError> {
        let now = self.shared.clock.now();
        let starts = crate::cluster::PeriodStarts::at(now);
        let levels = agent.ancestors_and_self();
        let mut usages = Vec::with_capacity(levels.len());
        for l in &levels {
            usages.push(link.opts.store.usage(l, starts).await?);
        }
        let mut status = self.status(agent);
        let eff = self.state().effective_all(&levels);
        let mut remaining = crate::types::RemainingByPeriod::default();
        for ((lim, u), _) in eff.iter().zip(&usages).zip(&levels) {
            for p in crate::period::Period::ALL {
                let Some(limit) = lim.period(p) else { continue };
                let used = u.spent[p.index()].saturating_add(u.outstanding);
                let rem = MicroUsd(limit.0.saturating_sub(used.0));
                let slot = remaining.slot(p);
                *slot = Some(slot.map_or(rem, |r| r.min(rem)));
            }
        }
        let own = usages.last().cloned().unwrap_or_default();
        for p in crate::period::Period::ALL {
            *status.spent.slot(p) = own.spent[p.index()];
        }
        status.reserved = own.outstanding;
        status.remaining = remaining;
        if status.status == crate::types::AgentState::Active
            && status.remaining.tightest() == MicroUsd::ZERO
        {
            status.status = crate::types::AgentState::Exhausted;
        }
        Ok(ClusterUsage {
            status,
            nodes: own.held.into_iter().collect(),
        })
    }

    /// `spendguard node forget NODE`: releases every slice a (dead) node holds in the store,
    /// audited here; returns how much. Never run it for a node that is still running.
    pub async fn forget_node(&self, node: &str) -> Result<MicroUsd, LedgerError> {
        let Some(link) = &self.shared.cluster else {
            return Ok(MicroUsd::ZERO);
        };
        let store = link.opts.store.clone();
        let mut total = MicroUsd::ZERO;
        for agent in store.held_by(node).await? {
            let before = store.set_held(node, &agent, MicroUsd::ZERO).await?;
            total = total.saturating_add(before);
            if before > MicroUsd::ZERO {
                tracing::warn!(node, agent = %agent, released = %before, "node forget: released a dead node's budget slices");
                let ctx = AuditContext {
                    model: format!("(node forget {node}: released {before})"),
                    ..AuditContext::default()
                };
                self.call(|reply| Op::Audit {
                    agent: agent.clone(),
                    ctx,
                    amount: before,
                    reply,
                })
                .await??;
            }
        }
        store.drop_holder(node).await?;
        Ok(total)
    }

    /// Replaces reservation `id` by the real cost `actual` (charged even if it exceeds the
    /// reservation, with a warning). With no usage report, settle at the reserved amount.
    pub async fn settle(&self, id: u64, actual: MicroUsd) -> Result<Settled, LedgerError> {
        self.call(|reply| Op::Settle { id, actual, reply }).await?
    }

    /// [`Ledger::settle`] on the caller's task, for a carved request: the charge lands in the
    /// in-memory mirror at once and the committer's next batch writes it (no hand-off to the
    /// committer thread and back per request — at 1,000 req/s those wake-ups were most of the
    /// agent's context switches). Safe for the same reason a carve settle may skip its fsync:
    /// until that write, the durable lease row still covers the carve at its worst case, so a
    /// crash charges it in full. `None`: this settle must go through [`Ledger::settle`] (not a
    /// carve, a cluster store, whose outbox needs the settle durable first, or every settle
    /// durable before it returns).
    pub fn settle_now(&self, id: u64, actual: MicroUsd) -> Option<Result<Settled, LedgerError>> {
        if !self.shared.inline_settles || id & crate::lease::CARVE_BIT == 0 {
            return None;
        }
        let now = self.shared.clock.now();
        let (r, wake) = {
            let mut st = self.state();
            let mut fx = std::mem::take(&mut st.deferred);
            let r = st.settle(id, actual, SettleKind::Usage, now, &mut fx);
            st.deferred = fx;
            let wake = !st.deferred_woken && !st.deferred.is_empty();
            st.deferred_woken |= wake;
            (r, wake)
        };
        // One wake-up per batch, not per settle: later settles find the committer already
        // told. With its queue full it is not told; the next settle tries again.
        if wake && self.tx.try_send(Op::Wake).is_err() {
            self.state().deferred_woken = false;
        }
        Some(r)
    }

    /// The roll-out mode of `agent`'s requests (the nearest level that sets one).
    pub fn mode(&self, agent: &AgentName) -> crate::limits::Mode {
        self.state().mode_of(&agent.ancestors_and_self())
    }

    /// Records a request blocked before any reservation (`unknown_model`, `unpriced_request`) in
    /// the audit log, and returns the 402 content for it. In `observe` mode it is audited
    /// `would_block` instead and the denial says `observed`: the caller forwards it.
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

    /// Records an audit event that is not a request (a delegation: `ctx.delegation` says what
    /// was set), charged nothing; durable before it returns.
    pub async fn audit_note(&self, agent: AgentName, ctx: AuditContext) -> Result<(), LedgerError> {
        self.call(|reply| Op::Audit {
            agent,
            ctx,
            amount: MicroUsd::ZERO,
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
        if let (Some(_), Some(Some(zone))) = (&self.shared.cluster, &patch.tz) {
            if !zone.is_utc() {
                return Err(LedgerError::ZoneNeedsLocalLedger {
                    agent: agent.clone(),
                    zone: zone.name().to_string(),
                });
            }
        }
        let name = agent.clone();
        let limits = self
            .call(|reply| Op::SetLimits {
                agent: name,
                patch,
                reply,
            })
            .await??;
        self.publish_policy(agent).await?;
        Ok(limits)
    }

    /// With a cluster store: writes the agent's policy (as this node now has it) to the store,
    /// where every node's grants see it at once and every node's mirror within a poll.
    async fn publish_policy(&self, agent: &AgentName) -> Result<(), LedgerError> {
        let Some(link) = &self.shared.cluster else {
            return Ok(());
        };
        let policy = {
            let st = self.state();
            let e = st.agents.get(agent);
            crate::cluster::Policy {
                limits: e.map(|e| e.limits.clone()).unwrap_or_default(),
                paused: e.is_some_and(|e| e.paused),
            }
        };
        let r = link.opts.store.put_policy(agent, &policy).await;
        if r.is_err() {
            // This node changed already: make its next poll re-read the store, which wins.
            link.resync();
        }
        Ok(r?)
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
        let name = agent.clone();
        self.call(|reply| Op::SetPaused {
            agent: name,
            paused,
            reply,
        })
        .await??;
        self.publish_policy(agent).await
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the ledger has a budget named `agent`: limits, a pause, or spending of its own or
    /// below it (what `agents` lists).
    pub fn knows(&self, agent: &AgentName) -> bool {
        self.state().agents.contains_key(agent)
    }

    /// The agent's own limits (what `limit show` prints); defaults for an unknown agent.
    pub fn limits(&self, agent: &AgentName) -> Limits {
        self.state()
            .agents
            .get(agent)
            .map(|e| e.limits.clone())
            .unwrap_or_default()
    }

    /// The egress policy in force for `agent` (its own, inherited, or the default): memory only.
    pub fn other_hosts(&self, agent: &AgentName) -> crate::limits::OtherHosts {
        self.state().other_hosts(agent)
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

    /// [`Ledger::put_setting`], and with a cluster store also for every other node (within a
    /// poll): prices set by `price set`.
    pub async fn put_shared_setting(
        &self,
        key: &str,
        value: serde_json::Value,
    ) -> Result<(), LedgerError> {
        if let Some(link) = &self.shared.cluster {
            link.opts.store.put_shared(key, Some(&value)).await?;
        }
        self.put_setting(key, value).await
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
