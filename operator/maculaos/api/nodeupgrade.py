"""NodeUpgrade: a fleet-wide A/B OS upgrade with health gates and automatic rollback.

Seed 4.8 (sources, channel, auto check/apply, rollback), 4.12.3 (rolling/canary, maxUnavailable, health
wait, auto rollback), 10.1; plus what fleet operators ask of such tools: percentage maxUnavailable,
maintenance windows, a delay between nodes, a failure budget, drain options and a health commit window.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field, WithJsonSchema

from maculaos.api.common import (
    LABEL_KEYS_RULE,
    PERCENT_PATTERN,
    ApiModel,
    Duration,
    HostPath,
    LabelSelectorRequirement,
    LabelValue,
    NodeEntry,
    NodeSelector,
    ObjectStatus,
    Percent,
    PrinterColumn,
    ResourceInfo,
    SelectorSpec,
    age_column,
    outcome_column,
    ready_column,
    reason_column,
)

SEMVER_PATTERN = r"^v?(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$"
HTTP_URL_PATTERN = r"^https?://[^\s]+$"
INDEX_URL_PATTERN = r"^(https?|github)://[^\s]+$"
SHA256_PATTERN = r"^[a-f0-9]{64}$"
TIME_OF_DAY_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"

#: For what the operator and the agents hand each other (grants, targets, the answered grant): read by the
#: other side, maybe one release apart, a key a newer release adds is ignored, never a reason to drop the
#: whole object ("Version skew" in docs/architecture.md).
SKEW_TOLERANT = ConfigDict(extra="ignore")

INT_OR_PERCENT_MESSAGE = "must be a count (1 or more; paused: true holds a rollout) or a percentage such as 25%"


def _int_or_percent(value: int | str) -> int | str:
    """The CEL rule below, kept by the operator too: an object stored before the rule (or written past the
    API server) would otherwise reach the rollout pass, which raised on it at every retry (issue #18)."""
    if isinstance(value, int) and value < 1 or isinstance(value, str) and not re.fullmatch(PERCENT_PATTERN, value):
        raise ValueError(f"{value!r} {INT_OR_PERCENT_MESSAGE}")
    return value


IntOrPercent = Annotated[
    int | str,
    WithJsonSchema({
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-validations": [{
            "rule": "type(self) == int ? self >= 1 : self.matches('^(100|[1-9]?[0-9])%$')",
            "message": INT_OR_PERCENT_MESSAGE,
        }],
    }),
    AfterValidator(_int_or_percent),
]
"""A node count such as 3, or a percentage of the selected nodes such as 25%."""


class Channel(StrEnum):
    STABLE = "stable"
    BETA = "beta"
    NIGHTLY = "nightly"


class StrategyType(StrEnum):
    ROLLING = "rolling"
    CANARY = "canary"


class Weekday(StrEnum):
    MON = "Mon"
    TUE = "Tue"
    WED = "Wed"
    THU = "Thu"
    FRI = "Fri"
    SAT = "Sat"
    SUN = "Sun"


class FailureAction(StrEnum):
    PAUSE = "Pause"
    PAUSE_AND_ROLLBACK = "PauseAndRollback"


