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

/// Where workloads ask for their own budget (never forwarded).
pub const BUDGET_PATH: &str = "/.well-known/spendguard/budget";

/// Where a workload creates or narrows budgets below its own (never forwarded).
pub const DELEGATE_PATH: &str = "/.well-known/spendguard/delegate";
