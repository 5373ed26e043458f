//! The Kubernetes tier against a real control plane: etcd + kube-apiserver 1.20.2
//! ([`spendguard_tests::kube`]), no fakes on the API side.
//!
//! - The agent binary's own pod watcher, authenticated with a real ServiceAccount token of the
//!   DaemonSet's ServiceAccount and authorised by exactly the RBAC objects of `deploy/` (a verb
//!   missing there fails these tests), tags and untags pods as they come, change labels and go.
//! - `kubectl apply -k deploy/` (server-side apply) is accepted and stores what the README says.
//!
//! There is no kubelet in this file: pods are created with `spec.nodeName` set, and the test makes
//! each pod's cgroup directory where kubelet's cgroupfs driver would (`…/kubepods/besteffort/
//! pod<uid>`), under a cgroup of its own whose name contains `kube`, where the agent's resolver
//! looks. `tests/tests/kubelet.rs` runs the real kubelet.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use spendguard_tests::kube::{deploy_file, ControlPlane, ControlPlaneOptions};
use spendguard_tests::{cgroup2_mount, eventually, privileged, Cgroup, World};

const NODE: &str = "node-1";
const NS: &str = "team";
const LABEL: &str = "spendguard.io/agent";
const QUARANTINE: &str = "spendguard.quarantine.invalid-label";
const WAIT: Duration = Duration::from_secs(20);

/// A World whose agent watches a real API server (in the World's node namespace) as the
/// DaemonSet's ServiceAccount.
struct Cluster {
    // Field order is drop order: the agent stops before the API server, the cgroups go last.
    w: World,
    cp: ControlPlane,
    /// `<cgroup2>/<id>-kube`: the test's stand-in for kubelet's `--cgroup-root`.
    kube_root: Cgroup,
}

impl Cluster {
    fn start() -> Cluster {
        let w = World::new();
        let cp = ControlPlane::start(ControlPlaneOptions {
            netns: Some(w.node.path()),
            ..Default::default()
        });
        // Exactly the agent's identity and RBAC from deploy/, applied as an operator would.
        let kubeconfig = cp.agent_kubeconfig();
        w.set_agent_env("KUBECONFIG", kubeconfig.to_str().expect("utf8"));
        w.set_agent_env("NODE_NAME", NODE);
        let mount = cgroup2_mount().expect("cgroup2");
        let kube_root = Cgroup::new(mount.join(format!("{}-kube", w.id)));
        std::fs::create_dir_all(kube_root.path.join("kubepods/besteffort"))
            .expect("mkdir kubepods/besteffort");
        cp.kubectl_ok(&["create", "namespace", NS]);
        w.start_agent();
        Cluster { w, cp, kube_root }
    }

