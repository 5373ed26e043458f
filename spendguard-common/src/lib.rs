//! The BPF ABI of SpendGuard: everything the eBPF programs and the node agent must agree on byte for
//! byte. Nothing else lives here.
//!
//! Layout rules: every type is `#[repr(C)]`, has explicit padding, no `bool`, and a size assertion, so
//! the BPF object and user space can never silently disagree. Addresses are stored as the kernel hands
//! them to us (network byte order in `u32` words); ports in host byte order.
#![no_std]
#![cfg_attr(
    feature = "user",
    expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")
)]

/// Version of the map layout below (names, key/value types, sizes). Maps are pinned under
/// `<pin dir>/maps/v<MAP_LAYOUT>/`, so an agent never adopts maps whose layout it does not know:
/// a newer agent creates its own set, fills it, swaps its programs into the pinned links (one
/// atomic `BPF_LINK_UPDATE` each) and only then unpins the old set. Layout 1 (release 0.1) pinned
/// its maps directly in `<pin dir>/maps/`. Bump this whenever any type or size here changes.
pub const MAP_LAYOUT: u32 = 2;

/// Map names, as they appear in the BPF object and under the pin directory.
pub mod maps {
    /// `HashMap<u64 cgroup id, TagValue>`: cgroups whose processes are redirected (they and descendants).
    pub const TAGGED: &str = "SG_TAGGED";
    /// `Array<Config>` with one entry, written by the agent before it attaches the programs.
    pub const CONFIG: &str = "SG_CONFIG";
    /// `LruHashMap<u64 socket cookie, OrigDst>`: connect() → TCP established.
    pub const SOCKETS: &str = "SG_SOCKETS";
    /// `LruHashMap<FlowKey, OrigDst>`: established client socket → the proxy's accept().
    pub const REDIRECTS: &str = "SG_REDIRECTS";
    /// `HashMap<CgroupPath, TagValue>`: tagged cgroup paths (relative to the cgroup v2 root). When
    /// a cgroup is created at one of them, `sg_cgroup_mkdir` puts its id into `SG_TAGGED` before
    /// `mkdir` returns, so a re-created cgroup (a restarted systemd unit, a pod after a reboot) is
    /// never untagged for a moment.
    pub const PENDING: &str = "SG_PENDING";
}

/// Program names (the Rust function names in the BPF crate).
pub mod programs {
    pub const CONNECT4: &str = "sg_connect4";
    pub const CONNECT6: &str = "sg_connect6";
    pub const SENDMSG4: &str = "sg_sendmsg4";
    pub const SENDMSG6: &str = "sg_sendmsg6";
    pub const SOCK_OPS: &str = "sg_sock_ops";
    /// Raw tracepoint `cgroup_mkdir` (not a cgroup hook: it sees every cgroup created on the node).
    pub const CGROUP_MKDIR: &str = "sg_cgroup_mkdir";
    /// The tracepoint it attaches to.
    pub const CGROUP_MKDIR_TRACEPOINT: &str = "cgroup_mkdir";
}

/// Map sizes, each with the reason for its size.
pub mod sizes {
    /// Tagged cgroups on one node: a node runs at most a few hundred pods (kubelet's default max-pods is
    /// 110), each with a handful of containers, plus manual tags. 16 Ki leaves an order of magnitude.
    pub const TAGGED_MAX: u32 = 16 * 1024;
    /// Connections between connect() and the TCP handshake completing. LRU, so a burst evicts only the
    /// oldest half-open attempts; 64 Ki covers 10,000 agents' concurrent connects many times over.
    pub const SOCKETS_MAX: u32 = 64 * 1024;
    /// Established redirected connections not yet accepted by the proxy (the accept backlog across
    /// listeners, bounded by somaxconn 4096 each). LRU for the same reason as `SOCKETS_MAX`.
    pub const REDIRECTS_MAX: u32 = 64 * 1024;
    /// How deep in the cgroup tree the programs look for a tagged ancestor. Kubernetes pods sit at depth
    /// 4–6 (kubepods.slice/kubepods-burstable.slice/…/cri-containerd-….scope); 32 is far beyond that.
    pub const MAX_CGROUP_DEPTH: u32 = 32;
    /// Tagged paths watched for (re-)creation: one per tag (pods are tagged at their pod-level
    /// directory), so the same bound as `TAGGED_MAX`'s reasoning at a quarter of it: 4 Ki paths of
    /// 256 bytes cost about 1.3 MB of kernel memory.
    pub const PENDING_MAX: u32 = 4 * 1024;
    /// Longest cgroup path (relative to the v2 root, with its leading `/`) the mkdir hook can match.
    /// kubelet's pod directories are ~110 bytes with the systemd driver; longer tagged paths fall
    /// back to the agent's reconcile loop (the agent warns).
    pub const CGROUP_PATH_MAX: usize = 256;
}

