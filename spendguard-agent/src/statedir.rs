//! The state directory across a node's life: what must be true of it before the agent serves, and
//! `spendguard-agent recover`, the one documented way out when it is not.
//!
//! The danger is a *silent fresh start*: a missing `ledger.redb` would be created empty and every
//! budget would start at zero. So the state dir carries a small manifest (`state.json`) naming the
//! ledger it belongs with (its `ledger_id`, schema 2). At start:
//! - ledger missing, manifest present (or tags present): refuse — the ledger was lost;
//! - ledger present but not the one the manifest names: refuse — a backup of another node, or an
//!   older copy, would under-count what was spent;
//! - damaged ledger, tags file or CA: refuse, naming the file (those errors come from their
//!   owners). Refusing leaves the pinned redirect in force: tagged traffic is refused, never
//!   unmetered.
//!
//! `recover` sets damaged files aside (never deletes them), starts a new ledger under a recovery
//! hold (every request refused until `spendguard recover --confirm`), and rebuilds lost tags from
//! the pinned tag map, as paused quarantine tags, so cgroups that were metered stay fail-closed.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::identity::tags::{Tag, TagSource, TagsFile, TAGS_FILE_VERSION};
use crate::identity::AgentName;
use crate::paths;

/// The manifest's format version.
const MANIFEST_VERSION: u32 = 1;

/// The agent that cgroups whose tags were lost are tagged as by `recover`; kept paused.
pub const RECOVERED_AGENT: &str = "spendguard.quarantine.recovered";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    /// The ledger this state dir belongs with (`Ledger::ledger_id`).
    pub ledger_id: u64,
    pub written: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("the ledger {path} is missing, but this node had one (ledger id {ledger_id:016x}, recorded in {manifest}): starting an empty ledger would reset every budget to zero, so the agent refuses to start (tagged traffic stays refused). Restore ledger.redb from a backup, or run `spendguard-agent recover` to start a new ledger that holds every request until an operator confirms the budgets")]
    LedgerMissing {
        path: PathBuf,
        manifest: PathBuf,
        ledger_id: u64,
    },
    #[error("the ledger {path} is missing, but {tags} holds {count} tags of a previous run: starting an empty ledger would reset every budget to zero, so the agent refuses to start. Restore ledger.redb from a backup, or run `spendguard-agent recover`")]
    LedgerMissingWithTags {
        path: PathBuf,
        tags: PathBuf,
        count: usize,
    },
    #[error("the ledger {path} (id {found:016x}) is not the one this node recorded in {manifest} (id {expected:016x}): a copy from another node or an older backup under-counts what was spent. Put the right file back, or run `spendguard-agent recover --adopt-ledger` to accept this one")]
    LedgerSwapped {
        path: PathBuf,
        manifest: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("the state manifest {path} is damaged ({detail}); restore it, or run `spendguard-agent recover` (it checks the ledger and writes a new one)")]
    ManifestCorrupt { path: PathBuf, detail: String },
    #[error("cannot write {path}: {source} (is the state directory writable and not full?)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads `state.json`; `None` when there is none (a new node, or one last run by release 0.1).
pub fn read_manifest(state_dir: &Path) -> Result<Option<Manifest>, StateError> {
    let path = paths::manifest_file(state_dir);
    match std::fs::read(&path) {
        Ok(bytes) => parse_manifest(&path, &bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StateError::ManifestCorrupt {
            path,
            detail: e.to_string(),
        }),
    }
}

