//! Tests that need the crate's insides: a storage backend that fails on demand, and holding
//! the committer back to drop a caller at a precise moment.

use std::fs::OpenOptions;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

use crate::*;

#[derive(Debug)]
struct Flaky {
    inner: FileBackend,
    fail: Arc<AtomicBool>,
    /// While set, `sync_data` waits: a commit stuck on a slow disk.
    hold: Arc<AtomicBool>,
    /// Counts `sync_data` calls (redb makes a fixed number per durable commit).
    syncs: Arc<AtomicUsize>,
}

impl Flaky {
    fn check(&self) -> Result<(), std::io::Error> {
        if self.fail.load(Ordering::SeqCst) {
            Err(std::io::Error::other("injected: no space left on device"))
        } else {
            Ok(())
        }
    }
}

impl StorageBackend for Flaky {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        while self.hold.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        self.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }
    fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(s, e)
    }
    fn try_lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(s, e)
    }
    fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(s, e)
    }
    fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(s, e)
    }
    fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(s, e)
    }
    fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(s, e)
    }
}

fn flaky_ledger(path: PathBuf, fail: Arc<AtomicBool>) -> Ledger {
    slow_ledger(path, fail, Arc::new(AtomicBool::new(false)))
}

fn slow_ledger(path: PathBuf, fail: Arc<AtomicBool>, hold: Arc<AtomicBool>) -> Ledger {
    counted_ledger(path, fail, hold, Arc::default(), LedgerOptions::default())
}

fn counted_ledger(
    path: PathBuf,
    fail: Arc<AtomicBool>,
    hold: Arc<AtomicBool>,
    syncs: Arc<AtomicUsize>,
    options: LedgerOptions,
) -> Ledger {
    let p = path.clone();
    let opener = Box::new(move || {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)?;
        redb::Database::builder().create_with_backend(Flaky {
            inner: FileBackend::new(file)?,
            fail: fail.clone(),
            hold: hold.clone(),
            syncs: syncs.clone(),
        })
    });
    Ledger::open_with(path, opener, options).unwrap()
}

/// Reopens the (closed) ledger at `path`: no reservation of `agent` was left open for crash
/// recovery to charge.
fn assert_nothing_to_recover(path: &std::path::Path, agent: &AgentName) {
    let ledger = Ledger::open(path, LedgerOptions::default()).unwrap();
    assert_eq!(
        ledger.status(agent).spent.total,
        MicroUsd::ZERO,
        "nothing to recover"
    );
}

