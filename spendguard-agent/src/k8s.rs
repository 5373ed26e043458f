//! Kubernetes: the pod watcher ([`spendguard_k8s`]) keeps the tag store in step with the
//! `spendguard.io/agent` labels of this node's pods.
//!
//! A pod's tags carry `TagSource::Pod` with its uid, so the watcher owns exactly those: a relabel
//! replaces them, a deleted pod loses them, a relist drops the tags of pods that are gone. Manual
//! tags (`spendguard tag`) are never touched by a resync.
//!
//! Fail closed: a pod whose label is not a valid agent name is tagged as the reserved agent
//! [`QUARANTINE_AGENT`], which is paused in the ledger, so its provider requests get
//! `402 agent_paused` instead of flowing unmetered.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use spendguard_k8s::{CgroupResolver, LabelError, PodRef, PodTagSink, WatcherConfig};
use spendguard_ledger::Ledger;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::identity::{AgentName, TagStore};

/// The agent that pods with an invalid `spendguard.io/agent` label are tagged as; kept paused.
pub const QUARANTINE_AGENT: &str = "spendguard.quarantine.invalid-label";

/// The reserved quarantine agent, parsed.
pub fn quarantine_agent() -> AgentName {
    QUARANTINE_AGENT
        .parse()
        .expect("QUARANTINE_AGENT is a valid agent name")
}

/// The tag store as the pod watcher's sink. Cheap to clone.
#[derive(Clone)]
pub struct PodTags {
    tags: TagStore,
    ledger: Ledger,
    quarantine: AgentName,
    runtime: tokio::runtime::Handle,
}

