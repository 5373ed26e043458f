//! [`ClusterStore`] on Redis ≥ 7 / Valkey ≥ 7.2, standalone or cluster, through redis-rs.
//!
//! Keys (`R` = the agent tree's root segment; `{R}` is a hash tag, so every key of one tree, and
//! so every key a script touches, is in one slot of a Redis Cluster):
//!
//! | key                     | type   | what                                                    |
//! |-------------------------|--------|---------------------------------------------------------|
//! | `sg:{R}:lim:AGENT`      | hash   | `d w m t pc exp paused` (µUSD / Unix s / 0-1), `json` (the whole policy) |
//! | `sg:{R}:sp:AGENT`       | hash   | spent of the subtree: `d ds w ws m ms t` (amount, period start) |
//! | `sg:{R}:out:AGENT`      | string | Σ every node's slices of the subtree (µUSD)             |
//! | `sg:{R}:held:AGENT`     | hash   | node → µUSD it holds leased for exactly AGENT           |
//! | `sg:{R}:gr:AGENT`       | hash   | node → its last grant's id and answer (a retry gets it) |
//! | `sg:{R}:wm:AGENT`       | hash   | node → `epoch:seq`, the last outbox entry applied       |
//! | `sg:agents`             | set    | every agent with a policy                               |
//! | `sg:ver`                | string | policy version, bumped by every policy/setting change   |
//! | `sg:shared`             | hash   | shared settings (prices set by `price set`), JSON       |
//! | `sg:node:NODE`          | set    | agents NODE may hold slices of (restart, forget)        |

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Cmd, Pipeline, RedisFuture, Script, Value};

use super::{
    ClusterError, ClusterStore, GrantCall, GrantReply, LevelUsage, PeriodStarts, Policy, Refusal,
    SettleCall, StoreFuture,
};
use crate::agent::AgentName;
use crate::money::MicroUsd;
use crate::period::Period;

/// A store call on the request path (grants, settles, the policy poll) that takes longer fails:
/// the node then spends only what it holds rather than stall its clients.
const CALL_TIMEOUT: Duration = Duration::from_millis(1500);
/// An operator's call (`limit set`, `price set`, `node forget`, `status`) may wait longer: a
/// store busy with fsyncs for two seconds should not fail a command the operator has to retry.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

struct Scripts {
    grant: Script,
    settle: Script,
    set_held: Script,
}

/// A Redis/Valkey cluster store. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    /// The URL without credentials.
    shown: String,
    cluster: bool,
    scripts: Arc<Scripts>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.shown)
            .field("cluster", &self.cluster)
            .finish()
    }
}

/// The URL as logs may show it: no user, no password.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://{host}"),
        _ => url.to_string(),
    }
}

fn tag(agent: &AgentName) -> &str {
    let s = agent.as_str();
    s.split('.').next().unwrap_or(s)
}

fn key(kind: &str, agent: &AgentName) -> String {
    format!("sg:{{{}}}:{kind}:{agent}", tag(agent))
}

const AGENTS: &str = "sg:agents";
const VERSION: &str = "sg:ver";
const SHARED: &str = "sg:shared";

fn node_key(node: &str) -> String {
    format!("sg:node:{node}")
}

impl RedisStore {
    /// Connects (and finds out whether the store is a Redis Cluster). Fails if the store is not
    /// reachable now; afterwards the connection reconnects by itself.
    pub async fn connect(url: &str) -> Result<RedisStore, ClusterError> {
        Self::connect_with(url, None).await
    }

