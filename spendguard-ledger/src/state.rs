//! The in-memory mirror of the ledger. Only the committer thread changes it, one batch at a time,
//! so every decision sees every earlier one: there is no window in which two requests can both
//! take the last dollar. Each change is also recorded in [`Effects`], which the committer turns
//! into one redb write transaction.
//!
//! Accounting model:
//! - every level (agent and each ancestor) keeps, per period, the settled spend of its whole
//!   subtree (`Counter`) and the sum of its subtree's open reservations (`outstanding`);
//! - a reservation is allowed only if, at every level and for every period it has a limit for,
//!   `spent + outstanding + amount <= limit`;
//! - a settle removes the reservation and adds the real cost to the counters of the period that is
//!   current *when it settles* (so a request that straddles midnight counts against the new day;
//!   while in flight it counted against both);
//! - counters are tagged with the start of their period and read as zero once it is over, so a
//!   period rolls over without anyone writing anything.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::agent::AgentName;
use crate::cluster::Refusal;
use crate::error::LedgerError;
use crate::lease::{Carve, Grant, Lease, CARVE_BIT};
use crate::limits::{LimitKind, Limits, LimitsPatch, Mode};
use crate::meter::{LeaseMeter, Leftover};
use crate::money::MicroUsd;
use crate::outbox::OutboxEntry;
use crate::period::Period;
use crate::types::{
    AgentState, AgentStatus, AuditContext, AuditEvent, Decision, Denial, DenyReason, Notification,
    PeriodAmounts, PeriodResets, RemainingByPeriod, Reservation, ReserveRequest, Settled,
};
use crate::zone::Zone;

/// The setting that holds a recovery hold ([`crate::types::Hold`]).
pub(crate) const HOLD_SETTING: &str = "spendguard.recovery_hold";

/// Spend of one level in one period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Counter {
    /// Start of the period these numbers belong to (Unix seconds).
    pub start: i64,
    pub spent: u64,
    pub threshold_sent: bool,
    pub exhausted_sent: bool,
}

impl Default for Counter {
    fn default() -> Self {
        Counter {
            start: i64::MIN,
            spent: 0,
            threshold_sent: false,
            exhausted_sent: false,
        }
    }
}

impl Counter {
    /// Whether the counter belongs to the period containing `now`. A counter from a *later*
    /// period (the clock went back) is kept rather than reset.
    fn is_current(&self, p: Period, now: DateTime<Utc>, zone: &Zone) -> bool {
        self.start >= p.start_in(now, zone).timestamp()
    }
}

/// One level of the hierarchy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct AgentEntry {
    pub limits: Limits,
    pub paused: bool,
    pub counters: [Counter; 4],
    /// Sum of the open reservations of this agent and its descendants (not stored: rebuilt from
    /// the reservations table).
    pub outstanding: u64,
}

impl AgentEntry {
    /// Settled spend in the period of `p` containing `now`, in the level's `zone`.
    pub fn spent(&self, p: Period, now: DateTime<Utc>, zone: &Zone) -> u64 {
        let c = &self.counters[p.index()];
        if c.is_current(p, now, zone) {
            c.spent
        } else {
            0
        }
    }

    fn counter_mut(&mut self, p: Period, now: DateTime<Utc>, zone: &Zone) -> &mut Counter {
        let c = &mut self.counters[p.index()];
        if !c.is_current(p, now, zone) {
            *c = Counter {
                start: p.start_in(now, zone).timestamp(),
                ..Counter::default()
            };
        }
        c
    }
}

/// An audit event as stored (amounts in µUSD).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AuditRecord {
    pub id: u64,
    pub time: DateTime<Utc>,
    pub agent: AgentName,
    /// Shared with the carve it records (serialised as the context itself).
    pub ctx: Arc<AuditContext>,
    pub decision: Decision,
    pub reason: Option<DenyReason>,
    pub reservation_id: Option<u64>,
    pub requested: MicroUsd,
    pub reserved: MicroUsd,
    pub final_cost: Option<MicroUsd>,
    pub settled_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub recovered: bool,
}

impl AuditRecord {
    pub fn to_event(&self) -> AuditEvent {
        AuditEvent {
            id: self.id,
            time: self.time,
            agent: self.agent.clone(),
            cgroup: self.ctx.cgroup.clone(),
            host: self.ctx.host.clone(),
            model: self.ctx.model.clone(),
            provider: self.ctx.provider.clone(),
            decision: self.decision,
            reason: self.reason,
            reservation_id: self.reservation_id,
            requested: self.requested,
            reserved: self.reserved,
            final_cost: self.final_cost,
            settled_at: self.settled_at,
            recovered: self.recovered,
            payment: self.ctx.payment.clone(),
            delegation: self.ctx.delegation.clone(),
        }
    }
}

/// A reservation that has not been settled yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OpenReservation {
    pub agent: AgentName,
    pub amount: MicroUsd,
    pub created: DateTime<Utc>,
    pub audit: AuditRecord,
}

