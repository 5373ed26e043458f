//! Rebuild the BPF object when bpf-linker changes (cargo cannot see that dependency otherwise).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
