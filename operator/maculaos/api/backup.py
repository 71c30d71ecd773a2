"""Backup and Restore: scheduled restic backups of host data, with retention, to local, peer or S3 targets.

Seed 4.13.2 (schedule, retention, include/exclude, mesh replication, S3, restore by date or latest).
Restore is its own kind, as in K8up and Velero: a restore is a one-off action with its own lifecycle and
history, not a setting of a schedule.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated

from pydantic import ConfigDict, Field

from maculaos.api.addresses import Endpoint
from maculaos.api.common import (
    DNS_SUBDOMAIN_PATTERN,
    EXCLUDE_PATTERN,
    LABEL_KEYS_RULE,
    ApiModel,
    CustomResource,
    Duration,
    HostPath,
    LabelValue,
    ObjectStatus,
    PrinterColumn,
    ResourceInfo,
    SecretKeyRef,
    SelectorSpec,
    age_column,
    outcome_column,
    parse_duration,
    ready_column,
    reason_column,
)

#: Annotation on a Backup asking for a run now; its value is a fresh token per request (e.g. a time).
RUN_NOW_ANNOTATION = "os.macula.io/run-now"
#: Annotation on a Node that serves a restic rest-server for mesh backups: the server's base URL.
BACKUP_SERVER_ANNOTATION = "os.macula.io/backup-server"

CRON_PATTERN = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|(\S+\s+){4}\S+)$"
RESTIC_DURATION_PATTERN = r"^([0-9]+[yMwdhm])+$"


#: What a Backup includes when it names nothing: the data partition's MaculaOS state and user data. The
#: node's git server keeps its repositories inside one of them (host/nodeconfig.py), so they are covered.
DEFAULT_INCLUDE = ("/var/lib/maculaos", "/var/lib/data")


class MissedRunPolicy(StrEnum):
    RUN_ONCE = "RunOnce"
    SKIP = "Skip"


class LocalTarget(ApiModel):
    """A restic repository in a directory on the node itself (a second disk, a USB drive)."""

    path: HostPath
    """Directory of the repository on the node."""


class RestTarget(ApiModel):
    """A restic rest-server repository at a fixed URL."""

    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2048)
    """rest-server URL, e.g. https://backup.lan:8000/shop-12."""
    credentials_secret_ref: SecretKeyRef | None = None
    """HTTP basic-auth credentials as user:password in this Secret key."""


class MeshTarget(ApiModel):
    """Copies on other MaculaOS nodes that serve a rest-server (seed 4.13.2 mesh backup)."""

    replication_factor: int = Field(default=2, ge=1, le=5)
    """How many other nodes hold a copy of each node's repository."""
    peer_selector: dict[str, LabelValue] = Field(
        default_factory=dict, max_length=16, json_schema_extra={"x-kubernetes-validations": [LABEL_KEYS_RULE]})
    """Labels a node must carry to hold copies; empty allows every other node."""
    credentials_secret_ref: SecretKeyRef | None = None
    """HTTP basic-auth credentials as user:password in this Secret key, for every peer's rest-server (a
    user of the peers' config.yaml maculaos.backup_server.htpasswd)."""


class S3Target(ApiModel):
    """An S3-compatible bucket."""

    endpoint: Endpoint
    """Host (and port) of the S3 endpoint, e.g. s3.amazonaws.com or minio.lan:9000."""
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", max_length=63)
    """Bucket name."""
    prefix: str = Field(default="fleet/${NODE_NAME}/", max_length=1024, pattern=r"^[^\s]*$")
    """Key prefix; ${NODE_NAME} is replaced by each node's name."""
    region: str = Field(default="", max_length=64)
    """Region, where the endpoint needs one."""
    insecure_http: bool = Field(default=False, alias="insecureHTTP")
    """Speak plain HTTP to the endpoint (a lab MinIO); never for the Internet."""
    access_key_id_secret_ref: SecretKeyRef
    """The access key id."""
    secret_access_key_secret_ref: SecretKeyRef
    """The secret access key."""


