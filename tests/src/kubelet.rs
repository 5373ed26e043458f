//! A real Kubernetes node for the tests: Debian's containerd 1.6 and runc, and kubelet 1.20.2
//! (cgroupfs driver) registered with a [`ControlPlane`], all inside a test's network namespace, so
//! `hostNetwork` pods share that namespace and nothing they do reaches the machine's network.
//!
//! - kubelet's `--cgroup-root` is a cgroup of the test's own (`/<id>-kube`, made in the v2 tree and
//!   in every v1 hierarchy, as kubelet wants on a hybrid host), so its `kubepods` tree is the test's
//!   and the agent can attach there instead of at the machine's root.
//! - Images are built here from what is on the machine (no registry): the pause container from
//!   `pause.c` (compiled by `scripts/kube-bins.sh`) and a busybox image, written as docker-archive
//!   tars and `ctr images import`ed; pods use `imagePullPolicy: Never`.
//! - There is no CNI: only `hostNetwork` pods run. `kubectl logs` would dial the node address: read
//!   [`KubeletNode::container_log`] (the CRI log file under `/var/log/pods`) instead.
//!
//! Drop stops everything and leaves the machine as it was: containers and shims killed through
//! `ctr`, kubelet and containerd killed, mounts under the node's directory unmounted, the cgroup root
//! removed from every hierarchy, the pods' log directories removed.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::Digest as _;

use crate::kube::{kube_bin, kubeconfig, system_bin, ControlPlane};

/// The pause image containerd runs as every pod's sandbox (`sandbox_image`).
pub const PAUSE_IMAGE: &str = "spendguard.test/pause:1";
/// A busybox image (`/bin/sh` and friends); mount the host's `/usr` for more (its `/lib` and
/// `/lib64` point into `/usr`, as on Debian).
pub const BUSYBOX_IMAGE: &str = "spendguard.test/busybox:1";

/// The cgroup v1 hierarchies mounted on this host (their mount points), empty on a pure v2 host.
pub fn v1_hierarchies() -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup")).then(|| PathBuf::from(f[1]))
        })
        .collect()
}

/// containerd + kubelet as node `name`, in `netns`; stopped and cleaned up on drop.
pub struct KubeletNode {
    pub name: String,
    dir: tempfile::TempDir,
    netns: PathBuf,
    /// `/<id>-kube`, kubelet's `--cgroup-root`.
    cgroup_root: String,
    /// The cgroup containerd (and its shims) and kubelet run in.
    daemons_cgroup: PathBuf,
    containerd: Option<Child>,
    kubelet: Option<Child>,
    /// Namespaces whose pods this node ran (their `/var/log/pods` directories are removed).
    log_namespaces: std::sync::Mutex<Vec<String>>,
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

impl KubeletNode {
    /// Starts containerd and kubelet for node `name` in `netns` with `cgroup_root` (a name like
    /// `sg123x4-kube`, made here at the top of every cgroup hierarchy), registered with `cp` (which
    /// must run in the same namespace), and waits until the node object exists and the images are
    /// imported.
    pub fn start(
        cp: &ControlPlane,
        netns: &Path,
        name: &str,
        cgroup_root: &str,
        node_ip: &str,
    ) -> KubeletNode {
        let dir = tempfile::Builder::new()
            .prefix("sg-kubelet-")
            .tempdir()
            .expect("kubelet dir");
        let mount = crate::cgroup2_mount().expect("cgroup2");
        let daemons_cgroup = mount.join(format!("{cgroup_root}-daemons"));
        std::fs::create_dir_all(&daemons_cgroup).expect("mkdir daemons cgroup");
        let mut node = KubeletNode {
            name: name.to_string(),
            dir,
            netns: netns.to_path_buf(),
            cgroup_root: format!("/{cgroup_root}"),
            daemons_cgroup,
            containerd: None,
            kubelet: None,
            log_namespaces: std::sync::Mutex::new(Vec::new()),
        };
        node.make_cgroup_root();
        node.start_containerd();
        node.import_images();
        node.start_kubelet(cp, node_ip);
        node
    }

