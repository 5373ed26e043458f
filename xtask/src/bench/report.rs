//! The bench's results: their markdown table and a PNG chart (added latency, max RPS).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{anyhow, Context as _};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::{json, Value};

use super::Plan;

pub struct Results {
    pub quick: bool,
    pub plan: Plan,
    pub data: BTreeMap<String, BTreeMap<String, Value>>,
    pub rss_idle_kb: Option<u64>,
    pub rss_after_load_kb: Option<u64>,
    pub rss_streams_kb: Option<u64>,
    pub rss_end_kb: Option<u64>,
    pub streams_opened: usize,
    pub ledger: String,
    pub overspend: Option<Value>,
    /// The cluster phase (cluster.rs): store cost per request and the two-node overshoot.
    pub cluster: Option<Value>,
    pub notes: Vec<String>,
    /// The chart's file name beside results.md, once [`Results::chart`] has rendered it.
    pub chart: Option<String>,
}

const ORDER: [&str; 5] = ["direct", "floor", "transparent", "explicit", "litellm"];

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn mb(kb: Option<u64>) -> String {
    kb.map_or("n/a".into(), |k| format!("{:.1} MB", k as f64 / 1024.0))
}

impl Results {
    pub fn new(quick: bool, plan: &Plan) -> Results {
        Results {
            quick,
            plan: *plan,
            data: BTreeMap::new(),
            rss_idle_kb: None,
            rss_after_load_kb: None,
            rss_streams_kb: None,
            rss_end_kb: None,
            streams_opened: 0,
            ledger: String::new(),
            overspend: None,
            cluster: None,
            notes: Vec::new(),
            chart: None,
        }
    }
}

