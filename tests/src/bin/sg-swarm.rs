//! `sg-swarm`: many client connections at once, for the fault tests. Run *inside* a tagged cgroup (the
//! cgroup decides redirection, so the clients must be their own process). Every mode is bounded in
//! time and prints JSON lines on stdout: `{"event":"ready",…}` once its connections are up, then one
//! `{"event":"done",…}` summary.
//!
//!   sg-swarm idle   ADDR SNI CA N          N TLS connections (ALPN http/1.1), held idle until stdin
//!                                          closes (or 120 s); done: how many the server closed
//!   sg-swarm slow   ADDR SNI CA N STAGE S  N connections that go slow at STAGE for at most S seconds:
//!                                          `hello` ClientHello one byte a second; `handshake` whole
//!                                          ClientHello, then silence; `headers` TLS, then an HTTP/1.1
//!                                          request head one byte a second. done: when each was closed
//!   sg-swarm delayed-hello ADDR SNI CA MS  wait MS before the ClientHello, then TLS trusting CA and
//!                                          one chat request; done: what happened
//!   sg-swarm streams ADDR SNI CA N MS      N streamed chat requests at once, each on its own connection,
//!                                          the provider sending an event every MS ms; done: how many
//!                                          had their first event while all N were open (10 s bound)
//!   sg-swarm load   ADDR SNI CA C S BODY   C clients, each a loop of one request per new connection
//!                                          (POST BODY to /v1/chat/completions, 15 s bound each) for
//!                                          S seconds; done: one record per request
//!   sg-swarm burst  ADDR SNI CA N BODY USAGE  N connections made first (ready), then N requests
//!                                          sent at the same moment, the fake provider asked to
//!                                          report USAGE (`x-fake-usage`); done: one record each
//!
//! Network safety: ADDR must be in 127.0.0.0/8 or 10.77.0.0/16 (the test namespaces); anything else is
//! refused before a socket is made.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;

/// How long any one connect or TLS handshake may take.
const STEP: Duration = Duration::from_secs(10);
/// What the fake provider reports for `load` and `streams` requests.
const SMALL_USAGE: &str = "prompt=20,completion=10";
/// How long one request of `load` may take, end to end.
const REQUEST_BOUND: Duration = Duration::from_secs(15);

fn usage() -> ! {
    eprintln!("usage: see the top of tests/src/bin/sg-swarm.rs");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        usage();
    }
    let addr: SocketAddr = args[1].parse().unwrap_or_else(|_| usage());
    let safe = match addr.ip() {
        std::net::IpAddr::V4(a) => a.is_loopback() || (a.octets()[0] == 10 && a.octets()[1] == 77),
        std::net::IpAddr::V6(a) => a.is_loopback() || a.segments()[0] == 0xfd77,
    };
    if !safe {
        eprintln!("sg-swarm: refusing {addr}: not inside the test namespaces");
        std::process::exit(2);
    }
    raise_nofile();
    let sni = args[2].clone();
    let ca = std::fs::read(&args[3]).unwrap_or_else(|e| panic!("read CA {}: {e}", args[3]));
    let num = |i: usize| -> u64 {
        args.get(i)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage())
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let t = Target {
        addr,
        sni,
        tls: tls_config(&ca),
    };
    let done = match args[0].as_str() {
        "idle" => rt.block_on(idle(t, num(4) as usize)),
        "slow" => {
            let stage = args.get(5).cloned().unwrap_or_else(|| usage());
            rt.block_on(slow(t, num(4) as usize, &stage, num(6)))
        }
        "delayed-hello" => rt.block_on(delayed_hello(t, num(4))),
        "streams" => rt.block_on(streams(t, num(4) as usize, num(5))),
        "load" => {
            let body = args.get(6).cloned().unwrap_or_else(|| usage());
            rt.block_on(load(t, num(4) as usize, num(5), body))
        }
        "burst" => {
            let body = args.get(5).cloned().unwrap_or_else(|| usage());
            let spec = args.get(6).cloned().unwrap_or_else(|| usage());
            rt.block_on(burst(t, num(4) as usize, body, spec))
        }
        _ => usage(),
    };
    emit(&done);
    rt.shutdown_background();
}

