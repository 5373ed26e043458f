//! Explicit proxy mode (HTTP CONNECT): the same interception and metering without eBPF.

use std::process::Command;
use std::time::Duration;

use spendguard_tests::fake_provider::{FakeProvider, TestCa};
use spendguard_tests::sdk::run_bounded;
use spendguard_tests::{place, privileged, Place, World, UPSTREAM_A};

const EXPLICIT: &str = "127.0.0.1:15080";

fn curl(w: &World, proxy: &str, url: &str, extra: &[&str]) -> (u16, String, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let (body, headers) = (dir.path().join("body"), dir.path().join("headers"));
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--cacert"])
        .arg(w.state.path().join("ca.crt"))
        .args(["-x", proxy, "-o"])
        .arg(&body)
        .arg("-D")
        .arg(&headers)
        .args(["-w", "%{http_code} %{http_connect}"])
        .args(extra)
        .arg(url)
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    // Untagged, in the node namespace: explicit mode needs no redirect.
    place(
        &mut cmd,
        Place {
            netns: Some(&w.node),
            ..Default::default()
        },
    );
    let out = run_bounded(cmd, Duration::from_secs(30));
    // A refused CONNECT shows in %{http_connect}; %{http_code} is then 000.
    let codes: Vec<u16> = out
        .stdout_str()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect();
    let code = match codes.as_slice() {
        [0, connect] => *connect,
        [http, _] => *http,
        _ => 0,
    };
    (
        code,
        std::fs::read_to_string(&headers).unwrap_or_default(),
        std::fs::read_to_string(&body).unwrap_or_default() + &out.stderr_str(),
    )
}

#[test]
fn connect_proxy_meters_by_proxy_user_name() {
    if !privileged() {
        return;
    }
    let w = World::new();
    let test_ca = TestCa::new("fake provider CA");
    let upstream_ca = w.state.path().join("upstream-ca.pem");
    std::fs::write(&upstream_ca, test_ca.cert_pem()).expect("write");
    w.set_agent_env(
        "SPENDGUARD_UPSTREAM_CA",
        upstream_ca.to_str().expect("utf8"),
    );
    w.set_agent_env("SPENDGUARD_EXPLICIT_LISTEN", EXPLICIT);
    // The agent must never ask DNS for a provider name here: pin it inside the test namespace.
    w.set_agent_env(
        "SPENDGUARD_EXPLICIT_RESOLVE",
        &format!("api.openai.com={UPSTREAM_A}"),
    );
    let l = w
        .node
        .enter(|| std::net::TcpListener::bind(format!("{UPSTREAM_A}:443")).expect("bind"));
    let fake = FakeProvider::start(l, &test_ca, &["api.openai.com"], &[]);
    w.start_agent();

    let url = "https://api.openai.com/v1/chat/completions";
    let body =
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#;
    let json = ["-H", "content-type: application/json", "-d", body];
    let (code, headers, out) = curl(&w, &format!("http://acme.dev:x@{EXPLICIT}"), url, &json);
    assert_eq!(code, 200, "{out}");
    assert!(
        headers.contains("x-spendguard-agent: acme.dev"),
        "{headers}"
    );
    assert_eq!(fake.request_count(), 1);
    let status = w.cli(&["status", "acme.dev", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status");
    assert!(
        s["spent"]["total"].as_f64().unwrap_or(0.0) > 0.0
            || s["reserved"].as_f64().unwrap_or(0.0) > 0.0,
        "{s}"
    );

    // Limits apply exactly as in transparent mode.
    assert!(w
        .cli(&["limit", "set", "acme.dev", "--per-call", "0.000001"])
        .status
        .success());
    let (code, _, out) = curl(&w, &format!("http://acme.dev:x@{EXPLICIT}"), url, &json);
    assert_eq!(code, 402, "{out}");
    assert!(out.contains("per_call_limit_exceeded"), "{out}");
    assert_eq!(
        fake.request_count(),
        1,
        "blocked request reached the provider"
    );

    // No agent name: 407. Not port 443: refused. Not CONNECT: refused.
    let (code, _, out) = curl(&w, &format!("http://{EXPLICIT}"), url, &json);
    assert_eq!(code, 407, "{out}");
    let (code, _, out) = curl(
        &w,
        &format!("http://acme.dev:x@{EXPLICIT}"),
        "https://api.openai.com:8443/v1/models",
        &[],
    );
    assert_eq!(code, 403, "{out}");
    let (code, _, out) = curl(
        &w,
        &format!("http://acme.dev:x@{EXPLICIT}"),
        &format!("http://{UPSTREAM_A}:443/"),
        &[],
    );
    assert_eq!(code, 405, "{out}");
}
