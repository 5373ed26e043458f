//! The lease meter: what each budget lease has left, kept where a crash of the process cannot
//! lose it, so the next start hands the unused part back instead of charging it.
//!
//! Carves are decided in memory (lease.rs); only the lease *row* is durable, and it covers the
//! open carves plus the slice's unused part. Without more, a crash (`kill -9`, OOM) must charge
//! the whole row — the unused part included, because nothing durable says how much of it was
//! carved. On a node holding cluster slices that is budget the whole fleet loses until the next
//! period.
//!
//! The meter is a small file mapped shared into memory (`ledger.meter` beside `ledger.redb`): one
//! slot per lease row, `(row id, row created, unused µUSD)`. A carve stores the lease's new unused
//! amount into its slot before the request can be forwarded — a plain atomic store into the page
//! cache, no system call — and the kernel keeps the page when the process dies, as Envoy's hot
//! restart keeps its shared-memory stats. So after a process crash on the same boot, recovery
//! charges a lease row `row − unused`: every carve at its worst case, nothing of the unused part.
//!
//! Why that never under-charges: the slot may say *less* is unused than really is (a crash then
//! charges a little too much), never more. Anything that lowers `unused` (a carve, a hand-back)
//! is stored before it takes effect; anything that raises it (a grant, an undone hand-back) only
//! after the commit that durably grew the row. Recovery never hands back more than the row holds.
//!
//! Not trusted, so the row is charged in full as before: a meter of another boot (the page cache
//! did not survive: power loss, kernel crash, reboot), of another ledger (an old file, a restored
//! backup), a damaged or missing one, and any row without a slot (more leases than slots, or a
//! crash between a grant's commit and its slot). The meter is rewritten from scratch at every
//! start, after recovery.

#![allow(unsafe_code)] // The mapping itself; every access goes through `AtomicU64`s, see `slots`.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};

/// File magic and layout version.
const MAGIC: &[u8; 8] = b"SGMETER1";
/// Header: magic (8), ledger id (8), boot id (36 ASCII, padded to 48); then the slots.
const HEADER_WORDS: usize = 8;
const BOOT_AT: usize = 16;
const BOOT_LEN: usize = 36;
/// Slots of three words: row id (0 = free), row created (µs since the epoch), unused (µUSD).
const SLOT_WORDS: usize = 3;
/// Leases that can be metered at once (one per agent holding a slice; ~384 KiB of file). A lease
/// beyond it still works; a crash charges its row in full.
pub(crate) const SLOTS: usize = 16_384;
const FILE_BYTES: usize = (HEADER_WORDS + SLOTS * SLOT_WORDS) * 8;

/// What a previous process left in the meter: unused µUSD by lease row, where trustworthy.
#[derive(Debug, Default)]
pub(crate) struct Leftover {
    rows: HashMap<u64, (i64, u64)>,
}

impl Leftover {
    /// The unused part of lease row `row` (created at `created`) at the crash, if the meter knew.
    pub fn unused(&self, row: u64, created: DateTime<Utc>) -> Option<u64> {
        self.rows
            .get(&row)
            .filter(|(c, _)| *c == created.timestamp_micros())
            .map(|(_, u)| *u)
    }
}

/// The live meter of this process.
pub(crate) struct LeaseMeter {
    map: Option<memmap2::MmapMut>,
    slot_of: HashMap<u64, usize>,
    free: Vec<usize>,
}

impl std::fmt::Debug for LeaseMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseMeter")
            .field("mapped", &self.map.is_some())
            .field("rows", &self.slot_of.len())
            .finish()
    }
}

impl Default for LeaseMeter {
    /// No file: every lease row is charged in full after a crash (as without a meter).
    fn default() -> Self {
        LeaseMeter {
            map: None,
            slot_of: HashMap::new(),
            free: Vec::new(),
        }
    }
}

/// The meter's file for the ledger at `ledger`.
pub(crate) fn path_for(ledger: &Path) -> PathBuf {
    ledger.with_extension("meter")
}

/// This boot's id, as the kernel tells it.
pub(crate) fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| s.len() == BOOT_LEN)
}