/// Each numeric field's median over `runs` (the upper median for an even count); the runs
/// themselves are kept under `rounds`.
pub fn median_run(runs: &[Value]) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(Value::Object(first)) = runs.first() {
        for (k, v) in first {
            let mut xs: Vec<f64> = runs.iter().filter_map(|r| r[k].as_f64()).collect();
            if xs.len() == runs.len() && v.is_number() {
                xs.sort_by(f64::total_cmp);
                out.insert(k.clone(), Value::from(xs[xs.len() / 2]));
            } else {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out.insert("rounds".into(), Value::Array(runs.to_vec()));
    Value::Object(out)
}

impl Results {
    pub fn put(&mut self, mode: &str, key: &str, v: Value) {
        self.data
            .entry(mode.to_string())
            .or_default()
            .insert(key.to_string(), v);
    }

    fn get(&self, mode: &str, key: &str, field: &str) -> Option<f64> {
        self.data.get(mode)?.get(key)?.get(field)?.as_f64()
    }

    fn modes(&self) -> Vec<&'static str> {
        ORDER
            .iter()
            .copied()
            .filter(|m| self.data.contains_key(*m))
            .collect()
    }

    /// A row of absolute values (ms from µs, or raw), each with its ratio to direct.
    fn row(&self, out: &mut String, label: &str, key: &str, field: &str, ms: bool) {
        let _ = write!(out, "| {label} |");
        let base = self.get("direct", key, field);
        for m in self.modes() {
            match self.get(m, key, field) {
                Some(v) => {
                    let shown = if ms {
                        format!("{:.3} ms", v / 1000.0)
                    } else {
                        format!("{v:.0}")
                    };
                    let floor = self.get("floor", key, field);
                    let mut ratios = Vec::new();
                    if let Some(b) = base.filter(|b| m != "direct" && *b > 0.0) {
                        ratios.push(format!("×{:.2}", v / b));
                    }
                    if let Some(f) = floor.filter(|f| !matches!(m, "direct" | "floor") && *f > 0.0)
                    {
                        ratios.push(format!("×{:.2} floor", v / f));
                    }
                    if ratios.is_empty() {
                        let _ = write!(out, " {shown} |");
                    } else {
                        let _ = write!(out, " {shown} ({}) |", ratios.join(", "));
                    }
                }
                None => out.push_str(" n/a |"),
            }
        }
        out.push('\n');
    }

    /// A row of `mode − direct` (ms).
    fn added(&self, out: &mut String, label: &str, key: &str, field: &str) {
        let _ = write!(out, "| {label} |");
        let base = self.get("direct", key, field);
        for m in self.modes() {
            match (m, self.get(m, key, field), base) {
                ("direct", _, _) => out.push_str(" — |"),
                (_, Some(v), Some(b)) => match self.get("floor", key, field) {
                    Some(f) if m != "floor" => {
                        let _ = write!(
                            out,
                            " {:+.3} ms (floor {:+.3}) |",
                            (v - b) / 1000.0,
                            (v - f) / 1000.0
                        );
                    }
                    _ => {
                        let _ = write!(out, " {:+.3} ms |", (v - b) / 1000.0);
                    }
                },
                _ => out.push_str(" n/a |"),
            }
        }
        out.push('\n');
    }

    /// `mode − direct` in each round (ms), the two measured within seconds of each other.
    fn added_rounds(&self, m: &str, key: &str, field: &str) -> Vec<f64> {
        let runs = |mode: &str| {
            self.data
                .get(mode)
                .and_then(|d| d.get(key))
                .and_then(|v| v["rounds"].as_array().cloned())
                .unwrap_or_default()
        };
        runs(m)
            .iter()
            .zip(runs("direct").iter())
            .filter_map(|(a, b)| Some((a[field].as_f64()? - b[field].as_f64()?) / 1000.0))
            .collect()
    }

    /// Each round's `f(mode's value, floor's value)`, the two measured within seconds of each
    /// other; a single run (max, newconn) is one round.
    fn paired_floor(&self, m: &str, key: &str, field: &str, f: fn(f64, f64) -> f64) -> Vec<f64> {
        let runs = |mode: &str| -> Vec<Value> {
            let Some(v) = self.data.get(mode).and_then(|d| d.get(key)) else {
                return Vec::new();
            };
            match v["rounds"].as_array() {
                Some(r) => r.clone(),
                None => vec![v.clone()],
            }
        };
        let mut out: Vec<f64> = runs(m)
            .iter()
            .zip(runs("floor").iter())
            .filter_map(|(a, b)| Some(f(a[field].as_f64()?, b[field].as_f64()?)))
            .collect();
        out.sort_by(f64::total_cmp);
        out
    }

    /// Issue 14: SpendGuard (transparent, metering on) against the floor, each target a ratio or a
    /// difference measured in the same run; the median over rounds and the spread.
    fn floor_targets(&self, o: &mut String) {
        if !self.data.contains_key("floor") || !self.data.contains_key("transparent") {
            return;
        }
        let _ = writeln!(
            o,
            "\n## Against the floor (issue 14; transparent, metering on; median of rounds [min … max])\n"
        );
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        let diff_ms = |a: f64, b: f64| (a - b) / 1000.0;
        let t = "transparent";
        /// One target: (label, phase key, field, how mode and floor combine, unit, target,
        /// whether the target is an upper bound).
        type Target = (
            &'static str,
            &'static str,
            &'static str,
            fn(f64, f64) -> f64,
            &'static str,
            f64,
            bool,
        );
        let rows: [Target; 8] = [
            (
                "proxy CPU per request @ max RPS",
                "max",
                "cpu_us_per_req",
                ratio,
                "×",
                2.0,
                true,
            ),
            (
                "proxy CPU per request @ 1,000 RPS",
                "rate1000",
                "cpu_us_per_req",
                ratio,
                "×",
                2.0,
                true,
            ),
            ("max RPS", "max", "rps", ratio, "×", 0.6, false),
            (
                "max RPS, SSE streams of 20 chunks",
                "max_sse",
                "rps",
                ratio,
                "×",
                0.5,
                false,
            ),
            (
                "added p50 @ 1,000 RPS over the floor",
                "rate1000",
                "p50_us",
                diff_ms,
                "ms",
                0.02,
                true,
            ),
            (
                "added p99 @ 1,000 RPS over the floor",
                "rate1000",
                "p99_us",
                diff_ms,
                "ms",
                0.1,
                true,
            ),
            (
                "new TLS connection + 1st request (p50) over the floor",
                "newconn",
                "p50_us",
                diff_ms,
                "ms",
                0.1,
                true,
            ),
            (
                "new TLS connection + 1st request (p99) over the floor",
                "newconn",
                "p99_us",
                diff_ms,
                "ms",
                f64::INFINITY,
                true,
            ),
        ];
        for (label, key, field, f, unit, target, at_most) in rows {
            let xs = self.paired_floor(t, key, field, f);
            let Some(med) = xs.get(xs.len() / 2).copied() else {
                let _ = writeln!(o, "- {label}: not measured");
                continue;
            };
            let fmt = |v: f64| {
                if unit == "×" {
                    format!("×{v:.2}")
                } else {
                    format!("{v:+.3} ms")
                }
            };
            let spread = if xs.len() > 1 {
                format!(" [{} … {}]", fmt(xs[0]), fmt(xs[xs.len() - 1]))
            } else {
                String::new()
            };
            let verdict = if target.is_infinite() {
                String::new()
            } else {
                let ok = if at_most {
                    med <= target
                } else {
                    med >= target
                };
                let goal = if at_most { "≤" } else { "≥" };
                let goal_v = if unit == "×" {
                    format!("×{target}")
                } else {
                    format!("+{target} ms")
                };
                format!(
                    " — target {goal} {goal_v}: {}",
                    if ok { "met" } else { "**missed**" }
                )
            };
            let _ = writeln!(o, "- {label}: {}{spread}{verdict}", fmt(med));
        }
        // Memory per idle keep-alive connection: an absolute target, the floor beside it.
        let idle = |m: &str| self.get(m, "idle_conns", "kb_per_conn");
        let opened = self.get(t, "idle_conns", "opened");
        let _ = writeln!(
            o,
            "- RSS per idle keep-alive connection ({} open): {} (floor {}){}",
            opened.map_or("n/a".into(), |n| format!("{n:.0}")),
            idle(t).map_or("not measured".into(), |k| format!("{k:.1} KB")),
            idle("floor").map_or("n/a".into(), |k| format!("{k:.1} KB")),
            idle(t).map_or(String::new(), |k| format!(
                " — target ≤ 24 KB: {}",
                if k <= 24.0 { "met" } else { "**missed**" }
            )),
        );
    }

    fn added_of(&self, m: &str, key: &str, field: &str) -> Option<f64> {
        Some((self.get(m, key, field)? - self.get("direct", key, field)?) / 1000.0)
    }

    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let date = sh("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]);
        let _ = writeln!(
            o,
            "# SpendGuard bench{}\n",
            if self.quick { " (--quick)" } else { "" }
        );
        let _ = writeln!(
            o,
            "{date} · {} CPUs ({}) · kernel {} · one run, all columns measured back to back on the same machine; \
             load generator, fake provider and proxy share these CPUs.\n",
            sh("nproc", &[]),
            cpu_model(),
            sh("uname", &["-r"]),
        );
        let modes = self.modes();
        let _ = writeln!(o, "| metric | {} |", modes.join(" | "));
        let _ = writeln!(o, "|---|{}", "---|".repeat(modes.len()));
        for rate in ["100", "1000"] {
            let key = format!("rate{rate}");
            for (f, name) in [("p50_us", "p50"), ("p99_us", "p99"), ("p99.9_us", "p99.9")] {
                let f = if f == "p99.9_us" { "p999_us" } else { f };
                self.row(
                    &mut o,
                    &format!("latency {name} @ {rate} RPS"),
                    &key,
                    f,
                    true,
                );
            }
            for (f, name) in [("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9")] {
                self.added(&mut o, &format!("**added {name} @ {rate} RPS**"), &key, f);
            }
            self.row(
                &mut o,
                &format!("achieved RPS @ {rate}"),
                &key,
                "rps",
                false,
            );
            self.row(&mut o, &format!("errors @ {rate}"), &key, "errors", false);
        }
        self.row(
            &mut o,
            &format!(
                "**max RPS** (closed loop, {} conns, {} s)",
                self.plan.max_conns, self.plan.max_secs
            ),
            "max",
            "rps",
            false,
        );
        self.row(&mut o, "latency p50 @ max RPS", "max", "p50_us", true);
        self.row(&mut o, "errors @ max RPS", "max", "errors", false);
        self.row(
            &mut o,
            "proxy CPU per request @ max RPS (µs)",
            "max",
            "cpu_us_per_req",
            false,
        );
        self.row(
            &mut o,
            "proxy CPU per request @ 1000 RPS (µs)",
            "rate1000",
            "cpu_us_per_req",
            false,
        );
        self.row(
            &mut o,
            "proxy CPU while idle (ms per s, 3 s after warm-up)",
            "idle",
            "cpu_ms_per_s",
            false,
        );
        for (f, name) in [
            ("context_switches", "context switches"),
            ("syscalls", "system calls"),
            ("fsyncs", "fsync/fdatasync calls"),
            ("futex", "futex calls"),
            ("epoll_wait", "epoll_wait calls"),
            ("pwrite", "pwrite calls"),
            ("mallocs", "heap allocations (malloc)"),
        ] {
            let _ = write!(o, "| {name} per request (perf stat) |");
            let floor = self.get("floor", "counts", f);
            for m in &modes {
                match (self.get(m, "counts", f), floor) {
                    (Some(v), Some(fl)) if *m != "floor" && fl > 0.0 => {
                        let _ = write!(o, " {v:.1} (×{:.2} floor) |", v / fl);
                    }
                    (Some(v), _) => {
                        let _ = write!(o, " {v:.1} |");
                    }
                    _ => o.push_str(" — |"),
                }
            }
            o.push('\n');
        }
        self.row(
            &mut o,
            "new connection + 1st request p50",
            "newconn",
            "p50_us",
            true,
        );
        self.row(
            &mut o,
            "new connection + 1st request p99",
            "newconn",
            "p99_us",
            true,
        );
        self.added(
            &mut o,
            "**added cost of a new connection (p50)**",
            "newconn",
            "p50_us",
        );
        self.row(
            &mut o,
            "errors (new connections)",
            "newconn",
            "errors",
            false,
        );

        if let Some(png) = &self.chart {
            let _ = writeln!(
                o,
                "\n![Added latency over direct (p50/p99/p99.9 at 100 and 1,000 RPS) and max RPS per mode, log scale]({png})"
            );
        }
        let _ = writeln!(o, "\n| agent memory (VmRSS) | value |\n|---|---|");
        let _ = writeln!(o, "| idle, after start | {} |", mb(self.rss_idle_kb));
        let _ = writeln!(
            o,
            "| idle, after the load phases | {} |",
            mb(self.rss_after_load_kb)
        );
        let _ = writeln!(
            o,
            "| **{} open SSE streams** (transparent; {} requested) | {} |",
            self.streams_opened,
            self.plan.streams,
            mb(self.rss_streams_kb)
        );
        let _ = writeln!(o, "| after the streams closed | {} |", mb(self.rss_end_kb));

        self.floor_targets(&mut o);
        let _ = writeln!(o, "\n## Targets (issue 7)\n");
        let chk = |ok: Option<bool>| match ok {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not measured",
        };
        let p99 = self.added_of("transparent", "rate1000", "p99_us");
        // Two honest estimators on a noisy VM: the difference of the median p99s (the table's),
        // and the median of each round's own difference. The verdict needs both.
        let mut paired = self.added_rounds("transparent", "rate1000", "p99_us");
        paired.sort_by(f64::total_cmp);
        let paired_median = paired.get(paired.len() / 2).copied();
        let verdict = match (p99.map(|v| v <= 0.5), paired_median.map(|v| v <= 0.5)) {
            (Some(true), Some(false)) | (Some(false), Some(true)) => "**borderline**",
            (a, _) => chk(a),
        };
        let per_round: Vec<String> = self
            .added_rounds("transparent", "rate1000", "p99_us")
            .iter()
            .map(|v| format!("{v:+.3}"))
            .collect();
        let _ = writeln!(
            o,
            "- added p99 ≤ 0.5 ms at 1,000 RPS (transparent): {} ({verdict}; difference of the median p99s \
             over {} rounds; each round's own difference: {} ms, median {})",
            p99.map_or("n/a".into(), |v| format!("{v:+.3} ms")),
            per_round.len(),
            per_round.join(", "),
            paired_median.map_or("n/a".into(), |v| format!("{v:+.3} ms")),
        );
        let max = self.get("transparent", "max", "rps");
        let _ = writeln!(
            o,
            "- ≥ 5,000 RPS through SpendGuard: {} ({})",
            max.map_or("n/a".into(), |v| format!("{v:.0}")),
            chk(max.map(|v| v >= 5000.0))
        );
        let rss_ok = (self.streams_opened >= 1000)
            .then(|| self.rss_streams_kb.map(|k| k <= 64 * 1024))
            .flatten();
        let _ = writeln!(
            o,
            "- RSS ≤ 64 MB with 1,000 open streams: {} ({})",
            mb(self.rss_streams_kb),
            chk(rss_ok)
        );
        let lite = self.added_of("litellm", "rate1000", "p99_us");
        let ratio = match (p99, lite) {
            (Some(s), Some(l)) if s > 0.0 => Some(l / s),
            _ => None,
        };
        let _ = writeln!(
            o,
            "- ≥ 10× lower added p99 than LiteLLM: {} ({})",
            ratio.map_or("n/a".into(), |r| format!("{r:.1}×")),
            chk(ratio.map(|r| r >= 10.0))
        );

        if let Some(ov) = &self.overspend {
            let _ = writeln!(
                o,
                "\n## Overspend side by side\n\n```\n{}\n```",
                serde_json::to_string_pretty(ov).unwrap_or_default()
            );
        }

        if let Some(c) = &self.cluster {
            let _ = writeln!(
                o,
                "\n## Cluster store (two nodes on one Redis, one node without)\n"
            );
            let l = &c["latency"];
            let ms = |v: &Value| v.as_f64().map_or("n/a".into(), |x| format!("{x:.3} ms"));
            let num = |v: &Value| v.as_f64().map_or("n/a".into(), |x| format!("{x:.2}"));
            let _ = writeln!(
                o,
                "| at 1,000 RPS (median of {} rounds) | with store | without store | store adds |\n|---|---|---|---|\n\
                 | p50 | {} | {} | {} |\n| p99 | {} | {} | {} |\n",
                l["rounds"],
                ms(&l["with_store"]["p50_ms"]),
                ms(&l["without_store"]["p50_ms"]),
                ms(&l["store_adds_p50_ms"]),
                ms(&l["with_store"]["p99_ms"]),
                ms(&l["without_store"]["p99_ms"]),
                ms(&l["store_adds_p99_ms"]),
            );
            // Commandstats also counts the commands a script runs inside Redis; the scripts
            // (EVALSHA: grants, settles) are the calls that cross the network.
            let scripts = ["evalsha", "eval", "fcall"]
                .iter()
                .filter_map(|k| l["store_calls_per_request_by_command"][*k].as_f64())
                .sum::<f64>();
            let _ = writeln!(
                o,
                "- store commands per request: {} (of them script calls — grants and settles, each one round trip: {:.4};                  the rest run inside those scripts, or are the nodes' polls); per second at 1,000 RPS: {};                  per second idle (two nodes): {}",
                num(&l["store_ops_per_request"]),
                scripts,
                num(&l["store_ops_per_s_at_1000_rps"]),
                num(&l["store_ops_per_s_idle_two_nodes"]),
            );
            let ov = &c["overshoot"];
            let sg = &ov["spendguard"];
            let lt = &ov["litellm_two_instances"];
            let _ = writeln!(
                o,
                "- overshoot, budget ${} and {} concurrent requests over 2 nodes: SpendGuard forwarded {} and spent ${} \
                 (over the limit: ${}); LiteLLM, 2 instances on the same Redis: {}",
                ov["budget_usd"],
                ov["concurrent_requests"],
                sg["forwarded"],
                sg["spent_usd_cluster_wide"],
                sg["over_limit_usd"],
                if lt.get("error").is_some() {
                    format!("not measured ({})", lt["error"])
                } else {
                    format!(
                        "forwarded {}, ${} at the same cost per request (over the limit: ${})",
                        lt["forwarded"], lt["spent_usd_at_same_per_request_cost"], lt["over_limit_usd"]
                    )
                }
            );
            let _ = writeln!(
                o,
                "\n```\n{}\n```",
                serde_json::to_string_pretty(c).unwrap_or_default()
            );
        }

        let _ = writeln!(o, "\n## Ledger durable reservations/s (`cargo bench -p spendguard-ledger --bench reserve`)\n");
        let _ = writeln!(o, "```\n{}\n```", self.ledger.trim());

        let _ = writeln!(o, "\n## How measured\n");
        let _ = writeln!(
            o,
            "- Fake provider `sg-fastfake` (release; TLS, h2+http/1.1) on 10.77.3.1:443 inside a private network namespace; \
             requests `POST /v1/chat/completions` (gpt-4o-mini, max_tokens 16), JSON answers with usage.\n\
             - Load generator `sg-load` (release, hyper 1 + rustls, HTTP/1.1 keep-alive, 2 threads): *direct* from an untagged cgroup; \
             *transparent* from a tagged cgroup (eBPF redirect → TLS interception → durable ledger reserve/settle); \
             *explicit* via HTTP CONNECT to {} (agent name as proxy user).\n\
             - Fixed-rate rows are open loop ({} s each, 8 / 32 connections), latency from the intended send time (no coordinated omission); \
             {} rounds, modes in a rotated order each round, each cell the median of its rounds. \
             New-connection rows: {} sequential fresh TCP+TLS connections (no session resumption), handshake + one request each.\n\
             - Agent runs with RUST_LOG=warn, state dir (redb ledger, fsync) on disk under target/bench/tmp; no limits set (metered, not limited).",
            super::EXPLICIT,
            self.plan.rate_secs,
            self.plan.rounds,
            self.plan.newconn
        );
        for n in self.all_notes() {
            let _ = writeln!(o, "- note: {n}");
        }
        o
    }

    pub fn json(&self) -> Value {
        json!({
            "quick": self.quick,
            "modes": self.data,
            "rss_kb": {"idle": self.rss_idle_kb, "after_load": self.rss_after_load_kb,
                       "streams": self.rss_streams_kb, "streams_opened": self.streams_opened, "end": self.rss_end_kb},
            "ledger": self.ledger,
            "overspend": self.overspend,
            "cluster": self.cluster,
            "notes": self.all_notes(),
        })
    }

    /// LiteLLM ran (a latency column, or the overspend side of it).
    fn litellm_ran(&self) -> bool {
        self.data.contains_key("litellm")
            || self
                .overspend
                .as_ref()
                .is_some_and(|o| o["litellm"].is_object() && o["litellm"].get("error").is_none())
    }

    /// The run's notes, plus how LiteLLM ran and, when it could not keep up with an open-loop rate,
    /// why its error count is what it is.
    fn all_notes(&self) -> Vec<String> {
        let mut notes = self.notes.clone();
        if self.litellm_ran() {
            notes.push(super::litellm::settings_note());
        }
        for rate in ["100", "1000"] {
            let key = format!("rate{rate}");
            let backlog = self
                .data
                .get("litellm")
                .and_then(|d| d.get(&key))
                .and_then(|v| v["first_error"].as_str())
                .is_some_and(|e| e.starts_with("backlog"));
            if backlog {
                notes.push(format!(
                    "LiteLLM @ {rate} RPS: {} requests not sent by the open-loop generator (all connections busy: \
                     LiteLLM's closed-loop max is {} RPS); its achieved RPS and latencies cover the requests it answered",
                    self.get("litellm", &key, "errors").map_or("n/a".into(), |v| format!("{v:.0}")),
                    self.get("litellm", "max", "rps").map_or("n/a".into(), |v| format!("{v:.0}")),
                ));
            }
        }
        notes
    }
}

/// The chart's file name, beside results.md.
pub const CHART: &str = "latency.png";

/// Where Debian's `fonts-dejavu-core` (and other distributions' DejaVu packages) put the font;
/// `SPENDGUARD_BENCH_FONT` overrides.
const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers a TrueType font from disk as plotters' "sans-serif" (the `ab_glyph` feature looks up
/// no system fonts), once per process.
fn register_font() -> anyhow::Result<()> {
    static DONE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        let path = std::env::var_os("SPENDGUARD_BENCH_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_PATHS.iter().map(PathBuf::from))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                format!(
                    "no font file at {} (Debian: apt-get install fonts-dejavu-core) and SPENDGUARD_BENCH_FONT unset",
                    FONT_PATHS.join(", ")
                )
            })?;
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        // plotters keeps registered fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{}: not a usable TrueType/OpenType font", path.display()))?;
        Ok(path)
    });
    r.as_ref().map(|_| ()).map_err(|e| anyhow!("{e}"))
}