class BackupTarget(ApiModel):
    """Where the repository lives: exactly one of local, rest, mesh or s3."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "[has(self.local), has(self.rest), has(self.mesh), has(self.s3)].filter(x, x).size() == 1",
         "message": "set exactly one of local, rest, mesh or s3"},
    ]})

    local: LocalTarget | None = None
    """A directory on the node."""
    rest: RestTarget | None = None
    """A rest-server at a fixed URL."""
    mesh: MeshTarget | None = None
    """rest-servers on other MaculaOS nodes."""
    s3: S3Target | None = None
    """An S3-compatible bucket."""


class Retention(ApiModel):
    """Grandfather-father-son retention (restic forget). The newest successful snapshot is never removed."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self.keepLast + self.keepHourly + self.keepDaily + self.keepWeekly + self.keepMonthly"
                 " + self.keepYearly > 0 || has(self.keepWithin)",
         "message": "retention must keep something: set a keep* count above 0 or keepWithin"},
    ]})

    keep_last: int = Field(default=7, ge=0, le=10000)
    """Keep the newest N snapshots."""
    keep_hourly: int = Field(default=0, ge=0, le=10000)
    """Keep the last snapshot of each of the last N hours."""
    keep_daily: int = Field(default=0, ge=0, le=10000)
    """Keep the last snapshot of each of the last N days."""
    keep_weekly: int = Field(default=0, ge=0, le=10000)
    """Keep the last snapshot of each of the last N weeks."""
    keep_monthly: int = Field(default=0, ge=0, le=10000)
    """Keep the last snapshot of each of the last N months."""
    keep_yearly: int = Field(default=0, ge=0, le=10000)
    """Keep the last snapshot of each of the last N years."""
    keep_within: str | None = Field(default=None, pattern=RESTIC_DURATION_PATTERN, max_length=32)
    """Keep every snapshot newer than this, in restic's notation, e.g. 30d or 1y6m."""


class IntegrityCheck(ApiModel):
    """Periodic restic check of the repository."""

    schedule: str = Field(default="0 4 * * 0", pattern=CRON_PATTERN, max_length=128)
    """When to check (cron, in the Backup's timeZone)."""
    read_data_percent: int = Field(default=0, ge=0, le=100)
    """Also read back this share of the packs (0 checks structure only)."""


class RunPhase(StrEnum):
    """Where one node stands with a run (its status.nodes entry)."""

    WAITING = "Waiting"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class RunAdmission(ApiModel):
    node: str
    """The node let in."""
    time: str
    """When (RFC 3339)."""


class BackupRun(ApiModel):
    """The run the operator asks for; the agents of the listed nodes carry it out (status.run)."""

    id: str
    """Stable id: from the scheduled time (sched-...) or the on-demand token (ondemand-...)."""
    reason: str = ""
    """Scheduled, CatchUp (a missed time run on recovery) or OnDemand."""
    scheduled_time: str | None = None
    """The scheduled time this run stands for."""
    start_time: str | None = None
    """When the operator started the run."""
    nodes: list[str] = Field(default_factory=list)
    """Nodes allowed to run it now (at most maxConcurrentNodes of them busy at once)."""
    admitted: list[RunAdmission] = Field(default_factory=list)
    """When each node was let in: its runTimeout counts from then (plus its randomDelay). A list, not a
    map, so that a new run's merge patch replaces the last run's entries instead of merging with them."""
    timed_out: list[str] = Field(default_factory=list)
    """Nodes that did not report the run done within runTimeout: their slot went to others."""
    completion_time: str | None = None
    """When every selected node had reported the run done."""


class BackupStatus(ObjectStatus):
    target_type: str = ""
    """local, rest, mesh or s3."""
    last_successful_time: str | None = None
    """Oldest of the nodes' last successful backups (RFC 3339): the fleet is covered since then."""
    next_run_time: str | None = None
    """Next scheduled run (RFC 3339)."""
    missed_runs: int = 0
    """Scheduled runs that were missed while the operator was away."""
    last_scheduled_time: str | None = None
    """The last scheduled time handled (run or skipped): no scheduled time runs twice."""
    on_demand_token: str | None = None
    """The last run-now annotation value acted on."""
    run: BackupRun | None = None
    """The current (or last) run."""
    mesh_peers: dict[str, list[str]] = Field(default_factory=dict)
    """For mesh targets: the rest-server URLs each node backs up to."""


