//! A metered world for the metering and fault tests: a [`World`] whose agent trusts a fake provider
//! for the OpenAI, Anthropic and Gemini hosts on `UPSTREAM_A:443`, one tagged cgroup, and helpers to
//! drive curl from it and read the ledger through the CLI.
//!
//! Network safety: every provider name is pinned to `UPSTREAM_A` (inside the node namespace) with
//! `--resolve`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spendguard_pricing::providers::{adapter_for, ProviderId, Quote, QuoteOptions};
use spendguard_pricing::{ModelPrice, PriceTable, Usage};

use crate::fake_provider::{FakeProvider, TestCa};
use crate::sdk::run_bounded;
use crate::{place, Cgroup, Place, World, UPSTREAM_A};

/// Provider names the clients use, each pinned to an address inside the test's node namespace.
pub const HOSTS: &[(&str, &str)] = &[
    ("api.openai.com", UPSTREAM_A),
    ("api.anthropic.com", UPSTREAM_A),
    ("generativelanguage.googleapis.com", UPSTREAM_A),
    ("bedrock-runtime.us-east-1.amazonaws.com", UPSTREAM_A),
    ("us-east5-aiplatform.googleapis.com", UPSTREAM_A),
    ("api.cohere.com", UPSTREAM_A),
    ("api.perplexity.ai", UPSTREAM_A),
    // A self-hosted OpenAI-compatible server: a provider host only through `extra_provider_hosts`.
    (SELF_HOSTED, UPSTREAM_A),
];

/// The self-hosted server's name in [`HOSTS`].
pub const SELF_HOSTED: &str = "vllm.internal.test";

// Fields drop in order: the child cgroup before the World that owns its parent.
pub struct Metered {
    pub agent_cg: Cgroup,
    pub fake: FakeProvider,
    pub w: World,
    /// SpendGuard's CA certificate (what the workload trusts).
    pub ca: PathBuf,
    /// The fake provider's CA certificate (what the agent trusts upstream).
    pub upstream_ca: PathBuf,
}

impl Metered {
    /// A started agent with `agent` tagged on the cgroup `agent`.
    pub fn new(agent: &str) -> Metered {
        Metered::with(agent, |_| {})
    }

    /// Like [`Metered::new`]; `configure` runs before the agent starts (environment, limits).
    pub fn with(agent: &str, configure: impl FnOnce(&World)) -> Metered {
        let w = World::new();
        let test_ca = TestCa::new("fake provider CA");
        let upstream_ca = w.state.path().join("upstream-ca.pem");
        std::fs::write(&upstream_ca, test_ca.cert_pem()).expect("write upstream CA");
        w.set_agent_env(
            "SPENDGUARD_UPSTREAM_CA",
            upstream_ca.to_str().expect("utf8"),
        );
        configure(&w);
        let l = w.node.enter(|| {
            std::net::TcpListener::bind(format!("{UPSTREAM_A}:443")).expect("bind fake provider")
        });
        let names: Vec<&str> = HOSTS.iter().map(|(n, _)| *n).collect();
        let fake = FakeProvider::start(l, &test_ca, &names, &[]);
        w.start_agent();
        let agent_cg = w.cgroup.child("agent");
        w.tag(&agent_cg.path, agent);
        let ca = w.state_dir().join("ca.crt");
        Metered {
            w,
            fake,
            agent_cg,
            ca,
            upstream_ca,
        }
    }

