"""Leader election over a coordination.k8s.io/v1 Lease, as client-go does it, on maculaos.kube.rest.

A candidate reads the Lease; it may take it when nobody holds it, or when the record it last saw has not
changed for the lease's duration (measured on its own monotonic clock, so clocks need not agree). Every
write is a replace carrying the resourceVersion that was read, so of two candidates racing for an
expired Lease the API server lets exactly one win (the other gets 409). The leader renews every
retry period and counts itself deposed once a renew deadline passes without a successful renewal.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from maculaos.kube.rest import ApiError, KubeClient, resource_path

log = logging.getLogger("maculaos.kube")

LEASE_API = "coordination.k8s.io/v1"


@dataclass(frozen=True)
class Timings:
    """How long a Lease is valid, how long a leader keeps trying to renew it, and how often it tries."""

    lease_duration: float
    renew_deadline: float
    retry_period: float

    @classmethod
    def for_lease(cls, lease_duration: int) -> Timings:
        """client-go's proportions (15 s / 10 s / 2 s): renew deadline 2/3 of the lease, retry 1/7."""
        return cls(float(lease_duration), float(lease_duration * 2 // 3), float(max(1, lease_duration // 7)))


def micro_time(at: dt.datetime) -> str:
    """A Lease's MicroTime (RFC 3339 with exactly six fractional digits, UTC)."""
    return at.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseLock:
    """One candidate's view of one Lease: try_acquire_or_renew, then release when done."""

    def __init__(self, kube: KubeClient, namespace: str, name: str, identity: str, timings: Timings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.timings = timings
        self.clock = clock
        self.renewed_at = 0.0
        """When (on clock) this candidate last wrote the Lease as its holder."""
        self._path = resource_path(LEASE_API, "leases", name, namespace=namespace)
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._last_problem = ""

    def try_acquire_or_renew(self, timeout: float | None = None) -> bool:
        """One attempt: True when this candidate holds the Lease afterwards."""
        timeout = timeout or self.timings.retry_period
        try:
            lease = self.kube.request("GET", self._path, timeout=timeout)
        except ApiError as exc:
            if exc.status != HTTPStatus.NOT_FOUND:
                return self._failed(f"cannot read Lease {self.namespace}/{self.name}: {exc}")
            return self._create(timeout)
        except Exception as exc:  # the API server away: the next attempt retries
            return self._failed(f"cannot read Lease {self.namespace}/{self.name}: {exc}")
        spec = lease.get("spec") or {}
        self._observe(spec)
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or self.timings.lease_duration)
        if holder and holder != self.identity and self._observed_at + duration > self.clock():
            return False  # held by another candidate, and renewed within its duration
        now = micro_time(dt.datetime.now(dt.timezone.utc))
        wanted = {**spec, "holderIdentity": self.identity, "leaseDurationSeconds": int(self.timings.lease_duration),
                  "renewTime": now}
        if holder != self.identity:
            wanted |= {"acquireTime": now, "leaseTransitions": int(spec.get("leaseTransitions") or 0) + 1}
            if holder:
                log.info(f"Lease {self.namespace}/{self.name}: {holder} let it expire; {self.identity} takes it")
        return self._replace(lease, wanted, timeout)

    @property
    def held_by_other(self) -> bool:
        """The Lease last read names another holder: it was taken, so leadership is lost for sure."""
        return self._observed is not None and self._observed[0] not in (None, "", self.identity)

    def renewal_deadline(self) -> float:
        """Until when (on clock) the last renewal keeps this candidate the leader."""
        return self.renewed_at + self.timings.renew_deadline

    def release(self) -> bool:
        """Give the Lease up (holder emptied, as client-go's ReleaseOnCancel does) so a follower takes it
        at once instead of after the lease duration; only if we still hold it at the version we read."""
        try:
            lease = self.kube.request("GET", self._path, timeout=self.timings.retry_period)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return False
            now = micro_time(dt.datetime.now(dt.timezone.utc))
            released = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": now}
            self.kube.request("PUT", self._path, {**lease, "spec": released}, timeout=self.timings.retry_period)
        except Exception as exc:  # it expires on its own
            log.warning(f"could not release Lease {self.namespace}/{self.name}: {exc}")
            return False
        log.info(f"{self.identity} released Lease {self.namespace}/{self.name}")
        return True

    def _create(self, timeout: float) -> bool:
        now = micro_time(dt.datetime.now(dt.timezone.utc))
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.timings.lease_duration),
                "acquireTime": now, "renewTime": now, "leaseTransitions": 0}
        body = {"apiVersion": LEASE_API, "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
        try:
            self.kube.request("POST", resource_path(LEASE_API, "leases", namespace=self.namespace), body,
                              timeout=timeout)
        except Exception as exc:  # 409: another candidate created it first; the next attempt reads it
            return self._failed(f"cannot create Lease {self.namespace}/{self.name}: {exc}")
        self._observe(spec)
        self.renewed_at = self.clock()
        return True

    def _replace(self, lease: Mapping[str, Any], spec: dict[str, Any], timeout: float) -> bool:
        """PUT with the resourceVersion read: a candidate that read an older version gets 409 and loses."""
        try:
            self.kube.request("PUT", self._path, {**lease, "spec": spec}, timeout=timeout)
        except Exception as exc:
            return self._failed(f"cannot update Lease {self.namespace}/{self.name}: {exc}")
        self._observe(spec)
        self.renewed_at = self.clock()
        return True

    def _observe(self, spec: Mapping[str, Any]) -> None:
        record = tuple(spec.get(k) for k in ("holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime"))
        if record != self._observed:
            if self._observed is not None and record[0] != self._observed[0] and record[0]:
                log.info(f"Lease {self.namespace}/{self.name} is held by {record[0]}")
            self._observed, self._observed_at = record, self.clock()

    def _failed(self, problem: str) -> bool:
        """Log a failed attempt once per distinct problem (a follower retries every retry period)."""
        if problem != self._last_problem:
            log.warning(problem)
            self._last_problem = problem
        return False


def acquire(lock: LeaseLock, stop: threading.Event) -> bool:
    """Block until lock is held (True) or stop is set (False)."""
    while not stop.is_set():
        if lock.try_acquire_or_renew():
            return True
        stop.wait(lock.timings.retry_period)
    return False


def hold(lock: LeaseLock, stop: threading.Event) -> bool:
    """Renew every retry period until stop is set (True) or leadership is lost (False): the renew
    deadline passed since the last successful renewal, or the Lease names another holder.

    The deadline counts from the last renewal, not from the attempt under way: a leader frozen past its
    Lease (SIGSTOP, a stalled VM) and resumed finds another holder on its first read and steps down at
    once, instead of retrying (and its controller acting) for another renew deadline while a successor
    leads. A frozen leader nobody replaced renews as usual (the replace carries the version it read)."""
    timings = lock.timings
    while not stop.wait(timings.retry_period):
        while not lock.try_acquire_or_renew(
                timeout=max(0.5, min(timings.retry_period, lock.renewal_deadline() - lock.clock()))):
            if lock.held_by_other or lock.clock() + timings.retry_period > lock.renewal_deadline():
                return stop.is_set()
            if stop.wait(timings.retry_period):
                return True
    return True