    /// [`RedisStore::connect`] for a `rediss://` store whose certificate a private CA signed:
    /// `root_ca_pem` (PEM, one or more certificates) is then the only trust anchor, instead of the
    /// public web roots.
    pub async fn connect_with(
        url: &str,
        root_ca_pem: Option<&[u8]>,
    ) -> Result<RedisStore, ClusterError> {
        let shown = redact(url);
        let bad = |e: ::redis::RedisError| ClusterError::BadUrl {
            url: shown.clone(),
            detail: e.to_string(),
        };
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(ClusterError::BadUrl {
                url: shown,
                detail: "the scheme must be redis:// or rediss://".into(),
            });
        }
        if url.starts_with("rediss://") {
            // The redis crate asks rustls for the process's default provider; with ring and
            // aws-lc-rs both linked there is none until one is installed. Ring, as the proxy uses;
            // an error means a provider is installed already, which is as good.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let certs = |pem: &[u8]| ::redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.to_vec()),
        };
        let client = match root_ca_pem {
            Some(_) if !url.starts_with("rediss://") => {
                return Err(ClusterError::BadUrl {
                    url: shown,
                    detail: "a CA for the store is given, but the URL is not rediss:// (TLS)"
                        .into(),
                })
            }
            Some(pem) => ::redis::Client::build_with_tls(url, certs(pem)).map_err(bad)?,
            None => ::redis::Client::open(url).map_err(bad)?,
        };
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(CALL_TIMEOUT)
            // The longest any call may wait; request-path calls are bounded tighter in `run`.
            .set_response_timeout(ADMIN_TIMEOUT)
            .set_number_of_retries(1);
        let single = tokio::time::timeout(
            CALL_TIMEOUT * 2,
            ConnectionManager::new_with_config(client, cfg),
        )
        .await
        .map_err(|_| ClusterError::Timeout {
            url: shown.clone(),
            millis: (CALL_TIMEOUT * 2).as_millis() as u64,
        })?
        .map_err(|e| ClusterError::Unreachable {
            url: shown.clone(),
            detail: e.to_string(),
        })?;
        let mut store = RedisStore {
            conn: Conn::Single(single),
            shown: shown.clone(),
            cluster: false,
            scripts: Arc::new(Scripts {
                grant: Script::new(include_str!("grant.lua")),
                settle: Script::new(include_str!("settle.lua")),
                set_held: Script::new(include_str!("set_held.lua")),
            }),
        };
        let info: String = store
            .run("INFO cluster", ::redis::cmd("INFO").arg("cluster").clone())
            .await?;
        if info.contains("cluster_enabled:1") {
            let mut builder = ::redis::cluster::ClusterClientBuilder::new(vec![url])
                .connection_timeout(CALL_TIMEOUT)
                .response_timeout(ADMIN_TIMEOUT);
            if let Some(pem) = root_ca_pem {
                builder = builder.certs(certs(pem));
            }
            let client = builder.build().map_err(bad)?;
            let conn =
                client
                    .get_async_connection()
                    .await
                    .map_err(|e| ClusterError::Unreachable {
                        url: shown.clone(),
                        detail: e.to_string(),
                    })?;
            store.conn = Conn::Cluster(conn);
            store.cluster = true;
        }
        Ok(store)
    }

    /// Whether the store is a Redis/Valkey Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    fn unreachable(&self, e: &::redis::RedisError) -> ClusterError {
        if e.is_timeout() {
            ClusterError::Timeout {
                url: self.shown.clone(),
                millis: ADMIN_TIMEOUT.as_millis() as u64,
            }
        } else {
            ClusterError::Unreachable {
                url: self.shown.clone(),
                detail: e.to_string(),
            }
        }
    }

    /// A request-path command, bounded by [`CALL_TIMEOUT`].
    async fn run<T: ::redis::FromRedisValue>(
        &self,
        what: &'static str,
        cmd: Cmd,
    ) -> Result<T, ClusterError> {
        self.run_within(CALL_TIMEOUT, what, cmd).await
    }

    /// An operator's command, bounded by [`ADMIN_TIMEOUT`].
    async fn admin<T: ::redis::FromRedisValue>(
        &self,
        what: &'static str,
        cmd: Cmd,
    ) -> Result<T, ClusterError> {
        self.run_within(ADMIN_TIMEOUT, what, cmd).await
    }

    async fn run_within<T: ::redis::FromRedisValue>(
        &self,
        limit: Duration,
        what: &'static str,
        cmd: Cmd,
    ) -> Result<T, ClusterError> {
        let mut conn = self.conn.clone();
        let v = tokio::time::timeout(limit, cmd.query_async::<Value>(&mut conn))
            .await
            .map_err(|_| self.timeout(limit))?
            .map_err(|e| self.unreachable(&e))?;
        ::redis::from_redis_value(&v).map_err(|e| self.protocol(what, e.to_string()))
    }

    async fn script<T: ::redis::FromRedisValue>(
        &self,
        what: &'static str,
        inv: ::redis::ScriptInvocation<'_>,
    ) -> Result<T, ClusterError> {
        let mut conn = self.conn.clone();
        let v = tokio::time::timeout(CALL_TIMEOUT, inv.invoke_async::<Value>(&mut conn))
            .await
            .map_err(|_| self.timeout(CALL_TIMEOUT))?
            .map_err(|e| self.unreachable(&e))?;
        ::redis::from_redis_value(&v).map_err(|e| self.protocol(what, e.to_string()))
    }

    fn timeout(&self, limit: Duration) -> ClusterError {
        ClusterError::Timeout {
            url: self.shown.clone(),
            millis: limit.as_millis() as u64,
        }
    }

    fn protocol(&self, what: &'static str, detail: String) -> ClusterError {
        ClusterError::Protocol {
            url: self.shown.clone(),
            what,
            detail,
        }
    }

    async fn bump_version(&self) -> Result<(), ClusterError> {
        let _: i64 = self
            .admin("INCR sg:ver", ::redis::cmd("INCR").arg(VERSION).clone())
            .await?;
        Ok(())
    }
}