fn req(agent: &AgentName, usd: u64) -> ReserveRequest {
    ReserveRequest {
        agent: agent.clone(),
        amount: MicroUsd::from_usd(usd),
        audit: AuditContext::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_commit_refuses_the_batch_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let fail = Arc::new(AtomicBool::new(false));
    let ledger = flaky_ledger(path.clone(), fail.clone());
    let agent: AgentName = "acme.team".parse().unwrap();
    let root: AgentName = "acme".parse().unwrap();
    ledger
        .set_limits(
            &root,
            LimitsPatch::default().set(LimitKind::Daily, Some(MicroUsd::from_usd(10))),
        )
        .await
        .unwrap();
    ledger
        .put_setting("tag/a", serde_json::json!("x"))
        .await
        .unwrap();
    let first = ledger.reserve(req(&agent, 3)).await.unwrap();
    let before = ledger.status(&agent);

    fail.store(true, Ordering::SeqCst);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let l = ledger.clone();
        let a = agent.clone();
        tasks.push(tokio::spawn(async move { l.reserve(req(&a, 1)).await }));
    }
    for t in tasks {
        match t.await.unwrap() {
            Err(ReserveError::Ledger(e)) => {
                assert!(e.is_transient(), "a full disk is worth retrying: {e}");
                let msg = e.to_string();
                assert!(msg.contains("ledger.redb") && msg.contains("disk"), "{msg}");
            }
            other => panic!("a reservation went through a failed commit: {other:?}"),
        }
    }
    assert!(ledger
        .settle(first.id, MicroUsd::from_usd(1))
        .await
        .is_err());
    assert!(ledger
        .put_setting("tag/b", serde_json::json!("y"))
        .await
        .is_err());
    assert!(ledger.pause(&agent).await.is_err());
    // Memory matches the disk: nothing of the failed batches is visible.
    assert_eq!(ledger.status(&agent), before);
    assert_eq!(ledger.status(&agent).reserved, MicroUsd::from_usd(3));
    assert_eq!(ledger.settings_with_prefix("tag/").len(), 1);
    assert!(!ledger.status(&agent).paused);

    // The disk comes back: the ledger reopens and carries on.
    fail.store(false, Ordering::SeqCst);
    let settled = ledger
        .settle(first.id, MicroUsd::from_usd(1))
        .await
        .unwrap();
    assert_eq!(settled.charged, MicroUsd::from_usd(1));
    let second = ledger.reserve(req(&agent, 2)).await.unwrap();
    assert_eq!(second.remaining, MicroUsd::from_usd(7));
    let s = ledger.status(&agent);
    assert_eq!(s.spent.daily, MicroUsd::from_usd(1));
    assert_eq!(s.reserved, MicroUsd::from_usd(2));
    drop(ledger);

    // And the disk agrees: reopening charges the open $2 reservation.
    let ledger = Ledger::open(&path, LedgerOptions::default()).unwrap();
    let s = ledger.status(&agent);
    assert_eq!(s.spent.total, MicroUsd::from_usd(3));
    assert_eq!(s.reserved, MicroUsd::ZERO);
    assert_eq!(ledger.settings_with_prefix("tag/").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_whose_caller_went_away_is_released() {
    use std::future::Future;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path().join("l.redb"), LedgerOptions::default()).unwrap();
    let agent: AgentName = "acme".parse().unwrap();
    {
        // Hold the committer back so the caller is surely gone before it answers.
        let guard = ledger.shared_state_for_tests().lock().unwrap();
        let mut fut = Box::pin(ledger.reserve(req(&agent, 5)));
        // One poll queues the operation; the committer cannot answer while we hold the lock.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        drop(fut);
        drop(guard);
    }
    // The release is committed in the batch after the one that made the reservation (which may
    // also carry the first of these), so it is on disk once the second is answered.
    ledger.put_setting("x", serde_json::json!(1)).await.unwrap();
    ledger.put_setting("y", serde_json::json!(2)).await.unwrap();
    let s = ledger.status(&agent);
    assert_eq!(s.reserved, MicroUsd::ZERO);
    assert_eq!(s.spent.total, MicroUsd::ZERO);
    drop(ledger);
    assert_nothing_to_recover(&dir.path().join("l.redb"), &agent);
}

/// `status` reads memory, which a batch updates before its commit; `audit` reads the disk. On a
/// slow disk the two disagree for a commit's time (a test read the audit log right after `status`
/// showed nothing reserved, and found the last request still open); `audit_synced` waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_synced_shows_every_settle_status_counts() {
    let dir = tempfile::tempdir().unwrap();
    let hold = Arc::new(AtomicBool::new(false));
    let ledger = slow_ledger(
        dir.path().join("l.redb"),
        Arc::new(AtomicBool::new(false)),
        hold.clone(),
    );
    let agent: AgentName = "acme".parse().unwrap();
    let r = ledger.reserve(req(&agent, 3)).await.unwrap();
    /// Lets the committer go however this test ends (else dropping the ledger waits forever).
    struct Release(Arc<AtomicBool>);
    impl Drop for Release {
        fn drop(&mut self) {
            self.0.store(false, Ordering::SeqCst);
        }
    }
    let _release = Release(hold.clone());
    hold.store(true, Ordering::SeqCst);
    let settling = {
        let l = ledger.clone();
        tokio::spawn(async move { l.settle(r.id, MicroUsd::from_usd(1)).await })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ledger.status(&agent).reserved != MicroUsd::ZERO {
        assert!(
            std::time::Instant::now() < deadline,
            "the settle never reached memory"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let open = |events: &[AuditEvent]| events.iter().filter(|e| e.final_cost.is_none()).count();
    let on_disk = ledger.audit(&AuditFilter::default()).unwrap();
    assert_eq!(
        open(&on_disk),
        1,
        "the commit is held: the disk still has it open"
    );
    let synced = {
        let l = ledger.clone();
        tokio::spawn(async move { l.audit_synced(AuditFilter::default()).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        !synced.is_finished(),
        "audit_synced answered before the commit"
    );
    hold.store(false, Ordering::SeqCst);
    let events = synced.await.unwrap().unwrap();
    assert_eq!(open(&events), 0, "{events:?}");
    assert_eq!(events[0].final_cost, Some(MicroUsd::from_usd(1)));
    settling.await.unwrap().unwrap();
}

/// The other moment a caller can go away: after the committer sent the answer, before the
/// caller read it (hyper dropped the request's future in between). The answer is dropped with
/// the channel, and the reservation used to stay open until the next start charged it in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_answered_but_never_read_is_released() {
    use std::future::Future;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path().join("l.redb"), LedgerOptions::default()).unwrap();
    let agent: AgentName = "acme".parse().unwrap();
    let mut fut = Box::pin(ledger.reserve(req(&agent, 5)));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(fut.as_mut().poll(&mut cx).is_pending(), "queued");
    // Answered in order: once the flush is answered, the reservation's answer was sent.
    ledger.flush().await.unwrap();
    assert_eq!(ledger.status(&agent).reserved, MicroUsd::from_usd(5));
    drop(fut);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ledger.status(&agent).reserved != MicroUsd::ZERO {
        assert!(
            std::time::Instant::now() < deadline,
            "the unread reservation is still open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    ledger.flush().await.unwrap();
    let events = ledger.audit(&AuditFilter::default()).unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0].final_cost,
        Some(MicroUsd::ZERO),
        "released, not charged"
    );
    assert_eq!(ledger.status(&agent).spent.total, MicroUsd::ZERO);
    drop(ledger);
    assert_nothing_to_recover(&dir.path().join("l.redb"), &agent);
}

/// Settles wait up to `settle_linger` for company, so one commit carries many; an urgent
/// operation (a reservation: a request waits for it) ends the wait at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settles_linger_for_company_and_a_reservation_cuts_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let syncs = Arc::new(AtomicUsize::new(0));
    // Long, so that a slow CI disk cannot blur the difference between waiting and not.
    let linger = std::time::Duration::from_millis(1500);
    let ledger = counted_ledger(
        dir.path().join("l.redb"),
        Arc::default(),
        Arc::default(),
        syncs.clone(),
        LedgerOptions {
            settle_linger: linger,
            ..LedgerOptions::default()
        },
    );
    let agent: AgentName = "acme".parse().unwrap();
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(ledger.reserve(req(&agent, 1)).await.unwrap().id);
    }
    let per_commit = {
        let before = syncs.load(Ordering::SeqCst);
        ledger.flush().await.unwrap(); // a batch with nothing to write: no commit
        let _ = ledger.reserve(req(&agent, 1)).await.unwrap();
        syncs.load(Ordering::SeqCst) - before
    };
    assert!(per_commit >= 1, "a durable commit syncs");

    // Ten settles, 10 ms apart: one commit, about `linger` after the first.
    let before = syncs.load(Ordering::SeqCst);
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for id in ids {
        let l = ledger.clone();
        tasks.push(tokio::spawn(
            async move { l.settle(id, MicroUsd::ZERO).await },
        ));
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let took = started.elapsed();
    assert_eq!(
        syncs.load(Ordering::SeqCst) - before,
        per_commit,
        "one commit for ten settles"
    );
    assert!(
        took >= linger,
        "the settles did not wait for company: {took:?}"
    );

    // A reservation during a linger is answered at once, with the lingering settle.
    let spare = ledger.reserve(req(&agent, 1)).await.unwrap();
    let settling = {
        let l = ledger.clone();
        tokio::spawn(async move { l.settle(spare.id, MicroUsd::ZERO).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let started = std::time::Instant::now();
    let _ = ledger.reserve(req(&agent, 1)).await.unwrap();
    assert!(
        started.elapsed() < linger / 2,
        "a reservation waited for the linger: {:?}",
        started.elapsed()
    );
    settling.await.unwrap().unwrap();
}

/// Settles made on callers' tasks wait up to `deferred_linger` for company before the
/// committer writes them (they are in memory already, and their lease rows cover them on disk);
/// anything else that reaches the committer meanwhile takes them along within `settle_linger`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settles_on_callers_tasks_wait_for_company_and_other_work_takes_them_along() {
    let dir = tempfile::tempdir().unwrap();
    // Long, so that a slow CI machine cannot blur waiting and not waiting.
    let linger = std::time::Duration::from_millis(1500);
    let ledger = Ledger::open(
        dir.path().join("l.redb"),
        LedgerOptions {
            deferred_linger: linger,
            ..leasing()
        },
    )
    .unwrap();
    let agent: AgentName = "acme.bot".parse().unwrap();
    let (first, carve) = carved(&ledger, &agent).await;
    let deferred = |l: &Ledger| {
        !l.shared_state_for_tests()
            .lock()
            .unwrap()
            .deferred
            .is_empty()
    };

    // Another request's settle through the committer takes the waiting one along.
    ledger
        .settle_now(carve.id, MicroUsd(1))
        .expect("a carve")
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(deferred(&ledger), "written before any company came");
    let started = std::time::Instant::now();
    ledger.settle(first.id, MicroUsd(2)).await.unwrap();
    assert!(
        started.elapsed() < linger / 2,
        "a settle through the committer waited for the deferred linger: {:?}",
        started.elapsed()
    );
    assert!(!deferred(&ledger), "not taken along by the next batch");

    // Alone, it is written once the deferred linger is over.
    let carve = ledger
        .reserve(ReserveRequest {
            agent: agent.clone(),
            amount: MicroUsd(100_000),
            audit: AuditContext::default(),
        })
        .await
        .unwrap();
    assert_ne!(
        carve.id & crate::lease::CARVE_BIT,
        0,
        "carved from the slice"
    );
    let started = std::time::Instant::now();
    ledger
        .settle_now(carve.id, MicroUsd(3))
        .expect("a carve")
        .unwrap();
    while deferred(&ledger) {
        assert!(started.elapsed() < linger * 4, "never written");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        started.elapsed() >= linger * 9 / 10,
        "written before the deferred linger: {:?}",
        started.elapsed()
    );
    assert_eq!(ledger.status(&agent).spent.daily, MicroUsd(1 + 2 + 3));
}

#[test]
fn the_handle_is_cheap_to_share() {
    fn assert_shareable<T: Send + Sync + Clone + 'static>() {}
    assert_shareable::<Ledger>();
    fn assert_error<T: std::error::Error + Send + Sync + Clone + 'static>() {}
    assert_error::<LedgerError>();
    assert_error::<ReserveError>();
}

fn leasing() -> LedgerOptions {
    LedgerOptions {
        lease_max: MicroUsd::from_usd(1),
        // No timer makes lazy commits durable during these tests.
        settle_durable_within: std::time::Duration::from_secs(3600),
        ..LedgerOptions::default()
    }
}

/// A carve with a slice of $1 behind it (the first request takes the slice and stays open).
async fn carved(ledger: &Ledger, agent: &AgentName) -> (Reservation, Reservation) {
    let root = AgentName::new("acme").unwrap();
    ledger
        .set_limits(
            &root,
            LimitsPatch::default().set(LimitKind::Daily, Some(MicroUsd::from_usd(100))),
        )
        .await
        .unwrap();
    let cents = |c: u64| ReserveRequest {
        agent: agent.clone(),
        amount: MicroUsd(c * 10_000),
        audit: AuditContext::default(),
    };
    let first = ledger.reserve(cents(10)).await.unwrap();
    ledger.flush().await.unwrap();
    assert_eq!(ledger.lease_unused(agent), MicroUsd::from_usd(1));
    let carve = ledger.reserve(cents(10)).await.unwrap();
    assert_ne!(
        carve.id & crate::lease::CARVE_BIT,
        0,
        "carved from the slice"
    );
    (first, carve)
}

/// `settle_now` charges in memory at once and leaves the write to the committer; with no batch
/// before the stop (its wake-up suppressed here), closing the ledger writes it. A crash before
/// that finds the carve's lease row and charges it in full: never less than the settle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_on_the_callers_task_is_written_at_close_and_a_crash_before_charges_its_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let ledger = Ledger::open(&path, leasing()).unwrap();
    let agent: AgentName = "acme.bot".parse().unwrap();
    let (first, carve) = carved(&ledger, &agent).await;
    let three = MicroUsd(30_000);
    // As if the committer had been told already: nothing wakes it for this settle.
    ledger
        .shared_state_for_tests()
        .lock()
        .unwrap()
        .deferred_woken = true;
    let s = ledger
        .settle_now(carve.id, three)
        .expect("a carve")
        .unwrap();
    assert_eq!(s.charged, three);
    assert_eq!(ledger.status(&agent).spent.daily, three, "memory at once");
    assert!(!ledger
        .shared_state_for_tests()
        .lock()
        .unwrap()
        .deferred
        .is_empty());
    assert!(
        ledger
            .settle_now(carve.id, three)
            .expect("a carve")
            .is_err(),
        "a second settle of the same carve is refused"
    );

    // A crash now: the disk still has the lease row as it was (the copy is what a restart
    // after SIGKILL finds: redb's header points at the last durable commit).
    let copy = dir.path().join("crash.redb");
    std::fs::copy(&path, &copy).unwrap();
    let crashed = Ledger::open(&copy, LedgerOptions::default()).unwrap();
    let spent = crashed.status(&agent).spent.daily;
    assert_eq!(
        spent,
        MicroUsd(10_000 * 10 + 1_000_000),
        "the open first request and the whole lease row (no meter beside the copy)"
    );
    assert!(spent >= MicroUsd(100_000 + three.0), "no charge lost");
    drop(crashed);

    // A graceful stop: the committer writes the deferred settle before closing.
    drop(first);
    drop(ledger);
    let ledger = Ledger::open(&path, LedgerOptions::default()).unwrap();
    let audit = ledger.audit(&AuditFilter::default()).unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.reservation_id == Some(carve.id) && e.final_cost == Some(three)),
        "the settle's audit event is on disk: {audit:?}"
    );
    // The settle, and the first request left open at its worst case; the unused slice is
    // handed back (the lease meter vouches for it).
    assert_eq!(
        ledger.status(&agent).spent.daily,
        MicroUsd(100_000 + three.0)
    );
}

/// The batch that carries a caller-task settle fails (disk full): the settle is gone from memory
/// with the rest of the batch, and the lease row that covers it stays open on disk, so the next
/// start charges it in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_carrying_a_callers_task_settle_leaves_its_row_charged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let fail = Arc::new(AtomicBool::new(false));
    let ledger = counted_ledger(
        path.clone(),
        fail.clone(),
        Arc::new(AtomicBool::new(false)),
        Arc::default(),
        leasing(),
    );
    let agent: AgentName = "acme.bot".parse().unwrap();
    let (first, carve) = carved(&ledger, &agent).await;
    fail.store(true, Ordering::SeqCst);
    ledger
        .settle_now(carve.id, MicroUsd(30_000))
        .expect("a carve")
        .unwrap();
    assert!(ledger.flush().await.is_err(), "the batch carrying it fails");
    fail.store(false, Ordering::SeqCst);
    ledger.flush().await.unwrap();
    let s = ledger.status(&agent);
    assert!(
        s.spent.daily.0 + s.reserved.0 >= 100_000 + 30_000,
        "memory, rebuilt from the disk, still holds the settle's worst case: {s:?}"
    );
    // A graceful stop hands back what the leases did not use: the carve is not among it.
    ledger.release_leases().await.unwrap();
    drop(first);
    drop(ledger);
    let ledger = Ledger::open(&path, LedgerOptions::default()).unwrap();
    let spent = ledger.status(&agent).spent.daily;
    assert!(
        spent >= MicroUsd(100_000 + 100_000),
        "the first request and the carve at its worst case at least: {spent}"
    );
}
