"""The Lease rules of leader election, against an in-memory API server that checks resourceVersions like
the real one (the two-replica failover against a real one is tests/integration/test_leader_election.py)."""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from typing import Any

from maculaos.kube.leader import LeaseLock, Timings, hold
from maculaos.kube.rest import ApiError, Credentials, KubeClient

TIMINGS = Timings.for_lease(15)


class LeaseServer(KubeClient):
    """One namespace's Leases: GET, POST (409 when it exists), PUT (409 on a stale resourceVersion)."""

    def __init__(self) -> None:
        super().__init__(Credentials(server="http://localhost:1"))
        self.leases: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.down = False

    def _version_of(self, name: str) -> str:
        return str(self.leases[name]["metadata"]["resourceVersion"])

    def request(self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None,
                content_type: str = "application/json", timeout: float | None = None) -> dict[str, Any]:
        if self.down:
            raise ConnectionError("API server away")
        name = body["metadata"]["name"] if method == "POST" else path.rsplit("/", 1)[1]
        if method == "GET":
            if name not in self.leases:
                raise ApiError(404, "Not Found")
            return copy.deepcopy(self.leases[name])
        if method == "POST" and name in self.leases:
            raise ApiError(409, "Conflict", "already exists")
        if method == "PUT" and body["metadata"].get("resourceVersion") != self._version_of(name):
            raise ApiError(409, "Conflict", "the object has been modified")
        self.version += 1
        stored = copy.deepcopy(dict(body))
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.leases[name] = stored
        return copy.deepcopy(stored)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def candidate(server: LeaseServer, identity: str, clock: Clock) -> LeaseLock:
    return LeaseLock(server, "maculaos-system", "maculaos-controller", identity, TIMINGS, clock=clock)


def holder(server: LeaseServer) -> str:
    return str(server.leases["maculaos-controller"]["spec"]["holderIdentity"])


def test_client_go_proportions() -> None:
    assert (TIMINGS.lease_duration, TIMINGS.renew_deadline, TIMINGS.retry_period) == (15, 10, 2)
    assert Timings.for_lease(6).retry_period == 1


def test_the_first_candidate_creates_the_lease_and_the_second_waits_for_it_to_expire() -> None:
    server, clock = LeaseServer(), Clock()
    a, b = candidate(server, "a", clock), candidate(server, "b", clock)
    assert a.try_acquire_or_renew() and holder(server) == "a"
    assert not b.try_acquire_or_renew()
    clock.now += 10
    assert a.try_acquire_or_renew(), "the holder renews"
    clock.now += 10
    assert not b.try_acquire_or_renew(), "renewed 10 s ago: still valid"
    clock.now += 16  # a is silent for longer than the lease
    assert b.try_acquire_or_renew() and holder(server) == "b"
    spec = server.leases["maculaos-controller"]["spec"]
    assert spec["leaseTransitions"] == 1 and spec["acquireTime"] == spec["renewTime"]
    assert not a.try_acquire_or_renew(), "the old holder sees b's fresh record and must wait"


def test_renewals_keep_the_acquire_time() -> None:
    server, clock = LeaseServer(), Clock()
    a = candidate(server, "a", clock)
    assert a.try_acquire_or_renew()
    acquired = server.leases["maculaos-controller"]["spec"]["acquireTime"]
    assert a.try_acquire_or_renew()
    assert server.leases["maculaos-controller"]["spec"]["acquireTime"] == acquired


def test_of_two_candidates_that_read_the_same_expired_lease_only_one_wins() -> None:
    server, clock = LeaseServer(), Clock()
    assert candidate(server, "old", clock).try_acquire_or_renew()
    b, c = candidate(server, "b", clock), candidate(server, "c", clock)
    assert not b.try_acquire_or_renew() and not c.try_acquire_or_renew()  # both start observing
    clock.now += 16
    stale = copy.deepcopy(server.leases["maculaos-controller"])
    assert b.try_acquire_or_renew()
    real_get = server.request
    server.request = lambda method, path, *a, **k: (copy.deepcopy(stale) if method == "GET"  # type: ignore[method-assign]
                                                     else real_get(method, path, *a, **k))
    assert not c.try_acquire_or_renew(), "c's write carries the version it read: refused"
    assert holder(server) == "b"


def test_a_released_lease_is_taken_at_once() -> None:
    server, clock = LeaseServer(), Clock()
    a, b = candidate(server, "a", clock), candidate(server, "b", clock)
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    assert a.release() and holder(server) == ""
    assert b.try_acquire_or_renew() and holder(server) == "b"
    assert not a.release(), "only the holder releases"


def test_a_leader_that_cannot_renew_before_the_deadline_is_deposed() -> None:
    server = LeaseServer()
    fast = LeaseLock(server, "ns", "maculaos-controller", "a",
                     Timings(lease_duration=0.6, renew_deadline=0.4, retry_period=0.1))
    assert fast.try_acquire_or_renew()
    server.down = True
    assert hold(fast, threading.Event()) is False


def test_holding_ends_cleanly_when_told_to_stop() -> None:
    server = LeaseServer()
    lock = LeaseLock(server, "ns", "maculaos-controller", "a",
                     Timings(lease_duration=0.6, renew_deadline=0.4, retry_period=0.1))
    assert lock.try_acquire_or_renew()
    stop = threading.Event()
    threading.Timer(0.35, stop.set).start()
    assert hold(lock, stop) is True
    assert holder(server) == "a"


def test_a_leader_frozen_past_its_lease_steps_down_on_its_first_read() -> None:
    """Frozen (SIGSTOP) past the Lease while another took it: on waking the first read shows the new
    holder and holding ends at once, not after another renew deadline (40 s here) of retries during
    which the old leader's controller would still act."""
    server, clock = LeaseServer(), Clock()
    slow = Timings(lease_duration=60, renew_deadline=40, retry_period=0.05)
    a = LeaseLock(server, "ns", "maculaos-controller", "a", slow, clock=clock)
    b = LeaseLock(server, "ns", "maculaos-controller", "b", slow, clock=clock)
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    clock.now += 61  # a is frozen; b saw the record unchanged for the whole lease
    assert b.try_acquire_or_renew() and holder(server) == "b"
    stop = threading.Event()
    timer = threading.Timer(2.0, stop.set)  # only a hold that goes on retrying would meet this
    timer.start()
    try:
        assert hold(a, stop) is False and not stop.is_set(), "deposed at once, not told to stop"
    finally:
        timer.cancel()
    assert holder(server) == "b"


def test_a_leader_frozen_past_its_lease_that_nobody_took_renews() -> None:
    server, clock = LeaseServer(), Clock()
    a = LeaseLock(server, "ns", "maculaos-controller", "a", Timings(60, 40, 0.05), clock=clock)
    assert a.try_acquire_or_renew()
    clock.now += 61
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    assert hold(a, stop) is True and holder(server) == "a"
