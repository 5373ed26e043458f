//! `sg-load`: the load generator of `cargo xtask bench`. HTTP/1.1 keep-alive over rustls (or plain
//! HTTP with `--plain`), optionally through an HTTP CONNECT proxy, OpenAI-format chat requests with
//! a small `max_tokens`. Prints one JSON line of results on stdout (latencies in microseconds).
//!
//!   --target IP:PORT --sni HOST [--path P] [--proxy ADDR --proxy-user NAME] [--ca PEM]... [--plain]
//!   [--auth TOKEN] [--model M]
//!   and one mode:
//!   --closed CONNS --duration S            closed loop: CONNS connections, back to back
//!   --rate R --conns C --duration S        open loop at R req/s over C connections; latency from the
//!                                          intended send time (no coordinated omission)
//!   --newconn N                            N sequential requests, each on a fresh connection
//!   --streams N --hold S                   N concurrent slow SSE streams; prints `open K` once K are
//!                                          streaming, holds them S seconds
//!   --burst N                              N concurrent requests, one connection each (overspend)
//!   --idle N --hold S                      N keep-alive connections, one request each, then idle;
//!                                          prints `open K` once K are idle, holds them S seconds
//!   --sse-chunks N (with --closed/--rate)  each request is a stream of N chunks, sent without delay
//!
//! Every mode is bounded in time; the process exits when it is done.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

#[derive(Clone, Default)]
struct Cfg {
    target: Option<SocketAddr>,
    sni: String,
    path: String,
    proxy: Option<SocketAddr>,
    proxy_user: String,
    cas: Vec<String>,
    plain: bool,
    auth: String,
    model: String,
    /// `--sse-chunks N`: every request of the closed/rate modes asks for a stream of N chunks
    /// sent as fast as the fake can (the SSE max-rate phase).
    sse_chunks: Option<u32>,
}

struct Client {
    cfg: Cfg,
    tls: Option<tokio_rustls::TlsConnector>,
}

type Send = SendRequest<Full<Bytes>>;

fn b64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Client {
    fn new(cfg: Cfg) -> anyhow::Result<Client> {
        let tls = if cfg.plain {
            None
        } else {
            let mut roots = rustls::RootCertStore::empty();
            for ca in &cfg.cas {
                for c in CertificateDer::pem_file_iter(ca).with_context(|| format!("read {ca}"))? {
                    roots.add(c.context("CA PEM")?)?;
                }
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut tc = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            tc.alpn_protocols = vec![b"http/1.1".to_vec()];
            // Each "new connection" must pay a full handshake, as a fresh client process would.
            tc.resumption = rustls::client::Resumption::disabled();
            Some(tokio_rustls::TlsConnector::from(Arc::new(tc)))
        };
        Ok(Client { cfg, tls })
    }

    async fn connect(&self) -> anyhow::Result<Send> {
        let addr = self
            .cfg
            .proxy
            .or(self.cfg.target)
            .ok_or_else(|| anyhow!("no --target"))?;
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        if self.cfg.proxy.is_some() {
            let auth = b64(format!("{}:x", self.cfg.proxy_user).as_bytes());
            let req = format!(
                "CONNECT {h}:443 HTTP/1.1\r\nHost: {h}:443\r\nProxy-Authorization: Basic {auth}\r\n\r\n",
                h = self.cfg.sni
            );
            tcp.write_all(req.as_bytes()).await?;
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if tcp.read(&mut b).await? == 0 || head.len() > 8192 {
                    bail!("proxy closed during CONNECT");
                }
                head.push(b[0]);
            }
            let line = String::from_utf8_lossy(&head);
            if !line.starts_with("HTTP/1.1 200") && !line.starts_with("HTTP/1.0 200") {
                bail!("CONNECT refused: {}", line.lines().next().unwrap_or(""));
            }
        }
        let send = match &self.tls {
            Some(tls) => {
                let name = ServerName::try_from(self.cfg.sni.clone())?;
                let s = tls.connect(name, tcp).await?;
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
                tokio::spawn(conn);
                send
            }
            None => {
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(conn);
                send
            }
        };
        Ok(send)
    }

    fn request(&self, slow_stream: bool) -> hyper::Request<Full<Bytes>> {
        let stream = slow_stream || self.cfg.sse_chunks.is_some();
        let body = if stream {
            format!(
                r#"{{"model":"{}","messages":[{{"role":"user","content":"Say hello."}}],"max_tokens":16,"stream":true}}"#,
                self.cfg.model
            )
        } else {
            format!(
                r#"{{"model":"{}","messages":[{{"role":"user","content":"Say hello."}}],"max_tokens":16}}"#,
                self.cfg.model
            )
        };
        let mut b = hyper::Request::post(&self.cfg.path)
            .header("host", &self.cfg.sni)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", self.cfg.auth));
        if slow_stream {
            // ~60 s of slow chunks: the stream stays open while the bench holds it.
            b = b
                .header("x-fake-chunks", "60")
                .header("x-fake-chunk-delay-ms", "1000");
        } else if let Some(n) = self.cfg.sse_chunks {
            b = b
                .header("x-fake-chunks", n.to_string())
                .header("x-fake-chunk-delay-ms", "0");
        }
        b.body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| hyper::Request::new(Full::new(Bytes::new())))
    }

    /// One request, whole body read; the status.
    async fn once(&self, send: &mut Send) -> anyhow::Result<u16> {
        send.ready().await?;
        let resp = send.send_request(self.request(false)).await?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await?;
        Ok(status)
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    statuses: std::collections::BTreeMap<u16, u64>,
    first_error: Option<String>,
}

