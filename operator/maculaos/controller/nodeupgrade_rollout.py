"""The rollout planner: one pure decision per pass over a NodeUpgrade, from persisted status alone.

Input: the spec, the resolved target, facts about the selected Nodes, the agents' reports
(status.nodes), the operator's own bookkeeping from the last pass (status.grants/rollout/...), the
outcome of the drain steps just taken, and the time. Output: the bookkeeping to write, the Nodes to cordon
and uncordon, counts, phase, conditions and Events. Nothing here talks to the API server, so an operator
that restarts, or a new leader, takes exactly the same decisions from the same status.

Per node (status.rollout.<node>.stage), the operator drives:

    (new) --Install grant--> Installing --agent Installed, capacity--> Draining --drained--> Rebooting
      Rebooting --new bootId, agent Succeeded, Node Ready--> Verifying --healthy healthCheckWait--> Succeeded
    and to the final Failed (install failed, drain timed out, node not back), RolledBack (the node's own
    health window failed), Reverted (an operator-requested rollback finished).

Order (documented in docs/architecture.md): workers before control-plane nodes, the operator's own node
last, by name within each group; the canary wave is the first nodes of that order not already at target.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field

from maculaos.api.common import parse_duration, parse_percent
from maculaos.api.nodeupgrade import (
    AgentPhase,
    FailureAction,
    Grant,
    GrantAction,
    MaintenanceWindow,
    NodeProgress,
    NodeStage,
    NodeUpgradeNodeEntry,
    NodeUpgradeSpec,
    NodeUpgradeStatus,
    ReleaseTarget,
    StrategyType,
)
from maculaos.api.times import parse_rfc3339, rfc3339
from maculaos.controller.conditions import EventNote

#: Time a node has to come back from its reboot, on top of its healthCommitWindow.
BOOT_ALLOWANCE = dt.timedelta(minutes=10)
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True)
class NodeFacts:
    """What the planner needs from a Node object."""

    ready: bool = True
    unschedulable: bool = False
    version: str = ""
    control_plane: bool = False


@dataclass(frozen=True)
class DrainReport:
    """Outcome of the drain step just taken on a node in stage Draining."""

    done: bool
    message: str = ""
    started: bool = True
    """A drain step really ran (False: the node is not cordoned yet, so the timeout does not run)."""


@dataclass(frozen=True)
class RolloutInput:
    spec: NodeUpgradeSpec
    status: NodeUpgradeStatus
    matched: list[str]
    nodes: Mapping[str, NodeFacts]
    """Facts of every Node in the cluster (a node that left the selection may still owe an uncordon)."""
    reports: Mapping[str, NodeUpgradeNodeEntry]
    now: dt.datetime
    target: ReleaseTarget | None = None
    target_error: str = ""
    drains: Mapping[str, DrainReport] = field(default_factory=dict)
    own_node: str = ""
    """Node the operator runs on (upgraded last); empty when unknown."""
    held: Mapping[str, str] = field(default_factory=dict)
    """Selected nodes another NodeUpgrade is in charge of (api.nodeupgrade.holder), by node: the NodeUpgrade.
    This rollout leaves them alone (no grant, no failure, no rollback) until that one lets go."""
    refused: Mapping[str, str] = field(default_factory=dict)
    """Selected nodes whose agent cannot act on this spec (a field its older release does not know), by node:
    what the agent said (controller/nodeupgrade.py: refusals). Left out like held nodes, and named in the
    NotActedOn condition, until the agent acts on the spec (upgraded, or the field removed)."""


@dataclass
class Plan:
    """What the pass decided. status_fields() is what goes into the object's status."""

    rollout: dict[str, NodeProgress]
    grants: dict[str, Grant]
    canary_nodes: list[str]
    last_node_finished_time: str
    phase: str = "Pending"
    message: str = ""
    stop_reason: str = ""
    cordon: list[str] = field(default_factory=list)
    uncordon: list[str] = field(default_factory=list)
    events: list[EventNote] = field(default_factory=list)
    upgraded: int = 0
    failed: int = 0
    disrupted: int = 0
    max_unavailable: int = 1
    held: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    def status_fields(self) -> dict[str, object]:
        return {
            "phase": self.phase,
            "upgradedNodes": self.upgraded,
            "failedNodes": self.failed,
            "disruptedNodes": self.disrupted,
            "grants": {n: g.model_dump(by_alias=True, mode="json") for n, g in sorted(self.grants.items())},
            "rollout": {n: p.model_dump(by_alias=True, mode="json", exclude_defaults=True)
                        for n, p in sorted(self.rollout.items())},
            "canaryNodes": self.canary_nodes,
            "lastNodeFinishedTime": self.last_node_finished_time,
        }

    def conditions(self) -> list[dict[str, str]]:
        """Progressing (True while nodes move or wait their turn), Failed (the rollout stopped), Waiting
        (selected nodes are held by another NodeUpgrade) and NotActedOn (their agents cannot act on the spec)."""
        active = self.phase == "Progressing"
        progressing = {"type": "Progressing", "status": "True" if active else "False",
                       "reason": "RollingOut" if active else self.phase, "message": self.message}
        failed = ({"type": "Failed", "status": "True", "reason": self.stop_reason, "message": self.message}
                  if self.stop_reason else {"type": "Failed", "status": "False", "reason": "WithinBudget",
                                            "message": ""})
        return [progressing, failed, self.waiting_condition(), self.not_acted_on_condition()]

    def waiting_condition(self) -> dict[str, str]:
        if not self.held:
            return {"type": "Waiting", "status": "False", "reason": "NoNodeHeld", "message": ""}
        return {"type": "Waiting", "status": "True", "reason": "NodesHeld", "message": held_message(self.held)}

    def not_acted_on_condition(self) -> dict[str, str]:
        if not self.refused:
            return {"type": "NotActedOn", "status": "False", "reason": "AgentsAct", "message": ""}
        return {"type": "NotActedOn", "status": "True", "reason": "AgentCannotAct",
                "message": refused_message(self.refused)}


