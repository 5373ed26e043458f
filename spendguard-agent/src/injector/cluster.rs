//! What the injector asks of the API server, and nothing more (deploy/injector.yaml's RBAC):
//! - its own MutatingWebhookConfiguration (get, update; by name): the `caBundle` of every webhook
//!   in it is set to the serving CA bundle;
//! - the trust ConfigMap (create; get and update by name) in every namespace that has a labelled
//!   pod: a pod can mount ConfigMaps of its own namespace only, and copying the bundle into just
//!   those namespaces keeps ~0.5 MB per namespace out of etcd elsewhere (Istio's
//!   `istio-ca-root-cert` is the same pattern);
//! - pods (list, cluster-wide, label selector spendguard.io/agent, metadata only): which
//!   namespaces need the ConfigMap, at start and at every resync.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{ListParams, PostParams};
use kube::Api;

use super::bundle::TrustBundle;
use super::patch::AGENT_LABEL;

/// The trust ConfigMap's annotation holding [`TrustBundle::digest`]: equal means current.
pub const DIGEST_ANNOTATION: &str = "spendguard.io/trust-digest";
/// Marks the ConfigMaps the injector owns (it never touches one without it).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "spendguard-injector");

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("MutatingWebhookConfiguration {name} not found: apply deploy/ (kubectl apply -k deploy/) so the injector can publish its CA into it")]
    NoWebhookConfig { name: String },
    #[error("cannot {what}: {source} (check the injector's RBAC in deploy/injector.yaml)")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "cannot {what}: it changed under us 5 times in a row (another writer fights over it?)"
    )]
    Conflicts { what: String },
    #[error("ConfigMap {namespace}/{name} exists but is not managed by the injector (no label {}={}): rename or delete it, or point --trust-configmap elsewhere", MANAGED_BY.0, MANAGED_BY.1)]
    Foreign { namespace: String, name: String },
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// At most this many other replicas' CAs are kept in the caBundle (newest first): CAs of replicas
/// that died stay until they expire, and this bounds them. A live replica re-adds its own at every
/// resync.
pub const MAX_OTHER_CAS: usize = 16;

/// The caBundle to publish: `ours` first, then the unexpired injector CAs (by common name) of other
/// replicas found in `existing`, newest first, at most [`MAX_OTHER_CAS`]. Anything else in
/// `existing` (not an injector CA, expired, unparsable) is dropped.
pub fn merge_ca_bundle(existing: &[u8], ours: &str, now: std::time::SystemTime) -> String {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;
    let own: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ours.as_bytes())
        .filter_map(Result::ok)
        .collect();
    let now_unix = now
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let mut others: Vec<(i64, CertificateDer<'static>)> = Vec::new();
    for der in CertificateDer::pem_slice_iter(existing).filter_map(Result::ok) {
        if own.contains(&der) || others.iter().any(|(_, d)| d == &der) {
            continue;
        }
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
            continue;
        };
        let ours_by_name = cert
            .subject()
            .iter_common_name()
            .any(|cn| cn.as_str().ok() == Some(super::serving::CA_COMMON_NAME));
        if ours_by_name && cert.validity().not_after.timestamp() > now_unix {
            others.push((cert.validity().not_before.timestamp(), der.clone()));
        }
    }
    others.sort_by_key(|o| std::cmp::Reverse(o.0));
    others.truncate(MAX_OTHER_CAS);
    let mut out = ours.to_string();
    for (_, der) in others {
        out.push_str(&super::bundle::pem(&der));
    }
    out
}

/// Merges `pem` (this replica's CA bundle) into the `caBundle` of every webhook in the
/// configuration `name` ([`merge_ca_bundle`]). Returns whether it changed.
pub async fn publish_ca_bundle(
    client: &kube::Client,
    name: &str,
    pem: &str,
) -> Result<bool, ClusterError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    // Update with the read resourceVersion; on a conflict (someone else wrote it) read again.
    for _ in 0..5 {
        let mut cfg = match api.get(name).await {
            Ok(c) => c,
            Err(e) if is_not_found(&e) => {
                return Err(ClusterError::NoWebhookConfig {
                    name: name.to_string(),
                })
            }
            Err(e) => {
                return Err(api_err(
                    format!("get MutatingWebhookConfiguration {name}"),
                    e,
                ))
            }
        };
        let now = std::time::SystemTime::now();
        let mut changed = false;
        for wh in cfg.webhooks.iter_mut().flatten() {
            let existing = wh.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice());
            let want =
                ByteString(merge_ca_bundle(existing.unwrap_or_default(), pem, now).into_bytes());
            if wh.client_config.ca_bundle.as_ref() != Some(&want) {
                wh.client_config.ca_bundle = Some(want.clone());
                changed = true;
            }
        }
        if !changed {
            return Ok(false);
        }
        match api.replace(name, &PostParams::default(), &cfg).await {
            Ok(_) => return Ok(true),
            Err(e) if is_conflict(&e) => continue,
            Err(e) => {
                return Err(api_err(
                    format!("update MutatingWebhookConfiguration {name}"),
                    e,
                ))
            }
        }
    }
    Err(ClusterError::Conflicts {
        what: format!("update MutatingWebhookConfiguration {name}"),
    })
}

