//! Where kubelet puts a pod's cgroup v2 directory, so the watcher can tag it.
//!
//! Naming, as checked against the public sources (kubernetes/kubernetes, containerd/containerd,
//! cri-o/cri-o):
//! - kubelet `pkg/kubelet/cm/node_container_manager_linux.go`: the node-allocatable cgroup is
//!   `defaultNodeAllocatableCgroupName = "kubepods"` (below `--cgroup-root`, default `/`).
//! - kubelet `pkg/kubelet/cm/qos_container_manager_linux.go`: QoS cgroups are
//!   `NewCgroupName(root, strings.ToLower(string(v1.PodQOSBurstable)))`, i.e. `burstable` and
//!   `besteffort`; Guaranteed pods have no QoS cgroup and sit directly under `kubepods`.
//! - kubelet `pkg/kubelet/cm/pod_container_manager_linux.go` `GetPodContainerName`: the pod cgroup
//!   is `NewCgroupName(qosParent, GetPodCgroupNameSuffix(pod.UID))` with prefix `"pod"`.
//! - kubelet `pkg/kubelet/cm/cgroup_manager_linux.go`: `ToCgroupfs` joins the components with `/`
//!   (`/kubepods/burstable/pod<uid>`); `ToSystemd` maps each component through
//!   `escapeSystemdCgroupName` (`-` → `_`), joins them with `-`, appends `.slice` and expands it
//!   (`/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_abcd.slice`, the
//!   example in its own doc comment).
//! - containerd's CRI plugin, `getCgroupsPath` (helpers_linux.go; the file moved between 1.x and
//!   2.x): with a `.slice` parent the runc path is `slice:cri-containerd:<id>`, otherwise
//!   `<parent>/<id>`. runc's docs/systemd.md: `[slice]:[prefix]:[name]` becomes the transient unit
//!   `<prefix>-<name>.scope` inside the slice → `cri-containerd-<id>.scope`.
//! - CRI-O `internal/config/cgmgr`: systemd `parent:crio:<id>` → `crio-<id>.scope`; cgroupfs
//!   `<parent>/crio-<id>` (`containerCgroupPath`). Docker (cri-dockerd) uses runc's `docker`
//!   scope prefix → `docker-<id>.scope`, and `<parent>/<id>` with cgroupfs.
//!
//! A kubelet started with a non-default `--cgroup-root` (kind uses `/kubelet`) nests the same
//! names one level down (`kubelet.slice/kubelet-kubepods.slice/…`, `kubelet/kubepods/…`): the
//! resolver finds the `kubepods` directory within the first levels of the tree instead of
//! assuming it sits at the root.

use std::path::{Path, PathBuf};

/// A pod's QoS class (`status.qosClass`), which decides its parent cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub const ALL: [QosClass; 3] = [
        QosClass::Guaranteed,
        QosClass::Burstable,
        QosClass::BestEffort,
    ];

    /// Parses `status.qosClass` as the API server writes it.
    pub fn from_status(s: &str) -> Option<QosClass> {
        match s {
            "Guaranteed" => Some(QosClass::Guaranteed),
            "Burstable" => Some(QosClass::Burstable),
            "BestEffort" => Some(QosClass::BestEffort),
            _ => None,
        }
    }

    /// kubelet's QoS cgroup component (`strings.ToLower` of the class); none for Guaranteed.
    fn component(self) -> Option<&'static str> {
        match self {
            QosClass::Guaranteed => None,
            QosClass::Burstable => Some("burstable"),
            QosClass::BestEffort => Some("besteffort"),
        }
    }
}

/// kubelet's `--cgroup-driver`: how the abstract cgroup names become directories.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CgroupDriver {
    /// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice`
    Systemd,
    /// `kubepods/burstable/pod<uid>`
    Cgroupfs,
}

/// Where kubelet's `kubepods` cgroup lives and how its children are named.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Kubepods {
    driver: CgroupDriver,
    /// The `kubepods` directory itself.
    dir: PathBuf,
    /// systemd only: the slice name without `.slice` (`kubepods`, or `kubelet-kubepods` under a
    /// `--cgroup-root=/kubelet`); children are named `<stem>-<component>.slice`.
    stem: String,
}

impl Kubepods {
    /// The pod's directory under this `kubepods`, whether or not it exists.
    fn pod_dir(&self, pod_uid: &str, qos: QosClass) -> PathBuf {
        match self.driver {
            CgroupDriver::Cgroupfs => {
                let mut p = self.dir.clone();
                if let Some(q) = qos.component() {
                    p.push(q);
                }
                p.push(format!("pod{pod_uid}"));
                p
            }
            CgroupDriver::Systemd => {
                // kubelet escapes every component ('-' → '_') before joining with '-'.
                let uid = pod_uid.replace('-', "_");
                match qos.component() {
                    None => self.dir.join(format!("{}-pod{uid}.slice", self.stem)),
                    Some(q) => {
                        let qos_stem = format!("{}-{q}", self.stem);
                        self.dir
                            .join(format!("{qos_stem}.slice"))
                            .join(format!("{qos_stem}-pod{uid}.slice"))
                    }
                }
            }
        }
    }
}

