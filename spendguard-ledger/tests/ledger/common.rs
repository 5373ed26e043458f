use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use spendguard_ledger::*;

pub fn name(s: &str) -> AgentName {
    s.parse().unwrap()
}

pub fn usd(d: u64) -> MicroUsd {
    MicroUsd::from_usd(d)
}

pub fn cents(c: u64) -> MicroUsd {
    MicroUsd(c * 10_000)
}

pub fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

pub fn req(agent: &AgentName, amount: MicroUsd) -> ReserveRequest {
    ReserveRequest {
        agent: agent.clone(),
        amount,
        audit: AuditContext {
            cgroup: "/sys/fs/cgroup/test".into(),
            host: "api.openai.com".into(),
            model: "gpt-4o".into(),
            provider: "openai".into(),
            payment: None,
            delegation: None,
        },
    }
}

/// A ledger file in a temporary directory and a manual clock.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub clock: ManualClock,
    pub options: LedgerOptions,
}

impl Fixture {
    pub fn at(now: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let clock = ManualClock::new(t(now));
        let options = LedgerOptions {
            clock: Arc::new(clock.clone()),
            ..LedgerOptions::default()
        };
        Fixture {
            _dir: dir,
            path,
            clock,
            options,
        }
    }

    pub fn open(&self) -> Ledger {
        Ledger::open(&self.path, self.options.clone()).unwrap()
    }
}

pub async fn set(ledger: &Ledger, agent: &str, kind: LimitKind, amount: Option<MicroUsd>) {
    ledger
        .set_limits(&name(agent), LimitsPatch::default().set(kind, amount))
        .await
        .unwrap();
}

pub fn denied(r: Result<Reservation, ReserveError>) -> Denial {
    match r {
        Err(ReserveError::Denied(d)) => d,
        other => panic!("expected a denial, got {other:?}"),
    }
}

/// Spends `amount` for `agent` (reserve + settle at the same amount).
pub async fn spend(ledger: &Ledger, agent: &str, amount: MicroUsd) {
    let r = ledger.reserve(req(&name(agent), amount)).await.unwrap();
    ledger.settle(r.id, amount).await.unwrap();
}

pub fn drain(rx: &mut tokio::sync::mpsc::Receiver<Notification>) -> Vec<Notification> {
    let mut v = Vec::new();
    while let Ok(n) = rx.try_recv() {
        v.push(n);
    }
    v
}

/// What a machine crash does to the lease meter beside the ledger (`ledger.meter`): the page
/// cache that held it is gone. The next start charges unused slices in full.
pub fn lose_meter(fx: &Fixture) {
    let meter = fx.path.with_extension("meter");
    assert!(
        meter.exists(),
        "the ledger keeps a lease meter at {}",
        meter.display()
    );
    std::fs::write(&meter, b"").unwrap();
}
