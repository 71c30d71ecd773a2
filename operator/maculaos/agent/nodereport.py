"""Everything the agent writes to the API: only its own node's things. Its NodeReport (named after the
Node, one entry per object it acts on; the operator folds them into each object's status.nodes), its own
Node's labels and conditions, and Events.

The Reporter keeps what it wants the NodeReport to hold and what the API server last accepted, and sends
the difference as one JSON merge patch: the entries of a whole pass go in one write, a failed write is
carried by the next one, and an unchanged report costs nothing. Entries keep merge-patch semantics (a key
left out stays, None removes it), as when agents patched status.nodes.<node> directly."""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from maculaos.api import GROUP, KINDS, VERSION
from maculaos.api.nodereport import NodeReportSpec, report_key
from maculaos.api.times import now_rfc3339
from maculaos.kube.rest import (
    EVENT_NAMESPACE,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    ApiError,
    KubeClient,
    apply_merge_patch,
    event_body,
    merge_patch,
    object_path,
    resource_path,
)

log = logging.getLogger("maculaos.agent")
REPORTS = NodeReportSpec.resource.plural
REQUEST_TIMEOUT = 15.0
KIND_OF_PLURAL = {m.resource.plural: m.resource.kind for m in KINDS}

#: (plural, name) -> the object as the agent knows it (its uid is what the entry refers to), or None when
#: it is gone. The Node itself is looked up as ("nodes", node name).
Lookup = Callable[[str, str], Mapping[str, Any] | None]



