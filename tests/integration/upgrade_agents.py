"""STAND-IN AGENTS for the operator's NodeUpgrade tests — a test driver, not the node side.

The rollout tests run the real agents with real RAUC (tests/integration/rauc_fleet.py) wherever their
cost fits the suite; the stand-ins remain for the fleets too large for it: the ten-node rollout of
test_upgrade_rollout.py and the 50-node benchmark (benchmarks/upgrade_rollout.py). One thread plays each
node's agent as docs/architecture.md describes the contract, through the real API server: it writes only
its entry in the node's NodeReport (with the agent's own Reporter; the operator folds it into
`status.nodes.<node>`), the Node's version label and its Ready condition, and detects nothing the real
agent would not. A "reboot" flips the Node NotReady, changes the reported bootId, then brings the Node
back Ready on the new version. Failures are the real nodes' to produce (a bundle signed by an untrusted
key, a failing HealthCheck), so the stand-ins have none.

Also here: the simulated fleet (extra Nodes with a test label) and a sampler that records how many of
them are disrupted at once and every grant the operator gives, for the tests' assertions.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from maculaos.agent.nodereport import Reporter
from maculaos.api.common import VERSION_LABEL
from maculaos.api.times import now_rfc3339
from maculaos.devenv.nodes import SimulatedNode, register_node
from tests.integration.conftest import kube_of
from tests.integration.lookup import fetching_lookup

GROUP, VERSION, PLURAL = "os.macula.io", "v1alpha1", "nodeupgrades"
OLD = "0.1.0"


@dataclass
class AgentState:
    name: str
    boot_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    version: str = OLD
    phase: str = "Idle"
    target: str = ""
    message: str = ""
    down_since: float = 0.0
    boots_into_new: int = 0
    reported: bool = False
    answers: dict[str, str] | None = None
    """The grant the phase answers (observedGrant), as the real agent reports it."""


class StandInAgents:
    """Plays the agents of `nodes` for the NodeUpgrade `upgrade` until stopped."""

    def __init__(self, api: client.ApiClient, upgrade: str, nodes: list[str], reboot_seconds: float = 0.5,
                 period: float = 0.2) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.upgrade = upgrade
        self.states = {n: AgentState(n) for n in nodes}
        kube = kube_of(api)
        self.reporters = {n: Reporter(kube, n, fetching_lookup(kube)) for n in nodes}
        self.reboot_seconds, self.period = reboot_seconds, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="stand-in-agents")
        self.errors: list[str] = []

    def start(self) -> StandInAgents:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                obj = self.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, self.upgrade)
            except ApiException as exc:
                if exc.status == 404:
                    continue
                self.errors.append(str(exc))
                continue
            status = obj.get("status") or {}
            for state in self.states.values():
                try:
                    self._step(state, (status.get("grants") or {}).get(state.name), status.get("target") or {},
                               str(obj["metadata"]["uid"]))
                except ApiException as exc:
                    self.errors.append(f"{state.name}: {exc.status} {exc.reason}")

    def _step(self, s: AgentState, grant: dict[str, Any] | None, target: dict[str, Any], uid: str) -> None:
        if not s.reported:  # an agent reports its node once it sees the object, before any grant matters
            self._report(s)
            return
        if s.down_since:
            if time.monotonic() - s.down_since >= self.reboot_seconds:
                self._boot(s)
            return
        if s.phase == "Committing":
            s.phase = "Succeeded"
            self._report(s)
            return
        action = (grant or {}).get("action")
        answer = {"uid": uid, "action": str(action), "time": str(grant.get("time"))} if grant else None
        if action == "Install" and s.phase in ("Idle", "Downloading"):
            s.answers = answer
            s.target = str(target.get("version", ""))
            s.phase = "Downloading" if s.phase == "Idle" else "Installed"
            self._report(s)
        elif action == "Reboot" and s.phase == "Installed":
            s.answers = answer
            self._go_down(s)

    def _go_down(self, s: AgentState) -> None:
        s.phase = "Rebooting"
        self._report(s)
        s.down_since = time.monotonic()
        self._set_ready(s, False)

    def _boot(self, s: AgentState) -> None:
        s.down_since, s.boot_id = 0.0, str(uuid.uuid4())
        s.version, s.phase = s.target, "Committing"
        s.boots_into_new += 1
        self._set_version(s)
        self._set_ready(s, True)
        self._report(s)

    def _report(self, s: AgentState) -> None:
        s.reported = True
        entry = {"phase": s.phase, "message": s.message,
                 "version": s.version, "bootId": s.boot_id, "targetVersion": s.target, "slot": "A",
                 "lastUpdateTime": now_rfc3339(), "observedGrant": s.answers}
        if not self.reporters[s.name].node_entry(PLURAL, self.upgrade, entry):
            self.errors.append(f"{s.name}: report not written")

    def _set_version(self, s: AgentState) -> None:
        self.core.patch_node(s.name, {"metadata": {"labels": {VERSION_LABEL: s.version}}})

    def _set_ready(self, s: AgentState, ready: bool) -> None:
        node = self.core.read_node_status(s.name)
        conditions = [c for c in node.status.conditions or [] if c.type != "Ready"]
        now = now_rfc3339()
        ready_condition = {"type": "Ready", "status": "True" if ready else "False",
                           "reason": "KubeletReady" if ready else "KubeletNotReady",
                           "message": "simulated reboot" if not ready else "kubelet is posting ready status",
                           "lastHeartbeatTime": now, "lastTransitionTime": now}
        self.core.patch_node_status(s.name, {"status": {"conditions": [
            *[client.ApiClient().sanitize_for_serialization(c) for c in conditions], ready_condition]}})


class Sampler:
    """Samples the fleet every few tens of milliseconds for the most nodes disrupted (cordoned or NotReady)
    at once, and watches the NodeUpgrade for every distinct grant (node, action, time) the operator wrote
    and every rollout stage it passed through (a watch sees each write, however short-lived)."""

    def __init__(self, api: client.ApiClient, upgrade: str, nodes: list[str], period: float = 0.05) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.upgrade, self.nodes, self.period = upgrade, set(nodes), period
        self.peak = 0
        self.grants: set[tuple[str, str, str]] = set()
        self.stages: set[str] = set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._sample, daemon=True, name="sampler"),
                         threading.Thread(target=self._watch, daemon=True, name="sampler-watch")]

    def start(self) -> Sampler:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def disrupted(self) -> list[str]:
        out = []
        for node in self.core.list_node().items:
            if node.metadata.name not in self.nodes:
                continue
            ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
            if node.spec.unschedulable or not ready:
                out.append(node.metadata.name)
        return out

    def reboot_grants(self, node: str) -> int:
        return sum(1 for n, action, _ in self.grants if n == node and action in ("Reboot", "Rollback"))

    def _sample(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.peak = max(self.peak, len(self.disrupted()))
            except (ApiException, urllib3.exceptions.HTTPError):  # the API server away: sample on
                continue

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                for event in watch.Watch().stream(self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                                                  field_selector=f"metadata.name={self.upgrade}", timeout_seconds=2):
                    if event["type"] == "ERROR":  # an expired resourceVersion: list again
                        break
                    status = event["object"].get("status") or {}
                    for node, grant in (status.get("grants") or {}).items():
                        self.grants.add((node, grant["action"], grant["time"]))
                    self.stages.update(p.get("stage") for p in (status.get("rollout") or {}).values())
            except (ApiException, urllib3.exceptions.HTTPError):
                self._stop.wait(self.period)


def fleet_nodes(prefix: str, count: int) -> list[SimulatedNode]:
    return [SimulatedNode(name=f"{prefix}-{i:02d}", extra_labels={"upgrade-test": prefix}) for i in range(count)]


@contextmanager
def simulated_fleet(api: client.ApiClient, prefix: str, count: int) -> Iterator[list[str]]:
    """Register count Ready Nodes labelled upgrade-test=<prefix>; delete them afterwards."""
    core = client.CoreV1Api(api)
    nodes = fleet_nodes(prefix, count)
    for node in nodes:
        register_node(core, node)
    try:
        yield [n.name for n in nodes]
    finally:
        for node in nodes:
            try:
                core.delete_node(node.name)
            except ApiException:
                pass
