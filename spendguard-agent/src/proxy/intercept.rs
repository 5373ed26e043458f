//! Stage three for provider hosts: terminate TLS with a leaf for exactly the SNI, serve HTTP/1.1 or
//! HTTP/2 (as the client negotiated by ALPN), run every request through the [`Stage`], forward it and
//! stream the response back through the stage's watch.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::body::{Body, Watched};
use super::forward::{self, Upstreams};
use super::reply::json_error;
use super::rewind::Rewind;
use super::stage::{BodyEnd, Decision, RequestContext, Stage};
use super::Inbound;
use crate::tls::Ca;

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
    #[error("HTTP: {0}")]
    Http(String),
}

impl Interceptor {
    pub async fn serve(
        self: Arc<Self>,
        inbound: Inbound,
        hello: Vec<u8>,
        sni: String,
        shutdown: CancellationToken,
    ) -> Result<(), InterceptError> {
        let cfg = self
            .ca
            .server_config(&sni)
            .await
            .map_err(|e| InterceptError::Cert(sni.clone(), e))?;
        let tls = TlsAcceptor::from(cfg)
            .accept(Rewind::new(hello, inbound.stream))
            .await
            .map_err(InterceptError::Handshake)?;
        let ctx = Arc::new(RequestContext {
            identity: inbound.identity,
            sni,
            orig_dst: inbound.orig_dst,
        });
        let this = self.clone();
        let svc = hyper::service::service_fn(move |req| {
            let this = this.clone();
            let ctx = ctx.clone();
            async move { Ok::<_, Infallible>(this.handle(req, &ctx).await) }
        });
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let conn = builder.serve_connection(TokioIo::new(tls), svc);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => return r.map_err(|e| InterceptError::Http(forward::error_chain(&*e))),
            _ = shutdown.cancelled() => {}
        }
        // Shutting down: finish in-flight requests, accept no new ones on this connection.
        conn.as_mut().graceful_shutdown();
        conn.await
            .map_err(|e| InterceptError::Http(forward::error_chain(&*e)))
    }

    async fn handle(&self, req: Request<Incoming>, ctx: &RequestContext) -> Response<Body> {
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
            Decision::Forward { request, watch } => {
                self.metrics.proxy.observe_added_latency(received.elapsed());
                match self.upstreams.send(ctx.orig_dst, &ctx.sni, request).await {
                    Ok(resp) => {
                        let (mut parts, body) = resp.into_parts();
                        let mut watch = watch;
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
                        watch.on_end(BodyEnd::Aborted, Some(&msg));
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
