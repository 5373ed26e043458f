//! A real Kubernetes control plane for the tests: Debian's etcd 3.4 and kube-apiserver 1.20.2 (built
//! from Debian's source package by `scripts/kube-bins.sh`), started per test with a throw-away data
//! directory and certificates made here, and stopped (processes killed, files removed) on drop.
//!
//! - Authentication: client certificates from the test's own CA (the admin is `O=system:masters`)
//!   and real ServiceAccount tokens from the TokenRequest API ([`ControlPlane::service_account_token`]),
//!   signed with a key made here.
//! - Authorization: RBAC only, so a workload identity can do exactly what its (Cluster)Roles grant.
//! - No controller-manager and no scheduler: ServiceAccounts are created by the test (the
//!   `ServiceAccount` admission plugin is off, it would want their token Secrets), pods are created
//!   with `spec.nodeName` set.
//!
//! Network safety: everything listens on 127.0.0.1 — inside the network namespace the test names
//! ([`ControlPlaneOptions::netns`], e.g. a [`crate::World`]'s node namespace, so its agent reaches
//! the API server on its own loopback), or the test's own loopback.
//!
//! Reuse (e.g. an admission webhook's test): [`ControlPlaneOptions::apiserver_args`] adds flags
//! (`--admission-control-config-file=…`, `--enable-admission-plugins=…`), [`ControlPlane::url`],
//! [`ControlPlane::admin_kubeconfig`] and [`ControlPlane::kubectl`] are the client side, and
//! [`ControlPlane::ca_pem`] is the CA the API server's certificate (and a webhook's, through
//! [`KubeCa::server_pem`]) chains to. A webhook test serves TLS on 127.0.0.1 (in the same
//! namespace) with `cp.ca().server_pem(&["127.0.0.1"])` and creates its
//! `MutatingWebhookConfiguration` with `clientConfig.url: https://127.0.0.1:PORT/…` and
//! `caBundle: base64(cp.ca_pem())` (`MutatingAdmissionWebhook` is on by default in 1.20).

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::fake_provider::TestCa;

/// The Kubernetes version the tier runs against (Debian bookworm's `kubernetes` source package).
pub const KUBE_VERSION: &str = "v1.20.2";

/// Where `scripts/kube-bins.sh` leaves the binaries unless `SPENDGUARD_KUBE_CACHE` says otherwise.
pub const DEFAULT_KUBE_BIN_DIR: &str = "/var/cache/spendguard/kube-1.20.2/bin";

/// A binary of the Kubernetes tier: `kube-apiserver`, `kubelet`, `kubectl` or `pause` from
/// `SPENDGUARD_KUBE_BIN_DIR` (set by `cargo xtask test`, which runs `scripts/kube-bins.sh`), else
/// [`DEFAULT_KUBE_BIN_DIR`]. Missing is a failure, not a skip: the tier must run wherever the rest
/// of the privileged suite does.
pub fn kube_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("SPENDGUARD_KUBE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KUBE_BIN_DIR));
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} missing: run `bash scripts/kube-bins.sh` as root (it builds Kubernetes {KUBE_VERSION} \
         from Debian's source package, ~5 min) or `cargo xtask test`, which runs it",
        p.display()
    );
    p
}

/// A system binary the tier needs (`etcd`, `containerd`, `runc`, …), installed by
/// `scripts/kube-bins.sh`; missing is a failure.
pub fn system_bin(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not installed: run `bash scripts/kube-bins.sh` as root (it apt-installs it)");
}