fn num(s: Option<&str>) -> Option<u64> {
    s.and_then(|s| s.parse().ok())
}

fn parse_grant(s: &str) -> Option<GrantReply> {
    let f: Vec<i64> = s
        .split(' ')
        .map(|x| x.parse::<i64>())
        .collect::<Result<_, _>>()
        .ok()?;
    let [g, level, period, limit, spent, out, reason] = f.as_slice() else {
        return None;
    };
    let granted = MicroUsd(u64::try_from(*g).ok()?);
    let level = usize::try_from(*level).unwrap_or(0);
    let refusal = if granted > MicroUsd::ZERO {
        None
    } else {
        Some(match reason {
            1 => Refusal::Paused { level },
            2 => Refusal::Expired { level },
            3 => Refusal::PerCall { level },
            _ => Refusal::Exhausted {
                level,
                period: *Period::ALL.get(usize::try_from(*period).unwrap_or(3))?,
                limit: MicroUsd(u64::try_from(*limit).unwrap_or(0)),
                spent: MicroUsd(u64::try_from(*spent).unwrap_or(0)),
                outstanding: MicroUsd(u64::try_from(*out).unwrap_or(0)),
            },
        })
    };
    Some(GrantReply { granted, refusal })
}

impl ClusterStore for RedisStore {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    fn grant<'a>(&'a self, c: &'a GrantCall) -> StoreFuture<'a, GrantReply> {
        Box::pin(async move {
            let levels = c.agent.ancestors_and_self();
            let mut inv = self.scripts.grant.prepare_invoke();
            inv.key(key("gr", &c.agent)).key(key("held", &c.agent));
            for l in &levels {
                inv.key(key("lim", l)).key(key("sp", l)).key(key("out", l));
            }
            inv.arg(&c.id)
                .arg(&c.node)
                .arg(levels.len())
                .arg(c.want.0)
                .arg(c.min.0)
                .arg(c.starts.day)
                .arg(c.starts.week)
                .arg(c.starts.month)
                .arg(c.starts.now)
                .arg(c.divisor.max(1));
            let s: String = self.script("the grant script", inv).await?;
            parse_grant(&s).ok_or_else(|| self.protocol("the grant script", s))
        })
    }

