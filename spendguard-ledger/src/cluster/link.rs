//! The node's side of the cluster store: leases slices for the request path, pushes the durable
//! outbox (charges and hand-backs) to the store, follows policy changes, hands idle slices back.
//!
//! Order of durability (why no charge is ever lost):
//! - grant: the store records the slice as held by this node *first*, then the node records it
//!   in its redb (a lease row), and only then carves from it. A crash in between leaves the slice
//!   counted in the store (never lost budget, at worst stranded) until the restart reconciles it.
//! - settle: the charge and the hand-back are written to the redb outbox in the same commit that
//!   changes the lease row; the pusher sends them (idempotently, by the entry's id) and deletes
//!   them only after the store answered.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Notify};

use super::{
    ClusterError, ClusterStore, GrantCall, GrantReply, PeriodStarts, Refusal, SettleCall,
    SettleEntry,
};
use crate::agent::AgentName;
use crate::clock::Clock;
use crate::committer::Op;
use crate::money::MicroUsd;
use crate::state::State;
use crate::types::AgentStatus;

/// How a node uses the cluster store.
#[derive(Clone)]
pub struct ClusterOptions {
    pub store: Arc<dyn ClusterStore>,
    /// This node's name in the store (`SPENDGUARD_NODE_NAME`, else `NODE_NAME`, else host name).
    pub node: String,
    /// How often the policy version is polled (limit, pause and price changes reach this node
    /// within this, plus one commit).
    pub poll: Duration,
    /// A slice nobody carved from for this long is handed back, so another node can use it.
    pub idle: Duration,
    /// A slice is at most 1/(divisor × nodes holding) of what is left.
    pub divisor: u64,
}

impl std::fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterOptions")
            .field("store", &self.store.describe())
            .field("node", &self.node)
            .field("poll", &self.poll)
            .field("idle", &self.idle)
            .finish()
    }
}

impl ClusterOptions {
    pub fn new(store: Arc<dyn ClusterStore>, node: impl Into<String>) -> ClusterOptions {
        ClusterOptions {
            store,
            node: node.into(),
            poll: Duration::from_millis(500),
            idle: Duration::from_secs(1),
            divisor: 8,
        }
    }
}

/// `status --json` with a cluster store: the cluster-wide numbers, and who holds what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterUsage {
    pub status: AgentStatus,
    /// Node name → µUSD it holds leased for this agent.
    pub nodes: BTreeMap<String, MicroUsd>,
}

/// What the node last heard from the store (for `/readyz`).
#[derive(Debug, Default)]
struct Health {
    error: Option<String>,
    /// When the last call failed: requests fail fast for [`FAIL_FAST`] after it, rather than
    /// each waiting for its own timeout (the background poll keeps probing the store).
    failed_at: Option<Instant>,
    ready: bool,
}

/// See [`Health::failed_at`].
const FAIL_FAST: Duration = Duration::from_millis(1000);

/// How many outbox entries one push reads at a time.
const PUSH_MAX_ENTRIES: usize = 4096;

/// How far one push goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Until {
    /// Until the outbox is empty (start-up reconcile, graceful stop).
    Empty,
    /// Through what it held when the push began, in as many reads as that takes.
    Backlog,
}

/// After the outbox gets an entry, the pusher waits this long for more before it sends, so a busy
/// node sends one settle per agent per this interval instead of one per commit. The store's
/// numbers lag the node's by about this much; budget is never at risk (a slice counts in full
/// until its settle arrives).
pub const PUSH_GATHER: Duration = Duration::from_millis(200);

pub(crate) struct Link {
    pub opts: ClusterOptions,
    /// Per agent: serialises this node's grants for it, and holds the id of a grant whose answer
    /// was lost (retried with the same id, so the store never grants it twice).
    acquiring: Mutex<HashMap<AgentName, Arc<tokio::sync::Mutex<Option<String>>>>>,
    next_grant: AtomicU64,
    /// Distinguishes this process's grant ids from a previous one's.
    incarnation: u128,
    health: Mutex<Health>,
    ready: tokio::sync::watch::Sender<bool>,
    pub outbox_wake: Arc<Notify>,
    /// Re-read every policy at the next poll, whatever the version.
    force_sync: std::sync::atomic::AtomicBool,
    /// The node ledger's id: the epoch of its outbox sequence numbers in the store.
    epoch: u64,
}

/// How long a refused request waits for other nodes' idle slices to come back before it is
/// refused (idle time + a poll + a push, see ARCHITECTURE.md).
fn recall_wait(o: &ClusterOptions) -> Duration {
    o.idle + o.poll + Duration::from_millis(500)
}

