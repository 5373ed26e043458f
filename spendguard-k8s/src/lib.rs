//! SpendGuard on Kubernetes: watches this node's pods and turns the `spendguard.io/agent: NAME`
//! label into cgroup tags.
//!
//! - [`CgroupResolver`] knows where kubelet puts a pod's cgroup v2 directory (systemd and cgroupfs
//!   drivers, every QoS class, containerd / CRI-O / Docker container scopes).
//! - [`run_watcher`] lists and watches the labelled pods of this node and calls a [`PodTagSink`]
//!   (the agent's tag store): [`PodTagSink::apply_pod`] with the pod-level directory (tagging it
//!   covers every container, since descendants are tagged too), [`PodTagSink::remove_pod`] when
//!   the pod goes or loses its label, and [`PodTagSink::resync`] after every full list.
//! - An invalid label value is passed on as an error so the agent fails closed for that pod, and
//!   is reported as a Warning Event on the pod.
//!
//! [`AgentName`] is the ledger's type (`spendguard_ledger::AgentName`): one definition of a valid
//! name for labels, the CLI and the ledger.

pub mod cgroup;
pub mod name;
mod pod;
mod watcher;

pub use cgroup::{CgroupDriver, CgroupResolver, QosClass};
pub use name::AgentName;
pub use pod::{parse_agent, LabelError, PodRef, AGENT_LABEL};
pub use watcher::{
    default_client, install_crypto_provider, run_watcher, K8sError, PodTagSink, WatcherConfig,
    DEFAULT_COMPONENT, ENV_NODE_NAME, INVALID_LABEL_REASON,
};
