#![expect(
    clippy::unwrap_used,
    reason = "a benchmark: any failure should abort loudly"
)]
//! The 402 body: a [`Denial`] turned into the response the workload reads (top-level contract
//! fields plus the provider-shaped `error`), for OpenAI and Anthropic hosts.
//! `cargo bench -p spendguard-agent --bench reply`. Nothing is asserted.

use std::hint::black_box;

use chrono::TimeZone as _;
use criterion::{criterion_group, criterion_main, Criterion};
use spendguard_agent::metering::stage::denial_response;
use spendguard_ledger::{Denial, DenyReason, MicroUsd, RemainingByPeriod};

fn denial() -> Denial {
    Denial {
        reason: DenyReason::DailyBudgetExhausted,
        agent: "acme.research".parse().unwrap(),
        requesting_agent: "acme.research.summarizer".parse().unwrap(),
        message: "Daily budget of $5.00 for agent acme.research exhausted (spent: $4.97, requested: $0.05); resets 2026-05-04T00:00:00Z".into(),
        requested: MicroUsd(50_000),
        remaining: MicroUsd(30_000),
        remaining_by_period: RemainingByPeriod {
            daily: Some(MicroUsd(30_000)),
            weekly: None,
            monthly: Some(MicroUsd(12_000_000)),
            total: None,
        },
        resets_at: chrono::Utc.with_ymd_and_hms(2026, 5, 4, 0, 0, 0).single(),
        observed: false,
    }
}

fn benches(c: &mut Criterion) {
    let d = denial();
    c.bench_function("402 body (openai)", |b| {
        b.iter(|| denial_response(black_box("api.openai.com"), &d))
    });
    c.bench_function("402 body (anthropic)", |b| {
        b.iter(|| denial_response(black_box("api.anthropic.com"), &d))
    });
}

criterion_group!(reply, benches);
criterion_main!(reply);
