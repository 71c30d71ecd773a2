"""Two operator replicas: exactly one acts; when it dies, the other takes over within the lease."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from maculaos.devenv.demo import start_operator
from maculaos.devenv.processes import ProcessRecord, free_port, is_running, stop
from tests.integration.conftest import Cluster, start_cluster
from tests.integration.scrape import get, scrape, value

LEASE_SECONDS = 6


@pytest.fixture
def own_cluster(tmp_path: Path, bin_dir: Path) -> Iterator[Cluster]:
    """A control plane of its own: this test kills operators, which must not disturb the shared one."""
    cluster = start_cluster(tmp_path / "controlplane", bin_dir)
    try:
        yield cluster
    finally:
        cluster.plane.stop()


def is_leader(record: ProcessRecord) -> bool:
    return "is the leader: starting the controller" in Path(record.log).read_text()


def meshrole(name: str) -> dict[str, Any]:
    return {"apiVersion": "os.macula.io/v1alpha1", "kind": "MeshRole", "metadata": {"name": name}, "spec": {}}


def test_one_replica_acts_and_the_other_takes_over(own_cluster: Cluster) -> None:
    cluster = own_cluster
    logs = cluster.plane.workdir / "logs"
    args = ("--leader-elect", f"--lease-duration={LEASE_SECONDS}")
    ports = free_port(), free_port()
    first = start_operator(cluster.plane.kubeconfig, logs, resync_seconds=2, name="operator-a", extra_args=args,
                           metrics_port=ports[0])
    replicas = [first]
    try:
        cluster.wait_for(lambda: is_leader(first), what="the first replica to lead")
        second = start_operator(cluster.plane.kubeconfig, logs, resync_seconds=2, name="operator-b",
                                extra_args=args, metrics_port=ports[1])
        replicas.append(second)
        cluster.apply(meshrole("before-failover"))
        cluster.wait_condition("MeshRole", "before-failover", "True")
        lease = cluster.kubectl("get", "lease", "-n", "maculaos-system", "maculaos-controller",
                                "-o", "jsonpath={.spec.holderIdentity}").stdout
        assert lease and not is_leader(second) and is_running(second)
        # Both ready: the leader reconciles, the standby reaches the API server and waits for the Lease.
        cluster.wait_for(lambda: get(ports[0], "/readyz") == (200, "leader: reconciling\n"), what="leader ready")
        cluster.wait_for(lambda: get(ports[1], "/readyz")[0] == 200, what="standby ready")
        assert get(ports[1], "/readyz")[1].startswith("standby")
        assert value(scrape(ports[0]), "maculaos_operator_leader") == 1
        assert value(scrape(ports[1]), "maculaos_operator_leader") == 0

        os.killpg(first.pid, signal.SIGKILL)  # no goodbye: the lease must expire on its own
        cluster.wait_for(lambda: is_leader(second), timeout=LEASE_SECONDS * 4, what="the second replica to lead")
        cluster.apply(meshrole("after-failover"))
        cluster.wait_condition("MeshRole", "after-failover", "True")
        assert get(ports[1], "/readyz") == (200, "leader: reconciling\n")
        assert value(scrape(ports[1]), "maculaos_operator_leader") == 1
        new_holder = cluster.kubectl("get", "lease", "-n", "maculaos-system", "maculaos-controller",
                                     "-o", "jsonpath={.spec.holderIdentity}").stdout
        assert new_holder and new_holder != lease
    finally:
        for record in replicas:
            stop(record)
