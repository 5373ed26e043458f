//! Roll-out modes: `observe` meters, reserves and audits like `enforce`, and never refuses.

use crate::common::*;
use spendguard_ledger::*;

async fn set_mode(ledger: &Ledger, agent: &str, mode: Option<Mode>) {
    let patch = LimitsPatch {
        mode: Some(mode),
        ..LimitsPatch::default()
    };
    ledger.set_limits(&name(agent), patch).await.unwrap();
}

#[tokio::test]
async fn observe_reserves_and_audits_would_block_and_enforce_takes_over_on_the_next_request() {
    let fx = Fixture::at("2026-05-03T12:00:00Z");
    let ledger = fx.open();
    let mut rx = ledger.subscribe();
    set(&ledger, "acme", LimitKind::Daily, Some(cents(10))).await;
    set(&ledger, "acme", LimitKind::PerCall, Some(cents(8))).await;
    let patch = LimitsPatch {
        pause_on_exhaust: Some(true),
        ..LimitsPatch::default()
    };
    ledger.set_limits(&name("acme"), patch).await.unwrap();
    set_mode(&ledger, "acme", Some(Mode::Observe)).await;
    // Inherited by a descendant that sets none.
    assert_eq!(ledger.mode(&name("acme.bot")), Mode::Observe);
    assert_eq!(ledger.status(&name("acme.bot")).mode, Mode::Observe);

    // Fits: allowed as usual.
    spend(&ledger, "acme.bot", cents(6)).await;
    // Over the daily budget: reserved all the same, flagged.
    let r = ledger
        .reserve(req(&name("acme.bot"), cents(7)))
        .await
        .unwrap();
    assert_eq!(r.would_block, Some(DenyReason::DailyBudgetExhausted));
    assert_eq!(ledger.status(&name("acme")).reserved, cents(7));
    ledger.settle(r.id, cents(5)).await.unwrap();
    // Over the per-call limit too.
    let r2 = ledger
        .reserve(req(&name("acme.bot"), cents(9)))
        .await
        .unwrap();
    assert_eq!(r2.would_block, Some(DenyReason::PerCallLimitExceeded));
    ledger.settle(r2.id, cents(1)).await.unwrap();

    // Metered exactly: 6 + 5 + 1 cents, past the limit.
    let s = ledger.status(&name("acme"));
    assert_eq!(s.spent.daily, cents(12));
    assert_eq!(s.remaining.daily, Some(MicroUsd::ZERO));
    // pause_on_exhaust does not pause an observed tree (it would carry over into enforce).
    assert!(!s.paused, "{s:?}");
    // The webhooks fire as they would: threshold, then exhausted (once).
    let n = drain(&mut rx);
    assert!(n.contains(&Notification::Exhausted {
        agent: name("acme"),
        period: Period::Daily
    }));
    assert!(n
        .iter()
        .any(|n| matches!(n, Notification::Threshold { .. })));
    assert!(!n.iter().any(|n| matches!(n, Notification::Paused { .. })));

    let events = ledger
        .audit_synced(AuditFilter {
            agent: Some(name("acme")),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let decisions: Vec<(Decision, Option<DenyReason>, Option<MicroUsd>)> = events
        .iter()
        .map(|e| (e.decision, e.reason, e.final_cost))
        .collect();
    assert_eq!(
        decisions,
        vec![
            (Decision::Allowed, None, Some(cents(6))),
            (
                Decision::WouldBlock,
                Some(DenyReason::DailyBudgetExhausted),
                Some(cents(5))
            ),
            (
                Decision::WouldBlock,
                Some(DenyReason::PerCallLimitExceeded),
                Some(cents(1))
            ),
        ]
    );
    assert_eq!(
        serde_json::to_value(&events[1]).unwrap()["decision"],
        "would_block"
    );

    // Switched to enforce: the very next request is refused.
    set_mode(&ledger, "acme", Some(Mode::Enforce)).await;
    let d = denied(ledger.reserve(req(&name("acme.bot"), cents(1))).await);
    assert_eq!(d.reason, DenyReason::DailyBudgetExhausted);
    assert_eq!(ledger.status(&name("acme.bot")).mode, Mode::Enforce);
}

#[tokio::test]
async fn a_child_observes_under_an_enforcing_parent_and_mode_none_inherits_again() {
    let fx = Fixture::at("2026-05-03T12:00:00Z");
    let ledger = fx.open();
    set(&ledger, "acme", LimitKind::Daily, Some(cents(5))).await;
    set_mode(&ledger, "acme.new", Some(Mode::Observe)).await;
    let r = ledger
        .reserve(req(&name("acme.new.task"), cents(9)))
        .await
        .unwrap();
    assert_eq!(r.would_block, Some(DenyReason::DailyBudgetExhausted));
    ledger.settle(r.id, cents(9)).await.unwrap();
    // The enforcing sibling is refused by the same parent budget the observed child overspent.
    let d = denied(ledger.reserve(req(&name("acme.old"), cents(1))).await);
    assert_eq!(d.reason, DenyReason::DailyBudgetExhausted);
    // Paused: observed requests still go out, audited agent_paused.
    ledger.pause(&name("acme.new")).await.unwrap();
    let r = ledger
        .reserve(req(&name("acme.new"), cents(1)))
        .await
        .unwrap();
    assert_eq!(r.would_block, Some(DenyReason::AgentPaused));
    ledger.settle(r.id, cents(1)).await.unwrap();
    // Unpriceable requests: observed, not refused.
    let d = ledger
        .record_blocked(
            name("acme.new"),
            DenyReason::UnknownModel,
            MicroUsd::ZERO,
            AuditContext::default(),
        )
        .await
        .unwrap();
    assert!(d.observed);
    let d = ledger
        .record_blocked(
            name("acme.old"),
            DenyReason::UnknownModel,
            MicroUsd::ZERO,
            AuditContext::default(),
        )
        .await
        .unwrap();
    assert!(!d.observed);

    // `none` inherits again (here: enforce, the default), and survives a restart.
    set_mode(&ledger, "acme.new", None).await;
    drop(ledger);
    let ledger = fx.open();
    assert_eq!(ledger.mode(&name("acme.new")), Mode::Enforce);
    assert_eq!(ledger.limits(&name("acme.new")).mode, None);
    let d = denied(ledger.reserve(req(&name("acme.new"), cents(1))).await);
    assert_eq!(d.reason, DenyReason::AgentPaused);
}

#[tokio::test]
async fn default_limits_can_observe_everything_and_a_level_can_enforce() {
    let mut fx = Fixture::at("2026-05-03T12:00:00Z");
    fx.options.default_limits.daily = Some(cents(1));
    fx.options.default_limits.mode = Some(Mode::Observe);
    let ledger = fx.open();
    let r = ledger
        .reserve(req(&name("team.a"), cents(3)))
        .await
        .unwrap();
    assert_eq!(r.would_block, Some(DenyReason::DailyBudgetExhausted));
    set_mode(&ledger, "team", Some(Mode::Enforce)).await;
    denied(ledger.reserve(req(&name("team.a"), cents(3))).await);
}
