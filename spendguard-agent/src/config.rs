//! Configuration: embedded defaults ← TOML file (`--config`) ← environment (`SPENDGUARD_*`).
//!
//! The TOML is read into a raw struct with `deny_unknown_fields` (a typo is an error, not a silently
//! ignored setting), then validated into [`Config`]. Environment variables are named constants and are
//! read through [`EnvSource`] so tests never touch the process environment.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::paths;

pub const ENV_STATE_DIR: &str = "SPENDGUARD_STATE_DIR";
pub const ENV_SOCKET: &str = "SPENDGUARD_SOCKET";
pub const ENV_LISTEN: &str = "SPENDGUARD_LISTEN";
pub const ENV_REDIRECT_IP: &str = "SPENDGUARD_REDIRECT_IP";
pub const ENV_REDIRECT_IP6: &str = "SPENDGUARD_REDIRECT_IP6";
pub const ENV_UPSTREAM_CA: &str = "SPENDGUARD_UPSTREAM_CA";
pub const ENV_CA_CERT: &str = "SPENDGUARD_CA_CERT";
pub const ENV_CA_KEY: &str = "SPENDGUARD_CA_KEY";
pub const ENV_METRICS: &str = "SPENDGUARD_METRICS";
/// Not in the user contract: where the programs are pinned (tests use their own).
pub const ENV_BPF_PIN_DIR: &str = "SPENDGUARD_BPF_PIN_DIR";
/// Not in the user contract: the cgroup v2 directory the programs attach to (default: the v2 root).
pub const ENV_ATTACH_CGROUP: &str = "SPENDGUARD_ATTACH_CGROUP";
/// Explicit proxy listen address (HTTP CONNECT), e.g. `127.0.0.1:15080`.
pub const ENV_EXPLICIT_LISTEN: &str = "SPENDGUARD_EXPLICIT_LISTEN";
/// Explicit mode host overrides: `host=ip,host=ip`.
pub const ENV_EXPLICIT_RESOLVE: &str = "SPENDGUARD_EXPLICIT_RESOLVE";
/// Not in the user contract: `off` turns metering off (transport diagnostics).
pub const ENV_METERING: &str = "SPENDGUARD_METERING";
pub const ENV_LEASE_USD: &str = "SPENDGUARD_LEASE_USD";
/// Not in the user contract: seconds between tag reconciles (tests that prove the kernel's mkdir
/// hook, not the reconcile loop, tags a re-created cgroup set it high).
pub const ENV_TAG_RECONCILE_SECONDS: &str = "SPENDGUARD_TAG_RECONCILE_SECONDS";

/// How often tagged paths are re-resolved by default (a cgroup re-created under the same path gets
/// a new id; the kernel's mkdir hook tags it at once, this is the backstop).
pub const DEFAULT_TAG_RECONCILE: std::time::Duration = std::time::Duration::from_secs(2);
/// Milliseconds a carved request's settle may stay without an fsync (0: every settle durable).
pub const ENV_SETTLE_DURABLE_MS: &str = "SPENDGUARD_SETTLE_DURABLE_MS";
/// `redis://` or `rediss://` URL of the cluster store (one budget across every node naming it).
pub const ENV_CLUSTER_STORE: &str = "SPENDGUARD_CLUSTER_STORE";
pub const ENV_CLUSTER_STORE_CA: &str = "SPENDGUARD_CLUSTER_STORE_CA";
/// This node's name in the cluster store (default: `NODE_NAME`, else the host name).
pub const ENV_NODE_NAME: &str = "SPENDGUARD_NODE_NAME";
/// Most budgets a workload may create below its own agent with delegations.
pub const ENV_DELEGATE_MAX_CHILDREN: &str = "SPENDGUARD_DELEGATE_MAX_CHILDREN";
/// `delegate_max_children` by default: enough for an orchestrator's tasks, small enough that a
/// runaway loop cannot fill the ledger with budgets.
pub const DEFAULT_DELEGATE_MAX_CHILDREN: u32 = 100;
/// Comma-separated `x402_hosts` (replaces the config file's list).
pub const ENV_X402_HOSTS: &str = "SPENDGUARD_X402_HOSTS";

