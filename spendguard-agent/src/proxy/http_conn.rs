//! Serves the HTTP of one terminated TLS connection, in the version its handshake settled.
//!
//! Over TLS the version is decided by ALPN before the first byte of HTTP (RFC 9113 §3.2: "h2" is
//! only ever negotiated that way), so nothing is sniffed here. hyper-util's `auto` builder would
//! read the first 24 bytes to look for the HTTP/2 preface and replay them; hyper's HTTP/1 reader
//! then starts on those 24 bytes, and reading the rest of the request behind them makes its
//! buffer double from 8 to 16 KiB, which it keeps for the connection's whole life. Choosing by
//! ALPN costs nothing and spares every idle keep-alive connection those 8 KiB (ARCHITECTURE.md,
//! "What each fix bought").

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::rt::bounds::Http2ServerConnExec;
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

/// The HTTP version of a TLS connection, as its handshake settled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http1,
    Http2,
}

impl Version {
    /// `h2` selects HTTP/2; anything else (`http/1.1`, or no ALPN at all) is HTTP/1.1.
    pub fn negotiated(alpn: Option<&[u8]>) -> Version {
        match alpn {
            Some(b"h2") => Version::Http2,
            _ => Version::Http1,
        }
    }
}

pin_project_lite::pin_project! {
    /// One connection being served: HTTP/1.1 (with upgrades, for WebSockets) or HTTP/2.
    #[project = ServedProj]
    pub enum Served<I, S>
    where
        S: HttpService<Incoming>,
    {
        H1 { #[pin] conn: http1::UpgradeableConnection<TokioIo<I>, S> },
        H2 { #[pin] conn: http2::Connection<TokioIo<I>, S, TokioExecutor> },
    }
}

/// Serves `tls` (a finished TLS session) with `svc`, in the version its ALPN settled. HTTP/1.1
/// request heads, and the gaps between keep-alive requests, are bounded by `head_timeout`.
pub fn serve<T, S, B>(tls: TlsStream<T>, svc: S, head_timeout: Duration) -> Served<TlsStream<T>, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    TokioExecutor: Http2ServerConnExec<S::Future, B>,
{
    if Version::negotiated(tls.get_ref().1.alpn_protocol()) == Version::Http2 {
        let mut b = http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new());
        Served::H2 {
            conn: b.serve_connection(TokioIo::new(tls), svc),
        }
    } else {
        let mut b = http1::Builder::new();
        b.timer(TokioTimer::new()).header_read_timeout(head_timeout);
        Served::H1 {
            conn: b.serve_connection(TokioIo::new(tls), svc).with_upgrades(),
        }
    }
}

impl<I, S, B> Served<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    TokioExecutor: Http2ServerConnExec<S::Future, B>,
{
    /// Finishes the requests in flight and accepts no new ones.
    pub fn graceful_shutdown(self: Pin<&mut Self>) {
        match self.project() {
            ServedProj::H1 { conn } => conn.graceful_shutdown(),
            ServedProj::H2 { conn } => conn.graceful_shutdown(),
        }
    }
}

impl<I, S, B> Future for Served<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    TokioExecutor: Http2ServerConnExec<S::Future, B>,
{
    type Output = hyper::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ServedProj::H1 { conn } => conn.poll(cx),
            ServedProj::H2 { conn } => conn.poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_alpn_h2_selects_http2() {
        assert_eq!(Version::negotiated(Some(b"h2")), Version::Http2);
        assert_eq!(Version::negotiated(Some(b"http/1.1")), Version::Http1);
        // No ALPN: RFC 9113 §3.3's prior knowledge is not offered over TLS, so HTTP/1.1.
        assert_eq!(Version::negotiated(None), Version::Http1);
        assert_eq!(Version::negotiated(Some(b"h2c")), Version::Http1);
    }
}
