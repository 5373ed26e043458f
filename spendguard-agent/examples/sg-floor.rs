//! `sg-floor`: the bench's floor — the cheapest thing that could stand where SpendGuard stands. A
//! TLS-terminating HTTP proxy with no logic at all, for `cargo xtask bench` only (an example, never
//! shipped).
//!
//! What it shares with the agent, so the ratio measures SpendGuard's logic and nothing else:
//! - it is reached through the same eBPF redirect (the bench installs the agent's own programs on a
//!   second cgroup subtree with this binary's port as the redirect target);
//! - the same certificates: a leaf for the SNI host signed by the agent's CA ([`Ca`], the same rcgen
//!   minting, ring provider, ALPN h2 + http/1.1);
//! - the same upstream side: [`Upstreams`] (pool shards, h2 detection, SO_MARK, TCP_NODELAY) with
//!   the agent's client config (same roots, same provider, same key exchange);
//! - the same hyper server builder (auto h1/h2, header-read timer).
//!
//! What it leaves out, on purpose (each is part of what SpendGuard costs): the BPF look-up of the
//! original destination (it forwards to the fixed `--upstream`), identity, the ClientHello peek and
//! routing, the per-connection certificate-cache look-up (it mints once at start), metering (quote,
//! reserve, usage tap, settle, audit), metrics and tracing.
//!
//! Usage: `sg-floor --listen ADDR --upstream ADDR --host SNI --state-dir DIR [--upstream-ca PEM]`;
//! prints `ready` once listening and runs until its stdin closes (it never outlives the bench).

use std::convert::Infallible;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context as _};
use http_body_util::BodyExt as _;
use spendguard_agent::proxy::forward::Upstreams;
use spendguard_agent::proxy::http_conn;
use spendguard_agent::proxy::intercept::HEADER_READ_TIMEOUT;
use spendguard_agent::tls::Ca;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

struct Args {
    listen: SocketAddr,
    upstream: SocketAddr,
    host: String,
    state_dir: PathBuf,
    upstream_ca: Option<PathBuf>,
}

fn args() -> anyhow::Result<Args> {
    let (mut listen, mut upstream, mut host, mut state_dir, mut upstream_ca) =
        (None, None, None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = it.next().ok_or_else(|| anyhow!("{a} needs a value"))?;
        match a.as_str() {
            "--listen" => listen = Some(v.parse().context("--listen")?),
            "--upstream" => upstream = Some(v.parse().context("--upstream")?),
            "--host" => host = Some(v),
            "--state-dir" => state_dir = Some(PathBuf::from(v)),
            "--upstream-ca" => upstream_ca = Some(PathBuf::from(v)),
            other => return Err(anyhow!("unknown argument {other}")),
        }
    }
    let need = |n: &str| anyhow!("{n} is required");
    Ok(Args {
        listen: listen.ok_or_else(|| need("--listen"))?,
        upstream: upstream.ok_or_else(|| need("--upstream"))?,
        host: host.ok_or_else(|| need("--host"))?,
        state_dir: state_dir.ok_or_else(|| need("--state-dir"))?,
        upstream_ca,
    })
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    // The agent's runtime shape: tokio's multi-threaded scheduler, one worker per CPU.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(a))
}

async fn serve(a: Args) -> anyhow::Result<()> {
    let ca = Ca::load_or_generate(&a.state_dir, None, None)?;
    let server_cfg = ca.server_config(&a.host).await?;
    let acceptor = TlsAcceptor::from(server_cfg);
    let client_cfg = spendguard_agent::tls::upstream::client_config(a.upstream_ca.as_deref())?;
    let upstreams = Arc::new(Upstreams::new(client_cfg));
    let listener = TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("bind {}", a.listen))?;
    println!("ready");
    // Runs until stdin closes: the bench holds the other end.
    std::thread::spawn(|| {
        let mut buf = [0u8; 64];
        while !matches!(std::io::stdin().read(&mut buf), Ok(0) | Err(_)) {}
        std::process::exit(0);
    });
    let host: Arc<str> = a.host.into();
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("sg-floor: accept: {e}");
                continue;
            }
        };
        // As the agent does on accepted sockets (a 40 ms delayed-ACK stall otherwise).
        let _ = tcp.set_nodelay(true);
        let (acceptor, upstreams, host, dst) = (
            acceptor.clone(),
            upstreams.clone(),
            host.clone(),
            a.upstream,
        );
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (upstreams, host) = (upstreams.clone(), host.clone());
                    async move {
                        let req = req.map(|b| b.map_err(Into::into).boxed_unsync());
                        let resp = match upstreams.send(dst, &host, req).await {
                            Ok(r) => {
                                let (mut parts, body) = r.into_parts();
                                spendguard_agent::proxy::forward::strip_hop_by_hop(
                                    &mut parts.headers,
                                );
                                http::Response::from_parts(
                                    parts,
                                    body.map_err(Into::into).boxed_unsync(),
                                )
                            }
                            Err(e) => {
                                let mut r = http::Response::new(
                                    spendguard_agent::proxy::body::full(e.to_string()),
                                );
                                *r.status_mut() = http::StatusCode::BAD_GATEWAY;
                                r
                            }
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
            // The version as ALPN settled it, as the agent does (proxy/http_conn.rs).
            let _ = http_conn::serve(tls, svc, HEADER_READ_TIMEOUT).await;
        });
    }
}
