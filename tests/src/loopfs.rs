//! A small ext4 filesystem on a loop device, mounted for one test (e.g. a state dir that can fill up).
//! Unmounted and its loop device detached on Drop, also when the test panics.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// An ext4 image file in a temp dir, attached to a loop device and mounted on `dir`.
pub struct LoopFs {
    /// The mount point.
    pub dir: PathBuf,
    /// `/dev/loopN`.
    pub dev: String,
    // Dropped after the unmount and detach in `drop` (the image and the mount point live here).
    _tmp: tempfile::TempDir,
}

fn sh(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("spawn {cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl LoopFs {
    /// A fresh `mib` MiB ext4 (no blocks reserved for root: root must hit ENOSPC too).
    /// `Err` when this machine cannot attach loop devices (the caller decides whether to skip).
    pub fn new(mib: u64) -> Result<LoopFs, String> {
        let tmp = tempfile::Builder::new()
            .prefix("sg-loopfs")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let img = tmp.path().join("fs.img");
        let dir = tmp.path().join("mnt");
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir: {e}"))?;
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(mib << 20))
            .map_err(|e| format!("image: {e}"))?;
        let img_s = img.to_str().expect("utf8 path");
        sh("mkfs.ext4", &["-q", "-F", "-m", "0", img_s])?;
        let dev = sh("losetup", &["--find", "--show", img_s])?;
        let fs = LoopFs {
            dir,
            dev,
            _tmp: tmp,
        };
        // From here on, Drop detaches the device even if mounting fails.
        sh(
            "mount",
            &["-t", "ext4", &fs.dev, fs.dir.to_str().expect("utf8 path")],
        )?;
        Ok(fs)
    }

    /// Fills the filesystem with `name` until ENOSPC (big writes, then 4 KiB ones, each synced), and
    /// returns how many bytes that took.
    pub fn fill(&self, name: &str) -> u64 {
        let path = self.dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let mut written = 0u64;
        for size in [1 << 20, 64 << 10, 4 << 10, 512] {
            let buf = vec![0x5au8; size];
            loop {
                let r = f.write(&buf).and_then(|n| f.sync_data().map(|()| n));
                match r {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => panic!("filling {}: {e}", path.display()),
                }
            }
        }
        written
    }

    /// Free bytes, as statvfs says.
    pub fn free_bytes(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.dir).expect("statvfs");
        st.blocks_available() as u64 * st.fragment_size() as u64
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let dir = self.dir.to_str().unwrap_or_default().to_string();
        // A process that still holds a file there (an agent being killed) makes umount EBUSY for a
        // moment; retry, then detach lazily.
        let mut unmounted = false;
        for _ in 0..50 {
            if sh("umount", &[&dir]).is_ok() {
                unmounted = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !unmounted {
            if let Err(e) = sh("umount", &["-l", &dir]) {
                eprintln!("warning: could not unmount {dir}: {e}");
            }
        }
        // A busy device gets autoclear and is freed when its last user goes.
        if let Err(e) = sh("losetup", &["-d", &self.dev]) {
            eprintln!("warning: could not detach {}: {e}", self.dev);
        }
    }
}
