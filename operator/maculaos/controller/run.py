"""Start the controller: kopf over the handler registry, optionally behind a Lease-based leader election
so several replicas can run and exactly one acts."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
import uuid

import kopf

from maculaos.controller import memory
from maculaos.controller.fleet_metrics import Fleet
from maculaos.controller.handlers import build_registry
from maculaos.controller.metrics import Health
from maculaos.kube.leader import LeaseLock, Timings, acquire, hold
from maculaos.kube.rest import Credentials, KubeClient

log = logging.getLogger("maculaos.controller")

LEASE_NAME = "maculaos-controller"


def run_operator(resync_seconds: float, credentials: Credentials, stop: threading.Event | None = None,
                 health: Health | None = None, fleet: Fleet | None = None) -> None:
    """Run kopf until it stops (a signal in the main thread, stop set, or the process ends)."""
    memory.limit_arenas()
    memory.small_tls_buffers()
    if health is not None:
        health.lead(True)
    asyncio.run(kopf.operator(registry=build_registry(resync_seconds, credentials, health, fleet), clusterwide=True,
                              standalone=True, stop_flag=stop))


def _exit(code: int, why: str) -> None:
    # Like client-go's controllers: a replica that lost its lease exits so it cannot act on stale beliefs
    # (os._exit: the controller's threads must not run on); the Deployment restarts it as a follower.
    log.log(logging.ERROR if code else logging.INFO, why)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_with_leader_election(resync_seconds: float, namespace: str, credentials: Credentials,
                             lease_duration: int = 15, health: Health | None = None,
                             fleet: Fleet | None = None) -> None:
    """Block until this replica holds the Lease, then run the operator while renewing it.

    The leader renews every lease_duration/7 seconds and gives up after 2/3 of it without success,
    the proportions client-go uses (15s/10s/2s). SIGTERM or SIGINT stops the operator and releases the
    Lease, so a follower takes over at once."""
    memory.limit_arenas()  # before any thread starts
    identity = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    timings = Timings.for_lease(lease_duration)
    # Its own client: the Lease's requests are not the controller's (the rollout benchmark counts those).
    lock = LeaseLock(KubeClient(credentials, user_agent="maculaos-leader-election", connections=1),
                     namespace, LEASE_NAME, identity, timings)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info(f"waiting for leadership of Lease {namespace}/{LEASE_NAME} as {identity}")
    if not acquire(lock, stop):
        return
    log.info(f"{identity} is the leader: starting the controller")
    operator_stop, failed = threading.Event(), threading.Event()
    operator = threading.Thread(target=_lead, args=(resync_seconds, credentials, operator_stop, stop, failed,
                                                    health, fleet), name="operator", daemon=True)
    operator.start()
    if not hold(lock, stop):
        if health is not None:
            health.lead(False)
        _exit(1, "leader election lost: exiting")
    operator_stop.set()
    operator.join(timings.renew_deadline)
    if operator.is_alive():  # still acting: let the Lease expire rather than hand it over
        _exit(1, "the controller did not stop in time: exiting without releasing the Lease")
    lock.release()
    _exit(1 if failed.is_set() else 0, "the controller ended by itself" if failed.is_set() else "controller stopped")


def _lead(resync_seconds: float, credentials: Credentials, operator_stop: threading.Event,
          stop: threading.Event, failed: threading.Event, health: Health | None = None,
          fleet: Fleet | None = None) -> None:
    """The operator, in its own thread; when it ends by itself (not told to), it marks failed and stops
    the main thread's renewals."""
    try:
        run_operator(resync_seconds, credentials, operator_stop, health, fleet)
    except Exception:
        log.exception("the controller failed")
    if not operator_stop.is_set():
        failed.set()
        stop.set()
