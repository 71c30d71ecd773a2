"""`maculaos install /dev/X` (seed 8.2, "Installation to Disk"): the system this medium carries onto a disk,
in the layout of the raw disk image (disk.write_system: one code path for both) with the data partition
taking the rest of the disk, and optionally the node's config.yaml on it.

Everything is checked before the first byte is written: the medium describes itself
(maculaos/install.json), the target is a whole disk that nothing uses (no mounted partition, no swap,
no device-mapper or RAID holder, not the medium we booted from) and is large enough, the config parses
as the agent would parse it. The unattended mode (`--auto`, maculaos-install.service under
`macula.mode=install`) reads its settings from the kernel command line."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from maculaos.errors import MaculaosError
from maculaos.host.nodeconfig import NodeConfig, NodeConfigError
from maculaos.image import disk
from maculaos.image.iso import MANIFEST, MEDIUM_ROOT

# Whole-disk names that are never install targets: loop devices (the live squashfs), RAM disks, optical
# drives, compressed swap, device-mapper and RAID volumes.
NOT_DISKS = ("loop", "ram", "sr", "zram", "dm-", "md", "fd")
#: config.yaml's keys a person logs in with (refused in those words).
LOGIN_KEYS = ("ssh_authorized_keys", "password_hash")


class InstallError(MaculaosError):
    """The install cannot go on; nothing was written. The message says why and what to do."""


@dataclass(frozen=True)
class Medium:
    """The live medium's system and the layout it installs (maculaos/install.json on the ISO)."""

    root: Path
    version: str
    cmdline: str
    esp_mib: int
    slot_mib: int
    min_data_mib: int
    squashfs: Path
    kernel: Path
    initrd: Path

    @property
    def needed_mib(self) -> int:
        layout = disk.plan(self.esp_mib, self.slot_mib, self.min_data_mib)
        assert layout.total_mib is not None
        return layout.total_mib


