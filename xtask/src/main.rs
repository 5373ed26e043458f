//! `cargo xtask`: the project's privileged workflows, the aya way.
//!
//!   cargo xtask test [-- <cargo test args>]   build everything, run unit + in-process + privileged e2e tests
//!   cargo xtask bench [--quick] [--no-litellm] side-by-side benchmark (root), results in target/bench/
//!   cargo xtask sim [--nodes N --agents N --secs S --seed S]  cluster leases at fleet scale, simulated

use std::path::{Path, PathBuf};
use std::process::Command;

mod bench;
mod prev_release;
mod sim;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the agent (with its BPF object) and run every test, privileged ones included (needs root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Side-by-side benchmark (needs root): direct vs SpendGuard transparent vs explicit proxy (vs
    /// LiteLLM's proxy), latency, max RPS, new-connection cost, RSS with open streams, ledger,
    /// overspend. Writes target/bench/results.md. Never run by `test` or CI.
    Bench {
        /// Shorter runs (about 3 minutes after the build).
        #[arg(long)]
        quick: bool,
        /// Skip the LiteLLM column and its install.
        #[arg(long)]
        no_litellm: bool,
        /// Only these modes (comma-separated: direct, floor, transparent, explicit, litellm).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Only these phases (comma-separated: rate, max, sse, counts, newconn, idle, streams, overspend, cluster, ledger).
        #[arg(long, value_delimiter = ',')]
        phases: Vec<String>,
        /// Record the agent with `perf record -g` during the load phases and write
        /// target/bench/agent.perf.txt (folded stacks) and agent-flamegraph.svg.
        #[arg(long)]
        perf: bool,
        /// Record every heap allocation of the agent with heaptrack (Debian's package, by
        /// LD_PRELOAD) and write target/bench/agent.heaptrack.gz (`heaptrack_print` reads it).
        /// Slows the agent: its figures from such a run are not comparable.
        #[arg(long)]
        heap: bool,
    },
    /// Simulate the cluster lease protocol at fleet scale (store ops/s, budget stranded in idle
    /// slices, time for budget to move between nodes). Needs nothing but a CPU; seconds to run.
    Sim {
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        #[arg(long, default_value_t = 100)]
        agents: usize,
        /// Simulated seconds.
        #[arg(long, default_value_t = 600)]
        secs: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Largest slice, USD.
        #[arg(long, default_value_t = 1.0)]
        lease_usd: f64,
        /// A slice is at most 1/(divisor × holders) of what is left.
        #[arg(long, default_value_t = 8)]
        divisor: u64,
        /// Evaluate a design the agent does not have yet: slices nobody waits for go back after
        /// this many ms, and a refused node raises a recall that shortens it to 1 s (0: the
        /// agent as built, always 1 s).
        #[arg(long, default_value_t = 0)]
        idle_long_ms: u64,
    },
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn status(mut cmd: Command) -> anyhow::Result<()> {
    let st = cmd.status().with_context(|| format!("spawn {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Task::Sim {
            nodes,
            agents,
            secs,
            seed,
            lease_usd,
            divisor,
            idle_long_ms,
        } => {
            if nodes == 0
                || agents == 0
                || secs == 0
                || lease_usd.is_nan()
                || lease_usd <= 0.0
                || divisor == 0
            {
                bail!("--nodes, --agents, --secs, --lease-usd and --divisor must be above zero");
            }
            let p = sim::Params {
                nodes,
                agents,
                secs,
                seed,
                lease_max: (lease_usd * 1e6).round() as u64,
                divisor,
                idle_long_ms,
                ..sim::Params::default()
            };
            print!("{}", sim::run(&p).render(&p));
            Ok(())
        }
        Task::Bench {
            quick,
            no_litellm,
            only,
            phases,
            perf,
            heap,
        } => bench::run(
            &root,
            bench::Select {
                quick,
                litellm: !no_litellm,
                only,
                phases,
                perf,
                heap,
            },
        ),
        Task::Test { args } => {
            if !nix_is_root() {
                eprintln!("SPENDGUARD-SKIP: cargo xtask test is not running as root; privileged tests will skip");
            }
            // Binaries first: the e2e tests run the real agent and CLI.
            let mut build = cargo();
            build.current_dir(&root).args([
                "build",
                "--workspace",
                "--exclude",
                "spendguard-ebpf",
                "--bins",
            ]);
            status(build)?;
            let prev = prev_release::ensure(&root)?;
            let mut test = cargo();
            if nix_is_root() {
                test.env("SPENDGUARD_KUBE_BIN_DIR", kube_bins(&root)?);
            }
            test.current_dir(&root)
                .env("SPENDGUARD_BIN_DIR", root.join("target/debug"))
                .env("SPENDGUARD_PREV_BIN_DIR", prev)
                .env(
                    "SPENDGUARD_SDK_PYTHON",
                    root.join("target/sdk-venv/bin/python"),
                )
                .args(["test", "--workspace", "--exclude", "spendguard-ebpf"])
                .args(&args);
            status(test)
        }
    }
}

/// The Kubernetes tier's binaries (kube-apiserver, kubelet, kubectl, pause), built once from Debian's
/// source package into a cache outside the repository by `scripts/kube-bins.sh` (which also
/// apt-installs etcd, containerd, runc); the directory it prints.
fn kube_bins(root: &Path) -> anyhow::Result<PathBuf> {
    let out = Command::new("bash")
        .arg(root.join("scripts/kube-bins.sh"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("run scripts/kube-bins.sh")?;
    if !out.status.success() {
        bail!(
            "scripts/kube-bins.sh failed ({}): the Kubernetes tests need its binaries",
            out.status
        );
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if dir.is_empty() {
        bail!("scripts/kube-bins.sh printed no directory");
    }
    Ok(PathBuf::from(dir))
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
