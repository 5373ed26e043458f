//! The pod watcher: list+watch this node's labelled pods and keep the agent's tags in step.
//!
//! Consistency model: a full list is followed by [`PodTagSink::resync`] with the complete live set,
//! so whatever was missed while disconnected (or while the agent was down) is corrected. Any watch
//! error, including `410 Gone` (the resource version expired), drops the watch and lists again;
//! other errors back off exponentially first. Between lists, ADDED/MODIFIED/DELETED events are
//! applied as they come. The sink is called only when what a pod asks for changes (its label value
//! or its cgroup paths), not on every status update.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Event as CoreEvent, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};
use kube::runtime::watcher::{self, ListSemantic};
use tokio_util::sync::CancellationToken;

use crate::cgroup::CgroupResolver;
use crate::name::AgentName;
use crate::pod::{parse_agent, Desired, LabelError, PodRef, AGENT_LABEL};

/// The environment variable the DaemonSet fills from `spec.nodeName` (downward API).
pub const ENV_NODE_NAME: &str = "NODE_NAME";
/// `reason` of the Warning Event posted on a pod whose label is not a valid agent name.
pub const INVALID_LABEL_REASON: &str = "InvalidSpendGuardAgentLabel";
/// Default `source.component` / `reportingComponent` of our Events.
pub const DEFAULT_COMPONENT: &str = "spendguard-agent";

/// Implemented by the agent's tag store. Calls come from the watcher task, one at a time; they
/// should return quickly (no network I/O).
pub trait PodTagSink: Send + Sync + 'static {
    /// The pod should be tagged: `cgroups` are the directories to tag (pod-level dir first), `agent`
    /// is the label's agent name or an error for an invalid value (the agent then keeps the pod away
    /// from providers — fail closed — instead of leaving it unmetered). Replaces whatever an earlier
    /// call tagged for the same `pod.uid`. A path may not exist yet: the tag waits for it.
    fn apply_pod(&self, pod: &PodRef, agent: Result<AgentName, LabelError>, cgroups: Vec<PathBuf>);
    /// The pod is gone or lost its label. Idempotent: may be called for a pod never applied.
    fn remove_pod(&self, pod_uid: &str);
    /// After every (re)list: the complete set of labelled pods on this node; anything else tagged
    /// from a pod must be removed.
    fn resync(&self, live: &[PodRef]);
}

/// Errors that stop [`run_watcher`] (API errors do not: it retries them forever, logging).
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error(
        "the node name is empty: set {ENV_NODE_NAME} from the downward API (env valueFrom \
         fieldRef fieldPath: spec.nodeName) in the DaemonSet"
    )]
    NoNodeName,
    #[error(
        "node name {0:?} cannot be used in a field selector (it contains ',', '=', '!' or '\\'); \
         check {ENV_NODE_NAME}"
    )]
    BadNodeName(String),
    #[error(
        "cannot configure a Kubernetes client: {source} (in a pod: is the service account token \
         mounted (automountServiceAccountToken)? elsewhere: is KUBECONFIG set?)"
    )]
    Client {
        #[source]
        source: kube::Error,
    },
}

/// Makes ring rustls' process-wide default provider unless one is installed already. kube builds
/// its TLS config with `ClientConfig::builder()`, which uses that default, and rustls cannot pick
/// one itself when the build enables more than one provider (the agent's dependencies also enable
/// aws-lc-rs): without this, building a client panics. Called by [`default_client`]; call it
/// before building a `kube::Client` any other way.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err only if another thread installed one in between: that one is used, fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Builds a client from the in-cluster service account, or KUBECONFIG outside a cluster.
pub async fn default_client() -> Result<kube::Client, K8sError> {
    install_crypto_provider();
    kube::Client::try_default()
        .await
        .map_err(|source| K8sError::Client { source })
}

/// How the watcher runs. `WatcherConfig::new(node)` gives production defaults.
#[derive(Clone, Debug)]
pub struct WatcherConfig {
    /// This node's name (`spec.nodeName` of the agent's own pod): only pods scheduled here are
    /// watched.
    pub node_name: String,
    /// `source.component` and `reportingComponent` of the Events we post.
    pub component: String,
    /// First delay before retrying after an API error (doubles up to `retry_max`). A `410 Gone`
    /// relists at once.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl WatcherConfig {
    pub fn new(node_name: impl Into<String>) -> WatcherConfig {
        WatcherConfig {
            node_name: node_name.into(),
            component: DEFAULT_COMPONENT.to_string(),
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
        }
    }

    fn validate(&self) -> Result<(), K8sError> {
        if self.node_name.is_empty() {
            return Err(K8sError::NoNodeName);
        }
        if self.node_name.contains([',', '=', '!', '\\']) {
            return Err(K8sError::BadNodeName(self.node_name.clone()));
        }
        Ok(())
    }

