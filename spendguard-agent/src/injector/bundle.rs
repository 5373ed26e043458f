//! The trust material a labelled pod gets: the system roots plus SpendGuard's CA as a PEM bundle,
//! the CA alone, and the same certificates as a PKCS#12 truststore for Java.
//!
//! The system roots are the injector image's (Debian's `ca-certificates`, or `--system-roots`):
//! the bundle replaces a workload's own roots (SSL_CERT_FILE and friends), so it must hold every
//! public root the workload would otherwise trust. Rebuilding the image refreshes them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use p12_keystore::{Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use sha2::{Digest as _, Sha256};

use super::patch::{BUNDLE_FILE, CA_FILE, TRUSTSTORE_FILE, TRUSTSTORE_PASSWORD};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {path}: {source} (is the SpendGuard CA ConfigMap mounted? see deploy/injector.yaml)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate{detail} (replace the placeholder in deploy/configmap-ca.yaml with the CA's ca.crt)")]
    NoCertificate { path: PathBuf, detail: String },
    #[error("{path}: certificate {index} is not valid X.509: {detail}")]
    BadCertificate {
        path: PathBuf,
        index: usize,
        detail: String,
    },
    #[error("no system root certificates found ({detail}); install ca-certificates in the image or pass --system-roots FILE")]
    NoSystemRoots { detail: String },
    #[error("cannot write the PKCS#12 truststore: {0}")]
    Truststore(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The files of the trust ConfigMap, built once per change of their inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustBundle {
    /// System roots then the SpendGuard CA, PEM ([`BUNDLE_FILE`]).
    pub bundle_pem: String,
    /// The SpendGuard CA alone, PEM ([`CA_FILE`]).
    pub ca_pem: String,
    /// PKCS#12 truststore of the bundle's certificates ([`TRUSTSTORE_FILE`]).
    pub truststore: Vec<u8>,
    /// SHA-256 of the certificates (hex). The truststore's salts are random, so its bytes differ
    /// on every build: this is what says whether a ConfigMap is current.
    pub digest: String,
}

/// Every certificate in a PEM file, in order; at least one.
pub fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, BundleError> {
    let text = std::fs::read(path).map_err(|source| BundleError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(&text) {
        match item {
            Ok(c) => certs.push(c),
            Err(e) => {
                return Err(BundleError::NoCertificate {
                    path: path.to_path_buf(),
                    detail: format!(" ({e})"),
                })
            }
        }
    }
    if certs.is_empty() {
        return Err(BundleError::NoCertificate {
            path: path.to_path_buf(),
            detail: String::new(),
        });
    }
    for (index, c) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(c).map_err(|e| BundleError::BadCertificate {
            path: path.to_path_buf(),
            index,
            detail: e.to_string(),
        })?;
    }
    Ok(certs)
}

/// The system roots: `file` if given, else the platform's (rustls-native-certs: the OpenSSL
/// locations, `SSL_CERT_FILE`/`SSL_CERT_DIR` if set).
pub fn system_roots(file: Option<&Path>) -> Result<Vec<CertificateDer<'static>>, BundleError> {
    if let Some(f) = file {
        return read_pem_certs(f);
    }
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        let detail = found
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(BundleError::NoSystemRoots { detail });
    }
    // Unreadable single files are skipped (the platform store may hold junk); the rest is enough.
    Ok(found.certs)
}

