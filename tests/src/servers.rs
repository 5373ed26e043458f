//! Fake upstream servers that live inside a test namespace.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::Netns;

/// A TCP server that answers every connection with one JSON line: its name, the peer it saw, and the
/// bytes it received. Stops on drop.
pub struct EchoServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
}

impl EchoServer {
    pub fn start(ns: &Netns, addr: &str, name: &'static str) -> EchoServer {
        let addr: SocketAddr = addr.parse().expect("addr");
        let listener = ns.enter(move || TcpListener::bind(addr).expect("bind echo server"));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let accepted = Arc::new(AtomicUsize::new(0));
        let accepted2 = accepted.clone();
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        accepted2.fetch_add(1, Ordering::SeqCst);
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 256];
                        let n = s.read(&mut buf).unwrap_or(0);
                        let reply = serde_json::json!({
                            "server": name,
                            "peer": peer.to_string(),
                            "data": String::from_utf8_lossy(&buf[..n]),
                        });
                        let _ = s.write_all(reply.to_string().as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        EchoServer {
            addr,
            stop,
            accepted,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
