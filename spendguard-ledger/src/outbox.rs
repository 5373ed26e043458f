//! The node mirror's side of a cluster store: the durable outbox of charges and hand-backs, grants
//! recorded as lease rows, refusals turned into 402s, policies followed, idle slices handed back.
//!
//! Every change to a cluster lease row is mirrored into the outbox in the same batch (so in the
//! same redb commit): a carve settled (`charge` its real cost, `release` its worst case from the
//! slice), a slice handed back (`release`), a row charged whole after a crash (both). The store's
//! idea of what this node holds is then always its lease rows plus what the outbox has still to
//! release — never less, so the store can never over-grant because of this node.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::agent::AgentName;
use crate::cluster::{Policy, Refusal};
use crate::money::MicroUsd;
use crate::state::{Effects, State};
use crate::types::{AuditContext, Denial, DenyReason, RemainingByPeriod, ReserveRequest};

/// One message to the store: for `agent`, `charge` was spent and `release` is no longer held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OutboxEntry {
    pub agent: AgentName,
    pub charge: u64,
    pub release: u64,
    /// When it was queued (ns): with the sequence number, the idempotency id in the store (a
    /// re-created database reuses sequence numbers, never both).
    pub stamp: i64,
}

impl State {
    pub(crate) fn note_charge(&mut self, agent: &AgentName, amount: u64) {
        if self.cluster && amount > 0 {
            let d = self.cluster_deltas.entry(agent.clone()).or_default();
            d.0 = d.0.saturating_add(amount);
        }
    }

    pub(crate) fn note_release(&mut self, agent: &AgentName, amount: u64) {
        if self.cluster && amount > 0 {
            let d = self.cluster_deltas.entry(agent.clone()).or_default();
            d.1 = d.1.saturating_add(amount);
        }
    }

    /// Turns this batch's charges and hand-backs into outbox entries (written with the batch).
    pub(crate) fn seal_outbox(&mut self, now: DateTime<Utc>, fx: &mut Effects) {
        let stamp = now.timestamp_nanos_opt().unwrap_or(0);
        for (agent, (charge, release)) in std::mem::take(&mut self.cluster_deltas) {
            let id = self.next_outbox;
            self.next_outbox += 1;
            self.outbox.insert(
                id,
                OutboxEntry {
                    agent,
                    charge,
                    release,
                    stamp,
                },
            );
            if let Some(u) = &mut self.undo {
                u.outbox_added.push(id);
            }
            fx.outbox.insert(id);
        }
    }

    /// The store has these entries: delete them.
    pub(crate) fn outbox_done(&mut self, ids: &[u64], fx: &mut Effects) {
        for id in ids {
            if let Some(e) = self.outbox.remove(id) {
                if let Some(u) = &mut self.undo {
                    u.outbox_removed.push((*id, e));
                }
                fx.outbox.insert(*id);
            }
        }
    }

    /// The store granted `amount` to this node for `agent`: a lease row (or more of it), durable
    /// with this batch, carvable after it.
    pub(crate) fn record_cluster_grant(
        &mut self,
        agent: &AgentName,
        amount: MicroUsd,
        now: DateTime<Utc>,
        fx: &mut Effects,
    ) {
        let levels = agent.ancestors_and_self();
        self.ensure(&levels, fx);
        self.add_to_lease(agent, &levels, amount.0, now, fx);
    }

    /// Follows the store's policies and shared settings; a changed limit or pause hands the
    /// agent's slices (and its subtree's) back, so new ones are granted under the new policy.
    pub(crate) fn sync_policies(
        &mut self,
        policies: Vec<(AgentName, Policy)>,
        shared: Vec<(String, serde_json::Value)>,
        fx: &mut Effects,
    ) {
        let mut known: std::collections::BTreeSet<AgentName> = std::collections::BTreeSet::new();
        for (agent, p) in policies {
            known.insert(agent.clone());
            let same = self
                .agents
                .get(&agent)
                .is_some_and(|e| e.limits == p.limits && e.paused == p.paused);
            if same {
                continue;
            }
            let levels = agent.ancestors_and_self();
            self.ensure(&levels, fx);
            self.reclaim_leases(&agent, fx);
            let e = self.agent_mut(&agent);
            e.limits = p.limits;
            e.paused = p.paused;
            fx.agents.insert(agent);
        }
        // Agents whose policy was removed from the store keep what they have locally: the store
        // binds anyway (the grant script reads its own keys).
        for (k, v) in shared {
            if self.settings.get(&k) != Some(&v) {
                self.put_setting(k, Some(v), fx);
            }
        }
    }

