"""The fleet as the operator sees it, as Prometheus metrics: each NodeUpgrade's rollout, each node's last
successful backup and health, each node's OS version.

A collector, not gauges set once: it keeps the last body of every object (from the watch events kopf
delivers, status included) and the Nodes' labels (from each resync), and derives the samples when
scraped, so a deleted object's series go with it and backup ages are as of the scrape."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from maculaos.api.common import VERSION_LABEL
from maculaos.api.times import reported_time

#: NodeUpgrade phases (api/nodeupgrade.py, NodeUpgradeStatus.phase): one series each, 1 for the current.
ROLLOUT_PHASES = ("Pending", "Waiting", "Progressing", "Paused", "Succeeded", "Failed")
#: status field -> the state label of maculaos_nodeupgrade_nodes.
ROLLOUT_COUNTS = {"matchedNodes": "matched", "upgradedNodes": "upgraded", "failedNodes": "failed",
                  "disruptedNodes": "disrupted"}
WATCHED_KINDS = ("NodeUpgrade", "Backup", "HealthCheck")
#: key used in collect() -> (metric name, help, label names): one table instead of a constructor call each.
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "nodes": ("maculaos_nodeupgrade_nodes", "Nodes of a NodeUpgrade by state: matched, upgraded, failed "
              "(or rolled back), disrupted (cordoned to not yet healthy)", ("nodeupgrade", "state")),
    "phase": ("maculaos_nodeupgrade_phase", "1 for the NodeUpgrade's current phase", ("nodeupgrade", "phase")),
    "paused": ("maculaos_nodeupgrade_paused", "1 while spec.paused holds the rollout", ("nodeupgrade",)),
    "backup_ts": ("maculaos_operator_backup_last_success_timestamp_seconds",
                  "When the node's last successful run of the Backup ended, as it reported", ("backup", "node")),
    "backup_age": ("maculaos_operator_backup_age_seconds",
                   "Seconds since the node's last successful run of the Backup", ("backup", "node")),
    "backup_nodes": ("maculaos_operator_backup_nodes", "Nodes a Backup selects, and how many have ever succeeded",
                     ("backup", "state")),
    "healthy": ("maculaos_operator_node_healthy",
                "1 when the node passes every check of the HealthCheck, as it reported", ("healthcheck", "node")),
    "health_nodes": ("maculaos_operator_healthcheck_nodes",
                     "Nodes a HealthCheck selects (matched) and those passing (healthy)", ("healthcheck", "state")),
    "version": ("maculaos_node_os_version_info", "1 for each Node with the MaculaOS version its label says",
                ("node", "version")),
}


def _timestamp(text: object) -> float | None:
    when = reported_time(text)
    return when.timestamp() if when else None


def _count(body: Mapping[str, Any], field: str) -> int:
    """A count the status reports (matchedNodes...), 0 before the controller first wrote it."""
    return int((body.get("status") or {}).get(field) or 0)


def _nodes(body: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    nodes = (body.get("status") or {}).get("nodes") or {}
    return {n: e for n, e in nodes.items() if isinstance(e, dict)}


class Fleet(Collector):
    """The last body of each watched object, and each Node's version; collect() turns them into samples."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str], Mapping[str, Any]] = {}
        self._versions: dict[str, str] = {}

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event of a NodeUpgrade, Backup or HealthCheck (others are ignored)."""
        kind, name = str(body.get("kind", "")), str(body.get("metadata", {}).get("name", ""))
        if kind not in WATCHED_KINDS or not name:
            return
        with self._lock:
            if event_type == "DELETED":
                self._objects.pop((kind, name), None)
            else:
                self._objects[kind, name] = body

    def observe_nodes(self, labels: Mapping[str, Mapping[str, str]]) -> None:
        """The Nodes as a resync pass listed them: their OS versions (Nodes gone drop out)."""
        with self._lock:
            self._versions = {n: str(lab.get(VERSION_LABEL, "")) for n, lab in labels.items()}

    def _of(self, kind: str) -> list[tuple[str, Mapping[str, Any]]]:
        with self._lock:
            return sorted((name, body) for (k, name), body in self._objects.items() if k == kind)

    def describe(self) -> Iterable[Metric]:
        return list(self._families().values())

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        self._rollouts(families)
        self._backups(families)
        self._health(families)
        with self._lock:
            for node, version in sorted(self._versions.items()):
                families["version"].add_metric([node, version or "unknown"], 1)
        return list(families.values())

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        """A fresh, empty family of each of FAMILIES (a collector yields new families on every scrape)."""
        return {key: GaugeMetricFamily(name, doc, labels=list(labels)) for key, (name, doc, labels) in FAMILIES.items()}

    def _rollouts(self, families: dict[str, GaugeMetricFamily]) -> None:
        for name, body in self._of("NodeUpgrade"):
            for key, state in ROLLOUT_COUNTS.items():
                families["nodes"].add_metric([name, state], _count(body, key))
            current = (body.get("status") or {}).get("phase")
            for phase in ROLLOUT_PHASES:
                families["phase"].add_metric([name, phase], 1 if current == phase else 0)
            families["paused"].add_metric([name], 1 if (body.get("spec") or {}).get("paused") else 0)

    def _backups(self, families: dict[str, GaugeMetricFamily]) -> None:
        now = self._clock()
        for name, body in self._of("Backup"):
            succeeded = 0
            for node, entry in sorted(_nodes(body).items()):
                when = _timestamp(entry.get("lastSuccessTime"))
                if when is None:
                    continue
                succeeded += 1
                families["backup_ts"].add_metric([name, node], when)
                families["backup_age"].add_metric([name, node], max(0.0, now - when))
            families["backup_nodes"].add_metric([name, "matched"], _count(body, "matchedNodes"))
            families["backup_nodes"].add_metric([name, "succeeded"], succeeded)

    def _health(self, families: dict[str, GaugeMetricFamily]) -> None:
        for name, body in self._of("HealthCheck"):
            for node, entry in sorted(_nodes(body).items()):
                families["healthy"].add_metric([name, node], 1 if entry.get("phase") == "Healthy" else 0)
            families["health_nodes"].add_metric([name, "matched"], _count(body, "matchedNodes"))
            families["health_nodes"].add_metric([name, "healthy"], _count(body, "healthyNodes"))

