//! A real `redis-server` for the cluster-budget tests: on 127.0.0.1, on a free port, with its own
//! temporary directory and the persistence SpendGuard needs (`appendonly yes`, `appendfsync
//! always`). Killed on Drop. Also a 3-primary Redis Cluster started the same way.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `redis-server` and `redis-cli` are installed (scripts/dev.sh installs them); prints a
/// skip line if not.
pub fn available() -> bool {
    let ok = ["redis-server", "redis-cli"].iter().all(|b| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !ok {
        crate::skip(
            "redis-server/redis-cli not installed (bash scripts/dev.sh setup installs them)",
        );
    }
    ok
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One `redis-server` process.
pub struct RedisServer {
    pub port: u16,
    /// The address it binds and is reached at (127.0.0.1, or an address inside `netns`).
    host: String,
    /// The network namespace it runs in (`None`: the test's own).
    netns: Option<PathBuf>,
    /// `requirepass` (a server reached from other namespaces is not on loopback, so Redis's
    /// protected mode wants a password, as any real deployment has).
    password: Option<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
    /// TLS only (`rediss://`): the CA file that signed the server's certificate.
    tls_ca: Option<PathBuf>,
}

impl RedisServer {
    /// Starts a standalone server and waits until it answers.
    pub fn start() -> RedisServer {
        Self::start_with(free_port(), Vec::new())
    }

    /// Starts a standalone server inside the network namespace `ns`, bound to `host:6379` there
    /// (the namespace is the test's own, so the port is free), with a password.
    pub fn start_in(ns: &crate::Netns, host: &str) -> RedisServer {
        let pass = format!("sg-{}", std::process::id());
        Self::spawn_new(
            6379,
            host.to_string(),
            Some(ns.path()),
            vec!["--requirepass".into(), pass],
        )
    }

    /// Like [`RedisServer::start_in`], but speaking only TLS (`rediss://`), with a certificate for
    /// `host` from a private test CA ([`RedisServer::tls_ca`]).
    pub fn start_in_tls(ns: &crate::Netns, host: &str) -> RedisServer {
        let pass = format!("sg-{}", std::process::id());
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let ca = crate::fake_provider::TestCa::new("cluster store CA");
        let (cert, key) = ca.leaf_pem(&[host]);
        let (ca_path, cert_path, key_path) = (
            dir.path().join("ca.crt"),
            dir.path().join("server.crt"),
            dir.path().join("server.key"),
        );
        std::fs::write(&ca_path, ca.cert_pem()).expect("write store CA");
        std::fs::write(&cert_path, cert).expect("write store cert");
        std::fs::write(&key_path, key).expect("write store key");
        let path = |p: &Path| p.to_str().expect("utf8").to_string();
        let extra = vec![
            "--requirepass".into(),
            pass.clone(),
            "--tls-port".into(),
            "6379".into(),
            "--tls-cert-file".into(),
            path(&cert_path),
            "--tls-key-file".into(),
            path(&key_path),
            "--tls-ca-cert-file".into(),
            path(&ca_path),
            // Server authentication only: the agents present no client certificate.
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        let mut s = RedisServer {
            port: 6379,
            host: host.to_string(),
            netns: Some(ns.path()),
            password: Some(pass),
            dir,
            child: None,
            extra,
            tls_ca: Some(ca_path),
        };
        s.spawn();
        s
    }

    /// The CA file a TLS server's certificate chains to.
    pub fn tls_ca(&self) -> Option<&Path> {
        self.tls_ca.as_deref()
    }

    fn start_with(port: u16, extra: Vec<String>) -> RedisServer {
        Self::spawn_new(port, "127.0.0.1".into(), None, extra)
    }

    fn spawn_new(
        port: u16,
        host: String,
        netns: Option<PathBuf>,
        extra: Vec<String>,
    ) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let password = extra
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| extra.get(i + 1))
            .cloned();
        let mut s = RedisServer {
            port,
            host,
            netns,
            password,
            dir,
            child: None,
            extra,
            tls_ca: None,
        };
        s.spawn();
        s
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).expect("redis log");
        let mut cmd = Command::new("redis-server");
        if let Some(ns) = &self.netns {
            crate::in_netns(&mut cmd, ns);
        }
        // TLS: `--port 0`, no plain-text listener at all (the TLS port is in `extra`).
        let plain = if self.tls_ca.is_some() { 0 } else { self.port };
        let child = cmd
            .args(["--bind", &self.host, "--port", &plain.to_string()])
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING; log: {}",
                self.port,
                std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://[:PASSWORD@]HOST:PORT`.
    pub fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.password {
            Some(p) => format!("{scheme}://:{p}@{}:{}", self.host, self.port),
            None => format!("{scheme}://{}:{}", self.host, self.port),
        }
    }

    /// Whether it answers PING now.
    pub fn ping(&self) -> bool {
        self.cli(&["PING"]).is_some_and(|o| o.trim() == "PONG")
    }

    /// Runs `redis-cli -h HOST -p PORT ARGS…` (in its namespace); its stdout, or `None` if it
    /// failed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let mut cmd = Command::new("redis-cli");
        if let Some(ns) = &self.netns {
            crate::in_netns(&mut cmd, ns);
        }
        if let Some(p) = &self.password {
            cmd.args(["-a", p, "--no-auth-warning"]);
        }
        if let Some(ca) = &self.tls_ca {
            cmd.arg("--tls").arg("--cacert").arg(ca);
        }
        let out = cmd
            .args(["-h", &self.host, "-p", &self.port.to_string()])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        (out.status.success() && !s.starts_with("Could not connect")).then_some(s)
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    }

    /// `kill -9`, and waits for it to be gone.
    pub fn kill9(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and directory (its append-only file).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Freezes it (SIGSTOP): connections hang, nothing answers — an unreachable store.
    pub fn freeze(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a frozen server run again.
    pub fn thaw(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    /// Calls the server has served of `commands` (lower case, e.g. `evalsha`; empty: every
    /// command), from `INFO commandstats`; 0 if it does not answer.
    pub fn command_calls(&self, commands: &[&str]) -> u64 {
        command_calls(
            &self.cli(&["INFO", "commandstats"]).unwrap_or_default(),
            commands,
        )
    }

    /// A field of a hash, as a number (0 if absent).
    pub fn hget_u64(&self, key: &str, field: &str) -> u64 {
        self.cli(&["HGET", key, field])
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// A string key, as a number (0 if absent).
    pub fn get_u64(&self, key: &str) -> u64 {
        self.cli(&["GET", key])
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A frozen process ignores nothing but SIGKILL; thaw anyway so its fds close cleanly.
        self.thaw();
        self.kill9();
    }
}

/// A Redis Cluster of three primaries (no replicas), each a [`RedisServer`] with
/// `cluster-enabled yes`, joined by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let port = free_port();
                RedisServer::start_with(
                    port,
                    vec![
                        "--cluster-enabled".into(),
                        "yes".into(),
                        "--cluster-config-file".into(),
                        format!("nodes-{port}.conf"),
                        "--cluster-node-timeout".into(),
                        "2000".into(),
                    ],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let c = RedisCluster { nodes };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !c.nodes.iter().all(|n| {
            n.cli(&["CLUSTER", "INFO"])
                .is_some_and(|s| s.contains("cluster_state:ok"))
        }) {
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// Where the slot of `key` lives, via `redis-cli -c` (follows redirects).
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args([
                "-c",
                "-h",
                "127.0.0.1",
                "-p",
                &self.nodes[0].port.to_string(),
            ])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    }
}

/// The directory of a temp file path (for callers that want the AOF).
pub fn aof_dir(s: &RedisServer) -> PathBuf {
    s.dir().join("appendonlydir")
}

/// Σ `calls` of the `cmdstat_NAME:calls=N,…` lines of `INFO commandstats` whose NAME is in
/// `commands` (empty: all of them).
pub fn command_calls(info: &str, commands: &[&str]) -> u64 {
    command_table(info)
        .into_iter()
        .filter(|(name, _)| commands.is_empty() || commands.contains(&name.as_str()))
        .map(|(_, n)| n)
        .sum()
}

/// `calls` per command of `INFO commandstats` (`cmdstat_NAME:calls=N,…` lines).
pub fn command_table(info: &str) -> std::collections::BTreeMap<String, u64> {
    info.lines()
        .filter_map(|l| {
            let (name, stats) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let n = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .trim()
                .parse::<u64>()
                .ok()?;
            Some((name.to_string(), n))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_calls_sums_the_named_commands() {
        let info = "# Commandstats\r\n\
            cmdstat_get:calls=12,usec=30,usec_per_call=2.50,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_evalsha:calls=5,usec=100,usec_per_call=20.00,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_eval:calls=2,usec=10\r\n\
            garbage line\r\n";
        assert_eq!(super::command_calls(info, &[]), 19);
        assert_eq!(super::command_calls(info, &["evalsha", "eval"]), 7);
        assert_eq!(super::command_calls(info, &["set"]), 0);
        assert_eq!(super::command_calls("", &[]), 0);
    }
}
