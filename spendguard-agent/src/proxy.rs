//! The transparent proxy. Data flows one way through these stages:
//!
//! ```text
//! accept ─▶ inbound (original destination + identity, or refuse) ─▶ route ─▶ passthrough (bytes)
//! ```
//!
//! ```text
//!                                  ┌─ provider SNI ─▶ intercept (TLS, HTTP) ─▶ stage ─▶ forward ─▶ watch
//!                                  │                     WebSocket upgrade ─▶ stage ─▶ ws_relay (frame tap)
//! accept ─▶ inbound ─▶ route ─────┤
//!                                  └─ anything else ─▶ passthrough (bytes, never decrypted)
//! ```

pub mod body;
pub mod egress;
pub mod explicit;
pub mod forward;
pub mod http_conn;
pub mod inbound;
pub mod intercept;
pub mod passthrough;
pub mod reply;
pub mod rewind;
pub mod route;
pub mod stage;
pub mod upstream;
pub mod websocket;
pub mod ws_relay;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::identity::TagStore;
pub use inbound::{Inbound, OrigDstSource};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source} (is another agent running? set SPENDGUARD_LISTEN)")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Shared by every connection.
pub struct ProxyContext {
    pub redirects: Arc<dyn OrigDstSource>,
    pub tags: TagStore,
    pub hosts: route::HostList,
    /// `other_hosts` / `allowed_hosts`: which non-provider connections may pass through.
    pub egress: egress::Egress,
    pub interceptor: Arc<intercept::Interceptor>,
    pub shutdown: CancellationToken,
    /// `open_connections` (and the rest of the agent's metrics).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Accepts on `listeners` until `shutdown`, then returns; in-flight connections are tracked by `tasks`.
pub async fn serve(
    listeners: Vec<TcpListener>,
    ctx: Arc<ProxyContext>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let mut accepts = Vec::new();
    for listener in listeners {
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        let tasks = tasks.clone();
        accepts.push(tokio::spawn(async move {
            while let Some((stream, peer)) =
                crate::accept::next(|| listener.accept(), &shutdown, "proxy").await
            {
                let ctx = ctx.clone();
                tasks.spawn(async move { handle(stream, peer, ctx).await });
            }
        }));
    }
    for a in accepts {
        let _ = a.await;
    }
}

async fn handle(stream: tokio::net::TcpStream, peer: SocketAddr, ctx: Arc<ProxyContext>) {
    // A proxy must not add Nagle's delay: a response head and its first body frame are separate
    // small writes, and with Nagle on the second waits for the client's (delayed, ~40 ms) ACK.
    let _ = stream.set_nodelay(true);
    let inbound = match Inbound::identify(stream, peer, &*ctx.redirects, &ctx.tags) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(%peer, "refused connection: {e}");
            return;
        }
    };
    let span =
        tracing::info_span!("conn", agent = %inbound.identity.agent, dst = %inbound.orig_dst);
    tracing::debug!(parent: &span, %peer, cgroup_id = inbound.identity.cgroup_id, "accepted redirected connection");
    dispatch(inbound, ctx).instrument(span).await;
}

/// Route a connection whose identity is known: intercept provider TLS, splice everything else.
pub async fn dispatch(mut inbound: Inbound, ctx: Arc<ProxyContext>) {
    let _open = ctx.metrics.proxy.connection_opened();
    let mut hello = std::mem::take(&mut inbound.pending);
    match route::classify(&mut inbound.stream, &mut hello, &ctx.hosts).await {
        route::Route::Intercept { sni } => {
            tracing::debug!(%sni, "intercepting");
            if let Err(e) = ctx
                .interceptor
                .clone()
                .serve(inbound, hello, sni, ctx.shutdown.clone())
                .await
            {
                tracing::debug!("intercepted connection ended: {e}");
            }
        }
        route::Route::Refuse { why } => {
            tracing::info!(
                why,
                "closing a redirected connection whose destination cannot be told"
            );
        }
        route::Route::OtherHost { sni } => {
            if !ctx.egress.allows(&inbound, Some(&sni)) {
                return refuse(&ctx, inbound, Some(&sni), &hello).await;
            }
            tracing::debug!(%sni, why = "SNI is not a provider host", "passing through");
            pass(inbound, &hello).await;
        }
        route::Route::Passthrough { why } => {
            if !ctx.egress.allows(&inbound, None) {
                return refuse(&ctx, inbound, None, &hello).await;
            }
            tracing::debug!(why, "passing through");
            pass(inbound, &hello).await;
        }
    }
}

/// A refusal's future (it reads and discards what the client sends) is larger than everything else
/// a connection keeps, and a task is as large as its largest state for the connection's whole life:
/// on the heap, only the refused connections pay for it.
async fn refuse(ctx: &ProxyContext, inbound: Inbound, sni: Option<&str>, hello: &[u8]) {
    Box::pin(ctx.egress.refuse(inbound, sni, hello)).await
}

async fn pass(inbound: Inbound, hello: &[u8]) {
    if let Err(e) = passthrough::splice(inbound, hello).await {
        tracing::debug!("passthrough ended: {e}");
    }
}

/// Binds a listener (SO_REUSEADDR so a restart does not wait out TIME_WAIT).
pub fn bind(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    let err = |source| ProxyError::Listen { addr, source };
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    sock.set_reuseaddr(true).map_err(err)?;
    if addr.is_ipv6() {
        socket2::SockRef::from(&sock)
            .set_only_v6(true)
            .map_err(err)?;
    }
    sock.bind(addr).map_err(err)?;
    sock.listen(4096).map_err(err)
}