/// The configuration as the TOML file spells it. Every field optional: absent = default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub redirect_ip: Option<Ipv4Addr>,
    pub redirect_ip6: Option<Ipv6Addr>,
    pub upstream_ca: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
    pub ca_key: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
    pub bpf_pin_dir: Option<PathBuf>,
    pub attach_cgroup: Option<PathBuf>,
    /// Seconds in-flight requests get to finish on SIGTERM.
    pub drain_seconds: Option<u64>,
    /// Hosts whose TLS is terminated (exact, or `*.suffix`); replaces the bundled list.
    pub provider_hosts: Option<Vec<String>>,
    /// Extra hosts terminated in addition to the bundled list.
    pub extra_provider_hosts: Option<Vec<String>>,
    /// Hosts (exact, or `*.suffix`) a tagged agent may reach, passed through, even when its
    /// `other_hosts` policy is deny.
    pub allowed_hosts: Option<Vec<String>>,
    /// Hosts (exact, or `*.suffix`) whose x402 payments are metered: intercepted like provider
    /// hosts, each paid request priced at its payment.
    pub x402_hosts: Option<Vec<String>>,
    /// USD rates of x402 assets other than the bundled USDC contracts.
    pub x402_assets: Option<Vec<X402Asset>>,
    /// When a request sets no output limit, write this one into it (tokens) so reservations stay small.
    pub output_cap: Option<u64>,
    /// Azure OpenAI deployment name → model name (deployments are priced as their model).
    pub azure_deployments: Option<HashMap<String, String>>,
    /// Limits for agents that have none of their own for a period (USD numbers). Default: none.
    pub default_limits: Option<spendguard_ledger::LimitsPatch>,
    /// Days of audit events kept.
    pub audit_retention_days: Option<u32>,
    /// Largest budget slice (USD) an agent leases, so requests reserve in memory instead of one
    /// durable commit each; a crash may charge the unused part of one slice per agent. 0 = off.
    #[serde(default, with = "spendguard_ledger::usd::option")]
    pub lease_usd: Option<spendguard_ledger::MicroUsd>,
    /// The budget slice (USD) an OpenAI Realtime session reserves when it opens and at each
    /// top-up; never more than the limits allow, never less than one response's worst case.
    /// Default 2.
    #[serde(default, with = "spendguard_ledger::usd::option")]
    pub realtime_slice_usd: Option<spendguard_ledger::MicroUsd>,
    /// Milliseconds a carved request's settle may stay committed without an fsync (its lease row
    /// covers it meanwhile; a crash loses its audit event, never its charge). 0: every settle is
    /// durable before it returns. Default 1000.
    pub settle_durable_ms: Option<u64>,
    /// Price overrides: model → prices (USD per million tokens).
    pub prices: Option<HashMap<String, crate::metering::prices::PriceOverride>>,
    /// `false`: intercept TLS but neither price nor block (transport diagnostics only; logged loudly).
    pub metering: Option<bool>,
    /// Explicit proxy (HTTP CONNECT) listen address, e.g. 127.0.0.1:15080. Off when unset.
    pub explicit_listen: Option<SocketAddr>,
    /// The agent for explicit-proxy clients that send no Proxy-Authorization user name.
    pub explicit_default_agent: Option<String>,
    /// Explicit mode: host → IP overrides instead of DNS (air-gapped nodes).
    pub explicit_resolve: Option<HashMap<String, IpAddr>>,
    /// Cluster store URL (`redis://…`, `rediss://…`): budgets are one across every node.
    pub cluster_store: Option<String>,
    /// PEM file of the CA that signed a `rediss://` store's certificate (a private CA); unset: the
    /// public web roots.
    pub cluster_store_ca: Option<PathBuf>,
    /// This node's name in the cluster store.
    pub node_name: Option<String>,
    /// Most budgets one workload may create below its own agent through
    /// `/.well-known/spendguard/delegate` (narrowing existing ones does not count). Default 100.
    pub delegate_max_children: Option<u32>,
}

/// What one whole token of an x402 asset is worth (`[[x402_assets]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct X402Asset {
    /// As payments name it: CAIP-2 (`eip155:8453`) for v2, `base` etc. for v1.
    pub network: String,
    /// Token contract (0x…, any case) or mint.
    pub asset: String,
    /// The token's decimals (USDC 6, most ERC-20s 18).
    pub decimals: u8,
    /// USD per whole token, at most 6 decimals.
    #[serde(with = "spendguard_ledger::usd")]
    pub usd_per_token: spendguard_ledger::MicroUsd,
}

