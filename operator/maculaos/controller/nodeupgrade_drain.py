"""One drain step on a cordoned node: evict what may go (the Eviction API, so the API server enforces
PodDisruptionBudgets), skip what stays, and say what is left. Called once per pass while the node is in
stage Draining; it never waits, so one stuck pod cannot hold the operator.

After drain.timeout the planner sets `forced` (drain.force): the remaining pods are then deleted.
Pods are read as plain JSON (no client models): cheaper, and all we need is a few fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from maculaos.api.nodeupgrade import DrainOptions
from maculaos.controller.nodeupgrade_rollout import DrainReport

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str


def pod_verdict(pod: Mapping[str, Any], options: DrainOptions, own_pod: PodRef | None) -> str:
    """'skip' (stays on the node), 'evict', or a reason it blocks the drain (not evicted unless forced)."""
    meta, spec = pod.get("metadata", {}), pod.get("spec", {})
    if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
        return "skip"
    if MIRROR_ANNOTATION in (meta.get("annotations") or {}):
        return "skip"  # static pod: the kubelet owns it
    if own_pod is not None and (meta.get("namespace"), meta.get("name")) == (own_pod.namespace, own_pod.name):
        return "skip"  # the operator itself: see "Single-node clusters" in docs/architecture.md
    if any(ref.get("kind") == "DaemonSet" for ref in meta.get("ownerReferences") or []):
        return "skip" if options.ignore_daemon_sets else "is a DaemonSet pod (drain.ignoreDaemonSets is false)"
    if not options.delete_empty_dir_data and any("emptyDir" in v for v in spec.get("volumes") or []):
        return "uses emptyDir (its data would be lost; set drain.deleteEmptyDirData: true to allow)"
    return "evict"


def pods_on(core: client.CoreV1Api, node: str) -> list[dict[str, Any]]:
    response: Any = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}",
                                                     _preload_content=False)
    return list(json.loads(response.data).get("items", []))


def drain_step(core: client.CoreV1Api, node: str, options: DrainOptions, forced: bool,
               own_pod: PodRef | None = None) -> DrainReport:
    """Evict (or, when forced, delete) the pods that must leave node; done when none is left."""
    left: list[str] = []
    for pod in pods_on(core, node):
        verdict = pod_verdict(pod, options, own_pod)
        if verdict == "skip":
            continue
        meta = pod["metadata"]
        ref = PodRef(str(meta["namespace"]), str(meta["name"]))
        if meta.get("deletionTimestamp") and not forced:
            left.append(f"{ref.namespace}/{ref.name} terminating")
        elif forced:
            left += _delete(core, ref, options)
        elif verdict != "evict":
            left.append(f"{ref.namespace}/{ref.name} {verdict}")
        else:
            left += _evict(core, ref, options)
    more = f" (+{len(left) - 5} more)" if len(left) > 5 else ""
    return DrainReport(done=not left, message="; ".join(left[:5]) + more)


def _delete_options(options: DrainOptions) -> client.V1DeleteOptions:
    return client.V1DeleteOptions(grace_period_seconds=options.grace_period_seconds)


def _evict(core: client.CoreV1Api, ref: PodRef, options: DrainOptions) -> list[str]:
    body = client.V1Eviction(metadata=client.V1ObjectMeta(name=ref.name, namespace=ref.namespace),
                             delete_options=_delete_options(options))
    try:
        core.create_namespaced_pod_eviction(ref.name, ref.namespace, body)
    except ApiException as exc:
        if exc.status == HTTPStatus.NOT_FOUND:
            return []
        if exc.status == HTTPStatus.TOO_MANY_REQUESTS:
            return [f"{ref.namespace}/{ref.name} blocked by a PodDisruptionBudget"]
        return [f"{ref.namespace}/{ref.name} eviction refused: HTTP {exc.status} {_reason(exc)}"]
    return [f"{ref.namespace}/{ref.name} evicted, terminating"]


def _delete(core: client.CoreV1Api, ref: PodRef, options: DrainOptions) -> list[str]:
    try:
        core.delete_namespaced_pod(ref.name, ref.namespace, body=_delete_options(options))
    except ApiException as exc:
        if exc.status != HTTPStatus.NOT_FOUND:
            return [f"{ref.namespace}/{ref.name} delete refused: HTTP {exc.status} {_reason(exc)}"]
        return []
    return [f"{ref.namespace}/{ref.name} deleted, terminating"]


def _reason(exc: ApiException) -> str:
    body: Any = exc.body
    return str(body)[:200] if body else str(exc.reason)
