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

/// The kernel side of tags (the BPF map); a fake in unit tests.
pub trait TagMap: Send + Sync {
    fn set(&self, cgroup_id: u64) -> Result<(), String>;
    fn unset(&self, cgroup_id: u64) -> Result<(), String>;
    /// Every id currently in the map (to drop stale ones left in a pinned map).
    fn ids(&self) -> Result<Vec<u64>, String>;
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
    #[error("tags file {path} is corrupt: {source}; fix or remove it (tags are then lost and must be set again)")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

#[derive(Default, Serialize, Deserialize)]
struct TagsFile {
    version: u32,
    tags: Vec<Tag>,
}

struct Inner {
    by_path: BTreeMap<PathBuf, Tag>,
    by_id: HashMap<u64, PathBuf>,
}

/// The tag table. Cheap to clone.
#[derive(Clone)]
pub struct TagStore {
    inner: Arc<Mutex<Inner>>,
    file: PathBuf,
    mount: PathBuf,
    map: Arc<dyn TagMap>,
}

impl TagStore {
    /// Loads the tags file (missing = no tags), resolves every path and makes the BPF map match.
    pub fn open(
        state_dir: &Path,
        mount: PathBuf,
        map: Arc<dyn TagMap>,
    ) -> Result<TagStore, TagError> {
        let file = paths::tags_file(state_dir);
        let loaded: TagsFile = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| TagError::Corrupt {
                path: file.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TagsFile::default(),
            Err(source) => return Err(TagError::Persist { path: file, source }),
        };
        let store = TagStore {
            inner: Arc::new(Mutex::new(Inner {
                by_path: BTreeMap::new(),
                by_id: HashMap::new(),
            })),
            file,
            mount,
            map,
        };
        {
            let mut inner = store.lock();
            for tag in loaded.tags {
                inner.by_path.insert(tag.cgroup.clone(), tag);
            }
        }
        store.reconcile()?;
        // Drop ids a previous run left in the pinned map that no tag claims any more.
        let wanted: std::collections::HashSet<u64> = store.lock().by_id.keys().copied().collect();
        for id in store.map.ids().map_err(TagError::Map)? {
            if !wanted.contains(&id) {
                store.map.unset(id).map_err(TagError::Map)?;
            }
        }
        Ok(store)
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
                self.map.unset(old_id).map_err(TagError::Map)?;
            }
            if new_id != 0 {
                self.map.set(new_id).map_err(TagError::Map)?;
                inner.by_id.insert(new_id, path.clone());
            } else {
                tracing::warn!(cgroup = %path.display(), "tagged cgroup does not exist (yet); its tag waits for it");
            }
        }
        if changed {
            self.persist(&inner)?;
        }
        Ok(())
    }

    fn persist(&self, inner: &Inner) -> Result<(), TagError> {
        let body = TagsFile {
            version: 1,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[derive(Default)]
    struct FakeMap(Mutex<HashSet<u64>>);
    impl TagMap for FakeMap {
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
}
