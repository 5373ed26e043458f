use crate::common::*;
use spendguard_ledger::*;

#[tokio::test]
async fn pause_blocks_the_agent_and_its_descendants_until_resume() {
    let fx = Fixture::at("2026-05-03T12:00:00Z");
    let ledger = fx.open();
    let mut rx = ledger.subscribe();
    ledger.pause(&name("acme")).await.unwrap();
    let d = denied(ledger.reserve(req(&name("acme.x"), cents(1))).await);
    assert_eq!(d.reason, DenyReason::AgentPaused);
    assert_eq!(d.agent, name("acme"));
    assert_eq!(d.remaining, MicroUsd::ZERO);
    let s = ledger.status(&name("acme.x"));
    assert_eq!(s.status, AgentState::Paused);
    assert!(s.paused);
    assert_eq!(s.paused_by, Some(name("acme")));
    assert_eq!(
        drain(&mut rx),
        vec![Notification::Paused {
            agent: name("acme")
        }]
    );

    // Survives a restart.
    drop(ledger);
    let ledger = fx.open();
    denied(ledger.reserve(req(&name("acme.x"), cents(1))).await);
    ledger.resume(&name("acme")).await.unwrap();
    let _r = ledger
        .reserve(req(&name("acme.x"), cents(1)))
        .await
        .unwrap();
    assert_eq!(ledger.status(&name("acme.x")).status, AgentState::Active);
}

#[tokio::test]
async fn pause_on_exhaust_keeps_the_agent_blocked_across_periods() {
    let fx = Fixture::at("2026-05-03T12:00:00Z");
    let ledger = fx.open();
    let mut rx = ledger.subscribe();
    ledger
        .set_limits(
            &name("acme.x"),
            LimitsPatch {
                daily: Some(Some(usd(2))),
                pause_on_exhaust: Some(true),
                ..LimitsPatch::default()
            },
        )
        .await
        .unwrap();
    spend(&ledger, "acme.x", usd(2)).await;
    let n = drain(&mut rx);
    assert!(
        n.contains(&Notification::Exhausted {
            agent: name("acme.x"),
            period: Period::Daily
        }),
        "{n:?}"
    );
    assert!(
        n.contains(&Notification::Paused {
            agent: name("acme.x")
        }),
        "{n:?}"
    );
    assert_eq!(ledger.status(&name("acme.x")).status, AgentState::Paused);

    fx.clock.set(t("2026-05-04T00:00:00Z"));
    let d = denied(ledger.reserve(req(&name("acme.x"), cents(1))).await);
    assert_eq!(d.reason, DenyReason::AgentPaused);
    ledger.resume(&name("acme.x")).await.unwrap();
    let _r = ledger.reserve(req(&name("acme.x"), usd(1))).await.unwrap();
}

#[tokio::test]
async fn pause_on_exhaust_also_fires_when_a_request_does_not_fit() {
    let fx = Fixture::at("2026-05-03T12:00:00Z");
    let ledger = fx.open();
    let mut rx = ledger.subscribe();
    ledger
        .set_limits(
            &name("acme"),
            LimitsPatch {
                total: Some(Some(usd(2))),
                pause_on_exhaust: Some(true),
                ..LimitsPatch::default()
            },
        )
        .await
        .unwrap();
    spend(&ledger, "acme.y", cents(150)).await;
    let d = denied(ledger.reserve(req(&name("acme.y"), usd(1))).await);
    assert_eq!(d.reason, DenyReason::TotalBudgetExhausted);
    let d = denied(ledger.reserve(req(&name("acme.y"), cents(10))).await);
    assert_eq!(d.reason, DenyReason::AgentPaused);
    assert_eq!(d.agent, name("acme"));
    let n = drain(&mut rx);
    assert_eq!(
        n.iter()
            .filter(|n| matches!(n, Notification::Paused { .. }))
            .count(),
        1,
        "{n:?}"
    );
}

