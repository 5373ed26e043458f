//! The redb side of the ledger: table layout, encoding, load, the batch write.
//!
//! | table          | key                       | value (JSON, amounts in µUSD)                      |
//! |----------------|---------------------------|----------------------------------------------------|
//! | `meta`         | `&str`                    | `u64`: `schema_version`, `next_reservation_id`, `next_audit_id` |
//! | `agents`       | agent name `&str`         | own limits, paused, 4 period counters (start, spent, notified flags) of its subtree |
//! | `reservations` | reservation id `u64`      | open reservation: agent, amount, created, audit id |
//! | `audit`        | event id `u64` (in commit order) | one request: time, agent, context, decision, reason, requested, reserved, final cost |
//! | `settings`     | key `&str`                | any JSON value (tags, price overrides, ...)        |
//! | `cluster_outbox` | entry id `u64`          | what the cluster store still has to hear: agent, charge, release (see `outbox.rs`) |
//!
//! Every batch is one write transaction with `Durability::Immediate`: when `commit` returns, the
//! reservations in it survive a crash. Open reservations are exactly the `reservations` rows, so
//! after a crash the next open knows what was in flight and charges it.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use chrono::{DateTime, Utc};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::agent::AgentName;
use crate::error::LedgerError;
use crate::limits::Limits;
use crate::money::MicroUsd;
use crate::state::{AgentEntry, AuditRecord, Counter, Effects, OpenReservation, State};
use crate::types::{AuditContext, AuditEvent, AuditFilter, Decision};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");
const RESERVATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("reservations");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");
/// Added with cluster budgets (additive: a database without it simply has an empty outbox).
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("cluster_outbox");
const KEY_NEXT_OUTBOX: &str = "next_outbox_id";

/// Version 1: release 0.1. Version 2 adds the ledger's identity (`ledger_id`, `created_at`),
/// which the agent's state manifest records, so a ledger that went missing (or was swapped for
/// another node's) is noticed instead of silently starting every budget at zero.
pub(crate) const SCHEMA_VERSION: u64 = 2;
const KEY_SCHEMA: &str = "schema_version";
const KEY_LEDGER_ID: &str = "ledger_id";
const KEY_CREATED_AT: &str = "created_at";
const KEY_MIGRATED_FROM: &str = "migrated_from";
const KEY_NEXT_RESERVATION: &str = "next_reservation_id";
const KEY_NEXT_AUDIT: &str = "next_audit_id";

/// A random 63-bit id (from the kernel's entropy; the clock and pid as a fallback).
fn new_ledger_id() -> u64 {
    let mut b = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_ok();
    let id = if random {
        u64::from_ne_bytes(b)
    } else {
        (Utc::now().timestamp_nanos_opt().unwrap_or(0) as u64) ^ u64::from(std::process::id())
    };
    (id >> 1).max(1)
}

/// At most this many expired audit events are deleted per batch, so compaction never makes one
/// commit slow.
pub(crate) const COMPACT_PER_BATCH: usize = 1024;

#[derive(Serialize, Deserialize)]
struct StoredLimits {
    per_call: Option<MicroUsd>,
    daily: Option<MicroUsd>,
    weekly: Option<MicroUsd>,
    monthly: Option<MicroUsd>,
    total: Option<MicroUsd>,
    expires_at: Option<DateTime<Utc>>,
    pause_on_exhaust: bool,
    webhook: Option<String>,
    soft_threshold_pct: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    other_hosts: Option<crate::limits::OtherHosts>,
    /// Added after schema 2's first release: absent = inherited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<crate::limits::Mode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tz: Option<crate::zone::Zone>,
}

#[derive(Serialize, Deserialize)]
struct StoredAgent {
    limits: StoredLimits,
    paused: bool,
    counters: [Counter; 4],
}

#[derive(Serialize, Deserialize)]
struct StoredReservation {
    agent: AgentName,
    amount: MicroUsd,
    created: DateTime<Utc>,
    audit_id: u64,
    /// A budget lease row (its audit event is only written if a crash charges it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    lease: bool,
}

#[derive(Deserialize)]
struct TimeOnly {
    time: DateTime<Utc>,
}