fn api_err(what: String, source: kube::Error) -> ClusterError {
    ClusterError::Api { what, source }
}

/// The ConfigMap the injector wants in a namespace.
fn desired(namespace: &str, name: &str, bundle: &TrustBundle) -> ConfigMap {
    let (data, binary) = bundle.config_map_data();
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
                (
                    "app.kubernetes.io/name".to_string(),
                    "spendguard".to_string(),
                ),
            ])),
            annotations: Some(BTreeMap::from([(
                DIGEST_ANNOTATION.to_string(),
                bundle.digest.clone(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(data),
        binary_data: Some(
            binary
                .into_iter()
                .map(|(k, v)| (k, ByteString(v)))
                .collect(),
        ),
        ..ConfigMap::default()
    }
}

/// Creates or refreshes the trust ConfigMap `name` in `namespace`. Returns whether it wrote.
pub async fn ensure_configmap(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    bundle: &TrustBundle,
) -> Result<bool, ClusterError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let want = desired(namespace, name, bundle);
    for _ in 0..5 {
        match api.get(name).await {
            Err(e) if is_not_found(&e) => match api.create(&PostParams::default(), &want).await {
                Ok(_) => return Ok(true),
                // Created meanwhile (another replica, or a concurrent admission): look again.
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(api_err(format!("create ConfigMap {namespace}/{name}"), e)),
            },
            Err(e) => return Err(api_err(format!("get ConfigMap {namespace}/{name}"), e)),
            Ok(have) => {
                let labels = have.metadata.labels.clone().unwrap_or_default();
                if labels.get(MANAGED_BY.0).map(String::as_str) != Some(MANAGED_BY.1) {
                    return Err(ClusterError::Foreign {
                        namespace: namespace.to_string(),
                        name: name.to_string(),
                    });
                }
                let digest = have
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(DIGEST_ANNOTATION));
                if digest == Some(&bundle.digest) {
                    return Ok(false);
                }
                let mut next = want.clone();
                next.metadata.resource_version = have.metadata.resource_version.clone();
                match api.replace(name, &PostParams::default(), &next).await {
                    Ok(_) => return Ok(true),
                    Err(e) if is_conflict(&e) => continue,
                    Err(e) => {
                        return Err(api_err(format!("update ConfigMap {namespace}/{name}"), e))
                    }
                }
            }
        }
    }
    Err(ClusterError::Conflicts {
        what: format!("write ConfigMap {namespace}/{name}"),
    })
}

/// The namespaces that have at least one labelled pod.
pub async fn labelled_namespaces(client: &kube::Client) -> Result<BTreeSet<String>, ClusterError> {
    let api: Api<Pod> = Api::all(client.clone());
    let lp = ListParams::default().labels(AGENT_LABEL);
    let pods = api
        .list_metadata(&lp)
        .await
        .map_err(|e| api_err("list pods labelled spendguard.io/agent".into(), e))?;
    Ok(pods
        .items
        .into_iter()
        .filter_map(|p| p.metadata.namespace)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::injector::serving::{Rotation, ServingCerts};
    use std::time::{Duration, SystemTime};

    #[test]
    fn the_ca_bundle_keeps_other_replicas_unexpired_cas_and_drops_the_rest() {
        let t0 = SystemTime::now();
        let sans = ["injector.test".to_string()];
        let rot = Rotation::new(Duration::from_secs(3600), Duration::from_secs(600));
        let a = ServingCerts::new(&sans, rot, t0).expect("a");
        let b = ServingCerts::new(&sans, rot, t0 + Duration::from_secs(1)).expect("b");
        let stranger = crate::injector::bundle::pem(&{
            let key = rcgen::KeyPair::generate().expect("key");
            rcgen::CertificateParams::new(vec!["x".to_string()])
                .expect("p")
                .self_signed(&key)
                .expect("cert")
                .der()
                .clone()
        });
        // B publishes into a bundle holding A's CA and a stranger: A's stays, the stranger goes.
        let existing = format!("{}{}", a.ca_bundle_pem(), stranger);
        let merged = merge_ca_bundle(existing.as_bytes(), &b.ca_bundle_pem(), t0);
        assert!(merged.starts_with(&b.ca_bundle_pem()), "ours first");
        assert!(
            merged.contains(a.ca_bundle_pem().trim()),
            "the other replica's CA kept"
        );
        assert!(
            !merged.contains(stranger.trim()),
            "not an injector CA: dropped"
        );
        assert_eq!(merged.matches("BEGIN CERTIFICATE").count(), 2);
        // Publishing again changes nothing (no churn of the configuration).
        assert_eq!(
            merge_ca_bundle(merged.as_bytes(), &b.ca_bundle_pem(), t0),
            merged
        );
        // After A's CA expired, it is dropped.
        let later = t0 + Duration::from_secs(3700);
        assert_eq!(
            merge_ca_bundle(merged.as_bytes(), &b.ca_bundle_pem(), later),
            b.ca_bundle_pem()
        );
        // Garbage in the existing caBundle is no obstacle.
        assert_eq!(
            merge_ca_bundle(b"junk", &b.ca_bundle_pem(), t0),
            b.ca_bundle_pem()
        );
    }
}