fn emit(v: &Value) {
    println!("{v}");
}

/// Soft and hard RLIMIT_NOFILE up to at least 65,536 (root may raise the hard limit).
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let want = hard.max(65_536);
        if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_err() {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

struct Target {
    addr: SocketAddr,
    sni: String,
    tls: Arc<rustls::ClientConfig>,
}

fn tls_config(ca_pem: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let mut rd = ca_pem;
    for cert in rustls_pemfile_certs(&mut rd) {
        roots.add(cert).expect("CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// The certificates of a PEM file (rustls' own PEM reader).
fn rustls_pemfile_certs(rd: &mut &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_slice_iter(rd)
        .filter_map(Result::ok)
        .collect()
}

impl Target {
    async fn tcp(&self) -> std::io::Result<TcpStream> {
        match tokio::time::timeout(STEP, TcpStream::connect(self.addr)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            )),
        }
    }

    async fn tls(
        &self,
        tcp: TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(self.sni.clone())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let c = tokio_rustls::TlsConnector::from(self.tls.clone());
        match tokio::time::timeout(STEP, c.connect(name, tcp)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }

    /// The bytes of a ClientHello for SNI, as rustls would send them first.
    fn client_hello(&self) -> Vec<u8> {
        let name = ServerName::try_from(self.sni.clone()).expect("server name");
        let mut conn = rustls::ClientConnection::new(self.tls.clone(), name).expect("client");
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).expect("write_tls");
        }
        out
    }
}

/// A short name for an I/O error, for tallies.
fn kind(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".into(),
        Some(libc::ECONNRESET) => "reset".into(),
        Some(libc::EPIPE) => "pipe".into(),
        Some(n) => format!("errno{n}"),
        None => match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof".into(),
            std::io::ErrorKind::TimedOut => "timeout".into(),
            k => format!("{k:?}"),
        },
    }
}

fn tally(errors: &[String]) -> Value {
    let mut m = serde_json::Map::new();
    for e in errors {
        let n = m.get(e).and_then(Value::as_u64).unwrap_or(0);
        m.insert(e.clone(), json!(n + 1));
    }
    Value::Object(m)
}

// ---------------------------------------------------------------------------------------------
// idle
// ---------------------------------------------------------------------------------------------

async fn idle(t: Target, n: usize) -> Value {
    let t = Arc::new(t);
    let started = Instant::now();
    // Bounded concurrency while connecting: a handshake storm must not time itself out.
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut joins = Vec::with_capacity(n);
    for _ in 0..n {
        let t = t.clone();
        let sem = sem.clone();
        joins.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.expect("semaphore");
            let tcp = t.tcp().await.map_err(|e| format!("connect:{}", kind(&e)))?;
            t.tls(tcp).await.map_err(|e| format!("tls:{}", kind(&e)))
        }));
    }
    let mut conns = Vec::with_capacity(n);
    let mut errors = Vec::new();
    for j in joins {
        match j.await {
            Ok(Ok(c)) => conns.push(c),
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("join:{e}")),
        }
    }
    emit(&json!({
        "event": "ready",
        "open": conns.len(),
        "failed": errors.len(),
        "errors": tally(&errors),
        "connect_ms": started.elapsed().as_millis() as u64,
    }));
    // Watch each connection for the server closing it while we hold it.
    let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut watchers = Vec::with_capacity(conns.len());
    for mut c in conns {
        let closed = closed.clone();
        watchers.push(tokio::spawn(async move {
            let mut buf = [0u8; 256];
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                    Ok(_) => {}
                }
            }
        }));
    }
    // Hold until stdin closes (the test is done with us), at most 120 s.
    let stdin = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    });
    let _ = tokio::time::timeout(Duration::from_secs(120), stdin).await;
    let closed_by_server = closed.load(std::sync::atomic::Ordering::SeqCst);
    for w in watchers {
        w.abort();
    }
    json!({"event": "done", "closed_by_server": closed_by_server})
}

