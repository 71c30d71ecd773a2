"""The agent's Prometheus metrics and its /healthz, served together on one port."""

from __future__ import annotations

import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from maculaos import metrics_http

PASSES = Counter("maculaos_agent_converge_passes", "Converge passes of the agent", ["result"])
PASS_SECONDS = Histogram("maculaos_agent_converge_seconds", "Duration of a converge pass",
                         buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
LAST_PASS = Gauge("maculaos_agent_last_converge_timestamp_seconds", "When the last converge pass ended")
ROLE = Gauge("maculaos_mesh_role", "1 when the node plays the mesh role", ["role"])


CHECK_UP = Gauge("maculaos_healthcheck_up", "1 while the check passes on this node", ["healthcheck", "check"])
CHECK_RESTARTS = Gauge("maculaos_healthcheck_restarts", "Restarts within the check's restart window",
                       ["healthcheck", "check"])


BACKUP_OK = Gauge("maculaos_backup_last_run_succeeded", "1 when this node's last run of the Backup succeeded",
                  ["backup"])
BACKUP_SUCCESS = Gauge("maculaos_backup_last_success_timestamp_seconds", "When the last successful backup ended",
                       ["backup"])
BACKUP_SECONDS = Gauge("maculaos_backup_last_duration_seconds", "Duration of the last backup run", ["backup"])
BACKUP_BYTES = Gauge("maculaos_backup_last_bytes_new", "Bytes the last successful backup added", ["backup"])


def set_backup(backup: str, ok: bool, duration: float, bytes_new: int, ended: float) -> None:
    BACKUP_OK.labels(backup=backup).set(1 if ok else 0)
    BACKUP_SECONDS.labels(backup=backup).set(duration)
    if ok:
        BACKUP_SUCCESS.labels(backup=backup).set(ended)
        BACKUP_BYTES.labels(backup=backup).set(bytes_new)


def set_health(healthcheck: str, entry: dict[str, Any]) -> None:
    for check, result in (entry.get("checks") or {}).items():
        CHECK_UP.labels(healthcheck=healthcheck, check=check).set(1 if result["ok"] else 0)
        CHECK_RESTARTS.labels(healthcheck=healthcheck, check=check).set(result["restarts"])


def record_pass(ok: bool, seconds: float) -> None:
    PASSES.labels(result="ok" if ok else "failed").inc()
    PASS_SECONDS.observe(seconds)
    LAST_PASS.set(time.time())


def set_roles(labels: dict[str, str | None]) -> None:
    for key, value in labels.items():
        if key.startswith("macula.io/role-"):
            ROLE.labels(role=key.removeprefix("macula.io/role-")).set(1 if value == "true" else 0)


def serve(address: str, port: int, healthy: Callable[[], bool]) -> ThreadingHTTPServer:
    """Serve /metrics and /healthz (200 while healthy() holds, else 503) in a daemon thread."""
    return metrics_http.serve(address, port, {"/healthz": lambda: (True, "ok") if healthy() else (False, "stale")})
