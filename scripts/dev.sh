#!/usr/bin/env bash
# One entry point for a fresh Debian 12 machine (as root): installs what is missing, idempotently,
# then runs the node agent (`agent`) or the whole test suite (`test`).
#
#   bash scripts/dev.sh agent [agent args…]   # build + run spendguard-agent on its embedded defaults
#   bash scripts/dev.sh test                  # build + run every test (unit, in-process, privileged e2e)
#   bash scripts/dev.sh setup                 # only install prerequisites
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
ROOT=$PWD
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '\033[1;34m[spendguard setup]\033[0m %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "spendguard: this must run as root (it loads eBPF programs and creates cgroups/namespaces)" >&2
    exit 1
  fi
}

apt_packages() {
  # iproute2: test namespaces/veth; python3-venv for the SDK tests' venv on Debian's python;
  # bpftool: inspection only, handy for operators. redis-server (+ redis-tools): the cluster-budget tests
  # start their own instances on loopback (Debian 12: Redis 7.0).
  local missing=()
  for p in iproute2 bpftool util-linux procps curl fonts-dejavu-core linux-perf redis-server redis-tools; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  # prometheus: only for its promtool, which checks and unit-tests deploy/prometheus/rules.yaml
  # (spendguard-agent/tests/dashboard.rs). Without recommends (no node exporter); the server the
  # package starts on systemd hosts is stopped and disabled again.
  if ! dpkg -s prometheus >/dev/null 2>&1; then
    log "apt-get install prometheus (for promtool)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
      systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
  fi
}

rust_toolchain() {
  command -v cargo >/dev/null || { echo "spendguard: cargo/rustup not found; install rustup first" >&2; exit 1; }
  if ! rustup toolchain list | grep -q '^nightly'; then
    log "rustup toolchain install nightly"
    rustup toolchain install nightly --profile minimal
  fi
  if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
    log "rustup component add rust-src --toolchain nightly"
    rustup component add rust-src --toolchain nightly
  fi
}

bpf_linker() {
  # A plain `cargo install bpf-linker` fails here (it finds Debian's LLVM 14). Link it against the nightly
  # toolchain's own libLLVM and keep a copy of that library beside the binary, so a later nightly
  # update cannot break it (see ../shared/design/BUILD-NOTES.md).
  if command -v bpf-linker >/dev/null && bpf-linker --version >/dev/null 2>&1; then return; fi
  log "building bpf-linker against the nightly toolchain's LLVM (~1 min)"
  local sysroot llvm_so major
  sysroot=$(rustc +nightly --print sysroot)
  llvm_so=$(cd "$sysroot/lib" && ls libLLVM.so.*-rust-* | head -n1)
  major=$(echo "$llvm_so" | sed -E 's/libLLVM\.so\.([0-9]+).*/\1/')
  mkdir -p "$HOME/.cargo/lib"
  cp "$sysroot/lib/$llvm_so" "$HOME/.cargo/lib/"
  RUSTFLAGS="-C link-arg=$HOME/.cargo/lib/$llvm_so -C link-arg=-Wl,-rpath,\$ORIGIN/../lib" \
    cargo install bpf-linker --locked --no-default-features --features "llvm-$major,no-llvm-linking"
}

python_venv() {
  # The real provider SDKs, driven by the e2e tests with their default base URLs.
  local venv="$ROOT/target/sdk-venv"
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import openai, anthropic' 2>/dev/null; then return; fi
  log "creating $venv with the openai and anthropic SDKs"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check openai anthropic
}

bpffs() {
  grep -q ' /sys/fs/bpf bpf ' /proc/mounts || { log "mounting bpffs at /sys/fs/bpf"; mount -t bpf bpffs /sys/fs/bpf; }
}

kube_bins() {
  # The Kubernetes tier (tests/tests/kubernetes.rs, kubelet.rs): etcd, containerd, runc from apt and
  # kube-apiserver/kubelet/kubectl 1.20.2 built from Debian's source package into
  # /var/cache/spendguard (once, ~5 min; `cargo xtask test` finds them there).
  bash "$ROOT/scripts/kube-bins.sh" >/dev/null
}

setup() {
  need_root
  apt_packages
  rust_toolchain
  bpf_linker
  bpffs
  kube_bins
}

case "${1:-}" in
  setup) setup; python_venv ;;
  agent) shift; setup; cargo build --release -p spendguard-agent --bins
         exec "$ROOT/target/release/spendguard-agent" "$@" ;;
  test) shift; setup; python_venv; exec cargo xtask test "$@" ;;
  *) echo "usage: bash scripts/dev.sh {agent|test|setup}" >&2; exit 2 ;;
esac