def held_message(held: Mapping[str, str]) -> str:
    """'2 node(s) held by NodeUpgrade a (n1, n2); ...': who holds what, for status and the phase message."""
    by_holder: dict[str, list[str]] = {}
    for node, owner in sorted(held.items()):
        by_holder.setdefault(owner, []).append(node)
    parts = [f"{len(nodes)} node(s) held by NodeUpgrade {owner} ({', '.join(nodes[:5])}"
             f"{', ...' if len(nodes) > 5 else ''})" for owner, nodes in sorted(by_holder.items())]
    return "; ".join(parts) + "; they wait until it finishes"


def refused_message(refused: Mapping[str, str]) -> str:
    """Which nodes' agents cannot act on the spec, grouped by what they said (which names the field), and
    what the user can do about it."""
    by_reason: dict[str, list[str]] = {}
    for node, reason in sorted(refused.items()):
        by_reason.setdefault(reason, []).append(node)
    parts = [f"the agent of {len(nodes)} node(s) ({', '.join(nodes[:5])}{', ...' if len(nodes) > 5 else ''}) "
             f"cannot act on this spec: {reason}" for reason, nodes in sorted(by_reason.items())]
    return ("; ".join(parts) + "; they are left out of this rollout until their agent can act on it: remove the "
            "field from the spec, or upgrade those nodes first with a NodeUpgrade that leaves it out (this one "
            "holds them until it is deleted or set to autoApply: false)")




def max_unavailable(spec: NodeUpgradeSpec, selected: int) -> int:
    """spec.strategy.maxUnavailable as a node count: percentages round down; never below 1."""
    value = spec.strategy.max_unavailable
    count = value if isinstance(value, int) else selected * parse_percent(value) // 100
    return max(1, count)


def node_order(names: list[str], nodes: Mapping[str, NodeFacts], own_node: str) -> list[str]:
    """Workers first, control-plane nodes after them, the operator's own node last; by name within."""
    def key(name: str) -> tuple[bool, bool, str]:
        facts = nodes.get(name, NodeFacts())
        return name == own_node, facts.control_plane, name
    return sorted(names, key=key)


