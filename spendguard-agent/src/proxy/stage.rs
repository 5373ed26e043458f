//! The seam between transport and policy. For every intercepted HTTP request a [`Stage`] decides
//! before anything is forwarded (forward as is, forward rewritten, or answer itself — the provider then
//! never sees the request), and gets a [`ResponseWatch`] that sees the response head and every body
//! chunk on its way to the client (and may change them), and learns how the body ended.
//!
//! Pricing and the ledger are a stage; [`PassThrough`] is the stage that does nothing.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use http::{Request, Response};

use super::body::Body;
use super::inbound::Identity;

/// What a stage knows about the connection a request came in on.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub identity: Identity,
    pub sni: String,
    pub orig_dst: SocketAddr,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub enum Decision {
    /// Send `request` (possibly rewritten) upstream; `watch` observes the response.
    Forward {
        request: Request<Body>,
        watch: Box<dyn ResponseWatch>,
    },
    /// Answer the client directly; nothing is sent upstream.
    Respond(Response<Body>),
    /// A WebSocket upgrade: send `request` upstream as its own HTTP/1.1 connection and, once both
    /// sides switched protocols, relay the frames through `watch` (`proxy/ws_relay.rs`).
    Upgrade {
        request: Request<Body>,
        watch: Box<dyn SessionWatch>,
    },
}

/// What to do with a WebSocket message the tap read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through (a server message has already gone through: the tap reads beside it).
    Forward,
    /// End the session: the client gets `event` (a text message) and a close frame with `reason`;
    /// a refused client message never reaches the provider.
    Close { event: String, reason: String },
}

/// Watches one WebSocket session, message by message, in both directions. Transport calls it in
/// order and waits for each answer, so a client message is held (and only it: the server's
/// stream keeps flowing) while the stage decides about it.
pub trait SessionWatch: Send + 'static {
    /// The provider's `101 Switching Protocols` head, before the client sees it.
    fn on_head(&mut self, _head: &mut http::response::Parts) {}
    /// A complete client message (text, or binary: a provider may read JSON from either), before
    /// it is forwarded.
    fn on_client_text<'a>(&'a mut self, msg: &'a [u8]) -> BoxFuture<'a, Verdict>;
    /// A complete server message, just forwarded (`None`: longer than the tap keeps).
    fn on_server_text<'a>(&'a mut self, msg: Option<&'a [u8]>) -> BoxFuture<'a, Verdict>;
    /// Called exactly once, last: the session ended (`switched`: it ever got past the handshake;
    /// `why` says how it ended).
    fn on_end(self: Box<Self>, switched: bool, why: &str);
}

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// Every byte reached the client's connection.
    Complete,
    /// The client went away or the upstream broke mid-body.
    Aborted,
}

pub trait ResponseWatch: Send + 'static {
    /// The provider's response head, before the client sees it (headers may be added).
    fn on_head(&mut self, _head: &mut http::response::Parts) {}
    /// A body chunk on its way to the client; returns the bytes to forward (usually `chunk`).
    fn on_data(&mut self, chunk: Bytes) -> Bytes {
        chunk
    }
    /// The upstream body ended cleanly: bytes still to forward (e.g. a held-back partial event).
    fn on_eof(&mut self) -> Bytes {
        Bytes::new()
    }
    /// Called exactly once, last: after the body ended, or when the request failed before a response
    /// (`upstream_error` is then set).
    fn on_end(self: Box<Self>, _end: BodyEnd, _upstream_error: Option<&str>) {}
}

pub trait Stage: Send + Sync + 'static {
    fn on_request<'a>(
        &'a self,
        ctx: &'a RequestContext,
        request: Request<Body>,
    ) -> BoxFuture<'a, Decision>;
}

/// Forwards everything unchanged and watches nothing.
pub struct PassThrough;

struct NoWatch;
impl ResponseWatch for NoWatch {}

impl Stage for PassThrough {
    fn on_request<'a>(
        &'a self,
        _ctx: &'a RequestContext,
        request: Request<Body>,
    ) -> BoxFuture<'a, Decision> {
        Box::pin(async move {
            Decision::Forward {
                request,
                watch: Box::new(NoWatch),
            }
        })
    }
}
