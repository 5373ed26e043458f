//! Issue 15 end to end: operating SpendGuard — observe-only roll-out, the live view (`top`) and
//! spend reports, through the real transparent path.

use spendguard_tests::metered::{usd_to_micro, Metered as Env};
use spendguard_tests::privileged;

const CHAT: &str =
    r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"max_tokens":4000}"#;

#[test]
fn observe_mode_forwards_what_enforce_would_block_and_enforce_takes_over_on_the_next_request() {
    if !privileged() {
        return;
    }
    let e = Env::new("acme.rollout");
    e.cli_ok(&[
        "limit", "set", "acme", "--daily", "0.001", "--mode", "observe",
    ]);
    let s = e.cli_json(&["status", "acme.rollout"]);
    assert_eq!(s["mode"], "observe", "inherited from acme: {s}");

    let json = [
        "-H",
        "content-type: application/json",
        "-H",
        "x-fake-usage: prompt=100,completion=20",
        "-d",
        CHAT,
    ];
    let (code, headers, body) = e.curl("/v1/chat/completions", &json);
    assert_eq!(code, 200, "observed, not blocked: {body}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("x-spendguard-agent: acme.rollout"),
        "{headers}"
    );
    // An unknown model goes out too (unmetered: it has no price).
    let unknown =
        r#"{"model":"no-such-model-x","messages":[{"role":"user","content":"hi"}],"max_tokens":1}"#;
    let (code, _, body) = e.curl(
        "/v1/chat/completions",
        &["-H", "content-type: application/json", "-d", unknown],
    );
    assert_eq!(code, 200, "{body}");
    e.wait_provider_requests(2);

    // Metered and audited as would_block, with the reason.
    let spent = e.settled_spend("acme.rollout");
    assert!(spent > 0, "the observed request was charged");
    let audit = e.audit("acme");
    let got: Vec<(String, String)> = audit
        .iter()
        .map(|ev| {
            (
                ev["decision"].as_str().unwrap_or("").to_string(),
                ev["reason"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("would_block".into(), "daily_budget_exhausted".into()),
            ("would_block".into(), "unknown_model".into()),
        ],
        "{audit:?}"
    );
    assert!(audit[0]["cost_usd"].is_number(), "{:?}", audit[0]);
    let metrics = e.metrics();
    assert!(
        metrics.lines().any(|l| l.starts_with(
            r#"spendguard_requests_total{agent="acme.rollout",provider="openai",decision="would_block",reason="daily_budget_exhausted"} 1"#
        )),
        "{metrics}"
    );

    // Enforce: the very next request is refused and never reaches the provider.
    e.cli_ok(&["limit", "set", "acme", "--mode", "enforce"]);
    let before = e.fake.request_count();
    let (code, _, body) = e.curl("/v1/chat/completions", &json);
    assert_eq!(code, 402, "{body}");
    assert!(body.contains("daily_budget_exhausted"), "{body}");
    assert_eq!(e.fake.request_count(), before);
    let s = e.cli_json(&["status", "acme.rollout"]);
    assert_eq!(s["mode"], "enforce", "{s}");
}

#[test]
fn top_once_json_shows_the_rate_budget_and_blocks_of_the_tree() {
    if !privileged() {
        return;
    }
    let e = Env::new("acme.top.bot");
    e.cli_ok(&[
        "limit",
        "set",
        "acme",
        "--daily",
        "10",
        "--tz",
        "Europe/Berlin",
    ]);
    e.cli_ok(&["limit", "set", "acme.top.bot", "--per-call", "0.01"]);
    let json = [
        "-H",
        "content-type: application/json",
        "-H",
        "x-fake-usage: prompt=1000,completion=200",
        "-d",
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":100}"#,
    ];
    for _ in 0..2 {
        let (code, _, body) = e.curl("/v1/chat/completions", &json);
        assert_eq!(code, 200, "{body}");
    }
    let (code, _, body) = e.curl(
        "/v1/chat/completions",
        &["-H", "content-type: application/json", "-d", CHAT],
    );
    assert_eq!(code, 402, "over the per-call limit: {body}");
    let spent = e.settled_spend("acme.top.bot");
    assert!(spent > 0);

    let snap = e.cli_json(&["top", "--once"]);
    assert_eq!(snap["window_secs"], 60, "{snap}");
    let rows = snap["agents"].as_array().expect("agents");
    let names: Vec<&str> = rows.iter().filter_map(|r| r["agent"].as_str()).collect();
    assert_eq!(names, ["acme", "acme.top", "acme.top.bot"], "{snap}");
    let bot = &rows[2];
    assert_eq!(bot["depth"], 2);
    assert_eq!(bot["requests_1m"], 3, "{bot}");
    assert_eq!(bot["blocked_1m"], 1, "{bot}");
    assert_eq!(bot["mode"], "enforce");
    assert_eq!(bot["tz"], "Europe/Berlin", "inherited from acme");
    assert_eq!(bot["binding_period"], "daily", "{bot}");
    assert_eq!(usd_to_micro(&bot["rate_per_min"]), spent, "{bot}");
    assert_eq!(usd_to_micro(&bot["spent"]), spent, "{bot}");
    assert_eq!(usd_to_micro(&bot["remaining"]), 10_000_000 - spent, "{bot}");
    assert!(
        bot["resets"].as_str().unwrap_or("").ends_with(":00+01:00")
            || bot["resets"].as_str().unwrap_or("").ends_with(":00+02:00"),
        "Berlin's offset: {bot}"
    );
    // The root counts its subtree.
    assert_eq!(rows[0]["requests_1m"], 3);
    assert_eq!(usd_to_micro(&rows[0]["rate_per_min"]), spent);

    // The plain frame is the same tree, indented.
    let out = e.w.cli(&["top", "--once"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("spendguard top — "), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("    bot ") && l.contains("daily")),
        "{text}"
    );
}