fn stored_agent(e: &AgentEntry) -> StoredAgent {
    let l = &e.limits;
    StoredAgent {
        limits: StoredLimits {
            per_call: l.per_call,
            daily: l.daily,
            weekly: l.weekly,
            monthly: l.monthly,
            total: l.total,
            expires_at: l.expires_at,
            pause_on_exhaust: l.pause_on_exhaust,
            webhook: l.webhook.clone(),
            soft_threshold_pct: l.soft_threshold_pct,
            other_hosts: l.other_hosts,
            mode: l.mode,
            tz: l.tz.clone(),
        },
        paused: e.paused,
        counters: e.counters,
    }
}

/// Opens (or creates) the database. Called again after a failed commit, since redb refuses
/// every operation after an I/O error until the database is reopened.
pub(crate) type Opener = Box<dyn Fn() -> Result<Database, redb::DatabaseError> + Send + Sync>;

/// Bytes to write in one transaction, prepared under the state lock.
///
/// Every row is encoded into one buffer (`buf`) and named by its byte range, and the committer
/// reuses one `WriteSet` from batch to batch ([`WriteSet::rebuild`]): a row used to be a `Vec`
/// of its own, grown two or three times while serde_json wrote it — about four allocations per
/// settled request, which now cost none once the buffers have grown to a batch's size. The
/// bytes of each row are exactly what `serde_json::to_vec` wrote before.
#[derive(Debug, Default)]
pub(crate) struct WriteSet {
    buf: Vec<u8>,
    agents: Vec<(AgentName, Range<usize>)>,
    reservations: Vec<(u64, Option<Range<usize>>)>,
    audit: Vec<(u64, Range<usize>)>,
    settings: Vec<(String, Option<Range<usize>>)>,
    outbox: Vec<(u64, Option<Range<usize>>)>,
    next_reservation_id: u64,
    next_audit_id: u64,
    next_outbox_id: u64,
    compact_before: Option<DateTime<Utc>>,
}

impl WriteSet {
    pub fn build(
        state: &State,
        fx: &Effects,
        compact_before: Option<DateTime<Utc>>,
    ) -> Result<WriteSet, LedgerError> {
        let mut ws = WriteSet::default();
        ws.rebuild(state, fx, compact_before)?;
        Ok(ws)
    }

    /// Refills this write set for another batch, keeping its buffers' capacity.
    pub fn rebuild(
        &mut self,
        state: &State,
        fx: &Effects,
        compact_before: Option<DateTime<Utc>>,
    ) -> Result<(), LedgerError> {
        self.buf.clear();
        self.agents.clear();
        self.reservations.clear();
        self.audit.clear();
        self.settings.clear();
        self.outbox.clear();
        self.next_reservation_id = state.next_reservation_id;
        self.next_audit_id = state.next_audit_id;
        self.next_outbox_id = state.next_outbox;
        self.compact_before = compact_before;
        for id in &fx.outbox {
            let row = match state.outbox.get(id) {
                Some(e) => Some(self.encode("a cluster outbox entry", e)?),
                None => None,
            };
            self.outbox.push((*id, row));
        }
        for name in &fx.agents {
            if let Some(e) = state.agents.get(name) {
                let row = self.encode("an agent record", &stored_agent(e))?;
                self.agents.push((name.clone(), row));
            }
        }
        for id in &fx.reservations {
            let row = match state.reservations.get(id) {
                Some(r) => Some(self.encode(
                    "a reservation",
                    &StoredReservation {
                        agent: r.agent.clone(),
                        amount: r.amount,
                        created: r.created,
                        audit_id: r.audit.id,
                        lease: r.audit.ctx.model == crate::lease::LEASE_MODEL,
                    },
                )?),
                None => None,
            };
            self.reservations.push((*id, row));
        }
        for (id, rec) in &fx.audit {
            let row = self.encode("an audit event", rec)?;
            self.audit.push((*id, row));
        }
        for (k, v) in &fx.settings {
            let v = match v {
                Some(v) => Some(self.encode("a setting", v)?),
                None => None,
            };
            self.settings.push((k.clone(), v));
        }
        Ok(())
    }

    /// Appends `v`'s JSON to the buffer; its range there.
    fn encode<T: Serialize>(
        &mut self,
        what: &'static str,
        v: &T,
    ) -> Result<Range<usize>, LedgerError> {
        let start = self.buf.len();
        serde_json::to_writer(&mut self.buf, v).map_err(|e| LedgerError::Encode {
            what,
            detail: e.to_string(),
        })?;
        Ok(start..self.buf.len())
    }

