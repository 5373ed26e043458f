//! A WebSocket session through the proxy (OpenAI Realtime). The upgrade request goes upstream on a
//! connection of its own — HTTP/1.1, the version whose `Upgrade` every provider speaks, never one
//! of the pooled connections — and once both sides switched protocols the bytes are relayed in
//! both directions, read beside the stream by the frame tap ([`super::websocket`]) and judged
//! message by message by the stage's [`SessionWatch`].
//!
//! - Server → client: forwarded as they arrive, never held; the tap reads each text message after
//!   its bytes went out (the watch charges what it reports).
//! - Client → server: held until the message is complete, then the watch decides; a refused
//!   message never reaches the provider. Client messages are small JSON events; one longer than
//!   [`MAX_CLIENT_MESSAGE`] ends the session (it could not be read, so it could not be metered).
//! - Ending a session (a refusal, the agent stopping): SpendGuard writes its error event and close
//!   frame to the client at the next message boundary of the server's stream (never inside a
//!   frame), and a close frame to the provider.
//! - Per-message-deflate is negotiated away: `Sec-WebSocket-Extensions` is removed from the
//!   client's handshake, and a provider answer that names an extension anyway is refused (502) —
//!   compressed frames could not be read, so their usage could not be charged.

use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

use super::body::{full, Body};
use super::forward::{self, Upstreams};
use super::reply::json_error;
use super::stage::{RequestContext, SessionWatch, Verdict};
use super::websocket::{self, close_payload, Event, FrameReader, Limit, Opcode, Sender};

/// The longest client message relayed: it is held whole before it is forwarded.
pub const MAX_CLIENT_MESSAGE: usize = 16 << 20;
/// The longest server message the tap reads (longer ones pass unread: a `response.done` longer
/// than this leaves its response charged at its worst case).
pub const MAX_SERVER_MESSAGE_READ: usize = 8 << 20;
/// Control frames a client may slip between the fragments of one message, in bytes held.
const MAX_HELD_CONTROL: usize = 64 << 10;
/// How long a closing session waits for the provider's stream to reach a message boundary.
const CLOSING_GRACE: Duration = Duration::from_secs(5);
/// How long the upgrade handshake with the provider may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
const READ_BUF: usize = 64 << 10;

/// Close codes (RFC 6455 7.4.1).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_PROTOCOL: u16 = 1002;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;

/// Whether `req` asks to switch to WebSocket (RFC 6455 4.1: a GET with `Upgrade: websocket` and
/// `Connection: upgrade`).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    req.method() == http::Method::GET
        && has(header::UPGRADE, "websocket")
        && has(header::CONNECTION, "upgrade")
}

#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("connecting to the provider failed: {0}")]
    Connect(std::io::Error),
    #[error("{0} is not a valid TLS server name")]
    Name(String),
    #[error("the provider's handshake failed: {0}")]
    Http(String),
    #[error("the provider did not answer the upgrade within {0:?}")]
    Timeout(Duration),
}