impl Tally {
    fn add(&mut self, r: &anyhow::Result<u16>) {
        match r {
            Ok(s) => {
                *self.statuses.entry(*s).or_default() += 1;
                if *s == 200 {
                    self.ok += 1;
                } else {
                    self.errors += 1;
                }
            }
            Err(e) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(format!("{e:#}"));
                }
            }
        }
    }
    fn merge(&mut self, o: Tally) {
        self.ok += o.ok;
        self.errors += o.errors;
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

fn report(h: &Histogram<u64>, t: &Tally, secs: f64, extra: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::json!({
        "ok": t.ok,
        "errors": t.errors,
        "statuses": t.statuses.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect::<serde_json::Map<String, serde_json::Value>>(),
        "first_error": t.first_error,
        "rps": t.ok as f64 / secs.max(1e-9),
        "p50_us": h.value_at_quantile(0.50),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
        "mean_us": h.mean(),
        "count": h.len(),
    });
    if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

async fn closed(c: Arc<Client>, conns: usize, dur: Duration) -> serde_json::Value {
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let mut t = Tally::default();
            let mut send = None;
            while Instant::now() < deadline {
                if send.is_none() {
                    match c.connect().await {
                        Ok(s) => send = Some(s),
                        Err(e) => {
                            t.add(&Err(e));
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let Some(s) = send.as_mut() else { continue };
                let t0 = Instant::now();
                let r = c.once(s).await;
                if r.is_ok() {
                    let _ = h.record(t0.elapsed().as_micros() as u64);
                } else {
                    send = None;
                }
                t.add(&r);
            }
            (h, t)
        }));
    }
    let (mut h, mut t) = (hist(), Tally::default());
    for task in tasks {
        if let Ok((h2, t2)) = task.await {
            let _ = h.add(&h2);
            t.merge(t2);
        }
    }
    report(
        &h,
        &t,
        start.elapsed().as_secs_f64(),
        serde_json::json!({"conns": conns}),
    )
}

async fn open_loop(c: Arc<Client>, rate: f64, conns: usize, dur: Duration) -> serde_json::Value {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut senders = Vec::new();
    for _ in 0..conns {
        senders.push(c.connect().await);
    }
    let mut tasks = Vec::new();
    for s in senders {
        let (c, rx) = (c.clone(), rx.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let mut t = Tally::default();
            let mut send = s.ok();
            loop {
                let Some(intended) = rx.lock().await.recv().await else {
                    break;
                };
                // A target that cannot keep up: the backlog is not sent past the run's bound,
                // each skipped request counts as an error.
                if intended.elapsed() > Duration::from_secs(10) {
                    t.add(&Err(anyhow!(
                        "backlog: not sent (target too slow for this rate)"
                    )));
                    continue;
                }
                if send.is_none() {
                    send = c.connect().await.ok();
                }
                let r = match send.as_mut() {
                    Some(s) => c.once(s).await,
                    None => Err(anyhow!("connect failed")),
                };
                if r.is_ok() {
                    let _ = h.record(intended.elapsed().as_micros() as u64);
                } else {
                    send = None;
                }
                t.add(&r);
            }
            (h, t)
        }));
    }
    let start = Instant::now();
    let total = (rate * dur.as_secs_f64()) as u64;
    for i in 0..total {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let _ = tx.send(at);
    }
    drop(tx);
    let (mut h, mut t) = (hist(), Tally::default());
    for task in tasks {
        // Bounded: a worker stuck past the run is abandoned (the process exits).
        if let Ok(Ok((h2, t2))) = tokio::time::timeout(Duration::from_secs(30), task).await {
            let _ = h.add(&h2);
            t.merge(t2);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    report(
        &h,
        &t,
        secs,
        serde_json::json!({"target_rps": rate, "conns": conns}),
    )
}

async fn newconn(c: Arc<Client>, n: usize) -> serde_json::Value {
    let (mut h, mut t) = (hist(), Tally::default());
    let start = Instant::now();
    for _ in 0..n {
        let t0 = Instant::now();
        let r = match c.connect().await {
            Ok(mut s) => c.once(&mut s).await,
            Err(e) => Err(e),
        };
        if r.is_ok() {
            let _ = h.record(t0.elapsed().as_micros() as u64);
        }
        t.add(&r);
    }
    report(&h, &t, start.elapsed().as_secs_f64(), serde_json::json!({}))
}

async fn streams(c: Arc<Client>, n: usize, hold: Duration) -> serde_json::Value {
    let open = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let deadline = Instant::now() + Duration::from_secs(60) + hold;
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    for _ in 0..n {
        let (c, open, failed, gate, fe) = (
            c.clone(),
            open.clone(),
            failed.clone(),
            gate.clone(),
            first_error.clone(),
        );
        tokio::spawn(async move {
            let r: anyhow::Result<()> = async {
                let permit = gate.acquire().await?;
                let mut s = c.connect().await?;
                s.ready().await?;
                let resp = s.send_request(c.request(true)).await?;
                if resp.status() != 200 {
                    bail!("status {}", resp.status());
                }
                let mut body = resp.into_body();
                body.frame()
                    .await
                    .ok_or_else(|| anyhow!("no first chunk"))??;
                drop(permit);
                open.fetch_add(1, Ordering::SeqCst);
                while Instant::now() < deadline {
                    match tokio::time::timeout(Duration::from_secs(5), body.frame()).await {
                        Ok(Some(Ok(_))) | Err(_) => {}
                        _ => break,
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = r {
                failed.fetch_add(1, Ordering::SeqCst);
                let mut g = fe.lock().unwrap_or_else(|p| p.into_inner());
                if g.is_none() {
                    *g = Some(format!("{e:#}"));
                }
            }
        });
    }
    let t0 = Instant::now();
    while open.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst) < n
        && t0.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let opened = open.load(Ordering::SeqCst);
    println!("open {opened}");
    let ramp = t0.elapsed().as_secs_f64();
    tokio::time::sleep(hold).await;
    let fe = first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    serde_json::json!({
        "opened": opened,
        "failed": failed.load(Ordering::SeqCst),
        "ramp_s": ramp,
        "first_error": fe,
    })
}

/// `--idle N --hold S`: N keep-alive connections, one request answered on each, then left idle;
/// prints `open K` once K of them are idle (so the caller can sample the proxy's memory), holds
/// them S seconds, and closes them.
async fn idle(c: Arc<Client>, n: usize, hold: Duration) -> serde_json::Value {
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (c, gate) = (c.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await?;
            let mut s = c.connect().await?;
            let status = c.once(&mut s).await?;
            if status != 200 {
                bail!("status {status}");
            }
            anyhow::Ok(s)
        }));
    }
    let t0 = Instant::now();
    let (mut held, mut failed, mut first_error) = (Vec::new(), 0usize, None::<String>);
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(120), t).await {
            Ok(Ok(Ok(s))) => held.push(s),
            Ok(Ok(Err(e))) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            _ => failed += 1,
        }
    }
    println!("open {}", held.len());
    let ramp = t0.elapsed().as_secs_f64();
    tokio::time::sleep(hold).await;
    let opened = held.len();
    drop(held);
    serde_json::json!({
        "opened": opened,
        "failed": failed,
        "ramp_s": ramp,
        "first_error": first_error,
    })
}

