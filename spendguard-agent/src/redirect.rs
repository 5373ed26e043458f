//! The eBPF redirect: load the programs, attach them to a cgroup v2 directory, pin everything, and adopt
//! what a previous run pinned. Also the user-space side of the maps (tags in, original destinations out).
//!
//! Lifecycle (bpfman's load → attach → pin → record, rolled back on failure):
//! - first start: load, attach each program with a link, pin the links under `<pin_dir>/links`;
//! - restart: load the new programs and swap each into its pinned link (BPF_LINK_UPDATE) — never a
//!   second attach (both would run) and never unpin-then-attach (a window where tagged traffic escapes);
//! - agent down: the pinned programs keep rewriting tagged connects to the proxy port, where nothing
//!   listens: tagged clients fail closed (ECONNREFUSED);
//! - `spendguard-agent uninstall`: unpin links (the kernel detaches them) and maps.

mod sys;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use aya::programs::links::{CgroupAttachMode, FdLink};
use aya::programs::{CgroupSockAddr, SockOps};
use aya::{Ebpf, EbpfLoader};
use spendguard_common::{
    maps, programs, Config as BpfConfig, FlowKey, OrigDst, TagValue, AF_INET, AF_INET6,
};

pub use sys::current_netns_cookie;

use crate::identity::tags::TagMap;
use crate::paths;

/// The BPF object built by build.rs (empty when the build was skipped with AYA_BUILD_SKIP=1).
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/spendguard"));