/// Sends the upgrade upstream and answers the client: the provider's 101 (then the relay runs
/// in its own task), or whatever else the provider answered, or an error of SpendGuard's.
pub async fn open(
    upstreams: &Upstreams,
    ctx: &RequestContext,
    mut request: Request<Body>,
    mut watch: Box<dyn SessionWatch>,
    shutdown: CancellationToken,
) -> Response<Body> {
    let fail = |status: StatusCode, kind: &str, msg: &str| {
        json_error(status, &ctx.sni, kind, msg, serde_json::json!({}))
    };
    let Some(client_up) = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
    else {
        watch.on_end(false, "the client connection cannot be upgraded");
        return fail(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "a WebSocket session needs an HTTP/1.1 connection (Upgrade: websocket)",
        );
    };
    let resp = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(upstreams, ctx, request))
        .await
        .unwrap_or(Err(OpenError::Timeout(HANDSHAKE_TIMEOUT)))
    {
        Ok(r) => r,
        Err(e) => {
            let msg = format!(
                "SpendGuard could not reach {} ({}): {e}",
                ctx.sni, ctx.orig_dst
            );
            tracing::warn!(agent = %ctx.identity.agent, "{msg}");
            watch.on_end(false, &msg);
            return fail(StatusCode::BAD_GATEWAY, "upstream_error", &msg);
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Refused by the provider (bad key, unknown model): nothing ran.
        watch.on_end(false, &format!("the provider answered {}", resp.status()));
        let (mut parts, body) = resp.into_parts();
        forward::strip_hop_by_hop(&mut parts.headers);
        return Response::from_parts(parts, body.map_err(Into::into).boxed_unsync());
    }
    if resp
        .headers()
        .contains_key(header::SEC_WEBSOCKET_EXTENSIONS)
    {
        let msg = format!(
            "{} negotiated a WebSocket extension SpendGuard did not offer; its frames could not be metered",
            ctx.sni
        );
        tracing::warn!(agent = %ctx.identity.agent, "{msg}");
        watch.on_end(false, &msg);
        return fail(StatusCode::BAD_GATEWAY, "upstream_error", &msg);
    }
    let mut resp = resp;
    let server_up = hyper::upgrade::on(&mut resp);
    let (mut parts, _) = resp.into_parts();
    watch.on_head(&mut parts);
    let agent = ctx.identity.agent.clone();
    tokio::spawn(async move {
        let (client, server) = match tokio::join!(client_up, server_up) {
            (Ok(c), Ok(s)) => (c, s),
            (c, s) => {
                let why = format!(
                    "the upgrade did not complete (client: {:?}, provider: {:?})",
                    c.err().map(|e| e.to_string()),
                    s.err().map(|e| e.to_string())
                );
                watch.on_end(false, &why);
                return;
            }
        };
        let why = relay(
            TokioIo::new(client),
            TokioIo::new(server),
            &mut *watch,
            shutdown,
        )
        .await;
        tracing::debug!(%agent, "WebSocket session ended: {why}");
        watch.on_end(true, &why);
    });
    Response::from_parts(parts, full(Vec::new()))
}

/// The upgrade request on a fresh TLS connection to the original destination (ALPN http/1.1).
async fn handshake(
    upstreams: &Upstreams,
    ctx: &RequestContext,
    mut request: Request<Body>,
) -> Result<Response<hyper::body::Incoming>, OpenError> {
    let pq = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    *request.uri_mut() = pq
        .parse()
        .map_err(|e: http::uri::InvalidUri| OpenError::Http(e.to_string()))?;
    *request.version_mut() = http::Version::HTTP_11;
    let h = request.headers_mut();
    // Negotiated away: SpendGuard's tap reads uncompressed frames only.
    h.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    forward::strip_hop_by_hop(h);
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if !h.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(&ctx.sni) {
            h.insert(header::HOST, v);
        }
    }
    let tcp = super::upstream::connect(ctx.orig_dst)
        .await
        .map_err(OpenError::Connect)?;
    let mut tls = (*upstreams.tls()).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(ctx.sni.clone())
        .map_err(|_| OpenError::Name(ctx.sni.clone()))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(OpenError::Connect)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| OpenError::Http(forward::error_chain(&e)))?;
    tokio::spawn(async move {
        // Ends when the upgraded connection is handed over (or the provider closes it).
        let _ = conn.with_upgrades().await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| OpenError::Http(forward::error_chain(&e)))
}

/// How a session is being ended by SpendGuard.
struct Closing {
    /// A text message for the client before the close frame (the stage's error event).
    event: Option<String>,
    code: u16,
    reason: String,
}

/// A client-side mask key (RFC 6455 5.3: unpredictable): SipHash under the process's random
/// keys, over a counter.
fn mask_key() -> [u8; 4] {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let v = h.finish().to_le_bytes();
    [v[0], v[1], v[2], v[3]]
}

