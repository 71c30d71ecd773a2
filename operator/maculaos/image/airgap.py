"""What a node needs to install the operator on first boot without network (seed 5.3): the operator's OCI
archive, the two charts as tarballs inside k3s auto-deploy manifests (HelmChart `chartContent`), and the
k3s configuration that labels the node as MaculaOS (the chart's agent DaemonSet selects that label).

The files live under /usr/share/maculaos/k3s in the read-only root, so an update of the root brings new
ones; `macula-k3s-preload.service` copies them into /var/lib/rancher/k3s at every boot (/var is on the
data partition and is seeded from the image only once)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

from maculaos.errors import MaculaosError
from maculaos.image.cacheuse import COMPLETE, evict_unused, mark_used

# Where the image keeps the files, and where k3s reads them (the preload unit copies one to the other).
SHARE = Path("usr/share/maculaos/k3s")
K3S_IMAGES = Path("var/lib/rancher/k3s/agent/images")
K3S_MANIFESTS = Path("var/lib/rancher/k3s/server/manifests")
MANIFEST_NAME = "maculaos.yaml"
K3S_CONFIG = Path("etc/rancher/k3s/config.yaml")
NODE_LABEL = "os.macula.io/maculaos=true"
VERSION_LABEL = "os.macula.io/version"
NAMESPACE = "maculaos-system"
CHARTS = ("maculaos-crds", "maculaos-operator")


class AirgapError(MaculaosError):
    """The operator archive or a chart cannot be put into the image; the message says which and why."""


def chart_tarball(chart: Path, epoch: int) -> bytes:
    """A chart folder as `helm package` would lay it out (<name>/...), but byte-for-byte reproducible:
    sorted entries, numeric root owner, every time the build epoch, no gzip name or time."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in chart.rglob("*") if p.is_file()):
            info = tarfile.TarInfo(f"{chart.name}/{path.relative_to(chart).as_posix()}")
            data = path.read_bytes()
            info.size, info.mtime, info.mode = len(data), epoch, 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0)


def archive_reference(archive: Path) -> str:
    """The image name:tag an OCI/docker archive carries (what containerd imports it as)."""
    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile("manifest.json")
            tags = json.load(member)[0]["RepoTags"] if member else []
    except (OSError, KeyError, IndexError, ValueError, tarfile.TarError) as exc:
        raise AirgapError(f"{archive}: not an image archive with a manifest.json: {exc}") from exc
    if len(tags) != 1 or ":" not in tags[0]:
        raise AirgapError(f"{archive}: expected exactly one name:tag in manifest.json, found {tags}")
    return str(tags[0])


def archive_architecture(archive: Path) -> str:
    """The architecture an image archive's config names (an amd64 operator in an arm64 node would never
    start: exec format error, long after the build)."""
    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile("manifest.json")
            config_name = json.load(member)[0]["Config"] if member else ""
            config = tar.extractfile(config_name) if config_name else None
            arch = json.load(config).get("architecture", "") if config else ""
    except (OSError, KeyError, IndexError, ValueError, tarfile.TarError) as exc:
        raise AirgapError(f"{archive}: not an image archive with a manifest.json and config: {exc}") from exc
    if not arch:
        raise AirgapError(f"{archive}: its image config names no architecture")
    return str(arch)


def operator_values(reference: str) -> dict[str, object]:
    """The operator chart's values on a MaculaOS node: exactly the pre-loaded image, never pulled."""
    repository, _, tag = reference.rpartition(":")
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        # A node installs its own operator: one replica (a multi-node cluster raises it with a
        # HelmChartConfig named maculaos-operator in kube-system, which k3s merges on top).
        "operator": {"replicas": 1},
    }


