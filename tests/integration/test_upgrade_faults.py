"""Faults in the middle of a rollout, with the real operator, the real agents and real RAUC on simulated
nodes (the rauc_fleet fixture). Each test rolls the two warehouse nodes (maxUnavailable 1) to a new
version, injects one fault while the first node is granted its reboot, and ends with the same proof:
the rollout Succeeded with both nodes on the new version, each node rebooted exactly once and granted
exactly one reboot, never more than one node cordoned or NotReady at once, nobody left cordoned and no
grant left behind.

- the operator SIGKILLed: a new process takes the Lease over and finishes from what the API server
  holds (status.rollout, the grants, the nodes' reports), not from anything the dead one remembered;
- the leader frozen (SIGSTOP) past its Lease and resumed: the standby finishes the rollout, the old
  leader steps down on waking without writing anything;
- the API server down while a node reboots, long enough to cost the operator its Lease: agents and
  RAUC carry on, the operator (restarted as its Deployment would) picks the rollout up and the status
  catches up.

Bad input (one NodeUpgrade per node, several at once): a bundle signed by a key the nodes do not trust,
one for another architecture, a wrong sha256, a release index naming a missing file, the HTTP server
gone mid-download, a full-size bundle for a small data partition. Each fails the node's install with the
cause in the NodeUpgrade's status, before any disruption: never cordoned, never granted a reboot, never
rebooted, slots and bootloader state unchanged.

Aborting: a NodeUpgrade deleted, or paused, while its first node holds the Reboot grant. Every node ends
on the old version or the new one, committed (it boots the slot it runs, marked good), none cordoned.

Version skew: the operator of release N (SKEW_REF, exported from git) with this checkout's agents, and
this checkout's operator with agents N; each rolls the warehouse out as usual.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import maculaos
from maculaos.devenv.demo import start_operator
from maculaos.devenv.processes import ProcessRecord, free_port, is_running, spawn, stop
from maculaos.devenv.rauc import SLOTS, SimulatedRaucNode, build_bundle
from maculaos.host.nodeupgrade import STATE_DIR
from tests.diskfull import small_tmpfs
from tests.host.rauc_fixtures import COMPATIBLE, Bundles, BundleServer, release_of
from tests.integration.conftest import API_SERVER_OUTAGE_SECONDS, OPERATOR_LEASE_SECONDS, OperatorSupervisor
from tests.integration.rauc_fleet import NODES, RaucFleet
from tests.integration.test_upgrade_end_to_end import WAREHOUSE, _reboots
from tests.integration.upgrade_agents import Sampler


def nodeupgrade(name: str, version: str, url: str, sha256: str, window: str, max_failed: int = 0) -> dict[str, Any]:
    return {"apiVersion": "os.macula.io/v1alpha1", "kind": "NodeUpgrade", "metadata": {"name": name},
            "spec": {"version": version, "source": {"url": url, "sha256": sha256},
                     "nodeSelector": {"matchLabels": {"macula.io/site": "warehouse"}},
                     "strategy": {"maxUnavailable": 1}, "failurePolicy": {"maxFailedNodes": max_failed},
                     "healthCommitWindow": window, "healthCheckWait": "2s"}}


class Rollout:
    """One NodeUpgrade of the warehouse nodes to `version`, sampled from creation to the end."""

    def __init__(self, fleet: RaucFleet, bundles: Bundles, server: BundleServer, created: Callable[..., Any],
                 name: str, version: str, window: str = "40s", max_failed: int = 0) -> None:
        self.fleet, self.cluster, self.name, self.version = fleet, fleet.cluster, name, version
        fleet.name = name
        bundle = build_bundle(bundles.dir / f"good-{version}.raucb", version, COMPATIBLE, bundles.cert,
                              bundles.dir / "keys" / "fleet.key.pem")
        release = release_of(server, bundle, version=version)
        self.reboots = {n: _reboots(fleet, n) for n in WAREHOUSE}
        self.sampler = Sampler(self.cluster.api, name, WAREHOUSE).start()
        created(nodeupgrade(name, version, release.url, release.sha256 or "", window, max_failed))

    def status(self) -> dict[str, Any]:
        return dict(self.cluster.get("NodeUpgrade", self.name).get("status") or {})

    def wait_first_reboot_grant(self) -> str:
        """The node the operator has granted a Reboot (cordoned, about to go down)."""
        def granted() -> str:
            return next((n for n, g in (self.status().get("grants") or {}).items() if g["action"] == "Reboot"), "")
        self.cluster.wait_for(lambda: bool(granted()), timeout=120,
                              what=lambda: f"a Reboot grant (now {self.status()})")
        return granted()

    def wait_done(self, timeout: float = 180) -> dict[str, Any]:
        try:
            self.cluster.wait_for(lambda: self.status().get("phase") in ("Succeeded", "Failed"), timeout=timeout,
                                  what=lambda: f"the rollout to finish (now {self.status()})")
        finally:
            self.sampler.stop()
        return self.status()

    def assert_nothing_lost(self, status: dict[str, Any]) -> None:
        assert (status["phase"], status["upgradedNodes"], status["failedNodes"]) == ("Succeeded", 2, 0), status
        for node in WAREHOUSE:
            entry = self.fleet.entry(node)
            assert (entry["phase"], entry["version"]) == ("Succeeded", self.version), entry
            assert self.sampler.reboot_grants(node) == 1, f"{node}: one reboot grant ({self.sampler.grants})"
            assert _reboots(self.fleet, node) == self.reboots[node] + 1, f"{node} rebooted exactly once"
        assert self.sampler.peak == 1, "never more than maxUnavailable nodes cordoned or down at once"
        assert not any(self.cluster.get("Node", n).get("spec", {}).get("unschedulable") for n in WAREHOUSE), \
            "nobody left cordoned"
        assert status["grants"] == {}, "no grant outlives the rollout"


@pytest.fixture
def replicas(rauc_fleet: RaucFleet, no_operator: None) -> Iterator[Callable[[str], ProcessRecord]]:
    """Start operator replicas of this test's own (short Lease); the shared one is stopped meanwhile."""
    started: list[ProcessRecord] = []
    plane = rauc_fleet.cluster.plane

    def start(name: str) -> ProcessRecord:
        record = start_operator(plane.kubeconfig, plane.workdir / "logs", resync_seconds=2, name=name,
                                extra_args=("--leader-elect", f"--lease-duration={OPERATOR_LEASE_SECONDS}"),
                                metrics_port=free_port())
        started.append(record)
        return record

    yield start
    for record in started:
        if is_running(record):
            os.killpg(record.pid, signal.SIGCONT)
        stop(record)


