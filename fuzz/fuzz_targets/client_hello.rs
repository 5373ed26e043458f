//! The ClientHello peek (proxy::route): arbitrary first bytes never panic, the answer does not depend
//! on how the bytes are split into reads, only a provider SNI is intercepted, a first byte that is not
//! a TLS record type is passed through at once, only what starts like TLS is refused, and nothing
//! waits past MAX_CLIENT_HELLO bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls::pki_types::ServerName;
use spendguard_agent::proxy::route::{
    classify_bytes, Decision, HelloPeek, HostList, Route, DEFAULT_PROVIDER_HOSTS, MAX_CLIENT_HELLO,
};

fuzz_target!(|data: &[u8]| {
    thread_local!(static HOSTS: HostList = HostList::new(DEFAULT_PROVIDER_HOSTS));
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    // Even selector: the rest is the client's bytes as they are. Odd: it describes a well-formed
    // ClientHello, so the fuzzer spends its time past the record layer and the answer is known.
    let (wire, want) = if sel & 1 == 0 {
        (rest.to_vec(), Want::Any)
    } else {
        let Some(crafted) = HOSTS.with(|hosts| crafted(rest, hosts)) else {
            return;
        };
        crafted
    };
    let split = (sel >> 1) as usize * wire.len() / 127;
    HOSTS.with(|hosts| check(&wire, split, hosts, want));
});

/// What a crafted ClientHello must get.
enum Want {
    Any,
    Refuse,
    Exactly(Route),
}

fn check(wire: &[u8], split: usize, hosts: &HostList, want: Want) {
    let whole = classify_bytes(wire, hosts);
    let (head, tail) = wire.split_at(split);
    // Asked again with everything read so far, an answer given early stands.
    let early = classify_bytes(head, hosts);
    if let Decision::Done(route) = &early {
        assert_eq!(
            whole,
            Decision::Done(route.clone()),
            "more bytes changed the answer (split at {split})"
        );
    }
    // Fed in two reads, the answer is the one for all the bytes at once.
    let mut peek = HelloPeek::new();
    assert_eq!(peek.feed(head, hosts), early);
    assert_eq!(
        peek.feed(tail, hosts),
        whole,
        "the split at {split} changed the answer"
    );
    match &whole {
        Decision::Done(Route::Intercept { sni }) => {
            assert!(
                hosts.matches(sni),
                "intercepted {sni:?}, not a provider host"
            );
            assert_eq!(*sni, sni.to_ascii_lowercase());
            assert_eq!(
                wire.first(),
                Some(&0x16),
                "intercepted without a handshake record"
            );
        }
        Decision::Done(Route::Passthrough { .. } | Route::OtherHost { .. }) => {}
        // Closing is only for what starts like TLS (anything else is relayed untouched).
        Decision::Done(Route::Refuse { .. }) => assert_eq!(
            wire.first(),
            Some(&0x16),
            "refused without a handshake record"
        ),
        Decision::NeedMore => assert!(
            wire.len() < MAX_CLIENT_HELLO,
            "still waiting past the limit"
        ),
    }
    // 0x14..=0x18 are the TLS record types; rustls refuses anything else from the first byte.
    if let Some(first) = wire.first() {
        if !(0x14..=0x18).contains(first) {
            assert_eq!(whole, Decision::Done(Route::Passthrough { why: "not TLS" }));
        }
    }
    match want {
        Want::Any => {}
        Want::Refuse => assert!(
            matches!(whole, Decision::Done(Route::Refuse { .. })),
            "{whole:?}"
        ),
        Want::Exactly(route) => {
            assert_eq!(whole, Decision::Done(route), "a well-formed ClientHello")
        }
    }
}

