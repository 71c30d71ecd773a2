"""Decommissioning a node on the real control plane: the real operator (a process, resyncing every 2 s)
cordons, drains, grants and deletes; the node's side is the agent's decommission step (agent/decommission.py)
run in a thread against a sandbox host root whose ESP holds the build's grub.cfg and a real GRUB
environment (read back with the real grub-editenv); the reboot command is a stub that leaves a file."""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from maculaos.agent.decommission import reset_when_granted
from maculaos.agent.nodereport import Reporter
from maculaos.api.decommission import DECOMMISSION_ANNOTATION, GRANTED_ANNOTATION, RESET_ANNOTATION
from maculaos.cli import main
from maculaos.controller.nodeupgrade import CORDON_ANNOTATION
from maculaos.devenv.processes import ProcessRecord
from maculaos.host.grubenv import GRUB_CFG, GRUBENV
from maculaos.image import grub
from maculaos.kube.rest import resource_path
from tests.integration.conftest import Cluster, kube_of
from tests.integration.test_upgrade_rollout import running_pod
from tests.integration.upgrade_agents import simulated_fleet


def grub_env(root: Path) -> dict[str, str]:
    out = subprocess.run(["grub-editenv", str(root / GRUBENV), "list"], capture_output=True, text=True,
                         check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def sandbox(root: Path, esp: bool = True) -> Path:
    if esp:
        (root / GRUB_CFG).parent.mkdir(parents=True)
        (root / GRUB_CFG).write_text(grub.grub_config("console=ttyS0 ro quiet"))
        grub.initial_environment(root / GRUBENV, ["A"])
    else:
        root.mkdir(parents=True)
    return root


class NodeSide:
    """The agent's decommission step for one node, every 0.2 s, until stopped or the Node is gone."""

    def __init__(self, cluster: Cluster, node: str, host_root: Path) -> None:
        self.kube = kube_of(cluster.api)
        self.node, self.host_root = node, host_root
        self.marker = host_root / "rebooted"
        self.reporter = Reporter(self.kube, node, lambda plural, name: None)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(0.2):
            try:
                obj = self.kube.get(resource_path("v1", "nodes", self.node))
            except Exception:
                continue
            reset_when_granted(obj, self.host_root, f"touch {self.marker}", self.reporter)

    def __enter__(self) -> NodeSide:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    core = client.CoreV1Api(cluster.api)
    name = f"decom-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    cluster.wait_for(lambda: bool(core.list_namespaced_service_account(name).items), 20,
                     "the namespace's default ServiceAccount")
    yield name
    core.delete_namespace(name)


def node_events(cluster: Cluster, node: str) -> list[tuple[str, str]]:
    listing = client.CoreV1Api(cluster.api).list_event_for_all_namespaces(
        field_selector=f"involvedObject.kind=Node,involvedObject.name={node}")
    return [(e.reason, e.message) for e in listing.items]


def annotate(cluster: Cluster, node: str, value: str) -> None:
    client.CoreV1Api(cluster.api).patch_node(node, {"metadata": {"annotations": {DECOMMISSION_ANNOTATION: value}}})


def gone(cluster: Cluster, node: str) -> bool:
    try:
        client.CoreV1Api(cluster.api).read_node(node)
    except ApiException as exc:
        return exc.status == 404
    return False