def is_leader(record: ProcessRecord) -> bool:
    return "is the leader: starting the controller" in Path(record.log).read_text()


def test_an_operator_killed_mid_rollout_is_replaced_and_the_new_one_finishes(
        rauc_fleet: RaucFleet, bundles: Bundles, bundle_server: BundleServer, created: Any,
        replicas: Callable[[str], ProcessRecord]) -> None:
    """SIGKILL (no goodbye, the Lease expires on its own) while the first node holds its Reboot grant."""
    first = replicas("operator-killed")
    rauc_fleet.cluster.wait_for(lambda: is_leader(first), what="the first operator to lead")
    rollout = Rollout(rauc_fleet, bundles, bundle_server, created, "killed-0-6-0", "0.6.0")
    rollout.wait_first_reboot_grant()
    os.killpg(first.pid, signal.SIGKILL)
    replicas("operator-replacement")
    rollout.assert_nothing_lost(rollout.wait_done())


def test_a_frozen_leader_resumed_after_losing_its_lease_does_nothing_twice(
        rauc_fleet: RaucFleet, bundles: Bundles, bundle_server: BundleServer, created: Any,
        replicas: Callable[[str], ProcessRecord]) -> None:
    """SIGSTOP the leader while a node holds its Reboot grant; the standby takes the Lease and goes on;
    the old leader is resumed once the standby leads, and must step down without acting."""
    frozen = replicas("operator-frozen")
    rauc_fleet.cluster.wait_for(lambda: is_leader(frozen), what="the first operator to lead")
    standby = replicas("operator-standby")
    rollout = Rollout(rauc_fleet, bundles, bundle_server, created, "frozen-0-7-0", "0.7.0")
    rollout.wait_first_reboot_grant()
    os.killpg(frozen.pid, signal.SIGSTOP)
    rauc_fleet.cluster.wait_for(lambda: is_leader(standby), timeout=OPERATOR_LEASE_SECONDS * 4,
                                what="the standby to lead")
    os.killpg(frozen.pid, signal.SIGCONT)
    rauc_fleet.cluster.wait_for(lambda: not is_running(frozen), timeout=OPERATOR_LEASE_SECONDS * 2,
                                what="the resumed old leader to step down")
    assert "leader election lost" in Path(frozen.log).read_text()
    rollout.assert_nothing_lost(rollout.wait_done())


