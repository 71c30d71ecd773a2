"""The agent's watch caches against the real API server: a watch the server ends resumes where it stopped,
without listing again (a fleet relisting every few minutes loads the API server for nothing)."""

from __future__ import annotations

import threading
import time
from typing import Any

from maculaos.agent.watch import WatchedCache
from maculaos.api import GROUP, VERSION
from maculaos.kube.rest import object_path
from tests.integration.conftest import Cluster, kube_of


def test_an_ended_watch_resumes_without_listing_again(cluster: Cluster, created: Any) -> None:
    changed = threading.Event()
    cache = WatchedCache("meshroles", kube_of(cluster.api), object_path("meshroles"), changed.set, watch_seconds=1)
    cache.start()
    try:
        assert cache.synced.wait(30)
        time.sleep(3.5)  # the server ends a watch every second: several watches, one listing
        changed.clear()
        created({"apiVersion": f"{GROUP}/{VERSION}", "kind": "MeshRole", "metadata": {"name": "watch-resume"},
                 "spec": {}})
        assert changed.wait(15), "a change after several resumed watches was not seen"
        assert "watch-resume" in cache.snapshot()
        assert cache.lists == 1, f"listed {cache.lists} times"
        assert cache.watches >= 3
    finally:
        cache.stop()
