"""The agent's watch caches against the real API server: a watch the server ends resumes where it stopped,
without listing again (a fleet relisting every few minutes loads the API server for nothing)."""

from __future__ import annotations

import threading
import time
from typing import Any

from kubernetes import client
from kubernetes import config as kube_config

from maculaos.agent.watch import WatchedCache
from maculaos.api import GROUP, VERSION
from tests.integration.conftest import Cluster


def test_an_ended_watch_resumes_without_listing_again(cluster: Cluster, created: Any) -> None:
    custom = client.CustomObjectsApi(kube_config.new_client_from_config(str(cluster.plane.kubeconfig)))
    calls: list[bool] = []

    def lister(**kwargs: Any) -> Any:
        calls.append(bool(kwargs.get("watch")))
        return custom.list_cluster_custom_object(**kwargs)

    changed = threading.Event()
    cache = WatchedCache("meshroles", lister, changed.set, watch_seconds=1,
                         group=GROUP, version=VERSION, plural="meshroles")
    cache.start()
    try:
        assert cache.synced.wait(30)
        time.sleep(3.5)  # the server ends a watch every second: several watches, one listing
        changed.clear()
        created({"apiVersion": f"{GROUP}/{VERSION}", "kind": "MeshRole", "metadata": {"name": "watch-resume"},
                 "spec": {}})
        assert changed.wait(15), "a change after several resumed watches was not seen"
        assert "watch-resume" in cache.snapshot()
        assert calls.count(False) == 1, f"listed {calls.count(False)} times"
        assert calls.count(True) >= 3
    finally:
        cache.stop()
