"""A ClusterView read from the API server: one snapshot of Nodes, MeshRoles and Backups, Secrets on demand."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from maculaos.api import GROUP, VERSION


class ApiCluster:
    """The cluster as it is when constructed; cheap enough to build once per reconcile or resync pass."""

    def __init__(self, api: client.ApiClient) -> None:
        self._core = client.CoreV1Api(api)
        custom = client.CustomObjectsApi(api)
        self._nodes = {str(n.metadata.name): dict(n.metadata.labels or {})
                       for n in self._core.list_node().items if n.metadata is not None}
        self._meshroles = _specs(custom, "meshroles")
        self._backups = _specs(custom, "backups")
        self._secrets: dict[tuple[str, str], set[str] | None] = {}

    def node_labels(self) -> Mapping[str, Mapping[str, str]]:
        return self._nodes

    def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        if (namespace, name) not in self._secrets:
            self._secrets[namespace, name] = self._read_secret_keys(namespace, name)
        return self._secrets[namespace, name]

    def _read_secret_keys(self, namespace: str, name: str) -> set[str] | None:
        try:
            secret = self._core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            # 403: the Helm chart grants Secrets only in chosen namespaces (operator.secretNamespaces); to
            # the operator such a Secret is as absent as a missing one, and the message says both.
            if exc.status in (403, 404):
                return None
            raise
        return set((secret.data or {}).keys())

    def backup_spec(self, name: str) -> Mapping[str, Any] | None:
        return self._backups.get(name)

    def meshroles(self) -> Mapping[str, Mapping[str, Any]]:
        return self._meshroles


def list_objects(custom: client.CustomObjectsApi, plural: str) -> list[dict[str, Any]]:
    """Every object of one of our kinds, as plain dicts."""
    listing = cast(dict[str, Any], custom.list_cluster_custom_object(GROUP, VERSION, plural))
    return list(listing.get("items", []))


def _specs(custom: client.CustomObjectsApi, plural: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o.get("spec", {}) for o in list_objects(custom, plural)}
