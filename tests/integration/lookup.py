"""A Reporter's Lookup that asks the API server, for Reporters the tests run without an agent (the agent
looks into its watch caches). Moved here from maculaos.agent.nodereport: only tests use it."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from maculaos.agent.nodereport import Lookup
from maculaos.kube.rest import ApiError, KubeClient, object_path, resource_path


def fetching_lookup(kube: KubeClient) -> Lookup:
    """A Lookup that asks the API server."""

    def lookup(plural: str, name: str) -> Mapping[str, Any] | None:
        try:
            return kube.get(resource_path("v1", "nodes", name) if plural == "nodes" else object_path(plural, name))
        except ApiError as exc:
            if exc.status == HTTPStatus.NOT_FOUND:
                return None
            raise
    return lookup
