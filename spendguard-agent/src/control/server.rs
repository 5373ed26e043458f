//! The agent side of the control socket.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, BufReader,
};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::protocol::{parse_request, Request, Response};
use super::MAX_REQUEST_BYTES;
use crate::identity::{AgentName, TagSource, TagStore};
use crate::metering::Prices;
use crate::paths;
use crate::tls::Ca;
use spendguard_ledger::{AuditFilter, Ledger};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot prepare control socket directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on control socket {path}: {source} (is another agent running?)")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the control socket operates on.
pub struct ControlContext {
    pub tags: TagStore,
    pub ledger: Ledger,
    pub prices: Prices,
    pub ca: Arc<Ca>,
    /// The metering metrics' last minute per agent (`top`).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Creates the socket (removing a stale one), root-only.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ControlError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        // Only tighten a directory we own exclusively (the default /run/spendguard); never chmod a
        // shared directory such as /tmp.
        if dir.ends_with("spendguard") {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(paths::SOCKET_DIR_MODE))
                .map_err(|source| ControlError::Dir {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ControlError::Bind {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    // Create with a restrictive umask so there is no instant where the socket is open to others.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(|source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(paths::SOCKET_MODE)).map_err(
        |source| ControlError::Bind {
            path: path.to_path_buf(),
            source,
        },
    )?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, ctx: Arc<ControlContext>, shutdown: CancellationToken) {
    while let Some((stream, _)) =
        crate::accept::next(|| listener.accept(), &shutdown, "control socket").await
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, &ctx).await {
                tracing::debug!("control connection: {e}");
            }
        });
    }
}

async fn serve_one(stream: UnixStream, ctx: &ControlContext) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let (rd, mut wr) = stream.into_split();
    if cred.uid() != 0 {
        tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "refused control connection from a non-root user");
        let resp = Response::Error {
            message: "permission denied: the SpendGuard control socket is root-only".into(),
        };
        return write_line(&mut wr, &resp).await;
    }
    let line = read_request_within(rd, REQUEST_READ_TIMEOUT).await?;
    let resp = match parse_request(&line) {
        Ok(req) => handle(req, ctx).await,
        Err(e) => Response::Error {
            message: e.to_string(),
        },
    };
    write_line(&mut wr, &resp).await
}

/// How long a control client may take to send its request line (the CLI sends it at once).
const REQUEST_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// [`read_request_line`], given up after `limit`: the socket is root-only, but a stuck or buggy
/// client must not hold a task and a descriptor forever.
async fn read_request_within<R: AsyncRead + Unpin>(
    rd: R,
    limit: std::time::Duration,
) -> std::io::Result<Vec<u8>> {
    tokio::time::timeout(limit, read_request_line(rd))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no request line within {limit:?}"),
            )
        })?
}

/// Reads one request line: up to and including the first newline, but never more than one byte
/// past `MAX_REQUEST_BYTES`, so a client that never sends a newline costs bounded memory and gets
/// `parse_request`'s "too large" error.
async fn read_request_line<R: AsyncRead + Unpin>(rd: R) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    BufReader::new(rd)
        .take(MAX_REQUEST_BYTES as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    Ok(line)
}

async fn write_line(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    resp: &Response,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(resp).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    wr.write_all(&bytes).await?;
    wr.shutdown().await
}

async fn handle(req: Request, ctx: &ControlContext) -> Response {
    let err = |e: &dyn std::fmt::Display| Response::Error {
        message: e.to_string(),
    };
    match req {
        Request::Ping => Response::Pong {
            version: env!("CARGO_PKG_VERSION").into(),
        },
        Request::Tag { cgroup, agent } => {
            let agent: AgentName = match agent.parse() {
                Ok(a) => a,
                Err(e) => return err(&e),
            };
            if !cgroup.is_absolute() {
                return Response::Error {
                    message: format!(
                        "--cgroup must be an absolute path, got {}",
                        cgroup.display()
                    ),
                };
            }
            match ctx.tags.tag(&cgroup, agent, TagSource::Manual) {
                Ok(tag) => {
                    tracing::info!(cgroup = %tag.cgroup.display(), agent = %tag.agent, "tagged");
                    Response::Tagged { tag }
                }
                Err(e) => err(&e),
            }
        }
        Request::Untag { cgroup } => match ctx.tags.untag(&cgroup) {
            Ok(tag) => {
                tracing::info!(cgroup = %tag.cgroup.display(), agent = %tag.agent, "untagged");
                Response::Untagged { tag }
            }
            Err(e) => err(&e),
        },
        Request::Agents => Response::Agents {
            tags: ctx.tags.list(),
            delegated: crate::metering::delegate::records(&ctx.ledger)
                .into_iter()
                .map(|(agent, record)| super::protocol::DelegatedBudget { agent, record })
                .collect(),
        },
        other => handle_ledger(other, ctx).await,
    }
}

