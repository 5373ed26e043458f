//! Any interleaving of reserve / settle / crash (drop without settling, reopen) / time passing.
//! A model that knows nothing of the ledger's internals says what must happen.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use spendguard_ledger::*;

use crate::common::*;

const AGENTS: [&str; 4] = ["a", "a.b", "a.c", "a.b.d"];

fn limits() -> Vec<(&'static str, LimitKind, u64)> {
    vec![
        ("a", LimitKind::Daily, 20),
        ("a", LimitKind::Total, 60),
        ("a.b", LimitKind::Daily, 10),
        ("a.b", LimitKind::PerCall, 4),
        ("a.c", LimitKind::Weekly, 8),
        ("a.b.d", LimitKind::Total, 6),
    ]
}

#[derive(Clone, Debug)]
enum Step {
    Reserve {
        agent: usize,
        cents: u64,
    },
    Settle {
        pick: usize,
        pct: u64,
    },
    /// The process dies (`machine: false`: the lease meter survives in the page cache) or the
    /// whole machine does (the meter is lost, so unused slices are charged).
    Crash {
        machine: bool,
    },
    Advance {
        hours: i64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0..AGENTS.len(), 0u64..=500).prop_map(|(agent, cents)| Step::Reserve { agent, cents }),
        4 => (any::<usize>(), 0u64..=100).prop_map(|(pick, pct)| Step::Settle { pick, pct }),
        1 => any::<bool>().prop_map(|machine| Step::Crash { machine }),
        1 => (1i64..=40).prop_map(|hours| Step::Advance { hours }),
    ]
}

#[derive(Default)]
struct Model {
    open: BTreeMap<u64, (usize, u64)>,
    /// (time, agent index, µUSD) of every charge.
    charges: Vec<(DateTime<Utc>, usize, u64)>,
    settled_sum: u64,
    open_at_crash_sum: u64,
}

fn within(agent: usize, level: &str) -> bool {
    name(AGENTS[agent]).is_within(&name(level))
}

impl Model {
    fn spent(&self, level: &str, p: Period, now: DateTime<Utc>) -> u64 {
        let start = p.start(now);
        self.charges
            .iter()
            .filter(|(t, a, _)| *t >= start && within(*a, level))
            .map(|(_, _, c)| c)
            .sum()
    }

    fn outstanding(&self, level: &str) -> u64 {
        self.open
            .values()
            .filter(|(a, _)| within(*a, level))
            .map(|(_, c)| c)
            .sum()
    }

    /// A machine crash also charges the unused part of each agent's lease; a process crash
    /// hands it back (renewals queued by the last carves land first).
    async fn crash(&mut self, ledger: &Ledger, now: DateTime<Utc>, machine: bool) {
        ledger.flush().await.unwrap();
        if !machine {
            return;
        }
        for (i, a) in AGENTS.iter().enumerate() {
            let unused = ledger.lease_unused(&name(a)).0;
            if unused > 0 {
                self.charges.push((now, i, unused));
                self.open_at_crash_sum += unused;
            }
        }
    }

    fn fits(&self, agent: usize, amount: u64, now: DateTime<Utc>) -> bool {
        limits().into_iter().all(|(level, kind, dollars)| {
            if !within(agent, level) {
                return true;
            }
            let limit = dollars * 1_000_000;
            let p = match kind {
                LimitKind::PerCall => return amount <= limit,
                LimitKind::Daily => Period::Daily,
                LimitKind::Weekly => Period::Weekly,
                LimitKind::Monthly => Period::Monthly,
                LimitKind::Total => Period::Total,
            };
            self.spent(level, p, now) + self.outstanding(level) + amount <= limit
        })
    }
}

fn check(ledger: &Ledger, model: &Model, now: DateTime<Utc>) {
    for level in ["a", "a.b", "a.c", "a.b.d"] {
        let s = ledger.status(&name(level));
        assert_eq!(
            s.reserved.0,
            model.outstanding(level),
            "reserved at {level}"
        );
        for p in Period::ALL {
            assert_eq!(
                s.spent.get(p).0,
                model.spent(level, p, now),
                "{p} spent at {level}"
            );
        }
    }
    // Every settle was <= its reservation, so no limit may be exceeded, ever.
    for (level, kind, dollars) in limits() {
        let p = match kind {
            LimitKind::PerCall => continue,
            LimitKind::Daily => Period::Daily,
            LimitKind::Weekly => Period::Weekly,
            LimitKind::Monthly => Period::Monthly,
            LimitKind::Total => Period::Total,
        };
        let s = ledger.status(&name(level));
        assert!(
            s.spent.get(p).0 + s.reserved.0 <= dollars * 1_000_000,
            "{level} {p}: spent {} + reserved {} > ${dollars}",
            s.spent.get(p),
            s.reserved
        );
    }
}