class BackupSpec(SelectorSpec):
    """Scheduled backups of host directories of the selected nodes."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "!has(self.runTimeout) || duration(self.runTimeout) >= duration('1m')",
         "message": "runTimeout must be at least 1m (a backup needs time to start and report)",
         "fieldPath": ".runTimeout"},
    ]})

    resource = ResourceInfo(
        kind="Backup", plural="backups", singular="backup", short_names=["mbk"],
        description="Scheduled restic backups of MaculaOS host data with retention, to local, peer or S3 targets.",
        columns=[
            PrinterColumn(name="Schedule", type="string", json_path=".spec.schedule"),
            PrinterColumn(name="Target", type="string", json_path=".status.targetType"),
            PrinterColumn(name="Nodes", type="integer", json_path=".status.matchedNodes"),
            PrinterColumn(name="Last Success", type="date", json_path=".status.lastSuccessfulTime"),
            PrinterColumn(name="Stale", type="string", json_path='.status.conditions[?(@.type=="Stale")].status'),
            ready_column(), outcome_column(), reason_column(), age_column(),
        ],
    )
    status_model = BackupStatus

    schedule: str = Field(default="0 2 * * *", pattern=CRON_PATTERN, max_length=128)
    """When to back up: a five-field cron expression or @daily-style shorthand."""
    time_zone: str = Field(default="UTC", max_length=64, pattern=r"^[A-Za-z0-9_+/-]+$")
    """IANA time zone the schedule is read in, e.g. Europe/Brussels."""
    random_delay: Duration = "0s"
    """Spread each node's start by a random delay up to this long, so a fleet does not hit one target at
    the same second."""
    suspend: bool = False
    """Stop scheduling runs (on-demand runs still work)."""
    missed_run_policy: MissedRunPolicy = MissedRunPolicy.RUN_ONCE
    """After the operator was down over a scheduled time: RunOnce catches up with one run, Skip waits for
    the next. Missed runs are reported either way."""
    max_concurrent_nodes: int = Field(default=5, ge=1, le=1000)
    """How many nodes back up at the same time."""
    run_timeout: Duration = "6h"
    """How long a node may take to report a run done (after its randomDelay) before the operator marks
    it timed out and gives its slot to the next node; at least 1m."""
    include: list[HostPath] = Field(
        default_factory=lambda: list(DEFAULT_INCLUDE), min_length=1, max_length=64)
    """Host paths to back up. A local target inside them is left out automatically; / is backed up on one
    filesystem (name other mounts here to include them) without /proc, /sys, /dev, /run and /tmp."""
    exclude: list[Annotated[str, Field(pattern=EXCLUDE_PATTERN, max_length=4096)]] = Field(
        default_factory=lambda: ["/var/lib/rancher/k3s/agent/containerd"], max_length=128)
    """Host paths (absolute) or restic patterns (relative, matched anywhere) to leave out; no ".." segments."""
    include_k3s_datastore: bool = Field(default=True, alias="includeK3sDatastore")
    """When the node runs a k3s server, also capture its datastore consistently (a snapshot, not live files)."""
    target: BackupTarget
    """Where the repository lives."""
    repository_password_secret_ref: SecretKeyRef
    """The restic repository password."""
    retention: Retention = Field(default_factory=Retention)
    """Which snapshots to keep."""
    check: IntegrityCheck | None = None
    """Periodic integrity checks of the repository; unset means none."""
    stale_after: Duration | None = None
    """Mark the Backup Stale when a node has no successful backup for this long; unset means twice the
    schedule's interval."""



