"""The rollout planner's decisions, one behaviour at a time, on the in-memory fleet of rollout_sim."""

from __future__ import annotations

import datetime as dt
from typing import Any

from maculaos.api.nodeupgrade import AgentPhase, MaintenanceWindow, NodeStage, NodeUpgradeSpec, ReleaseTarget
from maculaos.controller.nodeupgrade_rollout import NodeFacts, in_window, max_unavailable, node_order
from tests.unit.rollout_sim import NEW, OLD, START, Fleet, SimNode


def fleet(count: int, spec: dict[str, Any], **node_args: Any) -> Fleet:
    nodes = {f"node-{i:02d}": SimNode(f"node-{i:02d}", **node_args) for i in range(count)}
    full = {"version": NEW, "healthCheckWait": "30s", **spec}
    return Fleet(spec=NodeUpgradeSpec.model_validate(full), nodes=nodes)


def stages(f: Fleet) -> dict[str, str]:
    return {n: p.stage.value for n, p in f.persisted().rollout.items()}


def test_ten_nodes_max_three_reach_but_never_pass_the_bound() -> None:
    f = fleet(10, {"strategy": {"maxUnavailable": 3}})
    peak = 0
    for _ in range(200):
        f.operator_pass()
        peak = max(peak, f.disrupted_now())
        if f.done():
            break
        for name in sorted(f.nodes):
            f.agent_step(name)
        peak = max(peak, f.disrupted_now())
        f.now += dt.timedelta(seconds=31)
    assert peak == 3
    assert f.persisted().phase == "Succeeded" and f.persisted().upgraded_nodes == 10
    assert all(n.boots_into_new == 1 and not n.unschedulable for n in f.nodes.values())


def test_max_unavailable_percent_rounds_down_and_is_at_least_one() -> None:
    spec = NodeUpgradeSpec.model_validate({"version": NEW, "strategy": {"maxUnavailable": "25%"}})
    assert [max_unavailable(spec, n) for n in (1, 4, 7, 8, 50)] == [1, 1, 1, 2, 12]
    zero = NodeUpgradeSpec.model_validate({"version": NEW, "strategy": {"maxUnavailable": "0%"}})
    assert max_unavailable(zero, 10) == 1


def test_order_is_workers_then_control_plane_then_own_node() -> None:
    nodes = {"b": NodeFacts(), "a": NodeFacts(), "cp": NodeFacts(control_plane=True), "me": NodeFacts()}
    assert node_order(list(nodes), nodes, own_node="me") == ["a", "b", "cp", "me"]
    assert node_order(["b", "a"], nodes, own_node="") == ["a", "b"]


def test_nodes_already_at_target_are_not_touched() -> None:
    f = fleet(3, {})
    f.nodes["node-01"].version = NEW
    f.settle()
    assert f.nodes["node-01"].boots_into_new == 0
    assert f.persisted().rollout["node-01"].message == f"already runs {NEW}"
    assert f.persisted().phase == "Succeeded"


def test_failed_install_counts_against_the_budget_and_stops_the_rollout() -> None:
    f = fleet(4, {"failurePolicy": {"maxFailedNodes": 0}})
    f.nodes["node-00"].fail_install = True
    f.settle()
    status = f.persisted()
    assert status.phase == "Failed" and status.failed_nodes == 1
    assert status.rollout["node-00"].message == "install failed: sha256 mismatch"
    assert [n for n, s in f.nodes.items() if s.version == NEW] == []  # nobody went on
    assert f.last_plan is not None and f.last_plan.conditions()[1]["reason"] == "FailureBudgetExceeded"


def test_pause_and_rollback_reverts_the_upgraded_nodes() -> None:
    f = fleet(4, {"failurePolicy": {"maxFailedNodes": 0, "action": "PauseAndRollback"}})
    f.nodes["node-02"].fails_health = True
    f.settle()
    status = f.persisted()
    assert status.phase == "Failed"
    assert stages(f) == {"node-00": "Reverted", "node-01": "Reverted", "node-02": "RolledBack"}
    assert all(n.version == OLD and not n.unschedulable for n in f.nodes.values())


