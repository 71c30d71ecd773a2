"""NodeUpgrade rollouts against the real control plane, with the operator as its own process.

The node side is the real one where it fits the suite's time: `real_nodes`, a pool of simulated nodes
each with real RAUC and a real `maculaos agent run` (tests/integration/rauc_fleet.py), lent to one test
at a time under the test's `upgrade-test` label; each test stages its own version's bundle in the nodes'
`source.localPath`, so the pool's earlier upgrades do not matter. A scenario that needs more nodes than
a real node's cost allows keeps the STAND-IN AGENTS (tests/integration/upgrade_agents.py) and says why
in its docstring. Everything the operator
does — grants, cordon, Eviction-API drains under real PodDisruptionBudgets, status — goes through the
real API server and kube-controller-manager.
"""

from __future__ import annotations

import datetime as dt
import http.server
import itertools
import json
import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from maculaos.api.common import VERSION_LABEL
from maculaos.devenv.nodes import SimulatedNode, register_node
from maculaos.devenv.processes import ProcessRecord, stop
from maculaos.devenv.rauc import SimulatedRaucNode, build_bundle
from tests.host.rauc_fixtures import COMPATIBLE, Bundles
from tests.integration.conftest import Cluster, OperatorSupervisor
from tests.integration.rauc_fleet import shut_down, start_real_node
from tests.integration.upgrade_agents import Sampler, StandInAgents, simulated_fleet

NEW = "0.2.0"
Create = Callable[[dict[str, Any]], dict[str, Any]]


def upgrade(name: str, prefix: str, **spec: Any) -> dict[str, Any]:
    base = {"version": NEW, "source": {"localPath": "/var/lib/maculaos/bundles"},
            "nodeSelector": {"matchLabels": {"upgrade-test": prefix}},
            "healthCheckWait": "1s", "drain": {"timeout": "30s"}}
    return {"apiVersion": "os.macula.io/v1alpha1", "kind": "NodeUpgrade", "metadata": {"name": name},
            "spec": {**base, **spec}}