    /// Cluster slices with unused capacity that nobody carved from for `idle`.
    pub(crate) fn idle_leases(
        &self,
        now: DateTime<Utc>,
        idle: std::time::Duration,
    ) -> Vec<AgentName> {
        let idle = chrono::Duration::from_std(idle).unwrap_or(chrono::Duration::seconds(1));
        self.leases
            .iter()
            .filter(|(_, l)| l.available() > 0 && l.last_used.is_none_or(|t| now - t >= idle))
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// Hands back the unused part of these agents' own slices if they are still idle.
    pub(crate) fn reclaim_idle(
        &mut self,
        agents: &[AgentName],
        now: DateTime<Utc>,
        idle: std::time::Duration,
        fx: &mut Effects,
    ) {
        let still = self.idle_leases(now, idle);
        for a in agents.iter().filter(|a| still.contains(a)) {
            let Some(lease) = self.lease_mut(a) else {
                continue;
            };
            let back = lease.available();
            lease.cap -= back;
            let row = lease.row;
            self.meter_lease(a);
            self.shrink_row(a, row, back, fx);
            tracing::debug!(agent = %a, returned = %MicroUsd(back), "idle budget slice handed back to the cluster store");
        }
    }

    /// An operator action on the budget, as an audit event (decision `allowed`, its amount as
    /// the final cost, the action in `model`).
    pub(crate) fn audit_note(
        &mut self,
        agent: AgentName,
        ctx: AuditContext,
        amount: MicroUsd,
        now: DateTime<Utc>,
        fx: &mut Effects,
    ) {
        let id = self.next_audit_id();
        fx.audit.insert(
            id,
            crate::state::AuditRecord {
                id,
                time: now,
                agent,
                ctx: std::sync::Arc::new(ctx),
                decision: crate::types::Decision::Allowed,
                reason: None,
                reservation_id: None,
                requested: amount,
                reserved: MicroUsd::ZERO,
                final_cost: Some(MicroUsd::ZERO),
                settled_at: Some(now),
                recovered: false,
            },
        );
    }

    /// A refusal other than an exhausted budget (the store knew of a pause, an expiry or a
    /// per-call limit before this node's mirror did).
    pub(crate) fn store_refused(
        &mut self,
        agent: &AgentName,
        levels: &[AgentName],
        refusal: Option<Refusal>,
        amount: MicroUsd,
        remaining: RemainingByPeriod,
    ) -> Denial {
        let level = |i: usize| levels[i.min(levels.len() - 1)].clone();
        let (reason, l, message) = match refusal {
            Some(Refusal::Paused { level: i }) => {
                let l = level(i);
                let m = format!(
                    "Agent {l} is paused; `spendguard resume {l}` reopens it (requested: {amount})"
                );
                (DenyReason::AgentPaused, l, m)
            }
            Some(Refusal::Expired { level: i }) => {
                let l = level(i);
                let m = format!("Budget for agent {l} expired (requested: {amount})");
                (DenyReason::BudgetExpired, l, m)
            }
            Some(Refusal::PerCall { level: i }) => {
                let l = level(i);
                let m = format!("Request of {amount} exceeds the per-call limit for agent {l}");
                (DenyReason::PerCallLimitExceeded, l, m)
            }
            // Unreachable: exhausted budgets are reported by `reserve_or_refuse` itself.
            Some(Refusal::Exhausted { .. }) | None => {
                let l = agent.clone();
                let m = format!(
                    "Total budget for agent {l} exhausted across the cluster (requested: {amount})"
                );
                (DenyReason::TotalBudgetExhausted, l, m)
            }
        };
        Self::denial(agent, &l, reason, message, amount, remaining, None)
    }

    /// A cluster refusal (or a local block) as a 402: audited like any denial.
    #[expect(
        clippy::result_large_err,
        reason = "a denial carries the whole 402 body; it is moved once, off the hot path"
    )]
    pub(crate) fn cluster_deny(
        &mut self,
        req: ReserveRequest,
        refusal: Option<Refusal>,
        now: DateTime<Utc>,
        fx: &mut Effects,
    ) -> Result<crate::types::Reservation, Denial> {
        self.reserve_or_refuse(req, refusal, now, fx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;
    use crate::state::SettleKind;
    use crate::store::{Store, WriteSet};

    fn agent() -> AgentName {
        "acme.bot".parse().expect("name")
    }

    fn cluster_state() -> State {
        let mut st = State::new(Limits::default());
        st.cluster = true;
        st.lease_max = 1_000_000;
        st
    }

    fn req(amount: u64) -> ReserveRequest {
        ReserveRequest {
            agent: agent(),
            amount: MicroUsd(amount),
            audit: AuditContext::default(),
        }
    }

    /// Grants 1,000 µUSD as the committer would (one batch, committed).
    fn granted(st: &mut State, now: DateTime<Utc>) {
        let mut fx = Effects::default();
        st.begin_batch();
        st.record_cluster_grant(&agent(), MicroUsd(1_000), now, &mut fx);
        st.seal_outbox(now, &mut fx);
        st.end_batch();
        assert!(
            st.outbox.is_empty(),
            "a grant is the store's own record: nothing to send"
        );
    }

    #[test]
    fn a_settled_carve_sends_its_charge_and_hands_back_its_worst_case() {
        let now = Utc::now();
        let mut st = cluster_state();
        granted(&mut st, now);
        let c = st.try_carve(req(300), now).expect("carve from the slice");
        let mut fx = Effects::default();
        st.begin_batch();
        st.settle(
            c.reservation.id,
            MicroUsd(200),
            SettleKind::Usage,
            now,
            &mut fx,
        )
        .expect("settle");
        st.seal_outbox(now, &mut fx);
        st.end_batch();
        let e: Vec<_> = st.outbox.values().cloned().collect();
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].charge, e[0].release), (200, 300));
        assert_eq!(fx.outbox.len(), 1, "written with the batch");
        // What the store still counts as held = the lease row.
        let row = st.leases[&agent()].row;
        assert_eq!(st.reservations[&row].amount, MicroUsd(700));
    }

    #[test]
    fn a_failed_commit_takes_its_outbox_entries_back() {
        let now = Utc::now();
        let mut st = cluster_state();
        granted(&mut st, now);
        let c = st.try_carve(req(300), now).expect("carve");
        let before = st.next_outbox;
        let mut fx = Effects::default();
        st.begin_batch();
        st.settle(
            c.reservation.id,
            MicroUsd(300),
            SettleKind::Usage,
            now,
            &mut fx,
        )
        .expect("settle");
        st.seal_outbox(now, &mut fx);
        st.rollback_batch();
        assert!(st.outbox.is_empty());
        assert_eq!(st.next_outbox, before);
        assert!(
            st.carves.contains_key(&c.reservation.id),
            "the carve is open again"
        );
    }

    #[test]
    fn a_slice_left_by_a_crash_is_charged_and_released_whole() {
        let now = Utc::now();
        let mut st = cluster_state();
        granted(&mut st, now);
        let mut fx = Effects::default();
        let (n, sum, _) = st.recover_open(now, &crate::meter::Leftover::default(), &mut fx);
        st.seal_outbox(now, &mut fx);
        assert_eq!((n, sum), (1, MicroUsd(1_000)));
        let e: Vec<_> = st.outbox.values().cloned().collect();
        assert_eq!((e[0].charge, e[0].release), (1_000, 1_000));
    }

    #[test]
    fn idle_slices_are_handed_back_busy_ones_kept() {
        let now = Utc::now();
        let mut st = cluster_state();
        granted(&mut st, now);
        let idle = std::time::Duration::from_secs(1);
        assert!(st.idle_leases(now, idle).is_empty());
        let later = now + chrono::Duration::seconds(2);
        assert_eq!(st.idle_leases(later, idle), vec![agent()]);
        let mut fx = Effects::default();
        st.begin_batch();
        st.reclaim_idle(&[agent()], later, idle, &mut fx);
        st.seal_outbox(later, &mut fx);
        st.end_batch();
        let e: Vec<_> = st.outbox.values().cloned().collect();
        assert_eq!((e[0].charge, e[0].release), (0, 1_000));
        assert!(st.leases.get(&agent()).is_none_or(|l| l.available() == 0));
    }

    #[test]
    fn the_outbox_survives_a_restart() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ledger.redb");
        let p = path.clone();
        let store = Store::new(path, Box::new(move || redb::Database::create(&p)));
        store.open().expect("open");
        let now = Utc::now();
        let mut st = cluster_state();
        granted(&mut st, now);
        let c = st.try_carve(req(300), now).expect("carve");
        let mut fx = Effects::default();
        st.settle(
            c.reservation.id,
            MicroUsd(250),
            SettleKind::Usage,
            now,
            &mut fx,
        )
        .expect("settle");
        st.seal_outbox(now, &mut fx);
        store
            .write(&WriteSet::build(&st, &fx, None).expect("write set"), true)
            .expect("write");
        let loaded = store.load(Limits::default()).expect("load");
        assert_eq!(loaded.outbox, st.outbox);
        assert_eq!(loaded.next_outbox, st.next_outbox);
        // Delivered: deleted durably.
        let ids: Vec<u64> = st.outbox.keys().copied().collect();
        let mut fx = Effects::default();
        st.outbox_done(&ids, &mut fx);
        store
            .write(&WriteSet::build(&st, &fx, None).expect("write set"), true)
            .expect("write");
        let loaded = store.load(Limits::default()).expect("load");
        assert!(loaded.outbox.is_empty());
        assert_eq!(loaded.next_outbox, st.next_outbox, "ids are never reused");
    }
}
