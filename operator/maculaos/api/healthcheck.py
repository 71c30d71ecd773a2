"""HealthCheck: process, http, tcp, disk and systemd checks on the selected nodes, with capped restarts
and disk clean-up. Seed 4.17.2 (service health checks) and 4.17.4 (auto-healing actions).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import ConfigDict, Field

from maculaos.api.addresses import Host
from maculaos.api.common import (
    DNS_LABEL_PATTERN,
    ApiModel,
    Duration,
    HostPath,
    ObjectStatus,
    Percent,
    PrinterColumn,
    ResourceInfo,
    SelectorSpec,
    age_column,
    outcome_column,
    ready_column,
    reason_column,
)

SYSTEMD_UNIT_PATTERN = r"^[A-Za-z0-9:_.@\\-]+\.(service|socket|timer|mount|target|path)$"


class CheckType(StrEnum):
    PROCESS = "process"
    HTTP = "http"
    TCP = "tcp"
    DISK = "disk"
    SYSTEMD = "systemd"


class CheckAction(StrEnum):
    ALERT = "alert"
    CLEANUP = "cleanup"


class ProcessProbe(ApiModel):
    """A process that must be running: by name or by pidfile."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "has(self.name) != has(self.pidFile)", "message": "set exactly one of name or pidFile"},
    ]})

    name: str | None = Field(default=None, min_length=1, max_length=15, pattern=r"^[^/\s]+$")
    """Process name as in /proc/<pid>/comm (at most 15 characters, a kernel limit), e.g. k3s-server."""
    pid_file: HostPath | None = None
    """File holding the process id."""


class HttpProbe(ApiModel):
    """An HTTP endpoint that must answer."""

    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2048)
    """URL to GET, e.g. http://127.0.0.1:8080/health."""
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] = Field(
        default_factory=lambda: [200], min_length=1, max_length=16)
    """Status codes that count as healthy."""
    body_contains: str | None = Field(default=None, max_length=1024)
    """Text the response body must contain."""
    insecure_skip_verify: bool = False
    """Accept any TLS certificate (self-signed development services)."""


class TcpProbe(ApiModel):
    """A TCP port that must accept connections."""

    host: Host = "127.0.0.1"
    """Host to connect to."""
    port: int = Field(ge=1, le=65535)
    """Port to connect to."""


class DiskProbe(ApiModel):
    """Usage of the filesystem holding a path."""

    path: HostPath = "/var/lib"
    """A path on the filesystem to watch."""
    threshold: Percent = "90%"
    """Usage at or above this fails the check."""


class SystemdProbe(ApiModel):
    """A systemd unit that must be active."""

    unit: str = Field(pattern=SYSTEMD_UNIT_PATTERN, max_length=256)
    """Unit name, e.g. k3s.service."""


class Cleanup(ApiModel):
    """What the cleanup action of a disk check does, each step reported (seed 4.17.4)."""

    journal_max_size: str = Field(default="100M", pattern=r"^[0-9]+[KMG]$", max_length=16)
    """Vacuum the systemd journal down to this size."""
    prune_images: bool = True
    """Remove container images no container uses (crictl rmi --prune)."""
    remove_logs_older_than: Duration | None = "168h"
    """Delete rotated logs in /var/log older than this; unset keeps them."""


class Check(ApiModel):
    """One health check. Exactly the probe named by type must be set."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "[has(self.process), has(self.http), has(self.tcp), has(self.disk), has(self.systemd)]"
                 ".filter(x, x).size() == 1",
         "message": "set exactly one probe (process, http, tcp, disk or systemd), the one named by type"},
        {"rule": "self.type == 'process' ? has(self.process) : self.type == 'http' ? has(self.http) :"
                 " self.type == 'tcp' ? has(self.tcp) : self.type == 'disk' ? has(self.disk) : has(self.systemd)",
         "message": "the probe set must match type: type http needs http, type disk needs disk, and so on",
         "fieldPath": ".type"},
        {"rule": "self.action != 'cleanup' || self.type == 'disk'",
         "message": "action cleanup only applies to disk checks", "fieldPath": ".action"},
        {"rule": "!self.restartOnFailure || self.type == 'systemd' || has(self.restartUnit)",
         "message": "restartOnFailure needs restartUnit (the systemd unit to restart) unless type is systemd",
         "fieldPath": ".restartUnit"},
        {"rule": "duration(self.timeout) < duration(self.interval)",
         "message": "timeout must be shorter than interval", "fieldPath": ".timeout"},
    ]})

    name: str = Field(pattern=DNS_LABEL_PATTERN, max_length=63)
    """Unique name of the check, e.g. k3s or mesh."""
    type: CheckType
    """process, http, tcp, disk or systemd."""
    interval: Duration = "30s"
    """How often the check runs."""
    timeout: Duration = "5s"
    """How long one run may take."""
    failure_threshold: int = Field(default=3, ge=1, le=100)
    """Consecutive failures before the check counts as failed and acts."""
    process: ProcessProbe | None = None
    """Probe for type process."""
    http: HttpProbe | None = None
    """Probe for type http."""
    tcp: TcpProbe | None = None
    """Probe for type tcp."""
    disk: DiskProbe | None = None
    """Probe for type disk."""
    systemd: SystemdProbe | None = None
    """Probe for type systemd."""
    action: CheckAction = CheckAction.ALERT
    """alert (condition, Event, metric) or cleanup (disk checks: free space, then alert if still full)."""
    cleanup: Cleanup = Field(default_factory=Cleanup)
    """What cleanup does."""
    restart_on_failure: bool = False
    """Restart restartUnit (or the checked unit) when the check fails."""
    restart_unit: str | None = Field(default=None, pattern=SYSTEMD_UNIT_PATTERN, max_length=256)
    """The systemd unit to restart."""
    max_restarts: int = Field(default=3, ge=0, le=100)
    """Most restarts within restartWindow; after that the check only alerts."""
    restart_window: Duration = "1h"
    """Window over which maxRestarts is counted."""
    cooldown: Duration = "5m"
    """Least time between two actions of this check."""


class HealthCheckStatus(ObjectStatus):
    check_count: int = 0
    """Checks defined."""
    healthy_nodes: int = 0
    """Nodes passing every check."""


class HealthCheckSpec(SelectorSpec):
    """Checks that run on every selected node."""

    resource = ResourceInfo(
        kind="HealthCheck", plural="healthchecks", singular="healthcheck", short_names=["mhc"],
        description="Process, HTTP, TCP, disk and systemd checks on MaculaOS nodes with capped restarts.",
        columns=[
            PrinterColumn(name="Checks", type="integer", json_path=".status.checkCount"),
            PrinterColumn(name="Nodes", type="integer", json_path=".status.matchedNodes"),
            PrinterColumn(name="Healthy", type="integer", json_path=".status.healthyNodes",
                          description="Nodes passing every check", priority=1),
            ready_column(), outcome_column(), reason_column(), age_column(),
        ],
    )
    status_model = HealthCheckStatus

    checks: list[Check] = Field(
        min_length=1, max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    """The checks."""
