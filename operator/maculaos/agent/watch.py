"""List-then-watch of one resource into a local cache, with backoff: a restart, a lost connection or an
API server that is away for a while heals by itself, and the cache keeps the last known objects."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from maculaos.api.decommission import GRANTED_ANNOTATION
from maculaos.kube.rest import ApiError, KubeClient

log = logging.getLogger("maculaos.agent")

MAX_BACKOFF = 10.0
#: How long one watch request lasts before the server ends it and the next resumes where it stopped.
WATCH_SECONDS = 300


class WatchedCache:
    """name -> object for one resource, kept current by a daemon thread; calls on_change after changes."""

    def __init__(self, what: str, kube: KubeClient, path: str, on_change: Callable[[], None],
                 relevant: Callable[[dict[str, Any]], Any] = lambda obj: obj, watch_seconds: int = WATCH_SECONDS,
                 field_selector: str | None = None) -> None:
        """path is the collection's REST path; relevant(obj) is what on_change cares about: an event that
        leaves it as it was (say, another node's status report) updates the cache quietly."""
        self.what = what
        self._relevant = relevant
        self._kube = kube
        self._path = path
        self._field_selector = field_selector
        self.lists = self.watches = 0  # requests made (a resumed watch does not list again)
        self._watch_seconds = watch_seconds
        self._on_change = on_change
        self._objects: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{what}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._objects)

    def _run(self) -> None:
        backoff = 1.0
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._relist()
                backoff = 1.0
                version = self._watch(version)
            except Exception as exc:  # any failure: keep the cache, back off, list again
                log.warning(f"watch of {self.what} interrupted ({_short(exc)}); retrying in {backoff:.0f}s")
                version = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _relist(self) -> str:
        listing = self._kube.request("GET", self._path, query={"fieldSelector": self._field_selector})
        self.lists += 1
        with self._lock:
            self._objects = {o["metadata"]["name"]: o for o in listing.get("items", [])}
        self.synced.set()
        self._on_change()
        return str(listing["metadata"].get("resourceVersion", ""))

    def _watch(self, version: str) -> str:
        """Watch from `version` until the server ends the watch; returns the newest version seen, where the
        next watch resumes (a fleet of agents relisting every few minutes would load the API server for
        nothing). An expired version (410) or a broken stream raises: the caller lists afresh."""
        self.watches += 1
        stream = self._kube.watch(self._path, resourceVersion=version, timeoutSeconds=self._watch_seconds,
                                  allowWatchBookmarks=True, fieldSelector=self._field_selector)
        for event in stream:
            if self._stop.is_set():
                return version
            obj = event["object"]
            kind = event["type"]
            if kind == "ERROR":
                raise ApiError(int(obj.get("code") or 0), str(obj.get("reason") or "watch error"),
                               str(obj.get("message") or ""))
            version = str(obj["metadata"].get("resourceVersion") or version)
            if kind == "BOOKMARK":
                continue
            name = obj["metadata"]["name"]
            with self._lock:
                old = self._objects.pop(name, None) if kind == "DELETED" else self._objects.get(name)
                if kind != "DELETED":
                    self._objects[name] = obj
            if kind == "DELETED" or old is None or self._relevant(old) != self._relevant(obj):
                self._on_change()
        return version


def _short(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def spec_and_generation(obj: dict[str, Any]) -> Any:
    """What a change of a MaculaOS object means to an agent: not the status other nodes write."""
    return obj["metadata"].get("generation"), obj.get("spec")


def labels_and_addresses(node: dict[str, Any]) -> Any:
    """What a change of the agent's own Node means to it: not heartbeats and conditions (the decommission
    grant is one of its annotations that does)."""
    return (node["metadata"].get("labels"), (node.get("status") or {}).get("addresses"),
            (node["metadata"].get("annotations") or {}).get(GRANTED_ANNOTATION))
