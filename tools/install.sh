#!/usr/bin/env bash
# Installs everything a fresh Debian machine lacks to run the MaculaOS demo and tests, and nothing twice:
#   1. Debian packages (only the missing ones);
#   2. the Go-built upstream tools (kube-apiserver, kube-controller-manager, kubectl, kine, helm), built
#      once per machine into a cache keyed by the pinned versions, linked into .tools/bin;
#   3. the Python environment in .venv (reinstalled only when pyproject.toml changes).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

DEBIAN_PACKAGES=(make git openssl procps python3-venv ca-certificates nftables iproute2 systemd)

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

install_go_tools() {
  command -v go >/dev/null || { log "Go is required to build the control plane (see README)"; exit 1; }
  # shellcheck source=versions.env
  source tools/versions.env
  local key cache bin k8s_version
  key=$(cat tools/versions.env tools/kubernetes/go.mod tools/kubernetes/go.sum tools/kubernetes/tools.go \
        tools/install.sh <(go env GOVERSION) | sha256sum | cut -c1-16)
  cache="${MACULAOS_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/maculaos/tools}/$key"
  bin="$cache/bin"
  if [ ! -f "$cache/complete" ]; then
    log "building the upstream tools into $cache (first time on this machine: several minutes)"
    rm -rf "$cache"; mkdir -p "$bin"
    k8s_version=$(cd tools/kubernetes && go list -m -f '{{.Version}}' k8s.io/kubernetes)
    local ld="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld="$ld -X $pkg.gitVersion=$k8s_version -X $pkg.gitTreeState=clean"
    done
    (cd tools/kubernetes && go build -trimpath -ldflags "$ld" -o "$bin/" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kubectl)
    GOBIN="$bin" go install -trimpath -ldflags "-s -w" "github.com/k3s-io/kine@$KINE_VERSION"
    GOBIN="$bin" go install -trimpath \
        -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
        "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    touch "$cache/complete"
  fi
  mkdir -p .tools
  ln -sfn "$bin" .tools/bin
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
install_python_env
log "ready: .tools/bin has $(ls .tools/bin | tr '\n' ' ')"