def test_an_api_server_outage_mid_wave_is_ridden_out(
        rauc_fleet: RaucFleet, bundles: Bundles, bundle_server: BundleServer, created: Any,
        operator_supervisor: OperatorSupervisor) -> None:
    """The API server away (API_SERVER_OUTAGE_SECONDS) while the first node reboots into its new slot. The
    operator loses its Lease and exits (by design; its Deployment restarts it, here the supervisor). The
    health commit window outlasts the outage: the agent judges its new slot only once it reads the
    NodeUpgrade again, and a window that ends in the outage rolls a healthy node back (see
    docs/architecture.md)."""
    operator = operator_supervisor.ensure_running()
    rollout = Rollout(rauc_fleet, bundles, bundle_server, created, "outage-0-8-0", "0.8.0", window="120s")
    rollout.wait_first_reboot_grant()
    rauc_fleet.cluster.plane.restart_apiserver(down_seconds=API_SERVER_OUTAGE_SECONDS)
    agents = [SimulatedRaucNode.load(n.dir).layout.agent for n in rauc_fleet.nodes.values()]  # reboots restart them
    assert all(a is not None and is_running(a) for a in agents), "the agents rode the outage out"
    rauc_fleet.cluster.wait_for(lambda: not is_running(operator), timeout=30,
                                what="the operator to give up its lost Lease")
    operator_supervisor.ensure_running()
    rollout.assert_nothing_lost(rollout.wait_done())


def test_a_node_whose_disk_is_full_fails_alone_and_a_new_rollout_finishes_it(
        rauc_fleet: RaucFleet, bundles: Bundles, bundle_server: BundleServer, created: Any,
        operator_supervisor: OperatorSupervisor) -> None:
    """One warehouse node's bundles directory on a 1 MiB tmpfs (maxFailedNodes 1): that node's install
    fails naming the lack of space and it is never cordoned or rebooted; the other node upgrades, never
    more than one disrupted at once. Once the node has room and the failed NodeUpgrade is deleted (while it
    exists it holds its nodes), a new one of the same version brings the node along (the upgraded one is
    already there) and nothing is left behind."""
    operator_supervisor.ensure_running()
    full = WAREHOUSE[1]
    node = rauc_fleet.nodes[full]
    booted = node.booted()
    with small_tmpfs(node.host_root / STATE_DIR / "bundles", 1024 * 1024) as directory:
        rollout = Rollout(rauc_fleet, bundles, bundle_server, created, "full-0-9-0", "0.9.0", max_failed=1)
        status = rollout.wait_done()
        assert not list(directory.glob("*0.9.0*")), "nothing half-downloaded holds the space"
    assert (status["phase"], status["upgradedNodes"], status["failedNodes"]) == ("Failed", 1, 1), status
    entry = rauc_fleet.entry(full)
    assert entry["phase"] == "Failed" and "not enough space" in entry["message"], entry
    assert node.booted() == booted and rollout.reboots[full] == _reboots(rauc_fleet, full), "never rebooted"
    assert rollout.sampler.reboot_grants(full) == 0 and rollout.sampler.peak <= 1
    assert status["grants"] == {}

    rauc_fleet.cluster.kubectl("delete", "nodeupgrade", "full-0-9-0", "--wait=true", "--timeout=60s")
    retry = Rollout(rauc_fleet, bundles, bundle_server, created, "full-retry-0-9-0", "0.9.0")
    status = retry.wait_done()
    assert (status["phase"], status["upgradedNodes"], status["failedNodes"]) == ("Succeeded", 2, 0), status
    assert rauc_fleet.entry(full)["version"] == "0.9.0"
    assert _reboots(rauc_fleet, full) == rollout.reboots[full] + 1 and retry.sampler.peak <= 1
    assert not any(rauc_fleet.cluster.get("Node", n).get("spec", {}).get("unschedulable") for n in WAREHOUSE)


