#!/usr/bin/env bash
# Installs everything a fresh Debian machine lacks to run the MaculaOS demo and tests, and nothing twice:
#   1. Debian packages (only the missing ones);
#   2. the Go-built upstream tools (the Kubernetes control plane, kubelet and kube-proxy, kubectl, kine,
#      helm, restic, rest-server, versitygw, Flux, sops, age-keygen), each
#      built once per machine into a cache keyed by its pinned version, linked into .tools/bin;
#   3. the Prometheus Operator's CRDs, into Go's module cache (tests check the chart's monitoring objects
#      against them; tests/integration/test_chart.py finds them there);
#   4. the Python environment in .venv (reinstalled only when pyproject.toml changes).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

DEBIAN_PACKAGES=(make git openssl procps python3-venv ca-certificates nftables iproute2 systemd util-linux
                 lighttpd apache2-utils               # the node's git server (git http-backend behind lighttpd); htpasswd
                 rauc squashfs-tools dbus             # real RAUC on simulated nodes (NodeUpgrade)
                 mmdebstrap debian-archive-keyring    # Debian 13 roots: the OS image and the operator image
                 kmod binutils                        # the image's firmware selection (modinfo) and its tests
                 qemu-system-x86 qemu-utils e2fsprogs openssh-client  # boot tests of the OS image (SSH into VM nodes)
                 gcc libc6-dev                        # the node runtime's pause binary (gcc -static)
                 fdisk dosfstools mtools grub-common grub-pc-bin grub-efi-amd64-bin ovmf xorriso  # disk images, ISO
                 qemu-user-static binfmt-support qemu-system-arm qemu-efi-aarch64)  # arm64 image: build, boot

log() { printf '[install] %s\n' "$*" >&2; }

install_debian_packages() {
  local missing=()
  for p in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
}

# Each Go-built tool has its own cache entry keyed by what it is built from, so pinning a new tool (or
# bumping one) never rebuilds the others: Kubernetes takes ~16 minutes cold on a 2-core machine.
tools_cache() { echo "${MACULAOS_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/maculaos/tools}"; }

# build_cached NAME KEY-INPUT... -- COMMAND: runs COMMAND with $out set to an empty folder, once per key.
build_cached() {
  local name=$1; shift
  local inputs=()
  while [ "$1" != "--" ]; do inputs+=("$1"); shift; done; shift
  local key dir
  key=$(printf '%s\n' "${inputs[@]}" "$(go env GOVERSION)" | sha256sum | cut -c1-16)
  dir="$(tools_cache)/$name-$key"
  if [ ! -f "$dir/complete" ]; then
    log "building $name into $dir"
    rm -rf "$dir"; mkdir -p "$dir/bin"
    out="$dir/bin" "$@"
    touch "$dir/complete"
  fi
  ln -sfn "$dir/bin/"* .tools/bin/
}

build_kubernetes() {
  local k8s_version ld="-s -w"
  k8s_version=$(cd tools/kubernetes && go list -m -f '{{.Version}}' k8s.io/kubernetes)
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $pkg.gitVersion=$k8s_version -X $pkg.gitTreeState=clean"
  done
  (cd tools/kubernetes && go build -trimpath -ldflags "$ld" -o "$out/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
  # The node's kubelet and kube-proxy as one binary (tools/kubernetes/node), run as what it is called.
  (cd tools/kubernetes && go build -trimpath -ldflags "$ld" -o "$out/kubelet" ./node)
  ln -s kubelet "$out/kube-proxy"
}

# rest-server's module list is not served by the proxy, which `go install mod@ver` needs; a wrapper
# module pinning it (tools/rest-server/go.mod) builds it from the version itself.
build_rest_server() {
  (cd tools/rest-server && go build -trimpath -ldflags "-s -w" -o "$out/" github.com/restic/rest-server/cmd/rest-server)
}

# Flux's source- and kustomize-controller for the GitOps tests, from a wrapper module (tools/flux/go.mod)
# that carries their replaces; their CRDs come from the same module versions, into bin/flux-crds.
build_flux() {
  local module
  (cd tools/flux && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/" \
      github.com/fluxcd/source-controller github.com/fluxcd/kustomize-controller)
  mkdir -p "$out/flux-crds"
  for module in source-controller kustomize-controller; do
    cp "$(cd tools/flux && go list -m -f '{{.Dir}}' "github.com/fluxcd/$module")"/config/crd/bases/*.yaml "$out/flux-crds/"
  done
}

go_install() {  # go_install MODULE@VERSION [LDFLAGS]
  GOBIN="$out" go install -trimpath -ldflags "-s -w ${2:-}" "$1"
}

install_go_tools() {
  command -v go >/dev/null || { log "Go is required to build the upstream tools (see README)"; exit 1; }
  # shellcheck source=versions.env
  source tools/versions.env
  rm -rf .tools/bin; mkdir -p .tools/bin
  build_cached kubernetes "$(cat tools/kubernetes/go.mod tools/kubernetes/go.sum tools/kubernetes/*.go tools/kubernetes/node/*.go)" \
      "$(declare -f build_kubernetes)" -- build_kubernetes
  build_cached kine "$KINE_VERSION" -- go_install "github.com/k3s-io/kine@$KINE_VERSION"
  build_cached helm "$HELM_VERSION" -- go_install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
      "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  build_cached restic "$RESTIC_VERSION" -- go_install "github.com/restic/restic/cmd/restic@$RESTIC_VERSION"
  build_cached rest-server "$(cat tools/rest-server/go.mod tools/rest-server/go.sum)" -- build_rest_server
  build_cached versitygw "$VERSITYGW_VERSION" -- go_install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
  build_cached flux "$(cat tools/flux/go.mod tools/flux/go.sum)" "$(declare -f build_flux)" -- build_flux
  build_cached sops "$SOPS_VERSION" -- go_install "github.com/getsops/sops/v3/cmd/sops@$SOPS_VERSION"
  build_cached age "$AGE_VERSION" -- go_install "filippo.io/age/cmd/age-keygen@$AGE_VERSION"
}

# The module zip holds example/prometheus-operator-crd/*.yaml; `go mod download` keeps it, verified against
# the checksum database, in the module cache (a temporary module: the download needs one to run in).
fetch_prometheus_crds() {
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && go mod init maculaos.tmp/crds >/dev/null 2>&1 &&
     go mod download "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")
  rm -rf "$tmp"
}

install_python_env() {
  local stamp=.venv/.maculaos-installed want
  want=$(cat pyproject.toml tools/constraints.txt | sha256sum | cut -c1-16)
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && return
  log "installing the Python environment into .venv"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # constraints.txt pins the whole dependency tree (pip freeze of a tested environment)
  .venv/bin/pip install -q --disable-pip-version-check -c tools/constraints.txt -e '.[dev]'
  echo "$want" > "$stamp"
}

install_debian_packages
install_go_tools
fetch_prometheus_crds
install_python_env
log "ready: .tools/bin has $(ls .tools/bin | tr '\n' ' ')"
