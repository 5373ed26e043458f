//! Budget webhooks: the ledger's [`Notification`]s (a budget exhausted, an agent paused, a share of a
//! budget spent) POSTed as JSON to the webhook URL of the agent they are about.
//!
//! ```text
//! ledger.subscribe() ─▶ intake (URL + payload, now) ─▶ bounded queue ─▶ ≤ N deliveries at once
//!                                                     (full: drop oldest)   (retry with backoff)
//! ```
//!
//! Never on the request path: the ledger's queue toward the notifier is bounded and drops when full,
//! and so is the notifier's own queue (oldest first, with a warning). Delivery is at least once: a
//! connection error or a 5xx/429 answer is retried with exponential backoff (5 attempts, 1 s … 30 s by
//! default), so a receiver may see a notification twice. Webhook sockets carry
//! [`spendguard_common::AGENT_SOCKET_MARK`] like every socket of the agent, so the redirect never loops
//! them back into the proxy. The URL may carry a secret: logs show only its host.
//!
//! Payload: the notification (`event`, `agent`, and `period`/`pct` where they apply) plus `time`
//! (RFC 3339, when the notifier received it) and `status` (the agent's `spendguard status --json` at
//! that moment).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http::{header, Request, StatusCode, Uri};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use spendguard_ledger::{AgentName, AgentStatus, Ledger, Notification};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, WebhookResult};
use crate::proxy::forward::error_chain;
use crate::proxy::upstream;

/// `User-Agent` of every webhook request.
pub const USER_AGENT: &str = concat!("spendguard/", env!("CARGO_PKG_VERSION"));

/// How the notifier queues and retries.
#[derive(Debug, Clone)]
pub struct NotifyOptions {
    /// Notifications waiting for delivery; when full, the oldest is dropped.
    pub queue: usize,
    /// Deliveries in flight at once (one slow receiver must not hold up the others).
    pub concurrency: usize,
    /// Attempts per notification (the first included).
    pub attempts: u32,
    /// Wait before the second attempt; doubled after each failure up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// One attempt (connect, TLS, request, response head) may take this long.
    pub timeout: Duration,
}

impl Default for NotifyOptions {
    fn default() -> Self {
        NotifyOptions {
            queue: 1024,
            concurrency: 8,
            attempts: 5,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook URL of agent {agent} is not an absolute http:// or https:// URL; fix it with `spendguard limit set {agent} --webhook URL`")]
    BadUrl { agent: AgentName },
    #[error("cannot reach webhook host {host}: {detail}")]
    Connect { host: String, detail: String },
    #[error("webhook host {host} did not answer within {secs} s")]
    Timeout { host: String, secs: u64 },
    #[error("webhook host {host} answered {status}")]
    Status { host: String, status: StatusCode },
    #[error("building the webhook request for {host}: {detail}")]
    Request { host: String, detail: String },
}

impl WebhookError {
    /// Worth another attempt: the receiver may be back later.
    pub fn retryable(&self) -> bool {
        match self {
            WebhookError::Connect { .. } | WebhookError::Timeout { .. } => true,
            WebhookError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            WebhookError::BadUrl { .. } | WebhookError::Request { .. } => false,
        }
    }
}

/// The `event` tag of a notification (a metrics label and a log field).
pub fn event_name(n: &Notification) -> &'static str {
    match n {
        Notification::Exhausted { .. } => "exhausted",
        Notification::Paused { .. } => "paused",
        Notification::Threshold { .. } => "threshold",
    }
}

/// The JSON body POSTed for `n`.
pub fn payload(n: &Notification, status: &AgentStatus, time: DateTime<Utc>) -> serde_json::Value {
    let mut v = serde_json::to_value(n).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "time".into(),
            serde_json::Value::String(time.to_rfc3339_opts(SecondsFormat::Millis, true)),
        );
        obj.insert(
            "status".into(),
            serde_json::to_value(status).unwrap_or(serde_json::Value::Null),
        );
    }
    v
}

/// The host of a webhook URL, for logs and errors (never the path or query: they may hold a token).
fn host_of(url: &Uri) -> String {
    url.host().unwrap_or("?").to_string()
}

