"""A fleet of three simulated nodes with real RAUC and real `maculaos agent run` processes against the
test control plane, shared by the NodeUpgrade agent tests and the end-to-end story (a fixture module,
registered in tests/conftest.py)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from maculaos.api import GROUP, VERSION
from maculaos.api.times import now_rfc3339
from maculaos.devenv.netns import create_netns, delete_netns, netns_name, nft_wrapper
from maculaos.devenv.nodes import SimulatedNode, create_host_root, demo_fleet
from maculaos.devenv.rauc import SimulatedRaucNode
from maculaos.kube.rest import MERGE_PATCH
from tests.fakes import fake_systemctl
from tests.host.rauc_fixtures import COMPATIBLE, Bundles
from tests.integration.conftest import Cluster

NAME = "fleet-0-2-0"
NODES = [n.name for n in demo_fleet(3)]
SICKLY = "macula-pi-03"  # the node whose new slot fails its health window
SICK_WINDOW = "20s"
"""healthCommitWindow where SICKLY fails its health on purpose: it rolls back only once the window is over,
so the test waits all of it. Long enough for a healthy node: its agent, started again by the reboot,
commits within about 5 s of the boot (three nodes rebooting at once); the canary test in
test_upgrade_rollout.py rolls two real nodes at a time within the same 20 s."""


@dataclass
class RaucFleet:
    cluster: Cluster
    nodes: dict[str, SimulatedRaucNode]
    netns: list[str]

    name: str = NAME

    def entry(self, node: str) -> dict[str, Any]:
        """The node's entry, read as the operator folds it: from the node's NodeReport (the real operator,
        which would copy it into status.nodes, is stopped), and only if it is about this very object."""
        uid = self.cluster.get("NodeUpgrade", self.name)["metadata"]["uid"]
        found = self.cluster.kubectl("get", "nodereport", node, "-o", "json", check=False)
        if found.returncode != 0:
            return {}
        entries = (json.loads(found.stdout).get("status") or {}).get("entries") or {}
        entry = entries.get(f"NodeUpgrade/{self.name}") or {}
        return dict(entry["report"]) if entry.get("uid") == uid else {}

    def wait_phase(self, node: str, phase: str, timeout: float = 60) -> dict[str, Any]:
        self.cluster.wait_for(lambda: self.entry(node).get("phase") == phase, timeout,
                              lambda: f"{node} {phase} (now {self.entry(node)}; agent log "
                                      f"{self.nodes[node].logs}/agent-{node}.log)")
        return self.entry(node)

    def operator_writes(self, status: dict[str, Any]) -> None:
        """The stand-in operator's write: a merge patch of status.target / status.grants."""
        client.CustomObjectsApi(self.cluster.api).patch_cluster_custom_object_status(
            GROUP, VERSION, "nodeupgrades", self.name, {"status": status}, _content_type=MERGE_PATCH)

    def grant(self, action: str, nodes: list[str]) -> None:
        self.operator_writes({"grants": {n: {"action": action, "time": now_rfc3339()} for n in nodes}})


def refusable_reboot(node: SimulatedRaucNode) -> Path:
    """The node's reboot hook behind a switch: a number N in `<node dir>/fail-reboots` makes the next N
    reboot commands fail, as `systemctl reboot` does when systemd refuses the job."""
    script = node.dir / "refusable-reboot"
    switch = node.dir / "fail-reboots"
    script.write_text(f'#!/bin/sh\nn=$(cat "{switch}" 2>/dev/null || echo 0)\n'
                      f'if [ "$n" -gt 0 ]; then echo $((n - 1)) > "{switch}"; '
                      'echo "Failed to start reboot.target: Transaction is destructive." >&2; exit 1; fi\n'
                      f'exec "{node.reboot_hook}"\n')
    script.chmod(0o755)
    return script


def start_real_node(cluster: Cluster, root: Path, sim: SimulatedNode, keyring: Path) -> tuple[SimulatedRaucNode, str]:
    """One simulated node of sim's name and labels with real RAUC and a real `maculaos agent run` against
    the test control plane; returns it and its network namespace (the caller shuts both down). Its Node is
    the caller's to register."""
    node = SimulatedRaucNode(root / sim.name, sim.name, COMPATIBLE, keyring).create()
    netns = netns_name(root, sim.name)
    try:
        create_host_root(node.host_root, sim)
        node.boot()
        node.start_rauc()
        create_netns(netns)
        nft = nft_wrapper(root / f"nft-{sim.name}", netns)
        systemctl = fake_systemctl(root / f"systemd-{sim.name}")
        node.start_agent([sys.executable, "-m", "maculaos", "agent", "run", f"--node-name={sim.name}",
                          f"--host-root={node.host_root}", f"--nft={nft}", f"--systemctl={systemctl}",
                          "--resync-seconds=3", f"--reboot-command={refusable_reboot(node)}",
                          f"--rauc={node.rauc_command}"],
                         {"KUBECONFIG": str(cluster.plane.kubeconfig), "PYTHONUNBUFFERED": "1"})
    except BaseException:  # half started: stop what did start, then hand the error on
        shut_down([node], [netns])
        raise
    return node, netns


def shut_down(nodes: list[SimulatedRaucNode], namespaces: list[str]) -> None:
    """Power the nodes off, all at once (each waits for its agent's and RAUC's exit), print the tail of each
    agent's log for a failing test, and drop their network namespaces."""
    with ThreadPoolExecutor(max_workers=max(len(nodes), 1)) as pool:
        list(pool.map(SimulatedRaucNode.shutdown, nodes))
    for node in nodes:
        log = node.logs / f"agent-{node.layout.name}.log"
        if log.exists():
            print(log.read_text()[-3000:])
    for netns in namespaces:
        delete_netns(netns)


@pytest.fixture(scope="module")
def rauc_fleet(cluster: Cluster, bundles: Bundles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaucFleet]:
    root = tmp_path_factory.mktemp("raucfleet")
    nodes: dict[str, SimulatedRaucNode] = {}
    namespaces = []
    try:
        for sim in demo_fleet(3):
            node, netns = start_real_node(cluster, root, sim, bundles.cert)
            nodes[sim.name] = node
            namespaces.append(netns)
        yield RaucFleet(cluster, nodes, namespaces)
    finally:
        shut_down(list(nodes.values()), namespaces)
