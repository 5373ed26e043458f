//! Budget leases: durable slices of an agent's budget, carved in memory.
//!
//! An exact reservation costs one durable commit (an fsync) on the request path. A lease takes
//! that commit off it: the committer durably reserves a *slice* of the agent's budget at every
//! level (one open reservation row, the lease row), and requests are then carved from the slice
//! under the state lock, in microseconds, with no write at all. A carve is settled like any
//! reservation (durably, in a batch, off the request path); its worst case leaves the lease row in
//! the same commit that writes its charge. A new slice is asked for before the old one runs out.
//!
//! Why this never loses a charge: at every moment the lease row on disk covers every open carve
//! plus the slice's unused part (`row = (cap - carved) + open carves`, see [`Lease`]). After a
//! crash the row is an open reservation like any other: recovery charges it minus the unused part
//! the lease meter vouches for (meter.rs; a process crash on the same boot), else in full — the
//! open carves at (at least) their worst case, the over-charge bounded by the unused part of one
//! slice per agent, which INTERFACE.md allows ("may count the whole unused slice").
//!
//! Why this never overshoots: a slice is granted only where it fits every limit at every level
//! (it counts as outstanding there, like a reservation), and a carve never exceeds the slice.
//! Slices shrink as a budget nears its end (at most an eighth of what is left), so the last
//! dollars are still reserved exactly; when a request does not fit, unused slices of every agent
//! sharing a level with it are handed back before it is refused, so a slice held by one agent
//! never makes another one's request fail. Pausing an agent or changing its limits hands its
//! slices (and its descendants') back too, so both take effect at once.
//!
//! Concurrency: carves run on the request tasks, under the same mutex as the committer's batch
//! decisions, but *while the committer writes* a batch to disk. So a carve only ever touches
//! `carved` and the carve table, and the committer never undoes those: capacity it grants becomes
//! carvable only once its commit succeeded ([`State::end_batch`]), and what it takes away
//! (a shrink) is taken away at once and merely put back if its commit fails.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::agent::AgentName;
use crate::error::LedgerError;
use crate::limits::Limits;
use crate::money::MicroUsd;
use crate::period::Period;
use crate::state::{AuditRecord, Effects, OpenReservation, SettleKind, State};
use crate::types::{AuditContext, Decision, Reservation, ReserveRequest, Settled};

/// Carve ids live apart from reservation ids: the top bit set. Reservation ids come from a
/// counter the committer may roll back; carve ids never are.
pub(crate) const CARVE_BIT: u64 = 1 << 63;

/// A slice never exceeds this share of the tightest remaining budget (1/8): the over-charge a
/// crash can cause shrinks with the budget, and the last dollars are reserved exactly.
const SLICE_DIVISOR: u64 = 8;

/// What the audit log shows for a lease row charged after a crash.
pub(crate) const LEASE_MODEL: &str = "(budget lease)";

/// One agent's slice.
///
/// Invariant (between batches): `row amount = (cap - carved) + open carves`, where the row is
/// the lease's open reservation. `cap` only grows at [`State::end_batch`], after the commit that
/// grew the row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Lease {
    /// Id of the lease row in the reservations table.
    pub row: u64,
    /// Everything ever granted to this lease, minus what was handed back (µUSD).
    pub cap: u64,
    /// Everything ever carved from it (µUSD).
    pub carved: u64,
    /// The size of the last grant: a new one is asked for when less than half of it is left.
    pub target: u64,
    /// A renewal is queued; do not queue another.
    pub renewing: bool,
    /// Last carve or grant (a cluster slice unused for a while is handed back).
    pub last_used: Option<DateTime<Utc>>,
}

impl Lease {
    pub fn available(&self) -> u64 {
        self.cap.saturating_sub(self.carved)
    }

    fn wants_more(&self) -> bool {
        self.available() < self.target / 2
    }
}

/// A request carved from a lease, not settled yet. Only in memory: the lease row covers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Carve {
    pub agent: AgentName,
    pub amount: MicroUsd,
    pub created: DateTime<Utc>,
    /// Shared with the undo log and the audit record the settle writes (a clone is a count).
    pub ctx: Arc<AuditContext>,
    pub row: u64,
}

/// Capacity a batch granted, made carvable once the batch is on disk.
#[derive(Clone, Debug)]
pub(crate) struct Grant {
    pub agent: AgentName,
    pub row: u64,
    pub amount: u64,
    pub at: DateTime<Utc>,
}

/// A carve made on the request path.
pub(crate) struct Carved {
    pub reservation: Reservation,
    /// The lease runs low: queue a renewal.
    pub renew: bool,
}