class UpgradeSource(ApiModel):
    """Where bundles come from; exactly one of releaseIndex, url or localPath."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "(has(self.releaseIndex) ? 1 : 0) + (has(self.url) ? 1 : 0) + (has(self.localPath) ? 1 : 0) == 1",
         "message": "set exactly one of releaseIndex, url or localPath"},
        {"rule": "!has(self.url) || has(self.sha256)",
         "message": "sha256 is required with url: a bundle fetched by URL alone cannot be verified",
         "fieldPath": ".sha256"},
    ]})

    release_index: str | None = Field(default=None, pattern=INDEX_URL_PATTERN, max_length=2048)
    """URL of a release index listing versions per channel, each with bundle URL, sha256 and size
    (https://, or github://owner/repo for GitHub releases)."""
    url: str | None = Field(default=None, pattern=HTTP_URL_PATTERN, max_length=2048)
    """URL of one bundle on a self-hosted server."""
    local_path: HostPath | None = None
    """A directory on each node holding bundles (USB stick, airgap)."""
    sha256: str | None = Field(default=None, pattern=SHA256_PATTERN, max_length=64)
    """Expected SHA-256 of the bundle given by url."""


class CanarySettings(ApiModel):
    """Upgrade a share of the nodes first and continue only if enough of them succeed."""

    percentage: Percent = "5%"
    """Share of the selected nodes upgraded first (at least one node)."""
    success_threshold: Percent = "95%"
    """Share of the canary nodes that must succeed before the rest follow."""


class Strategy(ApiModel):
    """How the rollout moves through the fleet."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self.type == 'canary' || !has(self.canary)",
         "message": "canary settings are only allowed with type canary", "fieldPath": ".canary"},
    ]})

    type: StrategyType = StrategyType.ROLLING
    """rolling, or canary (a first wave, then the rest)."""
    max_unavailable: IntOrPercent = 1
    """Most nodes disrupted (draining, rebooting, unhealthy) at once: a count or a percentage (rounded down,
    at least 1)."""
    delay_between_nodes: Duration = "0s"
    """Pause after one node finishes before the next starts."""
    canary: CanarySettings | None = None
    """Canary settings (type canary)."""


class MaintenanceWindow(ApiModel):
    """A weekly window in which nodes may start upgrading. End before start spans midnight."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self.start != self.end", "message": "start and end must differ", "fieldPath": ".end"},
    ]})

    days: list[Weekday] = Field(
        default_factory=lambda: list(Weekday), min_length=1, max_length=7,
        json_schema_extra={"x-kubernetes-list-type": "set"})
    """Days the window opens (Mon..Sun)."""
    start: str = Field(pattern=TIME_OF_DAY_PATTERN, max_length=5)
    """Opening time, HH:MM."""
    end: str = Field(pattern=TIME_OF_DAY_PATTERN, max_length=5)
    """Closing time, HH:MM; earlier than start means the next day."""
    time_zone: str = Field(default="UTC", max_length=64, pattern=r"^[A-Za-z0-9_+/-]+$")
    """IANA time zone, e.g. Europe/Brussels."""


class FailurePolicy(ApiModel):
    """The fleet failure budget."""

    max_failed_nodes: int = Field(default=1, ge=0, le=10000)
    """Failed or rolled-back nodes tolerated before the rollout stops; 0 stops at the first."""
    action: FailureAction = FailureAction.PAUSE
    """Pause, or PauseAndRollback (also return already-upgraded nodes to their previous slot)."""


class DrainOptions(ApiModel):
    """How a node is emptied before it reboots (Eviction API, honouring PodDisruptionBudgets)."""

    enabled: bool = True
    """Cordon and drain before rebooting."""
    timeout: Duration = "5m"
    """Give up draining after this long (see force)."""
    force: bool = False
    """After the timeout, delete the remaining pods instead of failing the node."""
    ignore_daemon_sets: bool = True
    """Leave DaemonSet pods in place (they would come straight back)."""
    delete_empty_dir_data: bool = False
    """Allow evicting pods that use emptyDir volumes (their data is lost)."""
    grace_period_seconds: int | None = Field(default=None, ge=0, le=86400)
    """Override pods' termination grace period; unset uses each pod's own."""


class HealthCheckSelector(NodeSelector):
    """Which HealthChecks judge a node's new slot, by the HealthChecks' own labels. NodeSelector's fields
    and matching, described for HealthChecks (the descriptions go into the CRD)."""

    match_labels: dict[str, LabelValue] = Field(
        default_factory=dict, max_length=32, json_schema_extra={"x-kubernetes-validations": [LABEL_KEYS_RULE]})
    """Labels a HealthCheck must carry with exactly these values."""
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=32)
    """Further rules a HealthCheck's labels must all satisfy."""


