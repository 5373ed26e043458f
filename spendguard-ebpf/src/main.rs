//! SpendGuard's cgroup programs. All are attached to one cgroup v2 directory (the root in production)
//! and decide per process by walking the caller's cgroup ancestry for a tag.
//!
//! Fail-open / fail-closed at a glance:
//! - untagged cgroups: always untouched (return 1 without looking further);
//! - tagged, TCP 443: redirected to the proxy; if the proxy is down the client sees ECONNREFUSED
//!   (closed) because the rewrite happens regardless of whether anything listens;
//! - tagged, UDP 443: refused (EPERM) so QUIC clients fall back to TCP, where we can see them;
//! - missing config: untouched (the agent writes the config before it attaches, so this only happens
//!   while it is being installed);
//! - a cgroup created at a tagged path (`SG_PENDING`): tagged by `sg_cgroup_mkdir` before `mkdir`
//!   returns, i.e. before any process can be in it — closed across re-creation and reboots.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{bpf_sock_addr, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB},
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_netns_cookie,
        bpf_get_socket_cookie, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
    },
    macros::{cgroup_sock_addr, map, raw_tracepoint, sock_ops},
    maps::{Array, HashMap, LruHashMap},
    programs::{RawTracePointContext, SockAddrContext, SockOpsContext},
    EbpfContext,
};
use aya_log_ebpf::{debug, warn};
use spendguard_common::{
    sizes, CgroupPath, Config, FlowKey, OrigDst, TagValue, AF_INET, AF_INET6, CONFIG_ENABLED,
    CONFIG_HAS_MKDIR_OFFSETS, CONFIG_HAS_REDIRECT_IP6, HTTPS_PORT,
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
/// 127.0.0.1 in network order as the kernel stores it in a little-endian u32.
const LOOPBACK4: u32 = u32::from_be(0x7f00_0001);

#[map(name = "SG_TAGGED")]
static TAGGED: HashMap<u64, TagValue> = HashMap::pinned(sizes::TAGGED_MAX, 0);

#[map(name = "SG_CONFIG")]
static CONFIG: Array<Config> = Array::pinned(1, 0);

#[map(name = "SG_SOCKETS")]
static SOCKETS: LruHashMap<u64, OrigDst> = LruHashMap::pinned(sizes::SOCKETS_MAX, 0);

#[map(name = "SG_REDIRECTS")]
static REDIRECTS: LruHashMap<FlowKey, OrigDst> = LruHashMap::pinned(sizes::REDIRECTS_MAX, 0);

#[map(name = "SG_PENDING")]
static PENDING: HashMap<CgroupPath, TagValue> = HashMap::pinned(sizes::PENDING_MAX, 0);

/// connect() of an IPv4 socket. Fails closed for tagged cgroups (see the crate doc).
#[cgroup_sock_addr(connect4)]
pub fn sg_connect4(ctx: SockAddrContext) -> i32 {
    verdict(try_connect(&ctx, false))
}

/// connect() of an IPv6 socket, including IPv4-mapped destinations of dual-stack sockets.
#[cgroup_sock_addr(connect6)]
pub fn sg_connect6(ctx: SockAddrContext) -> i32 {
    verdict(try_connect(&ctx, true))
}

/// sendmsg() on an unconnected IPv4 UDP socket: refuse port 443 from tagged cgroups (QUIC).
#[cgroup_sock_addr(sendmsg4)]
pub fn sg_sendmsg4(ctx: SockAddrContext) -> i32 {
    verdict(Ok(try_sendmsg(&ctx)))
}

/// sendmsg() on an unconnected IPv6 UDP socket: as `sg_sendmsg4`.
#[cgroup_sock_addr(sendmsg6)]
pub fn sg_sendmsg6(ctx: SockAddrContext) -> i32 {
    verdict(Ok(try_sendmsg(&ctx)))
}

/// The verifier insists on a return value it can prove is 0 or 1; a value that went through the
/// stack has lost its range, so clamp it here in registers.
#[inline(always)]
fn verdict(r: Result<i32, i32>) -> i32 {
    match r {
        Ok(ALLOW) => ALLOW,
        _ => REFUSE,
    }
}

/// TCP state callbacks: when a redirected client socket is established, re-key its original
/// destination by the client's (address, port), which is exactly what the proxy sees as its peer.
/// Fails open (returns 1 always): sock_ops cannot refuse anything, and a missing record makes the
/// proxy refuse the connection, which is closed anyway.
#[sock_ops]
pub fn sg_sock_ops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        on_established(&ctx);
    }
    1
}

