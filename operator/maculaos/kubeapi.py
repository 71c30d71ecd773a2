"""Small helpers over the generated Kubernetes client, for the operator and tools (the agent uses
maculaos.kuberest, which also holds the client-free helpers)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes import config as kube_config

from maculaos.kuberest import EVENT_NAMESPACE, event_body


class CountingApiClient(client.ApiClient):
    """An ApiClient that counts the HTTP requests it makes (all its API objects share the count), so
    benchmarks can report the API load of a process without reading the API server's metrics."""

    requests = 0

    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        CountingApiClient.requests += 1
        return super().call_api(*args, **kwargs)


def load_kube_config() -> None:
    """In-cluster credentials in a pod, else $KUBECONFIG / ~/.kube/config."""
    try:
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        kube_config.load_kube_config()


def post_event(api: client.ApiClient, obj: Mapping[str, Any], type_: str, reason: str, message: str,
               component: str, host: str | None = None) -> None:
    """A core/v1 Event about obj (cluster-scoped: in the default namespace)."""
    event = client.CoreV1Event.model_validate(event_body(obj, type_, reason, message, component, host))
    client.CoreV1Api(api).create_namespaced_event(EVENT_NAMESPACE, event)
