//! The deploy/ manifests, parsed into the Kubernetes API types (no cluster needed): every document
//! must be a known kind whose every field the API types recognise (a misspelt field would be
//! silently dropped by the API server), and the objects must fit together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, Namespace, Pod, PodSpec, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use spendguard_k8s::{AgentName, AGENT_LABEL};

const NAMESPACE: &str = "spendguard";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    v.sort();
    v
}

fn docs(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// Every key of `original` must survive a round trip through the typed object: a key the API
/// types do not know (a typo, a wrong level) is dropped, and shows up here.
fn assert_all_fields_known(original: &Value, typed: &Value, at: &str) {
    match (original, typed) {
        (Value::Object(o), Value::Object(t)) => {
            for (k, v) in o {
                let sub = format!("{at}.{k}");
                let tv = t
                    .get(k)
                    .unwrap_or_else(|| panic!("{sub}: unknown field (not in the API type)"));
                assert_all_fields_known(v, tv, &sub);
            }
        }
        (Value::Array(o), Value::Array(t)) => {
            assert_eq!(o.len(), t.len(), "{at}: array length changed");
            for (i, (ov, tv)) in o.iter().zip(t).enumerate() {
                assert_all_fields_known(ov, tv, &format!("{at}[{i}]"));
            }
        }
        (o, t) => {
            // Scalars: numbers and strings must keep their type (e.g. an annotation `true` that
            // was not quoted is refused by the API server).
            assert_eq!(
                std::mem::discriminant(o),
                std::mem::discriminant(t),
                "{at}: {o} became {t}"
            );
        }
    }
}

fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value, file: &str) -> T {
    let t: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{file}: not a valid {}: {e}", doc["kind"]));
    let back = serde_json::to_value(&t).expect("serialize");
    assert_all_fields_known(doc, &back, file);
    t
}

/// All objects of deploy/ by kind.
#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
    pods: Vec<Pod>,
}

fn load(paths: &[PathBuf]) -> Manifests {
    let mut m = Manifests::default();
    for path in paths {
        let file = path.file_name().and_then(|f| f.to_str()).expect("name");
        if file == "kustomization.yaml" {
            continue;
        }
        let file = path.display().to_string();
        for doc in docs(path) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            let api = doc["apiVersion"].as_str().unwrap_or_default().to_string();
            match (api.as_str(), kind.as_str()) {
                ("v1", "Namespace") => m.namespaces.push(typed(&doc, &file)),
                ("v1", "ServiceAccount") => m.service_accounts.push(typed(&doc, &file)),
                ("v1", "ConfigMap") => m.config_maps.push(typed(&doc, &file)),
                ("v1", "Pod") => m.pods.push(typed(&doc, &file)),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    m.cluster_roles.push(typed(&doc, &file))
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    m.bindings.push(typed(&doc, &file))
                }
                ("apps/v1", "DaemonSet") => m.daemon_sets.push(typed(&doc, &file)),
                other => panic!("{file}: unexpected kind {other:?}"),
            }
        }
    }
    m
}

fn install() -> Manifests {
    load(&yaml_files(&deploy_dir()))
}

fn the<T>(v: &[T], what: &str) -> T
where
    T: Clone,
{
    assert_eq!(v.len(), 1, "exactly one {what}");
    v[0].clone()
}

fn env<'a>(c: &'a Container, name: &str) -> &'a EnvVar {
    c.env
        .as_ref()
        .and_then(|e| e.iter().find(|v| v.name == name))
        .unwrap_or_else(|| panic!("container {} has no env {name}", c.name))
}

fn env_value<'a>(c: &'a Container, name: &str) -> &'a str {
    env(c, name)
        .value
        .as_deref()
        .unwrap_or_else(|| panic!("env {name} has no literal value"))
}

fn field_ref(c: &Container, name: &str) -> String {
    env(c, name)
        .value_from
        .as_ref()
        .and_then(|f| f.field_ref.as_ref())
        .map(|f| f.field_path.clone())
        .unwrap_or_else(|| panic!("env {name} is not from the downward API"))
}