def status(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict(cluster.get("NodeUpgrade", name).get("status") or {})


def wait_phase(cluster: Cluster, name: str, phase: str, timeout: float = 120) -> dict[str, Any]:
    cluster.wait_for(lambda: status(cluster, name).get("phase") == phase, timeout,
                     lambda: f"NodeUpgrade {name} phase {phase}; status now {json.dumps(summary(cluster, name))}")
    return status(cluster, name)


def summary(cluster: Cluster, name: str) -> dict[str, Any]:
    s = status(cluster, name)
    return {"phase": s.get("phase"), "grants": s.get("grants"),
            "rollout": {n: (p.get("stage"), p.get("message")) for n, p in (s.get("rollout") or {}).items()},
            "conditions": [(c["type"], c["status"], c.get("message")) for c in s.get("conditions", [])]}


def events(cluster: Cluster, name: str) -> list[tuple[str, str]]:
    listing = client.CoreV1Api(cluster.api).list_namespaced_event(
        "default", field_selector=f"involvedObject.kind=NodeUpgrade,involvedObject.name={name}")
    return [(e.reason, e.message) for e in listing.items]


def cordoned(cluster: Cluster, nodes: list[str]) -> list[str]:
    core = client.CoreV1Api(cluster.api)
    return [n for n in nodes if core.read_node(n).spec.unschedulable]


@pytest.fixture
def fleet_of(cluster: Cluster) -> Iterator[Callable[[str, int], list[str]]]:
    stack: list[Any] = []

    def make(prefix: str, count: int) -> list[str]:
        context = simulated_fleet(cluster.api, prefix, count)
        stack.append(context)
        return context.__enter__()

    yield make
    for context in reversed(stack):
        context.__exit__(None, None, None)


POOL = 6
"""Real nodes in the pool: what the largest real-agent test here takes."""
BUNDLES = "/var/lib/maculaos/bundles"
"""Every test's source.localPath (see upgrade())."""


class RealNodes:
    """The pool of real nodes (real RAUC, real agents), and what a test needs to know of them."""

    def __init__(self, cluster: Cluster, bundles: Bundles, nodes: dict[str, SimulatedRaucNode]) -> None:
        self.cluster, self.bundles, self.nodes = cluster, bundles, nodes
        self._versions = itertools.count(1)

    def new_version(self) -> str:
        """A version above any the pool has run (the operator refuses a downgrade), whatever the tests' order."""
        return f"0.5.{next(self._versions)}"

    def stage(self, version: str, nodes: list[str] | None = None, signer: str = "fleet") -> None:
        """A bundle of version in the source.localPath of nodes (all by default), signed by the fleet's key
        or (signer "impostor") by one the nodes do not trust; it replaces what the nodes held for version."""
        built = self.bundles.dir / f"rollout-{version}-{signer}.raucb"
        if not built.exists():
            keys = self.bundles.dir / "keys"
            build_bundle(built, version, COMPATIBLE, keys / f"{signer}.cert.pem", keys / f"{signer}.key.pem")
        for name in nodes or list(self.nodes):
            directory = self.nodes[name].host_root / BUNDLES.lstrip("/")
            directory.mkdir(parents=True, exist_ok=True)
            (directory / f"rollout-{version}.raucb").write_bytes(built.read_bytes())

    def running(self, node: str) -> str:
        """The version in the slot the node booted (what RAUC installed there)."""
        return self.nodes[node].slot_version(self.nodes[node].booted())

    def reboots(self, node: str) -> int:
        """How often the node has rebooted (its reboot hook's log; the agent cannot fake it)."""
        log = self.nodes[node].logs / "reboot.log"
        return log.read_text().count(" rebooted into slot ") if log.exists() else 0

    def entry(self, node: str, upgrade: str) -> dict[str, Any]:
        """The node's agent's own entry for the NodeUpgrade, from its NodeReport."""
        found = self.cluster.kubectl("get", "nodereport", node, "-o", "json", check=False)
        if found.returncode != 0:
            return {}
        entries = (json.loads(found.stdout).get("status") or {}).get("entries") or {}
        return dict((entries.get(f"NodeUpgrade/{upgrade}") or {}).get("report") or {})


@pytest.fixture(scope="module")
def real_nodes(cluster: Cluster, bundles: Bundles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealNodes]:
    root = tmp_path_factory.mktemp("rollout-nodes")
    core = client.CoreV1Api(cluster.api)
    nodes: dict[str, SimulatedRaucNode] = {}
    namespaces: list[str] = []
    try:
        for i in range(POOL):
            sim = SimulatedNode(name=f"real-{i:02d}")
            register_node(core, sim)
            node, netns = start_real_node(cluster, root, sim, bundles.cert)
            nodes[sim.name], namespaces = node, [*namespaces, netns]
        yield RealNodes(cluster, bundles, nodes)
    finally:
        shut_down(list(nodes.values()), namespaces)
        for name in nodes:
            core.delete_node(name)


@pytest.fixture
def real_fleet_of(cluster: Cluster, real_nodes: RealNodes) -> Iterator[Callable[[str, int, str], list[str]]]:
    """Lend count nodes of the pool to this test: labelled upgrade-test=<prefix>, with a bundle of version
    staged; the label goes again afterwards."""
    core = client.CoreV1Api(cluster.api)
    lent: list[str] = []

    def lend(prefix: str, count: int, version: str) -> list[str]:
        assert count <= POOL, f"the pool has {POOL} real nodes"
        real_nodes.stage(version)
        names = sorted(real_nodes.nodes)[:count]
        for name in names:
            core.patch_node(name, {"metadata": {"labels": {"upgrade-test": prefix}}})
        lent.extend(names)
        return names

    yield lend
    for name in lent:
        core.patch_node(name, {"metadata": {"labels": {"upgrade-test": None}}})


def test_ten_nodes_rolling_with_max_unavailable_three(cluster: Cluster, operator: ProcessRecord, created: Create,
                                                      fleet_of: Callable[[str, int], list[str]]) -> None:
    """STAND-IN AGENTS: ten nodes in waves of three. A real node is an agent process, a `rauc service` and its
    bus, restarted at each reboot; ten of them (four more than the pool) and four waves of real reboots
    cost more than the suite's budget for this file allows, and the real-node tests here already cover a
    real agent's every step (the five-node rollout through operator kills rolls two at a time). The
    stand-ins play the same contract through the real API server; benchmarks/upgrade_rollout.py runs 50."""
    nodes = fleet_of("roll", 10)
    agents = StandInAgents(cluster.api, "roll", nodes).start()
    sampler = Sampler(cluster.api, "roll", nodes).start()
    try:
        created(upgrade("roll", "roll", strategy={"maxUnavailable": 3}))
        final = wait_phase(cluster, "roll", "Succeeded", timeout=180)
    finally:
        agents.stop()
        sampler.stop()
    assert not agents.errors
    assert 1 <= sampler.peak <= 3, f"peak disruption {sampler.peak}"
    assert final["upgradedNodes"] == 10 and final["failedNodes"] == 0 and final["grants"] == {}
    assert all(s.boots_into_new == 1 for s in agents.states.values())
    assert all(sampler.reboot_grants(n) == 1 for n in nodes)
    assert cordoned(cluster, nodes) == []
    core = client.CoreV1Api(cluster.api)
    assert {core.read_node(n).metadata.labels["os.macula.io/version"] for n in nodes} == {NEW}


def test_canary_stops_on_failure(cluster: Cluster, operator: ProcessRecord, created: Create, real_nodes: RealNodes,
                                 real_fleet_of: Callable[[str, int, str], list[str]]) -> None:
    """Six real nodes; the second one's new slot fails a HealthCheck (nothing listens on its port) for the
    whole health commit window, so its agent rolls it back by a second reboot."""
    version = real_nodes.new_version()
    nodes = real_fleet_of("canary", 6, version)
    before, reboots = real_nodes.running(nodes[1]), real_nodes.reboots(nodes[1])
    created({"apiVersion": "os.macula.io/v1alpha1", "kind": "HealthCheck", "metadata": {"name": "canary-sick"},
             "spec": {"nodeSelector": {"matchLabels": {"kubernetes.io/hostname": nodes[1]}},
                      "checks": [{"name": "service-port", "type": "tcp", "tcp": {"port": 9}, "interval": "1s",
                                  "timeout": "500ms"}]}})
    created(upgrade("canary", "canary", version=version, healthCommitWindow="20s",
                    failurePolicy={"maxFailedNodes": 3}, strategy={
                        "type": "canary", "maxUnavailable": 2,
                        "canary": {"percentage": "34%", "successThreshold": "100%"}}))
    final = wait_phase(cluster, "canary", "Failed", timeout=180)
    cluster.wait_for(lambda: cordoned(cluster, nodes) == [], 30, "the canary nodes uncordoned")
    assert final["canaryNodes"] == nodes[:3]
    failed = next(c for c in final["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "CanaryFailed"
    assert "successThreshold" in failed["message"]
    assert set(final["rollout"]) == set(nodes[:3]), "nodes beyond the canary wave were started"
    assert final["rollout"][nodes[1]]["stage"] == "RolledBack"
    assert "CanaryFailed" in [reason for reason, _ in events(cluster, "canary")]
    assert "canary-sick/service-port failing" in real_nodes.entry(nodes[1], "canary")["message"]
    assert (real_nodes.running(nodes[1]), real_nodes.reboots(nodes[1]) - reboots) == (before, 2)


def test_failure_budget_pauses_and_rolls_back(cluster: Cluster, operator: ProcessRecord, created: Create,
                                              real_nodes: RealNodes,
                                              real_fleet_of: Callable[[str, int, str], list[str]]) -> None:
    """Real nodes: the third one in line holds a bundle signed by a key the fleet does not trust, so its
    install fails; the two upgraded before it are rolled back by real reboots into their old slot."""
    version = real_nodes.new_version()
    nodes = real_fleet_of("budget", 4, version)
    real_nodes.stage(version, [nodes[2]], signer="impostor")
    before = {n: real_nodes.running(n) for n in nodes}
    reboots = {n: real_nodes.reboots(n) for n in nodes}
    sampler = Sampler(cluster.api, "budget", nodes).start()
    try:
        created(upgrade("budget", "budget", version=version,
                        failurePolicy={"maxFailedNodes": 0, "action": "PauseAndRollback"}))
        wait_phase(cluster, "budget", "Failed")
        cluster.wait_for(lambda: {p["stage"] for p in status(cluster, "budget")["rollout"].values()}
                         == {"Reverted", "Failed"} and not cordoned(cluster, nodes), 120,
                         lambda: f"upgraded nodes reverted: {summary(cluster, 'budget')}")
    finally:
        sampler.stop()
    final = status(cluster, "budget")
    assert final["rollout"][nodes[2]]["stage"] == "Failed"
    assert "signature verification failed" in final["rollout"][nodes[2]]["message"]
    assert {n for n, p in final["rollout"].items() if p["stage"] == "Reverted"} == set(nodes[:2])
    assert nodes[3] not in final["rollout"], "a node started after the budget was spent"
    assert sampler.peak <= 1
    assert {n: real_nodes.running(n) for n in nodes} == before, "every node back on the version it ran"
    assert {n: real_nodes.reboots(n) - reboots[n] for n in nodes} == {
        nodes[0]: 2, nodes[1]: 2, nodes[2]: 0, nodes[3]: 0}, "into the new slot and back, nothing more"
    assert "FailureBudgetExceeded" in [reason for reason, _ in events(cluster, "budget")]


def test_closed_maintenance_window_waits(cluster: Cluster, operator: ProcessRecord, created: Create,
                                         fleet_of: Callable[[str, int], list[str]]) -> None:
    nodes = fleet_of("window", 2)
    now = dt.datetime.now(dt.timezone.utc)
    closed_day = (now + dt.timedelta(days=3)).strftime("%a")
    created(upgrade("window", "window", maintenanceWindows=[
        {"days": [closed_day], "start": "00:00", "end": "00:01", "timeZone": "Asia/Tokyo"}]))
    final = wait_phase(cluster, "window", "Waiting")
    progressing = next(c for c in final["conditions"] if c["type"] == "Progressing")
    assert progressing["status"] == "False" and "outside every maintenance window" in progressing["message"]
    assert final["grants"] == {} and cordoned(cluster, nodes) == []


def running_pod(cluster: Cluster, namespace: str, name: str, node: str, labels: dict[str, str]) -> None:
    """A pod bound to node and marked Running and Ready through the status subresource (there is no kubelet):
    the API server ignores PodDisruptionBudgets for pods that are not Running."""
    core = client.CoreV1Api(cluster.api)
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "app", "image": "registry.invalid/app:1"}]}})
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    core.patch_namespaced_pod_status(name, namespace, {"status": {
        "phase": "Running", "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}]}})


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    core = client.CoreV1Api(cluster.api)
    name = f"drain-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    # Pods are refused until the ServiceAccount controller has made the namespace's "default" account
    # (a race on a control plane that has just started).
    cluster.wait_for(lambda: bool(core.list_namespaced_service_account(name, field_selector="metadata.name=default")
                                  .items), 30, f"the default ServiceAccount of {name}")
    yield name
    core.delete_namespace(name)


def pdb(cluster: Cluster, namespace: str, min_available: int) -> None:
    client.PolicyV1Api(cluster.api).create_namespaced_pod_disruption_budget(namespace, {
        "metadata": {"name": "web"}, "spec": {"minAvailable": min_available,
                                              "selector": {"matchLabels": {"app": "web"}}}})


def test_pdb_blocking_drain_times_out_and_uncordons(
        cluster: Cluster, operator: ProcessRecord, created: Create, real_nodes: RealNodes,
        real_fleet_of: Callable[[str, int, str], list[str]], namespace: str) -> None:
    """A real node: it installs (no disruption), its drain is blocked and times out, and it never reboots."""
    version = real_nodes.new_version()
    nodes = real_fleet_of("pdb", 1, version)
    reboots = real_nodes.reboots(nodes[0])
    running_pod(cluster, namespace, "web-0", nodes[0], {"app": "web"})
    running_pod(cluster, namespace, "free-0", nodes[0], {"app": "free"})
    pdb(cluster, namespace, 1)
    cluster.wait_for(lambda: client.PolicyV1Api(cluster.api).read_namespaced_pod_disruption_budget(
        "web", namespace).status.current_healthy == 1, 30, "the PDB counts web-0 healthy")
    created(upgrade("pdb", "pdb", version=version, drain={"timeout": "4s"}, failurePolicy={"maxFailedNodes": 1}))
    final = wait_phase(cluster, "pdb", "Failed", timeout=60)
    progress = final["rollout"][nodes[0]]
    assert progress["stage"] == "Failed"
    assert "drain timed out after 4s" in progress["message"]
    assert f"{namespace}/web-0 blocked by a PodDisruptionBudget" in progress["message"]
    core = client.CoreV1Api(cluster.api)
    assert [p.metadata.name for p in core.list_namespaced_pod(namespace).items] == ["web-0"], \
        "the pod without a PDB should have been evicted, the protected one kept"
    cluster.wait_for(lambda: cordoned(cluster, nodes) == [], 20, "the node uncordoned after the drain timeout")
    assert real_nodes.reboots(nodes[0]) == reboots, "a node whose drain failed rebooted"
    assert real_nodes.entry(nodes[0], "pdb")["phase"] == "Installed"
    assert "DrainTimeout" in [reason for reason, _ in events(cluster, "pdb")]


def test_pdb_blocking_drain_with_force_deletes_after_timeout(
        cluster: Cluster, operator: ProcessRecord, created: Create, real_nodes: RealNodes,
        real_fleet_of: Callable[[str, int, str], list[str]], namespace: str) -> None:
    """A real node: forced past its PDB, rebooted into the new slot once, committed."""
    version = real_nodes.new_version()
    nodes = real_fleet_of("force", 1, version)
    reboots = real_nodes.reboots(nodes[0])
    running_pod(cluster, namespace, "web-0", nodes[0], {"app": "web"})
    pdb(cluster, namespace, 1)
    created(upgrade("force", "force", version=version,
                    drain={"timeout": "3s", "force": True, "gracePeriodSeconds": 0}))
    final = wait_phase(cluster, "force", "Succeeded", timeout=120)
    assert final["rollout"][nodes[0]].get("forced") is True
    assert client.CoreV1Api(cluster.api).list_namespaced_pod(namespace).items == []
    assert "DrainForced" in [reason for reason, _ in events(cluster, "force")]
    assert cordoned(cluster, nodes) == []
    assert real_nodes.reboots(nodes[0]) == reboots + 1
    assert real_nodes.entry(nodes[0], "force")["version"] == version


def test_operator_killed_mid_rollout(
        cluster: Cluster, operator_supervisor: OperatorSupervisor, created: Create, real_nodes: RealNodes,
        real_fleet_of: Callable[[str, int, str], list[str]]) -> None:
    """Five real nodes; the operator SIGKILLed once a node drains and once one reboots (test_upgrade_faults.py
    kills it with leader election on, here the restart is the supervisor's)."""
    operator_supervisor.ensure_running()
    version = real_nodes.new_version()
    nodes = real_fleet_of("restart", 5, version)
    reboots = {n: real_nodes.reboots(n) for n in nodes}
    sampler = Sampler(cluster.api, "restart", nodes).start()
    kills = 0
    try:
        created(upgrade("restart", "restart", version=version, strategy={"maxUnavailable": 2}))
        for stage in ("Draining", "Rebooting"):
            # The sampler sees every stage, however short: a drain with no pods can be over between two polls.
            cluster.wait_for(lambda stage=stage: stage in sampler.stages, 60,
                             lambda stage=stage: f"a node in stage {stage}; seen {sorted(map(str, sampler.stages))}, "
                                     f"status now {json.dumps(summary(cluster, 'restart'))}")
            assert operator_supervisor.record is not None
            os.killpg(operator_supervisor.record.pid, signal.SIGKILL)  # a crash, mid-stage
            stop(operator_supervisor.record)  # reap it
            kills += 1
            operator_supervisor.ensure_running()
        final = wait_phase(cluster, "restart", "Succeeded", timeout=180)
    finally:
        sampler.stop()
    assert kills == 2
    assert final["upgradedNodes"] == 5
    assert all(sampler.reboot_grants(n) == 1 for n in nodes), sorted(sampler.grants)
    assert {n: real_nodes.reboots(n) - reboots[n] for n in nodes} == dict.fromkeys(nodes, 1)
    assert {n: real_nodes.running(n) for n in nodes} == dict.fromkeys(nodes, version)
    assert sampler.peak <= 2 and cordoned(cluster, nodes) == []


class _IndexHandler(http.server.BaseHTTPRequestHandler):
    index = b""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path != "/index.yaml":
            self.send_error(404)
            return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(self.index)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def index_server() -> Iterator[str]:
    _IndexHandler.index = f"""channels:
  stable:
    - {{version: 0.1.0, url: "http://127.0.0.1/b-0.1.0.raucb", sha256: "{'a' * 64}", size: 10}}
    - {{version: 0.3.0, url: "http://127.0.0.1/b-0.3.0.raucb", sha256: "{'b' * 64}", size: 30}}
  beta:
    - {{version: 0.4.0-rc.1, url: "http://127.0.0.1/b-0.4.0.raucb", sha256: "{'c' * 64}", size: 40}}
""".encode()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _IndexHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_release_index_sets_the_target_and_auto_apply_false_only_reports(
        cluster: Cluster, operator: ProcessRecord, created: Create, fleet_of: Callable[[str, int], list[str]],
        index_server: str) -> None:
    nodes = fleet_of("index", 2)
    spec = upgrade("index", "index", autoApply=False, source={"releaseIndex": f"{index_server}/index.yaml"})
    del spec["spec"]["version"]
    spec["spec"]["channel"] = "stable"
    created(spec)
    cluster.wait_for(lambda: status(cluster, "index").get("availableVersion") == "0.3.0", 30,
                     lambda: f"availableVersion 0.3.0: {summary(cluster, 'index')}")
    final = status(cluster, "index")
    assert final["target"] == {"version": "0.3.0", "url": "http://127.0.0.1/b-0.3.0.raucb",
                               "sha256": "b" * 64, "size": 30}
    assert final["phase"] == "Pending" and final["grants"] == {} and cordoned(cluster, nodes) == []
    assert "autoApply is false" in next(c for c in final["conditions"] if c["type"] == "Progressing")["message"]


def test_unreachable_release_index_is_reported(cluster: Cluster, operator: ProcessRecord, created: Create,
                                               fleet_of: Callable[[str, int], list[str]], index_server: str) -> None:
    fleet_of("noindex", 1)
    created(upgrade("noindex", "noindex", source={"releaseIndex": f"{index_server}/missing.yaml"}))
    condition = cluster.wait_condition("NodeUpgrade", "noindex", "False", ctype="ReleaseResolved")
    assert condition["message"] == f"release index {index_server}/missing.yaml: HTTP 404 Not Found"
    assert status(cluster, "noindex")["phase"] == "Pending"


def test_operator_on_the_node_it_upgrades_does_not_evict_itself(
        cluster: Cluster, operator_supervisor: OperatorSupervisor, created: Create, real_nodes: RealNodes,
        real_fleet_of: Callable[[str, int, str], list[str]], namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The single-node case: the operator's pod runs on the node being upgraded (downward-API env says so).
    A real node, upgraded and rebooted once."""
    version = real_nodes.new_version()
    nodes = real_fleet_of("solo", 1, version)
    reboots = real_nodes.reboots(nodes[0])
    running_pod(cluster, namespace, "maculaos-operator", nodes[0], {"app": "maculaos"})
    running_pod(cluster, namespace, "app-0", nodes[0], {"app": "app"})
    if operator_supervisor.record is not None:
        stop(operator_supervisor.record)
    for key, value in (("NODE_NAME", nodes[0]), ("POD_NAME", "maculaos-operator"), ("POD_NAMESPACE", namespace)):
        monkeypatch.setenv(key, value)
    operator_supervisor.record = None
    operator_supervisor.ensure_running()
    try:
        created(upgrade("solo", "solo", version=version))
        final = wait_phase(cluster, "solo", "Succeeded", timeout=120)
    finally:
        assert operator_supervisor.record is not None
        stop(operator_supervisor.record)  # the next test's operator starts without this env
        operator_supervisor.record = None
    assert final["upgradedNodes"] == 1
    pods = [p.metadata.name for p in client.CoreV1Api(cluster.api).list_namespaced_pod(namespace).items]
    assert pods == ["maculaos-operator"], "the operator evicted itself, or the app was not drained"
    assert cordoned(cluster, nodes) == []
    assert real_nodes.reboots(nodes[0]) == reboots + 1
    assert client.CoreV1Api(cluster.api).read_node(nodes[0]).metadata.labels[VERSION_LABEL] == version


def test_deleting_the_upgrade_mid_drain_uncordons(cluster: Cluster, operator: ProcessRecord, real_nodes: RealNodes,
                                                 real_fleet_of: Callable[[str, int, str], list[str]],
                                                 namespace: str) -> None:
    """No finalizers hold a NodeUpgrade, so it can vanish mid-rollout; the nodes it cordoned are released.
    A real node (it installs, then waits for a reboot grant that never comes)."""
    version = real_nodes.new_version()
    nodes = real_fleet_of("orphan", 1, version)
    running_pod(cluster, namespace, "web-0", nodes[0], {"app": "web"})
    pdb(cluster, namespace, 1)
    obj = upgrade("orphan", "orphan", version=version, drain={"timeout": "1h"})
    try:
        cluster.apply(obj)
        cluster.wait_for(lambda: cordoned(cluster, nodes) == nodes, 60, "the node cordoned for its drain")
        cluster.delete(obj)
        cluster.wait_for(lambda: cordoned(cluster, nodes) == [], 30, "the orphaned node uncordoned")
    finally:
        cluster.delete(obj)
    annotations = client.CoreV1Api(cluster.api).read_node(nodes[0]).metadata.annotations or {}
    assert "os.macula.io/cordoned-by" not in annotations
