//! Transparent TLS interception, end to end: real SDKs and curl in tagged cgroups (node and pod
//! namespaces) reach providers by name, the agent terminates TLS with its own CA for provider hosts and
//! forwards to a fake provider at the ORIGINAL destination; everything else passes through untouched.
//!
//! Network safety: provider names are pinned to the fake upstreams inside each test's node namespace
//! (`--resolve` for curl, a private `/etc/hosts` for Python, see `spendguard_tests::sdk`).

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use spendguard_tests::fake_provider::{expected_text, FakeProvider, RecordedRequest, TestCa};
use spendguard_tests::sdk::{self, run_bounded, Finished};
use spendguard_tests::{
    eventually, place, privileged, Cgroup, Netns, Place, World, UPSTREAM_A, UPSTREAM_B,
};

const OPENAI: &str = "api.openai.com";
const ANTHROPIC: &str = "api.anthropic.com";
/// An address inside the node namespace where nothing listens (added by the test that needs it).
const UPSTREAM_NONE: &str = "10.77.3.3";

// ---------------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------------

/// A world whose agent trusts `ca` upstream, with a fake provider for `hosts` on UPSTREAM_A:443.
/// Fields drop in order: the fake stops before the world's namespaces go away.
struct Setup {
    fake: FakeProvider,
    ca: TestCa,
    /// SpendGuard's CA certificate (what workloads trust).
    sg_ca: PathBuf,
    /// The fake provider's test CA certificate.
    fake_ca: PathBuf,
    dir: tempfile::TempDir,
    w: World,
}

fn fake_on(ns: &Netns, addr: &str, ca: &TestCa, hosts: &[&str], alpn: &[&[u8]]) -> FakeProvider {
    let bind = format!("{addr}:443");
    let l = ns.enter(move || TcpListener::bind(&bind).expect("bind fake provider"));
    FakeProvider::start(l, ca, hosts, alpn)
}

fn setup(hosts: &[&str], alpn: &[&[u8]]) -> Setup {
    setup_with(hosts, alpn, &[])
}

/// [`setup`], with extra agent environment.
fn setup_with(hosts: &[&str], alpn: &[&[u8]], env: &[(&str, &str)]) -> Setup {
    let w = World::new();
    for (k, v) in env {
        w.set_agent_env(k, v);
    }
    let ca = TestCa::new("SpendGuard tests fake provider CA");
    let fake = fake_on(&w.node, UPSTREAM_A, &ca, hosts, alpn);
    let dir = tempfile::Builder::new()
        .prefix("sg-intercept")
        .tempdir()
        .expect("temp dir");
    let fake_ca = dir.path().join("fake-ca.pem");
    std::fs::write(&fake_ca, ca.cert_pem()).expect("write fake CA");
    w.set_agent_env("SPENDGUARD_UPSTREAM_CA", fake_ca.to_str().expect("utf8"));
    w.start_agent();
    let sg_ca = w.state.path().join("ca.crt");
    // Written atomically; an agent may answer `ping` a moment before it has its CA.
    assert!(
        eventually(Duration::from_secs(10), || sg_ca.exists()),
        "the agent did not write its CA to {}",
        sg_ca.display()
    );
    Setup {
        fake,
        ca,
        sg_ca,
        fake_ca,
        dir,
        w,
    }
}

fn tagged(w: &World, name: &str, agent: &str) -> Cgroup {
    let cg = w.cgroup.child(name);
    w.tag(&cg.path, agent);
    cg
}

fn at<'a>(cg: &'a Cgroup, ns: &'a Netns) -> Place<'a> {
    Place {
        cgroup: Some(&cg.path),
        netns: Some(ns),
        uid: None,
    }
}

fn agent_alive(w: &World) -> bool {
    let mut slot = w.agent.lock().unwrap_or_else(|p| p.into_inner());
    matches!(slot.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
}

// ---------------------------------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------------------------------

/// One transfer of a curl run: curl's `%{json}` write-out, and the body it saved.
struct Transfer {
    info: Value,
    body: Vec<u8>,
}

impl std::fmt::Debug for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.text();
        let cut = text.char_indices().nth(2000).map_or(text.len(), |(i, _)| i);
        f.debug_struct("Transfer")
            .field("status", &self.info["response_code"])
            .field("http_version", &self.info["http_version"])
            .field("num_connects", &self.info["num_connects"])
            .field("exitcode", &self.info["exitcode"])
            .field("errormsg", &self.info["errormsg"])
            .field("body", &&text[..cut])
            .finish()
    }
}

