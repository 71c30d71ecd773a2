"""Property test of the rollout planner over random event orders: node reports arriving in any order,
reboots, failed installs, failed health windows, PDB-blocked drains, time jumps, and operator crashes
(before or after writing status). Every operator pass starts from persisted status only, so each one is
also an operator restart. What must hold whatever the order:

- never more than maxUnavailable selected nodes cordoned or down at once;
- no node boots into the new version twice, and none is granted Reboot twice;
- once the rollout has ended, no node is left cordoned;
- when no node fails, the rollout completes with every node on the target.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maculaos.api.nodeupgrade import NodeUpgradeSpec
from maculaos.controller.nodeupgrade_rollout import max_unavailable
from tests.unit.rollout_sim import NEW, Fleet, SimNode


@st.composite
def specs(draw: st.DrawFn, patient: bool) -> dict[str, Any]:
    canary = draw(st.booleans())
    strategy: dict[str, Any] = {
        "type": "canary" if canary else "rolling",
        "maxUnavailable": draw(st.one_of(st.integers(1, 4), st.sampled_from(["0%", "10%", "25%", "50%", "100%"]))),
        "delayBetweenNodes": draw(st.sampled_from(["0s", "45s"])),
    }
    if canary:
        strategy["canary"] = {"percentage": draw(st.sampled_from(["10%", "34%"])),
                              "successThreshold": draw(st.sampled_from(["50%", "100%"]))}
    timeout = "24h" if patient else draw(st.sampled_from(["2m", "5m"]))
    return {
        "version": NEW, "strategy": strategy,
        "failurePolicy": {"maxFailedNodes": draw(st.integers(0, 2)),
                          "action": draw(st.sampled_from(["Pause", "PauseAndRollback"]))},
        "drain": {"enabled": draw(st.booleans()), "force": draw(st.booleans()), "timeout": timeout},
        "healthCheckWait": "30s", "healthCommitWindow": "24h" if patient else "5m",
    }


@st.composite
def fleets(draw: st.DrawFn, patient: bool, failures: bool) -> Fleet:
    count = draw(st.integers(1, 7))
    nodes = {}
    for i in range(count):
        name = f"node-{i:02d}"
        nodes[name] = SimNode(
            name, fail_install=failures and draw(st.booleans()), fails_health=failures and draw(st.booleans()),
            drain_blocked_passes=draw(st.integers(0, 3)))
    return Fleet(spec=NodeUpgradeSpec.model_validate(draw(specs(patient))), nodes=nodes)


EVENTS = st.lists(st.one_of(
    st.tuples(st.just("pass"), st.integers(0, 0)),
    st.tuples(st.just("agent"), st.integers(0, 6)),
    st.tuples(st.just("all-agents"), st.integers(0, 0)),
    st.tuples(st.just("tick"), st.integers(1, 300)),
    st.tuples(st.just("crash-before-write"), st.integers(0, 0)),
    st.tuples(st.just("crash-after-write"), st.integers(0, 0)),
), max_size=120)


def play(fleet: Fleet, events: list[tuple[str, int]]) -> None:
    bound = max_unavailable(fleet.spec, len(fleet.nodes))
    names = sorted(fleet.nodes)
    for kind, arg in events:
        if kind == "pass":
            fleet.operator_pass()
        elif kind == "agent":
            fleet.agent_step(names[arg % len(names)])
        elif kind == "all-agents":
            for name in names:
                fleet.agent_step(name)
        elif kind == "tick":
            fleet.now += dt.timedelta(seconds=arg)
        elif kind == "crash-before-write":
            fleet.operator_pass(write=False)
        else:
            fleet.operator_pass(act=False)
        check_invariants(fleet, bound)
    fleet.settle()
    check_invariants(fleet, bound)
    assert fleet.done(), f"rollout did not end: {fleet.status}"
    left = sorted(n.name for n in fleet.nodes.values() if n.unschedulable)
    assert not left, f"nodes left cordoned after the rollout: {left}"


def check_invariants(fleet: Fleet, bound: int) -> None:
    assert fleet.disrupted_now() <= bound, (
        f"{fleet.disrupted_now()} nodes disrupted, maxUnavailable {bound}: "
        f"{[(n.name, n.unschedulable, n.ready) for n in fleet.nodes.values()]}")
    for node in fleet.nodes.values():
        assert node.boots_into_new <= 1, f"{node.name} upgraded twice"
        assert len(fleet.reboot_grants.get(node.name, ())) <= 1, f"{node.name} granted Reboot twice"


def healthy_fleet_completes(fleet: Fleet, events: list[tuple[str, int]]) -> None:
    play(fleet, events)
    status = fleet.persisted()
    assert status.phase == "Succeeded", status.phase
    assert all(n.version == NEW for n in fleet.nodes.values())
    assert status.upgraded_nodes == len(fleet.nodes)


Property = tuple[st.SearchStrategy[Fleet], Callable[[Fleet, list[tuple[str, int]]], None]]
PROPERTIES: dict[str, Property] = {
    "a healthy fleet always completes within bounds": (fleets(patient=True, failures=False), healthy_fleet_completes),
    "failures never break the bounds and end cleanly": (fleets(patient=True, failures=True), play),
    "timeouts never leave a node cordoned": (fleets(patient=False, failures=True), play),
}
"""Each property: the fleets it draws and what must hold after any events (the benchmark
benchmarks/rollout_property.py runs them with more examples than CI does)."""

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(fleet=PROPERTIES["a healthy fleet always completes within bounds"][0], events=EVENTS)
def test_a_healthy_fleet_always_completes_within_bounds(fleet: Fleet, events: list[tuple[str, int]]) -> None:
    healthy_fleet_completes(fleet, events)


@SETTINGS
@given(fleet=PROPERTIES["failures never break the bounds and end cleanly"][0], events=EVENTS)
def test_failures_never_break_the_bounds_and_end_cleanly(fleet: Fleet, events: list[tuple[str, int]]) -> None:
    play(fleet, events)


@SETTINGS
@given(fleet=PROPERTIES["timeouts never leave a node cordoned"][0], events=EVENTS)
def test_timeouts_never_leave_a_node_cordoned(fleet: Fleet, events: list[tuple[str, int]]) -> None:
    play(fleet, events)