/// One notification ready to send.
struct Delivery {
    url: Uri,
    agent: AgentName,
    event: &'static str,
    body: Bytes,
}

/// The webhook URL for a notification about `agent` (this level's own, else `default_limits`'),
/// and the payload as of now. `None`: nobody to tell.
fn prepare(ledger: &Ledger, n: &Notification) -> Option<Result<Delivery, WebhookError>> {
    let agent = n.agent().clone();
    let url = ledger
        .limits(&agent)
        .webhook
        .or_else(|| ledger.default_limits().webhook)
        .filter(|u| !u.trim().is_empty())?;
    let url = match url.trim().parse::<Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => u,
        _ => return Some(Err(WebhookError::BadUrl { agent })),
    };
    let body = payload(n, &ledger.status(&agent), Utc::now());
    Some(Ok(Delivery {
        url,
        agent,
        event: event_name(n),
        body: Bytes::from(body.to_string()),
    }))
}

/// Starts the notifier: subscribes now (nothing committed after this call is missed) and delivers
/// until `shutdown`. `tls` verifies https receivers (the proxy's upstream roots).
pub fn spawn(
    ledger: Ledger,
    tls: Arc<ClientConfig>,
    opts: NotifyOptions,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let rx = ledger.subscribe();
    let client = WebhookClient::new(&tls);
    tokio::spawn(run(rx, ledger, client, opts, metrics, shutdown))
}

async fn run(
    mut rx: mpsc::Receiver<Notification>,
    ledger: Ledger,
    client: WebhookClient,
    opts: NotifyOptions,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let cap = opts.queue.max(1);
    let mut queue: VecDeque<Delivery> = VecDeque::with_capacity(cap.min(64));
    let slots = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let mut inflight = JoinSet::new();
    let mut open = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            n = rx.recv(), if open => {
                let Some(n) = n else {
                    open = false;
                    continue;
                };
                match prepare(&ledger, &n) {
                    None => tracing::debug!(agent = %n.agent(), event = event_name(&n), "no webhook for this notification"),
                    Some(Err(e)) => {
                        tracing::warn!("{e}");
                        metrics.notify.webhook(event_name(&n), WebhookResult::Failed);
                    }
                    Some(Ok(d)) => {
                        if queue.len() >= cap {
                            if let Some(old) = queue.pop_front() {
                                tracing::warn!(
                                    agent = %old.agent, event = old.event, queue = cap,
                                    "webhook queue full: dropped the oldest notification (are the receivers slow or down?)"
                                );
                                metrics.notify.webhook(old.event, WebhookResult::Dropped);
                            }
                        }
                        queue.push_back(d);
                    }
                }
            }
            permit = slots.clone().acquire_owned(), if !queue.is_empty() => {
                let Ok(permit) = permit else { break };
                if let Some(d) = queue.pop_front() {
                    let client = client.clone();
                    let opts = opts.clone();
                    let metrics = metrics.clone();
                    inflight.spawn(async move {
                        let result = deliver(&client, &d, &opts).await;
                        metrics.notify.webhook(d.event, result);
                        drop(permit);
                    });
                }
            }
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            else => break,
        }
    }
    if !queue.is_empty() || !inflight.is_empty() {
        tracing::warn!(
            queued = queue.len(),
            in_flight = inflight.len(),
            "stopping: undelivered webhook notifications are dropped"
        );
    }
}

/// Sends `d`, retrying what may succeed later.
async fn deliver(client: &WebhookClient, d: &Delivery, opts: &NotifyOptions) -> WebhookResult {
    let attempts = opts.attempts.max(1);
    let mut delay = opts.backoff_initial;
    for attempt in 1..=attempts {
        match client.post(&d.url, d.body.clone(), opts.timeout).await {
            Ok(()) => {
                tracing::info!(agent = %d.agent, event = d.event, host = %host_of(&d.url), attempt, "webhook delivered");
                return WebhookResult::Delivered;
            }
            Err(e) if e.retryable() && attempt < attempts => {
                tracing::warn!(agent = %d.agent, event = d.event, attempt, retry_in = ?delay, "webhook attempt failed: {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(opts.backoff_max);
            }
            Err(e) => {
                tracing::error!(agent = %d.agent, event = d.event, attempt, "webhook not delivered: {e}");
                return WebhookResult::Failed;
            }
        }
    }
    WebhookResult::Failed
}

/// Resolves the URL's host and connects with [`upstream::connect`] (marked, never redirected).
#[derive(Clone, Copy, Debug, Default)]
pub struct MarkedConnector;

impl tower_service::Service<Uri> for MarkedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let host = uri
                .host()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
                .ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "URL without a host")
                })?;
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
            let mut last = None;
            for addr in tokio::net::lookup_host((host.as_str(), port)).await? {
                match upstream::connect(addr).await {
                    Ok(s) => return Ok(TokioIo::new(s)),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{host} has no address"),
                )
            }))
        })
    }
}

