//! The values the ledger hands out: reservations, denials (the 402 body), status, audit events,
//! notifications. Their JSON is what operators and scripts see: amounts are dollars.

use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};

use crate::agent::AgentName;
use crate::limits::Limits;
use crate::money::MicroUsd;
use crate::period::Period;

/// Who made a request and where it was going, for the audit log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditContext {
    /// cgroup path or pod (`namespace/name`) of the caller.
    pub cgroup: String,
    /// Provider host (the SNI), e.g. `api.openai.com`.
    pub host: String,
    pub model: String,
    pub provider: String,
    /// The x402 payment the request carried (x402 hosts only). Older records have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<PaymentAudit>,
    /// A budget handed down from inside a workload (not a request). Older records have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation: Option<DelegationAudit>,
}

/// A delegation (`/.well-known/spendguard/delegate`), as the audit log names it: who set what on
/// which budget. The event's agent is the budget that was created or narrowed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegationAudit {
    /// The agent that delegated (the caller's own, or the budget it routed to).
    pub created_by: AgentName,
    /// Whether the budget was created by this delegation (else an existing one was narrowed).
    pub created: bool,
    /// The caller's pod (`namespace/name`), when its tag came from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// What was set, as the workload sent it (dollars, RFC 3339).
    pub set: serde_json::Value,
}

/// An x402 payment, as the audit log names it: where it went and how much of what.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentAudit {
    /// As the payment names it: `base` (v1) or CAIP-2 `eip155:8453` (v2).
    pub network: String,
    /// The token contract or mint.
    pub asset: String,
    pub pay_to: String,
    /// In the asset's smallest unit, as the payment named it (a string: it may not fit a JSON
    /// number exactly).
    pub amount: String,
}

/// Ask for `amount` (the request's worst-case cost) to be reserved for `agent` and its ancestors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReserveRequest {
    pub agent: AgentName,
    pub amount: MicroUsd,
    pub audit: AuditContext,
}

/// A durable reservation. Settle it with [`crate::Ledger::settle`]; if the process dies first,
/// the next open charges its full amount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[must_use = "a reservation must be settled, or it is charged in full at the next restart"]
pub struct Reservation {
    pub id: u64,
    pub agent: AgentName,
    #[serde(with = "crate::usd")]
    pub amount: MicroUsd,
    /// Tightest remaining budget after this reservation, across levels and periods;
    /// [`MicroUsd::MAX`] when nothing limits the agent. Feeds `x-spendguard-remaining-usd`.
    #[serde(with = "crate::usd")]
    pub remaining: MicroUsd,
    /// `observe` mode: the request would have been blocked for this reason, and goes out anyway
    /// (it is reserved and settled like any other; its audit event says `would_block`).
    pub would_block: Option<DenyReason>,
}

/// The result of settling a reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Settled {
    pub id: u64,
    pub agent: AgentName,
    #[serde(with = "crate::usd")]
    pub reserved: MicroUsd,
    /// What was charged (may exceed `reserved`; it is charged anyway).
    #[serde(with = "crate::usd")]
    pub charged: MicroUsd,
    /// Tightest remaining budget after the charge (as in [`Reservation::remaining`]).
    #[serde(with = "crate::usd")]
    pub remaining: MicroUsd,
}

/// Why a request was blocked; the `reason` of the 402 body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    PerCallLimitExceeded,
    DailyBudgetExhausted,
    WeeklyBudgetExhausted,
    MonthlyBudgetExhausted,
    TotalBudgetExhausted,
    BudgetExpired,
    AgentPaused,
    UnknownModel,
    UnpricedRequest,
    /// A tagged connection to a host that is neither a provider host nor allowed, under
    /// `other_hosts = deny`: closed before any byte reached it.
    HostNotAllowed,
}

impl DenyReason {
    pub fn exhausted(p: Period) -> DenyReason {
        match p {
            Period::Daily => DenyReason::DailyBudgetExhausted,
            Period::Weekly => DenyReason::WeeklyBudgetExhausted,
            Period::Monthly => DenyReason::MonthlyBudgetExhausted,
            Period::Total => DenyReason::TotalBudgetExhausted,
        }
    }

    /// The period whose budget ran out, for the `*_budget_exhausted` reasons.
    pub fn period(self) -> Option<Period> {
        match self {
            DenyReason::DailyBudgetExhausted => Some(Period::Daily),
            DenyReason::WeeklyBudgetExhausted => Some(Period::Weekly),
            DenyReason::MonthlyBudgetExhausted => Some(Period::Monthly),
            DenyReason::TotalBudgetExhausted => Some(Period::Total),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::PerCallLimitExceeded => "per_call_limit_exceeded",
            DenyReason::DailyBudgetExhausted => "daily_budget_exhausted",
            DenyReason::WeeklyBudgetExhausted => "weekly_budget_exhausted",
            DenyReason::MonthlyBudgetExhausted => "monthly_budget_exhausted",
            DenyReason::TotalBudgetExhausted => "total_budget_exhausted",
            DenyReason::BudgetExpired => "budget_expired",
            DenyReason::AgentPaused => "agent_paused",
            DenyReason::UnknownModel => "unknown_model",
            DenyReason::UnpricedRequest => "unpriced_request",
            DenyReason::HostNotAllowed => "host_not_allowed",
        }
    }
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Remaining budget per period, the tightest across the agent and its ancestors;
/// `None` (JSON `null`) = no level limits that period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RemainingByPeriod {
    #[serde(with = "crate::usd::option")]
    pub daily: Option<MicroUsd>,
    #[serde(with = "crate::usd::option")]
    pub weekly: Option<MicroUsd>,
    #[serde(with = "crate::usd::option")]
    pub monthly: Option<MicroUsd>,
    #[serde(with = "crate::usd::option")]
    pub total: Option<MicroUsd>,
}