# ---- bad input: refused before any disruption ---------------------------------------------------------------

def _one_node_upgrade(name: str, node: str, version: str, source: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "os.macula.io/v1alpha1", "kind": "NodeUpgrade", "metadata": {"name": name},
            "spec": {"version": version, "source": source,
                     "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": node}},
                     "failurePolicy": {"maxFailedNodes": 0}, "healthCheckWait": "2s"}}


def _disk(node: SimulatedRaucNode) -> dict[str, str]:
    """What a refused upgrade must leave as it was: both slots' bytes and the bootloader's state."""
    seen = {slot: hashlib.sha256((node.host_root / slot).read_bytes()).hexdigest() for slot, _ in SLOTS}
    seen.update({f"boot/{f.name}": f.read_text() for f in sorted(node.boot_state.iterdir())})
    return seen


@contextmanager
def vanishing_server(bundle: Path) -> Iterator[str]:
    """Serves half of bundle to the first request, then goes away: its port closed, every later
    connection (the agent's resumes) refused. Yields the bundle's URL."""
    data = bundle.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            threading.Thread(target=lambda: (httpd.shutdown(), httpd.server_close()), daemon=True).start()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/{bundle.name}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _refused(fleet: RaucFleet, cases: dict[str, tuple[str, dict[str, Any], str]], created: Callable[..., Any],
             version: str) -> None:
    """Each node (key) gets a NodeUpgrade of its own (name, source, a phrase its refusal must say); each
    fails that node's install, and the node is never cordoned, granted a reboot or rebooted, its slots and
    bootloader state unchanged; the NodeUpgrades are deleted after."""
    cluster = fleet.cluster
    disks = {n: _disk(fleet.nodes[n]) for n in cases}
    boots = {n: (fleet.nodes[n].booted(), _reboots(fleet, n)) for n in cases}
    samplers = {n: Sampler(cluster.api, name, [n], period=0.2).start() for n, (name, _, _) in cases.items()}
    objects = [created(_one_node_upgrade(name, n, version, source)) for n, (name, source, _) in cases.items()]
    try:
        for node, (name, _, says) in cases.items():
            def status(name: str = name) -> dict[str, Any]:
                return dict(cluster.get("NodeUpgrade", name).get("status") or {})
            cluster.wait_for(lambda s=status: s().get("phase") == "Failed", timeout=60,
                             what=lambda s=status: f"the bad input to fail the rollout (now {s()})")
            final = status()
            assert final["rollout"][node]["stage"] == "Failed", final
            message = final["rollout"][node]["message"]
            assert message.startswith("install failed: not installed, slot ") and says in message, message
            assert says in final["nodes"][node]["message"], final["nodes"]
            assert final["failedNodes"] == 1 and final["grants"] == {}, final
    finally:
        for sampler in samplers.values():
            sampler.stop()
    for node, sampler in samplers.items():
        assert sampler.peak == 0, f"{node} was cordoned or went NotReady"
        assert {action for _, action, _ in sampler.grants} == {"Install"}, sampler.grants
        assert (fleet.nodes[node].booted(), _reboots(fleet, node)) == boots[node], f"{node} rebooted"
        assert _disk(fleet.nodes[node]) == disks[node], f"{node}'s slots or bootloader state changed"
    for obj in objects:  # a Failed NodeUpgrade holds its nodes while it exists
        cluster.kubectl("delete", "nodeupgrade", obj["metadata"]["name"], "--wait=true", "--timeout=60s")