    /// The v2 directory of kubelet's cgroup root.
    pub fn cgroup_root_v2(&self) -> PathBuf {
        crate::cgroup2_mount()
            .expect("cgroup2")
            .join(self.cgroup_root.trim_start_matches('/'))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn make_cgroup_root(&self) {
        let rel = self.cgroup_root.trim_start_matches('/');
        for h in v1_hierarchies() {
            let d = h.join(rel);
            std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
            // A new cpuset cgroup has no CPUs or memory nodes: nothing could join it.
            if h.join("cpuset.cpus").exists() {
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let v = std::fs::read_to_string(h.join(f)).unwrap_or_default();
                    let _ = std::fs::write(d.join(f), v.trim());
                }
            }
        }
        std::fs::create_dir_all(self.cgroup_root_v2()).expect("mkdir cgroup root (v2)");
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn spawn(&self, mut cmd: Command, log: &str) -> Child {
        crate::place(
            &mut cmd,
            crate::Place {
                cgroup: Some(&self.daemons_cgroup),
                ..Default::default()
            },
        );
        crate::in_netns(&mut cmd, &self.netns);
        let log = std::fs::File::create(self.dir.path().join(log)).expect("log file");
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"))
    }

    /// The last `lines` lines of `containerd.log` or `kubelet.log`.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn start_containerd(&mut self) {
        let d = self.dir.path();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Needed where the test runs with a raised oom_score_adj floor (containers may not go lower).
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni}"
    conf_dir = "{cni}"
"#,
            root = path_str(&d.join("containerd-root")),
            state = path_str(&d.join("containerd-state")),
            sock = path_str(&self.sock()),
            opt = path_str(&d.join("opt")),
            runc = path_str(&d.join("runc")),
            cni = path_str(&d.join("cni")),
        );
        let cfg = d.join("containerd.toml");
        std::fs::write(&cfg, config).expect("write containerd config");
        let mut cmd = Command::new(system_bin("containerd"));
        cmd.arg("--config").arg(&cfg);
        self.containerd = Some(self.spawn(cmd, "containerd.log"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer:\n{}",
                self.log_tail("containerd.log", 30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ctr --address SOCK -n k8s.io ARGS` (the CRI's namespace).
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new(system_bin("ctr"))
            .arg("--address")
            .arg(self.sock())
            .args(["-n", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    fn import_images(&self) {
        let pause = kube_bin("pause");
        self.import(PAUSE_IMAGE, &[("pause", &pause)], &[], &["/pause"]);
        let busybox = system_bin("busybox");
        let links: Vec<(&str, &str)> = ["sh", "cat", "echo", "sleep", "ls", "wget", "id"]
            .iter()
            .map(|n| (*n, "busybox"))
            .collect();
        self.import_rootfs(BUSYBOX_IMAGE, &busybox, &links);
    }

    /// Imports a one-layer image whose root holds `files` (name in `/`, source) and `links`.
    fn import(
        &self,
        name: &str,
        files: &[(&str, &Path)],
        links: &[(&str, &str)],
        entrypoint: &[&str],
    ) {
        let work = tempfile::tempdir().expect("image dir");
        let rootfs = work.path().join("rootfs");
        std::fs::create_dir_all(&rootfs).expect("rootfs");
        for (n, src) in files {
            std::fs::copy(src, rootfs.join(n))
                .unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
        }
        for (n, target) in links {
            std::os::unix::fs::symlink(target, rootfs.join(n)).expect("symlink");
        }
        self.write_and_import(name, work.path(), &rootfs, entrypoint);
    }

    /// The busybox image: `/bin/busybox` with `links` in `/bin`, `/lib` and `/lib64` pointing into
    /// `/usr` (empty: a pod mounts the host's), and the directories runc mounts over.
    fn import_rootfs(&self, name: &str, busybox: &Path, links: &[(&str, &str)]) {
        let work = tempfile::tempdir().expect("image dir");
        let rootfs = work.path().join("rootfs");
        for d in ["bin", "usr", "etc", "tmp", "proc", "sys", "dev", "ca"] {
            std::fs::create_dir_all(rootfs.join(d)).expect("rootfs dir");
        }
        std::fs::copy(busybox, rootfs.join("bin/busybox")).expect("copy busybox");
        for (n, target) in links {
            std::os::unix::fs::symlink(target, rootfs.join("bin").join(n)).expect("symlink");
        }
        std::os::unix::fs::symlink("usr/lib", rootfs.join("lib")).expect("symlink lib");
        std::os::unix::fs::symlink("usr/lib64", rootfs.join("lib64")).expect("symlink lib64");
        self.write_and_import(name, work.path(), &rootfs, &["/bin/sh"]);
    }

    /// Writes `rootfs` as a docker-archive tar (one layer) named `name` and imports it.
    fn write_and_import(&self, name: &str, work: &Path, rootfs: &Path, entrypoint: &[&str]) {
        let layer = work.join("layer.tar");
        crate::run(
            "tar",
            &[
                "--numeric-owner",
                "--owner=0",
                "--group=0",
                "-C",
                path_str(rootfs),
                "-cf",
                path_str(&layer),
                ".",
            ],
        );
        let digest = sha2::Sha256::digest(std::fs::read(&layer).expect("read layer"));
        let diff_id: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": entrypoint, "Env": ["PATH=/usr/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
        });
        std::fs::write(work.join("config.json"), config.to_string()).expect("write image config");
        let manifest =
            json!([{"Config": "config.json", "RepoTags": [name], "Layers": ["layer.tar"]}]);
        std::fs::write(work.join("manifest.json"), manifest.to_string()).expect("write manifest");
        let archive = work.join("image.tar");
        crate::run(
            "tar",
            &[
                "-C",
                path_str(work),
                "-cf",
                path_str(&archive),
                "manifest.json",
                "config.json",
                "layer.tar",
            ],
        );
        let out = self.ctr(&["images", "import", path_str(&archive)]);
        assert!(
            out.status.success(),
            "ctr images import {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start_kubelet(&mut self, cp: &ControlPlane, node_ip: &str) {
        let d = self.dir.path().to_path_buf();
        let write = |n: &str, s: &str| {
            let p = d.join(n);
            std::fs::write(&p, s).expect("write kubelet file");
            p
        };
        let (cert, key) = cp
            .ca()
            .client_pem(&format!("system:node:{}", self.name), &["system:nodes"]);
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let kc = write(
            "kubelet.kubeconfig",
            &kubeconfig(
                &cp.url(),
                &cp.ca_pem(),
                json!({"client-certificate-data": b64(&cert), "client-key-data": b64(&key)}),
            ),
        );
        let ca = write("ca.crt", &cp.ca_pem());
        let config = json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "authentication": {
                "anonymous": {"enabled": false},
                "webhook": {"enabled": false},
                "x509": {"clientCAFile": path_str(&ca)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "cgroupsPerQOS": true,
            "failSwapOn": false,
            // A shared CI disk must not make kubelet evict the test's pods or delete its images.
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            // No iptables rules in the test's namespace (there is no kube-proxy to use them).
            "makeIPTablesUtilChains": false,
            "resolvConf": "",
            "syncFrequency": "2s",
            "fileCheckFrequency": "2s",
            "nodeStatusUpdateFrequency": "2s",
            "serializeImagePulls": false,
            "volumePluginDir": path_str(&d.join("volume-plugins")),
        });
        let cfg = write("kubelet.yaml", &config.to_string());
        let mut cmd = Command::new(kube_bin("kubelet"));
        cmd.arg(format!("--config={}", path_str(&cfg)))
            .arg(format!("--kubeconfig={}", path_str(&kc)))
            .arg(format!("--root-dir={}", path_str(&d.join("kubelet"))))
            .arg(format!("--cert-dir={}", path_str(&d.join("kubelet-pki"))))
            .arg("--container-runtime=remote")
            .arg(format!(
                "--container-runtime-endpoint=unix://{}",
                path_str(&self.sock())
            ))
            .arg(format!("--hostname-override={}", self.name))
            .arg(format!("--node-ip={node_ip}"))
            .arg(format!("--pod-infra-container-image={PAUSE_IMAGE}"))
            .arg("--v=1");
        self.kubelet = Some(self.spawn(cmd, "kubelet.log"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = cp.kubectl(&["get", "node", &self.name, "-o", "json"]);
            if out.status.success() {
                return;
            }
            if let Some(Ok(Some(st))) = self.kubelet.as_mut().map(Child::try_wait) {
                panic!(
                    "kubelet exited with {st}:\n{}",
                    self.log_tail("kubelet.log", 40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "kubelet did not register node {} in 60 s:\n{}",
                self.name,
                self.log_tail("kubelet.log", 40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Remembers that pods of `namespace` run here (their log directories are removed on drop).
    pub fn runs_namespace(&self, namespace: &str) {
        self.log_namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(namespace.to_string());
    }

    /// The CRI log (`/var/log/pods/NS_NAME_UID/CONTAINER/0.log`) of a container, its lines'
    /// payloads (`TIME STREAM TAG PAYLOAD`).
    pub fn container_log(namespace: &str, pod: &str, uid: &str, container: &str) -> Vec<String> {
        let p = Path::new("/var/log/pods")
            .join(format!("{namespace}_{pod}_{uid}"))
            .join(container)
            .join("0.log");
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_string))
            .collect()
    }

    fn stop(&mut self) {
        if let Some(mut k) = self.kubelet.take() {
            let _ = k.kill();
            let _ = k.wait();
        }
        // Containers and their shims first, through containerd (a shim killed from outside leaves
        // its socket in /run/containerd/s behind).
        let list = |what: &str| {
            String::from_utf8_lossy(&self.ctr(&[what, "ls", "-q"]).stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        // `tasks rm -f` kills a running task and deletes it; a container without a task (it
        // exited and was cleaned up already) only needs `containers rm`.
        for id in list("tasks") {
            let _ = self.ctr(&["tasks", "rm", "-f", &id]);
        }
        for id in list("containers") {
            let _ = self.ctr(&["containers", "rm", &id]);
        }
        if let Some(mut c) = self.containerd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Whatever is left (a shim, a container process): killed with its cgroup tree.
        crate::remove_cgroup_tree(&self.daemons_cgroup);
        crate::remove_cgroup_tree(&self.cgroup_root_v2());
        let rel = self.cgroup_root.trim_start_matches('/');
        for h in v1_hierarchies() {
            crate::remove_cgroup_tree(&h.join(rel));
        }
        unmount_below(self.dir.path());
        for ns in self
            .log_namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            remove_pod_logs(ns);
        }
    }
}

/// Lazily unmounts every mount point at or below `dir`, deepest first (containerd's rootfs and shm
/// mounts, kubelet's volume mounts).
fn unmount_below(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = path_str(dir);
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|p| p == prefix || p.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// `/var/log/pods/NS_*` and `/var/log/containers/*_NS_*`.
fn remove_pod_logs(namespace: &str) {
    for (dir, is_match) in [
        (
            "/var/log/pods",
            Box::new(|n: &str| n.starts_with(&format!("{namespace}_")))
                as Box<dyn Fn(&str) -> bool>,
        ),
        (
            "/var/log/containers",
            Box::new(|n: &str| n.contains(&format!("_{namespace}_"))),
        ),
    ] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if is_match(&name) {
                let p = e.path();
                let _ = if p.is_dir() && !p.is_symlink() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    }
}

impl Drop for KubeletNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = writeln!(
                std::io::stderr(),
                "---- kubelet log (last 40 lines) ----\n{}\n---- containerd log (last 20 lines) ----\n{}",
                self.log_tail("kubelet.log", 40),
                self.log_tail("containerd.log", 20)
            );
        }
        self.stop();
    }
}

/// A pod object's `status`, once `cond` holds for it (≤ `limit`); panics with the pod otherwise.
pub fn wait_pod(
    cp: &ControlPlane,
    namespace: &str,
    name: &str,
    limit: Duration,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let out = cp.kubectl(&["get", "-n", namespace, "pod", name, "-o", "json"]);
        let pod: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if cond(&pod) {
            return pod;
        }
        assert!(
            Instant::now() < deadline,
            "pod {namespace}/{name} did not get there: {pod}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
