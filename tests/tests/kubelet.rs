//! A real node: kubelet 1.20.2 (cgroupfs driver) with containerd 1.6 and runc, registered with a
//! real API server, the agent watching as the DaemonSet's ServiceAccount. A labelled `hostNetwork`
//! pod's container calls a provider host (the fake provider, on the test namespace's loopback): it
//! is found through the cgroup layout kubelet and runc really made, redirected, charged, and refused
//! with 402 past its limit; an unlabelled pod beside it reaches the provider directly.
//!
//! This machine is a hybrid cgroup host (v1 controllers, v2 at /sys/fs/cgroup/unified): the test
//! also records where the container's processes are in the v2 tree, which is what decides whether
//! pods on such a node can be metered at all.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use spendguard_tests::kube::{ControlPlane, ControlPlaneOptions};
use spendguard_tests::kubelet::{wait_pod, KubeletNode, BUSYBOX_IMAGE};
use spendguard_tests::metered::{openai_usage, price, Metered};
use spendguard_tests::{cgroup2_mount, privileged, NODE_VETH_IP, UPSTREAM_A};

const NODE: &str = "node-1";
const LABEL: &str = "spendguard.io/agent";
const AGENT: &str = "acme.k8s.summarizer";

/// A pod on `NODE` whose one container runs `script` (busybox sh; the host's /usr, for curl, and
/// `files` mounted read-only).
fn pod(ns: &str, name: &str, labels: Value, files: &Path, script: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "nodeName": NODE,
            "hostNetwork": true,
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "client",
                "image": BUSYBOX_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script],
                "volumeMounts": [
                    {"name": "usr", "mountPath": "/usr", "readOnly": true},
                    {"name": "files", "mountPath": "/files", "readOnly": true},
                ],
            }],
            "volumes": [
                {"name": "usr", "hostPath": {"path": "/usr", "type": "Directory"}},
                {"name": "files", "hostPath": {"path": files.to_str().expect("utf8"), "type": "Directory"}},
            ],
        },
    })
}

/// `n` chat completions to api.openai.com (pinned to the fake provider's address), trusting `ca`;
/// prints `code=NNN` per request, then the container's own cgroup membership.
fn curl_script(ca: &str, n: u32) -> String {
    let body =
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":50}"#;
    format!(
        "i=0; while [ $i -lt {n} ]; do i=$((i+1)); \
         /usr/bin/curl -sS -o /dev/null -w 'code=%{{http_code}}\\n' --max-time 20 --cacert /files/{ca} \
         --resolve api.openai.com:443:{UPSTREAM_A} -H 'content-type: application/json' \
         -H 'authorization: Bearer sk-test' -H 'x-fake-usage: prompt=1000,completion=200' \
         -d '{body}' https://api.openai.com/v1/chat/completions; done; \
         echo cgroups; cat /proc/self/cgroup"
    )
}

fn codes(log: &[String]) -> Vec<String> {
    log.iter()
        .filter_map(|l| l.strip_prefix("code=").map(str::to_string))
        .collect()
}