impl Transfer {
    fn status(&self) -> u64 {
        self.info["response_code"].as_u64().unwrap_or(0)
    }
    fn version(&self) -> &str {
        self.info["http_version"].as_str().unwrap_or("")
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

/// Runs curl in `at` for `urls` (the same `args` for each, one connection reused when it can),
/// trusting only `cacert`, every name pinned by `resolve` (name → test address, port 443).
fn curl(
    at: Place<'_>,
    cacert: &Path,
    resolve: &[(&str, &str)],
    args: &[&str],
    urls: &[&str],
) -> (Finished, Vec<Transfer>) {
    let dir = tempfile::Builder::new()
        .prefix("sg-curl")
        .tempdir()
        .expect("curl dir");
    let mut cmd = Command::new("curl");
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .args(["-sS", "--noproxy", "*", "--max-time", "30"])
        .arg("--cacert")
        .arg(cacert)
        .args(["-w", "%{json}\\n"]);
    for (name, addr) in resolve {
        assert!(sdk::is_test_address(addr), "{addr} is not a test address");
        cmd.arg("--resolve").arg(format!("{name}:443:{addr}"));
    }
    cmd.args(args);
    for (i, url) in urls.iter().enumerate() {
        assert!(
            resolve
                .iter()
                .any(|(n, _)| url.starts_with(&format!("https://{n}/"))),
            "{url}: every URL's host must be pinned by --resolve"
        );
        cmd.arg("-o").arg(dir.path().join(format!("body{i}")));
        cmd.arg(url);
    }
    place(&mut cmd, at);
    let out = run_bounded(cmd, sdk::CLIENT_TIMEOUT);
    let infos: Vec<Value> = out
        .stdout_str()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("response_code").is_some())
        .collect();
    let transfers = infos
        .into_iter()
        .enumerate()
        .map(|(i, info)| Transfer {
            info,
            body: std::fs::read(dir.path().join(format!("body{i}"))).unwrap_or_default(),
        })
        .collect();
    (out, transfers)
}

/// curl that must succeed with one 200 transfer per URL.
fn curl_ok(
    at: Place<'_>,
    cacert: &Path,
    resolve: &[(&str, &str)],
    args: &[&str],
    urls: &[&str],
) -> Vec<Transfer> {
    let (out, t) = curl(at, cacert, resolve, args, urls);
    assert!(
        out.success() && t.len() == urls.len() && t.iter().all(|t| t.status() == 200),
        "curl {args:?} {urls:?} failed: exit {:?}, timed out {}\nstderr: {}\ntransfers: {t:#?}",
        out.code(),
        out.timed_out,
        out.stderr_str()
    );
    t
}

const CHAT_STREAM: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true}"#;

fn chat_stream_args<'a>(chunks: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-H",
        "authorization: Bearer sk-test",
        "-H",
        chunks,
        "--data-binary",
        CHAT_STREAM,
    ];
    v.extend_from_slice(extra);
    v
}

/// The content text of an OpenAI chat SSE body, how many `data:` events it had, and whether it
/// ended with `[DONE]`.
fn openai_sse(body: &str) -> (String, usize, bool) {
    let mut text = String::new();
    let mut events = 0;
    let mut done = false;
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        events += 1;
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data)
            .unwrap_or_else(|e| panic!("SSE event is not JSON ({e}): {data:?}"));
        if let Some(t) = v
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
        {
            text.push_str(t);
        }
    }
    (text, events, done)
}

