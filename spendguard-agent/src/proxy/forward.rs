//! Sending intercepted requests to the provider: to the connection's ORIGINAL DESTINATION address (never
//! a fresh DNS answer), with the client's SNI, verified against the upstream roots, HTTP/1.1 or HTTP/2 as
//! the provider negotiates (independently of what the client speaks). Connections are pooled per
//! (original destination, SNI): pooled clients per destination address, whose own pools are keyed by
//! host.
//!
//! One hyper client keeps ONE HTTP/2 connection per host, and a request beyond the server's
//! SETTINGS_MAX_CONCURRENT_STREAMS waits there for a free stream — a thousand open SSE streams would
//! queue behind the first hundred or two. So each destination has several clients (shards), each
//! given at most [`STREAMS_PER_CLIENT`] requests in flight: a new request goes to the first shard with
//! room (keeping connections few and full), and a new shard (a new connection) is opened when all are
//! busy. Over HTTP/1.1 a shard's own pool opens connections as needed; the cap changes nothing there.

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
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
/// Requests one client (one HTTP/2 connection) carries at once: the floor RFC 9113 recommends
/// servers allow (100), so no provider makes a request wait for a stream.
pub const STREAMS_PER_CLIENT: usize = 100;
/// Clients per destination; beyond this, requests share the least busy one (and may queue there).
const SHARDS_MAX: usize = 256;

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
    pools: Mutex<LruCache<SocketAddr, Arc<Shards>>>,
}

/// The clients of one destination, each with its count of requests in flight.
struct Shards {
    dst: SocketAddr,
    tls: Arc<ClientConfig>,
    clients: Mutex<Vec<(UpstreamClient, Arc<AtomicUsize>)>>,
    /// The destination answered over HTTP/2: shards built from now on speak only h2, so a burst
    /// of requests on a new shard shares its one connection instead of each opening its own (a
    /// pool that does not know the protocol before connecting cannot coalesce).
    h2: std::sync::atomic::AtomicBool,
}

impl Shards {
    /// A client with room for one more request, and the slot that frees it again.
    fn pick(&self) -> (UpstreamClient, Slot) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let room = clients
            .iter()
            .find(|(_, n)| n.load(Ordering::Relaxed) < STREAMS_PER_CLIENT);
        let (client, n) = match room {
            Some((c, n)) => (c.clone(), n.clone()),
            None if clients.len() < SHARDS_MAX => {
                let c = (self.build(), Arc::new(AtomicUsize::new(0)));
                clients.push((c.0.clone(), c.1.clone()));
                c
            }
            None => {
                let least = clients
                    .iter()
                    .min_by_key(|(_, n)| n.load(Ordering::Relaxed))
                    .map(|(c, n)| (c.clone(), n.clone()));
                match least {
                    Some(c) => c,
                    None => (self.build(), Arc::new(AtomicUsize::new(0))),
                }
            }
        };
        n.fetch_add(1, Ordering::Relaxed);
        (client, Slot(n))
    }

    fn build(&self) -> UpstreamClient {
        // hyper-rustls sets ALPN itself from enable_http1/2 and refuses a config that already has it.
        let mut tls = (*self.tls).clone();
        tls.alpn_protocols.clear();
        let connector = OrigDstConnector { dst: self.dst };
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(POOL_IDLE);
        if self.h2.load(Ordering::Relaxed) {
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_only()
                .enable_http2()
                .wrap_connector(connector);
            builder.http2_only(true).build(https)
        } else {
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_only()
                .enable_http1()
                .enable_http2()
                .wrap_connector(connector);
            builder.build(https)
        }
    }
}

/// One request in flight on a shard, until its response body is done or dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The provider's response body, holding its request's slot on the upstream connection (`Slot`).
pub struct UpstreamBody {
    inner: Incoming,
    _slot: Slot,
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Upstreams {
    pub fn new(tls: Arc<ClientConfig>) -> Upstreams {
        let cap = NonZeroUsize::new(POOLS_MAX).unwrap_or(NonZeroUsize::MIN);
        Upstreams {
            tls,
            pools: Mutex::new(LruCache::new(cap)),
        }
    }

    /// The TLS configuration upstream connections verify providers with (WebSocket sessions
    /// open their own connection with it).
    pub fn tls(&self) -> Arc<ClientConfig> {
        self.tls.clone()
    }

    fn shards(&self, dst: SocketAddr) -> Arc<Shards> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = pools.get(&dst) {
            return c.clone();
        }
        let shards = Arc::new(Shards {
            dst,
            tls: self.tls.clone(),
            clients: Mutex::new(Vec::new()),
            h2: std::sync::atomic::AtomicBool::new(false),
        });
        pools.put(dst, shards.clone());
        shards
    }

    /// Sends `req` (origin-form path) to `dst` as `https://sni`.
    pub async fn send(
        &self,
        dst: SocketAddr,
        sni: &str,
        mut req: Request<Body>,
    ) -> Result<Response<UpstreamBody>, ForwardError> {
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
        let shards = self.shards(dst);
        let (client, slot) = shards.pick();
        let resp = client
            .request(req)
            .await
            .map_err(|e| ForwardError::Upstream(error_chain(&e)))?;
        if resp.version() == http::Version::HTTP_2 {
            shards.h2.store(true, Ordering::Relaxed);
        }
        Ok(resp.map(|inner| UpstreamBody { inner, _slot: slot }))
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
