//! `cargo xtask bench [--quick]`: SpendGuard side by side with a direct connection (and LiteLLM's
//! proxy when it can be installed), in one run, on this machine.
//!
//! Network safety: everything runs inside a fresh [`World`] (its own node/pod network namespaces,
//! cgroup subtree, bpffs pin dir and state dir), which is removed on drop, also when a step fails or
//! panics. The fake provider listens on 10.77.3.1:443 *inside* the node namespace; the load generator
//! (`sg-load`), the agent and LiteLLM run there too. Every step is bounded in requests and time.

mod cluster;
mod floor;
mod litellm;
mod perf;
mod report;

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde_json::Value;
use spendguard_tests::{place, Place, World, UPSTREAM_A};

pub use report::Results;

pub const EXPLICIT: &str = "127.0.0.1:15080";
pub const HOST: &str = "api.openai.com";

/// Run lengths.
#[derive(Clone, Copy)]
pub struct Plan {
    pub rate_secs: f64,
    /// The fixed-rate phases run this many rounds, each in a rotated mode order; the table shows
    /// each percentile's median over the rounds (one round on a shared 2-vCPU VM moved the
    /// added p99 by milliseconds between runs).
    pub rounds: usize,
    pub max_secs: f64,
    pub max_conns: usize,
    pub newconn: usize,
    pub streams: usize,
    pub hold_secs: f64,
    /// Idle keep-alive connections held open at once (memory per connection).
    pub idle_conns: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                rate_secs: 5.0,
                rounds: 1,
                max_secs: 5.0,
                max_conns: 64,
                newconn: 100,
                streams: 1000,
                hold_secs: 3.0,
                idle_conns: 2000,
            }
        } else {
            Plan {
                rate_secs: 15.0,
                rounds: 3,
                max_secs: 10.0,
                max_conns: 64,
                newconn: 500,
                streams: 1000,
                hold_secs: 10.0,
                idle_conns: 10_000,
            }
        }
    }
}

/// A child process killed (and reaped) on drop.
pub struct Guard(pub Option<Child>);
impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One way of reaching the fake provider.
pub struct Mode {
    pub name: &'static str,
    pub cgroup: PathBuf,
    pub args: Vec<String>,
    /// The proxy process whose CPU time this mode's requests cost (none for direct).
    pub cpu_pid: Option<u32>,
}

pub struct Bench<'w> {
    pub root: PathBuf,
    pub w: &'w World,
    pub cas: Vec<PathBuf>,
}