fn url(host: &str, path: &str) -> String {
    format!("https://{host}{path}")
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn openai_sdk_default_base_url_from_a_tagged_pod() {
    if !privileged() {
        return;
    }
    let s = setup(&[OPENAI, ANTHROPIC], &[]);
    let pod = tagged(&s.w, "pod-openai", "acme.openai");
    let code = format!(
        r#"
import os, ssl, socket, openai
client = openai.OpenAI(api_key="sk-test-openai", max_retries=0, timeout=30.0)
out = {{"base_url": str(client.base_url)}}
msgs = [{{"role": "user", "content": "hello"}}]
r = client.chat.completions.create(model="gpt-4o-mini", messages=msgs,
        extra_headers={{"x-fake-usage": "prompt=21,completion=5"}})
out["json_text"] = r.choices[0].message.content
out["json_usage"] = r.usage.model_dump()
out["request_id"] = r._request_id
stream = client.chat.completions.create(model="gpt-4o-mini", messages=msgs, stream=True,
        stream_options={{"include_usage": True}}, extra_headers={{"x-fake-chunks": "5"}})
text, usage, n = "", None, 0
for ch in stream:
    n += 1
    if ch.choices and ch.choices[0].delta.content:
        text += ch.choices[0].delta.content
    if ch.usage:
        usage = ch.usage.model_dump()
out.update(stream_text=text, stream_usage=usage, stream_chunks=n)
# The certificate this client sees: a leaf for exactly the SNI, issued by the SpendGuard CA.
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
ctx.set_alpn_protocols(["h2", "http/1.1"])
with socket.create_connection(("api.openai.com", 443), timeout=10) as raw:
    with ctx.wrap_socket(raw, server_hostname="api.openai.com") as tls:
        cert = tls.getpeercert()
        out["alpn"] = tls.selected_alpn_protocol()
out["leaf_issuer"] = cert["issuer"]
out["leaf_san"] = cert["subjectAltName"]
out["ca_subject"] = ssl._ssl._test_decode_cert(os.environ["SSL_CERT_FILE"])["subject"]
# ... and not the provider's: the fake provider's own CA does not verify it.
fake = ssl.create_default_context(cafile="{fake_ca}")
try:
    with socket.create_connection(("api.openai.com", 443), timeout=10) as raw:
        with fake.wrap_socket(raw, server_hostname="api.openai.com"):
            out["fake_ca_verify"] = "verified"
except ssl.SSLCertVerificationError as e:
    out["fake_ca_verify"] = "failed: " + str(e)
emit(out)
"#,
        fake_ca = s.fake_ca.display()
    );
    let v = sdk::python(at(&pod, &s.w.pod), &[(OPENAI, UPSTREAM_A)], &s.sg_ca, &code);

    assert_eq!(v["base_url"], "https://api.openai.com/v1/", "{v}");
    assert_eq!(v["json_text"], expected_text(3), "{v}");
    assert_eq!(v["json_usage"]["prompt_tokens"], 21, "{v}");
    assert_eq!(v["json_usage"]["completion_tokens"], 5, "{v}");
    assert!(
        v["request_id"].as_str().unwrap_or("").starts_with("req_"),
        "the provider's x-request-id did not reach the SDK: {v}"
    );
    assert_eq!(v["stream_text"], expected_text(5), "{v}");
    assert_eq!(v["stream_usage"]["completion_tokens"], 7, "{v}");
    assert_eq!(
        v["leaf_issuer"], v["ca_subject"],
        "leaf not issued by the SpendGuard CA: {v}"
    );
    assert_eq!(
        v["leaf_san"],
        serde_json::json!([["DNS", OPENAI]]),
        "the leaf must name exactly the SNI: {v}"
    );
    assert_eq!(v["alpn"], "h2", "the proxy must offer h2: {v}");
    assert!(
        v["fake_ca_verify"]
            .as_str()
            .unwrap_or("")
            .starts_with("failed"),
        "the client saw the provider's own certificate: {v}"
    );

    let reqs = s.fake.requests();
    let chats: Vec<&RecordedRequest> = reqs
        .iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .collect();
    assert_eq!(chats.len(), 2, "{reqs:#?}");
    for r in &chats {
        assert_eq!(r.method, "POST");
        assert_eq!(r.sni.as_deref(), Some(OPENAI), "upstream SNI: {r:?}");
        assert_eq!(r.header("authorization"), Some("Bearer sk-test-openai"));
    }
    let body = chats[1].body_json().expect("stream request body is JSON");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    let log = s.w.agent_log();
    assert!(
        log.contains("agent=acme.openai") && log.contains("intercepting"),
        "{log}"
    );
}

#[test]
fn anthropic_sdk_messages_from_a_tagged_node_cgroup() {
    if !privileged() {
        return;
    }
    let s = setup(&[OPENAI, ANTHROPIC], &[]);
    let cg = tagged(&s.w, "node-anthropic", "acme.claude");
    let code = r#"
import anthropic
client = anthropic.Anthropic(api_key="sk-ant-test", max_retries=0, timeout=30.0)
out = {"base_url": str(client.base_url)}
msgs = [{"role": "user", "content": "hello"}]
m = client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=msgs,
        extra_headers={"x-fake-usage": "prompt=30,completion=9,cached=4"})
out["json_text"] = m.content[0].text
out["json_usage"] = m.usage.model_dump()
with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=msgs,
        extra_headers={"x-fake-chunks": "6"}) as s:
    streamed = "".join(s.text_stream)
    final = s.get_final_message()
