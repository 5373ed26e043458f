//! The CA-trust injector end to end, without a cluster: the real `spendguard-agent injector` binary
//! serves HTTPS on 127.0.0.1 (`--standalone`: it writes its serving CA and the trust files to its
//! out dir instead of publishing them), a client that trusts ONLY that serving CA posts real
//! AdmissionReview v1 JSON, the returned JSONPatch is applied with the json-patch crate, and the
//! result is checked. Then the trust files it wrote are used exactly as the injected variables say
//! by the real `openai` Python SDK and a real JVM, against TLS servers on loopback whose
//! certificates SpendGuard's CA (and a stand-in "public" root) signed.
//!
//! Then against a real kube-apiserver 1.20 (`spendguard_tests::kube`): the injector, authenticated
//! as its ServiceAccount with exactly deploy/injector.yaml's RBAC, publishes its caBundle into the
//! manifest's MutatingWebhookConfiguration pointed at it by URL on loopback
//! ([`url_webhook_configuration`]); a pod created with only the label comes back with the trust,
//! the namespace's trust ConfigMap is written, and the openai SDK trusts the bundle read from it.
//!
//! Network safety: every socket here is on 127.0.0.1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use serde_json::{json, Value};
use spendguard_tests::fake_provider::{FakeProvider, TestCa};
use spendguard_tests::sdk::{run_bounded, sdk_python, CLIENT_TIMEOUT};
use spendguard_tests::{bin, eventually};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

/// Where the injector mounts the trust volume in every container (its `patch::TRUST_MOUNT_PATH`).
const MOUNT: &str = "/etc/spendguard-trust";

/// A running `spendguard-agent injector --standalone`, killed on drop.
struct Injector {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Injector {
    /// Starts the binary with SpendGuard's CA `ca` and the "system roots" `roots`, plus `extra`
    /// arguments; waits until it listens.
    fn start(ca: &TestCa, roots: &[&TestCa], extra: &[&str]) -> Injector {
        Injector::start_with(
            ca,
            roots,
            &[&["--standalone", "--listen", "127.0.0.1:0"], extra].concat(),
            &[],
        )
    }

