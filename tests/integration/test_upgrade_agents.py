"""Three real agents upgrade their simulated nodes with real RAUC, driven by NodeUpgrade grants.

The whole story with the real operator is test_upgrade_end_to_end.py. The tests here pin the agent's side of the contract step by step (docs/architecture.md): there the
test itself writes status.target and status.grants, with the operator stopped (`no_operator`), so each
grant and each refusal can be checked on its own. Everything else is real: the API server, three
`maculaos agent run` processes, each node's `rauc service` on its own D-Bus, bundles fetched over HTTP
and installed into file-backed slots, reboots through the agents' reboot command (the simulation's hook
restarts RAUC and the agent with the new boot state)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from maculaos.api import GROUP, VERSION
from maculaos.api.common import VERSION_LABEL
from maculaos.devenv.netns import create_netns, delete_netns, netns_name, nft_wrapper
from maculaos.devenv.nodes import create_host_root, demo_fleet
from maculaos.devenv.rauc import SimulatedRaucNode
from maculaos.kube.rest import MERGE_PATCH, now_rfc3339
from tests.fakes import fake_systemctl
from tests.host.rauc_fixtures import (  # noqa: F401  (fixtures)
    COMPATIBLE,
    BundleServer,
    Bundles,
    bundle_server,
    bundles,
    release_of,
)
from tests.integration.conftest import Cluster

NAME = "fleet-0-2-0"
NODES = [n.name for n in demo_fleet(3)]
SICKLY = "macula-pi-03"  # the node whose new slot fails its health window


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


@pytest.fixture(scope="module")
def rauc_fleet(cluster: Cluster, bundles: Bundles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaucFleet]:
    root = tmp_path_factory.mktemp("raucfleet")
    nodes: dict[str, SimulatedRaucNode] = {}
    namespaces = []
    try:
        for sim in demo_fleet(3):
            node = SimulatedRaucNode(root / sim.name, sim.name, COMPATIBLE, bundles.cert).create()
            nodes[sim.name] = node
            create_host_root(node.host_root, sim)
            node.boot()
            node.start_rauc()
            netns = netns_name(root, sim.name)
            create_netns(netns)
            namespaces.append(netns)
            nft = nft_wrapper(root / f"nft-{sim.name}", netns)
            systemctl = fake_systemctl(root / f"systemd-{sim.name}")
            node.start_agent([sys.executable, "-m", "maculaos", "agent", "run", f"--node-name={sim.name}",
                              f"--host-root={node.host_root}", f"--nft={nft}", f"--systemctl={systemctl}",
                              "--resync-seconds=3", f"--reboot-command={refusable_reboot(node)}",
                              f"--rauc={node.rauc_command}"],
                             {"KUBECONFIG": str(cluster.plane.kubeconfig), "PYTHONUNBUFFERED": "1"})
        yield RaucFleet(cluster, nodes, namespaces)
    finally:
        for node in nodes.values():
            node.shutdown()
            log = node.logs / f"agent-{node.layout.name}.log"
            if log.exists():
                print(log.read_text()[-3000:])
        for netns in namespaces:
            delete_netns(netns)


def test_three_agents_upgrade_and_one_rolls_back(rauc_fleet: RaucFleet, bundles: Bundles,
                                                 bundle_server: BundleServer, created: Any, no_operator: None) -> None:
    cluster = rauc_fleet.cluster
    created({"apiVersion": "os.macula.io/v1alpha1", "kind": "HealthCheck", "metadata": {"name": "sickly-b"},
             "spec": {"nodeSelector": {"matchLabels": {"macula.io/site": "shop"}},
                      "checks": [{"name": "service-port", "type": "tcp", "tcp": {"port": 9}, "interval": "1s", "timeout": "500ms"}]}})
    release = release_of(bundle_server, bundles.good)
    created({"apiVersion": "os.macula.io/v1alpha1", "kind": "NodeUpgrade", "metadata": {"name": NAME},
             "spec": {"version": "0.2.0", "source": {"url": release.url, "sha256": release.sha256},
                      "healthCommitWindow": "40s", "healthCheckWait": "2s"}})
    rauc_fleet.operator_writes({"target": {"version": "0.2.0", "url": release.url, "sha256": release.sha256,
                                           "size": release.size}})
    before = {}
    for node in NODES:
        entry = rauc_fleet.wait_phase(node, "Idle")
        assert (entry["version"], entry["slot"], entry["targetVersion"]) == ("0.1.0", "A", "0.2.0")
        before[node] = entry["bootId"]

    rauc_fleet.grant("Install", NODES)
    for node in NODES:
        entry = rauc_fleet.wait_phase(node, "Installed")
        assert entry["slot"] == "A" and entry["bootId"] == before[node], "an install disrupts nothing"

    rauc_fleet.grant("Reboot", NODES)
    for node in (n for n in NODES if n != SICKLY):
        entry = rauc_fleet.wait_phase(node, "Succeeded", timeout=120)
        assert (entry["version"], entry["slot"]) == ("0.2.0", "B")
        assert entry["bootId"] != before[node]
        cluster.wait_for(lambda n=node: cluster.get("Node", n)["metadata"]["labels"].get(VERSION_LABEL) == "0.2.0",
                         what=f"{node} labelled with 0.2.0")
        assert rauc_fleet.nodes[node].slot_state("B") == "good"

    entry = rauc_fleet.wait_phase(SICKLY, "RolledBack", timeout=180)
    assert (entry["version"], entry["slot"]) == ("0.1.0", "A")
    assert "health commit window" in entry["message"] and "sickly-b/service-port failing" in entry["message"]
    assert rauc_fleet.nodes[SICKLY].slot_state("B") == "bad"
    assert cluster.get("Node", SICKLY)["metadata"]["labels"].get(VERSION_LABEL) == "0.1.0"
    events = cluster.kubectl("get", "events", "-n", "default", "--field-selector",
                             f"involvedObject.name={NAME}", "-o", "jsonpath={range .items[*]}{.reason} {.message}|{end}")
    told = events.stdout.split("|")
    assert sum(e.startswith(f"UpgradeRolledBack {SICKLY}: ") for e in told) == 1, told
    assert sum(e.startswith("UpgradeSucceeded macula-nuc-02: ") for e in told) == 1, told

    # failurePolicy PauseAndRollback as the operator would run it: the upgraded nodes go back too.
    rauc_fleet.operator_writes({"grants": {SICKLY: None}})
    rauc_fleet.grant("Rollback", ["macula-nuc-01"])
    entry = rauc_fleet.wait_phase("macula-nuc-01", "RolledBack")
    assert (entry["version"], entry["slot"]) == ("0.1.0", "A") and "granted by the operator" in entry["message"]


def test_refusals_and_a_local_source_through_the_agents(rauc_fleet: RaucFleet, bundles: Bundles,
                                                         bundle_server: BundleServer, created: Any,
                                                         no_operator: None) -> None:
    """A wrong sha256 is reported Failed with the running slot untouched; a bundle from the node's own
    directory (spec.source.localPath, inside the host root) installs."""
    rauc_fleet.name = "local-0-3-0"
    usb = rauc_fleet.nodes["macula-nuc-02"].host_root / "media/usb"
    usb.mkdir(parents=True)
    (usb / bundles.newer.name).write_bytes(bundles.newer.read_bytes())
    created({"apiVersion": "os.macula.io/v1alpha1", "kind": "NodeUpgrade", "metadata": {"name": rauc_fleet.name},
             "spec": {"version": "0.3.0", "source": {"localPath": "/media/usb"},
                      "nodeSelector": {"matchLabels": {"macula.io/site": "warehouse"}}}})
    release = release_of(bundle_server, bundles.newer, version="0.3.0")
    rauc_fleet.operator_writes({"target": {"version": "0.3.0", "url": release.url, "sha256": "0" * 64}})
    rauc_fleet.grant("Install", ["macula-nuc-01"])
    entry = rauc_fleet.wait_phase("macula-nuc-01", "Failed")
    assert "sha256 mismatch" in entry["message"] and entry["slot"] == "A"

    rauc_fleet.operator_writes({"target": {"version": "0.3.0", "url": None, "sha256": None},
                                "grants": {"macula-nuc-01": None}})
    node = rauc_fleet.nodes["macula-nuc-02"]
    other = "B" if node.booted() == "A" else "A"
    rauc_fleet.grant("Install", ["macula-nuc-02"])
    entry = rauc_fleet.wait_phase("macula-nuc-02", "Installed")
    assert entry["targetVersion"] == "0.3.0" and f"slot {other}" in entry["message"]
    assert node.slot_version(other) == "0.3.0"


