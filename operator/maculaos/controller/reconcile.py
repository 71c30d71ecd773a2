"""Judge one object and write what follows: its status (merge patch on the status subresource) and, when
its verdict changes, an Event. The same path serves kopf's handlers and the periodic resync."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any

from maculaos.api import spec_model
from maculaos.api.backup import BackupSpec, RestoreSpec
from maculaos.api.common import CustomResource
from maculaos.api.healthcheck import HealthCheckSpec
from maculaos.api.meshrole import MeshRoleSpec
from maculaos.api.nodeupgrade import NodeUpgradeSpec
from maculaos.controller.backup import backup_outcome, restore_fields
from maculaos.controller.conditions import EventNote, merge_condition, verdict_conditions, warning_condition
from maculaos.controller.outcome import object_outcome
from maculaos.controller.risks import lockout_risks
from maculaos.controller.validation import ClusterView, Verdict, validate
from maculaos.kube.rest import ApiError, KubeClient, object_path, post_event

log = logging.getLogger("maculaos.controller")

COMPONENT = "maculaos-controller"


@dataclass(frozen=True)
class Outcome:
    """What to write for one object; None where nothing changed."""

    status: dict[str, Any] | None
    event: EventNote | None
    run_event: EventNote | None = None
    """A Backup run started or missed (besides any verdict change)."""
    expect_version: str | None = None
    """Write only if the object is still at this resourceVersion: set when starting a Backup run, so two
    passes working from different reads cannot both act."""
    risk_event: EventNote | None = None
    """The accepted spec carries a new lock-out risk (the Warning condition turned True or changed)."""


def summary_fields(spec: CustomResource | None) -> dict[str, Any]:
    """Kind-specific summary columns that follow from the spec alone."""
    if isinstance(spec, MeshRoleSpec):
        return {"effectiveRoles": ",".join(["peer", *sorted(r.value for r in spec.roles)])}
    if isinstance(spec, NodeUpgradeSpec):
        return {"targetVersion": spec.version or f"latest {spec.channel.value if spec.channel else ''}".strip()}
    if isinstance(spec, BackupSpec):
        return {"targetType": next((t for t in ("local", "rest", "mesh", "s3") if getattr(spec.target, t)), "")}
    if isinstance(spec, HealthCheckSpec):
        return {"checkCount": len(spec.checks)}
    return {}


#: Phases node agents report when they could not do what an object asks, of every kind: Failed (any kind),
#: Conflict and Invalid (MeshRole, HealthCheck, Backup), Unhealthy (HealthCheck), RolledBack (NodeUpgrade:
#: the node went back to its old slot). tests/unit/test_conditions_table.py holds each kind to it.
PROBLEM_PHASES = {"Failed", "Conflict", "Invalid", "Unhealthy", "RolledBack"}


def node_report_fields(status: Mapping[str, Any], generation: int, matched: list[str]) -> dict[str, Any]:
    """Counts from the nodes' own entries for the current generation (agents write them, we only read)."""
    entries = {n: e for n, e in (status.get("nodes") or {}).items()
               if n in matched and isinstance(e, dict) and e.get("observedGeneration") == generation}
    return {
        "appliedNodes": sum(e.get("phase") == "Applied" for e in entries.values()),
        "healthyNodes": sum(e.get("phase") == "Healthy" for e in entries.values()),
    }


def degraded_condition(status: Mapping[str, Any], generation: int, matched: list[str]) -> dict[str, Any]:
    troubled = sorted((n, e) for n, e in (status.get("nodes") or {}).items()
                      if n in matched and isinstance(e, dict) and e.get("phase") in PROBLEM_PHASES)
    if not troubled:
        return {"type": "Degraded", "status": "False", "reason": "NodesOK", "message": "",
                "observedGeneration": generation}
    message = "; ".join(f"{n}: {e.get('phase')}: {e.get('message', '')}" for n, e in troubled[:5])
    return {"type": "Degraded", "status": "True", "reason": str(troubled[0][1].get("phase")),
            "message": f"{len(troubled)} node(s) report problems: {message}", "observedGeneration": generation}


def _ready(status: Mapping[str, Any]) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), {})