impl RemainingByPeriod {
    pub fn get(&self, p: Period) -> Option<MicroUsd> {
        match p {
            Period::Daily => self.daily,
            Period::Weekly => self.weekly,
            Period::Monthly => self.monthly,
            Period::Total => self.total,
        }
    }

    pub(crate) fn slot(&mut self, p: Period) -> &mut Option<MicroUsd> {
        match p {
            Period::Daily => &mut self.daily,
            Period::Weekly => &mut self.weekly,
            Period::Monthly => &mut self.monthly,
            Period::Total => &mut self.total,
        }
    }

    /// The smallest of the four, [`MicroUsd::MAX`] if none is limited.
    pub fn tightest(&self) -> MicroUsd {
        Period::ALL
            .iter()
            .filter_map(|p| self.get(*p))
            .min()
            .unwrap_or(MicroUsd::MAX)
    }
}

/// Everything the HTTP 402 body needs. Serialises with `code: "BUDGET_EXCEEDED"` and the binding
/// fields of the contract; the proxy adds `error` in the provider's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub reason: DenyReason,
    /// The level whose limit (or pause/expiry) blocked the request.
    pub agent: AgentName,
    /// The agent that made the request (may be a descendant of `agent`).
    pub requesting_agent: AgentName,
    pub message: String,
    /// This request's worst-case cost.
    pub requested: MicroUsd,
    /// Left under the tightest limit ([`MicroUsd::MAX`] if nothing limits it; zero when the agent
    /// is paused or expired, since nothing can be spent).
    pub remaining: MicroUsd,
    pub remaining_by_period: RemainingByPeriod,
    /// When the binding budget reopens; `None` for total budgets, pause, expiry, per-call limits.
    pub resets_at: Option<DateTime<Utc>>,
    /// `observe` mode ([`crate::Ledger::record_blocked`]): audited `would_block`, and the request
    /// goes out anyway. Not part of the 402 body.
    pub observed: bool,
}

impl Denial {
    pub const CODE: &'static str = "BUDGET_EXCEEDED";
}

impl Serialize for Denial {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Body<'a> {
            code: &'static str,
            reason: DenyReason,
            agent: &'a AgentName,
            requesting_agent: &'a AgentName,
            message: &'a str,
            #[serde(with = "crate::usd")]
            requested: MicroUsd,
            #[serde(with = "crate::usd")]
            remaining: MicroUsd,
            remaining_by_period: &'a RemainingByPeriod,
            resets_at: Option<DateTime<Utc>>,
        }
        Body {
            code: Denial::CODE,
            reason: self.reason,
            agent: &self.agent,
            requesting_agent: &self.requesting_agent,
            message: &self.message,
            requested: self.requested,
            remaining: self.remaining,
            remaining_by_period: &self.remaining_by_period,
            resets_at: self.resets_at,
        }
        .serialize(s)
    }
}

/// One amount per period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PeriodAmounts {
    #[serde(with = "crate::usd")]
    pub daily: MicroUsd,
    #[serde(with = "crate::usd")]
    pub weekly: MicroUsd,
    #[serde(with = "crate::usd")]
    pub monthly: MicroUsd,
    #[serde(with = "crate::usd")]
    pub total: MicroUsd,
}

impl PeriodAmounts {
    pub fn get(&self, p: Period) -> MicroUsd {
        match p {
            Period::Daily => self.daily,
            Period::Weekly => self.weekly,
            Period::Monthly => self.monthly,
            Period::Total => self.total,
        }
    }

    pub(crate) fn slot(&mut self, p: Period) -> &mut MicroUsd {
        match p {
            Period::Daily => &mut self.daily,
            Period::Weekly => &mut self.weekly,
            Period::Monthly => &mut self.monthly,
            Period::Total => &mut self.total,
        }
    }
}

/// When the current daily, weekly and monthly periods end, in the agent's time zone (RFC 3339
/// with the zone's offset, e.g. `2026-05-04T00:00:00+02:00`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PeriodResets {
    pub daily: Option<DateTime<FixedOffset>>,
    pub weekly: Option<DateTime<FixedOffset>>,
    pub monthly: Option<DateTime<FixedOffset>>,
}

/// `status` field of [`AgentStatus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    Active,
    Paused,
    Exhausted,
    Expired,
}

