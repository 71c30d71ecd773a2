"""The watchdog (seed 4.17.1, issue #21): config.yaml's maculaos.watchdog rendered into a systemd
system.conf drop-in (RuntimeWatchdogSec, RebootWatchdogSec, WatchdogDevice when the config chooses the
device), and the kernel's softdog module loaded when
the machine has no watchdog device of its own. PID 1 reads system.conf only when it starts, so a changed
drop-in is followed by `systemctl daemon-reexec` on the running system, and only then."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from maculaos.host.files import atomic_write
from maculaos.host.nodeconfig import NodeConfig, WatchdogConfig
from maculaos.host.systemd import Systemd, SystemdError

DROP_IN = Path("etc/systemd/system.conf.d/maculaos-watchdog.conf")
SOFTDOG_LOAD = Path("etc/modules-load.d/maculaos-softdog.conf")
WATCHDOG_CLASS = Path("sys/class/watchdog")
#: What the softdog driver calls itself in /sys/class/watchdog/*/identity.
SOFTDOG_IDENTITY = "Software Watchdog"


class WatchdogError(SystemdError):
    """maculaos.watchdog cannot be applied; the message says why and that nothing changed."""


@dataclass(frozen=True)
class WatchdogChanges:
    changed: bool
    softdog: bool
    """The softdog module stands in for a hardware watchdog."""
    summary: str


def render_drop_in(watchdog: WatchdogConfig) -> str:
    device = f"WatchdogDevice={watchdog.device}\n" if watchdog.device else ""
    return ("# Written by maculaos from config.yaml's maculaos.watchdog. Do not edit.\n[Manager]\n"
            f"RuntimeWatchdogSec={watchdog.timeout_seconds}s\nRebootWatchdogSec={watchdog.reboot_timeout_seconds}s\n"
            f"{device}")


def _identity(device: Path) -> str:
    return (device / "identity").read_text().strip() if (device / "identity").is_file() else device.name


def hardware_watchdogs(host_root: Path) -> dict[str, str]:
    """The machine's own watchdog devices, their names (watchdog0) to their driver's identity; softdog is
    not one of them."""
    devices = sorted((host_root / WATCHDOG_CLASS).glob("watchdog*"))
    return {d.name: i for d in devices if (i := _identity(d)) != SOFTDOG_IDENTITY}


def chosen_device(host_root: Path, device: str) -> str:
    """The device maculaos.watchdog.device names, as the summary says it: with its driver's identity when
    /sys/class/watchdog knows the name (so a person sees which of two watchdogs it is this boot), or
    "not found" when a /dev/watchdogN is not there (systemd would have nothing to pet). Other names (a
    udev rule's) are said as they are."""
    name = Path(device).name
    sysfs = host_root / WATCHDOG_CLASS / name
    if sysfs.is_dir():
        return f"{device} ({_identity(sysfs)})"
    if re.fullmatch(r"watchdog[0-9]+", name):
        return f"{device} (not found on this machine: systemd has nothing to pet)"
    return device


def _converge(path: Path, content: str | None) -> bool:
    """Write (or with None remove) one file; whether it changed."""
    if content is not None:
        return atomic_write(path, content, mode=0o644)
    if not path.exists():
        return False
    path.unlink()
    return True


def apply_watchdog(host_root: Path, config: NodeConfig, systemd: Systemd) -> WatchdogChanges:
    """Converge the drop-in and the softdog fallback with maculaos.watchdog; live, load softdog and
    re-execute systemd when they changed (offline, a sandbox or a disk seen from a pod: the next boot
    reads them). A bad section (the tolerant read left it out) raises WatchdogError before anything is
    written."""
    problem = config.problem("maculaos.watchdog")
    if problem is not None:
        raise WatchdogError(f"{config.source}: {problem}; the watchdog is left as it was")
    watchdog = config.maculaos.watchdog
    armed = watchdog is not None and watchdog.enabled
    hardware = hardware_watchdogs(host_root)
    softdog = armed and not hardware
    changed = _converge(host_root / DROP_IN, render_drop_in(watchdog) if armed and watchdog else None)
    softdog_changed = _converge(host_root / SOFTDOG_LOAD,
                                "# maculaos.watchdog: no hardware watchdog on this machine.\nsoftdog\n"
                                if softdog else None)
    if systemd.live and softdog and softdog_changed:
        _modprobe_softdog()
    if systemd.live and (changed or softdog_changed):
        systemd.daemon_reexec()
    return WatchdogChanges(changed=changed or softdog_changed, softdog=softdog,
                           summary=_summary(host_root, watchdog if armed else None, hardware,
                                            changed or softdog_changed))


def _summary(host_root: Path, watchdog: WatchdogConfig | None, hardware: dict[str, str], changed: bool) -> str:
    state = "updated" if changed else "unchanged"
    if watchdog is None:
        return f"watchdog off ({state})"
    return f"watchdog {watchdog.timeout_seconds} s on {_device_said(host_root, watchdog, hardware)} ({state})"


def _device_said(host_root: Path, watchdog: WatchdogConfig, hardware: dict[str, str]) -> str:
    """Which device systemd pets, for the summary; with two or more, the others and the key that chooses."""
    if watchdog.device:
        return chosen_device(host_root, watchdog.device)
    if not hardware:
        return "softdog (no hardware watchdog found)"
    if len(hardware) == 1:
        return next(iter(hardware.values()))
    others = ", ".join(f"/dev/{name} {identity}" for name, identity in hardware.items() if name != "watchdog0")
    return (f"{chosen_device(host_root, '/dev/watchdog0')}, one of {len(hardware)} "
            f"({others}: maculaos.watchdog.device chooses)")


def _modprobe_softdog() -> None:
    result = subprocess.run(["modprobe", "softdog"], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise WatchdogError(f"modprobe softdog: {result.stderr.strip() or result.returncode}")