class SnapshotSelector(ApiModel):
    """Which snapshot to restore: exactly one of id, latest or before."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "(has(self.id) ? 1 : 0) + (has(self.latest) && self.latest ? 1 : 0) + (has(self.before) ? 1 : 0) == 1",
         "message": "set exactly one of id, latest: true or before"},
    ]})

    id: str | None = Field(default=None, pattern=r"^[a-f0-9]{8,64}$", max_length=64)
    """A snapshot id (short or full)."""
    latest: bool | None = None
    """The newest snapshot."""
    before: str | None = Field(default=None, json_schema_extra={"format": "date-time"}, max_length=64)
    """The newest snapshot taken before this time (RFC 3339)."""


class RestoreStatus(ObjectStatus):
    phase: str = ""
    """Pending, Running, Succeeded or Failed."""
    snapshot_id: str = ""
    """The snapshot chosen (the same on every node for id; per node for latest and before)."""


class RestoreSpec(CustomResource):
    """A one-off restore of host data from a Backup's repository."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self == oldSelf", "message": "a Restore cannot be changed once created; create a new one"},
        {"rule": "has(self.nodeName) != (has(self.allNodes) && self.allNodes)",
         "message": "set nodeName, or allNodes: true (not both)", "fieldPath": ".nodeName"},
    ]})

    resource = ResourceInfo(
        kind="Restore", plural="restores", singular="restore", short_names=["mrs"],
        description="A one-off restore of MaculaOS host data from a Backup's restic repository.",
        columns=[
            PrinterColumn(name="Backup", type="string", json_path=".spec.backupName"),
            PrinterColumn(name="Node", type="string", json_path=".spec.nodeName"),
            PrinterColumn(name="Snapshot", type="string", json_path=".status.snapshotId"),
            PrinterColumn(name="Phase", type="string", json_path=".status.phase"),
            ready_column(), outcome_column(), reason_column(), age_column(),
        ],
    )
    status_model = RestoreStatus

    backup_name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    """The Backup whose repository to restore from."""
    node_name: str | None = Field(default=None, pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    """The node whose data to restore (on that same node)."""
    all_nodes: bool | None = None
    """Restore every node the Backup selects, each from its own snapshots."""
    snapshot: SnapshotSelector
    """Which snapshot."""
    paths: list[HostPath] = Field(default_factory=list, max_length=256)
    """Sub-paths or single files to restore; empty restores the whole snapshot."""
    target_path: HostPath | None = None
    """Restore under this directory instead of the original paths."""
    source_node_name: str | None = Field(default=None, pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    """Take the snapshots of another node (a replacement machine); defaults to the node itself."""


#: Directories of the running system, which a Restore never writes into: the image's own (/usr, /etc, /boot,
#: /bin, /sbin, /lib*), the kernel's (/proc, /sys, /dev) and the runtime's (/run and its old names).
SYSTEM_DIRECTORIES = ("/usr", "/etc", "/boot", "/efi", "/bin", "/sbin", "/lib", "/proc", "/sys", "/dev", "/run",
                      "/var/run", "/var/lock")


def _within(path: str, parent: str) -> bool:
    return parent == "/" or path == parent or path.startswith(parent.rstrip("/") + "/")


def system_directory(path: str) -> str | None:
    """The system directory path lies in (or "/" for the root itself), or None when it is not one."""
    if path == "/":
        return "/"
    first = "/" + path.lstrip("/").split("/", 1)[0]
    if first.startswith("/lib"):  # /lib, /lib32, /lib64, /libx32 and any other of the family
        return first
    return next((d for d in SYSTEM_DIRECTORIES if _within(path, d)), None)


def restore_refusals(spec: RestoreSpec, include: Sequence[str] | None) -> list[tuple[str, str]]:
    """(field, why) for every way this Restore would restore what its Backup never held or write over the
    running system. include is the Backup's (None when the Backup cannot be read: only the destinations
    are judged). Shared by the operator (the Invalid condition) and the agent (which refuses to act)."""
    refusals: list[tuple[str, str]] = []
    if include is not None:
        for i, path in enumerate(spec.paths):
            if not any(_within(path, inc) for inc in include):
                refusals.append((f"spec.paths[{i}]", (
                    f"{path} is not under any path Backup {spec.backup_name} includes ({', '.join(include)}), "
                    "so no snapshot holds it")))
    target = spec.target_path
    if target is not None:
        system = system_directory(target)
        if system == "/":
            refusals.append(("spec.targetPath", (
                "/ is the node's root: a restore there writes over the running system; name a directory of its "
                "own such as /var/lib/restored, or leave targetPath out to restore the paths to their places")))
        elif system is not None:
            refusals.append(("spec.targetPath", (
                f"{target} is inside {system}, a system directory: a restore never writes there; name a "
                "directory such as /var/lib/restored")))
        if system is not None:
            return refusals
    sources = [(f"spec.paths[{i}]", p) for i, p in enumerate(spec.paths)] or [
        ("spec.paths", p) for p in include or ()]
    for field, path in sources:
        destination = f"{target}{path}" if target is not None and path != "/" else target or path
        system = system_directory(destination)
        if system is None:
            continue
        what = (f"restoring {path} under targetPath {target} writes to {destination}" if target is not None
                else f"restoring {path} in place writes " + ("over the node's root" if system == "/" else
                                                             f"into {system}"))
        whole = " (an empty paths restores all that Backup includes)" if field == "spec.paths" else ""
        refusals.append((field, (
            f"{what}{whole}, the running system: a restore never lands there; restore under a targetPath "
            "such as /var/lib/restored and copy what is needed")))
    return refusals


def node_start_delay(node: str, run_id: str, random_delay: str) -> dt.timedelta:
    """A node's share of randomDelay for one run: the same on every call, so no state is needed."""
    span = parse_duration(random_delay).total_seconds()
    if span <= 0:
        return dt.timedelta(0)
    digest = int(hashlib.sha256(f"{node}/{run_id}".encode()).hexdigest()[:8], 16)
    return dt.timedelta(seconds=(digest / 0xFFFFFFFF) * span)
