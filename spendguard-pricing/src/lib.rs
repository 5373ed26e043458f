//! SpendGuard pricing: what an LLM request can cost at most before it is forwarded, and what it
//! really cost once the provider answered.
//!
//! * [`providers::adapter_for`] gives the [`Adapter`] of a provider (see [`ProviderId::from_host`]).
//! * [`Adapter::route`] says whether a request is free, priced or unpriceable.
//! * [`Adapter::quote`] prices a request's provable worst case against a [`PriceTable`], and may
//!   rewrite its body (an output cap; usage in streams).
//! * [`Quote::response_tap`] reads the real [`Usage`] from the response body (JSON or SSE) while
//!   forwarding it, and [`ModelPrice::cost`] turns usage into [`MicroUsd`].
//!
//! All money is integer micro-dollars; no float takes part in a cost.

#[rustfmt::skip]
#[expect(clippy::float_arithmetic, reason = "MicroUsd::as_usd_f64 is the documented display-only float edge")]
pub mod money;
pub mod eventstream;
pub mod prices;
pub mod providers;
pub mod realtime;
pub mod sse;
pub mod usage;
pub mod x402;

pub use money::MicroUsd;
pub use prices::{AudioPrice, ImagePrice, LongContextPrice, ModelPrice, PriceTable, RequestFee};
pub use providers::{
    adapter_for, Adapter, PricingError, ProviderId, Quote, QuoteOptions, Route, UsageTap,
};
pub use usage::{SearchContext, Usage};