impl Bench<'_> {
    fn load_bin(&self) -> PathBuf {
        self.root.join("target/release/sg-load")
    }

    fn cmd(&self, m: &Mode, args: &[String]) -> Command {
        let mut cmd = Command::new(self.load_bin());
        for ca in &self.cas {
            cmd.arg("--ca").arg(ca);
        }
        cmd.args(&m.args).args(args);
        cmd.stdin(Stdio::null());
        place(
            &mut cmd,
            Place {
                cgroup: Some(&m.cgroup),
                netns: Some(&self.w.node),
                uid: None,
            },
        );
        cmd
    }

    /// Runs `sg-load` for `m` with `args`, killed after `limit`; its JSON result.
    pub fn load(&self, m: &Mode, args: &[&str], limit: Duration) -> anyhow::Result<Value> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut cmd = self.cmd(m, &args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().context("spawn sg-load")?;
        let pid = child.id();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d2 = done.clone();
        // Watchdog: the load generator never outlives its bound.
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while t0.elapsed() < limit {
                if d2.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        });
        let out = child.wait_with_output();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let out = out?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().unwrap_or("");
        serde_json::from_str(line).map_err(|e| {
            anyhow!(
                "sg-load {} {args:?}: {e}; stdout {text:?} stderr {}",
                m.name,
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// `--streams n`: holds n slow SSE streams open through `m`; calls `sample` once they are open.
    pub fn streams(
        &self,
        m: &Mode,
        n: usize,
        hold: f64,
        sample: impl FnOnce() -> Option<u64>,
    ) -> anyhow::Result<(usize, Option<u64>, Value)> {
        let args = vec![
            "--streams".to_string(),
            n.to_string(),
            "--hold".into(),
            hold.to_string(),
        ];
        self.hold_open(m, &args, sample)
    }

    /// Runs `sg-load ARGS` (a mode that prints `open K` and then holds its connections), calls
    /// `sample` once they are open; (K, the sample, its final JSON).
    fn hold_open(
        &self,
        m: &Mode,
        args: &[String],
        sample: impl FnOnce() -> Option<u64>,
    ) -> anyhow::Result<(usize, Option<u64>, Value)> {
        let mut cmd = self.cmd(m, args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
        let mut g = Guard(Some(cmd.spawn().context("spawn sg-load")?));
        let stdout =
            g.0.as_mut()
                .and_then(|c| c.stdout.take())
                .ok_or_else(|| anyhow!("no stdout"))?;
        // sg-load bounds itself (60 s ramp + hold); the Guard kills it on any error.
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines.next().transpose()?.unwrap_or_default();
        let opened: usize = first
            .strip_prefix("open ")
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| anyhow!("sg-load {args:?} printed {first:?}"))?;
        std::thread::sleep(Duration::from_millis(500));
        let rss = sample();
        let last = lines.next().transpose()?.unwrap_or_default();
        let v: Value = serde_json::from_str(&last).unwrap_or(Value::Null);
        Ok((opened, rss, v))
    }
}

pub fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `RssAnon`, `RssFile` and `RssShmem` of `pid`, as one line.
pub fn rss_parts_kb(pid: u32) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let parts: Vec<String> = s
        .lines()
        .filter(|l| l.starts_with("Rss"))
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some(format!(
                "{} {}",
                k.trim_start_matches("Rss"),
                v.split_whitespace().next()?
            ))
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// utime + stime of `pid`, seconds (USER_HZ = 100 on Linux).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn cargo(root: &Path) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root);
    c
}

fn must(mut cmd: Command) -> anyhow::Result<()> {
    let st = cmd.status().with_context(|| format!("spawn {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

/// Raises the soft open-files limit to the hard one: 1,000 streams need ~2,000 fds in the agent
/// (which inherits this limit) and the load generator.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Starts `sg-fastfake` on `UPSTREAM_A:443` inside `w`'s node namespace, in `cgroup`; returns its
/// guard and the CA file it wrote (what the agent trusts upstream).
fn fastfake(root: &Path, w: &World, cgroup: &Path) -> anyhow::Result<(Guard, PathBuf)> {
    let fake_ca = w.state.path().join("upstream-ca.pem");
    let mut fake_cmd = Command::new(root.join("target/release/sg-fastfake"));
    fake_cmd
        .args(["--listen", &format!("{UPSTREAM_A}:443")])
        .args(["--host", HOST, "--host", UPSTREAM_A, "--ca-out"])
        .arg(&fake_ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    place(
        &mut fake_cmd,
        Place {
            cgroup: Some(cgroup),
            netns: Some(&w.node),
            uid: None,
        },
    );
    let mut fake = Guard(Some(fake_cmd.spawn().context("spawn sg-fastfake")?));
    let fake_out = fake
        .0
        .as_mut()
        .and_then(|c| c.stdout.take())
        .ok_or_else(|| anyhow!("fake stdout"))?;
    let mut line = String::new();
    std::io::BufReader::new(fake_out).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("sg-fastfake did not start: {line:?}");
    }
    Ok((fake, fake_ca))
}

/// What to run: everything by default; `--only`/`--phases` narrow a run down for profiling.
pub struct Select {
    pub quick: bool,
    pub litellm: bool,
    pub only: Vec<String>,
    pub phases: Vec<String>,
    pub perf: bool,
    pub heap: bool,
}

impl Select {
    fn mode(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|m| m == name)
    }
    fn phase(&self, name: &str) -> bool {
        self.phases.is_empty() || self.phases.iter().any(|p| p == name)
    }
}

pub fn run(root: &Path, sel: Select) -> anyhow::Result<()> {
    if !spendguard_tests::privileged() {
        bail!("cargo xtask bench needs root, BTF and cgroup v2 (see above)");
    }
    let quick = sel.quick;
    let with_litellm = sel.litellm && sel.mode("litellm");
    let plan = Plan::new(quick);
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(out_dir.join("tmp"))?;

    eprintln!("bench: building release binaries");
    let mut b = cargo(root);
    b.args([
        "build",
        "--release",
        "-p",
        "spendguard-agent",
        "--bins",
        "--example",
        "sg-floor",
    ]);
    must(b)?;
    let mut b = cargo(root);
    b.args([
        "build",
        "--release",
        "-p",
        "xtask",
        "--bin",
        "sg-load",
        "-p",
        "spendguard-tests",
        "--bin",
        "sg-fastfake",
    ]);
    must(b)?;
    let mut b = cargo(root);
    b.args([
        "bench",
        "--no-run",
        "-p",
        "spendguard-ledger",
        "--bench",
        "reserve",
    ]);
    must(b)?;

    raise_nofile();
    // The World's fixtures find the binaries here; its state dir (the ledger) lands on a real disk
    // under target/bench/tmp, not tmpfs, so fsyncs cost what they cost.
    // SAFETY (env): single-threaded at this point.
    std::env::set_var("SPENDGUARD_BIN_DIR", root.join("target/release"));
    std::env::set_var("TMPDIR", out_dir.join("tmp"));

    let mut res = Results::new(quick, &plan);
    {
        let w = World::new();
        let bench_cg = w.cgroup.child("bench"); // tagged: transparent mode
        let plain_cg = w.cgroup.child("plain"); // untagged: direct, explicit, LiteLLM
        let fake_cg = w.cgroup.child("fake");
        let (fake, fake_ca) = fastfake(root, &w, &fake_cg.path)?;

        w.set_agent_env(
            "SPENDGUARD_UPSTREAM_CA",
            fake_ca.to_str().unwrap_or_default(),
        );
        w.set_agent_env("SPENDGUARD_EXPLICIT_LISTEN", EXPLICIT);
        w.set_agent_env(
            "SPENDGUARD_EXPLICIT_RESOLVE",
            &format!("{HOST}={UPSTREAM_A}"),
        );
        // Production log level: the fixtures default to debug, which would measure the logger.
        w.set_agent_env("RUST_LOG", "warn");
        if sel.heap {
            w.set_agent_env("LD_PRELOAD", perf::HEAPTRACK_PRELOAD);
            w.set_agent_env(
                "DUMP_HEAPTRACK_OUTPUT",
                out_dir
                    .join("agent.heaptrack.raw")
                    .to_str()
                    .unwrap_or_default(),
            );
        }
        w.start_agent();
        let agent_pid = w
            .agent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| anyhow!("agent not running"))?;
        w.tag(&bench_cg.path, "bench.transparent");
        std::thread::sleep(Duration::from_millis(500));
        res.rss_idle_kb = rss_kb(agent_pid);
        // What the resident set is made of: the heap and stacks (anonymous) are the agent's own;
        // file-backed pages are the binary's text and data, shared and reclaimable.
        if let Some(parts) = rss_parts_kb(agent_pid) {
            res.notes.push(format!("agent RSS at start, KB: {parts}"));
        }

        let bench = Bench {
            root: root.to_path_buf(),
            w: &w,
            cas: vec![fake_ca.clone(), w.state.path().join("ca.crt")],
        };
        let target = format!("{UPSTREAM_A}:443");
        // The floor: the same redirect, ending in a proxy with no logic (floor.rs).
        let floor = if sel.mode("floor") {
            Some(floor::Floor::start(root, &w, &plain_cg.path, &fake_ca)?)
        } else {
            None
        };
        let mut modes = vec![
            Mode {
                name: "direct",
                cgroup: plain_cg.path.clone(),
                args: vec!["--target".into(), target.clone()],
                cpu_pid: None,
            },
            Mode {
                name: "transparent",
                cgroup: bench_cg.path.clone(),
                args: vec!["--target".into(), target.clone()],
                cpu_pid: Some(agent_pid),
            },
            Mode {
                name: "explicit",
                cgroup: plain_cg.path.clone(),
                args: vec![
                    "--proxy".into(),
                    EXPLICIT.into(),
                    "--proxy-user".into(),
                    "bench.explicit".into(),
                ],
                cpu_pid: Some(agent_pid),
            },
        ];
        if let Some(f) = &floor {
            modes.insert(
                1,
                Mode {
                    name: "floor",
                    cgroup: f.client_cgroup.clone(),
                    args: vec!["--target".into(), target.clone()],
                    cpu_pid: Some(f.pid),
                },
            );
        }
        modes.retain(|m| sel.mode(m.name));
        let _litellm = if with_litellm {
            match litellm::start(root, &w, &plain_cg.path, &fake_ca, None) {
                Ok((g, m)) => {
                    modes.push(m);
                    Some(g)
                }
                Err(e) => {
                    eprintln!("bench: LiteLLM column skipped: {e:#}");
                    res.notes.push(format!("LiteLLM not measured: {e:#}"));
                    None
                }
            }
        } else {
            None
        };

        let perf = if sel.perf {
            Some(perf::Recording::start(&out_dir, agent_pid)?)
        } else {
            None
        };
        run_modes(&bench, &modes, &plan, &sel, &mut res)?;
        res.rss_after_load_kb = rss_kb(agent_pid);
        if let Some(p) = perf {
            match p.finish() {
                Ok(svg) => res.notes.push(format!("agent profile: {}", svg.display())),
                Err(e) => res.notes.push(format!("perf profile failed: {e:#}")),
            }
        }
        // The agent's own view of the run: added latency and ledger commit histograms.
        match w.node.enter(|| metrics_text("127.0.0.1:9464")) {
            Ok(text) => std::fs::write(out_dir.join("agent-metrics.txt"), text)?,
            Err(e) => res.notes.push(format!("agent metrics not read: {e:#}")),
        }

        if sel.phase("streams") && sel.mode("transparent") {
            eprintln!(
                "bench: {} open SSE streams through transparent mode",
                plan.streams
            );
            // Through the HTTP/2 upstream: the agent spreads the streams over as many upstream
            // connections as the server's stream limit needs (forward.rs, STREAMS_PER_CLIENT).
            let streams_mode = Mode {
                name: "transparent",
                cgroup: bench_cg.path.clone(),
                args: vec!["--target".into(), format!("{UPSTREAM_A}:443")],
                cpu_pid: Some(agent_pid),
            };
            match bench.streams(&streams_mode, plan.streams, plan.hold_secs, || {
                rss_kb(agent_pid)
            }) {
                Ok((opened, rss, v)) => {
                    res.streams_opened = opened;
                    res.rss_streams_kb = rss;
                    if opened < plan.streams {
                        res.notes.push(format!(
                            "streams: only {opened}/{} opened: {v}",
                            plan.streams
                        ));
                    }
                }
                Err(e) => res.notes.push(format!("streams phase failed: {e:#}")),
            }
            std::thread::sleep(Duration::from_secs(1));
            res.rss_end_kb = rss_kb(agent_pid);
        }

        idle_conns(&bench, &modes, &plan, &sel, &mut res);

        if sel.phase("overspend") {
            let lite_ok = _litellm.is_some();
            drop(_litellm);
            match litellm::overspend(&bench, &plain_cg.path, &fake_ca, lite_ok) {
                Ok(o) => res.overspend = Some(o),
                Err(e) => res.notes.push(format!("overspend phase failed: {e:#}")),
            }
        }
        drop(fake);
        // bench_cg, plain_cg, fake_cg, then w drop here: namespaces, cgroups, pin dir, agent.
    }
    if sel.heap {
        match perf::heaptrack_interpret(&out_dir) {
            Ok(gz) => res.notes.push(format!(
                "agent heap profile: {} (heaptrack_print -f it; figures of this run are slowed)",
                gz.display()
            )),
            Err(e) => res.notes.push(format!("heap profile failed: {e:#}")),
        }
    }

    // After the main world is gone: three more nodes and a store would crowd its measurements.
    if sel.phase("cluster") {
        eprintln!("bench: cluster phase (two nodes on one redis-server, one without)");
        match cluster::run(root, &plan, sel.litellm) {
            Ok(c) => res.cluster = Some(c),
            Err(e) => res.notes.push(format!("cluster phase failed: {e:#}")),
        }
    }

    if sel.phase("ledger") {
        eprintln!(
        "bench: ledger durable reservations/s (cargo bench -p spendguard-ledger --bench reserve)"
    );
        let out = cargo(root)
            .args([
                "bench",
                "-q",
                "-p",
                "spendguard-ledger",
                "--bench",
                "reserve",
            ])
            .env("TMPDIR", out_dir.join("tmp"))
            .output()?;
        res.ledger = String::from_utf8_lossy(&out.stdout).to_string();
    }

    res.chart(&out_dir);
    let md = res.markdown();
    std::fs::write(out_dir.join("results.md"), &md)?;
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&res.json())?,
    )?;
    println!("{md}");
    eprintln!("bench: wrote {}", out_dir.join("results.md").display());
    Ok(())
}

