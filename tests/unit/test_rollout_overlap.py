"""Two NodeUpgrades selecting the same nodes: who holds a node (api.nodeupgrade.holder), and what the one
that does not hold it does (controller/nodeupgrade_rollout.py): it waits, with a Waiting condition naming
the holder, never grants, never counts the held nodes as failed and never rolls them back."""

from __future__ import annotations

import datetime as dt
from typing import Any

from maculaos.api.nodeupgrade import Claim, NodeUpgradeSpec, claim_on, holder, holds
from maculaos.controller.nodeupgrade import Rollouts, held_nodes, waiting
from maculaos.kube.rest import Credentials, KubeClient
from tests.unit.rollout_sim import NEW, OLD, Fleet, SimNode

EARLY, LATE = "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"


def fleet(count: int, spec: dict[str, Any] | None = None) -> Fleet:
    nodes = {f"node-{i:02d}": SimNode(f"node-{i:02d}") for i in range(count)}
    full = {"version": NEW, "healthCheckWait": "30s", **(spec or {})}
    return Fleet(spec=NodeUpgradeSpec.model_validate(full), nodes=nodes)


def upgrade(name: str, created: str, phase: str = "", rollout: dict[str, str] | None = None,
            grants: tuple[str, ...] = (), spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": created}, "spec": spec or {"version": NEW},
            "status": {"phase": phase, "rollout": {n: {"stage": s} for n, s in (rollout or {}).items()},
                       "grants": {n: {"action": "Install", "time": EARLY} for n in grants}}}


# -- who holds a node -------------------------------------------------------------------------------------
def test_the_oldest_unfinished_upgrade_holds_an_idle_node() -> None:
    first, second = Claim("first", EARLY), Claim("second", LATE)
    assert holder([second, first]).name == "first"
    done = Claim("first", EARLY, finished=True)
    assert holder([second, done]).name == "second", "a finished upgrade lets go"
    assert not holds(Claim("a", EARLY, finished=True)) and holds(Claim("a", EARLY, finished=True, work=1))


def test_work_under_way_outranks_age_and_a_disruption_outranks_an_install() -> None:
    old, young = Claim("old", EARLY), Claim("young", LATE, work=1)
    assert holder([old, young]).name == "young", "an install the node is doing is not taken over"
    assert holder([Claim("old", EARLY, work=1), Claim("young", LATE, work=2)]).name == "young"


def test_a_claim_is_read_from_the_raw_object() -> None:
    assert claim_on(upgrade("a", EARLY, rollout={"n1": "Rebooting"}), "n1").work == 2
    assert claim_on(upgrade("a", EARLY, grants=("n1",)), "n1").work == 1
    assert claim_on(upgrade("a", EARLY, rollout={"n1": "Succeeded"}), "n1").work == 0
    assert claim_on(upgrade("a", EARLY, phase="Failed"), "n1").finished
    idle = upgrade("a", EARLY, spec={"version": NEW, "autoApply": False})
    assert claim_on(idle, "n1").finished, "an upgrade that starts nothing holds nothing"
    invalid = upgrade("a", EARLY)
    invalid["status"]["conditions"] = [{"type": "Invalid", "status": "True"}]
    assert claim_on(invalid, "n1").finished


def test_held_nodes_names_the_holder_for_the_nodes_both_select() -> None:
    labels = {"n1": {"pool": "a"}, "n2": {"pool": "b"}}
    first = upgrade("first", EARLY, spec={"version": NEW, "nodeSelector": {"matchLabels": {"pool": "a"}}})
    second = upgrade("second", LATE)
    assert held_nodes(second, [first, second], ["n1", "n2"], labels) == {"n1": "first"}
    assert held_nodes(first, [first, second], ["n1"], labels) == {}
    first["status"]["phase"] = "Succeeded"
    assert held_nodes(second, [first, second], ["n1", "n2"], labels) == {}, "the first finished: go on"