fn words(map: &memmap2::MmapMut) -> &[AtomicU64] {
    // SAFETY: the mapping is FILE_BYTES long (checked at map time), page-aligned (so 8-aligned),
    // and lives as long as the borrow. Every read and write of it goes through these atomics; no
    // plain reference to its bytes exists while they do (header bytes are copied out before and
    // written before the slice is made). Another process writing the file concurrently would only
    // change the numbers read, which recovery bounds by the durable row anyway.
    unsafe { std::slice::from_raw_parts(map.as_ptr().cast::<AtomicU64>(), FILE_BYTES / 8) }
}

impl LeaseMeter {
    /// Reads what the previous process of this ledger left (trusted only on the same boot and
    /// ledger), then starts a fresh meter in its place. A meter that cannot be created is logged
    /// and replaced by none: crashes then charge lease rows in full, as before.
    pub fn open(path: &Path, ledger_id: u64, boot: Option<&str>) -> (LeaseMeter, Leftover) {
        let leftover = match read_leftover(path, ledger_id, boot) {
            Ok(l) => l,
            Err(why) => {
                if path.exists() {
                    tracing::info!(path = %path.display(), why, "lease meter of the previous run not used: a crash's unused slices are charged in full");
                }
                Leftover::default()
            }
        };
        let meter = match LeaseMeter::create(path, ledger_id, boot) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot create the lease meter: after a crash, every unused budget slice will be charged in full");
                LeaseMeter::default()
            }
        };
        (meter, leftover)
    }

    fn create(path: &Path, ledger_id: u64, boot: Option<&str>) -> std::io::Result<LeaseMeter> {
        let Some(boot) = boot else {
            return Err(std::io::Error::other("this boot's id is unknown"));
        };
        // A new file every start: the old one was read, and a half-written one must never be
        // mistaken for this run's.
        let tmp = path.with_extension("meter.new");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.set_len(FILE_BYTES as u64)?;
        // SAFETY: the file is ours (just created, renamed into place below); see `words`.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&file)? };
        if map.len() != FILE_BYTES {
            return Err(std::io::Error::other("mapping has the wrong size"));
        }
        map[8..16].copy_from_slice(&ledger_id.to_le_bytes());
        map[BOOT_AT..BOOT_AT + BOOT_LEN].copy_from_slice(boot.as_bytes());
        map[..8].copy_from_slice(MAGIC);
        std::fs::rename(&tmp, path)?;
        Ok(LeaseMeter {
            map: Some(map),
            slot_of: HashMap::new(),
            free: (0..SLOTS).rev().collect(),
        })
    }

    /// Records that lease row `row` (created at `created`, looked up only for a new slot) has
    /// `unused` µUSD left. Callers store a lower value before it takes effect and a higher one
    /// only once it is durable (see the module docs).
    pub fn publish(
        &mut self,
        row: u64,
        unused: u64,
        created: impl FnOnce() -> Option<DateTime<Utc>>,
    ) {
        let Some(map) = &self.map else { return };
        let w = words(map);
        let slot = match self.slot_of.get(&row) {
            Some(s) => *s,
            None => {
                let (Some(slot), Some(created)) = (self.free.last().copied(), created()) else {
                    return;
                };
                self.free.pop();
                let at = HEADER_WORDS + slot * SLOT_WORDS;
                // The row id last: a slot is never seen naming a row with another row's numbers.
                w[at].store(0, Ordering::Release);
                w[at + 1].store(created.timestamp_micros() as u64, Ordering::Release);
                w[at + 2].store(unused, Ordering::Release);
                w[at].store(row, Ordering::Release);
                self.slot_of.insert(row, slot);
                return;
            }
        };
        w[HEADER_WORDS + slot * SLOT_WORDS + 2].store(unused, Ordering::Release);
    }

    /// The lease row is gone: its slot is free again.
    pub fn forget(&mut self, row: u64) {
        let Some(map) = &self.map else { return };
        if let Some(slot) = self.slot_of.remove(&row) {
            words(map)[HEADER_WORDS + slot * SLOT_WORDS].store(0, Ordering::Release);
            self.free.push(slot);
        }
    }

    /// Rows with a slot (tests).
    #[cfg(test)]
    pub fn rows(&self) -> usize {
        self.slot_of.len()
    }
}

