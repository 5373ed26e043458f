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
    // The model label is the price table's name (the live table publishes its names to the
    // metrics); the budget gauges carry what was spent beside what is left. The settle task
    // records them just after the ledger counts the charge: poll.
    let series = [
        r#"spendguard_spend_usd_total{agent="acme.rollout",model="gpt-4o"} "#,
        r#"spendguard_spent_usd{agent="acme.rollout",period="daily"} "#,
        r#"spendguard_remaining_budget_usd{agent="acme.rollout",period="daily"} "#,
    ];
    let mut metrics = String::new();
    let all_there = spendguard_tests::eventually(std::time::Duration::from_secs(5), || {
        metrics = e.metrics();
        series
            .iter()
            .all(|s| metrics.lines().any(|l| l.starts_with(s)))
    });
    assert!(all_there, "not all of {series:?} in:\n{metrics}");
    assert!(!metrics.contains("no-such-model-x"), "{metrics}");

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

#[test]
fn report_totals_match_status_and_the_chart_names_every_agent() {
    if !privileged() {
        return;
    }
    let e = Env::new("acme.rep.a");
    let other = e.w.cgroup.child("other");
    e.w.tag(&other.path, "acme.rep.b");
    let json = |usage: &str| {
        [
            "-H".to_string(),
            "content-type: application/json".into(),
            "-H".into(),
            format!("x-fake-usage: {usage}"),
            "-d".into(),
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":100}"#.into(),
        ]
    };
    for usage in ["prompt=1000,completion=200", "prompt=3000,completion=50"] {
        let args = json(usage);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, body) = e.curl("/v1/chat/completions", &args);
        assert_eq!(code, 200, "{body}");
    }
    let args = json("prompt=500,completion=500");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let b_at = spendguard_tests::Place {
        cgroup: Some(&other.path),
        netns: Some(&e.w.node),
        uid: None,
    };
    let (code, _, body) =
        spendguard_tests::metered::curl_in(b_at, &e.ca, "/v1/chat/completions", &args);
    assert_eq!(code, 200, "{body}");
    let a = e.settled_spend("acme.rep.a");
    let b = e.settled_spend("acme.rep.b");
    assert!(a > 0 && b > 0);

    let r = e.cli_json(&["report", "--agent", "acme", "--by", "agent"]);
    assert_eq!(r["by"], "agent", "{r}");
    let groups = r["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 2, "{r}");
    assert_eq!(groups[0]["key"], "acme.rep.a");
    assert_eq!(usd_to_micro(&groups[0]["spend"]), a, "{r}");
    assert_eq!(groups[0]["requests"], 2);
    assert_eq!(usd_to_micro(&groups[1]["spend"]), b, "{r}");
    // Totals match status, for the tree and for today.
    assert_eq!(
        usd_to_micro(&r["total"]["spend"]),
        e.spent_total("acme"),
        "{r}"
    );
    let today = e.cli_json(&["status", "acme"]);
    let by_day = e.cli_json(&["report", "--agent", "acme", "--by", "day"]);
    assert_eq!(
        by_day["groups"].as_array().map(Vec::len),
        Some(1),
        "{by_day}"
    );
    assert_eq!(
        usd_to_micro(&by_day["groups"][0]["spend"]),
        usd_to_micro(&today["spent"]["daily"])
    );
    // Nothing before --since / after --until.
    let none = e.cli_json(&["report", "--since", "2099-01-01T00:00:00Z"]);
    assert_eq!(none["total"]["requests"], 0, "{none}");

    let out = e.w.cli(&["report", "--by", "model", "--format", "csv"]);
    assert!(out.status.success());
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(
        csv.starts_with("model,requests,blocked,would_block,spend_usd\n"),
        "{csv}"
    );
    assert!(
        csv.lines().any(|l| l.starts_with("gpt-4o-mini,3,0,0,")),
        "{csv}"
    );

    let chart = e.w.state.path().join("spend.svg");
    let out =
        e.w.cli(&["report", "--chart", chart.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = std::fs::read_to_string(&chart).expect("chart written");
    assert!(
        svg.contains("acme.rep.a") && svg.contains("acme.rep.b"),
        "{svg}"
    );
    if let Ok(keep) = std::env::var("SPENDGUARD_KEEP_CHART") {
        let _ = std::fs::copy(&chart, keep);
    }
}
