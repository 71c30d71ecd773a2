"""What the schema cannot judge: checks against the live cluster and against libraries (time zones, cron).

Pure functions over a ClusterView, so they are unit-tested without an API server; the operator builds
the view from its indexes and API reads. Every problem names the field at fault.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from croniter import CroniterError, croniter
from pydantic import ValidationError

from maculaos.api import BackupSpec, MeshRoleSpec, NodeUpgradeSpec, RestoreSpec, spec_model
from maculaos.api.backup import BACKUP_SERVER_ANNOTATION, restore_refusals
from maculaos.api.common import (
    BACKUP_SERVER_PATTERN,
    EXCLUDE_PATTERN,
    HOST_PATH_HINT,
    HOST_PATH_PATTERN,
    VERSION_LABEL,
    CustomResource,
    SecretKeyRef,
    SelectorSpec,
    show_value,
)
from maculaos.api.meshrole import disagreements
from maculaos.api.nodeupgrade import SEMVER_PATTERN
from maculaos.api.times import parse_rfc3339
from maculaos.controller.backup import restore_targets


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an object, with the field path a person should look at."""

    field: str
    message: str
    reason: str = "InvalidSpec"

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ClusterView(Protocol):
    """The slice of cluster state validation reads."""

    def node_labels(self) -> Mapping[str, Mapping[str, str]]: ...

    def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        """Keys of the Secret, or None when it does not exist or may not be read."""

    def backup_spec(self, name: str) -> Mapping[str, Any] | None:
        """Spec of the named Backup, or None when it does not exist."""

    def meshroles(self) -> Mapping[str, Mapping[str, Any]]:
        """Spec of every MeshRole by name."""

    def backup_servers(self) -> Mapping[str, str]:
        """Node name -> rest-server URL of the nodes that offer one (BACKUP_SERVER_ANNOTATION)."""


@dataclass
class Verdict:
    """The outcome of validating one object."""

    spec: CustomResource | None
    problems: list[Problem] = field(default_factory=list)
    matched_nodes: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems


def parse_spec(kind: str, raw: Mapping[str, Any]) -> tuple[CustomResource | None, list[Problem]]:
    """Parse a spec with the kind's model; schema errors become problems with `spec.a.b[0].c` paths."""
    try:
        return spec_model(kind).model_validate(dict(raw)), []
    except ValidationError as exc:
        return None, [Problem(_field_path(err["loc"]), _message(err)) for err in exc.errors()]


def _message(err: Mapping[str, Any]) -> str:
    """pydantic's message, except for host paths: what a canonical path is, not the regular expression; a
    model's own check speaks without pydantic's "Value error, " in front."""
    if err.get("type") == "string_pattern_mismatch" and (err.get("ctx") or {}).get("pattern") in (
            HOST_PATH_PATTERN, EXCLUDE_PATTERN):
        return f"{err.get('input')!r} is not {HOST_PATH_HINT}"
    return str(err["msg"]).removeprefix("Value error, ")


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = "spec"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def validate(kind: str, name: str, raw: Mapping[str, Any], cluster: ClusterView) -> Verdict:
    """Everything the operator checks about one object."""
    spec, problems = parse_spec(kind, raw)
    verdict = Verdict(spec=spec, problems=problems)
    if spec is None:
        return verdict
    if isinstance(spec, SelectorSpec):
        verdict.matched_nodes = matching_nodes(spec, cluster.node_labels())
        if not verdict.matched_nodes:
            verdict.problems.append(_no_matching_nodes(cluster))
    elif isinstance(spec, RestoreSpec):  # no selector of its own: the nodes it restores, whose entries count
        verdict.matched_nodes = restore_targets(spec, cluster.backup_spec(spec.backup_name), cluster.node_labels())
    checker = _CHECKERS.get(type(spec))
    if checker is not None:
        verdict.problems += checker(name, spec, verdict.matched_nodes, cluster)
    return verdict


def matching_nodes(spec: SelectorSpec, nodes: Mapping[str, Mapping[str, str]]) -> list[str]:
    return sorted(n for n, labels in nodes.items() if spec.node_selector.matches(dict(labels)))


def _no_matching_nodes(cluster: ClusterView) -> Problem:
    count = len(cluster.node_labels())
    return Problem("spec.nodeSelector", f"selects none of the cluster's {count} nodes; "
                   "check the labels with `kubectl get nodes --show-labels`", reason="NoMatchingNodes")


