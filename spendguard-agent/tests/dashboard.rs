//! The Grafana dashboard and the Prometheus rules in `deploy/` query only what the agent exports.
//!
//! What "exported" means comes from the agent itself: a real [`Metrics`] records every family
//! through its public API and the exposition it encodes is parsed — so renaming a metric or a
//! label, or a decision/reason value, fails this test until the dashboard and rules follow. Every
//! metric name, every label in a matcher or in `by`/`on`/…, and every fixed value of a closed label
//! is checked. The rules also go through `promtool check rules` and `promtool test rules`
//! (rules.test.yaml) when promtool is installed (`scripts/dev.sh setup` installs it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use spendguard_agent::metrics::{Metrics, Outcome, WebhookResult};
use spendguard_ledger::{
    AgentName, AgentState, AgentStatus, DenyReason, Limits, Mode, OtherHosts, PeriodAmounts,
    PeriodResets, RemainingByPeriod, Zone,
};
use spendguard_pricing::providers::ProviderId;
use spendguard_pricing::{MicroUsd, PriceTable};

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("read deploy/{path}: {e}"))
}

/// Every reason a request can be refused for (the ledger has no list of them).
const REASONS: [DenyReason; 10] = [
    DenyReason::PerCallLimitExceeded,
    DenyReason::DailyBudgetExhausted,
    DenyReason::WeeklyBudgetExhausted,
    DenyReason::MonthlyBudgetExhausted,
    DenyReason::TotalBudgetExhausted,
    DenyReason::BudgetExpired,
    DenyReason::AgentPaused,
    DenyReason::UnknownModel,
    DenyReason::UnpricedRequest,
    DenyReason::HostNotAllowed,
];

/// Labels Prometheus attaches to every scraped series.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];
/// Labels whose values are a closed set the agent defines.
const CLOSED: [&str; 6] = [
    "decision", "reason", "period", "event", "result", "provider",
];

/// What the agent exports: metric name → its label names; label name → every value seen.
struct Exported {
    labels: BTreeMap<String, BTreeSet<String>>,
    values: BTreeMap<String, BTreeSet<String>>,
}

fn limited(n: u64) -> Option<MicroUsd> {
    Some(MicroUsd(n))
}