class AgentPhase(StrEnum):
    """Where a node's agent stands with an upgrade (status.nodes.<node>.phase; see the 4a/4b contract)."""

    IDLE = "Idle"
    DOWNLOADING = "Downloading"
    INSTALLING = "Installing"
    INSTALLED = "Installed"
    FAILED = "Failed"
    REBOOTING = "Rebooting"
    COMMITTING = "Committing"
    SUCCEEDED = "Succeeded"
    ROLLED_BACK = "RolledBack"


class GrantAction(StrEnum):
    INSTALL = "Install"
    REBOOT = "Reboot"
    ROLLBACK = "Rollback"


class GrantRef(ApiModel):
    """Which grant a report answers: the object (by uid: a deleted and recreated object of the same name
    has another) and the grant (action and time)."""

    model_config = SKEW_TOLERANT

    uid: str = Field(max_length=64)
    """metadata.uid of the NodeUpgrade that gave the grant."""
    action: GrantAction
    """Install, Reboot or Rollback."""
    time: str = Field(max_length=64)
    """status.grants.<node>.time of that grant."""


class NodeUpgradeNodeEntry(NodeEntry):
    """What one node's agent reports about an upgrade. Written only by that node's agent."""

    observed_grant: GrantRef | None = None
    """The grant this entry's phase answers (like observedGeneration for the spec). The operator takes a
    phase only as the answer to the grant it gave last; facts (version, slot, bootId) always count."""

    version: str = ""
    """OS version running now."""
    slot: str = ""
    """Booted RAUC slot, e.g. A."""
    boot_id: str = ""
    """The host's boot ID; the operator detects a reboot by its change."""
    target_version: str = ""
    """The version this entry's phase refers to."""
    from_version: str = ""
    """The version the node ran when this upgrade's install started (the way back)."""
    progress: int | None = None
    """0-100 while Downloading or Installing."""


class Grant(ApiModel):
    """What the operator allows one node to do now; an agent never upgrades without one."""

    model_config = SKEW_TOLERANT

    action: GrantAction
    """Install (no disruption), Reboot (cordoned and drained) or Rollback (boot the previous slot)."""
    time: str
    """When the grant was given (RFC 3339)."""


class ReleaseTarget(ApiModel):
    """The release a rollout goes to, resolved by the operator from version, channel and source."""

    model_config = SKEW_TOLERANT

    version: str
    """MaculaOS version."""
    url: str | None = None
    """Bundle URL (release index or source.url); absent for source.localPath."""
    sha256: str | None = None
    """Expected SHA-256 of the bundle, when known."""
    size: int | None = None
    """Bundle size in bytes, when known."""


class NodeStage(StrEnum):
    """The operator's own bookkeeping of one node in a rollout (status.rollout.<node>.stage)."""

    INSTALLING = "Installing"
    DRAINING = "Draining"
    REBOOTING = "Rebooting"
    VERIFYING = "Verifying"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    ROLLED_BACK = "RolledBack"
    REVERTED = "Reverted"

    @property
    def final(self) -> bool:
        return self in FINAL_STAGES

    @property
    def disruptive(self) -> bool:
        return self in DISRUPTIVE_STAGES


FINAL_STAGES = frozenset({NodeStage.SUCCEEDED, NodeStage.FAILED, NodeStage.ROLLED_BACK, NodeStage.REVERTED})
DISRUPTIVE_STAGES = frozenset({NodeStage.DRAINING, NodeStage.REBOOTING, NodeStage.VERIFYING})


