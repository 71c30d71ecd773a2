"""Types shared by every MaculaOS custom resource: selectors, durations, Secret references, status.

Field docstrings become the CRD field descriptions (``use_attribute_docstrings``), so they are written
for the person reading ``kubectl explain``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

#: A node's restic rest-server URL (annotation and config.yaml); here, not in backup.py, so that the boot's
#: apply (host/backup_server.py) does not build the Backup models.
BACKUP_SERVER_PATTERN = r"^https?://[^\s/]+(/[^\s]*)?$"

GROUP = "os.macula.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

#: The Node label on which each node reports the MaculaOS version it runs.
VERSION_LABEL = "os.macula.io/version"

#: Namespace the operator, its Secrets and its Lease live in unless told otherwise.
DEFAULT_NAMESPACE = "maculaos-system"

DURATION_PATTERN = r"^([0-9]+(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

Duration = Annotated[
    str,
    Field(
        pattern=DURATION_PATTERN,
        max_length=32,
        json_schema_extra={"x-kubernetes-validations": [
            {"rule": "duration(self) >= duration('0s')", "message": "must be a duration such as 30s, 5m or 1h30m"},
        ]},
    ),
]
"""A duration as Kubernetes writes them: digits and a unit (ms, s, m, h), e.g. ``90s`` or ``1h30m``."""

PERCENT_PATTERN = r"^(100|[1-9]?[0-9])%$"
Percent = Annotated[str, Field(pattern=PERCENT_PATTERN, max_length=4)]
"""A whole percentage from 0% to 100%, written with the percent sign, e.g. ``25%``."""

LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: One path segment that is neither "." nor "..", without a slash or a NUL.
_SEGMENT = r"(\.\.[^/\x00]+|\.[^./\x00][^/\x00]*|[^./\x00][^/\x00]*)"
#: An absolute path in canonical form: "/" or /-separated segments, none empty (no "//"), none "." or
#: "..", no trailing slash, no NUL. What a resource names on a node is always read under the node's host
#: root, and a canonical path cannot climb out of it by its spelling (host/paths.py keeps symlinks in too).
HOST_PATH_PATTERN = rf"^(/|(/{_SEGMENT})+)$"
#: A restic exclude pattern: an absolute host path as above, or a relative pattern of such segments.
EXCLUDE_PATTERN = rf"^(/|(/{_SEGMENT})+|{_SEGMENT}(/{_SEGMENT})*)$"
HOST_PATH_HINT = ('an absolute path in canonical form, such as /var/lib/data: no ".." or "." segments, '
                  'no "//", no trailing "/", no NUL')

HostPath = Annotated[str, Field(pattern=HOST_PATH_PATTERN, max_length=4096)]
"""A path on the node, read under its host root; the one type of every host path a resource names."""


LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]
LABEL_KEYS_RULE: JsonDict = {"rule": f"self.all(k, k.matches(r'{LABEL_KEY_PATTERN}'))",
                   "message": "every key must be a valid label key, e.g. macula.io/site"}


def parse_duration(text: str) -> timedelta:
    """Turn ``1h30m`` into a timedelta; raises ValueError on anything the CRD pattern rejects."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration such as 30s, 5m or 1h30m")
    seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))
    return timedelta(seconds=seconds)


def parse_percent(text: str) -> int:
    """Turn ``25%`` into 25."""
    if not re.fullmatch(PERCENT_PATTERN, text):
        raise ValueError(f"{text!r} is not a percentage from 0% to 100%")
    return int(text[:-1])


class ApiModel(BaseModel):
    """Base of every API type: camelCase on the wire, docstrings as descriptions, unknown keys refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="forbid",
        use_enum_values=False,
    )


def field_differences(here: BaseModel, there: BaseModel, prefix: str = "spec") -> list[tuple[str, Any, Any]]:
    """(field path as written in YAML, value here, value there) for every leaf on which two models differ:
    what a message about a disagreement names, instead of the models' reprs."""
    return _differences(here.model_dump(mode="json", by_alias=True), there.model_dump(mode="json", by_alias=True),
                        prefix)


def _differences(here: Any, there: Any, path: str) -> list[tuple[str, Any, Any]]:
    if isinstance(here, dict) and isinstance(there, dict):
        return [d for key in sorted(here.keys() | there.keys())
                for d in _differences(here.get(key), there.get(key), f"{path}.{key}")]
    return [] if here == there else [(path, here, there)]


def show_value(value: Any) -> str:
    """A field's value as a person would write it in YAML (lists inline), for messages."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show_value(v)}" for k, v in value.items()) + "}"
    return str(value)


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(ApiModel):
    """One label rule, as in a Kubernetes label selector."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self.operator in ['In', 'NotIn'] ? size(self.values) > 0 : size(self.values) == 0",
         "message": "values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist",
         "fieldPath": ".values"},
    ]})

    key: str = Field(pattern=LABEL_KEY_PATTERN, max_length=317)
    """The Node label key the rule looks at."""
    operator: SelectorOperator
    """How the label is compared: In, NotIn, Exists or DoesNotExist."""
    values: list[Annotated[str, Field(max_length=63)]] = Field(default_factory=list, max_length=64)
    """The values for In and NotIn; empty for Exists and DoesNotExist."""

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        if self.operator is SelectorOperator.EXISTS:
            return present
        if self.operator is SelectorOperator.DOES_NOT_EXIST:
            return not present
        if self.operator is SelectorOperator.IN:
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values