def test_a_node_rolled_back_on_the_node_after_the_rollout_is_shown_and_left_there() -> None:
    """`maculaos upgrade --rollback` on one node after the rollout finished: its record turns Reverted with
    the version it runs, the count and the message follow, and the rollout never upgrades it again."""
    f = fleet(3, {})
    f.settle()
    assert f.persisted().phase == "Succeeded" and f.persisted().upgraded_nodes == 3
    node = f.nodes["node-01"]
    node.version, node.boot_id, node.phase = OLD, "boot-after-the-rollback", AgentPhase.ROLLED_BACK.value
    events = []
    for _ in range(3):
        events += [e.reason for e in f.operator_pass().events]
        f.now += dt.timedelta(minutes=5)
    status = f.persisted()
    record = status.rollout["node-01"]
    assert record.stage is NodeStage.REVERTED and not record.upgraded, record
    assert record.message.startswith(f"runs {OLD} now, not {NEW}: changed on the node itself"), record.message
    assert status.phase == "Succeeded" and status.upgraded_nodes == 2 and status.failed_nodes == 0
    assert f.last_plan is not None
    assert f.last_plan.message == f"finished; 2 of 3 node(s) run {NEW}; changed back on the node itself: node-01"
    assert not status.grants and node.version == OLD and node.boots_into_new == 1
    assert events == ["NodeChangedOnNode"]     # said once


def test_one_stale_view_of_a_node_does_not_turn_its_good_record() -> None:
    """The Node's label says the old version but the agent's entry still says the target (or the reverse):
    not enough to call the node changed."""
    f = fleet(2, {})
    f.settle()
    f.nodes["node-00"].version = OLD                     # the label moved, the entry did not
    f.operator_pass(reports={"node-00": f.nodes["node-00"].report().model_copy(update={"version": NEW})})
    f.nodes["node-00"].version = NEW                     # the entry moved, the label did not
    f.operator_pass(reports={"node-00": f.nodes["node-00"].report().model_copy(update={"version": OLD})})
    assert f.persisted().rollout["node-00"].stage is NodeStage.SUCCEEDED


def test_canary_stops_the_rest_when_it_fails() -> None:
    f = fleet(10, {"strategy": {"type": "canary", "maxUnavailable": 2,
                                "canary": {"percentage": "20%", "successThreshold": "100%"}},
                   "failurePolicy": {"maxFailedNodes": 5}})
    f.nodes["node-01"].fails_health = True
    f.settle()
    status = f.persisted()
    assert status.canary_nodes == ["node-00", "node-01"]
    assert status.phase == "Failed" and f.last_plan is not None
    assert f.last_plan.stop_reason == "CanaryFailed"
    assert sorted(status.rollout) == ["node-00", "node-01"]


def test_canary_that_passes_lets_the_rest_follow() -> None:
    f = fleet(5, {"strategy": {"type": "canary", "canary": {"percentage": "20%", "successThreshold": "100%"}}})
    f.operator_pass()
    assert list(f.persisted().grants) == ["node-00"]  # only the canary starts
    f.settle()
    assert f.persisted().phase == "Succeeded" and f.persisted().upgraded_nodes == 5


def test_paused_and_auto_apply_false_start_nothing() -> None:
    for spec, phase in (({"paused": True}, "Paused"), ({"autoApply": False}, "Pending")):
        f = fleet(3, spec)
        f.operator_pass()
        status = f.persisted()
        assert status.phase == phase and not status.grants and not status.rollout


def test_paused_mid_rollout_lets_the_disrupted_node_finish() -> None:
    f = fleet(3, {})
    while stages(f).get("node-00") != "Rebooting":
        f.operator_pass()
        f.agent_step("node-00")
    f.spec = f.spec.model_copy(update={"paused": True})
    f.settle(limit=20)
    assert stages(f) == {"node-00": "Succeeded"} and f.persisted().phase == "Paused"


def test_maintenance_window_in_its_time_zone() -> None:
    # 02:00 UTC on Wednesday is 03:00 in Brussels (winter) and 21:00 on Tuesday in New York.
    brussels = MaintenanceWindow(days=["Wed"], start="01:00", end="05:00", time_zone="Europe/Brussels")
    new_york = MaintenanceWindow(days=["Tue"], start="22:00", end="04:00", time_zone="America/New_York")
    assert START.weekday() == 2
    assert in_window([brussels], START)
    assert not in_window([new_york], START)
    assert in_window([new_york], START + dt.timedelta(hours=2))  # 23:00 Tue
    assert in_window([new_york], START + dt.timedelta(hours=6))  # 03:00 Wed: the window spans midnight
    assert not in_window([new_york], START + dt.timedelta(hours=8))


