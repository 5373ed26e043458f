//! The node agent's lifecycle: prepare the state dir, install the redirect, open the tag store, serve
//! the proxy and the control socket, and drain on SIGTERM/SIGINT.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::control::server::{self as control_server, ControlContext};
use crate::identity::{cgroupfs, TagStore};
use crate::metering::{Metering, Prices};
use crate::metrics::Metrics;
use crate::paths;
use crate::proxy::explicit::ExplicitOptions;
use crate::proxy::forward::Upstreams;
use crate::proxy::intercept::Interceptor;
use crate::proxy::route::HostList;
use crate::proxy::stage::{PassThrough, Stage};
use crate::proxy::{self, ProxyContext};
use crate::redirect::{self, Redirect, RedirectOptions};
use crate::tls::Ca;
use spendguard_ledger::{Ledger, LedgerOptions};

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    raise_nofile_limit();
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("cannot create state dir {}", cfg.state_dir.display()))?;
    std::fs::set_permissions(
        &cfg.state_dir,
        std::fs::Permissions::from_mode(paths::STATE_DIR_MODE),
    )
    .with_context(|| format!("cannot chmod state dir {}", cfg.state_dir.display()))?;

    let mount = cgroupfs::cgroup2_mount()?;
    if cgroupfs::is_hybrid() {
        // Measured on a hybrid Debian 12 node (kubelet 1.20, containerd 1.6, runc 1.1.5): runc puts
        // every container in the v2 tree too, so pods are tagged and metered there
        // (tests/tests/kubelet.rs). A runtime that does not is caught per pod by the watcher.
        tracing::warn!(
            cgroup2 = %mount.display(),
            "this host uses a hybrid cgroup layout: only processes that are also in the cgroup v2 \
             tree ({}) can be tagged. runc (1.1.5, measured) puts Kubernetes containers there too, \
             so their pods are metered; the pod watcher logs an error for any Running pod whose v2 \
             directory is missing",
            mount.display()
        );
    }
    let attach = cfg.attach_cgroup.clone().unwrap_or_else(|| mount.clone());
    let redirect_ip4 = match cfg.redirect_ip {
        Some(ip) => Some(ip),
        None => {
            let ip = redirect::primary_ipv4();
            if ip.is_none() {
                tracing::warn!("no SPENDGUARD_REDIRECT_IP and no default route: tagged connections from pods are refused");
            }
            ip
        }
    };
    let netns = redirect::current_netns_cookie()
        .context("reading this network namespace's cookie (SO_NETNS_COOKIE, Linux ≥ 5.14)")?;

    // Listen before redirecting: a tagged connect must never be rewritten to a port nobody serves
    // because of our own start-up order.
    let mut listeners = vec![proxy::bind(cfg.listen)?];
    // Tagged IPv6 connects from the node's own namespace are sent to [::1]:port.
    match proxy::bind(SocketAddr::new(
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        cfg.listen.port(),
    )) {
        Ok(l) => listeners.push(l),
        Err(e) => tracing::warn!(
            "no IPv6 loopback listener ({e}); tagged IPv6 connects on this node will be refused"
        ),
    }
    if let Some(ip6) = cfg.redirect_ip6 {
        listeners.push(proxy::bind(SocketAddr::new(
            IpAddr::V6(ip6),
            cfg.listen.port(),
        ))?);
    }

    let opts = RedirectOptions {
        pin_dir: cfg.bpf_pin_dir.clone(),
        attach_cgroup: attach.clone(),
        cgroup_mount: mount.clone(),
        proxy_port: cfg.listen.port(),
        redirect_ip4,
        redirect_ip6: cfg.redirect_ip6,
        node_netns_cookie: netns,
    };
    // Programs loaded and maps opened, nothing attached yet: the tags go into the maps first,
    // so the programs never run against an empty tag map (after a reboot, or an upgrade that
    // re-creates the maps).
    let (redirect, logger) = Redirect::load(&opts)?;
    let redirect = Arc::new(redirect);
    if let Some(logger) = logger {
        spawn_bpf_logger(logger)?;
    }
    let tags = TagStore::open(&cfg.state_dir, mount, redirect.clone())?;
    let installed = redirect.activate(&opts)?;
    tracing::info!(
        cgroup = %attach.display(),
        pins = %cfg.bpf_pin_dir.display(),
        mode = ?installed,
        redirect_ip = ?redirect_ip4,
        tags = tags.list().len(),
        since_start_ms = started.elapsed().as_millis() as u64,
        "redirect in force"
    );

    let ledger_path = paths::ledger_file(&cfg.state_dir);
    crate::statedir::check_before_open(&cfg.state_dir)?;
    let cluster = match &cfg.cluster_store {
        Some(url) => {
            Some(connect_cluster_store(url, cfg.cluster_store_ca.as_deref(), &cfg.node_name).await?)
        }
        None => None,
    };
    let ledger = Ledger::open(
        &ledger_path,
        LedgerOptions {
            default_limits: cfg.default_limits.clone(),
            audit_retention: chrono::Duration::days(i64::from(cfg.audit_retention_days)),
            lease_max: cfg.lease_usd,
            settle_durable_within: std::time::Duration::from_millis(cfg.settle_durable_ms),
            cluster,
            ..LedgerOptions::default()
        },
    )
    .with_context(|| format!("opening the ledger {}", ledger_path.display()))?;
    crate::statedir::check_after_open(&cfg.state_dir, ledger.ledger_id())?;
    if let Some(hold) = ledger.hold() {
        tracing::warn!(since = %hold.since, reason = %hold.reason, "RECOVERY HOLD: every request is refused until an operator runs `spendguard recover --confirm`");
    }
    let metrics = Arc::new(Metrics::new());
    let prices = Prices::load(&ledger, metrics.metering.model_labels());
    for (model, o) in &cfg.prices {
        prices.set(&ledger, model, o.clone()).await?;
    }
    let (price_source, price_date) = prices.source();
    tracing::info!(ledger = %ledger_path.display(), prices = %price_source, prices_date = %price_date, "ledger open");
    let ca = Arc::new(Ca::load_or_generate(
        &cfg.state_dir,
        cfg.ca_cert.as_deref(),
        cfg.ca_key.as_deref(),
    )?);
    let upstream_tls = crate::tls::upstream::client_config(cfg.upstream_ca.as_deref())?;

    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();

    {
        let ledger = ledger.clone();
        metrics.set_readiness(Box::new(move || ledger.cluster_not_ready()));
    }
    // Metrics must never stop enforcement: a port in use is reported, not fatal.
    match crate::metrics::bind(cfg.metrics) {
        Ok(l) => {
            tracing::info!(metrics = %cfg.metrics, "serving /metrics and /healthz");
            tokio::spawn(crate::metrics::serve(l, metrics.clone(), shutdown.clone()));
        }
        Err(e) => tracing::error!("{e}; metrics are NOT served"),
    }
    // Budget webhooks (https verified like provider traffic: system roots + SPENDGUARD_UPSTREAM_CA).
    let notify = crate::notify::spawn(
        ledger.clone(),
        upstream_tls.clone(),
        Default::default(),
        metrics.clone(),
        shutdown.clone(),
    );

    // Kubernetes: the DaemonSet sets NODE_NAME (downward API, spec.nodeName); then this node's pod
    // labels (spendguard.io/agent) tag the pods' cgroups. Without it, nothing to watch.
    match std::env::var(spendguard_k8s::ENV_NODE_NAME) {
        Ok(node) => {
            crate::k8s::start(node.clone(), tags.clone(), ledger.clone(), shutdown.clone()).await?;
            tracing::info!("watching pods on node {node}");
        }
        Err(std::env::VarError::NotPresent) => {
            tracing::debug!("NODE_NAME is not set: not watching Kubernetes pods");
        }
        Err(e) => anyhow::bail!("NODE_NAME: {e}"),
    }

    let control = control_server::bind(&cfg.socket)?;
    let control_ctx = Arc::new(ControlContext {
        tags: tags.clone(),
        ledger: ledger.clone(),
        prices: prices.clone(),
        ca: ca.clone(),
        metrics: metrics.clone(),
    });
    let control_task = tokio::spawn(control_server::serve(
        control,
        control_ctx,
        shutdown.clone(),
    ));

    if ledger.is_clustered() {
        // `price set` on another node reaches this one's settings through the cluster store.
        let (prices, ledger, stop) = (prices.clone(), ledger.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => prices.reload_if_changed(&ledger),
                }
            }
        });
    }

    {
        // Budget gauges follow period resets, `limit set` and other nodes' spend while an agent
        // sends nothing (else a budget exhausted yesterday would alert all night).
        let (metrics, ledger, stop) = (metrics.clone(), ledger.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::metrics::BUDGET_REFRESH);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => metrics
                        .metering
                        .refresh_budgets(ledger.agents().iter().map(|a| ledger.status(a))),
                }
            }
        });
    }

    crate::heap::spawn_trimmer(shutdown.clone());

    let reconcile_tags = tags.clone();
    let reconcile_stop = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(cfg.tag_reconcile_every);
        loop {
            tokio::select! {
                _ = reconcile_stop.cancelled() => return,
                _ = tick.tick() => {
                    if let Err(e) = reconcile_tags.reconcile() {
                        tracing::warn!("tag reconcile: {e}");
                    }
                }
            }
        }
    });

    let settles = TaskTracker::new();
    let stage: Arc<dyn Stage> = if cfg.metering {
        Arc::new(Metering {
            ledger: ledger.clone(),
            prices: prices.clone(),
            output_cap: cfg.output_cap,
            azure_deployments: cfg.azure_deployments.clone(),
            realtime_slice: cfg.realtime_slice_usd,
            metrics: metrics.clone(),
            x402: Arc::new(crate::metering::x402::X402::new(
                &cfg.x402_hosts,
                spendguard_pricing::x402::Rates::new(
                    cfg.x402_assets
                        .iter()
                        .map(|a| spendguard_pricing::x402::AssetRate {
                            network: a.network.clone(),
                            asset: a.asset.clone(),
                            decimals: a.decimals,
                            usd_per_token: a.usd_per_token,
                        })
                        .collect(),
                ),
            )),
            settles: settles.clone(),
            delegations: crate::metering::delegate::Delegations::new(cfg.delegate_max_children),
            provider_hosts: HostList::new(&cfg.provider_hosts),
        })
    } else {
        tracing::warn!("METERING IS OFF (metering = false / SPENDGUARD_METERING=off): provider traffic is intercepted but neither priced nor limited");
        Arc::new(PassThrough)
    };
    let interceptor = Arc::new(Interceptor {
        ca,
        upstreams: Upstreams::new(upstream_tls),
        stage,
        metrics: metrics.clone(),
    });
    let ctx = Arc::new(ProxyContext {
        redirects: redirect.clone(),
        tags,
        // x402 hosts are intercepted like provider hosts: their payments are metered.
        hosts: HostList::new(
            &cfg.provider_hosts
                .iter()
                .chain(&cfg.x402_hosts)
                .collect::<Vec<_>>(),
        ),
        egress: crate::proxy::egress::Egress::new(
            &cfg.allowed_hosts,
            ledger.clone(),
            metrics.clone(),
        ),
        interceptor,
        shutdown: shutdown.clone(),
        metrics,
    });
    let ready_file = paths::ready_file(&cfg.socket);
    if let Err(e) = crate::statedir::write_ready(&ready_file) {
        tracing::warn!(
            "cannot write the readiness file {}: {e}; `spendguard wait-ready` will keep waiting",
            ready_file.display()
        );
    }
    tracing::info!(
        listen = %cfg.listen,
        socket = %cfg.socket.display(),
        since_start_ms = started.elapsed().as_millis() as u64,
        "spendguard-agent ready"
    );
    if let Some(addr) = cfg.explicit_listen {
        let l = proxy::bind(addr)?;
        let opts = Arc::new(ExplicitOptions {
            default_agent: cfg.explicit_default_agent.clone(),
            resolve: cfg.explicit_resolve.clone(),
        });
        tracing::info!(%addr, "explicit proxy (HTTP CONNECT) listening");
        tasks.spawn(crate::proxy::explicit::serve(l, ctx.clone(), opts));
    }
    let serve = tokio::spawn(proxy::serve(
        listeners,
        ctx,
        shutdown.clone(),
        tasks.clone(),
    ));

    wait_for_signal().await?;
    tracing::info!(
        drain_seconds = cfg.drain_seconds,
        "stopping: no new connections, draining in-flight ones"
    );
    shutdown.cancel();
    let _ = serve.await;
    let _ = control_task.await;
    let _ = notify.await;
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(cfg.drain_seconds), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tasks.len(),
            "drain timeout: closing the remaining connections"
        );
    }
    // Every finished request's charge is written, and unused budget leases are handed back, so
    // the next start has nothing to recover but requests still open at the drain timeout.
    settles.close();
    if tokio::time::timeout(SETTLE_WAIT, settles.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            pending = settles.len(),
            "settles still pending after {SETTLE_WAIT:?}: their reservations are charged in full at the next start"
        );
    }
    match ledger.release_leases().await {
        Ok(returned) => tracing::info!(%returned, "budget leases handed back"),
        Err(e) => tracing::warn!(
            "could not hand back budget leases: {e}; the next start charges their unused part"
        ),
    }
    if ledger.is_clustered() {
        // Tell the store now, so other nodes can use what this one handed back.
        let pushed = tokio::time::timeout(CLUSTER_PUSH_WAIT, ledger.push_cluster_outbox()).await;
        if !matches!(pushed, Ok(true)) {
            tracing::warn!(
                pending = ledger.cluster_outbox_len(),
                "the cluster store has not heard of every charge and hand-back yet; they are kept and sent at the next start"
            );
        }
    }
    let _ = std::fs::remove_file(&cfg.socket);
    let _ = std::fs::remove_file(&ready_file);
    // The pinned redirect stays in force: tagged clients are refused until the agent is back.
    tracing::info!("stopped");
    Ok(())
}