#[tokio::test]
async fn expiry_blocks_from_its_instant() {
    let fx = Fixture::at("2026-05-03T12:00:00Z");
    let ledger = fx.open();
    ledger
        .set_limits(
            &name("task1"),
            LimitsPatch {
                expires_at: Some(Some(t("2026-05-03T13:00:00Z"))),
                ..LimitsPatch::default()
            },
        )
        .await
        .unwrap();
    let _r = ledger
        .reserve(req(&name("task1.step"), usd(1)))
        .await
        .unwrap();
    fx.clock.set(t("2026-05-03T13:00:00Z"));
    let d = denied(ledger.reserve(req(&name("task1.step"), usd(1))).await);
    assert_eq!(d.reason, DenyReason::BudgetExpired);
    assert_eq!(d.agent, name("task1"));
    assert!(d.message.contains("2026-05-03T13:00:00Z"), "{}", d.message);
    assert_eq!(ledger.status(&name("task1")).status, AgentState::Expired);
    // Removing the expiry reopens it.
    ledger
        .set_limits(
            &name("task1"),
            LimitsPatch {
                expires_at: Some(None),
                ..LimitsPatch::default()
            },
        )
        .await
        .unwrap();
    let _r = ledger
        .reserve(req(&name("task1.step"), usd(1)))
        .await
        .unwrap();
}

#[tokio::test]
async fn threshold_fires_once_per_budget_and_period() {
    let fx = Fixture::at("2026-05-03T12:00:00Z");
    let ledger = fx.open();
    let mut rx = ledger.subscribe();
    set(&ledger, "acme", LimitKind::Daily, Some(usd(10))).await;
    set(&ledger, "acme", LimitKind::Monthly, Some(usd(100))).await;
    ledger
        .set_limits(
            &name("acme.x"),
            LimitsPatch {
                weekly: Some(Some(usd(10))),
                soft_threshold_pct: Some(50),
                ..LimitsPatch::default()
            },
        )
        .await
        .unwrap();
    spend(&ledger, "acme.x", cents(499)).await;
    assert_eq!(drain(&mut rx), vec![]);
    spend(&ledger, "acme.x", cents(1)).await;
    assert_eq!(
        drain(&mut rx),
        vec![Notification::Threshold {
            agent: name("acme.x"),
            period: Period::Weekly,
            pct: 50
        }]
    );
    spend(&ledger, "acme.x", usd(3)).await;
    assert_eq!(
        drain(&mut rx),
        vec![Notification::Threshold {
            agent: name("acme"),
            period: Period::Daily,
            pct: 80
        }]
    );
    spend(&ledger, "acme.x", usd(1)).await;
    assert_eq!(drain(&mut rx), vec![]);
    // A new day: the daily threshold can fire again; weekly cannot.
    fx.clock.set(t("2026-05-04T10:00:00Z"));
    spend(&ledger, "acme", usd(8)).await;
    assert_eq!(
        drain(&mut rx),
        vec![Notification::Threshold {
            agent: name("acme"),
            period: Period::Daily,
            pct: 80
        }]
    );
    let json = serde_json::to_value(Notification::Threshold {
        agent: name("a"),
        period: Period::Daily,
        pct: 80,
    })
    .unwrap();
    assert_eq!(
        json,
        serde_json::json!({"event": "threshold", "agent": "a", "period": "daily", "pct": 80})
    );
}

#[tokio::test]
async fn a_full_notification_queue_never_blocks_requests() {
    let mut fx = Fixture::at("2026-05-03T12:00:00Z");
    fx.options.notification_capacity = 1;
    let ledger = fx.open();
    let _rx = ledger.subscribe(); // never read
    for i in 0..5 {
        ledger.pause(&name(&format!("a{i}"))).await.unwrap();
    }
    let _r = ledger.reserve(req(&name("b"), usd(1))).await.unwrap();
}

