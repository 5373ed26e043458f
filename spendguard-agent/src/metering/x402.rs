//! x402 payments on `x402_hosts`: a request that carries a payment (`X-PAYMENT` v1,
//! `PAYMENT-SIGNATURE` v2) is priced at what the payment pays, reserved before it leaves the node,
//! and settled by the server's receipt.
//!
//! ```text
//! paid request ─▶ decode payment ─▶ asset (v2: named; v1: from the host's 402 challenge) ─▶ USD
//!   (USDC 1 unit = 1 µUSD; else x402_assets) ─▶ reserve ─▶ forward untouched ─▶ receipt?
//!     success → charge the payment · no receipt / success=false → release
//!     no response at all, or a receipt that cannot be read → charge (the money may have moved)
//! unpaid request ─▶ forwarded free; a v1 402 challenge's `accepts[]` is remembered (host,
//!   network, payTo → asset) so the paid retry can be priced
//! ```
//!
//! The payment header is never changed (it is signed), and neither is the body; the response's
//! encoding is left alone (nothing is read from a paid response's body).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::Request;
use spendguard_ledger::{AuditContext, DenyReason, Ledger, MicroUsd, PaymentAudit, Reservation};
use spendguard_pricing::x402::{
    decode_requirements_v1, receipt_from_headers, Payment, PaymentError, RateError, Rates,
    RequirementV1, MAX_CHALLENGE_BODY,
};

use super::stage::Metering;
use super::watch::{budget_headers, Settle, HDR_AGENT};
use crate::metrics::{Metrics, Outcome};
use crate::proxy::body::Body;
use crate::proxy::route::HostList;
use crate::proxy::stage::{BodyEnd, Decision, RequestContext, ResponseWatch};

/// The `provider` (metrics, audit) and `model` (spend metric, audit) of x402 payments: one label
/// value each, however many assets and recipients there are.
pub const X402_LABEL: &str = "x402";

/// v1 challenges remembered at most; when full, the map starts over (a forgotten challenge costs
/// one more unpaid round-trip, never an unpriced payment).
const MAX_CHALLENGES: usize = 4096;

/// (host, network, pay-to), lowercase: where a v1 challenge said to pay.
type ChallengeKey = (String, String, String);

/// The x402 settings of the metering stage.
pub struct X402 {
    hosts: HostList,
    any: bool,
    rates: Rates,
    /// The assets of each v1 payment target, as this host's latest 402 challenge named them.
    challenges: Mutex<HashMap<ChallengeKey, Vec<String>>>,
}

impl X402 {
    pub fn new<S: AsRef<str>>(hosts: &[S], rates: Rates) -> X402 {
        X402 {
            hosts: HostList::new(hosts),
            any: !hosts.is_empty(),
            rates,
            challenges: Mutex::new(HashMap::new()),
        }
    }

    /// No x402 host: nothing is treated as a payment.
    pub fn none() -> X402 {
        X402::new::<&str>(&[], Rates::default())
    }

    pub fn matches(&self, host: &str) -> bool {
        self.any && self.hosts.matches(host)
    }

    fn key(host: &str, network: &str, pay_to: &str) -> ChallengeKey {
        (
            host.to_ascii_lowercase(),
            network.to_ascii_lowercase(),
            pay_to.to_ascii_lowercase(),
        )
    }

    /// Remembers what `host`'s v1 challenge asked to be paid in (replacing what an earlier
    /// challenge said for the same target).
    pub fn learn(&self, host: &str, requirements: &[RequirementV1]) {
        let mut seen: HashMap<ChallengeKey, Vec<String>> = HashMap::new();
        for r in requirements {
            let assets = seen
                .entry(Self::key(host, &r.network, &r.pay_to))
                .or_default();
            if !assets.contains(&r.asset) {
                assets.push(r.asset.clone());
            }
        }
        let mut map = self.challenges.lock().unwrap_or_else(|e| e.into_inner());
        for (key, assets) in seen {
            if map.len() >= MAX_CHALLENGES {
                map.clear();
            }
            map.insert(key, assets);
        }
    }