/// `[name length][name][fragment size: u16][padding: u16][(offset: u16, byte)...]`: a ClientHello
/// for that server name, padded, cut into records of that size, then patched byte by byte. Unpatched
/// and well inside the limits, its route is known.
fn crafted(rest: &[u8], hosts: &HostList) -> Option<(Vec<u8>, Want)> {
    let (&name_len, rest) = rest.split_first()?;
    let (name, rest) = rest.split_at_checked(name_len as usize)?;
    let name = provider_name(name);
    let name = name.as_slice();
    let [f0, f1, p0, p1, ref patches @ ..] = *rest else {
        return None;
    };
    let fragment = 1 + usize::from(u16::from_be_bytes([f0, f1])) % (16 * 1024);
    let padding = usize::from(u16::from_be_bytes([p0, p1]));
    let hello = client_hello(name, padding);
    // At most 1,024 records: tiny records for a small hello, without every run costing 10k of them.
    let fragment = fragment.max(hello.len().div_ceil(1024));
    let mut wire = Vec::with_capacity(hello.len() + hello.len().div_ceil(fragment) * 5);
    for record in hello.chunks(fragment) {
        wire.extend_from_slice(&[0x16, 3, 1]);
        wire.extend_from_slice(&(record.len() as u16).to_be_bytes());
        wire.extend_from_slice(record);
    }
    for p in patches.chunks_exact(3) {
        let at = usize::from(u16::from_be_bytes([p[0], p[1]])) % wire.len();
        wire[at] = p[2];
    }
    let want = if patches.len() >= 3 {
        Want::Any
    } else if wire.len() > MAX_CLIENT_HELLO {
        // Too large to intercept, however it is read: closed, never relayed.
        Want::Refuse
    } else if wire.len() > 32 * 1024 {
        // rustls's own 64 KiB handshake buffer counts record headers: leave the margin to it.
        Want::Any
    } else {
        Want::Exactly(match ServerName::try_from(name) {
            Ok(ServerName::DnsName(d)) if hosts.matches(d.as_ref()) => Route::Intercept {
                sni: d.as_ref().to_ascii_lowercase(),
            },
            Ok(ServerName::DnsName(d)) => Route::OtherHost {
                sni: d.as_ref().to_ascii_lowercase(),
            },
            Ok(ServerName::IpAddress(_)) => Route::Passthrough { why: "no SNI" },
            // Empty or not a name: rustls refuses the hello, and a TLS hello we cannot read is
            // closed.
            Ok(_) | Err(_) => Route::Refuse {
                why: "TLS ClientHello that cannot be parsed",
            },
        })
    };
    Some((wire, want))
}

/// `@` and a selector byte stand for a provider host (wildcards as a name under them, upper case
/// when the selector's top bit is set), the rest of the name follows it: the fuzzer does not have to
/// guess the hosts to reach the intercept path.
fn provider_name(name: &[u8]) -> Vec<u8> {
    let [b'@', sel, ref rest @ ..] = *name else {
        return name.to_vec();
    };
    let host = DEFAULT_PROVIDER_HOSTS[usize::from(sel & 0x7f) % DEFAULT_PROVIDER_HOSTS.len()];
    let mut out = host.replace("*.", "x.").into_bytes();
    if sel & 0x80 != 0 {
        out.make_ascii_uppercase();
    }
    out.extend_from_slice(rest);
    out
}

/// A ClientHello handshake message: TLS 1.2 header, one cipher suite, null compression, and the
/// extensions rustls needs to accept it (server_name, signature_algorithms) plus padding.
fn client_hello(name: &[u8], padding: usize) -> Vec<u8> {
    fn u16be(n: usize) -> [u8; 2] {
        (n as u16).to_be_bytes()
    }
    let mut ext = Vec::new();
    ext.extend_from_slice(&[0, 0]);
    ext.extend_from_slice(&u16be(name.len() + 5));
    ext.extend_from_slice(&u16be(name.len() + 3));
    ext.push(0);
    ext.extend_from_slice(&u16be(name.len()));
    ext.extend_from_slice(name);
    ext.extend_from_slice(&[0, 0x0d, 0, 4, 0, 2, 0x08, 0x04]);
    let padding = padding.min(0xffff - 4 - ext.len());
    if padding > 0 {
        ext.extend_from_slice(&[0, 0x15]);
        ext.extend_from_slice(&u16be(padding));
        ext.resize(ext.len() + padding, 0);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0; 32]);
    body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&u16be(ext.len()));
    body.extend_from_slice(&ext);
    let mut hello = vec![1];
    hello.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hello.extend_from_slice(&body);
    hello
}
