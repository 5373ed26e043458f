//! `spendguard-agent injector`: the mutating admission webhook that gives every pod labelled
//! `spendguard.io/agent` SpendGuard's trust (README "CA trust injection").
//!
//! - [`patch`]: the JSONPatch for one pod, and the precedence rules (what a pod set wins);
//! - [`bundle`]: the trust files (system roots + SpendGuard CA, the CA alone, a Java truststore);
//! - [`serving`]: the injector's own serving CA and leaf, and their renewal;
//! - [`review`]: one AdmissionReview in, one out;
//! - [`server`]: the HTTPS endpoint;
//! - [`cluster`]: the API calls (caBundle of the webhook configuration, per-namespace ConfigMap).
//!
//! Standalone mode (no API server: `--standalone`) serves and writes the serving CA and the
//! trust files to `--out-dir` instead of publishing them; the e2e tests use it.

pub mod bundle;
pub mod cluster;
pub mod patch;
pub mod review;
pub mod server;
pub mod serving;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use bundle::TrustBundle;
use serving::{Rotation, ServingCerts, SwappableCert};

/// Default name of the trust ConfigMap in each namespace (the pod volume's source).
pub const DEFAULT_TRUST_CONFIGMAP: &str = "spendguard-trust";
/// Default name of the injector's MutatingWebhookConfiguration (deploy/injector.yaml).
pub const DEFAULT_WEBHOOK_CONFIG: &str = "spendguard-injector";
/// Files written under `--out-dir`.
pub const OUT_SERVING_CA: &str = "serving-ca.crt";
pub const OUT_ADDRESS: &str = "address";
pub const OUT_TRUST_DIR: &str = "trust";
/// How often a failed caBundle publication is retried.
const PUBLISH_RETRY: Duration = Duration::from_secs(5);

