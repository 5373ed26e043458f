//! Tags: which cgroup v2 directories belong to which agent. Durable in the state dir (re-applied on
//! start), mirrored into the BPF `SG_TAGGED` map so the programs redirect exactly these cgroups.
//!
//! A tag is stored by *path*: a cgroup that is deleted and created again (a restarted systemd unit)
//! gets a new id, so ids are re-resolved on start and by [`TagStore::reconcile`].

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::cgroupfs::{self, CgroupError};
use super::AgentName;
use crate::paths;

/// Where a tag came from: set by an operator, or derived from a pod label (owned by the pod watcher).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TagSource {
    Manual,
    Pod {
        namespace: String,
        name: String,
        uid: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub cgroup: PathBuf,
    pub agent: AgentName,
    pub source: TagSource,
    /// The cgroup id when last resolved; 0 while the directory does not exist.
    pub cgroup_id: u64,
}

/// The kernel side of tags (the BPF maps); a fake in unit tests.
pub trait TagMap: Send + Sync {
    fn set(&self, cgroup_id: u64) -> Result<(), String>;
    fn unset(&self, cgroup_id: u64) -> Result<(), String>;
    /// Every id currently in the map (to drop stale ones left in a pinned map).
    fn ids(&self) -> Result<Vec<u64>, String>;
    /// Watch a tagged path, so a cgroup created there is tagged by the kernel at creation.
    /// `Ok(false)`: the path cannot be watched (too long); reconcile covers it, later.
    fn watch(&self, cgroup: &Path) -> Result<bool, String>;
    fn unwatch(&self, cgroup: &Path) -> Result<(), String>;
    /// Every watched path (to drop stale ones left in a pinned map).
    fn watched(&self) -> Result<Vec<PathBuf>, String>;
}

#[derive(Debug, thiserror::Error)]
pub enum TagError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("cgroup {0} is not tagged")]
    NotTagged(PathBuf),
    #[error(
        "cgroup {path} is tagged by pod {pod}; change the pod's spendguard.io/agent label instead"
    )]
    OwnedByPod { path: PathBuf, pod: String },
    #[error("cannot update the BPF tag map: {0} (is the agent's bpffs pin directory intact?)")]
    Map(String),
    #[error("cannot write tags to {path}: {source} (check that the state directory is writable and not full)")]
    Persist {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tags file {path} is corrupt ({source}): the agent does not start without its tags, and the pinned redirect stays in force (tagged traffic is refused, never unmetered). Restore the file from a backup, or run `spendguard-agent recover` to set it aside and start with every cgroup it had tagged held as paused until it is tagged again")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("tags file {path} has version {found}, newer than this agent knows ({known}): it was written by a newer SpendGuard. Run that version, or restore the file this version wrote")]
    NewerVersion {
        path: PathBuf,
        found: u32,
        known: u32,
    },
}

/// The tags file's format version (written since release 0.1).
pub const TAGS_FILE_VERSION: u32 = 1;

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagsFile {
    pub version: u32,
    pub tags: Vec<Tag>,
}

