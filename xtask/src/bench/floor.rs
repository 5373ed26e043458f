//! The floor column: the same tagged-cgroup → eBPF redirect path as transparent mode, ending in
//! `sg-floor` (spendguard-agent/examples/sg-floor.rs, a TLS-terminating proxy with no logic).
//!
//! How the redirect reaches the floor honestly: a second agent process installs the agent's own BPF
//! programs on a sibling cgroup subtree (its own pin dir, redirect port [`FLOOR_PORT`]), tags a
//! cgroup there, and is then killed. Pinned links keep redirecting after the agent is gone (that is
//! how the agent fails closed), so connects from that cgroup are rewritten exactly as transparent
//! mode's are — same programs, same maps, same sock_ops re-keying — to a port where `sg-floor` now
//! listens, with a leaf from the main agent's CA, forwarding to the same fake provider through the
//! agent's own upstream pool. On drop: `spendguard-agent uninstall` for that pin dir, then the pins,
//! the cgroups and the processes are removed.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use spendguard_tests::{place, Cgroup, Place, World, NODE_VETH_IP, UPSTREAM_A};

use super::{Guard, HOST};

/// Where the floor's redirect points (the agent's own proxy keeps 15443).
pub const FLOOR_PORT: u16 = 15444;

/// The floor's processes, redirect and cgroups; everything is removed on drop.
pub struct Floor {
    pub pid: u32,
    /// The tagged cgroup the load generator runs in for the floor column.
    pub client_cgroup: PathBuf,
    proc: Guard,
    env: Vec<(String, String)>,
    agent_bin: PathBuf,
    pin_dir: PathBuf,
    _state: tempfile::TempDir,
    // Dropped last: the cgroups outlive the processes in them.
    _client: Cgroup,
    _root: Cgroup,
}

impl Floor {
    /// `plain_cgroup`: untagged, for sg-floor itself (its upstream connects must not be redirected,
    /// and they also carry the agent's SO_MARK).
    pub fn start(
        root: &Path,
        w: &World,
        plain_cgroup: &Path,
        upstream_ca: &Path,
    ) -> anyhow::Result<Floor> {
        let mount = spendguard_tests::cgroup2_mount().ok_or_else(|| anyhow!("no cgroup2"))?;
        let froot = Cgroup::new(mount.join(format!("{}-floor-cg", w.id)));
        let client = froot.child("bench");
        let state = tempfile::Builder::new()
            .prefix(&format!("{}-floor-state", w.id))
            .tempdir()?;
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{}-floor", w.id));
        let socket = state.path().join("control.sock");
        let env: Vec<(String, String)> = [
            ("SPENDGUARD_STATE_DIR", state.path().display().to_string()),
            ("SPENDGUARD_SOCKET", socket.display().to_string()),
            ("SPENDGUARD_BPF_PIN_DIR", pin_dir.display().to_string()),
            ("SPENDGUARD_ATTACH_CGROUP", froot.path.display().to_string()),
            ("SPENDGUARD_REDIRECT_IP", NODE_VETH_IP.to_string()),
            ("SPENDGUARD_LISTEN", format!("0.0.0.0:{FLOOR_PORT}")),
            ("SPENDGUARD_METRICS", "127.0.0.1:9465".to_string()),
            ("RUST_LOG", "warn".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let bin_dir = root.join("target/release");
        let agent_bin = bin_dir.join("spendguard-agent");
        let mut floor = Floor {
            pid: 0,
            client_cgroup: client.path.clone(),
            proc: Guard(None),
            env,
            agent_bin,
            pin_dir,
            _state: state,
            _client: client,
            _root: froot,
        };

        // 1. The agent's redirect, installed and left pinned.
        let mut cmd = Command::new(&floor.agent_bin);
        cmd.envs(floor.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        place(
            &mut cmd,
            Place {
                netns: Some(&w.node),
                ..Default::default()
            },
        );
        let mut redirect_agent = Guard(Some(cmd.spawn().context("spawn the floor's agent")?));
        let cli = |args: &[&str]| {
            Command::new(bin_dir.join("spendguard"))
                .env("SPENDGUARD_SOCKET", &socket)
                .args(args)
                .output()
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cli(&["ping"]).is_ok_and(|o| o.status.success()) {
            if Instant::now() > deadline {
                bail!("the floor's redirect agent did not come up");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let cg = floor.client_cgroup.to_str().unwrap_or_default();
        let out = cli(&["tag", "--cgroup", cg, "--agent", "bench.floor"])?;
        if !out.status.success() {
            bail!(
                "tag the floor cgroup: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // SIGKILL, not SIGTERM: a crash leaves the links pinned, and the redirect in force.
        if let Some(mut c) = redirect_agent.0.take() {
            c.kill()?;
            c.wait()?;
        }

        // 2. sg-floor on the redirect's port.
        let mut cmd = Command::new(bin_dir.join("examples/sg-floor"));
        cmd.args(["--listen", &format!("0.0.0.0:{FLOOR_PORT}")])
            .args(["--upstream", &format!("{UPSTREAM_A}:443")])
            .args(["--host", HOST])
            .arg("--state-dir")
            .arg(w.state.path())
            .arg("--upstream-ca")
            .arg(upstream_ca)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        place(
            &mut cmd,
            Place {
                cgroup: Some(plain_cgroup),
                netns: Some(&w.node),
                uid: None,
            },
        );
        floor.proc = Guard(Some(cmd.spawn().context("spawn sg-floor")?));
        let child = floor
            .proc
            .0
            .as_mut()
            .ok_or_else(|| anyhow!("sg-floor not running"))?;
        floor.pid = child.id();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("sg-floor stdout"))?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("sg-floor did not start: {line:?}");
        }
        Ok(floor)
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        drop(self.proc.0.take().map(|c| Guard(Some(c))));
        let _ = Command::new(&self.agent_bin)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("uninstall")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}
