"""Judge one object and write what follows: its status (merge patch on the status subresource) and, when
its verdict changes, an Event. The same path serves kopf's handlers and the periodic resync."""

from __future__ import annotations

import datetime as dt
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
from maculaos.controller.conditions import verdict_conditions
from maculaos.controller.validation import ClusterView, Verdict, validate

log = logging.getLogger("maculaos.controller")

#: Events about cluster-scoped objects live here, as the kubelet's Node events do.
EVENT_NAMESPACE = "default"
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


def _ready(status: Mapping[str, Any]) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), {})


def judge(body: Mapping[str, Any], cluster: ClusterView) -> Outcome:
    """The status an object should have now, and the Event to tell if its verdict changed."""
    status = body.get("status") or {}
    generation = int(body["metadata"].get("generation", 0))
    verdict: Verdict = validate(body["kind"], body["metadata"]["name"], body.get("spec") or {}, cluster)
    wanted = {
        "observedGeneration": generation,
        "conditions": verdict_conditions(status.get("conditions", []), verdict, generation),
        "matchedNodes": len(verdict.matched_nodes),
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
            GROUP, VERSION, plural, meta["name"], {"status": outcome.status})
    if outcome.event is not None:
        note = outcome.event
        level = logging.INFO if note.type == "Normal" else logging.WARNING
        log.log(level, f"{body['kind']} {meta['name']}: {note.reason}: {note.message}")
        post_event(api, body, note)


def post_event(api: client.ApiClient, body: Mapping[str, Any], note: EventNote) -> None:
    meta = body["metadata"]
    now = dt.datetime.now(dt.timezone.utc)
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=EVENT_NAMESPACE),
        involved_object=client.V1ObjectReference(
            api_version=body["apiVersion"], kind=body["kind"], name=meta["name"], uid=meta.get("uid"),
            resource_version=meta.get("resourceVersion")),
        type=note.type, reason=note.reason, message=note.message[:1024],
        source=client.V1EventSource(component=COMPONENT),
        first_timestamp=now, last_timestamp=now, count=1)
    client.CoreV1Api(api).create_namespaced_event(EVENT_NAMESPACE, event)