/// The budget and pricing verbs.
async fn handle_ledger(req: Request, ctx: &ControlContext) -> Response {
    let err = |e: &dyn std::fmt::Display| Response::Error {
        message: e.to_string(),
    };
    let name = |a: &str| a.parse::<AgentName>();
    match req {
        Request::CaExport => Response::CaCert { pem: ctx.ca.cert_pem().to_string() },
        Request::Top => Response::Top {
            snapshot: super::snapshot::build(&ctx.ledger, &ctx.metrics.metering.activity, chrono::Utc::now(), crate::activity::now_sec()),
        },
        Request::LimitSet { agent, patch } => match name(&agent) {
            Ok(n) => match ctx.ledger.set_limits(&n, patch).await {
                Ok(limits) => {
                    tracing::info!(agent = %n, ?limits, "limits set");
                    Response::Limits { agent, limits: serde_json::to_value(limits).unwrap_or_default() }
                }
                Err(e) => err(&e),
            },
            Err(e) => err(&e),
        },
        Request::LimitShow { agent } => match name(&agent) {
            Ok(n) => Response::Limits { agent, limits: serde_json::to_value(ctx.ledger.limits(&n)).unwrap_or_default() },
            Err(e) => err(&e),
        },
        Request::Status { agent } => match name(&agent) {
            Ok(n) => match ctx.ledger.cluster_status(&n).await {
                None => Response::Status { status: crate::metering::delegate::status_json(&ctx.ledger, &n) },
                // Cluster-wide numbers, plus who holds what leased.
                Some(Ok(u)) => {
                    let mut status = crate::metering::delegate::with_created_by(&ctx.ledger, &n, serde_json::to_value(&u.status).unwrap_or_default());
                    let nodes: serde_json::Map<String, serde_json::Value> = u
                        .nodes
                        .iter()
                        .map(|(k, v)| (k.clone(), serde_json::json!(v.as_usd_f64())))
                        .collect();
                    if let Some(obj) = status.as_object_mut() {
                        obj.insert("nodes".into(), serde_json::Value::Object(nodes));
                        obj.insert("node".into(), serde_json::json!(ctx.ledger.cluster_node()));
                    }
                    Response::Status { status }
                }
                Some(Err(e)) => err(&e),
            },
            Err(e) => err(&e),
        },
        Request::NodeForget { node } => {
            if !ctx.ledger.is_clustered() {
                return Response::Error { message: "no cluster store is configured (cluster_store / SPENDGUARD_CLUSTER_STORE): there is nothing to forget".into() };
            }
            if Some(node.as_str()) == ctx.ledger.cluster_node() {
                return Response::Error { message: format!("{node} is this node; run `node forget` from another node, for a node that is gone") };
            }
            match ctx.ledger.forget_node(&node).await {
                Ok(released) => {
                    tracing::warn!(node, %released, "node forget");
                    Response::Done { message: format!("released {released} of budget slices held by node {node}") }
                }
                Err(e) => err(&e),
            }
        }
        Request::Pause { agent } => match name(&agent) {
            Ok(n) => match ctx.ledger.pause(&n).await {
                Ok(()) => Response::Done { message: format!("paused {n}: its requests and its descendants' are blocked until `spendguard resume {n}`") },
                Err(e) => err(&e),
            },
            Err(e) => err(&e),
        },
        Request::Resume { agent } => match name(&agent) {
            Ok(n) => match ctx.ledger.resume(&n).await {
                Ok(()) => Response::Done { message: format!("resumed {n}") },
                Err(e) => err(&e),
            },
            Err(e) => err(&e),
        },
        Request::Audit { agent, since, limit } => {
            let agent = match agent.as_deref().map(name).transpose() {
                Ok(a) => a,
                Err(e) => return err(&e),
            };
            match ctx.ledger.audit_synced(AuditFilter { agent, since, limit }).await {
                Ok(events) => Response::Audit { events: serde_json::to_value(events).unwrap_or_default() },
                Err(e) => err(&e),
            }
        }
        Request::Report { agent, since, until } => {
            let agent = match agent.as_deref().map(name).transpose() {
                Ok(a) => a,
                Err(e) => return err(&e),
            };
            // Days are the agent's local days (its --tz), or UTC for the whole node.
            let zone = agent.as_ref().map_or_else(spendguard_ledger::Zone::utc, |a| ctx.ledger.status(a).tz);
            match ctx.ledger.audit_synced(AuditFilter { agent, since, limit: 0 }).await {
                Ok(events) => Response::Report { tz: zone.to_string(), rows: crate::report::rows(&events, until, &zone) },
                Err(e) => err(&e),
            }
        }
        Request::PriceSet { model, price } => {
            if model.trim().is_empty() {
                return Response::Error { message: "model name is empty".into() };
            }
            match ctx.prices.set(&ctx.ledger, &model, price).await {
                Ok(()) => Response::Done { message: format!("price for {model} set") },
                Err(e) => err(&e),
            }
        }
        Request::Prices => {
            let table = ctx.prices.read();
            let mut models: Vec<serde_json::Value> = table
                .iter()
                .map(|(m, p)| {
                    serde_json::json!({
                        "model": m,
                        "input_per_mtok": p.input_per_mtok.as_usd_f64(),
                        "cached_input_per_mtok": p.cached_input_per_mtok.map(|v| v.as_usd_f64()),
                        "cache_write_per_mtok": p.cache_write_per_mtok.map(|v| v.as_usd_f64()),
                        "output_per_mtok": p.output_per_mtok.as_usd_f64(),
                        "max_output_tokens": p.max_output_tokens,
                        "context_window": p.context_window,
                    })
                })
                .collect();
            models.sort_by(|a, b| a["model"].as_str().cmp(&b["model"].as_str()));
            Response::Prices { source: table.source().to_string(), date: table.date().to_string(), models: serde_json::Value::Array(models) }
        }
        Request::RecoverConfirm => match ctx.ledger.hold() {
            None => Response::Done { message: "no recovery hold is in force".into() },
            Some(hold) => match ctx.ledger.release_hold().await {
                Ok(()) => {
                    tracing::warn!(since = %hold.since, reason = %hold.reason, "recovery hold lifted by an operator: requests are decided by the budgets again");
                    Response::Done { message: format!("recovery hold (since {}) lifted: requests are decided by the budgets again", hold.since) }
                }
                Err(e) => err(&e),
            },
        },
        Request::Ping | Request::Tag { .. } | Request::Untag { .. } | Request::Agents => {
            Response::Error { message: "internal: tag verb routed to the ledger handler".into() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::ProtocolError;

    #[tokio::test]
    async fn endless_line_is_bounded_and_refused() {
        // A client that sends bytes forever and never a newline.
        let line = read_request_line(tokio::io::repeat(b'{')).await.unwrap();
        assert_eq!(line.len(), MAX_REQUEST_BYTES + 1);
        assert!(matches!(
            parse_request(&line),
            Err(ProtocolError::TooLarge { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_dropped_after_the_timeout() {
        // The other end stays open and sends nothing.
        let (_client, server) = tokio::io::duplex(64);
        let e = read_request_within(server, REQUEST_READ_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("no request line within 10s"), "{e}");
    }

    #[tokio::test]
    async fn reads_one_line_only() {
        let wire: &[u8] = b"{\"op\":\"ping\"}\n{\"op\":\"agents\"}\n";
        let line = read_request_line(wire).await.unwrap();
        assert_eq!(line, b"{\"op\":\"ping\"}\n");
        assert_eq!(parse_request(&line).unwrap(), Request::Ping);
    }

    #[test]
    fn parse_errors_are_typed() {
        let at_limit = vec![b' '; MAX_REQUEST_BYTES];
        assert!(matches!(
            parse_request(&at_limit),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            parse_request(b"{\"op\":\"launch\"}"),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            parse_request(b"{\"op\":\"status\",\"agent\":\"a\",\"extra\":1}"),
            Err(ProtocolError::Malformed(_))
        ));
        assert_eq!(
            parse_request(b"{\"op\":\"status\",\"agent\":\"a\"}\r\n").unwrap(),
            Request::Status { agent: "a".into() }
        );
    }
}
