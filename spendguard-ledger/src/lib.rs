//! SpendGuard's budget ledger.
//!
//! Every LLM request reserves its worst-case cost **durably** (a redb commit with immediate
//! durability) at its agent and every ancestor before it is forwarded, and settles to the real
//! cost afterwards. Decisions are made by one committer thread against an in-memory mirror of the
//! database, so concurrent requests can never overshoot a limit; the committer writes everything
//! that queued up during the previous commit in one transaction (group commit).
//!
//! Money is [`MicroUsd`] (integer micro-dollars) throughout; JSON shows dollars.
//!
//! With a cluster store ([`LedgerOptions::cluster`], see [`cluster`]) budgets are one across
//! every node: slices are leased from the store, the request path stays in memory.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use spendguard_ledger::*;
//! let ledger = Ledger::open("/var/lib/spendguard/ledger.redb", LedgerOptions::default())?;
//! let agent: AgentName = "acme.research".parse()?;
//! ledger.set_limits(&agent, LimitsPatch::default().set(LimitKind::Daily, Some(MicroUsd::from_usd(5)))).await?;
//! match ledger.reserve(ReserveRequest { agent, amount: MicroUsd(50_000), audit: AuditContext::default() }).await {
//!     Ok(r) => { /* forward, then: */ ledger.settle(r.id, MicroUsd(12_000)).await?; }
//!     Err(ReserveError::Denied(d)) => { /* 402 with serde_json::to_value(&d) */ }
//!     Err(ReserveError::Ledger(e)) => { /* fail closed: do not forward */ return Err(e.into()) }
//! }
//! # Ok(()) }
//! ```

mod agent;
mod clock;
pub mod cluster;
mod committer;
mod error;
mod lease;
mod ledger;
mod limits;
mod meter;
pub use spendguard_pricing::money;
mod notify;
mod outbox;
mod period;
mod state;
mod store;
mod types;
pub mod usd;
mod zone;

pub use agent::{AgentName, AgentNameError};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{LedgerError, ReserveError};
pub use ledger::{Ledger, LedgerOptions};
pub use limits::{LimitKind, Limits, LimitsPatch, Mode, OtherHosts, DEFAULT_SOFT_THRESHOLD_PCT};
pub use money::MicroUsd;
pub use period::Period;
pub use types::{
    AgentState, AgentStatus, AuditContext, AuditEvent, AuditFilter, Decision, DelegationAudit,
    Denial, DenyReason, Hold, Notification, PaymentAudit, PeriodAmounts, PeriodResets,
    RemainingByPeriod, Reservation, ReserveRequest, Settled,
};
pub use zone::{Zone, ZoneError};

#[cfg(test)]
mod internal_tests;
