//! Connections from the agent to the original destination. Every upstream socket carries
//! `AGENT_SOCKET_MARK`, which the BPF programs never redirect, so the agent cannot loop back into
//! itself even when it runs inside a tagged cgroup.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

/// How long a TCP connect to a provider may take before the client gets an error.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn connect(dst: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = if dst.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket2::SockRef::from(&sock).set_mark(spendguard_common::AGENT_SOCKET_MARK)?;
    sock.set_nodelay(true)?;
    match tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(dst)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connect to {dst} timed out"),
        )),
    }
}