    fn settle<'a>(&'a self, c: &'a SettleCall) -> StoreFuture<'a, MicroUsd> {
        Box::pin(async move {
            let levels = c.agent.ancestors_and_self();
            let mut inv = self.scripts.settle.prepare_invoke();
            inv.key(key("wm", &c.agent)).key(key("held", &c.agent));
            for l in &levels {
                inv.key(key("sp", l)).key(key("out", l));
            }
            inv.arg(&c.node)
                .arg(levels.len())
                .arg(c.epoch)
                .arg(c.starts.day)
                .arg(c.starts.week)
                .arg(c.starts.month);
            for e in &c.entries {
                inv.arg(e.seq).arg(e.charge.0).arg(e.release.0);
            }
            let s: String = self.script("the settle script", inv).await?;
            s.parse()
                .map(MicroUsd)
                .map_err(|_| self.protocol("the settle script", s))
        })
    }

    fn set_held<'a>(
        &'a self,
        node: &'a str,
        agent: &'a AgentName,
        amount: MicroUsd,
    ) -> StoreFuture<'a, MicroUsd> {
        Box::pin(async move {
            let levels = agent.ancestors_and_self();
            let mut inv = self.scripts.set_held.prepare_invoke();
            inv.key(key("held", agent));
            for l in &levels {
                inv.key(key("out", l));
            }
            inv.arg(node).arg(levels.len()).arg(amount.0);
            let s: String = self.script("the set-held script", inv).await?;
            s.parse()
                .map(MicroUsd)
                .map_err(|_| self.protocol("the set-held script", s))
        })
    }

    fn note_holder<'a>(&'a self, node: &'a str, agent: &'a AgentName) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let _: i64 = self
                .run(
                    "SADD sg:node",
                    ::redis::cmd("SADD")
                        .arg(node_key(node))
                        .arg(agent.as_str())
                        .clone(),
                )
                .await?;
            Ok(())
        })
    }

    fn held_by<'a>(&'a self, node: &'a str) -> StoreFuture<'a, Vec<AgentName>> {
        Box::pin(async move {
            let names: Vec<String> = self
                .run(
                    "SMEMBERS sg:node",
                    ::redis::cmd("SMEMBERS").arg(node_key(node)).clone(),
                )
                .await?;
            Ok(names
                .iter()
                .filter_map(|n| AgentName::new(n).ok())
                .collect())
        })
    }

    fn drop_holder<'a>(&'a self, node: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let _: i64 = self
                .admin(
                    "DEL sg:node",
                    ::redis::cmd("DEL").arg(node_key(node)).clone(),
                )
                .await?;
            Ok(())
        })
    }

    fn put_policy<'a>(&'a self, agent: &'a AgentName, p: &'a Policy) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let json = serde_json::to_string(p)
                .map_err(|e| self.protocol("encoding a policy", e.to_string()))?;
            let k = key("lim", agent);
            let l = &p.limits;
            let fields: [(&str, Option<u64>); 7] = [
                ("d", l.daily.map(|m| m.0)),
                ("w", l.weekly.map(|m| m.0)),
                ("m", l.monthly.map(|m| m.0)),
                ("t", l.total.map(|m| m.0)),
                ("pc", l.per_call.map(|m| m.0)),
                (
                    "exp",
                    l.expires_at
                        .map(|t| u64::try_from(t.timestamp()).unwrap_or(0)),
                ),
                ("paused", Some(u64::from(p.paused))),
            ];
            // One MULTI: the script never sees half a policy.
            let mut pipe = ::redis::pipe();
            pipe.atomic();
            pipe.cmd("DEL").arg(&k).ignore();
            pipe.cmd("HSET").arg(&k).arg("json").arg(&json).ignore();
            for (f, v) in fields {
                if let Some(v) = v {
                    pipe.cmd("HSET").arg(&k).arg(f).arg(v).ignore();
                }
            }
            let mut conn = self.conn.clone();
            tokio::time::timeout(ADMIN_TIMEOUT, pipe.query_async::<()>(&mut conn))
                .await
                .map_err(|_| self.timeout(ADMIN_TIMEOUT))?
                .map_err(|e| self.unreachable(&e))?;
            let _: i64 = self
                .admin(
                    "SADD sg:agents",
                    ::redis::cmd("SADD").arg(AGENTS).arg(agent.as_str()).clone(),
                )
                .await?;
            self.bump_version().await
        })
    }

    fn policy_version(&self) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let v: Option<u64> = self
                .run("GET sg:ver", ::redis::cmd("GET").arg(VERSION).clone())
                .await?;
            Ok(v.unwrap_or(0))
        })
    }

    fn policies(&self) -> StoreFuture<'_, Vec<(AgentName, Policy)>> {
        Box::pin(async move {
            let names: Vec<String> = self
                .run(
                    "SMEMBERS sg:agents",
                    ::redis::cmd("SMEMBERS").arg(AGENTS).clone(),
                )
                .await?;
            let mut out = Vec::with_capacity(names.len());
            for n in names {
                let Ok(agent) = AgentName::new(&n) else {
                    tracing::warn!(agent = %n, "cluster store: ignoring an invalid agent name in sg:agents");
                    continue;
                };
                let json: Option<String> = self
                    .run(
                        "HGET json",
                        ::redis::cmd("HGET")
                            .arg(key("lim", &agent))
                            .arg("json")
                            .clone(),
                    )
                    .await?;
                let Some(json) = json else { continue };
                match serde_json::from_str::<Policy>(&json) {
                    Ok(p) => out.push((agent, p)),
                    Err(e) => {
                        return Err(self.protocol("reading a policy", format!("{n}: {e}")));
                    }
                }
            }
            Ok(out)
        })
    }

    fn put_shared<'a>(
        &'a self,
        k: &'a str,
        value: Option<&'a serde_json::Value>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let cmd = match value {
                Some(v) => ::redis::cmd("HSET")
                    .arg(SHARED)
                    .arg(k)
                    .arg(v.to_string())
                    .clone(),
                None => ::redis::cmd("HDEL").arg(SHARED).arg(k).clone(),
            };
            let _: i64 = self.admin("HSET sg:shared", cmd).await?;
            self.bump_version().await
        })
    }

    fn shared(&self) -> StoreFuture<'_, Vec<(String, serde_json::Value)>> {
        Box::pin(async move {
            let all: Vec<(String, String)> = self
                .run(
                    "HGETALL sg:shared",
                    ::redis::cmd("HGETALL").arg(SHARED).clone(),
                )
                .await?;
            let mut out = Vec::with_capacity(all.len());
            for (k, v) in all {
                match serde_json::from_str(&v) {
                    Ok(v) => out.push((k, v)),
                    Err(e) => {
                        tracing::warn!(key = %k, "cluster store: ignoring an unreadable shared setting ({e})")
                    }
                }
            }
            Ok(out)
        })
    }

    fn usage<'a>(
        &'a self,
        agent: &'a AgentName,
        starts: PeriodStarts,
    ) -> StoreFuture<'a, LevelUsage> {
        Box::pin(async move {
            let sp: Vec<Option<String>> = self
                .run(
                    "HMGET sp",
                    ::redis::cmd("HMGET")
                        .arg(key("sp", agent))
                        .arg(&["d", "ds", "w", "ws", "m", "ms", "t"])
                        .clone(),
                )
                .await?;
            let get = |i: usize| sp.get(i).and_then(|s| s.as_deref());
            let current = |v: usize, s: usize, start: i64| match num(get(s))
                .and_then(|x| i64::try_from(x).ok())
            {
                Some(at) if at >= start => MicroUsd(num(get(v)).unwrap_or(0)),
                _ => MicroUsd::ZERO,
            };
            let spent = [
                current(0, 1, starts.day),
                current(2, 3, starts.week),
                current(4, 5, starts.month),
                MicroUsd(num(get(6)).unwrap_or(0)),
            ];
            let out: Option<u64> = self
                .run(
                    "GET out",
                    ::redis::cmd("GET").arg(key("out", agent)).clone(),
                )
                .await?;
            let held: Vec<(String, u64)> = self
                .run(
                    "HGETALL held",
                    ::redis::cmd("HGETALL").arg(key("held", agent)).clone(),
                )
                .await?;
            Ok(LevelUsage {
                spent,
                outstanding: MicroUsd(out.unwrap_or(0)),
                held: held.into_iter().map(|(n, a)| (n, MicroUsd(a))).collect(),
            })
        })
    }

    fn durability_warning(&self) -> StoreFuture<'_, Option<String>> {
        Box::pin(async move {
            if self.cluster {
                // CONFIG GET goes to one node of a cluster; each primary must be checked by its
                // operator (README).
                return Ok(None);
            }
            let aof: Vec<String> = self
                .run(
                    "CONFIG GET appendonly",
                    ::redis::cmd("CONFIG").arg("GET").arg("appendonly").clone(),
                )
                .await
                .unwrap_or_default();
            let fsync: Vec<String> = self
                .run(
                    "CONFIG GET appendfsync",
                    ::redis::cmd("CONFIG").arg("GET").arg("appendfsync").clone(),
                )
                .await
                .unwrap_or_default();
            let aof = aof.get(1).map(String::as_str);
            let fsync = fsync.get(1).map(String::as_str);
            Ok(match (aof, fsync) {
                (Some("yes"), Some("always")) => None,
                (None, _) | (_, None) => Some(format!(
                    "cannot read the persistence settings of cluster store {} (CONFIG GET is \
                     disabled?): make sure it runs with appendonly yes and appendfsync always, or \
                     a store crash can forget slices nodes hold and let them overshoot",
                    self.shown
                )),
                (Some(a), Some(f)) => Some(format!(
                    "cluster store {} runs with appendonly {a}, appendfsync {f}: a store crash can \
                     forget grants and spend from the last second(s), so nodes could overshoot \
                     budgets afterwards. Set appendonly yes and appendfsync always",
                    self.shown
                )),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_tree_share_a_hash_tag() {
        let a: AgentName = "acme.research.sum".parse().expect("name");
        assert_eq!(key("sp", &a), "sg:{acme}:sp:acme.research.sum");
        assert_eq!(key("wm", &a), "sg:{acme}:wm:acme.research.sum");
        let r: AgentName = "acme".parse().expect("name");
        assert_eq!(key("out", &r), "sg:{acme}:out:acme");
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(
            redact("redis://u:secret@10.0.0.1:6379/0"),
            "redis://10.0.0.1:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn grant_answers_parse() {
        assert_eq!(
            parse_grant("500 0 0 1000 200 300 0"),
            Some(GrantReply {
                granted: MicroUsd(500),
                refusal: None
            })
        );
        assert_eq!(
            parse_grant("0 1 1 1000 900 100 0"),
            Some(GrantReply {
                granted: MicroUsd::ZERO,
                refusal: Some(Refusal::Exhausted {
                    level: 1,
                    period: Period::Weekly,
                    limit: MicroUsd(1000),
                    spent: MicroUsd(900),
                    outstanding: MicroUsd(100),
                })
            })
        );
        assert_eq!(
            parse_grant("0 0 -1 0 0 0 1").and_then(|g| g.refusal),
            Some(Refusal::Paused { level: 0 })
        );
        assert_eq!(parse_grant("garbage"), None);
    }
}