    /// Creates a pod on `node` (no kubelet runs it) with `labels`; its uid.
    fn pod(&self, name: &str, node: &str, labels: Value) -> String {
        let pod = self.cp.create(&json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {
                "nodeName": node,
                "automountServiceAccountToken": false,
                "containers": [{"name": "main", "image": "busybox"}],
            },
        }));
        assert_eq!(pod["status"]["qosClass"], "BestEffort", "{pod}");
        pod["metadata"]["uid"].as_str().expect("uid").to_string()
    }

    /// Where kubelet (cgroupfs driver) would put this BestEffort pod's cgroup; made now.
    fn pod_cgroup(&self, uid: &str) -> PathBuf {
        let p = self
            .kube_root
            .path
            .join(format!("kubepods/besteffort/pod{uid}"));
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }

    /// The agent's pod tags of pod `uid`: (agent, cgroup, cgroup id).
    fn tags_of(&self, uid: &str) -> Vec<(String, PathBuf, u64)> {
        let out = self.w.cli(&["agents", "--json"]);
        assert!(
            out.status.success(),
            "spendguard agents: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("agents --json");
        v.as_array()
            .expect("array")
            .iter()
            .filter(|t| t["source"]["kind"] == "pod" && t["source"]["uid"] == uid)
            .map(|t| {
                (
                    t["agent"].as_str().unwrap_or("").to_string(),
                    PathBuf::from(t["cgroup"].as_str().unwrap_or("")),
                    t["cgroup_id"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    /// Whether pod `uid`'s cgroup `dir` is tagged as `agent` and resolved (the kernel map has it).
    fn tagged_as(&self, uid: &str, dir: &Path, agent: &str) -> bool {
        self.tags_of(uid)
            .iter()
            .any(|(a, c, id)| a == agent && c == dir && *id != 0)
    }

    fn wait_tagged(&self, uid: &str, dir: &Path, agent: &str, what: &str) {
        assert!(
            eventually(WAIT, || self.tagged_as(uid, dir, agent)),
            "{what}: pod {uid} not tagged as {agent} at {}; its tags: {:?}\n{}",
            dir.display(),
            self.tags_of(uid),
            self.w.agent_log()
        );
    }

    fn wait_untagged(&self, uid: &str, what: &str) {
        assert!(
            eventually(WAIT, || self.tags_of(uid).is_empty()),
            "{what}: pod {uid} still tagged: {:?}",
            self.tags_of(uid)
        );
    }

    /// How many full lists the agent's watcher has completed (its debug log line per list).
    fn lists_done(&self) -> usize {
        self.w
            .agent_log()
            .matches("pod list complete; resync")
            .count()
    }
}

#[test]
fn the_agents_watcher_with_the_deploy_rbac_tags_pods_as_they_come_change_and_go() {
    if !privileged() {
        return;
    }
    let c = Cluster::start();

    // A labelled pod on this node: tagged with its label.
    let a = c.pod(
        "summarizer",
        NODE,
        json!({LABEL: "acme.research.summarizer"}),
    );
    let a_dir = c.pod_cgroup(&a);
    c.wait_tagged(&a, &a_dir, "acme.research.summarizer", "a new labelled pod");

    // Unlabelled here, labelled on another node: never tagged.
    let u = c.pod("plain", NODE, json!({"app": "plain"}));
    let u_dir = c.pod_cgroup(&u);
    let elsewhere = c.pod("elsewhere", "node-2", json!({LABEL: "acme.other"}));

    // The label changes: same cgroup, new agent.
    c.cp.kubectl_ok(&[
        "label",
        "-n",
        NS,
        "pod",
        "summarizer",
        &format!("{LABEL}=acme.research.critic"),
        "--overwrite",
    ]);
    c.wait_tagged(&a, &a_dir, "acme.research.critic", "a relabelled pod");
    assert!(
        !c.tags_of(&a)
            .iter()
            .any(|(agent, _, _)| agent == "acme.research.summarizer"),
        "the old label's tag is left: {:?}",
        c.tags_of(&a)
    );

    // The label goes: untagged; it comes back: tagged again.
    c.cp.kubectl_ok(&["label", "-n", NS, "pod", "summarizer", &format!("{LABEL}-")]);
    c.wait_untagged(&a, "a pod whose label was removed");
    c.cp.kubectl_ok(&[
        "label",
        "-n",
        NS,
        "pod",
        "summarizer",
        &format!("{LABEL}=acme.research.summarizer"),
    ]);
    c.wait_tagged(
        &a,
        &a_dir,
        "acme.research.summarizer",
        "a pod labelled again",
    );

    // A graceful delete leaves the pod terminating (no kubelet confirms it): its containers still
    // run in the grace period, so it stays tagged; once it is gone, it is untagged.
    c.cp.kubectl_ok(&["delete", "-n", NS, "pod", "summarizer", "--wait=false"]);
    let terminating = c.cp.get_json(&["-n", NS, "pod", "summarizer"]);
    assert!(
        terminating["metadata"]["deletionTimestamp"].is_string(),
        "{terminating}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        c.tagged_as(&a, &a_dir, "acme.research.summarizer"),
        "a terminating pod lost its tag: {:?}",
        c.tags_of(&a)
    );
    c.cp.kubectl_ok(&[
        "delete",
        "-n",
        NS,
        "pod",
        "summarizer",
        "--grace-period=0",
        "--force",
    ]);
    c.wait_untagged(&a, "a deleted pod");

    // An invalid label: tagged as the paused quarantine agent, and a real Warning Event on the pod.
    let q = c.pod("bad", NODE, json!({LABEL: "Acme.Research"}));
    let q_dir = c.pod_cgroup(&q);
    c.wait_tagged(&q, &q_dir, QUARANTINE, "a pod with an invalid label");
    let mut events = Value::Null;
    let found = eventually(WAIT, || {
        events = c.cp.get_json(&[
            "events",
            "-n",
            NS,
            "--field-selector",
            "involvedObject.name=bad,reason=InvalidSpendGuardAgentLabel",
        ]);
        events["items"].as_array().is_some_and(|i| !i.is_empty())
    });
    assert!(
        found,
        "no InvalidSpendGuardAgentLabel Event on the pod:\n{}",
        c.w.agent_log()
    );
    let ev = &events["items"][0];
    assert_eq!(ev["type"], "Warning", "{ev}");
    assert_eq!(ev["involvedObject"]["kind"], "Pod", "{ev}");
    assert_eq!(ev["involvedObject"]["uid"], q.as_str(), "{ev}");
    assert_eq!(ev["source"]["host"], NODE, "{ev}");
    assert!(
        ev["message"]
            .as_str()
            .is_some_and(|m| m.contains("\"Acme.Research\"")),
        "{ev}"
    );
    let status = c.w.cli(&["status", QUARANTINE, "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).expect("status --json");
    assert_eq!(
        status["paused"], true,
        "the quarantine agent is not paused: {status}"
    );

    // Only now (everything above had time to reach the agent): the unlabelled pod and the other
    // node's pod were never tagged, and the unlabelled pod's cgroup is untouched.
    assert!(
        c.tags_of(&u).is_empty(),
        "unlabelled pod tagged: {:?}",
        c.tags_of(&u)
    );
    assert!(
        c.tags_of(&elsewhere).is_empty(),
        "another node's pod tagged: {:?}",
        c.tags_of(&elsewhere)
    );
    assert!(u_dir.is_dir());

    // The watcher never met a refusal: without `watch` it would still catch up by listing again
    // after every failed watch (slower, with back-off), so the log is what tells.
    let log = c.w.agent_log();
    for refusal in ["pod list/watch failed", "cannot post the"] {
        assert!(
            !log.contains(refusal),
            "the agent logged {refusal:?}:\n{log}"
        );
    }

    // The ServiceAccount may do what the agent needs, and nothing it does not.
    let sa = c.cp.token_kubeconfig(
        "sa-check.kubeconfig",
        &c.cp.service_account_token("spendguard", "spendguard"),
    );
    for (verb, resource, want) in [
        ("list", "pods", "yes"),
        ("watch", "pods", "yes"),
        ("create", "events", "yes"),
        ("create", "pods", "no"),
        ("list", "secrets", "no"),
        ("patch", "pods", "no"),
    ] {
        let out =
            c.cp.kubectl_with(&sa, &["auth", "can-i", verb, resource, "-A"], None);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            want,
            "the agent's ServiceAccount: can-i {verb} {resource}"
        );
    }
}

#[test]
fn an_api_server_restart_makes_the_watcher_list_again_and_catch_up() {
    if !privileged() {
        return;
    }
    let mut c = Cluster::start();
    let a = c.pod("stays", NODE, json!({LABEL: "acme.stays"}));
    let a_dir = c.pod_cgroup(&a);
    let b = c.pod("vanishes", NODE, json!({LABEL: "acme.vanishes"}));
    let b_dir = c.pod_cgroup(&b);
    c.wait_tagged(&a, &a_dir, "acme.stays", "before the restart");
    c.wait_tagged(&b, &b_dir, "acme.vanishes", "before the restart");
    let lists_before = c.lists_done();
    assert!(lists_before >= 1, "no list logged:\n{}", c.w.agent_log());

    // While the API server is down, pod `vanishes` disappears behind its back (straight from
    // etcd), and etcd's history is compacted: no watch can replay that deletion, only a list sees it.
    c.cp.stop_apiserver();
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let deleted = c.cp.etcd_v3(
        "kv/deleterange",
        &json!({"key": b64(&format!("/registry/pods/{NS}/vanishes"))}),
    );
    assert_eq!(deleted["deleted"], "1", "{deleted}");
    let revision = deleted["header"]["revision"].clone();
    let compacted = c.cp.etcd_v3(
        "kv/compaction",
        &json!({"revision": revision, "physical": true}),
    );
    assert!(compacted.get("header").is_some(), "{compacted}");
    c.cp.restart_apiserver();

    c.wait_untagged(&b, "a pod deleted while the API server was down");
    assert!(
        c.lists_done() > lists_before,
        "no new list after the restart:\n{}",
        c.w.agent_log()
    );
    assert!(c.tagged_as(&a, &a_dir, "acme.stays"), "{:?}", c.tags_of(&a));
    // And the new watch delivers: a pod created after the restart is tagged.
    let n = c.pod("after", NODE, json!({LABEL: "acme.after"}));
    let n_dir = c.pod_cgroup(&n);
    c.wait_tagged(&n, &n_dir, "acme.after", "a pod created after the restart");
}

/// What `kubectl get` returns for one object of the applied install.
fn object(cp: &ControlPlane, args: &[&str]) -> Value {
    cp.get_json(args)
}

#[test]
fn kubectl_apply_k_deploy_is_accepted_and_stores_what_the_readme_says() {
    if !privileged() {
        return;
    }
    let cp = ControlPlane::start(ControlPlaneOptions::default());
    let dir = deploy_file("");
    let dir = dir.to_str().expect("utf8");
    // The README's order: the namespace (and the CA Secret, not needed to store the objects) first.
    cp.kubectl_ok(&["create", "namespace", "spendguard"]);
    // First as a server-side dry run (what a CI check against a cluster would do), then for real.
    cp.kubectl_ok(&["apply", "-k", dir, "--server-side", "--dry-run=server"]);
    let applied = cp.kubectl_ok(&["apply", "-k", dir, "--server-side"]);
    for what in [
        "namespace/spendguard",
        "serviceaccount/spendguard",
        "clusterrole.rbac.authorization.k8s.io/spendguard",
        "clusterrolebinding.rbac.authorization.k8s.io/spendguard",
        "configmap/spendguard-ca",
        "daemonset.apps/spendguard",
        "serviceaccount/spendguard-injector",
        "clusterrole.rbac.authorization.k8s.io/spendguard-injector",
        "clusterrolebinding.rbac.authorization.k8s.io/spendguard-injector",
        "deployment.apps/spendguard-injector",
        "service/spendguard-injector",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/spendguard-injector",
    ] {
        assert!(applied.contains(what), "{what} not applied: {applied}");
    }

    // "a Namespace labelled privileged" (Pod Security; the DaemonSet needs hostNetwork etc.).
    let ns = object(&cp, &["namespace", "spendguard"]);
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged",
        "{ns}"
    );
    let sa = object(&cp, &["-n", "spendguard", "serviceaccount", "spendguard"]);
    assert_eq!(sa["metadata"]["name"], "spendguard");

    // RBAC: pods get/list/watch and events create, nothing else.
    let role = object(&cp, &["clusterrole", "spendguard"]);
    let rules: Vec<(Value, Value, Value)> = role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| {
            (
                r["apiGroups"].clone(),
                r["resources"].clone(),
                r["verbs"].clone(),
            )
        })
        .collect();
    assert_eq!(
        rules,
        vec![
            (
                json!([""]),
                json!(["pods"]),
                json!(["get", "list", "watch"])
            ),
            (json!([""]), json!(["events"]), json!(["create"])),
        ],
        "{role}"
    );
    let binding = object(&cp, &["clusterrolebinding", "spendguard"]);
    assert_eq!(binding["roleRef"]["name"], "spendguard", "{binding}");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "spendguard", "namespace": "spendguard"}]),
        "{binding}"
    );

    // The DaemonSet: hostNetwork, the ServiceAccount, CAP_BPF/NET_ADMIN/PERFMON and nothing else,
    // NODE_NAME from the downward API, the CA Secret mounted.
    let ds = object(&cp, &["-n", "spendguard", "daemonset", "spendguard"]);
    let spec = &ds["spec"]["template"]["spec"];
    // AppArmor unconfined (bpffs pins) by the annotation, which 1.20 honours (the field is 1.30+).
    assert_eq!(
        ds["spec"]["template"]["metadata"]["annotations"]
            ["container.apparmor.security.beta.kubernetes.io/spendguard"],
        "unconfined",
        "{ds}"
    );
    assert_eq!(spec["hostNetwork"], true, "{spec}");
    assert_eq!(spec["serviceAccountName"], "spendguard", "{spec}");
    let agent = spec["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "spendguard")
        .expect("the spendguard container");
    let sc = &agent["securityContext"];
    assert_eq!(
        sc["capabilities"]["add"],
        json!(["BPF", "NET_ADMIN", "PERFMON"]),
        "{sc}"
    );
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{sc}");
    assert_eq!(sc["privileged"], false, "{sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{sc}");
    let node_name = agent["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    let ca = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "ca")
        .expect("ca volume");
    assert_eq!(ca["secret"]["secretName"], "spendguard-ca", "{ca}");
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"], 1,
        "{ds}"
    );

    // The README's example workload is accepted too (a server-side dry run: nothing would run it).
    let example = deploy_file("examples/agent-pod.yaml");
    cp.kubectl_ok(&[
        "apply",
        "-n",
        "default",
        "-f",
        example.to_str().expect("utf8"),
        "--server-side",
        "--dry-run=server",
    ]);
}