    /// The list/watch parameters: this node's pods that carry the label (any value).
    fn watcher_config(&self) -> watcher::Config {
        watcher::Config::default()
            .fields(&format!("spec.nodeName={}", self.node_name))
            .labels(AGENT_LABEL)
            // A relist follows a lost watch: read the current state (served from the watch cache
            // when the API server can prove it is current), not whatever an old cache holds, so
            // `resync` never acts on stale data.
            .list_semantic(ListSemantic::MostRecent)
    }
}

/// Runs until cancelled: list+watch pods with fieldSelector `spec.nodeName=$NODE_NAME` and
/// labelSelector `spendguard.io/agent`; on each applied/deleted event call the sink; on every
/// (re)start and after watch errors incl. 410 Gone: full relist then `resync`. Also emits a
/// Kubernetes Event (reason `InvalidSpendGuardAgentLabel`, type Warning) on the pod for an invalid
/// label, plus a log line.
///
/// Returns `Ok(())` once `shutdown` is cancelled; `Err` only for an unusable configuration.
pub async fn run_watcher(
    client: kube::Client,
    cfg: WatcherConfig,
    resolver: CgroupResolver,
    sink: Arc<dyn PodTagSink>,
    shutdown: CancellationToken,
) -> Result<(), K8sError> {
    cfg.validate()?;
    let pods: Api<Pod> = Api::all(client.clone());
    let wc = cfg.watcher_config();
    let mut state = State {
        client,
        cfg: cfg.clone(),
        resolver,
        sink,
        known: HashMap::new(),
        relist: None,
    };
    let mut delay = cfg.retry_min;
    tracing::info!(node = %cfg.node_name, label = AGENT_LABEL, "watching this node's labelled pods");
    loop {
        // A fresh watcher starts with a full list (Init … InitDone).
        let mut stream = watcher::watcher(pods.clone(), wc.clone()).boxed();
        let err = loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                next = stream.next() => next,
            };
            match next {
                Some(Ok(event)) => {
                    if state.handle(event) {
                        delay = cfg.retry_min;
                    }
                }
                Some(Err(e)) => break Some(e),
                None => break None,
            }
        };
        drop(stream);
        state.relist = None;
        let pause = match &err {
            Some(watcher::Error::WatchError(status)) if status.code == 410 => {
                tracing::info!("pod watch expired (410 Gone); listing again");
                Duration::ZERO
            }
            Some(e) => {
                tracing::warn!(
                    error = %e,
                    retry_in = ?delay,
                    "pod list/watch failed; will list again (check the API server connection and \
                     that the service account may list/watch pods)"
                );
                delay
            }
            None => delay,
        };
        if !pause.is_zero() {
            delay = (delay * 2).min(cfg.retry_max);
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// What was last handed to the sink for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Applied {
    label: String,
    cgroups: Vec<PathBuf>,
    warned_missing_cgroup: bool,
}

struct State {
    client: kube::Client,
    cfg: WatcherConfig,
    resolver: CgroupResolver,
    sink: Arc<dyn PodTagSink>,
    known: HashMap<String, Applied>,
    /// During a (re)list: the labelled pods seen so far.
    relist: Option<Vec<PodRef>>,
}

