"""The one stand-in of the test suite: systemctl of a *running* system. These machines do not boot
systemd as PID 1, so `is-active`, `restart` and `show --property=Result` cannot be asked of a real one;
the VM tests (issue #6) do. Offline unit management uses the real `systemctl --root` everywhere (also
inside systemctl_over_root, which only records restarts)."""

from __future__ import annotations

from pathlib import Path

SCRIPT = """#!/bin/sh
# Stand-in for the running system's systemctl; state lives in {state}.
state={state}
cmd=$1; shift
case "$cmd" in
  is-active)
    s=$(cat "$state/$1.active" 2>/dev/null || echo inactive); echo "$s"; [ "$s" = active ] ;;
  restart)
    echo restart >> "$state/$1.restarts"
    if [ -e "$state/$1.restart-fails" ]; then echo "Job for $1 failed." >&2; exit 1; fi
    echo active > "$state/$1.active" ;;
  show)
    cat "$state/$3.result" 2>/dev/null || echo success ;;
  *) echo "fake systemctl: $cmd not supported" >&2; exit 1 ;;
esac
"""


def fake_systemctl(directory: Path) -> Path:
    """Write the stand-in; returns its path. Unit state: <dir>/state/<unit>.active|.result|.restarts."""
    state = directory / "state"
    state.mkdir(parents=True, exist_ok=True)
    script = directory / "systemctl"
    script.write_text(SCRIPT.format(state=state))
    script.chmod(0o755)
    return script


def restarts(systemctl: Path, unit: str) -> int:
    path = systemctl.parent / "state" / f"{unit}.restarts"
    return len(path.read_text().splitlines()) if path.exists() else 0


def set_unit(systemctl: Path, unit: str, active: str = "active", result: str = "success") -> None:
    state = systemctl.parent / "state"
    (state / f"{unit}.active").write_text(active + "\n")
    (state / f"{unit}.result").write_text(result + "\n")


OVER_ROOT = """#!/bin/sh
# Stand-in for the running system's systemctl of a host whose unit files are in {root}: unit-file commands
# go to the real `systemctl --root` (without --now: no service manager runs here); restarts are recorded.
state={state}
case "$1" in
  restart) echo restart >> "$state/$2.restarts" ;;
  *) args=""; for a in "$@"; do [ "$a" = --now ] || args="$args $a"; done
     exec systemctl --root={root} $args ;;
esac
"""


def systemctl_over_root(directory: Path, host_root: Path) -> Path:
    """A running system's systemctl for a sandbox host root: enabling is real (`systemctl --root`), a
    restart is recorded (count it with restarts())."""
    state = directory / "state"
    state.mkdir(parents=True, exist_ok=True)
    script = directory / "systemctl"
    script.write_text(OVER_ROOT.format(state=state, root=host_root))
    script.chmod(0o755)
    return script