    /// The assets `p` may pay in: the one a v2 payment names; for v1 (whose payload does not
    /// say), every asset `host`'s challenge offered for that network and recipient. Empty: unknown.
    pub fn assets_of(&self, host: &str, p: &Payment) -> Vec<String> {
        if let Some(a) = &p.asset {
            return vec![a.clone()];
        }
        let map = self.challenges.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&Self::key(host, &p.network, &p.pay_to))
            .cloned()
            .unwrap_or_default()
    }

    /// The price of `p` paid in one of `assets` (not empty): the dearest reading, so a v1 payment
    /// whose challenge offered several assets is never priced below what it may move. An asset
    /// without a rate makes the payment unpriceable.
    pub fn price(&self, p: &Payment, assets: &[String]) -> Result<(String, MicroUsd), RateError> {
        let mut dearest: Option<(String, MicroUsd)> = None;
        for a in assets {
            let m = self.rates.price(&p.network, a, p.amount)?;
            if dearest.as_ref().is_none_or(|(_, d)| m > *d) {
                dearest = Some((a.clone(), m));
            }
        }
        dearest.ok_or_else(|| RateError::NoRate {
            network: p.network.clone(),
            asset: String::new(),
        })
    }
}

fn audit_ctx(ctx: &RequestContext, payment: Option<PaymentAudit>) -> AuditContext {
    AuditContext {
        cgroup: ctx.identity.tagged_cgroup.display().to_string(),
        host: ctx.sni.clone(),
        model: X402_LABEL.to_string(),
        provider: X402_LABEL.to_string(),
        payment,
        delegation: None,
    }
}

impl Metering {
    /// A request to an x402 host that carries a payment: price, reserve, forward as signed.
    pub(super) async fn decide_x402(
        &self,
        ctx: &RequestContext,
        req: Request<Body>,
        payment: Result<Payment, PaymentError>,
    ) -> Decision {
        let p = match payment {
            Ok(p) => p,
            Err(e) => {
                let why = format!("the x402 payment cannot be read: {e}");
                return self
                    .block(
                        ctx,
                        DenyReason::UnpricedRequest,
                        MicroUsd::ZERO,
                        audit_ctx(ctx, None),
                        &why,
                        req,
                    )
                    .await;
            }
        };
        let assets = self.x402.assets_of(&ctx.sni, &p);
        if assets.is_empty() {
            let why = format!(
                "this v1 payment (X-PAYMENT) does not name its asset, and no 402 challenge from {} \
                 named one for {} on {}; send the request without X-PAYMENT first, then pay",
                ctx.sni, p.pay_to, p.network
            );
            let audit = audit_ctx(
                ctx,
                Some(PaymentAudit {
                    network: p.network.clone(),
                    asset: String::new(),
                    pay_to: p.pay_to.clone(),
                    amount: p.amount.to_string(),
                }),
            );
            return self
                .block(
                    ctx,
                    DenyReason::UnpricedRequest,
                    MicroUsd::ZERO,
                    audit,
                    &why,
                    req,
                )
                .await;
        }
        let mut named = PaymentAudit {
            network: p.network.clone(),
            asset: assets.join(" | "),
            pay_to: p.pay_to.clone(),
            amount: p.amount.to_string(),
        };
        let price = match self.x402.price(&p, &assets) {
            Ok((asset, m)) => {
                named.asset = asset;
                m
            }
            Err(e) => {
                let why = format!("x402 payment: {e}");
                return self
                    .block(
                        ctx,
                        DenyReason::UnpricedRequest,
                        MicroUsd::ZERO,
                        audit_ctx(ctx, Some(named)),
                        &why,
                        req,
                    )
                    .await;
            }
        };
        let reservation = match self
            .reserve(ctx, X402_LABEL, price, audit_ctx(ctx, Some(named.clone())))
            .await
        {
            Ok(r) => r,
            Err(refused) => {
                super::stage::drain(req).await;
                return refused;
            }
        };
        Decision::Forward {
            request: req,
            watch: Box::new(PaymentWatch {
                reservation,
                ledger: self.ledger.clone(),
                metrics: Some(self.metrics.clone()),
                settles: Some(self.settles.clone()),
                payment: named,
                outcome: Paid::NoResponse,
            }),
        }
    }

