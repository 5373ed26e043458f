//! The eBPF redirect: load the programs, attach them to a cgroup v2 directory, pin everything, and adopt
//! what a previous run pinned. Also the user-space side of the maps (tags in, original destinations out).
//!
//! Lifecycle (bpfman's load → attach → pin → record, rolled back on failure):
//! - load: programs through the verifier, maps opened (or created) under `<pin_dir>/maps/v<layout>`
//!   — nothing attached yet, so the agent fills the tag map from its tags file first;
//! - activate, first start: attach each program with a link, pin the links under `<pin_dir>/links`;
//! - activate, restart or upgrade: swap each new program into its pinned link (BPF_LINK_UPDATE) —
//!   never a second attach (both would run) and never unpin-then-attach (a window where tagged
//!   traffic escapes); then unpin map sets of other layouts, which no program uses any more;
//! - `sg_cgroup_mkdir` (a tracing link, which cannot be updated) is attached anew and pinned over the
//!   old link: both run for a moment, both only add the same tags;
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
use aya::programs::{CgroupSockAddr, RawTracePoint, SockOps};
use aya::{Ebpf, EbpfLoader};
use spendguard_common::{
    maps, programs, CgroupPath, Config as BpfConfig, FlowKey, OrigDst, TagValue, AF_INET, AF_INET6,
};

pub use sys::current_netns_cookie;

use crate::identity::tags::TagMap;
use crate::paths;

/// The BPF object built by build.rs (empty when the build was skipped with AYA_BUILD_SKIP=1).
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/spendguard"));

/// The cgroup programs, each in a pinned link that restarts swap a new program into.
const CGROUP_PROGRAMS: [&str; 5] = [
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
    /// The cgroup v2 mount: tagged paths are watched relative to it.
    pub cgroup_mount: PathBuf,
    pub proxy_port: u16,
    /// Where pods are sent; `None` refuses tagged connects from pods (fail closed).
    pub redirect_ip4: Option<Ipv4Addr>,
    pub redirect_ip6: Option<Ipv6Addr>,
    pub node_netns_cookie: u64,
}

/// How the programs were put in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// First start on this boot (or after `uninstall`): attached and pinned.
    Attached,
    /// Pinned links found (a restart or an upgrade): the new programs were swapped into them.
    Adopted,
}

/// One map of the layout: what a pinned map must look like to be adopted.
struct MapSpec {
    name: &'static str,
    kind: aya::maps::MapType,
    key: u32,
    value: u32,
    entries: u32,
}

/// The maps of [`spendguard_common::MAP_LAYOUT`], as the BPF object defines them.
fn layout() -> [MapSpec; 5] {
    use aya::maps::MapType;
    use spendguard_common::{sizes, CgroupPath};
    use std::mem::size_of;
    let sz = |n: usize| n as u32;
    [
        MapSpec {
            name: maps::TAGGED,
            kind: MapType::Hash,
            key: sz(size_of::<u64>()),
            value: sz(size_of::<TagValue>()),
            entries: sizes::TAGGED_MAX,
        },
        MapSpec {
            name: maps::CONFIG,
            kind: MapType::Array,
            key: sz(size_of::<u32>()),
            value: sz(size_of::<BpfConfig>()),
            entries: 1,
        },
        MapSpec {
            name: maps::SOCKETS,
            kind: MapType::LruHash,
            key: sz(size_of::<u64>()),
            value: sz(size_of::<OrigDst>()),
            entries: sizes::SOCKETS_MAX,
        },
        MapSpec {
            name: maps::REDIRECTS,
            kind: MapType::LruHash,
            key: sz(size_of::<FlowKey>()),
            value: sz(size_of::<OrigDst>()),
            entries: sizes::REDIRECTS_MAX,
        },
        MapSpec {
            name: maps::PENDING,
            kind: MapType::Hash,
            key: sz(size_of::<CgroupPath>()),
            value: sz(size_of::<TagValue>()),
            entries: sizes::PENDING_MAX,
        },
    ]
}

/// Why a pinned map cannot be adopted (`None`: it matches the layout).
fn mismatch(pin: &Path, spec: &MapSpec) -> Option<String> {
    let info = match aya::maps::MapInfo::from_pin(pin) {
        Ok(i) => i,
        Err(e) => return Some(format!("unreadable: {e}")),
    };
    let kind = info.map_type().ok();
    if kind != Some(spec.kind)
        || info.key_size() != spec.key
        || info.value_size() != spec.value
        || info.max_entries() != spec.entries
    {
        return Some(format!(
            "{kind:?} key {} value {} entries {}, expected {:?} key {} value {} entries {}",
            info.key_size(),
            info.value_size(),
            info.max_entries(),
            spec.kind,
            spec.key,
            spec.value,
            spec.entries
        ));
    }
    None
}