/// Parses a manifest: the one step from its bytes, so it can be fuzzed.
pub fn parse_manifest(path: &Path, bytes: &[u8]) -> Result<Manifest, StateError> {
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| StateError::ManifestCorrupt {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    if m.version > MANIFEST_VERSION {
        return Err(StateError::ManifestCorrupt {
            path: path.to_path_buf(),
            detail: format!(
                "version {} is newer than this agent knows ({MANIFEST_VERSION})",
                m.version
            ),
        });
    }
    Ok(m)
}

/// Before the ledger is opened: refuse to create an empty ledger where one was lost.
pub fn check_before_open(state_dir: &Path) -> Result<(), StateError> {
    let ledger = paths::ledger_file(state_dir);
    if ledger.exists() {
        return Ok(());
    }
    if let Some(m) = read_manifest(state_dir)? {
        return Err(StateError::LedgerMissing {
            path: ledger,
            manifest: paths::manifest_file(state_dir),
            ledger_id: m.ledger_id,
        });
    }
    let tags = paths::tags_file(state_dir);
    // A damaged tags file is reported by the tag store; here only a readable one counts.
    if let Ok(file) = TagsFile::read(&tags) {
        if !file.tags.is_empty() {
            return Err(StateError::LedgerMissingWithTags {
                path: ledger,
                tags,
                count: file.tags.len(),
            });
        }
    }
    Ok(())
}

/// After the ledger is open: it must be the one this state dir recorded; records it if none was.
pub fn check_after_open(state_dir: &Path, ledger_id: u64) -> Result<(), StateError> {
    let manifest = paths::manifest_file(state_dir);
    match read_manifest(state_dir)? {
        Some(m) if m.ledger_id == ledger_id => Ok(()),
        Some(m) => Err(StateError::LedgerSwapped {
            path: paths::ledger_file(state_dir),
            manifest,
            found: ledger_id,
            expected: m.ledger_id,
        }),
        None => write_manifest(state_dir, ledger_id),
    }
}

pub fn write_manifest(state_dir: &Path, ledger_id: u64) -> Result<(), StateError> {
    let path = paths::manifest_file(state_dir);
    let m = Manifest {
        version: MANIFEST_VERSION,
        ledger_id,
        written: Utc::now(),
    };
    let bytes = serde_json::to_vec_pretty(&m).map_err(|e| StateError::Write {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    crate::identity::tags::write_atomic(&path, &bytes, paths::PRIVATE_FILE_MODE)
        .map_err(|source| StateError::Write { path, source })
}

/// Moves `path` aside as `<name>.damaged-<time>` (never deleted: an operator may want it back).
pub fn set_aside(path: &Path) -> std::io::Result<Option<PathBuf>> {
    if !path.exists() {
        return Ok(None);
    }
    let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let to = path.with_file_name(format!("{name}.damaged-{stamp}"));
    std::fs::rename(path, &to)?;
    Ok(Some(to))
}

/// Tags for cgroups the kernel still redirects (ids in the pinned tag map) whose tags were lost:
/// found by walking the cgroup v2 tree for directories with those ids, each tagged as the paused
/// [`RECOVERED_AGENT`] so it stays refused until an operator tags it again.
pub fn quarantine_tags(mount: &Path, ids: &[u64]) -> Vec<Tag> {
    let wanted: std::collections::HashSet<u64> = ids.iter().copied().collect();
    let mut out = Vec::new();
    let Ok(agent) = RECOVERED_AGENT.parse::<AgentName>() else {
        return out;
    };
    let mut stack = vec![mount.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let p = e.path();
            if let Ok(id) = crate::identity::cgroupfs::cgroup_id(mount, &p) {
                if wanted.contains(&id) {
                    out.push(Tag {
                        cgroup: p.clone(),
                        agent: agent.clone(),
                        source: TagSource::Manual,
                        cgroup_id: id,
                    });
                }
            }
            stack.push(p);
        }
    }
    out
}

/// The tags file `recover` writes for [`quarantine_tags`].
pub fn tags_file_of(tags: Vec<Tag>) -> TagsFile {
    TagsFile {
        version: TAGS_FILE_VERSION,
        tags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_ledger_is_refused_a_new_node_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        check_before_open(dir.path()).expect("a new node starts");
        write_manifest(dir.path(), 42).expect("manifest");
        let e = check_before_open(dir.path()).expect_err("ledger lost");
        let msg = e.to_string();
        assert!(
            msg.contains("ledger.redb") && msg.contains("spendguard-agent recover"),
            "{msg}"
        );
        check_after_open(dir.path(), 42).expect("the recorded ledger");
        let e = check_after_open(dir.path(), 7).expect_err("another ledger");
        assert!(matches!(e, StateError::LedgerSwapped { .. }), "{e}");
    }

    #[test]
    fn tags_without_a_ledger_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tag = r#"{"version":1,"tags":[{"cgroup":"/sys/fs/cgroup/x","agent":"a","source":{"kind":"manual"},"cgroup_id":5}]}"#;
        std::fs::write(paths::tags_file(dir.path()), tag).expect("write");
        let e = check_before_open(dir.path()).expect_err("tags but no ledger");
        assert!(
            matches!(e, StateError::LedgerMissingWithTags { count: 1, .. }),
            "{e}"
        );
    }

    #[test]
    fn damaged_manifests_are_named() {
        let p = Path::new("/var/lib/spendguard/state.json");
        for bad in [
            &b""[..],
            b"{",
            b"{\"version\":9,\"ledger_id\":1,\"written\":\"2026-01-01T00:00:00Z\"}",
        ] {
            let e = parse_manifest(p, bad).expect_err("damaged");
            assert!(e.to_string().contains("state.json"), "{e}");
        }
    }
}

/// The readiness file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub boot_id: String,
    pub pid: u32,
    pub since: DateTime<Utc>,
}

