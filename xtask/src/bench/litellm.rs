//! LiteLLM's proxy beside SpendGuard: installed into target/bench/litellm-venv from PyPI, run offline
//! (bundled price map) with one worker inside the bench's node namespace (which has no route out),
//! pointed at the same fake provider, with LiteLLM's own recommended production settings.
//!
//! Settings, and where they come from (LiteLLM's documentation):
//! - Production best practices, <https://docs.litellm.ai/docs/proxy/prod> (also
//!   docs/my-website/docs/proxy/prod.md in the BerriAI/litellm repository): `LITELLM_LOG=ERROR`
//!   ("turn off FastAPI's default info logs"), `set_verbose: false`, `json_logs: true`,
//!   `request_timeout: 600`, `LITELLM_MODE=PRODUCTION` (no `.env` loading), the master key from
//!   `LITELLM_MASTER_KEY`, one Uvicorn worker without `--run_gunicorn`/more workers ("On Kubernetes -
//!   Use 1 Uvicorn worker"), and `disable_spend_logs`/`disable_error_logs`/`proxy_batch_write_at`
//!   (database writes: no-ops here, there is no database, kept so the config is the documented one).
//! - Server tuning, <https://docs.litellm.ai/docs/proxy/server_tuning>: Uvicorn (the default) rather
//!   than Gunicorn for one worker per instance. LiteLLM's CLI already runs Uvicorn on uvloop
//!   (`proxy_cli.py` `get_loop_type()`), and `litellm[proxy]` installs uvloop.
//! - Benchmarks, <https://docs.litellm.ai/docs/benchmarks>: LiteLLM's own overhead-benchmark config
//!   sets `callbacks: []` and `num_retries: 0` (the fake provider never fails, so retries change no
//!   latency column; SpendGuard does not retry either).
//! - Latency overhead troubleshooting, <https://docs.litellm.ai/docs/troubleshoot/latency_overhead>:
//!   DEBUG logging is "the #1 cause of latency", hence ERROR above.
//!
//! Not applied: Redis, Postgres and virtual-key budgets (no database: Prisma's engines cannot be
//! downloaded offline), more workers (the comparison is one process against one agent), the beta Rust
//! core (`rust: true`, Anthropic/Bedrock only). Profiled with py-spy on this machine (2 vCPUs),
//! LiteLLM 1.106.2 spends ~25-30 ms of CPU per `/chat/completions`: ~45 % in its FastAPI middleware
//! and auth stack, ~30 % in the router and the OpenAI SDK call, ~12 % in success logging and cost
//! calculation, ~5 % re-trying a failing `opentelemetry.sdk` import on every request. One worker
//! therefore saturates at ~30-45 requests/s here; the errors at 1,000 RPS are the load generator's
//! `backlog: not sent` (open loop, all connections busy), not failed requests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};
use spendguard_tests::{place, Place, World, UPSTREAM_A};

use super::{Bench, Guard, Mode};

/// The budget both guards get in the overspend run, USD.
pub const BUDGET_USD: f64 = 0.0005;
pub const BURST: usize = 500;
/// The proxy's admin key (no database: the master key is the only key), also the clients' bearer.
const MASTER_KEY: &str = "sk-spendguard-bench-7f3a9c1e5b2d4f60a8e1";
/// The LiteLLM release measured: pinned so every machine measures the same proxy (this one starts
/// offline with its bundled price map and no database).
pub const VERSION: &str = "1.106.2";

/// Environment of the proxy besides the master key and the CA bundle (see the module docs).
const ENV: [(&str, &str); 3] = [
    ("LITELLM_LOG", "ERROR"),
    ("LITELLM_MODE", "PRODUCTION"),
    // Offline: the bundled model price map instead of fetching it at start.
    ("LITELLM_LOCAL_MODEL_COST_MAP", "True"),
];

/// The proxy's config.yaml: one deployment of gpt-4o-mini on the fake provider; with `budget`, the
/// deployment gets `max_budget` + `budget_duration` (virtual-key budgets need Prisma engines we
/// cannot download).
fn config_yaml(budget: Option<f64>, redis: Option<&RedisAt>) -> String {
    let budget_lines = budget.map_or(String::new(), |b| {
        format!("      max_budget: {b}\n      budget_duration: 1d\n")
    });
    // LiteLLM's documented multi-instance set-up (docs proxy/provider_budget_routing, "Multi-instance
    // setup"): every instance gets the same Redis in router_settings, which syncs budget spend.
    let router = redis.map_or(String::new(), |r| {
        format!(
            "router_settings:\n  redis_host: {}\n  redis_port: {}\n  redis_password: {}\n",
            r.host, r.port, r.password
        )
    });
    format!(
        "model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n      model: openai/gpt-4o-mini\n      \
         api_base: https://{UPSTREAM_A}/v1\n      api_key: sk-bench\n{budget_lines}\
         litellm_settings:\n  drop_params: true\n  telemetry: false\n  set_verbose: false\n  json_logs: true\n  \
         request_timeout: 600\n  num_retries: 0\n  callbacks: []\n\
         general_settings:\n  disable_spend_logs: true\n  disable_error_logs: true\n  proxy_batch_write_at: 60\n\
         {router}"
    )
}

/// Where the LiteLLM instances of the cluster phase find their shared Redis.
pub struct RedisAt {
    pub host: String,
    pub port: u16,
    pub password: String,
}