class NodeSelector(ApiModel):
    """Which Nodes the object applies to, by their labels. Empty selects every MaculaOS node."""

    match_labels: dict[str, LabelValue] = Field(
        default_factory=dict, max_length=32, json_schema_extra={"x-kubernetes-validations": [LABEL_KEYS_RULE]})
    """Labels a Node must carry with exactly these values."""
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=32)
    """Further rules a Node's labels must all satisfy."""

    def matches(self, labels: dict[str, str]) -> bool:
        """True when a Node with these labels is selected (Kubernetes label-selector semantics)."""
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        return all(req.matches(labels) for req in self.match_expressions)


def spec_selects(spec: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a raw object spec's nodeSelector picks a Node with these labels. An unparseable selector
    counts as picking it, so that the node reports the problem instead of ignoring the object."""
    try:
        return NodeSelector.model_validate(spec.get("nodeSelector") or {}).matches(dict(labels))
    except ValidationError:
        return True


class SecretKeyRef(ApiModel):
    """A key inside a Secret. Credentials are only ever referenced, never written into the object."""

    name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    """Name of the Secret."""
    namespace: str = Field(default=DEFAULT_NAMESPACE, pattern=DNS_LABEL_PATTERN, max_length=63)
    """Namespace of the Secret."""
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)
    """Key inside the Secret's data."""


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionType(StrEnum):
    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    INVALID = "Invalid"
    STALE = "Stale"
    FAILED = "Failed"
    WARNING = "Warning"


class Condition(ApiModel):
    """A condition in the style of metav1.Condition."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(max_length=316)
    """Ready, Progressing, Degraded, Invalid, Stale, Failed, Waiting (a NodeUpgrade whose nodes another holds),
    NotActedOn (a NodeUpgrade some nodes' agents cannot act on: a field their release does not know) or
    Warning (accepted, with a risk such as a lock-out)."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str = Field(default="", max_length=1024)
    """One CamelCase word a program can switch on."""
    message: str = Field(default="", max_length=32768)
    """What a person needs to know, naming the field at fault and what would be right."""
    last_transition_time: str | None = None
    """When the status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """The metadata.generation this condition was computed from."""


class NodeEntry(ApiModel):
    """What one node reports about this object. Each node's agent writes only its own entry."""

    model_config = ConfigDict(extra="allow")

    phase: str = ""
    """Where the node stands with this object."""
    message: str = ""
    """The node's last word on it."""
    observed_generation: int | None = None
    """The metadata.generation the node last applied."""
    last_update_time: str | None = None
    """When the node last reported (RFC 3339)."""


class ObjectStatus(ApiModel):
    """Status every kind shares; kinds add their own summary fields."""

    model_config = ConfigDict(extra="allow")

    observed_generation: int | None = None
    """The metadata.generation the operator last judged."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready, Invalid and the kind's own conditions."""
    matched_nodes: int = 0
    """How many Nodes the nodeSelector selects right now."""
    outcome: str = ""
    """What the selected nodes made of the object, in a few words (e.g. `2/3 upgraded, 1 failed`,
    `2/3 healthy`, `macula-nuc-01: Succeeded`): the Outcome column next to Ready, which says only that the
    object was accepted. Written by the operator from the nodes' entries."""
    nodes: dict[str, NodeEntry] = Field(default_factory=dict)
    """Per-node reports, keyed by Node name."""


@dataclass(frozen=True)
class PrinterColumn:
    """One column of ``kubectl get``."""

    name: str
    type: str
    json_path: str
    description: str = ""
    priority: int = 0
    """0 shows in `kubectl get`; 1 only with `-o wide` (details the Outcome column sums up)."""

    def to_crd(self) -> dict[str, str | int]:
        column: dict[str, str | int] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.priority:
            column["priority"] = self.priority
        return column | ({"description": self.description} if self.description else {})


def ready_column() -> PrinterColumn:
    return PrinterColumn(name="Ready", type="string", json_path='.status.conditions[?(@.type=="Ready")].status',
                         description="Ready condition")


def outcome_column() -> PrinterColumn:
    return PrinterColumn(name="Outcome", type="string", json_path=".status.outcome",
                         description="What the selected nodes made of it, e.g. 2/3 upgraded, 1 failed (Ready says "
                                     "only that it was accepted)")


def reason_column() -> PrinterColumn:
    return PrinterColumn(name="Reason", type="string", json_path='.status.conditions[?(@.type=="Ready")].reason',
                         description="Why it is (not) Ready")


def age_column() -> PrinterColumn:
    return PrinterColumn(name="Age", type="date", json_path=".metadata.creationTimestamp")


@dataclass(frozen=True)
class ResourceInfo:
    """How a kind appears in the API: names, columns. Kept next to the model it describes."""

    kind: str
    plural: str
    singular: str
    short_names: list[str]
    columns: list[PrinterColumn]
    description: str


class CustomResource(ApiModel):
    """A kind's spec model; subclasses set ``resource`` and, when they report more, ``status_model``."""

    resource: ClassVar[ResourceInfo]
    status_model: ClassVar[type[ObjectStatus]] = ObjectStatus
    has_spec: ClassVar[bool] = True
    """False for a kind that is all status (NodeReport): its CRD has no spec."""


class SelectorSpec(CustomResource):
    """The spec of a kind that applies to the Nodes its selector picks."""

    node_selector: NodeSelector = Field(default_factory=NodeSelector)
    """Which Nodes this applies to. Empty selects every node."""