fn run_modes(
    bench: &Bench<'_>,
    modes: &[Mode],
    plan: &Plan,
    sel: &Select,
    res: &mut Results,
) -> anyhow::Result<()> {
    let lim = |s: f64| Duration::from_secs_f64(s + 40.0);
    for m in modes {
        eprintln!("bench: warm-up {}", m.name);
        if let Err(e) = bench.load(m, &["--closed", "8", "--duration", "1"], lim(1.0)) {
            res.notes.push(format!("{} warm-up failed: {e:#}", m.name));
        }
    }
    // What each proxy burns doing nothing (timers, pollers): paid on top of every request at
    // low rates, so it explains CPU per request at 1,000 RPS against the one at max.
    let idle = Duration::from_secs(3);
    let before: Vec<Option<f64>> = modes.iter().map(|m| m.cpu_pid.and_then(cpu_secs)).collect();
    std::thread::sleep(idle);
    for (m, c0) in modes.iter().zip(before) {
        if let (Some(pid), Some(a)) = (m.cpu_pid, c0) {
            if let Some(b) = cpu_secs(pid) {
                let ms_per_s = (b - a) * 1e3 / idle.as_secs_f64();
                res.put(
                    m.name,
                    "idle",
                    serde_json::json!({ "cpu_ms_per_s": ms_per_s }),
                );
            }
        }
    }
    let rates: &[(f64, usize)] = if sel.phase("rate") {
        &[(100.0, 8), (1000.0, 32)]
    } else {
        &[]
    };
    let mut rounds: std::collections::BTreeMap<(String, String), Vec<Value>> = Default::default();
    for round in 0..plan.rounds {
        for &(rate, conns) in rates {
            // Rotated, so no mode always runs first (after an idle gap) or right after LiteLLM.
            for i in 0..modes.len() {
                let m = &modes[(i + round) % modes.len()];
                eprintln!(
                    "bench: {} at {rate} RPS (round {}/{})",
                    m.name,
                    round + 1,
                    plan.rounds
                );
                let c0 = m.cpu_pid.and_then(cpu_secs);
                let v = bench.load(
                    m,
                    &[
                        "--rate",
                        &rate.to_string(),
                        "--conns",
                        &conns.to_string(),
                        "--duration",
                        &plan.rate_secs.to_string(),
                    ],
                    lim(plan.rate_secs),
                );
                let v = v.map(|v| with_cpu(v, m.cpu_pid, c0));
                match v {
                    Ok(v) => rounds
                        .entry((m.name.to_string(), format!("rate{rate}")))
                        .or_default()
                        .push(v),
                    Err(e) => res
                        .notes
                        .push(format!("{} at {rate} RPS failed: {e:#}", m.name)),
                }
            }
        }
    }
    for ((mode, key), runs) in rounds {
        res.put(&mode, &key, report::median_run(&runs));
    }
    // Closed loop at full speed: plain JSON answers ("max"), and SSE streams of 20 chunks
    // ("sse": the usage tap's per-chunk cost).
    let (conns, secs) = (plan.max_conns.to_string(), plan.max_secs.to_string());
    let closed: [(&str, &str, &[&str], &str); 2] = [
        ("max", "max", &[], "max RPS"),
        (
            "sse",
            "max_sse",
            &["--sse-chunks", "20"],
            "max RPS, SSE streams of 20 chunks",
        ),
    ];
    for (phase, key, extra, what) in closed {
        for m in modes.iter().filter(|_| sel.phase(phase)) {
            eprintln!("bench: {} {what} ({conns} conns)", m.name);
            let c0 = m.cpu_pid.and_then(cpu_secs);
            let mut args = vec!["--closed", &conns, "--duration", &secs];
            args.extend_from_slice(extra);
            match bench.load(m, &args, lim(plan.max_secs)) {
                Ok(v) => res.put(m.name, key, with_cpu(v, m.cpu_pid, c0)),
                Err(e) => res.notes.push(format!("{} {what} failed: {e:#}", m.name)),
            }
        }
    }
    if sel.phase("counts") {
        counts(bench, modes, res);
    }
    for m in modes.iter().filter(|_| sel.phase("newconn")) {
        eprintln!("bench: {} new TLS connection x{}", m.name, plan.newconn);
        let v = bench.load(
            m,
            &["--newconn", &plan.newconn.to_string()],
            lim(plan.newconn as f64 * 0.2),
        );
        match v {
            Ok(v) => res.put(m.name, "newconn", v),
            Err(e) => res
                .notes
                .push(format!("{} new connections failed: {e:#}", m.name)),
        }
    }
    Ok(())
}

