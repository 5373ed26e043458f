//! Watching a priced response: usage from JSON or SSE as it streams past, then the settle.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use spendguard_ledger::{Ledger, Reservation, Settled};
use spendguard_pricing::providers::{Quote, UsageTap};
use spendguard_pricing::{MicroUsd, Usage};

use crate::metrics::Metrics;
use crate::proxy::stage::{BodyEnd, ResponseWatch};

/// Backoff of a settle that met a failing disk: first wait, and the most it grows to.
const SETTLE_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(50);
const SETTLE_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(2);

pub const HDR_AGENT: &str = "x-spendguard-agent";
pub const HDR_REMAINING: &str = "x-spendguard-remaining-usd";
pub const HDR_RESERVED: &str = "x-spendguard-reserved-usd";

pub struct MeterWatch {
    pub quote: Quote,
    pub reservation: Reservation,
    pub ledger: Ledger,
    pub tap: Option<Box<dyn UsageTap>>,
    pub usage: Option<Usage>,
    pub got_head: bool,
    /// Spend and remaining budgets are recorded here after the settle.
    pub metrics: Option<Arc<Metrics>>,
    /// Settles run here, so a graceful stop can wait for them (else the next start would charge
    /// a finished request at its worst case).
    pub settles: Option<tokio_util::task::TaskTracker>,
}

impl MeterWatch {
    pub fn new(quote: Quote, reservation: Reservation, ledger: Ledger) -> MeterWatch {
        MeterWatch {
            quote,
            reservation,
            ledger,
            tap: None,
            usage: None,
            got_head: false,
            metrics: None,
            settles: None,
        }
    }