#[tokio::test]
async fn crash_charges_open_reservations_at_their_reserved_amount() {
    let fx = Fixture::at("2026-05-03T12:00:00Z");
    let ledger = fx.open();
    set(&ledger, "acme", LimitKind::Daily, Some(usd(10))).await;
    let open = ledger.reserve(req(&name("acme.x"), usd(3))).await.unwrap();
    let settled = ledger.reserve(req(&name("acme.x"), usd(2))).await.unwrap();
    ledger.settle(settled.id, usd(1)).await.unwrap();
    drop(ledger); // crash: `open` is never settled

    let ledger = fx.open();
    let s = ledger.status(&name("acme"));
    assert_eq!(s.spent.daily, usd(4));
    assert_eq!(s.reserved, MicroUsd::ZERO);
    let err = ledger.settle(open.id, usd(1)).await.unwrap_err();
    assert!(matches!(err, LedgerError::UnknownReservation { id } if id == open.id));
    let events = ledger.audit(&AuditFilter::default()).unwrap();
    let e = events
        .iter()
        .find(|e| e.reservation_id == Some(open.id))
        .unwrap();
    assert!(e.recovered);
    assert_eq!(e.final_cost, Some(usd(3)));
    // New ids never reuse old ones.
    let r = ledger.reserve(req(&name("acme.x"), usd(1))).await.unwrap();
    assert!(r.id > open.id && r.id > settled.id);
}

#[tokio::test]
async fn settle_charges_more_than_reserved_and_refuses_unknown_ids() {
    let fx = Fixture::at("2026-05-03T12:00:00Z");
    let ledger = fx.open();
    let r = ledger.reserve(req(&name("acme"), usd(1))).await.unwrap();
    assert_eq!(r.remaining, MicroUsd::MAX);
    let s = ledger.settle(r.id, usd(3)).await.unwrap();
    assert_eq!((s.reserved, s.charged), (usd(1), usd(3)));
    assert_eq!(ledger.status(&name("acme")).spent.daily, usd(3));
    assert!(matches!(
        ledger.settle(r.id, usd(1)).await,
        Err(LedgerError::UnknownReservation { .. })
    ));
    assert!(matches!(
        ledger.settle(987_654, usd(1)).await,
        Err(LedgerError::UnknownReservation { .. })
    ));
    assert_eq!(ledger.status(&name("acme")).spent.daily, usd(3));
}