    fn row(&self, range: &Range<usize>) -> &[u8] {
        // Ranges are only ever made by `encode` over this same buffer.
        self.buf.get(range.clone()).unwrap_or_default()
    }
}

/// Read access for queries outside the committer (audit).
#[derive(Debug, Clone)]
pub(crate) struct Reader {
    path: PathBuf,
    slot: Arc<RwLock<Option<Arc<Database>>>>,
}

impl Reader {
    fn db(&self) -> Result<Arc<Database>, LedgerError> {
        self.slot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(LedgerError::Closed)
    }

    pub fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, LedgerError> {
        let path = self.path.as_path();
        let db = self.db()?;
        let txn = db
            .begin_read()
            .map_err(|e| LedgerError::storage(path, "reading the audit log")(e.into()))?;
        let table = txn
            .open_table(AUDIT)
            .map_err(|e| LedgerError::storage(path, "reading the audit log")(e.into()))?;
        let iter = table
            .iter()
            .map_err(|e| LedgerError::storage(path, "reading the audit log")(e.into()))?;
        let mut out = Vec::new();
        for item in iter.rev() {
            let (k, v) =
                item.map_err(|e| LedgerError::storage(path, "reading the audit log")(e.into()))?;
            let rec: AuditRecord = decode(path, "audit", &k.value(), v.value())?;
            if filter.since.is_some_and(|since| rec.time < since) {
                break; // ids follow commit order, so everything further back is older
            }
            if filter
                .agent
                .as_ref()
                .is_some_and(|a| !rec.agent.is_within(a))
            {
                continue;
            }
            out.push(rec.to_event());
            if filter.limit > 0 && out.len() >= filter.limit {
                break;
            }
        }
        out.reverse();
        Ok(out)
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    path: &Path,
    table: &'static str,
    key: &dyn std::fmt::Display,
    bytes: &[u8],
) -> Result<T, LedgerError> {
    serde_json::from_slice(bytes).map_err(|e| LedgerError::Corrupt {
        path: path.to_path_buf(),
        table,
        key: key.to_string(),
        detail: e.to_string(),
    })
}

pub(crate) struct Store {
    path: PathBuf,
    opener: Opener,
    slot: Arc<RwLock<Option<Arc<Database>>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    pub fn new(path: PathBuf, opener: Opener) -> Store {
        Store {
            path,
            opener,
            slot: Arc::new(RwLock::new(None)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn reader(&self) -> Reader {
        Reader {
            path: self.path.clone(),
            slot: self.slot.clone(),
        }
    }

    fn db(&self) -> Result<Arc<Database>, LedgerError> {
        self.reader().db()
    }

    /// Opens the database and creates the tables of a new one.
    pub fn open(&self) -> Result<(), LedgerError> {
        let path = self.path.as_path();
        let db = (self.opener)().map_err(|e| {
            // An I/O error (permissions, a full disk) is the operator's to fix in place; anything
            // else means the bytes are not a ledger any more.
            let damaged = match &e {
                redb::DatabaseError::Storage(redb::StorageError::Io(io)) => matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                ),
                redb::DatabaseError::DatabaseAlreadyOpen => false,
                _ => true,
            };
            if damaged {
                LedgerError::Damaged {
                    path: path.to_path_buf(),
                    source: Arc::new(e),
                }
            } else {
                LedgerError::Open {
                    path: path.to_path_buf(),
                    source: Arc::new(e),
                }
            }
        })?;
        let err = |e: redb::Error| LedgerError::storage(path, "initialising the tables")(e);
        let mut txn = db.begin_write().map_err(|e| err(e.into()))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| err(e.into()))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            let found = meta
                .get(KEY_SCHEMA)
                .map_err(|e| err(e.into()))?
                .map(|g| g.value());
            let identity = |meta: &mut redb::Table<'_, &str, u64>| -> Result<(), LedgerError> {
                meta.insert(KEY_LEDGER_ID, new_ledger_id())
                    .map_err(|e| err(e.into()))?;
                meta.insert(KEY_CREATED_AT, Utc::now().timestamp().max(0) as u64)
                    .map_err(|e| err(e.into()))?;
                meta.insert(KEY_SCHEMA, SCHEMA_VERSION)
                    .map_err(|e| err(e.into()))?;
                Ok(())
            };
            match found {
                None => identity(&mut meta)?,
                Some(SCHEMA_VERSION) => {}
                Some(1) => {
                    // In place, in this one transaction: a crash leaves version 1 or version 2.
                    identity(&mut meta)?;
                    meta.insert(KEY_MIGRATED_FROM, 1)
                        .map_err(|e| err(e.into()))?;
                    tracing::info!(path = %path.display(), "ledger migrated from schema version 1 to {SCHEMA_VERSION}");
                }
                Some(found) => {
                    return Err(LedgerError::SchemaVersion {
                        path: path.to_path_buf(),
                        found,
                        expected: SCHEMA_VERSION,
                    })
                }
            }
            txn.open_table(AGENTS).map_err(|e| err(e.into()))?;
            txn.open_table(RESERVATIONS).map_err(|e| err(e.into()))?;
            txn.open_table(AUDIT).map_err(|e| err(e.into()))?;
            txn.open_table(SETTINGS).map_err(|e| err(e.into()))?;
            txn.open_table(OUTBOX).map_err(|e| err(e.into()))?;
        }
        txn.commit().map_err(|e| err(e.into()))?;
        *self.slot.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(db));
        Ok(())
    }

    /// The ledger's identity: a random id given when it was created (or migrated to version 2).
    pub fn ledger_id(&self) -> Result<u64, LedgerError> {
        let path = self.path.as_path();
        let db = self.db()?;
        let err = |e: redb::Error| LedgerError::storage(path, "reading the ledger id")(e);
        let txn = db.begin_read().map_err(|e| err(e.into()))?;
        let meta = txn.open_table(META).map_err(|e| err(e.into()))?;
        let id = meta
            .get(KEY_LEDGER_ID)
            .map_err(|e| err(e.into()))?
            .map(|g| g.value());
        id.ok_or_else(|| LedgerError::Corrupt {
            path: path.to_path_buf(),
            table: "meta",
            key: KEY_LEDGER_ID.into(),
            detail: "missing".into(),
        })
    }

    /// Drops this handle on the database (it closes once no reader holds it either).
    pub fn close(&self) {
        self.slot
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Rebuilds the in-memory mirror from what is on disk.
    pub fn load(&self, defaults: Limits) -> Result<State, LedgerError> {
        let path = self.path.as_path();
        let db = self.db()?;
        let err = |e: redb::Error| LedgerError::storage(path, "loading the ledger")(e);
        let txn = db.begin_read().map_err(|e| err(e.into()))?;
        let mut state = State::new(defaults);

        let meta = txn.open_table(META).map_err(|e| err(e.into()))?;
        let get = |k: &str| -> Result<Option<u64>, LedgerError> {
            Ok(meta.get(k).map_err(|e| err(e.into()))?.map(|g| g.value()))
        };
        state.next_reservation_id = get(KEY_NEXT_RESERVATION)?.unwrap_or(1);
        state.next_audit_id = get(KEY_NEXT_AUDIT)?.unwrap_or(1);
        state.next_outbox = get(KEY_NEXT_OUTBOX)?.unwrap_or(1);

        let agents = txn.open_table(AGENTS).map_err(|e| err(e.into()))?;
        for item in agents.iter().map_err(|e| err(e.into()))? {
            let (k, v) = item.map_err(|e| err(e.into()))?;
            let key = k.value();
            let name = AgentName::new(key).map_err(|e| LedgerError::Corrupt {
                path: path.to_path_buf(),
                table: "agents",
                key: key.to_string(),
                detail: e.to_string(),
            })?;
            let s: StoredAgent = decode(path, "agents", &key, v.value())?;
            let l = s.limits;
            state.agents.insert(
                name,
                AgentEntry {
                    limits: Limits {
                        per_call: l.per_call,
                        daily: l.daily,
                        weekly: l.weekly,
                        monthly: l.monthly,
                        total: l.total,
                        expires_at: l.expires_at,
                        pause_on_exhaust: l.pause_on_exhaust,
                        webhook: l.webhook,
                        soft_threshold_pct: l.soft_threshold_pct,
                        other_hosts: l.other_hosts,
                        mode: l.mode,
                        tz: l.tz,
                    },
                    paused: s.paused,
                    counters: s.counters,
                    outstanding: 0,
                },
            );
        }

        let audit = txn.open_table(AUDIT).map_err(|e| err(e.into()))?;
        if let Some((k, _)) = audit.last().map_err(|e| err(e.into()))? {
            state.next_audit_id = state.next_audit_id.max(k.value() + 1);
        }
        let reservations = txn.open_table(RESERVATIONS).map_err(|e| err(e.into()))?;
        for item in reservations.iter().map_err(|e| err(e.into()))? {
            let (k, v) = item.map_err(|e| err(e.into()))?;
            let id = k.value();
            let r: StoredReservation = decode(path, "reservations", &id, v.value())?;
            let record = match audit.get(r.audit_id).map_err(|e| err(e.into()))? {
                Some(g) => decode(path, "audit", &r.audit_id, g.value())?,
                // A lease row, or compacted away while in flight: rebuild what we know.
                None => AuditRecord {
                    id: r.audit_id,
                    time: r.created,
                    agent: r.agent.clone(),
                    ctx: std::sync::Arc::new(AuditContext {
                        model: if r.lease {
                            crate::lease::LEASE_MODEL.to_string()
                        } else {
                            String::new()
                        },
                        ..AuditContext::default()
                    }),
                    decision: Decision::Allowed,
                    reason: None,
                    reservation_id: Some(id),
                    requested: r.amount,
                    reserved: r.amount,
                    final_cost: None,
                    settled_at: None,
                    recovered: false,
                },
            };
            for l in r.agent.ancestors_and_self() {
                let e = state.agents.entry(l).or_default();
                e.outstanding = e.outstanding.saturating_add(r.amount.0);
            }
            state.next_reservation_id = state.next_reservation_id.max(id + 1);
            state.reservations.insert(
                id,
                OpenReservation {
                    agent: r.agent,
                    amount: r.amount,
                    created: r.created,
                    audit: record,
                },
            );
        }

        let settings = txn.open_table(SETTINGS).map_err(|e| err(e.into()))?;
        for item in settings.iter().map_err(|e| err(e.into()))? {
            let (k, v) = item.map_err(|e| err(e.into()))?;
            let key = k.value();
            let value = decode(path, "settings", &key, v.value())?;
            state.settings.insert(key.to_string(), value);
        }

        let outbox = txn.open_table(OUTBOX).map_err(|e| err(e.into()))?;
        for item in outbox.iter().map_err(|e| err(e.into()))? {
            let (k, v) = item.map_err(|e| err(e.into()))?;
            let id = k.value();
            let e = decode(path, "cluster_outbox", &id, v.value())?;
            state.next_outbox = state.next_outbox.max(id + 1);
            state.outbox.insert(id, e);
        }
        Ok(state)
    }

    /// Writes one batch in one transaction: durable (fsync'd) when `durable`, otherwise
    /// `Durability::None` — visible to readers at once, on disk with the next durable commit
    /// (or at close); a crash before that loses it (the committer allows this only for carve
    /// settles, which the durable lease rows cover).
    pub fn write(&self, ws: &WriteSet, durable: bool) -> Result<(), LedgerError> {
        let path = self.path.as_path();
        let db = self.db()?;
        let err = |e: redb::Error| LedgerError::storage(path, "committing a batch")(e);
        let mut txn = db.begin_write().map_err(|e| err(e.into()))?;
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        txn.set_durability(durability).map_err(|e| err(e.into()))?;
        {
            let mut audit = txn.open_table(AUDIT).map_err(|e| err(e.into()))?;
            if let Some(cutoff) = ws.compact_before {
                compact(&mut audit, cutoff).map_err(|e| err(e.into()))?;
            }
            for (id, row) in &ws.audit {
                audit.insert(*id, ws.row(row)).map_err(|e| err(e.into()))?;
            }
            let mut reservations = txn.open_table(RESERVATIONS).map_err(|e| err(e.into()))?;
            for (id, row) in &ws.reservations {
                match row {
                    Some(row) => reservations.insert(*id, ws.row(row)),
                    None => reservations.remove(*id),
                }
                .map_err(|e| err(e.into()))?;
            }
            let mut agents = txn.open_table(AGENTS).map_err(|e| err(e.into()))?;
            for (name, row) in &ws.agents {
                agents
                    .insert(name.as_str(), ws.row(row))
                    .map_err(|e| err(e.into()))?;
            }
            if !ws.settings.is_empty() {
                let mut settings = txn.open_table(SETTINGS).map_err(|e| err(e.into()))?;
                for (k, v) in &ws.settings {
                    match v {
                        Some(row) => settings.insert(k.as_str(), ws.row(row)),
                        None => settings.remove(k.as_str()),
                    }
                    .map_err(|e| err(e.into()))?;
                }
            }
            if !ws.outbox.is_empty() {
                let mut outbox = txn.open_table(OUTBOX).map_err(|e| err(e.into()))?;
                for (id, row) in &ws.outbox {
                    match row {
                        Some(row) => outbox.insert(*id, ws.row(row)),
                        None => outbox.remove(*id),
                    }
                    .map_err(|e| err(e.into()))?;
                }
            }
            let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            meta.insert(KEY_NEXT_OUTBOX, ws.next_outbox_id)
                .map_err(|e| err(e.into()))?;
            meta.insert(KEY_NEXT_RESERVATION, ws.next_reservation_id)
                .map_err(|e| err(e.into()))?;
            meta.insert(KEY_NEXT_AUDIT, ws.next_audit_id)
                .map_err(|e| err(e.into()))?;
        }
        txn.commit().map_err(|e| err(e.into()))
    }
}