fn agent_container(spec: &PodSpec) -> Container {
    spec.containers
        .iter()
        .find(|c| c.name == "spendguard")
        .cloned()
        .expect("container spendguard")
}

/// The mount path of `volume` in `c`.
fn mount_path(c: &Container, volume: &str) -> String {
    c.volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume)
        .map(|m| m.mount_path.clone())
        .unwrap_or_else(|| panic!("container {} does not mount {volume}", c.name))
}

fn all_containers(spec: &PodSpec) -> Vec<Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .cloned()
        .collect()
}

/// Every volumeMount names a declared volume, every declared volume is mounted somewhere.
fn check_volumes(spec: &PodSpec, what: &str) {
    let declared: BTreeSet<String> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.clone())
        .collect();
    let mut used = BTreeSet::new();
    for c in all_containers(spec) {
        for m in c.volume_mounts.iter().flatten() {
            assert!(
                declared.contains(&m.name),
                "{what}: container {} mounts undeclared volume {}",
                c.name,
                m.name
            );
            used.insert(m.name.clone());
        }
    }
    assert_eq!(
        declared, used,
        "{what}: declared volumes that nothing mounts"
    );
}

#[test]
fn every_manifest_parses_into_api_types_and_all_are_namespaced_in_spendguard() {
    let m = install();
    let ns = the(&m.namespaces, "Namespace");
    assert_eq!(ns.metadata.name.as_deref(), Some(NAMESPACE));
    assert_eq!(
        ns.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-security.kubernetes.io/enforce")),
        Some(&"privileged".to_string()),
        "hostNetwork/hostPath/capabilities need the privileged level"
    );
    let namespaced = m
        .service_accounts
        .iter()
        .map(|o| &o.metadata)
        .chain(m.config_maps.iter().map(|o| &o.metadata))
        .chain(m.daemon_sets.iter().map(|o| &o.metadata));
    for meta in namespaced {
        assert_eq!(
            meta.namespace.as_deref(),
            Some(NAMESPACE),
            "{:?}",
            meta.name
        );
    }
    assert!(
        m.pods.is_empty(),
        "the example pod is not part of the install"
    );
}

#[test]
fn kustomization_lists_exactly_the_manifest_files() {
    let dir = deploy_dir();
    let k = the(&docs(&dir.join("kustomization.yaml")), "kustomization");
    assert_eq!(k["kind"], "Kustomization");
    assert_eq!(k["namespace"], NAMESPACE);
    let listed: BTreeSet<String> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("path").to_string())
        .collect();
    let files: BTreeSet<String> = yaml_files(&dir)
        .iter()
        .filter_map(|p| p.file_name().and_then(|f| f.to_str()).map(str::to_string))
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files);
    // The image the DaemonSet names is the one kustomize rewrites.
    let images = k["images"].as_array().expect("images");
    assert!(images.iter().any(|i| i["name"] == "spendguard"));
}

#[test]
fn cluster_role_grants_exactly_pod_reads_and_event_creation() {
    let m = install();
    let role = the(&m.cluster_roles, "ClusterRole");
    let mut grants: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role.rules.iter().flatten() {
        assert!(rule.resource_names.is_none(), "no resourceNames");
        assert!(rule.non_resource_urls.is_none(), "no nonResourceURLs");
        for group in rule.api_groups.iter().flatten() {
            for res in rule.resources.iter().flatten() {
                grants
                    .entry((group.clone(), res.clone()))
                    .or_default()
                    .extend(rule.verbs.iter().cloned());
            }
        }
    }
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let expected = BTreeMap::from([
        (("".into(), "pods".into()), set(&["get", "list", "watch"])),
        (("".into(), "events".into()), set(&["create"])),
    ]);
    assert_eq!(grants, expected);
    assert!(role.aggregation_rule.is_none());

    let binding = the(&m.bindings, "ClusterRoleBinding");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let sa = the(&m.service_accounts, "ServiceAccount");
    let subjects = binding.subjects.expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, sa.metadata.namespace);
}

