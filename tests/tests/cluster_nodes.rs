//! Cluster-wide budgets end to end: real agent processes ("nodes"), each in its own world (node
//! namespace, tagged cgroup, fake provider), lease from one real `redis-server` that runs in a store
//! namespace bridged to theirs (tests/src/store_net.rs). Requests take the real path: tagged cgroup
//! → eBPF redirect → TLS interception → pricing → slice carved → fake provider → settle → store.
//! `tests/cluster.rs` proves the same promises at the ledger level, with more timing control.
//!
//! Network safety: clients reach only `UPSTREAM_A` inside their node namespace; the agents reach
//! only the store's 10.77.9.0/24 bridge; every namespace is the test's own and removed on Drop.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use spendguard_tests::metered::{usd_to_micro, Metered};
use spendguard_tests::store_net::StoreNet;
use spendguard_tests::swarm::Swarm;
use spendguard_tests::{eventually, place, privileged, redis_server, Place, UPSTREAM_A};

const OPENAI: &str = "api.openai.com";
/// With the price [`set_exact_price`] sets, this request's worst case is exactly [`W`], and the
/// fake provider (asked for [`USAGE`]) reports a cost of exactly `W` too: every forwarded request
/// spends what it reserved, so "a budget that fits N" means N requests, whatever the timing.
const BODY: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":1000}"#;
const USAGE: &str = "prompt=20,completion=1000";
/// $10 per million output tokens × 1,000 tokens.
const W: u64 = 10_000;

/// The nodes, then the store they share (fields drop in order: agents stop before the store).
struct Cluster {
    nodes: Vec<Metered>,
    store: StoreNet,
}

fn node(store: &StoreNet, name: &str, agent: &str) -> Metered {
    Metered::with(agent, |w| {
        store.attach(w);
        w.set_agent_env("SPENDGUARD_CLUSTER_STORE", &store.url());
        w.set_agent_env("SPENDGUARD_NODE_NAME", name);
    })
}

/// `node-0` … tagged with `agents[i]`, all on one store.
fn cluster(agents: &[&str]) -> Cluster {
    let store = StoreNet::start();
    let nodes = agents
        .iter()
        .enumerate()
        .map(|(i, a)| node(&store, &format!("node-{i}"), a))
        .collect();
    Cluster { nodes, store }
}

/// gpt-4o-mini at $0 input, $10 output per million tokens, set on node 0; waits until every
/// node prices with it (`price set` is one setting across the cluster).
fn set_exact_price(c: &Cluster) {
    c.nodes[0].cli_ok(&[
        "price",
        "set",
        "gpt-4o-mini",
        "--input-per-mtok",
        "0",
        "--cached-input-per-mtok",
        "0",
        "--output-per-mtok",
        "10",
        "--max-output-tokens",
        "16384",
    ]);
    for (i, n) in c.nodes.iter().enumerate() {
        let ok = eventually(Duration::from_secs(5), || {
            n.cli_json(&["prices"])["models"]
                .as_array()
                .is_some_and(|m| {
                    m.iter().any(|r| {
                        r["model"] == "gpt-4o-mini"
                            && r["output_per_mtok"].as_f64() == Some(10.0)
                            && r["input_per_mtok"].as_f64() == Some(0.0)
                    })
                })
        });
        assert!(ok, "node-{i} does not price with the price set on node-0");
    }
}

/// `limit set AGENT ARGS` on node `on`, then waits until every node shows `kind` = `usd`.
fn set_limit(c: &Cluster, on: usize, agent: &str, kind: &str, usd: &str) {
    c.nodes[on].cli_ok(&["limit", "set", agent, &format!("--{kind}"), usd]);
    let want = (usd.parse::<f64>().expect("usd") * 1e6).round() as u64;
    for (i, n) in c.nodes.iter().enumerate() {
        let ok = eventually(Duration::from_secs(5), || {
            let s = n.cli_json(&["status", agent]);
            s["limits"][kind].is_number() && usd_to_micro(&s["limits"][kind]) == want
        });
        assert!(ok, "node-{i} does not enforce {agent} {kind} = {usd}");
    }
}

/// Store spend of `agent`'s subtree in total (µUSD), read from the store itself.
fn store_total(c: &Cluster, agent: &str) -> u64 {
    let root = agent.split('.').next().unwrap_or(agent);
    c.store
        .redis
        .hget_u64(&format!("sg:{{{root}}}:sp:{agent}"), "t")
}

