//! `spendguard`: the privileged CLI. Talks to the node agent over its root-only control socket.
//! Human-readable output by default, `--json` for scripts; on failure a one-line error and exit 1.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use serde_json::Value;
use spendguard_agent::control::client::{self, ClientError};
use spendguard_agent::control::protocol::{DelegatedBudget, Request, Response};
use spendguard_agent::identity::{AgentName, Tag, TagSource};
use spendguard_agent::metering::prices::PriceOverride;
use spendguard_agent::report::{By, Format};
use spendguard_agent::top::{SortKey, View};
use spendguard_ledger::{LimitKind, LimitsPatch, Mode, Zone};
use spendguard_pricing::MicroUsd;

#[derive(Parser)]
#[command(
    name = "spendguard",
    version,
    about = "Control SpendGuard: tag workloads, set budgets, inspect spend"
)]
struct Cli {
    /// The agent's control socket.
    #[arg(long, global = true, env = "SPENDGUARD_SOCKET", default_value = spendguard_agent::paths::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tag a cgroup v2 directory (and its descendants) as an agent: its TCP 443 goes through SpendGuard.
    Tag {
        /// Absolute path of the cgroup v2 directory.
        #[arg(long)]
        cgroup: PathBuf,
        /// Agent name, e.g. acme.research.summarizer.
        #[arg(long)]
        agent: String,
    },
    /// Remove a cgroup's tag.
    Untag {
        #[arg(long)]
        cgroup: PathBuf,
    },
    /// List tagged cgroups and pods with their agent.
    Agents,
    /// The CA workloads must trust (export), or a new cluster CA (generate).
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Set or show an agent's limits.
    Limit {
        #[command(subcommand)]
        command: LimitCommand,
    },
    /// Set a model's price (USD per million tokens).
    Price {
        #[command(subcommand)]
        command: PriceCommand,
    },
    /// The price table in force.
    Prices,
    /// An agent's budget: limits, spend, reservations, what remains and when it resets.
    Status { agent: String },
    /// Block an agent (and its descendants) until resumed.
    Pause { agent: String },
    /// Lift a pause (also one set by pause_on_exhaust).
    Resume { agent: String },
    /// One event per request: time, agent, cgroup, host, model, decision, reason, reserved and final cost.
    Audit {
        /// Only this agent and its descendants.
        #[arg(long)]
        agent: Option<String>,
        /// Only events at or after this time (RFC 3339, e.g. 2026-05-01T00:00:00Z).
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        /// At most this many (the newest).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Live view of every agent on this node: spend rate ($/min over the last minute), spent and
    /// remaining in the binding period, reservations in flight, requests and blocks in the last
    /// minute, mode and pause; refreshed every second. Keys: s sort, r reverse, / filter, q quit.
    Top {
        /// Print one frame and exit (with --json: the frame as JSON, for scripts).
        #[arg(long)]
        once: bool,
        #[arg(long, value_enum, default_value_t = SortKey::Tree)]
        sort: SortKey,
        /// Only agents whose name contains this.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Spend from the audit log: totals by agent, model or day (they match `status`), as a
    /// table, CSV or JSON; `--chart FILE.svg|png` draws spend per day per agent.
    Report {
        /// Only this agent and its descendants (days are then its local days, see --tz).
        #[arg(long)]
        agent: Option<String>,
        /// From this time (RFC 3339), by request time.
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        /// Up to this time (RFC 3339, exclusive).
        #[arg(long)]
        until: Option<DateTime<Utc>>,
        #[arg(long, value_enum, default_value_t = By::Agent)]
        by: By,
        /// Output format (--json is the same as --format json).
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Also draw spend per day per agent into this file (.svg or .png).
        #[arg(long)]
        chart: Option<PathBuf>,
    },
    /// Check that the agent answers.
    Ping,
    /// Wait until the node's agent is ready on this boot (an init container's command: order
    /// workloads after SpendGuard). Needs no control socket: it reads the readiness file beside
    /// it (mount /run/spendguard read-only). Exits non-zero on timeout.
    WaitReady {
        /// Seconds to wait (0: check once).
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Lift the recovery hold `spendguard-agent recover` put on a new ledger, once the budgets
    /// are set: requests are decided by them again.
    Recover {
        /// Required: you have checked the limits (`spendguard limit show`) and accept that spend
        /// before the recovery is unknown to this node.
        #[arg(long, required = true)]
        confirm: bool,
    },
    /// Cluster store nodes.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Release every budget slice a dead node still holds in the cluster store (audited on this
    /// node). Only for a node that is gone for good: a running node would spend past its slices.
    Forget { node: String },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Print the CA certificate (PEM) that workloads must trust.
    Export,
    /// Write a new CA (ca.crt, ca.key) into DIR, e.g. for one cluster-wide CA in a Secret.
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
}

/// A limit argument: a dollar amount, or `none` to remove the limit.
#[derive(Clone, Debug)]
struct LimitArg(Option<MicroUsd>);

fn parse_limit(s: &str) -> Result<LimitArg, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(LimitArg(None));
    }
    s.parse::<MicroUsd>()
        .map(|m| LimitArg(Some(m)))
        .map_err(|e| e.to_string())
}

/// A `--mode` argument: a mode, or `none` to inherit the parent's again.
#[derive(Clone, Debug)]
struct ModeArg(Option<Mode>);

fn parse_mode(s: &str) -> Result<ModeArg, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(ModeArg(None));
    }
    s.parse::<Mode>()
        .map(|m| ModeArg(Some(m)))
        .map_err(|e| format!("{e}; use observe, enforce or none"))
}

