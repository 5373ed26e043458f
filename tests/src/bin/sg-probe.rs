//! A tiny network client the e2e tests run *inside* tagged cgroups and namespaces (the cgroup decides
//! redirection, so the client must be its own process). Prints one JSON line describing what happened.
//!
//!   sg-probe tcp ADDR [PAYLOAD]   connect, send, read the reply
//!   sg-probe udp-connect ADDR     connect() a UDP socket
//!   sg-probe udp-send ADDR        sendto() on an unconnected UDP socket
//!   sg-probe unix PATH LINE       send one line to a Unix socket, print the reply

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = match args.get(1).map(String::as_str) {
        Some("tcp") => tcp(&args[2], args.get(3).map(String::as_str).unwrap_or("ping")),
        Some("udp-connect") => udp(&args[2], true),
        Some("udp-send") => udp(&args[2], false),
        Some("unix") => unix(&args[2], &args[3]),
        _ => serde_json::json!({"error": "usage"}),
    };
    println!("{out}");
}

fn err(e: std::io::Error) -> serde_json::Value {
    serde_json::json!({"ok": false, "errno": e.raw_os_error(), "error": e.to_string()})
}

fn tcp(addr: &str, payload: &str) -> serde_json::Value {
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        return serde_json::json!({"error": "bad addr"});
    };
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return err(e),
    };
    let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if let Err(e) = s.write_all(payload.as_bytes()) {
        return serde_json::json!({"ok": false, "local": local, "peer": peer, "error": e.to_string(), "stage": "write"});
    }
    let mut buf = Vec::new();
    let read = s.read_to_end(&mut buf);
    serde_json::json!({
        "ok": read.is_ok(),
        "local": local,
        "peer": peer,
        "reply": String::from_utf8_lossy(&buf),
        "read_error": read.err().map(|e| e.to_string()),
    })
}

fn udp(addr: &str, connect: bool) -> serde_json::Value {
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        return serde_json::json!({"error": "bad addr"});
    };
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let s = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => return err(e),
    };
    let r = if connect {
        s.connect(addr).and_then(|_| s.send(b"q"))
    } else {
        s.send_to(b"q", addr)
    };
    match r {
        Ok(_) => serde_json::json!({"ok": true}),
        Err(e) => err(e),
    }
}

fn unix(path: &str, line: &str) -> serde_json::Value {
    let mut s = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) => return err(e),
    };
    let _ = s.write_all(format!("{line}\n").as_bytes());
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    serde_json::json!({"ok": true, "reply": buf})
}
