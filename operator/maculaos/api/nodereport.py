"""NodeReport: one per Node, named after it, written only by that node's agent. It holds the node's entry
for every MaculaOS object it acts on; the operator folds them into each object's `status.nodes.<node>`.

Why a kind of its own: N agents patching the status of one shared object conflict inside the API server
(docs/benchmarks.md, "Node agent (issue #3 groundwork)": 100 writers on one object mostly time out, on
100 objects they finish in about 2 s). With one object per node, every agent writes alone, and "only your
own node" becomes a check of the object's name (the agent's admission policy).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ConfigDict, Field

from maculaos.api.common import ApiModel, CustomResource, NodeEntry, PrinterColumn, ResourceInfo, age_column

#: The key of an entry: `Kind/name` for the cluster-scoped kinds (`Kind/namespace/name` if a namespaced
#: kind ever reports), e.g. `MeshRole/warehouse-gateways`.
REPORT_KEY_PATTERN = (r"^[A-Z][A-Za-z0-9]{0,62}(/[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)?"
                      r"/[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
MAX_ENTRIES = 1024
MAX_NEIGHBOURS = 256


def report_key(kind: str, name: str, namespace: str = "") -> str:
    return f"{kind}/{namespace}/{name}" if namespace else f"{kind}/{name}"


def parse_report_key(key: str) -> tuple[str, str, str]:
    """(kind, namespace, name) of a key; namespace is empty for cluster-scoped kinds."""
    parts = key.split("/")
    if len(parts) == 2:
        return parts[0], "", parts[1]
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    raise ValueError(f"{key!r} is not a report key such as MeshRole/name")


class ReportEntry(ApiModel):
    """This node's entry about one object."""

    uid: str = Field(max_length=128)
    """metadata.uid of the object reported on: an object deleted and created again under the same name
    does not inherit the old object's entry."""
    report: NodeEntry
    """What the node reports, as it appears in the object's status.nodes.<node>."""


class LanNeighbour(ApiModel):
    """A MaculaOS node this node found on its LAN: its mDNS `_macula._tcp` service and TXT records."""

    node_id: str = Field(max_length=253)
    """The name the node made for itself on its first boot (TXT node-id), else its host name."""
    host: str = Field(default="", max_length=253)
    """Its mDNS host name (`<name>.local`)."""
    addresses: list[str] = Field(default_factory=list, max_length=16)
    """Its addresses, as its mDNS records give them."""
    version: str = Field(default="", max_length=64)
    """The MaculaOS version it runs."""
    roles: list[str] = Field(default_factory=list, max_length=16)
    """Its mesh roles."""
    realm: str = Field(default="", max_length=253)
    """Its Macula realm."""


class NodeReportStatus(ApiModel):
    """What the node's agent reports. Written by that agent only."""

    model_config = ConfigDict(extra="allow")

    entries: dict[str, ReportEntry] = Field(
        default_factory=dict, max_length=MAX_ENTRIES,
        json_schema_extra={"x-kubernetes-validations": [
            {"rule": f"self.all(k, k.matches(r'{REPORT_KEY_PATTERN}'))",
             "message": "every key must be Kind/name (or Kind/namespace/name), e.g. MeshRole/warehouse-gateways"},
        ]})
    """This node's entry per object, keyed by Kind/name."""
    objects: int = Field(default=0, ge=0)
    """How many objects the node reports on."""
    last_update_time: str | None = None
    """When the agent last wrote this report (RFC 3339)."""
    lan_neighbours: list[LanNeighbour] | None = Field(default=None, max_length=MAX_NEIGHBOURS)
    """The other MaculaOS nodes on this node's LAN, from mDNS (absent while the agent does not look:
    `--lan-neighbours-seconds` 0)."""
    lan_neighbours_time: str | None = None
    """When that list last changed (RFC 3339); the agent looks every `--lan-neighbours-seconds` and writes
    only a change."""


class NodeReportSpec(CustomResource):
    """A NodeReport has no spec: it is all report (status). The object is named after its Node and owned
    by it, so it goes when the Node goes."""

    has_spec = False
    resource = ResourceInfo(
        kind="NodeReport", plural="nodereports", singular="nodereport", short_names=["nr"],
        description="What one node's agent reports about every MaculaOS object it acts on; named after the "
                    "Node, written only by that node's agent, folded by the operator into each object's "
                    "status.nodes.",
        columns=[
            PrinterColumn(name="Objects", type="integer", json_path=".status.objects",
                          description="Objects this node reports on"),
            PrinterColumn(name="Updated", type="date", json_path=".status.lastUpdateTime",
                          description="When the agent last reported"),
            age_column(),
        ],
    )
    status_model = NodeReportStatus  # type: ignore[assignment]  # a report, not an ObjectStatus


def report_entries(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The entries of a NodeReport body, skipping malformed ones: a key the schema's rule refuses (kept
    out by the API server, but a report stored before the rule reaches us all the same) would otherwise
    raise in every fold after it, and the fold of every object with it."""
    raw = (body.get("status") or {}).get("entries") or {}
    return {k: v for k, v in raw.items() if isinstance(k, str) and re.fullmatch(REPORT_KEY_PATTERN, k)
            and isinstance(v, dict) and isinstance(v.get("report"), dict)}