/// Builds the bundle from the roots and the CA (duplicates dropped: the CA may already be among
/// the roots, e.g. on a node image that trusts it).
pub fn build(
    roots: &[CertificateDer<'static>],
    ca: &[CertificateDer<'static>],
) -> Result<TrustBundle, BundleError> {
    let mut seen = std::collections::HashSet::new();
    let mut all: Vec<(String, &CertificateDer<'static>)> = Vec::new();
    for (i, c) in ca.iter().enumerate() {
        if seen.insert(c.as_ref().to_vec()) {
            all.push((format!("spendguard-ca-{i}"), c));
        }
    }
    let ca_count = all.len();
    for (i, c) in roots.iter().enumerate() {
        if seen.insert(c.as_ref().to_vec()) {
            all.push((format!("system-root-{i:04}"), c));
        }
    }
    // Roots first in the PEM (tools that print "the first certificate" show a familiar one),
    // SpendGuard's at the end with a comment naming it.
    let mut bundle_pem = String::new();
    for (_, c) in &all[ca_count..] {
        bundle_pem.push_str(&pem(c));
    }
    bundle_pem
        .push_str("# SpendGuard CA (the node agent terminates TLS to LLM providers with it)\n");
    let mut ca_pem = String::new();
    for (_, c) in &all[..ca_count] {
        ca_pem.push_str(&pem(c));
    }
    bundle_pem.push_str(&ca_pem);

    let mut store = KeyStore::new();
    for (alias, c) in &all {
        let cert = Certificate::from_der(c.as_ref())
            .map_err(|e| BundleError::Truststore(format!("{alias}: {e}")))?;
        store.add_entry(alias, KeyStoreEntry::Certificate(cert));
    }
    // SHA-1 MAC and 3DES: every JDK since 8 reads them (HMAC-SHA256 MACs need 8u301 / 11.0.12).
    // Nothing in a truststore is secret, so the older algorithms cost nothing.
    let truststore = store
        .writer(TRUSTSTORE_PASSWORD)
        .encryption_algorithm(EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc)
        .mac_algorithm(MacAlgorithm::HmacSha1)
        .write()
        .map_err(|e| BundleError::Truststore(e.to_string()))?;

    let mut h = Sha256::new();
    for (alias, c) in &all {
        h.update(alias.as_bytes());
        h.update(c.as_ref());
    }
    let digest = h
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    Ok(TrustBundle {
        bundle_pem,
        ca_pem,
        truststore,
        digest,
    })
}

impl TrustBundle {
    /// Reads the CA file and the system roots and builds the bundle.
    pub fn load(ca_file: &Path, roots_file: Option<&Path>) -> Result<TrustBundle, BundleError> {
        let ca = read_pem_certs(ca_file)?;
        let roots = system_roots(roots_file)?;
        build(&roots, &ca)
    }

    /// The ConfigMap's `data` (PEM files) and `binaryData` (the truststore).
    pub fn config_map_data(&self) -> (BTreeMap<String, String>, BTreeMap<String, Vec<u8>>) {
        let data = BTreeMap::from([
            (BUNDLE_FILE.to_string(), self.bundle_pem.clone()),
            (CA_FILE.to_string(), self.ca_pem.clone()),
        ]);
        let binary = BTreeMap::from([(TRUSTSTORE_FILE.to_string(), self.truststore.clone())]);
        (data, binary)
    }

    /// Writes the three files into `dir` (what a pod sees at the mount path), each atomically.
    pub fn write_dir(&self, dir: &Path) -> Result<(), BundleError> {
        std::fs::create_dir_all(dir).map_err(|source| BundleError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        for (name, bytes) in [
            (BUNDLE_FILE, self.bundle_pem.as_bytes()),
            (CA_FILE, self.ca_pem.as_bytes()),
            (TRUSTSTORE_FILE, self.truststore.as_slice()),
        ] {
            let path = dir.join(name);
            crate::identity::tags::write_atomic(&path, bytes, 0o644)
                .map_err(|source| BundleError::Write { path, source })?;
        }
        Ok(())
    }
}

/// One certificate as PEM (64-column base64, as OpenSSL writes it).
pub fn pem(der: &CertificateDer<'_>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(cn: &str) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn bundle_holds_roots_then_ca_without_duplicates_and_the_truststore_reads_back() {
        let (r1, r2, ca) = (
            self_signed("root one"),
            self_signed("root two"),
            self_signed("sg"),
        );
        // The CA is also among the roots: it must appear once.
        let b = build(
            &[r1.clone(), r2.clone(), ca.clone()],
            std::slice::from_ref(&ca),
        )
        .expect("build");
        let parsed: Vec<_> = CertificateDer::pem_slice_iter(b.bundle_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("bundle PEM");
        assert_eq!(parsed, vec![r1.clone(), r2.clone(), ca.clone()]);
        let ca_only: Vec<_> = CertificateDer::pem_slice_iter(b.ca_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("CA PEM");
        assert_eq!(ca_only, vec![ca.clone()]);

        let store = KeyStore::from_pkcs12(
            &b.truststore,
            TRUSTSTORE_PASSWORD,
            p12_keystore::Pkcs12ImportPolicy::Strict,
        )
        .expect("truststore parses with its password");
        let mut ders: Vec<Vec<u8>> = store
            .entries()
            .filter_map(|(_, e)| match e {
                KeyStoreEntry::Certificate(c) => Some(c.as_der().to_vec()),
                _ => None,
            })
            .collect();
        ders.sort();
        let mut want = vec![r1.to_vec(), r2.to_vec(), ca.to_vec()];
        want.sort();
        assert_eq!(ders, want);
        assert!(KeyStore::from_pkcs12(
            &b.truststore,
            "wrong",
            p12_keystore::Pkcs12ImportPolicy::Strict
        )
        .is_err());

        // Same inputs, same digest (though the truststore bytes differ); another CA, another one.
        let again = build(&[r1.clone(), r2.clone()], std::slice::from_ref(&ca)).expect("again");
        assert_eq!(again.digest, b.digest);
        assert_ne!(again.truststore, b.truststore, "random salts");
        let other = build(&[r1, r2], &[self_signed("other")]).expect("other");
        assert_ne!(other.digest, b.digest);
    }

    #[test]
    fn the_ca_file_placeholder_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().expect("dir");
        let f = dir.path().join("ca.crt");
        std::fs::write(
            &f,
            "REPLACE WITH THE PEM OF THE SPENDGUARD CA CERTIFICATE\n",
        )
        .expect("w");
        let e = read_pem_certs(&f).expect_err("placeholder");
        assert!(e.to_string().contains("configmap-ca.yaml"), "{e}");
        std::fs::write(&f, pem(&self_signed("ok"))).expect("w");
        assert_eq!(read_pem_certs(&f).expect("one").len(), 1);
    }
}