#[test]
fn daemonset_fits_together() {
    let m = install();
    let ds = the(&m.daemon_sets, "DaemonSet");
    let spec = ds.spec.expect("spec");
    let tmpl = spec.template;
    let tmeta = tmpl.metadata.expect("template metadata");
    let pod = tmpl.spec.expect("pod spec");

    // Selector ⊆ template labels.
    let sel = spec.selector.match_labels.expect("matchLabels");
    let labels = tmeta.labels.clone().expect("template labels");
    assert!(!sel.is_empty());
    for (k, v) in &sel {
        assert_eq!(
            labels.get(k),
            Some(v),
            "selector {k}={v} not on the template"
        );
    }
    assert!(spec.selector.match_expressions.is_none());

    // Service account.
    let sa = the(&m.service_accounts, "ServiceAccount");
    assert_eq!(pod.service_account_name, sa.metadata.name);
    assert_eq!(ds.metadata.namespace, sa.metadata.namespace);

    check_volumes(&pod, "daemonset");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert!(
        pod.termination_grace_period_seconds.expect("grace") > 10,
        "> drain_seconds"
    );

    let c = agent_container(&pod);
    assert_eq!(c.image.as_deref(), Some("spendguard:latest"));
    assert_eq!(c.command, Some(vec!["spendguard-agent".to_string()]));

    // Downward API.
    assert_eq!(field_ref(&c, "NODE_NAME"), "spec.nodeName");
    assert_eq!(field_ref(&c, "SPENDGUARD_REDIRECT_IP"), "status.hostIP");
    // $(VAR) references only see variables defined before them.
    let names: Vec<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
    for (i, e) in c.env.iter().flatten().enumerate() {
        for earlier in e.value.iter().flat_map(|v| v.split("$(").skip(1)) {
            let var = earlier.split(')').next().expect("var");
            let at = names.iter().position(|n| *n == var);
            assert!(
                at.is_some_and(|at| at < i),
                "{} uses $({var}) before it is defined",
                e.name
            );
        }
    }

    // Host mounts at the paths the agent uses, with the expected hostPath types.
    let host: BTreeMap<String, (String, Option<String>)> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| {
            v.host_path
                .as_ref()
                .map(|h| (v.name.clone(), (h.path.clone(), h.type_.clone())))
        })
        .collect();
    let host_path = |p: &str| {
        host.iter()
            .find(|(_, (hp, _))| hp == p)
            .map(|(name, (_, ty))| (name.clone(), ty.clone()))
            .unwrap_or_else(|| panic!("no hostPath volume for {p}"))
    };
    for (path, ty) in [
        ("/sys/fs/cgroup", "Directory"),
        ("/sys/fs/bpf", "DirectoryOrCreate"),
        ("/var/lib/spendguard", "DirectoryOrCreate"),
        ("/run/spendguard", "DirectoryOrCreate"),
    ] {
        let (name, t) = host_path(path);
        assert_eq!(t.as_deref(), Some(ty), "{path}");
        assert_eq!(mount_path(&c, &name), path, "mounted where the host has it");
    }
    let state = mount_path(&c, &host_path("/var/lib/spendguard").0);
    assert_eq!(env_value(&c, "SPENDGUARD_STATE_DIR"), state);
    let run = mount_path(&c, &host_path("/run/spendguard").0);
    assert!(Path::new(env_value(&c, "SPENDGUARD_SOCKET")).starts_with(&run));

    // bpffs: the init container propagates a mount to the host; the agent sees host mounts.
    let init = pod.init_containers.clone().expect("init containers");
    let bpffs = host_path("/sys/fs/bpf").0;
    let mounts_bpffs = |c: &Container| {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == bpffs)
            .and_then(|m| m.mount_propagation.clone())
    };
    assert!(init
        .iter()
        .any(|i| mounts_bpffs(i).as_deref() == Some("Bidirectional")
            && i.security_context.as_ref().and_then(|s| s.privileged) == Some(true)));
    assert_eq!(mounts_bpffs(&c).as_deref(), Some("HostToContainer"));

    // The CA Secret: mounted read-only, the keys `spendguard ca generate` writes (ca.crt, ca.key),
    // mode 0400.
    let ca_vol = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("spendguard-ca"))
        .expect("Secret spendguard-ca volume");
    assert_eq!(
        ca_vol.secret.as_ref().and_then(|s| s.default_mode),
        Some(0o400)
    );
    let ca_dir = PathBuf::from(mount_path(&c, &ca_vol.name));
    assert_eq!(
        PathBuf::from(env_value(&c, "SPENDGUARD_CA_CERT")),
        ca_dir.join("ca.crt")
    );
    assert_eq!(
        PathBuf::from(env_value(&c, "SPENDGUARD_CA_KEY")),
        ca_dir.join("ca.key")
    );
    assert!(c
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.name == ca_vol.name && m.read_only == Some(true)));

    // Narrow capabilities, no privileged agent.
    let sc = c.security_context.clone().expect("securityContext");
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.expect("capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    let added: BTreeSet<String> = caps.add.into_iter().flatten().collect();
    let expected: BTreeSet<String> = ["BPF", "NET_ADMIN", "PERFMON"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(added, expected);

    // Ports, probes, metrics.
    let port = |name: &str| {
        c.ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
            .unwrap_or_else(|| panic!("port {name}"))
    };
    assert_eq!(port("proxy"), 15443);
    assert_eq!(port("metrics"), 9464);
    assert!(env_value(&c, "SPENDGUARD_LISTEN").ends_with(":15443"));
    for (what, probe) in [
        ("readiness", c.readiness_probe.clone()),
        ("liveness", c.liveness_probe.clone()),
    ] {
        // Over the control socket: the proxy refuses (and logs) any connection to 15443 that
        // its redirect did not produce, so a tcpSocket probe there would only add noise.
        let probe = probe.unwrap_or_else(|| panic!("{what} probe"));
        assert!(probe.tcp_socket.is_none(), "{what}: no tcpSocket probe");
        assert!(probe.http_get.is_none(), "{what}: no httpGet probe");
        let exec = probe.exec.unwrap_or_else(|| panic!("{what}: exec probe"));
        assert_eq!(
            exec.command,
            Some(vec!["spendguard".to_string(), "ping".to_string()]),
            "{what}"
        );
    }
    let ann = tmeta.annotations.expect("annotations");
    assert_eq!(
        ann.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        ann.get("prometheus.io/port").map(String::as_str),
        Some("9464")
    );
    assert!(env_value(&c, "SPENDGUARD_METRICS").ends_with(":9464"));
    assert_eq!(
        ann.get("kubectl.kubernetes.io/default-container"),
        Some(&c.name)
    );

    // Rolling update, one node at a time, no surge (host ports): maxSurge left to its default 0,
    // since a 1.20 API server refuses the field (tests/tests/kubernetes.rs applies it there).
    let us = spec.update_strategy.expect("updateStrategy");
    assert_eq!(us.type_.as_deref(), Some("RollingUpdate"));
    let ru = us.rolling_update.expect("rollingUpdate");
    assert_eq!(ru.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(ru.max_surge, None);

    // AppArmor unconfined (bpffs pins), by the annotation every version honours, not the 1.30 field.
    assert_eq!(
        ann.get("container.apparmor.security.beta.kubernetes.io/spendguard")
            .map(String::as_str),
        Some("unconfined")
    );
    let sc = c.security_context.as_ref().expect("securityContext");
    assert!(sc.app_armor_profile.is_none());
}

#[test]
fn example_pod_is_labelled_and_trusts_the_ca_configmap() {
    let dir = deploy_dir();
    let ex = load(&yaml_files(&dir.join("examples")));
    let pod = the(&ex.pods, "example Pod");
    let label = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(AGENT_LABEL))
        .expect("the agent label");
    label
        .parse::<AgentName>()
        .unwrap_or_else(|e| panic!("example label is not a valid agent name: {e}"));

    let spec = pod.spec.expect("spec");
    check_volumes(&spec, "example pod");
    // The ConfigMap volume is the one configmap-ca.yaml defines, with its key.
    let cm = install()
        .config_maps
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some("spendguard-ca"))
        .expect("the CA ConfigMap spendguard-ca");
    let cm_name = cm.metadata.name.clone().expect("name");
    let key = cm
        .data
        .as_ref()
        .and_then(|d| d.keys().next().cloned())
        .expect("ConfigMap data key");
    let vol = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.config_map.as_ref().map(|c| c.name.as_str()) == Some(cm_name.as_str()))
        .expect("a volume from the CA ConfigMap");
    let items = vol
        .config_map
        .as_ref()
        .and_then(|c| c.items.clone())
        .expect("items");
    assert!(items.iter().any(|i| i.key == key), "mounts key {key}");

    let app = spec.containers.first().expect("app container");
    let ca_file = Path::new(&mount_path(app, &vol.name)).join(&items[0].path);
    // Node adds NODE_EXTRA_CA_CERTS to its roots: the CA file itself.
    assert_eq!(Path::new(env_value(app, "NODE_EXTRA_CA_CERTS")), ca_file);
    // The others replace the roots: a bundle the init container builds in a shared volume.
    let bundle = env_value(app, "SSL_CERT_FILE");
    assert_eq!(env_value(app, "REQUESTS_CA_BUNDLE"), bundle);
    let bundle_vol = app
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| Path::new(bundle).starts_with(&m.mount_path))
        .expect("SSL_CERT_FILE lies in a mounted volume");
    let init = spec.init_containers.clone().expect("init container");
    let builder = init
        .iter()
        .find(|i| {
            i.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == bundle_vol.name)
        })
        .expect("an init container writes the bundle");
    let script = builder.command.clone().unwrap_or_default().join(" ");
    assert!(script.contains(bundle), "init writes {bundle}: {script}");
    assert!(
        script.contains("/etc/ssl/certs/ca-certificates.crt"),
        "the bundle keeps the system roots: {script}"
    );
}