def _secret_problems(ref: SecretKeyRef | None, path: str, cluster: ClusterView) -> list[Problem]:
    if ref is None:
        return []
    keys = cluster.secret_keys(ref.namespace, ref.name)
    if keys is None:
        return [Problem(f"{path}.name", f"Secret {ref.namespace}/{ref.name} does not exist or the operator may not "
                                         f"read it (Helm value operator.secretNamespaces)", reason="SecretNotFound")]
    if ref.key not in keys:
        have = ", ".join(sorted(keys)) or "no keys"
        return [Problem(f"{path}.key", f"Secret {ref.namespace}/{ref.name} has no key {ref.key!r} (it has {have})",
                        reason="SecretKeyNotFound")]
    return []


def _time_zone_problems(tz: str, path: str) -> list[Problem]:
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return [Problem(path, f"unknown time zone {tz!r}; use an IANA name such as Europe/Brussels or UTC")]
    return []


def _cron_problems(expression: str, path: str, time_zone: str = "UTC") -> list[Problem]:
    """A cron expression croniter reads and that fires: '0 0 30 2 *' parses but names a day that never
    comes, and the schedule would raise on every pass (the next two times are what staleness needs)."""
    if not croniter.is_valid(expression):
        return [Problem(path, f"{expression!r} is not a valid cron expression (minute hour day month weekday, "
                              "e.g. '0 2 * * *')")]
    try:
        tz: dt.tzinfo = zoneinfo.ZoneInfo(time_zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        tz = dt.timezone.utc  # the time zone is judged on its own
    try:
        times = croniter(expression, dt.datetime.now(tz))
        times.get_next(dt.datetime)
        times.get_next(dt.datetime)
    except (CroniterError, ValueError, KeyError, IndexError, OverflowError, TypeError):
        return [Problem(path, f"{expression!r} never fires: no date matches it (such as 30 February); "
                              "use a day that every matching month has")]
    return []


def version_key(version: str) -> tuple[tuple[int, int, int], int, str]:
    """Sort key for SemVer strings: a pre-release sorts before its release."""
    core, _, pre = version.lstrip("v").split("+", 1)[0].partition("-")
    major, minor, patch = (int(x) for x in core.split("."))
    return (major, minor, patch), 0 if pre else 1, pre


def _check_meshrole(name: str, spec: CustomResource, nodes: list[str], cluster: ClusterView) -> list[Problem]:
    assert isinstance(spec, MeshRoleSpec)
    problems = _secret_problems(spec.certificate_secret_ref, "spec.certificateSecretRef", cluster)
    mine = set(nodes)
    for other_name, other_raw in sorted(cluster.meshroles().items()):
        if other_name == name:
            continue
        other, errors = parse_spec("MeshRole", other_raw)
        if other is None or errors:
            continue
        assert isinstance(other, MeshRoleSpec)
        shared = mine & set(matching_nodes(other, cluster.node_labels()))
        if not shared:
            continue
        for path, here, there in disagreements(spec, other):
            problems.append(Problem(path, (
                f"conflicts with MeshRole {other_name} on nodes {', '.join(sorted(shared)[:5])}: "
                f"{show_value(here)} here, {show_value(there)} there; MeshRoles selecting the same node must agree"),
                reason="Conflict"))
    return problems


def _check_nodeupgrade(name: str, spec: CustomResource, nodes: list[str], cluster: ClusterView) -> list[Problem]:
    assert isinstance(spec, NodeUpgradeSpec)
    problems: list[Problem] = []
    for i, window in enumerate(spec.maintenance_windows):
        problems += _time_zone_problems(window.time_zone, f"spec.maintenanceWindows[{i}].timeZone")
    if spec.version and not spec.allow_downgrade:
        labels = cluster.node_labels()
        newer = sorted(
            (n, labels[n][VERSION_LABEL]) for n in nodes
            if re.fullmatch(SEMVER_PATTERN, labels[n].get(VERSION_LABEL, ""))
            and version_key(labels[n][VERSION_LABEL]) > version_key(spec.version))
        if newer:
            shown = ", ".join(f"{n} runs {v}" for n, v in newer[:5])
            problems.append(Problem("spec.version", (
                f"{spec.version} is lower than what {len(newer)} selected node(s) run ({shown}); "
                "set allowDowngrade: true to downgrade on purpose"), reason="Downgrade"))
    return problems


def _check_backup(name: str, spec: CustomResource, nodes: list[str], cluster: ClusterView) -> list[Problem]:
    assert isinstance(spec, BackupSpec)
    problems = (_cron_problems(spec.schedule, "spec.schedule", spec.time_zone)
                + _time_zone_problems(spec.time_zone, "spec.timeZone"))
    if spec.check is not None:
        problems += _cron_problems(spec.check.schedule, "spec.check.schedule", spec.time_zone)
    problems += _secret_problems(spec.repository_password_secret_ref, "spec.repositoryPasswordSecretRef", cluster)
    target = spec.target
    if target.rest is not None:
        problems += _secret_problems(target.rest.credentials_secret_ref, "spec.target.rest.credentialsSecretRef",
                                     cluster)
    if target.s3 is not None:
        problems += _secret_problems(target.s3.access_key_id_secret_ref, "spec.target.s3.accessKeyIdSecretRef",
                                     cluster)
        problems += _secret_problems(target.s3.secret_access_key_secret_ref,
                                     "spec.target.s3.secretAccessKeySecretRef", cluster)
    if target.mesh is not None:
        problems += _secret_problems(target.mesh.credentials_secret_ref, "spec.target.mesh.credentialsSecretRef",
                                     cluster)
        labels = cluster.node_labels()
        servers = {n: u for n, u in cluster.backup_servers().items() if re.fullmatch(BACKUP_SERVER_PATTERN, u)}
        for node, url in sorted(cluster.backup_servers().items()):
            if node not in servers:
                problems.append(Problem(f"Node {node} annotation {BACKUP_SERVER_ANNOTATION}", (
                    f"{url!r} is not a rest-server URL such as http://10.0.0.5:8000; that node holds no copies"),
                    reason="BadBackupServer"))
        holders = [n for n, lab in labels.items() if n in servers
                   and all(lab.get(k) == v for k, v in target.mesh.peer_selector.items())]
        short = [n for n in nodes if len([h for h in holders if h != n]) < target.mesh.replication_factor]
        if short:
            problems.append(Problem("spec.target.mesh.replicationFactor", (
                f"needs {target.mesh.replication_factor} other nodes to hold copies, but only {len(holders)} node(s) "
                f"offer a rest-server (annotation {BACKUP_SERVER_ANNOTATION}) and match peerSelector, too few for "
                f"{', '.join(short[:5])}"), reason="NotEnoughPeers"))
    return problems


def _check_restore(name: str, spec: CustomResource, nodes: list[str], cluster: ClusterView) -> list[Problem]:
    assert isinstance(spec, RestoreSpec)
    backup_raw = cluster.backup_spec(spec.backup_name)
    if backup_raw is None:
        return [Problem("spec.backupName", f"Backup {spec.backup_name} does not exist", reason="BackupNotFound")]
    problems: list[Problem] = []
    backup, _ = parse_spec("Backup", backup_raw)
    if spec.node_name is not None:
        labels = cluster.node_labels()
        if spec.node_name not in labels:
            problems.append(Problem("spec.nodeName", f"Node {spec.node_name} does not exist", reason="NodeNotFound"))
        elif isinstance(backup, BackupSpec) and not backup.node_selector.matches(dict(labels[spec.node_name])):
            problems.append(Problem("spec.nodeName", (
                f"Node {spec.node_name} is not selected by Backup {spec.backup_name}, so it has no snapshots there")))
    include = backup.include if isinstance(backup, BackupSpec) else None
    problems += [Problem(f, why, reason="RestoreRefused") for f, why in restore_refusals(spec, include)]
    if spec.snapshot.before is not None:
        try:
            parse_rfc3339(spec.snapshot.before)
        except ValueError:
            problems.append(Problem("spec.snapshot.before",
                                    f"{spec.snapshot.before!r} is not an RFC 3339 time such as 2026-01-15T00:00:00Z"))
    return problems


_CHECKERS = {
    MeshRoleSpec: _check_meshrole,
    NodeUpgradeSpec: _check_nodeupgrade,
    BackupSpec: _check_backup,
    RestoreSpec: _check_restore,
}
