#![expect(
    clippy::unwrap_used,
    reason = "a benchmark: any failure should abort loudly"
)]
#![expect(
    unsafe_code,
    reason = "a counting global allocator (GlobalAlloc is an unsafe trait); it only forwards to System"
)]
//! The ledger's share of one metered request with budget leases on (the agent's default): the
//! carve (the reserve on the request path, in memory) and carve + settle, the settle either through
//! the committer (its batch commit, off the request path) or on the caller's task (`settle_now`,
//! what the agent does), with 64 concurrent callers.
//! `cargo bench -p spendguard-ledger --bench carve`. Heap allocations per carve and per
//! carve + settle (all threads, committer included) are counted and printed first: deterministic,
//! where the times are not. Nothing is asserted.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spendguard_ledger::*;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

const CALLERS: usize = 64;

fn req() -> ReserveRequest {
    ReserveRequest {
        agent: "bench.transparent".parse().unwrap(),
        // The bench request's worst case at gpt-4o-mini prices, about.
        amount: MicroUsd(25),
        audit: AuditContext {
            cgroup: "/sys/fs/cgroup/bench".into(),
            host: "api.openai.com".into(),
            model: "gpt-4o-mini".into(),
            provider: "openai".into(),
            payment: None,
            delegation: None,
        },
    }
}

/// How each reservation of [`pairs`] ends.
#[derive(Clone, Copy)]
enum Settle {
    /// Left open (the carve alone).
    No,
    /// `Ledger::settle`: an operation queued to the committer thread, answered after its batch.
    Committer,
    /// `Ledger::settle_now`: on the caller's task, written by the committer's next batch (what
    /// the agent does for carves).
    CallerTask,
}

/// `n` reserve (+ settle) pairs spread over [`CALLERS`] tasks; the wall time they took.
async fn pairs(ledger: &Ledger, n: u64, settle: Settle) -> Duration {
    let start = Instant::now();
    let per = n.div_ceil(CALLERS as u64);
    let mut hs = Vec::with_capacity(CALLERS);
    for _ in 0..CALLERS {
        let l = ledger.clone();
        hs.push(tokio::spawn(async move {
            for _ in 0..per {
                let r = l.reserve(req()).await.unwrap();
                let half = MicroUsd(r.amount.0 / 2);
                match settle {
                    Settle::No => {}
                    Settle::Committer => drop(l.settle(r.id, half).await.unwrap()),
                    Settle::CallerTask => match l.settle_now(r.id, half) {
                        Some(s) => drop(s.unwrap()),
                        // Not a carve: the criterion "carve" run leaves its carves open, so the
                        // lease can run dry and a reservation is then exact (as in the agent).
                        None => drop(l.settle(r.id, half).await.unwrap()),
                    },
                }
            }
        }));
    }
    for h in hs {
        h.await.unwrap();
    }
    start.elapsed()
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ledger = rt.block_on(async {
        Ledger::open(
            dir.path().join("carve.redb"),
            LedgerOptions {
                // The agent's default lease (config.rs DEFAULT_LEASE_USD).
                lease_max: MicroUsd::from_usd(1),
                ..LedgerOptions::default()
            },
        )
        .unwrap()
    });
    rt.block_on(async {
        // Warm: the first reserve takes the lease (one durable commit).
        pairs(&ledger, 1000, Settle::Committer).await;
        for (name, settle) in [
            ("carve", Settle::No),
            ("carve + settle", Settle::Committer),
            ("carve + settle on the caller's task", Settle::CallerTask),
        ] {
            let n = 20_000;
            let start = counting_alloc::counted();
            let t = pairs(&ledger, n, settle).await;
            let (a, b) = counting_alloc::per(start, n);
            println!(
                "allocations {name}: {a:.1} per request, {b:.0} bytes per request ({CALLERS} callers; {:.0} requests/s in this pass)",
                n as f64 / t.as_secs_f64()
            );
            // (No release_leases here: it also stops leasing, as at a graceful stop.)
        }
    });
    let mut g = c.benchmark_group("ledger");
    g.throughput(Throughput::Elements(1));
    // One caller: the carve itself (in memory; a renewal's durable commit now and then).
    g.bench_function("carve", |b| {
        b.iter(|| rt.block_on(ledger.reserve(req())).unwrap())
    });
    // Settles wait for their batch (linger + commit): a rate with 64 callers, not a latency.
    g.sample_size(10);
    g.bench_function("carve + settle (64 callers)", |b| {
        b.iter_custom(|n| rt.block_on(pairs(&ledger, n, Settle::Committer)))
    });
    g.bench_function("carve + settle on the caller's task (64 callers)", |b| {
        b.iter_custom(|n| rt.block_on(pairs(&ledger, n, Settle::CallerTask)))
    });
    g.finish();
    drop(ledger);
}

criterion_group! {
    name = carve;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = benches
}
criterion_main!(carve);
