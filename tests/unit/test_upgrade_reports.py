"""How the operator reads the agents' entries (controller/nodeupgrade.parse_reports): a phase counts only as
the answer to the grant this object gave the node last; facts always count."""

from __future__ import annotations

import datetime as dt
from typing import Any

from maculaos.api.nodeupgrade import NodeStage, NodeUpgradeSpec, NodeUpgradeStatus
from maculaos.controller.nodeupgrade import parse_reports
from maculaos.controller.nodeupgrade_rollout import NodeFacts, RolloutInput, plan_rollout

UID = "0b7e7c8e-0000-4000-8000-00000000000a"
OLD_UID = "5d1f4a10-0000-4000-8000-00000000000b"
T1, T2 = "2026-11-26T01:00:00Z", "2026-11-26T01:05:00Z"


def entry(phase: str, uid: str | None, action: str = "Install", time: str = T1, **more: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"phase": phase, "message": f"{phase} says the agent", "targetVersion": "0.2.0",
                           "version": "0.1.0", "slot": "A", "bootId": "boot-1", **more}
    if uid is not None:
        out["observedGrant"] = {"uid": uid, "action": action, "time": time}
    return out


def read(node_entry: dict[str, Any], grant: dict[str, str] | None) -> Any:
    raw = {"nodes": {"n1": node_entry}, "grants": {"n1": grant} if grant else {}}
    return parse_reports(raw, UID)["n1"]


def test_a_phase_counts_only_as_the_answer_to_the_current_grant() -> None:
    install = {"action": "Install", "time": T1}
    assert read(entry("Failed", UID), install).phase == "Failed"
    for stale in (entry("Failed", OLD_UID),                      # another object (deleted, same version)
                  entry("Failed", UID, time="2026-11-25T09:00:00Z"),  # an earlier grant of this object
                  entry("Installed", UID, action="Reboot"),      # another action at the same second
                  entry("Failed", None)):                        # an entry that answers nothing
        seen = read(stale, install)
        assert (seen.phase, seen.message, seen.target_version) == ("", "", ""), stale
        assert (seen.version, seen.slot, seen.boot_id) == ("0.1.0", "A", "boot-1"), "facts always count"
    assert read(entry("Failed", UID), None).phase == "", "no grant, nothing to answer"


def test_a_stale_failure_from_a_deleted_object_does_not_fail_the_node() -> None:
    """The regression of the last landing, through the planner: the node holds Failed for 0.2.0 from a
    deleted NodeUpgrade; the new one grants it Install and must wait for the answer to its own grant."""
    spec = NodeUpgradeSpec.model_validate({"version": "0.2.0"})
    status = NodeUpgradeStatus.model_validate({
        "target": {"version": "0.2.0"}, "grants": {"n1": {"action": "Install", "time": T2}},
        "rollout": {"n1": {"stage": "Installing", "targetVersion": "0.2.0", "since": T2}}})
    now = dt.datetime(2026, 11, 26, 1, 5, 30, tzinfo=dt.timezone.utc)

    def stage_after(node_entry: dict[str, Any]) -> NodeStage:
        raw = {"grants": {"n1": {"action": "Install", "time": T2}}, "nodes": {"n1": node_entry}}
        plan = plan_rollout(RolloutInput(spec=spec, status=status, matched=["n1"], nodes={"n1": NodeFacts()},
                                         reports=parse_reports(raw, UID), now=now, target=status.target))
        return plan.rollout["n1"].stage

    assert stage_after(entry("Failed", OLD_UID, time=T1)) is NodeStage.INSTALLING
    assert stage_after(entry("Failed", UID, time=T1)) is NodeStage.INSTALLING
    assert stage_after(entry("Failed", UID, time=T2)) is NodeStage.FAILED, "its own answer still counts"
