//! Group commit. One thread owns every redb write transaction. Callers queue operations with a
//! oneshot reply; the committer takes everything queued (up to `max_batch`), decides each one in
//! order against the in-memory mirror, writes the whole batch in ONE durable transaction, and
//! only then answers. While it waits on the disk, new requests queue up for the next batch, so
//! the cost of an fsync is shared by everyone who arrived during the previous one.
//!
//! Carve settles are the exception to "durable before answering": a batch that holds nothing but
//! settles of carves (requests cut from a budget lease) is committed with `Durability::None`, and
//! made durable by the next durable commit or at the latest [`Committer::durable_within`] later
//! (or at close). This never loses a charge: until a durable commit shrinks it, the lease row on
//! disk still covers each such carve at its worst case, so a crash in between charges the whole
//! row (lease.rs) — the settle's own audit event is what a crash can lose, never its money.
//!
//! Fail closed: if the commit fails, every operation of the batch gets the error, and the mirror
//! is rebuilt from the database (reopened, since redb refuses further work after an I/O error),
//! so memory never claims more than the disk holds.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, oneshot};

use crate::agent::AgentName;
use crate::clock::Clock;
use crate::error::{LedgerError, ReserveError};
use crate::limits::{Limits, LimitsPatch};
use crate::money::MicroUsd;
use crate::notify::Notifier;
use crate::state::{Effects, SettleKind, State};
use crate::store::{Store, WriteSet};
use crate::types::{AuditContext, Denial, DenyReason, Reservation, ReserveRequest, Settled};

type Reply<T> = oneshot::Sender<Result<T, LedgerError>>;

#[derive(Debug)]
pub(crate) enum Op {
    Reserve {
        req: ReserveRequest,
        reply: oneshot::Sender<Result<Granted, ReserveError>>,
    },
    Settle {
        id: u64,
        actual: MicroUsd,
        reply: Reply<Settled>,
    },
    Blocked {
        agent: AgentName,
        reason: DenyReason,
        requested: MicroUsd,
        ctx: AuditContext,
        reply: Reply<Denial>,
    },
    SetLimits {
        agent: AgentName,
        patch: LimitsPatch,
        reply: Reply<Limits>,
    },
    SetPaused {
        agent: AgentName,
        paused: bool,
        reply: Reply<()>,
    },
    Setting {
        key: String,
        value: Option<serde_json::Value>,
        reply: Reply<()>,
    },
    /// A lease ran low on the request path: grant it more (nobody waits for this).
    Renew { agent: AgentName },
    /// Answered once everything queued before it is on disk.
    Flush { reply: Reply<()> },
    /// Stop leasing; hand back every unused slice (a graceful stop).
    ReleaseLeases { reply: Reply<MicroUsd> },
    /// Run a batch: a reservation was orphaned (see [`Granted`]), or settles made on their
    /// callers' tasks wait in `State::deferred`.
    Wake,
    /// The cluster store granted this node a slice: record it (durably) before carving from it.
    ClusterGrant {
        agent: AgentName,
        amount: MicroUsd,
        reply: Reply<()>,
    },
    /// The cluster store refused (or a local check blocks): the audited 402 (in `observe`
    /// mode an exact reservation, audited `would_block`).
    ClusterDeny {
        req: ReserveRequest,
        refusal: Option<crate::cluster::Refusal>,
        reply: oneshot::Sender<Result<Granted, ReserveError>>,
    },
    /// The cluster store has these outbox entries.
    OutboxDone { ids: Vec<u64> },
    /// The cluster store's policies and shared settings.
    SyncPolicies {
        policies: Vec<(AgentName, crate::cluster::Policy)>,
        shared: Vec<(String, serde_json::Value)>,
        reply: Reply<()>,
    },
    /// Hand back these agents' cluster slices if they are still idle.
    ReclaimIdle { agents: Vec<AgentName> },
    /// An operator action on the budget, for the audit log (`node forget`).
    Audit {
        agent: AgentName,
        ctx: AuditContext,
        amount: MicroUsd,
        reply: Reply<()>,
    },
}