out["streamed"] = streamed
out["final_text"] = final.content[0].text
out["final_usage"] = final.usage.model_dump()
out["final_stop"] = final.stop_reason
emit(out)
"#;
    let v = sdk::python(
        at(&cg, &s.w.node),
        &[(ANTHROPIC, UPSTREAM_A)],
        &s.sg_ca,
        code,
    );
    assert_eq!(v["base_url"], "https://api.anthropic.com", "{v}");
    assert_eq!(v["json_text"], expected_text(3), "{v}");
    assert_eq!(v["json_usage"]["input_tokens"], 30, "{v}");
    assert_eq!(v["json_usage"]["cache_read_input_tokens"], 4, "{v}");
    assert_eq!(v["json_usage"]["output_tokens"], 9, "{v}");
    assert_eq!(v["streamed"], expected_text(6), "{v}");
    assert_eq!(v["final_text"], expected_text(6), "{v}");
    assert_eq!(v["final_usage"]["output_tokens"], 7, "{v}");
    assert_eq!(v["final_stop"], "end_turn", "{v}");

    let reqs = s.fake.requests();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    for r in &reqs {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/v1/messages")
        );
        assert_eq!(r.sni.as_deref(), Some(ANTHROPIC), "upstream SNI: {r:?}");
        // The key, as x-api-key or (newer SDKs) a bearer token.
        assert!(
            r.header("x-api-key") == Some("sk-ant-test")
                || r.header("authorization") == Some("Bearer sk-ant-test"),
            "the API key did not reach the provider: {r:?}"
        );
        assert!(r.header("anthropic-version").is_some(), "{r:?}");
    }
    assert_eq!(reqs[1].body_json().expect("json")["stream"], true);
    assert!(s.w.agent_log().contains("agent=acme.claude"));
}

#[test]
fn http2_and_http1_on_both_sides() {
    if !privileged() {
        return;
    }
    // UPSTREAM_A offers h2 + http/1.1; UPSTREAM_B only http/1.1 (same CA, same names).
    let s = setup(&[OPENAI], &[]);
    let b = fake_on(&s.w.node, UPSTREAM_B, &s.ca, &[OPENAI], &[b"http/1.1"]);
    let cg = tagged(&s.w, "versions", "acme.versions");
    let here = at(&cg, &s.w.node);
    let u = url(OPENAI, "/v1/chat/completions");
    // The version is ALPN's (http_conn.rs): a client that offers no ALPN at all is served HTTP/1.1.
    for (flag, client_version) in [("--http2", "2"), ("--http1.1", "1.1"), ("--no-alpn", "1.1")] {
        for (fake, addr, upstream_version) in [
            (&s.fake, UPSTREAM_A, "HTTP/2.0"),
            (&b, UPSTREAM_B, "HTTP/1.1"),
        ] {
            fake.clear_requests();
            let before = fake.connections();
            let t = curl_ok(
                here,
                &s.sg_ca,
                &[(OPENAI, addr)],
                &chat_stream_args("x-fake-chunks: 4", &[flag]),
                &[&u, &u],
            );
            let what = format!("client {flag} → upstream {addr}");
            for tr in &t {
                assert_eq!(tr.version(), client_version, "{what}: {:?}", tr.info);
                let (text, _, done) = openai_sse(&tr.text());
                assert_eq!(text, expected_text(4), "{what}");
                assert!(done, "{what}: stream not finished: {}", tr.text());
            }
            assert_eq!(
                t[1].info["num_connects"], 0,
                "{what}: the client's second request did not reuse its connection to the proxy"
            );
            let reqs = fake.requests();
            assert_eq!(reqs.len(), 2, "{what}: {reqs:#?}");
            for r in &reqs {
                assert_eq!(r.version, upstream_version, "{what}: {r:?}");
                assert_eq!(r.sni.as_deref(), Some(OPENAI), "{what}");
            }
            // (The upstream connection may already be pooled from the previous round.)
            assert!(
                fake.connections() - before <= 1,
                "{what}: both requests should share one upstream connection"
            );
        }
    }
}

