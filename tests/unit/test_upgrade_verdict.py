"""The health commit window's verdict on a freshly rebooted node: the agent judges only checks it has seen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maculaos.agent.nodeupgrade import UpgradeEngine
from maculaos.api.nodeupgrade import HealthCheckSelector
from maculaos.host.rauc import Rauc

NODE: dict[str, Any] = {"metadata": {"name": "macula-pi-03", "labels": {"macula.io/site": "shop"}},
                        "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
SICK = {"metadata": {"name": "sick"},
        "spec": {"nodeSelector": {"matchLabels": {"macula.io/site": "shop"}},
                 "checks": [{"name": "port", "type": "tcp", "tcp": {"port": 9}}]}}


class Reachable:
    def healthy(self) -> bool:
        return True


def engine(tmp_path: Path, healthchecks: dict[str, dict[str, Any]] | None,
           states: dict[tuple[str, str], tuple[bool, bool, str]]) -> UpgradeEngine:
    return UpgradeEngine("macula-pi-03", tmp_path, Rauc("rauc", None, root=tmp_path), "true",
                         Reachable(), lambda: {}, lambda: {}, lambda: healthchecks, lambda: states)  # type: ignore[arg-type]


def test_not_healthy_before_the_healthchecks_are_listed(tmp_path: Path) -> None:
    """Right after the reboot the agent's watches have not listed yet: that is no reason to commit."""
    verdict = engine(tmp_path, None, {}).verdict(NODE)
    assert not verdict.ok and "not listed yet" in verdict.reason


def test_a_listed_check_must_have_run_and_pass(tmp_path: Path) -> None:
    assert "has not run yet" in engine(tmp_path, {"sick": SICK}, {}).verdict(NODE).reason
    failing = engine(tmp_path, {"sick": SICK}, {("sick", "port"): (True, False, "refused")}).verdict(NODE)
    assert not failing.ok and "sick/port failing: refused" in failing.reason
    passing = engine(tmp_path, {"sick": SICK}, {("sick", "port"): (True, True, "")}).verdict(NODE)
    assert passing.ok, passing.reason
    assert engine(tmp_path, {}, {}).verdict(NODE).ok        # listed, and none selects the node


def test_health_check_selector_picks_the_judges(tmp_path: Path) -> None:
    """healthCheckSelector leaves a failing check out of the verdict unless its HealthCheck's labels match;
    a matching failing check still fails it."""
    gate = {**SICK, "metadata": {"name": "gate", "labels": {"macula.io/upgrade-gate": "true"}}}
    listed = {"sick": SICK, "gate": gate}
    states = {("sick", "port"): (True, False, "refused"), ("gate", "port"): (True, True, "")}
    judges = HealthCheckSelector.model_validate({"matchLabels": {"macula.io/upgrade-gate": "true"}})
    assert not engine(tmp_path, listed, states).verdict(NODE).ok           # unset: every HealthCheck judges
    assert engine(tmp_path, listed, states).verdict(NODE, judges).ok
    states[("gate", "port")] = (True, False, "refused")
    judged = engine(tmp_path, listed, states).verdict(NODE, judges)
    assert not judged.ok and "gate/port failing" in judged.reason and "sick/" not in judged.reason
    absent = HealthCheckSelector.model_validate({"matchExpressions": [
        {"key": "macula.io/upgrade-gate", "operator": "DoesNotExist"}]})
    assert "sick/port failing" in engine(tmp_path, listed, states).verdict(NODE, absent).reason
