"""A MaculaOS VM as a node of the local environment: a built image's disk (with the node-runtime profile)
booted in QEMU through GRUB, its data partition provisioned as a site would provision it (config.yaml with
the join section and SSH keys), joined to a control plane on the host. `maculaos dev vm` and the VM tests
boot it this way; `data_disk` makes a data partition alone for the tests' direct kernel boots."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from maculaos.errors import MaculaosError
from maculaos.image import disk, grub
from maculaos.image.vm import VmSpec

CONFIG = Path("var/lib/maculaos/config.yaml")
#: Every VM node's hardware watchdog, a PCI card QEMU emulates (its default action on expiry is a reset), so
#: config.yaml's maculaos.watchdog arms a real device as on a machine, not softdog.
WATCHDOG_DEVICE = ("-device", "i6300esb")
#: q35's chipset has a watchdog of its own (iTCO_wdt); the two drivers' numbering follows which loads
#: first, so the kernel is told to leave iTCO_wdt out and the i6300esb is /dev/watchdog0, the one systemd
#: pets, at every boot (as in the VM tests).
ONE_WATCHDOG = "modprobe.blacklist=iTCO_wdt"


class VmNodeError(MaculaosError):
    """The build or the data partition cannot make a VM node; the message says what to do."""


def find_disk_image(folder: Path) -> Path:
    """The raw disk image of a finished `maculaos image build` folder."""
    found = sorted(folder.glob("*.img"))
    if len(found) != 1:
        raise VmNodeError(f"{folder} is not one finished image build (no single .img disk image): build one with "
                          "`maculaos image build --profiles boot,base,tools,node-runtime --out DIR`")
    return found[0]


def data_disk(path: Path, config: dict[str, Any] | None, size_mib: int = 2048,
              files: dict[str, bytes] | None = None) -> Path:
    """A data partition as a provisioner hands it over: ext4 labelled MACULA_DATA with config.yaml (and any
    other files, by path inside it), made without mounting (mkfs.ext4 -d); sparse. With no config and no
    files, a blank disk the first boot formats."""
    with path.open("wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    if config is None and not files:
        return path
    tree = _data_tree(path.with_name(path.name + ".tree"), config, files)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "MACULA_DATA", "-d", str(tree), str(path)], check=True)
    shutil.rmtree(tree)
    return path


def _data_tree(tree: Path, config: dict[str, Any] | None, files: dict[str, bytes] | None) -> Path:
    """The data partition's files (config.yaml and `files`, by path inside it; each 0600) in a fresh folder."""
    shutil.rmtree(tree, ignore_errors=True)
    entries = dict(files or {})
    if config is not None:
        entries[str(CONFIG)] = yaml.safe_dump(config).encode()
    for name, content in entries.items():
        target = tree / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(0o600)
    return tree


def provision_disk(image: Path, target: Path, config: dict[str, Any], files: dict[str, bytes] | None = None,
                   grow_mib: int = 2048, cmdline_extra: str = "", menu_timeout: int | None = None) -> Path:
    """A machine's disk as an installer leaves it: a copy of the build's raw disk image (GRUB, slots A and B,
    the data partition) at `target`, its data partition holding `config` (and `files`), grown by `grow_mib`
    (the first boot grows the data partition into it). Upgrades need this boot: RAUC writes slot B, and GRUB
    chooses the slot. The serial console and `cmdline_extra` are added to the kernel command line;
    `menu_timeout` replaces the boot menu's wait (0: none, for VMs nobody watches)."""
    subprocess.run(["cp", "--sparse=always", str(image), str(target)], check=True)
    data = disk.partition_table(target).part("data")
    assert data.size_mib is not None
    tree = _data_tree(target.with_name(target.name + ".data"), config, files)
    disk.make_data(target, data.offset, data.size_mib, tree, str(uuid.uuid4()), int(time.time()))
    shutil.rmtree(tree)
    env = {"EXTRA_CMDLINE": f"console=ttyS0 {cmdline_extra}".strip()}
    if menu_timeout is not None:
        env[grub.MENU_TIMEOUT] = str(menu_timeout)
    disk.boot_environment(target, env)
    subprocess.run(["qemu-img", "resize", "-q", "-f", "raw", str(target), f"+{grow_mib}M"], check=True)
    return target


def disk_node(disk_image: Path, forwards: tuple[tuple[int, int], ...] = (), memory_mib: int = 1536,
              monitor: Path | None = None) -> VmSpec:
    """The VM of one node booted from its disk by the firmware and GRUB; it may reboot (the kubelet
    re-registers, upgrades boot the other slot)."""
    return VmSpec(None, None, None, None, disk=disk_image, memory_mib=memory_mib, forwards=forwards, reboot=True,
                  monitor=monitor)


def dev_node(image: Path, disk_image: Path, config: Callable[[], dict[str, Any]],
             forwards: tuple[tuple[int, int], ...] = (), memory_mib: int = 1536) -> VmSpec:
    """`maculaos dev vm`'s node: its disk provisioned from the build the first time, with `config()` (called
    only then: it mints a bootstrap token) and the kernel told to leave the chipset's watchdog out
    (ONE_WATCHDOG), so that the node has the disk boot test's one hardware watchdog (WATCHDOG_DEVICE,
    unarmed until config.yaml's maculaos.watchdog arms it); a second run boots the same disk again."""
    if not disk_image.exists():
        provision_disk(image, disk_image, config(), cmdline_extra=ONE_WATCHDOG)
    return dataclasses.replace(disk_node(disk_image, forwards, memory_mib), extra_args=WATCHDOG_DEVICE)
