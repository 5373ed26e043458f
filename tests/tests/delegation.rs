//! Issue 17 item 1: a workload hands budgets down without credentials. `POST
//! /.well-known/spendguard/delegate` creates or narrows a budget below the caller's own, and
//! `x-spendguard-agent: CHILD` makes a request pay against it (every ancestor still pays); the
//! header never reaches the provider, and nothing a workload writes reaches outside its subtree
//! or widens a limit.

use std::process::Command;
use std::time::Duration;

use spendguard_tests::metered::{Metered as Env, HOSTS};
use spendguard_tests::sdk::{python, run_bounded};
use spendguard_tests::{place, privileged};

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

const DELEGATE: &str = "/.well-known/spendguard/delegate";

/// POSTs a delegation from the tagged cgroup: (status, JSON answer).
fn delegate(e: &Env, body: &str, route: &[&str]) -> (u16, serde_json::Value) {
    let mut extra = vec!["-X", "POST", "-H", "content-type: application/json"];
    for r in route {
        extra.push("-H");
        extra.push(r);
    }
    extra.extend(["-d", body]);
    let (code, _, out) = e.curl(DELEGATE, &extra);
    (code, first_json(&out))
}

/// What a refused delegation must leave unchanged: every budget's status and the list of agents.
fn snapshot(e: &Env, agents: &[&str]) -> Vec<serde_json::Value> {
    let mut v: Vec<serde_json::Value> = agents
        .iter()
        .map(|a| {
            let mut s = e.cli_json(&["status", a]);
            // Reset instants are computed at each call; they are not state.
            s["period_resets"] = serde_json::Value::Null;
            s
        })
        .collect();
    v.push(e.cli_json(&["agents"]));
    v
}

