"""Lock-out risks: valid configurations that are accepted with a Warning condition and Event (risks.py)."""

from __future__ import annotations

from typing import Any

import pytest

from maculaos.api.healthcheck import HealthCheckSpec
from maculaos.api.meshrole import MeshRoleSpec
from maculaos.controller.reconcile import judge
from maculaos.controller.risks import ESSENTIAL_UNITS, lockout_risks
from tests.unit.test_validation import Cluster

PEERS = {"bootstrapPeers": ["https://boot.example.org:443"]}
NO_SSH = {**PEERS, "firewall": {"allowSSH": False}}
SHOP = {"nodeSelector": {"matchLabels": {"macula.io/site": "shop"}}}
WAREHOUSE = {"nodeSelector": {"matchLabels": {"macula.io/site": "warehouse"}}}


def meshrole_risks(spec: dict[str, Any], others: dict[str, dict[str, Any]] | None = None) -> list[str]:
    cluster = Cluster(roles={"this": spec, **(others or {})})
    return [p.reason for p in lockout_risks("this", MeshRoleSpec.model_validate(spec), cluster)]


def test_a_meshrole_dropping_ssh_on_every_node_is_a_lockout_risk() -> None:
    assert meshrole_risks(NO_SSH) == ["SSHLockout"]
    assert meshrole_risks({**PEERS, "firewall": {"allowSSH": False, "extraPorts": [{"port": 23}]}}) == ["SSHLockout"]
    udp = {**PEERS, "firewall": {"allowSSH": False, "extraPorts": [{"port": 22, "protocol": "udp"}]}}
    assert meshrole_risks(udp) == ["SSHLockout"], "22/udp is not SSH"


@pytest.mark.parametrize("firewall", [
    {"allowSSH": True},
    {"allowSSH": False, "extraPorts": [{"port": 22, "sources": ["10.0.0.0/8"]}]},
    {"allowSSH": False, "defaultPolicy": "accept"},
    {"allowSSH": False, "enabled": False},
])
def test_a_firewall_that_admits_ssh_somehow_is_no_risk(firewall: dict[str, Any]) -> None:
    assert meshrole_risks({**PEERS, "firewall": firewall}) == []


def test_ssh_closed_on_some_nodes_only_is_no_lockout_until_every_node_is_closed() -> None:
    assert meshrole_risks({**NO_SSH, **SHOP}) == [], "the warehouse nodes still admit SSH"
    assert meshrole_risks({**NO_SSH, **SHOP}, {"rest": {**NO_SSH, **WAREHOUSE}}) == ["SSHLockout"]
    assert meshrole_risks({**NO_SSH, **SHOP}, {"rest": {**PEERS, **WAREHOUSE}}) == []
    assert meshrole_risks({**NO_SSH, **SHOP}, {"broken": {"firewall": "not a firewall"}}) == []


def check(**fields: Any) -> dict[str, Any]:
    return {"name": "c", "type": "systemd", "systemd": {"unit": "myapp.service"}, **fields}


@pytest.mark.parametrize("unit", sorted(ESSENTIAL_UNITS))
def test_restarting_an_essential_unit_is_a_risk(unit: str) -> None:
    by_restart_unit = HealthCheckSpec.model_validate({"checks": [check(restartOnFailure=True, restartUnit=unit)]})
    risks = lockout_risks("h", by_restart_unit, Cluster())
    assert [(p.field, p.reason) for p in risks] == [("spec.checks[0].restartUnit", "EssentialUnitRestart")]
    assert unit in risks[0].message and "restartOnFailure: false" in risks[0].message


def test_a_systemd_check_restarting_its_own_essential_unit_is_a_risk() -> None:
    spec = HealthCheckSpec.model_validate({"checks": [
        check(), check(name="k3s", systemd={"unit": "k3s.service"}, restartOnFailure=True)]})
    assert [p.field for p in lockout_risks("h", spec, Cluster())] == ["spec.checks[1].systemd.unit"]


@pytest.mark.parametrize("fields", [
    {"systemd": {"unit": "k3s.service"}},  # only alerts
    {"restartOnFailure": True},  # restarts myapp.service
    {"restartOnFailure": True, "restartUnit": "dbus-user.service"},
])
def test_checks_that_restart_nothing_essential_are_no_risk(fields: dict[str, Any]) -> None:
    assert lockout_risks("h", HealthCheckSpec.model_validate({"checks": [check(**fields)]}), Cluster()) == []


def body(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": "this", "generation": 1}, "spec": spec}


def test_judge_accepts_with_a_warning_condition_and_one_warning_event() -> None:
    cluster = Cluster(roles={"this": NO_SSH})
    outcome = judge(body("MeshRole", NO_SSH), cluster)
    assert outcome.status is not None
    conditions = {c["type"]: c for c in outcome.status["conditions"]}
    assert conditions["Ready"]["status"] == "True", "accepted"
    assert (conditions["Warning"]["status"], conditions["Warning"]["reason"]) == ("True", "SSHLockout")
    assert conditions["Warning"]["message"].startswith("spec.firewall.allowSSH: no node of the cluster admits SSH")
    assert outcome.risk_event is not None and outcome.risk_event.type == "Warning"
    assert outcome.risk_event.reason == "SSHLockout"
    again = judge({**body("MeshRole", NO_SSH), "status": outcome.status}, cluster)
    assert again.risk_event is None, "the same risk is told once"


def test_judge_without_risk_says_so_and_tells_no_warning() -> None:
    outcome = judge(body("MeshRole", PEERS), Cluster(roles={"this": PEERS}))
    assert outcome.status is not None and outcome.risk_event is None
    warning = next(c for c in outcome.status["conditions"] if c["type"] == "Warning")
    assert (warning["status"], warning["reason"]) == ("False", "NoKnownRisk")
