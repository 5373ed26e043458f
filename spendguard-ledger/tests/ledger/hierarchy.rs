use crate::common::*;
use spendguard_ledger::*;

#[tokio::test]
async fn child_spend_counts_against_every_ancestor() {
    let fx = Fixture::at("2026-05-03T12:00:00Z");
    let ledger = fx.open();
    spend(&ledger, "acme.research.summarizer", usd(3)).await;
    spend(&ledger, "acme.sales", usd(1)).await;
    assert_eq!(ledger.status(&name("acme")).spent.daily, usd(4));
    assert_eq!(ledger.status(&name("acme.research")).spent.daily, usd(3));
    assert_eq!(
        ledger.status(&name("acme.research.summarizer")).spent.total,
        usd(3)
    );
    assert_eq!(ledger.status(&name("acme.sales")).spent.total, usd(1));
    assert_eq!(
        ledger.agents(),
        vec![
            name("acme"),
            name("acme.research"),
            name("acme.research.summarizer"),
            name("acme.sales")
        ]
    );
}

#[tokio::test]
async fn an_ancestor_limit_blocks_a_child() {
    let fx = Fixture::at("2026-05-03T12:00:00Z");
    let ledger = fx.open();
    set(&ledger, "acme", LimitKind::Daily, Some(usd(5))).await;
    set(&ledger, "acme.b", LimitKind::Daily, Some(usd(4))).await;
    spend(&ledger, "acme.a", usd(4)).await;
    let d = denied(ledger.reserve(req(&name("acme.b"), usd(2))).await);
    assert_eq!(d.reason, DenyReason::DailyBudgetExhausted);
    assert_eq!(d.agent, name("acme"), "the binding level is the ancestor");
    assert_eq!(d.requesting_agent, name("acme.b"));
    assert_eq!(d.remaining_by_period.daily, Some(usd(1)));
    assert!(
        d.message.contains("for agent acme exhausted"),
        "{}",
        d.message
    );
    let r = ledger.reserve(req(&name("acme.b"), usd(1))).await.unwrap();
    assert_eq!(r.remaining, MicroUsd::ZERO);
    assert_eq!(
        ledger.status(&name("acme.b")).remaining.daily,
        Some(MicroUsd::ZERO)
    );
}

#[tokio::test]
async fn per_call_limit_of_an_ancestor_applies() {
    let fx = Fixture::at("2026-05-03T12:00:00Z");
    let ledger = fx.open();
    set(&ledger, "acme", LimitKind::PerCall, Some(cents(50))).await;
    let d = denied(ledger.reserve(req(&name("acme.x.y"), cents(51))).await);
    assert_eq!(d.reason, DenyReason::PerCallLimitExceeded);
    assert_eq!(d.agent, name("acme"));
    assert_eq!(
        d.message,
        "Request of $0.51 exceeds the per-call limit of $0.50 for agent acme"
    );
    let _r = ledger
        .reserve(req(&name("acme.x.y"), cents(50)))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_child_limit_above_an_ancestor_is_refused() {
    let fx = Fixture::at("2026-05-03T12:00:00Z");
    let ledger = fx.open();
    set(&ledger, "acme", LimitKind::Daily, Some(usd(5))).await;
    let err = ledger
        .set_limits(
            &name("acme.research.bot"),
            LimitsPatch::default().set(LimitKind::Daily, Some(usd(6))),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::LimitAboveAncestor { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("acme.research.bot") && msg.contains("ancestor acme"),
        "{msg}"
    );
    assert!(msg.contains("$6.00") && msg.contains("$5.00"), "{msg}");
    // Nothing was changed by the refused call.
    assert_eq!(ledger.limits(&name("acme.research.bot")).daily, None);

    set(&ledger, "acme.research", LimitKind::Daily, Some(usd(4))).await;
    let err = ledger
        .set_limits(
            &name("acme"),
            LimitsPatch::default().set(LimitKind::Daily, Some(usd(3))),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::LimitBelowDescendant { .. }));
    assert!(
        err.to_string().contains("descendant acme.research"),
        "{err}"
    );
    assert_eq!(ledger.limits(&name("acme")).daily, Some(usd(5)));

    // Other kinds are independent; removing a limit is always fine; a patch changes only what it names.
    set(&ledger, "acme.research", LimitKind::Weekly, Some(usd(100))).await;
    set(&ledger, "acme.research", LimitKind::Daily, None).await;
    let l = ledger.limits(&name("acme.research"));
    assert_eq!((l.daily, l.weekly), (None, Some(usd(100))));
    set(&ledger, "acme", LimitKind::Daily, Some(usd(3))).await;
}

#[tokio::test]
async fn default_limits_bind_the_requesting_agent_only() {
    let mut fx = Fixture::at("2026-05-03T12:00:00Z");
    fx.options.default_limits = Limits {
        daily: Some(usd(2)),
        ..Limits::default()
    };
    let ledger = fx.open();
    spend(&ledger, "acme.x", usd(2)).await;
    let d = denied(ledger.reserve(req(&name("acme.x"), cents(1))).await);
    assert_eq!(d.agent, name("acme.x"));
    // acme's subtree has spent $2 already, but the default does not apply to acme as an ancestor.
    spend(&ledger, "acme.y", usd(2)).await;
    assert_eq!(ledger.status(&name("acme")).spent.daily, usd(4));
    // An own limit replaces the default for that period.
    set(&ledger, "acme.x", LimitKind::Daily, Some(usd(3))).await;
    let _r = ledger.reserve(req(&name("acme.x"), usd(1))).await.unwrap();
    assert_eq!(ledger.status(&name("acme.x")).limits.daily, Some(usd(3)));
    assert_eq!(ledger.status(&name("acme.y")).limits.daily, Some(usd(2)));
}
