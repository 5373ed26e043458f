//! LiteLLM's proxy beside SpendGuard: installed into target/bench/litellm-venv from PyPI, run offline
//! (bundled price map) with one worker inside the bench's node namespace (which has no route out),
//! pointed at the same fake provider.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};
use spendguard_tests::{place, Place, World, UPSTREAM_A};

use super::{Bench, Guard, Mode};

/// The budget both guards get in the overspend run, USD.
const BUDGET_USD: f64 = 0.0005;
const BURST: usize = 500;
/// The proxy's admin key (no database: the master key is the only key), also the clients' bearer.
const MASTER_KEY: &str = "sk-spendguard-bench-7f3a9c1e5b2d4f60a8e1";

fn venv(root: &Path) -> anyhow::Result<std::path::PathBuf> {
    let dir = root.join("target/bench/litellm-venv");
    let bin = dir.join("bin/litellm");
    if bin.exists() {
        return Ok(bin);
    }
    eprintln!("bench: installing litellm[proxy] into {}", dir.display());
    let st = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&dir)
        .status()?;
    if !st.success() {
        bail!("python3 -m venv failed");
    }
    let st = Command::new(dir.join("bin/pip"))
        .args(["install", "-q", "litellm[proxy]"])
        .status()?;
    if !st.success() || !bin.exists() {
        bail!("pip install 'litellm[proxy]' failed");
    }
    Ok(bin)
}

fn http_code(w: &World, url: &str) -> String {
    let mut c = Command::new("curl");
    c.args([
        "-s",
        "-o",
        "/dev/null",
        "--max-time",
        "2",
        "-w",
        "%{http_code}",
        url,
    ]);
    place(
        &mut c,
        Place {
            netns: Some(&w.node),
            ..Default::default()
        },
    );
    c.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
}