/// Relays until both sides are done or SpendGuard ends the session; returns how it ended.
pub async fn relay<C, S>(
    client: C,
    server: S,
    watch: &mut dyn SessionWatch,
    shutdown: CancellationToken,
) -> String
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut sr, mut sw) = tokio::io::split(server);
    let mut from_client = FrameReader::new(Sender::Client, Limit::Refuse(MAX_CLIENT_MESSAGE));
    let mut from_server = FrameReader::new(Sender::Server, Limit::Skip(MAX_SERVER_MESSAGE_READ));
    // Client bytes since its last message boundary: held until the watch decides.
    let mut held: Vec<u8> = Vec::new();
    let mut cbuf = vec![0u8; READ_BUF];
    let mut sbuf = vec![0u8; READ_BUF];
    let (mut client_open, mut server_open) = (true, true);
    let mut closing: Option<Closing> = None;
    let grace = tokio::time::sleep(Duration::MAX);
    tokio::pin!(grace);

    macro_rules! finish {
        ($why:expr) => {{
            let why: String = $why;
            if let Some(c) = closing.take() {
                if let Some(ev) = &c.event {
                    let _ = cw
                        .write_all(&websocket::encode(Opcode::Text, ev.as_bytes(), None))
                        .await;
                }
                let close =
                    websocket::encode(Opcode::Close, &close_payload(c.code, &c.reason), None);
                let _ = cw.write_all(&close).await;
            }
            let _ = cw.shutdown().await;
            let _ = sw.shutdown().await;
            return why;
        }};
    }

    loop {
        if !client_open && !server_open {
            return "both sides closed".to_string();
        }
        tokio::select! {
            r = cr.read(&mut cbuf), if client_open && closing.is_none() => {
                let n = match r {
                    Ok(0) | Err(_) => {
                        client_open = false;
                        let _ = sw.shutdown().await;
                        continue;
                    }
                    Ok(n) => n,
                };
                let events = match from_client.feed(&cbuf[..n]) {
                    Ok(e) => e,
                    Err(e) => {
                        let code = if matches!(e, websocket::FrameError::TooLarge(_)) { CLOSE_TOO_BIG } else { CLOSE_PROTOCOL };
                        closing = Some(Closing { event: None, code, reason: e.to_string() });
                        let close = websocket::encode(Opcode::Close, &close_payload(CLOSE_NORMAL, ""), Some(mask_key()));
                        let _ = sw.write_all(&close).await;
                        if from_server.at_boundary() {
                            finish!(format!("the client's framing failed: {e}"));
                        }
                        grace.as_mut().reset(tokio::time::Instant::now() + CLOSING_GRACE);
                        continue;
                    }
                };
                let mut start = 0;
                for ev in events {
                    if !ev.at_boundary() {
                        continue;
                    }
                    held.extend_from_slice(&cbuf[start..ev.end()]);
                    start = ev.end();
                    let verdict = match &ev {
                        // Binary messages too: a provider may parse a JSON event from either.
                        Event::Message { payload: Some(p), .. } => watch.on_client_text(p).await,
                        _ => Verdict::Forward,
                    };
                    match verdict {
                        Verdict::Forward => {
                            if sw.write_all(&held).await.is_err() {
                                server_open = false;
                            }
                            held.clear();
                        }
                        Verdict::Close { event, reason } => {
                            // The refused message (and anything after it) never reaches the provider.
                            held.clear();
                            closing = Some(Closing { event: Some(event), code: CLOSE_POLICY, reason });
                            break;
                        }
                    }
                }
                if closing.is_some() {
                    let close = websocket::encode(Opcode::Close, &close_payload(CLOSE_NORMAL, ""), Some(mask_key()));
                    let _ = sw.write_all(&close).await;
                    if from_server.at_boundary() {
                        finish!("SpendGuard refused a client message".to_string());
                    }
                    grace.as_mut().reset(tokio::time::Instant::now() + CLOSING_GRACE);
                    continue;
                }
                held.extend_from_slice(&cbuf[start..n]);
                if held.len() > MAX_CLIENT_MESSAGE + MAX_HELD_CONTROL {
                    closing = Some(Closing { event: None, code: CLOSE_TOO_BIG, reason: "message too large to meter".into() });
                    if from_server.at_boundary() {
                        finish!("a client message outgrew what can be held".to_string());
                    }
                    grace.as_mut().reset(tokio::time::Instant::now() + CLOSING_GRACE);
                }
            }
            r = sr.read(&mut sbuf), if server_open => {
                let n = match r {
                    Ok(0) | Err(_) => {
                        server_open = false;
                        if closing.is_some() {
                            finish!("the provider closed while SpendGuard ended the session".to_string());
                        }
                        let _ = cw.shutdown().await;
                        continue;
                    }
                    Ok(n) => n,
                };
                let events = match from_server.feed(&sbuf[..n]) {
                    Ok(e) => e,
                    Err(e) => {
                        // The provider's framing is lost: nothing more it sends could be
                        // metered. The bytes already relayed stay relayed; the session ends.
                        let _ = cw.shutdown().await;
                        let _ = sw.shutdown().await;
                        return format!("the provider's framing failed: {e}");
                    }
                };
                let mut written = 0;
                for ev in events {
                    let end = ev.end();
                    if closing.is_some() {
                        if ev.at_boundary() {
                            let _ = cw.write_all(&sbuf[written..end]).await;
                            finish!("SpendGuard ended the session".to_string());
                        }
                        continue;
                    }
                    if let Event::Message { payload, .. } = &ev {
                        if cw.write_all(&sbuf[written..end]).await.is_err() {
                            client_open = false;
                        }
                        written = end;
                        if let Verdict::Close { event, reason } = watch.on_server_text(payload.as_deref()).await {
                            closing = Some(Closing { event: Some(event), code: CLOSE_POLICY, reason });
                            let close = websocket::encode(Opcode::Close, &close_payload(CLOSE_NORMAL, ""), Some(mask_key()));
                            let _ = sw.write_all(&close).await;
                            finish!("SpendGuard ended the session after a provider event".to_string());
                        }
                    }
                }
                if cw.write_all(&sbuf[written..n]).await.is_err() {
                    client_open = false;
                }
            }
            () = shutdown.cancelled(), if closing.is_none() => {
                closing = Some(Closing { event: None, code: CLOSE_GOING_AWAY, reason: "SpendGuard is stopping".into() });
                let close = websocket::encode(Opcode::Close, &close_payload(CLOSE_GOING_AWAY, ""), Some(mask_key()));
                // Held client bytes never went out: the provider's side is at a boundary.
                held.clear();
                let _ = sw.write_all(&close).await;
                if from_server.at_boundary() {
                    finish!("the agent is stopping".to_string());
                }
                grace.as_mut().reset(tokio::time::Instant::now() + CLOSING_GRACE);
            }
            () = &mut grace, if closing.is_some() => {
                // The provider never reached a boundary: the client's connection is cut instead.
                closing = None;
                finish!("the provider's stream reached no message boundary in time".to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::stage::BoxFuture;
    use crate::proxy::websocket::{Control, Event, FrameReader, Limit, Sender};
    use tokio::io::duplex;

    /// Refuses any client message that says "over", counts what it saw.
    #[derive(Default)]
    struct Judge {
        client: Vec<Vec<u8>>,
        server: Vec<Option<Vec<u8>>>,
    }

    impl SessionWatch for Judge {
        fn on_client_text<'a>(&'a mut self, msg: &'a [u8]) -> BoxFuture<'a, Verdict> {
            self.client.push(msg.to_vec());
            let over = msg.windows(4).any(|w| w == b"over");
            Box::pin(async move {
                if over {
                    Verdict::Close {
                        event: r#"{"type":"error"}"#.into(),
                        reason: "budget exceeded".into(),
                    }
                } else {
                    Verdict::Forward
                }
            })
        }
        fn on_server_text<'a>(&'a mut self, msg: Option<&'a [u8]>) -> BoxFuture<'a, Verdict> {
            self.server.push(msg.map(<[u8]>::to_vec));
            Box::pin(async { Verdict::Forward })
        }
        fn on_end(self: Box<Self>, _switched: bool, _why: &str) {}
    }

    async fn read_all(mut r: impl AsyncRead + Unpin) -> Vec<u8> {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v).await;
        v
    }

    fn events(sender: Sender, bytes: &[u8]) -> Vec<Event> {
        FrameReader::new(sender, Limit::Skip(1 << 20))
            .feed(bytes)
            .expect("well-framed")
    }

    #[tokio::test]
    async fn a_refused_client_message_never_reaches_the_server_and_the_client_gets_the_event() {
        let (client_side, relay_client) = duplex(1 << 16);
        let (relay_server, server_side) = duplex(1 << 16);
        let (mut client_r, mut client_w) = tokio::io::split(client_side);
        let (mut server_r, mut server_w) = tokio::io::split(server_side);
        let mut judge = Judge::default();
        let relay = relay(
            relay_client,
            relay_server,
            &mut judge,
            CancellationToken::new(),
        );
        let drive = async {
            let key = Some([1, 2, 3, 4]);
            // A fragmented allowed message, split mid-header across two writes.
            let mut ok = websocket::encode(Opcode::Text, b"{\"a\":1}", key);
            ok[0] &= 0x7F; // not final
            let mut cont = websocket::encode(Opcode::Text, b"", key);
            cont[0] = 0x80; // final continuation
            let all = [ok, cont].concat();
            client_w.write_all(&all[..1]).await.unwrap();
            client_w.write_all(&all[1..]).await.unwrap();
            // The server answers with a message in two reads.
            let msg = websocket::encode(Opcode::Text, br#"{"type":"response.done"}"#, None);
            server_w.write_all(&msg[..5]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            server_w.write_all(&msg[5..]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            client_w
                .write_all(&websocket::encode(Opcode::Text, b"over budget", key))
                .await
                .unwrap();
            let (to_server, to_client) =
                tokio::join!(read_all(&mut server_r), read_all(&mut client_r));
            (all, to_server, to_client)
        };
        let (why, (sent, to_server, to_client)) = tokio::join!(relay, drive);
        assert!(why.contains("refused"), "{why}");
        // The server got the allowed message byte for byte, then a close, never "over".
        assert!(to_server.starts_with(&sent));
        let srv = FrameReader::new(Sender::Client, Limit::Skip(1 << 20))
            .feed(&to_server)
            .unwrap();
        assert_eq!(srv.len(), 2, "{srv:?}");
        assert!(matches!(
            srv[1],
            Event::Control {
                kind: Control::Close,
                ..
            }
        ));
        // The client got the server's message, the error event, a close 1008.
        let cl = events(Sender::Server, &to_client);
        assert_eq!(cl.len(), 3, "{cl:?}");
        assert!(
            matches!(&cl[1], Event::Message { payload: Some(p), .. } if p == br#"{"type":"error"}"#)
        );
        match &cl[2] {
            Event::Control {
                kind: Control::Close,
                payload,
                ..
            } => {
                assert_eq!(&payload[..2], &CLOSE_POLICY.to_be_bytes());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(judge.client.len(), 2);
        assert_eq!(
            judge.server,
            vec![Some(br#"{"type":"response.done"}"#.to_vec())]
        );
    }

    #[tokio::test]
    async fn a_refusal_waits_for_the_server_stream_to_reach_a_message_boundary() {
        let (client_side, relay_client) = duplex(1 << 16);
        let (relay_server, server_side) = duplex(1 << 16);
        let (mut client_r, mut client_w) = tokio::io::split(client_side);
        let (mut server_r, mut server_w) = tokio::io::split(server_side);
        let mut judge = Judge::default();
        let relay = relay(
            relay_client,
            relay_server,
            &mut judge,
            CancellationToken::new(),
        );
        let drive = async {
            let msg = websocket::encode(Opcode::Text, &[b'x'; 1000], None);
            // Half a server frame is out when the client is refused.
            server_w.write_all(&msg[..400]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            client_w
                .write_all(&websocket::encode(Opcode::Text, b"over", Some([0; 4])))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            server_w.write_all(&msg[400..]).await.unwrap();
            let (_, to_client) = tokio::join!(read_all(&mut server_r), read_all(&mut client_r));
            to_client
        };
        let (_, to_client) = tokio::join!(relay, drive);
        let cl = events(Sender::Server, &to_client);
        assert_eq!(
            cl.len(),
            3,
            "the whole server message, then the event and close: {cl:?}"
        );
        assert!(matches!(&cl[0], Event::Message { payload: Some(p), .. } if p.len() == 1000));
    }

    #[tokio::test]
    async fn binary_client_messages_are_judged_too() {
        let (client_side, relay_client) = duplex(1 << 16);
        let (relay_server, server_side) = duplex(1 << 16);
        let (mut client_r, mut client_w) = tokio::io::split(client_side);
        let (mut server_r, _server_w) = tokio::io::split(server_side);
        let mut judge = Judge::default();
        let relay = relay(
            relay_client,
            relay_server,
            &mut judge,
            CancellationToken::new(),
        );
        let drive = async {
            let mut bin = websocket::encode(Opcode::Text, b"over", Some([5; 4]));
            bin[0] = 0x82; // final binary frame
            client_w.write_all(&bin).await.unwrap();
            let (to_server, _) = tokio::join!(read_all(&mut server_r), read_all(&mut client_r));
            to_server
        };
        let (why, to_server) = tokio::join!(relay, drive);
        assert!(why.contains("refused"), "{why}");
        let srv = events(Sender::Client, &to_server);
        assert!(
            matches!(
                &srv[..],
                [Event::Control {
                    kind: Control::Close,
                    ..
                }]
            ),
            "only a close reached the server: {srv:?}"
        );
    }
}
