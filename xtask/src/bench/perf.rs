//! `--perf`: samples the agent with `perf record` while the load phases run, then folds the stacks
//! (inferno) into target/bench/agent.folded and renders target/bench/agent-flamegraph.svg.
//!
//! DWARF unwinding, because release builds have no frame pointers; a low frequency keeps the
//! sampling overhead (and the size of perf.data) small enough not to distort the run much.
//!
//! `--heap`: the agent runs with heaptrack's preload library, which streams every allocation and
//! free with its stack to a raw file; [`heaptrack_interpret`] turns that into the compressed file
//! `heaptrack_print` reads (its "peak memory consumers" is where per-connection bytes show).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context as _};
use inferno::collapse::Collapse as _;

/// Debian's heaptrack package puts its preload library here.
pub const HEAPTRACK_PRELOAD: &str = "/usr/lib/heaptrack/libheaptrack_preload.so";
const HEAPTRACK_INTERPRET: &str = "/usr/lib/heaptrack/libexec/heaptrack_interpret";

/// `agent.heaptrack.raw` (written by the preloaded agent) → `agent.heaptrack.gz`.
pub fn heaptrack_interpret(out_dir: &Path) -> anyhow::Result<PathBuf> {
    let raw = out_dir.join("agent.heaptrack.raw");
    let gz = out_dir.join("agent.heaptrack.gz");
    if !Path::new(HEAPTRACK_PRELOAD).exists() {
        bail!("{HEAPTRACK_PRELOAD} missing (apt-get install heaptrack)");
    }
    let input = std::fs::File::open(&raw)
        .with_context(|| format!("open {} (did the agent start?)", raw.display()))?;
    let mut interpret = Command::new(HEAPTRACK_INTERPRET)
        .stdin(input)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {HEAPTRACK_INTERPRET}"))?;
    let text = interpret
        .stdout
        .take()
        .context("heaptrack_interpret stdout")?;
    let st = Command::new("gzip")
        .arg("-c")
        .stdin(text)
        .stdout(std::fs::File::create(&gz)?)
        .status()
        .context("spawn gzip")?;
    if !interpret.wait()?.success() || !st.success() {
        bail!("heaptrack_interpret | gzip failed");
    }
    std::fs::remove_file(&raw)?;
    Ok(gz)
}

pub struct Recording {
    child: Option<Child>,
    data: PathBuf,
    out_dir: PathBuf,
}

impl Recording {
    pub fn start(out_dir: &Path, pid: u32) -> anyhow::Result<Recording> {
        let data = out_dir.join("agent.perf.data");
        let child = Command::new("perf")
            .args(["record", "-F", "199", "--call-graph", "dwarf,32768", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start `perf record` (install linux-perf)")?;
        // perf needs a moment to attach before the load starts.
        std::thread::sleep(std::time::Duration::from_millis(500));
        Ok(Recording {
            child: Some(child),
            data,
            out_dir: out_dir.to_path_buf(),
        })
    }

    /// Stops the recording and writes the folded stacks and the flame graph; the SVG's path.
    pub fn finish(mut self) -> anyhow::Result<PathBuf> {
        self.stop()?;
        let script = Command::new("perf")
            .arg("script")
            .arg("-i")
            .arg(&self.data)
            .stderr(Stdio::null())
            .output()
            .context("perf script")?;
        if !script.status.success() {
            bail!("perf script failed: {}", script.status);
        }
        let mut folded = Vec::new();
        inferno::collapse::perf::Folder::default()
            .collapse(&script.stdout[..], &mut folded)
            .context("fold perf stacks")?;
        std::fs::write(self.out_dir.join("agent.folded"), &folded)?;
        let svg_path = self.out_dir.join("agent-flamegraph.svg");
        let svg = std::fs::File::create(&svg_path)?;
        let mut opts = inferno::flamegraph::Options::default();
        opts.title = "spendguard-agent under bench load".into();
        inferno::flamegraph::from_reader(&mut opts, &folded[..], svg)
            .context("render flame graph")?;
        Ok(svg_path)
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            // SIGINT makes perf flush and close its data file.
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            )?;
            c.wait()?;
        }
        Ok(())
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// `perf stat` on one process while a phase runs: deterministic counts per request (context
/// switches, system calls, heap allocations — malloc calls through a uprobe on glibc) where the
/// times on a shared 2-vCPU VM are not. This VM has no hardware counters (instructions are
/// `<not supported>`); instruction counts come from callgrind instead (ARCHITECTURE.md).
pub struct Counting {
    child: Option<Child>,
    out: PathBuf,
}

/// The uprobe on glibc's malloc that [`Counting`] counts; removed on drop.
pub struct MallocProbe {
    pub event: Option<&'static str>,
}

const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
const MALLOC_EVENT: &str = "probe_libc:malloc";

impl MallocProbe {
    pub fn add() -> MallocProbe {
        let ok = Path::new(LIBC).exists()
            && Command::new("perf")
                .args(["probe", "-q", "-x", LIBC, "malloc"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        MallocProbe {
            event: ok.then_some(MALLOC_EVENT),
        }
    }
}

impl Drop for MallocProbe {
    fn drop(&mut self) {
        if let Some(ev) = self.event {
            let _ = Command::new("perf")
                .args(["probe", "-q", "-d", ev])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Counting {
    pub fn start(
        out_dir: &Path,
        name: &str,
        pid: u32,
        malloc: Option<&str>,
    ) -> anyhow::Result<Counting> {
        let out = out_dir.join(format!("{name}.perf-stat.csv"));
        let mut events = [
            "task-clock",
            "context-switches",
            "raw_syscalls:sys_enter",
            "syscalls:sys_enter_fdatasync",
            "syscalls:sys_enter_fsync",
            "syscalls:sys_enter_futex",
            "syscalls:sys_enter_epoll_wait",
            "syscalls:sys_enter_pwrite64",
        ]
        .join(",");
        if let Some(m) = malloc {
            events.push(',');
            events.push_str(m);
        }
        let child = Command::new("perf")
            .args(["stat", "-x", ",", "-e", &events, "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start `perf stat` (install linux-perf)")?;
        std::thread::sleep(std::time::Duration::from_millis(300));
        Ok(Counting {
            child: Some(child),
            out,
        })
    }

    /// Stops counting; each event's count (task-clock in ms).
    pub fn finish(mut self) -> anyhow::Result<Vec<(String, f64)>> {
        self.stop()?;
        let text = std::fs::read_to_string(&self.out)?;
        // CSV lines: value,unit,event,...; comments start with '#'.
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                Some((f.get(2)?.to_string(), f.first()?.parse::<f64>().ok()?))
            })
            .collect())
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            )?;
            c.wait()?;
        }
        Ok(())
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
