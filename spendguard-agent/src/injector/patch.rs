//! The JSONPatch that gives one labelled pod SpendGuard's trust: pure functions over the API types.
//!
//! What a labelled pod gets (every container and init container):
//! - the volume [`TRUST_VOLUME`] (the injector's per-namespace ConfigMap, see `cluster.rs`), mounted
//!   read-only at [`TRUST_MOUNT_PATH`];
//! - `SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE` → the bundle (system roots plus the
//!   SpendGuard CA: these variables REPLACE a runtime's roots, so the CA alone would break every
//!   HTTPS call that is not intercepted);
//! - `NODE_EXTRA_CA_CERTS` → the CA alone (Node.js ADDS it to its built-in roots);
//! - `JAVA_TOOL_OPTIONS` with a PKCS#12 truststore holding the same certificates as the bundle.
//!
//! Precedence — what the pod set itself always wins:
//! 1. A pod volume already named [`TRUST_VOLUME`] is kept: that is how a pod brings its own bundle
//!    (same file names), and the mounts and variables below then point into it.
//! 2. A container that mounts [`TRUST_VOLUME`] somewhere keeps that mount, and the variables point
//!    at that path. A container with some OTHER volume at [`TRUST_MOUNT_PATH`] is left alone
//!    entirely (we cannot know what its files are) and a warning says so.
//! 3. A variable the container sets in `env` (by `value` or `valueFrom`) is never replaced.
//!    `JAVA_TOOL_OPTIONS` set by `value` without a `-Djavax.net.ssl.trustStore=` gets ours appended;
//!    with one, or set by `valueFrom`, it is left as it is.
//! 4. Variables from `envFrom` cannot be seen at admission (they live in ConfigMaps/Secrets), and
//!    Kubernetes lets `env` override `envFrom`: a pod that sets these variables through `envFrom`
//!    must opt out with the annotation [`OPT_OUT_ANNOTATION`]` = "false"` (or set them in `env`).
//!
//! Idempotent by construction: a second pass finds every volume, mount and variable present (and
//! the trustStore option in `JAVA_TOOL_OPTIONS`) and returns an empty patch, so reinvocation
//! (`reinvocationPolicy: IfNeeded`) and re-submitted pods are safe.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation, TestOperation};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, EnvVar, KeyToPath, Pod, Volume, VolumeMount,
};
use serde_json::Value;

/// The pod label that marks a SpendGuard agent (the watcher's, one definition).
pub use spendguard_k8s::AGENT_LABEL;

/// Name of the pod volume the injector adds (and that a pod may define itself to override it).
pub const TRUST_VOLUME: &str = "spendguard-trust";
/// Where the trust files appear in every container. Not under `/etc/spendguard` (the manual example
/// mounts the CA ConfigMap there: a mount nested in a read-only ConfigMap mount fails) nor under
/// `/etc/ssl` (images keep their own roots there).
pub const TRUST_MOUNT_PATH: &str = "/etc/spendguard-trust";
/// The system roots plus the SpendGuard CA (PEM).
pub const BUNDLE_FILE: &str = "ca-bundle.crt";
/// The SpendGuard CA alone (PEM).
pub const CA_FILE: &str = "ca.crt";
/// The same certificates as [`BUNDLE_FILE`] as a PKCS#12 truststore for Java.
pub const TRUSTSTORE_FILE: &str = "truststore.p12";
/// The truststore's password. Not a secret: a truststore holds only public certificates, the
/// password only keys its integrity MAC (PKCS#12 requires one), and `changeit` is the JDK's own
/// convention for `cacerts`.
pub const TRUSTSTORE_PASSWORD: &str = "changeit";
/// Set on a pod the injector changed (value `"true"`): `kubectl get pods -l spendguard.io/agent -o
/// jsonpath=...` finds labelled pods that started without it (injector down, failurePolicy Ignore).
pub const INJECTED_ANNOTATION: &str = "spendguard.io/trust-injected";
/// A pod annotated `spendguard.io/inject-trust: "false"` is not changed at all.
pub const OPT_OUT_ANNOTATION: &str = "spendguard.io/inject-trust";

