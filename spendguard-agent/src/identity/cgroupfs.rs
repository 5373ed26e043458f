//! The cgroup v2 filesystem: where it is mounted (never hard-coded: hybrid hosts mount it at
//! `/sys/fs/cgroup/unified`) and the id of a cgroup directory (its inode number, which is what
//! `bpf_get_current_cgroup_id` returns).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 filesystem is mounted (checked /proc/mounts); SpendGuard needs cgroup v2")]
    NoCgroup2,
    #[error("cannot read /proc/mounts: {0}")]
    Mounts(std::io::Error),
    #[error("{path} is not a directory under the cgroup v2 mount {mount}")]
    NotCgroup2 { path: PathBuf, mount: PathBuf },
    #[error("cgroup {path} cannot be read: {source} (does the directory exist?)")]
    Stat {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The cgroup v2 mount point, from /proc/mounts.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(CgroupError::Mounts)?;
    parse_cgroup2_mount(&mounts).ok_or(CgroupError::NoCgroup2)
}

fn parse_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_dev, mnt, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount(mnt)))
    })
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Whether cgroup v1 hierarchies are mounted beside v2: true on hybrid hosts.
pub fn is_hybrid() -> bool {
    !v1_mounts().is_empty()
}

/// The mount points of the cgroup v1 hierarchies (empty on a pure v2 host, or if /proc/mounts
/// cannot be read).
pub fn v1_mounts() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/mounts")
        .map(|m| parse_v1_mounts(&m))
        .unwrap_or_default()
}

fn parse_v1_mounts(mounts: &str) -> Vec<PathBuf> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_dev, mnt, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup").then(|| PathBuf::from(unescape_mount(mnt)))
        })
        .collect()
}

/// The cgroup id of a cgroup v2 directory, after checking it lies under the v2 mount.
pub fn cgroup_id(mount: &Path, path: &Path) -> Result<u64, CgroupError> {
    let canon = path.canonicalize().map_err(|source| CgroupError::Stat {
        path: path.to_path_buf(),
        source,
    })?;
    if !canon.starts_with(mount) {
        return Err(CgroupError::NotCgroup2 {
            path: path.to_path_buf(),
            mount: mount.to_path_buf(),
        });
    }
    let meta = std::fs::metadata(&canon).map_err(|source| CgroupError::Stat {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() || !canon.join("cgroup.procs").exists() {
        return Err(CgroupError::NotCgroup2 {
            path: path.to_path_buf(),
            mount: mount.to_path_buf(),
        });
    }
    Ok(meta.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_hybrid_mount() {
        let m = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                 cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        assert_eq!(
            parse_cgroup2_mount(m),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            parse_v1_mounts(m),
            vec![PathBuf::from("/sys/fs/cgroup/cpu")]
        );
        assert!(parse_v1_mounts("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n").is_empty());
        assert_eq!(parse_cgroup2_mount("proc /proc proc rw 0 0\n"), None);
        assert_eq!(
            parse_cgroup2_mount("none /a\\040b cgroup2 rw 0 0"),
            Some(PathBuf::from("/a b"))
        );
    }

    #[test]
    fn this_machine_has_cgroup2_and_ids_are_inodes() {
        let mount = cgroup2_mount().expect("this machine has cgroup v2");
        let id = cgroup_id(&mount, &mount).expect("root cgroup has an id");
        assert_eq!(id, std::fs::metadata(&mount).expect("stat").ino());
        assert!(cgroup_id(&mount, Path::new("/tmp")).is_err());
    }
}
