"""Locks a dead restic left behind, made by a real restic (for the host and the integration tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping

from maculaos.devenv.controlplane import default_bin_dir

RESTIC = str(default_bin_dir() / "restic")
#: Run restic as PID 1 of a PID namespace of its own: its lock records pid 1, which on this host is
#: alive and no restic, as a lock's pid is on a node that died mid-backup and booted again.
REUSED_PID = ("unshare", "--pid", "--fork", "--mount-proc")


def lock_count(env: Mapping[str, str]) -> int:
    out = subprocess.run([RESTIC, "--no-cache", "list", "locks", "--no-lock"], env={**os.environ, **env},
                         capture_output=True, text=True, check=True).stdout
    return len(out.split())


def hold_lock(env: Mapping[str, str], prefix: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """A real restic holding a shared lock: a backup reading stdin that never ends."""
    proc = subprocess.Popen([*prefix, RESTIC, "--no-cache", "backup", "--stdin", "--stdin-filename", "held", "-q"],
                            env={**os.environ, **env}, stdin=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 20
    while not lock_count(env):
        assert time.monotonic() < deadline, "the lock holder never took its lock"
        time.sleep(0.2)
    return proc


def leave_stale_lock(env: Mapping[str, str], prefix: tuple[str, ...] = ()) -> None:
    """A restic that dies holding its lock (SIGKILL: no goodbye), as on a node that lost power."""
    holder = hold_lock(env, prefix)
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait(10)
    assert lock_count(env) == 1