    /// [`Injector::start`] without `--standalone` and `--listen`: `args` must say them, `env` is
    /// added (KUBECONFIG for a real API server).
    fn start_with(
        ca: &TestCa,
        roots: &[&TestCa],
        args: &[&str],
        env: &[(&str, &Path)],
    ) -> Injector {
        let dir = tempfile::Builder::new()
            .prefix("sg-injector")
            .tempdir()
            .expect("temp dir");
        let ca_file = dir.path().join("spendguard-ca.crt");
        std::fs::write(&ca_file, ca.cert_pem()).expect("write CA");
        let roots_file = dir.path().join("system-roots.pem");
        let pem: String = roots.iter().map(|r| r.cert_pem()).collect();
        std::fs::write(&roots_file, pem).expect("write roots");
        let out = dir.path().join("out");
        let child = Command::new(bin("spendguard-agent"))
            .arg("injector")
            .args(["--san", "127.0.0.1"])
            .arg("--ca-cert")
            .arg(&ca_file)
            .arg("--system-roots")
            .arg(&roots_file)
            .arg("--out-dir")
            .arg(&out)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn spendguard-agent injector");
        let mut inj = Injector {
            child,
            dir,
            addr: "127.0.0.1:0".parse().expect("addr"),
        };
        let address = out.join("address");
        let up = eventually(Duration::from_secs(20), || {
            address.exists() && out.join("serving-ca.crt").exists()
        });
        if !up {
            let status = inj.child.try_wait();
            panic!("the injector did not start within 20 s (status {status:?})");
        }
        inj.addr = std::fs::read_to_string(&address)
            .expect("address file")
            .trim()
            .parse()
            .expect("address");
        inj
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// The trust files as a pod would see them at [`MOUNT`].
    fn trust_dir(&self) -> PathBuf {
        self.out().join("trust")
    }

    /// A TLS client config trusting only the serving CA bundle the injector published.
    fn client_tls(&self) -> rustls::ClientConfig {
        let pem = std::fs::read(self.out().join("serving-ca.crt")).expect("serving CA");
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&pem) {
            roots.add(c.expect("serving CA PEM")).expect("serving CA");
        }
        client_config(roots)
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client_config(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// One HTTPS request to the injector (server name 127.0.0.1, as a URL webhook is called): the
/// status, the body and the certificate it served.
fn request(
    addr: SocketAddr,
    tls: rustls::ClientConfig,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>, CertificateDer<'static>), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::IpAddress(addr.ip().into());
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .ok_or("no peer certificate")?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes()
            .to_vec();
        Ok((status, body, cert))
    })
}

/// An AdmissionReview v1 for the CREATE of `pod`, as the API server sends it.
fn review(uid: &str, pod: &Value, dry_run: bool) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"]["name"],
            "namespace": "team-a",
            "operation": "CREATE",
            "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    })
}

/// Posts `pod`'s review; returns the response object and the pod with the patch applied.
fn admit(inj: &Injector, uid: &str, pod: &Value, dry_run: bool) -> (Value, Value) {
    let body = serde_json::to_vec(&review(uid, pod, dry_run)).expect("json");
    let (status, body, _) =
        request(inj.addr, inj.client_tls(), "POST", "/mutate", body).expect("POST /mutate");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let out: Value = serde_json::from_slice(&body).expect("AdmissionReview JSON");
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    let resp = out["response"].clone();
    assert_eq!(resp["uid"], uid, "the response carries the request's uid");
    assert_eq!(resp["allowed"], true, "the injector never denies: {resp}");
    let mut patched = pod.clone();
    if let Some(p) = resp.get("patch").filter(|p| !p.is_null()) {
        assert_eq!(resp["patchType"], "JSONPatch");
        // kube serializes the patch bytes as a JSON array of numbers, base64 when a string.
        let bytes: Vec<u8> = match p {
            Value::String(s) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .expect("base64 patch")
            }
            other => serde_json::from_value(other.clone()).expect("patch bytes"),
        };
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("JSONPatch");
        json_patch::patch(&mut patched, &patch).expect("the returned patch applies to the pod");
    }
    (resp, patched)
}

fn labelled_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "summarizer", "namespace": "team-a",
                     "labels": {"spendguard.io/agent": "acme.research.summarizer", "app": "s"}},
        "spec": {
            "initContainers": [{"name": "migrate", "image": "python:3.12-slim"}],
            "containers": [
                {"name": "app", "image": "python:3.12-slim",
                 "env": [{"name": "JAVA_TOOL_OPTIONS", "value": "-Xmx256m"},
                         {"name": "REQUESTS_CA_BUNDLE", "value": "/mine/ca.pem"}]},
            ],
        }
    })
}

/// The env of `pod`'s container `name` (init or not) by name.
fn env_of(pod: &Value, name: &str) -> std::collections::BTreeMap<String, String> {
    let spec = &pod["spec"];
    let c = ["initContainers", "containers"]
        .iter()
        .filter_map(|l| spec[l].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"));
    c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_string(),
                e["value"].as_str()?.to_string(),
            ))
        })
        .collect()
}