    /// A request to an x402 host without a payment: free (it is how a client learns the price);
    /// a v1 402 challenge in its response is read for the assets it names.
    pub(super) fn forward_unpaid(&self, ctx: &RequestContext, mut req: Request<Body>) -> Decision {
        // The challenge body must be readable to learn a v1 asset; this request carries no
        // signature, so asking for it uncompressed changes nothing the server checks.
        req.headers_mut().insert(
            http::header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        self.metrics
            .metering
            .request(ctx.identity.agent.as_str(), X402_LABEL, Outcome::Free);
        Decision::Forward {
            request: req,
            watch: Box::new(ChallengeWatch {
                agent: ctx.identity.agent.to_string(),
                host: ctx.sni.clone(),
                x402: self.x402.clone(),
                body: None,
            }),
        }
    }
}

/// What the server said about a paid request's payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Paid {
    /// No response head (the upstream failed after the request may have left): charged, since
    /// the server may have settled the payment before it failed.
    NoResponse,
    /// A receipt with `success: true` and this transaction: charged.
    Settled(String),
    /// A response without a receipt: the payment was not settled; released.
    NoReceipt,
    /// A receipt with `success: false`: released.
    Failed(Option<String>),
    /// A receipt header that cannot be read: charged (it may say the money moved).
    Unreadable(String),
}

impl Paid {
    /// Whether the payment counts as spent.
    pub fn charged(&self) -> bool {
        matches!(
            self,
            Paid::NoResponse | Paid::Settled(_) | Paid::Unreadable(_)
        )
    }
}

/// Watches a paid request's response for the settlement receipt, then charges or releases.
pub struct PaymentWatch {
    pub reservation: Reservation,
    pub ledger: Ledger,
    pub metrics: Option<Arc<Metrics>>,
    pub settles: Option<tokio_util::task::TaskTracker>,
    pub payment: PaymentAudit,
    pub outcome: Paid,
}

impl ResponseWatch for PaymentWatch {
    fn on_head(&mut self, head: &mut http::response::Parts) {
        self.outcome = match receipt_from_headers(&head.headers) {
            None => Paid::NoReceipt,
            Some(Ok(r)) if r.success => Paid::Settled(r.transaction),
            Some(Ok(r)) => Paid::Failed(r.error_reason),
            Some(Err(e)) => Paid::Unreadable(e.to_string()),
        };
        budget_headers(&mut head.headers, &self.reservation);
    }

    fn on_end(self: Box<Self>, end: BodyEnd, upstream_error: Option<&str>) {
        let cost = if self.outcome.charged() {
            self.reservation.amount
        } else {
            MicroUsd::ZERO
        };
        let p = &self.payment;
        match &self.outcome {
            Paid::Settled(tx) => tracing::info!(
                agent = %self.reservation.agent, network = %p.network, asset = %p.asset,
                pay_to = %p.pay_to, amount = %p.amount, transaction = %tx, cost = %cost,
                "x402 payment settled"
            ),
            Paid::NoResponse | Paid::Unreadable(_) => tracing::warn!(
                agent = %self.reservation.agent, network = %p.network, pay_to = %p.pay_to,
                amount = %p.amount, outcome = ?self.outcome, upstream_error, cost = %cost,
                "x402 payment outcome unknown: charged, since the server may have settled it"
            ),
            Paid::NoReceipt | Paid::Failed(_) => tracing::info!(
                agent = %self.reservation.agent, network = %p.network, pay_to = %p.pay_to,
                amount = %p.amount, outcome = ?self.outcome, ?end,
                "x402 payment not settled: reservation released"
            ),
        }
        Settle {
            ledger: self.ledger,
            id: self.reservation.id,
            cost,
            model: X402_LABEL.to_string(),
            metrics: self.metrics,
            settles: self.settles,
        }
        .spawn();
    }
}

/// Watches an unpaid request's response: a v1 402 challenge is read for its `accepts[]`.
pub struct ChallengeWatch {
    pub agent: String,
    pub host: String,
    pub x402: Arc<X402>,
    /// The 402 body read so far (`None`: not a challenge worth reading).
    pub body: Option<BytesMut>,
}

impl ResponseWatch for ChallengeWatch {
    fn on_head(&mut self, head: &mut http::response::Parts) {
        if let Ok(v) = HeaderValue::from_str(&self.agent) {
            head.headers.insert(HeaderName::from_static(HDR_AGENT), v);
        }
        let identity = head
            .headers
            .get(http::header::CONTENT_ENCODING)
            .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if head.status == http::StatusCode::PAYMENT_REQUIRED && identity {
            self.body = Some(BytesMut::new());
        }
    }

