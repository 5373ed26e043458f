//! The agent side of the control socket.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::protocol::{Request, Response};
use super::MAX_REQUEST_BYTES;
use crate::identity::{AgentName, TagSource, TagStore};
use crate::paths;

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
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("control accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
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
    let mut line = Vec::new();
    let n = BufReader::new(rd)
        .take(MAX_REQUEST_BYTES as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    let resp = if n > MAX_REQUEST_BYTES {
        Response::Error {
            message: format!("request larger than {MAX_REQUEST_BYTES} bytes"),
        }
    } else {
        match serde_json::from_slice::<Request>(&line) {
            Ok(req) => handle(req, ctx),
            Err(e) => Response::Error {
                message: format!("malformed request: {e}"),
            },
        }
    };
    write_line(&mut wr, &resp).await
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

fn handle(req: Request, ctx: &ControlContext) -> Response {
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
        },
    }
}
