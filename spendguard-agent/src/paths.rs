//! Every path the agent owns, with its mode and why. Defaults only: `config` applies overrides.

use std::path::{Path, PathBuf};

/// State directory (ledger, tags, CA key). 0700: it holds the CA private key and the money.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/spendguard";
pub const STATE_DIR_MODE: u32 = 0o700;

/// Control socket. Its directory is 0700 and the socket 0600, owned by root: only root may set limits
/// or tags. The server checks SO_PEERCRED as well, so a mode mistake alone opens nothing.
pub const DEFAULT_SOCKET: &str = "/run/spendguard/control.sock";
pub const SOCKET_DIR_MODE: u32 = 0o700;
pub const SOCKET_MODE: u32 = 0o600;

/// bpffs directory for SpendGuard's pinned maps (`maps/`) and links (`links/`). Pinned links keep the
/// redirect in force while the agent restarts (clients fail closed instead of bypassing the guard).
pub const DEFAULT_BPF_PIN_DIR: &str = "/sys/fs/bpf/spendguard";
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Written once the agent serves (redirect in force, tags applied, ledger open, proxy listening),
/// removed on a clean stop; beside the control socket (`/run/spendguard/ready`, a tmpfs, so a
/// reboot clears it). It holds the boot id, so a file from an earlier boot is never believed.
/// `spendguard wait-ready` (an init container's command) waits for it.
pub fn ready_file(socket: &Path) -> PathBuf {
    socket
        .parent()
        .map(|d| d.join("ready"))
        .unwrap_or_else(|| PathBuf::from("/run/spendguard/ready"))
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
pub const BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";

/// Tags (cgroup → agent name), 0600, rewritten atomically (write + rename).
pub fn tags_file(state_dir: &Path) -> PathBuf {
    state_dir.join("tags.json")
}
/// Which ledger this state dir belongs with (its id), 0600: a lost ledger is noticed, not
/// silently re-created empty.
pub fn manifest_file(state_dir: &Path) -> PathBuf {
    state_dir.join("state.json")
}
/// The ledger database (redb), 0600.
pub fn ledger_file(state_dir: &Path) -> PathBuf {
    state_dir.join("ledger.redb")
}
/// The CA certificate (PEM, 0644: it is public) and key (PEM, 0600: never logged, never exported).
pub fn ca_cert_file(state_dir: &Path) -> PathBuf {
    state_dir.join("ca.crt")
}
pub fn ca_key_file(state_dir: &Path) -> PathBuf {
    state_dir.join("ca.key")
}
pub const PRIVATE_FILE_MODE: u32 = 0o600;
pub const PUBLIC_FILE_MODE: u32 = 0o644;

pub fn bpf_maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("maps")
}
/// This build's map set: one directory per map layout, so an agent never adopts maps whose layout
/// it does not know (see `spendguard_common::MAP_LAYOUT`).
pub fn bpf_layout_dir(pin_dir: &Path) -> PathBuf {
    bpf_maps_dir(pin_dir).join(format!("v{}", spendguard_common::MAP_LAYOUT))
}
pub fn bpf_links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}
