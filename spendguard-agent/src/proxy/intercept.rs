//! Stage three for provider hosts: terminate TLS with a leaf for exactly the SNI, serve HTTP/1.1 or
//! HTTP/2 (as the client negotiated by ALPN), run every request through the [`Stage`], forward it and
//! stream the response back through the stage's watch.
//!
//! Slow or idle clients cannot hold a connection (and its descriptor) forever: the TLS handshake, the
//! first request and every HTTP/1.1 request head each have a deadline.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::body::{Body, Watched};
use super::forward::{self, Upstreams};
use super::http_conn;
use super::reply::json_error;
use super::rewind::Rewind;
use super::stage::{BodyEnd, Decision, RequestContext, ResponseWatch, Stage};
use super::Inbound;
use crate::tls::Ca;

/// How long a client may take to complete the TLS handshake once its ClientHello has been read.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an HTTP/1.1 client may take to send a request head (hyper's default, which needs a timer
/// to be in force); it also closes keep-alive connections idle for this long between requests.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection (HTTP/1.1 or HTTP/2) may stay without its first request after the handshake.
pub const FIRST_REQUEST_TIMEOUT: Duration = HEADER_READ_TIMEOUT;

/// What every intercepted connection shares.
pub struct Interceptor {
    pub ca: Arc<Ca>,
    pub upstreams: Upstreams,
    pub stage: Arc<dyn Stage>,
    /// `added_latency_seconds`: from a request's arrival to its sending upstream.
    pub metrics: Arc<crate::metrics::Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error("no certificate for {0}: {1}")]
    Cert(String, crate::tls::CaError),
    #[error("TLS handshake with the client failed: {0} (does the workload trust the SpendGuard CA? `spendguard ca export`)")]
    Handshake(std::io::Error),
    #[error("the client did not complete the TLS handshake within {0:?}; closed")]
    HandshakeTimeout(Duration),
    #[error("the client sent no request within {0:?} of the handshake; closed")]
    NoRequest(Duration),
    #[error("HTTP: {0}")]
    Http(String),
}