    fn on_data(&mut self, chunk: Bytes) -> Bytes {
        if let Some(b) = &mut self.body {
            if b.len() + chunk.len() > MAX_CHALLENGE_BODY {
                self.body = None;
            } else {
                b.extend_from_slice(&chunk);
            }
        }
        chunk
    }

    fn on_end(self: Box<Self>, end: BodyEnd, _upstream_error: Option<&str>) {
        if let (Some(body), BodyEnd::Complete) = (self.body, end) {
            let requirements = decode_requirements_v1(&body);
            if !requirements.is_empty() {
                tracing::debug!(host = %self.host, n = requirements.len(), "x402 v1 challenge remembered");
                self.x402.learn(&self.host, &requirements);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_assets_come_from_the_same_hosts_challenge() {
        let x = X402::new(&["tools.example", "*.paid.example"], Rates::default());
        assert!(x.matches("tools.example") && x.matches("a.paid.example"));
        assert!(!x.matches("api.openai.com"));
        assert!(!X402::none().matches("tools.example"));
        let p = Payment {
            version: 1,
            header: "x-payment",
            scheme: "exact".into(),
            network: "base".into(),
            asset: None,
            pay_to: "0xAbC".into(),
            payer: None,
            amount: 5,
        };
        assert!(x.assets_of("tools.example", &p).is_empty());
        x.learn(
            "Tools.Example",
            &[RequirementV1 {
                scheme: "exact".into(),
                network: "Base".into(),
                pay_to: "0xabc".into(),
                asset: "0xUSDC".into(),
                max_amount_required: None,
            }],
        );
        assert_eq!(x.assets_of("tools.example", &p), ["0xUSDC"]);
        assert!(
            x.assets_of("other.paid.example", &p).is_empty(),
            "another host's challenge vouches for nothing"
        );
        let named = Payment {
            asset: Some("0xNAMED".into()),
            ..p
        };
        assert_eq!(x.assets_of("x.example", &named), ["0xNAMED"]);
    }

    #[test]
    fn a_v1_challenge_offering_several_assets_prices_at_the_dearest() {
        use spendguard_pricing::x402::AssetRate;
        let usdc = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
        let wbtc = "0x00000000000000000000000000000000000000b7";
        let x = X402::new(
            &["tools.example"],
            Rates::new(vec![AssetRate {
                network: "base-sepolia".into(),
                asset: wbtc.into(),
                decimals: 8,
                usd_per_token: MicroUsd(100_000_000_000), // $100,000 a coin: 1 unit = $0.001
            }]),
        );
        let req = |asset: &str| RequirementV1 {
            scheme: "exact".into(),
            network: "base-sepolia".into(),
            pay_to: "0xpay".into(),
            asset: asset.into(),
            max_amount_required: None,
        };
        x.learn("tools.example", &[req(usdc), req(wbtc), req(usdc)]);
        let p = Payment {
            version: 1,
            header: "x-payment",
            scheme: "exact".into(),
            network: "base-sepolia".into(),
            asset: None,
            pay_to: "0xPAY".into(),
            payer: None,
            amount: 100_000,
        };
        let assets = x.assets_of("tools.example", &p);
        assert_eq!(
            assets,
            [usdc, wbtc],
            "deduplicated, in the challenge's order"
        );
        // 100,000 units: $0.10 as USDC, $100 as WBTC — the payment is priced at $100.
        assert_eq!(
            x.price(&p, &assets),
            Ok((wbtc.to_string(), MicroUsd(100_000_000)))
        );
        // A later challenge replaces the earlier one; an asset without a rate is unpriceable.
        x.learn("tools.example", &[req(usdc), req("0xnorate")]);
        let assets = x.assets_of("tools.example", &p);
        assert!(matches!(
            x.price(&p, &assets),
            Err(RateError::NoRate { .. })
        ));
        assert!(x.price(&p, &[]).is_err(), "no asset, no price");
    }

    #[test]
    fn only_a_successful_receipt_or_an_unknown_outcome_is_charged() {
        assert!(Paid::Settled("0x1".into()).charged());
        assert!(Paid::NoResponse.charged());
        assert!(Paid::Unreadable("x".into()).charged());
        assert!(!Paid::NoReceipt.charged());
        assert!(!Paid::Failed(None).charged());
    }
}
