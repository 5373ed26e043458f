//! The injector's own serving certificate: a CA the injector mints itself, whose certificate it
//! publishes as the `caBundle` of its MutatingWebhookConfiguration, and a leaf for the Service name
//! signed by it — the way most webhooks that do not depend on cert-manager do it.
//!
//! Why not the cluster CA through the CertificateSigningRequest API: no built-in signer issues
//! serving certificates for webhooks (`kubernetes.io/kubelet-serving` is for kubelets only, and
//! `legacy-unknown` is not signed since 1.22), so a CSR would need an external signer anyway; and
//! the API server only has to trust what the `caBundle` says. A self-minted CA makes the install
//! work on every cluster with one Deployment and no controller-manager or cert-manager.
//!
//! Renewal: the leaf is re-minted when two thirds of its lifetime are gone and hot-swapped (new
//! handshakes get it; no restart). The CA rolls at two thirds of its lifetime too: the new CA is
//! published BESIDE the old one (the bundle then holds both), and only once that publication
//! succeeded and [`Rotation::publish_grace`] passed (the API server's webhook informer must have
//! seen it) is the leaf switched to the new CA; the old CA leaves the bundle when it expires.
//! Everything here is a pure function of the clock passed in, so the tests drive it with a fake
//! one.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("cannot mint the injector's {what}: {detail}")]
    Mint { what: &'static str, detail: String },
    #[error("--san {0:?} is neither a DNS name nor an IP address")]
    BadSan(String),
}

/// The common name of every injector serving CA: how one replica recognises the others' CAs in
/// the shared caBundle (see `cluster::merge_ca_bundle`).
pub const CA_COMMON_NAME: &str = "SpendGuard injector webhook CA";

/// Lifetimes of the serving CA and leaf.
#[derive(Clone, Copy, Debug)]
pub struct Rotation {
    pub ca_lifetime: Duration,
    pub leaf_lifetime: Duration,
    /// After a CA roll, how long the new CA must have been published before leaves come from it.
    pub publish_grace: Duration,
}

impl Rotation {
    /// One year for the CA, one week for the leaf: a leaf outlives an outage of a few days, and
    /// the CA rolls (with overlap) a few times a year at most.
    pub fn production() -> Rotation {
        Rotation::new(
            Duration::from_secs(365 * 24 * 3600),
            Duration::from_secs(7 * 24 * 3600),
        )
    }

    pub fn new(ca_lifetime: Duration, leaf_lifetime: Duration) -> Rotation {
        Rotation {
            ca_lifetime,
            leaf_lifetime,
            publish_grace: (ca_lifetime / 10).min(Duration::from_secs(30)),
        }
    }
}

/// Renew at two thirds of a lifetime: a third is left to retry a failed renewal.
fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    not_before + life * 2 / 3
}

struct MintedCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
    serial: u64,
    not_after: SystemTime,
    renew_at: SystemTime,
}

struct Leaf {
    key: Arc<CertifiedKey>,
    der: CertificateDer<'static>,
    ca_serial: u64,
    renew_at: SystemTime,
}

/// What one [`ServingCerts::renew`] step changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Renewed {
    /// The CA bundle changed: publish it (and call [`ServingCerts::mark_published`]).
    pub ca_bundle: bool,
    /// A new leaf is served.
    pub leaf: bool,
}

/// The serving CA(s) and leaf, and when each is due.
pub struct ServingCerts {
    sans: Vec<String>,
    rotation: Rotation,
    current: MintedCa,
    previous: Option<MintedCa>,
    /// When the current bundle was published (None: not yet).
    published_at: Option<SystemTime>,
    leaf: Leaf,
    serials: u64,
}

