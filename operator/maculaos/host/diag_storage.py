"""`maculaos diag storage`: the disks and partitions (lsblk), the file system holding the node's state
(the data partition on a node) and how full it is, the A/B slots as RAUC sees them, and SMART health
where smartctl is installed. Every command bounded; a tool that is missing is a SKIP line, not a failure."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from maculaos.host.diag import Check, ProbeTimeout, Section, Status, bounded
from maculaos.host.rauc import Rauc, RaucError, RaucStatus

STATE_DIR = Path("var/lib/maculaos")
#: Above this share of the data partition in use, the check fails (upgrades and backups need room).
FULL_PERCENT = 90
SMART_SECONDS = 10.0
MOUNT_TABLE = Path("/proc/self/mounts")


@dataclass(frozen=True)
class Mount:
    device: str
    point: str
    fstype: str
    options: tuple[str, ...]


def mounts(table: Path = MOUNT_TABLE) -> list[Mount]:
    """The running system's mounts (octal escapes in paths decoded)."""
    found = []
    for line in table.read_text().splitlines():
        device, point, fstype, options, *_ = line.split()
        found.append(Mount(unescape_mount_field(device), unescape_mount_field(point), fstype,
                           tuple(options.split(","))))
    return found


def unescape_mount_field(field: str) -> str:
    """The kernel writes a space in a mount point as \\040 (octal), in /proc/self/mounts and mountinfo alike."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_of(path: Path, table: list[Mount]) -> Mount | None:
    """The mount a path lives on: the longest mount point above it."""
    real = os.path.realpath(path)
    above = [m for m in table if real == m.point or real.startswith(m.point.rstrip("/") + "/")]
    return max(above, key=lambda m: len(m.point), default=None)


def check_state_mount(host_root: Path) -> Check:
    path = host_root / STATE_DIR
    mount = mount_of(path, mounts()) if path.exists() else None
    if mount is None:
        return Check(Section.STORAGE, "data partition", Status.FAIL, f"{path} is missing")
    if "ro" in mount.options:
        return Check(Section.STORAGE, "data partition", Status.FAIL,
                     f"{path} is on {mount.device} ({mount.fstype}) mounted read-only at {mount.point}")
    note = " (live mode: nothing is kept)" if mount.fstype == "tmpfs" else ""
    return Check(Section.STORAGE, "data partition", Status.PASS,
                 f"{path} is on {mount.device} ({mount.fstype}) at {mount.point}{note}")


def check_usage(host_root: Path) -> Check:
    path = host_root / STATE_DIR
    try:
        stats = os.statvfs(path)
    except OSError as exc:
        return Check(Section.STORAGE, "data usage", Status.FAIL, f"{path}: {exc.strerror or exc}")
    total = stats.f_blocks * stats.f_frsize
    free = stats.f_bavail * stats.f_frsize
    used = 100 - (100 * free // total) if total else 100
    status = Status.FAIL if used > FULL_PERCENT else Status.PASS
    return Check(Section.STORAGE, "data usage", status,
                 f"{used}% used, {free // 2**20} MiB free of {total // 2**20} MiB"
                 f"{f' (over {FULL_PERCENT}%: upgrades and backups need room)' if status is Status.FAIL else ''}")


def block_devices(seconds: float) -> list[dict[str, object]]:
    result = subprocess.run(["lsblk", "-J", "-b", "-o", "NAME,TYPE,SIZE,FSTYPE,LABEL,MOUNTPOINT"],
                            capture_output=True, text=True, timeout=seconds)
    if result.returncode != 0:
        raise OSError(result.stderr.strip() or f"lsblk exited with {result.returncode}")
    return list(json.loads(result.stdout).get("blockdevices", []))


def check_partitions(seconds: float) -> list[Check]:
    """A line per disk, naming its partitions (label, file system, where mounted)."""
    try:
        disks = [d for d in block_devices(seconds) if d.get("type") == "disk"]
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        return [Check(Section.STORAGE, "partitions", Status.SKIP, f"lsblk unavailable: {exc}")]
    checks = []
    for disk in disks:
        children = disk.get("children")
        parts = [f"{p.get('name')} {p.get('label') or p.get('fstype') or '-'}"
                 f"{' at ' + str(p['mountpoint']) if p.get('mountpoint') else ''}"
                 for p in (children if isinstance(children, list) else [])]
        size = int(str(disk.get("size") or 0)) // 2**20
        checks.append(Check(Section.STORAGE, f"disk {disk.get('name')}", Status.PASS,
                            f"{size} MiB; {', '.join(parts) or 'no partitions'}"))
    return checks or [Check(Section.STORAGE, "partitions", Status.SKIP, "no disk found")]


def check_slots(rauc: Rauc, seconds: float) -> list[Check]:
    """Each slot's state as RAUC sees it; "unavailable" (SKIP) when RAUC cannot be asked."""
    try:
        status = bounded(lambda: rauc.status(timeout=seconds), seconds + 1)
    except (RaucError, ProbeTimeout) as exc:
        return [Check(Section.STORAGE, "A/B slots", Status.SKIP, f"unavailable: {exc}")]
    return slot_lines(status)


def slot_lines(status: RaucStatus) -> list[Check]:
    checks = []
    for slot in status.slots:
        if not slot.bootname:
            continue
        marks = [slot.state, f"boot {slot.boot_status or 'unknown'}", f"version {slot.version or 'unknown'}"]
        if slot.bootname == status.booted:
            marks.append("running")
        if slot.name == status.primary:
            marks.append("boots next")
        bad = slot.boot_status == "bad" and slot.bootname == status.booted
        checks.append(Check(Section.STORAGE, f"slot {slot.bootname} ({slot.name})", Status.FAIL if bad else Status.PASS,
                            ", ".join(marks)))
    return checks


def check_smart(seconds: float) -> list[Check]:
    """`smartctl -H` per disk where smartctl is installed."""
    smartctl = shutil.which("smartctl")
    if smartctl is None:
        return [Check(Section.STORAGE, "SMART", Status.SKIP, "smartctl is not installed")]
    try:
        disks = [str(d.get("name")) for d in block_devices(seconds) if d.get("type") == "disk"]
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        return [Check(Section.STORAGE, "SMART", Status.SKIP, f"no disks to ask: {exc}")]
    return [_smart(smartctl, disk) for disk in disks]


def _smart(smartctl: str, disk: str) -> Check:
    try:
        result = subprocess.run([smartctl, "-H", f"/dev/{disk}"], capture_output=True, text=True,
                                timeout=SMART_SECONDS)
    except subprocess.TimeoutExpired:
        return Check(Section.STORAGE, f"SMART {disk}", Status.FAIL, f"no answer within {SMART_SECONDS:g} s")
    out = result.stdout
    if "PASSED" in out or "SMART Health Status: OK" in out:
        return Check(Section.STORAGE, f"SMART {disk}", Status.PASS, "healthy")
    if "FAILED" in out:
        return Check(Section.STORAGE, f"SMART {disk}", Status.FAIL, "the disk reports a failure: replace it")
    return Check(Section.STORAGE, f"SMART {disk}", Status.SKIP, "no SMART health (virtual or unsupported disk)")


def check_storage(host_root: Path, rauc: Rauc, seconds: float) -> list[Check]:
    return [check_state_mount(host_root), check_usage(host_root), *check_partitions(seconds),
            *check_slots(rauc, seconds), *check_smart(seconds)]