def judge(body: Mapping[str, Any], cluster: ClusterView, now: dt.datetime | None = None) -> Outcome:
    """The status an object should have now, and the Event to tell if its verdict changed."""
    now = now or dt.datetime.now(dt.timezone.utc)
    status = body.get("status") or {}
    generation = int(body["metadata"].get("generation", 0))
    verdict: Verdict = validate(body["kind"], body["metadata"]["name"], body.get("spec") or {}, cluster)
    conditions = verdict_conditions(status.get("conditions", []), verdict, generation)
    risks = lockout_risks(body["metadata"]["name"], verdict.spec, cluster) if verdict.valid else []
    conditions = merge_condition(conditions, warning_condition(risks, generation))
    wanted = {
        "observedGeneration": generation,
        "conditions": merge_condition(conditions, degraded_condition(status, generation, verdict.matched_nodes)),
        "matchedNodes": len(verdict.matched_nodes),
        **node_report_fields(status, generation, verdict.matched_nodes),
        **summary_fields(verdict.spec),
    }
    run_event, expect_version = _kind_fields(body, verdict, cluster, now, wanted)
    if (outcome_text := object_outcome(body["kind"], wanted, status, verdict.matched_nodes)) is not None:
        wanted["outcome"] = outcome_text
    if all(status.get(k) == v for k, v in wanted.items()):
        return Outcome(status=None, event=None)
    before, after = _ready(status), _ready(wanted)
    outcome = Outcome(status=wanted, event=None, run_event=run_event, expect_version=expect_version,
                      risk_event=_risk_event(status, wanted))
    if (before.get("status"), before.get("message")) == (after.get("status"), after.get("message")):
        return outcome
    if verdict.valid:
        return replace(outcome, event=EventNote("Normal", "Accepted", after["message"]))
    return replace(outcome, event=EventNote("Warning", after["reason"], after["message"]))


def _risk_event(status: Mapping[str, Any], wanted: Mapping[str, Any]) -> EventNote | None:
    """A Warning Event when the Warning condition turns True or names another risk (once per change)."""
    def warning(s: Mapping[str, Any]) -> Mapping[str, Any]:
        return next((c for c in s.get("conditions", []) if c.get("type") == "Warning"), {})
    before, after = warning(status), warning(wanted)
    if after.get("status") != "True" or (before.get("status"), before.get("message")) == ("True", after["message"]):
        return None
    return EventNote("Warning", str(after["reason"]), str(after["message"]))


def _kind_fields(body: Mapping[str, Any], verdict: Verdict, cluster: ClusterView, now: dt.datetime,
                 wanted: dict[str, Any]) -> tuple[EventNote | None, str | None]:
    """Backup scheduling and Restore progress, added to wanted; returns the run Event and precondition."""
    status = body.get("status") or {}
    if isinstance(verdict.spec, BackupSpec) and verdict.valid:
        result = backup_outcome(body, verdict.spec, verdict.matched_nodes, cluster.backup_servers(),
                                cluster.node_labels(), now)
        wanted |= result.fields
        for condition in result.conditions:
            wanted["conditions"] = merge_condition(wanted["conditions"], condition)
        note = EventNote("Normal" if result.new_run else "Warning", "BackupRun" if result.new_run else "MissedRuns",
                         result.event) if result.event else None
        return note, str(body["metadata"].get("resourceVersion")) if result.new_run else None
    if isinstance(verdict.spec, RestoreSpec):
        wanted |= restore_fields(verdict.spec, status, cluster.backup_spec(verdict.spec.backup_name),
                                 cluster.node_labels())
    return None, None


def judge_and_write(kube: KubeClient, body: Mapping[str, Any], cluster: ClusterView) -> bool:
    """Judge one object and write its status only when the judgement changed it (no write, and no
    watch event for anyone, when it did not); returns whether it wrote."""
    outcome = judge(body, cluster)
    if outcome.status is None:
        return False
    write(kube, body, outcome)
    return True


def write(kube: KubeClient, body: Mapping[str, Any], outcome: Outcome) -> None:
    """Apply an outcome: status first (the truth), then the Event (the story)."""
    meta = body["metadata"]
    plural = spec_model(body["kind"]).resource.plural
    if outcome.status is not None:
        patch: dict[str, Any] = {"status": outcome.status}
        if outcome.expect_version:
            patch["metadata"] = {"resourceVersion": outcome.expect_version}
        try:
            kube.patch(object_path(plural, meta["name"], "status"), patch)
        except ApiError as exc:
            if exc.status != HTTPStatus.CONFLICT or not outcome.expect_version:
                raise
            log.info(f"{body['kind']} {meta['name']} changed meanwhile; its run is decided on the next pass")
            return
    for note in (outcome.event, outcome.run_event, outcome.risk_event):
        if note is None:
            continue
        level = logging.INFO if note.type == "Normal" else logging.WARNING
        log.log(level, f"{body['kind']} {meta['name']}: {note.reason}: {note.message}")
        post_event(kube, body, note.type, note.reason, note.message, COMPONENT)