impl ServingCerts {
    /// A new CA and a leaf for `sans` (DNS names or IP addresses) at `now`.
    pub fn new(sans: &[String], rotation: Rotation, now: SystemTime) -> Result<Self, ServingError> {
        for s in sans {
            let ok = s.parse::<std::net::IpAddr>().is_ok()
                || (!s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'));
            if !ok {
                return Err(ServingError::BadSan(s.clone()));
            }
        }
        let mut serials = seed_serial(now);
        serials += 1;
        let current = mint_ca(serials, rotation.ca_lifetime, now)?;
        serials += 1;
        let leaf = mint_leaf(sans, &current, serials, rotation.leaf_lifetime, now)?;
        Ok(ServingCerts {
            sans: sans.to_vec(),
            rotation,
            current,
            previous: None,
            published_at: None,
            leaf,
            serials,
        })
    }

    /// The PEM the webhook's `caBundle` must hold: the current CA, and the previous one while it
    /// is still valid (leaves it signed may still be served).
    pub fn ca_bundle_pem(&self) -> String {
        let mut s = self.current.pem.clone();
        if let Some(p) = &self.previous {
            s.push_str(&p.pem);
        }
        s
    }

    /// The leaf now served.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.leaf.key.clone()
    }

    /// The leaf now served (DER), for tests and logs.
    pub fn leaf_der(&self) -> &CertificateDer<'static> {
        &self.leaf.der
    }

    /// The bundle from [`Self::ca_bundle_pem`] has been published (caBundle patched, file
    /// written) at `now`.
    pub fn mark_published(&mut self, now: SystemTime) {
        if self.published_at.is_none() {
            self.published_at = Some(now);
        }
    }

    /// Whether the current bundle is published.
    pub fn is_published(&self) -> bool {
        self.published_at.is_some()
    }

    /// One step at `now`: roll the CA, drop an expired previous CA, re-mint a due leaf.
    pub fn renew(&mut self, now: SystemTime) -> Result<Renewed, ServingError> {
        let mut r = Renewed::default();
        if now >= self.current.renew_at {
            self.serials += 1;
            let new = mint_ca(self.serials, self.rotation.ca_lifetime, now)?;
            self.previous = Some(std::mem::replace(&mut self.current, new));
            self.published_at = None;
            r.ca_bundle = true;
        }
        if self.previous.as_ref().is_some_and(|p| now >= p.not_after) {
            self.previous = None;
            // Nothing signed by it is served any more (leaves never outlive their CA).
            self.published_at = None;
            r.ca_bundle = true;
        }
        let current_usable = self
            .published_at
            .is_some_and(|at| now >= at + self.rotation.publish_grace);
        let from_old_ca = self.leaf.ca_serial != self.current.serial;
        let leaf_due = now >= self.leaf.renew_at;
        if (from_old_ca && current_usable) || leaf_due {
            // A due leaf comes from the old CA while the new one is not yet usable.
            let ca = match (&self.previous, current_usable || !from_old_ca) {
                (Some(p), false) if p.serial == self.leaf.ca_serial => p,
                _ => &self.current,
            };
            self.serials += 1;
            self.leaf = mint_leaf(
                &self.sans,
                ca,
                self.serials,
                self.rotation.leaf_lifetime,
                now,
            )?;
            r.leaf = true;
        }
        Ok(r)
    }

    /// When [`Self::renew`] next has something to do (at most `cap` from now; never zero).
    pub fn next_check(&self, now: SystemTime, cap: Duration) -> Duration {
        let mut at = self.leaf.renew_at.min(self.current.renew_at);
        if let Some(p) = &self.previous {
            at = at.min(p.not_after);
        }
        // Waiting for the switch to a published CA. (Not published yet: the caller retries the
        // publication on its own schedule, then asks again.)
        if let (true, Some(p)) = (
            self.leaf.ca_serial != self.current.serial,
            self.published_at,
        ) {
            at = at.min(p + self.rotation.publish_grace);
        }
        at.duration_since(now)
            .unwrap_or_default()
            .clamp(Duration::from_millis(100), cap)
    }
}