pub(crate) enum Acquired {
    /// Recorded durably in the node's redb: carve again.
    Granted,
    Refused(Refusal),
}

impl Link {
    pub fn new(opts: ClusterOptions, epoch: u64) -> Link {
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
            ^ u128::from(std::process::id());
        Link {
            opts,
            acquiring: Mutex::default(),
            next_grant: AtomicU64::new(1),
            incarnation,
            health: Mutex::default(),
            ready: tokio::sync::watch::channel(false).0,
            outbox_wake: Arc::new(Notify::new()),
            force_sync: std::sync::atomic::AtomicBool::new(false),
            epoch,
        }
    }

    pub fn resync(&self) {
        self.force_sync.store(true, Ordering::Relaxed);
    }

    fn store(&self) -> &dyn ClusterStore {
        self.opts.store.as_ref()
    }

    fn note(&self, r: &Result<impl Sized, ClusterError>) {
        let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        match r {
            Ok(_) => {
                if h.error.take().is_some() {
                    tracing::info!(store = %self.opts.store.describe(), "cluster store reachable again");
                }
                h.failed_at = None;
            }
            Err(e) => {
                if h.error.is_none() {
                    tracing::error!("{e}");
                }
                h.error = Some(e.to_string());
                h.failed_at = Some(Instant::now());
            }
        }
    }

    /// `None` when ready; else why not (for `/readyz`).
    pub fn not_ready(&self) -> Option<String> {
        let h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        match (&h.error, h.ready) {
            (Some(e), _) => Some(e.clone()),
            (None, false) => Some(format!(
                "reconciling this node's slices with cluster store {}",
                self.store().describe()
            )),
            (None, true) => None,
        }
    }

    fn agent_lock(&self, agent: &AgentName) -> Arc<tokio::sync::Mutex<Option<String>>> {
        self.acquiring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(agent.clone())
            .or_default()
            .clone()
    }

    /// The store failed a moment ago: fail now rather than wait for another timeout.
    fn failing(&self) -> Option<ClusterError> {
        let h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        match (&h.error, h.failed_at) {
            (Some(e), Some(at)) if at.elapsed() < FAIL_FAST => Some(ClusterError::Unreachable {
                url: self.store().describe(),
                detail: e.clone(),
            }),
            _ => None,
        }
    }

