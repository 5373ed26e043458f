//! A fake LLM provider for end-to-end tests: serves the OpenAI (Chat Completions, Responses,
//! Embeddings, Models), Anthropic (Messages) and Gemini (generateContent) wire formats over TLS
//! (h2 + http/1.1), with a certificate signed by a test CA, so the real SDKs can be pointed at it.
//!
//! Test control through request headers:
//! - `x-fake-usage: prompt=100,completion=20,cached=10,cache_write=0,cache_write_1h=0,reasoning=0`
//!   (defaults prompt=11, completion=7, the rest 0). Reported verbatim in each provider's own fields:
//!   OpenAI `prompt_tokens`/`input_tokens` = prompt (cached is *inside* it, as OpenAI does),
//!   `completion_tokens`/`output_tokens` = completion (reasoning inside it); Anthropic
//!   `input_tokens` = prompt (uncached), `cache_read_input_tokens` = cached,
//!   `cache_creation_input_tokens` = cache_write + cache_write_1h; Gemini `promptTokenCount` =
//!   prompt, `cachedContentTokenCount` = cached, `candidatesTokenCount` = completion,
//!   `thoughtsTokenCount` = reasoning, `totalTokenCount` = prompt + completion + reasoning.
//! - `x-fake-chunks: N` content deltas when streaming (default 3); delta `i` is [`delta_text`]`(i)`.
//! - `x-fake-chunk-delay-ms: N` delay between SSE events.
//! - `x-fake-delay-ms: N` delay before the response head (a client or proxy that gives up while it
//!   waits is counted by [`FakeProvider::abandoned_before_head`]).
//! - `x-fake-reset-after-chunks: N` (streams) after N SSE events the connection is reset: a TCP RST,
//!   no end of stream (counted by [`FakeProvider::resets`]).
//! - `x-fake-status: 500` answer with that status in the provider's error shape.
//! - `x-fake-delta-usage: full` Anthropic `message_delta.usage` repeats the input/cache fields
//!   (as newer API versions do); by default it carries only `output_tokens`.
//! - Vertex AI: `…/publishers/anthropic/models/M:rawPredict|streamRawPredict` answer as Anthropic
//!   Messages, `…/publishers/google/models/M:generateContent|streamGenerateContent` as Gemini.
//! - Bedrock (`POST /model/{id}/{converse|converse-stream|invoke|invoke-with-response-stream}`):
//!   Converse `usage` = {inputTokens: prompt, outputTokens: completion, cacheReadInputTokens:
//!   cached, cacheWriteInputTokens: cache_write, totalTokens: all four}; streams are
//!   `application/vnd.amazon.eventstream` (ConverseStream's `metadata` event, InvokeModel
//!   stream chunks with `amazon-bedrock-invocationMetrics` on the last); InvokeModel answers in
//!   the Anthropic shape with the `x-amzn-bedrock-*-token-count` headers
//!   (`x-fake-bedrock-headers: off` leaves them out).
//! - Cohere (`POST /v2/chat`): `usage.billed_units` = {input_tokens: prompt, output_tokens:
//!   completion}, `usage.tokens` = {input_tokens: prompt + 50 (the unbilled preamble),
//!   output_tokens: completion}; streams are SSE ending in `message-end` with that usage.
//! - Perplexity (`POST /chat/completions`, Perplexity's root path): Chat Completions with `usage`
//!   = {prompt_tokens, completion_tokens, total_tokens, search_context_size: the request's
//!   `web_search_options.search_context_size` or `low`, cost {…}} plus `citations` and
//!   `search_results`; streams carry the cumulative usage on every chunk (completion_tokens
//!   growing to `completion`, a zero cost skeleton until the last chunk, which has
//!   `finish_reason: stop` and `request_cost`), and no `[DONE]`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// How much of each request body [`RecordedRequest::body`] keeps.
pub const RECORDED_BODY_LIMIT: usize = 1 << 20;

/// The ALPN protocols served when `start` is given an empty list.
pub const DEFAULT_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The text of streamed content delta `i` (the non-streamed content is the concatenation of all).
pub fn delta_text(i: usize) -> String {
    format!("tok{i} ")
}

/// The full content text for `n` chunks: `delta_text(0) + … + delta_text(n-1)`.
pub fn expected_text(n: usize) -> String {
    (0..n).map(delta_text).collect()
}

// ---------------------------------------------------------------------------------------------
// Test CA
// ---------------------------------------------------------------------------------------------