def test_bad_bundles_are_refused_before_any_disruption_and_named_in_the_status(
        rauc_fleet: RaucFleet, bundles: Bundles, bundle_server: BundleServer, created: Any,
        operator_supervisor: OperatorSupervisor) -> None:
    """Through a NodeUpgrade each, with the real operator, agents and RAUC: a bundle signed by a key the
    nodes do not trust, one built for another architecture, a wrong sha256, a release index naming a file
    the server does not have, a server that goes away mid-download, and a release index's 290 MB bundle
    for a node whose data partition has 200 MiB (refused by its size before a connection). The install
    comes before the cordon, so each is refused with the node still in service."""
    operator_supervisor.ensure_running()
    keys = bundles.dir / "keys"
    version = "0.10.0"
    impostor = build_bundle(bundles.dir / f"impostor-{version}.raucb", version, COMPATIBLE,
                            keys / "impostor.cert.pem", keys / "impostor.key.pem")
    arm = build_bundle(bundles.dir / f"arm-{version}.raucb", version, "maculaos-arm64", bundles.cert,
                       keys / "fleet.key.pem")
    good = build_bundle(bundles.dir / f"good-{version}.raucb", version, COMPATIBLE, bundles.cert,
                        keys / "fleet.key.pem")

    def url_source(bundle: Path, sha256: str = "") -> dict[str, Any]:
        release = release_of(bundle_server, bundle, version=version)
        return {"url": release.url, "sha256": sha256 or release.sha256}
    nuc1, nuc2, pi3 = NODES
    _refused(rauc_fleet, {
        nuc1: ("bad-signer", url_source(impostor), "signature verification failed"),
        nuc2: ("bad-arch", url_source(arm), "bundle is for 'maculaos-arm64', this node is 'maculaos-amd64'"),
        pi3: ("bad-sha256", url_source(good, "0" * 64), "sha256 mismatch"),
    }, created, version)

    def index(name: str, url: str, size: int) -> dict[str, Any]:
        (bundles.dir / name).write_text(f'channels:\n  stable:\n    - {{version: {version}, url: "{url}", '
                                        f'sha256: "{"a" * 64}", size: {size}}}\n')
        return {"releaseIndex": bundle_server.url(name)}
    missing = bundle_server.url(f"missing-{version}.raucb")
    small = rauc_fleet.nodes[pi3].host_root / STATE_DIR / "bundles"
    with vanishing_server(good) as vanishing, small_tmpfs(small, 200 * 2**20):
        _refused(rauc_fleet, {
            nuc1: ("bad-index-entry", index("index-missing-file.yaml", missing, good.stat().st_size),
                   f"download of {missing} failed: HTTP 404"),
            nuc2: ("server-gone", {"url": vanishing, "sha256": release_of(bundle_server, good, version).sha256},
                   "Connection refused); the partial file is deleted"),
            # a full bundle (290 MB, as the index says) for a 200 MiB data partition: refused before connecting
            pi3: ("too-big", index("index-full-bundle.yaml", bundle_server.url(good.name), 290_000_000),
                  "not enough space for 0.10.0 in "),
        }, created, version)
        assert not list(small.iterdir()), "nothing downloaded"
    half_fed = rauc_fleet.nodes[nuc2].host_root / STATE_DIR / "bundles"
    assert not list(half_fed.iterdir()), "the half the vanished server sent is not left on the data partition"


# ---- aborting: deleted or paused mid-rollout ----------------------------------------------------------------

def _settled(fleet: RaucFleet, node: str) -> str:
    """Why node is not yet settled ("" when it is): committed (it boots the slot it runs, marked good) and
    no upgrade step of its own under way."""
    sim = fleet.nodes[node]
    booted = sim.booted()
    primary = (sim.boot_state / "primary").read_text().strip()
    state = sim.host_root / STATE_DIR / "state.json"
    phase = json.loads(state.read_text())["phase"] if state.exists() else "Idle"
    if (primary, sim.slot_state(booted)) != (booted, "good"):
        return f"{node} boots {primary} next, its running slot {booted} is {sim.slot_state(booted)}"
    if phase in ("Downloading", "Installing", "Rebooting", "Committing"):
        return f"{node}'s upgrade is {phase}"
    return ""


