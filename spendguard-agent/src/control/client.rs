//! The CLI side of the control socket. Before sending anything it checks that the socket is root's
//! and not open to others, and that the process answering is root: a planted socket cannot harvest
//! requests.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::protocol::{Request, Response};
use super::MAX_RESPONSE_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the SpendGuard agent at {path}: {source} (is spendguard-agent running? are you root? SPENDGUARD_SOCKET sets the path)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing to use control socket {path}: {why}")]
    Untrusted { path: PathBuf, why: String },
    #[error("talking to the agent failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the agent sent a malformed response: {0}")]
    Malformed(serde_json::Error),
    #[error("{0}")]
    Agent(String),
}

pub fn call(socket: &Path, req: &Request) -> Result<Response, ClientError> {
    let meta = std::fs::metadata(socket).map_err(|source| ClientError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    if meta.uid() != 0 {
        return Err(ClientError::Untrusted {
            path: socket.to_path_buf(),
            why: format!("it is owned by uid {}, not root", meta.uid()),
        });
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(ClientError::Untrusted {
            path: socket.to_path_buf(),
            why: format!(
                "its mode {:o} lets other users in (expected 0600)",
                meta.permissions().mode() & 0o777
            ),
        });
    }
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    let peer = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| ClientError::Io(e.into()))?;
    if peer.uid() != 0 {
        return Err(ClientError::Untrusted {
            path: socket.to_path_buf(),
            why: format!("the process behind it runs as uid {}, not root", peer.uid()),
        });
    }
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut line = serde_json::to_vec(req).map_err(ClientError::Malformed)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut buf = Vec::new();
    BufReader::new(stream)
        .take(MAX_RESPONSE_BYTES as u64)
        .read_until(b'\n', &mut buf)?;
    let resp: Response = serde_json::from_slice(&buf).map_err(ClientError::Malformed)?;
    match resp {
        Response::Error { message } => Err(ClientError::Agent(message)),
        other => Ok(other),
    }
}