// ---------------------------------------------------------------------------------------------
// slow
// ---------------------------------------------------------------------------------------------

/// Writes `bytes` one a second until done or the peer is gone; returns whether the peer went away
/// (a read saw EOF/error, or a write failed).
async fn dribble<S>(stream: S, bytes: Vec<u8>, until: Instant) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let gone = async move {
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let write = async move {
        for b in bytes {
            if wr.write_all(&[b]).await.is_err() || wr.flush().await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Everything sent: wait for the server.
        std::future::pending::<bool>().await
    };
    tokio::select! {
        _ = gone => true,
        failed = write => failed,
        _ = tokio::time::sleep_until(until.into()) => false,
    }
}

async fn slow(t: Target, n: usize, stage: &str, secs: u64) -> Value {
    let t = Arc::new(t);
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let ready = Arc::new(tokio::sync::Barrier::new(n + 1));
    let mut joins = Vec::with_capacity(n);
    for _ in 0..n {
        let t = t.clone();
        let ready = ready.clone();
        let stage = stage.to_string();
        joins.push(tokio::spawn(async move {
            let tcp = t.tcp().await;
            let result: Result<(Instant, bool), String> = async {
                let mut tcp = tcp.map_err(|e| format!("connect:{}", kind(&e)))?;
                match stage.as_str() {
                    "hello" => {
                        let hello = t.client_hello();
                        ready.wait().await;
                        let start = Instant::now();
                        Ok((start, dribble(tcp, hello, until).await))
                    }
                    "handshake" => {
                        let hello = t.client_hello();
                        tcp.write_all(&hello)
                            .await
                            .map_err(|e| format!("write:{}", kind(&e)))?;
                        ready.wait().await;
                        let start = Instant::now();
                        Ok((start, dribble(tcp, Vec::new(), until).await))
                    }
                    "headers" => {
                        let tls = t.tls(tcp).await.map_err(|e| format!("tls:{}", kind(&e)))?;
                        ready.wait().await;
                        let start = Instant::now();
                        let head = format!(
                            "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\nx-slow: {}\r\n\r\n",
                            t.sni,
                            "z".repeat(200)
                        );
                        Ok((start, dribble(tls, head.into_bytes(), until).await))
                    }
                    other => Err(format!("unknown stage {other}")),
                }
            }
            .await;
            if result.is_err() {
                // Never leave the others waiting for us.
                ready.wait().await;
            }
            result.map(|(start, closed)| closed.then(|| start.elapsed().as_millis() as u64))
        }));
    }
    ready.wait().await;
    emit(&json!({"event": "ready", "ms": started.elapsed().as_millis() as u64}));
    let mut closed_ms = Vec::new();
    let mut still_open = 0;
    let mut errors = Vec::new();
    for j in joins {
        match j.await {
            Ok(Ok(Some(ms))) => closed_ms.push(ms),
            Ok(Ok(None)) => still_open += 1,
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("join:{e}")),
        }
    }
    closed_ms.sort_unstable();
    json!({
        "event": "done",
        "closed_ms": closed_ms,
        "still_open": still_open,
        "failed": errors.len(),
        "errors": tally(&errors),
    })
}

// ---------------------------------------------------------------------------------------------
// delayed-hello
// ---------------------------------------------------------------------------------------------