def test_an_annotated_node_is_drained_reset_rebooted_and_removed(
        cluster: Cluster, operator: ProcessRecord, namespace: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Asked with `maculaos decommission NODE --confirm`, which sets the annotation (keep-data)."""
    core = client.CoreV1Api(cluster.api)
    monkeypatch.setenv("KUBECONFIG", str(cluster.plane.kubeconfig))
    root = sandbox(tmp_path / "host")
    with simulated_fleet(cluster.api, "decom-ok", 1) as (node,), NodeSide(cluster, node, root) as side:
        running_pod(cluster, namespace, "app-0", node, {"app": "app"})
        before = grub_env(root)
        assert main(["decommission", node]) == 2
        assert "--confirm" in capsys.readouterr().out
        assert DECOMMISSION_ANNOTATION not in cluster.get("Node", node)["metadata"].get("annotations", {})
        assert main(["decommission", node, "--confirm"]) == 0
        cluster.wait_for(lambda: gone(cluster, node), 45,
                         lambda: f"the Node to be deleted (events {node_events(cluster, node)})")
        assert core.list_namespaced_pod(namespace).items == [], "the pod was not drained"
        assert grub_env(root) == before | {"FACTORY_RESET": "keep-data"}
        assert side.marker.exists(), "the reboot command did not run"
        reasons = [r for r, _ in node_events(cluster, node)]
        for reason in ("DecommissionCordoned", "DecommissionGranted", "FactoryResetScheduled", "Decommissioned"):
            assert reason in reasons, reasons
        assert main(["decommission", node, "--confirm"]) == 1
        assert f"no node {node} in the cluster" in capsys.readouterr().err


def test_a_bad_value_is_told_and_changes_nothing(cluster: Cluster, operator: ProcessRecord, tmp_path: Path) -> None:
    core = client.CoreV1Api(cluster.api)
    root = sandbox(tmp_path / "host")
    with simulated_fleet(cluster.api, "decom-bad", 1) as (node,), NodeSide(cluster, node, root) as side:
        before = grub_env(root)
        annotate(cluster, node, "everything")
        cluster.wait_for(lambda: "DecommissionInvalid" in [r for r, _ in node_events(cluster, node)], 20,
                         "the Event about the bad value")
        message = dict(node_events(cluster, node))["DecommissionInvalid"]
        assert DECOMMISSION_ANNOTATION in message and "keep-data, all" in message and "'everything'" in message
        obj = core.read_node(node)
        assert not obj.spec.unschedulable and GRANTED_ANNOTATION not in (obj.metadata.annotations or {})
        assert grub_env(root) == before and not side.marker.exists()


def test_a_node_that_cannot_schedule_the_reset_says_so_and_stays(
        cluster: Cluster, operator: ProcessRecord, tmp_path: Path) -> None:
    """No MaculaOS ESP (a node not booted from a MaculaOS disk): reported, no reboot, the Node kept.
    Removing the annotation then withdraws the grant and the failed answer."""
    root = sandbox(tmp_path / "host", esp=False)
    with simulated_fleet(cluster.api, "decom-noesp", 1) as (node,), NodeSide(cluster, node, root) as side:
        annotate(cluster, node, "all")
        cluster.wait_for(lambda: "DecommissionFailed" in [r for r, _ in node_events(cluster, node)], 30,
                         lambda: f"the operator to tell the failure (events {node_events(cluster, node)})")
        reasons = dict(node_events(cluster, node))
        assert "no GRUB environment" in reasons["FactoryResetFailed"]
        assert "no GRUB environment" in reasons["DecommissionFailed"]
        obj = cluster.get("Node", node)
        assert obj["spec"]["unschedulable"] and obj["metadata"]["annotations"][RESET_ANNOTATION].startswith("failed: ")
        assert not side.marker.exists(), "rebooted although the reset was not scheduled"
        client.CoreV1Api(cluster.api).patch_node(node, {"metadata": {"annotations": {DECOMMISSION_ANNOTATION: None}}})
        cluster.wait_for(lambda: not {GRANTED_ANNOTATION, RESET_ANNOTATION}
                         & cluster.get("Node", node)["metadata"].get("annotations", {}).keys(), 20,
                         "the grant and the answer withdrawn, so a new annotation starts afresh")
        assert "DecommissionWithdrawn" in dict(node_events(cluster, node))


def test_a_node_a_nodeupgrade_holds_waits_for_it(cluster: Cluster, operator: ProcessRecord, tmp_path: Path) -> None:
    """Cordoned by a NodeUpgrade (here one that no longer exists, which the operator releases the node
    from): decommissioning waits, says so, and starts once the upgrade let the node go."""
    core = client.CoreV1Api(cluster.api)
    with simulated_fleet(cluster.api, "decom-upg", 1) as (node,):
        core.patch_node(node, {"spec": {"unschedulable": True},
                               "metadata": {"annotations": {CORDON_ANNOTATION: "gone-upgrade",
                                                            DECOMMISSION_ANNOTATION: "keep-data"}}})
        cluster.wait_for(lambda: "DecommissionCordoned" in [r for r, _ in node_events(cluster, node)], 30,
                         lambda: f"decommissioning to start (events {node_events(cluster, node)})")
        reasons = dict(node_events(cluster, node))
        assert "NodeUpgrade gone-upgrade is upgrading this node" in reasons["DecommissionWaiting"]
