//! SpendGuard's certificate authority.
//!
//! Generated with rcgen on first start and kept in the state dir (key 0600, never logged, never sent
//! over the control socket), or taken from `SPENDGUARD_CA_CERT`/`SPENDGUARD_CA_KEY` (one CA for a whole
//! cluster, from a Secret). Leaves are minted per SNI by hudsucker's `RcgenAuthority`: exact host name
//! as the only SAN (no wildcards), short validity, cached with a bound.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hudsucker::certificate_authority::{CertificateAuthority as _, RcgenAuthority};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;

use crate::identity::tags::write_atomic;
use crate::paths;

/// How many per-host server configs stay cached (a node talks to a handful of provider hosts; Azure
/// resource hosts can add hundreds).
pub const LEAF_CACHE_SIZE: u64 = 1024;
/// CA validity: long, because every workload trusts it; rotating it means redeploying trust.
const CA_VALIDITY_DAYS: i64 = 3650;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read CA file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write CA file {path}: {source} (is the state directory writable?)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA key {path} is readable by other users (mode {mode:o}); chmod 600 it")]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("CA certificate or key is invalid: {0} (expected PEM: a CA certificate and its PKCS#8 private key)")]
    Invalid(String),
    #[error("the CA {present} exists but {missing} does not: refusing to generate a new CA over it (every workload trusts the old one). Restore {missing} from a backup or the cluster Secret; or, to start over, remove both files: a new CA is generated at the next start and every workload must then trust it (`spendguard ca export`)")]
    Half { present: PathBuf, missing: PathBuf },
    #[error("the CA files {cert} / {key} are damaged: {detail}. Restore them from a backup or the cluster Secret; or, to start over, remove both: a new CA is generated at the next start and every workload must then trust it (`spendguard ca export`)")]
    Damaged {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
    #[error("{0:?} is not a host name a certificate can be issued for")]
    BadHost(String),
}

pub struct Ca {
    cert_pem: String,
    authority: RcgenAuthority,
}

impl Ca {
    /// The configured CA, or the one in the state dir, generating it on first start.
    pub fn load_or_generate(
        state_dir: &Path,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Ca, CaError> {
        let (cert_path, key_path) = match (cert, key) {
            (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
            _ => {
                let (c, k) = (
                    paths::ca_cert_file(state_dir),
                    paths::ca_key_file(state_dir),
                );
                match (c.exists(), k.exists()) {
                    (true, false) => {
                        return Err(CaError::Half {
                            present: c,
                            missing: k,
                        })
                    }
                    (false, true) => {
                        return Err(CaError::Half {
                            present: k,
                            missing: c,
                        })
                    }
                    _ => {}
                }
                if !c.exists() {
                    let (cert_pem, key_pem) = generate("SpendGuard node CA")?;
                    write_atomic(&k, key_pem.as_bytes(), paths::PRIVATE_FILE_MODE).map_err(
                        |source| CaError::Write {
                            path: k.clone(),
                            source,
                        },
                    )?;
                    write_atomic(&c, cert_pem.as_bytes(), paths::PUBLIC_FILE_MODE).map_err(
                        |source| CaError::Write {
                            path: c.clone(),
                            source,
                        },
                    )?;
                    tracing::info!(cert = %c.display(), "generated a new SpendGuard CA; workloads must trust it (spendguard ca export)");
                }
                (c, k)
            }
        };
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(|source| CaError::Read {
            path: cert_path.clone(),
            source,
        })?;
        let meta = std::fs::metadata(&key_path).map_err(|source| CaError::Read {
            path: key_path.clone(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        // Kubernetes Secret volumes are 0644 by default unless defaultMode is set; refuse world-readable only.
        if mode & 0o004 != 0 {
            return Err(CaError::KeyMode {
                path: key_path,
                mode,
            });
        }
        let key_pem = std::fs::read_to_string(&key_path).map_err(|source| CaError::Read {
            path: key_path.clone(),
            source,
        })?;
        Ca::from_pem(&cert_pem, &key_pem).map_err(|e| match e {
            CaError::Invalid(detail) => CaError::Damaged {
                cert: cert_path,
                key: key_path,
                detail,
            },
            other => other,
        })
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Invalid(e.to_string()))?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| CaError::Invalid(e.to_string()))?;
        let provider = rustls::crypto::ring::default_provider();
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            authority: RcgenAuthority::new(issuer, LEAF_CACHE_SIZE, provider),
        })
    }

    /// The CA certificate (PEM) that workloads must trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A TLS server config whose certificate names exactly `sni` (ALPN h2, http/1.1).
    pub async fn server_config(&self, sni: &str) -> Result<Arc<ServerConfig>, CaError> {
        // hudsucker's minting panics on a name that is not IA5; rustls only hands us valid DNS names,
        // but check anyway so a bug elsewhere cannot crash a connection task.
        if sni.is_empty()
            || !sni
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(CaError::BadHost(sni.to_string()));
        }
        let authority: http::uri::Authority =
            sni.parse().map_err(|_| CaError::BadHost(sni.to_string()))?;
        Ok(self.authority.gen_server_config(&authority).await)
    }
}

/// A new CA: (certificate PEM, PKCS#8 key PEM).
pub fn generate(common_name: &str) -> Result<(String, String), CaError> {
    let key = KeyPair::generate().map_err(|e| CaError::Invalid(e.to_string()))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "SpendGuard");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time_now();
    params.not_before = now - rcgen_duration_days(1);
    params.not_after = now + rcgen_duration_days(CA_VALIDITY_DAYS);
    let cert = params
        .self_signed(&key)
        .map_err(|e| CaError::Invalid(e.to_string()))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// `spendguard ca generate --out DIR`: writes ca.crt (0644) and ca.key (0600) for a cluster-wide CA.
pub fn generate_into(dir: &Path) -> Result<(PathBuf, PathBuf), CaError> {
    std::fs::create_dir_all(dir).map_err(|source| CaError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let (cert, key) = generate("SpendGuard cluster CA")?;
    let (c, k) = (dir.join("ca.crt"), dir.join("ca.key"));
    for p in [&c, &k] {
        if p.exists() {
            return Err(CaError::Write {
                path: p.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "refusing to overwrite an existing CA file",
                ),
            });
        }
    }
    write_atomic(&k, key.as_bytes(), paths::PRIVATE_FILE_MODE).map_err(|source| {
        CaError::Write {
            path: k.clone(),
            source,
        }
    })?;
    write_atomic(&c, cert.as_bytes(), paths::PUBLIC_FILE_MODE).map_err(|source| {
        CaError::Write {
            path: c.clone(),
            source,
        }
    })?;
    Ok((c, k))
}

fn time_now() -> rcgen_time::OffsetDateTime {
    rcgen_time::OffsetDateTime::now_utc()
}
fn rcgen_duration_days(d: i64) -> rcgen_time::Duration {
    rcgen_time::Duration::days(d)
}
use time as rcgen_time;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn generates_keeps_and_reuses_the_ca_and_mints_exact_leaves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_generate(dir.path(), None, None).expect("generate");
        let key = paths::ca_key_file(dir.path());
        assert_eq!(
            std::fs::metadata(&key).expect("key").permissions().mode() & 0o777,
            0o600
        );
        let again = Ca::load_or_generate(dir.path(), None, None).expect("reload");
        assert_eq!(
            ca.cert_pem(),
            again.cert_pem(),
            "the CA must survive restarts"
        );

        let cfg = ca.server_config("api.openai.com").await.expect("leaf");
        assert_eq!(
            cfg.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(ca.server_config("bad host").await.is_err());

        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            Ca::load_or_generate(dir.path(), None, None),
            Err(CaError::KeyMode { .. })
        ));
    }

    #[test]
    fn generate_into_refuses_to_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        generate_into(dir.path()).expect("first");
        assert!(generate_into(dir.path()).is_err());
        assert!(Ca::from_pem("junk", "junk").is_err());
    }
}