/// Distinct serials across restarts: the clock in microseconds, then counting up.
fn seed_serial(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

fn ts(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

fn mint_ca(serial: u64, lifetime: Duration, now: SystemTime) -> Result<MintedCa, ServingError> {
    let err = |detail: rcgen::Error| ServingError::Mint {
        what: "CA",
        detail: detail.to_string(),
    };
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "SpendGuard");
    params.distinguished_name = dn;
    // Signs only the injector's serving leaves.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(SerialNumber::from(serial));
    // A minute back: the API server's clock may be a little behind ours.
    params.not_before = ts(now) - time::Duration::minutes(1);
    params.not_after = ts(now + lifetime);
    let cert = params.self_signed(&key).map_err(err)?;
    Ok(MintedCa {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
        serial,
        not_after: now + lifetime,
        renew_at: renew_at(now, now + lifetime),
    })
}

fn mint_leaf(
    sans: &[String],
    ca: &MintedCa,
    serial: u64,
    lifetime: Duration,
    now: SystemTime,
) -> Result<Leaf, ServingError> {
    let err = |detail: String| ServingError::Mint {
        what: "serving certificate",
        detail,
    };
    let key = KeyPair::generate().map_err(|e| err(e.to_string()))?;
    let mut params = CertificateParams::new(sans.to_vec()).map_err(|e| err(e.to_string()))?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        sans.first()
            .map(String::as_str)
            .unwrap_or("spendguard-injector"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.serial_number = Some(SerialNumber::from(serial));
    // Never outlives its CA: the CA's expiry would end it anyway, and renewal must see it coming.
    let not_after = (now + lifetime).min(ca.not_after);
    params.not_before = ts(now) - time::Duration::minutes(1);
    params.not_after = ts(not_after);
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(|e| err(e.to_string()))?;
    let der = cert.der().clone();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = crate::tls::provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| err(e.to_string()))?;
    Ok(Leaf {
        key: Arc::new(CertifiedKey::new(vec![der.clone()], signing)),
        der,
        ca_serial: ca.serial,
        renew_at: renew_at(now, not_after),
    })
}

/// The rustls certificate source: every handshake gets the leaf current at that moment.
#[derive(Debug)]
pub struct SwappableCert(arc_swap::ArcSwap<CertifiedKey>);

impl SwappableCert {
    pub fn new(key: Arc<CertifiedKey>) -> Arc<SwappableCert> {
        Arc::new(SwappableCert(arc_swap::ArcSwap::new(key)))
    }
    pub fn set(&self, key: Arc<CertifiedKey>) {
        self.0.store(key);
    }
}

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::pem::PemObject as _;

    fn verifies(bundle_pem: &str, leaf: &CertificateDer<'_>, san: &str, at: SystemTime) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
            roots.add(c.expect("pem")).expect("root");
        }
        let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            crate::tls::provider(),
        )
        .build()
        .expect("verifier");
        let name = rustls::pki_types::ServerName::try_from(san.to_string()).expect("name");
        let now = rustls::pki_types::UnixTime::since_unix_epoch(
            at.duration_since(SystemTime::UNIX_EPOCH).expect("epoch"),
        );
        v.verify_server_cert(leaf, &[], &name, &[], now).is_ok()
    }

    #[test]
    fn leaf_is_renewed_at_two_thirds_and_verifies_against_the_published_bundle() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let sans = vec![
            "spendguard-injector.spendguard.svc".to_string(),
            "127.0.0.1".to_string(),
        ];
        let rot = Rotation::new(Duration::from_secs(900), Duration::from_secs(30));
        let mut s = ServingCerts::new(&sans, rot, t0).expect("new");
        s.mark_published(t0);
        let first = s.leaf_der().clone();
        assert!(verifies(&s.ca_bundle_pem(), &first, &sans[0], t0));
        assert!(verifies(&s.ca_bundle_pem(), &first, "127.0.0.1", t0));
        assert!(!verifies(&s.ca_bundle_pem(), &first, "other.svc", t0));

        assert_eq!(
            s.renew(t0 + Duration::from_secs(19)).expect("r"),
            Renewed::default()
        );
        assert_eq!(
            s.next_check(t0 + Duration::from_secs(19), Duration::from_secs(60)),
            Duration::from_secs(1)
        );
        let r = s.renew(t0 + Duration::from_secs(20)).expect("r");
        assert_eq!(
            r,
            Renewed {
                ca_bundle: false,
                leaf: true
            }
        );
        assert_ne!(s.leaf_der(), &first);
        assert!(verifies(
            &s.ca_bundle_pem(),
            s.leaf_der(),
            &sans[0],
            t0 + Duration::from_secs(45)
        ));
        // The old leaf would have expired by then; the new one lives 30 s from its minting.
        assert!(!verifies(
            &s.ca_bundle_pem(),
            &first,
            &sans[0],
            t0 + Duration::from_secs(45)
        ));
    }

    #[test]
    fn ca_rolls_with_overlap_and_leaves_switch_only_after_publication() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let san = "injector.test".to_string();
        let rot = Rotation::new(Duration::from_secs(90), Duration::from_secs(60));
        assert_eq!(rot.publish_grace, Duration::from_secs(9));
        let mut s = ServingCerts::new(std::slice::from_ref(&san), rot, t0).expect("new");
        s.mark_published(t0);
        let old_bundle = s.ca_bundle_pem();
        let at = |secs| t0 + Duration::from_secs(secs);

        // 40 s: the leaf (60 s) is due.
        assert!(s.renew(at(40)).expect("r").leaf);
        // 60 s: the CA (90 s) rolls; the bundle now holds both, the leaf stays on the old CA.
        let r = s.renew(at(60)).expect("r");
        assert_eq!(
            r,
            Renewed {
                ca_bundle: true,
                leaf: false
            }
        );
        let both = s.ca_bundle_pem();
        assert!(
            both.contains(old_bundle.trim()),
            "the old CA stays in the bundle"
        );
        assert_eq!(both.matches("BEGIN CERTIFICATE").count(), 2);
        let on_old = s.leaf_der().clone();
        assert!(verifies(&old_bundle, &on_old, &san, at(60)));
        // Not published yet: no switch, however long.
        assert!(!s.renew(at(65)).expect("r").leaf);
        s.mark_published(at(66));
        assert!(!s.renew(at(70)).expect("r").leaf, "grace of 9 s not over");
        let r = s.renew(at(75)).expect("r");
        assert!(r.leaf && !r.ca_bundle);
        assert!(
            !verifies(&old_bundle, s.leaf_der(), &san, at(75)),
            "signed by the new CA"
        );
        assert!(verifies(&both, s.leaf_der(), &san, at(75)));
        // 90 s: the old CA expired: the bundle shrinks to the new CA.
        let r = s.renew(at(90)).expect("r");
        assert!(r.ca_bundle);
        assert_eq!(s.ca_bundle_pem().matches("BEGIN CERTIFICATE").count(), 1);
        assert!(verifies(&s.ca_bundle_pem(), s.leaf_der(), &san, at(91)));
    }

    #[test]
    fn a_due_leaf_before_publication_still_comes_from_the_published_ca() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let san = "injector.test".to_string();
        let rot = Rotation::new(Duration::from_secs(90), Duration::from_secs(90));
        let mut s = ServingCerts::new(std::slice::from_ref(&san), rot, t0).expect("new");
        s.mark_published(t0);
        let old_bundle = s.ca_bundle_pem();
        // 60 s: CA roll and leaf due at once; the new CA is not published: the leaf comes from
        // the old one, valid until the old CA's end.
        let r = s.renew(t0 + Duration::from_secs(60)).expect("r");
        assert_eq!(
            r,
            Renewed {
                ca_bundle: true,
                leaf: true
            }
        );
        assert!(verifies(
            &old_bundle,
            s.leaf_der(),
            &san,
            t0 + Duration::from_secs(61)
        ));
    }

    #[test]
    fn bad_sans_are_refused() {
        let t0 = SystemTime::now();
        assert!(ServingCerts::new(&["bad name".into()], Rotation::production(), t0).is_err());
    }
}