/// The TCP/UDP port that is intercepted.
pub const HTTPS_PORT: u16 = 443;
/// `SO_MARK` put on the agent's own upstream sockets: the programs never redirect them, even if the agent
/// itself runs inside a tagged cgroup. ("SG" in ASCII, high bits set to stay clear of common CNI marks.)
pub const AGENT_SOCKET_MARK: u32 = 0x5347_0000;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// `Config::flags`: the programs act only when this is set (the agent clears it to stand down).
pub const CONFIG_ENABLED: u32 = 1;
/// `Config::flags`: `redirect_ip6` is valid; without it, IPv6 connects from pod namespaces are refused
/// (fail closed; dual-stack clients then fall back to IPv4).
pub const CONFIG_HAS_REDIRECT_IP6: u32 = 2;
/// `Config::flags`: the `off_*` fields hold this kernel's struct offsets (read from its BTF), so
/// `sg_cgroup_mkdir` may read the new cgroup's id; without it the hook does nothing.
pub const CONFIG_HAS_MKDIR_OFFSETS: u32 = 4;

/// Written by the agent, read by every program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Netns cookie of the agent's own network namespace: connects from it go to loopback.
    pub node_netns_cookie: u64,
    /// IPv4 of the node that pods are redirected to (network order, as in `bpf_sock_addr.user_ip4`).
    pub redirect_ip4: u32,
    /// The proxy's port, host order.
    pub proxy_port: u16,
    pub _pad0: u16,
    /// IPv6 of the node that pods are redirected to (network order words), when `CONFIG_HAS_REDIRECT_IP6`.
    pub redirect_ip6: [u32; 4],
    /// `CONFIG_*` bits.
    pub flags: u32,
    /// `SO_MARK` of the agent's own sockets.
    pub agent_mark: u32,
    /// Byte offset of `kn` (`struct kernfs_node *`) in `struct cgroup`.
    pub off_cgroup_kn: u32,
    /// Byte offset of `id` (`u64`, the cgroup id) in `struct kernfs_node`.
    pub off_kn_id: u32,
    /// Byte offset of `root` (`struct cgroup_root *`) in `struct cgroup`.
    pub off_cgroup_root: u32,
    /// Byte offset of `hierarchy_id` (`int`; 0 is the v2 hierarchy) in `struct cgroup_root`.
    pub off_root_hierarchy_id: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 56);

/// A tagged cgroup. The agent name lives in user space; the programs only need to know "tagged".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TagValue {
    /// Reserved for per-tag behaviour (e.g. "block all"); 0 today.
    pub flags: u32,
    pub _pad0: u32,
}
const _: () = assert!(core::mem::size_of::<TagValue>() == 8);

/// Where a redirected connection was going, and who made it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// Network-order address words; IPv4 (also IPv4-mapped IPv6) in `addr[0]` with `family == AF_INET`.
    pub addr: [u32; 4],
    /// Host order.
    pub port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    pub _pad0: u32,
    /// The tagged cgroup (nearest tagged ancestor-or-self) that made this connection redirectable.
    pub tag_cgroup_id: u64,
    /// The cgroup of the process that called connect().
    pub cgroup_id: u64,
}
const _: () = assert!(core::mem::size_of::<OrigDst>() == 40);

/// The client side of an established redirected connection, as the proxy sees its peer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Network-order address words; IPv4 (also IPv4-mapped IPv6) in `addr[0]` with `family == AF_INET`.
    pub addr: [u32; 4],
    /// Host order.
    pub port: u16,
    pub family: u16,
    pub _pad0: u32,
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 24);

/// A cgroup path relative to the cgroup v2 root (`/kubepods/burstable/pod…`), NUL-padded: the
/// key of `SG_PENDING`, byte for byte what the `cgroup_mkdir` tracepoint reports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupPath {
    pub bytes: [u8; sizes::CGROUP_PATH_MAX],
}
const _: () = assert!(core::mem::size_of::<CgroupPath>() == sizes::CGROUP_PATH_MAX);

impl CgroupPath {
    /// The key for `rel` (which must start with `/`), or `None` if it is too long to match (the
    /// tracepoint's string must fit with its NUL).
    pub fn new(rel: &[u8]) -> Option<CgroupPath> {
        if rel.len() >= sizes::CGROUP_PATH_MAX {
            return None;
        }
        let mut bytes = [0u8; sizes::CGROUP_PATH_MAX];
        bytes[..rel.len()].copy_from_slice(rel);
        Some(CgroupPath { bytes })
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all five are repr(C), contain only integers, and have explicit padding fields, so every
    // bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::TagValue {}
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::CgroupPath {}
}
