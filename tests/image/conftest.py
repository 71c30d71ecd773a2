"""The image tests' build: once per session, and not at all when a finished build of exactly these inputs
(definition, extension, overlays, build code, pins) is in the cache (~/.cache/maculaos/image/builds)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from maculaos.image.build import BuildInputs, ImageBuilder, default_cache
from maculaos.image.definition import load_definition
from maculaos.image.signing import development_identity

REPO = Path(__file__).resolve().parents[2]
EXTENSION = Path(__file__).parent / "probe-extension.yaml"
# The boot tests leave out the firmware (large, and QEMU needs none); everything else is the shipped image.
PROFILES = ["boot", "base", "tools"]


@dataclass(frozen=True)
class BuiltImage:
    squashfs: Path
    kernel: Path
    initrd: Path
    build_info: str
    out: Path
    """The build's output folder: the disk image, qcow2, bundle, SHA256SUMS and the rest."""

    def artifact(self, fmt: str) -> Path:
        return self.out / self.squashfs.name.replace(".squashfs", f".{fmt}")


@pytest.fixture(scope="session")
def built_image() -> BuiltImage:
    definition = load_definition(REPO / "image-build" / "maculaos.yaml", [EXTENSION]).select(PROFILES)
    inputs = BuildInputs(definition, REPO, development_identity(default_cache()))
    out = default_cache() / "builds" / inputs.digest()
    names = [definition.artifact(f) for f in ("squashfs", "kernel", "initrd", "build-info")]
    if not (out / "complete").exists():
        shutil.rmtree(out, ignore_errors=True)
        ImageBuilder(inputs, out).build()
        (out / "complete").touch()
    return BuiltImage(*(out / n for n in names[:3]), build_info=(out / names[3]).read_text(), out=out)


def boot_timeout() -> float:
    """Seconds to wait for a boot marker: generous, TCG on a shared 2-core machine is slow."""
    return float(os.environ.get("MACULAOS_BOOT_TIMEOUT", "420"))
