"""Start, find and stop the background processes of the local environment (control plane, operator).

Processes run in their own session so a stop takes their children too, and are recorded in a JSON state
file so `maculaos dev down` in another shell can stop what `maculaos dev up` started.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    command: str
    log: str
    #: The kernel's start time of the pid (clock ticks since boot): it survives an exec (setpriv → lighttpd)
    #: and tells a reused pid apart. 0 in records written before it existed: then the command is compared.
    start_time: int = 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with {process.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def spawn(name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None) -> tuple[
        subprocess.Popen[bytes], ProcessRecord]:
    """Start argv in its own session with output to <log_dir>/<name>.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})})
    return proc, ProcessRecord(name=name, pid=proc.pid, command=argv[0], log=str(log_path),
                               start_time=_start_time(proc.pid) or 0)


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (which may hold spaces): state is [0], starttime [19]."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def is_running(record: ProcessRecord) -> bool:
    """True when the pid is alive and is still the process that was started (pids get reused)."""
    fields = _stat_fields(record.pid)
    if fields is None or fields[0] == "Z":
        return False
    if record.start_time:
        return int(fields[19]) == record.start_time
    try:
        cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return os.path.basename(record.command).encode() in cmdline


def stop(record: ProcessRecord, timeout: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL it after timeout; a no-op for a process already gone."""
    if not is_running(record):
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(record.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.waitpid(record.pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not is_running(record):
                return
            time.sleep(0.05)


def save_records(path: Path, records: list[ProcessRecord], extra: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"processes": [asdict(r) for r in records], **extra}, indent=2))
    tmp.replace(path)


def load_records(path: Path) -> list[ProcessRecord]:
    if not path.exists():
        return []
    return [ProcessRecord(**r) for r in json.loads(path.read_text())["processes"]]
