"""The whole NodeUpgrade story on fresh nodes: the real operator plans the rollout, cordons, grants and
uncordons; three real agents install with real RAUC, reboot (simulated) and commit or roll back.

The second test replays the bug the first landing's CI met on reused nodes (an outcome a node held for
the same version from a deleted NodeUpgrade was taken as the new one's): entries now say which grant
they answer (observedGrant) and the operator takes a phase only as the answer to its current grant."""

from __future__ import annotations

import time
from typing import Any

from kubernetes import client

from maculaos.devenv.rauc import build_bundle
from tests.host.rauc_fixtures import COMPATIBLE, Bundles, BundleServer, release_of
from tests.integration.rauc_fleet import NODES, SICK_WINDOW, SICKLY, RaucFleet
from tests.integration.upgrade_agents import Sampler


def test_the_operator_rolls_the_fleet_forward_and_a_sick_node_back(
        rauc_fleet: RaucFleet, bundles: Bundles, bundle_server: BundleServer, created: Any, operator: Any) -> None:
    """The real operator against the real agents and RAUC. One node at a time (maxUnavailable
    1), each cordoned, rebooted into the new slot, health-committed and uncordoned; the node whose new slot
    fails its HealthCheck rolls back by itself and counts against the failure budget."""
    cluster = rauc_fleet.cluster
    rauc_fleet.name = "fleet-to-0-3-0"
    created({"apiVersion": "os.macula.io/v1alpha1", "kind": "HealthCheck", "metadata": {"name": "sickly-c"},
             "spec": {"nodeSelector": {"matchLabels": {"macula.io/site": "shop"}},
                      "checks": [{"name": "service-port", "type": "tcp", "tcp": {"port": 9}, "interval": "1s",
                                  "timeout": "500ms"}]}})
    release = release_of(bundle_server, bundles.newer, version="0.3.0")
    boots = {n: rauc_fleet.nodes[n].booted() for n in NODES}
    sampler = Sampler(cluster.api, rauc_fleet.name, NODES).start()
    try:
        created({"apiVersion": "os.macula.io/v1alpha1", "kind": "NodeUpgrade", "metadata": {"name": rauc_fleet.name},
                 "spec": {"version": "0.3.0", "source": {"url": release.url, "sha256": release.sha256},
                          "strategy": {"maxUnavailable": 1}, "failurePolicy": {"maxFailedNodes": 1},
                          "healthCommitWindow": SICK_WINDOW, "healthCheckWait": "2s"}})
        cluster.wait_for(lambda: (cluster.get("NodeUpgrade", rauc_fleet.name).get("status") or {}).get("phase")
                         in ("Succeeded", "Failed"), timeout=300,
                         what=lambda: "the rollout to finish "
                                      f"(now {cluster.get('NodeUpgrade', rauc_fleet.name)['status']})")
    finally:
        sampler.stop()
    status = cluster.get("NodeUpgrade", rauc_fleet.name)["status"]
    assert (status["phase"], status["upgradedNodes"], status["failedNodes"]) == ("Failed", 2, 1), status
    for node in ("macula-nuc-01", "macula-nuc-02"):
        entry = rauc_fleet.entry(node)
        assert (entry["phase"], entry["version"]) == ("Succeeded", "0.3.0"), entry
        assert rauc_fleet.nodes[node].booted() != boots[node] and sampler.reboot_grants(node) == 1
    entry = rauc_fleet.entry(SICKLY)
    assert (entry["phase"], entry["version"], entry["slot"]) == ("RolledBack", "0.1.0", "A"), entry
    assert "sickly-c/service-port failing" in entry["message"]
    assert sampler.peak == 1, "never more than maxUnavailable nodes cordoned or down at once"
    assert not any(cluster.get("Node", n).get("spec", {}).get("unschedulable") for n in NODES), "nobody left cordoned"
    assert status["grants"] == {}, "no grant outlives the rollout"


WAREHOUSE = ["macula-nuc-01", "macula-nuc-02"]  # nuc-02 (a worker) goes first, nuc-01 (control plane) second


