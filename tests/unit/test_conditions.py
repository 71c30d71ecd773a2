"""Conditions keep their transition time while their status holds."""

from maculaos.controller.conditions import merge_condition, verdict_conditions
from maculaos.controller.validation import Problem, Verdict


def test_transition_time_kept_while_status_holds() -> None:
    old = [{"type": "Ready", "status": "True", "reason": "Accepted", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    same = merge_condition(old, {"type": "Ready", "status": "True", "reason": "Accepted", "message": "x"})
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z" and same[0]["message"] == "x"
    flipped = merge_condition(old, {"type": "Ready", "status": "False", "reason": "Invalid"})
    assert flipped[0]["lastTransitionTime"] != "2026-01-01T00:00:00Z"


def test_other_conditions_are_kept() -> None:
    old = [{"type": "Stale", "status": "True"}]
    merged = merge_condition(old, {"type": "Ready", "status": "True"})
    assert [c["type"] for c in merged] == ["Ready", "Stale"]


def test_invalid_verdict_sets_both_conditions_with_every_problem() -> None:
    verdict = Verdict(spec=None, problems=[Problem("spec.a", "bad", "Downgrade"), Problem("spec.b", "worse")])
    conditions = {c["type"]: c for c in verdict_conditions([], verdict, generation=4)}
    assert conditions["Ready"]["status"] == "False" and conditions["Invalid"]["status"] == "True"
    assert conditions["Invalid"]["reason"] == "Downgrade"
    assert conditions["Invalid"]["message"] == "spec.a: bad; spec.b: worse"
    assert conditions["Ready"]["observedGeneration"] == 4


def test_valid_verdict() -> None:
    conditions = {c["type"]: c for c in verdict_conditions([], Verdict(spec=None, matched_nodes=["a", "b"]), 1)}
    assert conditions["Ready"]["status"] == "True" and conditions["Ready"]["message"] == "accepted; selects 2 node(s)"
    assert conditions["Invalid"]["status"] == "False"