impl Interceptor {
    /// Serves one intercepted connection until it ends, or until `shutdown` (then in-flight requests
    /// finish first).
    ///
    /// The task of a connection is as large as its largest state, for as long as the connection
    /// lives. The handshake's state (the leaf look-up, rustls accepting) is large and short-lived, so
    /// it lives in its own heap allocation, freed once the session is up; what stays is the HTTP
    /// connection itself.
    pub fn serve(
        self: Arc<Self>,
        inbound: Inbound,
        hello: Vec<u8>,
        sni: String,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = Result<(), InterceptError>> {
        let handshake = Box::pin(self.clone().handshake(inbound, hello, sni));
        async move {
            let got_request = Arc::new(AtomicBool::new(false));
            // In a block so the TLS stream's own slot ends here, moved into `conn`: a local that is
            // still in scope at an await keeps its room in the task.
            let conn = {
                let (tls, ctx) = handshake.await?;
                let this = self.clone();
                let sessions_stop = shutdown.clone();
                let got = got_request.clone();
                let svc = hyper::service::service_fn(move |req| {
                    got.store(true, Ordering::Relaxed);
                    let this = this.clone();
                    let ctx = ctx.clone();
                    let stop = sessions_stop.clone();
                    // Boxed: hyper's HTTP/1 server keeps a slot the size of this future for the
                    // connection's whole life (and HTTP/2 a task per stream), and the request's
                    // state is ~5 KiB. On the heap, only a request in flight holds it.
                    let handling = Box::pin(async move { this.handle(req, &ctx, stop).await });
                    async move { Ok::<_, Infallible>(handling.await) }
                });
                // With upgrades: a WebSocket session (OpenAI Realtime) takes the connection over.
                http_conn::serve(tls, svc, HEADER_READ_TIMEOUT)
            };
            tokio::pin!(conn);
            // HTTP/2 has no head timeout, and neither protocol is chosen before the client's first
            // bytes: a connection that never starts a request is closed here.
            let no_request = async {
                tokio::time::sleep(FIRST_REQUEST_TIMEOUT).await;
                if got_request.load(Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                r = conn.as_mut() => return r.map_err(|e| InterceptError::Http(forward::error_chain(&e))),
                _ = no_request => return Err(InterceptError::NoRequest(FIRST_REQUEST_TIMEOUT)),
                _ = shutdown.cancelled() => {}
            }
            // Shutting down: finish in-flight requests, accept no new ones on this connection.
            conn.as_mut().graceful_shutdown();
            conn.await
                .map_err(|e| InterceptError::Http(forward::error_chain(&e)))
        }
    }

    /// The leaf for `sni`, then the TLS handshake (the ClientHello in `hello` replayed first).
    async fn handshake(
        self: Arc<Self>,
        inbound: Inbound,
        hello: Vec<u8>,
        sni: String,
    ) -> Result<(TlsStream<Rewind<TcpStream>>, Arc<RequestContext>), InterceptError> {
        let cfg = self
            .ca
            .server_config(&sni)
            .await
            .map_err(|e| InterceptError::Cert(sni.clone(), e))?;
        let tls = tokio::time::timeout(
            TLS_HANDSHAKE_TIMEOUT,
            TlsAcceptor::from(cfg).accept(Rewind::new(hello, inbound.stream)),
        )
        .await
        .map_err(|_| InterceptError::HandshakeTimeout(TLS_HANDSHAKE_TIMEOUT))?
        .map_err(InterceptError::Handshake)?;
        let ctx = Arc::new(RequestContext {
            identity: inbound.identity,
            sni,
            orig_dst: inbound.orig_dst,
        });
        Ok((tls, ctx))
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        ctx: &RequestContext,
        shutdown: CancellationToken,
    ) -> Response<Body> {
        let received = std::time::Instant::now();
        // A request for another host on this connection (HTTP/2 coalescing, or a forged Host) must not
        // ride on a certificate and a decision made for the SNI.
        let host = req
            .uri()
            .authority()
            .map(|a| a.host().to_string())
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(|h| strip_port(h).to_string())
            });
        match host {
            Some(h) if h.eq_ignore_ascii_case(&ctx.sni) => {}
            other => {
                let msg = format!(
                    "this connection is for {}; request for {:?} refused (misdirected)",
                    ctx.sni,
                    other.unwrap_or_default()
                );
                // Refused before its body was read: drain it first (see `body::drain`).
                let body = req.into_body().map_err(|e| e.into()).boxed_unsync();
                super::body::drain(body, spendguard_pricing::providers::MAX_JSON_BODY_BYTES).await;
                return json_error(
                    StatusCode::MISDIRECTED_REQUEST,
                    &ctx.sni,
                    "misdirected_request",
                    &msg,
                    serde_json::json!({}),
                );
            }
        }
        let req = req.map(|b| b.map_err(|e| e.into()).boxed_unsync());
        match self.stage.on_request(ctx, req).await {
            Decision::Respond(resp) => resp,
            Decision::Upgrade { request, watch } => {
                self.metrics.proxy.observe_added_latency(received.elapsed());
                super::ws_relay::open(&self.upstreams, ctx, request, watch, shutdown).await
            }
            Decision::Forward { request, watch } => {
                self.metrics.proxy.observe_added_latency(received.elapsed());
                // Until the response head arrives the watch is ours: if the client goes away first
                // (hyper drops this future, which cancels the upstream request), the guard ends it.
                let mut guard = WatchGuard(Some(watch));
                match self.upstreams.send(ctx.orig_dst, &ctx.sni, request).await {
                    Ok(resp) => {
                        let (mut parts, body) = resp.into_parts();
                        let mut watch = guard.take();
                        watch.on_head(&mut parts);
                        forward::strip_hop_by_hop(&mut parts.headers);
                        Response::from_parts(parts, Watched::new(body, watch).boxed_unsync())
                    }
                    Err(e) => {
                        let msg = format!(
                            "SpendGuard could not reach {} ({}): {e}",
                            ctx.sni, ctx.orig_dst
                        );
                        tracing::warn!(agent = %ctx.identity.agent, "{msg}");
                        guard.take().on_end(BodyEnd::Aborted, Some(&msg));
                        json_error(
                            StatusCode::BAD_GATEWAY,
                            &ctx.sni,
                            "upstream_error",
                            &msg,
                            serde_json::json!({}),
                        )
                    }
                }
            }
        }
    }
}

/// Holds a request's watch while it waits for the upstream response head, and ends it (exactly once,
/// as [`ResponseWatch::on_end`] requires) when dropped still holding it: the client went away and
/// hyper dropped the request's future. The request was sent, so the watch settles it as aborted.
struct WatchGuard(Option<Box<dyn ResponseWatch>>);

impl WatchGuard {
    fn take(&mut self) -> Box<dyn ResponseWatch> {
        // Only ever taken once, on the one path that leaves the wait.
        self.0.take().unwrap_or_else(|| Box::new(NoWatch))
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if let Some(w) = self.0.take() {
            w.on_end(
                BodyEnd::Aborted,
                Some("the client went away before the response head"),
            );
        }
    }
}

struct NoWatch;
impl ResponseWatch for NoWatch {}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split(']')
            .next()
            .map(|h| h.trim_start_matches('['))
            .unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}