/// What `spendguard status NAME --json` and `/.well-known/spendguard/budget` show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentStatus {
    pub agent: AgentName,
    /// `paused` if this agent or an ancestor is paused, else `expired` if any level has expired,
    /// else `exhausted` if some period has nothing left, else `active` (the order `reserve` checks).
    pub status: AgentState,
    /// The limits that bind this agent's own requests: its own, with `default_limits` filling
    /// what it does not set. Ancestors' limits show up in `remaining`. `webhook` is always
    /// `None` here: this status is also shown to workloads, and a webhook URL may hold a secret.
    pub limits: Limits,
    /// Settled spend of this agent and its descendants in the current periods.
    pub spent: PeriodAmounts,
    /// Reserved by requests in flight (this agent and its descendants).
    #[serde(with = "crate::usd")]
    pub reserved: MicroUsd,
    /// What this agent can still spend per period, the tightest over itself and its ancestors.
    pub remaining: RemainingByPeriod,
    pub period_resets: PeriodResets,
    pub paused: bool,
    /// The level that is paused (this agent or an ancestor).
    pub paused_by: Option<AgentName>,
    /// The egress policy in force for hosts that are not provider hosts (inherited).
    pub other_hosts: crate::limits::OtherHosts,
    /// `enforce`, or `observe` (nothing is blocked: refusals are audited as `would_block`); the
    /// nearest level that sets one decides.
    pub mode: crate::limits::Mode,
    /// The time zone of this agent's periods (its own or inherited; `UTC` by default).
    pub tz: crate::zone::Zone,
}

/// What was decided for an audited request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allowed,
    Blocked,
    /// `observe` mode: it would have been blocked (the event's `reason` says why), and went out.
    WouldBlock,
}

/// One request, as `spendguard audit` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    pub id: u64,
    pub time: DateTime<Utc>,
    pub agent: AgentName,
    pub cgroup: String,
    pub host: String,
    pub model: String,
    pub provider: String,
    pub decision: Decision,
    pub reason: Option<DenyReason>,
    /// The reservation, for allowed requests.
    pub reservation_id: Option<u64>,
    /// The request's worst-case cost.
    #[serde(with = "crate::usd")]
    pub requested: MicroUsd,
    /// What was reserved (zero when blocked).
    #[serde(with = "crate::usd")]
    pub reserved: MicroUsd,
    /// Final cost; `None` while the request is in flight (and for blocked requests).
    #[serde(rename = "cost_usd", with = "crate::usd::option")]
    pub final_cost: Option<MicroUsd>,
    pub settled_at: Option<DateTime<Utc>>,
    /// Settled by crash recovery at its reserved amount, not by a real usage report.
    pub recovered: bool,
    /// The x402 payment the request carried, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment: Option<PaymentAudit>,
    /// A delegation, not a request: what was set on `agent`, by whom.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delegation: Option<DelegationAudit>,
}

/// Which audit events to return.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// This agent and its descendants; `None` = all.
    pub agent: Option<AgentName>,
    /// Events at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// At most this many (the newest); 0 = no limit.
    pub limit: usize,
}

/// Something the webhook notifier should tell the agent's owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Notification {
    /// A budget of `agent` ran out in `period` (sent once per period).
    Exhausted { agent: AgentName, period: Period },
    /// `agent` was paused (by an operator or by `pause_on_exhaust`).
    Paused { agent: AgentName },
    /// Spending of `agent` in `period` reached `pct` percent of its budget (its
    /// `soft_threshold_pct`; sent once per period).
    Threshold {
        agent: AgentName,
        period: Period,
        pct: u8,
    },
}

impl Notification {
    pub fn agent(&self) -> &AgentName {
        match self {
            Notification::Exhausted { agent, .. }
            | Notification::Paused { agent }
            | Notification::Threshold { agent, .. } => agent,
        }
    }
}

/// A recovery hold: the node's ledger was lost or damaged and started anew, so what was spent is
/// unknown; every request is refused (`agent_paused`) until an operator has set the budgets and
/// lifts it (`spendguard recover --confirm`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub since: DateTime<Utc>,
    /// What happened, for the 402 message and `status` (e.g. "ledger.redb was damaged").
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_records_from_before_x402_still_read_and_payments_round_trip() {
        let old: AuditContext = serde_json::from_str(
            r#"{"cgroup":"/sys/fs/cgroup/a","host":"api.openai.com","model":"gpt-4o","provider":"openai"}"#,
        )
        .expect("a record written before the payment field reads");
        assert_eq!(old.payment, None);
        assert_eq!(old.delegation, None, "nor a delegation");
        assert!(
            !serde_json::to_string(&old)
                .expect("json")
                .contains("payment"),
            "no payment, no field: records stay as they were"
        );
        let paid = AuditContext {
            payment: Some(PaymentAudit {
                network: "eip155:8453".into(),
                asset: "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913".into(),
                pay_to: "0x2096".into(),
                amount: "50000".into(),
            }),
            ..old
        };
        let back: AuditContext =
            serde_json::from_str(&serde_json::to_string(&paid).expect("json")).expect("reads");
        assert_eq!(back, paid);
    }
}