/// How deep below the mount to look for `kubepods` (the default `--cgroup-root` puts it at depth 1,
/// kind's `/kubelet` at depth 2).
const KUBEPODS_SEARCH_DEPTH: usize = 3;

/// Finds pod and container cgroup directories under a cgroup v2 mount. Stateless: every call looks
/// at the filesystem again, so a `kubepods` that appears after start is picked up.
#[derive(Clone, Debug)]
pub struct CgroupResolver {
    root: PathBuf,
    /// Hybrid hosts: the cgroup v1 mount points, where kubelet's `kubepods` tree is (see
    /// [`CgroupResolver::with_v1_hierarchies`]).
    v1: Vec<PathBuf>,
}

impl CgroupResolver {
    /// `root` is the cgroup v2 mount (read it from /proc/mounts: hybrid hosts mount it at
    /// `/sys/fs/cgroup/unified`).
    pub fn new(root: impl Into<PathBuf>) -> CgroupResolver {
        CgroupResolver {
            root: root.into(),
            v1: Vec::new(),
        }
    }

    /// On a hybrid host (cgroup v1 controllers, v2 mounted beside them) kubelet 1.20 with the
    /// cgroupfs driver creates `kubepods` and its QoS cgroups only in the v1 hierarchies; the pod's
    /// v2 directory appears only when runc starts the pod's first container (runc 1.1 places every
    /// container in the v2 tree too, measured with Debian 12's runc 1.1.5 and containerd 1.6). So
    /// when the v2 tree has no `kubepods` yet, the layout found in these v1 hierarchies (mount
    /// points) says where the v2 directories will appear — under a custom `--cgroup-root` as well.
    pub fn with_v1_hierarchies(mut self, mounts: Vec<PathBuf>) -> CgroupResolver {
        self.v1 = mounts;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The cgroup drivers whose `kubepods` directory exists on this node (in the v2 tree, else in
    /// the v1 hierarchies given to [`CgroupResolver::with_v1_hierarchies`]); empty before kubelet
    /// has created it.
    pub fn drivers(&self) -> Vec<CgroupDriver> {
        self.kubepods().into_iter().map(|k| k.driver).collect()
    }

    /// The pod-level cgroup directory: tagging it covers every container of the pod, since
    /// descendants are tagged too.
    ///
    /// If it exists, exactly that directory. Otherwise (the pod sandbox is not created yet) the
    /// path(s) where it will appear: for the driver(s) whose `kubepods` exists, or for both drivers
    /// when none does yet. The agent keeps a tag for a missing path and applies it on appearance.
    pub fn pod_dirs(&self, pod_uid: &str, qos: QosClass) -> Vec<PathBuf> {
        let mut layouts = self.kubepods();
        if layouts.is_empty() {
            layouts = self.default_layouts();
        }
        let candidates: Vec<PathBuf> = layouts.iter().map(|k| k.pod_dir(pod_uid, qos)).collect();
        let existing: Vec<PathBuf> = candidates.iter().filter(|p| p.is_dir()).cloned().collect();
        if existing.is_empty() {
            candidates
        } else {
            existing
        }
    }

    /// Like [`pod_dirs`](Self::pod_dirs), but only directories that exist now.
    pub fn existing_pod_dirs(&self, pod_uid: &str, qos: QosClass) -> Vec<PathBuf> {
        self.pod_dirs(pod_uid, qos)
            .into_iter()
            .filter(|p| p.is_dir())
            .collect()
    }

    /// The cgroup of one container, from its `status.containerStatuses[].containerID`
    /// (`containerd://<id>`, `cri-o://<id>`, `docker://<id>`), if it exists.
    pub fn container_dir(
        &self,
        pod_uid: &str,
        qos: QosClass,
        container_id: &str,
    ) -> Option<PathBuf> {
        let (runtime, id) = match container_id.split_once("://") {
            Some((rt, id)) => (Some(rt), id),
            None => (None, container_id),
        };
        if id.is_empty() || id.contains('/') || id.contains("..") {
            return None;
        }
        let names = container_names(runtime, id);
        self.existing_pod_dirs(pod_uid, qos)
            .into_iter()
            .flat_map(|pod| names.iter().map(move |n| pod.join(n)))
            .find(|p| p.is_dir())
    }

    fn default_layouts(&self) -> Vec<Kubepods> {
        vec![
            Kubepods {
                driver: CgroupDriver::Systemd,
                dir: self.root.join("kubepods.slice"),
                stem: "kubepods".into(),
            },
            Kubepods {
                driver: CgroupDriver::Cgroupfs,
                dir: self.root.join("kubepods"),
                stem: "kubepods".into(),
            },
        ]
    }

    /// Every `kubepods` directory of the v2 tree; if there is none, the ones of the first v1
    /// hierarchy that has any, mapped to where they will appear in the v2 tree.
    fn kubepods(&self) -> Vec<Kubepods> {
        let found = find_kubepods(&self.root);
        if !found.is_empty() {
            return found;
        }
        self.v1
            .iter()
            .map(|mount| {
                find_kubepods(mount)
                    .into_iter()
                    .filter_map(|k| {
                        let rel = k.dir.strip_prefix(mount).ok()?;
                        Some(Kubepods {
                            dir: self.root.join(rel),
                            ..k
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .find(|v| !v.is_empty())
            .unwrap_or_default()
    }
}

/// Every `kubepods` directory within [`KUBEPODS_SEARCH_DEPTH`] levels of `root`, systemd first.
/// Only directories whose name mentions `kube` are descended into (a custom `--cgroup-root` for
/// kubelet is named for it in practice: `kubelet`, `kubelet.slice`), so the walk stays small.
fn find_kubepods(root: &Path) -> Vec<Kubepods> {
    let mut found = Vec::new();
    let mut frontier = vec![root.to_path_buf()];
    for _ in 0..KUBEPODS_SEARCH_DEPTH {
        let mut next = Vec::new();
        for dir in frontier {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                if !name.contains("kube") || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let path = entry.path();
                if name == "kubepods" {
                    found.push(Kubepods {
                        driver: CgroupDriver::Cgroupfs,
                        dir: path,
                        stem: name,
                    });
                } else if let Some(stem) = name
                    .strip_suffix(".slice")
                    .filter(|s| *s == "kubepods" || s.ends_with("-kubepods"))
                {
                    found.push(Kubepods {
                        driver: CgroupDriver::Systemd,
                        stem: stem.to_string(),
                        dir: path,
                    });
                } else if !name.starts_with("kubepods") {
                    // `kubepods-…` slices are QoS/pod cgroups, never a cgroup root.
                    next.push(path);
                }
            }
        }
        frontier = next;
    }
    // Shallowest first (a default kubelet), systemd before cgroupfs, then by path: stable order.
    found.sort_by(|a, b| {
        let depth = |k: &Kubepods| k.dir.components().count();
        depth(a)
            .cmp(&depth(b))
            .then((a.driver == CgroupDriver::Cgroupfs).cmp(&(b.driver == CgroupDriver::Cgroupfs)))
            .then(a.dir.cmp(&b.dir))
    });
    found
}

/// The directory names a container's cgroup can have below its pod cgroup, for a runtime scheme
/// (`containerd`, `cri-o`, `docker`; unknown or missing: all of them).
fn container_names(runtime: Option<&str>, id: &str) -> Vec<String> {
    let scope = |prefix: &str| format!("{prefix}-{id}.scope");
    match runtime {
        Some("containerd") => vec![scope("cri-containerd"), id.to_string()],
        Some("cri-o") => vec![scope("crio"), format!("crio-{id}")],
        Some("docker") => vec![scope("docker"), id.to_string()],
        _ => vec![
            scope("cri-containerd"),
            scope("crio"),
            scope("docker"),
            format!("crio-{id}"),
            id.to_string(),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos_parses_status_values_only() {
        assert_eq!(
            QosClass::from_status("Burstable"),
            Some(QosClass::Burstable)
        );
        assert_eq!(QosClass::from_status("burstable"), None);
        assert_eq!(QosClass::from_status(""), None);
    }

    #[test]
    fn systemd_names_escape_dashes_in_every_component() {
        let k = Kubepods {
            driver: CgroupDriver::Systemd,
            dir: PathBuf::from("/r/kubelet.slice/kubelet-kubepods.slice"),
            stem: "kubelet-kubepods".into(),
        };
        assert_eq!(
            k.pod_dir("a-b-c", QosClass::BestEffort),
            PathBuf::from(
                "/r/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/\
                 kubelet-kubepods-besteffort-poda_b_c.slice"
            )
        );
        assert_eq!(
            k.pod_dir("a-b-c", QosClass::Guaranteed),
            PathBuf::from(
                "/r/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-poda_b_c.slice"
            )
        );
    }

    #[test]
    fn container_ids_that_could_escape_the_pod_dir_are_refused() {
        let r = CgroupResolver::new("/nonexistent-root");
        assert_eq!(
            r.container_dir("u", QosClass::Burstable, "containerd://"),
            None
        );
        assert_eq!(
            r.container_dir("u", QosClass::Burstable, "containerd://../x"),
            None
        );
        assert_eq!(
            r.container_dir("u", QosClass::Burstable, "containerd://a/b"),
            None
        );
    }
}