/// A `--tz` argument: an IANA zone, or `none` to inherit the parent's again.
#[derive(Clone, Debug)]
struct TzArg(Option<Zone>);

fn parse_tz(s: &str) -> Result<TzArg, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(TzArg(None));
    }
    s.parse::<Zone>()
        .map(|z| TzArg(Some(z)))
        .map_err(|e| e.to_string())
}

fn parse_usd(s: &str) -> Result<MicroUsd, String> {
    s.parse::<MicroUsd>().map_err(|e| e.to_string())
}

#[derive(Subcommand)]
enum LimitCommand {
    /// Change the limits named; others stay. `--daily none` removes the daily limit.
    Set {
        agent: String,
        #[arg(long, value_parser = parse_limit)]
        per_call: Option<LimitArg>,
        #[arg(long, value_parser = parse_limit)]
        daily: Option<LimitArg>,
        #[arg(long, value_parser = parse_limit)]
        weekly: Option<LimitArg>,
        #[arg(long, value_parser = parse_limit)]
        monthly: Option<LimitArg>,
        /// Lifetime budget (never resets).
        #[arg(long, value_parser = parse_limit)]
        total: Option<LimitArg>,
        /// Block the agent from this time on (RFC 3339), or `none`.
        #[arg(long)]
        expires: Option<String>,
        /// Stay blocked after a budget runs out until `spendguard resume`.
        #[arg(long)]
        pause_on_exhaust: Option<bool>,
        /// URL that receives JSON POSTs on exhaustion, pause and the soft threshold, or `none`.
        #[arg(long)]
        webhook: Option<String>,
        /// Percent of a budget that triggers the soft-threshold webhook (default 80).
        #[arg(long)]
        soft_threshold_pct: Option<u8>,
        /// Connections to hosts that are neither provider hosts nor in `allowed_hosts`: `allow`
        /// (passed through, unmetered) or `deny` (closed, audited); `inherit` removes the agent's
        /// own setting. Inherited by descendants; default allow.
        #[arg(long, value_parser = ["allow", "deny", "inherit"])]
        other_hosts: Option<String>,
        /// `observe`: meter, reserve and audit, never block (refusals are audited `would_block`);
        /// `enforce`: block. Inherited by descendants that set none; `none` inherits again.
        #[arg(long, value_parser = parse_mode)]
        mode: Option<ModeArg>,
        /// IANA time zone of this agent's day, week and month (e.g. Europe/Berlin; DST
        /// included). Inherited by descendants that set none; `none` inherits again; default UTC.
        #[arg(long, value_parser = parse_tz)]
        tz: Option<TzArg>,
    },
    /// Show an agent's own limits.
    Show { agent: String },
}

