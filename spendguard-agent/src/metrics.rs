//! Prometheus metrics (prometheus-client, OpenMetrics text) and the `/metrics` endpoint.
//!
//! One [`Metrics`] holds a section per subsystem ([`ProxyMetrics`], [`MeteringMetrics`],
//! [`NotifyMetrics`]), all registered under the `spendguard_` prefix:
//!
//! | family | labels | where it is recorded |
//! |---|---|---|
//! | `spendguard_requests_total` | agent, provider, decision, reason | the metering stage's decision |
//! | `spendguard_spend_usd_total` | agent, model | after each settle (the real cost) |
//! | `spendguard_remaining_budget_usd` | agent, period | after each settle, and for every agent the ledger knows every [`BUDGET_REFRESH`], from `Ledger::status` |
//! | `spendguard_spent_usd` | agent, period | with `remaining_budget_usd`: settled spend of the agent's subtree in the period |
//! | `spendguard_budget_limit_usd` | agent, period | with `remaining_budget_usd`: the agent's own limit (its own or `default_limits`) |
//! | `spendguard_added_latency_seconds` | — | proxy: request received → sent upstream |
//! | `spendguard_open_connections` | — | proxy: accepted connections still open |
//! | `spendguard_ledger_commit_seconds` | — | metering: durable `Ledger::reserve` calls |
//! | `spendguard_webhooks_total` | event, result | the webhook notifier |
//!
//! Label sets are bounded ([`labels`]): agent names come from tags (and at most
//! [`labels::MAX_AGENT_LABELS`] of them), models from the price table (any other name is `other`),
//! providers from the adapter set, and decision / reason / period / event / result from closed
//! enums. Finding a request's label values allocates nothing and takes no lock (the families' own
//! read lock is prometheus-client's; the `top` window in [`crate::activity`] still takes its
//! mutex). Dollars are `f64` here, for display only: the ledger itself never holds money as a
//! float.

pub mod labels;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use spendguard_ledger::{AgentStatus, DenyReason, Period};
use spendguard_pricing::MicroUsd;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What `/metrics` answers with (the OpenMetrics text format prometheus-client writes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Every family starts with this (plus `_`).
pub const PREFIX: &str = "spendguard";
/// A scrape must send its request head within this time (a stuck client holds no task forever).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the budget gauges of every agent the ledger knows are read again, so they follow
/// period resets, `limit set` and other nodes' spend while an agent sends nothing.
pub const BUDGET_REFRESH: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot serve metrics on {addr}: {source} (is another agent running? set SPENDGUARD_METRICS to a free address)")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Every metric of the agent. Create one, share it as `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    pub proxy: ProxyMetrics,
    pub metering: MeteringMetrics,
    pub notify: NotifyMetrics,
    /// Why the node cannot take new budget now (`/readyz`); unset = always ready.
    readiness: std::sync::OnceLock<Readiness>,
}

/// `None` when ready, else the reason (e.g. the cluster store is unreachable).
pub type Readiness = Box<dyn Fn() -> Option<String> + Send + Sync>;

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let proxy = ProxyMetrics::register(&mut registry);
        let metering = MeteringMetrics::register(&mut registry);
        let notify = NotifyMetrics::register(&mut registry);
        Metrics {
            registry,
            proxy,
            metering,
            notify,
            readiness: std::sync::OnceLock::new(),
        }
    }

    /// Sets what `/readyz` asks (once; later calls are ignored).
    pub fn set_readiness(&self, f: Readiness) {
        let _ = self.readiness.set(f);
    }

    fn not_ready(&self) -> Option<String> {
        self.readiness.get().and_then(|f| f())
    }

    /// The whole exposition, `# EOF` included.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Dollars for display (metrics only; money itself stays integer micro-dollars).
fn usd(m: MicroUsd) -> f64 {
    m.0 as f64 / MicroUsd::PER_USD as f64
}

// ---------------------------------------------------------------------------------------------
// Proxy

/// The transparent proxy's own cost: connections and the latency it adds.
pub struct ProxyMetrics {
    open_connections: Gauge,
    added_latency: Histogram,
}