#[tokio::test]
async fn audit_records_decisions_costs_and_filters() {
    let fx = Fixture::at("2026-05-03T12:00:00Z");
    let ledger = fx.open();
    set(&ledger, "acme.b", LimitKind::PerCall, Some(usd(1))).await;
    let r = ledger.reserve(req(&name("acme.a"), usd(1))).await.unwrap();
    let in_flight = ledger.audit(&AuditFilter::default()).unwrap();
    assert_eq!(in_flight.len(), 1);
    assert_eq!(in_flight[0].final_cost, None);
    assert_eq!(in_flight[0].decision, Decision::Allowed);
    ledger.settle(r.id, cents(40)).await.unwrap();
    fx.clock.set(t("2026-05-03T13:00:00Z"));
    denied(ledger.reserve(req(&name("acme.b"), usd(2))).await);
    let d = ledger
        .record_blocked(
            name("other"),
            DenyReason::UnknownModel,
            MicroUsd::ZERO,
            AuditContext {
                model: "gpt-9".into(),
                ..AuditContext::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(d.reason, DenyReason::UnknownModel);
    assert!(
        d.message.contains("gpt-9") && d.message.contains("other"),
        "{}",
        d.message
    );

    let all = ledger.audit(&AuditFilter::default()).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].final_cost, Some(cents(40)));
    assert_eq!(all[0].model, "gpt-4o");
    assert_eq!(all[1].decision, Decision::Blocked);
    assert_eq!(all[1].reason, Some(DenyReason::PerCallLimitExceeded));
    assert_eq!(all[1].reserved, MicroUsd::ZERO);
    assert_eq!(all[2].reason, Some(DenyReason::UnknownModel));
    let json = serde_json::to_value(&all[0]).unwrap();
    assert_eq!(json["cost_usd"], serde_json::json!(0.4));
    assert_eq!(json["decision"], "allowed");

    let acme = ledger
        .audit(&AuditFilter {
            agent: Some(name("acme")),
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(acme.len(), 2);
    let since = ledger
        .audit(&AuditFilter {
            since: Some(t("2026-05-03T12:30:00Z")),
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(since.len(), 2);
    let newest = ledger
        .audit(&AuditFilter {
            limit: 1,
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].agent, name("other"));
}

#[tokio::test]
async fn audit_retention_removes_old_events() {
    let mut fx = Fixture::at("2026-05-01T00:00:00Z");
    fx.options.audit_retention = chrono::Duration::days(1);
    let ledger = fx.open();
    for _ in 0..3 {
        spend(&ledger, "acme", cents(1)).await;
    }
    fx.clock.set(t("2026-05-01T20:00:00Z"));
    spend(&ledger, "acme", cents(1)).await;
    assert_eq!(ledger.audit(&AuditFilter::default()).unwrap().len(), 4);
    fx.clock.set(t("2026-05-02T10:00:00Z"));
    spend(&ledger, "acme", cents(1)).await;
    let left = ledger.audit(&AuditFilter::default()).unwrap();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|e| e.time >= t("2026-05-01T10:00:00Z")));
    // Spend is not audit: compaction never touches the budget.
    assert_eq!(ledger.status(&name("acme")).spent.total, cents(5));
}

#[tokio::test]
async fn settings_are_durable_and_searchable_by_prefix() {
    let fx = Fixture::at("2026-05-03T12:00:00Z");
    let ledger = fx.open();
    ledger
        .put_setting("tag/cgroup/a", serde_json::json!({"agent": "acme"}))
        .await
        .unwrap();
    ledger
        .put_setting("tag/cgroup/b", serde_json::json!({"agent": "beta"}))
        .await
        .unwrap();
    ledger
        .put_setting("price/gpt-4o", serde_json::json!({"input": 2.5}))
        .await
        .unwrap();
    ledger
        .put_setting("tag/cgroup/b", serde_json::json!({"agent": "gamma"}))
        .await
        .unwrap();
    ledger.delete_setting("tag/cgroup/a").await.unwrap();
    ledger.delete_setting("never-there").await.unwrap();
    drop(ledger);
    let ledger = fx.open();
    assert_eq!(
        ledger.settings_with_prefix("tag/"),
        vec![(
            "tag/cgroup/b".to_string(),
            serde_json::json!({"agent": "gamma"})
        )]
    );
    assert_eq!(
        ledger.setting("price/gpt-4o"),
        Some(serde_json::json!({"input": 2.5}))
    );
    assert_eq!(ledger.settings_with_prefix("").len(), 2);
}

#[tokio::test]
async fn status_json_has_the_contract_fields() {
    let fx = Fixture::at("2026-05-03T12:00:00Z");
    let ledger = fx.open();
    set(&ledger, "acme", LimitKind::Daily, Some(usd(5))).await;
    spend(&ledger, "acme", cents(150)).await;
    let _open = ledger.reserve(req(&name("acme"), usd(1))).await.unwrap();
    let v = serde_json::to_value(ledger.status(&name("acme"))).unwrap();
    assert_eq!(v["agent"], "acme");
    assert_eq!(v["status"], "active");
    assert_eq!(v["limits"]["daily"], serde_json::json!(5.0));
    assert_eq!(v["spent"]["daily"], serde_json::json!(1.5));
    assert_eq!(v["reserved"], serde_json::json!(1.0));
    assert_eq!(v["remaining"]["daily"], serde_json::json!(2.5));
    assert!(v["remaining"]["weekly"].is_null());
    assert_eq!(v["period_resets"]["daily"], "2026-05-04T00:00:00Z");
    assert_eq!(v["period_resets"]["weekly"], "2026-05-04T00:00:00Z");
    assert_eq!(v["period_resets"]["monthly"], "2026-06-01T00:00:00Z");
    assert_eq!(v["paused"], false);

    // The status is shown to workloads: it never carries the webhook URL.
    ledger
        .set_limits(
            &name("acme"),
            LimitsPatch {
                webhook: Some(Some("https://hooks.example/secret-token".into())),
                ..LimitsPatch::default()
            },
        )
        .await
        .unwrap();
    assert!(!serde_json::to_string(&ledger.status(&name("acme")))
        .unwrap()
        .contains("secret"));
    assert_eq!(
        ledger.limits(&name("acme")).webhook.as_deref(),
        Some("https://hooks.example/secret-token")
    );
}

#[tokio::test]
async fn an_invalid_threshold_is_refused() {
    let fx = Fixture::at("2026-05-03T12:00:00Z");
    let ledger = fx.open();
    let err = ledger
        .set_limits(
            &name("acme"),
            LimitsPatch {
                soft_threshold_pct: Some(0),
                ..LimitsPatch::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("from 1 to 100"), "{err}");
}

#[test]
fn a_locked_or_unwritable_database_is_explained() {
    let fx = Fixture::at("2026-05-03T12:00:00Z");
    let _first = fx.open();
    let err = Ledger::open(&fx.path, fx.options.clone()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&fx.path.display().to_string()) && msg.contains("no other spendguard-agent"),
        "{msg}"
    );
    let err = Ledger::open("/nonexistent-dir/ledger.redb", LedgerOptions::default()).unwrap_err();
    assert!(err.to_string().contains("state directory exists"), "{err}");
}

#[tokio::test]
async fn other_hosts_policy_is_inherited_stored_and_audited() {
    let fx = Fixture::at("2026-05-03T12:00:00Z");
    let ledger = fx.open();
    let bot = name("acme.team.bot");
    assert_eq!(ledger.other_hosts(&bot), OtherHosts::Allow, "default allow");
    let deny = LimitsPatch {
        other_hosts: Some(Some(OtherHosts::Deny)),
        ..LimitsPatch::default()
    };
    ledger.set_limits(&name("acme"), deny).await.unwrap();
    assert_eq!(ledger.other_hosts(&bot), OtherHosts::Deny, "inherited");
    assert_eq!(ledger.status(&bot).other_hosts, OtherHosts::Deny);
    let allow = LimitsPatch {
        other_hosts: Some(Some(OtherHosts::Allow)),
        ..LimitsPatch::default()
    };
    ledger.set_limits(&name("acme.team"), allow).await.unwrap();
    assert_eq!(ledger.other_hosts(&bot), OtherHosts::Allow, "nearest wins");
    // Another limit change leaves the policy alone.
    let daily = LimitsPatch::default().set(LimitKind::Daily, Some(usd(5)));
    ledger.set_limits(&name("acme.team"), daily).await.unwrap();
    assert_eq!(ledger.other_hosts(&bot), OtherHosts::Allow);

    // Survives a restart; `inherit` (None) removes the own setting again.
    drop(ledger);
    let ledger = fx.open();
    assert_eq!(ledger.other_hosts(&bot), OtherHosts::Allow);
    assert_eq!(
        ledger.limits(&name("acme")).other_hosts,
        Some(OtherHosts::Deny)
    );
    let inherit = LimitsPatch {
        other_hosts: Some(None),
        ..LimitsPatch::default()
    };
    ledger
        .set_limits(&name("acme.team"), inherit)
        .await
        .unwrap();
    assert_eq!(ledger.other_hosts(&bot), OtherHosts::Deny);

    let d = ledger
        .record_blocked(
            bot.clone(),
            DenyReason::HostNotAllowed,
            MicroUsd::ZERO,
            AuditContext {
                host: "api.cohere.example".into(),
                ..AuditContext::default()
            },
        )
        .await
        .unwrap();
    assert!(d.message.contains("api.cohere.example"), "{}", d.message);
    let ev = ledger.audit_synced(AuditFilter::default()).await.unwrap();
    let last = ev.last().expect("an event");
    assert_eq!(last.reason, Some(DenyReason::HostNotAllowed));
    assert_eq!(last.decision, Decision::Blocked);
    assert_eq!(
        serde_json::to_value(last).unwrap()["reason"],
        "host_not_allowed"
    );
}