#[inline(always)]
fn sa(ctx: &SockAddrContext) -> *mut bpf_sock_addr {
    ctx.sock_addr
}

/// The nearest tagged cgroup among the caller's cgroup and its ancestors, 0 if none.
#[inline(always)]
fn nearest_tag() -> u64 {
    let mut found = 0u64;
    let mut level: u32 = 0;
    while level < sizes::MAX_CGROUP_DEPTH {
        // SAFETY: plain helper call; returns 0 past the caller's depth.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            break;
        }
        if TAGGED.get_ptr(id).is_some() {
            // Deeper levels come later, so the last hit is the nearest tag.
            found = id;
        }
        level += 1;
    }
    found
}

#[inline(always)]
fn config() -> Option<Config> {
    let cfg = CONFIG.get(0)?;
    if cfg.flags & CONFIG_ENABLED == 0 {
        return None;
    }
    Some(*cfg)
}

#[inline(always)]
fn try_connect(ctx: &SockAddrContext, v6: bool) -> Result<i32, i32> {
    let s = sa(ctx);
    // SAFETY: reads of the verifier-checked context.
    let (port_be, protocol) = unsafe { ((*s).user_port, (*s).protocol) };
    // user_port holds the port in network order in its low 16 bits.
    if u16::from_be(port_be as u16) != HTTPS_PORT {
        return Ok(ALLOW);
    }
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return Ok(ALLOW);
    }
    let Some(cfg) = config() else {
        return Ok(ALLOW);
    };
    // The agent's own upstream sockets carry its mark: never loop them back to ourselves.
    // SAFETY: `sk` is a verifier-checked PTR_TO_SOCKET; `mark` is a readable 4-byte field.
    let mark = unsafe { (*(*s).__bindgen_anon_1.sk).mark };
    if mark == cfg.agent_mark {
        return Ok(ALLOW);
    }
    let tag = nearest_tag();
    if tag == 0 {
        return Ok(ALLOW);
    }
    if protocol == IPPROTO_UDP {
        debug!(
            ctx,
            "spendguard: refused UDP 443 connect from tagged cgroup {}", tag
        );
        return Err(REFUSE);
    }

    // SAFETY: helper calls on the program's own context.
    let (netns, cookie) = unsafe {
        (
            bpf_get_netns_cookie(ctx.as_ptr()),
            bpf_get_socket_cookie(ctx.as_ptr()),
        )
    };
    let from_node = netns == cfg.node_netns_cookie;
    // SAFETY: plain helper call.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let mut orig = OrigDst {
        addr: [0; 4],
        port: HTTPS_PORT,
        family: AF_INET,
        _pad0: 0,
        tag_cgroup_id: tag,
        cgroup_id,
    };

    if !v6 {
        // SAFETY: context read.
        let ip = unsafe { (*s).user_ip4 };
        // A pod's own loopback is the pod's business: redirecting it would let a pod reach the node's
        // loopback services through the proxy.
        if !from_node && is_loopback4(ip) {
            return Ok(ALLOW);
        }
        orig.addr[0] = ip;
        let new_ip = if from_node {
            LOOPBACK4
        } else {
            cfg.redirect_ip4
        };
        if new_ip == 0 {
            return Err(REFUSE);
        }
        record(ctx, cookie, &orig)?;
        // SAFETY: writes to writable context fields; volatile so LLVM cannot merge the two stores into one
        // 8-byte store the verifier would reject.
        unsafe {
            core::ptr::write_volatile(&mut (*s).user_ip4, new_ip);
            core::ptr::write_volatile(&mut (*s).user_port, u32::from(cfg.proxy_port.to_be()));
        }
        return Ok(ALLOW);
    }

    // SAFETY: context reads, one word at a time (the verifier wants 4-byte loads here).
    let ip6 = unsafe {
        [
            core::ptr::read_volatile(&(*s).user_ip6[0]),
            core::ptr::read_volatile(&(*s).user_ip6[1]),
            core::ptr::read_volatile(&(*s).user_ip6[2]),
            core::ptr::read_volatile(&(*s).user_ip6[3]),
        ]
    };
    let mapped = ip6[0] == 0 && ip6[1] == 0 && ip6[2] == u32::from_be(0x0000_ffff);
    let new6: [u32; 4] = if mapped {
        if !from_node && is_loopback4(ip6[3]) {
            return Ok(ALLOW);
        }
        orig.addr[0] = ip6[3];
        let v4 = if from_node {
            LOOPBACK4
        } else {
            cfg.redirect_ip4
        };
        if v4 == 0 {
            return Err(REFUSE);
        }
        [0, 0, u32::from_be(0x0000_ffff), v4]
    } else {
        let loopback6 = ip6[0] == 0 && ip6[1] == 0 && ip6[2] == 0 && ip6[3] == u32::from_be(1);
        if !from_node && loopback6 {
            return Ok(ALLOW);
        }
        orig.family = AF_INET6;
        orig.addr = ip6;
        if from_node {
            [0, 0, 0, u32::from_be(1)]
        } else if cfg.flags & CONFIG_HAS_REDIRECT_IP6 != 0 {
            cfg.redirect_ip6
        } else {
            // No IPv6 address to send pods to: refuse, so happy-eyeballs clients use IPv4.
            return Err(REFUSE);
        }
    };
    record(ctx, cookie, &orig)?;
    // SAFETY: writable context fields, one 4-byte store each (see above).
    unsafe {
        core::ptr::write_volatile(&mut (*s).user_ip6[0], new6[0]);
        core::ptr::write_volatile(&mut (*s).user_ip6[1], new6[1]);
        core::ptr::write_volatile(&mut (*s).user_ip6[2], new6[2]);
        core::ptr::write_volatile(&mut (*s).user_ip6[3], new6[3]);
        core::ptr::write_volatile(&mut (*s).user_port, u32::from(cfg.proxy_port.to_be()));
    }
    Ok(ALLOW)
}

