"""A ClusterView read from the API server: one snapshot of Nodes, MeshRoles and Backups, Secrets on demand."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from maculaos.api.backup import BACKUP_SERVER_ANNOTATION
from maculaos.kube.rest import ApiError, KubeClient, object_path, resource_path


class ApiCluster:
    """The cluster as it is when constructed; cheap enough to build once per reconcile or resync pass.

    Nodes are listed at once (every judgement needs them); MeshRoles and Backups only when first asked
    for, and then kept for the pass: a NodeUpgrade pass, run on every agent report, needs neither."""

    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube
        #: The Nodes as plain JSON, for callers that need more than labels (the rollout: Ready,
        #: unschedulable, annotations).
        self.node_objects: list[dict[str, Any]] = kube.items(resource_path("v1", "nodes"))
        self._nodes = {str(n["metadata"]["name"]): dict(n["metadata"].get("labels") or {})
                       for n in self.node_objects}
        self._servers = {str(n["metadata"]["name"]): str(n["metadata"]["annotations"][BACKUP_SERVER_ANNOTATION])
                         for n in self.node_objects
                         if BACKUP_SERVER_ANNOTATION in (n["metadata"].get("annotations") or {})}
        self._meshroles: dict[str, dict[str, Any]] | None = None
        self._backups: dict[str, dict[str, Any]] | None = None
        self._secrets: dict[tuple[str, str], set[str] | None] = {}

    def node_labels(self) -> Mapping[str, Mapping[str, str]]:
        return self._nodes

    def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        if (namespace, name) not in self._secrets:
            self._secrets[namespace, name] = self._read_secret_keys(namespace, name)
        return self._secrets[namespace, name]

    def _read_secret_keys(self, namespace: str, name: str) -> set[str] | None:
        try:
            secret = self._kube.get(resource_path("v1", "secrets", name, namespace=namespace))
        except ApiError as exc:
            # 403: the Helm chart grants Secrets only in chosen namespaces (operator.secretNamespaces); to
            # the operator such a Secret is as absent as a missing one, and the message says both.
            if exc.status in (HTTPStatus.FORBIDDEN, HTTPStatus.NOT_FOUND):
                return None
            raise
        return set((secret.get("data") or {}).keys())

    def backup_spec(self, name: str) -> Mapping[str, Any] | None:
        if self._backups is None:
            self._backups = _specs(self._kube, "backups")
        return self._backups.get(name)

    def meshroles(self) -> Mapping[str, Mapping[str, Any]]:
        if self._meshroles is None:
            self._meshroles = _specs(self._kube, "meshroles")
        return self._meshroles

    def backup_servers(self) -> Mapping[str, str]:
        return self._servers

    def know(self, plural: str, bodies: list[dict[str, Any]]) -> None:
        """A listing of MeshRoles or Backups the pass made anyway (the resync lists every kind), kept as
        this snapshot's unless it read them already: one request less than asking for them again."""
        if plural == "meshroles" and self._meshroles is None:
            self._meshroles = _spec_map(bodies)
        elif plural == "backups" and self._backups is None:
            self._backups = _spec_map(bodies)


def list_objects(kube: KubeClient, plural: str) -> list[dict[str, Any]]:
    """Every object of one of our kinds, as plain dicts."""
    return kube.items(object_path(plural))


def _specs(kube: KubeClient, plural: str) -> dict[str, dict[str, Any]]:
    return _spec_map(list_objects(kube, plural))


def _spec_map(bodies: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o.get("spec", {}) for o in bodies}
