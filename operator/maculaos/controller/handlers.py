"""The kopf handlers of the cluster-wide controller: judge every object, write its status, emit Events.

Level-triggered: every kind is judged on create, update, operator start and on a periodic resync, so a
Node that appears later, or a Secret created after the object, clears an Invalid condition by itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from maculaos.api import GROUP, KINDS, VERSION
from maculaos.api.backup import BackupSpec
from maculaos.api.common import CustomResource
from maculaos.api.healthcheck import HealthCheckSpec
from maculaos.api.meshrole import MeshRoleSpec
from maculaos.api.nodeupgrade import NodeUpgradeSpec
from maculaos.controller.conditions import verdict_conditions
from maculaos.controller.validation import Verdict, validate

#: Prefix of the annotations kopf keeps its handler progress in; the agents use their own, never this.
ANNOTATION_PREFIX = "controller.os.macula.io"


class _IndexedCluster:
    """A ClusterView over kopf's in-memory indexes, reading Secrets from the API on demand."""

    def __init__(self, nodes: kopf.Index[str, Any], meshroles: kopf.Index[str, Any],
                 backups: kopf.Index[str, Any]) -> None:
        self._nodes = {name: labels for name, store in nodes.items() for labels in store}
        self._meshroles = {name: spec for name, store in meshroles.items() for spec in store}
        self._backups = {name: spec for name, store in backups.items() for spec in store}

    def node_labels(self) -> Mapping[str, Mapping[str, str]]:
        return self._nodes

    def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        try:
            secret = client.CoreV1Api().read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return set((secret.data or {}).keys()) | set((secret.string_data or {}).keys())

    def backup_spec(self, name: str) -> Mapping[str, Any] | None:
        return self._backups.get(name)

    def meshroles(self) -> Mapping[str, Mapping[str, Any]]:
        return self._meshroles


def summary_fields(spec: CustomResource | None) -> dict[str, Any]:
    """Kind-specific summary columns that follow from the spec alone."""
    if isinstance(spec, MeshRoleSpec):
        return {"effectiveRoles": ",".join(["peer", *sorted(r.value for r in spec.roles)])}
    if isinstance(spec, NodeUpgradeSpec):
        target = spec.version or f"latest {spec.channel.value if spec.channel else ''}".strip()
        return {"targetVersion": target}
    if isinstance(spec, BackupSpec):
        target = next(t for t in ("local", "rest", "mesh", "s3") if getattr(spec.target, t) is not None)
        return {"targetType": target}
    if isinstance(spec, HealthCheckSpec):
        return {"checkCount": len(spec.checks)}
    return {}


def desired_status(verdict: Verdict, status: Mapping[str, Any], generation: int) -> dict[str, Any]:
    return {
        "observedGeneration": generation,
        "conditions": verdict_conditions(status.get("conditions", []), verdict, generation),
        "matchedNodes": len(verdict.matched_nodes),
        **summary_fields(verdict.spec),
    }


def _changed(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    return any(current.get(k) != v for k, v in wanted.items())


def _ready(status: Mapping[str, Any]) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), {})


async def reconcile(body: kopf.Body, spec: kopf.Spec, name: str, meta: kopf.Meta, status: kopf.Status,
                    patch: kopf.Patch, logger: logging.Logger, node_index: kopf.Index[str, Any],
                    meshrole_index: kopf.Index[str, Any], backup_index: kopf.Index[str, Any], **_: Any) -> None:
    """Judge one object and bring its status up to date; emit an Event when its verdict changes."""
    cluster = _IndexedCluster(node_index, meshrole_index, backup_index)
    verdict = await asyncio.to_thread(validate, body["kind"], name, dict(spec), cluster)
    wanted = desired_status(verdict, status, int(meta.get("generation", 0)))
    if not _changed(status, wanted):
        return
    patch.status.update(wanted)
    before, after = _ready(status), _ready(wanted)
    if (before.get("status"), before.get("message")) == (after.get("status"), after.get("message")):
        return
    if verdict.valid:
        logger.info(f"{body['kind']} {name} accepted: {after['message']}")
        kopf.info(body, reason="Accepted", message=after["message"])
    else:
        logger.warning(f"{body['kind']} {name} invalid: {after['message']}")
        kopf.warn(body, reason=after["reason"], message=after["message"])


def node_index(name: str, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, str]]:
    return {name: dict(labels)}


def meshrole_index(name: str, spec: kopf.Spec, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: dict(spec)}


def backup_index(name: str, spec: kopf.Spec, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: dict(spec)}


def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Exclusive access comes from leader election, so kopf's own peering is off; handler progress is
    kept in annotations under our prefix and never in status, which the node agents share."""
    settings.peering.standalone = True
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration")
    settings.posting.enabled = False  # handler logs stay logs; Events are posted explicitly


def build_registry(resync_seconds: float) -> kopf.OperatorRegistry:
    """Every handler of the controller, registered on a fresh registry (no import-time globals)."""
    registry = kopf.OperatorRegistry()
    kopf.on.startup(registry=registry)(configure)
    kopf.index("v1", "nodes", registry=registry)(node_index)
    kopf.index(GROUP, VERSION, "meshroles", registry=registry)(meshrole_index)
    kopf.index(GROUP, VERSION, "backups", registry=registry)(backup_index)
    for model in KINDS:
        plural = model.resource.plural
        for decorator in (kopf.on.resume, kopf.on.create, kopf.on.update):
            decorator(GROUP, VERSION, plural, registry=registry)(reconcile)
        kopf.timer(GROUP, VERSION, plural, interval=resync_seconds, initial_delay=resync_seconds,
                   registry=registry)(reconcile)
    return registry
