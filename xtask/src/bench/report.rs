//! The bench's results and their markdown table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;

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
    pub notes: Vec<String>,
}

const ORDER: [&str; 4] = ["direct", "transparent", "explicit", "litellm"];

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
            notes: Vec::new(),
        }
    }

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
                    match base {
                        Some(b) if m != "direct" && b > 0.0 => {
                            let _ = write!(out, " {shown} (×{:.2}) |", v / b);
                        }
                        _ => {
                            let _ = write!(out, " {shown} |");
                        }
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
                (_, Some(v), Some(b)) => {
                    let _ = write!(out, " {:+.3} ms |", (v - b) / 1000.0);
                }
                _ => out.push_str(" n/a |"),
            }
        }
        out.push('\n');
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
        let _ = write!(o, "| agent CPU per request @ max RPS |");
        for m in &modes {
            match self
                .data
                .get(*m)
                .and_then(|d| d.get("agent_cpu_us_per_req"))
                .and_then(Value::as_f64)
            {
                Some(v) if *m != "litellm" => {
                    let _ = write!(o, " {v:.0} µs |");
                }
                _ => o.push_str(" — |"),
            }
        }
        o.push('\n');
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

        let _ = writeln!(o, "\n## Targets (issue 7)\n");
        let chk = |ok: Option<bool>| match ok {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not measured",
        };
        let p99 = self.added_of("transparent", "rate1000", "p99_us");
        let _ = writeln!(
            o,
            "- added p99 ≤ 0.5 ms at 1,000 RPS (transparent): {} ({})",
            p99.map_or("n/a".into(), |v| format!("{v:+.3} ms")),
            chk(p99.map(|v| v <= 0.5))
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
             - Fixed-rate rows are open loop ({} s each, 8 / 32 connections), latency from the intended send time (no coordinated omission). \
             New-connection rows: {} sequential fresh TCP+TLS connections (no session resumption), handshake + one request each.\n\
             - Agent runs with RUST_LOG=warn, state dir (redb ledger, fsync) on disk under target/bench/tmp; no limits set (metered, not limited).",
            super::EXPLICIT,
            self.plan.rate_secs,
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
}
