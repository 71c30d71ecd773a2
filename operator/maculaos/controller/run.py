"""Start the controller: kopf over the handler registry, optionally behind a Lease-based leader election
so several replicas can run and exactly one acts."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import uuid

import kopf
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

from maculaos.controller.handlers import build_registry

log = logging.getLogger("maculaos.controller")

LEASE_NAME = "maculaos-controller"


def run_operator(resync_seconds: float) -> None:
    """Run kopf until it stops (signal in the main thread, or the process ends)."""
    asyncio.run(kopf.operator(registry=build_registry(resync_seconds), clusterwide=True, standalone=True))


def _lost_leadership() -> None:
    # Like client-go's controllers: a replica that lost its lease exits so it cannot act on stale beliefs;
    # the Deployment restarts it as a follower.
    log.error("leader election lost: exiting")
    sys.stdout.flush()
    os._exit(1)


def run_with_leader_election(resync_seconds: float, namespace: str, lease_duration: int = 15) -> None:
    """Block until this replica holds the Lease, then run the operator while renewing it.

    The leader renews every lease_duration/7 seconds and gives up after 2/3 of it without success,
    the proportions client-go uses (15s/10s/2s)."""
    identity = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    lock = LeaseLock(LEASE_NAME, namespace, identity)
    config = electionconfig.Config(
        lock, lease_duration, lease_duration * 2 // 3, max(1, lease_duration // 7),
        onstarted_leading=lambda: _lead(resync_seconds, identity),
        onstopped_leading=_lost_leadership)
    logging.getLogger("leaderelection").setLevel(logging.WARNING)  # it logs every renewal at INFO
    log.info(f"waiting for leadership of Lease {namespace}/{LEASE_NAME} as {identity}")
    leaderelection.LeaderElection(config).run()


def _lead(resync_seconds: float, identity: str) -> None:
    log.info(f"{identity} is the leader: starting the controller")
    run_operator(resync_seconds)
    _lost_leadership()
