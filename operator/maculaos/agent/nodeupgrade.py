"""The NodeUpgrade side of the agent: act on what the operator grants this node (Install, Reboot,
Rollback; see the contract in docs/architecture.md), run the health commit window after a boot into
the new slot, and report status.nodes.<node> plus the Node's version label.

It runs in its own thread: an install takes minutes and must not hold up the mesh or health passes.
The node's progress lives on its data partition (host/nodeupgrade.py), so a restarted agent or a reboot
continues where it stood; the grants only say what the node may do next."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from maculaos.agent.nodereport import Reporter
from maculaos.api.common import VERSION_LABEL, parse_duration, spec_selects
from maculaos.api.healthcheck import HealthCheckSpec
from maculaos.api.nodeupgrade import (
    FINISHED_PHASES,
    NOT_ACTED_ON,
    AgentPhase,
    Grant,
    GrantAction,
    HealthCheckSelector,
    NodeUpgradeSpec,
    ReleaseTarget,
    claim_on,
    holder,
)
from maculaos.host.bundles import Release
from maculaos.host.nodeupgrade import HealthVerdict, NodeFacts, NodeUpgrader, UpgradeState, read_os_version
from maculaos.host.paths import in_host_root
from maculaos.host.rauc import Rauc

log = logging.getLogger("maculaos.agent")
PLURAL = "nodeupgrades"
COMMIT_TICK_SECONDS = 1.0
PROGRESS_STEP = 5
ACTIVE = (AgentPhase.DOWNLOADING, AgentPhase.INSTALLING)
OUTCOMES = {p.value for p in (AgentPhase.INSTALLED, AgentPhase.FAILED, AgentPhase.SUCCEEDED, AgentPhase.ROLLED_BACK)}

Snapshot = Callable[[], dict[str, dict[str, Any]]]
#: health_states() -> {(HealthCheck name, check name): (has run, passing, output)}
HealthStates = Callable[[], Mapping[tuple[str, str], tuple[bool, bool, str]]]


def relevance(node: str) -> Callable[[dict[str, Any]], Any]:
    """What in a NodeUpgrade matters to this node's agent: spec, target and its own grant."""
    def relevant(obj: dict[str, Any]) -> Any:
        status = obj.get("status") or {}
        return obj["metadata"].get("generation"), status.get("target"), (status.get("grants") or {}).get(node)
    return relevant


