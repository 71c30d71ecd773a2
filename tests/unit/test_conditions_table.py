"""Conditions agree with the node entries, for every kind (issue #18): a node reporting that it could not do
what the object asks makes the object Degraded, naming the node; nodes that did it leave it NodesOK. A
Restore whose only node Failed showed Degraded=False NodesOK (a Restore has no nodeSelector, so no node
counted)."""

import datetime as dt
from typing import Any

import pytest

from maculaos.api import KINDS
from maculaos.controller.reconcile import PROBLEM_PHASES, judge
from tests.unit.test_validation import BACKUP, Cluster

NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.timezone.utc)
NODE = "pi-03"
SHOP = {"matchLabels": {"macula.io/site": "shop"}}

#: kind -> (a spec selecting NODE, the phases a node reports when it failed, the phases when it did it)
TABLE: dict[str, tuple[dict[str, Any], list[str], list[str]]] = {
    "MeshRole": ({"nodeSelector": SHOP}, ["Conflict", "Failed", "Invalid"], ["Applied"]),
    "HealthCheck": ({"nodeSelector": SHOP, "checks": [{"name": "k3s", "type": "systemd",
                                                       "systemd": {"unit": "k3s.service"}}]},
                    ["Unhealthy", "Invalid"], ["Healthy"]),
    "Backup": ({**BACKUP, "nodeSelector": SHOP}, ["Failed", "Invalid"], ["Succeeded", "Running", "Waiting"]),
    "Restore": ({"backupName": "nightly", "nodeName": NODE, "snapshot": {"latest": True}}, ["Failed"],
                ["Succeeded", "Running"]),
    "NodeUpgrade": ({"nodeSelector": SHOP, "version": "1.0.0", "source": {"url": "https://x.lan/b.raucb",
                                                                         "sha256": "a" * 64}},
                    ["Failed", "RolledBack"], ["Succeeded", "Installing", "Idle"]),
}
ALL_NODES_RESTORE = {"backupName": "nightly", "allNodes": True, "snapshot": {"latest": True}}


def cluster() -> Cluster:
    return Cluster(secrets={("maculaos-system", "repo"): {"password"}},
                   backups={"nightly": {**BACKUP, "nodeSelector": SHOP}})


def body(kind: str, spec: dict[str, Any], phase: str) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": "x", "generation": 1, "uid": "u1", "resourceVersion": "7",
                                       "creationTimestamp": "2026-06-01T11:00:00Z"},
            "spec": spec, "status": {"nodes": {NODE: {"phase": phase, "message": f"it is {phase}",
                                                      "observedGeneration": 1}}}}


def degraded(outcome_status: dict[str, Any] | None) -> dict[str, Any]:
    assert outcome_status is not None
    return next(c for c in outcome_status["conditions"] if c["type"] == "Degraded")


def test_the_table_covers_every_kind_with_nodes() -> None:
    assert set(TABLE) == {m.resource.kind for m in KINDS} - {"NodeReport"}
    assert {p for _, bad, _ in TABLE.values() for p in bad} == PROBLEM_PHASES


CASES = [(kind, phase, True) for kind, (_, bad, _) in TABLE.items() for phase in bad] + \
        [(kind, phase, False) for kind, (_, _, good) in TABLE.items() for phase in good]


@pytest.mark.parametrize(("kind", "phase", "troubled"), CASES, ids=[f"{k}-{p}" for k, p, _ in CASES])
def test_degraded_agrees_with_the_node_entries(kind: str, phase: str, troubled: bool) -> None:
    outcome = judge(body(kind, TABLE[kind][0], phase), cluster(), NOW)
    condition = degraded(outcome.status)
    if troubled:
        assert condition["status"] == "True" and condition["reason"] == phase
        assert NODE in condition["message"] and f"it is {phase}" in condition["message"]
    else:
        assert (condition["status"], condition["reason"]) == ("False", "NodesOK")


def test_a_restore_of_every_node_counts_each_node_its_backup_selects() -> None:
    outcome = judge(body("Restore", ALL_NODES_RESTORE, "Failed"), cluster(), NOW)
    assert outcome.status is not None and outcome.status["phase"] == "Failed"
    assert degraded(outcome.status)["status"] == "True" and outcome.status["matchedNodes"] == 1


def test_an_entry_of_a_node_no_longer_targeted_does_not_count() -> None:
    spec = {**TABLE["Restore"][0], "nodeName": "nuc-01"}
    outcome = judge(body("Restore", spec, "Failed"), cluster(), NOW)
    assert degraded(outcome.status)["status"] == "False"