impl Store {
    /// Makes every commit so far durable: an empty durable transaction.
    pub fn persist(&self) -> Result<(), LedgerError> {
        let path = self.path.as_path();
        let db = self.db()?;
        let err = |e: redb::Error| LedgerError::storage(path, "making settles durable")(e);
        let mut txn = db.begin_write().map_err(|e| err(e.into()))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| err(e.into()))?;
        txn.commit().map_err(|e| err(e.into()))
    }
}

/// Deletes audit events older than `cutoff`, oldest first, at most [`COMPACT_PER_BATCH`].
fn compact(
    audit: &mut redb::Table<'_, u64, &'static [u8]>,
    cutoff: DateTime<Utc>,
) -> Result<usize, redb::StorageError> {
    let mut removed = 0;
    while removed < COMPACT_PER_BATCH {
        let first = audit
            .first()?
            .map(|(k, v)| (k.value(), serde_json::from_slice::<TimeOnly>(v.value())));
        match first {
            Some((id, Ok(t))) if t.time < cutoff => {
                audit.remove(id)?;
            }
            Some((id, Err(e))) => {
                tracing::warn!(event = id, error = %e, "removing an unreadable audit event during compaction");
                audit.remove(id)?;
            }
            _ => break,
        }
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::SettleKind;
    use crate::types::ReserveRequest;

    /// A reused write set writes, batch after batch, exactly the bytes a fresh `to_vec` of each
    /// row would (the on-disk format is unchanged), and nothing left over from the last batch.
    #[test]
    fn a_reused_write_set_writes_each_row_as_to_vec_did() {
        let now = Utc::now();
        let mut st = State::new(Limits::default());
        let agent: AgentName = "acme.bot".parse().expect("name");
        let mut ws = WriteSet::default();
        for round in 0..3u64 {
            let mut fx = Effects::default();
            st.begin_batch();
            let mut ids = Vec::new();
            for i in 0..=round {
                let req = ReserveRequest {
                    agent: agent.clone(),
                    amount: MicroUsd(100 + i),
                    audit: AuditContext {
                        cgroup: format!("/cg/{round}/{i}"),
                        host: "api.openai.com".into(),
                        model: "gpt-4o-mini".into(),
                        provider: "openai".into(),
                        ..AuditContext::default()
                    },
                };
                ids.push(st.reserve(req, now, &mut fx).expect("reserve").id);
            }
            // The first of this round settles in the same batch: a row deleted, an event written.
            st.settle(ids[0], MicroUsd(7), SettleKind::Usage, now, &mut fx)
                .expect("settle");
            ws.rebuild(&st, &fx, None).expect("write set");
            assert_eq!(ws.audit.len(), fx.audit.len());
            for ((id, row), (fid, rec)) in ws.audit.iter().zip(&fx.audit) {
                assert_eq!(id, fid);
                assert_eq!(
                    ws.row(row),
                    serde_json::to_vec(rec).expect("json").as_slice()
                );
            }
            assert_eq!(ws.agents.len(), fx.agents.len());
            for (name, row) in &ws.agents {
                let want = serde_json::to_vec(&stored_agent(&st.agents[name])).expect("json");
                assert_eq!(ws.row(row), want.as_slice(), "{name}");
            }
            let open = ws.reservations.iter().filter(|(_, r)| r.is_some()).count();
            assert_eq!(open as u64, round, "every reservation but the settled one");
            st.end_batch();
        }
    }
}