fn exported() -> Exported {
    let m = Metrics::new();
    let table = PriceTable::bundled();
    m.metering
        .model_labels()
        .publish(table.iter().map(|(name, _)| name));
    let (model, _) = table.iter().next().expect("a bundled model");
    let mut outcomes = vec![
        Outcome::Allowed,
        Outcome::Free,
        Outcome::LedgerUnavailable,
        Outcome::BadRequest,
    ];
    for r in REASONS {
        outcomes.push(Outcome::Blocked(r));
        outcomes.push(Outcome::WouldBlock(r));
    }
    for o in outcomes {
        m.metering.request("acme.bot", "openai", o);
    }
    let providers = ProviderId::ALL.iter().map(ProviderId::as_str);
    for provider in providers.chain(["", "other_host"]) {
        m.metering.request("acme.bot", provider, Outcome::Allowed);
    }
    let all = limited(1);
    let status = AgentStatus {
        agent: AgentName::new("acme.bot").expect("name"),
        status: AgentState::Active,
        limits: Limits {
            daily: all,
            weekly: all,
            monthly: all,
            total: all,
            ..Limits::default()
        },
        spent: PeriodAmounts::default(),
        reserved: MicroUsd::ZERO,
        remaining: RemainingByPeriod {
            daily: all,
            weekly: all,
            monthly: all,
            total: all,
        },
        period_resets: PeriodResets {
            daily: None,
            weekly: None,
            monthly: None,
        },
        paused: false,
        paused_by: None,
        other_hosts: OtherHosts::Allow,
        mode: Mode::Enforce,
        tz: Zone::utc(),
    };
    m.metering.settled("acme.bot", model, MicroUsd(5), &status);
    m.metering
        .settled("acme.bot", "no-such-model", MicroUsd(5), &status);
    m.metering.observe_reserve(Duration::from_millis(1));
    m.proxy.observe_added_latency(Duration::from_millis(1));
    let _open = m.proxy.connection_opened();
    for event in ["exhausted", "paused", "threshold"] {
        for r in [
            WebhookResult::Delivered,
            WebhookResult::Failed,
            WebhookResult::Dropped,
        ] {
            m.notify.webhook(event, r);
        }
    }
    let text = m.encode().expect("encode");
    let mut ex = Exported {
        labels: BTreeMap::new(),
        values: BTreeMap::new(),
    };
    let mut families = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.insert(rest.split(' ').next().expect("name").to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let i = line.find(['{', ' ']).expect("a sample line");
        let (name, rest) = line.split_at(i);
        let set = ex.labels.entry(name.to_string()).or_default();
        if let Some((body, _)) = rest.strip_prefix('{').and_then(|r| r.split_once('}')) {
            for pair in body.split(',') {
                let (k, v) = pair.split_once('=').expect("label=value");
                set.insert(k.to_string());
                ex.values
                    .entry(k.to_string())
                    .or_default()
                    .insert(v.trim_matches('"').to_string());
            }
        }
    }
    // Every family has samples here, so none of its labels is missing from the picture.
    for f in &families {
        assert!(
            ex.labels.keys().any(|n| n.starts_with(f.as_str())),
            "family {f} recorded nothing: record it in exported()"
        );
    }
    assert!(families.len() >= 9, "{families:?}");
    // Prometheus' own series for each target.
    ex.labels.insert("up".into(), BTreeSet::new());
    ex
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    /// A number or a duration (`5m`, `0.99`, `1e3`).
    Num,
    Punct(char),
    Op(String),
}

fn tokens(expr: &str) -> Vec<Tok> {
    let c: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '"' || ch == '\'' || ch == '`' {
            let mut j = i + 1;
            let mut s = String::new();
            while j < c.len() && c[j] != ch {
                if c[j] == '\\' {
                    j += 1;
                }
                if let Some(&x) = c.get(j) {
                    s.push(x);
                }
                j += 1;
            }
            out.push(Tok::Str(s));
            i = j + 1;
        } else if ch.is_ascii_digit() {
            let mut j = i;
            while j < c.len() && (c[j].is_ascii_alphanumeric() || c[j] == '.') {
                j += 1;
            }
            out.push(Tok::Num);
            i = j;
        } else if ch.is_ascii_alphabetic() || matches!(ch, '_' | ':' | '$') {
            let mut j = i;
            while j < c.len() && (c[j].is_ascii_alphanumeric() || matches!(c[j], '_' | ':' | '$')) {
                j += 1;
            }
            out.push(Tok::Ident(c[i..j].iter().collect()));
            i = j;
        } else if "{}()[],".contains(ch) {
            out.push(Tok::Punct(ch));
            i += 1;
        } else {
            let mut j = i;
            while j < c.len() && "=!~<>+-*/^%".contains(c[j]) {
                j += 1;
            }
            out.push(Tok::Op(c[i..j.max(i + 1)].iter().collect()));
            i = j.max(i + 1);
        }
    }
    out
}

/// PromQL words that are not metric names.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "histogram_quantile",
    "absent",
    "absent_over_time",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "quantile_over_time",
    "clamp_min",
    "clamp_max",
    "clamp",
    "abs",
    "ceil",
    "floor",
    "round",
    "time",
    "vector",
    "scalar",
    "sort",
    "sort_desc",
    "label_replace",
    "label_join",
    "changes",
    "resets",
    "predict_linear",
    "timestamp",
    "inf",
    "nan",
    "Inf",
    "NaN",
];

