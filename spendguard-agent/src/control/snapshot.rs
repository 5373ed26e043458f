//! The `top` control op: one frame of the live view — every agent the ledger knows with its spend
//! rate, budget, reservations and last-minute counts, computed on the node (`spendguard top` reads
//! this, never `/metrics`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use spendguard_ledger::{AgentName, AgentState, Ledger, Mode, Period};
use spendguard_pricing::MicroUsd;

use crate::activity::{Activity, Totals, WINDOW_SECS};

/// One frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub time: DateTime<Utc>,
    /// This node's name in the cluster store (`None` without one): the numbers are this node's.
    pub node: Option<String>,
    /// The window behind `rate_per_min` and the `*_1m` counts, in seconds.
    pub window_secs: u64,
    /// Every agent the ledger knows (limits, pauses, requests) and its ancestors, sorted by name.
    pub agents: Vec<Row>,
}

/// One agent (its numbers include its descendants', as its budget does).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub agent: String,
    /// 0 for a root (`acme`), 1 for `acme.research`, …
    pub depth: usize,
    pub status: AgentState,
    pub mode: Mode,
    pub paused: bool,
    pub tz: String,
    /// Settled spend over the last minute: dollars per minute.
    #[serde(with = "spendguard_ledger::usd")]
    pub rate_per_min: MicroUsd,
    /// The period with the least left (the one that binds first); `None` if nothing limits it.
    pub binding_period: Option<Period>,
    /// Spent in the binding period (today's spend when nothing limits it).
    #[serde(with = "spendguard_ledger::usd")]
    pub spent: MicroUsd,
    /// The binding period's limit and what is left of it (tightest over the ancestors too).
    #[serde(with = "spendguard_ledger::usd::option")]
    pub limit: Option<MicroUsd>,
    #[serde(with = "spendguard_ledger::usd::option")]
    pub remaining: Option<MicroUsd>,
    /// When the binding period resets (RFC 3339 with the zone's offset).
    pub resets: Option<String>,
    /// Reserved by requests in flight.
    #[serde(with = "spendguard_ledger::usd")]
    pub reserved: MicroUsd,
    pub requests_1m: u64,
    pub blocked_1m: u64,
    pub would_block_1m: u64,
    /// Minutes until the binding budget is gone at the current rate; `None` when idle or unlimited.
    pub minutes_left: Option<u64>,
}

/// Builds the frame at `now` (Unix second `sec` for the activity window).
pub fn build(ledger: &Ledger, activity: &Activity, now: DateTime<Utc>, sec: u64) -> Snapshot {
    let window = activity.window(sec);
    let agents = ledger.agents();
    let rows = agents
        .iter()
        .map(|a| row(ledger, a, &subtree(&window, a)))
        .collect();
    Snapshot {
        time: now,
        node: ledger.cluster_node().map(str::to_string),
        window_secs: WINDOW_SECS,
        agents: rows,
    }
}

/// The window totals of `agent` and everyone under it.
fn subtree(window: &std::collections::HashMap<String, Totals>, agent: &AgentName) -> Totals {
    let mut t = Totals::default();
    for (name, w) in window {
        if name.parse::<AgentName>().is_ok_and(|n| n.is_within(agent)) {
            t.add(w);
        }
    }
    t
}

fn row(ledger: &Ledger, agent: &AgentName, w: &Totals) -> Row {
    let s = ledger.status(agent);
    let binding = Period::ALL
        .iter()
        .filter_map(|p| s.remaining.get(*p).map(|r| (*p, r)))
        .min_by_key(|(_, r)| *r);
    let (binding_period, spent, limit, remaining) = match binding {
        Some((p, r)) => (
            Some(p),
            s.spent.get(p),
            // The agent's own limit, else the ancestor's that binds (spent + left there).
            s.limits
                .period(p)
                .or(Some(s.spent.get(p).saturating_add(r))),
            Some(r),
        ),
        None => (None, s.spent.daily, None, None),
    };
    let resets = match binding_period {
        Some(Period::Daily) => s.period_resets.daily,
        Some(Period::Weekly) => s.period_resets.weekly,
        Some(Period::Monthly) => s.period_resets.monthly,
        _ => None,
    }
    .map(|t| t.to_rfc3339());
    let minutes_left = match remaining {
        Some(r) if w.spend.0 > 0 => Some(r.0 / w.spend.0),
        _ => None,
    };
    Row {
        agent: agent.to_string(),
        depth: agent.depth() - 1,
        status: s.status,
        mode: s.mode,
        paused: s.paused,
        tz: s.tz.to_string(),
        rate_per_min: w.spend,
        binding_period,
        spent,
        limit,
        remaining,
        resets,
        reserved: s.reserved,
        requests_1m: w.requests,
        blocked_1m: w.blocked,
        would_block_1m: w.would_block,
        minutes_left,
    }
}
