"""A typed API over the `rauc` command line: read a bundle (signature checked), install it into the
inactive slot through the node's RAUC service, read and change the slots' boot state.

Everything goes through the real `rauc` binary: `info` reads and verifies a bundle locally (keyring from
the system.conf), the other commands talk to `rauc service` over the system D-Bus, whose address can be
given (the simulated nodes each run a private bus).

RAUC sees the node's root as `/`; the agent may see it elsewhere (the DaemonSet mounts the host at
/host). Every path handed to `rauc` is therefore translated from the agent's view (under `root`) to the
node's, and the command is expected to run in the node's mount namespace (the chart's `host-rauc`:
`nsenter` into PID 1's). A path outside the node's root cannot be seen by the node's RAUC: refused."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maculaos.errors import MaculaosError

PROGRESS_LINE = re.compile(r"^\s*(\d{1,3})%\s+(.*)$")

#: progress(percent, what RAUC is doing now)
Progress = Callable[[int, str], None]


class RaucError(MaculaosError):
    """A `rauc` command failed; the message carries RAUC's own words."""


@dataclass(frozen=True)
class BundleInfo:
    compatible: str
    version: str


@dataclass(frozen=True)
class Slot:
    name: str
    """RAUC's slot name, e.g. rootfs.1."""
    bootname: str
    """The bootloader's name for it, e.g. B (what /proc/cmdline's rauc.slot= says)."""
    state: str
    """booted, active or inactive."""
    boot_status: str
    """good or bad, as the bootloader sees it."""
    version: str
    """Version of the bundle RAUC last installed into it ("" when RAUC never wrote it)."""
    installed: bool
    """RAUC installed a bundle into it and the copy completed."""


@dataclass(frozen=True)
class RaucStatus:
    compatible: str
    booted: str
    """Bootname of the running slot."""
    primary: str
    """Slot name the bootloader boots next."""
    slots: tuple[Slot, ...]

    def booted_slot(self) -> Slot:
        return next(s for s in self.slots if s.bootname == self.booted)

    def other_slot(self) -> Slot:
        """The inactive slot of the booted slot's class (A/B: the one an install writes)."""
        booted = self.booted_slot()
        klass = booted.name.split(".")[0]
        return next(s for s in self.slots if s.name.split(".")[0] == klass and s is not booted)

    def slot(self, name: str) -> Slot:
        return next(s for s in self.slots if s.name == name)