fn color(mode: &str) -> RGBColor {
    match mode {
        "direct" => RGBColor(120, 120, 120),
        "transparent" => RGBColor(31, 119, 180),
        "explicit" => RGBColor(44, 160, 44),
        "litellm" => RGBColor(214, 39, 40),
        _ => RGBColor(148, 103, 189),
    }
}

/// A bar's value label: sign kept, few digits.
fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{}{}", if v < 0.0 { "-" } else { "" }, axis(a))
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// An axis tick: 0.01, 0.5, 20, 1,000 (log-scale ticks are round numbers).
fn axis(v: f64) -> String {
    if v >= 1000.0 {
        let s = format!("{v:.0}");
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if v >= 1.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_string()
    }
}

/// One panel's bars: per group (x label), one (mode, value) per bar.
type Groups = Vec<(String, Vec<(&'static str, f64)>)>;

/// Grouped bars on a log y axis from `floor`; a value at or below `floor` is drawn at the floor
/// with its real value as label. Group names are drawn under the axis on `root` (absolute pixels).
fn bars(
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    groups: &Groups,
    floor: f64,
    legend: bool,
) -> anyhow::Result<()> {
    let top = groups
        .iter()
        .flat_map(|(_, b)| b.iter().map(|(_, v)| *v))
        .fold(floor * 10.0, f64::max)
        * 25.0; // headroom for the value labels and the legend
    let n = groups.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .margin_bottom(34)
        .x_label_area_size(8)
        .y_label_area_size(78)
        .build_cartesian_2d(-0.5f64..n - 0.5, (floor..top).log_scale())
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_desc)
        .y_labels(12)
        .y_label_formatter(&|v| axis(*v))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let value_style =
        TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    let group_style =
        TextStyle::from(("sans-serif", 15).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    let mut seen: Vec<&'static str> = Vec::new();
    for (gi, (name, group)) in groups.iter().enumerate() {
        let center = gi as f64;
        let (px, py) = chart.backend_coord(&(center, floor));
        root.draw(&Text::new(name.clone(), (px, py + 8), group_style.clone()))
            .map_err(|e| anyhow!("{e}"))?;
        let width = 0.8 / group.len().max(1) as f64;
        for (bi, (mode, v)) in group.iter().enumerate() {
            let x0 = center - 0.4 + bi as f64 * width;
            let x1 = x0 + width * 0.9;
            let shown = v.max(floor);
            let c = color(mode);
            let first = !seen.contains(mode);
            let s = chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, floor), (x1, shown)],
                    c.filled(),
                )))
                .map_err(|e| anyhow!("{e}"))?;
            if legend && first {
                seen.push(mode);
                s.label(*mode).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled())
                });
            }
            chart
                .draw_series(std::iter::once(Text::new(
                    short(*v),
                    ((x0 + x1) / 2.0, shown),
                    value_style.clone(),
                )))
                .map_err(|e| anyhow!("{e}"))?;
        }
    }
    if legend && !seen.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    Ok(())
}