/// How the injector runs.
#[derive(Clone, Debug)]
pub struct InjectorConfig {
    pub listen: SocketAddr,
    /// The SpendGuard CA certificate (PEM; the public `spendguard-ca` ConfigMap).
    pub ca_cert: PathBuf,
    /// System roots (PEM); None: the platform's.
    pub system_roots: Option<PathBuf>,
    /// Names in the serving certificate (the Service's DNS names, or 127.0.0.1 for a URL webhook).
    pub sans: Vec<String>,
    pub trust_configmap: String,
    /// None: standalone (no API server).
    pub webhook_config: Option<String>,
    pub out_dir: Option<PathBuf>,
    pub rotation: Rotation,
    /// How often the CA file and roots are re-read and the labelled namespaces' ConfigMaps
    /// checked.
    pub resync: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum InjectorError {
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    #[error(transparent)]
    Serving(#[from] serving::ServingError),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error(transparent)]
    K8s(#[from] spendguard_k8s::K8sError),
    #[error("cannot listen on {addr}: {source} (is another process on that port?)")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the TLS server configuration is invalid: {0}")]
    Tls(rustls::Error),
}

/// State the request handlers share.
pub struct Shared {
    pub trust_configmap: String,
    client: Option<kube::Client>,
    bundle: ArcSwap<TrustBundle>,
}

impl Shared {
    /// Makes sure the trust ConfigMap in `ns` is current (no-op standalone): one GET when it is,
    /// so a ConfigMap someone deleted (or a namespace created again) is written again by the next
    /// admission, not only by the resync. Errors are logged: admission goes on either way.
    pub async fn ensure_namespace(&self, ns: &str) {
        let Some(client) = &self.client else { return };
        let bundle = self.bundle.load_full();
        match cluster::ensure_configmap(client, ns, &self.trust_configmap, &bundle).await {
            Ok(true) => tracing::info!(
                namespace = %ns,
                configmap = %self.trust_configmap,
                "trust ConfigMap written"
            ),
            Ok(false) => {}
            Err(e) => tracing::error!(namespace = %ns, "{e}"),
        }
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), InjectorError> {
    crate::identity::tags::write_atomic(path, bytes, 0o644).map_err(|source| InjectorError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Publishes the serving CA bundle: into the webhook configuration, and/or `out_dir`.
async fn publish(
    cfg: &InjectorConfig,
    client: Option<&kube::Client>,
    pem: &str,
) -> Result<(), InjectorError> {
    if let Some(dir) = &cfg.out_dir {
        write_file(&dir.join(OUT_SERVING_CA), pem.as_bytes())?;
    }
    if let (Some(client), Some(name)) = (client, &cfg.webhook_config) {
        if cluster::publish_ca_bundle(client, name, pem).await? {
            tracing::info!(webhook = %name, "published the serving CA bundle as caBundle");
        }
    }
    Ok(())
}

/// Runs the injector until `shutdown`.
pub async fn run(cfg: InjectorConfig, shutdown: CancellationToken) -> Result<(), InjectorError> {
    // A CA file that is not a certificate (the placeholder) stops the start: pods injected with
    // it would fail every intercepted call.
    let bundle = TrustBundle::load(&cfg.ca_cert, cfg.system_roots.as_deref())?;
    let client = match &cfg.webhook_config {
        Some(_) => Some(spendguard_k8s::default_client().await?),
        None => None,
    };
    if let Some(dir) = &cfg.out_dir {
        bundle.write_dir(&dir.join(OUT_TRUST_DIR))?;
    }
    let shared = Arc::new(Shared {
        trust_configmap: cfg.trust_configmap.clone(),
        client: client.clone(),
        bundle: ArcSwap::from_pointee(bundle),
    });

    let mut certs = ServingCerts::new(&cfg.sans, cfg.rotation, SystemTime::now())?;
    let resolver = SwappableCert::new(certs.certified_key());
    let mut tls = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(InjectorError::Tls)?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

    // Publish before serving: the API server must trust the first leaf already. A failure (RBAC,
    // configuration not applied yet) is retried by the renewal task; meanwhile, with
    // failurePolicy Ignore, pods are admitted without trust.
    match publish(&cfg, client.as_ref(), &certs.ca_bundle_pem()).await {
        Ok(()) => certs.mark_published(SystemTime::now()),
        Err(e) => tracing::error!("{e}; retrying every {PUBLISH_RETRY:?}"),
    }

    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| InjectorError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let local = listener
        .local_addr()
        .map_err(|source| InjectorError::Listen {
            addr: cfg.listen,
            source,
        })?;
    if let Some(dir) = &cfg.out_dir {
        write_file(&dir.join(OUT_ADDRESS), local.to_string().as_bytes())?;
    }
    tracing::info!(address = %local, sans = ?cfg.sans, "injector serving AdmissionReview on /mutate");

    let renew = tokio::spawn(renew_loop(
        cfg.clone(),
        client.clone(),
        certs,
        resolver,
        shutdown.clone(),
    ));
    let resync = tokio::spawn(resync_loop(cfg.clone(), shared.clone(), shutdown.clone()));
    server::serve(listener, Arc::new(tls), shared, shutdown).await;
    renew.abort();
    resync.abort();
    Ok(())
}

/// Renews the serving certificates when due and (re)publishes the CA bundle until it sticks.
async fn renew_loop(
    cfg: InjectorConfig,
    client: Option<kube::Client>,
    mut certs: ServingCerts,
    resolver: Arc<SwappableCert>,
    shutdown: CancellationToken,
) {
    // Re-published every resync even when nothing changed here: another replica may have
    // dropped this one's CA from the shared caBundle (merge_ca_bundle keeps a bounded number).
    let cap = cfg.resync;
    let mut published_at = std::time::Instant::now();
    loop {
        let due = !certs.is_published() || published_at.elapsed() >= cfg.resync;
        let mut retry = false;
        if due {
            match publish(&cfg, client.as_ref(), &certs.ca_bundle_pem()).await {
                Ok(()) => {
                    certs.mark_published(SystemTime::now());
                    published_at = std::time::Instant::now();
                }
                Err(e) => {
                    tracing::error!("{e}; retrying in {PUBLISH_RETRY:?}");
                    retry = true;
                }
            }
        }
        let mut wait = certs.next_check(SystemTime::now(), cap);
        if retry {
            wait = wait.min(PUBLISH_RETRY);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match certs.renew(SystemTime::now()) {
            Ok(r) => {
                if r.leaf {
                    resolver.set(certs.certified_key());
                    tracing::info!("serving certificate renewed");
                }
                if r.ca_bundle {
                    tracing::info!("serving CA bundle changed; publishing");
                }
            }
            // Keeps serving the current (still valid) leaf; tried again next round.
            Err(e) => tracing::error!("{e}"),
        }
    }
}

/// Re-reads the trust inputs and keeps every labelled namespace's ConfigMap current.
async fn resync_loop(cfg: InjectorConfig, shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        match TrustBundle::load(&cfg.ca_cert, cfg.system_roots.as_deref()) {
            Ok(b) if b.digest != shared.bundle.load().digest => {
                tracing::info!("the trust inputs changed (CA file or system roots): rebuilding");
                if let Some(dir) = &cfg.out_dir {
                    if let Err(e) = b.write_dir(&dir.join(OUT_TRUST_DIR)) {
                        tracing::error!("{e}");
                    }
                }
                shared.bundle.store(Arc::new(b));
            }
            Ok(_) => {}
            // The old bundle stays in use: a broken CA file must not empty every pod's trust.
            Err(e) => tracing::error!("{e}; keeping the trust bundle built before"),
        }
        if let Some(client) = &shared.client {
            match cluster::labelled_namespaces(client).await {
                Ok(nss) => {
                    for ns in nss {
                        shared.ensure_namespace(&ns).await;
                    }
                }
                Err(e) => tracing::error!("{e}"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(cfg.resync) => {}
        }
    }
}
