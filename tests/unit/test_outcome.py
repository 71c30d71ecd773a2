"""The Outcome column's text, from the nodes' entries and the operator's own counts."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from maculaos.controller.nodeupgrade import status_patch
from maculaos.controller.nodeupgrade_releases import Resolution
from maculaos.controller.nodeupgrade_rollout import Plan
from maculaos.controller.outcome import object_outcome, restore_outcome, rollout_outcome, tally
from maculaos.controller.reconcile import judge
from tests.unit.test_validation import Cluster

NODES = ["a", "b", "c"]


@pytest.mark.parametrize("args, text", [
    ((0, 0, "healthy"), "0/0 healthy"),
    ((2, 3, "upgraded", 1), "2/3 upgraded, 1 failed"),
    ((1, 3, "backed up", 0, "failed", 2, "running"), "1/3 backed up, 2 running"),
    ((1, 3, "healthy", 2, "unhealthy"), "1/3 healthy, 2 unhealthy"),
])
def test_tally(args: tuple[Any, ...], text: str) -> None:
    assert tally(*args) == text


def test_rollout() -> None:
    assert rollout_outcome(3, 1, 1, 1) == "1/3 upgraded, 1 failed, 1 disrupted"
    assert rollout_outcome(3, 3, 0, 0) == "3/3 upgraded"


def test_kinds_from_their_entries() -> None:
    status = {"nodes": {"a": {"phase": "Healthy"}, "b": {"phase": "Unhealthy"}, "gone": {"phase": "Unhealthy"}}}
    assert object_outcome("HealthCheck", {"healthyNodes": 1}, status, NODES) == "1/3 healthy, 1 unhealthy"
    last = "2027-01-01T02:00:00Z"
    backups = {"nodes": {"a": {"phase": "Succeeded", "lastSuccessTime": last}, "b": {"phase": "Failed"},
                         "c": {"phase": "Running", "lastSuccessTime": last}}}
    assert object_outcome("Backup", {}, backups, NODES) == "2/3 backed up, 1 failed, 1 running"
    assert object_outcome("MeshRole", {"appliedNodes": 2}, {"nodes": {"c": {"phase": "Conflict"}}}, NODES) == \
        "2/3 applied, 1 failed"
    assert object_outcome("NodeUpgrade", {}, {}, NODES) is None
    assert object_outcome("Restore", {}, {}, NODES) is None


def test_restore_names_the_node_or_counts() -> None:
    assert restore_outcome(["a"], {"a": {"phase": "Running"}}, one_node=True) == "a: Running"
    assert restore_outcome(["a"], {}, one_node=True) == "a: Pending"
    assert restore_outcome(NODES, {"a": {"phase": "Succeeded"}, "b": {"phase": "Failed"}}, one_node=False) == \
        "1/3 restored, 1 failed"


def test_judge_writes_the_outcome_of_a_healthcheck() -> None:
    body = {"kind": "HealthCheck", "metadata": {"name": "edge", "generation": 1},
            "spec": {"checks": [{"name": "ssh", "type": "tcp", "tcp": {"port": 22}}]},
            "status": {"nodes": {n: {"phase": "Healthy", "observedGeneration": 1} for n in ("a", "b")}}}
    cluster = Cluster(nodes={n: {} for n in NODES})
    status = judge(body, cluster, dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)).status
    assert status is not None and status["outcome"] == "2/3 healthy"


def test_a_rollout_pass_writes_its_counts_as_the_outcome() -> None:
    plan = Plan(rollout={}, grants={}, canary_nodes=[], last_node_finished_time="", upgraded=2, failed=1)
    patch = status_patch({"matchedNodes": 3}, {}, plan, Resolution(target=None, available=None, error=""))
    assert patch["outcome"] == "2/3 upgraded, 1 failed"