impl Op {
    /// Someone waits for this answer before a request can go out (or an operator waits for it).
    /// Settles and lease renewals are not: the client already has its response.
    fn urgent(&self) -> bool {
        !matches!(
            self,
            Op::Settle { .. }
                | Op::Renew { .. }
                | Op::Wake
                | Op::OutboxDone { .. }
                | Op::ReclaimIdle { .. }
        )
    }

    fn fail(self, e: &LedgerError) {
        // A caller that went away does not need the answer.
        let _ = match self {
            Op::Reserve { reply, .. } => reply.send(Err(e.clone().into())).map_err(drop),
            Op::Settle { reply, .. } => reply.send(Err(e.clone())).map_err(drop),
            Op::Blocked { reply, .. } => reply.send(Err(e.clone())).map_err(drop),
            Op::SetLimits { reply, .. } => reply.send(Err(e.clone())).map_err(drop),
            Op::SetPaused { reply, .. } => reply.send(Err(e.clone())).map_err(drop),
            Op::Setting { reply, .. } => reply.send(Err(e.clone())).map_err(drop),
            Op::Renew { .. } | Op::Wake | Op::OutboxDone { .. } | Op::ReclaimIdle { .. } => Ok(()),
            Op::ClusterGrant { reply, .. } => reply.send(Err(e.clone())).map_err(drop),
            Op::ClusterDeny { reply, .. } => reply.send(Err(e.clone().into())).map_err(drop),
            Op::SyncPolicies { reply, .. } => reply.send(Err(e.clone())).map_err(drop),
            Op::Audit { reply, .. } => reply.send(Err(e.clone())).map_err(drop),
            Op::Flush { reply } => reply.send(Err(e.clone())).map_err(drop),
            Op::ReleaseLeases { reply } => reply.send(Err(e.clone())).map_err(drop),
        };
    }
}

/// Reservations committed for callers that went away, released (as `Cancelled`: nothing can
/// have been forwarded) in the committer's next batch.
pub(crate) type Orphans = Arc<Mutex<Vec<u64>>>;

/// A committed reservation on its way to its caller. A caller can go away at any moment (hyper
/// drops a request's future when its client disconnects): before the answer is sent (the send
/// fails and hands this back), or after it was sent but before it was read (it is dropped with
/// the channel). Either way this is dropped untaken, and the drop queues the reservation for
/// release; without it, the reservation stayed open until the next start charged it in full.
#[derive(Debug)]
pub(crate) struct Granted {
    reservation: Option<Reservation>,
    orphans: Orphans,
    wake: mpsc::WeakSender<Op>,
}

impl Granted {
    /// The reservation was never committed (its batch failed): dropping must not release it.
    fn forget(mut self) {
        self.reservation = None;
    }

    pub fn take(mut self) -> Reservation {
        // Always `Some` until taken or dropped, and both consume `self`.
        self.reservation
            .take()
            .unwrap_or_else(|| unreachable!("a Granted is taken once"))
    }
}

impl Drop for Granted {
    fn drop(&mut self) {
        let Some(r) = self.reservation.take() else {
            return;
        };
        self.orphans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(r.id);
        // Nobody may queue anything for a while: make the committer run a batch now. A full
        // queue means a batch is coming anyway; a closed one, that the process is stopping
        // (the next start charges the reservation: never a lost charge).
        if let Some(tx) = self.wake.upgrade() {
            let _ = tx.try_send(Op::Wake);
        }
    }
}

/// An answer decided in memory, sent once the batch's commit is known.
enum Pending {
    Reserve(
        oneshot::Sender<Result<Granted, ReserveError>>,
        Result<Granted, ReserveError>,
    ),
    Settle(Reply<Settled>, Result<Settled, LedgerError>),
    Denial(Reply<Denial>, Result<Denial, LedgerError>),
    Limits(Reply<Limits>, Result<Limits, LedgerError>),
    Unit(Reply<()>, Result<(), LedgerError>),
    Amount(Reply<MicroUsd>, Result<MicroUsd, LedgerError>),
    /// Nobody waits (a lease renewal).
    Nothing,
}

