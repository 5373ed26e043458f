//! Builds the BPF object (`spendguard-ebpf`, nightly + bpf-linker) and puts it in OUT_DIR, where
//! `redirect` embeds it. `AYA_BUILD_SKIP=1` skips this (e.g. for `cargo check` on a machine without
//! bpf-linker); the agent then refuses to start with a clear message. A cargo-fuzz build (`--cfg
//! fuzzing`, whichever directory it runs from) skips it too: the fuzz targets never load BPF.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        let out_dir = std::env::var("OUT_DIR").context("OUT_DIR")?;
        std::fs::write(std::path::Path::new(&out_dir).join("spendguard"), [])
            .context("write placeholder BPF object")?;
        return Ok(());
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .iter()
        .find(|p| p.name.as_str() == "spendguard-ebpf")
        .ok_or_else(|| anyhow!("spendguard-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("spendguard-ebpf manifest has no parent directory"))?
        .as_str();
    let out_dir = std::env::var("OUT_DIR").context("OUT_DIR")?;
    // Leave an empty object when the build is skipped so include_bytes! still compiles.
    let obj = std::path::Path::new(&out_dir).join("spendguard");
    if !obj.exists() {
        std::fs::write(&obj, []).context("write placeholder BPF object")?;
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "spendguard-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