/// What a batch changed, so the committer knows what to write and whom to notify.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub agents: BTreeSet<AgentName>,
    /// Cluster outbox entries touched: written if still queued, deleted otherwise.
    pub outbox: BTreeSet<u64>,
    /// Reservation ids touched: written if still open, deleted otherwise.
    pub reservations: BTreeSet<u64>,
    pub audit: BTreeMap<u64, AuditRecord>,
    pub settings: BTreeMap<String, Option<serde_json::Value>>,
    pub notifications: Vec<Notification>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
            && self.outbox.is_empty()
            && self.reservations.is_empty()
            && self.audit.is_empty()
            && self.settings.is_empty()
    }
}

/// How a reservation is being closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SettleKind {
    /// The proxy reported the real cost.
    Usage,
    /// Left open by a previous process: charged at its reserved amount.
    Recovered,
    /// The caller went away before it learnt of the reservation, so nothing was forwarded.
    Cancelled,
}

/// What a batch overwrote, so a failed commit can put the mirror back exactly as the disk has it
/// (first-touch values; `None` = did not exist).
#[derive(Debug, Default)]
pub(crate) struct Undo {
    agents: HashMap<AgentName, Option<AgentEntry>>,
    reservations: HashMap<u64, Option<OpenReservation>>,
    settings: HashMap<String, Option<serde_json::Value>>,
    next_reservation_id: u64,
    next_audit_id: u64,
    /// First-touch leases (only `cap`/`target` are put back: carves made meanwhile stay).
    leases: HashMap<AgentName, Option<Lease>>,
    /// Carves this batch settled.
    pub carves: Vec<(u64, Carve)>,
    /// Cluster outbox: the counter, entries this batch added, entries it removed.
    pub(crate) next_outbox: u64,
    pub(crate) outbox_added: Vec<u64>,
    pub(crate) outbox_removed: Vec<(u64, OutboxEntry)>,
}

#[derive(Debug)]
pub(crate) struct State {
    pub agents: BTreeMap<AgentName, AgentEntry>,
    pub reservations: HashMap<u64, OpenReservation>,
    pub settings: BTreeMap<String, serde_json::Value>,
    pub next_reservation_id: u64,
    pub next_audit_id: u64,
    pub defaults: Limits,
    /// Budget leases by agent (see `lease.rs`); only in memory, their rows are reservations.
    pub leases: BTreeMap<AgentName, Lease>,
    /// Open carves by id (`CARVE_BIT` set); only in memory.
    pub carves: HashMap<u64, Carve>,
    pub next_carve: u64,
    /// Largest slice a lease is granted (µUSD); 0 = no leases, every reservation is exact.
    pub lease_max: u64,
    /// Capacity granted by the batch being decided, carvable once it is on disk.
    pub pending_grants: Vec<Grant>,
    pub(crate) undo: Option<Undo>,
    /// Slices come from a cluster store (see `cluster.rs`): no local grants; limits, pauses and
    /// spend of the store bind, and every charge and hand-back goes to the outbox.
    pub cluster: bool,
    /// What the store still has to hear from this node (durable: the `cluster_outbox` table).
    pub outbox: BTreeMap<u64, OutboxEntry>,
    pub next_outbox: u64,
    /// Charges and hand-backs of the batch being decided, per agent: (charge, release) µUSD.
    pub(crate) cluster_deltas: BTreeMap<AgentName, (u64, u64)>,
    /// What each lease has left, where a crash of the process cannot lose it (meter.rs).
    pub(crate) meter: LeaseMeter,
    /// Changes made outside a batch, on the caller's task ([`crate::Ledger::settle_now`]):
    /// the committer's next batch writes them.
    pub(crate) deferred: Effects,
    /// The committer was woken for [`State::deferred`] and has not taken it yet.
    pub(crate) deferred_woken: bool,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// An instant as RFC 3339 in `zone`'s local time with its offset (`Z` for UTC).
fn local_ts(t: DateTime<Utc>, zone: &Zone) -> String {
    if zone.is_utc() {
        ts(t)
    } else {
        zone.local(t).to_rfc3339_opts(SecondsFormat::Secs, false)
    }
}

fn capitalised(p: Period) -> &'static str {
    match p {
        Period::Daily => "Daily",
        Period::Weekly => "Weekly",
        Period::Monthly => "Monthly",
        Period::Total => "Total",
    }
}

impl State {
    pub fn new(defaults: Limits) -> State {
        State {
            agents: BTreeMap::new(),
            reservations: HashMap::new(),
            settings: BTreeMap::new(),
            next_reservation_id: 1,
            next_audit_id: 1,
            defaults,
            leases: BTreeMap::new(),
            carves: HashMap::new(),
            next_carve: 1,
            lease_max: 0,
            pending_grants: Vec::new(),
            undo: None,
            cluster: false,
            outbox: BTreeMap::new(),
            next_outbox: 1,
            cluster_deltas: BTreeMap::new(),
            meter: LeaseMeter::default(),
            deferred: Effects::default(),
            deferred_woken: false,
        }
    }

    /// Starts recording what the next changes overwrite.
    pub fn begin_batch(&mut self) {
        self.undo = Some(Undo {
            next_reservation_id: self.next_reservation_id,
            next_audit_id: self.next_audit_id,
            next_outbox: self.next_outbox,
            ..Undo::default()
        });
    }