/// How long a graceful stop waits to tell the cluster store what it spent and hands back.
const CLUSTER_PUSH_WAIT: Duration = Duration::from_secs(5);

/// Connects to the cluster store: the agent does not start without it (a node that cannot
/// reach it could not lease any budget); once started, an outage is survived (README).
async fn connect_cluster_store(
    url: &str,
    ca: Option<&std::path::Path>,
    node: &str,
) -> anyhow::Result<spendguard_ledger::cluster::ClusterOptions> {
    use spendguard_ledger::cluster::{ClusterOptions, ClusterStore as _, RedisStore};
    let ca_pem = match ca {
        Some(p) => Some(std::fs::read(p).with_context(|| {
            format!(
                "reading the cluster store's CA {} (cluster_store_ca / {})",
                p.display(),
                crate::config::ENV_CLUSTER_STORE_CA
            )
        })?),
        None => None,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let store = loop {
        match RedisStore::connect_with(url, ca_pem.as_deref()).await {
            Ok(s) => break s,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!("{e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).context("connecting to the cluster store"),
        }
    };
    tracing::info!(store = %store.describe(), cluster = store.is_cluster(), node, "cluster store: budgets are one across every node that names it");
    Ok(ClusterOptions::new(Arc::new(store), node))
}

/// How long a graceful stop waits for the settles of drained requests.
const SETTLE_WAIT: Duration = Duration::from_secs(10);

/// Below this many descriptors the agent warns: every proxied connection holds one or two (client
/// and upstream), and idle keep-alive clients are normal.
const NOFILE_WANTED: u64 = 65_536;

/// Raises the soft RLIMIT_NOFILE to the hard limit, as every proxy does: the default soft limit (often
/// 1,024) would make a few hundred clients exhaust the descriptor table.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("cannot read the open-file limit (RLIMIT_NOFILE): {e}");
            return;
        }
    };
    let now = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::info!(
                    from = soft,
                    to = hard,
                    "raised the open-file limit (RLIMIT_NOFILE) to its hard limit"
                );
                hard
            }
            Err(e) => {
                tracing::warn!(
                    soft,
                    hard,
                    "cannot raise the open-file limit (RLIMIT_NOFILE): {e}"
                );
                soft
            }
        }
    } else {
        soft
    };
    if now < NOFILE_WANTED {
        tracing::warn!(
            limit = now,
            "open-file limit (RLIMIT_NOFILE) is low: at most about {} connections can be proxied at once; \
             raise the hard limit (LimitNOFILE= in systemd, ulimit -Hn) to {NOFILE_WANTED} or more",
            now / 2
        );
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}

#[expect(
    unsafe_code,
    reason = "AsyncFd registration requires the fd to outlive it"
)]
fn spawn_bpf_logger(logger: redirect::BpfLogger) -> anyhow::Result<()> {
    // SAFETY: the AsyncFd owns the logger, which owns the ring buffer fd, so the fd stays open for as
    // long as it is registered.
    let mut fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }
    .context("polling the BPF log ring buffer")?;
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Ok(())
}
