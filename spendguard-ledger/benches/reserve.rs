#![expect(
    clippy::unwrap_used,
    reason = "a benchmark: any failure should abort loudly"
)]
//! Reservations per second: one commit per reservation (baseline) against group commit.
//! `cargo bench --bench reserve`. Prints numbers only; nothing is asserted.

use std::time::{Duration, Instant};

use spendguard_ledger::*;

const AGENTS: [&str; 4] = ["acme.a", "acme.b", "acme.c.d", "beta"];

fn req(i: usize) -> ReserveRequest {
    ReserveRequest {
        agent: AGENTS[i % AGENTS.len()].parse().unwrap(),
        amount: MicroUsd(1_000 + (i as u64 % 100)),
        audit: AuditContext {
            cgroup: "/sys/fs/cgroup/kubepods/pod1234/ctr".into(),
            host: "api.openai.com".into(),
            model: "gpt-4o-mini".into(),
            provider: "openai".into(),
            payment: None,
            delegation: None,
        },
    }
}

async fn open(dir: &std::path::Path, file: &str, max_batch: usize) -> Ledger {
    let ledger = Ledger::open(
        dir.join(file),
        LedgerOptions {
            max_batch,
            ..LedgerOptions::default()
        },
    )
    .unwrap();
    // Limits at every level, so every decision does the full hierarchical check.
    for (agent, usd) in [
        ("acme", 1_000_000u64),
        ("acme.a", 500_000),
        ("beta", 1_000_000),
    ] {
        ledger
            .set_limits(
                &agent.parse().unwrap(),
                LimitsPatch::default()
                    .set(LimitKind::Daily, Some(MicroUsd::from_usd(usd)))
                    .set(LimitKind::Total, Some(MicroUsd::from_usd(usd * 10))),
            )
            .await
            .unwrap();
    }
    ledger
}

/// Rate and reserve latencies of one [`run`].
struct Pass {
    per_sec: f64,
    /// Each `reserve` call's time, sorted.
    reserve: Vec<Duration>,
}

impl Pass {
    fn pct(&self, p: f64) -> Duration {
        let i = ((self.reserve.len() as f64 - 1.0) * p).round() as usize;
        self.reserve.get(i).copied().unwrap_or_default()
    }

    /// `p50 … ms, p99 … ms` of the reserve calls.
    fn latency(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        format!(
            "reserve p50 {:.2} ms, p99 {:.2} ms",
            ms(self.pct(0.50)),
            ms(self.pct(0.99))
        )
    }
}

/// `tasks` concurrent callers reserve (and, with `settle`, settle) for `dur`.
async fn run(ledger: &Ledger, tasks: usize, dur: Duration, settle: bool) -> Pass {
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let l = ledger.clone();
        handles.push(tokio::spawn(async move {
            let mut times = Vec::new();
            while start.elapsed() < dur {
                let asked = Instant::now();
                let r = l.reserve(req(t + times.len())).await.unwrap();
                times.push(asked.elapsed());
                if settle {
                    l.settle(r.id, MicroUsd(r.amount.0 / 2)).await.unwrap();
                }
            }
            times
        }));
    }
    let mut reserve = Vec::new();
    for h in handles {
        reserve.extend(h.await.unwrap());
    }
    let per_sec = reserve.len() as f64 / start.elapsed().as_secs_f64();
    reserve.sort_unstable();
    Pass { per_sec, reserve }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("spendguard-ledger-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!("ledger files in {} (fsync per commit)", dir.display());
    let secs = Duration::from_secs(3);
    rt.block_on(async {
        let baseline = open(&dir, "single.redb", 1).await;
        let b1 = run(&baseline, 1, secs, false).await;
        println!(
            "(a) one commit per reservation, 1 caller:          {:>9.0} reservations/s  ({})",
            b1.per_sec,
            b1.latency()
        );
        let b64 = run(&baseline, 64, secs, false).await.per_sec;
        println!("(a) one commit per reservation, 64 callers:        {b64:>9.0} reservations/s");
        drop(baseline);

        let group = open(&dir, "group.redb", 4096).await;
        let mut best = 0f64;
        for tasks in [64, 256] {
            let g = run(&group, tasks, secs, false).await;
            best = best.max(g.per_sec);
            println!(
                "(b) group commit, {tasks:>3} concurrent tasks:           {:>9.0} reservations/s  ({:.1}x baseline; {})",
                g.per_sec,
                g.per_sec / b64,
                g.latency()
            );
        }
        for tasks in [64, 256] {
            let g = run(&group, tasks, secs, true).await;
            println!(
                "    group commit, {tasks:>3} tasks, reserve+settle:      {:>9.0} pairs/s  ({})",
                g.per_sec,
                g.latency()
            );
        }
        println!("ratio group/baseline (best, same concurrency-capable baseline): {:.1}x", best / b64);
    });
    let _ = std::fs::remove_dir_all(&dir);
}