async fn delayed_hello(t: Target, ms: u64) -> Value {
    let tcp = match t.tcp().await {
        Ok(s) => s,
        Err(e) => return json!({"event": "done", "stage": "connect", "error": kind(&e)}),
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    let tls = match t.tls(tcp).await {
        Ok(s) => s,
        Err(e) => {
            return json!({"event": "done", "stage": "tls", "error": format!("{}: {e}", kind(&e))})
        }
    };
    let body =
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#;
    match request(tls, &t.sni, body, SMALL_USAGE).await {
        Ok((status, headers)) => {
            json!({"event": "done", "stage": "response", "status": status, "headers": headers})
        }
        Err(e) => json!({"event": "done", "stage": "http", "error": e}),
    }
}

/// One HTTP/1.1 POST to /v1/chat/completions on `io`; (status, response headers), body read whole.
async fn request<S>(io: S, host: &str, body: &str, usage: &str) -> Result<(u16, Value), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::post("/v1/chat/completions")
        .header("host", host)
        .header("content-type", "application/json")
        .header("x-fake-usage", usage)
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("send: {}", chain(&e)))?;
    let status = resp.status().as_u16();
    let headers: serde_json::Map<String, Value> = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                json!(String::from_utf8_lossy(v.as_bytes())),
            )
        })
        .collect();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {}", chain(&e)))?;
    conn.abort();
    Ok((status, Value::Object(headers)))
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

// ---------------------------------------------------------------------------------------------
// streams
// ---------------------------------------------------------------------------------------------

/// How long `streams` waits for every stream's first event.
const STREAMS_BOUND: Duration = Duration::from_secs(10);

/// N concurrent SSE streams, held open (the provider sends an event every `ms`) until every one has
/// its first event or [`STREAMS_BOUND`] passes: a proxy that queues requests behind others' streams
/// shows up as streams without a first event.
async fn streams(t: Target, n: usize, ms: u64) -> Value {
    let t = Arc::new(t);
    let (first_tx, mut first_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (t, first_tx) = (t.clone(), first_tx.clone());
        tasks.push(tokio::spawn(async move {
            let tcp = t.tcp().await.map_err(|e| e.to_string())?;
            let tls = t.tls(tcp).await.map_err(|e| e.to_string())?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let body = r#"{"model":"gpt-4o-mini","stream":true,"max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#;
            let req = hyper::Request::post("/v1/chat/completions")
                .header("host", t.sni.as_str())
                .header("content-type", "application/json")
                .header("x-fake-chunks", "600")
                .header("x-fake-chunk-delay-ms", ms.to_string())
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .map_err(|e| e.to_string())?;
            let resp = send.send_request(req).await.map_err(|e| chain(&e))?;
            if resp.status() != 200 {
                return Err(format!("status {}", resp.status()));
            }
            let mut body = resp.into_body();
            // The first event, then hold the stream open (reading) until the task is aborted.
            let mut first = true;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| chain(&e))?;
                if first && frame.data_ref().is_some_and(|d| !d.is_empty()) {
                    first = false;
                    let _ = first_tx.send(started.elapsed().as_millis() as u64);
                }
            }
            Ok::<(), String>(())
        }));
    }
    drop(first_tx);
    let mut firsts = Vec::new();
    let deadline = tokio::time::Instant::now() + STREAMS_BOUND;
    while firsts.len() < n {
        match tokio::time::timeout_at(deadline, first_rx.recv()).await {
            Ok(Some(ms)) => firsts.push(ms),
            Ok(None) | Err(_) => break,
        }
    }
    // Every stream is still open here (600 events take far longer than the bound).
    let mut errors = Vec::new();
    for task in &tasks {
        if task.is_finished() {
            errors.push("ended early".to_string());
        }
    }
    for task in tasks {
        task.abort();
        if let Ok(Err(e)) = task.await {
            errors.push(e);
        }
    }
    firsts.sort_unstable();
    json!({
        "event": "done",
        "requested": n,
        "opened": firsts.len(),
        "first_event_ms_max": firsts.last(),
        "errors": tally(&errors),
    })
}

// ---------------------------------------------------------------------------------------------
// load
// ---------------------------------------------------------------------------------------------