    pub fn with_settles(mut self, settles: tokio_util::task::TaskTracker) -> MeterWatch {
        self.settles = Some(settles);
        self
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> MeterWatch {
        self.metrics = Some(metrics);
        self
    }
}

/// Dollars for a header: "unlimited" when nothing limits the agent.
pub fn usd_header(m: MicroUsd) -> HeaderValue {
    if m == MicroUsd::MAX {
        return HeaderValue::from_static("unlimited");
    }
    let s = m.to_string();
    HeaderValue::from_str(s.trim_start_matches('$'))
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// `x-spendguard-agent`, `-remaining-usd` and `-reserved-usd` of an allowed, reserved request.
pub fn budget_headers(headers: &mut http::HeaderMap, r: &Reservation) {
    if let Ok(v) = HeaderValue::from_str(r.agent.as_str()) {
        headers.insert(HeaderName::from_static(HDR_AGENT), v);
    }
    headers.insert(
        HeaderName::from_static(HDR_REMAINING),
        usd_header(r.remaining),
    );
    headers.insert(HeaderName::from_static(HDR_RESERVED), usd_header(r.amount));
}

impl ResponseWatch for MeterWatch {
    fn on_head(&mut self, head: &mut http::response::Parts) {
        self.got_head = true;
        self.tap = Some(
            self.quote
                .response_tap_for(head.status.as_u16(), &head.headers),
        );
        budget_headers(&mut head.headers, &self.reservation);
        if self.quote.stream {
            // The tap may drop an injected usage chunk; a stated length would then be wrong.
            head.headers.remove(http::header::CONTENT_LENGTH);
        }
    }

    fn on_data(&mut self, chunk: Bytes) -> Bytes {
        match self.tap.as_mut() {
            Some(t) => t.on_chunk(&chunk),
            None => chunk,
        }
    }

    fn on_eof(&mut self) -> Bytes {
        match self.tap.as_mut() {
            Some(t) => {
                let (rest, usage) = t.finish();
                self.usage = usage;
                rest
            }
            None => Bytes::new(),
        }
    }

    fn on_end(mut self: Box<Self>, end: BodyEnd, upstream_error: Option<&str>) {
        if end == BodyEnd::Aborted && self.usage.is_none() {
            // A stream cut short still counts its usage if the final usage event had arrived.
            if let Some(t) = self.tap.as_mut() {
                self.usage = t.finish().1;
            }
        }
        // No usage (or no response at all) → the reservation stands as the charge: a charge is never
        // lost, and an upstream failure after the request was sent may still have been billed.
        let cost = match &self.usage {
            Some(u) => self.quote.price.cost(u),
            None => self.reservation.amount,
        };
        if cost > self.reservation.amount {
            tracing::warn!(
                agent = %self.reservation.agent, model = %self.quote.model,
                reserved = %self.reservation.amount, cost = %cost,
                "real cost above the worst case: the bound for this request shape is wrong"
            );
        }
        tracing::debug!(
            agent = %self.reservation.agent, model = %self.quote.model, reserved = %self.reservation.amount,
            cost = %cost, usage = ?self.usage, end = ?end, upstream_error, "settling"
        );
        Settle {
            ledger: self.ledger.clone(),
            id: self.reservation.id,
            cost,
            model: std::mem::take(&mut self.quote.model),
            metrics: self.metrics.clone(),
            settles: self.settles.clone(),
        }
        .spawn();
    }
}

/// A reservation's final charge, written in the background once the response is over (token
/// usage, an x402 receipt, or nothing: then the reservation itself).
pub struct Settle {
    pub ledger: Ledger,
    pub id: u64,
    /// What to charge (zero releases the reservation).
    pub cost: MicroUsd,
    /// The `model` label of the spend metric.
    pub model: String,
    pub metrics: Option<Arc<Metrics>>,
    pub settles: Option<tokio_util::task::TaskTracker>,
}

impl Settle {
    /// Settles a carved request right here (see [`Ledger::settle_now`]); anything else runs on
    /// the tracker (a graceful stop waits for it), retrying while the ledger's disk fails.
    pub fn spawn(self) {
        let Settle {
            ledger,
            id,
            cost,
            model,
            metrics,
            settles,
        } = self;
        match ledger.settle_now(id, cost) {
            Some(Ok(s)) => return settled(&ledger, &s, &model, metrics.as_deref()),
            Some(Err(e)) => {
                return tracing::error!(
                    "settling reservation {id} failed: {e}; it stays reserved until the next \
                     start charges it in full"
                )
            }
            None => {}
        }
        let settle = async move {
            let mut delay = SETTLE_RETRY_FIRST;
            let mut failures = 0u32;
            loop {
                match ledger.settle(id, cost).await {
                    Ok(s) => {
                        if failures > 0 {
                            tracing::info!(
                                reservation = id,
                                attempts = failures + 1,
                                "settled after the ledger could write again"
                            );
                        }
                        return settled(&ledger, &s, &model, metrics.as_deref());
                    }
                    // The disk is full or failing: the reservation stays held (the budget is
                    // never short of it) and the real cost lands once the disk is back, instead
                    // of the worst case at the next start. A stop ends the retries: then the
                    // next start charges the reservation in full.
                    Err(e) if e.is_transient() => {
                        if failures == 0 {
                            tracing::warn!(
                                "settling reservation {id} failed: {e}; it stays reserved, retrying"
                            );
                        }
                        failures += 1;
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(SETTLE_RETRY_MAX);
                    }
                    Err(e) => {
                        tracing::error!(
                            "settling reservation {id} failed: {e}; it stays reserved until the \
                             next start charges it in full"
                        );
                        return;
                    }
                }
            }
        };
        match &settles {
            Some(t) => drop(t.spawn(settle)),
            None => drop(tokio::spawn(settle)),
        }
    }
}

/// The spend metrics of a settled request.
fn settled(ledger: &Ledger, s: &Settled, model: &str, metrics: Option<&Metrics>) {
    if let Some(m) = metrics {
        let status = ledger.status(&s.agent);
        m.metering
            .settled(s.agent.as_str(), model, s.charged, &status);
    }
}

/// Adds `x-spendguard-agent` to free (unmetered) responses.
pub struct FreeWatch {
    pub agent: String,
}

impl ResponseWatch for FreeWatch {
    fn on_head(&mut self, head: &mut http::response::Parts) {
        if let Ok(v) = HeaderValue::from_str(&self.agent) {
            head.headers.insert(HeaderName::from_static(HDR_AGENT), v);
        }
    }
}
