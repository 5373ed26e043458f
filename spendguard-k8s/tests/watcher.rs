//! The watcher against a fake Kubernetes API server on 127.0.0.1 that speaks the real list/watch
//! wire format: a PodList with `metadata.resourceVersion`, then a chunked stream of
//! newline-delimited `{"type": …, "object": …}` watch events, filtered by the request's field and
//! label selectors the way the real API server filters them (an object that stops matching a
//! label-selected watch is sent as DELETED).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use spendguard_k8s::{
    run_watcher, CgroupResolver, K8sError, LabelError, PodRef, PodTagSink, WatcherConfig,
    AGENT_LABEL, INVALID_LABEL_REASON,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const NODE: &str = "node-1";
const STEP: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The fake API server.

#[derive(Clone, Debug)]
struct Recorded {
    method: Method,
    path: String,
    query: HashMap<String, String>,
}

/// A watch connection and the selectors it asked for.
struct Watch {
    node: Option<String>,
    label_key: Option<String>,
    tx: mpsc::UnboundedSender<Bytes>,
}

impl Watch {
    fn matches(&self, pod: &Value) -> bool {
        selectors_match(self.node.as_deref(), self.label_key.as_deref(), pod)
    }
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// By uid; every node's pods, labelled or not.
    pods: BTreeMap<String, Value>,
    requests: Vec<Recorded>,
    events: Vec<Value>,
    watches: Vec<Watch>,
    watches_opened: usize,
    lists_ok: usize,
    lists_failed: usize,
    fail_next_lists: usize,
    unexpected: Vec<String>,
}

#[derive(Clone, Default)]
struct FakeApi(Arc<Mutex<Store>>);

fn selectors_match(node: Option<&str>, label_key: Option<&str>, pod: &Value) -> bool {
    node.is_none_or(|n| pod["spec"]["nodeName"] == n)
        && label_key.is_none_or(|k| pod["metadata"]["labels"].get(k).is_some())
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let mut out = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("utf8");
                out.push(u8::from_str_radix(hex, 16).expect("hex escape"));
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).expect("utf8 query")
    };
    q.unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

type Body = BoxBody<Bytes, Infallible>;

fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl FakeApi {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn start(self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let api = self.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let api = api.clone();
                        async move { Ok::<_, Infallible>(api.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = parse_query(req.uri().query());
        self.lock().requests.push(Recorded {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
        });
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::GET, ["api", "v1", "pods"]) => {
                let node = query.get("fieldSelector").map(|f| {
                    f.strip_prefix("spec.nodeName=")
                        .unwrap_or_else(|| panic!("unsupported fieldSelector {f:?}"))
                        .to_string()
                });
                let label_key = query.get("labelSelector").cloned();
                if query.get("watch").map(String::as_str) == Some("true") {
                    self.open_watch(node, label_key)
                } else {
                    self.list(node.as_deref(), label_key.as_deref())
                }
            }
            (&Method::POST, ["api", "v1", "namespaces", ns, "events"]) => {
                let body = req.into_body().collect().await.expect("body").to_bytes();
                let mut ev: Value = serde_json::from_slice(&body).expect("event JSON");
                ev["metadata"]["namespace"] = json!(ns);
                self.lock().events.push(ev.clone());
                json_response(StatusCode::CREATED, &ev)
            }
            _ => {
                self.lock().unexpected.push(format!("{method} {path}"));
                json_response(
                    StatusCode::NOT_FOUND,
                    &status(404, "NotFound", "not served by the fake"),
                )
            }
        }
    }

    fn list(&self, node: Option<&str>, label_key: Option<&str>) -> Response<Body> {
        let mut s = self.lock();
        if s.fail_next_lists > 0 {
            s.fail_next_lists -= 1;
            s.lists_failed += 1;
            return json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &status(500, "InternalError", "etcd is having a bad day"),
            );
        }
        s.lists_ok += 1;
        // List items carry no kind/apiVersion, as from the real server.
        let items: Vec<Value> = s
            .pods
            .values()
            .filter(|p| selectors_match(node, label_key, p))
            .map(|p| {
                let mut p = p.clone();
                if let Some(o) = p.as_object_mut() {
                    o.remove("kind");
                    o.remove("apiVersion");
                }
                p
            })
            .collect();
        let list = json!({"kind": "PodList", "apiVersion": "v1",
                          "metadata": {"resourceVersion": s.rv.to_string()}, "items": items});
        json_response(StatusCode::OK, &list)
    }

    fn open_watch(&self, node: Option<String>, label_key: Option<String>) -> Response<Body> {
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        {
            let mut s = self.lock();
            s.watches.push(Watch {
                node,
                label_key,
                tx,
            });
            s.watches_opened += 1;
        }
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        let mut r = Response::new(StreamBody::new(stream).boxed());
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        r
    }

    /// Sends one watch line to every open watch for which `pick` says which event type (if any).
    fn broadcast(s: &mut Store, mut pick: impl FnMut(&Watch) -> Option<(&'static str, Value)>) {
        s.watches.retain(|w| match pick(w) {
            None => !w.tx.is_closed(),
            Some((ty, obj)) => {
                let line = format!("{}\n", json!({"type": ty, "object": obj}));
                w.tx.send(Bytes::from(line)).is_ok()
            }
        });
    }

    /// Creates or updates a pod like the API server: new resourceVersion; watchers get ADDED,
    /// MODIFIED or DELETED depending on whether it matched their selectors before and after.
    fn upsert(&self, mut pod: Value) {
        let mut s = self.lock();
        s.rv += 1;
        pod["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        let uid = pod["metadata"]["uid"].as_str().expect("uid").to_string();
        let old = s.pods.insert(uid, pod.clone());
        Self::broadcast(&mut s, |w| {
            let before = old.as_ref().is_some_and(|o| w.matches(o));
            match (before, w.matches(&pod)) {
                (false, true) => Some(("ADDED", pod.clone())),
                (true, true) => Some(("MODIFIED", pod.clone())),
                (true, false) => Some(("DELETED", pod.clone())),
                (false, false) => None,
            }
        });
    }

    fn delete(&self, uid: &str) {
        let mut s = self.lock();
        s.rv += 1;
        let rv = s.rv.to_string();
        let Some(mut pod) = s.pods.remove(uid) else {
            return;
        };
        pod["metadata"]["resourceVersion"] = json!(rv);
        Self::broadcast(&mut s, |w| {
            w.matches(&pod).then(|| ("DELETED", pod.clone()))
        });
    }

    /// Changes the store without telling any watcher (events missed while disconnected).
    fn set_silently(&self, pod: Option<Value>, remove_uid: Option<&str>) {
        let mut s = self.lock();
        s.rv += 1;
        if let Some(mut pod) = pod {
            pod["metadata"]["resourceVersion"] = json!(s.rv.to_string());
            let uid = pod["metadata"]["uid"].as_str().expect("uid").to_string();
            s.pods.insert(uid, pod);
        }
        if let Some(uid) = remove_uid {
            s.pods.remove(uid);
        }
    }

    /// A raw watch event to every open watch, whatever the store says.
    fn send_raw(&self, ty: &'static str, obj: Value) {
        let mut s = self.lock();
        Self::broadcast(&mut s, |_| Some((ty, obj.clone())));
    }

    /// What the API server sends when the watch's resourceVersion was compacted away.
    fn expire_watches(&self) {
        let mut s = self.lock();
        let gone = status(410, "Expired", "too old resource version: 1 (99)");
        Self::broadcast(&mut s, |_| Some(("ERROR", gone.clone())));
    }

    async fn wait_for(&self, what: &str, cond: impl Fn(&Store) -> bool) {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            if cond(&self.lock()) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pods and the recording sink.

fn pod(name: &str, uid: &str, node: &str, label: Option<&str>, qos: &str, phase: &str) -> Value {
    let mut labels = json!({"app": name});
    if let Some(l) = label {
        labels[AGENT_LABEL] = json!(l);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "team", "uid": uid, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "python:3.12-slim"}]},
        "status": {"phase": phase, "qosClass": qos}
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Apply {
        pod: PodRef,
        /// The agent name, or the invalid value.
        agent: Result<String, String>,
        cgroups: Vec<PathBuf>,
    },
    Remove(String),
    Resync(Vec<PodRef>),
}

struct Recorder(mpsc::UnboundedSender<Call>);

impl PodTagSink for Recorder {
    fn apply_pod(
        &self,
        pod: &PodRef,
        agent: Result<spendguard_k8s::AgentName, LabelError>,
        cgroups: Vec<PathBuf>,
    ) {
        let agent = agent
            .map(|a| a.to_string())
            .map_err(|LabelError::Invalid { value, .. }| value);
        let _ = self.0.send(Call::Apply {
            pod: pod.clone(),
            agent,
            cgroups,
        });
    }
    fn remove_pod(&self, pod_uid: &str) {
        let _ = self.0.send(Call::Remove(pod_uid.to_string()));
    }
    fn resync(&self, live: &[PodRef]) {
        let _ = self.0.send(Call::Resync(live.to_vec()));
    }
}

async fn next_call(rx: &mut mpsc::UnboundedReceiver<Call>) -> Call {
    tokio::time::timeout(STEP, rx.recv())
        .await
        .expect("timed out waiting for a sink call")
        .expect("sink channel closed")
}

fn pref(name: &str, uid: &str) -> PodRef {
    PodRef {
        namespace: "team".into(),
        name: name.into(),
        uid: uid.into(),
    }
}

fn systemd_pod_dir(root: &Path, uid: &str, qos: &str) -> PathBuf {
    let u = uid.replace('-', "_");
    let kp = root.join("kubepods.slice");
    match qos {
        "Guaranteed" => kp.join(format!("kubepods-pod{u}.slice")),
        "Burstable" => kp.join(format!(
            "kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"
        )),
        _ => kp.join(format!(
            "kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice"
        )),
    }
}

fn client_for(addr: SocketAddr) -> kube::Client {
    let url: hyper::Uri = format!("http://{addr}").parse().expect("url");
    let config = kube::Config::new(url);
    // In the workspace rustls has two providers compiled in (see install_crypto_provider).
    spendguard_k8s::install_crypto_provider();
    kube::Client::try_from(config).expect("client")
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_follows_labels_through_watch_events_and_relists() {
    let cg = tempfile::tempdir().expect("tempdir");
    let root = cg.path();
    std::fs::create_dir(root.join("kubepods.slice")).expect("mkdir kubepods.slice");
    let (a, b, d) = ("aaaa-1111", "bbbb-2222", "dddd-4444");
    let dir_a = systemd_pod_dir(root, a, "Burstable");
    std::fs::create_dir_all(&dir_a).expect("mkdir pod a");

    let api = FakeApi::default();
    api.upsert(pod("a", a, NODE, Some("acme.bot"), "Burstable", "Running"));
    // Neither must reach the sink: another node's pod, and an unlabelled pod on this node.
    api.upsert(pod(
        "x",
        "xxxx-9999",
        "node-2",
        Some("acme.bot"),
        "Burstable",
        "Running",
    ));
    api.upsert(pod("u", "uuuu-8888", NODE, None, "BestEffort", "Running"));
    let addr = api.clone().start().await;

    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut cfg = WatcherConfig::new(NODE);
    cfg.retry_min = Duration::from_millis(20);
    cfg.retry_max = Duration::from_millis(100);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_watcher(
        client_for(addr),
        cfg,
        CgroupResolver::new(root),
        Arc::new(Recorder(tx)),
        shutdown.clone(),
    ));

    // Start: list → apply every labelled pod of this node → resync with exactly those.
    assert_eq!(
        next_call(&mut rx).await,
        Call::Apply {
            pod: pref("a", a),
            agent: Ok("acme.bot".into()),
            cgroups: vec![dir_a.clone()],
        }
    );
    assert_eq!(next_call(&mut rx).await, Call::Resync(vec![pref("a", a)]));
    {
        let s = api.lock();
        let list = s
            .requests
            .iter()
            .find(|r| r.method == Method::GET && !r.query.contains_key("watch"))
            .expect("a list request");
        assert_eq!(list.path, "/api/v1/pods", "all namespaces");
        assert_eq!(
            list.query.get("fieldSelector").map(String::as_str),
            Some("spec.nodeName=node-1")
        );
        assert_eq!(
            list.query.get("labelSelector").map(String::as_str),
            Some(AGENT_LABEL)
        );
    }
    api.wait_for("the watch", |s| s.watches_opened == 1).await;

    // ADDED, not started yet: the expected systemd path (kubepods.slice exists on this "node").
    api.upsert(pod(
        "b",
        b,
        NODE,
        Some("acme.research"),
        "Guaranteed",
        "Pending",
    ));
    let dir_b = systemd_pod_dir(root, b, "Guaranteed");
    assert_eq!(
        next_call(&mut rx).await,
        Call::Apply {
            pod: pref("b", b),
            agent: Ok("acme.research".into()),
            cgroups: vec![dir_b.clone()],
        }
    );

    // The sandbox starts (status-only MODIFIED, same path): no call. Then a label change.
    std::fs::create_dir_all(&dir_b).expect("mkdir pod b");
    api.upsert(pod(
        "b",
        b,
        NODE,
        Some("acme.research"),
        "Guaranteed",
        "Running",
    ));
    api.upsert(pod(
        "b",
        b,
        NODE,
        Some("acme.other"),
        "Guaranteed",
        "Running",
    ));
    assert_eq!(
        next_call(&mut rx).await,
        Call::Apply {
            pod: pref("b", b),
            agent: Ok("acme.other".into()),
            cgroups: vec![dir_b.clone()],
        },
        "the status-only update must not reach the sink"
    );

    // An invalid value (a valid Kubernetes label value, not an agent name): Err + Warning Event.
    api.upsert(pod("a", a, NODE, Some("Acme.Bot"), "Burstable", "Running"));
    assert_eq!(
        next_call(&mut rx).await,
        Call::Apply {
            pod: pref("a", a),
            agent: Err("Acme.Bot".into()),
            cgroups: vec![dir_a.clone()],
        }
    );
    api.wait_for("the Event POST", |s| !s.events.is_empty())
        .await;
    {
        let s = api.lock();
        assert_eq!(s.events.len(), 1);
        let ev = &s.events[0];
        assert_eq!(ev["metadata"]["namespace"], "team");
        assert_eq!(ev["reason"], INVALID_LABEL_REASON);
        assert_eq!(ev["type"], "Warning");
        assert_eq!(ev["involvedObject"]["kind"], "Pod");
        assert_eq!(ev["involvedObject"]["name"], "a");
        assert_eq!(ev["involvedObject"]["uid"], a);
        assert_eq!(ev["source"]["host"], NODE);
        assert!(
            ev["message"]
                .as_str()
                .is_some_and(|m| m.contains("Acme.Bot")),
            "{ev}"
        );
    }

    // Label removed: the server's label-selected watch turns that into DELETED.
    api.upsert(pod("a", a, NODE, None, "Burstable", "Running"));
    assert_eq!(next_call(&mut rx).await, Call::Remove(a.into()));
    // A MODIFIED without the label (a server that does not filter) untags as well.
    api.send_raw("MODIFIED", {
        let mut p = pod("b", b, NODE, None, "Guaranteed", "Running");
        p["metadata"]["resourceVersion"] = json!("1000");
        p
    });
    assert_eq!(next_call(&mut rx).await, Call::Remove(b.into()));
    // Pod deleted.
    api.upsert(pod(
        "b",
        b,
        NODE,
        Some("acme.other"),
        "Guaranteed",
        "Running",
    ));
    assert_eq!(
        next_call(&mut rx).await,
        Call::Apply {
            pod: pref("b", b),
            agent: Ok("acme.other".into()),
            cgroups: vec![dir_b.clone()],
        }
    );
    api.delete(b);
    assert_eq!(next_call(&mut rx).await, Call::Remove(b.into()));
    assert_eq!(api.lock().events.len(), 1, "one Event per invalid value");

    // Missed while the watch was broken: a fixed, a new pod, a vanished pod; then 410 Gone.
    api.upsert(pod(
        "b",
        b,
        NODE,
        Some("acme.other"),
        "Guaranteed",
        "Running",
    ));
    assert!(matches!(next_call(&mut rx).await, Call::Apply { .. }));
    api.set_silently(
        Some(pod("a", a, NODE, Some("acme.bot"), "Burstable", "Running")),
        Some(b),
    );
    api.set_silently(
        Some(pod("d", d, NODE, Some("acme.d"), "BestEffort", "Pending")),
        None,
    );
    let lists_before = api.lock().lists_ok;
    api.expire_watches();
    assert_eq!(
        next_call(&mut rx).await,
        Call::Apply {
            pod: pref("a", a),
            agent: Ok("acme.bot".into()),
            cgroups: vec![dir_a.clone()],
        }
    );
    assert_eq!(
        next_call(&mut rx).await,
        Call::Apply {
            pod: pref("d", d),
            agent: Ok("acme.d".into()),
            cgroups: vec![systemd_pod_dir(root, d, "BestEffort")],
        }
    );
    assert_eq!(
        next_call(&mut rx).await,
        Call::Resync(vec![pref("a", a), pref("d", d)]),
        "b vanished while disconnected: the resync leaves it out"
    );
    assert_eq!(
        api.lock().lists_ok,
        lists_before + 1,
        "410 → one full relist"
    );
    api.wait_for("the watch after the relist", |s| s.watches_opened == 2)
        .await;

    // A failing list after another 410: back off, list again, resync (nothing changed: no apply).
    api.lock().fail_next_lists = 2;
    api.expire_watches();
    assert_eq!(
        next_call(&mut rx).await,
        Call::Resync(vec![pref("a", a), pref("d", d)])
    );
    {
        let s = api.lock();
        assert_eq!(s.lists_failed, 2);
        assert_eq!(s.lists_ok, lists_before + 2);
        assert!(
            s.unexpected.is_empty(),
            "unexpected requests: {:?}",
            s.unexpected
        );
        // Every list and watch asked for exactly this node's labelled pods.
        let pod_requests: Vec<&Recorded> = s
            .requests
            .iter()
            .filter(|r| r.path == "/api/v1/pods")
            .collect();
        assert!(pod_requests.len() >= 7, "{}", pod_requests.len());
        for r in pod_requests {
            assert_eq!(r.query["fieldSelector"], "spec.nodeName=node-1", "{r:?}");
            assert_eq!(r.query["labelSelector"], AGENT_LABEL, "{r:?}");
        }
    }

    shutdown.cancel();
    let res = tokio::time::timeout(STEP, task)
        .await
        .expect("watcher stops on cancel")
        .expect("task");
    assert!(res.is_ok(), "{res:?}");
    assert!(rx.try_recv().is_err(), "no calls left over");
}

#[tokio::test]
async fn watcher_refuses_an_empty_node_name_at_once() {
    let api = FakeApi::default();
    let addr = api.clone().start().await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let res = tokio::time::timeout(
        STEP,
        run_watcher(
            client_for(addr),
            WatcherConfig::new(""),
            CgroupResolver::new("/nonexistent"),
            Arc::new(Recorder(tx)),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("returns at once");
    assert!(matches!(res, Err(K8sError::NoNodeName)), "{res:?}");
    assert!(api.lock().requests.is_empty(), "no API call was made");
}
