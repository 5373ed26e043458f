//! The previous release's binaries, for the upgrade tests (an old agent stops, this one starts on
//! its pinned links, maps and ledger). Built once from git into `target/prev-release/` and reused
//! while the commit stays the same.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

/// Release 0.1: ledger schema 1, map layout 1 (maps pinned directly in `maps/`).
pub const COMMIT: &str = "efd4b943f517d942f77c6d9d1c623ef91e64eb67";

/// Builds (if needed) and returns the directory holding the previous release's
/// `spendguard-agent` and `spendguard`.
pub fn ensure(root: &Path) -> anyhow::Result<PathBuf> {
    let base = root.join("target/prev-release");
    let bin = base.join("bin");
    let stamp = bin.join("COMMIT");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == COMMIT)
        && bin.join("spendguard-agent").exists()
    {
        return Ok(bin);
    }
    eprintln!("xtask: building the previous release ({COMMIT}) for the upgrade tests");
    let src = base.join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src)?;
    let archive = Command::new("git")
        .current_dir(root)
        .args(["archive", "--format=tar", COMMIT])
        .output()
        .context("git archive (the upgrade tests need the repository's history)")?;
    if !archive.status.success() {
        bail!(
            "git archive {COMMIT} failed: {} (a clone without history cannot build the previous release)",
            String::from_utf8_lossy(&archive.stderr)
        );
    }
    let mut tar = Command::new("tar")
        .current_dir(&src)
        .arg("-x")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("tar")?;
    {
        use std::io::Write as _;
        tar.stdin
            .take()
            .context("tar stdin")?
            .write_all(&archive.stdout)?;
    }
    if !tar.wait()?.success() {
        bail!("tar -x of the previous release failed");
    }
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&src)
        .args([
            "build",
            "--locked",
            "-p",
            "spendguard-agent",
            "--bins",
            "--target-dir",
        ])
        .arg(base.join("target"))
        .status()
        .context("cargo build of the previous release")?;
    if !st.success() {
        bail!("building the previous release failed: {st}");
    }
    std::fs::create_dir_all(&bin)?;
    for b in ["spendguard-agent", "spendguard"] {
        std::fs::copy(base.join("target/debug").join(b), bin.join(b))
            .with_context(|| format!("copy {b}"))?;
    }
    std::fs::write(&stamp, COMMIT)?;
    Ok(bin)
}