/// Remember the original destination by socket cookie. If the map refuses, the connection is refused:
/// a redirected connection the proxy cannot place would be refused by the proxy anyway.
#[inline(always)]
fn record(ctx: &SockAddrContext, cookie: u64, orig: &OrigDst) -> Result<(), i32> {
    if SOCKETS.insert(cookie, orig, 0).is_err() {
        warn!(
            ctx,
            "spendguard: SG_SOCKETS insert failed; refusing connect"
        );
        return Err(REFUSE);
    }
    Ok(())
}

#[inline(always)]
fn is_loopback4(ip_net: u32) -> bool {
    // First octet is the lowest byte of the network-order word on a little-endian machine.
    u32::from_be(ip_net) >> 24 == 127
}

#[inline(always)]
fn try_sendmsg(ctx: &SockAddrContext) -> i32 {
    let s = sa(ctx);
    // SAFETY: context read.
    let port_be = unsafe { (*s).user_port };
    if u16::from_be(port_be as u16) != HTTPS_PORT {
        return ALLOW;
    }
    if config().is_none() || nearest_tag() == 0 {
        return ALLOW;
    }
    REFUSE
}

#[inline(always)]
fn on_established(ctx: &SockOpsContext) {
    // SAFETY: helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out immediately; a concurrent delete can at worst give a stale copy.
    let Some(orig) = (unsafe { SOCKETS.get(cookie) }).copied() else {
        return;
    };
    let mut key = FlowKey {
        addr: [0; 4],
        // local_port is host order in sock_ops.
        port: ctx.local_port() as u16,
        family: AF_INET,
        _pad0: 0,
    };
    if ctx.family() == u32::from(AF_INET) {
        key.addr[0] = ctx.local_ip4();
    } else {
        let l = ctx.local_ip6();
        if l[0] == 0 && l[1] == 0 && l[2] == u32::from_be(0x0000_ffff) {
            key.addr[0] = l[3];
        } else {
            key.family = AF_INET6;
            key.addr = l;
        }
    }
    if REDIRECTS.insert(key, orig, 0).is_err() {
        warn!(
            ctx,
            "spendguard: SG_REDIRECTS insert failed; the proxy will refuse this connection"
        );
    }
    let _ = SOCKETS.remove(cookie);
}

