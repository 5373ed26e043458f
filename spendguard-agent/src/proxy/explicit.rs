//! Explicit proxy mode, for machines without eBPF and for development: clients set
//! `HTTPS_PROXY=http://AGENT@127.0.0.1:15080` and send `CONNECT host:443`. The agent is the
//! Proxy-Authorization user name (or `explicit_default_agent`); from the CONNECT on, the tunnel goes
//! through the same pipeline as a redirected connection (route → intercept or passthrough).
//!
//! Trust: anyone who can reach this port can claim any agent name, so it listens on loopback by
//! default; it cannot bypass budgets, only choose whose budget pays. Only port 443 is tunnelled — it
//! is not a general-purpose proxy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::inbound::Identity;
use super::{dispatch, Inbound, ProxyContext};
use crate::identity::AgentName;

/// A CONNECT head larger than this is refused (real ones are a few hundred bytes).
const MAX_HEAD: usize = 8 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How explicit mode names agents and finds hosts.
#[derive(Clone, Debug, Default)]
pub struct ExplicitOptions {
    pub default_agent: Option<AgentName>,
    /// Host → address overrides (air-gapped nodes, tests); other hosts are resolved with DNS.
    pub resolve: Vec<(String, std::net::IpAddr)>,
}

pub async fn serve(listener: TcpListener, ctx: Arc<ProxyContext>, opts: Arc<ExplicitOptions>) {
    while let Some((stream, peer)) =
        crate::accept::next(|| listener.accept(), &ctx.shutdown, "explicit proxy").await
    {
        let ctx = ctx.clone();
        let opts = opts.clone();
        // No Nagle delay on a proxy's writes (see proxy::handle).
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            if let Err(e) = handle(stream, peer, ctx, &opts).await {
                tracing::debug!(%peer, "explicit proxy: {e}");
            }
        });
    }
}

async fn reply(stream: &mut TcpStream, status: &str, extra: &str) -> std::io::Result<()> {
    let msg = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n{extra}\r\n");
    stream.write_all(msg.as_bytes()).await
}

async fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ProxyContext>,
    opts: &ExplicitOptions,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_len = loop {
        let n = match tokio::time::timeout(HEAD_TIMEOUT, stream.read(&mut chunk)).await {
            Ok(r) => r?,
            Err(_) => return reply(&mut stream, "408 Request Timeout", "").await,
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return reply(&mut stream, "431 Request Header Fields Too Large", "").await;
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(
        req.parse(&buf[..head_len]),
        Ok(httparse::Status::Complete(_))
    ) {
        return reply(&mut stream, "400 Bad Request", "").await;
    }
    if req.method != Some("CONNECT") {
        return reply(&mut stream, "405 Method Not Allowed", "allow: CONNECT\r\n").await;
    }
    let target = req.path.unwrap_or_default().to_string();
    let Some((host, port)) = target.rsplit_once(':').and_then(|(h, p)| {
        p.parse::<u16>()
            .ok()
            .map(|p| (h.trim_matches(|c| c == '[' || c == ']').to_string(), p))
    }) else {
        return reply(&mut stream, "400 Bad Request", "").await;
    };
    if port != spendguard_common::HTTPS_PORT {
        return reply(&mut stream, "403 Forbidden", "").await;
    }
    let agent = match agent_of(req.headers, opts) {
        Ok(a) => a,
        Err(why) => {
            tracing::debug!(%peer, "explicit proxy refused: {why}");
            return reply(
                &mut stream,
                "407 Proxy Authentication Required",
                "proxy-authenticate: Basic realm=\"spendguard (user name = agent name)\"\r\n",
            )
            .await;
        }
    };
    let dst = match resolve(&host, port, opts).await {
        Some(d) => d,
        None => return reply(&mut stream, "502 Bad Gateway", "").await,
    };
    // Bytes the client pipelined after the head (a ClientHello) must not be lost.
    let rest = buf[head_len..].to_vec();
    reply(&mut stream, "200 Connection Established", "").await?;
    let inbound = Inbound {
        stream,
        peer,
        orig_dst: dst,
        identity: Identity {
            agent,
            tagged_cgroup: "explicit-proxy".into(),
            cgroup_id: 0,
            pod: None,
        },
        pending: rest,
    };
    let span = tracing::info_span!("conn", agent = %inbound.identity.agent, dst = %inbound.orig_dst, mode = "explicit");
    tracing::debug!(parent: &span, %peer, %host, "explicit proxy tunnel");
    tracing::Instrument::instrument(dispatch(inbound, ctx), span).await;
    Ok(())
}

/// The agent from `Proxy-Authorization: Basic base64(agent:anything)`, else the default.
fn agent_of(headers: &[httparse::Header<'_>], opts: &ExplicitOptions) -> Result<AgentName, String> {
    let auth = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("proxy-authorization"));
    if let Some(h) = auth {
        let v = std::str::from_utf8(h.value).map_err(|_| "non-UTF-8 Proxy-Authorization")?;
        let b64 = v
            .strip_prefix("Basic ")
            .or_else(|| v.strip_prefix("basic "))
            .ok_or("Proxy-Authorization is not Basic")?;
        let decoded = decode_base64(b64.trim()).ok_or("Proxy-Authorization is not base64")?;
        let text = String::from_utf8(decoded).map_err(|_| "Proxy-Authorization is not UTF-8")?;
        let user = text.split(':').next().unwrap_or_default();
        return user.parse::<AgentName>().map_err(|e| e.to_string());
    }
    opts.default_agent
        .clone()
        .ok_or_else(|| "no Proxy-Authorization and no explicit_default_agent".to_string())
}

async fn resolve(host: &str, port: u16, opts: &ExplicitOptions) -> Option<SocketAddr> {
    if let Some((_, ip)) = opts
        .resolve
        .iter()
        .find(|(h, _)| h.eq_ignore_ascii_case(host))
    {
        return Some(SocketAddr::new(*ip, port));
    }
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port)).await.ok()?.next()
}

/// Standard base64 (the only place we need it: a Basic credential).
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= val(*c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_name_the_agent() {
        assert_eq!(
            decode_base64("YWNtZS5kZXY6eA==").as_deref(),
            Some(&b"acme.dev:x"[..])
        );
        assert_eq!(decode_base64("YQ").as_deref(), Some(&b"a"[..]));
        let h = [httparse::Header {
            name: "Proxy-Authorization",
            value: b"Basic YWNtZS5kZXY6eA==",
        }];
        assert_eq!(
            agent_of(&h, &ExplicitOptions::default())
                .expect("agent")
                .as_str(),
            "acme.dev"
        );
        let bad = [httparse::Header {
            name: "proxy-authorization",
            value: b"Basic QmFkOng=",
        }];
        assert!(
            agent_of(&bad, &ExplicitOptions::default()).is_err(),
            "invalid agent names are refused"
        );
        assert!(agent_of(&[], &ExplicitOptions::default()).is_err());
        let d = ExplicitOptions {
            default_agent: Some("dev".parse().expect("name")),
            resolve: vec![],
        };
        assert_eq!(agent_of(&[], &d).expect("default").as_str(), "dev");
    }
}
