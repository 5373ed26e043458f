//! Fixtures for SpendGuard's privileged end-to-end tests.
//!
//! Network safety: every test builds its own world — a "node" network namespace (where the agent and
//! the fake upstream servers live, on addresses of the namespace's own `lo`) and a "pod" namespace
//! joined to it by a veth pair — and removes it on Drop, even when an assertion fails. Nothing here
//! sends a packet to any address outside 127.0.0.0/8 or these namespaces, so nothing can leave the
//! machine even if redirection fails.
//!
//! Each world also has its own cgroup v2 subtree (the agent attaches its programs there, not at the
//! root) and its own bpffs pin directory, so tests run in parallel without seeing each other.

#![expect(
    unsafe_code,
    reason = "pre_exec hooks that move a child into a cgroup and a netns"
)]

pub mod fake_provider;
pub mod fake_realtime;
pub mod fake_x402;
pub mod kube;
pub mod kubelet;
pub mod loopfs;
pub mod metered;
pub mod redis_server;
pub mod sdk;
pub mod servers;
pub mod store_net;
pub mod swarm;

use std::io::Write as _;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Addresses inside each test's node namespace (on its `lo`): the fake upstreams.
pub const UPSTREAM_A: &str = "10.77.3.1";
pub const UPSTREAM_B: &str = "10.77.3.2";
pub const UPSTREAM_V6: &str = "fd77::3";
/// The veth pair between node (…1.1) and pod (…1.2) namespaces.
pub const NODE_VETH_IP: &str = "10.77.1.1";
pub const POD_VETH_IP: &str = "10.77.1.2";
pub const PROXY_PORT: u16 = 15443;

/// Prints a loud skip line; `.ci/run` turns any such line into a failure (CI has every feature).
pub fn skip(why: &str) {
    eprintln!("SPENDGUARD-SKIP: {why}");
}

/// Polls `cond` every 25 ms until it holds (true) or `limit` passes (false).
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Whether this process can run the privileged tests; prints why not.
pub fn privileged() -> bool {
    if !nix::unistd::geteuid().is_root() {
        skip("not root: the e2e tests need root for BPF, cgroups and network namespaces");
        return false;
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        skip("kernel has no BTF (/sys/kernel/btf/vmlinux)");
        return false;
    }
    if cgroup2_mount().is_none() {
        skip("no cgroup2 filesystem mounted");
        return false;
    }
    true
}

pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    })
}

/// The previous release's binaries (`SPENDGUARD_PREV_BIN_DIR`, built from git by `cargo xtask
/// test`), for upgrade tests. Missing is a failure, not a skip: the upgrade path must be tested.
pub fn prev_release_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("SPENDGUARD_PREV_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/prev-release/bin")
        });
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} missing: `cargo xtask test` builds the previous release from git",
        p.display()
    );
    p
}

/// Where the agent binaries are: `SPENDGUARD_BIN_DIR` (set by `cargo xtask test`) or target/debug.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("SPENDGUARD_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo xtask test` (it builds the agent first)",
        p.display()
    );
    p
}

pub(crate) fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique short name for this test's objects (interface names are limited to 15 bytes).
pub(crate) fn unique() -> String {
    format!(
        "sg{}x{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}
impl Netns {
    pub fn new(name: String) -> Netns {
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }
    pub fn ip(&self, args: &[&str]) {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        run("ip", &a);
    }
    /// Runs `f` on a thread that has entered this namespace (sockets made there stay in it).
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    }
}
impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        if !matches!(out, Ok(ref o) if o.status.success()) {
            eprintln!("warning: could not delete netns {}: {out:?}", self.name);
        }
    }
}

/// A cgroup v2 directory, removed on drop (after killing anything left in it).
pub struct Cgroup {
    pub path: PathBuf,
}
impl Cgroup {
    pub fn new(path: PathBuf) -> Cgroup {
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Cgroup { path }
    }
    pub fn child(&self, name: &str) -> Cgroup {
        Cgroup::new(self.path.join(name))
    }
}
impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.path);
    }
}