fn read_leftover(path: &Path, ledger_id: u64, boot: Option<&str>) -> Result<Leftover, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() != FILE_BYTES || bytes[..8] != MAGIC[..] {
        return Err("not a lease meter of this version (size or magic)".into());
    }
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
        u64::from_le_bytes(b)
    };
    if word(1) != ledger_id {
        return Err("written for another ledger file".into());
    }
    let theirs = &bytes[BOOT_AT..BOOT_AT + BOOT_LEN];
    if boot.is_none_or(|b| b.as_bytes() != theirs) {
        return Err("written during another boot: the page cache did not survive".into());
    }
    let mut rows = HashMap::new();
    for s in 0..SLOTS {
        let at = HEADER_WORDS + s * SLOT_WORDS;
        let row = word(at);
        if row != 0 {
            rows.insert(row, (word(at + 1) as i64, word(at + 2)));
        }
    }
    Ok(Leftover { rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: &str = "0b7c1c3e-5a3f-4d7e-9a53-1f0e7c2d9b11";

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("test time")
    }

    #[test]
    fn a_crash_on_the_same_boot_leaves_each_rows_unused_part() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = path_for(&dir.path().join("ledger.redb"));
        let t = at("2026-12-03T10:00:00Z");
        let (mut m, left) = LeaseMeter::open(&path, 7, Some(BOOT));
        assert!(left.rows.is_empty(), "a first start has nothing left over");
        m.publish(3, 900, || Some(t));
        m.publish(4, 50, || Some(t));
        m.publish(3, 800, || None);
        m.publish(5, 10, || Some(t));
        m.forget(5);
        assert_eq!(m.rows(), 2);
        // The process dies: the mapping's pages are what the next process reads.
        std::mem::forget(m);
        let (_m, left) = LeaseMeter::open(&path, 7, Some(BOOT));
        assert_eq!(left.unused(3, t), Some(800));
        assert_eq!(left.unused(4, t), Some(50));
        assert_eq!(
            left.unused(5, t),
            None,
            "a forgotten row is charged in full"
        );
        assert_eq!(
            left.unused(3, at("2026-12-03T10:00:01Z")),
            None,
            "a row id reused by another row is not believed"
        );
        // ...and the new meter starts empty.
        let (_m, left) = LeaseMeter::open(&path, 7, Some(BOOT));
        assert_eq!(left.unused(3, t), None);
    }

    #[test]
    fn another_boot_another_ledger_or_a_damaged_file_is_not_believed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = path_for(&dir.path().join("ledger.redb"));
        let t = at("2026-12-03T10:00:00Z");
        let crash = |boot: &str| {
            let (mut m, _) = LeaseMeter::open(&path, 7, Some(boot));
            m.publish(3, 900, || Some(t));
            std::mem::forget(m);
        };
        crash(BOOT);
        let other = "11111111-2222-3333-4444-555555555555";
        let (_m, left) = LeaseMeter::open(&path, 7, Some(other));
        assert_eq!(left.unused(3, t), None, "another boot");
        crash(BOOT);
        let (_m, left) = LeaseMeter::open(&path, 8, Some(BOOT));
        assert_eq!(left.unused(3, t), None, "another ledger");
        crash(BOOT);
        let (_m, left) = LeaseMeter::open(&path, 7, None);
        assert_eq!(left.unused(3, t), None, "boot id unknown");
        crash(BOOT);
        let mut bytes = std::fs::read(&path).expect("read meter");
        bytes.truncate(100);
        std::fs::write(&path, bytes).expect("damage meter");
        let (_m, left) = LeaseMeter::open(&path, 7, Some(BOOT));
        assert_eq!(left.unused(3, t), None, "a damaged file");
    }

    #[test]
    fn more_leases_than_slots_are_charged_in_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = path_for(&dir.path().join("ledger.redb"));
        let t = at("2026-12-03T10:00:00Z");
        let (mut m, _) = LeaseMeter::open(&path, 7, Some(BOOT));
        for row in 1..=(SLOTS as u64 + 1) {
            m.publish(row, 1, || Some(t));
        }
        std::mem::forget(m);
        let (_m, left) = LeaseMeter::open(&path, 7, Some(BOOT));
        assert_eq!(left.unused(SLOTS as u64, t), Some(1));
        assert_eq!(left.unused(SLOTS as u64 + 1, t), None);
    }
}