/// The validated configuration the agent runs on.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub listen: SocketAddr,
    /// `None`: use the node's primary address (found at start).
    pub redirect_ip: Option<Ipv4Addr>,
    pub redirect_ip6: Option<Ipv6Addr>,
    pub upstream_ca: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
    pub ca_key: Option<PathBuf>,
    pub metrics: SocketAddr,
    pub bpf_pin_dir: PathBuf,
    /// `None`: the cgroup v2 root, found from /proc/mounts.
    pub attach_cgroup: Option<PathBuf>,
    pub drain_seconds: u64,
    pub provider_hosts: Vec<String>,
    pub allowed_hosts: Vec<String>,
    pub x402_hosts: Vec<String>,
    pub x402_assets: Vec<X402Asset>,
    pub output_cap: Option<u64>,
    pub azure_deployments: HashMap<String, String>,
    pub default_limits: spendguard_ledger::Limits,
    pub audit_retention_days: u32,
    #[serde(with = "spendguard_ledger::usd")]
    pub lease_usd: spendguard_ledger::MicroUsd,
    #[serde(with = "spendguard_ledger::usd")]
    pub realtime_slice_usd: spendguard_ledger::MicroUsd,
    pub settle_durable_ms: u64,
    pub prices: HashMap<String, crate::metering::prices::PriceOverride>,
    pub metering: bool,
    pub explicit_listen: Option<SocketAddr>,
    pub explicit_default_agent: Option<crate::identity::AgentName>,
    pub explicit_resolve: Vec<(String, IpAddr)>,
    #[serde(skip)]
    pub tag_reconcile_every: std::time::Duration,
    /// Shown without its credentials.
    #[serde(serialize_with = "redacted_url")]
    pub cluster_store: Option<String>,
    pub cluster_store_ca: Option<PathBuf>,
    pub node_name: String,
    pub delegate_max_children: u32,
}

fn redacted_url<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        None => s.serialize_none(),
        Some(u) => match (u.split_once("://"), u.rsplit_once('@')) {
            (Some((scheme, _)), Some((_, host))) => {
                s.serialize_str(&format!("{scheme}://***@{host}"))
            }
            _ => s.serialize_str(u),
        },
    }
}

/// `SPENDGUARD_NODE_NAME`, the config's `node_name`, `NODE_NAME` (Kubernetes downward API), the
/// host name — the first that is set.
fn node_name(env: &dyn EnvSource, raw: Option<String>) -> String {
    env.get(ENV_NODE_NAME)
        .or(raw)
        .or_else(|| env.get(spendguard_k8s::ENV_NODE_NAME))
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "unnamed-node".into())
        })
}

/// Budget lease slice by default: takes the durable commit off the request path while a crash
/// over-charges an agent by at most this (and never more than an eighth of what it has left).
pub const DEFAULT_LEASE_USD: spendguard_ledger::MicroUsd = spendguard_ledger::MicroUsd(1_000_000);

/// Carve settles reach the disk at most this long after their commit, by default: one fsync a
/// second instead of one per batch, and at most a second of audit events a crash can lose.
pub const DEFAULT_SETTLE_DURABLE_MS: u64 = 1000;

/// Audit events are kept this long by default (a quarter: enough for a monthly invoice dispute).
pub const DEFAULT_AUDIT_RETENTION_DAYS: u32 = 90;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid SpendGuard TOML: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("environment variable {name}={value:?} is invalid: {why}")]
    Env {
        name: &'static str,
        value: String,
        why: String,
    },
    #[error("{field} must be an absolute path, got {value}")]
    NotAbsolute { field: &'static str, value: PathBuf },
    #[error("{field}: {why}")]
    Invalid { field: &'static str, why: String },
    #[error("{what} and {other} must be given together")]
    Pair {
        what: &'static str,
        other: &'static str,
    },
}

/// Where environment overrides come from; tests pass a map instead of the process environment.
pub trait EnvSource {
    fn get(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;
impl EnvSource for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}
impl EnvSource for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 15443);
pub const DEFAULT_METRICS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);
pub const DEFAULT_DRAIN_SECONDS: u64 = 10;