def test_a_recreated_nodeupgrade_is_not_failed_by_the_outcome_of_the_deleted_one(
        rauc_fleet: RaucFleet, bundles: Bundles, bundle_server: BundleServer, created: Any, operator: Any) -> None:
    """A NodeUpgrade to 0.4.0 with a wrong sha256 fails on both warehouse nodes (each node keeps Failed
    for 0.4.0 on its disk). The user deletes it and creates it again, same name, right sha256. The
    second node in line reports on the new object while the first upgrades; its old Failed must neither
    be reported as the new object's nor taken by the operator: both nodes upgrade, none counts Failed.
    On the way, nuc-01's first reboot command is refused: the agent retries it and says so."""
    cluster = rauc_fleet.cluster
    custom = client.CustomObjectsApi(cluster.api)
    rauc_fleet.name = "redo-0-4-0"
    bundle = build_bundle(bundles.dir / "good-0.4.0.raucb", "0.4.0", COMPATIBLE, bundles.cert,
                          bundles.dir / "keys" / "fleet.key.pem")
    release = release_of(bundle_server, bundle, version="0.4.0")

    def nodeupgrade(sha256: str) -> dict[str, Any]:
        return {"apiVersion": "os.macula.io/v1alpha1", "kind": "NodeUpgrade", "metadata": {"name": rauc_fleet.name},
                "spec": {"version": "0.4.0", "source": {"url": release.url, "sha256": sha256},
                         "nodeSelector": {"matchLabels": {"macula.io/site": "warehouse"}},
                         "strategy": {"maxUnavailable": 1}, "failurePolicy": {"maxFailedNodes": 5},
                         "healthCommitWindow": "40s", "healthCheckWait": "2s"}}

    def status() -> dict[str, Any]:
        return dict(cluster.get("NodeUpgrade", rauc_fleet.name).get("status") or {})

    created(nodeupgrade("0" * 64))
    for node in WAREHOUSE:  # one at a time: each gets its Install grant and fails it
        cluster.wait_for(lambda n=node: (status().get("rollout") or {}).get(n, {}).get("stage") == "Failed",
                         timeout=120, what=lambda: f"the wrong sha256 to fail the nodes (now {status()})")
        assert "sha256 mismatch" in rauc_fleet.entry(node)["message"]
    old_uid = cluster.get("NodeUpgrade", rauc_fleet.name)["metadata"]["uid"]
    cluster.delete(nodeupgrade(""))

    def gone() -> bool:
        try:
            custom.get_cluster_custom_object("os.macula.io", "v1alpha1", "nodeupgrades", rauc_fleet.name)
        except client.ApiException as exc:
            return exc.status == 404
        return False
    cluster.wait_for(gone, timeout=30, what="the first NodeUpgrade to go")
    (rauc_fleet.nodes["macula-nuc-01"].dir / "fail-reboots").write_text("1\n")
    reboots = {n: _reboots(rauc_fleet, n) for n in WAREHOUSE}
    sampler = Sampler(cluster.api, rauc_fleet.name, WAREHOUSE).start()
    failed_seen: set[str] = set()
    try:
        created(nodeupgrade(release.sha256 or ""))
        deadline = time.monotonic() + 300
        while status().get("phase") not in ("Succeeded", "Failed") and time.monotonic() < deadline:
            now = status()
            failed_seen |= {n for n, e in (now.get("nodes") or {}).items() if e.get("phase") == "Failed"}
            failed_seen |= {n for n, r in (now.get("rollout") or {}).items() if r.get("stage") == "Failed"}
            time.sleep(0.1)
    finally:
        sampler.stop()
    final = cluster.get("NodeUpgrade", rauc_fleet.name)
    assert final["metadata"]["uid"] != old_uid
    final_status = final["status"]
    assert not failed_seen, f"the deleted object's Failed leaked into the new one: {failed_seen}"
    assert (final_status["phase"], final_status["upgradedNodes"], final_status["failedNodes"]) == \
        ("Succeeded", 2, 0), final_status
    for node in WAREHOUSE:
        entry = rauc_fleet.entry(node)
        assert (entry["phase"], entry["version"]) == ("Succeeded", "0.4.0"), entry
        assert entry["observedGrant"]["uid"] == final["metadata"]["uid"], entry
        assert sampler.reboot_grants(node) == 1 and _reboots(rauc_fleet, node) == reboots[node] + 1, \
            "one reboot per node, though nuc-01's first reboot command failed"
    events = cluster.kubectl("get", "events", "-n", "default", "--field-selector",
                             f"involvedObject.uid={final['metadata']['uid']}",
                             "-o", "jsonpath={range .items[*]}{.reason} {.message}|{end}").stdout.split("|")
    assert not [e for e in events if e.startswith(("InstallFailed", "UpgradeFailed"))], events
    refused = [e for e in events if e.startswith("RebootFailed macula-nuc-01: ")]
    assert len(refused) == 1 and "Transaction is destructive" in refused[0] and "retrying in 5s" in refused[0], events