#[test]
fn an_orchestrator_hands_task_budgets_down_and_every_level_pays() {
    if !privileged() {
        return;
    }
    let e = Env::new("acme.research.bot");
    e.cli_ok(&["limit", "set", "acme.research.bot", "--total", "10"]);

    // A task budget, relative name; the answer is the child's status.
    let (code, j) = delegate(
        &e,
        r#"{"agent": "task-1", "total": 2, "per_call": 0.5}"#,
        &[],
    );
    assert_eq!(code, 200, "{j}");
    assert_eq!(j["agent"], "acme.research.bot.task-1", "{j}");
    assert_eq!(j["limits"]["total"], 2.0, "{j}");
    assert_eq!(j["limits"]["per_call"], 0.5, "{j}");
    assert_eq!(j["created_by"], "acme.research.bot", "{j}");
    // A sub-task below it, created through the task (routed there by the header).
    let (code, j) = delegate(
        &e,
        r#"{"agent": "sub-1", "total": 0.25}"#,
        &["x-spendguard-agent: task-1"],
    );
    assert_eq!(code, 200, "{j}");
    assert_eq!(j["agent"], "acme.research.bot.task-1.sub-1", "{j}");
    assert_eq!(j["created_by"], "acme.research.bot.task-1", "{j}");
    assert_eq!(
        e.fake.request_count(),
        0,
        "a delegation reached the provider"
    );

    // Calls through the task budgets: every level pays.
    let (code, _, _) = chat(&e, &["x-spendguard-agent: acme.research.bot.task-1.sub-1"]);
    assert_eq!(code, 200);
    let (code, _, _) = chat(&e, &["x-spendguard-agent: task-1"]);
    assert_eq!(code, 200);
    let sub = e.settled_spend("acme.research.bot.task-1.sub-1");
    let task = e.settled_spend("acme.research.bot.task-1");
    assert!(sub > 0 && task > sub, "sub {sub}, task {task}");
    assert_eq!(e.spent_total("acme.research.bot"), task);
    assert_eq!(e.spent_total("acme"), task);

    // What is left, as the workload reads it.
    let (code, _, body) = e.curl(
        "/.well-known/spendguard/budget",
        &["-H", "x-spendguard-agent: task-1"],
    );
    assert_eq!(code, 200, "{body}");
    let left = first_json(&body);
    assert_eq!(
        spendguard_tests::metered::usd_to_micro(&left["remaining"]["total"]),
        2_000_000 - task,
        "{left}"
    );
    assert_eq!(left["created_by"], "acme.research.bot", "{left}");

    // The operator sees who created what.
    let s = e.cli_json(&["status", "acme.research.bot.task-1.sub-1"]);
    assert_eq!(s["created_by"], "acme.research.bot.task-1", "{s}");
    assert_eq!(
        e.cli_json(&["status", "acme.research.bot"])["created_by"],
        serde_json::Value::Null
    );
    let agents = e.cli_json(&["agents"]);
    let delegated: Vec<_> = agents
        .as_array()
        .expect("array")
        .iter()
        .filter(|a| a["source"]["kind"] == "delegated")
        .map(|a| (a["agent"].as_str(), a["created_by"].as_str()))
        .collect();
    assert_eq!(
        delegated,
        [
            (Some("acme.research.bot.task-1"), Some("acme.research.bot")),
            (
                Some("acme.research.bot.task-1.sub-1"),
                Some("acme.research.bot.task-1")
            ),
        ]
    );
    let table = e.w.cli(&["agents"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("CREATED BY"), "{table}");

    // Each delegation is an audit event with the caller's cgroup and what was set.
    let events: Vec<_> = e
        .audit("acme.research.bot")
        .into_iter()
        .filter(|ev| ev["delegation"].is_object())
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    let first = &events[0];
    assert_eq!(first["agent"], "acme.research.bot.task-1", "{first}");
    assert_eq!(first["delegation"]["created_by"], "acme.research.bot");
    assert_eq!(first["delegation"]["created"], true);
    assert_eq!(first["delegation"]["set"]["total"], 2.0, "{first}");
    assert_eq!(
        first["cgroup"].as_str(),
        Some(e.agent_cg.path.to_str().expect("utf8")),
        "{first}"
    );

    // Narrowing an existing task budget is allowed.
    let (code, j) = delegate(&e, r#"{"agent": "task-1", "total": 1.5}"#, &[]);
    assert_eq!(code, 200, "{j}");
    assert_eq!(j["limits"]["total"], 1.5, "{j}");
    assert_eq!(j["created_by"], "acme.research.bot", "creator kept: {j}");
}

#[test]
fn a_workload_cannot_widen_anything_by_delegating() {
    if !privileged() {
        return;
    }
    let e = Env::new("acme.research.bot");
    e.cli_ok(&["limit", "set", "acme.research.bot", "--total", "10"]);
    e.cli_ok(&["limit", "set", "acme.research.other", "--daily", "5"]);
    e.cli_ok(&["limit", "set", "acme.research.botx", "--daily", "5"]);
    let (code, j) = delegate(&e, r#"{"agent": "task-1", "total": 2, "daily": 1}"#, &[]);
    assert_eq!(code, 200, "{j}");
    let watched = [
        "acme",
        "acme.research",
        "acme.research.other",
        "acme.research.botx",
        "acme.research.bot",
        "acme.research.bot.task-1",
    ];
    let before = snapshot(&e, &watched);

    let overlong = format!(r#"{{"agent": "{}", "total": 1}}"#, "a".repeat(60));
    for (body, status, code_field) in [
        // Sibling, parent, the prefix trick, outside the tree altogether.
        (
            r#"{"agent": "acme.research.other", "total": 1}"#,
            403,
            "AGENT_OUTSIDE_SUBTREE",
        ),
        (
            r#"{"agent": "acme.research", "total": 1}"#,
            403,
            "AGENT_OUTSIDE_SUBTREE",
        ),
        (
            r#"{"agent": "acme.research.botx", "total": 1}"#,
            403,
            "AGENT_OUTSIDE_SUBTREE",
        ),
        (
            r#"{"agent": "other.x", "total": 1}"#,
            403,
            "AGENT_OUTSIDE_SUBTREE",
        ),
        // Its own budget.
        (
            r#"{"agent": "acme.research.bot", "total": 100}"#,
            403,
            "AGENT_OUTSIDE_SUBTREE",
        ),
        // Names that are no names.
        (r#"{"agent": "..", "total": 1}"#, 400, "INVALID_AGENT_NAME"),
        (
            r#"{"agent": "../other", "total": 1}"#,
            400,
            "INVALID_AGENT_NAME",
        ),
        (
            r#"{"agent": "TASK-2", "total": 1}"#,
            400,
            "INVALID_AGENT_NAME",
        ),
        (
            r#"{"agent": "ACME.RESEARCH", "total": 1}"#,
            400,
            "INVALID_AGENT_NAME",
        ),
        (overlong.as_str(), 400, "INVALID_AGENT_NAME"),
        // More than the caller has left ($10 total), in any limit.
        (
            r#"{"agent": "task-2", "total": 11}"#,
            403,
            "LIMIT_ABOVE_REMAINING",
        ),
        (
            r#"{"agent": "task-2", "daily": 10.01}"#,
            403,
            "LIMIT_ABOVE_REMAINING",
        ),
        (
            r#"{"agent": "task-2", "per_call": 50}"#,
            403,
            "LIMIT_ABOVE_REMAINING",
        ),
        // Raising what a child has.
        (r#"{"agent": "task-1", "total": 3}"#, 403, "LIMIT_RAISE"),
        (
            r#"{"agent": "task-1", "daily": 1.5, "total": 1}"#,
            403,
            "LIMIT_RAISE",
        ),
        // Malformed bodies.
        (
            r#"{"agent": "task-2", "total": 1, "weekly": 100}"#,
            400,
            "INVALID_DELEGATION",
        ),
        (
            r#"{"agent": "task-2", "total": -1}"#,
            400,
            "INVALID_DELEGATION",
        ),
        (
            r#"{"agent": "task-2", "total": "lots"}"#,
            400,
            "INVALID_DELEGATION",
        ),
        (
            r#"{"agent": "task-2", "expires": "tomorrow"}"#,
            400,
            "INVALID_DELEGATION",
        ),
        (r#"{"total": 1}"#, 400, "INVALID_DELEGATION"),
        (r#"not json"#, 400, "INVALID_DELEGATION"),
    ] {
        let (code, j) = delegate(&e, body, &[]);
        assert_eq!(code, status, "{body}: {j}");
        assert_eq!(j["code"], code_field, "{body}: {j}");
        assert_eq!(j["agent"], "acme.research.bot", "{body}: {j}");
        assert!(j["error"]["message"].is_string(), "provider-shaped: {j}");
    }
    // Through a child: its parent (the caller itself) is outside the child's subtree.
    let (code, j) = delegate(
        &e,
        r#"{"agent": "acme.research.bot", "total": 1}"#,
        &["x-spendguard-agent: task-1"],
    );
    assert_eq!(code, 403, "{j}");
    assert_eq!(j["code"], "AGENT_OUTSIDE_SUBTREE", "{j}");
    // A grandchild above the child's own remaining ($2).
    let (code, j) = delegate(
        &e,
        r#"{"agent": "sub", "total": 3}"#,
        &["x-spendguard-agent: task-1"],
    );
    assert_eq!(code, 403, "{j}");
    assert_eq!(j["code"], "LIMIT_ABOVE_REMAINING", "{j}");
    // Not a POST.
    let (code, _, _) = e.curl(DELEGATE, &[]);
    assert_eq!(code, 405);

    assert_eq!(
        snapshot(&e, &watched),
        before,
        "a refused delegation changed something"
    );
    assert!(!e.cli_json(&["agents"]).to_string().contains("task-2"));
    assert_eq!(
        e.fake.request_count(),
        0,
        "a delegation reached the provider"
    );

    // A bare root name is relative: it lands inside the caller's subtree, never at the root.
    let (code, j) = delegate(&e, r#"{"agent": "acme", "total": 1}"#, &[]);
    assert_eq!(code, 200, "{j}");
    assert_eq!(j["agent"], "acme.research.bot.acme", "{j}");
    assert_eq!(
        e.cli_json(&["status", "acme"])["limits"]["total"],
        serde_json::Value::Null
    );
}

#[test]
fn a_task_budget_expires() {
    if !privileged() {
        return;
    }
    let e = Env::new("acme.research.bot");
    let at = chrono::Utc::now() + chrono::Duration::seconds(3);
    let body = format!(
        r#"{{"agent": "task-1", "total": 1, "expires": "{}"}}"#,
        at.to_rfc3339()
    );
    let (code, j) = delegate(&e, &body, &[]);
    assert_eq!(code, 200, "{j}");
    let (code, _, j) = chat(&e, &["x-spendguard-agent: task-1"]);
    assert_eq!(code, 200, "{j}");
    // An expiry may be brought forward, never pushed back.
    let later = format!(
        r#"{{"agent": "task-1", "expires": "{}"}}"#,
        (at + chrono::Duration::hours(1)).to_rfc3339()
    );
    let (code, j) = delegate(&e, &later, &[]);
    assert_eq!(
        (code, j["code"].as_str()),
        (403, Some("LIMIT_RAISE")),
        "{j}"
    );

    let wait = (at - chrono::Utc::now()).to_std().unwrap_or_default();
    std::thread::sleep(wait + Duration::from_millis(300));
    let (code, _, j) = chat(&e, &["x-spendguard-agent: task-1"]);
    assert_eq!(code, 402, "{j}");
    assert_eq!(j["reason"], "budget_expired", "{j}");
    assert_eq!(j["agent"], "acme.research.bot.task-1", "{j}");
    assert_eq!(e.fake.request_count(), 1, "the expired call was forwarded");
    assert_eq!(
        e.cli_json(&["status", "acme.research.bot.task-1"])["status"],
        "expired"
    );
    // The caller's own budget is untouched by its task's end.
    let (code, _, _) = chat(&e, &[]);
    assert_eq!(code, 200);
}

/// 1,000 delegations in one curl (one connection): the default bound (100) holds.
#[test]
fn a_workload_creates_at_most_delegate_max_children_budgets() {
    if !privileged() {
        return;
    }
    let e = Env::new("acme.research.bot");
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("curl.cfg");
    // Options after `next` start afresh: each transfer names its CA and addresses again.
    let mut per_transfer = format!("cacert = \"{}\"\n", e.ca.display());
    for (name, addr) in HOSTS {
        per_transfer.push_str(&format!("resolve = \"{name}:443:{addr}\"\n"));
    }
    let mut text = String::new();
    for i in 0..1000 {
        text.push_str(&per_transfer);
        text.push_str(&format!(
            "url = \"https://api.openai.com{DELEGATE}\"\n\
             header = \"content-type: application/json\"\n\
             data = \"{{\\\"agent\\\": \\\"bulk-{i}\\\", \\\"total\\\": 0.01}}\"\n\
             output = \"/dev/null\"\n\
             write-out = \"%{{http_code}}\\n\"\n"
        ));
        if i < 999 {
            text.push_str("next\n");
        }
    }
    std::fs::write(&cfg, text).expect("write curl config");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "120", "--cacert"])
        .arg(&e.ca);
    for (name, addr) in HOSTS {
        cmd.arg("--resolve").arg(format!("{name}:443:{addr}"));
    }
    cmd.arg("-K").arg(&cfg);
    cmd.env_clear().env("PATH", "/usr/bin:/bin");
    place(&mut cmd, e.at());
    let out = run_bounded(cmd, Duration::from_secs(150));
    let codes: Vec<String> = out.stdout_str().lines().map(str::to_string).collect();
    assert_eq!(codes.len(), 1000, "{}", out.stderr_str());
    let ok = codes.iter().filter(|c| *c == "200").count();
    let refused = codes.iter().filter(|c| *c == "403").count();
    assert_eq!((ok, refused), (100, 900), "{codes:?} {}", out.stderr_str());
    assert!(codes[..100].iter().all(|c| c == "200"), "{codes:?}");

    let delegated = e
        .cli_json(&["agents"])
        .as_array()
        .expect("array")
        .iter()
        .filter(|a| a["source"]["kind"] == "delegated")
        .count();
    assert_eq!(delegated, 100);
    assert!(!e.cli_json(&["agents"]).to_string().contains("bulk-100\""));
    // The refusal says what to do; narrowing an existing budget still works.
    let (code, j) = delegate(&e, r#"{"agent": "bulk-1000", "total": 0.01}"#, &[]);
    assert_eq!(
        (code, j["code"].as_str()),
        (403, Some("TOO_MANY_CHILDREN")),
        "{j}"
    );
    assert!(
        j["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("delegate_max_children")),
        "{j}"
    );
    let (code, j) = delegate(&e, r#"{"agent": "bulk-7", "total": 0.005}"#, &[]);
    assert_eq!(code, 200, "{j}");
}

/// The orchestrator of the README recipe, with the real `openai` SDK: it makes a task budget
/// (httpx POST), calls through it with `default_headers`, reads what is left, and meets the task's
/// limit as the SDK's own error.
#[test]
fn an_orchestrator_process_with_the_openai_sdk_makes_task_budgets_and_calls_through_them() {
    if !privileged() {
        return;
    }
    let e = Env::new("acme.orchestrator");
    e.cli_ok(&["limit", "set", "acme.orchestrator", "--daily", "5"]);
    let out = python(
        e.at(),
        HOSTS,
        &e.ca,
        r#"
try:
    import httpx
except ImportError:  # the SDK venv's openai depends on httpx's successor, httpx2
    import httpx2 as httpx
import openai
BASE = "https://api.openai.com/.well-known/spendguard"
res = {}
made = httpx.post(f"{BASE}/delegate", json={"agent": "task-42", "total": 2, "per_call": 0.01})
res["made"] = {"status": made.status_code, "body": made.json()}
too_much = httpx.post(f"{BASE}/delegate", json={"agent": "task-43", "total": 50})
res["too_much"] = {"status": too_much.status_code, "code": too_much.json().get("code")}
task = openai.OpenAI(api_key="sk-test", max_retries=0, default_headers={"x-spendguard-agent": "task-42"})
raw = task.chat.completions.with_raw_response.create(model="gpt-4o-mini",
    messages=[{"role": "user", "content": "hi"}], max_tokens=20,
    extra_headers={"x-fake-usage": "prompt=1000,completion=20"})
res["agent_header"] = raw.headers.get("x-spendguard-agent")
try:
    # Above the task's per-call limit: refused as the SDK's own error, never sent.
    task.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=4000)
    res["capped"] = "allowed?!"
except openai.APIStatusError as err:
    res["capped"] = {"status": err.status_code, "reason": err.response.json().get("reason")}
left = httpx.get(f"{BASE}/budget", headers={"x-spendguard-agent": "task-42"})
res["left"] = left.json()
emit(res)
"#,
    );
    assert_eq!(out["made"]["status"], 200, "{out}");
    assert_eq!(
        out["made"]["body"]["agent"], "acme.orchestrator.task-42",
        "{out}"
    );
    assert_eq!(
        out["made"]["body"]["created_by"], "acme.orchestrator",
        "{out}"
    );
    assert_eq!(out["too_much"]["status"], 403, "{out}");
    assert_eq!(out["too_much"]["code"], "LIMIT_ABOVE_REMAINING", "{out}");
    assert_eq!(out["agent_header"], "acme.orchestrator.task-42", "{out}");
    assert_eq!(out["capped"]["status"], 402, "{out}");
    assert_eq!(out["capped"]["reason"], "per_call_limit_exceeded", "{out}");
    assert_eq!(e.fake.request_count(), 1, "only the allowed call was sent");
    let task = e.settled_spend("acme.orchestrator.task-42");
    assert!(task > 0);
    assert_eq!(
        e.spent_total("acme.orchestrator"),
        task,
        "the orchestrator pays too"
    );
    assert_eq!(
        spendguard_tests::metered::usd_to_micro(&out["left"]["remaining"]["total"]),
        2_000_000 - task,
        "{out}"
    );
    assert!(
        e.fake.requests()[0].header("x-spendguard-agent").is_none(),
        "the routing header reached the provider"
    );
}