impl Config {
    /// Reads `file` (if any), then applies environment overrides, then validates.
    pub fn load(file: Option<&Path>, env: &dyn EnvSource) -> Result<Config, ConfigError> {
        let raw = match file {
            None => RawConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.to_path_buf(),
                    source: Box::new(source),
                })?
            }
        };
        Self::from_raw(raw, env)
    }

    pub fn from_raw(raw: RawConfig, env: &dyn EnvSource) -> Result<Config, ConfigError> {
        let path_env = |name: &'static str| env.get(name).map(PathBuf::from);
        let cfg = Config {
            state_dir: path_env(ENV_STATE_DIR)
                .or(raw.state_dir)
                .unwrap_or_else(|| PathBuf::from(paths::DEFAULT_STATE_DIR)),
            socket: path_env(ENV_SOCKET)
                .or(raw.socket)
                .unwrap_or_else(|| PathBuf::from(paths::DEFAULT_SOCKET)),
            listen: parse_env(env, ENV_LISTEN)?
                .or(raw.listen)
                .unwrap_or(DEFAULT_LISTEN),
            redirect_ip: parse_env(env, ENV_REDIRECT_IP)?.or(raw.redirect_ip),
            redirect_ip6: parse_env(env, ENV_REDIRECT_IP6)?.or(raw.redirect_ip6),
            upstream_ca: path_env(ENV_UPSTREAM_CA).or(raw.upstream_ca),
            ca_cert: path_env(ENV_CA_CERT).or(raw.ca_cert),
            ca_key: path_env(ENV_CA_KEY).or(raw.ca_key),
            metrics: parse_env(env, ENV_METRICS)?
                .or(raw.metrics)
                .unwrap_or(DEFAULT_METRICS),
            bpf_pin_dir: path_env(ENV_BPF_PIN_DIR)
                .or(raw.bpf_pin_dir)
                .unwrap_or_else(|| PathBuf::from(paths::DEFAULT_BPF_PIN_DIR)),
            attach_cgroup: path_env(ENV_ATTACH_CGROUP).or(raw.attach_cgroup),
            drain_seconds: raw.drain_seconds.unwrap_or(DEFAULT_DRAIN_SECONDS),
            provider_hosts: {
                let mut hosts = raw.provider_hosts.unwrap_or_else(|| {
                    crate::proxy::route::DEFAULT_PROVIDER_HOSTS
                        .iter()
                        .map(|s| s.to_string())
                        .collect()
                });
                hosts.extend(raw.extra_provider_hosts.unwrap_or_default());
                hosts
            },
            allowed_hosts: raw.allowed_hosts.unwrap_or_default(),
            x402_hosts: match env.get(ENV_X402_HOSTS) {
                Some(v) => v
                    .split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(str::to_string)
                    .collect(),
                None => raw.x402_hosts.unwrap_or_default(),
            },
            x402_assets: raw.x402_assets.unwrap_or_default(),
            output_cap: raw.output_cap,
            azure_deployments: raw.azure_deployments.unwrap_or_default(),
            default_limits: {
                let mut l = spendguard_ledger::Limits::default();
                if let Some(p) = &raw.default_limits {
                    l.apply(p);
                }
                l
            },
            audit_retention_days: raw
                .audit_retention_days
                .unwrap_or(DEFAULT_AUDIT_RETENTION_DAYS),
            lease_usd: match env.get(ENV_LEASE_USD) {
                Some(v) => v.trim().parse().map_err(|e| ConfigError::Env {
                    name: ENV_LEASE_USD,
                    value: v.clone(),
                    why: format!("{e} (a USD amount such as 1 or 0.25; 0 turns leases off)"),
                })?,
                None => raw.lease_usd.unwrap_or(DEFAULT_LEASE_USD),
            },
            realtime_slice_usd: raw
                .realtime_slice_usd
                .unwrap_or(crate::metering::realtime::DEFAULT_SLICE),
            settle_durable_ms: parse_env(env, ENV_SETTLE_DURABLE_MS)?
                .or(raw.settle_durable_ms)
                .unwrap_or(DEFAULT_SETTLE_DURABLE_MS),
            prices: raw.prices.unwrap_or_default(),
            explicit_listen: parse_env(env, ENV_EXPLICIT_LISTEN)?.or(raw.explicit_listen),
            explicit_default_agent: match raw.explicit_default_agent {
                None => None,
                Some(a) => Some(a.parse().map_err(|e: spendguard_ledger::AgentNameError| {
                    ConfigError::Invalid {
                        field: "explicit_default_agent",
                        why: e.to_string(),
                    }
                })?),
            },
            explicit_resolve: match env.get(ENV_EXPLICIT_RESOLVE) {
                Some(v) => parse_resolve(&v)?,
                None => raw
                    .explicit_resolve
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
            },
            tag_reconcile_every: match parse_env::<u64>(env, ENV_TAG_RECONCILE_SECONDS)? {
                Some(0) | None => DEFAULT_TAG_RECONCILE,
                Some(n) => std::time::Duration::from_secs(n),
            },
            cluster_store: env.get(ENV_CLUSTER_STORE).or(raw.cluster_store),
            cluster_store_ca: env
                .get(ENV_CLUSTER_STORE_CA)
                .map(PathBuf::from)
                .or(raw.cluster_store_ca),
            node_name: node_name(env, raw.node_name),
            delegate_max_children: parse_env(env, ENV_DELEGATE_MAX_CHILDREN)?
                .or(raw.delegate_max_children)
                .unwrap_or(DEFAULT_DELEGATE_MAX_CHILDREN),
            metering: match env.get(ENV_METERING).as_deref() {
                Some("off") | Some("false") | Some("0") => false,
                Some(_) | None => raw.metering.unwrap_or(true),
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (field, p) in [
            ("state_dir", Some(&self.state_dir)),
            ("socket", Some(&self.socket)),
            ("bpf_pin_dir", Some(&self.bpf_pin_dir)),
            ("attach_cgroup", self.attach_cgroup.as_ref()),
        ] {
            if let Some(p) = p {
                if !p.is_absolute() {
                    return Err(ConfigError::NotAbsolute {
                        field,
                        value: p.clone(),
                    });
                }
            }
        }
        for h in self
            .provider_hosts
            .iter()
            .chain(&self.allowed_hosts)
            .chain(&self.x402_hosts)
        {
            let literal_label = h.split('.').any(|l| !l.is_empty() && !l.contains('*'));
            let one_star_per_label = h.split('.').all(|l| l.matches('*').count() <= 1);
            if !literal_label || !one_star_per_label || h.contains('/') || h.contains(':') {
                return Err(ConfigError::Invalid {
                    field: "provider_hosts/allowed_hosts/x402_hosts",
                    why: format!(
                        "{h:?} is not a host name (exact, *.suffix for any name under suffix, or one * per label)"
                    ),
                });
            }
        }
        for a in &self.x402_assets {
            // 10^decimals must fit the pricing arithmetic (u128); no real token has more than 18.
            if a.decimals > 38 || a.network.trim().is_empty() || a.asset.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    field: "x402_assets",
                    why: format!(
                        "{} on {:?}: needs a network, an asset and decimals of at most 38",
                        a.asset, a.network
                    ),
                });
            }
        }
        if self.output_cap == Some(0) {
            return Err(ConfigError::Invalid {
                field: "output_cap",
                why: "must be at least 1 token".into(),
            });
        }
        if let Some(u) = &self.cluster_store {
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                return Err(ConfigError::Invalid {
                    field: "cluster_store",
                    why: "must be a redis:// or rediss:// URL".into(),
                });
            }
        }
        if self.cluster_store_ca.is_some()
            && !self
                .cluster_store
                .as_deref()
                .is_some_and(|u| u.starts_with("rediss://"))
        {
            return Err(ConfigError::Invalid {
                field: "cluster_store_ca",
                why: "a CA for the cluster store needs a rediss:// (TLS) cluster_store".into(),
            });
        }
        if self.ca_cert.is_some() != self.ca_key.is_some() {
            return Err(ConfigError::Pair {
                what: ENV_CA_CERT,
                other: ENV_CA_KEY,
            });
        }
        Ok(())
    }
}

