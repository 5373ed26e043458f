//! `sg-fastfake`: the test fake provider ([`FakeProvider`]) as its own (release-built) process, for
//! `cargo xtask bench`. Serves TLS (h2 + http/1.1; only http/1.1 on `--listen-h1`) on every `--listen ADDR` (bound in whatever network namespace it
//! was started in) with a leaf for every `--host` signed by a fresh test CA, writes that CA to
//! `--ca-out`, prints `ready`, and runs until its stdin closes (so it never outlives the bench).
//! Latency and streaming are controlled per request by the usual `x-fake-*` headers. The recorded
//! requests are dropped every 200 ms so memory stays flat under load.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use spendguard_tests::fake_provider::{FakeProvider, TestCa};

fn main() {
    let mut listen = Vec::new();
    let mut hosts = Vec::new();
    let mut ca_out = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next();
        match (a.as_str(), v) {
            ("--listen", Some(v)) => listen.push((v, false)),
            ("--listen-h1", Some(v)) => listen.push((v, true)),
            ("--host", Some(v)) => hosts.push(v),
            ("--ca-out", Some(v)) => ca_out = Some(v),
            (other, _) => {
                eprintln!("usage: sg-fastfake --listen ADDR... --listen-h1 ADDR... --host NAME... --ca-out FILE (bad: {other})");
                std::process::exit(2);
            }
        }
    }
    let Some(ca_out) = ca_out else {
        eprintln!("sg-fastfake: --ca-out is required");
        std::process::exit(2);
    };
    let ca = TestCa::new("sg-fastfake CA");
    if let Err(e) = std::fs::write(&ca_out, ca.cert_pem()) {
        eprintln!("sg-fastfake: write {ca_out}: {e}");
        std::process::exit(1);
    }
    let host_refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let mut fakes = Vec::new();
    for (addr, h1_only) in &listen {
        let l = match std::net::TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("sg-fastfake: bind {addr}: {e}");
                std::process::exit(1);
            }
        };
        let alpn: &[&[u8]] = if *h1_only { &[b"http/1.1"] } else { &[] };
        fakes.push(FakeProvider::start(l, &ca, &host_refs, alpn));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !matches!(std::io::stdin().read(&mut buf), Ok(0) | Err(_)) {}
        stop2.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    println!("ready");
    let _ = std::io::stdout().flush();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        for f in &fakes {
            f.clear_requests();
        }
    }
    let served: usize = fakes.iter().map(FakeProvider::connections).sum();
    eprintln!("sg-fastfake: stopping ({served} connections served)");
}