    /// The tagged cgroup, in the node namespace.
    pub fn at(&self) -> Place<'_> {
        Place {
            cgroup: Some(&self.agent_cg.path),
            netns: Some(&self.w.node),
            uid: None,
        }
    }

    /// `spendguard ARGS --json`, asserting success.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.w.cli(&a);
        assert!(
            out.status.success(),
            "spendguard {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("--json output")
    }

    pub fn cli_ok(&self, args: &[&str]) {
        let out = self.w.cli(args);
        assert!(
            out.status.success(),
            "spendguard {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Total spend (settled) of `agent`, in micro-dollars.
    pub fn spent_total(&self, agent: &str) -> u64 {
        let s = self.cli_json(&["status", agent]);
        usd_to_micro(&s["spent"]["total"])
    }

    /// Reserved by requests in flight at `agent` and below, in micro-dollars.
    pub fn reserved(&self, agent: &str) -> u64 {
        let s = self.cli_json(&["status", agent]);
        usd_to_micro(&s["reserved"])
    }

    /// Waits until the ledger has settled everything in flight (settles run after the body ends).
    pub fn settled_spend(&self, agent: &str) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.cli_json(&["status", agent]);
            if usd_to_micro(&s["reserved"]) == 0 || Instant::now() > deadline {
                return usd_to_micro(&s["spent"]["total"]);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every audit event of `agent` and below, oldest first.
    pub fn audit(&self, agent: &str) -> Vec<serde_json::Value> {
        let mut v = self
            .cli_json(&["audit", "--agent", agent, "--limit", "100000"])
            .as_array()
            .cloned()
            .expect("audit array");
        v.sort_by_key(|e| e["id"].as_u64());
        v
    }

    /// The agent's `/metrics` exposition (it listens on 127.0.0.1:9464 in the node namespace).
    pub fn metrics(&self) -> String {
        self.w.node.enter(|| {
            use std::io::{Read as _, Write as _};
            let mut s = std::net::TcpStream::connect("127.0.0.1:9464").expect("connect /metrics");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s.write_all(b"GET /metrics HTTP/1.1\r\nhost: metrics\r\nconnection: close\r\n\r\n")
                .expect("send");
            let mut out = String::new();
            s.read_to_string(&mut out).expect("read /metrics");
            out
        })
    }

    /// `curl` from the tagged cgroup to api.openai.com: (status, headers, body).
    pub fn curl(&self, path: &str, extra: &[&str]) -> (u16, String, String) {
        curl_in(self.at(), &self.ca, path, extra)
    }

    /// Waits (≤ 10 s) until the fake provider has received `n` requests.
    pub fn wait_provider_requests(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.fake.request_count() < n {
            assert!(
                Instant::now() < deadline,
                "the provider saw {} requests, want {n}",
                self.fake.request_count()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A slow OpenAI chat stream from the tagged cgroup, in the background (curl, ≤ 30 s):
    /// `chunks` deltas `delay_ms` apart. The caller kills it.
    pub fn spawn_slow_stream(&self, body: &str, chunks: u32, delay_ms: u32) -> Child {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-N", "--max-time", "30", "--cacert"])
            .arg(&self.ca);
        cmd.arg("--resolve")
            .arg(format!("api.openai.com:443:{UPSTREAM_A}"));
        cmd.args(["-H", "content-type: application/json"])
            .arg("-H")
            .arg(format!("x-fake-chunks: {chunks}"))
            .arg("-H")
            .arg(format!("x-fake-chunk-delay-ms: {delay_ms}"))
            .args(["-d", body]);
        cmd.arg("https://api.openai.com/v1/chat/completions")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        place(&mut cmd, self.at());
        cmd.spawn().expect("curl")
    }
}

pub fn usd_to_micro(v: &serde_json::Value) -> u64 {
    let f = v
        .as_f64()
        .unwrap_or_else(|| panic!("not a USD number: {v}"));
    (f * 1_000_000.0).round() as u64
}

pub fn curl_in(at: Place<'_>, ca: &Path, path: &str, extra: &[&str]) -> (u16, String, String) {
    curl_host(at, ca, "api.openai.com", path, extra)
}

/// `curl` (≤ 30 s) in `at` to `https://host/path`: (status, headers, body + curl's stderr).
/// Panics when curl got no HTTP status at all.
pub fn curl_host(
    at: Place<'_>,
    ca: &Path,
    host: &str,
    path: &str,
    extra: &[&str],
) -> (u16, String, String) {
    let out = curl_out(at, ca, host, path, extra);
    assert!(!out.timed_out, "curl hung: {}", out.stderr);
    (out.status, out.headers, out.body + &out.stderr)
}

/// What one curl run saw.
#[derive(Debug)]
pub struct CurlOut {
    /// curl's exit code (28: its own `--max-time`); `None` when it was killed.
    pub exit: Option<i32>,
    /// The HTTP status (0: none).
    pub status: u16,
    pub headers: String,
    pub body: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// Still running after 40 s (then killed).
    pub timed_out: bool,
}

/// `curl` in `at` to `https://host/path` (`--max-time 30` unless `extra` sets another), every
/// provider name pinned by `--resolve`; whatever happened.
pub fn curl_out(at: Place<'_>, ca: &Path, host: &str, path: &str, extra: &[&str]) -> CurlOut {
    let dir = tempfile::tempdir().expect("tmp");
    let (body, headers) = (dir.path().join("body"), dir.path().join("headers"));
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "--cacert"]).arg(ca);
    for (name, addr) in HOSTS {
        cmd.arg("--resolve").arg(format!("{name}:443:{addr}"));
    }
    cmd.arg("-o")
        .arg(&body)
        .arg("-D")
        .arg(&headers)
        .args(["-w", "%{http_code}"])
        .args(extra);
    cmd.arg(format!("https://{host}{path}"));
    cmd.env_clear().env("PATH", "/usr/bin:/bin");
    place(&mut cmd, at);
    let started = Instant::now();
    let out = run_bounded(cmd, Duration::from_secs(40));
    CurlOut {
        exit: out.code(),
        status: out.stdout_str().trim().parse().unwrap_or(0),
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
        body: std::fs::read_to_string(&body).unwrap_or_default(),
        stderr: out.stderr_str(),
        elapsed: started.elapsed(),
        timed_out: out.timed_out,
    }
}

/// The quote the proxy computes for this OpenAI chat body (same adapter, same bundled prices).
pub fn chat_quote(body: &str) -> Quote {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    adapter_for(ProviderId::OpenAi)
        .quote(
            &http::Method::POST,
            "/v1/chat/completions",
            &headers,
            body.as_bytes(),
            &PriceTable::bundled(),
            &QuoteOptions::none(),
        )
        .expect("quote")
}

pub fn price(model: &str) -> ModelPrice {
    PriceTable::bundled()
        .lookup(model)
        .unwrap_or_else(|| panic!("{model} not in the bundled table"))
        .1
        .clone()
}

/// OpenAI usage: prompt includes cached.
pub fn openai_usage(prompt: u64, completion: u64, cached: u64) -> Usage {
    Usage {
        input_uncached: prompt - cached,
        input_cached: cached,
        output: completion,
        ..Usage::default()
    }
}
