//! The cluster phase of `cargo xtask bench` (issue 12, item 4): what a shared budget store costs
//! and what it buys, measured in the same run.
//!
//! - **Cost**: two SpendGuard nodes lease from one real `redis-server` (`appendfsync always`, the
//!   persistence the contract asks for); a third node runs without a store. The same open-loop load
//!   (1,000 RPS, 32 connections) goes through node 0 and through the solo node, rounds rotated;
//!   the difference is what the store adds to the request path. Store commands are counted from
//!   `INFO commandstats` around each run: per second and per request, and at idle (the version
//!   polls every node makes).
//! - **Overshoot**: one budget, two nodes, [`BURST`] concurrent requests split between them, against
//!   LiteLLM run as two instances on the same Redis (its documented multi-instance set-up:
//!   `router_settings.redis_*`, deployment `max_budget`), the same fake provider and budget.
//!
//! Network safety: every node is a [`World`] of its own; the store runs in a namespace bridged to
//! theirs ([`StoreNet`]); clients reach only `UPSTREAM_A` inside their node namespace.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use serde_json::{json, Value};
use spendguard_tests::redis_server::command_table;
use spendguard_tests::store_net::StoreNet;
use spendguard_tests::{Cgroup, World, UPSTREAM_A};

use super::litellm::{self, RedisAt, BUDGET_USD, BURST};
use super::{fastfake, report, Bench, Guard, Mode, Plan};

/// The agent every node meters the latency runs under (a limit far away, so each request is
/// carved from a leased slice, not refused).
const AGENT: &str = "bench.cluster";
/// The agent of the overshoot run: one budget shared by both nodes.
const OVER: &str = "bench.cluster-over";

// Fields drop in order: the tagged cgroups, the fake provider, then the world (agent, namespaces).
struct Node {
    tagged: Cgroup,
    over: Cgroup,
    plain: Cgroup,
    _fake: Guard,
    _fake_cg: Cgroup,
    fake_ca: PathBuf,
    w: World,
}

impl Node {
    fn start(root: &std::path::Path, store: Option<(&StoreNet, &str)>) -> anyhow::Result<Node> {
        let w = World::new();
        let fake_cg = w.cgroup.child("fake");
        let (fake, fake_ca) = fastfake(root, &w, &fake_cg.path)?;
        w.set_agent_env(
            "SPENDGUARD_UPSTREAM_CA",
            fake_ca.to_str().unwrap_or_default(),
        );
        w.set_agent_env("RUST_LOG", "warn");
        if let Some((s, name)) = store {
            s.attach(&w);
            w.set_agent_env("SPENDGUARD_CLUSTER_STORE", &s.url());
            w.set_agent_env("SPENDGUARD_NODE_NAME", name);
        }
        w.start_agent();
        let tagged = w.cgroup.child("agent");
        w.tag(&tagged.path, AGENT);
        let over = w.cgroup.child("over");
        w.tag(&over.path, OVER);
        let plain = w.cgroup.child("plain");
        Ok(Node {
            tagged,
            over,
            plain,
            _fake: fake,
            _fake_cg: fake_cg,
            fake_ca,
            w,
        })
    }

