"""The operator's share of Backup and Restore status: the run to do now (backup_schedule.py), which peers
hold each node's mesh copies, and the Stale and Failed conditions read from the nodes' own reports. Pure:
everything comes in as arguments, so it is unit-tested with a fixed clock."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from maculaos.api.backup import BackupSpec, RestoreSpec
from maculaos.api.common import BACKUP_SERVER_PATTERN, NodeSelector, parse_duration
from maculaos.api.times import parse_rfc3339, reported_time, rfc3339
from maculaos.controller.backup_schedule import admit_nodes, decide, node_done, schedule_interval
from maculaos.controller.outcome import restore_outcome


@dataclass(frozen=True)
class BackupOutcome:
    fields: dict[str, Any]
    conditions: list[dict[str, Any]]
    """Stale and Failed, to merge into the object's conditions."""
    new_run: bool
    event: str | None


def assign_mesh_peers(nodes: Sequence[str], servers: Mapping[str, str], peer_selector: Mapping[str, str],
                      labels: Mapping[str, Mapping[str, str]], replication: int) -> dict[str, list[str]]:
    """Each node's rest-server URLs: `replication` other nodes that serve one, chosen by rendezvous hashing
    so that a node joining or leaving moves as few copies as possible."""
    eligible = sorted(n for n, url in servers.items() if re.fullmatch(BACKUP_SERVER_PATTERN, url)
                      and all(labels.get(n, {}).get(k) == v for k, v in peer_selector.items()))
    peers: dict[str, list[str]] = {}
    for node in nodes:
        ranked = sorted((p for p in eligible if p != node),
                        key=lambda p: hashlib.sha256(f"{node}\0{p}".encode()).hexdigest())
        peers[node] = [servers[p] for p in ranked[:replication]]
    return peers


def _entries(status: Mapping[str, Any], matched: Sequence[str]) -> dict[str, Mapping[str, Any]]:
    nodes = status.get("nodes") or {}
    return {n: nodes[n] for n in matched if isinstance(nodes.get(n), dict)}


def stale_condition(spec: BackupSpec, entries: Mapping[str, Mapping[str, Any]], matched: Sequence[str],
                    created: dt.datetime, now: dt.datetime, generation: int) -> dict[str, Any]:
    limit = (parse_duration(spec.stale_after) if spec.stale_after
             else 2 * schedule_interval(spec.schedule, spec.time_zone, now))
    stale = []
    for node in matched:
        since = reported_time((entries.get(node) or {}).get("lastSuccessTime")) or created
        if now - since > limit:
            stale.append(node)
    if spec.suspend or not stale:
        return {"type": "Stale", "status": "False", "reason": "Suspended" if spec.suspend and stale else "UpToDate",
                "message": "" if not stale else "suspended", "observedGeneration": generation}
    return {"type": "Stale", "status": "True", "reason": "NoRecentBackup", "observedGeneration": generation,
            "message": f"{len(stale)} node(s) without a successful backup for more than "
                       f"{_human(limit)}: {', '.join(stale[:10])}"}


def failed_condition(entries: Mapping[str, Mapping[str, Any]], generation: int,
                     timed_out: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Failed from the nodes' reports, and from nodes that never reported a run (timed_out: node ->
    message); a node's own report of the run wins over the timeout."""
    failed = sorted((n, e) for n, e in entries.items() if e.get("phase") == "Failed" and n not in (timed_out or {}))
    failed += sorted((n, {"failure": "RunTimedOut", "message": m}) for n, m in (timed_out or {}).items())
    if not failed:
        return {"type": "Failed", "status": "False", "reason": "NoFailures", "message": "",
                "observedGeneration": generation}
    return {"type": "Failed", "status": "True", "reason": str(failed[0][1].get("failure") or "BackupFailed"),
            "observedGeneration": generation,
            "message": "; ".join(f"{n}: {e.get('message', '')}" for n, e in failed[:5])}


def _human(delta: dt.timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.0f}h" if hours >= 1 else f"{delta.total_seconds() / 60:.0f}m"


def backup_outcome(body: Mapping[str, Any], spec: BackupSpec, matched: Sequence[str],
                   servers: Mapping[str, str], labels: Mapping[str, Mapping[str, str]],
                   now: dt.datetime) -> BackupOutcome:
    """Operator-owned Backup status fields and conditions as they should be now."""
    status = body.get("status") or {}
    meta = body["metadata"]
    generation = int(meta.get("generation", 0))
    decision = decide(spec, status, meta.get("annotations") or {}, matched, now)
    fields = dict(decision.fields)
    entries = _entries(status, matched)
    if "run" in fields:
        fields["run"] = admit_nodes(fields["run"], matched, entries, spec.max_concurrent_nodes, now,
                                    parse_duration(spec.run_timeout), spec.random_delay)
    if spec.target.mesh is not None:
        peers = assign_mesh_peers(matched, servers, spec.target.mesh.peer_selector, labels,
                                  spec.target.mesh.replication_factor)
        # a merge patch keeps keys it does not name: a node no longer selected is removed with null
        fields["meshPeers"] = {n: None for n in status.get("meshPeers") or {} if n not in peers} | peers
    successes = [reported_time(e.get("lastSuccessTime")) for e in entries.values()]
    every_node_succeeded = bool(matched) and len(successes) == len(matched) and all(successes)
    fields["lastSuccessfulTime"] = rfc3339(min(t for t in successes if t)) if every_node_succeeded else None
    created = parse_rfc3339(meta.get("creationTimestamp")) or now
    run = fields.get("run") or {}
    late = {n: f"did not report run {run.get('id')} done within runTimeout {spec.run_timeout}; its slot went "
               "to the next node" for n in run.get("timedOut") or []
            if n in matched and not node_done(entries.get(n), str(run.get("id")))}
    conditions = [stale_condition(spec, entries, matched, created, now, generation),
                  failed_condition(entries, generation, late)]
    event = decision.event
    if decision.new_run and event is None:
        run = fields["run"]
        event = f"run {run['id']} ({run['reason']}) for {len(matched)} node(s)"
    return BackupOutcome(fields, conditions, decision.new_run, event)


def restore_targets(spec: RestoreSpec, backup: Mapping[str, Any] | None,
                    labels: Mapping[str, Mapping[str, str]]) -> list[str]:
    """The nodes a Restore acts on: its nodeName, or every node its Backup selects (allNodes)."""
    if spec.node_name:
        return [spec.node_name]
    try:
        selector = NodeSelector.model_validate((backup or {}).get("nodeSelector") or {})
    except ValidationError:
        return []
    return sorted(n for n, lab in labels.items() if selector.matches(dict(lab)))


def restore_fields(spec: RestoreSpec, status: Mapping[str, Any], backup: Mapping[str, Any] | None,
                   labels: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """Phase and snapshot of a Restore, from the reports of the nodes it targets."""
    targets = restore_targets(spec, backup, labels)
    entries = _entries(status, targets)
    phases = [str(entries.get(n, {}).get("phase", "")) for n in targets]
    if any(p == "Failed" for p in phases):
        phase = "Failed"
    elif targets and all(p == "Succeeded" for p in phases):
        phase = "Succeeded"
    elif any(p in ("Running", "Succeeded") for p in phases):
        phase = "Running"
    else:
        phase = "Pending"
    snapshots = sorted({str(e.get("snapshotId")) for e in entries.values() if e.get("snapshotId")})
    return {"phase": phase, "snapshotId": ",".join(s[:8] for s in snapshots),
            "outcome": restore_outcome(targets, entries, one_node=bool(spec.node_name))}
