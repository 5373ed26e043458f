#!/usr/bin/env bash
# Builds the Kubernetes binaries the real-control-plane tests start (kube-apiserver, kubelet, kubectl)
# plus the pause image's binary, from Debian's own source package, into a cache OUTSIDE the repository:
#
#   bash scripts/kube-bins.sh            # prints the cache's bin directory on stdout
#
# Why from source: no registry reachable from CI serves Kubernetes binaries or images, but Debian's
# bookworm source package (1.20.2, vendor/ included) does. Idempotent: a complete cache is reused as is
# (~5 min on 2 cores otherwise). Also installs, through apt, what the tests run beside them: etcd-server,
# containerd, runc, busybox-static (the pods' image rootfs).
#
# Environment: SPENDGUARD_KUBE_CACHE (default /var/cache/spendguard/kube-1.20.2).
set -euo pipefail

VERSION=1.20.2
CACHE=${SPENDGUARD_KUBE_CACHE:-/var/cache/spendguard/kube-$VERSION}
BIN="$CACHE/bin"
WANT=(kube-apiserver kubelet kubectl pause)

log() { printf '\033[1;34m[spendguard kube]\033[0m %s\n' "$*" >&2; }

complete() {
  local b
  for b in "${WANT[@]}"; do [ -x "$BIN/$b" ] || return 1; done
}

apt_packages() {
  # golang-go: Debian's Go 1.19 builds 1.20.2 once reflect2 is swapped (below); rsync: kube's
  # hack/ scripts copy the generators with it. The rest run in the tests.
  local missing=() p
  for p in etcd-server containerd runc busybox-static golang-go golang-github-modern-go-reflect2-dev dpkg-dev \
           xz-utils make gcc libc6-dev rsync; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # Debian's packages start their daemons on systemd hosts. The tests need neither (they start
  # their own, with their own sockets and directories, inside test namespaces), so a daemon this
  # script has just installed is stopped and disabled again; one the machine had before is left.
  if command -v systemctl >/dev/null; then
    for p in "${missing[@]}"; do
      case "$p" in
        etcd-server) systemctl disable --now etcd >/dev/null 2>&1 || true ;;
        containerd) systemctl disable --now containerd >/dev/null 2>&1 || true ;;
      esac
    done
  fi
}

deb_src() {
  # The source package needs a deb-src line; added once, for bookworm main only.
  if apt-get source --print-uris kubernetes >/dev/null 2>&1; then return; fi
  log "adding a deb-src line for bookworm main"
  cat >/etc/apt/sources.list.d/spendguard-deb-src.sources <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
}

WORK=
build() {
  local src reflect2 work
  mkdir -p "$CACHE"
  work=$(mktemp -d "$CACHE/build.XXXXXX")
  WORK=$work
  # The source tree (2.6 GB with Go's build cache) goes, whether the build worked or not; a failed
  # build leaves nothing half-written in bin/.
  trap 'rm -rf "$WORK"' EXIT
  log "fetching Debian's kubernetes $VERSION source package"
  # apt warns that _apt cannot read a root-owned directory, and gpgv that it lacks the uploader's key
  # (apt has checked the Sources index's signature already): noise, shown only on failure.
  (cd "$work" && apt-get source -qq --download-only kubernetes >"$work/apt.log" 2>&1) ||
    { cat "$work/apt.log" >&2; exit 1; }
  # The tests and README name this version (bookworm calls it 1.20.5+really1.20.2); another one
  # would make them say something untrue.
  ls "$work"/kubernetes_*"$VERSION"-*.dsc >/dev/null 2>&1 ||
    { echo "spendguard: apt's kubernetes source is not $VERSION: $(ls "$work")" >&2; exit 1; }
  (cd "$work" && dpkg-source -q -x ./*.dsc src >"$work/dpkg-source.log" 2>&1) ||
    { cat "$work/dpkg-source.log" >&2; exit 1; }
  src="$work/src"
  # reflect2 1.0.1 (vendored) reads runtime internals that changed in Go 1.18 and panics at start-up;
  # Debian's 1.0.2 is API-compatible. modules.txt keeps saying 1.0.1, which `-mod=vendor` accepts.
  reflect2=/usr/share/gocode/src/github.com/modern-go/reflect2
  [ -d "$reflect2" ] || { echo "spendguard: $reflect2 missing (golang-github-modern-go-reflect2-dev)" >&2; exit 1; }
  rm -rf "$src/vendor/github.com/modern-go/reflect2"
  cp -r "$reflect2" "$src/vendor/github.com/modern-go/reflect2"
  log "building kube-apiserver, kubelet, kubectl $VERSION (~5 min on 2 cores)"
  # make, not go build: hack/ sets the ldflags and build tags the binaries need.
  (cd "$src" && KUBE_GIT_VERSION=v$VERSION KUBE_GIT_TREE_STATE=clean CGO_ENABLED=0 GOFLAGS=-mod=vendor \
    GOCACHE="$CACHE/gocache" make WHAT="cmd/kube-apiserver cmd/kubelet cmd/kubectl" >"$work/make.log" 2>&1) ||
    { tail -n 40 "$work/make.log" >&2; echo "spendguard: kubernetes build failed (log above)" >&2; exit 1; }
  # The pause container's binary, static so the image needs no libc.
  gcc -static -O2 -o "$work/pause" "$src/build/pause/linux/pause.c"
  mkdir -p "$work/bin"
  for b in kube-apiserver kubelet kubectl; do
    cp "$src/_output/local/bin/linux/amd64/$b" "$work/bin/$b" 2>/dev/null || cp "$src/_output/bin/$b" "$work/bin/$b"
  done
  cp "$work/pause" "$work/bin/pause"
  rm -rf "$BIN" "$CACHE/gocache"
  mv "$work/bin" "$BIN"
}

if [ "$(id -u)" != 0 ]; then
  echo "spendguard: scripts/kube-bins.sh must run as root (apt, /var/cache)" >&2
  exit 1
fi
apt_packages
if ! complete; then
  deb_src
  build
fi
echo "$BIN"