/// A cgroup is being created (raw tracepoint `cgroup_mkdir`, which fires inside `cgroup_mkdir()`
/// before the new directory is activated): if its path is a tagged path, tag its new id now, so no
/// process ever runs in it untagged. Fails open in the sense that a miss (path too long, offsets
/// unknown, a v1 hierarchy) leaves the tag to the agent's reconcile loop; it can never tag a cgroup
/// whose path is not in `SG_PENDING`.
#[raw_tracepoint(tracepoint = "cgroup_mkdir")]
pub fn sg_cgroup_mkdir(ctx: RawTracePointContext) -> i32 {
    let _ = try_cgroup_mkdir(&ctx);
    0
}

#[inline(always)]
fn try_cgroup_mkdir(ctx: &RawTracePointContext) -> Result<(), i32> {
    let Some(cfg) = config() else { return Ok(()) };
    if cfg.flags & CONFIG_HAS_MKDIR_OFFSETS == 0 {
        return Ok(());
    }
    // TP_PROTO(struct cgroup *cgrp, const char *path)
    let cgrp: u64 = ctx.arg(0);
    let path: u64 = ctx.arg(1);
    let mut key = CgroupPath {
        bytes: [0; sizes::CGROUP_PATH_MAX],
    };
    // SAFETY: probe reads of kernel memory; a bad pointer gives an error, not a fault.
    unsafe { bpf_probe_read_kernel_str_bytes(path as *const u8, &mut key.bytes) }.map_err(|_| 0)?;
    // SAFETY: the value is copied out at once.
    let Some(tag) = (unsafe { PENDING.get(&key) }).copied() else {
        return Ok(());
    };
    // Only the v2 hierarchy: on a hybrid host systemd creates the same paths in every v1
    // hierarchy, whose kernfs ids mean nothing to the cgroup hooks.
    // SAFETY: probe reads at offsets read from this kernel's BTF by the agent.
    let root: u64 =
        unsafe { bpf_probe_read_kernel((cgrp + u64::from(cfg.off_cgroup_root)) as *const u64) }
            .map_err(|_| 0)?;
    // SAFETY: as above.
    let hierarchy: i32 = unsafe {
        bpf_probe_read_kernel((root + u64::from(cfg.off_root_hierarchy_id)) as *const i32)
    }
    .map_err(|_| 0)?;
    if hierarchy != 0 {
        return Ok(());
    }
    // SAFETY: as above.
    let kn: u64 =
        unsafe { bpf_probe_read_kernel((cgrp + u64::from(cfg.off_cgroup_kn)) as *const u64) }
            .map_err(|_| 0)?;
    // SAFETY: as above.
    let id: u64 = unsafe { bpf_probe_read_kernel((kn + u64::from(cfg.off_kn_id)) as *const u64) }
        .map_err(|_| 0)?;
    if id == 0 {
        return Ok(());
    }
    if TAGGED.insert(&id, &tag, 0).is_err() {
        warn!(
            ctx,
            "spendguard: SG_TAGGED full; re-created tagged cgroup {} waits for the agent", id
        );
    }
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