    async fn wait_ready(&self) -> Result<(), ClusterError> {
        let mut rx = self.ready.subscribe();
        let wait = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|r| *r)).await;
        match wait {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ClusterError::Unreachable {
                url: self.store().describe(),
                detail: self
                    .not_ready()
                    .unwrap_or_else(|| "not reconciled yet".into()),
            }),
        }
    }

    /// Leases a slice of at least `min` (ideally `want`) for `agent`, records it durably, and
    /// returns. `carve` tries the request's carve (under this agent's grant lock, so concurrent
    /// requests of one agent share one store round trip); `Ok(None)` means it carved.
    #[expect(
        clippy::too_many_arguments,
        reason = "the request's amounts and the ledger's handles; one caller each way"
    )]
    pub async fn acquire(
        &self,
        agent: &AgentName,
        min: MicroUsd,
        want: MicroUsd,
        clock: &dyn Clock,
        tx: &mpsc::Sender<Op>,
        wait_idle: bool,
        carved: impl Fn() -> bool,
    ) -> Result<Option<Acquired>, ClusterError> {
        self.wait_ready().await?;
        let lock = self.agent_lock(agent);
        let mut pending = lock.lock().await;
        if carved() {
            return Ok(None);
        }
        let started = Instant::now();
        let mut noted = false;
        loop {
            if let Some(e) = self.failing() {
                return Err(e);
            }
            if !noted {
                let r = self.store().note_holder(&self.opts.node, agent).await;
                self.note(&r);
                r?;
                noted = true;
            }
            let id = pending.take().unwrap_or_else(|| {
                format!(
                    "{}:{:x}:g{}",
                    self.opts.node,
                    self.incarnation,
                    self.next_grant.fetch_add(1, Ordering::Relaxed)
                )
            });
            let call = GrantCall {
                id: id.clone(),
                node: self.opts.node.clone(),
                agent: agent.clone(),
                want: want.max(min),
                min,
                starts: PeriodStarts::at(clock.now()),
                divisor: self.opts.divisor,
            };
            let r = self.store().grant(&call).await;
            self.note(&r);
            let reply: GrantReply = match r {
                Ok(g) => g,
                Err(e) => {
                    // The store may have granted it: the next attempt asks with the same id.
                    *pending = Some(id);
                    return Err(e);
                }
            };
            if reply.granted > MicroUsd::ZERO {
                let (done, rx) = oneshot::channel();
                let op = Op::ClusterGrant {
                    agent: agent.clone(),
                    amount: reply.granted,
                    reply: done,
                };
                if tx.send(op).await.is_err() {
                    return Err(self.closed());
                }
                match rx.await {
                    Ok(Ok(())) => return Ok(Some(Acquired::Granted)),
                    // Not recorded: the slice stays counted in the store (stranded, never lost
                    // budget) until the next start reconciles it.
                    _ => return Err(self.closed()),
                }
            }
            let refusal = reply.refusal.unwrap_or(Refusal::Exhausted {
                level: 0,
                period: crate::period::Period::Total,
                limit: MicroUsd::ZERO,
                spent: MicroUsd::ZERO,
                outstanding: MicroUsd::ZERO,
            });
            // Slices held elsewhere may be idle: they come back within the idle time.
            let others_hold = matches!(refusal, Refusal::Exhausted { limit, spent, outstanding, .. }
                if limit.0.saturating_sub(spent.0) >= min.0 && outstanding > MicroUsd::ZERO);
            if wait_idle && others_hold && started.elapsed() < recall_wait(&self.opts) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            return Ok(Some(Acquired::Refused(refusal)));
        }
    }

    fn closed(&self) -> ClusterError {
        ClusterError::Unreachable {
            url: self.store().describe(),
            detail: "the node ledger could not record the grant (see its errors)".into(),
        }
    }

    /// Pushes the outbox until it is empty or the store fails; returns whether it emptied.
    /// One settle call per agent carries all of that agent's entries (oldest first), so the store
    /// sees at most one call per agent per push, however many requests settled in between.
    pub async fn push(
        &self,
        state: &Mutex<State>,
        tx: &mpsc::Sender<Op>,
        clock: &dyn Clock,
    ) -> bool {
        self.push_until(state, tx, clock, Until::Empty).await
    }

    /// [`Link::push`] for the background pusher: what the outbox holds now (all of it, if it is a
    /// backlog of several reads), not what settles while it sends. Entries that arrive meanwhile
    /// wait for the next gather, so a busy node sends one settle per agent per [`PUSH_GATHER`]
    /// instead of one per store round trip (measured: 0.38 store calls per request at 1,000 RPS
    /// before, with the loop chasing its own tail).
    async fn push_gathered(
        &self,
        state: &Mutex<State>,
        tx: &mpsc::Sender<Op>,
        clock: &dyn Clock,
    ) -> bool {
        self.push_until(state, tx, clock, Until::Backlog).await
    }

    async fn push_until(
        &self,
        state: &Mutex<State>,
        tx: &mpsc::Sender<Op>,
        clock: &dyn Clock,
        until: Until,
    ) -> bool {
        loop {
            let mut by_agent: BTreeMap<AgentName, Vec<SettleEntry>> = BTreeMap::new();
            let mut taken = 0usize;
            {
                let st = state.lock().unwrap_or_else(PoisonError::into_inner);
                for (seq, e) in st.outbox.iter().take(PUSH_MAX_ENTRIES) {
                    taken += 1;
                    by_agent
                        .entry(e.agent.clone())
                        .or_default()
                        .push(SettleEntry {
                            seq: *seq,
                            charge: MicroUsd(e.charge),
                            release: MicroUsd(e.release),
                        });
                }
            }
            if by_agent.is_empty() {
                return true;
            }
            let mut done = Vec::new();
            let mut ok = true;
            let starts = PeriodStarts::at(clock.now());
            for (agent, entries) in by_agent {
                let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
                let call = SettleCall {
                    node: self.opts.node.clone(),
                    epoch: self.epoch,
                    agent,
                    entries,
                    starts,
                };
                let r = self.store().settle(&call).await;
                self.note(&r);
                match r {
                    Ok(_) => done.extend(seqs),
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            if !done.is_empty() && tx.send(Op::OutboxDone { ids: done }).await.is_err() {
                return false;
            }
            if !ok {
                return false;
            }
            // Wait for the deletions to be applied before reading the outbox again.
            let (f, rx) = oneshot::channel();
            if tx.send(Op::Flush { reply: f }).await.is_err() || rx.await.is_err() {
                return false;
            }
            if until == Until::Backlog && taken < PUSH_MAX_ENTRIES {
                return true;
            }
        }
    }

    /// Start: push what the previous run left in the outbox, then make the store's idea of what
    /// this node holds match its redb (a grant recorded in the store but not here — the node
    /// died in between — is released).
    async fn reconcile(
        &self,
        state: &Mutex<State>,
        tx: &mpsc::Sender<Op>,
        clock: &dyn Clock,
    ) -> Result<(), ClusterError> {
        if !self.push(state, tx, clock).await {
            return Err(self
                .not_ready()
                .map(|detail| ClusterError::Unreachable {
                    url: self.store().describe(),
                    detail,
                })
                .unwrap_or_else(|| self.closed()));
        }
        let r = self.store().held_by(&self.opts.node).await;
        self.note(&r);
        for agent in r? {
            let local = {
                let st = state.lock().unwrap_or_else(PoisonError::into_inner);
                st.leases
                    .get(&agent)
                    .and_then(|l| st.reservations.get(&l.row))
                    .map_or(MicroUsd::ZERO, |r| r.amount)
            };
            let r = self.store().set_held(&self.opts.node, &agent, local).await;
            self.note(&r);
            let before = r?;
            if before != local {
                tracing::warn!(agent = %agent, store = %before, node = %local, "cluster store: reconciled what this node holds");
            }
        }
        Ok(())
    }

    /// Follows policy changes (limits, pauses, shared settings) if the version moved.
    async fn sync(
        &self,
        seen: &mut Option<u64>,
        tx: &mpsc::Sender<Op>,
    ) -> Result<(), ClusterError> {
        let r = self.store().policy_version().await;
        self.note(&r);
        let v = r?;
        if self.force_sync.swap(false, Ordering::Relaxed) {
            *seen = None;
        }
        if *seen == Some(v) {
            return Ok(());
        }
        let policies = self.store().policies().await;
        self.note(&policies);
        let shared = self.store().shared().await;
        self.note(&shared);
        let (f, rx) = oneshot::channel();
        let op = Op::SyncPolicies {
            policies: policies?,
            shared: shared?,
            reply: f,
        };
        if tx.send(op).await.is_ok() && matches!(rx.await, Ok(Ok(()))) {
            *seen = Some(v);
        }
        Ok(())
    }

    /// The node's background work, until the ledger closes.
    pub async fn run(
        self: Arc<Self>,
        state: Arc<Mutex<State>>,
        tx: mpsc::WeakSender<Op>,
        clock: Arc<dyn Clock>,
    ) {
        match self.store().durability_warning().await {
            Ok(Some(w)) => tracing::error!("{w}"),
            Ok(None) => {}
            Err(e) => tracing::warn!("cluster store: cannot check its persistence: {e}"),
        }
        let mut seen = None;
        // Reconcile before the first grant; retry until the store answers.
        loop {
            let Some(tx) = tx.upgrade() else { return };
            let synced = self.sync(&mut seen, &tx).await;
            if synced.is_ok() && self.reconcile(&state, &tx, clock.as_ref()).await.is_ok() {
                break;
            }
            drop(tx);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ready = true;
        self.ready.send_replace(true);
        tracing::info!(node = %self.opts.node, store = %self.store().describe(), "cluster store: reconciled; leasing budget slices");

        let pusher = {
            let me = self.clone();
            let state = state.clone();
            let tx = tx.clone();
            let clock = clock.clone();
            tokio::spawn(async move {
                loop {
                    let Some(sender) = tx.upgrade() else { return };
                    let emptied = me.push_gathered(&state, &sender, clock.as_ref()).await;
                    drop(sender);
                    let wait = if emptied {
                        Duration::from_millis(500)
                    } else {
                        Duration::from_millis(250)
                    };
                    if tokio::time::timeout(wait, me.outbox_wake.notified())
                        .await
                        .is_ok()
                    {
                        tokio::time::sleep(PUSH_GATHER).await;
                    }
                }
            })
        };
        let tick = (self.opts.poll.min(self.opts.idle / 4)).max(Duration::from_millis(20));
        let mut next_sync = Instant::now();
        loop {
            tokio::time::sleep(tick).await;
            let Some(sender) = tx.upgrade() else { break };
            if Instant::now() >= next_sync {
                let _ = self.sync(&mut seen, &sender).await;
                next_sync = Instant::now() + self.opts.poll;
            }
            let idle = {
                let now = clock.now();
                let st = state.lock().unwrap_or_else(PoisonError::into_inner);
                st.idle_leases(now, self.opts.idle)
            };
            if !idle.is_empty() && sender.send(Op::ReclaimIdle { agents: idle }).await.is_err() {
                break;
            }
        }
        pusher.abort();
    }
}
