use crate::common::*;
use spendguard_ledger::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_ten_of_200_one_dollar_reservations_fit_ten_dollars() {
    exactly_ten_of_200(MicroUsd::ZERO).await;
}

/// Budget leases change where a reservation is decided (in memory, from a slice), not which.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_ten_of_200_with_budget_leases() {
    exactly_ten_of_200(usd(2)).await;
}

async fn exactly_ten_of_200(lease_max: MicroUsd) {
    let mut fx = Fixture::at("2026-05-03T12:00:00Z");
    fx.options.lease_max = lease_max;
    let ledger = fx.open();
    set(&ledger, "acme", LimitKind::Daily, Some(usd(10))).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let l = ledger.clone();
        // Spread over several children: the ancestor's limit must still hold exactly.
        let agent = name(&format!("acme.worker{}", i % 7));
        tasks.push(tokio::spawn(
            async move { l.reserve(req(&agent, usd(1))).await },
        ));
    }
    let mut ok = Vec::new();
    let mut denials = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => ok.push(r),
            Err(ReserveError::Denied(d)) => {
                assert_eq!(d.reason, DenyReason::DailyBudgetExhausted);
                assert_eq!(d.agent, name("acme"));
                assert_eq!(d.remaining, MicroUsd::ZERO);
                denials += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok.len(), 10);
    assert_eq!(denials, 190);
    let s = ledger.status(&name("acme"));
    assert_eq!(s.reserved, usd(10));
    assert_eq!(s.status, AgentState::Exhausted);
    let mut ids: Vec<u64> = ok.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 10, "reservation ids are unique");

    // Settling below the reservation frees budget for exactly that much.
    for r in &ok {
        ledger.settle(r.id, cents(50)).await.unwrap();
    }
    let s = ledger.status(&name("acme"));
    assert_eq!(s.spent.daily, usd(5));
    assert_eq!(s.reserved, MicroUsd::ZERO);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let l = ledger.clone();
        tasks.push(tokio::spawn(async move {
            l.reserve(req(&name("acme.late"), usd(1))).await.is_ok()
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += usize::from(t.await.unwrap());
    }
    assert_eq!(n, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reserve_and_settle_never_overshoot() {
    reserve_and_settle_never_overshoot(MicroUsd::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reserve_and_settle_never_overshoot_with_budget_leases() {
    reserve_and_settle_never_overshoot(usd(1)).await;
}

async fn reserve_and_settle_never_overshoot(lease_max: MicroUsd) {
    let mut fx = Fixture::at("2026-05-03T12:00:00Z");
    fx.options.lease_max = lease_max;
    let ledger = fx.open();
    set(&ledger, "acme", LimitKind::Total, Some(usd(30))).await;
    set(&ledger, "acme.a", LimitKind::Total, Some(usd(12))).await;
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let l = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let agent = name(if i % 2 == 0 { "acme.a" } else { "acme.b" });
            let mut spent = 0u64;
            for j in 0..20u64 {
                let amount = MicroUsd(((i * 7 + j * 13) % 90 + 10) * 10_000);
                if let Ok(r) = l.reserve(req(&agent, amount)).await {
                    let actual = MicroUsd(amount.0 * ((i + j) % 4) / 3);
                    let actual = actual.min(amount);
                    l.settle(r.id, actual).await.unwrap();
                    spent += actual.0;
                }
                let s = l.status(&name("acme"));
                assert!(s.spent.total.0 + s.reserved.0 <= usd(30).0);
            }
            spent
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let s = ledger.status(&name("acme"));
    assert_eq!(s.spent.total, MicroUsd(total));
    assert!(s.spent.total <= usd(30));
    assert!(ledger.status(&name("acme.a")).spent.total <= usd(12));
    assert_eq!(s.reserved, MicroUsd::ZERO);
}

/// The point of leases: after the first request, reservations are decided without a commit, and
/// a crash of the process charges the open requests at their worst case and hands the unused
/// slice back (the lease meter outlives the process); a crash of the machine charges the slice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_reservations_survive_a_crash_as_charges() {
    leased_crash(false).await;
    leased_crash(true).await;
}

async fn leased_crash(machine: bool) {
    let mut fx = Fixture::at("2026-05-03T12:00:00Z");
    fx.options.lease_max = usd(1);
    let ledger = fx.open();
    set(&ledger, "acme", LimitKind::Daily, Some(usd(100))).await;
    let agent = name("acme.bot");
    let first = ledger.reserve(req(&agent, cents(10))).await.unwrap();
    ledger.flush().await.unwrap();
    assert_eq!(
        ledger.lease_unused(&agent),
        usd(1),
        "first request leased a slice"
    );
    let mut open = vec![first];
    for _ in 0..5 {
        open.push(ledger.reserve(req(&agent, cents(10))).await.unwrap());
    }
    let s = ledger.status(&agent);
    assert_eq!(
        s.reserved,
        cents(60),
        "people see open requests, not the slice"
    );
    assert_eq!(s.remaining.daily, Some(MicroUsd(usd(100).0 - cents(60).0)));
    ledger.settle(open[1].id, cents(3)).await.unwrap();
    ledger.flush().await.unwrap();
    let unused = ledger.lease_unused(&agent);
    assert!(unused > MicroUsd::ZERO);
    drop(ledger);
    if machine {
        lose_meter(&fx);
    }
    let ledger = fx.open();
    let s = ledger.status(&agent);
    // 5 open requests at their worst case, the settled one at its cost (and the unused slice
    // when the machine, and with it the meter, went down).
    let lost = if machine { unused.0 } else { 0 };
    assert_eq!(s.spent.daily, MicroUsd(cents(50).0 + cents(3).0 + lost));
    assert_eq!(s.reserved, MicroUsd::ZERO);
    assert_eq!(
        s.remaining.daily,
        Some(MicroUsd(usd(100).0 - s.spent.daily.0))
    );
    let audit = ledger.audit(&AuditFilter::default()).unwrap();
    assert!(
        audit.iter().any(|e| e.recovered
            && e.model == "(budget lease)"
            && e.final_cost == Some(MicroUsd(cents(40).0 + lost))),
        "the recovered slice is in the audit log, charged its carves (4 open; the first was exact): {audit:#?}"
    );
}

/// A graceful stop hands the unused slices back: the next start charges only what is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_leases_leave_only_open_requests_to_recover() {
    let mut fx = Fixture::at("2026-05-03T12:00:00Z");
    fx.options.lease_max = usd(1);
    let ledger = fx.open();
    let agent = name("acme.bot");
    let a = ledger.reserve(req(&agent, cents(10))).await.unwrap();
    let b = ledger.reserve(req(&agent, cents(20))).await.unwrap();
    let c = ledger.reserve(req(&agent, cents(30))).await.unwrap();
    ledger.settle(a.id, cents(1)).await.unwrap();
    ledger.settle(b.id, cents(2)).await.unwrap();
    let returned = ledger.release_leases().await.unwrap();
    assert_eq!(
        returned,
        MicroUsd(usd(1).0 - cents(50).0),
        "slice minus carves"
    );
    assert_eq!(ledger.lease_unused(&agent), MicroUsd::ZERO);
    // After the release, requests are reserved exactly (no new slice).
    let d = ledger.reserve(req(&agent, cents(5))).await.unwrap();
    ledger.flush().await.unwrap();
    assert_eq!(ledger.lease_unused(&agent), MicroUsd::ZERO);
    assert_eq!(ledger.status(&agent).reserved, cents(35));
    drop((c, d));
    drop(ledger);
    let ledger = fx.open();
    // 1 + 2 settled, 30 + 5 open at their worst case; nothing for the slice.
    assert_eq!(ledger.status(&agent).spent.total, cents(38));
}

/// The ledger file as a crash (SIGKILL) leaves it at this moment: redb's header on disk still
/// points at the last durable commit, so a copy opened elsewhere is what the next start finds.
fn crash_copy(fx: &Fixture, name: &str) -> Ledger {
    let path = fx.path.with_file_name(name);
    std::fs::copy(&fx.path, &path).unwrap();
    Ledger::open(&path, fx.options.clone()).unwrap()
}

/// Carve settles are committed without an fsync (made durable within `settle_durable_within`).
/// A crash before that loses their audit events, never their money: the lease row on disk still
/// covers each of them at its worst case and is charged in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_carve_settles_are_durable_charges_them_through_the_lease_row() {
    let mut fx = Fixture::at("2026-05-03T12:00:00Z");
    fx.options.lease_max = usd(1);
    // No timer makes them durable during this test; only the flush below does.
    fx.options.settle_durable_within = std::time::Duration::from_secs(3600);
    let ledger = fx.open();
    set(&ledger, "acme", LimitKind::Daily, Some(usd(100))).await;
    let agent = name("acme.bot");
    let first = ledger.reserve(req(&agent, cents(10))).await.unwrap();
    ledger.flush().await.unwrap();
    assert_eq!(ledger.lease_unused(&agent), usd(1), "a slice of $1");
    // Four: a fifth would bring the slice below half, and its renewal is a durable commit.
    const N: u64 = 4;
    for _ in 0..N {
        let r = ledger.reserve(req(&agent, cents(10))).await.unwrap();
        ledger.settle(r.id, cents(3)).await.unwrap();
    }
    // Memory, and readers of the database, see the settles at once.
    assert_eq!(ledger.status(&agent).spent.daily, MicroUsd(N * cents(3).0));
    let settled = |l: &Ledger| {
        l.audit(&AuditFilter::default())
            .unwrap()
            .iter()
            .filter(|e| e.host == "api.openai.com" && e.final_cost == Some(cents(3)))
            .count()
    };
    assert_eq!(settled(&ledger) as u64, N);

    // A crash now: the disk holds the lease row as it was before these carves.
    let crashed = crash_copy(&fx, "crash-before.redb");
    let s = crashed.status(&agent);
    // The first request was reserved exactly (its batch took the slice), the others carved.
    assert_eq!(
        s.spent.daily,
        MicroUsd(usd(1).0 + cents(10).0),
        "the open first request, and the whole lease row: the carves settled since at their worst case, the unused slice"
    );
    assert!(
        s.spent.daily.0 >= cents(10).0 + N * cents(3).0,
        "no charge lost"
    );
    assert_eq!(
        settled(&crashed),
        0,
        "their own audit events are what a crash loses"
    );
    drop(crashed);

    // A durable commit (a flush here; any reservation or limit change, the timer, or a graceful
    // stop too) makes them durable: a crash after it finds each at its real cost.
    ledger.flush().await.unwrap();
    let crashed = crash_copy(&fx, "crash-after.redb");
    assert_eq!(settled(&crashed) as u64, N);
    let s = crashed.status(&agent);
    // N at 3¢, the open first request, and the unused slice.
    assert_eq!(
        s.spent.daily,
        MicroUsd(N * cents(3).0 + cents(10).0 + usd(1).0 - N * cents(10).0)
    );
    drop(first);
}

/// Nothing needs to happen for lazily committed settles to become durable: the committer's timer
/// commits them durably within `settle_durable_within`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carve_settles_become_durable_by_themselves() {
    let mut fx = Fixture::at("2026-05-03T12:00:00Z");
    fx.options.lease_max = usd(1);
    fx.options.settle_durable_within = std::time::Duration::from_millis(50);
    let ledger = fx.open();
    let agent = name("acme.bot");
    let r = ledger.reserve(req(&agent, cents(10))).await.unwrap();
    ledger.flush().await.unwrap();
    let r2 = ledger.reserve(req(&agent, cents(10))).await.unwrap();
    ledger.settle(r2.id, cents(3)).await.unwrap();
    let mut n = 0;
    let durable = spendguard_tests_eventually(std::time::Duration::from_secs(20), || {
        n += 1;
        let crashed = crash_copy(&fx, &format!("crash-{n}.redb"));
        let found = crashed
            .audit(&AuditFilter::default())
            .unwrap()
            .iter()
            .any(|e| e.final_cost == Some(cents(3)));
        found
    });
    assert!(durable, "the settle never reached the disk by itself");
    drop(r);
}

/// Polls `cond` every 100 ms until it holds or `limit` passes.
fn spendguard_tests_eventually(limit: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    cond()
}
