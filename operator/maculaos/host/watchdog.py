"""The watchdog (seed 4.17.1, issue #21): config.yaml's maculaos.watchdog rendered into a systemd
system.conf drop-in (RuntimeWatchdogSec, RebootWatchdogSec), and the kernel's softdog module loaded when
the machine has no watchdog device of its own. PID 1 reads system.conf only when it starts, so a changed
drop-in is followed by `systemctl daemon-reexec` on the running system, and only then."""

from __future__ import annotations

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
    return ("# Written by maculaos from config.yaml's maculaos.watchdog. Do not edit.\n[Manager]\n"
            f"RuntimeWatchdogSec={watchdog.timeout_seconds}s\nRebootWatchdogSec={watchdog.reboot_timeout_seconds}s\n")


def hardware_watchdogs(host_root: Path) -> list[str]:
    """The machine's own watchdog devices (by their driver's identity); softdog is not one of them."""
    devices = sorted((host_root / WATCHDOG_CLASS).glob("watchdog*"))
    identities = [(d / "identity").read_text().strip() if (d / "identity").is_file() else d.name for d in devices]
    return [i for i in identities if i != SOFTDOG_IDENTITY]


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
                           summary=_summary(watchdog if armed else None, hardware, changed or softdog_changed))


def _summary(watchdog: WatchdogConfig | None, hardware: list[str], changed: bool) -> str:
    state = "updated" if changed else "unchanged"
    if watchdog is None:
        return f"watchdog off ({state})"
    device = ", ".join(hardware) if hardware else "softdog (no hardware watchdog found)"
    return f"watchdog {watchdog.timeout_seconds} s on {device} ({state})"


def _modprobe_softdog() -> None:
    result = subprocess.run(["modprobe", "softdog"], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise WatchdogError(f"modprobe softdog: {result.stderr.strip() or result.returncode}")