#[test]
fn labelled_pod_gets_the_trust_bundle_over_real_https_and_the_patch_applies() {
    let ca = TestCa::new("SpendGuard test CA");
    let public = TestCa::new("Public test root");
    let inj = Injector::start(&ca, &[&public], &[]);

    let pod = labelled_pod();
    let (resp, patched) = admit(&inj, "uid-1", &pod, false);
    assert!(
        resp["patch"].is_array() || resp["patch"].is_string(),
        "{resp}"
    );
    let vols = patched["spec"]["volumes"].as_array().expect("volumes");
    assert_eq!(vols.len(), 1);
    assert_eq!(vols[0]["name"], "spendguard-trust");
    assert_eq!(vols[0]["configMap"]["name"], "spendguard-trust");
    for c in ["migrate", "app"] {
        let env = env_of(&patched, c);
        assert_eq!(
            env["SSL_CERT_FILE"],
            format!("{MOUNT}/ca-bundle.crt"),
            "{c}"
        );
        assert_eq!(
            env["CURL_CA_BUNDLE"],
            format!("{MOUNT}/ca-bundle.crt"),
            "{c}"
        );
        assert_eq!(env["NODE_EXTRA_CA_CERTS"], format!("{MOUNT}/ca.crt"), "{c}");
        assert!(env["JAVA_TOOL_OPTIONS"].contains("-Djavax.net.ssl.trustStoreType=PKCS12"));
    }
    // The pod's own settings win: its REQUESTS_CA_BUNDLE stays, its Java options get ours appended.
    let app = env_of(&patched, "app");
    assert_eq!(app["REQUESTS_CA_BUNDLE"], "/mine/ca.pem");
    assert!(app["JAVA_TOOL_OPTIONS"].starts_with("-Xmx256m -Djavax.net.ssl.trustStore="));
    assert_eq!(
        env_of(&patched, "migrate")["REQUESTS_CA_BUNDLE"],
        format!("{MOUNT}/ca-bundle.crt")
    );
    for c in patched["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .chain(patched["spec"]["containers"].as_array())
        .flatten()
    {
        let m = &c["volumeMounts"][0];
        assert_eq!(
            (
                m["name"].as_str(),
                m["mountPath"].as_str(),
                m["readOnly"].as_bool()
            ),
            (Some("spendguard-trust"), Some(MOUNT), Some(true))
        );
    }
    assert_eq!(
        patched["metadata"]["annotations"]["spendguard.io/trust-injected"],
        "true"
    );

    // Idempotent through the server: the mutated pod comes back unchanged, without a patch.
    let (resp, again) = admit(&inj, "uid-2", &patched, false);
    assert!(resp.get("patch").is_none_or(Value::is_null), "{resp}");
    assert_eq!(again, patched);

    // An unlabelled pod is allowed untouched; a dry run gets the same patch (no side effects).
    let mut plain = pod.clone();
    plain["metadata"]["labels"] = json!({"app": "s"});
    let (resp, untouched) = admit(&inj, "uid-3", &plain, false);
    assert!(resp.get("patch").is_none_or(Value::is_null), "{resp}");
    assert_eq!(untouched, plain);
    let (_, dry) = admit(&inj, "uid-4", &pod, true);
    assert_eq!(dry, patched);

    // Not an AdmissionReview: refused with a reason; other paths: 404; probes answer.
    let (status, body, _) = request(
        inj.addr,
        inj.client_tls(),
        "POST",
        "/mutate",
        b"{\"x\":1}".to_vec(),
    )
    .expect("req");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) =
        request(inj.addr, inj.client_tls(), "GET", "/healthz", vec![]).expect("req");
    assert_eq!(status, 200);
    let (status, _, _) = request(inj.addr, inj.client_tls(), "GET", "/other", vec![]).expect("req");
    assert_eq!(status, 404);

    // The API server may speak HTTP/2 (ALPN h2): curl does, trusting only the published CA.
    let review_file = inj.dir.path().join("review.json");
    std::fs::write(
        &review_file,
        serde_json::to_vec(&review("uid-h2", &pod, false)).expect("json"),
    )
    .expect("write review");
    let mut curl = Command::new("curl");
    curl.args(["--silent", "--show-error", "--http2", "--max-time", "20"])
        .arg("--cacert")
        .arg(inj.out().join("serving-ca.crt"))
        .args([
            "-H",
            "content-type: application/json",
            "-w",
            "\nHTTP/%{http_version}",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", review_file.display()))
        .arg(format!("https://{}/mutate", inj.addr));
    let out = run_bounded(curl, CLIENT_TIMEOUT);
    let text = out.stdout_str();
    assert!(out.success(), "curl: {}{}", text, out.stderr_str());
    assert!(text.trim_end().ends_with("HTTP/2"), "not HTTP/2: {text}");
    let body: Value =
        serde_json::from_str(text.lines().next().expect("body line")).expect("AdmissionReview");
    assert_eq!(body["response"]["uid"], "uid-h2");
    assert_eq!(body["response"]["patchType"], "JSONPatch");

    // A client that trusts some other CA refuses the injector's certificate: the trust above is real.
    let mut other = rustls::RootCertStore::empty();
    other.add(public.cert_der()).expect("root");
    let e =
        request(inj.addr, client_config(other), "GET", "/healthz", vec![]).expect_err("untrusted");
    assert!(e.contains("TLS"), "{e}");
}

#[test]
fn serving_certificate_is_renewed_before_it_expires_and_stays_trusted() {
    let ca = TestCa::new("SpendGuard test CA");
    // A 3 s leaf is renewed at 2 s; the CA (60 s) does not roll during the test.
    let inj = Injector::start(
        &ca,
        &[&ca],
        &["--leaf-lifetime-secs", "3", "--ca-lifetime-secs", "60"],
    );
    let started = Instant::now();
    let (_, _, first) =
        request(inj.addr, inj.client_tls(), "GET", "/healthz", vec![]).expect("first");
    let mut renewed = None;
    let changed = eventually(Duration::from_secs(6), || {
        match request(inj.addr, inj.client_tls(), "GET", "/healthz", vec![]) {
            Ok((200, _, cert)) if cert != first => {
                renewed = Some(cert);
                true
            }
            Ok(_) => false,
            Err(e) => panic!("a handshake failed while the certificate rotated: {e}"),
        }
    });
    assert!(
        changed,
        "the 3 s serving certificate was not renewed within 6 s"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(3),
        "renewed only after {elapsed:?}: too late, it expires at 3 s"
    );
    // The new certificate is accepted by the same client (the published CA bundle signs it), and
    // is served to every new connection from then on.
    let renewed = renewed.expect("renewed");
    let (_, _, now) =
        request(inj.addr, inj.client_tls(), "GET", "/healthz", vec![]).expect("after");
    // (The next renewal is due 2 s after this one: still the same certificate.)
    assert_eq!(now, renewed);
}

/// A TLS server on 127.0.0.1 whose certificate `ca` signed (the fake OpenAI provider).
fn provider_signed_by(ca: &TestCa) -> FakeProvider {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    FakeProvider::start(l, ca, &["127.0.0.1"], &[])
}

/// Where a path the injected env names lies on this machine: the volume's files are the
/// injector's out dir (what kubelet would mount at [`MOUNT`]).
fn on_host(inj: &Injector, path: &str) -> PathBuf {
    let rel = path
        .strip_prefix(MOUNT)
        .unwrap_or_else(|| panic!("{path} is not under the trust mount {MOUNT}"));
    inj.trust_dir().join(rel.trim_start_matches('/'))
}

/// The openai SDK, with only `env` (besides PATH and HOME), lists models at `base`.
fn openai_models(env: &[(&str, PathBuf)], base: &str) -> (bool, String) {
    let home = tempfile::tempdir().expect("home");
    let code = format!(
        r#"
import openai, sys
client = openai.OpenAI(api_key="sk-test", base_url="{base}/v1", max_retries=0, timeout=20)
try:
    models = client.models.list()
    print("OK", [m.id for m in models.data][:1])
except Exception as e:
    print("FAIL", type(e).__name__, repr(e.__cause__ or e))
    sys.exit(3)
"#
    );
    let mut cmd = Command::new(sdk_python());
    cmd.arg("-c")
        .arg(code)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", home.path())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_bounded(cmd, CLIENT_TIMEOUT);
    (
        out.success(),
        format!("{}{}", out.stdout_str(), out.stderr_str()),
    )
}

#[test]
fn the_injected_bundle_is_trusted_by_the_openai_sdk() {
    let ca = TestCa::new("SpendGuard test CA");
    let public = TestCa::new("Public test root");
    let inj = Injector::start(&ca, &[&public], &[]);
    let (_, patched) = admit(&inj, "uid-sdk", &labelled_pod(), false);
    let env = env_of(&patched, "migrate");
    let ssl_cert_file = on_host(&inj, &env["SSL_CERT_FILE"]);

    // An intercepted call: the agent's leaf is signed by SpendGuard's CA.
    let intercepted = provider_signed_by(&ca);
    let (ok, out) = openai_models(
        &[("SSL_CERT_FILE", ssl_cert_file.clone())],
        &intercepted.base_url(),
    );
    assert!(ok, "the openai SDK with the injected SSL_CERT_FILE: {out}");
    assert!(out.contains("OK"), "{out}");
    assert_eq!(intercepted.request_count(), 1);
    // A call the agent passes through untouched: the real certificate, signed by a public root.
    let passthrough = provider_signed_by(&public);
    let (ok, out) = openai_models(&[("SSL_CERT_FILE", ssl_cert_file)], &passthrough.base_url());
    assert!(ok, "the bundle must keep the system roots: {out}");
    // Control: with the system roots alone, the intercepted call fails verification (so the
    // success above is the bundle's doing).
    let roots_only = inj.dir.path().join("system-roots.pem");
    let (ok, out) = openai_models(&[("SSL_CERT_FILE", roots_only)], &intercepted.base_url());
    assert!(!ok, "must fail without SpendGuard's CA: {out}");
    assert!(
        out.contains("CERTIFICATE_VERIFY_FAILED") || out.contains("certificate verify failed"),
        "{out}"
    );
}

#[test]
fn the_injected_truststore_is_trusted_by_a_real_jvm() {
    let Ok(java) = which("java") else {
        spendguard_tests::skip("no `java` on PATH: the JVM truststore check needs a JDK >= 11");
        return;
    };
    let ca = TestCa::new("SpendGuard test CA");
    let public = TestCa::new("Public test root");
    let inj = Injector::start(&ca, &[&public], &[]);
    let (_, patched) = admit(&inj, "uid-java", &labelled_pod(), false);
    // The container's Java options: the pod's -Xmx256m with ours appended; paths as on the host.
    let opts = env_of(&patched, "app")["JAVA_TOOL_OPTIONS"]
        .replace(MOUNT, &inj.trust_dir().display().to_string());
    let src = inj.dir.path().join("Fetch.java");
    std::fs::write(
        &src,
        r#"
public class Fetch {
    public static void main(String[] a) throws Exception {
        var c = (javax.net.ssl.HttpsURLConnection) new java.net.URL(a[0]).openConnection();
        c.setRequestProperty("Authorization", "Bearer sk-test");
        System.out.println("STATUS " + c.getResponseCode());
    }
}
"#,
    )
    .expect("write Fetch.java");
    let run = |url: &str, opts: Option<&str>| {
        let mut cmd = Command::new(&java);
        cmd.arg(&src)
            .arg(url)
            .env_clear()
            .env("PATH", "/usr/bin:/bin");
        if let Some(o) = opts {
            cmd.env("JAVA_TOOL_OPTIONS", o);
        }
        let out = run_bounded(cmd, CLIENT_TIMEOUT);
        (
            out.success(),
            format!("{}{}", out.stdout_str(), out.stderr_str()),
        )
    };
    let intercepted = provider_signed_by(&ca);
    let passthrough = provider_signed_by(&public);
    for p in [&intercepted, &passthrough] {
        let (ok, out) = run(&format!("{}/v1/models", p.base_url()), Some(&opts));
        assert!(
            ok && out.contains("STATUS 200"),
            "the JVM with the injected options: {out}"
        );
    }
    // Control: the JDK's own cacerts does not know the test CA.
    let (ok, out) = run(&format!("{}/v1/models", intercepted.base_url()), None);
    assert!(!ok, "must fail without the truststore: {out}");
    assert!(
        out.contains("PKIX") || out.contains("SSLHandshakeException"),
        "{out}"
    );
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

/// The injector's MutatingWebhookConfiguration from deploy/injector.yaml with its `service`
/// reference replaced by `url` (the injector on loopback: `https://127.0.0.1:PORT/mutate`, serving
/// `--san 127.0.0.1`) and `caBundle` set to `ca_pem` (or left for the injector to publish): how the
/// real API server reaches a webhook that runs as a process, not as the Deployment behind the Service.
pub fn url_webhook_configuration(url: &str, ca_pem: Option<&str>) -> Value {
    let path = spendguard_tests::kube::deploy_file("injector.yaml");
    let text = std::fs::read_to_string(&path).expect("deploy/injector.yaml");
    let doc: Value = serde_saphyr::from_multiple::<Value>(&text)
        .expect("YAML")
        .into_iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .expect("a MutatingWebhookConfiguration in deploy/injector.yaml");
    let mut cfg = doc;
    for wh in cfg["webhooks"].as_array_mut().into_iter().flatten() {
        let mut cc = json!({ "url": url });
        if let Some(pem) = ca_pem {
            use base64::Engine as _;
            cc["caBundle"] = json!(base64::engine::general_purpose::STANDARD.encode(pem));
        }
        wh["clientConfig"] = cc;
    }
    cfg
}

#[test]
fn url_webhook_configuration_keeps_the_manifest_rules_and_points_at_the_url() {
    let cfg = url_webhook_configuration("https://127.0.0.1:9443/mutate", Some("PEM"));
    let wh = &cfg["webhooks"][0];
    assert_eq!(wh["clientConfig"]["url"], "https://127.0.0.1:9443/mutate");
    assert!(wh["clientConfig"].get("service").is_none());
    assert_eq!(wh["clientConfig"]["caBundle"], "UEVN");
    assert_eq!(
        wh["objectSelector"]["matchExpressions"][0]["key"],
        "spendguard.io/agent"
    );
    assert_eq!(wh["admissionReviewVersions"], json!(["v1"]));
}

/// The objects of kind `kind` in deploy/injector.yaml.
fn injector_manifest(kind: &str) -> Vec<Value> {
    let path = spendguard_tests::kube::deploy_file("injector.yaml");
    let text = std::fs::read_to_string(&path).expect("deploy/injector.yaml");
    serde_saphyr::from_multiple::<Value>(&text)
        .expect("YAML")
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The trust volume's source of `pod` (its `spendguard-trust` volume), if any.
fn trust_volume(pod: &Value) -> Option<Value> {
    pod["spec"]["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == "spendguard-trust")
        .cloned()
}

#[test]
fn real_api_server_injects_trust_into_a_pod_created_with_only_the_label() {
    use spendguard_tests::kube::{ControlPlane, ControlPlaneOptions};
    let cp = ControlPlane::start(ControlPlaneOptions::default());
    cp.kubectl_ok(&["create", "namespace", "spendguard"]);
    // Exactly the install's identity and RBAC for the injector.
    for kind in ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"] {
        for obj in injector_manifest(kind) {
            cp.create(&obj);
        }
    }
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}/mutate");
    // No caBundle: the injector publishes it.
    cp.create(&url_webhook_configuration(&url, None));
    let token = cp.service_account_token("spendguard", "spendguard-injector");
    let kubeconfig = cp.token_kubeconfig("injector.kubeconfig", &token);

    let ca = TestCa::new("SpendGuard test CA");
    let public = TestCa::new("Public test root");
    let listen = format!("127.0.0.1:{port}");
    let inj = Injector::start_with(
        &ca,
        &[&public],
        &[
            "--listen",
            &listen,
            "--webhook-config",
            "spendguard-injector",
        ],
        &[("KUBECONFIG", &kubeconfig)],
    );
    let serving_ca = std::fs::read_to_string(inj.out().join("serving-ca.crt")).expect("serving CA");
    let published = || {
        let mwc = cp.get_json(&["mutatingwebhookconfiguration", "spendguard-injector"]);
        let b64 = mwc["webhooks"][0]["clientConfig"]["caBundle"]
            .as_str()
            .unwrap_or("")
            .to_string();
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(20), || published()
            == serving_ca.as_bytes()),
        "the injector did not publish its serving CA as the caBundle (RBAC get/update on the \
         MutatingWebhookConfiguration?)"
    );

    cp.kubectl_ok(&["create", "namespace", "team-a"]);
    let pod = |name: &str, labels: Value, env: Value| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "team-a", "labels": labels},
            "spec": {"nodeName": "node-1", "containers": [
                {"name": "app", "image": "python:3.12-slim", "env": env}]},
        })
    };
    // The pod carries only the label; what the API server stores has the trust.
    let stored = cp.create(&pod(
        "labelled",
        json!({"spendguard.io/agent": "acme.research"}),
        json!([]),
    ));
    let vol = trust_volume(&stored).unwrap_or_else(|| panic!("not injected: {stored}"));
    assert_eq!(vol["configMap"]["name"], "spendguard-trust");
    let env = env_of(&stored, "app");
    assert_eq!(env["SSL_CERT_FILE"], format!("{MOUNT}/ca-bundle.crt"));
    assert_eq!(env["NODE_EXTRA_CA_CERTS"], format!("{MOUNT}/ca.crt"));
    assert!(env["JAVA_TOOL_OPTIONS"].contains("truststore.p12"));
    assert_eq!(
        stored["metadata"]["annotations"]["spendguard.io/trust-injected"],
        "true"
    );

    // The namespace's trust ConfigMap was written (RBAC create) before the pod was admitted.
    let cm = cp.get_json(&["-n", "team-a", "configmap", "spendguard-trust"]);
    assert_eq!(
        cm["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "spendguard-injector"
    );
    assert!(cm["binaryData"]["truststore.p12"].is_string(), "{cm}");
    // Lay the ConfigMap out as kubelet would mount it, and let the openai SDK use the injected
    // SSL_CERT_FILE against a server SpendGuard's CA signed.
    let volume = inj.dir.path().join("volume");
    std::fs::create_dir_all(&volume).expect("volume dir");
    for key in ["ca-bundle.crt", "ca.crt"] {
        let text = cm["data"][key]
            .as_str()
            .unwrap_or_else(|| panic!("ConfigMap lacks {key}: {cm}"));
        std::fs::write(volume.join(key), text).expect("write key");
    }
    let ssl_cert_file = volume.join(
        env["SSL_CERT_FILE"]
            .strip_prefix(&format!("{MOUNT}/"))
            .expect("under mount"),
    );
    let intercepted = provider_signed_by(&ca);
    let (ok, out) = openai_models(
        &[("SSL_CERT_FILE", ssl_cert_file.clone())],
        &intercepted.base_url(),
    );
    assert!(
        ok,
        "the openai SDK with the bundle from the API server: {out}"
    );
    let passthrough = provider_signed_by(&public);
    let (ok, out) = openai_models(&[("SSL_CERT_FILE", ssl_cert_file)], &passthrough.base_url());
    assert!(ok, "the bundle keeps the system roots: {out}");

    // An unlabelled pod is not touched; a pod's own variable wins.
    let plain = cp.create(&pod("plain", json!({"app": "x"}), json!([])));
    assert!(trust_volume(&plain).is_none(), "{plain}");
    assert!(plain["metadata"]["annotations"]
        .get("spendguard.io/trust-injected")
        .is_none());
    let own = cp.create(&pod(
        "own",
        json!({"spendguard.io/agent": "acme.research"}),
        json!([{"name": "SSL_CERT_FILE", "value": "/mine.pem"}]),
    ));
    assert_eq!(env_of(&own, "app")["SSL_CERT_FILE"], "/mine.pem");
    assert_eq!(
        env_of(&own, "app")["CURL_CA_BUNDLE"],
        format!("{MOUNT}/ca-bundle.crt")
    );

    // A trust ConfigMap someone deleted is written again at the next labelled pod's admission.
    cp.kubectl_ok(&["-n", "team-a", "delete", "configmap", "spendguard-trust"]);
    cp.create(&pod(
        "again",
        json!({"spendguard.io/agent": "acme.research"}),
        json!([]),
    ));
    let cm = cp.get_json(&["-n", "team-a", "configmap", "spendguard-trust"]);
    assert!(cm["data"]["ca-bundle.crt"].is_string(), "{cm}");

    // A server-side dry run is patched too, but writes nothing (sideEffects: NoneOnDryRun).
    cp.kubectl_ok(&["create", "namespace", "team-b"]);
    let mut dry = pod(
        "dry",
        json!({"spendguard.io/agent": "acme.research"}),
        json!([]),
    );
    dry["metadata"]["namespace"] = json!("team-b");
    let out = cp.kubectl_with(
        cp.admin_kubeconfig(),
        &["create", "--dry-run=server", "-o", "json", "-f", "-"],
        Some(&dry.to_string()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dry_stored: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(trust_volume(&dry_stored).is_some(), "{dry_stored}");
    let cms = cp.get_json(&["-n", "team-b", "configmaps"]);
    assert!(
        cms["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|c| c["metadata"]["name"] != "spendguard-trust"),
        "a dry run wrote the trust ConfigMap: {cms}"
    );
}