#[test]
fn a_labelled_pod_run_by_kubelet_is_redirected_charged_and_refused_past_its_limit() {
    if !privileged() {
        return;
    }
    // Field order is drop order: the agent (e) first, then the node, then the control plane.
    let mut cp_slot: Option<ControlPlane> = None;
    let mut node_slot: Option<KubeletNode> = None;
    let e = Metered::with("acme.k8s.node-process", |w| {
        let cp = ControlPlane::start(ControlPlaneOptions {
            netns: Some(w.node.path()),
            ..Default::default()
        });
        // Exactly the agent's identity and RBAC from deploy/, applied as an operator would.
        let kubeconfig = cp.agent_kubeconfig();
        let node = KubeletNode::start(
            &cp,
            &w.node.path(),
            NODE,
            &format!("{}-kube", w.id),
            NODE_VETH_IP,
        );
        w.set_agent_env("KUBECONFIG", kubeconfig.to_str().expect("utf8"));
        w.set_agent_env("NODE_NAME", NODE);
        // The programs go where kubelet's pods are: its cgroup root (the test's, not the machine's).
        w.set_agent_env(
            "SPENDGUARD_ATTACH_CGROUP",
            node.cgroup_root_v2().to_str().expect("utf8"),
        );
        cp_slot = Some(cp);
        node_slot = Some(node);
    });
    let (cp, node) = (
        cp_slot.as_ref().expect("control plane"),
        node_slot.as_ref().expect("node"),
    );
    let ns = e.w.id.clone();
    node.runs_namespace(&ns);
    cp.kubectl_ok(&["create", "namespace", &ns]);
    // ~3.5 requests' worth: the first ones pass, then the limit refuses.
    e.cli_ok(&["limit", "set", AGENT, "--daily", "0.001"]);
    let files = tempfile::tempdir().expect("pod files");
    std::fs::copy(&e.ca, files.path().join("spendguard-ca.crt")).expect("copy CA");
    std::fs::copy(&e.upstream_ca, files.path().join("provider-ca.crt")).expect("copy CA");
    let before = e.fake.request_count();

    let labelled = cp.create(&pod(
        &ns,
        "metered",
        json!({LABEL: AGENT}),
        files.path(),
        &curl_script("spendguard-ca.crt", 6),
    ));
    let plain = cp.create(&pod(
        &ns,
        "plain",
        json!({"app": "plain"}),
        files.path(),
        &curl_script("provider-ca.crt", 1),
    ));
    let done = |p: &Value| matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
    let limit = Duration::from_secs(90);
    let labelled_done = wait_pod(cp, &ns, "metered", limit, done);
    let plain_done = wait_pod(cp, &ns, "plain", limit, done);
    let uid = |p: &Value| p["metadata"]["uid"].as_str().expect("uid").to_string();
    let (l_uid, p_uid) = (uid(&labelled), uid(&plain));
    let l_log = KubeletNode::container_log(&ns, "metered", &l_uid, "client");
    let p_log = KubeletNode::container_log(&ns, "plain", &p_uid, "client");
    let agent_log = e.w.agent_log();

    // Where runc put the container: the v2 line of /proc/self/cgroup ("0::PATH").
    let v2_line = l_log
        .iter()
        .find(|l| l.starts_with("0::"))
        .cloned()
        .unwrap_or_default();
    let pod_dir = node
        .cgroup_root_v2()
        .join(format!("kubepods/besteffort/pod{l_uid}"));
    let mount = cgroup2_mount().expect("cgroup2");
    let rel = pod_dir.strip_prefix(&mount).expect("under the mount");
    assert!(
        v2_line.starts_with(&format!("0::/{}/", rel.display())),
        "the labelled pod's container is not in its pod's v2 cgroup ({}): {l_log:?}\n{labelled_done}",
        pod_dir.display()
    );

    // Redirected, charged, refused past the limit: 200s, then 402s, never anything else.
    let l_codes = codes(&l_log);
    let ok = l_codes.iter().take_while(|c| *c == "200").count();
    assert!(
        ok >= 1 && ok < l_codes.len() && l_codes[ok..].iter().all(|c| c == "402"),
        "labelled pod: want 200s then 402s, got {l_codes:?} (log {l_log:?})\n{agent_log}"
    );
    let per_request = price("gpt-4o-mini").cost(&openai_usage(1000, 200, 0)).0;
    assert_eq!(
        e.settled_spend(AGENT),
        ok as u64 * per_request,
        "charged for {ok} requests of {per_request} µUSD each"
    );

    // The unlabelled pod trusted only the provider's own CA, and it answered: not intercepted.
    assert_eq!(
        codes(&p_log),
        vec!["200".to_string()],
        "unlabelled pod: {p_log:?}\n{plain_done}"
    );
    // The provider saw exactly the labelled pod's allowed requests and the unlabelled pod's one.
    assert_eq!(e.fake.request_count() - before, ok + 1);
    // The watcher tagged the labelled pod where runc made its v2 directory (the v1 layout told it,
    // before that directory existed), and never looked at the unlabelled one.
    let tagging = agent_log
        .lines()
        .find(|l| l.contains("tagging pod") && l.contains(&format!("pod={ns}/metered")))
        .unwrap_or_else(|| panic!("the watcher never tagged the pod:\n{agent_log}"));
    assert!(
        tagging.contains(pod_dir.to_str().expect("utf8")),
        "tagged elsewhere than {}: {tagging}",
        pod_dir.display()
    );
    assert!(
        !agent_log.contains(&format!("{ns}/plain")),
        "the unlabelled pod reached the watcher:\n{agent_log}"
    );
    // Nor did it ever think a Running pod had no v2 directory (what a hybrid node whose runtime
    // left containers out of the v2 tree would log).
    assert!(
        !agent_log.contains("none of its cgroup v2 directories exists"),
        "{agent_log}"
    );
    eprintln!("labelled pod's requests: {l_codes:?}; its container's v2 cgroup: {v2_line}");
}