/// Kills what is left in a cgroup tree and removes it, children first (a parent with children cannot
/// be removed, so a forgotten child must not leave the whole tree behind).
pub(crate) fn remove_cgroup_tree(path: &Path) {
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    if let Ok(procs) = std::fs::read_to_string(path.join("cgroup.procs")) {
        for pid in procs
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    for _ in 0..50 {
        match std::fs::remove_dir(path) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    eprintln!("warning: could not remove cgroup {}", path.display());
}

/// Where a spawned process runs.
#[derive(Default, Clone, Copy)]
pub struct Place<'a> {
    pub cgroup: Option<&'a Path>,
    pub netns: Option<&'a Netns>,
    pub uid: Option<u32>,
}

/// Adds pre_exec hooks that move the child into `place` before it runs: cgroup first (the cgroup fs
/// is not visible from inside `ip netns exec`, so we never use that), then the network namespace.
pub fn place(cmd: &mut Command, place: Place<'_>) {
    let procs: Option<OwnedFd> = place.cgroup.map(|c| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(c.join("cgroup.procs"))
            .unwrap_or_else(|e| panic!("open {}/cgroup.procs: {e}", c.display()))
            .into()
    });
    let ns: Option<OwnedFd> = place
        .netns
        .map(|n| std::fs::File::open(n.path()).expect("open netns").into());
    let uid = place.uid;
    // SAFETY: the hook only makes async-signal-safe syscalls on fds opened before fork.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = &procs {
                // "0" means "the writing process".
                if libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(fd) = &ns {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(uid) = uid {
                if libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Adds a pre_exec hook that moves the child into the network namespace at `ns` (a process with
/// no cgroup or uid change, e.g. a `redis-server` inside a test's store namespace).
pub fn in_netns(cmd: &mut Command, ns: &Path) {
    let fd: OwnedFd = std::fs::File::open(ns)
        .unwrap_or_else(|e| panic!("open {}: {e}", ns.display()))
        .into();
    // SAFETY: setns is async-signal-safe; the fd was opened before fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A helper binary of this package (`sg-probe`, `sg-swarm`), which cargo builds beside the
/// integration-test binaries (target/<profile>/).
pub fn helper_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} missing: build the spendguard-tests package's binaries",
        p.display()
    );
    p
}

fn probe_bin() -> PathBuf {
    helper_bin("sg-probe")
}

/// The result of one `sg-probe` run.
pub fn probe(place_in: Place<'_>, args: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(probe_bin());
    cmd.args(args);
    place(&mut cmd, place_in);
    let out = cmd.output().expect("run sg-probe");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "sg-probe printed {text:?} ({e}); stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// One test's world: node + pod namespaces, a cgroup subtree, a pin dir, a state dir, and the agent.
pub struct World {
    pub id: String,
    pub node: Netns,
    pub pod: Netns,
    pub state: tempfile::TempDir,
    pub pin_dir: PathBuf,
    pub agent: std::sync::Mutex<Option<Child>>,
    /// The cgroup the agent runs in (default: the test process's own).
    pub agent_cgroup: std::sync::Mutex<Option<PathBuf>>,
    /// Extra environment for the agent (set before `start_agent`).
    pub agent_extra_env: std::sync::Mutex<Vec<(String, String)>>,
    /// RLIMIT_NOFILE (soft, hard) the agent starts with (default: inherited from the test).
    pub agent_nofile: std::sync::Mutex<Option<(u64, u64)>>,
    /// The agent binary to start (default: this build's `spendguard-agent`).
    pub agent_bin: std::sync::Mutex<Option<PathBuf>>,
    /// A TOML configuration file the agent starts with (`--config`), set by
    /// [`World::set_agent_config`].
    pub agent_config: std::sync::Mutex<Option<PathBuf>>,
    // Dropped last (fields drop in order): the cgroup root outlives everything above.
    pub cgroup: Cgroup,
}

impl World {
    pub fn new() -> World {
        let id = unique();
        let node = Netns::new(format!("{id}n"));
        let pod = Netns::new(format!("{id}p"));
        // veth created directly inside the namespaces: no host interface, no host address.
        run(
            "ip",
            &[
                "link",
                "add",
                &format!("{id}a"),
                "netns",
                &node.name,
                "type",
                "veth",
                "peer",
                "name",
                &format!("{id}b"),
                "netns",
                &pod.name,
            ],
        );
        node.ip(&[
            "addr",
            "add",
            &format!("{NODE_VETH_IP}/24"),
            "dev",
            &format!("{id}a"),
        ]);
        node.ip(&["link", "set", &format!("{id}a"), "up"]);
        pod.ip(&[
            "addr",
            "add",
            &format!("{POD_VETH_IP}/24"),
            "dev",
            &format!("{id}b"),
        ]);
        pod.ip(&["link", "set", &format!("{id}b"), "up"]);
        pod.ip(&["route", "add", "default", "via", NODE_VETH_IP]);
        for a in [UPSTREAM_A, UPSTREAM_B] {
            node.ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"]);
        }
        node.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{UPSTREAM_V6}/128"),
            "dev",
            "lo",
            "nodad",
        ]);
        let mount = cgroup2_mount().expect("cgroup2");
        let cgroup = Cgroup::new(mount.join(format!("{id}-cg")));
        let state = tempfile::Builder::new()
            .prefix(&format!("{id}-state"))
            .tempdir()
            .expect("state dir");
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{id}"));
        World {
            id,
            node,
            pod,
            state,
            pin_dir,
            agent: std::sync::Mutex::new(None),
            agent_extra_env: std::sync::Mutex::new(Vec::new()),
            agent_nofile: std::sync::Mutex::new(None),
            agent_bin: std::sync::Mutex::new(None),
            agent_config: std::sync::Mutex::new(None),
            agent_cgroup: std::sync::Mutex::new(None),
            cgroup,
        }
    }

    fn agent_slot(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.agent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the agent from `exe` from now on (`None`: this build's).
    pub fn set_agent_bin(&self, exe: Option<PathBuf>) {
        *self.agent_bin.lock().unwrap_or_else(|p| p.into_inner()) = exe;
    }

    /// Starts the agent and expects it to refuse: returns its exit status and log.
    pub fn start_agent_expect_failure(&self) -> (std::process::ExitStatus, String) {
        let mut child = self.spawn_agent();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return (st, self.agent_log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("agent did not refuse to start:\n{}", self.agent_log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `spendguard-agent ARGS` (not the server: `recover`, `uninstall`, …) with this world's
    /// environment.
    pub fn agent_cmd(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin("spendguard-agent"));
        self.agent_env(&mut cmd);
        cmd.args(args).output().expect("run spendguard-agent")
    }

    /// Sets an environment variable for the agent's next start.
    pub fn set_agent_env(&self, key: &str, value: &str) {
        self.agent_extra_env
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((key.to_string(), value.to_string()));
    }

    /// The agent's `/metrics` text (scraped inside the node namespace, where the agent listens on
    /// 127.0.0.1:9464).
    pub fn metrics(&self) -> String {
        self.node.enter(|| {
            use std::io::Read as _;
            let mut s =
                std::net::TcpStream::connect("127.0.0.1:9464").expect("connect to /metrics");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            s.write_all(b"GET /metrics HTTP/1.0\r\nhost: metrics\r\n\r\n")
                .expect("send scrape");
            let mut text = String::new();
            s.read_to_string(&mut text).expect("read /metrics");
            text
        })
    }

    /// Writes `toml` as the agent's configuration file for its next start (`--config`).
    pub fn set_agent_config(&self, toml: &str) {
        let path = self.state.path().join("agent.toml");
        std::fs::write(&path, toml).expect("write agent config");
        *self.agent_config.lock().unwrap_or_else(|p| p.into_inner()) = Some(path);
    }

    pub fn socket(&self) -> PathBuf {
        self.state.path().join("control.sock")
    }

    /// The agent's state dir: `SPENDGUARD_STATE_DIR` from [`World::set_agent_env`], else `state`.
    pub fn state_dir(&self) -> PathBuf {
        self.agent_extra_env
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .find(|(k, _)| k == "SPENDGUARD_STATE_DIR")
            .map(|(_, v)| PathBuf::from(v))
            .unwrap_or_else(|| self.state.path().to_path_buf())
    }

    /// Starts the agent with this RLIMIT_NOFILE (soft, hard) instead of the test's own.
    pub fn set_agent_nofile(&self, soft: u64, hard: u64) {
        *self.agent_nofile.lock().unwrap_or_else(|p| p.into_inner()) = Some((soft, hard));
    }

    /// The running agent's pid.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent_slot().as_ref().map(Child::id)
    }

    /// Whether the agent process is still running (it has not exited or crashed).
    pub fn agent_alive(&self) -> bool {
        matches!(
            self.agent_slot().as_mut().map(|c| c.try_wait()),
            Some(Ok(None))
        )
    }

    fn agent_env(&self, cmd: &mut Command) {
        cmd.env("SPENDGUARD_STATE_DIR", self.state.path())
            .env("SPENDGUARD_SOCKET", self.socket())
            .env("SPENDGUARD_BPF_PIN_DIR", &self.pin_dir)
            .env("SPENDGUARD_ATTACH_CGROUP", &self.cgroup.path)
            .env("SPENDGUARD_REDIRECT_IP", NODE_VETH_IP)
            .env("SPENDGUARD_LISTEN", format!("0.0.0.0:{PROXY_PORT}"))
            .env("SPENDGUARD_METRICS", "127.0.0.1:9464")
            .env("RUST_LOG", "info,spendguard_agent=debug,spendguard=debug");
        for (k, v) in self
            .agent_extra_env
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            cmd.env(k, v);
        }
    }

    /// The agent process as configured (binary, environment, cgroup, netns, RLIMIT_NOFILE), its
    /// stderr appended to the world's agent log.
    fn spawn_agent(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.path().join("agent.log"))
            .expect("agent log");
        let exe = self
            .agent_bin
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| bin("spendguard-agent"));
        let mut cmd = Command::new(exe);
        self.agent_env(&mut cmd);
        if let Some(c) = &*self.agent_config.lock().unwrap_or_else(|p| p.into_inner()) {
            cmd.arg("--config").arg(c);
        }
        cmd.stdout(Stdio::null()).stderr(log);
        let agent_cg = self
            .agent_cgroup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        place(
            &mut cmd,
            Place {
                netns: Some(&self.node),
                cgroup: agent_cg.as_deref(),
                ..Default::default()
            },
        );
        if let Some((soft, hard)) = *self.agent_nofile.lock().unwrap_or_else(|p| p.into_inner()) {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: setrlimit is async-signal-safe; `lim` is a plain value copied into the child.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.spawn().expect("spawn agent")
    }

    /// Starts the agent in the node namespace and waits until its control socket answers.
    pub fn start_agent(&self) {
        assert!(self.agent_slot().is_none(), "agent already running");
        let child = self.spawn_agent();
        *self.agent_slot() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.cli(&["ping"]).status.success() {
                return;
            }
            let exited = self.agent_slot().as_mut().map(|c| c.try_wait());
            if let Some(Ok(Some(st))) = exited {
                panic!("agent exited with {st} during start:\n{}", self.agent_log());
            }
            assert!(
                Instant::now() < deadline,
                "agent did not come up:\n{}",
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL (a crash), not a clean stop.
    pub fn kill_agent(&self) {
        if let Some(mut c) = self.agent_slot().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop_agent(&self) -> std::process::ExitStatus {
        let mut c = self.agent_slot().take().expect("agent running");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st;
            }
            assert!(Instant::now() < deadline, "agent ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("agent.log")).unwrap_or_default()
    }

    /// Runs the `spendguard` CLI against this world's agent.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_as(None, args)
    }

    pub fn cli_as(&self, uid: Option<u32>, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin("spendguard"));
        cmd.env("SPENDGUARD_SOCKET", self.socket()).args(args);
        place(
            &mut cmd,
            Place {
                uid,
                ..Default::default()
            },
        );
        cmd.output().expect("run spendguard")
    }

    /// `spendguard tag`, asserting success.
    pub fn tag(&self, cgroup: &Path, agent: &str) {
        let out = self.cli(&[
            "tag",
            "--cgroup",
            cgroup.to_str().expect("utf8"),
            "--agent",
            agent,
        ]);
        assert!(
            out.status.success(),
            "tag failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `spendguard-agent uninstall` for this world's pin dir.
    pub fn uninstall(&self) -> Output {
        let mut cmd = Command::new(bin("spendguard-agent"));
        self.agent_env(&mut cmd);
        cmd.arg("uninstall").output().expect("run uninstall")
    }

    /// Programs attached to this world's cgroup, as bpftool reports them: (attach type, name).
    pub fn attached_programs(&self) -> Vec<(String, String)> {
        let out = Command::new("bpftool")
            .args(["-j", "cgroup", "show"])
            .arg(&self.cgroup.path)
            .output()
            .expect("bpftool (installed by scripts/dev.sh)");
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Array(vec![]));
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        (
                            p["attach_type"].as_str().unwrap_or("").to_string(),
                            p["name"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.kill_agent();
        let _ = self.uninstall();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        if std::thread::panicking() {
            let _ = writeln!(
                std::io::stderr(),
                "---- agent log of {} ----\n{}",
                self.id,
                self.agent_log()
            );
        }
    }
}