# -- the rollout that waits -------------------------------------------------------------------------------
def test_held_nodes_get_no_grant_and_the_condition_names_the_holder() -> None:
    f = fleet(3)
    f.held = {"node-00": "first", "node-01": "first"}
    f.operator_pass()
    status = f.persisted()
    assert sorted(status.grants) == ["node-02"] and sorted(status.rollout) == ["node-02"]
    assert f.last_plan is not None
    waiting_condition = f.last_plan.conditions()[2]
    assert waiting_condition["status"] == "True" and waiting_condition["reason"] == "NodesHeld"
    assert "2 node(s) held by NodeUpgrade first (node-00, node-01)" in waiting_condition["message"]
    assert waiting({"conditions": f.last_plan.conditions()})


def test_a_rollout_whose_nodes_are_all_held_waits_and_never_finishes_early() -> None:
    f = fleet(2)
    f.held = {"node-00": "first", "node-01": "first"}
    f.settle(limit=10)
    status = f.persisted()
    assert status.phase == "Waiting" and not status.grants and not status.rollout
    assert f.last_plan is not None and "held by NodeUpgrade first" in f.last_plan.message
    assert status.failed_nodes == 0


def test_held_nodes_failing_for_their_holder_never_spend_this_budget() -> None:
    f = fleet(3, {"failurePolicy": {"maxFailedNodes": 0}})
    f.held = {"node-00": "first"}
    f.nodes["node-00"].phase, f.nodes["node-00"].target_version = "Failed", NEW  # the holder's install failed
    f.nodes["node-00"].message = "sha256 mismatch"
    f.operator_pass()
    status = f.persisted()
    assert status.failed_nodes == 0 and status.phase != "Failed"
    assert "node-00" not in status.rollout


def test_an_install_of_ours_on_a_node_that_becomes_held_is_withdrawn_not_failed() -> None:
    f = fleet(2, {"strategy": {"maxUnavailable": 2}})
    f.operator_pass()
    assert sorted(f.persisted().grants) == ["node-00", "node-01"]
    f.held = {"node-00": "first"}
    f.operator_pass()
    status = f.persisted()
    assert sorted(status.grants) == ["node-01"] and "node-00" not in status.rollout
    assert status.failed_nodes == 0


def test_pause_and_rollback_never_rolls_back_a_held_node() -> None:
    f = fleet(3, {"failurePolicy": {"maxFailedNodes": 0, "action": "PauseAndRollback"}})
    f.nodes["node-02"].fails_health = True
    while f.persisted().rollout.get("node-01") is None or f.persisted().rollout["node-01"].stage.value != "Succeeded":
        f.operator_pass()
        for name in sorted(f.nodes):
            f.agent_step(name)
        f.now += dt.timedelta(seconds=31)
    f.held = {"node-00": "first"}  # the other NodeUpgrade takes node-00 over now
    f.settle()
    status = f.persisted()
    assert status.phase == "Failed"
    assert f.nodes["node-00"].version == NEW, "the held node keeps what it runs"
    assert status.rollout["node-01"].stage.value == "Reverted" and f.nodes["node-01"].version == OLD
    assert "node-00" not in status.rollout


def test_when_the_holder_lets_go_the_rollout_proceeds_to_the_end() -> None:
    f = fleet(3)
    f.held = {n: "first" for n in f.nodes}
    f.settle(limit=5)
    assert f.persisted().phase == "Waiting"
    f.held = {}
    f.settle()
    status = f.persisted()
    assert status.phase == "Succeeded" and status.upgraded_nodes == 3
    assert f.last_plan is not None and f.last_plan.conditions()[2]["status"] == "False"


def test_waiters_are_woken_once_when_a_holder_finishes_or_goes() -> None:
    rollouts = Rollouts(KubeClient(Credentials(server="http://localhost:1")))  # makes no request here
    first = {"metadata": {"name": "first"}, "status": {"phase": "Progressing"}}
    assert not rollouts.lets_go("MODIFIED", first)
    first["status"]["phase"] = "Succeeded"
    assert rollouts.lets_go("MODIFIED", first), "it just finished"
    assert not rollouts.lets_go("MODIFIED", first), "a later report on the finished object wakes nobody"
    first["status"]["phase"] = "Progressing"  # a new release: it holds again, and may finish again
    assert not rollouts.lets_go("MODIFIED", first)
    first["status"]["phase"] = "Failed"
    assert rollouts.lets_go("MODIFIED", first)
    assert rollouts.lets_go("DELETED", first), "a deleted holder lets go"
