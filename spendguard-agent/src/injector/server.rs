//! The HTTPS endpoint the API server calls: `POST /mutate` (AdmissionReview v1) and
//! `GET /healthz` (the Deployment's probes).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::review;
use super::Shared;
use crate::proxy::http_conn;

/// Path of the mutating webhook (the MutatingWebhookConfiguration's `service.path`).
pub const MUTATE_PATH: &str = "/mutate";
pub const HEALTH_PATH: &str = "/healthz";
/// An AdmissionReview carries the whole pod; etcd refuses objects over 1.5 MiB, so 4 MiB is ample.
const MAX_BODY: usize = 4 << 20;
/// The API server gives a webhook `timeoutSeconds` (10 in deploy/); a TLS handshake or a request
/// head that takes longer is not the API server.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an admission may wait for the namespace's trust ConfigMap to be written. Past it the
/// pod is admitted anyway: it waits for the ConfigMap (FailedMount) until the resync writes it.
const ENSURE_TIMEOUT: Duration = Duration::from_secs(4);

pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("injector accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "injector TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "injector TLS handshake timed out");
                    return;
                }
            };
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(req, &shared).await) }
            });
            let conn = http_conn::serve(tls, svc, HANDSHAKE_TIMEOUT);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(%peer, "injector connection: {e}");
                },
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

fn reply(status: StatusCode, ct: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ct),
    );
    r
}

async fn handle(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, HEALTH_PATH) => reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::POST, MUTATE_PATH) => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "text/plain",
                        format!("cannot read the AdmissionReview: {e}\n"),
                    )
                }
            };
            let answer = match review::answer(&body, &shared.trust_configmap) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("refused an admission request: {e}");
                    return reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n"));
                }
            };
            tracing::info!("{}", answer.summary);
            if let Some(ns) = &answer.ensure_namespace {
                match tokio::time::timeout(ENSURE_TIMEOUT, shared.ensure_namespace(ns)).await {
                    Ok(()) => {}
                    Err(_) => tracing::warn!(
                        namespace = %ns,
                        "writing the trust ConfigMap took over {ENSURE_TIMEOUT:?}: the pod was \
                         admitted and waits for it (the resync retries)"
                    ),
                }
            }
            reply(StatusCode::OK, "application/json", answer.body)
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}
