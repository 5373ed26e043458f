//! Real clients for the interception tests: the provider SDKs (Python) and `curl`, run as child
//! processes placed in a test's cgroup and network namespace (the cgroup decides redirection, so the
//! client must be its own process).
//!
//! Network safety: clients reach providers *by name* (the SDKs with their default base URLs), and every
//! name is pinned to an address inside the test's namespaces:
//! - Python runs in a private mount namespace whose `/etc/hosts` is a test hosts file (bind-mounted
//!   after the child entered the cgroup and the netns), and a prelude refuses any lookup that answers
//!   with an address outside 127.0.0.0/8, 10.77.0.0/16 or fd77::/16;
//! - `curl` gets `--resolve` for every name it uses.
//!
//! The environment is cleared (no proxy variables, no `*_BASE_URL`), and every child has a deadline.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{place, Place};

/// How long any one client process may run.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The Python interpreter of the SDK venv: `SPENDGUARD_SDK_PYTHON` (set by `cargo xtask test`) or
/// `target/sdk-venv/bin/python`.
pub fn sdk_python() -> PathBuf {
    let p = std::env::var_os("SPENDGUARD_SDK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sdk-venv/bin/python")
        });
    assert!(
        p.exists(),
        "{} missing: run `bash scripts/dev.sh setup` (it creates the SDK venv)",
        p.display()
    );
    p
}

/// Whether `addr` is an address the tests may connect to: loopback or inside the test namespaces.
pub fn is_test_address(addr: &str) -> bool {
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => {
            a.is_loopback() || (a.octets()[0] == 10 && a.octets()[1] == 77)
        }
        Ok(std::net::IpAddr::V6(a)) => a.is_loopback() || a.segments()[0] == 0xfd77,
        Err(_) => false,
    }
}

/// What a bounded child run produced.
#[derive(Debug)]
pub struct Finished {
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Spawns `cmd` (already placed and configured) and waits at most `timeout`; kills it after that.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Finished {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break None,
        }
    };
    Finished {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
        timed_out,
    }
}

/// Refuses any name resolution that leaves the test namespaces, then defines `emit(value)`, which
/// the snippet calls to hand its JSON result back to the test.
const PRELUDE: &str = r#"
import ipaddress as _ipaddress, json as _json, socket as _socket
_ALLOWED = [_ipaddress.ip_network(n) for n in ("127.0.0.0/8", "10.77.0.0/16", "fd77::/16", "::1/128")]
_real_getaddrinfo = _socket.getaddrinfo
def _pinned_getaddrinfo(host, *args, **kwargs):
    answers = _real_getaddrinfo(host, *args, **kwargs)
    for a in answers:
        ip = _ipaddress.ip_address(str(a[4][0]).split("%")[0])
        if not any(ip in n for n in _ALLOWED):
            raise OSError(f"test safety: {host!r} resolved to {ip}, outside the test namespaces")
    return answers
_socket.getaddrinfo = _pinned_getaddrinfo
def emit(value):
    print("SPENDGUARD-RESULT " + _json.dumps(value), flush=True)
"#;

/// A hosts file mapping each name to a test address (panics on any other address).
pub fn write_hosts_file(path: &Path, names: &[(&str, &str)]) {
    let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
    for (name, addr) in names {
        assert!(
            is_test_address(addr),
            "refusing to map {name} to {addr}: not inside the test namespaces"
        );
        text.push_str(&format!("{addr} {name}\n"));
    }
    std::fs::write(path, text).expect("write hosts file");
}

/// Runs a Python snippet with the SDK venv in `at` (cgroup, then netns), `/etc/hosts` replaced by a
/// file mapping `names` (name → test address), and `SSL_CERT_FILE=ca` as the only trusted CA. The
/// snippet calls `emit(value)`; the last value emitted is returned. Panics (with stderr) when the
/// snippet fails, times out or emits nothing.
pub fn python(at: Place<'_>, names: &[(&str, &str)], ca: &Path, code: &str) -> serde_json::Value {
    let dir = tempfile::Builder::new()
        .prefix("sg-sdk")
        .tempdir()
        .expect("sdk temp dir");
    let hosts = dir.path().join("hosts");
    write_hosts_file(&hosts, names);
    let script = dir.path().join("snippet.py");
    std::fs::write(&script, format!("{PRELUDE}\n{code}\n")).expect("write snippet");
    let mut cmd = Command::new("unshare");
    // `unshare --mount` makes the new mount namespace private, so the bind mount stays in it.
    cmd.args(["--mount", "--", "sh", "-c"])
        .arg(r#"mount --bind "$1" /etc/hosts && exec "$2" "$3""#)
        .arg("sh")
        .arg(&hosts)
        .arg(sdk_python())
        .arg(&script)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("HOME", dir.path())
        .env("SSL_CERT_FILE", ca)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    place(&mut cmd, at);
    let started = Instant::now();
    let out = run_bounded(cmd, CLIENT_TIMEOUT);
    let stdout = out.stdout_str();
    let result = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("SPENDGUARD-RESULT "));
    match (out.success(), result) {
        (true, Some(r)) => serde_json::from_str(r)
            .unwrap_or_else(|e| panic!("snippet emitted invalid JSON ({e}): {r}")),
        _ => panic!(
            "python snippet failed (status {:?}, timed out: {}, after {:?})\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            out.timed_out,
            started.elapsed(),
            out.stderr_str()
        ),
    }
}