#[test]
fn other_sni_passes_through_with_the_servers_own_certificate() {
    if !privileged() {
        return;
    }
    let s = setup(&[OPENAI], &[]);
    let other_ca = TestCa::new("example.test CA");
    let other = fake_on(&s.w.node, UPSTREAM_B, &other_ca, &["example.test"], &[]);
    let other_ca_file = s.dir.path().join("other-ca.pem");
    std::fs::write(&other_ca_file, other_ca.cert_pem()).expect("write CA");
    let pod = tagged(&s.w, "pod-pass", "acme.pass");
    let here = at(&pod, &s.w.pod);
    let ex = [("example.test", UPSTREAM_B)];
    let u = url("example.test", "/v1/models");

    // The server's own certificate reaches the client: its CA verifies it, SpendGuard's does not.
    let t = curl_ok(here, &other_ca_file, &ex, &["--http2"], &[&u]);
    assert_eq!(
        t[0].version(),
        "2",
        "ALPN is the server's own: {:?}",
        t[0].info
    );
    let certs = t[0].info["certs"].as_str().unwrap_or("");
    assert!(
        certs.contains("Issuer:CN = example.test CA") && !certs.contains("SpendGuard node CA"),
        "the client did not see the server's own certificate: {certs}"
    );
    assert_eq!(t[0].json()["object"], "list");
    let (out, _) = curl(here, &s.sg_ca, &ex, &[], &[&u]);
    assert_eq!(
        out.code(),
        Some(60),
        "SpendGuard's CA must not verify a passed-through server: {}",
        out.stderr_str()
    );
    let reqs = other.requests();
    assert_eq!(reqs.len(), 1, "{reqs:#?}");
    assert_eq!(reqs[0].sni.as_deref(), Some("example.test"));
    // It really went through the agent (redirected, then spliced), for this agent.
    let log = s.w.agent_log();
    assert!(
        log.lines().any(|l| l.contains("passing through")
            && l.contains("SNI is not a provider host")
            && l.contains("dst=10.77.3.2:443")
            && l.contains("agent=acme.pass")),
        "no passthrough logged:\n{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("intercepting") && l.contains("10.77.3.2")),
        "{log}"
    );

    // The contrast, same client: a provider host is intercepted — the provider's CA fails, ours works.
    let oa = [(OPENAI, UPSTREAM_A)];
    let models = url(OPENAI, "/v1/models");
    let (out, _) = curl(here, &s.fake_ca, &oa, &[], &[&models]);
    assert_eq!(
        out.code(),
        Some(60),
        "a provider host must present the SpendGuard leaf: {}",
        out.stderr_str()
    );
    let t = curl_ok(here, &s.sg_ca, &oa, &[], &[&models]);
    assert_eq!(t[0].json()["object"], "list");
    let certs = t[0].info["certs"].as_str().unwrap_or("");
    assert!(
        certs.contains("Issuer:CN = SpendGuard node CA")
            && certs.contains("Subject Alternative Name:DNS:api.openai.com\n"),
        "the intercepted client must see a SpendGuard leaf for exactly the SNI: {certs}"
    );
}

