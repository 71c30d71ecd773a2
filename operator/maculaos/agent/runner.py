"""The agent loop: caches fed by watches mark the agent dirty; each pass converges the host to what the
selecting objects ask and reports. A periodic pass runs even without changes, so drift on the host and
missed events heal; with the API server away the caches keep their last objects and the host its state."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from maculaos.agent import metrics
from maculaos.agent.backup import (
    BACKUPS,
    RESTORES,
    TICK_SECONDS,
    BackupEngine,
    BackupSettings,
    backup_relevant,
    read_secret_with,
)
from maculaos.agent.backup_server import CONDITION as BACKUP_SERVER_CONDITION
from maculaos.agent.backup_server import advertisement
from maculaos.agent.decommission import reset_when_granted
from maculaos.agent.healthcheck import PLURAL as HEALTH_PLURAL
from maculaos.agent.healthcheck import HealthEngine, significant
from maculaos.agent.meshrole import PLURAL as MESH_PLURAL
from maculaos.agent.meshrole import converge_mesh
from maculaos.agent.neighbours import watch_lan
from maculaos.agent.nodereport import Reporter
from maculaos.agent.nodeupgrade import PLURAL as UPGRADE_PLURAL
from maculaos.agent.nodeupgrade import UpgradeEngine, relevance
from maculaos.agent.settings import AgentSettings
from maculaos.agent.watch import WatchedCache, labels_and_addresses, spec_and_generation
from maculaos.api.backup import BACKUP_SERVER_ANNOTATION
from maculaos.api.common import spec_selects
from maculaos.api.nodekeys import HEALTHY_CONDITION
from maculaos.host.firewall import tcp_port_blocked
from maculaos.host.meshrole import MeshPlan
from maculaos.host.rauc import Rauc
from maculaos.host.systemd import Systemd
from maculaos.kube.rest import KubeClient, object_path, resource_path

log = logging.getLogger("maculaos.agent")
DEBOUNCE_SECONDS = 0.05
HEALTH_TICK_SECONDS = 1.0
HEALTH_REFRESH_SECONDS = 60.0


class Agent:
    def __init__(self, settings: AgentSettings, kube: KubeClient) -> None:
        self.settings = settings
        self.dirty = threading.Event()
        self.reporter = Reporter(kube, settings.node_name, self._lookup)
        self.systemd = Systemd(settings.host_root, live=settings.live_systemd,
                               systemctl=settings.systemctl if settings.live_systemd else "systemctl")
        self.health = HealthEngine(settings.host_root,
                                   Systemd(settings.host_root, live=True, systemctl=settings.systemctl),
                                   self._notify_health)
        self.meshroles = WatchedCache(MESH_PLURAL, kube, object_path(MESH_PLURAL), self.dirty.set,
                                      spec_and_generation)
        self.healthchecks = WatchedCache(HEALTH_PLURAL, kube, object_path(HEALTH_PLURAL), lambda: None)
        self.node = WatchedCache("node", kube, resource_path("v1", "nodes"), self.dirty.set, labels_and_addresses,
                                 field_selector=f"metadata.name={settings.node_name}")
        self.last_pass = 0.0
        self.applied_plan: MeshPlan | None = None
        self.backup_wake = threading.Event()
        self.backups = WatchedCache(BACKUPS, kube, object_path(BACKUPS), self.backup_wake.set, backup_relevant)
        self.restores = WatchedCache(RESTORES, kube, object_path(RESTORES), self.backup_wake.set, spec_and_generation)
        self.backup_engine = BackupEngine(
            BackupSettings(settings.node_name, settings.host_root, settings.restic),
            read_secret_with(kube),
            lambda plural, name, entry: self.reporter.node_entry(plural, name, entry), self.reporter.event)
        conf = Path(settings.rauc_conf) if settings.rauc_conf else settings.host_root / "etc/rauc/system.conf"
        self.upgrades = UpgradeEngine(
            settings.node_name, settings.host_root,
            Rauc(settings.rauc, conf if conf.exists() else None, root=settings.host_root),
            settings.reboot_command, self.reporter, lambda: self.nodeupgrades.snapshot(), self.node.snapshot,
            self._listed_healthchecks, self._health_states)
        self.nodeupgrades = WatchedCache(UPGRADE_PLURAL, kube, object_path(UPGRADE_PLURAL), self.upgrades.wake.set,
                                         relevance(settings.node_name))

    def _caches(self) -> dict[str, WatchedCache]:
        return {"nodes": self.node, MESH_PLURAL: self.meshroles, HEALTH_PLURAL: self.healthchecks,
                BACKUPS: self.backups, RESTORES: self.restores, UPGRADE_PLURAL: self.nodeupgrades}

    def _lookup(self, plural: str, name: str) -> dict[str, Any] | None:
        """The object an entry is about, from the watch caches (the Reporter records its uid)."""
        return self._caches()[plural].snapshot().get(name)

    def _prune_reports(self) -> None:
        """Entries about objects deleted while nobody reported on them (say, with the agent down) go; only
        once every cache has listed, so an object is never taken for gone before it was seen."""
        caches = self._caches()
        if all(c.synced.is_set() for c in caches.values()):
            self.reporter.prune(lambda plural, name: name in caches[plural].snapshot())

    def run(self, stop: threading.Event) -> None:
        caches = tuple(self._caches().values())
        for cache in caches:
            cache.start()
        log.info(f"agent for node {self.settings.node_name} on host root {self.settings.host_root}")
        health = threading.Thread(target=self._health_loop, args=(stop,), name="health", daemon=True)
        health.start()
        threading.Thread(target=self._backup_loop, args=(stop,), name="backup", daemon=True).start()
        if self.settings.lan_neighbours_seconds > 0:
            threading.Thread(target=watch_lan, args=(self.settings, self.reporter, stop), name="lan",
                             daemon=True).start()
        threading.Thread(target=self.upgrades.run, args=(stop, self.settings.resync_seconds), name="upgrades",
                         daemon=True).start()
        while not stop.is_set():
            changed = self.dirty.wait(self.settings.resync_seconds)
            if stop.is_set():
                break
            time.sleep(DEBOUNCE_SECONDS)  # let a burst of events land in one pass
            self.dirty.clear()
            self.converge(resync=not changed)
        for cache in caches:
            cache.stop()

    def _health_loop(self, stop: threading.Event) -> None:
        """Checks run on their own intervals, apart from the converge loop, so a slow probe delays
        nothing else; one tick a second decides which are due."""
        while not stop.wait(HEALTH_TICK_SECONDS):
            node = self.node.snapshot().get(self.settings.node_name)
            if node is None:
                continue
            try:
                self.check_health(dict(node["metadata"].get("labels") or {}))
            except Exception:  # a bug in one tick must not end health checking
                log.exception("health tick failed")

    def _backup_loop(self, stop: threading.Event) -> None:
        """Backups and restores, one at a time, woken by a change of a Backup/Restore or every tick (for
        random delays and integrity checks)."""
        while not stop.is_set():
            self.backup_wake.wait(TICK_SECONDS)
            self.backup_wake.clear()
            node = self.node.snapshot().get(self.settings.node_name)
            if node is None or not (self.backups.synced.is_set() and self.restores.synced.is_set()):
                continue
            try:
                self.backup_engine.tick(self.backups.snapshot(), self.restores.snapshot(),
                                        dict(node["metadata"].get("labels") or {}))
            except Exception:  # a bug in one pass must not end backups
                log.exception("backup pass failed")

    def check_health(self, labels: dict[str, str]) -> None:
        objects = self.healthchecks.snapshot()
        mine = {n: o for n, o in objects.items() if spec_selects(o.get("spec") or {}, labels)}
        entries = self.health.run_due(mine)
        for name, entry in entries.items():
            metrics.set_health(name, entry)
        stale = _stale_entries(self.reporter.entries(HEALTH_PLURAL), entries)
        self.reporter.node_entries(HEALTH_PLURAL, {**entries, **dict.fromkeys(stale)}, significant,
                                   HEALTH_REFRESH_SECONDS)
        failing = sorted(n for n, e in entries.items() if e["phase"] != "Healthy")
        if failing:
            self.reporter.condition(HEALTHY_CONDITION, "False", "ChecksFailing",
                                    "; ".join(f"{n}: {entries[n]['message']}" for n in failing))
        else:
            self.reporter.condition(HEALTHY_CONDITION, "True", "AllChecksPassing",
                                    f"{len(entries)} HealthCheck(s) passing")

    def _listed_healthchecks(self) -> dict[str, dict[str, Any]] | None:
        """The HealthChecks once the watch has listed them (None before): the upgrade's health window must
        not pass a node on checks its agent has not seen yet."""
        return self.healthchecks.snapshot() if self.healthchecks.synced.is_set() else None

    def _health_states(self) -> dict[tuple[str, str], tuple[bool, bool, str]]:
        """(ran, passing, output) per (HealthCheck, check), for the upgrade's health commit window."""
        return {key: (st.result is not None, st.result is not None and st.result.ok,
                      st.result.output if st.result else "") for key, st in dict(self.health.states).items()}

    def _notify_health(self, healthcheck: str, check: str, type_: str, reason: str, message: str) -> None:
        obj = self.healthchecks.snapshot().get(healthcheck)
        if obj is not None:
            self.reporter.event(obj, type_, reason, message)

    def converge(self, resync: bool = True) -> None:
        """One pass. On a change, host work is skipped when the plan is the one last applied; the periodic
        resync always checks the host, which heals drift."""
        node = self.node.snapshot().get(self.settings.node_name)
        if node is None:
            if self.node.synced.is_set():
                log.warning(f"Node {self.settings.node_name} does not exist (yet): nothing to apply")
            return
        started = time.monotonic()
        labels: dict[str, str] = dict(node["metadata"].get("labels") or {})
        ok = self._converge_mesh(labels, _has_public_address(node), None if resync else self.applied_plan)
        ok = self._advertise_backup_server(node) and ok
        reset_when_granted(node, self.settings.host_root, self.settings.reboot_command, self.reporter,
                           self.settings.grub_editenv, self.settings.grub_editenv_in_node)
        metrics.record_pass(ok, time.monotonic() - started)
        self.last_pass = time.time()
        if resync:
            self._prune_reports()

    def _advertise_backup_server(self, node: dict[str, Any]) -> bool:
        """os.macula.io/backup-server on this Node only while config.yaml asks, the server answers and the
        firewall admits peers (it runs after the mesh pass, which opens the port)."""
        ad = advertisement(self.settings.host_root, node, lambda port: tcp_port_blocked(port, self.settings.nft))
        current = dict(node["metadata"].get("annotations") or {})
        ok = self.reporter.annotations({BACKUP_SERVER_ANNOTATION: ad.url}, current)
        if ad.condition is not None:
            ok = self.reporter.condition(BACKUP_SERVER_CONDITION, *ad.condition) and ok
        return ok

    def _converge_mesh(self, labels: dict[str, str], public_address: bool, applied: MeshPlan | None) -> bool:
        objects = self.meshroles.snapshot()
        outcome = converge_mesh(objects, labels, self.settings.host_root, self.systemd, self.settings.nft,
                                public_address, applied)
        self.applied_plan = outcome.applied
        stale = _stale_entries(self.reporter.entries(MESH_PLURAL), outcome.entries)
        ok = self.reporter.node_entries(MESH_PLURAL, {**outcome.entries, **dict.fromkeys(stale)})
        if outcome.labels:
            ok = self.reporter.labels(outcome.labels, labels) and ok
        metrics.set_roles(outcome.labels)
        return ok and not any(e["phase"] != "Applied" for e in outcome.entries.values())


def _stale_entries(reported: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Objects this node still has an entry about although they no longer select it."""
    return [name for name in reported if name not in current]


def _has_public_address(node: dict[str, Any]) -> bool:
    addresses = (node.get("status") or {}).get("addresses") or []
    return any(a.get("type") == "ExternalIP" for a in addresses)
