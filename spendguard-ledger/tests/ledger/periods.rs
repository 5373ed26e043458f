use crate::common::*;
use spendguard_ledger::*;

#[tokio::test]
async fn message_names_agent_limit_spend_request_and_reset() {
    let fx = Fixture::at("2026-05-03T15:00:00Z");
    let ledger = fx.open();
    set(&ledger, "acme.research", LimitKind::Daily, Some(usd(5))).await;
    spend(&ledger, "acme.research", MicroUsd(4_970_000)).await;
    let d = denied(ledger.reserve(req(&name("acme.research"), cents(5))).await);
    assert_eq!(d.reason, DenyReason::DailyBudgetExhausted);
    assert_eq!(
        d.message,
        "Daily budget of $5.00 for agent acme.research exhausted (spent: $4.97, requested: $0.05); \
         resets 2026-05-04T00:00:00Z"
    );
    assert_eq!(d.resets_at, Some(t("2026-05-04T00:00:00Z")));
    assert_eq!(d.remaining, cents(3));
    assert_eq!(d.remaining_by_period.daily, Some(cents(3)));
    assert_eq!(d.remaining_by_period.weekly, None);

    let body = serde_json::to_value(&d).unwrap();
    assert_eq!(body["code"], "BUDGET_EXCEEDED");
    assert_eq!(body["reason"], "daily_budget_exhausted");
    assert_eq!(body["agent"], "acme.research");
    assert_eq!(body["requested"], serde_json::json!(0.05));
    assert_eq!(body["remaining"], serde_json::json!(0.03));
    assert_eq!(
        body["remaining_by_period"]["daily"],
        serde_json::json!(0.03)
    );
    assert!(body["remaining_by_period"]["total"].is_null());
    assert_eq!(body["resets_at"], "2026-05-04T00:00:00Z");
}

#[tokio::test]
async fn day_rolls_over_at_midnight_utc() {
    let fx = Fixture::at("2026-05-03T23:59:00Z");
    let ledger = fx.open();
    set(&ledger, "acme", LimitKind::Daily, Some(usd(5))).await;
    spend(&ledger, "acme", usd(5)).await;
    fx.clock.set(t("2026-05-03T23:59:59.999Z"));
    let d = denied(ledger.reserve(req(&name("acme"), usd(1))).await);
    assert_eq!(d.resets_at, Some(t("2026-05-04T00:00:00Z")));
    fx.clock.set(t("2026-05-04T00:00:00Z"));
    spend(&ledger, "acme", usd(5)).await;
    let s = ledger.status(&name("acme"));
    assert_eq!(s.spent.daily, usd(5));
    assert_eq!(s.spent.total, usd(10));
    assert_eq!(
        s.period_resets.daily.map(|d| d.to_utc()),
        Some(t("2026-05-05T00:00:00Z"))
    );
}

#[tokio::test]
async fn in_flight_reservation_counts_until_settled_then_in_the_settling_day() {
    let fx = Fixture::at("2026-05-03T23:59:00Z");
    let ledger = fx.open();
    set(&ledger, "acme", LimitKind::Daily, Some(usd(5))).await;
    let r = ledger.reserve(req(&name("acme"), usd(4))).await.unwrap();
    fx.clock.set(t("2026-05-04T00:01:00Z"));
    // Still in flight: it counts against the new day too.
    denied(ledger.reserve(req(&name("acme"), usd(2))).await);
    ledger.settle(r.id, usd(3)).await.unwrap();
    assert_eq!(ledger.status(&name("acme")).spent.daily, usd(3));
    let _r = ledger.reserve(req(&name("acme"), usd(2))).await.unwrap();
}

#[tokio::test]
async fn iso_week_rolls_over_on_monday_across_a_year_boundary() {
    // Sunday 2024-12-29 is in ISO week 2024-W52; Monday 2024-12-30 starts 2025-W01.
    let fx = Fixture::at("2024-12-29T12:00:00Z");
    let ledger = fx.open();
    set(&ledger, "acme", LimitKind::Weekly, Some(usd(10))).await;
    spend(&ledger, "acme", usd(10)).await;
    let d = denied(ledger.reserve(req(&name("acme"), usd(1))).await);
    assert_eq!(d.reason, DenyReason::WeeklyBudgetExhausted);
    assert_eq!(d.resets_at, Some(t("2024-12-30T00:00:00Z")));

    fx.clock.set(t("2024-12-30T00:00:00Z"));
    spend(&ledger, "acme", usd(10)).await;
    // New calendar year, same ISO week: no reset.
    fx.clock.set(t("2025-01-01T09:00:00Z"));
    let d = denied(ledger.reserve(req(&name("acme"), usd(1))).await);
    assert_eq!(d.resets_at, Some(t("2025-01-06T00:00:00Z")));
    assert_eq!(ledger.status(&name("acme")).spent.weekly, usd(10));
    fx.clock.set(t("2025-01-06T00:00:00Z"));
    let _r = ledger.reserve(req(&name("acme"), usd(10))).await.unwrap();
}

#[tokio::test]
async fn month_rolls_over_on_the_first_including_leap_february() {
    let fx = Fixture::at("2024-02-28T10:00:00Z");
    let ledger = fx.open();
    set(&ledger, "acme", LimitKind::Monthly, Some(usd(20))).await;
    set(&ledger, "acme", LimitKind::Daily, Some(usd(15))).await;
    spend(&ledger, "acme", usd(15)).await;
    // Feb 29 exists in 2024: a new day, same month.
    fx.clock.set(t("2024-02-29T00:00:00Z"));
    let d = denied(ledger.reserve(req(&name("acme"), usd(6))).await);
    assert_eq!(d.reason, DenyReason::MonthlyBudgetExhausted);
    assert_eq!(d.resets_at, Some(t("2024-03-01T00:00:00Z")));
    spend(&ledger, "acme", usd(5)).await;
    let s = ledger.status(&name("acme"));
    assert_eq!((s.spent.daily, s.spent.monthly), (usd(5), usd(20)));
    assert_eq!(
        s.period_resets.monthly.map(|d| d.to_utc()),
        Some(t("2024-03-01T00:00:00Z"))
    );
    fx.clock.set(t("2024-02-29T23:59:59Z"));
    denied(ledger.reserve(req(&name("acme"), cents(1))).await);
    fx.clock.set(t("2024-03-01T00:00:00Z"));
    spend(&ledger, "acme", usd(15)).await;
    assert_eq!(ledger.status(&name("acme")).spent.monthly, usd(15));
}

#[tokio::test]
async fn total_never_resets() {
    let fx = Fixture::at("2026-01-15T10:00:00Z");
    let ledger = fx.open();
    set(&ledger, "task", LimitKind::Total, Some(usd(3))).await;
    spend(&ledger, "task", usd(3)).await;
    for later in [
        "2026-01-16T00:00:00Z",
        "2026-02-01T00:00:00Z",
        "2031-01-01T00:00:00Z",
    ] {
        fx.clock.set(t(later));
        let d = denied(ledger.reserve(req(&name("task"), cents(1))).await);
        assert_eq!(d.reason, DenyReason::TotalBudgetExhausted);
        assert_eq!(d.resets_at, None);
        assert!(d.message.ends_with("it never resets"), "{}", d.message);
    }
    drop(ledger);
    let ledger = fx.open();
    denied(ledger.reserve(req(&name("task"), cents(1))).await);
    assert_eq!(ledger.status(&name("task")).spent.total, usd(3));
}