class Rauc:
    """One node's RAUC: the command, its system.conf (for `info`), the D-Bus its service is on, and where
    the agent sees the node's root (`root`: what RAUC calls `/`)."""

    def __init__(self, command: str = "rauc", conf: Path | None = None, bus_address: str = "",
                 timeout: float = 3600.0, root: Path = Path("/")) -> None:
        self.command = command
        self.conf = conf
        """The system.conf as the agent sees it (read here too: activate-installed)."""
        self.bus_address = bus_address
        self.timeout = timeout
        self.root = root

    def node_path(self, path: Path) -> str:
        """path (as the agent sees it) as the node's RAUC sees it."""
        return node_path(self.root, path)

    def _argv(self, *args: str) -> list[str]:
        return [*shlex.split(self.command), *args]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.bus_address:
            env["DBUS_SYSTEM_BUS_ADDRESS"] = self.bus_address
        return env

    def _run(self, *args: str, timeout: float = 60.0) -> str:
        argv = self._argv(*args)
        try:
            result = subprocess.run(argv, capture_output=True, text=True, env=self._env(), timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RaucError(f"`{' '.join(argv)}` did not run: {exc}") from exc
        if result.returncode != 0:
            raise RaucError(_rauc_message(result.stderr) or f"`{' '.join(argv)}` exited with {result.returncode}")
        return result.stdout

    def info(self, bundle: Path, verify: bool = True) -> BundleInfo:
        """The bundle's manifest; with verify, only after RAUC checked its signature against the keyring."""
        conf = [f"--conf={self.node_path(self.conf)}"] if self.conf else []
        args = [*conf, "info", "--output-format=json", *([] if verify else ["--no-verify"]), self.node_path(bundle)]
        data = _json(self._run(*args))
        return BundleInfo(compatible=str(data.get("compatible") or ""), version=str(data.get("version") or ""))

    def status(self, timeout: float = 60.0) -> RaucStatus:
        data = _json(self._run("status", "--detailed", "--output-format=json", timeout=timeout))
        slots = []
        for entry in data.get("slots") or []:
            for name, slot in entry.items():
                slot_status = slot.get("slot_status") or {}
                bundle = slot_status.get("bundle") or {}
                slots.append(Slot(name=name, bootname=str(slot.get("bootname") or ""),
                                  state=str(slot.get("state") or ""), boot_status=str(slot.get("boot_status") or ""),
                                  version=str(bundle.get("version") or ""),
                                  installed=slot_status.get("status") == "ok"))
        return RaucStatus(compatible=str(data.get("compatible") or ""), booted=str(data.get("booted") or ""),
                          primary=str(data.get("boot_primary") or ""),
                          slots=tuple(sorted(slots, key=lambda s: s.name)))

    def install(self, bundle: Path, progress: Progress | None = None) -> None:
        """`rauc install` into the inactive slot; RAUC checks signature and compatible before writing."""
        argv = self._argv("install", self.node_path(bundle))
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env=self._env())
        except OSError as exc:
            raise RaucError(f"`{' '.join(argv)}` did not run: {exc}") from exc
        lines: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            match = PROGRESS_LINE.match(line)
            if match and progress is not None:
                progress(min(int(match.group(1)), 100), match.group(2).strip())
        if proc.wait(timeout=self.timeout) != 0:
            raise RaucError(_rauc_message("\n".join(lines)) or f"`rauc install` exited with {proc.returncode}")

    def mark_good(self, slot: str = "booted") -> None:
        self._run("status", "mark-good", slot)

    def mark_bad(self, slot: str = "booted") -> None:
        self._run("status", "mark-bad", slot)

    def mark_active(self, slot: str) -> None:
        """Make slot the one the bootloader boots next (`booted`, `other` or a slot name)."""
        self._run("status", "mark-active", slot)


def node_path(root: Path, path: Path) -> str:
    """path, which the agent sees under root, as the node sees it (root is the node's `/`)."""
    absolute = Path(os.path.abspath(path))
    try:
        inside = absolute.relative_to(Path(os.path.abspath(root)))
    except ValueError:
        raise RaucError(f"{absolute} is outside the node's root {root}: the node's RAUC cannot see it "
                        f"(put bundles under {root})") from None
    return "/" + inside.as_posix() if inside.parts else "/"


def activates_installed(conf: Path) -> bool:
    """RAUC's `activate-installed` of a system.conf (default true): whether an install makes the new slot
    the next boot by itself."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(conf)
    except configparser.Error:
        return True
    return parser.get("system", "activate-installed", fallback="true").strip().lower() not in ("false", "0", "no")


def _json(text: str) -> dict[str, Any]:
    """RAUC prints its JSON on one line of stdout; log lines may go around it."""
    for line in text.splitlines():
        if line.startswith("{"):
            return dict(json.loads(line))
    raise RaucError(f"rauc printed no JSON: {text[:200]!r}")


def _rauc_message(output: str) -> str:
    """The lines that say what went wrong, without RAUC's timestamps and progress noise."""
    keep = []
    for line in output.splitlines():
        line = re.sub(r"^rauc-\w+(\s+\*\*)?:\s*[\d:.]*:?\s*", "", line.strip())
        line = line.removeprefix("LastError: ")
        if not line or PROGRESS_LINE.match(line) or line in ("installing", "idle"):
            continue
        keep.append(line)
    return "; ".join(keep[-3:])
