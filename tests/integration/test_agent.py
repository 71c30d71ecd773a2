"""Three node agents as processes, each on its own sandbox host root with its own network namespace:
MeshRoles applied to real hosts (config.yaml, systemctl --root, nft), reported per node, and healed
after an agent crash or an API server outage."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from zeroconf import ServiceInfo, Zeroconf

from maculaos.agent.nodereport import Reporter
from maculaos.devenv.demo import start_agent
from maculaos.devenv.nodes import SimulatedNode, demo_fleet, register_node
from maculaos.devenv.processes import ProcessRecord, is_running, stop
from maculaos.host.config import read_config
from maculaos.host.discover import SERVICE
from tests.integration.agent_fleet import Fleet, agent_fleet
from tests.integration.conftest import API_SERVER_OUTAGE_SECONDS, Cluster, OperatorSupervisor, kube_of
from tests.integration.lookup import fetching_lookup

Create = Callable[[dict[str, Any]], dict[str, Any]]
NODES = [n.name for n in demo_fleet(3)]  # macula-nuc-01, macula-nuc-02 (warehouse), macula-pi-03 (shop)


@pytest.fixture(scope="module")
def fleet(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with agent_fleet(cluster, tmp_path_factory.mktemp("fleet")) as started:
        yield started


@pytest.fixture(autouse=True)
def folding(operator: ProcessRecord) -> ProcessRecord:
    """The agents write NodeReports; the operator folds them into status.nodes, which these tests read."""
    return operator


def meshrole(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "os.macula.io/v1alpha1", "kind": "MeshRole", "metadata": {"name": name}, "spec": spec}


WAREHOUSE = {"matchLabels": {"macula.io/site": "warehouse"}}


def test_every_node_starts_as_a_peer(fleet: Fleet) -> None:
    for node in fleet.nodes.values():
        fleet.cluster.wait_for(lambda n=node: "mdns discovery" in n.table() and n.enabled("macula-mesh.service"),
                               what=f"peer firewall and service on {node.name}")
        assert not node.enabled("macula-gateway.service")
        # the label is written after the host change, in the same pass: wait for it too
        fleet.cluster.wait_for(lambda n=node: fleet.node_labels(n.name).get("macula.io/role-peer") == "true",
                               what=f"the peer label on {node.name}")


def test_apply_change_and_delete(fleet: Fleet, created: Create, operator: ProcessRecord) -> None:
    created(meshrole("gateways", nodeSelector=WAREHOUSE, roles=["gateway"]))
    for node in ("macula-nuc-01", "macula-nuc-02"):
        entry = fleet.wait_phase("gateways", node, "Applied")
        assert entry["roles"] == "peer,gateway" and entry["observedGeneration"] == 1
        assert "no public address" in entry["message"]  # simulated nodes only have an InternalIP
        sim = fleet.nodes[node]
        assert sim.mesh_config()["roles"] == {"bootstrap": False, "gateway": True}
        # recorded with the ruleset, for the boot's apply (issue #15, story 5)
        assert read_config(sim.host_root)["maculaos"]["meshrole_security"]["firewall"]["allow_ssh"] is True
        assert sim.enabled("macula-gateway.service")
        assert 'tcp dport { 80, 443 } accept comment "gateway"' in sim.table()
        assert fleet.node_labels(node)["macula.io/role-gateway"] == "true"
    pi = fleet.nodes["macula-pi-03"]
    assert fleet.entry("gateways", pi.name) == {} and "gateway" not in pi.table()
    fleet.cluster.wait_for(lambda: fleet.cluster.get("MeshRole", "gateways")["status"].get("appliedNodes") == 2,
                           what="the operator to count 2 applied nodes")
    assert "peer,gateway" in fleet.cluster.kubectl("get", "meshrole", "gateways").stdout

    created(meshrole("gateways", nodeSelector=WAREHOUSE, roles=["gateway", "bootstrap"],
                     tlsMode="development", realm="io.macula"))
    entry = fleet.wait_phase("gateways", "macula-nuc-01", "Applied", generation=2)
    assert entry["roles"] == "peer,bootstrap,gateway"
    assert 'udp dport 443 accept comment "bootstrap quic"' in fleet.nodes["macula-nuc-01"].table()

    fleet.cluster.delete(meshrole("gateways"))
    nuc = fleet.nodes["macula-nuc-01"]
    fleet.cluster.wait_for(lambda: "macula.io/role-gateway" not in fleet.node_labels(nuc.name),
                           what="the gateway label removed")
    fleet.cluster.wait_for(lambda: not nuc.enabled("macula-gateway.service"), what="gateway service disabled")
    assert nuc.mesh_config()["roles"] == {"bootstrap": False, "gateway": False}
    assert "meshrole_security" not in read_config(nuc.host_root)["maculaos"]  # the record goes with the MeshRole
    assert "gateway" not in nuc.table() and "mdns discovery" in nuc.table()
    assert nuc.enabled("macula-mesh.service")


def test_conflict_applies_nothing_and_names_both(fleet: Fleet, created: Create, operator: ProcessRecord) -> None:
    created(meshrole("edge-a", nodeSelector={"matchLabels": {"kubernetes.io/hostname": "macula-pi-03"}},
                     roles=["gateway"]))
    fleet.wait_phase("edge-a", "macula-pi-03", "Applied")
    pi = fleet.nodes["macula-pi-03"]
    before = (pi.mesh_config(), pi.table())
    created(meshrole("edge-b", nodeSelector={"matchLabels": {"macula.io/site": "shop"}}, realm="com.example"))
    for name in ("edge-a", "edge-b"):
        entry = fleet.wait_phase(name, "macula-pi-03", "Conflict")
        assert "edge-a and edge-b" in entry["message"] and "realm" in entry["message"]
    assert (pi.mesh_config(), pi.table()) == before
    degraded = fleet.cluster.wait_condition("MeshRole", "edge-a", "True", ctype="Degraded")
    assert degraded["reason"] == "Conflict" and "macula-pi-03" in degraded["message"]


def test_agent_killed_mid_change_converges_after_restart(fleet: Fleet, created: Create) -> None:
    node = fleet.nodes["macula-nuc-02"]
    assert node.agent is not None
    os.killpg(node.agent.pid, signal.SIGKILL)
    created(meshrole("while-down", nodeSelector={"matchLabels": {"kubernetes.io/hostname": node.name}},
                     roles=["bootstrap"]))
    assert fleet.entry("while-down", node.name) == {}
    fleet.start(node)
    fleet.wait_phase("while-down", node.name, "Applied")
    assert node.enabled("macula-bootstrap.service")


def test_agent_killed_half_way_through_applying_finishes_after_restart(fleet: Fleet, created: Create) -> None:
    """SIGKILL after the new firewall is loaded but before config.yaml and the units follow: the host is
    half-changed, and the restarted agent completes the change rather than trusting its old state."""
    node = fleet.nodes["macula-nuc-01"]
    assert node.agent is not None
    fleet.cluster.wait_for(lambda: "mdns discovery" in node.table() and node.enabled("macula-mesh.service"),
                           what="the peer state applied first")
    marker = node.nft.with_name(f"{node.name}.applied")
    stalling = node.nft.with_name(f"{node.name}.stalling-nft")  # loads for real, then hangs
    stalling.write_text(f'#!/bin/sh\nip netns exec {node.netns} nft "$@"\nstatus=$?\n'
                        f'[ "$1" = -f ] && touch {marker} && sleep 600\nexit $status\n')
    stalling.chmod(0o755)
    os.killpg(node.agent.pid, signal.SIGKILL)
    node.agent = start_agent(fleet.cluster.plane.kubeconfig, fleet.log_dir, node.name, node.host_root, stalling,
                             resync_seconds=3, systemctl=str(node.systemctl))
    created(meshrole("half-way", nodeSelector={"matchLabels": {"kubernetes.io/hostname": node.name}},
                     roles=["bootstrap"]))
    fleet.cluster.wait_for(marker.exists, timeout=40, what="the agent loading the new ruleset")
    os.killpg(node.agent.pid, signal.SIGKILL)
    assert 'comment "bootstrap"' in node.table()
    assert node.mesh_config().get("roles", {}).get("bootstrap") is not True
    assert not node.enabled("macula-bootstrap.service")
    fleet.start(node)
    fleet.wait_phase("half-way", node.name, "Applied")
    assert node.mesh_config()["roles"]["bootstrap"] is True and node.enabled("macula-bootstrap.service")
    assert 'comment "bootstrap"' in node.table()


def test_api_server_outage(fleet: Fleet, created: Create, operator_supervisor: OperatorSupervisor) -> None:
    """An API server outage long enough to cost the operator its Lease: agents stay up and hosts keep their
    state; afterwards changes flow."""
    created(meshrole("outage", nodeSelector={"matchLabels": {"kubernetes.io/hostname": "macula-nuc-01"}},
                     roles=["gateway"]))
    fleet.wait_phase("outage", "macula-nuc-01", "Applied")
    nuc = fleet.nodes["macula-nuc-01"]
    before = (nuc.mesh_config(), nuc.table())
    fleet.cluster.plane.restart_apiserver(down_seconds=API_SERVER_OUTAGE_SECONDS)
    assert all(n.agent is not None and is_running(n.agent) for n in fleet.nodes.values())
    assert (nuc.mesh_config(), nuc.table()) == before
    # The operator lost its Lease in the outage and exited by design; its Deployment would restart it.
    fleet.cluster.wait_for(lambda: operator_supervisor.record is None or not is_running(operator_supervisor.record),
                           timeout=30, what="the operator to give up its lost Lease")
    operator_supervisor.ensure_running()
    created(meshrole("outage", nodeSelector={"matchLabels": {"kubernetes.io/hostname": "macula-nuc-01"}},
                     roles=["gateway", "bootstrap"]))
    fleet.wait_phase("outage", "macula-nuc-01", "Applied", generation=2)
    assert nuc.enabled("macula-bootstrap.service")


def test_a_bad_network_is_refused_at_the_door_and_the_node_keeps_its_firewall(fleet: Fleet, created: Create) -> None:
    """The schema keeps bad networks out (CEL isCIDR): the patch is refused naming the field, the object
    stays at its generation and the node's ruleset is untouched. What an older schema let through is
    reported Invalid by the node (tests/host/test_mesh.py)."""
    patch = '{"spec":{"firewall":{"extraPorts":[{"port":9100,"sources":["10.0.0.0/33"]}]}}}'
    created(meshrole("bad-cidr", nodeSelector={"matchLabels": {"kubernetes.io/hostname": "macula-nuc-02"}}))
    fleet.wait_phase("bad-cidr", "macula-nuc-02", "Applied")
    before = fleet.nodes["macula-nuc-02"].table()
    refused = fleet.cluster.kubectl("patch", "meshrole", "bad-cidr", "--type=merge", "-p", patch, check=False)
    assert refused.returncode != 0 and "spec.firewall.extraPorts[0].sources[0]" in refused.stderr, refused.stderr
    assert fleet.cluster.get("MeshRole", "bad-cidr")["metadata"]["generation"] == 1
    assert fleet.nodes["macula-nuc-02"].table() == before


def healthcheck(name: str, *checks: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "os.macula.io/v1alpha1", "kind": "HealthCheck", "metadata": {"name": name},
            "spec": {"checks": list(checks)}}


@pytest.fixture
def tcp_server() -> Iterator[int]:
    """A TCP service on loopback that accepts (and closes) every connection."""
    import socketserver
    import threading

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_healthy_checks_on_every_node(fleet: Fleet, created: Create, operator: ProcessRecord,
                                      tcp_server: int) -> None:
    created(healthcheck("loopback", {"name": "api", "type": "tcp", "tcp": {"port": tcp_server},
                                     "interval": "2s", "timeout": "1s"}))
    for node in NODES:
        entry = fleet.wait_phase("loopback", node, "Healthy", kind="HealthCheck")
        assert entry["checks"]["api"]["ok"] and "accepts connections" in entry["checks"]["api"]["output"]
        fleet.cluster.wait_for(lambda n=node: fleet.node_condition(n, "MaculaHealthy").get("status") == "True",
                               what=f"MaculaHealthy on {node}")
    fleet.cluster.wait_for(lambda: fleet.cluster.get("HealthCheck", "loopback")["status"].get("healthyNodes") == 3,
                           what=lambda: f"3 healthy nodes counted: {fleet.cluster.get('HealthCheck', 'loopback')}")


def test_an_unreachable_http_check_fails_every_node(fleet: Fleet, created: Create, operator: ProcessRecord) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    created(healthcheck("mesh-endpoint", {"name": "mesh", "type": "http", "http": {"url": f"http://127.0.0.1:{port}/health"},
                                          "interval": "1s", "timeout": "500ms", "failureThreshold": 2}))
    for node in NODES:
        entry = fleet.wait_phase("mesh-endpoint", node, "Unhealthy", kind="HealthCheck")
        assert entry["message"] == "failing: mesh" and "refused" in entry["checks"]["mesh"]["output"].lower()
        condition = fleet.node_condition(node, "MaculaHealthy")
        fleet.cluster.wait_for(lambda n=node: fleet.node_condition(n, "MaculaHealthy").get("status") == "False",
                               what=f"MaculaHealthy False on {node}")
    condition = fleet.node_condition("macula-nuc-01", "MaculaHealthy")
    assert condition["reason"] == "ChecksFailing" and "mesh-endpoint" in condition["message"]
    degraded = fleet.cluster.wait_condition("HealthCheck", "mesh-endpoint", "True", ctype="Degraded")
    assert degraded["reason"] == "Unhealthy"
    fleet.cluster.delete(healthcheck("mesh-endpoint"))
    fleet.cluster.wait_for(lambda: fleet.node_condition("macula-nuc-01", "MaculaHealthy").get("status") == "True",
                           what="MaculaHealthy back once the failing check is gone")


def test_a_disk_over_threshold_is_cleaned_and_reported(fleet: Fleet, created: Create) -> None:
    created(healthcheck("disk", {"name": "var-lib", "type": "disk", "disk": {"path": "/var/lib", "threshold": "0%"},
                                 "interval": "2s", "timeout": "1s", "failureThreshold": 1, "action": "cleanup"}))
    entry = fleet.wait_phase("disk", "macula-pi-03", "Unhealthy", kind="HealthCheck")
    fleet.cluster.wait_for(lambda: "logs: removed" in fleet.entry("disk", "macula-pi-03", "HealthCheck")
                           ["checks"]["var-lib"]["lastAction"], what="the clean-up report")
    assert "threshold 0%" in entry["checks"]["var-lib"]["output"]


def test_three_agents_never_share_an_object(fleet: Fleet, created: Create) -> None:
    """Each agent writes one object only, its own NodeReport, owned by its Node; the operator copies the
    entries into the MeshRole. No annotations or finalizers appear on the reports, nor any of the agents'
    on the MeshRole."""
    created(meshrole("everyone", roles=["gateway"]))
    for node in NODES:
        fleet.wait_phase("everyone", node, "Applied")
    mesh = fleet.cluster.get("MeshRole", "everyone")
    for node in NODES:
        report = fleet.cluster.get("NodeReport", node)
        owner = fleet.cluster.get("Node", node)["metadata"]["uid"]
        assert report["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Node", "name": node,
                                                          "uid": owner}]
        assert not report["metadata"].get("annotations") and not report["metadata"].get("finalizers")
        fields = json.loads(fleet.cluster.kubectl("get", "nodereport", node, "-o", "json",
                                                  "--show-managed-fields").stdout)["metadata"]["managedFields"]
        writers = {m["manager"] for m in fields}
        assert len(writers) == 1, f"NodeReport {node} written by {writers}"
        entry = report["status"]["entries"]["MeshRole/everyone"]
        assert entry["uid"] == mesh["metadata"]["uid"]
        fleet.cluster.wait_for(lambda n=node, e=entry: fleet.entry("everyone", n) == e["report"],
                               what=f"{node}'s entry folded as it is in its NodeReport")
    assert all(a.startswith(("controller.os.macula.io/", "kubectl.kubernetes.io/"))  # kopf's, for the operator
               for a in mesh["metadata"].get("annotations") or {})
    assert not mesh["metadata"].get("finalizers")
    table = fleet.cluster.kubectl("get", "nodereports").stdout
    assert table.split()[:4] == ["NAME", "OBJECTS", "UPDATED", "AGE"] and all(n in table for n in NODES)


def test_entries_go_with_their_node_and_never_pass_to_a_namesake(fleet: Fleet, created: Create) -> None:
    """A Node deleted takes its NodeReport (garbage collection) and its entries with it; an object deleted
    and created again under the same name does not show entries written about the old one."""
    core = client.CoreV1Api(fleet.cluster.api)
    ghost = SimulatedNode(name="macula-ghost-99", site="nowhere")
    register_node(core, ghost)
    created(meshrole("haunted", nodeSelector={"matchLabels": {"macula.io/site": "nowhere"}}))
    try:
        kube = kube_of(fleet.cluster.api)
        ghost_agent = Reporter(kube, ghost.name, fetching_lookup(kube))
        assert ghost_agent.node_entry("meshroles", "haunted", {"phase": "Applied", "message": "boo"})
        fleet.wait_phase("haunted", ghost.name, "Applied")

        fleet.cluster.delete(meshrole("haunted"))
        fleet.cluster.wait_for(lambda: fleet.cluster.kubectl("get", "meshrole", "haunted", check=False).returncode,
                               what="the MeshRole gone")
        created(meshrole("haunted", nodeSelector={"matchLabels": {"macula.io/site": "nowhere"}}))
        fleet.cluster.wait_condition("MeshRole", "haunted", "True")
        assert "MeshRole/haunted" in fleet.cluster.get("NodeReport", ghost.name)["status"]["entries"]
        assert fleet.entry("haunted", ghost.name) == {}, "an entry about the old object is not shown on the new"

        assert ghost_agent.node_entry("meshroles", "haunted", {"phase": "Applied", "message": "again"})
        fleet.wait_phase("haunted", ghost.name, "Applied")
    finally:
        core.delete_node(ghost.name)
    fleet.cluster.wait_for(lambda: fleet.cluster.kubectl("get", "nodereport", ghost.name, check=False).returncode,
                           timeout=60, what="the NodeReport garbage-collected with its Node")
    fleet.cluster.wait_for(lambda: fleet.entry("haunted", ghost.name) == {}, what="the gone node's entry removed")


def test_an_agent_lists_the_maculaos_nodes_on_its_lan_in_its_nodereport(fleet: Fleet) -> None:
    """Two nodes publish `_macula._tcp` by mDNS (here on loopback, where avahi would on a LAN), one of them
    under this node's own name. The agent, started with --lan-neighbours-seconds, lists the other in its
    NodeReport's status.lanNeighbours with what its TXT records say, and not itself; when the other node
    goes, the next look drops it; restarted without looking, it shows no list."""
    node = fleet.nodes["macula-pi-03"]
    assert node.agent is not None
    zeroconf = Zeroconf(interfaces=["127.0.0.1"])

    def service(instance: str, host: str, properties: dict[str, str]) -> ServiceInfo:
        return ServiceInfo(SERVICE, f"MaculaOS {instance}.{SERVICE}", port=6443, server=f"{host}.local.",
                           addresses=[socket.inet_aton("127.0.0.1")], properties=properties)

    other = service("shop-07", "shop-07", {"version": "0.4.0", "roles": "peer,gateway", "realm": "io.macula.test",
                                           "node-id": "macula-5b0a7c11"})
    zeroconf.register_service(other)
    zeroconf.register_service(service(node.name, node.name, {"version": "0.4.0", "roles": "peer"}))

    def listed() -> Any:
        return (fleet.cluster.get("NodeReport", node.name).get("status") or {}).get("lanNeighbours")

    def neighbours() -> Any:
        """The list as far as this test's two services go: `make test`'s other lane may publish nodes on
        loopback at the same time."""
        found = listed()
        return found if found is None else [n for n in found if n["host"] in ("shop-07.local", f"{node.name}.local")]

    stop(node.agent)
    fleet.start(node, lan_neighbours_seconds=2)
    try:
        fleet.cluster.wait_for(lambda: neighbours() not in (None, []), timeout=60,
                               what=lambda: f"the agent to list its LAN neighbours (now {neighbours()})")
        assert neighbours() == [{"nodeId": "macula-5b0a7c11", "host": "shop-07.local", "addresses": ["127.0.0.1"],
                                 "version": "0.4.0", "roles": ["peer", "gateway"], "realm": "io.macula.test"}]
        assert fleet.cluster.get("NodeReport", node.name)["status"]["lanNeighboursTime"]
        zeroconf.unregister_service(other)
        fleet.cluster.wait_for(lambda: neighbours() == [], timeout=60,
                               what=lambda: f"the agent to drop the node that went (now {neighbours()})")
    finally:
        zeroconf.close()
        stop(node.agent)
        fleet.start(node)
    # Started without looking, the agent shows no list at all (not an old one); its first pass writes.
    fleet.cluster.wait_for(lambda: listed() is None, timeout=60, what="the agent not looking to drop the list")
    assert "lanNeighboursTime" not in fleet.cluster.get("NodeReport", node.name)["status"]