def test_closed_window_waits() -> None:
    f = fleet(2, {"maintenanceWindows": [{"days": ["Sat"], "start": "01:00", "end": "05:00"}]})
    f.operator_pass()
    assert f.persisted().phase == "Waiting" and not f.persisted().grants


def test_delay_between_nodes() -> None:
    f = fleet(2, {"strategy": {"delayBetweenNodes": "10m"}})
    f.settle(limit=20)
    status = f.persisted()
    assert stages(f)["node-00"] == "Succeeded" and stages(f)["node-01"] == "Installing"
    f.settle(step=dt.timedelta(minutes=3))
    assert f.persisted().phase == "Succeeded"
    assert f.persisted().rollout["node-01"].since >= status.last_node_finished_time


def test_drain_timeout_fails_the_node_and_uncordons_it() -> None:
    f = fleet(2, {"drain": {"timeout": "2m"}, "failurePolicy": {"maxFailedNodes": 2}})
    f.nodes["node-00"].drain_blocked_passes = 1000
    f.settle()
    status = f.persisted()
    assert status.rollout["node-00"].stage is NodeStage.FAILED
    assert "drain timed out after 2m: pod web-0 blocked by its PDB" in status.rollout["node-00"].message
    assert not f.nodes["node-00"].unschedulable and f.nodes["node-00"].version == OLD
    assert status.rollout["node-01"].stage is NodeStage.SUCCEEDED


def test_drain_timeout_with_force_goes_on() -> None:
    f = fleet(1, {"drain": {"timeout": "2m", "force": True}})
    f.nodes["node-00"].drain_blocked_passes = 1000
    f.settle()
    assert f.persisted().phase == "Succeeded" and f.persisted().rollout["node-00"].forced


def test_a_node_that_never_comes_back_is_failed_and_uncordoned() -> None:
    f = fleet(1, {"healthCommitWindow": "5m"})
    while stages(f).get("node-00") != "Rebooting":
        f.operator_pass()
        f.agent_step("node-00")
    f.agent_step("node-00")  # reboots, and stays down
    f.now += dt.timedelta(minutes=16)
    f.operator_pass()
    f.operator_pass()
    progress = f.persisted().rollout["node-00"]
    assert progress.stage is NodeStage.FAILED and "not back and healthy" in progress.message
    assert not f.nodes["node-00"].unschedulable


def test_target_change_starts_over_for_the_new_version() -> None:
    f = fleet(2, {})
    f.settle()
    f.target = ReleaseTarget(version="0.3.0")
    f.operator_pass()
    assert {p.target_version for p in f.persisted().rollout.values()} == {"0.3.0"}


def test_a_node_that_went_not_ready_is_not_drained() -> None:
    f = fleet(2, {"strategy": {"maxUnavailable": 2}})
    while stages(f).get("node-00") != "Installing" or f.nodes["node-00"].phase != "Installed":
        f.operator_pass()
        f.agent_step("node-00")
    f.nodes["node-00"].ready = False
    f.operator_pass()
    assert stages(f)["node-00"] == "Installing" and not f.nodes["node-00"].unschedulable
    f.nodes["node-00"].ready = True
    f.operator_pass()
    assert stages(f)["node-00"] == "Draining"


def test_drain_timeout_counts_from_the_first_real_drain_step() -> None:
    """An operator that crashed after recording Draining, before the cordon, and came back late."""
    f = fleet(1, {"drain": {"timeout": "2m"}})
    while f.nodes["node-00"].phase != "Installed":
        f.operator_pass()
        f.agent_step("node-00")
    f.operator_pass(act=False)  # Draining written; the cordon never happened
    assert stages(f)["node-00"] == "Draining" and not f.nodes["node-00"].unschedulable
    f.now += dt.timedelta(minutes=10)
    f.operator_pass()  # back: cordons, the drain has not run yet
    assert stages(f)["node-00"] == "Draining" and f.nodes["node-00"].unschedulable
    f.settle()
    assert f.persisted().phase == "Succeeded"