/// http:// and https:// (HTTP/1.1) over [`MarkedConnector`].
#[derive(Clone)]
struct WebhookClient {
    client: Client<HttpsConnector<MarkedConnector>, Full<Bytes>>,
}

impl WebhookClient {
    fn new(tls: &ClientConfig) -> WebhookClient {
        // hyper-rustls sets ALPN itself and refuses a config that already has it.
        let mut tls = tls.clone();
        tls.alpn_protocols.clear();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(MarkedConnector);
        WebhookClient {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(https),
        }
    }

    async fn post(&self, url: &Uri, body: Bytes, timeout: Duration) -> Result<(), WebhookError> {
        let host = host_of(url);
        let req = Request::post(url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, USER_AGENT)
            .body(Full::new(body))
            .map_err(|e| WebhookError::Request {
                host: host.clone(),
                detail: e.to_string(),
            })?;
        let resp = match tokio::time::timeout(timeout, self.client.request(req)).await {
            Err(_) => {
                return Err(WebhookError::Timeout {
                    host,
                    secs: timeout.as_secs(),
                })
            }
            Ok(Err(e)) => {
                return Err(WebhookError::Connect {
                    host,
                    detail: error_chain(&e),
                })
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        // The answer's body is not read: the connection is then simply not reused.
        if status.is_success() {
            Ok(())
        } else {
            Err(WebhookError::Status { host, status })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Instant;

    use http_body_util::BodyExt as _;
    use spendguard_ledger::{
        AuditContext, LedgerOptions, LimitsPatch, MicroUsd, Period, ReserveRequest,
    };

    /// One POST as the fake receiver saw it.
    #[derive(Debug, Clone)]
    struct Got {
        path: String,
        content_type: String,
        user_agent: String,
        body: serde_json::Value,
    }

    /// A webhook receiver on 127.0.0.1 that answers 503 to its first `fail_first` requests.
    struct Receiver {
        addr: SocketAddr,
        got: Arc<Mutex<Vec<Got>>>,
        requests: Arc<AtomicUsize>,
        stop: CancellationToken,
    }

    impl Drop for Receiver {
        fn drop(&mut self) {
            self.stop.cancel();
        }
    }

    impl Receiver {
        async fn start(fail_first: usize) -> Receiver {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind receiver");
            let addr = listener.local_addr().expect("addr");
            let got = Arc::new(Mutex::new(Vec::new()));
            let requests = Arc::new(AtomicUsize::new(0));
            let stop = CancellationToken::new();
            let (g, r, s) = (got.clone(), requests.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    let stream = tokio::select! {
                        _ = s.cancelled() => return,
                        a = listener.accept() => match a { Ok((st, _)) => st, Err(_) => return },
                    };
                    let (g, r) = (g.clone(), r.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(
                            move |req: Request<hyper::body::Incoming>| {
                                let (g, r) = (g.clone(), r.clone());
                                async move {
                                    let n = r.fetch_add(1, Ordering::SeqCst);
                                    let path = req.uri().path().to_string();
                                    let hdr = |name: header::HeaderName| {
                                        req.headers()
                                            .get(name)
                                            .and_then(|v| v.to_str().ok())
                                            .unwrap_or_default()
                                            .to_string()
                                    };
                                    let content_type = hdr(header::CONTENT_TYPE);
                                    let user_agent = hdr(header::USER_AGENT);
                                    let bytes = req.into_body().collect().await?.to_bytes();
                                    let status = if n < fail_first {
                                        StatusCode::SERVICE_UNAVAILABLE
                                    } else {
                                        let body = serde_json::from_slice(&bytes)
                                            .unwrap_or(serde_json::Value::Null);
                                        g.lock().unwrap_or_else(|p| p.into_inner()).push(Got {
                                            path,
                                            content_type,
                                            user_agent,
                                            body,
                                        });
                                        StatusCode::OK
                                    };
                                    let mut resp = http::Response::new(Full::new(Bytes::new()));
                                    *resp.status_mut() = status;
                                    Ok::<_, hyper::Error>(resp)
                                }
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
            Receiver {
                addr,
                got,
                requests,
                stop,
            }
        }

        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        fn got(&self) -> Vec<Got> {
            self.got.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }

        /// Waits until `n` POSTs were recorded (panics after 10 s).
        async fn wait_for(&self, n: usize) -> Vec<Got> {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let got = self.got();
                if got.len() >= n {
                    return got;
                }
                assert!(
                    Instant::now() < deadline,
                    "expected {n} webhook POSTs, got {got:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    fn fast() -> NotifyOptions {
        NotifyOptions {
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
            timeout: Duration::from_secs(5),
            ..NotifyOptions::default()
        }
    }

    fn tls() -> Arc<ClientConfig> {
        let roots = rustls::RootCertStore::empty();
        Arc::new(
            ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .expect("tls versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    fn agent(name: &str) -> AgentName {
        AgentName::new(name).expect("agent name")
    }

    async fn spend(ledger: &Ledger, who: &AgentName, reserve: u64, actual: u64) {
        let r = ledger
            .reserve(ReserveRequest {
                agent: who.clone(),
                amount: MicroUsd(reserve),
                audit: AuditContext::default(),
            })
            .await
            .expect("reserve");
        ledger.settle(r.id, MicroUsd(actual)).await.expect("settle");
    }

    fn by_event<'a>(got: &'a [Got], event: &str) -> &'a Got {
        got.iter()
            .find(|g| g.body["event"] == event)
            .unwrap_or_else(|| panic!("no {event} POST in {got:?}"))
    }

    #[tokio::test]
    async fn threshold_and_exhausted_are_posted_after_a_retry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger =
            Ledger::open(dir.path().join("ledger.redb"), LedgerOptions::default()).expect("ledger");
        let hook = Receiver::start(1).await;
        let who = agent("notify-test.direct");
        ledger
            .set_limits(
                &who,
                LimitsPatch {
                    daily: Some(Some(MicroUsd::from_usd(1))),
                    webhook: Some(Some(hook.url("/hook?token=s3cret"))),
                    ..LimitsPatch::default()
                },
            )
            .await
            .expect("limits");
        let metrics = Arc::new(Metrics::new());
        let stop = CancellationToken::new();
        let task = spawn(ledger.clone(), tls(), fast(), metrics.clone(), stop.clone());

        spend(&ledger, &who, 500_000, 850_000).await; // 85 % of $1: threshold
        spend(&ledger, &who, 100_000, 150_000).await; // $1.00 spent: exhausted

        let got = hook.wait_for(2).await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            hook.requests.load(Ordering::SeqCst),
            3,
            "one 503, retried, then two deliveries"
        );
        for g in &got {
            assert_eq!(g.path, "/hook");
            assert_eq!(g.content_type, "application/json");
            assert_eq!(g.user_agent, USER_AGENT);
            assert!(g.user_agent.starts_with("spendguard/"));
            assert_eq!(g.body["agent"], who.as_str());
            assert_eq!(g.body["period"], "daily");
            let time = g.body["time"].as_str().expect("time is a string");
            DateTime::parse_from_rfc3339(time).expect("time is RFC 3339");
            assert_eq!(g.body["status"]["agent"], who.as_str());
            assert!(
                g.body["status"]["spent"].is_object(),
                "status JSON: {}",
                g.body
            );
        }
        let threshold = by_event(&got, "threshold");
        assert_eq!(threshold.body["pct"], 80);
        let exhausted = by_event(&got, "exhausted");
        assert!(exhausted.body.get("pct").is_none(), "{}", exhausted.body);
        assert_eq!(exhausted.body["status"]["status"], "exhausted");
        assert_eq!(exhausted.body["status"]["remaining"]["daily"], 0.0);

        let text = metrics.encode().expect("encode");
        for event in ["threshold", "exhausted"] {
            let line =
                format!(r#"spendguard_webhooks_total{{event="{event}",result="delivered"}} 1"#);
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("notifier stops on shutdown")
            .expect("notifier task");
    }

    #[tokio::test]
    async fn a_notification_about_an_ancestor_goes_to_its_webhook() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger =
            Ledger::open(dir.path().join("ledger.redb"), LedgerOptions::default()).expect("ledger");
        let hook = Receiver::start(0).await;
        let parent = agent("notify-test.team");
        let child = agent("notify-test.team.bot");
        ledger
            .set_limits(
                &parent,
                LimitsPatch {
                    daily: Some(Some(MicroUsd::from_usd(1))),
                    webhook: Some(Some(hook.url("/parent"))),
                    ..LimitsPatch::default()
                },
            )
            .await
            .expect("parent limits");
        ledger
            .set_limits(
                &child,
                LimitsPatch {
                    weekly: Some(Some(MicroUsd::from_usd(100))),
                    webhook: Some(Some(hook.url("/child"))),
                    ..LimitsPatch::default()
                },
            )
            .await
            .expect("child limits");
        let stop = CancellationToken::new();
        let _task = spawn(
            ledger.clone(),
            tls(),
            fast(),
            Arc::new(Metrics::new()),
            stop.clone(),
        );

        spend(&ledger, &child, 500_000, 1_000_000).await;

        let got = hook.wait_for(2).await;
        // Give a stray third POST (to the wrong hook) a moment to show up.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let got_after = hook.got();
        assert_eq!(got_after.len(), 2, "{got_after:?}");
        for g in &got {
            assert_eq!(g.path, "/parent", "{g:?}");
            assert_eq!(g.body["agent"], parent.as_str());
            assert_eq!(g.body["status"]["agent"], parent.as_str());
        }
        by_event(&got, "threshold");
        by_event(&got, "exhausted");
        stop.cancel();
    }

    #[test]
    fn payload_shape() {
        let who = agent("acme.research");
        let n = Notification::Paused { agent: who.clone() };
        let status = AgentStatus {
            agent: who.clone(),
            status: spendguard_ledger::AgentState::Paused,
            limits: spendguard_ledger::Limits::default(),
            spent: spendguard_ledger::PeriodAmounts::default(),
            reserved: MicroUsd::ZERO,
            remaining: spendguard_ledger::RemainingByPeriod::default(),
            period_resets: spendguard_ledger::PeriodResets {
                daily: None,
                weekly: None,
                monthly: None,
            },
            paused: true,
            paused_by: Some(who.clone()),
            other_hosts: spendguard_ledger::OtherHosts::Allow,
            mode: spendguard_ledger::Mode::Enforce,
            tz: spendguard_ledger::Zone::utc(),
        };
        let time = DateTime::parse_from_rfc3339("2026-05-03T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let v = payload(&n, &status, time);
        assert_eq!(v["event"], "paused");
        assert_eq!(v["agent"], "acme.research");
        assert_eq!(v["time"], "2026-05-03T12:00:00.000Z");
        assert_eq!(v["status"]["status"], "paused");
        assert!(v.get("period").is_none());

        let t = Notification::Threshold {
            agent: who,
            period: Period::Monthly,
            pct: 80,
        };
        let v = payload(&t, &status, time);
        assert_eq!(v["event"], "threshold");
        assert_eq!(v["period"], "monthly");
        assert_eq!(v["pct"], 80);
    }

    #[test]
    fn what_is_retried() {
        let s = |status| WebhookError::Status {
            host: "h".into(),
            status,
        };
        assert!(s(StatusCode::SERVICE_UNAVAILABLE).retryable());
        assert!(s(StatusCode::TOO_MANY_REQUESTS).retryable());
        assert!(!s(StatusCode::NOT_FOUND).retryable());
        assert!(!s(StatusCode::UNAUTHORIZED).retryable());
        assert!(WebhookError::Connect {
            host: "h".into(),
            detail: "refused".into()
        }
        .retryable());
        assert!(!WebhookError::BadUrl { agent: agent("a") }.retryable());
    }
}