impl Pending {
    /// Answers the caller.
    fn finish(self, commit: Result<(), &LedgerError>) {
        fn pick<T>(
            commit: Result<(), &LedgerError>,
            r: Result<T, LedgerError>,
        ) -> Result<T, LedgerError> {
            match commit {
                Ok(()) => r,
                Err(e) => Err(e.clone()),
            }
        }
        match self {
            Pending::Reserve(reply, r) => {
                let r = match commit {
                    Ok(()) => r,
                    Err(e) => {
                        // Not committed: nothing to release.
                        if let Ok(g) = r {
                            g.forget();
                        }
                        Err(ReserveError::Ledger(e.clone()))
                    }
                };
                // A caller that went away drops the answer, and the reservation with it.
                let _ = reply.send(r);
            }
            Pending::Settle(reply, r) => {
                let _ = reply.send(pick(commit, r));
            }
            Pending::Denial(reply, r) => {
                let _ = reply.send(pick(commit, r));
            }
            Pending::Limits(reply, r) => {
                let _ = reply.send(pick(commit, r));
            }
            Pending::Unit(reply, r) => {
                let _ = reply.send(pick(commit, r));
            }
            Pending::Amount(reply, r) => {
                let _ = reply.send(pick(commit, r));
            }
            Pending::Nothing => {}
        }
    }
}

pub(crate) struct Committer {
    pub rx: mpsc::Receiver<Op>,
    pub store: Store,
    pub state: Arc<Mutex<State>>,
    pub notifier: Arc<Notifier>,
    pub clock: Arc<dyn Clock>,
    pub audit_retention: chrono::Duration,
    pub max_batch: usize,
    /// The last commit failed and the mirror could not be rebuilt yet.
    pub broken: bool,
    /// Reservations committed for callers that had gone away: released in the next batch.
    pub orphans: Orphans,
    /// Handed to every [`Granted`], so a drop can wake this thread (weak: it must not keep the
    /// queue open once every `Ledger` handle is gone).
    pub wake: mpsc::WeakSender<Op>,
    /// How long a batch of only settles and renewals waits for more before its commit.
    pub linger: std::time::Duration,
    /// How long a batch that only writes settles made on callers' tasks waits for more.
    pub deferred_linger: std::time::Duration,
    /// Carve settles committed without an fsync are made durable at most this long after the
    /// first of them (zero: every commit is durable).
    pub durable_within: std::time::Duration,
    /// Since when commits without an fsync are waiting for a durable one.
    pub unsynced_since: Option<std::time::Instant>,
    /// Woken after a commit that queued cluster outbox entries.
    pub outbox_wake: Option<Arc<tokio::sync::Notify>>,
    /// How long a cluster slice may sit unused.
    pub idle: std::time::Duration,
    /// The last batch's write set: its buffers are reused by the next one.
    pub write_set: WriteSet,
    /// The batch being written carries settles made outside it (`State::deferred`), which its
    /// undo log does not cover: if it fails, they are lost from memory and the disk.
    pub carried_settles: bool,
}

