"""systemd units of the host: enable or disable them, on a mounted root (`systemctl --root`, the node's
disk seen from a pod or a sandbox in tests) or on the running system (`systemctl --now`)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from maculaos.errors import MaculaosError

# Unit file states that count as enabled: the unit starts with its target (static: by another's Wants=).
ENABLED_STATES = ("enabled", "enabled-runtime", "static")



class SystemdError(MaculaosError):
    """systemctl refused; the message carries its own words."""


@dataclass(frozen=True)
class Systemd:
    """systemctl for one host: offline against host_root, or live when host_root is the running system."""

    host_root: Path
    live: bool = False
    systemctl: str = "systemctl"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """systemctl's own result; a missing systemctl is a failed run saying so, not a crash of the caller."""
        target = [] if self.live else [f"--root={self.host_root}"]
        try:
            return subprocess.run([self.systemctl, *target, *args], capture_output=True, text=True, timeout=60)
        except OSError as exc:
            return subprocess.CompletedProcess([self.systemctl, *args], 127, "", f"cannot run {self.systemctl}: {exc}")

    def is_enabled(self, unit: str) -> bool:
        return self._run("is-enabled", unit).stdout.strip() in ENABLED_STATES

    def unit_file_states(self, units: Iterable[str]) -> dict[str, str]:
        """The file state (enabled, disabled, static...) of each unit that exists, in one systemctl run:
        each run is a large program to start, seconds at boot on a slow or emulated CPU."""
        names = set(units)
        listed = self._run("list-unit-files", "--no-legend", "--full", *sorted(names)).stdout
        return {fields[0]: fields[1] for fields in map(str.split, listed.splitlines())
                if len(fields) >= 2 and fields[0] in names}

    def set_all_enabled(self, wanted: Mapping[str, bool], states: Mapping[str, str] | None = None
                        ) -> tuple[str, ...]:
        """Enable or disable several units, one systemctl run per verb; units that do not exist are left
        out. Live, they are started or stopped too, without waiting for them (a unit that fails to start
        is systemd's to restart and report, not a reason to leave the rest half-done), and without the
        daemon-reload an enable implies: it re-runs every generator and reloads every unit, seconds on a
        booting node, for [Install] links that matter only at the next boot. Returns the units that
        changed. `states`: unit_file_states() of these units, when the caller has them already."""
        states = self.unit_file_states(wanted) if states is None else states
        changes = {unit: on for unit, on in wanted.items()
                   if unit in states and (states[unit] in ENABLED_STATES) != on}
        for verb, on in (("enable", True), ("disable", False)):
            units = [unit for unit, want in changes.items() if want == on]
            if not units:
                continue
            result = self._run(verb, *(["--now", "--no-block", "--no-reload"] if self.live else []), *units)
            if result.returncode != 0:
                raise SystemdError(f"systemctl {verb} {' '.join(units)}: {result.stderr.strip()}")
        return tuple(changes)

    def start_limit_hit(self, unit: str) -> bool:
        """True when systemd itself gave up on the unit (its own Restart= and StartLimitBurst=)."""
        return self._run("show", "--property=Result", "--value", unit).stdout.strip() == "start-limit-hit"

    def restart(self, unit: str) -> None:
        """Restart a unit of the running system."""
        if not self.live:
            raise SystemdError(f"cannot restart {unit}: {self.host_root} is not a running system")
        result = self._run("restart", unit)
        if result.returncode != 0:
            raise SystemdError(f"systemctl restart {unit}: {result.stderr.strip()}")

    def daemon_reload(self) -> None:
        """Make the running system read unit files written since it last did (a no-op on a mounted root,
        where systemctl reads the files each time)."""
        if self.live:
            result = self._run("daemon-reload")
            if result.returncode != 0:
                raise SystemdError(f"systemctl daemon-reload: {result.stderr.strip()}")

    def daemon_reexec(self) -> None:
        """Re-execute PID 1 of the running system, so it reads system.conf (and its drop-ins) again."""
        if not self.live:
            raise SystemdError(f"cannot re-execute systemd: {self.host_root} is not a running system")
        result = self._run("daemon-reexec")
        if result.returncode != 0:
            raise SystemdError(f"systemctl daemon-reexec: {result.stderr.strip()}")
