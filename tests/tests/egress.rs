//! Issue 16, item 1: `other_hosts = deny` closes a tagged connection to a host that is neither a
//! provider host nor in `allowed_hosts` before any byte reaches it (a TLS client gets an alert
//! after its ClientHello), audits it `blocked` / `host_not_allowed` and counts it in the metrics.

use spendguard_tests::metered::{curl_out, Metered as Env};
use spendguard_tests::servers::EchoServer;
use spendguard_tests::{privileged, probe, UPSTREAM_B};

/// curl to `https://host/` with `host` pinned to `UPSTREAM_B` (where only the echo server listens).
fn curl_other(e: &Env, host: &str) -> spendguard_tests::metered::CurlOut {
    let pin = format!("{host}:443:{UPSTREAM_B}");
    curl_out(
        e.at(),
        &e.ca,
        host,
        "/",
        &["--resolve", &pin, "--max-time", "5"],
    )
}

#[test]
fn deny_closes_other_hosts_before_any_byte_and_audits_it() {
    if !privileged() {
        return;
    }
    let e = Env::with("acme.egress.bot", |w| {
        w.set_agent_config("allowed_hosts = [\"*.allowed.test\"]\n")
    });
    let echo = EchoServer::start(&e.w.node, &format!("{UPSTREAM_B}:443"), "B");
    let b443 = format!("{UPSTREAM_B}:443");

    // Default allow: a non-provider destination is relayed untouched.
    let v = probe(e.at(), &["tcp", &b443, "hello"]);
    assert!(
        v["reply"]
            .as_str()
            .unwrap_or("")
            .contains("\"server\":\"B\""),
        "allow must pass through: {v}"
    );
    assert_eq!(echo.accepted(), 1);
    assert_eq!(
        e.cli_json(&["status", "acme.egress.bot"])["other_hosts"],
        "allow"
    );

    // Deny on the parent, inherited by the tagged child.
    e.cli_ok(&["limit", "set", "acme.egress", "--other-hosts", "deny"]);
    assert_eq!(
        e.cli_json(&["status", "acme.egress.bot"])["other_hosts"],
        "deny"
    );
    let human = e.w.cli(&["status", "acme.egress.bot"]);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("other hosts: deny"),
        "{}",
        String::from_utf8_lossy(&human.stdout)
    );

    // Not TLS: closed, nothing reaches the destination.
    let v = probe(e.at(), &["tcp", &b443, "hello"]);
    assert_eq!(
        v["reply"], "",
        "a denied plain connection got an answer: {v}"
    );
    // TLS to another host: an alert after the ClientHello, nothing reaches the destination.
    let out = curl_other(&e, "example.test");
    assert_eq!(out.exit, Some(35), "curl must fail the handshake: {out:?}");
    assert!(
        out.stderr.contains("access denied"),
        "the client must see the access_denied alert: {}",
        out.stderr
    );
    assert_eq!(
        echo.accepted(),
        1,
        "a denied connection reached the destination"
    );

    // allowed_hosts (wildcard) still passes through: the echo server sees the ClientHello.
    let _ = curl_other(&e, "api.allowed.test");
    assert_eq!(echo.accepted(), 2, "an allowed host must be passed through");
    // Provider hosts are intercepted and metered as before.
    let (status, _, body) = e.curl("/v1/models", &[]);
    assert_eq!(status, 200, "{body}");

    let blocked: Vec<_> = e
        .audit("acme.egress.bot")
        .into_iter()
        .filter(|ev| ev["reason"] == "host_not_allowed")
        .collect();
    assert_eq!(blocked.len(), 2, "{blocked:#?}");
    assert!(blocked.iter().all(|ev| ev["decision"] == "blocked"));
    let hosts: Vec<&str> = blocked
        .iter()
        .filter_map(|ev| ev["host"].as_str())
        .collect();
    assert_eq!(hosts, [UPSTREAM_B, "example.test"], "{blocked:#?}");
    let metrics = e.w.metrics();
    assert!(
        metrics.contains(
            r#"spendguard_requests_total{agent="acme.egress.bot",provider="other_host",decision="blocked",reason="host_not_allowed"} 2"#
        ),
        "{metrics}"
    );

    // The child's own setting beats the inherited one.
    e.cli_ok(&["limit", "set", "acme.egress.bot", "--other-hosts", "allow"]);
    let v = probe(e.at(), &["tcp", &b443, "hello"]);
    assert!(
        v["reply"]
            .as_str()
            .unwrap_or("")
            .contains("\"server\":\"B\""),
        "{v}"
    );
    assert_eq!(echo.accepted(), 3);
    e.cli_ok(&[
        "limit",
        "set",
        "acme.egress.bot",
        "--other-hosts",
        "inherit",
    ]);
    assert_eq!(
        e.cli_json(&["status", "acme.egress.bot"])["other_hosts"],
        "deny"
    );
    assert_eq!(
        e.cli_json(&["limit", "show", "acme.egress"])["other_hosts"],
        "deny"
    );
}