/// The loaded programs and the maps user space reads and writes.
pub struct Redirect {
    tagged: Mutex<BpfHashMap<MapData, u64, TagValue>>,
    pending: Mutex<BpfHashMap<MapData, CgroupPath, TagValue>>,
    redirects: Mutex<BpfHashMap<MapData, FlowKey, OrigDst>>,
    cgroup_mount: PathBuf,
    /// Keeps program fds (and the logger's map) alive for the agent's lifetime; `activate` needs
    /// it mutably.
    ebpf: Mutex<Ebpf>,
}

impl Redirect {
    /// Loads the programs (the verifier runs here) and opens or creates this layout's maps, and
    /// writes the config — but attaches nothing: fill the maps (tags) first, then
    /// [`Redirect::activate`], so the new programs never run on an empty tag map. Returns aya-log's
    /// logger, which the caller must poll so BPF log lines reach `tracing`.
    pub fn load(opts: &RedirectOptions) -> Result<(Redirect, Option<BpfLogger>), RedirectError> {
        if BPF_OBJECT.is_empty() {
            return Err(RedirectError::NotBuilt);
        }
        ensure_bpffs(&opts.pin_dir)?;
        let maps_dir = paths::bpf_layout_dir(&opts.pin_dir);
        let links_dir = paths::bpf_links_dir(&opts.pin_dir);
        for d in [&maps_dir, &links_dir] {
            std::fs::create_dir_all(d).map_err(|source| RedirectError::PinDir {
                path: d.clone(),
                source,
            })?;
        }
        // A pinned set of this layout that does not match it (a damaged pin dir, a build from
        // another branch): start a fresh set. The programs in force keep their own references to
        // the old maps until `activate` swaps them out, so tagged traffic stays redirected.
        let bad: Vec<String> = layout()
            .iter()
            .filter_map(|spec| {
                let pin = maps_dir.join(spec.name);
                pin.exists()
                    .then(|| mismatch(&pin, spec).map(|why| format!("{}: {why}", spec.name)))
                    .flatten()
            })
            .collect();
        if !bad.is_empty() {
            tracing::warn!(dir = %maps_dir.display(), problems = ?bad, "pinned maps do not match map layout {}; creating a fresh set", spendguard_common::MAP_LAYOUT);
            unpin_dir(&maps_dir)?;
            std::fs::create_dir_all(&maps_dir).map_err(|source| RedirectError::PinDir {
                path: maps_dir.clone(),
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
        let offsets = match mkdir_offsets() {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::warn!("cannot read this kernel's struct offsets from BTF ({e}): a tagged cgroup that is re-created waits for the agent's reconcile (up to 2 s) instead of being tagged at creation");
                None
            }
        };
        write_config(&mut ebpf, opts, offsets)?;
        for name in CGROUP_PROGRAMS {
            let prog = program(&mut ebpf, name)?;
            if name == programs::SOCK_OPS {
                let p: &mut SockOps = prog
                    .try_into()
                    .map_err(|source| RedirectError::Program { name, source })?;
                p.load()
            } else {
                let p: &mut CgroupSockAddr = prog
                    .try_into()
                    .map_err(|source| RedirectError::Program { name, source })?;
                p.load()
            }
            .map_err(|source| RedirectError::Program { name, source })?;
        }
        let mkdir = programs::CGROUP_MKDIR;
        let p: &mut RawTracePoint =
            program(&mut ebpf, mkdir)?
                .try_into()
                .map_err(|source| RedirectError::Program {
                    name: mkdir,
                    source,
                })?;
        if let Err(e) = p.load() {
            tracing::warn!("cannot load {mkdir} ({e}): re-created tagged cgroups wait for the agent's reconcile");
        }
        let tagged = take_hash(&mut ebpf, maps::TAGGED)?;
        let pending = take_hash(&mut ebpf, maps::PENDING)?;
        let redirects = take_hash(&mut ebpf, maps::REDIRECTS)?;
        Ok((
            Redirect {
                tagged: Mutex::new(tagged),
                pending: Mutex::new(pending),
                redirects: Mutex::new(redirects),
                cgroup_mount: opts.cgroup_mount.clone(),
                ebpf: Mutex::new(ebpf),
            },
            logger,
        ))
    }

    /// Puts the loaded programs in force: swaps each into its pinned link (a restart, an
    /// upgrade), or attaches and pins it (first start on this boot). Then unpins map sets of
    /// other layouts, which no program uses any more.
    pub fn activate(&self, opts: &RedirectOptions) -> Result<Installed, RedirectError> {
        let links_dir = paths::bpf_links_dir(&opts.pin_dir);
        let cgroup =
            std::fs::File::open(&opts.attach_cgroup).map_err(|source| RedirectError::Cgroup {
                path: opts.attach_cgroup.clone(),
                source,
            })?;
        let adopting = CGROUP_PROGRAMS.iter().all(|p| links_dir.join(p).exists());
        if !adopting && CGROUP_PROGRAMS.iter().any(|p| links_dir.join(p).exists()) {
            // A previous install died half-way: finish it (existing links adopted, missing ones attached).
            tracing::warn!(dir = %links_dir.display(), "found a partial set of pinned links; completing it");
        }
        let mut ebpf = self.ebpf.lock().unwrap_or_else(|p| p.into_inner());
        let mut attached_now: Vec<PathBuf> = Vec::new();
        let result = (|| {
            for name in CGROUP_PROGRAMS {
                let pin = links_dir.join(name);
                let prog = program(&mut ebpf, name)?;
                // SockOps and CgroupSockAddr share no trait for attach/take_link, hence the macro.
                macro_rules! link {
                    ($ty:ty) => {{
                        let p: &mut $ty = prog
                            .try_into()
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
                    link!(SockOps);
                } else {
                    link!(CgroupSockAddr);
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
        attach_mkdir_hook(&mut ebpf, &links_dir);
        drop(ebpf);
        retire_other_layouts(&opts.pin_dir);
        Ok(if adopting {
            Installed::Adopted
        } else {
            Installed::Attached
        })
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

    /// The `SG_PENDING` key of a tagged path (`None`: not under the cgroup v2 mount, or too long
    /// for the mkdir hook).
    fn pending_key(&self, cgroup: &Path) -> Option<CgroupPath> {
        let rel = cgroup.strip_prefix(&self.cgroup_mount).ok()?.to_str()?;
        // What kernfs_path() reports: `/` joined with the components, no trailing slash.
        let path = format!("/{}", rel.trim_matches('/'));
        CgroupPath::new(path.as_bytes())
    }
}

/// Attaches the mkdir hook with a new link and pins it over the old one (tracing links cannot be
/// updated in place). The two run side by side for a moment; both only ever add the same tags.
fn attach_mkdir_hook(ebpf: &mut Ebpf, links_dir: &Path) {
    let name = programs::CGROUP_MKDIR;
    let pin = links_dir.join(name);
    // bpffs refuses dots in names.
    let fresh = links_dir.join(format!("{name}_new"));
    let attached = (|| -> Result<(), String> {
        let prog = ebpf.program_mut(name).ok_or("not in the BPF object")?;
        let p: &mut RawTracePoint = prog.try_into().map_err(|e| format!("{e}"))?;
        p.fd().map_err(|e| format!("not loaded: {e}"))?;
        let id = p
            .attach(programs::CGROUP_MKDIR_TRACEPOINT)
            .map_err(|e| e.to_string())?;
        let link: FdLink = p.take_link(id).map_err(|e| e.to_string())?.into();
        let _ = std::fs::remove_file(&fresh);
        link.pin(&fresh).map_err(|e| e.to_string())?;
        std::fs::rename(&fresh, &pin).map_err(|e| format!("rename over {}: {e}", pin.display()))
    })();
    match attached {
        Ok(()) => tracing::debug!(link = %pin.display(), "cgroup_mkdir hook in force"),
        Err(e) => tracing::warn!(
            "cannot attach the cgroup_mkdir hook ({e}); re-created tagged cgroups wait for the \
             agent's reconcile (up to 2 s) before they are redirected"
        ),
    }
}

/// Unpins map sets of every layout but this one: release 0.1's maps directly in `maps/`, and
/// `maps/v<N>` for other N. No program refers to them once `activate` swapped in the new ones.
fn retire_other_layouts(pin_dir: &Path) {
    let root = paths::bpf_maps_dir(pin_dir);
    let ours = paths::bpf_layout_dir(pin_dir);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p == ours {
            continue;
        }
        let res = if p.is_dir() {
            unpin_dir(&p).and_then(|()| {
                std::fs::remove_dir(&p).map_err(|source| RedirectError::Unpin {
                    path: p.clone(),
                    source,
                })
            })
        } else {
            std::fs::remove_file(&p).map_err(|source| RedirectError::Unpin {
                path: p.clone(),
                source,
            })
        };
        match res {
            Ok(()) => tracing::info!(pin = %p.display(), "unpinned maps of another layout"),
            Err(e) => tracing::warn!("{e}"),
        }
    }
}

/// Unpins every object in `dir` (not recursive).
fn unpin_dir(dir: &Path) -> Result<(), RedirectError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_file() || !p.is_dir() {
            std::fs::remove_file(&p).map_err(|source| RedirectError::Unpin { path: p, source })?;
        }
    }
    Ok(())
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::programs::Program, RedirectError> {
    ebpf.program_mut(name).ok_or(RedirectError::Map {
        name,
        detail: "program not found in the BPF object".into(),
    })
}

/// The byte offsets `sg_cgroup_mkdir` needs, from this kernel's BTF: aya-ebpf has no CO-RE, and
/// these structs change between kernels, so they are looked up where the programs run.
fn mkdir_offsets() -> Result<[u32; 4], String> {
    let btf = btf_rs::Btf::from_file("/sys/kernel/btf/vmlinux").map_err(|e| e.to_string())?;
    let off = |strct: &str, member: &str| -> Result<u32, String> {
        let types = btf
            .resolve_types_by_name(strct)
            .map_err(|e| format!("struct {strct}: {e}"))?;
        for t in types {
            if let btf_rs::Type::Struct(s) = t {
                if let Some(bits) = member_offset(&btf, &s, member) {
                    if bits % 8 != 0 {
                        return Err(format!("{strct}.{member} is a bitfield"));
                    }
                    return Ok(bits / 8);
                }
            }
        }
        Err(format!("struct {strct} has no member {member}"))
    };
    Ok([
        off("cgroup", "kn")?,
        off("kernfs_node", "id")?,
        off("cgroup", "root")?,
        off("cgroup_root", "hierarchy_id")?,
    ])
}

/// Bit offset of `name` in `s`, looking inside anonymous struct/union members too.
fn member_offset(btf: &btf_rs::Btf, s: &btf_rs::Struct, name: &str) -> Option<u32> {
    for m in &s.members {
        let n = btf.resolve_name(m).unwrap_or_default();
        if n == name {
            return Some(m.bit_offset());
        }
        if n.is_empty() {
            let inner = match btf.resolve_chained_type(m).ok()? {
                btf_rs::Type::Struct(i) | btf_rs::Type::Union(i) => i,
                _ => continue,
            };
            if let Some(o) = member_offset(btf, &inner, name) {
                return Some(m.bit_offset() + o);
            }
        }
    }
    None
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
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
    fn ids(&self) -> Result<Vec<u64>, String> {
        let m = self.tagged.lock().unwrap_or_else(|p| p.into_inner());
        m.keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())
    }
    fn watch(&self, cgroup: &Path) -> Result<bool, String> {
        let Some(key) = self.pending_key(cgroup) else {
            return Ok(false);
        };
        let mut m = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(key, TagValue::default(), 0)
            .map(|()| true)
            .map_err(|e| e.to_string())
    }
    fn unwatch(&self, cgroup: &Path) -> Result<(), String> {
        let Some(key) = self.pending_key(cgroup) else {
            return Ok(());
        };
        let mut m = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match m.remove(&key) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
    fn watched(&self) -> Result<Vec<PathBuf>, String> {
        let m = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let keys = m
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        Ok(keys
            .iter()
            .filter_map(|k| {
                let end = k
                    .bytes
                    .iter()
                    .position(|b| *b == 0)
                    .unwrap_or(k.bytes.len());
                let rel = std::str::from_utf8(&k.bytes[..end]).ok()?;
                Some(self.cgroup_mount.join(rel.trim_start_matches('/')))
            })
            .collect())
    }
}

/// A delete of a key that is not there: aya reports the kernel's ENOENT as a syscall error, not as
/// `KeyNotFound` (it is what made a start after `uninstall` and a re-created cgroup fail).
fn is_not_found(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
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

fn write_config(
    ebpf: &mut Ebpf,
    opts: &RedirectOptions,
    mkdir: Option<[u32; 4]>,
) -> Result<(), RedirectError> {
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
    let [off_cgroup_kn, off_kn_id, off_cgroup_root, off_root_hierarchy_id] =
        mkdir.unwrap_or_default();
    if mkdir.is_some() {
        flags |= spendguard_common::CONFIG_HAS_MKDIR_OFFSETS;
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
        off_cgroup_kn,
        off_kn_id,
        off_cgroup_root,
        off_root_hierarchy_id,
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
            if p.is_dir() {
                // A layout's map set (`maps/v2/`).
                for inner in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                    let ip = inner.path();
                    std::fs::remove_file(&ip).map_err(|source| RedirectError::Unpin {
                        path: ip.clone(),
                        source,
                    })?;
                    list.push(ip);
                }
                let _ = std::fs::remove_dir(&p);
                continue;
            }
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