/// A deterministic pseudo-random file of `len` bytes; returns its sha256 (hex).
fn random_file(path: &Path, len: usize) -> String {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut h = Sha256::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        let n = left.min(buf.len());
        f.write_all(&buf[..n]).expect("write");
        h.update(&buf[..n]);
        left -= n;
    }
    f.flush().expect("flush");
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn long_sse_stream_and_large_priced_body_are_intact() {
    if !privileged() {
        return;
    }
    let s = setup(&[OPENAI], &[]);
    let pod = tagged(&s.w, "pod-big", "acme.big");
    let here = at(&pod, &s.w.pod);
    let oa = [(OPENAI, UPSTREAM_A)];

    let chat = url(OPENAI, "/v1/chat/completions");
    for flag in ["--http2", "--http1.1"] {
        let t = curl_ok(
            here,
            &s.sg_ca,
            &oa,
            &chat_stream_args("x-fake-chunks: 2000", &[flag]),
            &[&chat],
        );
        let (text, events, done) = openai_sse(&t[0].text());
        assert!(done, "{flag}: stream cut short");
        // role chunk + 2000 deltas + finish chunk + [DONE]
        assert_eq!(events, 2003, "{flag}: events lost or added");
        assert_eq!(text, expected_text(2000), "{flag}: stream content altered");
    }

    // A 20 MB chat request (metered: the proxy reads the whole body to price it) arrives intact.
    let filler: String = (0..20 * 1024 * 1024 / 16)
        .map(|i| format!("{:015x} ", i))
        .collect();
    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": filler}],
    })
    .to_string();
    let file = s.dir.path().join("big-chat.json");
    std::fs::write(&file, &body).expect("write body");
    let data = format!("@{}", file.display());
    for flag in ["--http2", "--http1.1"] {
        s.fake.clear_requests();
        let t = curl_ok(
            here,
            &s.sg_ca,
            &oa,
            &[
                flag,
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "-H",
                "authorization: Bearer sk-test",
                "--data-binary",
                &data,
            ],
            &[&chat],
        );
        assert_eq!(
            t[0].json()["choices"][0]["message"]["content"],
            expected_text(3)
        );
        let reqs = s.fake.requests();
        assert_eq!(reqs.len(), 1, "{flag}");
        assert_eq!(
            reqs[0].body_len,
            body.len() as u64,
            "{flag}: body length changed"
        );
        assert!(
            body.as_bytes().starts_with(&reqs[0].body),
            "{flag}: the first MiB of the body was altered in transit"
        );
    }
}

#[test]
fn fifty_mb_upload_is_intact_through_the_transport() {
    if !privileged() {
        return;
    }
    // `/upload` cannot be priced (a metered agent blocks it as unpriced_request), so this test of
    // the transport alone runs with metering off.
    let s = setup_with(&[OPENAI], &[], &[("SPENDGUARD_METERING", "off")]);
    let pod = tagged(&s.w, "pod-upload", "acme.upload");
    let here = at(&pod, &s.w.pod);
    let oa = [(OPENAI, UPSTREAM_A)];
    const LEN: usize = 50 * 1024 * 1024;
    let file = s.dir.path().join("upload.bin");
    let sha = random_file(&file, LEN);
    let data = format!("@{}", file.display());
    let upload = url(OPENAI, "/upload");
    for flag in ["--http2", "--http1.1"] {
        s.fake.clear_requests();
        let t = curl_ok(
            here,
            &s.sg_ca,
            &oa,
            &[
                flag,
                "-X",
                "POST",
                "-H",
                "content-type: application/octet-stream",
                "--data-binary",
                &data,
            ],
            &[&upload],
        );
        let v = t[0].json();
        assert_eq!(v["len"], LEN as u64, "{flag}: {v}");
        assert_eq!(
            v["sha256"], sha,
            "{flag}: the upload was altered in transit"
        );
        let reqs = s.fake.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].body_len, LEN as u64);
        assert_eq!(reqs[0].sni.as_deref(), Some(OPENAI));
    }
}

#[test]
fn client_disconnect_mid_stream_cancels_the_upstream_stream() {
    if !privileged() {
        return;
    }
    let s = setup(&[OPENAI], &[]);
    let cg = tagged(&s.w, "quitter", "acme.quitter");
    let here = at(&cg, &s.w.node);
    let chat = url(OPENAI, "/v1/chat/completions");
    for (i, flag) in ["--http1.1", "--http2"].into_iter().enumerate() {
        // 2000 events 20 ms apart: 40 s of stream; the client gives up after 2 s.
        let (out, t) = curl(
            here,
            &s.sg_ca,
            &[(OPENAI, UPSTREAM_A)],
            &chat_stream_args(
                "x-fake-chunks: 2000",
                &[flag, "-H", "x-fake-chunk-delay-ms: 20", "--max-time", "2"],
            ),
            &[&chat],
        );
        assert_eq!(
            out.code(),
            Some(28),
            "{flag}: curl should time out mid-stream: {}",
            out.stderr_str()
        );
        let (text, _, done) = openai_sse(&t.first().map(Transfer::text).unwrap_or_default());
        assert!(
            !done && text.starts_with(&expected_text(5)),
            "{flag}: the stream did not flow before the disconnect: {text:?}; {t:?}; {}",
            out.stderr_str()
        );
        let want = i + 1;
        assert!(
            eventually(Duration::from_secs(10), || s.fake.cancelled_streams()
                >= want),
            "{flag}: the provider's stream was not cancelled after the client left \
             (cancelled_streams = {}, want {want})",
            s.fake.cancelled_streams()
        );
    }
    assert!(agent_alive(&s.w));
}