/// The problems of one query (empty: it only uses what the agent exports).
fn check(expr: &str, ex: &Exported) -> Vec<String> {
    let t = tokens(expr);
    let mut problems = Vec::new();
    let mut used: BTreeSet<String> = TARGET_LABELS.iter().map(|s| s.to_string()).collect();
    let mut grouped: Vec<String> = Vec::new();
    let mut metrics = 0;
    let mut i = 0;
    while i < t.len() {
        match &t[i] {
            Tok::Ident(kw)
                if [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&kw.as_str())
                    && t.get(i + 1) == Some(&Tok::Punct('(')) =>
            {
                let mut j = i + 2;
                while j < t.len() && t[j] != Tok::Punct(')') {
                    if let Tok::Ident(l) = &t[j] {
                        grouped.push(l.clone());
                    }
                    j += 1;
                }
                i = j;
            }
            // A function call, a keyword, or a Grafana variable ($__range, $__rate_interval).
            Tok::Ident(w) if KEYWORDS.contains(&w.as_str()) || w.starts_with('$') => {}
            Tok::Ident(name) => {
                metrics += 1;
                let known = ex.labels.get(name);
                match known {
                    Some(k) => used.extend(k.iter().cloned()),
                    None => problems.push(format!("metric {name} is not exported")),
                }
                if t.get(i + 1) == Some(&Tok::Punct('{')) {
                    let mut j = i + 2;
                    while j < t.len() && t[j] != Tok::Punct('}') {
                        if let (Some(Tok::Ident(l)), Some(Tok::Op(op)), Some(Tok::Str(v))) =
                            (t.get(j), t.get(j + 1), t.get(j + 2))
                        {
                            // (An unknown metric's labels are not checked: one problem each.)
                            if known.is_some_and(|k| !k.contains(l))
                                && !TARGET_LABELS.contains(&l.as_str())
                            {
                                problems.push(format!("{name} has no label {l}"));
                            }
                            problems.extend(closed_value(name, l, op, v, ex));
                            j += 3;
                        } else {
                            j += 1;
                        }
                    }
                    i = j;
                }
            }
            _ => {}
        }
        i += 1;
    }
    for l in grouped {
        if !used.contains(&l) {
            problems.push(format!(
                "grouping/matching on {l}, which no metric of the query has"
            ));
        }
    }
    if metrics == 0 {
        problems.push("queries no metric".into());
    }
    problems
}

/// A fixed value (or a plain `a|b` alternation) of a closed label must be one the agent exports.
fn closed_value(name: &str, label: &str, op: &str, v: &str, ex: &Exported) -> Option<String> {
    if !CLOSED.contains(&label) || v.contains('$') {
        return None;
    }
    let alternatives: Vec<&str> = match op {
        "=" | "!=" => vec![v],
        "=~" | "!~"
            if v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_|".contains(c)) =>
        {
            v.split('|').collect()
        }
        _ => return None,
    };
    let known = ex.values.get(label);
    let unknown: Vec<&str> = alternatives
        .into_iter()
        .filter(|a| !known.is_some_and(|k| k.contains(*a)))
        .collect();
    (!unknown.is_empty()).then(|| {
        format!("{name}{{{label}{op}\"{v}\"}}: the agent never exports {label}={unknown:?}")
    })
}

/// Every query of a Grafana dashboard: panel targets and `label_values(metric, label)` variables.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    ("definition", Value::String(s)) if s.starts_with("label_values(") => {
                        let inner = s.trim_start_matches("label_values(").trim_end_matches(')');
                        let (metric, label) = inner
                            .split_once(',')
                            .unwrap_or_else(|| panic!("label_values needs a metric: {s}"));
                        out.push(format!("sum by ({}) ({})", label.trim(), metric.trim()));
                    }
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

fn problems_of<'a>(exprs: impl Iterator<Item = &'a String>, ex: &Exported) -> Vec<String> {
    exprs
        .flat_map(|e| {
            check(e, ex)
                .into_iter()
                .map(move |p| format!("{p}\n    in {e}"))
        })
        .collect()
}

fn dashboard() -> Value {
    serde_json::from_str(&read("grafana/spendguard.json")).expect("spendguard.json is JSON")
}