impl Results {
    /// Added latency (mode − direct, ms) per percentile and rate, for the modes other than direct.
    fn latency_groups(&self) -> Groups {
        let modes: Vec<&'static str> = self
            .modes()
            .into_iter()
            .filter(|m| *m != "direct")
            .collect();
        let mut groups = Vec::new();
        for (rate, label) in [("100", "100"), ("1000", "1,000")] {
            let key = format!("rate{rate}");
            for (f, name) in [("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9")] {
                let bars: Vec<_> = modes
                    .iter()
                    .filter_map(|m| Some((*m, self.added_of(m, &key, f)?)))
                    .collect();
                if !bars.is_empty() {
                    groups.push((format!("{name} @ {label} RPS"), bars));
                }
            }
        }
        groups
    }

    /// Max RPS per mode: one group per mode, so each gets its own label.
    fn max_groups(&self) -> Groups {
        self.modes()
            .into_iter()
            .filter_map(|m| Some((m.to_string(), vec![(m, self.get(m, "max", "rps")?)])))
            .collect()
    }

    /// Renders the chart to `path` (PNG): added latency on top, max RPS below, both log scale.
    pub fn render_chart(&self, path: &Path) -> anyhow::Result<()> {
        register_font()?;
        let root = BitMapBackend::new(path, (1400, 1000)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let (upper, lower) = root.split_vertically(620);
        bars(
            &root,
            &upper,
            &format!(
                "Added latency over direct, open loop{} (log scale)",
                if self.quick { ", --quick" } else { "" }
            ),
            "added latency, ms (mode − direct; ≤ 0.01 drawn at 0.01)",
            &self.latency_groups(),
            0.01,
            true,
        )?;
        bars(
            &root,
            &lower,
            &format!(
                "Max RPS, closed loop, {} connections, {} s (log scale)",
                self.plan.max_conns, self.plan.max_secs
            ),
            "requests / s",
            &self.max_groups(),
            1.0,
            false,
        )?;
        root.present()
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("write {}", path.display()))?;
        Ok(())
    }