    /// The batch is on disk: forget how to undo it, and make the leases it granted carvable.
    pub fn end_batch(&mut self) {
        self.undo = None;
        self.apply_grants();
    }

    /// The batch's commit failed: put back everything it changed.
    pub fn rollback_batch(&mut self) {
        let Some(u) = self.undo.take() else { return };
        for (k, v) in u.agents {
            match v {
                Some(e) => self.agents.insert(k, e),
                None => self.agents.remove(&k),
            };
        }
        for (k, v) in u.reservations {
            match v {
                Some(r) => self.reservations.insert(k, r),
                None => self.reservations.remove(&k),
            };
        }
        for (k, v) in u.settings {
            match v {
                Some(s) => self.settings.insert(k, s),
                None => self.settings.remove(&k),
            };
        }
        self.next_reservation_id = u.next_reservation_id;
        self.next_audit_id = u.next_audit_id;
        for (agent, before) in u.leases {
            match (before, self.leases.get_mut(&agent)) {
                (Some(b), Some(cur)) if cur.row == b.row => {
                    cur.cap = b.cap;
                    cur.target = b.target;
                }
                (Some(b), _) => {
                    self.leases.insert(agent.clone(), b);
                }
                (None, _) => {
                    if let Some(l) = self.leases.remove(&agent) {
                        self.meter.forget(l.row);
                    }
                }
            }
            // What the failed batch handed back is the lease's again: the row on disk never
            // stopped covering it.
            self.meter_lease(&agent);
        }
        for (id, c) in u.carves {
            self.carves.insert(id, c);
        }
        self.pending_grants.clear();
        self.next_outbox = u.next_outbox;
        for id in u.outbox_added {
            self.outbox.remove(&id);
        }
        for (id, e) in u.outbox_removed {
            self.outbox.insert(id, e);
        }
        self.cluster_deltas.clear();
    }

    /// Mutable access to a lease, remembering its old value for undo.
    pub(crate) fn lease_mut(&mut self, agent: &AgentName) -> Option<&mut Lease> {
        if let Some(u) = &mut self.undo {
            if !u.leases.contains_key(agent) {
                u.leases
                    .insert(agent.clone(), self.leases.get(agent).cloned());
            }
        }
        self.leases.get_mut(agent)
    }

    /// Mutable access to an existing or new agent entry, remembering its old value for undo.
    pub(crate) fn agent_mut(&mut self, name: &AgentName) -> &mut AgentEntry {
        if let Some(u) = &mut self.undo {
            if !u.agents.contains_key(name) {
                u.agents
                    .insert(name.clone(), self.agents.get(name).cloned());
            }
        }
        self.agents.entry(name.clone()).or_default()
    }

    pub(crate) fn remember_reservation(&mut self, id: u64) {
        if let Some(u) = &mut self.undo {
            u.reservations
                .entry(id)
                .or_insert_with(|| self.reservations.get(&id).cloned());
        }
    }

    /// Makes sure every level of `levels` has an entry (new ones are written with the batch).
    pub(crate) fn ensure(&mut self, levels: &[AgentName], fx: &mut Effects) {
        for l in levels {
            if !self.agents.contains_key(l) {
                self.agent_mut(l);
                fx.agents.insert(l.clone());
            }
        }
    }

    /// The limits that bind `level` for a request made by `requester`: the level's own, and for
    /// the requester itself, `default_limits` where it sets nothing.
    fn effective(&self, level: &AgentName, requester: &AgentName) -> Limits {
        let own = self.agents.get(level).map(|e| &e.limits);
        if level == requester {
            own.unwrap_or(&Limits::default())
                .or_defaults(&self.defaults)
        } else {
            own.cloned().unwrap_or_default()
        }
    }

    pub(crate) fn effective_all(&self, levels: &[AgentName]) -> Vec<Limits> {
        let requester = levels.last().expect("ancestors_and_self is never empty");
        levels
            .iter()
            .map(|l| self.effective(l, requester))
            .collect()
    }

    /// Tightest remaining budget per period across `levels`, as shown to people: spent and open
    /// reservations count, unused leased capacity does not (any request that needs it gets it).
    pub(crate) fn remaining(
        &self,
        levels: &[AgentName],
        eff: &[Limits],
        now: DateTime<Utc>,
    ) -> RemainingByPeriod {
        let mut out = RemainingByPeriod::default();
        for (l, lim) in levels.iter().zip(eff) {
            let entry = self.agents.get(l);
            let zone = self.zone_of(l);
            for p in Period::ALL {
                let Some(limit) = lim.period(p) else { continue };
                let (spent, outstanding) = entry.map_or((0, 0), |e| {
                    (
                        e.spent(p, now, &zone),
                        e.outstanding.saturating_sub(self.unused_leased(l)),
                    )
                });
                let rem = MicroUsd(limit.0.saturating_sub(spent.saturating_add(outstanding)));
                let slot = out.slot(p);
                *slot = Some(slot.map_or(rem, |r| r.min(rem)));
            }
        }
        out
    }

