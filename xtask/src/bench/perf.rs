//! `--perf`: samples the agent with `perf record` while the load phases run, then folds the stacks
//! (inferno) into target/bench/agent.folded and renders target/bench/agent-flamegraph.svg.
//!
//! DWARF unwinding, because release builds have no frame pointers; a low frequency keeps the
//! sampling overhead (and the size of perf.data) small enough not to distort the run much.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context as _};
use inferno::collapse::Collapse as _;

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
