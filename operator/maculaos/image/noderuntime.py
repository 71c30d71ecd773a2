"""The node-runtime profile: a Kubernetes node without k3s, from the parts k3s itself packages. Debian
gives containerd, runc and the CNI plugins (maculaos.yaml); this adds the kubelet and kube-proxy (one
binary, as in k3s, built by tools/install.sh from the pinned k8s.io/kubernetes) and the pod sandbox's
pause image, compiled from that module's own pause.c and written as an OCI archive, because no registry
is reachable to pull one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from maculaos.errors import MaculaosError

PROFILE = "node-runtime"
BINARIES = ("kubelet", "kube-proxy")
BIN_DIR = Path("usr/local/bin")
IMAGES = Path("usr/share/maculaos/node-runtime/images")
#: containerd's sandbox_image (image-build/overlay/etc/containerd/config.toml names the same).
PAUSE_NAME, PAUSE_TAG = "maculaos.local/pause", "3.10"


class NodeRuntimeError(MaculaosError):
    """The profile's parts are missing or cannot be built; the message says which and how to get them."""


def node_binaries(folder: Path) -> list[Path]:
    """The kubelet and kube-proxy in folder, or an error naming what is missing."""
    found = [folder / name for name in BINARIES]
    missing = [p.name for p in found if not p.is_file()]
    if missing:
        raise NodeRuntimeError(f"the {PROFILE} profile needs {', '.join(missing)} in {folder}: run "
                               "tools/install.sh, or give the folder with --node-binaries")
    return found


def pause_source(repo_root: Path) -> Path:
    """pause.c of the Kubernetes module tools/kubernetes pins (in Go's module cache after install.sh)."""
    try:
        module = subprocess.run(["go", "list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes"],
                                cwd=repo_root / "tools" / "kubernetes", capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise NodeRuntimeError(f"cannot find the pinned Kubernetes module (go list): {exc}") from exc
    source = Path(module.stdout.strip()) / "build" / "pause" / "linux" / "pause.c"
    if not source.is_file():
        raise NodeRuntimeError(f"{source} is missing: run tools/install.sh")
    return source


def _oci_writer(repo_root: Path) -> ModuleType:
    """The project's reproducible OCI archive writer (the operator image's)."""
    path = repo_root / "image-build" / "operator-image" / "oci.py"
    spec = importlib.util.spec_from_file_location("maculaos_oci", path)
    if spec is None or spec.loader is None:
        raise NodeRuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def pause_archive(repo_root: Path, cache: Path, epoch: int, arch: str) -> Path:
    """The pause image archive, built once per pause.c and epoch: a static binary (gcc) in one layer."""
    if arch != "amd64":
        raise NodeRuntimeError(f"the {PROFILE} profile is built for amd64 only so far, not {arch}")
    source = pause_source(repo_root)
    key = hashlib.sha256(source.read_bytes() + f"{epoch} {arch}".encode()).hexdigest()[:16]
    archive = cache / "pause" / key / "pause.tar"
    if archive.exists():
        return archive
    oci = _oci_writer(repo_root)
    with tempfile.TemporaryDirectory() as work:
        root = Path(work) / "root"
        (root / "bin").mkdir(parents=True)
        try:
            subprocess.run(["gcc", "-Os", "-static", "-s", "-o", str(root / "bin" / "pause"), str(source)],
                           check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise NodeRuntimeError(f"cannot compile {source} (gcc -static): {exc}") from exc
        config = oci.ImageConfig(name=PAUSE_NAME, tag=PAUSE_TAG, architecture=arch, created_epoch=epoch,
                                 user="65535:65535", entrypoint=["/bin/pause"], cmd=[], env=[])
        archive.parent.mkdir(parents=True, exist_ok=True)
        partial = archive.with_suffix(".partial")
        oci.write_archive(root, config, partial)
        partial.rename(archive)
    return archive


def stage(payload: Path, binaries: Path, repo_root: Path, cache: Path, epoch: int, arch: str) -> None:
    """The kubelet, kube-proxy and the pause archive into the payload tree."""
    kubelet, *others = node_binaries(binaries)
    (payload / BIN_DIR).mkdir(parents=True, exist_ok=True)
    for binary in (kubelet, *others):
        target = payload / BIN_DIR / binary.name
        if binary is not kubelet and binary.resolve() == kubelet.resolve():
            target.symlink_to(kubelet.name)   # one binary, run as what it is called (tools/kubernetes/node)
            continue
        shutil.copyfile(binary, target)
        target.chmod(0o755)
    images = payload / IMAGES
    images.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pause_archive(repo_root, cache, epoch, arch), images / "pause.tar")
