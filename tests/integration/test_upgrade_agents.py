"""Three real agents upgrade their simulated nodes with real RAUC, driven by NodeUpgrade grants.

The whole story with the real operator is test_upgrade_end_to_end.py. The tests here pin the agent's side of
the contract step by step (docs/architecture.md): there the test itself writes status.target and
status.grants, with the operator stopped (`no_operator`), so each grant and each refusal can be checked on its
own. Everything else is real: the API server, three `maculaos agent run` processes, each node's `rauc service`
on its own D-Bus, bundles fetched over HTTP and installed into file-backed slots, reboots through the agents'
reboot command (the simulation's hook restarts RAUC and the agent with the new boot state)."""

from __future__ import annotations

from typing import Any

from maculaos.api.common import VERSION_LABEL
from tests.host.rauc_fixtures import Bundles, BundleServer, release_of
from tests.integration.rauc_fleet import NAME, NODES, SICK_WINDOW, SICKLY, RaucFleet


def test_three_agents_upgrade_and_one_rolls_back(rauc_fleet: RaucFleet, bundles: Bundles,
                                                 bundle_server: BundleServer, created: Any, no_operator: None) -> None:
    cluster = rauc_fleet.cluster
    created({"apiVersion": "os.macula.io/v1alpha1", "kind": "HealthCheck", "metadata": {"name": "sickly-b"},
             "spec": {"nodeSelector": {"matchLabels": {"macula.io/site": "shop"}},
                      "checks": [{"name": "service-port", "type": "tcp", "tcp": {"port": 9}, "interval": "1s",
                                  "timeout": "500ms"}]}})
    release = release_of(bundle_server, bundles.good)
    created({"apiVersion": "os.macula.io/v1alpha1", "kind": "NodeUpgrade", "metadata": {"name": NAME},
             "spec": {"version": "0.2.0", "source": {"url": release.url, "sha256": release.sha256},
                      "healthCommitWindow": SICK_WINDOW, "healthCheckWait": "2s"}})
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
                             f"involvedObject.name={NAME}", "-o",
                             "jsonpath={range .items[*]}{.reason} {.message}|{end}")
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