impl ProxyMetrics {
    fn register(r: &mut Registry) -> ProxyMetrics {
        let open_connections = Gauge::default();
        r.register(
            "open_connections",
            "Redirected connections the proxy holds open",
            open_connections.clone(),
        );
        // 0.5 ms … ~8 s: priced requests wait for a durable ledger commit.
        let added_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 15));
        r.register(
            "added_latency_seconds",
            "Time from an intercepted request's arrival to its sending upstream (the proxy's own overhead: pricing, reservation)",
            added_latency.clone(),
        );
        ProxyMetrics {
            open_connections,
            added_latency,
        }
    }

    /// Counts a connection as open until the returned guard is dropped.
    pub fn connection_opened(&self) -> OpenConnection {
        self.open_connections.inc();
        OpenConnection(self.open_connections.clone())
    }

    pub fn observe_added_latency(&self, d: Duration) {
        self.added_latency.observe(d.as_secs_f64());
    }
}

/// Decrements `open_connections` on drop.
#[must_use = "the connection counts as open only while this guard lives"]
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

// ---------------------------------------------------------------------------------------------
// Metering

// Label values are interned `Arc<str>`s or `&'static str`s (see `labels`): building a key to look
// a series up clones reference counts, never strings.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    agent: Arc<str>,
    provider: &'static str,
    decision: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SpendLabels {
    agent: Arc<str>,
    model: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabels {
    agent: Arc<str>,
    period: &'static str,
}

/// What the metering stage decided for one request (the `decision` and `reason` labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Priced, reserved and forwarded.
    Allowed,
    /// An endpoint that costs nothing (model lists, …): forwarded unpriced.
    Free,
    /// Refused with HTTP 402 for this reason.
    Blocked(DenyReason),
    /// `observe` mode: would have been refused for this reason, and was forwarded.
    WouldBlock(DenyReason),
    /// Refused because the ledger could not record the reservation (HTTP 503).
    LedgerUnavailable,
    /// The request body could not be read (HTTP 400).
    BadRequest,
}

impl Outcome {
    /// `(decision, reason)`.
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            Outcome::Allowed => ("allowed", "none"),
            Outcome::Free => ("allowed", "free"),
            Outcome::Blocked(r) => ("blocked", r.as_str()),
            Outcome::WouldBlock(r) => ("would_block", r.as_str()),
            Outcome::LedgerUnavailable => ("error", "ledger_unavailable"),
            Outcome::BadRequest => ("error", "bad_request"),
        }
    }
}

/// Requests, spend and budgets as the metering stage sees them.
pub struct MeteringMetrics {
    requests: Family<RequestLabels, Counter>,
    spend_usd: Family<SpendLabels, Counter<f64, AtomicU64>>,
    remaining_budget_usd: Family<BudgetLabels, Gauge<f64, AtomicU64>>,
    spent_usd: Family<BudgetLabels, Gauge<f64, AtomicU64>>,
    budget_limit_usd: Family<BudgetLabels, Gauge<f64, AtomicU64>>,
    ledger_commit: Histogram,
    agents: labels::AgentLabels,
    models: Arc<labels::ModelLabels>,
    /// The last minute per agent, for `spendguard top` (not exported).
    pub activity: crate::activity::Activity,
}

impl MeteringMetrics {
    fn register(r: &mut Registry) -> MeteringMetrics {
        let requests = Family::default();
        r.register(
            "requests",
            "Intercepted provider requests by agent, provider, decision (allowed/blocked/would_block/error) and reason",
            requests.clone(),
        );
        let spend_usd = Family::default();
        r.register(
            "spend_usd",
            "Settled spend in USD by agent and model (the real cost of each request)",
            spend_usd.clone(),
        );
        let remaining_budget_usd = Family::default();
        r.register(
            "remaining_budget_usd",
            "USD an agent can still spend per period, tightest over it and its ancestors (absent: unlimited); updated after each settle",
            remaining_budget_usd.clone(),
        );
        let spent_usd = Family::default();
        r.register(
            "spent_usd",
            "USD the agent and its descendants spent in the current period, for each period with a limit at some level; updated with remaining_budget_usd",
            spent_usd.clone(),
        );
        let budget_limit_usd = Family::default();
        r.register(
            "budget_limit_usd",
            "The agent's own limit per period (its own or default_limits; absent: none of its own), so spent_usd / budget_limit_usd is the share of its budget used",
            budget_limit_usd.clone(),
        );
        // 0.1 ms … ~3 s: one durable redb commit per batch.
        let ledger_commit = Histogram::new(exponential_buckets(0.0001, 2.0, 15));
        r.register(
            "ledger_commit_seconds",
            "Time of durable ledger reservations (Ledger::reserve) as seen by the metering stage",
            ledger_commit.clone(),
        );
        MeteringMetrics {
            requests,
            spend_usd,
            remaining_budget_usd,
            spent_usd,
            budget_limit_usd,
            ledger_commit,
            agents: labels::AgentLabels::default(),
            models: Arc::default(),
            activity: crate::activity::Activity::default(),
        }
    }

