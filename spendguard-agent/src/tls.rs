//! TLS: SpendGuard's own CA (workloads trust it; it signs a leaf per provider host on demand) and the
//! client side toward providers (system roots plus `SPENDGUARD_UPSTREAM_CA`).

pub mod ca;
pub mod upstream;

pub use ca::{Ca, CaError};

/// The crypto provider everywhere (one choice, stated once): ring.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