fn boot_id() -> std::io::Result<String> {
    Ok(std::fs::read_to_string(paths::BOOT_ID_FILE)?
        .trim()
        .to_string())
}

/// Marks the agent ready (see [`paths::ready_file`]).
pub fn write_ready(path: &Path) -> std::io::Result<()> {
    let r = Ready {
        boot_id: boot_id()?,
        pid: std::process::id(),
        since: Utc::now(),
    };
    let bytes = serde_json::to_vec(&r).map_err(std::io::Error::other)?;
    crate::identity::tags::write_atomic(path, &bytes, paths::PUBLIC_FILE_MODE)
}

/// Whether `path` says an agent is ready on this boot.
pub fn is_ready(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    let Ok(r) = serde_json::from_slice::<Ready>(&bytes) else {
        return false;
    };
    boot_id().is_ok_and(|b| b == r.boot_id)
}

/// Why `recover` could not finish (it changes nothing it has not reported).
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("an agent answers on {socket}: stop it first (recover works on the state of a stopped agent)")]
    AgentRunning { socket: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ledger(#[from] spendguard_ledger::LedgerError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Tags(#[from] crate::identity::tags::TagError),
}

/// What `recover` did, one line each, for the operator.
pub type RecoverReport = Vec<String>;

/// `spendguard-agent recover`: make the state dir startable again without ever starting budgets
/// from zero unnoticed. Damaged or missing files are set aside and replaced:
/// - the ledger: a new one under a recovery hold (nothing is forwarded until `spendguard recover
///   --confirm`); with `adopt_ledger`, a readable ledger the manifest does not name is accepted;
/// - the tags file: rebuilt from the pinned tag map as paused quarantine tags;
/// - the manifest: written for the ledger in place.
///
/// Blocking; the agent must be stopped.
pub fn recover(
    cfg: &crate::config::Config,
    adopt_ledger: bool,
) -> Result<RecoverReport, RecoverError> {
    if std::os::unix::net::UnixStream::connect(&cfg.socket).is_ok() {
        return Err(RecoverError::AgentRunning {
            socket: cfg.socket.clone(),
        });
    }
    let dir = &cfg.state_dir;
    let mut report = Vec::new();
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| RecoverError::Io { what, path, source }
    };

    // Tags first: a damaged file is rebuilt from what the kernel still redirects.
    let tags_path = paths::tags_file(dir);
    let mut quarantined: Vec<Tag> = Vec::new();
    if let Err(e) = TagsFile::read(&tags_path) {
        let aside = set_aside(&tags_path).map_err(io("cannot set aside", &tags_path))?;
        let mount = crate::identity::cgroupfs::cgroup2_mount().map_err(|e| {
            io("cannot find the cgroup v2 mount for", &tags_path)(std::io::Error::other(e))
        })?;
        let ids = pinned_tag_ids(&cfg.bpf_pin_dir);
        quarantined = quarantine_tags(&mount, &ids);
        let file = tags_file_of(quarantined.clone());
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| io("cannot encode", &tags_path)(std::io::Error::other(e)))?;
        crate::identity::tags::write_atomic(&tags_path, &bytes, paths::PRIVATE_FILE_MODE)
            .map_err(io("cannot write", &tags_path))?;
        report.push(format!(
            "tags: {} was damaged ({e}); set aside as {}; {} cgroups the kernel still redirects \
             are tagged as the paused agent {RECOVERED_AGENT} until you tag them again \
             (`spendguard tag`); other tags are lost",
            tags_path.display(),
            aside.map(|p| p.display().to_string()).unwrap_or_default(),
            quarantined.len()
        ));
    }

    // The ledger.
    let ledger_path = paths::ledger_file(dir);
    let options = spendguard_ledger::LedgerOptions {
        default_limits: cfg.default_limits.clone(),
        ..Default::default()
    };
    let manifest = read_manifest(dir).unwrap_or(None);
    let existing = if ledger_path.exists() {
        match spendguard_ledger::Ledger::open(&ledger_path, options.clone()) {
            Ok(l) => Some(l),
            Err(e) => {
                let aside =
                    set_aside(&ledger_path).map_err(io("cannot set aside", &ledger_path))?;
                report.push(format!(
                    "ledger: {} could not be opened ({e}); set aside as {}",
                    ledger_path.display(),
                    aside.map(|p| p.display().to_string()).unwrap_or_default()
                ));
                None
            }
        }
    } else {
        if manifest.is_some() {
            report.push(format!("ledger: {} was missing", ledger_path.display()));
        }
        None
    };
    let ledger = match existing {
        Some(l)
            if manifest
                .as_ref()
                .is_none_or(|m| m.ledger_id == l.ledger_id())
                || adopt_ledger =>
        {
            if manifest
                .as_ref()
                .is_some_and(|m| m.ledger_id != l.ledger_id())
            {
                report.push(format!(
                    "ledger: adopted {} (id {:016x}) in place of the one recorded before",
                    ledger_path.display(),
                    l.ledger_id()
                ));
            } else {
                report.push(format!("ledger: {} is intact", ledger_path.display()));
            }
            l
        }
        Some(l) => {
            let id = l.ledger_id();
            drop(l);
            return Err(StateError::LedgerSwapped {
                path: ledger_path,
                manifest: paths::manifest_file(dir),
                found: id,
                expected: manifest.map_or(0, |m| m.ledger_id),
            }
            .into());
        }
        None => {
            let l = spendguard_ledger::Ledger::open(&ledger_path, options)?;
            let rt = runtime(&ledger_path)?;
            rt.block_on(l.set_hold(&spendguard_ledger::Hold {
                since: Utc::now(),
                reason: "this node's ledger was lost or damaged and started anew".into(),
            }))?;
            report.push(format!(
                "ledger: started a new ledger at {} under a recovery hold: every request is \
                 refused until you have set the budgets (`spendguard limit set`) and run \
                 `spendguard recover --confirm`",
                ledger_path.display()
            ));
            l
        }
    };
    if !quarantined.is_empty() {
        if let Ok(agent) = RECOVERED_AGENT.parse::<AgentName>() {
            runtime(&ledger_path)?.block_on(ledger.pause(&agent))?;
        }
    }
    write_manifest(dir, ledger.ledger_id())?;
    if report.iter().all(|l| l.ends_with("is intact")) {
        report.push("nothing to recover: the agent can start as it is".into());
    }
    Ok(report)
}

fn runtime(path: &Path) -> Result<tokio::runtime::Runtime, RecoverError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| RecoverError::Io {
            what: "cannot start a runtime for",
            path: path.to_path_buf(),
            source,
        })
}

/// The cgroup ids in the pinned tag map (this layout's, or release 0.1's), if any is pinned.
fn pinned_tag_ids(pin_dir: &Path) -> Vec<u64> {
    let candidates = [
        paths::bpf_layout_dir(pin_dir).join(spendguard_common::maps::TAGGED),
        paths::bpf_maps_dir(pin_dir).join(spendguard_common::maps::TAGGED),
    ];
    for pin in candidates {
        let Ok(data) = aya::maps::MapData::from_pin(&pin) else {
            continue;
        };
        let Ok(map) = aya::maps::HashMap::<_, u64, spendguard_common::TagValue>::try_from(
            aya::maps::Map::HashMap(data),
        ) else {
            continue;
        };
        return map.keys().filter_map(Result::ok).collect();
    }
    Vec::new()
}
