"""Fold the agents' NodeReports into each object's status.nodes, so users (and the operator's own
decisions) read every node's entry where they always have: on the object.

Each node's agent writes only its own NodeReport (one object per node: no two writers share an object).
The operator watches them and writes one merge patch of status.nodes per object whose entries changed: at
once for a report after a quiet spell, after a short pause within a burst of reports. status.nodes is
derived, never edited: an entry shows when a node reports on the object (and on this very object: its
uid), and goes when the node stops reporting on it, when its NodeReport goes (garbage-collected with its
Node), or when its Node is gone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

from maculaos.api import KINDS
from maculaos.api.nodereport import NodeReportSpec, parse_report_key, report_entries, report_key
from maculaos.controller.cluster import list_objects
from maculaos.kube.rest import ApiError, KubeClient, merge_patch, object_path

log = logging.getLogger("maculaos.controller")

#: Within a burst (a MeshRole change makes every node report within moments), a fold waits until reports
#: pause this long...
DEBOUNCE_SECONDS = 0.2
#: ...but never longer than this after the first report of a burst: a large fleet reporting over several
#: seconds gets a fold a second, not one per report (each fold is a status write every watcher receives).
MAX_DELAY_SECONDS = 1.0
REPORTS = NodeReportSpec.resource.plural
PLURAL_OF_KIND = {m.resource.kind: m.resource.plural for m in KINDS}

#: node -> {key: {"uid", "report"}}
Reports = Mapping[str, Mapping[str, Mapping[str, Any]]]


def folded_nodes(reports: Reports, key: str, uid: str) -> dict[str, Any]:
    """What status.nodes of the object `key` (with this uid) should hold."""
    nodes = {}
    for node, entries in reports.items():
        entry = entries.get(key)
        if entry is not None and entry.get("uid") == uid:
            nodes[node] = entry["report"]
    return nodes


def nodes_patch(obj: Mapping[str, Any], reports: Reports) -> dict[str, Any]:
    """The merge patch of status.nodes that folds the reports into obj; empty when it already shows them."""
    meta = obj["metadata"]
    key = report_key(str(obj.get("kind", "")), meta["name"], meta.get("namespace", ""))
    current = (obj.get("status") or {}).get("nodes") or {}
    return merge_patch(current, folded_nodes(reports, key, str(meta.get("uid", ""))))


def _newer(version: str, than: str) -> bool:
    """Whether resourceVersion `version` may be taken as newer than `than`. Kubernetes calls them opaque;
    the stores we meet (etcd, kine) use increasing integers, and anything else counts as newer."""
    try:
        return int(version) >= int(than)
    except ValueError:
        return True


class Folder:
    """The NodeReports as last seen, the object keys they changed, and the fold that writes them out."""

    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube
        self._lock = threading.Lock()
        self._reports: dict[str, dict[str, dict[str, Any]]] = {}
        self._versions: dict[str, str] = {}
        self._dirty: set[str] = set()
        self._loaded = False
        self._folding = threading.Lock()

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> bool:
        """A watch event of a NodeReport; True when it changed some object's entries (a fold is due)."""
        node = str(body["metadata"]["name"])
        version = str(body["metadata"].get("resourceVersion", ""))
        with self._lock:
            if event_type != "DELETED" and node in self._versions and not _newer(version, self._versions[node]):
                return False  # older than what a listing already gave us
            entries = {} if event_type == "DELETED" else report_entries(dict(body))
            return self._replace(node, entries, version if event_type != "DELETED" else None)

    def _replace(self, node: str, entries: dict[str, dict[str, Any]], version: str | None) -> bool:
        old = self._reports.get(node, {})
        changed = {k for k in old.keys() | entries.keys() if old.get(k) != entries.get(k)}
        if entries or version is not None:
            self._reports[node] = entries
        else:
            self._reports.pop(node, None)
        if version is None:
            self._versions.pop(node, None)
        else:
            self._versions[node] = version
        self._dirty |= changed
        return bool(changed)

    def reload(self, nodes: Iterable[str] | None = None) -> None:
        """Read every NodeReport afresh (the first fold, and each resync: heals a missed watch event).
        With nodes, reports of Nodes that no longer exist are dropped (their garbage collection may lag)."""
        alive = None if nodes is None else set(nodes)
        seen = {}
        for body in list_objects(self._kube, REPORTS):
            name = str(body["metadata"]["name"])
            if alive is None or name in alive:
                seen[name] = body
        with self._lock:
            for node in set(self._reports) - set(seen):
                self._replace(node, {}, None)
            for node, body in seen.items():
                self._replace(node, report_entries(body), str(body["metadata"].get("resourceVersion", "")))
            self._loaded = True

    def fold_pending(self) -> list[dict[str, Any]]:
        """Fold the objects whose entries changed since the last fold; returns them as written (each with
        its kind), for the operator to judge them at once on their new entries."""
        with self._folding:
            if not self._loaded:
                self.reload()
                return self._fold(None)
            with self._lock:
                keys, self._dirty = self._dirty, set()
            try:
                return self._fold(keys) if keys else []
            except Exception:  # API server away: these objects are folded on a later pass
                with self._lock:
                    self._dirty |= keys
                raise

    def pending_kinds(self) -> set[str]:
        """The kinds of the objects the next fold_pending writes (every kind before the first fold)."""
        with self._lock:
            if not self._loaded:
                return set(PLURAL_OF_KIND)
            return {parse_report_key(k)[0] for k in self._dirty}

    def pending(self) -> bool:
        with self._lock:
            return bool(self._dirty) or not self._loaded

    def fold_all(self, nodes: Iterable[str], listed: dict[str, list[dict[str, Any]]] | None = None) -> int:
        """Every object against every report (the periodic resync). With listed, each kind's objects as
        they stand after the fold (a written object as the API server returned it), by plural: the resync
        judges them without listing every kind a second time."""
        with self._folding:
            self.reload(nodes)
            with self._lock:
                self._dirty = set()
            return len(self._fold(None, listed))

    def _fold(self, keys: set[str] | None,
              listed: dict[str, list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
        with self._lock:
            reports = {n: dict(e) for n, e in self._reports.items()}
        kinds = set(PLURAL_OF_KIND) if keys is None else {parse_report_key(k)[0] for k in keys}
        written = []
        for kind in sorted(kinds & set(PLURAL_OF_KIND)):
            plural = PLURAL_OF_KIND[kind]
            after = []
            for obj in list_objects(self._kube, plural):
                name = obj["metadata"]["name"]
                obj.setdefault("kind", kind)
                if keys is not None and report_key(kind, name) not in keys:
                    continue
                patch = nodes_patch(obj, reports)
                if patch:
                    if (written_obj := self._write(plural, name, patch)) is None:
                        continue  # deleted meanwhile
                    obj = {"kind": kind, **written_obj}
                    written.append(obj)
                after.append(obj)
            if listed is not None:
                listed[plural] = after
        return written

    def _write(self, plural: str, name: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        """The object as written, or None when it is gone."""
        try:
            return self._kube.patch(object_path(plural, name, "status"), {"status": {"nodes": patch}})
        except ApiError as exc:
            if exc.status == HTTPStatus.NOT_FOUND:  # deleted meanwhile: nothing to show the entries on
                return None
            raise
