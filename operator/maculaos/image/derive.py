"""A build derived from a finished one: its root unpacked, changed (another version, and whatever a story
needs: an unhealthy unit, a broken kernel), packed again and bundled with the same signing identity. A real
signed bundle in a few minutes instead of a full image build: the upgrade tests and benchmarks make build
N+1 this way. The squashfs is packed at a fast zstd level; the node does not care which."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from maculaos.host.bundles import BundleError
from maculaos.image.bundle import build_bundle
from maculaos.image.osrelease import set_version
from maculaos.image.signing import SigningIdentity

ZSTD_LEVEL = 3
BLOCK = "256K"


def derive_bundle(squashfs: Path, kernel: Path, initrd: Path, target: Path, version: str, arch: str,
                  identity: SigningIdentity, change: Callable[[Path], None] | None = None) -> Path:
    """`target`: a signed RAUC bundle of the build at `squashfs` with `version` and `change(root)` applied.
    Root only (unsquashfs and mksquashfs keep owners and device nodes)."""
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".derive-") as tmp:
        root, packed = Path(tmp) / "root", Path(tmp) / "rootfs.squashfs"
        _run(["unsquashfs", "-no-progress", "-quiet", "-d", str(root), str(squashfs)])
        set_version(root, version)
        if change is not None:
            change(root)
        _run(["mksquashfs", str(root), str(packed), "-comp", "zstd", "-Xcompression-level", str(ZSTD_LEVEL),
              "-b", BLOCK, "-noappend", "-quiet", "-no-progress"])
        shutil.rmtree(root)
        partial = target.with_name(f".{target.name}.partial")
        build_bundle(packed, kernel, initrd, partial, version, arch, f"derived-{version}", identity)
        partial.rename(target)
    return target


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BundleError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