#[test]
fn misdirected_host_gets_421_and_unreachable_upstream_gets_502() {
    if !privileged() {
        return;
    }
    let s = setup(&[OPENAI, ANTHROPIC], &[]);
    let cg = tagged(&s.w, "errors", "acme.errors");
    let here = at(&cg, &s.w.node);
    let both = [(OPENAI, UPSTREAM_A), (ANTHROPIC, UPSTREAM_A)];

    // Host ≠ SNI: 421, in the SNI provider's error shape, never forwarded. h1 Host and h2 :authority.
    for flag in ["--http1.1", "--http2"] {
        let (out, t) = curl(
            here,
            &s.sg_ca,
            &both,
            &[flag, "-H", "Host: api.anthropic.com"],
            &[&url(OPENAI, "/v1/models")],
        );
        assert!(out.success(), "{flag}: {}", out.stderr_str());
        assert_eq!(t[0].status(), 421, "{flag}: {t:?}");
        let v = t[0].json();
        assert!(
            v["error"]["message"].is_string(),
            "{flag}: OpenAI shape: {v}"
        );
    }
    let (_, t) = curl(
        here,
        &s.sg_ca,
        &both,
        &["-H", "Host: api.openai.com"],
        &[&url(ANTHROPIC, "/v1/messages")],
    );
    assert_eq!(t[0].status(), 421, "{t:?}");
    let v = t[0].json();
    assert_eq!(v["type"], "error", "Anthropic shape: {v}");
    assert!(v["error"]["message"].is_string(), "Anthropic shape: {v}");
    assert_eq!(
        s.fake.request_count(),
        0,
        "a misdirected request reached the provider: {:#?}",
        s.fake.requests()
    );

    // The original destination has no server: 502 in the provider's error shape, quickly.
    s.w.node
        .ip(&["addr", "add", &format!("{UPSTREAM_NONE}/32"), "dev", "lo"]);
    let started = Instant::now();
    let (out, t) = curl(
        here,
        &s.sg_ca,
        &[(OPENAI, UPSTREAM_NONE)],
        &[],
        &[&url(OPENAI, "/v1/models")],
    );
    assert!(out.success(), "{}", out.stderr_str());
    assert_eq!(t[0].status(), 502, "{t:?}");
    assert!(
        t[0].info["content_type"]
            .as_str()
            .unwrap_or("")
            .starts_with("application/json"),
        "{:?}",
        t[0].info
    );
    let v = t[0].json();
    let e = &v["error"];
    assert!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .contains("10.77.3.3:443")
            && e["type"].is_string()
            && e.get("code").is_some(),
        "not the OpenAI error shape naming the destination: {v}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // An upstream whose certificate the agent does not trust: 502, nothing sent to it.
    let rogue_ca = TestCa::new("rogue CA");
    let rogue = fake_on(&s.w.node, UPSTREAM_B, &rogue_ca, &[OPENAI], &[]);
    let (_, t) = curl(
        here,
        &s.sg_ca,
        &[(OPENAI, UPSTREAM_B)],
        &[],
        &[&url(OPENAI, "/v1/models")],
    );
    assert_eq!(t[0].status(), 502, "an untrusted upstream was used: {t:?}");
    assert_eq!(
        rogue.request_count(),
        0,
        "a request reached an untrusted upstream"
    );
    assert!(agent_alive(&s.w));
}