#[test]
fn every_dashboard_query_uses_only_exported_metrics_and_labels() {
    let ex = exported();
    let dash = dashboard();
    let mut exprs = Vec::new();
    dashboard_exprs(&dash, &mut exprs);
    assert!(exprs.len() >= 20, "{exprs:?}");
    let problems = problems_of(exprs.iter(), &ex);
    assert!(problems.is_empty(), "dashboard:\n{}", problems.join("\n"));
    // What issue 15 asks the dashboard to show.
    for metric in [
        "spendguard_spend_usd_total",
        "spendguard_remaining_budget_usd",
        "spendguard_spent_usd",
        "spendguard_budget_limit_usd",
        "spendguard_requests_total",
        "spendguard_added_latency_seconds_bucket",
        "spendguard_open_connections",
        "spendguard_ledger_commit_seconds_bucket",
        "spendguard_webhooks_total",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "no panel uses {metric}"
        );
    }
    assert!(exprs.iter().any(|e| e.contains("by (agent, model)")));
    assert!(exprs
        .iter()
        .any(|e| e.contains("by (reason)") && e.contains(r#"decision="blocked""#)));
    // Panels do not overlap on Grafana's 24-column grid.
    let panels = dash["panels"].as_array().expect("panels");
    let mut cells = BTreeMap::new();
    for p in panels {
        let g = &p["gridPos"];
        let n = |k: &str| g[k].as_u64().unwrap_or_else(|| panic!("gridPos.{k}: {p}"));
        assert!(
            n("x") + n("w") <= 24,
            "{} is wider than the grid",
            p["title"]
        );
        for x in n("x")..n("x") + n("w") {
            for y in n("y")..n("y") + n("h") {
                if let Some(other) = cells.insert((x, y), p["title"].clone()) {
                    panic!("{} overlaps {other}", p["title"]);
                }
            }
        }
    }
}

/// The checker catches what it is for (else the tests above would prove nothing).
#[test]
fn the_query_checker_refuses_what_the_agent_does_not_export() {
    let ex = exported();
    for good in [
        r#"sum by (agent, model) (increase(spendguard_spend_usd_total{agent=~"$agent"}[$__range]))"#,
        r#"up == 0 and on (job, instance) count_over_time(spendguard_open_connections[6h])"#,
        r#"sum(rate(spendguard_webhooks_total{result=~"failed|dropped"}[5m]))"#,
        r#"histogram_quantile(0.99, sum by (le) (rate(spendguard_added_latency_seconds_bucket[5m])))"#,
    ] {
        assert_eq!(check(good, &ex), Vec::<String>::new(), "{good}");
    }
    for bad in [
        r#"sum(spendguard_nope_total)"#,
        r#"spendguard_spend_usd_total{provider="openai"}"#,
        r#"spendguard_requests_total{decision="denied"}"#,
        r#"spendguard_webhooks_total{result=~"failed|lost"}"#,
        r#"sum by (pod) (spendguard_open_connections)"#,
        r#"spendguard_open_connections * on (node) group_left spendguard_spend_usd_total"#,
        r#"sum(rate(http_requests_total[5m]))"#,
        r#"spendguard_requests"#,
        r#"histogram_quantile(0.9, rate(spendguard_added_latency_seconds[5m]))"#,
    ] {
        assert!(!check(bad, &ex).is_empty(), "{bad} passed");
    }
    // A renamed metric is one problem, not one per label of its matcher.
    assert_eq!(
        check(r#"spendguard_renamed{agent=~"$agent",period="daily"}"#, &ex),
        ["metric spendguard_renamed is not exported"]
    );
}

/// The alerting rules, from the YAML itself.
fn rules() -> Vec<Value> {
    let file: Value =
        serde_saphyr::from_str(&read("prometheus/rules.yaml")).expect("rules.yaml is YAML");
    file["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect()
}

#[test]
fn alerting_rules_use_only_exported_metrics_and_say_what_to_do() {
    let ex = exported();
    let rules = rules();
    let alerts: Vec<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    for a in [
        "SpendGuardBudget80PercentSpent",
        "SpendGuardBlocksRising",
        "SpendGuardAgentDown",
        "SpendGuardLedgerErrors",
    ] {
        assert!(alerts.contains(&a), "missing alert {a}");
    }
    let exprs: Vec<String> = rules
        .iter()
        .map(|r| {
            r["expr"]
                .as_str()
                .expect("every rule has an expr")
                .to_string()
        })
        .collect();
    let problems = problems_of(exprs.iter(), &ex);
    assert!(problems.is_empty(), "rules:\n{}", problems.join("\n"));
    for r in &rules {
        let name = &r["alert"];
        assert!(
            ["warning", "critical"].contains(&r["labels"]["severity"].as_str().unwrap_or("")),
            "{name}: severity warning or critical"
        );
        for a in ["summary", "description"] {
            assert!(
                r["annotations"][a].as_str().is_some_and(|s| s.len() > 20),
                "{name}: annotation {a}"
            );
        }
        assert!(
            r["for"].is_string(),
            "{name}: a `for` so one scrape does not page"
        );
    }
}

/// `promtool` from Debian's prometheus package, or `None` (said loudly) when it is missing.
fn promtool(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("promtool")
        .args(args)
        .current_dir(deploy("prometheus"))
        .output()
    {
        Ok(out) => Some(out),
        Err(e) => {
            // CI (.ci/run) fails on this line: scripts/dev.sh setup installs promtool.
            eprintln!(
                "SPENDGUARD-SKIP: promtool not installed ({e}); rules.yaml was checked by parsing \
                 only (apt-get install prometheus)"
            );
            None
        }
    }
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    for args in [
        &["check", "rules", "rules.yaml"][..],
        &["test", "rules", "rules.test.yaml"][..],
    ] {
        let Some(out) = promtool(args) else { return };
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Each alert the issue asks for has a unit test that fires it.
    let tests = read("prometheus/rules.test.yaml");
    for a in [
        "SpendGuardBudget80PercentSpent",
        "SpendGuardBlocksRising",
        "SpendGuardAgentDown",
        "SpendGuardLedgerErrors",
    ] {
        assert!(
            tests.contains(&format!("alertname: {a}")),
            "no test fires {a}"
        );
    }
}

const CONFIGMAP: &str = "configmap-grafana-dashboard.yaml";
const CONFIGMAP_DATA_HEADER: &str = "  spendguard.json: |\n";

#[test]
fn the_sidecar_configmap_carries_the_dashboard_unchanged() {
    let json = read("grafana/spendguard.json");
    let cm = read(CONFIGMAP);
    let (head, _) = cm
        .split_once(CONFIGMAP_DATA_HEADER)
        .expect("the ConfigMap's data key");
    let regenerated = format!(
        "{head}{CONFIGMAP_DATA_HEADER}{}",
        json.lines()
            .map(|l| if l.is_empty() {
                "\n".to_string()
            } else {
                format!("    {l}\n")
            })
            .collect::<String>()
    );
    if std::env::var_os("SPENDGUARD_BLESS").is_some() {
        std::fs::write(deploy(CONFIGMAP), &regenerated).expect("write the ConfigMap");
        return;
    }
    let parsed: Value = serde_saphyr::from_str(&cm).expect("the ConfigMap is YAML");
    let embedded: Value = serde_json::from_str(
        parsed["data"]["spendguard.json"]
            .as_str()
            .expect("data spendguard.json"),
    )
    .expect("the embedded dashboard is JSON");
    assert_eq!(parsed["metadata"]["labels"]["grafana_dashboard"], "1");
    assert!(
        embedded == dashboard() && cm == regenerated,
        "deploy/{CONFIGMAP} is not deploy/grafana/spendguard.json; regenerate it: \
         SPENDGUARD_BLESS=1 cargo test -p spendguard-agent --test dashboard"
    );
}
