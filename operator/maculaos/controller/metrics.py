"""The operator's own Prometheus metrics (how it works: reconciles, folds, leadership) and its probes.

The fleet's state as the operator sees it (rollouts, backups, health, versions) is collected by
controller/fleet_metrics.py; both are served with metrics_http on --metrics-port (docs/operator.md)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("maculaos_operator_reconcile_passes", "Judgements of one object, on a change or a resync pass",
                     ["kind"])
RECONCILE_ERRORS = Counter("maculaos_operator_reconcile_errors",
                           "Judgements that raised (the object is judged again on the next pass)", ["kind"])
FOLD_LATENCY = Histogram("maculaos_operator_fold_latency_seconds",
                         "From a NodeReport change to its entries written into the objects' status.nodes",
                         buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
LEADER = Gauge("maculaos_operator_leader", "1 while this replica acts (holds the Lease, or runs without "
                                           "leader election), 0 while it stands by")

#: Liveness fails once the acting controller's event loop has not ticked for this long (it is wedged).
STALL_SECONDS = 60.0
#: How often the event loop ticks.
TICK_SECONDS = 5.0


@contextlib.contextmanager
def counted(kind: str) -> Iterator[None]:
    """Count one judgement of an object of kind, and its failure if it raises (the exception goes on)."""
    RECONCILES.labels(kind=kind).inc()
    try:
        yield
    except Exception:
        RECONCILE_ERRORS.labels(kind=kind).inc()
        raise


@dataclass
class Health:
    """What the probes answer from. Liveness: the process answers and, once the controller acts, its event
    loop ticks. Readiness: the API server answers and this replica either acts with its controller started,
    or (leader election on) stands by for the Lease."""

    leader_election: bool
    api_check: Callable[[], object]
    """Raises when the API server cannot be reached (a cheap GET /version)."""
    clock: Callable[[], float] = time.monotonic
    leading: bool = False
    started: bool = False
    last_tick: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def lead(self, leading: bool) -> None:
        with self._lock:
            self.leading = leading
        LEADER.set(1 if leading else 0)

    def start(self) -> None:
        """The controller's startup ran (kopf's startup handler): it reconciles from now on."""
        with self._lock:
            self.started, self.last_tick = True, self.clock()

    def tick(self) -> None:
        with self._lock:
            self.last_tick = self.clock()

    def liveness(self) -> tuple[bool, str]:
        with self._lock:
            quiet = self.clock() - self.last_tick
            if self.started and quiet > STALL_SECONDS:
                return False, f"the controller's event loop has not run for {quiet:.0f} s"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        try:
            self.api_check()
        except Exception as exc:
            return False, f"cannot reach the Kubernetes API server: {exc}"
        with self._lock:
            if self.leader_election and not self.leading:
                return True, "standby: the API server answers; waiting for the Lease"
            if not self.started:
                return False, "the controller is starting"
        return True, "leader: reconciling" if self.leader_election else "reconciling"