def in_window(windows: list[MaintenanceWindow], now: dt.datetime) -> bool:
    """True when now falls in any window (each in its own time zone); no windows means always."""
    return not windows or any(_window_open(w, now) for w in windows)


def _window_open(window: MaintenanceWindow, now: dt.datetime) -> bool:
    local = now.astimezone(zoneinfo.ZoneInfo(window.time_zone))
    start, end = dt.time.fromisoformat(window.start), dt.time.fromisoformat(window.end)
    days = {d.value for d in window.days}
    today, yesterday = _WEEKDAYS[local.weekday()], _WEEKDAYS[(local.weekday() - 1) % 7]
    clock = local.time().replace(tzinfo=None)
    if start < end:
        return today in days and start <= clock < end
    return (today in days and clock >= start) or (yesterday in days and clock < end)


def canary_size(spec: NodeUpgradeSpec, candidates: int) -> int:
    percentage = parse_percent(spec.strategy.canary.percentage) if spec.strategy.canary else 5
    return min(candidates, max(1, math.ceil(candidates * percentage / 100)))


class _Pass:
    """One planning pass; methods mutate the working copy of the bookkeeping."""

    def __init__(self, inp: RolloutInput) -> None:
        self.inp = inp
        self.spec = inp.spec
        self.now = inp.now
        self.stamp = rfc3339(inp.now)
        status = inp.status
        self.plan = Plan(rollout=dict(status.rollout), grants=dict(status.grants),
                         canary_nodes=list(status.canary_nodes),
                         last_node_finished_time=status.last_node_finished_time)
        self.order = node_order(list(inp.matched), inp.nodes, inp.own_node)
        self.plan.max_unavailable = max_unavailable(self.spec, len(inp.matched))
        self.plan.held = {n: h for n, h in inp.held.items() if n in inp.matched}
        self.plan.refused = {n: r for n, r in inp.refused.items() if n in inp.matched and n not in self.plan.held}

    # -- helpers ---------------------------------------------------------------------------------------
    def event(self, type_: str, reason: str, message: str) -> None:
        self.plan.events.append(EventNote(type_, reason, message))

    def set_stage(self, name: str, progress: NodeProgress, stage: NodeStage, message: str, **extra: object) -> None:
        updated = progress.model_copy(update={"stage": stage, "since": self.stamp, "message": message, **extra})
        self.plan.rollout[name] = updated
        if stage.final:
            self.plan.grants.pop(name, None)
            if stage is not NodeStage.SUCCEEDED or progress.stage is not NodeStage.INSTALLING:
                self.plan.last_node_finished_time = self.stamp

    def grant(self, name: str, action: GrantAction) -> None:
        self.plan.grants[name] = Grant(action=action, time=self.stamp)

    def elapsed(self, since: str) -> dt.timedelta:
        start = parse_rfc3339(since)
        return self.now - start if start else dt.timedelta(0)

    def report(self, name: str) -> NodeUpgradeNodeEntry:
        return self.inp.reports.get(name) or NodeUpgradeNodeEntry()

    def facts(self, name: str) -> NodeFacts:
        return self.inp.nodes.get(name, NodeFacts(ready=False))

    def back_timeout(self) -> dt.timedelta:
        return parse_duration(self.spec.health_commit_window) + BOOT_ALLOWANCE

    # -- step 1: move every tracked node along -----------------------------------------------------------
    def advance_all(self) -> None:
        target = self.inp.target.version if self.inp.target else None
        for name in sorted(self.plan.rollout):
            progress = self.plan.rollout[name]
            if name not in self.inp.nodes:  # the Node is gone: nothing left to do or to uncordon
                del self.plan.rollout[name]
                self.plan.grants.pop(name, None)
                continue
            if target is not None and progress.target_version != target and not progress.stage.disruptive:
                self._forget(name, progress)  # the target moved on: an old record must not block the new one
                continue
            if name not in self.inp.matched and not progress.stage.final:
                self.set_stage(name, progress, NodeStage.FAILED, "no longer selected by spec.nodeSelector")
                continue
            if name in self.plan.held and not progress.stage.disruptive:
                self._let_go(name, progress)
                continue
            if name in self.plan.refused and progress.stage is NodeStage.INSTALLING:
                del self.plan.rollout[name]  # the agent never began: withdrawn, not failed (never cordoned)
                self.plan.grants.pop(name, None)
                continue
            self.advance(name, progress)
            self._settle_cordon(name)
        for name in list(self.plan.grants):
            if name not in self.plan.rollout:
                del self.plan.grants[name]  # a grant without a record is never left standing

    def _forget(self, name: str, progress: NodeProgress) -> None:
        if progress.cordoned:  # keep the record until the uncordon is done
            self.plan.rollout[name] = progress.model_copy(update={"stage": NodeStage.FAILED})
            self._settle_cordon(name)
            return
        del self.plan.rollout[name]
        self.plan.grants.pop(name, None)

    def _let_go(self, name: str, progress: NodeProgress) -> None:
        """Another NodeUpgrade holds the node: withdraw our grant and forget our record of it (an install
        not begun is not a failure; a final record is re-derived once the node is ours again). A record
        that owes an uncordon stays until the uncordon is done."""
        self.plan.grants.pop(name, None)
        if progress.cordoned:
            self.plan.rollout[name] = progress.model_copy(update={
                "stage": progress.stage if progress.stage.final else NodeStage.REVERTED,
                "message": f"held by NodeUpgrade {self.plan.held[name]}"})
            self._settle_cordon(name)
            return
        del self.plan.rollout[name]

    def _settle_cordon(self, name: str) -> None:
        """A finished node the operator cordoned is uncordoned; the flag clears once the Node shows it."""
        progress = self.plan.rollout[name]
        facts = self.facts(name)
        if progress.stage.disruptive and self.spec.drain.enabled and not facts.unschedulable:
            # Someone uncordoned a node we are disrupting (or our cordon did not land): it is ours now.
            self.plan.rollout[name] = progress.model_copy(update={"cordoned": True})
            self.plan.cordon.append(name)
        elif progress.stage.final and progress.cordoned:
            if facts.unschedulable:
                self.plan.uncordon.append(name)
            else:
                self.plan.rollout[name] = progress.model_copy(update={"cordoned": False})

    def advance(self, name: str, progress: NodeProgress) -> None:
        step = {
            NodeStage.INSTALLING: self._installing,
            NodeStage.DRAINING: self._draining,
            NodeStage.REBOOTING: self._rebooting,
            NodeStage.VERIFYING: self._verifying,
        }.get(progress.stage)
        if step is not None:
            step(name, progress)
        else:
            self.plan.grants.pop(name, None)
            if progress.stage is NodeStage.SUCCEEDED:
                self._left_on_the_node(name, progress)

    def _left_on_the_node(self, name: str, progress: NodeProgress) -> None:
        """A node recorded Succeeded that no longer runs the target was changed on the node itself
        (`maculaos upgrade --rollback`, or another version installed there): the record says so, and the
        rollout leaves the node alone rather than undo a person's choice. Both the Node's label and the
        agent's own entry must say so, so that one stale view does not turn a good record."""
        running, reported = self.facts(name).version, self.report(name)
        target = progress.target_version
        if not running or running == target or reported.version != running:
            return
        slot = f" in slot {reported.slot}" if reported.slot else ""
        why = (f"runs {running}{slot} now, not {target}: changed on the node itself (for example "
               "`maculaos upgrade --rollback`); this rollout leaves it there")
        self.set_stage(name, progress, NodeStage.REVERTED, why, upgraded=False)
        self.event("Warning", "NodeChangedOnNode", f"{name}: {why}")

    def _installing(self, name: str, progress: NodeProgress) -> None:
        report = self.report(name)
        if report.phase == AgentPhase.FAILED and report.target_version == progress.target_version:
            self.set_stage(name, progress, NodeStage.FAILED, f"install failed: {report.message}")
            self.event("Warning", "InstallFailed", f"{name}: {report.message}")
        elif self.facts(name).version == progress.target_version:
            self.set_stage(name, progress, NodeStage.SUCCEEDED, f"already runs {progress.target_version}")

    def _draining(self, name: str, progress: NodeProgress) -> None:
        drain = self.inp.drains.get(name)
        if drain is not None and drain.done:
            self._grant_reboot(name, progress, "drained")
            return
        if drain is not None and drain.started and not progress.drain_started:
            progress = progress.model_copy(update={"drain_started": self.stamp})
            self.plan.rollout[name] = progress
        timeout = parse_duration(self.spec.drain.timeout)
        # The clock runs from the first real drain step: an operator that was down (or a cordon that has
        # not landed yet) does not eat into the drain's time.
        waited = self.elapsed(progress.drain_started) if progress.drain_started else dt.timedelta(0)
        detail = drain.message if drain else "drain not started yet"
        if waited < timeout:
            self.plan.rollout[name] = progress.model_copy(update={"message": f"draining: {detail}"})
        elif self.spec.drain.force and not progress.forced:
            self.plan.rollout[name] = progress.model_copy(update={
                "forced": True, "message": f"drain timed out after {self.spec.drain.timeout}; deleting: {detail}"})
            self.event("Warning", "DrainForced", f"{name}: drain timed out; deleting the remaining pods ({detail})")
        elif waited >= timeout * 2 or not self.spec.drain.force:
            why = f"drain timed out after {self.spec.drain.timeout}: {detail}; node uncordoned, not rebooted"
            self.set_stage(name, progress, NodeStage.FAILED, why)
            self.event("Warning", "DrainTimeout", f"{name}: {why}")

    def _grant_reboot(self, name: str, progress: NodeProgress, why: str) -> None:
        action = GrantAction.ROLLBACK if progress.rollback else GrantAction.REBOOT
        self.set_stage(name, progress, NodeStage.REBOOTING, f"{why}; {action.value} granted",
                       boot_id=self.report(name).boot_id)
        self.grant(name, action)
        self.event("Normal", "RebootGranted", f"{name}: {why}; {action.value} granted")

    def _rebooting(self, name: str, progress: NodeProgress) -> None:
        report = self.report(name)
        rebooted = bool(report.boot_id) and report.boot_id != progress.boot_id
        if rebooted and report.phase == AgentPhase.ROLLED_BACK and not progress.rollback:
            self.set_stage(name, progress, NodeStage.ROLLED_BACK, f"rolled back: {report.message}")
            self.event("Warning", "RolledBack", f"{name}: {report.message}")
        elif rebooted and self._healthy(name, progress):
            self.set_stage(name, progress, NodeStage.VERIFYING, "back and healthy; waiting healthCheckWait",
                           healthy_since=self.stamp)
        elif self.elapsed(progress.since) > self.back_timeout():
            self._not_back(name, progress)

    def _healthy(self, name: str, progress: NodeProgress) -> bool:
        report = self.report(name)
        if not self.facts(name).ready:
            return False
        if progress.rollback:
            return report.phase == AgentPhase.ROLLED_BACK
        return report.phase == AgentPhase.SUCCEEDED and report.version == progress.target_version

    def _not_back(self, name: str, progress: NodeProgress) -> None:
        why = (f"not back and healthy within {self.spec.health_commit_window} + {BOOT_ALLOWANCE}; "
               f"agent says {self.report(name).phase or 'nothing'}; node uncordoned")
        self.set_stage(name, progress, NodeStage.FAILED, why)
        self.event("Warning", "NodeNotBack", f"{name}: {why}")

    def _verifying(self, name: str, progress: NodeProgress) -> None:
        report = self.report(name)
        if report.phase == AgentPhase.ROLLED_BACK and not progress.rollback:
            self.set_stage(name, progress, NodeStage.ROLLED_BACK, f"rolled back: {report.message}")
            self.event("Warning", "RolledBack", f"{name}: {report.message}")
        elif not self._healthy(name, progress):
            self.plan.rollout[name] = progress.model_copy(update={"healthy_since": "", "message": "unhealthy again"})
            if self.elapsed(progress.since) > self.back_timeout():
                self._not_back(name, progress)
        elif not progress.healthy_since:
            self.plan.rollout[name] = progress.model_copy(update={"healthy_since": self.stamp})
        elif self.elapsed(progress.healthy_since) >= parse_duration(self.spec.health_check_wait):
            if progress.rollback:
                self.set_stage(name, progress, NodeStage.REVERTED, "rolled back to the previous slot on request")
                self.event("Normal", "NodeReverted", f"{name}: back on its previous slot")
            else:
                self.set_stage(name, progress, NodeStage.SUCCEEDED, f"runs {progress.target_version}",
                               upgraded=True)
                self.event("Normal", "NodeUpgraded", f"{name}: runs {progress.target_version}")

    # -- step 2: the state of the fleet ----------------------------------------------------------------------
    def count(self) -> None:
        matched = set(self.inp.matched)
        target = self.inp.target.version if self.inp.target else None
        rollout = {n: p for n, p in self.plan.rollout.items()
                   if n in matched and n not in self.plan.held and (target is None or p.target_version == target)}
        self.plan.failed = sum(1 for p in rollout.values() if p.stage in (NodeStage.FAILED, NodeStage.ROLLED_BACK))
        self.plan.upgraded = sum(1 for p in rollout.values() if p.stage is NodeStage.SUCCEEDED)
        self.plan.disrupted = len(self.disrupted_nodes())

    def disrupted_nodes(self) -> set[str]:
        """Nodes down or held by us: disruptive stages, cordoned-by-us not yet uncordoned, or NotReady."""
        out = set()
        for name in self.inp.matched:
            progress = self.plan.rollout.get(name)
            facts = self.facts(name)
            if progress is not None and (progress.stage.disruptive or (progress.cordoned and facts.unschedulable)):
                out.add(name)
            elif not facts.ready:
                out.add(name)
        return out

    def choose_canary(self, target: str) -> None:
        """Chosen once; a canary node whose agent cannot act on the spec leaves the wave (which is chosen again
        when none is left), so the canary does not wait on it forever."""
        self.plan.canary_nodes = [n for n in self.plan.canary_nodes if n not in self.plan.refused]
        if self.spec.strategy.type is not StrategyType.CANARY or self.plan.canary_nodes:
            return
        candidates = [n for n in self.order if self.facts(n).version != target and n not in self.plan.held
                      and n not in self.plan.refused]
        if candidates:
            self.plan.canary_nodes = candidates[:canary_size(self.spec, len(candidates))]

    def canary_verdict(self) -> str:
        """'' (no canary or passed), 'running', or 'failed'."""
        canary = self.plan.canary_nodes
        if self.spec.strategy.type is not StrategyType.CANARY or not canary:
            return ""
        stages = [self.plan.rollout.get(n) for n in canary]
        if any(p is None or not p.stage.final for p in stages):
            return "running"
        good = sum(1 for p in stages if p is not None and p.stage is NodeStage.SUCCEEDED)
        threshold = parse_percent(self.spec.strategy.canary.success_threshold) if self.spec.strategy.canary else 95
        return "" if good * 100 >= threshold * len(canary) else "failed"

    # -- step 3: stopping, rolling back ----------------------------------------------------------------------
    def stop_reason(self, canary: str) -> str:
        budget = self.spec.failure_policy.max_failed_nodes
        if self.plan.failed > budget:
            self.plan.message = (f"{self.plan.failed} node(s) failed, more than failurePolicy.maxFailedNodes "
                                 f"({budget}); fix the cause, then raise the budget or change the version")
            return "FailureBudgetExceeded"
        if canary == "failed":
            settings = self.spec.strategy.canary
            self.plan.message = ("the canary wave fell short of strategy.canary.successThreshold "
                                 f"({settings.success_threshold if settings else ''})")
            return "CanaryFailed"
        return ""

    def stop(self, reason: str) -> None:
        """Withdraw pending installs; with PauseAndRollback, take upgraded nodes back, maxUnavailable at a time."""
        if reason not in {e.reason for e in self.plan.events} and self.inp.status.phase != "Failed":
            self.event("Warning", reason, self.plan.message)
        for name, progress in list(self.plan.rollout.items()):
            if progress.stage is NodeStage.INSTALLING:
                del self.plan.rollout[name]
                self.plan.grants.pop(name, None)
        if self.spec.failure_policy.action is not FailureAction.PAUSE_AND_ROLLBACK:
            return
        owed = [n for n, p in self.plan.rollout.items()
                if p.upgraded and p.stage is NodeStage.SUCCEEDED and n not in self.plan.held]
        if owed:
            self.plan.message += f"; rolling back {len(owed)} upgraded node(s), maxUnavailable at a time"
        for name in self.order:
            done = self.plan.rollout.get(name)
            if done is None or done.stage is not NodeStage.SUCCEEDED or not done.upgraded \
                    or not self.facts(name).ready or name in self.plan.held:
                continue
            if not self._take_slot(name):
                break
            self._start_disruption(name, done.model_copy(update={"rollback": True}), "rolling back")

    def _take_slot(self, name: str) -> bool:
        if len(self.disrupted_nodes() - {name}) >= self.plan.max_unavailable:
            return False
        return True

    def _start_disruption(self, name: str, progress: NodeProgress, why: str) -> None:
        if not self.spec.drain.enabled:
            self._grant_reboot(name, progress, f"{why}; drain disabled")
            return
        # Ours if we cordon it now, or if it is still cordoned from our own earlier disruption.
        cordoned = progress.cordoned or not self.facts(name).unschedulable
        self.set_stage(name, progress, NodeStage.DRAINING, f"{why}: cordoned, draining", cordoned=cordoned)
        self.plan.grants.pop(name, None)
        if name in self.plan.uncordon:
            self.plan.uncordon.remove(name)
        if cordoned:
            self.plan.cordon.append(name)
        self.event("Normal", "Draining", f"{name}: {why}: cordoned, draining")

    # -- step 4: new work -----------------------------------------------------------------------------------
    def start_new(self, target: ReleaseTarget, canary: str) -> None:
        delay_over = self._delay_over()
        for name in self.order:
            progress = self.plan.rollout.get(name)
            if progress is None or progress.stage is not NodeStage.INSTALLING:
                continue
            report = self.report(name)
            installed = report.phase == AgentPhase.INSTALLED and report.target_version == target.version
            if installed and delay_over and self.facts(name).ready and self._take_slot(name):
                self._start_disruption(name, progress, f"{target.version} installed")
        installing = sum(1 for p in self.plan.rollout.values() if p.stage is NodeStage.INSTALLING)
        for name in self.order:
            if installing >= self.plan.max_unavailable:
                break
            if name in self.plan.rollout or name in self.plan.held or name in self.plan.refused \
                    or not self.facts(name).ready:
                continue
            if canary == "running" and name not in self.plan.canary_nodes:
                continue
            self.plan.rollout[name] = NodeProgress(stage=NodeStage.INSTALLING, target_version=target.version,
                                                   since=self.stamp, message=f"installing {target.version}")
            self.grant(name, GrantAction.INSTALL)
            installing += 1

    def _delay_over(self) -> bool:
        last = parse_rfc3339(self.plan.last_node_finished_time)
        return last is None or self.now - last >= parse_duration(self.spec.strategy.delay_between_nodes)

    def record_up_to_date(self, target: str) -> None:
        for name in self.order:
            if name not in self.plan.rollout and name not in self.plan.held and self.facts(name).version == target:
                self.plan.rollout[name] = NodeProgress(stage=NodeStage.SUCCEEDED, target_version=target,
                                                       since=self.stamp, message=f"already runs {target}")

    # -- the whole pass ------------------------------------------------------------------------------------
    def run(self) -> Plan:
        plan, spec, target = self.plan, self.spec, self.inp.target
        if target is not None and self.inp.status.target is not None \
                and self.inp.status.target.version != target.version:
            plan.canary_nodes = []
        self.advance_all()
        if target is None:
            self._finish_phase("Pending", self.inp.target_error or "resolving the release")
            return plan
        self.record_up_to_date(target.version)
        self._settle_refusals()
        self.choose_canary(target.version)
        self.count()
        canary = self.canary_verdict()
        plan.stop_reason = self.stop_reason(canary)
        if plan.stop_reason:
            self.stop(plan.stop_reason)
            self._finish_phase("Failed", plan.message)
            return plan
        if not spec.auto_apply:
            self._withdraw_installs()
            self._finish_phase("Pending", f"autoApply is false: {target.version} is available; "
                                          "set autoApply: true to roll it out")
            return plan
        if spec.paused:
            self._withdraw_installs()
            self._finish_phase("Paused", "spec.paused is true: nodes in progress finish, no new node starts")
            return plan
        if not in_window(spec.maintenance_windows, self.now):
            self._withdraw_installs()
            self._finish_phase("Waiting", "outside every maintenance window: no new node starts")
            return plan
        self.start_new(target, canary)
        self._finish_phase("Progressing", "")
        return plan

    def _settle_refusals(self) -> None:
        """A node this rollout is done with (final: it runs the target, or failed) is not waited on, whatever
        its agent makes of the spec now. A Warning Event each time the refusals change (the condition written
        last time is the memory, so a restarted operator does not repeat it)."""
        self.plan.refused = {n: r for n, r in self.plan.refused.items()
                             if n not in self.plan.rollout or not self.plan.rollout[n].stage.final}
        said = next((c.message for c in self.inp.status.conditions
                     if c.type == "NotActedOn" and c.status == "True"), "")
        if self.plan.refused and refused_message(self.plan.refused) != said:
            self.event("Warning", "NotActedOn", refused_message(self.plan.refused))

    def _withdraw_installs(self) -> None:
        """Installs not yet turned into a disruption are withdrawn while the rollout must not start nodes."""
        for name, progress in list(self.plan.rollout.items()):
            if progress.stage is NodeStage.INSTALLING:
                del self.plan.rollout[name]
                self.plan.grants.pop(name, None)

    def _finish_phase(self, phase: str, why: str) -> None:
        plan = self.plan
        self.count()
        in_flight = [n for n, p in plan.rollout.items() if not p.stage.final]
        done = all(n in plan.rollout and plan.rollout[n].stage.final for n in self.inp.matched)
        if phase in ("Progressing", "Waiting", "Paused") and done and self.inp.matched:
            plan.phase = "Succeeded" if plan.failed == 0 else "Failed"
            plan.stop_reason = "" if plan.failed == 0 else "NodesFailed"
            target = self.inp.target.version if self.inp.target else ''
            reverted = sorted(n for n in self.inp.matched  # on the node itself, not by our PauseAndRollback
                              if plan.rollout[n].stage is NodeStage.REVERTED and not plan.rollout[n].rollback)
            plan.message = f"all {len(self.inp.matched)} node(s) run {target}"
            if plan.failed or reverted:
                plan.message = f"finished; {plan.upgraded} of {len(self.inp.matched)} node(s) run {target}"
            if plan.failed:
                plan.message += f"; {plan.failed} failed within failurePolicy.maxFailedNodes"
            if reverted:
                plan.message += f"; changed back on the node itself: {', '.join(reverted)}"
            return
        if plan.held or plan.refused:
            left = [n for n in self.inp.matched if n not in plan.held and n not in plan.refused
                    and not (n in plan.rollout and plan.rollout[n].stage.final)]
            if phase == "Progressing" and not left and not in_flight:
                phase = "Waiting"  # nothing this rollout may touch is left to do
            notes = [m for m in (held_message(plan.held) if plan.held else "",
                                 refused_message(plan.refused) if plan.refused else "") if m]
            why = "; ".join([why, *notes] if why else notes)
        plan.phase = phase
        counts = (f"{plan.upgraded}/{len(self.inp.matched)} upgraded, {plan.failed} failed, "
                  f"{plan.disrupted} disrupted (max {plan.max_unavailable}), {len(in_flight)} in progress"
                  + (f", {len(plan.refused)} not acted on" if plan.refused else ""))
        plan.message = f"{why}; {counts}" if why else counts


def plan_rollout(inp: RolloutInput) -> Plan:
    """Decide one pass of the rollout. Pure: same input, same plan."""
    plan = _Pass(inp).run()
    plan.uncordon = sorted(set(plan.uncordon) - set(plan.cordon))
    plan.cordon = sorted(set(plan.cordon))
    return plan