/// Σ every node's slices of `agent`'s subtree, in the store.
fn store_out(c: &Cluster, agent: &str) -> u64 {
    let root = agent.split('.').next().unwrap_or(agent);
    c.store.redis.get_u64(&format!("sg:{{{root}}}:out:{agent}"))
}

/// What one node's own audit log says it charged (µUSD) for `agent` and below.
fn node_charged(n: &Metered, agent: &str) -> u64 {
    n.audit(agent)
        .iter()
        .filter(|e| e["decision"] == "allowed")
        .map(|e| usd_to_micro(&e["cost_usd"]))
        .sum()
}

fn burst(n: &Metered, count: usize) -> Swarm {
    let ca = n.ca.to_str().expect("utf8").to_string();
    let addr = format!("{UPSTREAM_A}:443");
    let c = count.to_string();
    Swarm::start(n.at(), &["burst", &addr, OPENAI, &ca, &c, BODY, USAGE])
}

/// Status codes of a burst's requests (0 for a request that got no HTTP answer).
fn statuses(done: &Value) -> Vec<u64> {
    done["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_u64().unwrap_or(0))
        .collect()
}

/// The item the issue names: three nodes, one real Redis, 600 requests at once against a budget
/// that fits 20 — at most 20 forwarded in all, at every level, and every node's spend adds up to
/// the store's.
#[test]
fn three_agent_processes_600_concurrent_requests_forward_only_what_fits() {
    if !privileged() || !redis_server::available() {
        return;
    }
    let c = cluster(&["acme.a.x", "acme.a.y", "acme.b"]);
    set_exact_price(&c);
    // 20 requests in the tree; 12 of them at most under acme.a (set on different nodes).
    set_limit(&c, 0, "acme", "total", "0.2");
    set_limit(&c, 1, "acme.a", "daily", "0.12");

    let mut swarms: Vec<Swarm> = c.nodes.iter().map(|n| burst(n, 200)).collect();
    for s in &mut swarms {
        s.event("ready", Duration::from_secs(60));
    }
    let done: Vec<Value> = swarms
        .iter_mut()
        .map(|s| s.finish(Duration::from_secs(90)))
        .collect();

    let forwarded: Vec<usize> = c.nodes.iter().map(|n| n.fake.request_count()).collect();
    let total: usize = forwarded.iter().sum();
    assert!(
        total <= 20,
        "forwarded {forwarded:?}: over a budget that fits 20"
    );
    assert!(
        forwarded[0] + forwarded[1] <= 12,
        "acme.a forwarded {forwarded:?}: over its 12"
    );
    for (i, d) in done.iter().enumerate() {
        let st = statuses(d);
        let ok = st.iter().filter(|s| **s == 200).count();
        assert_eq!(ok, forwarded[i], "node-{i}: clients saw {ok} answers");
        assert!(
            st.iter().all(|s| *s == 200 || *s == 402),
            "node-{i}: a request got neither an answer nor a 402: {d}"
        );
    }

    // Settled everywhere: each node's own charges add up to the store's spend, within the limit.
    let drained = eventually(Duration::from_secs(15), || {
        c.nodes
            .iter()
            .all(|n| usd_to_micro(&n.cli_json(&["status", "acme"])["reserved"]) == 0)
            && store_out(&c, "acme") == 0
    });
    assert!(drained, "slices were not handed back");
    let store = store_total(&c, "acme");
    let by_node: Vec<u64> = c.nodes.iter().map(|n| node_charged(n, "acme")).collect();
    assert_eq!(by_node.iter().sum::<u64>(), store, "nodes {by_node:?}");
    assert_eq!(store, total as u64 * W);
    assert!(store <= 200_000);
    assert!(store_total(&c, "acme.a") <= 120_000);
    // No node sat on budget another needed: the whole budget was spent.
    assert_eq!(
        total, 20,
        "forwarded {forwarded:?}: budget left while requests were refused"
    );
    // Every node reports the cluster-wide spend, not only its own.
    for (i, n) in c.nodes.iter().enumerate() {
        let s = n.cli_json(&["status", "acme"]);
        assert_eq!(usd_to_micro(&s["spent"]["total"]), store, "node-{i}: {s}");
    }
}

/// `GET /readyz` of the node's agent: (status, body).
fn readyz(n: &Metered) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-m",
        "5",
        "-w",
        "\n%{http_code}",
        "http://127.0.0.1:9464/readyz",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    place(
        &mut cmd,
        Place {
            netns: Some(&n.w.node),
            ..Default::default()
        },
    );
    let out = cmd.output().expect("curl readyz");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The store stops answering: the node spends what it holds leased, then answers 503 in the
/// provider's shape and forwards nothing; `/readyz` says why; service returns by itself.
#[test]
fn unreachable_store_spends_held_slices_then_503s_and_recovers_by_itself() {
    if !privileged() || !redis_server::available() {
        return;
    }
    let c = cluster(&["acme.bot"]);
    let n = &c.nodes[0];
    set_exact_price(&c);
    // A slice is at most 1/8 of what is left: $0.05 = 5 requests.
    set_limit(&c, 0, "acme", "daily", "0.4");
    let json = ["-H", "content-type: application/json", "-d", BODY];
    let usage = format!("x-fake-usage: {USAGE}");
    let mut args = json.to_vec();
    args.extend(["-H", &usage]);
    let (code, _, body) = n.curl("/v1/chat/completions", &args);
    assert_eq!(code, 200, "{body}");
    assert_eq!(readyz(n).0, 200);

    c.store.redis.freeze();
    let before = n.fake.request_count();
    let mut s = burst(n, 10);
    s.event("ready", Duration::from_secs(30));
    let done = s.finish(Duration::from_secs(60));
    let st = statuses(&done);
    let ok = st.iter().filter(|s| **s == 200).count();
    let unavailable = st.iter().filter(|s| **s == 503).count();
    assert!(
        (1..=4).contains(&ok),
        "spent {ok} requests from a $0.05 slice after one: {st:?}"
    );
    assert_eq!(ok + unavailable, 10, "{st:?}");
    assert_eq!(
        n.fake.request_count() - before,
        ok,
        "forwarded past its slice"
    );

    // The 503 is the provider's error shape and says what happened.
    let (code, _, body) = n.curl("/v1/chat/completions", &args);
    assert_eq!(code, 503, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON error");
    assert_eq!(v["error"]["code"], "spendguard_unavailable", "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("cluster budget store"), "{msg}");
    let (code, why) = readyz(n);
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("cluster store"), "{why}");
    assert_eq!(n.fake.request_count() - before, ok);

    c.store.redis.thaw();
    let t0 = Instant::now();
    let back = eventually(Duration::from_secs(15), || {
        n.curl("/v1/chat/completions", &args).0 == 200
    });
    assert!(back, "service did not return by itself after the store did");
    assert!(eventually(Duration::from_secs(5), || readyz(n).0 == 200));
    eprintln!("service back {:?} after the store", t0.elapsed());
    // What was spent while the store was away reached it.
    let spent = 1 + ok as u64 + 1;
    let reached = eventually(Duration::from_secs(10), || {
        store_total(&c, "acme") == spent * W
    });
    assert!(
        reached,
        "store has {} of {}",
        store_total(&c, "acme"),
        spent * W
    );
}

/// A node killed with slices: they stay counted (every node's `status` shows who holds them)
/// until it restarts and hands back what it did not spend, or `spendguard node forget` on another
/// node releases them, audited there; and a pause set on one node binds on another within 2 s.
#[test]
fn killed_node_slices_show_in_status_until_node_forget_and_pause_binds_everywhere() {
    if !privileged() || !redis_server::available() {
        return;
    }
    let c = cluster(&["acme.a", "acme.b"]);
    set_exact_price(&c);
    set_limit(&c, 0, "acme", "daily", "0.4");
    let json = ["-H", "content-type: application/json", "-d", BODY];
    let usage = format!("x-fake-usage: {USAGE}");
    let mut args = json.to_vec();
    args.extend(["-H", &usage]);
    let (code, _, body) = c.nodes[1].curl("/v1/chat/completions", &args);
    assert_eq!(code, 200, "{body}");
    // Its charge reached the store (a kill before that is the restart case of tests/cluster.rs).
    assert!(eventually(Duration::from_secs(5), || store_total(
        &c, "acme"
    ) == W));
    c.nodes[1].w.kill_agent();

    let held = |agent: &str| -> Value { c.nodes[0].cli_json(&["status", agent])["nodes"].clone() };
    let h = held("acme.b");
    let slice = usd_to_micro(&h["node-1"]);
    assert!(slice > 0, "node-1's slice is not shown: {h}");
    assert_eq!(store_out(&c, "acme"), slice);
    let remaining = usd_to_micro(&c.nodes[0].cli_json(&["status", "acme"])["remaining"]["daily"]);
    assert_eq!(
        remaining,
        400_000 - W - slice,
        "a dead node's slice must count"
    );

    // Restarted, the node hands back what nobody carved (its lease meter outlived the process):
    // the store charges the one request, nothing stays leased.
    c.nodes[1].w.start_agent();
    assert!(
        eventually(Duration::from_secs(5), || store_out(&c, "acme") == 0),
        "the restarted node still holds {} µUSD",
        store_out(&c, "acme")
    );
    assert_eq!(store_total(&c, "acme"), W, "the unused slice was charged");
    let remaining = usd_to_micro(&c.nodes[0].cli_json(&["status", "acme"])["remaining"]["daily"]);
    assert_eq!(remaining, 400_000 - W);

    // Killed again holding a slice, and this time it stays down: `node forget` on another node.
    let (code, _, body) = c.nodes[1].curl("/v1/chat/completions", &args);
    assert_eq!(code, 200, "{body}");
    assert!(eventually(Duration::from_secs(5), || store_total(
        &c, "acme"
    ) == 2 * W));
    c.nodes[1].w.kill_agent();
    let slice = usd_to_micro(&held("acme.b")["node-1"]);
    assert!(slice > 0);
    assert_eq!(store_out(&c, "acme"), slice);

    let out = c.nodes[0].w.cli(&["node", "forget", "node-1"]);
    assert!(
        out.status.success(),
        "node forget: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(store_out(&c, "acme"), 0);
    assert!(
        held("acme.b")["node-1"].is_null() || usd_to_micro(&held("acme.b")["node-1"]) == 0,
        "{}",
        held("acme.b")
    );
    let remaining = usd_to_micro(&c.nodes[0].cli_json(&["status", "acme"])["remaining"]["daily"]);
    assert_eq!(remaining, 400_000 - 2 * W);
    let forgot = c.nodes[0].audit("acme").iter().any(|e| {
        e["model"]
            .as_str()
            .is_some_and(|m| m.contains("node forget node-1"))
    });
    assert!(forgot, "node forget is not in node-0's audit log");
    // Forgetting this node itself is refused.
    let me = c.nodes[0].w.cli(&["node", "forget", "node-0"]);
    assert!(!me.status.success());

    // A pause set on node 0 binds on node 0's peer within 2 s: restart node 1 first.
    c.nodes[1].w.start_agent();
    let (code, _, body) = c.nodes[1].curl("/v1/chat/completions", &args);
    assert_eq!(code, 200, "{body}");
    c.nodes[0].cli_ok(&["pause", "acme"]);
    let t0 = Instant::now();
    let paused = eventually(Duration::from_secs(2), || {
        c.nodes[1].curl("/v1/chat/completions", &args).0 == 402
    });
    assert!(
        paused,
        "a pause on node-0 did not bind on node-1 within 2 s"
    );
    eprintln!("pause bound on the other node after {:?}", t0.elapsed());
    let (_, _, body) = c.nodes[1].curl("/v1/chat/completions", &args);
    assert!(body.contains("agent_paused"), "{body}");
}

/// A store that speaks only TLS, its certificate from a private CA (as managed Redis/Valkey
/// offerings and most in-cluster installs are): with `SPENDGUARD_CLUSTER_STORE_CA` the nodes lease
/// over `rediss://` and the budget is one; without the CA the certificate is refused, not ignored.
#[test]
fn rediss_store_with_a_private_ca_is_one_budget_and_an_unknown_ca_is_refused() {
    if !privileged() || !redis_server::available() {
        return;
    }
    let store = StoreNet::start_tls();
    let url = store.url();
    assert!(url.starts_with("rediss://"), "{}", url.replace(':', " "));
    let ca = store.redis.tls_ca().expect("a TLS store").to_path_buf();
    let nodes = ["acme.a", "acme.b"]
        .iter()
        .enumerate()
        .map(|(i, a)| {
            Metered::with(a, |w| {
                store.attach(w);
                w.set_agent_env("SPENDGUARD_CLUSTER_STORE", &url);
                w.set_agent_env("SPENDGUARD_CLUSTER_STORE_CA", ca.to_str().expect("utf8"));
                w.set_agent_env("SPENDGUARD_NODE_NAME", &format!("node-{i}"));
            })
        })
        .collect();
    let c = Cluster { nodes, store };

    // The store library itself, from a node's namespace: the private CA is trusted only when given.
    let (u1, pem) = (url.clone(), std::fs::read(&ca).expect("read CA"));
    let (without, with) = c.nodes[0].w.node.enter(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            use spendguard_ledger::cluster::RedisStore;
            let without = RedisStore::connect(&u1)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            let with = RedisStore::connect_with(&u1, Some(&pem))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            (without, with)
        })
    });
    let e = without.expect_err("a certificate from an unknown CA must be refused");
    assert!(
        e.to_lowercase().contains("certificate") || e.contains("UnknownIssuer"),
        "the error should say the certificate is not trusted: {e}"
    );
    assert!(
        !e.contains("sg-"),
        "the password must not show in errors: {e}"
    );
    with.expect("the private CA is trusted when given");

    // Two nodes, one budget that fits 5, over TLS.
    set_exact_price(&c);
    set_limit(&c, 0, "acme", "total", "0.05");
    let mut swarms: Vec<Swarm> = c.nodes.iter().map(|n| burst(n, 10)).collect();
    for s in &mut swarms {
        s.event("ready", Duration::from_secs(60));
    }
    for s in &mut swarms {
        s.finish(Duration::from_secs(60));
    }
    let forwarded: usize = c.nodes.iter().map(|n| n.fake.request_count()).sum();
    assert_eq!(forwarded, 5, "a budget that fits 5, over two nodes");
    let drained = eventually(Duration::from_secs(15), || {
        c.nodes
            .iter()
            .all(|n| usd_to_micro(&n.cli_json(&["status", "acme"])["reserved"]) == 0)
            && store_out(&c, "acme") == 0
    });
    assert!(drained, "slices were not handed back over TLS");
    assert_eq!(store_total(&c, "acme"), 5 * W);
    for (i, n) in c.nodes.iter().enumerate() {
        let s = n.cli_json(&["status", "acme"]);
        assert_eq!(usd_to_micro(&s["spent"]["total"]), 5 * W, "node-{i}: {s}");
    }
}