/// Variables that must point at the bundle (they replace the runtime's roots).
pub const BUNDLE_VARS: [&str; 3] = ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"];
/// Variable that must point at the CA alone (added to the runtime's roots).
pub const CA_VAR: &str = "NODE_EXTRA_CA_CERTS";
pub const JAVA_VAR: &str = "JAVA_TOOL_OPTIONS";
/// The option whose presence means the container chose its own truststore.
const JAVA_TRUSTSTORE_OPTION: &str = "-Djavax.net.ssl.trustStore=";

/// What the injector does to one pod.
#[derive(Debug, Default)]
pub struct Mutation {
    pub patch: Patch,
    /// Shown by kubectl to whoever created the pod (AdmissionResponse warnings).
    pub warnings: Vec<String>,
}

impl Mutation {
    pub fn is_empty(&self) -> bool {
        self.patch.0.is_empty()
    }
}

/// Whether the injector should look at this pod at all: labelled, and not opted out. The
/// MutatingWebhookConfiguration's objectSelector already sends only labelled pods; this is the
/// second check, so a misconfigured selector cannot touch other pods.
pub fn wants_trust(pod: &Pod) -> bool {
    let labelled = pod
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(AGENT_LABEL));
    let opted_out = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(OPT_OUT_ANNOTATION))
        .is_some_and(|v| v.eq_ignore_ascii_case("false"));
    labelled && !opted_out
}

/// The patch for `pod` (empty for a pod that [`wants_trust`] refuses or that has everything).
/// `configmap` is the name of the trust ConfigMap in the pod's namespace.
pub fn mutate(pod: &Pod, configmap: &str) -> Mutation {
    let mut m = Mutation::default();
    if !wants_trust(pod) {
        return m;
    }
    let Some(spec) = pod.spec.as_ref() else {
        return m;
    };
    let mut container_ops_all = Vec::new();
    for (list, containers) in [
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or_default(),
        ),
        ("containers", spec.containers.as_slice()),
    ] {
        for (i, c) in containers.iter().enumerate() {
            let at = ["spec", list, &i.to_string()].map(String::from);
            container_ops(c, &at, &mut container_ops_all, &mut m.warnings);
        }
    }
    // No container needs anything (all set, or all left alone): no volume, no annotation either.
    if container_ops_all.is_empty() {
        return m;
    }
    let mut ops = Vec::new();
    match &spec.volumes {
        Some(vols) if vols.iter().any(|v| v.name == TRUST_VOLUME) => {}
        Some(_) => ops.push(add(
            &["spec", "volumes", "-"],
            json(&trust_volume(configmap)),
        )),
        None => ops.push(add(
            &["spec", "volumes"],
            json(&vec![trust_volume(configmap)]),
        )),
    }
    ops.extend(container_ops_all);
    match &pod.metadata.annotations {
        Some(a) if a.contains_key(INJECTED_ANNOTATION) => {}
        Some(_) => ops.push(add(
            &["metadata", "annotations", INJECTED_ANNOTATION],
            Value::from("true"),
        )),
        None => ops.push(add(
            &["metadata", "annotations"],
            serde_json::json!({ INJECTED_ANNOTATION: "true" }),
        )),
    }
    m.patch = Patch(ops);
    m
}

