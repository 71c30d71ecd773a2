"""An in-memory fleet for exercising the rollout planner: Nodes, stand-in agents that follow the 4a/4b
contract (status.nodes phases, bootId changes on reboot), and an operator pass that keeps nothing between
passes but the status it wrote, exactly as the real operator after a restart.

The stand-in agents are test doubles of the node side (issue #4b builds the real one with RAUC); the
planner under test is the real one.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field
from typing import Any

from maculaos.api.nodeupgrade import (
    AgentPhase,
    GrantAction,
    NodeUpgradeNodeEntry,
    NodeUpgradeSpec,
    NodeUpgradeStatus,
    ReleaseTarget,
)
from maculaos.controller.nodeupgrade_rollout import DrainReport, NodeFacts, Plan, RolloutInput, plan_rollout

OLD, NEW = "0.1.0", "0.2.0"
START = dt.datetime(2026, 11, 25, 2, 0, tzinfo=dt.timezone.utc)
_boot_ids = itertools.count(1)


@dataclass
class SimNode:
    name: str
    fail_install: bool = False
    fails_health: bool = False
    drain_blocked_passes: int = 0
    version: str = OLD
    ready: bool = True
    unschedulable: bool = False
    boot_id: str = field(default_factory=lambda: f"boot-{next(_boot_ids)}")
    down: bool = False
    phase: str = AgentPhase.IDLE.value
    target_version: str = ""
    message: str = ""
    boots_into_new: int = 0

    def report(self) -> NodeUpgradeNodeEntry:
        return NodeUpgradeNodeEntry(phase=self.phase, version=self.version, boot_id=self.boot_id,
                                    target_version=self.target_version, message=self.message)

    def facts(self) -> NodeFacts:
        return NodeFacts(ready=self.ready, unschedulable=self.unschedulable, version=self.version)


@dataclass
class Fleet:
    spec: NodeUpgradeSpec
    nodes: dict[str, SimNode]
    now: dt.datetime = START
    status: dict[str, Any] = field(default_factory=dict)
    reboot_grants: dict[str, set[str]] = field(default_factory=dict)
    target: ReleaseTarget = field(default_factory=lambda: ReleaseTarget(version=NEW))
    last_plan: Plan | None = None
    held: dict[str, str] = field(default_factory=dict)
    """Nodes another NodeUpgrade holds, by node (what the operator reads from the other objects)."""
    refused: dict[str, str] = field(default_factory=dict)
    """Nodes whose agent cannot act on the spec, by node: what it said (controller/nodeupgrade.refusals)."""

    # -- the operator ---------------------------------------------------------------------------------
    def persisted(self) -> NodeUpgradeStatus:
        return NodeUpgradeStatus.model_validate(self.status)

    def operator_pass(self, write: bool = True, act: bool = True,
                      reports: dict[str, NodeUpgradeNodeEntry] | None = None) -> Plan:
        """One pass from persisted status only. write=False: crashed before writing status; act=False:
        crashed after writing it, before cordoning/uncordoning. reports: entries that differ from what the
        nodes would say (a stale view)."""
        status = self.persisted()
        drains = {}
        for name, progress in status.rollout.items():
            node = self.nodes[name]
            if progress.stage.value == "Draining" and node.unschedulable:
                done = node.drain_blocked_passes == 0 or progress.forced
                node.drain_blocked_passes = max(0, node.drain_blocked_passes - 1)
                drains[name] = DrainReport(done=done, message="" if done else "pod web-0 blocked by its PDB")
        plan = plan_rollout(RolloutInput(
            spec=self.spec, status=status, matched=sorted(self.nodes),
            nodes={n: s.facts() for n, s in self.nodes.items()},
            reports={n: s.report() for n, s in self.nodes.items()} | (reports or {}), now=self.now,
            target=self.target, drains=drains, held=self.held, refused=self.refused))
        if not write:
            return plan
        self.status = {**plan.status_fields(), "target": self.target.model_dump(mode="json", by_alias=True),
                       "conditions": plan.conditions()}
        self.last_plan = plan
        for name, grant in plan.grants.items():
            if grant.action is GrantAction.REBOOT:
                self.reboot_grants.setdefault(name, set()).add(grant.time)
        if act:
            for name in plan.uncordon:
                self.nodes[name].unschedulable = False
            for name in plan.cordon:
                self.nodes[name].unschedulable = True
        return plan

    # -- the agents -----------------------------------------------------------------------------------
    def agent_step(self, name: str) -> None:
        """The node's agent takes its next step on its grant, as the contract describes."""
        node = self.nodes[name]
        grant = self.persisted().grants.get(name)
        if node.down:
            self._boot(node)
            return
        if node.phase == AgentPhase.COMMITTING.value:
            node.phase = AgentPhase.ROLLED_BACK.value if node.fails_health else AgentPhase.SUCCEEDED.value
            if node.fails_health:
                node.version, node.message = OLD, "health commit window failed"
            return
        if grant is None or name in self.refused:  # a refusing agent leaves the object alone, grant or not
            return
        if grant.action is GrantAction.INSTALL and node.phase in ("Idle", "Downloading"):
            node.target_version = self.target.version
            if node.phase == "Idle":
                node.phase = AgentPhase.DOWNLOADING.value
            elif node.fail_install:
                node.phase, node.message = AgentPhase.FAILED.value, "sha256 mismatch"
            else:
                node.phase = AgentPhase.INSTALLED.value
        elif grant.action is GrantAction.REBOOT and node.phase == AgentPhase.INSTALLED.value:
            node.phase, node.down, node.ready = AgentPhase.REBOOTING.value, True, False
        elif grant.action is GrantAction.ROLLBACK and node.phase == AgentPhase.SUCCEEDED.value:
            node.phase, node.down, node.ready = "RollbackRebooting", True, False

    def _boot(self, node: SimNode) -> None:
        node.down, node.ready, node.boot_id = False, True, f"boot-{next(_boot_ids)}"
        if node.phase == "RollbackRebooting":
            node.version, node.phase, node.message = OLD, AgentPhase.ROLLED_BACK.value, "Rollback granted"
            return
        node.boots_into_new += 1
        node.version, node.phase = self.target.version, AgentPhase.COMMITTING.value

    # -- what must always hold ------------------------------------------------------------------------
    def disrupted_now(self) -> int:
        return sum(1 for n in self.nodes.values() if n.unschedulable or not n.ready)

    def done(self) -> bool:
        status = self.persisted()
        return status.phase in ("Succeeded", "Failed") and all(
            p.stage.final for p in status.rollout.values()) and not status.grants

    def settle(self, step: dt.timedelta = dt.timedelta(seconds=31), limit: int = 400) -> None:
        """Run operator and agents until the rollout ends (or the limit, which a test then reports)."""
        for _ in range(limit):
            before = self.status
            self.operator_pass()
            quiet = {**before, "lastNodeFinishedTime": ""} == {**self.status, "lastNodeFinishedTime": ""}
            if quiet and self.done() and not any(n.unschedulable for n in self.nodes.values()):
                return
            for name in sorted(self.nodes):
                self.agent_step(name)
            self.now += step