/// A task budget a workload makes on one node (issue 17: its limits, its expiry and who created
/// it are in the cluster store) binds on every node: another node's workload of the same agent
/// routes a call to it, and after `expires` that node refuses it `budget_expired` too.
#[test]
fn a_delegated_task_budget_and_its_expiry_bind_on_every_node() {
    if !privileged() || !redis_server::available() {
        return;
    }
    let c = cluster(&["acme.orch", "acme.orch"]);
    set_exact_price(&c);
    set_limit(&c, 0, "acme.orch", "total", "5");
    let at = chrono::Utc::now() + chrono::Duration::seconds(4);
    let body = format!(
        r#"{{"agent": "task-1", "total": 0.5, "expires": "{}"}}"#,
        at.to_rfc3339()
    );
    let (code, _, out) = c.nodes[0].curl(
        "/.well-known/spendguard/delegate",
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            &body,
        ],
    );
    assert_eq!(code, 200, "{out}");
    let seen = eventually(Duration::from_secs(5), || {
        let s = c.nodes[1].cli_json(&["status", "acme.orch.task-1"]);
        s["limits"]["total"] == 0.5
            && s["limits"]["expires_at"].is_string()
            && s["created_by"] == "acme.orch"
    });
    assert!(
        seen,
        "node-1 does not know the task budget: {}",
        c.nodes[1].cli_json(&["status", "acme.orch.task-1"])
    );
    let usage = format!("x-fake-usage: {USAGE}");
    let call = |n: &Metered| {
        n.curl(
            "/v1/chat/completions",
            &[
                "-H",
                "content-type: application/json",
                "-H",
                &usage,
                "-H",
                "x-spendguard-agent: task-1",
                "-d",
                BODY,
            ],
        )
    };
    let (code, _, out) = call(&c.nodes[1]);
    assert_eq!(code, 200, "{out}");
    let wait = (at - chrono::Utc::now()).to_std().unwrap_or_default();
    std::thread::sleep(wait + Duration::from_millis(300));
    for n in &c.nodes {
        let (code, _, out) = call(n);
        assert_eq!(code, 402, "{out}");
        assert!(out.contains("budget_expired"), "{out}");
    }
}