fn parse_resolve(v: &str) -> Result<Vec<(String, IpAddr)>, ConfigError> {
    v.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let bad = |why: &str| ConfigError::Env {
                name: ENV_EXPLICIT_RESOLVE,
                value: v.to_string(),
                why: why.to_string(),
            };
            let (h, ip) = pair
                .split_once('=')
                .ok_or_else(|| bad("expected host=ip pairs separated by commas"))?;
            Ok((
                h.trim().to_string(),
                ip.trim().parse().map_err(|_| bad("not an IP address"))?,
            ))
        })
        .collect()
}

fn parse_env<T: std::str::FromStr>(
    env: &dyn EnvSource,
    name: &'static str,
) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match env.get(name) {
        None => Ok(None),
        Some(value) => value
            .parse()
            .map(Some)
            .map_err(|e: T::Err| ConfigError::Env {
                name,
                value,
                why: e.to_string(),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_interface() {
        let c = Config::load(None, &env(&[])).expect("defaults are valid");
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/spendguard"));
        assert_eq!(c.socket, PathBuf::from("/run/spendguard/control.sock"));
        assert_eq!(c.listen.to_string(), "0.0.0.0:15443");
        assert_eq!(c.metrics.to_string(), "127.0.0.1:9464");
        assert_eq!(c.redirect_ip, None);
    }

    #[test]
    fn cluster_store_and_node_name() {
        let c = Config::load(None, &env(&[])).expect("defaults");
        assert_eq!(c.cluster_store, None);
        assert!(!c.node_name.is_empty(), "falls back to the host name");
        let raw: RawConfig = toml::from_str(
            "cluster_store = \"redis://u:secret@10.0.0.5:6379\"\nnode_name = \"file\"",
        )
        .expect("toml");
        let c = Config::from_raw(raw, &env(&[("NODE_NAME", "k8s-node")])).expect("valid");
        assert_eq!(
            c.node_name, "file",
            "the config's node_name beats NODE_NAME"
        );
        let shown = serde_json::to_string(&c).expect("json");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("10.0.0.5:6379"), "{shown}");
        let c = Config::load(None, &env(&[("NODE_NAME", "k8s-node")])).expect("valid");
        assert_eq!(c.node_name, "k8s-node");
        let c = Config::load(
            None,
            &env(&[("NODE_NAME", "k8s-node"), (ENV_NODE_NAME, "explicit")]),
        )
        .expect("valid");
        assert_eq!(c.node_name, "explicit");
        let e = Config::load(None, &env(&[(ENV_CLUSTER_STORE, "http://x:6379")]))
            .expect_err("not redis://");
        assert!(e.to_string().contains("cluster_store"), "{e}");
        let c = Config::load(
            None,
            &env(&[
                (ENV_CLUSTER_STORE, "rediss://10.0.0.5:6380"),
                (ENV_CLUSTER_STORE_CA, "/etc/spendguard/store-ca.pem"),
            ]),
        )
        .expect("rediss with a CA");
        assert_eq!(
            c.cluster_store_ca.as_deref(),
            Some(std::path::Path::new("/etc/spendguard/store-ca.pem"))
        );
        let e = Config::load(
            None,
            &env(&[
                (ENV_CLUSTER_STORE, "redis://10.0.0.5:6379"),
                (ENV_CLUSTER_STORE_CA, "/etc/spendguard/store-ca.pem"),
            ]),
        )
        .expect_err("a CA without TLS");
        assert!(e.to_string().contains("cluster_store_ca"), "{e}");
    }

    #[test]
    fn delegate_max_children_from_file_env_or_default() {
        let c = Config::load(None, &env(&[])).expect("defaults");
        assert_eq!(c.delegate_max_children, DEFAULT_DELEGATE_MAX_CHILDREN);
        let raw: RawConfig = toml::from_str("delegate_max_children = 5").expect("toml");
        let c = Config::from_raw(raw, &env(&[(ENV_DELEGATE_MAX_CHILDREN, "7")])).expect("valid");
        assert_eq!(c.delegate_max_children, 7, "the environment wins");
        let e = Config::load(None, &env(&[(ENV_DELEGATE_MAX_CHILDREN, "-1")])).expect_err("neg");
        assert!(e.to_string().contains(ENV_DELEGATE_MAX_CHILDREN), "{e}");
    }

    #[test]
    fn env_overrides_file() {
        let raw: RawConfig =
            toml::from_str("listen = \"127.0.0.1:1000\"\nstate_dir = \"/a\"").expect("toml");
        let c = Config::from_raw(raw, &env(&[(ENV_LISTEN, "127.0.0.1:2000")])).expect("valid");
        assert_eq!(c.listen.port(), 2000);
        assert_eq!(c.state_dir, PathBuf::from("/a"));
    }

    #[test]
    fn settle_durability_window_from_file_env_or_default() {
        let c = Config::load(None, &env(&[])).expect("defaults");
        assert_eq!(c.settle_durable_ms, DEFAULT_SETTLE_DURABLE_MS);
        let raw: RawConfig = toml::from_str("settle_durable_ms = 250").expect("toml");
        let c = Config::from_raw(raw, &env(&[])).expect("valid");
        assert_eq!(c.settle_durable_ms, 250);
        let raw: RawConfig = toml::from_str("settle_durable_ms = 250").expect("toml");
        let c = Config::from_raw(raw, &env(&[(ENV_SETTLE_DURABLE_MS, "0")])).expect("valid");
        assert_eq!(
            c.settle_durable_ms, 0,
            "the environment wins; 0 = every settle durable"
        );
        let e = Config::load(None, &env(&[(ENV_SETTLE_DURABLE_MS, "1s")])).expect_err("not ms");
        assert!(e.to_string().contains(ENV_SETTLE_DURABLE_MS), "{e}");
    }

    #[test]
    fn x402_hosts_and_asset_rates() {
        let c = Config::load(None, &env(&[])).expect("defaults");
        assert!(
            c.x402_hosts.is_empty(),
            "no x402 host is metered by default"
        );
        let raw: RawConfig = toml::from_str(
            "x402_hosts = [\"api.tool.example\", \"*.x402.example\"]\n\
             [[x402_assets]]\nnetwork = \"eip155:8453\"\nasset = \"0x4200000000000000000000000000000000000006\"\n\
             decimals = 18\nusd_per_token = 2500.5\n",
        )
        .expect("toml");
        let c = Config::from_raw(raw, &env(&[])).expect("valid");
        assert_eq!(c.x402_hosts, ["api.tool.example", "*.x402.example"]);
        assert_eq!(c.x402_assets[0].decimals, 18);
        assert_eq!(
            c.x402_assets[0].usd_per_token,
            spendguard_ledger::MicroUsd(2_500_500_000)
        );
        let raw: RawConfig = toml::from_str("x402_hosts = [\"file.example\"]").expect("toml");
        let c = Config::from_raw(raw, &env(&[(ENV_X402_HOSTS, "a.example, b.example")]))
            .expect("valid");
        assert_eq!(
            c.x402_hosts,
            ["a.example", "b.example"],
            "the environment wins"
        );
        let e = Config::load(None, &env(&[(ENV_X402_HOSTS, "http://a.example/x")]))
            .expect_err("not a host");
        assert!(e.to_string().contains("x402_hosts"), "{e}");
        let raw: RawConfig = toml::from_str(
            "[[x402_assets]]\nnetwork = \"base\"\nasset = \"0x1\"\ndecimals = 77\nusd_per_token = 1\n",
        )
        .expect("toml");
        let e = Config::from_raw(raw, &env(&[])).expect_err("decimals");
        assert!(e.to_string().contains("x402_assets"), "{e}");
        let e = toml::from_str::<RawConfig>(
            "[[x402_assets]]\nnetwork = \"base\"\nasset = \"0x1\"\ndecimals = 6\nusd = 1\n",
        )
        .expect_err("unknown field");
        assert!(e.to_string().contains("usd"), "{e}");
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let e = Config::load(None, &env(&[(ENV_REDIRECT_IP, "10.0.0")])).expect_err("must fail");
        assert!(e.to_string().contains("SPENDGUARD_REDIRECT_IP"), "{e}");
        let e = toml::from_str::<RawConfig>("lisen = \"1.2.3.4:5\"").expect_err("unknown field");
        assert!(e.to_string().contains("lisen"), "{e}");
        let e = Config::load(None, &env(&[(ENV_STATE_DIR, "relative")])).expect_err("relative");
        assert!(e.to_string().contains("absolute"), "{e}");
        let e = Config::load(None, &env(&[(ENV_CA_CERT, "/x")])).expect_err("pair");
        assert!(e.to_string().contains("SPENDGUARD_CA_KEY"), "{e}");
    }
}