/// The mount, variables and Java options one container lacks.
fn container_ops(
    c: &Container,
    at: &[String; 3],
    ops: &mut Vec<PatchOperation>,
    warnings: &mut Vec<String>,
) {
    let mounts = c.volume_mounts.as_deref().unwrap_or_default();
    let dir = match mounts.iter().find(|vm| vm.name == TRUST_VOLUME) {
        Some(own) => own.mount_path.trim_end_matches('/').to_string(),
        None => {
            if let Some(other) = mounts
                .iter()
                .find(|vm| vm.mount_path.trim_end_matches('/') == TRUST_MOUNT_PATH)
            {
                warnings.push(format!(
                    "container {:?} mounts volume {:?} at {TRUST_MOUNT_PATH}: SpendGuard left its \
                     trust settings alone (mount the volume {TRUST_VOLUME:?} there to get them)",
                    c.name, other.name
                ));
                return;
            }
            let mount = VolumeMount {
                name: TRUST_VOLUME.to_string(),
                mount_path: TRUST_MOUNT_PATH.to_string(),
                read_only: Some(true),
                ..VolumeMount::default()
            };
            match &c.volume_mounts {
                Some(_) => ops.push(add(&under(at, &["volumeMounts", "-"]), json(&mount))),
                None => ops.push(add(&under(at, &["volumeMounts"]), json(&vec![mount]))),
            }
            TRUST_MOUNT_PATH.to_string()
        }
    };
    let env = c.env.as_deref().unwrap_or_default();
    let mut wanted: Vec<EnvVar> = Vec::new();
    let bundle = format!("{dir}/{BUNDLE_FILE}");
    for name in BUNDLE_VARS {
        wanted.push(plain(name, &bundle));
    }
    wanted.push(plain(CA_VAR, &format!("{dir}/{CA_FILE}")));
    let java = java_options(&dir);
    let mut env_ops = Vec::new();
    let mut new_vars = Vec::new();
    for var in wanted {
        if !env.iter().any(|e| e.name == var.name) {
            new_vars.push(var);
        }
    }
    match env.iter().position(|e| e.name == JAVA_VAR) {
        None => new_vars.push(plain(JAVA_VAR, &java)),
        Some(i) => match (&env[i].value, &env[i].value_from) {
            (_, Some(_)) => warnings.push(format!(
                "container {:?} sets {JAVA_VAR} through valueFrom: SpendGuard cannot append its \
                 truststore; add {java:?} to it yourself if this container runs Java",
                c.name
            )),
            (Some(v), None) if v.contains(JAVA_TRUSTSTORE_OPTION) => {}
            (v, None) => {
                let old = v.clone().unwrap_or_default();
                let path = under(at, &["env", &i.to_string(), "value"]);
                let new = if old.trim().is_empty() {
                    java
                } else {
                    format!("{} {java}", old.trim_end())
                };
                if v.is_some() {
                    // The value we append to must still be the one we read.
                    env_ops.push(PatchOperation::Test(TestOperation {
                        path: pointer(&path),
                        value: Value::from(old),
                    }));
                    env_ops.push(PatchOperation::Replace(ReplaceOperation {
                        path: pointer(&path),
                        value: Value::from(new),
                    }));
                } else {
                    env_ops.push(add(&path, Value::from(new)));
                }
            }
        },
    }
    if !new_vars.is_empty() {
        match &c.env {
            Some(_) => {
                for var in &new_vars {
                    ops.push(add(&under(at, &["env", "-"]), json(var)));
                }
            }
            None => ops.push(add(&under(at, &["env"]), json(&new_vars))),
        }
    }
    ops.extend(env_ops);
}

/// The `JAVA_TOOL_OPTIONS` that point the JVM at the truststore under `dir`.
pub fn java_options(dir: &str) -> String {
    format!(
        "{JAVA_TRUSTSTORE_OPTION}{dir}/{TRUSTSTORE_FILE} \
         -Djavax.net.ssl.trustStorePassword={TRUSTSTORE_PASSWORD} \
         -Djavax.net.ssl.trustStoreType=PKCS12"
    )
}

