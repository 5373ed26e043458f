//! The client side toward providers: verify against the system roots plus `SPENDGUARD_UPSTREAM_CA`.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("cannot read SPENDGUARD_UPSTREAM_CA {path}: {detail}")]
    ExtraCa { path: String, detail: String },
    #[error("no trusted root certificates: the system store is empty and SPENDGUARD_UPSTREAM_CA is not set (install ca-certificates)")]
    NoRoots,
    #[error("TLS client setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A client config with ALPN h2 + http/1.1 (negotiated with the provider independently of the client).
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, UpstreamTlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!("system root store: {e}");
    }
    let (added, _) = roots.add_parsable_certificates(native.certs);
    let mut extra = 0;
    if let Some(path) = extra_ca {
        let err = |detail: String| UpstreamTlsError::ExtraCa {
            path: path.display().to_string(),
            detail,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("no PEM certificates in the file".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| err(e.to_string()))?;
            extra += 1;
        }
    }
    if roots.is_empty() {
        return Err(UpstreamTlsError::NoRoots);
    }
    tracing::debug!(system = added, extra, "upstream trust roots");
    let mut cfg = ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