impl State {
    /// Carves `req` from its agent's lease if the lease has room and nothing else would block it
    /// (pause, expiry, per-call limit): those cases, and any request without a lease, go the
    /// slow way through the committer, which decides them exactly and records the denial.
    /// Takes the request by value (its audit context moves into the carve, no copy) and hands
    /// it back when it cannot be carved.
    #[expect(
        clippy::result_large_err,
        reason = "the caller's own request, moved back once; boxing it would cost the allocation this saves"
    )]
    pub fn try_carve(
        &mut self,
        req: ReserveRequest,
        now: DateTime<Utc>,
    ) -> Result<Carved, ReserveRequest> {
        let amount = req.amount;
        if self
            .leases
            .get(&req.agent)
            .is_none_or(|l| l.available() < amount.0)
        {
            return Err(req);
        }
        let levels = req.agent.ancestors_and_self();
        let eff = self.effective_all(&levels);
        if !self.carve_allowed(&levels, &eff, amount, now) {
            return Err(req);
        }
        let Some(lease) = self.leases.get_mut(&req.agent) else {
            return Err(req);
        };
        lease.carved = lease.carved.saturating_add(amount.0);
        lease.last_used = Some(now);
        let renew = !lease.renewing && lease.wants_more();
        if renew {
            lease.renewing = true;
        }
        let (row, unused) = (lease.row, lease.available());
        // Before the request can leave: a crash from here on charges this carve. (Published
        // here rather than through `meter_lease`: the lease is in hand, no second look-up.)
        let reservations = &self.reservations;
        self.meter
            .publish(row, unused, || reservations.get(&row).map(|r| r.created));
        let id = CARVE_BIT | self.next_carve;
        self.next_carve += 1;
        let remaining = self.remaining(&levels, &eff, now).tightest();
        let reservation = Reservation {
            id,
            agent: req.agent.clone(),
            amount,
            remaining,
            would_block: None,
        };
        self.carves.insert(
            id,
            Carve {
                agent: req.agent,
                amount,
                created: now,
                ctx: Arc::new(req.audit),
                row,
            },
        );
        Ok(Carved { reservation, renew })
    }

    pub(crate) fn carve_allowed(
        &self,
        levels: &[AgentName],
        eff: &[Limits],
        amount: MicroUsd,
        now: DateTime<Utc>,
    ) -> bool {
        let paused = levels
            .iter()
            .any(|l| self.agents.get(l).is_some_and(|e| e.paused));
        let blocked = eff.iter().any(|lim| {
            lim.expires_at.is_some_and(|at| now >= at) || lim.per_call.is_some_and(|pc| amount > pc)
        });
        !paused && !blocked && !self.settings.contains_key(crate::state::HOLD_SETTING)
    }

    /// Unused leased capacity of `level` and everyone under it: outstanding there, yet free for
    /// any request that needs it (it is handed back first), so budgets shown to people count it
    /// as remaining.
    pub(crate) fn unused_leased(&self, level: &AgentName) -> u64 {
        let own = self.leases.get(level).map_or(0, Lease::available);
        let prefix = format!("{level}.");
        let under = self
            .leases
            .range::<str, _>((
                std::ops::Bound::Included(prefix.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.as_str().starts_with(&prefix))
            .fold(own, |acc, (_, l)| acc.saturating_add(l.available()));
        // Granted by the batch being written: outstanding already, carvable in a moment.
        self.pending_grants
            .iter()
            .filter(|g| g.agent.is_within(level))
            .fold(under, |acc, g| acc.saturating_add(g.amount))
    }

    /// Grants (or extends) a lease for the requester, sized to at most `lease_max` and an eighth
    /// of the tightest remaining budget. The caller has checked pause and expiry.
    pub(crate) fn grant_lease(
        &mut self,
        agent: &AgentName,
        levels: &[AgentName],
        eff: &[Limits],
        now: DateTime<Utc>,
        fx: &mut Effects,
    ) {
        if self.lease_max == 0 || self.cluster {
            return;
        }
        let pending: u64 = self
            .pending_grants
            .iter()
            .filter(|g| &g.agent == agent)
            .map(|g| g.amount)
            .sum();
        if pending > 0 || self.leases.get(agent).is_some_and(|l| !l.wants_more()) {
            return;
        }
        let mut tightest = u64::MAX;
        for (l, lim) in levels.iter().zip(eff) {
            let e = self.agents.get(l);
            let zone = self.zone_of(l);
            for p in Period::ALL {
                let Some(limit) = lim.period(p) else { continue };
                let used = e.map_or(0, |e| e.spent(p, now, &zone).saturating_add(e.outstanding));
                tightest = tightest.min(limit.0.saturating_sub(used));
            }
        }
        let amount = self.lease_max.min(if tightest == u64::MAX {
            u64::MAX
        } else {
            tightest / SLICE_DIVISOR
        });
        if amount == 0 {
            return;
        }
        self.add_to_lease(agent, levels, amount, now, fx);
    }

    /// Grows the agent's lease row by `amount` at every level (a new row if it has none); the
    /// capacity is carvable once this batch is on disk.
    pub(crate) fn add_to_lease(
        &mut self,
        agent: &AgentName,
        levels: &[AgentName],
        amount: u64,
        now: DateTime<Utc>,
        fx: &mut Effects,
    ) {
        let row = match self.leases.get(agent).map(|l| l.row) {
            Some(row) if self.reservations.contains_key(&row) => {
                self.remember_reservation(row);
                if let Some(r) = self.reservations.get_mut(&row) {
                    r.amount = r.amount.saturating_add(MicroUsd(amount));
                    r.audit.reserved = r.amount;
                    r.audit.requested = r.amount;
                }
                row
            }
            _ => {
                let row = self.next_reservation_id;
                self.next_reservation_id += 1;
                let audit_id = self.next_audit_id();
                self.remember_reservation(row);
                self.reservations.insert(
                    row,
                    OpenReservation {
                        agent: agent.clone(),
                        amount: MicroUsd(amount),
                        created: now,
                        audit: AuditRecord {
                            id: audit_id,
                            time: now,
                            agent: agent.clone(),
                            ctx: Arc::new(AuditContext {
                                model: LEASE_MODEL.into(),
                                ..AuditContext::default()
                            }),
                            decision: Decision::Allowed,
                            reason: None,
                            reservation_id: Some(row),
                            requested: MicroUsd(amount),
                            reserved: MicroUsd(amount),
                            final_cost: None,
                            settled_at: None,
                            recovered: false,
                        },
                    },
                );
                row
            }
        };
        fx.reservations.insert(row);
        for l in levels {
            let e = self.agent_mut(l);
            e.outstanding = e.outstanding.saturating_add(amount);
            fx.agents.insert(l.clone());
        }
        self.pending_grants.push(Grant {
            agent: agent.clone(),
            row,
            amount,
            at: now,
        });
    }

    /// A queued renewal: grant more if the lease still wants it and nothing blocks the agent.
    pub fn renew_lease(&mut self, agent: &AgentName, now: DateTime<Utc>, fx: &mut Effects) {
        match self.leases.get_mut(agent) {
            Some(l) => l.renewing = false,
            None => return,
        }
        let levels = agent.ancestors_and_self();
        let eff = self.effective_all(&levels);
        if self.carve_allowed(&levels, &eff, MicroUsd::ZERO, now) {
            self.ensure(&levels, fx);
            self.grant_lease(agent, &levels, &eff, now, fx);
        }
    }

    /// Hands back the unused part of every lease held by `level` or anyone under it. Returns
    /// whether anything was handed back.
    pub(crate) fn reclaim_leases(&mut self, level: &AgentName, fx: &mut Effects) -> bool {
        let holders: Vec<AgentName> = self
            .leases
            .iter()
            .filter(|(k, l)| k.is_within(level) && l.available() > 0)
            .map(|(k, _)| k.clone())
            .collect();
        for agent in &holders {
            let Some(lease) = self.lease_mut(agent) else {
                continue;
            };
            let give_back = lease.available();
            lease.cap -= give_back;
            let row = lease.row;
            // Before the hand-back's commit: until it, the row on disk still holds it.
            self.meter_lease(agent);
            self.shrink_row(agent, row, give_back, fx);
            tracing::debug!(agent = %agent, returned = %MicroUsd(give_back), "unused budget lease handed back");
        }
        // Grants this very batch decided are not carvable yet: take them back whole.
        let (back, keep): (Vec<Grant>, Vec<Grant>) = std::mem::take(&mut self.pending_grants)
            .into_iter()
            .partition(|g| g.agent.is_within(level));
        self.pending_grants = keep;
        for g in &back {
            self.shrink_row(&g.agent, g.row, g.amount, fx);
        }
        !holders.is_empty() || !back.is_empty()
    }

    /// Takes `amount` out of a lease row and its levels' outstanding; drops the row (and the
    /// lease) once it covers nothing.
    pub(crate) fn shrink_row(
        &mut self,
        agent: &AgentName,
        row: u64,
        amount: u64,
        fx: &mut Effects,
    ) {
        self.remember_reservation(row);
        let empty = match self.reservations.get_mut(&row) {
            Some(r) => {
                r.amount = MicroUsd(r.amount.0.saturating_sub(amount));
                r.audit.reserved = r.amount;
                r.audit.requested = r.amount;
                r.amount == MicroUsd::ZERO
            }
            None => false,
        };
        fx.reservations.insert(row);
        self.note_release(agent, amount);
        for l in agent.ancestors_and_self() {
            let e = self.agent_mut(&l);
            e.outstanding = e.outstanding.saturating_sub(amount);
            fx.agents.insert(l);
        }
        if empty {
            self.reservations.remove(&row);
            let done = self
                .leases
                .get(agent)
                .is_some_and(|l| l.row == row && l.available() == 0);
            if done {
                self.lease_mut(agent);
                self.leases.remove(agent);
            }
            self.meter.forget(row);
        }
    }

    /// Settles a carve: its worst case leaves the lease row, its real cost is charged, and its
    /// audit event (allowed, settled) is written — all in this batch's commit.
    pub(crate) fn settle_carve(
        &mut self,
        id: u64,
        actual: MicroUsd,
        kind: SettleKind,
        now: DateTime<Utc>,
        fx: &mut Effects,
    ) -> Result<Settled, LedgerError> {
        let carve = self
            .carves
            .remove(&id)
            .ok_or(LedgerError::UnknownReservation { id })?;
        if let Some(u) = &mut self.undo {
            u.carves.push((id, carve.clone()));
        }
        let covered = self.reservations.contains_key(&carve.row);
        if covered {
            self.shrink_row(&carve.agent, carve.row, carve.amount.0, fx);
        } else {
            // Cannot happen while the invariant holds; charge anyway (a charge is never lost).
            tracing::error!(carve = id, row = carve.row, agent = %carve.agent, "lease row of a carve is missing; charging the carve without it");
        }
        let audit_id = self.next_audit_id();
        let res = OpenReservation {
            agent: carve.agent.clone(),
            amount: carve.amount,
            created: carve.created,
            audit: AuditRecord {
                id: audit_id,
                time: carve.created,
                agent: carve.agent,
                ctx: carve.ctx,
                decision: Decision::Allowed,
                reason: None,
                reservation_id: Some(id),
                requested: carve.amount,
                reserved: carve.amount,
                final_cost: None,
                settled_at: None,
                recovered: false,
            },
        };
        // The row shrank by the carve's amount at every level already (and a missing row no
        // longer counted it): charge without taking it off `outstanding` a second time.
        self.charge(id, res, actual, kind, false, now, fx)
    }

    /// Stops leasing and hands back every unused slice; returns the total handed back.
    pub(crate) fn release_leases(&mut self, fx: &mut Effects) -> MicroUsd {
        self.lease_max = 0;
        let before: u64 = self.leases.values().map(Lease::available).sum::<u64>()
            + self.pending_grants.iter().map(|g| g.amount).sum::<u64>();
        let roots: std::collections::BTreeSet<AgentName> = self
            .leases
            .keys()
            .chain(self.pending_grants.iter().map(|g| &g.agent))
            .cloned()
            .collect();
        for agent in roots {
            self.reclaim_leases(&agent, fx);
        }
        MicroUsd(before)
    }

    /// Tells the meter what `agent`'s lease has left (meter.rs says when: a lower value before it
    /// takes effect, a higher one once it is durable).
    pub(crate) fn meter_lease(&mut self, agent: &AgentName) {
        if let Some(l) = self.leases.get(agent) {
            let (row, unused) = (l.row, l.available());
            let reservations = &self.reservations;
            self.meter
                .publish(row, unused, || reservations.get(&row).map(|r| r.created));
        }
    }

    /// Makes the capacity of this batch's grants carvable (its commit succeeded).
    pub(crate) fn apply_grants(&mut self) {
        for g in std::mem::take(&mut self.pending_grants) {
            let agent = g.agent.clone();
            match self.leases.get_mut(&g.agent) {
                Some(l) if l.row == g.row => {
                    l.cap = l.cap.saturating_add(g.amount);
                    l.target = g.amount;
                    l.last_used = Some(g.at);
                }
                _ => {
                    self.leases.insert(
                        g.agent,
                        Lease {
                            row: g.row,
                            cap: g.amount,
                            carved: 0,
                            target: g.amount,
                            renewing: false,
                            last_used: Some(g.at),
                        },
                    );
                }
            }
            // After the commit that grew the row: never claim more than the disk holds.
            self.meter_lease(&agent);
        }
    }

    /// Moves the leases and carves of the mirror being replaced (after a failed commit, the
    /// mirror is reloaded from disk) into this fresh one, where their rows still exist.
    pub(crate) fn adopt_leases(&mut self, old: &mut State) {
        self.lease_max = old.lease_max;
        self.cluster = old.cluster;
        self.next_carve = old.next_carve;
        for (agent, lease) in std::mem::take(&mut old.leases) {
            if self.reservations.contains_key(&lease.row) {
                self.leases.insert(agent, lease);
            }
        }
        for (id, carve) in std::mem::take(&mut old.carves) {
            self.carves.insert(id, carve);
        }
        self.meter = std::mem::take(&mut old.meter);
        let agents: Vec<AgentName> = self.leases.keys().cloned().collect();
        for a in &agents {
            self.meter_lease(a);
        }
    }
}
