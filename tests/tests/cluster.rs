//! Cluster-wide budgets against a real `redis-server` (started by each test on loopback, killed
//! on Drop): several node ledgers ("nodes", each its own redb) share one store.
//!
//! What these prove: zero overshoot across nodes at every level under concurrency; the store
//! killed (-9) and restarted under load loses nothing and lets nothing overshoot; an unreachable
//! store lets a node spend only its slices, then fail closed, and recover by itself; a crashed
//! node's slices stay counted until it restarts or is forgotten; a pause or a lowered limit on one
//! node binds on another within 2 s; a 3-primary Redis Cluster works the same.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spendguard_ledger::cluster::{
    slice_size, ClusterOptions, ClusterStore as _, GrantCall, PeriodStarts, RedisStore, SettleCall,
    SettleEntry,
};
use spendguard_ledger::{
    AgentName, AuditContext, AuditFilter, DenyReason, Ledger, LedgerOptions, LimitKind,
    LimitsPatch, MicroUsd, ReserveError, ReserveRequest,
};
use spendguard_tests::redis_server::{self, RedisCluster, RedisServer};

const TENTH: MicroUsd = MicroUsd(100_000);

struct Node {
    ledger: Ledger,
    name: String,
    dir: tempfile::TempDir,
}

fn name(s: &str) -> AgentName {
    s.parse().expect("agent name")
}

async fn open_at(url: &str, node: &str, dir: tempfile::TempDir) -> Node {
    let store = RedisStore::connect(url)
        .await
        .expect("connect to the store");
    let mut opts = ClusterOptions::new(Arc::new(store), node);
    opts.idle = Duration::from_millis(500);
    let ledger = Ledger::open(
        dir.path().join("ledger.redb"),
        LedgerOptions {
            cluster: Some(opts),
            lease_max: MicroUsd::from_usd(1),
            ..LedgerOptions::default()
        },
    )
    .expect("open the node ledger");
    let n = Node {
        ledger,
        name: node.to_string(),
        dir,
    };
    assert!(
        until(Duration::from_secs(10), || n
            .ledger
            .cluster_not_ready()
            .is_none())
        .await,
        "node {node} never became ready: {:?}",
        n.ledger.cluster_not_ready()
    );
    n
}

async fn open(url: &str, node: &str) -> Node {
    open_at(url, node, tempfile::tempdir().expect("temp dir")).await
}

async fn until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn req(agent: &AgentName, amount: MicroUsd) -> ReserveRequest {
    ReserveRequest {
        agent: agent.clone(),
        amount,
        audit: AuditContext::default(),
    }
}

async fn set(node: &Node, agent: &str, kind: LimitKind, usd_micros: u64) {
    node.ledger
        .set_limits(
            &name(agent),
            LimitsPatch::default().set(kind, Some(MicroUsd(usd_micros))),
        )
        .await
        .expect("limit set");
}

/// Waits until every node's mirror has `agent`'s `kind` limit at `value`.
async fn synced(nodes: &[&Node], agent: &str, kind: LimitKind, value: u64) {
    let a = name(agent);
    for n in nodes {
        assert!(
            until(Duration::from_secs(3), || n.ledger.limits(&a).get(kind)
                == Some(MicroUsd(value)))
            .await,
            "node {} did not see {agent}'s {kind:?} limit",
            n.name
        );
    }
}

/// Store spend of `agent`'s subtree in total (µUSD).
fn store_total(redis: &RedisServer, agent: &str) -> u64 {
    let root = agent.split('.').next().unwrap_or(agent);
    redis.hget_u64(&format!("sg:{{{root}}}:sp:{agent}"), "t")
}

fn store_daily(redis: &RedisServer, agent: &str) -> u64 {
    let root = agent.split('.').next().unwrap_or(agent);
    redis.hget_u64(&format!("sg:{{{root}}}:sp:{agent}"), "d")
}

fn store_out(redis: &RedisServer, agent: &str) -> u64 {
    let root = agent.split('.').next().unwrap_or(agent);
    redis.get_u64(&format!("sg:{{{root}}}:out:{agent}"))
}

async fn drained(nodes: &[&Node]) -> bool {
    until(Duration::from_secs(15), || {
        nodes.iter().all(|n| n.ledger.cluster_outbox_len() == 0)
    })
    .await
}