def _nobody_stranded(rollout: Rollout, before: dict[str, str], timeout: float = 90) -> dict[str, str]:
    """Wait until every warehouse node is settled and uncordoned; each then runs its old version or the new
    one. Returns the version each runs."""
    fleet, cluster = rollout.fleet, rollout.cluster

    def problems() -> list[str]:
        cordoned = [n for n in WAREHOUSE if cluster.get("Node", n).get("spec", {}).get("unschedulable")]
        return [p for p in (_settled(fleet, n) for n in WAREHOUSE) if p] + [f"{n} cordoned" for n in cordoned]
    cluster.wait_for(lambda: not problems(), timeout, lambda: f"every node settled ({problems()})")
    running = {n: fleet.nodes[n].slot_version(fleet.nodes[n].booted()) for n in WAREHOUSE}
    assert all(running[n] in (before[n], rollout.version) for n in WAREHOUSE), (before, running)
    for node in WAREHOUSE:
        annotations = cluster.get("Node", node)["metadata"].get("annotations") or {}
        assert "os.macula.io/cordoned-by" not in annotations, annotations
    return running


def test_a_nodeupgrade_deleted_while_a_node_reboots_strands_nobody(
        rauc_fleet: RaucFleet, bundles: Bundles, bundle_server: BundleServer, created: Any,
        operator_supervisor: OperatorSupervisor) -> None:
    """Deleted while the first node holds its Reboot grant (cordoned, going down; the second may be
    installing meanwhile): the first boots the new slot and its agent commits it on its own (no NodeUpgrade
    left to judge by: the default health window), the operator uncordons what the deleted object cordoned,
    the second stays on the version it runs, and no node is left cordoned or on an unconfirmed slot."""
    operator_supervisor.ensure_running()
    before = {n: rauc_fleet.nodes[n].slot_version(rauc_fleet.nodes[n].booted()) for n in WAREHOUSE}
    rollout = Rollout(rauc_fleet, bundles, bundle_server, created, "deleted-0-11-0", "0.11.0")
    try:
        first = rollout.wait_first_reboot_grant()
        rauc_fleet.cluster.kubectl("delete", "nodeupgrade", rollout.name, "--wait=true", "--timeout=30s")
        state = json.loads((rauc_fleet.nodes[first].host_root / STATE_DIR / "state.json").read_text())
        assert state["phase"] in ("Installed", "Rebooting", "Committing"), f"{first} finished before the delete"
        rauc_fleet.cluster.wait_for(lambda: _reboots(rauc_fleet, first) == rollout.reboots[first] + 1, 60,
                                    f"{first} to take its granted reboot")
        running = _nobody_stranded(rollout, before)
    finally:
        rollout.sampler.stop()
    second = next(n for n in WAREHOUSE if n != first)
    assert running == {first: "0.11.0", second: before[second]}, running
    assert _reboots(rauc_fleet, second) == rollout.reboots[second], f"{second} rebooted"
    assert rollout.sampler.peak <= 1


def test_a_nodeupgrade_paused_mid_rollout_lets_the_node_in_flight_finish_and_resumes(
        rauc_fleet: RaucFleet, bundles: Bundles, bundle_server: BundleServer, created: Any,
        operator_supervisor: OperatorSupervisor) -> None:
    """spec.paused set while the first node holds its Reboot grant: that node finishes (rebooted,
    committed, uncordoned), the second's pending install is withdrawn and it is never disrupted; the
    rollout says Paused. Unpaused, it finishes."""
    operator_supervisor.ensure_running()
    cluster = rauc_fleet.cluster
    before = {n: rauc_fleet.nodes[n].slot_version(rauc_fleet.nodes[n].booted()) for n in WAREHOUSE}
    rollout = Rollout(rauc_fleet, bundles, bundle_server, created, "paused-0-12-0", "0.12.0")

    def pause(paused: bool) -> None:
        cluster.kubectl("patch", "nodeupgrade", rollout.name, "--type=merge", "-p",
                        json.dumps({"spec": {"paused": paused}}))
    try:
        first = rollout.wait_first_reboot_grant()
        pause(True)
        second = next(n for n in WAREHOUSE if n != first)
        cluster.wait_for(lambda: rollout.status().get("phase") == "Paused"
                         and (rollout.status().get("rollout") or {}).get(first, {}).get("stage") == "Succeeded",
                         90, lambda: f"the rollout Paused with {first} finished (now {rollout.status()})")
        running = _nobody_stranded(rollout, before)
        paused = rollout.status()
        assert running == {first: "0.12.0", second: before[second]}, running
        assert second not in (paused.get("rollout") or {}) and paused["grants"] == {}, paused
        assert rollout.sampler.reboot_grants(second) == 0 and _reboots(rauc_fleet, second) == rollout.reboots[second]
        pause(False)
        final = rollout.wait_done(timeout=120)
    finally:
        rollout.sampler.stop()
    rollout.assert_nothing_lost(final)