def _reboots(fleet: RaucFleet, node: str) -> int:
    log = fleet.nodes[node].logs / "reboot.log"
    return log.read_text().count(" rebooted into slot ") if log.exists() else 0


def test_a_second_nodeupgrade_on_the_same_nodes_waits_for_the_first(
        rauc_fleet: RaucFleet, bundles: Bundles, bundle_server: BundleServer, created: Any, operator: Any) -> None:
    """Two NodeUpgrades to 0.5.0 select the warehouse nodes; the second is created while the first rolls
    out. The second waits (condition Waiting naming the first), grants nothing and counts nothing failed
    while the first holds the nodes; when the first has finished, the second goes on and finds both nodes
    on its target: each node rebooted once, by the first."""
    cluster = rauc_fleet.cluster
    bundle = build_bundle(bundles.dir / "good-0.5.0.raucb", "0.5.0", COMPATIBLE, bundles.cert,
                          bundles.dir / "keys" / "fleet.key.pem")
    release = release_of(bundle_server, bundle, version="0.5.0")
    first, second = "hold-0-5-0", "wait-0-5-0"

    def nodeupgrade(name: str) -> dict[str, Any]:
        return {"apiVersion": "os.macula.io/v1alpha1", "kind": "NodeUpgrade", "metadata": {"name": name},
                "spec": {"version": "0.5.0", "source": {"url": release.url, "sha256": release.sha256},
                         "nodeSelector": {"matchLabels": {"macula.io/site": "warehouse"}},
                         "strategy": {"maxUnavailable": 1}, "failurePolicy": {"maxFailedNodes": 0},
                         "healthCommitWindow": "40s", "healthCheckWait": "2s"}}

    def status(name: str) -> dict[str, Any]:
        return dict(cluster.get("NodeUpgrade", name).get("status") or {})

    reboots = {n: _reboots(rauc_fleet, n) for n in WAREHOUSE}
    created(nodeupgrade(first))
    cluster.wait_for(lambda: bool(status(first).get("grants")), timeout=60, what="the first to grant a node")
    waiter = Sampler(cluster.api, second, WAREHOUSE).start()
    waited = False
    try:
        created(nodeupgrade(second))
        deadline = time.monotonic() + 300
        while status(first).get("phase") not in ("Succeeded", "Failed") and time.monotonic() < deadline:
            now = status(second)
            waiting = {c["type"]: c for c in now.get("conditions") or []}.get("Waiting", {})
            if waiting.get("status") == "True":
                assert f"held by NodeUpgrade {first}" in waiting["message"], waiting
                waited = True
            assert not now.get("failedNodes") and not now.get("grants"), now
            time.sleep(0.2)
        assert status(first).get("phase") == "Succeeded", status(first)
        cluster.wait_for(lambda: status(second).get("phase") in ("Succeeded", "Failed"), timeout=60,
                         what=lambda: f"the second to go on once the first finished (now {status(second)})")
    finally:
        waiter.stop()
    assert waited, "the second said it waits for the first"
    final = status(second)
    assert (final["phase"], final["failedNodes"]) == ("Succeeded", 0), final
    assert not waiter.grants, f"the second never granted the nodes the first upgraded: {waiter.grants}"
    for node in WAREHOUSE:
        assert final["rollout"][node]["message"] == "already runs 0.5.0", final["rollout"]
        assert _reboots(rauc_fleet, node) == reboots[node] + 1, "one reboot per node, the first's"
