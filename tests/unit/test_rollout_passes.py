"""Passes of one NodeUpgrade: serialised, and watch events that pile up while a pass waits fold into it."""

from __future__ import annotations

import threading
import time

from maculaos.controller.cluster import ApiCluster
from maculaos.controller.nodeupgrade import Rollouts
from maculaos.kube.rest import Credentials, KubeClient


class CountingRollouts(Rollouts):
    """The real scheduling of passes around a pass that only counts and can be held."""

    def __init__(self) -> None:
        super().__init__(KubeClient(Credentials(server="http://localhost:1")))  # makes no request
        self.passes = 0
        self.running = threading.Event()
        self.release = threading.Event()

    def _run(self, name: str, cluster: ApiCluster | None) -> None:
        self.passes += 1
        self.running.set()
        self.release.wait(10)


def test_events_during_a_pass_fold_into_one_more_pass() -> None:
    rollouts = CountingRollouts()
    first = threading.Thread(target=rollouts.reconcile_soon, args=("fleet",))
    first.start()
    assert rollouts.running.wait(5)
    results: list[bool] = []
    burst = [threading.Thread(target=lambda: results.append(rollouts.reconcile_soon("fleet"))) for _ in range(20)]
    for thread in burst:
        thread.start()
    deadline = time.monotonic() + 5
    while len(results) < 19 and time.monotonic() < deadline:  # all but the one waiting have returned
        time.sleep(0.01)
    assert results.count(False) == 19, "twenty reports during a pass: one pass waits for them all"
    rollouts.release.set()
    for thread in [first, *burst]:
        thread.join(5)
    assert rollouts.passes == 2 and results.count(True) == 1
    assert rollouts.reconcile_soon("fleet") and rollouts.passes == 3, "a later event gets its own pass"


def test_resync_passes_are_never_folded() -> None:
    rollouts = CountingRollouts()
    rollouts.release.set()
    for _ in range(3):
        rollouts.reconcile("fleet")
    assert rollouts.passes == 3
