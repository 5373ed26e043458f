//! Issue 17 item 1, the routing slice: `x-spendguard-agent: CHILD` makes a request pay against a
//! budget below the caller's own (every ancestor still pays), the header never reaches the
//! provider, and nothing a workload writes in it reaches outside its subtree.

use spendguard_tests::metered::Metered as Env;
use spendguard_tests::privileged;

const CHAT: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#;

fn chat(e: &Env, route: &[&str]) -> (u16, String, serde_json::Value) {
    let mut extra = vec![
        "-H",
        "content-type: application/json",
        "-H",
        "x-fake-usage: prompt=100,completion=5",
    ];
    for r in route {
        extra.push("-H");
        extra.push(r);
    }
    extra.extend(["-d", CHAT]);
    let (code, headers, body) = e.curl("/v1/chat/completions", &extra);
    (code, headers.to_ascii_lowercase(), first_json(&body))
}

/// The JSON document at the start of `body` (curl's stderr may follow it).
fn first_json(body: &str) -> serde_json::Value {
    serde_json::Deserializer::from_str(body)
        .into_iter::<serde_json::Value>()
        .next()
        .and_then(Result::ok)
        .unwrap_or_default()
}

#[test]
fn a_workload_routes_requests_to_budgets_below_its_own_and_nowhere_else() {
    if !privileged() {
        return;
    }
    let e = Env::new("acme.research.bot");
    e.cli_ok(&["limit", "set", "acme.research.bot.task-1", "--total", "1"]);
    e.cli_ok(&[
        "limit",
        "set",
        "acme.research.bot.tiny",
        "--per-call",
        "0.000001",
    ]);
    // Budgets that exist, outside the caller's subtree.
    e.cli_ok(&["limit", "set", "acme.other", "--daily", "5"]);
    e.cli_ok(&["limit", "set", "acme.research", "--daily", "50"]);

    // Relative and absolute names of a child: allowed, charged to the child and every ancestor.
    let (code, headers, _) = chat(&e, &["x-spendguard-agent: task-1"]);
    assert_eq!(code, 200, "{headers}");
    assert!(
        headers.contains("x-spendguard-agent: acme.research.bot.task-1"),
        "{headers}"
    );
    let (code, _, _) = chat(&e, &["x-spendguard-agent: acme.research.bot.task-1"]);
    assert_eq!(code, 200);
    let reqs = e.fake.requests();
    assert_eq!(reqs.len(), 2);
    assert!(
        reqs.iter()
            .all(|r| r.header("x-spendguard-agent").is_none()),
        "the routing header reached the provider"
    );
    let child = e.settled_spend("acme.research.bot.task-1");
    assert!(child > 0, "the child paid nothing");
    assert_eq!(
        e.spent_total("acme.research.bot"),
        child,
        "the caller pays too"
    );
    assert_eq!(e.spent_total("acme"), child, "and the root");

    // The child's own limit binds.
    let (code, _, j) = chat(&e, &["x-spendguard-agent: tiny"]);
    assert_eq!(code, 402, "{j}");
    assert_eq!(j["reason"], "per_call_limit_exceeded", "{j}");
    assert_eq!(j["agent"], "acme.research.bot.tiny", "{j}");

    // Widening attempts: sibling, parent, root, `..`, uppercase, overlong, unknown, twice.
    let overlong = format!("x-spendguard-agent: {}", "a".repeat(60));
    for (route, status, code_field) in [
        (
            vec!["x-spendguard-agent: acme.other"],
            403,
            "AGENT_OUTSIDE_SUBTREE",
        ),
        (
            vec!["x-spendguard-agent: acme.research"],
            403,
            "AGENT_OUTSIDE_SUBTREE",
        ),
        (
            vec!["x-spendguard-agent: acme.research.botx"],
            403,
            "AGENT_OUTSIDE_SUBTREE",
        ),
        // A bare root name is relative: it names acme.research.bot.acme, which does not exist.
        (vec!["x-spendguard-agent: acme"], 403, "AGENT_UNKNOWN"),
        (vec!["x-spendguard-agent: task-2"], 403, "AGENT_UNKNOWN"),
        (vec!["x-spendguard-agent: .."], 400, "INVALID_AGENT_NAME"),
        (
            vec!["x-spendguard-agent: ../other"],
            400,
            "INVALID_AGENT_NAME",
        ),
        (
            vec!["x-spendguard-agent: TASK-1"],
            400,
            "INVALID_AGENT_NAME",
        ),
        (
            vec!["x-spendguard-agent: ACME.OTHER"],
            400,
            "INVALID_AGENT_NAME",
        ),
        (vec![overlong.as_str()], 400, "INVALID_AGENT_NAME"),
        (
            vec![
                "x-spendguard-agent: task-1",
                "x-spendguard-agent: acme.other",
            ],
            400,
            "INVALID_AGENT_NAME",
        ),
    ] {
        let (code, _, j) = chat(&e, &route);
        assert_eq!(code, status, "{route:?}: {j}");
        assert_eq!(j["code"], code_field, "{route:?}: {j}");
        assert_eq!(j["agent"], "acme.research.bot", "{route:?}: {j}");
        assert!(j["error"]["message"].is_string(), "provider-shaped: {j}");
    }
    assert_eq!(
        e.fake.request_count(),
        2,
        "a refused request reached the provider"
    );
    assert_eq!(e.spent_total("acme.other"), 0);

    // The budget endpoint answers for the routed child.
    let (code, _, body) = e.curl(
        "/.well-known/spendguard/budget",
        &["-H", "x-spendguard-agent: task-1"],
    );
    assert_eq!(code, 200, "{body}");
    let j = first_json(&body);
    assert_eq!(j["agent"], "acme.research.bot.task-1", "{body}");
}