impl Committer {
    pub fn run(mut self) {
        // A current-thread runtime on this thread, only to wait on the queue with a deadline
        // (the linger): the thread sleeps until an operation or the deadline arrives, where a
        // polling loop woke it thousands of times a second under load on a 2-vCPU node.
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => Some(rt),
            Err(e) => {
                tracing::warn!(
                    "ledger committer: no timer ({e}); settles are committed without lingering"
                );
                None
            }
        };
        if rt.is_none() {
            // No timer to bound how long a commit may stay without an fsync: all are durable.
            self.durable_within = std::time::Duration::ZERO;
        }
        let mut batch = Vec::with_capacity(self.max_batch);
        while let Some(op) = self.next_op(rt.as_ref()) {
            batch.push(op);
            loop {
                while batch.len() < self.max_batch {
                    match self.rx.try_recv() {
                        Ok(op) => batch.push(op),
                        Err(_) => break,
                    }
                }
                if let Some(rt) = &rt {
                    if !batch.iter().any(Op::urgent) {
                        self.linger(rt, &mut batch);
                    }
                }
                self.process(&mut batch);
                if self.orphans_waiting() == 0 || self.broken {
                    break;
                }
            }
        }
        // Every sender is gone, but settles made on callers' tasks may still wait for their
        // batch, and lazy commits for their fsync: both durable before the store closes.
        if !self.lock_state().deferred.is_empty() {
            self.process(&mut Vec::new());
        }
        if self.unsynced_since.is_some() {
            self.persist();
        }
        self.store.close();
        tracing::debug!(path = %self.store.path().display(), "ledger committer stopped");
    }

    /// The next operation; while commits without an fsync wait, at most until they are due to
    /// be made durable (which this then does).
    fn next_op(&mut self, rt: Option<&tokio::runtime::Runtime>) -> Option<Op> {
        if let (Some(since), Some(rt)) = (self.unsynced_since, rt) {
            let until = tokio::time::Instant::from_std(since + self.durable_within);
            // The timer is created inside the runtime (it needs its time driver).
            let rx = &mut self.rx;
            match rt.block_on(async { tokio::time::timeout_at(until, rx.recv()).await }) {
                Ok(op) => return op,
                Err(_) => self.persist(),
            }
        }
        self.rx.blocking_recv()
    }

    /// Makes the commits without an fsync durable (an empty durable commit).
    fn persist(&mut self) {
        match self.store.persist() {
            Ok(()) => self.unsynced_since = None,
            // Left waiting: retried with the next batch (whose commit fails the same way and
            // takes the failure path) or the next timer.
            Err(e) => tracing::error!(error = %e, "ledger: making settles durable failed"),
        }
    }

    /// Whether `batch` (with no orphans to release) may be committed without an fsync: nothing in
    /// it but settles of carves, whose worst cases the durable lease rows still cover.
    fn lazy(&self, batch: &[Op], orphans: &[u64]) -> bool {
        // With a cluster store a settle queues an outbox entry that is pushed to the store once
        // committed: it must be durable first, or a crash could lose the node's record of a
        // charge the store already holds.
        self.outbox_wake.is_none()
            && !self.durable_within.is_zero()
            && orphans.is_empty()
            && batch.iter().all(|op| match op {
                Op::Settle { id, .. } => id & crate::lease::CARVE_BIT != 0,
                Op::Wake => true,
                _ => false,
            })
    }

    /// Lets a batch of settles wait up to `linger` for company, so one commit (and one fsync)
    /// carries many: at 1,000 requests/s a commit per settle was ~40% of the agent's CPU. It
    /// stops waiting as soon as an urgent operation (a reservation, a limit change) arrives.
    /// A batch woken only to write settles made on callers' tasks waits up to
    /// `deferred_linger` instead, until anything else arrives.
    fn linger(&mut self, rt: &tokio::runtime::Runtime, batch: &mut Vec<Op>) {
        let now = tokio::time::Instant::now();
        // (A wake-up also brings orphans to release: those are budget held back, not waiting.)
        let only_deferred =
            batch.iter().all(|op| matches!(op, Op::Wake)) && self.orphans_waiting() == 0;
        let mut until = now
            + if only_deferred {
                self.deferred_linger.max(self.linger)
            } else {
                self.linger
            };
        rt.block_on(async {
            while batch.len() < self.max_batch {
                match tokio::time::timeout_at(until, self.rx.recv()).await {
                    Ok(Some(op)) => {
                        let urgent = op.urgent();
                        if !matches!(op, Op::Wake) || self.orphans_waiting() > 0 {
                            until = until.min(tokio::time::Instant::now() + self.linger);
                        }
                        batch.push(op);
                        if urgent {
                            return;
                        }
                    }
                    // The deadline, or every sender is gone.
                    Err(_) | Ok(None) => return,
                }
            }
        });
    }

    fn orphans_waiting(&self) -> usize {
        self.orphans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn take_orphans(&self) -> Vec<u64> {
        std::mem::take(&mut *self.orphans.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reopens the database and rebuilds the mirror from it.
    fn rebuild(&mut self) -> Result<(), LedgerError> {
        self.store.close();
        self.store.open()?;
        let defaults = self.lock_state().defaults.clone();
        let mut fresh = self.store.load(defaults)?;
        let mut st = self.lock_state();
        // Settles the disk may not hold: committed without an fsync, carried by the failed
        // batch, or made on their callers' tasks since.
        let unwritten =
            self.unsynced_since.is_some() || self.carried_settles || !st.deferred.is_empty();
        if unwritten {
            // Settles committed without an fsync may be gone from the disk, while their lease
            // rows there still cover them at their worst case. Carrying the leases over would
            // later hand those rows back as unused (a lost charge): leave them open reservations
            // instead, charged in full at the next start, and lease afresh.
            fresh.lease_max = st.lease_max;
            fresh.next_carve = st.next_carve;
        } else {
            fresh.adopt_leases(&mut st);
        }
        *st = fresh;
        drop(st);
        self.broken = false;
        self.unsynced_since = None;
        self.carried_settles = false;
        tracing::info!(path = %self.store.path().display(), "ledger reopened; in-memory state matches the disk again");
        Ok(())
    }

    fn process(&mut self, batch: &mut Vec<Op>) {
        if self.broken {
            if let Err(e) = self.rebuild() {
                tracing::error!(error = %e, "ledger still unavailable; refusing {} operations", batch.len());
                for op in batch.drain(..) {
                    op.fail(&e);
                }
                return;
            }
        }
        let now = self.clock.now();
        let orphans = self.take_orphans();
        let lazy = self.lazy(batch, &orphans);
        let (mut fx, carried);
        let mut pending = Vec::with_capacity(batch.len());
        // The previous batch's buffers, refilled (put back below).
        let mut ws = std::mem::take(&mut self.write_set);
        let write_set = {
            let mut st = self.lock_state();
            // Settles made on their callers' tasks since the last batch are written with this
            // one (they are carve settles: lazy-compatible, see `lazy`).
            fx = std::mem::take(&mut st.deferred);
            st.deferred_woken = false;
            carried = !fx.is_empty();
            st.begin_batch();
            for id in &orphans {
                if st
                    .settle(*id, MicroUsd::ZERO, SettleKind::Cancelled, now, &mut fx)
                    .is_ok()
                {
                    tracing::debug!(
                        reservation = id,
                        "caller went away before learning of its reservation; released"
                    );
                }
            }
            let grant = |reservation| Granted {
                reservation: Some(reservation),
                orphans: self.orphans.clone(),
                wake: self.wake.clone(),
            };
            for op in batch.drain(..) {
                pending.push(apply(&mut st, op, now, &mut fx, &grant, self.idle));
            }
            st.seal_outbox(now, &mut fx);
            if fx.is_empty() {
                None
            } else {
                let cutoff = now.checked_sub_signed(self.audit_retention);
                Some(ws.rebuild(&st, &fx, cutoff))
            }
        };
        self.carried_settles = carried;
        let wrote_lazily = lazy && matches!(write_set, Some(Ok(_)));
        let result = match write_set {
            // A flush (or any durable operation) also makes earlier lazy settles durable.
            None if !lazy && self.unsynced_since.is_some() => self.store.persist(),
            None => Ok(()),
            Some(Ok(())) => self.store.write(&ws, !lazy),
            Some(Err(e)) => Err(e),
        };
        self.write_set = ws;
        match result {
            Ok(()) => {
                if !lazy {
                    self.unsynced_since = None;
                } else if wrote_lazily && self.unsynced_since.is_none() {
                    self.unsynced_since = Some(std::time::Instant::now());
                }
                self.lock_state().end_batch();
                if let Some(w) = &self.outbox_wake {
                    if !fx.outbox.is_empty() {
                        w.notify_one();
                    }
                }
                // Before the answers, so a caller sees the notifications its call caused.
                self.notifier.send(fx.notifications);
                for p in pending {
                    p.finish(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, operations = pending.len(), "ledger commit failed; refusing the whole batch and rolling back");
                self.lock_state().rollback_batch();
                // redb refuses further work after an I/O error: reopen it, and reload the mirror
                // from it, now or (if the disk is still failing) before the next batch.
                self.broken = true;
                if let Err(e2) = self.rebuild() {
                    tracing::error!(error = %e2, "cannot reopen the ledger after a failed commit");
                }
                // Released with a later batch (they are still open on disk).
                self.orphans
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(orphans);
                for p in pending {
                    p.finish(Err(&e));
                }
            }
        }
    }
}

fn apply(
    st: &mut State,
    op: Op,
    now: chrono::DateTime<chrono::Utc>,
    fx: &mut Effects,
    grant: &impl Fn(Reservation) -> Granted,
    idle: std::time::Duration,
) -> Pending {
    match op {
        Op::ClusterGrant {
            agent,
            amount,
            reply,
        } => {
            st.record_cluster_grant(&agent, amount, now, fx);
            Pending::Unit(reply, Ok(()))
        }
        Op::ClusterDeny {
            req,
            refusal,
            reply,
        } => {
            let r = st.cluster_deny(req, refusal, now, fx);
            Pending::Reserve(reply, r.map(grant).map_err(ReserveError::Denied))
        }
        Op::OutboxDone { ids } => {
            st.outbox_done(&ids, fx);
            Pending::Nothing
        }
        Op::SyncPolicies {
            policies,
            shared,
            reply,
        } => {
            st.sync_policies(policies, shared, fx);
            Pending::Unit(reply, Ok(()))
        }
        Op::Audit {
            agent,
            ctx,
            amount,
            reply,
        } => {
            st.audit_note(agent, ctx, amount, now, fx);
            Pending::Unit(reply, Ok(()))
        }
        Op::ReclaimIdle { agents } => {
            st.reclaim_idle(&agents, now, idle, fx);
            Pending::Nothing
        }
        Op::Reserve { req, reply } => {
            // Capacity may have been granted since the caller found none.
            let req = match st.try_carve(req, now) {
                Ok(c) => return Pending::Reserve(reply, Ok(grant(c.reservation))),
                Err(req) => req,
            };
            Pending::Reserve(
                reply,
                st.reserve(req, now, fx)
                    .map(grant)
                    .map_err(ReserveError::Denied),
            )
        }
        Op::Wake => Pending::Nothing,
        Op::Renew { agent } => {
            st.renew_lease(&agent, now, fx);
            Pending::Nothing
        }
        Op::Flush { reply } => Pending::Unit(reply, Ok(())),
        Op::ReleaseLeases { reply } => Pending::Amount(reply, Ok(st.release_leases(fx))),
        Op::Settle { id, actual, reply } => {
            Pending::Settle(reply, st.settle(id, actual, SettleKind::Usage, now, fx))
        }
        Op::Blocked {
            agent,
            reason,
            requested,
            ctx,
            reply,
        } => Pending::Denial(
            reply,
            Ok(st.record_blocked(agent, reason, requested, ctx, now, fx)),
        ),
        Op::SetLimits {
            agent,
            patch,
            reply,
        } => Pending::Limits(reply, st.set_limits(&agent, &patch, fx)),
        Op::SetPaused {
            agent,
            paused,
            reply,
        } => {
            st.set_paused(&agent, paused, fx);
            Pending::Unit(reply, Ok(()))
        }
        Op::Setting { key, value, reply } => {
            st.put_setting(key, value, fx);
            Pending::Unit(reply, Ok(()))
        }
    }
}
