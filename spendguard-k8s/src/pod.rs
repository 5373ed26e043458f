//! From a Pod object to what should be tagged: pure functions over the API types, no I/O but the
//! cgroup resolver's directory checks.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use k8s_openapi::api::core::v1::Pod;

use crate::cgroup::{CgroupResolver, QosClass};
use crate::name::AgentName;

/// The pod label that names a pod's agent.
pub const AGENT_LABEL: &str = "spendguard.io/agent";

/// Which pod a tag came from. `uid` is the identity; namespace and name are for humans (and for
/// Events).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why a pod's label cannot be used. The agent keeps such a pod away from providers (fail closed)
/// rather than leaving it unmetered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error(
        "label {AGENT_LABEL}={value:?} is not a valid agent name: {why}; fix the label (the pod's \
         provider traffic is blocked until then)"
    )]
    Invalid { value: String, why: String },
}

/// Parses a label value into an agent name.
pub fn parse_agent(value: &str) -> Result<AgentName, LabelError> {
    AgentName::from_str(value).map_err(|e| LabelError::Invalid {
        value: value.to_string(),
        why: e.to_string(),
    })
}

/// What one pod asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Desired {
    /// Tag these cgroups with the label's value.
    Tagged {
        pod: PodRef,
        label: String,
        cgroups: Vec<PathBuf>,
        /// True when none of `cgroups` exists although the pod runs (see [`Desired::of`]).
        running_without_cgroup: bool,
    },
    /// Nothing of this pod should be tagged (no label, finished, or on another node).
    Untagged { uid: String },
    /// The object lacks namespace, name or uid: not a usable pod.
    Malformed,
}

impl Desired {
    /// What `pod` needs on node `node_name`.
    ///
    /// A pod that has finished (`Succeeded`/`Failed`) has no processes left: untagged. A pod being
    /// deleted (`deletionTimestamp` set) keeps its tag until it is gone: its containers still run
    /// during the grace period.
    pub(crate) fn of(pod: &Pod, node_name: &str, resolver: &CgroupResolver) -> Desired {
        let meta = &pod.metadata;
        let (Some(namespace), Some(name), Some(uid)) = (
            meta.namespace.clone(),
            meta.name.clone(),
            meta.uid.clone().filter(|u| !u.is_empty()),
        ) else {
            return Desired::Malformed;
        };
        let label = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(AGENT_LABEL))
            .cloned();
        let on_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node_name);
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let finished = matches!(phase, Some("Succeeded" | "Failed"));
        let Some(label) = label.filter(|_| on_node && !finished) else {
            return Desired::Untagged { uid };
        };
        let qos = pod
            .status
            .as_ref()
            .and_then(|s| s.qos_class.as_deref())
            .and_then(QosClass::from_status);
        let cgroups = pod_cgroups(resolver, &uid, qos);
        let running_without_cgroup =
            phase == Some("Running") && !cgroups.iter().any(|p| p.is_dir());
        Desired::Tagged {
            pod: PodRef {
                namespace,
                name,
                uid,
            },
            label,
            cgroups,
            running_without_cgroup,
        }
    }
}

/// The pod-level directories to tag. The API server sets `status.qosClass` at creation, so an
/// unknown class is unusual (an old or synthetic object): then every class's directory is a
/// candidate, the existing one if any.
fn pod_cgroups(resolver: &CgroupResolver, uid: &str, qos: Option<QosClass>) -> Vec<PathBuf> {
    match qos {
        Some(q) => resolver.pod_dirs(uid, q),
        None => {
            let existing: Vec<PathBuf> = QosClass::ALL
                .iter()
                .flat_map(|q| resolver.existing_pod_dirs(uid, *q))
                .collect();
            if existing.is_empty() {
                QosClass::ALL
                    .iter()
                    .flat_map(|q| resolver.pod_dirs(uid, *q))
                    .collect()
            } else {
                existing
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pod(label: Option<&str>, node: &str, phase: &str, qos: Option<&str>) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = Some("ns".into());
        p.metadata.name = Some("p".into());
        p.metadata.uid = Some("1111-2222".into());
        p.metadata.labels =
            label.map(|l| BTreeMap::from([(AGENT_LABEL.to_string(), l.to_string())]));
        p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: Some(node.into()),
            ..Default::default()
        });
        p.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some(phase.into()),
            qos_class: qos.map(str::to_string),
            ..Default::default()
        });
        p
    }

    #[test]
    fn labelled_running_pod_on_this_node_is_tagged_at_its_expected_dirs() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("kubepods")).expect("mkdir");
        let r = CgroupResolver::new(dir.path());
        let d = Desired::of(
            &pod(Some("acme.x"), "n1", "Running", Some("Burstable")),
            "n1",
            &r,
        );
        let Desired::Tagged {
            pod,
            label,
            cgroups,
            running_without_cgroup,
        } = d
        else {
            panic!("expected Tagged, got {d:?}");
        };
        assert_eq!(pod.to_string(), "ns/p");
        assert_eq!(label, "acme.x");
        assert_eq!(
            cgroups,
            vec![dir.path().join("kubepods/burstable/pod1111-2222")]
        );
        assert!(
            running_without_cgroup,
            "dir does not exist although Running"
        );
    }

    #[test]
    fn unlabelled_finished_or_foreign_pods_are_untagged() {
        let r = CgroupResolver::new("/nonexistent");
        for (p, why) in [
            (pod(None, "n1", "Running", None), "no label"),
            (pod(Some("a"), "n1", "Succeeded", None), "succeeded"),
            (pod(Some("a"), "n1", "Failed", None), "failed"),
            (pod(Some("a"), "n2", "Running", None), "other node"),
        ] {
            assert_eq!(
                Desired::of(&p, "n1", &r),
                Desired::Untagged {
                    uid: "1111-2222".into()
                },
                "{why}"
            );
        }
        let mut no_uid = pod(Some("a"), "n1", "Running", None);
        no_uid.metadata.uid = None;
        assert_eq!(Desired::of(&no_uid, "n1", &r), Desired::Malformed);
    }

    #[test]
    fn unknown_qos_offers_every_class_until_one_exists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kp = dir.path().join("kubepods.slice");
        std::fs::create_dir(&kp).expect("mkdir");
        let r = CgroupResolver::new(dir.path());
        let all = pod_cgroups(&r, "u-1", None);
        assert_eq!(all.len(), 3, "{all:?}");
        let be = kp.join("kubepods-besteffort.slice/kubepods-besteffort-podu_1.slice");
        std::fs::create_dir_all(&be).expect("mkdir");
        assert_eq!(pod_cgroups(&r, "u-1", None), vec![be]);
    }

    #[test]
    fn invalid_label_values_explain_themselves() {
        let e = parse_agent("Bad Value").expect_err("invalid");
        let LabelError::Invalid { value, why } = &e;
        assert_eq!(value, "Bad Value");
        assert!(why.contains("not a valid agent name"), "{why}");
        assert!(e.to_string().contains(AGENT_LABEL));
        assert_eq!(
            parse_agent("acme.research").map(|a| a.to_string()),
            Ok("acme.research".to_string())
        );
    }
}