/// Memory per idle keep-alive connection: RSS with `idle_conns` of them open, minus RSS before.
/// Runs last among the agent's phases: the heap it grows is not all handed back to the system
/// when the connections close, so any RSS taken after it would measure this phase.
fn idle_conns(bench: &Bench<'_>, modes: &[Mode], plan: &Plan, sel: &Select, res: &mut Results) {
    for m in modes.iter().filter(|_| sel.phase("idle")) {
        let Some(pid) = m.cpu_pid else { continue };
        eprintln!(
            "bench: {} {} idle keep-alive connections",
            m.name, plan.idle_conns
        );
        std::thread::sleep(Duration::from_millis(500));
        let before = rss_kb(pid);
        let args = [
            "--idle".to_string(),
            plan.idle_conns.to_string(),
            "--hold".into(),
            "2".into(),
        ];
        match bench.hold_open(m, &args, || rss_kb(pid)) {
            Ok((opened, with, v)) => {
                // What the agent hands back once they are closed: it trims the heap within
                // a check or two (spendguard-agent/src/heap.rs, every 2 s); glibc alone keeps it.
                std::thread::sleep(Duration::from_secs(5));
                let after = rss_kb(pid);
                let per = match (before, with) {
                    (Some(b), Some(w)) if opened > 0 => {
                        Some((w.saturating_sub(b)) as f64 / opened as f64)
                    }
                    _ => None,
                };
                res.put(
                    m.name,
                    "idle_conns",
                    serde_json::json!({"opened": opened, "rss_before_kb": before,
                        "rss_with_kb": with, "rss_after_close_kb": after, "kb_per_conn": per, "failed": v["failed"],
                        "first_error": v["first_error"]}),
                );
            }
            Err(e) => res
                .notes
                .push(format!("{} idle connections failed: {e:#}", m.name)),
        }
    }
}