impl TagsFile {
    /// Parses a tags file: the one step from the disk's bytes to tags, so it can be fuzzed. An
    /// empty file (a crash of an old version between create and write) is refused like any other
    /// damage: a silent empty tag set would leave every tagged cgroup unmetered.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<TagsFile, TagError> {
        let file: TagsFile = serde_json::from_slice(bytes).map_err(|source| TagError::Corrupt {
            path: path.to_path_buf(),
            source,
        })?;
        if file.version > TAGS_FILE_VERSION {
            return Err(TagError::NewerVersion {
                path: path.to_path_buf(),
                found: file.version,
                known: TAGS_FILE_VERSION,
            });
        }
        Ok(file)
    }

    /// Reads `path`; a missing file is no tags (a new node).
    pub fn read(path: &Path) -> Result<TagsFile, TagError> {
        match std::fs::read(path) {
            Ok(bytes) => TagsFile::parse(path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TagsFile::default()),
            Err(source) => Err(TagError::Persist {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

struct Inner {
    by_path: BTreeMap<PathBuf, Tag>,
    by_id: HashMap<u64, PathBuf>,
}

/// Least time between two reconciles caused by connections whose tag id is unknown.
pub const MISS_RECONCILE_GAP: std::time::Duration = std::time::Duration::from_millis(100);

/// The tag table. Cheap to clone.
#[derive(Clone)]
pub struct TagStore {
    inner: Arc<Mutex<Inner>>,
    last_miss: Arc<Mutex<Option<(std::time::Instant, u64)>>>,
    file: PathBuf,
    mount: PathBuf,
    map: Arc<dyn TagMap>,
}

impl TagStore {
    /// Loads the tags file (missing = no tags), resolves every path by name (ids from a previous
    /// boot or of a re-created cgroup mean nothing) and makes the BPF maps match. Whatever the
    /// kernel state left by the previous run — maps empty after a reboot or `uninstall`, stale
    /// ids, cgroups gone — is reconciled here; a map error is logged, never fatal (the agent must
    /// come up, or tagged traffic is refused forever). Only a damaged tags file stops the start.
    pub fn open(
        state_dir: &Path,
        mount: PathBuf,
        map: Arc<dyn TagMap>,
    ) -> Result<TagStore, TagError> {
        let file = paths::tags_file(state_dir);
        let loaded = TagsFile::read(&file)?;
        let store = TagStore {
            inner: Arc::new(Mutex::new(Inner {
                by_path: BTreeMap::new(),
                by_id: HashMap::new(),
            })),
            last_miss: Arc::default(),
            file,
            mount,
            map,
        };
        {
            let mut inner = store.lock();
            for mut tag in loaded.tags {
                // The id on file is from the previous run: resolved again by reconcile.
                tag.cgroup_id = 0;
                store.watch(&tag.cgroup);
                inner.by_path.insert(tag.cgroup.clone(), tag);
            }
        }
        store.reconcile()?;
        for t in store.list().iter().filter(|t| t.cgroup_id == 0) {
            tracing::warn!(cgroup = %t.cgroup.display(), agent = %t.agent, "tagged cgroup does not exist (yet); its tag waits for it (the kernel tags it when it is created)");
        }
        store.drop_stale();
        Ok(store)
    }

    /// Drops ids and watched paths a previous run left in the pinned maps that no tag claims.
    fn drop_stale(&self) {
        let inner = self.lock();
        match self.map.ids() {
            Ok(ids) => {
                for id in ids.into_iter().filter(|id| !inner.by_id.contains_key(id)) {
                    if let Err(e) = self.map.unset(id) {
                        tracing::warn!(cgroup_id = id, "cannot drop a stale tag id: {e}");
                    }
                }
            }
            Err(e) => tracing::warn!("cannot list the BPF tag map: {e}"),
        }
        match self.map.watched() {
            Ok(watched) => {
                for p in watched.iter().filter(|p| !inner.by_path.contains_key(*p)) {
                    if let Err(e) = self.map.unwatch(p) {
                        tracing::warn!(cgroup = %p.display(), "cannot drop a stale watched path: {e}");
                    }
                }
            }
            Err(e) => tracing::warn!("cannot list the BPF watched paths: {e}"),
        }
    }

    /// Watches a tagged path for re-creation; a failure only delays a re-created cgroup's tag
    /// until reconcile, so it is logged, not returned.
    fn watch(&self, path: &Path) {
        match self.map.watch(path) {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(cgroup = %path.display(), "tagged path is too long for the kernel's mkdir hook; if the cgroup is re-created it is tagged by the agent's reconcile (up to 2 s)")
            }
            Err(e) => {
                tracing::warn!(cgroup = %path.display(), "cannot watch the tagged path for re-creation: {e}")
            }
        }
    }

    fn unwatch(&self, path: &Path) {
        if let Err(e) = self.map.unwatch(path) {
            tracing::warn!(cgroup = %path.display(), "cannot stop watching an untagged path: {e}");
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves consistent data (every mutation is a whole insert or
        // remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tags `cgroup` (absolute path of a cgroup v2 directory) as `agent`. Re-tagging replaces.
    pub fn tag(&self, cgroup: &Path, agent: AgentName, source: TagSource) -> Result<Tag, TagError> {
        let id = cgroupfs::cgroup_id(&self.mount, cgroup)?;
        let path = cgroup
            .canonicalize()
            .unwrap_or_else(|_| cgroup.to_path_buf());
        let tag = Tag {
            cgroup: path.clone(),
            agent,
            source,
            cgroup_id: id,
        };
        let mut inner = self.lock();
        if let Some(old) = inner.by_path.get(&path).cloned() {
            if let (
                TagSource::Pod {
                    namespace, name, ..
                },
                TagSource::Manual,
            ) = (&old.source, &tag.source)
            {
                return Err(TagError::OwnedByPod {
                    path,
                    pod: format!("{namespace}/{name}"),
                });
            }
            if old.cgroup_id != 0 && old.cgroup_id != id {
                inner.by_id.remove(&old.cgroup_id);
                self.map.unset(old.cgroup_id).map_err(TagError::Map)?;
            }
        }
        self.map.set(id).map_err(TagError::Map)?;
        self.watch(&path);
        inner.by_id.insert(id, path.clone());
        inner.by_path.insert(path, tag.clone());
        self.persist(&inner)?;
        Ok(tag)
    }

    /// Removes the tag of `cgroup`.
    pub fn untag(&self, cgroup: &Path) -> Result<Tag, TagError> {
        let path = cgroup
            .canonicalize()
            .unwrap_or_else(|_| cgroup.to_path_buf());
        let mut inner = self.lock();
        let tag = inner
            .by_path
            .remove(&path)
            .ok_or_else(|| TagError::NotTagged(path.clone()))?;
        self.unwatch(&path);
        if tag.cgroup_id != 0 {
            inner.by_id.remove(&tag.cgroup_id);
            self.map.unset(tag.cgroup_id).map_err(TagError::Map)?;
        }
        self.persist(&inner)?;
        Ok(tag)
    }

    /// The tag whose cgroup has this id (the BPF programs report the nearest tagged cgroup's id).
    pub fn by_id(&self, cgroup_id: u64) -> Option<Tag> {
        let inner = self.lock();
        inner
            .by_id
            .get(&cgroup_id)
            .and_then(|p| inner.by_path.get(p))
            .cloned()
    }

    /// [`TagStore::by_id`], and on a miss one reconcile first: the kernel's mkdir hook tags a
    /// re-created cgroup at once, before this store has learnt its new id. The same unknown id
    /// triggers at most one reconcile per [`MISS_RECONCILE_GAP`], so a stale id cannot make the
    /// proxy stat every tagged path on every connection (ids come from the kernel's tag map, so
    /// a workload cannot make up new ones).
    pub fn by_id_or_reconcile(&self, cgroup_id: u64) -> Option<Tag> {
        if let Some(t) = self.by_id(cgroup_id) {
            return Some(t);
        }
        {
            let mut last = self.last_miss.lock().unwrap_or_else(|p| p.into_inner());
            let now = std::time::Instant::now();
            if last.is_some_and(|(t, id)| {
                id == cgroup_id && now.duration_since(t) < MISS_RECONCILE_GAP
            }) {
                return None;
            }
            *last = Some((now, cgroup_id));
        }
        if let Err(e) = self.reconcile() {
            tracing::warn!("tag reconcile: {e}");
        }
        self.by_id(cgroup_id)
    }

    pub fn list(&self) -> Vec<Tag> {
        self.lock().by_path.values().cloned().collect()
    }

    /// Re-resolves every tagged path: a cgroup created again under the same path gets its new id into
    /// the map; a vanished one leaves it (and stays in the store with id 0, to come back if re-created).
    pub fn reconcile(&self) -> Result<(), TagError> {
        let mut inner = self.lock();
        let mut changed = false;
        let paths: Vec<PathBuf> = inner.by_path.keys().cloned().collect();
        for path in paths {
            let new_id = cgroupfs::cgroup_id(&self.mount, &path).unwrap_or(0);
            let Some(old_id) = inner.by_path.get(&path).map(|t| t.cgroup_id) else {
                continue;
            };
            if old_id == new_id && (new_id == 0 || inner.by_id.contains_key(&new_id)) {
                continue;
            }
            if let Some(tag) = inner.by_path.get_mut(&path) {
                tag.cgroup_id = new_id;
            }
            changed = true;
            if old_id != 0 && old_id != new_id {
                inner.by_id.remove(&old_id);
                // A stale id left in the map only tags a cgroup that no longer exists (ids are
                // not reused within a boot): log it, go on.
                if let Err(e) = self.map.unset(old_id) {
                    tracing::warn!(cgroup = %path.display(), cgroup_id = old_id, "cannot drop the old id of a re-created cgroup: {e}");
                }
            }
            if new_id != 0 {
                match self.map.set(new_id) {
                    Ok(()) => {
                        inner.by_id.insert(new_id, path.clone());
                        tracing::info!(cgroup = %path.display(), cgroup_id = new_id, "tag applied");
                    }
                    Err(e) => {
                        // Not redirected: say so loudly, keep the path so the next reconcile retries.
                        tracing::error!(cgroup = %path.display(), "cannot put the tag into the BPF map: {e}; this cgroup is NOT redirected until it can");
                        if let Some(tag) = inner.by_path.get_mut(&path) {
                            tag.cgroup_id = 0;
                        }
                    }
                }
            } else {
                tracing::warn!(cgroup = %path.display(), "tagged cgroup does not exist (yet); its tag waits for it (the kernel tags it when it is created)");
            }
        }
        if changed {
            self.persist(&inner)?;
        }
        Ok(())
    }

    fn persist(&self, inner: &Inner) -> Result<(), TagError> {
        let body = TagsFile {
            version: TAGS_FILE_VERSION,
            tags: inner.by_path.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&body).map_err(|source| TagError::Corrupt {
            path: self.file.clone(),
            source,
        })?;
        write_atomic(&self.file, &bytes, paths::PRIVATE_FILE_MODE).map_err(|source| {
            TagError::Persist {
                path: self.file.clone(),
                source,
            }
        })
    }
}

/// Pod tags, kept by the Kubernetes pod watcher: a pod owns every tag whose source carries its uid.
impl TagStore {
    /// The cgroup v2 mount every tagged path lies under.
    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// Makes `cgroups` exactly the tags of pod `uid`, as `agent`: this pod's tags at other paths
    /// are removed, so a relabelled or re-resolved pod never keeps an old tag. A directory that does
    /// not exist yet (the pod is still being created) is recorded with cgroup id 0, and
    /// [`TagStore::reconcile`] puts it into the map when it appears. A path outside the cgroup v2
    /// mount, or an existing directory that is not a cgroup, is refused and nothing changes.
    pub fn tag_pod(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        agent: AgentName,
        cgroups: &[PathBuf],
    ) -> Result<Vec<Tag>, TagError> {
        let source = TagSource::Pod {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: uid.to_string(),
        };
        let mut wanted: Vec<(PathBuf, u64)> = Vec::with_capacity(cgroups.len());
        for cgroup in cgroups {
            let (path, id) = self.resolve_pod_cgroup(cgroup)?;
            if !wanted.iter().any(|(p, _)| *p == path) {
                wanted.push((path, id));
            }
        }
        let mut inner = self.lock();
        let stale: Vec<PathBuf> = inner
            .by_path
            .values()
            .filter(|t| pod_uid(t) == Some(uid) && !wanted.iter().any(|(p, _)| *p == t.cgroup))
            .map(|t| t.cgroup.clone())
            .collect();
        for path in &stale {
            self.remove_locked(&mut inner, path)?;
        }
        let mut out = Vec::with_capacity(wanted.len());
        for (path, id) in wanted {
            if let Some(old) = inner.by_path.get(&path).cloned() {
                if old.source == TagSource::Manual {
                    tracing::warn!(
                        cgroup = %path.display(),
                        old_agent = %old.agent,
                        pod = %format!("{namespace}/{name}"),
                        "the pod's spendguard.io/agent label replaces the manual tag of its cgroup"
                    );
                }
                if old.cgroup_id != 0 && old.cgroup_id != id {
                    inner.by_id.remove(&old.cgroup_id);
                    self.map.unset(old.cgroup_id).map_err(TagError::Map)?;
                }
            }
            if id != 0 {
                self.map.set(id).map_err(TagError::Map)?;
                inner.by_id.insert(id, path.clone());
            }
            self.watch(&path);
            let tag = Tag {
                cgroup: path.clone(),
                agent: agent.clone(),
                source: source.clone(),
                cgroup_id: id,
            };
            inner.by_path.insert(path, tag.clone());
            out.push(tag);
        }
        self.persist(&inner)?;
        Ok(out)
    }

    /// Removes every tag of pod `uid` (none is fine); returns what was removed.
    pub fn untag_pod(&self, uid: &str) -> Result<Vec<Tag>, TagError> {
        self.remove_pod_tags_where(|pod| pod == uid)
    }

    /// Removes the tags of every pod whose uid is not in `live_uids`; manual tags stay. Returns
    /// what was removed.
    pub fn retain_pods<'a>(
        &self,
        live_uids: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<Tag>, TagError> {
        let live: std::collections::HashSet<&str> = live_uids.into_iter().collect();
        self.remove_pod_tags_where(|pod| !live.contains(pod))
    }

    fn remove_pod_tags_where(&self, remove: impl Fn(&str) -> bool) -> Result<Vec<Tag>, TagError> {
        let mut inner = self.lock();
        let doomed: Vec<PathBuf> = inner
            .by_path
            .values()
            .filter(|t| pod_uid(t).is_some_and(&remove))
            .map(|t| t.cgroup.clone())
            .collect();
        let mut removed = Vec::with_capacity(doomed.len());
        for path in &doomed {
            if let Some(tag) = self.remove_locked(&mut inner, path)? {
                removed.push(tag);
            }
        }
        if !removed.is_empty() {
            self.persist(&inner)?;
        }
        Ok(removed)
    }

    /// Drops one tag and its map entry (not persisted: the caller does that once).
    fn remove_locked(&self, inner: &mut Inner, path: &Path) -> Result<Option<Tag>, TagError> {
        let Some(tag) = inner.by_path.remove(path) else {
            return Ok(None);
        };
        self.unwatch(path);
        if tag.cgroup_id != 0 {
            if inner.by_id.get(&tag.cgroup_id).map(PathBuf::as_path) == Some(path) {
                inner.by_id.remove(&tag.cgroup_id);
            }
            self.map.unset(tag.cgroup_id).map_err(TagError::Map)?;
        }
        Ok(Some(tag))
    }

    /// The path to store and its cgroup id, or id 0 for a directory that does not exist yet but
    /// would lie under the cgroup v2 mount (an absolute path without `.`/`..`).
    fn resolve_pod_cgroup(&self, cgroup: &Path) -> Result<(PathBuf, u64), TagError> {
        match cgroupfs::cgroup_id(&self.mount, cgroup) {
            Ok(id) => Ok((
                cgroup
                    .canonicalize()
                    .unwrap_or_else(|_| cgroup.to_path_buf()),
                id,
            )),
            Err(CgroupError::Stat { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound
                    && cgroup.starts_with(&self.mount)
                    && cgroup.components().all(|c| {
                        matches!(
                            c,
                            std::path::Component::RootDir | std::path::Component::Normal(_)
                        )
                    }) =>
            {
                Ok((cgroup.to_path_buf(), 0))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The uid of the pod a tag came from; `None` for a manual tag.
fn pod_uid(tag: &Tag) -> Option<&str> {
    match &tag.source {
        TagSource::Pod { uid, .. } => Some(uid),
        TagSource::Manual => None,
    }
}

/// Write to a temporary file, fsync, rename over `path`: a crash leaves the old or the new file whole.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Test doubles shared by the unit tests of modules that use tags.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::HashSet;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use super::TagMap;

    /// A `TagMap` in memory instead of the BPF maps.
    #[derive(Default)]
    pub(crate) struct FakeMap(Mutex<HashSet<u64>>, Mutex<HashSet<PathBuf>>);
    impl TagMap for FakeMap {
        fn watch(&self, p: &Path) -> Result<bool, String> {
            self.1
                .lock()
                .map_err(|e| e.to_string())?
                .insert(p.to_path_buf());
            Ok(true)
        }
        fn unwatch(&self, p: &Path) -> Result<(), String> {
            self.1.lock().map_err(|e| e.to_string())?.remove(p);
            Ok(())
        }
        fn watched(&self) -> Result<Vec<PathBuf>, String> {
            Ok(self
                .1
                .lock()
                .map_err(|e| e.to_string())?
                .iter()
                .cloned()
                .collect())
        }
        fn set(&self, id: u64) -> Result<(), String> {
            self.0.lock().map_err(|e| e.to_string())?.insert(id);
            Ok(())
        }
        fn unset(&self, id: u64) -> Result<(), String> {
            self.0.lock().map_err(|e| e.to_string())?.remove(&id);
            Ok(())
        }
        fn ids(&self) -> Result<Vec<u64>, String> {
            Ok(self
                .0
                .lock()
                .map_err(|e| e.to_string())?
                .iter()
                .copied()
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::testing::FakeMap;

    /// A cgroup v2 directory made for the test and removed on drop.
    struct TestCgroup(PathBuf);
    impl TestCgroup {
        fn new(name: &str) -> TestCgroup {
            let mount = cgroupfs::cgroup2_mount().expect("cgroup2");
            let p = mount.join(format!("sg-unit-{}-{}", name, std::process::id()));
            std::fs::create_dir(&p).expect("mkdir cgroup");
            TestCgroup(p)
        }
    }
    impl Drop for TestCgroup {
        fn drop(&mut self) {
            if let Err(e) = std::fs::remove_dir(&self.0) {
                eprintln!("cannot remove test cgroup {}: {e}", self.0.display());
            }
        }
    }

    #[test]
    fn tags_persist_and_reapply_and_stale_ids_are_dropped() {
        let state = tempfile::tempdir().expect("tempdir");
        let mount = cgroupfs::cgroup2_mount().expect("cgroup2");
        let cg = TestCgroup::new("tags");
        let map = Arc::new(FakeMap::default());
        map.set(424242).expect("fake");
        let store = TagStore::open(state.path(), mount.clone(), map.clone()).expect("open");
        assert!(map.ids().expect("ids").is_empty(), "stale id removed");

        let agent: AgentName = "acme.bot".parse().expect("name");
        let tag = store
            .tag(&cg.0, agent.clone(), TagSource::Manual)
            .expect("tag");
        assert_ne!(tag.cgroup_id, 0);
        assert_eq!(map.ids().expect("ids"), vec![tag.cgroup_id]);
        assert_eq!(
            store.by_id(tag.cgroup_id).map(|t| t.agent),
            Some(agent.clone())
        );

        // A new process (restart) with an empty map gets the tag back.
        let map2 = Arc::new(FakeMap::default());
        let store2 = TagStore::open(state.path(), mount.clone(), map2.clone()).expect("reopen");
        assert_eq!(map2.ids().expect("ids"), vec![tag.cgroup_id]);
        assert_eq!(store2.list().len(), 1);

        // Re-created cgroup: new id replaces the old one.
        let path = cg.0.clone();
        drop(cg);
        std::fs::create_dir(&path).expect("recreate");
        let recreated = TestCgroup(path.clone());
        store2.reconcile().expect("reconcile");
        let new_id = store2.list()[0].cgroup_id;
        assert_ne!(new_id, tag.cgroup_id);
        assert_eq!(map2.ids().expect("ids"), vec![new_id]);

        store2.untag(&recreated.0).expect("untag");
        assert!(map2.ids().expect("ids").is_empty());
        assert!(matches!(
            store2.untag(&recreated.0),
            Err(TagError::NotTagged(_))
        ));
    }

    #[test]
    fn refuses_non_cgroup_paths_and_pod_owned_tags() {
        let state = tempfile::tempdir().expect("tempdir");
        let mount = cgroupfs::cgroup2_mount().expect("cgroup2");
        let store =
            TagStore::open(state.path(), mount, Arc::new(FakeMap::default())).expect("open");
        let agent: AgentName = "a".parse().expect("name");
        assert!(store
            .tag(Path::new("/tmp"), agent.clone(), TagSource::Manual)
            .is_err());
        let cg = TestCgroup::new("pod");
        let pod = TagSource::Pod {
            namespace: "ns".into(),
            name: "p".into(),
            uid: "u".into(),
        };
        store.tag(&cg.0, agent.clone(), pod).expect("pod tag");
        let e = store
            .tag(&cg.0, agent, TagSource::Manual)
            .expect_err("owned by pod");
        assert!(e.to_string().contains("ns/p"), "{e}");
    }

    fn pod_tags(store: &TagStore, uid: &str) -> Vec<Tag> {
        store
            .list()
            .into_iter()
            .filter(|t| pod_uid(t) == Some(uid))
            .collect()
    }

    #[test]
    fn a_missing_pod_cgroup_is_tagged_with_id_0_and_reconcile_resolves_it() {
        let state = tempfile::tempdir().expect("tempdir");
        let mount = cgroupfs::cgroup2_mount().expect("cgroup2");
        let map = Arc::new(FakeMap::default());
        let store = TagStore::open(state.path(), mount.clone(), map.clone()).expect("open");
        let agent: AgentName = "acme.pod".parse().expect("name");
        let path = mount.join(format!("sg-unit-podwait-{}", std::process::id()));
        assert!(!path.exists());

        let tags = store
            .tag_pod(
                "ns",
                "p",
                "uid-wait",
                agent.clone(),
                std::slice::from_ref(&path),
            )
            .expect("a missing pod cgroup is still tagged");
        assert_eq!(tags.len(), 1);
        assert_eq!(tags[0].cgroup, path);
        assert_eq!(tags[0].cgroup_id, 0);
        assert!(
            map.ids().expect("ids").is_empty(),
            "nothing to redirect yet"
        );
        // Durable while it waits.
        let reopened = TagStore::open(state.path(), mount.clone(), Arc::new(FakeMap::default()))
            .expect("reopen");
        assert_eq!(pod_tags(&reopened, "uid-wait").len(), 1);

        // Outside the cgroup v2 mount, or with `..`: refused, nothing changes.
        for bad in [
            PathBuf::from("/tmp/sg-unit-not-a-cgroup"),
            mount.join("a/../../etc"),
            PathBuf::from("relative/pod"),
        ] {
            assert!(
                store
                    .tag_pod(
                        "ns",
                        "p",
                        "uid-wait",
                        agent.clone(),
                        std::slice::from_ref(&bad)
                    )
                    .is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(pod_tags(&store, "uid-wait"), tags);

        // The runtime creates the directory: the reconcile loop puts its id into the map.
        std::fs::create_dir(&path).expect("mkdir cgroup");
        let cg = TestCgroup(path.clone());
        store.reconcile().expect("reconcile");
        let id = pod_tags(&store, "uid-wait")[0].cgroup_id;
        assert_ne!(id, 0);
        assert_eq!(map.ids().expect("ids"), vec![id]);
        assert_eq!(store.by_id(id).map(|t| t.agent), Some(agent));

        assert_eq!(store.untag_pod("uid-wait").expect("untag").len(), 1);
        assert!(map.ids().expect("ids").is_empty());
        assert!(store.untag_pod("uid-wait").expect("idempotent").is_empty());
        drop(cg);
    }

    #[test]
    fn tag_pod_replaces_a_pods_tags_and_retain_pods_spares_manual_ones() {
        let state = tempfile::tempdir().expect("tempdir");
        let mount = cgroupfs::cgroup2_mount().expect("cgroup2");
        let map = Arc::new(FakeMap::default());
        let store = TagStore::open(state.path(), mount, map.clone()).expect("open");
        let (a, b, m) = (
            TestCgroup::new("pod-a"),
            TestCgroup::new("pod-b"),
            TestCgroup::new("manual"),
        );
        let x: AgentName = "acme.x".parse().expect("name");
        let y: AgentName = "acme.y".parse().expect("name");
        let ids = || {
            let mut v = map.ids().expect("ids");
            v.sort_unstable();
            v
        };

        let ta = store
            .tag_pod("ns", "one", "u1", x.clone(), std::slice::from_ref(&a.0))
            .expect("tag a");
        // Same pod, new path and agent: the old path is untagged.
        let tb = store
            .tag_pod("ns", "one", "u1", y.clone(), &[b.0.clone(), b.0.clone()])
            .expect("tag b");
        assert_eq!(tb.len(), 1, "duplicates collapse");
        assert_eq!(pod_tags(&store, "u1"), tb);
        assert_eq!(ids(), vec![tb[0].cgroup_id]);
        assert!(store.by_id(ta[0].cgroup_id).is_none());

        let tm = store
            .tag(&m.0, x.clone(), TagSource::Manual)
            .expect("manual");
        store
            .tag_pod("ns", "two", "u2", x.clone(), std::slice::from_ref(&a.0))
            .expect("tag a for u2");
        assert_eq!(store.list().len(), 3);

        let removed = store.retain_pods(["u1"]).expect("retain");
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].cgroup, ta[0].cgroup);
        let mut want = vec![tb[0].cgroup_id, tm.cgroup_id];
        want.sort_unstable();
        assert_eq!(ids(), want);
        assert_eq!(store.untag_pod("u1").expect("untag").len(), 1);
        assert_eq!(store.retain_pods([]).expect("retain none"), vec![]);
        assert_eq!(store.list(), vec![tm.clone()], "the manual tag survives");
        assert_eq!(ids(), vec![tm.cgroup_id]);
    }
}
