//! One AdmissionReview in, one out: which requests the injector answers with a patch.

use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;

use super::patch;

/// What the server must do besides answering.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    /// The AdmissionReview to send back (JSON).
    pub body: Vec<u8>,
    /// The namespace whose trust ConfigMap must exist before the pod starts (a pod was patched and
    /// the request is not a dry run: a dry run must have no side effects).
    pub ensure_namespace: Option<String>,
    /// For the log.
    pub summary: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the request body is not an admission.k8s.io/v1 AdmissionReview of a Pod: {0}")]
    Parse(serde_json::Error),
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("cannot serialize the answer: {0}")]
    Serialize(String),
}

/// Answers one AdmissionReview. `configmap` is the trust ConfigMap's name in every namespace.
///
/// Anything that is not the CREATE of a labelled pod is allowed unchanged: the injector never
/// denies a request (it only adds trust), so a bug here cannot block workloads.
pub fn answer(body: &[u8], configmap: &str) -> Result<Answer, ReviewError> {
    let review: AdmissionReview<Pod> = serde_json::from_slice(body).map_err(ReviewError::Parse)?;
    let req: AdmissionRequest<Pod> = review.try_into().map_err(|_| ReviewError::NoRequest)?;
    let mut resp = AdmissionResponse::from(&req);
    let who = format!(
        "{}/{}",
        req.namespace.as_deref().unwrap_or(""),
        req.object
            .as_ref()
            .and_then(|p| p.metadata.name.clone().or(p.metadata.generate_name.clone()))
            .unwrap_or_default()
    );
    let mut ensure_namespace = None;
    let summary;
    match (&req.operation, &req.object, req.kind.kind.as_str()) {
        (Operation::Create, Some(pod), "Pod") if req.sub_resource.is_none() => {
            let m = patch::mutate(pod, configmap);
            if !m.warnings.is_empty() {
                resp.warnings = Some(m.warnings.clone());
            }
            if !patch::wants_trust(pod) {
                summary = format!(
                    "pod {who}: not labelled {} (or opted out), unchanged",
                    patch::AGENT_LABEL
                );
            } else if m.is_empty() {
                summary = format!("pod {who}: has the trust already, unchanged");
            } else {
                summary = format!("pod {who}: {} patch operations", m.patch.0.len());
                resp = resp
                    .with_patch(m.patch)
                    .map_err(|e| ReviewError::Serialize(e.to_string()))?;
                if !req.dry_run {
                    ensure_namespace = req.namespace.clone();
                }
            }
        }
        (op, _, kind) => summary = format!("{op:?} {kind} {who}: not a pod creation, allowed"),
    }
    let out: AdmissionReview<DynamicObject> = resp.into_review();
    let body = serde_json::to_vec(&out).map_err(|e| ReviewError::Serialize(e.to_string()))?;
    Ok(Answer {
        body,
        ensure_namespace,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn review(op: &str, kind: &str, dry_run: bool, labelled: bool) -> Vec<u8> {
        let labels = if labelled {
            json!({"spendguard.io/agent": "acme.a"})
        } else {
            json!({})
        };
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u1",
                "kind": {"group": "", "version": "v1", "kind": kind},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "ns", "operation": op, "userInfo": {}, "dryRun": dry_run,
                "object": {"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": "p", "labels": labels},
                           "spec": {"containers": [{"name": "c", "image": "x"}]}},
            }
        }))
        .expect("json")
    }

    fn response(a: &Answer) -> Value {
        let v: Value = serde_json::from_slice(&a.body).expect("json");
        assert_eq!(v["response"]["uid"], "u1");
        assert_eq!(v["response"]["allowed"], true);
        v["response"].clone()
    }

    #[test]
    fn only_a_labelled_pod_creation_is_patched_and_only_a_real_one_writes_the_configmap() {
        let a = answer(&review("CREATE", "Pod", false, true), "cm").expect("answer");
        assert_eq!(response(&a)["patchType"], "JSONPatch");
        assert_eq!(a.ensure_namespace.as_deref(), Some("ns"));
        // A dry run gets the same patch but no side effect.
        let a = answer(&review("CREATE", "Pod", true, true), "cm").expect("answer");
        assert_eq!(response(&a)["patchType"], "JSONPatch");
        assert_eq!(a.ensure_namespace, None);
        for body in [
            review("UPDATE", "Pod", false, true),
            review("CREATE", "Pod", false, false),
        ] {
            let a = answer(&body, "cm").expect("answer");
            assert!(response(&a).get("patch").is_none(), "{}", a.summary);
            assert_eq!(a.ensure_namespace, None);
        }
        assert!(matches!(answer(b"{}", "cm"), Err(ReviewError::Parse(_))));
        assert!(matches!(
            answer(
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
                "cm"
            ),
            Err(ReviewError::NoRequest)
        ));
    }
}