    pub(crate) fn next_audit_id(&mut self) -> u64 {
        let id = self.next_audit_id;
        self.next_audit_id += 1;
        id
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn blocked(
        &mut self,
        requester: &AgentName,
        binding: &AgentName,
        reason: DenyReason,
        message: String,
        requested: MicroUsd,
        remaining_by_period: RemainingByPeriod,
        resets_at: Option<DateTime<Utc>>,
        ctx: AuditContext,
        now: DateTime<Utc>,
        fx: &mut Effects,
    ) -> Denial {
        self.audit_blocked(requester, reason, requested, ctx, now, fx);
        Self::denial(
            requester,
            binding,
            reason,
            message,
            requested,
            remaining_by_period,
            resets_at,
        )
    }

    /// The audit event of a request that was blocked (nothing reserved, nothing forwarded).
    fn audit_blocked(
        &mut self,
        requester: &AgentName,
        reason: DenyReason,
        requested: MicroUsd,
        ctx: AuditContext,
        now: DateTime<Utc>,
        fx: &mut Effects,
    ) {
        let id = self.next_audit_id();
        fx.audit.insert(
            id,
            AuditRecord {
                id,
                time: now,
                agent: requester.clone(),
                ctx: Arc::new(ctx),
                decision: Decision::Blocked,
                reason: Some(reason),
                reservation_id: None,
                requested,
                reserved: MicroUsd::ZERO,
                final_cost: None,
                settled_at: None,
                recovered: false,
            },
        );
    }

    /// The 402 content of a refusal (not audited: see [`State::blocked`]).
    pub(crate) fn denial(
        requester: &AgentName,
        binding: &AgentName,
        reason: DenyReason,
        message: String,
        requested: MicroUsd,
        remaining_by_period: RemainingByPeriod,
        resets_at: Option<DateTime<Utc>>,
    ) -> Denial {
        let remaining = match reason {
            DenyReason::AgentPaused | DenyReason::BudgetExpired => MicroUsd::ZERO,
            _ => remaining_by_period.tightest(),
        };
        Denial {
            reason,
            agent: binding.clone(),
            requesting_agent: requester.clone(),
            message,
            requested,
            remaining,
            remaining_by_period,
            resets_at,
            observed: false,
        }
    }

    /// The time zone of `level`'s periods: its own, else the nearest ancestor's, else
    /// `default_limits`', else UTC. (Each level keeps its own: a child in another zone than its
    /// parent resets at its own midnight, the parent at the parent's.)
    pub(crate) fn zone_of(&self, level: &AgentName) -> Zone {
        let name = level.as_str();
        let mut end = name.len();
        loop {
            if let Some(z) = self
                .agents
                .get(&name[..end])
                .and_then(|e| e.limits.tz.as_ref())
            {
                return z.clone();
            }
            match name[..end].rfind('.') {
                Some(i) => end = i,
                None => break,
            }
        }
        self.defaults.tz.clone().unwrap_or_else(Zone::utc)
    }

    /// The roll-out mode of requests made by the last of `levels` (the requester): the nearest
    /// level that sets one, else `default_limits`, else `enforce`.
    pub(crate) fn mode_of(&self, levels: &[AgentName]) -> Mode {
        levels
            .iter()
            .rev()
            .find_map(|l| self.agents.get(l).and_then(|e| e.limits.mode))
            .or(self.defaults.mode)
            .unwrap_or_default()
    }

    /// Decides a reservation. Zero overshoot: this runs single-threaded against the mirror.
    #[expect(
        clippy::result_large_err,
        reason = "a denial carries the whole 402 body; it is moved once, off the hot path"
    )]
    pub fn reserve(
        &mut self,
        req: ReserveRequest,
        now: DateTime<Utc>,
        fx: &mut Effects,
    ) -> Result<Reservation, Denial> {
        self.reserve_or_refuse(req, None, now, fx)
    }

    /// [`State::reserve`]; with a cluster store, the store decided (`refusal`): only the denial
    /// is built here (pause, expiry and per-call limit as the local mirror knows them first).
    ///
    /// In `observe` mode a request that would be refused is reserved all the same (exactly, at
    /// its worst case) and audited `would_block` with the reason; the reservation says so.
    #[expect(
        clippy::result_large_err,
        reason = "a denial carries the whole 402 body; it is moved once, off the hot path"
    )]
    pub(crate) fn reserve_or_refuse(
        &mut self,
        req: ReserveRequest,
        refusal: Option<Refusal>,
        now: DateTime<Utc>,
        fx: &mut Effects,
    ) -> Result<Reservation, Denial> {
        let ReserveRequest {
            agent,
            amount,
            audit,
        } = req;
        let levels = agent.ancestors_and_self();
        self.ensure(&levels, fx);
        let eff = self.effective_all(&levels);
        let mode = self.mode_of(&levels);
        let would_block = match self.refusal(&agent, &levels, &eff, amount, refusal, mode, now, fx)
        {
            None => None,
            Some(d) if mode == Mode::Enforce => {
                self.audit_blocked(&agent, d.reason, amount, audit, now, fx);
                return Err(d);
            }
            Some(d) => {
                tracing::debug!(agent = %agent, reason = %d.reason, "observe mode: request would be blocked, forwarded ({})", d.message);
                Some(d.reason)
            }
        };

        // Allowed (or observed).
        let id = self.next_reservation_id;
        self.next_reservation_id += 1;
        for l in &levels {
            let e = self.agent_mut(l);
            e.outstanding = e.outstanding.saturating_add(amount.0);
        }
        let audit_id = self.next_audit_id();
        let record = AuditRecord {
            id: audit_id,
            time: now,
            agent: agent.clone(),
            ctx: Arc::new(audit),
            decision: if would_block.is_some() {
                Decision::WouldBlock
            } else {
                Decision::Allowed
            },
            reason: would_block,
            reservation_id: Some(id),
            requested: amount,
            reserved: amount,
            final_cost: None,
            settled_at: None,
            recovered: false,
        };
        fx.audit.insert(audit_id, record.clone());
        fx.reservations.insert(id);
        self.remember_reservation(id);
        self.reservations.insert(
            id,
            OpenReservation {
                agent: agent.clone(),
                amount,
                created: now,
                audit: record,
            },
        );
        if would_block.is_none() {
            self.grant_lease(&agent, &levels, &eff, now, fx);
        }
        let remaining = self.remaining(&levels, &eff, now).tightest();
        Ok(Reservation {
            id,
            agent,
            amount,
            remaining,
            would_block,
        })
    }

    /// Why a request of `amount` by the last of `levels` must not go out, as its 402 (not
    /// audited), or `None` if it fits: the recovery hold, a pause, an expiry, a per-call limit,
    /// then the budgets (with a cluster store, `refusal` is the store's verdict on those).
    #[allow(clippy::too_many_arguments)]
    fn refusal(
        &mut self,
        agent: &AgentName,
        levels: &[AgentName],
        eff: &[Limits],
        amount: MicroUsd,
        refusal: Option<Refusal>,
        mode: Mode,
        now: DateTime<Utc>,
        fx: &mut Effects,
    ) -> Option<Denial> {
        let remaining = self.remaining(levels, eff, now);
        let deny = |l: &AgentName, reason, message| {
            Some(Self::denial(
                agent, l, reason, message, amount, remaining, None,
            ))
        };
        if let Some(hold) = self.settings.get(HOLD_SETTING) {
            let hold: Option<crate::types::Hold> = serde_json::from_value(hold.clone()).ok();
            let (since, why) = hold.map_or_else(
                || {
                    (
                        "an unknown time".to_string(),
                        "its ledger was recovered".to_string(),
                    )
                },
                |h| (ts(h.since), h.reason),
            );
            let message = format!(
                "Every budget on this node is on hold since {since} ({why}): what was spent before \
                 is unknown, so nothing is forwarded until an operator confirms the budgets with \
                 `spendguard recover --confirm` (requested: {amount})"
            );
            return deny(agent, DenyReason::AgentPaused, message);
        }
        if let Some(l) = levels.iter().find(|l| self.agents[*l].paused) {
            let message = format!(
                "Agent {l} is paused; `spendguard resume {l}` reopens it (requested: {amount})"
            );
            return deny(l, DenyReason::AgentPaused, message);
        }
        for (l, lim) in levels.iter().zip(eff) {
            if let Some(at) = lim.expires_at.filter(|at| now >= *at) {
                let message = format!(
                    "Budget for agent {l} expired at {} (requested: {amount})",
                    ts(at)
                );
                return deny(l, DenyReason::BudgetExpired, message);
            }
        }
        for (l, lim) in levels.iter().zip(eff) {
            if let Some(pc) = lim.per_call.filter(|pc| amount > *pc) {
                let message =
                    format!("Request of {amount} exceeds the per-call limit of {pc} for agent {l}");
                return deny(l, DenyReason::PerCallLimitExceeded, message);
            }
        }

        let binding = if self.cluster {
            match refusal {
                Some(Refusal::Exhausted {
                    level,
                    period,
                    limit,
                    spent,
                    outstanding,
                }) => Some((
                    limit
                        .0
                        .saturating_sub(spent.0.saturating_add(outstanding.0)),
                    level.min(levels.len() - 1),
                    period,
                    limit.0,
                    spent.0,
                    outstanding.0,
                )),
                other => {
                    return Some(self.store_refused(agent, levels, other, amount, remaining));
                }
            }
        } else {
            let mut binding = self.binding(levels, eff, amount, now);
            // Unused leased capacity is anyone's who needs it: hand it back and decide again.
            if binding.is_some() && self.reclaim_leases(&levels[0], fx) {
                binding = self.binding(levels, eff, amount, now);
            }
            binding
        };
        let (_, i, p, limit, spent, outstanding) = binding?;
        let remaining = self.remaining(levels, eff, now);
        let l = &levels[i];
        let in_flight = if outstanding > 0 {
            format!(
                ", reserved by requests in flight: {}",
                MicroUsd(outstanding)
            )
        } else {
            String::new()
        };
        let zone = self.zone_of(l);
        let resets_at = p.next_reset_in(now, &zone);
        let resets = match resets_at {
            Some(t) => format!("resets {}", local_ts(t, &zone)),
            None => "it never resets".to_string(),
        };
        let message = format!(
            "{} budget of {} for agent {l} exhausted (spent: {}{in_flight}, requested: {amount}); {resets}",
            capitalised(p),
            MicroUsd(limit),
            MicroUsd(spent),
        );
        let pause = eff[i].pause_on_exhaust && mode == Mode::Enforce;
        self.on_exhausted(l, p, pause, now, fx);
        Some(Self::denial(
            agent,
            l,
            DenyReason::exhausted(p),
            message,
            amount,
            remaining,
            resets_at,
        ))
    }
    /// The binding budget: among those `amount` does not fit, the one with least left, as
    /// (left, level index, period, limit, spent, outstanding).
    #[allow(clippy::type_complexity)]
    fn binding(
        &self,
        levels: &[AgentName],
        eff: &[Limits],
        amount: MicroUsd,
        now: DateTime<Utc>,
    ) -> Option<(u64, usize, Period, u64, u64, u64)> {
        let mut binding: Option<(u64, usize, Period, u64, u64, u64)> = None;
        for (i, (l, lim)) in levels.iter().zip(eff).enumerate() {
            let Some(entry) = self.agents.get(l) else {
                continue;
            };
            let zone = self.zone_of(l);
            for p in Period::ALL {
                let Some(limit) = lim.period(p) else { continue };
                let spent = entry.spent(p, now, &zone);
                let used = spent.saturating_add(entry.outstanding);
                let rem = limit.0.saturating_sub(used);
                if amount.0 > rem && binding.is_none_or(|b| rem < b.0) {
                    binding = Some((rem, i, p, limit.0, spent, entry.outstanding));
                }
            }
        }
        binding
    }

    /// A budget of `level` ran out in `p`: notify once per period, pause if asked to.
    fn on_exhausted(
        &mut self,
        level: &AgentName,
        p: Period,
        pause_on_exhaust: bool,
        now: DateTime<Utc>,
        fx: &mut Effects,
    ) {
        let zone = self.zone_of(level);
        let e = self.agent_mut(level);
        let c = e.counter_mut(p, now, &zone);
        if !c.exhausted_sent {
            c.exhausted_sent = true;
            fx.notifications.push(Notification::Exhausted {
                agent: level.clone(),
                period: p,
            });
            fx.agents.insert(level.clone());
        }
        if pause_on_exhaust && !e.paused {
            e.paused = true;
            tracing::warn!(agent = %level, period = %p, "budget exhausted; agent paused (pause_on_exhaust) until resumed");
            fx.notifications.push(Notification::Paused {
                agent: level.clone(),
            });
            fx.agents.insert(level.clone());
        }
    }

    /// Replaces reservation `id` by a charge of `actual`.
    pub fn settle(
        &mut self,
        id: u64,
        actual: MicroUsd,
        kind: SettleKind,
        now: DateTime<Utc>,
        fx: &mut Effects,
    ) -> Result<Settled, LedgerError> {
        if id & CARVE_BIT != 0 {
            return self.settle_carve(id, actual, kind, now, fx);
        }
        self.remember_reservation(id);
        let res = self
            .reservations
            .remove(&id)
            .ok_or(LedgerError::UnknownReservation { id })?;
        fx.reservations.insert(id);
        // A lease row closed whole (recovery): the store stops counting it as held. An observed
        // reservation was never a slice of the store's: only its charge goes there.
        if res.audit.decision != Decision::WouldBlock {
            self.note_release(&res.agent, res.amount.0);
        }
        self.charge(id, res, actual, kind, true, now, fx)
    }

    /// Charges `actual` for the closed reservation `res` at every level (taking its amount off
    /// `outstanding` if `release`), and writes its audit event.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn charge(
        &mut self,
        id: u64,
        res: OpenReservation,
        actual: MicroUsd,
        kind: SettleKind,
        release: bool,
        now: DateTime<Utc>,
        fx: &mut Effects,
    ) -> Result<Settled, LedgerError> {
        if actual > res.amount {
            tracing::warn!(
                reservation = id,
                agent = %res.agent,
                reserved = %res.amount,
                actual = %actual,
                "actual cost exceeds the reservation; charging the actual cost (the worst-case estimate was too low)"
            );
        }
        self.note_charge(&res.agent, actual.0);
        let levels = res.agent.ancestors_and_self();
        self.ensure(&levels, fx);
        let eff = self.effective_all(&levels);
        // An observed request never pauses anyone (the pause would outlast the roll-out).
        let observed = self.mode_of(&levels) == Mode::Observe;
        for (l, lim) in levels.iter().zip(&eff) {
            let mut exhausted = Vec::new();
            let zone = self.zone_of(l);
            let e = self.agent_mut(l);
            if release {
                e.outstanding = e.outstanding.saturating_sub(res.amount.0);
            }
            for p in Period::ALL {
                let c = e.counter_mut(p, now, &zone);
                c.spent = c.spent.saturating_add(actual.0);
                let Some(limit) = lim.period(p) else { continue };
                let pct = u128::from(lim.soft_threshold_pct);
                if !c.threshold_sent && u128::from(c.spent) * 100 >= u128::from(limit.0) * pct {
                    c.threshold_sent = true;
                    fx.notifications.push(Notification::Threshold {
                        agent: l.clone(),
                        period: p,
                        pct: lim.soft_threshold_pct,
                    });
                }
                if c.spent >= limit.0 {
                    exhausted.push(p);
                }
            }
            fx.agents.insert(l.clone());
            for p in exhausted {
                self.on_exhausted(l, p, lim.pause_on_exhaust && !observed, now, fx);
            }
        }
        let mut audit = res.audit;
        audit.final_cost = Some(actual);
        audit.settled_at = Some(now);
        audit.recovered = kind == SettleKind::Recovered;
        fx.audit.insert(audit.id, audit);
        Ok(Settled {
            id,
            agent: res.agent,
            reserved: res.amount,
            charged: actual,
            remaining: self.remaining(&levels, &eff, now).tightest(),
        })
    }

    /// Charges every open reservation at its reserved amount (they were left by a previous
    /// process). Returns how many and how much.
    /// process). A lease row the meter vouches for is charged without its unused part, which
    /// goes back to the budget (and to the cluster store). Returns how many rows, how much was
    /// charged and how much handed back.
    pub fn recover_open(
        &mut self,
        now: DateTime<Utc>,
        left: &Leftover,
        fx: &mut Effects,
    ) -> (usize, MicroUsd, MicroUsd) {
        let mut ids: Vec<u64> = self.reservations.keys().copied().collect();
        ids.sort_unstable();
        let (mut sum, mut back) = (MicroUsd::ZERO, MicroUsd::ZERO);
        for id in &ids {
            let r = &self.reservations[id];
            let unused = left.unused(*id, r.created).map_or(0, |u| u.min(r.amount.0));
            let charge = MicroUsd(r.amount.0 - unused);
            if self
                .settle(*id, charge, SettleKind::Recovered, now, fx)
                .is_ok()
            {
                sum = sum.saturating_add(charge);
                back = back.saturating_add(MicroUsd(unused));
            }
        }
        (ids.len(), sum, back)
    }

    /// Audit event (and 402 content) for a request blocked before any reservation.
    pub fn record_blocked(
        &mut self,
        agent: AgentName,
        reason: DenyReason,
        requested: MicroUsd,
        ctx: AuditContext,
        now: DateTime<Utc>,
        fx: &mut Effects,
    ) -> Denial {
        let levels = agent.ancestors_and_self();
        self.ensure(&levels, fx);
        let eff = self.effective_all(&levels);
        let remaining = self.remaining(&levels, &eff, now);
        let message = match reason {
            DenyReason::UnknownModel => format!(
                "Model '{}' has no price, so the request of agent {agent} cannot be priced and was \
                 blocked; add one with `spendguard price set {}`",
                ctx.model, ctx.model
            ),
            DenyReason::HostNotAllowed => format!(
                "Connection of agent {agent} to {} closed: it is not a provider host nor in \
                 allowed_hosts, and the agent's other_hosts policy is deny",
                if ctx.host.is_empty() {
                    "a host without SNI"
                } else {
                    &ctx.host
                }
            ),
            DenyReason::UnpricedRequest => format!(
                "This {} request of agent {agent} cannot be priced before it runs (batch, realtime \
                 or file upload) and was blocked; add a pricing rule for it to allow it",
                if ctx.provider.is_empty() { "provider" } else { &ctx.provider }
            ),
            other => format!("Request of agent {agent} blocked: {other} (requested: {requested})"),
        };
        if self.mode_of(&levels) == Mode::Observe {
            // Observed: it goes out unpriced, so nothing is reserved; the audit says so.
            let id = self.next_audit_id();
            fx.audit.insert(
                id,
                AuditRecord {
                    id,
                    time: now,
                    agent: agent.clone(),
                    ctx: Arc::new(ctx),
                    decision: Decision::WouldBlock,
                    reason: Some(reason),
                    reservation_id: None,
                    requested,
                    reserved: MicroUsd::ZERO,
                    final_cost: None,
                    settled_at: None,
                    recovered: false,
                },
            );
            let mut d = Self::denial(&agent, &agent, reason, message, requested, remaining, None);
            d.observed = true;
            return d;
        }
        self.blocked(
            &agent, &agent, reason, message, requested, remaining, None, ctx, now, fx,
        )
    }

    /// Changes only what `patch` names, refusing a child limit above an ancestor's (or an
    /// ancestor's below a child's) for the same kind.
    pub fn set_limits(
        &mut self,
        agent: &AgentName,
        patch: &LimitsPatch,
        fx: &mut Effects,
    ) -> Result<Limits, LedgerError> {
        let mut new = self
            .agents
            .get(agent)
            .map(|e| e.limits.clone())
            .unwrap_or_default();
        new.apply(patch);
        if !(1..=100).contains(&new.soft_threshold_pct) {
            return Err(LedgerError::InvalidThreshold {
                agent: agent.clone(),
                pct: new.soft_threshold_pct,
            });
        }
        let levels = agent.ancestors_and_self();
        for kind in LimitKind::ALL {
            let Some(limit) = new.get(kind) else { continue };
            for anc in &levels[..levels.len() - 1] {
                if let Some(a) = self.agents.get(anc).and_then(|e| e.limits.get(kind)) {
                    if limit > a {
                        return Err(LedgerError::LimitAboveAncestor {
                            agent: agent.clone(),
                            kind,
                            limit,
                            ancestor: Box::new(anc.clone()),
                            ancestor_limit: a,
                        });
                    }
                }
            }
            for (d, e) in self.descendants(agent) {
                if let Some(dl) = e.limits.get(kind) {
                    if dl > limit {
                        return Err(LedgerError::LimitBelowDescendant {
                            agent: agent.clone(),
                            kind,
                            limit,
                            descendant: Box::new(d.clone()),
                            descendant_limit: dl,
                        });
                    }
                }
            }
        }
        self.ensure(&levels, fx);
        self.agent_mut(agent).limits = new.clone();
        fx.agents.insert(agent.clone());
        // Slices were sized under the old limits: new ones are granted under the new.
        self.reclaim_leases(agent, fx);
        Ok(new)
    }

    fn descendants<'a>(
        &'a self,
        agent: &AgentName,
    ) -> impl Iterator<Item = (&'a AgentName, &'a AgentEntry)> + 'a {
        let prefix = format!("{agent}.");
        self.agents
            .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
            .take_while(move |(k, _)| k.as_str().starts_with(&prefix))
    }

    pub fn set_paused(&mut self, agent: &AgentName, paused: bool, fx: &mut Effects) {
        let levels = agent.ancestors_and_self();
        self.ensure(&levels, fx);
        if paused {
            self.reclaim_leases(agent, fx);
        }
        let e = self.agent_mut(agent);
        if e.paused != paused {
            e.paused = paused;
            fx.agents.insert(agent.clone());
            if paused {
                fx.notifications.push(Notification::Paused {
                    agent: agent.clone(),
                });
            }
        }
    }

    pub fn put_setting(&mut self, key: String, value: Option<serde_json::Value>, fx: &mut Effects) {
        if let Some(u) = &mut self.undo {
            if !u.settings.contains_key(&key) {
                u.settings
                    .insert(key.clone(), self.settings.get(&key).cloned());
            }
        }
        match &value {
            Some(v) => {
                self.settings.insert(key.clone(), v.clone());
            }
            None => {
                self.settings.remove(&key);
            }
        }
        fx.settings.insert(key, value);
    }

    /// The egress policy of `agent`: its own, else the nearest ancestor's, else `default_limits`',
    /// else allow.
    pub fn other_hosts(&self, agent: &AgentName) -> crate::limits::OtherHosts {
        agent
            .ancestors_and_self()
            .iter()
            .rev()
            .find_map(|l| self.agents.get(l).and_then(|e| e.limits.other_hosts))
            .or(self.defaults.other_hosts)
            .unwrap_or_default()
    }

    pub fn status(&self, agent: &AgentName, now: DateTime<Utc>) -> AgentStatus {
        let levels = agent.ancestors_and_self();
        let eff = self.effective_all(&levels);
        let remaining = self.remaining(&levels, &eff, now);
        let paused_by = levels
            .iter()
            .find(|l| self.agents.get(*l).is_some_and(|e| e.paused))
            .cloned();
        let expired = eff.iter().any(|l| l.expires_at.is_some_and(|at| now >= at));
        let entry = self.agents.get(agent);
        let zone = self.zone_of(agent);
        let mut spent = PeriodAmounts::default();
        for p in Period::ALL {
            *spent.slot(p) = MicroUsd(entry.map_or(0, |e| e.spent(p, now, &zone)));
        }
        let held = self.settings.contains_key(HOLD_SETTING);
        let status = if paused_by.is_some() || held {
            AgentState::Paused
        } else if expired {
            AgentState::Expired
        } else if remaining.tightest() == MicroUsd::ZERO {
            AgentState::Exhausted
        } else {
            AgentState::Active
        };
        AgentStatus {
            agent: agent.clone(),
            status,
            // Status is also served to the workload itself (no credentials): a webhook URL may
            // carry a secret token, so it is left out here (`Ledger::limits` has it).
            limits: Limits {
                webhook: None,
                ..eff.last().cloned().unwrap_or_default()
            },
            spent,
            reserved: MicroUsd(entry.map_or(0, |e| {
                e.outstanding.saturating_sub(self.unused_leased(agent))
            })),
            remaining,
            period_resets: PeriodResets {
                daily: Period::Daily
                    .next_reset_in(now, &zone)
                    .map(|t| zone.local(t)),
                weekly: Period::Weekly
                    .next_reset_in(now, &zone)
                    .map(|t| zone.local(t)),
                monthly: Period::Monthly
                    .next_reset_in(now, &zone)
                    .map(|t| zone.local(t)),
            },
            paused: paused_by.is_some() || held,
            paused_by,
            other_hosts: self.other_hosts(agent),
            mode: self.mode_of(&levels),
            tz: zone,
        }
    }
}