impl State {
    /// Handles one watcher event; true when a list has just completed.
    fn handle(&mut self, event: watcher::Event<Pod>) -> bool {
        match event {
            watcher::Event::Init => {
                self.relist = Some(Vec::new());
                false
            }
            watcher::Event::InitApply(pod) => {
                if let Some(live) = self.apply(&pod) {
                    self.relist.get_or_insert_with(Vec::new).push(live);
                }
                false
            }
            watcher::Event::InitDone => {
                let mut live = self.relist.take().unwrap_or_default();
                live.sort();
                live.dedup();
                self.known
                    .retain(|uid, _| live.iter().any(|p| &p.uid == uid));
                tracing::debug!(pods = live.len(), "pod list complete; resync");
                self.sink.resync(&live);
                true
            }
            watcher::Event::Apply(pod) => {
                self.apply(&pod);
                false
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    if self.known.remove(uid).is_some() {
                        tracing::info!(pod = %pod_name(&pod), "pod gone; untagging");
                    }
                    self.sink.remove_pod(uid);
                }
                false
            }
        }
    }

    /// Brings one pod's tags in line with the object; returns it when it is labelled and live.
    fn apply(&mut self, pod: &Pod) -> Option<PodRef> {
        match Desired::of(pod, &self.cfg.node_name, &self.resolver) {
            Desired::Malformed => {
                tracing::warn!(?pod.metadata.name, "pod object without namespace, name or uid; ignored");
                None
            }
            Desired::Untagged { uid } => {
                if self.known.remove(&uid).is_some() {
                    tracing::info!(pod = %pod_name(pod), "pod lost its {AGENT_LABEL} label or finished; untagging");
                    self.sink.remove_pod(&uid);
                }
                None
            }
            Desired::Tagged {
                pod: pod_ref,
                label,
                cgroups,
                running_without_cgroup,
            } => {
                let previous = self.known.get(&pod_ref.uid);
                let changed =
                    previous.is_none_or(|prev| prev.label != label || prev.cgroups != cgroups);
                let label_changed = previous.is_none_or(|prev| prev.label != label);
                let mut warned = previous.is_some_and(|p| p.warned_missing_cgroup);
                if running_without_cgroup && !warned {
                    tracing::error!(
                        pod = %pod_ref,
                        looked_for = ?cgroups,
                        root = %self.resolver.root().display(),
                        "pod is Running but none of its cgroup v2 directories exists: its traffic \
                         is NOT metered. SpendGuard needs pods in cgroup v2: on a cgroup v1 node they \
                         never are; on a hybrid node the container runtime did not also place them in \
                         the v2 tree (runc 1.1.5 does, measured)"
                    );
                    warned = true;
                }
                if changed {
                    let agent = parse_agent(&label);
                    match &agent {
                        Ok(a) => {
                            tracing::info!(pod = %pod_ref, agent = %a, cgroups = ?cgroups, "tagging pod")
                        }
                        Err(e) => {
                            tracing::warn!(pod = %pod_ref, error = %e, "pod has an invalid agent label; its provider traffic is blocked");
                            if label_changed {
                                self.post_invalid_label_event(pod, &pod_ref, e);
                            }
                        }
                    }
                    self.sink.apply_pod(&pod_ref, agent, cgroups.clone());
                }
                self.known.insert(
                    pod_ref.uid.clone(),
                    Applied {
                        label,
                        cgroups,
                        warned_missing_cgroup: warned,
                    },
                );
                Some(pod_ref)
            }
        }
    }

    /// Posts a Warning Event on the pod, in the background (a slow API server must not delay
    /// tagging). Failure is logged, not fatal: the tag is already fail-closed.
    fn post_invalid_label_event(&self, pod: &Pod, pod_ref: &PodRef, err: &LabelError) {
        let event = invalid_label_event(pod, pod_ref, err, &self.cfg);
        let api: Api<CoreEvent> = Api::namespaced(self.client.clone(), &pod_ref.namespace);
        let pod_ref = pod_ref.clone();
        tokio::spawn(async move {
            if let Err(e) = api.create(&PostParams::default(), &event).await {
                tracing::warn!(pod = %pod_ref, error = %e, "cannot post the {INVALID_LABEL_REASON} Event (may the service account create events?)");
            }
        });
    }
}

fn pod_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("?"),
        pod.metadata.name.as_deref().unwrap_or("?")
    )
}

/// A core/v1 Event the way client-go's recorder names them: `<pod>.<unix nanos in hex>`.
fn invalid_label_event(
    pod: &Pod,
    pod_ref: &PodRef,
    err: &LabelError,
    cfg: &WatcherConfig,
) -> CoreEvent {
    let now = k8s_openapi::jiff::Timestamp::now();
    let suffix = format!(".{:x}", now.as_nanosecond());
    // Object names are at most 253 characters; pod names can be that long already.
    let mut base = pod_ref.name.clone();
    base.truncate(253 - suffix.len());
    CoreEvent {
        metadata: ObjectMeta {
            name: Some(format!("{base}{suffix}")),
            namespace: Some(pod_ref.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(pod_ref.namespace.clone()),
            name: Some(pod_ref.name.clone()),
            uid: Some(pod_ref.uid.clone()),
            resource_version: pod.metadata.resource_version.clone(),
            field_path: Some(format!("metadata.labels['{AGENT_LABEL}']")),
        },
        reason: Some(INVALID_LABEL_REASON.into()),
        message: Some(err.to_string()),
        type_: Some("Warning".into()),
        source: Some(EventSource {
            component: Some(cfg.component.clone()),
            host: Some(cfg.node_name.clone()),
        }),
        reporting_component: Some(cfg.component.clone()),
        reporting_instance: Some(format!("{}-{}", cfg.component, cfg.node_name)),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation_names_the_fix() {
        let e = WatcherConfig::new("").validate().expect_err("empty");
        assert!(e.to_string().contains("spec.nodeName"), "{e}");
        assert!(matches!(
            WatcherConfig::new("a,b").validate(),
            Err(K8sError::BadNodeName(_))
        ));
        WatcherConfig::new("ip-10-0-0-1.ec2.internal")
            .validate()
            .expect("valid");
    }

    #[test]
    fn event_names_fit_and_point_at_the_label() {
        let pod_ref = PodRef {
            namespace: "ns".into(),
            name: "x".repeat(253),
            uid: "u".into(),
        };
        let err = parse_agent("BAD").expect_err("invalid");
        let ev = invalid_label_event(&Pod::default(), &pod_ref, &err, &WatcherConfig::new("n1"));
        let name = ev.metadata.name.expect("name");
        assert!(name.len() <= 253, "{}", name.len());
        assert_eq!(ev.reason.as_deref(), Some(INVALID_LABEL_REASON));
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert_eq!(ev.involved_object.uid.as_deref(), Some("u"));
        assert!(ev.message.expect("message").contains("\"BAD\""));
    }
}