class UpgradeEngine:
    def __init__(self, node_name: str, host_root: Path, rauc: Rauc, reboot_command: str, reporter: Reporter,
                 objects: Snapshot, node: Snapshot, healthchecks: Callable[[], dict[str, dict[str, Any]] | None],
                 health_states: HealthStates) -> None:
        """healthchecks: the HealthChecks from the watch, or None until it has listed them once."""
        self.node_name = node_name
        self.upgrader = NodeUpgrader(host_root, rauc, reboot_command)
        self.reporter = reporter
        self._objects = objects
        self._node = node
        self._healthchecks = healthchecks
        self._health_states = health_states
        self.wake = threading.Event()
        self._last_progress: tuple[AgentPhase, int] | None = None

    def run(self, stop: threading.Event, resync_seconds: float) -> None:
        while not stop.is_set():
            try:
                committing = self.converge()
            except Exception:  # a bug in one pass must not end upgrades on this node
                log.exception("upgrade pass failed")
                committing = False
            self.wake.wait(COMMIT_TICK_SECONDS if committing else resync_seconds)
            self.wake.clear()

    def converge(self) -> bool:
        """One pass; True while a health commit window is open or a failed reboot command waits for its
        retry (the next pass comes within a second)."""
        node = self._node().get(self.node_name)
        if node is None:
            return False
        labels: dict[str, str] = dict(node["metadata"].get("labels") or {})
        objects = self._objects()
        mine = {n: o for n, o in objects.items() if spec_selects(o.get("spec") or {}, labels)}
        version = read_os_version(self.upgrader.host_root)
        if version:
            self.reporter.labels({VERSION_LABEL: version}, labels)
        for name in _stale(objects, mine, self.node_name):
            self.reporter.node_entry(PLURAL, name, None)
        state = self.upgrader.after_boot() if self.upgrader.state_file.exists() else None
        failed_reboots = state.reboot_attempts if state is not None else 0
        if state is not None and self.upgrader.reboot_pending(state):
            state = self.upgrader.retry_reboot()
        if not mine:
            if state is not None and state.phase is AgentPhase.COMMITTING:  # the object went: still commit
                self._commit_by_defaults(node)
                return True
            return state is not None and self.upgrader.reboot_pending(state)
        facts = self.upgrader.facts()
        in_charge = _in_charge(mine, self.node_name)
        for name, obj in mine.items():
            # A finished rollout's entry is its record of this node (Succeeded, RolledBack...): kept as it is.
            if name != in_charge and (obj.get("status") or {}).get("phase") not in FINISHED_PHASES:
                self._report(obj, {"phase": AgentPhase.IDLE.value,
                                   "message": f"NodeUpgrade {in_charge} is in charge of this node's upgrade"}, facts)
        obj = mine[in_charge]
        try:
            spec = NodeUpgradeSpec.model_validate(obj.get("spec") or {})
        except ValidationError as exc:
            self._report(obj, {"phase": AgentPhase.IDLE.value, "message": not_acted_on(exc)}, facts)
            if state is not None and state.phase is AgentPhase.COMMITTING:  # a field added mid-window: still commit
                self._commit_by_defaults(node)
                return True
            return False
        state = self._act(obj, spec, node, state)
        facts = self.upgrader.facts()
        entry = _entry(state, facts, _target(obj), _uid(obj))
        self._announce(obj, state, entry)
        if state is not None and self.upgrader.reboot_pending(state) and state.reboot_attempts > failed_reboots:
            self.reporter.event(obj, "Warning", "RebootFailed", state.message)
        self._report(obj, entry, facts)
        return state is not None and (state.phase is AgentPhase.COMMITTING or self.upgrader.reboot_pending(state))

    def _commit_by_defaults(self, node: dict[str, Any]) -> None:
        """The new slot this node booted still gets its verdict when the object's settings cannot be read (it
        went, or has a field this agent does not know): by the defaults, never left uncommitted."""
        defaults = NodeUpgradeSpec()
        self.upgrader.commit(self.verdict(node), parse_duration(defaults.health_commit_window).total_seconds())

    def _act(self, obj: dict[str, Any], spec: NodeUpgradeSpec, node: dict[str, Any],
             state: UpgradeState | None) -> UpgradeState | None:
        if state is not None and state.phase is AgentPhase.COMMITTING:
            verdict = self.verdict(node, spec.health_check_selector)
            return self.upgrader.commit(verdict, parse_duration(spec.health_commit_window).total_seconds(),
                                        spec.auto_rollback)
        target, grant, uid = _target(obj), _grant(obj, self.node_name), _uid(obj)
        if grant is None:
            return state
        if grant.action is GrantAction.INSTALL and target is not None and _wants_install(state, target, grant, uid):
            release = Release(target.version, target.url, target.sha256, target.size)
            local = None  # a target with a url is downloaded; without one, localPath holds the bundle
            if not target.url and spec.source.local_path:
                local = in_host_root(self.upgrader.host_root, spec.source.local_path)
            self._last_progress = None
            return self.upgrader.install(
                release, local, grant.time,
                lambda phase, pct, what: self._progress(obj, target, grant, phase, pct, what), uid)
        if (grant.action is GrantAction.REBOOT and state is not None and state.phase is AgentPhase.INSTALLED
                and target is not None and state.target_version == target.version and state.grant_uid == uid):
            self._report(obj, {**_entry(state, self.upgrader.facts(), target, uid),
                               "phase": AgentPhase.REBOOTING.value, "message": "rebooting into the new slot",
                               "observedGrant": _grant_ref(uid, grant)}, self.upgrader.facts())
            return self.upgrader.reboot(grant.time, uid)
        answered = state is not None and (state.grant_uid, state.grant_action, state.grant_time) == (
            uid, grant.action.value, grant.time)
        if (grant.action is GrantAction.ROLLBACK and state is not None and not answered
                and state.phase in (AgentPhase.SUCCEEDED, AgentPhase.INSTALLED)):
            return self.upgrader.rollback("rollback granted by the operator", grant.time, uid)
        return state

    def _announce(self, obj: dict[str, Any], state: UpgradeState | None, entry: dict[str, Any]) -> None:
        """One Event per outcome of this node (kubectl get events tells the story), remembered on the
        node so a restarted agent does not repeat it."""
        if state is None or entry["phase"] not in OUTCOMES or entry["phase"] != state.phase.value:
            return
        mark = f"{obj['metadata'].get('uid', '')}/{state.target_version}/{state.phase.value}"
        if state.announced == mark:
            return
        type_ = "Warning" if state.phase in (AgentPhase.FAILED, AgentPhase.ROLLED_BACK) else "Normal"
        self.reporter.event(obj, type_, f"Upgrade{state.phase.value}", state.message)
        self.upgrader.save(replace(state, announced=mark))

    def _progress(self, obj: dict[str, Any], target: ReleaseTarget, grant: Grant, phase: AgentPhase, pct: int,
                  what: str) -> None:
        last = self._last_progress
        if last is not None and last[0] is phase and pct - last[1] < PROGRESS_STEP and pct != 100:
            return
        self._last_progress = (phase, pct)
        facts = self.upgrader.facts()
        self._report(obj, {"phase": phase.value, "message": what, "targetVersion": target.version,
                           "progress": pct, "observedGrant": _grant_ref(_uid(obj), grant)}, facts)

    def verdict(self, node: dict[str, Any], judges: HealthCheckSelector | None = None) -> HealthVerdict:
        """The new slot is healthy when the Node is Ready, every check of the HealthChecks selecting this
        node (only those judges picks, when given) ran in this boot and passes, and this agent reaches the
        API server."""
        problems = []
        conditions = (node.get("status") or {}).get("conditions") or []
        ready: dict[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
        if ready.get("status") != "True":
            problems.append(f"Node Ready is {ready.get('status', 'unknown')}"
                            + (f" ({ready['message']})" if ready.get("message") else ""))
        labels = dict(node["metadata"].get("labels") or {})
        states = self._health_states()
        healthchecks = self._healthchecks()
        if healthchecks is None:  # an agent just started after the reboot: never judge checks it has not seen
            problems.append("the HealthChecks are not listed yet")
        for name, obj in sorted((healthchecks or {}).items()):
            if not spec_selects(obj.get("spec") or {}, labels):
                continue
            if judges is not None and not judges.matches(dict((obj.get("metadata") or {}).get("labels") or {})):
                continue
            try:
                checks = HealthCheckSpec.model_validate(obj.get("spec") or {}).checks
            except ValidationError:
                problems.append(f"HealthCheck {name} is invalid")
                continue
            for check in checks:
                ran, ok, output = states.get((name, check.name), (False, False, ""))
                if not ran:
                    problems.append(f"HealthCheck {name}/{check.name} has not run yet")
                elif not ok:
                    problems.append(f"HealthCheck {name}/{check.name} failing: {output}")
        if not self.reporter.healthy():
            problems.append("the agent cannot reach the API server")
        return HealthVerdict(ok=not problems, reason="; ".join(problems))

    def _report(self, obj: dict[str, Any], entry: dict[str, Any], facts: NodeFacts) -> None:
        full = {"observedGeneration": obj["metadata"].get("generation"), "version": facts.version,
                "slot": facts.slot, "bootId": facts.boot_id, "progress": None, "observedGrant": None,
                **entry}  # None clears (merge patch)
        self.reporter.node_entry(PLURAL, obj["metadata"]["name"], full, uid=_uid(obj))


def not_acted_on(exc: ValidationError) -> str:
    """Why this agent leaves a NodeUpgrade alone, naming the field. A field it does not know comes from an
    operator's API newer than this agent (docs/architecture.md, "Version skew"): never half applied. The
    operator reads the NOT_ACTED_ON prefix and says in the NodeUpgrade's status what the user can do."""
    first = exc.errors()[0]
    where = ".".join(["spec", *(str(p) for p in first["loc"])])
    hint = (" (a field this node's agent does not know: its OS is older than the operator's API)"
            if first["type"] == "extra_forbidden" else "")
    return f"{NOT_ACTED_ON}{where}: {first['msg']}{hint}"


def _wants_install(state: UpgradeState | None, target: ReleaseTarget, grant: Grant, uid: str) -> bool:
    """A grant is acted on once; a retry needs a new grant (another time, or another object). An install
    cut short by an agent restart is taken up again."""
    if state is not None and state.phase in (AgentPhase.REBOOTING, AgentPhase.COMMITTING):
        return False  # a reboot is under way: it ends first
    if state is None or state.target_version != target.version or state.grant_time != grant.time \
            or state.grant_uid != uid:
        return True
    return state.phase in ACTIVE


def _entry(state: UpgradeState | None, facts: NodeFacts, target: ReleaseTarget | None,
           uid: str) -> dict[str, Any]:
    """The phase of this object's last grant to the node (with the grant it answers); an outcome the node
    holds for another object (a deleted one, or `maculaos upgrade`) is never reported as this one's."""
    if target is None:
        return {"phase": AgentPhase.IDLE.value, "message": "no target version resolved yet", "targetVersion": ""}
    if (state is not None and uid and state.grant_uid == uid and state.target_version == target.version
            and state.phase is not AgentPhase.IDLE):
        return {"phase": state.phase.value, "message": state.message, "targetVersion": target.version,
                "fromVersion": state.from_version,
                "observedGrant": {"uid": uid, "action": state.grant_action, "time": state.grant_time}}
    if facts.version == target.version:
        return {"phase": AgentPhase.SUCCEEDED.value, "message": f"running {facts.version} (slot {facts.slot})",
                "targetVersion": target.version}
    return {"phase": AgentPhase.IDLE.value, "targetVersion": target.version,
            "message": f"running {facts.version or 'an unknown version'}; {target.version} not granted yet"}


def _uid(obj: dict[str, Any]) -> str:
    return str(obj["metadata"].get("uid") or "")


def _grant_ref(uid: str, grant: Grant) -> dict[str, str]:
    return {"uid": uid, "action": grant.action.value, "time": grant.time}


def _target(obj: dict[str, Any]) -> ReleaseTarget | None:
    raw = (obj.get("status") or {}).get("target")
    try:
        return ReleaseTarget.model_validate(raw) if raw else None
    except ValidationError:
        return None


def _grant(obj: dict[str, Any], node: str) -> Grant | None:
    raw = ((obj.get("status") or {}).get("grants") or {}).get(node)
    try:
        return Grant.model_validate(raw) if raw else None
    except ValidationError:
        return None


def _in_charge(mine: dict[str, dict[str, Any]], node: str) -> str:
    """The NodeUpgrade that decides for this node, by the rule the operator follows too (api.nodeupgrade.holder):
    the others' grants to this node are not acted on."""
    return holder([replace(claim_on(o, node), name=n) for n, o in mine.items()]).name


def _stale(objects: dict[str, dict[str, Any]], mine: dict[str, dict[str, Any]], node: str) -> list[str]:
    return [n for n, o in objects.items()
            if n not in mine and node in ((o.get("status") or {}).get("nodes") or {})]
