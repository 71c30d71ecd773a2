"""The kopf side of the controller: which changes trigger a judgement, and the periodic resync.

Level-triggered: every object is judged on create, update and operator start, and all of them again on
every resync pass, so a Node that appears later, or a Secret created after the object, clears an Invalid
condition by itself. No timers or deletion handlers: they would put kopf finalizers on users' objects,
which then could not be deleted while the operator is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf

from maculaos.api import GROUP, KINDS, VERSION
from maculaos.controller import memory
from maculaos.controller.cluster import ApiCluster, list_objects
from maculaos.controller.decommission import Decommissions
from maculaos.controller.fleet_metrics import Fleet
from maculaos.controller.fold import DEBOUNCE_SECONDS, MAX_DELAY_SECONDS, REPORTS, Folder
from maculaos.controller.mesh_labels import apply_mesh_labels
from maculaos.controller.metrics import FOLD_LATENCY, TICK_SECONDS, Health, counted
from maculaos.controller.nodeupgrade import Rollouts
from maculaos.controller.reconcile import judge, judge_and_write, write
from maculaos.kube.rest import Credentials, KubeClient

#: Prefix of the annotations kopf keeps its handler progress in; the agents use their own, never this.
ANNOTATION_PREFIX = "controller.os.macula.io"

log = logging.getLogger("maculaos.controller")


#: Kinds whose objects drive a rollout (controller/nodeupgrade.py) on top of being judged.
ROLLOUT_KIND = "NodeUpgrade"


#: The kind whose nodeLabels the operator writes on the Nodes (controller/mesh_labels.py).
LABELLING_KIND = "MeshRole"


def reconcile_one(kube: KubeClient, body: dict[str, Any], rollouts: Rollouts) -> None:
    with counted(str(body.get("kind"))):
        if body.get("kind") == ROLLOUT_KIND:
            rollouts.reconcile(body["metadata"]["name"])
            return
        cluster = ApiCluster(kube)
        write(kube, body, judge(body, cluster))
        if body.get("kind") == LABELLING_KIND:
            apply_mesh_labels(kube, cluster.meshroles(), cluster.node_objects)


def resync_all(kube: KubeClient, rollouts: Rollouts, folder: Folder | None = None,
               fleet: Fleet | None = None, decommissions: Decommissions | None = None) -> int:
    """Judge every object against one fresh snapshot of the cluster, give the Nodes their MeshRoles'
    nodeLabels and move the Nodes being decommissioned a step; returns how many objects were written."""
    cluster = ApiCluster(kube)
    if decommissions is not None:
        decommissions.run(cluster.node_objects)
    if fleet is not None:
        fleet.observe_nodes(cluster.node_labels())
    listed: dict[str, list[dict[str, Any]]] = {}
    written = 0 if folder is None else folder.fold_all(cluster.node_labels().keys(), listed)
    for model in KINDS:
        plural = model.resource.plural
        bodies = listed[plural] if plural in listed else list_objects(kube, plural)
        cluster.know(plural, bodies)
        if model.resource.kind == ROLLOUT_KIND:
            rollouts.release_orphans(cluster, {b["metadata"]["name"] for b in bodies})
        for body in bodies:
            with counted(model.resource.kind):
                if model.resource.kind == ROLLOUT_KIND:
                    rollouts.reconcile(body["metadata"]["name"], cluster)
                    continue
                written += judge_and_write(kube, body, cluster)
    return written + apply_mesh_labels(kube, cluster.meshroles(), cluster.node_objects)


def judge_folded(kube: KubeClient, folded: list[dict[str, Any]]) -> int:
    """Judge the objects a fold just wrote, as the resync would, so what follows from the nodes' entries
    (counts, Degraded, the Outcome column, a Restore's phase, a Backup's runs) shows with them rather than
    a resync period later. One Node listing per fold batch, each object judged once (a batch folds an
    object once), written only when its judgement changed; returns how many were written.

    NodeUpgrades are left out: the fold's write is a watch event of the NodeUpgrade, and on_rollout_event
    runs the rollout pass (its judgement, grants and cordons, one pass at a time per object) on it already;
    a second pass here would only repeat it. MeshRoles' nodeLabels follow from their spec, not from the
    entries, so they wait for the resync or a spec change as before."""
    bodies = [b for b in folded if b.get("kind") != ROLLOUT_KIND]
    if not bodies:
        return 0
    cluster = ApiCluster(kube)
    written = 0
    for body in bodies:
        with counted(str(body.get("kind"))):
            written += judge_and_write(kube, body, cluster)
    return written


async def fold_forever(fold: Callable[[], object], wake: asyncio.Event, debounce: float = DEBOUNCE_SECONDS,
                       max_delay: float = MAX_DELAY_SECONDS) -> None:
    """Fold the NodeReports into status.nodes as they change (fold: one batch, folded and judged). A
    report after a quiet spell is folded at once (a lone on-demand backup's result shows without delay);
    reports arriving while folds are recent wait for the burst to pause (at most max_delay), so a fleet's
    burst costs about one write a second."""
    loop = asyncio.get_running_loop()
    last_fold = -math.inf
    while True:
        await wake.wait()
        first = loop.time()
        if first - last_fold < max_delay:  # within a burst: let the rest of it land first
            while (left := first + max_delay - loop.time()) > 0:
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), min(debounce, left))
                except TimeoutError:
                    break  # the burst paused
        wake.clear()
        try:
            await asyncio.to_thread(fold)
        except Exception as exc:  # API server away: retried after a pause, and by the resync anyway
            log.warning(f"folding node reports failed: {exc}")
            await asyncio.sleep(1.0)
            wake.set()
        else:
            FOLD_LATENCY.observe(loop.time() - first)
        last_fold = loop.time()


async def resync_forever(kube: KubeClient, rollouts: Rollouts, interval: float, folder: Folder,
                         fleet: Fleet | None = None, decommissions: Decommissions | None = None,
                         passes: threading.Lock | None = None) -> None:
    """A resync pass every interval; with passes, each pass holds it (the fold batches take it too)."""
    passes = passes or threading.Lock()

    def resync() -> int:
        with passes:
            return resync_all(kube, rollouts, folder, fleet, decommissions)

    while True:
        await asyncio.sleep(interval)
        try:
            written = await asyncio.to_thread(resync)
        except Exception:  # the next pass retries; a failing pass must not end the loop
            log.exception("resync pass failed")
            continue
        if written:
            log.info(f"resync updated {written} object(s)")


async def tick_forever(health: Health, interval: float = TICK_SECONDS) -> None:
    """Tell the liveness probe that the event loop runs (kopf's handlers and our passes share it)."""
    while True:
        health.tick()
        await asyncio.sleep(interval)


async def trim_forever(interval: float = memory.TRIM_SECONDS) -> None:
    """Give freed heap pages back now and then (controller/memory.py): passes decode whole listings."""
    while True:
        await asyncio.sleep(interval)
        memory.trim()


def connection_info(credentials: Credentials) -> kopf.ConnectionInfo:
    """kopf's own (aiohttp) client logs in with the credentials of ours, so both read the same kubeconfig
    or service account and the generated `kubernetes` client is never needed. A token file is read at
    each login: kopf logs in again on a 401, which is how a rotated service-account token is picked up."""
    token = credentials.token
    if credentials.token_file:
        token = Path(credentials.token_file).read_text().strip()
    return kopf.ConnectionInfo(server=credentials.server, ca_path=credentials.ca_file,
                               insecure=credentials.insecure or None, certificate_path=credentials.cert_file,
                               private_key_path=credentials.key_file, token=token or None)


def build_registry(resync_seconds: float, credentials: Credentials, health: Health | None = None,
                   fleet: Fleet | None = None) -> kopf.OperatorRegistry:
    """Every handler of the controller, registered on a fresh registry (no import-time globals); health and
    fleet, when given, are what the probes and the fleet metrics read."""
    registry = kopf.OperatorRegistry()
    # One connection pool, and one request count, for every API call of the controller (kopf's watches
    # use their own).
    kube = KubeClient(credentials, user_agent="maculaos-operator")
    rollouts = Rollouts(kube)
    decommissions = Decommissions(kube, rollouts.whereabouts.pod)
    folder = Folder(kube)
    fold_wake = asyncio.Event()
    # A fold batch (fold, then judge what it wrote) and a resync pass (fold everything, judge everything)
    # take turns: a judgement of one never writes counts from an older read over the other's fresher ones.
    # Only the leader runs either (run.py starts the controller once this replica holds the Lease).
    passes = threading.Lock()

    def fold_batch() -> None:
        # NodeUpgrades' entries alone need no judgement here (judge_folded): such a batch, every one of a
        # rollout, does not wait for a resync pass to end. A report of another kind landing between this
        # look and the fold is judged without the turn; the next resync heals what that race could leave.
        turn = contextlib.nullcontext() if folder.pending_kinds() <= {ROLLOUT_KIND} else passes
        with turn:
            judge_folded(kube, folder.fold_pending())
    resync_task: list[asyncio.Task[None]] = []

    async def on_change(body: kopf.Body, **_: Any) -> None:
        await asyncio.to_thread(reconcile_one, kube, dict(body), rollouts)

    async def on_rollout_event(event: kopf.RawEvent, **_: Any) -> None:
        """An agent's report (a status change kopf's update handlers do not see) moves the rollout now
        rather than at the next resync."""
        if fleet is not None:
            fleet.observe(event.get("type"), event["object"])
        if event.get("type") in ("ADDED", "MODIFIED"):
            await asyncio.to_thread(rollouts.reconcile_soon, event["object"]["metadata"]["name"])
        if rollouts.lets_go(str(event.get("type")), event["object"]):  # a holder let go: its waiters go on now
            for name in await asyncio.to_thread(rollouts.waiters):
                await asyncio.to_thread(rollouts.reconcile_soon, name)

    async def on_report_event(event: kopf.RawEvent, **_: Any) -> None:
        """A node's agent wrote its NodeReport: fold it into the objects' status.nodes soon."""
        if folder.observe(event.get("type"), event["object"]):
            fold_wake.set()

    async def on_object_event(event: kopf.RawEvent, **_: Any) -> None:
        """Every change of a Backup or HealthCheck, status included: what the fleet metrics show."""
        if fleet is not None:
            fleet.observe(event.get("type"), event["object"])

    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        """Exclusive access comes from leader election, so kopf's peering is off; kopf keeps its progress
        in annotations under our prefix, never in status, which the node agents share."""
        settings.peering.standalone = True
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=ANNOTATION_PREFIX, key="last-handled-configuration")
        settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"
        settings.posting.enabled = False  # Events are posted by reconcile.write, one per verdict change
        resync_task.append(asyncio.create_task(resync_forever(kube, rollouts, resync_seconds, folder, fleet,
                                                                 decommissions, passes)))
        resync_task.append(asyncio.create_task(fold_forever(fold_batch, fold_wake)))
        resync_task.append(asyncio.create_task(trim_forever()))
        if health is not None:
            resync_task.append(asyncio.create_task(tick_forever(health)))
            health.start()
        fold_wake.set()  # the first fold reads every NodeReport

    async def stop_resync(**_: Any) -> None:
        for task in resync_task:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    kopf.on.startup(registry=registry)(configure)
    kopf.on.cleanup(registry=registry)(stop_resync)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(credentials)

    kopf.on.login(registry=registry)(login)
    for model in KINDS:
        for decorator in (kopf.on.resume, kopf.on.create, kopf.on.update):
            decorator(GROUP, VERSION, model.resource.plural, registry=registry)(on_change)
    kopf.on.event(GROUP, VERSION, "nodeupgrades", registry=registry)(on_rollout_event)
    kopf.on.event(GROUP, VERSION, REPORTS, registry=registry)(on_report_event)
    for plural in ("backups", "healthchecks"):
        kopf.on.event(GROUP, VERSION, plural, registry=registry)(on_object_event)
    return registry
