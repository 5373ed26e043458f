//! The ledger file across releases: an older schema is migrated in place (a file written by
//! release 0.1, kept in tests/fixtures), a newer one is refused, a damaged one is named.

use crate::common::*;
use spendguard_ledger::*;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/ledger-schema-v1.redb"
);

/// A copy of the release-0.1 fixture in a temp dir (the migration writes to it).
fn v1_copy() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    std::fs::copy(FIXTURE, &path).unwrap();
    (dir, path)
}

fn options_at(now: &str) -> LedgerOptions {
    LedgerOptions {
        clock: std::sync::Arc::new(ManualClock::new(t(now))),
        ..LedgerOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_0_1_ledger_is_migrated_in_place_and_loses_nothing() {
    let (_dir, path) = v1_copy();
    let ledger = Ledger::open(&path, options_at("2026-11-20T12:00:00Z")).unwrap();
    // Limits and pauses as release 0.1 wrote them.
    assert_eq!(
        ledger.limits(&name("acme")).monthly,
        Some(MicroUsd::from_usd(100))
    );
    assert_eq!(
        ledger.limits(&name("acme.research")).daily,
        Some(MicroUsd::from_usd(5))
    );
    assert!(ledger.status(&name("ops")).paused);
    assert!(ledger.setting("price.my-finetune").is_some());
    // Spend: $0.75 settled, plus the $0.40 left open by the "crash", charged at this open.
    let st = ledger.status(&name("acme.research.bot"));
    assert_eq!(st.spent.daily, MicroUsd(1_150_000), "{st:?}");
    assert_eq!(st.reserved, MicroUsd::ZERO);
    assert_eq!(
        ledger.status(&name("acme")).spent.monthly,
        MicroUsd(1_150_000),
        "every ancestor keeps its spend"
    );
    let events = ledger.audit(&AuditFilter::default()).unwrap();
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(events[2].recovered, "{events:?}");
    // The budget still binds: $5 daily at acme.research, $1.15 spent.
    let d = denied(
        ledger
            .reserve(req(&name("acme.research.bot"), MicroUsd(3_900_000)))
            .await,
    );
    assert_eq!(d.reason, DenyReason::DailyBudgetExhausted);
    spend(&ledger, "acme.research.bot", MicroUsd(100_000)).await;
    let id = ledger.ledger_id();
    assert_ne!(id, 0);
    drop(ledger);

    // Migrated once: the next open finds version 2 and the same identity.
    let again = Ledger::open(&path, options_at("2026-11-20T12:00:01Z")).unwrap();
    assert_eq!(again.ledger_id(), id);
    assert_eq!(
        again.status(&name("acme.research.bot")).spent.daily,
        MicroUsd(1_250_000)
    );
}

/// Rewrites the fixture's schema version (what a newer release would have written).
fn set_schema(path: &std::path::Path, v: u64) {
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut meta = txn
            .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
            .unwrap();
        meta.insert("schema_version", v).unwrap();
    }
    txn.commit().unwrap();
}

#[test]
fn a_newer_ledger_is_refused_with_a_clear_message_and_left_untouched() {
    let (_dir, path) = v1_copy();
    set_schema(&path, 99);
    let e = Ledger::open(&path, LedgerOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, LedgerError::SchemaVersion { found: 99, .. }),
        "{e:?}"
    );
    assert!(
        msg.contains("newer release") && msg.contains("ledger.redb"),
        "{msg}"
    );
    let db = redb::Database::create(&path).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let meta = txn
        .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
        .unwrap();
    let v = redb::ReadableTable::get(&meta, "schema_version")
        .unwrap()
        .unwrap()
        .value();
    assert_eq!(v, 99, "a refused ledger is not migrated");
}

#[test]
fn garbage_and_truncated_ledgers_are_named_as_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("ledger.redb");
    std::fs::write(
        &garbage,
        b"this is not a redb file, it is a text file of some length....",
    )
    .unwrap();
    let e = Ledger::open(&garbage, LedgerOptions::default()).unwrap_err();
    assert!(matches!(e, LedgerError::Damaged { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("ledger.redb") && msg.contains("spendguard-agent recover"),
        "{msg}"
    );

    let (_d2, trunc) = v1_copy();
    let bytes = std::fs::read(&trunc).unwrap();
    std::fs::write(&trunc, &bytes[..bytes.len() / 3]).unwrap();
    match Ledger::open(&trunc, LedgerOptions::default()) {
        Err(e) => {
            assert!(
                matches!(e, LedgerError::Damaged { .. } | LedgerError::Corrupt { .. }),
                "{e:?}"
            );
            assert!(e.to_string().contains("recover"), "{e}");
        }
        // redb may repair a file cut after its last commit; then nothing may be lost.
        Ok(l) => assert_eq!(
            l.status(&name("acme.research.bot")).spent.daily,
            MicroUsd(1_150_000)
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recovery_hold_refuses_every_request_until_released() {
    let f = Fixture::at("2026-11-20T10:00:00Z");
    let mut o = f.options.clone();
    o.lease_max = MicroUsd::from_usd(1);
    let ledger = Ledger::open(&f.path, o).unwrap();
    spend(&ledger, "acme.bot", MicroUsd(10)).await;
    ledger
        .set_hold(&Hold {
            since: t("2026-11-20T10:00:00Z"),
            reason: "ledger.redb was damaged".into(),
        })
        .await
        .unwrap();
    let d = denied(ledger.reserve(req(&name("acme.bot"), MicroUsd(10))).await);
    assert_eq!(d.reason, DenyReason::AgentPaused);
    assert!(
        d.message.contains("spendguard recover --confirm"),
        "{}",
        d.message
    );
    assert!(ledger.status(&name("acme.bot")).paused);
    ledger.release_hold().await.unwrap();
    spend(&ledger, "acme.bot", MicroUsd(10)).await;
}