#[test]
fn fifty_concurrent_clients_over_several_provider_hosts() {
    if !privileged() {
        return;
    }
    // (host, model) pairs on paths the fake serves. Groq is left out: its real path is
    // /openai/v1/chat/completions, which the fake provider does not route.
    const HOSTS: &[(&str, &str)] = &[
        ("api.openai.com", "gpt-4o-mini"),
        ("api.anthropic.com", "claude-sonnet-4-5"),
        ("api.mistral.ai", "mistral-small-latest"),
        ("api.deepseek.com", "deepseek-chat"),
        ("api.x.ai", "grok-3-mini"),
        (
            "api.together.xyz",
            "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        ),
    ];
    const CLIENTS: usize = 50;
    const PER_CLIENT: usize = 2;
    let names: Vec<&str> = HOSTS.iter().map(|(h, _)| *h).collect();
    let s = setup(&names, &[]);
    let node_cg = tagged(&s.w, "stress-node", "acme.stress.node");
    let pod_cg = tagged(&s.w, "stress-pod", "acme.stress.pod");
    let resolve: Vec<(&str, &str)> = names.iter().map(|h| (*h, UPSTREAM_A)).collect();

    let results: Vec<(usize, Finished, Vec<Transfer>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (s, resolve, node_cg, pod_cg) = (&s, &resolve, &node_cg, &pod_cg);
                scope.spawn(move || {
                    let (host, model) = HOSTS[i % HOSTS.len()];
                    let here = if i % 2 == 0 {
                        at(pod_cg, &s.w.pod)
                    } else {
                        at(node_cg, &s.w.node)
                    };
                    let flag = if i % 3 == 0 { "--http1.1" } else { "--http2" };
                    let (body, path, extra) = if host == ANTHROPIC {
                        let b = serde_json::json!({"model": model, "max_tokens": 32,
                            "messages": [{"role": "user", "content": "hi"}]});
                        (b, "/v1/messages", "x-api-key: sk-ant-test")
                    } else {
                        let b = serde_json::json!({"model": model, "stream": true,
                            "messages": [{"role": "user", "content": "hi"}]});
                        (b, "/v1/chat/completions", "x-fake-chunks: 5")
                    };
                    let body = body.to_string();
                    let args = [
                        flag,
                        "-X",
                        "POST",
                        "-H",
                        "content-type: application/json",
                        "-H",
                        "authorization: Bearer sk-test",
                        "-H",
                        extra,
                        "--data-binary",
                        &body,
                    ];
                    let u = url(host, path);
                    let urls = vec![u.as_str(); PER_CLIENT];
                    let (out, t) = curl(here, &s.sg_ca, resolve, &args, &urls);
                    (i, out, t)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });

    for (i, out, t) in &results {
        let (host, _) = HOSTS[i % HOSTS.len()];
        assert!(
            out.success() && t.len() == PER_CLIENT,
            "client {i} ({host}) failed: exit {:?}: {}",
            out.code(),
            out.stderr_str()
        );
        for tr in t {
            assert_eq!(tr.status(), 200, "client {i} ({host}): {}", tr.text());
            if host == ANTHROPIC {
                assert_eq!(tr.json()["content"][0]["text"], expected_text(3));
            } else {
                let (text, _, done) = openai_sse(&tr.text());
                assert!(done && text == expected_text(5), "client {i} ({host})");
            }
        }
    }
    let reqs = s.fake.requests();
    assert_eq!(reqs.len(), CLIENTS * PER_CLIENT);
    for (h, _) in HOSTS {
        let want = (0..CLIENTS)
            .filter(|i| HOSTS[i % HOSTS.len()].0 == *h)
            .count()
            * PER_CLIENT;
        let got = reqs.iter().filter(|r| r.sni.as_deref() == Some(*h)).count();
        assert_eq!(got, want, "requests that reached the provider with SNI {h}");
    }
    assert!(agent_alive(&s.w), "the agent died:\n{}", s.w.agent_log());
    assert!(s.w.cli(&["ping"]).status.success());
    let conns = s.fake.connections();
    eprintln!(
        "stress: {conns} upstream connections for {} requests",
        CLIENTS * PER_CLIENT
    );
    assert!(
        conns < CLIENTS * PER_CLIENT,
        "no upstream connection reuse: {conns} connections for {} requests",
        CLIENTS * PER_CLIENT
    );

    // Sequential clients, each on its own connection to the proxy: the upstream connection is pooled.
    let before = s.fake.connections();
    let u = url(OPENAI, "/v1/chat/completions");
    for _ in 0..6 {
        curl_ok(
            at(&node_cg, &s.w.node),
            &s.sg_ca,
            &resolve,
            &chat_stream_args("x-fake-chunks: 2", &[]),
            &[&u],
        );
    }
    let new = s.fake.connections() - before;
    assert!(
        new <= 1,
        "6 sequential requests opened {new} upstream connections (pool per destination + SNI)"
    );
    let log = s.w.agent_log();
    assert!(!log.contains("panicked"), "{log}");
}
