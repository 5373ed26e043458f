//! Egress policy: what a tagged connection gets when the router would pass it through (its SNI is
//! not a provider host, it has no SNI, or it is not TLS at all).
//!
//! An agent whose `other_hosts` policy (own, inherited, or `default_limits`) is `deny` may only
//! reach provider hosts (intercepted and metered) and the hosts in `allowed_hosts` (passed
//! through). Anything else is closed before the proxy ever connects to the destination, so not a
//! byte reaches it: a TLS client gets a fatal `access_denied` alert after its ClientHello (so it
//! reports a clear error instead of a reset), anything else is just closed. Each such connection is
//! audited as `blocked` / `host_not_allowed` and counted in `spendguard_requests_total`.
//!
//! Why this exists: without it a tagged workload can call any LLM API SpendGuard does not know
//! (a new provider, a self-hosted model behind TLS) and spend money nobody limits.

use std::sync::Arc;
use std::time::Duration;

use spendguard_ledger::{AuditContext, DenyReason, Ledger, OtherHosts};
use spendguard_pricing::MicroUsd;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::route::HostList;
use super::Inbound;
use crate::metrics::{Metrics, Outcome};

/// The `provider` label of connections refused by the egress policy.
pub const METRICS_PROVIDER: &str = crate::metrics::labels::OTHER_HOST;

/// A TLS 1.2-framed fatal `access_denied` (49) alert: a record any TLS client can read before the
/// handshake has gone further than its ClientHello.
pub const ACCESS_DENIED_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 49];

/// After the alert the client's remaining bytes are read (and dropped) this long, so the close is
/// a FIN, not a reset that could discard the alert before the client reads it.
const LINGER: Duration = Duration::from_millis(500);

/// The allow list and where the policy and audit live.
pub struct Egress {
    allowed: HostList,
    ledger: Ledger,
    metrics: Arc<Metrics>,
}

impl Egress {
    pub fn new<S: AsRef<str>>(
        allowed_hosts: &[S],
        ledger: Ledger,
        metrics: Arc<Metrics>,
    ) -> Egress {
        Egress {
            allowed: HostList::new(allowed_hosts),
            ledger,
            metrics,
        }
    }

    /// Whether a non-intercepted connection of `inbound`'s agent to `sni` (`None`: no SNI, or
    /// not TLS) may be passed through. Memory only.
    pub fn allows(&self, inbound: &Inbound, sni: Option<&str>) -> bool {
        if sni.is_some_and(|h| self.allowed.matches(h)) {
            return true;
        }
        self.ledger.other_hosts(&inbound.identity.agent) == OtherHosts::Allow
    }

    /// Refuses the connection: audit (durable before the client learns anything), metrics, then
    /// an alert for TLS and a close. Never connects to the destination.
    pub async fn refuse(&self, mut inbound: Inbound, sni: Option<&str>, first_bytes: &[u8]) {
        let agent = inbound.identity.agent.clone();
        let host = sni
            .map(str::to_string)
            .unwrap_or_else(|| inbound.orig_dst.ip().to_string());
        tracing::info!(%host, "closing a connection to a host the agent may not reach (other_hosts = deny)");
        let ctx = AuditContext {
            cgroup: inbound.identity.tagged_cgroup.display().to_string(),
            host,
            model: String::new(),
            provider: String::new(),
            payment: None,
            delegation: None,
        };
        if let Err(e) = self
            .ledger
            .record_blocked(
                agent.clone(),
                DenyReason::HostNotAllowed,
                MicroUsd::ZERO,
                ctx,
            )
            .await
        {
            tracing::warn!("could not audit a connection refused by the egress policy: {e}");
        }
        self.metrics.metering.request(
            agent.as_str(),
            METRICS_PROVIDER,
            Outcome::Blocked(DenyReason::HostNotAllowed),
        );
        if first_bytes.first() == Some(&super::route::TLS_HANDSHAKE) {
            let s = &mut inbound.stream;
            if s.write_all(&ACCESS_DENIED_ALERT).await.is_ok() && s.shutdown().await.is_ok() {
                let mut sink = [0u8; 4096];
                let _ = tokio::time::timeout(LINGER, async {
                    while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                })
                .await;
            }
        }
    }
}