#[derive(Subcommand)]
enum PriceCommand {
    /// Set (override) a model's price.
    Set {
        model: String,
        #[arg(long, value_parser = parse_usd)]
        input_per_mtok: MicroUsd,
        #[arg(long, value_parser = parse_usd)]
        output_per_mtok: MicroUsd,
        #[arg(long, value_parser = parse_usd)]
        cached_input_per_mtok: Option<MicroUsd>,
        /// The model's maximum output tokens (for worst cases when a client sets no limit).
        #[arg(long)]
        max_output_tokens: Option<u64>,
        #[arg(long)]
        context_window: Option<u64>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spendguard: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bad(msg: impl std::fmt::Display) -> ClientError {
    ClientError::Agent(msg.to_string())
}

fn agent_arg(a: &str) -> Result<String, ClientError> {
    a.parse::<AgentName>().map(|n| n.to_string()).map_err(bad)
}

fn top(cli: &Cli, once: bool, view: View) -> Result<(), ClientError> {
    let fetch = || match client::call(&cli.socket, &Request::Top)? {
        Response::Top { snapshot } => Ok(snapshot),
        other => Err(bad(format!("unexpected answer to top: {other:?}"))),
    };
    use std::io::IsTerminal as _;
    if once || cli.json || !std::io::stdout().is_terminal() {
        let snap = fetch()?;
        if cli.json {
            let v = serde_json::to_string_pretty(&snap).map_err(ClientError::Malformed)?;
            println!("{v}");
        } else {
            print!("{}", spendguard_agent::top::text(&snap, &view));
        }
        return Ok(());
    }
    spendguard_agent::top::run(|| fetch().map_err(|e| e.to_string()), view).map_err(ClientError::Io)
}

fn run(cli: Cli) -> Result<(), ClientError> {
    if let Command::Top { once, sort, filter } = &cli.command {
        let view = View {
            sort: *sort,
            filter: filter.clone().unwrap_or_default(),
            ..View::default()
        };
        return top(&cli, *once, view);
    }
    if let Command::Report {
        agent,
        since,
        until,
        by,
        format,
        chart,
    } = &cli.command
    {
        let req = Request::Report {
            agent: agent.as_deref().map(agent_arg).transpose()?,
            since: *since,
            until: *until,
        };
        let Response::Report { tz, rows } = client::call(&cli.socket, &req)? else {
            return Err(bad("unexpected answer to report"));
        };
        if let Some(path) = chart {
            let title = format!(
                "Spend per day per agent{} ({tz})",
                agent
                    .as_deref()
                    .map(|a| format!(" under {a}"))
                    .unwrap_or_default()
            );
            spendguard_agent::report::chart(&rows, path, &title).map_err(bad)?;
            eprintln!("chart written to {}", path.display());
        }
        let format = if cli.json { Format::Json } else { *format };
        print!("{}", spendguard_agent::report::render(&rows, *by, format));
        if format == Format::Json {
            println!();
        }
        return Ok(());
    }
    let req = match cli.command {
        Command::Top { .. } | Command::Report { .. } => {
            return Err(bad("internal: handled above"));
        }
        Command::Ca {
            command: CaCommand::Generate { out },
        } => {
            let (c, k) = spendguard_agent::tls::ca::generate_into(&out).map_err(bad)?;
            println!("wrote {} and {} (keep the key secret: kubectl create secret generic spendguard-ca -n spendguard --from-file=ca.crt={} --from-file=ca.key={})", c.display(), k.display(), c.display(), k.display());
            return Ok(());
        }
        Command::Ca {
            command: CaCommand::Export,
        } => Request::CaExport,
        Command::Tag { cgroup, agent } => {
            let agent = agent_arg(&agent)?;
            let cgroup = std::path::absolute(&cgroup).unwrap_or(cgroup);
            Request::Tag { cgroup, agent }
        }
        Command::Untag { cgroup } => Request::Untag {
            cgroup: std::path::absolute(&cgroup).unwrap_or(cgroup),
        },
        Command::Agents => Request::Agents,
        Command::Ping => Request::Ping,
        Command::WaitReady { timeout } => {
            let socket = std::env::var_os("SPENDGUARD_SOCKET")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(spendguard_agent::paths::DEFAULT_SOCKET));
            let file = spendguard_agent::paths::ready_file(&socket);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
            loop {
                if spendguard_agent::statedir::is_ready(&file) {
                    println!("spendguard-agent is ready ({})", file.display());
                    return Ok(());
                }
                if std::time::Instant::now() >= deadline {
                    return Err(bad(format!(
                        "spendguard-agent is not ready after {timeout} s (no current {})",
                        file.display()
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
        Command::Recover { confirm } => {
            if !confirm {
                return Err(bad("--confirm is required"));
            }
            Request::RecoverConfirm
        }
        Command::Node {
            command: NodeCommand::Forget { node },
        } => Request::NodeForget { node },
        Command::Prices => Request::Prices,
        Command::Status { agent } => Request::Status {
            agent: agent_arg(&agent)?,
        },
        Command::Pause { agent } => Request::Pause {
            agent: agent_arg(&agent)?,
        },
        Command::Resume { agent } => Request::Resume {
            agent: agent_arg(&agent)?,
        },
        Command::Audit {
            agent,
            since,
            limit,
        } => Request::Audit {
            agent: agent.as_deref().map(agent_arg).transpose()?,
            since,
            limit,
        },
        Command::Limit {
            command: LimitCommand::Show { agent },
        } => Request::LimitShow {
            agent: agent_arg(&agent)?,
        },
        Command::Limit {
            command:
                LimitCommand::Set {
                    agent,
                    per_call,
                    daily,
                    weekly,
                    monthly,
                    total,
                    expires,
                    pause_on_exhaust,
                    webhook,
                    soft_threshold_pct,
                    other_hosts,
                    mode,
                    tz,
                },
        } => {
            let mut patch = LimitsPatch::default();
            for (kind, arg) in [
                (LimitKind::PerCall, per_call),
                (LimitKind::Daily, daily),
                (LimitKind::Weekly, weekly),
                (LimitKind::Monthly, monthly),
                (LimitKind::Total, total),
            ] {
                if let Some(LimitArg(v)) = arg {
                    patch = patch.set(kind, v);
                }
            }
            if let Some(e) = expires {
                patch.expires_at = Some(if e.eq_ignore_ascii_case("none") {
                    None
                } else {
                    Some(e.parse::<DateTime<Utc>>().map_err(|err| bad(format!("--expires {e:?} is not an RFC 3339 time ({err}), e.g. 2026-06-01T00:00:00Z")))?)
                });
            }
            patch.pause_on_exhaust = pause_on_exhaust;
            patch.other_hosts = match other_hosts.as_deref() {
                None => None,
                Some("inherit") => Some(None),
                Some(p) => Some(Some(p.parse().map_err(bad)?)),
            };
            if let Some(w) = webhook {
                patch.webhook = Some(if w.eq_ignore_ascii_case("none") {
                    None
                } else if w.starts_with("http://") || w.starts_with("https://") {
                    Some(w)
                } else {
                    return Err(bad(format!(
                        "--webhook {w:?} must be an http:// or https:// URL, or none"
                    )));
                });
            }
            if let Some(p) = soft_threshold_pct {
                if !(1..=100).contains(&p) {
                    return Err(bad("--soft-threshold-pct must be between 1 and 100"));
                }
                patch.soft_threshold_pct = Some(p);
            }
            patch.mode = mode.map(|ModeArg(m)| m);
            patch.tz = tz.map(|TzArg(z)| z);
            if patch == LimitsPatch::default() {
                return Err(bad(
                    "nothing to set: name at least one limit, e.g. --daily 5.00",
                ));
            }
            Request::LimitSet {
                agent: agent_arg(&agent)?,
                patch,
            }
        }
        Command::Price {
            command:
                PriceCommand::Set {
                    model,
                    input_per_mtok,
                    output_per_mtok,
                    cached_input_per_mtok,
                    max_output_tokens,
                    context_window,
                },
        } => Request::PriceSet {
            model,
            price: PriceOverride {
                input_per_mtok,
                output_per_mtok,
                cached_input_per_mtok,
                max_output_tokens,
                context_window,
            },
        },
    };
    let resp = client::call(&cli.socket, &req)?;
    if cli.json {
        let v = match resp {
            Response::Agents { tags, delegated } => agents_json(&tags, &delegated),
            Response::Tagged { tag } | Response::Untagged { tag } => serde_json::to_value(tag),
            Response::Status { status } => Ok(status),
            Response::Limits { limits, .. } => Ok(limits),
            Response::Audit { events } => Ok(events),
            Response::Prices {
                source,
                date,
                models,
            } => Ok(serde_json::json!({"source": source, "date": date, "models": models})),
            Response::CaCert { pem } => Ok(serde_json::json!({"pem": pem})),
            Response::Top { snapshot } => serde_json::to_value(snapshot),
            Response::Report { rows, .. } => serde_json::to_value(rows),
            other => serde_json::to_value(other),
        }
        .map_err(ClientError::Malformed)?;
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(ClientError::Malformed)?
        );
        return Ok(());
    }
    match resp {
        Response::Pong { version } => println!("agent is up (version {version})"),
        Response::Tagged { tag } => println!("tagged {} as {}", tag.cgroup.display(), tag.agent),
        Response::Untagged { tag } => {
            println!("untagged {} (was {})", tag.cgroup.display(), tag.agent)
        }
        Response::Agents { tags, delegated } => {
            print_tags(&tags);
            print_delegated(&delegated);
        }
        Response::CaCert { pem } => print!("{pem}"),
        Response::Limits { agent, limits } => print_limits(&agent, &limits),
        Response::Status { status } => print_status(&status),
        Response::Done { message } => println!("{message}"),
        Response::Audit { events } => print_audit(&events),
        Response::Prices {
            source,
            date,
            models,
        } => print_prices(&source, &date, &models),
        Response::Report { rows, .. } => print!(
            "{}",
            spendguard_agent::report::render(&rows, By::Agent, Format::Table)
        ),
        Response::Top { snapshot } => print!(
            "{}",
            spendguard_agent::top::text(&snapshot, &View::default())
        ),
        Response::Error { message } => return Err(ClientError::Agent(message)),
    }
    Ok(())
}

/// A JSON dollar number shown the way `MicroUsd` prints money ("$4.97", "$0.000015").
fn usd(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if f >= 0.0 => MicroUsd((f * MicroUsd::PER_USD as f64).round() as u64).to_string(),
        Some(f) => format!("{f}"),
        None if v.is_null() => "-".into(),
        None => v.to_string(),
    }
}

/// `agents --json`: the tags as they always were, then one entry per budget a workload created
/// (`source.kind` = `delegated`, with `created_by`).
fn agents_json(
    tags: &[Tag],
    delegated: &[DelegatedBudget],
) -> Result<serde_json::Value, serde_json::Error> {
    let mut list = match serde_json::to_value(tags)? {
        Value::Array(a) => a,
        _ => Vec::new(),
    };
    for d in delegated {
        list.push(serde_json::json!({
            "agent": d.agent,
            "created_by": d.record.created_by,
            "created_at": d.record.created_at,
            "source": {
                "kind": "delegated",
                "workload": d.record.workload,
                "cgroup": d.record.cgroup,
                "pod": d.record.pod,
            },
        }));
    }
    Ok(Value::Array(list))
}

fn print_delegated(delegated: &[DelegatedBudget]) {
    if delegated.is_empty() {
        return;
    }
    println!();
    println!("{:<32} {:<32} CREATED", "BUDGET", "CREATED BY");
    for d in delegated {
        println!(
            "{:<32} {:<32} {}",
            d.agent,
            d.record.created_by.as_str(),
            d.record.created_at.to_rfc3339()
        );
    }
}

fn print_tags(tags: &[Tag]) {
    if tags.is_empty() {
        println!("no tagged cgroups");
        return;
    }
    println!("{:<32} {:<24} CGROUP", "AGENT", "SOURCE");
    for t in tags {
        let source = match &t.source {
            TagSource::Manual => "manual".to_string(),
            TagSource::Pod {
                namespace, name, ..
            } => format!("pod {namespace}/{name}"),
        };
        let missing = if t.cgroup_id == 0 { " (missing)" } else { "" };
        println!(
            "{:<32} {:<24} {}{}",
            t.agent.as_str(),
            source,
            t.cgroup.display(),
            missing
        );
    }
}

fn print_limits(agent: &str, l: &Value) {
    println!("limits of {agent}:");
    for k in ["per_call", "daily", "weekly", "monthly", "total"] {
        println!(
            "  {:<18} {}",
            k,
            if l[k].is_null() {
                "none".into()
            } else {
                usd(&l[k])
            }
        );
    }
    println!(
        "  {:<18} {}",
        "expires_at",
        l["expires_at"].as_str().unwrap_or("never")
    );
    println!("  {:<18} {}", "pause_on_exhaust", l["pause_on_exhaust"]);
    println!(
        "  {:<18} {}",
        "other_hosts",
        l["other_hosts"].as_str().unwrap_or("inherit")
    );
    println!(
        "  {:<18} {}",
        "webhook",
        l["webhook"].as_str().unwrap_or("none")
    );
    println!(
        "  {:<18} {}",
        "mode",
        l["mode"].as_str().unwrap_or("inherited")
    );
    println!("  {:<18} {}", "tz", l["tz"].as_str().unwrap_or("inherited"));
}

fn print_status(s: &Value) {
    println!(
        "agent {}: {} (mode {}, periods in {})",
        s["agent"].as_str().unwrap_or("?"),
        s["status"].as_str().unwrap_or("?"),
        s["mode"].as_str().unwrap_or("enforce"),
        s["tz"].as_str().unwrap_or("UTC")
    );
    println!(
        "  {:<10} {:>14} {:>14} {:>14}  RESETS",
        "PERIOD", "LIMIT", "SPENT", "REMAINING"
    );
    for p in ["daily", "weekly", "monthly", "total"] {
        let limit = if s["limits"][p].is_null() {
            "none".to_string()
        } else {
            usd(&s["limits"][p])
        };
        let remaining = if s["remaining"][p].is_null() {
            "unlimited".to_string()
        } else {
            usd(&s["remaining"][p])
        };
        let resets = s["period_resets"][p].as_str().unwrap_or("never");
        println!(
            "  {:<10} {:>14} {:>14} {:>14}  {}",
            p,
            limit,
            usd(&s["spent"][p]),
            remaining,
            resets
        );
    }
    println!("  reserved in flight: {}", usd(&s["reserved"]));
    if let Some(by) = s["created_by"].as_str() {
        println!("  created by: {by} (delegation)");
    }
    println!(
        "  other hosts: {}",
        s["other_hosts"].as_str().unwrap_or("allow")
    );
}

fn print_audit(events: &Value) {
    let Some(list) = events.as_array() else {
        return;
    };
    if list.is_empty() {
        println!("no events");
        return;
    }
    println!(
        "{:<25} {:<28} {:<22} {:<26} {:<8} {:<26} {:>12} {:>12}",
        "TIME", "AGENT", "HOST", "MODEL", "DECISION", "REASON", "RESERVED", "COST"
    );
    for e in list {
        println!(
            "{:<25} {:<28} {:<22} {:<26} {:<8} {:<26} {:>12} {:>12}",
            e["time"].as_str().unwrap_or(""),
            e["agent"].as_str().unwrap_or(""),
            e["host"].as_str().unwrap_or(""),
            e["model"].as_str().unwrap_or(""),
            e["decision"].as_str().unwrap_or(""),
            e["reason"].as_str().unwrap_or("-"),
            usd(&e["reserved"]),
            usd(&e["cost_usd"]),
        );
        let p = &e["payment"];
        if p.is_object() {
            println!(
                "{:<25} x402: {} units of {} on {} to {}",
                "",
                p["amount"].as_str().unwrap_or("?"),
                p["asset"]
                    .as_str()
                    .filter(|a| !a.is_empty())
                    .unwrap_or("(unknown asset)"),
                p["network"].as_str().unwrap_or("?"),
                p["pay_to"].as_str().unwrap_or("?"),
            );
        }
    }
}

fn print_prices(source: &str, date: &str, models: &Value) {
    println!("prices from {source} ({date}), USD per million tokens");
    println!(
        "{:<48} {:>10} {:>10} {:>10}",
        "MODEL", "INPUT", "CACHED", "OUTPUT"
    );
    for m in models.as_array().into_iter().flatten() {
        println!(
            "{:<48} {:>10} {:>10} {:>10}",
            m["model"].as_str().unwrap_or(""),
            usd(&m["input_per_mtok"]),
            usd(&m["cached_input_per_mtok"]),
            usd(&m["output_per_mtok"])
        );
    }
}