/// What the results say about how LiteLLM ran.
pub fn settings_note() -> String {
    format!(
        "LiteLLM {VERSION} (`litellm[proxy]` from PyPI), 1 Uvicorn worker on uvloop, no database, run with its documented \
         production settings: env {}, LITELLM_MASTER_KEY; litellm_settings set_verbose=false, json_logs=true, \
         request_timeout=600, num_retries=0, callbacks=[], drop_params=true; general_settings disable_spend_logs, \
         disable_error_logs, proxy_batch_write_at=60 (database-only, no-ops here); overspend phase: deployment \
         max_budget={BUDGET_USD} + budget_duration=1d. Sources: LiteLLM docs proxy/prod, proxy/server_tuning, benchmarks, troubleshoot/latency_overhead",
        ENV.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The LiteLLM version installed in `venv`, from its dist-info directory.
fn installed_version(venv: &Path) -> Option<String> {
    for py in std::fs::read_dir(venv.join("lib")).ok()?.flatten() {
        let Ok(entries) = std::fs::read_dir(py.path().join("site-packages")) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(v) = name
                .strip_prefix("litellm-")
                .and_then(|r| r.strip_suffix(".dist-info"))
            {
                return Some(v.to_string());
            }
        }
    }
    None
}

fn venv(root: &Path) -> anyhow::Result<PathBuf> {
    let dir = root.join("target/bench/litellm-venv");
    let bin = dir.join("bin/litellm");
    if bin.exists() && installed_version(&dir).as_deref() == Some(VERSION) {
        return Ok(bin);
    }
    let log_path = root.join("target/bench/litellm-install.log");
    eprintln!(
        "bench: installing litellm[proxy]=={VERSION} into {} (log: {})",
        dir.display(),
        log_path.display()
    );
    if !dir.join("bin/pip").exists() {
        let st = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&dir)
            .status()?;
        if !st.success() {
            bail!("python3 -m venv failed");
        }
    }
    let log = std::fs::File::create(&log_path)?;
    let st = Command::new(dir.join("bin/pip"))
        .args(["install", "--disable-pip-version-check"])
        .arg(format!("litellm[proxy]=={VERSION}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()?;
    if !st.success() || !bin.exists() {
        bail!(
            "pip install 'litellm[proxy]=={VERSION}' failed, see {}",
            log_path.display()
        );
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

/// Starts LiteLLM on 127.0.0.1:`port` of the node namespace; its output goes to
/// target/bench/litellm-`port`.log.
pub fn start_on(
    root: &Path,
    w: &World,
    cgroup: &Path,
    fake_ca: &Path,
    port: u16,
    budget: Option<f64>,
    redis: Option<&RedisAt>,
) -> anyhow::Result<Guard> {
    let bin = venv(root)?;
    let cfg_path = w.state.path().join(format!("litellm-{port}.yaml"));
    std::fs::write(&cfg_path, config_yaml(budget, redis))?;
    let log_path = root.join(format!("target/bench/litellm-{port}.log"));
    let log = std::fs::File::create(&log_path)?;
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
        .envs(ENV)
        .env("LITELLM_MASTER_KEY", MASTER_KEY)
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
                std::fs::read_to_string(&log_path)
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

pub fn mode(cgroup: &Path, port: u16) -> Mode {
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
        // Several processes (proxy, workers); its CPU is not compared.
        cpu_pid: None,
    }
}

pub fn start(
    root: &Path,
    w: &World,
    cgroup: &Path,
    fake_ca: &Path,
    budget: Option<f64>,
) -> anyhow::Result<(Guard, Mode)> {
    let g = start_on(root, w, cgroup, fake_ca, 4000, budget, None)?;
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
        cpu_pid: None,
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
            None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_the_documented_settings_and_budget_only_when_asked() {
        let plain = config_yaml(None, None);
        for line in [
            "  set_verbose: false\n",
            "  json_logs: true\n",
            "  request_timeout: 600\n",
            "  num_retries: 0\n",
            "  callbacks: []\n",
            "  disable_spend_logs: true\n",
            "  disable_error_logs: true\n",
            &format!("      api_base: https://{UPSTREAM_A}/v1\n"),
        ] {
            assert!(plain.contains(line), "{line:?} missing from\n{plain}");
        }
        assert!(!plain.contains("max_budget"));
        let budget = config_yaml(Some(0.0005), None);
        assert!(budget
            .contains("      max_budget: 0.0005\n      budget_duration: 1d\nlitellm_settings:\n"));
        let shared = config_yaml(
            Some(0.0005),
            Some(&RedisAt {
                host: "10.77.9.254".into(),
                port: 6379,
                password: "pw".into(),
            }),
        );
        assert!(shared.ends_with(
            "router_settings:\n  redis_host: 10.77.9.254\n  redis_port: 6379\n  redis_password: pw\n"
        ));
        assert!(!budget.contains("router_settings"));
        // Indentation is YAML structure: every line is a key at 0/2/4/6 spaces or a list item.
        for l in budget.lines() {
            let indent = l.len() - l.trim_start().len();
            assert!(indent % 2 == 0 && indent <= 6, "{l:?}");
        }
    }

    #[test]
    fn note_names_every_setting() {
        let n = settings_note();
        for (k, v) in ENV {
            assert!(n.contains(&format!("{k}={v}")), "{n}");
        }
        assert!(n.contains(VERSION) && n.contains("1 Uvicorn worker"));
    }

    #[test]
    fn installed_version_reads_the_dist_info() {
        let d = std::env::temp_dir().join(format!("sg-litellm-venv-{}", std::process::id()));
        let sp = d.join("lib/python3.11/site-packages");
        std::fs::create_dir_all(sp.join("litellm_enterprise-0.1.76.dist-info")).unwrap();
        assert_eq!(installed_version(&d), None);
        std::fs::create_dir_all(sp.join(format!("litellm-{VERSION}.dist-info"))).unwrap();
        assert_eq!(installed_version(&d).as_deref(), Some(VERSION));
        let _ = std::fs::remove_dir_all(&d);
    }
}
