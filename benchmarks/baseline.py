"""Before/after in one run: an operator from another git ref beside this checkout's, on the same control
plane and machine load, so a figure comes with its baseline. Shared by the operator benchmarks.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from maculaos.devenv.demo import start_operator
from maculaos.devenv.processes import ProcessRecord, spawn

REPO = Path(__file__).resolve().parents[1]


def export_operator(ref: str, into: Path) -> Path:
    """The operator package of a git ref, to run the baseline from (on PYTHONPATH, before this checkout)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "operator"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "operator"


def run_operator(kubeconfig: Path, log_dir: Path, name: str, resync: float, python_path: Path | None,
                 extra_args: tuple[str, ...] = ()) -> ProcessRecord:
    """`maculaos operator run`: this checkout's, or (python_path) the one exported there."""
    if python_path is None:
        return start_operator(kubeconfig, log_dir, resync_seconds=resync, name=name, extra_args=extra_args)
    _, record = spawn(name, [sys.executable, "-m", "maculaos", "operator", "run", f"--resync-seconds={resync}",
                             *extra_args], log_dir,
                      env={"KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(python_path)})
    return record


def wait_leading(record: ProcessRecord, timeout: float = 60) -> float:
    """Until the operator logs that it leads (the previous one's Lease may still run); returns the wait."""
    started = time.monotonic()
    while "is the leader: starting the controller" not in Path(record.log).read_text():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{record.name} did not lead within {timeout} s; see {record.log}")
        time.sleep(0.2)
    return time.monotonic() - started


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's resident set (VmRSS) or its peak (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field}")
