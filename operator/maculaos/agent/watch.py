"""List-then-watch of one resource into a local cache, with backoff: a restart, a lost connection or an
API server that is away for a while heals by itself, and the cache keeps the last known objects."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("maculaos.agent")

Lister = Callable[..., Any]
MAX_BACKOFF = 10.0
#: How long one watch request lasts before the server ends it and the next resumes where it stopped.
WATCH_SECONDS = 300


class WatchedCache:
    """name -> object for one resource, kept current by a daemon thread; calls on_change after changes."""

    def __init__(self, what: str, lister: Lister, on_change: Callable[[], None],
                 relevant: Callable[[dict[str, Any]], Any] = lambda obj: obj, watch_seconds: int = WATCH_SECONDS,
                 **list_args: Any) -> None:
        """relevant(obj) is what on_change cares about: an event that leaves it as it was (say, another
        node's status report) updates the cache quietly."""
        self.what = what
        self._relevant = relevant
        self._lister = lister
        self._list_args = list_args
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
        listing = _as_dict(self._lister(**self._list_args))
        with self._lock:
            self._objects = {o["metadata"]["name"]: o for o in listing.get("items", [])}
        self.synced.set()
        self._on_change()
        return str(listing["metadata"].get("resourceVersion", ""))

    def _watch(self, version: str) -> str:
        """Watch from `version` until the server ends the watch; returns the newest version seen, where the
        next watch resumes (a fleet of agents relisting every few minutes would load the API server for
        nothing). An expired version (410) or a broken stream raises: the caller lists afresh."""
        stream = watch.Watch().stream(self._lister, resource_version=version, timeout_seconds=self._watch_seconds,
                                      allow_watch_bookmarks=True, **self._list_args)
        for event in stream:
            if self._stop.is_set():
                return version
            obj = _as_dict(event["object"])
            kind = event["type"]
            if kind == "ERROR":
                raise ApiException(status=obj.get("code", 0), reason=obj.get("message", "watch error"))
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


_SERIALIZER = client.ApiClient()  # only its sanitize_for_serialization is used: made once, not per event


def _as_dict(obj: Any) -> dict[str, Any]:
    """Typed client objects (the Node) as the plain dicts custom objects already are."""
    if isinstance(obj, dict):
        return obj
    return dict(_SERIALIZER.sanitize_for_serialization(obj))


def _short(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def spec_and_generation(obj: dict[str, Any]) -> Any:
    """What a change of a MaculaOS object means to an agent: not the status other nodes write."""
    return obj["metadata"].get("generation"), obj.get("spec")


def labels_and_addresses(node: dict[str, Any]) -> Any:
    """What a change of the agent's own Node means to it: not heartbeats and conditions."""
    return node["metadata"].get("labels"), (node.get("status") or {}).get("addresses")
