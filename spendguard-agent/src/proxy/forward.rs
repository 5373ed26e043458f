//! Sending intercepted requests to the provider: to the connection's ORIGINAL DESTINATION address (never
//! a fresh DNS answer), with the client's SNI, verified against the upstream roots, HTTP/1.1 or HTTP/2 as
//! the provider negotiates (independently of what the client speaks). Connections are pooled per
//! (original destination, SNI): one pooled client per destination address, whose own pool is keyed by host.

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lru::LruCache;
use rustls::ClientConfig;
use tokio::net::TcpStream;

use super::body::Body;
use super::upstream;

/// Distinct destination addresses with a live pool (provider front ends: a few dozen per provider).
const POOLS_MAX: usize = 1024;
/// Idle upstream connections are kept this long (providers close theirs after ~60–120 s).
const POOL_IDLE: Duration = Duration::from_secs(90);

type UpstreamClient = Client<HttpsConnector<OrigDstConnector>, Body>;

/// Connects to one fixed address whatever the URI says; the URI only carries the SNI host.
#[derive(Clone)]
pub struct OrigDstConnector {
    dst: SocketAddr,
}

impl tower_service::Service<Uri> for OrigDstConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let dst = self.dst;
        Box::pin(async move { upstream::connect(dst).await.map(TokioIo::new) })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("invalid upstream URI: {0}")]
    Uri(String),
    #[error("{0}")]
    Upstream(String),
}

pub struct Upstreams {
    tls: Arc<ClientConfig>,
    pools: Mutex<LruCache<SocketAddr, UpstreamClient>>,
}

impl Upstreams {
    pub fn new(tls: Arc<ClientConfig>) -> Upstreams {
        let cap = NonZeroUsize::new(POOLS_MAX).unwrap_or(NonZeroUsize::MIN);
        Upstreams {
            tls,
            pools: Mutex::new(LruCache::new(cap)),
        }
    }

    fn client(&self, dst: SocketAddr) -> UpstreamClient {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = pools.get(&dst) {
            return c.clone();
        }
        // hyper-rustls sets ALPN itself from enable_http1/2 and refuses a config that already has it.
        let mut tls = (*self.tls).clone();
        tls.alpn_protocols.clear();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(OrigDstConnector { dst });
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(https);
        pools.put(dst, client.clone());
        client
    }

    /// Sends `req` (origin-form path) to `dst` as `https://sni`.
    pub async fn send(
        &self,
        dst: SocketAddr,
        sni: &str,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, ForwardError> {
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        let authority = if dst.port() == 443 {
            sni.to_string()
        } else {
            format!("{sni}:{}", dst.port())
        };
        let uri: Uri = format!("https://{authority}{pq}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| ForwardError::Uri(e.to_string()))?;
        *req.uri_mut() = uri;
        // The pool decides h1/h2 per connection; the client's version says nothing about the provider's.
        *req.version_mut() = http::Version::HTTP_11;
        strip_hop_by_hop(req.headers_mut());
        self.client(dst)
            .request(req)
            .await
            .map_err(|e| ForwardError::Upstream(error_chain(&e)))
    }
}

/// Connection-specific headers never cross a hop (and HTTP/2 forbids them).
pub fn strip_hop_by_hop(h: &mut http::HeaderMap) {
    if let Some(conn) = h
        .get(http::header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    {
        for name in conn.split(',') {
            if let Ok(name) = http::HeaderName::from_bytes(name.trim().as_bytes()) {
                h.remove(name);
            }
        }
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        h.remove(name);
    }
}

/// An error and its causes on one line (hyper's top-level messages alone say little).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