class Reporter:
    def __init__(self, kube: KubeClient, node: str, lookup: Lookup) -> None:
        self.node = node
        self._kube = kube
        self._lookup = lookup
        self._node_path = resource_path("v1", "nodes", node)
        self._lock = threading.Lock()  # the state below
        self._flushing = threading.Lock()  # one write at a time, so an older write never lands after a newer
        self._wanted: dict[str, dict[str, Any]] = {}  # key -> {"uid", "report"}
        self._stored: dict[str, dict[str, Any]] | None = None  # as the API server has it; None: not read yet
        self._exists = False
        self._compared: dict[str, Any] = {}
        self._written_at: dict[str, float] = {}
        self._labels: dict[str, str | None] = {}
        self._neighbours: list[dict[str, Any]] | None = None   # wanted; None: not looking, none shown
        self._neighbours_stored: list[dict[str, Any]] | None = None
        self._conditions: dict[str, tuple[str, str, str]] = {}
        self._last_ok = True

    # -- entries --------------------------------------------------------------------------------------

    def node_entry(self, plural: str, name: str, entry: dict[str, Any] | None,
                   significant: Callable[[dict[str, Any]], dict[str, Any]] = dict,
                   refresh_seconds: float | None = None, uid: str | None = None) -> bool:
        """Set (or with None remove) this node's entry about one object. False when the API refused.

        Written when significant(entry) changed, and, with refresh_seconds, that often to refresh the rest
        (probe outputs, run times) without a write on every probe. With uid (the object the entry was
        worked out for), an entry is dropped when the object by that name is now another one: a deleted
        and re-created object must never receive what was meant for its predecessor."""
        return self.node_entries(plural, {name: entry}, significant, refresh_seconds, {name: uid} if uid else None)

    def node_entries(self, plural: str, entries: Mapping[str, dict[str, Any] | None],
                     significant: Callable[[dict[str, Any]], dict[str, Any]] = dict,
                     refresh_seconds: float | None = None, uids: Mapping[str, str] | None = None) -> bool:
        """node_entry for several objects of one kind, in one write."""
        self._ensure_loaded()
        with self._lock:
            for name, entry in entries.items():
                self._stage(plural, name, entry, significant, refresh_seconds, (uids or {}).get(name))
        return self.flush()

    def _stage(self, plural: str, name: str, entry: dict[str, Any] | None,
               significant: Callable[[dict[str, Any]], dict[str, Any]], refresh_seconds: float | None,
               meant_for: str | None) -> None:
        key = report_key(KIND_OF_PLURAL[plural], name)
        obj = self._lookup(plural, name) if entry is not None else None
        if entry is None or obj is None:  # removed, or the object is gone: nothing left to report on
            self._wanted.pop(key, None)
            self._compared[key] = None
            return
        uid = str(obj["metadata"].get("uid", ""))
        if meant_for is not None and meant_for != uid:  # replaced since: the next pass reports on the new one
            return
        comparable = significant(entry)
        age = time.monotonic() - self._written_at.get(key, float("-inf"))
        stale = refresh_seconds is not None and age >= refresh_seconds
        current = self._wanted.get(key)
        if current is not None and current["uid"] == uid and self._compared.get(key) == comparable and not stale:
            return
        base = current["report"] if current is not None and current["uid"] == uid else {}
        report = apply_merge_patch(base, {**entry, "lastUpdateTime": now_rfc3339()})
        self._wanted[key] = {"uid": uid, "report": report}
        self._compared[key] = comparable
        self._written_at[key] = time.monotonic()

    def lan_neighbours(self, neighbours: list[dict[str, Any]]) -> bool:
        """The node's LAN neighbours (LanNeighbour dicts), written with the time when they changed (an
        unchanged LAN costs no write). False when the API refused."""
        self._ensure_loaded()
        with self._lock:
            self._neighbours = neighbours
        return self.flush()

    def entries(self, plural: str) -> dict[str, dict[str, Any]]:
        """This node's current entries about objects of one kind, by object name."""
        prefix = f"{KIND_OF_PLURAL[plural]}/"
        with self._lock:
            return {k[len(prefix):]: copy.deepcopy(v["report"]) for k, v in self._wanted.items()
                    if k.startswith(prefix) and k.count("/") == 1}

    def prune(self, exists: Callable[[str, str], bool]) -> bool:
        """Drop entries about objects that no longer exist (exists(plural, name)), e.g. deleted while the
        agent was down."""
        plural_of = {kind: plural for plural, kind in KIND_OF_PLURAL.items()}
        if not self._ensure_loaded():
            return False
        with self._lock:
            for key in list(self._wanted):
                kind, _, name = key.partition("/")
                if kind in plural_of and "/" not in name and not exists(plural_of[kind], name):
                    del self._wanted[key]
        return self.flush()

    def _ensure_loaded(self) -> bool:
        """Read the NodeReport once before the first change, so entries continue from what it holds."""
        with self._flushing:
            if self._stored is None:
                try:
                    self._load()
                except Exception as exc:  # API server away: the write that follows tries again
                    log.warning(f"cannot read NodeReport {self.node}: {_describe(exc)}")
                    return False
        return True

    # -- writing --------------------------------------------------------------------------------------

    def flush(self) -> bool:
        """Send what changed since the API server last accepted the report. False when it could not."""
        with self._flushing:
            try:
                ok = self._flush()
            except Exception as exc:  # API server away or refusing: the next write carries it all
                log.warning(f"cannot write NodeReport {self.node}: {_describe(exc)}")
                ok = False
            self._last_ok = ok
            return ok

    def _flush(self) -> bool:
        if self._stored is None:
            self._load()
        with self._lock:
            stored = self._stored or {}
            wanted = copy.deepcopy(self._wanted)
            neighbours = copy.deepcopy(self._neighbours)
        patch = merge_patch(stored, wanted)
        new_neighbours = neighbours != self._neighbours_stored
        if not patch and not new_neighbours and self._exists:
            return True
        if not self._exists:
            self._create()
        now = now_rfc3339()
        body: dict[str, Any] = {"status": {"entries": patch, "objects": len(wanted), "lastUpdateTime": now}}
        if new_neighbours:  # null removes them: an agent that does not look shows no old list
            body["status"] |= {"lanNeighbours": neighbours,
                               "lanNeighboursTime": now if neighbours is not None else None}
        try:
            self._kube.request("PATCH", object_path(REPORTS, self.node, "status"), body, timeout=REQUEST_TIMEOUT,
                               content_type=MERGE_PATCH)
        except ApiError as exc:
            if exc.status == HTTPStatus.NOT_FOUND:  # deleted behind our back: create it again, in full
                with self._lock:
                    self._stored, self._exists, self._neighbours_stored = {}, False, None
            raise
        with self._lock:
            self._stored = apply_merge_patch(stored, patch)
            if new_neighbours:
                self._neighbours_stored = neighbours
        return True

    def _load(self) -> None:
        """What the NodeReport holds now (a restarted agent continues from it, merge semantics intact)."""
        try:
            body = self._kube.request("GET", object_path(REPORTS, self.node), timeout=REQUEST_TIMEOUT)
        except ApiError as exc:
            if exc.status != HTTPStatus.NOT_FOUND:
                raise
            body, exists = {}, False
        else:
            exists = True
        status = body.get("status") or {}
        stored = dict(status.get("entries") or {})
        with self._lock:
            self._stored, self._exists = stored, exists
            self._neighbours_stored = status.get("lanNeighbours")
            for key, value in stored.items():  # entries of an earlier run stay until replaced or pruned
                self._wanted.setdefault(key, copy.deepcopy(value))

    def _create(self) -> None:
        node = self._lookup("nodes", self.node)
        if node is None:
            raise RuntimeError(f"Node {self.node} is not known (yet): its NodeReport needs it as owner")
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": NodeReportSpec.resource.kind,
                "metadata": {"name": self.node, "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": node["metadata"]["uid"]}]}}
        try:
            self._kube.request("POST", object_path(REPORTS), body, timeout=REQUEST_TIMEOUT)
        except ApiError as exc:
            if exc.status != HTTPStatus.CONFLICT:  # it exists after all (an earlier write's create landed)
                raise
        self._exists = True

    def healthy(self) -> bool:
        """Whether the last report write reached the API server (part of the agent's own health)."""
        return self._last_ok

    # -- the Node and Events ---------------------------------------------------------------------------

    def labels(self, labels: dict[str, str | None], current: dict[str, str]) -> bool:
        """Set and remove labels on this node's Node object, where they differ from current."""
        wanted = {k: v for k, v in labels.items() if current.get(k) != v}
        if not wanted:
            return True
        try:
            self._kube.request("PATCH", self._node_path, {"metadata": {"labels": wanted}}, timeout=REQUEST_TIMEOUT,
                               content_type=MERGE_PATCH)
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
            self._kube.request("PATCH", self._node_path, {"metadata": {"annotations": wanted}},
                               timeout=REQUEST_TIMEOUT, content_type=MERGE_PATCH)
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
            self._kube.request("PATCH", f"{self._node_path}/status", body, timeout=REQUEST_TIMEOUT,
                               content_type=STRATEGIC_MERGE_PATCH)
        except Exception as exc:
            log.warning(f"cannot set condition {ctype} on node {self.node}: {exc}")
            return False
        self._conditions[ctype] = (status, reason, message)
        return True

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        try:
            self._kube.request("POST", resource_path("v1", "events", namespace=EVENT_NAMESPACE),
                               event_body(obj, type_, reason, f"{self.node}: {message}", "maculaos-agent", self.node),
                               timeout=REQUEST_TIMEOUT)
        except Exception as exc:
            log.warning(f"cannot post event on {obj['metadata']['name']}: {exc}")


def _describe(exc: Exception) -> str:
    if isinstance(exc, ApiError):
        return f"{exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
