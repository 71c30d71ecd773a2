"""Operator and agents one release apart (docs/architecture.md, "Version skew"): what one writes for the
other is read even when a newer release added a key; a spec field an agent does not know is refused, the
agent says which field, and the operator leaves the node out of the rollout and says what to do."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from maculaos.agent.nodeupgrade import _grant, _target, not_acted_on
from maculaos.api.nodeupgrade import GrantAction, NodeUpgradeNodeEntry, NodeUpgradeSpec
from maculaos.controller.nodeupgrade import refusals
from maculaos.controller.outcome import rollout_outcome
from tests.unit.rollout_sim import NEW, OLD, Fleet, SimNode


def refusal(spec: dict[str, object]) -> str:
    with pytest.raises(ValidationError) as caught:
        NodeUpgradeSpec.model_validate(spec)
    return not_acted_on(caught.value)


def test_a_field_the_agent_does_not_know_is_named_with_what_to_do() -> None:
    message = refusal({"version": "0.2.0", "source": {"url": "https://example.com/b.raucb"}, "judgeBy": {}})
    assert message == f"not acted on: {UNKNOWN}", message


def test_a_bad_value_names_its_field_without_the_skew_hint() -> None:
    message = refusal({"version": "0.2.0", "source": {"url": "https://example.com/b.raucb"},
                       "healthCommitWindow": "soon"})
    assert message.startswith("not acted on: spec.healthCommitWindow: "), message
    assert "does not know" not in message


def test_grants_and_targets_with_a_key_a_newer_operator_added_are_still_acted_on() -> None:
    obj = {"status": {"grants": {"n1": {"action": "Install", "time": "2026-12-07T10:00:00Z", "deadline": "x"}},
                      "target": {"version": "0.3.0", "url": "https://example.com/b", "mirrors": ["a"]}}}
    grant, target = _grant(obj, "n1"), _target(obj)
    assert grant is not None and grant.action is GrantAction.INSTALL
    assert target is not None and target.version == "0.3.0"


def test_an_entry_whose_grant_reference_has_a_key_a_newer_agent_added_still_answers_its_grant() -> None:
    entry = NodeUpgradeNodeEntry.model_validate({"phase": "Installed", "observedGrant": {
        "uid": "u1", "action": "Install", "time": "2026-12-07T10:00:00Z", "attempt": 2}})
    assert entry.observed_grant is not None and entry.observed_grant.uid == "u1"


# -- the operator with agents that cannot act on its spec -----------------------------------------------------
UNKNOWN = "spec.judgeBy: Extra inputs are not permitted (a field this node's agent does not know: its OS is older " \
          "than the operator's API)"


def fleet(count: int, spec: dict[str, Any] | None = None, refused: tuple[str, ...] = ()) -> Fleet:
    nodes = {f"node-{i:02d}": SimNode(f"node-{i:02d}") for i in range(count)}
    full = {"version": NEW, "healthCheckWait": "30s", **(spec or {})}
    return Fleet(spec=NodeUpgradeSpec.model_validate(full), nodes=nodes, refused=dict.fromkeys(refused, UNKNOWN))


def condition(f: Fleet, kind: str) -> dict[str, str]:
    assert f.last_plan is not None
    return next(c for c in f.last_plan.conditions() if c["type"] == kind)


def test_nodes_whose_agent_cannot_act_are_left_out_and_named_with_the_field_and_what_to_do() -> None:
    f = fleet(3, refused=("node-00",))
    f.settle()
    status = f.persisted()
    assert status.phase == "Waiting", "the rest is done; nothing this rollout may touch is left"
    assert {n: p.stage.value for n, p in status.rollout.items()} == {"node-01": "Succeeded", "node-02": "Succeeded"}
    assert status.grants == {} and status.failed_nodes == 0 and status.disrupted_nodes == 0
    assert f.nodes["node-00"].version == OLD and not f.nodes["node-00"].unschedulable
    refused = condition(f, "NotActedOn")
    assert refused["status"] == "True" and refused["reason"] == "AgentCannotAct", refused
    assert "the agent of 1 node(s) (node-00) cannot act on this spec: spec.judgeBy: Extra inputs" in refused["message"]
    assert "remove the field from the spec, or upgrade those nodes first" in refused["message"]
    assert condition(f, "Progressing")["status"] == "False"
    assert f.last_plan is not None and f.last_plan.message.endswith("2/3 upgraded, 0 failed, 0 disrupted (max 1), "
                                                                      "0 in progress, 1 not acted on")
    assert rollout_outcome(3, 2, 0, 0, 1) == "2/3 upgraded, 1 not acted on"


def test_a_warning_event_says_so_once_per_change_of_the_refusals() -> None:
    f = fleet(3, refused=("node-00",))
    notes = [[e for e in f.operator_pass().events if e.reason == "NotActedOn"] for _ in range(3)]
    assert [len(n) for n in notes] == [1, 0, 0], notes
    assert notes[0][0].type == "Warning" and "(node-00) cannot act on this spec: spec.judgeBy" in notes[0][0].message
    f.refused = {"node-00": UNKNOWN, "node-01": UNKNOWN}
    assert [e.reason for e in f.operator_pass().events].count("NotActedOn") == 1


def test_an_install_granted_before_the_refusal_is_withdrawn_not_failed_and_granted_again_once_acted_on() -> None:
    f = fleet(2)
    f.operator_pass()
    assert sorted(f.persisted().grants) == ["node-00"]
    f.refused = {"node-00": UNKNOWN}
    f.operator_pass()
    status = f.persisted()
    assert "node-00" not in status.rollout and "node-00" not in status.grants and status.failed_nodes == 0
    assert sorted(status.grants) == ["node-01"], "the next node does not wait on the refusing one"
    assert status.phase == "Progressing"
    f.refused = {}  # the field removed (a new generation), or the agent upgraded
    f.settle()
    assert f.persisted().phase == "Succeeded" and condition(f, "NotActedOn")["status"] == "False"
    assert {n.version for n in f.nodes.values()} == {NEW}


def test_a_refusing_canary_node_leaves_the_wave_for_another() -> None:
    f = fleet(4, {"strategy": {"type": "canary", "canary": {"percentage": "25%"}}})
    f.operator_pass()
    assert f.persisted().canary_nodes == ["node-00"]
    f.refused = {"node-00": UNKNOWN}
    f.operator_pass()
    assert f.persisted().canary_nodes == ["node-01"] and sorted(f.persisted().grants) == ["node-01"]
    f.settle()
    assert sorted(n for n, p in f.persisted().rollout.items() if p.stage.value == "Succeeded") == \
        ["node-01", "node-02", "node-03"]


def test_a_node_already_on_the_target_is_done_whatever_its_agent_makes_of_the_spec() -> None:
    f = fleet(2, refused=("node-00",))
    f.nodes["node-00"].version = NEW
    f.settle()
    assert f.persisted().phase == "Succeeded" and condition(f, "NotActedOn")["status"] == "False"


def test_only_a_refusal_of_the_current_generation_counts() -> None:
    release_n = {"phase": "Idle", "observedGeneration": 3, "message": "not acted on: Extra inputs are not permitted"}
    raw = {"nodes": {
        "n1": release_n,
        "n2": {"phase": "Idle", "observedGeneration": 3, "message": f"not acted on: {UNKNOWN}"},
        "n3": {**release_n, "observedGeneration": 2},
        "n4": {**release_n, "message": "NodeUpgrade b is in charge of this node's upgrade"},
        "n5": {**release_n, "phase": "Failed"},
    }}
    assert refusals(raw, 3) == {"n1": "Extra inputs are not permitted", "n2": UNKNOWN}
