"""A MaculaOS VM as a node of the local environment: a built image (with the node-runtime profile) booted in
QEMU with a data partition provisioned as a site would provision it (config.yaml with the join section and
SSH keys), joined to the demo's control plane. `maculaos dev vm` and the VM tests boot it this way."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from maculaos.errors import MaculaosError
from maculaos.image.vm import VmSpec

#: Direct kernel boot of a build's files: the squashfs as the first disk, the data partition the second.
CMDLINE = "boot=macula rauc.slot=A console=ttyS0 macula.root=/dev/vda macula.data=/dev/vdb macula.mode=disk"
CONFIG = Path("var/lib/maculaos/config.yaml")


class VmNodeError(MaculaosError):
    """The build or the data partition cannot make a VM node; the message says what to do."""


@dataclass(frozen=True)
class Build:
    """A finished `maculaos image build` folder: the files a direct kernel boot needs."""

    squashfs: Path
    kernel: Path
    initrd: Path

    @classmethod
    def find(cls, folder: Path) -> Build:
        found = {kind: sorted(folder.glob(f"*.{kind}")) for kind in ("squashfs", "kernel", "initrd")}
        missing = [kind for kind, paths in found.items() if len(paths) != 1]
        if missing:
            raise VmNodeError(f"{folder} is not one finished image build (no single .{missing[0]}): build one with "
                              "`maculaos image build --profiles boot,base,tools,node-runtime --out DIR`")
        return cls(found["squashfs"][0], found["kernel"][0], found["initrd"][0])


def data_disk(path: Path, config: dict[str, Any] | None, size_mib: int = 2048,
              files: dict[str, bytes] | None = None) -> Path:
    """A data partition as a provisioner hands it over: ext4 labelled MACULA_DATA with config.yaml (and any
    other files, by path inside it), made without mounting (mkfs.ext4 -d); sparse. With no config and no
    files, a blank disk the first boot formats."""
    with path.open("wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    if config is None and not files:
        return path
    tree = path.with_name(path.name + ".tree")
    shutil.rmtree(tree, ignore_errors=True)
    entries = dict(files or {})
    if config is not None:
        entries[str(CONFIG)] = yaml.safe_dump(config).encode()
    for name, content in entries.items():
        target = tree / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(0o600)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "MACULA_DATA", "-d", str(tree), str(path)], check=True)
    shutil.rmtree(tree)
    return path


def node_spec(build: Build, data: Path, forwards: tuple[tuple[int, int], ...] = (), memory_mib: int = 1536,
              cmdline_extra: str = "") -> VmSpec:
    """The VM of one node: the build's kernel, initrd and root, its own data disk; it may reboot (the
    kubelet re-registers, upgrades boot the other slot)."""
    return VmSpec(build.kernel, build.initrd, build.squashfs, data, f"{CMDLINE} {cmdline_extra}".strip(),
                  memory_mib=memory_mib, forwards=forwards, reboot=True)