class NodeProgress(ApiModel):
    """The operator's record of one node in the rollout: everything it needs to resume after a restart."""

    stage: NodeStage
    """Installing, Draining, Rebooting, Verifying, or a final Succeeded, Failed, RolledBack, Reverted."""
    target_version: str = ""
    """The version this record is about."""
    since: str = ""
    """When the node entered this stage (RFC 3339)."""
    rollback: bool = False
    """The disruption in progress is an operator-requested rollback (failurePolicy PauseAndRollback)."""
    cordoned: bool = False
    """The operator cordoned this node and owes it an uncordon."""
    drain_started: str = ""
    """When the first drain step ran on the cordoned node; drain.timeout counts from here."""
    forced: bool = False
    """The drain timed out and drain.force is set: remaining pods are deleted."""
    boot_id: str = ""
    """The node's boot ID when the reboot was granted; a different one means it rebooted."""
    healthy_since: str = ""
    """Since when the node has been back, Ready and healthy (for healthCheckWait)."""
    upgraded: bool = False
    """This rollout changed the node's slot (not already at the target)."""
    message: str = ""
    """Why the node is where it is."""


class NodeUpgradeStatus(ObjectStatus):
    phase: str = ""
    """Pending, Waiting (outside a window, or every node left is held by another NodeUpgrade: see the Waiting
    condition), Progressing, Paused, Succeeded or Failed."""
    target_version: str = ""
    """The version being rolled out."""
    available_version: str = ""
    """Newest version the channel offers (reported even when autoApply is false)."""
    upgraded_nodes: int = 0
    """Nodes running the target version, health committed."""
    failed_nodes: int = 0
    """Nodes that failed or rolled back."""
    disrupted_nodes: int = 0
    """Nodes cordoned, draining, rebooting or not yet healthy right now."""
    target: ReleaseTarget | None = None
    """The release being rolled out, resolved by the operator."""
    grants: dict[str, Grant] = Field(default_factory=dict)
    """What each node may do now, by Node name. Written by the operator only."""
    rollout: dict[str, NodeProgress] = Field(default_factory=dict)
    """The operator's bookkeeping per node, by Node name (agents report in nodes)."""
    canary_nodes: list[str] = Field(default_factory=list)
    """The canary wave, chosen once (strategy canary)."""
    last_node_finished_time: str = ""
    """When the last node finished (for delayBetweenNodes)."""


class NodeUpgradeSpec(SelectorSpec):
    """The desired OS version of the selected nodes and how to get there safely."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "has(self.version) || has(self.channel)",
         "message": "set version, channel, or both (version pins a release within the channel)"},
        {"rule": "has(self.version) || !has(self.source.url) && !has(self.source.localPath)",
         "message": "version is required with source.url and source.localPath (only a release index lists versions)",
         "fieldPath": ".version"},
        {"rule": "duration(self.healthCheckWait) <= duration(self.healthCommitWindow)",
         "message": "healthCheckWait must not exceed healthCommitWindow", "fieldPath": ".healthCheckWait"},
    ]})

    resource = ResourceInfo(
        kind="NodeUpgrade", plural="nodeupgrades", singular="nodeupgrade", short_names=["nu"],
        description="A fleet-wide A/B OS upgrade of MaculaOS nodes with health gates and automatic rollback.",
        columns=[
            PrinterColumn(name="Target", type="string", json_path=".status.targetVersion",
                          description="Version being rolled out"),
            PrinterColumn(name="Strategy", type="string", json_path=".spec.strategy.type"),
            PrinterColumn(name="Phase", type="string", json_path=".status.phase"),
            PrinterColumn(name="Nodes", type="integer", json_path=".status.matchedNodes"),
            PrinterColumn(name="Upgraded", type="integer", json_path=".status.upgradedNodes", priority=1),
            PrinterColumn(name="Failed", type="integer", json_path=".status.failedNodes", priority=1),
            ready_column(), outcome_column(), reason_column(), age_column(),
        ],
    )
    status_model = NodeUpgradeStatus

    version: str | None = Field(default=None, pattern=SEMVER_PATTERN, max_length=64)
    """Target MaculaOS version (SemVer). Unset follows the newest release of channel."""
    channel: Channel | None = None
    """Release channel: stable, beta or nightly."""
    source: UpgradeSource = Field(
        default_factory=lambda: UpgradeSource(release_index="github://macula-io/macula-os"))
    """Where bundles come from."""
    allow_downgrade: bool = False
    """Permit a target lower than a node's running version."""
    auto_apply: bool = True
    """Roll out automatically. When false, the operator checks and reports the available version
    (status.availableVersion) but upgrades no node until this is set."""
    check_interval: Duration = "6h"
    """How often a channel is re-checked for a newer release."""
    paused: bool = False
    """Hold the rollout: nodes in progress finish, no new node starts."""
    strategy: Strategy = Field(default_factory=Strategy)
    """How the rollout moves through the fleet."""
    maintenance_windows: list[MaintenanceWindow] = Field(default_factory=list, max_length=16)
    """Windows in which a node may start upgrading; empty means any time."""
    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy)
    """What happens when nodes fail."""
    drain: DrainOptions = Field(default_factory=DrainOptions)
    """How nodes are emptied before rebooting."""
    health_check_wait: Duration = "60s"
    """How long a node must stay healthy after its reboot before the rollout counts it and moves on."""
    health_commit_window: Duration = "10m"
    """Time the new slot has after boot to pass its health checks (k3s Ready, agent up, the node's
    HealthChecks) before it is marked bad and the node boots back into the old slot."""
    auto_rollback: bool = True
    """Boot back into the previous slot when the health commit window fails."""
    health_check_selector: HealthCheckSelector | None = None
    """Which HealthChecks (by their labels) judge the new slot in the health commit window; unset: every
    HealthCheck selecting the node. Leaves checks that only alert (or fail on purpose) out of the verdict."""


