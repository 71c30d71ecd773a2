"""The I/O around the rollout planner for one NodeUpgrade: read, drain, plan, write status, act.

Order within a pass, chosen so that a crash anywhere leaves nothing the next pass cannot finish:
1. read the object fresh and the cluster (Nodes, the agents' reports in status.nodes);
2. take a drain step on the nodes the last written status has in stage Draining;
3. plan (pure, controller/nodeupgrade_rollout.py);
4. write status with the object's resourceVersion as a precondition, so a stale pass (a slower thread,
   a deposed leader) is refused with 409 instead of overwriting newer decisions;
5. only then uncordon and cordon, and post the Events. Status records the intent first ("cordoned":
   true), so a node is never cordoned without a record that owes it an uncordon.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from pydantic import ValidationError

from maculaos.api.common import API_VERSION, VERSION_LABEL, spec_selects
from maculaos.api.nodeupgrade import (
    FINISHED_PHASES,
    NOT_ACTED_ON,
    AgentPhase,
    Grant,
    NodeStage,
    NodeUpgradeNodeEntry,
    NodeUpgradeSpec,
    NodeUpgradeStatus,
    claim_on,
    holder,
    holds,
)
from maculaos.controller.cluster import ApiCluster, list_objects
from maculaos.controller.conditions import merge_condition
from maculaos.controller.nodeupgrade_drain import PodRef, drain_step
from maculaos.controller.nodeupgrade_releases import ReleaseResolver, Resolution
from maculaos.controller.nodeupgrade_rollout import DrainReport, NodeFacts, Plan, RolloutInput, plan_rollout
from maculaos.controller.outcome import rollout_outcome
from maculaos.controller.reconcile import COMPONENT, judge, write
from maculaos.controller.validation import validate
from maculaos.kube.rest import STRATEGIC_MERGE_PATCH, ApiError, KubeClient, object_path, post_event, resource_path

log = logging.getLogger("maculaos.controller")

PLURAL = "nodeupgrades"
CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"
#: On a Node the operator cordoned: the NodeUpgrade that owes it an uncordon.
CORDON_ANNOTATION = "os.macula.io/cordoned-by"
#: Times a pass is retried at once when its status write loses the race with an agent's report.
WRITE_ATTEMPTS = 3
#: Status fields this module owns (the validation path in reconcile.py owns the rest).
_OPERATOR_MAPS = ("grants", "rollout")


@dataclass(frozen=True)
class Whereabouts:
    """Where the operator itself runs (downward API env), so it neither drains itself nor goes first."""

    node: str = ""
    pod: PodRef | None = None

    @classmethod
    def from_env(cls) -> Whereabouts:
        pod = os.environ.get("POD_NAME", "")
        namespace = os.environ.get("POD_NAMESPACE", "")
        return cls(node=os.environ.get("NODE_NAME", ""), pod=PodRef(namespace, pod) if pod and namespace else None)


class Rollouts:
    """Runs rollout passes; one at a time per object (kopf events and the resync share it)."""

    def __init__(self, kube: KubeClient, whereabouts: Whereabouts | None = None) -> None:
        self.kube = kube
        self.resolver = ReleaseResolver()
        self.whereabouts = whereabouts or Whereabouts.from_env()
        self._locks: dict[str, threading.Lock] = {}
        self._waiting: set[str] = set()
        self._guard = threading.Lock()
        self._finished: dict[str, bool] = {}

    def reconcile(self, name: str, cluster: ApiCluster | None = None) -> None:
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            self._run(name, cluster)

    def reconcile_soon(self, name: str) -> bool:
        """A pass for a watch event (an agent's report, our own write). Events arriving while such a pass
        waits for its turn are folded into it: it reads the object fresh when it starts, so it sees what
        they announced. With N agents reporting at once, that is a pass or two instead of N. Returns
        whether this call ran a pass."""
        with self._guard:
            if name in self._waiting:
                return False
            self._waiting.add(name)
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            with self._guard:
                self._waiting.discard(name)
            self._run(name, None)
        return True

    def lets_go(self, event_type: str, obj: Mapping[str, Any]) -> bool:
        """Whether this watch event of a NodeUpgrade may free nodes others wait for: it was deleted, or its
        phase just turned Succeeded or Failed (seen once per change, not on every later report)."""
        name = str(obj["metadata"]["name"])
        now = (obj.get("status") or {}).get("phase") in FINISHED_PHASES
        with self._guard:
            before = self._finished.get(name, False)
            if event_type == "DELETED":
                self._finished.pop(name, None)
                return True
            self._finished[name] = now
        return now and not before

    def waiters(self) -> list[str]:
        """The NodeUpgrades whose status says they wait for nodes another one holds."""
        return sorted(o["metadata"]["name"] for o in list_objects(self.kube, PLURAL) if waiting(o.get("status") or {}))

    def _run(self, name: str, cluster: ApiCluster | None) -> None:
        """One pass, holding the object's lock."""
        snapshot = cluster or ApiCluster(self.kube)
        for _ in range(WRITE_ATTEMPTS):
            try:
                # A retry re-reads the object (whose status moved) but keeps the Node snapshot.
                self._pass(name, snapshot)
                return
            except ApiError as exc:
                if exc.status == HTTPStatus.NOT_FOUND:
                    return
                if exc.status != HTTPStatus.CONFLICT:
                    raise
        log.info(f"NodeUpgrade {name}: status kept changing under this pass; the next one retries")

    def _pass(self, name: str, cluster: ApiCluster) -> None:
        # One listing gives the object and the NodeUpgrades it may share nodes with (held_nodes): a list
        # without a resourceVersion is read from storage as a GET is, so it is as fresh, in one request.
        upgrades = list_objects(self.kube, PLURAL)
        body = next((o for o in upgrades if o["metadata"]["name"] == name), None)
        if body is None:
            return  # deleted meanwhile
        body.setdefault("kind", "NodeUpgrade")
        body.setdefault("apiVersion", API_VERSION)
        outcome = judge(body, cluster)
        verdict = validate("NodeUpgrade", name, body.get("spec") or {}, cluster)
        if not verdict.valid or not isinstance(verdict.spec, NodeUpgradeSpec):
            write(self.kube, body, outcome)  # nothing moves while the spec is invalid; the message says why
            return
        spec = verdict.spec
        raw_status = body.get("status") or {}
        status = parse_status(raw_status)
        resolution = self.resolver.resolve(spec)
        nodes = node_facts(cluster.node_objects)
        drains = self._drain(spec, status, nodes)
        now = dt.datetime.now(dt.timezone.utc)
        plan = plan_rollout(RolloutInput(
            spec=spec, status=status, matched=verdict.matched_nodes, nodes=nodes,
            reports=parse_reports(raw_status, str(body["metadata"].get("uid") or "")), now=now,
            target=resolution.target or status.target,
            target_error=resolution.error, drains=drains, own_node=self.whereabouts.node,
            held=held_nodes(body, upgrades, verdict.matched_nodes, cluster.node_labels()),
            refused=refusals(raw_status, body["metadata"].get("generation"))))
        judged = outcome.status or {}
        wanted = status_patch(raw_status, judged, plan, resolution)
        if wanted:
            patch = {"metadata": {"resourceVersion": body["metadata"]["resourceVersion"]}, "status": wanted}
            self.kube.patch(object_path(PLURAL, name, "status"), patch)
        self._act(body, plan)
        if plan.phase != status.phase:
            log.info(f"NodeUpgrade {name}: phase {status.phase or '(none)'} -> {plan.phase}: {plan.message} "
                     f"[{self.kube.requests} API requests since the operator started]")
        if outcome.event is not None:
            write(self.kube, body, type(outcome)(status=None, event=outcome.event))

    def _drain(self, spec: NodeUpgradeSpec, status: NodeUpgradeStatus,
               nodes: Mapping[str, NodeFacts]) -> dict[str, DrainReport]:
        reports = {}
        for name, progress in sorted(status.rollout.items()):
            if progress.stage is not NodeStage.DRAINING or name not in nodes:
                continue
            if not nodes[name].unschedulable:
                reports[name] = DrainReport(done=False, message="waiting for the cordon", started=False)
                continue
            reports[name] = drain_step(self.kube, name, spec.drain, progress.forced, self.whereabouts.pod)
        return reports

    def _act(self, body: Mapping[str, Any], plan: Plan) -> None:
        """Uncordon before cordoning, so the number of cordoned nodes never overshoots in between."""
        owner = str(body["metadata"]["name"])
        for name, unschedulable in [(n, False) for n in plan.uncordon] + [(n, True) for n in plan.cordon]:
            try:
                set_cordon(self.kube, name, owner if unschedulable else None)
            except ApiError as exc:
                verb = "cordon" if unschedulable else "uncordon"
                log.warning(f"NodeUpgrade {body['metadata']['name']}: cannot {verb} {name}: HTTP {exc.status}")
                post_event(self.kube, body, "Warning", "CordonFailed",
                           f"{name}: cannot {verb}: HTTP {exc.status}; retrying on the next pass", COMPONENT)
        for note in plan.events:
            level = logging.INFO if note.type == "Normal" else logging.WARNING
            log.log(level, f"NodeUpgrade {body['metadata']['name']}: {note.reason}: {note.message}")
            post_event(self.kube, body, note.type, note.reason, note.message, COMPONENT)


    def release_orphans(self, cluster: ApiCluster, upgrades: set[str]) -> list[str]:
        """Uncordon nodes a NodeUpgrade cordoned and that no longer exists (deleted mid-rollout: there are
        no finalizers to stop that); returns their names."""
        released = []
        for node in cluster.node_objects:
            owner = (node["metadata"].get("annotations") or {}).get(CORDON_ANNOTATION)
            if owner is None or owner in upgrades:
                continue
            name = str(node["metadata"]["name"])
            set_cordon(self.kube, name, None)
            log.warning(f"uncordoned {name}: NodeUpgrade {owner}, which cordoned it, was deleted mid-rollout")
            released.append(name)
        return released


def held_nodes(own: Mapping[str, Any], upgrades: list[dict[str, Any]], matched: list[str],
               labels: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """Which of own's selected nodes another NodeUpgrade holds (api.nodeupgrade.holder), by node: that
    NodeUpgrade's name. The others are read fresh for every pass, so a decision rests on their last write."""
    name = own["metadata"]["name"]
    others = [o for o in upgrades if o["metadata"]["name"] != name]
    held = {}
    for node in matched:
        rivals = [o for o in others if spec_selects(o.get("spec") or {}, labels.get(node, {}))]
        if not rivals:
            continue
        first = holder([claim_on(own, node), *(claim_on(o, node) for o in rivals)])
        if first.name != name and holds(first):
            held[node] = first.name
    return held


def waiting(status: Mapping[str, Any]) -> bool:
    """Whether a NodeUpgrade's status says it waits for nodes another one holds."""
    return any(c.get("type") == "Waiting" and c.get("status") == "True" for c in status.get("conditions") or [])


def set_cordon(kube: KubeClient, node: str, owner: str | None) -> None:
    """Cordon node for NodeUpgrade owner (marked in an annotation), or uncordon it (owner None)."""
    kube.patch(resource_path("v1", "nodes", node), {"metadata": {"annotations": {CORDON_ANNOTATION: owner}},
                                                    "spec": {"unschedulable": owner is not None}},
               STRATEGIC_MERGE_PATCH)


def node_facts(nodes: list[dict[str, Any]]) -> dict[str, NodeFacts]:
    facts = {}
    for node in nodes:
        labels = node["metadata"].get("labels") or {}
        conditions = (node.get("status") or {}).get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        facts[str(node["metadata"]["name"])] = NodeFacts(
            ready=ready, unschedulable=bool((node.get("spec") or {}).get("unschedulable")),
            version=labels.get(VERSION_LABEL, ""), control_plane=CONTROL_PLANE_LABEL in labels)
    return facts


def parse_status(raw: Mapping[str, Any]) -> NodeUpgradeStatus:
    """The operator's own fields; the agents' entries are parsed one by one in parse_reports."""
    try:
        return NodeUpgradeStatus.model_validate({k: v for k, v in raw.items() if k != "nodes"})
    except ValidationError as exc:
        # Only the operator writes these fields, so this is a bug or a hand edit: start the bookkeeping
        # over rather than stall (grants are re-derived; final stages are lost, which the log says).
        log.error(f"unreadable NodeUpgrade status, starting its bookkeeping over: {exc}")
        return NodeUpgradeStatus()


def parse_reports(raw: Mapping[str, Any], uid: str) -> dict[str, NodeUpgradeNodeEntry]:
    """The agents' entries as the planner may take them: each one's phase only as the answer to the grant
    this object (uid) gave that node last (status.grants); see answer_to."""
    grants = (raw.get("grants") or {})
    reports = {}
    for node, entry in (raw.get("nodes") or {}).items():
        try:
            parsed = NodeUpgradeNodeEntry.model_validate(entry)
            grant = Grant.model_validate(grants[node]) if grants.get(node) else None
        except ValidationError:
            log.warning(f"node {node} wrote an unreadable NodeUpgrade report; ignoring it")
            continue
        reports[node] = answer_to(parsed, uid, grant)
    return reports


def refusals(raw: Mapping[str, Any], generation: object) -> dict[str, str]:
    """The nodes whose agent leaves this spec alone, by node: what it said after NOT_ACTED_ON (which names
    the field: a field its older release does not know). Only a refusal of the current generation counts:
    once the spec changes (the field removed), the node is granted again and its agent tries anew."""
    refused = {}
    for node, entry in (raw.get("nodes") or {}).items():
        if not isinstance(entry, Mapping) or entry.get("observedGeneration") != generation:
            continue
        message = str(entry.get("message") or "")
        if entry.get("phase") == AgentPhase.IDLE.value and message.startswith(NOT_ACTED_ON):
            refused[str(node)] = message.removeprefix(NOT_ACTED_ON)
    return refused


def answer_to(entry: NodeUpgradeNodeEntry, uid: str, grant: Grant | None) -> NodeUpgradeNodeEntry:
    """entry as an answer to grant (given by the object uid): unchanged when it says it answers exactly
    that grant; otherwise only its facts (version, slot, bootId) count and the phase is "" (no answer
    yet). A phase the node holds for another grant, of this object or of a deleted one, is not taken at
    face value: a Failed from an old object must not fail the node in a new one."""
    seen = entry.observed_grant
    if grant is not None and seen is not None and (seen.uid, seen.action, seen.time) == (uid, grant.action, grant.time):
        return entry
    return entry.model_copy(update={"phase": "", "message": "", "target_version": "", "progress": None})


def status_patch(old: Mapping[str, Any], judged: Mapping[str, Any], plan: Plan,
                 resolution: Resolution) -> dict[str, Any]:
    """The merge patch from old status to the wanted one; empty when nothing changes."""
    target = resolution.target
    fields: dict[str, Any] = {**judged, **plan.status_fields()}
    if target is not None:
        fields["target"] = target.model_dump(by_alias=True, mode="json", exclude_none=True)
        fields["targetVersion"] = target.version
    fields["availableVersion"] = resolution.available or old.get("availableVersion", "")
    fields["outcome"] = rollout_outcome(int(fields.get("matchedNodes", old.get("matchedNodes", 0))), plan.upgraded,
                                        plan.failed, plan.disrupted, len(plan.refused))
    conditions = list(judged.get("conditions") or old.get("conditions") or [])
    for condition in plan.conditions() + [release_condition(resolution)]:
        conditions = merge_condition(conditions, condition)
    fields["conditions"] = conditions
    for key in _OPERATOR_MAPS:  # a merge patch removes a map key only when told so with null
        gone = set(old.get(key) or {}) - set(fields[key])
        fields[key] = {**fields[key], **{k: None for k in gone}}
    changed = {k: v for k, v in fields.items() if old.get(k) != v and k != "conditions"}
    if not changed and _same_conditions(old.get("conditions") or [], conditions):
        return {}
    return fields


def release_condition(resolution: Resolution) -> dict[str, Any]:
    if resolution.error:
        return {"type": "ReleaseResolved", "status": "False", "reason": "ReleaseError",
                "message": resolution.error}
    return {"type": "ReleaseResolved", "status": "True", "reason": "Resolved",
            "message": f"target {resolution.target.version}" if resolution.target else ""}


def _same_conditions(old: list[Mapping[str, Any]], new: list[Mapping[str, Any]]) -> bool:
    def key(conditions: list[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted((c.get("type"), c.get("status"), c.get("reason"), c.get("message")) for c in conditions)
    return key(old) == key(new)