impl PodTags {
    /// Must be called inside a tokio runtime: the quarantine pause is spawned on it (the sink's
    /// methods are synchronous).
    pub fn new(tags: TagStore, ledger: Ledger) -> PodTags {
        PodTags {
            tags,
            ledger,
            quarantine: quarantine_agent(),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Pauses the quarantine agent (idempotent). Done at start, before any pod is tagged, and
    /// again whenever a pod is quarantined (an operator may have resumed it).
    pub async fn pause_quarantine(&self) {
        if let Err(e) = self.ledger.pause(&self.quarantine).await {
            tracing::error!(
                agent = %self.quarantine,
                error = %e,
                "cannot pause the quarantine agent: pods with an invalid label are metered under \
                 it but NOT blocked"
            );
        }
    }
}

impl PodTagSink for PodTags {
    fn apply_pod(&self, pod: &PodRef, agent: Result<AgentName, LabelError>, cgroups: Vec<PathBuf>) {
        let agent = match agent {
            Ok(agent) => agent,
            Err(e) => {
                tracing::warn!(
                    %pod,
                    error = %e,
                    agent = %self.quarantine,
                    "invalid agent label: the pod is tagged as the paused quarantine agent"
                );
                let this = self.clone();
                self.runtime
                    .spawn(async move { this.pause_quarantine().await });
                self.quarantine.clone()
            }
        };
        match self
            .tags
            .tag_pod(&pod.namespace, &pod.name, &pod.uid, agent.clone(), &cgroups)
        {
            Ok(tags) => {
                let waiting = tags.iter().filter(|t| t.cgroup_id == 0).count();
                tracing::info!(%pod, %agent, cgroups = tags.len(), waiting, "pod tagged");
            }
            Err(e) => tracing::error!(
                %pod,
                %agent,
                ?cgroups,
                error = %e,
                "cannot tag the pod's cgroups: its traffic is NOT metered"
            ),
        }
    }

    fn remove_pod(&self, pod_uid: &str) {
        match self.tags.untag_pod(pod_uid) {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(uid = pod_uid, cgroups = removed.len(), "pod untagged");
            }
            Ok(_) => {}
            Err(e) => tracing::error!(uid = pod_uid, error = %e, "cannot untag the pod"),
        }
    }

    fn resync(&self, live: &[PodRef]) {
        match self.tags.retain_pods(live.iter().map(|p| p.uid.as_str())) {
            Ok(removed) => {
                for tag in removed {
                    tracing::info!(
                        cgroup = %tag.cgroup.display(),
                        agent = %tag.agent,
                        "untagged a pod that is no longer on this node or labelled"
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "pod resync failed"),
        }
    }
}

/// Starts watching this node's labelled pods: builds the client (in-cluster service account, or
/// KUBECONFIG), pauses the quarantine agent, and spawns the watcher until `shutdown`.
pub async fn start(
    node: String,
    tags: TagStore,
    ledger: Ledger,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    if node.is_empty() {
        return Err(spendguard_k8s::K8sError::NoNodeName.into());
    }
    // Installs ring as rustls' process default first (the agent's graph has two providers).
    let client = spendguard_k8s::default_client()
        .await
        .context("the Kubernetes pod watcher (NODE_NAME is set)")?;
    // On a hybrid host kubelet's layout is visible in the v1 hierarchies before the v2 tree has it.
    let resolver = CgroupResolver::new(tags.mount())
        .with_v1_hierarchies(crate::identity::cgroupfs::v1_mounts());
    let sink = PodTags::new(tags, ledger);
    sink.pause_quarantine().await;
    let sink: Arc<dyn PodTagSink> = Arc::new(sink);
    let cfg = WatcherConfig::new(node);
    Ok(tokio::spawn(async move {
        if let Err(e) = spendguard_k8s::run_watcher(client, cfg, resolver, sink, shutdown).await {
            tracing::error!(error = %e, "the pod watcher stopped: pod labels are no longer applied");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    use spendguard_k8s::{parse_agent, QosClass};
    use spendguard_ledger::LedgerOptions;

    use crate::identity::cgroupfs;
    use crate::identity::tags::{Tag, TagMap, TagSource};

    use crate::identity::tags::testing::FakeMap;

    /// A kubelet-like tree (`kubepods/burstable/pod<uid>`, cgroupfs driver) in a fresh directory
    /// under the real cgroup v2 mount; every directory made is removed (deepest first) on drop.
    struct Kubepods {
        root: PathBuf,
        made: Vec<PathBuf>,
    }
    impl Kubepods {
        fn new() -> Kubepods {
            let mount = cgroupfs::cgroup2_mount().expect("cgroup2");
            let root = mount.join(format!("sg-unit-k8s-{}", std::process::id()));
            let mut k = Kubepods {
                root: root.clone(),
                made: Vec::new(),
            };
            k.mkdir(&root);
            k.mkdir(&root.join("kubepods"));
            k.mkdir(&root.join("kubepods/burstable"));
            k
        }
        fn mkdir(&mut self, p: &Path) {
            std::fs::create_dir(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
            self.made.push(p.to_path_buf());
        }
        fn resolver(&self) -> CgroupResolver {
            CgroupResolver::new(&self.root)
        }
    }
    impl Drop for Kubepods {
        fn drop(&mut self) {
            for p in self.made.iter().rev() {
                if let Err(e) = std::fs::remove_dir(p) {
                    eprintln!("cannot remove test cgroup {}: {e}", p.display());
                }
            }
        }
    }

    fn pod(name: &str, uid: &str) -> PodRef {
        PodRef {
            namespace: "team".into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    fn tags_of(store: &TagStore, uid: &str) -> Vec<Tag> {
        store
            .list()
            .into_iter()
            .filter(|t| matches!(&t.source, TagSource::Pod { uid: u, .. } if u == uid))
            .collect()
    }

    async fn wait_paused(ledger: &Ledger, agent: &AgentName) -> bool {
        for _ in 0..200 {
            if ledger.status(agent).paused {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn pod_sink_tags_real_cgroups_and_fails_closed() {
        let state = tempfile::tempdir().expect("tempdir");
        let mount = cgroupfs::cgroup2_mount().expect("cgroup2");
        let map = Arc::new(FakeMap::default());
        let store = TagStore::open(state.path(), mount, map.clone()).expect("tags");
        let ledger = Ledger::open(state.path().join("ledger.redb"), LedgerOptions::default())
            .expect("ledger");
        let sink = PodTags::new(store.clone(), ledger.clone());
        let mut tree = Kubepods::new();
        let resolver = tree.resolver();
        let ids = || {
            let mut v = map.ids().expect("ids");
            v.sort_unstable();
            v
        };

        // A running pod: its pod-level directory exists.
        let a = pod("summarizer", "aaaa-1111");
        let a_dirs = resolver.pod_dirs(&a.uid, QosClass::Burstable);
        assert_eq!(
            a_dirs,
            vec![tree.root.join("kubepods/burstable/podaaaa-1111")]
        );
        tree.mkdir(&a_dirs[0]);
        sink.apply_pod(&a, parse_agent("acme.research.summarizer"), a_dirs.clone());
        let ta = tags_of(&store, &a.uid);
        assert_eq!(ta.len(), 1);
        assert_eq!(ta[0].agent.as_str(), "acme.research.summarizer");
        assert_ne!(ta[0].cgroup_id, 0);
        assert_eq!(ids(), vec![ta[0].cgroup_id]);

        // Label change: same cgroup, new agent.
        sink.apply_pod(&a, parse_agent("acme.research.critic"), a_dirs.clone());
        let ta2 = tags_of(&store, &a.uid);
        assert_eq!(ta2.len(), 1);
        assert_eq!(ta2[0].agent.as_str(), "acme.research.critic");
        assert_eq!(ta2[0].cgroup_id, ta[0].cgroup_id);
        assert_eq!(ids(), vec![ta[0].cgroup_id]);

        // A pod whose cgroup does not exist yet is tagged at once and resolved when it appears.
        let b = pod("pending", "bbbb-2222");
        let b_dirs = resolver.pod_dirs(&b.uid, QosClass::Burstable);
        sink.apply_pod(&b, parse_agent("acme.batch"), b_dirs.clone());
        let tb = tags_of(&store, &b.uid);
        assert_eq!((tb.len(), tb[0].cgroup_id), (1, 0));
        tree.mkdir(&b_dirs[0]);
        store.reconcile().expect("reconcile");
        let b_id = tags_of(&store, &b.uid)[0].cgroup_id;
        assert_ne!(b_id, 0);
        assert_eq!(ids().len(), 2);

        // An invalid label: tagged as the quarantine agent, which the ledger pauses.
        let q = pod("bad", "cccc-3333");
        let q_dirs = resolver.pod_dirs(&q.uid, QosClass::Burstable);
        tree.mkdir(&q_dirs[0]);
        let quarantine = quarantine_agent();
        assert!(!ledger.status(&quarantine).paused);
        sink.apply_pod(&q, parse_agent("Not A Name"), q_dirs.clone());
        let tq = tags_of(&store, &q.uid);
        assert_eq!(tq.len(), 1);
        assert_eq!(tq[0].agent, quarantine);
        assert_ne!(tq[0].cgroup_id, 0);
        assert_eq!(
            store.by_id(tq[0].cgroup_id).map(|t| t.agent),
            Some(quarantine.clone())
        );
        assert!(
            wait_paused(&ledger, &quarantine).await,
            "the quarantine agent is paused"
        );

        // A manual tag on another cgroup.
        let m_dir = tree.root.join("manual");
        tree.mkdir(&m_dir);
        let manual: AgentName = "ops.cron".parse().expect("name");
        let tm = store
            .tag(&m_dir, manual, TagSource::Manual)
            .expect("manual tag");

        // Removal untags exactly that pod (and is idempotent).
        sink.remove_pod(&b.uid);
        sink.remove_pod(&b.uid);
        sink.remove_pod("never-seen");
        assert!(tags_of(&store, &b.uid).is_empty());
        assert!(store.by_id(b_id).is_none());

        // Resync with only `a` live: the quarantined pod is dropped, the manual tag stays.
        sink.resync(std::slice::from_ref(&a));
        assert!(tags_of(&store, &q.uid).is_empty());
        assert_eq!(tags_of(&store, &a.uid).len(), 1);
        assert!(store.list().contains(&tm), "manual tags survive a resync");
        let mut want = vec![ta[0].cgroup_id, tm.cgroup_id];
        want.sort_unstable();
        assert_eq!(ids(), want);

        // Nothing live: only the manual tag is left.
        sink.resync(&[]);
        assert_eq!(store.list(), vec![tm.clone()]);
        assert_eq!(ids(), vec![tm.cgroup_id]);
        store.untag(&m_dir).expect("untag manual");
    }

    #[test]
    fn the_quarantine_agent_is_a_valid_reserved_name() {
        assert_eq!(quarantine_agent().as_str(), QUARANTINE_AGENT);
        assert!(parse_agent(QUARANTINE_AGENT).is_ok());
    }
}