/// A test CA (rcgen) that signs leaf certificates for test hosts.
pub struct TestCa {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "SpendGuard tests");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa {
            cert,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A leaf certificate (chain: just the leaf) and its key for `hosts` (DNS names or IP addresses).
    pub fn leaf(&self, hosts: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let (cert, key) = self.leaf_cert(hosts);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone()], key)
    }

    /// [`TestCa::leaf`] as PEM files' contents (certificate, PKCS#8 key), for servers that read
    /// files (`redis-server --tls-cert-file`).
    pub fn leaf_pem(&self, hosts: &[&str]) -> (String, String) {
        let (cert, key) = self.leaf_cert(hosts);
        (cert.pem(), key.serialize_pem())
    }

    fn leaf_cert(&self, hosts: &[&str]) -> (rcgen::Certificate, rcgen::KeyPair) {
        let cn = hosts.first().copied().unwrap_or("fake-provider");
        self.signed(hosts, cn, &[], rcgen::ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A certificate for `hosts` (DNS names or IP addresses; none for a client certificate) with
    /// common name `cn`, organizations `orgs` and extended key usage `usage`, and its key, PEM.
    pub fn signed_pem(
        &self,
        hosts: &[&str],
        cn: &str,
        orgs: &[&str],
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let (cert, key) = self.signed(hosts, cn, orgs, usage);
        (cert.pem(), key.serialize_pem())
    }

    fn signed(
        &self,
        hosts: &[&str],
        cn: &str,
        orgs: &[&str],
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> (rcgen::Certificate, rcgen::KeyPair) {
        use rcgen::{CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let sans: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
        let mut params =
            CertificateParams::new(sans).expect("leaf params: hosts must be DNS names or IPs");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        for o in orgs {
            params.distinguished_name.push(DnType::OrganizationName, *o);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        // Python 3.13+ verifies with VERIFY_X509_STRICT, which wants the AKI extension.
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        (cert, key)
    }
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// One request as the fake provider received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// "HTTP/1.1" or "HTTP/2.0".
    pub version: String,
    /// Names lowercase, in arrival order (HTTP/2 pseudo-headers are not included).
    pub headers: Vec<(String, String)>,
    /// The first [`RECORDED_BODY_LIMIT`] bytes of the body.
    pub body: Vec<u8>,
    /// The full body length.
    pub body_len: u64,
    /// The TLS SNI the client sent (none when it connected by IP address).
    pub sni: Option<String>,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The (recorded part of the) body as JSON, if it is JSON.
    pub fn body_json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

#[derive(Default)]
struct State {
    requests: Mutex<Vec<RecordedRequest>>,
    connections: AtomicUsize,
    cancelled_streams: AtomicUsize,
    abandoned_before_head: AtomicUsize,
    resets: AtomicUsize,
    next_id: AtomicU64,
    /// Client events of Realtime sessions, in arrival order.
    realtime: crate::fake_realtime::Events,
}

impl State {
    fn requests(&self) -> MutexGuard<'_, Vec<RecordedRequest>> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh id suffix: unique within the process run, hex.
    fn id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        format!("{:012x}{:012x}", t & 0xffff_ffff_ffff, n)
    }
}

/// A fake LLM provider serving TLS on its own thread and tokio runtime. Stops on drop.
pub struct FakeProvider {
    pub addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeProvider {
    /// Serves TLS on `listener` (already bound), with a certificate for `hosts` signed by `ca`,
    /// offering the ALPN protocols `alpn` (empty: [`DEFAULT_ALPN`], h2 + http/1.1), on a background
    /// thread with its own tokio runtime.
    pub fn start(
        listener: std::net::TcpListener,
        ca: &TestCa,
        hosts: &[&str],
        alpn: &[&[u8]],
    ) -> FakeProvider {
        let addr = listener.local_addr().expect("listener local_addr");
        listener
            .set_nonblocking(true)
            .expect("listener set_nonblocking");
        let (chain, key) = ca.leaf(hosts);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
        let alpn = if alpn.is_empty() { DEFAULT_ALPN } else { alpn };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let state = Arc::new(State::default());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fake-provider-{addr}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("fake-provider-rt")
                    .enable_all()
                    .build()
                    .expect("fake provider runtime");
                rt.block_on(serve(listener, acceptor, thread_state, rx));
                rt.shutdown_background();
            })
            .expect("spawn fake provider thread");
        FakeProvider {
            addr,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// `https://ADDR` (the address the listener is bound to).
    pub fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests().clone()
    }

    pub fn request_count(&self) -> usize {
        self.state.requests().len()
    }

    /// Forgets the recorded requests (the counters stay).
    pub fn clear_requests(&self) {
        self.state.requests().clear();
    }

    /// How many streamed responses ended because the client went away (the body was dropped
    /// before its last event was handed to the connection).
    pub fn cancelled_streams(&self) -> usize {
        self.state.cancelled_streams.load(Ordering::SeqCst)
    }

    /// How many requests were dropped while the provider waited before its response head
    /// (`x-fake-delay-ms`): the client (the proxy) cancelled them.
    pub fn abandoned_before_head(&self) -> usize {
        self.state.abandoned_before_head.load(Ordering::SeqCst)
    }

    /// How many connections were reset mid-stream on request (`x-fake-reset-after-chunks`).
    pub fn resets(&self) -> usize {
        self.state.resets.load(Ordering::SeqCst)
    }

    /// Every client event the fake Realtime server received, oldest first.
    pub fn realtime_events(&self) -> Vec<Value> {
        self.state
            .realtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many connections were accepted (TLS handshakes completed).
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let tcp = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            // A second descriptor for the same socket, so a handler can reset the connection.
            let sock = tcp.as_fd().try_clone_to_owned().ok().map(Arc::new);
            let tls =
                match tokio::time::timeout(Duration::from_secs(30), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    _ => return,
                };
            state.connections.fetch_add(1, Ordering::SeqCst);
            let sni = tls.get_ref().1.server_name().map(str::to_owned);
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                let sni = sni.clone();
                let sock = sock.clone();
                async move { Ok::<_, Infallible>(handle(req, state, sni, sock).await) }
            });
            let mut server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // What many providers allow per connection: a proxy must open more connections
            // rather than queue streams behind it.
            server
                .http2()
                .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
            let _ = server
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// SETTINGS_MAX_CONCURRENT_STREAMS of the fake provider's HTTP/2 connections.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 100;

// ---------------------------------------------------------------------------------------------
// Request handling
// ---------------------------------------------------------------------------------------------

type Body = UnsyncBoxBody<Bytes, Infallible>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flavor {
    OpenAi,
    Anthropic,
    Gemini,
    Bedrock,
}

enum Route {
    Chat,
    Cohere,
    Perplexity,
    Responses,
    Embeddings,
    Messages,
    Gemini {
        model: String,
        stream: bool,
        sse: bool,
    },
    Bedrock {
        model: String,
        op: String,
    },
    Models,
    Upload,
    NotFound,
}

impl Route {
    fn parse(method: &str, path: &str, query: Option<&str>) -> Route {
        let post = method == "POST";
        match path {
            "/upload" => return Route::Upload,
            "/v1/chat/completions" if post => return Route::Chat,
            "/v2/chat" if post => return Route::Cohere,
            "/chat/completions" if post => return Route::Perplexity,
            "/v1/responses" if post => return Route::Responses,
            "/v1/embeddings" if post => return Route::Embeddings,
            "/v1/messages" if post => return Route::Messages,
            "/v1/models" if method == "GET" => return Route::Models,
            _ => {}
        }
        if let (true, Some(rest)) = (post, path.strip_prefix("/model/")) {
            if let Some((model, op)) = rest.split_once('/') {
                return Route::Bedrock {
                    model: model.replace("%3A", ":").replace("%3a", ":"),
                    op: op.to_owned(),
                };
            }
        }
        // Vertex AI: Claude's rawPredict is the Messages API with the model in the path; Gemini
        // publisher models are the Gemini API under a longer path.
        if let (true, Some((_, model_verb))) =
            (post, path.split_once("/publishers/anthropic/models/"))
        {
            if model_verb.ends_with(":rawPredict") || model_verb.ends_with(":streamRawPredict") {
                return Route::Messages;
            }
        }
        let rest = path
            .strip_prefix("/v1beta/models/")
            .or_else(|| path.strip_prefix("/v1/models/"))
            .or_else(|| {
                path.split_once("/publishers/google/models/")
                    .map(|(_, r)| r)
            });
        if let (true, Some(rest)) = (post, rest) {
            let sse = query.unwrap_or("").split('&').any(|kv| kv == "alt=sse");
            if let Some(model) = rest.strip_suffix(":generateContent") {
                return Route::Gemini {
                    model: model.to_owned(),
                    stream: false,
                    sse: false,
                };
            }
            if let Some(model) = rest.strip_suffix(":streamGenerateContent") {
                return Route::Gemini {
                    model: model.to_owned(),
                    stream: true,
                    sse,
                };
            }
        }
        Route::NotFound
    }

    fn flavor(&self) -> Flavor {
        match self {
            Route::Messages => Flavor::Anthropic,
            Route::Gemini { .. } => Flavor::Gemini,
            Route::Bedrock { .. } => Flavor::Bedrock,
            _ => Flavor::OpenAi,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Usage {
    prompt: u64,
    completion: u64,
    cached: u64,
    cache_write: u64,
    cache_write_1h: u64,
    reasoning: u64,
}

struct Control {
    usage: Usage,
    chunks: usize,
    chunk_delay: Duration,
    delay: Duration,
    status: Option<u16>,
    delta_full_usage: bool,
    bedrock_headers_off: bool,
    reset_after: Option<usize>,
    /// The connection's socket (for `reset_after`).
    sock: Option<Arc<OwnedFd>>,
}

impl Control {
    fn from_headers(h: &HeaderMap) -> Control {
        let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let num = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok());
        let mut usage = Usage {
            prompt: 11,
            completion: 7,
            cached: 0,
            cache_write: 0,
            cache_write_1h: 0,
            reasoning: 0,
        };
        if let Some(spec) = get("x-fake-usage") {
            for kv in spec.split(',') {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let Ok(v) = v.trim().parse::<u64>() else {
                    continue;
                };
                match k.trim() {
                    "prompt" | "input" => usage.prompt = v,
                    "completion" | "output" => usage.completion = v,
                    "cached" | "cache_read" => usage.cached = v,
                    "cache_write" => usage.cache_write = v,
                    "cache_write_1h" => usage.cache_write_1h = v,
                    "reasoning" => usage.reasoning = v,
                    _ => {}
                }
            }
        }
        Control {
            usage,
            chunks: num("x-fake-chunks").map_or(3, |n| n as usize),
            chunk_delay: Duration::from_millis(num("x-fake-chunk-delay-ms").unwrap_or(0)),
            delay: Duration::from_millis(num("x-fake-delay-ms").unwrap_or(0)),
            status: num("x-fake-status")
                .and_then(|s| u16::try_from(s).ok())
                .filter(|s| (400..=599).contains(s)),
            delta_full_usage: get("x-fake-delta-usage") == Some("full"),
            bedrock_headers_off: get("x-fake-bedrock-headers") == Some("off"),
            reset_after: num("x-fake-reset-after-chunks").map(|n| n as usize),
            sock: None,
        }
    }
}

struct BodyRead {
    head: Vec<u8>,
    full: Vec<u8>,
    len: u64,
    sha256: Option<String>,
    complete: bool,
}

/// Reads the body frame by frame: keeps the first [`RECORDED_BODY_LIMIT`] bytes, all of it only
/// when `keep_full`, and hashes it when `hash`.
async fn read_body(mut body: Incoming, keep_full: bool, hash: bool) -> BodyRead {
    let mut out = BodyRead {
        head: Vec::new(),
        full: Vec::new(),
        len: 0,
        sha256: None,
        complete: true,
    };
    let mut hasher = hash.then(Sha256::new);
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(_) => {
                out.complete = false;
                break;
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        out.len += data.len() as u64;
        if out.head.len() < RECORDED_BODY_LIMIT {
            let take = (RECORDED_BODY_LIMIT - out.head.len()).min(data.len());
            out.head.extend_from_slice(&data[..take]);
        }
        if keep_full {
            out.full.extend_from_slice(&data);
        }
        if let Some(h) = hasher.as_mut() {
            h.update(&data);
        }
    }
    out.sha256 = hasher.map(|h| hex(&h.finalize()));
    out
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
    sni: Option<String>,
    sock: Option<Arc<OwnedFd>>,
) -> Response<Body> {
    let method = req.method().as_str().to_owned();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let version = format!("{:?}", req.version());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    if crate::fake_realtime::is_realtime_upgrade(&req) {
        state.requests().push(RecordedRequest {
            method,
            path,
            version,
            headers,
            body: Vec::new(),
            body_len: 0,
            sni,
        });
        return crate::fake_realtime::accept(req, state.realtime.clone())
            .map(|()| Full::new(Bytes::new()).boxed_unsync());
    }
    let mut ctl = Control::from_headers(req.headers());
    ctl.sock = sock;
    let route = Route::parse(&method, req.uri().path(), req.uri().query());
    let upload = matches!(route, Route::Upload);
    let body = read_body(req.into_body(), !upload, upload).await;

    state.requests().push(RecordedRequest {
        method: method.clone(),
        path: path.clone(),
        version,
        headers,
        body: body.head,
        body_len: body.len,
        sni,
    });

    let flavor = route.flavor();
    if !ctl.delay.is_zero() {
        let mut waiting = AbandonGuard {
            state: state.clone(),
            done: false,
        };
        tokio::time::sleep(ctl.delay).await;
        waiting.done = true;
    }
    if !body.complete {
        return error_response(&state, flavor, 400, "the request body was cut off");
    }
    if let Some(status) = ctl.status {
        return error_response(
            &state,
            flavor,
            status,
            "fake error requested by x-fake-status",
        );
    }

    let request = match route {
        Route::Upload => {
            let v = json!({"len": body.len, "sha256": body.sha256.unwrap_or_default()});
            return json_response(&state, Flavor::OpenAi, 200, &v);
        }
        Route::Models => return json_response(&state, Flavor::OpenAi, 200, &models_list()),
        Route::NotFound => {
            let msg = format!("Invalid URL ({method} {path})");
            return error_response(&state, Flavor::OpenAi, 404, &msg);
        }
        _ => match serde_json::from_slice::<Value>(&body.full) {
            Ok(v) => v,
            Err(e) => {
                let msg = format!("We could not parse the JSON body of your request: {e}");
                return error_response(&state, flavor, 400, &msg);
            }
        },
    };
    match route {
        Route::Chat => chat(&state, &ctl, &request),
        Route::Cohere => cohere(&state, &ctl, &request),
        Route::Perplexity => perplexity(&state, &ctl, &request),
        Route::Responses => responses(&state, &ctl, &request),
        Route::Embeddings => embeddings(&state, &ctl, &request),
        Route::Messages => messages(&state, &ctl, &request),
        Route::Gemini { model, stream, sse } => gemini(&state, &ctl, &model, stream, sse),
        Route::Bedrock { model, op } => bedrock(&state, &ctl, &model, &op),
        Route::Upload | Route::Models | Route::NotFound => {
            error_response(&state, Flavor::OpenAi, 500, "unreachable route")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Responses: helpers
// ---------------------------------------------------------------------------------------------

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn model_of(req: &Value) -> String {
    req.get("model")
        .and_then(Value::as_str)
        .unwrap_or("fake-model")
        .to_owned()
}

fn provider_headers(
    state: &State,
    flavor: Flavor,
    builder: hyper::http::response::Builder,
) -> hyper::http::response::Builder {
    match flavor {
        Flavor::OpenAi => builder
            .header("x-request-id", format!("req_{}", state.id()))
            .header("openai-version", "2020-10-01")
            .header("openai-processing-ms", "1"),
        Flavor::Anthropic => builder.header("request-id", format!("req_{}", state.id())),
        Flavor::Gemini => builder.header("server", "fake-provider"),
        Flavor::Bedrock => builder.header("x-amzn-requestid", format!("req-{}", state.id())),
    }
}

fn full_response(
    state: &State,
    flavor: Flavor,
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let builder = Response::builder()
        .status(status)
        .header(CONTENT_TYPE, HeaderValue::from_static(content_type));
    provider_headers(state, flavor, builder)
        .body(Full::new(Bytes::from(body)).boxed_unsync())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync()))
}

fn json_response(state: &State, flavor: Flavor, status: u16, value: &Value) -> Response<Body> {
    let content_type = match flavor {
        Flavor::Gemini => "application/json; charset=UTF-8",
        _ => "application/json",
    };
    full_response(
        state,
        flavor,
        status,
        content_type,
        value.to_string().into_bytes(),
    )
}

fn error_response(state: &State, flavor: Flavor, status: u16, message: &str) -> Response<Body> {
    let body = match flavor {
        Flavor::OpenAi => {
            let (ty, code) = match status {
                401 => ("invalid_request_error", json!("invalid_api_key")),
                404 => ("invalid_request_error", Value::Null),
                429 => ("requests", json!("rate_limit_exceeded")),
                _ if status < 500 => ("invalid_request_error", Value::Null),
                _ => ("server_error", Value::Null),
            };
            json!({"error": {"message": message, "type": ty, "param": null, "code": code}})
        }
        Flavor::Anthropic => {
            let ty = match status {
                400 => "invalid_request_error",
                401 => "authentication_error",
                402 => "billing_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                504 => "timeout_error",
                529 => "overloaded_error",
                _ if status < 500 => "invalid_request_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": ty, "message": message}})
        }
        Flavor::Bedrock => json!({"message": message}),
        Flavor::Gemini => {
            let st = match status {
                400 => "INVALID_ARGUMENT",
                401 => "UNAUTHENTICATED",
                403 => "PERMISSION_DENIED",
                404 => "NOT_FOUND",
                429 => "RESOURCE_EXHAUSTED",
                499 => "CANCELLED",
                503 => "UNAVAILABLE",
                504 => "DEADLINE_EXCEEDED",
                _ => "INTERNAL",
            };
            json!({"error": {"code": status, "message": message, "status": st}})
        }
    };
    json_response(state, flavor, status, &body)
}

/// Marks a stream cancelled when dropped before its last event was handed over.
struct CancelGuard {
    state: Arc<State>,
    completed: bool,
}

impl CancelGuard {
    fn complete(&mut self) {
        self.completed = true;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.completed {
            self.state.cancelled_streams.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Counts a request whose handler was dropped while it waited before the response head.
struct AbandonGuard {
    state: Arc<State>,
    done: bool,
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if !self.done {
            self.state
                .abandoned_before_head
                .fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Aborts the TCP connection of `sock` with a RST: `connect()` to an AF_UNSPEC address dissolves a
/// TCP socket's association (`tcp_disconnect`), which resets an established connection. The
/// descriptor stays open; the connection's owner sees its next read or write fail.
#[expect(unsafe_code, reason = "connect(AF_UNSPEC) has no safe wrapper")]
fn reset_connection(sock: &OwnedFd) {
    // SAFETY: a zeroed sockaddr is a valid AF_UNSPEC (0) address; `sock` is an open descriptor.
    let rc = unsafe {
        let addr: libc::sockaddr = std::mem::zeroed();
        libc::connect(
            sock.as_raw_fd(),
            &addr,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        eprintln!(
            "fake provider: reset failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

struct SseState {
    events: VecDeque<Bytes>,
    delay: Duration,
    first: bool,
    guard: CancelGuard,
    /// Reset the connection after this many more events.
    reset_in: Option<(usize, Arc<OwnedFd>)>,
}

fn sse_response(
    state: &Arc<State>,
    flavor: Flavor,
    events: Vec<Bytes>,
    ctl: &Control,
) -> Response<Body> {
    let sse = SseState {
        events: events.into(),
        delay: ctl.chunk_delay,
        first: true,
        guard: CancelGuard {
            state: state.clone(),
            completed: false,
        },
        reset_in: ctl.reset_after.zip(ctl.sock.clone()),
    };
    let stream = futures_util::stream::unfold(sse, |mut sse| async move {
        if let Some((0, sock)) = &sse.reset_in {
            // Let the events already handed over reach the wire first: a RST discards unsent data.
            tokio::time::sleep(sse.delay.max(Duration::from_millis(200))).await;
            reset_connection(sock);
            sse.guard.state.resets.fetch_add(1, Ordering::SeqCst);
            sse.guard.complete();
            return None;
        }
        if let Some((n, _)) = sse.reset_in.as_mut() {
            *n -= 1;
        }
        let Some(event) = sse.events.pop_front() else {
            sse.guard.complete();
            return None;
        };
        if !sse.first && !sse.delay.is_zero() {
            tokio::time::sleep(sse.delay).await;
        }
        sse.first = false;
        if sse.events.is_empty() && sse.reset_in.is_none() {
            sse.guard.complete();
        }
        Some((Ok::<_, Infallible>(Frame::data(event)), sse))
    });
    let content_type = match flavor {
        Flavor::Gemini => "text/event-stream",
        Flavor::Bedrock => "application/vnd.amazon.eventstream",
        _ => "text/event-stream; charset=utf-8",
    };
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, content_type)
        .header("cache-control", "no-cache");
    provider_headers(state, flavor, builder)
        .body(StreamBody::new(stream).boxed_unsync())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync()))
}

fn sse_data(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn sse_event(name: &str, v: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {v}\n\n"))
}

// ---------------------------------------------------------------------------------------------
// OpenAI
// ---------------------------------------------------------------------------------------------

fn chat_usage(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt,
        "completion_tokens": u.completion,
        "total_tokens": u.prompt + u.completion,
        "prompt_tokens_details": {"cached_tokens": u.cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": u.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

fn chat(state: &Arc<State>, ctl: &Control, req: &Value) -> Response<Body> {
    let model = model_of(req);
    let id = format!("chatcmpl-{}", state.id());
    let created = now();
    if !req.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": expected_text(ctl.chunks), "refusal": null, "annotations": []},
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": chat_usage(&ctl.usage),
            "service_tier": "default",
            "system_fingerprint": "fp_fake"
        });
        return json_response(state, Flavor::OpenAi, 200, &body);
    }
    let include_usage = req
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let chunk = |choices: Value, usage: Option<Value>| {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
            "choices": choices
        });
        if include_usage {
            c["usage"] = usage.unwrap_or(Value::Null);
        }
        sse_data(&c)
    };
    let choice = |delta: Value, finish: Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
    let mut events = vec![chunk(
        choice(
            json!({"role": "assistant", "content": "", "refusal": null}),
            Value::Null,
        ),
        None,
    )];
    for i in 0..ctl.chunks {
        events.push(chunk(
            choice(json!({"content": delta_text(i)}), Value::Null),
            None,
        ));
    }
    events.push(chunk(choice(json!({}), json!("stop")), None));
    if include_usage {
        events.push(chunk(json!([]), Some(chat_usage(&ctl.usage))));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    sse_response(state, Flavor::OpenAi, events, ctl)
}

fn responses_usage(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt,
        "input_tokens_details": {"cached_tokens": u.cached},
        "output_tokens": u.completion,
        "output_tokens_details": {"reasoning_tokens": u.reasoning},
        "total_tokens": u.prompt + u.completion
    })
}

fn responses(state: &Arc<State>, ctl: &Control, req: &Value) -> Response<Body> {
    let model = model_of(req);
    let resp_id = format!("resp_{}", state.id());
    let msg_id = format!("msg_{}", state.id());
    let created = now();
    let text = expected_text(ctl.chunks);
    let message = |status: &str, content: Value| json!({"id": msg_id, "type": "message", "status": status, "role": "assistant", "content": content});
    let part = |text: &str| json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
    let response = |status: &str, output: Value, usage: Value| {
        json!({
            "id": resp_id,
            "object": "response",
            "created_at": created,
            "status": status,
            "background": false,
            "error": null,
            "incomplete_details": null,
            "instructions": req.get("instructions").cloned().unwrap_or(Value::Null),
            "max_output_tokens": req.get("max_output_tokens").cloned().unwrap_or(Value::Null),
            "model": model,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": req.get("previous_response_id").cloned().unwrap_or(Value::Null),
            "reasoning": {"effort": null, "summary": null},
            "service_tier": "default",
            "store": true,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": null,
            "metadata": req.get("metadata").cloned().unwrap_or_else(|| json!({}))
        })
    };
    let done_message = message("completed", json!([part(&text)]));
    let completed = response(
        "completed",
        json!([done_message]),
        responses_usage(&ctl.usage),
    );
    if !req.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        return json_response(state, Flavor::OpenAi, 200, &completed);
    }
    let mut seq = 0u64;
    let mut events = Vec::new();
    let mut push = |name: &str, mut v: Value| {
        v["type"] = json!(name);
        v["sequence_number"] = json!(seq);
        seq += 1;
        events.push(sse_event(name, &v));
    };
    let in_progress = response("in_progress", json!([]), Value::Null);
    push("response.created", json!({"response": in_progress}));
    push("response.in_progress", json!({"response": in_progress}));
    push(
        "response.output_item.added",
        json!({"output_index": 0, "item": message("in_progress", json!([]))}),
    );
    push(
        "response.content_part.added",
        json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "part": part("")}),
    );
    for i in 0..ctl.chunks {
        push(
            "response.output_text.delta",
            json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "delta": delta_text(i), "logprobs": []}),
        );
    }
    push(
        "response.output_text.done",
        json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
    );
    push(
        "response.content_part.done",
        json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "part": part(&text)}),
    );
    push(
        "response.output_item.done",
        json!({"output_index": 0, "item": done_message}),
    );
    push("response.completed", json!({"response": completed}));
    sse_response(state, Flavor::OpenAi, events, ctl)
}

fn embeddings(state: &Arc<State>, ctl: &Control, req: &Value) -> Response<Body> {
    let inputs = match req.get("input") {
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => 1,
        Some(Value::Array(items)) => items.len().max(1),
        _ => 1,
    };
    let dims = req
        .get("dimensions")
        .and_then(Value::as_u64)
        .map_or(8, |d| d.clamp(1, 4096) as usize);
    let base64_format = req.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = (0..inputs)
        .map(|i| {
            let vector: Vec<f32> = (0..dims)
                .map(|d| ((i * dims + d) % 17) as f32 / 16.0 - 0.5)
                .collect();
            let embedding = if base64_format {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64(&bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let body = json!({
        "object": "list",
        "data": data,
        "model": model_of(req),
        "usage": {"prompt_tokens": ctl.usage.prompt, "total_tokens": ctl.usage.prompt}
    });
    json_response(state, Flavor::OpenAi, 200, &body)
}

fn models_list() -> Value {
    let models = [
        ("gpt-4o-mini", "system"),
        ("gpt-4o", "system"),
        ("o3-mini", "system"),
        ("text-embedding-3-small", "system"),
    ];
    let data: Vec<Value> = models
        .iter()
        .map(|(id, owner)| json!({"id": id, "object": "model", "created": 1_700_000_000u64, "owned_by": owner}))
        .collect();
    json!({"object": "list", "data": data})
}

// ---------------------------------------------------------------------------------------------
// Anthropic
// ---------------------------------------------------------------------------------------------

fn anthropic_usage(u: &Usage, output_tokens: u64) -> Value {
    json!({
        "input_tokens": u.prompt,
        "cache_creation_input_tokens": u.cache_write + u.cache_write_1h,
        "cache_read_input_tokens": u.cached,
        "cache_creation": {
            "ephemeral_5m_input_tokens": u.cache_write,
            "ephemeral_1h_input_tokens": u.cache_write_1h
        },
        "output_tokens": output_tokens,
        "service_tier": "standard"
    })
}

fn messages(state: &Arc<State>, ctl: &Control, req: &Value) -> Response<Body> {
    if req.get("max_tokens").and_then(Value::as_u64).is_none() {
        return error_response(state, Flavor::Anthropic, 400, "max_tokens: Field required");
    }
    let model = model_of(req);
    let id = format!("msg_{}", state.id());
    let u = &ctl.usage;
    if !req.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        let body = json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": expected_text(ctl.chunks)}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": anthropic_usage(u, u.completion)
        });
        return json_response(state, Flavor::Anthropic, 200, &body);
    }
    let mut events = Vec::new();
    let mut push = |v: Value| {
        let name = v["type"].as_str().unwrap_or("").to_owned();
        events.push(sse_event(&name, &v));
    };
    push(json!({
        "type": "message_start",
        "message": {
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": anthropic_usage(u, 1)
        }
    }));
    push(
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    );
    push(json!({"type": "ping"}));
    for i in 0..ctl.chunks {
        push(
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": delta_text(i)}}),
        );
    }
    push(json!({"type": "content_block_stop", "index": 0}));
    let delta_usage = if ctl.delta_full_usage {
        json!({
            "input_tokens": u.prompt,
            "cache_creation_input_tokens": u.cache_write + u.cache_write_1h,
            "cache_read_input_tokens": u.cached,
            "output_tokens": u.completion
        })
    } else {
        json!({"output_tokens": u.completion})
    };
    push(json!({
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": null},
        "usage": delta_usage
    }));
    push(json!({"type": "message_stop"}));
    sse_response(state, Flavor::Anthropic, events, ctl)
}

// ---------------------------------------------------------------------------------------------
// Cohere v2 chat
// ---------------------------------------------------------------------------------------------

fn cohere(state: &Arc<State>, ctl: &Control, req: &Value) -> Response<Body> {
    let u = &ctl.usage;
    let usage = json!({
        "billed_units": {"input_tokens": u.prompt, "output_tokens": u.completion},
        "tokens": {"input_tokens": u.prompt + 50, "output_tokens": u.completion}
    });
    let id = format!("cohere-{}", state.id());
    if !req.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        let body = json!({
            "id": id,
            "message": {"role": "assistant", "content": [{"type": "text", "text": expected_text(ctl.chunks)}]},
            "finish_reason": "COMPLETE",
            "usage": usage
        });
        return json_response(state, Flavor::OpenAi, 200, &body);
    }
    let mut events = Vec::new();
    let mut push = |v: Value| {
        let name = v["type"].as_str().unwrap_or("").to_owned();
        events.push(sse_event(&name, &v));
    };
    push(
        json!({"id": id, "type": "message-start", "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}}),
    );
    push(
        json!({"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}}),
    );
    for i in 0..ctl.chunks {
        push(
            json!({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": delta_text(i)}}}}),
        );
    }
    push(json!({"type": "content-end", "index": 0}));
    push(json!({"type": "message-end", "delta": {"finish_reason": "COMPLETE", "usage": usage}}));
    sse_response(state, Flavor::OpenAi, events, ctl)
}

// ---------------------------------------------------------------------------------------------
// Perplexity
// ---------------------------------------------------------------------------------------------

fn perplexity(state: &Arc<State>, ctl: &Control, req: &Value) -> Response<Body> {
    let model = model_of(req);
    let id = format!("pplx-{}", state.id());
    let created = now();
    let size = req
        .pointer("/web_search_options/search_context_size")
        .and_then(Value::as_str)
        .unwrap_or("low")
        .to_owned();
    let u = ctl.usage;
    // The dollar figures are decorative (floats, as Perplexity sends them): SpendGuard prices
    // from the token counts, so they must never be what the test's expected charge depends on.
    let usage = |completion: u64, last: bool| {
        let mut cost =
            json!({"input_tokens_cost": 0.0, "output_tokens_cost": 0.0, "total_cost": 0.0});
        if last {
            cost = json!({"input_tokens_cost": 0.5, "output_tokens_cost": 0.5, "request_cost": 0.5, "total_cost": 1.5});
        }
        json!({
            "prompt_tokens": u.prompt,
            "completion_tokens": completion,
            "total_tokens": u.prompt + completion,
            "search_context_size": size,
            "cost": cost
        })
    };
    let citations = json!(["https://example.com/a", "https://example.com/b"]);
    let results = json!([{"title": "A", "url": "https://example.com/a", "date": null}]);
    if !req.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        let body = json!({
            "id": id, "model": model, "created": created,
            "usage": usage(u.completion, true),
            "citations": citations, "search_results": results,
            "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": expected_text(ctl.chunks)}}]
        });
        return json_response(state, Flavor::OpenAi, 200, &body);
    }
    let n = ctl.chunks.max(1) as u64;
    let mut events = Vec::new();
    for i in 0..ctl.chunks.max(1) {
        let last = i + 1 == ctl.chunks.max(1);
        let completion = u.completion * (i as u64 + 1) / n;
        events.push(sse_data(&json!({
            "id": id, "model": model, "created": created,
            "usage": usage(completion, last),
            "citations": citations, "search_results": results,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "finish_reason": if last { json!("stop") } else { Value::Null },
                "delta": {"role": "assistant", "content": delta_text(i)}}]
        })));
    }
    sse_response(state, Flavor::OpenAi, events, ctl)
}

// ---------------------------------------------------------------------------------------------
// Bedrock
// ---------------------------------------------------------------------------------------------

fn bedrock_event(kind: &str, payload: &Value) -> Bytes {
    Bytes::from(spendguard_pricing::eventstream::encode(
        &[
            (":event-type", kind),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    ))
}

fn bedrock(state: &Arc<State>, ctl: &Control, model: &str, op: &str) -> Response<Body> {
    let u = &ctl.usage;
    let usage = json!({
        "inputTokens": u.prompt,
        "outputTokens": u.completion,
        "cacheReadInputTokens": u.cached,
        "cacheWriteInputTokens": u.cache_write,
        "totalTokens": u.prompt + u.completion + u.cached + u.cache_write
    });
    match op {
        "converse" => {
            let body = json!({
                "output": {"message": {"role": "assistant", "content": [{"text": expected_text(ctl.chunks)}]}},
                "stopReason": "end_turn",
                "usage": usage,
                "metrics": {"latencyMs": 1}
            });
            json_response(state, Flavor::Bedrock, 200, &body)
        }
        "converse-stream" => {
            let mut events = vec![bedrock_event("messageStart", &json!({"role": "assistant"}))];
            for i in 0..ctl.chunks {
                events.push(bedrock_event(
                    "contentBlockDelta",
                    &json!({"contentBlockIndex": 0, "delta": {"text": delta_text(i)}}),
                ));
            }
            events.push(bedrock_event(
                "contentBlockStop",
                &json!({"contentBlockIndex": 0}),
            ));
            events.push(bedrock_event(
                "messageStop",
                &json!({"stopReason": "end_turn"}),
            ));
            events.push(bedrock_event(
                "metadata",
                &json!({"usage": usage, "metrics": {"latencyMs": 1}}),
            ));
            sse_response(state, Flavor::Bedrock, events, ctl)
        }
        "invoke" => {
            let body = json!({
                "id": format!("msg_bdrk_{}", state.id()),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": expected_text(ctl.chunks)}],
                "stop_reason": "end_turn",
                "usage": anthropic_usage(u, u.completion)
            });
            let mut resp = json_response(state, Flavor::Bedrock, 200, &body);
            if !ctl.bedrock_headers_off {
                let h = resp.headers_mut();
                h.insert(
                    "x-amzn-bedrock-input-token-count",
                    HeaderValue::from(u.prompt),
                );
                h.insert(
                    "x-amzn-bedrock-output-token-count",
                    HeaderValue::from(u.completion),
                );
                h.insert(
                    "x-amzn-bedrock-cache-read-input-token-count",
                    HeaderValue::from(u.cached),
                );
                h.insert(
                    "x-amzn-bedrock-cache-write-input-token-count",
                    HeaderValue::from(u.cache_write),
                );
            }
            resp
        }
        "invoke-with-response-stream" => {
            let chunk = |v: Value| {
                bedrock_event("chunk", &json!({"bytes": base64(v.to_string().as_bytes())}))
            };
            let mut events = vec![chunk(json!({"type": "message_start", "message": {
                "type": "message", "role": "assistant", "model": model, "content": [],
                "usage": anthropic_usage(u, 1)}}))];
            for i in 0..ctl.chunks {
                events.push(chunk(json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": delta_text(i)}})));
            }
            events.push(chunk(json!({
                "type": "message_stop",
                "amazon-bedrock-invocationMetrics": {
                    "inputTokenCount": u.prompt,
                    "outputTokenCount": u.completion,
                    "cacheReadInputTokenCount": u.cached,
                    "cacheWriteInputTokenCount": u.cache_write,
                    "invocationLatency": 1,
                    "firstByteLatency": 1
                }
            })));
            sse_response(state, Flavor::Bedrock, events, ctl)
        }
        other => {
            let msg = format!("unknown operation {other}");
            error_response(state, Flavor::Bedrock, 404, &msg)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Gemini
// ---------------------------------------------------------------------------------------------

fn gemini(
    state: &Arc<State>,
    ctl: &Control,
    model: &str,
    stream: bool,
    sse: bool,
) -> Response<Body> {
    let u = &ctl.usage;
    let response_id = state.id();
    let final_usage = || {
        let mut m = json!({
            "promptTokenCount": u.prompt,
            "candidatesTokenCount": u.completion,
            "totalTokenCount": u.prompt + u.completion + u.reasoning,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": u.prompt}]
        });
        if u.cached > 0 {
            m["cachedContentTokenCount"] = json!(u.cached);
        }
        if u.reasoning > 0 {
            m["thoughtsTokenCount"] = json!(u.reasoning);
        }
        m
    };
    let chunk = |text: String, finish: bool, usage: Value| {
        let mut candidate =
            json!({"content": {"parts": [{"text": text}], "role": "model"}, "index": 0});
        if finish {
            candidate["finishReason"] = json!("STOP");
        }
        json!({
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": model,
            "responseId": response_id
        })
    };
    if !stream {
        let body = chunk(expected_text(ctl.chunks), true, final_usage());
        return json_response(state, Flavor::Gemini, 200, &body);
    }
    // One chunk per delta; the last one carries finishReason and the final usage. Earlier chunks
    // carry the prompt count and a running candidates count.
    let n = ctl.chunks.max(1);
    let chunks: Vec<Value> = (0..n)
        .map(|i| {
            let text = if ctl.chunks == 0 { String::new() } else { delta_text(i) };
            if i + 1 == n {
                chunk(text, true, final_usage())
            } else {
                let so_far = (u.completion * (i as u64 + 1)) / n as u64;
                chunk(
                    text,
                    false,
                    json!({"promptTokenCount": u.prompt, "candidatesTokenCount": so_far, "totalTokenCount": u.prompt + so_far}),
                )
            }
        })
        .collect();
    if sse {
        let events = chunks.iter().map(sse_data).collect();
        return sse_response(state, Flavor::Gemini, events, ctl);
    }
    // Without alt=sse Gemini streams one JSON array.
    let body = format!(
        "[{}]",
        chunks
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join(",\r\n")
    );
    full_response(
        state,
        Flavor::Gemini,
        200,
        "application/json; charset=UTF-8",
        body.into_bytes(),
    )
}