/// `deploy/FILE` of this repository (`""`: the directory).
pub fn deploy_file(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

/// The test cluster's CA: signs the API server's serving certificate, client certificates, and
/// whatever else a test serves to the API server (a webhook).
pub struct KubeCa(TestCa);

impl KubeCa {
    pub fn new() -> KubeCa {
        KubeCa(TestCa::new("spendguard-test-kubernetes-ca"))
    }

    pub fn cert_pem(&self) -> String {
        self.0.cert_pem()
    }

    /// A serving certificate for `hosts` (DNS names or IP addresses) and its key, PEM.
    pub fn server_pem(&self, hosts: &[&str]) -> (String, String) {
        let cn = hosts.first().copied().unwrap_or("server");
        self.0
            .signed_pem(hosts, cn, &[], rcgen::ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate for user `cn` in groups `orgs` (what the API server's x509
    /// authenticator reads), PEM.
    pub fn client_pem(&self, cn: &str, orgs: &[&str]) -> (String, String) {
        self.0
            .signed_pem(&[], cn, orgs, rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }
}

impl Default for KubeCa {
    fn default() -> Self {
        KubeCa::new()
    }
}

/// How to start a [`ControlPlane`].
#[derive(Default, Clone)]
pub struct ControlPlaneOptions {
    /// The network namespace (a `/run/netns/…` path) etcd, the API server and every `kubectl` run
    /// in; `None`: the test's own (then the ports are picked free).
    pub netns: Option<PathBuf>,
    /// Extra kube-apiserver flags, after the harness's own (a later flag wins).
    pub apiserver_args: Vec<String>,
}

/// etcd + kube-apiserver, stopped and removed on drop.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    netns: Option<PathBuf>,
    ca: KubeCa,
    port: u16,
    etcd_port: u16,
    etcd_peer_port: u16,
    apiserver_args: Vec<String>,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    admin_kubeconfig: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// `GET http://127.0.0.1:PORT/PATH` (HTTP/1.0), from inside `netns` if given; the whole answer.
pub fn http_get(netns: Option<&Path>, port: u16, path: &str) -> Option<String> {
    http_call(netns, port, "GET", path, None)
}

/// `POST` a JSON body to `http://127.0.0.1:PORT/PATH`, from inside `netns` if given; the whole
/// answer.
pub fn http_post_json(netns: Option<&Path>, port: u16, path: &str, body: &Value) -> Option<String> {
    http_call(netns, port, "POST", path, Some(body.to_string()))
}

fn http_call(
    netns: Option<&Path>,
    port: u16,
    method: &str,
    path: &str,
    body: Option<String>,
) -> Option<String> {
    let ns = netns.map(Path::to_path_buf);
    let req = match &body {
        Some(b) => format!(
            "{method} {path} HTTP/1.0\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{b}",
            b.len()
        ),
        None => format!("{method} {path} HTTP/1.0\r\nhost: 127.0.0.1\r\n\r\n"),
    };
    std::thread::spawn(move || {
        if let Some(ns) = ns {
            let fd = std::fs::File::open(&ns).ok()?;
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        }
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(req.as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
    .join()
    .ok()
    .flatten()
}

/// A kubeconfig (JSON, which is YAML) for `server` trusting `ca_pem`, with `user` (a `users[].user`
/// object: `{"token": …}` or `{"client-certificate-data": …, "client-key-data": …}`).
pub fn kubeconfig(server: &str, ca_pem: &str, user: Value) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {
            "server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
        "current-context": "test",
    })
    .to_string()
}

impl ControlPlane {
    /// Starts etcd and the API server and waits until `/readyz` answers `ok` (~4 s).
    pub fn start(opts: ControlPlaneOptions) -> ControlPlane {
        let dir = tempfile::Builder::new()
            .prefix("sg-kube-")
            .tempdir()
            .expect("control plane dir");
        // In a namespace of its own the well-known ports are free; on the test's own loopback
        // other tests' servers may hold them.
        let (port, etcd_port, etcd_peer_port) = match opts.netns {
            Some(_) => (6443, 2379, 2380),
            None => (free_port(), free_port(), free_port()),
        };
        let ca = KubeCa::new();
        let write = |name: &str, content: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
            p
        };
        write("ca.crt", &ca.cert_pem());
        let (cert, key) = ca.server_pem(&[
            "127.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]);
        write("apiserver.crt", &cert);
        write("apiserver.key", &key);
        // The ServiceAccount token signing key (ECDSA P-256: ES256 tokens).
        let sa = rcgen::KeyPair::generate().expect("SA key");
        write("sa.key", &sa.serialize_pem());
        write("sa.pub", &sa.public_key_pem());
        let (admin_cert, admin_key) = ca.client_pem("spendguard-test-admin", &["system:masters"]);
        let url = format!("https://127.0.0.1:{port}");
        let admin_kubeconfig = write(
            "admin.kubeconfig",
            &kubeconfig(
                &url,
                &ca.cert_pem(),
                json!({
                    "client-certificate-data": base64::engine::general_purpose::STANDARD.encode(&admin_cert),
                    "client-key-data": base64::engine::general_purpose::STANDARD.encode(&admin_key),
                }),
            ),
        );
        let mut cp = ControlPlane {
            dir,
            netns: opts.netns,
            ca,
            port,
            etcd_port,
            etcd_peer_port,
            apiserver_args: opts.apiserver_args,
            etcd: None,
            apiserver: None,
            admin_kubeconfig,
        };
        cp.start_etcd();
        cp.start_apiserver();
        cp
    }

    /// `https://127.0.0.1:PORT` (inside [`ControlPlaneOptions::netns`] if one was given).
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// etcd's client port (plain HTTP on 127.0.0.1; its v3 JSON gateway answers under `/v3/`).
    pub fn etcd_port(&self) -> u16 {
        self.etcd_port
    }

    pub fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    /// A kubeconfig of a cluster admin (`system:masters`, client certificate).
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The cluster CA (PEM) the API server's certificate chains to.
    pub fn ca_pem(&self) -> String {
        self.ca.cert_pem()
    }

    pub fn ca(&self) -> &KubeCa {
        &self.ca
    }

    /// The control plane's own directory (certificates, logs); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(name))
            .expect("log file")
    }

    /// The last `lines` lines of a component's log (`etcd.log`, `apiserver.log`).
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn spawn(&self, mut cmd: Command, log: &str) -> Child {
        if let Some(ns) = &self.netns {
            crate::in_netns(&mut cmd, ns);
        }
        let log = self.log(log);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"))
    }

    fn start_etcd(&mut self) {
        let data = self.dir.path().join("etcd");
        let client = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer = format!("http://127.0.0.1:{}", self.etcd_peer_port);
        let mut cmd = Command::new(system_bin("etcd"));
        cmd.args(["--name", "sg"])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("sg={peer}")])
            .args(["--initial-cluster-state", "new"]);
        self.etcd = Some(self.spawn(cmd, "etcd.log"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let health = http_get(self.netns.as_deref(), self.etcd_port, "/health");
            if health.is_some_and(|h| h.contains("\"health\":\"true\"")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy:\n{}",
                self.log_tail("etcd.log", 30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn start_apiserver(&mut self) {
        let d = |name: &str| self.dir.path().join(name);
        let mut cmd = Command::new(kube_bin("kube-apiserver"));
        cmd.args([
            format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={}", self.port),
            // 1.20 still serves an unauthenticated HTTP port on 127.0.0.1:8080 by default.
            "--insecure-port=0".into(),
            format!("--cert-dir={}", path_str(&d("certs"))),
            format!("--tls-cert-file={}", path_str(&d("apiserver.crt"))),
            format!("--tls-private-key-file={}", path_str(&d("apiserver.key"))),
            format!("--client-ca-file={}", path_str(&d("ca.crt"))),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", path_str(&d("sa.pub"))),
            format!(
                "--service-account-signing-key-file={}",
                path_str(&d("sa.key"))
            ),
            // Node: what a kubelet (system:node:NAME) may do; RBAC: everyone else.
            "--authorization-mode=Node,RBAC".into(),
            "--service-cluster-ip-range=10.96.0.0/24".into(),
            // The ServiceAccount plugin wants every pod's token Secret, which only the
            // controller-manager (not run here) creates.
            "--disable-admission-plugins=ServiceAccount".into(),
            // The DaemonSet's bpffs init container is privileged.
            "--allow-privileged=true".into(),
            // The `kubernetes` Service's endpoints would be 127.0.0.1, which the API refuses.
            "--endpoint-reconciler-type=none".into(),
            "--profiling=false".into(),
        ]);
        cmd.args(&self.apiserver_args);
        self.apiserver = Some(self.spawn(cmd, "apiserver.log"));
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.kubectl(&["get", "--raw", "/readyz"]);
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                return;
            }
            if let Some(Ok(Some(st))) = self.apiserver.as_mut().map(Child::try_wait) {
                panic!(
                    "kube-apiserver exited with {st}:\n{}",
                    self.log_tail("apiserver.log", 40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready after 60 s:\n{}",
                self.log_tail("apiserver.log", 40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills the API server (etcd keeps running) and starts it again with the same flags, waiting
    /// for `/readyz`: every client's watch breaks.
    pub fn restart_apiserver(&mut self) {
        self.stop_apiserver();
        self.start_apiserver();
    }

    /// Kills the API server and waits for it to be gone (etcd keeps running).
    pub fn stop_apiserver(&mut self) {
        kill(self.apiserver.take());
    }

    /// `kubectl --kubeconfig ADMIN ARGS`, in the control plane's namespace.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(&self.admin_kubeconfig, args, None)
    }

    /// `kubectl --kubeconfig KUBECONFIG ARGS` with `stdin` piped in, in the control plane's
    /// namespace.
    pub fn kubectl_with(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(kube_bin("kubectl"));
        if let Some(ns) = &self.netns {
            crate::in_netns(&mut cmd, ns);
        }
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run kubectl");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("kubectl stdin");
            pipe.write_all(input.as_bytes())
                .expect("write kubectl stdin");
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// [`ControlPlane::kubectl`] that must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl get ARGS -o json`, parsed.
    pub fn get_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        let text = self.kubectl_ok(&a);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("kubectl {a:?}: {e}: {text}"))
    }

    /// Creates `object` (JSON) as the admin; the object the API server stored.
    pub fn create(&self, object: &Value) -> Value {
        let out = self.kubectl_with(
            &self.admin_kubeconfig,
            &["create", "-o", "json", "-f", "-"],
            Some(&object.to_string()),
        );
        assert!(
            out.status.success(),
            "kubectl create {object}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("created object JSON")
    }

    /// `kubectl apply -f FILE` as the admin (client-side apply, as an operator would).
    pub fn apply_file(&self, file: &Path) {
        self.kubectl_ok(&["apply", "-f", path_str(file)]);
    }

    /// A real token of ServiceAccount `namespace/name` from the TokenRequest API (1 h): what the
    /// kubelet would mount into its pods.
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let req = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        });
        let out = self.kubectl_with(
            &self.admin_kubeconfig,
            &[
                "create",
                "--raw",
                &format!("/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"),
                "-f",
                "-",
            ],
            Some(&req.to_string()),
        );
        assert!(
            out.status.success(),
            "TokenRequest for {namespace}/{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("TokenRequest JSON");
        v["status"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token in {v}"))
            .to_string()
    }

    /// The node agent's identity exactly as `deploy/` gives it (namespace, ServiceAccount,
    /// ClusterRole and binding, applied as an operator would), and a kubeconfig authenticating
    /// as that ServiceAccount with a real token: a verb the agent uses and `deploy/` lacks fails.
    pub fn agent_kubeconfig(&self) -> PathBuf {
        for f in [
            "namespace.yaml",
            "serviceaccount.yaml",
            "clusterrole.yaml",
            "clusterrolebinding.yaml",
        ] {
            self.apply_file(&deploy_file(f));
        }
        let token = self.service_account_token("spendguard", "spendguard");
        self.token_kubeconfig("agent.kubeconfig", &token)
    }

    /// Writes a kubeconfig that authenticates with `token` and returns its path.
    pub fn token_kubeconfig(&self, file_name: &str, token: &str) -> PathBuf {
        let p = self.dir.path().join(file_name);
        std::fs::write(
            &p,
            kubeconfig(&self.url(), &self.ca_pem(), json!({ "token": token })),
        )
        .expect("write kubeconfig");
        p
    }

    /// etcd's v3 JSON gateway: `POST /v3/PATH` with `body`; the answer's JSON body.
    pub fn etcd_v3(&self, path: &str, body: &Value) -> Value {
        let out = http_post_json(
            self.netns.as_deref(),
            self.etcd_port,
            &format!("/v3/{path}"),
            body,
        )
        .unwrap_or_else(|| panic!("etcd /v3/{path} did not answer"));
        let (_, json) = out
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("etcd answer without a body: {out}"));
        serde_json::from_str(json).unwrap_or_else(|e| panic!("etcd /v3/{path}: {e}: {json}"))
    }
}

fn kill(child: Option<Child>) {
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- kube-apiserver log (last 30 lines) ----\n{}\n---- etcd log (last 10 lines) ----\n{}",
                self.log_tail("apiserver.log", 30),
                self.log_tail("etcd.log", 10)
            );
        }
        kill(self.apiserver.take());
        kill(self.etcd.take());
    }
}
