//! The metering stage: every intercepted request is priced, reserved durably, forwarded, and settled.
//!
//! ```text
//! request ─▶ route (free / priced / unpriceable) ─▶ quote (model, worst case) ─▶ reserve (all levels,
//!            durable) ─▶ forward (maybe rewritten) ─▶ watch the response (usage) ─▶ settle (real cost)
//! ```
//! On `x402_hosts` the quote is the request's x402 payment, and the settle follows the server's
//! settlement receipt ([`x402`]). An OpenAI Realtime WebSocket session reserves a slice at the
//! upgrade and is charged per `response.done` ([`realtime`]).
//!
//! Fail closed at every step: no price, no reservation, no ledger → the request does not leave the node.

pub mod delegate;
pub mod prices;
pub mod realtime;
pub mod stage;
pub mod watch;
pub mod x402;

pub use prices::Prices;
pub use stage::Metering;

/// Reserves `req` and counts it: how long the reservation took, and the request's outcome
/// (allowed, would block, blocked, ledger unavailable) by agent and provider.
pub(crate) async fn reserve_counted(
    ledger: &spendguard_ledger::Ledger,
    metrics: &crate::metrics::Metrics,
    provider: &str,
    req: spendguard_ledger::ReserveRequest,
) -> Result<spendguard_ledger::Reservation, spendguard_ledger::ReserveError> {
    use crate::metrics::Outcome;
    use spendguard_ledger::ReserveError;
    let agent = req.agent.clone();
    let reserving = std::time::Instant::now();
    let reserved = ledger.reserve(req).await;
    metrics.metering.observe_reserve(reserving.elapsed());
    let outcome = match &reserved {
        Ok(r) => match r.would_block {
            Some(reason) => Outcome::WouldBlock(reason),
            None => Outcome::Allowed,
        },
        Err(ReserveError::Denied(d)) => Outcome::Blocked(d.reason),
        Err(ReserveError::Ledger(_)) => Outcome::LedgerUnavailable,
    };
    metrics.metering.request(agent.as_str(), provider, outcome);
    reserved
}

/// Where workloads ask for their own budget (never forwarded).
pub const BUDGET_PATH: &str = "/.well-known/spendguard/budget";

/// Where a workload creates or narrows budgets below its own (never forwarded).
pub const DELEGATE_PATH: &str = "/.well-known/spendguard/delegate";
