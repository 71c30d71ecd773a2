"""Everything the agent writes to the API: only its own node's entries. status.nodes.<node> of each
object (JSON merge patch touches no other key), its own Node's labels and conditions, and Events.
What was written last is remembered, so an unchanged report costs nothing and a failed one is retried."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client

from maculaos.api import GROUP, VERSION
from maculaos.kubeapi import MERGE_PATCH, now_rfc3339, post_event

log = logging.getLogger("maculaos.agent")


class Reporter:
    def __init__(self, api: client.ApiClient, node: str) -> None:
        self.node = node
        self._api = api
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._written: dict[tuple[str, str], dict[str, Any] | None] = {}
        self._written_at: dict[tuple[str, str], float] = {}
        self._labels: dict[str, str | None] = {}
        self._conditions: dict[str, tuple[str, str, str]] = {}
        self._last_ok = True

    def node_entry(self, plural: str, name: str, entry: dict[str, Any] | None,
                   significant: Callable[[dict[str, Any]], dict[str, Any]] = dict,
                   refresh_seconds: float | None = None) -> bool:
        """Set (or with None remove) status.nodes.<this node> of one object. False when the API refused.

        Written when significant(entry) changed, and, with refresh_seconds, that often to refresh the rest
        (probe outputs, run times) without a write on every probe."""
        key = (plural, name)
        comparable = None if entry is None else significant(entry)
        age = time.monotonic() - self._written_at.get(key, float("-inf"))
        stale = refresh_seconds is not None and entry is not None and age >= refresh_seconds
        if key in self._written and self._written[key] == comparable and not stale:
            return True
        body = {"status": {"nodes": {self.node: None if entry is None else {**entry, "lastUpdateTime": now_rfc3339()}}}}
        try:
            self._custom.patch_cluster_custom_object_status(GROUP, VERSION, plural, name, body,
                                                            _content_type=MERGE_PATCH)
        except client.ApiException as exc:
            if exc.status == 404:  # the object is gone: nothing left to report on
                self._written[key] = comparable
                return True
            log.warning(f"cannot report on {plural}/{name}: {exc.status} {exc.reason}")
            self._last_ok = False
            return False
        except Exception as exc:  # API server away: retried on the next pass
            log.warning(f"cannot report on {plural}/{name}: {exc}")
            self._last_ok = False
            return False
        self._last_ok = True
        self._written[key] = comparable
        self._written_at[key] = time.monotonic()
        return True

    def healthy(self) -> bool:
        """Whether the last status write reached the API server (part of the agent's own health)."""
        return self._last_ok

    def labels(self, labels: dict[str, str | None], current: dict[str, str]) -> bool:
        """Set and remove labels on this node's Node object, where they differ from current."""
        wanted = {k: v for k, v in labels.items() if current.get(k) != v}
        if not wanted:
            return True
        try:
            self._core.patch_node(self.node, {"metadata": {"labels": wanted}})
        except Exception as exc:
            log.warning(f"cannot label node {self.node}: {exc}")
            return False
        return True

    def annotations(self, annotations: dict[str, str | None], current: dict[str, str]) -> bool:
        """Set and remove annotations on this node's Node object, where they differ from current."""
        wanted = {k: v for k, v in annotations.items() if current.get(k) != v}
        if not wanted:
            return True
        try:
            self._core.patch_node(self.node, {"metadata": {"annotations": wanted}})
        except Exception as exc:
            log.warning(f"cannot annotate node {self.node}: {exc}")
            return False
        return True

    def condition(self, ctype: str, status: str, reason: str, message: str) -> bool:
        """One condition on this node's Node (strategic merge keyed by type: others stay)."""
        if self._conditions.get(ctype) == (status, reason, message):
            return True
        now = now_rfc3339()
        body = {"status": {"conditions": [{"type": ctype, "status": status, "reason": reason, "message": message,
                                           "lastHeartbeatTime": now, "lastTransitionTime": now}]}}
        try:
            self._core.patch_node_status(self.node, body)
        except Exception as exc:
            log.warning(f"cannot set condition {ctype} on node {self.node}: {exc}")
            return False
        self._conditions[ctype] = (status, reason, message)
        return True

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        try:
            post_event(self._api, obj, type_, reason, f"{self.node}: {message}", "maculaos-agent", self.node)
        except Exception as exc:
            log.warning(f"cannot post event on {obj['metadata']['name']}: {exc}")
