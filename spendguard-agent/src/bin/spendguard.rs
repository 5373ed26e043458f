//! `spendguard`: the privileged CLI. Talks to the node agent over its root-only control socket.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use spendguard_agent::control::client;
use spendguard_agent::control::protocol::{Request, Response};
use spendguard_agent::identity::Tag;

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
    /// Check that the agent answers.
    Ping,
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

fn run(cli: Cli) -> Result<(), client::ClientError> {
    let req = match &cli.command {
        Command::Tag { cgroup, agent } => {
            // Validate locally too, so typos fail fast with the same message.
            if let Err(e) = agent.parse::<spendguard_agent::identity::AgentName>() {
                return Err(client::ClientError::Agent(e.to_string()));
            }
            let cgroup = std::path::absolute(cgroup).unwrap_or_else(|_| cgroup.clone());
            Request::Tag {
                cgroup,
                agent: agent.clone(),
            }
        }
        Command::Untag { cgroup } => Request::Untag {
            cgroup: std::path::absolute(cgroup).unwrap_or_else(|_| cgroup.clone()),
        },
        Command::Agents => Request::Agents,
        Command::Ping => Request::Ping,
    };
    let resp = client::call(&cli.socket, &req)?;
    if cli.json {
        let v = match &resp {
            Response::Agents { tags } => serde_json::to_string_pretty(tags),
            Response::Tagged { tag } | Response::Untagged { tag } => {
                serde_json::to_string_pretty(tag)
            }
            other => serde_json::to_string_pretty(other),
        }
        .map_err(client::ClientError::Malformed)?;
        println!("{v}");
        return Ok(());
    }
    match resp {
        Response::Pong { version } => println!("agent is up (version {version})"),
        Response::Tagged { tag } => println!("tagged {} as {}", tag.cgroup.display(), tag.agent),
        Response::Untagged { tag } => {
            println!("untagged {} (was {})", tag.cgroup.display(), tag.agent)
        }
        Response::Agents { tags } => print_tags(&tags),
        Response::Error { message } => return Err(client::ClientError::Agent(message)),
    }
    Ok(())
}

fn print_tags(tags: &[Tag]) {
    if tags.is_empty() {
        println!("no tagged cgroups");
        return;
    }
    println!("{:<32} {:<10} CGROUP", "AGENT", "SOURCE");
    for t in tags {
        let source = match &t.source {
            spendguard_agent::identity::TagSource::Manual => "manual".to_string(),
            spendguard_agent::identity::TagSource::Pod {
                namespace, name, ..
            } => format!("pod {namespace}/{name}"),
        };
        let missing = if t.cgroup_id == 0 { " (missing)" } else { "" };
        println!(
            "{:<32} {:<10} {}{}",
            t.agent,
            source,
            t.cgroup.display(),
            missing
        );
    }
}