    /// The `model` label values; the live price table publishes its names here (until it does,
    /// every model is `other`).
    pub fn model_labels(&self) -> Arc<labels::ModelLabels> {
        self.models.clone()
    }

    /// One request's decision. `provider` empty = no adapter for the host (`unknown`).
    pub fn request(&self, agent: &str, provider: &str, outcome: Outcome) {
        use crate::activity::Seen;
        self.activity.request(
            agent,
            match outcome {
                Outcome::Allowed | Outcome::Free | Outcome::BadRequest => Seen::Allowed,
                Outcome::Blocked(_) | Outcome::LedgerUnavailable => Seen::Blocked,
                Outcome::WouldBlock(_) => Seen::WouldBlock,
            },
        );
        let (decision, reason) = outcome.labels();
        self.requests
            .get_or_create(&RequestLabels {
                agent: self.agents.get(agent),
                provider: labels::provider(provider),
                decision,
                reason,
            })
            .inc();
    }

    pub fn observe_reserve(&self, d: Duration) {
        self.ledger_commit.observe(d.as_secs_f64());
    }

    /// A settled request: its real cost, then the agent's budgets. `model` is the price table's
    /// name for it (anything else is counted as `other`).
    pub fn settled(&self, agent: &str, model: &str, cost: MicroUsd, status: &AgentStatus) {
        self.activity.spend(agent, cost);
        self.spend_usd
            .get_or_create(&SpendLabels {
                agent: self.agents.get(agent),
                model: self.models.get(model),
            })
            .inc_by(usd(cost));
        self.remaining(status);
    }

    /// Sets `remaining_budget_usd` and `spent_usd` for each period of `status` that is limited at
    /// some level, and `budget_limit_usd` for each the agent limits itself (other periods have no
    /// series). An agent past the label cap has none: one `other` series would mix them all.
    pub fn remaining(&self, status: &AgentStatus) {
        let agent = self.agents.get(status.agent.as_str());
        if self.agents.is_overflow(&agent) {
            return;
        }
        for p in Period::ALL {
            let key = BudgetLabels {
                agent: agent.clone(),
                period: p.as_str(),
            };
            let remaining = status.remaining.get(p);
            set_or_clear(&self.remaining_budget_usd, &key, remaining);
            let spent = remaining.map(|_| status.spent.get(p));
            set_or_clear(&self.spent_usd, &key, spent);
            set_or_clear(&self.budget_limit_usd, &key, status.limits.period(p));
        }
    }

    /// Sets the budget gauges of every agent in `statuses` (every agent the ledger knows, ancestors
    /// included: a team's budget has gauges even when only its members send requests); see
    /// [`BUDGET_REFRESH`]. Off the request path.
    pub fn refresh_budgets(&self, statuses: impl IntoIterator<Item = AgentStatus>) {
        for status in statuses {
            self.remaining(&status);
        }
    }
}

/// Sets the gauge at `key`, or removes it when there is no value. A series that is not there is
/// looked up under the family's read lock first: `remove` takes its write lock, and most agents
/// have most periods unlimited.
fn set_or_clear(
    family: &Family<BudgetLabels, Gauge<f64, AtomicU64>>,
    key: &BudgetLabels,
    value: Option<MicroUsd>,
) {
    match value {
        Some(v) => {
            family.get_or_create(key).set(usd(v));
        }
        None => {
            if family.get(key).is_some() {
                family.remove(key);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Notify

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    event: &'static str,
    result: &'static str,
}

/// How a webhook notification ended (the `result` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookResult {
    Delivered,
    /// Every attempt failed, or the receiver refused it.
    Failed,
    /// The notifier's queue was full: the oldest waiting notification was dropped.
    Dropped,
}

impl WebhookResult {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookResult::Delivered => "delivered",
            WebhookResult::Failed => "failed",
            WebhookResult::Dropped => "dropped",
        }
    }
}

