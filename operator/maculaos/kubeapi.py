"""Small helpers over the Kubernetes client shared by the controller and the agent."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes import config as kube_config

#: Events about cluster-scoped objects live here, as the kubelet's Node events do.
EVENT_NAMESPACE = "default"
MERGE_PATCH = "application/merge-patch+json"


class CountingApiClient(client.ApiClient):
    """An ApiClient that counts the HTTP requests it makes (all its API objects share the count), so
    benchmarks can report the API load of a process without reading the API server's metrics."""

    requests = 0

    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        CountingApiClient.requests += 1
        return super().call_api(*args, **kwargs)


def now_rfc3339() -> str:
    """Now, as Kubernetes writes times (second precision, Z)."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def load_kube_config() -> None:
    """In-cluster credentials in a pod, else $KUBECONFIG / ~/.kube/config."""
    try:
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        kube_config.load_kube_config()


def post_event(api: client.ApiClient, obj: Mapping[str, Any], type_: str, reason: str, message: str,
               component: str, host: str | None = None) -> None:
    """A core/v1 Event about obj (cluster-scoped: in the default namespace)."""
    meta = obj["metadata"]
    now = dt.datetime.now(dt.timezone.utc)
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=EVENT_NAMESPACE),
        involved_object=client.V1ObjectReference(
            api_version=obj.get("apiVersion"), kind=obj.get("kind"), name=meta["name"], uid=meta.get("uid"),
            resource_version=meta.get("resourceVersion")),
        type=type_, reason=reason, message=message[:1024],
        source=client.V1EventSource(component=component, host=host),
        first_timestamp=now, last_timestamp=now, count=1)
    client.CoreV1Api(api).create_namespaced_event(EVENT_NAMESPACE, event)


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns old into new; empty when they are equal."""
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            inner = merge_patch(before, value)
            if inner:
                patch[key] = inner
        elif before != value or key not in old:
            patch[key] = copy.deepcopy(value)
    return patch


def apply_merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386 applied to a copy of target."""
    out = copy.deepcopy(dict(target))
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping):
            before = out.get(key)
            out[key] = apply_merge_patch(before if isinstance(before, Mapping) else {}, value)
        else:
            out[key] = copy.deepcopy(value)
    return out