/// Starts LiteLLM on 127.0.0.1:`port` of the node namespace; with `budget`, the deployment gets
/// `max_budget` + `budget_duration` (virtual-key budgets need Prisma engines we cannot download).
fn start_on(
    root: &Path,
    w: &World,
    cgroup: &Path,
    fake_ca: &Path,
    port: u16,
    budget: Option<f64>,
) -> anyhow::Result<Guard> {
    let bin = venv(root)?;
    let budget_lines = budget.map_or(String::new(), |b| {
        format!("      max_budget: {b}\n      budget_duration: 1d\n")
    });
    let cfg = format!(
        "model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n      model: openai/gpt-4o-mini\n      \
         api_base: https://{UPSTREAM_A}/v1\n      api_key: sk-bench\n{budget_lines}\
         litellm_settings:\n  drop_params: true\n  telemetry: false\n  json_logs: true\n"
    );
    let cfg_path = w.state.path().join(format!("litellm-{port}.yaml"));
    std::fs::write(&cfg_path, cfg)?;
    let log = std::fs::File::create(w.state.path().join(format!("litellm-{port}.log")))?;
    let mut cmd = Command::new(&bin);
    cmd.arg("--config")
        .arg(&cfg_path)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--num_workers",
            "1",
        ])
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("LITELLM_MASTER_KEY", MASTER_KEY)
        .env("LITELLM_LOG", "ERROR")
        .env("SSL_CERT_FILE", fake_ca)
        .env("REQUESTS_CA_BUNDLE", fake_ca)
        .env("SSL_VERIFY", "True")
        .env("HOME", w.state.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    place(
        &mut cmd,
        Place {
            cgroup: Some(cgroup),
            netns: Some(&w.node),
            uid: None,
        },
    );
    let mut g = Guard(Some(cmd.spawn().context("spawn litellm")?));
    let t0 = Instant::now();
    let url = format!("http://127.0.0.1:{port}/health/liveliness");
    loop {
        if http_code(w, &url) == "200" {
            return Ok(g);
        }
        if let Some(Ok(Some(st))) = g.0.as_mut().map(|c| c.try_wait()) {
            bail!(
                "litellm exited ({st}): {}",
                std::fs::read_to_string(w.state.path().join(format!("litellm-{port}.log")))
                    .unwrap_or_default()
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("litellm did not answer {url} within 120 s");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn mode(cgroup: &Path, port: u16) -> Mode {
    Mode {
        name: "litellm",
        cgroup: cgroup.to_path_buf(),
        args: vec![
            "--plain".into(),
            "--target".into(),
            format!("127.0.0.1:{port}"),
            "--sni".into(),
            format!("127.0.0.1:{port}"),
            "--auth".into(),
            MASTER_KEY.into(),
        ],
    }
}

pub fn start(
    root: &Path,
    w: &World,
    cgroup: &Path,
    fake_ca: &Path,
    budget: Option<f64>,
) -> anyhow::Result<(Guard, Mode)> {
    let g = start_on(root, w, cgroup, fake_ca, 4000, budget)?;
    Ok((g, mode(cgroup, 4000)))
}

fn status(w: &World, agent: &str) -> anyhow::Result<Value> {
    let out = w.cli(&["status", agent, "--json"]);
    if !out.status.success() {
        bail!(
            "spendguard status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Same budget, `BURST` concurrent requests (one connection each), SpendGuard vs LiteLLM.
pub fn overspend(
    bench: &Bench<'_>,
    plain_cg: &Path,
    fake_ca: &Path,
    with_litellm: bool,
) -> anyhow::Result<Value> {
    let w = bench.w;
    let agent = "bench.overspend";
    let cg = w.cgroup.child("over");
    w.tag(&cg.path, agent);
    let out = w.cli(&["limit", "set", agent, "--total", &BUDGET_USD.to_string()]);
    if !out.status.success() {
        bail!("limit set: {}", String::from_utf8_lossy(&out.stderr));
    }
    eprintln!("bench: overspend, SpendGuard, {BURST} concurrent requests, budget ${BUDGET_USD}");
    let sg_mode = Mode {
        name: "transparent",
        cgroup: cg.path.clone(),
        args: vec!["--target".into(), format!("{UPSTREAM_A}:443")],
    };
    let sg = bench.load(
        &sg_mode,
        &["--burst", &BURST.to_string()],
        Duration::from_secs(120),
    )?;
    let t0 = Instant::now();
    let mut st = status(w, agent)?;
    while st["reserved"].as_f64().unwrap_or(0.0) > 0.0 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        st = status(w, agent)?;
    }
    let spent = st["spent"]["total"]
        .as_f64()
        .ok_or_else(|| anyhow!("status: {st}"))?;
    let sg_ok = sg["ok"].as_f64().unwrap_or(0.0);
    let per_req = if sg_ok > 0.0 { spent / sg_ok } else { 0.0 };

    eprintln!("bench: overspend, LiteLLM (deployment max_budget), {BURST} concurrent requests");
    let started = if with_litellm {
        start_on(
            bench.root.as_path(),
            w,
            plain_cg,
            fake_ca,
            4001,
            Some(BUDGET_USD),
        )
    } else {
        Err(anyhow!("LiteLLM not run (--no-litellm or install failed)"))
    };
    let lite = match started {
        Ok(g) => {
            let v = bench.load(
                &mode(plain_cg, 4001),
                &["--burst", &BURST.to_string()],
                Duration::from_secs(180),
            );
            drop(g);
            match v {
                Ok(v) => {
                    let ok = v["ok"].as_f64().unwrap_or(0.0);
                    json!({
                        "forwarded": ok,
                        "statuses": v["statuses"],
                        "spent_usd_at_same_per_request_cost": ok * per_req,
                        "over_limit_usd": (ok * per_req - BUDGET_USD).max(0.0),
                        "p50_allowed_ms": v["p50_us"].as_f64().map(|x| x / 1000.0),
                        "p50_blocked_ms": v["blocked_p50_us"].as_f64().map(|x| x / 1000.0),
                        "first_error": v["first_error"],
                    })
                }
                Err(e) => json!({"error": format!("{e:#}")}),
            }
        }
        Err(e) => json!({"error": format!("{e:#}")}),
    };
    Ok(json!({
        "budget_usd": BUDGET_USD,
        "concurrent_requests": BURST,
        "actual_cost_per_request_usd": per_req,
        "spendguard": {
            "forwarded": sg_ok,
            "statuses": sg["statuses"],
            "spent_usd": spent,
            "over_limit_usd": (spent - BUDGET_USD).max(0.0),
            "p50_allowed_ms": sg["p50_us"].as_f64().map(|x| x / 1000.0),
            "p50_blocked_ms": sg["blocked_p50_us"].as_f64().map(|x| x / 1000.0),
            "first_error": sg["first_error"],
        },
        "litellm": lite,
    }))
}
