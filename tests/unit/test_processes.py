"""devenv/processes: a recorded process is found and stopped even after it exec'd another program, and a
reused pid is never taken for it."""

import dataclasses
from pathlib import Path

from maculaos.devenv.processes import is_running, spawn, stop


def test_a_process_that_execd_another_program_is_still_stopped(tmp_path: Path) -> None:
    # sh execs sleep: the pid's command line no longer names sh (as setpriv → lighttpd, unshare → rauc).
    proc, record = spawn("execs", ["sh", "-c", "exec sleep 300"], tmp_path)
    try:
        assert record.start_time > 0
        assert is_running(record)
        stop(record, timeout=5)
        assert proc.wait(timeout=5) is not None
        assert not is_running(record)
    finally:
        proc.kill()


def test_a_reused_pid_is_not_the_recorded_process(tmp_path: Path) -> None:
    proc, record = spawn("sleeper", ["sleep", "300"], tmp_path)
    try:
        other = dataclasses.replace(record, start_time=record.start_time + 1)
        assert is_running(record) and not is_running(other)
        stop(other)  # not ours: left alone
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