fn trust_volume(configmap: &str) -> Volume {
    Volume {
        name: TRUST_VOLUME.to_string(),
        config_map: Some(ConfigMapVolumeSource {
            name: configmap.to_string(),
            items: Some(
                [BUNDLE_FILE, CA_FILE, TRUSTSTORE_FILE]
                    .map(|f| KeyToPath {
                        key: f.to_string(),
                        path: f.to_string(),
                        mode: None,
                    })
                    .into(),
            ),
            // 0444: readable by any user the pod runs as; nothing in it is secret.
            default_mode: Some(0o444),
            // Not optional: without the ConfigMap the pod waits (FailedMount event) instead of
            // starting with variables that point at missing files.
            optional: Some(false),
        }),
        ..Volume::default()
    }
}

fn under(at: &[String], rest: &[&str]) -> Vec<String> {
    at.iter()
        .cloned()
        .chain(rest.iter().map(|s| s.to_string()))
        .collect()
}

fn plain(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        value_from: None,
    }
}

fn pointer<S: AsRef<str>>(tokens: &[S]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().map(|t| t.as_ref()))
}

fn add<S: AsRef<str>>(tokens: &[S], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(tokens),
        value,
    })
}

fn json<T: serde::Serialize>(v: &T) -> Value {
    // The API types always serialize (plain structs of strings, numbers and options).
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// The env of a container after the patch, by name (for tests and diagnostics).
pub fn env_map(c: &Container) -> BTreeMap<String, String> {
    c.env
        .iter()
        .flatten()
        .filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).expect("pod JSON")
    }

    /// The pod after `mutate`'s patch is applied (as the API server does).
    fn mutated(p: &Value) -> (Value, Mutation) {
        let m = mutate(&pod(p.clone()), "spendguard-trust");
        let mut doc = p.clone();
        json_patch::patch(&mut doc, &m.patch).expect("the patch applies");
        (doc, m)
    }

    fn container(doc: &Value, list: &str, i: usize) -> Container {
        serde_json::from_value(doc["spec"][list][i].clone()).expect("container")
    }

    fn labelled(spec: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "labels": {"spendguard.io/agent": "acme.a"}},
            "spec": spec,
        })
    }

    #[test]
    fn a_bare_labelled_pod_gets_volume_mounts_and_every_variable_in_every_container() {
        let p = labelled(json!({
            "initContainers": [{"name": "init", "image": "busybox"}],
            "containers": [{"name": "app", "image": "python"}, {"name": "side", "image": "node"}],
        }));
        let (doc, m) = mutated(&p);
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
        let vols = doc["spec"]["volumes"].as_array().expect("volumes");
        assert_eq!(vols.len(), 1);
        assert_eq!(vols[0]["name"], TRUST_VOLUME);
        assert_eq!(vols[0]["configMap"]["name"], "spendguard-trust");
        assert_eq!(vols[0]["configMap"]["optional"], false);
        for (list, i) in [("initContainers", 0), ("containers", 0), ("containers", 1)] {
            let c = container(&doc, list, i);
            let mounts = c.volume_mounts.clone().expect("mounts");
            assert_eq!(mounts.len(), 1, "{list}[{i}]");
            assert_eq!(mounts[0].name, TRUST_VOLUME);
            assert_eq!(mounts[0].mount_path, TRUST_MOUNT_PATH);
            assert_eq!(mounts[0].read_only, Some(true));
            let env = env_map(&c);
            for v in BUNDLE_VARS {
                assert_eq!(
                    env[v], "/etc/spendguard-trust/ca-bundle.crt",
                    "{list}[{i}] {v}"
                );
            }
            assert_eq!(env[CA_VAR], "/etc/spendguard-trust/ca.crt");
            assert_eq!(
                env[JAVA_VAR],
                "-Djavax.net.ssl.trustStore=/etc/spendguard-trust/truststore.p12 \
                 -Djavax.net.ssl.trustStorePassword=changeit -Djavax.net.ssl.trustStoreType=PKCS12"
            );
        }
        assert_eq!(doc["metadata"]["annotations"][INJECTED_ANNOTATION], "true");

        // Idempotent: the mutated pod gets nothing more.
        let again = mutate(&pod(doc.clone()), "spendguard-trust");
        assert!(again.is_empty(), "second pass: {:?}", again.patch);
        assert!(again.warnings.is_empty());
    }

    #[test]
    fn what_the_pod_set_wins_and_the_rest_is_appended() {
        let p = labelled(json!({
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{
                "name": "app", "image": "python",
                "env": [
                    {"name": "SSL_CERT_FILE", "value": "/mine/bundle.pem"},
                    {"name": "NODE_EXTRA_CA_CERTS", "valueFrom": {"configMapKeyRef": {"name": "x", "key": "y"}}},
                    {"name": "OTHER", "value": "1"},
                ],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }],
        }));
        let (doc, m) = mutated(&p);
        let c = container(&doc, "containers", 0);
        let env = c.env.clone().expect("env");
        // The pod's own entries are untouched, in place; ours come after.
        assert_eq!(env[0].value.as_deref(), Some("/mine/bundle.pem"));
        assert!(env[1].value_from.is_some() && env[1].value.is_none());
        assert_eq!(env[2].name, "OTHER");
        let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "SSL_CERT_FILE",
                "NODE_EXTRA_CA_CERTS",
                "OTHER",
                "REQUESTS_CA_BUNDLE",
                "CURL_CA_BUNDLE",
                "JAVA_TOOL_OPTIONS"
            ]
        );
        assert_eq!(names.iter().filter(|n| **n == "SSL_CERT_FILE").count(), 1);
        // The pod's volume is kept, ours appended; the mount appended after the pod's.
        let vols = doc["spec"]["volumes"].as_array().expect("volumes");
        assert_eq!(
            vols.iter().map(|v| v["name"].as_str()).collect::<Vec<_>>(),
            [Some("data"), Some(TRUST_VOLUME)]
        );
        let mounts = c.volume_mounts.expect("mounts");
        assert_eq!(mounts[0].name, "data");
        assert_eq!(mounts[1].name, TRUST_VOLUME);
        assert!(m.warnings.is_empty());
        assert!(mutate(&pod(doc), "spendguard-trust").is_empty());
    }

    #[test]
    fn a_pod_that_brings_its_own_trust_volume_keeps_it_and_variables_follow_its_mount() {
        let p = labelled(json!({
            "volumes": [{"name": TRUST_VOLUME, "secret": {"secretName": "my-bundle"}}],
            "containers": [
                {"name": "app", "image": "python",
                 "volumeMounts": [{"name": TRUST_VOLUME, "mountPath": "/opt/trust/"}]},
                {"name": "plain", "image": "python"},
            ],
        }));
        let (doc, _) = mutated(&p);
        let vols = doc["spec"]["volumes"].as_array().expect("volumes");
        assert_eq!(vols.len(), 1);
        assert_eq!(
            vols[0]["secret"]["secretName"], "my-bundle",
            "the pod's volume wins"
        );
        let app = container(&doc, "containers", 0);
        assert_eq!(
            app.volume_mounts.as_ref().map(Vec::len),
            Some(1),
            "no second mount"
        );
        assert_eq!(env_map(&app)["SSL_CERT_FILE"], "/opt/trust/ca-bundle.crt");
        assert!(env_map(&app)[JAVA_VAR].contains("/opt/trust/truststore.p12"));
        let plain = container(&doc, "containers", 1);
        assert_eq!(
            plain.volume_mounts.clone().expect("mount")[0].mount_path,
            TRUST_MOUNT_PATH
        );
        assert_eq!(
            env_map(&plain)["SSL_CERT_FILE"],
            "/etc/spendguard-trust/ca-bundle.crt"
        );
    }

    #[test]
    fn another_volume_at_our_mount_path_leaves_that_container_alone_with_a_warning() {
        let p = labelled(json!({
            "volumes": [{"name": "theirs", "emptyDir": {}}],
            "containers": [{"name": "app", "image": "x",
                "volumeMounts": [{"name": "theirs", "mountPath": TRUST_MOUNT_PATH}]}],
        }));
        let m = mutate(&pod(p), "spendguard-trust");
        assert!(
            m.is_empty(),
            "no container changed, so no volume or annotation either"
        );
        assert_eq!(m.warnings.len(), 1);
        assert!(m.warnings[0].contains("\"app\""), "{}", m.warnings[0]);
    }

    #[test]
    fn java_tool_options_get_the_truststore_appended_unless_they_name_one() {
        let p = labelled(json!({
            "containers": [
                {"name": "plain", "image": "j", "env": [{"name": "JAVA_TOOL_OPTIONS", "value": "-Xmx512m "}]},
                {"name": "own", "image": "j", "env": [{"name": "JAVA_TOOL_OPTIONS",
                    "value": "-Djavax.net.ssl.trustStore=/my/store.jks -Xmx1g"}]},
                {"name": "ref", "image": "j", "env": [{"name": "JAVA_TOOL_OPTIONS",
                    "valueFrom": {"configMapKeyRef": {"name": "java", "key": "opts"}}}]},
                {"name": "empty", "image": "j", "env": [{"name": "JAVA_TOOL_OPTIONS", "value": ""}]},
            ],
        }));
        let (doc, m) = mutated(&p);
        let opts = |i| {
            env_map(&container(&doc, "containers", i))
                .get(JAVA_VAR)
                .cloned()
        };
        assert_eq!(
            opts(0),
            Some(format!("-Xmx512m {}", java_options(TRUST_MOUNT_PATH)))
        );
        assert_eq!(
            opts(1).as_deref(),
            Some("-Djavax.net.ssl.trustStore=/my/store.jks -Xmx1g")
        );
        assert_eq!(opts(2), None, "valueFrom kept as it is");
        assert!(container(&doc, "containers", 2).env.expect("env")[0]
            .value_from
            .is_some());
        assert_eq!(opts(3), Some(java_options(TRUST_MOUNT_PATH)));
        assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
        assert!(m.warnings[0].contains("valueFrom"));
        // The other variables still arrive in every one of them.
        for i in 0..4 {
            assert!(env_map(&container(&doc, "containers", i)).contains_key("SSL_CERT_FILE"));
        }
        // Appending is guarded by a test of the value read: a changed value fails the patch.
        let mut other = p.clone();
        other["spec"]["containers"][0]["env"][0]["value"] = json!("-Xmx2g");
        let stale = mutate(&pod(p.clone()), "spendguard-trust");
        assert!(json_patch::patch(&mut other, &stale.patch).is_err());
        // And a second pass changes nothing.
        let again = mutate(&pod(doc), "spendguard-trust");
        assert!(again.is_empty(), "{:?}", again.patch);
    }

    #[test]
    fn unlabelled_and_opted_out_pods_are_not_patched() {
        let unlabelled = json!({"metadata": {"name": "p", "labels": {"app": "x"}},
            "spec": {"containers": [{"name": "c", "image": "x"}]}});
        let m = mutate(&pod(unlabelled), "spendguard-trust");
        assert!(m.is_empty() && m.warnings.is_empty());
        let mut opted = labelled(json!({"containers": [{"name": "c", "image": "x"}]}));
        opted["metadata"]["annotations"] = json!({OPT_OUT_ANNOTATION: "false"});
        assert!(mutate(&pod(opted.clone()), "spendguard-trust").is_empty());
        // Any other value of the annotation does not opt out.
        opted["metadata"]["annotations"] = json!({OPT_OUT_ANNOTATION: "true", "other/x": "1"});
        let (doc, _) = mutated(&opted);
        assert_eq!(doc["metadata"]["annotations"][INJECTED_ANNOTATION], "true");
        assert_eq!(
            doc["metadata"]["annotations"]["other/x"], "1",
            "existing annotations kept"
        );
    }
}
