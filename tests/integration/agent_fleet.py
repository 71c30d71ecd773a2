"""Simulated nodes with their real agents, as processes: each on its own sandbox host root with its own
network namespace and nft, systemd played by the tests' systemctl stand-in. Shared by the agent tests and
the GitOps tests (where Flux, not kubectl, changes the MeshRoles)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maculaos.devenv.demo import start_agent
from maculaos.devenv.netns import create_netns, delete_netns, netns_name, nft_wrapper
from maculaos.devenv.nodes import create_host_root, demo_fleet
from maculaos.devenv.processes import ProcessRecord, stop
from maculaos.host.config import read_config
from maculaos.host.systemd import Systemd
from tests.fakes import fake_systemctl
from tests.integration.conftest import Cluster


@dataclass
class SimNode:
    name: str
    host_root: Path
    nft: Path
    netns: str
    systemctl: Path
    agent: ProcessRecord | None = None

    def table(self) -> str:
        return subprocess.run([str(self.nft), "list", "table", "inet", "maculaos"], capture_output=True,
                              text=True).stdout

    def mesh_config(self) -> dict[str, Any]:
        return dict(read_config(self.host_root).get("maculaos", {}).get("mesh", {}))

    def enabled(self, unit: str) -> bool:
        return Systemd(self.host_root).is_enabled(unit)


@dataclass
class Fleet:
    cluster: Cluster
    nodes: dict[str, SimNode]
    log_dir: Path

    def start(self, node: SimNode, lan_neighbours_seconds: float = 0) -> None:
        node.agent = start_agent(self.cluster.plane.kubeconfig, self.log_dir, node.name, node.host_root, node.nft,
                                 resync_seconds=3, systemctl=str(node.systemctl),
                                 lan_neighbours_seconds=lan_neighbours_seconds)

    def entry(self, name: str, node: str, kind: str = "MeshRole") -> dict[str, Any]:
        return dict(((self.cluster.get(kind, name).get("status") or {}).get("nodes") or {}).get(node) or {})

    def node_labels(self, node: str) -> dict[str, str]:
        return dict(self.cluster.get("Node", node)["metadata"].get("labels") or {})

    def wait_phase(self, name: str, node: str, phase: str, generation: int | None = None,
                   kind: str = "MeshRole") -> dict[str, Any]:
        def done() -> bool:
            entry = self.entry(name, node, kind)
            return entry.get("phase") == phase and (generation is None or entry.get("observedGeneration") == generation)
        self.cluster.wait_for(done, timeout=40, what=f"{name} on {node} {phase} (now {self.entry(name, node, kind)})")
        return self.entry(name, node, kind)

    def node_condition(self, node: str, ctype: str) -> dict[str, Any]:
        conditions = self.cluster.get("Node", node).get("status", {}).get("conditions", [])
        return next((c for c in conditions if c["type"] == ctype), {})


@contextmanager
def agent_fleet(cluster: Cluster, root: Path, count: int = 3) -> Iterator[Fleet]:
    """The first `count` nodes of the demo fleet, each with its agent running; stopped (and their logs'
    tails printed) on the way out."""
    nodes = {}
    for sim in demo_fleet(count):
        name = netns_name(root, sim.name)
        create_netns(name)
        host_root = create_host_root(root / sim.name, sim)
        nodes[sim.name] = SimNode(sim.name, host_root, nft_wrapper(root / f"nft-{sim.name}", name), name,
                                  fake_systemctl(root / f"systemd-{sim.name}"))
    fleet = Fleet(cluster, nodes, root / "logs")
    try:
        for node in nodes.values():
            fleet.start(node)
        yield fleet
    finally:
        for node in nodes.values():
            if node.agent:
                stop(node.agent)
                print(Path(node.agent.log).read_text()[-3000:])
            delete_netns(node.netns)
