"""One drain step on a cordoned node: evict what may go (the Eviction API, so the API server enforces
PodDisruptionBudgets), skip what stays, and say what is left. Called once per pass while the node is in
stage Draining; it never waits, so one stuck pod cannot hold the operator.

After drain.timeout the planner sets `forced` (drain.force): the remaining pods are then deleted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from maculaos.api.nodeupgrade import DrainOptions
from maculaos.controller.nodeupgrade_rollout import DrainReport
from maculaos.kube.rest import ApiError, KubeClient, resource_path

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


def pods_on(kube: KubeClient, node: str) -> list[dict[str, Any]]:
    return kube.items(resource_path("v1", "pods"), fieldSelector=f"spec.nodeName={node}")


def drain_step(kube: KubeClient, node: str, options: DrainOptions, forced: bool,
               own_pod: PodRef | None = None) -> DrainReport:
    """Evict (or, when forced, delete) the pods that must leave node; done when none is left."""
    left: list[str] = []
    for pod in pods_on(kube, node):
        verdict = pod_verdict(pod, options, own_pod)
        if verdict == "skip":
            continue
        meta = pod["metadata"]
        ref = PodRef(str(meta["namespace"]), str(meta["name"]))
        if meta.get("deletionTimestamp") and not forced:
            left.append(f"{ref.namespace}/{ref.name} terminating")
        elif forced:
            left += _delete(kube, ref, options)
        elif verdict != "evict":
            left.append(f"{ref.namespace}/{ref.name} {verdict}")
        else:
            left += _evict(kube, ref, options)
    more = f" (+{len(left) - 5} more)" if len(left) > 5 else ""
    return DrainReport(done=not left, message="; ".join(left[:5]) + more)


def _delete_options(options: DrainOptions) -> dict[str, Any]:
    """meta/v1 DeleteOptions: the grace period, when drain.gracePeriodSeconds sets one."""
    grace = options.grace_period_seconds
    return {} if grace is None else {"gracePeriodSeconds": grace}


def _evict(kube: KubeClient, ref: PodRef, options: DrainOptions) -> list[str]:
    body = {"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": ref.name, "namespace": ref.namespace},
            "deleteOptions": _delete_options(options)}
    try:
        kube.create(resource_path("v1", "pods", ref.name, namespace=ref.namespace, subresource="eviction"), body)
    except ApiError as exc:
        if exc.status == HTTPStatus.NOT_FOUND:
            return []
        if exc.status == HTTPStatus.TOO_MANY_REQUESTS:
            return [f"{ref.namespace}/{ref.name} blocked by a PodDisruptionBudget"]
        return [f"{ref.namespace}/{ref.name} eviction refused: HTTP {exc.status} {_reason(exc)}"]
    return [f"{ref.namespace}/{ref.name} evicted, terminating"]


def _delete(kube: KubeClient, ref: PodRef, options: DrainOptions) -> list[str]:
    try:
        kube.delete(resource_path("v1", "pods", ref.name, namespace=ref.namespace), _delete_options(options))
    except ApiError as exc:
        if exc.status != HTTPStatus.NOT_FOUND:
            return [f"{ref.namespace}/{ref.name} delete refused: HTTP {exc.status} {_reason(exc)}"]
        return []
    return [f"{ref.namespace}/{ref.name} deleted, terminating"]


def _reason(exc: ApiError) -> str:
    return (exc.message or exc.reason)[:200]