#[test]
fn the_install_has_exactly_the_ca_and_the_grafana_dashboard_configmaps() {
    let m = install();
    let names: BTreeSet<String> = m
        .config_maps
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    let expected: BTreeSet<String> = ["spendguard-ca", "spendguard-dashboard"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(names, expected);
    // The Grafana sidecar picks dashboards by this label; the JSON itself is checked by
    // spendguard-agent/tests/dashboard.rs.
    let dash = m
        .config_maps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("spendguard-dashboard"))
        .expect("dashboard ConfigMap");
    assert_eq!(
        dash.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("grafana_dashboard"))
            .map(String::as_str),
        Some("1")
    );
    let json = dash
        .data
        .as_ref()
        .and_then(|d| d.get("spendguard.json"))
        .expect("data spendguard.json");
    let v: Value = serde_json::from_str(json).expect("the dashboard is JSON");
    assert_eq!(v["uid"], "spendguard");
}

#[test]
fn dockerfile_builds_both_binaries_the_measured_way() {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).expect("Dockerfile");
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "multi-stage: {froms:?}");
    assert!(froms[0].contains(" AS builder"));
    assert_eq!(froms[1], "FROM debian:bookworm-slim");
    for needle in [
        "--component rust-src",
        "--no-default-features --features llvm-22,no-llvm-linking",
        "cargo build --release",
        "/out/spendguard-agent",
        "/out/spendguard ",
        "ca-certificates",
    ] {
        assert!(text.contains(needle), "Dockerfile lacks {needle:?}");
    }
    let copy = text
        .lines()
        .find(|l| l.starts_with("COPY --from=builder"))
        .expect("COPY from builder");
    assert!(copy.contains("spendguard-agent") && copy.contains("/out/spendguard "));
}