    /// Renders [`CHART`] into `dir` and links it from the markdown; a failure becomes a note.
    pub fn chart(&mut self, dir: &Path) {
        match self.render_chart(&dir.join(CHART)) {
            Ok(()) => self.chart = Some(CHART.to_string()),
            Err(e) => self.notes.push(format!("chart not rendered: {e:#}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lat(p50: f64, p99: f64, p999: f64, rps: f64) -> Value {
        json!({"p50_us": p50, "p99_us": p99, "p999_us": p999, "rps": rps, "errors": 0})
    }

    /// Numbers shaped like a real `--quick` run: LiteLLM about 1,000× slower, one mode faster
    /// than direct at one percentile (negative added latency), one metric missing.
    fn canned() -> Results {
        let mut r = Results::new(true, &super::super::Plan::new(true));
        for (m, base) in [
            ("direct", 0.0),
            ("transparent", 400.0),
            ("explicit", 1800.0),
            ("litellm", 4_500_000.0),
        ] {
            r.put(
                m,
                "rate100",
                lat(
                    2016.0 + base,
                    7423.0 + base * 1.2,
                    9927.0 + base * 1.5,
                    100.0,
                ),
            );
            r.put(
                m,
                "rate1000",
                lat(
                    1309.0 + base,
                    2095.0 + base * 2.0,
                    3673.0 + base * 3.0,
                    999.0,
                ),
            );
        }
        r.put("explicit", "rate100", lat(1900.0, 7631.0, 43103.0, 100.0));
        for (m, rps) in [
            ("direct", 32578.5),
            ("transparent", 6000.0),
            ("litellm", 45.4),
        ] {
            r.put(m, "max", lat(1754.0, 6527.0, 12655.0, rps));
        }
        r
    }

    fn is_png(path: &Path) -> (u32, u32) {
        let b = std::fs::read(path).unwrap();
        assert!(b.len() > 1000, "{} is {} bytes", path.display(), b.len());
        assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        assert_eq!(&b[12..16], b"IHDR");
        let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        (be(16), be(20))
    }

    fn tmp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sg-bench-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn chart_renders_a_png_and_is_linked() {
        let dir = tmp_dir("chart");
        let mut r = canned();
        r.chart(&dir);
        assert_eq!(r.chart.as_deref(), Some(CHART), "notes: {:?}", r.notes);
        assert_eq!(is_png(&dir.join(CHART)), (1400, 1000));
        assert!(r.markdown().contains(&format!("]({CHART})")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn chart_groups_clamp_nothing_and_skip_missing() {
        let r = canned();
        let g = r.latency_groups();
        assert_eq!(g.len(), 6);
        assert_eq!(g[0].0, "p50 @ 100 RPS");
        // explicit p50 at 100 RPS is below direct: kept negative (drawn at the floor).
        let e = g[0].1.iter().find(|(m, _)| *m == "explicit").unwrap().1;
        assert!((e - (-0.116)).abs() < 1e-9, "{e}");
        assert!(g.iter().all(|(_, b)| b.iter().all(|(m, _)| *m != "direct")));
        // explicit has no max RPS entry.
        let m: Vec<_> = r.max_groups().into_iter().map(|(n, _)| n).collect();
        assert_eq!(m, ["direct", "transparent", "litellm"]);
    }

    #[test]
    fn notes_say_how_litellm_ran_and_why_it_errs() {
        let mut r = Results::new(true, &super::super::Plan::new(true));
        assert!(r.all_notes().is_empty());
        r = canned();
        assert_eq!(r.all_notes().len(), 1);
        r.put(
            "litellm",
            "rate1000",
            json!({"errors": 4168, "first_error": "backlog: not sent (target too slow for this rate)"}),
        );
        let notes = r.all_notes();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains(super::super::litellm::VERSION));
        assert!(notes[1].contains("4168 requests not sent") && notes[1].contains("max is 45 RPS"));
        assert!(r.markdown().contains("- note: LiteLLM @ 1000 RPS"));
        assert_eq!(r.json()["notes"].as_array().map(Vec::len), Some(2));
    }

    /// The floor column: every figure of the proxies also as a ratio to the floor, and issue 14's
    /// targets judged on each round's own ratio (median, spread), met and missed alike.
    #[test]
    fn the_floor_section_judges_paired_rounds() {
        let mut r = Results::new(true, &super::super::Plan::new(true));
        let round = |p50: f64, p99: f64, cpu: f64| {
            let mut v = lat(p50, p99, p99 * 2.0, 1000.0);
            v["cpu_us_per_req"] = json!(cpu);
            v
        };
        let floor = [
            round(1500.0, 3000.0, 100.0),
            round(1600.0, 3100.0, 110.0),
            round(1400.0, 2900.0, 90.0),
        ];
        // Per round: CPU ×1.5, ×2.5, ×1.5 (median ×1.5: met); p50 +0.01, +0.05, +0.01 ms (median
        // +0.01: met); p99 +0.2 ms in every round (missed).
        let sg = [
            round(1510.0, 3200.0, 150.0),
            round(1650.0, 3300.0, 275.0),
            round(1410.0, 3100.0, 135.0),
        ];
        r.put("floor", "rate1000", median_run(&floor));
        r.put("transparent", "rate1000", median_run(&sg));
        r.put(
            "floor",
            "max",
            json!({"rps": 10000.0, "cpu_us_per_req": 50.0}),
        );
        r.put(
            "transparent",
            "max",
            json!({"rps": 5000.0, "cpu_us_per_req": 90.0}),
        );
        let md = r.markdown();
        let line = |prefix: &str| {
            md.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{md}"))
                .to_string()
        };
        let cpu = line("- proxy CPU per request @ 1,000 RPS:");
        assert!(
            cpu.contains("×1.50 [×1.50 … ×2.50]") && cpu.ends_with("met"),
            "{cpu}"
        );
        let p50 = line("- added p50 @ 1,000 RPS over the floor:");
        assert!(p50.contains("+0.010 ms") && p50.ends_with("met"), "{p50}");
        let p99 = line("- added p99 @ 1,000 RPS over the floor:");
        assert!(
            p99.contains("+0.200 ms") && p99.contains("**missed**"),
            "{p99}"
        );
        let max = line("- max RPS:");
        assert!(max.contains("×0.50") && max.contains("**missed**"), "{max}");
        let cpu_max = line("- proxy CPU per request @ max RPS:");
        assert!(
            cpu_max.contains("×1.80") && cpu_max.ends_with("met"),
            "{cpu_max}"
        );
        assert!(line("- new TLS connection + 1st request (p50)").ends_with("not measured"));
        // The table shows the ratio to the floor beside the absolute value.
        assert!(line("| **max RPS**").contains("5000 (×0.50 floor)"), "{md}");
    }

    #[test]
    fn rounds_show_the_median_and_each_round() {
        let mut r = Results::new(false, &super::super::Plan::new(false));
        let direct = [
            lat(1000.0, 2000.0, 3000.0, 999.0),
            lat(1000.0, 2100.0, 3000.0, 999.0),
            lat(1000.0, 9000.0, 3000.0, 999.0),
        ];
        // Round 3 has a noise spike in both columns; its added p99 is ordinary.
        let transparent = [
            lat(1200.0, 2300.0, 3500.0, 998.0),
            lat(1100.0, 2500.0, 3600.0, 999.0),
            lat(1150.0, 9400.0, 3700.0, 999.0),
        ];
        r.put("direct", "rate1000", median_run(&direct));
        r.put("transparent", "rate1000", median_run(&transparent));
        let m = &r.data["transparent"]["rate1000"];
        assert_eq!(m["p50_us"], 1150.0);
        assert_eq!(m["p99_us"], 2500.0);
        assert_eq!(m["errors"], 0.0, "numbers are medians too");
        assert_eq!(m["rounds"].as_array().map(Vec::len), Some(3));
        assert_eq!(
            r.added_rounds("transparent", "rate1000", "p99_us"),
            [0.3, 0.4, 0.4]
        );
        let md = r.markdown();
        assert!(
            md.contains(
                "+0.400 ms (met; difference of the median p99s over 3 rounds; each round's own \
                 difference: +0.300, +0.400, +0.400 ms, median +0.400 ms)"
            ),
            "{md}"
        );
        // A field not in every round is taken from the first, not averaged.
        let v = median_run(&[
            json!({"p99_us": 1.0, "first_error": "x"}),
            json!({"p99_us": 3.0}),
        ]);
        assert_eq!(v["first_error"], "x");
        assert_eq!(v["p99_us"], 3.0);
    }

    #[test]
    fn chart_with_no_data_still_renders() {
        let dir = tmp_dir("empty");
        let r = Results::new(false, &super::super::Plan::new(false));
        r.render_chart(&dir.join("x.png")).unwrap();
        is_png(&dir.join("x.png"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