# ---- version skew: operator and agents one release apart ----------------------------------------------------

SKEW_REF = "13f4d3c"
"""Release N of the skew tests (docs/architecture.md, "Version skew"): main before NodeUpgrade's
spec.healthCheckSelector, a field N+1 (this checkout) added. Move it to the last release when one is cut."""


@pytest.fixture(scope="module")
def release_n(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The maculaos package of SKEW_REF, to put first on an operator's or agent's PYTHONPATH."""
    into = tmp_path_factory.mktemp("release-n")
    repo = Path(__file__).resolve().parents[2]
    archive = subprocess.run(["git", "-C", str(repo), "archive", SKEW_REF, "operator"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    package = into / "operator"
    imported = subprocess.run([sys.executable, "-c", "import maculaos; print(maculaos.__file__)"], check=True,
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(package)})
    assert imported.stdout.startswith(str(package)), f"release N is not what runs: {imported.stdout}"
    return package


def test_skew_an_operator_one_release_older_rolls_out_with_new_agents(
        rauc_fleet: RaucFleet, bundles: Bundles, bundle_server: BundleServer, created: Any,
        operator_supervisor: OperatorSupervisor, release_n: Path) -> None:
    """Operator N (SKEW_REF) and agents N+1: the nodes that upgraded first run the new image's agent while
    the operator is still the old one's. The rollout ends as any other."""
    operator_supervisor.stop()
    plane = rauc_fleet.cluster.plane
    _, old = spawn("operator-release-n", [sys.executable, "-m", "maculaos", "operator", "run", "--no-leader-elect",
                                          "--resync-seconds=2", f"--metrics-port=127.0.0.1:{free_port()}"],
                   plane.workdir / "logs", env={"KUBECONFIG": str(plane.kubeconfig), "PYTHONUNBUFFERED": "1",
                                                "PYTHONPATH": str(release_n)})
    try:
        rollout = Rollout(rauc_fleet, bundles, bundle_server, created, "skew-old-operator-0-13-0", "0.13.0")
        rollout.assert_nothing_lost(rollout.wait_done())
    finally:
        stop(old)


def test_skew_new_operator_with_agents_one_release_older(
        rauc_fleet: RaucFleet, bundles: Bundles, bundle_server: BundleServer, created: Any,
        operator_supervisor: OperatorSupervisor, release_n: Path) -> None:
    """Operator N+1 (this checkout, upgraded first through its chart) and agents N (SKEW_REF) on nodes
    still on the old image: the rollout ends as any other. A NodeUpgrade that uses a field N+1 added
    (healthCheckSelector) is refused by an N agent, which says so in its entry; nothing is disrupted, and the
    operator says so in the NodeUpgrade (NotActedOn, Outcome, phase Waiting) instead of waiting quietly."""
    operator_supervisor.ensure_running()
    def restart_agent(name: str, env: dict[str, str], argv: list[str]) -> None:
        node = SimulatedRaucNode.load(rauc_fleet.nodes[name].dir)  # as the last reboot left it (its bus, its agent)
        node.stop_agent()
        node.start_agent(argv, env)

    def old_agent(name: str) -> tuple[dict[str, str], list[str]]:
        """Release N's agent; its reboot command runs this checkout's simulated firmware (the hook is
        Python too, and would otherwise import release N's, which cannot read this node's layout)."""
        argv, env = current[name]
        firmware = rauc_fleet.nodes[name].dir / "reboot-with-this-checkout"
        firmware.write_text(f"#!/bin/sh\nPYTHONPATH={Path(maculaos.__file__).parents[1]} exec "
                            f"{rauc_fleet.nodes[name].dir / 'refusable-reboot'}\n")
        firmware.chmod(0o755)
        argv = [f"--reboot-command={firmware}" if a.startswith("--reboot-command=") else a for a in argv]
        return {**env, "PYTHONPATH": str(release_n)}, argv
    warehouse = [rauc_fleet.nodes[n] for n in WAREHOUSE]
    current = {n.layout.name: (list(n.layout.agent_argv or []), dict(n.layout.agent_env or {})) for n in warehouse}
    try:
        for name in WAREHOUSE:
            restart_agent(name, *old_agent(name))
        rollout = Rollout(rauc_fleet, bundles, bundle_server, created, "skew-old-agents-0-14-0", "0.14.0")
        rollout.assert_nothing_lost(rollout.wait_done())
        assert all(SimulatedRaucNode.load(n.dir).layout.agent_env == old_agent(n.layout.name)[0] for n in warehouse), \
            "the agents restarted by the reboots are release N's"

        bundle = build_bundle(bundles.dir / "good-0.15.0.raucb", "0.15.0", COMPATIBLE, bundles.cert,
                              bundles.dir / "keys" / "fleet.key.pem")
        release = release_of(bundle_server, bundle, version="0.15.0")
        unknown = nodeupgrade("skew-new-field-0-15-0", "0.15.0", release.url, release.sha256 or "", "40s")
        unknown["spec"]["healthCheckSelector"] = {"matchLabels": {"judge": "upgrades"}}
        rauc_fleet.name = "skew-new-field-0-15-0"
        sampler = Sampler(rauc_fleet.cluster.api, rauc_fleet.name, WAREHOUSE, period=0.2).start()
        try:
            created(unknown)
            rauc_fleet.cluster.wait_for(
                lambda: "not acted on" in rauc_fleet.entry(WAREHOUSE[0]).get("message", ""), 30,
                lambda: f"the N agent to refuse the N+1 field ({rauc_fleet.entry(WAREHOUSE[0])})")
            entry = rauc_fleet.entry(WAREHOUSE[0])
            assert entry["phase"] == "Idle" and "Extra inputs are not permitted" in entry["message"], entry

            def surfaced() -> dict[str, Any]:
                """The NodeUpgrade itself says so once every N agent refused: no grant left, nothing waited on."""
                status = dict(rauc_fleet.cluster.get("NodeUpgrade", rauc_fleet.name).get("status") or {})
                said = next((c for c in status.get("conditions") or [] if c["type"] == "NotActedOn"), {})
                done = said.get("status") == "True" and all(n in said.get("message", "") for n in WAREHOUSE) \
                    and status.get("phase") == "Waiting" and not status.get("grants")
                return status if done else {}
            rauc_fleet.cluster.wait_for(
                lambda: bool(surfaced()), 60, lambda: "the NodeUpgrade to name the nodes whose agents cannot act on "
                f"it ({rauc_fleet.cluster.get('NodeUpgrade', rauc_fleet.name).get('status')})")
            status = surfaced()
            said = next(c for c in status["conditions"] if c["type"] == "NotActedOn")
            assert said["reason"] == "AgentCannotAct" and "Extra inputs are not permitted" in said["message"] \
                and "remove the field from the spec" in said["message"], said
            assert status["outcome"] == f"0/{len(WAREHOUSE)} upgraded, {len(WAREHOUSE)} not acted on", status
            assert not status.get("rollout") and status["disruptedNodes"] == 0 and status["failedNodes"] == 0, status
            progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
            assert progressing["status"] == "False", progressing
            assert not any(rauc_fleet.cluster.get("Node", n).get("spec", {}).get("unschedulable") for n in WAREHOUSE)
        finally:
            sampler.stop()
        assert sampler.peak == 0 and {a for _, a, _ in sampler.grants} <= {"Install"}, sampler.grants
        assert {n: rauc_fleet.nodes[n].slot_version(rauc_fleet.nodes[n].booted()) for n in WAREHOUSE} == \
            dict.fromkeys(WAREHOUSE, "0.14.0"), "nothing installed or booted for the refused object"
    finally:
        for name in WAREHOUSE:
            restart_agent(name, current[name][1], current[name][0])