async fn burst(c: Arc<Client>, n: usize) -> serde_json::Value {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (c, barrier) = (c.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let s = c.connect().await;
            barrier.wait().await;
            let t0 = Instant::now();
            let r = match s {
                Ok(mut s) => c.once(&mut s).await,
                Err(e) => Err(e),
            };
            (r, t0.elapsed())
        }));
    }
    let (mut h_ok, mut h_blocked, mut t) = (hist(), hist(), Tally::default());
    for task in tasks {
        if let Ok(Ok((r, el))) = tokio::time::timeout(Duration::from_secs(60), task).await {
            match &r {
                Ok(200) => {
                    let _ = h_ok.record(el.as_micros() as u64);
                }
                Ok(_) => {
                    let _ = h_blocked.record(el.as_micros() as u64);
                }
                Err(_) => {}
            }
            t.add(&r);
        }
    }
    report(
        &h_ok,
        &t,
        1.0,
        serde_json::json!({"blocked_p50_us": h_blocked.value_at_quantile(0.5), "blocked_count": h_blocked.len()}),
    )
}

fn main() -> anyhow::Result<()> {
    let mut cfg = Cfg {
        path: "/v1/chat/completions".into(),
        sni: "api.openai.com".into(),
        auth: "sk-bench".into(),
        model: "gpt-4o-mini".into(),
        ..Cfg::default()
    };
    let mut mode = None;
    let (mut conns, mut duration, mut rate, mut n, mut hold) =
        (1usize, 5.0f64, 0.0f64, 0usize, 5.0f64);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--plain" {
            cfg.plain = true;
            continue;
        }
        let v = args.next().ok_or_else(|| anyhow!("{a} needs a value"))?;
        match a.as_str() {
            "--target" => cfg.target = Some(v.parse()?),
            "--sni" => cfg.sni = v,
            "--path" => cfg.path = v,
            "--proxy" => cfg.proxy = Some(v.parse()?),
            "--proxy-user" => cfg.proxy_user = v,
            "--ca" => cfg.cas.push(v),
            "--auth" => cfg.auth = v,
            "--model" => cfg.model = v,
            "--duration" => duration = v.parse()?,
            "--conns" => conns = v.parse()?,
            "--closed" => {
                conns = v.parse()?;
                mode = Some("closed");
            }
            "--rate" => {
                rate = v.parse()?;
                mode = Some("rate");
            }
            "--newconn" => {
                n = v.parse()?;
                mode = Some("newconn");
            }
            "--streams" => {
                n = v.parse()?;
                mode = Some("streams");
            }
            "--burst" => {
                n = v.parse()?;
                mode = Some("burst");
            }
            "--idle" => {
                n = v.parse()?;
                mode = Some("idle");
            }
            "--sse-chunks" => cfg.sse_chunks = Some(v.parse()?),
            "--hold" => hold = v.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let c = Arc::new(Client::new(cfg)?);
    let dur = Duration::from_secs_f64(duration);
    let out = rt.block_on(async move {
        match mode {
            Some("closed") => Ok(closed(c, conns, dur).await),
            Some("rate") => Ok(open_loop(c, rate, conns, dur).await),
            Some("newconn") => Ok(newconn(c, n).await),
            Some("streams") => Ok(streams(c, n, Duration::from_secs_f64(hold)).await),
            Some("burst") => Ok(burst(c, n).await),
            Some("idle") => Ok(idle(c, n, Duration::from_secs_f64(hold)).await),
            _ => Err(anyhow!(
                "no mode given (--closed/--rate/--newconn/--streams/--burst/--idle)"
            )),
        }
    })?;
    println!("{out}");
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}