/// A request's outcome: `ok` (200, body complete, metered), `status` (another HTTP status), or the
/// stage and kind of the I/O error; `timeout` means it hung past [`REQUEST_BOUND`].
async fn one_request(t: &Target, body: &str) -> Value {
    let started = Instant::now();
    let r = tokio::time::timeout(REQUEST_BOUND, async {
        let tcp = t
            .tcp()
            .await
            .map_err(|e| ("connect", kind(&e), e.to_string()))?;
        let tls = t
            .tls(tcp)
            .await
            .map_err(|e| ("tls", kind(&e), e.to_string()))?;
        request(tls, &t.sni, body, SMALL_USAGE)
            .await
            .map_err(|e| ("http", "error".to_string(), e))
    })
    .await;
    let ms = started.elapsed().as_millis() as u64;
    match r {
        Err(_) => json!({"outcome": "timeout", "ms": ms}),
        Ok(Err((stage, kind, detail))) => {
            json!({"outcome": "error", "stage": stage, "kind": kind, "detail": detail, "ms": ms})
        }
        Ok(Ok((status, headers))) => json!({
            "outcome": if status == 200 { "ok" } else { "status" },
            "status": status,
            "metered": headers.get("x-spendguard-agent").is_some(),
            "ms": ms,
        }),
    }
}

async fn load(t: Target, clients: usize, secs: u64, body: String) -> Value {
    let t = Arc::new(t);
    let body = Arc::new(body);
    let until = Instant::now() + Duration::from_secs(secs);
    emit(&json!({"event": "ready"}));
    let mut joins = Vec::new();
    for _ in 0..clients {
        let t = t.clone();
        let body = body.clone();
        joins.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while Instant::now() < until {
                let r = one_request(&t, &body).await;
                let failed = r["outcome"] != "ok";
                out.push(r);
                if failed {
                    // The agent is restarting: do not spin.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            out
        }));
    }
    let mut results = Vec::new();
    for j in joins {
        if let Ok(v) = j.await {
            results.extend(v);
        }
    }
    json!({"event": "done", "results": results})
}

// ---------------------------------------------------------------------------------------------
// burst
// ---------------------------------------------------------------------------------------------

/// N requests that reach the proxy at the same moment: every connection (TCP + TLS) is made first,
/// then one barrier releases all the requests.
async fn burst(t: Target, n: usize, body: String, usage: String) -> Value {
    let t = Arc::new(t);
    let body = Arc::new(body);
    let usage = Arc::new(usage);
    let go = Arc::new(tokio::sync::Barrier::new(n + 1));
    let mut joins = Vec::new();
    for _ in 0..n {
        let (t, body, usage, go) = (t.clone(), body.clone(), usage.clone(), go.clone());
        joins.push(tokio::spawn(async move {
            let conn = tokio::time::timeout(STEP * 2, async {
                let tcp = t.tcp().await.map_err(|e| ("connect", kind(&e)))?;
                t.tls(tcp).await.map_err(|e| ("tls", kind(&e)))
            })
            .await;
            go.wait().await;
            let tls = match conn {
                Err(_) => return json!({"outcome": "timeout", "stage": "connect"}),
                Ok(Err((stage, kind))) => {
                    return json!({"outcome": "error", "stage": stage, "kind": kind})
                }
                Ok(Ok(tls)) => tls,
            };
            match tokio::time::timeout(REQUEST_BOUND, request(tls, &t.sni, &body, &usage)).await {
                Err(_) => json!({"outcome": "timeout", "stage": "http"}),
                Ok(Err(e)) => json!({"outcome": "error", "stage": "http", "detail": e}),
                Ok(Ok((status, headers))) => json!({
                    "outcome": if status == 200 { "ok" } else { "status" },
                    "status": status,
                    "metered": headers.get("x-spendguard-agent").is_some(),
                }),
            }
        }));
    }
    go.wait().await;
    emit(&json!({"event": "ready"}));
    let mut results = Vec::new();
    for j in joins {
        if let Ok(v) = j.await {
            results.push(v);
        }
    }
    json!({"event": "done", "results": results})
}
