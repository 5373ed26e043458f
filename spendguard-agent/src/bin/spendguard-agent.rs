//! `spendguard-agent`: the node agent. With no arguments it runs on its embedded defaults.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use spendguard_agent::config::{Config, ProcessEnv};

#[derive(Parser)]
#[command(
    name = "spendguard-agent",
    version,
    about = "SpendGuard node agent: per-agent LLM spend limits enforced at the network layer"
)]
struct Cli {
    /// TOML configuration file (environment variables SPENDGUARD_* override it).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent in the foreground (the default).
    Run,
    /// Detach and unpin everything the agent attached: tagged traffic flows directly again.
    Uninstall,
    /// Print the effective configuration (after file and environment) as TOML.
    Config,
    /// With the agent stopped: set aside a damaged or missing ledger, tags file or manifest and
    /// start again safely — a new ledger holds every request until `spendguard recover --confirm`,
    /// lost tags come back from the pinned tag map as a paused quarantine agent.
    Recover {
        /// Accept the ledger file in place although the state manifest names another one (a
        /// backup restored on purpose).
        #[arg(long)]
        adopt_ledger: bool,
    },
    /// Run the CA-trust injector: the mutating admission webhook that gives every pod labelled
    /// spendguard.io/agent SpendGuard's trust bundle (a Deployment of its own; see
    /// deploy/injector.yaml). Needs no BPF, no state dir and no privileges.
    Injector(Box<InjectorArgs>),
}

#[derive(clap::Args)]
struct InjectorArgs {
    /// Where the webhook serves HTTPS (AdmissionReview v1 on /mutate, probes on /healthz).
    #[arg(
        long,
        env = "SPENDGUARD_INJECTOR_LISTEN",
        default_value = "0.0.0.0:9443"
    )]
    listen: std::net::SocketAddr,
    /// The SpendGuard CA certificate (PEM): the public `spendguard-ca` ConfigMap, mounted.
    #[arg(
        long,
        env = "SPENDGUARD_INJECTOR_CA_CERT",
        default_value = "/etc/spendguard/ca/ca.crt"
    )]
    ca_cert: PathBuf,
    /// System root certificates (PEM) to put in the bundle; default: the image's (OpenSSL paths).
    #[arg(long, env = "SPENDGUARD_INJECTOR_SYSTEM_ROOTS")]
    system_roots: Option<PathBuf>,
    /// Names in the serving certificate: the Service's DNS names (the API server calls
    /// SERVICE.NAMESPACE.svc), or an IP address for a webhook reached by URL. Repeat or comma-separate.
    #[arg(
        long = "san",
        env = "SPENDGUARD_INJECTOR_SANS",
        value_delimiter = ',',
        default_value = "spendguard-injector.spendguard.svc,spendguard-injector.spendguard.svc.cluster.local"
    )]
    sans: Vec<String>,
    /// Name of the trust ConfigMap written into each namespace with labelled pods.
    #[arg(long, env = "SPENDGUARD_INJECTOR_TRUST_CONFIGMAP", default_value = spendguard_agent::injector::DEFAULT_TRUST_CONFIGMAP)]
    trust_configmap: String,
    /// The MutatingWebhookConfiguration whose caBundle the injector keeps current.
    #[arg(long, env = "SPENDGUARD_INJECTOR_WEBHOOK_CONFIG", default_value = spendguard_agent::injector::DEFAULT_WEBHOOK_CONFIG)]
    webhook_config: String,
    /// No API server: serve only, and write the serving CA and the trust files to --out-dir
    /// (tests, or a cluster where something else distributes them).
    #[arg(long)]
    standalone: bool,
    /// Also write serving-ca.crt, address and trust/{ca-bundle.crt,ca.crt,truststore.p12} here.
    #[arg(long, env = "SPENDGUARD_INJECTOR_OUT_DIR")]
    out_dir: Option<PathBuf>,
    /// Serving CA lifetime in seconds (rolled, with overlap, at two thirds).
    #[arg(long, default_value_t = 365 * 24 * 3600)]
    ca_lifetime_secs: u64,
    /// Serving certificate lifetime in seconds (renewed at two thirds).
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    leaf_lifetime_secs: u64,
    /// Seconds between re-reads of the CA file and checks of every labelled namespace's ConfigMap.
    #[arg(long, default_value_t = 300)]
    resync_secs: u64,
}

impl InjectorArgs {
    fn into_config(self) -> anyhow::Result<spendguard_agent::injector::InjectorConfig> {
        use std::time::Duration;
        anyhow::ensure!(
            self.leaf_lifetime_secs >= 3 && self.ca_lifetime_secs >= self.leaf_lifetime_secs,
            "--leaf-lifetime-secs must be at least 3 and at most --ca-lifetime-secs"
        );
        anyhow::ensure!(
            !self.standalone || self.out_dir.is_some(),
            "--standalone needs --out-dir (where the serving CA and the trust files go)"
        );
        anyhow::ensure!(!self.sans.is_empty(), "--san: at least one name");
        Ok(spendguard_agent::injector::InjectorConfig {
            listen: self.listen,
            ca_cert: self.ca_cert,
            system_roots: self.system_roots,
            sans: self.sans,
            trust_configmap: self.trust_configmap,
            webhook_config: (!self.standalone).then_some(self.webhook_config),
            out_dir: self.out_dir,
            rotation: spendguard_agent::injector::serving::Rotation::new(
                Duration::from_secs(self.ca_lifetime_secs),
                Duration::from_secs(self.leaf_lifetime_secs),
            ),
            resync: Duration::from_secs(self.resync_secs.max(1)),
        })
    }
}

/// Runs the injector until SIGTERM or SIGINT.
fn run_injector(args: InjectorArgs) -> anyhow::Result<()> {
    let cfg = args.into_config()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!("cannot watch SIGTERM: {e}");
                        return;
                    }
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            stop.cancel();
        });
        spendguard_agent::injector::run(cfg, shutdown).await
    })?;
    Ok(())
}

/// glibc malloc arenas the agent may use. Its default (8 per core) gives every tokio worker and
/// blocking thread an arena of its own, each keeping the high-water mark of a load burst; two
/// keep memory use flat at no measurable cost (bench: RSS with 1,000 open streams).
const MALLOC_ARENAS: libc::c_int = 2;

#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    // SAFETY: mallopt only changes allocator parameters, and it runs before any other thread.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
}

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match real_main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spendguard-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    // The injector has its own flags and none of the node agent's configuration.
    let command = match cli.command {
        Some(Command::Injector(args)) => return run_injector(*args),
        other => other,
    };
    let cfg = Config::load(cli.config.as_deref(), &ProcessEnv)?;
    match command.unwrap_or(Command::Run) {
        Command::Run => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(spendguard_agent::run::run(cfg))
        }
        Command::Uninstall => {
            let done = spendguard_agent::redirect::uninstall(&cfg.bpf_pin_dir)?;
            if done.links.is_empty() && done.maps.is_empty() {
                println!(
                    "nothing pinned under {}: the redirect was not installed",
                    cfg.bpf_pin_dir.display()
                );
            } else {
                println!(
                    "uninstalled: {} links detached, {} maps unpinned from {}",
                    done.links.len(),
                    done.maps.len(),
                    cfg.bpf_pin_dir.display()
                );
            }
            Ok(())
        }
        Command::Recover { adopt_ledger } => {
            for line in spendguard_agent::statedir::recover(&cfg, adopt_ledger)? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Injector(_) => unreachable!("handled above"),
        Command::Config => {
            print!("{}", toml::to_string_pretty(&cfg)?);
            Ok(())
        }
    }
}