fn run(steps: Vec<Step>, lease_max: MicroUsd) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut fx = Fixture::at("2025-12-30T20:00:00Z");
        fx.options.lease_max = lease_max;
        let mut ledger = fx.open();
        for (level, kind, dollars) in limits() {
            set(&ledger, level, kind, Some(usd(dollars))).await;
        }
        let mut model = Model::default();
        let mut stale_ids = Vec::new();
        for step in steps {
            let now = fx.clock.now();
            match step {
                Step::Reserve { agent, cents: c } => {
                    let amount = cents(c).0;
                    let expect = model.fits(agent, amount, now);
                    match ledger
                        .reserve(req(&name(AGENTS[agent]), MicroUsd(amount)))
                        .await
                    {
                        Ok(r) => {
                            assert!(
                                expect,
                                "allowed {c} cents for {} but it does not fit",
                                AGENTS[agent]
                            );
                            model.open.insert(r.id, (agent, amount));
                        }
                        Err(ReserveError::Denied(d)) => {
                            assert!(
                                !expect,
                                "denied {c} cents for {}: {}",
                                AGENTS[agent], d.message
                            )
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                Step::Settle { pick, pct } => {
                    if model.open.is_empty() {
                        continue;
                    }
                    let id = *model.open.keys().nth(pick % model.open.len()).unwrap();
                    let (agent, amount) = model.open.remove(&id).unwrap();
                    let actual = amount * pct / 100;
                    // Half the settles take the caller's-task path (carves only: the
                    // others still go through the committer).
                    let now_path = (pct % 2 == 0)
                        .then(|| ledger.settle_now(id, MicroUsd(actual)))
                        .flatten();
                    let s = match now_path {
                        Some(r) => r.unwrap(),
                        None => ledger.settle(id, MicroUsd(actual)).await.unwrap(),
                    };
                    assert_eq!(s.charged.0, actual);
                    model.charges.push((now, agent, actual));
                    model.settled_sum += actual;
                }
                Step::Crash { machine } => {
                    model.crash(&ledger, now, machine).await;
                    drop(ledger);
                    if machine {
                        lose_meter(&fx);
                    }
                    for (id, (agent, amount)) in std::mem::take(&mut model.open) {
                        model.charges.push((now, agent, amount));
                        model.open_at_crash_sum += amount;
                        stale_ids.push(id);
                    }
                    ledger = fx.open();
                    // Reopening converted every open reservation into a charge.
                    assert_eq!(ledger.status(&name("a")).reserved, MicroUsd::ZERO);
                    let total = ledger.status(&name("a")).spent.total.0;
                    assert!(
                        total >= model.settled_sum + model.open_at_crash_sum,
                        "money disappeared"
                    );
                    if let Some(id) = stale_ids.last() {
                        assert!(matches!(
                            ledger.settle(*id, MicroUsd::ZERO).await,
                            Err(LedgerError::UnknownReservation { .. })
                        ));
                    }
                }
                Step::Advance { hours } => fx.clock.advance(chrono::Duration::hours(hours)),
            }
            check(&ledger, &model, fx.clock.now());
        }
        // Final crash (of the process): nothing left open is lost, nothing unused is charged.
        let now = fx.clock.now();
        model.crash(&ledger, now, false).await;
        drop(ledger);
        for (_, (agent, amount)) in std::mem::take(&mut model.open) {
            model.charges.push((now, agent, amount));
            model.open_at_crash_sum += amount;
        }
        let ledger = fx.open();
        assert_eq!(
            ledger.status(&name("a")).spent.total.0,
            model.settled_sum + model.open_at_crash_sum
        );
        check(&ledger, &model, now);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn interleavings_keep_the_invariants(steps in proptest::collection::vec(step(), 1..40)) {
        run(steps, MicroUsd::ZERO);
    }

    /// The same decisions with budget leases: a request is refused only where it does not fit
    /// once every unused slice is handed back, and a crash charges open requests (plus unused
    /// slices when the machine went down) — exactly what the model adds.
    #[test]
    fn interleavings_keep_the_invariants_with_leases(steps in proptest::collection::vec(step(), 1..40)) {
        run(steps, usd(3));
    }
}