#[derive(Default)]
struct Tally {
    forwarded: AtomicU64,
    denied: AtomicU64,
    unavailable: AtomicU64,
    /// µUSD charged by forwarded requests, per agent index.
    charged: [AtomicU64; 2],
}

/// One request: reserve, "forward" (a short sleep), settle at the worst case.
async fn one(ledger: Ledger, agent: AgentName, which: usize, tally: Arc<Tally>, hold: Duration) {
    match ledger.reserve(req(&agent, TENTH)).await {
        Ok(r) => {
            tally.forwarded.fetch_add(1, Ordering::SeqCst);
            tally.charged[which].fetch_add(TENTH.0, Ordering::SeqCst);
            tokio::time::sleep(hold).await;
            ledger.settle(r.id, TENTH).await.expect("settle");
        }
        Err(ReserveError::Denied(d)) => {
            assert_ne!(d.reason, DenyReason::UnknownModel);
            tally.denied.fetch_add(1, Ordering::SeqCst);
        }
        Err(ReserveError::Ledger(_)) => {
            tally.unavailable.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Sets the hierarchy of the overshoot tests: `acme` total $2 (20 requests of $0.10) binds;
/// `acme.team` daily $2; its two agents $1.50 each (monthly / daily).
async fn hierarchy(nodes: &[&Node]) {
    set(nodes[0], "acme", LimitKind::Total, 2_000_000).await;
    set(nodes[0], "acme.team", LimitKind::Daily, 2_000_000).await;
    set(nodes[1], "acme.team.bot", LimitKind::Monthly, 1_500_000).await;
    set(nodes[2], "acme.team.other", LimitKind::Daily, 1_500_000).await;
    synced(nodes, "acme", LimitKind::Total, 2_000_000).await;
    synced(nodes, "acme.team.bot", LimitKind::Monthly, 1_500_000).await;
    synced(nodes, "acme.team.other", LimitKind::Daily, 1_500_000).await;
}

fn assert_within_limits(redis: &RedisServer) {
    assert!(
        store_total(redis, "acme") <= 2_000_000,
        "acme total overshot"
    );
    assert!(
        store_daily(redis, "acme.team") <= 2_000_000,
        "acme.team daily overshot"
    );
    assert!(
        store_total(redis, "acme.team.bot") <= 1_500_000,
        "bot overshot"
    );
    assert!(
        store_daily(redis, "acme.team.other") <= 1_500_000,
        "other overshot"
    );
}

/// Σ of what each node's own ledger charged (its local mirror counts only its own spend).
fn nodes_total(nodes: &[&Node], agent: &str) -> u64 {
    nodes
        .iter()
        .map(|n| n.ledger.status(&name(agent)).spent.total.0)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_600_concurrent_requests_never_overshoot_any_level() {
    if !redis_server::available() {
        return;
    }
    let redis = RedisServer::start();
    let (a, b, c) = (
        open(&redis.url(), "node-a").await,
        open(&redis.url(), "node-b").await,
        open(&redis.url(), "node-c").await,
    );
    let nodes = [&a, &b, &c];
    hierarchy(&nodes).await;

    let tally = Arc::new(Tally::default());
    let agents = [name("acme.team.bot"), name("acme.team.other")];
    let mut tasks = Vec::new();
    for i in 0..600usize {
        let ledger = nodes[i % 3].ledger.clone();
        let which = (i / 3) % 2;
        tasks.push(tokio::spawn(one(
            ledger,
            agents[which].clone(),
            which,
            tally.clone(),
            Duration::from_millis((i % 7) as u64 * 3),
        )));
    }
    for t in tasks {
        t.await.expect("request task");
    }
    let forwarded = tally.forwarded.load(Ordering::SeqCst);
    let denied = tally.denied.load(Ordering::SeqCst);
    let unavailable = tally.unavailable.load(Ordering::SeqCst);
    eprintln!("forwarded {forwarded}, denied {denied}, unavailable {unavailable}");
    assert!(
        forwarded <= 20,
        "{forwarded} forwarded against a budget of 20"
    );
    assert!(
        forwarded >= 15,
        "only {forwarded} of a budget of 20 forwarded"
    );
    assert_eq!(forwarded + denied + unavailable, 600);
    assert!(tally.charged[0].load(Ordering::SeqCst) <= 1_500_000);
    assert!(tally.charged[1].load(Ordering::SeqCst) <= 1_500_000);

    assert!(drained(&nodes).await, "outboxes did not drain");
    assert_within_limits(&redis);
    // The spend each node reports adds up to the store's, at every level.
    assert_eq!(store_total(&redis, "acme"), forwarded * TENTH.0);
    for agent in ["acme", "acme.team", "acme.team.bot", "acme.team.other"] {
        assert_eq!(
            nodes_total(&nodes, agent),
            store_total(&redis, agent),
            "{agent}"
        );
    }
    // Idle slices go back: nothing stays leased.
    assert!(
        until(Duration::from_secs(5), || store_out(&redis, "acme") == 0).await,
        "slices still leased: {}",
        store_out(&redis, "acme")
    );
    let st = a
        .ledger
        .cluster_status(&name("acme.team.bot"))
        .await
        .expect("clustered")
        .expect("status");
    assert_eq!(
        st.status.spent.total.0,
        store_total(&redis, "acme.team.bot")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_killed_and_restarted_under_load_loses_nothing_and_never_overshoots() {
    if !redis_server::available() {
        return;
    }
    let mut redis = RedisServer::start();
    let (a, b, c) = (
        open(&redis.url(), "node-a").await,
        open(&redis.url(), "node-b").await,
        open(&redis.url(), "node-c").await,
    );
    let nodes = [&a, &b, &c];
    hierarchy(&nodes).await;
    let tally = Arc::new(Tally::default());
    let agents = [name("acme.team.bot"), name("acme.team.other")];
    let mut tasks = Vec::new();
    for i in 0..300usize {
        let ledger = nodes[i % 3].ledger.clone();
        let which = i % 2;
        let agent = agents[which].clone();
        let tally = tally.clone();
        tasks.push(tokio::spawn(async move {
            // Spread over ~3 s so the kill lands in the middle of the traffic.
            tokio::time::sleep(Duration::from_millis((i as u64) * 10)).await;
            one(ledger, agent, which, tally, Duration::from_millis(5)).await;
        }));
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    redis.kill9();
    tokio::time::sleep(Duration::from_millis(400)).await;
    redis.restart();
    for t in tasks {
        t.await.expect("request task");
    }
    let forwarded = tally.forwarded.load(Ordering::SeqCst);
    eprintln!(
        "forwarded {forwarded}, denied {}, unavailable {}",
        tally.denied.load(Ordering::SeqCst),
        tally.unavailable.load(Ordering::SeqCst)
    );
    assert!(
        forwarded <= 20,
        "{forwarded} forwarded against a budget of 20"
    );
    assert!(
        drained(&nodes).await,
        "outboxes did not drain after the restart"
    );
    assert_within_limits(&redis);
    // No grant and no charge lost across the store's crash (appendfsync always).
    assert_eq!(store_total(&redis, "acme"), forwarded * TENTH.0);
    for agent in ["acme", "acme.team", "acme.team.bot", "acme.team.other"] {
        assert_eq!(
            nodes_total(&nodes, agent),
            store_total(&redis, agent),
            "{agent}"
        );
    }
    assert!(
        until(Duration::from_secs(5), || store_out(&redis, "acme") == 0).await,
        "slices still leased after everything went idle"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreachable_store_spends_only_held_slices_then_fails_closed_and_recovers() {
    if !redis_server::available() {
        return;
    }
    let redis = RedisServer::start();
    let a = open(&redis.url(), "node-a").await;
    let bot = name("acme.bot");
    set(&a, "acme", LimitKind::Daily, 10_000_000).await;
    // One request leases a slice (up to $1, at most 1/8 of $10).
    let r = a
        .ledger
        .reserve(req(&bot, MicroUsd(10_000)))
        .await
        .expect("first");
    a.ledger
        .settle(r.id, MicroUsd(10_000))
        .await
        .expect("settle");
    let held = a.ledger.lease_unused(&bot);
    assert!(held > MicroUsd::ZERO, "no slice held");

    redis.freeze();
    let mut spent = 0u64;
    let mut refused = 0;
    let t0 = Instant::now();
    for _ in 0..200 {
        match a.ledger.reserve(req(&bot, MicroUsd(10_000))).await {
            Ok(r) => {
                spent += 10_000;
                a.ledger
                    .settle(r.id, MicroUsd(10_000))
                    .await
                    .expect("settle");
            }
            Err(ReserveError::Ledger(e)) => {
                refused += 1;
                assert!(e.to_string().contains("cluster store"), "{e}");
                if refused >= 3 {
                    break;
                }
            }
            Err(ReserveError::Denied(d)) => panic!("denied while the store is down: {d:?}"),
        }
    }
    assert!(spent <= held.0, "spent {spent} with only {held} leased");
    assert!(
        spent >= held.0 - 10_000,
        "did not spend its slice: {spent} of {held}"
    );
    assert_eq!(refused, 3);
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "refusals were slow: {:?}",
        t0.elapsed()
    );
    assert!(
        until(Duration::from_secs(5), || a
            .ledger
            .cluster_not_ready()
            .is_some())
        .await,
        "/readyz would not say why"
    );

    redis.thaw();
    let mut back = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(r) = a.ledger.reserve(req(&bot, MicroUsd(10_000))).await {
            a.ledger
                .settle(r.id, MicroUsd(10_000))
                .await
                .expect("settle");
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the node did not come back by itself");
    assert!(drained(&[&a]).await);
    assert!(
        until(Duration::from_secs(3), || a
            .ledger
            .cluster_not_ready()
            .is_none())
        .await
    );
    // Everything spent while the store was away reached it.
    assert_eq!(
        store_total(&redis, "acme"),
        a.ledger.status(&name("acme")).spent.total.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crashed_node_slices_stay_counted_until_restart_or_forget() {
    if !redis_server::available() {
        return;
    }
    let redis = RedisServer::start();
    let b = open(&redis.url(), "node-b").await;
    set(&b, "acme", LimitKind::Daily, 8_000_000).await;
    let bot = name("acme.bot");

    // Node A leases a slice and "crashes" (dropped without handing anything back).
    let a = open(&redis.url(), "node-a").await;
    synced(&[&a], "acme", LimitKind::Daily, 8_000_000).await;
    let r = a
        .ledger
        .reserve(req(&bot, TENTH))
        .await
        .expect("reserve on A");
    a.ledger.settle(r.id, TENTH).await.expect("settle on A");
    // The settle reached the store (a crash before that is covered by the restart below).
    assert!(drained(&[&a]).await);
    // One request in flight at the crash: carved from the slice, never settled.
    let in_flight = a
        .ledger
        .reserve(req(&bot, TENTH))
        .await
        .expect("reserve on A");
    let unused = a.ledger.lease_unused(&bot);
    let held = MicroUsd(unused.0 + TENTH.0);
    assert!(unused > MicroUsd::ZERO);
    let _never_settled = in_flight;
    let Node { ledger, dir, .. } = a;
    drop(ledger);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Its slice stays counted: B's status shows it leased by node-a.
    let st = b
        .ledger
        .cluster_status(&bot)
        .await
        .expect("clustered")
        .expect("status");
    assert_eq!(
        st.nodes.get("node-a").copied(),
        Some(held),
        "{:?}",
        st.nodes
    );
    assert!(store_out(&redis, "acme") >= held.0);

    // Restart: A reconciles. The request in flight is charged at its worst case (it may have
    // been forwarded); the part of the slice nobody carved goes back (the lease meter survived
    // the process); nothing stays leased by it.
    let a = open_at(&redis.url(), "node-a", dir).await;
    assert!(drained(&[&a]).await);
    assert_eq!(store_out(&redis, "acme"), 0);
    assert_eq!(store_total(&redis, "acme"), TENTH.0 + TENTH.0);
    assert_eq!(
        a.ledger.status(&name("acme")).spent.total.0,
        TENTH.0 + TENTH.0
    );

    // A second crash, then `node forget` from B releases what A held (audited on B).
    let r = a
        .ledger
        .reserve(req(&bot, TENTH))
        .await
        .expect("reserve on A again");
    a.ledger.settle(r.id, TENTH).await.expect("settle");
    assert!(drained(&[&a]).await);
    let held = a.ledger.lease_unused(&bot);
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store_out(&redis, "acme"), held.0);
    let released = b.ledger.forget_node("node-a").await.expect("forget");
    assert_eq!(released, held);
    assert_eq!(store_out(&redis, "acme"), 0);
    let audit = b
        .ledger
        .audit_synced(AuditFilter::default())
        .await
        .expect("audit");
    assert!(
        audit.iter().any(|e| e.model.contains("node forget node-a")),
        "node forget is not in the audit log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_and_lowered_limit_on_one_node_bind_on_another_within_2s() {
    if !redis_server::available() {
        return;
    }
    let redis = RedisServer::start();
    let (a, b) = (
        open(&redis.url(), "node-a").await,
        open(&redis.url(), "node-b").await,
    );
    let bot = name("acme.bot");
    set(&a, "acme.bot", LimitKind::Daily, 50_000_000).await;
    synced(&[&b], "acme.bot", LimitKind::Daily, 50_000_000).await;
    let r = b
        .ledger
        .reserve(req(&bot, TENTH))
        .await
        .expect("B reserves");
    b.ledger.settle(r.id, TENTH).await.expect("settle");
    assert!(
        b.ledger.lease_unused(&bot) > MicroUsd::ZERO,
        "B holds a slice"
    );

    // Pause on A: B refuses within 2 s and hands its slice back.
    a.ledger.pause(&bot).await.expect("pause");
    let t0 = Instant::now();
    loop {
        match b.ledger.reserve(req(&bot, TENTH)).await {
            Err(ReserveError::Denied(d)) if d.reason == DenyReason::AgentPaused => break,
            Ok(r) => b
                .ledger
                .settle(r.id, TENTH)
                .await
                .map(drop)
                .expect("settle"),
            Err(e) => panic!("unexpected: {e}"),
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "B still forwards after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("pause on A bound on B after {:?}", t0.elapsed());
    assert!(
        until(Duration::from_secs(2), || store_out(&redis, "acme.bot")
            == 0)
        .await
    );

    // Resume, lease again on B, then lower the limit on A to just above what was spent.
    a.ledger.resume(&bot).await.expect("resume");
    let t0 = Instant::now();
    let r = loop {
        if let Ok(r) = b.ledger.reserve(req(&bot, TENTH)).await {
            break r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "resume not seen on B within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    b.ledger.settle(r.id, TENTH).await.expect("settle");
    assert!(drained(&[&a, &b]).await);
    let spent = store_daily(&redis, "acme.bot");
    // Until B hears of the change (within 2 s), it may still carve from the slice it holds.
    let held_b = b.ledger.lease_unused(&bot).0;
    let lowered = spent + TENTH.0 + TENTH.0 / 2;
    set(&a, "acme.bot", LimitKind::Daily, lowered).await;
    let t0 = Instant::now();
    let mut after = 0u64;
    loop {
        match b.ledger.reserve(req(&bot, TENTH)).await {
            Err(ReserveError::Denied(d)) => {
                assert_eq!(d.reason, DenyReason::DailyBudgetExhausted);
                break;
            }
            Ok(r) => {
                after += 1;
                b.ledger.settle(r.id, TENTH).await.expect("settle");
            }
            Err(e) => panic!("unexpected: {e}"),
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "lowered limit not enforced on B in 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "lowered limit on A bound on B after {:?} ({after} carved meanwhile)",
        t0.elapsed()
    );
    assert!(drained(&[&a, &b]).await);
    let now = store_daily(&redis, "acme.bot");
    assert!(
        now <= lowered.max(spent + held_b),
        "spent {now}, limit {lowered}, B held {held_b}"
    );
    // B handed back its slice above the lowered limit; once it refused, nothing more passes.
    assert!(
        until(Duration::from_secs(2), || store_out(&redis, "acme.bot")
            == 0)
        .await
    );
    for _ in 0..5 {
        match b.ledger.reserve(req(&bot, TENTH)).await {
            Err(ReserveError::Denied(_)) => {}
            other => panic!("passed the lowered limit: {other:?}"),
        }
    }
    assert!(store_daily(&redis, "acme.bot") <= lowered.max(spent + held_b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_of_three_primaries_never_overshoots() {
    if !redis_server::available() {
        return;
    }
    let cluster = RedisCluster::start();
    let (a, b, c) = (
        open(&cluster.url(), "node-a").await,
        open(&cluster.url(), "node-b").await,
        open(&cluster.url(), "node-c").await,
    );
    let nodes = [&a, &b, &c];
    set(&a, "acme", LimitKind::Total, 2_000_000).await;
    set(&a, "beta", LimitKind::Total, 1_000_000).await;
    synced(&nodes, "acme", LimitKind::Total, 2_000_000).await;
    synced(&nodes, "beta", LimitKind::Total, 1_000_000).await;
    let tally = Arc::new(Tally::default());
    let agents = [name("acme.team.bot"), name("beta.x")];
    let mut tasks = Vec::new();
    for i in 0..180usize {
        let which = i % 2;
        tasks.push(tokio::spawn(one(
            nodes[i % 3].ledger.clone(),
            agents[which].clone(),
            which,
            tally.clone(),
            Duration::from_millis(2),
        )));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let acme = tally.charged[0].load(Ordering::SeqCst);
    let beta = tally.charged[1].load(Ordering::SeqCst);
    eprintln!("acme {acme} beta {beta}");
    assert!(acme <= 2_000_000 && beta <= 1_000_000);
    assert!(acme >= 1_500_000 && beta >= 700_000, "budgets barely used");
    assert!(drained(&nodes).await);
    for (agent, spent) in [("acme", acme), ("beta", beta)] {
        let got = cluster
            .cli(&["HGET", &format!("sg:{{{agent}}}:sp:{agent}"), "t"])
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        assert_eq!(got, spent, "{agent}: store vs forwarded");
        assert_eq!(nodes_total(&nodes, agent), spent);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_setting_on_one_node_reaches_another_within_2s() {
    if !redis_server::available() {
        return;
    }
    let redis = RedisServer::start();
    let (a, b) = (
        open(&redis.url(), "node-a").await,
        open(&redis.url(), "node-b").await,
    );
    let price = serde_json::json!({"input_per_mtok": "1", "output_per_mtok": "2"});
    let t0 = Instant::now();
    a.ledger
        .put_shared_setting("price/my-model", price.clone())
        .await
        .expect("price set on A");
    assert!(
        until(Duration::from_secs(2), || b
            .ledger
            .setting("price/my-model")
            == Some(price.clone()))
        .await,
        "B did not see A's price within 2 s"
    );
    eprintln!("price set on A seen on B after {:?}", t0.elapsed());
}

/// `grant.lua` sizes slices exactly as [`slice_size`] (the rule `cargo xtask sim` runs), and a
/// grant retried with the same id gets the first answer, not a second slice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_script_sizes_slices_by_the_documented_rule() {
    if !redis_server::available() {
        return;
    }
    let redis = RedisServer::start();
    let a = open(&redis.url(), "node-a").await;
    set(&a, "acme", LimitKind::Daily, 10_000_000).await;
    let store = RedisStore::connect(&redis.url()).await.expect("connect");
    let bot = name("acme.bot");
    let starts = PeriodStarts::at(chrono::Utc::now());
    let call = |id: &str, node: &str, want: u64, min: u64| GrantCall {
        id: id.into(),
        node: node.into(),
        agent: bot.clone(),
        want: MicroUsd(want),
        min: MicroUsd(min),
        starts,
        divisor: 8,
    };
    let mut outstanding = 0u64;
    let mut holders = std::collections::BTreeSet::new();
    for (i, (node, want, min)) in [
        ("n1", 1_000_000, 10_000),
        ("n2", 1_000_000, 10_000),
        ("n3", 5_000_000, 2_000_000),
        ("n1", 1_000_000, 10_000),
        ("n4", 9_000_000, 9_000_000),
    ]
    .into_iter()
    .enumerate()
    {
        holders.insert(node);
        let avail = 10_000_000 - outstanding;
        let expect = slice_size(want, min, Some(avail), holders.len() as u64, 8);
        let id = format!("{node}:t:{i}");
        let got = store
            .grant(&call(&id, node, want, min))
            .await
            .expect("grant");
        assert_eq!(got.granted.0, expect, "grant {i} ({node}, {want}, {min})");
        if expect == 0 {
            assert!(got.refusal.is_some());
            holders.remove(node);
        }
        outstanding += got.granted.0;
        // The same id again: the first answer, nothing more held.
        let again = store
            .grant(&call(&id, node, want, min))
            .await
            .expect("retry");
        assert_eq!(again, got);
        assert_eq!(store_out(&redis, "acme"), outstanding);
    }
}

/// Settles are idempotent by a watermark per (node, agent): resending entries (a retry after a
/// lost answer, or a restart resending its outbox) never charges twice, a new ledger (epoch)
/// starts its own numbering, and the store keeps one field per pair, not a key per settle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settles_apply_each_outbox_entry_once() {
    if !redis_server::available() {
        return;
    }
    let redis = RedisServer::start();
    let a = open(&redis.url(), "node-a").await;
    set(&a, "acme", LimitKind::Daily, 10_000_000).await;
    let store = RedisStore::connect(&redis.url()).await.expect("connect");
    let bot = name("acme.bot");
    let starts = PeriodStarts::at(chrono::Utc::now());
    let g = store
        .grant(&GrantCall {
            id: "n1:g1".into(),
            node: "n1".into(),
            agent: bot.clone(),
            want: MicroUsd(1_000_000),
            min: MicroUsd(1_000),
            starts,
            divisor: 1,
        })
        .await
        .expect("grant");
    assert_eq!(g.granted, MicroUsd(1_000_000));
    let e = |seq: u64, charge: u64, release: u64| SettleEntry {
        seq,
        charge: MicroUsd(charge),
        release: MicroUsd(release),
    };
    let settle = |epoch: u64, entries: Vec<SettleEntry>| SettleCall {
        node: "n1".into(),
        epoch,
        agent: bot.clone(),
        entries,
        starts,
    };
    store
        .settle(&settle(7, vec![e(1, 100, 200), e(2, 50, 50)]))
        .await
        .expect("settle");
    assert_eq!(store_total(&redis, "acme"), 150);
    assert_eq!(store_out(&redis, "acme"), 1_000_000 - 250);
    // Resent with a newer entry: only entry 3 counts.
    store
        .settle(&settle(7, vec![e(1, 100, 200), e(2, 50, 50), e(3, 10, 10)]))
        .await
        .expect("settle again");
    assert_eq!(store_total(&redis, "acme"), 160);
    assert_eq!(store_out(&redis, "acme"), 1_000_000 - 260);
    // Nothing new at all: nothing changes.
    store
        .settle(&settle(7, vec![e(3, 10, 10)]))
        .await
        .expect("replay");
    assert_eq!(store_total(&redis, "acme"), 160);
    // A re-created ledger (another epoch) numbers from 1 again and is applied.
    store
        .settle(&settle(8, vec![e(1, 5, 5)]))
        .await
        .expect("new epoch");
    assert_eq!(store_total(&redis, "acme"), 165);
    let keys = redis.cli(&["KEYS", "sg:{acme}:*"]).unwrap_or_default();
    assert!(
        !keys.contains(":done:"),
        "a key per request would grow without bound: {keys}"
    );
}

/// Script calls (`EVALSHA`/`EVAL`: grants, settles, set_held) the store has served.
fn script_calls(redis: &RedisServer) -> u64 {
    redis.command_calls(&["evalsha", "eval"])
}

/// A busy node sends one settle per agent per gather (200 ms), not one per store round trip: 16
/// callers reserving and settling back to back for 2 s cost the store a handful of script calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_node_sends_one_settle_per_agent_per_gather() {
    if !redis_server::available() {
        return;
    }
    let redis = RedisServer::start();
    let n = open(&redis.url(), "node-busy").await;
    let a = name("busy.agent");
    set(&n, "busy", LimitKind::Total, 1_000_000_000).await;
    // The first request leases the slice every later one carves from.
    let r = n
        .ledger
        .reserve(req(&a, MicroUsd(10)))
        .await
        .expect("reserve");
    n.ledger.settle(r.id, MicroUsd(10)).await.expect("settle");
    assert!(
        drained(&[&n]).await,
        "the first settle never reached the store"
    );
    let before = script_calls(&redis);
    assert!(before >= 2, "the grant and the settle are script calls");

    let settled = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(2);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (ledger, a, settled) = (n.ledger.clone(), a.clone(), settled.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let r = ledger
                        .reserve(req(&a, MicroUsd(10)))
                        .await
                        .expect("reserve");
                    ledger.settle(r.id, MicroUsd(10)).await.expect("settle");
                    settled.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("caller");
    }
    assert!(drained(&[&n]).await, "the settles never reached the store");
    let settled = settled.load(Ordering::Relaxed);
    let calls = script_calls(&redis) - before;
    assert!(settled >= 200, "only {settled} requests in 2 s");
    // 2 s of load + the drain ≈ 2 / 0.2 + a few pushes (and at most an idle hand-back).
    assert!(
        calls <= 25,
        "{calls} store script calls for {settled} settles: settles are not gathered"
    );
    assert_eq!(
        store_total(&redis, "busy"),
        (settled + 1) * 10,
        "every settle counted once"
    );
}