/// The webhook notifier's deliveries.
pub struct NotifyMetrics {
    webhooks: Family<WebhookLabels, Counter>,
}

impl NotifyMetrics {
    fn register(r: &mut Registry) -> NotifyMetrics {
        let webhooks = Family::default();
        r.register(
            "webhooks",
            "Budget notifications by event (exhausted/paused/threshold) and result (delivered/failed/dropped)",
            webhooks.clone(),
        );
        NotifyMetrics { webhooks }
    }

    /// `event` is the notification's `event` tag (`exhausted`, `paused`, `threshold`).
    pub fn webhook(&self, event: &'static str, result: WebhookResult) {
        self.webhooks
            .get_or_create(&WebhookLabels {
                event,
                result: result.as_str(),
            })
            .inc();
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP endpoint

/// Binds the metrics listener (SO_REUSEADDR so a restart does not wait out TIME_WAIT).
pub fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    let err = |source| MetricsError::Listen { addr, source };
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    sock.set_reuseaddr(true).map_err(err)?;
    sock.bind(addr).map_err(err)?;
    sock.listen(64).map_err(err)
}

/// Serves `GET /metrics`, `GET /healthz` and `GET /readyz` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    loop {
        let (stream, _peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("metrics accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&req, &metrics)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!("metrics connection: {e}");
                    }
                }
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

fn answer(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ct: &'static str, body: Bytes| {
        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ct));
        resp
    };
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            Bytes::from_static(b"only GET\n"),
        );
    }
    match req.uri().path() {
        "/metrics" => match metrics.encode() {
            Ok(text) => reply(StatusCode::OK, CONTENT_TYPE, Bytes::from(text)),
            Err(e) => {
                tracing::error!("encoding metrics failed: {e}");
                reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    Bytes::from_static(b"encoding metrics failed\n"),
                )
            }
        },
        "/healthz" => reply(StatusCode::OK, TEXT, Bytes::from_static(b"ok")),
        // Alive but unable to lease budget (the cluster store is away): says why.
        "/readyz" => match metrics.not_ready() {
            None => reply(StatusCode::OK, TEXT, Bytes::from_static(b"ok")),
            Some(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                Bytes::from(format!("not ready: {why}\n")),
            ),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            Bytes::from_static(b"not found: try /metrics, /healthz or /readyz\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use spendguard_ledger::{
        AgentName, AgentState, PeriodAmounts, PeriodResets, RemainingByPeriod,
    };

    fn status(agent: &str, daily: Option<u64>, total: Option<u64>) -> AgentStatus {
        AgentStatus {
            agent: AgentName::new(agent).expect("agent name"),
            status: AgentState::Active,
            limits: spendguard_ledger::Limits::default(),
            spent: PeriodAmounts::default(),
            reserved: MicroUsd::ZERO,
            remaining: RemainingByPeriod {
                daily: daily.map(MicroUsd),
                weekly: None,
                monthly: None,
                total: total.map(MicroUsd),
            },
            period_resets: PeriodResets {
                daily: None,
                weekly: None,
                monthly: None,
            },
            paused: false,
            paused_by: None,
            other_hosts: spendguard_ledger::OtherHosts::Allow,
            mode: spendguard_ledger::Mode::Enforce,
            tz: spendguard_ledger::Zone::utc(),
        }
    }

    fn has_line(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "missing line {line:?} in:\n{text}"
        );
    }

    #[test]
    fn families_carry_their_labels() {
        let m = Metrics::new();
        m.metering.model_labels().publish(["gpt-4o"]);
        m.metering
            .request("acme.research", "openai", Outcome::Allowed);
        m.metering
            .request("acme.research", "openai", Outcome::Allowed);
        m.metering.request(
            "acme.research",
            "anthropic",
            Outcome::Blocked(DenyReason::DailyBudgetExhausted),
        );
        m.metering.request(
            "acme.bot",
            "",
            Outcome::Blocked(DenyReason::UnpricedRequest),
        );
        m.metering.request("acme.bot", "openai", Outcome::Free);
        m.metering.observe_reserve(Duration::from_micros(300));
        m.metering.settled(
            "acme.research",
            "gpt-4o",
            MicroUsd(1_250_000),
            &status("acme.research", Some(3_750_000), None),
        );
        let conn = m.proxy.connection_opened();
        let _conn2 = m.proxy.connection_opened();
        drop(conn);
        m.proxy.observe_added_latency(Duration::from_millis(3));
        m.notify.webhook("exhausted", WebhookResult::Delivered);

        let text = m.encode().expect("encode");
        has_line(&text, "# TYPE spendguard_requests counter");
        has_line(
            &text,
            r#"spendguard_requests_total{agent="acme.research",provider="openai",decision="allowed",reason="none"} 2"#,
        );
        has_line(
            &text,
            r#"spendguard_requests_total{agent="acme.research",provider="anthropic",decision="blocked",reason="daily_budget_exhausted"} 1"#,
        );
        has_line(
            &text,
            r#"spendguard_requests_total{agent="acme.bot",provider="unknown",decision="blocked",reason="unpriced_request"} 1"#,
        );
        has_line(
            &text,
            r#"spendguard_requests_total{agent="acme.bot",provider="openai",decision="allowed",reason="free"} 1"#,
        );
        has_line(
            &text,
            r#"spendguard_spend_usd_total{agent="acme.research",model="gpt-4o"} 1.25"#,
        );
        has_line(
            &text,
            r#"spendguard_remaining_budget_usd{agent="acme.research",period="daily"} 3.75"#,
        );
        assert!(
            !text.contains(r#"period="weekly""#),
            "an unlimited period has no series:\n{text}"
        );
        has_line(&text, "spendguard_open_connections 1");
        has_line(&text, "# TYPE spendguard_added_latency_seconds histogram");
        has_line(&text, "spendguard_added_latency_seconds_count 1");
        has_line(&text, "# TYPE spendguard_ledger_commit_seconds histogram");
        has_line(&text, "spendguard_ledger_commit_seconds_count 1");
        has_line(
            &text,
            r#"spendguard_webhooks_total{event="exhausted",result="delivered"} 1"#,
        );
        assert!(text.ends_with("# EOF\n"));
    }

    fn spend_series(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| l.starts_with("spendguard_spend_usd_total{"))
            .collect()
    }

    #[test]
    fn models_outside_the_price_table_are_counted_as_other() {
        let m = Metrics::new();
        m.metering
            .model_labels()
            .publish(["gpt-4o", "claude-sonnet-4-5"]);
        let st = status("acme", None, None);
        m.metering
            .settled("acme", "gpt-4o", MicroUsd(1_000_000), &st);
        m.metering
            .settled("acme", "gpt-4o-made-up", MicroUsd(250_000), &st);
        m.metering.settled("acme", "", MicroUsd(250_000), &st);
        let text = m.encode().expect("encode");
        has_line(
            &text,
            r#"spendguard_spend_usd_total{agent="acme",model="gpt-4o"} 1.0"#,
        );
        has_line(
            &text,
            r#"spendguard_spend_usd_total{agent="acme",model="other"} 0.5"#,
        );
        assert_eq!(spend_series(&text).len(), 2, "{text}");
    }

    #[test]
    fn ten_thousand_bogus_model_names_make_one_series() {
        let m = Metrics::new();
        m.metering.model_labels().publish(["gpt-4o"]);
        let st = status("acme.bot", None, None);
        for i in 0..10_000 {
            m.metering
                .settled("acme.bot", &format!("bogus-{i}"), MicroUsd(1), &st);
        }
        m.metering.settled("acme.bot", "gpt-4o", MicroUsd(1), &st);
        let text = m.encode().expect("encode");
        let series = spend_series(&text);
        assert_eq!(series.len(), 2, "gpt-4o and other: {series:?}");
        let other: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(r#"spendguard_spend_usd_total{agent="acme.bot",model="other"} "#)
            })
            .and_then(|v| v.parse().ok())
            .expect("the other series");
        assert!((other - 0.01).abs() < 1e-9, "all 10,000 in other: {other}");
        assert!(!text.contains("bogus-"), "no bogus name became a label");
    }

    #[test]
    fn agents_past_the_label_cap_are_other_and_have_no_budget_series() {
        let m = Metrics::new();
        let cap = labels::MAX_AGENT_LABELS;
        for i in 0..cap + 50 {
            m.metering
                .request(&format!("bulk.a{i}"), "openai", Outcome::Allowed);
        }
        m.metering.remaining(&status("bulk.late", Some(1), None));
        let text = m.encode().expect("encode");
        let requests = text
            .lines()
            .filter(|l| l.starts_with("spendguard_requests_total{"))
            .count();
        assert_eq!(requests, cap + 1, "the cap, plus other");
        has_line(
            &text,
            r#"spendguard_requests_total{agent="other",provider="openai",decision="allowed",reason="none"} 50"#,
        );
        assert!(
            !text.contains("bulk.late"),
            "an agent past the cap has no budget series"
        );
        // A provider name nobody knows is not a label either.
        m.metering
            .request("bulk.a0", "api.evil.example", Outcome::Allowed);
        let text = m.encode().expect("encode");
        has_line(
            &text,
            r#"spendguard_requests_total{agent="bulk.a0",provider="unknown",decision="allowed",reason="none"} 1"#,
        );
    }

    #[test]
    fn budget_gauges_carry_spent_and_the_agents_own_limit() {
        let m = Metrics::new();
        let mut st = status("acme.bot", Some(2_000_000), None);
        st.limits.daily = Some(MicroUsd(10_000_000));
        st.spent.daily = MicroUsd(8_000_000);
        m.metering.remaining(&st);
        // An ancestor only (no limit of its own): remaining and spent, no limit series.
        let mut parent = status("acme", None, Some(50_000_000));
        parent.spent.total = MicroUsd(9_000_000);
        m.metering.refresh_budgets([parent]);
        let text = m.encode().expect("encode");
        has_line(
            &text,
            r#"spendguard_budget_limit_usd{agent="acme.bot",period="daily"} 10.0"#,
        );
        has_line(
            &text,
            r#"spendguard_spent_usd{agent="acme.bot",period="daily"} 8.0"#,
        );
        has_line(
            &text,
            r#"spendguard_remaining_budget_usd{agent="acme",period="total"} 50.0"#,
        );
        has_line(
            &text,
            r#"spendguard_spent_usd{agent="acme",period="total"} 9.0"#,
        );
        assert!(
            !text.contains(r#"spendguard_budget_limit_usd{agent="acme","#),
            "{text}"
        );
        // The limit is removed: its series go.
        st.limits.daily = None;
        st.remaining.daily = None;
        m.metering.remaining(&st);
        let text = m.encode().expect("encode");
        assert!(
            !text.contains(r#"agent="acme.bot",period="daily""#),
            "{text}"
        );
    }

    #[test]
    fn a_period_that_becomes_unlimited_loses_its_series() {
        let m = Metrics::new();
        m.metering
            .remaining(&status("acme", Some(1_000_000), Some(9_000_000)));
        let text = m.encode().expect("encode");
        has_line(
            &text,
            r#"spendguard_remaining_budget_usd{agent="acme",period="total"} 9.0"#,
        );
        m.metering.remaining(&status("acme", Some(500_000), None));
        let text = m.encode().expect("encode");
        has_line(
            &text,
            r#"spendguard_remaining_budget_usd{agent="acme",period="daily"} 0.5"#,
        );
        assert!(!text.contains(r#"period="total""#), "{text}");
    }

    async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String, String) {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(header::HOST, addr.to_string())
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        let resp = send.send_request(req).await.expect("response");
        let status = resp.status();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, ct, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn scrape_over_loopback() {
        let metrics = Arc::new(Metrics::new());
        metrics
            .metering
            .request("acme.scrape", "openai", Outcome::Allowed);
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, metrics.clone(), shutdown.clone()));

        let (status, ct, body) = get(addr, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ct, CONTENT_TYPE);
        has_line(
            &body,
            r#"spendguard_requests_total{agent="acme.scrape",provider="openai",decision="allowed",reason="none"} 1"#,
        );
        has_line(&body, "# TYPE spendguard_open_connections gauge");

        let (status, _, body) = get(addr, "/healthz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "ok");

        let (status, _, _) = get(addr, "/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // Ready until something says otherwise; then 503 and why.
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
        let why = Arc::new(std::sync::Mutex::new(None::<String>));
        let w = why.clone();
        metrics.set_readiness(Box::new(move || w.lock().expect("lock").clone()));
        *why.lock().expect("lock") = Some("cluster store redis://10.0.0.9:6379 unreachable".into());
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("cluster store"), "{body}");
        *why.lock().expect("lock") = None;
        let (status, _, _) = get(addr, "/readyz").await;
        assert_eq!(status, StatusCode::OK);

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server stops on shutdown")
            .expect("server task");
    }
}