#: How an agent's entry begins when it leaves the NodeUpgrade's spec alone (a field it does not know: the
#: operator's API is a release newer; "Version skew" in docs/architecture.md). Agents since release
#: 13f4d3c write it with phase Idle and the spec's generation in observedGeneration; the operator reads
#: it (controller/nodeupgrade.py: refusals), so this text is part of the skew contract: never reworded.
NOT_ACTED_ON = "not acted on: "

#: Phases in which a NodeUpgrade has nothing left to do (until its target moves on).
FINISHED_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class Claim:
    """One NodeUpgrade's claim on one node it selects, for deciding which of several holds the node."""

    name: str
    created: str
    """metadata.creationTimestamp (RFC 3339, so it sorts as text)."""
    finished: bool = False
    """It starts nothing now: its phase is Succeeded or Failed, its spec is invalid, or autoApply is false."""
    work: int = 0
    """0: nothing under way on the node; 1: an install (a grant or an open record); 2: a disruption
    (draining, rebooting, verifying: the node is down or emptied for this object)."""


def holder(claims: Sequence[Claim]) -> Claim:
    """The NodeUpgrade in charge of a node among those selecting it: the one with the most work under way
    there (a disruption is never taken over), else the oldest that has not finished, else the oldest. The
    operator and the node's agent both decide with this, so they never disagree about who acts."""
    return min(claims, key=lambda c: (-c.work, c.finished, c.created, c.name))


def holds(claim: Claim) -> bool:
    """Whether the holder keeps the node from the others: it has work there or has not finished."""
    return claim.work > 0 or not claim.finished


def claim_on(obj: Mapping[str, Any], node: str) -> Claim:
    """The claim a raw NodeUpgrade object (as listed from the API server) has on node."""
    status = obj.get("status") or {}
    record = (status.get("rollout") or {}).get(node) or {}
    stage = record.get("stage", "")
    work = 0
    if stage in {s.value for s in DISRUPTIVE_STAGES}:
        work = 2
    elif (status.get("grants") or {}).get(node) or (stage and stage not in {s.value for s in FINAL_STAGES}):
        work = 1
    meta = obj.get("metadata") or {}
    invalid = any(c.get("type") == "Invalid" and c.get("status") == "True" for c in status.get("conditions") or [])
    idle = status.get("phase") in FINISHED_PHASES or invalid or (obj.get("spec") or {}).get("autoApply") is False
    return Claim(name=str(meta.get("name", "")), created=str(meta.get("creationTimestamp") or ""),
                 finished=idle, work=work)
