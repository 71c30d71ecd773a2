"""Write a root filesystem as a one-layer OCI image archive, byte for byte the same on every run.

The archive holds an OCI image layout (oci-layout, index.json, blobs/sha256/...) and a docker-archive
manifest.json next to it, as `docker save` does since Docker 25: containerd (`ctr image import`, k3s's
agent/images/ folder), podman, skopeo and `docker load` all read it, and the image keeps its name.

The layer is zstd-compressed (`application/vnd.oci.image.layer.v1.tar+zstd`, which containerd reads since
1.5, so every current k3s): a quarter smaller than gzip -9 and several times faster to write. Inside the
OS image the archive sits in the squashfs, which cannot compress it again, so its own compression is what
the ISO pays (docs/benchmarks.md, "ISO under 300 MB").
"""

from __future__ import annotations

import hashlib
import io
import json
import stat
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

# Filled by the runtime, never by an image.
SKIPPED_CONTENTS = {"dev", "proc", "sys", "run", "tmp"}
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+zstd"
# zstd level 9 in one thread: the same bytes on every run and machine with the same zstd; levels above
# 12 cost minutes for a few percent (docs/benchmarks.md). No --long: its window (128 MiB) would be the
# memory a node needs to import the image.
ZSTD_COMMAND = ["zstd", "-9", "-T1", "-q", "-c"]


@dataclass
class ImageConfig:
    name: str
    tag: str
    architecture: str
    created_epoch: int
    user: str
    entrypoint: list[str]
    cmd: list[str]
    env: list[str]
    labels: dict[str, str] = field(default_factory=dict)


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def layer_tar(root: Path, epoch: int) -> bytes:
    """The root filesystem as an uncompressed tar: sorted, numeric owners, mtimes clamped to epoch."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _entries(root):
            rel = path.relative_to(root).as_posix()
            info = tar.gettarinfo(str(path), arcname=rel)
            info.uname = info.gname = ""
            info.mtime = min(int(info.mtime), epoch)
            info.pax_headers = {}
            if info.isreg():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    return buffer.getvalue()


def _entries(root: Path) -> list[Path]:
    """Directories before their contents, everything sorted; device nodes are never part of an image."""
    entries: list[Path] = []
    stack = [root]
    while stack:
        directory = stack.pop()
        rel = directory.relative_to(root)
        children = sorted(directory.iterdir(), key=lambda p: p.name.encode())
        if rel.parts and rel.parts[0] in SKIPPED_CONTENTS:
            children = []
        for child in children:
            mode = child.lstat().st_mode
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode):
                continue
            entries.append(child)
        stack.extend(reversed([c for c in children if c.is_dir() and not c.is_symlink()]))
    return _parents_first(entries, root)


def _parents_first(entries: list[Path], root: Path) -> list[Path]:
    return sorted(entries, key=lambda p: [part.encode() for part in p.relative_to(root).parts])


def compress_layer(layer: bytes) -> bytes:
    """The layer as one zstd frame (the zstd tool: Python 3.13 has no zstd module)."""
    return subprocess.run(ZSTD_COMMAND, input=layer, capture_output=True, check=True).stdout


def _blob(blobs: dict[str, bytes], data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return digest


def write_archive(root: Path, config: ImageConfig, archive: Path) -> None:
    """root as the image config describes it, written to archive (a tar)."""
    created = _rfc3339(config.created_epoch)
    layer = layer_tar(root, config.created_epoch)
    compressed = compress_layer(layer)
    blobs: dict[str, bytes] = {}
    layer_digest = _blob(blobs, compressed)
    image_config = {
        "architecture": config.architecture, "os": "linux", "created": created,
        "config": {"User": config.user, "Entrypoint": config.entrypoint, "Cmd": config.cmd, "Env": config.env,
                   "Labels": config.labels, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
        "history": [{"created": created, "created_by": "image-build/operator-image/build.py"}],
    }
    config_digest = _blob(blobs, _canonical(image_config))
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(blobs[config_digest])},
        "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": layer_digest,
                    "size": len(compressed)}],
        "annotations": {"org.opencontainers.image.created": created},
    }
    manifest_digest = _blob(blobs, _canonical(manifest))
    reference = f"{config.name}:{config.tag}"
    index = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
                       "size": len(blobs[manifest_digest]),
                       "platform": {"architecture": config.architecture, "os": "linux"},
                       "annotations": {"io.containerd.image.name": reference,
                                       "org.opencontainers.image.ref.name": config.tag}}],
    }
    docker_manifest = [{"Config": _blob_path(config_digest), "RepoTags": [reference],
                        "Layers": [_blob_path(layer_digest)]}]
    files = {"oci-layout": _canonical({"imageLayoutVersion": "1.0.0"}), "index.json": _canonical(index),
             "manifest.json": _canonical(docker_manifest)}
    files.update({_blob_path(d): data for d, data in blobs.items()})
    _write_tar(archive, files, config.created_epoch)


def _blob_path(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]


def _write_tar(archive: Path, files: dict[str, bytes], epoch: int) -> None:
    partial = archive.with_suffix(".partial")
    with tarfile.open(partial, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, epoch
            tar.addfile(info)
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, epoch
            tar.addfile(info, io.BytesIO(files[name]))
    partial.rename(archive)


def _rfc3339(epoch: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