def read_medium(root: Path = MEDIUM_ROOT) -> Medium:
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise InstallError(f"{manifest} not found: not booted from a MaculaOS ISO or USB stick (give the "
                           "mounted medium's folder with --source)")
    try:
        m = json.loads(manifest.read_text())
        files = {k: root / v for k, v in m["files"].items()}
        medium = Medium(root, str(m["version"]), str(m["cmdline"]), int(m["esp_mib"]), int(m["slot_mib"]),
                        int(m["min_data_mib"]), files["squashfs"], files["kernel"], files["initrd"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InstallError(f"{manifest} is damaged ({exc!r}): write the ISO to the medium again") from exc
    for path in (medium.squashfs, medium.kernel, medium.initrd):
        if not path.is_file():
            raise InstallError(f"{path} is missing from the medium: write the ISO to the medium again")
    return medium


@dataclass(frozen=True)
class SystemView:
    """Where the checks read the machine's state (the real /sys and /proc by default; tests give
    recorded copies)."""

    sys: Path = Path("/sys")
    mountinfo: Path = Path("/proc/self/mountinfo")
    swaps: Path = Path("/proc/swaps")
    medium: Path = MEDIUM_ROOT


@dataclass(frozen=True)
class Target:
    path: Path
    size: int
    """Bytes."""
    block: bool
    numbers: frozenset[str] = field(default_factory=frozenset)
    """major:minor of the disk and each of its partitions (block devices)."""


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _sys_disk(view: SystemView, number: str) -> Path:
    return (view.sys / "dev" / "block" / number).resolve()


def inspect_target(path: Path, view: SystemView = SystemView()) -> Target:
    """What `path` is; refuses a partition, a missing path or anything that is neither disk nor file."""
    try:
        st = path.stat()
    except OSError as exc:
        raise InstallError(f"{path}: {exc.strerror}: give a whole disk such as /dev/sda or /dev/nvme0n1") from exc
    if stat.S_ISREG(st.st_mode):
        return Target(path, st.st_size, False)
    if not stat.S_ISBLK(st.st_mode):
        raise InstallError(f"{path} is neither a disk nor a disk image file")
    number = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    node = _sys_disk(view, number)
    if (node / "partition").exists():
        raise InstallError(f"{path} is a partition: give the whole disk ({node.parent.name} as /dev/"
                           f"{node.parent.name}); the installer writes its own partition table")
    numbers = {number} | {_read(p.parent / "dev") for p in node.glob("*/partition")}
    return Target(path, int(_read(node / "size") or 0) * 512, True, frozenset(n for n in numbers if n))


def _mounts(view: SystemView) -> list[tuple[str, str]]:
    """(major:minor, mount point) of every mount."""
    mounts = []
    for line in _read(view.mountinfo).splitlines():
        fields = line.split()
        if len(fields) > 4:
            mounts.append((fields[2], fields[4].replace("\\040", " ")))
    return mounts


def refusals(target: Target, medium: Medium, view: SystemView = SystemView()) -> list[str]:
    """Why `target` must not be written, in words for the person at the console (empty: it may)."""
    why = []
    if target.block:
        for number, point in _mounts(view):
            if number not in target.numbers:
                continue
            if Path(point) == view.medium:
                why.append(f"{target.path} is the medium this system booted from")
            else:
                why.append(f"{target.path} is in use: mounted at {point}")
        for line in _read(view.swaps).splitlines()[1:]:
            device = line.split()[0]
            try:
                rdev = os.stat(device).st_rdev
            except OSError:
                continue
            if f"{os.major(rdev)}:{os.minor(rdev)}" in target.numbers:
                why.append(f"{target.path} is in use: {device} is swap")
        for number in sorted(target.numbers):
            holders = _sys_disk(view, number) / "holders"
            if holders.is_dir() and any(holders.iterdir()):
                why.append(f"{target.path} is in use by {', '.join(sorted(h.name for h in holders.iterdir()))}"
                           " (device-mapper, LVM or RAID)")
    size_mib = target.size // disk.MIB
    if size_mib < medium.needed_mib:
        why.append(f"{target.path} holds {size_mib} MiB; MaculaOS {medium.version} needs at least "
                   f"{medium.needed_mib} MiB (ESP {medium.esp_mib}, two system slots of {medium.slot_mib}, "
                   f"data {medium.min_data_mib} MiB or more)")
    return list(dict.fromkeys(why))


def plan_install(target: Target, medium: Medium) -> disk.DiskLayout:
    """The raw disk image's layout with the data partition taking the rest of the target (1 MiB left at
    the end for the backup GPT)."""
    start = disk.plan(medium.esp_mib, medium.slot_mib, None).part("data").start_mib
    data_mib = target.size // disk.MIB - start - 1
    return disk.plan(medium.esp_mib, medium.slot_mib, data_mib)


def check_config(config: Path) -> str:
    """The config.yaml to put on the new disk, every key checked by NodeConfig (as the node reads it)."""
    try:
        text = config.read_text()
        data = yaml.safe_load(text)
    except OSError as exc:
        raise InstallError(f"--config {config}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise InstallError(f"--config {config} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise InstallError(f"--config {config} must hold a mapping at the top (maculaos: ...)")
    try:  # every key: a node nobody can log in to, or one serving nothing, is worse than no install
        NodeConfig.parse(data, config)
    except NodeConfigError as exc:
        if exc.key.split(".")[0].split("[")[0] in LOGIN_KEYS:
            raise InstallError(f"--config {config}: the login settings are refused: {exc}") from exc
        raise InstallError(f"--config {config}: the agent would refuse it: {exc.problem}") from exc
    return text


def candidate_disks(view: SystemView = SystemView()) -> list[Path]:
    """Whole disks of this machine an install could go to (removable ones included: USB disks)."""
    block = view.sys / "block"
    names = sorted(p.name for p in block.iterdir()) if block.is_dir() else []
    return [Path("/dev") / n for n in names if not n.startswith(NOT_DISKS)]


def install(target: Target, medium: Medium, config_text: str | None,
            view: SystemView = SystemView()) -> disk.DiskLayout:
    """Write the system onto `target` (checked again here: nothing is written when any check fails)."""
    why = refusals(target, medium, view)
    if why:
        raise InstallError("; ".join(why))
    try:
        disk.check_tools(exclude=("qemu-img",))
    except disk.DiskError as exc:
        raise InstallError(f"nothing written: {exc}") from exc
    layout = plan_install(target, medium)
    data = layout.part("data")
    assert data.size_mib is not None
    with tempfile.TemporaryDirectory() as tmp:
        tree = None
        if config_text is not None:
            tree = Path(tmp) / "data"
            folder = tree / "var/lib/maculaos"
            folder.mkdir(parents=True, mode=0o700)
            (folder / "config.yaml").write_text(config_text)
            (folder / "config.yaml").chmod(0o600)
        # A fresh seed per install: two installed disks in one machine never share GUIDs or UUIDs.
        inputs = disk.DiskInputs(squashfs=medium.squashfs, boot=disk.BootFiles(medium.kernel, medium.initrd),
                                 version=medium.version, cmdline=medium.cmdline, esp_mib=medium.esp_mib,
                                 slot_mib=medium.slot_mib, data_mib=data.size_mib, seed=str(uuid.uuid4()),
                                 epoch=int(time.time()), data_tree=tree)
        try:
            disk.write_system(target.path, layout, inputs, sparse=False)
        except disk.DiskError as exc:
            raise InstallError(f"writing {target.path} failed part-way, the disk does not boot: {exc}") from exc
    os.sync()
    if target.block:  # the kernel learns the new partitions (best effort: they are used after a reboot)
        subprocess.run(["blockdev", "--rereadpt", str(target.path)], capture_output=True, check=False)
    return layout


@dataclass(frozen=True)
class AutoSettings:
    """`macula.install.*` on the kernel command line (the unattended install of a custom ISO)."""

    config: Path | None
    target: Path | None


def auto_settings(cmdline: str, medium_root: Path = MEDIUM_ROOT) -> AutoSettings:
    """macula.install.config=PATH (on the medium, else on this system) and macula.install.target=DEV."""
    words = dict(w.split("=", 1) for w in shlex.split(cmdline) if "=" in w)
    config = words.get("macula.install.config")
    config_path = None
    if config:
        on_medium = medium_root / config.lstrip("/")
        config_path = on_medium if on_medium.exists() else Path(config)
    target = words.get("macula.install.target")
    return AutoSettings(config_path, Path(target) if target else None)


def choose_target(medium: Medium, view: SystemView = SystemView()) -> Target:
    """The one disk an unattended install may use; more than one, or none, is an error that lists them
    (then macula.install.target= says which)."""
    fits, refused = [], []
    for path in candidate_disks(view):
        try:
            target = inspect_target(path, view)
        except InstallError as exc:
            refused.append(str(exc))
            continue
        why = refusals(target, medium, view)
        (refused.extend(why) if why else fits.append(target))
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise InstallError("no disk to install onto" + (f" ({'; '.join(refused)})" if refused else ""))
    raise InstallError(f"more than one disk could be the target ({', '.join(str(t.path) for t in fits)}): "
                       "say which with macula.install.target=/dev/X")
