"""Judge one object and write what follows: its status (merge patch on the status subresource) and, when
its verdict changes, an Event. The same path serves kopf's handlers and the periodic resync."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from maculaos.api import GROUP, VERSION, spec_model
from maculaos.api.backup import BackupSpec
from maculaos.api.common import CustomResource
from maculaos.api.healthcheck import HealthCheckSpec
from maculaos.api.meshrole import MeshRoleSpec
from maculaos.api.nodeupgrade import NodeUpgradeSpec
from maculaos.controller.conditions import merge_condition, verdict_conditions
from maculaos.controller.validation import ClusterView, Verdict, validate
from maculaos.kubeapi import MERGE_PATCH, post_event

log = logging.getLogger("maculaos.controller")

COMPONENT = "maculaos-controller"


@dataclass(frozen=True)
class EventNote:
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Outcome:
    """What to write for one object; None where nothing changed."""

    status: dict[str, Any] | None
    event: EventNote | None


def summary_fields(spec: CustomResource | None) -> dict[str, Any]:
    """Kind-specific summary columns that follow from the spec alone."""
    if isinstance(spec, MeshRoleSpec):
        return {"effectiveRoles": ",".join(["peer", *sorted(r.value for r in spec.roles)])}
    if isinstance(spec, NodeUpgradeSpec):
        return {"targetVersion": spec.version or f"latest {spec.channel.value if spec.channel else ''}".strip()}
    if isinstance(spec, BackupSpec):
        return {"targetType": next(t for t in ("local", "rest", "mesh", "s3") if getattr(spec.target, t))}
    if isinstance(spec, HealthCheckSpec):
        return {"checkCount": len(spec.checks)}
    return {}


#: Phases node agents report when they could not do what an object asks.
PROBLEM_PHASES = {"Failed", "Conflict", "Invalid", "Unhealthy"}


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


def judge(body: Mapping[str, Any], cluster: ClusterView) -> Outcome:
    """The status an object should have now, and the Event to tell if its verdict changed."""
    status = body.get("status") or {}
    generation = int(body["metadata"].get("generation", 0))
    verdict: Verdict = validate(body["kind"], body["metadata"]["name"], body.get("spec") or {}, cluster)
    conditions = verdict_conditions(status.get("conditions", []), verdict, generation)
    wanted = {
        "observedGeneration": generation,
        "conditions": merge_condition(conditions, degraded_condition(status, generation, verdict.matched_nodes)),
        "matchedNodes": len(verdict.matched_nodes),
        **node_report_fields(status, generation, verdict.matched_nodes),
        **summary_fields(verdict.spec),
    }
    if all(status.get(k) == v for k, v in wanted.items()):
        return Outcome(status=None, event=None)
    before, after = _ready(status), _ready(wanted)
    if (before.get("status"), before.get("message")) == (after.get("status"), after.get("message")):
        return Outcome(status=wanted, event=None)
    if verdict.valid:
        return Outcome(status=wanted, event=EventNote("Normal", "Accepted", after["message"]))
    return Outcome(status=wanted, event=EventNote("Warning", after["reason"], after["message"]))


def write(api: client.ApiClient, body: Mapping[str, Any], outcome: Outcome) -> None:
    """Apply an outcome: status first (the truth), then the Event (the story)."""
    meta = body["metadata"]
    plural = spec_model(body["kind"]).resource.plural
    if outcome.status is not None:
        client.CustomObjectsApi(api).patch_cluster_custom_object_status(
            GROUP, VERSION, plural, meta["name"], {"status": outcome.status}, _content_type=MERGE_PATCH)
    if outcome.event is not None:
        note = outcome.event
        level = logging.INFO if note.type == "Normal" else logging.WARNING
        log.log(level, f"{body['kind']} {meta['name']}: {note.reason}: {note.message}")
        post_event(api, body, note.type, note.reason, note.message, COMPONENT)