def helmchart_manifest(charts: dict[str, bytes], reference: str) -> str:
    """k3s auto-deploy manifest: one HelmChart per chart, the chart inside it (`chartContent`), the CRDs
    first. k3s's helm controller installs them from /var/lib/rancher/k3s/server/manifests."""
    docs = []
    for name in CHARTS:
        spec: dict[str, object] = {
            "chartContent": base64.b64encode(charts[name]).decode(),
            "targetNamespace": NAMESPACE,
            "createNamespace": True,
        }
        if name == "maculaos-operator":
            spec["valuesContent"] = yaml.safe_dump(operator_values(reference), sort_keys=True)
        docs.append({
            "apiVersion": "helm.cattle.io/v1",
            "kind": "HelmChart",
            "metadata": {"name": name, "namespace": "kube-system",
                         "labels": {"app.kubernetes.io/managed-by": "maculaos-image"}},
            "spec": spec,
        })
    header = "# Written by `maculaos image build`: the MaculaOS operator, installed without network.\n"
    return header + yaml.safe_dump_all(docs, sort_keys=False)


def k3s_config(version: str) -> str:
    """/etc/rancher/k3s/config.yaml: read by k3s when it is supplied (--k3s-binary); labels the node."""
    config = {
        "node-label": [NODE_LABEL, f"{VERSION_LABEL}={version}"],
        # Seed 4.3: the mesh brings its own ingress and load balancing.
        "disable": ["traefik", "servicelb"],
    }
    return ("# MaculaOS defaults for k3s (written by the image build). The node labels select the\n"
            "# maculaos-operator chart's agent DaemonSet; os.macula.io/version is the image's version.\n"
            + yaml.safe_dump(config, sort_keys=False))


def stage(payload: Path, archive: Path, repo_root: Path, version: str, epoch: int) -> str:
    """Write the archive, the manifest and the k3s config into the payload tree; returns the image
    reference (for build-info)."""
    reference = archive_reference(archive)
    charts = {name: chart_tarball(repo_root / "charts" / name, epoch) for name in CHARTS}
    share = payload / SHARE
    (share / "images").mkdir(parents=True, exist_ok=True)
    (share / "manifests").mkdir(parents=True, exist_ok=True)
    target = share / "images" / archive.name
    target.write_bytes(archive.read_bytes())
    (share / "manifests" / MANIFEST_NAME).write_text(helmchart_manifest(charts, reference))
    config = payload / K3S_CONFIG
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(k3s_config(version))
    return reference


def operator_inputs_digest(repo_root: Path, epoch: int, arch: str = "amd64") -> str:
    """What the operator archive is made from: its builder, the package, the pins, the epoch, the arch."""
    h = hashlib.sha256(f"{epoch} {arch}".encode())
    # README.md: the wheel's metadata carries it (pyproject's readme).
    files = [repo_root / "pyproject.toml", repo_root / "README.md", repo_root / "tools" / "constraints.txt"]
    for tree in (repo_root / "image-build" / "operator-image", repo_root / "operator" / "maculaos"):
        files += sorted(p for p in tree.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for f in files:
        h.update(str(f.relative_to(repo_root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def operator_archive(repo_root: Path, cache: Path, epoch: int, arch: str = "amd64") -> Path:
    """The operator archive for these inputs: from the cache, else built by image-build/operator-image
    (minutes: mmdebstrap of its base, 30 wheels, one zstd layer; more under emulation for a foreign arch)
    and kept for the next build."""
    out = cache / "operator" / operator_inputs_digest(repo_root, epoch, arch)
    if not (out / COMPLETE).exists():
        print(f"[image] operator image (cached in {out})", file=sys.stderr, flush=True)
        builder = repo_root / "image-build" / "operator-image" / "build.py"
        env = os.environ | {"SOURCE_DATE_EPOCH": str(epoch)}
        result = subprocess.run([sys.executable, str(builder), f"--output={out}", f"--arch={arch}"], env=env,
                                check=False)
        if result.returncode != 0:
            raise AirgapError(f"the operator image build failed (exit {result.returncode}): {builder}; "
                              "or give a built archive with --operator-image PATH")
    mark_used(out)
    evict_unused(out.parent)
    found = sorted(out.glob(f"maculaos-operator-*-{arch}.tar"))
    if len(found) != 1:
        raise AirgapError(f"expected one operator archive in {out}, found {[p.name for p in found]}")
    return found[0]