/// Deterministic counts per request for each proxy (`perf stat` on its process during 4 s at
/// 1,000 RPS): context switches, system calls and heap allocations (glibc malloc calls).
/// The malloc uprobe slows the process, so no time is taken from this phase.
fn counts(bench: &Bench<'_>, modes: &[Mode], res: &mut Results) {
    let out_dir = bench.root.join("target/bench");
    let probe = perf::MallocProbe::add();
    if probe.event.is_none() {
        res.notes
            .push("counts: no malloc uprobe (perf probe failed); allocations not counted".into());
    }
    for m in modes {
        let Some(pid) = m.cpu_pid else { continue };
        eprintln!("bench: {} counts per request (perf stat)", m.name);
        let c = match perf::Counting::start(&out_dir, m.name, pid, probe.event) {
            Ok(c) => c,
            Err(e) => {
                res.notes.push(format!("counts: {e:#}"));
                return;
            }
        };
        // At a fixed rate, not closed loop: per-request counts of a batching proxy depend on
        // how busy it is (a commit or a wake-up shared by more requests at a higher rate).
        let v = bench.load(
            m,
            &["--rate", "1000", "--conns", "32", "--duration", "4"],
            Duration::from_secs(60),
        );
        let counts = c.finish();
        match (v, counts) {
            (Ok(v), Ok(counts)) => {
                let ok = v["ok"].as_f64().unwrap_or(0.0);
                if ok <= 0.0 {
                    continue;
                }
                let mut per = serde_json::Map::new();
                per.insert("requests".into(), Value::from(ok));
                for (ev, n) in counts {
                    let key = match ev.as_str() {
                        "context-switches" => "context_switches",
                        "raw_syscalls:sys_enter" => "syscalls",
                        "syscalls:sys_enter_fdatasync" | "syscalls:sys_enter_fsync" => "fsyncs",
                        "syscalls:sys_enter_futex" => "futex",
                        "syscalls:sys_enter_epoll_wait" => "epoll_wait",
                        "syscalls:sys_enter_pwrite64" => "pwrite",
                        e if e.ends_with(":malloc") => "mallocs",
                        _ => continue,
                    };
                    let prev = per.get(key).and_then(Value::as_f64).unwrap_or(0.0);
                    per.insert(key.into(), Value::from(prev + n / ok));
                }
                res.put(m.name, "counts", Value::Object(per));
            }
            (Err(e), _) | (_, Err(e)) => res.notes.push(format!("{} counts failed: {e:#}", m.name)),
        }
    }
}

/// `v` with `cpu_us_per_req`: the CPU time `pid` spent since `c0`, per request answered.
fn with_cpu(mut v: Value, pid: Option<u32>, c0: Option<f64>) -> Value {
    let (Some(pid), Some(a)) = (pid, c0) else {
        return v;
    };
    let ok = v["ok"].as_f64().unwrap_or(0.0);
    if let (Some(b), Some(obj)) = (cpu_secs(pid), v.as_object_mut()) {
        if ok > 0.0 {
            obj.insert("cpu_us_per_req".into(), Value::from((b - a) * 1e6 / ok));
        }
    }
    v
}

/// GET /metrics from the agent (plain HTTP on loopback of the current network namespace).
fn metrics_text(addr: &str) -> anyhow::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
