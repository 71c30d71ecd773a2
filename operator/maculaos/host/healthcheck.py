"""Health probes against the host (seed 4.17.2): process, http, tcp, disk, systemd. Each returns a
ProbeResult and never raises: a probe that cannot run is a failed probe with the reason as its output."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from maculaos.api.common import parse_percent
from maculaos.api.healthcheck import Check, CheckType, DiskProbe, HttpProbe, ProcessProbe, SystemdProbe, TcpProbe
from maculaos.host.paths import in_host_root

OUTPUT_LIMIT = 512


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    output: str
    duration_seconds: float


def probe_process(probe: ProcessProbe, host_root: Path, proc: Path = Path("/proc")) -> tuple[bool, str]:
    if probe.pid_file is not None:
        try:
            pid = int(in_host_root(host_root, probe.pid_file).read_text().strip())
        except (OSError, ValueError) as exc:
            return False, f"cannot read a pid from {probe.pid_file}: {exc}"
        alive = (proc / str(pid)).exists()
        return alive, f"pid {pid} from {probe.pid_file} is {'running' if alive else 'gone'}"
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == probe.name:
                    return True, f"{probe.name} running as pid {entry.name}"
            except OSError:
                continue
    return False, f"no process named {probe.name}"


def probe_http(probe: HttpProbe, timeout: float) -> tuple[bool, str]:
    context = ssl.create_default_context()
    if probe.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(probe.url, timeout=timeout, context=context) as answer:
            status, body = answer.status, answer.read(65536).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(65536).decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"GET {probe.url}: {reason}"
    if status not in probe.expect_status:
        return False, f"GET {probe.url}: status {status}, expected {probe.expect_status}: {body[:200]}"
    if probe.body_contains is not None and probe.body_contains not in body:
        return False, f"GET {probe.url}: status {status} but the body lacks {probe.body_contains!r}"
    return True, f"GET {probe.url}: status {status}"


def probe_tcp(probe: TcpProbe, timeout: float) -> tuple[bool, str]:
    try:
        with socket.create_connection((probe.host, probe.port), timeout=timeout):
            return True, f"{probe.host}:{probe.port} accepts connections"
    except OSError as exc:
        return False, f"{probe.host}:{probe.port}: {exc.strerror or exc}"


def disk_used_percent(path: Path) -> float:
    """How full the filesystem holding path is, as the disk check counts: all but the space an ordinary
    user may still write (so root's reserve counts as used, and the figure may be above df's Use%)."""
    usage = shutil.disk_usage(path)
    return 100.0 * (usage.total - usage.free) / usage.total if usage.total else 100.0


def probe_disk(probe: DiskProbe, host_root: Path) -> tuple[bool, str]:
    try:
        used = disk_used_percent(in_host_root(host_root, probe.path))
    except (OSError, ValueError) as exc:
        return False, f"cannot stat {probe.path}: {getattr(exc, 'strerror', None) or exc}"
    limit = parse_percent(probe.threshold)
    return used < limit, f"{probe.path} is {used:.1f}% full (threshold {probe.threshold})"


def probe_systemd(probe: SystemdProbe, systemctl: str, timeout: float) -> tuple[bool, str]:
    try:
        result = subprocess.run([systemctl, "is-active", probe.unit], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"systemctl is-active {probe.unit}: {exc}"
    state = result.stdout.strip() or result.stderr.strip()
    return result.returncode == 0, f"{probe.unit} is {state}"


def run_probe(check: Check, host_root: Path, timeout: float, systemctl: str = "systemctl") -> ProbeResult:
    """Run one check's probe once."""
    started = time.monotonic()
    match check.type:
        case CheckType.PROCESS if check.process:
            ok, output = probe_process(check.process, host_root)
        case CheckType.HTTP if check.http:
            ok, output = probe_http(check.http, timeout)
        case CheckType.TCP if check.tcp:
            ok, output = probe_tcp(check.tcp, timeout)
        case CheckType.DISK if check.disk:
            ok, output = probe_disk(check.disk, host_root)
        case CheckType.SYSTEMD if check.systemd:
            ok, output = probe_systemd(check.systemd, systemctl, timeout)
        case _:
            ok, output = False, f"check {check.name} has no {check.type.value} probe"
    return ProbeResult(ok=ok, output=output[:OUTPUT_LIMIT], duration_seconds=time.monotonic() - started)