const PROGRAMS: [&str; 5] = [
    programs::CONNECT4,
    programs::CONNECT6,
    programs::SENDMSG4,
    programs::SENDMSG6,
    programs::SOCK_OPS,
];

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("this agent binary was built without its BPF programs (AYA_BUILD_SKIP); rebuild with bpf-linker on PATH")]
    NotBuilt,
    #[error(
        "bpffs is not mounted at {0} and mounting it failed: {1} (mount -t bpf bpffs /sys/fs/bpf)"
    )]
    Bpffs(PathBuf, String),
    #[error("cannot create pin directory {path}: {source} (it must be on bpffs)")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open cgroup {path} to attach to: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading the BPF object failed: {0} (kernel with BPF, BTF and cgroup BPF? running as root?)")]
    Load(#[from] aya::EbpfError),
    #[error("BPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("BPF map {name} is missing or of the wrong type: {detail}")]
    Map { name: &'static str, detail: String },
    #[error("pinning link {path}: {detail}")]
    Pin { path: PathBuf, detail: String },
    #[error("swapping the new program into pinned link {path} failed: {source}; the previous programs stay in force. If the pinned links are from an incompatible version run `spendguard-agent uninstall` first")]
    Update {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove {path}: {source}")]
    Unpin {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// aya-log's reader of the programs' log ring buffer.
pub type BpfLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// What the programs need to know; becomes the `SG_CONFIG` entry.
#[derive(Debug, Clone)]
pub struct RedirectOptions {
    pub pin_dir: PathBuf,
    pub attach_cgroup: PathBuf,
    pub proxy_port: u16,
    /// Where pods are sent; `None` refuses tagged connects from pods (fail closed).
    pub redirect_ip4: Option<Ipv4Addr>,
    pub redirect_ip6: Option<Ipv6Addr>,
    pub node_netns_cookie: u64,
}

/// How the programs were put in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    Attached,
    Adopted,
}

/// The loaded programs and the maps user space reads and writes.
pub struct Redirect {
    tagged: Mutex<BpfHashMap<MapData, u64, TagValue>>,
    redirects: Mutex<BpfHashMap<MapData, FlowKey, OrigDst>>,
    pub installed: Installed,
    // Keeps program fds (and the logger's map) alive for the agent's lifetime.
    _ebpf: Ebpf,
}

impl Redirect {
    /// Loads, configures and attaches (or adopts) the programs. Returns the redirect and aya-log's
    /// logger, which the caller must poll so BPF log lines reach `tracing`.
    pub fn install(opts: &RedirectOptions) -> Result<(Redirect, Option<BpfLogger>), RedirectError> {
        if BPF_OBJECT.is_empty() {
            return Err(RedirectError::NotBuilt);
        }
        ensure_bpffs(&opts.pin_dir)?;
        let maps_dir = paths::bpf_maps_dir(&opts.pin_dir);
        let links_dir = paths::bpf_links_dir(&opts.pin_dir);
        for d in [&maps_dir, &links_dir] {
            std::fs::create_dir_all(d).map_err(|source| RedirectError::PinDir {
                path: d.clone(),
                source,
            })?;
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(BPF_OBJECT)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!("BPF log forwarding unavailable: {e}");
                None
            }
        };

        write_config(&mut ebpf, opts)?;

        let cgroup =
            std::fs::File::open(&opts.attach_cgroup).map_err(|source| RedirectError::Cgroup {
                path: opts.attach_cgroup.clone(),
                source,
            })?;
        let adopting = PROGRAMS.iter().all(|p| links_dir.join(p).exists());
        let partially = !adopting && PROGRAMS.iter().any(|p| links_dir.join(p).exists());
        if partially {
            // A previous install died half-way: finish it (existing links adopted, missing ones attached).
            tracing::warn!(dir = %links_dir.display(), "found a partial set of pinned links; completing it");
        }
        let mut attached_now: Vec<PathBuf> = Vec::new();
        let result = (|| {
            for name in PROGRAMS {
                let pin = links_dir.join(name);
                let prog = ebpf.program_mut(name).ok_or(RedirectError::Map {
                    name,
                    detail: "program not found in the BPF object".into(),
                })?;
                // SockOps and CgroupSockAddr share no trait for load/attach/take_link, hence the macro.
                macro_rules! load_and_link {
                    ($ty:ty) => {{
                        let p: &mut $ty = prog
                            .try_into()
                            .map_err(|source| RedirectError::Program { name, source })?;
                        p.load()
                            .map_err(|source| RedirectError::Program { name, source })?;
                        if pin.exists() {
                            swap(
                                &pin,
                                p.fd()
                                    .map_err(|source| RedirectError::Program { name, source })?
                                    .as_fd(),
                            )?;
                        } else {
                            let id = p
                                .attach(&cgroup, CgroupAttachMode::Single)
                                .map_err(|source| RedirectError::Program { name, source })?;
                            let link = p
                                .take_link(id)
                                .map_err(|source| RedirectError::Program { name, source })?;
                            let fd_link =
                                FdLink::try_from(link).map_err(|e| RedirectError::Pin {
                                    path: pin.clone(),
                                    detail: e.to_string(),
                                })?;
                            pin_link(fd_link, &pin)?;
                            attached_now.push(pin);
                        }
                    }};
                }
                if name == programs::SOCK_OPS {
                    load_and_link!(SockOps);
                } else {
                    load_and_link!(CgroupSockAddr);
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            // Roll back what this run attached, so a failed first install leaves nothing half-done.
            for pin in attached_now {
                let _ = std::fs::remove_file(&pin);
            }
            return Err(e);
        }

        let tagged = take_hash(&mut ebpf, maps::TAGGED)?;
        let redirects = take_hash(&mut ebpf, maps::REDIRECTS)?;
        Ok((
            Redirect {
                tagged: Mutex::new(tagged),
                redirects: Mutex::new(redirects),
                installed: if adopting {
                    Installed::Adopted
                } else {
                    Installed::Attached
                },
                _ebpf: ebpf,
            },
            logger,
        ))
    }

    /// The original destination and identity of an accepted connection, removed from the map (each
    /// record serves exactly one accept). `None`: the redirect did not produce this connection.
    pub fn take_orig_dst(&self, peer: SocketAddr) -> Option<OrigDst> {
        let key = flow_key(peer);
        let mut map = self.redirects.lock().unwrap_or_else(|p| p.into_inner());
        let orig = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(orig)
    }
}

impl TagMap for Redirect {
    fn set(&self, cgroup_id: u64) -> Result<(), String> {
        let mut m = self.tagged.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(cgroup_id, TagValue::default(), 0)
            .map_err(|e| e.to_string())
    }
    fn unset(&self, cgroup_id: u64) -> Result<(), String> {
        let mut m = self.tagged.lock().unwrap_or_else(|p| p.into_inner());
        match m.remove(&cgroup_id) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
    fn ids(&self) -> Result<Vec<u64>, String> {
        let m = self.tagged.lock().unwrap_or_else(|p| p.into_inner());
        m.keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())
    }
}

/// The peer address as the sock_ops program keyed it.
pub fn flow_key(peer: SocketAddr) -> FlowKey {
    let mut key = FlowKey {
        addr: [0; 4],
        port: peer.port(),
        family: AF_INET,
        _pad0: 0,
    };
    match peer.ip() {
        IpAddr::V4(v4) => key.addr[0] = u32::from_ne_bytes(v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => key.addr[0] = u32::from_ne_bytes(v4.octets()),
            None => {
                key.family = AF_INET6;
                key.addr = words6(v6);
            }
        },
    }
    key
}

fn words6(v6: Ipv6Addr) -> [u32; 4] {
    let o = v6.octets();
    let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// Where the client was going.
pub fn orig_dst_addr(o: &OrigDst) -> SocketAddr {
    if o.family == AF_INET6 {
        let mut b = [0u8; 16];
        for (i, w) in o.addr.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        SocketAddr::new(IpAddr::V6(Ipv6Addr::from(b)), o.port)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(o.addr[0].to_ne_bytes())), o.port)
    }
}

fn write_config(ebpf: &mut Ebpf, opts: &RedirectOptions) -> Result<(), RedirectError> {
    let map = ebpf.map_mut(maps::CONFIG).ok_or(RedirectError::Map {
        name: maps::CONFIG,
        detail: "missing".into(),
    })?;
    let mut arr: Array<&mut MapData, BpfConfig> =
        Array::try_from(map).map_err(|e| RedirectError::Map {
            name: maps::CONFIG,
            detail: e.to_string(),
        })?;
    let mut flags = spendguard_common::CONFIG_ENABLED;
    let mut ip6 = [0u32; 4];
    if let Some(v6) = opts.redirect_ip6 {
        flags |= spendguard_common::CONFIG_HAS_REDIRECT_IP6;
        ip6 = words6(v6);
    }
    let cfg = BpfConfig {
        node_netns_cookie: opts.node_netns_cookie,
        redirect_ip4: opts
            .redirect_ip4
            .map(|ip| u32::from_ne_bytes(ip.octets()))
            .unwrap_or(0),
        proxy_port: opts.proxy_port,
        _pad0: 0,
        redirect_ip6: ip6,
        flags,
        agent_mark: spendguard_common::AGENT_SOCKET_MARK,
    };
    arr.set(0, cfg, 0).map_err(|e| RedirectError::Map {
        name: maps::CONFIG,
        detail: e.to_string(),
    })
}

fn take_hash<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<BpfHashMap<MapData, K, V>, RedirectError> {
    let map = ebpf.take_map(name).ok_or(RedirectError::Map {
        name,
        detail: "missing".into(),
    })?;
    BpfHashMap::try_from(map).map_err(|e| RedirectError::Map {
        name,
        detail: e.to_string(),
    })
}

fn pin_link(link: FdLink, pin: &Path) -> Result<(), RedirectError> {
    link.pin(pin).map(drop).map_err(|e| RedirectError::Pin {
        path: pin.to_path_buf(),
        detail: e.to_string(),
    })
}

fn swap(pin: &Path, prog: std::os::fd::BorrowedFd<'_>) -> Result<(), RedirectError> {
    let link = sys::obj_get(pin).map_err(|source| RedirectError::Update {
        path: pin.to_path_buf(),
        source,
    })?;
    sys::link_update(link.as_fd(), prog).map_err(|source| RedirectError::Update {
        path: pin.to_path_buf(),
        source,
    })
}

/// Mounts bpffs at /sys/fs/bpf when the pin directory lives there and nothing is mounted.
fn ensure_bpffs(pin_dir: &Path) -> Result<(), RedirectError> {
    let root = Path::new(paths::BPFFS_ROOT);
    if !pin_dir.starts_with(root) {
        return Ok(());
    }
    let mounted = std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines().any(|l| {
                l.split_whitespace().nth(1) == Some(paths::BPFFS_ROOT)
                    && l.split_whitespace().nth(2) == Some("bpf")
            })
        })
        .unwrap_or(false);
    if mounted {
        return Ok(());
    }
    tracing::info!("mounting bpffs at {}", paths::BPFFS_ROOT);
    nix::mount::mount(
        Some("bpffs"),
        root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| RedirectError::Bpffs(root.to_path_buf(), e.to_string()))
}

/// What `uninstall` removed.
#[derive(Debug, Default)]
pub struct Uninstalled {
    pub links: Vec<PathBuf>,
    pub maps: Vec<PathBuf>,
}

/// Unpins every link (the kernel detaches it: tagged traffic flows directly again) and every map.
pub fn uninstall(pin_dir: &Path) -> Result<Uninstalled, RedirectError> {
    let mut out = Uninstalled::default();
    for (dir, list) in [
        (paths::bpf_links_dir(pin_dir), &mut out.links),
        (paths::bpf_maps_dir(pin_dir), &mut out.maps),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            std::fs::remove_file(&p).map_err(|source| RedirectError::Unpin {
                path: p.clone(),
                source,
            })?;
            list.push(p);
        }
        let _ = std::fs::remove_dir(&dir);
    }
    let _ = std::fs::remove_dir(pin_dir);
    Ok(out)
}

/// The node's primary IPv4: the address of the interface that holds the default route.
pub fn primary_ipv4() -> Option<Ipv4Addr> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let iface = routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"00000000"))
            .then(|| f.first().map(|s| s.to_string()))
            .flatten()
    })?;
    nix::ifaddrs::getifaddrs().ok()?.find_map(|ifa| {
        if ifa.interface_name != iface {
            return None;
        }
        ifa.address?.as_sockaddr_in().map(|s| s.ip())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_keys_match_what_sock_ops_writes() {
        let k = flow_key("127.0.0.1:40000".parse().expect("addr"));
        assert_eq!(k.family, AF_INET);
        // Network order in memory: 127 is the first byte.
        assert_eq!(k.addr[0].to_ne_bytes(), [127, 0, 0, 1]);
        assert_eq!(k.port, 40000);
        let mapped = flow_key("[::ffff:10.1.2.3]:5".parse().expect("addr"));
        assert_eq!(
            (mapped.family, mapped.addr[0].to_ne_bytes()),
            (AF_INET, [10, 1, 2, 3])
        );
        let v6 = flow_key("[fd00::1]:5".parse().expect("addr"));
        assert_eq!(v6.family, AF_INET6);
    }

    #[test]
    fn orig_dst_round_trips() {
        for a in ["10.77.3.1:443", "[fd77::3]:443"] {
            let sa: SocketAddr = a.parse().expect("addr");
            let k = flow_key(sa);
            let o = OrigDst {
                addr: k.addr,
                port: 443,
                family: k.family,
                ..Default::default()
            };
            assert_eq!(orig_dst_addr(&o), sa);
        }
    }
}