    fn bench<'a>(&'a self, root: &std::path::Path) -> Bench<'a> {
        Bench {
            root: root.to_path_buf(),
            w: &self.w,
            cas: vec![self.fake_ca.clone(), self.w.state.path().join("ca.crt")],
        }
    }

    fn mode(&self, name: &'static str, cg: &Cgroup) -> Mode {
        Mode {
            name,
            cgroup: cg.path.clone(),
            args: vec!["--target".into(), format!("{UPSTREAM_A}:443")],
            cpu_pid: self.w.agent_pid(),
        }
    }

    fn cli(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.w.cli(&a);
        if !out.status.success() {
            bail!(
                "spendguard {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn cli_ok(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = self.w.cli(args);
        if !out.status.success() {
            bail!(
                "spendguard {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// Calls per command the store has served (`INFO commandstats`), without the bench's own `INFO`s.
fn store_table(store: &StoreNet) -> anyhow::Result<BTreeMap<String, u64>> {
    let info = store
        .redis
        .cli(&["INFO", "commandstats"])
        .ok_or_else(|| anyhow!("redis-cli INFO commandstats failed"))?;
    let mut t = command_table(&info);
    t.remove("info");
    Ok(t)
}

/// Every command's calls from `before` to `after`.
fn table_delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// The upper median (as `report::median_run` takes it), `None` for no samples.
fn median(xs: &[f64]) -> Option<f64> {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

fn usd(v: &Value) -> f64 {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0.0)
}

pub fn run(root: &std::path::Path, plan: &Plan, with_litellm: bool) -> anyhow::Result<Value> {
    let store = StoreNet::start();
    let nodes = [
        Node::start(root, Some((&store, "bench-node-0")))?,
        Node::start(root, Some((&store, "bench-node-1")))?,
    ];
    let solo = Node::start(root, None)?;
    // Far away, so the latency runs are carved from leased slices, never refused.
    nodes[0].cli_ok(&["limit", "set", AGENT, "--daily", "100000"])?;
    solo.cli_ok(&["limit", "set", AGENT, "--daily", "100000"])?;

    let idle = Duration::from_secs(3);
    let t0 = store_table(&store)?;
    std::thread::sleep(idle);
    let idle_by_command = table_delta(&t0, &store_table(&store)?);
    let idle_ops_per_s = idle_by_command.values().sum::<u64>() as f64 / idle.as_secs_f64();

    let lim = Duration::from_secs_f64(plan.rate_secs + 40.0);
    let args = [
        "--rate",
        "1000",
        "--conns",
        "32",
        "--duration",
        &plan.rate_secs.to_string(),
    ];
    let (b_store, b_solo) = (nodes[0].bench(root), solo.bench(root));
    let (m_store, m_solo) = (
        nodes[0].mode("with store", &nodes[0].tagged),
        solo.mode("without store", &solo.tagged),
    );
    for (b, m) in [(&b_store, &m_store), (&b_solo, &m_solo)] {
        b.load(m, &["--closed", "8", "--duration", "1"], lim)?;
    }
    let mut with: Vec<Value> = Vec::new();
    let mut without: Vec<Value> = Vec::new();
    let mut ops_per_req: Vec<f64> = Vec::new();
    let mut ops_per_s: Vec<f64> = Vec::new();
    // Over every with-store run: which commands the store served, per request.
    let mut by_command: BTreeMap<String, u64> = BTreeMap::new();
    let mut served = 0.0f64;
    for round in 0..plan.rounds {
        for i in 0..2 {
            let on_store = (i + round) % 2 == 0;
            let (b, m) = if on_store {
                (&b_store, &m_store)
            } else {
                (&b_solo, &m_solo)
            };
            eprintln!(
                "bench: cluster, {} at 1000 RPS (round {}/{})",
                m.name,
                round + 1,
                plan.rounds
            );
            let c0 = store_table(&store)?;
            let t0 = Instant::now();
            let v = b.load(m, &args, lim)?;
            let secs = t0.elapsed().as_secs_f64();
            let delta = table_delta(&c0, &store_table(&store)?);
            let calls = delta.values().sum::<u64>() as f64;
            if on_store {
                let ok = v["ok"].as_f64().unwrap_or(0.0);
                if ok > 0.0 {
                    ops_per_req.push(calls / ok);
                    served += ok;
                    for (k, n) in delta {
                        *by_command.entry(k).or_default() += n;
                    }
                }
                ops_per_s.push(calls / secs);
                with.push(v);
            } else {
                without.push(v);
            }
        }
    }
    let (with, without) = (report::median_run(&with), report::median_run(&without));
    let added = |f: &str| match (with[f].as_f64(), without[f].as_f64()) {
        (Some(a), Some(b)) => Some((a - b) / 1000.0),
        _ => None,
    };
    let latency = json!({
        "rate_rps": 1000,
        "rounds": plan.rounds,
        "with_store": {"p50_ms": with["p50_us"].as_f64().map(|x| x / 1000.0),
                       "p99_ms": with["p99_us"].as_f64().map(|x| x / 1000.0),
                       "ok": with["ok"], "errors": with["errors"]},
        "without_store": {"p50_ms": without["p50_us"].as_f64().map(|x| x / 1000.0),
                          "p99_ms": without["p99_us"].as_f64().map(|x| x / 1000.0),
                          "ok": without["ok"], "errors": without["errors"]},
        "store_adds_p50_ms": added("p50_us"),
        "store_adds_p99_ms": added("p99_us"),
        "store_ops_per_request": median(&ops_per_req),
        "store_ops_per_s_at_1000_rps": median(&ops_per_s),
        "store_ops_per_s_idle_two_nodes": idle_ops_per_s,
        "store_calls_per_request_by_command": by_command
            .iter()
            .map(|(k, n)| (k.clone(), json!(*n as f64 / served.max(1.0))))
            .collect::<serde_json::Map<String, Value>>(),
        "store_calls_per_s_idle_by_command": idle_by_command
            .iter()
            .map(|(k, n)| (k.clone(), json!(*n as f64 / idle.as_secs_f64())))
            .collect::<serde_json::Map<String, Value>>(),
    });

    let spendguard = overshoot_spendguard(root, &nodes)?;
    let per_req = spendguard["actual_cost_per_request_usd"]
        .as_f64()
        .unwrap_or(0.0);
    let lite = if with_litellm {
        overshoot_litellm(root, &store, &nodes[0], per_req)
            .unwrap_or_else(|e| json!({"error": format!("{e:#}")}))
    } else {
        json!({"error": "LiteLLM not run (--no-litellm or install failed)"})
    };
    Ok(json!({
        "store": "redis-server (Debian package), appendonly yes, appendfsync always, in its own network namespace",
        "latency": latency,
        "overshoot": {
            "budget_usd": BUDGET_USD,
            "concurrent_requests": BURST,
            "nodes": 2,
            "spendguard": spendguard,
            "litellm_two_instances": lite,
        },
    }))
}

/// One `sg-load --burst` per node at the same time; their JSON results.
fn bursts(jobs: Vec<(Bench<'_>, Mode)>, each: usize) -> anyhow::Result<Vec<Value>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(b, m)| {
                s.spawn(move || {
                    b.load(m, &["--burst", &each.to_string()], Duration::from_secs(180))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("burst thread panicked"))?)
            .collect()
    })
}

fn overshoot_spendguard(root: &std::path::Path, nodes: &[Node; 2]) -> anyhow::Result<Value> {
    nodes[0].cli_ok(&["limit", "set", OVER, "--total", &BUDGET_USD.to_string()])?;
    // The other node learns the limit through the store's version poll.
    let t0 = Instant::now();
    loop {
        let st = nodes[1].cli(&["status", OVER])?;
        if st["limits"]["total"].is_number() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("node 1 did not see the limit set on node 0 within 10 s: {st}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("bench: cluster overshoot, SpendGuard, 2 nodes, {BURST} concurrent requests");
    let jobs = nodes
        .iter()
        .map(|n| (n.bench(root), n.mode("transparent", &n.over)))
        .collect();
    let runs = bursts(jobs, BURST / 2)?;
    // Settled everywhere: nothing reserved on either node.
    let t0 = Instant::now();
    let mut st = nodes[0].cli(&["status", OVER])?;
    while t0.elapsed() < Duration::from_secs(15) {
        let r0 = usd(&st["reserved"]);
        let r1 = usd(&nodes[1].cli(&["status", OVER])?["reserved"]);
        if r0 == 0.0 && r1 == 0.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        st = nodes[0].cli(&["status", OVER])?;
    }
    let spent = usd(&st["spent"]["total"]);
    let forwarded: Vec<f64> = runs.iter().map(|v| usd(&v["ok"])).collect();
    let total: f64 = forwarded.iter().sum();
    Ok(json!({
        "forwarded_per_node": forwarded,
        "forwarded": total,
        "spent_usd_cluster_wide": spent,
        "over_limit_usd": (spent - BUDGET_USD).max(0.0),
        "actual_cost_per_request_usd": if total > 0.0 { spent / total } else { 0.0 },
        "statuses_per_node": runs.iter().map(|v| v["statuses"].clone()).collect::<Vec<_>>(),
    }))
}

fn overshoot_litellm(
    root: &std::path::Path,
    store: &StoreNet,
    node: &Node,
    per_req: f64,
) -> anyhow::Result<Value> {
    let url = store.url();
    let at = url
        .strip_prefix("redis://")
        .ok_or_else(|| anyhow!("store url {url}"))?;
    let (password, hostport) = match at.split_once('@') {
        Some((cred, hp)) => (cred.trim_start_matches(':').to_string(), hp),
        None => (String::new(), at),
    };
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("store url {url}"))?;
    let redis = RedisAt {
        host: host.to_string(),
        port: port.parse()?,
        password,
    };
    eprintln!(
        "bench: cluster overshoot, LiteLLM, 2 instances on one Redis, {BURST} concurrent requests"
    );
    // Both instances on node 0 (it reaches the store); each its own process and port.
    let g1 = litellm::start_on(
        root,
        &node.w,
        &node.plain.path,
        &node.fake_ca,
        4101,
        Some(BUDGET_USD),
        Some(&redis),
    )?;
    let g2 = litellm::start_on(
        root,
        &node.w,
        &node.plain.path,
        &node.fake_ca,
        4102,
        Some(BUDGET_USD),
        Some(&redis),
    )?;
    let jobs = [4101u16, 4102]
        .iter()
        .map(|p| (node.bench(root), litellm::mode(&node.plain.path, *p)))
        .collect();
    let runs = bursts(jobs, BURST / 2);
    drop((g1, g2));
    let runs = runs?;
    let forwarded: Vec<f64> = runs.iter().map(|v| usd(&v["ok"])).collect();
    let total: f64 = forwarded.iter().sum();
    Ok(json!({
        "forwarded_per_instance": forwarded,
        "forwarded": total,
        "spent_usd_at_same_per_request_cost": total * per_req,
        "over_limit_usd": (total * per_req - BUDGET_USD).max(0.0),
        "statuses_per_instance": runs.iter().map(|v| v["statuses"].clone()).collect::<Vec<_>>(),
        "first_errors": runs.iter().map(|v| v["first_error"].clone()).collect::<Vec<_>>(),
    }))
}
